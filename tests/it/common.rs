//! Shared helpers: stores on both backends, a recording bridge, a running appservice.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use mxbridge::{
    AppService, Bridge, BridgeError, BridgeResult, Config, Context, Delivery, Event,
    MatrixMembership, MatrixMessage, MatrixRoomMessage, Registration, Store,
    config::DatabaseConfig,
};
use serde::{Deserialize, Serialize};

pub const HS_TOKEN: &str = "hs_token_for_tests_0123456789";
pub const AS_TOKEN: &str = "as_token_for_tests_0123456789";

/// The env var naming the PostgreSQL server for the PostgreSQL suites.
pub const PG_ENV: &str = "MXBRIDGE_TEST_POSTGRES";

/// The PostgreSQL URL when the PostgreSQL suites are asked for.
pub fn postgres_url() -> Option<String> {
    std::env::var(PG_ENV).ok().filter(|s| !s.is_empty())
}

/// A database config for a fresh, empty database: an SQLite file in `dir`, or a new schema in
/// PostgreSQL.
pub async fn fresh_database(backend: &str, dir: &std::path::Path) -> DatabaseConfig {
    let url = match backend {
        "sqlite" => format!("sqlite://{}/store.db", dir.display()),
        "postgres" => {
            let base = postgres_url().expect("postgres suite without MXBRIDGE_TEST_POSTGRES");
            let schema = format!("t_{}", mxbridge::Secret::generate(12).expose().to_lowercase());
            let admin = sqlx::PgPool::connect(&base).await.expect("PostgreSQL is reachable");
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                .execute(&admin)
                .await
                .unwrap();
            admin.close().await;
            let sep = if base.contains('?') { '&' } else { '?' };
            format!("{base}{sep}options[search_path]={schema}")
        }
        other => panic!("unknown backend {other}"),
    };
    DatabaseConfig { url, ..DatabaseConfig::default() }
}

pub async fn fresh_store(backend: &str, dir: &std::path::Path) -> Store {
    Store::connect(&fresh_database(backend, dir).await).await.unwrap()
}

/// Settings of the recording bridge.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct RecorderConfig {
    /// Fail these event IDs this many times before succeeding.
    #[serde(default)]
    pub fail_times: BTreeMap<String, u32>,
    /// Fail these event IDs permanently.
    #[serde(default)]
    pub permanent_failures: Vec<String>,
    /// Panic on these event IDs, this many times.
    #[serde(default)]
    pub panic_times: BTreeMap<String, u32>,
    /// Append each handled event ID to this file (survives a crash of the process).
    #[serde(default)]
    pub record_file: Option<String>,
    /// Wait this long in the handler before recording.
    #[serde(default)]
    pub delay_ms: u64,
    /// Hold every handler call until this file exists.
    #[serde(default)]
    pub hold_file: Option<String>,
    /// Messages in portals: these event IDs were delivered as these remote message IDs.
    #[serde(default)]
    pub sent_as: BTreeMap<String, Vec<String>>,
    /// Messages in portals: these event IDs were delivered with this transaction ID.
    #[serde(default)]
    pub pending_as: BTreeMap<String, String>,
    /// Offer one command, `ping` (answers `pong`), so messages to the bot are commands.
    #[serde(default)]
    pub commands: bool,
}

/// A bridge that records what it handled.
#[derive(Debug)]
pub struct Recorder {
    pub config: RecorderConfig,
    pub ctx: Context,
    /// (room ID, event ID) in handling order.
    pub handled: Mutex<Vec<(String, String)>>,
    /// Handler calls running now, and the most that ever ran at once.
    pub running: std::sync::atomic::AtomicUsize,
    pub most_running: std::sync::atomic::AtomicUsize,
    /// Handler calls per event ID, failures included.
    pub calls: Mutex<BTreeMap<String, u32>>,
}

impl Recorder {
    pub fn handled_ids(&self) -> Vec<String> {
        self.handled.lock().unwrap().iter().map(|(_, e)| e.clone()).collect()
    }
}

impl Bridge for Recorder {
    type Config = RecorderConfig;
    const NAME: &'static str = "recorder";

    async fn create(config: RecorderConfig, ctx: Context) -> BridgeResult<Self> {
        Ok(Self {
            config,
            ctx,
            handled: Mutex::default(),
            calls: Mutex::default(),
            running: Default::default(),
            most_running: Default::default(),
        })
    }

    async fn handle_other(&self, event: &Event) -> BridgeResult {
        self.observe(event).await
    }

    async fn handle_room_message(&self, message: &MatrixRoomMessage) -> BridgeResult {
        self.observe(&message.event).await
    }

    async fn handle_membership(&self, membership: &MatrixMembership) -> BridgeResult {
        self.observe(&membership.event).await
    }

    async fn handle_message(&self, message: &MatrixMessage) -> BridgeResult<Delivery> {
        self.observe(&message.event).await?;
        let id = message.event.event_id.as_str();
        Ok(if let Some(ids) = self.config.sent_as.get(id) {
            Delivery::Sent(ids.iter().map(|i| i.as_str().into()).collect())
        } else if let Some(txn) = self.config.pending_as.get(id) {
            Delivery::Pending(txn.as_str().into())
        } else {
            Delivery::Done
        })
    }

    fn commands(&self) -> Vec<mxbridge::CommandSpec> {
        if self.config.commands {
            vec![mxbridge::CommandSpec::new("ping", "", "answers pong")]
        } else {
            Vec::new()
        }
    }

    async fn handle_command(&self, call: &mxbridge::CommandCall) -> BridgeResult<String> {
        Ok(format!("pong to {}", call.event.sender))
    }

    /// `POST /remote/{chat}` with a remote event queues it for the chat's portal and answers
    /// once it is committed, as a remote network's listener would acknowledge it.
    fn routes(self: &Arc<Self>) -> axum::Router {
        use axum::{
            Json,
            extract::{Path, State},
            http::StatusCode,
        };
        async fn queue(
            State(bridge): State<Arc<Recorder>>,
            Path(chat): Path<String>,
            Json(event): Json<mxbridge::RemoteEvent>,
        ) -> (StatusCode, String) {
            let portal = mxbridge::PortalKey::shared(chat);
            match bridge.ctx.queue_remote(&portal, &event).await {
                Ok(queued) => (StatusCode::OK, queued.seq().to_string()),
                Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            }
        }
        axum::Router::new()
            .route("/remote/{chat}", axum::routing::post(queue))
            .with_state(self.clone())
    }
}

impl Recorder {
    /// Every handler: counts the calls running at once, then records.
    async fn observe(&self, event: &Event) -> BridgeResult {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.running.fetch_add(1, SeqCst) + 1;
        self.most_running.fetch_max(now, SeqCst);
        let result = self.record(event).await;
        self.running.fetch_sub(1, SeqCst);
        result
    }

    async fn record(&self, event: &Event) -> BridgeResult {
        let id = event.event_id.to_string();
        let calls = {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.entry(id.clone()).or_default();
            *n += 1;
            *n
        };
        if let Some(path) = &self.config.hold_file {
            while !std::path::Path::new(path).exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if self.config.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.config.delay_ms)).await;
        }
        if self.config.panic_times.get(&id).is_some_and(|&n| calls <= n) {
            panic!("the recorder panics on {id} (call {calls})");
        }
        if self.config.permanent_failures.contains(&id) {
            return Err(BridgeError::permanent("refused by the remote network"));
        }
        if self.config.fail_times.get(&id).is_some_and(|&n| calls <= n) {
            return Err(BridgeError::new(format!("remote hiccup {calls}")));
        }
        if let Some(path) = &self.config.record_file {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
            // One write call: a SIGKILL cannot leave half a line for the next life to extend.
            f.write_all(format!("{id}\n").as_bytes()).unwrap();
            f.sync_all().unwrap();
        }
        self.handled.lock().unwrap().push((event.room_id.to_string(), id));
        Ok(())
    }
}

pub fn registration_yaml(url: &str) -> String {
    format!(
        "id: test\nurl: {url}\nas_token: {AS_TOKEN}\nhs_token: {HS_TOKEN}\n\
         sender_localpart: _t_bot\nnamespaces:\n  users:\n    - exclusive: true\n      regex: '@_t_.*:localhost'\n\
         \x20 aliases:\n    - exclusive: true\n      regex: '#_t_.*:localhost'\n\
         rate_limited: false\nreceive_ephemeral: true\nde.sorunome.msc2409.push_ephemeral: true\n"
    )
}

pub fn config_yaml(hs_url: &str, as_port: u16, db_url: &str, bridge: &str) -> String {
    config_yaml_with(hs_url, as_port, db_url, bridge, "")
}

/// As [`config_yaml`], with more `appservice:` keys (`"  request_timeout_secs: 2\n"`).
pub fn config_yaml_with(
    hs_url: &str,
    as_port: u16,
    db_url: &str,
    bridge: &str,
    appservice_extra: &str,
) -> String {
    format!(
        "homeserver: {{address: '{hs_url}', domain: localhost}}\n\
         appservice:\n{appservice_extra}  id: test\n  address: 'http://127.0.0.1:{as_port}'\n  port: {as_port}\n  bot: {{localpart: _t_bot}}\n  ghost_localpart_template: '_t_{{id}}'\n\
         database: {{url: '{db_url}'}}\n\
         inbox: {{retry_base_ms: 20, retry_max_ms: 100, max_attempts: 3, shutdown_grace_secs: 2}}\n\
         bridge: {bridge}\n"
    )
}

/// A running appservice on 127.0.0.1 with a recording bridge.
pub struct Running {
    pub addr: SocketAddr,
    pub bridge: Arc<Recorder>,
    pub store: Store,
    pub health: Arc<mxbridge::Health>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<mxbridge::Result<()>>,
}

impl Running {
    pub async fn start(db: &DatabaseConfig, bridge_config: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        Self::start_on(
            listener,
            "http://127.0.0.1:1",
            db,
            bridge_config,
            &registration_yaml("null"),
        )
        .await
        .with_addr(addr)
    }

    fn with_addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    pub async fn start_on(
        listener: tokio::net::TcpListener,
        hs_url: &str,
        db: &DatabaseConfig,
        bridge_config: &str,
        registration: &str,
    ) -> Self {
        Self::start_on_with(listener, hs_url, db, bridge_config, registration, "", "").await
    }

    /// As [`Running::start_on`], with more `appservice:` config keys and more `inbox:` keys
    /// (`"room_concurrency: 2, "`).
    pub async fn start_on_with(
        listener: tokio::net::TcpListener,
        hs_url: &str,
        db: &DatabaseConfig,
        bridge_config: &str,
        registration: &str,
        appservice_extra: &str,
        inbox_extra: &str,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let yaml = config_yaml_with(hs_url, addr.port(), &db.url, bridge_config, appservice_extra)
            .replace("inbox: {", &format!("inbox: {{{inbox_extra}"));
        let config: Config<RecorderConfig> = Config::from_yaml(&yaml).unwrap();
        let registration = Registration::from_yaml(registration).unwrap();
        let service = AppService::<Recorder>::new(config, registration).await.unwrap();
        let bridge = service.bridge().clone();
        let store = service.context().store().clone();
        let health = service.health().clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(service.run(listener, async move {
            let _ = rx.await;
        }));
        Self { addr, bridge, store, health, stop: Some(tx), task }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// PUTs a transaction with the hs_token; returns the status.
pub async fn put_txn(client: &reqwest::Client, base: &str, txn_id: &str, body: &str) -> u16 {
    client
        .put(format!("{base}/_matrix/app/v1/transactions/{txn_id}"))
        .bearer_auth(HS_TOKEN)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A transaction body of message events: (room, event ID) pairs.
pub fn txn_body(events: &[(&str, &str)]) -> String {
    let events: Vec<_> = events
        .iter()
        .map(|(room, id)| {
            serde_json::json!({
                "event_id": id, "room_id": room, "sender": "@alice:localhost",
                "type": "m.room.message", "origin_server_ts": 1,
                "content": {"msgtype": "m.text", "body": format!("message {id}")},
            })
        })
        .collect();
    serde_json::json!({ "events": events }).to_string()
}

/// Polls `cond` every 20 ms until it holds or `secs` pass.
pub async fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// Polls `cond`, which may query the store, every 10 ms until it holds or `secs` pass.
pub async fn wait_until_async(secs: u64, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond().await
}

/// A plain HTTP client for tests (installs the TLS provider first).
pub fn http() -> reqwest::Client {
    mxbridge::install_crypto_provider();
    reqwest::Client::new()
}

/// A login that asks only for a user name and completes as that account (for scripted
/// networks in tests).
pub struct UsernameLogin;

impl mxbridge::login::LoginProcess for UsernameLogin {
    async fn start(&mut self) -> BridgeResult<mxbridge::login::LoginStep> {
        use mxbridge::login::{FieldKind, LoginField, LoginStep};
        Ok(LoginStep::fields(
            "credentials",
            "Log in.",
            vec![LoginField::new(FieldKind::Text, "username", "Username")],
        ))
    }

    async fn submit(
        &mut self,
        values: mxbridge::login::LoginValues,
    ) -> BridgeResult<mxbridge::login::LoginStep> {
        let name = values["username"].clone();
        Ok(mxbridge::login::LoginStep::complete(
            name.as_str(),
            name.as_str(),
            serde_json::json!({}),
        ))
    }
}
