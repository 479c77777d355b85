//! Queueing from many callers at once: group commits, batches, and their failures.

use ruma::RoomId;

use super::{
    tests::{GHOST, ROOMS, alice, setup, start},
    *,
};
use crate::testing::MockHomeserver;

async fn mount_sends(hs: &MockHomeserver) {
    for room in ROOMS {
        let room = <&RoomId>::try_from(room).unwrap();
        hs.mock_send(room, "m.room.message")
            .as_user(&ruma::UserId::parse(GHOST).unwrap())
            .ok()
            .mount()
            .await;
    }
}

/// Many producers at once, some queueing one event at a time and some in batches, to the same
/// three portals: each call returns its own seqs once committed, a producer's events get
/// increasing seqs in the order it queued them (so its events in a portal keep their order,
/// whichever groups they were committed in), and each room gets its events once, in queue
/// order.
#[tokio::test]
async fn concurrent_producers_keep_their_order_per_portal_across_groups() {
    let hs = MockHomeserver::start().await;
    let ctx = setup(&hs).await;
    mount_sends(&hs).await;
    let _stop = start(&ctx);
    let producers: Vec<_> = (0..12)
        .map(|p| {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let mut queued = Vec::new();
                let mut i = 0;
                while i < 24 {
                    // Producers 0, 3, 6 and 9 queue batches of 1 to 4 events, the others one
                    // event a call.
                    let n = if p % 3 == 0 { 1 + i % 4 } else { 1 };
                    let events: Vec<(PortalKey, RemoteEvent)> = (i..i + n)
                        .map(|k| {
                            let id = format!("p{p}-{k}");
                            let portal = PortalKey::shared(format!("chat-{}", (p + k) % 3));
                            (portal, RemoteEvent::text(id.as_str(), alice(), id.as_str()))
                        })
                        .collect();
                    let done = if n == 1 {
                        vec![ctx.queue_remote(&events[0].0, &events[0].1).await.unwrap()]
                    } else {
                        ctx.queue_remote_batch(&events).await.unwrap()
                    };
                    assert_eq!(done.len(), n);
                    for ((portal, _), q) in events.into_iter().zip(done) {
                        queued.push((portal, q));
                    }
                    i += n;
                }
                queued
            })
        })
        .collect();
    let mut by_portal: FastMap<PortalKey, Vec<i64>> = FastMap::default();
    let mut waiting = Vec::new();
    for producer in producers {
        let queued = producer.await.unwrap();
        let seqs: Vec<i64> = queued.iter().map(|(_, q)| q.seq()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "a producer's events in its order");
        for (portal, q) in queued {
            by_portal.entry(portal).or_default().push(q.seq());
            waiting.push(q);
        }
    }
    for q in waiting {
        assert_eq!(q.bridged().await.unwrap().len(), 1);
    }
    for (n, room) in ROOMS.iter().enumerate() {
        let room = <&RoomId>::try_from(*room).unwrap();
        let mut expected = by_portal.remove(&PortalKey::shared(format!("chat-{n}"))).unwrap();
        expected.sort_unstable();
        let expected: Vec<String> = expected.iter().map(|s| format!("mxb.q{s}.0")).collect();
        assert_eq!(hs.sent_txn_ids(room, "m.room.message").await, expected, "order in {room}");
    }
    assert_eq!(ctx.store().remote_queue_counts().await.unwrap(), (0, 0));
}

/// A group commit that fails returns the error to every producer in it, and none of its
/// events is queued; what other groups committed is kept and bridged.
#[tokio::test]
async fn a_failed_group_fails_every_producer_in_it_and_loses_nothing_committed() {
    let hs = MockHomeserver::start().await;
    let ctx = setup(&hs).await;
    mount_sends(&hs).await;
    ctx.store().fail_poisoned_remote_events().await;
    let key = PortalKey::shared("chat-0");
    let first = RemoteEvent::text("m-first", alice(), "ok first");
    let mut committed =
        vec![("ok first".to_owned(), ctx.queue_remote(&key, &first).await.unwrap())];
    // While the writer is busy, producers pile up: the first of them writes a small group
    // when it is free, the others the next, with poisoned events among them.
    ctx.store().hold_writer_for(std::time::Duration::from_millis(300)).await;
    let producers: Vec<_> = (0..30)
        .map(|i| {
            let (ctx, key) = (ctx.clone(), key.clone());
            tokio::spawn(async move {
                let body = if i % 10 == 5 { format!("poison {i}") } else { format!("ok {i}") };
                let event = RemoteEvent::text(format!("m{i}"), alice(), body.as_str());
                (body, ctx.queue_remote(&key, &event).await)
            })
        })
        .collect();
    let mut failed = Vec::new();
    for producer in producers {
        match producer.await.unwrap() {
            (body, Ok(queued)) => committed.push((body, queued)),
            (body, Err(RemoteError::Store(_))) => failed.push(body),
            (_, Err(e)) => panic!("{e}"),
        }
    }
    assert!(failed.iter().any(|b| b.starts_with("poison")));
    assert!(!committed.iter().any(|(b, _)| b.starts_with("poison")));
    assert!(failed.iter().any(|b| b.starts_with("ok")), "a poisoned event's group mates fail");
    assert!(!committed.is_empty());
    // Exactly what was acknowledged is in the queue, each event at its seq.
    let rows = ctx.store().queued_remote(0).await.unwrap();
    let stored: Vec<(i64, bool)> = rows
        .iter()
        .map(|r| (r.seq, failed.iter().any(|b| r.event.contains(&format!("\"{b}\"")))))
        .collect();
    assert_eq!(stored.len(), committed.len());
    assert!(stored.iter().all(|(_, failed)| !failed));
    for (body, queued) in &committed {
        let row = rows.iter().find(|r| r.seq == queued.seq()).unwrap();
        assert!(row.event.contains(&format!("\"{body}\"")), "{body} at its seq");
    }
    let _stop = start(&ctx);
    for (_, queued) in committed {
        assert_eq!(queued.bridged().await.unwrap().len(), 1);
    }
    assert_eq!(ctx.store().remote_queue_counts().await.unwrap(), (0, 0));
}

/// A message queued twice (the remote network delivered it again) is sent once, though both
/// copies were read from the queue before the first was bridged.
#[tokio::test]
async fn a_message_queued_twice_and_read_at_once_is_sent_once() {
    let hs = MockHomeserver::start().await;
    let ctx = setup(&hs).await;
    mount_sends(&hs).await;
    let key = PortalKey::shared("chat-0");
    let event = RemoteEvent::text("m1", alice(), "once");
    let both = ctx.queue_remote_batch(&[(key.clone(), event.clone()), (key, event)]).await.unwrap();
    let _stop = start(&ctx);
    let mut bridged = Vec::new();
    for q in both {
        bridged.push(q.bridged().await.unwrap().len());
    }
    assert_eq!(bridged, [1, 0]);
    let room = <&RoomId>::try_from(ROOMS[0]).unwrap();
    assert_eq!(hs.sent_txn_ids(room, "m.room.message").await.len(), 1);
}

/// While the pipeline runs, a group commit that fails makes the fetch loop read the database
/// again (a failed commit may have stored its rows all the same): what was committed before
/// and after it is bridged, each event once and in queue order, and nothing of the failed group.
#[tokio::test]
async fn a_failed_group_while_running_loses_nothing_committed_around_it() {
    let hs = MockHomeserver::start().await;
    let ctx = setup(&hs).await;
    mount_sends(&hs).await;
    ctx.store().fail_poisoned_remote_events().await;
    let key = PortalKey::shared("chat-0");
    let _stop = start(&ctx);
    let mut queued = Vec::new();
    for i in 0..6 {
        let body = if i == 3 { "poison".to_owned() } else { format!("ok {i}") };
        let event = RemoteEvent::text(format!("m{i}"), alice(), body.as_str());
        match ctx.queue_remote(&key, &event).await {
            Ok(q) => queued.push(q),
            Err(RemoteError::Store(_)) => assert_eq!(i, 3, "only the poisoned event fails"),
            Err(e) => panic!("{e}"),
        }
    }
    let seqs: Vec<i64> = queued.iter().map(Queued::seq).collect();
    for q in queued {
        assert_eq!(q.bridged().await.unwrap().len(), 1);
    }
    let room = <&RoomId>::try_from(ROOMS[0]).unwrap();
    let expected: Vec<String> = seqs.iter().map(|s| format!("mxb.q{s}.0")).collect();
    assert_eq!(hs.sent_txn_ids(room, "m.room.message").await, expected);
    assert_eq!(ctx.store().remote_queue_counts().await.unwrap(), (0, 0));
}

/// The hand-off keeps committed events only while open, in the order handed over; past its
/// bound it drops them and says so until it is opened again (before the database is read).
#[test]
fn the_handoff_keeps_events_only_while_open_and_reports_what_it_dropped() {
    let handoff = Handoff::default();
    let item = |seq| Item {
        seq,
        portal: PortalKey::shared("chat-0"),
        event: Err(String::new()),
        attempts: 0,
        unmapped_as_of: None,
    };
    let seqs =
        |taken: Option<Vec<Item>>| taken.map(|t| t.iter().map(|i| i.seq).collect::<Vec<_>>());
    handoff.hand(vec![item(1)]);
    assert_eq!(seqs(handoff.take()), Some(vec![]), "closed: nothing kept");
    handoff.open();
    handoff.hand(vec![item(2), item(3)]);
    handoff.hand(vec![item(4)]);
    assert_eq!(seqs(handoff.take()), Some(vec![2, 3, 4]));
    assert_eq!(seqs(handoff.take()), Some(vec![]));
    handoff.hand(vec![item(5)]);
    handoff.hand((6..).take(HANDOFF_MAX).map(item).collect());
    assert_eq!(seqs(handoff.take()), None, "over the bound: the database is read");
    handoff.hand(vec![item(9)]);
    assert_eq!(seqs(handoff.take()), None);
    handoff.open();
    assert_eq!(seqs(handoff.take()), Some(vec![]));
    handoff.missed();
    assert_eq!(seqs(handoff.take()), None, "a failed commit: the database is read");
}

/// The fetch loop ends when told to stop, and when its stop sender is gone, after it has
/// bridged what was queued: it neither waits forever nor spins.
#[tokio::test]
async fn the_fetch_loop_ends_when_its_stop_sender_is_gone() {
    let hs = MockHomeserver::start().await;
    let ctx = setup(&hs).await;
    mount_sends(&hs).await;
    for told in [true, false] {
        let (stop, stop_rx) = watch::channel(false);
        let running = tokio::spawn(run(ctx.clone(), Arc::new(super::tests::Quiet), stop_rx));
        let key = PortalKey::shared("chat-0");
        let event = RemoteEvent::text(format!("m-{told}"), alice(), "hello");
        let queued = ctx.queue_remote(&key, &event).await.unwrap();
        assert_eq!(queued.bridged().await.unwrap().len(), 1);
        if told {
            stop.send(true).unwrap();
        } else {
            drop(stop);
        }
        tokio::time::timeout(std::time::Duration::from_secs(5), running)
            .await
            .expect("the fetch loop ended")
            .unwrap();
    }
}
