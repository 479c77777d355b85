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
    profile::{AvatarUrl, DisplayName},
};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{CacheFirst, Intent, IntentError, Result, profile_field};
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
        self.members(room_id, &[membership]).await
    }

    /// Members of the room with any of the given memberships (ordered by user ID), from the
    /// state cache as [`Intent::members_with`] says; `.ignore_cache()` fetches the room's
    /// state first (and fails when the homeserver refuses).
    ///
    /// ```no_run
    /// # async fn example(bot: mxbridge::intent::Intent, room_id: &ruma::RoomId)
    /// # -> mxbridge::intent::Result<()> {
    /// use mxbridge::store::Membership;
    ///
    /// let present = bot.members(room_id, &[Membership::Join, Membership::Invite]).await?;
    /// # Ok(()) }
    /// ```
    pub fn members<'a>(
        &'a self,
        room_id: &'a RoomId,
        memberships: &'a [Membership],
    ) -> CacheFirst<'a, Vec<Member>> {
        CacheFirst::new(move |ignore_cache| {
            Box::pin(async move {
                if ignore_cache {
                    self.fetch_room_state(room_id).await?;
                } else {
                    self.fetch_unless_refused(room_id).await?;
                }
                let mut members = Vec::new();
                for membership in memberships {
                    members.extend(self.store.members_with(room_id, *membership).await?);
                }
                members.sort_by(|a, b| a.user_id.cmp(&b.user_id));
                members.dedup_by(|a, b| a.user_id == b.user_id);
                Ok(members)
            })
        })
    }

    /// A user's membership and per-room profile in the room: from the state cache, else from
    /// the homeserver (the room's state when this user is in a room not fetched yet, else the
    /// user's `m.room.member` event), which fills the cache. `None` when the user has no
    /// membership, or the homeserver does not show it to this user. A room whose state was
    /// fetched is kept current by pushed events, so a user it does not list has none.
    ///
    /// `.ignore_cache()` asks for the user's `m.room.member` event whatever the cache holds,
    /// and fails when the homeserver refuses.
    pub fn member<'a>(
        &'a self,
        room_id: &'a RoomId,
        user_id: &'a UserId,
    ) -> CacheFirst<'a, Option<Member>> {
        CacheFirst::new(move |ignore| Box::pin(self.member_lookup(room_id, user_id, ignore)))
    }

    async fn member_lookup(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        ignore_cache: bool,
    ) -> Result<Option<Member>> {
        if ignore_cache {
            return self.member_state(room_id, user_id).await;
        }
        if let Some(member) = self.store.member(room_id, user_id).await? {
            return Ok(Some(member));
        }
        self.fetch_unless_refused(room_id).await?;
        if let Some(member) = self.store.member(room_id, user_id).await? {
            return Ok(Some(member));
        }
        if self.store.members_fetched(room_id).await? && self.is_joined_cached(room_id).await? {
            return Ok(None);
        }
        match self.member_state(room_id, user_id).await {
            Err(err) if err.status().is_some_and(|s| s.is_client_error()) => {
                tracing::debug!(%room_id, %user_id, error = %err, "membership not shown");
                Ok(None)
            }
            other => other,
        }
    }

    /// A user's display name as the room shows it: the per-room name ([`Intent::member`]),
    /// else the global profile's. `None` when the user has neither.
    pub fn display_name<'a>(
        &'a self,
        room_id: &'a RoomId,
        user_id: &'a UserId,
    ) -> CacheFirst<'a, Option<String>> {
        CacheFirst::new(move |ignore_cache| {
            Box::pin(async move {
                let member = self.member_lookup(room_id, user_id, ignore_cache).await?;
                if let Some(name) = member.and_then(|m| m.displayname) {
                    return Ok(Some(name));
                }
                Ok(profile_field::<DisplayName>(self.global_profile(user_id).await?.as_ref()))
            })
        })
    }

    /// A user's avatar as the room shows it: the per-room avatar ([`Intent::member`]), else
    /// the global profile's. `None` when the user has neither.
    pub fn room_avatar_url<'a>(
        &'a self,
        room_id: &'a RoomId,
        user_id: &'a UserId,
    ) -> CacheFirst<'a, Option<OwnedMxcUri>> {
        CacheFirst::new(move |ignore_cache| {
            Box::pin(async move {
                let member = self.member_lookup(room_id, user_id, ignore_cache).await?;
                if let Some(avatar) = member.and_then(|m| m.avatar_url) {
                    return Ok(Some(avatar));
                }
                Ok(profile_field::<AvatarUrl>(self.global_profile(user_id).await?.as_ref()))
            })
        })
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
