//! A room's members and state: fetched once when one of our users arrives, then kept current
//! by the pushed events; member lookups and display names from the cache.
//!
//! The homeserver pushes a room's events to the appservice only once one of its users is
//! joined, so the joins of people who were there before (a human who created a DM and then
//! invited the bot) never arrive. Fetching the room's state (`GET /rooms/{roomId}/state`) when
//! the bot or a ghost joins fills the gap with one request: members with their profiles, power
//! levels, the create event, join rules and encryption. The room is then marked fetched
//! (`mx_room_state.members_fetched`), and nothing is fetched for it again.

use ruma::{
    OwnedMxcUri, RoomId, UserId,
    api::{
        client::state::{get_state_event_for_key, get_state_events},
        error::ErrorKind,
    },
    events::StateEventType,
    profile::DisplayName,
};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Intent, IntentError, Result, profile_field};
use crate::store::{Member, Membership, RoomStateField};

/// The parts of a state event the cache keeps.
#[derive(Deserialize)]
struct StateEventJson {
    #[serde(rename = "type")]
    kind: String,
    state_key: String,
    content: Box<RawValue>,
}

impl Intent {
    /// Makes sure the state cache holds the room's members and state: fetched once, as this
    /// user, unless the room is marked fetched. Returns whether it fetched now. Concurrent
    /// calls for the same room and user (and a join in flight) make one request.
    ///
    /// Joins and room creation through an intent do this by themselves.
    ///
    /// # Errors
    /// The homeserver's refusal when this user is not in the room.
    pub async fn ensure_room_state(&self, room_id: &RoomId) -> Result<bool> {
        if self.store.members_fetched(room_id).await? {
            return Ok(false);
        }
        let flight = self.client.join_flight(room_id, &self.user_id);
        let _turn = flight.lock.lock().await;
        if self.store.members_fetched(room_id).await? {
            return Ok(false);
        }
        self.fetch_room_state(room_id).await?;
        Ok(true)
    }

    /// After a join or a room's creation, as the user that arrived: fetches the room's state
    /// unless it was fetched. A failure is logged, not returned: the join stands, and the next
    /// member lookup fetches again.
    pub(super) async fn fetch_room_state_once(&self, room_id: &RoomId) {
        let fetched = async {
            if !self.store.members_fetched(room_id).await? {
                self.fetch_room_state(room_id).await?;
            }
            Ok::<_, IntentError>(())
        };
        if let Err(err) = fetched.await {
            tracing::warn!(%room_id, user_id = %self.user_id, error = %err,
                "could not fetch the room's members and state");
        }
    }

    /// Fetches the room's current state as this user into the state cache (members, power
    /// levels, create event, join rules, encryption) and marks the room fetched.
    pub async fn fetch_room_state(&self, room_id: &RoomId) -> Result<()> {
        let request = get_state_events::v3::Request::new(room_id.to_owned());
        let events = self.client.send(request, self.as_user()).await?.room_state;
        let mut members = Vec::new();
        for raw in &events {
            let json = raw.json().get();
            // An event the cache cannot read is left out, as when it is pushed.
            let Ok(event) = serde_json::from_str::<StateEventJson>(json) else { continue };
            if event.kind == "m.room.member" {
                members.extend(member_from_content(&event.state_key, event.content.get()));
            } else if let Some(field) =
                RoomStateField::for_event_type(&event.kind).filter(|_| event.state_key.is_empty())
            {
                let json = if field == RoomStateField::Create { json } else { event.content.get() };
                self.store.set_room_state(room_id, field, json).await?;
            }
        }
        self.store.set_room_members(room_id, &members).await?;
        self.store.set_members_fetched(room_id, true).await?;
        Ok(())
    }

    /// Looks up one user's membership in the room (its `m.room.member` state, as this user),
    /// records it and returns it; `None` when the user has none.
    pub(super) async fn member_state(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<Member>> {
        let request = get_state_event_for_key::v3::Request::new(
            room_id.to_owned(),
            StateEventType::RoomMember,
            user_id.to_string(),
        );
        let content = match self.client.send(request, self.as_user()).await {
            Ok(response) => response.event_or_content,
            Err(err) if err.kind() == Some(&ErrorKind::NotFound) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        let Some(member) = member_from_content(user_id.as_str(), content.get()) else {
            return Ok(None);
        };
        self.store.set_membership(member.row(room_id)).await?;
        Ok(Some(member))
    }

    /// Members of the room with the given membership, from the state cache. A room not fetched
    /// yet is fetched first when this user is in it; otherwise, or when the homeserver refuses,
    /// the cache answers as it is.
    pub async fn members_with(
        &self,
        room_id: &RoomId,
        membership: Membership,
    ) -> Result<Vec<Member>> {
        self.fetch_unless_refused(room_id).await?;
        Ok(self.store.members_with(room_id, membership).await?)
    }

    /// A user's display name as the room shows it: the per-room name from the state cache
    /// (fetching the room's state first, as in [`Intent::members_with`], when the user is not
    /// cached), else the global profile's. `None` when the user has neither.
    pub async fn display_name(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<String>> {
        let mut member = self.store.member(room_id, user_id).await?;
        if member.is_none() {
            self.fetch_unless_refused(room_id).await?;
            member = self.store.member(room_id, user_id).await?;
        }
        if let Some(name) = member.and_then(|m| m.displayname) {
            return Ok(Some(name));
        }
        Ok(profile_field::<DisplayName>(self.global_profile(user_id).await?.as_ref()))
    }

    /// [`Intent::ensure_room_state`] when the cache says this user is in the room; a refusal
    /// (it is not) leaves the cache as it is.
    async fn fetch_unless_refused(&self, room_id: &RoomId) -> Result<()> {
        if !self.is_joined_cached(room_id).await? {
            return Ok(());
        }
        match self.ensure_room_state(room_id).await {
            Ok(_) => Ok(()),
            Err(err) if err.status().is_some_and(|s| s.is_client_error()) => {
                tracing::debug!(%room_id, user_id = %self.user_id, error = %err,
                    "the room's state cannot be fetched; the cache answers");
                Ok(())
            }
            Err(err) => Err(err),
        }
    }
}

/// A membership from `m.room.member` content (`None` when its state key is no user ID). Lenient,
/// as for pushed events: a profile field of the wrong type is left out rather than losing the
/// membership.
fn member_from_content(user_id: &str, content: &str) -> Option<Member> {
    let user_id = UserId::parse(user_id).ok()?;
    let content: serde_json::Value = serde_json::from_str(content).ok()?;
    let text = |key: &str| content.get(key).and_then(serde_json::Value::as_str).map(str::to_owned);
    Some(Member {
        user_id,
        membership: Membership::parse(content.get("membership")?.as_str()?)?,
        displayname: text("displayname"),
        avatar_url: text("avatar_url").map(OwnedMxcUri::from),
    })
}
