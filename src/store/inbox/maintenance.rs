//! The inbox seen from outside: counts, one event's status, parked events, and pruning of the
//! dedup records.

use sqlx::Row;

use super::progress::after_progress;
use super::{InboxPos, InboxStats, InboxStatus, ParkedEvent, parse_batch};
use crate::store::{Backend, Result, Store, now_ms, with_pool, with_reader};

impl Store {
    /// Puts parked events back in line (all of them, or the one with `event_id`) and returns
    /// how many. A running dispatcher of this store picks them up at once.
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

    /// Puts back in line the events of `room_id` set aside until the room key of `session_id`
    /// arrived, and returns how many.
    pub async fn requeue_awaiting_key(&self, room_id: &str, session_id: &str) -> Result<u64> {
        let n = with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE mx_parked SET requeued = TRUE \
                 WHERE requeued = FALSE AND room_id = $1 AND awaiting_key = $2",
            )
            .bind(room_id)
            .bind(session_id)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if n > 0 {
            self.inbox_wake.notify_one();
        }
        Ok(n)
    }

    /// Lists parked events, oldest first.
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

    /// Where an event stands in the inbox, if its ID is still remembered. A diagnostic: it may
    /// scan the pending batches.
    pub async fn inbox_status(&self, event_id: &str) -> Result<Option<InboxStatus>> {
        let attempts = self.attempts_of(&[event_id]).await?.get(event_id).copied().unwrap_or(0);
        let parked: Option<(i32, bool)> = with_reader!(self, |pool| {
            sqlx::query_as("SELECT attempts, requeued FROM mx_parked WHERE event_id = $1")
                .bind(event_id)
                .fetch_optional(pool)
                .await?
        });
        match parked {
            Some((_, true)) => return Ok(Some(InboxStatus::Pending { attempts })),
            Some((attempts, false)) => return Ok(Some(InboxStatus::Parked { attempts })),
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
            return Ok(Some(if pending {
                InboxStatus::Pending { attempts }
            } else {
                InboxStatus::Handled
            }));
        }
        // Its batch was deleted once handled: the ID is remembered until pruned.
        let seen: Option<i64> = with_reader!(self, |pool| {
            sqlx::query_scalar("SELECT seen_at FROM mx_event_seen WHERE event_id = $1")
                .bind(event_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(seen.map(|_| InboxStatus::Handled))
    }

    /// Counts pending and parked events.
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
    pub(crate) async fn prune_dedup(&self, max_age_ms: i64) -> Result<u64> {
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

/// Event IDs forgotten per statement when the dedup records are pruned.
pub const PRUNE_CHUNK: usize = 5000;
