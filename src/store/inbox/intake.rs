//! Storing transactions: deduplication of transactions and events, and the batches written.

use std::borrow::Cow;

use sqlx::Row;

use super::sql::{INSERT_CHUNK, PG_ONE_TRIP, RowsSql, SQLITE_ONE_TRIP, STATEMENT_BYTES};
use super::sql::{chunks_by_size, rows_sql};
use super::{AcceptOutcome, Accepted, IncomingTxn, NewEvent, StoredBatch, corrupt};
use crate::store::writer::BeginTx;
use crate::store::{Backend, Result, Store, now_ms, with_pool};
use crate::util::FastSet;

/// How [`Store::accept_batched`] tells new events from seen ones.
#[derive(Debug)]
enum Dedup {
    /// PostgreSQL: insert every event ID into `mx_event_seen`, `RETURNING` the new ones.
    Insert,
    /// SQLite: read `mx_event_seen`, and the stored IDs of the batches that the in-memory index
    /// says may hold one of the events.
    Read { maybe_stored: Vec<i64> },
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
    /// After a failure nothing was stored.
    pub(crate) async fn accept_transaction(
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
    /// After a failure nothing was stored.
    pub(crate) async fn accept_transactions(
        &self,
        txns: &[IncomingTxn<'_>],
    ) -> Result<Vec<AcceptOutcome>> {
        Ok(self.accept_batched(txns).await?.into_iter().map(|a| a.outcome).collect())
    }

    /// [`Store::accept_transactions`], also telling which batches were written.
    pub(crate) async fn accept_batched(&self, txns: &[IncomingTxn<'_>]) -> Result<Vec<Accepted>> {
        // Where each backend remembers event IDs: see the module docs. On PostgreSQL the common
        // case, nothing seen before, is one statement; a unique violation fails it whole and the
        // group is stored the careful way.
        // The statements' futures are boxed here, where they are made: sqlx's futures are large,
        // and unboxed they would be copied at every `.await` up to the request's future.
        if let Backend::Postgres(pool) = &self.backend {
            if let Some(accepted) = Box::pin(self.accept_pg_one_trip(pool, txns)).await? {
                return Ok(accepted);
            }
            return Box::pin(self.accept_once(txns, Dedup::Insert)).await;
        }
        // SQLite: the intake only reads `mx_event_seen`, and finds the IDs of stored batches
        // through the index in memory.
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
        let now = now_ms();
        let (accepted, gone) = with_pool!(self, |pool| {
            let mut conn = pool.acquire().await?;
            let mut tx = IntakeTx::from(BeginTx::begin_tx(&mut conn).await?);
            let stored = tx.store_group(txns, &dedup, now).await?;
            tx.commit().await?;
            stored
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
}

/// The database transaction of [`Store::accept_once`], on either backend, so that each of its
/// steps is a function written once.
enum IntakeTx<'c> {
    Sqlite(sqlx::Transaction<'c, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'c, sqlx::Postgres>),
}

impl<'c> From<sqlx::Transaction<'c, sqlx::Sqlite>> for IntakeTx<'c> {
    fn from(tx: sqlx::Transaction<'c, sqlx::Sqlite>) -> Self {
        Self::Sqlite(tx)
    }
}

impl<'c> From<sqlx::Transaction<'c, sqlx::Postgres>> for IntakeTx<'c> {
    fn from(tx: sqlx::Transaction<'c, sqlx::Postgres>) -> Self {
        Self::Postgres(tx)
    }
}

/// Runs `$body` with `$conn` bound to the connection of an [`IntakeTx`]. The body is compiled
/// once per backend, as with `with_pool!`.
macro_rules! on_tx {
    ($tx:expr, |$conn:ident| $body:expr) => {
        match $tx {
            IntakeTx::Sqlite(tx) => {
                let $conn = &mut **tx;
                $body
            }
            IntakeTx::Postgres(tx) => {
                let $conn = &mut **tx;
                $body
            }
        }
    };
}

/// The event IDs of a group that the database knows about: the new ones ([`Dedup::Insert`])
/// or the ones seen before ([`Dedup::Read`]).
struct Known {
    ids: FastSet<String>,
    are_new: bool,
}

impl Known {
    fn is_new(&self, event_id: &str) -> bool {
        self.ids.contains(event_id) == self.are_new
    }
}

/// A batch row to write: some of the new events of one transaction.
struct Planned {
    txn: usize,
    events: Vec<usize>,
    json: String,
    ids: String,
}

impl IntakeTx<'_> {
    /// Stores what is new of a group: the steps of [`Store::accept_once`]. Returns the outcome
    /// per transaction, and the batches the index pointed at that are gone.
    async fn store_group(
        &mut self,
        txns: &[IncomingTxn<'_>],
        dedup: &Dedup,
        now: i64,
    ) -> Result<(Vec<Accepted>, Vec<i64>)> {
        let is_new = self.new_transactions(txns, now).await?;
        let candidates: Vec<&str> = txns
            .iter()
            .zip(&is_new)
            .filter(|(_, new)| **new)
            .flat_map(|(t, _)| t.events.iter().map(|e| e.event_id.as_ref()))
            .collect();
        let (known, gone) = match dedup {
            Dedup::Insert => (self.insert_seen(&candidates, now).await?, Vec::new()),
            Dedup::Read { maybe_stored } => self.read_seen(&candidates, maybe_stored).await?,
        };
        let (mut accepted, planned) = plan_batches(txns, &is_new, &known, candidates.len())?;
        let seqs = self.insert_batches(txns, &planned, now).await?;
        for (b, seq) in planned.into_iter().zip(seqs) {
            accepted[b.txn].batches.push(StoredBatch { seq, events: b.events });
        }
        Ok((accepted, gone))
    }

    /// Records the group's (txn ID, hash) pairs, one multi-row INSERT … RETURNING per chunk, and
    /// tells which transactions are new, in order.
    async fn new_transactions(&mut self, txns: &[IncomingTxn<'_>], now: i64) -> Result<Vec<bool>> {
        const TXN_CHUNK: usize = 64;
        let mut new: FastSet<(String, String)> = FastSet::default();
        for chunk in txns.chunks(TXN_CHUNK) {
            on_tx!(self, |conn| {
                let mut query = sqlx::query(rows_sql(RowsSql::Transactions, chunk.len())).bind(now);
                for t in chunk {
                    query = query.bind(t.txn_id).bind(t.body_hash);
                }
                for row in query.fetch_all(conn).await? {
                    new.insert((row.try_get("txn_id")?, row.try_get("body_hash")?));
                }
            });
        }
        // `remove`: a second copy of the same transaction in this group is a duplicate.
        Ok(txns
            .iter()
            .map(|t| new.remove(&(t.txn_id.to_owned(), t.body_hash.to_owned())))
            .collect())
    }

    /// [`Dedup::Insert`]: inserts the candidates into `mx_event_seen`; the IDs returned are new.
    async fn insert_seen(&mut self, candidates: &[&str], now: i64) -> Result<Known> {
        let mut ids: FastSet<String> =
            FastSet::with_capacity_and_hasher(candidates.len(), Default::default());
        for chunk in candidates.chunks(INSERT_CHUNK) {
            on_tx!(self, |conn| {
                let mut query = sqlx::query(rows_sql(RowsSql::Seen, chunk.len())).bind(now);
                for id in chunk {
                    query = query.bind(*id);
                }
                for row in query.fetch_all(conn).await? {
                    ids.insert(row.try_get(0)?);
                }
            });
        }
        Ok(Known { ids, are_new: true })
    }

    /// [`Dedup::Read`]: finds the candidates seen before, in the stored batches the index
    /// pointed at or in `mx_event_seen` (a read: no index is written here). Also returns the
    /// batches the index pointed at that are gone.
    async fn read_seen(
        &mut self,
        candidates: &[&str],
        maybe_stored: &[i64],
    ) -> Result<(Known, Vec<i64>)> {
        let mut seen: FastSet<String> = FastSet::default();
        let mut gone: Vec<i64> = Vec::new();
        if candidates.is_empty() {
            return Ok((Known { ids: seen, are_new: false }, gone));
        }
        if !maybe_stored.is_empty() {
            let list = serde_json::to_string(maybe_stored).map_err(corrupt)?;
            let rows: Vec<(i64, String)> = on_tx!(self, |conn| {
                sqlx::query_as(
                    "SELECT seq, event_ids FROM mx_inbox_batch \
                     WHERE seq IN (SELECT value FROM json_each($1))",
                )
                .bind(list)
                .fetch_all(conn)
                .await?
            });
            let found: FastSet<i64> = rows.iter().map(|r| r.0).collect();
            gone = maybe_stored.iter().copied().filter(|s| !found.contains(s)).collect();
            for (_, ids) in rows {
                seen.extend(serde_json::from_str::<Vec<String>>(&ids).map_err(corrupt)?);
            }
        }
        // A join that walks the list and probes the primary key: `IN (SELECT …)` would first
        // copy the list into a temporary index, an insert per event.
        let list = json_strings(candidates.iter().copied())?;
        let rows: Vec<(String,)> = on_tx!(self, |conn| {
            sqlx::query_as(
                "SELECT s.event_id FROM json_each($1) AS j \
                 CROSS JOIN mx_event_seen AS s ON s.event_id = j.value",
            )
            .bind(list)
            .fetch_all(conn)
            .await?
        });
        seen.extend(rows.into_iter().map(|r| r.0));
        Ok((Known { ids: seen, are_new: false }, gone))
    }

    /// Inserts the planned batches and returns their seqs, in plan order.
    async fn insert_batches(
        &mut self,
        txns: &[IncomingTxn<'_>],
        planned: &[Planned],
        now: i64,
    ) -> Result<Vec<i64>> {
        let mut seqs: Vec<i64> = Vec::with_capacity(planned.len());
        for chunk in chunks_by_size(planned, STATEMENT_BYTES, |b| b.json.len()) {
            let mut got: Vec<i64> = on_tx!(self, |conn| {
                let mut query = sqlx::query(rows_sql(RowsSql::Batches, chunk.len())).bind(now);
                for b in chunk {
                    let n = i32::try_from(b.events.len()).map_err(corrupt)?;
                    query = query
                        .bind(txns[b.txn].txn_id)
                        .bind(b.json.as_str())
                        .bind(b.ids.as_str())
                        .bind(n);
                }
                query
                    .fetch_all(conn)
                    .await?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<std::result::Result<_, _>>()?
            });
            if got.len() != chunk.len() {
                return Err(corrupt("a batch insert returned the wrong number of rows"));
            }
            // Rows are inserted in VALUES order, so their seqs ascend in that order.
            got.sort_unstable();
            seqs.extend(got);
        }
        Ok(seqs)
    }

    async fn commit(self) -> Result<()> {
        match self {
            Self::Sqlite(tx) => tx.commit().await?,
            Self::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }
}

/// Cuts the new events of each new transaction into batches, and gives each transaction its
/// outcome (its batches come once they are written). An event twice in the group is stored
/// once, the first time.
fn plan_batches(
    txns: &[IncomingTxn<'_>],
    is_new: &[bool],
    known: &Known,
    candidates: usize,
) -> Result<(Vec<Accepted>, Vec<Planned>)> {
    let mut planned: Vec<Planned> = Vec::new();
    let mut accepted = Vec::with_capacity(txns.len());
    let mut taken: FastSet<&str> =
        FastSet::with_capacity_and_hasher(candidates, Default::default());
    for (ti, t) in txns.iter().enumerate() {
        if !is_new[ti] {
            accepted.push(Accepted { outcome: AcceptOutcome::Duplicate, batches: vec![] });
            continue;
        }
        let new_events: Vec<usize> = (0..t.events.len())
            .filter(|&i| {
                let id = t.events[i].event_id.as_ref();
                known.is_new(id) && taken.insert(id)
            })
            .collect();
        accepted.push(Accepted {
            outcome: AcceptOutcome::Stored { new_events: new_events.len() },
            batches: vec![],
        });
        for run in chunks_by_size(&new_events, STATEMENT_BYTES, |&i| t.events[i].json.len()) {
            let json = batch_json(t, run);
            let ids = batch_ids(t, run)?;
            planned.push(Planned { txn: ti, events: run.to_vec(), json, ids });
        }
    }
    Ok((accepted, planned))
}

#[cfg(test)]
mod tests {
    use super::*;

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
