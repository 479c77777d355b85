//! Cached ghost paths: `ensure_joined` and `ensure_registered` on a cache hit, and a send by a
//! registered, joined ghost.
//!
//! Run with `cargo bench --bench intent`. A stub homeserver on 127.0.0.1 counts requests, so the
//! figures come with the number of HTTP requests each operation made. Both stores are measured
//! side by side (PostgreSQL when `MXBRIDGE_TEST_POSTGRES` is set).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use axum::{Json, Router, extract::State, routing::any};
use mxbridge::{
    Registration, Store,
    client::Client,
    config::DatabaseConfig,
    intent::Intent,
    store::{MemberRow, Membership},
};

const REG: &str = "id: bench\nurl: null\nas_token: as_token_for_bench_0123456789\n\
    hs_token: hs_token_for_bench_0123456789\nsender_localpart: _b_bot\n\
    namespaces:\n  users:\n    - exclusive: true\n      regex: '@_b_.*:localhost'\n";

async fn stub(State(count): State<Arc<AtomicU64>>) -> Json<serde_json::Value> {
    count.fetch_add(1, Ordering::Relaxed);
    Json(serde_json::json!({ "event_id": "$stub" }))
}

async fn bench_store(name: &str, store: Store) {
    let count = Arc::new(AtomicU64::new(0));
    let app = Router::new().fallback(any(stub)).with_state(count.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let registration = Registration::from_yaml(REG).unwrap();
    let client =
        Client::new(url.parse().unwrap(), ruma::server_name!("localhost"), registration).unwrap();
    let room: ruma::OwnedRoomId = "!bench:localhost".try_into().unwrap();
    let ghost: ruma::OwnedUserId = "@_b_ghost:localhost".try_into().unwrap();
    store.mark_registered(&ghost).await.unwrap();
    store.set_membership(MemberRow::new(&room, &ghost, Membership::Join)).await.unwrap();
    let intent = Intent::new(client, store, ghost).unwrap();

    let n = 20_000u64;
    let before = count.load(Ordering::Relaxed);
    let t = Instant::now();
    for _ in 0..n {
        intent.ensure_joined(&room).await.unwrap();
    }
    let per = t.elapsed() / u32::try_from(n).unwrap();
    let requests = count.load(Ordering::Relaxed) - before;
    println!(
        "{name:8} ensure_joined cache hit: {per:>10.2?}/op, {requests} HTTP requests for {n} calls"
    );

    let n = 20_000u64;
    let before = count.load(Ordering::Relaxed);
    let t = Instant::now();
    for _ in 0..n {
        intent.ensure_registered().await.unwrap();
    }
    let per = t.elapsed() / u32::try_from(n).unwrap();
    let requests = count.load(Ordering::Relaxed) - before;
    println!(
        "{name:8} ensure_registered hit:   {per:>10.2?}/op, {requests} HTTP requests for {n} calls"
    );

    let n = 2_000u64;
    let before = count.load(Ordering::Relaxed);
    let t = Instant::now();
    for i in 0..n {
        intent.send_text(&room, &format!("message {i}")).await.unwrap();
    }
    let per = t.elapsed() / u32::try_from(n).unwrap();
    let requests = count.load(Ordering::Relaxed) - before;
    println!(
        "{name:8} cached ghost send:        {per:>10.2?}/op, {requests} HTTP requests for {n} sends"
    );
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = DatabaseConfig {
        url: format!("sqlite://{}/bench.db", dir.path().display()),
        ..DatabaseConfig::default()
    };
    bench_store("sqlite", Store::connect(&sqlite).await.unwrap()).await;
    if let Ok(url) = std::env::var("MXBRIDGE_TEST_POSTGRES") {
        let schema = format!("bench_{}", std::process::id());
        let admin = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .unwrap();
        let sep = if url.contains('?') { '&' } else { '?' };
        let pg = DatabaseConfig {
            url: format!("{url}{sep}options[search_path]={schema}"),
            ..DatabaseConfig::default()
        };
        bench_store("postgres", Store::connect(&pg).await.unwrap()).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&admin)
            .await
            .unwrap();
    }
}
