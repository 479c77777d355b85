//! Per-login chats and remote invites against a real Synapse. Two humans, each logged in, are
//! written to by the same remote contact: each gets a portal of their own, with only them and
//! the contact's ghost in it, and each reply reaches the bridge through the login of the
//! human who wrote it. A remote invite comes from the member who made it when they may invite
//! (a ghost, or a human's double puppet), else from the bot; a resync takes back an invite
//! the chat no longer has.

use std::{collections::BTreeMap, sync::Mutex};

use mxbridge::{
    AppService, Bridge, BridgeResult, ChatMember, Config, Context, Delivery, MatrixMembership,
    MatrixMessage, PortalInfo, PortalKey, Registration, RemoteEvent, RemoteMessageId, RemoteSender,
    login::{AnyLoginProcess, LoginFlow},
};
use reqwest::Method;
use ruma::{
    Int, OwnedRoomId, OwnedUserId, UserId, events::room::power_levels::RoomPowerLevelsEventContent,
};
use serde_json::{Value, json};

use crate::{
    common::{config_yaml, fresh_database, http, registration_yaml, wait_until},
    synapse::{Synapse, cs, enabled, urlencode},
};

const SECRET: &str = "provisioning-secret-for-dm-tests-01";
const BOT: &str = "@_t_bot:localhost";

/// A scripted network: chats' info by chat, messages from Matrix recorded.
#[derive(Default)]
struct Network {
    infos: Mutex<BTreeMap<String, PortalInfo>>,
    /// `chat receiver via: body` of each message from Matrix.
    sent: Mutex<Vec<String>>,
    /// `sender target change` of each membership change from Matrix.
    memberships: Mutex<Vec<String>>,
}

fn person(id: &str) -> RemoteSender {
    let mut name = id.to_owned();
    name[..1].make_ascii_uppercase();
    RemoteSender::named(id, name)
}

fn ghost(id: &str) -> String {
    format!("@_t_{id}:localhost")
}

impl Bridge for Network {
    type Config = mxbridge::config::NoBridgeConfig;
    const NAME: &'static str = "network";

    async fn create(_: Self::Config, _: Context) -> BridgeResult<Self> {
        Ok(Self::default())
    }

    fn login_flows(&self) -> Vec<LoginFlow> {
        vec![LoginFlow::new("name", "Name", "your user name")]
    }

    async fn create_login(&self, _: &str, _: &UserId) -> BridgeResult<Box<dyn AnyLoginProcess>> {
        Ok(Box::new(crate::common::UsernameLogin))
    }

    async fn portal_info(&self, key: &PortalKey) -> BridgeResult<Option<PortalInfo>> {
        Ok(self.infos.lock().unwrap().get(key.chat.as_str()).cloned())
    }

    async fn handle_message(&self, m: &MatrixMessage) -> BridgeResult<Delivery> {
        let receiver = m.portal.key.receiver.as_ref().map_or("-", |r| r.as_str());
        let via = m.sender.via.as_ref().map_or("-".into(), |v| v.login().id.to_string());
        let line = format!("{} {receiver} {via}: {}", m.portal.key.chat, m.content.body());
        self.sent.lock().unwrap().push(line);
        Ok(Delivery::sent(RemoteMessageId::random()))
    }

    async fn handle_membership(&self, m: &MatrixMembership) -> BridgeResult {
        let line = format!("{} {} {:?}", m.sender.user_id, m.target, m.change);
        self.memberships.lock().unwrap().push(line);
        Ok(())
    }
}

struct App {
    synapse: Synapse,
    client: reqwest::Client,
    port: u16,
    bridge: std::sync::Arc<Network>,
    ctx: Context,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<mxbridge::Result<()>>,
    _dir: tempfile::TempDir,
}

/// Synapse and the bridge, with `alice` and `bob` at the `user` level.
async fn start() -> App {
    let port = crate::crash::free_port();
    let registration = registration_yaml(&format!("http://127.0.0.1:{port}"));
    let synapse = Synapse::start(&registration);
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("sqlite", dir.path()).await;
    let yaml = format!(
        "{}permissions: {{'@alice:localhost': user, '@bob:localhost': user}}\n\
         provisioning: {{shared_secret: {SECRET}}}\n",
        config_yaml(&synapse.url, port, &db.url, "{}")
    );
    let config: Config<mxbridge::config::NoBridgeConfig> = Config::from_yaml(&yaml).unwrap();
    let service =
        AppService::<Network>::new(config, Registration::from_yaml(&registration).unwrap())
            .await
            .unwrap();
    let (bridge, ctx) = (service.bridge().clone(), service.context().clone());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let task = tokio::spawn(service.run(listener, async move {
        let _ = rx.await;
    }));
    let client = http();
    crate::crash::wait_live(&client, port).await;
    App { synapse, client, port, bridge, ctx, stop, task, _dir: dir }
}

impl App {
    /// Logs `user` (a localpart) in over the provisioning API; the login is named after them.
    async fn log_in(&self, user: &str) {
        let call = async |path: &str, body: Option<Value>| {
            let url = format!(
                "http://127.0.0.1:{}/_matrix/provision/v3{path}?user_id={}",
                self.port,
                urlencode(&format!("@{user}:localhost"))
            );
            let mut request = self.client.post(url).bearer_auth(SECRET);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        };
        let (status, step) = call("/login/start/name", None).await;
        assert_eq!(status, 200, "{step}");
        let at =
            format!("/login/step/{}/credentials/user_input", step["login_id"].as_str().unwrap());
        let (status, done) = call(&at, Some(json!({"username": user}))).await;
        assert_eq!((status, done["type"].as_str()), (200, Some("complete")), "{done}");
    }

    /// A room's member events as `token`'s user sees them, by user.
    async fn members(&self, room: &str, token: &str) -> BTreeMap<String, Value> {
        let url =
            format!("{}/_matrix/client/v3/rooms/{}/members", self.synapse.url, urlencode(room));
        let page = cs(&self.client, Method::GET, url, token, None).await;
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["state_key"].as_str().unwrap().to_owned(), e.clone()))
            .collect()
    }

    /// The text bodies in a room, oldest first, as `token`'s user sees them.
    async fn texts(&self, room: &str, token: &str) -> Vec<String> {
        let url = format!(
            "{}/_matrix/client/v3/rooms/{}/messages?dir=f&limit=100",
            self.synapse.url,
            urlencode(room)
        );
        let page = cs(&self.client, Method::GET, url, token, None).await;
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.message")
            .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
            .collect()
    }

    /// `token`'s user joins a room; the status of the answer.
    async fn join(&self, room: &str, token: &str) -> u16 {
        let url = format!("{}/_matrix/client/v3/rooms/{}/join", self.synapse.url, urlencode(room));
        let response =
            self.client.post(url).bearer_auth(token).json(&json!({})).send().await.unwrap();
        response.status().as_u16()
    }

    async fn say(&self, room: &str, token: &str, body: &str) {
        let url = format!(
            "{}/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
            self.synapse.url,
            urlencode(room),
            mxbridge::Secret::generate(12).expose()
        );
        let content = json!({"msgtype": "m.text", "body": body});
        cs(&self.client, Method::PUT, url, token, Some(content)).await;
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn one_contact_writing_to_two_logins_makes_two_portals_each_with_its_own_user() {
    if !enabled() {
        return;
    }
    let app = start().await;
    let tokens = [app.synapse.register("alice"), app.synapse.register("bob")];
    app.log_in("alice").await;
    app.log_in("bob").await;
    let info = PortalInfo {
        is_direct: true,
        members: vec![ChatMember::joined(person("carol"))],
        ..PortalInfo::default()
    };
    app.bridge.infos.lock().unwrap().insert("dm-carol".into(), info);

    // Carol writes to each; the remote network gives both messages the same ID.
    let mut rooms = Vec::new();
    for user in ["alice", "bob"] {
        let key = PortalKey::for_login("dm-carol", user.into());
        let text = RemoteEvent::text("m1", person("carol"), format!("hello {user}"));
        let sent = app.ctx.queue_remote(&key, &text).await.unwrap().bridged().await.unwrap();
        assert_eq!(sent.len(), 1, "the message to {user}");
        let portal = app.ctx.portal(&key).await.unwrap().expect("a portal");
        rooms.push(portal.room_id.to_string());
    }
    assert_ne!(rooms[0], rooms[1], "one room per login");

    for (i, user) in ["alice", "bob"].into_iter().enumerate() {
        let (room, token) = (&rooms[i], &tokens[i]);
        let other = if user == "alice" { "bob" } else { "alice" };
        // The other human was never invited, and may not join.
        assert_eq!(app.join(room, &tokens[1 - i]).await, 403, "{other} joined {user}'s DM");
        assert_eq!(app.join(room, token).await, 200);
        let members = app.members(room, token).await;
        let mut in_room: Vec<&str> = members
            .iter()
            .filter(|(_, e)| matches!(e["content"]["membership"].as_str(), Some("join" | "invite")))
            .map(|(u, _)| u.as_str())
            .collect();
        in_room.sort_unstable();
        let mut expected = vec![BOT.to_owned(), ghost("carol"), format!("@{user}:localhost")];
        expected.sort();
        assert_eq!(in_room, expected, "the members of {user}'s DM");
        assert_eq!(app.texts(room, token).await, [format!("hello {user}")]);
    }

    // Each reply reaches the bridge through the login of the human who wrote it.
    app.say(&rooms[1], &tokens[1], "hi from bob").await;
    app.say(&rooms[0], &tokens[0], "hi from alice").await;
    let expected = ["dm-carol bob bob: hi from bob", "dm-carol alice alice: hi from alice"];
    assert!(
        wait_until(30, || *app.bridge.sent.lock().unwrap() == expected).await,
        "{:?}",
        app.bridge.sent.lock().unwrap()
    );
    app.stop().await;
}

#[tokio::test]
async fn a_remote_invite_comes_from_the_inviter_when_they_may_invite_else_from_the_bot() {
    if !enabled() {
        return;
    }
    let app = start().await;
    let alice = app.synapse.register("alice");
    let alice_id: OwnedUserId = "@alice:localhost".try_into().unwrap();
    app.log_in("alice").await;
    // Alice's login acts as her own account.
    let token = mxbridge::Secret::new(alice.clone());
    app.ctx.store().set_double_puppet_token(&alice_id, Some(&token)).await.unwrap();

    // A group of Alice, Dave (a moderator) and Erin; inviting takes a moderator.
    let key = PortalKey::shared("team");
    let info = PortalInfo {
        name: Some("Team".into()),
        members: vec![
            ChatMember::joined(person("alice").from_login("alice".into())).power_level(50),
            ChatMember::joined(person("dave")).power_level(50),
            ChatMember::joined(person("erin")),
        ],
        ..PortalInfo::default()
    };
    app.bridge.infos.lock().unwrap().insert("team".into(), info);
    let first = RemoteEvent::text("m1", person("dave"), "welcome");
    app.ctx.queue_remote(&key, &first).await.unwrap().bridged().await.unwrap();
    let room: OwnedRoomId = app.ctx.portal(&key).await.unwrap().unwrap().room_id;
    let bot = app.ctx.bot();
    let mut levels = bot.power_levels(&room).await.unwrap();
    levels.invite = Int::from(50);
    bot.set_power_levels(&room, &RoomPowerLevelsEventContent::try_from(levels).unwrap())
        .await
        .unwrap();

    // Dave invites Frank, Erin (who may not) invites Gina, Alice's login invites Hank, and
    // an invite nobody is named for brings Ivan.
    let invite = |user: &str, by: Option<RemoteSender>| ChatMember::invited(person(user), by);
    let change = RemoteEvent::ChatInfo {
        name: None,
        topic: None,
        avatar: None,
        members: vec![
            invite("frank", Some(person("dave"))),
            invite("gina", Some(person("erin"))),
            invite("hank", Some(person("alice").from_login("alice".into()))),
            invite("ivan", None),
        ],
        power_levels: None,
    };
    app.ctx.queue_remote(&key, &change).await.unwrap().bridged().await.unwrap();
    let url = format!(
        "{}/_matrix/client/v3/rooms/{}/messages?dir=f&limit=100",
        app.synapse.url,
        urlencode(room.as_str())
    );
    let page = cs(&app.client, Method::GET, url, &alice, None).await;
    let invites: BTreeMap<String, String> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "invite")
        .map(|e| (e["state_key"].as_str().unwrap().into(), e["sender"].as_str().unwrap().into()))
        .collect();
    let invited_by = |user: &str| invites.get(&ghost(user)).cloned().unwrap_or_default();
    assert_eq!(invited_by("frank"), ghost("dave"), "an invite by Dave");
    assert_eq!(invited_by("gina"), BOT, "Erin may not invite: the bot does");
    assert_eq!(invited_by("hank"), "@alice:localhost", "an invite by Alice's own account");
    assert_eq!(invited_by("ivan"), BOT, "an invite by nobody named");

    // What Alice's own account did for her login is the network's news, not Matrix's: the
    // bridge is not told of it, and Hank's ghost is not made to accept it.
    app.say(room.as_str(), &alice, "after the invites").await;
    let arrived =
        || app.bridge.sent.lock().unwrap().iter().any(|l| l.ends_with("after the invites"));
    assert!(wait_until(30, arrived).await, "{:?}", app.bridge.sent.lock().unwrap());
    let told = app.bridge.memberships.lock().unwrap().clone();
    assert!(!told.iter().any(|l| l.starts_with("@alice:localhost @_t_")), "{told:?}");
    let members = app.members(room.as_str(), &alice).await;
    assert_eq!(members[&ghost("hank")]["content"]["membership"], "invite");

    // A resync whose member list no longer has Ivan takes his invite back; the others stay.
    let resynced = PortalInfo {
        members: vec![
            ChatMember::joined(person("alice").from_login("alice".into())),
            ChatMember::joined(person("dave")),
            ChatMember::joined(person("erin")),
            invite("frank", None),
            invite("gina", None),
            invite("hank", None),
        ],
        ..PortalInfo::default()
    };
    app.bridge.infos.lock().unwrap().insert("team".into(), resynced);
    app.ctx.resync_portal(&key).await.unwrap().bridged().await.unwrap();
    let members = app.members(room.as_str(), &alice).await;
    let membership = |user: &str| members[&ghost(user)]["content"]["membership"].clone();
    assert_eq!(
        [membership("ivan"), membership("frank"), membership("gina"), membership("hank")],
        ["leave", "invite", "invite", "invite"]
    );
    app.stop().await;
}
