//! `POST /_matrix/app/v1/ping`
//!
//! The homeserver checks that it can reach us ([spec]). `transaction_id` may be absent or `null`.
//!
//! [spec]: https://spec.matrix.org/v1.19/application-service-api/#post_matrixappv1ping

use std::sync::Arc;

use axum::{Json, body::Bytes, extract::State};
use serde::Deserialize;

use super::{ServerState, auth::HsAuthed, error::ApiError, error::json_error};
use crate::bridge::Bridge;

#[derive(Deserialize)]
struct PingBody {
    #[serde(default)]
    transaction_id: Option<String>,
}

/// # `POST /_matrix/app/v1/ping`
pub(crate) async fn send_ping<B: Bridge>(
    _: HsAuthed,
    State(state): State<Arc<ServerState<B>>>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body: PingBody = if body.is_empty() {
        PingBody { transaction_id: None }
    } else {
        serde_json::from_slice(&body).map_err(|e| json_error(&e))?
    };
    tracing::debug!(transaction_id = body.transaction_id.as_deref(), "pinged by the homeserver");
    state.health.record_homeserver_ping(body.transaction_id);
    Ok(Json(serde_json::json!({})))
}
