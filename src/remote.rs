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
        #[derive(
            Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
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
remote_id!(
    /// One part of a remote message that Matrix shows as several events (a caption and its
    /// files, say); unique within its message. The empty ID is the message's only part.
    RemotePartId
);
remote_id!(
    /// A login to the remote network (one account of one Matrix user).
    RemoteLoginId
);
remote_id!(
    /// A transaction ID the bridge sent with a message, which the network's echo of that
    /// message carries back (IRC's `label`, a client-generated nonce, ...).
    RemoteTxnId
);

impl RemoteMessageId {
    /// A new random ID, for networks whose messages have none of their own.
    pub fn random() -> Self {
        Self(crate::util::random_id(24))
    }
}

/// The name of a portal: the remote chat, and for a chat that only one login sees (a DM on most
/// networks), that login. Two logins' DMs with the same remote user are then two portals.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortalKey {
    /// The remote chat.
    pub chat: RemoteChatId,
    /// The login that receives the chat, for per-login chats; `None` for chats everyone shares.
    pub receiver: Option<RemoteLoginId>,
}

impl PortalKey {
    /// The key of a chat shared by every login (a group or channel).
    pub fn shared(chat: impl Into<RemoteChatId>) -> Self {
        Self { chat: chat.into(), receiver: None }
    }

    /// The key of a chat that `receiver` alone sees (a DM).
    pub fn for_login(chat: impl Into<RemoteChatId>, receiver: RemoteLoginId) -> Self {
        Self { chat: chat.into(), receiver: Some(receiver) }
    }

    /// The receiver as stored: empty for shared chats.
    pub(crate) fn receiver_str(&self) -> &str {
        self.receiver.as_ref().map_or("", RemoteLoginId::as_str)
    }

    /// The key from its stored form.
    pub(crate) fn from_stored(chat: String, receiver: String) -> Self {
        let receiver = (!receiver.is_empty()).then_some(RemoteLoginId(receiver));
        Self { chat: RemoteChatId(chat), receiver }
    }
}

impl fmt::Display for PortalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.receiver {
            None => f.write_str(&self.chat.0),
            Some(login) => write!(f, "{} (for {login})", self.chat),
        }
    }
}

/// A remote message part, as a Matrix event maps to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RemoteMessageRef {
    /// The portal it is in.
    pub portal: PortalKey,
    /// The message.
    pub id: RemoteMessageId,
    /// The part of the message.
    pub part: RemotePartId,
}

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

/// A bridged portal: a remote chat and its Matrix room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Portal {
    /// Its name.
    pub key: PortalKey,
    /// Its Matrix room.
    pub room_id: OwnedRoomId,
}

/// A message from the remote network, ready to bridge into its portal.
#[derive(Debug, Clone)]
pub struct RemoteMessage {
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
