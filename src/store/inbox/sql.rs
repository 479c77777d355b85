//! The inbox's SQL texts: multi-row statements built once per row count, the one-trip
//! statements of the intake, and how rows are cut into statements.

/// At most this many rows per multi-row INSERT (a few bound parameters each, far below both
/// backends' limits).
pub(in crate::store) const INSERT_CHUNK: usize = 128;
/// About how many bytes of event JSON one inbox `INSERT` carries: a transaction's events go in
/// one statement up to this size, and each statement saved is a round trip saved (sqlx sets
/// `TCP_NODELAY`, so a long statement over TLS waits for no delayed ACK).
pub(super) const STATEMENT_BYTES: usize = 1024 * 1024;

/// Splits `items` into runs of at most [`INSERT_CHUNK`] items and about `budget` bytes (an item
/// larger than the budget goes alone), keeping their order.
pub(super) fn chunks_by_size<T>(
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
pub(in crate::store) fn rows_sql(kind: RowsSql, n: usize) -> &'static str {
    type Texts = crate::util::FastMap<(RowsSql, usize), &'static str>;
    static TEXTS: std::sync::OnceLock<std::sync::Mutex<Texts>> = std::sync::OnceLock::new();
    let mut texts = TEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    texts.entry((kind, n)).or_insert_with(|| Box::leak(kind.build(n).into_boxed_str()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(in crate::store) enum RowsSql {
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
/// prepares it once (with a `VALUES` row per batch, each size would be a statement of its own,
/// prepared again on every pooled connection and crowding sqlx's statement cache).
pub(super) const PG_ONE_TRIP: &str = "\
     WITH t AS (INSERT INTO mx_txn (txn_id, body_hash, received_at) \
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
/// [`SqliteWriter::fetch_script`]: crate::store::writer::SqliteWriter::fetch_script
pub(super) const SQLITE_ONE_TRIP: &str = "BEGIN; \
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
}
