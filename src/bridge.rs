//! The [`Bridge`] trait — the one thing a bridge author implements — and what it receives.
//!
//! Every method but [`Bridge::create`] has a default, so the smallest bridge is two functions
//! (`create` and, say, `handle_message`). Methods are declared as `fn … -> impl Future + Send`,
//! so an implementation writes plain `async fn`.
//!
//! Each timeline event reaches exactly one handler: a message in a portal `handle_message`, in
//! another room `handle_room_message`, a command `handle_command`, an edit, reaction or
//! redaction of a bridged message its typed handler, a membership `handle_membership`, and
//! anything else the raw `handle_other`. The Matrix → remote handlers return a [`Delivery`].

use std::{collections::BTreeMap, fmt, future::Future, sync::Arc};

pub use crate::error::{BridgeError, BridgeResult};

use ruma::{
    RoomAliasId, UserId,
    thirdparty::{Location, Protocol, User},
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    commands::{CommandCall, CommandSpec},
    context::Context,
    event::{
        DeviceData, EphemeralEvent, Event, MatrixChatInfo, MatrixEdit, MatrixMembership,
        MatrixMessage, MatrixPresence, MatrixReaction, MatrixReceipt, MatrixRedaction,
        MatrixRoomMessage, MatrixTyping, ToDeviceEvent,
    },
    login::{AnyLoginProcess, LoginFlow, UserLogin},
    remote::{
        NewChat, NewGroup, PortalInfo, PortalKey, RemoteMessageId, RemoteTxnId, ResolvedIdentifier,
    },
    supervise::Task,
};

/// What a Matrix event became on the remote network: what the Matrix → remote handlers
/// return. The framework records it when it marks the event handled, so a bridge never
/// writes mappings itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Delivery {
    /// Delivered as these remote messages (several when the network needed several for one
    /// event, such as a long text cut into lines). The event is mapped to each.
    Sent(Vec<RemoteMessageId>),
    /// Delivered; its remote ID comes later with the network's echo, which carries this
    /// transaction ID back: the bridge queues the echo as a [`crate::RemoteEvent::Message`]
    /// with `echo_of` set, which maps the event to the echoed message instead of sending it.
    Pending(RemoteTxnId),
    /// Delivered, and there is nothing to map (an edit or a deletion on most networks).
    Done,
    /// The bridge cannot deliver this kind of event here; the reason is shown to the sender.
    NotSupported(String),
}

impl Delivery {
    /// Delivered as one remote message.
    pub fn sent(id: impl Into<RemoteMessageId>) -> Self {
        Self::Sent(vec![id.into()])
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

    /// The bridge's long-running tasks, such as the connection to the remote network and its
    /// read loop: started after [`Bridge::start`], started again with growing pauses when one
    /// fails or panics (shown at `/health/state`), told to stop on shutdown. Each gets an
    /// `Arc` of the bridge through the closure that starts it, so it can call the bridge's own
    /// methods. See [`Task`].
    fn tasks(self: &Arc<Self>) -> Vec<Task> {
        Vec::new()
    }

    /// What the portal room of a remote chat looks like, so that the remote → Matrix pipeline
    /// can create it when a message comes for a chat that has none
    /// ([`Context::queue_remote`]), and bring it in line on a resync
    /// ([`crate::RemoteEvent::ChatResync`], [`Context::resync_portal`]). Default: `None`, and
    /// such messages are parked (a resync changes nothing).
    fn portal_info(
        &self,
        portal: &PortalKey,
    ) -> impl Future<Output = BridgeResult<Option<PortalInfo>>> + Send {
        let _ = portal;
        async { Ok(None) }
    }

    /// Resolves an identifier a user typed (a phone number, a user name, ...) to a remote user,
    /// through one of the user's logins, for the provisioning API's `resolve_identifier` and
    /// `create_dm`. With `create_dm`, the DM chat with that user is wanted too: return it in
    /// [`ResolvedIdentifier::dm`], creating it on the network when it does not exist; the
    /// framework then makes its portal (DMs are usually keyed with
    /// [`PortalKey::for_login`]). `Ok(None)`: nobody has that identifier. Default:
    /// [unsupported](BridgeError::unsupported).
    fn resolve_identifier(
        &self,
        login: &UserLogin,
        identifier: &str,
        create_dm: bool,
    ) -> impl Future<Output = BridgeResult<Option<ResolvedIdentifier>>> + Send {
        let _ = (login, identifier, create_dm);
        async { Err(BridgeError::unsupported("this bridge cannot resolve identifiers")) }
    }

    /// Creates a group chat on the network through one of the user's logins, for the
    /// provisioning API's `create_group`; returns its key and looks, and the framework makes
    /// its portal. Default: [unsupported](BridgeError::unsupported).
    fn create_group(
        &self,
        login: &UserLogin,
        group: &NewGroup,
    ) -> impl Future<Output = BridgeResult<NewChat>> + Send {
        let _ = (login, group);
        async { Err(BridgeError::unsupported("this bridge cannot create group chats")) }
    }

    /// Called once on shutdown, after the inbox stopped handing out events and the tasks
    /// stopped.
    fn stop(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// A real user sent a message in a portal (not an edit, not a command): deliver it to the
    /// remote chat and say what it became there ([`Delivery`]). The framework records the
    /// mapping (for later edits, reactions, redactions and replies) when it marks the event
    /// handled; a [`Delivery::NotSupported`] gets its sender a notice and a failed send status.
    ///
    /// Called at least once per event: an event whose handling succeeded is never handed out
    /// again, but a crash between the remote send and the bookkeeping hands it out once more
    /// after restart (at most `inbox.record_window` events per room), so a handler that can
    /// should pass the event ID to the network as an idempotency key. Not called for events
    /// sent by our own users (echo suppression) nor for commands to the bot. The state cache
    /// already reflects the event when this runs. An `Err` is retried with backoff, then the
    /// event is parked and its sender told.
    fn handle_message(
        &self,
        message: &MatrixMessage,
    ) -> impl Future<Output = BridgeResult<Delivery>> + Send {
        let _ = message;
        async { Ok(Delivery::NotSupported("this bridge does not send messages".into())) }
    }

    /// A real user sent a message in a room that is no portal (and no command). Default:
    /// ignored.
    fn handle_room_message(
        &self,
        message: &MatrixRoomMessage,
    ) -> impl Future<Output = BridgeResult> + Send {
        let _ = message;
        async { Ok(()) }
    }

    /// A real user edited a bridged message. Not called when the edited event is not bridged
    /// (its sender gets a notice instead). Default: not supported.
    fn handle_edit(
        &self,
        edit: &MatrixEdit,
    ) -> impl Future<Output = BridgeResult<Delivery>> + Send {
        let _ = edit;
        async { Ok(Delivery::NotSupported("edits are not bridged".into())) }
    }

    /// A real user reacted to a bridged message. Not called for reactions to other events.
    /// Default: not supported (the reaction gets a failed send status, and no notice).
    fn handle_reaction(
        &self,
        reaction: &MatrixReaction,
    ) -> impl Future<Output = BridgeResult<Delivery>> + Send {
        let _ = reaction;
        async { Ok(Delivery::NotSupported("reactions are not bridged".into())) }
    }

    /// A real user redacted a bridged message. Not called for redactions of other events.
    /// Default: not supported (the redaction gets a failed send status, and no notice).
    fn handle_redaction(
        &self,
        redaction: &MatrixRedaction,
    ) -> impl Future<Output = BridgeResult<Delivery>> + Send {
        let _ = redaction;
        async { Ok(Delivery::NotSupported("deletions are not bridged".into())) }
    }

    /// A real user changed a portal's name, topic or avatar. Default: not supported (the
    /// change gets a failed send status, and no notice).
    fn handle_chat_info(
        &self,
        info: &MatrixChatInfo,
    ) -> impl Future<Output = BridgeResult<Delivery>> + Send {
        let _ = info;
        async { Ok(Delivery::NotSupported("room changes are not bridged".into())) }
    }

    /// A membership changed (a join, a leave, an invite of the bot or a ghost, ...). Invites of
    /// our users were already accepted or refused (see [`Bridge::accept_invite`]).
    fn handle_membership(
        &self,
        membership: &MatrixMembership,
    ) -> impl Future<Output = BridgeResult> + Send {
        let _ = membership;
        async { Ok(()) }
    }

    /// Whether the bot or a ghost accepts an invite from a user whose `permissions:` level is
    /// `user` or more (the framework refuses everyone else, with a reason, before asking).
    /// Default: yes.
    fn accept_invite(&self, invite: &MatrixMembership) -> impl Future<Output = bool> + Send {
        let _ = invite;
        async { true }
    }

    /// The raw hook: a timeline event that no typed handler above takes (state events other
    /// than membership, custom event types, a member event without a valid membership, ...).
    /// Never called for an event a typed handler was or will be called for. Same retry
    /// contract as [`Bridge::handle_message`].
    fn handle_other(&self, event: &Event) -> impl Future<Output = BridgeResult> + Send {
        let _ = event;
        async { Ok(()) }
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

    /// The ways users can log in to the remote network. None (the default): the bridge has
    /// no per-user logins, and offers no login commands and no provisioning API. See
    /// [`crate::login`].
    fn login_flows(&self) -> Vec<LoginFlow> {
        Vec::new()
    }

    /// Starts a login of `user_id` with one of [`Bridge::login_flows`]:
    /// `Ok(Box::new(MyLogin { .. }))`, where `MyLogin` implements [`LoginProcess`]. The
    /// framework drives it (bot commands or the provisioning API), stores the completed login
    /// and calls [`Bridge::connect_login`] for it.
    ///
    /// [`LoginProcess`]: crate::login::LoginProcess
    fn create_login(
        &self,
        flow_id: &str,
        user_id: &UserId,
    ) -> impl Future<Output = BridgeResult<Box<dyn AnyLoginProcess>>> + Send {
        let _ = (flow_id, user_id);
        async { Err(BridgeError::permanent("this bridge has no logins")) }
    }

    /// Connects a stored login to the network: after it completed, and at every start for
    /// each login that is not logged out or refused (a login survives restarts). `Ok` means
    /// connected; an `Err` is reported as the login's state (`BAD_CREDENTIALS` when
    /// [permanent](BridgeError::permanent), else `UNKNOWN_ERROR`). Later changes are reported
    /// with [`Context::set_login_state`]. Keep it short: start the connection's own task and
    /// return.
    fn connect_login(&self, login: &UserLogin) -> impl Future<Output = BridgeResult> + Send {
        let _ = login;
        async { Ok(()) }
    }

    /// The user logs out of a login: disconnect it and end the remote session. The framework
    /// forgets the login afterwards (also when this fails).
    fn logout(&self, login: &UserLogin) -> impl Future<Output = BridgeResult> + Send {
        let _ = login;
        async { Ok(()) }
    }
}
