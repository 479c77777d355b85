//! The bridge's mappings: portals, ghosts, messages, and a small key-value space.

use std::sync::PoisonError;

use sqlx::Row;

use super::{Result, Store, StoreError, now_ms, with_pool, with_reader};

/// Rooms remembered by the portal cache before it starts over.
const PORTAL_CACHE_MAX: usize = 100_000;

/// A stored portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalRow {
    /// The remote chat's ID.
    pub remote_id: String,
    /// The Matrix room, once created.
    pub room_id: Option<String>,
    /// The room name last set.
    pub name: Option<String>,
    /// The topic last set.
    pub topic: Option<String>,
    /// The avatar last set.
    pub avatar_url: Option<String>,
    /// Bridge-owned JSON.
    pub metadata: Option<String>,
}

/// A stored ghost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GhostRow {
    /// The remote user's ID.
    pub remote_id: String,
    /// The Matrix user.
    pub user_id: String,
    /// The display name last set.
    pub displayname: Option<String>,
    /// The avatar last set.
    pub avatar_url: Option<String>,
    /// Bridge-owned JSON.
    pub metadata: Option<String>,
}

/// A stored message part ↔ event mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRow {
    /// The remote chat.
    pub portal_id: String,
    /// The remote message.
    pub remote_id: String,
    /// Which part of the remote message (empty for single-part messages).
    pub part: String,
    /// The Matrix event.
    pub event_id: String,
    /// The Matrix room.
    pub room_id: String,
    /// Who sent it on Matrix.
    pub sender: String,
    /// When (ms since the epoch).
    pub timestamp: i64,
}

// Column lists as macros, so `concat!` builds each query as a `&'static str` (no runtime SQL).
macro_rules! portal_cols {
    () => {
        "remote_id, room_id, name, topic, avatar_url, metadata"
    };
}
macro_rules! ghost_cols {
    () => {
        "remote_id, user_id, displayname, avatar_url, metadata"
    };
}
macro_rules! message_cols {
    () => {
        "portal_id, remote_id, part, event_id, room_id, sender, timestamp"
    };
}

macro_rules! portal_from_row {
    ($r:expr) => {
        PortalRow {
            remote_id: $r.try_get("remote_id")?,
            room_id: $r.try_get("room_id")?,
            name: $r.try_get("name")?,
            topic: $r.try_get("topic")?,
            avatar_url: $r.try_get("avatar_url")?,
            metadata: $r.try_get("metadata")?,
        }
    };
}

macro_rules! ghost_from_row {
    ($r:expr) => {
        GhostRow {
            remote_id: $r.try_get("remote_id")?,
            user_id: $r.try_get("user_id")?,
            displayname: $r.try_get("displayname")?,
            avatar_url: $r.try_get("avatar_url")?,
            metadata: $r.try_get("metadata")?,
        }
    };
}

macro_rules! message_from_row {
    ($r:expr) => {
        MessageRow {
            portal_id: $r.try_get("portal_id")?,
            remote_id: $r.try_get("remote_id")?,
            part: $r.try_get("part")?,
            event_id: $r.try_get("event_id")?,
            room_id: $r.try_get("room_id")?,
            sender: $r.try_get("sender")?,
            timestamp: $r.try_get("timestamp")?,
        }
    };
}

impl Store {
    /// Inserts or updates a portal.
    ///
    /// # Errors
    /// When the database fails (or the room is mapped to another portal already).
    pub async fn upsert_portal(&self, p: &PortalRow) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO mx_portal (remote_id, room_id, name, topic, avatar_url, metadata, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (remote_id) DO UPDATE SET \
                 room_id = excluded.room_id, name = excluded.name, topic = excluded.topic, \
                 avatar_url = excluded.avatar_url, metadata = excluded.metadata",
            )
            .bind(&p.remote_id)
            .bind(&p.room_id)
            .bind(&p.name)
            .bind(&p.topic)
            .bind(&p.avatar_url)
            .bind(&p.metadata)
            .bind(now_ms())
            .execute(pool)
            .await?;
        });
        // After the write: a lookup that read the old row cannot cache it any more.
        self.forget_cached_portals();
        Ok(())
    }

    /// The portal of a remote chat.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn portal_by_remote(&self, remote_id: &str) -> Result<Option<PortalRow>> {
        let sql = concat!("SELECT ", portal_cols!(), " FROM mx_portal WHERE remote_id = $1");
        with_reader!(self, |pool| {
            let row = sqlx::query(sql).bind(remote_id).fetch_optional(pool).await?;
            Ok(match row {
                Some(r) => Some(portal_from_row!(r)),
                None => None,
            })
        })
    }

    /// The portal bridged to a Matrix room.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn portal_by_room(&self, room_id: &str) -> Result<Option<PortalRow>> {
        let generation = {
            let cache = self.portal_cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(hit) = cache.by_room.get(room_id) {
                return Ok(hit.clone());
            }
            cache.generation
        };
        let sql = concat!("SELECT ", portal_cols!(), " FROM mx_portal WHERE room_id = $1");
        let found = with_reader!(self, |pool| {
            let row = sqlx::query(sql).bind(room_id).fetch_optional(pool).await?;
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
            cache.by_room.insert(room_id.to_owned(), found.clone());
        }
        Ok(found)
    }

    pub(super) fn forget_cached_portals(&self) {
        let mut cache = self.portal_cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.generation += 1;
        cache.by_room.clear();
    }

    /// Forgets a portal (its messages stay until deleted with [`Store::delete_messages`]).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn delete_portal(&self, remote_id: &str) -> Result<bool> {
        let n = with_pool!(self, |pool| {
            sqlx::query("DELETE FROM mx_portal WHERE remote_id = $1")
                .bind(remote_id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        self.forget_cached_portals();
        Ok(n > 0)
    }

    /// Inserts or updates a ghost.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn upsert_ghost(&self, g: &GhostRow) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO mx_ghost (remote_id, user_id, displayname, avatar_url, metadata) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (remote_id) DO UPDATE SET \
                 user_id = excluded.user_id, displayname = excluded.displayname, \
                 avatar_url = excluded.avatar_url, metadata = excluded.metadata",
            )
            .bind(&g.remote_id)
            .bind(&g.user_id)
            .bind(&g.displayname)
            .bind(&g.avatar_url)
            .bind(&g.metadata)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The ghost of a remote user.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn ghost_by_remote(&self, remote_id: &str) -> Result<Option<GhostRow>> {
        let sql = concat!("SELECT ", ghost_cols!(), " FROM mx_ghost WHERE remote_id = $1");
        with_reader!(self, |pool| {
            let row = sqlx::query(sql).bind(remote_id).fetch_optional(pool).await?;
            Ok(match row {
                Some(r) => Some(ghost_from_row!(r)),
                None => None,
            })
        })
    }

    /// The ghost with a Matrix user ID.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn ghost_by_user(&self, user_id: &str) -> Result<Option<GhostRow>> {
        let sql = concat!("SELECT ", ghost_cols!(), " FROM mx_ghost WHERE user_id = $1");
        with_reader!(self, |pool| {
            let row = sqlx::query(sql).bind(user_id).fetch_optional(pool).await?;
            Ok(match row {
                Some(r) => Some(ghost_from_row!(r)),
                None => None,
            })
        })
    }

    /// Records a message part ↔ event mapping.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn insert_message(&self, m: &MessageRow) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO mx_message (portal_id, remote_id, part, event_id, room_id, sender, timestamp) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(&m.portal_id)
            .bind(&m.remote_id)
            .bind(&m.part)
            .bind(&m.event_id)
            .bind(&m.room_id)
            .bind(&m.sender)
            .bind(m.timestamp)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The message mapped to a Matrix event.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn message_by_event(&self, event_id: &str) -> Result<Option<MessageRow>> {
        let sql = concat!("SELECT ", message_cols!(), " FROM mx_message WHERE event_id = $1");
        with_reader!(self, |pool| {
            let row = sqlx::query(sql).bind(event_id).fetch_optional(pool).await?;
            Ok(match row {
                Some(r) => Some(message_from_row!(r)),
                None => None,
            })
        })
    }

    /// The parts of a remote message, in part order.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn message_by_remote(
        &self,
        portal_id: &str,
        remote_id: &str,
    ) -> Result<Vec<MessageRow>> {
        let sql = concat!(
            "SELECT ",
            message_cols!(),
            " FROM mx_message WHERE portal_id = $1 AND remote_id = $2 ORDER BY part"
        );
        with_reader!(self, |pool| {
            let rows = sqlx::query(sql).bind(portal_id).bind(remote_id).fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push(message_from_row!(r));
            }
            Ok(out)
        })
    }

    /// Forgets every message of a remote chat.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn delete_messages(&self, portal_id: &str) -> Result<u64> {
        with_pool!(self, |pool| {
            Ok(sqlx::query("DELETE FROM mx_message WHERE portal_id = $1")
                .bind(portal_id)
                .execute(pool)
                .await?
                .rows_affected())
        })
    }

    /// How many ghosts and portals are known.
    ///
    /// # Errors
    /// When the database fails.
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
    ///
    /// # Errors
    /// When the database fails.
    pub async fn kv_put(&self, namespace: &str, key: &str, value: &str) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO mx_kv (namespace, key, value, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, \
                 updated_at = excluded.updated_at",
            )
            .bind(namespace)
            .bind(key)
            .bind(value)
            .bind(now_ms())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The value under a namespace and key.
    ///
    /// # Errors
    /// When the database fails.
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
    ///
    /// # Errors
    /// When the database fails.
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
    /// When the database fails or the value does not serialize.
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
    /// When the database fails or the stored JSON does not match `T`.
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
    /// When the database fails or a stored value does not match `T`.
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
    ///
    /// # Errors
    /// When the database fails.
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
