//! Client tests against the mock homeserver.

use std::time::{Duration, Instant};

use ruma::{
    MilliSecondsSinceUnixEpoch, UInt,
    api::client::{
        keys::upload_keys, membership::join_room_by_id, message::send_message_event,
        redact::redact_event,
    },
    events::room::message::RoomMessageEventContent,
    mxc_uri, room_id, user_id,
};
use serde_json::json;

use super::*;
use crate::testing::{AS_TOKEN, MockHomeserver};

/// A text message to send to `room`, with a fresh transaction ID.
fn text(room: &RoomId, body: &str) -> send_message_event::v3::Request {
    let content = RoomMessageEventContent::text_plain(body);
    send_message_event::v3::Request::new(room.to_owned(), new_txn_id(), &content).unwrap()
}

/// `client` (new, not shared yet) with its API requests through reqwest, as to an HTTPS
/// homeserver: the mock is plain HTTP, which the client otherwise reaches through hyper.
fn through_reqwest(mut client: Client) -> Client {
    let inner = Arc::get_mut(&mut client.inner).expect("a client not shared yet");
    assert!(inner.plain.take().is_some(), "a plain-HTTP homeserver goes through hyper");
    client
}

fn join(room: &RoomId) -> join_room_by_id::v3::Request {
    join_room_by_id::v3::Request::new(room.to_owned())
}

#[tokio::test]
async fn as_token_is_a_bearer_and_user_id_asserts_identity() {
    let hs = MockHomeserver::start().await;
    let ghost = user_id!("@_test_alice:localhost");
    hs.mock_whoami(ghost).as_user(ghost).expect(1).mount().await;

    let response = hs.client().send(whoami::v3::Request::new(), Some(ghost)).await.unwrap();
    assert_eq!(response.user_id, ghost);

    let received = hs.received().await;
    assert_eq!(received.len(), 1);
    let auth = received[0].headers.get("authorization").unwrap().to_str().unwrap();
    assert_eq!(auth, format!("Bearer {AS_TOKEN}"));
    let user_ids: Vec<_> = received[0]
        .url
        .query_pairs()
        .filter(|(k, _)| k == "user_id")
        .map(|(_, v)| v.into_owned())
        .collect();
    assert_eq!(user_ids, [ghost.as_str()]);
}

#[tokio::test]
async fn bot_requests_carry_no_user_id() {
    let hs = MockHomeserver::start().await;
    let bot = MockHomeserver::bot();
    hs.mock_whoami(&bot).as_bot().expect(2).mount().await;
    assert_eq!(hs.client().whoami().await.unwrap().user_id, bot);
    // Naming the bot explicitly is the same as acting as the bot.
    hs.client().send(whoami::v3::Request::new(), Some(&bot)).await.unwrap();
}

#[tokio::test]
async fn masquerading_outside_the_namespace_fails_before_any_request() {
    let hs = MockHomeserver::start().await;
    let room = room_id!("!room:localhost");
    hs.mock_join(room).never().mount().await;
    hs.mock_register().never().mount().await;
    let client = hs.client();
    let alice = user_id!("@alice:localhost");

    let err = client.send(join(room), Some(alice)).await.unwrap_err();
    assert!(matches!(err, Error::NotInNamespace { ref user_id } if user_id == alice), "{err}");
    let err = client.register(alice).await.unwrap_err();
    assert!(matches!(err, Error::NotInNamespace { .. }), "{err}");
    assert!(hs.received().await.is_empty());
}

#[tokio::test]
async fn rate_limited_request_waits_retry_after_ms_then_succeeds() {
    let hs = MockHomeserver::start().await;
    let room = room_id!("!room:localhost");
    hs.mock_send(room, "m.room.message").rate_limited(300).up_to_n_times(1).expect(1).mount().await;
    hs.mock_send(room, "m.room.message").ok().expect(1).mount().await;

    let started = Instant::now();
    let event_id = hs.client().send(text(room, "hi"), None).await.unwrap().event_id;
    let waited = started.elapsed();
    assert_eq!(event_id, "$sent:localhost");
    assert!(waited >= Duration::from_millis(300), "waited only {waited:?}");
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
}

#[tokio::test]
async fn retry_after_header_wins_and_is_capped() {
    let hs = MockHomeserver::start().await;
    let room = room_id!("!room:localhost");
    let limited = ResponseTemplateExt::limited_with_header("60");
    wiremock::Mock::given(wiremock::matchers::method("PUT"))
        .respond_with(limited)
        .up_to_n_times(1)
        .mount(hs.server())
        .await;
    hs.mock_send(room, "m.room.message").ok().expect(1).mount().await;

    let policy = RetryPolicy {
        max_retry_after: Duration::from_millis(400),
        ..crate::testing::fast_retry_policy()
    };
    let started = Instant::now();
    hs.client_with_retry(policy).send(text(room, "hi"), None).await.unwrap();
    let waited = started.elapsed();
    // The header said 60 s (the body 10 ms); the cap of 400 ms applies to the header's value.
    assert!(waited >= Duration::from_millis(400), "waited only {waited:?}");
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
}

struct ResponseTemplateExt;
impl ResponseTemplateExt {
    fn limited_with_header(seconds: &str) -> wiremock::ResponseTemplate {
        wiremock::ResponseTemplate::new(429).insert_header("retry-after", seconds).set_body_json(
            json!({
                "errcode": "M_LIMIT_EXCEEDED", "error": "slow down", "retry_after_ms": 10
            }),
        )
    }
}

#[tokio::test]
async fn retried_send_keeps_its_transaction_id() {
    let hs = MockHomeserver::start().await;
    let room = room_id!("!room:localhost");
    hs.mock_send(room, "m.room.message").status(502).up_to_n_times(1).expect(1).mount().await;
    hs.mock_send(room, "m.room.message").ok().expect(1).mount().await;

    hs.client().send(text(room, "hi"), None).await.unwrap();
    let txns = hs.sent_txn_ids(room, "m.room.message").await;
    assert_eq!(txns.len(), 2);
    assert_eq!(txns[0], txns[1]);
}

/// Both links (hyper's for plain HTTP, reqwest's for HTTPS) send the same request: the
/// bearer token and the asserted user; retry a gateway error with the same transaction ID;
/// and keep a Matrix error's kind.
#[tokio::test]
async fn both_links_send_retry_and_report_alike() {
    let hs = MockHomeserver::start().await;
    let ghost = user_id!("@_test_alice:localhost");
    let rooms = [room_id!("!hyper:localhost"), room_id!("!reqwest:localhost")];
    hs.mock_whoami(ghost).as_user(ghost).expect(2).mount().await;
    hs.mock_register().for_user(ghost).user_in_use().expect(2).mount().await;
    for room in rooms {
        hs.mock_send(room, "m.room.message").status(502).up_to_n_times(1).expect(1).mount().await;
        hs.mock_send(room, "m.room.message").ok().expect(1).mount().await;
    }
    for (client, room) in [hs.client(), through_reqwest(hs.client())].into_iter().zip(rooms) {
        let response = client.send(whoami::v3::Request::new(), Some(ghost)).await.unwrap();
        assert_eq!(response.user_id, ghost);
        client.send(text(room, "hi"), None).await.unwrap();
        let txns = hs.sent_txn_ids(room, "m.room.message").await;
        assert_eq!(txns.len(), 2, "{room}");
        assert_eq!(txns[0], txns[1], "{room}: a retry keeps its transaction ID");
        let err = client.register(ghost).await.unwrap_err();
        assert_eq!(err.kind(), Some(&ruma::api::error::ErrorKind::UserInUse));
    }
    let received = hs.received().await;
    assert_eq!(received.len(), 8);
    for r in &received {
        let auth = r.headers.get("authorization").unwrap().to_str().unwrap();
        assert_eq!(auth, format!("Bearer {AS_TOKEN}"));
    }
}

/// A homeserver that cannot be reached is [`Error::Http`] on both links.
#[tokio::test]
async fn an_unreachable_homeserver_is_an_http_error_on_both_links() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
    let server_name = ruma::ServerName::parse("localhost").unwrap();
    let new = || {
        let registration = crate::testing::test_registration();
        Client::with_retry_policy(url.clone(), &server_name, registration, RetryPolicy::none())
            .unwrap()
    };
    for client in [new(), through_reqwest(new())] {
        let err = client.whoami().await.unwrap_err();
        assert!(matches!(err, Error::Http(_)), "{err:?}");
    }
}

#[test]
fn fresh_transaction_ids_differ() {
    assert_ne!(new_txn_id(), new_txn_id());
}

#[tokio::test]
async fn gateway_errors_give_up_after_max_attempts() {
    let hs = MockHomeserver::start().await;
    let room = room_id!("!room:localhost");
    hs.mock_join(room).status(503).expect(3).mount().await;
    let err = hs.client().send(join(room), None).await.unwrap_err();
    assert_eq!(err.status(), Some(reqwest::StatusCode::SERVICE_UNAVAILABLE));
}

#[tokio::test]
async fn client_errors_are_not_retried_and_keep_their_kind() {
    let hs = MockHomeserver::start().await;
    let ghost = user_id!("@_test_bob:localhost");
    hs.mock_register().for_user(ghost).user_in_use().expect(1).mount().await;
    let err = hs.client().register(ghost).await.unwrap_err();
    assert_eq!(err.kind(), Some(&ruma::api::error::ErrorKind::UserInUse));
}

#[tokio::test]
async fn register_uses_the_appservice_login_type_and_inhibits_login() {
    let hs = MockHomeserver::start().await;
    let ghost = user_id!("@_test_bob:localhost");
    hs.mock_register()
        .for_user(ghost)
        .as_bot()
        .with_body(json!({ "type": "m.login.application_service", "inhibit_login": true }))
        .expect(1)
        .mount()
        .await;
    assert_eq!(hs.client().register(ghost).await.unwrap().user_id, ghost);
}

#[tokio::test]
async fn timestamp_massaging_sets_the_ts_query_parameter_once() {
    let hs = MockHomeserver::start().await;
    let room = room_id!("!room:localhost");
    let ghost = user_id!("@_test_bob:localhost");
    hs.mock_send(room, "m.room.message")
        .as_user(ghost)
        .with_query("ts", "1600000000000")
        .expect(1)
        .mount()
        .await;
    hs.mock_redact(room).as_user(ghost).with_query("ts", "1600000000001").expect(1).mount().await;
    let client = hs.client();
    let ts = |ms: u64| MilliSecondsSinceUnixEpoch(UInt::new(ms).unwrap());
    // ruma writes `ts` for a send; options add it for a redaction, whose request has no field.
    let mut send = text(room, "old");
    send.timestamp = Some(ts(1_600_000_000_000));
    let options = RequestOptions::as_user(Some(ghost)).with_ts(ts(1_600_000_000_002));
    client.send_with(send, &options).await.unwrap();
    let event = ruma::event_id!("$old:localhost").to_owned();
    let redact = redact_event::v3::Request::new(room.to_owned(), event, new_txn_id());
    let options = RequestOptions::as_user(Some(ghost)).with_ts(ts(1_600_000_000_001));
    client.send_with(redact, &options).await.unwrap();
    let ts_params: Vec<usize> = hs
        .received()
        .await
        .iter()
        .map(|r| r.url.query_pairs().filter(|(k, _)| k == "ts").count())
        .collect();
    assert_eq!(ts_params, [1, 1], "a request's own `ts` is not repeated");
}

#[tokio::test]
async fn device_identity_is_asserted_with_both_parameters() {
    let hs = MockHomeserver::start().await;
    let ghost = user_id!("@_test_bob:localhost");
    hs.mock("POST", "/_matrix/client/v3/keys/upload")
        .as_user(ghost)
        .with_query("device_id", "GHOSTDEV")
        .with_query("org.matrix.msc3202.device_id", "GHOSTDEV")
        .ok_body(json!({ "one_time_key_counts": {} }))
        .expect(1)
        .mount()
        .await;
    let options = RequestOptions::as_user(Some(ghost)).with_device(ruma::device_id!("GHOSTDEV"));
    hs.client().send_with(upload_keys::v3::Request::new(), &options).await.unwrap();
}

/// The bot's own device is asserted with the bot named as the user too (Synapse fails on a
/// `device_id` without `user_id`); without a device the bot is not named.
#[tokio::test]
async fn the_bots_device_is_asserted_with_the_bot_named() {
    let hs = MockHomeserver::start().await;
    let bot = hs.client().bot_user_id().to_owned();
    hs.mock("POST", "/_matrix/client/v3/keys/upload")
        .as_user(&bot)
        .with_query("device_id", "BOTDEV")
        .ok_body(json!({ "one_time_key_counts": {} }))
        .expect(1)
        .mount()
        .await;
    let options = RequestOptions::as_user(None).with_device(ruma::device_id!("BOTDEV"));
    hs.client().send_with(upload_keys::v3::Request::new(), &options).await.unwrap();
    // Not matched by the mock above (no device, no user): the mock server answers 404.
    let plain = RequestOptions::default();
    assert!(hs.client().send_with(upload_keys::v3::Request::new(), &plain).await.is_err());
    let urls: Vec<String> = hs.received().await.iter().map(|r| r.url.to_string()).collect();
    assert!(!urls[1].contains("user_id="), "{urls:?}");
}

#[tokio::test]
async fn download_falls_back_to_legacy_media_on_unrecognized() {
    let hs = MockHomeserver::start().await;
    hs.mock("GET", "/_matrix/client/v1/media/download/localhost/abc")
        .error(404, "M_UNRECOGNIZED", "Unrecognized request")
        .expect(1)
        .mount()
        .await;
    wiremock::Mock::given(wiremock::matchers::path("/_matrix/media/v3/download/localhost/abc"))
        .respond_with(
            wiremock::ResponseTemplate::new(200).set_body_raw(b"bytes".to_vec(), "image/png"),
        )
        .expect(1)
        .mount(hs.server())
        .await;
    let (data, content_type) = hs.client().download(mxc_uri!("mxc://localhost/abc")).await.unwrap();
    assert_eq!(data, b"bytes");
    assert_eq!(content_type.as_deref(), Some("image/png"));
}

#[tokio::test]
async fn ping_posts_to_the_appservice_ping_endpoint() {
    let hs = MockHomeserver::start().await;
    hs.mock("POST", "/_matrix/client/v1/appservice/test-bridge/ping")
        .with_body(json!({ "transaction_id": "ping-1" }))
        .ok_body(json!({ "duration_ms": 7 }))
        .expect(1)
        .mount()
        .await;
    let txn = <&TransactionId>::from("ping-1");
    assert_eq!(hs.client().ping(txn).await.unwrap(), Duration::from_millis(7));
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let policy = RetryPolicy {
        max_attempts: 10,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(1000),
        max_retry_after: Duration::from_secs(1),
    };
    let delays: Vec<_> = (1..=6).map(|n| policy.backoff(n).as_millis()).collect();
    assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
}

/// An endpoint newer than the cached versions fetches them first, once; one the cache covers
/// fetches nothing.
#[tokio::test]
async fn supported_versions_are_cached_and_fetched_for_a_newer_endpoint() {
    use ruma::api::client::room::report_room;

    let hs = MockHomeserver::start().await;
    let room = room_id!("!room:localhost");
    hs.mock("GET", "/_matrix/client/versions")
        .ok_body(json!({ "versions": ["v1.11", "v1.13"], "unstable_features": {} }))
        .expect(1)
        .mount()
        .await;
    hs.mock("POST", format!("/_matrix/client/v3/rooms/{room}/report")).ok().expect(2).mount().await;
    hs.mock_join(room).ok().expect(1).mount().await;

    let client = hs.client();
    assert_eq!(client.supported_versions_age(), None);
    client.send(join(room), None).await.unwrap();
    assert_eq!(hs.received().await.len(), 1, "v1.12 paths need no fetch");
    let report = || report_room::v3::Request::new(room.to_owned(), "spam".into());
    client.send(report(), None).await.unwrap();
    client.send(report(), None).await.unwrap();
    assert!(client.supported_versions().versions.contains(&MatrixVersion::V1_13));
    assert!(client.supported_versions_age().is_some());
}

#[tokio::test]
async fn a_real_user_logs_in_after_discovering_their_homeserver() {
    use ruma::api::client::{
        session::login::v3::{LoginInfo, Password},
        uiaa::{MatrixUserIdentifier, UserIdentifier},
    };

    let hs = MockHomeserver::start().await;
    let alice = user_id!("@alice:localhost");
    let base = hs.url();
    hs.mock("GET", "/.well-known/matrix/client")
        .without_token()
        .ok_body(json!({ "m.homeserver": { "base_url": base.as_str() } }))
        .expect(1)
        .mount()
        .await;
    hs.mock("POST", "/_matrix/client/v3/login")
        .without_token()
        .with_body(json!({ "type": "m.login.password", "password": "secret" }))
        .ok_body(json!({ "user_id": alice, "access_token": "alice_token", "device_id": "DEV" }))
        .expect(1)
        .mount()
        .await;
    hs.mock_whoami(alice)
        .with_token("alice_token")
        .without_query("user_id")
        .expect(1)
        .mount()
        .await;

    let found = Client::discover_at(&hs.url()).await.unwrap().unwrap();
    assert_eq!(found, base);
    let password = Password::new(
        UserIdentifier::Matrix(MatrixUserIdentifier::new("alice".into())),
        "secret".into(),
    );
    let login = login::v3::Request::new(LoginInfo::Password(password));
    let (client, response) = hs.client().login(Some(&found), login).await.unwrap();
    assert_eq!(response.access_token, "alice_token");
    assert!(client.is_user_client());
    assert_eq!(client.whoami().await.unwrap().user_id, alice);
    // No well-known file: `None`.
    let elsewhere = MockHomeserver::start().await;
    assert_eq!(Client::discover_at(&elsewhere.url()).await.unwrap(), None);
}
