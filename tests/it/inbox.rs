//! The inbox end to end over HTTP: order per room, retries, parking, resume after restart.

use std::collections::BTreeMap;

use crate::common::{Running, fresh_database, put_txn, txn_body, wait_until};

#[tokio::test]
async fn events_of_a_room_are_handled_in_order_and_rooms_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("sqlite", dir.path()).await;
    let app = Running::start(&db, "{delay_ms: 2}").await;
    let client = crate::common::http();
    let rooms = ["!a:localhost", "!b:localhost", "!c:localhost"];
    let mut sent: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for txn in 0..10 {
        let events: Vec<(String, String)> = (0..6)
            .map(|i| {
                let room = rooms[(txn + i) % rooms.len()];
                (room.to_owned(), format!("$t{txn}e{i}"))
            })
            .collect();
        for (room, id) in &events {
            sent.entry(rooms.iter().find(|r| *r == room).unwrap()).or_default().push(id.clone());
        }
        let refs: Vec<(&str, &str)> =
            events.iter().map(|(r, e)| (r.as_str(), e.as_str())).collect();
        assert_eq!(put_txn(&client, &app.url(""), &txn.to_string(), &txn_body(&refs)).await, 200);
    }
    assert!(wait_until(20, || app.bridge.handled.lock().unwrap().len() == 60).await);
    wait_for_empty_inbox(&app.store).await;
    let handled = app.bridge.handled.lock().unwrap().clone();
    for room in rooms {
        let order: Vec<_> =
            handled.iter().filter(|(r, _)| r == room).map(|(_, e)| e.clone()).collect();
        assert_eq!(order, sent[room], "order in {room}");
    }
    app.stop().await;
}

async fn wait_for_empty_inbox(store: &mxbridge::Store) {
    for _ in 0..250 {
        if store.inbox_stats().await.unwrap().pending == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("inbox not drained: {:?}", store.inbox_stats().await.unwrap());
}

#[tokio::test]
async fn failing_handler_is_retried_then_parked_and_later_events_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("sqlite", dir.path()).await;
    let app = Running::start(
        &db,
        "{fail_times: {'$flaky': 2, '$broken': 99}, permanent_failures: ['$refused'], panic_times: {'$panics': 1}}",
    )
    .await;
    let client = crate::common::http();
    let r = "!r:localhost";
    let body =
        txn_body(&[(r, "$flaky"), (r, "$broken"), (r, "$refused"), (r, "$panics"), (r, "$fine")]);
    assert_eq!(put_txn(&client, &app.url(""), "1", &body).await, 200);
    assert!(wait_until(20, || app.bridge.handled_ids().contains(&"$fine".to_owned())).await);
    // In order: $flaky succeeded on the third call, $broken was parked after 3 attempts.
    // A handler that panicked once is retried like a failure, and the worker lives on.
    assert_eq!(app.bridge.handled_ids(), ["$flaky", "$panics", "$fine"]);
    let calls = app.bridge.calls.lock().unwrap().clone();
    assert_eq!((calls["$flaky"], calls["$broken"], calls["$refused"]), (3, 3, 1));
    let parked = app.store.parked_events(10).await.unwrap();
    let parked: Vec<_> = parked.iter().map(|p| (p.event_id.as_str(), p.attempts)).collect();
    assert_eq!(parked, [("$broken", 3), ("$refused", 1)]);
    let errors = app.store.parked_events(10).await.unwrap();
    assert!(errors[0].last_error.as_deref().unwrap().contains("remote hiccup"));
    app.stop().await;
}

#[tokio::test]
async fn pending_events_resume_after_a_restart_and_are_not_handled_twice() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("sqlite", dir.path()).await;
    // A slow handler: stop while most events are still pending.
    let app = Running::start(&db, "{delay_ms: 200}").await;
    let client = crate::common::http();
    let r = "!r:localhost";
    let ids: Vec<String> = (0..8).map(|i| format!("$resume{i}")).collect();
    let refs: Vec<(&str, &str)> = ids.iter().map(|e| (r, e.as_str())).collect();
    assert_eq!(put_txn(&client, &app.url(""), "1", &txn_body(&refs)).await, 200);
    assert!(wait_until(10, || !app.bridge.handled_ids().is_empty()).await);
    let first_bridge = app.bridge.clone();
    app.stop().await;
    let first_run = first_bridge.handled_ids();
    assert!(first_run.len() < ids.len(), "stopped before the end: {first_run:?}");
    let app = Running::start(&db, "{}").await;
    assert!(wait_until(10, || first_run.len() + app.bridge.handled_ids().len() == ids.len()).await);
    let mut all = first_run.clone();
    all.extend(app.bridge.handled_ids());
    assert_eq!(all, ids, "every event once, in order");
    app.stop().await;
}
