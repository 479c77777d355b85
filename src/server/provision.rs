//! The provisioning API under `/_matrix/provision/v3/`: login flows, logins in progress and
//! stored logins, and starting chats through a login (resolving an identifier, a DM, a
//! group), over HTTP, for clients and integration managers. Described in
//! `docs/provisioning.yaml` (a test keeps the two in step).
//!
//! Served only when `provisioning.shared_secret` is set. A request authenticates with
//! `Authorization: Bearer <shared secret>` and names the acting user with `?user_id=`, or
//! with a Matrix access token of a user of our own homeserver (checked with its `whoami`).
//! Either way the acting user's `permissions:` level must be at least `user`. Requests are
//! rate limited per user; failed authentications share one budget.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{FromRequestParts, Path, Query, State},
    http::{StatusCode, header::AUTHORIZATION, request::Parts},
    routing::{get, post},
};
use ruma::{OwnedUserId, UserId};
use serde_json::{Value, json};

use super::error::{ApiError, json_error};
use crate::{
    accounts::{LoginError, LoginProgress, LoginStatus},
    config::PermissionLevel,
    context::Context,
    error::BridgeError,
    login::{LoginDisplay, LoginStep, LoginValues, UserLogin},
    remote::{NewChat, NewGroup, Portal},
};

/// The API's prefix.
pub(crate) const PREFIX: &str = "/_matrix/provision/v3";

/// Every route (method, path under [`PREFIX`]); the router is built from this list.
pub(crate) const ROUTES: &[(&str, &str)] = &[
    ("get", "/login/flows"),
    ("post", "/login/start/{flow_id}"),
    ("post", "/login/step/{process_id}/{step_id}/{step_type}"),
    ("post", "/login/cancel/{process_id}"),
    ("post", "/logout/{login_id}"),
    ("get", "/logins"),
    ("get", "/whoami"),
    ("get", "/resolve_identifier/{identifier}"),
    ("post", "/create_dm/{identifier}"),
    ("post", "/create_group/{type}"),
];

/// The window of the rate limit.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Keys the rate limiter remembers before it forgets the expired ones.
const RATE_KEYS_MAX: usize = 10_000;

#[derive(Debug)]
pub(crate) struct Provision {
    ctx: Context,
    /// Requests in the current window, by acting user ("" for failed authentications).
    windows: Mutex<crate::util::FastMap<String, (Instant, u32)>>,
}

/// The API's routes, when `provisioning.shared_secret` is set.
pub(crate) fn router(ctx: &Context) -> Option<Router> {
    if ctx.config().provisioning.shared_secret.as_ref().is_none_or(crate::Secret::is_empty) {
        return None;
    }
    let state = Arc::new(Provision { ctx: ctx.clone(), windows: Mutex::default() });
    let mut app = Router::new();
    for &(method, path) in ROUTES {
        let full = format!("{PREFIX}{path}");
        app = match (method, path) {
            ("get", "/login/flows") => app.route(&full, get(flows)),
            ("post", "/login/start/{flow_id}") => app.route(&full, post(start)),
            ("post", "/login/step/{process_id}/{step_id}/{step_type}") => {
                app.route(&full, post(step))
            }
            ("post", "/login/cancel/{process_id}") => app.route(&full, post(cancel)),
            ("post", "/logout/{login_id}") => app.route(&full, post(logout)),
            ("get", "/logins") => app.route(&full, get(logins)),
            ("get", "/whoami") => app.route(&full, get(whoami_route)),
            ("get", "/resolve_identifier/{identifier}") => app.route(&full, get(resolve)),
            ("post", "/create_dm/{identifier}") => app.route(&full, post(create_dm)),
            ("post", "/create_group/{type}") => app.route(&full, post(create_group)),
            _ => unreachable!("every route has a handler"),
        };
    }
    Some(app.with_state(state))
}

impl Provision {
    /// Counts a request of `key`; `false` when over the limit.
    fn allow(&self, key: &str) -> bool {
        let limit = self.ctx.config().provisioning.requests_per_minute.max(1);
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.len() >= RATE_KEYS_MAX {
            windows.retain(|_, (start, _)| now.duration_since(*start) < RATE_WINDOW);
        }
        let (start, count) = windows.entry(key.to_owned()).or_insert((now, 0));
        if now.duration_since(*start) >= RATE_WINDOW {
            *start = now;
            *count = 0;
        }
        *count += 1;
        *count <= limit
    }

    fn over_limit(&self, key: &str) -> bool {
        let limit = self.ctx.config().provisioning.requests_per_minute.max(1);
        let windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        windows
            .get(key)
            .is_some_and(|(start, count)| start.elapsed() < RATE_WINDOW && *count >= limit)
    }

    /// How long a display-and-wait poll waits: under the request timeout.
    fn long_poll(&self) -> Duration {
        Duration::from_secs(
            self.ctx.appservice().request_timeout_secs.saturating_sub(5).clamp(1, 25),
        )
    }
}

fn too_many() -> ApiError {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED", "Too many requests")
}

/// The authenticated user a request acts for.
#[derive(Debug)]
pub(crate) struct Acting {
    user_id: OwnedUserId,
    level: PermissionLevel,
}

impl FromRequestParts<Arc<Provision>> for Acting {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<Provision>,
    ) -> Result<Self, ApiError> {
        // Failed authentications share one budget: guessing the secret is slow.
        if state.over_limit("") {
            return Err(too_many());
        }
        let acting = match authenticate(parts, state).await {
            Ok(acting) => acting,
            Err(e) => {
                state.allow("");
                return Err(e);
            }
        };
        if !state.allow(acting.user_id.as_str()) {
            return Err(too_many());
        }
        if acting.level < PermissionLevel::User {
            return Err(ApiError::forbidden("You are not allowed to use this bridge"));
        }
        Ok(acting)
    }
}

async fn authenticate(parts: &Parts, state: &Provision) -> Result<Acting, ApiError> {
    let ctx = &state.ctx;
    let config = &ctx.config().provisioning;
    let header = parts.headers.get(AUTHORIZATION).ok_or_else(ApiError::missing_token)?;
    let token = header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::forbidden("Authorization must be a Bearer token"))?;
    let secret =
        config.shared_secret.as_ref().ok_or_else(|| ApiError::forbidden("Provisioning is off"))?;
    let user_id = if secret.constant_time_eq(token) {
        let query = parts.uri.query().unwrap_or_default();
        let named = url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "user_id")
            .map(|(_, v)| v.into_owned())
            .ok_or_else(|| ApiError::invalid_param("user_id is required with the shared secret"))?;
        OwnedUserId::try_from(named)
            .map_err(|e| ApiError::invalid_param(format!("bad user_id: {e}")))?
    } else if config.allow_matrix_auth {
        whoami(ctx, token).await?
    } else {
        return Err(ApiError::forbidden("Bad token supplied"));
    };
    if ctx.registration().is_user_in_namespace(&user_id) {
        return Err(ApiError::forbidden("The bridge's own users cannot be provisioned"));
    }
    let level = ctx.permission_level(&user_id);
    Ok(Acting { user_id, level })
}

/// The user of a Matrix access token, as our homeserver's `whoami` says; only users of our
/// own homeserver.
async fn whoami(ctx: &Context, token: &str) -> Result<OwnedUserId, ApiError> {
    let url = ctx
        .homeserver()
        .address
        .join("_matrix/client/v3/account/whoami")
        .map_err(|_| ApiError::internal())?;
    let response = ctx.logins().http().get(url).bearer_auth(token).send().await.map_err(|e| {
        tracing::warn!(error = %e, "whoami at the homeserver failed");
        ApiError::new(StatusCode::BAD_GATEWAY, "M_UNKNOWN", "The homeserver could not be asked")
    })?;
    if !response.status().is_success() {
        return Err(ApiError::forbidden("Bad token supplied"));
    }
    let body: Value =
        response.json().await.map_err(|_| ApiError::forbidden("Bad token supplied"))?;
    let user_id = body["user_id"]
        .as_str()
        .and_then(|u| OwnedUserId::try_from(u).ok())
        .ok_or_else(|| ApiError::forbidden("Bad token supplied"))?;
    if user_id.server_name() != ctx.server_name() {
        return Err(ApiError::forbidden("Only users of this homeserver may use a Matrix token"));
    }
    Ok(user_id)
}

fn login_error(e: LoginError) -> ApiError {
    match e {
        LoginError::UnknownFlow(_) | LoginError::NotFound(_) => ApiError::not_found(e.to_string()),
        LoginError::BadInput(m) => ApiError::invalid_param(m),
        LoginError::Forbidden(m) => ApiError::forbidden(m),
        LoginError::Bridge(m) => ApiError::new(StatusCode::BAD_REQUEST, "M_UNKNOWN", m),
        LoginError::Store(e) => {
            tracing::error!(error = %e, "provisioning: the store failed");
            ApiError::internal()
        }
    }
}

/// A login's JSON.
fn login_json(login: &UserLogin) -> Value {
    json!({
        "id": login.id,
        "name": login.remote_name,
        "state": {"state_event": login.state.as_str(), "reason": login.state_reason},
    })
}

/// A login in progress as the API answers it; an ended one as its error.
fn progress_json(progress: LoginProgress) -> Result<Json<Value>, ApiError> {
    let id = progress.process_id;
    let step = match progress.status {
        LoginStatus::Step(step) => step,
        LoginStatus::Done(login) => {
            return Ok(Json(json!({
                "login_id": id, "type": "complete", "step_id": "complete",
                "instructions": format!("Logged in as {}", login.remote_name),
                "complete": {"user_login_id": login.id, "login": login_json(&login)},
            })));
        }
        LoginStatus::Failed(why) => {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "M_UNKNOWN", why));
        }
        LoginStatus::Cancelled => return Err(ApiError::not_found("The login was cancelled")),
        LoginStatus::Working => {
            return Ok(Json(json!({"login_id": id, "type": "working"})));
        }
    };
    let mut out = json!({"login_id": id, "type": step.kind(), "step_id": step.step_id()});
    match step {
        LoginStep::Fields { instructions, fields, .. } => {
            out["instructions"] = instructions.into();
            out["user_input"] = json!({ "fields": fields });
        }
        LoginStep::DisplayAndWait { instructions, display, .. } => {
            out["instructions"] = instructions.into();
            out["display_and_wait"] = match display {
                LoginDisplay::Qr(data) => json!({"type": "qr", "data": data}),
                LoginDisplay::Code(data) => json!({"type": "code", "data": data}),
                LoginDisplay::Nothing => json!({"type": "nothing"}),
            };
        }
        LoginStep::Cookies { instructions, url, cookies, .. } => {
            out["instructions"] = instructions.into();
            out["cookies"] = json!({"url": url, "fields": cookies.iter().map(|c| json!({"id": c})).collect::<Vec<_>>()});
        }
        LoginStep::Complete(_) => {}
    }
    Ok(Json(out))
}

/// # `GET /login/flows`
async fn flows(State(state): State<Arc<Provision>>, _acting: Acting) -> Json<Value> {
    Json(json!({ "flows": state.ctx.login_flows() }))
}

/// # `POST /login/start/{flow_id}`
async fn start(
    State(state): State<Arc<Provision>>,
    acting: Acting,
    Path(flow_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let progress = state.ctx.start_login(&acting.user_id, &flow_id).await.map_err(login_error)?;
    progress_json(progress)
}

/// # `POST /login/step/{process_id}/{step_id}/{step_type}`
async fn step(
    State(state): State<Arc<Provision>>,
    acting: Acting,
    Path((process_id, step_id, step_type)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let ctx = &state.ctx;
    let user = &acting.user_id;
    let progress = match step_type.as_str() {
        "user_input" | "cookies" => {
            let values: LoginValues = serde_json::from_slice(&body).map_err(|e| json_error(&e))?;
            let current = ctx.login_progress(user, &process_id).map_err(login_error)?;
            let expected = match &current.status {
                LoginStatus::Step(s) => s.kind(),
                _ => "",
            };
            if expected != step_type {
                return Err(ApiError::invalid_param(format!(
                    "the login is not at a {step_type} step"
                )));
            }
            ctx.submit_login(user, &process_id, &step_id, values).await
        }
        "display_and_wait" => ctx.wait_login(user, &process_id, &step_id, state.long_poll()).await,
        other => return Err(ApiError::invalid_param(format!("unknown step type {other:?}"))),
    };
    progress_json(progress.map_err(login_error)?)
}

/// # `POST /login/cancel/{process_id}`
async fn cancel(
    State(state): State<Arc<Provision>>,
    acting: Acting,
    Path(process_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.ctx.cancel_login(&acting.user_id, &process_id).await.map_err(login_error)?;
    Ok(Json(json!({})))
}

/// # `POST /logout/{login_id}`
async fn logout(
    State(state): State<Arc<Provision>>,
    acting: Acting,
    Path(login_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.ctx.logout(&acting.user_id, &login_id.into()).await.map_err(login_error)?;
    Ok(Json(json!({})))
}

async fn logins_of(ctx: &Context, user: &UserId) -> Result<Vec<Value>, ApiError> {
    let logins = ctx.store().logins_of(user).await.map_err(|e| login_error(e.into()))?;
    Ok(logins.iter().map(login_json).collect())
}

/// # `GET /logins`
async fn logins(
    State(state): State<Arc<Provision>>,
    acting: Acting,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "logins": logins_of(&state.ctx, &acting.user_id).await? })))
}

/// # `GET /whoami`
async fn whoami_route(
    State(state): State<Arc<Provision>>,
    acting: Acting,
) -> Result<Json<Value>, ApiError> {
    let ctx = &state.ctx;
    let user = ctx.store().user(&acting.user_id).await.map_err(|e| login_error(e.into()))?;
    Ok(Json(json!({
        "user_id": acting.user_id,
        "permissions": acting.level,
        "management_room": user.and_then(|u| u.management_room),
        "logins": logins_of(ctx, &acting.user_id).await?,
        "logins_in_progress": ctx.logins_in_progress(&acting.user_id)
            .into_iter()
            .map(|(id, flow)| json!({"login_id": id, "flow_id": flow}))
            .collect::<Vec<_>>(),
    })))
}

/// The `?login_id=` of the chat routes.
#[derive(Debug, serde::Deserialize)]
struct LoginQuery {
    login_id: Option<String>,
}

/// The acting user's login named by `?login_id=`, else their first.
async fn acting_login(
    ctx: &Context,
    acting: &Acting,
    query: &LoginQuery,
) -> Result<UserLogin, ApiError> {
    let logins = ctx.store().logins_of(&acting.user_id).await.map_err(|e| login_error(e.into()))?;
    let found = match &query.login_id {
        Some(id) => logins.into_iter().find(|l| l.id.as_str() == id),
        None => logins.into_iter().next(),
    };
    found.ok_or_else(|| ApiError::not_found("You have no such login"))
}

/// A bridge hook's error: 501 for a hook the bridge does not offer.
fn hook_error(e: &BridgeError) -> ApiError {
    if e.is_unsupported() {
        return ApiError::new(StatusCode::NOT_IMPLEMENTED, "M_UNRECOGNIZED", e.to_string());
    }
    tracing::info!(error = %e, "provisioning: the bridge failed");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN", e.to_string())
}

fn remote_error(e: &crate::portal::RemoteError) -> ApiError {
    tracing::warn!(error = %e, "provisioning: making a portal failed");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN", e.to_string())
}

/// The hooks of the bridge, which outlives the API.
fn hooks(ctx: &Context) -> Result<Arc<dyn crate::accounts::LoginHooks>, ApiError> {
    ctx.logins().hooks().ok_or_else(ApiError::internal)
}

/// The portal of a chat opened through a login, made when missing; the acting user is invited
/// and the login recorded in it.
async fn open_chat(
    ctx: &Context,
    acting: &Acting,
    login: &UserLogin,
    chat: &NewChat,
) -> Result<Portal, ApiError> {
    let mut info = chat.info.clone();
    if !info.invite.contains(&acting.user_id) {
        info.invite.push(acting.user_id.clone());
    }
    let portal = ctx.ensure_portal(&chat.key, &info).await.map_err(|e| remote_error(&e))?;
    ctx.bot()
        .invite(&portal.room_id, &acting.user_id)
        .check_cache()
        .await
        .map_err(|e| remote_error(&e.into()))?;
    ctx.add_login_to_portal(&login.id, &chat.key).await.map_err(|e| remote_error(&e))?;
    Ok(portal)
}

/// Resolves an identifier (and with `create_dm`, opens the DM); the answer of both routes.
async fn resolve_or_open(
    state: &Provision,
    acting: &Acting,
    query: &LoginQuery,
    identifier: &str,
    create_dm: bool,
) -> Result<Json<Value>, ApiError> {
    let ctx = &state.ctx;
    let login = acting_login(ctx, acting, query).await?;
    let resolved = hooks(ctx)?
        .resolve_identifier(&login, identifier, create_dm)
        .await
        .map_err(|e| hook_error(&e))?
        .ok_or_else(|| ApiError::not_found(format!("Nobody has the identifier {identifier:?}")))?;
    let user = &resolved.user;
    let ghost = ctx.ensure_ghost(&user.id, &user.profile).await.map_err(|e| remote_error(&e))?;
    let dm_room = match (&resolved.dm, create_dm) {
        (Some(dm), true) => Some(open_chat(ctx, acting, &login, dm).await?.room_id),
        (Some(dm), false) => {
            ctx.portal(&dm.key).await.map_err(|e| remote_error(&e))?.map(|p| p.room_id)
        }
        (None, true) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "M_UNKNOWN",
                "The bridge found the user but gave no DM chat",
            ));
        }
        (None, false) => None,
    };
    let mut out = json!({ "id": user.id, "mxid": ghost.user_id() });
    if let Some(name) = &user.profile.displayname {
        out["name"] = name.as_str().into();
    }
    if let Some(avatar) = &user.profile.avatar_url {
        out["avatar_url"] = avatar.as_str().into();
    }
    if let Some(room) = dm_room {
        out["dm_room_mxid"] = room.as_str().into();
    }
    Ok(Json(out))
}

/// # `GET /resolve_identifier/{identifier}`
async fn resolve(
    State(state): State<Arc<Provision>>,
    acting: Acting,
    Path(identifier): Path<String>,
    Query(query): Query<LoginQuery>,
) -> Result<Json<Value>, ApiError> {
    resolve_or_open(&state, &acting, &query, &identifier, false).await
}

/// # `POST /create_dm/{identifier}`
async fn create_dm(
    State(state): State<Arc<Provision>>,
    acting: Acting,
    Path(identifier): Path<String>,
    Query(query): Query<LoginQuery>,
) -> Result<Json<Value>, ApiError> {
    resolve_or_open(&state, &acting, &query, &identifier, true).await
}

/// The body of `create_group`: name and topic as the contents of their state events.
#[derive(Debug, Default, serde::Deserialize)]
struct GroupBody {
    #[serde(default)]
    name: Option<NameContent>,
    #[serde(default)]
    topic: Option<TopicContent>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    participants: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
struct NameContent {
    name: String,
}

#[derive(Debug, serde::Deserialize)]
struct TopicContent {
    topic: String,
}

/// # `POST /create_group/{type}`
async fn create_group(
    State(state): State<Arc<Provision>>,
    acting: Acting,
    Path(kind): Path<String>,
    Query(query): Query<LoginQuery>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let ctx = &state.ctx;
    let body: GroupBody = if body.is_empty() {
        GroupBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| json_error(&e))?
    };
    let mut participants = Vec::with_capacity(body.participants.len());
    for participant in body.participants {
        // A ghost's Matrix ID stands for its remote user.
        let ghost = match UserId::parse(participant.as_str()) {
            Ok(user_id) => {
                ctx.store().ghost_by_user(&user_id).await.map_err(|e| login_error(e.into()))?
            }
            Err(_) => None,
        };
        participants.push(ghost.map_or_else(|| participant.into(), |g| g.remote_id));
    }
    let group = NewGroup {
        kind,
        name: body.name.map(|n| n.name),
        topic: body.topic.map(|t| t.topic),
        username: body.username,
        participants,
    };
    let login = acting_login(ctx, &acting, &query).await?;
    let chat = hooks(ctx)?.create_group(&login, &group).await.map_err(|e| hook_error(&e))?;
    let portal = open_chat(ctx, &acting, &login, &chat).await?;
    Ok(Json(json!({ "id": chat.key.chat, "mxid": portal.room_id })))
}

#[cfg(test)]
mod tests;
