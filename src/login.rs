//! Users and their logins to the remote network: login flows as steps, driven the same way by
//! the bot's built-in commands and by the provisioning API; per-login connection states,
//! reported to the user and pushed to a status endpoint; and which login a Matrix message goes
//! out through (the sender's own, or a portal's relay).
//!
//! A bridge declares its flows ([`crate::Bridge::login_flows`]) and starts a
//! [`LoginProcess`] for one ([`crate::Bridge::create_login`]); the framework asks for the
//! fields, shows codes, stores the completed login, and calls
//! [`crate::Bridge::connect_login`] for it, and for every stored login at start.

pub(crate) mod commands;
mod config;
mod process;
mod state;
mod types;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

pub use config::{LoginsConfig, ProvisioningConfig, RelayConfig};
pub(crate) use process::Logins;
pub use process::{LoginError, LoginProgress, LoginStatus};

pub use types::{
    AnyLoginProcess, FieldKind, LoginDisplay, LoginField, LoginFlow, LoginProcess, LoginState,
    LoginStep, LoginValues, NewLogin, SendVia, UserLogin,
};
