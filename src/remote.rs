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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GhostProfile {
    /// The display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub displayname: Option<String>,
    /// The avatar (already uploaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

/// Who did something on the remote network, as their ghost shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteSender {
    /// The remote user.
    pub id: RemoteUserId,
    /// Their profile, applied to the ghost when it changed.
    #[serde(default)]
    pub profile: GhostProfile,
}

impl RemoteSender {
    /// A sender known by ID and display name.
    pub fn named(id: impl Into<RemoteUserId>, displayname: impl Into<String>) -> Self {
        let profile = GhostProfile { displayname: Some(displayname.into()), avatar_url: None };
        Self { id: id.into(), profile }
    }
}

/// One part of a remote message: one Matrix event (a caption and each of its files, say).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemotePart {
    /// The part's ID within its message; empty for a message's only part.
    #[serde(default)]
    pub id: RemotePartId,
    /// Its Matrix content. Formatted bodies are sanitized before they enter the room.
    pub content: RoomMessageEventContent,
}

/// Something that happened in a remote chat, to be bridged into its portal: what
/// [`crate::Context::queue_remote`] takes. The remote IDs name what happened (a message, the
/// message an edit or reaction is about), so handling is idempotent: an event handled twice
/// changes nothing the second time.
// Externally tagged: message contents deserialize through raw JSON, which an internally
// tagged enum's buffering cannot give them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RemoteEvent {
    /// A new message, in one part or several.
    Message {
        /// Its ID within the chat.
        id: RemoteMessageId,
        /// Who sent it.
        sender: RemoteSender,
        /// When (the Matrix events get this timestamp).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timestamp: Option<MilliSecondsSinceUnixEpoch>,
        /// Its parts, in order.
        parts: Vec<RemotePart>,
        /// The message it replies to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<RemoteMessageId>,
        /// The root of the thread it is in.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread_root: Option<RemoteMessageId>,
        /// The transaction ID it carries when it is the network's echo of a message the bridge
        /// sent for a Matrix event (see [`crate::Delivery::Pending`]): then nothing is sent,
        /// and the Matrix event is mapped to this message instead. An echo that comes before
        /// the framework recorded its Matrix event is retried (and parked after the last
        /// attempt), never posted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        echo_of: Option<RemoteTxnId>,
    },
    /// An edit of a message: the new content of its parts (by part ID).
    Edit {
        /// The edited message.
        target: RemoteMessageId,
        /// Who edited it.
        sender: RemoteSender,
        /// When.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timestamp: Option<MilliSecondsSinceUnixEpoch>,
        /// The new content of the parts that changed.
        parts: Vec<RemotePart>,
    },
    /// A reaction to a message.
    Reaction {
        /// The message reacted to.
        target: RemoteMessageId,
        /// Who reacted.
        sender: RemoteSender,
        /// The reaction (usually an emoji).
        key: String,
        /// When.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timestamp: Option<MilliSecondsSinceUnixEpoch>,
    },
    /// A reaction taken back.
    ReactionRemove {
        /// The message it was on.
        target: RemoteMessageId,
        /// Who had reacted.
        sender: RemoteSender,
        /// The reaction.
        key: String,
    },
    /// A message deleted.
    Delete {
        /// The deleted message.
        target: RemoteMessageId,
        /// Who deleted it.
        sender: RemoteSender,
    },
    /// A remote user read the chat up to a message.
    ReadReceipt {
        /// Who read.
        sender: RemoteSender,
        /// The last message read.
        up_to: RemoteMessageId,
    },
    /// A remote user started or stopped typing.
    Typing {
        /// Who.
        sender: RemoteSender,
        /// Typing now, or stopped.
        typing: bool,
    },
    /// The chat's name or topic changed (`None`: unchanged).
    ChatInfo {
        /// The new name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// The new topic.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
    },
    /// The chat was deleted: the portal is unlinked and the bot says so in the room.
    ChatDelete,
    /// A remote user came into the chat or left it: their ghost joins or leaves the room (a
    /// kick is done by the bot, with the reason). Nothing happens when the ghost is already
    /// where it should be.
    Member {
        /// Who.
        sender: RemoteSender,
        /// What changed.
        change: RemoteMembership,
        /// Why (a part or quit message, a kick's reason).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A remote user's rank in the chat (an operator, a moderator) as a Matrix power level,
    /// which the bot sets when it may.
    PowerLevel {
        /// Whose.
        sender: RemoteSender,
        /// The level (0 for none).
        level: i64,
    },
}

/// What a [`RemoteEvent::Member`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteMembership {
    /// Joined the chat.
    Join,
    /// Left the chat (or the network).
    Leave,
    /// Was removed by someone else.
    Kicked,
}

impl RemoteEvent {
    /// A plain-text message in one part.
    pub fn text(
        id: impl Into<RemoteMessageId>,
        sender: RemoteSender,
        body: impl Into<String>,
    ) -> Self {
        Self::Message {
            id: id.into(),
            sender,
            timestamp: None,
            parts: vec![RemotePart {
                id: RemotePartId::default(),
                content: RoomMessageEventContent::text_plain(body),
            }],
            reply_to: None,
            thread_root: None,
            echo_of: None,
        }
    }

    /// The event's kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Message { .. } => "message",
            Self::Edit { .. } => "edit",
            Self::Reaction { .. } => "reaction",
            Self::ReactionRemove { .. } => "reaction_remove",
            Self::Delete { .. } => "delete",
            Self::ReadReceipt { .. } => "read_receipt",
            Self::Typing { .. } => "typing",
            Self::ChatInfo { .. } => "chat_info",
            Self::ChatDelete => "chat_delete",
            Self::Member { .. } => "member",
            Self::PowerLevel { .. } => "power_level",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_message_ids_are_fresh() {
        let ids: std::collections::BTreeSet<_> =
            (0..1000).map(|_| RemoteMessageId::random()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(
            ids.iter().all(|id| id.as_str().len() == 24
                && id.as_str().bytes().all(|b| b.is_ascii_alphanumeric()))
        );
    }

    /// Queued events are stored as JSON and read back by the pipeline: every kind survives.
    #[test]
    fn remote_events_survive_their_json() {
        let sender = RemoteSender::named("alice", "Alice");
        let mut html = RoomMessageEventContent::text_html("hi", "<b>hi</b>");
        html.relates_to = None;
        let events = [
            RemoteEvent::text("m1", sender.clone(), "hello"),
            RemoteEvent::Message {
                id: "m2".into(),
                sender: sender.clone(),
                timestamp: Some(MilliSecondsSinceUnixEpoch(
                    1_700_000_000_000u64.try_into().unwrap(),
                )),
                parts: vec![
                    RemotePart { id: "caption".into(), content: html },
                    RemotePart {
                        id: "file".into(),
                        content: RoomMessageEventContent::notice_plain("f"),
                    },
                ],
                reply_to: Some("m1".into()),
                thread_root: None,
                echo_of: Some("txn".into()),
            },
            RemoteEvent::Edit {
                target: "m1".into(),
                sender: sender.clone(),
                timestamp: None,
                parts: vec![],
            },
            RemoteEvent::Reaction {
                target: "m1".into(),
                sender: sender.clone(),
                key: "👍".into(),
                timestamp: None,
            },
            RemoteEvent::ReactionRemove {
                target: "m1".into(),
                sender: sender.clone(),
                key: "👍".into(),
            },
            RemoteEvent::Delete { target: "m1".into(), sender: sender.clone() },
            RemoteEvent::ReadReceipt { sender: sender.clone(), up_to: "m1".into() },
            RemoteEvent::Typing { sender, typing: true },
            RemoteEvent::ChatInfo { name: Some("n".into()), topic: None },
            RemoteEvent::ChatDelete,
            RemoteEvent::Member {
                sender: RemoteSender::named("bob", "bob"),
                change: RemoteMembership::Kicked,
                reason: Some("flood".into()),
            },
            RemoteEvent::PowerLevel { sender: RemoteSender::named("bob", "bob"), level: 50 },
        ];
        for event in events {
            let json = serde_json::to_string(&event).unwrap();
            let back: RemoteEvent = serde_json::from_str(&json).unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), json);
            assert_eq!(back.kind(), event.kind());
        }
    }
}
