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
//! History import: MSC2716 batch sending (`/batch_send`) is gone from Synapse, so importing old
//! messages uses timestamp massaging instead: every send here takes an optional `ts`
//! ([`MilliSecondsSinceUnixEpoch`]) that becomes the event's `origin_server_ts`. The events are
//! still appended at the end of the room's timeline.

mod error;
mod members;
mod power;

use std::time::Duration;

use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, MxcUri, OwnedEventId, OwnedMxcUri, OwnedRoomId,
    OwnedUserId, RoomId, UserId,
    api::{client::room::create_room, error::ErrorKind},
    events::{
        MessageLikeEventContent, StateEventContent,
        room::{
            member::{MembershipState, RoomMemberEventContent},
            message::{RoomMessageEventContent, RoomMessageEventContentWithoutRelation},
        },
    },
    profile::{AvatarUrl, DisplayName, UserProfile},
};

pub use self::error::{IntentError, Result};
use crate::{
    client::{self, Client},
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

    /// The client, for calls without an intent wrapper.
    pub fn client(&self) -> &Client {
        &self.client
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
    /// When joining fails even after the bot's help, or the store fails.
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
        match self.client.join(self.as_user(), room_id).await {
            Ok(_) => {}
            Err(err) if !self.is_bot && err.kind() == Some(&ErrorKind::Forbidden) => {
                let cached_ban =
                    self.store.membership(room_id, &self.user_id).await? == Some(Membership::Ban);
                self.bot_intent().invite_helping(room_id, &self.user_id, cached_ban).await?;
                self.client.join(self.as_user(), room_id).await?;
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
            self.client.unban(None, room_id, user_id, None).await?;
        }
        match self.client.invite(None, room_id, user_id, None).await {
            Ok(()) => {}
            Err(err) if err.kind() == Some(&ErrorKind::Forbidden) => {
                match self.member_state(room_id, user_id).await?.map(|m| m.membership) {
                    Some(Membership::Ban) if !banned => {
                        self.client.unban(None, room_id, user_id, None).await?;
                        self.client.invite(None, room_id, user_id, None).await?;
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
    ///
    /// # Errors
    /// On a failed invite or store.
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
    /// On a failed join, a refused invite of a user not in the room, or the store.
    pub async fn invite(&self, room_id: &RoomId, user_id: &UserId) -> Result<bool> {
        self.ensure_joined(room_id).await?;
        let in_room =
            |m: Option<Membership>| matches!(m, Some(Membership::Invite | Membership::Join));
        if in_room(self.store.membership(room_id, user_id).await?) {
            return Ok(false);
        }
        match self.client.invite(self.as_user(), room_id, user_id, None).await {
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

    /// Leaves the room (or rejects an invite) and records it.
    ///
    /// # Errors
    /// On a failed request or store.
    pub async fn leave(&self, room_id: &RoomId, reason: Option<&str>) -> Result<()> {
        self.client.leave(self.as_user(), room_id, reason).await?;
        self.record_membership(room_id, &self.user_id, Membership::Leave).await
    }

    /// Creates a room as this user (`POST /createRoom` with all of ruma's options). The user is
    /// recorded as joined and the new room's state is fetched at once, so the cache knows its
    /// creators and power levels before the homeserver pushes them.
    ///
    /// # Errors
    /// On a failed registration, request or store.
    pub async fn create_room(&self, request: create_room::v3::Request) -> Result<OwnedRoomId> {
        self.ensure_registered().await?;
        let room_id = self.client.create_room(self.as_user(), request).await?;
        self.record_membership(&room_id, &self.user_id, Membership::Join).await?;
        self.fetch_room_state_once(&room_id).await;
        Ok(room_id)
    }

    /// Sets the global display name, only when it differs from the current one (read with one
    /// `GET /profile`). Returns whether it was changed.
    ///
    /// # Errors
    /// On a failed request.
    pub async fn set_displayname(&self, displayname: &str) -> Result<bool> {
        self.ensure_registered().await?;
        let current = self.global_profile(&self.user_id).await?;
        if profile_field::<DisplayName>(current.as_ref()).as_deref() == Some(displayname) {
            return Ok(false);
        }
        self.client.set_displayname(self.as_user(), displayname).await?;
        Ok(true)
    }

    /// Sets the global avatar, only when it differs from the current one. Returns whether it
    /// was changed.
    ///
    /// # Errors
    /// On a failed request.
    pub async fn set_avatar_url(&self, avatar_url: &MxcUri) -> Result<bool> {
        self.ensure_registered().await?;
        let current = self.global_profile(&self.user_id).await?;
        if profile_field::<AvatarUrl>(current.as_ref()).as_deref() == Some(avatar_url) {
            return Ok(false);
        }
        self.client.set_avatar_url(self.as_user(), avatar_url).await?;
        Ok(true)
    }

    /// A user's global profile; `None` when the homeserver has none to show (404, or 403 where
    /// profiles are visible to room-mates only).
    async fn global_profile(&self, user_id: &UserId) -> Result<Option<UserProfile>> {
        match self.client.get_profile(user_id).await {
            Ok(profile) => Ok(Some(profile)),
            Err(err) if matches!(err.kind(), Some(ErrorKind::NotFound | ErrorKind::Forbidden)) => {
                Ok(None)
            }
            Err(err) if err.status() == Some(reqwest::StatusCode::NOT_FOUND) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Sets the user's per-room display name and avatar (its `m.room.member` event), only when
    /// they differ from the cached membership row. Returns whether an event was sent.
    ///
    /// # Errors
    /// On a failed request or store.
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
        self.client
            .send_state_event(self.as_user(), room_id, self.user_id.as_str(), &content, None)
            .await?;
        let row = MemberRow {
            displayname,
            avatar_url,
            ..MemberRow::new(room_id, &self.user_id, Membership::Join)
        };
        self.store.set_membership(row).await?;
        Ok(true)
    }

    /// Sends a message-like event, joining first if needed; `ts` massages its timestamp.
    ///
    /// # Errors
    /// On a failed join or send.
    pub async fn send_message<C: MessageLikeEventContent>(
        &self,
        room_id: &RoomId,
        content: &C,
        ts: Option<MilliSecondsSinceUnixEpoch>,
    ) -> Result<OwnedEventId> {
        self.ensure_joined(room_id).await?;
        Ok(self.client.send_message_event(self.as_user(), room_id, content, None, ts).await?)
    }

    /// Sends plain text (`m.text`).
    ///
    /// # Errors
    /// As [`Intent::send_message`].
    pub async fn send_text(
        &self,
        room_id: &RoomId,
        text: &str,
        ts: Option<MilliSecondsSinceUnixEpoch>,
    ) -> Result<OwnedEventId> {
        self.send_message(room_id, &RoomMessageEventContent::text_plain(text), ts).await
    }

    /// Sends a notice (`m.notice`), the message type for bots.
    ///
    /// # Errors
    /// As [`Intent::send_message`].
    pub async fn send_notice(
        &self,
        room_id: &RoomId,
        text: &str,
        ts: Option<MilliSecondsSinceUnixEpoch>,
    ) -> Result<OwnedEventId> {
        self.send_message(room_id, &RoomMessageEventContent::notice_plain(text), ts).await
    }

    /// Sends a state event, joining first if needed.
    ///
    /// # Errors
    /// On a failed join or send (403 below the event's power level).
    pub async fn send_state<C, K>(
        &self,
        room_id: &RoomId,
        state_key: &K,
        content: &C,
        ts: Option<MilliSecondsSinceUnixEpoch>,
    ) -> Result<OwnedEventId>
    where
        C: StateEventContent,
        C::StateKey: std::borrow::Borrow<K>,
        K: AsRef<str> + ?Sized,
    {
        self.ensure_joined(room_id).await?;
        Ok(self.client.send_state_event(self.as_user(), room_id, state_key, content, ts).await?)
    }

    /// Reacts to an event.
    ///
    /// # Errors
    /// On a failed join or send.
    pub async fn react(
        &self,
        room_id: &RoomId,
        event_id: &EventId,
        key: &str,
        ts: Option<MilliSecondsSinceUnixEpoch>,
    ) -> Result<OwnedEventId> {
        self.ensure_joined(room_id).await?;
        Ok(self.client.react(self.as_user(), room_id, event_id, key, ts).await?)
    }

    /// Redacts an event.
    ///
    /// # Errors
    /// On a failed join or request.
    pub async fn redact(
        &self,
        room_id: &RoomId,
        event_id: &EventId,
        reason: Option<&str>,
        ts: Option<MilliSecondsSinceUnixEpoch>,
    ) -> Result<OwnedEventId> {
        self.ensure_joined(room_id).await?;
        Ok(self.client.redact(self.as_user(), room_id, event_id, reason, None, ts).await?)
    }

    /// Edits an earlier message with new content.
    ///
    /// # Errors
    /// As [`Intent::send_message`].
    pub async fn edit(
        &self,
        room_id: &RoomId,
        original: &EventId,
        new_content: RoomMessageEventContentWithoutRelation,
        ts: Option<MilliSecondsSinceUnixEpoch>,
    ) -> Result<OwnedEventId> {
        self.send_message(room_id, &client::edit_content(new_content, original), ts).await
    }

    /// Replies to an event sent by `sender`.
    ///
    /// # Errors
    /// As [`Intent::send_message`].
    pub async fn reply(
        &self,
        room_id: &RoomId,
        event_id: &EventId,
        sender: &UserId,
        content: RoomMessageEventContentWithoutRelation,
        ts: Option<MilliSecondsSinceUnixEpoch>,
    ) -> Result<OwnedEventId> {
        self.send_message(room_id, &client::reply_content(content, event_id, sender), ts).await
    }

    /// Shows the user typing for `timeout`, or stops (`None`).
    ///
    /// # Errors
    /// On a failed join or request.
    pub async fn typing(&self, room_id: &RoomId, timeout: Option<Duration>) -> Result<()> {
        self.ensure_joined(room_id).await?;
        Ok(self.client.typing(self.as_user(), room_id, timeout).await?)
    }

    /// Marks the room read up to `event_id` (fully-read marker and read receipt).
    ///
    /// # Errors
    /// On a failed join or request.
    pub async fn mark_read(&self, room_id: &RoomId, event_id: &EventId) -> Result<()> {
        self.ensure_joined(room_id).await?;
        Ok(self.client.set_read_markers(self.as_user(), room_id, event_id, Some(event_id)).await?)
    }

    /// Uploads media as this user.
    ///
    /// # Errors
    /// On a failed registration or upload.
    pub async fn upload(
        &self,
        data: Vec<u8>,
        content_type: Option<&str>,
        filename: Option<&str>,
    ) -> Result<OwnedMxcUri> {
        self.ensure_registered().await?;
        Ok(self.client.upload(self.as_user(), data, content_type, filename).await?)
    }

    /// Sends an error notice to the room, then leaves it. A failed notice is logged, not fatal.
    ///
    /// # Errors
    /// When leaving fails.
    pub async fn error_and_leave(&self, room_id: &RoomId, message: &str) -> Result<()> {
        if let Err(err) = self.send_notice(room_id, message, None).await {
            tracing::warn!(%room_id, error = %err, "could not send the error notice before leaving");
        }
        self.leave(room_id, Some(message)).await
    }
}

/// A typed field of a profile; a field of the wrong type counts as unset.
fn profile_field<F: ruma::profile::StaticProfileField>(
    profile: Option<&UserProfile>,
) -> Option<F::Value> {
    profile.and_then(|p| p.get_static::<F>().ok().flatten())
}

#[cfg(test)]
mod tests;
