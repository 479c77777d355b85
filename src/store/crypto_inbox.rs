//! The bridge device's part of each transaction (`mx_crypto_inbox`), committed before the
//! transaction is answered and read back in order by the crypto machine's feeder.

use sqlx::Row;

use super::{Result, Store, with_pool};

impl Store {
    /// Stores the bridge device's part of the transaction `txn_id`, unless that transaction's
    /// part is stored already (the homeserver sends a transaction again until it is answered).
    /// Returns whether it was new.
    pub(crate) async fn put_crypto_input(&self, txn_id: &str, input: &str) -> Result<bool> {
        let n = with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO mx_crypto_inbox (txn_id, input) VALUES ($1, $2) \
                 ON CONFLICT (txn_id) DO NOTHING",
            )
            .bind(txn_id)
            .bind(input)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n > 0)
    }

    /// The stored parts after `after`, oldest first: `(seq, input)`.
    pub(crate) async fn crypto_inputs(&self, after: i64, limit: i64) -> Result<Vec<(i64, String)>> {
        let rows = with_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT seq, input FROM mx_crypto_inbox WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    /// What encryption has waiting: parts not fed to the machine yet, and events set aside
    /// until their room key arrives.
    pub(crate) async fn crypto_backlog(&self) -> Result<(i64, i64)> {
        let counts: (i64, i64) = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM mx_crypto_inbox), \
                 (SELECT COUNT(*) FROM mx_parked WHERE requeued = FALSE AND awaiting_key IS NOT NULL)",
            )
            .fetch_one(pool)
            .await?
        });
        Ok(counts)
    }

    /// Deletes the room keys (inbound Megolm sessions) first stored before `before` (ms since
    /// the epoch): `encryption.delete_room_keys_after_days`. Returns how many. Events of those
    /// sessions no longer decrypt.
    pub(crate) async fn delete_room_keys_received_before(&self, before: i64) -> Result<u64> {
        let n = with_pool!(self, |pool| {
            sqlx::query("DELETE FROM mx_crypto_inbound_session WHERE received_at < $1")
                .bind(before)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n)
    }

    /// Forgets the bridge device's keys and sessions: every `mx_crypto_*` table emptied, in one
    /// database transaction (for a reset, before a new device is made).
    pub(crate) async fn wipe_crypto(&self) -> Result<()> {
        const TABLES: [&str; 17] = [
            "DELETE FROM mx_crypto_value",
            "DELETE FROM mx_crypto_olm_session",
            "DELETE FROM mx_crypto_olm_hash",
            "DELETE FROM mx_crypto_inbound_session",
            "DELETE FROM mx_crypto_outbound_session",
            "DELETE FROM mx_crypto_device",
            "DELETE FROM mx_crypto_identity",
            "DELETE FROM mx_crypto_tracked_user",
            "DELETE FROM mx_crypto_secret_request",
            "DELETE FROM mx_crypto_secret_inbox",
            "DELETE FROM mx_crypto_withheld",
            "DELETE FROM mx_crypto_room_settings",
            "DELETE FROM mx_crypto_key_bundle",
            "DELETE FROM mx_crypto_keys_downloaded",
            "DELETE FROM mx_crypto_pending_bundle",
            "DELETE FROM mx_crypto_lease",
            "DELETE FROM mx_crypto_inbox",
        ];
        with_pool!(self, |pool| {
            let mut conn = pool.acquire().await?;
            let mut tx = super::writer::BeginTx::begin_tx(&mut conn).await?;
            for sql in TABLES {
                sqlx::query(sql).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Deletes a part the machine took.
    pub(crate) async fn delete_crypto_input(&self, seq: i64) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query("DELETE FROM mx_crypto_inbox WHERE seq = $1")
                .bind(seq)
                .execute(pool)
                .await?;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{InboxPos, PendingEvent};

    #[tokio::test]
    async fn device_input_and_key_waits_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/c.db", dir.path().display());
        let store = Store::connect_url(&url).await.unwrap();
        inbox_in_order_once_per_transaction(&store).await;
        events_awaiting_a_key_come_back_with_it(&store).await;
        old_room_keys_are_deleted(&store).await;
        store.close().await;
    }

    #[tokio::test]
    async fn device_input_and_key_waits_postgres() {
        let schema = crate::store::test_schema!("t_crypto_inbox");
        let Some(store) = schema.store().await else { return };
        inbox_in_order_once_per_transaction(&store).await;
        events_awaiting_a_key_come_back_with_it(&store).await;
        old_room_keys_are_deleted(&store).await;
        schema.remove(store).await;
    }

    /// Parts come back in the order stored; a transaction sent again stores nothing; a deleted
    /// part is gone.
    async fn inbox_in_order_once_per_transaction(store: &Store) {
        assert!(store.put_crypto_input("t1", "one").await.unwrap());
        assert!(store.put_crypto_input("t2", "two").await.unwrap());
        assert!(!store.put_crypto_input("t1", "one again").await.unwrap());
        let rows = store.crypto_inputs(0, 10).await.unwrap();
        let inputs: Vec<&str> = rows.iter().map(|(_, i)| i.as_str()).collect();
        assert_eq!(inputs, ["one", "two"]);
        assert!(rows[0].0 < rows[1].0);
        store.delete_crypto_input(rows[0].0).await.unwrap();
        let rest = store.crypto_inputs(0, 10).await.unwrap();
        assert_eq!(rest, [rows[1].clone()]);
        assert!(store.crypto_inputs(rows[1].0, 10).await.unwrap().is_empty());
    }

    /// Room keys older than the cut-off are deleted, newer ones kept.
    async fn old_room_keys_are_deleted(store: &Store) {
        for (id, at) in [("old", 1_000), ("new", 5_000)] {
            with_pool!(store, |pool| {
                sqlx::query(
                    "INSERT INTO mx_crypto_inbound_session (room_id, session_id, sender_key, \
                     sender_data_type, value, received_at) VALUES ('!r:x', $1, 'k', 0, $2, $3)",
                )
                .bind(id)
                .bind(id.as_bytes())
                .bind(at)
                .execute(pool)
                .await
                .unwrap();
            });
        }
        assert_eq!(store.delete_room_keys_received_before(5_000).await.unwrap(), 1);
        let left: Vec<(String,)> = with_pool!(store, |pool| {
            sqlx::query_as("SELECT session_id FROM mx_crypto_inbound_session")
                .fetch_all(pool)
                .await
                .unwrap()
        });
        assert_eq!(left, [("new".to_owned(),)]);
    }

    /// An event parked for a session's key is put back in line by that key in that room only.
    async fn events_awaiting_a_key_come_back_with_it(store: &Store) {
        let event = |id: &str, room: &str| PendingEvent {
            pos: InboxPos::Requeued { seq: 0 },
            event_id: id.into(),
            room_id: room.into(),
            json: "{}".into(),
            attempts: 0,
        };
        let why = "waiting for its room key";
        store.park_awaiting(&event("$a", "!r:x"), 0, why, Some("S1")).await.unwrap();
        store.park_awaiting(&event("$b", "!r:x"), 0, why, Some("S2")).await.unwrap();
        store.park_awaiting(&event("$c", "!other:x"), 0, why, Some("S1")).await.unwrap();
        store.park(&event("$d", "!r:x"), 3, "failed").await.unwrap();
        assert_eq!(store.requeue_awaiting_key("!r:x", "S1").await.unwrap(), 1);
        let back: Vec<String> =
            store.requeued_events(0, 10).await.unwrap().into_iter().map(|e| e.event_id).collect();
        assert_eq!(back, ["$a"]);
        assert_eq!(store.requeue_awaiting_key("!r:x", "S1").await.unwrap(), 0);
        // Still set aside: the others (a list of parked events leaves out those back in line).
        let parked: Vec<String> =
            store.parked_events(10).await.unwrap().into_iter().map(|e| e.event_id).collect();
        assert_eq!(parked, ["$b", "$c", "$d"]);
    }
}
