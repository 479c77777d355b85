//! What the homeserver pushes: timeline events, ephemeral data, to-device messages and
//! device data, and the typed views of the events a bridge handles.
//!
//! A leaf: it depends on ruma, serde and the remote vocabulary ([`crate::remote`]) only. The
//! intake parses envelopes into [`Event`]s here, the store keeps their JSON, the router turns
//! them into the typed views ([`MatrixMessage`], [`MatrixEdit`], ...).

use std::{borrow::Cow, fmt, sync::Arc};

use ruma::{
    EventId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
    events::{
        AnyTimelineEvent, room::member::MembershipState, room::message::RoomMessageEventContent,
    },
    serde::Raw,
};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::value::RawValue;

use crate::{
    config::PermissionLevel,
    remote::{Portal, RemoteMessageRef},
};

/// A timeline event from the homeserver, as stored in the inbox.
///
/// The envelope (IDs, type, sender) is parsed and validated; the full event stays raw JSON and
/// is deserialized on demand ([`Event::deserialize`], [`Event::content`]), so an event with a
/// malformed content still reaches the bridge. Its fields are those of [`EventData`], reached
/// through `Deref`. Cloning an `Event` is cheap: the clones share one allocation.
#[derive(Clone)]
pub struct Event(Arc<EventData>);

/// The parsed envelope and the JSON of an [`Event`].
pub struct EventData {
    /// The event ID.
    pub event_id: OwnedEventId,
    /// The room.
    pub room_id: OwnedRoomId,
    /// Who sent it.
    pub sender: OwnedUserId,
    /// The event type (`m.room.message`, ...).
    pub kind: String,
    /// The state key, for state events.
    pub state_key: Option<String>,
    /// Whether the event arrived encrypted (`m.room.encrypted`) and is seen here as the bridge
    /// device decrypted it: its type, content and JSON are the plaintext's.
    pub encrypted: bool,
    /// The event JSON as received (already checked to be JSON).
    json: Box<str>,
    /// ruma's raw form of `json`, made on first use ([`Event::raw`]): making a `RawValue` checks
    /// the JSON once more, which the inbox does not need.
    raw: std::sync::OnceLock<Raw<AnyTimelineEvent>>,
    /// Where `content` lies in `json`, found with the envelope (so reading the content does not
    /// scan the rest of the event again).
    content_at: Option<(u32, u32)>,
}

impl std::ops::Deref for Event {
    type Target = EventData;

    fn deref(&self) -> &EventData {
        &self.0
    }
}

/// Why an event's envelope was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MalformedEvent(pub(crate) String);

impl Event {
    /// Parses an event's envelope from its JSON.
    ///
    /// # Errors
    /// When the JSON is not an object with a valid `event_id`, `room_id`, `sender` and `type`.
    pub fn from_json(json: &str) -> Result<Self, MalformedEvent> {
        // One pass: the envelope's parse reads (and so checks) the whole JSON text.
        let h: Envelope<'_> = serde_json::from_str(json).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => MalformedEvent(format!("bad event envelope: {e}")),
            _ => MalformedEvent(format!("not JSON: {e}")),
        })?;
        let ids = h.validate()?;
        Ok(Self::from_validated(ids, &h, json))
    }

    /// Builds an event from an envelope already parsed and validated (the intake's) and the
    /// event's JSON (a slice of a body that parsed as JSON), copying the JSON once.
    pub(crate) fn from_validated(
        (event_id, room_id, sender): (&ruma::EventId, &ruma::RoomId, &ruma::UserId),
        envelope: &Envelope<'_>,
        json: &str,
    ) -> Self {
        Self(Arc::new(EventData {
            event_id: event_id.to_owned(),
            room_id: room_id.to_owned(),
            sender: sender.to_owned(),
            kind: envelope.kind.as_ref().to_owned(),
            state_key: envelope.state_key.as_deref().map(str::to_owned),
            json: json.into(),
            raw: std::sync::OnceLock::new(),
            content_at: span_in(json, envelope.content),
            encrypted: false,
        }))
    }

    /// The plaintext form of an encrypted event, as the bridge device decrypted it (the
    /// decrypted type and content, with the encrypted event's IDs and sender).
    ///
    /// # Errors
    /// When the decrypted event has no valid envelope.
    #[cfg(feature = "encryption")]
    pub(crate) fn decrypted(json: &str) -> Result<Self, MalformedEvent> {
        let mut event = Self::from_json(json)?;
        Arc::get_mut(&mut event.0).expect("a new event has one owner").encrypted = true;
        Ok(event)
    }

    /// The `content` JSON, when the envelope found it.
    pub(crate) fn content_json(&self) -> Option<&str> {
        let (start, len) = self.content_at?;
        let (start, len) = (start as usize, len as usize);
        self.json().get(start..start + len)
    }

    /// The event JSON as the homeserver sent it.
    pub fn raw(&self) -> &Raw<AnyTimelineEvent> {
        self.raw.get_or_init(|| {
            let raw = RawValue::from_string(self.json.to_string())
                .expect("an event's JSON was checked when it was received");
            Raw::from_json(raw)
        })
    }

    /// The event JSON text.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// Deserializes the whole event into ruma's typed form.
    ///
    /// # Errors
    /// When the event does not match its type's schema.
    pub fn deserialize(&self) -> serde_json::Result<AnyTimelineEvent> {
        serde_json::from_str(&self.json)
    }

    /// Deserializes the `content` into `T` (for example ruma's `RoomMessageEventContent`).
    ///
    /// # Errors
    /// When the content is missing or does not match `T`.
    pub fn content<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        match self.content_json() {
            Some(content) => serde_json::from_str(content),
            None => content_of(self.json()),
        }
    }

    /// Deserializes the event's `unsigned` section into `T` (`prev_content`, ...).
    pub(crate) fn unsigned<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        #[derive(serde::Deserialize)]
        struct WithUnsigned<T> {
            unsigned: T,
        }
        serde_json::from_str::<WithUnsigned<T>>(self.json()).map(|w| w.unsigned)
    }

    /// Whether this is a state event.
    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Debug for EventData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("event_id", &self.event_id)
            .field("room_id", &self.room_id)
            .field("sender", &self.sender)
            .field("kind", &self.kind)
            .field("state_key", &self.state_key)
            .finish_non_exhaustive()
    }
}

/// Where `part` (a slice of `json`) lies in it, as (start, length).
fn span_in(json: &str, part: Option<&RawValue>) -> Option<(u32, u32)> {
    let range = crate::util::range_in(json.as_bytes(), part?.get().as_bytes())?;
    Some((u32::try_from(range.start).ok()?, u32::try_from(range.len()).ok()?))
}

/// Deserializes the `content` field of an event's JSON, ignoring the rest.
fn content_of<T: DeserializeOwned>(json: &str) -> serde_json::Result<T> {
    #[derive(serde::Deserialize)]
    struct WithContent<T> {
        content: T,
    }
    serde_json::from_str::<WithContent<T>>(json).map(|c| c.content)
}

/// An ephemeral event (typing, receipt, presence) pushed with a transaction.
///
/// Ephemeral data is not stored: Synapse does not retry it either. It reaches the bridge once,
/// after the transaction that carried it was committed.
#[derive(Debug, Clone)]
pub struct EphemeralEvent {
    /// `m.typing`, `m.receipt`, `m.presence`, ...
    pub kind: String,
    /// The room, for room EDUs.
    pub room_id: Option<OwnedRoomId>,
    /// The event JSON.
    pub json: Box<RawValue>,
}

impl EphemeralEvent {
    /// Deserializes the `content` into `T`.
    ///
    /// # Errors
    /// When the content is missing or does not match `T`.
    pub fn content<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        content_of(self.json.get())
    }
}

/// A to-device message for one of our users' devices (MSC2409).
#[derive(Debug, Clone)]
pub struct ToDeviceEvent {
    /// The event type.
    pub kind: String,
    /// The event JSON (with `sender`, `to_user_id`, `to_device_id`, `content`).
    pub json: Box<RawValue>,
}

/// Encryption bookkeeping pushed with a transaction (MSC3202), kept whole for a future crypto
/// layer: device list changes, one-time-key counts and unused fallback key types.
#[derive(Debug, Clone, Default)]
pub struct DeviceData {
    /// `device_lists` (`changed` and `left`).
    pub device_lists: Option<Box<RawValue>>,
    /// One-time-key counts per user and device.
    pub one_time_key_counts: Option<Box<RawValue>>,
    /// Unused fallback key types per user and device.
    pub unused_fallback_key_types: Option<Box<RawValue>>,
}

impl DeviceData {
    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.device_lists.is_none()
            && self.one_time_key_counts.is_none()
            && self.unused_fallback_key_types.is_none()
    }
}

/// The fields of an event the inbox needs before the bridge sees it.
#[derive(Deserialize)]
pub(crate) struct Envelope<'a> {
    #[serde(borrow)]
    pub(crate) event_id: Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) room_id: Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) sender: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    pub(crate) kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub(crate) state_key: Option<Cow<'a, str>>,
    /// Kept as a slice (skipped all the same), so the content can be read without the rest.
    #[serde(borrow, default)]
    pub(crate) content: Option<&'a RawValue>,
}

impl Envelope<'_> {
    /// Checks the IDs (without copying them), refusing events a homeserver would never send.
    pub(crate) fn validate(&self) -> Result<(&EventId, &RoomId, &UserId), MalformedEvent> {
        let event_id = <&EventId>::try_from(self.event_id.as_ref())
            .map_err(|e| MalformedEvent(format!("bad event_id: {e}")))?;
        let room_id = <&RoomId>::try_from(self.room_id.as_ref())
            .map_err(|e| MalformedEvent(format!("bad room_id: {e}")))?;
        let sender = <&UserId>::try_from(self.sender.as_ref())
            .map_err(|e| MalformedEvent(format!("bad sender: {e}")))?;
        if self.kind.is_empty() {
            return Err(MalformedEvent("empty type".into()));
        }
        // Parsers allow some IDs with control characters; PostgreSQL cannot store a NUL in
        // TEXT, and one such event must not fail the transaction (the homeserver would resend
        // it forever).
        for (field, value) in [
            ("event_id", &self.event_id),
            ("room_id", &self.room_id),
            ("sender", &self.sender),
            ("type", &self.kind),
        ] {
            if has_control(value) {
                return Err(MalformedEvent(format!("control character in {field}")));
            }
        }
        // The spec caps IDs at 255 bytes; ruma checks that for user IDs only, and not at all
        // when its `compat-arbitrary-length-ids` feature is on (matrix-sdk-crypto turns it on
        // in a build with `encryption`). A longer event ID overflows PostgreSQL's unique index
        // (2704 bytes), failing the whole transaction.
        for (field, value) in
            [("event_id", &self.event_id), ("room_id", &self.room_id), ("sender", &self.sender)]
        {
            if value.len() > 255 {
                return Err(MalformedEvent(format!("{field} longer than 255 bytes")));
            }
        }
        Ok((event_id, room_id, sender))
    }
}

/// Whether `s` holds a control character (C0, DEL or C1). IDs are printable ASCII in practice,
/// which one branch-free pass over the bytes confirms; anything else is decoded.
fn has_control(s: &str) -> bool {
    let printable_ascii = !s.bytes().fold(false, |out, b| out | !(0x20..0x7f).contains(&b));
    !printable_ascii && s.chars().any(char::is_control)
}

/// In-memory data of one transaction, handed to the bridge after the commit.
#[derive(Debug, Default)]
pub(crate) struct EphemeralBatch {
    pub(crate) ephemeral: Vec<EphemeralEvent>,
    pub(crate) to_device: Vec<ToDeviceEvent>,
    pub(crate) device_data: DeviceData,
}

impl EphemeralBatch {
    pub(crate) fn is_empty(&self) -> bool {
        self.ephemeral.is_empty() && self.to_device.is_empty() && self.device_data.is_empty()
    }
}

/// Who sent a Matrix event, and what `permissions:` lets them do with the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    /// The Matrix user.
    pub user_id: OwnedUserId,
    /// Their level, computed from the config when the event is handled.
    pub level: PermissionLevel,
    /// For an event in a portal of a bridge with logins: the login it goes out through (the
    /// sender's own in this portal, else the portal's relay). `None` in other rooms and for
    /// bridges without logins; an event that no login can carry never reaches a handler.
    pub via: Option<crate::login::SendVia>,
}

/// A message a real user sent in a portal (not an edit, not a command).
#[derive(Debug, Clone)]
pub struct MatrixMessage {
    /// The event.
    pub event: Event,
    /// Who sent it.
    pub sender: Sender,
    /// The portal the room bridges.
    pub portal: Portal,
    /// Its content (text, notice, emote, media, ...). For replies, `content.relates_to` says to
    /// what; [`MatrixMessage::reply_to`] has the remote message it answers, when known.
    pub content: RoomMessageEventContent,
    /// The remote message this one replies to, when it was bridged.
    pub reply_to: Option<RemoteMessageRef>,
}

/// A message a real user sent in a room that is no portal (not a command either): a room the
/// bot or a ghost was invited to, which the bridge may answer in or make a portal.
#[derive(Debug, Clone)]
pub struct MatrixRoomMessage {
    /// The event.
    pub event: Event,
    /// Who sent it.
    pub sender: Sender,
    /// Its content.
    pub content: RoomMessageEventContent,
}

/// The bridged message an edit, reaction or redaction refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The Matrix event.
    pub event_id: OwnedEventId,
    /// The remote message part it is mapped to.
    pub remote: RemoteMessageRef,
}

/// An edit of a bridged message.
#[derive(Debug, Clone)]
pub struct MatrixEdit {
    /// The edit event.
    pub event: Event,
    /// Who sent it.
    pub sender: Sender,
    /// The portal the room bridges.
    pub portal: Portal,
    /// The edited message.
    pub target: Target,
    /// The new content (`m.new_content`).
    pub new_content: RoomMessageEventContent,
}

/// A reaction (`m.reaction` annotation) to a bridged message.
#[derive(Debug, Clone)]
pub struct MatrixReaction {
    /// The reaction event.
    pub event: Event,
    /// Who sent it.
    pub sender: Sender,
    /// The portal the room bridges.
    pub portal: Portal,
    /// The message reacted to.
    pub target: Target,
    /// The reaction key (usually an emoji).
    pub key: String,
}

/// A redaction (deletion) of a bridged message.
#[derive(Debug, Clone)]
pub struct MatrixRedaction {
    /// The redaction event.
    pub event: Event,
    /// Who sent it.
    pub sender: Sender,
    /// The portal the room bridges.
    pub portal: Portal,
    /// The redacted message.
    pub target: Target,
    /// The reason given.
    pub reason: Option<String>,
}

/// A real user changed a portal's name, topic or avatar.
#[derive(Debug, Clone)]
pub struct MatrixChatInfo {
    /// The state event.
    pub event: Event,
    /// Who changed it.
    pub sender: Sender,
    /// The portal the room bridges.
    pub portal: Portal,
    /// What changed.
    pub change: ChatInfoChange,
}

/// One change of a room's look.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChatInfoChange {
    /// The name (`None`: removed).
    Name(Option<String>),
    /// The topic (`None`: removed).
    Topic(Option<String>),
    /// The avatar (`None`: removed).
    Avatar(Option<ruma::OwnedMxcUri>),
}

/// A membership change of anyone in a room (our users' own changes are not reported).
#[derive(Debug, Clone)]
pub struct MatrixMembership {
    /// The `m.room.member` event.
    pub event: Event,
    /// Who sent it.
    pub sender: Sender,
    /// Whose membership changed.
    pub target: OwnedUserId,
    /// The new membership.
    pub membership: MembershipState,
    /// What changed, from the previous membership: a kick is not a leave.
    pub change: MembershipChange,
    /// Whether the target is one of ours (the bot or a ghost).
    pub target_is_ours: bool,
    /// The portal of the room, if it is one.
    pub portal: Option<Portal>,
}

/// What a membership event changed, told from the previous membership and who sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MembershipChange {
    /// Joined (from anything but a join).
    Joined,
    /// Left by themselves.
    Left,
    /// Made to leave by someone else.
    Kicked,
    /// Banned.
    Banned,
    /// Unbanned (from a ban to leave).
    Unbanned,
    /// Invited.
    Invited,
    /// An invite declined by the invitee, or withdrawn by someone else.
    InviteRevoked,
    /// Knocking.
    Knocked,
    /// A joined member changed their profile (or nothing changed).
    ProfileChanged,
    /// Anything else.
    Other,
}

impl MembershipChange {
    /// The change from `previous` to `now`, where `by_self` says the target sent the event.
    pub fn between(
        previous: Option<&MembershipState>,
        now: &MembershipState,
        by_self: bool,
    ) -> Self {
        use MembershipState as M;
        match (previous, now) {
            (Some(M::Join), M::Join) => Self::ProfileChanged,
            (_, M::Join) => Self::Joined,
            (Some(M::Ban), M::Leave) => Self::Unbanned,
            (Some(M::Invite), M::Leave) => Self::InviteRevoked,
            (_, M::Leave) if by_self => Self::Left,
            (_, M::Leave) => Self::Kicked,
            (_, M::Ban) => Self::Banned,
            (_, M::Invite) => Self::Invited,
            (_, M::Knock) => Self::Knocked,
            _ => Self::Other,
        }
    }
}

/// Who is typing in a room now (our own users left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixTyping {
    /// The room.
    pub room_id: ruma::OwnedRoomId,
    /// The real users typing; empty when everyone stopped.
    pub user_ids: Vec<OwnedUserId>,
}

/// A read receipt of a real user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixReceipt {
    /// The room.
    pub room_id: ruma::OwnedRoomId,
    /// The event read up to.
    pub event_id: OwnedEventId,
    /// Who read it.
    pub user_id: OwnedUserId,
    /// `m.read` or `m.read.private`.
    pub receipt_type: String,
}

/// A real user's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixPresence {
    /// Whose.
    pub user_id: OwnedUserId,
    /// `online`, `unavailable` or `offline`.
    pub presence: String,
    /// The status message.
    pub status_msg: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_found_in_ascii_and_beyond() {
        for s in ["a\u{0}b", "\t", "x\u{7f}", "é\u{85}", "\u{9f}"] {
            assert!(has_control(s), "{s:?}");
        }
        for s in ["", "$abc:x.org", "@ü:x", "!日本:x", "\u{a0}"] {
            assert!(!has_control(s), "{s:?}");
        }
    }
}
