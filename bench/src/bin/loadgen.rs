//! A load generator that acts like a homeserver pushing appservice transactions.
//!
//! It PUTs `/_matrix/app/v1/transactions/{txnId}` with a unique txn ID per request, the hs_token
//! as a bearer token, and `K` realistic events (`m.room.message` and `m.room.member`, spread over
//! `--rooms` rooms, every event ID unique). `--conns 1` is Synapse-shaped (one transaction in
//! flight); `--conns N` keeps N keep-alive connections busy. Every run is bounded by a count
//! (`--txns`) and a time (`--secs`). It reports transactions/s, events/s, p50/p99/max latency and,
//! with `--pid`, the server's RSS (`VmRSS`/`VmHWM` from `/proc/PID/status`).
//!
//! Loopback only: the target must be `127.0.0.1` or `::1`.
//!
//! ```text
//! cargo run --release -p mxbridge-bench --bin loadgen -- --port 29330 --hs-token TOKEN -k 100 --conns 1 --secs 5
//! cargo run --release -p mxbridge-bench --bin loadgen -- --port 29330 --hs-token TOKEN -k 1 --conns 64 --secs 5
//! ```
//!
//! `--startup-from-ns T` first polls the port until a transaction is answered 200 and prints the
//! time since `T` (nanoseconds since the epoch, e.g. `date +%s%N` taken just before the server
//! was started): the startup-to-first-200 time.
//!
//! The HTTP/1.1 client is hand-written (one write per request, a content-length response) so that
//! the load tool costs as little CPU as possible on a small machine.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use mxbridge_bench::{BenchRoom, now_ns, rss_kib};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

#[derive(Parser, Debug, Clone)]
#[command(about = "Push appservice transactions at a server on loopback and measure it")]
struct Args {
    /// The server's address (loopback only).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// The server's port.
    #[arg(long)]
    port: u16,
    /// The hs_token the server expects.
    #[arg(long, env = "MXB_HS_TOKEN")]
    hs_token: String,
    /// Events per transaction.
    #[arg(short = 'k', long, default_value_t = 1)]
    events: usize,
    /// Concurrent connections, each with one transaction in flight (1 = Synapse-shaped).
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Stop after this many seconds of load.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Stop after this many transactions.
    #[arg(long, default_value_t = 10_000_000)]
    txns: u64,
    /// Transactions sent before measuring (not counted).
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Pause this long after each answer, per connection (0 = as fast as answered). For
    /// profiling at a pace the server keeps up with; throughput figures use 0.
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
    /// Rooms the events are spread over.
    #[arg(long, default_value_t = 50)]
    rooms: u32,
    /// Event IDs in no order, as real ones are (hashes), instead of rising with the
    /// transaction: each new ID lands at a random place in the dedup index.
    #[arg(long)]
    random_ids: bool,
    /// Distinct senders.
    #[arg(long, default_value_t = 200)]
    users: u32,
    /// The server's process ID: report its RSS.
    #[arg(long)]
    pid: Option<u32>,
    /// Wait for the first 200 and print the time since this instant (ns since the epoch).
    #[arg(long)]
    startup_from_ns: Option<u128>,
    /// Only do the startup probe (with `--startup-from-ns`), no load.
    #[arg(long)]
    startup_only: bool,
    /// A label printed with the results.
    #[arg(long, default_value = "")]
    label: String,
    /// Print one machine-readable line (`key=value ...`) instead of prose.
    #[arg(long)]
    kv: bool,
    /// Give up on a request after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
}

/// Builds transaction bodies with unique, realistic events.
struct BodyGen {
    run: u64,
    k: usize,
    rooms: u32,
    users: u32,
    random_ids: bool,
}

impl BodyGen {
    /// Writes the body of transaction `txn` into `out`.
    fn body(&self, txn: u64, out: &mut String) {
        out.clear();
        out.push_str("{\"events\":[");
        for i in 0..self.k {
            if i > 0 {
                out.push(',');
            }
            let n = txn.wrapping_mul(self.k as u64).wrapping_add(i as u64);
            // A cheap mix so that rooms and senders do not move in lockstep.
            let mix = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
            let room = mix % u64::from(self.rooms.max(1));
            let user = (mix >> 8) % u64::from(self.users.max(1));
            let ts = 1_764_000_000_000u64 + n;
            // Room v10-style event IDs: `$` and 43 URL-safe base64 characters.
            // Unique either way: both carry the run, the transaction and the index; the
            // random form puts a hash of them first, so IDs fall anywhere in an index.
            let run = self.run & 0xfff_ffff_ffff;
            let _ = if self.random_ids {
                let h = (run ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
                write!(out, "{{\"event_id\":\"${h:08x}{run:011x}{txn:016x}{i:08x}\",")
            } else {
                write!(out, "{{\"event_id\":\"${run:011x}{txn:016x}{i:016x}\",")
            };
            let _ = write!(
                out,
                "\"room_id\":\"{}\",\"sender\":\"@user{user:05}:localhost\",\
                 \"origin_server_ts\":{ts},",
                BenchRoom(room)
            );
            if n % 10 == 9 {
                let _ = write!(
                    out,
                    "\"type\":\"m.room.member\",\"state_key\":\"@user{user:05}:localhost\",\
                     \"content\":{{\"membership\":\"join\",\"displayname\":\"User {user}\",\
                     \"avatar_url\":\"mxc://localhost/AbCdEfGhIjKlMnOp{user:05}\"}},\
                     \"unsigned\":{{\"age\":{},\"replaces_state\":\"$PrEvIoUsStAtEeVeNt{user:05}\"}}}}",
                    n % 997
                );
            } else {
                let _ = write!(
                    out,
                    "\"type\":\"m.room.message\",\"content\":{{\"msgtype\":\"m.text\",\
                     \"body\":\"Message number {n} from user {user}: the quick brown fox jumps over the lazy dog.\",\
                     \"m.mentions\":{{}}}},\"unsigned\":{{\"age\":{}}}}}",
                    n % 997
                );
            }
        }
        out.push_str("]}");
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    req: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self { stream, buf: Vec::with_capacity(4096), req: Vec::with_capacity(64 * 1024) })
    }

    /// PUTs one transaction and returns the status code.
    async fn put(
        &mut self,
        host: &str,
        token: &str,
        txn_id: &str,
        body: &str,
    ) -> std::io::Result<u16> {
        self.req.clear();
        let _ = write!(
            Vec8(&mut self.req),
            "PUT /_matrix/app/v1/transactions/{txn_id} HTTP/1.1\r\nHost: {host}\r\n\
             Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        self.req.extend_from_slice(body.as_bytes());
        self.stream.write_all(&self.req).await?;
        self.read_response().await
    }

    /// Reads one response (content-length or chunked) and returns its status.
    async fn read_response(&mut self) -> std::io::Result<u16> {
        self.buf.clear();
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(std::io::Error::other)?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other("bad status line"))?;
        let lower = head.to_ascii_lowercase();
        if let Some(len) = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            while self.buf.len() < head_end + len {
                self.fill().await?;
            }
        } else if lower.contains("transfer-encoding: chunked") {
            while find(&self.buf[head_end..], b"0\r\n\r\n").is_none() {
                self.fill().await?;
            }
        }
        Ok(status)
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// `fmt::Write` into a byte vector.
struct Vec8<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Vec8<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Polls until one transaction is answered 200; returns the ms since `from_ns`.
async fn probe_startup(
    args: &Args,
    addr: SocketAddr,
    gen_: &BodyGen,
    from_ns: u128,
) -> Option<f64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let host = addr.to_string();
    let mut body = String::new();
    gen_.body(u64::MAX, &mut body);
    while Instant::now() < deadline {
        if let Ok(mut conn) = Conn::open(addr).await {
            let txn_id = format!("probe-{}", gen_.run);
            if let Ok(200) = conn.put(&host, &args.hs_token, &txn_id, &body).await {
                return Some(now_ns().saturating_sub(from_ns) as f64 / 1e6);
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

struct Shared {
    next: AtomicU64,
    stop: AtomicBool,
    errors: AtomicU64,
}

async fn worker(
    args: Arc<Args>,
    gen_: Arc<BodyGen>,
    shared: Arc<Shared>,
    addr: SocketAddr,
    limit: u64,
    deadline: Instant,
) -> std::io::Result<Vec<u32>> {
    let mut conn = Conn::open(addr).await?;
    let host = addr.to_string();
    let mut body = String::with_capacity(args.events * 600 + 32);
    let mut txn_id = String::new();
    let mut lat = Vec::new();
    let timeout = Duration::from_secs(args.timeout_secs);
    loop {
        if shared.stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            break;
        }
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        if n >= limit {
            break;
        }
        gen_.body(n, &mut body);
        txn_id.clear();
        let _ = write!(txn_id, "lg{:x}.{n}", gen_.run);
        let t0 = Instant::now();
        let status = tokio::time::timeout(timeout, conn.put(&host, &args.hs_token, &txn_id, &body))
            .await
            .map_err(|_| std::io::Error::other("request timed out"))??;
        let us = u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX);
        if args.pause_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.pause_ms)).await;
        }
        if status == 200 {
            lat.push(us);
        } else {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            if shared.errors.load(Ordering::Relaxed) > 100 {
                eprintln!("loadgen: more than 100 non-200 answers (last {status}); stopping");
                shared.stop.store(true, Ordering::Relaxed);
            }
        }
    }
    Ok(lat)
}

/// Runs `conns` workers until `limit` transactions or `deadline`; returns latencies and elapsed.
async fn run_phase(
    args: &Arc<Args>,
    gen_: &Arc<BodyGen>,
    addr: SocketAddr,
    first: u64,
    limit: u64,
    secs: f64,
) -> std::io::Result<(Vec<u32>, Duration, u64)> {
    let shared = Arc::new(Shared {
        next: AtomicU64::new(first),
        stop: AtomicBool::new(false),
        errors: AtomicU64::new(0),
    });
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::with_capacity(args.conns);
    for _ in 0..args.conns {
        tasks.push(tokio::spawn(worker(
            args.clone(),
            gen_.clone(),
            shared.clone(),
            addr,
            limit,
            deadline,
        )));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.map_err(std::io::Error::other)??);
    }
    Ok((lat, start.elapsed(), shared.errors.load(Ordering::Relaxed)))
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[idx.min(sorted.len() - 1)]) / 1000.0
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if !args.host.is_loopback() {
        eprintln!("loadgen: only loopback targets are allowed");
        return std::process::ExitCode::from(2);
    }
    // One thread: the load tool should take one core at most.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> std::io::Result<()> {
    let addr = SocketAddr::new(args.host, args.port);
    let run_id = u64::try_from(now_ns() & u128::from(u64::MAX)).unwrap_or_default();
    let gen_ = Arc::new(BodyGen {
        run: run_id,
        k: args.events,
        rooms: args.rooms,
        users: args.users,
        random_ids: args.random_ids,
    });
    let args = Arc::new(args);

    if let Some(from) = args.startup_from_ns {
        let probe_gen = BodyGen {
            run: run_id ^ 0x5a5a,
            k: 1,
            rooms: args.rooms,
            users: args.users,
            random_ids: args.random_ids,
        };
        match probe_startup(&args, addr, &probe_gen, from).await {
            Some(ms) => {
                // Let the server settle before reading its idle RSS.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let idle = args.pid.and_then(rss_kib).map(|(r, _)| r);
                if args.kv {
                    println!(
                        "label={} startup_ms={ms:.1} idle_rss_kib={}",
                        args.label,
                        idle.map_or("-".into(), |v| v.to_string())
                    );
                } else {
                    println!("startup to first 200: {ms:.1} ms");
                    if let Some(kib) = idle {
                        println!("idle RSS: {:.1} MiB", kib as f64 / 1024.0);
                    }
                }
            }
            None => return Err(std::io::Error::other("server did not answer 200 within 30 s")),
        }
        if args.startup_only {
            return Ok(());
        }
    }

    let rss_before = args.pid.and_then(rss_kib);
    if args.warmup > 0 {
        run_phase(&args, &gen_, addr, 0, args.warmup, args.secs).await?;
    }
    let first = args.warmup;
    let (mut lat, elapsed, errors) =
        run_phase(&args, &gen_, addr, first, first.saturating_add(args.txns), args.secs).await?;
    let rss_after = args.pid.and_then(rss_kib);
    lat.sort_unstable();
    let secs = elapsed.as_secs_f64();
    let txns = lat.len() as f64;
    let tps = txns / secs;
    let eps = tps * args.events as f64;
    let (p50, p99, max) = (percentile(&lat, 0.5), percentile(&lat, 0.99), percentile(&lat, 1.0));
    let mib = |v: Option<u64>| v.map_or("-".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0));
    if args.kv {
        println!(
            "label={} k={} conns={} txns={} secs={secs:.2} txn_s={tps:.0} events_s={eps:.0} \
             p50_ms={p50:.3} p99_ms={p99:.3} max_ms={max:.3} errors={errors} rss_before_mib={} \
             rss_after_mib={} rss_peak_mib={}",
            args.label,
            args.events,
            args.conns,
            lat.len(),
            mib(rss_before.map(|r| r.0)),
            mib(rss_after.map(|r| r.0)),
            mib(rss_after.map(|r| r.1)),
        );
    } else {
        println!(
            "{} K={} conns={}: {} txns in {secs:.2} s = {tps:.0} txn/s, {eps:.0} events/s; \
             latency p50 {p50:.3} ms, p99 {p99:.3} ms, max {max:.3} ms; {errors} non-200",
            args.label,
            args.events,
            args.conns,
            lat.len()
        );
        if rss_after.is_some() {
            println!(
                "server RSS: before {} MiB, after {} MiB, peak {} MiB",
                mib(rss_before.map(|r| r.0)),
                mib(rss_after.map(|r| r.0)),
                mib(rss_after.map(|r| r.1))
            );
        }
    }
    Ok(())
}
