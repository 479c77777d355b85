//! The outbound Client-Server API client: the transport between the bridge and its homeserver.
//!
//! One [`Client`] per process holds the connection pool, the `as_token` and the retry policy; it
//! is an `Arc` inside, so clones are free. Every Client-Server endpoint ruma knows is callable
//! through [`Client::send`] with ruma's request type. Acting in rooms (joining first, sending with
//! a transaction ID, keeping the state cache current) is the job of an `Intent`; the few named
//! methods here are requests whose behaviour the client adds: the supported-versions cache, the
//! appservice's own registration, whoami and ping, and media download with its fallback.
//!
//! Identity: requests made for a ghost carry `?user_id=` ([identity assertion]); a user outside
//! the registration's user namespace is refused with [`Error::NotInNamespace`] before anything
//! is sent. Requests sent with `as_user: None` act as the bot (`sender_localpart`).
//!
//! Failures: connection errors and 502/503/504 answers are retried with exponential backoff; a
//! 429 `M_LIMIT_EXCEEDED` waits as long as the homeserver asked (`Retry-After` header or
//! `retry_after_ms`, capped). A retry resends the very same HTTP request, so a send keeps its
//! transaction ID and the homeserver deduplicates it. See [`RetryPolicy`].
//!
//! Errors: every request fails with [`Error`]: [`Error::Api`] when the homeserver refused it
//! (after retries; match it with [`Error::kind`], ruma's `ErrorKind`), [`Error::Http`] when the
//! homeserver could not be reached, [`Error::NotInNamespace`] before anything is sent.
//!
//! Logging: every request runs in a `send` span with `method`, `route` (ruma's path template,
//! such as `/_matrix/client/v3/rooms/{room_id}/join`, never the concrete path or query),
//! `status`, `attempts` and `duration_ms`. Tokens never reach a log line.
//!
//! [identity assertion]: https://spec.matrix.org/v1.13/application-service-api/#identity-assertion

mod error;
mod media;

use std::{
    borrow::Cow,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::{Duration, Instant},
};

use percent_encoding::{AsciiSet, CONTROLS};
use ruma::{
    DeviceId, EventId, MilliSecondsSinceUnixEpoch, MxcUri, OwnedDeviceId, OwnedEventId,
    OwnedRoomId, OwnedTransactionId, OwnedUserId, RoomId, ServerName, TransactionId, UserId,
    api::{
        AppserviceUserIdentity, EndpointError as _, IncomingResponseExt as _, MatrixVersion,
        OutgoingRequest, OutgoingRequestExt as _, SupportedVersions,
        auth_scheme::{
            AccessToken, AccessTokenOptional, AddRequiredTokenError, AppserviceToken,
            AppserviceTokenOptional, AuthScheme, NoAccessToken, NoAuthentication, SendAccessToken,
        },
        client::{
            account::{register, whoami},
            appservice::request_ping,
            authenticated_media,
            discovery::get_supported_versions,
            message::send_message_event,
            redact::redact_event,
            session::login,
        },
        error::IntoHttpError,
        path_builder::{PathBuilder, SinglePath, VersionHistory},
    },
    exports::http,
};
use tracing::{Instrument as _, field};
use url::{Url, form_urlencoded};

pub use self::error::{Error, Result};
pub use self::media::{MediaStream, UploadBody};
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
    pub fn with_ts(mut self, ts: MilliSecondsSinceUnixEpoch) -> Self {
        self.ts = Some(ts);
        self
    }
}

/// Supplies ruma's path-selection input from the homeserver's supported versions.
///
/// Implemented for both of ruma's path builders, so [`Client::send`] takes any endpoint.
pub trait PathInput: PathBuilder {
    /// The input `select_path` needs.
    fn input(versions: &SupportedVersions) -> Self::Input<'_>;

    /// Whether the endpoint has a stable path that `versions` do not reach (it came in a
    /// newer version than they name): then the versions are worth fetching again.
    fn newer_than(&self, _versions: &SupportedVersions) -> bool {
        false
    }
}

impl PathInput for VersionHistory {
    fn input(versions: &SupportedVersions) -> Self::Input<'_> {
        Cow::Borrowed(versions)
    }

    fn newer_than(&self, versions: &SupportedVersions) -> bool {
        self.added_in().is_some() && !self.is_supported(versions)
    }
}

impl PathInput for SinglePath {
    fn input(_versions: &SupportedVersions) -> Self::Input<'_> {}
}

/// Supplies ruma's authentication input (the `as_token`) for an endpoint's auth scheme.
pub trait AuthInput: AuthScheme {
    /// The input `add_authentication` needs.
    fn input(token: &str) -> Self::Input<'_>;

    /// The input for a request sent with no token at all (a login).
    fn without_token() -> Self::Input<'static>;
}

macro_rules! token_auth {
    ($($scheme:ty),*) => {$(
        impl AuthInput for $scheme {
            fn input(token: &str) -> Self::Input<'_> {
                // `Always`: an appservice authenticates every call, even optional-auth ones, so
                // that `?user_id=` is honoured.
                SendAccessToken::Always(token)
            }

            fn without_token() -> Self::Input<'static> {
                SendAccessToken::None
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

    fn without_token() -> Self::Input<'static> {}
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
    /// For a homeserver reached over plain HTTP: hyper's pooled client, which the API requests
    /// go through instead of `http` (see [`PlainHttp`]).
    plain: Option<PlainHttp>,
    /// The homeserver's base URL, without a trailing slash.
    base: String,
    /// The bearer token for every request: the `as_token`, or a real user's access token.
    as_token: Secret,
    /// The `Authorization` header ruma writes for `as_token`, made once for the requests the
    /// client writes itself ([`Client::txn_put_request`]).
    authorization: Bearer,
    /// For a real user's client ([`Client::for_user`]): the appservice's client, which helps
    /// (the bot invites) and may act as the bridge's users.
    appservice: Option<Client>,
    /// A real user's client made with another registration's `as_token`
    /// ([`Client::for_user_via_appservice`]): every request asserts the user (`?user_id=`).
    assert_user: bool,
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
    versions: RwLock<CachedVersions>,
    /// Joins in flight, keyed by (room, user). Entries exist only while a join runs, so the map
    /// never grows with the number of ghosts (see `Intent::ensure_joined`).
    joins_in_flight: Mutex<crate::util::FastMap<JoinKey, Arc<tokio::sync::Mutex<()>>>>,
    /// The homeserver's upload limit, once asked (`Some(None)`: it has none).
    upload_limit: RwLock<Option<Option<u64>>>,
}

/// The homeserver's supported versions, and when they were last fetched.
#[derive(Debug, Clone)]
struct CachedVersions {
    supported: SupportedVersions,
    /// When a fetch last succeeded (`None`: never, the default of spec v1.12 is assumed).
    fetched: Option<Instant>,
    /// When a fetch was last tried, so a failing homeserver is not asked on every request.
    tried: Option<Instant>,
}

/// How long fetched supported versions are used before they are fetched again (in the
/// background, by the next request).
const VERSIONS_MAX_AGE: Duration = Duration::from_secs(6 * 3600);
/// The least time between two fetches of the supported versions that requests start.
const VERSIONS_RETRY: Duration = Duration::from_secs(60);

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
    pub fn with_retry_policy(
        homeserver: Url,
        server_name: &ServerName,
        registration: Registration,
        retry: RetryPolicy,
    ) -> Result<Self> {
        let http = build_http(&homeserver)?;
        let plain = PlainHttp::for_homeserver(&homeserver);
        let bot = UserId::parse_with_server_name(registration.sender_localpart(), server_name)
            .map_err(|e| Error::InvalidResponse(format!("invalid bot user ID: {e}")))?;
        let versions = CachedVersions {
            supported: SupportedVersions {
                versions: [MatrixVersion::V1_12].into(),
                features: Default::default(),
            },
            fetched: None,
            tried: None,
        };
        Ok(Self {
            inner: Arc::new(ClientInner {
                http,
                plain,
                base: homeserver.as_str().trim_end_matches('/').to_owned(),
                authorization: Bearer::new(registration.as_token()),
                as_token: registration.as_token().clone(),
                appservice: None,
                assert_user: false,
                appservice_id: registration.id().to_owned(),
                bot,
                registration,
                retry,
                metrics: std::sync::OnceLock::new(),
                versions: RwLock::new(versions),
                joins_in_flight: Mutex::default(),
                upload_limit: RwLock::default(),
            }),
        })
    }

    /// A client for a real user (not in the registration's namespace, such as a double
    /// puppet), authenticated with that user's own `access_token` and acting only as them: no
    /// `?user_id=` is added. It talks to `homeserver` when given (the user's own homeserver,
    /// from [`Client::discover`] or a login's well-known answer), else to this client's.
    ///
    /// It shares this client's retry policy, metrics and supported versions; joins that need
    /// help are helped by the appservice's bot ([`Client::appservice`]).
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn for_user(
        &self,
        user_id: &UserId,
        access_token: Secret,
        homeserver: Option<&Url>,
    ) -> Result<Self> {
        self.real_user(user_id, access_token, homeserver, false)
    }

    /// A client for a real user of a homeserver where a second appservice registration may act
    /// as anyone (`as_token` of a registration with a non-exclusive `@.*:server` user
    /// namespace and `url: null`): every request carries `?user_id=` for `user_id`, as a ghost's
    /// does. This is how a bridge acts as its users' own accounts (double puppeting) without
    /// asking each of them for a token; see [`crate::Context::double_puppet`].
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn for_user_via_appservice(
        &self,
        user_id: &UserId,
        as_token: Secret,
        homeserver: Option<&Url>,
    ) -> Result<Self> {
        self.real_user(user_id, as_token, homeserver, true)
    }

    fn real_user(
        &self,
        user_id: &UserId,
        token: Secret,
        homeserver: Option<&Url>,
        assert_user: bool,
    ) -> Result<Self> {
        let appservice = self.appservice().clone();
        let (http, plain, base) = match homeserver {
            Some(url) => (
                build_http(url)?,
                PlainHttp::for_homeserver(url),
                url.as_str().trim_end_matches('/').to_owned(),
            ),
            None => (
                appservice.inner.http.clone(),
                appservice.inner.plain.clone(),
                appservice.inner.base.clone(),
            ),
        };
        let versions = appservice.inner.versions.read().unwrap_or_else(PoisonError::into_inner);
        let versions = if homeserver.is_some() {
            CachedVersions { fetched: None, tried: None, ..versions.clone() }
        } else {
            versions.clone()
        };
        let metrics = std::sync::OnceLock::new();
        if let Some(m) = appservice.inner.metrics.get() {
            let _ = metrics.set(Arc::clone(m));
        }
        let inner = &appservice.inner;
        Ok(Self {
            inner: Arc::new(ClientInner {
                http,
                plain,
                base,
                authorization: Bearer::new(&token),
                as_token: token,
                appservice_id: inner.appservice_id.clone(),
                bot: user_id.to_owned(),
                registration: inner.registration.clone(),
                retry: inner.retry,
                metrics,
                versions: RwLock::new(versions),
                joins_in_flight: Mutex::default(),
                upload_limit: RwLock::default(),
                appservice: Some(appservice.clone()),
                assert_user,
            }),
        })
    }

    /// Whether this is a real user's client ([`Client::for_user`]) rather than the
    /// appservice's.
    pub fn is_user_client(&self) -> bool {
        self.inner.appservice.is_some()
    }

    /// The appservice's client: this one, or the one a real user's client was made from.
    pub fn appservice(&self) -> &Client {
        self.inner.appservice.as_ref().unwrap_or(self)
    }

    /// The homeserver's base URL this client talks to.
    pub fn homeserver(&self) -> &str {
        &self.inner.base
    }
}

/// How long a connection to the homeserver may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request may take, its answer read whole.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an idle connection stays in the pool.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The `User-Agent` of every request.
const USER_AGENT: &str = concat!("mxbridge/", env!("CARGO_PKG_VERSION"));

/// The pooled HTTP client for `homeserver`.
fn build_http(homeserver: &Url) -> Result<reqwest::Client> {
    crate::install_crypto_provider();
    let mut http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .user_agent(USER_AGENT)
            // The Client-Server API does not redirect; following one would also carry the
            // as_token to wherever it points.
            .redirect(reqwest::redirect::Policy::none());
    if homeserver.scheme() == "http" {
        // Every request goes to `homeserver` and no redirect is followed, so TLS is never
        // used: skip reading and parsing the system's CA roots (time and ~1 MiB of memory).
        // An https request, were one ever made, would fail verification, not skip it.
        http = http.tls_certs_only([]);
    }
    Ok(http.build()?)
}

/// hyper's pooled HTTP/1.1 client, for the API requests to a homeserver reached over plain
/// HTTP (the usual link to a homeserver on the same host or network). The request ruma built
/// goes out as it is: reqwest would parse its URL into a `Url` and back, and parse it again
/// from its redirect layer's record of the response (which it keeps even with redirects off),
/// for every request. Same timeouts, pool and `User-Agent` as the reqwest client, which still
/// carries media streams; no redirect is followed, and no proxy is used (reqwest would take one
/// from `HTTP_PROXY` in the environment).
#[derive(Clone, Debug)]
struct PlainHttp(
    hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
);

/// One attempt's failure: the error, and whether it is worth another attempt.
type AttemptError = (Error, bool);

impl PlainHttp {
    /// The client for `homeserver`, when it is reached over plain HTTP.
    fn for_homeserver(homeserver: &Url) -> Option<Self> {
        if homeserver.scheme() != "http" {
            return None;
        }
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .build(connector);
        Some(Self(client))
    }

    /// Sends one request and reads its answer whole.
    async fn send(
        &self,
        parts: &http::request::Parts,
        body: &bytes::Bytes,
    ) -> std::result::Result<(http::StatusCode, http::HeaderMap, bytes::Bytes), AttemptError> {
        use http_body_util::BodyExt as _;
        let mut request = http::Request::new(http_body_util::Full::new(body.clone()));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = parts.uri.clone();
        *request.headers_mut() = parts.headers.clone();
        request
            .headers_mut()
            .entry(http::header::USER_AGENT)
            .or_insert(http::HeaderValue::from_static(USER_AGENT));
        let exchange = async {
            let response = self.0.request(request).await.map_err(|e| {
                let transient = e.is_connect();
                (Error::Http(e.into()), transient)
            })?;
            let (head, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| (Error::Http(e.into()), false))?;
            Ok((head.status, head.headers, body.to_bytes()))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(result) => result,
            Err(elapsed) => Err((Error::Http(elapsed.into()), true)),
        }
    }
}

impl Client {
    /// The bot's user ID (for a real user's client, that user's).
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

    /// Whether the client may act as `user_id`: the bot, or a user in the namespace (a real
    /// user's client: that user only).
    pub fn may_act_as(&self, user_id: &UserId) -> bool {
        user_id == self.inner.bot
            || (!self.is_user_client() && self.inner.registration.is_user_in_namespace(user_id))
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

    /// Claims the one read-modify-write of the room's pinned events this process may run at a
    /// time (a [`JoinFlight`] under a key no user has).
    pub(crate) fn pins_flight(&self, room_id: &RoomId) -> JoinFlight {
        static KEY: std::sync::OnceLock<OwnedUserId> = std::sync::OnceLock::new();
        let key = KEY.get_or_init(|| {
            UserId::parse("@.pinned-events:mxbridge.invalid").expect("a valid user ID")
        });
        self.appservice().join_flight(room_id, key)
    }

    /// The number of joins in flight (for tests: it returns to zero).
    #[cfg(test)]
    pub(crate) fn joins_in_flight(&self) -> usize {
        self.inner.joins_in_flight.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// What the homeserver supports, as last fetched: the cached answer of
    /// `GET /_matrix/client/versions` (spec v1.12 and no features until a fetch succeeded).
    /// [`Client::refresh_supported_versions`] fetches it again; the appservice does at startup
    /// and every few hours, and a request for an endpoint the cached versions do not have
    /// fetches them first.
    pub fn supported_versions(&self) -> SupportedVersions {
        self.inner.versions.read().unwrap_or_else(PoisonError::into_inner).supported.clone()
    }

    /// How long ago the supported versions were fetched; `None` when they never were.
    pub fn supported_versions_age(&self) -> Option<Duration> {
        let versions = self.inner.versions.read().unwrap_or_else(PoisonError::into_inner);
        versions.fetched.map(|at| at.elapsed())
    }

    /// Whether a request should fetch the supported versions now: never tried, or the last
    /// try was long enough ago. Marks the try, so concurrent requests fetch once.
    fn claim_versions_fetch(&self, older_than: Duration) -> bool {
        let mut versions = self.inner.versions.write().unwrap_or_else(PoisonError::into_inner);
        let due = versions.tried.is_none_or(|at| at.elapsed() >= older_than);
        if due {
            versions.tried = Some(Instant::now());
        }
        due
    }

    /// Makes the cached versions fit to pick `R`'s path with: fetched first when they do not
    /// reach `R`'s stable path (an endpoint newer than what is cached) and were not fetched
    /// lately (an endpoint the homeserver lacks would otherwise fetch on every request); stale
    /// ones are fetched again in the background. Then the cache holds the versions to use (a
    /// fetch that failed or named none leaves them as they were).
    async fn prepare_versions_for<R: OutgoingRequest>(&self)
    where
        R::PathBuilder: PathInput,
    {
        let (unreached, stale) = {
            let cached = self.inner.versions.read().unwrap_or_else(PoisonError::into_inner);
            let versions = &cached.supported;
            let unreached = R::PATH_BUILDER.newer_than(versions)
                || R::PATH_BUILDER.select_path(R::PathBuilder::input(versions)).is_err();
            (unreached, cached.fetched.is_some_and(|at| at.elapsed() >= VERSIONS_MAX_AGE))
        };
        if unreached && self.claim_versions_fetch(VERSIONS_RETRY) {
            if let Err(err) = self.refresh_boxed().await {
                tracing::warn!(error = %err, "could not fetch the supported versions");
            }
            return;
        }
        if stale && self.claim_versions_fetch(VERSIONS_MAX_AGE) {
            let client = self.clone();
            tokio::spawn(async move {
                if let Err(err) = client.refresh_boxed().await {
                    tracing::warn!(error = %err, "could not refresh the supported versions");
                }
            });
        }
    }

    /// Sends any Client-Server request, as `as_user` (a ghost in the namespace) or as the bot
    /// (`None`).
    ///
    /// ```no_run
    /// # async fn example(client: mxbridge::client::Client) -> mxbridge::client::Result<()> {
    /// use ruma::{api::client::membership::joined_rooms, user_id};
    ///
    /// let ghost = user_id!("@_bridge_alice:example.org");
    /// let rooms = client.send(joined_rooms::v3::Request::new(), Some(ghost)).await?;
    /// # Ok(()) }
    /// ```
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
    /// does (ruma builds the request, then adds the [`AppserviceUserIdentity`] to the URI),
    /// spelled out so that endpoints without authentication (`/versions`) go through the same
    /// path.
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
        self.send_inner(request, options, true).await
    }

    async fn send_inner<R>(
        &self,
        request: R,
        options: &RequestOptions,
        with_token: bool,
    ) -> Result<R::IncomingResponse>
    where
        R: OutgoingRequest,
        R::Authentication: AuthInput,
        R::PathBuilder: PathInput,
    {
        if let Some(user) = &options.as_user {
            self.check_identity(user)?;
        }
        self.prepare_versions_for::<R>().await;
        let (route, http_request) = self.http_request(request, options, with_token)?;
        let response = self.execute(http_request, route, self.span_user(options)).await?;
        parse_response::<R>(response)
    }

    /// Turns `request` into HTTP as ruma writes it, with the identity and the options' query
    /// parameters added; returns it with its route (the path template).
    fn http_request<R>(
        &self,
        request: R,
        options: &RequestOptions,
        with_token: bool,
    ) -> Result<(&'static str, http::Request<Vec<u8>>)>
    where
        R: OutgoingRequest,
        R::Authentication: AuthInput,
        R::PathBuilder: PathInput,
    {
        let base = &self.inner.base;
        // Built with the cached versions borrowed, not copied (no await while they are).
        let (route, mut http_request): (_, http::Request<Vec<u8>>) = {
            let cached = self.inner.versions.read().unwrap_or_else(PoisonError::into_inner);
            let versions = &cached.supported;
            let route = R::PATH_BUILDER.select_path(R::PathBuilder::input(versions)).unwrap_or("?");
            let path_input = R::PathBuilder::input(versions);
            let http_request = if with_token {
                let token = R::Authentication::input(self.inner.as_token.expose());
                request.try_into_http_request(base, token, path_input)?
            } else {
                let token = R::Authentication::without_token();
                request.try_into_http_request(base, token, path_input)?
            };
            (route, http_request)
        };
        self.add_identity_query(http_request.uri_mut(), options, options.ts)?;
        Ok((route, http_request))
    }

    /// The user a request asserts (`?user_id=`): the client's user when every request asserts
    /// it; with a device, the user or else the bot (Synapse 1.163 fails, 500, on `device_id`
    /// without `user_id`); else the user unless it is the bot.
    fn asserted_user<'a>(&'a self, options: &'a RequestOptions) -> Option<&'a UserId> {
        if self.inner.assert_user {
            Some(&*self.inner.bot)
        } else if options.device_id.is_some() {
            Some(options.as_user.as_deref().unwrap_or(&*self.inner.bot))
        } else {
            options.as_user.as_deref().filter(|u| *u != self.inner.bot)
        }
    }

    /// The user a request's span names: the one it acts as, unless that is the bot.
    fn span_user<'a>(&'a self, options: &'a RequestOptions) -> Option<&'a UserId> {
        options.as_user.as_deref().filter(|u| *u != self.inner.bot)
    }

    /// Adds to `uri` the identity (`user_id`, `device_id`), the device again under its
    /// MSC3202 name, and `ts` unless the query has one already.
    fn add_identity_query(
        &self,
        uri: &mut http::Uri,
        options: &RequestOptions,
        ts: Option<MilliSecondsSinceUnixEpoch>,
    ) -> Result<()> {
        let mut identity = AppserviceUserIdentity::default();
        identity.user_id = self.asserted_user(options);
        identity.device_id = options.device_id.as_deref();
        identity.maybe_add_to_uri(uri)?;
        let mut extra = Vec::new();
        if let Some(device) = &options.device_id {
            extra.push(("org.matrix.msc3202.device_id", device.to_string()));
        }
        if let Some(ts) = ts
            && !uri.query().is_some_and(|q| q.split('&').any(|p| p.starts_with("ts=")))
        {
            extra.push(("ts", ts.get().to_string()));
        }
        append_query(uri, &extra)
    }

    // --- Sends with a transaction ID --------------------------------------------------------

    /// Sends a message-like event: `PUT /rooms/{room_id}/send/{event_type}/{txn_id}` with
    /// `body` (the content's JSON) and `options.ts` as the request's own `ts`.
    ///
    /// The request is the one [`Client::send_with`] makes of ruma's `send_message_event`
    /// request (with `timestamp: options.ts` and no `ts` in the options), byte for byte,
    /// written straight into one URL rather than through ruma's request builder: this is the
    /// request a bridge makes most.
    pub(crate) async fn send_room_event(
        &self,
        room_id: &RoomId,
        event_type: &str,
        txn_id: &TransactionId,
        body: Vec<u8>,
        options: &RequestOptions,
    ) -> Result<OwnedEventId> {
        let segments = [room_id.as_str(), event_type, txn_id.as_str()];
        let response = self.put_txn::<send_message_event::v3::Request>(segments, body, options);
        Ok(response.await?.event_id)
    }

    /// Redacts an event: `PUT /rooms/{room_id}/redact/{event_id}/{txn_id}` with `body` (the
    /// redaction's JSON content), as [`Client::send_with`] sends ruma's `redact_event` request
    /// with these options.
    pub(crate) async fn redact_room_event(
        &self,
        room_id: &RoomId,
        event_id: &EventId,
        txn_id: &TransactionId,
        body: Vec<u8>,
        options: &RequestOptions,
    ) -> Result<OwnedEventId> {
        let segments = [room_id.as_str(), event_id.as_str(), txn_id.as_str()];
        let response = self.put_txn::<redact_event::v3::Request>(segments, body, options);
        Ok(response.await?.event_id)
    }

    /// Sends one [`TxnPut`] request: the checks, versions, retries and answer of
    /// [`Client::send_with`], with the request written by [`Client::txn_put_request`].
    async fn put_txn<R: TxnPut>(
        &self,
        segments: [&str; 3],
        body: Vec<u8>,
        options: &RequestOptions,
    ) -> Result<R::IncomingResponse> {
        if let Some(user) = &options.as_user {
            self.check_identity(user)?;
        }
        self.prepare_versions_for::<R>().await;
        let (route, http_request) = self.txn_put_request::<R>(segments, body, options)?;
        let response = self.execute(http_request, route, self.span_user(options)).await?;
        parse_response::<R>(response)
    }

    /// Writes the HTTP request [`Client::http_request`] makes of `R` with these path segments
    /// (in the template's order), body and options: the path template ruma picks for the cached
    /// versions, each segment percent-encoded as ruma does, the request's own `ts`, the
    /// identity and the device query pairs form-encoded in the same order, and ruma's headers.
    fn txn_put_request<R: TxnPut>(
        &self,
        segments: [&str; 3],
        body: Vec<u8>,
        options: &RequestOptions,
    ) -> Result<(&'static str, http::Request<Vec<u8>>)> {
        let route = {
            let cached = self.inner.versions.read().unwrap_or_else(PoisonError::into_inner);
            R::PATH_BUILDER.select_path(Cow::Borrowed(&cached.supported))?
        };
        let base = &*self.inner.base;
        let user = self.asserted_user(options);
        let device = options.device_id.as_deref();
        let ts = options.ts.map(|ts| ts.get().to_string());
        let capacity = base.len()
            + route.len()
            + segments.iter().map(|s| s.len()).sum::<usize>()
            + user.map_or(0, |u| u.as_str().len() + 16)
            + device.map_or(0, |d| 2 * d.as_str().len() + 48)
            + ts.as_ref().map_or(0, |ts| ts.len() + 4);
        let mut url = String::with_capacity(capacity);
        url.push_str(base);
        // A placeholder is a whole segment of the template, `/{name}` (ruma's path syntax).
        let mut rest = route;
        for segment in segments {
            let (before, after) = rest.split_once('{').expect("a placeholder for each segment");
            url.push_str(before);
            url.extend(percent_encoding::utf8_percent_encode(segment, PATH_SEGMENT));
            rest = after.split_once('}').expect("placeholders are closed").1;
        }
        debug_assert!(!rest.contains('{'), "more placeholders than segments in {route}");
        url.push_str(rest);
        let mut query = QueryWriter { url, started: false };
        if R::TS_IN_QUERY
            && let Some(ts) = &ts
        {
            query.pair("ts", ts);
        }
        // Where ruma's URL ends: what the identity and the options' pairs are added to.
        let request_end = query.url.len();
        if let Some(user) = user {
            query.pair("user_id", user.as_str());
        }
        if let Some(device) = device {
            query.pair("device_id", device.as_str());
            query.pair("org.matrix.msc3202.device_id", device.as_str());
        }
        if !R::TS_IN_QUERY
            && let Some(ts) = &ts
        {
            query.pair("ts", ts);
        }
        let mut url = query.url;
        // One parse of the whole URL gives the URI that parsing ruma's URL and adding the pairs
        // to its query gives, as long as the base URL has no query or fragment of its own.
        // Otherwise, and for the same error when parsing fails, the pairs are added to the
        // parsed URL as `http_request` adds them, after the token as there.
        let parsed = if base.contains(['?', '#']) { None } else { http::Uri::try_from(&*url).ok() };
        let (uri, authorization) = match parsed {
            Some(uri) => (uri, self.authorization()?),
            None => {
                url.truncate(request_end);
                let mut uri = http::Uri::try_from(url)
                    .map_err(|e| Error::IntoHttp(IntoHttpError::Http(e.into())))?;
                let authorization = self.authorization()?;
                let ts = if R::TS_IN_QUERY { None } else { options.ts };
                self.add_identity_query(&mut uri, options, ts)?;
                (uri, authorization)
            }
        };
        let mut request = http::Request::new(body);
        *request.method_mut() = R::METHOD;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        headers.insert(http::header::AUTHORIZATION, authorization);
        Ok((route, request))
    }

    /// The `Authorization` header ruma writes for the token: `Bearer {token}`, or ruma's error
    /// for a token that cannot be a header value.
    fn authorization(&self) -> Result<http::HeaderValue> {
        if let Some(value) = &self.inner.authorization.0 {
            return Ok(value.clone());
        }
        Bearer::value(&self.inner.as_token).map_err(|e| {
            Error::IntoHttp(IntoHttpError::authentication(AddRequiredTokenError::from(e)))
        })
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
        // Shared by the attempts, not copied for each.
        let body = bytes::Bytes::from(body);
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
                let millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                span.record("duration_ms", millis);
            };
            loop {
                attempt += 1;
                let sent = match &self.inner.plain {
                    Some(plain) => plain.send(&parts, &body).await,
                    None => self.send_reqwest(&parts, &body).await,
                };
                let (status, headers, bytes) = match sent {
                    Ok(answer) => answer,
                    Err((err, transient)) => {
                        if attempt < policy.max_attempts && transient {
                            let delay = policy.backoff(attempt);
                            tracing::warn!(
                                attempt,
                                delay_ms = delay.as_millis() as u64,
                                error = %err,
                                "request failed, retrying"
                            );
                            self.count_retry("unavailable");
                            tokio::time::sleep(delay).await;
                            continue;
                        }
                        finish(None, attempt);
                        return Err(err);
                    }
                };
                let delay = match status.as_u16() {
                    429 => {
                        let parsed = ruma::api::error::Error::from_http_response(http_response(
                            status, &headers, &bytes,
                        ));
                        let asked = Error::from_ruma(parsed).retry_after();
                        Some(asked.map_or_else(
                            || policy.backoff(attempt),
                            |d| d.min(policy.max_retry_after),
                        ))
                    }
                    502..=504 => Some(policy.backoff(attempt)),
                    _ => None,
                };
                if let Some(delay) = delay
                    && attempt < policy.max_attempts
                {
                    tracing::warn!(
                        attempt,
                        status = status.as_u16(),
                        delay_ms = delay.as_millis() as u64,
                        "homeserver asked to retry"
                    );
                    let cause = if status == 429 { "rate_limited" } else { "unavailable" };
                    self.count_retry(cause);
                    tokio::time::sleep(delay).await;
                    continue;
                }
                finish(Some(status.as_u16()), attempt);
                let mut out = http::Response::new(Vec::from(bytes));
                *out.status_mut() = status;
                *out.headers_mut() = headers;
                return Ok(out);
            }
        }
        .instrument(span)
        .await
    }

    /// Sends one request through reqwest and reads its answer whole.
    async fn send_reqwest(
        &self,
        parts: &http::request::Parts,
        body: &bytes::Bytes,
    ) -> std::result::Result<(http::StatusCode, http::HeaderMap, bytes::Bytes), AttemptError> {
        let sent = self
            .inner
            .http
            .request(parts.method.clone(), parts.uri.to_string())
            .headers(parts.headers.clone())
            .body(body.clone())
            .send()
            .await;
        let mut response = sent.map_err(|err| {
            let transient = err.is_connect() || err.is_timeout();
            (Error::from(err), transient)
        })?;
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let bytes = response.bytes().await.map_err(|e| (Error::from(e), false))?;
        Ok((status, headers, bytes))
    }

    // --- Server and session -------------------------------------------------------------------

    /// Fetches the homeserver's supported versions (`GET /_matrix/client/versions`), always
    /// (the cached copy is [`Client::supported_versions`]).
    pub async fn versions(&self) -> Result<get_supported_versions::Response> {
        self.send(get_supported_versions::Request::new(), None).await
    }

    /// [`Client::refresh_supported_versions`] as a future of a named type: requests may start
    /// a fetch, which is a request itself.
    fn refresh_boxed(&self) -> futures_util::future::BoxFuture<'_, Result<SupportedVersions>> {
        Box::pin(self.refresh_supported_versions())
    }

    /// Fetches the supported versions and uses them to pick endpoint paths from now on.
    pub async fn refresh_supported_versions(&self) -> Result<SupportedVersions> {
        let response = self.versions().await?;
        let supported =
            SupportedVersions::from_parts(&response.versions, &response.unstable_features);
        let mut cached = self.inner.versions.write().unwrap_or_else(PoisonError::into_inner);
        if !supported.versions.is_empty() {
            cached.supported = supported.clone();
        }
        let now = Instant::now();
        cached.fetched = Some(now);
        cached.tried = Some(now);
        Ok(supported)
    }

    /// Logs a real user in (`POST /login`, sent with no token) on `homeserver` (this client's
    /// when `None`) and returns a client that acts as them with the new access token (see
    /// [`Client::for_user`]), with the homeserver's answer (keep its `access_token` and
    /// `device_id` to make the client again later). When the login went to another homeserver
    /// and its answer names a URL for it (`well_known`), the client uses that URL.
    ///
    /// ```no_run
    /// # async fn example(client: mxbridge::client::Client) -> mxbridge::client::Result<()> {
    /// use ruma::{
    ///     api::client::session::login::v3::{LoginInfo, Password, Request},
    ///     api::client::uiaa::{MatrixUserIdentifier, UserIdentifier},
    /// };
    ///
    /// let server = ruma::server_name!("example.org");
    /// let homeserver = mxbridge::client::Client::discover(server).await?;
    /// let alice = UserIdentifier::Matrix(MatrixUserIdentifier::new("alice".into()));
    /// let password = Password::new(alice, "…".into());
    /// let login = Request::new(LoginInfo::Password(password));
    /// let (alice, response) = client.login(homeserver.as_ref(), login).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The homeserver's refusal (`M_FORBIDDEN` for a wrong password).
    pub async fn login(
        &self,
        homeserver: Option<&Url>,
        request: login::v3::Request,
    ) -> Result<(Client, login::v3::Response)> {
        let via = match homeserver {
            Some(url) => {
                self.for_user(self.bot_user_id(), Secret::new(String::new()), Some(url))?
            }
            None => self.clone(),
        };
        let response = via.send_inner(request, &RequestOptions::default(), false).await?;
        // Our own homeserver is reached at the configured address, whatever URL it announces
        // to the world (often a public one in front of the internal one).
        let announced = homeserver.and(response.well_known.as_ref());
        let announced = announced.and_then(|w| Url::parse(&w.homeserver.base_url).ok());
        let url = announced.as_ref().or(homeserver);
        let token = Secret::new(response.access_token.clone());
        let client = self.for_user(&response.user_id, token, url)?;
        Ok((client, response))
    }

    /// Finds a server's client API URL from its name, as the server discovery spec says:
    /// `GET https://{server_name}/.well-known/matrix/client`, `m.homeserver.base_url`. `None`
    /// when the server has no such file (404); use `https://{server_name}` then.
    ///
    /// # Errors
    /// [`Error::Http`] when the server cannot be reached, [`Error::InvalidResponse`] for a file
    /// that names no valid URL.
    pub async fn discover(server_name: &ServerName) -> Result<Option<Url>> {
        let url = Url::parse(&format!("https://{server_name}"))
            .map_err(|e| Error::InvalidResponse(format!("bad server name: {e}")))?;
        Self::discover_at(&url).await
    }

    /// As [`Client::discover`], with the well-known file under `base` (for a server whose
    /// well-known is served elsewhere, or plain HTTP in tests).
    ///
    /// # Errors
    /// As [`Client::discover`].
    pub async fn discover_at(base: &Url) -> Result<Option<Url>> {
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("mxbridge/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let url = format!("{}/.well-known/matrix/client", base.as_str().trim_end_matches('/'));
        let response = http.get(url).send().await.map_err(Error::from)?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let status = response.status();
        let body = response.bytes().await.map_err(Error::from)?;
        if !status.is_success() {
            return Err(Error::InvalidResponse(format!("well-known answered {status}")));
        }
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| Error::InvalidResponse(format!("well-known is not JSON: {e}")))?;
        let base_url = json
            .get("m.homeserver")
            .and_then(|h| h.get("base_url"))
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| Error::InvalidResponse("well-known names no base_url".into()))?;
        let url = Url::parse(base_url)
            .map_err(|e| Error::InvalidResponse(format!("well-known base_url: {e}")))?;
        Ok(Some(url))
    }

    /// Asks whom the `as_token` belongs to (`GET /account/whoami`): the bot, when the
    /// homeserver knows the registration.
    pub async fn whoami(&self) -> Result<whoami::v3::Response> {
        self.send(whoami::v3::Request::new(), None).await
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
    /// 502 `M_BAD_STATUS`/`M_CONNECTION_FAILED` when the homeserver could not reach us.
    pub async fn ping(&self, transaction_id: &TransactionId) -> Result<Duration> {
        let mut request = request_ping::v1::Request::new(self.inner.appservice_id.clone());
        request.transaction_id = Some(transaction_id.to_owned());
        Ok(self.send(request, None).await?.duration)
    }

    // --- Media --------------------------------------------------------------------------------

    /// Downloads media: the authenticated `/_matrix/client/v1/media/download` endpoint, falling
    /// back to the legacy `/_matrix/media/v3/download` when the homeserver does not know the
    /// former (404 `M_UNRECOGNIZED`). Returns the bytes and their content type.
    ///
    /// # Errors
    /// [`Error::InvalidResponse`] for a malformed URI, before anything is sent.
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

/// A `PUT` with a transaction ID that [`Client::txn_put_request`] writes without ruma's
/// request builder: its path has three placeholders, its body is JSON.
trait TxnPut: OutgoingRequest<PathBuilder = VersionHistory> {
    /// Whether ruma's request has a `ts` query field, which it writes before the identity
    /// (else `ts` is added after the identity, as for any request).
    const TS_IN_QUERY: bool;
}

impl TxnPut for send_message_event::v3::Request {
    const TS_IN_QUERY: bool = true;
}

impl TxnPut for redact_event::v3::Request {
    const TS_IN_QUERY: bool = false;
}

/// The `Authorization` header for a token, made once; `None` when the token cannot be a header
/// value (every request then fails as ruma's would). Never printed: it holds the token.
struct Bearer(Option<http::HeaderValue>);

impl Bearer {
    fn new(token: &Secret) -> Self {
        Self(Self::value(token).ok())
    }

    /// `Bearer {token}`, as ruma writes it (not marked sensitive).
    fn value(
        token: &Secret,
    ) -> std::result::Result<http::HeaderValue, http::header::InvalidHeaderValue> {
        let token = token.expose();
        let mut value = String::with_capacity("Bearer ".len() + token.len());
        value.push_str("Bearer ");
        value.push_str(token);
        http::HeaderValue::try_from(value)
    }
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The bytes ruma percent-encodes in a path segment: the URL standard's path percent-encode
/// set, and `/` and `\` (a value is one segment, never several).
const PATH_SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'/')
    .add(b'\\');

/// Appends form-encoded pairs to a URL's query, as `application/x-www-form-urlencoded`
/// writes them (ruma's query strings and `append_query` alike).
struct QueryWriter {
    url: String,
    /// Whether the query has a pair already (the next one follows `&`, not `?`).
    started: bool,
}

impl QueryWriter {
    /// Appends `key=value`; `key` is a name that encodes as itself.
    fn pair(&mut self, key: &str, value: &str) {
        debug_assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b"._".contains(&b)));
        self.url.push(if self.started { '&' } else { '?' });
        self.started = true;
        self.url.push_str(key);
        self.url.push('=');
        self.url.extend(form_urlencoded::byte_serialize(value.as_bytes()));
    }
}

/// Reads the homeserver's answer to `R`: a Matrix error for a status of 400 or more, else
/// `R`'s response.
fn parse_response<R: OutgoingRequest>(
    response: http::Response<Vec<u8>>,
) -> Result<R::IncomingResponse> {
    let (parts, body) = response.into_parts();
    let response = http::Response::from_parts(parts, body.as_slice());
    if response.status().as_u16() >= 400 {
        return Err(Error::from_ruma(ruma::api::error::Error::from_http_response(response)));
    }
    R::IncomingResponse::try_from_http_response(response)
        .map_err(|e| Error::InvalidResponse(e.to_string()))
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

#[cfg(test)]
mod tests;
