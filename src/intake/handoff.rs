//! The hand-off from the intake to the dispatcher: committed batches in memory, in commit
//! order, so the common path never reads events back from the database; and the queue of
//! ephemeral data. When the queue overflows the dispatcher reads from the database instead.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use tokio::sync::{Notify, mpsc};

use crate::{
    event::{EphemeralBatch, Event},
    store::{InboxPos, PendingEvent},
};

/// The most events waiting in the in-memory hand-off queue; beyond that the dispatcher reads
/// them from the database.
pub(crate) const MAX_QUEUED: usize = 8192;

/// A committed batch handed over in memory (or read back from the database).
#[derive(Debug)]
pub(crate) struct LiveBatch {
    pub(crate) seq: i64,
    pub(crate) events: Vec<Routed>,
}

/// An event on its way to its room's worker.
#[derive(Debug)]
pub(crate) enum Routed {
    /// Handed over by the intake, which parsed it already: the event holds its IDs and JSON.
    Parsed {
        /// Where it sits in the inbox.
        pos: InboxPos,
        /// The event.
        event: Event,
    },
    /// Read from the database; the room's worker parses it.
    Stored(PendingEvent),
}

impl Routed {
    pub(crate) fn room_id(&self) -> &str {
        match self {
            Self::Parsed { event, .. } => event.room_id.as_str(),
            Self::Stored(pending) => &pending.room_id,
        }
    }
}

/// The server's side of the inbox: hand over committed batches, queue ephemeral data.
#[derive(Debug, Clone)]
pub(crate) struct Handoff {
    live: mpsc::UnboundedSender<LiveBatch>,
    live_state: Arc<LiveState>,
    ephemeral: mpsc::Sender<EphemeralBatch>,
}

/// Shared between [`Handoff::hand_off`] and the fetch loop.
#[derive(Debug, Default)]
pub(crate) struct LiveState {
    /// Events in the hand-off queue.
    pub(crate) queued: AtomicUsize,
    /// Set when a batch was not queued; the fetch loop then reads from the database.
    pub(crate) overflow: AtomicBool,
    /// Wakes the fetch loop after an overflow.
    pub(crate) wake: Notify,
}

/// The dispatcher's ends of a [`Handoff`].
#[derive(Debug)]
pub(crate) struct HandoffReceivers {
    pub(crate) live: mpsc::UnboundedReceiver<LiveBatch>,
    pub(crate) live_state: Arc<LiveState>,
    pub(crate) ephemeral: mpsc::Receiver<EphemeralBatch>,
}

impl Handoff {
    /// A hand-off and the dispatcher's ends of it; up to `ephemeral_capacity` transactions'
    /// ephemeral data wait before the intake waits.
    pub(crate) fn new(ephemeral_capacity: usize) -> (Self, HandoffReceivers) {
        let (live, live_rx) = mpsc::unbounded_channel();
        let live_state = Arc::new(LiveState::default());
        let (ephemeral, ephemeral_rx) = mpsc::channel(ephemeral_capacity);
        let receivers = HandoffReceivers {
            live: live_rx,
            live_state: live_state.clone(),
            ephemeral: ephemeral_rx,
        };
        (Self { live, live_state, ephemeral }, receivers)
    }

    /// Hands a committed batch to the dispatcher. Must be called in commit order. When the
    /// queue is full (or the dispatcher is reading from the database after an earlier
    /// overflow) the batch is not queued: the dispatcher will read it from the database.
    pub(crate) fn hand_off(&self, batch: LiveBatch) {
        let state = &self.live_state;
        let n = batch.events.len().max(1);
        if state.overflow.load(Ordering::SeqCst)
            || state.queued.load(Ordering::SeqCst) + n > MAX_QUEUED
        {
            self.overflowed();
            return;
        }
        state.queued.fetch_add(n, Ordering::SeqCst);
        if self.live.send(batch).is_err() {
            // The dispatcher is gone (shutdown): the batch stays in the database.
            state.queued.fetch_sub(n, Ordering::SeqCst);
        }
    }

    /// An inbox whose batches go to the returned receiver, for tests of the server side.
    #[cfg(test)]
    pub(crate) fn for_tests() -> (Self, mpsc::UnboundedReceiver<LiveBatch>) {
        let (live, rx) = mpsc::unbounded_channel();
        let (ephemeral, _) = mpsc::channel(1);
        (Self { live, live_state: Arc::default(), ephemeral }, rx)
    }

    /// Tells the dispatcher to read from the database: a batch was committed but not queued.
    pub(crate) fn overflowed(&self) {
        self.live_state.overflow.store(true, Ordering::SeqCst);
        self.live_state.wake.notify_one();
    }

    /// Queues a transaction's ephemeral data for the bridge; waits while the queue is full.
    pub(crate) async fn queue_ephemeral(&self, batch: EphemeralBatch) {
        if self.ephemeral.send(batch).await.is_err() {
            tracing::warn!("ephemeral data arrived after shutdown; not delivered");
        }
    }
}
