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

use std::{
    borrow::Cow,
    ops::Range,
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;

use crate::{
    bridge::Event,
    dispatch::{Inbox, LiveBatch, Routed},
    store::{AcceptOutcome, InboxPos, IncomingTxn, NewEvent, PendingEvent, Store},
    util::range_in,
};

/// The most transactions stored in one group.
const MAX_GROUP: usize = 256;

/// The queue and the writer's turn.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    /// Where committed batches go.
    inbox: Inbox,
    /// Transactions waiting to be stored.
    queue: Mutex<Vec<Queued>>,
    /// Held by the request that is storing a group.
    writer: tokio::sync::Mutex<()>,
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
    /// A group commit that hands what it stores to `inbox`.
    pub(crate) fn new(inbox: Inbox) -> Self {
        Self { inbox, queue: Mutex::default(), writer: tokio::sync::Mutex::default() }
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
        let turn = self.writer.lock().await;
        if let Ok(result) = outcome.try_recv() {
            // A previous writer stored our transaction with its group.
            return result;
        }
        let group: Vec<Queued> = {
            let mut queue = self.queue.lock().expect("lock poisoned");
            let n = queue.len().min(MAX_GROUP);
            queue.drain(..n).collect()
        };
        let mut turn = Turn { inbox: &self.inbox, handed_off: false, _turn: turn };
        self.write(store, group, &mut turn).await;
        drop(turn);
        outcome.await.map_err(|_| "the group commit was interrupted".to_owned())?
    }

    /// Stores a group, hands its batches to the dispatcher (in commit order: the caller holds
    /// the writer's turn) and answers every member.
    async fn write(&self, store: &Store, mut group: Vec<Queued>, turn: &mut Turn<'_>) {
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
                    .map(|(q, events)| IncomingTxn {
                        txn_id: &q.txn_id,
                        body_hash: &q.hash,
                        events,
                    })
                    .collect();
                match store.accept_batched(&txns).await {
                    Ok(accepted) => {
                        for ((t, a), parsed) in txns.iter().zip(&accepted).zip(&mut parsed) {
                            for b in &a.batches {
                                self.inbox.hand_off(live_batch(b.seq, &b.events, t.events, parsed));
                            }
                        }
                        turn.handed_off = true;
                        Ok(accepted.into_iter().map(|a| a.outcome).collect::<Vec<_>>())
                    }
                    Err(e) => Err(e.to_string()),
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
}

/// The writer's turn, held while a group is stored and handed to the dispatcher.
///
/// A request's future is dropped when its client goes away (hyper drops it), possibly while
/// its group's `COMMIT` is on its way to the database: then the group is stored but was not
/// handed over, and the dispatcher, which follows the hand-offs, would route the later batches
/// and never this one (until a restart). So a turn given back without a hand-off first tells
/// the dispatcher to read from the database (as after an overflow of its queue), before the
/// next group can be handed over. Harmless when nothing was stored: one read finds nothing.
struct Turn<'a> {
    inbox: &'a Inbox,
    handed_off: bool,
    /// Released after `drop` below ran (fields drop after `Drop::drop`).
    _turn: tokio::sync::MutexGuard<'a, ()>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if !self.handed_off {
            self.inbox.overflowed();
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
        let schema = crate::store::TestSchema {
            name: "t_group_commit",
            create: "CREATE SCHEMA t_group_commit",
            drop: "DROP SCHEMA IF EXISTS t_group_commit CASCADE",
        };
        let Some(store) = schema.store().await else { return };
        concurrent_transactions(store.clone()).await;
        schema.remove(store).await;
    }

    /// A request dropped at any point of its group commit (its client went away) leaves either
    /// nothing stored, or its batch handed to the dispatcher, or the dispatcher told to read
    /// the database. Dropped once its commit ran but before it read the answer, the batch is
    /// stored without a hand-off: without the read, the dispatcher would never route it.
    #[tokio::test]
    async fn a_request_dropped_during_its_commit_does_not_strand_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut stranded = 0;
        // Whether a drop lands between the commit and the hand-off depends on how fast the
        // database thread answers: sweep the drop point until it happened a few times.
        for sweep in 0..50 {
            for polls in 1.. {
                let url = format!("sqlite://{}/drop{sweep}-{polls}.db", dir.path().display());
                let (finished, case) = drop_after_polls(&url, polls).await;
                assert_ne!(case, Case::Stranded, "dropped after {polls} polls");
                stranded += usize::from(case == Case::StoredNotHandedOver);
                if finished {
                    break;
                }
            }
            if stranded >= 3 {
                return;
            }
        }
        panic!("a drop landed between the commit and the hand-off only {stranded} times");
    }

    #[derive(Debug, PartialEq)]
    enum Case {
        NotStored,
        HandedOver,
        /// Stored, not handed over, and the dispatcher told to read the database.
        StoredNotHandedOver,
        /// Stored, not handed over, and the dispatcher not told: it would never route it.
        Stranded,
    }

    /// Stores a transaction through a group commit, polling its future `polls` times (the
    /// database answering after each) before dropping it: whether it finished, and what it left.
    async fn drop_after_polls(url: &str, polls: usize) -> (bool, Case) {
        let store = Store::connect_url(url).await.unwrap();
        let (inbox, mut live) = Inbox::for_tests();
        let gc = GroupCommit::new(inbox.clone());
        let body = Arc::new(
            r#"{"events":[{"event_id":"$e","room_id":"!r:x","sender":"@u:x","type":"t"}]}"#
                .to_owned(),
        );
        let parsed = crate::server::transactions::parse_text(&body).unwrap();
        // Boxed, so that `drop` below drops the future itself.
        let mut fut = Box::pin(gc.store(&store, "t", "h", &body, &parsed.events, parsed.parsed));
        let mut finished = false;
        for _ in 0..polls {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if fut.as_mut().poll(&mut cx).is_ready() {
                finished = true;
                break;
            }
            // The database thread runs the command just sent (after the last one, the commit).
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        drop(fut);
        // A write queues behind whatever the dropped request had sent.
        store.clear_failures("$none").await.unwrap();
        let stored = !store.pending_batches(0, 10).await.unwrap().is_empty();
        let case = match (stored, live.try_recv().is_ok(), inbox.overflow_pending()) {
            (false, ..) => Case::NotStored,
            (true, true, _) => Case::HandedOver,
            (true, false, true) => Case::StoredNotHandedOver,
            (true, false, false) => Case::Stranded,
        };
        store.close().await;
        (finished, case)
    }

    async fn concurrent_transactions(store: Store) {
        let (inbox, mut live) = Inbox::for_tests();
        let gc = Arc::new(GroupCommit::new(inbox));
        let spawn = |n: usize| {
            let (store, gc) = (store.clone(), gc.clone());
            tokio::spawn(async move {
                // An escaped room ID makes the parser copy it: both kinds of text are queued.
                let body = Arc::new(format!(
                    r#"{{"events":[{{"event_id":"$e{n}","room_id":"!r{}\u003ax","sender":"@u:x","type":"t"}}]}}"#,
                    n % 3
                ));
                let parsed = crate::server::transactions::parse_text(&body).unwrap();
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
