//! The bridging benchmark: every incoming message makes one ghost send.
//!
//! Two processes, both on 127.0.0.1:
//!
//! - `--mode stub`: a fast stub homeserver. It answers
//!   `PUT /_matrix/client/v3/rooms/{room}/send/{type}/{txn}` with an event ID and records, per
//!   room, the sequence number in each body (`Message number N ...`, as `examples/loadgen.rs`
//!   writes them): a number not greater than the room's previous one is an order violation.
//!   Any other request is answered `{}` and counted (a cached ghost send should make none).
//!   `GET /_bench/stats` returns the counts and the times of the first and last send.
//! - `--mode mxbridge`: mxbridge's `AppService` (durable inbox, SQLite or PostgreSQL) with a
//!   bridge whose `handle_message` makes one send by a ghost
//!   (`ctx.intent(ghost)?.send_text(room, body, None)`). The ghost is marked registered and
//!   joined to every room of the load in the store before serving, so each send is one request.
//!
//! ```text
//! cargo run --release --example bridge_bench -- --mode stub --port 29700
//! cargo run --release --example bridge_bench -- --mode mxbridge --port 29701 --hs-port 29700
//! cargo run --release --example loadgen -- --port 29701 --hs-token hs_token_bench_0123456789abcdef \
//!     -k 100 --conns 1 --txns 100 --secs 30
//! curl -s http://127.0.0.1:29700/_bench/stats
//! ```
//!
//! `scripts/bench-bridging.sh` runs this side by side with mautrix-python
//! (`bench/peers/mautrix_bridge.py`).

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    routing::{any, get, put},
};
use clap::{Parser, ValueEnum};
use mxbridge::{
    AppService, Bridge, BridgeResult, Config, Context, MatrixRoomMessage, Registration,
    store::{MemberRow, Membership},
};
use ruma::OwnedUserId;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// The stub homeserver.
    Stub,
    /// mxbridge's AppService with the one-send bridge.
    Mxbridge,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Db {
    Sqlite,
    Postgres,
}

#[derive(Parser, Debug)]
#[command(about = "Bridging benchmark: a one-send bridge and a stub homeserver")]
struct Args {
    #[arg(long, value_enum)]
    mode: Mode,
    /// Port on 127.0.0.1 (0 picks one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// mxbridge mode: the stub homeserver's port on 127.0.0.1.
    #[arg(long, default_value_t = 0)]
    hs_port: u16,
    #[arg(long, env = "MXB_HS_TOKEN", default_value = "hs_token_bench_0123456789abcdef")]
    hs_token: String,
    #[arg(long, value_enum, default_value = "sqlite")]
    db: Db,
    /// Directory for the SQLite file (a fresh file is created in it).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// PostgreSQL server; a fresh schema is created in it and dropped at exit.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pg_url: String,
    /// Rooms of the load (`examples/loadgen.rs --rooms`): the ghost is joined to each.
    #[arg(long, default_value_t = 50)]
    rooms: u32,
}

/// The ghost that sends every bridged message.
const GHOST: &str = "@_bench_ghost:localhost";

/// A room ID exactly as `examples/loadgen.rs` writes it.
fn room_id(r: u32) -> String {
    format!("!bench{r:06}qzXHbLcFoMiWdNrT:localhost")
}

// --- the stub homeserver -------------------------------------------------------------------------

#[derive(Default)]
struct Stub {
    sends: AtomicU64,
    other: AtomicU64,
    violations: AtomicU64,
    unparsed: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    /// Per room: the last sequence number received.
    last_seq: Mutex<HashMap<String, u64>>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// The `N` of `"body":"Message number N ..."`.
fn seq_of(body: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Content<'a> {
        #[serde(borrow)]
        body: std::borrow::Cow<'a, str>,
    }
    let c: Content<'_> = serde_json::from_slice(body).ok()?;
    c.body.strip_prefix("Message number ")?.split(' ').next()?.parse().ok()
}

async fn stub_send(
    State(stub): State<Arc<Stub>>,
    Path((room, _kind, txn)): Path<(String, String, String)>,
    body: Bytes,
) -> Json<serde_json::Value> {
    let now = now_ns();
    let _ = stub.first_ns.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    stub.last_ns.fetch_max(now, Ordering::Relaxed);
    match seq_of(&body) {
        Some(seq) => {
            let mut last = stub.last_seq.lock().expect("lock poisoned");
            let prev = last.insert(room, seq);
            if prev.is_some_and(|p| p >= seq) {
                stub.violations.fetch_add(1, Ordering::Relaxed);
            }
        }
        None => {
            stub.unparsed.fetch_add(1, Ordering::Relaxed);
        }
    }
    stub.sends.fetch_add(1, Ordering::Relaxed);
    Json(serde_json::json!({ "event_id": format!("$stub{txn}") }))
}

async fn stub_other(
    State(stub): State<Arc<Stub>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> Json<serde_json::Value> {
    if stub.other.fetch_add(1, Ordering::Relaxed) < 10 {
        eprintln!("stub: other request {method} {}", uri.path());
    }
    Json(serde_json::json!({}))
}

async fn stub_stats(State(stub): State<Arc<Stub>>) -> Json<serde_json::Value> {
    let rooms = stub.last_seq.lock().expect("lock poisoned").len();
    Json(serde_json::json!({
        "sends": stub.sends.load(Ordering::Relaxed),
        "other_requests": stub.other.load(Ordering::Relaxed),
        "order_violations": stub.violations.load(Ordering::Relaxed),
        "unparsed": stub.unparsed.load(Ordering::Relaxed),
        "rooms": rooms,
        "first_ns": stub.first_ns.load(Ordering::Relaxed),
        "last_ns": stub.last_ns.load(Ordering::Relaxed),
    }))
}

// --- the bridge ------------------------------------------------------------------------------------

/// Sends every message on, once, as the ghost.
#[derive(Debug)]
struct OneSend {
    ctx: Context,
    ghost: OwnedUserId,
}

impl Bridge for OneSend {
    type Config = mxbridge::config::NoBridgeConfig;
    const NAME: &'static str = "bench-one-send";

    async fn create(_config: Self::Config, ctx: Context) -> BridgeResult<Self> {
        Ok(Self { ctx, ghost: GHOST.try_into()? })
    }

    async fn handle_room_message(&self, message: &MatrixRoomMessage) -> BridgeResult {
        self.ctx
            .intent(&self.ghost)?
            .send_text(&message.event.room_id, message.content.body(), None)
            .await?;
        Ok(())
    }
}

fn registration_yaml(port: u16, hs_token: &str) -> String {
    format!(
        "id: bench\nurl: http://127.0.0.1:{port}\nas_token: as_token_bench_0123456789abcdef\n\
         hs_token: {hs_token}\nsender_localpart: _bench_bot\nnamespaces:\n  users:\n\
         \x20   - exclusive: true\n      regex: '@_bench_.*:localhost'\n  aliases: []\n  rooms: []\n\
         rate_limited: false\n"
    )
}

fn config_yaml(port: u16, hs_port: u16, db_url: &str) -> String {
    format!(
        "homeserver: {{address: 'http://127.0.0.1:{hs_port}', domain: localhost}}\n\
         appservice:\n  id: bench\n  address: 'http://127.0.0.1:{port}'\n  port: {port}\n\
         \x20 bot: {{localpart: _bench_bot}}\n  ghost_localpart_template: '_bench_{{id}}'\n\
         database: {{url: '{db_url}'}}\n\
         inbox: {{shutdown_grace_secs: 1}}\n\
         logging: {{level: warn}}\n"
    )
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], args.port))).await?;
    let port = listener.local_addr()?.port();
    match args.mode {
        Mode::Stub => {
            let stub = Arc::new(Stub::default());
            let app = Router::new()
                .route("/_matrix/client/v3/rooms/{room}/send/{kind}/{txn}", put(stub_send))
                .route("/_bench/stats", get(stub_stats))
                .fallback(any(stub_other))
                .with_state(stub.clone());
            println!("pid={} port={port} mode=stub", std::process::id());
            axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
            eprintln!(
                "sends: {} order violations: {}",
                stub.sends.load(Ordering::Relaxed),
                stub.violations.load(Ordering::Relaxed)
            );
        }
        Mode::Mxbridge => {
            anyhow::ensure!(args.hs_port != 0, "--hs-port is required");
            let (db_url, schema) = fresh_db(&args).await?;
            let config: Config = Config::from_yaml(&config_yaml(port, args.hs_port, &db_url))?;
            let registration = Registration::from_yaml(&registration_yaml(port, &args.hs_token))?;
            let service = AppService::<OneSend>::new(config, registration).await?;
            // The ghost is registered and joined everywhere: every send is a cache hit.
            let store = service.context().store();
            let ghost = <&ruma::UserId>::try_from(GHOST)?;
            store.mark_registered(ghost).await?;
            for r in 0..args.rooms {
                let room = ruma::RoomId::parse(room_id(r))?;
                store.set_membership(MemberRow::new(&room, ghost, Membership::Join)).await?;
            }
            println!(
                "pid={} port={port} mode=mxbridge db={}",
                std::process::id(),
                store.backend_name()
            );
            let served = service.run(listener, shutdown_signal()).await;
            if let Some(schema) = schema {
                drop_schema(&args.pg_url, &schema).await;
            }
            served?;
        }
    }
    Ok(())
}

/// A fresh database: an SQLite file, or a new schema in PostgreSQL (returned to drop at exit).
async fn fresh_db(args: &Args) -> anyhow::Result<(String, Option<String>)> {
    match args.db {
        Db::Sqlite => {
            let dir =
                args.dir.clone().unwrap_or_else(|| std::env::temp_dir().join("mxbridge-bench"));
            std::fs::create_dir_all(&dir)?;
            let file = dir.join(format!("bridge-{}.db", std::process::id()));
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
            Ok((format!("sqlite://{}", file.display()), None))
        }
        Db::Postgres => {
            let sep = if args.pg_url.contains('?') { '&' } else { '?' };
            let schema = format!("bridge_bench_{}", std::process::id());
            let admin = sqlx::PgPool::connect(&args.pg_url).await?;
            for sql in [
                format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
                format!("CREATE SCHEMA {schema}"),
            ] {
                sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin).await?;
            }
            admin.close().await;
            Ok((format!("{}{sep}options[search_path]={schema}", args.pg_url), Some(schema)))
        }
    }
}

async fn drop_schema(pg_url: &str, schema: &str) {
    if let Ok(admin) = sqlx::PgPool::connect(pg_url).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE")))
            .execute(&admin)
            .await;
        admin.close().await;
    }
}
