//! A scripted remote network for the tests of logins, relays and the provisioning API: its
//! flows check a password, show a QR code until the test says it was scanned, and take a
//! session cookie.

use std::sync::{Arc, Mutex};

use ruma::{UserId, room_id, user_id};
use tokio::sync::Notify;

use super::{
    AnyLoginProcess, FieldKind, LoginDisplay, LoginField, LoginFlow, LoginStep, LoginValues,
    UserLogin,
};
use crate::login::LoginProcess;
use crate::{
    Context,
    bridge::{Bridge, BridgeError, BridgeResult, Delivery},
    event::MatrixMessage,
    store::{MemberRow, Membership, Store},
    testing::{MockHomeserver, test_registration},
};

/// The network's one password.
pub(crate) const PASSWORD: &str = "hunter2";

#[derive(Default)]
pub(crate) struct FakeNet {
    /// Completes the QR flow's wait.
    pub(crate) scanned: Arc<Notify>,
    /// Logins connected, in order.
    pub(crate) connected: Mutex<Vec<String>>,
    /// Logins logged out, in order.
    pub(crate) logged_out: Mutex<Vec<String>>,
    /// Messages sent, as `login: body`.
    pub(crate) sent: Mutex<Vec<String>>,
}

pub(crate) enum FakeLogin {
    Password,
    Qr(Arc<Notify>),
    Cookies,
}

impl LoginProcess for FakeLogin {
    async fn start(&mut self) -> BridgeResult<LoginStep> {
        Ok(match self {
            Self::Password => LoginStep::fields(
                "credentials",
                "Log in with your FakeNet account.",
                vec![
                    LoginField::new(FieldKind::Text, "username", "Username").pattern("[a-z0-9]+"),
                    LoginField::new(FieldKind::Password, "password", "Password"),
                ],
            ),
            Self::Qr(_) => LoginStep::display_and_wait(
                "qr",
                "Scan the code with FakeNet on your phone.",
                LoginDisplay::Qr("fakenet://link/42".into()),
            ),
            Self::Cookies => LoginStep::cookies(
                "cookies",
                "Log in on the web site.",
                "https://fakenet.invalid/login",
                vec!["session".into()],
            ),
        })
    }

    async fn submit(&mut self, values: LoginValues) -> BridgeResult<LoginStep> {
        match self {
            Self::Password if values["password"] == PASSWORD => {
                let user = &values["username"];
                Ok(LoginStep::complete(
                    user.as_str(),
                    format!("{user} on FakeNet"),
                    serde_json::json!({"user": user}),
                ))
            }
            Self::Password => Err(BridgeError::permanent("wrong password")),
            Self::Cookies if values["session"] == "ok" => {
                Ok(LoginStep::complete("cookie-user", "Cookie User", serde_json::Value::Null))
            }
            _ => Err(BridgeError::permanent("bad cookie")),
        }
    }

    async fn wait(&mut self) -> BridgeResult<LoginStep> {
        let Self::Qr(scanned) = self else { return Err(BridgeError::permanent("no wait")) };
        scanned.notified().await;
        Ok(LoginStep::complete("qr-user", "QR User", serde_json::Value::Null))
    }
}

impl Bridge for FakeNet {
    type Config = crate::config::NoBridgeConfig;
    const NAME: &'static str = "fake";

    async fn create(_: Self::Config, _: Context) -> BridgeResult<Self> {
        Ok(Self::default())
    }

    fn login_flows(&self) -> Vec<LoginFlow> {
        vec![
            LoginFlow::new("password", "Password", "your username and password"),
            LoginFlow::new("qr", "QR code", "scan a code with the app"),
            LoginFlow::new("cookies", "Cookies", "the cookies of a web session"),
        ]
    }

    async fn create_login(
        &self,
        flow_id: &str,
        _: &UserId,
    ) -> BridgeResult<Box<dyn AnyLoginProcess>> {
        Ok(match flow_id {
            "password" => Box::new(FakeLogin::Password),
            "qr" => Box::new(FakeLogin::Qr(self.scanned.clone())),
            _ => Box::new(FakeLogin::Cookies),
        })
    }

    async fn connect_login(&self, login: &UserLogin) -> BridgeResult {
        if login.id.as_str().starts_with("bad") {
            return Err(BridgeError::permanent("password changed"));
        }
        self.connected.lock().unwrap().push(login.id.to_string());
        Ok(())
    }

    async fn logout(&self, login: &UserLogin) -> BridgeResult {
        self.logged_out.lock().unwrap().push(login.id.to_string());
        Ok(())
    }

    async fn handle_message(&self, m: &MatrixMessage) -> BridgeResult<Delivery> {
        let via = m.sender.via.as_ref().map_or("-", |v| v.login().id.as_str());
        self.sent.lock().unwrap().push(format!("{via}: {}", m.content.body()));
        Ok(Delivery::sent(format!("r{}", self.sent.lock().unwrap().len())))
    }
}

/// A context on an in-memory store against a mock homeserver, with `extra` YAML appended to
/// the config, and the fake network attached. `!dm:localhost` is a DM of the bot and
/// `@alice:localhost`.
pub(crate) async fn setup(hs: &MockHomeserver, extra: &str) -> (Context, Arc<FakeNet>) {
    let store = Store::connect_url("sqlite::memory:").await.unwrap();
    let config: crate::Config<()> = crate::Config::from_yaml(&format!(
        "homeserver: {{address: '{}', domain: localhost}}\n\
         appservice: {{id: test-bridge, address: 'http://127.0.0.1:2', port: 2, \
         bot: {{localpart: _test_bot}}, ghost_localpart_template: '_test_{{id}}'}}\n\
         permissions: {{'@admin:localhost': admin, localhost: user, other.org: relay}}\n{extra}",
        hs.url()
    ))
    .unwrap();
    let dm = room_id!("!dm:localhost");
    for user in [user_id!("@_test_bot:localhost"), user_id!("@alice:localhost")] {
        store.set_membership(MemberRow::new(dm, user, Membership::Join)).await.unwrap();
    }
    store.set_members_fetched(dm, true).await.unwrap();
    let ctx = Context::with_client(store, test_registration(), config, hs.client());
    let net = Arc::new(FakeNet::default());
    ctx.attach_bridge(&net);
    (ctx, net)
}
