//! The bridging benchmark: every incoming message makes one ghost send.
//!
//! Two processes, both on 127.0.0.1:
//!
//! - `--mode stub`: a fast stub homeserver. It answers
//!   `PUT /_matrix/client/v3/rooms/{room}/send/{type}/{txn}` with an event ID and records, per
//!   room, the sequence number in each body (`Message number N ...`, as `loadgen` writes them):
//!   a number not greater than the room's previous one is an order violation.
//!   Any other request is answered `{}` and counted (a cached ghost send should make none).
//!   `GET /_bench/stats` returns the counts and the times of the first and last send.
//! - `--mode mxbridge`: mxbridge's `AppService` (durable inbox, SQLite or PostgreSQL) with a
//!   bridge whose `handle_room_message` makes one send by a ghost
//!   (`ctx.intent(ghost)?.send_text(room, body)`). The ghost is marked registered and
//!   joined to every room of the load in the store before serving, so each send is one request.
//!
//! ```text
//! cargo run --release -p mxbridge-bench --bin bridge_bench -- --mode stub --port 29700
//! cargo run --release -p mxbridge-bench --bin bridge_bench -- \
//!     --mode mxbridge --port 29701 --hs-port 29700
//! cargo run --release -p mxbridge-bench --bin loadgen -- --port 29701 \
//!     --hs-token hs_token_bench_0123456789abcdef -k 100 --conns 1 --txns 100 --secs 30
//! curl -s http://127.0.0.1:29700/_bench/stats
//! ```
//!
//! `bench/scripts/bridging.sh` runs this side by side with mautrix-python
//! (`bench/peers/mautrix_bridge.py`).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
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
use mxbridge_bench::{
    BenchRoom, DbArgs, HS_TOKEN, config_yaml, now_ns, registration_yaml, shutdown_signal,
};
use ruma::OwnedUserId;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// The stub homeserver.
    Stub,
    /// mxbridge's AppService with the one-send bridge.
    Mxbridge,
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
    #[arg(long, env = "MXB_HS_TOKEN", default_value = HS_TOKEN)]
    hs_token: String,
    #[command(flatten)]
    db: DbArgs,
    /// Rooms of the load (`loadgen --rooms`): the ghost is joined to each.
    #[arg(long, default_value_t = 50)]
    rooms: u32,
}

/// The ghost that sends every bridged message.
const GHOST: &str = "@_bench_ghost:localhost";

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
    last_seq: Mutex<BTreeMap<String, u64>>,
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
    let now = u64::try_from(now_ns()).unwrap_or(u64::MAX);
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

// --- the bridge ---------------------------------------------------------------------------------

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
            .send_text(&message.event.room_id, message.content.body())
            .await?;
        Ok(())
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
            let db = args.db.fresh("bridge", false).await?;
            let config: Config =
                Config::from_yaml(&config_yaml(port, args.hs_port, &db.url, None))?;
            let registration = Registration::from_yaml(&registration_yaml(port, &args.hs_token))?;
            let service = AppService::<OneSend>::new(config, registration).await?;
            // The ghost is registered and joined everywhere: every send is a cache hit.
            let store = service.context().store();
            let ghost = <&ruma::UserId>::try_from(GHOST)?;
            store.mark_registered(ghost).await?;
            for r in 0..args.rooms {
                let room = ruma::RoomId::parse(BenchRoom(r.into()).to_string())?;
                store.set_membership(MemberRow::new(&room, ghost, Membership::Join)).await?;
            }
            println!(
                "pid={} port={port} mode=mxbridge db={}",
                std::process::id(),
                store.backend_name()
            );
            let served = service.run(listener, shutdown_signal()).await;
            args.db.drop_fresh(db).await;
            served?;
        }
    }
    Ok(())
}
