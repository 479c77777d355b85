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
//! Joining follows the mautrix recipe: join; on `M_FORBIDDEN` the bot invites the ghost (and, if
//! the ghost is banned, unbans it first) and the ghost joins again. Concurrent `ensure_joined`
//! calls for the same room and user make one join request.
//!
//! History import: MSC2716 batch sending (`/batch_send`) is gone from Synapse, so importing old
//! messages uses timestamp massaging instead: every send here takes an optional `ts`
//! ([`MilliSecondsSinceUnixEpoch`]) that becomes the event's `origin_server_ts`. The events are
//! still appended at the end of the room's timeline.

use std::time::Duration;

use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, MxcUri, OwnedEventId, OwnedMxcUri, OwnedUserId, RoomId,
    UserId,
    events::{
        MessageLikeEventContent, StateEventContent, StateEventType,
        room::{
            member::{MembershipState, RoomMemberEventContent},
            message::{RoomMessageEventContent, RoomMessageEventContentWithoutRelation},
        },
    },
    serde::Raw,
};
use serde_json::Value as JsonValue;

use crate::{
    client::{self, Client, Error, Result},
    store::{Membership, RoomStateField, Store},
};

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
    /// [`Error::NotInNamespace`] for anyone else.
    pub fn new(client: Client, store: Store, user_id: OwnedUserId) -> Result<Self> {
        if !client.may_act_as(&user_id) {
            return Err(Error::NotInNamespace { user_id });
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
        if self.is_bot || self.store.is_registered(self.user_id.as_str()).await? {
            return Ok(());
        }
        match self.client.register(&self.user_id).await {
            Ok(_) => {}
            Err(err) if err.is_errcode("M_USER_IN_USE") => {}
            Err(err) => return Err(err),
        }
        self.store.mark_registered(self.user_id.as_str()).await?;
        Ok(())
    }

    /// Whether the store says the user is joined to the room.
    async fn is_joined_cached(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self.store.membership(room_id.as_str(), self.user_id.as_str()).await?
            == Some(Membership::Join))
    }

    /// Makes sure the user is in the room. Returns `false` when the store already said so (no
    /// request), `true` when it joined now.
    ///
    /// A ghost refused with `M_FORBIDDEN` is invited by the bot (unbanned first when banned) and
    /// joins again; the bot's own join is a plain join. Concurrent calls for the same room and
    /// user make one join request.
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
            Err(err) if !self.is_bot && err.is_errcode("M_FORBIDDEN") => {
                let cached_ban =
                    self.store.membership(room_id.as_str(), self.user_id.as_str()).await?
                        == Some(Membership::Ban);
                let bot = self.bot_intent();
                bot.invite_helping(room_id, &self.user_id, cached_ban || says_banned(&err)).await?;
                self.client.join(self.as_user(), room_id).await?;
            }
            Err(err) => return Err(err),
        }
        self.record_membership(room_id, &self.user_id, Membership::Join).await
    }

    /// The bot invites `user_id` so it can join, unbanning it first when banned (known, or
    /// learned from the invite's refusal).
    async fn invite_helping(&self, room_id: &RoomId, user_id: &UserId, banned: bool) -> Result<()> {
        if banned {
            self.client.unban(None, room_id, user_id, None).await?;
        }
        match self.client.invite(None, room_id, user_id, None).await {
            Ok(()) => {}
            Err(err) if !banned && err.is_errcode("M_FORBIDDEN") && says_banned(&err) => {
                self.client.unban(None, room_id, user_id, None).await?;
                self.client.invite(None, room_id, user_id, None).await?;
            }
            Err(err) => return Err(err),
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
        let old = self.store.member(room_id.as_str(), user_id.as_str()).await?;
        let (name, avatar) = old.map(|m| (m.displayname, m.avatar_url)).unwrap_or_default();
        self.store
            .set_membership(
                room_id.as_str(),
                user_id.as_str(),
                membership,
                name.as_deref(),
                avatar.as_deref(),
            )
            .await?;
        Ok(())
    }

    /// Makes sure the user is invited to (or already in) the room: the bot invites it unless the
    /// store says invited or joined. Returns whether an invite was sent.
    ///
    /// # Errors
    /// On a failed invite or store.
    pub async fn ensure_invited(&self, room_id: &RoomId) -> Result<bool> {
        let current = self.store.membership(room_id.as_str(), self.user_id.as_str()).await?;
        if matches!(current, Some(Membership::Invite | Membership::Join)) || self.is_bot {
            return Ok(false);
        }
        self.ensure_registered().await?;
        self.bot_intent()
            .invite_helping(room_id, &self.user_id, current == Some(Membership::Ban))
            .await?;
        Ok(true)
    }

    /// Invites another user, as this user, and records the invite.
    ///
    /// # Errors
    /// On a failed request or store.
    pub async fn invite(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        self.ensure_joined(room_id).await?;
        self.client.invite(self.as_user(), room_id, user_id, None).await?;
        self.record_membership(room_id, user_id, Membership::Invite).await
    }

    /// Leaves the room (or rejects an invite) and records it.
    ///
    /// # Errors
    /// On a failed request or store.
    pub async fn leave(&self, room_id: &RoomId, reason: Option<&str>) -> Result<()> {
        self.client.leave(self.as_user(), room_id, reason).await?;
        self.record_membership(room_id, &self.user_id, Membership::Leave).await
    }

    /// Sets the global display name, only when it differs from the current one (read with one
    /// `GET /profile`). Returns whether it was changed.
    ///
    /// # Errors
    /// On a failed request.
    pub async fn set_displayname(&self, displayname: &str) -> Result<bool> {
        self.ensure_registered().await?;
        if self.profile_field("displayname").await?.as_deref() == Some(displayname) {
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
        if self.profile_field("avatar_url").await?.as_deref() == Some(avatar_url.as_str()) {
            return Ok(false);
        }
        self.client.set_avatar_url(self.as_user(), avatar_url).await?;
        Ok(true)
    }

    /// One field of the user's global profile; a user without a profile (404) has none.
    async fn profile_field(&self, field: &str) -> Result<Option<String>> {
        match self.client.get_profile(&self.user_id).await {
            Ok(profile) => {
                Ok(profile.get(field).and_then(JsonValue::as_str).map(ToOwned::to_owned))
            }
            Err(err) if err.status() == Some(reqwest::StatusCode::NOT_FOUND) => Ok(None),
            Err(err) => Err(err),
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
        let cached = self.store.member(room_id.as_str(), self.user_id.as_str()).await?;
        let avatar = avatar_url.map(MxcUri::as_str);
        if cached.as_ref().is_some_and(|m| {
            m.displayname.as_deref() == displayname && m.avatar_url.as_deref() == avatar
        }) {
            return Ok(false);
        }
        let mut content = RoomMemberEventContent::new(MembershipState::Join);
        content.displayname = displayname.map(ToOwned::to_owned);
        content.avatar_url = avatar_url.map(|a| -> OwnedMxcUri { a.to_owned() });
        self.client
            .send_state_event(self.as_user(), room_id, self.user_id.as_str(), &content, None)
            .await?;
        self.store
            .set_membership(
                room_id.as_str(),
                self.user_id.as_str(),
                Membership::Join,
                displayname,
                avatar,
            )
            .await?;
        Ok(true)
    }

    /// The room's `m.room.power_levels` content: cached, or fetched by the bot and cached.
    ///
    /// # Errors
    /// On a failed request, store, or malformed JSON.
    pub async fn power_levels(&self, room_id: &RoomId) -> Result<JsonValue> {
        if let Some(json) =
            self.store.room_state(room_id.as_str(), RoomStateField::PowerLevels).await?
        {
            return Ok(serde_json::from_str(&json)?);
        }
        let raw =
            self.client.get_state_event(None, room_id, StateEventType::RoomPowerLevels, "").await?;
        self.store.set_room_state(room_id.as_str(), RoomStateField::PowerLevels, raw.get()).await?;
        Ok(serde_json::from_str(raw.get())?)
    }

    /// Makes sure the user has at least `level`: when lower, the bot raises it (if the bot may)
    /// and the cache is updated. Returns whether power levels were changed.
    ///
    /// Room version 12 creators (who are not listed in `users`) are not recognised.
    ///
    /// # Errors
    /// [`Error::NotPermitted`] when the bot's own level is too low; a failed request or store.
    pub async fn ensure_power_level(&self, room_id: &RoomId, level: i64) -> Result<bool> {
        let mut levels = self.power_levels(room_id).await?;
        if user_level(&levels, &self.user_id) >= level {
            return Ok(false);
        }
        let bot = self.client.bot_user_id();
        let bot_level = user_level(&levels, bot);
        let needed = levels
            .pointer("/events/m.room.power_levels")
            .or_else(|| levels.get("state_default"))
            .and_then(JsonValue::as_i64)
            .unwrap_or(50);
        if bot_level < needed || bot_level < level {
            return Err(Error::NotPermitted(format!(
                "{bot} (power level {bot_level}) cannot raise {} to {level}",
                self.user_id
            )));
        }
        let users = levels
            .as_object_mut()
            .ok_or_else(|| Error::InvalidResponse("power levels are not an object".into()))?
            .entry("users")
            .or_insert_with(|| JsonValue::Object(Default::default()));
        if let Some(users) = users.as_object_mut() {
            users.insert(self.user_id.to_string(), level.into());
        }
        self.bot_intent().set_power_levels(room_id, &levels).await?;
        Ok(true)
    }

    /// Sends `m.room.power_levels` as this user and caches it.
    ///
    /// # Errors
    /// On a failed request or store.
    pub async fn set_power_levels(
        &self,
        room_id: &RoomId,
        content: &JsonValue,
    ) -> Result<OwnedEventId> {
        self.ensure_joined(room_id).await?;
        let json = serde_json::value::to_raw_value(content)?;
        let event_id = self
            .client
            .send_state_event_raw(
                self.as_user(),
                room_id,
                StateEventType::RoomPowerLevels,
                "",
                Raw::from_json(json.clone()),
                None,
            )
            .await?;
        self.store
            .set_room_state(room_id.as_str(), RoomStateField::PowerLevels, json.get())
            .await?;
        Ok(event_id)
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
        self.client.send_message_event(self.as_user(), room_id, content, None, ts).await
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
        self.client.send_state_event(self.as_user(), room_id, state_key, content, ts).await
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
        self.client.react(self.as_user(), room_id, event_id, key, ts).await
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
        self.client.redact(self.as_user(), room_id, event_id, reason, None, ts).await
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
        self.client.typing(self.as_user(), room_id, timeout).await
    }

    /// Marks the room read up to `event_id` (fully-read marker and read receipt).
    ///
    /// # Errors
    /// On a failed join or request.
    pub async fn mark_read(&self, room_id: &RoomId, event_id: &EventId) -> Result<()> {
        self.ensure_joined(room_id).await?;
        self.client.set_read_markers(self.as_user(), room_id, event_id, Some(event_id)).await
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
        self.client.upload(self.as_user(), data, content_type, filename).await
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

/// Whether a refusal says the user is banned (Synapse: "You are banned from this room").
fn says_banned(err: &Error) -> bool {
    err.message().is_some_and(|m| m.to_ascii_lowercase().contains("banned"))
}

/// A user's level in power-levels content: `users[user]`, else `users_default`, else 0.
fn user_level(levels: &JsonValue, user_id: &UserId) -> i64 {
    levels
        .get("users")
        .and_then(|u| u.get(user_id.as_str()))
        .or_else(|| levels.get("users_default"))
        .and_then(JsonValue::as_i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
