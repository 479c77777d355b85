//! The bridge's users and their logins: `mx_user`, `mx_user_login`, which logins are in which
//! portal (`mx_user_portal`) and each portal's relay (`mx_portal_relay`).

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use sqlx::Row;

use super::{Result, Store, StoreError, now_ms, with_pool, with_reader, writer::BeginTx};
use crate::{
    login::{LoginState, NewLogin, UserLogin},
    remote::{PortalKey, RemoteLoginId},
    secret::Secret,
};

/// A stored Matrix user of the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// The Matrix user.
    pub user_id: OwnedUserId,
    /// Their management room (the DM with the bot), once known.
    pub management_room: Option<OwnedRoomId>,
    /// A token to act as them (double puppeting), once given.
    pub double_puppet_token: Option<Secret>,
}

/// What [`Store::add_login`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddLogin {
    /// A new login was stored.
    Added,
    /// The user's login of that account was replaced (logged in again).
    Replaced,
    /// The user has the most logins allowed already; nothing was stored.
    TooMany,
    /// Another Matrix user has that account logged in; nothing was stored.
    OtherUser(OwnedUserId),
}

fn corrupt(column: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{column}: {e}"))
}

macro_rules! login_cols {
    () => {
        "l.login_id, l.user_id, l.remote_name, l.state, l.state_reason, l.metadata"
    };
}

macro_rules! login_from_row {
    ($r:expr) => {{
        let user_id: String = $r.try_get("user_id")?;
        let state: String = $r.try_get("state")?;
        let metadata: String = $r.try_get("metadata")?;
        UserLogin {
            id: RemoteLoginId($r.try_get("login_id")?),
            user_id: OwnedUserId::try_from(user_id).map_err(|e| corrupt("user_id", e))?,
            remote_name: $r.try_get("remote_name")?,
            state: LoginState::parse(&state).ok_or_else(|| corrupt("state", &state))?,
            state_reason: $r.try_get("state_reason")?,
            metadata: serde_json::from_str(&metadata).map_err(|e| corrupt("metadata", e))?,
        }
    }};
}

macro_rules! logins_from_rows {
    ($rows:expr) => {{
        let mut out = Vec::with_capacity($rows.len());
        for r in $rows {
            out.push(login_from_row!(r));
        }
        out
    }};
}

impl Store {
    /// The stored user, if any.
    pub async fn user(&self, user_id: &UserId) -> Result<Option<UserRow>> {
        let sql = "SELECT user_id, management_room, double_puppet_token FROM mx_user \
                   WHERE user_id = $1";
        with_reader!(self, |pool| {
            let Some(r) = sqlx::query(sql).bind(user_id.as_str()).fetch_optional(pool).await?
            else {
                return Ok(None);
            };
            let room: Option<String> = r.try_get("management_room")?;
            let token: Option<String> = r.try_get("double_puppet_token")?;
            Ok(Some(UserRow {
                user_id: user_id.to_owned(),
                management_room: room
                    .map(OwnedRoomId::try_from)
                    .transpose()
                    .map_err(|e| corrupt("management_room", e))?,
                double_puppet_token: token.map(Secret::new),
            }))
        })
    }

    /// Stores the user unless stored already.
    pub async fn ensure_user(&self, user_id: &UserId) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO mx_user (user_id, created_at) VALUES ($1, $2) \
                 ON CONFLICT (user_id) DO NOTHING",
            )
            .bind(user_id.as_str())
            .bind(now_ms())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Sets (or clears) the user's management room, storing the user if needed.
    pub async fn set_management_room(&self, user_id: &UserId, room: Option<&RoomId>) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO mx_user (user_id, management_room, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id) DO UPDATE SET management_room = excluded.management_room",
            )
            .bind(user_id.as_str())
            .bind(room.map(RoomId::as_str))
            .bind(now_ms())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Sets (or clears) the user's double-puppet token, storing the user if needed.
    pub async fn set_double_puppet_token(
        &self,
        user_id: &UserId,
        token: Option<&Secret>,
    ) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO mx_user (user_id, double_puppet_token, created_at) \
                 VALUES ($1, $2, $3) ON CONFLICT (user_id) DO UPDATE \
                 SET double_puppet_token = excluded.double_puppet_token",
            )
            .bind(user_id.as_str())
            .bind(token.map(Secret::expose))
            .bind(now_ms())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Stores a completed login of `user_id` in state `state`, unless the user has
    /// `max_per_user` logins already (a login of the same account replaces its old row and
    /// does not count) or the account is another user's login. One database transaction: two
    /// logins at once cannot both take the last place.
    pub async fn add_login(
        &self,
        user_id: &UserId,
        login: &NewLogin,
        state: LoginState,
        max_per_user: usize,
    ) -> Result<AddLogin> {
        let metadata =
            serde_json::to_string(&login.metadata).map_err(|e| corrupt("metadata", e))?;
        let max = i64::try_from(max_per_user).unwrap_or(i64::MAX);
        with_pool!(self, |pool| {
            let mut conn = pool.acquire().await?;
            let mut tx = conn.begin_tx().await?;
            sqlx::query(
                "INSERT INTO mx_user (user_id, created_at) VALUES ($1, $2) \
                 ON CONFLICT (user_id) DO NOTHING",
            )
            .bind(user_id.as_str())
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            // Takes the user's row lock on PostgreSQL, so the count below stays true until the
            // commit (SQLite has one writer anyway).
            sqlx::query("UPDATE mx_user SET user_id = user_id WHERE user_id = $1")
                .bind(user_id.as_str())
                .execute(&mut *tx)
                .await?;
            let owner: Option<String> =
                sqlx::query_scalar("SELECT user_id FROM mx_user_login WHERE login_id = $1")
                    .bind(login.id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            let outcome = match owner {
                Some(owner) if owner != user_id.as_str() => {
                    let owner = OwnedUserId::try_from(owner).map_err(|e| corrupt("user_id", e))?;
                    return Ok(AddLogin::OtherUser(owner));
                }
                Some(_) => AddLogin::Replaced,
                None => {
                    let count: i64 =
                        sqlx::query_scalar("SELECT COUNT(*) FROM mx_user_login WHERE user_id = $1")
                            .bind(user_id.as_str())
                            .fetch_one(&mut *tx)
                            .await?;
                    if count >= max {
                        return Ok(AddLogin::TooMany);
                    }
                    AddLogin::Added
                }
            };
            sqlx::query(
                "INSERT INTO mx_user_login \
                 (login_id, user_id, remote_name, state, state_reason, metadata, created_at) \
                 VALUES ($1, $2, $3, $4, NULL, $5, $6) ON CONFLICT (login_id) DO UPDATE SET \
                 remote_name = excluded.remote_name, state = excluded.state, \
                 state_reason = NULL, metadata = excluded.metadata",
            )
            .bind(login.id.as_str())
            .bind(user_id.as_str())
            .bind(&login.remote_name)
            .bind(state.as_str())
            .bind(&metadata)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(outcome)
        })
    }

    /// A login by its ID.
    pub async fn login(&self, id: &RemoteLoginId) -> Result<Option<UserLogin>> {
        let sql = concat!("SELECT ", login_cols!(), " FROM mx_user_login l WHERE l.login_id = $1");
        with_reader!(self, |pool| {
            let row = sqlx::query(sql).bind(id.as_str()).fetch_optional(pool).await?;
            Ok(match row {
                Some(r) => Some(login_from_row!(r)),
                None => None,
            })
        })
    }

    /// A user's logins, oldest first.
    pub async fn logins_of(&self, user_id: &UserId) -> Result<Vec<UserLogin>> {
        let sql = concat!(
            "SELECT ",
            login_cols!(),
            " FROM mx_user_login l WHERE l.user_id = $1 ORDER BY l.created_at, l.login_id"
        );
        with_reader!(self, |pool| {
            let rows = sqlx::query(sql).bind(user_id.as_str()).fetch_all(pool).await?;
            Ok(logins_from_rows!(rows))
        })
    }

    /// Every login, oldest first (to reconnect them at start).
    pub async fn all_logins(&self) -> Result<Vec<UserLogin>> {
        let sql = concat!(
            "SELECT ",
            login_cols!(),
            " FROM mx_user_login l ORDER BY l.created_at, l.login_id"
        );
        with_reader!(self, |pool| {
            let rows = sqlx::query(sql).fetch_all(pool).await?;
            Ok(logins_from_rows!(rows))
        })
    }

    /// Records a login's state and its reason. Returns the state it had, or `None` when there
    /// is no such login.
    pub async fn set_login_state(
        &self,
        id: &RemoteLoginId,
        state: LoginState,
        reason: Option<&str>,
    ) -> Result<Option<LoginState>> {
        with_pool!(self, |pool| {
            let mut conn = pool.acquire().await?;
            let mut tx = conn.begin_tx().await?;
            let old: Option<String> =
                sqlx::query_scalar("SELECT state FROM mx_user_login WHERE login_id = $1")
                    .bind(id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(old) = old else { return Ok(None) };
            sqlx::query(
                "UPDATE mx_user_login SET state = $2, state_reason = $3 WHERE login_id = $1",
            )
            .bind(id.as_str())
            .bind(state.as_str())
            .bind(reason)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Some(LoginState::parse(&old).ok_or_else(|| corrupt("state", &old))?))
        })
    }

    /// Replaces a login's remote name and metadata. Returns whether there was such a login.
    pub async fn update_login(
        &self,
        id: &RemoteLoginId,
        remote_name: &str,
        metadata: &serde_json::Value,
    ) -> Result<bool> {
        let metadata = serde_json::to_string(metadata).map_err(|e| corrupt("metadata", e))?;
        let n = with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE mx_user_login SET remote_name = $2, metadata = $3 WHERE login_id = $1",
            )
            .bind(id.as_str())
            .bind(remote_name)
            .bind(&metadata)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n > 0)
    }

    /// Forgets a login, with its portal memberships and the relays it was. Returns whether
    /// there was one.
    pub async fn delete_login(&self, id: &RemoteLoginId) -> Result<bool> {
        let n = with_pool!(self, |pool| {
            sqlx::query("DELETE FROM mx_user_login WHERE login_id = $1")
                .bind(id.as_str())
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }

    /// Records that a login is in a portal (a member of the remote chat).
    pub async fn add_login_to_portal(&self, id: &RemoteLoginId, portal: &PortalKey) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO mx_user_portal (login_id, chat, receiver) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(id.as_str())
            .bind(portal.chat.as_str())
            .bind(portal.receiver_str())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Records that a login left a portal. Returns whether it was in it.
    pub async fn remove_login_from_portal(
        &self,
        id: &RemoteLoginId,
        portal: &PortalKey,
    ) -> Result<bool> {
        let n = with_pool!(self, |pool| {
            sqlx::query(
                "DELETE FROM mx_user_portal WHERE login_id = $1 AND chat = $2 AND receiver = $3",
            )
            .bind(id.as_str())
            .bind(portal.chat.as_str())
            .bind(portal.receiver_str())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n > 0)
    }

    /// The logins in a portal, oldest first.
    pub async fn logins_in_portal(&self, portal: &PortalKey) -> Result<Vec<UserLogin>> {
        let sql = concat!(
            "SELECT ",
            login_cols!(),
            " FROM mx_user_login l JOIN mx_user_portal p ON p.login_id = l.login_id \
             WHERE p.chat = $1 AND p.receiver = $2 ORDER BY l.created_at, l.login_id"
        );
        with_reader!(self, |pool| {
            let rows = sqlx::query(sql)
                .bind(portal.chat.as_str())
                .bind(portal.receiver_str())
                .fetch_all(pool)
                .await?;
            Ok(logins_from_rows!(rows))
        })
    }

    /// A user's logins in a portal, oldest first.
    pub async fn user_logins_in_portal(
        &self,
        user_id: &UserId,
        portal: &PortalKey,
    ) -> Result<Vec<UserLogin>> {
        let sql = concat!(
            "SELECT ",
            login_cols!(),
            " FROM mx_user_login l JOIN mx_user_portal p ON p.login_id = l.login_id \
             WHERE l.user_id = $1 AND p.chat = $2 AND p.receiver = $3 \
             ORDER BY l.created_at, l.login_id"
        );
        with_reader!(self, |pool| {
            let rows = sqlx::query(sql)
                .bind(user_id.as_str())
                .bind(portal.chat.as_str())
                .bind(portal.receiver_str())
                .fetch_all(pool)
                .await?;
            Ok(logins_from_rows!(rows))
        })
    }

    /// The portals a login is in.
    pub async fn portals_of_login(&self, id: &RemoteLoginId) -> Result<Vec<PortalKey>> {
        with_reader!(self, |pool| {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT chat, receiver FROM mx_user_portal WHERE login_id = $1 \
                 ORDER BY chat, receiver",
            )
            .bind(id.as_str())
            .fetch_all(pool)
            .await?;
            Ok(rows.into_iter().map(|(c, r)| PortalKey::from_stored(c, r)).collect())
        })
    }

    /// A login's space, once created.
    pub async fn login_space(&self, id: &RemoteLoginId) -> Result<Option<OwnedRoomId>> {
        with_reader!(self, |pool| {
            let room: Option<Option<String>> =
                sqlx::query_scalar("SELECT space_room FROM mx_user_login WHERE login_id = $1")
                    .bind(id.as_str())
                    .fetch_optional(pool)
                    .await?;
            room.flatten()
                .map(OwnedRoomId::try_from)
                .transpose()
                .map_err(|e| corrupt("space_room", e))
        })
    }

    /// Records a login's space. Returns whether there was such a login.
    pub async fn set_login_space(&self, id: &RemoteLoginId, room: &RoomId) -> Result<bool> {
        let n = with_pool!(self, |pool| {
            sqlx::query("UPDATE mx_user_login SET space_room = $2 WHERE login_id = $1")
                .bind(id.as_str())
                .bind(room.as_str())
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }

    /// Forgets which logins are in a portal, and its relay (the portal is gone).
    pub async fn forget_portal_logins(&self, portal: &PortalKey) -> Result<()> {
        with_pool!(self, |pool| {
            let mut conn = pool.acquire().await?;
            let mut tx = conn.begin_tx().await?;
            for sql in [
                "DELETE FROM mx_user_portal WHERE chat = $1 AND receiver = $2",
                "DELETE FROM mx_portal_relay WHERE chat = $1 AND receiver = $2",
            ] {
                sqlx::query(sql)
                    .bind(portal.chat.as_str())
                    .bind(portal.receiver_str())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The portals with a room that no login is in, and whose receiver (for per-login
    /// portals) is no stored login.
    pub async fn portals_without_logins(&self) -> Result<Vec<PortalKey>> {
        with_reader!(self, |pool| {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT p.chat, p.receiver FROM mx_portal p WHERE p.room_id IS NOT NULL \
                 AND NOT EXISTS (SELECT 1 FROM mx_user_portal u \
                     WHERE u.chat = p.chat AND u.receiver = p.receiver) \
                 AND NOT EXISTS (SELECT 1 FROM mx_user_login l WHERE l.login_id = p.receiver) \
                 ORDER BY p.chat, p.receiver",
            )
            .fetch_all(pool)
            .await?;
            Ok(rows.into_iter().map(|(c, r)| PortalKey::from_stored(c, r)).collect())
        })
    }

    /// Sets (or with `None` clears) a portal's relay login.
    pub async fn set_portal_relay(
        &self,
        portal: &PortalKey,
        login: Option<&RemoteLoginId>,
    ) -> Result<()> {
        with_pool!(self, |pool| {
            match login {
                Some(login) => sqlx::query(
                    "INSERT INTO mx_portal_relay (chat, receiver, login_id) VALUES ($1, $2, $3) \
                     ON CONFLICT (chat, receiver) DO UPDATE SET login_id = excluded.login_id",
                )
                .bind(portal.chat.as_str())
                .bind(portal.receiver_str())
                .bind(login.as_str())
                .execute(pool)
                .await?,
                None => {
                    sqlx::query("DELETE FROM mx_portal_relay WHERE chat = $1 AND receiver = $2")
                        .bind(portal.chat.as_str())
                        .bind(portal.receiver_str())
                        .execute(pool)
                        .await?
                }
            };
        });
        Ok(())
    }

    /// A portal's relay login, if it has one.
    pub async fn portal_relay(&self, portal: &PortalKey) -> Result<Option<UserLogin>> {
        let sql = concat!(
            "SELECT ",
            login_cols!(),
            " FROM mx_user_login l JOIN mx_portal_relay r ON r.login_id = l.login_id \
             WHERE r.chat = $1 AND r.receiver = $2"
        );
        with_reader!(self, |pool| {
            let row = sqlx::query(sql)
                .bind(portal.chat.as_str())
                .bind(portal.receiver_str())
                .fetch_optional(pool)
                .await?;
            Ok(match row {
                Some(r) => Some(login_from_row!(r)),
                None => None,
            })
        })
    }
}
