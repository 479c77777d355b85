//! mxbridge: a framework for writing Matrix application-service bridges.
//!
//! A bridge implements [`Bridge`]; the framework provides the homeserver-facing HTTP server, a
//! durable inbox that never loses an acknowledged event, the SQL store, and the command line.
//!
//! # Layout
//! - [`bridge`]: the [`Bridge`] trait and the events it receives.
//! - [`appservice`]: [`AppService`], which assembles everything and runs it.
//! - [`server`]: the homeserver → appservice HTTP API (transactions, queries, ping, third-party).
//! - `dispatch`: hands stored events to the bridge, in order per room, with retries.
//! - [`store`]: SQLite or PostgreSQL: the inbox, the state cache, the bridge's mappings.
//! - [`registration`] and [`config`]: the two YAML files.
//! - [`cli`]: `run`, `generate-registration`, `example-config`, `check-config`.
//! - [`client`]: the Client-Server API client (as the bot or any ghost), with retries.
//! - [`format`](mod@format): HTML from the remote side, sanitized before it enters a room.
//! - [`intent`]: one user's actions (`ensure_registered`, `ensure_joined`, sends), cache-first.
//! - `testing` (feature `testing`): a mock homeserver for bridge authors' tests.
//! - [`secret`]: tokens that never print.
//!
//! `ARCHITECTURE.md` in the repository tells how data flows and who owns what.

pub mod appservice;
pub mod bridge;
pub mod cli;
pub mod client;
pub mod config;
mod context;
mod dispatch;
pub mod error;
pub mod format;
pub mod intent;
pub mod matrix;
pub mod metrics;
pub mod registration;
pub mod remote;
pub mod secret;
pub mod server;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod util;

pub use appservice::AppService;
pub use bridge::{Bridge, BridgeError, BridgeResult, Event, EventData};
pub use config::Config;
pub use context::Context;
pub use dispatch::{MAX_IN_FLIGHT, MAX_QUEUED};
pub use error::{Error, Result};
pub use matrix::{
    CommandCall, CommandSpec, MatrixEdit, MatrixMembership, MatrixMessage, MatrixPresence,
    MatrixReaction, MatrixReceipt, MatrixRedaction, MatrixTyping,
};
pub use registration::Registration;
pub use remote::{
    GhostProfile, Portal, PortalInfo, RemoteChatId, RemoteMessage, RemoteMessageId, RemoteUserId,
};
pub use secret::Secret;
pub use server::{BridgeState, Health};
pub use store::Store;

/// Installs rustls' default crypto provider (*aws-lc-rs*, which has the post-quantum key
/// exchanges) for the process, once. The framework's HTTP client calls it; call it yourself
/// before building another `reqwest` client in a bridge. A provider the application installed
/// earlier is kept.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An error means a provider is installed already, which is what we want.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_crypto_provider_installs_once_and_offers_post_quantum_key_exchange() {
        super::install_crypto_provider();
        super::install_crypto_provider();
        let provider = rustls::crypto::CryptoProvider::get_default().expect("installed");
        let groups: Vec<_> = provider.kx_groups.iter().map(|g| g.name()).collect();
        assert!(groups.contains(&rustls::NamedGroup::X25519MLKEM768), "{groups:?}");
        // TLS configs build on it without naming a provider (as reqwest's do).
        let _ = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
    }
}
