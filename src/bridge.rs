//! The [`Bridge`] trait — the one thing a bridge author implements — and what it receives.
//!
//! Every method but [`Bridge::create`] has a default, so the smallest bridge is two functions
//! (`create` and, say, `handle_message`). Methods are declared as `fn … -> impl Future + Send`, so an
//! implementation writes plain `async fn`.

use std::{collections::BTreeMap, fmt, future::Future, sync::Arc};

use ruma::{
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomAliasId, UserId,
    events::AnyTimelineEvent,
    serde::Raw,
    thirdparty::{Location, Protocol, User},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;

use crate::{
    context::Context,
    matrix::{
        CommandCall, CommandSpec, MatrixEdit, MatrixMembership, MatrixMessage, MatrixPresence,
        MatrixReaction, MatrixReceipt, MatrixRedaction, MatrixTyping,
    },
};

/// An error a bridge handler returns.
///
/// Any `std::error::Error` converts into it with `?`. By default a failed event is retried with
/// backoff and parked after the configured number of attempts; [`BridgeError::permanent`] parks
/// it at once (for errors a retry cannot fix, such as content the remote network refuses).
pub struct BridgeError {
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
    permanent: bool,
}

impl BridgeError {
    /// An error worth retrying.
    pub fn new(message: impl fmt::Display) -> Self {
        Self { source: message.to_string().into(), permanent: false }
    }

    /// An error that a retry cannot fix: the event is parked at once.
    pub fn permanent(message: impl fmt::Display) -> Self {
        Self { source: message.to_string().into(), permanent: true }
    }

    /// Marks this error as one a retry cannot fix.
    #[must_use]
    pub fn into_permanent(mut self) -> Self {
        self.permanent = true;
        self
    }

    /// Whether retrying is pointless.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The underlying error.
    pub fn source_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for BridgeError {
    fn from(e: E) -> Self {
        Self { source: Box::new(e), permanent: false }
    }
}

impl fmt::Debug for BridgeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BridgeError")
            .field("error", &self.source.to_string())
            .field("permanent", &self.permanent)
            .finish()
    }
}

impl fmt::Display for BridgeError {
    /// The error and its causes, `: `-separated; a cause whose text the message already holds
    /// (an error that prints its source, or forwards to it) is not repeated.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.source.to_string();
        let mut cause = self.source.source();
        while let Some(c) = cause {
            let text = c.to_string();
            if !shown.contains(&text) {
                shown.push_str(": ");
                shown.push_str(&text);
            }
            cause = c.source();
        }
        f.write_str(&shown)
    }
}

/// The result of bridge handlers.
pub type BridgeResult<T = ()> = Result<T, BridgeError>;

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
        let h: crate::server::transactions::Envelope<'_> =
            serde_json::from_str(json).map_err(|e| match e.classify() {
                serde_json::error::Category::Data => {
                    MalformedEvent(format!("bad event envelope: {e}"))
                }
                _ => MalformedEvent(format!("not JSON: {e}")),
            })?;
        let ids = h.validate()?;
        Ok(Self::from_validated(ids, &h, json))
    }

    /// Builds an event from an envelope already parsed and validated (the intake's) and the
    /// event's JSON (a slice of a body that parsed as JSON), copying the JSON once.
    pub(crate) fn from_validated(
        (event_id, room_id, sender): (&ruma::EventId, &ruma::RoomId, &ruma::UserId),
        envelope: &crate::server::transactions::Envelope<'_>,
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
        }))
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

/// A bridge: the Matrix side of a connection to another chat network.
///
/// The framework owns the HTTP server, the inbox, the store and the client; it calls these
/// methods. Events of one room arrive in order, one at a time; rooms run in parallel (bounded by
/// `inbox.room_concurrency`), so implementations must be `Send + Sync` and guard their own shared
/// state.
pub trait Bridge: Sized + Send + Sync + 'static {
    /// The bridge's own settings, read from the config file's `bridge:` section.
    type Config: DeserializeOwned + Serialize + Default + fmt::Debug + Send + Sync + 'static;

    /// The bridge's name, shown by the CLI.
    const NAME: &'static str;

    /// The commented YAML of the `bridge:` section printed by `example-config`, indented by
    /// two spaces (the framework adds the `bridge:` line). Empty when there are no settings.
    fn example_config() -> &'static str {
        ""
    }

    /// Builds the bridge. Called once at start, after the store is migrated and before the
    /// HTTP server listens. May do network calls (log in to the remote network); keep it short.
    fn create(
        config: Self::Config,
        ctx: Context,
    ) -> impl Future<Output = BridgeResult<Self>> + Send;

    /// Called once after the server listens and before stored events are handed out.
    fn start(&self) -> impl Future<Output = BridgeResult> + Send {
        async { Ok(()) }
    }

    /// Called once on shutdown, after the inbox stopped handing out events.
    fn stop(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Handles one timeline event from the inbox: the raw hook, called before the typed
    /// methods below (which most bridges implement instead).
    ///
    /// Called at least once per event: an event whose handling succeeded is never handed out
    /// again, but a crash between success and bookkeeping hands it out once more after restart —
    /// handlers that send elsewhere should be idempotent by event ID. Not called for events sent
    /// by our own users (echo suppression) nor for commands to the bot. The state cache already
    /// reflects the event when this runs. An `Err` is retried with backoff, then the event is
    /// parked and the room gets a notice.
    fn handle_event(&self, event: &Event) -> impl Future<Output = BridgeResult> + Send {
        let _ = event;
        async { Ok(()) }
    }

    /// A real user sent a message (not an edit, not a command). Same contract as
    /// [`Bridge::handle_event`].
    fn handle_message(&self, message: &MatrixMessage) -> impl Future<Output = BridgeResult> + Send {
        let _ = message;
        async { Ok(()) }
    }

    /// A real user edited a message.
    fn handle_edit(&self, edit: &MatrixEdit) -> impl Future<Output = BridgeResult> + Send {
        let _ = edit;
        async { Ok(()) }
    }

    /// A real user reacted to an event.
    fn handle_reaction(
        &self,
        reaction: &MatrixReaction,
    ) -> impl Future<Output = BridgeResult> + Send {
        let _ = reaction;
        async { Ok(()) }
    }

    /// A real user redacted an event.
    fn handle_redaction(
        &self,
        redaction: &MatrixRedaction,
    ) -> impl Future<Output = BridgeResult> + Send {
        let _ = redaction;
        async { Ok(()) }
    }

    /// A membership changed (a join, a leave, an invite of the bot or a ghost, ...). Invites of
    /// our users were already accepted when [`Bridge::accept_invite`] said so.
    fn handle_membership(
        &self,
        membership: &MatrixMembership,
    ) -> impl Future<Output = BridgeResult> + Send {
        let _ = membership;
        async { Ok(()) }
    }

    /// Whether the bot or a ghost accepts an invite. Default: yes.
    fn accept_invite(&self, invite: &MatrixMembership) -> impl Future<Output = bool> + Send {
        let _ = invite;
        async { true }
    }

    /// The commands the bot understands; `help` is added by the framework. With none, messages
    /// are never taken for commands.
    fn commands(&self) -> Vec<CommandSpec> {
        Vec::new()
    }

    /// Runs a command whose name is in [`Bridge::commands`] and which the caller's level
    /// allows. The returned text (Markdown) is posted by the bot as a notice; an error is posted
    /// as a failure, never retried.
    fn handle_command(
        &self,
        call: &CommandCall,
    ) -> impl Future<Output = BridgeResult<String>> + Send {
        let _ = call;
        async { Err(BridgeError::permanent("this bridge has no commands")) }
    }

    /// Handles an ephemeral event (typing, receipt, presence) raw, before the typed
    /// `handle_typing`, `handle_receipt` and `handle_presence`. At most once; may be dropped by
    /// the homeserver while the bridge is down.
    fn handle_ephemeral(&self, event: &EphemeralEvent) -> impl Future<Output = ()> + Send {
        let _ = event;
        async {}
    }

    /// Real users typing in a room (from `m.typing`; our own users left out). At most once.
    fn handle_typing(&self, typing: &MatrixTyping) -> impl Future<Output = ()> + Send {
        let _ = typing;
        async {}
    }

    /// A real user's read receipt. At most once.
    fn handle_receipt(&self, receipt: &MatrixReceipt) -> impl Future<Output = ()> + Send {
        let _ = receipt;
        async {}
    }

    /// A real user's presence. At most once.
    fn handle_presence(&self, presence: &MatrixPresence) -> impl Future<Output = ()> + Send {
        let _ = presence;
        async {}
    }

    /// Handles a to-device message. At most once.
    fn handle_to_device(&self, event: &ToDeviceEvent) -> impl Future<Output = ()> + Send {
        let _ = event;
        async {}
    }

    /// Receives MSC3202 device data (for encryption support).
    fn handle_device_data(&self, data: &DeviceData) -> impl Future<Output = ()> + Send {
        let _ = data;
        async {}
    }

    /// The homeserver asks whether a user in our namespace exists. Return `true` after creating
    /// the ghost (registering it), `false` to answer 404. Called for users in the namespace only.
    fn query_user(&self, user_id: &UserId) -> impl Future<Output = BridgeResult<bool>> + Send {
        let _ = user_id;
        async { Ok(false) }
    }

    /// The homeserver asks whether an alias in our namespace exists. Return `true` after
    /// creating the room and the alias, `false` to answer 404.
    fn query_alias(&self, alias: &RoomAliasId) -> impl Future<Output = BridgeResult<bool>> + Send {
        let _ = alias;
        async { Ok(false) }
    }

    /// Describes a third-party protocol from the registration's `protocols`.
    fn thirdparty_protocol(
        &self,
        protocol: &str,
    ) -> impl Future<Output = BridgeResult<Option<Protocol>>> + Send {
        let _ = protocol;
        async { Ok(None) }
    }

    /// Looks up portal rooms of a protocol by its location fields.
    fn thirdparty_locations(
        &self,
        protocol: &str,
        fields: &BTreeMap<String, String>,
    ) -> impl Future<Output = BridgeResult<Vec<Location>>> + Send {
        let _ = (protocol, fields);
        async { Ok(Vec::new()) }
    }

    /// Looks up the remote locations bridged by a Matrix alias.
    fn thirdparty_locations_by_alias(
        &self,
        alias: &RoomAliasId,
    ) -> impl Future<Output = BridgeResult<Vec<Location>>> + Send {
        let _ = alias;
        async { Ok(Vec::new()) }
    }

    /// Looks up remote users of a protocol by its user fields.
    fn thirdparty_users(
        &self,
        protocol: &str,
        fields: &BTreeMap<String, String>,
    ) -> impl Future<Output = BridgeResult<Vec<User>>> + Send {
        let _ = (protocol, fields);
        async { Ok(Vec::new()) }
    }

    /// Looks up the remote users behind a Matrix user ID.
    fn thirdparty_users_by_id(
        &self,
        user_id: &UserId,
    ) -> impl Future<Output = BridgeResult<Vec<User>>> + Send {
        let _ = user_id;
        async { Ok(Vec::new()) }
    }

    /// Extra routes served on the appservice port (for example a webhook endpoint). They are
    /// not behind the homeserver's token: authenticate them yourself.
    fn routes(self: &Arc<Self>) -> axum::Router {
        axum::Router::new()
    }
}
