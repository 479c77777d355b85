//! The durable inbox and transaction deduplication.
//!
//! A transaction's new events are stored as *batches*: JSON arrays of events, one row each, in
//! arrival order (`mx_inbox_batch.seq`), with the IDs of those events beside them
//! (`event_ids`). Every event ID is remembered, so that an event that comes again in another
//! transaction is dropped. Handling progress is kept per room, not per event:
//! `mx_room_progress` holds the position (batch, index) of the last handled event of each room,
//! which is exact because a room's events are handled in order. A batch is deleted once all its
//! events are handled. Events that failed for good move to `mx_parked` with their JSON.
//!
//! Where event IDs are remembered depends on the backend. On PostgreSQL each goes to
//! `mx_event_seen` at intake, whose unique index tells new from seen in the same statement. On
//! SQLite, where every commit writes each page it dirtied and random keys (event IDs are
//! hashes) dirty one page each, the intake writes no index: while its batch is stored an ID is
//! found through `event_ids`, which this process indexes in memory (`store/seen.rs`), and when
//! the handled batch is deleted the IDs of many batches go to `mx_event_seen` in one insert.
//!
//! So storing a transaction of K events writes one row per batch (and, on PostgreSQL, K dedup
//! rows), and handling them writes one progress row per room and deletes the batch, instead of
//! inserting and updating a row (and its indexes) per event.

mod intake;
mod maintenance;
mod progress;
mod sql;

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::{Result, StoreError};
pub use maintenance::PRUNE_CHUNK;
pub(super) use sql::{INSERT_CHUNK, RowsSql, rows_sql};

/// A transaction to store, with its events.
#[derive(Debug, Clone, Copy)]
pub struct IncomingTxn<'a> {
    /// The homeserver's txn ID.
    pub txn_id: &'a str,
    /// The dedup hash of what it carried.
    pub body_hash: &'a str,
    /// Its events, in order.
    pub events: &'a [NewEvent<'a>],
}

/// An event to store, taken from a transaction.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    /// The event ID (the dedup key).
    pub event_id: Cow<'a, str>,
    /// The room it belongs to (the ordering key).
    pub room_id: Cow<'a, str>,
    /// The event exactly as the homeserver sent it.
    pub json: &'a str,
}

/// What storing a transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptOutcome {
    /// The same transaction was stored before; nothing was written.
    Duplicate,
    /// The transaction was recorded; `new_events` events were not seen before and wait in the
    /// inbox.
    Stored {
        /// Events added to the inbox (events already known by ID are not counted).
        new_events: usize,
    },
}

/// Where a pending event sits in the inbox. Events are handed out in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InboxPos {
    /// Event number `idx` of batch `seq`.
    Batch {
        /// The batch (`mx_inbox_batch.seq`).
        seq: i64,
        /// The event's index in the batch.
        idx: i32,
    },
    /// A parked event put back in line by [`Store::retry_parked`] (`mx_parked.seq`).
    ///
    /// [`Store::retry_parked`]: crate::Store::retry_parked
    Requeued {
        /// The parked row.
        seq: i64,
    },
}

/// An event waiting to be handled.
#[derive(Debug, Clone)]
pub struct PendingEvent {
    /// Where it sits in the inbox.
    pub pos: InboxPos,
    /// The event ID.
    pub event_id: String,
    /// The room.
    pub room_id: String,
    /// The event JSON as received.
    pub json: String,
    /// How many times a handler already failed on it.
    pub attempts: i32,
}

/// A stored batch with the events in it that are not handled yet (empty when a previous run
/// handled all of them but stopped before deleting the batch).
#[derive(Debug, Clone)]
pub struct PendingBatch {
    /// Its position in the inbox.
    pub seq: i64,
    /// The events still to handle, in order.
    pub events: Vec<PendingEvent>,
}

/// One stored batch of a transaction, for the in-memory hand-off to the dispatcher.
#[derive(Debug, Clone)]
pub(crate) struct StoredBatch {
    pub(crate) seq: i64,
    /// Indexes into the transaction's events.
    pub(crate) events: Vec<usize>,
}

/// What storing a transaction did, with the batches written.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    pub(crate) outcome: AcceptOutcome,
    pub(crate) batches: Vec<StoredBatch>,
}

/// An event whose handler failed for good.
///
/// Its IDs are text as stored, not ruma IDs: an event that did not parse is parked too, under a
/// made-up ID (`malformed:…`) and with no room, and an operator still lists and retries it.
#[derive(Debug, Clone)]
pub struct ParkedEvent {
    /// Position among parked events.
    pub seq: i64,
    /// The event ID.
    pub event_id: String,
    /// The room.
    pub room_id: String,
    /// How many times it was tried.
    pub attempts: i32,
    /// The last error.
    pub last_error: Option<String>,
}

/// Where one event stands in the inbox ([`Store::inbox_status`]).
///
/// [`Store::inbox_status`]: crate::Store::inbox_status
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxStatus {
    /// Waiting to be handled (a parked event put back in line too).
    Pending {
        /// Failed attempts so far.
        attempts: i32,
    },
    /// Handled.
    Handled,
    /// Parked after failing for good.
    Parked {
        /// Failed attempts.
        attempts: i32,
    },
}

/// Counts of the inbox, for health reports and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboxStats {
    /// Events waiting to be handled (events of a batch count until the whole batch is done).
    pub pending: i64,
    /// Events parked after failing for good.
    pub parked: i64,
    /// When the oldest pending batch arrived (ms since the epoch).
    pub oldest_pending_ms: Option<i64>,
}

/// The envelope fields the store reads back from a stored event.
#[derive(serde::Deserialize)]
struct StoredEnvelope<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    room_id: Cow<'a, str>,
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// Parses a stored batch into its events. Events were validated before they were stored; one
/// that does not parse back still comes out (with a made-up ID and no room), so the dispatcher
/// parks it instead of stalling on the batch.
fn parse_batch(seq: i64, json: &str) -> Result<Vec<PendingEvent>> {
    let list: Vec<&RawValue> = serde_json::from_str(json).map_err(corrupt)?;
    list.iter()
        .enumerate()
        .map(|(idx, raw)| {
            let (event_id, room_id) = serde_json::from_str::<StoredEnvelope<'_>>(raw.get())
                .map_or_else(
                    |_| (format!("malformed:{seq}:{idx}"), String::new()),
                    |e| (e.event_id.into_owned(), e.room_id.into_owned()),
                );
            Ok(PendingEvent {
                pos: InboxPos::Batch { seq, idx: i32::try_from(idx).map_err(corrupt)? },
                event_id,
                room_id,
                json: raw.get().to_owned(),
                attempts: 0,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_batches_parse_back_into_events() {
        let events = parse_batch(
            7,
            r#"[{"event_id":"$a","room_id":"!r:x","x":1},{"event_id":"$b","room_id":"!s:x"}]"#,
        )
        .unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].pos, InboxPos::Batch { seq: 7, idx: 1 });
        assert_eq!(events[0].json, r#"{"event_id":"$a","room_id":"!r:x","x":1}"#);
        // One that does not parse back comes out with a made-up ID, to be parked.
        let odd = parse_batch(1, r#"[{"room_id":1}]"#).unwrap();
        assert_eq!(odd[0].event_id, "malformed:1:0");
        assert_eq!(odd[0].json, r#"{"room_id":1}"#);
        assert!(parse_batch(1, "not json").is_err());
    }
}
