//! An encrypted message that arrives before its room key, against a mock homeserver and a real
//! Olm peer (a second matrix-sdk-crypto machine as the sender): the room waits
//! `encryption.key_wait_secs`, the message is set aside (parked, naming its session), and it is
//! handled, decrypted, once the key comes in a later transaction.

use mxbridge::testing::{MockHomeserver, OlmPeer};
use ruma::{OwnedUserId, device_id, room_id, user_id};
use serde_json::json;

use crate::common::{Running, fresh_database, http, put_txn, registration_yaml, wait_until};

#[tokio::test]
async fn a_message_whose_key_comes_late_is_set_aside_and_handled_when_it_comes() {
    let hs = MockHomeserver::start().await;
    let uploads = hs.mock_device_endpoints().await;
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("sqlite", dir.path()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registration = format!(
        "{}io.element.msc4190: true\norg.matrix.msc3202: true\n",
        registration_yaml("null")
    );
    let app = Running::start_on(
        listener,
        &hs.server().uri(),
        &db,
        "{}\nencryption: {allow: true, key_wait_secs: 1}",
        &registration,
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
    let upload = uploads.device_keys_upload().expect("the device uploaded its keys");

    // Alice's client makes an Olm session with the bridge device: her room key for it, and a
    // message encrypted with that key.
    let room = room_id!("!enc:localhost");
    let alice = OlmPeer::new(user_id!("@alice:localhost"), device_id!("ALICE")).await;
    let to_device = alice.share_room_key(room, &bot, device.device_id(), &upload).await;
    assert_eq!(to_device.len(), 1, "one room key, for the bridge device");
    let message = alice.encrypted_text(room, "$late", "the key comes later").await;
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
