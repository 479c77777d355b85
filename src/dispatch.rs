//! Hands stored events to the bridge: in order per room, rooms in parallel, failures retried and
//! then parked — never dropped.
//!
//! The server commits a transaction and calls [`Inbox::notify_new_events`]; the dispatcher's
//! fetch loop reads pending rows oldest first and routes each to its room's queue. A room queue
//! has one worker task, which exists only while the room has work, and holds one of
//! `room_concurrency` permits while it runs. At most [`MAX_IN_FLIGHT`] events are in memory; the
//! rest wait in the database. A worker applies the state cache update, runs the handler, and marks
//! the event done, retrying with doubling delays and parking the event after `max_attempts`.
//!
//! Ephemeral data is not stored: the server queues it on a bounded channel (a full channel
//! delays the homeserver's 200, it never drops data) and one task hands it to the bridge in the
//! order transactions arrived.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tracing::Instrument as _;

use crate::{
    bridge::{Bridge, Event},
    config::InboxConfig,
    server::transactions::EphemeralBatch,
    store::{Membership, PendingEvent, RoomStateField, Store},
};

/// The most events read from the database and not yet finished.
pub const MAX_IN_FLIGHT: usize = 1024;

/// The server's side of the inbox: announce new events, queue ephemeral data.
#[derive(Debug, Clone)]
pub(crate) struct Inbox {
    new_events: Arc<Notify>,
    ephemeral: mpsc::Sender<EphemeralBatch>,
}

impl Inbox {
    /// Wakes the fetch loop: new events were committed.
    pub(crate) fn notify_new_events(&self) {
        self.new_events.notify_one();
    }

    /// Queues a transaction's ephemeral data for the bridge; waits while the queue is full.
    pub(crate) async fn queue_ephemeral(&self, batch: EphemeralBatch) {
        if self.ephemeral.send(batch).await.is_err() {
            tracing::warn!("ephemeral data arrived after shutdown; not delivered");
        }
    }
}

/// The processing side: owns the fetch loop and the room workers.
#[derive(Debug)]
pub(crate) struct Dispatcher<B> {
    shared: Arc<Shared<B>>,
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
    /// Woken by the server when events were committed.
    new_events: Arc<Notify>,
    /// Bounds events in memory; a permit travels with each event until it is finished.
    in_flight: Arc<Semaphore>,
    /// Bounds rooms processed at the same time.
    room_slots: Arc<Semaphore>,
    /// The queue of each room that has work, keyed by room ID. An entry lives only while the
    /// room's worker runs.
    rooms: Mutex<HashMap<String, mpsc::UnboundedSender<Job>>>,
    /// Sequence numbers handed out and not yet finished (so a rescan does not hand them twice).
    handed_out: Mutex<HashSet<i64>>,
    /// Handled events waiting to be marked done together, and the generation of the flush
    /// that will take them.
    completed: Mutex<(Vec<i64>, u64)>,
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

struct Job {
    event: PendingEvent,
    _permit: OwnedSemaphorePermit,
}

/// Creates the two halves of the inbox.
pub(crate) fn inbox<B: Bridge>(
    bridge: Arc<B>,
    ctx: crate::Context,
    config: InboxConfig,
    shutdown: watch::Receiver<bool>,
) -> (Inbox, Dispatcher<B>) {
    let new_events = Arc::new(Notify::new());
    let (tx, rx) = mpsc::channel(256);
    let room_slots = Arc::new(Semaphore::new(config.room_concurrency));
    let shared = Arc::new(Shared {
        bridge,
        store: ctx.store().clone(),
        ctx,
        config,
        new_events: new_events.clone(),
        in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        room_slots,
        rooms: Mutex::new(HashMap::new()),
        handed_out: Mutex::new(HashSet::new()),
        completed: Mutex::new((Vec::new(), 1)),
        completed_ready: Notify::new(),
        flushed: watch::channel(0).0,
        workers: AtomicUsize::new(0),
        worker_exited: Notify::new(),
        shutdown,
    });
    (Inbox { new_events, ephemeral: tx }, Dispatcher { shared, ephemeral_rx: rx })
}

impl<B: Bridge> Dispatcher<B> {
    /// Runs until shutdown: resumes what is pending in the store, then follows new events.
    /// After shutdown it waits up to `grace` for running handlers; unfinished events stay
    /// pending in the store for the next start.
    pub(crate) async fn run(self, grace: Duration) {
        let Self { shared, mut ephemeral_rx } = self;
        let ephemeral_shared = shared.clone();
        let ephemeral_task = tokio::spawn(async move {
            while let Some(batch) = ephemeral_rx.recv().await {
                deliver_ephemeral(&ephemeral_shared.ctx, &*ephemeral_shared.bridge, batch).await;
            }
        });
        let (stop_flusher, flusher_stop) = watch::channel(false);
        let flusher_shared = shared.clone();
        let flusher = tokio::spawn(async move { flusher_shared.flush_loop(flusher_stop).await });
        shared.clone().fetch_loop().await;
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
        // Mark done what the finished handlers completed.
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

impl<B: Bridge> Shared<B> {
    fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    async fn fetch_loop(self: Arc<Self>) {
        let mut shutdown = self.shutdown.clone();
        let mut cursor = 0i64;
        let mut idle_rounds = 0u32;
        loop {
            if self.is_shutting_down() {
                return;
            }
            let available = self.in_flight.available_permits();
            if available == 0 {
                // Wait for one event to finish before reading more.
                tokio::select! {
                    permit = self.in_flight.clone().acquire_owned() => drop(permit),
                    _ = shutdown.changed() => return,
                }
                continue;
            }
            let limit = i64::try_from(available.min(256)).unwrap_or(256);
            let batch = match self.store.pending_events(cursor, limit).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the inbox; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => return,
                    }
                    continue;
                }
            };
            if batch.is_empty() {
                idle_rounds += 1;
                tokio::select! {
                    () = self.new_events.notified() => {}
                    // A slow safety rescan from the start picks up parked events put back by
                    // an operator and anything a missed wake-up left behind.
                    () = tokio::time::sleep(Duration::from_secs(5)) => {
                        if idle_rounds >= 2 {
                            cursor = 0;
                            idle_rounds = 0;
                        }
                    }
                    _ = shutdown.changed() => return,
                }
                continue;
            }
            idle_rounds = 0;
            for event in batch {
                cursor = cursor.max(event.seq);
                if !self.handed_out.lock().expect("lock poisoned").insert(event.seq) {
                    continue;
                }
                let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                    // Cannot happen: we asked for no more rows than free permits. Be safe.
                    self.handed_out.lock().expect("lock poisoned").remove(&event.seq);
                    cursor = cursor.min(event.seq - 1);
                    break;
                };
                self.clone().route(Job { event, _permit: permit });
            }
        }
    }

    /// Puts a job on its room's queue, starting the room's worker when it has none.
    fn route(self: Arc<Self>, job: Job) {
        let room_id = job.event.room_id.clone();
        let mut rooms = self.rooms.lock().expect("lock poisoned");
        let job = match rooms.get(&room_id) {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(mpsc::error::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(job).expect("the receiver is alive");
        rooms.insert(room_id.clone(), tx);
        drop(rooms);
        self.workers.fetch_add(1, Ordering::SeqCst);
        let me = self.clone();
        tokio::spawn(async move {
            me.room_worker(room_id, rx).await;
            me.workers.fetch_sub(1, Ordering::SeqCst);
            me.worker_exited.notify_waiters();
        });
    }

    async fn room_worker(&self, room_id: String, mut rx: mpsc::UnboundedReceiver<Job>) {
        let Ok(_slot) = self.room_slots.clone().acquire_owned().await else { return };
        loop {
            if self.is_shutting_down() {
                // Leave queued jobs: their events are still pending in the store.
                self.rooms.lock().expect("lock poisoned").remove(&room_id);
                return;
            }
            let job = match rx.try_recv() {
                Ok(job) => job,
                Err(_) => {
                    // Remove the queue under the lock, unless a job arrived meanwhile.
                    let mut rooms = self.rooms.lock().expect("lock poisoned");
                    match rx.try_recv() {
                        Ok(job) => job,
                        Err(_) => {
                            rooms.remove(&room_id);
                            return;
                        }
                    }
                }
            };
            let seq = job.event.seq;
            self.process(job.event).await;
            self.handed_out.lock().expect("lock poisoned").remove(&seq);
        }
    }

    /// Applies the state cache, runs the handler with retries, and records the outcome.
    async fn process(&self, pending: PendingEvent) {
        let seq = pending.seq;
        let event = match Event::from_json(&pending.json) {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(event_id = %pending.event_id, error = %e, "parking malformed event");
                self.park(seq, &pending.event_id, &e.to_string()).await;
                return;
            }
        };
        let span = tracing::info_span!(
            "event",
            event_id = %event.event_id,
            room_id = %event.room_id,
            sender = %event.sender,
            kind = %event.kind,
        );
        async {
            let mut attempts = pending.attempts;
            loop {
                let started = std::time::Instant::now();
                let result = match apply_state(&self.store, &event).await {
                    Ok(()) => run_handler(self.bridge.clone(), self.ctx.clone(), event.clone()).await,
                    Err(e) => Err(HandlerFailure::Retry(format!("state cache update failed: {e}"))),
                };
                let outcome = match &result {
                    Ok(()) => "ok",
                    Err(HandlerFailure::Permanent(_)) => "parked",
                    Err(HandlerFailure::Retry(_)) => "failed",
                };
                self.ctx.metrics().event(&event.kind, outcome, started.elapsed());
                match result {
                    Ok(()) => {
                        self.complete(seq).await;
                        return;
                    }
                    Err(HandlerFailure::Permanent(error)) => {
                        tracing::warn!(%error, "handler failed permanently; parking event");
                        self.park(seq, event.event_id.as_str(), &error).await;
                        self.failure_notice(&event, &error).await;
                        return;
                    }
                    Err(HandlerFailure::Retry(error)) => {
                        attempts = match self.store.record_failure(seq, &error).await {
                            Ok(n) => n,
                            Err(_) => attempts + 1,
                        };
                        if u32::try_from(attempts).unwrap_or(u32::MAX) >= self.config.max_attempts {
                            tracing::warn!(%error, attempts, "handler failed; parking event");
                            self.park(seq, event.event_id.as_str(), &error).await;
                            self.failure_notice(&event, &error).await;
                            return;
                        }
                        let delay = self.config.retry_delay(u32::try_from(attempts).unwrap_or(1));
                        tracing::info!(%error, attempts, delay_ms = delay.as_millis(), "handler failed; will retry");
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

    /// Tells the room that an event of a real user could not be bridged (when configured). The
    /// notice is sent in the background, so the room's next events do not wait for it.
    async fn failure_notice(&self, event: &Event, error: &str) {
        let ours = self.ctx.registration().is_user_in_namespace(&event.sender);
        if !self.config.failure_notices || ours || event.is_state() {
            return;
        }
        let text = format!("⚠️ Your message could not be bridged ({}): {error}", event.event_id);
        let (bot, room_id) = (self.ctx.bot(), event.room_id.clone());
        tokio::spawn(async move {
            if let Err(e) = bot.send_notice(&room_id, &text, None).await {
                tracing::warn!(error = %e, "could not post the failure notice");
            }
        });
    }

    /// Marks a handled event done, retrying until the database takes it: giving up would
    /// leave it pending and hand it out again in this process, outside the documented
    /// at-least-once window (a process dying between the handler and the mark). Only a
    /// shutdown ends the retries; the event is then handled again after the restart.
    /// Marks a handled event done and returns once that is committed. The flusher groups the
    /// marks of every room that completed meanwhile into one statement, so the commit cost is
    /// shared, while each room still has at most one handled-but-unmarked event (the
    /// at-least-once window stays one event per room). The sequence number stays handed out
    /// until the commit, so a rescan cannot hand it out again.
    async fn complete(&self, seq: i64) {
        let generation = {
            let mut completed = self.completed.lock().expect("lock poisoned");
            completed.0.push(seq);
            completed.1
        };
        self.completed_ready.notify_one();
        let mut flushed = self.flushed.subscribe();
        // The flusher outlives the workers, so the sender is alive while we wait.
        let _ = flushed.wait_for(|&done| done >= generation).await;
    }

    /// Marks done what was completed, retrying until the database takes it: giving up would
    /// leave handled events pending and hand them out again in this process, outside the
    /// documented at-least-once window (a process dying between the handler and the mark).
    async fn flush_completed(&self) {
        let (batch, generation) = {
            let mut completed = self.completed.lock().expect("lock poisoned");
            let generation = completed.1;
            completed.1 += 1;
            (std::mem::take(&mut completed.0), generation)
        };
        if !batch.is_empty() {
            let seqs = &batch;
            self.persist(batch[0], "mark events done", |store| async move {
                store.mark_done_many(seqs).await
            })
            .await;
        }
        self.flushed.send_replace(generation);
    }

    /// Flushes completions until `stop` is set and nothing is left.
    async fn flush_loop(&self, mut stop: watch::Receiver<bool>) {
        loop {
            let ready = self.completed_ready.notified();
            self.flush_completed().await;
            if *stop.borrow() && self.completed.lock().expect("lock poisoned").0.is_empty() {
                return;
            }
            tokio::select! {
                () = ready => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Parks an event, retrying as [`Self::mark_done`] does (the event ID is in the span).
    async fn park(&self, seq: i64, _event_id: &str, error: &str) {
        self.persist(seq, "park event", |store| async move { store.park(seq, error).await }).await;
    }

    /// Runs `write` until it succeeds or shutdown begins, backing off from 100 ms to 5 s.
    async fn persist<'a, F, Fut>(&'a self, seq: i64, what: &'static str, write: F)
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
                        tracing::error!(seq, attempt, error = %e, "cannot {what}; retrying");
                    }
                    if self.is_shutting_down() {
                        tracing::error!(seq, "cannot {what} before shutdown; it stays pending");
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
) -> Result<(), HandlerFailure> {
    use futures_util::FutureExt as _;
    let routed = std::panic::AssertUnwindSafe(crate::matrix::route(&ctx, &*bridge, &event));
    match routed.catch_unwind().await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if e.is_permanent() => Err(HandlerFailure::Permanent(e.to_string())),
        Ok(Err(e)) => Err(HandlerFailure::Retry(e.to_string())),
        Err(_) => Err(HandlerFailure::Retry("handler panicked".into())),
    }
}

/// Updates the state cache from a state event before the bridge sees it.
async fn apply_state(store: &Store, event: &Event) -> crate::store::Result<()> {
    let Some(state_key) = event.state_key.as_deref() else { return Ok(()) };
    if event.kind == "m.room.member" {
        // Lenient on purpose: a profile field of the wrong type must not lose the membership.
        let content: serde_json::Value = event.content().unwrap_or_default();
        let text = |key: &str| content.get(key).and_then(serde_json::Value::as_str);
        if let Some(membership) = text("membership").and_then(Membership::parse) {
            store
                .set_membership(
                    event.room_id.as_str(),
                    state_key,
                    membership,
                    text("displayname"),
                    text("avatar_url"),
                )
                .await?;
        }
    } else if let Some(field) =
        RoomStateField::for_event_type(&event.kind).filter(|_| state_key.is_empty())
    {
        let content: serde_json::Value = event.content().unwrap_or_default();
        store.set_room_state(event.room_id.as_str(), field, &content.to_string()).await?;
    }
    Ok(())
}

async fn deliver_ephemeral<B: Bridge>(ctx: &crate::Context, bridge: &B, batch: EphemeralBatch) {
    for event in &batch.ephemeral {
        crate::matrix::route_ephemeral(ctx, bridge, event).await;
    }
    for event in &batch.to_device {
        bridge.handle_to_device(event).await;
    }
    if !batch.device_data.is_empty() {
        bridge.handle_device_data(&batch.device_data).await;
    }
}
