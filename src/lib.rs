//! mxbridge: a framework for writing Matrix application-service bridges.
//!
//! # Layout
//! - [`registration`]: the YAML file the homeserver reads; namespaces compiled once.
//! - [`config`]: the bridge's configuration file.
//! - [`store`]: SQLite or PostgreSQL: the durable inbox, the state cache, the bridge's mappings.
//! - [`secret`]: tokens that never print.
//!
//! Start at `ARCHITECTURE.md` for how data flows.

pub mod client;
pub mod config;
pub mod intent;
pub mod registration;
pub mod secret;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod util;

pub use config::Config;
pub use registration::Registration;
pub use secret::Secret;
pub use store::Store;
