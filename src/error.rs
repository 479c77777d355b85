//! The crate's top-level error, composed of each layer's.

use crate::{config::ConfigError, registration::RegistrationError, store::StoreError};

/// Everything that can stop a bridge from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file is missing or wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The registration file is missing or wrong, or does not match the config.
    #[error(transparent)]
    Registration(#[from] RegistrationError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
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
