//! Handing stored events out and recording what became of them: progress per room, failed
//! attempts, parked events.

use super::sql::{INSERT_CHUNK, RowsSql, rows_sql};
use super::{InboxPos, PendingBatch, PendingEvent, corrupt, parse_batch};
use crate::store::{Backend, Result, Store, now_ms, with_pool, with_reader};
use crate::util::{FastMap, FastSet};

/// Whether an event at `(seq, idx)` is past its room's recorded progress.
pub(super) fn after_progress(progress: Option<&(i64, i32)>, seq: i64, idx: i32) -> bool {
    progress.is_none_or(|&(s, i)| (seq, idx) > (s, i))
}

impl Store {
    /// Returns up to `limit` stored batches with `seq > after`, oldest first, each with the
    /// events not handled yet (by the recorded progress of their rooms) and their failed
    /// attempts so far.
    pub(crate) async fn pending_batches(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<PendingBatch>> {
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
        let rooms: FastSet<&str> =
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
    pub(super) async fn room_progress<'a>(
        &self,
        rooms: impl Iterator<Item = &'a str>,
    ) -> Result<FastMap<String, (i64, i32)>> {
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
    pub(super) async fn attempts_of(&self, event_ids: &[&str]) -> Result<FastMap<String, i32>> {
        if event_ids.is_empty() {
            return Ok(FastMap::default());
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
    pub(crate) async fn requeued_events(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<PendingEvent>> {
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
    /// What was recorded before a failure stays.
    pub(crate) async fn record_handled(
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
            // One statement, so one round trip: the data-modifying CTEs all run, atomically. It
            // commits without waiting for the WAL flush (see `with_relaxed!`).
            let pool = self.relaxed_or(pg);
            let progress = serde_json::to_string(&progress).map_err(corrupt)?;
            sqlx::query(
                "WITH p AS (INSERT INTO mx_room_progress (room_id, batch_seq, idx) \
                 SELECT r->>0, (r->>1)::bigint, (r->>2)::integer \
                 FROM json_array_elements($1::json) r \
                 ON CONFLICT (room_id) DO UPDATE SET batch_seq = excluded.batch_seq, \
                 idx = excluded.idx \
                 WHERE (excluded.batch_seq, excluded.idx) > \
                 (mx_room_progress.batch_seq, mx_room_progress.idx) \
                 RETURNING 1), \
                 b AS (DELETE FROM mx_inbox_batch \
                 WHERE seq = ANY(ARRAY(SELECT value::bigint \
                 FROM json_array_elements_text($2::json))) \
                 RETURNING 1), \
                 q AS (DELETE FROM mx_parked \
                 WHERE seq = ANY(ARRAY(SELECT value::bigint \
                 FROM json_array_elements_text($3::json))) RETURNING 1) \
                 SELECT (SELECT count(*) FROM p) + (SELECT count(*) FROM b) \
                 + (SELECT count(*) FROM q)",
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
                // each page it dirtied once whatever the order, and sorting costs more than
                // inserting in order saves.
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
    pub(crate) async fn record_failure(&self, event_id: &str, error: &str) -> Result<i32> {
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
    pub(crate) async fn clear_failures(&self, event_id: &str) -> Result<()> {
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
    /// After a failure nothing changed.
    pub(crate) async fn park(
        &self,
        event: &PendingEvent,
        attempts: i32,
        error: &str,
    ) -> Result<()> {
        self.park_awaiting(event, attempts, error, None).await
    }

    /// [`Store::park`], naming what the event waits for: the session of the room key that
    /// decrypts it (see [`Store::requeue_awaiting_key`]).
    pub(crate) async fn park_awaiting(
        &self,
        event: &PendingEvent,
        attempts: i32,
        error: &str,
        awaiting_key: Option<&str>,
    ) -> Result<()> {
        with_pool!(self, |pool| {
            let mut conn = pool.acquire().await?;
            let mut tx = crate::store::writer::BeginTx::begin_tx(&mut conn).await?;
            // A requeued event parked again gets a new row, so a new `seq`: a running
            // dispatcher reads requeued events after the last `seq` it routed, and would not
            // see the event when it is put back in line once more.
            sqlx::query("DELETE FROM mx_parked WHERE event_id = $1")
                .bind(&event.event_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO mx_parked \
                 (event_id, room_id, event_json, attempts, last_error, parked_at, requeued, \
                 awaiting_key) VALUES ($1, $2, $3, $4, $5, $6, FALSE, $7)",
            )
            .bind(&event.event_id)
            .bind(&event.room_id)
            .bind(&event.json)
            .bind(attempts)
            .bind(error)
            .bind(now_ms())
            .bind(awaiting_key)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_compares_batch_then_index() {
        assert!(after_progress(None, 1, 0));
        assert!(after_progress(Some(&(1, 3)), 1, 4));
        assert!(after_progress(Some(&(1, 3)), 2, 0));
        assert!(!after_progress(Some(&(1, 3)), 1, 3));
        assert!(!after_progress(Some(&(2, 0)), 1, 9));
    }
}
