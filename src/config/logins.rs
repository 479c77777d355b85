//! The config sections of users and logins: `logins:`, `relay:`, `provisioning:` and
//! `double_puppet:`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// `logins:`: users' logins to the remote network.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginsConfig {
    /// The most logins one Matrix user may have at once.
    #[serde(default = "default_max_per_user")]
    pub max_per_user: usize,
    /// How long a login in progress may sit unanswered before it is dropped, in seconds.
    #[serde(default = "default_login_timeout")]
    pub timeout_secs: u64,
    /// Where each change of a login's state is POSTed, in the `com.beeper.bridge_state`
    /// shape, with the as_token as bearer token. Nowhere when empty.
    #[serde(default)]
    pub status_endpoint: Option<url::Url>,
}

impl Default for LoginsConfig {
    fn default() -> Self {
        Self {
            max_per_user: default_max_per_user(),
            timeout_secs: default_login_timeout(),
            status_endpoint: None,
        }
    }
}

fn default_max_per_user() -> usize {
    1
}
fn default_login_timeout() -> u64 {
    600
}

/// `relay:`: messages of room members without a login of their own, sent through the
/// portal's relay login.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Relaying at all. Off: members without a login are told their message was not bridged.
    #[serde(default)]
    pub enabled: bool,
    /// Only admins may set or unset a portal's relay.
    #[serde(default = "yes")]
    pub admin_only: bool,
    /// How a relayed message reads on the network, per message type (`m.text`, `m.image`,
    /// ...); `{sender_name}` is the sender's display name in the room, `{sender_id}` their
    /// Matrix ID, `{body}` the message's text (or the file's name). Types not listed use
    /// `m.text`'s.
    #[serde(default = "default_formats")]
    pub message_formats: BTreeMap<String, String>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self { enabled: false, admin_only: true, message_formats: default_formats() }
    }
}

fn yes() -> bool {
    true
}

fn default_formats() -> BTreeMap<String, String> {
    [
        ("m.text", "{sender_name}: {body}"),
        ("m.notice", "{sender_name}: {body}"),
        ("m.emote", "* {sender_name} {body}"),
        ("m.file", "{sender_name} sent a file: {body}"),
        ("m.image", "{sender_name} sent an image: {body}"),
        ("m.audio", "{sender_name} sent an audio file: {body}"),
        ("m.video", "{sender_name} sent a video: {body}"),
        ("m.location", "{sender_name} sent a location: {body}"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

impl RelayConfig {
    /// A relayed message's text: the template of its message type with the placeholders
    /// filled in (each once, left to right, so a name holding `{body}` stays as it is).
    pub fn format(&self, msgtype: &str, sender_name: &str, sender_id: &str, body: &str) -> String {
        self.fill(msgtype, sender_name, sender_id, body, str::to_owned)
    }

    /// As [`RelayConfig::format`], for an HTML body: the template's own text is escaped (a
    /// template `<{sender_name}> {body}` shows its brackets), the values go in as given
    /// (escape the name and ID yourself).
    pub fn format_html(
        &self,
        msgtype: &str,
        sender_name: &str,
        sender_id: &str,
        body: &str,
    ) -> String {
        let escape = |s: &str| {
            s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
        };
        self.fill(msgtype, sender_name, sender_id, body, escape)
    }

    fn fill(
        &self,
        msgtype: &str,
        sender_name: &str,
        sender_id: &str,
        body: &str,
        literal: impl Fn(&str) -> String,
    ) -> String {
        let template = self
            .message_formats
            .get(msgtype)
            .or_else(|| self.message_formats.get("m.text"))
            .map_or("{sender_name}: {body}", String::as_str);
        let mut out = String::with_capacity(template.len() + body.len() + sender_name.len());
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&literal(&rest[..open]));
            let after = &rest[open..];
            let value =
                [("{sender_name}", sender_name), ("{sender_id}", sender_id), ("{body}", body)]
                    .into_iter()
                    .find(|(name, _)| after.starts_with(name));
            match value {
                Some((name, value)) => {
                    out.push_str(value);
                    rest = &after[name.len()..];
                }
                None => {
                    out.push('{');
                    rest = &after[1..];
                }
            }
        }
        out.push_str(&literal(rest));
        out
    }
}

/// `provisioning:`: the HTTP API under `/_matrix/provision/v3/` that clients and integration
/// managers use to log users in.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningConfig {
    /// The shared secret (a bearer token, the acting user named by `?user_id=`). The API is
    /// off while it is empty.
    #[serde(default)]
    pub shared_secret: Option<Secret>,
    /// Also accept a Matrix access token of a user of our homeserver (checked with the
    /// homeserver's `whoami`).
    #[serde(default = "yes")]
    pub allow_matrix_auth: bool,
    /// Requests per minute per user (and for failed authentications together).
    #[serde(default = "default_rate")]
    pub requests_per_minute: u32,
}

impl Default for ProvisioningConfig {
    fn default() -> Self {
        Self { shared_secret: None, allow_matrix_auth: true, requests_per_minute: default_rate() }
    }
}

fn default_rate() -> u32 {
    60
}

/// `double_puppet:`: how the bridge acts as its users' own Matrix accounts, so that what they
/// write on the remote network (from their phone, say) appears from them, not from a ghost.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoublePuppetConfig {
    /// Per homeserver (server name): `as_token:TOKEN`, the `as_token` of a second appservice
    /// registration whose user namespace is `@.*:server`, not exclusive, with `url: null`
    /// (`generate-registration --double-puppet` writes one). With it the bridge acts as any
    /// user of that server who logged in to the remote network, without asking for a token.
    #[serde(default)]
    pub secrets: BTreeMap<ruma::OwnedServerName, DoublePuppetSecret>,
    /// Homeservers other than ours, by server name: their Client-Server API's URL (default:
    /// found through `.well-known`).
    #[serde(default)]
    pub servers: BTreeMap<ruma::OwnedServerName, url::Url>,
    /// Let users give an access token of their own with the `login-matrix` command.
    #[serde(default = "yes")]
    pub allow_manual: bool,
}

impl Default for DoublePuppetConfig {
    fn default() -> Self {
        Self { secrets: BTreeMap::new(), servers: BTreeMap::new(), allow_manual: true }
    }
}

/// A `double_puppet.secrets` value: how to act as that server's users.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DoublePuppetSecret {
    /// `as_token:TOKEN`: another registration's `as_token`, used with `?user_id=`.
    AsToken(Secret),
}

impl std::str::FromStr for DoublePuppetSecret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("as_token", token)) if !token.trim().is_empty() => {
                Ok(Self::AsToken(Secret::new(token.trim())))
            }
            _ => Err("must be `as_token:` followed by the token of a double-puppet \
                      registration (generate-registration --double-puppet writes one)"
                .into()),
        }
    }
}

impl<'de> Deserialize<'de> for DoublePuppetSecret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for DoublePuppetSecret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::AsToken(token) => {
                serializer.serialize_str(&format!("as_token:{}", token.expose()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn double_puppet_secrets_name_their_method() {
        let secret: DoublePuppetSecret = "as_token:abc123".parse().unwrap();
        assert_eq!(secret, DoublePuppetSecret::AsToken(Secret::new("abc123")));
        for bad in ["abc123", "as_token:", "shared_secret:xyz", "as_token:   "] {
            let err = bad.parse::<DoublePuppetSecret>().unwrap_err();
            assert!(err.contains("as_token:"), "{bad}: {err}");
        }
        let config: DoublePuppetConfig =
            serde_saphyr::from_str("secrets:\n  example.org: \"as_token:t0k\"\n").unwrap();
        let server = ruma::server_name!("example.org");
        assert!(
            matches!(&config.secrets[server], DoublePuppetSecret::AsToken(t) if t.expose() == "t0k")
        );
        assert!(config.allow_manual);
        assert!(serde_saphyr::from_str::<DoublePuppetConfig>("secrets:\n  x.org: nope\n").is_err());
    }

    #[test]
    fn relay_templates_fill_each_placeholder_once() {
        let relay = RelayConfig::default();
        assert_eq!(relay.format("m.text", "Ann", "@ann:x", "hi"), "Ann: hi");
        assert_eq!(relay.format("m.emote", "Ann", "@ann:x", "waves"), "* Ann waves");
        assert_eq!(relay.format("org.custom", "Ann", "@ann:x", "x"), "Ann: x");
        // Braces in the values are not placeholders.
        assert_eq!(
            relay.format("m.text", "{body}", "@a:x", "{sender_name}"),
            "{body}: {sender_name}"
        );
        let mut custom = RelayConfig::default();
        custom.message_formats.insert("m.text".into(), "<{sender_id}> {body} {unknown".into());
        assert_eq!(custom.format("m.text", "Ann", "@ann:x", "hi"), "<@ann:x> hi {unknown");
        // In HTML the template's brackets are text; the values are the caller's.
        assert_eq!(
            custom.format_html("m.text", "Ann", "@ann:x", "<b>hi</b>"),
            "&lt;@ann:x&gt; <b>hi</b> {unknown"
        );
    }
}
