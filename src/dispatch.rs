//! Hands stored events to the bridge: in order per room, rooms in parallel, failures retried and
//! then parked — never dropped.
//!
//! After committing a transaction the server hands its stored batches to the dispatcher in
//! memory ([`Handoff::hand_off`]), in commit order, so the common path never reads the events
//! back. The dispatcher reads batches from the database instead at startup (what a previous run
//! left), and whenever the in-memory queue overflowed (more than the hand-off's `MAX_QUEUED` events waiting):
//! then it drops the queue and reads everything after the last batch it routed. Each event goes
//! to its room's queue. A room queue has one worker task, which exists only while the room has
//! work, and holds one of `room_concurrency` permits while it processes events (not while it
//! waits for their records to commit). At most [`MAX_IN_FLIGHT`]
//! events are routed and not finished. A worker applies the state cache update, runs the
//! handler, and records the event handled (its room's progress, committed by the flusher; the
//! worker waits for that only once `record_window` of its events are unrecorded), retrying
//! failures with doubling delays and parking the event after `max_attempts`.
//!
//! Ephemeral data is not stored: the server queues it on a bounded channel (a full channel
//! delays the homeserver's 200, it never drops data) and one task hands it to the bridge in the
//! order transactions arrived.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use ruma::{MxcUri, UserId};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tracing::Instrument as _;

use crate::{
    bridge::Bridge,
    config::InboxConfig,
    event::{EphemeralBatch, Event},
    intake::{Handoff, HandoffReceivers, LiveBatch, LiveState, Routed},
    metrics::EventOutcome,
    route::{Bookkeeping, Notice},
    store::{InboxPos, MemberRow, Membership, PendingBatch, PendingEvent, RoomStateField, Store},
    util::FastMap,
};

/// The most events routed to room queues and not yet finished.
pub(crate) const MAX_IN_FLIGHT: usize = 1024;

/// On SQLite, finished batches are deleted once this many are waiting, or when the flusher has
/// no progress to write: one `DELETE` for many batches instead of one per flush. A finished
/// batch that is not deleted yet is harmless (its rooms' progress hides its events).
const DELETE_BATCHES_AT: usize = 256;

/// How long a room's worker waits, holding no slot, for the room's next event before it exits.
const ROOM_LINGER: Duration = Duration::from_millis(250);

/// The processing side: owns the fetch loop and the room workers.
#[derive(Debug)]
pub(crate) struct Dispatcher<B> {
    shared: Arc<Shared<B>>,
    live_rx: mpsc::UnboundedReceiver<LiveBatch>,
    ephemeral_rx: mpsc::Receiver<EphemeralBatch>,
}

#[derive(Debug)]
struct Shared<B> {
    /// The bridge whose handler runs.
    bridge: Arc<B>,
    /// Where pending events live.
    store: Store,
    /// The framework handle (for routing and failure notices).
    ctx: crate::Context,
    /// Retry and concurrency settings.
    config: InboxConfig,
    /// The hand-off queue's counters.
    live_state: Arc<LiveState>,
    /// Bounds events in memory; a permit travels with each event until it is finished.
    in_flight: Arc<Semaphore>,
    /// Bounds rooms processed at the same time.
    room_slots: Arc<Semaphore>,
    /// The queue of each room that has work, keyed by room ID. An entry lives only while the
    /// room's worker runs.
    rooms: Mutex<FastMap<Arc<str>, mpsc::UnboundedSender<Job>>>,
    /// Routed batches with events not finished yet: batch seq → events left.
    remaining: Mutex<FastMap<i64, usize>>,
    /// Handled events waiting to be recorded together, and the generation of the flush that
    /// will take them.
    completed: Mutex<Completed>,
    /// Woken when `completed` got an entry.
    completed_ready: Notify,
    /// The last generation of completions committed.
    flushed: watch::Sender<u64>,
    /// Room workers alive; shutdown waits for it to reach zero.
    workers: AtomicUsize,
    /// Woken when a worker exits.
    worker_exited: Notify,
    /// Flips to `true` on shutdown.
    shutdown: watch::Receiver<bool>,
}

/// What the next flush records (see [`Store::record_handled`]).
#[derive(Debug)]
struct Completed {
    progress: Vec<(Arc<str>, i64, i32)>,
    finished_batches: Vec<i64>,
    finished_requeued: Vec<i64>,
    generation: u64,
}

impl Completed {
    fn is_empty(&self) -> bool {
        self.progress.is_empty()
            && self.finished_batches.is_empty()
            && self.finished_requeued.is_empty()
    }
}

/// A room worker's handled events whose records may not have committed yet, and the flush
/// generation that commits the last of them.
#[derive(Debug, Default)]
struct Unrecorded {
    events: usize,
    generation: u64,
}

struct Job {
    event: Routed,
    _permit: OwnedSemaphorePermit,
}

/// Creates the two halves of the inbox.
pub(crate) fn inbox<B: Bridge>(
    bridge: Arc<B>,
    ctx: crate::Context,
    config: InboxConfig,
    shutdown: watch::Receiver<bool>,
) -> (Handoff, Dispatcher<B>) {
    let (handoff, receivers) = Handoff::new(256);
    let HandoffReceivers { live: live_rx, live_state, ephemeral: rx } = receivers;
    let room_slots = Arc::new(Semaphore::new(config.room_concurrency));
    let shared = Arc::new(Shared {
        bridge,
        store: ctx.store().clone(),
        ctx,
        config,
        live_state: live_state.clone(),
        in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        room_slots,
        rooms: Mutex::new(FastMap::default()),
        remaining: Mutex::new(FastMap::default()),
        completed: Mutex::new(Completed {
            progress: Vec::new(),
            finished_batches: Vec::new(),
            finished_requeued: Vec::new(),
            generation: 1,
        }),
        completed_ready: Notify::new(),
        flushed: watch::channel(0).0,
        workers: AtomicUsize::new(0),
        worker_exited: Notify::new(),
        shutdown,
    });
    (handoff, Dispatcher { shared, live_rx, ephemeral_rx: rx })
}

impl<B: Bridge> Dispatcher<B> {
    /// Runs until shutdown: resumes what is pending in the store, then follows new events.
    /// After shutdown it waits up to `grace` for running handlers; unfinished events stay
    /// pending in the store for the next start.
    pub(crate) async fn run(self, grace: Duration) {
        let Self { shared, live_rx, mut ephemeral_rx } = self;
        let ephemeral_shared = shared.clone();
        let ephemeral_task = tokio::spawn(async move {
            while let Some(batch) = ephemeral_rx.recv().await {
                deliver_ephemeral(&ephemeral_shared.ctx, &*ephemeral_shared.bridge, batch).await;
            }
        });
        let (stop_flusher, flusher_stop) = watch::channel(false);
        let flusher_shared = shared.clone();
        let flusher = tokio::spawn(async move { flusher_shared.flush_loop(flusher_stop).await });
        shared.clone().fetch_loop(live_rx).await;
        // Stop taking new work; let running handlers finish within the grace period.
        let deadline = tokio::time::Instant::now() + grace;
        while shared.workers.load(Ordering::SeqCst) > 0 {
            let exited = shared.worker_exited.notified();
            if shared.workers.load(Ordering::SeqCst) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, exited).await.is_err() {
                tracing::warn!(
                    workers = shared.workers.load(Ordering::SeqCst),
                    "shutdown grace period over; unfinished events stay in the inbox"
                );
                break;
            }
        }
        // Record what the finished handlers completed.
        let _ = stop_flusher.send(true);
        let _ = flusher.await;
        // Ephemeral data already accepted is delivered while the grace period lasts; the queue
        // closes when the server is gone.
        let mut ephemeral_task = ephemeral_task;
        if tokio::time::timeout_at(deadline, &mut ephemeral_task).await.is_err() {
            ephemeral_task.abort();
        }
    }
}

/// Why the fetch loop stopped reading.
struct Stopped;

impl<B: Bridge> Shared<B> {
    fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Routes batches in inbox order: from the database at startup and after an overflow of
    /// the hand-off queue, from the queue otherwise. `cursor` is the last batch routed; a batch
    /// at or before it is never routed again in this process.
    async fn fetch_loop(self: Arc<Self>, mut live_rx: mpsc::UnboundedReceiver<LiveBatch>) {
        let mut shutdown = self.shutdown.clone();
        let wake = self.store.inbox_wake();
        let mut cursor = 0i64;
        let mut requeue_cursor = 0i64;
        let mut read_db = true;
        let mut read_requeued = true;
        loop {
            if self.is_shutting_down() {
                return;
            }
            if self.live_state.overflow.swap(false, Ordering::SeqCst) {
                self.ctx.metrics().inbox_handoff_overflows.inc();
                // Drop what is queued: it is all in the database, read next.
                while let Ok(batch) = live_rx.try_recv() {
                    self.dequeued(&batch);
                }
                read_db = true;
            }
            if read_db {
                match self.route_from_db(&mut cursor).await {
                    Ok(()) => read_db = false,
                    Err(Stopped) => return,
                }
                continue;
            }
            if read_requeued {
                match self.route_requeued(&mut requeue_cursor).await {
                    Ok(()) => read_requeued = false,
                    Err(Stopped) => return,
                }
                continue;
            }
            tokio::select! {
                batch = live_rx.recv() => {
                    let Some(batch) = batch else { return };
                    self.dequeued(&batch);
                    if batch.seq > cursor {
                        cursor = batch.seq;
                        if self.route_batch(batch).await.is_err() {
                            return;
                        }
                    }
                }
                () = self.live_state.wake.notified() => {}
                () = wake.notified() => read_requeued = true,
                // A slow safety poll: anything a lost wake-up left behind.
                () = tokio::time::sleep(Duration::from_secs(5)) => {
                    read_db = true;
                    read_requeued = true;
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    fn dequeued(&self, batch: &LiveBatch) {
        self.live_state.queued.fetch_sub(batch.events.len().max(1), Ordering::SeqCst);
    }

    /// Reads and routes every stored batch after `cursor`, page by page.
    async fn route_from_db(self: &Arc<Self>, cursor: &mut i64) -> Result<(), Stopped> {
        let mut shutdown = self.shutdown.clone();
        loop {
            let batches = match self.store.pending_batches(*cursor, 64).await {
                Ok(batches) => batches,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the inbox; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.changed() => return Err(Stopped),
                    }
                }
            };
            let Some(last) = batches.last() else { return Ok(()) };
            let last = last.seq;
            for batch in batches {
                *cursor = batch.seq;
                let PendingBatch { seq, events } = batch;
                let events = events.into_iter().map(Routed::Stored).collect();
                self.route_batch(LiveBatch { seq, events }).await?;
            }
            *cursor = last;
        }
    }

    /// Reads and routes parked events put back in line.
    async fn route_requeued(self: &Arc<Self>, cursor: &mut i64) -> Result<(), Stopped> {
        loop {
            let events = match self.store.requeued_events(*cursor, 64).await {
                Ok(events) => events,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read requeued events; retrying later");
                    return Ok(());
                }
            };
            if events.is_empty() {
                return Ok(());
            }
            for event in events {
                if let InboxPos::Requeued { seq } = event.pos {
                    *cursor = seq;
                }
                let permit = self.permit().await?;
                self.clone().route(Job { event: Routed::Stored(event), _permit: permit });
            }
        }
    }

    async fn permit(&self) -> Result<OwnedSemaphorePermit, Stopped> {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            permit = self.in_flight.clone().acquire_owned() => permit.map_err(|_| Stopped),
            _ = shutdown.wait_for(|s| *s) => Err(Stopped),
        }
    }

    /// Routes a batch's events to their rooms' queues, waiting for in-flight permits.
    async fn route_batch(self: &Arc<Self>, batch: LiveBatch) -> Result<(), Stopped> {
        if batch.events.is_empty() {
            // Everything in it was handled before a restart: only the row is left to delete.
            self.completed.lock().expect("lock poisoned").finished_batches.push(batch.seq);
            self.completed_ready.notify_one();
            return Ok(());
        }
        self.remaining.lock().expect("lock poisoned").insert(batch.seq, batch.events.len());
        for event in batch.events {
            let permit = self.permit().await?;
            self.clone().route(Job { event, _permit: permit });
        }
        Ok(())
    }

    /// Puts a job on its room's queue, starting the room's worker when it has none.
    fn route(self: Arc<Self>, job: Job) {
        let mut rooms = self.rooms.lock().expect("lock poisoned");
        let job = match rooms.get(job.event.room_id()) {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(mpsc::error::SendError(job)) => job,
            },
            None => job,
        };
        let room_id: Arc<str> = Arc::from(job.event.room_id());
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(job).expect("the receiver is alive");
        rooms.insert(room_id.clone(), tx);
        drop(rooms);
        self.workers.fetch_add(1, Ordering::SeqCst);
        let me = self.clone();
        // The worker's future is copied on every spawn: what it awaits on rare paths (parking,
        // commands, invites) is boxed so that it stays small (2.8 KB, from 16 KB).
        tokio::spawn(async move {
            me.room_worker(room_id, rx).await;
            me.workers.fetch_sub(1, Ordering::SeqCst);
            me.worker_exited.notify_waiters();
        });
    }

    async fn room_worker(&self, room_id: Arc<str>, mut rx: mpsc::UnboundedReceiver<Job>) {
        // The room's slot: held while a handler runs, given back while the room waits for its
        // events' records to commit (see `wait_recorded`) or for more work, taken again for the
        // next event.
        let mut slot = None;
        let mut unrecorded = Unrecorded::default();
        let mut shutdown = self.shutdown.clone();
        loop {
            let job = match rx.try_recv() {
                Ok(job) => job,
                Err(_) => {
                    // Idle: without a slot, wait a little for the room's next event (a busy room
                    // gets one every transaction or so, and a new worker costs a task and a
                    // queue), then remove the queue under the lock, unless a job arrived.
                    slot = None;
                    let next = tokio::select! {
                        job = rx.recv() => job,
                        () = tokio::time::sleep(ROOM_LINGER) => None,
                        _ = shutdown.wait_for(|stop| *stop) => None,
                    };
                    match next {
                        Some(job) => job,
                        None => {
                            // A later worker of this room starts with a window of its own, so
                            // this one's records must have committed first (they have, unless
                            // the database is failing). On shutdown the flusher takes them.
                            if !self.is_shutting_down() {
                                self.wait_recorded(&mut unrecorded, &mut slot).await;
                            }
                            let mut rooms = self.rooms.lock().expect("lock poisoned");
                            match rx.try_recv() {
                                Ok(job) if !self.is_shutting_down() => job,
                                _ => {
                                    rooms.remove(&room_id);
                                    return;
                                }
                            }
                        }
                    }
                }
            };
            if slot.is_none() {
                let Ok(permit) = self.room_slots.clone().acquire_owned().await else { return };
                slot = Some(permit);
            }
            if self.is_shutting_down() {
                // Leave this and the queued jobs: their events are still pending in the store.
                self.rooms.lock().expect("lock poisoned").remove(&room_id);
                return;
            }
            self.process(job.event, &room_id, &mut slot, &mut unrecorded).await;
        }
    }

    /// Applies the state cache, runs the handler with retries, and records the outcome.
    async fn process(
        &self,
        routed: Routed,
        room: &Arc<str>,
        slot: &mut Option<OwnedSemaphorePermit>,
        unrecorded: &mut Unrecorded,
    ) {
        let (pos, attempts, event) = match routed {
            Routed::Parsed { pos, event } => (pos, 0, event),
            Routed::Stored(pending) => match Event::from_json(&pending.json) {
                Ok(event) => (pending.pos, pending.attempts, event),
                Err(e) => {
                    let event_id = &pending.event_id;
                    tracing::warn!(%event_id, error = %e, "parking malformed event");
                    Box::pin(self.park(&pending, pending.attempts, &e.to_string())).await;
                    return;
                }
            },
        };
        // Parking (rare) needs the event as the inbox keeps it.
        let pending = |attempts| PendingEvent {
            pos,
            event_id: event.event_id.to_string(),
            room_id: event.room_id.to_string(),
            json: event.json().to_owned(),
            attempts,
        };
        let span = tracing::info_span!(
            "event",
            event_id = %event.event_id,
            room_id = %event.room_id,
            sender = %event.sender,
            kind = %event.kind,
        );
        async {
            #[cfg(feature = "encryption")]
            let Some(event) = Box::pin(self.decrypt(event.clone(), &pending, attempts)).await
            else {
                return;
            };
            let mut attempts = attempts;
            loop {
                let started = std::time::Instant::now();
                let result = match apply_state(&self.store, &event).await {
                    Ok(()) => {
                        run_handler(self.bridge.clone(), self.ctx.clone(), event.clone()).await
                    }
                    Err(e) => Err(HandlerFailure::Retry(format!("state cache update failed: {e}"))),
                };
                let outcome = match &result {
                    Ok(_) => EventOutcome::Ok,
                    Err(HandlerFailure::Permanent(_)) => EventOutcome::Parked,
                    Err(HandlerFailure::Retry(_)) => EventOutcome::Failed,
                };
                self.ctx.metrics().event(&event.kind, outcome, started.elapsed());
                match result {
                    Ok(bookkeeping) => {
                        // The remote side has the event: what remains is retried until the
                        // database takes it, never by handling the event again.
                        if !bookkeeping.is_empty() {
                            self.persist("record the event's mappings", |store| {
                                store.record_delivery(
                                    &bookkeeping.messages,
                                    bookkeeping.pending.as_ref(),
                                )
                            })
                            .await;
                        }
                        if attempts > 0
                            && let Err(e) = self.store.clear_failures(event.event_id.as_str()).await
                        {
                            tracing::warn!(error = %e, "could not clear the failure count");
                        }
                        self.complete(pos, room, slot, unrecorded).await;
                        return;
                    }
                    Err(HandlerFailure::Permanent(error)) => {
                        tracing::warn!(%error, "handler failed permanently; parking event");
                        Box::pin(self.park(&pending(attempts + 1), attempts + 1, &error)).await;
                        self.failure_notice(&event, &error).await;
                        return;
                    }
                    Err(HandlerFailure::Retry(error)) => {
                        let recorded = self.store.record_failure(event.event_id.as_str(), &error);
                        attempts = recorded.await.unwrap_or(attempts + 1);
                        if u32::try_from(attempts).unwrap_or(u32::MAX) >= self.config.max_attempts {
                            tracing::warn!(%error, attempts, "handler failed; parking event");
                            Box::pin(self.park(&pending(attempts), attempts, &error)).await;
                            self.failure_notice(&event, &error).await;
                            return;
                        }
                        let delay = self.config.retry_delay(u32::try_from(attempts).unwrap_or(1));
                        let delay_ms = delay.as_millis();
                        tracing::info!(%error, attempts, delay_ms, "handler failed; will retry");
                        let mut shutdown = self.shutdown.clone();
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            // On shutdown the event stays pending with its attempts counted.
                            _ = shutdown.wait_for(|s| *s) => return,
                        }
                    }
                }
            }
        }
        .instrument(span)
        .await;
    }

    /// The event as handlers see it: an `m.room.encrypted` event from outside the namespace
    /// decrypted by the bridge device (when encryption is allowed), any other as it is. `None`
    /// when the event was set aside or parked instead.
    ///
    /// An event whose room key has not arrived holds its room until the key comes or
    /// `encryption.key_wait_secs` pass; it is then parked naming the key's session, which
    /// puts it back in line when the key arrives, and its sender is told. Until the device
    /// started, the room waits for it.
    #[cfg(feature = "encryption")]
    async fn decrypt(
        &self,
        event: Event,
        pending: &impl Fn(i32) -> PendingEvent,
        attempts: i32,
    ) -> Option<Event> {
        use crate::crypto::Decryption;
        if event.kind != "m.room.encrypted"
            || self.ctx.registration().is_user_in_namespace(&event.sender)
        {
            return Some(event);
        }
        let slot = self.ctx.device_slot()?;
        let wait = Duration::from_secs(self.ctx.config().encryption.key_wait_secs);
        let deadline = tokio::time::Instant::now() + wait;
        let mut changes = slot.subscribe();
        let mut shutdown = self.shutdown.clone();
        let count = |outcome: &str| {
            let labels = vec![("outcome", outcome.to_owned())];
            self.ctx.metrics().decryptions.get_or_create(&labels).inc();
        };
        loop {
            changes.borrow_and_update();
            let result = match slot.get() {
                Some(device) => device.decrypt(&event).await,
                None => {
                    tracing::info!("waiting for the bridge device to decrypt");
                    tokio::select! {
                        _ = changes.changed() => continue,
                        _ = shutdown.wait_for(|s| *s) => return None,
                    }
                }
            };
            match result {
                Ok(Decryption::Decrypted(plain)) => {
                    count("decrypted");
                    return Some(plain);
                }
                Ok(Decryption::AwaitingKey { session_id }) => {
                    if tokio::time::Instant::now() < deadline {
                        tokio::select! {
                            _ = changes.changed() => {}
                            () = tokio::time::sleep_until(deadline) => {}
                            _ = shutdown.wait_for(|s| *s) => return None,
                        }
                        continue;
                    }
                    count("awaiting_key");
                    tracing::info!(%session_id, "no room key yet; setting the event aside");
                    let why = "waiting for its room key";
                    let parked = pending(attempts);
                    self.persist("set an event aside", |store| {
                        store.park_awaiting(&parked, attempts, why, Some(&session_id))
                    })
                    .await;
                    // A key that arrived while the event was being parked found nothing to put
                    // back in line: look once more.
                    if let Some(device) = slot.get()
                        && let Ok(Decryption::Decrypted(_)) = device.decrypt(&event).await
                        && let Err(e) = self.store.retry_parked(Some(event.event_id.as_str())).await
                    {
                        tracing::warn!(error = %e, "could not put the event back in line");
                    }
                    crate::route::report_not_delivered(
                        &self.ctx,
                        &event,
                        crate::route::StatusReason::AwaitingKey,
                        "the bridge has not received its decryption key; it will be bridged when \
                         the key arrives",
                        Notice::Yes,
                    );
                    return None;
                }
                Ok(Decryption::Failed(error)) => {
                    count("failed");
                    tracing::warn!(%error, "cannot decrypt; parking event");
                    Box::pin(self.park(&pending(attempts + 1), attempts + 1, &error)).await;
                    self.failure_notice(&event, &error).await;
                    return None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "decryption failed; will retry");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.wait_for(|s| *s) => return None,
                    }
                }
            }
        }
    }

    /// Tells the sender of a real user's event that failed for good that it was not bridged
    /// (a failed send status, and a notice when configured), in the background.
    async fn failure_notice(&self, event: &Event, error: &str) {
        let ours = self.ctx.registration().is_user_in_namespace(&event.sender);
        if ours || event.is_state() {
            return;
        }
        let reason = crate::route::StatusReason::Failed;
        crate::route::report_not_delivered(&self.ctx, event, reason, error, Notice::Yes);
    }

    /// Counts an event of a batch as finished; returns whether that finished the batch.
    fn finish_in_batch(&self, seq: i64) -> bool {
        let mut remaining = self.remaining.lock().expect("lock poisoned");
        let Some(left) = remaining.get_mut(&seq) else { return false };
        *left -= 1;
        if *left == 0 {
            remaining.remove(&seq);
            return true;
        }
        false
    }

    /// Records a handled event. The flusher groups the records of every room that completed
    /// meanwhile into one database transaction (room progress, finished batches), so the commit
    /// cost is shared. The room goes on with its next event without waiting for that commit
    /// until it has `record_window` handled-but-unrecorded events; then it waits for them to
    /// commit. So after a crash at most `record_window` of each room's last handled events are
    /// handed out again (the at-least-once window).
    async fn complete(
        &self,
        pos: InboxPos,
        room: &Arc<str>,
        slot: &mut Option<OwnedSemaphorePermit>,
        unrecorded: &mut Unrecorded,
    ) {
        let generation = {
            let mut completed = self.completed.lock().expect("lock poisoned");
            match pos {
                InboxPos::Batch { seq, idx } => {
                    completed.progress.push((room.clone(), seq, idx));
                    if self.finish_in_batch(seq) {
                        completed.finished_batches.push(seq);
                    }
                }
                InboxPos::Requeued { seq } => completed.finished_requeued.push(seq),
            }
            completed.generation
        };
        self.completed_ready.notify_one();
        unrecorded.events += 1;
        unrecorded.generation = generation;
        if unrecorded.events >= self.config.record_window {
            self.wait_recorded(unrecorded, slot).await;
        }
    }

    /// Waits until the room's handled events are recorded. The room's slot is given back while
    /// it waits: waiting for a commit is not processing, and other rooms' handlers can run
    /// meanwhile.
    async fn wait_recorded(
        &self,
        unrecorded: &mut Unrecorded,
        slot: &mut Option<OwnedSemaphorePermit>,
    ) {
        if unrecorded.events == 0 {
            return;
        }
        let mut flushed = self.flushed.subscribe();
        if *flushed.borrow() < unrecorded.generation {
            drop(slot.take());
        }
        // The flusher runs until the workers are gone or the shutdown grace is over, and a worker
        // handles nothing after shutdown began; a flush that gave up on shutdown (`persist`)
        // still advances `flushed`, so this returns then too, with the records left unwritten
        // (their events are handed out again after the restart).
        let _ = flushed.wait_for(|&done| done >= unrecorded.generation).await;
        unrecorded.events = 0;
    }

    /// Records what was completed, retrying until the database takes it: giving up would
    /// leave handled events pending and hand them out again after a restart, outside the
    /// documented at-least-once window.
    async fn flush_completed(&self) {
        let defer_deletes = self.store.backend_name() == "sqlite";
        let (batch, generation) = {
            let mut completed = self.completed.lock().expect("lock poisoned");
            let generation = completed.generation;
            completed.generation += 1;
            let progress = std::mem::take(&mut completed.progress);
            let delete_now = !defer_deletes
                || progress.is_empty()
                || completed.finished_batches.len() >= DELETE_BATCHES_AT;
            let batch = Completed {
                progress,
                finished_batches: if delete_now {
                    std::mem::take(&mut completed.finished_batches)
                } else {
                    Vec::new()
                },
                finished_requeued: std::mem::take(&mut completed.finished_requeued),
                generation,
            };
            (batch, generation)
        };
        if !batch.is_empty() {
            let progress: Vec<(&str, i64, i32)> =
                batch.progress.iter().map(|(room, seq, idx)| (&**room, *seq, *idx)).collect();
            let (progress, batches, requeued) =
                (&progress, &batch.finished_batches, &batch.finished_requeued);
            self.persist("record handled events", |store| async move {
                store.record_handled(progress, batches, requeued).await
            })
            .await;
        }
        self.flushed.send_replace(generation);
    }

    /// Flushes completions until `stop` is set and nothing is left. Finished batches whose
    /// deletion was deferred are deleted when nothing else comes for a moment.
    async fn flush_loop(&self, mut stop: watch::Receiver<bool>) {
        loop {
            let ready = self.completed_ready.notified();
            // Let the room workers that are ready run first, so that their completions join
            // this flush instead of each waiting for one of its own.
            tokio::task::yield_now().await;
            self.flush_completed().await;
            let (empty, leftovers) = {
                let completed = self.completed.lock().expect("lock poisoned");
                (completed.is_empty(), !completed.finished_batches.is_empty())
            };
            if *stop.borrow() && empty {
                return;
            }
            tokio::select! {
                () = ready => {}
                _ = stop.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(50)), if leftovers => {}
            }
        }
    }

    /// Parks an event (its room's progress moves past it), retrying as the flusher does.
    ///
    /// The room's progress is written here directly, possibly before earlier events' records
    /// that the flusher still holds: those then never move it back (a progress upsert only
    /// moves forward).
    async fn park(&self, event: &PendingEvent, attempts: i32, error: &str) {
        self.persist("park event", |store| async move { store.park(event, attempts, error).await })
            .await;
        if let InboxPos::Batch { seq, .. } = event.pos
            && self.finish_in_batch(seq)
        {
            self.completed.lock().expect("lock poisoned").finished_batches.push(seq);
            self.completed_ready.notify_one();
        }
    }

    /// Runs `write` until it succeeds or shutdown begins, backing off from 100 ms to 5 s.
    async fn persist<'a, F, Fut>(&'a self, what: &'static str, write: F)
    where
        F: Fn(&'a Store) -> Fut,
        Fut: std::future::Future<Output = crate::store::Result<()>> + 'a,
    {
        let mut delay = Duration::from_millis(100);
        let mut shutdown = self.shutdown.clone();
        for attempt in 1u32.. {
            match write(&self.store).await {
                Ok(()) => return,
                Err(e) => {
                    if attempt == 1 || attempt.is_power_of_two() {
                        tracing::error!(attempt, error = %e, "cannot {what}; retrying");
                    }
                    if self.is_shutting_down() {
                        tracing::error!("cannot {what} before shutdown; it stays pending");
                        return;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = shutdown.wait_for(|s| *s) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

enum HandlerFailure {
    Retry(String),
    Permanent(String),
}

/// Runs the handler, catching a panic so that it fails this event instead of the worker.
async fn run_handler<B: Bridge>(
    bridge: Arc<B>,
    ctx: crate::Context,
    event: Event,
) -> Result<Bookkeeping, HandlerFailure> {
    use futures_util::FutureExt as _;
    let routed = std::panic::AssertUnwindSafe(crate::route::route(&ctx, &*bridge, &event));
    match routed.catch_unwind().await {
        Ok(Ok(bookkeeping)) => Ok(bookkeeping),
        Ok(Err(e)) if e.is_permanent() => Err(HandlerFailure::Permanent(e.to_string())),
        Ok(Err(e)) => Err(HandlerFailure::Retry(e.to_string())),
        Err(_) => Err(HandlerFailure::Retry("handler panicked".into())),
    }
}

/// Updates the state cache from a state event before the bridge sees it.
async fn apply_state(store: &Store, event: &Event) -> crate::store::Result<()> {
    let Some(state_key) = event.state_key.as_deref() else { return Ok(()) };
    if event.kind == "m.room.member" {
        // A state key that is no user ID makes no row (the homeserver would not send one).
        let Ok(user_id) = <&UserId>::try_from(state_key) else { return Ok(()) };
        // Lenient on purpose: a profile field of the wrong type must not lose the membership.
        let content: serde_json::Value = event.content().unwrap_or_default();
        let text = |key: &str| content.get(key).and_then(serde_json::Value::as_str);
        if let Some(membership) = text("membership").and_then(Membership::parse) {
            let row = MemberRow {
                displayname: text("displayname"),
                avatar_url: text("avatar_url").map(<&MxcUri>::from),
                ..MemberRow::new(&event.room_id, user_id, membership)
            };
            store.set_membership(row).await?;
        }
    } else if let Some(field) =
        RoomStateField::for_event_type(&event.kind).filter(|_| state_key.is_empty())
    {
        let json = if field == RoomStateField::Create {
            // Whole: its sender is a creator of the room, with power beyond any level from
            // room version 12 on.
            event.json().to_owned()
        } else {
            let content: serde_json::Value = event.content().unwrap_or_default();
            content.to_string()
        };
        store.set_room_state(&event.room_id, field, &json).await?;
    }
    Ok(())
}

async fn deliver_ephemeral<B: Bridge>(ctx: &crate::Context, bridge: &B, batch: EphemeralBatch) {
    for event in &batch.ephemeral {
        crate::route::route_ephemeral(ctx, bridge, event).await;
    }
    for event in &batch.to_device {
        bridge.handle_to_device(event).await;
    }
    if !batch.device_data.is_empty() {
        bridge.handle_device_data(&batch.device_data).await;
    }
}
