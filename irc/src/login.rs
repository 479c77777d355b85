//! Logging in: a nick, and a server password or SASL PLAIN credentials where the network
//! wants them. The login completes with what was given; the connection that
//! `Bridge::connect_login` makes then says whether the server takes it.

use mxbridge::{
    BridgeError, BridgeResult,
    login::{FieldKind, LoginField, LoginFlow, LoginProcess, LoginStep, LoginValues},
};
use ruma::OwnedUserId;
use serde::{Deserialize, Serialize};

/// What a stored login keeps (the login's metadata).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LoginMeta {
    /// The nick asked for.
    pub(crate) nick: String,
    /// The server password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) password: Option<String>,
    /// The SASL account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sasl_account: Option<String>,
    /// The SASL password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sasl_password: Option<String>,
}

/// A nick as servers take it: a letter or `[]\`_^{|}` first, then those, digits and `-`.
pub(crate) const NICK_PATTERN: &str = r"[A-Za-z\[\]\\`_^{|}][A-Za-z0-9\[\]\\`_^{|}-]{0,29}";

/// The flows: a nick alone, with a server password, with SASL.
pub(crate) fn flows() -> Vec<LoginFlow> {
    vec![
        LoginFlow::new("nick", "Nick", "a nick on the network, with no password"),
        LoginFlow::new("password", "Server password", "a nick and the server's password"),
        LoginFlow::new("sasl", "SASL", "a nick and a services account (SASL PLAIN)"),
    ]
}

/// One login in progress.
#[derive(Debug)]
pub(crate) struct IrcLogin {
    pub(crate) flow: String,
    pub(crate) user_id: OwnedUserId,
}

impl LoginProcess for IrcLogin {
    async fn start(&mut self) -> BridgeResult<LoginStep> {
        let nick = LoginField::new(FieldKind::Text, "nick", "Nick").pattern(NICK_PATTERN);
        let fields = match self.flow.as_str() {
            "nick" => vec![nick],
            "password" => {
                vec![nick, LoginField::new(FieldKind::Password, "password", "Server password")]
            }
            "sasl" => vec![
                nick,
                LoginField::new(FieldKind::Text, "account", "Account"),
                LoginField::new(FieldKind::Password, "password", "Password"),
            ],
            other => return Err(BridgeError::permanent(format!("no login flow {other}"))),
        };
        Ok(LoginStep::fields("credentials", "Your nick on the IRC network.", fields))
    }

    async fn submit(&mut self, values: LoginValues) -> BridgeResult<LoginStep> {
        let get = |k: &str| values.get(k).map(|v| v.trim().to_owned());
        let nick = get("nick").unwrap_or_default();
        let meta = match self.flow.as_str() {
            "password" => {
                LoginMeta { nick: nick.clone(), password: get("password"), ..LoginMeta::default() }
            }
            "sasl" => LoginMeta {
                nick: nick.clone(),
                sasl_account: get("account"),
                sasl_password: get("password"),
                ..LoginMeta::default()
            },
            _ => LoginMeta { nick: nick.clone(), ..LoginMeta::default() },
        };
        // One IRC login per Matrix user: logging in again replaces it.
        let metadata = serde_json::to_value(&meta).map_err(BridgeError::new)?;
        Ok(LoginStep::complete(self.user_id.as_str(), nick, metadata))
    }
}
