//! Power levels, with the rules of the room's version.
//!
//! A room's effective power levels need two state events: `m.room.power_levels` and
//! `m.room.create`, whose room version chooses the rules and whose sender (with
//! `additional_creators`) names the creators. From room version 12 on, creators outrank every
//! level and are not listed in `users`; before, they hold whatever `users` says. Both events are
//! cached (the create event whole, for its sender); a room missing either has its state fetched.

use ruma::{
    Int, OwnedEventId, OwnedUserId, RoomId,
    events::{
        EmptyStateKey,
        room::{
            create::RoomCreateEventContent,
            power_levels::{
                RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource, UserPowerLevel,
            },
        },
    },
    room_version_rules::RoomVersionRules,
};
use serde::Deserialize;

use super::{Intent, IntentError, Result};
use crate::store::RoomStateField;

/// The parts of a cached `m.room.create` event that power levels need.
#[derive(Debug, Deserialize)]
struct CreateEvent {
    sender: OwnedUserId,
    content: RoomCreateEventContent,
}

impl CreateEvent {
    /// Reads a cached row; `None` for a row that holds only the content (written by older
    /// versions, so the sender is unknown).
    fn from_cached(json: &str) -> Result<Option<Self>> {
        let value: serde_json::Value = serde_json::from_str(json)?;
        if value.get("sender").is_none() || value.get("content").is_none() {
            return Ok(None);
        }
        Ok(Some(serde_json::from_value(value)?))
    }

    /// The rules of the room's version.
    fn rules(&self) -> Result<RoomVersionRules> {
        let version = &self.content.room_version;
        version.rules().ok_or_else(|| IntentError::UnsupportedRoomVersion(version.clone()))
    }

    /// The room's creators: the sender (the `creator` of older versions is the sender too),
    /// and `additional_creators` where the room's version has them.
    fn creators(&self, rules: &RoomVersionRules) -> Vec<OwnedUserId> {
        let mut creators = vec![self.sender.clone()];
        if rules.authorization.additional_room_creators {
            creators.extend(self.content.additional_creators.iter().cloned());
        }
        creators
    }
}

impl Intent {
    /// The room's effective power levels, with its version's rules and creators: from the state
    /// cache, or fetched (by the bot) into it when missing.
    ///
    /// [`RoomPowerLevels::for_user`] gives a user's level (`Infinite` for a creator in room
    /// version 12 and later); its `user_can_*` methods check actions.
    ///
    /// # Errors
    /// [`IntentError::MalformedState`] for a room without a readable create event or power
    /// levels; [`IntentError::UnsupportedRoomVersion`] for a version whose rules are unknown.
    pub async fn power_levels(&self, room_id: &RoomId) -> Result<RoomPowerLevels> {
        let mut cached = self.cached_power_state(room_id).await?;
        let fetched = self.store.members_fetched(room_id).await?;
        if cached.0.is_none() || (cached.1.is_none() && !fetched) {
            self.bot_intent().fetch_room_state(room_id).await?;
            cached = self.cached_power_state(room_id).await?;
        }
        let (Some(create), levels) = cached else {
            return Err(IntentError::MalformedState(serde::de::Error::custom(format!(
                "{room_id} has no m.room.create event"
            ))));
        };
        let rules = create.rules()?;
        let source = RoomPowerLevelsSource::from(levels);
        Ok(RoomPowerLevels::new(source, &rules.authorization, create.creators(&rules)))
    }

    /// The cached create event and power levels content, each if known.
    async fn cached_power_state(
        &self,
        room_id: &RoomId,
    ) -> Result<(Option<CreateEvent>, Option<RoomPowerLevelsEventContent>)> {
        let create = match self.store.room_state(room_id, RoomStateField::Create).await? {
            Some(json) => CreateEvent::from_cached(&json)?,
            None => None,
        };
        let levels = match self.store.room_state(room_id, RoomStateField::PowerLevels).await? {
            Some(json) => Some(serde_json::from_str(&json)?),
            None => None,
        };
        Ok((create, levels))
    }

    /// Makes sure the user has at least `level`: when lower, the bot raises it (if the bot may)
    /// and the cache is updated. Returns whether power levels were changed.
    ///
    /// A creator of a room of version 12 or later outranks every level already; the bot, when
    /// it created the room, may raise anyone to any level there.
    ///
    /// # Errors
    /// [`IntentError::NotPermitted`] when the bot may not change power levels, may not change
    /// this user's, or would give more than it has.
    pub async fn ensure_power_level(
        &self,
        room_id: &RoomId,
        level: impl Into<Int>,
    ) -> Result<bool> {
        let level = level.into();
        let mut levels = self.power_levels(room_id).await?;
        if levels.for_user(&self.user_id) >= level {
            return Ok(false);
        }
        let bot = self.client.bot_user_id();
        let bot_level = levels.for_user(bot);
        if !levels.user_can_change_user_power_level(bot, &self.user_id) || bot_level < level {
            return Err(IntentError::NotPermitted(format!(
                "{bot} (power level {}) cannot raise {} to {level}",
                describe(bot_level),
                self.user_id
            )));
        }
        levels.users.insert(self.user_id.clone(), level);
        let content = RoomPowerLevelsEventContent::try_from(levels)
            .map_err(|e| IntentError::NotPermitted(e.to_string()))?;
        self.bot_intent().set_power_levels(room_id, &content).await?;
        Ok(true)
    }

    /// Sends `m.room.power_levels` as this user and caches it.
    pub async fn set_power_levels(
        &self,
        room_id: &RoomId,
        content: &RoomPowerLevelsEventContent,
    ) -> Result<OwnedEventId> {
        let event_id = self.send_state(room_id, &EmptyStateKey, content).await?;
        let json = serde_json::to_string(content)?;
        self.store.set_room_state(room_id, RoomStateField::PowerLevels, &json).await?;
        Ok(event_id)
    }

    /// This user's level in the room (`Infinite` for a creator in room version 12 and later).
    ///
    /// # Errors
    /// As [`Intent::power_levels`].
    pub async fn power_level(&self, room_id: &RoomId) -> Result<UserPowerLevel> {
        Ok(self.power_levels(room_id).await?.for_user(self.user_id()))
    }
}

/// A level as a person reads it.
fn describe(level: UserPowerLevel) -> String {
    match level {
        UserPowerLevel::Int(n) => n.to_string(),
        _ => "creator".to_owned(),
    }
}
