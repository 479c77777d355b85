//! Leaving, kicking, banning and unbanning, with the state cache kept current. Joins and
//! invites, which converge rather than act once, are [`Intent::ensure_joined`],
//! [`Intent::ensure_invited`] and [`Intent::invite`].

use std::future::IntoFuture;

use futures_util::future::BoxFuture;
use ruma::{
    RoomId, UserId,
    api::client::membership::{
        ban_user, invite_user, join_room_by_id, kick_user, leave_room, unban_user,
    },
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

    /// Sends an error notice to the room, then leaves it with the message as the reason. A
    /// failed notice is logged, not fatal.
    pub async fn error_and_leave(&self, room_id: &RoomId, message: &str) -> Result<()> {
        if let Err(err) = self.send_notice(room_id, message).await {
            tracing::warn!(
                %room_id,
                error = %err,
                "could not send the error notice before leaving"
            );
        }
        self.leave(room_id).reason(message).await
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
        let recipient = invite_user::v3::InviteUserId::new(user_id.to_owned());
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
/// `.reason(..)` gives the reason the room shows.
///
/// ```no_run
/// # async fn example(
/// #     bot: mxbridge::intent::Intent,
/// #     room_id: &ruma::RoomId,
/// #     spammer: &ruma::UserId,
/// # ) -> mxbridge::intent::Result<()> {
/// bot.ban(room_id, spammer).reason("spam").await?;
/// bot.leave(room_id).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "nothing is sent until the membership change is awaited"]
pub struct ChangeMembership<'a> {
    intent: &'a Intent,
    room_id: &'a RoomId,
    change: Change<'a>,
    reason: Option<String>,
}

impl<'a> ChangeMembership<'a> {
    fn new(intent: &'a Intent, room_id: &'a RoomId, change: Change<'a>) -> Self {
        Self { intent, room_id, change, reason: None }
    }

    /// Says why; the room shows it with the membership change.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

impl<'a> IntoFuture for ChangeMembership<'a> {
    type Output = Result<()>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        let Self { intent, room_id, change, reason } = self;
        Box::pin(async move {
            let (as_user, room) = (intent.as_user(), room_id.to_owned());
            let (user_id, membership) = match change {
                Change::Leave => {
                    let mut request = leave_room::v3::Request::new(room);
                    request.reason = reason;
                    intent.client.send(request, as_user).await?;
                    (&*intent.user_id, Membership::Leave)
                }
                Change::Kick(user_id) => {
                    intent.ensure_joined(room_id).await?;
                    let mut request = kick_user::v3::Request::new(room, user_id.to_owned());
                    request.reason = reason;
                    intent.client.send(request, as_user).await?;
                    (user_id, Membership::Leave)
                }
                Change::Ban(user_id) => {
                    intent.ensure_joined(room_id).await?;
                    let mut request = ban_user::v3::Request::new(room, user_id.to_owned());
                    request.reason = reason;
                    intent.client.send(request, as_user).await?;
                    (user_id, Membership::Ban)
                }
                Change::Unban(user_id) => {
                    intent.ensure_joined(room_id).await?;
                    let mut request = unban_user::v3::Request::new(room, user_id.to_owned());
                    request.reason = reason;
                    intent.client.send(request, as_user).await?;
                    (user_id, Membership::Leave)
                }
            };
            intent.record_membership(room_id, user_id, membership).await
        })
    }
}
