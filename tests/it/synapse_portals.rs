//! Portals that live, against a real Synapse: a human logs in over the provisioning API,
//! resolves a remote user, opens a DM and creates a group through routes the bridge
//! implements; both portals land in her login's space. The group's members and power levels
//! follow the remote chat (a kick by a remote moderator shows as a kick, a leave as a leave),
//! a resync brings the member list in line, her own kick and leave reach the bridge as such,
//! and portals are cleaned up and deleted by command.

use std::{collections::BTreeMap, sync::Mutex};

use mxbridge::{
    AppService, Bridge, BridgeError, BridgeResult, ChatMember, ChatPowerLevels, Config, Context,
    MatrixMembership, NewChat, NewGroup, PortalInfo, PortalKey, Registration, RemoteEvent,
    RemoteSender, ResolvedIdentifier,
    login::{AnyLoginProcess, LoginFlow, UserLogin},
};
use reqwest::Method;
use ruma::{OwnedRoomId, OwnedUserId, UserId};
use serde_json::{Value, json};

use crate::{
    common::{config_yaml, fresh_database, http, registration_yaml, wait_until, wait_until_async},
    synapse::{Synapse, cs, enabled, urlencode},
};

const SECRET: &str = "provisioning-secret-for-tests-0123";
const ALICE: &str = "@alice:localhost";

/// A scripted network of a few people: `bob`, `carol`, `dave`, ...
#[derive(Default)]
struct Chats {
    /// What `portal_info` answers, by chat.
    infos: Mutex<BTreeMap<String, PortalInfo>>,
    /// Memberships that reached the bridge from Matrix: `target change`.
    memberships: Mutex<Vec<String>>,
    groups: Mutex<u32>,
}

fn person(id: &str) -> RemoteSender {
    let mut name = id.to_owned();
    name[..1].make_ascii_uppercase();
    RemoteSender::named(id, name)
}

impl Bridge for Chats {
    type Config = mxbridge::config::NoBridgeConfig;
    const NAME: &'static str = "chats";

    async fn create(_: Self::Config, _: Context) -> BridgeResult<Self> {
        Ok(Self::default())
    }

    fn login_flows(&self) -> Vec<LoginFlow> {
        vec![LoginFlow::new("password", "Password", "your user name")]
    }

    async fn create_login(&self, _: &str, _: &UserId) -> BridgeResult<Box<dyn AnyLoginProcess>> {
        Ok(Box::new(crate::common::UsernameLogin))
    }

    async fn portal_info(&self, key: &PortalKey) -> BridgeResult<Option<PortalInfo>> {
        Ok(self.infos.lock().unwrap().get(key.chat.as_str()).cloned())
    }

    async fn resolve_identifier(
        &self,
        login: &UserLogin,
        identifier: &str,
        _create_dm: bool,
    ) -> BridgeResult<Option<ResolvedIdentifier>> {
        if !["bob", "carol", "dave"].contains(&identifier) {
            return Ok(None);
        }
        let user = person(identifier);
        let key = PortalKey::for_login(format!("dm-{identifier}"), login.id.clone());
        let info = PortalInfo {
            is_direct: true,
            members: vec![ChatMember::joined(user.clone())],
            ..PortalInfo::default()
        };
        Ok(Some(ResolvedIdentifier { user, dm: Some(NewChat { key, info }) }))
    }

    async fn create_group(&self, login: &UserLogin, group: &NewGroup) -> BridgeResult<NewChat> {
        if group.participants.is_empty() || group.kind != "group" {
            return Err(BridgeError::permanent("a group needs participants"));
        }
        if let Some(stranger) = group.participants.iter().find(|p| p.as_str().contains(':')) {
            return Err(BridgeError::permanent(format!("nobody is called {stranger}")));
        }
        let n = {
            let mut groups = self.groups.lock().unwrap();
            *groups += 1;
            *groups
        };
        let mut members = vec![ChatMember::joined(person("alice").from_login(login.id.clone()))];
        members.extend(group.participants.iter().map(|p| ChatMember::joined(person(p.as_str()))));
        let info = PortalInfo { name: group.name.clone(), members, ..PortalInfo::default() };
        Ok(NewChat { key: PortalKey::shared(format!("group-{n}")), info })
    }

    async fn handle_membership(&self, m: &MatrixMembership) -> BridgeResult {
        self.memberships.lock().unwrap().push(format!("{} {:?}", m.target, m.change));
        Ok(())
    }
}

/// A call to the bridge's provisioning API as Alice.
async fn provision(
    client: &reqwest::Client,
    port: u16,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let url = format!(
        "http://127.0.0.1:{port}/_matrix/provision/v3{path}{sep}user_id={}",
        urlencode(ALICE)
    );
    let mut request = client.request(method, url).bearer_auth(SECRET);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A room's member events as `token`'s user sees them, by user.
async fn members(
    client: &reqwest::Client,
    synapse: &Synapse,
    room: &str,
    token: &str,
) -> BTreeMap<String, Value> {
    let url = format!("{}/_matrix/client/v3/rooms/{}/members", synapse.url, urlencode(room));
    let page = cs(client, Method::GET, url, token, None).await;
    page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["state_key"].as_str().unwrap().to_owned(), e.clone()))
        .collect()
}

/// The rooms a space holds, as `token`'s user sees them.
async fn space_rooms(
    client: &reqwest::Client,
    synapse: &Synapse,
    space: &str,
    token: &str,
) -> Vec<String> {
    let url = format!("{}/_matrix/client/v1/rooms/{}/hierarchy", synapse.url, urlencode(space));
    let page = cs(client, Method::GET, url, token, None).await;
    let mut rooms: Vec<String> = page["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room_id"].as_str().unwrap().to_owned())
        .filter(|r| r != space)
        .collect();
    rooms.sort();
    rooms
}

async fn join(client: &reqwest::Client, synapse: &Synapse, room: &str, token: &str) {
    let url = format!("{}/_matrix/client/v3/rooms/{}/join", synapse.url, urlencode(room));
    cs(client, Method::POST, url, token, Some(json!({}))).await;
}

async fn say(client: &reqwest::Client, synapse: &Synapse, room: &str, token: &str, body: &str) {
    let url = format!(
        "{}/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
        synapse.url,
        urlencode(room),
        mxbridge::Secret::generate(12).expose()
    );
    cs(client, Method::PUT, url, token, Some(json!({"msgtype": "m.text", "body": body}))).await;
}

async fn state(
    client: &reqwest::Client,
    synapse: &Synapse,
    room: &str,
    token: &str,
    kind: &str,
    key: &str,
) -> Value {
    let url = format!(
        "{}/_matrix/client/v3/rooms/{}/state/{kind}/{}",
        synapse.url,
        urlencode(room),
        urlencode(key)
    );
    cs(client, Method::GET, url, token, None).await
}

fn ghost(id: &str) -> String {
    format!("@_t_{id}:localhost")
}

#[tokio::test]
async fn portals_live_in_spaces_follow_their_members_and_are_deleted_by_command() {
    if !enabled() {
        return;
    }
    let port = crate::crash::free_port();
    let registration = registration_yaml(&format!("http://127.0.0.1:{port}"));
    let synapse = Synapse::start(&registration);
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("sqlite", dir.path()).await;
    let yaml = format!(
        "{}permissions: {{'{ALICE}': admin}}\nprovisioning: {{shared_secret: {SECRET}}}\n",
        config_yaml(&synapse.url, port, &db.url, "{}")
    );
    let config: Config<mxbridge::config::NoBridgeConfig> = Config::from_yaml(&yaml).unwrap();
    let service = AppService::<Chats>::new(config, Registration::from_yaml(&registration).unwrap())
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
    let alice = synapse.register("alice");

    // Log in over the provisioning API.
    let (status, step) =
        provision(&client, port, Method::POST, "/login/start/password", None).await;
    assert_eq!(status, 200, "{step}");
    let at = format!("/login/step/{}/credentials/user_input", step["login_id"].as_str().unwrap());
    let (status, done) =
        provision(&client, port, Method::POST, &at, Some(json!({"username": "alice"}))).await;
    assert_eq!((status, done["type"].as_str()), (200, Some("complete")), "{done}");

    // Resolving: nobody, then Bob (no DM yet); opening the DM makes its portal.
    let (status, body) =
        provision(&client, port, Method::GET, "/resolve_identifier/nobody", None).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    let (status, bob) =
        provision(&client, port, Method::GET, "/resolve_identifier/bob", None).await;
    assert_eq!(status, 200, "{bob}");
    assert_eq!(
        (bob["mxid"].as_str(), bob["name"].as_str()),
        (Some(ghost("bob").as_str()), Some("Bob"))
    );
    assert!(bob.get("dm_room_mxid").is_none(), "{bob}");
    let (status, dm) = provision(&client, port, Method::POST, "/create_dm/bob", None).await;
    assert_eq!(status, 200, "{dm}");
    let dm_room = dm["dm_room_mxid"].as_str().unwrap().to_owned();
    join(&client, &synapse, &dm_room, &alice).await;
    let (_, again) = provision(&client, port, Method::GET, "/resolve_identifier/bob", None).await;
    assert_eq!(again["dm_room_mxid"].as_str(), Some(dm_room.as_str()));
    let in_dm = members(&client, &synapse, &dm_room, &alice).await;
    assert_eq!(in_dm[&ghost("bob")]["content"]["membership"], "join");

    // A group with Carol and Dave.
    // Dave's ghost (made when he is resolved) by its Matrix ID stands for Dave.
    let (status, _) = provision(&client, port, Method::GET, "/resolve_identifier/dave", None).await;
    assert_eq!(status, 200);
    let body = json!({"name": {"name": "Team"}, "participants": ["carol", ghost("dave")]});
    let (status, group) =
        provision(&client, port, Method::POST, "/create_group/group", Some(body)).await;
    assert_eq!(status, 200, "{group}");
    let group_room = group["mxid"].as_str().unwrap().to_owned();
    let key = PortalKey::shared(group["id"].as_str().unwrap());
    join(&client, &synapse, &group_room, &alice).await;
    let (status, body) =
        provision(&client, port, Method::POST, "/create_group/group", Some(json!({}))).await;
    assert_eq!(status, 500, "{body}");

    // Both portals are in Alice's space, and name it as their parent.
    let space = ctx.login_space(&"alice".into()).await.unwrap().expect("the login has a space");
    join(&client, &synapse, space.as_str(), &alice).await;
    let mut expected = vec![dm_room.clone(), group_room.clone()];
    expected.sort();
    assert_eq!(space_rooms(&client, &synapse, space.as_str(), &alice).await, expected);
    let parent = state(&client, &synapse, &dm_room, &alice, "m.space.parent", space.as_str()).await;
    assert_eq!(parent["via"], json!(["localhost"]));

    // A chat the login is known to be in gets its portal with the first message: Alice is
    // invited, and the space holds it too.
    let known = PortalKey::shared("known");
    ctx.add_login_to_portal(&"alice".into(), &known).await.unwrap();
    let known_info = PortalInfo { name: Some("Known".into()), ..PortalInfo::default() };
    bridge.infos.lock().unwrap().insert("known".into(), known_info);
    let first = RemoteEvent::text("m1", person("carol"), "hello");
    ctx.queue_remote(&known, &first).await.unwrap().bridged().await.unwrap();
    let known_room = ctx.portal(&known).await.unwrap().unwrap().room_id.to_string();
    // Only an invited user may join this private room.
    join(&client, &synapse, &known_room, &alice).await;
    let mut expected = vec![dm_room.clone(), group_room.clone(), known_room.clone()];
    expected.sort();
    assert_eq!(space_rooms(&client, &synapse, space.as_str(), &alice).await, expected);

    // Members from the remote chat, in order: Dave becomes a moderator (and Alice an admin),
    // Gina and Erin join, Dave kicks Carol for spam, Erin leaves.
    let queue = async |event: RemoteEvent| {
        ctx.queue_remote(&key, &event).await.unwrap().bridged().await.unwrap()
    };
    let info = |members: Vec<ChatMember>| RemoteEvent::ChatInfo {
        name: None,
        topic: None,
        avatar: None,
        members,
        power_levels: None,
    };
    queue(RemoteEvent::ChatInfo {
        name: None,
        topic: Some("Moderated".into()),
        avatar: None,
        members: vec![
            ChatMember::joined(person("dave")).power_level(50),
            ChatMember::joined(person("alice").from_login("alice".into())).power_level(100),
            ChatMember::joined(person("gina")),
            ChatMember::joined(person("erin")),
            ChatMember::joined(person("hank")),
        ],
        power_levels: Some(ChatPowerLevels { events_default: Some(10), ..Default::default() }),
    })
    .await;
    queue(info(vec![
        ChatMember::kicked(person("carol"), Some(person("dave")), Some("spam".into())),
        ChatMember::left(person("erin")),
        // Gina may not kick: the bot does it for her.
        ChatMember::kicked(person("hank"), Some(person("gina")), None),
    ]))
    .await;
    let now = members(&client, &synapse, &group_room, &alice).await;
    let carol = &now[&ghost("carol")];
    assert_eq!(
        (carol["content"]["membership"].as_str(), carol["sender"].as_str()),
        (Some("leave"), Some(ghost("dave").as_str())),
        "a kick by Dave: {carol}"
    );
    assert_eq!(carol["content"]["reason"], "spam");
    let erin = &now[&ghost("erin")];
    assert_eq!(
        (erin["content"]["membership"].as_str(), erin["sender"].as_str()),
        (Some("leave"), Some(ghost("erin").as_str())),
        "a leave of her own: {erin}"
    );
    let hank = &now[&ghost("hank")];
    assert_eq!(
        (hank["content"]["membership"].as_str(), hank["sender"].as_str()),
        (Some("leave"), Some("@_t_bot:localhost")),
        "a kick by the bot: {hank}"
    );
    let levels = state(&client, &synapse, &group_room, &alice, "m.room.power_levels", "").await;
    assert_eq!(
        (levels["users"][ghost("dave")].as_i64(), levels["users"][ALICE].as_i64()),
        (Some(50), Some(100))
    );
    assert_eq!(levels["events_default"].as_i64(), Some(10));
    let topic = state(&client, &synapse, &group_room, &alice, "m.room.topic", "").await;
    assert_eq!(topic["topic"], "Moderated");

    // A resync: the chat is now Alice, Dave and Frank, renamed. Gina leaves, Frank joins.
    let resynced = PortalInfo {
        name: Some("Team renamed".into()),
        members: vec![
            ChatMember::joined(person("alice").from_login("alice".into())),
            ChatMember::joined(person("dave")),
            ChatMember::joined(person("frank")),
        ],
        ..PortalInfo::default()
    };
    bridge.infos.lock().unwrap().insert(key.chat.to_string(), resynced);
    say(&client, &synapse, &group_room, &alice, "!chats resync").await;
    let gina_left = async || {
        let now = members(&client, &synapse, &group_room, &alice).await;
        now[&ghost("gina")]["content"]["membership"] == "leave"
            && now.get(&ghost("frank")).is_some_and(|f| f["content"]["membership"] == "join")
    };
    assert!(wait_until_async(30, gina_left).await, "the resync command did nothing");
    // The same through the context: nothing is left to change.
    ctx.resync_portal(&key).await.unwrap().bridged().await.unwrap();
    let now = members(&client, &synapse, &group_room, &alice).await;
    let membership =
        |user: &str| now[&ghost(user)]["content"]["membership"].as_str().map(str::to_owned);
    assert_eq!(
        [membership("gina"), membership("frank"), membership("dave")],
        [Some("leave".into()), Some("join".into()), Some("join".into())]
    );
    assert_eq!(now[&ghost("gina")]["sender"].as_str(), Some(ghost("gina").as_str()));
    let name = state(&client, &synapse, &group_room, &alice, "m.room.name", "").await;
    assert_eq!(name["name"], "Team renamed");

    // From Matrix: Alice kicks Frank, and leaves nothing yet; the bridge is told a kick.
    let url = format!("{}/_matrix/client/v3/rooms/{}/kick", synapse.url, urlencode(&group_room));
    cs(&client, Method::POST, url, &alice, Some(json!({"user_id": ghost("frank")}))).await;
    let kicked = format!("{} Kicked", ghost("frank"));
    assert!(
        wait_until(30, || bridge.memberships.lock().unwrap().contains(&kicked)).await,
        "{:?}",
        bridge.memberships.lock().unwrap()
    );

    // Clean-up: a portal no login is in is deleted; the others stay.
    let alice_id: OwnedUserId = ALICE.try_into().unwrap();
    let orphan_key = PortalKey::shared("orphan");
    let orphan_info = PortalInfo { invite: vec![alice_id.clone()], ..PortalInfo::default() };
    let orphan = ctx.ensure_portal(&orphan_key, &orphan_info).await.unwrap();
    say(&client, &synapse, &dm_room, &alice, "!chats cleanup-portals").await;
    let store = ctx.store().clone();
    assert!(
        wait_until_async(30, async || store.portal(&orphan_key).await.unwrap().is_none()).await,
        "the orphan portal was not cleaned up"
    );
    assert!(store.portal(&key).await.unwrap().is_some());
    let bot: OwnedUserId = "@_t_bot:localhost".try_into().unwrap();
    assert!(
        wait_until_async(30, async || {
            store.membership(&orphan.room_id, &bot).await.unwrap()
                == Some(mxbridge::store::Membership::Leave)
        })
        .await,
        "the bot did not leave the orphan portal"
    );

    // Deleting the group: everyone is out, it leaves the space, its mappings are gone.
    say(&client, &synapse, &group_room, &alice, "!chats delete-portal").await;
    assert!(
        wait_until_async(30, async || store.portal(&key).await.unwrap().is_none()).await,
        "the group was not deleted"
    );
    let group_id: OwnedRoomId = group_room.as_str().try_into().unwrap();
    assert!(
        wait_until_async(30, async || {
            let mut left = Vec::new();
            for user in [ALICE.to_owned(), ghost("dave"), "@_t_bot:localhost".to_owned()] {
                let user: OwnedUserId = user.try_into().unwrap();
                left.push(store.membership(&group_id, &user).await.unwrap());
            }
            left.iter().all(|m| *m == Some(mxbridge::store::Membership::Leave))
        })
        .await,
        "members are still in the deleted portal"
    );
    assert!(store.logins_in_portal(&key).await.unwrap().is_empty());
    let mut expected = vec![dm_room.clone(), known_room.clone()];
    expected.sort();
    assert_eq!(space_rooms(&client, &synapse, space.as_str(), &alice).await, expected);

    // A linked room that is deleted keeps its people; the bot leaves.
    let url = format!("{}/_matrix/client/v3/createRoom", synapse.url);
    let body = json!({"preset": "private_chat", "invite": ["@_t_bot:localhost"]});
    let linked = cs(&client, Method::POST, url, &alice, Some(body)).await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let linked_id: OwnedRoomId = linked.as_str().try_into().unwrap();
    assert!(
        wait_until_async(30, async || {
            store.membership(&linked_id, &bot).await.unwrap()
                == Some(mxbridge::store::Membership::Join)
        })
        .await,
        "the bot never joined the room to link"
    );
    let linked_key = PortalKey::shared("linked");
    ctx.link_portal(&linked_id, &linked_key, &alice_id).await.unwrap();
    // With Alice's login in it, it is in her space until it is unlinked.
    ctx.add_login_to_portal(&"alice".into(), &linked_key).await.unwrap();
    assert!(space_rooms(&client, &synapse, space.as_str(), &alice).await.contains(&linked));
    assert!(ctx.unlink_portal(&linked_id, &alice_id).await.unwrap());
    assert!(!space_rooms(&client, &synapse, space.as_str(), &alice).await.contains(&linked));
    ctx.link_portal(&linked_id, &linked_key, &alice_id).await.unwrap();
    assert!(ctx.delete_portal(&linked_key, "unbridged").await.unwrap());
    let url =
        format!("{}/_matrix/client/v3/rooms/{}/joined_members", synapse.url, urlencode(&linked));
    let joined = cs(&client, Method::GET, url, &alice, None).await;
    let joined: Vec<&String> = joined["joined"].as_object().unwrap().keys().collect();
    assert_eq!(joined, [ALICE]);

    // From Matrix: Alice leaves the DM; the bridge is told a leave.
    let url = format!("{}/_matrix/client/v3/rooms/{}/leave", synapse.url, urlencode(&dm_room));
    cs(&client, Method::POST, url, &alice, Some(json!({}))).await;
    let left = format!("{ALICE} Left");
    assert!(wait_until(30, || bridge.memberships.lock().unwrap().contains(&left)).await);

    // With a double puppet, Alice joins a new DM herself, and leaves it herself when her
    // login leaves the chat.
    store
        .set_double_puppet_token(&alice_id, Some(&mxbridge::Secret::new(alice.clone())))
        .await
        .unwrap();
    let (status, dm) = provision(&client, port, Method::POST, "/create_dm/dave", None).await;
    assert_eq!(status, 200, "{dm}");
    let dave_room = dm["dm_room_mxid"].as_str().unwrap().to_owned();
    let mine = &members(&client, &synapse, &dave_room, &alice).await[ALICE];
    assert_eq!(
        (mine["content"]["membership"].as_str(), mine["sender"].as_str()),
        (Some("join"), Some(ALICE))
    );
    let dave_key = PortalKey::for_login("dm-dave", "alice".into());
    let leave = info(vec![ChatMember::left(person("alice").from_login("alice".into()))]);
    ctx.queue_remote(&dave_key, &leave).await.unwrap().bridged().await.unwrap();
    let dave_room_id: OwnedRoomId = dave_room.as_str().try_into().unwrap();
    assert_eq!(
        store.membership(&dave_room_id, &alice_id).await.unwrap(),
        Some(mxbridge::store::Membership::Leave)
    );
    let mine = &members(&client, &synapse, &dave_room, &alice).await[ALICE];
    assert_eq!(
        (mine["content"]["membership"].as_str(), mine["sender"].as_str()),
        (Some("leave"), Some(ALICE))
    );
    assert!(store.logins_in_portal(&dave_key).await.unwrap().is_empty());

    // A chat deleted on the network: the bot says so, and the portal is deleted.
    let gone_key = PortalKey::shared("gone");
    let gone_info = PortalInfo { invite: vec![alice_id.clone()], ..PortalInfo::default() };
    let gone = ctx.ensure_portal(&gone_key, &gone_info).await.unwrap();
    join(&client, &synapse, gone.room_id.as_str(), &alice).await;
    let sent = ctx.queue_remote(&gone_key, &RemoteEvent::ChatDelete).await.unwrap();
    assert_eq!(sent.bridged().await.unwrap().len(), 1, "the notice");
    assert!(store.portal(&gone_key).await.unwrap().is_none());
    let url = format!(
        "{}/_matrix/client/v3/rooms/{}/messages?dir=b&limit=20",
        synapse.url,
        urlencode(gone.room_id.as_str())
    );
    let page = cs(&client, Method::GET, url, &alice, None).await;
    let chunk = page["chunk"].as_array().unwrap();
    assert!(chunk.iter().any(|e| {
        e["content"]["body"].as_str().is_some_and(|b| b.contains("deleted on the remote network"))
    }));
    // Alice is removed by the bot (the last she sees of the room).
    assert!(chunk.iter().any(|e| e["type"] == "m.room.member"
        && e["state_key"] == ALICE
        && e["sender"] == "@_t_bot:localhost"
        && e["content"]["membership"] == "leave"));

    // Logging out takes the login's space down; its DMs are then without logins and cleaned up.
    let (status, body) = provision(&client, port, Method::POST, "/logout/alice", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        wait_until_async(30, async || {
            store.membership(&space, &alice_id).await.unwrap()
                == Some(mxbridge::store::Membership::Leave)
        })
        .await,
        "Alice is still in the space of her login"
    );
    let mut cleaned = ctx.cleanup_portals().await.unwrap();
    cleaned.sort();
    let bob_key = PortalKey::for_login("dm-bob", "alice".into());
    assert_eq!(cleaned, [bob_key, dave_key, known]);

    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
