//! The homeserver down, refusing or slow, seen from the outgoing side: sends through
//! `mxbridge::client::Client` against a local axum stub that fails for a while and recovers.
//! A send is retried within its policy's bounds with the same txn ID, and is either delivered
//! once after recovery or reported as failed; the homeserver never gets it twice. Meanwhile the
//! inbox keeps accepting transactions.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::put,
};
use mxbridge::client::{Client, RetryPolicy, new_txn_id};
use ruma::{
    api::client::message::send_message_event, events::room::message::RoomMessageEventContent,
    room_id,
};

use crate::common::{
    AS_TOKEN, Running, fresh_database, http, put_txn, registration_yaml, txn_body, wait_until,
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Up,
    /// 503 before looking at the request.
    Unavailable,
    /// Stores the event, then answers 504 (a proxy timed out after the homeserver acted).
    StoreThen504,
    /// Stores the event and answers after this long.
    Slow(Duration),
}

#[derive(Default)]
struct HsState {
    mode: Mutex<Option<Mode>>,
    /// Requests seen per txn ID.
    requests: Mutex<BTreeMap<String, u32>>,
    /// Events stored, by txn ID (the homeserver's idempotency), with their event IDs.
    stored: Mutex<BTreeMap<String, String>>,
    /// Every event posted into the room (what a human would see).
    timeline: Mutex<Vec<String>>,
}

async fn send(
    State(s): State<Arc<HsState>>,
    Path((room, _kind, txn)): Path<(String, String, String)>,
    headers: axum::http::HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Response {
    assert_eq!(
        headers.get("authorization").and_then(|v| v.to_str().ok()),
        Some(format!("Bearer {AS_TOKEN}").as_str())
    );
    *s.requests.lock().unwrap().entry(txn.clone()).or_default() += 1;
    let mode = s.mode.lock().unwrap().unwrap_or(Mode::Up);
    if mode == Mode::Unavailable {
        let body = serde_json::json!({"errcode": "M_UNKNOWN", "error": "down"});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let event_id = {
        let mut stored = s.stored.lock().unwrap();
        let next = stored.len();
        stored
            .entry(txn.clone())
            .or_insert_with(|| {
                s.timeline.lock().unwrap().push(format!("{room} {}", body["body"]));
                format!("$ev{next}")
            })
            .clone()
    };
    match mode {
        Mode::StoreThen504 => {
            let body = serde_json::json!({"errcode": "M_UNKNOWN", "error": "gateway timeout"});
            (StatusCode::GATEWAY_TIMEOUT, Json(body)).into_response()
        }
        Mode::Slow(d) => {
            tokio::time::sleep(d).await;
            Json(serde_json::json!({ "event_id": event_id })).into_response()
        }
        _ => Json(serde_json::json!({ "event_id": event_id })).into_response(),
    }
}

/// The stub homeserver; `None` from `serve` while it is "down" (connection refused).
struct StubHs {
    state: Arc<HsState>,
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl StubHs {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut hs = Self { state: Arc::default(), addr, task: None };
        hs.serve(listener);
        hs
    }
    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/_matrix/client/v3/rooms/{room}/send/{kind}/{txn}", put(send))
            .with_state(self.state.clone());
        self.task = Some(tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        }));
    }
    /// Stops listening: connections are refused until `up`.
    async fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
    async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
    fn set(&self, mode: Mode) {
        *self.state.lock_mode() = Some(mode);
    }
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    fn requests(&self) -> BTreeMap<String, u32> {
        self.state.requests.lock().unwrap().clone()
    }
    fn timeline(&self) -> Vec<String> {
        self.state.timeline.lock().unwrap().clone()
    }
    fn reset(&self) {
        self.state.requests.lock().unwrap().clear();
        self.state.timeline.lock().unwrap().clear();
    }
}

impl HsState {
    fn lock_mode(&self) -> std::sync::MutexGuard<'_, Option<Mode>> {
        self.mode.lock().unwrap()
    }
}

/// 100 ms doubling to 400 ms, 8 attempts: at most 0.1+0.2+0.4*5 = 2.3 s of waiting.
const POLICY: RetryPolicy = RetryPolicy {
    max_attempts: 8,
    base_delay: Duration::from_millis(100),
    max_delay: Duration::from_millis(400),
    max_retry_after: Duration::from_secs(1),
};
const BUDGET: Duration = Duration::from_millis(2300);

fn client(hs: &StubHs) -> Client {
    let reg = mxbridge::Registration::from_yaml(&registration_yaml("null")).unwrap();
    Client::with_retry_policy(
        hs.url().parse().unwrap(),
        "localhost".try_into().unwrap(),
        reg,
        POLICY,
    )
    .unwrap()
}

/// A text message to `!room:localhost`, with a fresh transaction ID.
fn text_request(text: &str) -> send_message_event::v3::Request {
    let content = RoomMessageEventContent::text_plain(text);
    let room = room_id!("!room:localhost").to_owned();
    send_message_event::v3::Request::new(room, new_txn_id(), &content).unwrap()
}

async fn send_text(c: &Client, text: &str) -> (Result<ruma::OwnedEventId, String>, Duration) {
    let t = Instant::now();
    let r = c
        .send(text_request(text), None)
        .await
        .map(|response| response.event_id)
        .map_err(|e| e.to_string());
    (r, t.elapsed())
}

#[tokio::test]
async fn sends_retry_with_one_txn_id_and_post_once_or_fail_within_bounds() {
    let mut hs = StubHs::start().await;
    let c = client(&hs);
    let mut figures = Vec::new();

    // 1. 503 for 700 ms, then up: delivered once after recovery, one txn ID throughout.
    hs.set(Mode::Unavailable);
    let recover = {
        let state = hs.state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            *state.lock_mode() = Some(Mode::Up);
        })
    };
    let (r, took) = send_text(&c, "after 503").await;
    recover.await.unwrap();
    let reqs = hs.requests();
    figures.push(format!("503 for 0.7s: {} attempts, {:.2}s, {r:?}", sum(&reqs), secs(took)));
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(reqs.len(), 1, "one txn ID for every attempt: {reqs:?}");
    assert!(sum(&reqs) >= 3, "it retried: {reqs:?}");
    assert_eq!(hs.timeline().len(), 1, "posted once");
    hs.reset();

    // 2. Connection refused for 700 ms, then up.
    hs.down().await;
    let back = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        hs.up().await;
        hs
    });
    let (r, took) = send_text(&c, "after refused").await;
    let mut hs = back.await.unwrap();
    let reqs = hs.requests();
    figures.push(format!(
        "refused for 0.7s: {} request(s) reached it, {:.2}s, {r:?}",
        sum(&reqs),
        secs(took)
    ));
    assert!(r.is_ok(), "{r:?}");
    assert!(took >= Duration::from_millis(600), "it waited for the homeserver: {took:?}");
    assert_eq!((reqs.len(), hs.timeline().len()), (1, 1), "{reqs:?}");
    hs.reset();

    // 3. The homeserver acts, then a proxy answers 504: the retry has the same txn ID, so the
    //    homeserver deduplicates it and the room sees one message.
    hs.set(Mode::StoreThen504);
    let flip = {
        let state = hs.state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(250)).await;
            *state.lock_mode() = Some(Mode::Up);
        })
    };
    let (r, took) = send_text(&c, "504 after store").await;
    flip.await.unwrap();
    let reqs = hs.requests();
    figures.push(format!(
        "504 after storing: {} attempts, {:.2}s, posted {}",
        sum(&reqs),
        secs(took),
        hs.timeline().len()
    ));
    assert!(r.is_ok(), "{r:?}");
    assert!(sum(&reqs) >= 2 && reqs.len() == 1, "{reqs:?}");
    assert_eq!(hs.timeline().len(), 1, "never posted twice");
    hs.reset();

    // 4. Slow (1.5 s to answer): waited for, posted once, no retry.
    hs.set(Mode::Slow(Duration::from_millis(1500)));
    let (r, took) = send_text(&c, "slow").await;
    let reqs = hs.requests();
    figures.push(format!("slow 1.5s: {} attempt(s), {:.2}s", sum(&reqs), secs(took)));
    assert!(r.is_ok() && sum(&reqs) == 1 && hs.timeline().len() == 1, "{r:?} {reqs:?}");
    hs.reset();

    // 5. Down for longer than the retry budget: reported as failed within bounds, not posted.
    hs.set(Mode::Unavailable);
    let (r, took) = send_text(&c, "never").await;
    let reqs = hs.requests();
    figures.push(format!(
        "503 for good: {} attempts, failed after {:.2}s: {r:?}",
        sum(&reqs),
        secs(took)
    ));
    assert!(r.is_err(), "reported as failed");
    assert_eq!(sum(&reqs), POLICY.max_attempts, "every attempt, no more: {reqs:?}");
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert!(took >= BUDGET && took < BUDGET + Duration::from_secs(2), "{took:?}");
    assert!(hs.timeline().is_empty());
    hs.reset();

    // 6. Refused for good: failed within bounds.
    hs.down().await;
    let (r, took) = send_text(&c, "never either").await;
    figures.push(format!("refused for good: failed after {:.2}s", secs(took)));
    assert!(r.is_err() && took < BUDGET + Duration::from_secs(2), "{r:?} {took:?}");
    hs.up().await;

    println!("homeserver-down: {}", figures.join("; "));
}

fn sum(m: &BTreeMap<String, u32>) -> u32 {
    m.values().sum()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// While the bridge's own sends fail (its client points at a homeserver answering 503), the
/// inbox keeps accepting transactions and the handler keeps running.
#[tokio::test]
async fn inbox_accepts_while_outgoing_sends_fail() {
    let hs = StubHs::start().await;
    hs.set(Mode::Unavailable);
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("sqlite", dir.path()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = Running::start_on(listener, &hs.url(), &db, "{}", &registration_yaml("null")).await;
    let ctx = app.bridge.ctx.clone();
    let sending = tokio::spawn(async move { ctx.client().send(text_request("stuck"), None).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = http();
    let t = Instant::now();
    let status = put_txn(&client, &app.url(""), "1", &txn_body(&[("!r:localhost", "$in")])).await;
    let put_took = t.elapsed();
    assert_eq!(status, 200);
    assert!(wait_until(5, || app.bridge.handled_ids() == ["$in"]).await);
    let still_failing = !sending.is_finished();
    let attempts = sum(&hs.requests());
    println!(
        "inbox-while-hs-down: PUT answered 200 in {} ms and handled while the send was still \
         retrying ({attempts} attempts so far)",
        put_took.as_millis()
    );
    assert!(still_failing, "the send should still be retrying");
    assert!(put_took < Duration::from_secs(1), "{put_took:?}");
    hs.set(Mode::Up);
    let sent = sending.await.unwrap();
    assert!(sent.is_ok(), "{sent:?}");
    assert_eq!(hs.timeline().len(), 1);
    app.stop().await;
}
