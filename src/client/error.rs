//! Errors from the outbound Client-Server API client.
//!
//! A homeserver's Matrix error keeps ruma's parsed [`ErrorKind`], so callers test outcomes
//! without matching on strings: `err.kind() == Some(&ErrorKind::Forbidden)`.

use std::time::Duration;

use reqwest::StatusCode;
use ruma::{
    OwnedUserId,
    api::error::{ErrorBody, ErrorKind, IntoHttpError, LimitExceededErrorData, RetryAfter},
};

/// The client's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors from a request to the homeserver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The homeserver answered with an error status (4xx/5xx) and, usually, a Matrix error body.
    #[error("homeserver answered {status} {errcode}: {message}")]
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// The Matrix `errcode` (`M_FORBIDDEN`, ...); `M_UNKNOWN` when the body had none.
        errcode: String,
        /// The human-readable `error` text.
        message: String,
        /// ruma's parsed form of the error, when the body was a standard Matrix error.
        kind: Option<Box<ErrorKind>>,
    },
    /// The request could not be sent or the response could not be read (connection refused,
    /// timeout, TLS, ...). It holds the HTTP client's error: reqwest's, or hyper's on the
    /// plain-HTTP link to the homeserver. [`Error::is_connect`] and [`Error::is_timeout`] tell
    /// the common cases apart whichever it is.
    ///
    /// The message names that error's causes (the HTTP clients' own messages leave them out),
    /// so it is not given as this error's `source()` too: a reporter that prints sources would
    /// print them twice.
    #[error("HTTP request to the homeserver failed: {}", crate::util::error_chain(&**.0))]
    Http(Box<dyn std::error::Error + Send + Sync>),
    /// A request asked to act as a user outside the appservice's user namespace. No request was
    /// sent.
    #[error("{user_id} is not in the appservice's user namespace")]
    NotInNamespace {
        /// The refused user.
        user_id: OwnedUserId,
    },
    /// ruma could not turn the request into HTTP (an endpoint unknown to the supported versions,
    /// a serialization bug).
    #[error("could not build the request: {0}")]
    IntoHttp(#[from] IntoHttpError),
    /// A successful response did not have the shape the endpoint defines.
    #[error("unexpected response from the homeserver: {0}")]
    InvalidResponse(String),
    /// An encrypted attachment could not be read: it was changed, or this build has no
    /// `encryption` feature.
    #[error("cannot decrypt the attachment: {0}")]
    Attachment(String),
    /// An upload is larger than the homeserver takes; nothing was sent.
    #[error("the file is {size} bytes, over the homeserver's upload limit of {limit} bytes")]
    MediaTooLarge {
        /// The upload's size.
        size: u64,
        /// The homeserver's limit.
        limit: u64,
    },
    /// Content could not be serialized to JSON.
    #[error("could not serialize content: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Self {
        Self::Http(Box::new(e.without_url()))
    }
}

impl Error {
    /// Builds an [`Error::Api`] from ruma's parsed error response.
    pub(crate) fn from_ruma(err: ruma::api::error::Error) -> Self {
        let status = err.status_code;
        match err.body {
            ErrorBody::Standard(body) => Error::Api {
                status,
                errcode: body.kind.errcode().to_string(),
                message: body.message,
                kind: Some(Box::new(body.kind)),
            },
            ErrorBody::Json(json) => Error::Api {
                status,
                errcode: json
                    .get("errcode")
                    .and_then(|v| v.as_str())
                    .unwrap_or("M_UNKNOWN")
                    .to_owned(),
                message: json.get("error").and_then(|v| v.as_str()).unwrap_or_default().to_owned(),
                kind: None,
            },
            ErrorBody::NotJson { .. } => Error::Api {
                status,
                errcode: "M_UNKNOWN".to_owned(),
                message: "non-JSON error body".to_owned(),
                kind: None,
            },
        }
    }

    /// The Matrix `errcode` of an [`Error::Api`], as the homeserver wrote it, for logs and for
    /// codes ruma does not know. Match outcomes on [`Error::kind`].
    pub fn errcode(&self) -> Option<&str> {
        match self {
            Error::Api { errcode, .. } => Some(errcode),
            _ => None,
        }
    }

    /// Whether no connection to the homeserver could be made (refused, unreachable, the
    /// connect timed out): nothing was sent.
    pub fn is_connect(&self) -> bool {
        let Error::Http(err) = self else { return false };
        crate::util::error_sources(&**err).any(|e| {
            if let Some(e) = e.downcast_ref::<reqwest::Error>() {
                e.is_connect()
            } else if let Some(e) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
                e.is_connect()
            } else {
                false
            }
        })
    }

    /// Whether the homeserver did not answer in time (a connect that timed out is also
    /// [`Error::is_connect`]).
    pub fn is_timeout(&self) -> bool {
        let Error::Http(err) = self else { return false };
        crate::util::error_sources(&**err).any(|e| {
            e.downcast_ref::<reqwest::Error>().is_some_and(reqwest::Error::is_timeout)
                || e.is::<tokio::time::error::Elapsed>()
                || e.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
        })
    }

    /// ruma's parsed [`ErrorKind`] of an [`Error::Api`], if the body was a standard Matrix error.
    pub fn kind(&self) -> Option<&ErrorKind> {
        match self {
            Error::Api { kind, .. } => kind.as_deref(),
            _ => None,
        }
    }

    /// The HTTP status of an [`Error::Api`].
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The human-readable message of an [`Error::Api`].
    pub fn message(&self) -> Option<&str> {
        match self {
            Error::Api { message, .. } => Some(message),
            _ => None,
        }
    }

    /// How long the homeserver asked us to wait, for an `M_LIMIT_EXCEEDED` error.
    ///
    /// The `Retry-After` header wins over the body's `retry_after_ms` (ruma applies that rule when
    /// parsing). A date in the past gives zero.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.kind()? {
            ErrorKind::LimitExceeded(LimitExceededErrorData {
                retry_after: Some(after), ..
            }) => Some(match after {
                RetryAfter::Delay(d) => *d,
                RetryAfter::DateTime(t) => {
                    t.duration_since(std::time::SystemTime::now()).unwrap_or_default()
                }
            }),
            _ => None,
        }
    }

    /// Whether the endpoint is not implemented by the homeserver (404 `M_UNRECOGNIZED`).
    pub fn is_unrecognized_endpoint(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
            && matches!(self.kind(), Some(ErrorKind::Unrecognized))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(status: u16, body: &str, retry_after: Option<&str>) -> Error {
        use ruma::api::EndpointError as _;
        let mut builder = ruma::exports::http::Response::builder().status(status);
        if let Some(v) = retry_after {
            builder = builder.header("retry-after", v);
        }
        let response = builder.body(body.as_bytes()).unwrap();
        Error::from_ruma(ruma::api::error::Error::from_http_response(response))
    }

    #[test]
    fn standard_errors_keep_their_errcode_and_kind() {
        let err =
            parse(400, r#"{"errcode":"M_USER_IN_USE","error":"User ID already taken."}"#, None);
        assert_eq!(err.errcode(), Some("M_USER_IN_USE"));
        assert_eq!(err.kind(), Some(&ErrorKind::UserInUse));
        assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
        assert_eq!(err.message(), Some("User ID already taken."));
    }

    #[test]
    fn retry_after_comes_from_the_body_or_the_header() {
        let body = r#"{"errcode":"M_LIMIT_EXCEEDED","error":"slow down","retry_after_ms":1500}"#;
        assert_eq!(parse(429, body, None).retry_after(), Some(Duration::from_millis(1500)));
        assert_eq!(parse(429, body, Some("3")).retry_after(), Some(Duration::from_secs(3)));
    }

    #[test]
    fn unknown_bodies_still_give_an_api_error() {
        let err = parse(502, "<html>bad gateway</html>", None);
        assert_eq!(err.errcode(), Some("M_UNKNOWN"));
        assert_eq!(err.kind(), None);
    }
}
