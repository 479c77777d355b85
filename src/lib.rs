//! mxbridge: a framework for writing Matrix application-service bridges.
//!
//! A bridge implements [`Bridge`]; the framework provides the homeserver-facing HTTP server, a
//! durable inbox that never loses an acknowledged event, the SQL store, and the command line.
//!
//! # Layout
//! In the order an event travels, Matrix to remote and back:
//! - [`server`]: the homeserver → appservice HTTP API (transactions, queries, ping,
//!   third-party, health).
//! - `intake`: a transaction's body parsed, committed with its neighbours', handed over.
//! - [`store`]: SQLite or PostgreSQL: the inbox, the state cache, the bridge's mappings.
//! - `dispatch`: hands stored events to the bridge, in order per room, with retries, and
//!   records what the handlers delivered.
//! - [`event`]: the events and their typed views ([`MatrixMessage`], [`MatrixEdit`], ...).
//! - `route` and [`commands`]: which handler hears of an event; bot commands.
//! - [`bridge`]: the [`Bridge`] trait and [`Delivery`], what a bridge implements.
//! - [`login`] and `relay`: users' logins (flows driven by commands and the provisioning API,
//!   states) and which login a Matrix event goes out through.
//! - [`remote`]: the remote side's names ([`PortalKey`], [`RemoteMessageId`], ...).
//! - [`portal`] and [`ghost`]: remote → Matrix (portals, messages, ghosts), on [`Context`].
//! - [`format`](mod@format): HTML from the remote side, sanitized before it enters a room.
//! - [`intent`]: one user's actions (bot or ghost), cache-first.
//! - [`client`]: the Client-Server API transport, with retries.
//! - [`appservice`]: [`AppService`], which assembles everything and runs it; [`cli`]: `run`,
//!   `generate-registration`, `example-config`, `check-config`; [`config`] and
//!   [`registration`]: the two YAML files.
//! - [`metrics`], [`secret`] (tokens that never print), [`error`], and `testing` (feature
//!   `testing`): a mock homeserver for bridge authors' tests.
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
pub mod format;
pub mod ghost;
pub mod health;
mod intake;
pub mod intent;
pub mod login;
pub mod metrics;
pub mod portal;
pub mod registration;
mod relay;
pub mod remote;
mod route;
pub mod secret;
pub mod server;
pub mod store;
mod supervise;
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
pub use health::{BridgeState, Health, TaskState};
pub use registration::Registration;
pub use remote::{
    GhostProfile, Portal, PortalInfo, PortalKey, RemoteChatId, RemoteLoginId, RemoteMessage,
    RemoteMessageId, RemoteMessageRef, RemotePartId, RemoteTxnId, RemoteUserId,
};
pub use secret::Secret;
pub use store::Store;
pub use supervise::{Stop, Task};

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
