//! In-process benchmark of what encryption costs a bridge per message: the bridge device's
//! matrix-sdk-crypto machine, its keys in the bridge's database (`SqlCryptoStore`).
//!
//! Run with
//! `CARGO_PROFILE_BENCH_LTO=off CARGO_PROFILE_BENCH_CODEGEN_UNITS=16 cargo bench --features encryption --ignore-rust-version --bench crypto`
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

use std::time::{Duration, Instant};

use mxbridge::{
    Event, Store,
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

#[tokio::main(flavor = "current_thread")]
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
}
