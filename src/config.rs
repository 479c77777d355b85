//! The bridge's configuration file.
//!
//! One YAML document with a section per concern: `homeserver`, `appservice`, `database`,
//! `inbox`, `logging`, and `bridge` — the bridge author's own typed settings. Unknown keys are an
//! error that names the key; so is every value that does not validate.

mod encryption;
mod logins;

pub use encryption::EncryptionConfig;
pub use logins::{
    DoublePuppetConfig, DoublePuppetSecret, LoginsConfig, ProvisioningConfig, RelayConfig,
};

use std::{collections::BTreeMap, fs, net::IpAddr, path::Path, time::Duration};

use ruma::{OwnedServerName, OwnedUserId, UserId};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use url::Url;

/// Errors from loading or validating a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed, has wrong types or unknown keys.
    #[error("{path}: {message}")]
    Yaml {
        /// The file.
        path: String,
        /// The key path, line and parser message.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// The offending key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The whole configuration; `T` is the bridge's own section (`bridge:`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config<T = NoBridgeConfig> {
    /// Where the homeserver is.
    pub homeserver: HomeserverConfig,
    /// How the appservice presents itself and listens.
    pub appservice: AppserviceConfig,
    /// The SQL store.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// How incoming events are processed.
    #[serde(default)]
    pub inbox: InboxConfig,
    /// Log output.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// How users talk to the bridge bot.
    #[serde(default)]
    pub commands: CommandsConfig,
    /// Prometheus metrics.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Who may use the bridge: full user IDs, server names or `*`, each with a level. Empty means
    /// users of the homeserver's own domain are `user`s and nobody else may use it.
    #[serde(default)]
    pub permissions: BTreeMap<String, PermissionLevel>,
    /// Users' logins to the remote network.
    #[serde(default)]
    pub logins: LoginsConfig,
    /// Relaying messages of users without a login.
    #[serde(default)]
    pub relay: RelayConfig,
    /// The provisioning API (off without a shared secret).
    #[serde(default)]
    pub provisioning: ProvisioningConfig,
    /// Acting as users' own Matrix accounts (double puppeting).
    #[serde(default)]
    pub double_puppet: DoublePuppetConfig,
    /// End-to-bridge encryption.
    #[serde(default)]
    pub encryption: EncryptionConfig,
    /// The bridge's own settings.
    #[serde(default)]
    pub bridge: T,
}

/// `commands:`: how commands to the bot are recognised.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandsConfig {
    /// The prefix of commands in rooms other than the management room (default `!` and the
    /// bridge's name, e.g. `!webhook`). In a DM with the bot no prefix is needed.
    #[serde(default)]
    pub prefix: Option<String>,
}

/// `metrics:`: Prometheus metrics.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Serve it on this address instead of the appservice port (e.g. `127.0.0.1:9100`).
    #[serde(default)]
    pub bind_address: Option<std::net::SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true, bind_address: None }
    }
}

/// What a user may do with the bridge, lowest first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PermissionLevel {
    /// Nothing: the bridge ignores the user's commands.
    #[default]
    None,
    /// May have messages relayed, and use relay-level commands.
    Relay,
    /// May use the bridge.
    User,
    /// May administer the bridge.
    Admin,
}

/// The settings of a bridge that has none of its own.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoBridgeConfig {}

/// `homeserver:`: where the homeserver's Client-Server API is.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeserverConfig {
    /// The Client-Server API base URL, for example `http://127.0.0.1:8008`.
    pub address: Url,
    /// The server name in user IDs (`localhost` in `@bot:localhost`).
    pub domain: OwnedServerName,
}

/// `appservice:`: the identity of the appservice and its HTTP listener.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppserviceConfig {
    /// The registration's `id`.
    pub id: String,
    /// The URL the homeserver uses to reach us (the registration's `url`).
    pub address: Url,
    /// The address to bind the listener to.
    #[serde(default = "default_bind")]
    pub bind_address: IpAddr,
    /// The port to listen on.
    pub port: u16,
    /// The path of the registration file (written by `generate-registration`).
    #[serde(default = "default_registration_path")]
    pub registration: String,
    /// The bot user.
    pub bot: BotConfig,
    /// Template of ghost localparts; `{id}` is replaced by the remote user's escaped ID.
    #[serde(default = "default_ghost_template")]
    pub ghost_localpart_template: String,
    /// Ask the homeserver to push typing, receipts and presence.
    #[serde(default = "yes")]
    pub ephemeral_events: bool,
    /// The largest request body accepted, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Requests that take longer than this (reading the body included) are cut off, in seconds.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
}

/// `appservice.bot:`: the bridge's own user.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotConfig {
    /// The bot's localpart (the registration's `sender_localpart`).
    pub localpart: String,
    /// The bot's display name, set at start when it differs.
    #[serde(default)]
    pub displayname: Option<String>,
    /// The bot's avatar (`mxc://` URI), set at start when it differs.
    #[serde(default)]
    pub avatar: Option<String>,
}

/// `database:`: the SQL store.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path/to/file.db` (created on first run) or `postgres://user@host/db`. A
    /// loopback PostgreSQL host with no `sslmode` in the URL (nor `PGSSLMODE`) is reached without
    /// TLS; see docs/deploy.md.
    pub url: String,
    /// The most connections in the pool. On SQLite, writes always share one connection (it has
    /// one writer at a time, and a second would only wait for the first one's lock); this
    /// many more serve reads.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// SQLite only: `normal` (WAL; a committed transaction survives a process crash, the
    /// default) or `full` (also survives power loss, slower).
    #[serde(default)]
    pub sqlite_synchronous: SqliteSynchronous,
    /// SQLite only: the page cache of the writing connection, in MiB (SQLite's own default is
    /// ~2 MiB), from 1 to 65536. It fills as pages are used and then stays full, so memory grows
    /// by up to this much under load. The intake looks up every incoming event ID in the dedup
    /// index, and real event IDs are hashes that land anywhere in it; while that index fits in
    /// this cache, the intake does not read it back from the file.
    #[serde(default = "default_sqlite_cache_mib")]
    pub sqlite_cache_mib: u32,
}

/// How hard SQLite syncs to disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    /// `PRAGMA synchronous = NORMAL` with WAL.
    #[default]
    Normal,
    /// `PRAGMA synchronous = FULL`.
    Full,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://mxbridge.db".into(),
            max_connections: default_max_connections(),
            sqlite_synchronous: SqliteSynchronous::default(),
            sqlite_cache_mib: default_sqlite_cache_mib(),
        }
    }
}

/// `inbox:`: how stored events are handed to the bridge.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxConfig {
    /// How many rooms are processed at the same time (events of one room are always in order).
    /// A room whose handled events wait for their records' commit does not count.
    #[serde(default = "default_room_concurrency")]
    pub room_concurrency: usize,
    /// The at-least-once window: how many of a room's events may be handled before their
    /// records must have committed. After a crash, at most this many of each room's last
    /// handled events are handed to the bridge again; 1 is the smallest window, larger ones
    /// let a busy room's events share a commit instead of waiting for one each.
    #[serde(default = "default_record_window")]
    pub record_window: usize,
    /// How many times a failing handler is tried before the event is parked.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The first retry delay in milliseconds; it doubles on every attempt.
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
    /// The longest retry delay in milliseconds.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// How long handled events and seen transactions are remembered for deduplication, in hours.
    #[serde(default = "default_dedup_hours")]
    pub dedup_retention_hours: u64,
    /// On shutdown, how long running handlers get to finish, in seconds.
    #[serde(default = "default_shutdown_secs")]
    pub shutdown_grace_secs: u64,
    /// When an event fails for good, the bot posts a notice in its room saying so.
    #[serde(default = "yes")]
    pub failure_notices: bool,
}

impl Default for InboxConfig {
    fn default() -> Self {
        Self {
            room_concurrency: default_room_concurrency(),
            record_window: default_record_window(),
            max_attempts: default_max_attempts(),
            retry_base_ms: default_retry_base_ms(),
            retry_max_ms: default_retry_max_ms(),
            dedup_retention_hours: default_dedup_hours(),
            shutdown_grace_secs: default_shutdown_secs(),
            failure_notices: true,
        }
    }
}

impl InboxConfig {
    /// The retry delay after `attempt` failures (1-based), doubling up to the maximum.
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        let factor = 1u64 << attempt.saturating_sub(1).min(20);
        Duration::from_millis(self.retry_base_ms.saturating_mul(factor).min(self.retry_max_ms))
    }
}

/// `logging:`: log level and format.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// A `tracing` filter such as `info` or `info,mxbridge=debug`; `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `pretty` for people, `json` for log collectors.
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self { level: default_log_level(), format: LogFormat::default() }
    }
}

/// The log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

fn yes() -> bool {
    true
}
fn default_bind() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}
fn default_registration_path() -> String {
    "registration.yaml".into()
}
fn default_ghost_template() -> String {
    "_bridge_{id}".into()
}
fn default_max_body() -> usize {
    16 * 1024 * 1024
}
fn default_request_timeout() -> u64 {
    30
}
fn default_max_connections() -> u32 {
    8
}
fn default_room_concurrency() -> usize {
    32
}
/// The values `database.sqlite_cache_mib` may take (SQLite reads `cache_size` as 32 bits).
pub(crate) const SQLITE_CACHE_MIB: std::ops::RangeInclusive<u32> = 1..=65_536;
fn default_sqlite_cache_mib() -> u32 {
    16
}
fn default_record_window() -> usize {
    8
}
fn default_max_attempts() -> u32 {
    5
}
fn default_retry_base_ms() -> u64 {
    500
}
fn default_retry_max_ms() -> u64 {
    30_000
}
fn default_dedup_hours() -> u64 {
    72
}
fn default_shutdown_secs() -> u64 {
    10
}
fn default_log_level() -> String {
    "info".into()
}

impl<T: DeserializeOwned + Default> Config<T> {
    /// Reads, parses and validates a configuration file.
    ///
    /// # Errors
    /// When the file is missing or unreadable, is not valid YAML, has an unknown key or a bad
    /// value.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = fs::read_to_string(path)
            .map_err(|source| ConfigError::Io { path: path.display().to_string(), source })?;
        Self::from_yaml(&text).map_err(|e| match e {
            ConfigError::Yaml { message, .. } => {
                ConfigError::Yaml { path: path.display().to_string(), message }
            }
            other => other,
        })
    }

    /// Parses and validates configuration YAML.
    ///
    /// # Errors
    /// As [`Config::load`], without the I/O.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = crate::util::from_yaml(text)
            .map_err(|e| ConfigError::Yaml { path: "<config>".into(), message: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }
}

/// The environment variables that override config keys (secrets and deploy settings), with
/// the key each one sets.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("MXBRIDGE_HOMESERVER_ADDRESS", "homeserver.address"),
    ("MXBRIDGE_HOMESERVER_DOMAIN", "homeserver.domain"),
    ("MXBRIDGE_APPSERVICE_ADDRESS", "appservice.address"),
    ("MXBRIDGE_APPSERVICE_BIND_ADDRESS", "appservice.bind_address"),
    ("MXBRIDGE_APPSERVICE_PORT", "appservice.port"),
    ("MXBRIDGE_DATABASE_URL", "database.url"),
    ("MXBRIDGE_LOGGING_LEVEL", "logging.level"),
    ("MXBRIDGE_LOGGING_FORMAT", "logging.format"),
    ("MXBRIDGE_METRICS_BIND_ADDRESS", "metrics.bind_address"),
];

impl<T> Config<T> {
    /// Applies the [`ENV_OVERRIDES`] that `lookup` finds (the CLI passes the process
    /// environment) and validates again; returns the keys that were overridden.
    ///
    /// # Errors
    /// Names the variable and the key when a value does not parse or validate.
    pub fn apply_overrides(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<&'static str>, ConfigError> {
        fn parse<V: std::str::FromStr>(var: &str, key: &str, value: &str) -> Result<V, ConfigError>
        where
            V::Err: std::fmt::Display,
        {
            value.parse().map_err(|e: V::Err| ConfigError::Invalid {
                key: key.into(),
                message: format!("from {var}: {e}"),
            })
        }
        let mut applied = Vec::new();
        for &(var, key) in ENV_OVERRIDES {
            let Some(value) = lookup(var).filter(|v| !v.is_empty()) else { continue };
            match key {
                "homeserver.address" => self.homeserver.address = parse(var, key, &value)?,
                "homeserver.domain" => {
                    self.homeserver.domain = ruma::OwnedServerName::try_from(value.as_str())
                        .map_err(|e| ConfigError::Invalid {
                            key: key.into(),
                            message: format!("from {var}: {e}"),
                        })?;
                }
                "appservice.address" => self.appservice.address = parse(var, key, &value)?,
                "appservice.bind_address" => {
                    self.appservice.bind_address = parse(var, key, &value)?
                }
                "appservice.port" => self.appservice.port = parse(var, key, &value)?,
                "database.url" => self.database.url = value,
                "logging.level" => self.logging.level = value,
                "logging.format" => {
                    self.logging.format = match value.as_str() {
                        "pretty" => LogFormat::Pretty,
                        "json" => LogFormat::Json,
                        other => {
                            return Err(ConfigError::Invalid {
                                key: key.into(),
                                message: format!(
                                    "from {var}: {other:?} is neither pretty nor json"
                                ),
                            });
                        }
                    }
                }
                "metrics.bind_address" => {
                    self.metrics.bind_address = Some(parse(var, key, &value)?)
                }
                _ => unreachable!("every ENV_OVERRIDES key has an arm"),
            }
            applied.push(key);
        }
        self.validate()?;
        Ok(applied)
    }

    /// Checks the values that parse but can still be wrong.
    ///
    /// # Errors
    /// Names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid =
            |key: &str, message: String| Err(ConfigError::Invalid { key: key.into(), message });
        for (key, url) in [
            ("homeserver.address", &self.homeserver.address),
            ("appservice.address", &self.appservice.address),
        ] {
            if !matches!(url.scheme(), "http" | "https") {
                return invalid(key, format!("must be an http or https URL, not {url}"));
            }
        }
        if self.appservice.id.trim().is_empty() {
            return invalid("appservice.id", "must not be empty".into());
        }
        if let Err(e) = UserId::parse_with_server_name(
            self.appservice.bot.localpart.as_str(),
            &self.homeserver.domain,
        )
        .map_err(|e| e.to_string())
        .and_then(|u| u.validate_strict().map(|()| u).map_err(|e| e.to_string()))
        {
            return invalid("appservice.bot.localpart", format!("not a valid localpart: {e}"));
        }
        let template = &self.appservice.ghost_localpart_template;
        if !template.contains("{id}") {
            return invalid(
                "appservice.ghost_localpart_template",
                "must contain the placeholder {id}".into(),
            );
        }
        let prefix = template.split("{id}").next().unwrap_or_default();
        if prefix.is_empty() {
            return invalid(
                "appservice.ghost_localpart_template",
                "must start with a fixed prefix before {id} (the exclusive namespace)".into(),
            );
        }
        if !(self.database.url.starts_with("sqlite:")
            || self.database.url.starts_with("postgres://")
            || self.database.url.starts_with("postgresql://"))
        {
            return invalid(
                "database.url",
                "must start with sqlite:, postgres:// or postgresql://".into(),
            );
        }
        if self.database.max_connections == 0 {
            return invalid("database.max_connections", "must be at least 1".into());
        }
        if !SQLITE_CACHE_MIB.contains(&self.database.sqlite_cache_mib) {
            return invalid("database.sqlite_cache_mib", "must be from 1 to 65536".into());
        }
        if self.inbox.room_concurrency == 0 {
            return invalid("inbox.room_concurrency", "must be at least 1".into());
        }
        if self.inbox.record_window == 0 {
            return invalid("inbox.record_window", "must be at least 1".into());
        }
        if self.inbox.max_attempts == 0 {
            return invalid("inbox.max_attempts", "must be at least 1".into());
        }
        if self.appservice.max_body_bytes < 1024 {
            return invalid("appservice.max_body_bytes", "must be at least 1024".into());
        }
        self.encryption.validate()?;
        if self.logins.max_per_user == 0 {
            return invalid("logins.max_per_user", "must be at least 1".into());
        }
        if let Err(e) = self.logging.level.parse::<tracing_subscriber::EnvFilter>() {
            return invalid("logging.level", e.to_string());
        }
        Ok(())
    }

    /// The bot's user ID.
    pub fn bot_user_id(&self) -> OwnedUserId {
        UserId::parse_with_server_name(
            self.appservice.bot.localpart.as_str(),
            &self.homeserver.domain,
        )
        .expect("validated in Config::validate")
    }

    /// The permission level of a user: the entry for the full user ID, else for the user's
    /// server, else `*`; with no entries at all, `user` for the homeserver's own domain.
    pub fn permission_level(&self, user_id: &UserId) -> PermissionLevel {
        if self.permissions.is_empty() {
            return if user_id.server_name() == self.homeserver.domain {
                PermissionLevel::User
            } else {
                PermissionLevel::None
            };
        }
        self.permissions
            .get(user_id.as_str())
            .or_else(|| self.permissions.get(user_id.server_name().as_str()))
            .or_else(|| self.permissions.get("*"))
            .copied()
            .unwrap_or_default()
    }

    /// The fixed prefix of every ghost localpart (`_bridge_` for `_bridge_{id}`).
    pub fn ghost_prefix(&self) -> &str {
        self.appservice.ghost_localpart_template.split("{id}").next().unwrap_or_default()
    }

    /// The regex of the exclusive user namespace of the ghosts (and of the bot, when its
    /// localpart starts with the ghosts' prefix; else the registration claims it on its own).
    pub fn user_namespace_regex(&self) -> String {
        format!(
            "@{}.*:{}",
            regex::escape(self.ghost_prefix()),
            regex::escape(self.homeserver.domain.as_str())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("example-config.yaml");

    fn example() -> String {
        format!("{EXAMPLE}bridge: {{}}\n")
    }

    #[test]
    fn example_config_loads_with_its_defaults() {
        let c = Config::<NoBridgeConfig>::from_yaml(&example()).unwrap();
        assert_eq!(c.appservice.port, 29330);
        assert_eq!(c.database.sqlite_cache_mib, DatabaseConfig::default().sqlite_cache_mib);
        assert_eq!(c.bot_user_id().as_str(), "@examplebot:localhost");
        assert_eq!(c.user_namespace_regex(), "@example_.*:localhost");
        assert_eq!(c.inbox.retry_delay(1), Duration::from_millis(500));
        assert_eq!(c.inbox.retry_delay(3), Duration::from_millis(2000));
        assert_eq!(c.inbox.retry_delay(30), Duration::from_millis(30_000));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let unknown = example().replace("  port: 29330", "  port: 29330\n  prot: 1");
        let err = Config::<NoBridgeConfig>::from_yaml(&unknown).unwrap_err().to_string();
        assert!(err.contains("appservice") && err.contains("prot"), "{err}");
        let wrong_type = example().replace("port: 29330", "port: many");
        let err = Config::<NoBridgeConfig>::from_yaml(&wrong_type).unwrap_err().to_string();
        assert!(err.contains("appservice.port"), "{err}");
        let bad_db = example().replace("sqlite://example.db", "mysql://x");
        let err = Config::<NoBridgeConfig>::from_yaml(&bad_db).unwrap_err().to_string();
        assert!(err.contains("database.url"), "{err}");
        for cache in ["0", "65537"] {
            let bad_cache =
                example().replace("sqlite_cache_mib: 16", &format!("sqlite_cache_mib: {cache}"));
            let err = Config::<NoBridgeConfig>::from_yaml(&bad_cache).unwrap_err().to_string();
            assert!(err.contains("database.sqlite_cache_mib"), "{err}");
        }
        let bad_template = example().replace("\"example_{id}\"", "\"{id}\"");
        let err = Config::<NoBridgeConfig>::from_yaml(&bad_template).unwrap_err().to_string();
        assert!(err.contains("ghost_localpart_template"), "{err}");
        let bad_yaml = "homeserver: [\n";
        assert!(
            Config::<NoBridgeConfig>::from_yaml(bad_yaml).unwrap_err().to_string().contains("line")
        );
    }

    #[test]
    fn permission_levels_pick_user_then_server_then_star() {
        let base = example();
        let c = Config::<NoBridgeConfig>::from_yaml(&base).unwrap();
        let level = |c: &Config<NoBridgeConfig>, u: &str| {
            c.permission_level(&ruma::UserId::parse(u).unwrap())
        };
        assert_eq!(level(&c, "@admin:localhost"), PermissionLevel::Admin);
        assert_eq!(level(&c, "@bob:localhost"), PermissionLevel::User);
        assert_eq!(level(&c, "@eve:elsewhere"), PermissionLevel::None);
        let star = base.replace("\"localhost\": user", "\"*\": relay");
        let c = Config::<NoBridgeConfig>::from_yaml(&star).unwrap();
        assert_eq!(level(&c, "@eve:elsewhere"), PermissionLevel::Relay);
        let empty = base
            .replace("  \"localhost\": user\n  \"@admin:localhost\": admin\n", "")
            .replace("permissions:\n", "permissions: {}\n");
        let c = Config::<NoBridgeConfig>::from_yaml(&empty).unwrap();
        assert_eq!(level(&c, "@bob:localhost"), PermissionLevel::User, "own domain by default");
        assert_eq!(level(&c, "@eve:elsewhere"), PermissionLevel::None);
    }

    #[test]
    fn environment_overrides_set_keys_and_name_bad_values() {
        let mut c = Config::<NoBridgeConfig>::from_yaml(&example()).unwrap();
        let env = |k: &str| match k {
            "MXBRIDGE_DATABASE_URL" => Some("postgres://db/bridge".to_owned()),
            "MXBRIDGE_APPSERVICE_PORT" => Some("8080".to_owned()),
            "MXBRIDGE_LOGGING_FORMAT" => Some("json".to_owned()),
            _ => None,
        };
        let applied = c.apply_overrides(env).unwrap();
        assert_eq!(applied, ["appservice.port", "database.url", "logging.format"]);
        assert_eq!((c.database.url.as_str(), c.appservice.port), ("postgres://db/bridge", 8080));
        assert_eq!(c.logging.format, LogFormat::Json);
        let bad = |k: &str| (k == "MXBRIDGE_APPSERVICE_PORT").then(|| "eighty".to_owned());
        let err = c.apply_overrides(bad).unwrap_err().to_string();
        assert!(
            err.contains("appservice.port") && err.contains("MXBRIDGE_APPSERVICE_PORT"),
            "{err}"
        );
        let bad_db = |k: &str| (k == "MXBRIDGE_DATABASE_URL").then(|| "mysql://x".to_owned());
        assert!(c.apply_overrides(bad_db).unwrap_err().to_string().contains("database.url"));
    }
}
