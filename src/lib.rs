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
//! - [`client`]: the Client-Server transport: any ruma request, as the bot or any ghost, retried.
//! - [`intent`]: one user's actions (joins, sends, profile, media), converging cache-first.
//! - `testing` (feature `testing`): a mock homeserver for bridge authors' tests.
//! - [`secret`]: tokens that never print.
//!
//! `ARCHITECTURE.md` in the repository tells how data flows and who owns what.

pub mod appservice;
pub mod bridge;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
mod context;
mod dispatch;
pub mod error;
pub mod event;
pub mod ghost;
mod intake;
pub mod intent;
pub mod metrics;
pub mod portal;
pub mod registration;
pub mod remote;
mod route;
pub mod secret;
pub mod server;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod util;

pub use appservice::AppService;
pub use bridge::{Bridge, BridgeError, BridgeResult, Delivery};
pub use commands::{CommandCall, CommandSpec};
pub use config::Config;
pub use context::Context;
pub use error::{Error, Result};
pub use event::{
    Event, EventData, MatrixEdit, MatrixMembership, MatrixMessage, MatrixPresence, MatrixReaction,
    MatrixReceipt, MatrixRedaction, MatrixRoomMessage, MatrixTyping, Sender, Target,
};
pub use registration::Registration;
pub use remote::{
    GhostProfile, Portal, PortalInfo, PortalKey, RemoteChatId, RemoteLoginId, RemoteMessage,
    RemoteMessageId, RemoteMessageRef, RemotePartId, RemoteTxnId, RemoteUserId,
};
pub use secret::Secret;
pub use server::{BridgeState, Health};
pub use store::Store;

/// Installs rustls' *ring* crypto provider for the process, once. The framework's HTTP client
/// calls it; call it yourself before building another `reqwest` client in a bridge.
/// A provider the application installed earlier is kept.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An error means a provider is installed already, which is what we want.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
