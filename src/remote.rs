//! The remote side's vocabulary and the remote → Matrix helpers.
//!
//! Remote IDs are opaque strings the bridge chooses; they only need to be unique within their
//! kind (a chat ID among chats, a user ID among users, a message ID within its chat). The helpers
//! on [`Context`] turn "remote user X said Y in chat Z at time T" into Matrix: the ghost
//! (registered, profile set when it changed), the portal room (created by the bot with an
//! `m.bridge` state event, real users invited), membership, and the send with the remote
//! timestamp, then record the message mapping for later edits, replies and redactions.

use std::fmt;

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedMxcUri, OwnedRoomId, OwnedUserId, UserId,
    api::client::room::create_room,
    events::{AnyInitialStateEvent, room::message::RoomMessageEventContent},
    serde::Raw,
};
use serde::{Deserialize, Serialize};

use crate::{
    client,
    context::Context,
    intent::Intent,
    store::{GhostRow, MessageRow, PortalRow, StoreError},
};

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

impl RemoteMessageId {
    /// A fresh random ID (24 letters and digits, from the operating system's CSPRNG), for a
    /// network whose messages have no ID of their own.
    pub fn random() -> Self {
        Self(crate::secret::Secret::generate(24).expose().to_owned())
    }
}

/// Errors of the remote → Matrix helpers.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// A homeserver call failed.
    #[error(transparent)]
    Client(#[from] client::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The ghost's user ID would not be valid.
    #[error("remote user {0:?} gives no valid Matrix user ID")]
    InvalidGhost(String),
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

/// Escapes a remote ID into localpart characters, reversibly: `a-z 0-9 . - /` stay, `_` becomes
/// `__`, an upper-case letter `X` becomes `_x`, every other byte `=hh`.
pub fn escape_localpart(remote: &str) -> String {
    escape_localpart_within(remote, usize::MAX).0
}

/// [`escape_localpart`] for at most `max` bytes of output, never cutting one byte's escape in
/// two; with whether the whole ID fitted.
fn escape_localpart_within(remote: &str, max: usize) -> (String, bool) {
    use fmt::Write as _;
    let mut out = String::with_capacity(remote.len().min(max));
    for b in remote.bytes() {
        let width = match b {
            b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'/' => 1,
            b'_' | b'A'..=b'Z' => 2,
            _ => 3,
        };
        if out.len() + width > max {
            return (out, false);
        }
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'/' => out.push(char::from(b)),
            b'_' => out.push_str("__"),
            b'A'..=b'Z' => {
                out.push('_');
                out.push(char::from(b.to_ascii_lowercase()));
            }
            _ => {
                let _ = write!(out, "={b:02x}");
            }
        }
    }
    (out, true)
}

/// The most bytes in a user ID, `@` and `:server` included.
pub const MAX_USER_ID_BYTES: usize = 255;

/// The most characters in a display name the homeserver accepts (Synapse's limit).
pub const MAX_DISPLAYNAME_CHARS: usize = 256;

/// Sets a digest localpart apart from every escaped one: in an escaped ID, `=` is always
/// followed by two hex digits, so `==` never occurs there.
const DIGEST_MARK: &str = "==";

/// Hex digits of the SHA-256 kept in a digest localpart (128 bits).
const DIGEST_HEX_DIGITS: usize = 32;

/// The localpart of a remote user's ghost: `template` with `{id}` replaced by the escaped ID
/// ([`escape_localpart`]) when the user ID fits in [`MAX_USER_ID_BYTES`] on `server_name`.
/// A longer ID is replaced by as much of its escaped start as fits, `==`, and 32 hex digits of
/// the SHA-256 of the whole ID: stable, and never equal to the escaped form of another ID.
pub fn ghost_localpart(template: &str, remote: &str, server_name: &str) -> String {
    let slots = template.matches("{id}").count().max(1);
    // `@`, `:` and the server name, and the template around its placeholders.
    let fixed = 2 + server_name.len() + template.len().saturating_sub(4 * slots);
    let room = MAX_USER_ID_BYTES.saturating_sub(fixed) / slots;
    let id = match escape_localpart_within(remote, room) {
        (escaped, true) => escaped,
        _ => {
            let digest = crate::secret::sha256_hex(remote.as_bytes());
            let readable = room.saturating_sub(DIGEST_MARK.len() + DIGEST_HEX_DIGITS);
            let (start, _) = escape_localpart_within(remote, readable);
            format!("{start}{DIGEST_MARK}{}", &digest[..DIGEST_HEX_DIGITS])
        }
    };
    template.replace("{id}", &id)
}

/// A display name cut to [`MAX_DISPLAYNAME_CHARS`] characters (never inside a character).
pub fn displayname_within_limit(name: &str) -> &str {
    name.char_indices().nth(MAX_DISPLAYNAME_CHARS).map_or(name, |(cut, _)| &name[..cut])
}

impl Context {
    /// The Matrix user ID of a remote user's ghost (from `ghost_localpart_template`, see
    /// [`ghost_localpart`]): any remote ID gives one.
    ///
    /// # Errors
    /// When the result would be the bot, or the server name and template leave no room for
    /// even a digest.
    pub fn ghost_user_id(&self, remote: &RemoteUserId) -> Result<OwnedUserId, RemoteError> {
        let template = &self.appservice().ghost_localpart_template;
        let localpart = ghost_localpart(template, &remote.0, self.server_name().as_str());
        let user_id = UserId::parse_with_server_name(localpart, self.server_name())
            .map_err(|_| RemoteError::InvalidGhost(remote.0.clone()))?;
        // A remote user named like the bot must never speak as the bot.
        if user_id == *self.bot_user_id() {
            return Err(RemoteError::InvalidGhost(remote.0.clone()));
        }
        Ok(user_id)
    }

    /// Makes a remote user's ghost exist with the given profile: registered, and its display
    /// name and avatar set only when they differ from what was set last (no request otherwise).
    ///
    /// # Errors
    /// When registration or a profile update fails.
    pub async fn ensure_ghost(
        &self,
        remote: &RemoteUserId,
        profile: &GhostProfile,
    ) -> Result<Intent, RemoteError> {
        let user_id = self.ghost_user_id(remote)?;
        let intent = self.intent(&user_id)?;
        let known = self.store().ghost_by_remote(&remote.0).await?;
        if known.is_none() {
            intent.ensure_registered().await?;
        }
        let (old_name, old_avatar) = known.map_or((None, None), |g| (g.displayname, g.avatar_url));
        let mut row = GhostRow {
            remote_id: remote.0.clone(),
            user_id: user_id.to_string(),
            displayname: old_name.clone(),
            avatar_url: old_avatar.clone(),
            metadata: None,
        };
        let mut changed = old_name.is_none() && old_avatar.is_none();
        if let Some(name) = profile.displayname.as_deref().map(displayname_within_limit)
            && old_name.as_deref() != Some(name)
        {
            intent.set_displayname(name).await?;
            row.displayname = Some(name.to_owned());
            changed = true;
        }
        if let Some(avatar) = &profile.avatar_url
            && old_avatar.as_deref() != Some(avatar.as_str())
        {
            intent.set_avatar_url(avatar).await?;
            row.avatar_url = Some(avatar.to_string());
            changed = true;
        }
        if changed {
            self.store().upsert_ghost(&row).await?;
        }
        Ok(intent)
    }

    /// The portal of a remote chat, if it has a room.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn portal(&self, chat: &RemoteChatId) -> Result<Option<Portal>, RemoteError> {
        Ok(self.store().portal_by_remote(&chat.0).await?.and_then(portal_from_row))
    }

    /// The portal bridged to a Matrix room, if any.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn portal_for_room(
        &self,
        room_id: &ruma::RoomId,
    ) -> Result<Option<Portal>, RemoteError> {
        Ok(self.store().portal_by_room(room_id.as_str()).await?.and_then(portal_from_row))
    }

    /// The portal of a remote chat, creating its room when there is none: the bot creates a
    /// private room with the name and topic, an `m.bridge` state event naming the bridge and
    /// the remote chat, and invites the given real users.
    ///
    /// # Errors
    /// When creating the room or storing the mapping fails.
    pub async fn ensure_portal(
        &self,
        chat: &RemoteChatId,
        info: &PortalInfo,
    ) -> Result<Portal, RemoteError> {
        if let Some(portal) = self.portal(chat).await? {
            return Ok(portal);
        }
        let mut request = create_room::v3::Request::new();
        request.name.clone_from(&info.name);
        request.topic.clone_from(&info.topic);
        request.invite.clone_from(&info.invite);
        request.is_direct = info.is_direct;
        request.preset = Some(create_room::v3::RoomPreset::PrivateChat);
        request.initial_state = vec![bridge_state_event(self, chat)];
        let room_id = self.client().create_room(None, request).await?;
        self.store()
            .set_membership(
                room_id.as_str(),
                self.bot_user_id().as_str(),
                crate::store::Membership::Join,
                None,
                None,
            )
            .await?;
        self.store()
            .upsert_portal(&PortalRow {
                remote_id: chat.0.clone(),
                room_id: Some(room_id.to_string()),
                name: info.name.clone(),
                topic: info.topic.clone(),
                avatar_url: None,
                metadata: None,
            })
            .await?;
        Ok(Portal { remote_id: chat.clone(), room_id })
    }

    /// Bridges a message from the remote network into a portal room that already exists:
    /// ensures the ghost (and its profile) and its membership, sends the content with the remote
    /// timestamp (its HTML sanitized, see [`crate::format::sanitize_html`]), and records the
    /// mapping. A message already bridged (same chat and ID) is not sent again; its event ID is
    /// returned.
    ///
    /// # Errors
    /// When the portal has no room, or a homeserver call or the store fails.
    pub async fn bridge_message(
        &self,
        room_id: &ruma::RoomId,
        message: &RemoteMessage,
    ) -> Result<OwnedEventId, RemoteError> {
        if let Some(existing) =
            self.store().message_by_remote(&message.chat.0, &message.id.0).await?.into_iter().next()
            && let Ok(event_id) = OwnedEventId::try_from(existing.event_id)
        {
            return Ok(event_id);
        }
        let intent = self.ensure_ghost(&message.sender, &message.profile).await?;
        // Remote HTML is untrusted: only what the specification allows reaches the room.
        let content = crate::format::sanitize_content(&message.content);
        let event_id = intent.send_message(room_id, content.as_ref(), message.timestamp).await?;
        let timestamp = message.timestamp.map_or_else(crate::store::now_ms, |t| i64::from(t.0));
        self.store()
            .insert_message(&MessageRow {
                portal_id: message.chat.0.clone(),
                remote_id: message.id.0.clone(),
                part: String::new(),
                event_id: event_id.to_string(),
                room_id: room_id.to_string(),
                sender: intent.user_id().to_string(),
                timestamp,
            })
            .await?;
        Ok(event_id)
    }

    /// Records that a Matrix event was delivered to the remote network as a message, so later
    /// edits, reactions and redactions of the event can be mapped to it.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn record_remote_message(
        &self,
        chat: &RemoteChatId,
        id: &RemoteMessageId,
        event: &crate::Event,
    ) -> Result<(), RemoteError> {
        self.store()
            .insert_message(&MessageRow {
                portal_id: chat.0.clone(),
                remote_id: id.0.clone(),
                part: String::new(),
                event_id: event.event_id.to_string(),
                room_id: event.room_id.to_string(),
                sender: event.sender.to_string(),
                timestamp: crate::store::now_ms(),
            })
            .await?;
        Ok(())
    }

    /// The remote message a Matrix event carries (or was delivered as), if known.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn remote_message_for(
        &self,
        event_id: &ruma::EventId,
    ) -> Result<Option<(RemoteChatId, RemoteMessageId)>, RemoteError> {
        Ok(self
            .store()
            .message_by_event(event_id.as_str())
            .await?
            .map(|m| (RemoteChatId(m.portal_id), RemoteMessageId(m.remote_id))))
    }
}

fn portal_from_row(row: PortalRow) -> Option<Portal> {
    let room_id = OwnedRoomId::try_from(row.room_id?).ok()?;
    Some(Portal { remote_id: RemoteChatId(row.remote_id), room_id })
}

/// The `m.bridge` state event (MSC2346) of a portal.
fn bridge_state_event(ctx: &Context, chat: &RemoteChatId) -> Raw<AnyInitialStateEvent> {
    #[derive(Serialize)]
    struct BridgeContent<'a> {
        bridgebot: &'a str,
        protocol: Named<'a>,
        channel: Named<'a>,
    }
    #[derive(Serialize)]
    struct Named<'a> {
        id: &'a str,
    }
    let state_key = format!("{}/{}", ctx.appservice().id, chat.0);
    let json = serde_json::json!({
        "type": "m.bridge",
        "state_key": state_key,
        "content": BridgeContent {
            bridgebot: ctx.bot_user_id().as_str(),
            protocol: Named { id: &ctx.appservice().id },
            channel: Named { id: &chat.0 },
        },
    });
    Raw::from_json(serde_json::value::to_raw_value(&json).expect("a JSON value serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localpart_escaping_is_reversible_in_shape_and_valid() {
        assert_eq!(escape_localpart("alice"), "alice");
        assert_eq!(escape_localpart("Alice_B"), "_alice___b");
        assert_eq!(escape_localpart("a b@c"), "a=20b=40c");
        assert_eq!(escape_localpart("Ünï"), "=c3=9cn=c3=af");
        for input in ["Bob Smith", "x:y", "émile", "__", "#chan"] {
            let lp = escape_localpart(input);
            assert!(
                lp.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._=-/".contains(&b)),
                "{lp}"
            );
        }
        // Different inputs never collide.
        assert_ne!(escape_localpart("A"), escape_localpart("_a"));
        assert_ne!(escape_localpart("a_"), escape_localpart("a__"));
    }

    fn valid_user_id(localpart: &str) -> OwnedUserId {
        let user_id = UserId::parse(format!("@{localpart}:localhost")).unwrap();
        user_id.validate_strict().unwrap();
        user_id
    }

    #[test]
    fn random_message_ids_are_fresh() {
        let ids: std::collections::HashSet<_> =
            (0..1000).map(|_| RemoteMessageId::random()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(
            ids.iter().all(|id| id.as_str().len() == 24
                && id.as_str().bytes().all(|b| b.is_ascii_alphanumeric()))
        );
    }

    #[test]
    fn short_ids_are_escaped_as_before() {
        assert_eq!(ghost_localpart("_t_{id}", "Bob Smith", "localhost"), "_t__bob=20_smith");
        assert_eq!(ghost_localpart("x{id}y{id}", "a", "localhost"), "xaya");
    }

    #[test]
    fn any_id_of_any_length_and_alphabet_gives_a_valid_user_id() {
        let long_ascii = "a".repeat(1000);
        let long_unicode = "名前🙂".repeat(300);
        let controls = "\0\n\t\u{202e}".repeat(100);
        for remote in [long_ascii.as_str(), &long_unicode, &controls, "", "=", "==", "a b"] {
            for server in ["localhost", &format!("{}.example", "s".repeat(150))] {
                let localpart = ghost_localpart("_t_{id}", remote, server);
                let user_id = UserId::parse(format!("@{localpart}:{server}")).unwrap();
                user_id.validate_strict().unwrap();
                assert!(user_id.as_str().len() <= MAX_USER_ID_BYTES, "{user_id}");
                // Stable.
                assert_eq!(ghost_localpart("_t_{id}", remote, server), localpart);
            }
        }
        // The longest ID that fits is escaped; one byte more takes the digest.
        let room = MAX_USER_ID_BYTES - "@_t_:localhost".len();
        let fits = "a".repeat(room);
        assert_eq!(
            valid_user_id(&ghost_localpart("_t_{id}", &fits, "localhost")).as_str().len(),
            255
        );
        assert_eq!(ghost_localpart("_t_{id}", &fits, "localhost"), format!("_t_{fits}"));
        let over = ghost_localpart("_t_{id}", &format!("{fits}a"), "localhost");
        assert!(over.contains("==") && over.starts_with("_t_aaaa"), "{over}");
        assert_eq!(over.len(), "_t_".len() + room);
    }

    #[test]
    fn digest_forms_differ_from_each_other_and_from_every_escaped_form() {
        let a = ghost_localpart("_t_{id}", &"x".repeat(400), "localhost");
        let b = ghost_localpart("_t_{id}", &format!("{}y", "x".repeat(399)), "localhost");
        // Same readable start, different digests.
        assert_ne!(a, b);
        assert_eq!(a[..200], b[..200]);
        // No escaped ID holds the mark, not even one made of `=` signs or of a digest form.
        for remote in ["=", "==", "=3d", &a, "_=", "a==b"] {
            assert!(!escape_localpart(remote).contains(DIGEST_MARK), "{remote}");
        }
        // A digest is cut from the escaped start without splitting an escape.
        let long = "Ü".repeat(200);
        let lp = ghost_localpart("_t_{id}", &long, "localhost");
        let start = lp.strip_prefix("_t_").unwrap().split(DIGEST_MARK).next().unwrap();
        assert!(start.len().is_multiple_of(3) && start.starts_with("=c3=9c=c3=9c"), "{lp}");
    }

    #[test]
    fn display_names_are_cut_at_a_character_boundary() {
        assert_eq!(displayname_within_limit("CI Bot"), "CI Bot");
        let exact = "é".repeat(MAX_DISPLAYNAME_CHARS);
        assert_eq!(displayname_within_limit(&exact), exact);
        let long = "🙂".repeat(1000);
        let cut = displayname_within_limit(&long);
        assert_eq!(cut.chars().count(), MAX_DISPLAYNAME_CHARS);
        assert!(long.starts_with(cut));
    }
}
