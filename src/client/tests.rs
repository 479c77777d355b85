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
        assert!(err.is_connect() && !err.is_timeout(), "{err:?}");
        // The message names the cause, which the HTTP clients' own messages leave out.
        let message = err.to_string();
        assert!(message.contains("refused"), "{message}");
        assert_eq!(message.matches("refused").count(), 1, "each cause once: {message}");
    }
}

#[tokio::test]
async fn a_homeserver_that_does_not_answer_in_time_is_a_timeout() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    crate::install_crypto_provider();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .tls_certs_only([])
        .build()
        .unwrap();
    let err = Error::from(http.get(format!("http://{addr}/")).send().await.unwrap_err());
    assert!(err.is_timeout() && !err.is_connect(), "{err:?}");
    // The plain link's whole-request timeout.
    let elapsed = tokio::time::timeout(Duration::ZERO, std::future::pending::<()>()).await;
    let err = Error::Http(elapsed.unwrap_err().into());
    assert!(err.is_timeout() && !err.is_connect(), "{err:?}");
    held.abort();
    let other = Error::InvalidResponse("no".into());
    assert!(!other.is_timeout() && !other.is_connect());
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

// --- Sends and redactions written without ruma's request builder -----------------------------

/// What a request is, as parts to compare: route, method, version, URI, headers in order, body.
#[derive(Debug, PartialEq)]
struct Written {
    route: &'static str,
    method: http::Method,
    version: http::Version,
    uri: String,
    headers: Vec<(String, Vec<u8>, bool)>,
    extensions: usize,
    body: Vec<u8>,
}

/// The written request, or the error as it would reach the caller.
fn written(result: Result<(&'static str, http::Request<Vec<u8>>)>) -> Result<Written, String> {
    let (route, request) = result.map_err(|e| format!("{e:?} / {e}"))?;
    let headers = request.headers().iter();
    Ok(Written {
        route,
        method: request.method().clone(),
        version: request.version(),
        uri: request.uri().to_string(),
        headers: headers
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec(), v.is_sensitive()))
            .collect(),
        extensions: request.extensions().len(),
        body: request.body().clone(),
    })
}

/// The appservice's client for `base`, a client asserting a user (another registration's
/// token), and a real user's client with their own token: the three kinds of identity.
fn clients_for(base: &str) -> [Client; 3] {
    let server_name = ruma::ServerName::parse("localhost").unwrap();
    let url = Url::parse(base).unwrap();
    let client = Client::new(url, &server_name, crate::testing::test_registration()).unwrap();
    let user = user_id!("@puppet+x=y&z:example.org");
    let asserting = client.for_user_via_appservice(user, Secret::new("other_as_token"), None);
    let real = client.for_user(user, Secret::new("user_token"), None);
    [client.clone(), asserting.unwrap(), real.unwrap()]
}

fn set_versions(client: &Client, versions: &[MatrixVersion]) {
    let mut cached = client.inner.versions.write().unwrap();
    cached.supported.versions = versions.iter().copied().collect();
}

fn ms(ms: u64) -> MilliSecondsSinceUnixEpoch {
    MilliSecondsSinceUnixEpoch(UInt::new(ms).unwrap())
}

/// Every way of acting: as the bot, named or not, as ghosts and a user with characters that
/// need encoding in a query, with and without a device and a timestamp.
fn option_table() -> Vec<RequestOptions> {
    let users = [
        None,
        Some("@_test_bot:localhost"),
        Some("@_test_alice:localhost"),
        Some("@_test_a+b=c&d e/é?#%;:localhost"),
        Some("@puppet+x=y&z:example.org"),
    ];
    let devices = [None, Some("GHOSTDEV"), Some("D+E=V&X Y/é%")];
    let stamps = [None, Some(ms(0)), Some(ms(1_600_000_000_000))];
    let mut table = Vec::new();
    for user in users {
        for device in devices {
            for ts in stamps {
                table.push(RequestOptions {
                    as_user: user.map(|u| UserId::parse(u).unwrap()),
                    device_id: device.map(Into::into),
                    ts,
                });
            }
        }
    }
    table
}

/// Room IDs, event types and transaction IDs with every kind of character: reserved in a path
/// or query, percent signs, controls, unicode.
const ROOMS: [&str; 4] = [
    "!room:localhost",
    "!a/b?c#d %é\\`{}\"<>|^[]:example.org",
    "!opaque+v12_id=with-no-server",
    "!%2F%:localhost",
];
const EVENT_TYPES: [&str; 6] = [
    "m.room.message",
    "m.reaction",
    "com.example/a b#c%d?e+f&g",
    "org.ünïcode.😀",
    "x\u{7f}\u{1}\ttab\nnewline",
    "{curly}`back`\\slash;,=:@!$'()*",
];
const TXN_IDS: [&str; 5] = ["mxb.1700000000000.7.AbCd", "a/b?c#d%e+f g", "%2F&=;", "é 😀", "."];

/// The request [`Client::txn_put_request`] writes for a send is the one ruma's request gives
/// through [`Client::http_request`] (what `send_with` sends), for every client kind, base URL,
/// supported versions (r0 and v3 paths), identity, device, timestamp and awkward room, type
/// and transaction ID.
#[test]
fn a_written_send_is_the_request_ruma_builds() {
    let bases =
        ["http://localhost:8008", "https://hs.example.org/prefix/", "http://[::1]:8448/a%20b"];
    let options = option_table();
    let mut compared = 0;
    for (b, base) in bases.into_iter().enumerate() {
        for client in clients_for(base) {
            for versions in [&[MatrixVersion::V1_12][..], &[MatrixVersion::V1_0]] {
                set_versions(&client, versions);
                for (i, options) in options.iter().enumerate() {
                    let room = ROOMS[(i + b) % ROOMS.len()];
                    let event_type = EVENT_TYPES[i % EVENT_TYPES.len()];
                    let txn_id = TXN_IDS[(i / 2 + b) % TXN_IDS.len()];
                    let json = format!(r#"{{"body": "{i} é\u00e9 \"q\"", "n":[1, 2.50]}}"#);
                    let room = <&RoomId>::try_from(room).unwrap();
                    let mut request = send_message_event::v3::Request::new_raw(
                        room.to_owned(),
                        txn_id.into(),
                        event_type.into(),
                        ruma::serde::Raw::from_json_string(json.clone()).unwrap(),
                    );
                    request.timestamp = options.ts;
                    let ruma_options = RequestOptions { ts: None, ..options.clone() };
                    let by_ruma = written(client.http_request(request, &ruma_options, true));
                    let segments = [room.as_str(), event_type, txn_id];
                    let body = json.into_bytes();
                    let by_hand = client.txn_put_request::<send_message_event::v3::Request>(
                        segments, body, options,
                    );
                    assert_eq!(written(by_hand), by_ruma, "{base} {versions:?} {options:?}");
                    compared += 1;
                }
            }
        }
    }
    assert_eq!(compared, 3 * 3 * 2 * 45);
}

/// As [`a_written_send_is_the_request_ruma_builds`] for a redaction, whose `ts` follows the
/// identity (ruma's request has no field for it).
#[test]
fn a_written_redaction_is_the_request_ruma_builds() {
    let events = ["$event:localhost", "$opaque/+=?#%é", "$a b\\c"];
    let options = option_table();
    for client in clients_for("https://hs.example.org:8448/") {
        for versions in [&[MatrixVersion::V1_12][..], &[MatrixVersion::V1_0]] {
            set_versions(&client, versions);
            for (i, options) in options.iter().enumerate() {
                let room = <&RoomId>::try_from(ROOMS[i % ROOMS.len()]).unwrap();
                let event = <&EventId>::try_from(events[i % events.len()]).unwrap();
                let txn_id = TXN_IDS[i % TXN_IDS.len()];
                let mut request = redact_event::v3::Request::new(
                    room.to_owned(),
                    event.to_owned(),
                    txn_id.into(),
                );
                request.reason = (i % 2 == 0).then(|| format!("reason {i} \"é\""));
                let by_ruma = written(client.http_request(request, options, true));
                let body = by_ruma.as_ref().unwrap().body.clone();
                let segments = [room.as_str(), event.as_str(), txn_id];
                let by_hand =
                    client.txn_put_request::<redact_event::v3::Request>(segments, body, options);
                assert_eq!(written(by_hand), by_ruma, "{versions:?} {options:?}");
            }
        }
    }
}

/// A client's debug output shows neither the token nor the header made of it.
#[test]
fn the_client_prints_no_token() {
    for client in clients_for("http://localhost:8008") {
        let debug = format!("{client:?}");
        assert!(debug.contains("authorization: ***"), "{debug}");
        for token in [AS_TOKEN, "other_as_token", "user_token"] {
            assert!(!debug.contains(token), "{debug}");
        }
    }
}

/// Each character from U+0001 to U+007F, and a few beyond, is encoded in a path segment and in
/// the `user_id` query value as ruma encodes it.
#[test]
fn every_ascii_character_is_encoded_as_ruma_encodes_it() {
    let [client, ..] = clients_for("http://localhost:8008");
    let extra = ['\u{80}', 'é', '\u{2028}', '😀'];
    for c in (1..=0x7f_u8).map(char::from).chain(extra) {
        let text = format!("a{c}b");
        let room =
            if c == ':' { "!a:b:localhost".to_owned() } else { format!("!{text}:localhost") };
        let room = <&RoomId>::try_from(room.as_str()).unwrap();
        let user = if c == ':' { None } else { Some(format!("@_test_{text}:localhost")) };
        let options = RequestOptions {
            as_user: user.map(|u| UserId::parse(u).unwrap()),
            device_id: Some(text.as_str().into()),
            ts: None,
        };
        let mut request = send_message_event::v3::Request::new_raw(
            room.to_owned(),
            text.as_str().into(),
            text.as_str().into(),
            ruma::serde::Raw::from_json_string("{}".to_owned()).unwrap(),
        );
        request.timestamp = Some(ms(5));
        let by_ruma = written(client.http_request(request, &options, true));
        let options = RequestOptions { ts: Some(ms(5)), ..options };
        let segments = [room.as_str(), &text, &text];
        let by_hand = client.txn_put_request::<send_message_event::v3::Request>(
            segments,
            b"{}".to_vec(),
            &options,
        );
        assert_eq!(written(by_hand), by_ruma, "{c:?}");
    }
}

/// Where one parse of the whole URL would not give ruma's URI (a base URL with a query or a
/// fragment, a URL near the length limit of a URI) or fails (a token that is no header
/// value), the written request is still ruma's, or fails with ruma's error.
#[test]
fn odd_base_urls_long_urls_and_bad_tokens_give_what_ruma_gives() {
    let room = room_id!("!room:localhost");
    let ghost = user_id!("@_test_alice:localhost");
    let compare = |client: &Client, txn_id: &str, options: &RequestOptions| {
        let mut request = send_message_event::v3::Request::new_raw(
            room.to_owned(),
            txn_id.into(),
            "m.room.message".into(),
            ruma::serde::Raw::from_json_string("{}".to_owned()).unwrap(),
        );
        request.timestamp = options.ts;
        let ruma_options = RequestOptions { ts: None, ..options.clone() };
        let by_ruma = written(client.http_request(request, &ruma_options, true));
        let segments = [room.as_str(), "m.room.message", txn_id];
        let by_hand = client.txn_put_request::<send_message_event::v3::Request>(
            segments,
            b"{}".to_vec(),
            options,
        );
        assert_eq!(written(by_hand), by_ruma, "{} {}", client.homeserver(), txn_id.len());
        by_ruma.is_ok()
    };
    let as_ghost = RequestOptions::as_user(Some(ghost)).with_ts(ms(7));
    let with_device = as_ghost.clone().with_device(ruma::device_id!("DEV"));
    for base in ["http://h.example/?q=1&ts=2", "http://h.example/#frag", "http://h.example/p?#"] {
        for client in clients_for(base) {
            for options in [&RequestOptions::default(), &as_ghost, &with_device] {
                compare(&client, "txn?x#y", options);
            }
        }
    }
    // Lengths around the limit of a URI (65534 bytes), and of its path and query, which the
    // identity and the device alone may cross.
    let [client, ..] = clients_for("http://localhost:8008");
    let path = "/_matrix/client/v3/rooms/!room:localhost/send/m.room.message/";
    let fixed = "http://localhost:8008".len() + path.len() + "?ts=7".len();
    let (mut ok, mut failed) = (0, 0);
    for len in (65_534 - 120 - fixed)..(65_534 + 4 - fixed) {
        let txn_id = "t".repeat(len);
        for options in [&as_ghost, &with_device] {
            if compare(&client, &txn_id, options) { ok += 1 } else { failed += 1 }
        }
    }
    assert!(ok > 0 && failed > 0, "{ok} built, {failed} too long");
    // A token that is no header value.
    let user = user_id!("@someone:example.org");
    let bad = client.for_user(user, Secret::new("bad\ntoken"), None).unwrap();
    assert!(!compare(&bad, "txn", &RequestOptions::default()));
    assert!(!compare(&bad, &"t".repeat(65_500), &as_ghost));
}

/// A written send and redaction reach the homeserver, on both links, as the same requests
/// made of ruma's do: the same URL, headers and body.
#[tokio::test]
async fn written_requests_reach_the_homeserver_as_ruma_requests_do() {
    let hs = MockHomeserver::start().await;
    let room = room_id!("!a/b?c#d é:localhost");
    let ghost = user_id!("@_test_a+b=c:localhost");
    let event = ruma::event_id!("$old:localhost");
    let prefix = format!("/_matrix/client/v3/rooms/{room}/");
    hs.mock_prefix("PUT", prefix).ok_body(json!({ "event_id": "$e:localhost" })).mount().await;
    let options = RequestOptions::as_user(Some(ghost)).with_ts(ms(1_600_000_000_000));
    let json = r#"{"msgtype":"m.text", "body":"é"}"#;
    for client in [hs.client(), through_reqwest(hs.client())] {
        let mut send = send_message_event::v3::Request::new_raw(
            room.to_owned(),
            "t/1 +".into(),
            "com.example #x".into(),
            ruma::serde::Raw::from_json_string(json.to_owned()).unwrap(),
        );
        send.timestamp = options.ts;
        let plain = RequestOptions { ts: None, ..options.clone() };
        assert_eq!(client.send_with(send, &plain).await.unwrap().event_id, "$e:localhost");
        let txn_id = <&TransactionId>::from("t/1 +");
        let body = json.as_bytes().to_vec();
        let sent = client.send_room_event(room, "com.example #x", txn_id, body, &options);
        assert_eq!(sent.await.unwrap(), "$e:localhost");

        let mut redact =
            redact_event::v3::Request::new(room.to_owned(), event.to_owned(), "r".into());
        redact.reason = Some("spam".to_owned());
        client.send_with(redact, &options).await.unwrap();
        let body = br#"{"reason":"spam"}"#.to_vec();
        let txn_id = <&TransactionId>::from("r");
        client.redact_room_event(room, event, txn_id, body, &options).await.unwrap();
    }
    let received = hs.received().await;
    assert_eq!(received.len(), 8);
    for pair in received.chunks(2) {
        let [by_ruma, written] = pair else { unreachable!() };
        assert_eq!(written.method, by_ruma.method);
        assert_eq!(written.url, by_ruma.url);
        assert_eq!(written.headers, by_ruma.headers);
        assert_eq!(written.body, by_ruma.body);
    }
    let query = received[0].url.query().unwrap();
    assert_eq!(query, "ts=1600000000000&user_id=%40_test_a%2Bb%3Dc%3Alocalhost");
    let query = received[2].url.query().unwrap();
    assert_eq!(query, "user_id=%40_test_a%2Bb%3Dc%3Alocalhost&ts=1600000000000");
}

/// A written send is retried with its transaction ID, and the homeserver's refusals and
/// malformed answers are the same errors as for ruma's request.
#[tokio::test]
async fn written_sends_retry_and_fail_as_ruma_requests_do() {
    let hs = MockHomeserver::start().await;
    let room = room_id!("!room:localhost");
    hs.mock_send(room, "m.room.message").status(502).up_to_n_times(1).expect(1).mount().await;
    hs.mock_send(room, "m.room.message").rate_limited(5).up_to_n_times(1).expect(1).mount().await;
    hs.mock_send(room, "m.room.message").ok().up_to_n_times(1).expect(1).mount().await;
    let client = hs.client();
    let options = RequestOptions::default();
    let txn_id = new_txn_id();
    let sent = client.send_room_event(room, "m.room.message", &txn_id, b"{}".to_vec(), &options);
    assert_eq!(sent.await.unwrap(), "$sent:localhost");
    let txns = hs.sent_txn_ids(room, "m.room.message").await;
    assert_eq!(txns, [txn_id.as_str(); 3]);

    let answers = [
        wiremock::ResponseTemplate::new(403)
            .set_body_json(json!({ "errcode": "M_FORBIDDEN", "error": "not in room" })),
        wiremock::ResponseTemplate::new(400)
            .set_body_json(json!({ "errcode": "COM_EXAMPLE_ODD", "error": "odd" })),
        wiremock::ResponseTemplate::new(500).set_body_string("<html>oops</html>"),
        wiremock::ResponseTemplate::new(504),
        wiremock::ResponseTemplate::new(200).set_body_json(json!({ "event": "$e:localhost" })),
        wiremock::ResponseTemplate::new(200).set_body_string(""),
    ];
    for answer in answers {
        let _guard = wiremock::Mock::given(wiremock::matchers::method("PUT"))
            .respond_with(answer)
            .mount_as_scoped(hs.server())
            .await;
        let request = text(room, "hi");
        let txn_id = request.txn_id.clone();
        let by_ruma = client.send(request, None).await.unwrap_err();
        let body = br#"{"msgtype":"m.text","body":"hi"}"#.to_vec();
        let sent = client.send_room_event(room, "m.room.message", &txn_id, body, &options);
        let written = sent.await.unwrap_err();
        assert_eq!(format!("{written:?}"), format!("{by_ruma:?}"));
        assert_eq!(written.to_string(), by_ruma.to_string());
    }
    // Outside the namespace: refused alike, before anything is sent.
    let sent_before = hs.received().await.len();
    let alice = RequestOptions::as_user(Some(user_id!("@alice:localhost")));
    let by_ruma = client.send_with(text(room, "x"), &alice).await.unwrap_err();
    let sent = client.send_room_event(room, "m.room.message", &txn_id, b"{}".to_vec(), &alice);
    let written = sent.await.unwrap_err();
    assert!(matches!(written, Error::NotInNamespace { .. }), "{written}");
    assert_eq!(format!("{written:?}"), format!("{by_ruma:?}"));
    assert_eq!(hs.received().await.len(), sent_before);
}
