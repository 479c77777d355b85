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
//! - [`format`](mod@format): formatted text both ways (Matrix HTML rendered for a network;
//!   a network's Markdown or entities to Matrix HTML with pills), and the sanitizer.
//! - [`intent`]: one user's actions (bot or ghost): joins, sends, profile, media; cache-first.
//! - [`client`]: the Client-Server transport: any ruma request, as the bot or a ghost, retried.
//! - [`appservice`]: [`AppService`], which assembles everything and runs it; [`cli`]: `run`,
//!   `generate-registration`, `example-config`, `check-config`; [`config`] and
//!   [`registration`]: the two YAML files.
//! - [`metrics`], [`secret`] (tokens that never print), [`error`], and `testing` (feature
//!   `testing`): a mock homeserver for bridge authors' tests.
//!
//! `ARCHITECTURE.md` in the repository tells how data flows and who owns what.

pub mod accounts;
pub mod appservice;
pub mod bridge;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
mod context;
#[cfg(feature = "encryption")]
pub mod crypto;
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
mod pipeline;
pub mod portal;
mod puppet;
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
pub use appservice::{Error, Result};
pub use bridge::{Bridge, BridgeError, BridgeResult, Delivery};
pub use commands::{CommandCall, CommandSpec};
pub use config::Config;
pub use context::Context;
pub use event::{
    ChatInfoChange, Event, EventData, MatrixChatInfo, MatrixEdit, MatrixMembership, MatrixMessage,
    MatrixPresence, MatrixReaction, MatrixReceipt, MatrixRedaction, MatrixRoomMessage,
    MatrixTyping, MembershipChange, Sender, Target,
};
pub use health::{BridgeState, Health, TaskState};
pub use pipeline::Queued;
pub use registration::Registration;
pub use remote::{
    ChatMember, ChatPowerLevels, GhostProfile, NewChat, NewGroup, Portal, PortalInfo, PortalKey,
    RemoteChatId, RemoteEvent, RemoteLoginId, RemoteMembership, RemoteMessageId, RemoteMessageRef,
    RemotePart, RemotePartId, RemoteSender, RemoteTxnId, RemoteUserId, ResolvedIdentifier,
};
pub use secret::Secret;
pub use store::Store;
pub use supervise::{Stop, Task};

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
