//! The remote → Matrix pipeline: what [`Context::queue_remote`] feeds.
//!
//! A remote event is committed to the store's queue before `queue_remote` returns, so a bridge
//! may acknowledge it to the remote network then: a crash afterwards loses nothing. Calls made
//! while a commit is under way are committed together, in one transaction, in the order they
//! were made (`group.rs`); [`Context::queue_remote_batch`] commits several events in one call.
//! Each commit hands the events it stored, as they were given, to a fetch loop in memory (the
//! loop reads the queue from the database at startup, and whenever the hand-off missed events:
//! see [`Handoff`]), and the fetch loop gives each event to its portal's worker: one portal's
//! events are bridged one at a time, in the order they were queued; portals run in parallel.
//! A failure is retried with the inbox's delays (`inbox.retry_*`) and parked after
//! `inbox.max_attempts`; the portal's next events wait meanwhile, so order holds.
//!
//! A bridged event leaves the queue in the same transaction that records its last mapping (a
//! message's last part, a reaction), together with the events other workers finished
//! meanwhile. The portal's next event does not wait for that commit when it only reads
//! mappings (a message, an edit, a reaction, a receipt, typing): it is sent meanwhile, finding
//! the mappings of the event before in what is being written, and its own records are written
//! only after those of the event before. Any other event (a delete, an echo, a change of the
//! chat) waits for the commit. A message's earlier parts are recorded before the next part is
//! sent.
//!
//! Handling is idempotent: a message part already mapped is not sent again, and every send
//! takes its transaction ID from the queue row and the part (`mxb.q<seq>.<n>`), never from the
//! message it targets, so a send repeated after a crash (the event sent, the bookkeeping not
//! written) is answered by the homeserver with the event it already has. Synapse keeps
//! transaction IDs in memory for about half an hour and forgets them when it restarts, so the
//! first two events of each portal that a new life of the bridge handles (the only ones that
//! can have been sent and not recorded at a crash: one being recorded, the next sent meanwhile)
//! are first looked for in the room by their transaction IDs (`resend`): a crash between a send
//! and its mapping shows the message once, however long the bridge was down and whether or not
//! Synapse restarted.
mod resend;

use std::{sync::Arc, time::Duration};

use ruma::{
    OwnedEventId,
    api::client::receipt::create_receipt,
    events::{
        receipt::ReceiptThread,
        relation::{InReplyTo, Reply, Thread},
        room::message::{Relation, RoomMessageEventContentWithoutRelation},
    },
};
use tokio::sync::{Mutex as AsyncMutex, Notify, mpsc, oneshot, watch};
use tracing::Instrument as _;

use crate::{
    bridge::Bridge,
    context::Context,
    error::BridgeError,
    portal::RemoteError,
    remote::{PortalKey, RemoteEvent, RemoteMessageId, RemotePart},
    store::{MessageRow, NewRemote, QueuedRow, ReactionRow, StoreError},
    util::FastMap,
};

mod group;
#[cfg(test)]
mod tests_queueing;

/// The most events queued in one database transaction by concurrent `queue_remote` calls (one
/// batch of [`Context::queue_remote_batch`] is never split, whatever its size).
const QUEUE_GROUP_MAX: usize = 1024;
/// The most bridged events taken off the queue in one database transaction.
const FINISH_GROUP_MAX: usize = 256;
/// Results kept for waiters that have not asked yet (see [`RemoteQueue::finished`]).
const UNCLAIMED_MAX: usize = 4096;
/// The most committed events waiting in the hand-off for the fetch loop; past it they are
/// dropped from it and the fetch loop reads them from the database (see [`Handoff`]).
const HANDOFF_MAX: usize = 65_536;

/// What a queued event became: the Matrix events it sent, or why it was parked.
type Outcome = Result<Vec<OwnedEventId>, String>;

/// The pipeline's shared half, held by [`Context`]: wakes the fetch loop, and tells those who
/// wait on a queued event how it went.
#[derive(Debug, Default)]
pub(crate) struct RemoteQueue {
    /// Committed events on their way to the fetch loop, and its wake-up.
    handoff: Arc<Handoff>,
    results: std::sync::Mutex<Results>,
    resends: Arc<resend::Resends>,
    /// Events being queued: those of concurrent callers are committed together.
    queueing: group::Group<Vec<Pending>, Vec<i64>>,
    /// Bridged events being taken off the queue, with what they record: those of concurrent
    /// workers are committed together.
    finishing: group::Group<Finished, ()>,
}

/// An event being queued: its stored form, and the event itself, handed to the fetch loop once
/// committed.
#[derive(Debug)]
struct Pending {
    portal: PortalKey,
    json: String,
    event: RemoteEvent,
}

impl Pending {
    fn new(portal: PortalKey, event: RemoteEvent) -> Self {
        let json = serde_json::to_string(&event).expect("a remote event serializes");
        Self { portal, json, event }
    }

    /// As the store queues it.
    fn row(&self) -> NewRemote<'_> {
        let message_id = match &self.event {
            RemoteEvent::Message { id, .. } => Some(id.as_str()),
            _ => None,
        };
        NewRemote { portal: &self.portal, event: &self.json, message_id }
    }
}

/// A queued event as its portal's worker gets it: handed over by the commit that queued it, or
/// read from the database.
#[derive(Debug)]
struct Item {
    /// Its place in the queue.
    seq: i64,
    portal: PortalKey,
    /// The event, or why its stored form is not one.
    event: Result<RemoteEvent, String>,
    /// Failed attempts so far.
    attempts: i32,
    /// See [`QueuedRow::unmapped_as_of`].
    unmapped_as_of: Option<u64>,
}

impl Item {
    fn from_row(row: QueuedRow) -> Self {
        let event = serde_json::from_str::<RemoteEvent>(&row.event)
            .map_err(|e| format!("not a remote event: {e}"));
        let QueuedRow { seq, portal, attempts, unmapped_as_of, .. } = row;
        Self { seq, portal, event, attempts, unmapped_as_of }
    }
}

/// Committed events handed to the fetch loop in memory, so it need not read them back from the
/// database and parse them again.
///
/// The fetch loop opens the hand-off before it reads the database; from then on, every commit
/// hands its events over, in commit order (a commit hands them over before the next group's
/// commit starts), so once a read of the database finds no more rows, the hand-off holds every
/// event after it (and maybe some that read found too: those are skipped by their seq). When
/// the hand-off fills up, or a commit's outcome is unknown, it closes and tells the fetch loop
/// to read the database again.
#[derive(Debug, Default)]
struct Handoff {
    state: std::sync::Mutex<HandoffState>,
    /// Wakes the fetch loop.
    wake: Notify,
}

#[derive(Debug, Default)]
struct HandoffState {
    /// Whether commits hand their events over.
    open: bool,
    /// Events were dropped (or may have been): the fetch loop reads the database.
    missed: bool,
    items: Vec<Item>,
}

impl Handoff {
    fn lock(&self) -> std::sync::MutexGuard<'_, HandoffState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens the hand-off, before a read of the database: what was handed over before is in
    /// that read.
    fn open(&self) {
        let mut state = self.lock();
        state.open = true;
        state.missed = false;
        state.items.clear();
    }

    /// Closes the hand-off (the fetch loop stopped).
    fn close(&self) {
        let mut state = self.lock();
        state.open = false;
        state.items = Vec::new();
    }

    /// Hands over committed events, in queue order.
    fn hand(&self, items: Vec<Item>) {
        {
            let mut state = self.lock();
            if state.open {
                if state.items.len() + items.len() > HANDOFF_MAX {
                    state.open = false;
                    state.missed = true;
                    state.items = Vec::new();
                } else if state.items.is_empty() {
                    state.items = items;
                } else {
                    state.items.extend(items);
                }
            }
        }
        self.wake.notify_one();
    }

    /// A commit failed: it may have stored its events all the same, and they must not wait
    /// for the next start.
    fn missed(&self) {
        {
            let mut state = self.lock();
            if state.open {
                state.open = false;
                state.missed = true;
                state.items = Vec::new();
            }
        }
        self.wake.notify_one();
    }

    /// The events handed over since the last call, or `None` when some were missed.
    fn take(&self) -> Option<Vec<Item>> {
        let mut state = self.lock();
        if state.missed {
            return None;
        }
        Some(std::mem::take(&mut state.items))
    }
}

/// A bridged event, to take off the queue, and the records its bridging wrote last.
#[derive(Debug)]
struct Finished {
    seq: i64,
    records: Arc<Records>,
}

/// What bridging an event records in the transaction that takes it off the queue (so a send
/// and its record are not two commits): the mapping of a message's last part, a reaction.
#[derive(Debug, Default)]
struct Records {
    messages: Vec<MessageRow>,
    reactions: Vec<ReactionRow>,
}

impl Records {
    fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.reactions.is_empty()
    }

    /// The parts of a message recorded here.
    fn parts<'a>(
        &'a self,
        key: &'a PortalKey,
        id: &'a RemoteMessageId,
    ) -> impl Iterator<Item = &'a MessageRow> + 'a {
        self.messages.iter().filter(move |m| m.id == *id && m.portal == *key)
    }

    /// Whether a reaction is recorded here.
    fn has_reaction(
        &self,
        key: &PortalKey,
        target: &RemoteMessageId,
        sender: &crate::remote::RemoteUserId,
        reaction: &str,
    ) -> bool {
        self.reactions.iter().any(|r| {
            r.key == reaction && r.message == *target && r.sender == *sender && r.portal == *key
        })
    }
}

#[derive(Debug, Default)]
struct Results {
    waiting: FastMap<i64, oneshot::Sender<Outcome>>,
    /// Outcomes of events nobody waited for yet: the worker may finish an event before its
    /// `queue_remote` registered to wait. Bounded; cleared when full (such events were queued
    /// by an earlier process, or nobody waits on them).
    unclaimed: FastMap<i64, Outcome>,
}

impl RemoteQueue {
    /// The receiver of `seq`'s outcome.
    fn watch(&self, seq: i64) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        let mut results = self.results.lock().expect("lock poisoned");
        match results.unclaimed.remove(&seq) {
            Some(done) => {
                let _ = tx.send(done);
            }
            None => {
                results.waiting.insert(seq, tx);
            }
        }
        rx
    }

    /// Commits events to the queue, together with those of concurrent callers; returns their
    /// sequence numbers, in order, once committed. The committed events are handed to the
    /// fetch loop before the next group is committed.
    async fn enqueue(
        &self,
        store: &crate::store::Store,
        events: Vec<Pending>,
    ) -> Result<Vec<i64>, RemoteError> {
        let store = store.clone();
        let (handoff, resends) = (self.handoff.clone(), self.resends.clone());
        self.queueing
            .submit(events, QUEUE_GROUP_MAX, Vec::len, move |groups| {
                let (store, handoff, resends) = (store.clone(), handoff.clone(), resends.clone());
                async move {
                    let rows: Vec<NewRemote<'_>> =
                        groups.iter().flatten().map(Pending::row).collect();
                    let queued = match store.enqueue_remote(&rows).await {
                        Ok(queued) => queued,
                        Err(e) => {
                            handoff.missed();
                            return Err(e.to_string());
                        }
                    };
                    drop(rows);
                    if let Some(first) = queued.first() {
                        resends.queued(first.seq);
                    }
                    let mut queued = queued.into_iter();
                    let mut items = Vec::with_capacity(queued.len());
                    let mut seqs = Vec::with_capacity(groups.len());
                    for group in groups {
                        let mut group_seqs = Vec::with_capacity(group.len());
                        for (pending, q) in group.into_iter().zip(queued.by_ref()) {
                            group_seqs.push(q.seq);
                            items.push(Item {
                                seq: q.seq,
                                portal: pending.portal,
                                event: Ok(pending.event),
                                attempts: 0,
                                unmapped_as_of: q.unmapped_as_of,
                            });
                        }
                        seqs.push(group_seqs);
                    }
                    handoff.hand(items);
                    Ok(seqs)
                }
            })
            .await
            .map_err(group_failed)
    }

    /// Takes a bridged event off the queue and writes its records, in one transaction with
    /// those of concurrent workers.
    async fn finish(&self, store: &crate::store::Store, done: Finished) -> Result<(), String> {
        let store = store.clone();
        self.finishing
            .submit(
                done,
                FINISH_GROUP_MAX,
                |_| 1,
                move |group| {
                    let store = store.clone();
                    async move {
                        let seqs: Vec<i64> = group.iter().map(|f| f.seq).collect();
                        let messages: Vec<&MessageRow> =
                            group.iter().flat_map(|f| &f.records.messages).collect();
                        let reactions: Vec<&ReactionRow> =
                            group.iter().flat_map(|f| &f.records.reactions).collect();
                        store
                            .finish_remote(&seqs, &messages, &reactions)
                            .await
                            .map_err(|e| e.to_string())?;
                        Ok(vec![(); seqs.len()])
                    }
                },
            )
            .await
    }

    /// Tells whoever waits on `seq` how it went.
    fn finished(&self, seq: i64, outcome: Outcome) {
        let mut results = self.results.lock().expect("lock poisoned");
        match results.waiting.remove(&seq) {
            Some(tx) => {
                let _ = tx.send(outcome);
            }
            None => {
                if results.unclaimed.len() >= UNCLAIMED_MAX {
                    results.unclaimed.clear();
                }
                results.unclaimed.insert(seq, outcome);
            }
        }
    }
}

/// A remote event in the queue. Dropping it is fine: the event is bridged all the same.
#[derive(Debug)]
#[must_use = "the event is queued either way; `bridged` waits for it to reach Matrix"]
pub struct Queued {
    seq: i64,
    outcome: oneshot::Receiver<Outcome>,
}

impl Queued {
    /// Its place in the queue.
    pub fn seq(&self) -> i64 {
        self.seq
    }

    /// Waits until the event was bridged; returns the Matrix events it sent (none for a
    /// typing notice or a repeated event).
    ///
    /// # Errors
    /// [`RemoteError::Parked`] when it failed for good; [`RemoteError::Stopped`] when the
    /// bridge stopped first (it is bridged after the restart).
    pub async fn bridged(self) -> Result<Vec<OwnedEventId>, RemoteError> {
        match self.outcome.await {
            Ok(Ok(events)) => Ok(events),
            Ok(Err(error)) => Err(RemoteError::Parked(error)),
            Err(_) => Err(RemoteError::Stopped),
        }
    }
}

impl Context {
    /// The pipeline's shared half.
    pub(crate) fn remote_queue(&self) -> &RemoteQueue {
        self.remote_queue_part().get()
    }

    /// Queues a remote event for its portal, and returns once it is committed: from then on a
    /// crash loses nothing, so the remote network may be told it was received. The portal's
    /// events are bridged in the order they were queued (see the `pipeline` module).
    pub async fn queue_remote(
        &self,
        portal: &PortalKey,
        event: &RemoteEvent,
    ) -> Result<Queued, RemoteError> {
        let queue = self.remote_queue();
        let pending = Pending::new(portal.clone(), event.clone());
        let seqs = queue.enqueue(self.store(), vec![pending]).await?;
        let seq = seqs.first().copied().ok_or_else(|| group_failed("no sequence number".into()))?;
        Ok(Queued { seq, outcome: queue.watch(seq) })
    }

    /// Queues several remote events (each for its portal) in one database transaction, and
    /// returns once they are committed, in the order given: all of them, or (with an error)
    /// none. Like [`Context::queue_remote`] called for each in turn, at the cost of one commit.
    /// For a bridge that receives events in batches (a sync, a backlog, a busy connection),
    /// and acknowledges a batch at once.
    ///
    /// # Errors
    /// [`RemoteError::Store`] when the store failed; nothing was queued then.
    pub async fn queue_remote_batch(
        &self,
        events: &[(PortalKey, RemoteEvent)],
    ) -> Result<Vec<Queued>, RemoteError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let rows = events
            .iter()
            .map(|(portal, event)| Pending::new(portal.clone(), event.clone()))
            .collect();
        let queue = self.remote_queue();
        let seqs = queue.enqueue(self.store(), rows).await?;
        Ok(seqs.into_iter().map(|seq| Queued { seq, outcome: queue.watch(seq) }).collect())
    }
}

/// A group commit's failure, for each of its callers.
fn group_failed(error: String) -> RemoteError {
    RemoteError::Store(StoreError::Database(sqlx::Error::Protocol(error)))
}

/// A failure to bridge a queued event.
#[derive(Debug)]
struct Failure {
    message: String,
    permanent: bool,
}

impl<E: Into<RemoteError>> From<E> for Failure {
    fn from(e: E) -> Self {
        Self { message: e.into().to_string(), permanent: false }
    }
}

impl Failure {
    fn permanent(message: impl Into<String>) -> Self {
        Self { message: message.into(), permanent: true }
    }
}

/// Runs the pipeline until `stop`: the fetch loop, and a worker per portal with work.
///
/// The fetch loop reads the database at the start, and again whenever the hand-off missed
/// events; otherwise it takes what commits hand over (see [`Handoff`]).
pub(crate) async fn run<B: Bridge>(ctx: Context, bridge: Arc<B>, mut stop: watch::Receiver<bool>) {
    let workers: Workers = Arc::default();
    let handoff = ctx.remote_queue().handoff.clone();
    let mut cursor = 0;
    let mut read = true;
    loop {
        if *stop.borrow() {
            handoff.close();
            return;
        }
        let wake = handoff.wake.notified();
        let items: Vec<Item> = if read {
            handoff.open();
            match ctx.store().queued_remote(cursor).await {
                Ok(rows) => {
                    // A full read may have left rows behind: read again.
                    read = rows.len() >= crate::store::QUEUE_READ_MAX;
                    rows.into_iter().map(Item::from_row).collect()
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the remote queue; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.wait_for(|s| *s) => {
                            handoff.close();
                            return;
                        }
                    }
                }
            }
        } else {
            match handoff.take() {
                Some(items) => items,
                None => {
                    read = true;
                    continue;
                }
            }
        };
        // What a read of the database found may be handed over too.
        let after = cursor;
        let mut items = items.into_iter().filter(|item| item.seq > after).peekable();
        if items.peek().is_none() {
            if !read {
                tokio::select! {
                    () = wake => {}
                    // Told to stop, or the sender is gone (never to say it): either way, stop.
                    _ = stop.wait_for(|s| *s) => {
                        handoff.close();
                        return;
                    }
                }
            }
            continue;
        }
        let mut map = workers.lock().await;
        for item in items {
            cursor = cursor.max(item.seq);
            let item = match map.get(&item.portal) {
                None => item,
                Some(tx) => match tx.send(item) {
                    Ok(()) => continue,
                    // The worker left: a new one takes over.
                    Err(mpsc::error::SendError(item)) => item,
                },
            };
            let (tx, rx) = mpsc::unbounded_channel();
            let portal = item.portal.clone();
            tx.send(item).expect("the receiver is here");
            map.insert(portal.clone(), tx);
            let worker = Worker { portal, rx, workers: workers.clone(), stop: stop.clone() };
            tokio::spawn(worker.run(ctx.clone(), bridge.clone()));
        }
    }
}

/// The workers of the portals with work, by portal.
type Workers = Arc<AsyncMutex<FastMap<PortalKey, mpsc::UnboundedSender<Item>>>>;

/// One portal's worker.
struct Worker {
    portal: PortalKey,
    rx: mpsc::UnboundedReceiver<Item>,
    workers: Workers,
    stop: watch::Receiver<bool>,
}

impl Worker {
    /// Bridges the portal's events in order until its queue is empty, or the bridge stops
    /// (what is left stays in the database for the next start).
    async fn run<B: Bridge>(self, ctx: Context, bridge: Arc<B>) {
        let Self { portal, mut rx, workers, mut stop } = self;
        // The event before, whose records are being written while the next one is bridged.
        let mut before: Option<Recording> = None;
        loop {
            if *stop.borrow() {
                if let Some(recording) = before.take() {
                    recording.settle(&ctx, &mut stop).await;
                }
                workers.lock().await.remove(&portal);
                return;
            }
            let row = match rx.try_recv() {
                Ok(row) => row,
                Err(_) => {
                    // Nothing more for now: the last event is recorded before the worker may
                    // leave, so the portal's next worker finds its mappings.
                    if let Some(recording) = before.take() {
                        recording.settle(&ctx, &mut stop).await;
                        continue;
                    }
                    // Leave only with the map locked and nothing queued: the fetch loop sends
                    // under the same lock, so no event is left in a channel nobody reads.
                    let mut map = workers.lock().await;
                    match rx.try_recv() {
                        Ok(row) => row,
                        Err(_) => {
                            map.remove(&portal);
                            return;
                        }
                    }
                }
            };
            before = process(&ctx, &*bridge, &row, before, &mut stop).await;
        }
    }
}

/// A bridged event whose records (and its leaving the queue) are being written: its portal's
/// next event is bridged meanwhile, reading the records from here.
struct Recording {
    seq: i64,
    events: Vec<OwnedEventId>,
    records: Arc<Records>,
    write: futures_util::future::BoxFuture<'static, Result<(), String>>,
}

impl Recording {
    /// Starts writing a bridged event's records, with those of other workers.
    fn start(ctx: &Context, seq: i64, events: Vec<OwnedEventId>, records: Records) -> Self {
        let records = Arc::new(records);
        let done = Finished { seq, records: records.clone() };
        let ctx = ctx.clone();
        let write = Box::pin(async move { ctx.remote_queue().finish(ctx.store(), done).await });
        Self { seq, events, records, write }
    }

    /// Waits for the write, then tells who waits on the event how it went.
    async fn settle(self, ctx: &Context, stop: &mut watch::Receiver<bool>) {
        let Self { seq, events, records, write } = self;
        let written = write.await;
        settled(ctx, seq, events, &records, written, stop).await;
    }
}

/// Finishes a bridged event once its write returned `written`: a failed write of records is
/// written again, alone, with the inbox's delays (never by bridging the event again: its
/// portal's next event may have been sent meanwhile), and the event parked after
/// `inbox.max_attempts` writes; a bridged event with nothing to record that failed to leave
/// the queue is handled again after a restart, which changes nothing.
async fn settled(
    ctx: &Context,
    seq: i64,
    events: Vec<OwnedEventId>,
    records: &Records,
    mut written: Result<(), String>,
    stop: &mut watch::Receiver<bool>,
) {
    let config = &ctx.config().inbox;
    let queue = ctx.remote_queue();
    let mut attempts = 1;
    loop {
        let error = match written {
            Ok(()) => {
                queue.finished(seq, Ok(events));
                return;
            }
            Err(error) if records.is_empty() => {
                tracing::warn!(%error, seq, "could not take a bridged event off the queue");
                queue.finished(seq, Ok(events));
                return;
            }
            Err(error) => error,
        };
        if attempts >= config.max_attempts {
            tracing::warn!(%error, seq, attempts, "could not record a bridged event; parking it");
            if let Err(e) = Box::pin(ctx.store().fail_remote(seq, &error, true)).await {
                tracing::warn!(error = %e, "could not park a remote event");
            }
            queue.finished(seq, Err(error));
            return;
        }
        let delay = config.retry_delay(attempts);
        tracing::info!(%error, seq, attempts, "could not record a bridged event; will retry");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            // Left in the queue: the next start looks for its sends in the room.
            _ = stop.wait_for(|s| *s) => return,
        }
        attempts += 1;
        let messages: Vec<&MessageRow> = records.messages.iter().collect();
        let reactions: Vec<&ReactionRow> = records.reactions.iter().collect();
        // Boxed, as the rare steps of `handle`: this future is part of the portal's next one.
        written = Box::pin(ctx.store().finish_remote(&[seq], &messages, &reactions))
            .await
            .map_err(|e| e.to_string());
    }
}

/// Whether bridging `event` may start while the event before it is being recorded: it reads
/// mappings (and finds those of the event before in its records), but changes none that the
/// write could race with.
fn overlaps(event: &RemoteEvent) -> bool {
    match event {
        RemoteEvent::Message { echo_of, .. } => echo_of.is_none(),
        RemoteEvent::Edit { .. }
        | RemoteEvent::Reaction { .. }
        | RemoteEvent::ReadReceipt { .. }
        | RemoteEvent::Typing { .. } => true,
        _ => false,
    }
}

/// Bridges one queued event, with retries; parks it after the last attempt. A retry pending
/// at shutdown waits for the next start. `before` (the portal's event before, being
/// recorded) is finished on the way; returns this event's recording when it was bridged.
async fn process<B: Bridge>(
    ctx: &Context,
    bridge: &B,
    row: &Item,
    before: Option<Recording>,
    stop: &mut watch::Receiver<bool>,
) -> Option<Recording> {
    // Instrumented, not entered: the span must not stay on the thread across an `.await`,
    // where other tasks run.
    let span = tracing::info_span!("remote", seq = row.seq, portal = %row.portal);
    process_in_span(ctx, bridge, row, before, stop).instrument(span).await
}

/// [`process`], inside its span.
async fn process_in_span<B: Bridge>(
    ctx: &Context,
    bridge: &B,
    row: &Item,
    mut before: Option<Recording>,
    stop: &mut watch::Receiver<bool>,
) -> Option<Recording> {
    let config = &ctx.config().inbox;
    let mut attempts = row.attempts;
    let queue = ctx.remote_queue();
    let parsed = &row.event;
    loop {
        let mut records = Records::default();
        let result = match parsed {
            Ok(event) => {
                if !overlaps(event)
                    && let Some(recording) = before.take()
                {
                    recording.settle(ctx, stop).await;
                }
                match before.take() {
                    // The send starts while the event before is recorded.
                    Some(Recording { seq, events, records: earlier, write }) => {
                        let recording = async {
                            let written = write.await;
                            settled(ctx, seq, events, &earlier, written, stop).await;
                        };
                        let bridging = handle(ctx, bridge, row, event, &mut records, &earlier);
                        tokio::join!(recording, bridging).1
                    }
                    None => {
                        handle(ctx, bridge, row, event, &mut records, &Records::default()).await
                    }
                }
            }
            Err(e) => {
                if let Some(recording) = before.take() {
                    recording.settle(ctx, stop).await;
                }
                Err(Failure::permanent(e.clone()))
            }
        };
        if result.is_err()
            && let Ok(event) = parsed
            && let Some(login) = event.sender().and_then(|s| s.login.as_ref())
        {
            // A token the user gave may have been revoked since: then it is forgotten, and
            // the next attempt sends as their ghost (or by the as_token method).
            Box::pin(ctx.forget_revoked_puppet_token(login)).await;
        }
        let failure = match result {
            Ok(events) => return Some(Recording::start(ctx, row.seq, events, records)),
            Err(failure) => failure,
        };
        attempts += 1;
        let park =
            failure.permanent || u32::try_from(attempts).unwrap_or(u32::MAX) >= config.max_attempts;
        let error = failure.message;
        if let Err(e) = ctx.store().fail_remote(row.seq, &error, park).await {
            tracing::warn!(error = %e, "could not record a failure of a remote event");
        }
        if park {
            tracing::warn!(%error, attempts, "bridging a remote event failed; parking it");
            queue.finished(row.seq, Err(error));
            return None;
        }
        let delay = config.retry_delay(u32::try_from(attempts).unwrap_or(1));
        let delay_ms = delay.as_millis();
        tracing::info!(%error, attempts, delay_ms, "bridging a remote event failed; will retry");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return None,
        }
    }
}

/// Bridges one remote event into its portal; returns the Matrix events it sent. What it
/// records last goes to `records`, written with the event's removal from the queue; `before`
/// holds what the portal's event before recorded, which may not be written yet.
///
/// The steps that are rare or whose futures are large are boxed: this future is as large as
/// its largest step, and it is moved a few times for every event.
async fn handle<B: Bridge>(
    ctx: &Context,
    bridge: &B,
    row: &Item,
    event: &RemoteEvent,
    records: &mut Records,
    before: &Records,
) -> Result<Vec<OwnedEventId>, Failure> {
    let key = &row.portal;
    let portal = match ctx.portal(key).await? {
        Some(portal) => portal,
        None if matches!(event, RemoteEvent::Message { .. }) => {
            let info = Box::pin(bridge.portal_info(key)).await.map_err(failure_of)?;
            let Some(info) = info else {
                return Err(Failure::permanent(format!("no portal for {key}, and none is made")));
            };
            Box::pin(ctx.ensure_portal(key, &info)).await?
        }
        // A resync of a chat without a room makes one, when the bridge describes it.
        None if matches!(event, RemoteEvent::ChatResync) => {
            match Box::pin(bridge.portal_info(key)).await.map_err(failure_of)? {
                Some(info) => {
                    Box::pin(ctx.ensure_portal(key, &info)).await?;
                }
                None => tracing::debug!("a resync of a chat the bridge does not describe"),
            }
            return Ok(Vec::new());
        }
        // Anything but a message, for a chat without a room, has nothing to act on.
        None => return Ok(Vec::new()),
    };
    let txn = |n: usize| format!("mxb.q{}.{n}", row.seq);
    // An earlier life may have sent this event and died before recording it; past Synapse's
    // memory of transaction IDs, only the room can tell (see `resend`).
    let recheck = ctx.remote_queue().resends.may_have_been_sent(row.seq, &row.portal);
    let sent_before = async |intent: &crate::intent::Intent, room, txn_id: &str| {
        if recheck { Box::pin(resend::sent_before(intent, room, txn_id)).await } else { Ok(None) }
    };
    let mut sent = Vec::new();
    match event {
        RemoteEvent::Message { id, sender, timestamp, parts, reply_to, thread_root, echo_of } => {
            if let Some(txn_id) = echo_of {
                let part = parts.first().map(|p| p.id.clone()).unwrap_or_default();
                let ours = Box::pin(ctx.store().resolve_pending(key, txn_id, id, &part)).await?;
                if let Some(mapped) = ours {
                    // The echo of what the bridge sent for a Matrix event: now mapped.
                    return Ok(vec![mapped.event_id]);
                }
                if !ctx.store().message_parts(key, id).await?.is_empty() {
                    // Mapped by an earlier echo.
                    return Ok(Vec::new());
                }
                // The echo overtook the record of its Matrix event (the handler has returned,
                // the dispatcher has not written yet): try again, never post our own message.
                let message = format!("the echo of {txn_id} came before its event was recorded");
                return Err(Failure { permanent: false, message });
            }
            // What the queue's read said still holds unless a mapping was written since.
            let unmapped =
                row.unmapped_as_of.is_some_and(|g| !ctx.store().mapped_since(key, id, g))
                    && before.parts(key, id).next().is_none();
            let known =
                if unmapped { Vec::new() } else { mapped_parts(ctx, key, id, before).await? };
            let reply_to = first_event(ctx, key, reply_to.as_ref(), before).await?;
            let thread_root = first_event(ctx, key, thread_root.as_ref(), before).await?;
            let ghost = ctx.sender_intent(sender).await?;
            for (n, part) in parts.iter().enumerate() {
                if known.iter().any(|m| m.part == part.id) {
                    continue;
                }
                let relation = match (&thread_root, &reply_to) {
                    (Some(root), _) => Some(Relation::Thread(Thread::plain(
                        root.clone(),
                        reply_to.clone().unwrap_or_else(|| root.clone()),
                    ))),
                    (None, Some(reply)) => {
                        Some(Relation::Reply(Reply::new(InReplyTo::new(reply.clone()))))
                    }
                    (None, None) => None,
                };
                // The relation is the pipeline's to set: a part's own is replaced.
                let mut content = crate::format::sanitize_content(&part.content);
                if relation.is_some() || content.relates_to.is_some() {
                    content.to_mut().relates_to = relation;
                }
                let txn_id = txn(n);
                let event_id = match sent_before(&ghost, &portal.room_id, &txn_id).await? {
                    Some(event_id) => event_id,
                    None => {
                        let send = ghost.send(&portal.room_id, &*content).txn_id(txn_id);
                        at(send, *timestamp).await?
                    }
                };
                let timestamp = timestamp.map_or_else(crate::util::now_ms, |t| i64::from(t.0));
                let row = MessageRow {
                    portal: key.clone(),
                    id: id.clone(),
                    part: part.id.clone(),
                    event_id: event_id.clone(),
                    room_id: portal.room_id.clone(),
                    sender: ghost.user_id().to_owned(),
                    timestamp,
                };
                if n + 1 == parts.len() {
                    records.messages.push(row);
                } else {
                    // Before the next part's send: a crash between them repeats only the rest.
                    Box::pin(ctx.store().insert_messages(std::slice::from_ref(&row))).await?;
                }
                sent.push(event_id);
            }
        }
        RemoteEvent::Edit { target, sender, timestamp, parts } => {
            let known = mapped_parts(ctx, key, target, before).await?;
            if known.is_empty() {
                tracing::debug!(%target, "an edit of a message that was never bridged");
                return Ok(Vec::new());
            }
            let ghost = ctx.sender_intent(sender).await?;
            for (n, RemotePart { id, content }) in parts.iter().enumerate() {
                let Some(original) = known.iter().find(|m| m.part == *id) else { continue };
                let sanitized = crate::format::sanitize_content(content).into_owned();
                let new = RoomMessageEventContentWithoutRelation::from(sanitized);
                if let Some(event_id) = sent_before(&ghost, &portal.room_id, &txn(n)).await? {
                    sent.push(event_id);
                    continue;
                }
                let edit = ghost.edit(&portal.room_id, &original.event_id, new).txn_id(txn(n));
                sent.push(at(edit, *timestamp).await?);
            }
        }
        RemoteEvent::Reaction { target, sender, key: reaction, timestamp } => {
            // One read for the target and whether the reaction is there already.
            let stored = ctx.store().reaction_target(key, target, &sender.id, reaction).await?;
            // The first part of the target: stored, or recorded by the event before.
            let mut first = stored.first_part;
            for part in before.parts(key, target) {
                if first.as_ref().is_none_or(|(id, _)| part.part < *id) {
                    first = Some((part.part.clone(), part.event_id.clone()));
                }
            }
            let Some((_, target_event)) = first else {
                return Ok(Vec::new());
            };
            if stored.reaction.is_some() || before.has_reaction(key, target, &sender.id, reaction) {
                return Ok(Vec::new());
            }
            let ghost = ctx.sender_intent(sender).await?;
            let event_id = match sent_before(&ghost, &portal.room_id, &txn(0)).await? {
                Some(event_id) => event_id,
                None => {
                    let react =
                        ghost.react(&portal.room_id, &target_event, reaction).txn_id(txn(0));
                    at(react, *timestamp).await?
                }
            };
            records.reactions.push(ReactionRow {
                portal: key.clone(),
                message: target.clone(),
                sender: sender.id.clone(),
                key: reaction.clone(),
                event_id: event_id.clone(),
                room_id: portal.room_id.clone(),
            });
            sent.push(event_id);
        }
        RemoteEvent::ReactionRemove { target, sender, key: reaction } => {
            let Some(event_id) = ctx.store().reaction(key, target, &sender.id, reaction).await?
            else {
                return Ok(Vec::new());
            };
            let ghost = ctx.sender_intent(sender).await?;
            sent.push(ghost.redact(&portal.room_id, &event_id).txn_id(txn(0)).await?);
            Box::pin(ctx.store().delete_reaction(key, target, &sender.id, reaction)).await?;
        }
        RemoteEvent::Delete { target, sender } => {
            let known = ctx.store().message_parts(key, target).await?;
            let ghost = ctx.sender_intent(sender).await?;
            for (n, part) in known.iter().enumerate() {
                sent.push(ghost.redact(&portal.room_id, &part.event_id).txn_id(txn(n)).await?);
            }
            Box::pin(ctx.store().delete_message(key, target)).await?;
        }
        RemoteEvent::ReadReceipt { sender, up_to } => {
            if let Some(event_id) = first_event(ctx, key, Some(up_to), before).await? {
                let ghost = ctx.sender_intent(sender).await?;
                ghost.ensure_joined(&portal.room_id).await?;
                let mut request = create_receipt::v3::Request::new(
                    portal.room_id.clone(),
                    create_receipt::v3::ReceiptType::Read,
                    event_id,
                );
                request.thread = ReceiptThread::Unthreaded;
                Box::pin(ghost.send_request(request)).await?;
            }
        }
        RemoteEvent::Typing { sender, typing } => {
            let ghost = ctx.sender_intent(sender).await?;
            // Repeats of what the homeserver was told last send nothing.
            if *typing {
                ghost.typing(&portal.room_id, Duration::from_secs(30)).await?;
            } else {
                ghost.stop_typing(&portal.room_id).await?;
            }
        }
        RemoteEvent::ChatInfo { name, topic, avatar, members, power_levels } => {
            let change = crate::portal::ChatChange {
                name: name.as_deref(),
                topic: topic.as_deref(),
                avatar: avatar.as_deref(),
                members,
                complete: false,
                power_levels: power_levels.as_ref(),
            };
            sent.extend(Box::pin(ctx.apply_chat_change(&portal, &change)).await?);
        }
        RemoteEvent::ChatResync => {
            if let Some(info) = Box::pin(bridge.portal_info(key)).await.map_err(failure_of)? {
                let change = crate::portal::ChatChange::resync(&info);
                sent.extend(Box::pin(ctx.apply_chat_change(&portal, &change)).await?);
                Box::pin(ctx.add_portal_to_spaces(&portal)).await;
            }
        }
        RemoteEvent::ChatDelete => {
            let text = "This chat was deleted on the remote network.";
            sent.push(ctx.bot().send_notice(&portal.room_id, text).txn_id(txn(0)).await?);
            Box::pin(ctx.delete_portal(key, "The chat was deleted on the remote network")).await?;
        }
    }
    Ok(sent)
}

/// A bridge error as a pipeline failure, keeping whether it is permanent.
fn failure_of(e: BridgeError) -> Failure {
    Failure { permanent: e.is_permanent(), message: e.to_string() }
}

/// The mapped parts of a remote message, in part order: those stored, and those `before`
/// records.
async fn mapped_parts(
    ctx: &Context,
    key: &PortalKey,
    message: &RemoteMessageId,
    before: &Records,
) -> Result<Vec<MessageRow>, Failure> {
    let mut parts = ctx.store().message_parts(key, message).await?;
    let mut added = false;
    for part in before.parts(key, message) {
        if !parts.iter().any(|p| p.part == part.part) {
            parts.push(part.clone());
            added = true;
        }
    }
    if added {
        parts.sort_by(|a, b| a.part.as_str().cmp(b.part.as_str()));
    }
    Ok(parts)
}

/// The first Matrix event of a remote message, when it was bridged.
async fn first_event(
    ctx: &Context,
    key: &PortalKey,
    message: Option<&RemoteMessageId>,
    before: &Records,
) -> Result<Option<OwnedEventId>, Failure> {
    let Some(message) = message else { return Ok(None) };
    let parts = mapped_parts(ctx, key, message, before).await?;
    Ok(parts.into_iter().next().map(|m| m.event_id))
}

/// A send with the remote timestamp, when there is one.
fn at(
    send: crate::intent::SendMessage<'_>,
    timestamp: Option<ruma::MilliSecondsSinceUnixEpoch>,
) -> crate::intent::SendMessage<'_> {
    match timestamp {
        Some(ts) => send.at(ts),
        None => send,
    }
}

#[cfg(test)]
mod tests {
    use ruma::{OwnedRoomId, RoomId, events::room::message::RoomMessageEventContent, room_id};
    use serde_json::json;

    use super::*;
    use crate::{
        commands::CommandSpec,
        remote::{RemoteMembership, RemoteSender},
        store::{GhostRow, MemberRow, Membership, PortalRow},
        testing::{MockHomeserver, test_context},
    };

    /// A bridge with nothing but what the pipeline asks of it.
    #[derive(Debug, Default)]
    pub(super) struct Quiet;

    impl Bridge for Quiet {
        type Config = crate::config::NoBridgeConfig;
        const NAME: &'static str = "quiet";
        async fn create(_: Self::Config, _: Context) -> crate::BridgeResult<Self> {
            Ok(Self)
        }
        fn commands(&self) -> Vec<CommandSpec> {
            Vec::new()
        }
    }

    pub(super) const ROOMS: [&str; 3] = ["!a:localhost", "!b:localhost", "!c:localhost"];
    pub(super) const GHOST: &str = "@_test_alice:localhost";

    /// A context whose store knows three portals (`chat-a` ... in `!a` ...) and the ghost of
    /// remote user `alice`, joined to all three, so bridging makes only the sends.
    pub(super) async fn setup(hs: &MockHomeserver) -> Context {
        let inbox = "inbox: {retry_base_ms: 10, retry_max_ms: 20, max_attempts: 2}\n";
        prepare(test_context(hs, inbox).await).await
    }

    /// As [`setup`], with the store in a file in `dir` (so it has readers beside its writer).
    async fn setup_in(hs: &MockHomeserver, dir: &std::path::Path) -> Context {
        let in_memory = setup(hs).await;
        let url = format!("sqlite://{}/pipeline.db", dir.display());
        let store = crate::Store::connect_url(&url).await.unwrap();
        let config = in_memory.config().clone();
        let registration = crate::testing::test_registration();
        prepare(Context::with_client(store, registration, config, hs.client())).await
    }

    /// Puts the portals and the ghost of [`setup`] in `ctx`'s store.
    async fn prepare(ctx: Context) -> Context {
        let store = ctx.store();
        let ghost = ruma::UserId::parse(GHOST).unwrap();
        store
            .upsert_ghost(&GhostRow {
                remote_id: "alice".into(),
                user_id: ghost.clone(),
                displayname: Some("Alice".into()),
                avatar_url: None,
                metadata: None,
            })
            .await
            .unwrap();
        store.mark_registered(&ghost).await.unwrap();
        for (n, room) in ROOMS.iter().enumerate() {
            let room_id = OwnedRoomId::try_from(*room).unwrap();
            let joined = MemberRow::new(&room_id, &ghost, Membership::Join);
            store.set_membership(joined).await.unwrap();
            let key = PortalKey::shared(format!("chat-{n}"));
            let room_id = Some(room_id);
            let row = PortalRow {
                key,
                room_id,
                name: None,
                topic: None,
                avatar_url: None,
                metadata: None,
            };
            store.upsert_portal(&row).await.unwrap();
        }
        ctx
    }

    pub(super) fn alice() -> RemoteSender {
        RemoteSender::named("alice", "Alice")
    }

    /// The pipeline, running until the returned sender says stop.
    pub(super) fn start(ctx: &Context) -> watch::Sender<bool> {
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(run(ctx.clone(), Arc::new(Quiet), stop_rx));
        stop
    }

    /// Events queued concurrently, to three portals at once, reach each room in the order
    /// they were queued, each sent once, with the transaction ID of its queue row.
    #[tokio::test]
    async fn each_portal_gets_its_events_in_queue_order() {
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        for room in ROOMS {
            let room = <&RoomId>::try_from(room).unwrap();
            hs.mock_send(room, "m.room.message")
                .as_user(&ruma::UserId::parse(GHOST).unwrap())
                .ok()
                .mount()
                .await;
        }
        let _stop = start(&ctx);
        let mut writers = Vec::new();
        for writer in 0..3 {
            let ctx = ctx.clone();
            writers.push(tokio::spawn(async move {
                let mut queued = Vec::new();
                for i in 0..10 {
                    let n = (writer + i) % 3;
                    let id = format!("w{writer}-{i}");
                    let event = RemoteEvent::text(id.as_str(), alice(), id.as_str());
                    let q = ctx
                        .queue_remote(&PortalKey::shared(format!("chat-{n}")), &event)
                        .await
                        .unwrap();
                    queued.push((n, q.seq(), q));
                }
                queued
            }));
        }
        let mut by_portal: Vec<Vec<i64>> = vec![Vec::new(); 3];
        for writer in writers {
            for (n, seq, q) in writer.await.unwrap() {
                by_portal[n].push(seq);
                assert_eq!(q.bridged().await.unwrap().len(), 1);
            }
        }
        for (n, room) in ROOMS.iter().enumerate() {
            let room = <&RoomId>::try_from(*room).unwrap();
            let mut expected = by_portal[n].clone();
            expected.sort_unstable();
            let expected: Vec<String> = expected.iter().map(|s| format!("mxb.q{s}.0")).collect();
            assert_eq!(hs.sent_txn_ids(room, "m.room.message").await, expected, "order in {room}");
        }
        assert_eq!(ctx.store().remote_queue_counts().await.unwrap(), (0, 0));
    }

    /// A portal's next event is sent while the one before is recorded: with the database's
    /// writer held, a message and a reaction to it go out (the reaction finds the message in
    /// what is being recorded), the message after waits for the message's record, and once
    /// the writer is free all three are recorded, in order, each sent once.
    #[tokio::test]
    async fn the_next_send_starts_while_the_event_before_is_recorded() {
        let hs = MockHomeserver::start().await;
        let dir = tempfile::tempdir().unwrap();
        let ctx = setup_in(&hs, dir.path()).await;
        let room = room_id!("!a:localhost");
        hs.mock_send(room, "m.room.message").ok_body(json!({"event_id": "$m"})).ok().mount().await;
        hs.mock_send(room, "m.reaction").ok_body(json!({"event_id": "$r"})).ok().mount().await;
        let key = PortalKey::shared("chat-0");
        let reaction = RemoteEvent::Reaction {
            target: "m1".into(),
            sender: alice(),
            key: "👍".into(),
            timestamp: None,
        };
        let events = [
            (key.clone(), RemoteEvent::text("m1", alice(), "one")),
            (key.clone(), reaction),
            (key.clone(), RemoteEvent::text("m2", alice(), "two")),
        ];
        let queued = ctx.queue_remote_batch(&events).await.unwrap();
        let held = Duration::from_secs(3);
        let since = std::time::Instant::now();
        ctx.store().hold_writer_for(held).await;
        let _stop = start(&ctx);
        let sends = async || {
            let messages = hs.sent_txn_ids(room, "m.room.message").await;
            (messages, hs.sent_txn_ids(room, "m.reaction").await)
        };
        while sends().await.1.is_empty() && since.elapsed() < held {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(since.elapsed() < held, "the reaction went out while the writer was held");
        assert_eq!(sends().await, (vec!["mxb.q1.0".to_owned()], vec!["mxb.q2.0".to_owned()]));
        assert_eq!(ctx.store().remote_queue_counts().await.unwrap(), (3, 0), "none recorded");
        let mut bridged = Vec::new();
        for q in queued {
            let events = q.bridged().await.unwrap();
            bridged.push(events.iter().map(ToString::to_string).collect::<Vec<_>>());
        }
        assert_eq!(bridged, [["$m"], ["$r"], ["$m"]]);
        assert_eq!(sends().await.0, ["mxb.q1.0", "mxb.q3.0"]);
        let body = hs
            .received()
            .await
            .into_iter()
            .find(|r| r.url.path().contains("/send/m.reaction/"))
            .map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).unwrap())
            .unwrap();
        assert_eq!(body["m.relates_to"]["event_id"], "$m");
        let store = ctx.store();
        assert_eq!(store.message_parts(&key, &"m2".into()).await.unwrap()[0].event_id, "$m");
        let found = store.reaction(&key, &"m1".into(), &"alice".into(), "👍").await.unwrap();
        assert_eq!(found.as_deref().map(ruma::EventId::as_str), Some("$r"));
        assert_eq!(store.remote_queue_counts().await.unwrap(), (0, 0));
    }

    /// What was queued while no pipeline ran is bridged when one starts; an event handled
    /// again (a crash after the send, before it left the queue) sends nothing more.
    #[tokio::test]
    async fn queued_events_survive_until_bridged_and_are_bridged_once() {
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        let room = room_id!("!a:localhost");
        hs.mock_send(room, "m.room.message")
            .ok_body(json!({"event_id": "$sent"}))
            .ok()
            .expect(2)
            .mount()
            .await;
        let key = PortalKey::shared("chat-0");
        let first = ctx.queue_remote(&key, &RemoteEvent::text("m1", alice(), "one")).await.unwrap();
        let second =
            ctx.queue_remote(&key, &RemoteEvent::text("m2", alice(), "two")).await.unwrap();
        assert_eq!(ctx.store().remote_queue_counts().await.unwrap(), (2, 0));
        let _stop = start(&ctx);
        assert_eq!(first.bridged().await.unwrap(), ["$sent"]);
        assert_eq!(second.bridged().await.unwrap(), ["$sent"]);
        // Handled again from its stored form: the part is mapped, nothing is sent.
        let row = Item::from_row(QueuedRow {
            seq: 1,
            portal: key.clone(),
            event: serde_json::to_string(&RemoteEvent::text("m1", alice(), "one")).unwrap(),
            attempts: 0,
            unmapped_as_of: None,
        });
        let event = row.event.as_ref().unwrap();
        let mut records = Records::default();
        assert!(
            handle(&ctx, &Quiet, &row, event, &mut records, &Records::default())
                .await
                .unwrap()
                .is_empty()
        );
        assert!(records.is_empty());
        assert_eq!(hs.sent_txn_ids(room, "m.room.message").await, ["mxb.q1.0", "mxb.q2.0"]);
    }

    /// The echo of a Matrix event that overtook the record of that event is retried, never
    /// posted; once the record is there it maps the event, and a second echo changes nothing.
    #[tokio::test]
    async fn an_early_echo_waits_for_its_record_and_is_never_posted() {
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        let room = room_id!("!a:localhost");
        hs.mock_send(room, "m.room.message").ok().expect(0).mount().await;
        let key = PortalKey::shared("chat-0");
        let RemoteEvent::Message { parts, .. } = RemoteEvent::text("m1", alice(), "mine") else {
            unreachable!()
        };
        let echo = RemoteEvent::Message {
            id: "m1".into(),
            sender: alice(),
            timestamp: None,
            parts,
            reply_to: None,
            thread_root: None,
            echo_of: Some("txn1".into()),
        };
        let row = Item::from_row(QueuedRow {
            seq: 1,
            portal: key.clone(),
            event: serde_json::to_string(&echo).unwrap(),
            attempts: 0,
            unmapped_as_of: None,
        });
        let early = handle(&ctx, &Quiet, &row, &echo, &mut Records::default(), &Records::default())
            .await
            .unwrap_err();
        assert!(!early.permanent, "{}", early.message);
        let pending = crate::store::PendingRow {
            portal: key.clone(),
            txn_id: "txn1".into(),
            event_id: ruma::owned_event_id!("$matrix"),
            room_id: room.to_owned(),
            sender: ruma::owned_user_id!("@bob:localhost"),
        };
        ctx.store().insert_pending(&pending).await.unwrap();
        assert_eq!(
            handle(&ctx, &Quiet, &row, &echo, &mut Records::default(), &Records::default())
                .await
                .unwrap(),
            ["$matrix"]
        );
        assert!(
            handle(&ctx, &Quiet, &row, &echo, &mut Records::default(), &Records::default())
                .await
                .unwrap()
                .is_empty()
        );
        let mapped = ctx.store().message_parts(&key, &"m1".into()).await.unwrap();
        assert_eq!(mapped[0].event_id, "$matrix");
    }

    /// Remote members: a join of a ghost that is in the room already sends nothing, a part
    /// makes it leave, a kick is the bot's; a rank becomes the ghost's power level.
    #[tokio::test]
    async fn members_join_leave_and_are_kicked_and_ranks_become_levels() {
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        let room = room_id!("!a:localhost");
        let key = PortalKey::shared("chat-0");
        let ghost = ruma::UserId::parse(GHOST).unwrap();
        hs.mock_leave(room).as_user(&ghost).ok().expect(1).mount().await;
        hs.mock_join(room).ok().expect(0).mount().await;
        let member =
            |change| RemoteEvent::members(vec![crate::remote::ChatMember::new(alice(), change)]);
        let row = |event: &RemoteEvent| {
            Item::from_row(QueuedRow {
                seq: 1,
                portal: key.clone(),
                event: serde_json::to_string(event).unwrap(),
                attempts: 0,
                unmapped_as_of: None,
            })
        };
        for event in [member(RemoteMembership::Join), member(RemoteMembership::Leave)] {
            handle(
                &ctx,
                &Quiet,
                &row(&event),
                &event,
                &mut Records::default(),
                &Records::default(),
            )
            .await
            .unwrap();
        }
        // Gone already: a kick after the leave sends nothing.
        let store = ctx.store();
        store.set_membership(MemberRow::new(room, &ghost, Membership::Leave)).await.unwrap();
        let kick = member(RemoteMembership::Kick);
        handle(&ctx, &Quiet, &row(&kick), &kick, &mut Records::default(), &Records::default())
            .await
            .unwrap();
    }

    /// Edits, reactions, their removal and deletes find their Matrix targets through the
    /// mappings; each is sent by the remote user's ghost.
    #[tokio::test]
    async fn edits_reactions_and_deletes_reach_their_targets() {
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        let room = room_id!("!a:localhost");
        hs.mock_send(room, "m.room.message")
            .ok_body(json!({"event_id": "$msg"}))
            .ok()
            .mount()
            .await;
        hs.mock_send(room, "m.reaction")
            .ok_body(json!({"event_id": "$react"}))
            .ok()
            .expect(1)
            .mount()
            .await;
        hs.mock_redact(room).ok().expect(2).mount().await;
        let key = PortalKey::shared("chat-0");
        let _stop = start(&ctx);
        let queue = |event: RemoteEvent| {
            let (ctx, key) = (ctx.clone(), key.clone());
            async move { ctx.queue_remote(&key, &event).await.unwrap().bridged().await.unwrap() }
        };
        queue(RemoteEvent::text("m1", alice(), "hello")).await;
        let part = |body: &str| RemotePart {
            id: crate::remote::RemotePartId::default(),
            content: RoomMessageEventContent::text_plain(body),
        };
        queue(RemoteEvent::Edit {
            target: "m1".into(),
            sender: alice(),
            timestamp: None,
            parts: vec![part("hi")],
        })
        .await;
        let reaction = |key: &str| RemoteEvent::Reaction {
            target: "m1".into(),
            sender: alice(),
            key: key.into(),
            timestamp: None,
        };
        assert_eq!(queue(reaction("👍")).await, ["$react"]);
        // The same reaction again is already there.
        assert!(queue(reaction("👍")).await.is_empty());
        queue(RemoteEvent::ReactionRemove {
            target: "m1".into(),
            sender: alice(),
            key: "👍".into(),
        })
        .await;
        queue(RemoteEvent::Delete { target: "m1".into(), sender: alice() }).await;
        // An edit of an unknown message changes nothing.
        assert!(
            queue(RemoteEvent::Edit {
                target: "nope".into(),
                sender: alice(),
                timestamp: None,
                parts: vec![part("x")]
            })
            .await
            .is_empty()
        );
        let bodies: Vec<serde_json::Value> = hs
            .received()
            .await
            .iter()
            .filter(|r| r.url.path().contains("/send/"))
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect();
        assert_eq!(bodies[0]["body"], "hello");
        assert_eq!(bodies[1]["m.new_content"]["body"], "hi");
        assert_eq!(bodies[1]["m.relates_to"], json!({"rel_type": "m.replace", "event_id": "$msg"}));
        assert_eq!(
            bodies[2]["m.relates_to"],
            json!({"rel_type": "m.annotation", "event_id": "$msg", "key": "👍"})
        );
        let redacted: Vec<String> = hs
            .received()
            .await
            .iter()
            .filter_map(|r| {
                r.url
                    .path()
                    .split("/redact/")
                    .nth(1)
                    .map(|rest| rest.split('/').next().unwrap().to_owned())
            })
            .collect();
        assert_eq!(redacted, ["$react", "$msg"]);
        assert_eq!(ctx.store().message_parts(&key, &"m1".into()).await.unwrap(), []);
    }

    /// An event that keeps failing is parked after `inbox.max_attempts`, and its portal's
    /// next events go on.
    #[tokio::test]
    async fn a_failing_event_is_parked_and_the_portal_goes_on() {
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        let room = room_id!("!a:localhost");
        hs.mock_send(room, "m.room.message")
            .error(400, "M_BAD_JSON", "nope")
            .up_to_n_times(2)
            .mount()
            .await;
        hs.mock_send(room, "m.room.message").ok_body(json!({"event_id": "$ok"})).ok().mount().await;
        let key = PortalKey::shared("chat-0");
        let _stop = start(&ctx);
        let bad = ctx.queue_remote(&key, &RemoteEvent::text("m1", alice(), "bad")).await.unwrap();
        let good = ctx.queue_remote(&key, &RemoteEvent::text("m2", alice(), "good")).await.unwrap();
        assert!(matches!(bad.bridged().await, Err(RemoteError::Parked(_))));
        assert_eq!(good.bridged().await.unwrap(), ["$ok"]);
        assert_eq!(ctx.store().remote_queue_counts().await.unwrap(), (0, 1));
    }
}
