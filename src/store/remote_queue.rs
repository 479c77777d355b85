//! The remote → Matrix queue: remote events kept from the moment `queue_remote` returns until
//! their portal's worker has bridged them, and the reactions the bridge put in rooms.

use ruma::{OwnedEventId, OwnedRoomId};
use sqlx::Row;

use super::{Result, Store, now_ms, with_pool, with_reader};
use crate::remote::{PortalKey, RemoteMessageId, RemoteUserId};

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
}

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

impl Store {
    /// Queues a remote event (JSON) for a portal; returns its sequence number once committed.
    pub(crate) async fn enqueue_remote(&self, portal: &PortalKey, event: &str) -> Result<i64> {
        with_pool!(self, |pool| {
            Ok(sqlx::query_scalar(
                "INSERT INTO mx_remote_queue (chat, receiver, event, queued_at) \
                 VALUES ($1, $2, $3, $4) RETURNING seq",
            )
            .bind(portal.chat.as_str())
            .bind(portal.receiver_str())
            .bind(event)
            .bind(now_ms())
            .fetch_one(pool)
            .await?)
        })
    }

    /// Up to `limit` queued events after `after`, not parked, in queue order.
    pub(crate) async fn queued_remote(&self, after: i64, limit: i64) -> Result<Vec<QueuedRow>> {
        with_reader!(self, |pool| {
            let rows = sqlx::query(
                "SELECT seq, chat, receiver, event, attempts FROM mx_remote_queue \
                 WHERE NOT parked AND seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push(QueuedRow {
                    seq: r.try_get("seq")?,
                    portal: PortalKey::from_stored(r.try_get("chat")?, r.try_get("receiver")?),
                    event: r.try_get("event")?,
                    attempts: r.try_get("attempts")?,
                });
            }
            Ok(out)
        })
    }

    /// Forgets a queued event: it was bridged.
    pub(crate) async fn finish_remote(&self, seq: i64) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query("DELETE FROM mx_remote_queue WHERE seq = $1")
                .bind(seq)
                .execute(pool)
                .await?;
        });
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

    /// Records a reaction the bridge put in a room.
    pub(crate) async fn insert_reaction(&self, r: &ReactionRow) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO mx_reaction \
                 (chat, receiver, message_id, sender, reaction_key, event_id, room_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(r.portal.chat.as_str())
            .bind(r.portal.receiver_str())
            .bind(r.message.as_str())
            .bind(r.sender.as_str())
            .bind(&r.key)
            .bind(r.event_id.as_str())
            .bind(r.room_id.as_str())
            .execute(pool)
            .await?;
        });
        Ok(())
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
