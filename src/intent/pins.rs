//! Pinned events (`m.room.pinned_events`): read, set, pin and unpin.
//!
//! Pinning and unpinning read the list, change it and write it back. Matrix has no
//! compare-and-swap for state, so two writers could each write their own change over the
//! other's. Here, writers in this process take turns per room, and after writing, the list is
//! read again: when someone else's write came after ours and lost our change, the change is
//! made again (a few times at most).

use ruma::{
    EventId, OwnedEventId, RoomId,
    api::client::state::get_state_event_for_key::{self, v3::StateEventFormat},
    events::{EmptyStateKey, StateEventType, room::pinned_events::RoomPinnedEventsEventContent},
};
use serde::Deserialize;

use super::{Intent, Result};

/// How often a pin or unpin is made again when other writers keep replacing the list.
const ATTEMPTS: usize = 3;

/// The pinned events state event, as read back (a server that answers with the content
/// only gives no event ID).
struct PinnedEvent {
    event_id: Option<OwnedEventId>,
    content: PinnedContent,
}

#[derive(Deserialize)]
struct PinnedContent {
    #[serde(default)]
    pinned: Vec<OwnedEventId>,
}

impl PinnedEvent {
    fn parse(json: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Whole {
            event_id: OwnedEventId,
            content: PinnedContent,
        }
        if let Ok(whole) = serde_json::from_str::<Whole>(json) {
            return Ok(Self { event_id: Some(whole.event_id), content: whole.content });
        }
        Ok(Self { event_id: None, content: serde_json::from_str(json)? })
    }
}

impl Intent {
    /// The room's pinned events, in order (none when the room has no `m.room.pinned_events`).
    pub async fn pinned_events(&self, room_id: &RoomId) -> Result<Vec<OwnedEventId>> {
        self.ensure_joined(room_id).await?;
        Ok(self.read_pinned(room_id).await?.map(|e| e.content.pinned).unwrap_or_default())
    }

    /// Replaces the room's pinned events. Returns the state event's ID.
    pub async fn set_pinned_events(
        &self,
        room_id: &RoomId,
        pinned: Vec<OwnedEventId>,
    ) -> Result<OwnedEventId> {
        self.send_state(room_id, &EmptyStateKey, &RoomPinnedEventsEventContent::new(pinned)).await
    }

    /// Pins an event (appended to the list). Returns whether the list changed.
    pub async fn pin(&self, room_id: &RoomId, event_id: &EventId) -> Result<bool> {
        self.change_pins(room_id, event_id, true).await
    }

    /// Unpins an event. Returns whether the list changed.
    pub async fn unpin(&self, room_id: &RoomId, event_id: &EventId) -> Result<bool> {
        self.change_pins(room_id, event_id, false).await
    }

    async fn change_pins(&self, room_id: &RoomId, event_id: &EventId, pin: bool) -> Result<bool> {
        self.ensure_joined(room_id).await?;
        let flight = self.client.pins_flight(room_id);
        let _turn = flight.lock.lock().await;
        let done = |list: &[OwnedEventId]| list.iter().any(|e| e == event_id) == pin;
        let mut changed = false;
        for _ in 0..ATTEMPTS {
            let mut list =
                self.read_pinned(room_id).await?.map(|e| e.content.pinned).unwrap_or_default();
            if done(&list) {
                return Ok(changed);
            }
            if pin {
                list.push(event_id.to_owned());
            } else {
                list.retain(|e| e != event_id);
            }
            let ours = self.write_pinned(room_id, list).await?;
            changed = true;
            // Our write stands when it is the room's state now, or when a later one kept it.
            match self.read_pinned(room_id).await? {
                Some(now) if now.event_id.as_ref() == Some(&ours) || done(&now.content.pinned) => {
                    return Ok(true);
                }
                None if !pin => return Ok(true),
                _ => tracing::debug!(%room_id, "the pinned events changed meanwhile; again"),
            }
        }
        Ok(changed)
    }

    /// The pinned events state event as this user; `None` when the room has none.
    async fn read_pinned(&self, room_id: &RoomId) -> Result<Option<PinnedEvent>> {
        let mut request = get_state_event_for_key::v3::Request::new(
            room_id.to_owned(),
            StateEventType::RoomPinnedEvents,
            String::new(),
        );
        request.format = StateEventFormat::Event;
        match self.client.send(request, self.as_user()).await {
            Ok(response) => Ok(Some(PinnedEvent::parse(response.event_or_content.get())?)),
            Err(err) if err.status() == Some(reqwest::StatusCode::NOT_FOUND) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Writes the list as this user, without the join check (done before the turn was taken).
    async fn write_pinned(
        &self,
        room_id: &RoomId,
        list: Vec<OwnedEventId>,
    ) -> Result<OwnedEventId> {
        let content = RoomPinnedEventsEventContent::new(list);
        let raw = serde_json::value::to_raw_value(&content).map_err(crate::client::Error::Json)?;
        let request = ruma::api::client::state::send_state_event::v3::Request::new_raw(
            room_id.to_owned(),
            StateEventType::RoomPinnedEvents,
            String::new(),
            ruma::serde::Raw::from_json(raw),
        );
        Ok(self.client.send(request, self.as_user()).await?.event_id)
    }
}
