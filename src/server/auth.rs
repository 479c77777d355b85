//! Authentication of the homeserver: `Authorization: Bearer <hs_token>`, or the legacy
//! `access_token` query parameter. When both are given they must match.

use std::sync::Arc;

use axum::{extract::FromRequestParts, http::header::AUTHORIZATION, http::request::Parts};

use super::{ServerState, error::ApiError};
use crate::{bridge::Bridge, secret::Secret};

/// Proof that a request carries the right `hs_token`: every homeserver-facing handler takes
/// it as its first argument, so the token is checked before anything else is extracted (the
/// body above all).
///
/// An extractor rather than a router layer: a layer wraps every route's service, and each
/// request's future would be moved once more through it and the service cloned and boxed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HsAuthed;

impl<B: Bridge> FromRequestParts<Arc<ServerState<B>>> for HsAuthed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ServerState<B>>,
    ) -> Result<Self, ApiError> {
        check(state.ctx.registration().hs_token(), parts)?;
        Ok(Self)
    }
}

fn check(hs_token: &Secret, request: &Parts) -> Result<(), ApiError> {
    let header = match request.headers.get(AUTHORIZATION) {
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
    let query = request.uri.query().and_then(|q| {
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
