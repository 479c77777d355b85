//! End to end against a real Synapse (PyPI `matrix-synapse`, pinned in `scripts/synapse.sh`) on
//! 127.0.0.1, with a real client. Runs when `MXBRIDGE_TEST_SYNAPSE=1`; `.ci/run` sets it, and
//! then a Synapse that cannot be installed or started fails the test.

use std::{path::PathBuf, process::Command, time::Duration};

use serde_json::{Value, json};

use crate::common::{
    AS_TOKEN, Running, fresh_database, http, registration_yaml, wait_until, wait_until_async,
};

/// A Synapse started for one test, stopped (by its PID, through the script) when dropped.
pub struct Synapse {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub url: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/synapse.sh")
}

impl Synapse {
    /// Starts Synapse with the given registration YAML.
    pub fn start(registration: &str) -> Self {
        Self::start_with(&[registration])
    }

    /// Starts Synapse with several registrations (the bridge's first).
    pub fn start_with(registrations: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for (n, registration) in registrations.iter().enumerate() {
            let name = if n == 0 { "registration.yaml".to_owned() } else { format!("reg{n}.yaml") };
            let reg = dir.path().join(name);
            std::fs::write(&reg, registration).unwrap();
            files.push(reg);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir.path().join("hs"))
            .arg(port.to_string())
            .args(&files)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "Synapse did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir, port, url: format!("http://127.0.0.1:{port}") }
    }

    /// Stops Synapse and starts it again on the same directory, port and registration (its
    /// database, keys and secrets are kept).
    pub fn restart(&self) {
        let hs = self.dir.path().join("hs");
        let out = Command::new("bash").arg(script()).arg("stop").arg(&hs).output().unwrap();
        assert!(out.status.success(), "stop failed: {}", String::from_utf8_lossy(&out.stderr));
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(&hs)
            .arg(self.port.to_string())
            .arg(self.dir.path().join("registration.yaml"))
            .output()
            .unwrap();
        assert!(out.status.success(), "restart failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Registers a normal user; returns the access token.
    pub fn register(&self, user: &str) -> String {
        let out = Command::new("bash")
            .arg(script())
            .args(["register"])
            .arg(self.dir.path().join("hs"))
            .args([self.port.to_string().as_str(), user, "correct-horse-battery"])
            .output()
            .unwrap();
        assert!(out.status.success(), "register failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["access_token"].as_str().unwrap().to_owned()
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ =
            Command::new("bash").arg(script()).arg("stop").arg(self.dir.path().join("hs")).output();
    }
}

pub fn enabled() -> bool {
    if std::env::var("MXBRIDGE_TEST_SYNAPSE").is_ok_and(|v| v == "1") {
        true
    } else {
        eprintln!("skipped: set MXBRIDGE_TEST_SYNAPSE=1 to run the Synapse suite");
        false
    }
}

/// A small Client-Server call with a token; panics with the body on a non-2xx answer.
pub async fn cs(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> Value {
    let mut req = client.request(method, &url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    assert!(status.is_success(), "{url}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

#[tokio::test]
async fn synapse_pings_us_and_a_human_message_reaches_the_handler_once() {
    if !enabled() {
        return;
    }
    let (synapse, app, _dir) = start_with_synapse().await;
    let client = http();
    let hs = &synapse.url;

    // The bridge's own startup ping succeeds first; then Synapse pings the appservice on our
    // behalf: it must reach us with the hs_token.
    assert!(wait_until(30, || app.health.homeserver_ok()).await, "startup ping never succeeded");
    let pong = cs(
        &client,
        reqwest::Method::POST,
        format!("{hs}/_matrix/client/v1/appservice/test/ping"),
        AS_TOKEN,
        Some(json!({"transaction_id": "mxb-ping-1"})),
    )
    .await;
    assert!(pong["duration_ms"].is_u64(), "{pong}");
    let (_, ping_id) = app.health.last_homeserver_ping().expect("the ping reached the appservice");
    assert_eq!(ping_id.as_deref(), Some("mxb-ping-1"));

    // A human creates a room and invites a ghost; the ghost joins through the appservice.
    let alice = synapse.register("alice");
    let ghost = "@_t_ghost:localhost";
    cs(
        &client,
        reqwest::Method::POST,
        format!("{hs}/_matrix/client/v3/register"),
        AS_TOKEN,
        Some(json!({
            "type": "m.login.application_service",
            "username": "_t_ghost",
            "inhibit_login": true,
        })),
    )
    .await;
    let room = cs(
        &client,
        reqwest::Method::POST,
        format!("{hs}/_matrix/client/v3/createRoom"),
        &alice,
        Some(json!({"preset": "private_chat", "invite": [ghost]})),
    )
    .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let room_enc = urlencode(&room);
    cs(
        &client,
        reqwest::Method::POST,
        format!("{hs}/_matrix/client/v3/rooms/{room_enc}/join?user_id={}", urlencode(ghost)),
        AS_TOKEN,
        Some(json!({})),
    )
    .await;

    // The human speaks; the bridge's handler sees the message exactly once.
    let sent = cs(
        &client,
        reqwest::Method::PUT,
        format!("{hs}/_matrix/client/v3/rooms/{room_enc}/send/m.room.message/t1"),
        &alice,
        Some(json!({"msgtype": "m.text", "body": "hello ghost"})),
    )
    .await;
    let event_id = sent["event_id"].as_str().unwrap().to_owned();
    assert!(
        wait_until(30, || app.bridge.handled_ids().contains(&event_id)).await,
        "the message never reached the handler; handled: {:?}",
        app.bridge.handled_ids()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(app.bridge.calls.lock().unwrap()[&event_id], 1, "handled once");
    // The state cache saw the ghost's join from the transaction before the handler ran.
    assert_eq!(
        app.store
            .membership(room.as_str().try_into().unwrap(), ghost.try_into().unwrap())
            .await
            .unwrap(),
        Some(mxbridge::store::Membership::Join)
    );

    // Operations: the startup ping made the bridge ready, and the metrics moved.
    let ready = client.get(app.url("/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let state: Value =
        client.get(app.url("/health/state")).send().await.unwrap().json().await.unwrap();
    assert_eq!(state["bridge"]["state"], "running", "{state}");
    let metrics = client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let value = |prefix: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
    };
    assert!(value("mxbridge_transactions_total{outcome=\"stored\"}") >= 1.0);
    assert_eq!(value("mxbridge_events_total{type=\"m.room.message\",outcome=\"ok\"}"), 1.0);
    let ping_route = "/_matrix/client/v1/appservice/{appservice_id}/ping";
    assert!(
        value(&format!("mxbridge_requests_total{{route=\"{ping_route}\",status=\"200\"}}")) >= 1.0
    );
    assert_eq!(value("mxbridge_inbox_pending"), 0.0);
    app.stop().await;
}

/// A Synapse whose registration points at a recording bridge that already listens.
pub async fn start_with_synapse() -> (Synapse, Running, tempfile::TempDir) {
    start_with_synapse_bridge("{}").await
}

/// As [`start_with_synapse`], with the recording bridge's config (YAML).
pub async fn start_with_synapse_bridge(bridge: &str) -> (Synapse, Running, tempfile::TempDir) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let as_url = format!("http://{}", listener.local_addr().unwrap());
    let registration = registration_yaml(&as_url);
    let synapse = Synapse::start(&registration);
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("sqlite", dir.path()).await;
    let app = Running::start_on(listener, &synapse.url, &db, bridge, &registration).await;
    (synapse, app, dir)
}

/// Creates a room as `token`'s user with `body` (which invites the test bot) and waits until
/// the bot joined it; returns the room ID.
pub async fn create_room_with_bot(
    client: &reqwest::Client,
    hs: &str,
    token: &str,
    body: Value,
) -> String {
    const BOT: &str = "@_t_bot:localhost";
    let url = format!("{hs}/_matrix/client/v3/createRoom");
    let room = cs(client, reqwest::Method::POST, url, token, Some(body)).await;
    let room = room["room_id"].as_str().unwrap().to_owned();
    for _ in 0..100 {
        let url = format!("{hs}/_matrix/client/v3/rooms/{}/joined_members", urlencode(&room));
        if cs(client, reqwest::Method::GET, url, token, None).await["joined"][BOT].is_object() {
            return room;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the bot did not join {room}");
}

pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn ghost_registers_joins_invite_only_room_and_speaks_with_massaged_timestamps() {
    use ruma::{
        MilliSecondsSinceUnixEpoch, OwnedRoomId, UInt,
        events::room::message::RoomMessageEventContentWithoutRelation,
    };
    if !enabled() {
        return;
    }
    let (synapse, app, _dir) = start_with_synapse().await;
    let ctx = app.bridge.ctx.clone();
    let client = http();
    let hs = &synapse.url;
    let alice = synapse.register("alice");

    // An invite-only room a human created, with the bot invited (not the ghost).
    let room: OwnedRoomId = cs(
        &client,
        reqwest::Method::POST,
        format!("{hs}/_matrix/client/v3/createRoom"),
        &alice,
        Some(json!({"preset": "private_chat", "invite": ["@_t_bot:localhost"]})),
    )
    .await["room_id"]
        .as_str()
        .unwrap()
        .try_into()
        .unwrap();
    ctx.bot().ensure_joined(&room).await.unwrap();

    let ghost_id: ruma::OwnedUserId = "@_t_speaker:localhost".try_into().unwrap();
    let ghost = ctx.intent(&ghost_id).unwrap();
    ghost.ensure_registered().await.unwrap();
    ghost.set_displayname("Speaker Ghost").await.unwrap();
    // Not invited: the join is refused, the bot invites, the ghost joins.
    assert!(ghost.ensure_joined(&room).await.unwrap());
    assert!(!ghost.ensure_joined(&room).await.unwrap(), "second call is a cache hit");

    let ts = |ms: u64| MilliSecondsSinceUnixEpoch(UInt::new(ms).unwrap());
    let text =
        ghost.send_text(&room, "from the remote network").at(ts(1_600_000_000_000)).await.unwrap();
    let new_content =
        RoomMessageEventContentWithoutRelation::text_plain("edited on the remote network");
    let edit = ghost.edit(&room, &text, new_content).at(ts(1_600_000_000_100)).await.unwrap();
    let reaction = ghost.react(&room, &text, "👍").at(ts(1_600_000_000_200)).await.unwrap();
    let redaction =
        ghost.redact(&room, &reaction).reason("unreacted").at(ts(1_600_000_000_300)).await.unwrap();
    let upload = ghost.upload(b"hello media".to_vec()).content_type("text/plain");
    let mxc = upload.filename("hello.txt").await.unwrap();
    let (bytes, _) = ctx.client().download(&mxc).await.unwrap();
    assert_eq!(bytes, b"hello media");

    // The human sees every event with the ghost as sender and the remote timestamps.
    let room_enc = urlencode(room.as_str());
    let get = |id: &ruma::OwnedEventId| {
        let url =
            format!("{hs}/_matrix/client/v3/rooms/{room_enc}/event/{}", urlencode(id.as_str()));
        cs(&client, reqwest::Method::GET, url, &alice, None)
    };
    let t = get(&text).await;
    assert_eq!(
        (t["sender"].as_str(), t["origin_server_ts"].as_u64()),
        (Some(ghost_id.as_str()), Some(1_600_000_000_000))
    );
    let e = get(&edit).await;
    assert_eq!(e["content"]["m.relates_to"]["rel_type"], "m.replace");
    assert_eq!(e["content"]["m.new_content"]["body"], "edited on the remote network");
    assert_eq!(e["origin_server_ts"].as_u64(), Some(1_600_000_000_100));
    let r = get(&reaction).await;
    assert_eq!(r["sender"], ghost_id.as_str());
    assert!(r["content"].as_object().unwrap().is_empty(), "the reaction was redacted: {r}");
    let d = get(&redaction).await;
    assert_eq!(
        (d["type"].as_str(), d["sender"].as_str()),
        (Some("m.room.redaction"), Some(ghost_id.as_str()))
    );
    let member = cs(
        &client,
        reqwest::Method::GET,
        format!(
            "{hs}/_matrix/client/v3/rooms/{room_enc}/state/m.room.member/{}",
            urlencode(ghost_id.as_str())
        ),
        &alice,
        None,
    )
    .await;
    assert_eq!(member["membership"], "join");
    assert_eq!(member["displayname"], "Speaker Ghost");
    app.stop().await;
}

/// A human's room that the bot joins later: the cache learns who was there first (with their
/// display names) from the state fetched at the join, so a DM with the bot is its management
/// room and a command needs no prefix. Inviting someone already there is not an error.
#[tokio::test]
async fn a_dm_a_human_opened_with_the_bot_takes_commands_and_the_cache_knows_its_members() {
    use mxbridge::store::{MemberRow, Membership};
    use ruma::{
        OwnedRoomId, UserId,
        api::{client::membership::invite_user, error::ErrorKind},
    };
    if !enabled() {
        return;
    }
    let (synapse, app, _dir) = start_with_synapse_bridge("{commands: true}").await;
    let ctx = app.bridge.ctx.clone();
    let client = http();
    let hs = &synapse.url;
    let alice = synapse.register("alice");
    let alice_id = <&UserId>::try_from("@alice:localhost").unwrap();
    let bob_id = <&UserId>::try_from("@bob:localhost").unwrap();
    let bot_id = <&UserId>::try_from("@_t_bot:localhost").unwrap();
    let bob = synapse.register("bob");
    let put = reqwest::Method::PUT;
    let name_url =
        |user: &str| format!("{hs}/_matrix/client/v3/profile/{}/displayname", urlencode(user));
    cs(
        &client,
        put.clone(),
        name_url("@alice:localhost"),
        &alice,
        Some(json!({"displayname": "Alice Human"})),
    )
    .await;

    // Alice opens a DM with the bot; bob joined it before the bot did.
    let room: OwnedRoomId = cs(
        &client,
        reqwest::Method::POST,
        format!("{hs}/_matrix/client/v3/createRoom"),
        &alice,
        Some(json!({"preset": "trusted_private_chat", "is_direct": true,
                    "invite": ["@_t_bot:localhost", "@bob:localhost"]})),
    )
    .await["room_id"]
        .as_str()
        .unwrap()
        .try_into()
        .unwrap();
    let room_enc = urlencode(room.as_str());
    let join_url = format!("{hs}/_matrix/client/v3/rooms/{room_enc}/join");
    cs(&client, reqwest::Method::POST, join_url.clone(), &bob, Some(json!({}))).await;
    // The bot accepts the invite (pushed to the appservice) and fetches the room's members.
    let store = app.store.clone();
    let bot_joined = wait_until_async(30, async || {
        store.membership(&room, bot_id).await.unwrap() == Some(Membership::Join)
            && store.members_fetched(&room).await.unwrap()
            && store.members_with(&room, Membership::Join).await.unwrap().len() == 3
    })
    .await;
    assert!(bot_joined, "the bot did not join the DM, or does not know its members");
    let joined = store.members_with(&room, Membership::Join).await.unwrap();
    let alice_row = joined.iter().find(|m| m.user_id == alice_id);
    assert_eq!(
        alice_row.and_then(|m| m.displayname.as_deref()),
        Some("Alice Human"),
        "the cache has the human who was there first: {joined:?}"
    );
    assert_eq!(joined.len(), 3, "{joined:?}");
    assert_eq!(
        ctx.bot().display_name(&room, alice_id).await.unwrap().as_deref(),
        Some("Alice Human")
    );

    // Bob leaves: the bot and alice are the DM's two members, so `help` needs no prefix.
    let leave_url = format!("{hs}/_matrix/client/v3/rooms/{room_enc}/leave");
    cs(&client, reqwest::Method::POST, leave_url, &bob, Some(json!({}))).await;
    let bob_left = wait_until_async(30, async || {
        store.membership(&room, bob_id).await.unwrap() == Some(Membership::Leave)
    })
    .await;
    assert!(bob_left, "bob's leave was not pushed");
    let send = |txn: &str, body: &str| {
        let url = format!("{hs}/_matrix/client/v3/rooms/{room_enc}/send/m.room.message/{txn}");
        cs(&client, put.clone(), url, &alice, Some(json!({"msgtype": "m.text", "body": body})))
    };
    send("h1", "help").await;
    send("p1", "ping").await;
    let messages_url = format!("{hs}/_matrix/client/v3/rooms/{room_enc}/messages?dir=b&limit=50");
    let mut notices = Vec::new();
    for _ in 0..150 {
        let page = cs(&client, reqwest::Method::GET, messages_url.clone(), &alice, None).await;
        notices = page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["sender"] == "@_t_bot:localhost" && e["content"]["msgtype"] == "m.notice")
            .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
            .collect();
        if notices.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(notices.iter().any(|n| n.contains("ping")), "no help from the bot: {notices:?}");
    assert!(notices.iter().any(|n| n == "pong to @alice:localhost"), "no pong: {notices:?}");

    // Inviting alice, who is in the room: with `check_cache` nothing is sent while the cache
    // knows; Synapse's refusal when it does not is understood.
    let bot = ctx.bot();
    assert!(!bot.invite(&room, alice_id).check_cache().await.unwrap());
    let invite = invite_user::v3::Request::new(
        room.clone(),
        invite_user::v3::InviteUserId::new(alice_id.to_owned()).into(),
    );
    let refused = ctx.client().send(invite, None).await.unwrap_err();
    assert_eq!(
        (refused.status().map(|s| s.as_u16()), refused.kind()),
        (Some(403), Some(&ErrorKind::Forbidden))
    );
    store.set_membership(MemberRow::new(&room, alice_id, Membership::Leave)).await.unwrap();
    assert!(!bot.invite(&room, alice_id).await.unwrap(), "already in the room: done");
    assert_eq!(store.membership(&room, alice_id).await.unwrap(), Some(Membership::Join));
    // Bob, who left, is invited once: Synapse takes a repeated invite, so a second one is sent
    // unless the cache is checked.
    let bob_id = <&UserId>::try_from("@bob:localhost").unwrap();
    assert!(bot.invite(&room, bob_id).await.unwrap());
    assert!(!bot.invite(&room, bob_id).check_cache().await.unwrap());
    assert!(bot.invite(&room, bob_id).await.unwrap());
    app.stop().await;
}

/// `ensure_power_level` in a portal the bot created (the homeserver's default room version,
/// where the bot as creator outranks every level) and in rooms of versions 10, 11 and 12 that a
/// human created and then gave the bot power in.
#[tokio::test]
async fn ghosts_are_raised_in_the_bots_portals_and_in_rooms_where_a_human_gave_the_bot_power() {
    use mxbridge::{PortalInfo, store::Membership};
    use ruma::{
        OwnedRoomId, RoomId,
        api::client::state::get_state_event_for_key,
        events::{StateEventType, room::power_levels::UserPowerLevel},
    };
    if !enabled() {
        return;
    }
    let (synapse, app, _dir) = start_with_synapse().await;
    let ctx = app.bridge.ctx.clone();
    let client = http();
    let hs = &synapse.url;
    let alice = synapse.register("alice");
    let bot_id = "@_t_bot:localhost";
    let level_of = async |room: &RoomId, user: &str| -> Option<i64> {
        let request = get_state_event_for_key::v3::Request::new(
            room.to_owned(),
            StateEventType::RoomPowerLevels,
            String::new(),
        );
        let levels = ctx.client().send(request, None).await.unwrap().event_or_content;
        let levels: Value = serde_json::from_str(levels.get()).unwrap();
        levels["users"][user].as_i64()
    };

    let portal = ctx
        .ensure_portal(
            &mxbridge::PortalKey::shared("chat-1"),
            &PortalInfo { name: Some("Portal".into()), ..Default::default() },
        )
        .await
        .unwrap();
    let request = get_state_event_for_key::v3::Request::new(
        portal.room_id.clone(),
        StateEventType::RoomCreate,
        String::new(),
    );
    let create = ctx.client().send(request, None).await.unwrap().event_or_content;
    let version: Value = serde_json::from_str(create.get()).unwrap();
    assert_eq!(version["room_version"], "12", "Synapse's default room version");
    assert_eq!(ctx.bot().power_level(&portal.room_id).await.unwrap(), UserPowerLevel::Infinite);
    let ghost_id: ruma::OwnedUserId = "@_t_raised:localhost".try_into().unwrap();
    let ghost = ctx.intent(&ghost_id).unwrap();
    ghost.ensure_registered().await.unwrap();
    assert!(ghost.ensure_power_level(&portal.room_id, 50).await.unwrap());
    assert!(!ghost.ensure_power_level(&portal.room_id, 50).await.unwrap());
    assert_eq!(level_of(&portal.room_id, ghost_id.as_str()).await, Some(50));
    assert_eq!(level_of(&portal.room_id, bot_id).await, None, "a creator is not listed");

    for version in ["10", "11", "12"] {
        let room: OwnedRoomId = cs(
            &client,
            reqwest::Method::POST,
            format!("{hs}/_matrix/client/v3/createRoom"),
            &alice,
            Some(json!({"preset": "private_chat", "room_version": version, "invite": [bot_id]})),
        )
        .await["room_id"]
            .as_str()
            .unwrap()
            .try_into()
            .unwrap();
        let store = app.store.clone();
        let joined = wait_until_async(30, async || {
            store.membership(&room, bot_id.try_into().unwrap()).await.unwrap()
                == Some(Membership::Join)
        })
        .await;
        assert!(joined, "v{version}: the bot did not accept the invite");
        // Not yet given power: the bot may not raise anyone.
        let err = ghost.ensure_power_level(&room, 50).await.unwrap_err();
        assert!(matches!(err, mxbridge::intent::IntentError::NotPermitted(_)), "v{version}: {err}");

        // Alice gives the bot power; the pushed event updates the cache.
        let room_enc = urlencode(room.as_str());
        let url = format!("{hs}/_matrix/client/v3/rooms/{room_enc}/state/m.room.power_levels/");
        let mut levels = cs(&client, reqwest::Method::GET, url.clone(), &alice, None).await;
        levels["users"][bot_id] = json!(100);
        cs(&client, reqwest::Method::PUT, url, &alice, Some(levels)).await;
        let bot = ctx.bot();
        let powered = wait_until_async(30, async || {
            bot.power_level(&room).await.unwrap() == UserPowerLevel::Int(100.into())
        })
        .await;
        assert!(powered, "v{version}: the power levels change was not pushed");
        assert!(ghost.ensure_power_level(&room, 50).await.unwrap(), "v{version}");
        assert_eq!(level_of(&room, ghost_id.as_str()).await, Some(50), "v{version}");
        let alice_level = level_of(&room, "@alice:localhost").await;
        assert_eq!(alice_level, (version != "12").then_some(100), "v{version}");
    }
    app.stop().await;
}

/// A real user's intent (their own token, found by logging in) joins with the bot's help and
/// speaks as them; the bot pins their message; a ghost joins with extra member content, its
/// profile filled in; a second leave counts as done.
#[tokio::test]
async fn a_real_user_speaks_as_themselves_and_pins_and_member_content_round_trip() {
    use mxbridge::store::Membership;
    use ruma::api::client::{
        room::create_room,
        session::login::v3::{LoginInfo, Password, Request as Login},
        uiaa::{MatrixUserIdentifier, UserIdentifier},
    };
    if !enabled() {
        return;
    }
    let (synapse, app, _dir) = start_with_synapse().await;
    let ctx = app.bridge.ctx.clone();
    let client = http();
    let hs = &synapse.url;
    let alice_id: ruma::OwnedUserId = "@alice:localhost".try_into().unwrap();
    let alice_token = synapse.register("alice");

    // The appservice fetched the versions at startup, and a password login gives a client.
    assert!(wait_until(10, || ctx.client().supported_versions_age().is_some()).await);
    let identifier = UserIdentifier::Matrix(MatrixUserIdentifier::new("alice".into()));
    let login =
        Login::new(LoginInfo::Password(Password::new(identifier, "correct-horse-battery".into())));
    let (logged_in, _) = ctx.client().login(None, login).await.unwrap();
    assert_eq!(logged_in.whoami().await.unwrap().user_id, alice_id);

    // A private room of the bot's; Alice is not invited: the bot helps her in.
    let room = ctx.bot().create_room(create_room::v3::Request::new()).await.unwrap();
    let alice = ctx.user(&alice_id, mxbridge::Secret::new(alice_token.clone()), None).unwrap();
    assert!(alice.is_real_user());
    assert!(alice.ensure_joined(&room).await.unwrap());
    let said = alice.send_text(&room, "sent from my phone").await.unwrap();
    let room_enc = urlencode(room.as_str());
    let url = format!("{hs}/_matrix/client/v3/rooms/{room_enc}/event/{}", urlencode(said.as_str()));
    let event = cs(&client, reqwest::Method::GET, url, &alice_token, None).await;
    assert_eq!(event["sender"], alice_id.as_str());

    let bot = ctx.bot();
    assert!(bot.pin(&room, &said).await.unwrap());
    assert!(!bot.pin(&room, &said).await.unwrap());
    assert_eq!(bot.pinned_events(&room).await.unwrap(), std::slice::from_ref(&said));

    let ghost_id: ruma::OwnedUserId = "@_t_extra:localhost".try_into().unwrap();
    let ghost = ctx.intent(&ghost_id).unwrap();
    ghost.ensure_registered().await.unwrap();
    ghost.set_displayname("Extra Ghost").await.unwrap();
    let mut extra = ruma::serde::JsonObject::new();
    extra.insert("com.example.bridged".into(), true.into());
    assert!(ghost.ensure_joined(&room).extra_content(extra).await.unwrap());
    let url = format!(
        "{hs}/_matrix/client/v3/rooms/{room_enc}/state/m.room.member/{}",
        urlencode(ghost_id.as_str())
    );
    let member = cs(&client, reqwest::Method::GET, url, &alice_token, None).await;
    assert_eq!(
        (&member["membership"], &member["displayname"], &member["com.example.bridged"]),
        (&json!("join"), &json!("Extra Ghost"), &json!(true))
    );
    let present = bot.members(&room, &[Membership::Join]).ignore_cache().await.unwrap();
    assert_eq!(present.len(), 3, "{present:?}");

    alice.leave(&room).await.unwrap();
    alice.leave(&room).await.unwrap();
    let other = bot.create_room(create_room::v3::Request::new()).await.unwrap();
    alice.leave(&other).await.unwrap();
    assert!(alice.leave(&other).raise_not_in_room().await.is_err());
    app.stop().await;
}
