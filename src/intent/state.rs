//! Room state and aliases.
//!
//! [`Intent::send_state`] returns a [`SendState`] that sends when awaited, after joining the
//! room when the state cache does not know the user joined; `.at(ts)` massages its timestamp.
//! The cached parts of a room's state (power levels, members) are written by the methods that
//! own them ([`Intent::set_power_levels`], [`Intent::set_room_profile`]); the cache learns of
//! other state when the homeserver pushes it back.

use std::future::IntoFuture;

use futures_util::future::BoxFuture;
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedEventId, RoomAliasId, RoomId,
    api::client::{
        alias::{create_alias, delete_alias},
        state::send_state_event,
    },
    events::{AnyStateEventContent, StateEventContent, StateEventType},
    serde::Raw,
};

use super::{Intent, Result};
use crate::client;

impl Intent {
    /// Sends a state event: await the returned [`SendState`].
    ///
    /// The homeserver refuses (403 `M_FORBIDDEN`) a user whose power level is below the
    /// event's.
    pub fn send_state<'a, C, K>(
        &'a self,
        room_id: &'a RoomId,
        state_key: &K,
        content: &C,
    ) -> SendState<'a>
    where
        C: StateEventContent,
        C::StateKey: std::borrow::Borrow<K>,
        K: AsRef<str> + ?Sized,
    {
        let event_type = content.event_type();
        let content = serde_json::value::to_raw_value(content).map(Raw::from_json);
        let state_key = state_key.as_ref().to_owned();
        SendState {
            intent: self,
            room_id,
            content: content.map(|c| (event_type, c)),
            state_key,
            ts: None,
        }
    }

    /// Sends a state event from raw JSON content, for event types ruma has no type for.
    pub fn send_state_raw<'a>(
        &'a self,
        room_id: &'a RoomId,
        event_type: StateEventType,
        state_key: &str,
        content: Raw<AnyStateEventContent>,
    ) -> SendState<'a> {
        let state_key = state_key.to_owned();
        SendState { intent: self, room_id, content: Ok((event_type, content)), state_key, ts: None }
    }

    /// Points the alias at the room (`PUT /directory/room/{roomAlias}`): await the returned
    /// [`SetAlias`]. An alias that exists already is refused (409) unless `.replace()` is set.
    pub fn set_alias<'a>(&'a self, alias: &'a RoomAliasId, room_id: &'a RoomId) -> SetAlias<'a> {
        SetAlias { intent: self, alias, room_id, replace: false }
    }
}

/// A state event on its way to a room, sent when awaited. Resolves to the event's ID.
#[derive(Debug)]
#[must_use = "nothing is sent until the state event is awaited"]
pub struct SendState<'a> {
    intent: &'a Intent,
    room_id: &'a RoomId,
    /// The event type and content, or why the content could not be serialized.
    content: serde_json::Result<(StateEventType, Raw<AnyStateEventContent>)>,
    state_key: String,
    ts: Option<MilliSecondsSinceUnixEpoch>,
}

impl SendState<'_> {
    /// Gives the event this timestamp (`origin_server_ts`) instead of the time it arrives.
    pub fn at(mut self, ts: MilliSecondsSinceUnixEpoch) -> Self {
        self.ts = Some(ts);
        self
    }
}

impl<'a> IntoFuture for SendState<'a> {
    type Output = Result<OwnedEventId>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        let Self { intent, room_id, content, state_key, ts } = self;
        Box::pin(async move {
            let (event_type, content) = content.map_err(client::Error::Json)?;
            let content = intent.mark(content).map_err(client::Error::Json)?;
            intent.ensure_joined(room_id).await?;
            let mut request = send_state_event::v3::Request::new_raw(
                room_id.to_owned(),
                event_type,
                state_key,
                content,
            );
            request.timestamp = ts;
            Ok(intent.client.send(request, intent.as_user()).await?.event_id)
        })
    }
}

/// An alias on its way to the room directory, set when awaited.
#[derive(Debug)]
#[must_use = "nothing is sent until the alias is awaited"]
pub struct SetAlias<'a> {
    intent: &'a Intent,
    alias: &'a RoomAliasId,
    room_id: &'a RoomId,
    replace: bool,
}

impl SetAlias<'_> {
    /// Takes the alias over when it exists (409): deletes it, then creates it for this room.
    pub fn replace(mut self) -> Self {
        self.replace = true;
        self
    }
}

impl<'a> IntoFuture for SetAlias<'a> {
    type Output = Result<()>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        let Self { intent, alias, room_id, replace } = self;
        Box::pin(async move {
            intent.ensure_registered().await?;
            let as_user = intent.as_user();
            let request = create_alias::v3::Request::new(alias.to_owned(), room_id.to_owned());
            match intent.client.send(request.clone(), as_user).await {
                Err(err) if replace && err.status() == Some(reqwest::StatusCode::CONFLICT) => {
                    let delete = delete_alias::v3::Request::new(alias.to_owned());
                    intent.client.send(delete, as_user).await?;
                    intent.client.send(request, as_user).await?;
                }
                other => {
                    other?;
                }
            }
            Ok(())
        })
    }
}
