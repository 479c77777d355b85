//! The durable inbox and transaction deduplication.

use std::borrow::Cow;

use sqlx::Row;

use super::{Result, Store, StoreError, now_ms, with_pool};

/// Status of an inbox row.
const PENDING: i32 = 0;
const DONE: i32 = 1;
const PARKED: i32 = 2;

/// At most this many events per multi-row INSERT (3 bound parameters each, far below both
/// backends' limits)…
const INSERT_CHUNK: usize = 128;
/// …and about this many bytes of event JSON. Larger statements got no faster on SQLite, and on
/// PostgreSQL a statement that does not fit one socket write waits ~40 ms for a delayed ACK
/// (Nagle: sqlx 0.9.0 does not set TCP_NODELAY, transact-rs/sqlx#4335).
const INSERT_CHUNK_BYTES: usize = 8 * 1024;

/// Splits events into INSERT-sized runs, keeping their order.
fn insert_chunks<'e, 'a>(events: &'e [NewEvent<'a>]) -> impl Iterator<Item = &'e [NewEvent<'a>]> {
    let mut rest = events;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut n = 0;
        while n < rest.len()
            && n < INSERT_CHUNK
            && (n == 0 || bytes + rest[n].json.len() <= INSERT_CHUNK_BYTES)
        {
            bytes += rest[n].json.len();
            n += 1;
        }
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

/// Placeholder-only SQL texts that depend on a row count, built once per count and kept for the
/// process, so they are `&'static str` like every other query: the text never holds input.
fn rows_sql(kind: RowsSql, n: usize) -> &'static str {
    type Texts = std::collections::HashMap<(RowsSql, usize), &'static str>;
    static TEXTS: std::sync::OnceLock<std::sync::Mutex<Texts>> = std::sync::OnceLock::new();
    let mut texts = TEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    texts.entry((kind, n)).or_insert_with(|| Box::leak(kind.build(n).into_boxed_str()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RowsSql {
    /// `$1` the txn ID, `$2` the time, then event ID, room ID and JSON per event.
    Events,
    /// `$1` the time, then txn ID and hash per transaction; returns the rows that were new.
    Transactions,
}

impl RowsSql {
    fn build(self, n: usize) -> String {
        use std::fmt::Write as _;
        let mut sql = String::with_capacity(120 + n * 32);
        match self {
            Self::Events => {
                sql.push_str(
                    "INSERT INTO mx_inbox (event_id, room_id, txn_id, event_json, status, received_at) VALUES ",
                );
                for i in 0..n {
                    let p = 3 + i * 3;
                    let sep = if i == 0 { "" } else { ", " };
                    let _ = write!(sql, "{sep}(${p}, ${}, $1, ${}, 0, $2)", p + 1, p + 2);
                }
                sql.push_str(" ON CONFLICT (event_id) DO NOTHING");
            }
            Self::Transactions => {
                sql.push_str("INSERT INTO mx_txn (txn_id, body_hash, received_at) VALUES ");
                for i in 0..n {
                    let p = 2 + i * 2;
                    let sep = if i == 0 { "" } else { ", " };
                    let _ = write!(sql, "{sep}(${p}, ${}, $1)", p + 1);
                }
                sql.push_str(" ON CONFLICT DO NOTHING RETURNING txn_id, body_hash");
            }
        }
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

/// An event waiting to be handled.
#[derive(Debug, Clone)]
pub struct PendingEvent {
    /// Position in the inbox; events are handed out in this order.
    pub seq: i64,
    /// The event ID.
    pub event_id: String,
    /// The room.
    pub room_id: String,
    /// The event JSON as received.
    pub json: String,
    /// How many times a handler already failed on it.
    pub attempts: i32,
}

/// An event whose handler failed for good.
#[derive(Debug, Clone)]
pub struct ParkedEvent {
    /// Position in the inbox.
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
    /// Events waiting to be handled.
    pub pending: i64,
    /// Events parked after failing for good.
    pub parked: i64,
    /// When the oldest pending event arrived (ms since the epoch).
    pub oldest_pending_ms: Option<i64>,
}

impl Store {
    /// Stores a transaction and its events in one database transaction.
    ///
    /// Returns [`AcceptOutcome::Duplicate`] when `(txn_id, body_hash)` was stored before. Events
    /// whose ID is already in the inbox (pending, done or parked) are skipped, so a homeserver
    /// retry or a txn ID reused after a homeserver restart never doubles an event.
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
        const TXN_CHUNK: usize = 64;
        let now = now_ms();
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            // Which (txn ID, hash) pairs are new: one multi-row INSERT … RETURNING per chunk.
            let mut new: std::collections::HashSet<(String, String)> =
                std::collections::HashSet::new();
            for chunk in txns.chunks(TXN_CHUNK) {
                let mut query = sqlx::query(rows_sql(RowsSql::Transactions, chunk.len())).bind(now);
                for t in chunk {
                    query = query.bind(t.txn_id).bind(t.body_hash);
                }
                for row in query.fetch_all(&mut *tx).await? {
                    new.insert((row.try_get("txn_id")?, row.try_get("body_hash")?));
                }
            }
            let mut outcomes = Vec::with_capacity(txns.len());
            for t in txns {
                // `remove`: a second copy of the same transaction in this batch is a duplicate.
                if !new.remove(&(t.txn_id.to_owned(), t.body_hash.to_owned())) {
                    outcomes.push(AcceptOutcome::Duplicate);
                    continue;
                }
                // One multi-row INSERT per chunk instead of one statement per event: a
                // statement is a round trip to the database (SQLite: to its worker thread),
                // which cost more than the insert itself.
                let mut new_events = 0;
                for chunk in insert_chunks(t.events) {
                    let mut query = sqlx::query(rows_sql(RowsSql::Events, chunk.len()))
                        .bind(t.txn_id)
                        .bind(now);
                    for ev in chunk {
                        query = query
                            .bind(ev.event_id.as_ref())
                            .bind(ev.room_id.as_ref())
                            .bind(ev.json);
                    }
                    new_events += query.execute(&mut *tx).await?.rows_affected();
                }
                outcomes.push(AcceptOutcome::Stored {
                    new_events: usize::try_from(new_events).unwrap_or(usize::MAX),
                });
            }
            tx.commit().await?;
            Ok(outcomes)
        })
    }

    /// Returns up to `limit` pending events with `seq > after`, oldest first.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn pending_events(&self, after: i64, limit: i64) -> Result<Vec<PendingEvent>> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT seq, event_id, room_id, event_json, attempts FROM mx_inbox \
                 WHERE status = 0 AND seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(PendingEvent {
                        seq: r.try_get("seq")?,
                        event_id: r.try_get("event_id")?,
                        room_id: r.try_get("room_id")?,
                        json: r.try_get::<Option<String>, _>("event_json")?.unwrap_or_default(),
                        attempts: r.try_get("attempts")?,
                    })
                })
                .collect()
        })
    }

    /// Marks an event handled: its JSON is dropped, its ID stays for deduplication.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn mark_done(&self, seq: i64) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE mx_inbox SET status = $1, event_json = NULL, last_error = NULL, \
                 done_at = $2 WHERE seq = $3",
            )
            .bind(DONE)
            .bind(now_ms())
            .bind(seq)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Marks many handled events done in one statement (see [`Store::mark_done`]).
    ///
    /// # Errors
    /// When the database fails; then none is marked.
    pub async fn mark_done_many(&self, seqs: &[i64]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        // The list travels as one JSON array parameter, so the SQL text stays fixed.
        let list = serde_json::to_string(seqs).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let sql = match self.backend_name() {
            "postgres" => {
                "UPDATE mx_inbox SET status = $1, event_json = NULL, last_error = NULL, done_at = $2 \
                 WHERE seq IN (SELECT value::bigint FROM json_array_elements_text($3::json))"
            }
            _ => {
                "UPDATE mx_inbox SET status = $1, event_json = NULL, last_error = NULL, done_at = $2 \
                 WHERE seq IN (SELECT value FROM json_each($3))"
            }
        };
        with_pool!(self, |pool| {
            sqlx::query(sql).bind(DONE).bind(now_ms()).bind(&list).execute(pool).await?;
        });
        Ok(())
    }

    /// Records a failed attempt and returns the number of attempts so far.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn record_failure(&self, seq: i64, error: &str) -> Result<i32> {
        with_pool!(self, |pool| {
            let attempts: i32 = sqlx::query_scalar(
                "UPDATE mx_inbox SET attempts = attempts + 1, last_error = $1 WHERE seq = $2 \
                 RETURNING attempts",
            )
            .bind(error)
            .bind(seq)
            .fetch_one(pool)
            .await?;
            Ok(attempts)
        })
    }

    /// Parks an event: it is not handed out again, and keeps its JSON and error for inspection.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn park(&self, seq: i64, error: &str) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE mx_inbox SET status = $1, last_error = $2, done_at = $3 WHERE seq = $4",
            )
            .bind(PARKED)
            .bind(error)
            .bind(now_ms())
            .bind(seq)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Puts parked events back in the queue (all of them, or the one with `event_id`) and
    /// returns how many. They are handed out again from the next fetch on.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn retry_parked(&self, event_id: Option<&str>) -> Result<u64> {
        with_pool!(self, |pool| {
            let done = match event_id {
                Some(id) => {
                    sqlx::query(
                        "UPDATE mx_inbox SET status = $1, attempts = 0 \
                         WHERE status = $2 AND event_id = $3",
                    )
                    .bind(PENDING)
                    .bind(PARKED)
                    .bind(id)
                    .execute(pool)
                    .await?
                }
                None => {
                    sqlx::query("UPDATE mx_inbox SET status = $1, attempts = 0 WHERE status = $2")
                        .bind(PENDING)
                        .bind(PARKED)
                        .execute(pool)
                        .await?
                }
            };
            Ok(done.rows_affected())
        })
    }

    /// Lists parked events, oldest first.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn parked_events(&self, limit: i64) -> Result<Vec<ParkedEvent>> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT seq, event_id, room_id, attempts, last_error FROM mx_inbox \
                 WHERE status = $1 ORDER BY seq LIMIT $2",
            )
            .bind(PARKED)
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

    /// The inbox status of an event (`0` pending, `1` done, `2` parked) and its attempts, if the
    /// event ID is still remembered.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn inbox_status(&self, event_id: &str) -> Result<Option<(i32, i32)>> {
        with_pool!(self, |pool| {
            let row = sqlx::query("SELECT status, attempts FROM mx_inbox WHERE event_id = $1")
                .bind(event_id)
                .fetch_optional(pool)
                .await?;
            row.map(|r| Ok((r.try_get("status")?, r.try_get("attempts")?))).transpose()
        })
    }

    /// Counts pending and parked events.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn inbox_stats(&self) -> Result<InboxStats> {
        with_pool!(self, |pool| {
            let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mx_inbox WHERE status = 0")
                .fetch_one(pool)
                .await?;
            let parked: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mx_inbox WHERE status = 2")
                .fetch_one(pool)
                .await?;
            let oldest: Option<i64> = sqlx::query_scalar(
                "SELECT received_at FROM mx_inbox WHERE status = 0 ORDER BY seq LIMIT 1",
            )
            .fetch_optional(pool)
            .await?;
            Ok(InboxStats { pending, parked, oldest_pending_ms: oldest })
        })
    }

    /// Forgets handled events and seen transactions older than `max_age_ms`; returns how many
    /// rows went. Pending and parked events are never pruned.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn prune_dedup(&self, max_age_ms: i64) -> Result<u64> {
        let cutoff = now_ms() - max_age_ms;
        with_pool!(self, |pool| {
            let a = sqlx::query("DELETE FROM mx_inbox WHERE status = $1 AND done_at < $2")
                .bind(DONE)
                .bind(cutoff)
                .execute(pool)
                .await?
                .rows_affected();
            let b = sqlx::query("DELETE FROM mx_txn WHERE received_at < $1")
                .bind(cutoff)
                .execute(pool)
                .await?
                .rows_affected();
            Ok(a + b)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: usize, len: usize) -> (String, String) {
        (format!("$e{id}"), "x".repeat(len))
    }

    #[test]
    fn insert_chunks_keep_order_and_bounds() {
        let owned: Vec<_> =
            (0..300).map(|i| event(i, if i % 7 == 0 { 9000 } else { 300 })).collect();
        let events: Vec<_> = owned
            .iter()
            .map(|(id, json)| NewEvent { event_id: id.into(), room_id: "!r:x".into(), json })
            .collect();
        let chunks: Vec<_> = insert_chunks(&events).collect();
        let ids: Vec<_> =
            chunks.iter().flat_map(|c| c.iter().map(|e| e.event_id.clone())).collect();
        assert_eq!(ids, events.iter().map(|e| e.event_id.clone()).collect::<Vec<_>>());
        for c in &chunks {
            assert!(!c.is_empty() && c.len() <= INSERT_CHUNK);
            let bytes: usize = c.iter().map(|e| e.json.len()).sum();
            // An event larger than the budget goes alone.
            assert!(bytes <= INSERT_CHUNK_BYTES || c.len() == 1, "{bytes} bytes in {}", c.len());
        }
        assert_eq!(insert_chunks(&[]).count(), 0);
    }

    #[test]
    fn insert_sql_numbers_three_parameters_per_event() {
        let sql = RowsSql::Events.build(2);
        assert!(sql.ends_with(
            "VALUES ($3, $4, $1, $5, 0, $2), ($6, $7, $1, $8, 0, $2) ON CONFLICT (event_id) DO NOTHING"
        ));
    }
}
