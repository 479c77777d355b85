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
//! the handled batch is deleted the IDs of many batches go to `mx_event_seen` in one
//! insert (with real event IDs, this doubled load A's events per second).
//!
//! So storing a transaction of K events writes one row per batch (and, on PostgreSQL, K dedup
//! rows), and handling them writes one progress row per room and deletes the batch, instead of
//! inserting and updating a row (and its indexes) per event.

use std::{borrow::Cow, collections::HashMap, collections::HashSet};

use serde_json::value::RawValue;
use sqlx::Row;

use super::{Backend, Result, Store, StoreError, now_ms, with_pool, with_reader};
use crate::util::{FastMap, FastSet};

/// At most this many rows per multi-row INSERT (a few bound parameters each, far below both
/// backends' limits).
pub(super) const INSERT_CHUNK: usize = 128;
/// About how many bytes of event JSON one inbox `INSERT` carries: a transaction's events go in
/// one statement up to this size, and each statement saved is a round trip saved. Until sqlx
/// 0.9.1 set `TCP_NODELAY`, TLS over TCP took statements of 8 KiB: a longer one went out in
/// several writes, and each after the first waited ~40 ms for a delayed ACK (Nagle). Whole
/// statements there took PostgreSQL with TLS, load A, from 29–33k to 42–52k events/s
/// (BENCHMARKS.md).
pub(crate) const STATEMENT_BYTES: usize = 1024 * 1024;

/// Splits `items` into runs of at most [`INSERT_CHUNK`] items and about `budget` bytes (an item
/// larger than the budget goes alone), keeping their order.
fn chunks_by_size<T>(
    items: &[T],
    budget: usize,
    size: impl Fn(&T) -> usize,
) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut n = 0;
        while n < rest.len() && n < INSERT_CHUNK && (n == 0 || bytes + size(&rest[n]) <= budget) {
            bytes += size(&rest[n]);
            n += 1;
        }
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

/// Placeholder-only SQL texts that depend on a row count, built once per count and kept for the
/// process, so they are `&'static str` like every other query: the text never holds input.
pub(super) fn rows_sql(kind: RowsSql, n: usize) -> &'static str {
    type Texts = HashMap<(RowsSql, usize), &'static str>;
    static TEXTS: std::sync::OnceLock<std::sync::Mutex<Texts>> = std::sync::OnceLock::new();
    let mut texts = TEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    texts.entry((kind, n)).or_insert_with(|| Box::leak(kind.build(n).into_boxed_str()))
}

/// How [`Store::accept_batched`] tells new events from seen ones.
#[derive(Debug)]
enum Dedup {
    /// PostgreSQL: insert every event ID into `mx_event_seen`, `RETURNING` the new ones.
    Insert,
    /// SQLite: read `mx_event_seen`, and the stored IDs of the batches that the in-memory index
    /// says may hold one of the events.
    Read { maybe_stored: Vec<i64> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum RowsSql {
    /// `$1` the time, then txn ID, events JSON, event IDs (JSON) and event count per batch;
    /// returns the seqs.
    Batches,
    /// PostgreSQL: `$1` the time, then the event ID per event; returns the IDs that were new.
    Seen,
    /// `$1` the time, then txn ID and hash per transaction; returns the rows that were new.
    Transactions,
    /// Room ID, batch seq and index per room (no shared parameter); progress never moves back.
    Progress,
    /// [`RowsSql::Progress`] with anonymous `?` parameters, for SQLite only: SQLite resolves a
    /// numbered parameter's name by a linear search, once per parameter bound, which in a
    /// multi-row statement is quadratic in its rows.
    SqliteProgress,
    /// Room ID, user ID, membership, display name and avatar URL per row, anonymous `?`
    /// parameters (see [`RowsSql::SqliteProgress`]). SQLite only: a later row of the same room
    /// and user updates an earlier one.
    Members,
}

/// PostgreSQL: a whole group assumed new, in one statement (so one round trip and one implicit
/// transaction). `$1` the time, `$2` the `[txn ID, hash]` pairs, `$3` every event ID (JSON
/// arrays), then one array per batch column: txn IDs, event JSON lists, event ID lists, event
/// counts. Returns the batch seqs. Nothing resolves a conflict: a transaction or event seen
/// before fails it whole. Its text is the same for every group size, so each connection
/// prepares it once (with a `VALUES` row per batch, each size was a statement of its own,
/// prepared again on every pooled connection and crowding sqlx's statement cache).
const PG_ONE_TRIP: &str = "WITH t AS (INSERT INTO mx_txn (txn_id, body_hash, received_at) \
     SELECT p ->> 0, p ->> 1, $1::bigint FROM json_array_elements($2::json) p), \
     s AS (INSERT INTO mx_event_seen (event_id, seen_at) \
     SELECT e, $1::bigint FROM json_array_elements_text($3::json) e) \
     INSERT INTO mx_inbox_batch (txn_id, events, event_ids, n_events, received_at) \
     SELECT b.txn_id, b.events, b.event_ids, b.n_events, $1::bigint \
     FROM unnest($4::text[], $5::text[], $6::text[], $7::int4[]) WITH ORDINALITY \
     AS b(txn_id, events, event_ids, n_events, ord) ORDER BY b.ord RETURNING seq";

/// SQLite: one transaction assumed new, stored by one script ([`SqliteWriter::fetch_script`]).
/// `$1` the time, `$2` the txn ID, `$3` its hash, `$4` the batch's events (a JSON array), `$5`
/// their IDs (a JSON array), `$6` their count. The batch is inserted only if the transaction
/// and every event are new, and the transaction only if the batch was (`changes()` counts the
/// rows of the statement before), so either both are stored or nothing is; the commit of
/// nothing costs no page write. Returns the batch's seq, or nothing.
///
/// [`SqliteWriter::fetch_script`]: super::writer::SqliteWriter::fetch_script
const SQLITE_ONE_TRIP: &str = "BEGIN; \
     INSERT INTO mx_inbox_batch (txn_id, events, event_ids, n_events, received_at) \
     SELECT $2, $4, $5, $6, $1 \
     WHERE NOT EXISTS (SELECT 1 FROM mx_txn WHERE txn_id = $2 AND body_hash = $3) \
     AND NOT EXISTS (SELECT 1 FROM json_each($5) AS j \
     CROSS JOIN mx_event_seen AS s ON s.event_id = j.value) \
     RETURNING seq; \
     INSERT INTO mx_txn (txn_id, body_hash, received_at) SELECT $2, $3, $1 WHERE changes() = 1; \
     COMMIT";

impl RowsSql {
    fn build(self, n: usize) -> String {
        use std::fmt::Write as _;
        let mut sql = String::with_capacity(120 + n * 32);
        let (head, per_row, tail) = match self {
            Self::Batches => (
                "INSERT INTO mx_inbox_batch (txn_id, events, event_ids, n_events, received_at) \
                 VALUES ",
                4,
                " RETURNING seq",
            ),
            Self::Seen => (
                "INSERT INTO mx_event_seen (event_id, seen_at) VALUES ",
                1,
                " ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
            ),
            Self::Transactions => (
                "INSERT INTO mx_txn (txn_id, body_hash, received_at) VALUES ",
                2,
                " ON CONFLICT DO NOTHING RETURNING txn_id, body_hash",
            ),
            Self::Members => (
                "INSERT INTO mx_membership (room_id, user_id, membership, displayname, avatar_url) \
                 VALUES ",
                5,
                // A row that changes nothing is not written again: an update writes its page
                // even when every value stays, and that page is then a WAL frame of the commit.
                " ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership, \
                 displayname = excluded.displayname, avatar_url = excluded.avatar_url \
                 WHERE mx_membership.membership IS NOT excluded.membership \
                 OR mx_membership.displayname IS NOT excluded.displayname \
                 OR mx_membership.avatar_url IS NOT excluded.avatar_url",
            ),
            Self::Progress | Self::SqliteProgress => (
                "INSERT INTO mx_room_progress (room_id, batch_seq, idx) VALUES ",
                3,
                " ON CONFLICT (room_id) DO UPDATE SET batch_seq = excluded.batch_seq, \
                 idx = excluded.idx WHERE (excluded.batch_seq, excluded.idx) > \
                 (mx_room_progress.batch_seq, mx_room_progress.idx)",
            ),
        };
        let shared = !matches!(self, Self::Progress | Self::SqliteProgress | Self::Members);
        let anonymous = matches!(self, Self::SqliteProgress | Self::Members);
        sql.push_str(head);
        let first = match self {
            Self::Progress | Self::SqliteProgress | Self::Members => 1,
            _ => 2,
        };
        for i in 0..n {
            let p = first + i * per_row;
            sql.push_str(if i == 0 { "(" } else { ", (" });
            for k in 0..per_row {
                let sep = if k + 1 == per_row && !shared { "" } else { ", " };
                if anonymous {
                    let _ = write!(sql, "?{sep}");
                } else {
                    let _ = write!(sql, "${}{sep}", p + k);
                }
            }
            sql.push_str(if shared { "$1)" } else { ")" });
        }
        sql.push_str(tail);
        sql
    }
}

/// A transaction to store with [`Store::accept_transactions`].
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

/// The JSON array of some of a transaction's events, for one batch row.
fn batch_json(t: &IncomingTxn<'_>, run: &[usize]) -> String {
    let bytes: usize = run.iter().map(|&i| t.events[i].json.len() + 1).sum();
    let mut json = String::with_capacity(bytes + 2);
    json.push('[');
    for (k, &i) in run.iter().enumerate() {
        if k > 0 {
            json.push(',');
        }
        json.push_str(t.events[i].json);
    }
    json.push(']');
    json
}

/// The JSON array of the IDs of some of a transaction's events, for one batch row.
fn batch_ids(t: &IncomingTxn<'_>, run: &[usize]) -> Result<String> {
    json_strings(run.iter().map(|&i| t.events[i].event_id.as_ref()))
}

/// A JSON array of event IDs.
fn json_strings<'a>(ids: impl Iterator<Item = &'a str> + Clone) -> Result<String> {
    // An ID without a quote, a backslash or a control character (the intake refuses those)
    // needs no escaping in JSON and is written as it is; any other goes through serde_json.
    if ids.clone().all(|id| !id.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20)) {
        let mut json = String::with_capacity(ids.clone().map(|id| id.len() + 3).sum::<usize>() + 2);
        json.push('[');
        for (k, id) in ids.enumerate() {
            if k > 0 {
                json.push(',');
            }
            json.push('"');
            json.push_str(id);
            json.push('"');
        }
        json.push(']');
        return Ok(json);
    }
    serde_json::to_string(&ids.collect::<Vec<_>>()).map_err(corrupt)
}

/// Whether an event at `(seq, idx)` is past its room's recorded progress.
fn after_progress(progress: Option<&(i64, i32)>, seq: i64, idx: i32) -> bool {
    progress.is_none_or(|&(s, i)| (seq, idx) > (s, i))
}

/// The intake's turn at the in-memory index of stored event IDs (SQLite). A request's future
/// dropped while its commit is on its way (its client went away) leaves batches stored that the
/// index was not told about, and the index must never miss one: then it is built again from
/// the database before the next transaction is accepted.
struct IndexTurn<'a> {
    /// Whether the index was built; the lock is the intake's turn.
    built: tokio::sync::MutexGuard<'a, bool>,
    /// `false` while a store is under way.
    settled: bool,
}

impl Drop for IndexTurn<'_> {
    fn drop(&mut self) {
        if !self.settled {
            *self.built = false;
        }
    }
}

impl Store {
    /// Stores a transaction and its events in one database transaction.
    ///
    /// Returns [`AcceptOutcome::Duplicate`] when `(txn_id, body_hash)` was stored before. Events
    /// whose ID was stored before (pending, handled or parked, until pruned) are skipped, so a
    /// homeserver retry or a txn ID reused after a homeserver restart never doubles an event.
    ///
    /// # Errors
    /// When the database fails; then nothing was stored.
    pub async fn accept_transaction(
        &self,
        txn_id: &str,
        body_hash: &str,
        events: &[NewEvent<'_>],
    ) -> Result<AcceptOutcome> {
        let txns = [IncomingTxn { txn_id, body_hash, events }];
        let mut outcomes = self.accept_transactions(&txns).await?;
        Ok(outcomes.pop().unwrap_or(AcceptOutcome::Duplicate))
    }

    /// Stores several transactions in one database transaction (a group commit), with the
    /// same outcome per transaction as [`Store::accept_transaction`]. A transaction that
    /// appears twice in the list is stored once.
    ///
    /// # Errors
    /// When the database fails; then nothing was stored.
    pub async fn accept_transactions(
        &self,
        txns: &[IncomingTxn<'_>],
    ) -> Result<Vec<AcceptOutcome>> {
        Ok(self.accept_batched(txns).await?.into_iter().map(|a| a.outcome).collect())
    }

    /// [`Store::accept_transactions`], also telling which batches were written.
    pub(crate) async fn accept_batched(&self, txns: &[IncomingTxn<'_>]) -> Result<Vec<Accepted>> {
        // PostgreSQL: every event ID goes to `mx_event_seen` at intake, where its unique index
        // tells new from seen (there, an index insert costs no more than the lookup it
        // replaces). The common case, nothing seen before, is one statement, since each
        // statement is a round trip; a unique violation fails it whole and the group is stored
        // the careful way.
        // The statements' futures are boxed here, where they are made: sqlx's futures are large,
        // and unboxed they were copied at every `.await` up to the request's future (callgrind,
        // load B on PostgreSQL: `memcpy` went from 21 % to 9 % of the instructions, BENCHMARKS.md).
        if let Backend::Postgres(pool) = &self.backend {
            if let Some(accepted) = Box::pin(self.accept_pg_one_trip(pool, txns)).await? {
                return Ok(accepted);
            }
            return Box::pin(self.accept_once(txns, Dedup::Insert)).await;
        }
        // SQLite: every WAL commit writes each page it dirtied, and random keys (event IDs are
        // hashes) dirty a page each, so the intake only reads `mx_event_seen`, and finds the
        // IDs of stored batches through the index in memory (`store/seen.rs`).
        let mut built = IndexTurn { built: self.seen.accepting.lock().await, settled: true };
        if !*built.built {
            Box::pin(self.build_seen_window()).await?;
            *built.built = true;
        }
        // Which stored batches may hold one of these events (by fingerprint).
        let maybe_stored = {
            let window = self.seen.window.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut batches = Vec::new();
            if window.len() > 0 {
                for e in txns.iter().flat_map(|t| t.events) {
                    window.batches_of(window.fingerprint(&e.event_id), &mut batches);
                }
            }
            batches
        };
        built.settled = false;
        let accepted = match Box::pin(self.accept_sqlite_one_trip(txns, &maybe_stored)).await? {
            Some(accepted) => accepted,
            None => Box::pin(self.accept_once(txns, Dedup::Read { maybe_stored })).await?,
        };
        // The index is right once the stored batches are added below (no `.await` between).
        // After an error it is built again: an error stores nothing as a rule, and the
        // rebuild makes sure.
        built.settled = true;
        self.wal_grew();
        let mut window = self.seen.window.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (t, a) in txns.iter().zip(&accepted) {
            for b in &a.batches {
                window.add(b.seq, b.events.iter().map(|&i| t.events[i].event_id.as_ref()));
            }
        }
        drop(built);
        Ok(accepted)
    }

    /// Indexes the event IDs of every stored batch (see `store/seen.rs`).
    async fn build_seen_window(&self) -> Result<()> {
        // Once per process, on the writers' connection (no reader pool opened for it).
        let rows: Vec<(i64, String)> = with_pool!(self, |pool| {
            sqlx::query_as("SELECT seq, event_ids FROM mx_inbox_batch").fetch_all(pool).await?
        });
        let mut window = self.seen.window.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (seq, ids) in &rows {
            let ids: Vec<Cow<'_, str>> = serde_json::from_str(ids).map_err(corrupt)?;
            window.add(*seq, ids.iter().map(AsRef::as_ref));
        }
        Ok(())
    }

    /// PostgreSQL's common case ([`PG_ONE_TRIP`]): the whole group assumed new, in one
    /// statement instead of five round trips (`BEGIN`, transactions, event IDs, batches,
    /// `COMMIT`). `None`, having stored nothing, when a transaction or event was seen before (a
    /// unique violation) or when the group's events do not fit one statement
    /// ([`STATEMENT_BYTES`]); the caller then stores it the careful way.
    async fn accept_pg_one_trip(
        &self,
        pool: &sqlx::PgPool,
        txns: &[IncomingTxn<'_>],
    ) -> Result<Option<Vec<Accepted>>> {
        let mut planned: Vec<(usize, Vec<usize>, String, String)> = Vec::new();
        let mut bytes = 0;
        for (ti, t) in txns.iter().enumerate() {
            let all: Vec<usize> = (0..t.events.len()).collect();
            for run in chunks_by_size(&all, STATEMENT_BYTES, |&i| t.events[i].json.len()) {
                let json = batch_json(t, run);
                bytes += json.len();
                planned.push((ti, run.to_vec(), json, batch_ids(t, run)?));
            }
        }
        if planned.is_empty() || bytes > STATEMENT_BYTES {
            return Ok(None);
        }
        let pairs: Vec<(&str, &str)> = txns.iter().map(|t| (t.txn_id, t.body_hash)).collect();
        let ids: Vec<&str> =
            txns.iter().flat_map(|t| t.events.iter().map(|e| e.event_id.as_ref())).collect();
        let counts: Vec<i32> = planned
            .iter()
            .map(|(_, events, _, _)| i32::try_from(events.len()).map_err(corrupt))
            .collect::<Result<_>>()?;
        let query = sqlx::query(PG_ONE_TRIP)
            .bind(now_ms())
            .bind(serde_json::to_string(&pairs).map_err(corrupt)?)
            .bind(serde_json::to_string(&ids).map_err(corrupt)?)
            .bind(planned.iter().map(|(ti, ..)| txns[*ti].txn_id).collect::<Vec<&str>>())
            .bind(planned.iter().map(|(_, _, json, _)| json.as_str()).collect::<Vec<&str>>())
            .bind(planned.iter().map(|(.., ids)| ids.as_str()).collect::<Vec<&str>>())
            .bind(counts);
        let rows = match query.fetch_all(pool).await {
            Ok(rows) => rows,
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if rows.len() != planned.len() {
            return Err(corrupt("a batch insert returned the wrong number of rows"));
        }
        let mut seqs: Vec<i64> =
            rows.iter().map(|r| r.try_get(0)).collect::<std::result::Result<_, _>>()?;
        // Rows are inserted in array order (`ORDER BY b.ord`), so their seqs ascend in that order.
        seqs.sort_unstable();
        let mut accepted: Vec<Accepted> = txns
            .iter()
            .map(|t| Accepted {
                outcome: AcceptOutcome::Stored { new_events: t.events.len() },
                batches: vec![],
            })
            .collect();
        for ((ti, events, _, _), seq) in planned.into_iter().zip(seqs) {
            accepted[ti].batches.push(StoredBatch { seq, events });
        }
        Ok(Some(accepted))
    }

    /// SQLite's common case ([`SQLITE_ONE_TRIP`]): one transaction whose events are all new and
    /// fit one batch, stored by one script, so one hop to the connection's thread instead of
    /// five (`BEGIN`, the transaction, the seen IDs, the batch, `COMMIT`; each hop wakes a
    /// thread and waits for it). `None`, having stored nothing, for anything else: a group, an
    /// event twice in the transaction, an event the in-memory index says may be stored
    /// (`maybe_stored`), or, found by the script, a transaction or event seen before. The
    /// caller then stores it the careful way.
    async fn accept_sqlite_one_trip(
        &self,
        txns: &[IncomingTxn<'_>],
        maybe_stored: &[i64],
    ) -> Result<Option<Vec<Accepted>>> {
        let Backend::Sqlite(writer) = &self.backend else { return Ok(None) };
        let [t] = txns else { return Ok(None) };
        if t.events.is_empty() || !maybe_stored.is_empty() {
            return Ok(None);
        }
        let bytes: usize = t.events.iter().map(|e| e.json.len()).sum();
        if bytes > STATEMENT_BYTES {
            return Ok(None);
        }
        let mut ids: FastSet<&str> =
            FastSet::with_capacity_and_hasher(t.events.len(), Default::default());
        if !t.events.iter().all(|e| ids.insert(e.event_id.as_ref())) {
            return Ok(None);
        }
        let all: Vec<usize> = (0..t.events.len()).collect();
        let json = batch_json(t, &all);
        let event_ids = batch_ids(t, &all)?;
        let n = i32::try_from(all.len()).map_err(corrupt)?;
        let rows = writer
            .fetch_script(
                sqlx::query(SQLITE_ONE_TRIP)
                    .bind(now_ms())
                    .bind(t.txn_id)
                    .bind(t.body_hash)
                    .bind(json)
                    .bind(event_ids)
                    .bind(n),
            )
            .await?;
        let Some(row) = rows.first() else { return Ok(None) };
        let seq: i64 = row.try_get(0)?;
        Ok(Some(vec![Accepted {
            outcome: AcceptOutcome::Stored { new_events: all.len() },
            batches: vec![StoredBatch { seq, events: all }],
        }]))
    }

    /// Stores a group in one database transaction, finding out which transactions and events
    /// are new (see [`Dedup`]).
    async fn accept_once(&self, txns: &[IncomingTxn<'_>], dedup: Dedup) -> Result<Vec<Accepted>> {
        const TXN_CHUNK: usize = 64;
        let now = now_ms();
        let (accepted, gone) = with_pool!(self, |pool| {
            let mut conn = pool.acquire().await?;
            let mut tx = super::writer::BeginTx::begin_tx(&mut conn).await?;
            // Which (txn ID, hash) pairs are new: one multi-row INSERT … RETURNING per chunk.
            let mut new: FastSet<(String, String)> = FastSet::default();
            for chunk in txns.chunks(TXN_CHUNK) {
                let mut query = sqlx::query(rows_sql(RowsSql::Transactions, chunk.len())).bind(now);
                for t in chunk {
                    query = query.bind(t.txn_id).bind(t.body_hash);
                }
                for row in query.fetch_all(&mut *tx).await? {
                    new.insert((row.try_get("txn_id")?, row.try_get("body_hash")?));
                }
            }
            // `remove`: a second copy of the same transaction in this group is a duplicate.
            let is_new: Vec<bool> = txns
                .iter()
                .map(|t| new.remove(&(t.txn_id.to_owned(), t.body_hash.to_owned())))
                .collect();
            let candidates: Vec<&str> = txns
                .iter()
                .zip(&is_new)
                .filter(|(_, new)| **new)
                .flat_map(|(t, _)| t.events.iter().map(|e| e.event_id.as_ref()))
                .collect();
            // The event IDs the database knows about: the new ones (`Insert`) or the ones seen
            // before (`Read`).
            let mut gone: Vec<i64> = Vec::new();
            let (known, known_are_new): (FastSet<String>, bool) = match &dedup {
                Dedup::Insert => {
                    let mut new_ids: FastSet<String> =
                        FastSet::with_capacity_and_hasher(candidates.len(), Default::default());
                    for chunk in candidates.chunks(INSERT_CHUNK) {
                        let mut query = sqlx::query(rows_sql(RowsSql::Seen, chunk.len())).bind(now);
                        for id in chunk {
                            query = query.bind(*id);
                        }
                        for row in query.fetch_all(&mut *tx).await? {
                            new_ids.insert(row.try_get(0)?);
                        }
                    }
                    (new_ids, true)
                }
                Dedup::Read { maybe_stored } => {
                    // Seen before: in the stored batches the index pointed at, or in
                    // `mx_event_seen` (a read: no index is written here).
                    let mut seen: FastSet<String> = FastSet::default();
                    if !candidates.is_empty() && !maybe_stored.is_empty() {
                        let list = serde_json::to_string(maybe_stored).map_err(corrupt)?;
                        let rows: Vec<(i64, String)> = sqlx::query_as(
                            "SELECT seq, event_ids FROM mx_inbox_batch \
                             WHERE seq IN (SELECT value FROM json_each($1))",
                        )
                        .bind(list)
                        .fetch_all(&mut *tx)
                        .await?;
                        let found: FastSet<i64> = rows.iter().map(|r| r.0).collect();
                        gone =
                            maybe_stored.iter().copied().filter(|s| !found.contains(s)).collect();
                        for (_, ids) in rows {
                            seen.extend(
                                serde_json::from_str::<Vec<String>>(&ids).map_err(corrupt)?,
                            );
                        }
                    }
                    if !candidates.is_empty() {
                        // A join that walks the list and probes the primary key. `IN (SELECT …)`
                        // first copied the list into a temporary index, an insert per event
                        // (callgrind, paced load A: 1.7k instructions per event of 51k).
                        let list = json_strings(candidates.iter().copied())?;
                        let rows: Vec<(String,)> = sqlx::query_as(
                            "SELECT s.event_id FROM json_each($1) AS j \
                             CROSS JOIN mx_event_seen AS s ON s.event_id = j.value",
                        )
                        .bind(list)
                        .fetch_all(&mut *tx)
                        .await?;
                        seen.extend(rows.into_iter().map(|r| r.0));
                    }
                    (seen, false)
                }
            };
            // The new events of each new transaction, cut into batches.
            struct Planned {
                txn: usize,
                events: Vec<usize>,
                json: String,
                ids: String,
            }
            let mut planned: Vec<Planned> = Vec::new();
            let mut accepted = Vec::with_capacity(txns.len());
            // An event twice in the group is stored once, the first time.
            let mut taken: FastSet<&str> =
                FastSet::with_capacity_and_hasher(candidates.len(), Default::default());
            for (ti, t) in txns.iter().enumerate() {
                if !is_new[ti] {
                    accepted.push(Accepted { outcome: AcceptOutcome::Duplicate, batches: vec![] });
                    continue;
                }
                let new_events: Vec<usize> = (0..t.events.len())
                    .filter(|&i| {
                        let id = t.events[i].event_id.as_ref();
                        known.contains(id) == known_are_new && taken.insert(id)
                    })
                    .collect();
                accepted.push(Accepted {
                    outcome: AcceptOutcome::Stored { new_events: new_events.len() },
                    batches: vec![],
                });
                for run in chunks_by_size(&new_events, STATEMENT_BYTES, |&i| t.events[i].json.len())
                {
                    let json = batch_json(t, run);
                    let ids = batch_ids(t, run)?;
                    planned.push(Planned { txn: ti, events: run.to_vec(), json, ids });
                }
            }
            let mut seqs: Vec<i64> = Vec::with_capacity(planned.len());
            for chunk in chunks_by_size(&planned, STATEMENT_BYTES, |b| b.json.len()) {
                let mut query = sqlx::query(rows_sql(RowsSql::Batches, chunk.len())).bind(now);
                for b in chunk {
                    let n = i32::try_from(b.events.len()).map_err(corrupt)?;
                    query = query
                        .bind(txns[b.txn].txn_id)
                        .bind(b.json.as_str())
                        .bind(b.ids.as_str())
                        .bind(n);
                }
                let mut got: Vec<i64> = query
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<std::result::Result<_, _>>()?;
                if got.len() != chunk.len() {
                    return Err(corrupt("a batch insert returned the wrong number of rows"));
                }
                // Rows are inserted in VALUES order, so their seqs ascend in that order.
                got.sort_unstable();
                seqs.extend(got);
            }
            tx.commit().await?;
            for (b, seq) in planned.into_iter().zip(seqs) {
                accepted[b.txn].batches.push(StoredBatch { seq, events: b.events });
            }
            (accepted, gone)
        });
        // Batches the index pointed at that are deleted already (a delete that raced with the
        // index's building): their IDs are in `mx_event_seen`.
        if !gone.is_empty() {
            let mut window =
                self.seen.window.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for seq in gone {
                window.forget(seq);
            }
        }
        Ok(accepted)
    }

    /// Returns up to `limit` stored batches with `seq > after`, oldest first, each with the
    /// events not handled yet (by the recorded progress of their rooms) and their failed
    /// attempts so far.
    ///
    /// # Errors
    /// When the database fails or a stored batch is not valid JSON.
    pub async fn pending_batches(&self, after: i64, limit: i64) -> Result<Vec<PendingBatch>> {
        let rows: Vec<(i64, String)> = with_reader!(self, |pool| {
            sqlx::query_as(
                "SELECT seq, events FROM mx_inbox_batch WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        let mut batches = Vec::with_capacity(rows.len());
        for (seq, json) in &rows {
            batches.push(PendingBatch { seq: *seq, events: parse_batch(*seq, json)? });
        }
        let rooms: HashSet<&str> =
            batches.iter().flat_map(|b| b.events.iter().map(|e| e.room_id.as_str())).collect();
        if rooms.is_empty() {
            return Ok(batches);
        }
        let progress = self.room_progress(rooms.into_iter()).await?;
        for b in &mut batches {
            b.events.retain(|e| match e.pos {
                InboxPos::Batch { seq, idx } => after_progress(progress.get(&e.room_id), seq, idx),
                InboxPos::Requeued { .. } => true,
            });
        }
        let ids: Vec<&str> =
            batches.iter().flat_map(|b| b.events.iter().map(|e| e.event_id.as_str())).collect();
        let attempts = self.attempts_of(&ids).await?;
        if !attempts.is_empty() {
            for e in batches.iter_mut().flat_map(|b| b.events.iter_mut()) {
                e.attempts = attempts.get(&e.event_id).copied().unwrap_or(0);
            }
        }
        Ok(batches)
    }

    /// The recorded progress (batch, index of the last handled event) of the given rooms.
    async fn room_progress<'a>(
        &self,
        rooms: impl Iterator<Item = &'a str>,
    ) -> Result<HashMap<String, (i64, i32)>> {
        let list = serde_json::to_string(&rooms.collect::<Vec<_>>()).map_err(corrupt)?;
        let sql = match self.backend_name() {
            "postgres" => {
                "SELECT room_id, batch_seq, idx FROM mx_room_progress \
                 WHERE room_id = ANY(ARRAY(SELECT value FROM json_array_elements_text($1::json)))"
            }
            _ => {
                "SELECT room_id, batch_seq, idx FROM mx_room_progress \
                 WHERE room_id IN (SELECT value FROM json_each($1))"
            }
        };
        let rows: Vec<(String, i64, i32)> =
            with_reader!(self, |pool| sqlx::query_as(sql).bind(&list).fetch_all(pool).await?);
        Ok(rows.into_iter().map(|(room, seq, idx)| (room, (seq, idx))).collect())
    }

    /// Failed attempts recorded for the given events (only those with any).
    async fn attempts_of(&self, event_ids: &[&str]) -> Result<HashMap<String, i32>> {
        if event_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let list = serde_json::to_string(event_ids).map_err(corrupt)?;
        let sql = match self.backend_name() {
            "postgres" => {
                "SELECT event_id, attempts FROM mx_event_attempts \
                 WHERE event_id = ANY(ARRAY(SELECT value FROM json_array_elements_text($1::json)))"
            }
            _ => {
                "SELECT event_id, attempts FROM mx_event_attempts \
                 WHERE event_id IN (SELECT value FROM json_each($1))"
            }
        };
        let rows: Vec<(String, i32)> =
            with_reader!(self, |pool| sqlx::query_as(sql).bind(&list).fetch_all(pool).await?);
        Ok(rows.into_iter().collect())
    }

    /// Parked events put back in line by [`Store::retry_parked`], with `seq > after`, oldest
    /// first.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn requeued_events(&self, after: i64, limit: i64) -> Result<Vec<PendingEvent>> {
        let rows: Vec<(i64, String, String, String)> = with_reader!(self, |pool| {
            sqlx::query_as(
                "SELECT seq, event_id, room_id, event_json FROM mx_parked \
                 WHERE requeued = TRUE AND seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        let ids: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
        let attempts = self.attempts_of(&ids).await?;
        Ok(rows
            .into_iter()
            .map(|(seq, event_id, room_id, json)| PendingEvent {
                pos: InboxPos::Requeued { seq },
                attempts: attempts.get(&event_id).copied().unwrap_or(0),
                event_id,
                room_id,
                json,
            })
            .collect())
    }

    /// Records handled events: the progress of each room (the position of its last handled
    /// event; progress never moves back), the batches whose events are all handled (deleted),
    /// and requeued parked events that are now handled (deleted). One statement on PostgreSQL;
    /// on SQLite a few, progress first (any prefix of them leaves a consistent inbox), where a
    /// deleted batch's event IDs first move to `mx_event_seen`.
    ///
    /// # Errors
    /// When the database fails; then what was recorded before the failure stays.
    pub async fn record_handled(
        &self,
        progress: &[(&str, i64, i32)],
        finished_batches: &[i64],
        finished_requeued: &[i64],
    ) -> Result<()> {
        if progress.is_empty() && finished_batches.is_empty() && finished_requeued.is_empty() {
            return Ok(());
        }
        // The lists of seqs travel as JSON array parameters, so the SQL text stays fixed; the
        // progress rows are multi-row VALUES (cheaper than JSON extraction per row).
        let batches = serde_json::to_string(finished_batches).map_err(corrupt)?;
        let requeued = serde_json::to_string(finished_requeued).map_err(corrupt)?;
        // One row per room (a room twice in one upsert is an error on PostgreSQL): the furthest.
        let mut furthest: FastMap<&str, (i64, i32)> =
            FastMap::with_capacity_and_hasher(progress.len(), Default::default());
        for &(room, seq, idx) in progress {
            let at = furthest.entry(room).or_insert((seq, idx));
            *at = (*at).max((seq, idx));
        }
        let progress: Vec<(&str, i64, i32)> =
            furthest.into_iter().map(|(room, (seq, idx))| (room, seq, idx)).collect();
        if let Backend::Postgres(pg) = &self.backend {
            // One statement, so one round trip (each is a network round trip here): the
            // data-modifying CTEs all run, atomically. It commits without waiting for the WAL
            // flush (`with_relaxed!`): the commit is visible at once and survives a crash of the
            // bridge; a crash of the database server within a fraction of a second may lose it,
            // and then handled events are handed out again, which at-least-once allows.
            let pool = self.relaxed_or(pg);
            let progress = serde_json::to_string(&progress).map_err(corrupt)?;
            sqlx::query(
                "WITH p AS (INSERT INTO mx_room_progress (room_id, batch_seq, idx) \
                 SELECT r->>0, (r->>1)::bigint, (r->>2)::integer FROM json_array_elements($1::json) r \
                 ON CONFLICT (room_id) DO UPDATE SET batch_seq = excluded.batch_seq, idx = excluded.idx \
                 WHERE (excluded.batch_seq, excluded.idx) > (mx_room_progress.batch_seq, mx_room_progress.idx) \
                 RETURNING 1), \
                 b AS (DELETE FROM mx_inbox_batch \
                 WHERE seq = ANY(ARRAY(SELECT value::bigint FROM json_array_elements_text($2::json))) \
                 RETURNING 1), \
                 q AS (DELETE FROM mx_parked \
                 WHERE seq = ANY(ARRAY(SELECT value::bigint FROM json_array_elements_text($3::json))) RETURNING 1) \
                 SELECT (SELECT count(*) FROM p) + (SELECT count(*) FROM b) + (SELECT count(*) FROM q)",
            )
            .bind(&progress)
            .bind(&batches)
            .bind(&requeued)
            .execute(pool)
            .await?;
            return Ok(());
        }
        // SQLite: separate statements without a transaction, progress first. Nothing needs them
        // together: a batch deleted while its rooms' progress is not written yet is gone, and its
        // events are not read again; progress written for a batch not yet deleted only hides
        // those events when the batch is read after a restart. Each statement is a hop to the
        // connection's thread, so fewer is faster.
        with_pool!(self, |pool| {
            for chunk in progress.chunks(INSERT_CHUNK) {
                let mut query = sqlx::query(rows_sql(RowsSql::SqliteProgress, chunk.len()));
                for (room, seq, idx) in chunk {
                    query = query.bind(*room).bind(*seq).bind(*idx);
                }
                query.execute(pool).await?;
            }
            if !finished_batches.is_empty() {
                // The batches' event IDs go to the dedup index first (many batches at once: the
                // dispatcher defers these deletes), then the batches. Between the two, an ID is
                // in both places, which changes nothing. Not sorted first: the commit writes
                // each page it dirtied once whatever the order, and sorting cost more than the
                // inserts in order saved (BENCHMARKS.md, 2.5k against 4k instructions per ID).
                sqlx::query(
                    "INSERT INTO mx_event_seen (event_id, seen_at) \
                     SELECT i.value, ? FROM mx_inbox_batch b, json_each(b.event_ids) i \
                     WHERE b.seq IN (SELECT value FROM json_each(?)) \
                     ON CONFLICT (event_id) DO NOTHING",
                )
                .bind(now_ms())
                .bind(&batches)
                .execute(pool)
                .await?;
                sqlx::query(
                    "DELETE FROM mx_inbox_batch WHERE seq IN (SELECT value FROM json_each(?))",
                )
                .bind(&batches)
                .execute(pool)
                .await?;
            }
            if !finished_requeued.is_empty() {
                sqlx::query("DELETE FROM mx_parked WHERE seq IN (SELECT value FROM json_each(?))")
                    .bind(&requeued)
                    .execute(pool)
                    .await?;
            }
        });
        self.forget_batches(finished_batches);
        self.wal_grew();
        Ok(())
    }

    /// Takes deleted batches out of the in-memory index of stored event IDs.
    fn forget_batches(&self, seqs: &[i64]) {
        if seqs.is_empty() {
            return;
        }
        let mut window = self.seen.window.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for &seq in seqs {
            window.forget(seq);
        }
    }

    /// Records a failed attempt and returns the number of attempts so far.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn record_failure(&self, event_id: &str, error: &str) -> Result<i32> {
        with_pool!(self, |pool| {
            let attempts: i32 = sqlx::query_scalar(
                "INSERT INTO mx_event_attempts (event_id, attempts, last_error) VALUES ($1, 1, $2) \
                 ON CONFLICT (event_id) DO UPDATE SET attempts = mx_event_attempts.attempts + 1, \
                 last_error = excluded.last_error RETURNING attempts",
            )
            .bind(event_id)
            .bind(error)
            .fetch_one(pool)
            .await?;
            Ok(attempts)
        })
    }

    /// Forgets the failed attempts of an event (it succeeded after all).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn clear_failures(&self, event_id: &str) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query("DELETE FROM mx_event_attempts WHERE event_id = $1")
                .bind(event_id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Parks an event: it keeps its JSON and error for inspection and is not handed out again
    /// until [`Store::retry_parked`]. For an event of a batch, its room's progress moves past
    /// it in the same database transaction.
    ///
    /// # Errors
    /// When the database fails; then nothing changed.
    pub async fn park(&self, event: &PendingEvent, attempts: i32, error: &str) -> Result<()> {
        with_pool!(self, |pool| {
            let mut conn = pool.acquire().await?;
            let mut tx = super::writer::BeginTx::begin_tx(&mut conn).await?;
            // A requeued event parked again gets a new row, so a new `seq`: a running
            // dispatcher reads requeued events after the last `seq` it routed, and would not
            // see the event when it is put back in line once more.
            sqlx::query("DELETE FROM mx_parked WHERE event_id = $1")
                .bind(&event.event_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO mx_parked \
                 (event_id, room_id, event_json, attempts, last_error, parked_at, requeued) \
                 VALUES ($1, $2, $3, $4, $5, $6, FALSE)",
            )
            .bind(&event.event_id)
            .bind(&event.room_id)
            .bind(&event.json)
            .bind(attempts)
            .bind(error)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM mx_event_attempts WHERE event_id = $1")
                .bind(&event.event_id)
                .execute(&mut *tx)
                .await?;
            if let InboxPos::Batch { seq, idx } = event.pos {
                // The same upsert as `record_handled`, for one room.
                sqlx::query(rows_sql(RowsSql::Progress, 1))
                    .bind(&event.room_id)
                    .bind(seq)
                    .bind(idx)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Puts parked events back in line (all of them, or the one with `event_id`) and returns
    /// how many. A running dispatcher of this store picks them up at once.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn retry_parked(&self, event_id: Option<&str>) -> Result<u64> {
        let n = with_pool!(self, |pool| {
            match event_id {
                Some(id) => {
                    sqlx::query(
                        "UPDATE mx_parked SET requeued = TRUE \
                         WHERE requeued = FALSE AND event_id = $1",
                    )
                    .bind(id)
                    .execute(pool)
                    .await?
                }
                None => {
                    sqlx::query("UPDATE mx_parked SET requeued = TRUE WHERE requeued = FALSE")
                        .execute(pool)
                        .await?
                }
            }
            .rows_affected()
        });
        if n > 0 {
            self.inbox_wake.notify_one();
        }
        Ok(n)
    }

    /// Lists parked events, oldest first.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn parked_events(&self, limit: i64) -> Result<Vec<ParkedEvent>> {
        with_reader!(self, |pool| {
            let rows = sqlx::query(
                "SELECT seq, event_id, room_id, attempts, last_error FROM mx_parked \
                 WHERE requeued = FALSE ORDER BY seq LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(ParkedEvent {
                        seq: r.try_get("seq")?,
                        event_id: r.try_get("event_id")?,
                        room_id: r.try_get("room_id")?,
                        attempts: r.try_get("attempts")?,
                        last_error: r.try_get("last_error")?,
                    })
                })
                .collect()
        })
    }

    /// The inbox status of an event (`0` pending, `1` handled, `2` parked) and its failed
    /// attempts, if the event ID is still remembered. A diagnostic: it may scan the pending
    /// batches.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn inbox_status(&self, event_id: &str) -> Result<Option<(i32, i32)>> {
        let attempts = self.attempts_of(&[event_id]).await?.get(event_id).copied().unwrap_or(0);
        let parked: Option<(i32, bool)> = with_reader!(self, |pool| {
            sqlx::query_as("SELECT attempts, requeued FROM mx_parked WHERE event_id = $1")
                .bind(event_id)
                .fetch_optional(pool)
                .await?
        });
        match parked {
            Some((_, true)) => return Ok(Some((0, attempts))),
            Some((parked_attempts, false)) => return Ok(Some((2, parked_attempts))),
            None => {}
        }
        // A stored batch holds it: pending, or handled and the batch not deleted yet.
        let sql = match self.backend_name() {
            "postgres" => "SELECT seq, events FROM mx_inbox_batch WHERE strpos(event_ids, $1) > 0",
            _ => "SELECT seq, events FROM mx_inbox_batch WHERE instr(event_ids, $1) > 0",
        };
        let rows: Vec<(i64, String)> =
            with_reader!(self, |pool| sqlx::query_as(sql).bind(event_id).fetch_all(pool).await?);
        for (seq, json) in &rows {
            let Some(event) = parse_batch(*seq, json)?.into_iter().find(|e| e.event_id == event_id)
            else {
                continue;
            };
            let InboxPos::Batch { seq, idx } = event.pos else { continue };
            let progress = self.room_progress(std::iter::once(event.room_id.as_str())).await?;
            let pending = after_progress(progress.get(&event.room_id), seq, idx);
            return Ok(Some(if pending { (0, attempts) } else { (1, 0) }));
        }
        // Its batch was deleted once handled: the ID is remembered until pruned.
        let seen: Option<i64> = with_reader!(self, |pool| {
            sqlx::query_scalar("SELECT seen_at FROM mx_event_seen WHERE event_id = $1")
                .bind(event_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(seen.map(|_| (1, 0)))
    }

    /// Counts pending and parked events.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn inbox_stats(&self) -> Result<InboxStats> {
        with_reader!(self, |pool| {
            let (in_batches, oldest): (i64, Option<i64>) = sqlx::query_as(
                "SELECT COALESCE(SUM(n_events), 0), MIN(received_at) FROM mx_inbox_batch",
            )
            .fetch_one(pool)
            .await?;
            let (parked, requeued): (i64, i64) = sqlx::query_as(
                "SELECT COALESCE(SUM(CASE WHEN requeued THEN 0 ELSE 1 END), 0), \
                 COALESCE(SUM(CASE WHEN requeued THEN 1 ELSE 0 END), 0) FROM mx_parked",
            )
            .fetch_one(pool)
            .await?;
            Ok(InboxStats { pending: in_batches + requeued, parked, oldest_pending_ms: oldest })
        })
    }

    /// Forgets event IDs and transactions seen more than `max_age_ms` ago; returns how many
    /// rows went. The IDs of stored batches (pending events) are never forgotten, nor are
    /// parked events. On SQLite an event ID is in `mx_event_seen` from when its handled batch
    /// was deleted; on PostgreSQL from its arrival, and only IDs older than every stored batch
    /// go.
    ///
    /// Event IDs are keyed by ID (random), not by age, so they go in chunks of 5,000, each its
    /// own short write: the intake never waits for one long scan.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn prune_dedup(&self, max_age_ms: i64) -> Result<u64> {
        let cutoff = now_ms() - max_age_ms;
        // On PostgreSQL the IDs of stored batches are in `mx_event_seen` too (stored with their
        // batch's arrival time): none newer than the oldest stored batch goes.
        let id_cutoff = match &self.backend {
            Backend::Postgres(pool) => {
                let oldest: Option<i64> =
                    sqlx::query_scalar("SELECT MIN(received_at) FROM mx_inbox_batch")
                        .fetch_one(pool)
                        .await?;
                oldest.map_or(cutoff, |oldest| oldest.min(cutoff))
            }
            Backend::Sqlite(_) => cutoff,
        };
        let chunk = i64::try_from(PRUNE_CHUNK).unwrap_or(i64::MAX);
        let mut gone = 0;
        loop {
            let n = with_pool!(self, |pool| {
                sqlx::query(
                    "DELETE FROM mx_event_seen WHERE event_id IN \
                     (SELECT event_id FROM mx_event_seen WHERE seen_at < $1 LIMIT $2)",
                )
                .bind(id_cutoff)
                .bind(chunk)
                .execute(pool)
                .await?
                .rows_affected()
            });
            gone += n;
            if n < PRUNE_CHUNK as u64 {
                break;
            }
            tokio::task::yield_now().await;
        }
        with_pool!(self, |pool| {
            gone += sqlx::query("DELETE FROM mx_txn WHERE received_at < $1")
                .bind(cutoff)
                .execute(pool)
                .await?
                .rows_affected();
        });
        Ok(gone)
    }
}

/// Event IDs forgotten per statement by [`Store::prune_dedup`].
pub const PRUNE_CHUNK: usize = 5000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_keep_order_and_bounds() {
        let sizes: Vec<usize> = (0..300).map(|i| if i % 7 == 0 { 9000 } else { 300 }).collect();
        let chunks: Vec<_> = chunks_by_size(&sizes, 8 * 1024, |s| *s).collect();
        let flat: Vec<usize> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(flat, sizes);
        for c in &chunks {
            assert!(!c.is_empty() && c.len() <= INSERT_CHUNK);
            let bytes: usize = c.iter().sum();
            // An item larger than the budget goes alone.
            assert!(bytes <= 8 * 1024 || c.len() == 1, "{bytes} bytes in {}", c.len());
        }
        assert_eq!(chunks_by_size(&[] as &[usize], 10, |s| *s).count(), 0);
    }

    #[test]
    fn row_sql_numbers_parameters_per_row() {
        assert!(
            RowsSql::Batches
                .build(2)
                .ends_with("VALUES ($2, $3, $4, $5, $1), ($6, $7, $8, $9, $1) RETURNING seq")
        );
        assert!(RowsSql::Seen.build(2).contains("VALUES ($2, $1), ($3, $1) ON CONFLICT"));
        assert!(
            RowsSql::Progress.build(2).contains("VALUES ($1, $2, $3), ($4, $5, $6) ON CONFLICT")
        );
        assert!(
            RowsSql::SqliteProgress.build(2).contains("VALUES (?, ?, ?), (?, ?, ?) ON CONFLICT")
        );
        assert!(RowsSql::Members.build(1).contains("VALUES (?, ?, ?, ?, ?) ON CONFLICT"));
    }

    #[test]
    fn progress_compares_batch_then_index() {
        assert!(after_progress(None, 1, 0));
        assert!(after_progress(Some(&(1, 3)), 1, 4));
        assert!(after_progress(Some(&(1, 3)), 2, 0));
        assert!(!after_progress(Some(&(1, 3)), 1, 3));
        assert!(!after_progress(Some(&(2, 0)), 1, 9));
    }

    #[test]
    fn batch_ids_are_a_json_array_of_the_ids() {
        for ids in [
            vec!["$a", "$b:x"],
            vec!["$with\"quote", "$back\\slash", "$ünïcode"],
            vec!["$\u{7f}del"],
            vec![],
        ] {
            let events: Vec<NewEvent<'_>> = ids
                .iter()
                .map(|id| NewEvent { event_id: (*id).into(), room_id: "!r".into(), json: "{}" })
                .collect();
            let t = IncomingTxn { txn_id: "t", body_hash: "h", events: &events };
            let run: Vec<usize> = (0..ids.len()).collect();
            let json = batch_ids(&t, &run).unwrap();
            assert_eq!(serde_json::from_str::<Vec<String>>(&json).unwrap(), ids, "{json}");
        }
    }

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

    fn event(id: &str) -> NewEvent<'static> {
        let json = format!(r#"{{"event_id":"{id}","room_id":"!r:x"}}"#);
        NewEvent {
            event_id: Cow::Owned(id.to_owned()),
            room_id: Cow::Borrowed("!r:x"),
            json: Box::leak(json.into_boxed_str()),
        }
    }

    /// Dropped at any point, an intake never lets its event in twice: once it is stored, the
    /// same event in another transaction is found, even when the drop came between the commit
    /// and the update of the in-memory index. Both ways of storing: one script, and the
    /// careful way (taken for an event twice in one transaction).
    #[tokio::test]
    async fn an_intake_dropped_half_way_never_lets_an_event_in_twice() {
        let dir = tempfile::tempdir().unwrap();
        for (shape, events) in [("script", vec![event("$e")]), ("careful", vec![event("$e"); 2])] {
            let dropped_after_commit = drops_after_commit(dir.path(), shape, &events).await;
            assert!(dropped_after_commit >= 3, "{shape}: {dropped_after_commit} drops");
        }
    }

    /// Sweeps the drop point of an intake of `events` (the event `$e`) until drops after its
    /// commit happened three times, checking each drop; returns how many happened.
    async fn drops_after_commit(
        dir: &std::path::Path,
        shape: &str,
        events: &[NewEvent<'_>],
    ) -> usize {
        let mut dropped_after_commit = 0;
        // Whether a drop lands after the commit depends on how fast the database thread
        // answers: sweep the drop point until it happened a few times.
        for sweep in 0..50 {
            for polls in 1.. {
                let url = format!("sqlite://{}/{shape}{sweep}-{polls}.db", dir.display());
                let store = Store::connect_url(&url).await.unwrap();
                // A first transaction builds the index.
                store.accept_transaction("0", "h", &[event("$first")]).await.unwrap();
                let mut fut = Box::pin(store.accept_transaction("1", "h", events));
                // The database thread runs the command just sent, during the wait.
                let wait = std::time::Duration::from_millis(1);
                let finished = crate::util::poll_times(&mut fut, polls, wait).await;
                drop(fut);
                // A write queues behind whatever the dropped intake had sent, so the read
                // below sees its commit if it made one.
                store.clear_failures("$none").await.unwrap();
                let pending = store.pending_batches(0, 10).await.unwrap();
                let stored = pending.iter().flat_map(|b| &b.events).any(|e| e.event_id == "$e");
                let again = store.accept_transaction("2", "h", &[event("$e")]).await.unwrap();
                let expected = AcceptOutcome::Stored { new_events: usize::from(!stored) };
                assert_eq!(
                    again, expected,
                    "{shape}: dropped after {polls} polls, stored: {stored}"
                );
                dropped_after_commit += usize::from(stored && !finished);
                store.close().await;
                if finished {
                    break;
                }
            }
            if dropped_after_commit >= 3 {
                break;
            }
        }
        dropped_after_commit
    }
}
