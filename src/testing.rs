//! Test helpers for bridge authors: a mock homeserver with per-endpoint expectations.
//!
//! [`MockHomeserver`] wraps a [`wiremock::MockServer`] on `127.0.0.1`. Each `mock_*` method
//! returns a [`MockEndpoint`] builder that matches one Client-Server endpoint (its path is compared
//! percent-decoded, so room IDs are written as they are), always requires
//! `Authorization: Bearer <as_token>`, and can also require the masqueraded user (`as_user`) or a
//! JSON body. Expectations (`expect(n)`, `never()`) are verified when the server is dropped, so a
//! test fails when a request happens that should not, or does not happen that should.
//!
//! Enable with the `testing` feature (`mxbridge = { features = ["testing"] }` in
//! `[dev-dependencies]`).
//!
//! # Examples
//!
//! ```
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use mxbridge::testing::MockHomeserver;
//! use ruma::{api::client::membership::join_room_by_id, room_id, user_id};
//!
//! let hs = MockHomeserver::start().await;
//! let room = room_id!("!portal:localhost");
//! let ghost = user_id!("@_test_alice:localhost");
//! // The ghost joins exactly once, as itself.
//! hs.mock_join(room).as_user(ghost).ok().expect(1).mount().await;
//! // Nobody invites anyone.
//! hs.mock_invite(room).never().mount().await;
//!
//! let client = hs.client();
//! client.send(join_room_by_id::v3::Request::new(room.to_owned()), Some(ghost)).await?;
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

#[cfg(feature = "encryption")]
mod crypto;
#[cfg(feature = "encryption")]
pub use crypto::{KeyUploads, OlmPeer};

use ruma::{OwnedUserId, RoomId, UserId};
use serde_json::{Value as JsonValue, json};
use url::Url;
use wiremock::{
    Match, Mock, MockBuilder, MockGuard, MockServer, Request, ResponseTemplate, Times,
    matchers::{body_partial_json, header, method, query_param, query_param_is_missing},
};

use crate::{
    client::{Client, RetryPolicy},
    registration::Registration,
};

/// The `as_token` of [`test_registration`]; every mock requires it as the bearer token.
pub const AS_TOKEN: &str = "as_token_for_tests_0123456789abcdef";
/// The `hs_token` of [`test_registration`].
pub const HS_TOKEN: &str = "hs_token_for_tests_0123456789abcdef";
/// The homeserver's domain in tests.
pub const SERVER_NAME: &str = "localhost";
/// The bot's localpart in [`test_registration`].
pub const BOT_LOCALPART: &str = "_test_bot";

/// A registration for tests: users `@_test_.*:localhost` (exclusive), aliases
/// `#_test_.*:localhost`, bot `@_test_bot:localhost`, tokens [`AS_TOKEN`]/[`HS_TOKEN`].
pub fn test_registration() -> Registration {
    let yaml = format!(
        "id: test-bridge\nurl: null\nas_token: {AS_TOKEN}\nhs_token: {HS_TOKEN}\n\
         sender_localpart: {BOT_LOCALPART}\nnamespaces:\n  users:\n    - exclusive: true\n      \
         regex: '@_test_.*:localhost'\n  aliases:\n    - exclusive: true\n      \
         regex: '#_test_.*:localhost'\n  rooms: []\n"
    );
    Registration::from_yaml(&yaml).expect("the test registration is valid")
}

/// A [`Context`](crate::Context) for a bridge's unit tests: an in-memory SQLite store, the
/// [`test_registration`], and a config for this mock homeserver (appservice `test-bridge`, bot
/// `@_test_bot:localhost`, ghosts `@_test_{id}:localhost`), with `extra` YAML keys added
/// (`permissions: {localhost: user}`, say).
///
/// # Panics
/// When `extra` is not valid config YAML.
pub async fn test_context(hs: &MockHomeserver, extra: &str) -> crate::Context {
    let store = crate::Store::connect_url("sqlite::memory:")
        .await
        .expect("an in-memory SQLite store opens");
    let config: crate::Config<()> = crate::Config::from_yaml(&format!(
        "homeserver: {{address: '{}', domain: localhost}}\n\
         appservice: {{id: test-bridge, address: 'http://127.0.0.1:2', port: 2, \
         bot: {{localpart: {BOT_LOCALPART}}}, ghost_localpart_template: '_test_{{id}}'}}\n{extra}",
        hs.url()
    ))
    .expect("the test config is valid");
    crate::Context::with_client(store, test_registration(), config, hs.client())
}

/// A retry policy with millisecond delays, for tests.
pub fn fast_retry_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        max_retry_after: Duration::from_secs(5),
    }
}

/// A mock homeserver on loopback that answers only what a test mounted.
#[derive(Debug)]
pub struct MockHomeserver {
    server: MockServer,
}

impl MockHomeserver {
    /// Starts a mock homeserver on a free port of `127.0.0.1`.
    pub async fn start() -> Self {
        Self { server: MockServer::start().await }
    }

    /// The base URL to give a [`Client`].
    pub fn url(&self) -> Url {
        Url::parse(&self.server.uri()).expect("wiremock serves a valid URL")
    }

    /// The wrapped wiremock server, for mocks no builder covers.
    pub fn server(&self) -> &MockServer {
        &self.server
    }

    /// A client for this homeserver with [`test_registration`] and [`fast_retry_policy`].
    pub fn client(&self) -> Client {
        self.client_with_retry(fast_retry_policy())
    }

    /// A client for this homeserver with [`test_registration`] and the given retry policy.
    pub fn client_with_retry(&self, policy: RetryPolicy) -> Client {
        let server_name = ruma::ServerName::parse(SERVER_NAME).expect("a valid server name");
        Client::with_retry_policy(self.url(), &server_name, test_registration(), policy)
            .expect("a client for the mock homeserver builds")
    }

    /// The bot of [`test_registration`].
    pub fn bot() -> OwnedUserId {
        UserId::parse(format!("@{BOT_LOCALPART}:{SERVER_NAME}")).expect("a valid user ID")
    }

    /// Every request the server received, in order.
    pub async fn received(&self) -> Vec<Request> {
        self.server.received_requests().await.unwrap_or_default()
    }

    /// The transaction IDs of every `PUT /rooms/{room}/send/{event_type}/{txnId}` received, in
    /// order (a retried send shows its ID twice).
    pub async fn sent_txn_ids(&self, room_id: &RoomId, event_type: &str) -> Vec<String> {
        let prefix = format!("/_matrix/client/v3/rooms/{room_id}/send/{event_type}/");
        self.received()
            .await
            .iter()
            .filter_map(|r| {
                percent_decode(r.url.path()).strip_prefix(&prefix).map(ToOwned::to_owned)
            })
            .collect()
    }

    /// The transaction IDs of every `PUT /rooms/{room}/redact/{eventId}/{txnId}` received, in
    /// order.
    pub async fn redaction_txn_ids(&self, room_id: &RoomId) -> Vec<String> {
        let prefix = format!("/_matrix/client/v3/rooms/{room_id}/redact/");
        self.received()
            .await
            .iter()
            .filter_map(|r| {
                let path = percent_decode(r.url.path());
                let rest = path.strip_prefix(&prefix)?;
                rest.rsplit_once('/').map(|(_, txn_id)| txn_id.to_owned())
            })
            .collect()
    }

    /// Any endpoint: `method` and an exact (decoded) `path`.
    pub fn mock(&self, http_method: &str, path: impl Into<String>) -> MockEndpoint<'_> {
        MockEndpoint::new(
            self,
            http_method,
            DecodedPath { path: path.into(), prefix: false },
            json!({}),
        )
    }

    /// Any endpoint: `method` and a (decoded) path prefix.
    pub fn mock_prefix(&self, http_method: &str, prefix: impl Into<String>) -> MockEndpoint<'_> {
        MockEndpoint::new(
            self,
            http_method,
            DecodedPath { path: prefix.into(), prefix: true },
            json!({}),
        )
    }

    /// `POST /register`; `ok()` answers with `user_id` (set it with [`MockEndpoint::for_user`]).
    pub fn mock_register(&self) -> MockEndpoint<'_> {
        self.mock("POST", "/_matrix/client/v3/register").ok_body(
            json!({ "user_id": format!("@_test_ghost:{SERVER_NAME}"), "home_server": SERVER_NAME }),
        )
    }

    /// `GET /account/whoami`.
    pub fn mock_whoami(&self, user_id: &UserId) -> MockEndpoint<'_> {
        self.mock("GET", "/_matrix/client/v3/account/whoami")
            .ok_body(json!({ "user_id": user_id, "is_guest": false }))
    }

    /// `POST /rooms/{roomId}/join`; `ok()` answers with the room ID.
    pub fn mock_join(&self, room_id: &RoomId) -> MockEndpoint<'_> {
        self.room_post(room_id, "join").ok_body(json!({ "room_id": room_id }))
    }

    /// `POST /rooms/{roomId}/invite`.
    pub fn mock_invite(&self, room_id: &RoomId) -> MockEndpoint<'_> {
        self.room_post(room_id, "invite")
    }

    /// `POST /rooms/{roomId}/leave`.
    pub fn mock_leave(&self, room_id: &RoomId) -> MockEndpoint<'_> {
        self.room_post(room_id, "leave")
    }

    /// `POST /rooms/{roomId}/kick`.
    pub fn mock_kick(&self, room_id: &RoomId) -> MockEndpoint<'_> {
        self.room_post(room_id, "kick")
    }

    /// `POST /rooms/{roomId}/ban`.
    pub fn mock_ban(&self, room_id: &RoomId) -> MockEndpoint<'_> {
        self.room_post(room_id, "ban")
    }

    /// `POST /rooms/{roomId}/unban`.
    pub fn mock_unban(&self, room_id: &RoomId) -> MockEndpoint<'_> {
        self.room_post(room_id, "unban")
    }

    /// `PUT /rooms/{roomId}/send/{eventType}/{txnId}` for any txn ID; `ok()` answers with an event
    /// ID. Read the txn IDs with [`MockHomeserver::sent_txn_ids`].
    pub fn mock_send(&self, room_id: &RoomId, event_type: &str) -> MockEndpoint<'_> {
        self.mock_prefix("PUT", format!("/_matrix/client/v3/rooms/{room_id}/send/{event_type}/"))
            .ok_body(json!({ "event_id": "$sent:localhost" }))
    }

    /// `PUT /rooms/{roomId}/state/{eventType}/{stateKey}`.
    pub fn mock_set_state(
        &self,
        room_id: &RoomId,
        event_type: &str,
        state_key: &str,
    ) -> MockEndpoint<'_> {
        self.mock(
            "PUT",
            format!("/_matrix/client/v3/rooms/{room_id}/state/{event_type}/{state_key}"),
        )
        .ok_body(json!({ "event_id": "$state:localhost" }))
    }

    /// `GET /rooms/{roomId}/state/{eventType}/{stateKey}`; answer with [`MockEndpoint::ok_body`].
    pub fn mock_get_state(
        &self,
        room_id: &RoomId,
        event_type: &str,
        state_key: &str,
    ) -> MockEndpoint<'_> {
        self.mock(
            "GET",
            format!("/_matrix/client/v3/rooms/{room_id}/state/{event_type}/{state_key}"),
        )
    }

    /// `GET /rooms/{roomId}/state`, the room's whole state; `ok()` answers with no events, or
    /// answer with [`MockEndpoint::ok_body`] and a list of [`state_event`]s.
    pub fn mock_room_state(&self, room_id: &RoomId) -> MockEndpoint<'_> {
        self.mock("GET", format!("/_matrix/client/v3/rooms/{room_id}/state")).ok_body(json!([]))
    }

    /// `POST /createRoom`; `ok()` answers with the given room ID.
    pub fn mock_create_room(&self, room_id: &RoomId) -> MockEndpoint<'_> {
        self.mock("POST", "/_matrix/client/v3/createRoom").ok_body(json!({ "room_id": room_id }))
    }

    /// `PUT /rooms/{roomId}/redact/{eventId}/{txnId}` for any event and txn.
    pub fn mock_redact(&self, room_id: &RoomId) -> MockEndpoint<'_> {
        self.mock_prefix("PUT", format!("/_matrix/client/v3/rooms/{room_id}/redact/"))
            .ok_body(json!({ "event_id": "$redaction:localhost" }))
    }

    /// `GET /profile/{userId}`; answer with [`MockEndpoint::ok_body`] (`{"displayname": ...}`).
    pub fn mock_get_profile(&self, user_id: &UserId) -> MockEndpoint<'_> {
        self.mock("GET", format!("/_matrix/client/v3/profile/{user_id}"))
    }

    /// `PUT /profile/{userId}/{field}` (`displayname`, `avatar_url`).
    pub fn mock_set_profile(&self, user_id: &UserId, field: &str) -> MockEndpoint<'_> {
        self.mock("PUT", format!("/_matrix/client/v3/profile/{user_id}/{field}"))
    }

    fn room_post(&self, room_id: &RoomId, action: &str) -> MockEndpoint<'_> {
        self.mock("POST", format!("/_matrix/client/v3/rooms/{room_id}/{action}"))
    }
}

/// A state event as the homeserver's `GET /rooms/{roomId}/state` lists it.
pub fn state_event(
    event_type: &str,
    state_key: &str,
    sender: &UserId,
    content: JsonValue,
) -> JsonValue {
    json!({
        "type": event_type,
        "state_key": state_key,
        "sender": sender,
        "content": content,
        "event_id": format!("${event_type}-{state_key}"),
        "origin_server_ts": 1,
    })
}

/// A mock for one endpoint, built up and then mounted on its [`MockHomeserver`].
#[derive(Debug)]
#[must_use = "a mock does nothing until `.mount().await`"]
pub struct MockEndpoint<'a> {
    hs: &'a MockHomeserver,
    builder: MockBuilder,
    ok_body: JsonValue,
    response: ResponseTemplate,
    expect: Option<Times>,
    up_to: Option<u64>,
    /// The bearer token required (`None`: none at all).
    token: Option<String>,
    /// Answers made by the test instead of `response`.
    responder: Option<Responder>,
}

/// A test's own way of answering (see [`MockEndpoint::respond_with`]).
struct Responder(Box<dyn wiremock::Respond>);

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Responder")
    }
}

impl wiremock::Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.0.respond(request)
    }
}

impl<'a> MockEndpoint<'a> {
    fn new(
        hs: &'a MockHomeserver,
        http_method: &str,
        path: DecodedPath,
        ok_body: JsonValue,
    ) -> Self {
        let builder = Mock::given(method(http_method)).and(path);
        let response = ResponseTemplate::new(200).set_body_json(&ok_body);
        let token = Some(AS_TOKEN.to_owned());
        Self { hs, builder, ok_body, response, expect: None, up_to: None, token, responder: None }
    }

    /// Requires `Authorization: Bearer <token>` instead of the `as_token` (a real user's
    /// client).
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    /// Requires no `Authorization` header at all (a login).
    pub fn without_token(mut self) -> Self {
        self.token = None;
        self.builder = self.builder.and(NoAuthorization);
        self
    }

    /// Requires the request to act as `user_id` (`?user_id=`).
    pub fn as_user(mut self, user_id: &UserId) -> Self {
        self.builder = self.builder.and(query_param("user_id", user_id.as_str()));
        self
    }

    /// Requires the request to act as the bot (no `?user_id=`).
    pub fn as_bot(mut self) -> Self {
        self.builder = self.builder.and(query_param_is_missing("user_id"));
        self
    }

    /// Requires a query parameter.
    pub fn with_query(mut self, key: &str, value: &str) -> Self {
        self.builder = self.builder.and(query_param(key, value));
        self
    }

    /// Requires a query parameter to be absent (`ts` on a send that keeps the arrival time).
    pub fn without_query(mut self, key: &str) -> Self {
        self.builder = self.builder.and(query_param_is_missing(key));
        self
    }

    /// Requires the JSON body to contain `body` (a partial match).
    pub fn with_body(mut self, body: JsonValue) -> Self {
        self.builder = self.builder.and(body_partial_json(body));
        self
    }

    /// For `mock_register`: requires `username` to be the user's localpart and answers with the
    /// user's ID.
    pub fn for_user(mut self, user_id: &UserId) -> Self {
        self.builder =
            self.builder.and(body_partial_json(json!({ "username": user_id.localpart() })));
        self.ok_body(json!({ "user_id": user_id, "home_server": SERVER_NAME }))
    }

    /// Sets the success body and answers 200 with it.
    pub fn ok_body(mut self, body: JsonValue) -> Self {
        self.response = ResponseTemplate::new(200).set_body_json(&body);
        self.ok_body = body;
        self
    }

    /// Answers 200 with the endpoint's usual success body.
    pub fn ok(mut self) -> Self {
        self.response = ResponseTemplate::new(200).set_body_json(&self.ok_body);
        self
    }

    /// Answers with `responder`, which sees each request (for a mock that keeps state, such
    /// as a room's state written and read back).
    pub fn respond_with(mut self, responder: impl wiremock::Respond + 'static) -> Self {
        self.responder = Some(Responder(Box::new(responder)));
        self
    }

    /// Answers with any status and JSON body.
    pub fn respond(mut self, status: u16, body: JsonValue) -> Self {
        self.response = ResponseTemplate::new(status).set_body_json(body);
        self
    }

    /// Answers with a Matrix error.
    pub fn error(self, status: u16, errcode: &str, message: &str) -> Self {
        self.respond(status, json!({ "errcode": errcode, "error": message }))
    }

    /// Answers 403 `M_FORBIDDEN`.
    pub fn forbidden(self, message: &str) -> Self {
        self.error(403, "M_FORBIDDEN", message)
    }

    /// Answers 400 `M_USER_IN_USE` (for `mock_register`).
    pub fn user_in_use(self) -> Self {
        self.error(400, "M_USER_IN_USE", "User ID already taken.")
    }

    /// Answers 429 `M_LIMIT_EXCEEDED` asking to wait `retry_after_ms`.
    pub fn rate_limited(self, retry_after_ms: u64) -> Self {
        self.respond(
            429,
            json!({
                "errcode": "M_LIMIT_EXCEEDED",
                "error": "Too Many Requests",
                "retry_after_ms": retry_after_ms,
            }),
        )
    }

    /// Answers with a bare status and an empty body (e.g. 502 from a proxy).
    pub fn status(mut self, status: u16) -> Self {
        self.response = ResponseTemplate::new(status);
        self
    }

    /// Delays the answer (to let concurrent callers pile up).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.response = self.response.set_delay(delay);
        self
    }

    /// Expects this many matching requests (checked when the server drops).
    pub fn expect(mut self, times: impl Into<Times>) -> Self {
        self.expect = Some(times.into());
        self
    }

    /// Expects no matching request at all.
    pub fn never(self) -> Self {
        self.expect(0)
    }

    /// Answers at most `n` requests; later ones fall through to mocks mounted after this one.
    pub fn up_to_n_times(mut self, n: u64) -> Self {
        self.up_to = Some(n);
        self
    }

    fn build(self) -> (Mock, &'a MockHomeserver) {
        let mut builder = self.builder;
        if let Some(token) = &self.token {
            builder = builder.and(header("authorization", format!("Bearer {token}").as_str()));
        }
        let mut mock = match self.responder {
            Some(responder) => builder.respond_with(responder),
            None => builder.respond_with(self.response),
        };
        if let Some(times) = self.expect {
            mock = mock.expect(times);
        }
        if let Some(n) = self.up_to {
            mock = mock.up_to_n_times(n);
        }
        (mock, self.hs)
    }

    /// Mounts the mock for the server's lifetime.
    pub async fn mount(self) {
        let (mock, hs) = self.build();
        mock.mount(&hs.server).await;
    }

    /// Mounts the mock until the returned guard drops (expectations are checked then).
    pub async fn mount_as_scoped(self) -> MockGuard {
        let (mock, hs) = self.build();
        mock.mount_as_scoped(&hs.server).await
    }
}

/// Matches a request without an `Authorization` header.
#[derive(Debug)]
struct NoAuthorization;

impl Match for NoAuthorization {
    fn matches(&self, request: &Request) -> bool {
        !request.headers.contains_key("authorization")
    }
}

/// Matches the percent-decoded request path exactly or by prefix.
#[derive(Debug)]
struct DecodedPath {
    path: String,
    prefix: bool,
}

impl Match for DecodedPath {
    fn matches(&self, request: &Request) -> bool {
        let decoded = percent_decode(request.url.path());
        if self.prefix { decoded.starts_with(&self.path) } else { decoded == self.path }
    }
}

/// Decodes `%XX` escapes (invalid escapes are kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How many events, stored and not yet handled, fill the dispatcher's in-memory queues: a
/// backlog larger than this is read back from the database (for tests of that path).
pub const IN_MEMORY_BACKLOG: usize = crate::dispatch::MAX_IN_FLIGHT + crate::intake::MAX_QUEUED;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_handles_matrix_ids() {
        assert_eq!(percent_decode("/rooms/%21abc%3Alocalhost/join"), "/rooms/!abc:localhost/join");
        assert_eq!(percent_decode("/100%"), "/100%");
    }
}
