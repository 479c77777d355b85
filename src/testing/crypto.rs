//! Encrypted rooms in tests (with the `encryption` feature): what a homeserver answers the bridge
//! device's start, and [`OlmPeer`], a real sender's crypto machine that makes an Olm session
//! with the bridge device and encrypts messages for it.

use std::sync::{Arc, Mutex};

use matrix_sdk_crypto::{EncryptionSettings, OlmMachine, types::requests::AnyOutgoingRequest};
use ruma::{
    DeviceId, OwnedDeviceId, OwnedOneTimeKeyId, OwnedUserId, RoomId, UserId,
    api::client::keys::{claim_keys, get_keys},
    serde::Raw,
};
use serde_json::{Value as JsonValue, json};
use wiremock::{
    Mock, Request, ResponseTemplate,
    matchers::{method, path_regex},
};

use super::MockHomeserver;

/// The key uploads the bridge device made to a [`MockHomeserver`], in order (request bodies).
#[derive(Clone, Debug, Default)]
pub struct KeyUploads(Arc<Mutex<Vec<JsonValue>>>);

impl KeyUploads {
    /// The first upload that carried the device's keys (with its one-time keys).
    pub fn device_keys_upload(&self) -> Option<JsonValue> {
        let uploads = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        uploads.iter().find(|u| u.get("device_keys").is_some()).cloned()
    }
}

impl MockHomeserver {
    /// Answers what the bridge device's start asks (any API version): the device created,
    /// its keys uploaded (the uploads are kept), key queries answered with no devices, and its
    /// cross-signing keys and signatures taken.
    pub async fn mock_device_endpoints(&self) -> KeyUploads {
        let uploads = KeyUploads::default();
        let ok = |body: JsonValue| ResponseTemplate::new(200).set_body_json(body);
        Mock::given(method("PUT"))
            .and(path_regex("^/_matrix/client/[^/]+/devices/"))
            .respond_with(ok(json!({})))
            .mount(self.server())
            .await;
        let kept = uploads.0.clone();
        Mock::given(method("POST"))
            .and(path_regex("^/_matrix/client/[^/]+/keys/upload$"))
            .respond_with(move |request: &Request| {
                if let Ok(body) = serde_json::from_slice(&request.body) {
                    kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(body);
                }
                ResponseTemplate::new(200)
                    .set_body_json(json!({"one_time_key_counts": {"signed_curve25519": 50}}))
            })
            .mount(self.server())
            .await;
        Mock::given(method("POST"))
            .and(path_regex("^/_matrix/client/[^/]+/keys/query$"))
            .respond_with(ok(json!({"device_keys": {}, "failures": {}})))
            .mount(self.server())
            .await;
        Mock::given(method("POST"))
            .and(path_regex("^/_matrix/client/[^/]+/keys/(device_signing|signatures)/upload$"))
            .respond_with(ok(json!({"failures": {}})))
            .mount(self.server())
            .await;
        uploads
    }
}

fn raw<T>(value: &JsonValue) -> Raw<T> {
    Raw::from_json(serde_json::value::to_raw_value(value).expect("a JSON value serializes"))
}

/// A real sender in an encrypted room: its own crypto machine (in memory), which makes an Olm
/// session with the bridge device from the keys the device uploaded, shares its room key with
/// it, and encrypts messages.
#[derive(Debug)]
pub struct OlmPeer {
    machine: OlmMachine,
    user_id: OwnedUserId,
}

impl OlmPeer {
    /// A peer `user_id` with device `device_id`.
    pub async fn new(user_id: &UserId, device_id: &DeviceId) -> Self {
        Self { machine: OlmMachine::new(user_id, device_id).await, user_id: user_id.to_owned() }
    }

    /// Makes an Olm session with the bridge device (`bot`, `device`), from the body of the
    /// device's key upload ([`KeyUploads::device_keys_upload`]), and returns the to-device
    /// events that carry this peer's room key for `room` to it, as a transaction pushes them.
    /// The peer's session is kept for a million messages.
    ///
    /// # Panics
    /// When the upload has no device keys or one-time keys, or the machine refuses.
    pub async fn share_room_key(
        &self,
        room: &RoomId,
        bot: &UserId,
        device: &DeviceId,
        upload: &JsonValue,
    ) -> Vec<JsonValue> {
        let machine = &self.machine;
        let (bot, device): (OwnedUserId, OwnedDeviceId) = (bot.to_owned(), device.to_owned());
        machine.update_tracked_users([bot.as_ref()]).await.expect("tracked");
        for request in machine.outgoing_requests().await.expect("requests") {
            if let AnyOutgoingRequest::KeysQuery(_) = request.request() {
                let mut response = get_keys::v3::Response::new();
                let keys = [(device.clone(), raw(&upload["device_keys"]))].into();
                response.device_keys = [(bot.clone(), keys)].into();
                machine.mark_request_as_sent(request.request_id(), &response).await.expect("keys");
            }
        }
        let missing = machine.get_missing_sessions([bot.as_ref()].into_iter()).await;
        let (claim_id, _) = missing.expect("sessions").expect("a session to make");
        let one_time = upload["one_time_keys"].as_object().expect("one-time keys");
        let (key_id, key) = one_time.iter().next().expect("a one-time key");
        let key_id: OwnedOneTimeKeyId = key_id.as_str().try_into().expect("a key ID");
        let keys = [(bot.clone(), [(device.clone(), [(key_id, raw(key))].into())].into())];
        let claimed = claim_keys::v3::Response::new(keys.into());
        machine.mark_request_as_sent(&claim_id, &claimed).await.expect("claimed");
        let settings = EncryptionSettings { rotation_period_msgs: 1_000_000, ..Default::default() };
        let shares = machine
            .share_room_key(room, [bot.as_ref()].into_iter(), settings)
            .await
            .expect("shared");
        let mut to_device = Vec::new();
        for share in &shares {
            for (user, devices) in &share.messages {
                for content in devices.values() {
                    let content: JsonValue =
                        serde_json::from_str(content.json().get()).expect("JSON");
                    to_device.push(json!({
                        "type": share.event_type.to_string(), "sender": self.user_id,
                        "to_user_id": user, "to_device_id": device, "content": content,
                    }));
                }
            }
        }
        to_device
    }

    /// An `m.room.encrypted` event of an `m.text` message, as a transaction pushes it.
    ///
    /// # Panics
    /// When no room key of `room` was shared first.
    pub async fn encrypted_text(&self, room: &RoomId, event_id: &str, body: &str) -> JsonValue {
        let content = raw(&json!({"msgtype": "m.text", "body": body}));
        let encrypted = self
            .machine
            .encrypt_room_event_raw(room, "m.room.message", &content)
            .await
            .expect("encrypted");
        json!({
            "event_id": event_id, "room_id": room, "sender": self.user_id,
            "type": "m.room.encrypted", "origin_server_ts": 1,
            "content": serde_json::from_str::<JsonValue>(encrypted.content.json().get())
                .expect("JSON"),
        })
    }
}
