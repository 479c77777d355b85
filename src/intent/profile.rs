//! The user's global profile and account data.
//!
//! Profile setters read the current profile first and write only a change, so calling them on
//! every remote message costs one read. The per-room profile (an `m.room.member` event) is
//! [`Intent::set_room_profile`].

use ruma::{
    MxcUri, RoomId, UserId,
    api::{
        client::{
            config::{get_global_account_data, set_global_account_data},
            profile::{get_profile, set_profile_field},
        },
        error::ErrorKind,
    },
    events::{
        GlobalAccountDataEventType,
        direct::{DirectEventContent, OwnedDirectUserIdentifier},
    },
    profile::{AvatarUrl, DisplayName, ProfileFieldValue, StaticProfileField, UserProfile},
};

use super::{Intent, Result};

impl Intent {
    /// Sets the global display name, only when it differs from the current one (read with one
    /// `GET /profile`). Returns whether it was changed.
    pub async fn set_displayname(&self, displayname: &str) -> Result<bool> {
        self.ensure_registered().await?;
        let current = self.global_profile(&self.user_id).await?;
        if profile_field::<DisplayName>(current.as_ref()).as_deref() == Some(displayname) {
            return Ok(false);
        }
        self.set_profile_field(ProfileFieldValue::DisplayName(displayname.to_owned())).await?;
        Ok(true)
    }

    /// Sets the global avatar, only when it differs from the current one. Returns whether it
    /// was changed.
    pub async fn set_avatar_url(&self, avatar_url: &MxcUri) -> Result<bool> {
        self.ensure_registered().await?;
        let current = self.global_profile(&self.user_id).await?;
        if profile_field::<AvatarUrl>(current.as_ref()).as_deref() == Some(avatar_url) {
            return Ok(false);
        }
        self.set_profile_field(ProfileFieldValue::AvatarUrl(avatar_url.to_owned())).await?;
        Ok(true)
    }

    async fn set_profile_field(&self, value: ProfileFieldValue) -> Result<()> {
        let request = set_profile_field::v3::Request::new(self.user_id.clone(), value);
        self.client.send(request, self.as_user()).await?;
        Ok(())
    }

    /// A user's global profile; `None` when the homeserver has none to show (404, or 403 where
    /// profiles are visible to room-mates only).
    pub(super) async fn global_profile(&self, user_id: &UserId) -> Result<Option<UserProfile>> {
        let request = get_profile::v3::Request::new(user_id.to_owned());
        match self.client.send(request, None).await {
            Ok(response) => Ok(Some(response.data)),
            Err(err) if matches!(err.kind(), Some(ErrorKind::NotFound | ErrorKind::Forbidden)) => {
                Ok(None)
            }
            Err(err) if err.status() == Some(reqwest::StatusCode::NOT_FOUND) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Adds the room to this user's `m.direct` list as a direct chat with `other`: reads
    /// `m.direct`, adds the room, writes it back (nothing is written when the room is listed).
    pub async fn add_direct_room(&self, room_id: &RoomId, other: &UserId) -> Result<()> {
        self.ensure_registered().await?;
        let (user, as_user) = (self.user_id.clone(), self.as_user());
        let request = get_global_account_data::v3::Request::new(
            user.clone(),
            GlobalAccountDataEventType::Direct,
        );
        let mut direct = match self.client.send(request, as_user).await {
            Ok(response) => serde_json::from_str(response.account_data.json().get())?,
            Err(err) if err.status() == Some(reqwest::StatusCode::NOT_FOUND) => {
                DirectEventContent::default()
            }
            Err(err) => return Err(err.into()),
        };
        let rooms = direct.entry(OwnedDirectUserIdentifier::from(other.to_owned())).or_default();
        if rooms.iter().any(|r| r == room_id) {
            return Ok(());
        }
        rooms.push(room_id.to_owned());
        let request = set_global_account_data::v3::Request::new(user, &direct)
            .map_err(crate::client::Error::Json)?;
        self.client.send(request, as_user).await?;
        Ok(())
    }
}

/// A typed field of a profile; a field of the wrong type counts as unset.
pub(super) fn profile_field<F: StaticProfileField>(
    profile: Option<&UserProfile>,
) -> Option<F::Value> {
    profile.and_then(|p| p.get_static::<F>().ok().flatten())
}
