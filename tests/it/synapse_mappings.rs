//! Mappings both ways against a real Synapse with a human client: remote messages, a thread,
//! an edit, a reaction and its removal, a delete and a read receipt reach the room on their
//! targets; the human's message, edit, reactions, redaction and room name reach the bridge
//! with the remote IDs of what they are about; an upgraded room takes the portal with it.

use std::{sync::Mutex, time::Duration};

use mxbridge::{
    AppService, Bridge, BridgeResult, Config, Context, Delivery, MatrixChatInfo, MatrixEdit,
    MatrixMessage, MatrixReaction, MatrixRedaction, PortalKey, Registration, RemoteEvent,
    RemotePart, RemoteSender, event::ChatInfoChange,
};
use ruma::events::room::message::RoomMessageEventContent;
use serde_json::{Value, json};

use crate::{
    common::{config_yaml, fresh_database, http, registration_yaml},
    synapse::{Synapse, create_room_with_bot, cs, enabled, urlencode},
};

const BOT: &str = "@_t_bot:localhost";

/// A bridge that remembers what reached it from Matrix, and gives each message the remote ID
/// `mx-<n>`.
#[derive(Debug)]
struct Mirror {
    seen: Mutex<Vec<String>>,
}

impl Mirror {
    fn note(&self, line: String) {
        self.seen.lock().unwrap().push(line);
    }
}

#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
struct MirrorConfig {}

impl Bridge for Mirror {
    type Config = MirrorConfig;
    const NAME: &'static str = "mirror";

    async fn create(_: MirrorConfig, _: Context) -> BridgeResult<Self> {
        Ok(Self { seen: Mutex::default() })
    }

    async fn handle_message(&self, msg: &MatrixMessage) -> BridgeResult<Delivery> {
        let n = self.seen.lock().unwrap().len();
        self.note(format!("message {}", msg.content.body()));
        Ok(Delivery::sent(format!("mx-{n}")))
    }

    async fn handle_edit(&self, edit: &MatrixEdit) -> BridgeResult<Delivery> {
        self.note(format!("edit {} {}", edit.target.remote.id, edit.new_content.body()));
        Ok(Delivery::Done)
    }

    async fn handle_reaction(&self, reaction: &MatrixReaction) -> BridgeResult<Delivery> {
        self.note(format!("reaction {} {}", reaction.target.remote.id, reaction.key));
        Ok(Delivery::Done)
    }

    async fn handle_redaction(&self, redaction: &MatrixRedaction) -> BridgeResult<Delivery> {
        self.note(format!("redaction {}", redaction.target.remote.id));
        Ok(Delivery::Done)
    }

    async fn handle_chat_info(&self, info: &MatrixChatInfo) -> BridgeResult<Delivery> {
        if let ChatInfoChange::Name(name) = &info.change {
            self.note(format!("name {}", name.as_deref().unwrap_or("")));
        }
        Ok(Delivery::Done)
    }
}

async fn event(client: &reqwest::Client, hs: &str, room: &str, token: &str, id: &str) -> Value {
    let url = format!("{hs}/_matrix/client/v3/rooms/{}/event/{}", urlencode(room), urlencode(id));
    cs(client, reqwest::Method::GET, url, token, None).await
}

async fn send(
    client: &reqwest::Client,
    hs: &str,
    room: &str,
    token: &str,
    kind: &str,
    content: Value,
) -> String {
    let txn = mxbridge::Secret::generate(12);
    let url =
        format!("{hs}/_matrix/client/v3/rooms/{}/send/{kind}/{}", urlencode(room), txn.expose());
    let sent = cs(client, reqwest::Method::PUT, url, token, Some(content)).await;
    sent["event_id"].as_str().unwrap().to_owned()
}

async fn wait_seen(bridge: &Mirror, line: &str) {
    for _ in 0..150 {
        if bridge.seen.lock().unwrap().iter().any(|l| l == line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the bridge never saw {line:?}: {:?}", bridge.seen.lock().unwrap());
}

/// Queues a remote event and waits until it is in the room; returns the events it sent.
async fn bridged(ctx: &Context, key: &PortalKey, event: RemoteEvent) -> Vec<String> {
    let queued = ctx.queue_remote(key, &event).await.unwrap();
    let sent = tokio::time::timeout(Duration::from_secs(30), queued.bridged()).await;
    sent.expect("bridged in time").unwrap().iter().map(ToString::to_string).collect()
}

fn part(body: &str) -> Vec<RemotePart> {
    vec![RemotePart { id: Default::default(), content: RoomMessageEventContent::text_plain(body) }]
}

#[tokio::test]
async fn edits_reactions_deletes_threads_and_receipts_map_both_ways() {
    if !enabled() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let registration = registration_yaml(&format!("http://127.0.0.1:{port}"));
    let synapse = Synapse::start(&registration);
    let hs = synapse.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("sqlite", dir.path()).await;
    let config: Config<MirrorConfig> =
        Config::from_yaml(&config_yaml(&hs, port, &db.url, "{}")).unwrap();
    let service =
        AppService::<Mirror>::new(config, Registration::from_yaml(&registration).unwrap())
            .await
            .unwrap();
    let ctx = service.context().clone();
    let bridge = service.bridge().clone();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(service.run(listener, async move {
        let _ = stopped.await;
    }));
    let client = http();
    let alice = synapse.register("alice");

    let body = json!({"preset": "private_chat", "invite": [BOT]});
    let room = create_room_with_bot(&client, &hs, &alice, body).await;
    let key = PortalKey::shared("chat");
    let room_id: ruma::OwnedRoomId = room.parse().unwrap();
    let alice_id = ruma::user_id!("@alice:localhost");
    ctx.link_portal(&room_id, &key, alice_id).await.unwrap();

    // Remote → Matrix.
    let bob = RemoteSender::named("bob", "Bob");
    let carol = RemoteSender::named("carol", "Carol");
    let m1 = bridged(&ctx, &key, RemoteEvent::text("r1", bob.clone(), "hello")).await;
    let threaded = RemoteEvent::Message {
        id: "r2".into(),
        sender: carol.clone(),
        timestamp: None,
        parts: part("in a thread"),
        reply_to: None,
        thread_root: Some("r1".into()),
        echo_of: None,
    };
    let m2 = bridged(&ctx, &key, threaded).await;
    let reaction = RemoteEvent::Reaction {
        target: "r1".into(),
        sender: carol.clone(),
        key: "👍".into(),
        timestamp: None,
    };
    let react = bridged(&ctx, &key, reaction).await;
    let edit = RemoteEvent::Edit {
        target: "r1".into(),
        sender: bob.clone(),
        timestamp: None,
        parts: part("hello (edited)"),
    };
    let edited = bridged(&ctx, &key, edit).await;
    bridged(&ctx, &key, RemoteEvent::ReadReceipt { sender: bob.clone(), up_to: "r2".into() }).await;

    let first = event(&client, &hs, &room, &alice, &m1[0]).await;
    assert_eq!(
        (first["sender"].as_str(), first["content"]["body"].as_str()),
        (Some("@_t_bob:localhost"), Some("hello"))
    );
    let second = event(&client, &hs, &room, &alice, &m2[0]).await;
    assert_eq!(second["content"]["m.relates_to"]["rel_type"], "m.thread", "{second}");
    assert_eq!(second["content"]["m.relates_to"]["event_id"], m1[0].as_str());
    let r = event(&client, &hs, &room, &alice, &react[0]).await;
    assert_eq!(r["sender"], "@_t_carol:localhost");
    assert_eq!(
        r["content"]["m.relates_to"],
        json!({"rel_type": "m.annotation", "event_id": m1[0], "key": "👍"})
    );
    let e = event(&client, &hs, &room, &alice, &edited[0]).await;
    assert_eq!(e["content"]["m.new_content"]["body"], "hello (edited)");
    assert_eq!(e["content"]["m.relates_to"], json!({"rel_type": "m.replace", "event_id": m1[0]}));
    // Bob's read receipt is on the thread's message.
    let url = format!("{hs}/_matrix/client/v3/sync?timeout=0");
    let sync = cs(&client, reqwest::Method::GET, url, &alice, None).await;
    let receipts: Vec<&Value> = sync["rooms"]["join"][&room]["ephemeral"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.receipt")
        .collect();
    assert!(
        receipts.iter().any(|r| r["content"][&m2[0]]["m.read"]["@_t_bob:localhost"].is_object()),
        "{receipts:?}"
    );
    // The reaction taken back and the thread's message deleted: both redacted.
    let removal = RemoteEvent::ReactionRemove {
        target: "r1".into(),
        sender: carol.clone(),
        key: "👍".into(),
    };
    bridged(&ctx, &key, removal).await;
    bridged(&ctx, &key, RemoteEvent::Delete { target: "r2".into(), sender: carol.clone() }).await;
    assert_eq!(event(&client, &hs, &room, &alice, &react[0]).await["content"], json!({}));
    assert_eq!(event(&client, &hs, &room, &alice, &m2[0]).await["content"], json!({}));

    // Matrix → remote: each reaches its handler with the remote ID of its target.
    let mine = send(
        &client,
        &hs,
        &room,
        &alice,
        "m.room.message",
        json!({"msgtype": "m.text", "body": "from matrix"}),
    )
    .await;
    wait_seen(&bridge, "message from matrix").await;
    let remote_id = {
        let seen = bridge.seen.lock().unwrap();
        format!("mx-{}", seen.iter().position(|l| l == "message from matrix").unwrap())
    };
    send(
        &client,
        &hs,
        &room,
        &alice,
        "m.room.message",
        json!({
            "msgtype": "m.text", "body": "* from matrix!",
            "m.new_content": {"msgtype": "m.text", "body": "from matrix!"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": mine},
        }),
    )
    .await;
    wait_seen(&bridge, &format!("edit {remote_id} from matrix!")).await;
    let annotation = |target: &str| json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": "🎉"}});
    send(&client, &hs, &room, &alice, "m.reaction", annotation(&mine)).await;
    wait_seen(&bridge, &format!("reaction {remote_id} 🎉")).await;
    send(&client, &hs, &room, &alice, "m.reaction", annotation(&m1[0])).await;
    wait_seen(&bridge, "reaction r1 🎉").await;
    let url = format!(
        "{hs}/_matrix/client/v3/rooms/{}/redact/{}/r-1",
        urlencode(&room),
        urlencode(&mine)
    );
    cs(&client, reqwest::Method::PUT, url, &alice, Some(json!({}))).await;
    wait_seen(&bridge, &format!("redaction {remote_id}")).await;
    let url = format!("{hs}/_matrix/client/v3/rooms/{}/state/m.room.name/", urlencode(&room));
    cs(&client, reqwest::Method::PUT, url, &alice, Some(json!({"name": "Renamed"}))).await;
    wait_seen(&bridge, "name Renamed").await;

    // The room is upgraded: the new room is invite-only, so the bot follows once Alice invites
    // it, and the portal moves with it.
    let url = format!("{hs}/_matrix/client/v3/rooms/{}/upgrade", urlencode(&room));
    let upgraded =
        cs(&client, reqwest::Method::POST, url, &alice, Some(json!({"new_version": "12"}))).await;
    let new_room: ruma::OwnedRoomId =
        upgraded["replacement_room"].as_str().unwrap().parse().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ctx.portal(&key).await.unwrap().unwrap().room_id, room_id, "not before the invite");
    let url = format!("{hs}/_matrix/client/v3/rooms/{}/invite", urlencode(new_room.as_str()));
    cs(&client, reqwest::Method::POST, url, &alice, Some(json!({"user_id": BOT}))).await;
    let mut moved = false;
    for _ in 0..150 {
        if ctx.portal(&key).await.unwrap().is_some_and(|p| p.room_id == new_room) {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(moved, "the portal stayed in the old room");
    let later = bridged(&ctx, &key, RemoteEvent::text("r3", bob, "in the new room")).await;
    let there = event(&client, &hs, new_room.as_str(), &alice, &later[0]).await;
    assert_eq!(there["content"]["body"], "in the new room");

    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
