//! A remote chat's looks, members and power levels applied to its portal: by
//! [`RemoteEvent::ChatInfo`](crate::RemoteEvent::ChatInfo) changes, by a resync, and when a
//! portal is created. Members are applied in order; a kick is made by the kicker (or the bot)
//! so Matrix shows it as a kick, an invite by the inviter (or the bot), a leave by the member
//! themselves.

use ruma::{
    Int, MxcUri, OwnedEventId, OwnedUserId, UserId,
    events::{
        EmptyStateKey,
        room::{
            avatar::RoomAvatarEventContent,
            name::RoomNameEventContent,
            power_levels::{RoomPowerLevelsEventContent, UserPowerLevel},
            topic::RoomTopicEventContent,
        },
    },
};

use super::RemoteError;
use crate::{
    context::Context,
    intent::Intent,
    login::UserLogin,
    remote::{ChatMember, ChatPowerLevels, Portal, PortalInfo, RemoteMembership, RemoteSender},
    store::Membership,
};

/// What changes in a portal.
#[derive(Debug, Default)]
pub(crate) struct ChatChange<'a> {
    pub(crate) name: Option<&'a str>,
    pub(crate) topic: Option<&'a str>,
    pub(crate) avatar: Option<&'a MxcUri>,
    pub(crate) members: &'a [ChatMember],
    /// `members` is the whole membership (a resync).
    pub(crate) complete: bool,
    pub(crate) power_levels: Option<&'a ChatPowerLevels>,
}

impl<'a> ChatChange<'a> {
    /// All of a portal's info, as a resync applies it.
    pub(crate) fn resync(info: &'a PortalInfo) -> Self {
        Self {
            name: info.name.as_deref(),
            topic: info.topic.as_deref(),
            avatar: info.avatar.as_deref(),
            members: &info.members,
            complete: !info.members.is_empty(),
            power_levels: info.power_levels.as_ref(),
        }
    }
}

/// What a member does to another.
#[derive(Debug, Clone, Copy)]
enum Action {
    Invite,
    Kick,
    Ban,
}

/// Who a member is on Matrix.
enum Target {
    Ghost(Intent),
    User { login: UserLogin, puppet: Option<Intent> },
}

impl Target {
    fn user_id(&self) -> &UserId {
        match self {
            Self::Ghost(ghost) => ghost.user_id(),
            Self::User { login, .. } => &login.user_id,
        }
    }
}

impl Context {
    /// Applies a change to a portal; returns the Matrix events it sent for the looks (member
    /// and power level events are not listed).
    pub(crate) async fn apply_chat_change(
        &self,
        portal: &Portal,
        change: &ChatChange<'_>,
    ) -> Result<Vec<OwnedEventId>, RemoteError> {
        let sent = self.apply_looks(portal, change).await?;
        let mut levels = Vec::new();
        let mut present = Vec::new();
        for member in change.members {
            let target = self.member_target(member).await?;
            self.apply_member(portal, member, &target).await?;
            if matches!(member.membership, RemoteMembership::Join | RemoteMembership::Invite) {
                present.push(target.user_id().to_owned());
            }
            if let Some(level) = member.power_level {
                levels.push((target.user_id().to_owned(), level));
            }
        }
        if change.complete {
            self.drop_absent(portal, &present).await?;
        }
        if !levels.is_empty() || change.power_levels.is_some() {
            self.apply_power_levels(portal, &levels, change.power_levels).await?;
        }
        Ok(sent)
    }

    /// Name, topic and avatar, where they differ from what was set last.
    async fn apply_looks(
        &self,
        portal: &Portal,
        change: &ChatChange<'_>,
    ) -> Result<Vec<OwnedEventId>, RemoteError> {
        let Some(mut row) = self.store().portal(&portal.key).await? else { return Ok(Vec::new()) };
        let mut sent = Vec::new();
        let (bot, room) = (self.bot(), &portal.room_id);
        let before = row.clone();
        if let Some(name) = change.name.filter(|n| row.name.as_deref() != Some(n)) {
            let content = RoomNameEventContent::new(name.to_owned());
            sent.push(bot.send_state(room, &EmptyStateKey, &content).await?);
            row.name = Some(name.to_owned());
        }
        if let Some(topic) = change.topic.filter(|t| row.topic.as_deref() != Some(t)) {
            let content = RoomTopicEventContent::new(topic.to_owned());
            sent.push(bot.send_state(room, &EmptyStateKey, &content).await?);
            row.topic = Some(topic.to_owned());
        }
        if let Some(avatar) = change.avatar.filter(|a| row.avatar_url.as_deref() != Some(*a)) {
            let mut content = RoomAvatarEventContent::new();
            content.url = Some(avatar.to_owned());
            sent.push(bot.send_state(room, &EmptyStateKey, &content).await?);
            row.avatar_url = Some(avatar.to_owned());
        }
        if row != before {
            self.store().upsert_portal(&row).await?;
        }
        Ok(sent)
    }

    /// The Matrix side of a member: the login's user when it is a stored login, else the ghost.
    async fn member_target(&self, member: &ChatMember) -> Result<Target, RemoteError> {
        if let Some(id) = &member.user.login
            && let Some(login) = self.store().login(id).await?
        {
            let puppet = self.double_puppet(&login.user_id).await?;
            return Ok(Target::User { login, puppet });
        }
        Ok(Target::Ghost(self.ensure_ghost(&member.user.id, &member.user.profile).await?))
    }

    /// The intent that invites, kicks or bans for `by`: theirs (a ghost, or a login's double
    /// puppet) when it may, else the bot.
    async fn enforcer(
        &self,
        portal: &Portal,
        by: Option<&RemoteSender>,
        target: &UserId,
        action: Action,
    ) -> Result<Intent, RemoteError> {
        let bot = self.bot();
        let Some(by) = by else { return Ok(bot) };
        let actor = self.sender_intent(by).await?;
        if actor.user_id() == target {
            return Ok(bot);
        }
        let levels = bot.power_levels(&portal.room_id).await?;
        let may = match action {
            Action::Invite => levels.user_can_invite(actor.user_id()),
            Action::Kick => levels.user_can_kick_user(actor.user_id(), target),
            Action::Ban => levels.user_can_ban_user(actor.user_id(), target),
        };
        if !may {
            return Ok(bot);
        }
        actor.ensure_joined(&portal.room_id).await?;
        Ok(actor)
    }

    /// Whether the state cache has the user joined or invited.
    async fn is_in(&self, portal: &Portal, user_id: &UserId) -> Result<bool, RemoteError> {
        let membership = self.store().membership(&portal.room_id, user_id).await?;
        Ok(matches!(membership, Some(Membership::Join | Membership::Invite)))
    }

    async fn apply_member(
        &self,
        portal: &Portal,
        member: &ChatMember,
        target: &Target,
    ) -> Result<(), RemoteError> {
        let room = &portal.room_id;
        let bot = self.bot();
        let user_id = target.user_id();
        let reason = member.reason.as_deref();
        match member.membership {
            RemoteMembership::Join => match target {
                Target::Ghost(ghost) => {
                    ghost.ensure_joined(room).await?;
                }
                Target::User { login, puppet } => {
                    bot.invite(room, user_id).check_cache().await?;
                    if let Some(puppet) = puppet {
                        puppet.ensure_joined(room).await?;
                    }
                    self.add_login_to_portal(&login.id, &portal.key).await?;
                }
            },
            RemoteMembership::Invite => {
                if !self.is_in(portal, user_id).await? {
                    let by =
                        self.enforcer(portal, member.by.as_ref(), user_id, Action::Invite).await?;
                    let invite = by.invite(room, user_id).check_cache();
                    match reason {
                        Some(reason) => invite.reason(reason).await?,
                        None => invite.await?,
                    };
                }
            }
            RemoteMembership::Leave => match target {
                Target::Ghost(ghost) => {
                    let leave = ghost.leave(room);
                    match reason {
                        Some(reason) => leave.reason(reason).await?,
                        None => leave.await?,
                    }
                }
                Target::User { login, puppet } => {
                    match puppet {
                        Some(puppet) => puppet.leave(room).await?,
                        None if self.is_in(portal, user_id).await? => {
                            let why = reason.unwrap_or("Left the chat on the remote network");
                            bot.kick(room, user_id).reason(why).await?;
                        }
                        None => {}
                    }
                    self.remove_login_from_portal(&login.id, &portal.key).await?;
                }
            },
            RemoteMembership::Kick | RemoteMembership::Ban => {
                let ban = member.membership == RemoteMembership::Ban;
                if ban || self.is_in(portal, user_id).await? {
                    let action = if ban { Action::Ban } else { Action::Kick };
                    let by = self.enforcer(portal, member.by.as_ref(), user_id, action).await?;
                    let change = if ban { by.ban(room, user_id) } else { by.kick(room, user_id) };
                    match reason {
                        Some(reason) => change.reason(reason).await?,
                        None => change.await?,
                    }
                }
                if let Target::User { login, .. } = target {
                    self.remove_login_from_portal(&login.id, &portal.key).await?;
                }
            }
        }
        Ok(())
    }

    /// After a complete member list: ghosts not in it leave (an invited one rejects the
    /// invite), logins not in it are no longer in the portal (its receiver stays).
    async fn drop_absent(
        &self,
        portal: &Portal,
        present: &[OwnedUserId],
    ) -> Result<(), RemoteError> {
        let room = &portal.room_id;
        let mut ghosts = self.ghosts_in(room).await?;
        let registration = self.registration();
        let invited = self.store().members_with(room, Membership::Invite).await?;
        ghosts.extend(
            invited
                .into_iter()
                .map(|m| m.user_id)
                .filter(|u| u != self.bot_user_id() && registration.is_user_in_namespace(u)),
        );
        for ghost in ghosts {
            if !present.contains(&ghost) {
                self.intent(&ghost)?.leave(room).await?;
            }
        }
        for login in self.store().logins_in_portal(&portal.key).await? {
            let receiver = portal.key.receiver.as_ref() == Some(&login.id);
            if !receiver && !present.contains(&login.user_id) {
                self.remove_login_from_portal(&login.id, &portal.key).await?;
            }
        }
        Ok(())
    }

    /// Sets members' levels and the defaults, as the bot, in one power levels event when
    /// anything changed. Nobody is raised above the bot, and the bot's own level stays.
    async fn apply_power_levels(
        &self,
        portal: &Portal,
        users: &[(OwnedUserId, i64)],
        defaults: Option<&ChatPowerLevels>,
    ) -> Result<(), RemoteError> {
        let bot = self.bot();
        let room = &portal.room_id;
        let mut levels = bot.power_levels(room).await?;
        let cap = match levels.for_user(bot.user_id()) {
            UserPowerLevel::Int(n) => n,
            _ => Int::MAX,
        };
        let clamp = |n: i64| Int::new_saturating(n).min(cap);
        let mut changed = false;
        for (user, level) in users {
            if user == bot.user_id() {
                continue;
            }
            let level = clamp(*level);
            if levels.for_user(user) != UserPowerLevel::Int(level) {
                if level == levels.users_default {
                    levels.users.remove(user);
                } else {
                    levels.users.insert(user.clone(), level);
                }
                changed = true;
            }
        }
        if let Some(defaults) = defaults {
            for (field, wanted) in [
                (&mut levels.users_default, defaults.users_default),
                (&mut levels.events_default, defaults.events_default),
                (&mut levels.state_default, defaults.state_default),
            ] {
                if let Some(wanted) = wanted.map(clamp).filter(|w| w != field) {
                    *field = wanted;
                    changed = true;
                }
            }
        }
        if changed {
            let content = RoomPowerLevelsEventContent::try_from(levels)
                .map_err(|e| RemoteError::NotPermitted(e.to_string()))?;
            bot.set_power_levels(room, &content).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ruma::{room_id, user_id};
    use serde_json::json;

    use super::*;
    use crate::{
        remote::PortalKey,
        testing::{MockHomeserver, test_context},
    };

    fn state(kind: &str, key: &str, content: serde_json::Value) -> serde_json::Value {
        json!({ "type": kind, "state_key": key, "sender": "@owner:localhost",
                "content": content, "event_id": format!("${kind}{key}"), "origin_server_ts": 1 })
    }

    /// In a room where the bot has 50, nobody is given more than 50; levels already right and
    /// the bot's own are left alone; one power levels event carries the changes.
    #[tokio::test]
    async fn power_levels_never_exceed_the_bots_and_change_in_one_event() {
        let hs = MockHomeserver::start().await;
        let ctx = test_context(&hs, "").await;
        let room = room_id!("!linked:localhost");
        hs.mock_room_state(room)
            .ok_body(json!([
                state("m.room.create", "", json!({ "room_version": "10" })),
                state("m.room.member", "@_test_bot:localhost", json!({ "membership": "join" })),
                state(
                    "m.room.power_levels",
                    "",
                    json!({ "users": { "@owner:localhost": 100, "@_test_bot:localhost": 50,
                                       "@mod:localhost": 50 } }),
                ),
            ]))
            .mount()
            .await;
        hs.mock_set_state(room, "m.room.power_levels", "").as_bot().ok().expect(1).mount().await;
        let portal = Portal { key: PortalKey::shared("chat"), room_id: room.to_owned() };
        let users = [
            (user_id!("@boss:localhost").to_owned(), 100),
            (user_id!("@mod:localhost").to_owned(), 50),
            (ctx.bot_user_id().to_owned(), 0),
        ];
        let defaults = ChatPowerLevels { events_default: Some(75), ..ChatPowerLevels::default() };
        ctx.apply_power_levels(&portal, &users, Some(&defaults)).await.unwrap();
        let sent: Vec<serde_json::Value> = hs
            .received()
            .await
            .iter()
            .filter(|r| r.method.as_str() == "PUT" && r.url.path().contains("m.room.power_levels"))
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect();
        assert_eq!(sent.len(), 1);
        assert_eq!(
            sent[0]["users"],
            json!({ "@owner:localhost": 100, "@_test_bot:localhost": 50, "@mod:localhost": 50,
                    "@boss:localhost": 50 })
        );
        assert_eq!(sent[0]["events_default"], 50);
        // Nothing to change: nothing is sent (the mock expects one event in all).
        ctx.apply_power_levels(&portal, &users[1..2], None).await.unwrap();
    }
}
