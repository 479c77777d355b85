//! In-process benchmarks of the intake and state-store paths, through the public API.
//!
//! Run with `cargo bench --bench inbox` (PostgreSQL too when `MXBRIDGE_TEST_POSTGRES` is set, in
//! a fresh schema that is dropped afterwards). Plain `Instant` loops with a warm-up; every loop
//! is bounded by a count. Measured:
//!
//! - `Event::from_json`: the envelope parse and validation of a realistic `m.room.message`;
//! - `Store::accept_transaction`: the durable inbox insert of one transaction, K=1 and K=100
//!   events (each transaction has a new txn ID and new event IDs, one commit each);
//! - `Store::membership` and `Store::is_registered` with 1,000,000 membership rows (10,000 rooms
//!   × 100 users) and 1,000,000 registered users in the store, loaded with one set-based
//!   `INSERT … SELECT` through sqlx (the load time is printed too). Each key is looked up
//!   once, so these are database queries, not hits in the store's in-memory cache (that path
//!   is `benches/intent.rs`);
//! - one SQLite statement (`SELECT 1`, and an autocommit `INSERT`) through sqlx's pool of one
//!   connection against the same connection held out of a pool, side by side: why the store
//!   holds its writing connection (`store/writer.rs`). Pin it to one core, as the server is in
//!   the intake benchmark (`taskset -c 1 cargo bench --bench inbox`): the difference is the
//!   pool's check-out and check-in, and the ping on check-in, a hop between threads each;
//!   on PostgreSQL, `SELECT 1` through a pool against a held connection, with this process's
//!   CPU time (the ping on check-in runs in a task of its own: wall time hardly differs).

use std::{
    borrow::Cow,
    fmt::Write as _,
    time::{Duration, Instant},
};

use mxbridge::{
    Event, Store,
    config::DatabaseConfig,
    store::{
        Membership,
        testing_support::{InboxInternals as _, NewEvent},
    },
};

const MEMBERSHIP_ROWS: u64 = 1_000_000;
const ROOMS: u64 = 10_000;

/// A realistic `m.room.message` as a homeserver pushes it (the shape `loadgen` writes, in
/// `bench/src/bin/loadgen.rs`).
fn message_json(run: u64, txn: u64, i: u64) -> String {
    let room = (txn * 100 + i) % 50;
    let user = (txn * 7 + i) % 200;
    format!(
        "{{\"event_id\":\"${run:011x}{txn:016x}{i:016x}\",\"room_id\":\"!bench{room:06}qzXHbLcFoMiWdNrT:localhost\",\
         \"sender\":\"@user{user:05}:localhost\",\"origin_server_ts\":{},\"type\":\"m.room.message\",\
         \"content\":{{\"msgtype\":\"m.text\",\"body\":\"Message number {i} from user {user}: the quick \
         brown fox jumps over the lazy dog.\",\"m.mentions\":{{}}}},\"unsigned\":{{\"age\":{}}}}}",
        1_764_000_000_000u64 + i,
        i % 997
    )
}

fn report(name: &str, total: Duration, n: u64, extra: &str) {
    let per = total.as_secs_f64() / n as f64;
    let shown =
        if per < 1e-3 { format!("{:.2} µs", per * 1e6) } else { format!("{:.3} ms", per * 1e3) };
    println!("{name:52} {shown:>12}/op  ({n} ops){extra}");
}

/// This process's CPU time so far (user + system, in clock ticks of 10 ms).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// PostgreSQL: `SELECT 1` through a pool against a held connection. The pool pings every
/// connection it takes back (in a task of its own), so wall time hardly differs; this process's
/// CPU time does.
async fn bench_postgres_connection(url: &str) {
    use sqlx::postgres::PgPoolOptions;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .test_before_acquire(false)
        .connect(url)
        .await
        .unwrap();
    const N: u64 = 10_000;
    for round in 1..=2 {
        let (t, cpu) = (Instant::now(), cpu_ticks());
        for _ in 0..N {
            sqlx::query("SELECT 1").execute(&pool).await.unwrap();
        }
        let used = (cpu_ticks() - cpu) as f64 * 1e4 / N as f64;
        let extra = format!(", {used:.1} µs CPU/op");
        report(&format!("postgres SELECT 1, pool (round {round})"), t.elapsed(), N, &extra);
        let mut conn = pool.acquire().await.unwrap();
        let (t, cpu) = (Instant::now(), cpu_ticks());
        for _ in 0..N {
            sqlx::query("SELECT 1").execute(&mut *conn).await.unwrap();
        }
        let used = (cpu_ticks() - cpu) as f64 * 1e4 / N as f64;
        let extra = format!(", {used:.1} µs CPU/op");
        report(&format!("postgres SELECT 1, held (round {round})"), t.elapsed(), N, &extra);
    }
    pool.close().await;
}

/// One statement through a one-connection pool, and on a held connection, interleaved.
async fn bench_sqlite_connection() {
    use sqlx::{Executor as _, sqlite::SqlitePoolOptions};
    let dir = tempfile::tempdir().unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("conn.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .unwrap();
    pool.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)").await.unwrap();
    const N: u64 = 10_000;
    for round in 1..=2 {
        for (what, sql) in [("SELECT 1", "SELECT 1"), ("INSERT", "INSERT INTO t (v) VALUES ('x')")]
        {
            let t = Instant::now();
            for _ in 0..N {
                sqlx::query(sql).execute(&pool).await.unwrap();
            }
            report(&format!("sqlite {what}, pool of one (round {round})"), t.elapsed(), N, "");
            let mut conn = pool.acquire().await.unwrap();
            let t = Instant::now();
            for _ in 0..N {
                sqlx::query(sql).execute(&mut *conn).await.unwrap();
            }
            report(&format!("sqlite {what}, held connection (round {round})"), t.elapsed(), N, "");
        }
    }
    pool.close().await;
}

fn bench_parse() {
    let json = message_json(1, 2, 3);
    let run = |n: u64| {
        let t = Instant::now();
        for _ in 0..n {
            let event = Event::from_json(std::hint::black_box(&json)).expect("valid event");
            std::hint::black_box(&event);
        }
        t.elapsed()
    };
    run(10_000);
    let n = 200_000;
    report("Event::from_json (m.room.message, 330 B)", run(n), n, "");
}

/// `n` transactions of `k` events each, all new; returns the total time.
async fn accept_loop(store: &Store, run: u64, first: u64, n: u64, k: u64) -> Duration {
    let mut jsons: Vec<String> = Vec::with_capacity(usize::try_from(k).unwrap());
    let mut txn_id = String::new();
    let mut total = Duration::ZERO;
    for txn in first..first + n {
        jsons.clear();
        for i in 0..k {
            jsons.push(message_json(run, txn, i));
        }
        let events: Vec<NewEvent<'_>> = jsons
            .iter()
            .enumerate()
            .map(|(i, j)| NewEvent {
                event_id: Cow::Owned(format!("${run:011x}{txn:016x}{i:016x}")),
                room_id: Cow::Owned(format!("!bench{:06}qzXHbLcFoMiWdNrT:localhost", i % 50)),
                json: j,
            })
            .collect();
        txn_id.clear();
        let _ = write!(txn_id, "bench{run:x}.{txn}");
        let t = Instant::now();
        store.accept_transaction(&txn_id, "hash", &events).await.expect("accept");
        total += t.elapsed();
    }
    total
}

async fn bench_accept(name: &str, store: &Store) {
    let run = u64::from(std::process::id());
    let mut next = 0;
    for (k, warm, n) in [(1u64, 100u64, 2_000u64), (100, 10, 200)] {
        accept_loop(store, run, next, warm, k).await;
        next += warm;
        let total = accept_loop(store, run, next, n, k).await;
        next += n;
        let per_event = total.as_secs_f64() / (n * k) as f64 * 1e6;
        report(
            &format!("{name}: accept_transaction K={k}"),
            total,
            n,
            &format!(", {per_event:.1} µs/event"),
        );
    }
}

fn room(r: u64) -> ruma::OwnedRoomId {
    ruma::RoomId::parse(format!("!room{r:06}:localhost")).expect("room ID")
}

fn user(u: u64) -> ruma::OwnedUserId {
    ruma::UserId::parse(format!("@user{u:07}:localhost")).expect("user ID")
}

/// Loads the membership and registration rows with set-based inserts; returns the time taken.
async fn load_rows(url: &str, postgres: bool) -> Duration {
    let t = Instant::now();
    if postgres {
        let pool = sqlx::PgPool::connect(url).await.expect("connect");
        let n = MEMBERSHIP_ROWS - 1;
        for sql in [
            format!(
                "INSERT INTO mx_membership (room_id, user_id, membership) \
                 SELECT '!room' || lpad((g % {ROOMS})::text, 6, '0') || ':localhost', \
                 '@user' || lpad(g::text, 7, '0') || ':localhost', 'join' \
                 FROM generate_series(0, {n}) AS g"
            ),
            format!(
                "INSERT INTO mx_registered (user_id, registered_at) \
                 SELECT '@user' || lpad(g::text, 7, '0') || ':localhost', 0 \
                 FROM generate_series(0, {n}) AS g"
            ),
            "ANALYZE mx_membership".to_owned(),
            "ANALYZE mx_registered".to_owned(),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await.expect("load");
        }
        pool.close().await;
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.expect("connect");
        let n = MEMBERSHIP_ROWS - 1;
        let series = format!(
            "WITH RECURSIVE s(g) AS (SELECT 0 UNION ALL SELECT g + 1 FROM s WHERE g < {n})"
        );
        for sql in [
            format!(
                "{series} INSERT INTO mx_membership (room_id, user_id, membership) \
                 SELECT printf('!room%06d:localhost', g % {ROOMS}), \
                 printf('@user%07d:localhost', g), 'join' FROM s"
            ),
            format!(
                "{series} INSERT INTO mx_registered (user_id, registered_at) \
                 SELECT printf('@user%07d:localhost', g), 0 FROM s"
            ),
            "ANALYZE".to_owned(),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await.expect("load");
        }
        pool.close().await;
    }
    t.elapsed()
}

async fn bench_lookups(name: &str, store: &Store, url: &str, postgres: bool) {
    // The same lookups on an (almost) empty store first: what the row count adds.
    lookup_loops(&format!("{name}, empty store"), store, false).await;
    let load = load_rows(url, postgres).await;
    // The rows went in past the store: its in-memory cache still says "absent" for the keys
    // looked up above. Every key below is looked up once, so each lookup is a database query.
    store.forget_caches();
    println!(
        "{name}: loaded {MEMBERSHIP_ROWS} membership + {MEMBERSHIP_ROWS} registered rows in {:.1} s",
        load.as_secs_f64()
    );
    lookup_loops(&format!("{name}, 1M rows"), store, true).await;
}

/// Membership hits and misses and `is_registered`; `loaded` says whether the rows exist.
async fn lookup_loops(name: &str, store: &Store, loaded: bool) {
    // A cheap spread over the rows, so that lookups do not stay in one page.
    let pick = |i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % MEMBERSHIP_ROWS;
    let n = 20_000u64;
    let warm = 2_000u64;
    for (what, offset) in [("membership, hit", 0), ("membership, miss", 1)] {
        let mut total = Duration::ZERO;
        for i in 0..warm + n {
            let u = pick(i);
            let (r, u) = (room((u + offset) % ROOMS), user(u));
            let t = Instant::now();
            let m = store.membership(&r, &u).await.expect("membership");
            if i >= warm {
                total += t.elapsed();
            }
            let expected = (loaded && offset == 0).then_some(Membership::Join);
            assert_eq!(m, expected, "{r} {u}");
        }
        let what = if loaded { what } else { "membership (absent)" };
        report(&format!("{name}: {what}"), total, n, "");
        if !loaded {
            break;
        }
    }
    let mut total = Duration::ZERO;
    for i in 0..warm + n {
        let u = user(pick(i));
        let t = Instant::now();
        let yes = store.is_registered(&u).await.expect("is_registered");
        if i >= warm {
            total += t.elapsed();
        }
        assert_eq!(yes, loaded);
    }
    report(&format!("{name}: is_registered"), total, n, "");
}

#[tokio::main]
async fn main() {
    bench_parse();
    bench_sqlite_connection().await;

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/bench.db", dir.path().display());
    let sqlite = DatabaseConfig { url: url.clone(), ..DatabaseConfig::default() };
    let store = Store::connect(&sqlite).await.unwrap();
    bench_accept("sqlite", &store).await;
    bench_lookups("sqlite", &store, &url, false).await;
    drop(store);

    if let Ok(url) = std::env::var("MXBRIDGE_TEST_POSTGRES") {
        let schema = format!("bench_inbox_{}", std::process::id());
        let admin = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .unwrap();
        let sep = if url.contains('?') { '&' } else { '?' };
        let pg_url = format!("{url}{sep}options[search_path]={schema}");
        // Plain TCP, as the store connects on loopback (docs/deploy.md).
        let plain = if url.contains("sslmode") {
            url.clone()
        } else {
            format!("{url}{sep}sslmode=disable")
        };
        bench_postgres_connection(&plain).await;
        let pg = DatabaseConfig { url: pg_url.clone(), ..DatabaseConfig::default() };
        let store = Store::connect(&pg).await.unwrap();
        bench_accept("postgres", &store).await;
        bench_lookups("postgres", &store, &pg_url, true).await;
        drop(store);
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&admin)
            .await
            .unwrap();
    }
}
