//! The inbox's internal operations, for the store's conformance suite and the benchmark
//! programs: not part of the API, and free to change.
//!
//! A bridge never needs these: the framework's intake stores transactions, and its dispatcher
//! hands events out and records what became of them. Bring [`InboxInternals`] into scope to
//! call them on a [`Store`].

use std::future::Future;

pub use super::inbox::{
    AcceptOutcome, InboxPos, IncomingTxn, NewEvent, PRUNE_CHUNK, PendingBatch, PendingEvent,
};
use super::{Result, Store};

/// The inbox's operations that the intake and the dispatcher use; see the module docs.
pub trait InboxInternals {
    /// Stores a transaction and its events in one database transaction.
    ///
    /// [`AcceptOutcome::Duplicate`] when `(txn_id, body_hash)` was stored before. Events whose
    /// ID was stored before (pending, handled or parked, until pruned) are skipped.
    fn accept_transaction(
        &self,
        txn_id: &str,
        body_hash: &str,
        events: &[NewEvent<'_>],
    ) -> impl Future<Output = Result<AcceptOutcome>> + Send;

    /// Stores several transactions in one database transaction (a group commit).
    fn accept_transactions(
        &self,
        txns: &[IncomingTxn<'_>],
    ) -> impl Future<Output = Result<Vec<AcceptOutcome>>> + Send;

    /// Up to `limit` stored batches with `seq > after`, oldest first, with the events not
    /// handled yet.
    fn pending_batches(
        &self,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<PendingBatch>>> + Send;

    /// Parked events put back in line, with `seq > after`, oldest first.
    fn requeued_events(
        &self,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<PendingEvent>>> + Send;

    /// Records handled events: each room's progress, finished batches, finished requeued
    /// events.
    fn record_handled(
        &self,
        progress: &[(&str, i64, i32)],
        finished_batches: &[i64],
        finished_requeued: &[i64],
    ) -> impl Future<Output = Result<()>> + Send;

    /// Records a failed attempt; returns the number of attempts so far.
    fn record_failure(
        &self,
        event_id: &str,
        error: &str,
    ) -> impl Future<Output = Result<i32>> + Send;

    /// Forgets the failed attempts of an event.
    fn clear_failures(&self, event_id: &str) -> impl Future<Output = Result<()>> + Send;

    /// Parks an event until it is retried.
    fn park(
        &self,
        event: &PendingEvent,
        attempts: i32,
        error: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Forgets event IDs and transactions seen more than `max_age_ms` ago.
    fn prune_dedup(&self, max_age_ms: i64) -> impl Future<Output = Result<u64>> + Send;
}

impl InboxInternals for Store {
    fn accept_transaction(
        &self,
        txn_id: &str,
        body_hash: &str,
        events: &[NewEvent<'_>],
    ) -> impl Future<Output = Result<AcceptOutcome>> + Send {
        Store::accept_transaction(self, txn_id, body_hash, events)
    }

    fn accept_transactions(
        &self,
        txns: &[IncomingTxn<'_>],
    ) -> impl Future<Output = Result<Vec<AcceptOutcome>>> + Send {
        Store::accept_transactions(self, txns)
    }

    fn pending_batches(
        &self,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<PendingBatch>>> + Send {
        Store::pending_batches(self, after, limit)
    }

    fn requeued_events(
        &self,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<PendingEvent>>> + Send {
        Store::requeued_events(self, after, limit)
    }

    fn record_handled(
        &self,
        progress: &[(&str, i64, i32)],
        finished_batches: &[i64],
        finished_requeued: &[i64],
    ) -> impl Future<Output = Result<()>> + Send {
        Store::record_handled(self, progress, finished_batches, finished_requeued)
    }

    fn record_failure(
        &self,
        event_id: &str,
        error: &str,
    ) -> impl Future<Output = Result<i32>> + Send {
        Store::record_failure(self, event_id, error)
    }

    fn clear_failures(&self, event_id: &str) -> impl Future<Output = Result<()>> + Send {
        Store::clear_failures(self, event_id)
    }

    fn park(
        &self,
        event: &PendingEvent,
        attempts: i32,
        error: &str,
    ) -> impl Future<Output = Result<()>> + Send {
        Store::park(self, event, attempts, error)
    }

    fn prune_dedup(&self, max_age_ms: i64) -> impl Future<Output = Result<u64>> + Send {
        Store::prune_dedup(self, max_age_ms)
    }
}
