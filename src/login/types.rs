//! The vocabulary of logins: flows, steps, the process a bridge implements, stored logins and
//! their states. Depends on ruma, serde and the remote names only.

use std::{collections::BTreeMap, fmt, future::Future, pin::Pin};

use ruma::OwnedUserId;
use serde::{Deserialize, Serialize};

use crate::{error::BridgeResult, remote::RemoteLoginId};

/// A way to log in that the bridge offers (by password, by QR code, by cookies, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginFlow {
    /// Its ID, as given to `login ID` and to the provisioning API.
    pub id: String,
    /// A short name for people.
    pub name: String,
    /// One sentence on what it needs.
    pub description: String,
}

impl LoginFlow {
    /// A flow with an ID, a name and a description.
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        Self { id: id.into(), name: name.into(), description: description.into() }
    }
}

/// What kind of value a field takes; clients pick the input widget from it, and the framework
/// checks the value before the bridge sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    /// Any text (a username, a server name).
    Text,
    /// A secret: never echoed, and its message is redacted when typed in a room.
    Password,
    /// A phone number in international form (`+` and digits).
    Phone,
    /// A code the user received (digits and letters).
    Code,
    /// An e-mail address.
    Email,
}

/// A field a [`LoginStep::Fields`] step asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginField {
    /// Its ID: the key of its value in what the bridge gets back.
    pub id: String,
    /// Its kind.
    #[serde(rename = "type")]
    pub kind: FieldKind,
    /// Its name for people.
    pub name: String,
    /// An optional longer explanation.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// A regular expression the whole value must match, beyond what the kind demands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
}

impl LoginField {
    /// A field of a kind, with an ID and a name.
    pub fn new(kind: FieldKind, id: impl Into<String>, name: impl Into<String>) -> Self {
        Self { id: id.into(), kind, name: name.into(), description: String::new(), pattern: None }
    }

    /// The same field, whose value must match `pattern` (a regular expression, anchored).
    #[must_use]
    pub fn pattern(mut self, pattern: impl Into<String>) -> Self {
        self.pattern = Some(pattern.into());
        self
    }

    /// Checks a value: not empty, of the field's kind, matching its pattern.
    ///
    /// # Errors
    /// A sentence saying what is wrong, for the user.
    pub fn validate(&self, value: &str) -> Result<(), String> {
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("{} must not be empty", self.name));
        }
        let ok = match self.kind {
            FieldKind::Text | FieldKind::Password => true,
            FieldKind::Phone => {
                value.starts_with('+')
                    && value.len() > 4
                    && value[1..].chars().all(|c| c.is_ascii_digit())
            }
            FieldKind::Code => value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            FieldKind::Email => value
                .split_once('@')
                .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.contains('@')),
        };
        if !ok {
            let kind = match self.kind {
                FieldKind::Phone => "a phone number in international form (+ and digits)",
                FieldKind::Code => "letters and digits only",
                FieldKind::Email => "an e-mail address",
                FieldKind::Text | FieldKind::Password => "text",
            };
            return Err(format!("{} must be {kind}", self.name));
        }
        if let Some(pattern) = &self.pattern {
            let re = regex::Regex::new(&format!("^(?:{pattern})$"))
                .map_err(|e| format!("{}: the bridge's pattern is invalid: {e}", self.name))?;
            if !re.is_match(value) {
                return Err(format!("{} is not in the expected form", self.name));
            }
        }
        Ok(())
    }
}

/// What a display-and-wait step shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum LoginDisplay {
    /// The data of a QR code to scan. The bot shows the data as text (no image is rendered);
    /// provisioning clients draw the code themselves.
    Qr(String),
    /// A code to type on the other device.
    Code(String),
    /// Nothing to show: the user confirms elsewhere (an app prompt, an e-mail link).
    Nothing,
}

/// A login that completed: what the framework stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewLogin {
    /// The remote account's ID (unique on the network: the same account logged in again
    /// replaces its login).
    pub id: RemoteLoginId,
    /// The account's name on the network, shown to the user.
    pub remote_name: String,
    /// Bridge-owned JSON kept with the login (tokens, server, ...), given back on reconnect.
    #[serde(default)]
    pub metadata: serde_json::Value,
}

/// One step of a login, as the bridge's [`LoginProcess`] returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LoginStep {
    /// Ask the user for values. The bridge gets them in [`LoginProcess::submit`], checked
    /// against each field's kind and pattern.
    Fields {
        /// The step's ID (unique within the flow; clients send it back).
        step_id: String,
        /// What to tell the user.
        instructions: String,
        /// The fields, in order.
        fields: Vec<LoginField>,
    },
    /// Show something and wait: the framework calls [`LoginProcess::wait`] at once, and the
    /// step ends when it returns.
    DisplayAndWait {
        /// The step's ID.
        step_id: String,
        /// What to tell the user.
        instructions: String,
        /// What to show.
        display: LoginDisplay,
    },
    /// Ask for cookies of a web session on the network. The bridge gets them, by name, in
    /// [`LoginProcess::submit`].
    Cookies {
        /// The step's ID.
        step_id: String,
        /// What to tell the user.
        instructions: String,
        /// The page to log in on.
        url: String,
        /// The names of the cookies needed.
        cookies: Vec<String>,
    },
    /// Logged in.
    Complete(NewLogin),
}

impl LoginStep {
    /// A fields step.
    pub fn fields(
        step_id: impl Into<String>,
        instructions: impl Into<String>,
        fields: Vec<LoginField>,
    ) -> Self {
        Self::Fields { step_id: step_id.into(), instructions: instructions.into(), fields }
    }

    /// A display-and-wait step.
    pub fn display_and_wait(
        step_id: impl Into<String>,
        instructions: impl Into<String>,
        display: LoginDisplay,
    ) -> Self {
        Self::DisplayAndWait { step_id: step_id.into(), instructions: instructions.into(), display }
    }

    /// A cookies step.
    pub fn cookies(
        step_id: impl Into<String>,
        instructions: impl Into<String>,
        url: impl Into<String>,
        cookies: Vec<String>,
    ) -> Self {
        Self::Cookies {
            step_id: step_id.into(),
            instructions: instructions.into(),
            url: url.into(),
            cookies,
        }
    }

    /// The completing step.
    pub fn complete(
        id: impl Into<RemoteLoginId>,
        remote_name: impl Into<String>,
        metadata: serde_json::Value,
    ) -> Self {
        Self::Complete(NewLogin { id: id.into(), remote_name: remote_name.into(), metadata })
    }

    /// The step's ID (`complete` for the last step).
    pub fn step_id(&self) -> &str {
        match self {
            Self::Fields { step_id, .. }
            | Self::DisplayAndWait { step_id, .. }
            | Self::Cookies { step_id, .. } => step_id,
            Self::Complete(_) => "complete",
        }
    }

    /// The step's type as the provisioning API names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Fields { .. } => "user_input",
            Self::DisplayAndWait { .. } => "display_and_wait",
            Self::Cookies { .. } => "cookies",
            Self::Complete(_) => "complete",
        }
    }
}

/// What the user gave for a fields or cookies step: values by field ID or cookie name.
pub type LoginValues = BTreeMap<String, String>;

/// One login in progress: the network-specific steps of a flow. The framework drives it the
/// same way from bot commands and from the provisioning API.
///
/// [`LoginProcess::start`] returns the first step; after a fields or cookies step the
/// framework calls [`LoginProcess::submit`] with the values; after a display-and-wait step it
/// calls [`LoginProcess::wait`]. Each returns the next step, until [`LoginStep::Complete`]. An
/// `Err` ends the login and is shown to the user, who may start again.
pub trait LoginProcess: Send + 'static {
    /// The first step.
    fn start(&mut self) -> impl Future<Output = BridgeResult<LoginStep>> + Send;

    /// The values for the last fields or cookies step (checked already).
    fn submit(
        &mut self,
        values: LoginValues,
    ) -> impl Future<Output = BridgeResult<LoginStep>> + Send {
        let _ = values;
        async { Err(crate::error::BridgeError::permanent("this step takes no input")) }
    }

    /// Waits until the last display-and-wait step is done (the code was scanned), and returns
    /// the next step. The framework gives up waiting when the user cancels.
    fn wait(&mut self) -> impl Future<Output = BridgeResult<LoginStep>> + Send {
        async { Err(crate::error::BridgeError::permanent("this step does not wait")) }
    }

    /// The user cancelled (or the framework gave up): release what the login holds.
    fn cancel(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A [`LoginProcess`] behind a `Box`, as [`crate::Bridge::create_login`] returns it:
/// `Ok(Box::new(MyLogin { .. }))`. Implemented for every `LoginProcess`.
pub trait AnyLoginProcess: Send + 'static {
    #[doc(hidden)]
    fn start_boxed(&mut self) -> BoxFuture<'_, BridgeResult<LoginStep>>;
    #[doc(hidden)]
    fn submit_boxed(&mut self, values: LoginValues) -> BoxFuture<'_, BridgeResult<LoginStep>>;
    #[doc(hidden)]
    fn wait_boxed(&mut self) -> BoxFuture<'_, BridgeResult<LoginStep>>;
    #[doc(hidden)]
    fn cancel_boxed(&mut self) -> BoxFuture<'_, ()>;
}

impl<T: LoginProcess> AnyLoginProcess for T {
    fn start_boxed(&mut self) -> BoxFuture<'_, BridgeResult<LoginStep>> {
        Box::pin(self.start())
    }
    fn submit_boxed(&mut self, values: LoginValues) -> BoxFuture<'_, BridgeResult<LoginStep>> {
        Box::pin(self.submit(values))
    }
    fn wait_boxed(&mut self) -> BoxFuture<'_, BridgeResult<LoginStep>> {
        Box::pin(self.wait())
    }
    fn cancel_boxed(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.cancel())
    }
}

impl fmt::Debug for dyn AnyLoginProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LoginProcess")
    }
}

/// The state of a login's connection to the network, in the `com.beeper.bridge_state` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LoginState {
    /// Stored, not connected yet (the bridge is starting).
    Starting,
    /// Connecting.
    Connecting,
    /// Connected.
    Connected,
    /// The connection dropped and is being retried.
    TransientDisconnect,
    /// The network refused the credentials: the user must log in again.
    BadCredentials,
    /// Logged out (by the user or by the network).
    LoggedOut,
    /// Something else went wrong.
    UnknownError,
}

impl LoginState {
    /// Every state.
    pub const ALL: [Self; 7] = [
        Self::Starting,
        Self::Connecting,
        Self::Connected,
        Self::TransientDisconnect,
        Self::BadCredentials,
        Self::LoggedOut,
        Self::UnknownError,
    ];

    /// The stored and pushed name (`CONNECTED`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "STARTING",
            Self::Connecting => "CONNECTING",
            Self::Connected => "CONNECTED",
            Self::TransientDisconnect => "TRANSIENT_DISCONNECT",
            Self::BadCredentials => "BAD_CREDENTIALS",
            Self::LoggedOut => "LOGGED_OUT",
            Self::UnknownError => "UNKNOWN_ERROR",
        }
    }

    /// The state with a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// Whether the user must act (log in again): the user is told in their management room.
    pub fn needs_user(self) -> bool {
        matches!(self, Self::BadCredentials | Self::LoggedOut)
    }
}

impl fmt::Display for LoginState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored login: one account of one Matrix user on the remote network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLogin {
    /// The remote account.
    pub id: RemoteLoginId,
    /// The Matrix user who owns it.
    pub user_id: OwnedUserId,
    /// The account's name on the network.
    pub remote_name: String,
    /// The connection's last reported state.
    pub state: LoginState,
    /// Why, for error states.
    pub state_reason: Option<String>,
    /// Bridge-owned JSON.
    pub metadata: serde_json::Value,
}

/// The login a Matrix event goes out through (see [`crate::Sender::via`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendVia {
    /// The sender's own login, which is in the portal.
    Own(UserLogin),
    /// The portal's relay login: the sender has no login here. The content of a relayed
    /// message was rewritten by the `relay.message_formats` template already.
    Relay(UserLogin),
}

impl SendVia {
    /// The login, own or relay.
    pub fn login(&self) -> &UserLogin {
        match self {
            Self::Own(login) | Self::Relay(login) => login,
        }
    }

    /// Whether it is the relay.
    pub fn is_relay(&self) -> bool {
        matches!(self, Self::Relay(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_checked_by_kind_and_pattern() {
        let phone = LoginField::new(FieldKind::Phone, "phone", "Phone number");
        assert!(phone.validate("+4915112345678").is_ok());
        assert!(phone.validate("015112345678").is_err());
        assert!(phone.validate("  ").is_err());
        let code = LoginField::new(FieldKind::Code, "code", "Code").pattern("[0-9]{6}");
        assert!(code.validate("123456").is_ok());
        assert!(code.validate("12345").is_err());
        assert!(code.validate("12 456").is_err());
        let mail = LoginField::new(FieldKind::Email, "mail", "E-mail");
        assert!(mail.validate("a@b.org").is_ok());
        assert!(mail.validate("a@b").is_err());
        assert!(LoginField::new(FieldKind::Password, "pw", "Password").validate("x y").is_ok());
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in LoginState::ALL {
            assert_eq!(LoginState::parse(state.as_str()), Some(state));
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
    }
}
