//! The in-memory cache in front of `mx_membership` and `mx_registered`.
//!
//! `Intent::ensure_registered` and `Intent::ensure_joined` ask the store on every send; without
//! this cache each question is one database round trip. Every write of those tables goes
//! through [`Store`](super::Store), which updates the cache once the database took the write,
//! so a hit needs no query.
//!
//! - **Registered users** are only ever added (nothing deletes an `mx_registered` row), so the
//!   cache keeps positive answers only, filled by `mark_registered` and by a lookup that found
//!   the row.
//! - **Memberships** change, so readers and writers of one (room, user) must not overwrite each
//!   other's newer answer. A writer removes the entry before its database write and puts the new
//!   value back only when no other write of that key overlapped it (overlapping writers may
//!   commit in either order, so the last to finish does not know which value won: it leaves the
//!   entry empty for the next reader to fill from the database). A failed or cancelled write
//!   leaves it empty too. A reader fills the entry from its database read only when no write of
//!   that key started or ended meanwhile (checked with an epoch counter per stripe of keys).
//!   Rows that do not exist are cached as such.
//!
//! Memory is bounded: each map holds at most two generations of [`GENERATION_CAP`] entries.
//! When the current generation is full it becomes the old one and the previous old one is
//! dropped; a hit in the old generation moves the entry back to the current one, so entries in
//! use survive and the rest age out. Empty maps allocate nothing, so an idle bridge pays nothing.
//!
//! Keys are 64-bit hashes (randomly keyed SipHash) of the IDs; every entry keeps its IDs and a
//! lookup compares them, so a hash collision is a miss, never a wrong answer. Lookups allocate
//! nothing. The mutex is never held across an `.await`.

use std::{
    fmt,
    hash::BuildHasher,
    sync::{Mutex, MutexGuard, PoisonError},
};

use ruma::{OwnedMxcUri, UserId};

use super::{Member, MemberRow, Membership};
use crate::util::FastMap;

/// Entries per generation, per map (memberships, registered users): at most twice this many
/// are kept. A membership entry takes ~150 bytes with its table slot (its IDs and profile), so
/// the cache stays at a few MiB however many ghosts and rooms the bridge has. Rooms and ghosts
/// in use stay in it; the rest ages out.
pub(crate) const GENERATION_CAP: usize = 4_096;

/// Stripes of the write epochs: a write bumps its key's stripe, so readers of other stripes
/// keep filling while it runs.
const STRIPES: usize = 64;

/// A cached `mx_membership` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CachedMember {
    pub(crate) membership: Membership,
    pub(crate) displayname: Option<Box<str>>,
    pub(crate) avatar_url: Option<Box<str>>,
}

impl CachedMember {
    pub(crate) fn new(
        membership: Membership,
        displayname: Option<&str>,
        avatar_url: Option<&str>,
    ) -> Self {
        Self {
            membership,
            displayname: displayname.map(Into::into),
            avatar_url: avatar_url.map(Into::into),
        }
    }

    fn from_member(m: &Member) -> Self {
        let avatar_url = m.avatar_url.as_ref().map(|a| a.as_str());
        Self::new(m.membership, m.displayname.as_deref(), avatar_url)
    }

    pub(crate) fn to_member(&self, user_id: &UserId) -> Member {
        Member {
            user_id: user_id.to_owned(),
            membership: self.membership,
            displayname: self.displayname.as_deref().map(str::to_owned),
            avatar_url: self.avatar_url.as_deref().map(OwnedMxcUri::from),
        }
    }
}

/// One membership entry: the IDs it answers for and the row (`None`: no row).
struct MemberEntry {
    room_id: Box<str>,
    user_id: Box<str>,
    member: Option<CachedMember>,
}

impl MemberEntry {
    fn is_for(&self, room_id: &str, user_id: &str) -> bool {
        &*self.room_id == room_id && &*self.user_id == user_id
    }
}

/// Permission to fill an entry from a database read, taken before the read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FillTicket {
    key: u64,
    /// The key's stripe epoch when the read started.
    epoch: u64,
}

/// The cache shared by a `Store` and its clones.
pub(crate) struct StateCache {
    inner: Mutex<Inner>,
    hasher: foldhash::quality::RandomState,
}

struct Inner {
    /// (room, user) → membership row.
    members: Generations<MemberEntry>,
    /// user → registered (present entries only).
    registered: Generations<Box<str>>,
    /// Membership writes in flight, by key.
    writing: FastMap<u64, Writing>,
    /// Bumped when a membership write of a key of the stripe starts or ends, and by `clear`.
    epochs: [u64; STRIPES],
}

/// Membership writes in flight for one key.
#[derive(Default)]
struct Writing {
    count: u32,
    /// Two writes of the key ran at the same time since the count was last zero.
    overlapped: bool,
}

impl Default for StateCache {
    fn default() -> Self {
        Self::with_cap(GENERATION_CAP)
    }
}

impl fmt::Debug for StateCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (members, registered) = self.len();
        f.debug_struct("StateCache")
            .field("members", &members)
            .field("registered", &registered)
            .finish_non_exhaustive()
    }
}

impl StateCache {
    /// A cache keeping at most `2 * cap` entries per map.
    pub(crate) fn with_cap(cap: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                members: Generations::new(cap),
                registered: Generations::new(cap),
                writing: FastMap::default(),
                epochs: [0; STRIPES],
            }),
            hasher: foldhash::quality::RandomState::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn member_key(&self, room_id: &str, user_id: &str) -> u64 {
        self.hasher.hash_one((room_id, user_id))
    }

    fn user_key(&self, user_id: &str) -> u64 {
        self.hasher.hash_one(user_id)
    }

    /// The number of cached memberships and registered users.
    pub(crate) fn len(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.members.len(), inner.registered.len())
    }

    /// The cached membership row (`Ok(None)`: known to have none), or a ticket to fill it.
    pub(crate) fn member(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> Result<Option<CachedMember>, FillTicket> {
        self.member_with(room_id, user_id, Clone::clone)
    }

    /// The cached membership (`Ok(None)`: known to have none), or a ticket to fill it.
    pub(crate) fn membership(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> Result<Option<Membership>, FillTicket> {
        self.member_with(room_id, user_id, |m| m.as_ref().map(|m| m.membership))
    }

    /// Whether the cache holds exactly this row. The database then holds it too: an entry is
    /// present only while no write of its key runs.
    pub(crate) fn holds(&self, row: MemberRow<'_>) -> bool {
        let avatar_url = row.avatar_url.map(|a| a.as_str());
        self.member_with(row.room_id.as_str(), row.user_id.as_str(), |m| {
            m.as_ref().is_some_and(|m| {
                m.membership == row.membership
                    && m.displayname.as_deref() == row.displayname
                    && m.avatar_url.as_deref() == avatar_url
            })
        })
        .unwrap_or(false)
    }

    fn member_with<T>(
        &self,
        room_id: &str,
        user_id: &str,
        read: impl FnOnce(&Option<CachedMember>) -> T,
    ) -> Result<T, FillTicket> {
        let key = self.member_key(room_id, user_id);
        let mut inner = self.lock();
        if let Some(entry) = inner.members.get(key, |e| e.is_for(room_id, user_id)) {
            return Ok(read(&entry.member));
        }
        Err(FillTicket { key, epoch: inner.epochs[stripe(key)] })
    }

    /// Caches what a database read that started with `ticket` found, unless a write of the key
    /// started or ended since (the read may have seen the old row).
    pub(crate) fn fill_member(
        &self,
        ticket: FillTicket,
        room_id: &str,
        user_id: &str,
        member: Option<&Member>,
    ) {
        let mut inner = self.lock();
        if inner.epochs[stripe(ticket.key)] != ticket.epoch
            || inner.writing.contains_key(&ticket.key)
        {
            return;
        }
        inner.members.insert(
            ticket.key,
            MemberEntry {
                room_id: room_id.into(),
                user_id: user_id.into(),
                member: member.map(CachedMember::from_member),
            },
        );
    }

    /// Starts a membership write: the entry is dropped until the write ends.
    pub(crate) fn begin_member_write<'a>(
        &'a self,
        room_id: &'a str,
        user_id: &'a str,
    ) -> MemberWrite<'a> {
        let key = self.member_key(room_id, user_id);
        let mut inner = self.lock();
        inner.epochs[stripe(key)] += 1;
        let writing = inner.writing.entry(key).or_default();
        writing.overlapped |= writing.count > 0;
        writing.count += 1;
        inner.members.remove(key);
        MemberWrite { cache: self, key, room_id, user_id, ended: false }
    }

    fn end_member_write(&self, write: &MemberWrite<'_>, stored: Option<CachedMember>) {
        let key = write.key;
        let mut inner = self.lock();
        inner.epochs[stripe(key)] += 1;
        let Some(writing) = inner.writing.get_mut(&key) else {
            return;
        };
        writing.count -= 1;
        if writing.count > 0 {
            return;
        }
        let alone = !writing.overlapped;
        inner.writing.remove(&key);
        if let Some(member) = stored.filter(|_| alone) {
            let entry = MemberEntry {
                room_id: write.room_id.into(),
                user_id: write.user_id.into(),
                member: Some(member),
            };
            inner.members.insert(key, entry);
        }
    }

    /// Whether the user is cached as registered; otherwise a ticket to fill it.
    pub(crate) fn is_registered(&self, user_id: &str) -> Result<(), FillTicket> {
        let key = self.user_key(user_id);
        let mut inner = self.lock();
        if inner.registered.get(key, |u| &**u == user_id).is_some() {
            return Ok(());
        }
        Err(FillTicket { key, epoch: inner.epochs[stripe(key)] })
    }

    /// Caches that a read that started with `ticket` found the user registered.
    pub(crate) fn fill_registered(&self, ticket: FillTicket, user_id: &str) {
        let mut inner = self.lock();
        if inner.epochs[stripe(ticket.key)] == ticket.epoch {
            inner.registered.insert(ticket.key, user_id.into());
        }
    }

    /// Caches a registration the database has just stored.
    pub(crate) fn note_registered(&self, user_id: &str) {
        let key = self.user_key(user_id);
        self.lock().registered.insert(key, user_id.into());
    }

    /// Forgets everything; reads in flight do not fill.
    pub(crate) fn clear(&self) {
        let mut inner = self.lock();
        inner.members.clear();
        inner.registered.clear();
        for epoch in &mut inner.epochs {
            *epoch += 1;
        }
    }
}

fn stripe(key: u64) -> usize {
    // The low bits of a SipHash output are as good as any.
    (key % STRIPES as u64) as usize
}

/// A membership write in progress; see [`StateCache::begin_member_write`].
///
/// [`MemberWrite::stored`] after the database took the write caches the new row; dropping it
/// otherwise (an error, or the future cancelled) leaves the entry empty.
pub(crate) struct MemberWrite<'a> {
    cache: &'a StateCache,
    key: u64,
    room_id: &'a str,
    user_id: &'a str,
    ended: bool,
}

impl MemberWrite<'_> {
    /// The database stored `member`.
    pub(crate) fn stored(mut self, member: CachedMember) {
        self.ended = true;
        self.cache.end_member_write(&self, Some(member));
    }
}

impl Drop for MemberWrite<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.cache.end_member_write(self, None);
        }
    }
}

/// A map of at most `2 * cap` entries in two generations (see the module docs).
struct Generations<V> {
    cap: usize,
    current: FastMap<u64, V>,
    old: FastMap<u64, V>,
}

impl<V> Generations<V> {
    fn new(cap: usize) -> Self {
        Self { cap: cap.max(1), current: FastMap::default(), old: FastMap::default() }
    }

    fn len(&self) -> usize {
        self.current.len() + self.old.len()
    }

    /// The entry of `key` if `is_it` accepts it (a key is in at most one generation).
    fn get(&mut self, key: u64, is_it: impl Fn(&V) -> bool) -> Option<&V> {
        if self.current.contains_key(&key) {
            return self.current.get(&key).filter(|v| is_it(v));
        }
        let v = self.old.remove(&key)?;
        if !is_it(&v) {
            return None;
        }
        self.insert(key, v);
        self.current.get(&key)
    }

    fn insert(&mut self, key: u64, value: V) {
        self.old.remove(&key);
        if self.current.len() >= self.cap && !self.current.contains_key(&key) {
            // Sized once for a full generation: no regrowth (and its garbage) on the way.
            self.old = std::mem::replace(
                &mut self.current,
                FastMap::with_capacity_and_hasher(self.cap, Default::default()),
            );
        }
        self.current.insert(key, value);
    }

    fn remove(&mut self, key: u64) {
        self.current.remove(&key);
        self.old.remove(&key);
    }

    fn clear(&mut self) {
        self.current = FastMap::default();
        self.old = FastMap::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined() -> CachedMember {
        CachedMember::new(Membership::Join, Some("G"), None)
    }

    fn member(membership: Membership) -> Member {
        Member {
            user_id: ruma::owned_user_id!("@u:x"),
            membership,
            displayname: None,
            avatar_url: None,
        }
    }

    #[test]
    fn a_write_alone_is_cached_and_a_failed_one_is_not() {
        let cache = StateCache::default();
        assert!(cache.member("!r", "@u").is_err());
        cache.begin_member_write("!r", "@u").stored(joined());
        assert_eq!(cache.member("!r", "@u").ok(), Some(Some(joined())));
        assert_eq!(cache.membership("!r", "@u").ok(), Some(Some(Membership::Join)));
        // A write that fails (or is cancelled) drops the entry: the database has the old row,
        // the next reader fetches it.
        drop(cache.begin_member_write("!r", "@u"));
        assert!(cache.member("!r", "@u").is_err());
        assert!(cache.membership("!r", "@other").is_err());
        assert_eq!(cache.len(), (0, 0));
    }

    #[test]
    fn overlapping_writes_leave_the_entry_to_the_next_reader() {
        let cache = StateCache::default();
        let first = cache.begin_member_write("!r", "@u");
        let second = cache.begin_member_write("!r", "@u");
        // Either may have committed last.
        second.stored(CachedMember::new(Membership::Leave, None, None));
        assert!(cache.member("!r", "@u").is_err());
        first.stored(joined());
        assert!(cache.member("!r", "@u").is_err());
        // Once both ended, a write alone is cached again.
        cache.begin_member_write("!r", "@u").stored(joined());
        assert_eq!(cache.membership("!r", "@u").ok(), Some(Some(Membership::Join)));
    }

    #[test]
    fn a_read_that_raced_a_write_does_not_fill() {
        let cache = StateCache::default();
        // The read starts, a write runs and ends, the read (which saw the old row) ends.
        let ticket = cache.membership("!r", "@u").unwrap_err();
        cache.begin_member_write("!r", "@u").stored(joined());
        cache.fill_member(ticket, "!r", "@u", Some(&member(Membership::Leave)));
        assert_eq!(cache.membership("!r", "@u").ok(), Some(Some(Membership::Join)));
        // A read during a write that then fails: nothing is cached.
        let write = cache.begin_member_write("!r", "@u");
        let ticket = cache.membership("!r", "@u").unwrap_err();
        cache.fill_member(ticket, "!r", "@u", Some(&member(Membership::Join)));
        assert!(cache.membership("!r", "@u").is_err());
        drop(write);
        // A read with no write around fills, absent rows included.
        let ticket = cache.membership("!r", "@u").unwrap_err();
        cache.fill_member(ticket, "!r", "@u", Some(&member(Membership::Ban)));
        assert_eq!(cache.membership("!r", "@u").ok(), Some(Some(Membership::Ban)));
        let ticket = cache.membership("!r", "@v").unwrap_err();
        cache.fill_member(ticket, "!r", "@v", None);
        assert_eq!(cache.membership("!r", "@v").ok(), Some(None));
        // A clear during a read: the read does not fill.
        let ticket = cache.membership("!r", "@w").unwrap_err();
        cache.clear();
        cache.fill_member(ticket, "!r", "@w", None);
        assert!(cache.membership("!r", "@w").is_err());
    }

    #[test]
    fn registered_users_are_cached_once_known() {
        let cache = StateCache::default();
        let ticket = cache.is_registered("@u").unwrap_err();
        cache.fill_registered(ticket, "@u");
        assert!(cache.is_registered("@u").is_ok());
        cache.note_registered("@v");
        assert!(cache.is_registered("@v").is_ok());
        assert!(cache.is_registered("@w").is_err());
        let ticket = cache.is_registered("@w").unwrap_err();
        cache.clear();
        cache.fill_registered(ticket, "@w");
        assert!(cache.is_registered("@w").is_err());
        assert_eq!(cache.len(), (0, 0));
    }

    #[test]
    fn ids_are_compared_not_just_hashed() {
        let cache = StateCache::default();
        cache.begin_member_write("!ab", "@c").stored(joined());
        assert!(cache.membership("!a", "b@c").is_err());
        assert!(cache.membership("!ab", "@c").is_ok());
    }

    #[test]
    fn size_is_bounded_and_entries_in_use_survive() {
        let cache = StateCache::with_cap(100);
        cache.note_registered("@hot");
        cache.begin_member_write("!hot", "@hot").stored(joined());
        for i in 0..1_000 {
            let user = format!("@u{i}");
            cache.note_registered(&user);
            cache.begin_member_write("!r", &user).stored(joined());
            // The hot entries are used all along.
            assert!(cache.is_registered("@hot").is_ok());
            assert!(cache.membership("!hot", "@hot").is_ok());
            let (members, registered) = cache.len();
            assert!(members <= 200 && registered <= 200, "{members} {registered}");
        }
        assert!(cache.is_registered("@u999").is_ok());
        assert!(cache.is_registered("@u0").is_err(), "aged out");
        assert!(cache.inner.lock().unwrap().writing.is_empty());
    }
}
