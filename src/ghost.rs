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
    escape_localpart_within(remote, usize::MAX).0
}

/// [`escape_localpart`] for at most `max` bytes of output, never cutting one byte's escape in
/// two; with whether the whole ID fitted.
fn escape_localpart_within(remote: &str, max: usize) -> (String, bool) {
    use fmt::Write as _;
    let mut out = String::with_capacity(remote.len().min(max));
    for b in remote.bytes() {
        let width = match b {
            b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'/' => 1,
            b'_' | b'A'..=b'Z' => 2,
            _ => 3,
        };
        if out.len() + width > max {
            return (out, false);
        }
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
    (out, true)
}

/// The most bytes in a user ID, `@` and `:server` included.
pub const MAX_USER_ID_BYTES: usize = 255;

/// The most characters in a display name the homeserver accepts (Synapse's limit).
pub const MAX_DISPLAYNAME_CHARS: usize = 256;

/// Sets a digest localpart apart from every escaped one: in an escaped ID, `=` is always
/// followed by two hex digits, so `==` never occurs there.
const DIGEST_MARK: &str = "==";

/// Hex digits of the SHA-256 kept in a digest localpart (128 bits).
const DIGEST_HEX_DIGITS: usize = 32;

/// The localpart of a remote user's ghost: `template` with `{id}` replaced by the escaped ID
/// ([`escape_localpart`]) when the user ID fits in [`MAX_USER_ID_BYTES`] on `server_name`.
/// A longer ID is replaced by as much of its escaped start as fits, `==`, and 32 hex digits of
/// the SHA-256 of the whole ID: stable, and never equal to the escaped form of another ID.
pub fn ghost_localpart(template: &str, remote: &str, server_name: &str) -> String {
    let slots = template.matches("{id}").count().max(1);
    // `@`, `:` and the server name, and the template around its placeholders.
    let fixed = 2 + server_name.len() + template.len().saturating_sub(4 * slots);
    let room = MAX_USER_ID_BYTES.saturating_sub(fixed) / slots;
    let id = match escape_localpart_within(remote, room) {
        (escaped, true) => escaped,
        _ => {
            let digest = crate::secret::sha256_hex(remote.as_bytes());
            let readable = room.saturating_sub(DIGEST_MARK.len() + DIGEST_HEX_DIGITS);
            let (start, _) = escape_localpart_within(remote, readable);
            format!("{start}{DIGEST_MARK}{}", &digest[..DIGEST_HEX_DIGITS])
        }
    };
    template.replace("{id}", &id)
}

/// A display name cut to [`MAX_DISPLAYNAME_CHARS`] characters (never inside a character).
pub fn displayname_within_limit(name: &str) -> &str {
    name.char_indices().nth(MAX_DISPLAYNAME_CHARS).map_or(name, |(cut, _)| &name[..cut])
}

impl Context {
    /// The Matrix user ID of a remote user's ghost (from `ghost_localpart_template`, see
    /// [`ghost_localpart`]): any remote ID gives one.
    ///
    /// # Errors
    /// When the result would be the bot, or the server name and template leave no room for
    /// even a digest.
    pub fn ghost_user_id(&self, remote: &RemoteUserId) -> Result<OwnedUserId, RemoteError> {
        let template = &self.appservice().ghost_localpart_template;
        let localpart = ghost_localpart(template, &remote.0, self.server_name().as_str());
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
        // The rare steps are boxed: this runs for every remote event, and its future is as
        // large as its largest step.
        let unknown = known.is_none();
        if unknown {
            Box::pin(intent.ensure_registered()).await?;
        }
        let (old_name, old_avatar) = known.map_or((None, None), |g| (g.displayname, g.avatar_url));
        let name = profile.displayname.as_deref().map(displayname_within_limit);
        let new_name = name.filter(|name| old_name.as_deref() != Some(*name));
        let new_avatar = profile.avatar_url.as_ref().filter(|a| old_avatar.as_ref() != Some(*a));
        if new_name.is_none() && new_avatar.is_none() && !unknown {
            return Ok(intent);
        }
        if let Some(name) = new_name {
            Box::pin(intent.set_displayname(name)).await?;
        }
        if let Some(avatar) = new_avatar {
            Box::pin(intent.set_avatar_url(avatar)).await?;
        }
        let row = GhostRow {
            remote_id: remote.clone(),
            user_id,
            displayname: new_name.map(str::to_owned).or(old_name),
            avatar_url: new_avatar.cloned().or(old_avatar),
            metadata: None,
        };
        Box::pin(self.store().upsert_ghost(&row)).await?;
        Ok(intent)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{MockHomeserver, test_context};

    /// A ghost is registered when first seen and recorded even without a profile; its display
    /// name is set only when it differs from the one set last.
    #[tokio::test]
    async fn a_ghost_is_registered_once_and_its_profile_set_only_when_it_changes() {
        let hs = MockHomeserver::start().await;
        let ctx = test_context(&hs, "").await;
        let (alice, bob) = (RemoteUserId::from("alice"), RemoteUserId::from("bob"));
        let (ghost, bob_ghost) =
            (ctx.ghost_user_id(&alice).unwrap(), ctx.ghost_user_id(&bob).unwrap());
        for user in [&ghost, &bob_ghost] {
            hs.mock_register().for_user(user).expect(1).mount().await;
            hs.mock_get_profile(user).ok_body(json!({})).mount().await;
        }
        for name in ["Alice", "Alice B"] {
            hs.mock_set_profile(&ghost, "displayname")
                .as_user(&ghost)
                .with_body(json!({ "displayname": name }))
                .expect(1)
                .mount()
                .await;
        }
        let named = |name: &str| GhostProfile { displayname: Some(name.into()), avatar_url: None };
        for profile in [named("Alice"), named("Alice"), named("Alice B"), named("Alice B")] {
            let intent = ctx.ensure_ghost(&alice, &profile).await.unwrap();
            assert_eq!(intent.user_id(), ghost);
        }
        let row = ctx.store().ghost(&alice).await.unwrap().unwrap();
        assert_eq!(row.displayname.as_deref(), Some("Alice B"));
        for _ in 0..2 {
            ctx.ensure_ghost(&bob, &GhostProfile::default()).await.unwrap();
        }
        let row = ctx.store().ghost(&bob).await.unwrap().expect("recorded without a profile");
        assert_eq!((row.displayname, row.avatar_url), (None, None));
    }

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

    fn valid_user_id(localpart: &str) -> OwnedUserId {
        let user_id = UserId::parse(format!("@{localpart}:localhost")).unwrap();
        user_id.validate_strict().unwrap();
        user_id
    }

    #[test]
    fn short_ids_are_escaped_as_before() {
        assert_eq!(ghost_localpart("_t_{id}", "Bob Smith", "localhost"), "_t__bob=20_smith");
        assert_eq!(ghost_localpart("x{id}y{id}", "a", "localhost"), "xaya");
    }

    #[test]
    fn any_id_of_any_length_and_alphabet_gives_a_valid_user_id() {
        let long_ascii = "a".repeat(1000);
        let long_unicode = "名前🙂".repeat(300);
        let controls = "\0\n\t\u{202e}".repeat(100);
        for remote in [long_ascii.as_str(), &long_unicode, &controls, "", "=", "==", "a b"] {
            for server in ["localhost", &format!("{}.example", "s".repeat(150))] {
                let localpart = ghost_localpart("_t_{id}", remote, server);
                let user_id = UserId::parse(format!("@{localpart}:{server}")).unwrap();
                user_id.validate_strict().unwrap();
                assert!(user_id.as_str().len() <= MAX_USER_ID_BYTES, "{user_id}");
                // Stable.
                assert_eq!(ghost_localpart("_t_{id}", remote, server), localpart);
            }
        }
        // The longest ID that fits is escaped; one byte more takes the digest.
        let room = MAX_USER_ID_BYTES - "@_t_:localhost".len();
        let fits = "a".repeat(room);
        assert_eq!(
            valid_user_id(&ghost_localpart("_t_{id}", &fits, "localhost")).as_str().len(),
            255
        );
        assert_eq!(ghost_localpart("_t_{id}", &fits, "localhost"), format!("_t_{fits}"));
        let over = ghost_localpart("_t_{id}", &format!("{fits}a"), "localhost");
        assert!(over.contains("==") && over.starts_with("_t_aaaa"), "{over}");
        assert_eq!(over.len(), "_t_".len() + room);
    }

    #[test]
    fn digest_forms_differ_from_each_other_and_from_every_escaped_form() {
        let a = ghost_localpart("_t_{id}", &"x".repeat(400), "localhost");
        let b = ghost_localpart("_t_{id}", &format!("{}y", "x".repeat(399)), "localhost");
        // Same readable start, different digests.
        assert_ne!(a, b);
        assert_eq!(a[..200], b[..200]);
        // No escaped ID holds the mark, not even one made of `=` signs or of a digest form.
        for remote in ["=", "==", "=3d", &a, "_=", "a==b"] {
            assert!(!escape_localpart(remote).contains(DIGEST_MARK), "{remote}");
        }
        // A digest is cut from the escaped start without splitting an escape.
        let long = "Ü".repeat(200);
        let lp = ghost_localpart("_t_{id}", &long, "localhost");
        let start = lp.strip_prefix("_t_").unwrap().split(DIGEST_MARK).next().unwrap();
        assert!(start.len().is_multiple_of(3) && start.starts_with("=c3=9c=c3=9c"), "{lp}");
    }

    #[test]
    fn display_names_are_cut_at_a_character_boundary() {
        assert_eq!(displayname_within_limit("CI Bot"), "CI Bot");
        let exact = "é".repeat(MAX_DISPLAYNAME_CHARS);
        assert_eq!(displayname_within_limit(&exact), exact);
        let long = "🙂".repeat(1000);
        let cut = displayname_within_limit(&long);
        assert_eq!(cut.chars().count(), MAX_DISPLAYNAME_CHARS);
        assert!(long.starts_with(cut));
    }
}
