//! The body limit of the homeserver-facing routes, checked first against the length a request
//! declares.
//!
//! `DefaultBodyLimit` alone counts bytes as they arrive, so a client that declared a body over
//! the limit and then sent nothing (or sent it slowly) held its request until the request
//! timeout, and got 408 where 413 was due. One layer does both: each layer costs every request a
//! move of its future and a clone of the boxed route (see `auth::HsAuthed`).

use std::task::{Context, Poll};

use axum::{
    extract::{DefaultBodyLimit, Request},
    http::{HeaderMap, StatusCode, header::CONTENT_LENGTH},
    response::{IntoResponse as _, Response},
};
use futures_util::future::{Either, Ready, ready};

use super::error::ApiError;

/// `DefaultBodyLimit::max(max)`, and 413 `M_TOO_LARGE` at once for a request whose
/// `Content-Length` is over `max` bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimitLayer {
    max: usize,
}

impl BodyLimitLayer {
    pub(crate) fn new(max: usize) -> Self {
        Self { max }
    }
}

impl<S> tower::Layer<S> for BodyLimitLayer {
    type Service = DeclaredLength<<DefaultBodyLimit as tower::Layer<S>>::Service>;

    fn layer(&self, inner: S) -> Self::Service {
        let inner = tower::Layer::layer(&DefaultBodyLimit::max(self.max), inner);
        DeclaredLength { inner, max: self.max }
    }
}

/// The service [`BodyLimitLayer`] wraps around the routes.
#[derive(Debug, Clone)]
pub(crate) struct DeclaredLength<S> {
    inner: S,
    max: usize,
}

impl<S> tower::Service<Request> for DeclaredLength<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match declared_length(request.headers()) {
            Some(declared) if declared > self.max as u64 => {
                Either::Left(ready(Ok(too_large(declared, self.max))))
            }
            _ => Either::Right(self.inner.call(request)),
        }
    }
}

/// The `Content-Length` a request declares, if it declares one that parses.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

fn too_large(declared: u64, max: usize) -> Response {
    let message =
        format!("Request body too large: {declared} bytes declared, at most {max} accepted");
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE", message).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_length_reads_the_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(declared_length(&headers), None);
        headers.insert(CONTENT_LENGTH, "4097".parse().unwrap());
        assert_eq!(declared_length(&headers), Some(4097));
        headers.insert(CONTENT_LENGTH, "many".parse().unwrap());
        assert_eq!(declared_length(&headers), None);
    }
}
