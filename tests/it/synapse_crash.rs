//! A remote message the homeserver accepted, with the bridge killed (SIGKILL) before it
//! recorded the mapping, against a real Synapse: after the restart the room holds the message
//! once, the remote network's redelivery of it posts nothing, and its edit arrives as an edit.
//! Synapse restarts too in between, so it has forgotten the transaction IDs it saw: the bridge
//! finds its own send in the room.
//!
//! The bridge runs in a child process (see `crash.rs`); a proxy between it and Synapse passes
//! the first message send through, takes Synapse's answer, signals, and never answers the
//! bridge: the test kills the bridge then.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Body, extract::Request, http::StatusCode, response::Response};
use mxbridge::{
    PortalKey, RemoteEvent, RemotePart, RemoteSender,
    store::{PortalRow, Store},
};
use ruma::events::room::message::RoomMessageEventContent;
use serde_json::{Value, json};

use crate::{
    common::{fresh_database, http, registration_yaml},
    crash::{ChildSpec, free_port, spawn_child, wait_live},
    synapse::{Synapse, cs, enabled, urlencode},
};

/// A proxy to `target` that answers nothing for the first message send it passes on (after
/// `target` took it) and fires `tripped` instead.
async fn tripping_proxy(target: String) -> (String, tokio::sync::oneshot::Receiver<()>) {
    let (tx, tripped) = tokio::sync::oneshot::channel();
    let trip = Arc::new(Mutex::new(Some(tx)));
    let client = reqwest::Client::new();
    let app = Router::new().fallback(move |request: Request| {
        let (trip, client, target) = (trip.clone(), client.clone(), target.clone());
        async move {
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let mut out = client.request(parts.method.clone(), format!("{target}{path}"));
            for (name, value) in &parts.headers {
                if name != axum::http::header::HOST {
                    out = out.header(name, value);
                }
            }
            let answer = out.body(body).send().await.unwrap();
            let status = answer.status();
            let content_type = answer.headers().get(axum::http::header::CONTENT_TYPE).cloned();
            let bytes = answer.bytes().await.unwrap();
            let is_send = parts.method == axum::http::Method::PUT
                && parts.uri.path().contains("/send/m.room.message/");
            if is_send && status.is_success() {
                let first = trip.lock().unwrap().take();
                if let Some(tx) = first {
                    let _ = tx.send(());
                    std::future::pending::<()>().await;
                }
            }
            let mut response =
                Response::builder().status(StatusCode::from_u16(status.as_u16()).unwrap());
            if let Some(ct) = content_type {
                response = response.header(axum::http::header::CONTENT_TYPE, ct);
            }
            response.body(Body::from(bytes)).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, tripped)
}

/// The room's `m.room.message` events, oldest first.
async fn messages(client: &reqwest::Client, hs: &str, room: &str, token: &str) -> Vec<Value> {
    let url = format!("{hs}/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100", urlencode(room));
    let page = cs(client, reqwest::Method::GET, url, token, None).await;
    let mut events: Vec<Value> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .cloned()
        .collect();
    events.reverse();
    events
}

#[tokio::test]
async fn killed_between_a_send_and_its_mapping_the_room_holds_the_message_once() {
    if std::env::var("MXB_CRASH_CHILD").is_ok() || !enabled() {
        return;
    }
    let port = free_port();
    let registration = registration_yaml(&format!("http://127.0.0.1:{port}"));
    let synapse = Synapse::start(&registration);
    let hs = synapse.url.clone();
    let client = http();
    let alice = synapse.register("alice");
    let url = format!("{hs}/_matrix/client/v3/createRoom");
    let room =
        cs(&client, reqwest::Method::POST, url, &alice, Some(json!({"preset": "public_chat"})))
            .await["room_id"]
            .as_str()
            .unwrap()
            .to_owned();

    // The remote chat's portal is that room.
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("sqlite", dir.path()).await;
    {
        let store = Store::connect(&db).await.unwrap();
        let row = PortalRow {
            key: PortalKey::shared("chat"),
            room_id: Some(room.parse().unwrap()),
            name: None,
            topic: None,
            avatar_url: None,
            metadata: None,
        };
        store.upsert_portal(&row).await.unwrap();
        store.close().await;
    }
    let spec = |hs_url: String| ChildSpec {
        db_url: db.url.clone(),
        port,
        record_file: dir.path().join("handled.txt").display().to_string(),
        delay_ms: 0,
        hs_url,
    };
    let base = format!("http://127.0.0.1:{port}");
    let sender = RemoteSender::named("bob", "Bob");
    let message = RemoteEvent::text("m1", sender.clone(), "message 1");

    // First life: Synapse takes the send; the bridge dies before it hears so.
    let (proxy, tripped) = tripping_proxy(hs.clone()).await;
    let mut child = spawn_child(&spec(proxy));
    wait_live(&client, port).await;
    let queued = client.post(format!("{base}/remote/chat")).json(&message).send().await.unwrap();
    assert_eq!(queued.status(), 200, "queued and committed");
    tokio::time::timeout(Duration::from_secs(60), tripped)
        .await
        .expect("the send went out")
        .unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = messages(&client, &hs, &room, &alice).await;
    assert_eq!(before.len(), 1, "Synapse has the message: {before:?}");
    let original = before[0]["event_id"].as_str().unwrap().to_owned();
    synapse.restart();

    // Second life: the queued event is bridged again; the remote network also redelivers the
    // message (it never heard back), then edits it.
    let mut child = spawn_child(&spec(hs.clone()));
    wait_live(&client, port).await;
    let again = client.post(format!("{base}/remote/chat")).json(&message).send().await.unwrap();
    assert_eq!(again.status(), 200);
    let edit = RemoteEvent::Edit {
        target: "m1".into(),
        sender,
        timestamp: None,
        parts: vec![RemotePart {
            id: Default::default(),
            content: RoomMessageEventContent::text_plain("message 1 (edited)"),
        }],
    };
    let edited = client.post(format!("{base}/remote/chat")).json(&edit).send().await.unwrap();
    assert_eq!(edited.status(), 200);
    let mut after = Vec::new();
    for _ in 0..150 {
        after = messages(&client, &hs, &room, &alice).await;
        if after.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give a wrong second copy the time to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = if after.len() >= 2 { messages(&client, &hs, &room, &alice).await } else { after };
    assert_eq!(after.len(), 2, "the message once and its edit: {after:#?}");
    assert_eq!(after[0]["event_id"], original.as_str());
    assert_eq!(after[0]["content"]["body"], "message 1");
    assert_eq!(after[1]["content"]["m.new_content"]["body"], "message 1 (edited)");
    assert_eq!(
        after[1]["content"]["m.relates_to"],
        json!({"rel_type": "m.replace", "event_id": original})
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let store = Store::connect(&db).await.unwrap();
    assert_eq!(store.remote_queue_counts().await.unwrap(), (0, 0), "nothing left or parked");
    let parts = store.message_parts(&PortalKey::shared("chat"), &"m1".into()).await.unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].event_id.as_str(), original, "mapped to the one event");
}
