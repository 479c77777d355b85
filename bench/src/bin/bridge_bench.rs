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
//!   `--send-delay-ms D` makes each send take D ms to answer, as a homeserver's would.
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
//!
//! - `--mode pipeline`: the remote → Matrix pipeline. It queues `--events` remote events (nine
//!   messages to one reaction) over `--rooms` portals with `Context::queue_remote`, each
//!   committed to the database first, waits until all are bridged to the stub, and prints the
//!   rate. `--producers N` queues from N concurrent tasks (portal `r` is producer `r % N`'s,
//!   each waiting for a commit before its next event); `--batch B` queues B events a call
//!   with `Context::queue_remote_batch`. `bench/scripts/pipeline.sh` runs it beside `bench/peers/mautrix_pipeline.py`, which
//!   sends the same events with mautrix-python's IntentAPI from one asyncio queue per portal.

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
    /// The remote → Matrix pipeline: queue `--events` remote events over `--rooms` portals,
    /// wait until every one is bridged, print the rate as JSON.
    Pipeline,
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
    /// Pipeline mode: how many remote events to queue (one in ten a reaction).
    #[arg(long, default_value_t = 20_000)]
    events: u64,
    /// Pipeline mode: concurrent producers, each queueing the events of its share of the
    /// portals (portal `r` is producer `r % N`'s) and waiting for each commit before its next.
    #[arg(long, default_value_t = 1)]
    producers: u32,
    /// Pipeline mode: events per call; above 1, each producer queues its events this many at
    /// a time with `queue_remote_batch`.
    #[arg(long, default_value_t = 1)]
    batch: u32,
    /// Stub mode: how long each send takes to answer (a homeserver's own time per event).
    #[arg(long, default_value_t = 0)]
    send_delay_ms: u64,
}

/// The ghost that sends every bridged message.
const GHOST: &str = "@_bench_ghost:localhost";

// --- the stub homeserver -------------------------------------------------------------------------

#[derive(Default)]
struct Stub {
    /// How long a send takes to answer.
    delay: std::time::Duration,
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
    if !stub.delay.is_zero() {
        tokio::time::sleep(stub.delay).await;
    }
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
            let delay = std::time::Duration::from_millis(args.send_delay_ms);
            let stub = Arc::new(Stub { delay, ..Stub::default() });
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
        Mode::Pipeline => {
            anyhow::ensure!(args.hs_port != 0, "--hs-port is required");
            let db = args.db.fresh("pipeline", false).await?;
            let config: Config =
                Config::from_yaml(&config_yaml(port, args.hs_port, &db.url, None))?;
            let registration = Registration::from_yaml(&registration_yaml(port, &args.hs_token))?;
            let service = AppService::<OneSend>::new(config, registration).await?;
            let ctx = service.context().clone();
            prepare_portals(&ctx, args.rooms).await?;
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let running = tokio::spawn(service.run(listener, async move {
                let _ = stop_rx.await;
            }));
            let load = Load {
                rooms: args.rooms,
                events: args.events,
                producers: args.producers.clamp(1, args.rooms.max(1)),
                batch: args.batch.max(1),
            };
            let result = queue_and_wait(&ctx, load).await;
            let _ = stop_tx.send(());
            running.await??;
            args.db.drop_fresh(db).await;
            println!("{}", result?);
        }
    }
    Ok(())
}

/// The remote user whose ghost is `GHOST` (template `_bench_{id}`).
const REMOTE_USER: &str = "ghost";

/// Portals `chat-N` in the load's rooms, the ghost registered, joined and named in the store:
/// every bridged event is one request, as in the mautrix-python peer.
async fn prepare_portals(ctx: &Context, rooms: u32) -> anyhow::Result<()> {
    use mxbridge::{
        PortalKey,
        store::{GhostRow, PortalRow},
    };
    let store = ctx.store();
    let ghost = <&ruma::UserId>::try_from(GHOST)?;
    store.mark_registered(ghost).await?;
    store
        .upsert_ghost(&GhostRow {
            remote_id: REMOTE_USER.into(),
            user_id: ghost.to_owned(),
            displayname: Some("Ghost".into()),
            avatar_url: None,
            metadata: None,
        })
        .await?;
    for r in 0..rooms {
        let room = ruma::RoomId::parse(BenchRoom(r.into()).to_string())?;
        store.set_membership(MemberRow::new(&room, ghost, Membership::Join)).await?;
        let row = PortalRow {
            key: PortalKey::shared(format!("chat-{r}")),
            room_id: Some(room),
            name: None,
            topic: None,
            avatar_url: None,
            metadata: None,
        };
        store.upsert_portal(&row).await?;
    }
    Ok(())
}

/// The pipeline mode's load.
#[derive(Clone, Copy, Debug)]
struct Load {
    rooms: u32,
    events: u64,
    producers: u32,
    batch: u32,
}

/// The `n`-th event of the load, and its portal: round-robin over the portals, in each nine
/// messages (numbered per room for the stub's order check), then a reaction to the last one.
fn nth_event(n: u64, rooms: u32) -> (mxbridge::PortalKey, mxbridge::RemoteEvent) {
    use mxbridge::{PortalKey, RemoteEvent, RemoteSender};
    let r = n % u64::from(rooms);
    let seq = n / u64::from(rooms);
    let sender = RemoteSender::named(REMOTE_USER, "Ghost");
    let event = if seq % 10 == 9 {
        RemoteEvent::Reaction {
            target: format!("m{r}-{}", seq - 1).into(),
            sender,
            key: "👍".into(),
            timestamp: None,
        }
    } else {
        let body = format!("Message number {seq} in chat {r}");
        RemoteEvent::text(format!("m{r}-{seq}"), sender, body)
    };
    (PortalKey::shared(format!("chat-{r}")), event)
}

/// Queues the load's events with `load.producers` concurrent producers (portal `r` is
/// producer `r % producers`'s, which queues that portal's events in order, `load.batch` at a
/// time) and waits until all are bridged; returns the figures as JSON.
async fn queue_and_wait(ctx: &Context, load: Load) -> anyhow::Result<String> {
    let started = std::time::Instant::now();
    let mut producers = Vec::new();
    for p in 0..load.producers {
        let ctx = ctx.clone();
        producers.push(tokio::spawn(async move {
            let mine = (0..load.events)
                .filter(|n| n % u64::from(load.rooms) % u64::from(load.producers) == u64::from(p));
            let mut waiting = Vec::new();
            let mut pending = Vec::new();
            for n in mine {
                pending.push(nth_event(n, load.rooms));
                if pending.len() >= load.batch as usize {
                    waiting.extend(queue(&ctx, &mut pending).await?);
                }
            }
            waiting.extend(queue(&ctx, &mut pending).await?);
            Ok::<_, anyhow::Error>(waiting)
        }));
    }
    let mut waiting = Vec::new();
    for p in producers {
        waiting.push(p.await??);
    }
    let queued_s = started.elapsed().as_secs_f64();
    for queued in waiting.into_iter().flatten() {
        queued.bridged().await?;
    }
    let total_s = started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let rate = load.events as f64 / total_s;
    Ok(serde_json::json!({
        "side": "mxbridge",
        "events": load.events,
        "producers": load.producers,
        "batch": load.batch,
        "queued_s": queued_s,
        "total_s": total_s,
        "events_per_s": rate,
        "durable": ctx.store().backend_name(),
    })
    .to_string())
}

/// Queues `pending` (one call for one event, a batch for more) and empties it.
async fn queue(
    ctx: &Context,
    pending: &mut Vec<(mxbridge::PortalKey, mxbridge::RemoteEvent)>,
) -> anyhow::Result<Vec<mxbridge::Queued>> {
    let queued = match pending.as_slice() {
        [] => Vec::new(),
        [(portal, event)] => vec![ctx.queue_remote(portal, event).await?],
        more => ctx.queue_remote_batch(more).await?,
    };
    pending.clear();
    Ok(queued)
}
