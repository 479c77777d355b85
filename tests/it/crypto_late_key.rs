//! An encrypted message that arrives before its room key, against a mock homeserver and a real
//! Olm peer (a second matrix-sdk-crypto machine as the sender): the room waits
//! `encryption.key_wait_secs`, the message is set aside (parked, naming its session), and it is
//! handled, decrypted, once the key comes in a later transaction.

use std::sync::{Arc, Mutex};

use mxbridge::crypto::matrix_sdk_crypto::{
    EncryptionSettings, OlmMachine, types::requests::AnyOutgoingRequest,
};
use mxbridge::testing::MockHomeserver;
use ruma::{
    OwnedDeviceId, OwnedOneTimeKeyId, OwnedUserId,
    api::client::keys::{claim_keys, get_keys},
    device_id, room_id,
    serde::Raw,
    user_id,
};
use serde_json::{Value, json};
use wiremock::{
    Mock, Request, ResponseTemplate,
    matchers::{method, path_regex},
};

use crate::common::{Running, fresh_database, http, put_txn, registration_yaml, wait_until};

fn raw<T>(value: &Value) -> Raw<T> {
    Raw::from_json(serde_json::value::to_raw_value(value).unwrap())
}

/// What a homeserver answers a device's start with; the key uploads are kept.
async fn device_endpoints(hs: &MockHomeserver) -> Arc<Mutex<Vec<Value>>> {
    let uploads = Arc::new(Mutex::new(Vec::new()));
    let ok = |body: Value| ResponseTemplate::new(200).set_body_json(body);
    Mock::given(method("PUT"))
        .and(path_regex("^/_matrix/client/[^/]+/devices/"))
        .respond_with(ok(json!({})))
        .mount(hs.server())
        .await;
    let kept = uploads.clone();
    Mock::given(method("POST"))
        .and(path_regex("^/_matrix/client/[^/]+/keys/upload$"))
        .respond_with(move |request: &Request| {
            kept.lock().unwrap().push(serde_json::from_slice(&request.body).unwrap());
            ResponseTemplate::new(200)
                .set_body_json(json!({"one_time_key_counts": {"signed_curve25519": 50}}))
        })
        .mount(hs.server())
        .await;
    Mock::given(method("POST"))
        .and(path_regex("^/_matrix/client/[^/]+/keys/query$"))
        .respond_with(ok(json!({"device_keys": {}, "failures": {}})))
        .mount(hs.server())
        .await;
    Mock::given(method("POST"))
        .and(path_regex("^/_matrix/client/[^/]+/keys/(device_signing|signatures)/upload$"))
        .respond_with(ok(json!({"failures": {}})))
        .mount(hs.server())
        .await;
    uploads
}

#[tokio::test]
async fn a_message_whose_key_comes_late_is_set_aside_and_handled_when_it_comes() {
    // The device's start retries quietly: its warnings tell why a failing run failed.
    let _ =
        tracing_subscriber::fmt().with_env_filter("mxbridge=info").with_test_writer().try_init();
    let hs = MockHomeserver::start().await;
    let uploads = device_endpoints(&hs).await;
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("sqlite", dir.path()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = Running::start_on(
        listener,
        &hs.server().uri(),
        &db,
        "{}\nencryption: {allow: true, key_wait_secs: 1}",
        &format!(
            "{}io.element.msc4190: true\norg.matrix.msc3202: true\n",
            registration_yaml("null")
        ),
    )
    .await;
    let ctx = app.bridge.ctx.clone();
    if !wait_until(30, || ctx.bridge_device().is_some()).await {
        let paths: Vec<String> =
            hs.received().await.iter().map(|r| format!("{} {}", r.method, r.url.path())).collect();
        panic!("the device never started; the homeserver got {paths:?}");
    }
    let device = ctx.bridge_device().unwrap().clone();
    let bot: OwnedUserId = "@_t_bot:localhost".try_into().unwrap();
    let bot_device: OwnedDeviceId = device.device_id().to_owned();
    let upload = uploads.lock().unwrap().iter().find(|u| u.get("device_keys").is_some()).cloned();
    let upload = upload.expect("the device uploaded its keys");

    // Alice's client learns the bridge device's keys and claims one of its one-time keys.
    let room = room_id!("!enc:localhost");
    let alice = OlmMachine::new(user_id!("@alice:localhost"), device_id!("ALICE")).await;
    alice.update_tracked_users([bot.as_ref()]).await.unwrap();
    for request in alice.outgoing_requests().await.unwrap() {
        if let AnyOutgoingRequest::KeysQuery(_) = request.request() {
            let mut response = get_keys::v3::Response::new();
            let keys = [(bot_device.clone(), raw(&upload["device_keys"]))].into();
            response.device_keys = [(bot.clone(), keys)].into();
            alice.mark_request_as_sent(request.request_id(), &response).await.unwrap();
        }
    }
    let (claim_id, _) =
        alice.get_missing_sessions([bot.as_ref()].into_iter()).await.unwrap().unwrap();
    let (key_id, key) = upload["one_time_keys"].as_object().unwrap().iter().next().unwrap();
    let key_id: OwnedOneTimeKeyId = key_id.as_str().try_into().unwrap();
    let one_time_keys = [(bot.clone(), [(bot_device.clone(), [(key_id, raw(key))].into())].into())];
    let claimed = claim_keys::v3::Response::new(one_time_keys.into());
    alice.mark_request_as_sent(&claim_id, &claimed).await.unwrap();

    // Her room key, as the to-device message for the bridge device, and a message with it.
    let shares = alice
        .share_room_key(room, [bot.as_ref()].into_iter(), EncryptionSettings::default())
        .await
        .unwrap();
    let mut to_device = Vec::new();
    for share in &shares {
        for (user, devices) in &share.messages {
            for content in devices.values() {
                to_device.push(json!({
                    "type": share.event_type.to_string(), "sender": "@alice:localhost",
                    "to_user_id": user, "to_device_id": bot_device,
                    "content": serde_json::from_str::<Value>(content.json().get()).unwrap(),
                }));
            }
        }
    }
    assert_eq!(to_device.len(), 1, "one room key, for the bridge device");
    let content = raw(&json!({"msgtype": "m.text", "body": "the key comes later"}));
    let encrypted = alice.encrypt_room_event_raw(room, "m.room.message", &content).await.unwrap();
    let message = json!({
        "event_id": "$late", "room_id": room, "sender": "@alice:localhost",
        "type": "m.room.encrypted", "origin_server_ts": 1,
        "content": serde_json::from_str::<Value>(encrypted.content.json().get()).unwrap(),
    });
    let decryptions = |outcome: &str| {
        let labels = vec![("outcome", outcome.to_owned())];
        ctx.metrics().decryptions.get_or_create(&labels).get()
    };

    // The message first: the room waits a second, then the message is set aside.
    let base = format!("http://{}", app.addr);
    let body = json!({"events": [message]}).to_string();
    assert_eq!(put_txn(&http(), &base, "t1", &body).await, 200);
    let parked = async || app.store.parked_events(10).await.unwrap();
    assert!(
        crate::common::wait_until_async(10, async || parked().await.len() == 1).await,
        "the message was set aside"
    );
    assert_eq!(parked().await[0].event_id, "$late");
    assert!(app.bridge.handled_ids().is_empty(), "nothing was handled without the key");
    assert_eq!(decryptions("awaiting_key"), 1);

    // The key in a later transaction: the message comes back and is handled, decrypted.
    let body = json!({"events": [], "de.sorunome.msc2409.to_device": to_device}).to_string();
    assert_eq!(put_txn(&http(), &base, "t2", &body).await, 200);
    assert!(
        wait_until(10, || app.bridge.handled_ids() == ["$late"]).await,
        "the message was handled once its key came: {:?}",
        app.bridge.handled_ids()
    );
    assert_eq!(decryptions("decrypted"), 1);
    assert!(parked().await.is_empty(), "nothing is left set aside");
    app.stop().await;
}
