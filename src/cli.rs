//! The command line every bridge gets: `run`, `generate-registration`, `example-config`,
//! `check-config`.
//!
//! A bridge's `main` is one line; [`about!`](crate::about) takes the name, version and
//! description that `--version` and `--help` show from the bridge's own `Cargo.toml`:
//!
//! ```no_run
//! # use mxbridge::{Bridge, BridgeResult, Context, Event};
//! # struct MyBridge;
//! # impl Bridge for MyBridge {
//! #     type Config = mxbridge::config::NoBridgeConfig;
//! #     const NAME: &'static str = "my-bridge";
//! #     async fn create(_: Self::Config, _: Context) -> BridgeResult<Self> { Ok(MyBridge) }
//! #     async fn handle_other(&self, _: &Event) -> BridgeResult { Ok(()) }
//! # }
//! fn main() -> std::process::ExitCode {
//!     mxbridge::cli::main::<MyBridge>(mxbridge::about!())
//! }
//! ```

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use ruma::api::{
    appservice::{Namespace, Namespaces},
    error::ErrorKind,
};

use crate::{
    Config,
    appservice::{AppService, check_registration_matches},
    bridge::Bridge,
    config::{LogFormat, LoggingConfig},
    registration::{Registration, RegistrationFile},
    secret::Secret,
    store::Store,
};

/// What `--version` and `--help` say about the bridge: its own name, version and description,
/// not the framework's. [`about!`](crate::about) takes them from the bridge crate's
/// `Cargo.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct About {
    /// The program's name.
    pub name: &'static str,
    /// Its version.
    pub version: &'static str,
    /// One line on what it is; empty for none.
    pub description: &'static str,
}

impl About {
    /// Another description (an example, say, shares its crate's).
    #[must_use]
    pub const fn with_description(mut self, description: &'static str) -> Self {
        self.description = description;
        self
    }
}

/// The [`About`](crate::cli::About) of the crate this is written in: its binary's name (the
/// package's outside a binary), and the package's version and description, read when the bridge
/// is compiled.
#[macro_export]
macro_rules! about {
    () => {
        $crate::cli::About {
            name: match ::std::option_env!("CARGO_BIN_NAME") {
                ::std::option::Option::Some(name) => name,
                ::std::option::Option::None => ::std::env!("CARGO_PKG_NAME"),
            },
            version: ::std::env!("CARGO_PKG_VERSION"),
            description: ::std::env!("CARGO_PKG_DESCRIPTION"),
        }
    };
}

/// Command-line arguments. [`Cli::command_for`] names the bridge in them.
#[derive(Debug, Parser)]
pub struct Cli {
    /// The configuration file.
    #[arg(short, long, default_value = "config.yaml", env = "MXBRIDGE_CONFIG", global = true)]
    pub config: PathBuf,
    /// The registration file (default: the config's `appservice.registration`).
    #[arg(short, long, env = "MXBRIDGE_REGISTRATION", global = true)]
    pub registration: Option<PathBuf>,
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the bridge.
    Run,
    /// Writes the registration file for the homeserver from the config. Keeps the tokens of an
    /// existing file unless --new-tokens is given.
    GenerateRegistration {
        /// Makes fresh tokens even if the file exists.
        #[arg(long)]
        new_tokens: bool,
        /// Also writes `doublepuppet.yaml` beside it: a second registration that lets the
        /// bridge act as any user of the homeserver (double puppeting), and prints the
        /// `double_puppet.secrets` line for the config.
        #[arg(long)]
        double_puppet: bool,
    },
    /// Prints an example configuration with every key explained.
    ExampleConfig,
    /// Checks the config, the registration and the database, then exits.
    CheckConfig,
}

/// Exit code for a bad config, registration or command line.
const EXIT_CONFIG: u8 = 2;
/// Exit code for a failure while running (database, listener, bridge).
const EXIT_RUNTIME: u8 = 1;

impl Cli {
    /// The command line's definition, naming the bridge as `about` says.
    pub fn command_for(about: About) -> clap::Command {
        let description = if about.description.trim().is_empty() {
            format!("{}: a Matrix bridge", about.name)
        } else {
            about.description.to_owned()
        };
        Self::command().name(about.name).version(about.version).about(description)
    }

    /// Parses `args` (the program's name first), naming the bridge as `about` says.
    ///
    /// # Errors
    /// On a bad command line, and for `--help` and `--version` (whose text the error holds).
    pub fn try_parse_for<I, T>(about: About, args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut command = Self::command_for(about);
        let matches = command.try_get_matches_from_mut(args)?;
        Self::from_arg_matches(&matches).map_err(|e| e.format(&mut command))
    }
}

/// Parses the command line and runs the command for bridge `B`; `--version` and `--help` show
/// the bridge as `about` says (pass [`about!()`](crate::about)).
pub fn main<B: Bridge>(about: About) -> ExitCode {
    let cli = match Cli::try_parse_for(about, std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with success, errors to stderr with exit code 2.
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(EXIT_CONFIG) } else { ExitCode::SUCCESS };
        }
    };
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(run_cli::<B>(cli)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Runs a parsed command line for bridge `B`.
pub async fn run_cli<B: Bridge>(cli: Cli) -> ExitCode {
    match cli.command.as_ref().unwrap_or(&Command::Run) {
        Command::ExampleConfig => {
            print!("{}", example_config::<B>());
            ExitCode::SUCCESS
        }
        Command::GenerateRegistration { new_tokens, double_puppet } => {
            let config = match load_config::<B>(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let path = registration_path(&cli, &config);
            match generate_registration(&config, &path, *new_tokens) {
                Ok(reg) => {
                    println!(
                        "wrote {} (id {}, users {}); add it to the homeserver's \
                         app_service_config_files and restart the homeserver",
                        path.display(),
                        reg.id(),
                        reg.file()
                            .namespaces
                            .users
                            .iter()
                            .map(|n| n.regex.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    if !*double_puppet {
                        return ExitCode::SUCCESS;
                    }
                    let path = path.with_file_name("doublepuppet.yaml");
                    match generate_double_puppet_registration(&config, &path, *new_tokens) {
                        Ok(reg) => {
                            println!(
                                "wrote {}; add it to app_service_config_files too, and to the \
                                 config:\ndouble_puppet:\n  secrets:\n    {}: \"as_token:{}\"",
                                path.display(),
                                config.homeserver.domain,
                                reg.as_token().expose()
                            );
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            eprintln!("error: {e}");
                            ExitCode::from(EXIT_CONFIG)
                        }
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        Command::CheckConfig => {
            let (config, registration) = match load_both::<B>(&cli) {
                Ok(v) => v,
                Err(code) => return code,
            };
            if let Err(e) = Store::connect(&config.database).await.map(drop) {
                eprintln!("error: database {}: {e}", redact_url(&config.database.url));
                return ExitCode::from(EXIT_RUNTIME);
            }
            match check_homeserver(&config, &registration).await {
                Ok(versions) => {
                    println!(
                        "config ok: appservice {} as {}, database {} reachable, homeserver {} \
                         answers ({versions}) and accepts our as_token",
                        registration.id(),
                        config.bot_user_id(),
                        redact_url(&config.database.url),
                        config.homeserver.address,
                    );
                    ExitCode::SUCCESS
                }
                Err(message) => {
                    eprintln!("error: {message}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        Command::Run => {
            let (config, registration) = match load_both::<B>(&cli) {
                Ok(v) => v,
                Err(code) => return code,
            };
            init_tracing(&config.logging);
            let service = match AppService::<B>::new(config, registration).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start");
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_RUNTIME);
                }
            };
            match service.run_configured(shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "bridge failed");
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
    }
}

/// Checks that the homeserver answers and knows our registration (whoami with the as_token
/// must name the bot). Returns the newest spec version it supports.
async fn check_homeserver<T>(
    config: &Config<T>,
    registration: &Registration,
) -> Result<String, String> {
    let hs = &config.homeserver.address;
    let client = crate::client::Client::with_retry_policy(
        hs.clone(),
        &config.homeserver.domain,
        registration.clone(),
        crate::client::RetryPolicy::none(),
    )
    .map_err(|e| e.to_string())?;
    let versions = client
        .versions()
        .await
        .map_err(|e| format!("homeserver {hs} does not answer /_matrix/client/versions: {e}"))?;
    let newest = versions.versions.last().cloned().unwrap_or_default();
    match client.whoami().await {
        Ok(me) if me.user_id == config.bot_user_id() => Ok(newest),
        Ok(me) => Err(format!(
            "homeserver {hs} says our as_token belongs to {}, not {}",
            me.user_id,
            config.bot_user_id()
        )),
        Err(e) if matches!(e.kind(), Some(ErrorKind::UnknownToken(_))) => Err(format!(
            "homeserver {hs} does not know our as_token: add {} to its app_service_config_files \
             and restart it",
            config.appservice.registration
        )),
        Err(e) => Err(format!("homeserver {hs} refused whoami: {e}")),
    }
}

fn load_config<B: Bridge>(path: &Path) -> Result<Config<B::Config>, ExitCode> {
    let mut config = Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        if !path.exists() {
            eprintln!("hint: write one with `example-config > {}` and edit it", path.display());
        }
        ExitCode::from(EXIT_CONFIG)
    })?;
    match config.apply_overrides(|var| std::env::var(var).ok()) {
        Ok(applied) if !applied.is_empty() => {
            eprintln!("config: set from the environment: {}", applied.join(", "));
        }
        Ok(_) => {}
        Err(e) => {
            eprintln!("error: {e}");
            return Err(ExitCode::from(EXIT_CONFIG));
        }
    }
    Ok(config)
}

fn registration_path<T>(cli: &Cli, config: &Config<T>) -> PathBuf {
    cli.registration.clone().unwrap_or_else(|| PathBuf::from(&config.appservice.registration))
}

fn load_both<B: Bridge>(cli: &Cli) -> Result<(Config<B::Config>, Registration), ExitCode> {
    let config = load_config::<B>(&cli.config)?;
    let path = registration_path(cli, &config);
    let registration = Registration::load(&path).map_err(|e| {
        eprintln!("error: {e}");
        if !path.exists() {
            eprintln!("hint: create it with `generate-registration`");
        }
        ExitCode::from(EXIT_CONFIG)
    })?;
    check_registration_matches(&config, &registration).map_err(|e| {
        eprintln!("error: {}: {e}", path.display());
        ExitCode::from(EXIT_CONFIG)
    })?;
    Ok((config, registration))
}

/// Builds the registration the config describes and writes it to `path` (mode 0600).
///
/// Tokens of an existing registration at `path` are kept unless `new_tokens` is set, so the
/// homeserver and the bridge keep agreeing.
///
/// # Errors
/// When the existing file cannot be read or the new one cannot be written.
pub fn generate_registration<T>(
    config: &Config<T>,
    path: &Path,
    new_tokens: bool,
) -> Result<Registration, crate::registration::RegistrationError> {
    let existing =
        if !new_tokens && path.exists() { Some(Registration::load(path)?) } else { None };
    let (as_token, hs_token) = match &existing {
        Some(r) => (r.as_token().clone(), r.hs_token().clone()),
        None => (Secret::generate(64), Secret::generate(64)),
    };
    let crypto = config.encryption.allow;
    let domain = regex::escape(config.homeserver.domain.as_str());
    let prefix = regex::escape(config.ghost_prefix());
    let mut users = vec![Namespace::new(true, config.user_namespace_regex())];
    if !config.appservice.bot.localpart.starts_with(config.ghost_prefix()) {
        let bot = regex::escape(&config.appservice.bot.localpart);
        users.push(Namespace::new(true, format!("@{bot}:{domain}")));
    }
    let mut namespaces = Namespaces::new();
    namespaces.users = users;
    namespaces.aliases = vec![Namespace::new(true, format!("#{prefix}.*:{domain}"))];
    let file = RegistrationFile {
        id: config.appservice.id.clone(),
        url: Some(config.appservice.address.to_string().trim_end_matches('/').to_owned()),
        as_token,
        hs_token,
        sender_localpart: config.appservice.bot.localpart.clone(),
        namespaces,
        rate_limited: Some(false),
        protocols: existing.as_ref().and_then(|r| r.file().protocols.clone()),
        // The bridge device needs to-device messages (pushed with the ephemeral events),
        // device lists and key counts, and to create its device.
        receive_ephemeral: config.appservice.ephemeral_events || crypto,
        push_ephemeral_unstable: config.appservice.ephemeral_events || crypto,
        msc3202: crypto || existing.as_ref().is_some_and(|r| r.file().msc3202),
        msc4190: crypto || existing.as_ref().is_some_and(|r| r.file().msc4190),
        ip_range_whitelist: existing.as_ref().and_then(|r| r.file().ip_range_whitelist.clone()),
    };
    let registration = Registration::new(file)?;
    registration.save(path)?;
    Ok(registration)
}

/// Builds the double-puppet registration and writes it to `path` (mode 0600): a user namespace
/// of every user of the homeserver, not exclusive, and `url: null`, so that the homeserver
/// pushes nothing to it. Its `as_token` goes in `double_puppet.secrets` as `as_token:TOKEN`.
/// The tokens of an existing file are kept unless `new_tokens` is set.
///
/// # Errors
/// When the existing file cannot be read or the new one cannot be written.
pub fn generate_double_puppet_registration<T>(
    config: &Config<T>,
    path: &Path,
    new_tokens: bool,
) -> Result<Registration, crate::registration::RegistrationError> {
    let existing =
        if !new_tokens && path.exists() { Some(Registration::load(path)?) } else { None };
    let (as_token, hs_token, sender) = match &existing {
        Some(r) => (r.as_token().clone(), r.hs_token().clone(), r.sender_localpart().to_owned()),
        None => (
            Secret::generate(64),
            Secret::generate(64),
            format!("doublepuppet_{}", Secret::generate(12).expose().to_ascii_lowercase()),
        ),
    };
    let domain = regex::escape(config.homeserver.domain.as_str());
    let mut namespaces = Namespaces::new();
    namespaces.users = vec![Namespace::new(false, format!("@.*:{domain}"))];
    let file = RegistrationFile {
        id: format!("{}-doublepuppet", config.appservice.id),
        url: None,
        as_token,
        hs_token,
        sender_localpart: sender,
        namespaces,
        rate_limited: Some(false),
        protocols: None,
        receive_ephemeral: false,
        push_ephemeral_unstable: false,
        msc3202: false,
        msc4190: false,
        ip_range_whitelist: None,
    };
    let registration = Registration::new(file)?;
    registration.save(path)?;
    Ok(registration)
}

/// The example configuration for bridge `B`, every key with a comment.
///
/// Its names come from `B::NAME` (`webhook`, say): the appservice ID `webhook`, the bot
/// `webhookbot` ("Webhook bridge bot"), ghosts `webhook_{id}` and the SQLite file `webhook.db`.
/// The bot lies outside the ghosts' namespace, so no remote user's ghost can be the bot.
pub fn example_config<B: Bridge>() -> String {
    let mut out = example_config_named(B::NAME);
    let bridge = B::example_config();
    if bridge.trim().is_empty() {
        out.push_str("bridge: {}\n");
    } else {
        out.push_str("bridge:\n");
        out.push_str(bridge);
        if !bridge.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// `example-config.yaml` with the names in it (`example`) derived from a bridge's name.
fn example_config_named(name: &str) -> String {
    let slug = name_for_ids(name);
    let mut chars = name.trim().chars();
    let display = match chars.next() {
        Some(first) => format!("{}{} bridge bot", first.to_uppercase(), chars.as_str()),
        None => "Bridge bot".to_owned(),
    };
    // A JSON string is a YAML double-quoted scalar: any name stays one value.
    let display = serde_json::to_string(&display).unwrap_or_default();
    let mut out = String::from(include_str!("example-config.yaml"));
    for (from, to) in [
        ("  id: example\n", format!("  id: {slug}\n")),
        ("    localpart: examplebot\n", format!("    localpart: {slug}bot\n")),
        ("    displayname: Example bridge bot\n", format!("    displayname: {display}\n")),
        (
            "  ghost_localpart_template: \"example_{id}\"\n",
            format!("  ghost_localpart_template: \"{slug}_{{id}}\"\n"),
        ),
        ("  url: sqlite://example.db\n", format!("  url: sqlite://{slug}.db\n")),
    ] {
        debug_assert!(out.contains(from), "example-config.yaml lost {from:?}");
        out = out.replacen(from, &to, 1);
    }
    out
}

/// A bridge's name as it can stand in IDs and a file name: lower case, `a-z 0-9 . _ -` (any
/// other character becomes `-`); `bridge` when nothing is left.
fn name_for_ids(name: &str) -> String {
    let mapped: String = name
        .trim()
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' })
        .collect();
    let trimmed = mapped.trim_matches(|c| "._-".contains(c));
    if trimmed.is_empty() { "bridge".to_owned() } else { trimmed.to_owned() }
}

/// Installs the global `tracing` subscriber: `RUST_LOG` if set, else the config's level.
pub fn init_tracing(config: &LoggingConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match config.format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
    // A subscriber installed already (by a test, say) is fine.
    drop(result);
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// A database URL with any password replaced, for messages.
fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABOUT: About = About {
        name: "mx-example",
        version: "4.5.6",
        description: "Bridges Example Chat to Matrix",
    };

    fn shown(about: About, flag: &str) -> String {
        let err = Cli::try_parse_for(about, ["whatever-the-binary-is-called", flag]).unwrap_err();
        assert!(!err.use_stderr(), "{flag} is not an error");
        err.render().to_string()
    }

    #[test]
    fn version_and_help_name_the_bridge_not_the_framework() {
        assert_eq!(shown(ABOUT, "-V"), "mx-example 4.5.6\n");
        assert_eq!(shown(ABOUT, "--version"), "mx-example 4.5.6\n");
        let help = shown(ABOUT, "--help");
        assert!(help.starts_with("Bridges Example Chat to Matrix\n"), "{help}");
        assert!(help.contains("example-config") && !help.contains("framework"), "{help}");
        let help = shown(ABOUT.with_description(""), "--help");
        assert!(help.starts_with("mx-example: a Matrix bridge\n"), "{help}");
    }

    #[test]
    fn about_reads_the_calling_crate() {
        let about = crate::about!();
        assert_eq!(about.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(about.name, option_env!("CARGO_BIN_NAME").unwrap_or(env!("CARGO_PKG_NAME")));
    }

    struct Webhook;

    impl Bridge for Webhook {
        type Config = crate::config::NoBridgeConfig;
        const NAME: &'static str = "webhook";
        async fn create(_: Self::Config, _: crate::Context) -> crate::BridgeResult<Self> {
            Ok(Self)
        }
    }

    #[test]
    fn example_config_is_named_after_the_bridge_with_the_bot_outside_the_ghosts() {
        let yaml = example_config::<Webhook>();
        let config = Config::<crate::config::NoBridgeConfig>::from_yaml(&yaml).unwrap();
        let appservice = &config.appservice;
        assert_eq!(appservice.id, "webhook");
        assert_eq!(config.bot_user_id().as_str(), "@webhookbot:localhost");
        assert_eq!(appservice.bot.displayname.as_deref(), Some("Webhook bridge bot"));
        assert_eq!(appservice.ghost_localpart_template, "webhook_{id}");
        assert_eq!(config.database.url, "sqlite://webhook.db");
        assert!(!config.appservice.bot.localpart.starts_with(config.ghost_prefix()));
        // No remote ID gives the bot: not "bot", not the bot's own localpart, not anything long.
        let server = config.homeserver.domain.as_str();
        let template = &appservice.ghost_localpart_template;
        for remote in ["bot", "webhookbot", "", "_bot", &"b".repeat(300)] {
            let ghost = crate::ghost::ghost_localpart(template, remote, server);
            assert!(ghost.starts_with("webhook_") && ghost != appservice.bot.localpart, "{ghost}");
        }
        // The registration claims the ghosts and the bot.
        let dir = tempfile::tempdir().unwrap();
        let reg = generate_registration(&config, &dir.path().join("r.yaml"), false).unwrap();
        let bot = config.bot_user_id();
        assert!(reg.is_exclusive_user(&bot) && reg.file().sender_localpart == "webhookbot");
        assert!(reg.is_exclusive_user(ruma::user_id!("@webhook_bot:localhost")));
    }

    /// With encryption allowed, the registration asks for what the bridge device needs (and
    /// the start refuses a registration without it); without, it asks for none of it.
    #[test]
    fn encryption_puts_the_device_keys_in_the_registration() {
        let dir = tempfile::tempdir().unwrap();
        let mut config =
            Config::<crate::config::NoBridgeConfig>::from_yaml(&example_config::<Webhook>())
                .unwrap();
        config.appservice.ephemeral_events = false;
        let path = dir.path().join("r.yaml");
        let plain = generate_registration(&config, &path, false).unwrap();
        let f = plain.file();
        assert!(!(f.msc4190 || f.msc3202 || f.receive_ephemeral || f.push_ephemeral_unstable));
        config.encryption.allow = true;
        assert!(crate::appservice::check_registration_matches(&config, &plain).is_err());
        let again = generate_registration(&config, &path, false).unwrap();
        let f = again.file();
        assert!(f.msc4190 && f.msc3202 && f.receive_ephemeral && f.push_ephemeral_unstable);
        assert_eq!(again.as_token().expose(), plain.as_token().expose());
        crate::appservice::check_registration_matches(&config, &again).unwrap();
        let yaml = std::fs::read_to_string(&path).unwrap();
        for key in ["io.element.msc4190: true", "org.matrix.msc3202: true", "push_ephemeral: true"]
        {
            assert!(yaml.contains(key), "{key} missing in {yaml}");
        }
    }

    #[test]
    fn odd_bridge_names_still_give_a_valid_config() {
        for (name, slug) in [("My Chat!", "my-chat"), ("IRC", "irc"), ("", "bridge"), ("ünï", "n")]
        {
            assert_eq!(name_for_ids(name), slug, "{name}");
            let yaml = example_config_named(name);
            let config = Config::<crate::config::NoBridgeConfig>::from_yaml(&format!(
                "{yaml}bridge: {{}}\n"
            ))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(config.appservice.id, slug);
        }
        let yaml = example_config_named("we: \"quote\"");
        assert!(yaml.contains(r#"displayname: "We: \"quote\" bridge bot""#), "{yaml}");
    }

    #[test]
    fn commands_still_parse() {
        let cli =
            Cli::try_parse_for(ABOUT, ["b", "-c", "x.yaml", "generate-registration"]).unwrap();
        assert_eq!(cli.config, PathBuf::from("x.yaml"));
        assert!(matches!(
            cli.command,
            Some(Command::GenerateRegistration { new_tokens: false, double_puppet: false })
        ));
        let err = Cli::try_parse_for(ABOUT, ["b", "frobnicate"]).unwrap_err();
        assert!(err.use_stderr());
    }
}
