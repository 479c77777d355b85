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

/// What a portal room looks like: what a new portal is created with, and what a resync
/// ([`RemoteEvent::ChatResync`]) makes it look like again.
#[derive(Debug, Clone, Default)]
pub struct PortalInfo {
    /// The room name.
    pub name: Option<String>,
    /// The topic.
    pub topic: Option<String>,
    /// The room avatar (already uploaded).
    pub avatar: Option<OwnedMxcUri>,
    /// Real Matrix users to invite when the room is created (the users of the portal's logins
    /// are invited anyway).
    pub invite: Vec<OwnedUserId>,
    /// Whether the room is a DM (`is_direct`).
    pub is_direct: bool,
    /// The chat's members: ghosts join, the users of the bridge's logins are invited (or join
    /// through their double puppets). On a resync the list is taken as the whole membership:
    /// ghosts not in it leave, logins not in it are no longer in the portal. Empty: unknown,
    /// nothing changes.
    pub members: Vec<ChatMember>,
    /// The room's default power levels, when the chat has such rules.
    pub power_levels: Option<ChatPowerLevels>,
}

/// A membership on the remote network, as a portal's member list says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteMembership {
    /// In the chat: the ghost joins; a login's user is invited (their double puppet joins).
    Join,
    /// Invited to the chat.
    Invite,
    /// Left by themselves: the ghost leaves (a login's user is removed, by their double puppet
    /// when they have one).
    Leave,
    /// Removed by someone else (`by`, else the bridge): shown as a kick, not a leave.
    Kick,
    /// Banned (by `by`, else the bridge).
    Ban,
}

/// One member of a remote chat and what changed for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMember {
    /// The remote user. When it names one of the bridge's logins
    /// ([`RemoteSender::from_login`]), the member is that login's Matrix user (acting through
    /// their double puppet when there is one), not a ghost.
    pub user: RemoteSender,
    /// Their membership now.
    pub membership: RemoteMembership,
    /// Who made the change, for invites, kicks and bans by another member (a login's own
    /// account acts through its double puppet). The change comes from them on Matrix when
    /// they may make it there, else from the bot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<RemoteSender>,
    /// Why (an invite's, kick's or ban's reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Their power level in the room, when the chat gives them one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_level: Option<i64>,
}

impl ChatMember {
    /// A member with a membership and nothing more.
    pub fn new(user: RemoteSender, membership: RemoteMembership) -> Self {
        Self { user, membership, by: None, reason: None, power_level: None }
    }

    /// A member who is in the chat.
    pub fn joined(user: RemoteSender) -> Self {
        Self::new(user, RemoteMembership::Join)
    }

    /// A member who left by themselves.
    pub fn left(user: RemoteSender) -> Self {
        Self::new(user, RemoteMembership::Leave)
    }

    /// A member removed by `by` (the bridge when `None`), for `reason`.
    pub fn kicked(user: RemoteSender, by: Option<RemoteSender>, reason: Option<String>) -> Self {
        Self { by, reason, ..Self::new(user, RemoteMembership::Kick) }
    }

    /// A member invited by `by` (the bridge when `None`).
    pub fn invited(user: RemoteSender, by: Option<RemoteSender>) -> Self {
        Self { by, ..Self::new(user, RemoteMembership::Invite) }
    }

    /// The same member, with a power level.
    #[must_use]
    pub fn power_level(mut self, level: i64) -> Self {
        self.power_level = Some(level);
        self
    }
}

/// A chat's default power levels (`None`: left as they are).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatPowerLevels {
    /// The level of members not listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users_default: Option<i64>,
    /// The level needed to send messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_default: Option<i64>,
    /// The level needed to change the room's state (name, topic, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_default: Option<i64>,
}

/// A remote user an identifier (a phone number, a user name) resolves to: what
/// [`crate::Bridge::resolve_identifier`] answers.
#[derive(Debug, Clone)]
pub struct ResolvedIdentifier {
    /// The remote user, with the profile their ghost shows.
    pub user: RemoteSender,
    /// Their DM chat with the login, when one exists or was asked for: its key and looks.
    pub dm: Option<NewChat>,
}

/// A remote chat the bridge found or created, and how its portal looks.
#[derive(Debug, Clone)]
pub struct NewChat {
    /// The chat's portal key.
    pub key: PortalKey,
    /// What its portal room looks like when it is created.
    pub info: PortalInfo,
}

/// A group chat to create on the remote network (the provisioning API's `create_group`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewGroup {
    /// The kind of group, as the client named it (`group`, `channel`, ...: the bridge's own
    /// words).
    pub kind: String,
    /// Its name.
    pub name: Option<String>,
    /// Its topic.
    pub topic: Option<String>,
    /// A public user name for it, on networks that have them.
    pub username: Option<String>,
    /// The remote users to add (a ghost's Matrix ID given by the client is turned into its
    /// remote user).
    pub participants: Vec<RemoteUserId>,
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
    /// The login whose own remote account this is, when the bridge saw the event come from
    /// one of its logins (the user wrote from their phone, say). The event then appears from
    /// that login's Matrix user through their double puppet, when the bridge may act as them
    /// (see [`crate::Context::double_puppet`]); else from the ghost. Set it only for what the
    /// login's own account did: it decides who speaks in Matrix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<RemoteLoginId>,
}

impl RemoteSender {
    /// A sender known by ID and display name.
    pub fn named(id: impl Into<RemoteUserId>, displayname: impl Into<String>) -> Self {
        let profile = GhostProfile { displayname: Some(displayname.into()), avatar_url: None };
        Self { id: id.into(), profile, login: None }
    }

    /// The same sender, as the own account of `login` (see [`RemoteSender::login`]).
    #[must_use]
    pub fn from_login(mut self, login: RemoteLoginId) -> Self {
        self.login = Some(login);
        self
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
    /// The chat's looks or members changed (`None` and empty: unchanged). Members are applied
    /// in order, then power levels.
    ChatInfo {
        /// The new name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// The new topic.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        /// The new avatar (already uploaded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        avatar: Option<OwnedMxcUri>,
        /// Members whose membership or power level changed.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        members: Vec<ChatMember>,
        /// New default power levels.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        power_levels: Option<ChatPowerLevels>,
    },
    /// Bring the portal in line with the chat: the pipeline asks [`crate::Bridge::portal_info`]
    /// and applies all of it (the member list as the whole membership). Creates the portal
    /// when it has no room yet.
    ChatResync,
    /// The chat was deleted: the bot says so in the room, then the portal is deleted (see
    /// [`crate::Context::delete_portal`]).
    ChatDelete,
}

impl RemoteEvent {
    /// Who did it, for the events that have a sender.
    pub fn sender(&self) -> Option<&RemoteSender> {
        match self {
            Self::Message { sender, .. }
            | Self::Edit { sender, .. }
            | Self::Reaction { sender, .. }
            | Self::ReactionRemove { sender, .. }
            | Self::Delete { sender, .. }
            | Self::ReadReceipt { sender, .. }
            | Self::Typing { sender, .. } => Some(sender),
            Self::ChatInfo { .. } | Self::ChatResync | Self::ChatDelete => None,
        }
    }

    /// A change of members only (joins, leaves, kicks, power levels): a
    /// [`RemoteEvent::ChatInfo`] with nothing else.
    pub fn members(members: Vec<ChatMember>) -> Self {
        Self::ChatInfo { name: None, topic: None, avatar: None, members, power_levels: None }
    }

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
            Self::ChatResync => "chat_resync",
            Self::ChatDelete => "chat_delete",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chat-info event queued before members and power levels existed still reads.
    #[test]
    fn older_chat_info_rows_still_read() {
        let old: RemoteEvent = serde_json::from_str(r#"{"chat_info":{"name":"n"}}"#).unwrap();
        let RemoteEvent::ChatInfo { name, members, power_levels, .. } = old else {
            panic!("not chat info")
        };
        assert_eq!((name.as_deref(), members.len(), power_levels), (Some("n"), 0, None));
        let resync: RemoteEvent = serde_json::from_str(r#""chat_resync""#).unwrap();
        assert_eq!(resync.kind(), "chat_resync");
    }

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
            RemoteEvent::ChatInfo {
                name: Some("n".into()),
                topic: None,
                avatar: None,
                members: vec![
                    ChatMember::joined(RemoteSender::named("bob", "Bob")).power_level(50),
                    ChatMember::kicked(
                        RemoteSender::named("eve", "Eve"),
                        Some(RemoteSender::named("bob", "Bob")),
                        Some("spam".into()),
                    ),
                    ChatMember::left(RemoteSender::named("me", "Me").from_login("login".into())),
                ],
                power_levels: Some(ChatPowerLevels {
                    events_default: Some(10),
                    ..ChatPowerLevels::default()
                }),
            },
            RemoteEvent::ChatResync,
            RemoteEvent::ChatDelete,
        ];
        for event in events {
            let json = serde_json::to_string(&event).unwrap();
            let back: RemoteEvent = serde_json::from_str(&json).unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), json);
            assert_eq!(back.kind(), event.kind());
        }
    }
}
