//! The remote → Matrix queue: remote events kept from the moment `queue_remote` returns until
//! their portal's worker has bridged them, and the reactions the bridge put in rooms.

use std::sync::PoisonError;

use ruma::{OwnedEventId, OwnedRoomId};
use sqlx::Row;

use super::{Backend, MessageRow, Result, Store, StoreError, now_ms, with_pool, with_reader};
use crate::{
    remote::{PortalKey, RemoteMessageId, RemoteUserId},
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

/// SQLite: queues events in one script (one hop to the writer's thread). `?1` the events, a
/// JSON array of `[chat, receiver, event]`; `?2` the time. Returns their seqs.
const SQLITE_ENQUEUE: &str = "BEGIN; \
     INSERT INTO mx_remote_queue (chat, receiver, event, queued_at) \
     SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
     json_extract(value, '$[2]'), ?2 FROM json_each(?1) ORDER BY key RETURNING seq; \
     COMMIT";

/// SQLite: takes bridged events off the queue with their records, in one script. `?1` the
/// message parts, a JSON array of `[[chat, receiver], [remote ID, part, event ID], room ID,
/// sender, timestamp]`; `?2` the reactions, `[[chat, receiver], [message, sender, key], event
/// ID, room ID]`; `?3` the seqs.
const SQLITE_FINISH: &str = "BEGIN; \
     INSERT INTO mx_message \
     (chat, receiver, remote_id, part, event_id, room_id, sender, timestamp) \
     SELECT json_extract(value, '$[0][0]'), json_extract(value, '$[0][1]'), \
     json_extract(value, '$[1][0]'), json_extract(value, '$[1][1]'), \
     json_extract(value, '$[1][2]'), json_extract(value, '$[2]'), \
     json_extract(value, '$[3]'), json_extract(value, '$[4]') \
     FROM json_each(?1) WHERE true ON CONFLICT DO NOTHING; \
     INSERT INTO mx_reaction \
     (chat, receiver, message_id, sender, reaction_key, event_id, room_id) \
     SELECT json_extract(value, '$[0][0]'), json_extract(value, '$[0][1]'), \
     json_extract(value, '$[1][0]'), json_extract(value, '$[1][1]'), \
     json_extract(value, '$[1][2]'), json_extract(value, '$[2]'), \
     json_extract(value, '$[3]') \
     FROM json_each(?2) WHERE true ON CONFLICT DO NOTHING; \
     DELETE FROM mx_remote_queue WHERE seq IN (SELECT value FROM json_each(?3)); \
     COMMIT";

/// A value that does not encode, as the store's error.
fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

impl Store {
    /// Queues remote events (JSON, each for its portal) in one database transaction; returns
    /// their sequence numbers, in the order given, once committed. Nothing is stored when it
    /// fails.
    pub(crate) async fn enqueue_remote(&self, events: &[(&PortalKey, &str)]) -> Result<Vec<i64>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut seqs: Vec<i64> = match &self.backend {
            Backend::Sqlite(writer) => {
                let rows: Vec<(&str, &str, &str)> =
                    events.iter().map(|(p, e)| (p.chat.as_str(), p.receiver_str(), *e)).collect();
                let rows = serde_json::to_string(&rows).map_err(corrupt)?;
                let query = sqlx::query(SQLITE_ENQUEUE).bind(rows).bind(now);
                let rows = writer.fetch_script(query).await?;
                rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?
            }
            Backend::Postgres(pool) => {
                let chats: Vec<&str> = events.iter().map(|(p, _)| p.chat.as_str()).collect();
                let receivers: Vec<&str> = events.iter().map(|(p, _)| p.receiver_str()).collect();
                let bodies: Vec<&str> = events.iter().map(|(_, e)| *e).collect();
                sqlx::query_scalar(
                    "INSERT INTO mx_remote_queue (chat, receiver, event, queued_at) \
                     SELECT c, r, e, $4 FROM unnest($1::text[], $2::text[], $3::text[]) \
                     WITH ORDINALITY AS t(c, r, e, o) ORDER BY o RETURNING seq",
                )
                .bind(chats)
                .bind(receivers)
                .bind(bodies)
                .bind(now)
                .fetch_all(pool)
                .await?
            }
        };
        if seqs.len() != events.len() {
            return Err(StoreError::Corrupt(format!(
                "{} remote events queued, {} sequence numbers returned",
                events.len(),
                seqs.len()
            )));
        }
        // Rows are numbered in the order they are inserted (one writer, one statement after the
        // other, rows in the order given); only the order `RETURNING` lists them in is not
        // promised.
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// Up to 1024 queued events after `after`, not parked, in queue order. On SQLite, each
    /// message's row also tells whether any part of it was mapped then (in the same read). The
    /// limit is written into the SQL: SQLite prepares a statement with a bound `LIMIT` again
    /// each time it is bound.
    pub(crate) async fn queued_remote(&self, after: i64) -> Result<Vec<QueuedRow>> {
        // Before the read: a write noted after this is seen as newer than what it read.
        let generation = self.mapping_generation();
        let sql = match self.backend {
            // A row that is not JSON is read all the same (and parked by the pipeline).
            Backend::Sqlite(_) => {
                "SELECT seq, chat, receiver, event, attempts, \
                 CASE WHEN json_valid(event) THEN NOT EXISTS (SELECT 1 FROM mx_message m \
                 WHERE m.chat = q.chat AND m.receiver = q.receiver \
                 AND m.remote_id = json_extract(q.event, '$.message.id')) END AS unmapped \
                 FROM mx_remote_queue q WHERE NOT parked AND seq > $1 ORDER BY seq LIMIT 1024"
            }
            Backend::Postgres(_) => {
                "SELECT seq, chat, receiver, event, attempts, NULL::bool AS unmapped \
                 FROM mx_remote_queue WHERE NOT parked AND seq > $1 ORDER BY seq LIMIT 1024"
            }
        };
        with_reader!(self, |pool| {
            let rows = sqlx::query(sql).bind(after).fetch_all(pool).await?;
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
                let messages: Vec<_> = messages_written
                    .iter()
                    .map(|m| {
                        let portal = (m.portal.chat.as_str(), m.portal.receiver_str());
                        let ids = (m.id.as_str(), m.part.as_str(), m.event_id.as_str());
                        (portal, ids, m.room_id.as_str(), m.sender.as_str(), m.timestamp)
                    })
                    .collect();
                let reactions: Vec<_> = reactions
                    .iter()
                    .map(|r| {
                        let portal = (r.portal.chat.as_str(), r.portal.receiver_str());
                        let ids = (r.message.as_str(), r.sender.as_str(), r.key.as_str());
                        (portal, ids, r.event_id.as_str(), r.room_id.as_str())
                    })
                    .collect();
                let query = sqlx::query(SQLITE_FINISH)
                    .bind(serde_json::to_string(&messages).map_err(corrupt)?)
                    .bind(serde_json::to_string(&reactions).map_err(corrupt)?)
                    .bind(serde_json::to_string(seqs).map_err(corrupt)?);
                let written = writer.fetch_script(query).await;
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
        let events: Vec<(&PortalKey, &str)> = bodies
            .iter()
            .enumerate()
            .map(|(i, body)| (if i % 3 == 0 { &b } else { &a }, body.as_str()))
            .collect();
        let first = store.enqueue_remote(&events[..500]).await.unwrap();
        let second = store.enqueue_remote(&events[500..]).await.unwrap();
        let seqs: Vec<i64> = first.iter().chain(&second).copied().collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "increasing in the order given");
        let rows = store.queued_remote(0).await.unwrap();
        let stored: Vec<(i64, &PortalKey, &str)> =
            rows.iter().map(|r| (r.seq, &r.portal, r.event.as_str())).collect();
        let given: Vec<(i64, &PortalKey, &str)> =
            seqs.iter().zip(&events).map(|(seq, (p, e))| (*seq, *p, *e)).collect();
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
        assert_eq!(store.message_parts(&a, &"m1".into()).await.unwrap(), [message]);
        let found = store.reaction(&b, &"m1".into(), &"alice".into(), "👍").await.unwrap();
        assert_eq!(found.as_deref(), Some(event_id!("$r1")));
        store.finish_remote(left, &[], &[]).await.unwrap();
        assert_eq!(store.remote_queue_counts().await.unwrap(), (0, 0));
    }
}

#[cfg(test)]
mod prefetch_tests {
    use ruma::{room_id, user_id};

    use super::*;
    use crate::remote::{RemoteEvent, RemoteSender};

    /// The queue's read tells which messages had no mapping (SQLite), and a mapping written
    /// after that read, by any path, makes the pipeline ask again; others are untouched.
    #[tokio::test]
    async fn a_mapping_written_after_the_read_invalidates_what_it_said() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::connect_url(&format!("sqlite://{}/q.db", dir.path().display())).await.unwrap();
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
        let events = [(&key, a.as_str()), (&key, b.as_str()), (&key, old.as_str()), (&key, &bad)];
        store.enqueue_remote(&events).await.unwrap();
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
        store.close().await;
    }
}
