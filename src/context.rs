//! [`Context`]: the handle a bridge keeps to reach the framework's parts.

use std::sync::Arc;

use ruma::{OwnedServerName, OwnedUserId};

use crate::{
    config::{AppserviceConfig, HomeserverConfig},
    registration::Registration,
    store::Store,
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
    /// Where the homeserver is.
    homeserver: HomeserverConfig,
    /// The appservice section of the config.
    appservice: AppserviceConfig,
    /// The bot's user ID.
    bot_user_id: OwnedUserId,
}

impl Context {
    /// Assembles a context.
    pub fn new(
        store: Store,
        registration: Registration,
        homeserver: HomeserverConfig,
        appservice: AppserviceConfig,
    ) -> Self {
        let bot_user_id = ruma::UserId::parse_with_server_name(
            registration.sender_localpart(),
            &homeserver.domain,
        )
        .expect("the registration validated sender_localpart");
        Self {
            inner: Arc::new(ContextInner {
                store,
                registration,
                homeserver,
                appservice,
                bot_user_id,
            }),
        }
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
        &self.inner.homeserver
    }

    /// The appservice section of the config.
    pub fn appservice(&self) -> &AppserviceConfig {
        &self.inner.appservice
    }

    /// The server name of the homeserver.
    pub fn server_name(&self) -> &OwnedServerName {
        &self.inner.homeserver.domain
    }

    /// The bot's user ID.
    pub fn bot_user_id(&self) -> &OwnedUserId {
        &self.inner.bot_user_id
    }
}
