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
struct ChildSpec {
    db_url: String,
    port: u16,
    record_file: String,
    delay_ms: u64,
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
        "http://127.0.0.1:1",
        &db,
        &bridge,
        &crate::common::registration_yaml("null"),
    )
    .await;
    // Run until killed.
    tokio::time::sleep(Duration::from_secs(120)).await;
}

fn spawn_child(spec: &ChildSpec) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["crash::child_process_entry_point", "--exact", "--nocapture", "--test-threads=1"])
        .env("MXB_CRASH_CHILD", serde_json::to_string(spec).unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
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
    let mut spec =
        ChildSpec { db_url: db.url.clone(), port, record_file: record.clone(), delay_ms: 60_000 };

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
