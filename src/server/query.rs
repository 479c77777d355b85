//! `GET /_matrix/app/v1/users/{userId}` and `GET /_matrix/app/v1/rooms/{roomAlias}`
//!
//! The homeserver asks whether a user or alias in our namespace exists ([spec]). The bridge may
//! create it on demand; otherwise the answer is 404 `M_NOT_FOUND`.
//!
//! [spec]: https://spec.matrix.org/v1.19/application-service-api/#get_matrixappv1usersuserid

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State},
};
use ruma::{RoomAliasId, UserId};

use super::{ServerState, auth::HsAuthed, error::ApiError};
use crate::bridge::Bridge;

/// # `GET /_matrix/app/v1/users/{userId}`
pub(crate) async fn query_user_id<B: Bridge>(
    _: HsAuthed,
    State(state): State<Arc<ServerState<B>>>,
    Path(user_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let user_id = UserId::parse(user_id.as_str())
        .map_err(|e| ApiError::invalid_param(format!("Invalid user ID: {e}")))?;
    if !state.ctx.registration().is_user_in_namespace(&user_id) {
        return Err(ApiError::not_found("User is not in this appservice's namespace"));
    }
    match state.bridge.query_user(&user_id).await {
        Ok(true) => Ok(Json(serde_json::json!({}))),
        Ok(false) => Err(ApiError::not_found("No such user")),
        Err(e) => {
            tracing::error!(%user_id, error = %e, "user query failed");
            Err(ApiError::internal())
        }
    }
}

/// # `GET /_matrix/app/v1/rooms/{roomAlias}`
pub(crate) async fn query_room_alias<B: Bridge>(
    _: HsAuthed,
    State(state): State<Arc<ServerState<B>>>,
    Path(alias): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let alias = RoomAliasId::parse(alias.as_str())
        .map_err(|e| ApiError::invalid_param(format!("Invalid room alias: {e}")))?;
    if !state.ctx.registration().is_alias_in_namespace(&alias) {
        return Err(ApiError::not_found("Alias is not in this appservice's namespace"));
    }
    match state.bridge.query_alias(&alias).await {
        Ok(true) => Ok(Json(serde_json::json!({}))),
        Ok(false) => Err(ApiError::not_found("No such room alias")),
        Err(e) => {
            tracing::error!(%alias, error = %e, "alias query failed");
            Err(ApiError::internal())
        }
    }
}
