//! The appservice registration file that the homeserver reads.
//!
//! The same YAML is loaded by Synapse (`app_service_config_files`) and by the bridge. The type here
//! keeps the tokens in [`Secret`]s (ruma's `Registration` stores them as plain `String`s, whose
//! `Debug` would print them) and carries the unstable keys bridges need (`org.matrix.msc3202`,
//! `io.element.msc4190`, the MSC2409 ephemeral flag). Namespaces reuse ruma's types.

use std::{fs, io, path::Path};

use regex::{Regex, RegexSet};
use ruma::{RoomAliasId, RoomId, UserId, api::appservice::Namespaces};
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Errors from loading, validating or saving a registration.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The YAML is malformed or has wrong types.
    #[error("{path}: {message}")]
    Yaml {
        /// The file.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is present but not acceptable.
    #[error("registration key `{key}`: {message}")]
    Invalid {
        /// The offending key.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// The wire form of a registration, exactly as the homeserver reads it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationFile {
    /// A unique, user-defined ID of the application service, never changed once set.
    pub id: String,
    /// The URL the homeserver pushes to; an explicit `null` disables pushes.
    #[serde(deserialize_with = "Option::deserialize")]
    pub url: Option<String>,
    /// The token the appservice uses to talk to the homeserver.
    pub as_token: Secret,
    /// The token the homeserver uses to talk to the appservice.
    pub hs_token: Secret,
    /// The localpart of the appservice's own user (the bot).
    pub sender_localpart: String,
    /// The users, aliases and rooms the appservice is interested in.
    pub namespaces: Namespaces,
    /// Whether the homeserver rate-limits requests made by the appservice's users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limited: Option<bool>,
    /// Third-party protocols the appservice provides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<String>>,
    /// Whether ephemeral events (typing, receipts, presence) are pushed (MSC2409, stable name).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub receive_ephemeral: bool,
    /// The unstable MSC2409 spelling of `receive_ephemeral`, still read by Synapse.
    #[serde(
        default,
        rename = "de.sorunome.msc2409.push_ephemeral",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub push_ephemeral_unstable: bool,
    /// MSC3202: device lists and one-time-key counts in transactions (for encryption).
    #[serde(default, rename = "org.matrix.msc3202", skip_serializing_if = "std::ops::Not::not")]
    pub msc3202: bool,
    /// MSC4190: devices are managed by the appservice with its own token.
    #[serde(default, rename = "io.element.msc4190", skip_serializing_if = "std::ops::Not::not")]
    pub msc4190: bool,
    /// Source IP ranges the homeserver accepts appservice requests from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range_whitelist: Option<Vec<String>>,
}

/// A validated registration with its namespaces compiled once.
///
/// Cheap predicates (`is_user_in_namespace`, ...) answer whether an ID belongs to the appservice
/// without compiling a regex again.
#[derive(Clone, Debug)]
pub struct Registration {
    file: RegistrationFile,
    users: RegexSet,
    exclusive_users: RegexSet,
    aliases: RegexSet,
    rooms: RegexSet,
}

impl Registration {
    /// Validates a wire registration and compiles its namespaces.
    ///
    /// # Errors
    /// When a required string is empty, a token is too short to be a secret, or a namespace regex
    /// does not compile.
    pub fn new(file: RegistrationFile) -> Result<Self, RegistrationError> {
        let invalid =
            |key, message: &str| RegistrationError::Invalid { key, message: message.into() };
        if file.id.trim().is_empty() {
            return Err(invalid("id", "must not be empty"));
        }
        if file.as_token.expose().len() < 16 {
            return Err(invalid("as_token", "must be at least 16 characters"));
        }
        if file.hs_token.expose().len() < 16 {
            return Err(invalid("hs_token", "must be at least 16 characters"));
        }
        if file.as_token == file.hs_token {
            return Err(invalid("hs_token", "must differ from as_token"));
        }
        if file.sender_localpart.is_empty()
            || !file
                .sender_localpart
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._=-/+".contains(&b))
        {
            return Err(invalid(
                "sender_localpart",
                "must be a non-empty localpart of a-z, 0-9 and ._=-/+",
            ));
        }
        if let Some(url) = &file.url {
            url::Url::parse(url)
                .map_err(|e| invalid("url", &format!("not a URL ({e}): {url:?}")))?;
        }
        let compile =
            |key: &'static str, list: &[ruma::api::appservice::Namespace], only_exclusive: bool| {
                let patterns: Vec<String> = list
                    .iter()
                    .filter(|ns| !only_exclusive || ns.exclusive)
                    .map(|ns| anchored(&ns.regex))
                    .collect();
                for p in &patterns {
                    Regex::new(p)
                        .map_err(|e| RegistrationError::Invalid { key, message: e.to_string() })?;
                }
                RegexSet::new(&patterns)
                    .map_err(|e| RegistrationError::Invalid { key, message: e.to_string() })
            };
        let users = compile("namespaces.users", &file.namespaces.users, false)?;
        let exclusive_users = compile("namespaces.users", &file.namespaces.users, true)?;
        let aliases = compile("namespaces.aliases", &file.namespaces.aliases, false)?;
        let rooms = compile("namespaces.rooms", &file.namespaces.rooms, false)?;
        Ok(Self { file, users, exclusive_users, aliases, rooms })
    }

    /// Reads and validates a registration YAML file.
    ///
    /// # Errors
    /// When the file cannot be read, is not valid YAML for a registration, or fails validation.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, RegistrationError> {
        let path = path.as_ref();
        let text = fs::read_to_string(path)
            .map_err(|source| RegistrationError::Io { path: path.display().to_string(), source })?;
        Self::from_yaml(&text).map_err(|e| match e {
            RegistrationError::Yaml { message, .. } => {
                RegistrationError::Yaml { path: path.display().to_string(), message }
            }
            other => other,
        })
    }

    /// Parses and validates a registration from YAML text.
    ///
    /// # Errors
    /// As [`Registration::load`], without the I/O.
    pub fn from_yaml(text: &str) -> Result<Self, RegistrationError> {
        let file: RegistrationFile = crate::util::from_yaml(text).map_err(|e| {
            RegistrationError::Yaml { path: "<registration>".into(), message: e.to_string() }
        })?;
        Self::new(file)
    }

    /// Renders the registration as YAML.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(&self.file).expect("a registration always serializes")
    }

    /// Writes the registration to `path` with owner-only permissions (it holds both tokens).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), RegistrationError> {
        let path = path.as_ref();
        crate::util::write_private(path, self.to_yaml().as_bytes())
            .map_err(|source| RegistrationError::Io { path: path.display().to_string(), source })
    }

    /// The wire form.
    pub fn file(&self) -> &RegistrationFile {
        &self.file
    }

    /// The appservice ID.
    pub fn id(&self) -> &str {
        &self.file.id
    }

    /// The token the appservice presents to the homeserver.
    pub fn as_token(&self) -> &Secret {
        &self.file.as_token
    }

    /// The token the homeserver presents to the appservice.
    pub fn hs_token(&self) -> &Secret {
        &self.file.hs_token
    }

    /// The bot's localpart.
    pub fn sender_localpart(&self) -> &str {
        &self.file.sender_localpart
    }

    /// Whether `user_id` matches any user namespace (exclusive or not).
    pub fn is_user_in_namespace(&self, user_id: &UserId) -> bool {
        self.users.is_match(user_id.as_str())
    }

    /// Whether `user_id` matches an exclusive user namespace: a ghost that only we control.
    pub fn is_exclusive_user(&self, user_id: &UserId) -> bool {
        self.exclusive_users.is_match(user_id.as_str())
    }

    /// Whether `alias` matches an alias namespace.
    pub fn is_alias_in_namespace(&self, alias: &RoomAliasId) -> bool {
        self.aliases.is_match(alias.as_str())
    }

    /// Whether `room_id` matches a room namespace.
    pub fn is_room_in_namespace(&self, room_id: &RoomId) -> bool {
        self.rooms.is_match(room_id.as_str())
    }
}

/// Namespace regexes must match the whole ID (Synapse uses `re.match` on the full string, and
/// bridges write them without anchors).
fn anchored(re: &str) -> String {
    format!("^(?:{re})$")
}

#[cfg(test)]
mod tests {
    use ruma::{room_alias_id, user_id};

    use super::*;

    const EXAMPLE: &str = include_str!("../registration.example.yaml");

    #[test]
    fn errors_name_the_key_but_never_quote_the_tokens() {
        let bad = EXAMPLE.replacen("sender_localpart:", "sender_localpart: [1]\nx:", 1);
        let reg = Registration::from_yaml(EXAMPLE).unwrap();
        let (as_token, hs_token) = (reg.as_token().expose(), reg.hs_token().expose());
        let message = Registration::from_yaml(&bad).unwrap_err().to_string();
        assert!(message.contains("sender_localpart"), "{message}");
        assert!(!message.contains(as_token) && !message.contains(hs_token), "{message}");
    }

    #[test]
    fn example_registration_loads_and_matches_its_namespaces() {
        let reg = Registration::from_yaml(EXAMPLE).unwrap();
        assert_eq!(reg.id(), "example-bridge");
        assert!(reg.is_user_in_namespace(user_id!("@_example_alice:localhost")));
        assert!(reg.is_exclusive_user(user_id!("@_example_alice:localhost")));
        assert!(!reg.is_user_in_namespace(user_id!("@alice:localhost")));
        // Anchored: a prefix or suffix around a match is not a match.
        assert!(!reg.is_user_in_namespace(user_id!("@x_example_alice:localhost")));
        assert!(!reg.is_user_in_namespace(user_id!("@_example_alice:localhost.evil")));
        assert!(reg.is_alias_in_namespace(room_alias_id!("#_example_room:localhost")));
    }

    #[test]
    fn round_trip_keeps_every_key() {
        let reg = Registration::from_yaml(EXAMPLE).unwrap();
        let again = Registration::from_yaml(&reg.to_yaml()).unwrap();
        assert_eq!(again.to_yaml(), reg.to_yaml());
        assert_eq!(again.as_token().expose(), reg.as_token().expose());
        assert!(again.file().msc3202 && again.file().push_ephemeral_unstable);
    }

    #[test]
    fn url_must_be_present_but_may_be_null() {
        let with_null = EXAMPLE.replace("url: http://127.0.0.1:29330", "url: null");
        assert!(Registration::from_yaml(&with_null).unwrap().file().url.is_none());
        let without: String =
            EXAMPLE.lines().filter(|l| !l.starts_with("url:")).collect::<Vec<_>>().join("\n");
        let err = Registration::from_yaml(&without).unwrap_err().to_string();
        assert!(err.contains("url"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let bad_regex = EXAMPLE.replace("'@_example_.*:localhost'", "'@_example_(:localhost'");
        let err = Registration::from_yaml(&bad_regex).unwrap_err().to_string();
        assert!(err.contains("namespaces.users"), "{err}");
        let unknown = format!("{EXAMPLE}\nsurprise: 1\n");
        let err = Registration::from_yaml(&unknown).unwrap_err().to_string();
        assert!(err.contains("surprise"), "{err}");
        let short =
            EXAMPLE.replace("as_token: CHANGE_ME_as_token_0123456789abcdef", "as_token: short");
        let err = Registration::from_yaml(&short).unwrap_err().to_string();
        assert!(err.contains("as_token"), "{err}");
    }

    #[test]
    fn debug_never_prints_tokens() {
        let reg = Registration::from_yaml(EXAMPLE).unwrap();
        let dbg = format!("{reg:?}");
        assert!(!dbg.contains("CHANGE_ME"), "{dbg}");
    }
}
