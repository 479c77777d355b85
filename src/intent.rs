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
//! History import: MSC2716 batch sending (`/batch_send`) is gone from Synapse, so importing old
//! messages uses timestamp massaging instead: `.at(ts)` on a send gives the event that
//! `origin_server_ts`. The events are still appended at the end of the room's timeline.
//!
//! Errors: every action fails with [`IntentError`]: a request the homeserver refused or that
//! could not be sent ([`IntentError::kind`] has ruma's [`ErrorKind`], as in
//! `err.kind() == Some(&ErrorKind::Forbidden)`), or the state store. `# Errors` sections below
//! name only what is particular to a method.

mod error;
mod media;
mod members;
mod membership;
mod messages;
mod power;
mod profile;
mod state;

use ruma::{
    MxcUri, OwnedMxcUri, OwnedRoomId, OwnedUserId, RoomId, UserId,
    api::{OutgoingRequest, client::room::create_room, error::ErrorKind},
    events::room::member::{MembershipState, RoomMemberEventContent},
};

use self::profile::profile_field;
pub use self::{
    error::{IntentError, Result},
    media::Upload,
    membership::ChangeMembership,
    messages::{Redact, SendMessage},
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
}

impl Intent {
    /// Creates an intent for `user_id`, which must be the bot or in the user namespace.
    ///
    /// # Errors
    /// [`client::Error::NotInNamespace`] for anyone else.
    pub fn new(client: Client, store: Store, user_id: OwnedUserId) -> Result<Self, client::Error> {
        if !client.may_act_as(&user_id) {
            return Err(client::Error::NotInNamespace { user_id });
        }
        let is_bot = user_id == client.bot_user_id();
        Ok(Self { client, store, user_id, is_bot })
    }

    /// Creates the bot's intent.
    pub fn bot(client: Client, store: Store) -> Self {
        let user_id = client.bot_user_id().to_owned();
        Self { client, store, user_id, is_bot: true }
    }

    /// The user this intent acts as.
    pub fn user_id(&self) -> &UserId {
        &self.user_id
    }

    /// Whether this is the bot's intent.
    pub fn is_bot(&self) -> bool {
        self.is_bot
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

    fn bot_intent(&self) -> Intent {
        Intent::bot(self.client.clone(), self.store.clone())
    }

    /// Makes sure the user exists on the homeserver: the store first, else `POST /register`
    /// (`M_USER_IN_USE` counts as success), then remembers it. The bot needs no registration.
    ///
    /// # Errors
    /// A failed registration (`M_EXCLUSIVE` when the homeserver's namespace differs) or store.
    pub async fn ensure_registered(&self) -> Result<()> {
        if self.is_bot || self.store.is_registered(&self.user_id).await? {
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

    /// Makes sure the user is in the room. Returns `false` when the store already said so (no
    /// request), `true` when it joined now.
    ///
    /// A ghost that is refused is invited by the bot (unbanned first when banned) and joins
    /// again; the bot's own join is a plain join. Concurrent calls for the same room and user
    /// make one join request. After a join, the room's members and state are fetched once (see
    /// [`Intent::ensure_room_state`]).
    ///
    /// # Errors
    /// A refusal the bot's help does not cure: of its invite (or unban), or of the second join.
    pub async fn ensure_joined(&self, room_id: &RoomId) -> Result<bool> {
        if self.is_joined_cached(room_id).await? {
            return Ok(false);
        }
        let flight = self.client.join_flight(room_id, &self.user_id);
        let _turn = flight.lock.lock().await;
        // Someone else may have joined while we waited for our turn.
        if self.is_joined_cached(room_id).await? {
            return Ok(false);
        }
        self.join_now(room_id).await?;
        Ok(true)
    }

    async fn join_now(&self, room_id: &RoomId) -> Result<()> {
        self.ensure_registered().await?;
        match self.join_request(room_id).await {
            Ok(()) => {}
            Err(err) if !self.is_bot && err.kind() == Some(&ErrorKind::Forbidden) => {
                let cached_ban =
                    self.store.membership(room_id, &self.user_id).await? == Some(Membership::Ban);
                self.bot_intent().invite_helping(room_id, &self.user_id, cached_ban).await?;
                self.join_request(room_id).await?;
            }
            Err(err) => return Err(err.into()),
        }
        self.record_membership(room_id, &self.user_id, Membership::Join).await?;
        self.fetch_room_state_once(room_id).await;
        Ok(())
    }

    /// The bot invites `user_id` so it can join, unbanning it first when known to be banned.
    /// A refused invite makes the bot look the user's membership up: a ban is lifted and the
    /// invite sent again; a user invited or joined already needs nothing more.
    async fn invite_helping(&self, room_id: &RoomId, user_id: &UserId, banned: bool) -> Result<()> {
        if banned {
            self.unban_request(room_id, user_id).await?;
        }
        match self.invite_request(room_id, user_id).await {
            Ok(()) => {}
            Err(err) if err.kind() == Some(&ErrorKind::Forbidden) => {
                match self.member_state(room_id, user_id).await?.map(|m| m.membership) {
                    Some(Membership::Ban) if !banned => {
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
            .invite_helping(room_id, &self.user_id, current == Some(Membership::Ban))
            .await?;
        Ok(true)
    }

    /// Invites anyone (a real user too), as this user, and records the invite. Returns whether
    /// an invite was sent.
    ///
    /// Idempotent: a user the state cache knows as invited or joined gets no request, and a
    /// refusal (Synapse answers 403 `M_FORBIDDEN`, "… is already in the room.") after which the
    /// room's state says the user is invited or joined counts as done.
    ///
    /// # Errors
    /// The refusal of an invite when the user is not in the room afterwards either.
    pub async fn invite(&self, room_id: &RoomId, user_id: &UserId) -> Result<bool> {
        self.ensure_joined(room_id).await?;
        let in_room =
            |m: Option<Membership>| matches!(m, Some(Membership::Invite | Membership::Join));
        if in_room(self.store.membership(room_id, user_id).await?) {
            return Ok(false);
        }
        match self.invite_request(room_id, user_id).await {
            Ok(()) => {}
            Err(err) if err.kind() == Some(&ErrorKind::Forbidden) => {
                let now = self.member_state(room_id, user_id).await?;
                if in_room(now.map(|m| m.membership)) {
                    return Ok(false);
                }
                return Err(err.into());
            }
            Err(err) => return Err(err.into()),
        }
        self.record_membership(room_id, user_id, Membership::Invite).await?;
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
