//! [`Context`]: the handle a bridge keeps to reach the framework's parts.

use std::sync::Arc;

use ruma::{OwnedServerName, OwnedUserId, RoomId};

use crate::{
    Config,
    client::{self, Client},
    config::{AppserviceConfig, HomeserverConfig, PermissionLevel},
    intent::Intent,
    registration::Registration,
    store::{Membership, Store, StoreError},
};

/// The framework's parts a bridge uses: the store, the registration, the configuration.
///
/// Cheap to clone (one `Arc`); a bridge keeps one from [`crate::Bridge::create`].
#[derive(Clone, Debug)]
pub struct Context {
    inner: Arc<ContextInner>,
}

#[derive(Debug)]
struct ContextInner {
    /// The SQL store shared by the inbox, the state cache and the bridge.
    store: Store,
    /// The registration, with compiled namespaces.
    registration: Registration,
    /// The framework's sections of the config (the bridge's own section stays with the bridge).
    config: Config<()>,
    /// The Client-Server API client (one connection pool for the bot and every ghost).
    client: Client,
    /// The metrics registry, shared by the server, the dispatcher and the client.
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Logins in progress and the bridge's login methods (the `accounts` module's), and the
    /// remote → Matrix pipeline's wake-up and waiters (the `pipeline` module's).
    logins: Part,
    remote_queue: Part,
    /// What the double-puppeting module found of its secrets.
    puppets: Part,
    /// The bridge device, once started (the `crypto` module's).
    crypto: Part,
}

/// Shared state that a module of the framework keeps in the context, made on first use. Its
/// type is that module's own: the context names no module that works with it.
#[derive(Debug, Default)]
pub(crate) struct Part(std::sync::OnceLock<Box<dyn PartState>>);

/// What a [`Part`] holds.
pub(crate) trait PartState: std::any::Any + Send + Sync + std::fmt::Debug {}

impl<T: std::any::Any + Send + Sync + std::fmt::Debug> PartState for T {}

impl Part {
    /// The state, made with `T::default()` on first use.
    ///
    /// # Panics
    /// When the part was made with another type (one part holds one module's state).
    pub(crate) fn get<T: PartState + Default>(&self) -> &T {
        let state: &dyn std::any::Any = self.0.get_or_init(|| Box::new(T::default())).as_ref();
        state.downcast_ref().expect("a context part holds one module's state")
    }
}

impl Context {
    /// Assembles a context, with a client for the configured homeserver.
    ///
    /// # Errors
    /// When the HTTP client cannot be built or the bot's user ID is invalid.
    pub fn new(
        store: Store,
        registration: Registration,
        config: Config<()>,
    ) -> Result<Self, client::Error> {
        let client = Client::new(
            config.homeserver.address.clone(),
            &config.homeserver.domain,
            registration.clone(),
        )?;
        Ok(Self::with_client(store, registration, config, client))
    }

    /// Assembles a context around a client made elsewhere (a mock homeserver's, in tests).
    pub fn with_client(
        store: Store,
        registration: Registration,
        config: Config<()>,
        client: Client,
    ) -> Self {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        client.attach_metrics(metrics.clone());
        let (remote_queue, logins, puppets) = (Part::default(), Part::default(), Part::default());
        let inner = ContextInner {
            store,
            registration,
            config,
            client,
            metrics,
            remote_queue,
            logins,
            puppets,
            crypto: Part::default(),
        };
        Self { inner: Arc::new(inner) }
    }

    /// The remote → Matrix pipeline's part.
    pub(crate) fn remote_queue_part(&self) -> &Part {
        &self.inner.remote_queue
    }

    /// The logins' part.
    pub(crate) fn logins_part(&self) -> &Part {
        &self.inner.logins
    }

    /// The double puppets' part.
    pub(crate) fn puppets_part(&self) -> &Part {
        &self.inner.puppets
    }

    /// The encryption part.
    #[cfg_attr(not(feature = "encryption"), allow(dead_code))]
    pub(crate) fn crypto_part(&self) -> &Part {
        &self.inner.crypto
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    /// The Client-Server API client.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The intent of a user in our namespace (a ghost) or of the bot. Costs nothing.
    ///
    /// # Errors
    /// `client::Error::NotInNamespace` for users the appservice may not act as.
    pub fn intent(&self, user_id: &ruma::UserId) -> Result<Intent, client::Error> {
        Intent::new(self.client().clone(), self.store().clone(), user_id.to_owned())
            .map(|intent| self.equip(intent))
    }

    /// The intent of a real user (outside the namespace, such as a double puppet), acting with
    /// their own `access_token` on `homeserver` (ours when `None`), with the same actions as a
    /// ghost's (see [`Client::for_user`]). No `?user_id=` is sent, and no registration.
    ///
    /// ```no_run
    /// # async fn example(ctx: mxbridge::Context, room_id: &ruma::RoomId)
    /// # -> Result<(), Box<dyn std::error::Error>> {
    /// use mxbridge::Secret;
    ///
    /// let alice = ruma::user_id!("@alice:example.org");
    /// let intent = ctx.user(alice, Secret::new("syt_…"), None)?;
    /// intent.send_text(room_id, "sent from my phone").await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn user(
        &self,
        user_id: &ruma::UserId,
        access_token: crate::Secret,
        homeserver: Option<&url::Url>,
    ) -> Result<Intent, client::Error> {
        let client = self.client().for_user(user_id, access_token, homeserver)?;
        Intent::new(client, self.store().clone(), user_id.to_owned()).map(|i| self.equip(i))
    }

    /// The bot's intent.
    pub fn bot(&self) -> Intent {
        self.equip(Intent::bot(self.client().clone(), self.store().clone()))
    }

    /// Gives an intent what the context adds to every intent it makes: the bridge device, which
    /// encrypts its sends into encrypted rooms (with the `encryption` feature).
    pub(crate) fn equip(&self, intent: Intent) -> Intent {
        #[cfg(feature = "encryption")]
        let intent = intent.with_device_of(self);
        intent
    }

    /// The SQL store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The registration.
    pub fn registration(&self) -> &Registration {
        &self.inner.registration
    }

    /// The homeserver section of the config.
    pub fn homeserver(&self) -> &HomeserverConfig {
        &self.inner.config.homeserver
    }

    /// The framework's sections of the config.
    pub fn config(&self) -> &Config<()> {
        &self.inner.config
    }

    /// What a user may do with the bridge (from `permissions`).
    pub fn permission_level(&self, user_id: &ruma::UserId) -> PermissionLevel {
        self.inner.config.permission_level(user_id)
    }

    /// The appservice section of the config.
    pub fn appservice(&self) -> &AppserviceConfig {
        &self.inner.config.appservice
    }

    /// The server name of the homeserver.
    pub fn server_name(&self) -> &OwnedServerName {
        &self.inner.config.homeserver.domain
    }

    /// The bot's user ID.
    pub fn bot_user_id(&self) -> &ruma::UserId {
        self.inner.client.bot_user_id()
    }

    /// This bridge's ghosts that the state cache knows as joined to a room (the bot is none of
    /// them). Fails only when the store does.
    pub async fn ghosts_in(&self, room_id: &RoomId) -> Result<Vec<OwnedUserId>, StoreError> {
        let joined = self.store().members_with(room_id, Membership::Join).await?;
        let registration = self.registration();
        Ok(joined
            .into_iter()
            .map(|m| m.user_id)
            .filter(|u| u != self.bot_user_id() && registration.is_user_in_namespace(u))
            .collect())
    }
}
