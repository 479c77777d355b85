//! The inbox end to end over HTTP: order per room, retries, parking, resume after restart.

use std::collections::BTreeMap;

use mxbridge::{config::DatabaseConfig, store::testing_support::InboxInternals as _};

use crate::common::{Running, fresh_database, put_txn, txn_body, wait_until, wait_until_async};

/// A bridge on `db` with the recorder's `bridge` config and these `inbox:` keys, whose homeserver
/// is never reached.
async fn start_with_inbox(db: &DatabaseConfig, bridge: &str, inbox: &str) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registration = crate::common::registration_yaml("null");
    Running::start_on_with(listener, "http://127.0.0.1:1", db, bridge, &registration, "", inbox)
        .await
}

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

/// `inbox.room_concurrency` bounds the handlers running at once, while rooms take turns (a
/// room with nothing queued, or waiting for its records' commit, gives its slot to another),
/// and order per room holds.
#[tokio::test]
async fn room_concurrency_bounds_the_handlers_running_at_once() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("sqlite", dir.path()).await;
    let app = start_with_inbox(&db, "{delay_ms: 5}", "room_concurrency: 2, ").await;
    let client = crate::common::http();
    let rooms: Vec<String> = (0..6).map(|r| format!("!r{r}:localhost")).collect();
    let events: Vec<(String, String)> =
        (0..36).map(|i| (rooms[i % rooms.len()].clone(), format!("$c{i}"))).collect();
    let refs: Vec<(&str, &str)> = events.iter().map(|(r, e)| (r.as_str(), e.as_str())).collect();
    assert_eq!(put_txn(&client, &app.url(""), "c1", &txn_body(&refs)).await, 200);
    assert!(wait_until(20, || app.bridge.handled.lock().unwrap().len() == 36).await);
    assert_eq!(app.bridge.most_running.load(SeqCst), 2, "two rooms at a time, not more");
    let handled = app.bridge.handled.lock().unwrap().clone();
    for room in &rooms {
        let order: Vec<_> = handled.iter().filter(|(r, _)| r == room).map(|(_, e)| e).collect();
        let sent: Vec<_> = events.iter().filter(|(r, _)| r == room).map(|(_, e)| e).collect();
        assert_eq!(order, sent, "order in {room}");
    }
    app.stop().await;
}

/// A room's worker waits a while for the room's next event before it exits, but it does so
/// without a room slot: with one slot, twenty rooms with one event each are done one after the
/// other at once, not one per idle wait. Half the events are refused and parked, the path that
/// ends holding the slot.
#[tokio::test]
async fn an_idle_room_worker_holds_no_room_slot() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("sqlite", dir.path()).await;
    let refused: Vec<String> = (0..20).step_by(2).map(|i| format!("'$idle{i}'")).collect();
    let bridge = format!("{{permanent_failures: [{}]}}", refused.join(", "));
    let app = start_with_inbox(&db, &bridge, "room_concurrency: 1, ").await;
    let client = crate::common::http();
    let events: Vec<(String, String)> =
        (0..20).map(|i| (format!("!idle{i}:localhost"), format!("$idle{i}"))).collect();
    let refs: Vec<(&str, &str)> = events.iter().map(|(r, e)| (r.as_str(), e.as_str())).collect();
    let started = std::time::Instant::now();
    assert_eq!(put_txn(&client, &app.url(""), "idle1", &txn_body(&refs)).await, 200);
    let done = wait_until_async(10, async || {
        let parked = app.store.parked_events(100).await.unwrap().len();
        parked == 10 && app.bridge.handled.lock().unwrap().len() == 10
    })
    .await;
    assert!(done, "10 handled and 10 parked");
    // Each worker lingers 250 ms after its event: holding the slot meanwhile would take ~2.5 s.
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_millis(1500), "20 rooms took {took:?}");
    app.stop().await;
}

/// `inbox.record_window` bounds the events a room handles before their records commit: with
/// the database's write lock held by another connection, so that no record can commit, a room
/// of ten events handles exactly that many and then waits; once the lock goes, the rest follow
/// in order.
#[tokio::test]
async fn a_room_handles_at_most_its_record_window_before_the_records_commit() {
    use sqlx::{Connection as _, Executor as _};
    for window in [1usize, 3] {
        let dir = tempfile::tempdir().unwrap();
        let db = fresh_database("sqlite", dir.path()).await;
        // Handlers wait for this file, so the lock is taken before any of them finished.
        let hold = dir.path().join("go");
        let bridge = format!("{{hold_file: '{}'}}", hold.display());
        let app = start_with_inbox(&db, &bridge, &format!("record_window: {window}, ")).await;
        let client = crate::common::http();
        let ids: Vec<String> = (0..10).map(|i| format!("$w{window}e{i}")).collect();
        let refs: Vec<(&str, &str)> = ids.iter().map(|e| ("!w:localhost", e.as_str())).collect();
        assert_eq!(put_txn(&client, &app.url(""), "w1", &txn_body(&refs)).await, 200);
        let mut other = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        other.execute("BEGIN IMMEDIATE").await.unwrap();
        std::fs::write(&hold, "").unwrap();
        let handled = || app.bridge.handled_ids();
        assert!(wait_until(5, || handled().len() >= window).await, "window {window}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert_eq!(handled(), ids[..window], "window {window}: handled while nothing commits");
        other.execute("ROLLBACK").await.unwrap();
        assert!(wait_until(10, || handled().len() == 10).await, "window {window}: the rest");
        assert_eq!(handled(), ids, "window {window}: in order");
        wait_for_empty_inbox(&app.store).await;
        app.stop().await;
    }
}

/// A parked event put back in line, parked again and put back once more is handled by the
/// same running process (each parking gives it a new place in the requeue order).
#[tokio::test]
async fn an_event_parked_twice_can_be_retried_twice_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("sqlite", dir.path()).await;
    // The tests' config tries an event 3 times before parking it.
    let app = Running::start(&db, "{fail_times: {'$twice': 6}}").await;
    let client = crate::common::http();
    let body = txn_body(&[("!p:localhost", "$twice")]);
    assert_eq!(put_txn(&client, &app.url(""), "p1", &body).await, 200);
    let calls = || app.bridge.calls.lock().unwrap().get("$twice").copied().unwrap_or(0);
    for round in 1..=2u32 {
        let ok = wait_until_async(5, async || {
            calls() == 3 * round && app.store.parked_events(10).await.unwrap().len() == 1
        })
        .await;
        assert!(ok, "failed and parked, round {round}: {} calls", calls());
        assert_eq!(app.store.retry_parked(Some("$twice")).await.unwrap(), 1, "round {round}");
    }
    assert!(wait_until(5, || app.bridge.handled_ids() == ["$twice"]).await, "{} calls", calls());
    assert_eq!(calls(), 7);
    wait_for_empty_inbox(&app.store).await;
    assert!(app.store.parked_events(10).await.unwrap().is_empty());
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

/// More events than fit in memory (routed plus queued for hand-off) while the handler is held:
/// the server's hand-off overflows and the dispatcher reads the rest from the database. Every
/// event is handled once, in order per room.
#[tokio::test]
async fn a_backlog_beyond_the_hand_off_queue_is_read_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("sqlite", dir.path()).await;
    let hold = dir.path().join("go");
    let app = Running::start(&db, &format!("{{hold_file: '{}'}}", hold.display())).await;
    let client = crate::common::http();
    let rooms = ["!a:localhost", "!b:localhost", "!c:localhost", "!d:localhost"];
    let total = mxbridge::testing::IN_MEMORY_BACKLOG + 800;
    let mut sent: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (txn, chunk) in (0..total).collect::<Vec<_>>().chunks(100).enumerate() {
        let events: Vec<(&str, String)> =
            chunk.iter().map(|&i| (rooms[i % rooms.len()], format!("$q{i}"))).collect();
        for (room, id) in &events {
            sent.entry(room).or_default().push(id.clone());
        }
        let refs: Vec<(&str, &str)> = events.iter().map(|(r, e)| (*r, e.as_str())).collect();
        assert_eq!(put_txn(&client, &app.url(""), &txn.to_string(), &txn_body(&refs)).await, 200);
    }
    std::fs::write(&hold, "").unwrap();
    assert!(wait_until(60, || app.bridge.handled.lock().unwrap().len() >= total).await);
    wait_for_empty_inbox(&app.store).await;
    let handled = app.bridge.handled.lock().unwrap().clone();
    assert_eq!(handled.len(), total, "each event once");
    for room in rooms {
        let order: Vec<_> =
            handled.iter().filter(|(r, _)| r == room).map(|(_, e)| e.clone()).collect();
        assert_eq!(order, sent[room], "order in {room}");
    }
    let metrics = client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let overflows: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mxbridge_inbox_handoff_overflows_total "))
        .unwrap_or_else(|| panic!("no overflow counter in\n{metrics}"))
        .parse()
        .unwrap();
    assert!(overflows >= 1, "the hand-off queue overflowed: {overflows}");
    app.stop().await;
}

/// A database written by the per-event inbox (schema 2) is migrated: pending events are handled
/// in order, parked ones stay parked with their error, and handled ones stay deduplicated.
#[tokio::test]
async fn pending_and_parked_events_of_the_old_inbox_survive_the_migration() {
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("sqlite", dir.path()).await;
    let options = std::str::FromStr::from_str(&db.url).unwrap();
    let options: sqlx::sqlite::SqliteConnectOptions = options;
    let mut conn =
        sqlx::SqliteConnection::connect_with(&options.create_if_missing(true)).await.unwrap();
    let event = |id: &str| {
        format!(
            r#"{{"event_id":"{id}","room_id":"!r:localhost","sender":"@u:localhost","type":"m.room.message","content":{{"msgtype":"m.text","body":"x"}}}}"#
        )
    };
    let old_schema = format!(
        "{}\n{}\nCREATE TABLE mx_schema (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL);\n\
         INSERT INTO mx_schema VALUES (1, '0001_core.sql', 0), (2, '0002_bridge.sql', 0);",
        include_str!("../../migrations/sqlite/0001_core.sql"),
        include_str!("../../migrations/sqlite/0002_bridge.sql"),
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(old_schema)).execute(&mut conn).await.unwrap();
    for (id, status, json, error) in [
        ("$done", 1, None, None),
        ("$old1", 0, Some(event("$old1")), None),
        ("$parked", 2, Some(event("$parked")), Some("gave up")),
        ("$old2", 0, Some(event("$old2")), None),
    ] {
        sqlx::query(
            "INSERT INTO mx_inbox (event_id, room_id, txn_id, event_json, status, attempts, \
             last_error, received_at) VALUES ($1, '!r:localhost', 't', $2, $3, 0, $4, $5)",
        )
        .bind(id)
        .bind(json)
        .bind(status)
        .bind(error)
        // Recent: the pruner forgets event IDs older than the retention.
        .bind(i64::try_from(std::time::UNIX_EPOCH.elapsed().unwrap().as_millis()).unwrap())
        .execute(&mut conn)
        .await
        .unwrap();
    }
    conn.close().await.unwrap();
    let app = Running::start(&db, "{}").await;
    let ok = wait_until(10, || app.bridge.handled_ids() == ["$old1", "$old2"]).await;
    assert!(
        ok,
        "handled {:?}, batches {:?}, parked {:?}, stats {:?}",
        app.bridge.handled_ids(),
        app.store.pending_batches(0, 10).await,
        app.store.parked_events(10).await,
        app.store.inbox_stats().await,
    );
    let parked = app.store.parked_events(10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].event_id, "$parked");
    assert_eq!(parked[0].last_error.as_deref(), Some("gave up"));
    // The handled event is still known: sent again, it is not handled again.
    let client = crate::common::http();
    let body = txn_body(&[("!r:localhost", "$done"), ("!r:localhost", "$new")]);
    assert_eq!(put_txn(&client, &app.url(""), "again", &body).await, 200);
    assert!(wait_until(10, || app.bridge.handled_ids().len() == 3).await);
    assert_eq!(app.bridge.handled_ids(), ["$old1", "$old2", "$new"]);
    app.stop().await;
}

/// A bridge never writes mappings: the dispatcher records what `handle_message` says each
/// message became (one remote message, several, or one whose ID the network's echo brings),
/// and the echo resolves the pending one once.
#[tokio::test]
async fn the_dispatcher_records_what_handlers_delivered() {
    use mxbridge::{PortalKey, store::PortalRow};
    use ruma::{event_id, room_id};
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("sqlite", dir.path()).await;
    let config = "{sent_as: {'$one': [r1], '$two': [r2a, r2b]}, pending_as: {'$later': t9}}";
    let app = Running::start(&db, config).await;
    let key = PortalKey::shared("chat");
    let portal = PortalRow {
        key: key.clone(),
        room_id: Some(room_id!("!p:localhost").to_owned()),
        name: None,
        topic: None,
        avatar_url: None,
        metadata: None,
    };
    app.store.upsert_portal(&portal).await.unwrap();
    let events = [("!p:localhost", "$one"), ("!p:localhost", "$two"), ("!p:localhost", "$later")];
    let client = crate::common::http();
    assert_eq!(put_txn(&client, &app.url(""), "m1", &txn_body(&events)).await, 200);
    assert!(wait_until(20, || app.bridge.handled.lock().unwrap().len() == 3).await);
    wait_for_empty_inbox(&app.store).await;
    let store = &app.store;
    let mapped = store.message_by_event(event_id!("$one")).await.unwrap().unwrap();
    assert_eq!((mapped.portal, mapped.id.as_str()), (key.clone(), "r1"));
    for id in ["r2a", "r2b"] {
        let parts = store.message_parts(&key, &id.into()).await.unwrap();
        assert_eq!(parts.iter().map(|p| p.event_id.as_str()).collect::<Vec<_>>(), ["$two"]);
    }
    assert_eq!(store.message_by_event(event_id!("$later")).await.unwrap(), None);
    // The network's echo, queued like any remote message, maps the pending event instead of
    // being sent (the homeserver here is unreachable: a send would fail).
    let ctx = &app.bridge.ctx;
    let echo = |id: &str| {
        let mut event =
            mxbridge::RemoteEvent::text(id, mxbridge::RemoteSender::named("me", "Me"), "x");
        if let mxbridge::RemoteEvent::Message { echo_of, .. } = &mut event {
            *echo_of = Some("t9".into());
        }
        event
    };
    let mapped = ctx.queue_remote(&key, &echo("r9")).await.unwrap().bridged().await.unwrap();
    assert_eq!(mapped, [event_id!("$later").to_owned()]);
    let later = store.message_by_event(event_id!("$later")).await.unwrap().unwrap();
    assert_eq!(later.id.as_str(), "r9");
    app.stop().await;
}
