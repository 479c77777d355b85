//! Ghosts: the Matrix users that stand for remote users, named from
//! `appservice.ghost_localpart_template`, registered and given their profile on first use.

use std::fmt;

use ruma::{OwnedUserId, UserId};

use crate::{
    context::Context,
    intent::Intent,
    portal::RemoteError,
    remote::{GhostProfile, RemoteUserId},
    store::GhostRow,
};

/// Escapes a remote ID into localpart characters, reversibly: `a-z 0-9 . - /` stay, `_` becomes
/// `__`, an upper-case letter `X` becomes `_x`, every other byte `=hh`.
pub fn escape_localpart(remote: &str) -> String {
    use fmt::Write as _;
    let mut out = String::with_capacity(remote.len());
    for b in remote.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'/' => out.push(char::from(b)),
            b'_' => out.push_str("__"),
            b'A'..=b'Z' => {
                out.push('_');
                out.push(char::from(b.to_ascii_lowercase()));
            }
            _ => {
                let _ = write!(out, "={b:02x}");
            }
        }
    }
    out
}

impl Context {
    /// The Matrix user ID of a remote user's ghost (from `ghost_localpart_template`).
    ///
    /// # Errors
    /// When the result is not a valid user ID (too long, say).
    pub fn ghost_user_id(&self, remote: &RemoteUserId) -> Result<OwnedUserId, RemoteError> {
        let localpart = self
            .appservice()
            .ghost_localpart_template
            .replace("{id}", &escape_localpart(&remote.0));
        let user_id = UserId::parse_with_server_name(localpart, self.server_name())
            .map_err(|_| RemoteError::InvalidGhost(remote.0.clone()))?;
        // A remote user named like the bot must never speak as the bot.
        if user_id == *self.bot_user_id() {
            return Err(RemoteError::InvalidGhost(remote.0.clone()));
        }
        Ok(user_id)
    }

    /// Makes a remote user's ghost exist with the given profile: registered, and its display
    /// name and avatar set only when they differ from what was set last (no request otherwise).
    ///
    /// # Errors
    /// When registration or a profile update fails.
    pub async fn ensure_ghost(
        &self,
        remote: &RemoteUserId,
        profile: &GhostProfile,
    ) -> Result<Intent, RemoteError> {
        let user_id = self.ghost_user_id(remote)?;
        let intent = self.intent(&user_id)?;
        let known = self.store().ghost(remote).await?;
        if known.is_none() {
            intent.ensure_registered().await?;
        }
        let (old_name, old_avatar) = known.map_or((None, None), |g| (g.displayname, g.avatar_url));
        let mut row = GhostRow {
            remote_id: remote.clone(),
            user_id: user_id.clone(),
            displayname: old_name.clone(),
            avatar_url: old_avatar.clone(),
            metadata: None,
        };
        let mut changed = old_name.is_none() && old_avatar.is_none();
        if let Some(name) = &profile.displayname
            && old_name.as_deref() != Some(name.as_str())
        {
            intent.set_displayname(name).await?;
            row.displayname = Some(name.clone());
            changed = true;
        }
        if let Some(avatar) = &profile.avatar_url
            && old_avatar.as_ref() != Some(avatar)
        {
            intent.set_avatar_url(avatar).await?;
            row.avatar_url = Some(avatar.clone());
            changed = true;
        }
        if changed {
            self.store().upsert_ghost(&row).await?;
        }
        Ok(intent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localpart_escaping_is_reversible_in_shape_and_valid() {
        assert_eq!(escape_localpart("alice"), "alice");
        assert_eq!(escape_localpart("Alice_B"), "_alice___b");
        assert_eq!(escape_localpart("a b@c"), "a=20b=40c");
        assert_eq!(escape_localpart("Ünï"), "=c3=9cn=c3=af");
        for input in ["Bob Smith", "x:y", "émile", "__", "#chan"] {
            let lp = escape_localpart(input);
            assert!(
                lp.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._=-/".contains(&b)),
                "{lp}"
            );
        }
        // Different inputs never collide.
        assert_ne!(escape_localpart("A"), escape_localpart("_a"));
        assert_ne!(escape_localpart("a_"), escape_localpart("a__"));
    }
}
