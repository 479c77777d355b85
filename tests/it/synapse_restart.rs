//! Synapse restarted mid-run. On SQLite it hands out txn IDs from 1 again after a restart, so a
//! bridge deduplicating on the txn ID alone would drop the new transactions. A human sends
//! messages before and after the restart; every one reaches the handler, once.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::{
    common::{AS_TOKEN, http, wait_until},
    synapse::{cs, enabled, start_with_synapse, urlencode},
};

#[tokio::test]
async fn synapse_restart_mid_run_drops_no_event() {
    if !enabled() {
        return;
    }
    let (synapse, app, dir) = start_with_synapse().await;
    let client = http();
    let hs = synapse.url.clone();
    let alice = synapse.register("alice");
    let ghost = "@_t_ghost:localhost";
    cs(
        &client,
        reqwest::Method::POST,
        format!("{hs}/_matrix/client/v3/register"),
        AS_TOKEN,
        Some(json!({"type": "m.login.application_service", "username": "_t_ghost", "inhibit_login": true})),
    )
    .await;
    let room = cs(
        &client,
        reqwest::Method::POST,
        format!("{hs}/_matrix/client/v3/createRoom"),
        &alice,
        Some(json!({"preset": "public_chat"})),
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
    let say = |client: &reqwest::Client, n: usize, txn: String| {
        let (client, hs, alice, room_enc) =
            (client.clone(), hs.clone(), alice.clone(), room_enc.clone());
        async move {
            cs(
                &client,
                reqwest::Method::PUT,
                format!("{hs}/_matrix/client/v3/rooms/{room_enc}/send/m.room.message/{txn}"),
                &alice,
                Some(json!({"msgtype": "m.text", "body": format!("message {n}")})),
            )
            .await["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let mut sent = Vec::new();
    for n in 0..5 {
        sent.push(say(&client, n, format!("before{n}")).await);
    }
    let all_handled = |sent: &[String]| {
        let handled = app.bridge.handled_ids();
        sent.iter().all(|e| handled.contains(e))
    };
    assert!(wait_until(30, || all_handled(&sent)).await, "before the restart");
    let handled_before = app.bridge.handled_ids().len();

    let t = Instant::now();
    synapse.restart();
    let restart_took = t.elapsed();
    // A new client: the old one's pooled connections went with the old Synapse.
    let client = http();
    for n in 5..10 {
        sent.push(say(&client, n, format!("after{n}")).await);
    }
    let ok = wait_until(60, || all_handled(&sent)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let calls = app.bridge.calls.lock().unwrap().clone();
    let twice: Vec<_> = sent.iter().filter(|e| calls.get(*e).copied().unwrap_or(0) > 1).collect();
    let missing: Vec<_> = sent.iter().filter(|e| !app.bridge.handled_ids().contains(e)).collect();
    let db = format!("sqlite://{}/store.db", dir.path().display());
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    let txn_ids: Vec<String> = sqlx::query_scalar("SELECT txn_id FROM mx_txn ORDER BY received_at")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    let reused = txn_ids.iter().enumerate().filter(|(i, t)| txn_ids[..*i].contains(t)).count();
    println!(
        "synapse-restart: txn IDs received {txn_ids:?} ({reused} reused after the restart); restart took {:.1}s; messages sent {} (5 before, 5 after); handled \
         before restart {handled_before} events, after {}; missing {}; handled twice {}",
        restart_took.as_secs_f64(),
        sent.len(),
        app.bridge.handled_ids().len(),
        missing.len(),
        twice.len()
    );
    assert!(ok && missing.is_empty(), "dropped after the restart: {missing:?}");
    assert!(reused > 0, "the scenario needs Synapse to reuse txn IDs: {txn_ids:?}");
    assert!(twice.is_empty(), "handled twice: {twice:?}");
    app.stop().await;
}
