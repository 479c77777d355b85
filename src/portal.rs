//! Portals and messages, remote → Matrix: the portal room of a remote chat (created by the bot
//! with an `m.bridge` state event, real users invited), messages sent into it by ghosts with
//! the remote timestamp, and the mapping of remote messages to Matrix events kept for later
//! edits, replies and redactions.

use ruma::{
    OwnedEventId, OwnedRoomId, api::client::room::create_room, events::AnyInitialStateEvent,
    serde::Raw,
};
use serde::Serialize;

use crate::{
    client,
    context::Context,
    remote::{Portal, PortalInfo, RemoteChatId, RemoteMessage, RemoteMessageId},
    store::{MessageRow, PortalRow, StoreError},
};

/// Errors of the remote → Matrix helpers.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// A homeserver call failed.
    #[error(transparent)]
    Client(#[from] client::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The ghost's user ID would not be valid.
    #[error("remote user {0:?} gives no valid Matrix user ID")]
    InvalidGhost(String),
}

impl Context {
    /// The portal of a remote chat, if it has a room.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn portal(&self, chat: &RemoteChatId) -> Result<Option<Portal>, RemoteError> {
        Ok(self.store().portal_by_remote(&chat.0).await?.and_then(portal_from_row))
    }

    /// The portal bridged to a Matrix room, if any.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn portal_for_room(
        &self,
        room_id: &ruma::RoomId,
    ) -> Result<Option<Portal>, RemoteError> {
        Ok(self.store().portal_by_room(room_id.as_str()).await?.and_then(portal_from_row))
    }

    /// The portal of a remote chat, creating its room when there is none: the bot creates a
    /// private room with the name and topic, an `m.bridge` state event naming the bridge and
    /// the remote chat, and invites the given real users.
    ///
    /// # Errors
    /// When creating the room or storing the mapping fails.
    pub async fn ensure_portal(
        &self,
        chat: &RemoteChatId,
        info: &PortalInfo,
    ) -> Result<Portal, RemoteError> {
        if let Some(portal) = self.portal(chat).await? {
            return Ok(portal);
        }
        let mut request = create_room::v3::Request::new();
        request.name.clone_from(&info.name);
        request.topic.clone_from(&info.topic);
        request.invite.clone_from(&info.invite);
        request.is_direct = info.is_direct;
        request.preset = Some(create_room::v3::RoomPreset::PrivateChat);
        request.initial_state = vec![bridge_state_event(self, chat)];
        let room_id = self.client().create_room(None, request).await?;
        self.store()
            .set_membership(
                room_id.as_str(),
                self.bot_user_id().as_str(),
                crate::store::Membership::Join,
                None,
                None,
            )
            .await?;
        self.store()
            .upsert_portal(&PortalRow {
                remote_id: chat.0.clone(),
                room_id: Some(room_id.to_string()),
                name: info.name.clone(),
                topic: info.topic.clone(),
                avatar_url: None,
                metadata: None,
            })
            .await?;
        Ok(Portal { remote_id: chat.clone(), room_id })
    }

    /// Bridges a message from the remote network into a portal room that already exists:
    /// ensures the ghost (and its profile) and its membership, sends the content with the remote
    /// timestamp, and records the mapping. A message already bridged (same chat and ID) is not
    /// sent again; its event ID is returned.
    ///
    /// # Errors
    /// When the portal has no room, or a homeserver call or the store fails.
    pub async fn bridge_message(
        &self,
        room_id: &ruma::RoomId,
        message: &RemoteMessage,
    ) -> Result<OwnedEventId, RemoteError> {
        if let Some(existing) =
            self.store().message_by_remote(&message.chat.0, &message.id.0).await?.into_iter().next()
            && let Ok(event_id) = OwnedEventId::try_from(existing.event_id)
        {
            return Ok(event_id);
        }
        let intent = self.ensure_ghost(&message.sender, &message.profile).await?;
        let event_id = intent.send_message(room_id, &message.content, message.timestamp).await?;
        let timestamp = message.timestamp.map_or_else(crate::store::now_ms, |t| i64::from(t.0));
        self.store()
            .insert_message(&MessageRow {
                portal_id: message.chat.0.clone(),
                remote_id: message.id.0.clone(),
                part: String::new(),
                event_id: event_id.to_string(),
                room_id: room_id.to_string(),
                sender: intent.user_id().to_string(),
                timestamp,
            })
            .await?;
        Ok(event_id)
    }

    /// Records that a Matrix event was delivered to the remote network as a message, so later
    /// edits, reactions and redactions of the event can be mapped to it.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn record_remote_message(
        &self,
        chat: &RemoteChatId,
        id: &RemoteMessageId,
        event: &crate::Event,
    ) -> Result<(), RemoteError> {
        self.store()
            .insert_message(&MessageRow {
                portal_id: chat.0.clone(),
                remote_id: id.0.clone(),
                part: String::new(),
                event_id: event.event_id.to_string(),
                room_id: event.room_id.to_string(),
                sender: event.sender.to_string(),
                timestamp: crate::store::now_ms(),
            })
            .await?;
        Ok(())
    }

    /// The remote message a Matrix event carries (or was delivered as), if known.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn remote_message_for(
        &self,
        event_id: &ruma::EventId,
    ) -> Result<Option<(RemoteChatId, RemoteMessageId)>, RemoteError> {
        Ok(self
            .store()
            .message_by_event(event_id.as_str())
            .await?
            .map(|m| (RemoteChatId(m.portal_id), RemoteMessageId(m.remote_id))))
    }
}

fn portal_from_row(row: PortalRow) -> Option<Portal> {
    let room_id = OwnedRoomId::try_from(row.room_id?).ok()?;
    Some(Portal { remote_id: RemoteChatId(row.remote_id), room_id })
}

/// The `m.bridge` state event (MSC2346) of a portal.
fn bridge_state_event(ctx: &Context, chat: &RemoteChatId) -> Raw<AnyInitialStateEvent> {
    #[derive(Serialize)]
    struct BridgeContent<'a> {
        bridgebot: &'a str,
        protocol: Named<'a>,
        channel: Named<'a>,
    }
    #[derive(Serialize)]
    struct Named<'a> {
        id: &'a str,
    }
    let state_key = format!("{}/{}", ctx.appservice().id, chat.0);
    let json = serde_json::json!({
        "type": "m.bridge",
        "state_key": state_key,
        "content": BridgeContent {
            bridgebot: ctx.bot_user_id().as_str(),
            protocol: Named { id: &ctx.appservice().id },
            channel: Named { id: &chat.0 },
        },
    });
    Raw::from_json(serde_json::value::to_raw_value(&json).expect("a JSON value serializes"))
}
