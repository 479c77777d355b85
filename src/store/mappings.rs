//! The bridge's mappings: portals, ghosts, message parts, messages waiting for their remote
//! ID, and a small key-value space.

use std::sync::PoisonError;

use ruma::{EventId, OwnedEventId, OwnedMxcUri, OwnedRoomId, OwnedUserId, RoomId, UserId};
use sqlx::Row;

use super::{Result, Store, StoreError, now_ms, with_pool, with_reader, writer::BeginTx};
use crate::remote::{PortalKey, RemoteMessageId, RemotePartId, RemoteTxnId, RemoteUserId};

/// Rooms remembered by the portal cache before it starts over.
const PORTAL_CACHE_MAX: usize = 100_000;

/// A stored portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalRow {
    /// The portal's name.
    pub key: PortalKey,
    /// The Matrix room, once created.
    pub room_id: Option<OwnedRoomId>,
    /// The room name last set.
    pub name: Option<String>,
    /// The topic last set.
    pub topic: Option<String>,
    /// The avatar last set.
    pub avatar_url: Option<OwnedMxcUri>,
    /// Bridge-owned JSON.
    pub metadata: Option<String>,
}

/// A stored ghost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GhostRow {
    /// The remote user.
    pub remote_id: RemoteUserId,
    /// The Matrix user.
    pub user_id: OwnedUserId,
    /// The display name last set.
    pub displayname: Option<String>,
    /// The avatar last set.
    pub avatar_url: Option<OwnedMxcUri>,
    /// Bridge-owned JSON.
    pub metadata: Option<String>,
}

/// A stored message part ↔ event mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRow {
    /// The portal.
    pub portal: PortalKey,
    /// The remote message.
    pub id: RemoteMessageId,
    /// Which part of the remote message.
    pub part: RemotePartId,
    /// The Matrix event.
    pub event_id: OwnedEventId,
    /// The Matrix room.
    pub room_id: OwnedRoomId,
    /// Who sent it on Matrix.
    pub sender: OwnedUserId,
    /// When (ms since the epoch).
    pub timestamp: i64,
}

/// A Matrix event sent to the remote network whose remote ID comes with the network's echo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingRow {
    /// The portal.
    pub(crate) portal: PortalKey,
    /// The transaction ID the echo carries.
    pub(crate) txn_id: RemoteTxnId,
    /// The Matrix event.
    pub(crate) event_id: OwnedEventId,
    /// The Matrix room.
    pub(crate) room_id: OwnedRoomId,
    /// Who sent it on Matrix.
    pub(crate) sender: OwnedUserId,
}

/// A stored ID that does not parse: the row was not written through this API.
fn corrupt(column: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{column}: {e}"))
}

/// Reads a column holding a Matrix ID.
pub(super) fn id_column<T>(r: &impl RowLike, column: &str) -> Result<T>
where
    T: TryFrom<String>,
    T::Error: std::fmt::Display,
{
    let text: String = r.text(column)?;
    T::try_from(text).map_err(|e| corrupt(column, e))
}

/// Reads an optional column holding a Matrix ID.
fn opt_id_column<T>(r: &impl RowLike, column: &str) -> Result<Option<T>>
where
    T: TryFrom<String>,
    T::Error: std::fmt::Display,
{
    match r.opt_text(column)? {
        Some(text) => T::try_from(text).map(Some).map_err(|e| corrupt(column, e)),
        None => Ok(None),
    }
}

/// Text columns of a row of either backend.
pub(super) trait RowLike {
    fn text(&self, column: &str) -> Result<String>;
    fn opt_text(&self, column: &str) -> Result<Option<String>>;
}

impl<R: Row> RowLike for R
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn text(&self, column: &str) -> Result<String> {
        Ok(self.try_get(column)?)
    }

    fn opt_text(&self, column: &str) -> Result<Option<String>> {
        Ok(self.try_get::<Option<String>, _>(column)?)
    }
}

// Column lists as macros, so `concat!` builds each query as a `&'static str` (no runtime SQL).
macro_rules! portal_cols {
    () => {
        "chat, receiver, room_id, name, topic, avatar_url, metadata"
    };
}
macro_rules! ghost_cols {
    () => {
        "remote_id, user_id, displayname, avatar_url, metadata"
    };
}
macro_rules! message_cols {
    () => {
        "chat, receiver, remote_id, part, event_id, room_id, sender, timestamp"
    };
}

macro_rules! portal_from_row {
    ($r:expr) => {
        PortalRow {
            key: PortalKey::from_stored($r.try_get("chat")?, $r.try_get("receiver")?),
            room_id: opt_id_column(&$r, "room_id")?,
            name: $r.try_get("name")?,
            topic: $r.try_get("topic")?,
            avatar_url: $r.try_get::<Option<String>, _>("avatar_url")?.map(OwnedMxcUri::from),
            metadata: $r.try_get("metadata")?,
        }
    };
}

macro_rules! ghost_from_row {
    ($r:expr) => {
        GhostRow {
            remote_id: RemoteUserId($r.try_get("remote_id")?),
            user_id: id_column(&$r, "user_id")?,
            displayname: $r.try_get("displayname")?,
            avatar_url: $r.try_get::<Option<String>, _>("avatar_url")?.map(OwnedMxcUri::from),
            metadata: $r.try_get("metadata")?,
        }
    };
}

macro_rules! message_from_row {
    ($r:expr) => {
        MessageRow {
            portal: PortalKey::from_stored($r.try_get("chat")?, $r.try_get("receiver")?),
            id: RemoteMessageId($r.try_get("remote_id")?),
            part: RemotePartId($r.try_get("part")?),
            event_id: id_column(&$r, "event_id")?,
            room_id: id_column(&$r, "room_id")?,
            sender: id_column(&$r, "sender")?,
            timestamp: $r.try_get("timestamp")?,
        }
    };
}

/// Stores a key-value entry, replacing any previous one: namespace, key, value, time.
const KV_PUT: &str = "INSERT INTO mx_kv (namespace, key, value, updated_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, \
     updated_at = excluded.updated_at";

impl Store {
    /// Inserts or updates a portal.
    ///
    /// # Errors
    /// When the room is mapped to another portal already.
    pub async fn upsert_portal(&self, p: &PortalRow) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO mx_portal \
                 (chat, receiver, room_id, name, topic, avatar_url, metadata, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (chat, receiver) DO UPDATE \
                 SET room_id = excluded.room_id, name = excluded.name, topic = excluded.topic, \
                 avatar_url = excluded.avatar_url, metadata = excluded.metadata",
            )
            .bind(p.key.chat.as_str())
            .bind(p.key.receiver_str())
            .bind(p.room_id.as_ref().map(|r| r.as_str()))
            .bind(&p.name)
            .bind(&p.topic)
            .bind(p.avatar_url.as_ref().map(|a| a.as_str()))
            .bind(&p.metadata)
            .bind(now_ms())
            .execute(pool)
            .await?;
        });
        // After the write: a lookup that read the old row cannot cache it any more.
        self.forget_cached_portals();
        Ok(())
    }

    /// The portal with a key.
    pub async fn portal(&self, key: &PortalKey) -> Result<Option<PortalRow>> {
        let generation = {
            let cache = self.portal_cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(hit) = cache.by_key.get(key) {
                return Ok(hit.clone());
            }
            cache.generation
        };
        let sql =
            concat!("SELECT ", portal_cols!(), " FROM mx_portal WHERE chat = $1 AND receiver = $2");
        let found = with_reader!(self, |pool| {
            let row = sqlx::query(sql)
                .bind(key.chat.as_str())
                .bind(key.receiver_str())
                .fetch_optional(pool)
                .await?;
            match row {
                Some(r) => Some(portal_from_row!(r)),
                None => None,
            }
        });
        let mut cache = self.portal_cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.generation == generation {
            if cache.by_key.len() >= PORTAL_CACHE_MAX {
                cache.by_key.clear();
            }
            cache.by_key.insert(key.clone(), found.clone());
        }
        Ok(found)
    }

    /// The portal bridged to a Matrix room.
    pub async fn portal_by_room(&self, room_id: &RoomId) -> Result<Option<PortalRow>> {
        let generation = {
            let cache = self.portal_cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(hit) = cache.by_room.get(room_id.as_str()) {
                return Ok(hit.clone());
            }
            cache.generation
        };
        let sql = concat!("SELECT ", portal_cols!(), " FROM mx_portal WHERE room_id = $1");
        let found = with_reader!(self, |pool| {
            let row = sqlx::query(sql).bind(room_id.as_str()).fetch_optional(pool).await?;
            match row {
                Some(r) => Some(portal_from_row!(r)),
                None => None,
            }
        });
        let mut cache = self.portal_cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.generation == generation {
            if cache.by_room.len() >= PORTAL_CACHE_MAX {
                cache.by_room.clear();
            }
            cache.by_room.insert(room_id.as_str().to_owned(), found.clone());
        }
        Ok(found)
    }

    pub(super) fn forget_cached_portals(&self) {
        let mut cache = self.portal_cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.generation += 1;
        cache.by_room.clear();
        cache.by_key.clear();
        cache.ghosts.clear();
    }

    /// Forgets a portal (its messages stay until deleted with [`Store::delete_messages`]).
    /// Returns whether there was one.
    pub async fn delete_portal(&self, key: &PortalKey) -> Result<bool> {
        let n = with_pool!(self, |pool| {
            sqlx::query("DELETE FROM mx_portal WHERE chat = $1 AND receiver = $2")
                .bind(key.chat.as_str())
                .bind(key.receiver_str())
                .execute(pool)
                .await?
                .rows_affected()
        });
        self.forget_cached_portals();
        Ok(n > 0)
    }

    /// Inserts or updates a ghost.
    pub async fn upsert_ghost(&self, g: &GhostRow) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO mx_ghost (remote_id, user_id, displayname, avatar_url, metadata) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (remote_id) DO UPDATE SET \
                 user_id = excluded.user_id, displayname = excluded.displayname, \
                 avatar_url = excluded.avatar_url, metadata = excluded.metadata",
            )
            .bind(g.remote_id.as_str())
            .bind(g.user_id.as_str())
            .bind(&g.displayname)
            .bind(g.avatar_url.as_ref().map(|a| a.as_str()))
            .bind(&g.metadata)
            .execute(pool)
            .await?;
        });
        // After the write, as for portals.
        self.forget_cached_portals();
        Ok(())
    }

    /// The ghost of a remote user.
    pub async fn ghost(&self, remote_id: &RemoteUserId) -> Result<Option<GhostRow>> {
        let generation = {
            let cache = self.portal_cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(hit) = cache.ghosts.get(remote_id.as_str()) {
                return Ok(hit.clone());
            }
            cache.generation
        };
        let sql = concat!("SELECT ", ghost_cols!(), " FROM mx_ghost WHERE remote_id = $1");
        let found = with_reader!(self, |pool| {
            let row = sqlx::query(sql).bind(remote_id.as_str()).fetch_optional(pool).await?;
            match row {
                Some(r) => Some(ghost_from_row!(r)),
                None => None,
            }
        });
        let mut cache = self.portal_cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.generation == generation {
            if cache.ghosts.len() >= PORTAL_CACHE_MAX {
                cache.ghosts.clear();
            }
            cache.ghosts.insert(remote_id.as_str().to_owned(), found.clone());
        }
        Ok(found)
    }

    /// The ghost with a Matrix user ID.
    pub async fn ghost_by_user(&self, user_id: &UserId) -> Result<Option<GhostRow>> {
        let sql = concat!("SELECT ", ghost_cols!(), " FROM mx_ghost WHERE user_id = $1");
        with_reader!(self, |pool| {
            let row = sqlx::query(sql).bind(user_id.as_str()).fetch_optional(pool).await?;
            Ok(match row {
                Some(r) => Some(ghost_from_row!(r)),
                None => None,
            })
        })
    }

    /// Records message part ↔ event mappings, in one database transaction. A part already
    /// recorded is left as it is (so recording again after a crash changes nothing). The
    /// framework records mappings itself (from what handlers return, and when it bridges
    /// remote messages); this is public for the store's conformance tests.
    #[doc(hidden)]
    pub async fn insert_messages(&self, rows: &[MessageRow]) -> Result<()> {
        const INSERT: &str = "INSERT INTO mx_message \
             (chat, receiver, remote_id, part, event_id, room_id, sender, timestamp) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING";
        // A macro: each backend's query is its own type.
        macro_rules! bound {
            ($m:expr) => {
                sqlx::query(INSERT)
                    .bind($m.portal.chat.as_str())
                    .bind($m.portal.receiver_str())
                    .bind($m.id.as_str())
                    .bind($m.part.as_str())
                    .bind($m.event_id.as_str())
                    .bind($m.room_id.as_str())
                    .bind($m.sender.as_str())
                    .bind($m.timestamp)
            };
        }
        let written: Result<()> = async {
            match rows {
                [] => {}
                // One statement is atomic by itself: no transaction around it (each statement
                // of one is a trip to the database).
                [m] => with_pool!(self, |pool| {
                    bound!(m).execute(pool).await?;
                }),
                _ => with_pool!(self, |pool| {
                    let mut conn = pool.acquire().await?;
                    let mut tx = conn.begin_tx().await?;
                    for m in rows {
                        bound!(m).execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                }),
            }
            Ok(())
        }
        .await;
        // Failed or not (a failed commit may have committed).
        self.note_mapping_writes(rows.iter().map(|m| (&m.portal, &m.id)));
        written
    }

    /// The message part mapped to a Matrix event.
    pub async fn message_by_event(&self, event_id: &EventId) -> Result<Option<MessageRow>> {
        let sql = concat!("SELECT ", message_cols!(), " FROM mx_message WHERE event_id = $1");
        with_reader!(self, |pool| {
            let row = sqlx::query(sql).bind(event_id.as_str()).fetch_optional(pool).await?;
            Ok(match row {
                Some(r) => Some(message_from_row!(r)),
                None => None,
            })
        })
    }

    /// The parts of a remote message, in part order.
    pub async fn message_parts(
        &self,
        portal: &PortalKey,
        id: &RemoteMessageId,
    ) -> Result<Vec<MessageRow>> {
        let sql = concat!(
            "SELECT ",
            message_cols!(),
            " FROM mx_message WHERE chat = $1 AND receiver = $2 AND remote_id = $3 ORDER BY part"
        );
        with_reader!(self, |pool| {
            let rows = sqlx::query(sql)
                .bind(portal.chat.as_str())
                .bind(portal.receiver_str())
                .bind(id.as_str())
                .fetch_all(pool)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push(message_from_row!(r));
            }
            Ok(out)
        })
    }

    /// Forgets every message of a portal; returns how many parts there were.
    pub async fn delete_messages(&self, portal: &PortalKey) -> Result<u64> {
        with_pool!(self, |pool| {
            Ok(sqlx::query("DELETE FROM mx_message WHERE chat = $1 AND receiver = $2")
                .bind(portal.chat.as_str())
                .bind(portal.receiver_str())
                .execute(pool)
                .await?
                .rows_affected())
        })
    }

    /// Remembers a Matrix event whose remote ID the network's echo will bring.
    pub(crate) async fn insert_pending(&self, p: &PendingRow) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO mx_pending_message \
                 (chat, receiver, txn_id, event_id, room_id, sender, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(p.portal.chat.as_str())
            .bind(p.portal.receiver_str())
            .bind(p.txn_id.as_str())
            .bind(p.event_id.as_str())
            .bind(p.room_id.as_str())
            .bind(p.sender.as_str())
            .bind(now_ms())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Resolves a pending event: records its mapping to the remote message part and forgets
    /// the pending row, in one database transaction. Returns the mapping, or `None` when no
    /// event waits under that transaction ID (it was resolved already, or never sent by us).
    pub(crate) async fn resolve_pending(
        &self,
        portal: &PortalKey,
        txn_id: &RemoteTxnId,
        id: &RemoteMessageId,
        part: &RemotePartId,
    ) -> Result<Option<MessageRow>> {
        let resolved = self.resolve_pending_once(portal, txn_id, id, part).await;
        // Failed or not (a failed commit may have committed).
        self.note_mapping_writes(std::iter::once((portal, id)));
        resolved
    }

    async fn resolve_pending_once(
        &self,
        portal: &PortalKey,
        txn_id: &RemoteTxnId,
        id: &RemoteMessageId,
        part: &RemotePartId,
    ) -> Result<Option<MessageRow>> {
        with_pool!(self, |pool| {
            let mut conn = pool.acquire().await?;
            let mut tx = conn.begin_tx().await?;
            let row = sqlx::query(
                "DELETE FROM mx_pending_message WHERE chat = $1 AND receiver = $2 AND txn_id = $3 \
                 RETURNING event_id, room_id, sender, created_at",
            )
            .bind(portal.chat.as_str())
            .bind(portal.receiver_str())
            .bind(txn_id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(r) = row else { return Ok(None) };
            let message = MessageRow {
                portal: portal.clone(),
                id: id.clone(),
                part: part.clone(),
                event_id: id_column(&r, "event_id")?,
                room_id: id_column(&r, "room_id")?,
                sender: id_column(&r, "sender")?,
                timestamp: r.try_get("created_at")?,
            };
            sqlx::query(
                "INSERT INTO mx_message \
                 (chat, receiver, remote_id, part, event_id, room_id, sender, timestamp) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            )
            .bind(portal.chat.as_str())
            .bind(portal.receiver_str())
            .bind(id.as_str())
            .bind(part.as_str())
            .bind(message.event_id.as_str())
            .bind(message.room_id.as_str())
            .bind(message.sender.as_str())
            .bind(message.timestamp)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Some(message))
        })
    }

    /// Records what the remote side made of a handled Matrix event: its mappings, or the
    /// transaction ID its echo will carry. Recording the same again changes nothing.
    pub(crate) async fn record_delivery(
        &self,
        messages: &[MessageRow],
        pending: Option<&PendingRow>,
    ) -> Result<()> {
        self.insert_messages(messages).await?;
        if let Some(pending) = pending {
            self.insert_pending(pending).await?;
        }
        Ok(())
    }

    /// How many ghosts and portals are known.
    pub async fn mapping_counts(&self) -> Result<(i64, i64)> {
        with_reader!(self, |pool| {
            let ghosts: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM mx_ghost").fetch_one(pool).await?;
            let portals: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM mx_portal").fetch_one(pool).await?;
            Ok((ghosts, portals))
        })
    }

    /// Stores a value (JSON text) under a namespace and key, replacing any previous one.
    pub async fn kv_put(&self, namespace: &str, key: &str, value: &str) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(KV_PUT)
                .bind(namespace)
                .bind(key)
                .bind(value)
                .bind(now_ms())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Stores several values under one namespace, each replacing any previous one, in one
    /// transaction: all of them or (with an error) none. Like [`Store::kv_put`] for each, at the
    /// cost of one commit.
    pub async fn kv_put_many(&self, namespace: &str, entries: &[(&str, &str)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        with_pool!(self, |pool| {
            let mut conn = pool.acquire().await?;
            let mut tx = conn.begin_tx().await?;
            for (key, value) in entries {
                sqlx::query(KV_PUT)
                    .bind(namespace)
                    .bind(*key)
                    .bind(*value)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The value under a namespace and key.
    pub async fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<String>> {
        with_reader!(self, |pool| {
            Ok(sqlx::query_scalar("SELECT value FROM mx_kv WHERE namespace = $1 AND key = $2")
                .bind(namespace)
                .bind(key)
                .fetch_optional(pool)
                .await?)
        })
    }

    /// Every (key, value) of a namespace, by key.
    pub async fn kv_list(&self, namespace: &str) -> Result<Vec<(String, String)>> {
        with_reader!(self, |pool| {
            let rows =
                sqlx::query("SELECT key, value FROM mx_kv WHERE namespace = $1 ORDER BY key")
                    .bind(namespace)
                    .fetch_all(pool)
                    .await?;
            rows.iter().map(|r| Ok((r.try_get("key")?, r.try_get("value")?))).collect()
        })
    }

    /// Stores a value serialized as JSON.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when the value does not serialize.
    pub async fn kv_put_json<T: serde::Serialize>(
        &self,
        namespace: &str,
        key: &str,
        value: &T,
    ) -> Result<()> {
        let json = serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.kv_put(namespace, key, &json).await
    }

    /// The value under a namespace and key, deserialized from JSON.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when the stored JSON does not match `T`.
    pub async fn kv_get_json<T: serde::de::DeserializeOwned>(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<Option<T>> {
        match self.kv_get(namespace, key).await? {
            Some(json) => serde_json::from_str(&json)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("{namespace}/{key}: {e}"))),
            None => Ok(None),
        }
    }

    /// Every (key, value) of a namespace deserialized from JSON, by key.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when a stored value does not match `T`.
    pub async fn kv_list_json<T: serde::de::DeserializeOwned>(
        &self,
        namespace: &str,
    ) -> Result<Vec<(String, T)>> {
        self.kv_list(namespace)
            .await?
            .into_iter()
            .map(|(k, v)| match serde_json::from_str(&v) {
                Ok(t) => Ok((k, t)),
                Err(e) => Err(StoreError::Corrupt(format!("{namespace}/{k}: {e}"))),
            })
            .collect()
    }

    /// Deletes a key; returns whether it existed.
    pub async fn kv_delete(&self, namespace: &str, key: &str) -> Result<bool> {
        with_pool!(self, |pool| {
            let n = sqlx::query("DELETE FROM mx_kv WHERE namespace = $1 AND key = $2")
                .bind(namespace)
                .bind(key)
                .execute(pool)
                .await?
                .rows_affected();
            Ok(n > 0)
        })
    }
}
