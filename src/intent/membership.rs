//! Leaving, kicking, banning and unbanning, with the state cache kept current. Joins and
//! invites, which converge rather than act once, are [`Intent::ensure_joined`],
//! [`Intent::ensure_invited`] and [`Intent::invite`].
//!
//! With `.extra_content(..)` a change is sent as an `m.room.member` state event carrying the
//! extra keys (`PUT /rooms/{roomId}/state/m.room.member/{userId}`) rather than through
//! `/leave`, `/kick`, `/ban` or `/unban`.

use std::future::IntoFuture;

use futures_util::future::BoxFuture;
use ruma::{
    RoomId, UserId,
    api::{
        client::membership::{
            ban_user, invite_user, join_room_by_id, kick_user, leave_room, unban_user,
        },
        error::ErrorKind,
    },
    events::room::{member::MembershipState, message::RoomMessageEventContent},
    serde::JsonObject,
};

use super::{Intent, Result};
use crate::{client, store::Membership};

impl Intent {
    /// Leaves the room, or rejects an invite to it: await the returned [`ChangeMembership`].
    pub fn leave<'a>(&'a self, room_id: &'a RoomId) -> ChangeMembership<'a> {
        ChangeMembership::new(self, room_id, Change::Leave)
    }

    /// Kicks `user_id` out of the room (joining it first when needed).
    pub fn kick<'a>(&'a self, room_id: &'a RoomId, user_id: &'a UserId) -> ChangeMembership<'a> {
        ChangeMembership::new(self, room_id, Change::Kick(user_id))
    }

    /// Bans `user_id` from the room (joining it first when needed).
    pub fn ban<'a>(&'a self, room_id: &'a RoomId, user_id: &'a UserId) -> ChangeMembership<'a> {
        ChangeMembership::new(self, room_id, Change::Ban(user_id))
    }

    /// Lifts the ban of `user_id` (joining the room first when needed).
    pub fn unban<'a>(&'a self, room_id: &'a RoomId, user_id: &'a UserId) -> ChangeMembership<'a> {
        ChangeMembership::new(self, room_id, Change::Unban(user_id))
    }

    /// Sends an error notice to the room, then leaves it with the message as the reason: await
    /// the returned [`ErrorAndLeave`]; `.html(..)` sends the notice formatted. A failed notice
    /// is logged, not fatal.
    pub fn error_and_leave<'a>(&'a self, room_id: &'a RoomId, text: &str) -> ErrorAndLeave<'a> {
        ErrorAndLeave { intent: self, room_id, text: text.to_owned(), html: None }
    }

    /// `POST /rooms/{roomId}/join` as this user, and nothing else.
    pub(super) async fn join_request(&self, room_id: &RoomId) -> client::Result<()> {
        let request = join_room_by_id::v3::Request::new(room_id.to_owned());
        self.client.send(request, self.as_user()).await.map(drop)
    }

    /// `POST /rooms/{roomId}/invite` of `user_id` as this user, and nothing else.
    pub(super) async fn invite_request(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> client::Result<()> {
        self.invite_request_with(room_id, user_id, None).await
    }

    /// `POST /rooms/{roomId}/invite` of `user_id` with a reason.
    pub(super) async fn invite_request_with(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        reason: Option<&str>,
    ) -> client::Result<()> {
        let mut recipient = invite_user::v3::InviteUserId::new(user_id.to_owned());
        recipient.reason = reason.map(ToOwned::to_owned);
        let request = invite_user::v3::Request::new(room_id.to_owned(), recipient.into());
        self.client.send(request, self.as_user()).await.map(drop)
    }

    /// `POST /rooms/{roomId}/unban` of `user_id` as this user, and nothing else.
    pub(super) async fn unban_request(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> client::Result<()> {
        let request = unban_user::v3::Request::new(room_id.to_owned(), user_id.to_owned());
        self.client.send(request, self.as_user()).await.map(drop)
    }
}

/// What a [`ChangeMembership`] does.
#[derive(Debug, Clone, Copy)]
enum Change<'a> {
    Leave,
    Kick(&'a UserId),
    Ban(&'a UserId),
    Unban(&'a UserId),
}

/// A leave, kick, ban or unban, done when awaited; the state cache records the new membership.
///
/// Built by [`Intent::leave`], [`Intent::kick`], [`Intent::ban`] and [`Intent::unban`];
/// `.reason(..)` gives the reason the room shows, `.extra_content(..)` sends it as a member
/// state event with more keys. Leaving a room the user is not in counts as done unless
/// `.raise_not_in_room()` is set.
///
/// ```no_run
/// # async fn example(
/// #     bot: mxbridge::intent::Intent,
/// #     room_id: &ruma::RoomId,
/// #     spammer: &ruma::UserId,
/// # ) -> mxbridge::intent::Result<()> {
/// bot.ban(room_id, spammer).reason("spam").await?;
/// bot.leave(room_id).await?;
/// let mut extra = ruma::serde::JsonObject::new();
/// extra.insert("com.example.bridged".into(), true.into());
/// bot.unban(room_id, spammer).extra_content(extra).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "nothing is sent until the membership change is awaited"]
pub struct ChangeMembership<'a> {
    intent: &'a Intent,
    room_id: &'a RoomId,
    change: Change<'a>,
    reason: Option<String>,
    extra: Option<JsonObject>,
    raise_not_in_room: bool,
}

impl<'a> ChangeMembership<'a> {
    fn new(intent: &'a Intent, room_id: &'a RoomId, change: Change<'a>) -> Self {
        Self { intent, room_id, change, reason: None, extra: None, raise_not_in_room: false }
    }

    /// Says why; the room shows it with the membership change.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Sends the change as an `m.room.member` state event carrying these keys too.
    pub fn extra_content(mut self, extra: JsonObject) -> Self {
        self.extra = Some(extra);
        self
    }

    /// For a leave: fails when the user is not in the room (by default that counts as left).
    pub fn raise_not_in_room(mut self) -> Self {
        self.raise_not_in_room = true;
        self
    }
}

/// Whether the homeserver refused a leave because the user is not in the room: 404 for a room
/// it does not know, 403 "not in room" (Synapse) otherwise.
fn not_in_room(err: &super::IntentError) -> bool {
    if err.status() == Some(reqwest::StatusCode::NOT_FOUND) {
        return true;
    }
    let message = err.client_error().and_then(client::Error::message).unwrap_or_default();
    err.kind() == Some(&ErrorKind::Forbidden)
        && (message.contains("not in room") || message.contains("not joined"))
}

impl<'a> IntoFuture for ChangeMembership<'a> {
    type Output = Result<()>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        let Self { intent, room_id, change, reason, extra, raise_not_in_room } = self;
        // A double puppet's change is a member event, so that it carries the mark.
        let extra = extra.or_else(|| intent.is_double_puppet().then(JsonObject::new));
        Box::pin(async move {
            let (as_user, room) = (intent.as_user(), room_id.to_owned());
            let (user_id, membership, state) = match change {
                Change::Leave => (&*intent.user_id, Membership::Leave, MembershipState::Leave),
                Change::Kick(user_id) => (user_id, Membership::Leave, MembershipState::Leave),
                Change::Ban(user_id) => (user_id, Membership::Ban, MembershipState::Ban),
                Change::Unban(user_id) => (user_id, Membership::Leave, MembershipState::Leave),
            };
            if !matches!(change, Change::Leave) {
                intent.ensure_joined(room_id).await?;
            }
            let sent = if let Some(extra) = &extra {
                intent
                    .member_event(room_id, user_id, state, reason.as_deref(), extra)
                    .await
                    .map(drop)
            } else {
                let sent = match change {
                    Change::Leave => {
                        let mut request = leave_room::v3::Request::new(room);
                        request.reason = reason;
                        intent.client.send(request, as_user).await.map(drop)
                    }
                    Change::Kick(user_id) => {
                        let mut request = kick_user::v3::Request::new(room, user_id.to_owned());
                        request.reason = reason;
                        intent.client.send(request, as_user).await.map(drop)
                    }
                    Change::Ban(user_id) => {
                        let mut request = ban_user::v3::Request::new(room, user_id.to_owned());
                        request.reason = reason;
                        intent.client.send(request, as_user).await.map(drop)
                    }
                    Change::Unban(user_id) => {
                        let mut request = unban_user::v3::Request::new(room, user_id.to_owned());
                        request.reason = reason;
                        intent.client.send(request, as_user).await.map(drop)
                    }
                };
                sent.map_err(Into::into)
            };
            match sent {
                Ok(()) => {}
                Err(err)
                    if matches!(change, Change::Leave)
                        && !raise_not_in_room
                        && not_in_room(&err) =>
                {
                    tracing::debug!(%room_id, user_id = %intent.user_id, error = %err,
                        "not in the room: counts as left");
                }
                Err(err) => return Err(err),
            }
            intent.record_membership(room_id, user_id, membership).await
        })
    }
}

/// An error notice and a leave, done when awaited (see [`Intent::error_and_leave`]).
#[derive(Debug)]
#[must_use = "nothing is sent until the notice is awaited"]
pub struct ErrorAndLeave<'a> {
    intent: &'a Intent,
    room_id: &'a RoomId,
    text: String,
    html: Option<String>,
}

impl ErrorAndLeave<'_> {
    /// Sends the notice formatted with this HTML (the text is its plain-text body).
    pub fn html(mut self, html: impl Into<String>) -> Self {
        self.html = Some(html.into());
        self
    }
}

impl<'a> IntoFuture for ErrorAndLeave<'a> {
    type Output = Result<()>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        let Self { intent, room_id, text, html } = self;
        Box::pin(async move {
            let content = match html {
                Some(html) => RoomMessageEventContent::notice_html(text.clone(), html),
                None => RoomMessageEventContent::notice_plain(text.clone()),
            };
            if let Err(err) = intent.send(room_id, &content).await {
                tracing::warn!(
                    %room_id,
                    error = %err,
                    "could not send the error notice before leaving"
                );
            }
            intent.leave(room_id).reason(text).await
        })
    }
}
