//! Deleting portals: the room emptied of the bridge's users (ghosts leave, real users are
//! removed from rooms the bot made), the bot leaves, and every mapping of the portal is
//! forgotten.

use ruma::RoomId;

use super::RemoteError;
use crate::{
    context::Context,
    remote::PortalKey,
    store::{Membership, RoomStateField},
};

impl Context {
    /// Deletes a portal: takes it out of its logins' spaces, has every ghost leave and, in a
    /// room the bot created, removes the real users (with `reason`; a linked room keeps its
    /// people), has the bot leave, and forgets the portal, its messages, which logins were in
    /// it and its relay. The remote chat is not touched; a later message
    /// from it makes a new portal. Returns whether there was a portal. Failures to remove a
    /// member are logged and do not stop the deletion.
    pub async fn delete_portal(&self, key: &PortalKey, reason: &str) -> Result<bool, RemoteError> {
        let Some(portal) = self.portal(key).await? else { return Ok(false) };
        self.remove_portal_from_spaces(&portal).await;
        let room = &portal.room_id;
        let bot = self.bot();
        let members = bot
            .members(room, &[Membership::Join, Membership::Invite])
            .ignore_cache()
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(%room, error = %e, "cannot read the members of a deleted portal");
                Vec::new()
            });
        let ours = self.created_by_bot(room).await;
        let registration = self.registration();
        for member in members {
            let user = &member.user_id;
            if user == self.bot_user_id() {
                continue;
            }
            let done = if registration.is_user_in_namespace(user) {
                match self.intent(user) {
                    Ok(ghost) => ghost.leave(room).reason(reason).await,
                    Err(e) => Err(e.into()),
                }
            } else if ours {
                bot.kick(room, user).reason(reason).await
            } else {
                continue;
            };
            if let Err(e) = done {
                tracing::warn!(%room, %user, error = %e, "cannot remove a member of a deleted portal");
            }
        }
        if let Err(e) = bot.leave(room).reason(reason).await {
            tracing::warn!(%room, error = %e, "the bot cannot leave a deleted portal");
        }
        // The portal's row goes last: once it is gone, so is everything it held, and a
        // deletion cut short is done again in full.
        self.store().forget_portal_logins(key).await?;
        self.store().delete_messages(key).await?;
        self.store().delete_portal(key).await?;
        tracing::info!(portal = %key, %room, "deleted the portal");
        Ok(true)
    }

    /// Whether the cached `m.room.create` event was sent by the bot (false when unknown).
    async fn created_by_bot(&self, room: &RoomId) -> bool {
        let Ok(Some(json)) = self.store().room_state(room, RoomStateField::Create).await else {
            return false;
        };
        serde_json::from_str::<serde_json::Value>(&json)
            .is_ok_and(|create| create["sender"] == self.bot_user_id().as_str())
    }

    /// Deletes every portal that no login is in any more (see [`Context::delete_portal`]);
    /// returns their keys. Meant for bridges with logins: in a bridge without, no portal has one.
    pub async fn cleanup_portals(&self) -> Result<Vec<PortalKey>, RemoteError> {
        let mut deleted = Vec::new();
        for key in self.store().portals_without_logins().await? {
            if self.delete_portal(&key, "No login is in this chat any more").await? {
                deleted.push(key);
            }
        }
        Ok(deleted)
    }
}
