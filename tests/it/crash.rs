//! Crash safety: the process is SIGKILLed after the homeserver got its 200 and before the
//! handler finished; after a restart the event is handled exactly once.
//!
//! The bridge runs in a child process: this test binary re-executes itself with
//! `MXB_CRASH_CHILD` set, and [`child_process_entry_point`] then runs a recording bridge until it
//! is killed. In a normal test run that entry point returns at once.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use mxbridge::config::DatabaseConfig;
use serde::{Deserialize, Serialize};

use crate::common::{Running, fresh_database, http, postgres_url, put_txn, txn_body, wait_until};

#[derive(Serialize, Deserialize)]
pub(crate) struct ChildSpec {
    pub(crate) db_url: String,
    pub(crate) port: u16,
    pub(crate) record_file: String,
    pub(crate) delay_ms: u64,
    /// The homeserver the child talks to.
    #[serde(default = "unreachable_homeserver")]
    pub(crate) hs_url: String,
}

fn unreachable_homeserver() -> String {
    "http://127.0.0.1:1".to_owned()
}

/// Not a test of its own: the body of the child process (see the module docs).
#[tokio::test]
async fn child_process_entry_point() {
    let Ok(spec) = std::env::var("MXB_CRASH_CHILD") else { return };
    let spec: ChildSpec = serde_json::from_str(&spec).unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", spec.port)).await.unwrap();
    let db = DatabaseConfig { url: spec.db_url, ..DatabaseConfig::default() };
    let bridge = format!("{{record_file: '{}', delay_ms: {}}}", spec.record_file, spec.delay_ms);
    let _app = Running::start_on(
        listener,
        &spec.hs_url,
        &db,
        &bridge,
        &crate::common::registration_yaml("null"),
    )
    .await;
    // Run until killed.
    tokio::time::sleep(Duration::from_secs(120)).await;
}

/// The webhook bridge in a child process: what it is started with.
#[derive(Serialize, Deserialize)]
pub(crate) struct WebhookChildSpec {
    pub(crate) port: u16,
    pub(crate) hs_url: String,
    pub(crate) db_url: String,
    pub(crate) registration: String,
    /// More top-level config (`encryption: ...`).
    pub(crate) extra: String,
}

/// Not a test of its own: the body of a child process running the webhook bridge until it is
/// killed (see [`spawn_webhook_child`]). In a normal test run it returns at once.
#[tokio::test]
async fn webhook_child_entry_point() {
    let Ok(spec) = std::env::var("MXB_WEBHOOK_CHILD") else { return };
    let spec: WebhookChildSpec = serde_json::from_str(&spec).unwrap();
    let _bridge = crate::webhook::start_bridge_with(
        spec.port,
        &spec.hs_url,
        &spec.db_url,
        &spec.registration,
        &spec.extra,
    )
    .await;
    // Run until killed.
    tokio::time::sleep(Duration::from_secs(300)).await;
}

/// Starts the webhook bridge in a child process (this test binary, see the module docs).
#[cfg_attr(
    not(feature = "encryption"),
    allow(dead_code, reason = "only the encryption tests kill a webhook bridge so far")
)]
pub(crate) fn spawn_webhook_child(spec: &WebhookChildSpec) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["crash::webhook_child_entry_point", "--exact", "--nocapture", "--test-threads=1"])
        .env("MXB_WEBHOOK_CHILD", serde_json::to_string(spec).unwrap())
        .env_remove("MXB_CRASH_CHILD")
        .stdout(Stdio::null())
        .stderr(match std::env::var("MXB_CHILD_LOG") {
            Ok(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            Err(_) => Stdio::null(),
        })
        .spawn()
        .unwrap()
}

pub(crate) fn spawn_child(spec: &ChildSpec) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["crash::child_process_entry_point", "--exact", "--nocapture", "--test-threads=1"])
        .env("MXB_CRASH_CHILD", serde_json::to_string(spec).unwrap())
        .stdout(Stdio::null())
        .stderr(match std::env::var("MXB_CHILD_LOG") {
            Ok(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            Err(_) => Stdio::null(),
        })
        .spawn()
        .unwrap()
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn recorded(path: &str) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

pub(crate) async fn wait_live(client: &reqwest::Client, port: u16) {
    for _ in 0..300 {
        if let Ok(r) = client.get(format!("http://127.0.0.1:{port}/health/live")).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("child bridge did not come up on port {port}");
}

async fn killed_after_200_is_handled_once_after_restart(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database(backend, dir.path()).await;
    let record = dir.path().join("handled.txt").display().to_string();
    let client = http();
    let port = free_port();
    let mut spec = ChildSpec {
        db_url: db.url.clone(),
        port,
        record_file: record.clone(),
        delay_ms: 60_000,
        hs_url: unreachable_homeserver(),
    };

    // First life: the handler hangs, so the event is acknowledged but not handled.
    let mut child = spawn_child(&spec);
    wait_live(&client, port).await;
    let base = format!("http://127.0.0.1:{port}");
    let r = "!crash:localhost";
    assert_eq!(
        put_txn(&client, &base, "1", &txn_body(&[(r, "$crash1"), (r, "$crash2")])).await,
        200
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(recorded(&record).is_empty(), "nothing was handled before the kill");

    // Second life: the same events come out of the inbox and are handled once each.
    spec.delay_ms = 0;
    let mut child = spawn_child(&spec);
    wait_live(&client, port).await;
    // The homeserver retries the transaction it never saw finish: a duplicate, dropped.
    assert_eq!(
        put_txn(&client, &base, "1", &txn_body(&[(r, "$crash1"), (r, "$crash2")])).await,
        200
    );
    assert!(wait_until(15, || recorded(&record).len() >= 2).await, "handled after restart");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(recorded(&record), ["$crash1", "$crash2"]);
    child.kill().unwrap();
    child.wait().unwrap();
    let store = mxbridge::Store::connect(&db).await.unwrap();
    let status = store.inbox_status("$crash1").await.unwrap();
    assert_eq!(status, Some(mxbridge::store::InboxStatus::Handled), "marked done");
    assert_eq!(store.inbox_stats().await.unwrap().pending, 0);
}

#[tokio::test]
async fn sigkill_after_200_sqlite() {
    if std::env::var("MXB_CRASH_CHILD").is_ok() {
        return;
    }
    killed_after_200_is_handled_once_after_restart("sqlite").await;
}

#[tokio::test]
async fn sigkill_after_200_postgres() {
    if std::env::var("MXB_CRASH_CHILD").is_ok() {
        return;
    }
    if postgres_url().is_none() {
        eprintln!("skipped: set MXBRIDGE_TEST_POSTGRES to run the PostgreSQL suite");
        return;
    }
    killed_after_200_is_handled_once_after_restart("postgres").await;
}

/// The remote side is as durable: events a bridge queued (and so could acknowledge to the
/// remote network) are bridged after a SIGKILL, in order, and a send the first life had in
/// flight is repeated with the same transaction ID, which the homeserver deduplicates.
async fn killed_with_remote_events_queued_bridges_each_once(backend: &str) {
    use mxbridge::{
        PortalKey, RemoteEvent, RemoteSender,
        store::{GhostRow, MemberRow, Membership, PortalRow},
        testing::MockHomeserver,
    };
    use ruma::{room_id, user_id};
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database(backend, dir.path()).await;
    let room = room_id!("!portal:localhost");
    let ghost = user_id!("@_t_alice:localhost");
    {
        // A portal with the remote user's ghost in it: bridging makes only the sends.
        let store = mxbridge::Store::connect(&db).await.unwrap();
        let key = PortalKey::shared("chat");
        let row = PortalRow {
            key,
            room_id: Some(room.to_owned()),
            name: None,
            topic: None,
            avatar_url: None,
            metadata: None,
        };
        store.upsert_portal(&row).await.unwrap();
        let alice = GhostRow {
            remote_id: "alice".into(),
            user_id: ghost.to_owned(),
            displayname: Some("Alice".into()),
            avatar_url: None,
            metadata: None,
        };
        store.upsert_ghost(&alice).await.unwrap();
        store.mark_registered(ghost).await.unwrap();
        store.set_membership(MemberRow::new(room, ghost, Membership::Join)).await.unwrap();
        store.close().await;
    }
    let client = http();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let record = dir.path().join("handled.txt").display().to_string();

    // First life: the homeserver takes a minute to answer a send.
    let slow = MockHomeserver::start().await;
    accept_sends(&slow, Duration::from_secs(60)).await;
    let spec = |hs_url: String| ChildSpec {
        db_url: db.url.clone(),
        port,
        record_file: record.clone(),
        delay_ms: 0,
        hs_url,
    };
    let mut child = spawn_child(&spec(slow.url().to_string()));
    wait_live(&client, port).await;
    let sender = RemoteSender::named("alice", "Alice");
    for n in 1..=5 {
        let event = RemoteEvent::text(format!("m{n}"), sender.clone(), format!("message {n}"));
        let queued = client.post(format!("{base}/remote/chat")).json(&event).send().await.unwrap();
        assert_eq!(queued.status(), 200, "queued and committed");
    }
    // The first send is in flight when the process dies.
    let mut in_flight = false;
    for _ in 0..200 {
        if !slow.sent_txn_ids(room, "m.room.message").await.is_empty() {
            in_flight = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(in_flight, "the first life started sending");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // Second life: every queued event reaches the room, the interrupted one with the same
    // transaction ID as before.
    let fast = MockHomeserver::start().await;
    accept_sends(&fast, Duration::ZERO).await;
    let mut child = spawn_child(&spec(fast.url().to_string()));
    wait_live(&client, port).await;
    let done = async {
        for _ in 0..300 {
            if fast.sent_txn_ids(room, "m.room.message").await.len() >= 5 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    assert!(done.await, "bridged after the restart");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first_life = slow.sent_txn_ids(room, "m.room.message").await;
    let second_life = fast.sent_txn_ids(room, "m.room.message").await;
    assert_eq!(
        second_life,
        (1..=5).map(|n| format!("mxb.q{n}.0")).collect::<Vec<_>>(),
        "in order, once each"
    );
    assert_eq!(first_life, ["mxb.q1.0"], "the interrupted send is repeated with its own ID");
    child.kill().unwrap();
    child.wait().unwrap();
    let store = mxbridge::Store::connect(&db).await.unwrap();
    assert_eq!(store.remote_queue_counts().await.unwrap(), (0, 0));
}

/// Answers every message send (with the child's own token) after `delay`, and shows rooms
/// without any of those sends (a mock homeserver keeps nothing).
async fn accept_sends(hs: &mxbridge::testing::MockHomeserver, delay: Duration) {
    use wiremock::{Mock, ResponseTemplate, matchers};
    Mock::given(matchers::method("GET"))
        .and(matchers::path_regex("^/_matrix/client/v3/rooms/[^/]+/messages$"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"chunk": [], "start": "s"})),
        )
        .mount(hs.server())
        .await;
    Mock::given(matchers::method("PUT"))
        .and(matchers::path_regex("^/_matrix/client/v3/rooms/[^/]+/send/m.room.message/"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"event_id": "$sent:localhost"}))
                .set_delay(delay),
        )
        .mount(hs.server())
        .await;
}

#[tokio::test]
async fn sigkill_with_remote_events_queued_sqlite() {
    if std::env::var("MXB_CRASH_CHILD").is_ok() {
        return;
    }
    killed_with_remote_events_queued_bridges_each_once("sqlite").await;
}

#[tokio::test]
async fn sigkill_with_remote_events_queued_postgres() {
    if std::env::var("MXB_CRASH_CHILD").is_ok() {
        return;
    }
    if postgres_url().is_none() {
        eprintln!("skipped: set MXBRIDGE_TEST_POSTGRES to run the PostgreSQL suite");
        return;
    }
    killed_with_remote_events_queued_bridges_each_once("postgres").await;
}
