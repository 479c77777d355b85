//! Authentication of the homeserver: `Authorization: Bearer <hs_token>`, or the legacy
//! `access_token` query parameter. When both are given they must match.

use axum::{
    extract::{Request, State},
    http::header::AUTHORIZATION,
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::error::ApiError;
use crate::secret::Secret;

/// Middleware that lets a request through only with the right `hs_token`.
pub(crate) async fn require_hs_token(
    State(hs_token): State<Secret>,
    request: Request,
    next: Next,
) -> Response {
    match check(&hs_token, &request) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

fn check(hs_token: &Secret, request: &Request) -> Result<(), ApiError> {
    let header = match request.headers().get(AUTHORIZATION) {
        Some(value) => {
            let value =
                value.to_str().map_err(|_| ApiError::forbidden("Bad Authorization header"))?;
            let token = value
                .strip_prefix("Bearer ")
                .ok_or_else(|| ApiError::forbidden("Authorization must be a Bearer token"))?;
            Some(token.trim())
        }
        None => None,
    };
    let query = request.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v.into_owned())
    });
    let ok = match (header, query.as_deref()) {
        (None, None) => return Err(ApiError::missing_token()),
        (Some(h), Some(q)) => {
            // Both must be right; evaluate both so timing does not tell which one was wrong.
            let a = hs_token.constant_time_eq(h);
            let b = hs_token.constant_time_eq(q);
            a & b
        }
        (Some(t), None) | (None, Some(t)) => hs_token.constant_time_eq(t),
    };
    if ok { Ok(()) } else { Err(ApiError::forbidden("Bad token supplied")) }
}
