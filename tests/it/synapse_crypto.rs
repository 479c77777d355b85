//! The bridge device against a real Synapse: created through the appservice (MSC4190), its keys
//! uploaded and visible to a human's `/keys/query`, one-time keys claimable, and the same device
//! and keys after a restart of the bridge. On SQLite and PostgreSQL.

use serde_json::{Value, json};

use crate::{
    common::{AS_TOKEN, Running, fresh_database, http, registration_yaml, wait_until},
    synapse::{Synapse, cs, enabled},
};

const BOT: &str = "@_t_bot:localhost";

/// The test registration with what the bridge device needs.
fn crypto_registration(url: &str) -> String {
    format!("{}io.element.msc4190: true\norg.matrix.msc3202: true\n", registration_yaml(url))
}

/// The bot's devices and their keys as a human sees them.
async fn query_bot_keys(synapse: &Synapse, token: &str) -> Value {
    cs(
        &http(),
        reqwest::Method::POST,
        format!("{}/_matrix/client/v3/keys/query", synapse.url),
        token,
        Some(json!({"device_keys": {BOT: []}})),
    )
    .await
}

/// How many one-time keys Synapse holds for the bridge device (an empty upload as the device).
async fn otk_count(synapse: &Synapse, device_id: &str) -> u64 {
    let url = format!(
        "{}/_matrix/client/v3/keys/upload?user_id={}&device_id={device_id}",
        synapse.url,
        crate::synapse::urlencode(BOT)
    );
    let counts = cs(&http(), reqwest::Method::POST, url, AS_TOKEN, Some(json!({}))).await;
    counts["one_time_key_counts"]["signed_curve25519"].as_u64().unwrap_or(0)
}

/// Key uploads the device's machine has waiting.
async fn uploads_pending(device: &mxbridge::crypto::BridgeDevice) -> usize {
    use mxbridge::crypto::matrix_sdk_crypto::types::requests::AnyOutgoingRequest;
    let pending = device.machine().outgoing_requests().await.unwrap();
    pending.iter().filter(|r| matches!(r.request(), AnyOutgoingRequest::KeysUpload(_))).count()
}

async fn start_bridge(
    listener: tokio::net::TcpListener,
    synapse: &Synapse,
    db: &mxbridge::config::DatabaseConfig,
    registration: &str,
) -> Running {
    // The recording bridge's section is the config's last key: the encryption section follows
    // it as a key of its own.
    let app = Running::start_on(
        listener,
        &synapse.url,
        db,
        "{}\nencryption: {allow: true}",
        registration,
    )
    .await;
    if !wait_until(60, || app.bridge.ctx.bridge_device().is_some()).await {
        let log = std::fs::read_to_string(synapse.dir.path().join("hs/homeserver.log"));
        let log = log.unwrap_or_default();
        let errors: Vec<&str> =
            log.lines().filter(|l| !l.contains(" - INFO - ")).take(80).collect();
        panic!("the bridge device never started; Synapse's log says:\n{}", errors.join("\n"));
    }
    app
}

async fn the_bridge_device_is_created_and_keeps_its_keys(backend: &str) {
    // The device's start retries quietly: its warnings tell why a failing run failed.
    let _ =
        tracing_subscriber::fmt().with_env_filter("mxbridge=info").with_test_writer().try_init();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let registration = crypto_registration(&format!("http://{addr}"));
    let synapse = Synapse::start(&registration);
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database(backend, dir.path()).await;
    let alice = synapse.register("alice");

    let app = start_bridge(listener, &synapse, &db, &registration).await;
    let device = app.bridge.ctx.bridge_device().unwrap().clone();
    let device_id = device.device_id().to_string();
    let keys = device.machine().identity_keys();
    let (ed25519, curve25519) = (keys.ed25519.to_base64(), keys.curve25519.to_base64());

    // A human sees the device with the machine's own keys, signed by itself.
    let seen = query_bot_keys(&synapse, &alice).await;
    let ours = &seen["device_keys"][BOT][&device_id];
    assert_eq!(ours["device_id"], device_id.as_str(), "{seen}");
    assert_eq!(ours["keys"][format!("ed25519:{device_id}")], ed25519.as_str(), "{seen}");
    assert_eq!(ours["keys"][format!("curve25519:{device_id}")], curve25519.as_str(), "{seen}");
    assert!(ours["signatures"][BOT][format!("ed25519:{device_id}")].is_string(), "{seen}");
    let algorithms = ours["algorithms"].as_array().unwrap();
    assert!(algorithms.contains(&json!("m.megolm.v1.aes-sha2")), "{seen}");
    // The device has a display name (it was created with one through the appservice).
    assert_eq!(ours["unsigned"]["device_display_name"], "Bridge", "{seen}");
    // The bot has a cross-signing identity, whose self-signing key signed the device.
    let master = seen["master_keys"][BOT].clone();
    assert!(master["usage"].as_array().is_some_and(|u| u.contains(&json!("master"))), "{seen}");
    let self_signing = seen["self_signing_keys"][BOT]["keys"].as_object().expect("self-signing");
    let (ssk_id, _) = self_signing.iter().next().unwrap();
    assert!(ours["signatures"][BOT][ssk_id].is_string(), "not signed by the bot's SSK: {seen}");

    // Its one-time keys were uploaded: the human can claim one.
    let claimed = cs(
        &http(),
        reqwest::Method::POST,
        format!("{}/_matrix/client/v3/keys/claim", synapse.url),
        &alice,
        Some(json!({"one_time_keys": {BOT: {&device_id: "signed_curve25519"}}})),
    )
    .await;
    let otks = claimed["one_time_keys"][BOT][&device_id].as_object();
    assert!(
        otks.is_some_and(|k| k.keys().any(|k| k.starts_with("signed_curve25519:"))),
        "{claimed}"
    );

    // A transaction saying the device has no one-time keys left makes it upload more, through
    // the client, and nothing stays pending.
    let none_left = mxbridge::crypto::DeviceInput {
        one_time_key_counts: Some(std::collections::BTreeMap::from([(
            ruma::OneTimeKeyAlgorithm::SignedCurve25519,
            ruma::uint!(0),
        )])),
        ..Default::default()
    };
    let before = otk_count(&synapse, &device_id).await;
    device.receive(none_left).await.unwrap();
    assert_eq!(uploads_pending(&device).await, 0);
    let after = otk_count(&synapse, &device_id).await;
    assert!(after > before, "no keys uploaded: {before} before, {after} after");
    app.stop().await;

    // After a restart: the same device, the same keys, and nothing left to upload.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let app = start_bridge(listener, &synapse, &db, &registration).await;
    let again = app.bridge.ctx.bridge_device().unwrap().clone();
    assert_eq!(again.device_id().as_str(), device_id);
    assert_eq!(again.machine().identity_keys().ed25519.to_base64(), ed25519);
    assert_eq!(uploads_pending(&again).await, 0, "a restart uploads keys again");
    let seen = query_bot_keys(&synapse, &alice).await;
    let devices = seen["device_keys"][BOT].as_object().unwrap();
    assert_eq!(devices.keys().collect::<Vec<_>>(), [&device_id], "one bridge device: {seen}");
    assert_eq!(devices[&device_id]["keys"][format!("ed25519:{device_id}")], ed25519.as_str());
    // The same cross-signing identity, not made again.
    assert_eq!(seen["master_keys"][BOT], master, "{seen}");
    app.stop().await;

    // A reset (`encryption reset`) makes a new device at the next start, with new keys, and the
    // old one is gone from the homeserver.
    let store = mxbridge::Store::connect(&db).await.unwrap();
    mxbridge::crypto::request_reset(&store).await.unwrap();
    store.close().await;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let app = start_bridge(listener, &synapse, &db, &registration).await;
    let new = app.bridge.ctx.bridge_device().unwrap().clone();
    assert_ne!(new.device_id().as_str(), device_id, "a new device");
    assert_ne!(new.machine().identity_keys().ed25519.to_base64(), ed25519, "new keys");
    let seen = query_bot_keys(&synapse, &alice).await;
    let devices = seen["device_keys"][BOT].as_object().unwrap();
    assert_eq!(devices.keys().collect::<Vec<_>>(), [new.device_id().as_str()], "{seen}");
    app.stop().await;
}

#[tokio::test]
async fn the_bridge_device_is_created_and_keeps_its_keys_on_sqlite() {
    if !enabled() {
        return;
    }
    the_bridge_device_is_created_and_keeps_its_keys("sqlite").await;
}

#[tokio::test]
async fn the_bridge_device_is_created_and_keeps_its_keys_on_postgres() {
    if !enabled() {
        return;
    }
    the_bridge_device_is_created_and_keeps_its_keys("postgres").await;
}
