//! [`AppService`]: assembles config, registration, store and bridge, and runs them.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch};

use crate::{
    Config,
    bridge::Bridge,
    context::Context,
    dispatch,
    health::{BridgeState, Health},
    registration::{Registration, RegistrationError},
    server::{self, Limits, ServerState},
    store::Store,
    supervise::Supervisor,
};

/// A bridge ready to run: the store is connected and migrated, the bridge is created.
#[derive(Debug)]
pub struct AppService<B: Bridge> {
    bridge: Arc<B>,
    ctx: Context,
    health: Arc<Health>,
}

impl<B: Bridge> AppService<B> {
    /// Connects the store (applying migrations), checks that the registration matches the
    /// config, and creates the bridge.
    ///
    /// # Errors
    /// When the database cannot be reached, the registration does not match, or the bridge's
    /// `create` fails.
    pub async fn new(config: Config<B::Config>, registration: Registration) -> Result<Self> {
        check_registration_matches(&config, &registration)?;
        let store = Store::connect(&config.database).await?;
        let Config {
            homeserver,
            appservice,
            database,
            inbox,
            logging,
            commands,
            metrics,
            permissions,
            logins,
            relay,
            provisioning,
            double_puppet,
            encryption,
            bridge,
        } = config;
        let config = Config {
            homeserver,
            appservice,
            database,
            inbox,
            logging,
            commands,
            metrics,
            permissions,
            logins,
            relay,
            provisioning,
            double_puppet,
            encryption,
            bridge: (),
        };
        let ctx = Context::new(store, registration, config)?;
        let bridge =
            B::create(bridge, ctx.clone()).await.map_err(|e| Error::Bridge(e.to_string()))?;
        let bridge = Arc::new(bridge);
        ctx.attach_bridge(&bridge);
        Ok(Self { bridge, ctx, health: Arc::new(Health::default()) })
    }

    /// The framework handle the bridge got.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// The bridge.
    pub fn bridge(&self) -> &Arc<B> {
        &self.bridge
    }

    /// Liveness and readiness facts.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Binds the configured address and runs until `shutdown` resolves.
    ///
    /// # Errors
    /// When the address cannot be bound, or as [`AppService::run`].
    pub async fn run_configured(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let addr = SocketAddr::new(self.ctx.appservice().bind_address, self.ctx.appservice().port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Listen { addr: addr.to_string(), source })?;
        self.run(listener, shutdown).await
    }

    /// Serves the homeserver on `listener`, hands stored and new events to the bridge, and
    /// returns after `shutdown` resolved and the graceful stop finished:
    /// the server stops accepting and finishes open requests, running handlers get
    /// `inbox.shutdown_grace_secs`, and what is unfinished stays in the inbox for the next start.
    ///
    /// # Errors
    /// When the bridge's `start` fails or the listener fails.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let Self { bridge, ctx, health } = self;
        let config = ctx.config().clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let (inbox, dispatcher) =
            dispatch::inbox(bridge.clone(), ctx.clone(), config.inbox.clone(), stop_rx.clone());
        // The bridge device's ID is known before the first transaction, so none of its input
        // is missed while the device is starting.
        #[cfg(feature = "encryption")]
        crate::crypto::prepare(&ctx).await.map_err(Error::Store)?;
        let state = Arc::new(ServerState::new(bridge.clone(), ctx.clone(), inbox, health.clone()));
        let limits = Limits {
            max_body_bytes: config.appservice.max_body_bytes,
            request_timeout: Duration::from_secs(config.appservice.request_timeout_secs),
        };
        let app = server::router(state, limits);
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let mut server_stop = stop_rx.clone();
        let server = tokio::spawn(server::serve(listener, app, async move {
            let _ = server_stop.wait_for(|s| *s).await;
        }));
        tracing::info!(%addr, bridge = B::NAME, "listening for the homeserver");
        let metrics_server = match config.metrics.bind_address.filter(|_| config.metrics.enabled) {
            Some(metrics_addr) => {
                let listener = TcpListener::bind(metrics_addr)
                    .await
                    .map_err(|source| Error::Listen { addr: metrics_addr.to_string(), source })?;
                let metrics_ctx = ctx.clone();
                let app = axum::Router::new().route(
                    "/metrics",
                    axum::routing::get(move || {
                        let ctx = metrics_ctx.clone();
                        async move { server::metrics_response(&ctx).await }
                    }),
                );
                let mut stop = stop_rx.clone();
                tracing::info!(addr = %metrics_addr, "serving metrics");
                let app = server::App { router: app, header_timeout: Duration::from_secs(30) };
                Some(tokio::spawn(server::serve(listener, app, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })))
            }
            None => None,
        };

        if let Err(e) = bridge.start().await {
            let _ = stop_tx.send(true);
            let _ = server.await;
            return Err(Error::Bridge(e.to_string()));
        }
        let grace = Duration::from_secs(config.inbox.shutdown_grace_secs);
        let supervisor = Supervisor::start(bridge.tasks(), health.clone());
        ctx.connect_stored_logins();
        let pipeline =
            tokio::spawn(crate::pipeline::run(ctx.clone(), bridge.clone(), stop_rx.clone()));
        let dispatcher = tokio::spawn(dispatcher.run(grace));
        let pruner =
            tokio::spawn(prune_loop(ctx.store().clone(), config.inbox.dedup_retention_hours));
        health.set_running(true);
        let pinger = tokio::spawn(startup_ping(ctx.clone(), health.clone()));
        let versions = tokio::spawn(versions_loop(ctx.clone()));
        let puppet_check = tokio::spawn(crate::puppet::check_secrets(ctx.clone()));
        #[cfg(feature = "encryption")]
        let crypto = crate::crypto::start(&ctx);
        tracing::info!("bridge running");

        shutdown.await;
        tracing::info!("shutting down");
        health.set_state(BridgeState::Stopping);
        health.set_running(false);
        pinger.abort();
        versions.abort();
        puppet_check.abort();
        #[cfg(feature = "encryption")]
        if let Some(crypto) = crypto {
            crypto.abort();
        }
        let _ = stop_tx.send(true);
        let served = server.await;
        if let Some(m) = metrics_server {
            let _ = m.await;
        }
        let _ = dispatcher.await;
        pruner.abort();
        // The remote → Matrix pipeline takes no new events once stopped; what is left stays
        // queued in the database for the next start.
        let _ = pipeline.await;
        supervisor.shutdown(grace).await;
        bridge.stop().await;
        ctx.store().close().await;
        tracing::info!("stopped");
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(Error::Listen { addr, source }),
            Err(e) => Err(Error::Listen { addr, source: std::io::Error::other(e.to_string()) }),
        }
    }
}

/// Asks the homeserver to ping us until it works, with growing pauses (1 s to 60 s), and says
/// what to check when it does not: this proves both directions (our as_token, its hs_token and
/// the URL it has for us).
async fn startup_ping(ctx: Context, health: Arc<Health>) {
    let mut delay = Duration::from_secs(1);
    loop {
        let txn = crate::client::new_txn_id();
        match ctx.client().ping(&txn).await {
            Ok(took) => {
                tracing::info!(ms = took.as_millis(), "the homeserver reached the appservice");
                health.set_homeserver_ok(true);
                health.set_state(BridgeState::Running);
                return;
            }
            Err(e) => {
                let advice = ping_advice(&ctx, &e);
                tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "{advice}");
                health.set_homeserver_ok(false);
                health.set_state(BridgeState::HomeserverUnreachable(advice));
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}

/// Fetches the homeserver's supported versions at startup (until it works, every minute), then
/// every six hours, so that requests pick the newest paths the homeserver has. Best effort: a
/// failure is logged, and requests go on with what is cached.
async fn versions_loop(ctx: Context) {
    loop {
        let pause = match ctx.client().refresh_supported_versions().await {
            Ok(supported) => {
                let newest = supported.versions.iter().max().map(|v| format!("{v:?}"));
                tracing::info!(newest = newest.as_deref(), "fetched the homeserver's versions");
                Duration::from_secs(6 * 3600)
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not fetch the homeserver's versions");
                Duration::from_secs(60)
            }
        };
        tokio::time::sleep(pause).await;
    }
}

/// What a failed startup ping most likely means, in words an operator can act on.
fn ping_advice(ctx: &Context, e: &crate::client::Error) -> String {
    let hs = &ctx.homeserver().address;
    let unknown_token = matches!(e.kind(), Some(ruma::api::error::ErrorKind::UnknownToken(_)));
    match (e.status().map(|s| s.as_u16()), unknown_token) {
        (_, true) | (Some(401), _) => format!(
            "the homeserver at {hs} does not know our as_token: add the registration file to its \
             app_service_config_files and restart it"
        ),
        (Some(403), _) => format!(
            "the homeserver at {hs} refused the ping: is appservice.id ({}) the registration's id?",
            ctx.appservice().id
        ),
        (Some(502 | 504), _) => format!(
            "the homeserver cannot reach the appservice at {}: check appservice.address and \
             that the homeserver can connect to it",
            ctx.appservice().address
        ),
        (Some(404), _) => format!("the homeserver at {hs} has no appservice ping (too old?)"),
        (None, _) => format!("the homeserver at {hs} does not answer: check homeserver.address"),
        _ => format!("the homeserver at {hs} answered the ping with an error"),
    }
}

/// How long after start the dedup records are first pruned: not during startup, where its
/// queries would take connections the first transactions are waiting for.
const FIRST_PRUNE_AFTER: Duration = Duration::from_secs(60);

/// Forgets old dedup records once an hour, the first time a minute after start.
async fn prune_loop(store: Store, retention_hours: u64) {
    let max_age = i64::try_from(retention_hours.saturating_mul(3_600_000)).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + FIRST_PRUNE_AFTER,
        Duration::from_secs(3600),
    );
    loop {
        tick.tick().await;
        match store.prune_dedup(max_age).await {
            Ok(n) if n > 0 => tracing::debug!(rows = n, "pruned dedup records"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning dedup records failed"),
        }
    }
}

/// The registration the homeserver loaded must be the one this config describes.
pub(crate) fn check_registration_matches<T>(
    config: &Config<T>,
    registration: &Registration,
) -> Result<(), RegistrationError> {
    let file = registration.file();
    let mismatch = |key: &'static str, reg: &str, cfg: &str| RegistrationError::Invalid {
        key,
        message: format!(
            "is {reg:?} but the config says {cfg:?}; run generate-registration again and restart \
             the homeserver"
        ),
    };
    if file.id != config.appservice.id {
        return Err(mismatch("id", &file.id, &config.appservice.id));
    }
    if file.sender_localpart != config.appservice.bot.localpart {
        return Err(mismatch(
            "sender_localpart",
            &file.sender_localpart,
            &config.appservice.bot.localpart,
        ));
    }
    let pushes = file.receive_ephemeral || file.push_ephemeral_unstable;
    if config.encryption.allow && !(file.msc4190 && file.msc3202 && pushes) {
        return Err(RegistrationError::Invalid {
            key: "io.element.msc4190",
            message: "encryption.allow needs io.element.msc4190, org.matrix.msc3202 and the \
                      ephemeral pushes; run generate-registration again and restart the \
                      homeserver"
                .into(),
        });
    }
    Ok(())
}

/// Everything that can stop a bridge from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file is missing or wrong.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The registration file is missing or wrong, or does not match the config.
    #[error(transparent)]
    Registration(#[from] crate::registration::RegistrationError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The Client-Server API client failed.
    #[error(transparent)]
    Client(#[from] crate::client::Error),
    /// The listener could not be bound or failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The bridge failed to start.
    #[error("the bridge failed to start: {0}")]
    Bridge(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::*;

    #[tokio::test]
    async fn ping_advice_has_no_stray_spaces() {
        let config = Config::from_yaml(
            "homeserver: {address: 'http://127.0.0.1:1', domain: localhost}\n\
             appservice: {id: test, address: 'http://127.0.0.1:2', port: 2, \
             bot: {localpart: _test_bot}, ghost_localpart_template: '_test_{id}'}\n",
        )
        .unwrap();
        let store = Store::connect_url("sqlite::memory:").await.unwrap();
        let ctx = Context::new(store, crate::testing::test_registration(), config).unwrap();
        for status in [401, 403, 404, 500, 502, 504] {
            let e = crate::client::Error::Api {
                status: StatusCode::from_u16(status).unwrap(),
                errcode: "M_UNKNOWN".into(),
                message: String::new(),
                kind: None,
            };
            let advice = ping_advice(&ctx, &e);
            assert!(!advice.contains("  ") && !advice.ends_with(' '), "{status}: {advice:?}");
        }
    }
}
