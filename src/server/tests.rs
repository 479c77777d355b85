//! Router tests: every route and every bad input, through `oneshot`, no socket.

use std::sync::{Arc, Mutex};

use axum::{
    body::Body,
    http::{Method, Request, StatusCode},
};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

use super::*;
use crate::{
    bridge::BridgeResult,
    config::InboxConfig,
    event::{EphemeralEvent, Event},
    registration::Registration,
    store::Store,
};

const HS_TOKEN: &str = "hs_token_for_tests_0123456789";

#[derive(Debug, Default)]
struct Recorder {
    ephemeral: Mutex<Vec<String>>,
    /// Notified after each ephemeral event.
    ephemeral_seen: tokio::sync::Notify,
}

impl Bridge for Recorder {
    type Config = crate::config::NoBridgeConfig;
    const NAME: &'static str = "recorder";
    async fn create(_: Self::Config, _: Context) -> BridgeResult<Self> {
        Ok(Self::default())
    }
    async fn handle_other(&self, _: &Event) -> BridgeResult {
        Ok(())
    }
    async fn handle_ephemeral(&self, event: &EphemeralEvent) {
        self.ephemeral.lock().unwrap().push(event.kind.clone());
        self.ephemeral_seen.notify_one();
    }
    async fn query_user(&self, user_id: &ruma::UserId) -> BridgeResult<bool> {
        Ok(user_id.localpart() == "_t_exists")
    }
    async fn query_alias(&self, alias: &ruma::RoomAliasId) -> BridgeResult<bool> {
        if alias.alias() == "_t_broken" {
            return Err(crate::BridgeError::new("remote network down"));
        }
        Ok(alias.alias() == "_t_exists")
    }
    async fn thirdparty_protocol(
        &self,
        protocol: &str,
    ) -> BridgeResult<Option<ruma::thirdparty::Protocol>> {
        Ok((protocol == "test").then(|| {
            ruma::thirdparty::ProtocolInit {
                user_fields: vec!["name".into()],
                location_fields: vec!["channel".into()],
                icon: "mxc://localhost/icon".into(),
                field_types: Default::default(),
                instances: Vec::new(),
            }
            .into()
        }))
    }
    async fn thirdparty_users(
        &self,
        _protocol: &str,
        fields: &std::collections::BTreeMap<String, String>,
    ) -> BridgeResult<Vec<ruma::thirdparty::User>> {
        Ok(fields
            .get("name")
            .map(|n| {
                vec![ruma::thirdparty::User::new(
                    ruma::UserId::parse(format!("@_t_{n}:localhost")).unwrap(),
                    "test".into(),
                    fields.clone(),
                )]
            })
            .unwrap_or_default())
    }
}

fn registration() -> Registration {
    Registration::from_yaml(&format!(
        "id: test\nurl: null\nas_token: as_token_for_tests_0123456789\nhs_token: {HS_TOKEN}\n\
         sender_localpart: _t_bot\nprotocols: [test]\nnamespaces:\n  users:\n\
         \x20   - exclusive: true\n      regex: '@_t_.*:localhost'\n\
         \x20 aliases:\n    - exclusive: true\n      regex: '#_t_.*:localhost'\n"
    ))
    .unwrap()
}

struct Harness {
    app: Router,
    store: Store,
    bridge: Arc<Recorder>,
    _dispatcher: Dispatcher,
}

type Dispatcher = crate::dispatch::Dispatcher<Recorder>;

fn test_context(store: Store) -> Context {
    let config: crate::Config<()> = crate::Config::from_yaml(
        "homeserver: {address: 'http://127.0.0.1:1', domain: localhost}\n\
         appservice: {id: test, address: 'http://127.0.0.1:2', port: 2, bot: {localpart: _t_bot}, \
         ghost_localpart_template: '_t_{id}'}\n",
    )
    .unwrap();
    Context::new(store, registration(), config).unwrap()
}

async fn harness(max_body: usize) -> Harness {
    let store = Store::connect_url("sqlite::memory:").await.unwrap();
    let ctx = test_context(store.clone());
    let bridge = Arc::new(Recorder::default());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let (inbox, dispatcher) =
        crate::dispatch::inbox(bridge.clone(), ctx.clone(), InboxConfig::default(), rx);
    let state = Arc::new(ServerState::new(bridge.clone(), ctx, inbox, Arc::new(Health::default())));
    let limits = Limits { max_body_bytes: max_body, request_timeout: Duration::from_secs(5) };
    Harness { app: router(state, limits).router, store, bridge, _dispatcher: dispatcher }
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = app.clone().oneshot(req.body(Body::from(body.to_owned())).unwrap()).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

const TXN: &str = concat!(
    r#"{"events":[{"event_id":"$e1","room_id":"!r:localhost","sender":"@a:localhost","#,
    r#""type":"m.room.message","content":{"body":"hi","msgtype":"m.text"}}]}"#,
);

#[tokio::test]
async fn transaction_is_stored_before_the_200() {
    let h = harness(1 << 20).await;
    let (status, body) =
        call(&h.app, Method::PUT, "/_matrix/app/v1/transactions/1", Some(HS_TOKEN), TXN).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({}));
    assert_eq!(
        h.store.inbox_status("$e1").await.unwrap(),
        Some(crate::store::InboxStatus::Pending { attempts: 0 })
    );
}

#[tokio::test]
async fn duplicate_transaction_is_a_no_op_and_reused_txn_id_with_new_events_is_stored() {
    let h = harness(1 << 20).await;
    for _ in 0..2 {
        let (status, _) =
            call(&h.app, Method::PUT, "/_matrix/app/v1/transactions/7", Some(HS_TOKEN), TXN).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(h.store.inbox_stats().await.unwrap().pending, 1);
    // Synapse on SQLite restarts txn IDs at 1: the same ID with other events must be processed.
    let other = TXN.replace("$e1", "$e2");
    let (status, _) =
        call(&h.app, Method::PUT, "/_matrix/app/v1/transactions/7", Some(HS_TOKEN), &other).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.store.inbox_stats().await.unwrap().pending, 2);
}

#[tokio::test]
async fn legacy_unprefixed_route_and_query_token_work() {
    let h = harness(1 << 20).await;
    let uri = format!("/transactions/9?access_token={HS_TOKEN}");
    let (status, _) = call(&h.app, Method::PUT, &uri, None, TXN).await;
    assert_eq!(status, StatusCode::OK);
    assert!(h.store.inbox_status("$e1").await.unwrap().is_some());
}

#[tokio::test]
async fn auth_missing_is_401_wrong_is_403_and_mismatch_is_403() {
    let h = harness(1 << 20).await;
    let uri = "/_matrix/app/v1/transactions/1";
    let (s, b) = call(&h.app, Method::PUT, uri, None, TXN).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::UNAUTHORIZED, Some("M_UNAUTHORIZED")));
    let (s, b) = call(&h.app, Method::PUT, uri, Some("wrong"), TXN).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")));
    let both = format!("{uri}?access_token=wrong");
    let (s, _) = call(&h.app, Method::PUT, &both, Some(HS_TOKEN), TXN).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let both = format!("{uri}?access_token={HS_TOKEN}");
    let (s, _) = call(&h.app, Method::PUT, &both, Some(HS_TOKEN), TXN).await;
    assert_eq!(s, StatusCode::OK);
    // Nothing was stored by the refused requests: only the last one.
    assert_eq!(h.store.inbox_stats().await.unwrap().pending, 1);
}

/// Every homeserver-facing route, under every prefix, refuses a request without the token
/// (401) or with a wrong one (403) before looking at the rest of it.
#[tokio::test]
async fn every_homeserver_route_needs_the_token() {
    let h = harness(1 << 20).await;
    let mut routes: Vec<(Method, String, &str)> = Vec::new();
    for prefix in ["/_matrix/app/v1", ""] {
        routes.push((Method::PUT, format!("{prefix}/transactions/t1"), TXN));
        routes.push((Method::GET, format!("{prefix}/users/%40_test_x%3Alocalhost"), ""));
        routes.push((Method::GET, format!("{prefix}/rooms/%23_test_x%3Alocalhost"), ""));
    }
    for prefix in ["/_matrix/app/v1", "/_matrix/app/unstable"] {
        for path in [
            "thirdparty/protocol/p",
            "thirdparty/location/p",
            "thirdparty/location?alias=%23a%3Ax",
            "thirdparty/user/p",
            "thirdparty/user?userid=%40a%3Ax",
        ] {
            routes.push((Method::GET, format!("{prefix}/{path}"), ""));
        }
    }
    routes.push((Method::POST, "/_matrix/app/v1/ping".to_owned(), "{}"));
    for (method, uri, body) in &routes {
        let (s, b) = call(&h.app, method.clone(), uri, None, body).await;
        assert_eq!(
            (s, b["errcode"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("M_UNAUTHORIZED")),
            "{uri}"
        );
        let (s, b) = call(&h.app, method.clone(), uri, Some("wrong"), body).await;
        assert_eq!(
            (s, b["errcode"].as_str()),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
            "{uri}"
        );
        // A bad body behind a bad token is still a token error: the token comes first.
        if *method != Method::GET {
            let (s, _) = call(&h.app, method.clone(), uri, Some("wrong"), "{not json").await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{uri}");
        }
        // The right token gets past the check (whatever the route then answers).
        let (s, _) = call(&h.app, method.clone(), uri, Some(HS_TOKEN), body).await;
        assert!(s != StatusCode::UNAUTHORIZED && s != StatusCode::FORBIDDEN, "{uri}: {s}");
    }
    assert_eq!(h.store.inbox_stats().await.unwrap().pending, 1, "only the authorized transaction");
}

#[tokio::test]
async fn unknown_route_is_404_and_wrong_method_is_405_unrecognized() {
    let h = harness(1 << 20).await;
    let (s, b) = call(&h.app, Method::GET, "/_matrix/app/v1/nope", Some(HS_TOKEN), "").await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::NOT_FOUND, Some("M_UNRECOGNIZED")));
    let (s, b) =
        call(&h.app, Method::GET, "/_matrix/app/v1/transactions/1", Some(HS_TOKEN), "").await;
    assert_eq!(
        (s, b["errcode"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("M_UNRECOGNIZED"))
    );
}

#[tokio::test]
async fn bad_bodies_get_spec_errors_and_store_nothing() {
    let h = harness(4096).await;
    let uri = "/_matrix/app/v1/transactions/1";
    let (s, b) = call(&h.app, Method::PUT, uri, Some(HS_TOKEN), "{not json").await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_NOT_JSON")));
    let (s, b) = call(&h.app, Method::PUT, uri, Some(HS_TOKEN), r#"{"events":{}}"#).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_BAD_JSON")));
    let huge = format!(r#"{{"events":[],"pad":"{}"}}"#, "x".repeat(8192));
    let (s, b) = call(&h.app, Method::PUT, uri, Some(HS_TOKEN), &huge).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("M_TOO_LARGE")));
    assert_eq!(h.store.inbox_stats().await.unwrap().pending, 0);
}

/// A body declared over the limit is refused from its headers: the answer does not wait for a
/// body that may never come.
#[tokio::test]
async fn declared_length_over_the_limit_is_413_at_once() {
    let h = harness(4096).await;
    for (uri, token) in [
        ("/_matrix/app/v1/transactions/big", Some(HS_TOKEN)),
        (concat!("/transactions/big?access_token=", "hs_token_for_tests_0123456789"), None),
    ] {
        let mut req = Request::builder()
            .method(Method::PUT)
            .uri(uri)
            .header("content-length", "4097")
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        // A body that never sends a byte.
        let never = futures_util::stream::pending::<Result<axum::body::Bytes, std::io::Error>>();
        let req = req.body(Body::from_stream(never)).unwrap();
        let res = tokio::time::timeout(Duration::from_secs(2), h.app.clone().oneshot(req))
            .await
            .expect("answered without waiting for the body")
            .unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, Some("M_TOO_LARGE"))
        );
        assert!(body["error"].as_str().is_some_and(|e| e.contains("4096")), "{body}");
    }
    // At the limit, the body is read as usual.
    let at_limit = format!(r#"{{"events":[],"pad":"{}"}}"#, "x".repeat(4096 - 22));
    assert_eq!(at_limit.len(), 4096);
    let (s, _) =
        call(&h.app, Method::PUT, "/_matrix/app/v1/transactions/2", Some(HS_TOKEN), &at_limit)
            .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn ping_accepts_absent_and_null_transaction_id() {
    let h = harness(1 << 20).await;
    for body in ["{}", r#"{"transaction_id":null}"#, r#"{"transaction_id":"abc"}"#] {
        let (s, b) = call(&h.app, Method::POST, "/_matrix/app/v1/ping", Some(HS_TOKEN), body).await;
        assert_eq!((s, b), (StatusCode::OK, serde_json::json!({})), "{body}");
    }
    let (s, _) = call(&h.app, Method::POST, "/_matrix/app/v1/ping", None, "{}").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn user_and_alias_queries_decode_the_path_and_ask_the_bridge() {
    let h = harness(1 << 20).await;
    let (s, _) = call(
        &h.app,
        Method::GET,
        "/_matrix/app/v1/users/%40_t_exists%3Alocalhost",
        Some(HS_TOKEN),
        "",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = call(
        &h.app,
        Method::GET,
        "/_matrix/app/v1/users/%40_t_nobody%3Alocalhost",
        Some(HS_TOKEN),
        "",
    )
    .await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")));
    // Outside the namespace: 404 without asking the bridge.
    let (s, _) = call(
        &h.app,
        Method::GET,
        "/_matrix/app/v1/users/%40_t_exists%3Aelsewhere",
        Some(HS_TOKEN),
        "",
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, b) =
        call(&h.app, Method::GET, "/_matrix/app/v1/users/not-a-user", Some(HS_TOKEN), "").await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")));
    let (s, _) = call(
        &h.app,
        Method::GET,
        "/_matrix/app/v1/rooms/%23_t_exists%3Alocalhost",
        Some(HS_TOKEN),
        "",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = call(
        &h.app,
        Method::GET,
        "/_matrix/app/v1/rooms/%23_t_broken%3Alocalhost",
        Some(HS_TOKEN),
        "",
    )
    .await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::INTERNAL_SERVER_ERROR, Some("M_UNKNOWN")));
    // The bridge's error text is logged, not sent.
    assert!(!b.to_string().contains("remote network down"));
}

#[tokio::test]
async fn thirdparty_routes_answer_protocol_and_lookups() {
    let h = harness(1 << 20).await;
    let (s, b) =
        call(&h.app, Method::GET, "/_matrix/app/v1/thirdparty/protocol/test", Some(HS_TOKEN), "")
            .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["user_fields"], serde_json::json!(["name"]));
    let (s, _) =
        call(&h.app, Method::GET, "/_matrix/app/v1/thirdparty/protocol/other", Some(HS_TOKEN), "")
            .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, b) = call(
        &h.app,
        Method::GET,
        &format!("/_matrix/app/v1/thirdparty/user/test?name=bob&access_token={HS_TOKEN}"),
        None,
        "",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b[0]["userid"], "@_t_bob:localhost");
    assert_eq!(b[0]["fields"], serde_json::json!({"name": "bob"}));
    let (s, _) = call(
        &h.app,
        Method::GET,
        "/_matrix/app/v1/thirdparty/location/test?channel=x",
        Some(HS_TOKEN),
        "",
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(
        &h.app,
        Method::GET,
        "/_matrix/app/v1/thirdparty/user?userid=%40_t_a%3Alocalhost",
        Some(HS_TOKEN),
        "",
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(
        &h.app,
        Method::GET,
        "/_matrix/app/v1/thirdparty/location?alias=bad",
        Some(HS_TOKEN),
        "",
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn health_routes_need_no_token() {
    let h = harness(1 << 20).await;
    let (s, _) = call(&h.app, Method::GET, "/health/live", None, "").await;
    assert_eq!(s, StatusCode::OK);
    // Not running yet: the dispatcher was not started.
    let (s, b) = call(&h.app, Method::GET, "/health/ready", None, "").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(b["database"], true);
}

#[tokio::test]
async fn ephemeral_events_reach_the_bridge_once() {
    let h = harness(1 << 20).await;
    let edu =
        r#"{"type":"m.typing","room_id":"!r:localhost","content":{"user_ids":["@a:localhost"]}}"#;
    let body =
        format!(r#"{{"events":[],"ephemeral":[{edu}],"de.sorunome.msc2409.ephemeral":[{edu}]}}"#);
    let (s, _) =
        call(&h.app, Method::PUT, "/_matrix/app/v1/transactions/5", Some(HS_TOKEN), &body).await;
    assert_eq!(s, StatusCode::OK);
    // A retry of the same transaction delivers nothing again.
    let (s, _) =
        call(&h.app, Method::PUT, "/_matrix/app/v1/transactions/5", Some(HS_TOKEN), &body).await;
    assert_eq!(s, StatusCode::OK);
    let Harness { _dispatcher: dispatcher, bridge, .. } = h;
    let (stop_tx, _) = tokio::sync::watch::channel(true);
    drop(stop_tx);
    // Run the dispatcher briefly: it drains the ephemeral queue.
    let run = tokio::spawn(dispatcher.run(Duration::from_millis(10)));
    let seen = tokio::time::timeout(Duration::from_secs(10), bridge.ephemeral_seen.notified());
    assert!(seen.await.is_ok(), "the ephemeral event reached the bridge");
    run.abort();
    assert_eq!(*bridge.ephemeral.lock().unwrap(), ["m.typing"]);
}

/// A client trickling its headers a byte at a time is cut off after the request timeout, and
/// does not hold up the graceful shutdown.
#[tokio::test]
async fn slow_headers_are_cut_off_and_do_not_block_shutdown() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let h = harness_app(Duration::from_secs(1)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, h, async move {
        let _ = stopped.await;
    }));
    let head =
        b"PUT /_matrix/app/v1/transactions/1 HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}";
    let started = std::time::Instant::now();
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut cut = false;
    for b in head {
        if sock.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 512];
        if let Ok(n) = tokio::time::timeout(Duration::from_millis(100), sock.read(&mut buf)).await {
            // An answer or EOF before the request was complete: cut off.
            let _ = n;
            cut = true;
            break;
        }
    }
    let took = started.elapsed();
    assert!(cut && took < Duration::from_secs(3), "slow headers held for {took:?}");
    // A half-sent request does not block the shutdown.
    let mut stuck = tokio::net::TcpStream::connect(addr).await.unwrap();
    stuck.write_all(b"PUT /_matrix/app/v1/transactions/2 HTTP/1.1\r\nho").await.unwrap();
    let _ = stop.send(());
    let done = tokio::time::timeout(Duration::from_secs(5), server).await;
    assert!(done.is_ok(), "shutdown waited for the slow client");
}

async fn harness_app(request_timeout: Duration) -> App {
    let store = Store::connect_url("sqlite::memory:").await.unwrap();
    let ctx = test_context(store.clone());
    let bridge = Arc::new(Recorder::default());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let (inbox, _dispatcher) =
        crate::dispatch::inbox(bridge.clone(), ctx.clone(), InboxConfig::default(), rx);
    let state = Arc::new(ServerState::new(bridge, ctx, inbox, Arc::new(Health::default())));
    router(state, Limits { max_body_bytes: 1 << 20, request_timeout })
}
