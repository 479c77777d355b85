//! In-process benchmark of what encryption costs a bridge per message: the bridge device's
//! matrix-sdk-crypto machine, its keys in the bridge's database (`SqlCryptoStore`).
//!
//! Run with
//! `CARGO_PROFILE_BENCH_LTO=off CARGO_PROFILE_BENCH_CODEGEN_UNITS=16 cargo bench --features encryption,testing --ignore-rust-version --bench crypto`
//! (PostgreSQL too when `MXBRIDGE_TEST_POSTGRES` is set, in a fresh schema dropped afterwards;
//! the profile variables only shorten the build: the release profile's fat LTO takes long with
//! the crypto crates). Plain `Instant` loops with a warm-up, bounded by a count. Measured, one
//! message at a time in one room with one Megolm session:
//!
//! - encrypt: what an intent's send into an encrypted room does once the room key is shared:
//!   the machine asked to share it (it finds nothing to do, but for a new session every 100
//!   messages, the default rotation, here shared with no device) and the content encrypted;
//! - decrypt: what the dispatcher does with an `m.room.encrypted` event: the machine decrypts it
//!   with the stored session, and the plaintext is parsed into the event handlers see.
//!
//! The session reaches the bridge's machine as an exported room key (imported), so no homeserver
//! is needed; an Olm-encrypted `m.room_key` ends in the same stored session.
//!
//! Then intake, side by side in one run: a running bridge (SQLite) with a counting handler takes
//! 10,000 messages in transactions of 50, one transaction in flight (as Synapse sends them),
//! once in clear and once encrypted (a real Olm peer shared its room key with the bridge device
//! first, through a transaction, as a client does). Reported: the transactions' rate (answered
//! after the commit) and the rate until every message was handled (decrypted first when
//! encrypted). The homeserver is a mock that answers the bridge device's start.

use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering};

use mxbridge::testing::{MockHomeserver, OlmPeer};
use mxbridge::{
    AppService, Bridge, BridgeResult, Config, Context, Event, MatrixRoomMessage, Registration,
    Store,
    crypto::{
        SqlCryptoStore,
        matrix_sdk_crypto::{
            DecryptionSettings, EncryptionSettings, OlmMachine, OlmMachineBuilder,
            RoomEventDecryptionResult, TrustRequirement,
            types::events::room::encrypted::EncryptedEvent,
        },
    },
};
use ruma::{device_id, events::AnyMessageLikeEventContent, room_id, serde::Raw, user_id};

const MESSAGES: u64 = 2_000;
const WARMUP: u64 = 100;

fn report(name: &str, total: Duration, n: u64) {
    let per = total.as_secs_f64() / n as f64;
    println!("{name:60} {:>9.1} µs/op  ({n} ops)", per * 1e6);
}

fn content(i: u64) -> Raw<AnyMessageLikeEventContent> {
    let json = serde_json::json!({
        "msgtype": "m.text",
        "body": format!("Message number {i}: the quick brown fox jumps over the lazy dog."),
        "m.mentions": {},
    });
    Raw::from_json(serde_json::value::to_raw_value(&json).unwrap())
}

/// An encrypted event as the homeserver pushes it.
fn event_json(i: u64, content: &str) -> String {
    format!(
        "{{\"event_id\":\"$e{i:016x}\",\"room_id\":\"!bench:localhost\",\"sender\":\"@alice:localhost\",\
         \"origin_server_ts\":{},\"type\":\"m.room.encrypted\",\"content\":{content},\"unsigned\":{{}}}}",
        1_764_000_000_000u64 + i
    )
}

async fn run(label: &str, store: Store) {
    let room = room_id!("!bench:localhost");
    // The sender: a human's client, its machine in memory.
    let alice = OlmMachine::new(user_id!("@alice:localhost"), device_id!("ALICE")).await;
    // The bridge device, its machine on the bridge's database.
    let bridge = OlmMachineBuilder::new(user_id!("@bot:localhost"), device_id!("MXBBENCH"))
        .with_crypto_store(SqlCryptoStore::new(store.clone()))
        .build()
        .await
        .unwrap();
    // Alice's one session covers every message she sends here (a client rotates it after 100
    // messages by default, as the bridge does below).
    let long = EncryptionSettings { rotation_period_msgs: 1_000_000, ..Default::default() };
    let no_one = std::iter::empty::<&ruma::UserId>();
    alice.share_room_key(room, no_one, long).await.unwrap();
    let keys = alice.store().export_room_keys(|_| true).await.unwrap();
    bridge.store().import_exported_room_keys(keys, |_, _| {}).await.unwrap();
    // The bridge's own outbound session, shared with no device (the sharing step then finds
    // nothing to do, as for a room whose members all hold the key).
    let no_one = std::iter::empty::<&ruma::UserId>();
    bridge.share_room_key(room, no_one, EncryptionSettings::default()).await.unwrap();

    // Messages from Alice, for the bridge to decrypt.
    let mut events = Vec::new();
    for i in 0..WARMUP + MESSAGES {
        let encrypted =
            alice.encrypt_room_event_raw(room, "m.room.message", &content(i)).await.unwrap();
        events.push(event_json(i, encrypted.content.json().get()));
    }

    let settings =
        DecryptionSettings { sender_device_trust_requirement: TrustRequirement::Untrusted };
    let mut decrypt_total = Duration::ZERO;
    for (i, json) in events.iter().enumerate() {
        let started = Instant::now();
        let raw = Raw::<EncryptedEvent>::from_json(
            serde_json::value::RawValue::from_string(json.clone()).unwrap(),
        );
        let result = bridge.try_decrypt_room_event(&raw, room, &settings).await.unwrap();
        let RoomEventDecryptionResult::Decrypted(plain) = result else { panic!("{result:?}") };
        let event = Event::from_json(plain.event.json().get()).unwrap();
        if i as u64 >= WARMUP {
            decrypt_total += started.elapsed();
        }
        assert_eq!(event.kind, "m.room.message");
    }
    report(&format!("decrypt an m.room.encrypted event ({label})"), decrypt_total, MESSAGES);

    let mut encrypt_total = Duration::ZERO;
    for i in 0..WARMUP + MESSAGES {
        let started = Instant::now();
        let no_one = std::iter::empty::<&ruma::UserId>();
        let requests =
            bridge.share_room_key(room, no_one, EncryptionSettings::default()).await.unwrap();
        let encrypted =
            bridge.encrypt_room_event_raw(room, "m.room.message", &content(i)).await.unwrap();
        if i >= WARMUP {
            encrypt_total += started.elapsed();
        }
        assert!(requests.is_empty());
        assert!(encrypted.content.json().get().contains("ciphertext"));
    }
    report(
        &format!("encrypt a message, room key already shared ({label})"),
        encrypt_total,
        MESSAGES,
    );
}

/// Messages handled by [`Counter`].
static HANDLED: AtomicU64 = AtomicU64::new(0);

/// The intake run's bridge: counts the messages it is handed.
#[derive(Debug)]
struct Counter;

impl Bridge for Counter {
    type Config = mxbridge::config::NoBridgeConfig;
    const NAME: &'static str = "bench-counter";

    async fn create(_config: Self::Config, _ctx: Context) -> BridgeResult<Self> {
        Ok(Self)
    }

    async fn handle_room_message(&self, _message: &MatrixRoomMessage) -> BridgeResult {
        HANDLED.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

const INTAKE_TXNS: usize = 200;
const INTAKE_PER_TXN: usize = 50;
const HS_TOKEN: &str = "hs_token_bench_crypto_0123456789";

/// One intake run: `encrypted` or in clear, on a fresh SQLite file.
async fn intake(encrypted: bool) {
    let hs = MockHomeserver::start().await;
    let uploads = hs.mock_device_endpoints().await;
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = format!(
        "homeserver: {{address: '{}', domain: localhost}}\n\
         appservice:\n  id: bench\n  address: 'http://127.0.0.1:{port}'\n  port: {port}\n\
         \x20 bot: {{localpart: _bench_bot}}\n  ghost_localpart_template: '_bench_{{id}}'\n\
         database: {{url: 'sqlite://{}/intake.db'}}\n\
         inbox: {{shutdown_grace_secs: 1}}\nlogging: {{level: warn}}\n\
         encryption: {{allow: {encrypted}}}\n",
        hs.server().uri(),
        dir.path().display()
    );
    let registration = format!(
        "id: bench\nurl: 'http://127.0.0.1:{port}'\nas_token: as_token_bench_crypto\n\
         hs_token: {HS_TOKEN}\nsender_localpart: _bench_bot\nnamespaces:\n  users:\n\
         \x20   - exclusive: true\n      regex: '@_bench_.*:localhost'\n\
         rate_limited: false\nreceive_ephemeral: true\n\
         de.sorunome.msc2409.push_ephemeral: true\nio.element.msc4190: true\n\
         org.matrix.msc3202: true\n"
    );
    let config: Config<mxbridge::config::NoBridgeConfig> = Config::from_yaml(&config).unwrap();
    let registration = Registration::from_yaml(&registration).unwrap();
    let service = AppService::<Counter>::new(config, registration).await.unwrap();
    let ctx = service.context().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(service.run(listener, async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let put = async |txn: &str, body: String| {
        let url = format!("http://127.0.0.1:{port}/_matrix/app/v1/transactions/{txn}");
        let answer = http.put(url).bearer_auth(HS_TOKEN).body(body).send().await.unwrap();
        assert!(answer.status().is_success(), "{}", answer.status());
    };
    let room = room_id!("!intake:localhost");
    let mut bodies = Vec::with_capacity(INTAKE_TXNS);
    if encrypted {
        let started = Instant::now();
        while ctx.bridge_device().is_none() {
            assert!(started.elapsed() < Duration::from_secs(30), "the bridge device started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let device = ctx.bridge_device().unwrap().device_id().to_owned();
        let bot: ruma::OwnedUserId = "@_bench_bot:localhost".try_into().unwrap();
        let upload = uploads.device_keys_upload().unwrap();
        let alice = OlmPeer::new(user_id!("@alice:localhost"), device_id!("ALICE")).await;
        let to_device = alice.share_room_key(room, &bot, &device, &upload).await;
        let key = serde_json::json!({"events": [], "de.sorunome.msc2409.to_device": to_device});
        put("key", key.to_string()).await;
        for t in 0..INTAKE_TXNS {
            let mut events = Vec::with_capacity(INTAKE_PER_TXN);
            for i in 0..INTAKE_PER_TXN {
                let id = format!("$e{t:05}x{i:03}");
                let body = format!("Message {t}/{i}: the quick brown fox jumps over the lazy dog.");
                events.push(alice.encrypted_text(room, &id, &body).await);
            }
            bodies.push(serde_json::json!({ "events": events }).to_string());
        }
    } else {
        for t in 0..INTAKE_TXNS {
            let events: Vec<_> = (0..INTAKE_PER_TXN)
                .map(|i| {
                    serde_json::json!({
                        "event_id": format!("$e{t:05}x{i:03}"), "room_id": room,
                        "sender": "@alice:localhost", "type": "m.room.message",
                        "origin_server_ts": 1, "content": {"msgtype": "m.text",
                        "body": format!("Message {t}/{i}: the quick brown fox jumps over the lazy dog.")},
                    })
                })
                .collect();
            bodies.push(serde_json::json!({ "events": events }).to_string());
        }
    }
    HANDLED.store(0, Ordering::Relaxed);
    let total = (INTAKE_TXNS * INTAKE_PER_TXN) as u64;
    let started = Instant::now();
    for (t, body) in bodies.into_iter().enumerate() {
        put(&format!("t{t}"), body).await;
    }
    let answered = started.elapsed();
    while HANDLED.load(Ordering::Relaxed) < total {
        assert!(started.elapsed() < Duration::from_secs(300), "every message was handled");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let handled = started.elapsed();
    let label = if encrypted { "encrypted" } else { "in clear" };
    let rate = |d: Duration| total as f64 / d.as_secs_f64();
    println!(
        "intake, {label:9}: {:>9.0} events/s answered, {:>9.0} events/s handled ({total} events)",
        rate(answered),
        rate(handled)
    );
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Store::connect_url(&format!("sqlite://{}/crypto.db", dir.path().display())).await.unwrap();
    run("SQLite", store.clone()).await;
    store.close().await;
    if let Some(url) = std::env::var("MXBRIDGE_TEST_POSTGRES").ok().filter(|u| !u.is_empty()) {
        let schema = format!("bench_crypto_{}", std::process::id());
        let admin = sqlx::PgPool::connect(&url).await.unwrap();
        let create = format!("CREATE SCHEMA {schema}");
        sqlx::query(sqlx::AssertSqlSafe(create)).execute(&admin).await.unwrap();
        let sep = if url.contains('?') { '&' } else { '?' };
        let store =
            Store::connect_url(&format!("{url}{sep}options[search_path]={schema}")).await.unwrap();
        run("PostgreSQL", store.clone()).await;
        store.close().await;
        let drop = format!("DROP SCHEMA {schema} CASCADE");
        sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await.unwrap();
    }
    intake(false).await;
    intake(true).await;
}
