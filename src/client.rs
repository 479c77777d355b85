//! The outbound Client-Server API client: the bridge talking to its homeserver.
//!
//! One [`Client`] per process holds the connection pool, the `as_token` and the retry policy; it is
//! an `Arc` inside, so clones are free. Every Client-Server endpoint ruma knows is callable through
//! [`Client::send`]; the named methods below wrap the calls a bridge makes most.
//!
//! Identity: requests made for a ghost carry `?user_id=` ([identity assertion]); a user outside the
//! registration's user namespace is refused with [`Error::NotInNamespace`] before anything is
//! sent. Calls made with `as_user: None` act as the bot (`sender_localpart`).
//!
//! Failures: connection errors and 502/503/504 answers are retried with exponential backoff; a 429
//! `M_LIMIT_EXCEEDED` waits as long as the homeserver asked (`Retry-After` header or
//! `retry_after_ms`, capped). A retry resends the very same HTTP request, so a send keeps its
//! transaction ID and the homeserver deduplicates it. See [`RetryPolicy`].
//!
//! Logging: every request runs in a `send` span with `method`, `route` (ruma's path template, such
//! as `/_matrix/client/v3/rooms/{room_id}/join`, never the concrete path or query), `status`,
//! `attempts` and `duration_ms`. Tokens never reach a log line.
//!
//! [identity assertion]: https://spec.matrix.org/v1.13/application-service-api/#identity-assertion

mod error;

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::{Duration, Instant},
};

use ruma::{
    DeviceId, EventId, MilliSecondsSinceUnixEpoch, MxcUri, OwnedDeviceId, OwnedEventId,
    OwnedMxcUri, OwnedRoomAliasId, OwnedRoomId, OwnedServerName, OwnedTransactionId, OwnedUserId,
    RoomAliasId, RoomId, RoomOrAliasId, RoomVersionId, ServerName, TransactionId, UserId,
    api::{
        AppserviceUserIdentity, Direction, EndpointError as _, IncomingResponseExt as _,
        MatrixVersion, OutgoingRequest, OutgoingRequestExt as _, SupportedVersions,
        auth_scheme::{
            AccessToken, AccessTokenOptional, AppserviceToken, AppserviceTokenOptional, AuthScheme,
            NoAccessToken, NoAuthentication, SendAccessToken,
        },
        client::{
            account::{register, whoami},
            alias::{create_alias, delete_alias, get_alias},
            appservice::{request_ping, set_room_visibility as set_appservice_room_visibility},
            authenticated_media,
            config::{get_global_account_data, set_global_account_data, set_room_account_data},
            context::get_context,
            device::update_device,
            directory::{get_room_visibility, set_room_visibility},
            discovery::get_supported_versions,
            keys::{claim_keys, get_keys, upload_keys},
            media::{create_content, create_content_async, create_mxc_uri},
            membership::{
                ban_user, forget_room, get_member_events, invite_user, join_room_by_id,
                join_room_by_id_or_alias, joined_members, joined_rooms, kick_user, leave_room,
                unban_user,
            },
            message::{get_message_events, send_message_event},
            presence::set_presence,
            profile::{get_profile, set_profile_field},
            read_marker::set_read_marker,
            receipt::create_receipt,
            redact::redact_event,
            room::{Visibility, create_room, get_event_by_timestamp, get_room_event, upgrade_room},
            state::{get_state_event_for_key, get_state_events, send_state_event},
            tag::{create_tag, delete_tag, get_tags},
            to_device::send_event_to_device,
            typing::create_typing_event,
            user_directory::search_users,
        },
        path_builder::{PathBuilder, SinglePath, VersionHistory},
    },
    events::{
        AnyMessageLikeEventContent, AnyStateEvent, AnyStateEventContent, AnyTimelineEvent,
        GlobalAccountDataEventType, MessageLikeEventContent, MessageLikeEventType,
        StateEventContent, StateEventType,
        direct::{DirectEventContent, OwnedDirectUserIdentifier},
        reaction::ReactionEventContent,
        receipt::ReceiptType,
        relation::Annotation,
        room::{
            member::RoomMemberEvent,
            message::{
                AddMentions, ForwardThread, ReplacementMetadata, ReplyMetadata,
                RoomMessageEventContent, RoomMessageEventContentWithoutRelation,
            },
        },
        tag::TagInfo,
    },
    exports::http,
    presence::PresenceState,
    profile::{ProfileFieldValue, UserProfile},
    serde::Raw,
};
use serde_json::value::RawValue as RawJsonValue;
use tracing::{Instrument as _, field};
use url::Url;

pub use self::error::{Error, Result};
use crate::{registration::Registration, secret::Secret};

/// How failed requests are retried.
///
/// Connection errors and 502/503/504 answers wait `base_delay * 2^(n-1)` (capped at `max_delay`)
/// before attempt `n + 1`; a 429 waits what the homeserver asked, capped at `max_retry_after`
/// (or the backoff delay when it named no time). After `max_attempts` attempts the last error is
/// returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (1 disables retries).
    pub max_attempts: u32,
    /// The delay before the first retry.
    pub base_delay: Duration,
    /// The longest backoff delay.
    pub max_delay: Duration,
    /// The longest wait a 429 answer can impose.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn none() -> Self {
        Self { max_attempts: 1, ..Self::default() }
    }

    /// The backoff delay after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// Per-request options beyond the ruma request itself.
#[derive(Debug, Clone, Default)]
pub struct RequestOptions {
    /// Act as this user (`?user_id=`); `None` acts as the bot.
    pub as_user: Option<OwnedUserId>,
    /// Assert this device of the user (`?device_id=` and `?org.matrix.msc3202.device_id=`).
    pub device_id: Option<OwnedDeviceId>,
    /// Timestamp massaging (`?ts=`): the `origin_server_ts` the event gets.
    pub ts: Option<MilliSecondsSinceUnixEpoch>,
}

impl RequestOptions {
    /// Options acting as `user` (or the bot for `None`).
    pub fn as_user(user: Option<&UserId>) -> Self {
        Self { as_user: user.map(ToOwned::to_owned), ..Self::default() }
    }

    /// Adds a device identity assertion.
    pub fn with_device(mut self, device_id: &DeviceId) -> Self {
        self.device_id = Some(device_id.to_owned());
        self
    }

    /// Adds a massaged timestamp.
    pub fn with_ts(mut self, ts: Option<MilliSecondsSinceUnixEpoch>) -> Self {
        self.ts = ts;
        self
    }
}

/// Supplies ruma's path-selection input from the homeserver's supported versions.
///
/// Implemented for both of ruma's path builders, so [`Client::send`] takes any endpoint.
pub trait PathInput: PathBuilder {
    /// The input `select_path` needs.
    fn input(versions: &SupportedVersions) -> Self::Input<'_>;
}

impl PathInput for VersionHistory {
    fn input(versions: &SupportedVersions) -> Self::Input<'_> {
        Cow::Borrowed(versions)
    }
}

impl PathInput for SinglePath {
    fn input(_versions: &SupportedVersions) -> Self::Input<'_> {}
}

/// Supplies ruma's authentication input (the `as_token`) for an endpoint's auth scheme.
pub trait AuthInput: AuthScheme {
    /// The input `add_authentication` needs.
    fn input(token: &str) -> Self::Input<'_>;
}

macro_rules! token_auth {
    ($($scheme:ty),*) => {$(
        impl AuthInput for $scheme {
            fn input(token: &str) -> Self::Input<'_> {
                // `Always`: an appservice authenticates every call, even optional-auth ones, so
                // that `?user_id=` is honoured.
                SendAccessToken::Always(token)
            }
        }
    )*};
}
token_auth!(
    AccessToken,
    AccessTokenOptional,
    AppserviceToken,
    AppserviceTokenOptional,
    NoAccessToken
);

impl AuthInput for NoAuthentication {
    fn input(_token: &str) -> Self::Input<'_> {}
}

/// A cheap-to-clone handle to the homeserver's Client-Server API, authenticated with the
/// `as_token`.
///
/// All state is held in an `Arc`, so the `Client` can be cloned freely; clones share the
/// connection pool.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<ClientInner>,
}

#[derive(Debug)]
struct ClientInner {
    /// The pooled HTTP client.
    http: reqwest::Client,
    /// The homeserver's base URL, without a trailing slash.
    base: String,
    /// The bearer token for every request.
    as_token: Secret,
    /// The appservice's ID (for the ping endpoint).
    appservice_id: String,
    /// The bot: `@{sender_localpart}:{server_name}`.
    bot: OwnedUserId,
    /// The registration, whose namespaces decide who we may act as.
    registration: Registration,
    /// The retry policy.
    retry: RetryPolicy,
    /// Where requests are counted, once attached.
    metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
    /// What the homeserver supports; picks each endpoint's path. Refreshed by
    /// [`Client::refresh_supported_versions`].
    versions: RwLock<SupportedVersions>,
    /// Joins in flight, keyed by (room, user). Entries exist only while a join runs, so the map
    /// never grows with the number of ghosts (see `Intent::ensure_joined`).
    joins_in_flight: Mutex<HashMap<JoinKey, Arc<tokio::sync::Mutex<()>>>>,
}

/// Identifies one user's join to one room.
type JoinKey = (OwnedRoomId, OwnedUserId);

/// A claim on the single join of one user to one room.
///
/// Callers for the same (room, user) share one async mutex; the map entry is removed when the
/// last claim drops, so the map holds only joins in flight.
pub(crate) struct JoinFlight {
    client: Client,
    key: JoinKey,
    /// The mutex every caller for this key locks.
    pub(crate) lock: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for JoinFlight {
    fn drop(&mut self) {
        let mut map =
            self.client.inner.joins_in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        // Ours and the map's: nobody else waits for this join.
        if Arc::strong_count(&self.lock) <= 2 {
            map.remove(&self.key);
        }
    }
}

impl Client {
    /// Creates a client for the homeserver at `homeserver` whose domain is `server_name`, acting
    /// for the appservice in `registration`, with the default [`RetryPolicy`].
    ///
    /// # Errors
    /// When the bot's user ID is invalid or the HTTP client cannot be built.
    pub fn new(
        homeserver: Url,
        server_name: &ServerName,
        registration: Registration,
    ) -> Result<Self> {
        Self::with_retry_policy(homeserver, server_name, registration, RetryPolicy::default())
    }

    /// As [`Client::new`], with a chosen retry policy.
    ///
    /// # Errors
    /// As [`Client::new`].
    pub fn with_retry_policy(
        homeserver: Url,
        server_name: &ServerName,
        registration: Registration,
        retry: RetryPolicy,
    ) -> Result<Self> {
        crate::install_crypto_provider();
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("mxbridge/", env!("CARGO_PKG_VERSION")))
            // The Client-Server API does not redirect; following one would also carry the
            // as_token to wherever it points.
            .redirect(reqwest::redirect::Policy::none());
        if homeserver.scheme() == "http" {
            // Every request goes to `homeserver` and no redirect is followed, so TLS is never
            // used: skip reading and parsing the system's CA roots (time and ~1 MiB of memory).
            // An https request, were one ever made, would fail verification, not skip it.
            http = http.tls_certs_only([]);
        }
        let http = http.build()?;
        let bot = UserId::parse_with_server_name(registration.sender_localpart(), server_name)
            .map_err(|e| Error::InvalidResponse(format!("invalid bot user ID: {e}")))?;
        let versions = SupportedVersions {
            versions: [MatrixVersion::V1_12].into(),
            features: Default::default(),
        };
        Ok(Self {
            inner: Arc::new(ClientInner {
                http,
                base: homeserver.as_str().trim_end_matches('/').to_owned(),
                as_token: registration.as_token().clone(),
                appservice_id: registration.id().to_owned(),
                bot,
                registration,
                retry,
                metrics: std::sync::OnceLock::new(),
                versions: RwLock::new(versions),
                joins_in_flight: Mutex::default(),
            }),
        })
    }

    /// The bot's user ID.
    pub fn bot_user_id(&self) -> &UserId {
        &self.inner.bot
    }

    /// The registration this client acts for.
    pub fn registration(&self) -> &Registration {
        &self.inner.registration
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.inner.retry
    }

    /// Whether the client may act as `user_id`: the bot, or a user in the namespace.
    pub fn may_act_as(&self, user_id: &UserId) -> bool {
        user_id == self.inner.bot || self.inner.registration.is_user_in_namespace(user_id)
    }

    fn check_identity(&self, user_id: &UserId) -> Result<()> {
        if self.may_act_as(user_id) {
            Ok(())
        } else {
            Err(Error::NotInNamespace { user_id: user_id.to_owned() })
        }
    }

    /// Claims the join of `user_id` to `room_id` (see [`JoinFlight`]).
    pub(crate) fn join_flight(&self, room_id: &RoomId, user_id: &UserId) -> JoinFlight {
        let key = (room_id.to_owned(), user_id.to_owned());
        let mut map = self.inner.joins_in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        let lock = Arc::clone(map.entry(key.clone()).or_default());
        drop(map);
        JoinFlight { client: self.clone(), key, lock }
    }

    /// The number of joins in flight (for tests: it returns to zero).
    #[cfg(test)]
    pub(crate) fn joins_in_flight(&self) -> usize {
        self.inner.joins_in_flight.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    fn supported_versions(&self) -> SupportedVersions {
        self.inner.versions.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Sends any Client-Server request, as `as_user` (a ghost in the namespace) or as the bot
    /// (`None`).
    ///
    /// # Errors
    /// [`Error::NotInNamespace`] (nothing sent) for a user outside the namespace; [`Error::Api`]
    /// for a homeserver error after retries; [`Error::Http`] when the homeserver is unreachable.
    pub async fn send<R>(&self, request: R, as_user: Option<&UserId>) -> Result<R::IncomingResponse>
    where
        R: OutgoingRequest,
        R::Authentication: AuthInput,
        R::PathBuilder: PathInput,
    {
        self.send_with(request, &RequestOptions::as_user(as_user)).await
    }

    /// Sends any Client-Server request with [`RequestOptions`] (identity, device, timestamp).
    ///
    /// This does what ruma's `OutgoingRequestAppserviceExt::try_into_http_request_with_identity`
    /// does (ruma builds the request, then adds the [`AppserviceUserIdentity`] to the URI), spelled
    /// out so that endpoints without authentication (`/versions`) go through the same path.
    ///
    /// # Errors
    /// As [`Client::send`].
    pub async fn send_with<R>(
        &self,
        request: R,
        options: &RequestOptions,
    ) -> Result<R::IncomingResponse>
    where
        R: OutgoingRequest,
        R::Authentication: AuthInput,
        R::PathBuilder: PathInput,
    {
        if let Some(user) = &options.as_user {
            self.check_identity(user)?;
        }
        let versions = self.supported_versions();
        let route = R::PATH_BUILDER.select_path(R::PathBuilder::input(&versions)).unwrap_or("?");
        let mut http_request: http::Request<Vec<u8>> = request.try_into_http_request(
            &self.inner.base,
            R::Authentication::input(self.inner.as_token.expose()),
            R::PathBuilder::input(&versions),
        )?;
        let mut identity = AppserviceUserIdentity::default();
        identity.user_id = options.as_user.as_deref().filter(|u| *u != self.inner.bot);
        identity.device_id = options.device_id.as_deref();
        identity.maybe_add_to_uri(http_request.uri_mut())?;
        let mut extra = Vec::new();
        if let Some(device) = &options.device_id {
            extra.push(("org.matrix.msc3202.device_id", device.to_string()));
        }
        if let Some(ts) = options.ts
            && !http_request
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p.starts_with("ts=")))
        {
            extra.push(("ts", ts.get().to_string()));
        }
        append_query(http_request.uri_mut(), &extra)?;

        let as_user = options.as_user.as_deref().filter(|u| *u != self.inner.bot);
        let response = self.execute(http_request, route, as_user).await?;
        let borrowed = borrow_response(&response);
        if response.status().as_u16() >= 400 {
            return Err(Error::from_ruma(ruma::api::error::Error::from_http_response(borrowed)));
        }
        R::IncomingResponse::try_from_http_response(borrowed)
            .map_err(|e| Error::InvalidResponse(e.to_string()))
    }

    /// Reports requests, durations and retries to `metrics` from now on (once per client).
    pub fn attach_metrics(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.inner.metrics.set(metrics);
    }

    fn count_retry(&self, cause: &'static str) {
        if let Some(metrics) = self.inner.metrics.get() {
            metrics.retry(cause);
        }
    }

    /// Sends one HTTP request with the retry policy, inside a `send` span.
    async fn execute(
        &self,
        request: http::Request<Vec<u8>>,
        route: &'static str,
        as_user: Option<&UserId>,
    ) -> Result<http::Response<Vec<u8>>> {
        let span = tracing::debug_span!(
            "send",
            method = %request.method(),
            route,
            user = as_user.map(UserId::as_str),
            status = field::Empty,
            attempts = field::Empty,
            duration_ms = field::Empty,
        );
        let (parts, body) = request.into_parts();
        let policy = self.inner.retry;
        async move {
            let started = Instant::now();
            let mut attempt = 0;
            let finish = |status: Option<u16>, attempt: u32| {
                if let Some(metrics) = self.inner.metrics.get() {
                    metrics.request(route, status, started.elapsed());
                }
                let span = tracing::Span::current();
                if let Some(status) = status {
                    span.record("status", status);
                }
                span.record("attempts", attempt);
                span.record("duration_ms", u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
            };
            loop {
                attempt += 1;
                let sent = self
                    .inner
                    .http
                    .request(parts.method.clone(), parts.uri.to_string())
                    .headers(parts.headers.clone())
                    .body(body.clone())
                    .send()
                    .await;
                let response = match sent {
                    Ok(response) => response,
                    Err(err) => {
                        if attempt < policy.max_attempts && (err.is_connect() || err.is_timeout()) {
                            let delay = policy.backoff(attempt);
                            tracing::warn!(attempt, delay_ms = delay.as_millis() as u64, error = %err.without_url(), "request failed, retrying");
                            self.count_retry("unavailable");
                            tokio::time::sleep(delay).await;
                            continue;
                        }
                        finish(None, attempt);
                        return Err(Error::Http(err.without_url()));
                    }
                };
                let status = response.status();
                let headers = response.headers().clone();
                let bytes = response.bytes().await.map_err(|e| Error::Http(e.without_url()))?;
                let delay = match status.as_u16() {
                    429 => {
                        let parsed = ruma::api::error::Error::from_http_response(
                            http_response(status, &headers, &bytes),
                        );
                        Some(
                            Error::from_ruma(parsed)
                                .retry_after()
                                .map_or_else(|| policy.backoff(attempt), |d| d.min(policy.max_retry_after)),
                        )
                    }
                    502..=504 => Some(policy.backoff(attempt)),
                    _ => None,
                };
                if let Some(delay) = delay
                    && attempt < policy.max_attempts
                {
                    tracing::warn!(attempt, status = status.as_u16(), delay_ms = delay.as_millis() as u64, "homeserver asked to retry");
                    self.count_retry(if status.as_u16() == 429 { "rate_limited" } else { "unavailable" });
                    tokio::time::sleep(delay).await;
                    continue;
                }
                finish(Some(status.as_u16()), attempt);
                let mut out = http::Response::new(bytes.to_vec());
                *out.status_mut() = status;
                *out.headers_mut() = headers;
                return Ok(out);
            }
        }
        .instrument(span)
        .await
    }

    // --- Server and session -------------------------------------------------------------------

    /// Fetches the homeserver's supported versions (`GET /_matrix/client/versions`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn versions(&self) -> Result<get_supported_versions::Response> {
        self.send(get_supported_versions::Request::new(), None).await
    }

    /// Fetches the supported versions and uses them to pick endpoint paths from now on.
    ///
    /// # Errors
    /// On a failed request.
    pub async fn refresh_supported_versions(&self) -> Result<SupportedVersions> {
        let response = self.versions().await?;
        let supported =
            SupportedVersions::from_parts(&response.versions, &response.unstable_features);
        if !supported.versions.is_empty() {
            *self.inner.versions.write().unwrap_or_else(PoisonError::into_inner) =
                supported.clone();
        }
        Ok(supported)
    }

    /// Asks who the token (and identity) belongs to (`GET /account/whoami`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn whoami(&self, as_user: Option<&UserId>) -> Result<whoami::v3::Response> {
        self.send(whoami::v3::Request::new(), as_user).await
    }

    /// Registers a ghost with `m.login.application_service` and `inhibit_login`
    /// (`POST /register`).
    ///
    /// # Errors
    /// [`Error::NotInNamespace`] for a localpart outside the namespace; `M_USER_IN_USE` when the
    /// user exists; `M_EXCLUSIVE` when the homeserver disagrees about the namespace.
    pub async fn register(&self, user_id: &UserId) -> Result<register::v3::Response> {
        self.check_identity(user_id)?;
        let mut request = register::v3::Request::new();
        request.username = Some(user_id.localpart().to_owned());
        request.inhibit_login = true;
        request.login_type = Some(register::LoginType::ApplicationService);
        self.send(request, None).await
    }

    /// Pings the appservice through the homeserver
    /// (`POST /_matrix/client/v1/appservice/{id}/ping`) and returns the round-trip time.
    ///
    /// # Errors
    /// On a failed request (502 `M_BAD_STATUS`/`M_CONNECTION_FAILED` when the homeserver could not
    /// reach us).
    pub async fn ping(&self, transaction_id: Option<&TransactionId>) -> Result<Duration> {
        let mut request = request_ping::v1::Request::new(self.inner.appservice_id.clone());
        request.transaction_id = transaction_id.map(ToOwned::to_owned);
        Ok(self.send(request, None).await?.duration)
    }

    // --- Rooms and membership -----------------------------------------------------------------

    /// Creates a room with all of ruma's options (`POST /createRoom`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn create_room(
        &self,
        as_user: Option<&UserId>,
        request: create_room::v3::Request,
    ) -> Result<OwnedRoomId> {
        Ok(self.send(request, as_user).await?.room_id)
    }

    /// Joins a room by ID (`POST /rooms/{roomId}/join`).
    ///
    /// # Errors
    /// On a failed request (`M_FORBIDDEN` when not invited or banned).
    pub async fn join(&self, as_user: Option<&UserId>, room_id: &RoomId) -> Result<OwnedRoomId> {
        let request = join_room_by_id::v3::Request::new(room_id.to_owned());
        Ok(self.send(request, as_user).await?.room_id)
    }

    /// Joins a room by ID or alias through the `via` servers (`POST /join/{roomIdOrAlias}`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn join_by_id_or_alias(
        &self,
        as_user: Option<&UserId>,
        room: &RoomOrAliasId,
        via: &[OwnedServerName],
    ) -> Result<OwnedRoomId> {
        let mut request = join_room_by_id_or_alias::v3::Request::new(room.to_owned());
        request.via = via.to_vec();
        Ok(self.send(request, as_user).await?.room_id)
    }

    /// Invites `user_id` (`POST /rooms/{roomId}/invite`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn invite(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
        user_id: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        let mut recipient = invite_user::v3::InviteUserId::new(user_id.to_owned());
        recipient.reason = reason.map(ToOwned::to_owned);
        let request = invite_user::v3::Request::new(room_id.to_owned(), recipient.into());
        self.send(request, as_user).await.map(drop)
    }

    /// Leaves a room or rejects an invite (`POST /rooms/{roomId}/leave`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn leave(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
        reason: Option<&str>,
    ) -> Result<()> {
        let mut request = leave_room::v3::Request::new(room_id.to_owned());
        request.reason = reason.map(ToOwned::to_owned);
        self.send(request, as_user).await.map(drop)
    }

    /// Kicks `user_id` (`POST /rooms/{roomId}/kick`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn kick(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
        user_id: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        let mut request = kick_user::v3::Request::new(room_id.to_owned(), user_id.to_owned());
        request.reason = reason.map(ToOwned::to_owned);
        self.send(request, as_user).await.map(drop)
    }

    /// Bans `user_id` (`POST /rooms/{roomId}/ban`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn ban(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
        user_id: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        let mut request = ban_user::v3::Request::new(room_id.to_owned(), user_id.to_owned());
        request.reason = reason.map(ToOwned::to_owned);
        self.send(request, as_user).await.map(drop)
    }

    /// Unbans `user_id` (`POST /rooms/{roomId}/unban`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn unban(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
        user_id: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        let mut request = unban_user::v3::Request::new(room_id.to_owned(), user_id.to_owned());
        request.reason = reason.map(ToOwned::to_owned);
        self.send(request, as_user).await.map(drop)
    }

    /// Forgets a room the user has left (`POST /rooms/{roomId}/forget`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn forget(&self, as_user: Option<&UserId>, room_id: &RoomId) -> Result<()> {
        self.send(forget_room::v3::Request::new(room_id.to_owned()), as_user).await.map(drop)
    }

    /// Lists the rooms the user has joined (`GET /joined_rooms`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn joined_rooms(&self, as_user: Option<&UserId>) -> Result<Vec<OwnedRoomId>> {
        Ok(self.send(joined_rooms::v3::Request::new(), as_user).await?.joined_rooms)
    }

    /// Lists a room's joined members with their profiles (`GET /rooms/{roomId}/joined_members`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn joined_members(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
    ) -> Result<joined_members::v3::Response> {
        self.send(joined_members::v3::Request::new(room_id.to_owned()), as_user).await
    }

    /// Lists a room's member events (`GET /rooms/{roomId}/members`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn members(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
    ) -> Result<Vec<Raw<RoomMemberEvent>>> {
        Ok(self.send(get_member_events::v3::Request::new(room_id.to_owned()), as_user).await?.chunk)
    }

    /// Upgrades a room to `version` and returns the replacement room
    /// (`POST /rooms/{roomId}/upgrade`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn upgrade_room(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
        version: RoomVersionId,
    ) -> Result<OwnedRoomId> {
        let request = upgrade_room::v3::Request::new(room_id.to_owned(), version);
        Ok(self.send(request, as_user).await?.replacement_room)
    }

    // --- Events -------------------------------------------------------------------------------

    /// Sends a message-like event (`PUT /rooms/{roomId}/send/{eventType}/{txnId}`).
    ///
    /// `txn_id` makes the send idempotent; `None` generates one. Retries reuse it. `ts` massages
    /// the event's timestamp (appservice users only).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn send_message_event<C: MessageLikeEventContent>(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
        content: &C,
        txn_id: Option<OwnedTransactionId>,
        ts: Option<MilliSecondsSinceUnixEpoch>,
    ) -> Result<OwnedEventId> {
        let txn_id = txn_id.unwrap_or_else(new_txn_id);
        let mut request =
            send_message_event::v3::Request::new(room_id.to_owned(), txn_id, content)?;
        request.timestamp = ts;
        Ok(self.send(request, as_user).await?.event_id)
    }

    /// Sends a message-like event from raw JSON content, with an explicit event type.
    ///
    /// # Errors
    /// On a failed request.
    pub async fn send_message_event_raw(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
        event_type: MessageLikeEventType,
        content: Raw<AnyMessageLikeEventContent>,
        txn_id: Option<OwnedTransactionId>,
        ts: Option<MilliSecondsSinceUnixEpoch>,
    ) -> Result<OwnedEventId> {
        let txn_id = txn_id.unwrap_or_else(new_txn_id);
        let mut request = send_message_event::v3::Request::new_raw(
            room_id.to_owned(),
            txn_id,
            event_type,
            content,
        );
        request.timestamp = ts;
        Ok(self.send(request, as_user).await?.event_id)
    }

    /// Sends a state event (`PUT /rooms/{roomId}/state/{eventType}/{stateKey}`).
    ///
    /// # Errors
    /// On a failed request (403 when the user's power level is below the event's).
    pub async fn send_state_event<C, K>(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
        state_key: &K,
        content: &C,
        ts: Option<MilliSecondsSinceUnixEpoch>,
    ) -> Result<OwnedEventId>
    where
        C: StateEventContent,
        C::StateKey: std::borrow::Borrow<K>,
        K: AsRef<str> + ?Sized,
    {
        let mut request =
            send_state_event::v3::Request::new(room_id.to_owned(), state_key, content)?;
        request.timestamp = ts;
        Ok(self.send(request, as_user).await?.event_id)
    }

    /// Sends a state event from raw JSON content.
    ///
    /// # Errors
    /// On a failed request.
    pub async fn send_state_event_raw(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
        event_type: StateEventType,
        state_key: &str,
        content: Raw<AnyStateEventContent>,
        ts: Option<MilliSecondsSinceUnixEpoch>,
    ) -> Result<OwnedEventId> {
        let mut request = send_state_event::v3::Request::new_raw(
            room_id.to_owned(),
            event_type,
            state_key.to_owned(),
            content,
        );
        request.timestamp = ts;
        Ok(self.send(request, as_user).await?.event_id)
    }

    /// Fetches a room's full current state (`GET /rooms/{roomId}/state`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn get_state(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
    ) -> Result<Vec<Raw<AnyStateEvent>>> {
        Ok(self
            .send(get_state_events::v3::Request::new(room_id.to_owned()), as_user)
            .await?
            .room_state)
    }

    /// Fetches one state event's content (`GET /rooms/{roomId}/state/{eventType}/{stateKey}`).
    ///
    /// # Errors
    /// On a failed request (404 `M_NOT_FOUND` when unset).
    pub async fn get_state_event(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
        event_type: StateEventType,
        state_key: &str,
    ) -> Result<Box<RawJsonValue>> {
        let request = get_state_event_for_key::v3::Request::new(
            room_id.to_owned(),
            event_type,
            state_key.to_owned(),
        );
        Ok(self.send(request, as_user).await?.event_or_content)
    }

    /// Fetches one event (`GET /rooms/{roomId}/event/{eventId}`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn get_event(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<Raw<AnyTimelineEvent>> {
        let request = get_room_event::v3::Request::new(room_id.to_owned(), event_id.to_owned());
        Ok(self.send(request, as_user).await?.event)
    }

    /// Paginates a room's history (`GET /rooms/{roomId}/messages`); build the request with ruma.
    ///
    /// # Errors
    /// On a failed request.
    pub async fn messages(
        &self,
        as_user: Option<&UserId>,
        request: get_message_events::v3::Request,
    ) -> Result<get_message_events::v3::Response> {
        self.send(request, as_user).await
    }

    /// Fetches events around an event (`GET /rooms/{roomId}/context/{eventId}`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn context(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
        event_id: &EventId,
        limit: u32,
    ) -> Result<get_context::v3::Response> {
        let mut request = get_context::v3::Request::new(room_id.to_owned(), event_id.to_owned());
        request.limit = limit.into();
        self.send(request, as_user).await
    }

    /// Redacts an event (`PUT /rooms/{roomId}/redact/{eventId}/{txnId}`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn redact(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
        event_id: &EventId,
        reason: Option<&str>,
        txn_id: Option<OwnedTransactionId>,
        ts: Option<MilliSecondsSinceUnixEpoch>,
    ) -> Result<OwnedEventId> {
        let txn_id = txn_id.unwrap_or_else(new_txn_id);
        let mut request =
            redact_event::v3::Request::new(room_id.to_owned(), event_id.to_owned(), txn_id);
        request.reason = reason.map(ToOwned::to_owned);
        let options = RequestOptions::as_user(as_user).with_ts(ts);
        Ok(self.send_with(request, &options).await?.event_id)
    }

    /// Reacts to an event with an `m.reaction` annotation.
    ///
    /// # Errors
    /// On a failed request.
    pub async fn react(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
        event_id: &EventId,
        key: &str,
        ts: Option<MilliSecondsSinceUnixEpoch>,
    ) -> Result<OwnedEventId> {
        let content =
            ReactionEventContent::new(Annotation::new(event_id.to_owned(), key.to_owned()));
        self.send_message_event(as_user, room_id, &content, None, ts).await
    }

    /// Finds the event closest to a timestamp (`GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn timestamp_to_event(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
        ts: MilliSecondsSinceUnixEpoch,
        dir: Direction,
    ) -> Result<get_event_by_timestamp::v1::Response> {
        self.send(get_event_by_timestamp::v1::Request::new(room_id.to_owned(), ts, dir), as_user)
            .await
    }

    // --- Ephemeral ----------------------------------------------------------------------------

    /// Sends a receipt (`POST /rooms/{roomId}/receipt/{receiptType}/{eventId}`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn send_receipt(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
        event_id: &EventId,
        receipt_type: ReceiptType,
    ) -> Result<()> {
        let kind = match receipt_type {
            ReceiptType::ReadPrivate => create_receipt::v3::ReceiptType::ReadPrivate,
            _ => create_receipt::v3::ReceiptType::Read,
        };
        let request =
            create_receipt::v3::Request::new(room_id.to_owned(), kind, event_id.to_owned());
        self.send(request, as_user).await.map(drop)
    }

    /// Sets the fully-read marker and optionally a read receipt (`POST /rooms/{roomId}/read_markers`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn set_read_markers(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
        fully_read: &EventId,
        read_receipt: Option<&EventId>,
    ) -> Result<()> {
        let mut request = set_read_marker::v3::Request::new(room_id.to_owned());
        request.fully_read = Some(fully_read.to_owned());
        request.read_receipt = read_receipt.map(ToOwned::to_owned);
        self.send(request, as_user).await.map(drop)
    }

    /// Starts (for `timeout`) or stops (`None`) typing (`PUT /rooms/{roomId}/typing/{userId}`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn typing(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
        timeout: Option<Duration>,
    ) -> Result<()> {
        use create_typing_event::v3::{Typing, TypingInfo};
        let user = as_user.unwrap_or(&self.inner.bot).to_owned();
        let state = timeout.map_or(Typing::No, |t| Typing::Yes(TypingInfo::new(t)));
        let request = create_typing_event::v3::Request::new(user, room_id.to_owned(), state);
        self.send(request, as_user).await.map(drop)
    }

    /// Sets presence (`PUT /presence/{userId}/status`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn set_presence(
        &self,
        as_user: Option<&UserId>,
        presence: PresenceState,
        status_msg: Option<&str>,
    ) -> Result<()> {
        let user = as_user.unwrap_or(&self.inner.bot).to_owned();
        let mut request = set_presence::v3::Request::new(user, presence);
        request.status_msg = status_msg.map(ToOwned::to_owned);
        self.send(request, as_user).await.map(drop)
    }

    // --- Profile ------------------------------------------------------------------------------

    /// Fetches a user's global profile (`GET /profile/{userId}`).
    ///
    /// # Errors
    /// On a failed request (404 when the user has no profile).
    pub async fn get_profile(&self, user_id: &UserId) -> Result<UserProfile> {
        Ok(self.send(get_profile::v3::Request::new(user_id.to_owned()), None).await?.data)
    }

    /// Sets the user's global display name (`PUT /profile/{userId}/displayname`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn set_displayname(&self, as_user: Option<&UserId>, displayname: &str) -> Result<()> {
        self.set_profile_field(as_user, ProfileFieldValue::DisplayName(displayname.to_owned()))
            .await
    }

    /// Sets the user's global avatar (`PUT /profile/{userId}/avatar_url`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn set_avatar_url(
        &self,
        as_user: Option<&UserId>,
        avatar_url: &MxcUri,
    ) -> Result<()> {
        self.set_profile_field(as_user, ProfileFieldValue::AvatarUrl(avatar_url.to_owned())).await
    }

    async fn set_profile_field(
        &self,
        as_user: Option<&UserId>,
        value: ProfileFieldValue,
    ) -> Result<()> {
        let user = as_user.unwrap_or(&self.inner.bot).to_owned();
        self.send(set_profile_field::v3::Request::new(user, value), as_user).await.map(drop)
    }

    /// Searches the user directory (`POST /user_directory/search`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn search_users(
        &self,
        as_user: Option<&UserId>,
        term: &str,
        limit: u32,
    ) -> Result<search_users::v3::Response> {
        let mut request = search_users::v3::Request::new(term.to_owned());
        request.limit = limit.into();
        self.send(request, as_user).await
    }

    // --- Aliases and directory ----------------------------------------------------------------

    /// Creates an alias (`PUT /directory/room/{roomAlias}`). With `replace`, an alias that exists
    /// (409) is deleted and created again for `room_id`.
    ///
    /// # Errors
    /// On a failed request (409 without `replace`).
    pub async fn put_alias(
        &self,
        as_user: Option<&UserId>,
        alias: &RoomAliasId,
        room_id: &RoomId,
        replace: bool,
    ) -> Result<()> {
        let request = create_alias::v3::Request::new(alias.to_owned(), room_id.to_owned());
        match self.send(request.clone(), as_user).await {
            Err(err) if replace && err.status() == Some(reqwest::StatusCode::CONFLICT) => {
                self.delete_alias(as_user, alias).await?;
                self.send(request, as_user).await.map(drop)
            }
            other => other.map(drop),
        }
    }

    /// Resolves an alias to a room and servers (`GET /directory/room/{roomAlias}`).
    ///
    /// # Errors
    /// On a failed request (404 `M_NOT_FOUND`).
    pub async fn get_alias(
        &self,
        alias: &RoomAliasId,
    ) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
        let response = self.send(get_alias::v3::Request::new(alias.to_owned()), None).await?;
        Ok((response.room_id, response.servers))
    }

    /// Deletes an alias (`DELETE /directory/room/{roomAlias}`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn delete_alias(&self, as_user: Option<&UserId>, alias: &RoomAliasId) -> Result<()> {
        let alias: OwnedRoomAliasId = alias.to_owned();
        self.send(delete_alias::v3::Request::new(alias), as_user).await.map(drop)
    }

    /// Publishes or hides a room in the directory (`PUT /directory/list/room/{roomId}`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn set_directory_visibility(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
        visibility: Visibility,
    ) -> Result<()> {
        let request = set_room_visibility::v3::Request::new(room_id.to_owned(), visibility);
        self.send(request, as_user).await.map(drop)
    }

    /// Reads a room's directory visibility (`GET /directory/list/room/{roomId}`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn get_directory_visibility(&self, room_id: &RoomId) -> Result<Visibility> {
        Ok(self
            .send(get_room_visibility::v3::Request::new(room_id.to_owned()), None)
            .await?
            .visibility)
    }

    /// Publishes a room in the appservice's network directory
    /// (`PUT /directory/list/appservice/{networkId}/{roomId}`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn set_appservice_directory_visibility(
        &self,
        network_id: &str,
        room_id: &RoomId,
        visibility: Visibility,
    ) -> Result<()> {
        let request = set_appservice_room_visibility::v3::Request::new(
            network_id.to_owned(),
            room_id.to_owned(),
            visibility,
        );
        self.send(request, None).await.map(drop)
    }

    // --- Account data and tags ----------------------------------------------------------------

    /// Reads global account data (`GET /user/{userId}/account_data/{type}`).
    ///
    /// # Errors
    /// On a failed request (404 when unset).
    pub async fn get_account_data(
        &self,
        as_user: Option<&UserId>,
        event_type: GlobalAccountDataEventType,
    ) -> Result<Box<RawJsonValue>> {
        let user = as_user.unwrap_or(&self.inner.bot).to_owned();
        let request = get_global_account_data::v3::Request::new(user, event_type);
        Ok(self.send(request, as_user).await?.account_data.into_json())
    }

    /// Writes global account data (`PUT /user/{userId}/account_data/{type}`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn set_account_data<C>(&self, as_user: Option<&UserId>, content: &C) -> Result<()>
    where
        C: ruma::events::GlobalAccountDataEventContent,
    {
        let user = as_user.unwrap_or(&self.inner.bot).to_owned();
        let request = set_global_account_data::v3::Request::new(user, content)?;
        self.send(request, as_user).await.map(drop)
    }

    /// Writes room account data (`PUT /user/{userId}/rooms/{roomId}/account_data/{type}`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn set_room_account_data<C>(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
        content: &C,
    ) -> Result<()>
    where
        C: ruma::events::RoomAccountDataEventContent,
    {
        let user = as_user.unwrap_or(&self.inner.bot).to_owned();
        let request = set_room_account_data::v3::Request::new(user, room_id.to_owned(), content)?;
        self.send(request, as_user).await.map(drop)
    }

    /// Adds `room_id` to the user's `m.direct` list for `other`: reads `m.direct`, adds the
    /// room, writes it back (a no-op write is skipped).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn add_direct_room(
        &self,
        as_user: Option<&UserId>,
        other: &UserId,
        room_id: &RoomId,
    ) -> Result<()> {
        let mut direct =
            match self.get_account_data(as_user, GlobalAccountDataEventType::Direct).await {
                Ok(raw) => serde_json::from_str::<DirectEventContent>(raw.get())?,
                Err(err) if err.status() == Some(reqwest::StatusCode::NOT_FOUND) => {
                    DirectEventContent::default()
                }
                Err(err) => return Err(err),
            };
        let rooms = direct.entry(OwnedDirectUserIdentifier::from(other.to_owned())).or_default();
        if rooms.iter().any(|r| r == room_id) {
            return Ok(());
        }
        rooms.push(room_id.to_owned());
        self.set_account_data(as_user, &direct).await
    }

    /// Lists a room's tags (`GET /user/{userId}/rooms/{roomId}/tags`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn get_tags(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
    ) -> Result<get_tags::v3::Response> {
        let user = as_user.unwrap_or(&self.inner.bot).to_owned();
        self.send(get_tags::v3::Request::new(user, room_id.to_owned()), as_user).await
    }

    /// Sets a room tag (`PUT /user/{userId}/rooms/{roomId}/tags/{tag}`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn set_tag(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
        tag: &str,
        info: TagInfo,
    ) -> Result<()> {
        let user = as_user.unwrap_or(&self.inner.bot).to_owned();
        let request = create_tag::v3::Request::new(user, room_id.to_owned(), tag.to_owned(), info);
        self.send(request, as_user).await.map(drop)
    }

    /// Removes a room tag (`DELETE /user/{userId}/rooms/{roomId}/tags/{tag}`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn remove_tag(
        &self,
        as_user: Option<&UserId>,
        room_id: &RoomId,
        tag: &str,
    ) -> Result<()> {
        let user = as_user.unwrap_or(&self.inner.bot).to_owned();
        let request = delete_tag::v3::Request::new(user, room_id.to_owned(), tag.to_owned());
        self.send(request, as_user).await.map(drop)
    }

    // --- Media --------------------------------------------------------------------------------

    /// Uploads media and returns its `mxc://` URI (`POST /_matrix/media/v3/upload`).
    ///
    /// # Errors
    /// On a failed request (413 `M_TOO_LARGE`).
    pub async fn upload(
        &self,
        as_user: Option<&UserId>,
        data: Vec<u8>,
        content_type: Option<&str>,
        filename: Option<&str>,
    ) -> Result<OwnedMxcUri> {
        let mut request = create_content::v3::Request::new(data);
        request.content_type = content_type.map(ToOwned::to_owned);
        request.filename = filename.map(ToOwned::to_owned);
        Ok(self.send(request, as_user).await?.content_uri)
    }

    /// Reserves an `mxc://` URI for a later upload (`POST /_matrix/media/v1/create`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn create_mxc(
        &self,
        as_user: Option<&UserId>,
    ) -> Result<create_mxc_uri::v1::Response> {
        self.send(create_mxc_uri::v1::Request::default(), as_user).await
    }

    /// Uploads the content of a reserved `mxc://` URI
    /// (`PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`).
    ///
    /// # Errors
    /// On a failed request or a malformed URI.
    pub async fn upload_to_mxc(
        &self,
        as_user: Option<&UserId>,
        mxc: &MxcUri,
        data: Vec<u8>,
        content_type: Option<&str>,
    ) -> Result<()> {
        let (server, media_id) =
            mxc.parts().map_err(|e| Error::InvalidResponse(format!("bad mxc URI: {e}")))?;
        let mut request =
            create_content_async::v3::Request::new(media_id.to_owned(), server.to_owned(), data);
        request.content_type = content_type.map(ToOwned::to_owned);
        self.send(request, as_user).await.map(drop)
    }

    /// Downloads media: the authenticated `/_matrix/client/v1/media/download` endpoint, falling
    /// back to the legacy `/_matrix/media/v3/download` when the homeserver does not know the
    /// former (404 `M_UNRECOGNIZED`). Returns the bytes and their content type.
    ///
    /// # Errors
    /// On a failed request or a malformed URI.
    pub async fn download(&self, mxc: &MxcUri) -> Result<(Vec<u8>, Option<String>)> {
        let (server, media_id) =
            mxc.parts().map_err(|e| Error::InvalidResponse(format!("bad mxc URI: {e}")))?;
        let request = authenticated_media::get_content::v1::Request::new(
            media_id.to_owned(),
            server.to_owned(),
        );
        match self.send(request, None).await {
            Ok(r) => Ok((r.file, r.content_type)),
            Err(err) if err.is_unrecognized_endpoint() => {
                #[allow(deprecated)]
                let request = ruma::api::client::media::get_content::v3::Request::new(
                    media_id.to_owned(),
                    server.to_owned(),
                );
                #[allow(deprecated)]
                let r = self.send(request, None).await?;
                Ok((r.file, r.content_type))
            }
            Err(err) => Err(err),
        }
    }

    /// Downloads a thumbnail (`GET /_matrix/client/v1/media/thumbnail/...`).
    ///
    /// # Errors
    /// On a failed request or a malformed URI.
    pub async fn thumbnail(
        &self,
        mxc: &MxcUri,
        width: u32,
        height: u32,
        method: Option<ruma::media::Method>,
    ) -> Result<(Vec<u8>, Option<String>)> {
        let (server, media_id) =
            mxc.parts().map_err(|e| Error::InvalidResponse(format!("bad mxc URI: {e}")))?;
        let mut request = authenticated_media::get_content_thumbnail::v1::Request::new(
            media_id.to_owned(),
            server.to_owned(),
            width.into(),
            height.into(),
        );
        request.method = method;
        let r = self.send(request, None).await?;
        Ok((r.file, r.content_type))
    }

    /// Fetches the media repository's limits (`GET /_matrix/client/v1/media/config`) and returns
    /// the largest upload in bytes.
    ///
    /// # Errors
    /// On a failed request.
    pub async fn media_config(&self) -> Result<u64> {
        let r = self.send(authenticated_media::get_media_config::v1::Request::new(), None).await?;
        Ok(r.upload_size.into())
    }

    // --- Devices and encryption ---------------------------------------------------------------

    /// Creates or renames a device of an appservice user (MSC4190: `PUT /devices/{deviceId}` with
    /// the `as_token`, acting as the user).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn create_device(
        &self,
        as_user: Option<&UserId>,
        device_id: &DeviceId,
        display_name: Option<&str>,
    ) -> Result<()> {
        let mut request = update_device::v3::Request::new(device_id.to_owned());
        request.display_name = display_name.map(ToOwned::to_owned);
        self.send(request, as_user).await.map(drop)
    }

    /// Uploads device and one-time keys for a user's device (`POST /keys/upload`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn upload_keys(
        &self,
        as_user: Option<&UserId>,
        device_id: &DeviceId,
        request: upload_keys::v3::Request,
    ) -> Result<upload_keys::v3::Response> {
        self.send_with(request, &RequestOptions::as_user(as_user).with_device(device_id)).await
    }

    /// Queries device keys (`POST /keys/query`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn query_keys(
        &self,
        as_user: Option<&UserId>,
        request: get_keys::v3::Request,
    ) -> Result<get_keys::v3::Response> {
        self.send(request, as_user).await
    }

    /// Claims one-time keys (`POST /keys/claim`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn claim_keys(
        &self,
        as_user: Option<&UserId>,
        request: claim_keys::v3::Request,
    ) -> Result<claim_keys::v3::Response> {
        self.send(request, as_user).await
    }

    /// Sends to-device messages (`PUT /sendToDevice/{eventType}/{txnId}`).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn send_to_device(
        &self,
        as_user: Option<&UserId>,
        request: send_event_to_device::v3::Request,
    ) -> Result<()> {
        self.send(request, as_user).await.map(drop)
    }
}

/// Generates a fresh transaction ID: unique per process and across restarts.
///
/// Make one per logical send and keep it across retries of that send; the homeserver then
/// deduplicates a send that reached it twice.
pub fn new_txn_id() -> OwnedTransactionId {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("mxb.{}.{n}.{}", crate::util::now_ms(), Secret::generate(8).expose()).into()
}

/// Turns new content into an edit (`m.replace`) of `original`.
pub fn edit_content(
    new: RoomMessageEventContentWithoutRelation,
    original: &EventId,
) -> RoomMessageEventContent {
    new.make_replacement(ReplacementMetadata::new(original.to_owned(), None))
}

/// Turns content into a rich reply to the event `event_id` sent by `sender`, mentioning them.
pub fn reply_content(
    content: RoomMessageEventContentWithoutRelation,
    event_id: &EventId,
    sender: &UserId,
) -> RoomMessageEventContent {
    content.make_reply_to(
        ReplyMetadata::new(event_id, sender, None),
        ForwardThread::Yes,
        AddMentions::Yes,
    )
}

/// Appends percent-encoded query pairs to a URI.
fn append_query(uri: &mut http::Uri, pairs: &[(&str, String)]) -> Result<()> {
    if pairs.is_empty() {
        return Ok(());
    }
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        ser.append_pair(k, v);
    }
    let extra = ser.finish();
    let path_and_query = match uri.path_and_query() {
        Some(pq) if pq.query().is_some() => format!("{pq}&{extra}"),
        Some(pq) => format!("{pq}?{extra}"),
        None => format!("/?{extra}"),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        path_and_query
            .try_into()
            .map_err(|e: http::uri::InvalidUri| Error::InvalidResponse(e.to_string()))?,
    );
    *uri = http::Uri::from_parts(parts).map_err(|e| Error::InvalidResponse(e.to_string()))?;
    Ok(())
}

fn http_response<'a>(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &'a [u8],
) -> http::Response<&'a [u8]> {
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers.clone();
    response
}

fn borrow_response(response: &http::Response<Vec<u8>>) -> http::Response<&[u8]> {
    http_response(response.status(), response.headers(), response.body())
}

#[cfg(test)]
mod tests;
