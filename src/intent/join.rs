//! Joining and inviting, each converging rather than acting once: [`EnsureJoined`],
//! [`JoinRoom`] and [`Invite`].
//!
//! With `.extra_content(..)`, a membership is sent as an `m.room.member` state event
//! (`PUT /rooms/{roomId}/state/m.room.member/{userId}`) carrying the extra keys, rather than
//! through `/join` or `/invite`; a join sent so gets the user's global display name and avatar
//! filled in, as `/join` does, unless the extra content sets them.

use std::future::IntoFuture;

use futures_util::future::BoxFuture;
use ruma::{
    OwnedRoomId, OwnedServerName, RoomId, RoomOrAliasId, UserId,
    api::{client::membership::join_room_by_id_or_alias, error::ErrorKind},
    events::room::member::MembershipState,
    profile::{AvatarUrl, DisplayName},
    serde::JsonObject,
};

use super::{DOUBLE_PUPPET_SOURCE, Intent, Result, profile_field};
use crate::{client, store::Membership};

impl Intent {
    /// Makes sure the user is in the room: await the returned [`EnsureJoined`]. It resolves to
    /// `false` when the store already said so (no request), `true` when the user joined now.
    ///
    /// A user that is refused is invited by the bot (a ghost unbanned first when banned; a
    /// real user's ban is never lifted, and the join fails) and joins again; `.helper(..)` names another account to do that, for rooms where a ghost, not the
    /// bot, is admin. The bot's own join is a plain join. Concurrent calls for the same room
    /// and user make one join request. After a join, the room's members and state are fetched
    /// once (see [`Intent::ensure_room_state`]).
    ///
    /// ```no_run
    /// # async fn example(
    /// #     ghost: mxbridge::intent::Intent,
    /// #     admin: mxbridge::intent::Intent,
    /// #     room_id: &ruma::RoomId,
    /// # ) -> mxbridge::intent::Result<()> {
    /// ghost.ensure_joined(room_id).await?;
    /// // The cache may be stale (a kick missed while the bridge was down): ask again.
    /// ghost.ensure_joined(room_id).ignore_cache().helper(&admin).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A refusal the helper does not cure: of its invite (or unban), or of the second join.
    pub fn ensure_joined<'a>(&'a self, room_id: &'a RoomId) -> EnsureJoined<'a> {
        EnsureJoined {
            intent: self,
            room_id,
            ignore_cache: false,
            helper: None,
            extra_content: None,
            max_retries: 0,
        }
    }

    /// Joins a room by its ID or an alias (`POST /join/{roomIdOrAlias}`): await the returned
    /// [`JoinRoom`] for the room's ID. A join refused for a reason a retry can cure (404, as
    /// Synapse answers while it does not know the inviting server yet, or 500) is retried up
    /// to `.max_retries(n)` times (4 unless set), with the client's backoff between attempts.
    pub fn join_room<'a>(&'a self, room_id_or_alias: &'a RoomOrAliasId) -> JoinRoom<'a> {
        JoinRoom { intent: self, room: room_id_or_alias, via: Vec::new(), reason: None, retries: 4 }
    }

    /// Invites anyone (a real user too), as this user, and records the invite: await the
    /// returned [`Invite`], which resolves to whether an invite was sent.
    ///
    /// A refusal (Synapse answers 403 `M_FORBIDDEN`, "… is already in the room.") after which
    /// the room's state says the user is invited or joined counts as done. With
    /// `.check_cache()`, a user the state cache knows as invited or joined gets no request.
    ///
    /// # Errors
    /// The refusal of an invite when the user is not in the room afterwards either.
    pub fn invite<'a>(&'a self, room_id: &'a RoomId, user_id: &'a UserId) -> Invite<'a> {
        Invite { intent: self, room_id, user_id, check_cache: false, reason: None, extra: None }
    }

    async fn join_now(
        &self,
        room_id: &RoomId,
        helper: Option<&Intent>,
        extra: Option<&JsonObject>,
        retries: u32,
    ) -> Result<()> {
        self.ensure_registered().await?;
        match self.join_retrying(room_id, extra, retries).await {
            Ok(()) => {}
            Err(err) if !self.is_bot && err.kind() == Some(&ErrorKind::Forbidden) => {
                let cached_ban =
                    self.store.membership(room_id, &self.user_id).await? == Some(Membership::Ban);
                // The bot lifts bans of its ghosts, never a ban of a person (a double puppet).
                let may_unban = !self.is_real_user();
                if cached_ban && !may_unban {
                    return Err(err);
                }
                let bot;
                let helper = match helper {
                    Some(helper) => helper,
                    None => {
                        bot = self.bot_intent();
                        &bot
                    }
                };
                helper.invite_helping(room_id, &self.user_id, cached_ban, may_unban).await?;
                self.join_retrying(room_id, extra, retries).await?;
            }
            Err(err) => return Err(err),
        }
        self.record_membership(room_id, &self.user_id, Membership::Join).await?;
        self.fetch_room_state_once(room_id).await;
        Ok(())
    }

    /// Joins by `/join`, or by a member event with `extra` content; retries what a retry may
    /// cure up to `retries` times.
    async fn join_retrying(
        &self,
        room_id: &RoomId,
        extra: Option<&JsonObject>,
        retries: u32,
    ) -> Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let joined = match extra {
                Some(extra) => self
                    .member_event(room_id, &self.user_id, MembershipState::Join, None, extra)
                    .await
                    .map(drop),
                None => self.join_request(room_id).await.map_err(Into::into),
            };
            match joined {
                Err(err) if attempt <= retries && join_may_work_later(err.status()) => {
                    let delay = self.client.retry_policy().backoff(attempt);
                    tracing::debug!(%room_id, user_id = %self.user_id, error = %err,
                        delay_ms = delay.as_millis() as u64, "join refused, retrying");
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    /// Sends `m.room.member` for `target` as a state event: `extra` with the membership (and
    /// reason) set. A join gets this user's global display name and avatar unless `extra`
    /// has them.
    pub(super) async fn member_event(
        &self,
        room_id: &RoomId,
        target: &UserId,
        membership: MembershipState,
        reason: Option<&str>,
        extra: &JsonObject,
    ) -> Result<ruma::OwnedEventId> {
        let mut content = extra.clone();
        if let Some(source) = &self.puppet_source {
            content.insert(DOUBLE_PUPPET_SOURCE.to_owned(), (&**source).into());
        }
        if membership == MembershipState::Join
            && !(content.contains_key("displayname") && content.contains_key("avatar_url"))
        {
            let profile = self.global_profile(target).await?;
            if let Some(name) = profile_field::<DisplayName>(profile.as_ref()) {
                content.entry("displayname").or_insert(name.into());
            }
            if let Some(avatar) = profile_field::<AvatarUrl>(profile.as_ref()) {
                content.entry("avatar_url").or_insert(avatar.to_string().into());
            }
        }
        content.insert("membership".into(), membership.as_str().into());
        if let Some(reason) = reason {
            content.insert("reason".into(), reason.into());
        }
        let raw = serde_json::value::to_raw_value(&content).map_err(client::Error::Json)?;
        let request = ruma::api::client::state::send_state_event::v3::Request::new_raw(
            room_id.to_owned(),
            ruma::events::StateEventType::RoomMember,
            target.to_string(),
            ruma::serde::Raw::from_json(raw),
        );
        Ok(self.client.send(request, self.as_user()).await?.event_id)
    }

    async fn invite_now(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        check_cache: bool,
        reason: Option<&str>,
        extra: Option<&JsonObject>,
    ) -> Result<bool> {
        self.ensure_joined(room_id).await?;
        let in_room =
            |m: Option<Membership>| matches!(m, Some(Membership::Invite | Membership::Join));
        if check_cache && in_room(self.store.membership(room_id, user_id).await?) {
            return Ok(false);
        }
        let sent = match extra {
            Some(extra) => self
                .member_event(room_id, user_id, MembershipState::Invite, reason, extra)
                .await
                .map(drop),
            None => self.invite_request_with(room_id, user_id, reason).await.map_err(Into::into),
        };
        match sent {
            Ok(()) => {}
            Err(err) if err.kind() == Some(&ErrorKind::Forbidden) => {
                let now = self.member_state(room_id, user_id).await?;
                if in_room(now.map(|m| m.membership)) {
                    return Ok(false);
                }
                return Err(err);
            }
            Err(err) => return Err(err),
        }
        self.record_membership(room_id, user_id, Membership::Invite).await?;
        Ok(true)
    }
}

/// Whether a refused join may work when tried again: 404 (Synapse while it cannot reach the
/// inviting server, "No known servers") and 500.
fn join_may_work_later(status: Option<reqwest::StatusCode>) -> bool {
    status.is_some_and(|s| s == reqwest::StatusCode::NOT_FOUND || s.as_u16() == 500)
}

/// A join of one room by one user, done when awaited (see [`Intent::ensure_joined`]);
/// resolves to whether the user joined now.
#[derive(Debug)]
#[must_use = "nothing is sent until the join is awaited"]
pub struct EnsureJoined<'a> {
    intent: &'a Intent,
    room_id: &'a RoomId,
    ignore_cache: bool,
    helper: Option<&'a Intent>,
    extra_content: Option<JsonObject>,
    max_retries: u32,
}

impl<'a> EnsureJoined<'a> {
    /// Joins even when the state cache says the user is in the room (a join of a member
    /// changes nothing on the homeserver).
    pub fn ignore_cache(mut self) -> Self {
        self.ignore_cache = true;
        self
    }

    /// Lets `helper` (another ghost, the admin of the room) invite or unban the user when the
    /// join is refused, instead of the bot.
    pub fn helper(mut self, helper: &'a Intent) -> Self {
        self.helper = Some(helper);
        self
    }

    /// Joins with a member state event carrying these keys (see the module docs), instead of
    /// `/join`.
    pub fn extra_content(mut self, extra: JsonObject) -> Self {
        self.extra_content = Some(extra);
        self
    }

    /// Retries a join refused with 404 or 500 up to `n` times (none unless set).
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }
}

impl<'a> IntoFuture for EnsureJoined<'a> {
    type Output = Result<bool>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        let Self { intent, room_id, ignore_cache, helper, extra_content, max_retries } = self;
        Box::pin(async move {
            if !ignore_cache && intent.is_joined_cached(room_id).await? {
                return Ok(false);
            }
            let flight = intent.client.join_flight(room_id, &intent.user_id);
            let _turn = flight.lock.lock().await;
            // Someone else may have joined while we waited for our turn.
            if !ignore_cache && intent.is_joined_cached(room_id).await? {
                return Ok(false);
            }
            intent.join_now(room_id, helper, extra_content.as_ref(), max_retries).await?;
            Ok(true)
        })
    }
}

/// A join by room ID or alias, done when awaited (see [`Intent::join_room`]); resolves to the
/// room's ID.
#[derive(Debug)]
#[must_use = "nothing is sent until the join is awaited"]
pub struct JoinRoom<'a> {
    intent: &'a Intent,
    room: &'a RoomOrAliasId,
    via: Vec<OwnedServerName>,
    reason: Option<String>,
    retries: u32,
}

impl JoinRoom<'_> {
    /// Servers to join through (for a room ID another server knows).
    pub fn via(mut self, servers: impl IntoIterator<Item = OwnedServerName>) -> Self {
        self.via.extend(servers);
        self
    }

    /// Says why.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Retries a join refused with 404 or 500 up to `n` times (0: one attempt only).
    pub fn max_retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }
}

impl<'a> IntoFuture for JoinRoom<'a> {
    type Output = Result<OwnedRoomId>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        let Self { intent, room, via, reason, retries } = self;
        Box::pin(async move {
            intent.ensure_registered().await?;
            let mut attempt = 0;
            let room_id = loop {
                attempt += 1;
                let mut request = join_room_by_id_or_alias::v3::Request::new(room.to_owned());
                request.via.clone_from(&via);
                request.reason.clone_from(&reason);
                match intent.client.send(request, intent.as_user()).await {
                    Ok(response) => break response.room_id,
                    Err(err) if attempt <= retries && join_may_work_later(err.status()) => {
                        let delay = intent.client.retry_policy().backoff(attempt);
                        tracing::debug!(%room, error = %err, "join refused, retrying");
                        tokio::time::sleep(delay).await;
                    }
                    Err(err) => return Err(err.into()),
                }
            };
            intent.record_membership(&room_id, &intent.user_id, Membership::Join).await?;
            intent.fetch_room_state_once(&room_id).await;
            Ok(room_id)
        })
    }
}

/// An invite, done when awaited (see [`Intent::invite`]); resolves to whether one was sent.
///
/// ```no_run
/// # async fn example(
/// #     bot: mxbridge::intent::Intent,
/// #     room_id: &ruma::RoomId,
/// #     user_id: &ruma::UserId,
/// # ) -> mxbridge::intent::Result<()> {
/// let mut extra = ruma::serde::JsonObject::new();
/// extra.insert("is_direct".into(), true.into());
/// bot.invite(room_id, user_id).check_cache().extra_content(extra).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "nothing is sent until the invite is awaited"]
pub struct Invite<'a> {
    intent: &'a Intent,
    room_id: &'a RoomId,
    user_id: &'a UserId,
    check_cache: bool,
    reason: Option<String>,
    extra: Option<JsonObject>,
}

impl Invite<'_> {
    /// Sends nothing when the state cache says the user is invited or joined.
    pub fn check_cache(mut self) -> Self {
        self.check_cache = true;
        self
    }

    /// Says why; the room shows it with the invite.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Invites with a member state event carrying these keys (see the module docs), instead
    /// of `/invite`.
    pub fn extra_content(mut self, extra: JsonObject) -> Self {
        self.extra = Some(extra);
        self
    }
}

impl<'a> IntoFuture for Invite<'a> {
    type Output = Result<bool>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        let Self { intent, room_id, user_id, check_cache, reason, extra } = self;
        // A double puppet's invite is a member event, so that it carries the mark.
        let extra = extra.or_else(|| intent.is_double_puppet().then(JsonObject::new));
        Box::pin(async move {
            intent
                .invite_now(room_id, user_id, check_cache, reason.as_deref(), extra.as_ref())
                .await
        })
    }
}
