//! Users and their logins to the remote network: login flows as steps, driven the same way by
//! the bot's built-in commands and by the provisioning API; per-login connection states,
//! reported to the user and pushed to a status endpoint; and which login a Matrix message goes
//! out through (the sender's own, or a portal's relay).
//!
//! This module is the vocabulary a bridge writes logins in; the `accounts` module runs them.
//!
//! A bridge declares its flows ([`crate::Bridge::login_flows`]) and starts a
//! [`LoginProcess`] for one ([`crate::Bridge::create_login`]); the framework asks for the
//! fields, shows codes, stores the completed login, and calls
//! [`crate::Bridge::connect_login`] for it, and for every stored login at start.

mod types;

pub use crate::config::{LoginsConfig, ProvisioningConfig, RelayConfig};

pub use types::{
    AnyLoginProcess, FieldKind, LoginDisplay, LoginField, LoginFlow, LoginProcess, LoginState,
    LoginStep, LoginValues, NewLogin, SendVia, UserLogin,
};
