//! A room key the bridge acknowledged survives a SIGKILL: the bridge device's part of a
//! transaction is committed before the transaction is answered, so a key the homeserver will
//! never push again still decrypts its message after a restart. Against a real Synapse with a
//! nio human (see `synapse_e2ee.rs`), on SQLite and PostgreSQL.
//!
//! First the webhook bridge runs normally: its device exists and Alice's encrypted room works.
//! Then it runs in a child process (see `crash.rs`) whose homeserver URL is unreachable, so its
//! device cannot start and nothing is fed to it, while Synapse still pushes transactions to its
//! port. Alice starts a new megolm session and sends; once the transaction carrying the
//! to-device room key was answered (it is in `mx_crypto_inbox`), the child is killed. Started
//! normally again, the bridge must read the message: a bridge that kept that input in memory
//! only never gets the key.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    common::fresh_database,
    crash::{WebhookChildSpec, free_port, spawn_webhook_child, wait_live},
    synapse::{Synapse, enabled},
    synapse_e2ee::{
        BOT, CI_GHOST, ENCRYPTION, HookRoom, crypto_registration, hook_room, outgoing_message,
        post_hook, wait_for_bridge_device,
    },
    webhook::start_bridge_with,
};

/// The bridge device's inputs waiting in `mx_crypto_inbox`, oldest first, parsed.
async fn crypto_inbox(db_url: &str) -> Vec<Value> {
    let sql = "SELECT input FROM mx_crypto_inbox ORDER BY seq";
    let rows: Vec<String> = if db_url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(db_url).await.unwrap();
        let rows = sqlx::query_scalar(sql).fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows
    } else {
        let pool = sqlx::PgPool::connect(db_url).await.unwrap();
        let rows = sqlx::query_scalar(sql).fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows
    };
    rows.iter().map(|r| serde_json::from_str(r).unwrap()).collect()
}

/// How many inputs carry to-device messages.
fn with_to_device(rows: &[Value]) -> usize {
    rows.iter().filter(|r| r["to_device"].as_array().is_some_and(|t| !t.is_empty())).count()
}

/// Whether an input carries an olm-encrypted to-device message from `sender` (a room key
/// travels so).
fn carries_olm_from(rows: &[Value], sender: &str) -> bool {
    rows.iter().flat_map(|r| r["to_device"].as_array().into_iter().flatten()).any(|m| {
        m["type"] == "m.room.encrypted"
            && m["sender"] == sender
            && m["content"]["algorithm"] == "m.olm.v1.curve25519-aes-sha2"
    })
}

async fn killed_after_a_room_key_was_acknowledged_still_decrypts(backend: &str) {
    let port = free_port();
    let registration = crypto_registration(&format!("http://127.0.0.1:{port}"));
    let synapse = Synapse::start(&registration);
    let alice_token = synapse.register("alice");
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database(backend, dir.path()).await;

    // First life, normal: the device is made, Alice's room works both ways.
    let bridge = start_bridge_with(port, &synapse.url, &db.url, &registration, ENCRYPTION).await;
    let bot_device = wait_for_bridge_device(&synapse, &alice_token).await;
    let HookRoom { mut alice, room, hook, received } =
        hook_room(&synapse, &dir.path().join("alice"), &bot_device).await;
    let sent = alice.send_text(&room, "before the outage").await;
    assert_eq!(outgoing_message(&received, "before the outage").await["event_id"], sent.as_str());
    let keys = alice.room_keys().await;
    let keys_from_bot = keys["by_sender"][BOT].as_u64().unwrap_or(0);
    assert!(keys_from_bot >= 1, "the bot's answers came with its room key: {keys}");
    let old_session = alice.call(json!({"cmd": "session", "room_id": room})).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    bridge.stop().await;
    let left = crypto_inbox(&db.url).await;
    assert_eq!(with_to_device(&left), 0, "the first life fed everything: {left:#?}");

    // Second life, in a child that cannot reach the homeserver: it answers transactions, and
    // its device never starts.
    let mut child = spawn_webhook_child(&WebhookChildSpec {
        port,
        hs_url: "http://127.0.0.1:1".to_owned(),
        db_url: db.url.clone(),
        registration: registration.clone(),
        extra: ENCRYPTION.to_owned(),
    });
    wait_live(&crate::common::http(), port).await;
    // A new megolm session: its key travels to the bridge device only now.
    alice.call(json!({"cmd": "rotate_session", "room_id": room})).await;
    let secret = alice.send_text(&room, "sent while the bridge was down").await;
    let session = alice.call(json!({"cmd": "session", "room_id": room})).await;
    assert_ne!(session["session_id"], old_session.as_str(), "{session}");
    assert!(
        session["shared_with"].as_array().unwrap().contains(&json!([BOT, bot_device])),
        "the new key went to the bridge device: {session}"
    );
    let mut rows = Vec::new();
    for _ in 0..600 {
        rows = crypto_inbox(&db.url).await;
        if carries_olm_from(&rows, &alice.user_id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(carries_olm_from(&rows, &alice.user_id), "the room key was never stored: {rows:#?}");
    child.kill().unwrap(); // SIGKILL, the key acknowledged and not fed
    child.wait().unwrap();
    let rows = crypto_inbox(&db.url).await;
    eprintln!(
        "{backend}: mx_crypto_inbox held {} rows at the kill, {} with to-device messages",
        rows.len(),
        with_to_device(&rows)
    );
    assert!(
        !received.lock().unwrap().iter().any(|p| p["event"]["event_id"] == secret.as_str()),
        "the child could not have decrypted it"
    );

    // Third life, normal: the stored key decrypts the message, which leaves through the
    // outgoing hook; the bridge's own session is the one Alice already has.
    let bridge = start_bridge_with(port, &synapse.url, &db.url, &registration, ENCRYPTION).await;
    assert_eq!(wait_for_bridge_device(&synapse, &alice_token).await, bot_device);
    let out = outgoing_message(&received, "sent while the bridge was down").await;
    assert_eq!(out["event_id"], secret.as_str(), "{out}");
    assert_eq!(out["sender"], alice.user_id.as_str(), "{out}");
    let posted = post_hook(&hook, "back again").await;
    let got = alice.next_message(&room, CI_GHOST).await;
    assert_eq!(got["event_id"], posted.as_str(), "{got}");
    assert_eq!(got["body"], "back again", "{got}");
    assert_eq!(got["decrypted"], true, "{got}");
    let keys = alice.room_keys().await;
    assert_eq!(
        keys["by_sender"][BOT].as_u64().unwrap_or(0),
        keys_from_bot,
        "no new room key from the bot after the restarts: {keys}"
    );
    let stuck = alice.call(json!({"cmd": "undecryptable"})).await;
    assert_eq!(stuck["events"], json!([]), "{stuck}");
    let fed = async {
        for _ in 0..100 {
            if with_to_device(&crypto_inbox(&db.url).await) == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(fed.await, "the stored input was fed and deleted");

    alice.quit().await;
    bridge.stop().await;
}

#[tokio::test]
async fn killed_after_a_room_key_was_acknowledged_still_decrypts_on_sqlite() {
    if std::env::var("MXB_WEBHOOK_CHILD").is_ok() || !enabled() {
        return;
    }
    killed_after_a_room_key_was_acknowledged_still_decrypts("sqlite").await;
}

#[tokio::test]
async fn killed_after_a_room_key_was_acknowledged_still_decrypts_on_postgres() {
    if std::env::var("MXB_WEBHOOK_CHILD").is_ok()
        || !enabled()
        || crate::common::postgres_url().is_none()
    {
        return;
    }
    killed_after_a_room_key_was_acknowledged_still_decrypts("postgres").await;
}
