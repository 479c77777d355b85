//! Errors of the homeserver-facing API, answered as `{"errcode", "error"}` JSON.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;

/// An error answer in the Matrix error format.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The Matrix errcode.
    pub errcode: &'static str,
    /// A human-readable message.
    pub message: String,
}

impl ApiError {
    /// An error with a status, errcode and message.
    pub fn new(status: StatusCode, errcode: &'static str, message: impl Into<String>) -> Self {
        Self { status, errcode, message: message.into() }
    }

    /// 401 `M_UNAUTHORIZED`: no token was given.
    pub fn missing_token() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", "Missing access token")
    }

    /// 403 `M_FORBIDDEN`: the token is wrong.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "M_FORBIDDEN", message)
    }

    /// 404 `M_NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "M_NOT_FOUND", message)
    }

    /// 404 `M_UNRECOGNIZED`: no such endpoint.
    pub fn unrecognized() -> Self {
        Self::new(StatusCode::NOT_FOUND, "M_UNRECOGNIZED", "Unrecognized request")
    }

    /// 400 `M_NOT_JSON`: the body is not JSON.
    pub fn not_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_NOT_JSON", message)
    }

    /// 400 `M_BAD_JSON`: JSON of the wrong shape.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_BAD_JSON", message)
    }

    /// 400 `M_INVALID_PARAM`: a path or query parameter is malformed.
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", message)
    }

    /// 500 `M_UNKNOWN`; the cause is logged, not sent.
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN", "Internal server error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "errcode": self.errcode, "error": self.message })))
            .into_response()
    }
}

/// Turns a body parse error into `M_NOT_JSON` (not JSON at all) or `M_BAD_JSON` (wrong shape).
pub(crate) fn json_error(e: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::not_json(format!("Request body is not valid JSON: {e}"))
        }
        Category::Data => ApiError::bad_json(format!("Request body has the wrong shape: {e}")),
    }
}
