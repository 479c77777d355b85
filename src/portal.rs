//! Portals and messages, remote → Matrix: the portal room of a remote chat (created by the bot
//! with an `m.bridge` state event, real users invited, or an existing room linked), messages
//! sent into it by ghosts with the remote timestamp, and the mapping of remote messages to
//! Matrix events kept for later edits, replies and redactions. A portal's looks, members and
//! power levels follow the remote chat (`members`), its logins' spaces hold it (`space`), and
//! it can be deleted (`delete`, and the bot's commands in `commands`).

pub(crate) mod commands;
mod delete;
mod members;
mod space;

pub(crate) use members::ChatChange;

use std::sync::{Arc, LazyLock, Mutex as StdMutex, PoisonError};

use ruma::{
    EventId, RoomId, UserId, api::client::room::create_room, events::AnyInitialStateEvent,
    serde::Raw,
};
use serde::Serialize;

use crate::{
    client,
    config::PermissionLevel,
    context::Context,
    remote::{Portal, PortalInfo, PortalKey, RemoteMessageRef},
    store::{PortalRow, StoreError},
};

/// The portals being created, by key: [`Context::ensure_portal`] makes one room per key even
/// when called twice at once (a first message and a provisioning request, say).
struct Creating {
    key: PortalKey,
    lock: Arc<tokio::sync::Mutex<()>>,
}

type CreatingMap = crate::util::FastMap<PortalKey, Arc<tokio::sync::Mutex<()>>>;

static CREATING: LazyLock<StdMutex<CreatingMap>> = LazyLock::new(StdMutex::default);

impl Creating {
    /// The creation lock of `key` (to lock), shared with everyone creating it now.
    fn lock(key: &PortalKey) -> Self {
        let mut map = CREATING.lock().unwrap_or_else(PoisonError::into_inner);
        let lock = map.entry(key.clone()).or_default().clone();
        Self { key: key.clone(), lock }
    }
}

impl std::ops::Deref for Creating {
    type Target = tokio::sync::Mutex<()>;

    fn deref(&self) -> &Self::Target {
        &self.lock
    }
}

impl Drop for Creating {
    /// The last one out removes the key's lock.
    fn drop(&mut self) {
        let mut map = CREATING.lock().unwrap_or_else(PoisonError::into_inner);
        if Arc::strong_count(&self.lock) <= 2 {
            map.remove(&self.key);
        }
    }
}

/// Errors of the remote → Matrix helpers.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// A homeserver call failed.
    #[error(transparent)]
    Client(#[from] client::Error),
    /// An action of the bot or a ghost failed.
    #[error(transparent)]
    Intent(#[from] crate::intent::IntentError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The ghost's user ID would not be valid.
    #[error("remote user {0:?} gives no valid Matrix user ID")]
    InvalidGhost(String),
    /// A queued remote event failed for good and was parked.
    #[error("parked: {0}")]
    Parked(String),
    /// The bridge stopped before a queued remote event was bridged (it is after a restart).
    #[error("the bridge stopped before the event was bridged")]
    Stopped,
    /// The Matrix user may not do this.
    #[error("not permitted: {0}")]
    NotPermitted(String),
    /// The room is the portal of another remote chat already.
    #[error("{room_id} is the portal of {other} already")]
    RoomTaken {
        /// The room.
        room_id: ruma::OwnedRoomId,
        /// The chat it bridges.
        other: PortalKey,
    },
}

impl Context {
    /// The portal with a key, if it has a room.
    pub async fn portal(&self, key: &PortalKey) -> Result<Option<Portal>, RemoteError> {
        Ok(self.store().portal(key).await?.and_then(portal_from_row))
    }

    /// The portal bridged to a Matrix room, if any.
    pub async fn portal_for_room(&self, room_id: &RoomId) -> Result<Option<Portal>, RemoteError> {
        Ok(self.store().portal_by_room(room_id).await?.and_then(portal_from_row))
    }

    /// The portal with a key, creating its room when there is none: the bot creates a private
    /// room with the name, topic and avatar, an `m.bridge` state event naming the bridge and the
    /// remote chat, invites the given real users and the users of the chat's logins known so
    /// far (those in it, and the receiver of a per-login chat; each joins through their double
    /// puppet when they have one), applies the members and power levels, and adds the room to
    /// its logins' spaces. Callers making the same portal at once get one room.
    pub async fn ensure_portal(
        &self,
        key: &PortalKey,
        info: &PortalInfo,
    ) -> Result<Portal, RemoteError> {
        if let Some(portal) = self.portal(key).await? {
            return Ok(portal);
        }
        // One creation per key at a time: the second caller finds the first one's room.
        let lock = Creating::lock(key);
        let _creating = lock.lock().await;
        if let Some(portal) = self.portal(key).await? {
            return Ok(portal);
        }
        // The logins already known in the chat, and the receiver of a per-login chat.
        let logins = self.portal_logins(key).await?;
        let mut request = create_room::v3::Request::new();
        request.name.clone_from(&info.name);
        request.topic.clone_from(&info.topic);
        request.invite.clone_from(&info.invite);
        for login in &logins {
            if !request.invite.contains(&login.user_id) {
                request.invite.push(login.user_id.clone());
            }
        }
        request.is_direct = info.is_direct;
        request.preset = Some(create_room::v3::RoomPreset::PrivateChat);
        request.initial_state = vec![bridge_state_event(self, key)];
        if let Some(avatar) = &info.avatar {
            let json = serde_json::json!({
                "type": "m.room.avatar", "state_key": "", "content": { "url": avatar },
            });
            request.initial_state.push(Raw::from_json(
                serde_json::value::to_raw_value(&json).expect("a JSON value serializes"),
            ));
        }
        if self.config().encryption.default {
            // `encryption.default` (which needs `allow`): the bridge device encrypts what the
            // bot and ghosts send here.
            let json = serde_json::json!({
                "type": "m.room.encryption", "state_key": "",
                "content": { "algorithm": "m.megolm.v1.aes-sha2" },
            });
            request.initial_state.push(Raw::from_json(
                serde_json::value::to_raw_value(&json).expect("a JSON value serializes"),
            ));
        }
        let room_id = self.bot().create_room(request).await?;
        self.store()
            .upsert_portal(&PortalRow {
                key: key.clone(),
                room_id: Some(room_id.clone()),
                name: info.name.clone(),
                topic: info.topic.clone(),
                avatar_url: info.avatar.clone(),
                metadata: None,
            })
            .await?;
        let portal = Portal { key: key.clone(), room_id };
        if let Some(receiver) = logins.iter().find(|l| key.receiver.as_ref() == Some(&l.id)) {
            self.store().add_login_to_portal(&receiver.id, key).await?;
        }
        self.add_portal_to_spaces(&portal).await;
        for login in &logins {
            if let Some(puppet) = self.double_puppet(&login.user_id).await? {
                puppet.ensure_joined(&portal.room_id).await?;
            }
        }
        let change = ChatChange {
            members: &info.members,
            power_levels: info.power_levels.as_ref(),
            ..ChatChange::default()
        };
        self.apply_chat_change(&portal, &change).await?;
        Ok(portal)
    }

    /// Queues a resync of a portal ([`crate::RemoteEvent::ChatResync`]): the pipeline asks
    /// [`crate::Bridge::portal_info`] and brings the room in line, in order with the chat's
    /// other events.
    pub async fn resync_portal(&self, key: &PortalKey) -> Result<crate::Queued, RemoteError> {
        self.queue_remote(key, &crate::RemoteEvent::ChatResync).await
    }

    /// Makes an existing room the portal of a remote chat, on the request of a Matrix user
    /// (the sender of a command, say): they must have the `user` level in `permissions:` and be
    /// allowed to change the room's state (its `m.bridge` event), so nobody bridges a room they
    /// do not run. The mapping is stored, and the bot (which must be in the room) sends the
    /// `m.bridge` state event when its own power level lets it (without, the portal works all
    /// the same; clients just show no bridge info). Linking the same room to the same key again
    /// changes nothing.
    ///
    /// # Errors
    /// [`RemoteError::NotPermitted`] for a user who may not; [`RemoteError::RoomTaken`] when the
    /// room is another chat's portal.
    pub async fn link_portal(
        &self,
        room_id: &RoomId,
        key: &PortalKey,
        requested_by: &UserId,
    ) -> Result<Portal, RemoteError> {
        self.check_may_change_portal(room_id, requested_by).await?;
        if let Some(existing) = self.portal_for_room(room_id).await? {
            if existing.key == *key {
                return Ok(existing);
            }
            return Err(RemoteError::RoomTaken {
                room_id: room_id.to_owned(),
                other: existing.key,
            });
        }
        let (state_key, content) = bridge_state(self, key);
        self.send_bridge_state(room_id, state_key, &content).await?;
        self.store()
            .upsert_portal(&PortalRow {
                key: key.clone(),
                room_id: Some(room_id.to_owned()),
                name: None,
                topic: None,
                avatar_url: None,
                metadata: None,
            })
            .await?;
        let portal = Portal { key: key.clone(), room_id: room_id.to_owned() };
        self.add_portal_to_spaces(&portal).await;
        Ok(portal)
    }

    /// Makes a portal an ordinary room again, on the request of a Matrix user who may change
    /// the room's state (as for [`Context::link_portal`]): the room leaves its logins' spaces,
    /// the mapping is forgotten (its messages' mappings too) and the `m.bridge` state emptied
    /// where the bot may. Returns whether the room was a portal.
    ///
    /// # Errors
    /// [`RemoteError::NotPermitted`] for a user who may not.
    pub async fn unlink_portal(
        &self,
        room_id: &RoomId,
        requested_by: &UserId,
    ) -> Result<bool, RemoteError> {
        self.check_may_change_portal(room_id, requested_by).await?;
        let Some(portal) = self.portal_for_room(room_id).await? else { return Ok(false) };
        self.remove_portal_from_spaces(&portal).await;
        let (state_key, _) = bridge_state(self, &portal.key);
        self.send_bridge_state(room_id, state_key, &serde_json::json!({})).await?;
        self.store().delete_portal(&portal.key).await?;
        self.store().delete_messages(&portal.key).await?;
        Ok(true)
    }

    /// Refuses users below `user`, and users who may not send `m.bridge` state in the room.
    async fn check_may_change_portal(
        &self,
        room_id: &RoomId,
        user: &UserId,
    ) -> Result<(), RemoteError> {
        if self.permission_level(user) < PermissionLevel::User {
            return Err(RemoteError::NotPermitted(format!("{user} may not use this bridge")));
        }
        let levels = self.bot().power_levels(room_id).await?;
        if !levels.user_can_send_state(user, "m.bridge".into()) {
            return Err(RemoteError::NotPermitted(format!(
                "{user} may not change the state of {room_id}"
            )));
        }
        Ok(())
    }

    /// Sends a portal's `m.bridge` state as the bot, unless its power level does not let it.
    async fn send_bridge_state(
        &self,
        room_id: &RoomId,
        state_key: String,
        content: &serde_json::Value,
    ) -> Result<(), RemoteError> {
        let content = Raw::new(content).expect("the m.bridge content serializes").cast_unchecked();
        let request = ruma::api::client::state::send_state_event::v3::Request::new_raw(
            room_id.to_owned(),
            "m.bridge".into(),
            state_key,
            content,
        );
        match self.client().send(request, None).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == Some(&ruma::api::error::ErrorKind::Forbidden) => {
                tracing::info!(
                    %room_id,
                    "the bot may not send m.bridge state here; left as is"
                );
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The remote message part a Matrix event carries (or was delivered as), if known.
    pub async fn remote_message_for(
        &self,
        event_id: &EventId,
    ) -> Result<Option<RemoteMessageRef>, RemoteError> {
        Ok(self.store().message_by_event(event_id).await?.map(|m| RemoteMessageRef {
            portal: m.portal,
            id: m.id,
            part: m.part,
        }))
    }
}

fn portal_from_row(row: PortalRow) -> Option<Portal> {
    Some(Portal { room_id: row.room_id?, key: row.key })
}

/// The state key and content of a portal's `m.bridge` state event (MSC2346).
fn bridge_state(ctx: &Context, key: &PortalKey) -> (String, serde_json::Value) {
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
    let state_key = format!("{}/{}", ctx.appservice().id, key.chat);
    let content = serde_json::to_value(BridgeContent {
        bridgebot: ctx.bot_user_id().as_str(),
        protocol: Named { id: &ctx.appservice().id },
        channel: Named { id: key.chat.as_str() },
    })
    .expect("the m.bridge content serializes");
    (state_key, content)
}

/// The `m.bridge` state event of a new portal, for the room's initial state.
fn bridge_state_event(ctx: &Context, key: &PortalKey) -> Raw<AnyInitialStateEvent> {
    let (state_key, content) = bridge_state(ctx, key);
    let json =
        serde_json::json!({ "type": "m.bridge", "state_key": state_key, "content": content });
    Raw::from_json(serde_json::value::to_raw_value(&json).expect("a JSON value serializes"))
}

#[cfg(test)]
mod tests {
    use ruma::{room_id, user_id};
    use serde_json::json;

    use super::*;
    use crate::testing::{MockHomeserver, test_context};

    async fn setup(hs: &MockHomeserver) -> Context {
        test_context(hs, "permissions: {localhost: user}\n").await
    }

    fn state(kind: &str, state_key: &str, content: serde_json::Value) -> serde_json::Value {
        json!({ "type": kind, "state_key": state_key, "sender": "@owner:localhost",
                "content": content, "event_id": format!("${kind}"), "origin_server_ts": 1 })
    }

    /// Only a user who may use the bridge and change the room's state links a room; the room
    /// then is the portal, and unlinking it forgets the mapping.
    #[tokio::test]
    async fn rooms_are_linked_and_unlinked_only_by_those_who_run_them() {
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        let room = room_id!("!room:localhost");
        hs.mock_room_state(room)
            .ok_body(json!([
                state("m.room.create", "", json!({ "room_version": "10" })),
                state(
                    "m.room.power_levels",
                    "",
                    json!({
                        "users": { "@owner:localhost": 100, "@_test_bot:localhost": 50 },
                        "state_default": 50,
                    })
                ),
            ]))
            .mount()
            .await;
        let state_key = "test-bridge/chat";
        hs.mock_set_state(room, "m.bridge", state_key).as_bot().ok().expect(2).mount().await;
        let key = PortalKey::shared("chat");
        for (user, why) in [
            (user_id!("@member:localhost"), "may not change the state"),
            (user_id!("@owner:elsewhere.org"), "may not use this bridge"),
        ] {
            let refused = ctx.link_portal(room, &key, user).await.unwrap_err();
            assert!(refused.to_string().contains(why), "{refused}");
        }
        assert_eq!(ctx.portal_for_room(room).await.unwrap(), None);
        let owner = user_id!("@owner:localhost");
        let portal = ctx.link_portal(room, &key, owner).await.unwrap();
        assert_eq!((portal.key.clone(), portal.room_id.as_ref()), (key.clone(), room));
        assert_eq!(ctx.portal_for_room(room).await.unwrap(), Some(portal));
        let other = PortalKey::shared("other");
        assert!(matches!(
            ctx.link_portal(room, &other, owner).await,
            Err(RemoteError::RoomTaken { .. })
        ));
        assert!(ctx.unlink_portal(room, user_id!("@member:localhost")).await.is_err());
        assert!(ctx.unlink_portal(room, owner).await.unwrap());
        assert_eq!(ctx.portal(&key).await.unwrap(), None);
        assert!(!ctx.unlink_portal(room, owner).await.unwrap());
    }

    /// Two callers making the same portal at once (a first message and a provisioning request,
    /// or a request sent twice) make one room, and both get it.
    #[tokio::test]
    async fn a_portal_made_twice_at_once_has_one_room() {
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        let room = room_id!("!new:localhost");
        let slow = std::time::Duration::from_millis(200);
        hs.mock_create_room(room).as_bot().ok().delay(slow).mount().await;
        let key = PortalKey::shared("chat");
        let info = PortalInfo::default();
        let (a, b) = tokio::join!(ctx.ensure_portal(&key, &info), ctx.ensure_portal(&key, &info));
        assert_eq!(a.unwrap(), b.unwrap());
        let created = hs
            .received()
            .await
            .iter()
            .filter(|r| r.method.as_str() == "POST" && r.url.path().ends_with("/createRoom"))
            .count();
        assert_eq!(created, 1, "rooms created");
    }
}
