//! Faults under load: the bridge runs in a child process (the pattern of `crash.rs`) while the
//! parent plays the homeserver, sending a steady stream of transactions of unique events and
//! resending every transaction that did not get a 200 (one in flight, same txn ID, as Synapse
//! does). The child is SIGKILLed at random points, or SIGTERMed, and restarted.
//!
//! Every life of the child records the event IDs it handled in its own file, so a duplicate can
//! be placed: the framework promises at-least-once handling where the only second delivery is
//! of an event whose handler finished but whose record did not commit before the kill. Such an
//! event is one of the last `inbox.record_window` its room handled in that life (a room handles
//! one event at a time). SQLite runs with the smallest window (1) and the default one, PostgreSQL
//! with the default one.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use mxbridge::config::DatabaseConfig;
use serde::{Deserialize, Serialize};

use crate::{
    common::{HS_TOKEN, Running, fresh_database, http, postgres_url, txn_body, wait_until},
    crash::{free_port, wait_live},
};

const ROOMS: usize = 4;

#[derive(Serialize, Deserialize)]
struct ChildSpec {
    db_url: String,
    port: u16,
    record_file: String,
    delay_ms: u64,
    record_window: usize,
}

/// Not a test of its own: the body of the child process. Runs the recording bridge until it
/// is killed, or until SIGTERM, which stops it gracefully (as `cli::main` does).
#[tokio::test]
async fn chaos_child_entry_point() {
    let Ok(spec) = std::env::var("MXB_CHAOS_CHILD") else { return };
    let spec: ChildSpec = serde_json::from_str(&spec).unwrap();
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", spec.port)).await.unwrap();
    let db = DatabaseConfig { url: spec.db_url, ..DatabaseConfig::default() };
    let bridge = format!("{{record_file: '{}', delay_ms: {}}}", spec.record_file, spec.delay_ms);
    let app = Running::start_on_with(
        listener,
        "http://127.0.0.1:1",
        &db,
        &bridge,
        &crate::common::registration_yaml("null"),
        "",
        &format!("record_window: {}, ", spec.record_window),
    )
    .await;
    tokio::select! {
        _ = term.recv() => app.stop().await,
        () = tokio::time::sleep(Duration::from_secs(120)) => {}
    }
}

fn spawn_child(spec: &ChildSpec) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["chaos::chaos_child_entry_point", "--exact", "--nocapture", "--test-threads=1"])
        .env("MXB_CHAOS_CHILD", serde_json::to_string(spec).unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A tiny deterministic PRNG (xorshift64*), seeded from the clock; the seed is printed.
struct Rng(u64);

impl Rng {
    fn from_clock() -> Self {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        Self(u64::try_from(t.as_nanos() % u128::from(u64::MAX)).unwrap() | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

#[derive(Default)]
struct SenderStats {
    txns: AtomicU64,
    resends: AtomicU64,
    non_200: AtomicU64,
}

/// The homeserver: sends transaction after transaction, each until it gets a 200. Returns the
/// acknowledged event IDs.
async fn homeserver(
    base: String,
    stop: Arc<AtomicBool>,
    stats: Arc<SenderStats>,
    tag: &'static str,
) -> Vec<String> {
    let client = http();
    let mut acked = Vec::new();
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let ids: Vec<(String, String)> = (0..3)
            .map(|i| {
                let e = n * 3 + i;
                let room = format!("!r{}:localhost", e % ROOMS);
                (room, format!("${tag}{e}r{}", e % ROOMS))
            })
            .collect();
        let refs: Vec<(&str, &str)> = ids.iter().map(|(r, e)| (r.as_str(), e.as_str())).collect();
        let body = txn_body(&refs);
        let txn_id = n.to_string();
        let mut first = true;
        loop {
            if !first {
                stats.resends.fetch_add(1, Ordering::SeqCst);
            }
            first = false;
            let sent = client
                .put(format!("{base}/_matrix/app/v1/transactions/{txn_id}"))
                .bearer_auth(HS_TOKEN)
                .header("content-type", "application/json")
                .timeout(Duration::from_secs(10))
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status() == 200 => break,
                Ok(_) | Err(_) => {
                    stats.non_200.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        stats.txns.fetch_add(1, Ordering::SeqCst);
        acked.extend(ids.into_iter().map(|(_, e)| e));
        n += 1;
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    acked
}

fn recorded(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

fn room_of(event_id: &str) -> &str {
    event_id.rsplit_once('r').map_or("", |(_, r)| r)
}

/// What the lives recorded, checked against what was acknowledged.
struct Tally {
    handled: usize,
    lost: Vec<String>,
    /// Events handled in two lives, the first time as one of the last `window` events of its
    /// room in that life.
    window_duplicates: usize,
    /// Any other second handling (same life, or before the room's window): a bug.
    bad_duplicates: Vec<String>,
}

fn tally(acked: &[String], lives: &[Vec<String>], window: usize) -> Tally {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut window_duplicates = 0;
    let mut bad_duplicates = Vec::new();
    for (life, ids) in lives.iter().enumerate() {
        let mut this_life = BTreeSet::new();
        for id in ids {
            if !this_life.insert(id.as_str()) {
                bad_duplicates.push(format!("{id} twice in life {life}"));
                continue;
            }
            if let Some(&earlier) = seen.get(id.as_str()) {
                if among_last(&lives[earlier], id, window) {
                    window_duplicates += 1;
                    // A third handling is checked against this life, the one before it.
                    seen.insert(id, life);
                } else {
                    bad_duplicates.push(format!("{id} in lives {earlier} and {life}"));
                }
            } else {
                seen.insert(id, life);
            }
        }
    }
    let lost = acked.iter().filter(|e| !seen.contains_key(e.as_str())).cloned().collect();
    Tally { handled: seen.len(), lost, window_duplicates, bad_duplicates }
}

/// Whether `id` is one of the last `window` events its room recorded in `life`.
fn among_last(life: &[String], id: &str, window: usize) -> bool {
    life.iter().rev().filter(|e| room_of(e) == room_of(id)).take(window).any(|e| e == id)
}

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    Kill,
    Term,
}

async fn run_under_faults(
    backend: &str,
    fault: Fault,
    rounds: usize,
    delay_ms: u64,
    record_window: usize,
) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database(backend, dir.path()).await;
    let client = http();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let life_file = |k: usize| dir.path().join(format!("life{k}.txt"));
    let spec = |k: usize| ChildSpec {
        db_url: db.url.clone(),
        port,
        record_file: life_file(k).display().to_string(),
        delay_ms,
        record_window,
    };
    let mut rng = Rng::from_clock();
    let seed = rng.0;
    let mut child = spawn_child(&spec(0));
    wait_live(&client, port).await;

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(SenderStats::default());
    let tag = if fault == Fault::Kill { "k" } else { "t" };
    let sender = tokio::spawn(homeserver(base.clone(), stop.clone(), stats.clone(), tag));
    let mut term_exit_ms = Vec::new();
    for k in 1..=rounds {
        tokio::time::sleep(Duration::from_millis(50 + rng.below(450))).await;
        match fault {
            Fault::Kill => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
            }
            Fault::Term => {
                let t = Instant::now();
                let ok = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "could not SIGTERM the child");
                let status = child.wait().unwrap();
                assert!(status.success(), "the child did not stop cleanly on SIGTERM: {status}");
                term_exit_ms.push(t.elapsed().as_millis());
            }
        }
        child = spawn_child(&spec(k));
        wait_live(&client, port).await;
    }
    // Let the load run a little in the last life, then stop it and let the inbox drain.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let acked = sender.await.unwrap();
    let last = life_file(rounds);
    let acked_set: BTreeSet<&str> = acked.iter().map(String::as_str).collect();
    let drained = wait_until(60, || {
        let handled: BTreeSet<String> =
            (0..=rounds).flat_map(|k| recorded(&life_file(k))).collect();
        acked_set.iter().all(|e| handled.contains(*e))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let lives: Vec<Vec<String>> = (0..=rounds).map(|k| recorded(&life_file(k))).collect();
    let t = tally(&acked, &lives, record_window);
    let store = mxbridge::Store::connect(&db).await.unwrap();
    let stats_db = store.inbox_stats().await.unwrap();
    store.close().await;
    let name = if fault == Fault::Kill { "sigkill-under-load" } else { "sigterm-under-load" };
    println!(
        "{name}[{backend}]: seed={seed} faults={rounds} record_window={record_window} txns={} \
         events_acked={} handled={} \
         lost={} duplicates_in_at_least_once_window={} other_duplicates={} resends={} \
         non_200={} pending_after={} last_life_handled={} term_exit_ms={term_exit_ms:?} \
         took={:.1}s",
        stats.txns.load(Ordering::SeqCst),
        acked.len(),
        t.handled,
        t.lost.len(),
        t.window_duplicates,
        t.bad_duplicates.len(),
        stats.resends.load(Ordering::SeqCst),
        stats.non_200.load(Ordering::SeqCst),
        stats_db.pending,
        recorded(&last).len(),
        started.elapsed().as_secs_f64(),
    );
    assert!(drained && t.lost.is_empty(), "lost events (seed {seed}): {:?}", t.lost);
    assert!(t.bad_duplicates.is_empty(), "duplicates outside the window: {:?}", t.bad_duplicates);
    assert!(
        t.window_duplicates <= rounds * ROOMS * record_window,
        "more duplicates than the rooms' windows at the kills hold: {}",
        t.window_duplicates
    );
    if fault == Fault::Term {
        assert_eq!(t.window_duplicates, 0, "a graceful stop must not hand an event out twice");
    }
    assert_eq!(stats_db.pending, 0, "the inbox drained");
    assert!(acked.len() >= rounds * 3, "the load ran: {} events", acked.len());
}

fn is_child() -> bool {
    std::env::var("MXB_CHAOS_CHILD").is_ok() || std::env::var("MXB_CRASH_CHILD").is_ok()
}

#[tokio::test]
async fn sigkill_20_times_under_load_sqlite() {
    if is_child() {
        return;
    }
    run_under_faults("sqlite", Fault::Kill, 20, 3, 1).await;
}

#[tokio::test]
async fn sigkill_20_times_under_load_sqlite_default_window() {
    if is_child() {
        return;
    }
    run_under_faults("sqlite", Fault::Kill, 20, 3, default_window()).await;
}

#[tokio::test]
async fn sigkill_20_times_under_load_postgres() {
    if is_child() {
        return;
    }
    if postgres_url().is_none() {
        eprintln!("skipped: set MXBRIDGE_TEST_POSTGRES to run the PostgreSQL suite");
        return;
    }
    run_under_faults("postgres", Fault::Kill, 20, 3, default_window()).await;
}

#[tokio::test]
async fn sigterm_5_times_under_load_keeps_every_accepted_event_sqlite() {
    if is_child() {
        return;
    }
    run_under_faults("sqlite", Fault::Term, 5, 20, 1).await;
}

#[tokio::test]
async fn sigterm_5_times_under_load_keeps_every_accepted_event_postgres() {
    if is_child() {
        return;
    }
    if postgres_url().is_none() {
        eprintln!("skipped: set MXBRIDGE_TEST_POSTGRES to run the PostgreSQL suite");
        return;
    }
    run_under_faults("postgres", Fault::Term, 5, 20, default_window()).await;
}

fn default_window() -> usize {
    mxbridge::config::InboxConfig::default().record_window
}

#[test]
fn tally_tells_window_duplicates_from_others() {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let acked = s(&["$k0r0", "$k1r1", "$k2r0", "$k3r1"]);
    let life0 = s(&["$k0r0", "$k1r1", "$k2r0", "$k3r1"]);
    // $k2r0 was the last of room 0 in life 0: in a window of one.
    let t = tally(&acked, &[life0.clone(), s(&["$k2r0"])], 1);
    assert_eq!((t.window_duplicates, t.bad_duplicates.len(), t.lost.len()), (1, 0, 0));
    // $k1r1 was the second-to-last of room 1: outside a window of one, inside one of two.
    assert_eq!(tally(&acked, &[life0.clone(), s(&["$k1r1"])], 1).bad_duplicates.len(), 1);
    let t = tally(&acked, &[life0.clone(), s(&["$k1r1"])], 2);
    assert_eq!((t.window_duplicates, t.bad_duplicates.len()), (1, 0));
    // Handled in three lives: the third handling is placed in the second life, not the first.
    let t = tally(&acked, &[life0.clone(), s(&["$k3r1"]), s(&["$k3r1"])], 1);
    assert_eq!((t.window_duplicates, t.bad_duplicates.len()), (2, 0));
    // In life 1 $k3r1 is not its room's last ($k1r1, a bad duplicate itself, came after it).
    let t = tally(&acked, &[life0.clone(), s(&["$k3r1", "$k1r1"]), s(&["$k3r1"])], 1);
    assert_eq!((t.window_duplicates, t.bad_duplicates.len()), (1, 2));
    // Twice in one life is never in a window.
    let t = tally(&acked, &[s(&["$k0r0", "$k0r0"])], 8);
    assert_eq!((t.bad_duplicates.len(), t.lost.len()), (1, 3));
}
