//! Intents: acting as one ghost (or the bot), with the convergence steps done for you.
//!
//! An [`Intent`] is a [`Client`] clone, a [`Store`] clone and a user ID: making one costs nothing
//! and an intent keeps nothing per ghost itself. Its `ensure_*` methods are idempotent and consult
//! the store first, so a ghost already registered and joined sends a message with exactly one
//! HTTP request. The store answers "registered?" and "joined?" from a bounded in-memory cache
//! when it can (no database query), else from the database. Every send first ensures
//! registration and membership; successful calls update the store (join, leave, invite, power
//! levels, per-room profile).
//!
//! Joining follows the mautrix recipe: join; when refused, the bot invites the ghost (and, if
//! the ghost is banned, unbans it first) and the ghost joins again. Concurrent `ensure_joined`
//! calls for the same room and user make one join request.
//!
//! The homeserver pushes a room's events only once one of our users is in it, so what happened
//! before (a human's own join, the room's creators) never arrives. When the bot or a ghost
//! joins or creates a room, its members and state are fetched once and the room is marked
//! fetched; pushed events keep the cache current afterwards (`members.rs`).
//!
//! Power levels are ruma's typed [`RoomPowerLevels`], with the rules of the room's version: from
//! room version 12 on, the room's creators outrank every level (`power.rs`).
//!
//! Actions are split by area: sends (`messages.rs`), state and aliases (`state.rs`), leaving,
//! kicking and banning (`membership.rs`), the global profile (`profile.rs`) and media
//! (`media.rs`). An action with optional parts returns a builder that acts when awaited:
//!
//! ```no_run
//! # async fn example(
//! #     ctx: mxbridge::Context,
//! #     ghost_id: &ruma::UserId,
//! #     room_id: &ruma::RoomId,
//! #     ts: ruma::MilliSecondsSinceUnixEpoch,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! let ghost = ctx.intent(ghost_id)?;
//! let event_id = ghost.send_text(room_id, "hello").at(ts).await?;
//! ghost.redact(room_id, &event_id).reason("deleted on the remote network").await?;
//! ctx.bot().leave(room_id).await?;
//! # Ok(()) }
//! ```
//!
//! Options follow mautrix-python's keyword arguments as builder calls: `.ignore_cache()` on
//! lookups ([`CacheFirst`]), joins, typing and presence, `.check_cache()` on invites,
//! `.extra_content(..)` on membership changes, `.helper(..)` on joins. [`seeds`] maps every
//! method of its `IntentAPI` and `ClientAPI` to the equivalent here.
//!
//! History import: MSC2716 batch sending (`/batch_send`) is gone from Synapse, so importing old
//! messages uses timestamp massaging instead: `.at(ts)` on a send gives the event that
//! `origin_server_ts`. The events are still appended at the end of the room's timeline.
//!
//! Errors: every action fails with [`IntentError`]: a request the homeserver refused or that
//! could not be sent ([`IntentError::kind`] has ruma's [`ErrorKind`], as in
//! `err.kind() == Some(&ErrorKind::Forbidden)`), or the state store. `# Errors` sections below
//! name only what is particular to a method.

mod cached;
#[cfg(feature = "encryption")]
mod crypto;
mod error;
mod join;
mod media;
mod members;
mod membership;
mod messages;
mod pins;
mod power;
mod presence;
mod profile;
pub mod seeds;
mod state;

use ruma::{
    MxcUri, OwnedMxcUri, OwnedRoomId, OwnedUserId, RoomId, UserId,
    api::{OutgoingRequest, client::room::create_room, error::ErrorKind},
    events::room::member::{MembershipState, RoomMemberEventContent},
};

use self::profile::profile_field;
pub use self::{
    cached::CacheFirst,
    error::{IntentError, Result},
    join::{EnsureJoined, Invite, JoinRoom},
    media::Upload,
    membership::{ChangeMembership, ErrorAndLeave},
    messages::{Redact, SendMessage},
    presence::{SetPresence, SetTyping},
    state::{SendState, SetAlias},
};
use crate::{
    client::{self, AuthInput, Client, PathInput},
    store::{MemberRow, Membership, Store},
};
#[doc(no_inline)]
pub use ruma::events::room::power_levels::RoomPowerLevels;

/// One user's view of the homeserver: a ghost in the namespace, or the bot.
#[derive(Clone, Debug)]
pub struct Intent {
    /// The shared client.
    client: Client,
    /// The shared state store.
    store: Store,
    /// Who this intent acts as.
    user_id: OwnedUserId,
    /// Whether `user_id` is the bot (always registered; requests carry no `user_id`).
    is_bot: bool,
    /// For a double puppet: the value of [`DOUBLE_PUPPET_SOURCE`] put in the content of every
    /// event it sends, by which the bridge knows its own events when they come back.
    puppet_source: Option<std::sync::Arc<str>>,
    /// The bridge device, which encrypts what this intent sends into encrypted rooms (an
    /// intent made by the [`Context`](crate::Context) when encryption is allowed).
    #[cfg(feature = "encryption")]
    device: Option<crate::crypto::DeviceSlot>,
}

/// The content key that marks an event a bridge sent as a user's own account (a double
/// puppet); its value names the bridge. Events carrying the bridge's own value are never
/// bridged back to the remote network. The key is the one mautrix bridges use, so that
/// clients and other bridges recognise it.
pub const DOUBLE_PUPPET_SOURCE: &str = "fi.mau.double_puppet_source";

impl Intent {
    /// Creates an intent for `user_id`, which must be the bot or in the user namespace.
    ///
    /// # Errors
    /// [`client::Error::NotInNamespace`] for anyone else.
    ///
    /// With a real user's client ([`Client::for_user`]) it makes that user's intent: a real
    /// user (a double puppet), with the same actions as a ghost's, sent with their own access
    /// token and no `?user_id=`. A real user needs no registration; the appservice's bot helps
    /// their joins as it helps a ghost's.
    pub fn new(client: Client, store: Store, user_id: OwnedUserId) -> Result<Self, client::Error> {
        if !client.may_act_as(&user_id) {
            return Err(client::Error::NotInNamespace { user_id });
        }
        let is_bot = user_id == client.bot_user_id() && !client.is_user_client();
        Ok(Self {
            client,
            store,
            user_id,
            is_bot,
            puppet_source: None,
            #[cfg(feature = "encryption")]
            device: None,
        })
    }

    /// Creates the bot's intent.
    pub fn bot(client: Client, store: Store) -> Self {
        let user_id = client.bot_user_id().to_owned();
        Self {
            client,
            store,
            user_id,
            is_bot: true,
            puppet_source: None,
            #[cfg(feature = "encryption")]
            device: None,
        }
    }

    /// The user this intent acts as.
    pub fn user_id(&self) -> &UserId {
        &self.user_id
    }

    /// Whether this is the bot's intent.
    pub fn is_bot(&self) -> bool {
        self.is_bot
    }

    /// Whether this is a real user's intent (see [`Intent::new`]).
    pub fn is_real_user(&self) -> bool {
        self.client.is_user_client()
    }

    /// Marks this real user's intent as the bridge's double puppet of them: everything it
    /// sends carries [`DOUBLE_PUPPET_SOURCE`] with `source`.
    pub(crate) fn double_puppet(mut self, source: std::sync::Arc<str>) -> Self {
        debug_assert!(self.is_real_user());
        self.puppet_source = Some(source);
        self
    }

    /// Whether this is the bridge's double puppet of a real user (its events are marked).
    pub fn is_double_puppet(&self) -> bool {
        self.puppet_source.is_some()
    }

    /// Adds the double-puppet mark to an event's content, for a double puppet's intent.
    fn mark<T>(&self, content: ruma::serde::Raw<T>) -> serde_json::Result<ruma::serde::Raw<T>> {
        let Some(source) = &self.puppet_source else { return Ok(content) };
        let mut object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(content.json().get())?;
        object.insert(DOUBLE_PUPPET_SOURCE.to_owned(), serde_json::Value::from(&**source));
        Ok(ruma::serde::Raw::from_json(serde_json::value::to_raw_value(&object)?))
    }

    /// The shared state store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The shared client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Sends any Client-Server request as this user, registering it first when needed: for
    /// endpoints without a method here.
    ///
    /// ```no_run
    /// # async fn example(ghost: mxbridge::intent::Intent) -> mxbridge::intent::Result<()> {
    /// use ruma::{api::client::presence::set_presence, presence::PresenceState};
    ///
    /// let user_id = ghost.user_id().to_owned();
    /// ghost.send_request(set_presence::v3::Request::new(user_id, PresenceState::Online)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_request<R>(&self, request: R) -> Result<R::IncomingResponse>
    where
        R: OutgoingRequest,
        R::Authentication: AuthInput,
        R::PathBuilder: PathInput,
    {
        self.ensure_registered().await?;
        Ok(self.client.send(request, self.as_user()).await?)
    }

    /// The identity for the client: `None` for the bot.
    fn as_user(&self) -> Option<&UserId> {
        (!self.is_bot).then_some(&*self.user_id)
    }

    /// The appservice bot's intent (also for a real user's intent).
    fn bot_intent(&self) -> Intent {
        Intent::bot(self.client.appservice().clone(), self.store.clone())
    }

    /// Makes sure the user exists on the homeserver: the store first, else `POST /register`
    /// (`M_USER_IN_USE` counts as success), then remembers it. The bot and real users need no
    /// registration.
    ///
    /// # Errors
    /// A failed registration (`M_EXCLUSIVE` when the homeserver's namespace differs) or store.
    pub async fn ensure_registered(&self) -> Result<()> {
        if self.is_bot || self.is_real_user() || self.store.is_registered(&self.user_id).await? {
            return Ok(());
        }
        match self.client.register(&self.user_id).await {
            Ok(_) => {}
            Err(err) if err.kind() == Some(&ErrorKind::UserInUse) => {}
            Err(err) => return Err(err.into()),
        }
        self.store.mark_registered(&self.user_id).await?;
        Ok(())
    }

    /// Whether the store says the user is joined to the room.
    async fn is_joined_cached(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self.store.membership(room_id, &self.user_id).await? == Some(Membership::Join))
    }

    /// The bot invites `user_id` so it can join, unbanning it first when known to be banned.
    /// A refused invite makes the bot look the user's membership up: a ban is lifted (when
    /// `may_unban`) and the invite sent again; a user invited or joined already needs nothing
    /// more.
    async fn invite_helping(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        banned: bool,
        may_unban: bool,
    ) -> Result<()> {
        if banned {
            self.unban_request(room_id, user_id).await?;
        }
        match self.invite_request(room_id, user_id).await {
            Ok(()) => {}
            Err(err) if err.kind() == Some(&ErrorKind::Forbidden) => {
                match self.member_state(room_id, user_id).await?.map(|m| m.membership) {
                    Some(Membership::Ban) if !banned && may_unban => {
                        self.unban_request(room_id, user_id).await?;
                        self.invite_request(room_id, user_id).await?;
                    }
                    Some(Membership::Invite | Membership::Join) => return Ok(()),
                    _ => return Err(err.into()),
                }
            }
            Err(err) => return Err(err.into()),
        }
        self.record_membership(room_id, user_id, Membership::Invite).await
    }

    /// Stores a membership, keeping the per-room profile already cached.
    async fn record_membership(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        membership: Membership,
    ) -> Result<()> {
        let old = self.store.member(room_id, user_id).await?;
        let (name, avatar) = old.map(|m| (m.displayname, m.avatar_url)).unwrap_or_default();
        let row = MemberRow {
            displayname: name.as_deref(),
            avatar_url: avatar.as_deref(),
            ..MemberRow::new(room_id, user_id, membership)
        };
        self.store.set_membership(row).await?;
        Ok(())
    }

    /// Makes sure this intent's user (a ghost) is invited to (or already in) the room: the bot
    /// invites it unless the store says invited or joined. Returns whether an invite was sent.
    pub async fn ensure_invited(&self, room_id: &RoomId) -> Result<bool> {
        let current = self.store.membership(room_id, &self.user_id).await?;
        if matches!(current, Some(Membership::Invite | Membership::Join)) || self.is_bot {
            return Ok(false);
        }
        self.ensure_registered().await?;
        self.bot_intent()
            .invite_helping(
                room_id,
                &self.user_id,
                current == Some(Membership::Ban),
                !self.is_real_user(),
            )
            .await?;
        Ok(true)
    }

    /// Creates a room as this user (`POST /createRoom` with all of ruma's options). The user is
    /// recorded as joined and the new room's state is fetched at once, so the cache knows its
    /// creators and power levels before the homeserver pushes them.
    pub async fn create_room(&self, request: create_room::v3::Request) -> Result<OwnedRoomId> {
        self.ensure_registered().await?;
        let room_id = self.client.send(request, self.as_user()).await?.room_id;
        self.record_membership(&room_id, &self.user_id, Membership::Join).await?;
        self.fetch_room_state_once(&room_id).await;
        Ok(room_id)
    }

    /// Sets the user's per-room display name and avatar (its `m.room.member` event), only when
    /// they differ from the cached membership row. Returns whether an event was sent.
    pub async fn set_room_profile(
        &self,
        room_id: &RoomId,
        displayname: Option<&str>,
        avatar_url: Option<&MxcUri>,
    ) -> Result<bool> {
        self.ensure_joined(room_id).await?;
        let cached = self.store.member(room_id, &self.user_id).await?;
        if cached.as_ref().is_some_and(|m| {
            m.displayname.as_deref() == displayname && m.avatar_url.as_deref() == avatar_url
        }) {
            return Ok(false);
        }
        let mut content = RoomMemberEventContent::new(MembershipState::Join);
        content.displayname = displayname.map(ToOwned::to_owned);
        content.avatar_url = avatar_url.map(|a| -> OwnedMxcUri { a.to_owned() });
        self.send_state(room_id, self.user_id.as_str(), &content).await?;
        let row = MemberRow {
            displayname,
            avatar_url,
            ..MemberRow::new(room_id, &self.user_id, Membership::Join)
        };
        self.store.set_membership(row).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests;
