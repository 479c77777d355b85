//! One conformance suite for every store backend: SQLite always, PostgreSQL when
//! `MXBRIDGE_TEST_POSTGRES` names a server.

use mxbridge::store::{
    InboxStatus, MemberRow, Membership, RoomStateField, Store,
    testing_support::{AcceptOutcome, InboxInternals as _, InboxPos, NewEvent, PendingEvent},
};
use ruma::{UserId, mxc_uri, room_id, user_id};

use crate::common::{fresh_store, postgres_url};

/// An event with this ID and room; `content` is put in its JSON.
fn ev<'a>(id: &'a str, room: &'a str, content: &str) -> NewEvent<'a> {
    let json = format!(r#"{{"event_id":"{id}","room_id":"{room}","content":{content}}}"#);
    NewEvent { event_id: id.into(), room_id: room.into(), json: Box::leak(json.into_boxed_str()) }
}

/// Every pending event, in inbox order.
async fn pending(store: &Store) -> Vec<PendingEvent> {
    let mut events: Vec<PendingEvent> =
        store.pending_batches(0, 1000).await.unwrap().into_iter().flat_map(|b| b.events).collect();
    events.extend(store.requeued_events(0, 1000).await.unwrap());
    events
}

fn batch_pos(e: &PendingEvent) -> (i64, i32) {
    match e.pos {
        InboxPos::Batch { seq, idx } => (seq, idx),
        InboxPos::Requeued { .. } => panic!("not in a batch: {e:?}"),
    }
}

async fn inbox_stores_dedups_and_orders(store: Store) {
    let out = store
        .accept_transaction("1", "h1", &[ev("$a", "!r", "{\"a\":1}"), ev("$b", "!r", "{}")])
        .await
        .unwrap();
    assert_eq!(out, AcceptOutcome::Stored { new_events: 2 });
    // Same txn ID and hash: nothing written.
    let out = store.accept_transaction("1", "h1", &[ev("$c", "!r", "{}")]).await.unwrap();
    assert_eq!(out, AcceptOutcome::Duplicate);
    // Same txn ID, other content (a homeserver restart): stored; a known event ID is skipped,
    // and an event twice in one transaction is stored once.
    let out = store
        .accept_transaction(
            "1",
            "h2",
            &[ev("$b", "!r", "{}"), ev("$c", "!s", "{}"), ev("$c", "!s", "{}")],
        )
        .await
        .unwrap();
    assert_eq!(out, AcceptOutcome::Stored { new_events: 1 });
    let pending = pending(&store).await;
    let ids: Vec<_> = pending.iter().map(|p| p.event_id.as_str()).collect();
    assert_eq!(ids, ["$a", "$b", "$c"]);
    assert_eq!(pending[0].json, r#"{"event_id":"$a","room_id":"!r","content":{"a":1}}"#);
    assert_eq!(pending[2].room_id, "!s");
    let pos: Vec<_> = pending.iter().map(batch_pos).collect();
    assert!(pos[0] < pos[1] && pos[1] < pos[2], "{pos:?}");
    let after_first = store.pending_batches(pos[0].0, 10).await.unwrap();
    assert_eq!(after_first.len(), 1);
    let stats = store.inbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.parked), (3, 0));
    assert!(stats.oldest_pending_ms.is_some());
}

async fn handled_events_stay_deduplicated_until_pruned(store: Store) {
    store.accept_transaction("1", "h", &[ev("$a", "!r", "{}")]).await.unwrap();
    let event = pending(&store).await.remove(0);
    let (seq, idx) = batch_pos(&event);
    assert_eq!(store.inbox_status("$a").await.unwrap(), Some(InboxStatus::Pending { attempts: 0 }));
    store.record_handled(&[("!r", seq, idx)], &[seq], &[]).await.unwrap();
    assert!(pending(&store).await.is_empty());
    assert_eq!(store.inbox_stats().await.unwrap().pending, 0);
    assert_eq!(store.inbox_status("$a").await.unwrap(), Some(InboxStatus::Handled));
    let out = store.accept_transaction("2", "h", &[ev("$a", "!r", "{}")]).await.unwrap();
    assert_eq!(out, AcceptOutcome::Stored { new_events: 0 });
    // More event IDs than one pruning chunk.
    let ids: Vec<String> =
        (0..mxbridge::store::testing_support::PRUNE_CHUNK + 10).map(|i| format!("$p{i}")).collect();
    let many: Vec<NewEvent<'_>> = ids.iter().map(|id| ev(id, "!r", "{}")).collect();
    store.accept_transaction("3", "h", &many).await.unwrap();
    // Pending events are never pruned: their batch remembers them (on PostgreSQL by keeping
    // every ID from its arrival on; the pause puts the older ones a millisecond before it).
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    store.accept_transaction("4", "h", &[ev("$kept", "!k", "{}")]).await.unwrap();
    let batches = store.pending_batches(0, 1000).await.unwrap();
    let (handled, kept) = batches.split_at(batches.len() - 1);
    assert_eq!(handled.iter().map(|b| b.events.len()).sum::<usize>(), ids.len());
    assert_eq!(kept[0].events[0].event_id, "$kept");
    let (seq, idx) = batch_pos(handled.last().unwrap().events.last().unwrap());
    let seqs: Vec<i64> = handled.iter().map(|b| b.seq).collect();
    store.record_handled(&[("!r", seq, idx)], &seqs, &[]).await.unwrap();
    // Pruning with a retention of an hour keeps them; with a negative age every handled one
    // goes, with the transactions.
    assert_eq!(store.prune_dedup(3_600_000).await.unwrap(), 0);
    let gone = store.prune_dedup(-1000).await.unwrap();
    assert_eq!(gone, (1 + ids.len() + 4) as u64, "every handled event ID and txn row");
    assert_eq!(store.inbox_status("$a").await.unwrap(), None);
    assert_eq!(store.inbox_status("$p7").await.unwrap(), None);
    assert_eq!(
        store.inbox_status("$kept").await.unwrap(),
        Some(InboxStatus::Pending { attempts: 0 })
    );
    let out = store.accept_transaction("5", "h", &[ev("$kept", "!k", "{}")]).await.unwrap();
    assert_eq!(out, AcceptOutcome::Stored { new_events: 0 }, "still deduplicated");
}

async fn room_progress_hides_handled_events_of_a_batch(store: Store) {
    let evs: Vec<(String, &str)> =
        (0..6).map(|i| (format!("$m{i}"), if i % 2 == 0 { "!r" } else { "!s" })).collect();
    let new: Vec<NewEvent<'_>> = evs.iter().map(|(e, r)| ev(e, r, "{}")).collect();
    store.accept_transaction("1", "h", &new).await.unwrap();
    let all = pending(&store).await;
    assert_eq!(all.len(), 6);
    // !r handled up to $m2 (index 2), !s up to $m1; a stale position never moves progress back.
    let (seq, _) = batch_pos(&all[0]);
    store.record_handled(&[("!r", seq, 2), ("!s", seq, 1)], &[], &[]).await.unwrap();
    store.record_handled(&[("!r", seq, 0)], &[], &[]).await.unwrap();
    // A room twice in one call: the furthest position counts.
    store.record_handled(&[("!s", seq, 1), ("!s", seq, 0)], &[], &[]).await.unwrap();
    store.record_handled(&[], &[], &[]).await.unwrap();
    let left: Vec<_> = pending(&store).await.into_iter().map(|p| p.event_id).collect();
    assert_eq!(left, ["$m3", "$m4", "$m5"]);
    assert_eq!(store.inbox_status("$m2").await.unwrap(), Some(InboxStatus::Handled));
    assert_eq!(
        store.inbox_status("$m4").await.unwrap(),
        Some(InboxStatus::Pending { attempts: 0 })
    );
    // All handled: the batch is still there (until deleted) but has no events left.
    store.record_handled(&[("!r", seq, 4), ("!s", seq, 5)], &[], &[]).await.unwrap();
    let batches = store.pending_batches(0, 10).await.unwrap();
    assert_eq!((batches.len(), batches[0].events.len()), (1, 0));
    store.record_handled(&[], &[seq], &[]).await.unwrap();
    assert!(store.pending_batches(0, 10).await.unwrap().is_empty());
}

async fn failures_count_and_parked_events_can_be_retried(store: Store) {
    store
        .accept_transaction("1", "h", &[ev("$a", "!r", "{}"), ev("$b", "!r", "{}")])
        .await
        .unwrap();
    let first = pending(&store).await.remove(0);
    assert_eq!(store.record_failure("$a", "boom").await.unwrap(), 1);
    assert_eq!(store.record_failure("$a", "boom again").await.unwrap(), 2);
    assert_eq!(pending(&store).await[0].attempts, 2, "attempts survive a re-read");
    assert_eq!(store.inbox_status("$a").await.unwrap(), Some(InboxStatus::Pending { attempts: 2 }));
    store.park(&first, 2, "gave up").await.unwrap();
    let parked = store.parked_events(10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!((parked[0].event_id.as_str(), parked[0].attempts), ("$a", 2));
    assert_eq!(parked[0].last_error.as_deref(), Some("gave up"));
    assert_eq!(store.inbox_status("$a").await.unwrap(), Some(InboxStatus::Parked { attempts: 2 }));
    // Parking moved the room's progress past it: only $b is pending.
    let left: Vec<_> = pending(&store).await.into_iter().map(|p| p.event_id).collect();
    assert_eq!(left, ["$b"]);
    assert_eq!(store.inbox_stats().await.unwrap().parked, 1);
    assert_eq!(store.retry_parked(Some("$nope")).await.unwrap(), 0);
    assert_eq!(store.retry_parked(Some("$a")).await.unwrap(), 1);
    let again = pending(&store).await;
    assert_eq!(again.len(), 2);
    let requeued = again.iter().find(|p| p.event_id == "$a").unwrap();
    assert!(matches!(requeued.pos, InboxPos::Requeued { .. }));
    assert_eq!(requeued.attempts, 0);
    assert_eq!(requeued.json, r#"{"event_id":"$a","room_id":"!r","content":{}}"#);
    assert!(store.parked_events(10).await.unwrap().is_empty());
    assert_eq!(store.inbox_status("$a").await.unwrap(), Some(InboxStatus::Pending { attempts: 0 }));
    // Handled now: the parked row goes.
    let InboxPos::Requeued { seq } = requeued.pos else { unreachable!() };
    store.record_handled(&[], &[], &[seq]).await.unwrap();
    // The batch of $a and $b counts both until it is deleted as a whole.
    let stats = store.inbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.parked), (2, 0));
    assert!(store.requeued_events(0, 10).await.unwrap().is_empty());
}

async fn membership_and_room_state_cache(store: Store) {
    let (r, g, h) = (room_id!("!r:x"), user_id!("@g:x"), user_id!("@h:x"));
    assert_eq!(store.membership(r, g).await.unwrap(), None);
    store.set_membership(MemberRow::new(r, g, Membership::Invite)).await.unwrap();
    let row = MemberRow {
        displayname: Some("Ghost"),
        avatar_url: Some(mxc_uri!("mxc://x/y")),
        ..MemberRow::new(r, g, Membership::Join)
    };
    store.set_membership(row).await.unwrap();
    store.set_membership(MemberRow::new(r, h, Membership::Ban)).await.unwrap();
    let m = store.member(r, g).await.unwrap().unwrap();
    assert_eq!(m.membership, Membership::Join);
    assert_eq!(m.displayname.as_deref(), Some("Ghost"));
    assert_eq!(m.avatar_url.as_deref(), Some(mxc_uri!("mxc://x/y")));
    assert_eq!(store.members_with(r, Membership::Join).await.unwrap().len(), 1);
    assert_eq!(store.joined_rooms(g).await.unwrap(), [r]);
    assert_eq!(store.room_state(r, RoomStateField::PowerLevels).await.unwrap(), None);
    store.set_room_state(r, RoomStateField::PowerLevels, "{\"users\":{}}").await.unwrap();
    store.set_room_state(r, RoomStateField::Encryption, "{}").await.unwrap();
    assert_eq!(
        store.room_state(r, RoomStateField::PowerLevels).await.unwrap().as_deref(),
        Some("{\"users\":{}}")
    );
    assert!(!store.members_fetched(r).await.unwrap());
    store.set_members_fetched(r, true).await.unwrap();
    assert!(store.members_fetched(r).await.unwrap());
    // Setting one field keeps the others.
    assert!(store.room_state(r, RoomStateField::PowerLevels).await.unwrap().is_some());
    assert!(!store.is_registered(g).await.unwrap());
    store.mark_registered(g).await.unwrap();
    store.mark_registered(g).await.unwrap();
    assert!(store.is_registered(g).await.unwrap());
}

/// A fetched member list is written in one call: every row lands, later rows replace the
/// cached ones, and the room's create event is kept whole.
async fn a_fetched_member_list_fills_the_cache(store: Store) {
    use mxbridge::store::Member;
    let big = room_id!("!big:x");
    let member = |i: usize, membership: Membership, name: Option<&str>| Member {
        user_id: UserId::parse(format!("@u{i:03}:x")).unwrap(),
        membership,
        displayname: name.map(str::to_owned),
        avatar_url: None,
    };
    let first = user_id!("@u000:x");
    store.set_membership(MemberRow::new(big, first, Membership::Invite)).await.unwrap();
    let members: Vec<_> = (0..150)
        .map(|i| match i % 3 {
            0 => member(i, Membership::Join, Some("Named")),
            1 => member(i, Membership::Join, None),
            _ => member(i, Membership::Leave, None),
        })
        .collect();
    store.set_room_members(big, &members).await.unwrap();
    store.set_room_members(big, &members).await.unwrap();
    let joined = store.members_with(big, Membership::Join).await.unwrap();
    assert_eq!(joined.len(), 100);
    assert_eq!(joined[0], member(0, Membership::Join, Some("Named")));
    assert_eq!(store.members_with(big, Membership::Leave).await.unwrap().len(), 50);
    assert!(store.members_with(big, Membership::Invite).await.unwrap().is_empty());
    store.set_room_members(room_id!("!empty:x"), &[]).await.unwrap();
    let create = r#"{"type":"m.room.create","sender":"@c:x","content":{"room_version":"12"}}"#;
    store.set_room_state(big, RoomStateField::Create, create).await.unwrap();
    assert_eq!(
        store.room_state(big, RoomStateField::Create).await.unwrap().as_deref(),
        Some(create)
    );
}

async fn reconnect_keeps_data_and_migrations_are_idempotent(
    store: Store,
    reopen: impl AsyncFnOnce() -> Store,
) {
    store
        .accept_transaction("1", "h", &[ev("$a", "!r", "{}"), ev("$b", "!r", "{}")])
        .await
        .unwrap();
    let first = pending(&store).await.remove(0);
    let (seq, idx) = batch_pos(&first);
    store.record_handled(&[("!r", seq, idx)], &[], &[]).await.unwrap();
    store.close().await;
    let again = reopen().await;
    assert_eq!(pending(&again).await.len(), 1);
    // The new process knows the IDs of the stored batch, handled ($a) or not ($b), before it
    // stores anything; a later event in a new transaction is stored.
    let out = again
        .accept_transaction(
            "2",
            "h",
            &[ev("$a", "!r", "{}"), ev("$b", "!r", "{}"), ev("$c", "!r", "{}")],
        )
        .await
        .unwrap();
    assert_eq!(out, AcceptOutcome::Stored { new_events: 1 });
}

/// Batches stored before migration 4 get their event IDs from their JSON, so a new process
/// still deduplicates their events.
async fn batches_of_schema_3_get_their_event_ids(
    store: Store,
    url: &str,
    reopen: impl AsyncFnOnce() -> Store,
) {
    store
        .accept_transaction("1", "h", &[ev("$x", "!r", "{}"), ev("$y", "!s", "{\"k\":[1]}")])
        .await
        .unwrap();
    store.close().await;
    // Back to schema 3: no `event_ids` column, and the portal and message tables (empty here)
    // as they were before portal keys.
    raw_sql(url, "ALTER TABLE mx_inbox_batch DROP COLUMN event_ids").await;
    raw_sql(url, "DROP TABLE mx_portal").await;
    raw_sql(url, "DROP TABLE mx_message").await;
    raw_sql(url, "DROP TABLE mx_pending_message").await;
    // And without the users' tables of schema 6.
    raw_sql(url, "DROP TABLE mx_portal_relay").await;
    raw_sql(url, "DROP TABLE mx_user_portal").await;
    raw_sql(url, "DROP TABLE mx_user_login").await;
    raw_sql(url, "DROP TABLE mx_user").await;
    raw_sql(
        url,
        "CREATE TABLE mx_portal (remote_id TEXT PRIMARY KEY, room_id TEXT UNIQUE, name TEXT, \
         topic TEXT, avatar_url TEXT, metadata TEXT, created_at BIGINT NOT NULL)",
    )
    .await;
    raw_sql(
        url,
        "CREATE TABLE mx_message (portal_id TEXT NOT NULL, remote_id TEXT NOT NULL, \
         part TEXT NOT NULL DEFAULT '', event_id TEXT NOT NULL UNIQUE, room_id TEXT NOT NULL, \
         sender TEXT NOT NULL, timestamp BIGINT NOT NULL, PRIMARY KEY (portal_id, remote_id, part))",
    )
    .await;
    raw_sql(url, "INSERT INTO mx_portal VALUES ('old-chat', '!old:x', 'Old', NULL, NULL, NULL, 1)")
        .await;
    raw_sql(
        url,
        "INSERT INTO mx_message VALUES ('old-chat', 'm', '', '$old', '!old:x', '@u:x', 1)",
    )
    .await;
    raw_sql(url, "DELETE FROM mx_schema WHERE version IN (4, 5)").await;
    let again = reopen().await;
    // Portals and messages of before are shared chats' now.
    let key = mxbridge::PortalKey::shared("old-chat");
    let portal = again.portal(&key).await.unwrap().unwrap();
    assert_eq!((portal.room_id.unwrap().as_str(), portal.name.as_deref()), ("!old:x", Some("Old")));
    let old = again.message_by_event(ruma::event_id!("$old")).await.unwrap().unwrap();
    assert_eq!((old.portal, old.id.as_str()), (key, "m"));
    let out = again
        .accept_transaction("2", "h", &[ev("$y", "!s", "{}"), ev("$z", "!s", "{}")])
        .await
        .unwrap();
    assert_eq!(out, AcceptOutcome::Stored { new_events: 1 });
    let ids: Vec<_> = pending(&again).await.into_iter().map(|p| p.event_id).collect();
    assert_eq!(ids, ["$x", "$y", "$z"]);
    // Handled and deleted, the backfilled IDs move to the dedup table.
    let batches = again.pending_batches(0, 10).await.unwrap();
    let seqs: Vec<i64> = batches.iter().map(|b| b.seq).collect();
    let last = batches.last().unwrap().events.last().unwrap();
    let (seq, idx) = batch_pos(last);
    again.record_handled(&[("!r", seq, idx), ("!s", seq, idx)], &seqs, &[]).await.unwrap();
    assert!(pending(&again).await.is_empty());
    assert_eq!(again.inbox_status("$x").await.unwrap(), Some(InboxStatus::Handled));
    let out = again.accept_transaction("3", "h", &[ev("$x", "!r", "{}")]).await.unwrap();
    assert_eq!(out, AcceptOutcome::Stored { new_events: 0 });
}

/// Runs `sql` (one statement or several) on the database at `url`, past the store.
async fn raw_sql(url: &str, sql: &'static str) {
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&pool).await.unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&pool).await.unwrap();
        pool.close().await;
    }
}

async fn raw_count(url: &str, sql: &'static str) -> i64 {
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    }
}

/// A membership write that the cache cannot answer (it forgot the row) but that changes
/// nothing in the database updates no row: an update rewrites its page even with every value
/// the same. One that changes the name, the avatar or the membership does.
async fn unchanged_membership_rows_are_not_rewritten(store: Store, url: &str) {
    let (r, u) = (room_id!("!r:x"), user_id!("@u:x"));
    let named = MemberRow { displayname: Some("U"), ..MemberRow::new(r, u, Membership::Join) };
    store.set_membership(named).await.unwrap();
    if url.starts_with("sqlite:") {
        raw_sql(
            url,
            "CREATE TABLE mx_t (n INTEGER); \
             CREATE TRIGGER mx_t_up AFTER UPDATE ON mx_membership \
             BEGIN INSERT INTO mx_t VALUES (1); END;",
        )
        .await;
    } else {
        raw_sql(
            url,
            "CREATE TABLE mx_t (n INTEGER); \
             CREATE FUNCTION mx_t_fn() RETURNS trigger AS $$ BEGIN INSERT INTO mx_t VALUES (1); \
             RETURN NULL; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER mx_t_up AFTER UPDATE ON mx_membership FOR EACH ROW \
             EXECUTE FUNCTION mx_t_fn();",
        )
        .await;
    }
    let updates = || raw_count(url, "SELECT count(*) FROM mx_t");
    for _ in 0..2 {
        store.forget_caches();
        store.set_membership(named).await.unwrap();
    }
    assert_eq!(updates().await, 0, "the same row twice: not rewritten");
    let avatar = Some(mxc_uri!("mxc://x/a"));
    let changes = [
        (Membership::Join, Some("V"), None),
        (Membership::Join, Some("V"), avatar),
        (Membership::Leave, Some("V"), avatar),
        (Membership::Leave, None, avatar),
    ];
    for (i, (membership, displayname, avatar_url)) in changes.into_iter().enumerate() {
        store.forget_caches();
        let row = MemberRow { displayname, avatar_url, ..MemberRow::new(r, u, membership) };
        store.set_membership(row).await.unwrap();
        assert_eq!(updates().await, i as i64 + 1, "change {i} is written");
        store.forget_caches();
        let member = store.member(r, u).await.unwrap().unwrap();
        assert_eq!(member.row(r), row);
    }
}

/// Memberships and registrations are answered from memory once known; writes go to the
/// database first and to memory only when it took them.
async fn membership_cache_answers_without_queries(store: Store, url: &str) {
    let (r, g) = (room_id!("!r:x"), user_id!("@g:x"));
    let joined = MemberRow { displayname: Some("G"), ..MemberRow::new(r, g, Membership::Join) };
    store.set_membership(joined).await.unwrap();
    store.mark_registered(g).await.unwrap();
    raw_sql(url, "ALTER TABLE mx_membership RENAME TO mx_membership_away").await;
    raw_sql(url, "ALTER TABLE mx_registered RENAME TO mx_registered_away").await;
    // No table, yet the answers come: they make no query.
    assert_eq!(store.membership(r, g).await.unwrap(), Some(Membership::Join));
    assert_eq!(store.member(r, g).await.unwrap().unwrap().displayname.as_deref(), Some("G"));
    assert!(store.is_registered(g).await.unwrap());
    assert!(store.membership(r, user_id!("@h:x")).await.is_err(), "not cached: a query");
    // A failed write does not leave the cache claiming it.
    let left = MemberRow::new(r, g, Membership::Leave);
    assert!(store.set_membership(left).await.is_err());
    raw_sql(url, "ALTER TABLE mx_membership_away RENAME TO mx_membership").await;
    raw_sql(url, "ALTER TABLE mx_registered_away RENAME TO mx_registered").await;
    assert_eq!(store.membership(r, g).await.unwrap(), Some(Membership::Join));
    // A write that succeeds is answered from memory at once.
    store.set_membership(left).await.unwrap();
    raw_sql(url, "ALTER TABLE mx_membership RENAME TO mx_membership_away").await;
    assert_eq!(store.membership(r, g).await.unwrap(), Some(Membership::Leave));
    raw_sql(url, "ALTER TABLE mx_membership_away RENAME TO mx_membership").await;
    // Writes past the store are seen after `forget_caches`.
    raw_sql(url, "UPDATE mx_membership SET membership = 'ban'").await;
    assert_eq!(store.membership(r, g).await.unwrap(), Some(Membership::Leave));
    store.forget_caches();
    assert_eq!(store.membership(r, g).await.unwrap(), Some(Membership::Ban));
    assert!(store.is_registered(g).await.unwrap());
    // A write that changes nothing (a ghost's own join, echoed back) makes no query; one that
    // changes the membership, the name or the avatar does.
    store.set_membership(joined).await.unwrap();
    raw_sql(url, "ALTER TABLE mx_membership RENAME TO mx_membership_away").await;
    store.set_membership(joined).await.unwrap();
    let avatar = MemberRow { avatar_url: Some(mxc_uri!("mxc://x/a")), ..joined };
    assert!(store.set_membership(avatar).await.is_err());
    raw_sql(url, "ALTER TABLE mx_membership_away RENAME TO mx_membership").await;
    assert_eq!(store.membership(r, g).await.unwrap(), Some(Membership::Join));
    raw_sql(url, "ALTER TABLE mx_membership RENAME TO mx_membership_away").await;
    let renamed = MemberRow { displayname: Some("H"), ..joined };
    assert!(store.set_membership(renamed).await.is_err());
    raw_sql(url, "ALTER TABLE mx_membership_away RENAME TO mx_membership").await;
    assert_eq!(store.membership(r, g).await.unwrap(), Some(Membership::Join));
    raw_sql(url, "ALTER TABLE mx_membership RENAME TO mx_membership_away").await;
    let left_named = MemberRow { membership: Membership::Leave, ..joined };
    assert!(store.set_membership(left_named).await.is_err());
    raw_sql(url, "ALTER TABLE mx_membership_away RENAME TO mx_membership").await;
}

macro_rules! suite {
    ($backend:ident, $name:literal) => {
        mod $backend {
            use super::*;

            async fn store(dir: &tempfile::TempDir) -> Option<Store> {
                if $name == "postgres" && postgres_url().is_none() {
                    eprintln!("skipped: set MXBRIDGE_TEST_POSTGRES to run the PostgreSQL suite");
                    return None;
                }
                Some(fresh_store($name, dir.path()).await)
            }

            /// A fresh store and its URL, for tests that also reach the database past it.
            async fn store_and_url(dir: &tempfile::TempDir) -> Option<(Store, String)> {
                if $name == "postgres" && postgres_url().is_none() {
                    return None;
                }
                let db = crate::common::fresh_database($name, dir.path()).await;
                Some((Store::connect(&db).await.unwrap(), db.url))
            }

            #[tokio::test]
            async fn inbox() {
                let dir = tempfile::tempdir().unwrap();
                let Some(s) = store(&dir).await else { return };
                assert_eq!(s.backend_name(), $name);
                inbox_stores_dedups_and_orders(s).await;
            }

            #[tokio::test]
            async fn dedup_and_prune() {
                let dir = tempfile::tempdir().unwrap();
                let Some(s) = store(&dir).await else { return };
                handled_events_stay_deduplicated_until_pruned(s).await;
            }

            #[tokio::test]
            async fn failures_and_parking() {
                let dir = tempfile::tempdir().unwrap();
                let Some(s) = store(&dir).await else { return };
                failures_count_and_parked_events_can_be_retried(s).await;
            }

            #[tokio::test]
            async fn state_cache() {
                let dir = tempfile::tempdir().unwrap();
                let Some(s) = store(&dir).await else { return };
                membership_and_room_state_cache(s).await;
            }

            #[tokio::test]
            async fn fetched_members() {
                let dir = tempfile::tempdir().unwrap();
                let Some(s) = store(&dir).await else { return };
                a_fetched_member_list_fills_the_cache(s).await;
            }

            #[tokio::test]
            async fn room_progress() {
                let dir = tempfile::tempdir().unwrap();
                let Some(s) = store(&dir).await else { return };
                room_progress_hides_handled_events_of_a_batch(s).await;
            }

            #[tokio::test]
            async fn portal_cache() {
                let dir = tempfile::tempdir().unwrap();
                let Some(s) = store(&dir).await else { return };
                portal_lookups_by_room_follow_writes(s).await;
            }

            #[tokio::test]
            async fn mappings() {
                let dir = tempfile::tempdir().unwrap();
                let Some(s) = store(&dir).await else { return };
                bridge_mappings(s).await;
            }

            #[tokio::test]
            async fn users_and_logins() {
                let dir = tempfile::tempdir().unwrap();
                let Some(s) = store(&dir).await else { return };
                crate::store_users::users_and_logins(s).await;
            }

            #[tokio::test]
            async fn membership_cache() {
                let dir = tempfile::tempdir().unwrap();
                let Some((s, url)) = store_and_url(&dir).await else { return };
                membership_cache_answers_without_queries(s, &url).await;
            }

            #[tokio::test]
            async fn unchanged_membership() {
                let dir = tempfile::tempdir().unwrap();
                let Some((s, url)) = store_and_url(&dir).await else { return };
                unchanged_membership_rows_are_not_rewritten(s, &url).await;
            }

            #[tokio::test]
            async fn event_ids_backfill() {
                let dir = tempfile::tempdir().unwrap();
                if $name == "postgres" && postgres_url().is_none() {
                    return;
                }
                let db = crate::common::fresh_database($name, dir.path()).await;
                let s = Store::connect(&db).await.unwrap();
                batches_of_schema_3_get_their_event_ids(s, &db.url, async || {
                    Store::connect(&db).await.unwrap()
                })
                .await;
            }

            #[tokio::test]
            async fn reconnect() {
                let dir = tempfile::tempdir().unwrap();
                if $name == "postgres" && postgres_url().is_none() {
                    return;
                }
                let db = crate::common::fresh_database($name, dir.path()).await;
                let s = Store::connect(&db).await.unwrap();
                reconnect_keeps_data_and_migrations_are_idempotent(s, async || {
                    Store::connect(&db).await.unwrap()
                })
                .await;
            }
        }
    };
}

suite!(sqlite, "sqlite");
suite!(postgres, "postgres");

async fn bridge_mappings(store: Store) {
    use mxbridge::{
        PortalKey, RemoteLoginId,
        store::{GhostRow, MessageRow, PortalRow},
    };
    use ruma::{event_id, room_id, user_id};
    let key = PortalKey::shared("chat1");
    assert_eq!(store.portal(&key).await.unwrap(), None);
    let mut portal = PortalRow {
        key: key.clone(),
        room_id: Some(room_id!("!p:x").to_owned()),
        name: Some("Chat".into()),
        topic: None,
        avatar_url: None,
        metadata: Some("{\"k\":1}".into()),
    };
    store.upsert_portal(&portal).await.unwrap();
    portal.topic = Some("Topic".into());
    store.upsert_portal(&portal).await.unwrap();
    // The same chat seen by one login only is another portal.
    let dm = PortalKey::for_login("chat1", RemoteLoginId::from("alice"));
    let dm_row = PortalRow {
        key: dm.clone(),
        room_id: Some(room_id!("!dm:x").to_owned()),
        ..portal.clone()
    };
    store.upsert_portal(&dm_row).await.unwrap();
    assert_eq!(store.portal_by_room(room_id!("!p:x")).await.unwrap(), Some(portal.clone()));
    assert_eq!(store.portal(&key).await.unwrap(), Some(portal));
    assert_eq!(store.portal(&dm).await.unwrap(), Some(dm_row));
    assert!(store.delete_portal(&key).await.unwrap());
    assert!(!store.delete_portal(&key).await.unwrap());
    assert!(store.portal(&dm).await.unwrap().is_some());

    let ghost = GhostRow {
        remote_id: "Bob".into(),
        user_id: user_id!("@_t__bob:x").to_owned(),
        displayname: Some("Bob".into()),
        avatar_url: None,
        metadata: None,
    };
    store.upsert_ghost(&ghost).await.unwrap();
    assert_eq!(store.ghost_by_user(user_id!("@_t__bob:x")).await.unwrap(), Some(ghost.clone()));
    assert_eq!(store.ghost(&"Bob".into()).await.unwrap(), Some(ghost));

    let m = |part: &str, event: &str| MessageRow {
        portal: key.clone(),
        id: "m1".into(),
        part: part.into(),
        event_id: event.try_into().unwrap(),
        room_id: room_id!("!p:x").to_owned(),
        sender: user_id!("@_t__bob:x").to_owned(),
        timestamp: 1_600_000_000_000,
    };
    store.insert_messages(&[m("b", "$two")]).await.unwrap();
    store.insert_messages(&[m("a", "$one"), m("a", "$one")]).await.unwrap();
    let parts = store.message_parts(&key, &"m1".into()).await.unwrap();
    assert_eq!(parts.iter().map(|p| p.event_id.as_str()).collect::<Vec<_>>(), ["$one", "$two"]);
    assert_eq!(store.message_by_event(event_id!("$two")).await.unwrap(), Some(m("b", "$two")));
    assert_eq!(store.delete_messages(&key).await.unwrap(), 2);
    assert_eq!(store.message_by_event(event_id!("$two")).await.unwrap(), None);

    // An event that went out as two remote messages maps to both.
    let mut second = m("", "$split");
    second.id = "m3".into();
    store.insert_messages(&[m("", "$split"), second]).await.unwrap();
    assert_eq!(store.message_parts(&key, &"m3".into()).await.unwrap().len(), 1);
    assert_eq!(store.message_parts(&key, &"m1".into()).await.unwrap().len(), 1);

    store.kv_put("hooks", "b", "{\"n\":2}").await.unwrap();
    store.kv_put("hooks", "a", "{\"n\":1}").await.unwrap();
    store.kv_put("hooks", "a", "{\"n\":3}").await.unwrap();
    store.kv_put("other", "a", "x").await.unwrap();
    assert_eq!(store.kv_get("hooks", "a").await.unwrap().as_deref(), Some("{\"n\":3}"));
    let list = store.kv_list("hooks").await.unwrap();
    assert_eq!(list, [("a".into(), "{\"n\":3}".into()), ("b".into(), "{\"n\":2}".into())]);
    assert!(store.kv_delete("hooks", "a").await.unwrap());
    assert_eq!(store.kv_get("hooks", "a").await.unwrap(), None);
    assert_eq!(store.kv_get("other", "a").await.unwrap().as_deref(), Some("x"));

    // Several at once: new keys added, an old one replaced, the namespace kept apart.
    store.kv_put_many("hooks", &[("c", "3"), ("b", "2b")]).await.unwrap();
    store.kv_put_many("hooks", &[]).await.unwrap();
    let list = store.kv_list("hooks").await.unwrap();
    assert_eq!(list, [("b".into(), "2b".into()), ("c".into(), "3".into())]);
    assert_eq!(store.kv_get("other", "c").await.unwrap(), None);
}

async fn portal_lookups_by_room_follow_writes(store: Store) {
    use mxbridge::{PortalKey, store::PortalRow};
    use ruma::room_id;
    // A miss is remembered, then forgotten when a portal is written.
    assert_eq!(store.portal_by_room(room_id!("!q:x")).await.unwrap(), None);
    let portal = PortalRow {
        key: PortalKey::shared("c"),
        room_id: Some(room_id!("!q:x").to_owned()),
        name: None,
        topic: None,
        avatar_url: None,
        metadata: None,
    };
    store.upsert_portal(&portal).await.unwrap();
    assert_eq!(store.portal_by_room(room_id!("!q:x")).await.unwrap().as_ref(), Some(&portal));
    // A clone of the store shares the cache: a write through one is seen by the other.
    let other = store.clone();
    let moved = PortalRow { room_id: Some(room_id!("!z:x").to_owned()), ..portal };
    other.upsert_portal(&moved).await.unwrap();
    assert_eq!(store.portal_by_room(room_id!("!q:x")).await.unwrap(), None);
    assert_eq!(store.portal_by_room(room_id!("!z:x")).await.unwrap(), Some(moved));
    other.delete_portal(&PortalKey::shared("c")).await.unwrap();
    assert_eq!(store.portal_by_room(room_id!("!z:x")).await.unwrap(), None);
}

/// SQLite: the WAL is copied into the database file by a task beside the writer, not only by
/// the commit that takes it past `wal_autocheckpoint` (10,000 pages): soon after one small
/// transaction, the database file alone holds it.
#[tokio::test]
async fn sqlite_wal_is_checkpointed_beside_the_writer() {
    use sqlx::{ConnectOptions as _, Connection as _};
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store("sqlite", dir.path()).await;
    let out = store.accept_transaction("1", "h", &[ev("$bg", "!r", "{}")]).await.unwrap();
    assert_eq!(out, AcceptOutcome::Stored { new_events: 1 });
    let copy = dir.path().join("copy.db");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // The database file without its WAL: what a checkpoint copied, nothing else.
        std::fs::copy(dir.path().join("store.db"), &copy).unwrap();
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&copy)
            .read_only(true)
            .immutable(true);
        let mut conn = options.connect().await.unwrap();
        // Before the first checkpoint the file may not even hold the tables.
        let batches: i64 = sqlx::query_scalar("SELECT count(*) FROM mx_inbox_batch")
            .fetch_one(&mut conn)
            .await
            .unwrap_or(0);
        conn.close().await.unwrap();
        if batches == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stored batch never reached the database file: no checkpoint ran"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    store.close().await;
}
