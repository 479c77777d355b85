//! Logins and relays against a real Synapse: a human logs in through the bot's commands in a
//! DM, the login is connected again after a SIGKILL and a restart (and its refusal told to the
//! human), a second human with the `relay` level is relayed through the first one's login, and
//! a third with no level is told the message was not bridged.

use std::sync::{Arc, Mutex};

use mxbridge::{
    AppService, Bridge, BridgeError, BridgeResult, Config, Context, Delivery, MatrixMessage,
    PortalInfo, PortalKey, Registration,
    login::{
        AnyLoginProcess, FieldKind, LoginField, LoginFlow, LoginProcess, LoginStep, LoginValues,
        UserLogin,
    },
};
use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    common::{config_yaml, fresh_database, http, registration_yaml, wait_until, wait_until_async},
    synapse::{Synapse, cs, enabled, urlencode},
};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct ScriptedConfig {
    /// The network refuses every stored login when it reconnects.
    #[serde(default)]
    reject_stored: bool,
}

/// A scripted network: one password for everyone, messages recorded.
struct Scripted {
    config: ScriptedConfig,
    sent: Mutex<Vec<String>>,
    connects: Mutex<Vec<String>>,
}

struct PasswordLogin;

impl LoginProcess for PasswordLogin {
    async fn start(&mut self) -> BridgeResult<LoginStep> {
        Ok(LoginStep::fields(
            "credentials",
            "Log in to the scripted network.",
            vec![
                LoginField::new(FieldKind::Text, "username", "Username"),
                LoginField::new(FieldKind::Password, "password", "Password"),
            ],
        ))
    }

    async fn submit(&mut self, values: LoginValues) -> BridgeResult<LoginStep> {
        if values["password"] != "hunter2" {
            return Err(BridgeError::permanent("wrong password"));
        }
        let name = values["username"].clone();
        Ok(LoginStep::complete(name.as_str(), format!("{name} (scripted)"), json!({})))
    }
}

impl Bridge for Scripted {
    type Config = ScriptedConfig;
    const NAME: &'static str = "scripted";

    async fn create(config: ScriptedConfig, _ctx: Context) -> BridgeResult<Self> {
        Ok(Self { config, sent: Mutex::default(), connects: Mutex::default() })
    }

    fn login_flows(&self) -> Vec<LoginFlow> {
        vec![LoginFlow::new("password", "Password", "your username and password")]
    }

    async fn create_login(&self, _: &str, _: &UserId) -> BridgeResult<Box<dyn AnyLoginProcess>> {
        Ok(Box::new(PasswordLogin))
    }

    async fn connect_login(&self, login: &UserLogin) -> BridgeResult {
        self.connects.lock().unwrap().push(login.id.to_string());
        if self.config.reject_stored {
            return Err(BridgeError::permanent("the network refused the password"));
        }
        Ok(())
    }

    async fn handle_message(&self, m: &MatrixMessage) -> BridgeResult<Delivery> {
        let via = match &m.sender.via {
            Some(v) if v.is_relay() => format!("relay {}", v.login().id),
            Some(v) => v.login().id.to_string(),
            None => "-".into(),
        };
        self.sent.lock().unwrap().push(format!("{via}: {}", m.content.body()));
        Ok(Delivery::sent(mxbridge::RemoteMessageId::random()))
    }
}

struct App {
    bridge: Arc<Scripted>,
    ctx: Context,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<mxbridge::Result<()>>,
}

async fn start(
    listener: tokio::net::TcpListener,
    hs_url: &str,
    db_url: &str,
    bridge: &str,
    registration: &str,
) -> App {
    let port = listener.local_addr().unwrap().port();
    let yaml = format!(
        "{}permissions: {{'@alice:localhost': user, '@bob:localhost': relay}}\n\
         relay: {{enabled: true, admin_only: false}}\n",
        config_yaml(hs_url, port, db_url, bridge)
    );
    let config: Config<ScriptedConfig> = Config::from_yaml(&yaml).unwrap();
    let service =
        AppService::<Scripted>::new(config, Registration::from_yaml(registration).unwrap())
            .await
            .unwrap();
    let (bridge, ctx) = (service.bridge().clone(), service.context().clone());
    let (stop, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(service.run(listener, async move {
        let _ = rx.await;
    }));
    App { bridge, ctx, stop, task }
}

/// The bodies of the bot's notices in a room, oldest first, as `token`'s user sees them.
async fn notices(
    client: &reqwest::Client,
    synapse: &Synapse,
    room: &str,
    token: &str,
) -> Vec<String> {
    let url = format!(
        "{}/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
        synapse.url,
        urlencode(room)
    );
    let page = cs(client, reqwest::Method::GET, url, token, None).await;
    let mut out: Vec<String> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["sender"] == "@_t_bot:localhost" && e["content"]["msgtype"] == "m.notice")
        .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect();
    out.reverse();
    out
}

async fn say(
    client: &reqwest::Client,
    synapse: &Synapse,
    room: &str,
    token: &str,
    body: &str,
) -> String {
    let url = format!(
        "{}/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
        synapse.url,
        urlencode(room),
        mxbridge::Secret::generate(12).expose()
    );
    let sent = cs(
        client,
        reqwest::Method::PUT,
        url,
        token,
        Some(json!({"msgtype": "m.text", "body": body})),
    )
    .await;
    sent["event_id"].as_str().unwrap().to_owned()
}

async fn notice_containing(
    client: &reqwest::Client,
    synapse: &Synapse,
    room: &str,
    token: &str,
    text: &str,
) -> bool {
    wait_until_async(30, async || {
        notices(client, synapse, room, token).await.iter().any(|n| n.contains(text))
    })
    .await
}

/// What the child process runs: the bridge's first life, until it is SIGKILLed.
#[derive(Serialize, Deserialize)]
struct ChildSpec {
    hs_url: String,
    db_url: String,
    port: u16,
    registration: String,
}

/// Not a test of its own: the body of the child process (see `crash.rs`).
#[tokio::test]
async fn logins_child_process_entry_point() {
    let Ok(spec) = std::env::var("MXB_LOGINS_CHILD") else { return };
    let spec: ChildSpec = serde_json::from_str(&spec).unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", spec.port)).await.unwrap();
    let _app = start(listener, &spec.hs_url, &spec.db_url, "{}", &spec.registration).await;
    // Run until killed.
    tokio::time::sleep(std::time::Duration::from_secs(120)).await;
}

fn spawn_child(spec: &ChildSpec) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "synapse_logins::logins_child_process_entry_point",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MXB_LOGINS_CHILD", serde_json::to_string(spec).unwrap())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn a_human_logs_in_through_commands_and_others_are_relayed_or_told() {
    if !enabled() {
        return;
    }
    let port = crate::crash::free_port();
    let registration = registration_yaml(&format!("http://127.0.0.1:{port}"));
    let synapse = Synapse::start(&registration);
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("sqlite", dir.path()).await;
    // First life in a child process, which is SIGKILLed after the login.
    let spec = ChildSpec {
        hs_url: synapse.url.clone(),
        db_url: db.url.clone(),
        port,
        registration: registration.clone(),
    };
    let mut child = spawn_child(&spec);
    let client = http();
    crate::crash::wait_live(&client, port).await;
    let hs = synapse.url.clone();
    let (alice, bob, carol) =
        (synapse.register("alice"), synapse.register("bob"), synapse.register("carol"));

    // Alice's DM with the bot: the bot joins on her invite.
    let dm = cs(
        &client,
        reqwest::Method::POST,
        format!("{hs}/_matrix/client/v3/createRoom"),
        &alice,
        Some(json!({"preset": "private_chat", "is_direct": true, "invite": ["@_t_bot:localhost"]})),
    )
    .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let members = format!("{hs}/_matrix/client/v3/rooms/{}/joined_members", urlencode(&dm));
    assert!(
        wait_until_async(30, async || {
            let joined = cs(&client, reqwest::Method::GET, members.clone(), &alice, None).await;
            joined["joined"].get("@_t_bot:localhost").is_some()
        })
        .await,
        "the bot never joined the DM"
    );

    // Logging in through commands: one field per message.
    say(&client, &synapse, &dm, &alice, "login").await;
    assert!(notice_containing(&client, &synapse, &dm, &alice, "Username").await);
    say(&client, &synapse, &dm, &alice, "alice").await;
    assert!(notice_containing(&client, &synapse, &dm, &alice, "Password").await);
    say(&client, &synapse, &dm, &alice, "hunter2").await;
    assert!(notice_containing(&client, &synapse, &dm, &alice, "Logged in as").await);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // Second life: the stored login is connected again.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let app = start(listener, &synapse.url, &db.url, "{}", &registration).await;
    let store = app.ctx.store().clone();
    let connected = async || {
        store
            .login(&"alice".into())
            .await
            .unwrap()
            .is_some_and(|l| l.state == mxbridge::login::LoginState::Connected)
    };
    // (The state read before the reconnect may be the first life's.)
    assert!(wait_until(30, || !app.bridge.connects.lock().unwrap().is_empty()).await);
    assert!(wait_until_async(30, connected).await, "the login never connected again");
    assert_eq!(*app.bridge.connects.lock().unwrap(), ["alice"]);

    // A portal with all three; Alice's login is in it and she makes it the relay.
    let key = PortalKey::shared("general");
    let users: Vec<OwnedUserId> = ["@alice:localhost", "@bob:localhost", "@carol:localhost"]
        .iter()
        .map(|u| (*u).try_into().unwrap())
        .collect();
    let info = PortalInfo { name: Some("General".into()), invite: users, ..PortalInfo::default() };
    let portal = app.ctx.ensure_portal(&key, &info).await.unwrap();
    let room = portal.room_id.to_string();
    for token in [&alice, &bob, &carol] {
        let url = format!("{hs}/_matrix/client/v3/rooms/{}/join", urlencode(&room));
        cs(&client, reqwest::Method::POST, url, token, Some(json!({}))).await;
    }
    store.add_login_to_portal(&"alice".into(), &key).await.unwrap();
    say(&client, &synapse, &room, &alice, "!scripted set-relay").await;
    assert!(
        wait_until_async(30, async || store.portal_relay(&key).await.unwrap().is_some()).await,
        "the relay was never set"
    );

    say(&client, &synapse, &room, &alice, "hello from alice").await;
    say(&client, &synapse, &room, &bob, "hi from bob").await;
    say(&client, &synapse, &room, &carol, "psst").await;
    assert!(
        notice_containing(&client, &synapse, &room, &carol, "not bridged").await,
        "carol was not told"
    );
    assert!(wait_until(30, || app.bridge.sent.lock().unwrap().len() >= 2).await);
    assert_eq!(
        *app.bridge.sent.lock().unwrap(),
        ["alice: hello from alice", "relay alice: bob: hi from bob"]
    );

    // Third life: this time the network refuses the stored login, and Alice is told in her DM.
    let _ = app.stop.send(());
    app.task.await.unwrap().unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let again =
        start(listener, &synapse.url, &db.url, "{reject_stored: true}", &registration).await;
    assert!(notice_containing(&client, &synapse, &dm, &alice, "refused your login").await);
    assert_eq!(*again.bridge.connects.lock().unwrap(), ["alice"]);
    let login = again.ctx.store().login(&"alice".into()).await.unwrap().unwrap();
    assert_eq!(login.state, mxbridge::login::LoginState::BadCredentials);
    let _ = again.stop.send(());
    again.task.await.unwrap().unwrap();
}
