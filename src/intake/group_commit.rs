//! Group commit: transactions that arrive while another is being stored are stored together,
//! in one database transaction, by whichever request takes the writer's turn next.
//!
//! Each request queues its parsed transaction (the body and where each event sits in it) and
//! waits for the writer lock. The holder takes everything queued — its own transaction and any
//! that arrived meanwhile — stores it with [`Store::accept_transactions`], and hands each
//! request its outcome. A request finds its outcome ready when it gets the lock, or stores the
//! next group itself. Nobody answers 200 before its transaction is committed. Under a single
//! in-flight transaction (Synapse's way) this is just one commit per transaction; under
//! concurrency the commit cost is shared.
//!
//! Storing a group and handing it over is run to its end, holding the writer's turn
//! throughout. hyper drops a request's future when its client goes away, and a future dropped
//! while its commit was on the database's thread would leave the group committed and never
//! handed over: the dispatcher follows the hand-offs, so it would route the later batches and
//! never that one (until a restart). The request polls that work itself, so the common case
//! costs no task; a request dropped first hands the rest to a task of its own
//! ([`RunToEnd`](crate::util::RunToEnd)).

use std::{
    borrow::Cow,
    ops::Range,
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;

use crate::{
    event::Event,
    intake::{Handoff, LiveBatch, Routed},
    store::{AcceptOutcome, InboxPos, IncomingTxn, NewEvent, PendingEvent, Store},
    util::{RunToEnd, range_in},
};

/// The most transactions stored in one group.
const MAX_GROUP: usize = 256;

/// The queue and the writer's turn.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    /// Where committed batches go.
    handoff: Handoff,
    /// Transactions waiting to be stored.
    queue: Mutex<Vec<Queued>>,
    /// The writer's turn, held by the task that is storing a group.
    writer: Arc<tokio::sync::Mutex<()>>,
}

type Reply = Result<AcceptOutcome, String>;

#[derive(Debug)]
struct Queued {
    txn_id: String,
    hash: String,
    /// The request body, checked as UTF-8, which the events' ranges point into.
    body: Arc<String>,
    events: Vec<QueuedEvent>,
    /// The events parsed, for the dispatcher (taken when handed over).
    parsed: Vec<Option<Event>>,
    reply: oneshot::Sender<Reply>,
}

#[derive(Debug)]
struct QueuedEvent {
    event_id: Text,
    room_id: Text,
    json: Range<usize>,
}

/// A string that is either a slice of the request body or (when JSON escapes made the parser
/// copy it) owned.
#[derive(Debug)]
enum Text {
    Body(Range<usize>),
    Owned(String),
}

/// A slice of the body is kept as its range; anything else (an unescaped copy) is owned.
fn text(body: &str, value: &str) -> Text {
    range_in(body.as_bytes(), value.as_bytes())
        .map_or_else(|| Text::Owned(value.to_owned()), Text::Body)
}

/// The slice of `body` at `range` (ranges come from slices of it, so this only fails on a bug).
fn slice(body: &str, range: Range<usize>) -> Result<&str, String> {
    body.get(range).ok_or_else(|| "an event's range is not in its body".to_owned())
}

fn resolve<'a>(body: &'a str, t: &'a Text) -> Result<&'a str, String> {
    match t {
        Text::Owned(s) => Ok(s),
        Text::Body(r) => slice(body, r.clone()),
    }
}

impl GroupCommit {
    /// A group commit that hands what it stores to `handoff`.
    pub(crate) fn new(handoff: Handoff) -> Self {
        Self { handoff, queue: Mutex::default(), writer: Arc::default() }
    }

    /// Stores one parsed transaction (whose events borrow from `body`), possibly together with
    /// others, and returns its outcome once committed.
    ///
    /// # Errors
    /// The database's error, as text, when the group could not be stored.
    pub(crate) async fn store(
        &self,
        store: &Store,
        txn_id: &str,
        hash: &str,
        body: &Arc<String>,
        events: &[NewEvent<'_>],
        parsed: Vec<Event>,
    ) -> Reply {
        let (reply, mut outcome) = oneshot::channel();
        let queued = Queued {
            txn_id: txn_id.to_owned(),
            hash: hash.to_owned(),
            body: body.clone(),
            events: events
                .iter()
                .map(|e| QueuedEvent {
                    event_id: text(body, &e.event_id),
                    room_id: text(body, &e.room_id),
                    json: range_in(body.as_bytes(), e.json.as_bytes()).unwrap_or(0..0),
                })
                .collect(),
            parsed: parsed.into_iter().map(Some).collect(),
            reply,
        };
        self.queue.lock().expect("lock poisoned").push(queued);
        let turn = self.writer.clone().lock_owned().await;
        if let Ok(result) = outcome.try_recv() {
            // A previous writer stored our transaction with its group.
            return result;
        }
        let group: Vec<Queued> = {
            let mut queue = self.queue.lock().expect("lock poisoned");
            let n = queue.len().min(MAX_GROUP);
            queue.drain(..n).collect()
        };
        // Run to its end whatever becomes of this request (see the module documentation); the
        // answer comes through `outcome`.
        let (handoff, store) = (self.handoff.clone(), store.clone());
        RunToEnd::new(async move {
            write(&handoff, &store, group).await;
            drop(turn);
        })
        .await;
        outcome.await.map_err(|_| "the group commit was interrupted".to_owned())?
    }
}

/// Stores a group, hands its batches to the dispatcher (in commit order: the caller holds the
/// writer's turn) and answers every member.
async fn write(handoff: &Handoff, store: &Store, mut group: Vec<Queued>) {
    let mut parsed: Vec<Vec<Option<Event>>> =
        group.iter_mut().map(|q| std::mem::take(&mut q.parsed)).collect();
    let resolved: Result<Vec<Vec<NewEvent<'_>>>, String> = group
        .iter()
        .map(|q| {
            q.events
                .iter()
                .map(|e| {
                    Ok(NewEvent {
                        event_id: Cow::Borrowed(resolve(&q.body, &e.event_id)?),
                        room_id: Cow::Borrowed(resolve(&q.body, &e.room_id)?),
                        json: slice(&q.body, e.json.clone())?,
                    })
                })
                .collect()
        })
        .collect();
    let result = match &resolved {
        Ok(events) => {
            let txns: Vec<IncomingTxn<'_>> = group
                .iter()
                .zip(events)
                .map(|(q, events)| IncomingTxn { txn_id: &q.txn_id, body_hash: &q.hash, events })
                .collect();
            match store.accept_batched(&txns).await {
                Ok(accepted) => {
                    for ((t, a), parsed) in txns.iter().zip(&accepted).zip(&mut parsed) {
                        for b in &a.batches {
                            handoff.hand_off(live_batch(b.seq, &b.events, t.events, parsed));
                        }
                    }
                    Ok(accepted.into_iter().map(|a| a.outcome).collect::<Vec<_>>())
                }
                Err(e) => {
                    // A failed store stored nothing, as a rule. Should a batch have been
                    // committed all the same, the dispatcher finds it in the database.
                    handoff.overflowed();
                    Err(e.to_string())
                }
            }
        }
        Err(e) => Err(e.clone()),
    };
    match result {
        Ok(outcomes) => {
            for (q, outcome) in group.into_iter().zip(outcomes) {
                let _ = q.reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            for q in group {
                let _ = q.reply.send(Err(e.clone()));
            }
        }
    }
}

/// The dispatcher's copy of a stored batch: the events at `indexes` of a transaction, in their
/// parsed form (which holds the IDs and the JSON, so nothing is copied again), or as stored when
/// one could not be handed over parsed.
fn live_batch(
    seq: i64,
    indexes: &[usize],
    events: &[NewEvent<'_>],
    parsed: &mut [Option<Event>],
) -> LiveBatch {
    let events = indexes
        .iter()
        .enumerate()
        .map(|(idx, &i)| {
            let pos = InboxPos::Batch { seq, idx: i32::try_from(idx).unwrap_or(i32::MAX) };
            match parsed.get_mut(i).and_then(Option::take) {
                Some(event) => Routed::Parsed { pos, event },
                None => Routed::Stored(PendingEvent {
                    pos,
                    event_id: events[i].event_id.clone().into_owned(),
                    room_id: events[i].room_id.clone().into_owned(),
                    json: events[i].json.to_owned(),
                    attempts: 0,
                }),
            }
        })
        .collect();
    LiveBatch { seq, events }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn concurrent_transactions_are_stored_once_each_and_duplicates_are_told() {
        let store = Store::connect_url("sqlite::memory:").await.unwrap();
        concurrent_transactions(store).await;
    }

    /// The same on PostgreSQL, where a group is one statement unless something in it was seen
    /// before (here, often: each transaction comes twice, sometimes in one group).
    #[tokio::test]
    async fn concurrent_transactions_on_postgres() {
        let schema = crate::store::test_schema!("t_group_commit");
        let Some(store) = schema.store().await else { return };
        concurrent_transactions(store.clone()).await;
        schema.remove(store).await;
    }

    /// A request dropped at any point (its client went away) never keeps its batch from the
    /// dispatcher: whatever was stored is handed over, in commit order, before the next
    /// request's batch. The drop point is swept over the request's polls, each followed by a
    /// wait of 0 to 2 ms, so that drops land before, during and after the commit.
    #[tokio::test]
    async fn a_request_dropped_at_any_point_does_not_strand_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut dropped_after_commit = 0;
        for wait_us in [0, 100, 500, 2000] {
            for polls in 1.. {
                let url = format!("sqlite://{}/drop{wait_us}-{polls}.db", dir.path().display());
                let (finished, stored_before_next) = drop_after_polls(&url, polls, wait_us).await;
                dropped_after_commit += usize::from(!finished && stored_before_next);
                if finished {
                    break;
                }
            }
        }
        // The case this test is about happened.
        assert!(dropped_after_commit >= 3, "{dropped_after_commit} drops after the commit");
    }

    fn body(id: &str) -> Arc<String> {
        Arc::new(format!(
            r#"{{"events":[{{"event_id":"{id}","room_id":"!r:x","sender":"@u:x","type":"t"}}]}}"#
        ))
    }

    /// Stores `$first` through a group commit, polling its request's future `polls` times
    /// (waiting `wait_us` after each) before dropping it, then stores `$next` to the end.
    /// Checks that what is stored was handed over, in order, and returns whether the first
    /// request finished and whether `$first` was stored.
    async fn drop_after_polls(url: &str, polls: usize, wait_us: u64) -> (bool, bool) {
        let store = Store::connect_url(url).await.unwrap();
        let (handoff, mut live) = Handoff::for_tests();
        let gc = GroupCommit::new(handoff.clone());
        let first = body("$first");
        let parsed = crate::intake::parse_text(&first).unwrap();
        // Boxed, so that `drop` below drops the future itself.
        let mut fut = Box::pin(gc.store(&store, "1", "h", &first, &parsed.events, parsed.parsed));
        let wait = std::time::Duration::from_micros(wait_us);
        let finished = crate::util::poll_times(&mut fut, polls, wait).await;
        drop(fut);
        // Whether `$first` is stored before `$next` comes.
        let stored_before_next = {
            store.clear_failures("$none").await.unwrap();
            let pending = store.pending_batches(0, 10).await.unwrap();
            pending.iter().flat_map(|b| &b.events).any(|e| e.event_id == "$first")
        };
        let next = body("$next");
        let parsed = crate::intake::parse_text(&next).unwrap();
        let out = gc.store(&store, "2", "h", &next, &parsed.events, parsed.parsed).await.unwrap();
        assert_eq!(out, AcceptOutcome::Stored { new_events: 1 });
        let stored: Vec<String> = store
            .pending_batches(0, 10)
            .await
            .unwrap()
            .into_iter()
            .flat_map(|b| b.events)
            .map(|e| e.event_id)
            .collect();
        let mut handed = Vec::new();
        while let Ok(batch) = live.try_recv() {
            for routed in batch.events {
                let Routed::Parsed { event, .. } = routed else { panic!("not handed over parsed") };
                handed.push(event.event_id.to_string());
            }
        }
        assert_eq!(handed, stored, "dropped after {polls} polls, waiting {wait_us} µs after each");
        assert!(stored.ends_with(&["$next".to_owned()]));
        store.close().await;
        (finished, stored_before_next)
    }

    async fn concurrent_transactions(store: Store) {
        let (handoff, mut live) = Handoff::for_tests();
        let gc = Arc::new(GroupCommit::new(handoff));
        let spawn = |n: usize| {
            let (store, gc) = (store.clone(), gc.clone());
            tokio::spawn(async move {
                // An escaped room ID makes the parser copy it: both kinds of text are queued.
                let body = Arc::new(format!(
                    concat!(
                        r#"{{"events":[{{"event_id":"$e{}","room_id":"!r{}\u003ax","#,
                        r#""sender":"@u:x","type":"t"}}]}}"#,
                    ),
                    n,
                    n % 3
                ));
                let parsed = crate::intake::parse_text(&body).unwrap();
                gc.store(&store, &n.to_string(), "h", &body, &parsed.events, parsed.parsed)
                    .await
                    .unwrap()
            })
        };
        // Transactions 0..20 twice each: the second copy is a duplicate (groups with a copy take
        // the careful path). Then 20 new ones at once: groups of new transactions only.
        let mut stored = 0;
        let mut duplicates = 0;
        for wave in [(0..40).map(|i| i % 20).collect::<Vec<_>>(), (100..120).collect()] {
            let tasks: Vec<_> = wave.into_iter().map(spawn).collect();
            for t in tasks {
                match t.await.unwrap() {
                    AcceptOutcome::Stored { new_events: 1 } => stored += 1,
                    AcceptOutcome::Duplicate => duplicates += 1,
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!((stored, duplicates), (40, 20));
        let pending: Vec<PendingEvent> = store
            .pending_batches(0, 100)
            .await
            .unwrap()
            .into_iter()
            .flat_map(|b| b.events)
            .collect();
        assert_eq!(pending.len(), 40);
        // The same batches were handed to the dispatcher, in commit (= seq) order.
        let mut handed = Vec::new();
        while let Ok(b) = live.try_recv() {
            for routed in b.events {
                let Routed::Parsed { pos, event } = routed else {
                    panic!("not handed over parsed")
                };
                let (id, room) = (event.event_id.to_string(), event.room_id.to_string());
                handed.push((pos, id, room, event.json().to_owned()));
            }
        }
        let stored: Vec<_> = pending
            .iter()
            .map(|e| (e.pos, e.event_id.clone(), e.room_id.clone(), e.json.clone()))
            .collect();
        assert_eq!(handed, stored);
        assert!(pending.iter().all(|p| p.json.starts_with("{\"event_id\"")), "{pending:?}");
        assert!(pending.iter().all(|p| p.room_id.ends_with(":x")), "{pending:?}");
    }
}
