//! The Matrix state cache: membership, room state and registered users.
//!
//! Written from incoming transaction events (before the bridge sees them) and from successful
//! outgoing calls, so the intent layer answers "is this ghost joined?" without HTTP. Memberships
//! and registrations are also kept in a bounded in-memory cache (`state_cache.rs`), so that
//! question usually needs no database query either.

use std::{fmt, sync::PoisonError};

use ruma::{MxcUri, OwnedMxcUri, OwnedRoomId, OwnedUserId, RoomId, UserId};
use sqlx::Row;
use tokio::sync::oneshot;

use super::{
    Backend, Result, Store, StoreError, inbox::RowsSql, mappings::id_column, now_ms,
    state_cache::CachedMember, with_pool, with_reader, with_relaxed,
};

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
    pub user_id: OwnedUserId,
    /// Their membership.
    pub membership: Membership,
    /// Their per-room display name.
    pub displayname: Option<String>,
    /// Their per-room avatar.
    pub avatar_url: Option<OwnedMxcUri>,
}

impl Member {
    /// This member as a row of `room_id`, for [`Store::set_membership`].
    pub fn row<'a>(&'a self, room_id: &'a RoomId) -> MemberRow<'a> {
        MemberRow {
            room_id,
            user_id: &self.user_id,
            membership: self.membership,
            displayname: self.displayname.as_deref(),
            avatar_url: self.avatar_url.as_deref(),
        }
    }
}

/// A user's membership in a room, with their per-room profile: what
/// [`Store::set_membership`] records.
///
/// ```
/// # use mxbridge::store::{MemberRow, Membership};
/// # let (room, user) = (ruma::room_id!("!r:x"), ruma::user_id!("@u:x"));
/// let row = MemberRow { displayname: Some("U"), ..MemberRow::new(room, user, Membership::Join) };
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberRow<'a> {
    /// The room.
    pub room_id: &'a RoomId,
    /// The user.
    pub user_id: &'a UserId,
    /// Their membership.
    pub membership: Membership,
    /// Their per-room display name.
    pub displayname: Option<&'a str>,
    /// Their per-room avatar.
    pub avatar_url: Option<&'a MxcUri>,
}

impl<'a> MemberRow<'a> {
    /// A membership without a per-room profile.
    pub fn new(room_id: &'a RoomId, user_id: &'a UserId, membership: Membership) -> Self {
        Self { room_id, user_id, membership, displayname: None, avatar_url: None }
    }
}

/// Columns of `mx_room_state` that hold a JSON state event: its content, except for
/// [`RoomStateField::Create`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomStateField {
    /// `m.room.power_levels`.
    PowerLevels,
    /// `m.room.create`, the whole event: its `sender` is the room's first creator from room
    /// version 11 on. (Rows written before held only the content.)
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

/// Rooms' `m.room.encryption` content (or its absence), in front of `mx_room_state`: an intent
/// with the bridge device asks for it before every send. Every write of it goes through
/// [`Store::set_room_state`], which empties the room's entry before its database write and
/// fills it after; a read fills an entry only when no write ended meanwhile (`writes`).
#[derive(Debug, Default)]
pub(crate) struct EncryptionCache {
    rooms: crate::util::FastMap<OwnedRoomId, Option<String>>,
    writes: u64,
}

impl EncryptionCache {
    /// Rooms kept; the cache starts again empty when full.
    const CAP: usize = 100_000;

    fn forget(&mut self, room_id: &RoomId) {
        self.writes += 1;
        self.rooms.remove(room_id);
    }

    fn put(&mut self, room_id: &RoomId, value: Option<String>) {
        if self.rooms.len() >= Self::CAP {
            self.rooms.clear();
        }
        self.rooms.insert(room_id.to_owned(), value);
    }
}

/// A [`MemberRow`] that a write owns: it outlives its caller (see [`Store::set_membership`]).
#[derive(Debug, Clone)]
struct OwnedRow {
    room_id: String,
    user_id: String,
    membership: Membership,
    displayname: Option<String>,
    avatar_url: Option<String>,
}

impl From<MemberRow<'_>> for OwnedRow {
    fn from(row: MemberRow<'_>) -> Self {
        Self {
            room_id: row.room_id.as_str().to_owned(),
            user_id: row.user_id.as_str().to_owned(),
            membership: row.membership,
            displayname: row.displayname.map(str::to_owned),
            avatar_url: row.avatar_url.map(|a| a.as_str().to_owned()),
        }
    }
}

/// A queued row and where its outcome goes.
type QueuedMember = (OwnedRow, oneshot::Sender<Result<(), String>>);

/// SQLite's membership writes, grouped: rows that arrive while another group is being written go
/// to the database together, in one statement, written by whichever writer takes the turn next
/// (as the intake's group commit does with transactions). Every writer still waits for its own
/// row's commit. An incoming member event writes its row before the bridge sees the event, and
/// rooms run in parallel, so under load many wait at once; on the one SQLite connection each
/// statement is a hop between threads and a commit.
#[derive(Debug, Default)]
pub(crate) struct MemberWrites {
    queue: std::sync::Mutex<Vec<QueuedMember>>,
    turn: tokio::sync::Mutex<()>,
}

impl MemberWrites {
    /// Writes `row`, possibly with others, and returns once it is committed.
    async fn write(&self, pool: &super::writer::SqliteWriter, row: OwnedRow) -> Result<()> {
        let (done, mut outcome) = oneshot::channel();
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).push((row, done));
        let turn = self.turn.lock().await;
        // Written by the writer before us, or still queued: then we write everything queued.
        let result = match outcome.try_recv() {
            Ok(result) => result,
            Err(_) => {
                let group =
                    std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner));
                let result = write_member_rows(pool, &group).await.map_err(|e| e.to_string());
                for (_, done) in group {
                    let _ = done.send(result.clone());
                }
                drop(turn);
                outcome.await.unwrap_or_else(|_| Err("the membership write was lost".into()))
            }
        };
        result.map_err(|e| StoreError::Database(sqlx::Error::Io(std::io::Error::other(e))))
    }
}

/// Upserts `rows` in order (a later row of the same room and user wins), a chunk per statement.
async fn write_member_rows(
    pool: &super::writer::SqliteWriter,
    rows: &[QueuedMember],
) -> Result<()> {
    for chunk in rows.chunks(super::inbox::INSERT_CHUNK) {
        let mut query = sqlx::query(super::inbox::rows_sql(RowsSql::Members, chunk.len()));
        for (row, _) in chunk {
            query = query
                .bind(row.room_id.as_str())
                .bind(row.user_id.as_str())
                .bind(row.membership.as_str())
                .bind(row.displayname.as_deref())
                .bind(row.avatar_url.as_deref());
        }
        query.execute(pool).await?;
    }
    Ok(())
}

impl Store {
    /// Records a user's membership in a room (with their per-room profile).
    ///
    /// The in-memory cache has the new row once the database took it; after an error it holds
    /// nothing for this room and user (the next lookup reads the database). The write runs in
    /// its own task: if the caller stops waiting, it still finishes and the cache learns how.
    ///
    /// A write that changes nothing the cache knows (the same membership and profile) makes no
    /// query: the homeserver echoes every join and profile change a ghost makes, and the
    /// intent layer recorded it already.
    pub async fn set_membership(&self, row: MemberRow<'_>) -> Result<()> {
        if self.state_cache.holds(row) {
            return Ok(());
        }
        let store = self.clone();
        let row = OwnedRow::from(row);
        // A write dropped half-way could still commit after the cache forgot it (SQLite's worker
        // thread runs a query to its end), so it is never dropped half-way.
        let task = tokio::spawn(async move { store.write_membership(&row).await });
        match task.await {
            Ok(result) => result,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(_) => Err(StoreError::Database(sqlx::Error::Io(std::io::Error::other(
                "the runtime shut down during a membership write",
            )))),
        }
    }

    async fn write_membership(&self, row: &OwnedRow) -> Result<()> {
        // Dropped on an error: the entry stays empty.
        let write = self.state_cache.begin_member_write(&row.room_id, &row.user_id);
        let (displayname, avatar_url) = (row.displayname.as_deref(), row.avatar_url.as_deref());
        if let Backend::Sqlite(pool) = &self.backend {
            self.member_writes.write(pool, row.clone()).await?;
            write.stored(CachedMember::new(row.membership, displayname, avatar_url));
            return Ok(());
        }
        with_relaxed!(self, |pool| {
            sqlx::query(
                "INSERT INTO mx_membership (room_id, user_id, membership, displayname, avatar_url) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (room_id, user_id) DO UPDATE SET \
                 membership = excluded.membership, displayname = excluded.displayname, \
                 avatar_url = excluded.avatar_url \
                 WHERE (mx_membership.membership, mx_membership.displayname, \
                 mx_membership.avatar_url) \
                 IS DISTINCT FROM (excluded.membership, excluded.displayname, excluded.avatar_url)",
            )
            .bind(row.room_id.as_str())
            .bind(row.user_id.as_str())
            .bind(row.membership.as_str())
            .bind(displayname)
            .bind(avatar_url)
            .execute(pool)
            .await?;
        });
        write.stored(CachedMember::new(row.membership, displayname, avatar_url));
        Ok(())
    }

    /// Records the memberships of many users of one room (a member list fetched from the
    /// homeserver), as [`Store::set_membership`] does for one: rows that would change nothing
    /// make no query, and on SQLite the others are written in few statements.
    ///
    /// # Errors
    /// Rows written before a failure stay.
    pub async fn set_room_members(&self, room_id: &RoomId, members: &[Member]) -> Result<()> {
        use futures_util::TryStreamExt as _;
        /// Writes waiting at once: SQLite groups them into one statement, PostgreSQL runs them
        /// on that many connections at most.
        const AT_ONCE: usize = 32;
        futures_util::stream::iter(members.iter().map(Ok))
            .try_for_each_concurrent(AT_ONCE, |m| self.set_membership(m.row(room_id)))
            .await
    }

    /// A user's cached membership in a room: from memory when known there, else from the
    /// database (and then remembered, also when there is no row).
    pub async fn member(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<Member>> {
        let (room, user) = (room_id.as_str(), user_id.as_str());
        match self.state_cache.member(room, user) {
            Ok(hit) => Ok(hit.map(|m| m.to_member(user_id))),
            Err(ticket) => {
                let member = self.member_from_db(room_id, user_id).await?;
                self.state_cache.fill_member(ticket, room, user, member.as_ref());
                Ok(member)
            }
        }
    }

    /// A user's cached membership in a room, if known. A hit in memory makes no query (see
    /// [`Store::member`]).
    pub async fn membership(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<Membership>> {
        let (room, user) = (room_id.as_str(), user_id.as_str());
        match self.state_cache.membership(room, user) {
            Ok(hit) => Ok(hit),
            Err(ticket) => {
                let member = self.member_from_db(room_id, user_id).await?;
                self.state_cache.fill_member(ticket, room, user, member.as_ref());
                Ok(member.map(|m| m.membership))
            }
        }
    }

    async fn member_from_db(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<Member>> {
        with_reader!(self, |pool| {
            let row = sqlx::query(
                "SELECT user_id, membership, displayname, avatar_url FROM mx_membership \
                 WHERE room_id = $1 AND user_id = $2",
            )
            .bind(room_id.as_str())
            .bind(user_id.as_str())
            .fetch_optional(pool)
            .await?;
            row.map(|r| member_from_row(&r)).transpose()
        })
    }

    /// Cached members of a room with the given membership.
    pub async fn members_with(
        &self,
        room_id: &RoomId,
        membership: Membership,
    ) -> Result<Vec<Member>> {
        with_reader!(self, |pool| {
            let rows = sqlx::query(
                "SELECT user_id, membership, displayname, avatar_url FROM mx_membership \
                 WHERE room_id = $1 AND membership = $2 ORDER BY user_id",
            )
            .bind(room_id.as_str())
            .bind(membership.as_str())
            .fetch_all(pool)
            .await?;
            rows.iter().map(member_from_row).collect()
        })
    }

    /// Rooms the user is cached as joined to.
    pub async fn joined_rooms(&self, user_id: &UserId) -> Result<Vec<OwnedRoomId>> {
        let rooms: Vec<String> = with_reader!(self, |pool| {
            sqlx::query_scalar(
                "SELECT room_id FROM mx_membership WHERE user_id = $1 AND membership = 'join' \
                 ORDER BY room_id",
            )
            .bind(user_id.as_str())
            .fetch_all(pool)
            .await?
        });
        rooms
            .into_iter()
            .map(|r| {
                OwnedRoomId::try_from(r)
                    .map_err(|e| StoreError::Corrupt(format!("mx_membership.room_id: {e}")))
            })
            .collect()
    }

    /// Stores one of the cached room state events (JSON text: the content, or the whole event
    /// for [`RoomStateField::Create`]).
    pub async fn set_room_state(
        &self,
        room_id: &RoomId,
        field: RoomStateField,
        json: &str,
    ) -> Result<()> {
        if field == RoomStateField::Encryption {
            self.encryption_cache().forget(room_id);
            let written = Box::pin(self.write_room_state(room_id, field, json)).await;
            let mut cache = self.encryption_cache();
            cache.writes += 1;
            if written.is_ok() {
                cache.put(room_id, Some(json.to_owned()));
            }
            return written;
        }
        self.write_room_state(room_id, field, json).await
    }

    fn encryption_cache(&self) -> std::sync::MutexGuard<'_, EncryptionCache> {
        self.encryption_cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn write_room_state(
        &self,
        room_id: &RoomId,
        field: RoomStateField,
        json: &str,
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
        with_relaxed!(self, |pool| {
            sqlx::query(sql).bind(room_id.as_str()).bind(json).execute(pool).await?;
        });
        Ok(())
    }

    /// A cached room state event (JSON text, as [`Store::set_room_state`] took it), if known.
    pub async fn room_state(
        &self,
        room_id: &RoomId,
        field: RoomStateField,
    ) -> Result<Option<String>> {
        if field != RoomStateField::Encryption {
            return self.read_room_state(room_id, field).await;
        }
        let writes = {
            let cache = self.encryption_cache();
            if let Some(known) = cache.rooms.get(room_id) {
                return Ok(known.clone());
            }
            cache.writes
        };
        let read = self.read_room_state(room_id, field).await?;
        let mut cache = self.encryption_cache();
        if cache.writes == writes {
            cache.put(room_id, read.clone());
        }
        Ok(read)
    }

    async fn read_room_state(
        &self,
        room_id: &RoomId,
        field: RoomStateField,
    ) -> Result<Option<String>> {
        let sql = match field {
            RoomStateField::PowerLevels => {
                "SELECT power_levels FROM mx_room_state WHERE room_id = $1"
            }
            RoomStateField::Create => "SELECT create_event FROM mx_room_state WHERE room_id = $1",
            RoomStateField::JoinRules => "SELECT join_rules FROM mx_room_state WHERE room_id = $1",
            RoomStateField::Encryption => "SELECT encryption FROM mx_room_state WHERE room_id = $1",
        };
        with_reader!(self, |pool| {
            let v: Option<Option<String>> =
                sqlx::query_scalar(sql).bind(room_id.as_str()).fetch_optional(pool).await?;
            Ok(v.flatten())
        })
    }

    /// Records that the full member list of a room was fetched (so the cache is complete).
    pub async fn set_members_fetched(&self, room_id: &RoomId, fetched: bool) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO mx_room_state (room_id, members_fetched) VALUES ($1, $2) \
                 ON CONFLICT (room_id) DO UPDATE SET members_fetched = excluded.members_fetched",
            )
            .bind(room_id.as_str())
            .bind(fetched)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Whether the full member list of a room was fetched.
    pub async fn members_fetched(&self, room_id: &RoomId) -> Result<bool> {
        with_reader!(self, |pool| {
            let v: Option<bool> =
                sqlx::query_scalar("SELECT members_fetched FROM mx_room_state WHERE room_id = $1")
                    .bind(room_id.as_str())
                    .fetch_optional(pool)
                    .await?;
            Ok(v.unwrap_or(false))
        })
    }

    /// Remembers that a user is registered on the homeserver (in the database, then in memory).
    pub async fn mark_registered(&self, user_id: &UserId) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO mx_registered (user_id, registered_at) VALUES ($1, $2) \
                 ON CONFLICT (user_id) DO NOTHING",
            )
            .bind(user_id.as_str())
            .bind(now_ms())
            .execute(pool)
            .await?;
        });
        self.state_cache.note_registered(user_id.as_str());
        Ok(())
    }

    /// Whether a user is known to be registered. A user known in memory makes no query; a
    /// registered user found in the database is remembered (registrations are never removed).
    pub async fn is_registered(&self, user_id: &UserId) -> Result<bool> {
        let Err(ticket) = self.state_cache.is_registered(user_id.as_str()) else {
            return Ok(true);
        };
        let registered = with_reader!(self, |pool| {
            let v: Option<i64> =
                sqlx::query_scalar("SELECT registered_at FROM mx_registered WHERE user_id = $1")
                    .bind(user_id.as_str())
                    .fetch_optional(pool)
                    .await?;
            v.is_some()
        });
        if registered {
            self.state_cache.fill_registered(ticket, user_id.as_str());
        }
        Ok(registered)
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
        user_id: id_column(r, "user_id")?,
        membership: Membership::parse(&raw)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown membership {raw:?}")))?,
        displayname: r.try_get("displayname")?,
        avatar_url: r.try_get::<Option<String>, _>("avatar_url")?.map(OwnedMxcUri::from),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ruma::{room_id, user_id};

    use super::*;

    async fn sql(store: &Store, sql: &'static str) {
        with_pool!(store, |pool| {
            sqlx::query(sql).execute(pool).await.unwrap();
        });
    }

    fn room(name: &str) -> OwnedRoomId {
        RoomId::parse(format!("!{name}:x")).unwrap()
    }

    /// A room's encryption is answered from memory once read or written, absent included, and
    /// a write replaces the answer.
    #[tokio::test]
    async fn room_encryption_is_answered_from_memory_and_follows_writes() {
        let store = Store::connect_url("sqlite::memory:").await.unwrap();
        let (clear, enc) = (room_id!("!clear:x"), room_id!("!enc:x"));
        let megolm = r#"{"algorithm":"m.megolm.v1.aes-sha2"}"#;
        store.set_room_state(enc, RoomStateField::Encryption, megolm).await.unwrap();
        assert_eq!(store.room_state(clear, RoomStateField::Encryption).await.unwrap(), None);
        sql(&store, "ALTER TABLE mx_room_state RENAME TO mx_room_state_away").await;
        let cached = store.room_state(enc, RoomStateField::Encryption).await.unwrap();
        assert_eq!(cached.as_deref(), Some(megolm));
        assert_eq!(store.room_state(clear, RoomStateField::Encryption).await.unwrap(), None);
        sql(&store, "ALTER TABLE mx_room_state_away RENAME TO mx_room_state").await;
        store.set_room_state(clear, RoomStateField::Encryption, megolm).await.unwrap();
        let now = store.room_state(clear, RoomStateField::Encryption).await.unwrap();
        assert_eq!(now.as_deref(), Some(megolm));
    }

    #[tokio::test]
    async fn cached_answers_need_no_query() {
        let store = Store::connect_url("sqlite::memory:").await.unwrap();
        let (r, g, nobody) = (room_id!("!r:x"), user_id!("@g:x"), user_id!("@nobody:x"));
        let row = MemberRow { displayname: Some("G"), ..MemberRow::new(r, g, Membership::Join) };
        store.set_membership(row).await.unwrap();
        store.mark_registered(g).await.unwrap();
        // Filled by reads too, absent rows included.
        assert_eq!(store.membership(r, nobody).await.unwrap(), None);
        sql(&store, "ALTER TABLE mx_membership RENAME TO mx_membership_away").await;
        sql(&store, "ALTER TABLE mx_registered RENAME TO mx_registered_away").await;
        assert_eq!(store.membership(r, g).await.unwrap(), Some(Membership::Join));
        let member = store.member(r, g).await.unwrap().unwrap();
        assert_eq!((&*member.user_id, member.displayname.as_deref()), (g, Some("G")));
        assert!(store.is_registered(g).await.unwrap());
        assert_eq!(store.membership(r, nobody).await.unwrap(), None);
        // Anything not cached goes to the (missing) table.
        assert!(store.membership(r, user_id!("@h:x")).await.is_err());
        assert!(store.is_registered(user_id!("@h:x")).await.is_err());
    }

    #[tokio::test]
    async fn a_failed_write_leaves_the_database_answer() {
        let store = Store::connect_url("sqlite::memory:").await.unwrap();
        let (r, g) = (room_id!("!r:x"), user_id!("@g:x"));
        store.set_membership(MemberRow::new(r, g, Membership::Join)).await.unwrap();
        sql(
            &store,
            "CREATE TRIGGER refuse BEFORE UPDATE ON mx_membership \
             BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .await;
        assert!(store.set_membership(MemberRow::new(r, g, Membership::Leave)).await.is_err());
        assert_eq!(store.state_cache.len().0, 0, "the entry is gone, not claiming leave");
        assert_eq!(store.membership(r, g).await.unwrap(), Some(Membership::Join));
        sql(&store, "DROP TRIGGER refuse").await;
        store.set_membership(MemberRow::new(r, g, Membership::Leave)).await.unwrap();
        assert_eq!(store.membership(r, g).await.unwrap(), Some(Membership::Leave));
    }

    #[tokio::test]
    async fn a_write_whose_caller_gave_up_still_reaches_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/s.db", dir.path().display());
        let store = Store::connect_url(&url).await.unwrap();
        let (r, g) = (room_id!("!r:x"), user_id!("@g:x"));
        store.set_membership(MemberRow::new(r, g, Membership::Join)).await.unwrap();
        // Another connection holds the write lock, so the next write waits (busy timeout).
        let other = sqlx::SqlitePool::connect(&url).await.unwrap();
        let mut locker = other.acquire().await.unwrap();
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *locker).await.unwrap();
        let gave_up = tokio::time::timeout(
            Duration::from_millis(200),
            store.set_membership(MemberRow::new(r, g, Membership::Ban)),
        )
        .await;
        assert!(gave_up.is_err(), "the write waited for the lock");
        // Meanwhile the database still has the old row, and the cache claims neither the old
        // nor the new membership. A read through the store does not wait for the stuck write:
        // it runs on a reader connection.
        assert_eq!(store.state_cache.len().0, 0, "the cache claims nothing during the write");
        let read = tokio::time::timeout(Duration::from_secs(2), store.membership(r, g));
        assert_eq!(read.await.expect("the read waited").unwrap(), Some(Membership::Join));
        let row: (String,) = sqlx::query_as(
            "SELECT membership FROM mx_membership WHERE room_id = '!r:x' AND user_id = '@g:x'",
        )
        .fetch_one(&mut *locker)
        .await
        .unwrap();
        assert_eq!(row.0, "join");
        sqlx::query("ROLLBACK").execute(&mut *locker).await.unwrap();
        drop(locker);
        // The write finishes on its own, and the cache follows.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.membership(r, g).await.unwrap() != Some(Membership::Ban) {
            assert!(std::time::Instant::now() < deadline, "the cache kept the old membership");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(store.member_from_db(r, g).await.unwrap().unwrap().membership, Membership::Ban);
    }

    /// Membership writes that meet wait as one group, go to SQLite together, and keep their
    /// order: of two writes of one room and user, the later wins, in the database and the cache.
    #[tokio::test]
    async fn membership_writes_that_meet_are_written_together_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/s.db", dir.path().display());
        let store = Store::connect_url(&url).await.unwrap();
        let queued = |store: &Store| store.member_writes.queue.lock().unwrap().len();
        let (g, same) = (user_id!("@g:x"), user_id!("@same:x"));
        // Another connection holds the write lock: the first write takes the turn and waits.
        let other = sqlx::SqlitePool::connect(&url).await.unwrap();
        let mut locker = other.acquire().await.unwrap();
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *locker).await.unwrap();
        let spawn = |room: OwnedRoomId, user: &'static UserId, m: Membership| {
            let store = store.clone();
            tokio::spawn(async move { store.set_membership(MemberRow::new(&room, user, m)).await })
        };
        let mut writes = vec![spawn(room("first"), g, Membership::Join)];
        while store.member_writes.turn.try_lock().is_ok() {
            tokio::task::yield_now().await;
        }
        // These queue behind it, in this order.
        for (i, m) in [Membership::Join, Membership::Leave].into_iter().enumerate() {
            writes.push(spawn(room("r"), same, m));
            while queued(&store) < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        for i in 0..40 {
            writes.push(spawn(room(&format!("r{i}")), g, Membership::Invite));
        }
        while queued(&store) < 42 {
            tokio::task::yield_now().await;
        }
        sqlx::query("ROLLBACK").execute(&mut *locker).await.unwrap();
        drop(locker);
        for w in writes {
            w.await.unwrap().unwrap();
        }
        assert_eq!(queued(&store), 0);
        let db = |room: OwnedRoomId, user: &'static UserId| {
            let store = store.clone();
            async move { store.member_from_db(&room, user).await.unwrap().map(|m| m.membership) }
        };
        assert_eq!(db(room("first"), g).await, Some(Membership::Join));
        assert_eq!(db(room("r"), same).await, Some(Membership::Leave));
        assert_eq!(store.membership(&room("r"), same).await.unwrap(), Some(Membership::Leave));
        for i in 0..40 {
            let m = db(room(&format!("r{i}")), g).await;
            assert_eq!(m, Some(Membership::Invite), "!r{i}");
        }
    }

    #[tokio::test]
    async fn writes_through_clones_and_outside_writes_need_forget_caches() {
        let store = Store::connect_url("sqlite::memory:").await.unwrap();
        let other = store.clone();
        let (r, g) = (room_id!("!r:x"), user_id!("@g:x"));
        assert_eq!(store.membership(r, g).await.unwrap(), None);
        other.set_membership(MemberRow::new(r, g, Membership::Invite)).await.unwrap();
        assert_eq!(store.membership(r, g).await.unwrap(), Some(Membership::Invite));
        other.set_membership(MemberRow::new(r, g, Membership::Leave)).await.unwrap();
        assert_eq!(store.membership(r, g).await.unwrap(), Some(Membership::Leave));
        // SQL run past the store is not seen until the caches are forgotten.
        sql(&store, "UPDATE mx_membership SET membership = 'ban'").await;
        assert_eq!(store.membership(r, g).await.unwrap(), Some(Membership::Leave));
        store.forget_caches();
        assert_eq!(store.membership(r, g).await.unwrap(), Some(Membership::Ban));
    }
}
