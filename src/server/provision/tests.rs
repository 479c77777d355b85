//! Router tests of the provisioning API, through the whole appservice router (`oneshot`),
//! against the scripted network.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode},
};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;
use wiremock::{Mock, ResponseTemplate, matchers};

use super::{PREFIX, ROUTES};
use crate::{
    accounts::fake::{FakeNet, PASSWORD, setup},
    config::InboxConfig,
    health::Health,
    server::{Limits, ServerState, router},
    testing::MockHomeserver,
};

const SECRET: &str = "provisioning-secret-0123456789";
const ALICE: &str = "%40alice%3Alocalhost";

struct Harness {
    app: Router,
    net: Arc<FakeNet>,
    _hs: MockHomeserver,
}

async fn harness(extra: &str) -> Harness {
    let hs = MockHomeserver::start().await;
    let yaml =
        format!("provisioning: {{shared_secret: {SECRET}{extra}}}\nlogins: {{max_per_user: 5}}\n");
    let (ctx, net) = setup(&hs, &yaml).await;
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let (inbox, _dispatcher) =
        crate::dispatch::inbox(net.clone(), ctx.clone(), InboxConfig::default(), rx);
    let state = Arc::new(ServerState::new(net.clone(), ctx, inbox, Arc::new(Health::default())));
    let limits = Limits { max_body_bytes: 1 << 20, request_timeout: Duration::from_secs(30) };
    Harness { app: router(state, limits).router, net, _hs: hs }
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(format!("{PREFIX}{uri}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = if body.is_null() { Body::empty() } else { Body::from(body.to_string()) };
    let res = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn as_alice(app: &Router, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
    let sep = if path.contains('?') { '&' } else { '?' };
    call(app, method, &format!("{path}{sep}user_id={ALICE}"), Some(SECRET), body).await
}

/// The OpenAPI description and the router list the same routes.
#[test]
fn the_openapi_description_lists_the_routes_of_the_router() {
    let yaml: Value =
        crate::util::from_yaml(include_str!("../../../docs/provisioning.yaml")).unwrap();
    let mut described: Vec<(String, String)> = yaml["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, methods)| {
            methods.as_object().unwrap().keys().map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    described.sort();
    let mut served: Vec<(String, String)> =
        ROUTES.iter().map(|(m, p)| ((*m).to_owned(), format!("{PREFIX}{p}"))).collect();
    served.sort();
    assert_eq!(described, served);
}

#[tokio::test]
async fn every_route_refuses_missing_and_wrong_auth_and_low_levels() {
    let h = harness("").await;
    for &(method, path) in ROUTES {
        let path = path
            .replace("{flow_id}", "password")
            .replace("{process_id}", "p")
            .replace("{step_id}", "s")
            .replace("{step_type}", "user_input")
            .replace("{login_id}", "l")
            .replace("{identifier}", "i")
            .replace("{type}", "group");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let (status, body) = call(&h.app, method.clone(), &path, None, Value::Null).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("M_UNAUTHORIZED")),
            "{path}"
        );
        // Not the secret, and the homeserver does not know it as a token either.
        let wrong = format!("{path}?user_id={ALICE}");
        let (status, body) =
            call(&h.app, method.clone(), &wrong, Some("wrong-secret"), Value::Null).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
            "{path}"
        );
        // A relay-level user and a user without a level are below `user`.
        for user in ["%40bob%3Aother.org", "%40eve%3Aelsewhere.org"] {
            let uri = format!("{path}?user_id={user}");
            let (status, body) =
                call(&h.app, method.clone(), &uri, Some(SECRET), Value::Null).await;
            assert_eq!(
                (status, body["errcode"].as_str()),
                (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
                "{path}"
            );
        }
    }
    // The secret needs a user; the bridge's own users cannot be provisioned.
    let (status, _) = call(&h.app, Method::GET, "/whoami", Some(SECRET), Value::Null).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let bot = "/whoami?user_id=%40_test_bot%3Alocalhost";
    assert_eq!(
        call(&h.app, Method::GET, bot, Some(SECRET), Value::Null).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, body) = as_alice(&h.app, Method::GET, "/whoami", Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["user_id"].as_str(), body["permissions"].as_str()),
        (Some("@alice:localhost"), Some("user"))
    );
}

#[tokio::test]
async fn matrix_tokens_are_checked_with_the_homeserver_and_only_ours_count() {
    let h = harness("").await;
    for (token, user) in
        [("alice-token", "@alice:localhost"), ("remote-token", "@mallory:other.org")]
    {
        Mock::given(matchers::method("GET"))
            .and(matchers::path("/_matrix/client/v3/account/whoami"))
            .and(matchers::header("authorization", format!("Bearer {token}").as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"user_id": user})))
            .mount(h._hs.server())
            .await;
    }
    let (status, body) =
        call(&h.app, Method::GET, "/whoami", Some("alice-token"), Value::Null).await;
    assert_eq!((status, body["user_id"].as_str()), (StatusCode::OK, Some("@alice:localhost")));
    // A user of another server, even with a token that server's homeserver would accept.
    let (status, body) =
        call(&h.app, Method::GET, "/whoami", Some("remote-token"), Value::Null).await;
    assert_eq!((status, body["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")));
}

#[tokio::test]
async fn requests_over_the_limit_get_429() {
    let h = harness(", requests_per_minute: 3").await;
    for _ in 0..3 {
        assert_eq!(as_alice(&h.app, Method::GET, "/logins", Value::Null).await.0, StatusCode::OK);
    }
    let (status, body) = as_alice(&h.app, Method::GET, "/logins", Value::Null).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("M_LIMIT_EXCEEDED"))
    );
    // Failed authentications share a budget: guessing stops with 429 too.
    for _ in 0..3 {
        let uri = format!("/whoami?user_id={ALICE}");
        assert_eq!(
            call(&h.app, Method::GET, &uri, Some("guess"), Value::Null).await.0,
            StatusCode::FORBIDDEN
        );
    }
    let uri = format!("/whoami?user_id={ALICE}");
    assert_eq!(
        call(&h.app, Method::GET, &uri, Some(SECRET), Value::Null).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// The password flow over HTTP, to the same state as through commands: the login is stored,
/// connected, listed, and logged out.
#[tokio::test]
async fn a_password_login_over_http() {
    let h = harness("").await;
    let (status, flows) = as_alice(&h.app, Method::GET, "/login/flows", Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(flows["flows"][0]["id"], "password");
    let (status, _) = as_alice(&h.app, Method::POST, "/login/start/nope", Value::Null).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, step) = as_alice(&h.app, Method::POST, "/login/start/password", Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{step}");
    assert_eq!(step["type"], "user_input");
    assert_eq!(step["user_input"]["fields"][1]["type"], "password");
    let id = step["login_id"].as_str().unwrap().to_owned();
    let at = format!("/login/step/{id}/credentials/user_input");
    let (status, body) = as_alice(&h.app, Method::POST, &at, json!({"username": "alice"})).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM"))
    );
    let (status, body) =
        as_alice(&h.app, Method::POST, &at, json!({"username": "alice", "password": PASSWORD}))
            .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["type"].as_str(), body["complete"]["user_login_id"].as_str()),
        (Some("complete"), Some("alice"))
    );
    for _ in 0..1000 {
        if !h.net.connected.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, logins) = as_alice(&h.app, Method::GET, "/logins", Value::Null).await;
    assert_eq!(logins["logins"][0]["id"], "alice");
    // The chat routes: this bridge offers none of them, which is said as such; without a
    // login of the user's, there is nothing to act through.
    for (method, path) in [
        (Method::GET, "/resolve_identifier/bob"),
        (Method::POST, "/create_dm/bob"),
        (Method::POST, "/create_group/group"),
    ] {
        let (status, body) = as_alice(&h.app, method.clone(), path, Value::Null).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::NOT_IMPLEMENTED, Some("M_UNRECOGNIZED")),
            "{path}: {body}"
        );
        let (status, body) =
            as_alice(&h.app, method.clone(), &format!("{path}?login_id=other"), Value::Null).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
        );
        let bob = format!("{path}?user_id=%40bob%3Alocalhost");
        let (status, _) = call(&h.app, method, &bob, Some(SECRET), Value::Null).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    // Another user cannot log alice out; she can.
    let bob = "/logout/alice?user_id=%40bob%3Alocalhost";
    assert_eq!(
        call(&h.app, Method::POST, bob, Some(SECRET), Value::Null).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        as_alice(&h.app, Method::POST, "/logout/alice", Value::Null).await.0,
        StatusCode::OK
    );
    let (_, logins) = as_alice(&h.app, Method::GET, "/logins", Value::Null).await;
    assert_eq!(logins["logins"], json!([]));
}

/// A QR step completed over HTTP: the long poll returns when the network confirms. Cookies
/// and cancel go over HTTP as well.
#[tokio::test]
async fn display_and_wait_and_cookies_steps_over_http() {
    let h = harness("").await;
    let (_, step) = as_alice(&h.app, Method::POST, "/login/start/qr", Value::Null).await;
    assert_eq!(step["display_and_wait"], json!({"type": "qr", "data": "fakenet://link/42"}));
    let id = step["login_id"].as_str().unwrap().to_owned();
    let poll = {
        let app = h.app.clone();
        let at = format!("/login/step/{id}/qr/display_and_wait");
        tokio::spawn(async move { as_alice(&app, Method::POST, &at, Value::Null).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.net.scanned.notify_one();
    let (status, done) =
        tokio::time::timeout(Duration::from_secs(10), poll).await.unwrap().unwrap();
    assert_eq!((status, done["type"].as_str()), (StatusCode::OK, Some("complete")), "{done}");

    let (_, step) = as_alice(&h.app, Method::POST, "/login/start/cookies", Value::Null).await;
    assert_eq!(step["cookies"]["fields"], json!([{"id": "session"}]));
    let id = step["login_id"].as_str().unwrap().to_owned();
    let wrong_type = format!("/login/step/{id}/cookies/user_input");
    assert_eq!(
        as_alice(&h.app, Method::POST, &wrong_type, json!({"session": "ok"})).await.0,
        StatusCode::BAD_REQUEST
    );
    let at = format!("/login/step/{id}/cookies/cookies");
    let (status, done) = as_alice(&h.app, Method::POST, &at, json!({"session": "ok"})).await;
    assert_eq!((status, done["type"].as_str()), (StatusCode::OK, Some("complete")), "{done}");

    let (_, step) = as_alice(&h.app, Method::POST, "/login/start/password", Value::Null).await;
    let id = step["login_id"].as_str().unwrap().to_owned();
    let (status, who) = as_alice(&h.app, Method::GET, "/whoami", Value::Null).await;
    assert_eq!(
        (status, who["logins_in_progress"][0]["login_id"].as_str()),
        (StatusCode::OK, Some(id.as_str()))
    );
    assert_eq!(
        as_alice(&h.app, Method::POST, &format!("/login/cancel/{id}"), Value::Null).await.0,
        StatusCode::OK
    );
    assert_eq!(
        as_alice(&h.app, Method::POST, &format!("/login/cancel/{id}"), Value::Null).await.0,
        StatusCode::NOT_FOUND
    );
}

/// Without a shared secret there is no provisioning API at all.
#[tokio::test]
async fn without_a_secret_the_api_is_not_served() {
    let hs = MockHomeserver::start().await;
    let (ctx, _net) = setup(&hs, "").await;
    assert!(super::router(&ctx).is_none());
}

/// Malformed paths and queries of the chat routes are answered in the Matrix error format.
#[tokio::test]
async fn malformed_chat_requests_get_matrix_errors() {
    let h = harness("").await;
    for path in [
        "/resolve_identifier/%FF",
        "/resolve_identifier/bob?login_id=a&login_id=b",
        "/create_group/%FF%FE",
    ] {
        let method = if path.starts_with("/resolve") { Method::GET } else { Method::POST };
        let (status, body) = as_alice(&h.app, method, path, Value::Null).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(body["errcode"].is_string() && body["error"].is_string(), "{path}: {body}");
    }
}
