//! The Matrix state cache: membership, room state and registered users.
//!
//! Written from incoming transaction events (before the bridge sees them) and from successful
//! outgoing calls, so the intent layer answers "is this ghost joined?" without HTTP.

use std::fmt;

use sqlx::Row;

use super::{Result, Store, StoreError, now_ms, with_pool};

/// A membership state, as in `m.room.member`'s `membership`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Membership {
    /// Joined.
    Join,
    /// Invited.
    Invite,
    /// Left (or kicked).
    Leave,
    /// Banned.
    Ban,
    /// Knocking.
    Knock,
}

impl Membership {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::Invite => "invite",
            Self::Leave => "leave",
            Self::Ban => "ban",
            Self::Knock => "knock",
        }
    }

    /// Parses the wire string; unknown values give `None`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "join" => Self::Join,
            "invite" => Self::Invite,
            "leave" => Self::Leave,
            "ban" => Self::Ban,
            "knock" => Self::Knock,
            _ => return None,
        })
    }
}

impl fmt::Display for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One cached member of a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The user.
    pub user_id: String,
    /// Their membership.
    pub membership: Membership,
    /// Their per-room display name.
    pub displayname: Option<String>,
    /// Their per-room avatar.
    pub avatar_url: Option<String>,
}

/// Columns of `mx_room_state` that hold a JSON state event content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomStateField {
    /// `m.room.power_levels`.
    PowerLevels,
    /// `m.room.create`.
    Create,
    /// `m.room.join_rules`.
    JoinRules,
    /// `m.room.encryption`.
    Encryption,
}

impl RoomStateField {
    /// The field for a state event type this cache keeps, if any.
    pub fn for_event_type(kind: &str) -> Option<Self> {
        Some(match kind {
            "m.room.power_levels" => Self::PowerLevels,
            "m.room.create" => Self::Create,
            "m.room.join_rules" => Self::JoinRules,
            "m.room.encryption" => Self::Encryption,
            _ => return None,
        })
    }
}

impl Store {
    /// Records a user's membership in a room (with their per-room profile).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn set_membership(
        &self,
        room_id: &str,
        user_id: &str,
        membership: Membership,
        displayname: Option<&str>,
        avatar_url: Option<&str>,
    ) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO mx_membership (room_id, user_id, membership, displayname, avatar_url) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (room_id, user_id) DO UPDATE SET \
                 membership = excluded.membership, displayname = excluded.displayname, \
                 avatar_url = excluded.avatar_url",
            )
            .bind(room_id)
            .bind(user_id)
            .bind(membership.as_str())
            .bind(displayname)
            .bind(avatar_url)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// A user's cached membership in a room.
    ///
    /// # Errors
    /// When the database fails or holds an unknown membership.
    pub async fn member(&self, room_id: &str, user_id: &str) -> Result<Option<Member>> {
        with_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT user_id, membership, displayname, avatar_url FROM mx_membership \
                 WHERE room_id = $1 AND user_id = $2",
            )
            .bind(room_id)
            .bind(user_id)
            .fetch_optional(pool)
            .await?;
            row.map(|r| member_from_row(&r)).transpose()
        })
    }

    /// A user's cached membership in a room, if known.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn membership(&self, room_id: &str, user_id: &str) -> Result<Option<Membership>> {
        Ok(self.member(room_id, user_id).await?.map(|m| m.membership))
    }

    /// Cached members of a room with the given membership.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn members_with(&self, room_id: &str, membership: Membership) -> Result<Vec<Member>> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT user_id, membership, displayname, avatar_url FROM mx_membership \
                 WHERE room_id = $1 AND membership = $2 ORDER BY user_id",
            )
            .bind(room_id)
            .bind(membership.as_str())
            .fetch_all(pool)
            .await?;
            rows.iter().map(member_from_row).collect()
        })
    }

    /// Rooms the user is cached as joined to.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn joined_rooms(&self, user_id: &str) -> Result<Vec<String>> {
        with_pool!(self, |pool| {
            Ok(sqlx::query_scalar(
                "SELECT room_id FROM mx_membership WHERE user_id = $1 AND membership = 'join' \
                 ORDER BY room_id",
            )
            .bind(user_id)
            .fetch_all(pool)
            .await?)
        })
    }

    /// Stores the content of one of the cached room state events (JSON text).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn set_room_state(
        &self,
        room_id: &str,
        field: RoomStateField,
        content_json: &str,
    ) -> Result<()> {
        // Column names cannot be bound; they come from this fixed list, never from input.
        let sql = match field {
            RoomStateField::PowerLevels => {
                "INSERT INTO mx_room_state (room_id, power_levels) VALUES ($1, $2) \
                 ON CONFLICT (room_id) DO UPDATE SET power_levels = excluded.power_levels"
            }
            RoomStateField::Create => {
                "INSERT INTO mx_room_state (room_id, create_event) VALUES ($1, $2) \
                 ON CONFLICT (room_id) DO UPDATE SET create_event = excluded.create_event"
            }
            RoomStateField::JoinRules => {
                "INSERT INTO mx_room_state (room_id, join_rules) VALUES ($1, $2) \
                 ON CONFLICT (room_id) DO UPDATE SET join_rules = excluded.join_rules"
            }
            RoomStateField::Encryption => {
                "INSERT INTO mx_room_state (room_id, encryption) VALUES ($1, $2) \
                 ON CONFLICT (room_id) DO UPDATE SET encryption = excluded.encryption"
            }
        };
        with_pool!(self, |pool| {
            sqlx::query(sql).bind(room_id).bind(content_json).execute(pool).await?;
        });
        Ok(())
    }

    /// The cached content of a room state event (JSON text), if known.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn room_state(&self, room_id: &str, field: RoomStateField) -> Result<Option<String>> {
        let sql = match field {
            RoomStateField::PowerLevels => "SELECT power_levels FROM mx_room_state WHERE room_id = $1",
            RoomStateField::Create => "SELECT create_event FROM mx_room_state WHERE room_id = $1",
            RoomStateField::JoinRules => "SELECT join_rules FROM mx_room_state WHERE room_id = $1",
            RoomStateField::Encryption => "SELECT encryption FROM mx_room_state WHERE room_id = $1",
        };
        with_pool!(self, |pool| {
            let v: Option<Option<String>> =
                sqlx::query_scalar(sql).bind(room_id).fetch_optional(pool).await?;
            Ok(v.flatten())
        })
    }

    /// Records that the full member list of a room was fetched (so the cache is complete).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn set_members_fetched(&self, room_id: &str, fetched: bool) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO mx_room_state (room_id, members_fetched) VALUES ($1, $2) \
                 ON CONFLICT (room_id) DO UPDATE SET members_fetched = excluded.members_fetched",
            )
            .bind(room_id)
            .bind(fetched)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Whether the full member list of a room was fetched.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn members_fetched(&self, room_id: &str) -> Result<bool> {
        with_pool!(self, |pool| {
            let v: Option<bool> =
                sqlx::query_scalar("SELECT members_fetched FROM mx_room_state WHERE room_id = $1")
                    .bind(room_id)
                    .fetch_optional(pool)
                    .await?;
            Ok(v.unwrap_or(false))
        })
    }

    /// Remembers that a user is registered on the homeserver.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn mark_registered(&self, user_id: &str) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO mx_registered (user_id, registered_at) VALUES ($1, $2) \
                 ON CONFLICT (user_id) DO NOTHING",
            )
            .bind(user_id)
            .bind(now_ms())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Whether a user is known to be registered.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn is_registered(&self, user_id: &str) -> Result<bool> {
        with_pool!(self, |pool| {
            let v: Option<i64> =
                sqlx::query_scalar("SELECT registered_at FROM mx_registered WHERE user_id = $1")
                    .bind(user_id)
                    .fetch_optional(pool)
                    .await?;
            Ok(v.is_some())
        })
    }
}

fn member_from_row<R>(r: &R) -> Result<Member>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let raw: String = r.try_get("membership")?;
    Ok(Member {
        user_id: r.try_get("user_id")?,
        membership: Membership::parse(&raw)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown membership {raw:?}")))?,
        displayname: r.try_get("displayname")?,
        avatar_url: r.try_get("avatar_url")?,
    })
}
