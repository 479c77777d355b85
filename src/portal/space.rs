//! Per-login spaces: each login's portals gathered in a Matrix space of its own, which the bot
//! creates the first time one of the login's portals needs it and the login's user is invited
//! to. A portal is a child of the space (`m.space.child`, with `via`) and names it as its parent
//! (`m.space.parent`); a portal deleted or unlinked, or left by the login, is taken out again.
//! A login that logs out takes its space down.

use ruma::{
    OwnedRoomId, RoomId,
    api::client::room::create_room,
    events::{
        AnyStateEventContent, StateEventType,
        space::{child::SpaceChildEventContent, parent::SpaceParentEventContent},
    },
    room::RoomType,
    serde::Raw,
};

use super::RemoteError;
use crate::{
    context::Context,
    login::UserLogin,
    remote::{Portal, PortalKey, RemoteLoginId},
};

/// Serializes the creation of spaces, so two portals of a login made at once make one space.
static CREATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Context {
    /// A login's space, which gathers its portals: created when the login has none yet (named
    /// after the bridge and the login, its user invited, the login's portals added) and
    /// stored. `None` when there is no such login.
    pub async fn login_space(
        &self,
        login: &RemoteLoginId,
    ) -> Result<Option<OwnedRoomId>, RemoteError> {
        Ok(self.ensure_login_space(login).await?.map(|(room, _)| room))
    }

    /// The login's space, and whether it was created now.
    async fn ensure_login_space(
        &self,
        id: &RemoteLoginId,
    ) -> Result<Option<(OwnedRoomId, bool)>, RemoteError> {
        if let Some(room) = self.store().login_space(id).await? {
            return Ok(Some((room, false)));
        }
        let _creating = CREATING.lock().await;
        let Some(login) = self.store().login(id).await? else { return Ok(None) };
        if let Some(room) = self.store().login_space(id).await? {
            return Ok(Some((room, false)));
        }
        let network = self
            .appservice()
            .bot
            .displayname
            .clone()
            .unwrap_or_else(|| self.appservice().id.clone());
        let name = format!("{network} ({})", crate::accounts::login_name(&login));
        let mut request = create_room::v3::Request::new();
        request.name = Some(name);
        request.topic = Some(format!("Your {network} chats"));
        request.invite = vec![login.user_id.clone()];
        request.preset = Some(create_room::v3::RoomPreset::PrivateChat);
        let mut creation = create_room::v3::CreationContent::new();
        creation.room_type = Some(RoomType::Space);
        request.creation_content = Some(Raw::new(&creation).expect("creation content serializes"));
        let room = self.bot().create_room(request).await?;
        self.store().set_login_space(id, &room).await?;
        tracing::info!(login = %id, space = %room, "created the login's space");
        for key in self.store().portals_of_login(id).await? {
            if let Some(portal) = self.portal(&key).await? {
                self.put_in_space(&room, &portal, &login).await;
            }
        }
        Ok(Some((room, true)))
    }

    /// Takes down the space of a login that logged out: its user is removed and the bot
    /// leaves. Best effort.
    pub(crate) async fn delete_login_space(&self, space: &RoomId, login: &UserLogin) {
        let bot = self.bot();
        let reason = format!("Logged out of {}", crate::accounts::login_name(login));
        if let Err(e) = bot.kick(space, &login.user_id).reason(reason.as_str()).await {
            tracing::info!(%space, error = %e, "cannot remove the user from the login's space");
        }
        if let Err(e) = bot.leave(space).reason(reason).await {
            tracing::warn!(%space, error = %e, "the bot cannot leave the login's space");
        }
    }

    /// The logins a portal belongs to: those in it, and its receiver.
    pub(crate) async fn portal_logins(
        &self,
        key: &PortalKey,
    ) -> Result<Vec<UserLogin>, RemoteError> {
        let mut logins = self.store().logins_in_portal(key).await?;
        if let Some(receiver) = &key.receiver
            && !logins.iter().any(|l| &l.id == receiver)
            && let Some(login) = self.store().login(receiver).await?
        {
            logins.push(login);
        }
        Ok(logins)
    }

    /// Adds a portal to the spaces of its logins (creating them when needed). Best effort:
    /// failures are logged (a resync adds it again).
    pub(crate) async fn add_portal_to_spaces(&self, portal: &Portal) {
        let logins = match self.portal_logins(&portal.key).await {
            Ok(logins) => logins,
            Err(e) => {
                tracing::warn!(portal = %portal.key, error = %e, "cannot read the portal's logins");
                return;
            }
        };
        for login in logins {
            self.add_portal_to_space(portal, &login).await;
        }
    }

    /// Adds a portal to one login's space. Best effort.
    pub(crate) async fn add_portal_to_space(&self, portal: &Portal, login: &UserLogin) {
        match self.ensure_login_space(&login.id).await {
            // A new space holds the login's portals already.
            Ok(Some((_, true))) | Ok(None) => {}
            Ok(Some((space, false))) => self.put_in_space(&space, portal, login).await,
            Err(e) => {
                tracing::warn!(login = %login.id, error = %e, "cannot make the login's space")
            }
        }
    }

    /// `m.space.child` in the space and `m.space.parent` in the portal.
    async fn put_in_space(&self, space: &RoomId, portal: &Portal, login: &UserLogin) {
        let via = vec![self.server_name().clone()];
        let bot = self.bot();
        let child = SpaceChildEventContent::new(via.clone());
        if let Err(e) = bot.send_state(space, &*portal.room_id, &child).await {
            tracing::warn!(login = %login.id, %space, error = %e, "cannot add a portal to a space");
            return;
        }
        let parent = SpaceParentEventContent::new(via);
        if let Err(e) = bot.send_state(&portal.room_id, space, &parent).await {
            // The bot may lack the power in a linked room; the space holds the portal anyway.
            tracing::info!(room = %portal.room_id, error = %e, "cannot name the portal's space");
        }
    }

    /// Takes a portal out of the spaces of its logins. Best effort.
    pub(crate) async fn remove_portal_from_spaces(&self, portal: &Portal) {
        match self.portal_logins(&portal.key).await {
            Ok(logins) => {
                for login in logins {
                    self.remove_portal_from_space(portal, &login.id).await;
                }
            }
            Err(e) => {
                tracing::warn!(portal = %portal.key, error = %e, "cannot read the portal's logins")
            }
        }
    }

    /// Takes a portal out of one login's space, when it has one. Best effort.
    pub(crate) async fn remove_portal_from_space(&self, portal: &Portal, login: &RemoteLoginId) {
        let space = match self.store().login_space(login).await {
            Ok(Some(space)) => space,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(%login, error = %e, "cannot read the login's space");
                return;
            }
        };
        let empty = || {
            Raw::<AnyStateEventContent>::from_json(
                serde_json::value::to_raw_value(&serde_json::json!({})).expect("{} serializes"),
            )
        };
        let bot = self.bot();
        let child = bot.send_state_raw(
            &space,
            StateEventType::SpaceChild,
            portal.room_id.as_str(),
            empty(),
        );
        if let Err(e) = child.await {
            tracing::warn!(%login, %space, error = %e, "cannot take a portal out of a space");
        }
        let parent = bot.send_state_raw(
            &portal.room_id,
            StateEventType::SpaceParent,
            space.as_str(),
            empty(),
        );
        if let Err(e) = parent.await {
            tracing::info!(room = %portal.room_id, error = %e, "cannot clear the portal's space");
        }
    }

    /// Records that a login is in a portal (a member of the remote chat), and adds the portal
    /// to the login's space when it has a room.
    pub async fn add_login_to_portal(
        &self,
        login: &RemoteLoginId,
        key: &PortalKey,
    ) -> Result<(), RemoteError> {
        self.store().add_login_to_portal(login, key).await?;
        if let (Some(portal), Some(login)) =
            (self.portal(key).await?, self.store().login(login).await?)
        {
            self.add_portal_to_space(&portal, &login).await;
        }
        Ok(())
    }

    /// Records that a login left a portal, and takes the portal out of the login's space.
    /// Returns whether it was in it.
    pub async fn remove_login_from_portal(
        &self,
        login: &RemoteLoginId,
        key: &PortalKey,
    ) -> Result<bool, RemoteError> {
        let was = self.store().remove_login_from_portal(login, key).await?;
        if let Some(portal) = self.portal(key).await? {
            self.remove_portal_from_space(&portal, login).await;
        }
        Ok(was)
    }
}
