//! `encryption:`: end-to-bridge encryption (built with the `encryption` cargo feature).

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `encryption:`: whether the bridge reads and writes encrypted rooms through a device of its
/// own. All off by default.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// Set up the bridge device and take part in encrypted rooms. `generate-registration` then
    /// asks the homeserver for what a device needs (MSC4190 devices, MSC3202 key counts and
    /// device lists, MSC2409 to-device messages).
    #[serde(default)]
    pub allow: bool,
    /// New portals are created encrypted (needs `allow`).
    #[serde(default)]
    pub default: bool,
    /// Refuse to bridge unencrypted messages in portals (needs `allow` and `default`).
    #[serde(default)]
    pub require: bool,
    /// How long an encrypted event whose room key has not arrived holds its room (default 5
    /// seconds). Then it is set aside, the room moves on, and it is handled when the key comes.
    #[serde(default = "default_key_wait_secs")]
    pub key_wait_secs: u64,
    /// Delete received room keys this many days after they arrived (checked hourly); unset
    /// (the default) keeps them. Messages of a deleted key can no longer be decrypted, also
    /// not an event set aside or parked that has not been handled yet.
    #[serde(default)]
    pub delete_room_keys_after_days: Option<u32>,
}

fn default_key_wait_secs() -> u64 {
    5
}

impl Default for EncryptionConfig {
    fn default() -> Self {
        Self {
            allow: false,
            default: false,
            require: false,
            key_wait_secs: default_key_wait_secs(),
            delete_room_keys_after_days: None,
        }
    }
}

impl EncryptionConfig {
    /// Checks the combination, and that this build can encrypt at all when asked to.
    ///
    /// # Errors
    /// Names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| {
            Err(ConfigError::Invalid { key: key.into(), message: message.into() })
        };
        if self.default && !self.allow {
            return invalid("encryption.default", "needs encryption.allow");
        }
        if self.require && !(self.allow && self.default) {
            return invalid("encryption.require", "needs encryption.allow and encryption.default");
        }
        if self.allow && !cfg!(feature = "encryption") {
            return invalid(
                "encryption.allow",
                "this build has no encryption (the `encryption` cargo feature)",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(allow: bool, default: bool, require: bool) -> EncryptionConfig {
        EncryptionConfig { allow, default, require, ..EncryptionConfig::default() }
    }

    fn bad_key(c: &EncryptionConfig) -> Option<String> {
        match c.validate() {
            Ok(()) => None,
            Err(ConfigError::Invalid { key, .. }) => Some(key),
            Err(e) => panic!("unexpected {e}"),
        }
    }

    #[test]
    fn default_and_require_need_what_they_build_on() {
        assert_eq!(bad_key(&config(false, false, false)), None);
        assert_eq!(bad_key(&config(false, true, false)).as_deref(), Some("encryption.default"));
        assert_eq!(bad_key(&config(false, false, true)).as_deref(), Some("encryption.require"));
        assert_eq!(bad_key(&config(true, false, true)).as_deref(), Some("encryption.require"));
    }

    #[test]
    fn allow_is_refused_by_a_build_without_the_feature() {
        for c in [config(true, false, false), config(true, true, false), config(true, true, true)] {
            let refused = bad_key(&c);
            if cfg!(feature = "encryption") {
                assert_eq!(refused, None);
            } else {
                assert_eq!(refused.as_deref(), Some("encryption.allow"));
            }
        }
    }
}
