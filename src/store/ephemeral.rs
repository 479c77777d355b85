//! What the homeserver was last told of our users' typing and presence, in memory only, so
//! that an intent does not repeat it: remote networks send typing and presence far more often
//! than they change, and each repeat would be a request (and count against rate limits).
//!
//! Nothing here is durable: after a restart the first update of each is sent again.

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId, presence::PresenceState};

use super::Store;
use crate::util::FastMap;

/// Entries kept of each kind before the stale ones are dropped.
const MAX_ENTRIES: usize = 50_000;

/// Typing until when, per room and user; presence per user.
#[derive(Debug, Default)]
pub(crate) struct EphemeralCache {
    typing: Mutex<FastMap<(OwnedRoomId, OwnedUserId), Instant>>,
    presence: Mutex<FastMap<OwnedUserId, (PresenceState, Option<String>)>>,
}

impl Store {
    /// Whether the homeserver was told, less than its timeout ago, that the user is typing in
    /// the room.
    pub fn is_typing(&self, room_id: &RoomId, user_id: &UserId) -> bool {
        let typing = self.ephemeral.typing.lock().unwrap_or_else(PoisonError::into_inner);
        typing
            .get(&(room_id.to_owned(), user_id.to_owned()))
            .is_some_and(|until| *until > Instant::now())
    }

    /// Remembers that the homeserver was told the user types in the room for `timeout`, or
    /// (`None`) stopped.
    pub fn set_typing(&self, room_id: &RoomId, user_id: &UserId, timeout: Option<Duration>) {
        let mut typing = self.ephemeral.typing.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (room_id.to_owned(), user_id.to_owned());
        match timeout {
            Some(timeout) => {
                let now = Instant::now();
                if typing.len() >= MAX_ENTRIES {
                    typing.retain(|_, until| *until > now);
                }
                if typing.len() < MAX_ENTRIES {
                    typing.insert(key, now + timeout);
                }
            }
            None => {
                typing.remove(&key);
            }
        }
    }

    /// What the homeserver was last told of the user's presence: the state and status message.
    pub fn presence(&self, user_id: &UserId) -> Option<(PresenceState, Option<String>)> {
        let presence = self.ephemeral.presence.lock().unwrap_or_else(PoisonError::into_inner);
        presence.get(user_id).cloned()
    }

    /// Remembers what the homeserver was told of the user's presence.
    pub fn set_presence(&self, user_id: &UserId, state: PresenceState, status: Option<&str>) {
        let mut presence = self.ephemeral.presence.lock().unwrap_or_else(PoisonError::into_inner);
        if presence.len() >= MAX_ENTRIES && !presence.contains_key(user_id) {
            presence.clear();
        }
        presence.insert(user_id.to_owned(), (state, status.map(ToOwned::to_owned)));
    }
}
