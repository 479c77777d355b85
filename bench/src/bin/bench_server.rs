//! The server side of the intake benchmark (`loadgen` is the homeserver side).
//!
//! `--mode mxbridge` runs mxbridge's `AppService` with a bridge whose handler only counts events;
//! the durable inbox is on, as always: a transaction is answered after its events are committed
//! to SQLite (`--db sqlite`, a fresh file) or PostgreSQL (`--db postgres`, a fresh schema in
//! `--pg-url`). `--mode bare` is the baseline: plain axum that checks the token, parses the same
//! body into borrowed raw events and their envelopes (`event_id`, `room_id`, `sender`, `type`),
//! and keeps nothing.
//!
//! ```text
//! cargo run --release -p mxbridge-bench --bin bench_server -- --mode mxbridge --db sqlite --port 29330
//! cargo run --release -p mxbridge-bench --bin bench_server -- --mode bare --port 29331
//! ```
//!
//! It prints `pid=… port=… mode=…` once listening, and the number of events its handler saw when
//! it stops (SIGTERM or Ctrl-C).
//!
//! `--populate-ghosts N --populate-rooms M` (mxbridge mode) first fills the store with N
//! registered ghosts and M rooms (each ghost joined to one room), reads every one of them back
//! through the `Store` methods and prints the RSS: the memory benchmark.

use std::{
    borrow::Cow,
    net::SocketAddr,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Instant,
};

use axum::{
    Router,
    body::Bytes,
    extract::Path,
    http::{HeaderMap, StatusCode, header::AUTHORIZATION},
    routing::put,
};
use clap::{Parser, ValueEnum};
use mxbridge::{
    AppService, Bridge, BridgeResult, Config, Context, Event, MatrixMembership, MatrixRoomMessage,
    Registration, Store,
};
use mxbridge_bench::{DbArgs, HS_TOKEN, config_yaml, registration_yaml, rss_kib, shutdown_signal};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Events the handler (or the bare baseline) saw.
static EVENTS: AtomicU64 = AtomicU64::new(0);
/// `--stall-handler`.
static STALL: AtomicBool = AtomicBool::new(false);

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// mxbridge's AppService with a counting bridge.
    Mxbridge,
    /// Bare axum: parse the body borrowed, keep nothing.
    Bare,
}

#[derive(Parser, Debug)]
#[command(about = "A counting appservice for the intake benchmark")]
struct Args {
    #[arg(long, value_enum, default_value = "mxbridge")]
    mode: Mode,
    #[command(flatten)]
    db: DbArgs,
    /// Port on 127.0.0.1 (0 picks one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    #[arg(long, env = "MXB_HS_TOKEN", default_value = HS_TOKEN)]
    hs_token: String,
    /// Keep the database between runs (SQLite `bench-reuse.db` in `--dir`, PostgreSQL schema
    /// `bench_reuse`), to measure a restart instead of a first start.
    #[arg(long)]
    reuse: bool,
    /// Database pool size.
    #[arg(long, default_value_t = 8)]
    max_connections: u32,
    /// Install a log subscriber with this filter (default: no logging at all).
    #[arg(long)]
    log: Option<String>,
    /// Diagnostic: the handler never returns, so the dispatcher stops after its in-flight limit
    /// and the figures show the intake alone (transactions still commit durably).
    #[arg(long)]
    stall_handler: bool,
    /// Memory benchmark: registered ghosts to put in the store before serving.
    #[arg(long, default_value_t = 0)]
    populate_ghosts: u32,
    /// Memory benchmark: rooms to put in the store before serving.
    #[arg(long, default_value_t = 0)]
    populate_rooms: u32,
}

/// The bridge of the benchmark: counts events, does nothing else.
#[derive(Debug)]
struct Counter;

impl Bridge for Counter {
    type Config = mxbridge::config::NoBridgeConfig;
    const NAME: &'static str = "bench-counter";

    async fn create(_config: Self::Config, _ctx: Context) -> BridgeResult<Self> {
        Ok(Self)
    }

    async fn handle_room_message(&self, _message: &MatrixRoomMessage) -> BridgeResult {
        count().await
    }

    async fn handle_membership(&self, _membership: &MatrixMembership) -> BridgeResult {
        count().await
    }

    async fn handle_other(&self, _event: &Event) -> BridgeResult {
        count().await
    }
}

/// Counts one handled event (and holds it while stalled).
async fn count() -> BridgeResult {
    EVENTS.fetch_add(1, Ordering::Relaxed);
    if STALL.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
    Ok(())
}

fn rss_mib() -> f64 {
    rss_kib(std::process::id()).map_or(0.0, |(rss, _)| rss as f64 / 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    STALL.store(args.stall_handler, Ordering::Relaxed);
    if let Some(filter) = &args.log {
        tracing_subscriber::fmt().with_env_filter(filter.as_str()).init();
    }
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], args.port))).await?;
    let port = listener.local_addr()?.port();
    match args.mode {
        Mode::Bare => {
            println!("pid={} port={port} mode=bare", std::process::id());
            let token = format!("Bearer {}", args.hs_token);
            let app = Router::new().route(
                "/_matrix/app/v1/transactions/{txn_id}",
                put(move |path: Path<String>, headers: HeaderMap, body: Bytes| {
                    let ok = headers
                        .get(AUTHORIZATION)
                        .is_some_and(|v| v.as_bytes() == token.as_bytes());
                    async move { bare_push(ok, path, body) }
                }),
            );
            axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
        }
        Mode::Mxbridge => {
            let db = args.db.fresh("bench", args.reuse).await?;
            // Nothing listens on the homeserver's port: the counting bridge makes no request.
            let config: Config =
                Config::from_yaml(&config_yaml(port, 1, &db.url, Some(args.max_connections)))?;
            let registration = Registration::from_yaml(&registration_yaml(port, &args.hs_token))?;
            let service = AppService::<Counter>::new(config, registration).await?;
            if args.populate_ghosts > 0 || args.populate_rooms > 0 {
                populate(service.context().store(), args.populate_ghosts, args.populate_rooms)
                    .await?;
            }
            println!(
                "pid={} port={port} mode=mxbridge db={}",
                std::process::id(),
                service.context().store().backend_name()
            );
            let served = service.run(listener, shutdown_signal()).await;
            args.db.drop_fresh(db).await;
            served?;
        }
    }
    eprintln!("events handled: {}", EVENTS.load(Ordering::Relaxed));
    Ok(())
}

#[derive(Deserialize)]
struct BareBody<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
#[allow(dead_code)] // parsed to pay the cost, then dropped
struct BareEnvelope<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    room_id: Cow<'a, str>,
    #[serde(borrow)]
    sender: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
}

fn bare_push(authorized: bool, _txn_id: Path<String>, body: Bytes) -> (StatusCode, &'static str) {
    if !authorized {
        return (StatusCode::FORBIDDEN, r#"{"errcode":"M_FORBIDDEN","error":"bad token"}"#);
    }
    let Ok(parsed) = serde_json::from_slice::<BareBody<'_>>(&body) else {
        return (StatusCode::BAD_REQUEST, r#"{"errcode":"M_BAD_JSON","error":"bad body"}"#);
    };
    let mut n = 0;
    for raw in &parsed.events {
        if serde_json::from_str::<BareEnvelope<'_>>(raw.get()).is_ok() {
            n += 1;
        }
    }
    EVENTS.fetch_add(n, Ordering::Relaxed);
    (StatusCode::OK, "{}")
}

/// Fills the store with ghosts and rooms, then reads every one back, and prints the RSS.
///
/// Each ghost is registered and joined to one room (`ghosts / rooms` members per room); each
/// room has power levels and its members-fetched flag. Writes and reads go through the public
/// `Store` methods, 64 at a time.
async fn populate(store: &Store, ghosts: u32, rooms: u32) -> anyhow::Result<()> {
    use mxbridge::store::{MemberRow, Membership, RoomStateField};
    use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
    let rooms = rooms.max(1);
    let room_id = |r: u32| -> OwnedRoomId {
        RoomId::parse(format!("!room{r:06}AbCdEfGhIjKl:localhost")).expect("room ID")
    };
    let ghost_id = |g: u32| -> OwnedUserId {
        UserId::parse(format!("@_bench_ghost{g:07}:localhost")).expect("user ID")
    };
    let rss0 = rss_mib();
    let t = Instant::now();
    for start in (0..rooms).step_by(64) {
        let batch = (start..(start + 64).min(rooms)).map(|r| async move {
            let id = room_id(r);
            store
                .set_room_state(
                    &id,
                    RoomStateField::PowerLevels,
                    r#"{"users":{"@_bench_bot:localhost":100}}"#,
                )
                .await?;
            store.set_members_fetched(&id, true).await
        });
        for r in futures_join(batch).await {
            r?;
        }
    }
    for start in (0..ghosts).step_by(64) {
        let batch = (start..(start + 64).min(ghosts)).map(|g| async move {
            let user = ghost_id(g);
            store.mark_registered(&user).await?;
            let room = room_id(g % rooms);
            let row = MemberRow::new(&room, &user, Membership::Join);
            store.set_membership(MemberRow { displayname: Some("Ghost"), ..row }).await
        });
        for r in futures_join(batch).await {
            r?;
        }
    }
    let written = t.elapsed();
    let rss1 = rss_mib();
    let t = Instant::now();
    let mut members = 0usize;
    for start in (0..rooms).step_by(64) {
        let batch = (start..(start + 64).min(rooms)).map(|r| async move {
            let id = room_id(r);
            let m = store.members_with(&id, Membership::Join).await?.len();
            store.room_state(&id, RoomStateField::PowerLevels).await?;
            store.members_fetched(&id).await?;
            Ok::<_, mxbridge::store::StoreError>(m)
        });
        for r in futures_join(batch).await {
            members += r?;
        }
    }
    for start in (0..ghosts).step_by(64) {
        let batch = (start..(start + 64).min(ghosts)).map(|g| async move {
            let user = ghost_id(g);
            anyhow::ensure!(store.is_registered(&user).await?, "{user} not registered");
            anyhow::ensure!(store.joined_rooms(&user).await?.len() == 1, "{user} not joined");
            Ok(())
        });
        for r in futures_join(batch).await {
            r?;
        }
    }
    anyhow::ensure!(members == ghosts as usize, "{members} members read back, {ghosts} written");
    println!(
        "populate ghosts={ghosts} rooms={rooms} write_s={:.1} touch_s={:.1} rss_start_mib={rss0:.1} \
         rss_after_write_mib={rss1:.1} rss_after_touch_mib={:.1}",
        written.as_secs_f64(),
        t.elapsed().as_secs_f64(),
        rss_mib()
    );
    Ok(())
}

/// Runs the futures concurrently on this task and returns their outputs in order.
async fn futures_join<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    out.into_iter().map(|v| v.expect("every future finished")).collect()
}
