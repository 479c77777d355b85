//! Typing notifications and presence, de-duplicated: the store remembers what the homeserver
//! was last told ([`Store::is_typing`], [`Store::presence`]), and a repeat sends nothing unless
//! `.ignore_cache()` is set.
//!
//! [`Store::is_typing`]: crate::store::Store::is_typing
//! [`Store::presence`]: crate::store::Store::presence

use std::{future::IntoFuture, time::Duration};

use futures_util::future::BoxFuture;
use ruma::{
    RoomId,
    api::client::{presence::set_presence, typing::create_typing_event},
    presence::PresenceState,
};

use super::{Intent, Result};

impl Intent {
    /// Shows the user typing in the room for up to `timeout`: await the returned
    /// [`SetTyping`], which resolves to whether a request was sent. While an earlier
    /// notification has not timed out, a repeat sends nothing.
    ///
    /// ```no_run
    /// # async fn example(ghost: mxbridge::intent::Intent, room_id: &ruma::RoomId)
    /// # -> mxbridge::intent::Result<()> {
    /// use std::time::Duration;
    ///
    /// ghost.typing(room_id, Duration::from_secs(5)).await?;
    /// ghost.typing(room_id, Duration::from_secs(5)).await?; // nothing sent
    /// ghost.stop_typing(room_id).await?;
    /// # Ok(()) }
    /// ```
    pub fn typing<'a>(&'a self, room_id: &'a RoomId, timeout: Duration) -> SetTyping<'a> {
        SetTyping { intent: self, room_id, timeout: Some(timeout), ignore_cache: false }
    }

    /// Stops showing the user typing in the room: await the returned [`SetTyping`]. Sends
    /// nothing when the store knows of no typing notification still running.
    pub fn stop_typing<'a>(&'a self, room_id: &'a RoomId) -> SetTyping<'a> {
        SetTyping { intent: self, room_id, timeout: None, ignore_cache: false }
    }

    /// Sets the user's presence (`PUT /presence/{userId}/status`): await the returned
    /// [`SetPresence`], which resolves to whether a request was sent. The same presence and
    /// status message as last time sends nothing.
    pub fn set_presence(&self, presence: PresenceState) -> SetPresence<'_> {
        SetPresence { intent: self, presence, status: None, ignore_cache: false }
    }
}

/// A typing notification, sent when awaited unless it repeats one still running (see
/// [`Intent::typing`]).
#[derive(Debug)]
#[must_use = "nothing is sent until the typing notification is awaited"]
pub struct SetTyping<'a> {
    intent: &'a Intent,
    room_id: &'a RoomId,
    timeout: Option<Duration>,
    ignore_cache: bool,
}

impl SetTyping<'_> {
    /// Sends even when the store says the homeserver knows already.
    pub fn ignore_cache(mut self) -> Self {
        self.ignore_cache = true;
        self
    }
}

impl<'a> IntoFuture for SetTyping<'a> {
    type Output = Result<bool>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        let Self { intent, room_id, timeout, ignore_cache } = self;
        Box::pin(async move {
            let user_id = intent.user_id();
            if !ignore_cache && intent.store.is_typing(room_id, user_id) == timeout.is_some() {
                return Ok(false);
            }
            intent.ensure_joined(room_id).await?;
            let state = match timeout {
                Some(timeout) => create_typing_event::v3::Typing::Yes(
                    create_typing_event::v3::TypingInfo::new(timeout),
                ),
                None => create_typing_event::v3::Typing::No,
            };
            let request = create_typing_event::v3::Request::new(
                user_id.to_owned(),
                room_id.to_owned(),
                state,
            );
            intent.client.send(request, intent.as_user()).await?;
            intent.store.set_typing(room_id, user_id, timeout);
            Ok(true)
        })
    }
}

/// A presence update, sent when awaited unless it repeats the last one (see
/// [`Intent::set_presence`]).
#[derive(Debug)]
#[must_use = "nothing is sent until the presence is awaited"]
pub struct SetPresence<'a> {
    intent: &'a Intent,
    presence: PresenceState,
    status: Option<String>,
    ignore_cache: bool,
}

impl SetPresence<'_> {
    /// The status message shown with the presence.
    pub fn status(mut self, status: impl Into<String>) -> Self {
        self.status = Some(status.into());
        self
    }

    /// Sends even when the store says the homeserver knows already.
    pub fn ignore_cache(mut self) -> Self {
        self.ignore_cache = true;
        self
    }
}

impl<'a> IntoFuture for SetPresence<'a> {
    type Output = Result<bool>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        let Self { intent, presence, status, ignore_cache } = self;
        Box::pin(async move {
            let user_id = intent.user_id();
            if !ignore_cache
                && intent.store.presence(user_id) == Some((presence.clone(), status.clone()))
            {
                return Ok(false);
            }
            intent.ensure_registered().await?;
            let mut request = set_presence::v3::Request::new(user_id.to_owned(), presence.clone());
            request.status_msg.clone_from(&status);
            intent.client.send(request, intent.as_user()).await?;
            intent.store.set_presence(user_id, presence, status.as_deref());
            Ok(true)
        })
    }
}
