//! The config sections of users and logins: `logins:`, `relay:` and `provisioning:`.

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

#[cfg(test)]
mod tests {
    use super::*;

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
