//! The remote → Matrix queue: remote events kept from the moment `queue_remote` returns until
//! their portal's worker has bridged them, and the reactions the bridge put in rooms.

use std::sync::PoisonError;

use ruma::{OwnedEventId, OwnedRoomId};
use sqlx::Row;

use super::{Backend, MessageRow, Result, Store, StoreError, now_ms, with_pool, with_reader};
use crate::{
    remote::{PortalKey, RemoteMessageId, RemotePartId, RemoteUserId},
    util::FastMap,
};

/// A queued remote event, as the pipeline reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueuedRow {
    /// Its place in the queue (also what its sends' transaction IDs are made of).
    pub(crate) seq: i64,
    /// The portal it is for.
    pub(crate) portal: PortalKey,
    /// The event, as JSON.
    pub(crate) event: String,
    /// Failed attempts so far.
    pub(crate) attempts: i32,
    /// For a message, when the row was read no part of it was mapped, as of this generation
    /// of the mapping writes (see [`Store::mapped_since`]); `None` when not known.
    pub(crate) unmapped_as_of: Option<u64>,
}

/// A remote event to queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewRemote<'a> {
    /// The portal it is for.
    pub(crate) portal: &'a PortalKey,
    /// The event, as JSON.
    pub(crate) event: &'a str,
    /// For a message, its remote ID: the queue's row tells whether it has a mapping already.
    pub(crate) message_id: Option<&'a str>,
}

/// A remote event just queued: its place in the queue, and (for a message) what the insert
/// found of its mappings, as [`QueuedRow::unmapped_as_of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Enqueued {
    pub(crate) seq: i64,
    pub(crate) unmapped_as_of: Option<u64>,
}

/// Which remote messages had mappings written lately, by generation: what a read of the
/// database said about a message (that it had none) holds as long as no mapping of that
/// message was written since. Every write of `mx_message` goes through the store and is noted
/// here once it is done. Bounded: past [`MAPPING_WRITES_MAX`] messages it forgets them all and
/// answers "maybe written" for anything read before.
#[derive(Debug, Default)]
pub(crate) struct MappingWrites {
    generation: u64,
    /// By portal, then message: the generation of the last write.
    recent: FastMap<PortalKey, FastMap<String, u64>>,
    len: usize,
    /// Writes up to this generation were forgotten.
    forgotten_up_to: u64,
}

/// See [`MappingWrites`].
const MAPPING_WRITES_MAX: usize = 65_536;

/// A reaction the bridge put in a room for a remote user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReactionRow {
    pub(crate) portal: PortalKey,
    pub(crate) message: RemoteMessageId,
    pub(crate) sender: RemoteUserId,
    pub(crate) key: String,
    pub(crate) event_id: OwnedEventId,
    pub(crate) room_id: OwnedRoomId,
}

/// See [`Store::reaction_target`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReactionTarget {
    /// The first part of the message reacted to, and its event; `None` when it was not bridged.
    pub(crate) first_part: Option<(RemotePartId, OwnedEventId)>,
    /// The event of the same reaction, when the bridge put it in the room already.
    pub(crate) reaction: Option<OwnedEventId>,
}

/// The most rows [`Store::queued_remote`] returns.
pub(crate) const QUEUE_READ_MAX: usize = 1024;

/// Whether a queued message had no mapping, as a column of the queue's row: NULL for other
/// events (no `message_id`), whose mappings are not asked about.
/// (Named by the table's name: SQLite's `RETURNING` does not know an alias of it.)
const UNMAPPED: &str = "CASE WHEN mx_remote_queue.message_id IS NULL THEN NULL ELSE NOT EXISTS \
     (SELECT 1 FROM mx_message m WHERE m.chat = mx_remote_queue.chat \
     AND m.receiver = mx_remote_queue.receiver AND m.remote_id = mx_remote_queue.message_id) \
     END AS unmapped";

/// The SQLite statements of the queue's scripts that take a list of rows. Each is written for
/// a row count that is a power of two (up to [`SQLITE_ROWS_MAX`]), with anonymous `?`
/// parameters, and the rows past the real ones bound as NULL and skipped (`WHERE ... IS NOT
/// NULL`): few texts, each prepared once by the writer, whatever the group sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SqliteRows {
    /// Queued events: chat, receiver, event, message ID, time; returns seq and `unmapped`.
    Enqueue,
    /// Message parts recorded: chat, receiver, remote ID, part, event ID, room ID, sender,
    /// timestamp.
    Messages,
    /// Reactions recorded: chat, receiver, message, sender, key, event ID, room ID.
    Reactions,
    /// Bridged events taken off the queue: seq.
    Delete,
}

/// At most this many rows in one statement of a script: far below SQLite's limit of bound
/// parameters (32,766).
const SQLITE_ROWS_MAX: usize = 256;

impl SqliteRows {
    fn columns(self) -> usize {
        match self {
            Self::Enqueue => 5,
            Self::Messages => 8,
            Self::Reactions => 7,
            Self::Delete => 1,
        }
    }

    /// The statement for `rows` rows (a power of two).
    fn statement(self, rows: usize, sql: &mut String) {
        let values = |sql: &mut String| {
            let row = format!("({})", vec!["?"; self.columns()].join(", "));
            sql.push_str("(VALUES ");
            sql.push_str(&vec![row.as_str(); rows].join(", "));
            sql.push_str(") WHERE column1 IS NOT NULL");
        };
        match self {
            Self::Enqueue => {
                sql.push_str(
                    "INSERT INTO mx_remote_queue (chat, receiver, event, message_id, queued_at) \
                     SELECT * FROM ",
                );
                values(sql);
                sql.push_str(" RETURNING seq, ");
                sql.push_str(UNMAPPED);
            }
            Self::Messages => {
                // `OR IGNORE` rather than `ON CONFLICT DO NOTHING`: the same for a row
                // recorded already, and no other constraint can fail (every column is bound
                // from a value that is there). Where a statement may abort halfway, SQLite keeps
                // a statement journal of every page it changes.
                sql.push_str(
                    "INSERT OR IGNORE INTO mx_message \
                     (chat, receiver, remote_id, part, event_id, room_id, sender, timestamp) \
                     SELECT * FROM ",
                );
                values(sql);
            }
            Self::Reactions => {
                sql.push_str(
                    "INSERT OR IGNORE INTO mx_reaction \
                     (chat, receiver, message_id, sender, reaction_key, event_id, room_id) \
                     SELECT * FROM ",
                );
                values(sql);
            }
            Self::Delete => {
                sql.push_str("DELETE FROM mx_remote_queue WHERE seq IN (");
                sql.push_str(&vec!["?"; rows].join(", "));
                sql.push(')');
            }
        }
    }
}

/// The statements, with their padded row counts, that take `n` rows of `kind`.
fn sqlite_statements(kind: SqliteRows, n: usize) -> impl Iterator<Item = (SqliteRows, usize)> {
    let full = n / SQLITE_ROWS_MAX;
    let rest = n % SQLITE_ROWS_MAX;
    let last = (rest > 0).then(|| rest.next_power_of_two());
    std::iter::repeat_n(SQLITE_ROWS_MAX, full).chain(last).map(move |rows| (kind, rows))
}

/// The most statements of one script. Every script's text is built once and kept for the
/// process, like every other query text: each is a handful of statements of power-of-two row
/// counts, so there are at most a few hundred (see [`finish_remote_sqlite`]). More rows than fit
/// run in pieces inside one transaction.
const SQLITE_SCRIPT_STATEMENTS: usize = 8;

/// The script of these statements (at most [`SQLITE_SCRIPT_STATEMENTS`]): inside `BEGIN` and
/// `COMMIT` when `framed`, else for a transaction the caller opened, or a single statement that
/// is a transaction of its own.
fn sqlite_script(statements: &[(SqliteRows, usize)], framed: bool) -> &'static str {
    debug_assert!(statements.len() <= SQLITE_SCRIPT_STATEMENTS);
    type Scripts = FastMap<Vec<(SqliteRows, usize)>, &'static str>;
    // Framed scripts, and pieces for a transaction the caller opened.
    static SCRIPTS: std::sync::OnceLock<std::sync::Mutex<[Scripts; 2]>> =
        std::sync::OnceLock::new();
    let mut scripts =
        SCRIPTS.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    let scripts = &mut scripts[usize::from(framed)];
    if let Some(text) = scripts.get(statements) {
        return text;
    }
    let mut sql = String::from(if framed { "BEGIN; " } else { "" });
    for (i, &(kind, rows)) in statements.iter().enumerate() {
        if i > 0 {
            sql.push_str("; ");
        }
        kind.statement(rows, &mut sql);
    }
    if framed {
        sql.push_str("; COMMIT");
    }
    scripts.entry(statements.to_vec()).or_insert(Box::leak(sql.into_boxed_str()))
}

/// Binds the NULLs that pad a statement of `kind` with `real` rows to its `rows`.
fn bind_padding<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    real: usize,
    rows: usize,
    kind: SqliteRows,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    for _ in real..rows {
        for _ in 0..kind.columns() {
            query = query.bind(None::<&str>);
        }
    }
    query
}

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

/// Binds one statement of [`finish_remote_sqlite`], of `kind` padded to `rows`: message parts,
/// reactions or seqs (only those of `kind` are bound).
fn bind_finish_statement<'q>(
    mut query: SqliteQuery<'q>,
    (kind, rows): (SqliteRows, usize),
    messages: &[&'q MessageRow],
    reactions: &[&'q ReactionRow],
    seqs: &[i64],
) -> SqliteQuery<'q> {
    let real = match kind {
        SqliteRows::Messages => {
            for m in messages {
                query = query
                    .bind(m.portal.chat.as_str())
                    .bind(m.portal.receiver_str())
                    .bind(m.id.as_str())
                    .bind(m.part.as_str())
                    .bind(m.event_id.as_str())
                    .bind(m.room_id.as_str())
                    .bind(m.sender.as_str())
                    .bind(m.timestamp);
            }
            messages.len()
        }
        SqliteRows::Reactions => {
            for r in reactions {
                query = query
                    .bind(r.portal.chat.as_str())
                    .bind(r.portal.receiver_str())
                    .bind(r.message.as_str())
                    .bind(r.sender.as_str())
                    .bind(r.key.as_str())
                    .bind(r.event_id.as_str())
                    .bind(r.room_id.as_str());
            }
            reactions.len()
        }
        SqliteRows::Delete => {
            for seq in seqs {
                query = query.bind(*seq);
            }
            seqs.len()
        }
        SqliteRows::Enqueue => unreachable!("not a statement of finishing"),
    };
    bind_padding(query, real, rows, kind)
}

/// SQLite: takes bridged events off the queue with their records, in one script. The rows go
/// in rounds of up to [`SQLITE_ROWS_MAX`] of each kind. In each round a kind without rows has
/// no statement, reactions (fewer, and none in most groups) are padded to a power of two of
/// their own, and message parts and seqs (about as many) to one: few padding rows are bound, and
/// a script's text depends on the kinds it has and two row counts. That is at most a few hundred
/// texts, and in practice a few dozen: group sizes cluster.
async fn finish_remote_sqlite(
    writer: &super::writer::SqliteWriter,
    seqs: &[i64],
    messages: &[&MessageRow],
    reactions: &[&ReactionRow],
) -> Result<(), sqlx::Error> {
    let most = seqs.len().max(messages.len()).max(reactions.len());
    let rounds = most.div_ceil(SQLITE_ROWS_MAX);
    let chunk = |len: usize, round: usize| {
        let start = (round * SQLITE_ROWS_MAX).min(len);
        start..(start + SQLITE_ROWS_MAX).min(len)
    };
    // Each round's statements, as (round, kind, padded rows).
    let mut statements = Vec::with_capacity(rounds * 3);
    for round in 0..rounds {
        let (m, r, d) = (
            chunk(messages.len(), round).len(),
            chunk(reactions.len(), round).len(),
            chunk(seqs.len(), round).len(),
        );
        let shared = m.max(d).next_power_of_two();
        let kinds = [
            (SqliteRows::Messages, m, shared),
            (SqliteRows::Reactions, r, r.next_power_of_two()),
            (SqliteRows::Delete, d, shared),
        ];
        statements.extend(
            kinds.into_iter().filter(|&(_, real, _)| real > 0).map(|(k, _, rows)| (round, k, rows)),
        );
    }
    let bind = |query, (round, kind, rows): (usize, SqliteRows, usize)| {
        let take = |len: usize| chunk(len, round);
        bind_finish_statement(
            query,
            (kind, rows),
            &messages[take(messages.len())],
            &reactions[take(reactions.len())],
            &seqs[take(seqs.len())],
        )
    };
    let texts: Vec<(SqliteRows, usize)> = statements.iter().map(|&(_, k, r)| (k, r)).collect();
    if texts.len() <= SQLITE_SCRIPT_STATEMENTS {
        // One statement is a transaction of its own (see `Store::enqueue_remote`).
        let mut query = sqlx::query(sqlite_script(&texts, texts.len() > 1));
        for &statement in &statements {
            query = bind(query, statement);
        }
        return writer.fetch_script(query).await.map(drop);
    }
    // More than one script holds: a statement at a time, in one transaction.
    let mut conn = writer.acquire().await?;
    let mut tx = super::writer::BeginTx::begin_tx(&mut conn).await?;
    for (&statement, text) in statements.iter().zip(&texts) {
        let query = bind(sqlx::query(sqlite_script(std::slice::from_ref(text), false)), statement);
        sqlx::Executor::execute(&mut *tx, query).await?;
    }
    tx.commit().await
}

impl Store {
    /// Queues remote events in one database transaction; returns their sequence numbers, in
    /// the order given, once committed, with what the insert found of each message's
    /// mappings. Nothing is stored when it fails.
    pub(crate) async fn enqueue_remote<'a>(
        &self,
        events: &'a [NewRemote<'a>],
    ) -> Result<Vec<Enqueued>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        // Before the insert: a mapping written after this is seen as newer than what it found.
        let generation = self.mapping_generation();
        let mut found: Vec<(i64, Option<bool>)> = match &self.backend {
            Backend::Sqlite(writer) => {
                let bind = |mut query: SqliteQuery<'a>, chunk: &'a [NewRemote<'a>]| {
                    for e in chunk {
                        query = query
                            .bind(e.portal.chat.as_str())
                            .bind(e.portal.receiver_str())
                            .bind(e.event)
                            .bind(e.message_id)
                            .bind(now);
                    }
                    let rows = chunk.len().next_power_of_two();
                    bind_padding(query, chunk.len(), rows, SqliteRows::Enqueue)
                };
                let statements: Vec<_> =
                    sqlite_statements(SqliteRows::Enqueue, events.len()).collect();
                let rows = if statements.len() <= SQLITE_SCRIPT_STATEMENTS {
                    // One statement is a transaction of its own: framed in `BEGIN` and
                    // `COMMIT`, SQLite would also keep a statement journal for it.
                    let framed = statements.len() > 1;
                    let mut query = sqlx::query(sqlite_script(&statements, framed));
                    for chunk in events.chunks(SQLITE_ROWS_MAX) {
                        query = bind(query, chunk);
                    }
                    writer.fetch_script(query).await?
                } else {
                    // More than one script holds: a statement at a time, in one transaction.
                    let mut conn = writer.acquire().await?;
                    let mut tx = super::writer::BeginTx::begin_tx(&mut conn).await?;
                    let mut rows = Vec::with_capacity(events.len());
                    for (chunk, statement) in events.chunks(SQLITE_ROWS_MAX).zip(&statements) {
                        let script = sqlite_script(std::slice::from_ref(statement), false);
                        let query = bind(sqlx::query(script), chunk);
                        rows.extend(sqlx::Executor::fetch_all(&mut *tx, query).await?);
                    }
                    tx.commit().await?;
                    rows
                };
                rows.iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect::<Result<_, sqlx::Error>>()?
            }
            Backend::Postgres(pool) => {
                let chats: Vec<&str> = events.iter().map(|e| e.portal.chat.as_str()).collect();
                let receivers: Vec<&str> = events.iter().map(|e| e.portal.receiver_str()).collect();
                let bodies: Vec<&str> = events.iter().map(|e| e.event).collect();
                let ids: Vec<Option<&str>> = events.iter().map(|e| e.message_id).collect();
                static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
                let sql = SQL.get_or_init(|| {
                    format!(
                        "INSERT INTO mx_remote_queue (chat, receiver, event, message_id, \
                         queued_at) SELECT c, r, e, m, $5 FROM unnest($1::text[], $2::text[], \
                         $3::text[], $4::text[]) WITH ORDINALITY AS t(c, r, e, m, o) ORDER BY o \
                         RETURNING seq, {UNMAPPED}"
                    )
                });
                let rows = sqlx::query(sql.as_str())
                    .bind(chats)
                    .bind(receivers)
                    .bind(bodies)
                    .bind(ids)
                    .bind(now)
                    .fetch_all(pool)
                    .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect::<Result<_, sqlx::Error>>()?
            }
        };
        if found.len() != events.len() {
            return Err(StoreError::Corrupt(format!(
                "{} remote events queued, {} sequence numbers returned",
                events.len(),
                found.len()
            )));
        }
        // Rows are numbered in the order they are inserted (one writer, one statement after the
        // other, rows in the order given); only the order `RETURNING` lists them in is not
        // promised.
        found.sort_unstable_by_key(|(seq, _)| *seq);
        Ok(found
            .into_iter()
            .map(|(seq, unmapped)| Enqueued {
                seq,
                unmapped_as_of: unmapped.unwrap_or(false).then_some(generation),
            })
            .collect())
    }

    /// Up to [`QUEUE_READ_MAX`] queued events after `after`, not parked, in queue order. Each
    /// message's row also tells whether any part of it was mapped then (in the same read). The
    /// limit is written into the SQL: SQLite prepares a statement with a bound `LIMIT` again
    /// each time it is bound.
    pub(crate) async fn queued_remote(&self, after: i64) -> Result<Vec<QueuedRow>> {
        // Before the read: a write noted after this is seen as newer than what it read.
        let generation = self.mapping_generation();
        static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let sql = SQL.get_or_init(|| {
            format!(
                "SELECT seq, chat, receiver, event, attempts, {UNMAPPED} \
                 FROM mx_remote_queue WHERE NOT parked AND seq > $1 ORDER BY seq \
                 LIMIT {QUEUE_READ_MAX}"
            )
        });
        with_reader!(self, |pool| {
            let rows = sqlx::query(sql.as_str()).bind(after).fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let unmapped: Option<bool> = r.try_get("unmapped")?;
                out.push(QueuedRow {
                    seq: r.try_get("seq")?,
                    portal: PortalKey::from_stored(r.try_get("chat")?, r.try_get("receiver")?),
                    event: r.try_get("event")?,
                    attempts: r.try_get("attempts")?,
                    unmapped_as_of: unmapped.unwrap_or(false).then_some(generation),
                });
            }
            Ok(out)
        })
    }

    /// The generation of the mapping writes now (see [`MappingWrites`]).
    pub(crate) fn mapping_generation(&self) -> u64 {
        self.mapping_writes.lock().unwrap_or_else(PoisonError::into_inner).generation
    }

    /// Whether a mapping of a remote message may have been written after `generation`.
    pub(crate) fn mapped_since(
        &self,
        portal: &PortalKey,
        message: &RemoteMessageId,
        generation: u64,
    ) -> bool {
        let writes = self.mapping_writes.lock().unwrap_or_else(PoisonError::into_inner);
        writes.forgotten_up_to > generation
            || writes
                .recent
                .get(portal)
                .and_then(|m| m.get(message.as_str()))
                .is_some_and(|&written| written > generation)
    }

    /// Notes that mappings of these messages were written (or may have been).
    pub(super) fn note_mapping_writes<'a>(
        &self,
        messages: impl Iterator<Item = (&'a PortalKey, &'a RemoteMessageId)>,
    ) {
        let mut writes = self.mapping_writes.lock().unwrap_or_else(PoisonError::into_inner);
        let mut messages = messages.peekable();
        if messages.peek().is_none() {
            return;
        }
        writes.generation += 1;
        let generation = writes.generation;
        for (portal, message) in messages {
            if writes.len >= MAPPING_WRITES_MAX {
                writes.recent.clear();
                writes.len = 0;
                writes.forgotten_up_to = generation;
            }
            let by_message = match writes.recent.get_mut(portal) {
                Some(m) => m,
                None => writes.recent.entry(portal.clone()).or_default(),
            };
            if by_message.insert(message.as_str().to_owned(), generation).is_none() {
                writes.len += 1;
            }
        }
    }

    /// Forgets queued events that were bridged, recording with them, in the same database
    /// transaction, the message parts and reactions their bridging sent last (a part or
    /// reaction recorded already is left as it is).
    pub(crate) async fn finish_remote(
        &self,
        seqs: &[i64],
        messages_written: &[&MessageRow],
        reactions: &[&ReactionRow],
    ) -> Result<()> {
        if seqs.is_empty() && messages_written.is_empty() && reactions.is_empty() {
            return Ok(());
        }
        match &self.backend {
            Backend::Sqlite(writer) => {
                let written = finish_remote_sqlite(writer, seqs, messages_written, reactions).await;
                self.note_mapping_writes(messages_written.iter().map(|m| (&m.portal, &m.id)));
                written?;
            }
            Backend::Postgres(pool) => {
                let written =
                    self.finish_remote_postgres(pool, seqs, messages_written, reactions).await;
                self.note_mapping_writes(messages_written.iter().map(|m| (&m.portal, &m.id)));
                written?;
            }
        }
        Ok(())
    }

    async fn finish_remote_postgres(
        &self,
        pool: &sqlx::PgPool,
        seqs: &[i64],
        messages: &[&MessageRow],
        reactions: &[&ReactionRow],
    ) -> Result<()> {
        // One statement (one round trip, atomic by itself): the inserts run as its parts.
        let mcol =
            |f: fn(&MessageRow) -> &str| -> Vec<&str> { messages.iter().map(|m| f(m)).collect() };
        let rcol =
            |f: fn(&ReactionRow) -> &str| -> Vec<&str> { reactions.iter().map(|r| f(r)).collect() };
        sqlx::query(
            "WITH m AS (INSERT INTO mx_message \
             (chat, receiver, remote_id, part, event_id, room_id, sender, timestamp) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
             $5::text[], $6::text[], $7::text[], $8::int8[]) ON CONFLICT DO NOTHING), \
             r AS (INSERT INTO mx_reaction \
             (chat, receiver, message_id, sender, reaction_key, event_id, room_id) \
             SELECT * FROM unnest($9::text[], $10::text[], $11::text[], $12::text[], \
             $13::text[], $14::text[], $15::text[]) ON CONFLICT DO NOTHING) \
             DELETE FROM mx_remote_queue WHERE seq = ANY($16)",
        )
        .bind(mcol(|m| m.portal.chat.as_str()))
        .bind(mcol(|m| m.portal.receiver_str()))
        .bind(mcol(|m| m.id.as_str()))
        .bind(mcol(|m| m.part.as_str()))
        .bind(mcol(|m| m.event_id.as_str()))
        .bind(mcol(|m| m.room_id.as_str()))
        .bind(mcol(|m| m.sender.as_str()))
        .bind(messages.iter().map(|m| m.timestamp).collect::<Vec<i64>>())
        .bind(rcol(|r| r.portal.chat.as_str()))
        .bind(rcol(|r| r.portal.receiver_str()))
        .bind(rcol(|r| r.message.as_str()))
        .bind(rcol(|r| r.sender.as_str()))
        .bind(rcol(|r| r.key.as_str()))
        .bind(rcol(|r| r.event_id.as_str()))
        .bind(rcol(|r| r.room_id.as_str()))
        .bind(seqs)
        .execute(pool)
        .await?;
        Ok(())
    }

    /// Counts a failed attempt at a queued event, parking it when `park`; returns the attempts.
    pub(crate) async fn fail_remote(&self, seq: i64, error: &str, park: bool) -> Result<i32> {
        with_pool!(self, |pool| {
            Ok(sqlx::query_scalar(
                "UPDATE mx_remote_queue SET attempts = attempts + 1, last_error = $2, \
                 parked = $3 WHERE seq = $1 RETURNING attempts",
            )
            .bind(seq)
            .bind(error)
            .bind(park)
            .fetch_optional(pool)
            .await?
            .unwrap_or(0))
        })
    }

    /// How many remote events wait, and how many are parked.
    pub async fn remote_queue_counts(&self) -> Result<(i64, i64)> {
        with_reader!(self, |pool| {
            let row = sqlx::query(
                "SELECT COUNT(*) FILTER (WHERE NOT parked) AS waiting, \
                 COUNT(*) FILTER (WHERE parked) AS parked FROM mx_remote_queue",
            )
            .fetch_one(pool)
            .await?;
            Ok((row.try_get("waiting")?, row.try_get("parked")?))
        })
    }

    /// The event of a remote user's reaction to a message, if the bridge put one in the room.
    pub(crate) async fn reaction(
        &self,
        portal: &PortalKey,
        message: &RemoteMessageId,
        sender: &RemoteUserId,
        key: &str,
    ) -> Result<Option<OwnedEventId>> {
        let found: Option<String> = with_reader!(self, |pool| {
            sqlx::query_scalar(
                "SELECT event_id FROM mx_reaction WHERE chat = $1 AND receiver = $2 \
                 AND message_id = $3 AND sender = $4 AND reaction_key = $5",
            )
            .bind(portal.chat.as_str())
            .bind(portal.receiver_str())
            .bind(message.as_str())
            .bind(sender.as_str())
            .bind(key)
            .fetch_optional(pool)
            .await?
        });
        found
            .map(|e| {
                OwnedEventId::try_from(e)
                    .map_err(|e| super::StoreError::Corrupt(format!("event_id: {e}")))
            })
            .transpose()
    }

    /// What a remote reaction needs to know, in one read: the first part of the message it
    /// reacts to (its part ID and event), and the event of the same reaction if the bridge put
    /// it in the room already.
    pub(crate) async fn reaction_target(
        &self,
        portal: &PortalKey,
        message: &RemoteMessageId,
        sender: &RemoteUserId,
        key: &str,
    ) -> Result<ReactionTarget> {
        const SQL: &str = "SELECT m.part, m.event_id, \
             (SELECT r.event_id FROM mx_reaction r WHERE r.chat = $1 AND r.receiver = $2 \
             AND r.message_id = $3 AND r.sender = $4 AND r.reaction_key = $5) AS reaction \
             FROM (SELECT 1) AS one LEFT JOIN (SELECT part, event_id FROM mx_message \
             WHERE chat = $1 AND receiver = $2 AND remote_id = $3 ORDER BY part LIMIT 1) AS m \
             ON TRUE";
        let (part, first, reaction): (Option<String>, Option<String>, Option<String>) =
            with_reader!(self, |pool| {
                let row = sqlx::query(SQL)
                    .bind(portal.chat.as_str())
                    .bind(portal.receiver_str())
                    .bind(message.as_str())
                    .bind(sender.as_str())
                    .bind(key)
                    .fetch_one(pool)
                    .await?;
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)
            });
        let event = |e: String| {
            OwnedEventId::try_from(e).map_err(|e| StoreError::Corrupt(format!("event_id: {e}")))
        };
        Ok(ReactionTarget {
            first_part: match (part, first) {
                (Some(part), Some(first)) => Some((RemotePartId::from(part), event(first)?)),
                _ => None,
            },
            reaction: reaction.map(event).transpose()?,
        })
    }

    /// Forgets a reaction.
    pub(crate) async fn delete_reaction(
        &self,
        portal: &PortalKey,
        message: &RemoteMessageId,
        sender: &RemoteUserId,
        key: &str,
    ) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "DELETE FROM mx_reaction WHERE chat = $1 AND receiver = $2 \
                 AND message_id = $3 AND sender = $4 AND reaction_key = $5",
            )
            .bind(portal.chat.as_str())
            .bind(portal.receiver_str())
            .bind(message.as_str())
            .bind(sender.as_str())
            .bind(key)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Forgets the parts of one remote message (it was deleted).
    pub(crate) async fn delete_message(
        &self,
        portal: &PortalKey,
        message: &RemoteMessageId,
    ) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "DELETE FROM mx_message WHERE chat = $1 AND receiver = $2 AND remote_id = $3",
            )
            .bind(portal.chat.as_str())
            .bind(portal.receiver_str())
            .bind(message.as_str())
            .execute(pool)
            .await?;
        });
        Ok(())
    }
}

#[cfg(test)]
impl Store {
    /// Makes every insert into the queue of an event containing `poison` fail (SQLite).
    pub(crate) async fn fail_poisoned_remote_events(&self) {
        let Backend::Sqlite(writer) = &self.backend else { panic!("SQLite only") };
        sqlx::raw_sql(
            "CREATE TRIGGER fail_marked BEFORE INSERT ON mx_remote_queue \
             WHEN NEW.event LIKE '%poison%' BEGIN SELECT RAISE(ABORT, 'marked'); END",
        )
        .execute(writer)
        .await
        .unwrap();
    }

    /// Takes SQLite's writing connection for `held`; returns once it is taken.
    pub(crate) async fn hold_writer_for(&self, held: std::time::Duration) {
        let store = self.clone();
        let (taken, is_taken) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let Backend::Sqlite(writer) = &store.backend else { panic!("SQLite only") };
            let _conn = writer.acquire().await.unwrap();
            let _ = taken.send(());
            tokio::time::sleep(held).await;
        });
        is_taken.await.unwrap();
    }
}

#[cfg(test)]
mod tests {
    use ruma::{event_id, room_id, user_id};

    use super::*;
    use crate::remote::RemoteLoginId;

    #[tokio::test]
    async fn groups_are_queued_at_their_seqs_and_finished_with_their_records_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/q.db", dir.path().display());
        let store = Store::connect_url(&url).await.unwrap();
        queue_and_finish(&store).await;
        store.close().await;
    }

    #[tokio::test]
    async fn groups_are_queued_at_their_seqs_and_finished_with_their_records_postgres() {
        let schema = crate::store::test_schema!("t_remote_queue_groups");
        let Some(store) = schema.store().await else { return };
        queue_and_finish(&store).await;
        schema.remove(store).await;
    }

    /// A batch of more rows than one script takes (it runs in pieces, in one transaction) is
    /// queued whole, in order, and taken off the queue whole.
    #[tokio::test]
    async fn a_batch_longer_than_one_script_is_queued_and_finished_whole() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/q.db", dir.path().display());
        let store = Store::connect_url(&url).await.unwrap();
        let key = PortalKey::shared("a");
        let n = SQLITE_ROWS_MAX * SQLITE_SCRIPT_STATEMENTS + 3;
        let bodies: Vec<String> = (0..n).map(|i| format!("{{\"n\":{i}}}")).collect();
        let events: Vec<NewRemote<'_>> = bodies
            .iter()
            .map(|body| NewRemote { portal: &key, event: body, message_id: None })
            .collect();
        let seqs: Vec<i64> =
            store.enqueue_remote(&events).await.unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs.len(), n);
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        let mut stored = Vec::new();
        let mut after = 0;
        loop {
            let rows = store.queued_remote(after).await.unwrap();
            let Some(last) = rows.last() else { break };
            after = last.seq;
            stored.extend(rows.into_iter().map(|r| r.event));
        }
        assert_eq!(stored, bodies);
        store.finish_remote(&seqs, &[], &[]).await.unwrap();
        assert_eq!(store.remote_queue_counts().await.unwrap(), (0, 0));
        store.close().await;
    }

    /// Events queued in one call get increasing seqs in the order given, each row holding the
    /// event given at its place; a later call's seqs are greater. Finishing takes exactly the
    /// given seqs off the queue and records the parts and reactions with them, and doing it
    /// again changes nothing.
    async fn queue_and_finish(store: &Store) {
        let a = PortalKey::shared("a");
        let b = PortalKey::for_login("b", RemoteLoginId::from("login".to_owned()));
        // Text that JSON must escape, and more events than one statement of SQLite takes.
        let bodies: Vec<String> =
            (0..700).map(|i| format!(r#"{{"n":{i},"s":"\"quoted\" \\ é\n"}}"#)).collect();
        let events: Vec<NewRemote<'_>> = bodies
            .iter()
            .enumerate()
            .map(|(i, body)| NewRemote {
                portal: if i % 3 == 0 { &b } else { &a },
                event: body.as_str(),
                message_id: None,
            })
            .collect();
        let first = store.enqueue_remote(&events[..500]).await.unwrap();
        let second = store.enqueue_remote(&events[500..]).await.unwrap();
        let seqs: Vec<i64> = first.iter().chain(&second).map(|e| e.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "increasing in the order given");
        let rows = store.queued_remote(0).await.unwrap();
        let stored: Vec<(i64, &PortalKey, &str)> =
            rows.iter().map(|r| (r.seq, &r.portal, r.event.as_str())).collect();
        let given: Vec<(i64, &PortalKey, &str)> =
            seqs.iter().zip(&events).map(|(seq, e)| (*seq, e.portal, e.event)).collect();
        assert_eq!(stored, given);

        let message = MessageRow {
            portal: a.clone(),
            id: "m1".into(),
            part: crate::remote::RemotePartId::default(),
            event_id: event_id!("$m1").to_owned(),
            room_id: room_id!("!r:x").to_owned(),
            sender: user_id!("@g:x").to_owned(),
            timestamp: 5,
        };
        let reaction = ReactionRow {
            portal: b.clone(),
            message: "m1".into(),
            sender: "alice".into(),
            key: "👍".into(),
            event_id: event_id!("$r1").to_owned(),
            room_id: room_id!("!r:x").to_owned(),
        };
        let (done, left) = seqs.split_at(300);
        for _ in 0..2 {
            store.finish_remote(done, &[&message], &[&reaction]).await.unwrap();
        }
        assert_eq!(store.remote_queue_counts().await.unwrap(), (400, 0));
        let rest: Vec<i64> = store.queued_remote(0).await.unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(rest, left);
        assert_eq!(
            store.message_parts(&a, &"m1".into()).await.unwrap(),
            std::slice::from_ref(&message)
        );
        let found = store.reaction(&b, &"m1".into(), &"alice".into(), "👍").await.unwrap();
        assert_eq!(found.as_deref(), Some(event_id!("$r1")));
        // A reaction's one read: the target's first part, and the same reaction if stored.
        let (m1, alice) = (RemoteMessageId::from("m1"), RemoteUserId::from("alice"));
        let target = store.reaction_target(&a, &m1, &alice, "👍").await.unwrap();
        let first = Some((crate::remote::RemotePartId::default(), event_id!("$m1").to_owned()));
        assert_eq!(target, ReactionTarget { first_part: first, reaction: None });
        let target = store.reaction_target(&b, &m1, &alice, "👍").await.unwrap();
        let reaction = Some(event_id!("$r1").to_owned());
        assert_eq!(target, ReactionTarget { first_part: None, reaction });
        let other_key = store.reaction_target(&b, &m1, &alice, "👎").await.unwrap();
        assert_eq!(other_key, ReactionTarget { first_part: None, reaction: None });
        let part = |part: &str, event: &str| MessageRow {
            id: "m2".into(),
            part: part.into(),
            event_id: OwnedEventId::try_from(event).unwrap(),
            ..message.clone()
        };
        store.insert_messages(&[part("2", "$m2b"), part("1", "$m2a")]).await.unwrap();
        let target = store.reaction_target(&a, &"m2".into(), &alice, "👍").await.unwrap();
        assert_eq!(target.first_part, Some(("1".into(), event_id!("$m2a").to_owned())));
        store.finish_remote(left, &[], &[]).await.unwrap();
        assert_eq!(store.remote_queue_counts().await.unwrap(), (0, 0));
    }
}

#[cfg(test)]
mod prefetch_tests {
    use ruma::{room_id, user_id};

    use super::*;
    use crate::remote::{RemoteEvent, RemoteSender};

    /// The queue's insert and its read tell which messages had no mapping, and a mapping
    /// written after that, by any path, makes the pipeline ask again; others are untouched.
    #[tokio::test]
    async fn a_mapping_written_after_the_read_invalidates_what_it_said_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::connect_url(&format!("sqlite://{}/q.db", dir.path().display())).await.unwrap();
        mapping_written_after_the_read(&store).await;
        store.close().await;
    }

    #[tokio::test]
    async fn a_mapping_written_after_the_read_invalidates_what_it_said_postgres() {
        let schema = crate::store::test_schema!("t_remote_queue_unmapped");
        let Some(store) = schema.store().await else { return };
        mapping_written_after_the_read(&store).await;
        schema.remove(store).await;
    }

    async fn mapping_written_after_the_read(store: &Store) {
        let key = PortalKey::shared("a");
        let sender = RemoteSender::named("alice", "Alice");
        let json = |id: &str| serde_json::to_string(&RemoteEvent::text(id, sender.clone(), id));
        let row = |id: &str, event: &str| MessageRow {
            portal: key.clone(),
            id: id.into(),
            part: crate::remote::RemotePartId::default(),
            event_id: OwnedEventId::try_from(event).unwrap(),
            room_id: room_id!("!r:x").to_owned(),
            sender: user_id!("@g:x").to_owned(),
            timestamp: 1,
        };
        store.insert_messages(&[row("old", "$old")]).await.unwrap();
        let (a, b, old) = (json("a").unwrap(), json("b").unwrap(), json("old").unwrap());
        let bad = "not json".to_owned();
        let new = |event, message_id| NewRemote { portal: &key, event, message_id };
        let events = [
            new(a.as_str(), Some("a")),
            new(b.as_str(), Some("b")),
            new(old.as_str(), Some("old")),
            new(bad.as_str(), None),
        ];
        let queued = store.enqueue_remote(&events).await.unwrap();
        let said: Vec<bool> = queued.iter().map(|q| q.unmapped_as_of.is_some()).collect();
        assert_eq!(said, [true, true, false, false], "only messages without a mapping");
        let rows = store.queued_remote(0).await.unwrap();
        let said: Vec<bool> = rows.iter().map(|r| r.unmapped_as_of.is_some()).collect();
        assert_eq!(said, [true, true, false, false], "only messages without a mapping");
        let generation = rows[0].unmapped_as_of.unwrap();
        let (ma, mb) = (RemoteMessageId::from("a"), RemoteMessageId::from("b"));
        assert!(!store.mapped_since(&key, &ma, generation));
        // Written through the framework's mapping of a Matrix event, and by the pipeline.
        store.insert_messages(&[row("a", "$a")]).await.unwrap();
        assert!(store.mapped_since(&key, &ma, generation));
        assert!(!store.mapped_since(&key, &mb, generation));
        store.finish_remote(&[], &[&row("b", "$b")], &[]).await.unwrap();
        assert!(store.mapped_since(&key, &mb, generation));
        assert!(!store.mapped_since(&PortalKey::shared("other"), &mb, generation));
        // Read again: both are mapped now.
        let rows = store.queued_remote(0).await.unwrap();
        assert!(rows.iter().all(|r| r.unmapped_as_of.is_none()));
    }
}
