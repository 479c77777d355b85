//! The homeserver-facing HTTP server (homeserver → us), as the Application Service API says.
//!
//! `router` builds the whole axum app, so tests drive it with `oneshot` and no socket; `serve`
//! runs it on a listener until a shutdown future resolves.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Body,
    extract::{MatchedPath, Request, State},
    http::{StatusCode, header::CONTENT_TYPE},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use tower_http::timeout::TimeoutLayer;
use tracing::Instrument as _;

use crate::{
    bridge::Bridge,
    context::Context,
    health::Health,
    intake::{GroupCommit, Handoff},
};

mod auth;
pub mod error;
mod limit;
mod ping;
mod provision;
mod query;
mod thirdparty;
mod transactions;

use error::ApiError;

/// Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`); not a stable API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// Parses a transaction body as `PUT /transactions` does and checks what it accepted:
    /// every accepted event has storable IDs. Returns the errcode or the accepted count.
    ///
    /// # Panics
    /// When an accepted event breaks an invariant (that is the fuzzer's finding).
    pub fn parse_transaction(body: &[u8]) -> Result<usize, &'static str> {
        let parsed = crate::intake::parse(body).map_err(|e| e.errcode())?;
        for e in &parsed.events {
            for id in [e.event_id.as_ref(), e.room_id.as_ref()] {
                assert!(id.len() <= 255 && !id.chars().any(char::is_control), "{id:?}");
            }
            let _: serde_json::Value = serde_json::from_str(e.json).unwrap_or_default();
        }
        Ok(parsed.events.len())
    }
}

/// What the HTTP handlers share.
#[derive(Debug)]
pub(crate) struct ServerState<B> {
    /// The bridge, for queries and third-party lookups.
    pub(crate) bridge: Arc<B>,
    /// Store, registration and config.
    pub(crate) ctx: Context,
    /// Where stored transactions are announced and ephemeral data is queued.
    pub(crate) handoff: Handoff,
    /// Liveness and readiness facts.
    pub(crate) health: Arc<Health>,
    /// Stores concurrent transactions together.
    pub(crate) group_commit: GroupCommit,
}

impl<B> ServerState<B> {
    pub(crate) fn new(bridge: Arc<B>, ctx: Context, handoff: Handoff, health: Arc<Health>) -> Self {
        let group_commit = GroupCommit::new(handoff.clone());
        Self { bridge, ctx, handoff, health, group_commit }
    }
}

/// Limits of the HTTP server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_body_bytes: usize,
    pub(crate) request_timeout: Duration,
}

/// Builds the appservice's HTTP app: the homeserver-facing routes (each handler takes
/// [`auth::HsAuthed`] first: no token, no answer), health routes, and the bridge's own routes.
pub(crate) fn router<B: Bridge>(state: Arc<ServerState<B>>, limits: Limits) -> App {
    let bridge_routes = state.bridge.routes();
    let state_ctx = state.ctx.clone();
    let mut app = Router::new();
    // The spec's `/_matrix/app/v1` routes and the legacy unprefixed ones (pre-r0 homeservers).
    for prefix in ["/_matrix/app/v1", ""] {
        app = app
            .route(
                &format!("{prefix}/transactions/{{txn_id}}"),
                put(transactions::push_events::<B>),
            )
            .route(&format!("{prefix}/users/{{user_id}}"), get(query::query_user_id::<B>))
            .route(&format!("{prefix}/rooms/{{alias}}"), get(query::query_room_alias::<B>));
    }
    for prefix in ["/_matrix/app/v1", "/_matrix/app/unstable"] {
        app = app
            .route(
                &format!("{prefix}/thirdparty/protocol/{{protocol}}"),
                get(thirdparty::get_protocol::<B>),
            )
            .route(
                &format!("{prefix}/thirdparty/location/{{protocol}}"),
                get(thirdparty::get_location_for_protocol::<B>),
            )
            .route(
                &format!("{prefix}/thirdparty/location"),
                get(thirdparty::get_location_for_room_alias::<B>),
            )
            .route(
                &format!("{prefix}/thirdparty/user/{{protocol}}"),
                get(thirdparty::get_user_for_protocol::<B>),
            )
            .route(
                &format!("{prefix}/thirdparty/user"),
                get(thirdparty::get_user_for_user_id::<B>),
            );
    }
    let metrics_here = {
        let m = &state.ctx.config().metrics;
        m.enabled && m.bind_address.is_none()
    };
    let mut app = app
        .route("/_matrix/app/v1/ping", post(ping::send_ping::<B>))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready::<B>))
        .route("/health/state", get(state_report::<B>));
    if metrics_here {
        // Without `HsAuthed`: scrapers do not hold the hs_token.
        app = app.route("/metrics", get(metrics::<B>));
    }
    let app = app
        // `DefaultBodyLimit`, and a body declared too large is refused before it is awaited.
        .layer(limit::BodyLimitLayer::new(limits.max_body_bytes))
        .with_state(state);
    let mut app = app.merge(bridge_routes);
    if let Some(provisioning) = provision::router(&state_ctx) {
        app = app.merge(provisioning);
    }
    let router = app
        .fallback(unrecognized)
        .method_not_allowed_fallback(method_not_allowed)
        // Inside `framed`, so that a timeout's answer gets the Matrix error shape too.
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limits.request_timeout))
        .layer(middleware::from_fn(framed));
    App { router, header_timeout: limits.request_timeout }
}

async fn unrecognized() -> ApiError {
    ApiError::unrecognized()
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "M_UNRECOGNIZED", "Method not allowed")
}

/// Runs a request in its span, logs its outcome, and gives framework answers that have no body
/// of their own (a body over the limit, a timeout) the Matrix error shape.
///
/// The span is made here rather than by tower-http's `TraceLayer` around this: each layer moves
/// the request and the futures inside it once more.
async fn framed(request: Request, next: Next) -> Response {
    // The matched route, never the raw URI: its query may hold `access_token`.
    let path = request.extensions().get::<MatchedPath>().map_or("<unmatched>", MatchedPath::as_str);
    let span = tracing::debug_span!("http", method = %request.method(), path);
    let started = std::time::Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let response = errors_as_json(response);
    let _entered = span.enter();
    let (status, latency_ms) = (response.status().as_u16(), started.elapsed().as_millis());
    if response.status().is_server_error() {
        tracing::error!(status, latency_ms, "request failed");
    } else {
        tracing::debug!(status, latency_ms, "request done");
    }
    response
}

/// The Matrix error shape for an error answer that has no JSON body.
fn errors_as_json(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (errcode, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ("M_TOO_LARGE", "Request body too large"),
        StatusCode::REQUEST_TIMEOUT => ("M_UNKNOWN", "Request timed out"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("M_NOT_JSON", "Expected a JSON body"),
        s if s.is_server_error() => ("M_UNKNOWN", "Internal server error"),
        _ => ("M_UNKNOWN", "Bad request"),
    };
    ApiError::new(status, errcode, message).into_response()
}

/// # `GET /health/live`: the process answers.
async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// # `GET /metrics`: Prometheus text format.
async fn metrics<B: Bridge>(State(state): State<Arc<ServerState<B>>>) -> Response {
    metrics_response(&state.ctx).await
}

pub(crate) async fn metrics_response(ctx: &Context) -> Response {
    let text = ctx.metrics().render(ctx.store()).await;
    ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        .into_response()
}

/// # `GET /health/state`: what the bridge is doing, with the inbox's counts.
async fn state_report<B: Bridge>(
    State(state): State<Arc<ServerState<B>>>,
) -> Json<serde_json::Value> {
    let inbox = state.ctx.store().inbox_stats().await.ok();
    Json(serde_json::json!({
        "bridge": state.health.state(),
        "homeserver": state.health.homeserver_ok(),
        "tasks": state.health.tasks(),
        "inbox": inbox.map(|i| serde_json::json!({"pending": i.pending, "parked": i.parked})),
    }))
}

/// # `GET /health/ready`: the database answers, the bridge runs, and the homeserver answered
/// the startup ping.
async fn ready<B: Bridge>(State(state): State<Arc<ServerState<B>>>) -> Response {
    let db = state.ctx.store().ping().await.is_ok();
    let running = state.health.is_running();
    let homeserver = state.health.homeserver_ok();
    let body = Json(serde_json::json!({
        "database": db,
        "running": running,
        "homeserver": homeserver,
    }));
    if db && running && homeserver {
        (StatusCode::OK, body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// The HTTP app with the limits the connection loop enforces (what [`router`] builds).
#[derive(Debug, Clone)]
pub(crate) struct App {
    pub(crate) router: Router,
    /// How long a client gets to send a request's headers (the body is under the router's
    /// request timeout).
    pub(crate) header_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` resolves, then finishes in-flight requests.
///
/// Not `axum::serve`: it sets no header read timeout, so a client sending its headers a byte at
/// a time (slowloris) held a connection, and the graceful shutdown, for as long as it liked.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: App,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::{
        rt::{TokioExecutor, TokioIo, TokioTimer},
        server::{conn::auto::Builder, graceful::GracefulShutdown},
        service::TowerToHyperService,
    };
    use tower::ServiceExt as _;

    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(app.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(
            app.router.clone().map_request(|r: Request<hyper::body::Incoming>| r.map(Body::new)),
        );
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests;
