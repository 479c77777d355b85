//! The running side of users' logins: login processes in progress (driven alike by the bot's
//! built-in commands and by the provisioning API), completed logins connected at every start,
//! their states stored, told to the user and pushed to a status endpoint. A bridge writes its
//! logins with the types of [`crate::login`].

pub(crate) mod commands;
mod process;
mod state;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

pub(crate) use crate::login::{
    AnyLoginProcess, FieldKind, LoginDisplay, LoginField, LoginFlow, LoginState, LoginStep,
    LoginValues, NewLogin, UserLogin,
};
pub(crate) use process::LoginHooks;
pub use process::{LoginError, LoginProgress, LoginStatus};
pub(crate) use state::login_name;
