//! `GET /_matrix/app/v1/thirdparty/...`
//!
//! Third-party lookups ([spec]): protocol metadata, and locations and users by fields or by
//! Matrix ID. An empty result is 404 `M_NOT_FOUND`, as the spec asks.
//!
//! [spec]: https://spec.matrix.org/v1.19/application-service-api/#third-party-networks

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json,
    extract::{Path, Query, State},
    response::{IntoResponse, Response},
};
use ruma::{RoomAliasId, UserId};

use super::{ServerState, auth::HsAuthed, error::ApiError};
use crate::bridge::{Bridge, BridgeError};

fn internal(what: &str, e: &BridgeError) -> ApiError {
    tracing::error!(error = %e, lookup = what, "third-party lookup failed");
    ApiError::internal()
}

fn list<T: serde::Serialize>(items: Vec<T>) -> Response {
    if items.is_empty() {
        ApiError::not_found("No mappings were found with the given parameters").into_response()
    } else {
        Json(items).into_response()
    }
}

fn known_protocol<B: Bridge>(state: &ServerState<B>, protocol: &str) -> Result<(), ApiError> {
    let known = state.ctx.registration().file().protocols.as_deref().unwrap_or_default();
    if known.iter().any(|p| p == protocol) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("Unknown protocol {protocol:?}")))
    }
}

/// # `GET /_matrix/app/v1/thirdparty/protocol/{protocol}`
pub(crate) async fn get_protocol<B: Bridge>(
    _: HsAuthed,
    State(state): State<Arc<ServerState<B>>>,
    Path(protocol): Path<String>,
) -> Result<Response, ApiError> {
    known_protocol(&state, &protocol)?;
    match state.bridge.thirdparty_protocol(&protocol).await {
        Ok(Some(p)) => Ok(Json(p).into_response()),
        Ok(None) => Err(ApiError::not_found(format!("Unknown protocol {protocol:?}"))),
        Err(e) => Err(internal("protocol", &e)),
    }
}

/// # `GET /_matrix/app/v1/thirdparty/location/{protocol}`
pub(crate) async fn get_location_for_protocol<B: Bridge>(
    _: HsAuthed,
    State(state): State<Arc<ServerState<B>>>,
    Path(protocol): Path<String>,
    Query(fields): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    known_protocol(&state, &protocol)?;
    let fields = without_token(fields);
    state
        .bridge
        .thirdparty_locations(&protocol, &fields)
        .await
        .map(list)
        .map_err(|e| internal("location", &e))
}

/// # `GET /_matrix/app/v1/thirdparty/location?alias=...`
pub(crate) async fn get_location_for_room_alias<B: Bridge>(
    _: HsAuthed,
    State(state): State<Arc<ServerState<B>>>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let alias = query.get("alias").ok_or_else(|| ApiError::invalid_param("Missing alias"))?;
    let alias = RoomAliasId::parse(alias.as_str())
        .map_err(|e| ApiError::invalid_param(format!("Invalid room alias: {e}")))?;
    state
        .bridge
        .thirdparty_locations_by_alias(&alias)
        .await
        .map(list)
        .map_err(|e| internal("location", &e))
}

/// # `GET /_matrix/app/v1/thirdparty/user/{protocol}`
pub(crate) async fn get_user_for_protocol<B: Bridge>(
    _: HsAuthed,
    State(state): State<Arc<ServerState<B>>>,
    Path(protocol): Path<String>,
    Query(fields): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    known_protocol(&state, &protocol)?;
    let fields = without_token(fields);
    state
        .bridge
        .thirdparty_users(&protocol, &fields)
        .await
        .map(list)
        .map_err(|e| internal("user", &e))
}

/// # `GET /_matrix/app/v1/thirdparty/user?userid=...`
pub(crate) async fn get_user_for_user_id<B: Bridge>(
    _: HsAuthed,
    State(state): State<Arc<ServerState<B>>>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let user_id = query.get("userid").ok_or_else(|| ApiError::invalid_param("Missing userid"))?;
    let user_id = UserId::parse(user_id.as_str())
        .map_err(|e| ApiError::invalid_param(format!("Invalid user ID: {e}")))?;
    state.bridge.thirdparty_users_by_id(&user_id).await.map(list).map_err(|e| internal("user", &e))
}

/// The legacy `access_token` query parameter is authentication, not a search field.
fn without_token(mut fields: BTreeMap<String, String>) -> BTreeMap<String, String> {
    fields.remove("access_token");
    fields
}
