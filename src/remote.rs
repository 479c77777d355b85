//! The remote side's vocabulary: the IDs of remote chats, users and messages, and what the
//! bridge says about them (profiles, portal looks, messages). A leaf: the helpers that act on
//! them live in the `portal` and `ghost` modules.
//!
//! Remote IDs are opaque strings the bridge chooses; they only need to be unique within their
//! kind (a chat ID among chats, a user ID among users, a message ID within its chat).

use std::fmt;

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedMxcUri, OwnedRoomId, OwnedUserId,
    events::room::message::RoomMessageEventContent,
};
use serde::{Deserialize, Serialize};

macro_rules! remote_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The ID as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
    };
}

remote_id!(
    /// A chat (channel, group, DM) on the remote network; unique among chats.
    RemoteChatId
);
remote_id!(
    /// A user on the remote network; unique among users.
    RemoteUserId
);
remote_id!(
    /// A message on the remote network; unique within its chat.
    RemoteMessageId
);

/// A remote user's profile, as the ghost should show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GhostProfile {
    /// The display name.
    pub displayname: Option<String>,
    /// The avatar (already uploaded).
    pub avatar_url: Option<OwnedMxcUri>,
}

/// What a new portal room looks like.
#[derive(Debug, Clone, Default)]
pub struct PortalInfo {
    /// The room name.
    pub name: Option<String>,
    /// The topic.
    pub topic: Option<String>,
    /// Real Matrix users to invite when the room is created.
    pub invite: Vec<OwnedUserId>,
    /// Whether the room is a DM (`is_direct`).
    pub is_direct: bool,
}

/// A bridged portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Portal {
    /// The remote chat.
    pub remote_id: RemoteChatId,
    /// Its Matrix room.
    pub room_id: OwnedRoomId,
}

/// A message from the remote network, ready to bridge.
#[derive(Debug, Clone)]
pub struct RemoteMessage {
    /// The chat it was sent in.
    pub chat: RemoteChatId,
    /// Its ID within the chat.
    pub id: RemoteMessageId,
    /// Who sent it.
    pub sender: RemoteUserId,
    /// The sender's profile (applied when it changed).
    pub profile: GhostProfile,
    /// When it was sent on the remote network (the event gets this timestamp).
    pub timestamp: Option<MilliSecondsSinceUnixEpoch>,
    /// The Matrix content.
    pub content: RoomMessageEventContent,
}
