//! What a transaction carries for the bridge device, and handing it to the machine.
//!
//! A transaction pushes to-device messages, one-time-key counts and unused fallback key types
//! for every device of every user of the appservice (MSC2409, MSC3202). The bridge device's
//! machine gets only its own: to-device messages addressed to its user and device, and its own
//! counts. A count the homeserver did not send stays unknown: the machine is told with MSC4186's
//! reading (a missing count is not zero), so a transaction without counts uploads no keys.

use std::collections::BTreeMap;

use matrix_sdk_crypto::{
    DecryptionSettings, EncryptionSyncChanges, OlmError, OlmMachine, TrustRequirement,
    store::types::RoomKeyInfo,
};
use ruma::{
    DeviceId, OneTimeKeyAlgorithm, UInt, UserId, api::client::sync::sync_events::DeviceLists,
    events::AnyToDeviceEvent, serde::Raw,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{BridgeDevice, DevicePart};
use crate::{
    Context,
    event::{DeviceData, ToDeviceEvent},
};

/// The bridge device's part of one transaction, as it is stored until the machine took it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeviceInput {
    /// To-device messages for the bridge device, in the order received.
    pub to_device: Vec<Raw<AnyToDeviceEvent>>,
    /// Users whose devices changed (`changed`) or who share no encrypted room any more (`left`).
    pub device_lists: DeviceLists,
    /// The bridge device's one-time-key counts; `None` when the transaction had none for it.
    pub one_time_key_counts: Option<BTreeMap<OneTimeKeyAlgorithm, UInt>>,
    /// The bridge device's unused fallback key types; `None` when the transaction had none.
    pub unused_fallback_keys: Option<Vec<OneTimeKeyAlgorithm>>,
}

/// Where a to-device message is going (Synapse adds these to what it pushes).
#[derive(Deserialize)]
struct Recipient<'a> {
    #[serde(borrow)]
    to_user_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    to_device_id: Option<std::borrow::Cow<'a, str>>,
}

/// Reads `{user: {device: value}}` for one user and device, if there (and well formed).
fn for_device<T: serde::de::DeserializeOwned>(
    raw: Option<&RawValue>,
    user: &UserId,
    device: &DeviceId,
) -> Option<T> {
    let all: BTreeMap<String, BTreeMap<String, Box<RawValue>>> =
        serde_json::from_str(raw?.get()).ok()?;
    let value = all.get(user.as_str())?.get(device.as_str())?;
    serde_json::from_str(value.get()).ok()
}

impl DeviceInput {
    /// Picks the bridge device's part out of a transaction's to-device messages and device
    /// data. Entries that do not parse are left out.
    pub fn pick(
        to_device: &[ToDeviceEvent],
        data: &DeviceData,
        user: &UserId,
        device: &DeviceId,
    ) -> Self {
        let to_device = to_device
            .iter()
            .filter(|event| {
                serde_json::from_str::<Recipient<'_>>(event.json.get()).is_ok_and(|r| {
                    r.to_user_id.as_deref() == Some(user.as_str())
                        && r.to_device_id.as_deref() == Some(device.as_str())
                })
            })
            .map(|event| Raw::from_json(event.json.clone()))
            .collect();
        let device_lists = data
            .device_lists
            .as_deref()
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
            .unwrap_or_default();
        Self {
            to_device,
            device_lists,
            one_time_key_counts: for_device(data.one_time_key_counts.as_deref(), user, device),
            unused_fallback_keys: for_device(
                data.unused_fallback_key_types.as_deref(),
                user,
                device,
            ),
        }
    }

    /// The key counts and fallback key types as JSON, to compare one transaction's with
    /// another's.
    pub(crate) fn counts_json(&self) -> String {
        serde_json::json!([self.one_time_key_counts, self.unused_fallback_keys]).to_string()
    }

    /// Whether there is nothing for the machine.
    pub fn is_empty(&self) -> bool {
        self.to_device.is_empty()
            && self.device_lists.changed.is_empty()
            && self.device_lists.left.is_empty()
            && self.one_time_key_counts.is_none()
            && self.unused_fallback_keys.is_none()
    }

    /// Hands this to the machine: to-device messages decrypted and acted on (room keys
    /// stored), device lists marked for a key query, key counts noted. Returns the room keys
    /// that arrived. The machine's resulting requests (a key upload when the counts ran low)
    /// are then waiting in its `outgoing_requests`.
    ///
    /// # Errors
    /// When the machine's store fails.
    pub async fn feed(&self, machine: &OlmMachine) -> Result<Vec<RoomKeyInfo>, OlmError> {
        let counts = self.one_time_key_counts.clone().unwrap_or_default();
        let changes = EncryptionSyncChanges {
            to_device_events: self.to_device.clone(),
            changed_devices: &self.device_lists,
            one_time_keys_counts: &counts,
            unused_fallback_keys: self.unused_fallback_keys.as_deref(),
            next_batch_token: None,
        };
        let settings =
            DecryptionSettings { sender_device_trust_requirement: TrustRequirement::Untrusted };
        let (_to_device, room_keys) =
            machine.receive_sync_changes_msc4186(changes, &settings).await?;
        Ok(room_keys)
    }
}

/// Hands the stored input to the machine in order, for as long as the bridge runs: each row is
/// fed, deleted, and then the events set aside for the room keys it brought are put back in
/// line. A crash between the feeding and the deletion feeds a row twice; the machine ignores
/// to-device messages it decrypted before, and a room key it holds already.
pub(super) async fn feed_loop(ctx: &Context, part: &DevicePart, device: &BridgeDevice) {
    let store = ctx.store();
    let mut after = 0i64;
    let mut requests_owed = false;
    let mut pruned: Option<std::time::Instant> = None;
    loop {
        if let Some(days) = ctx.config().encryption.delete_room_keys_after_days
            && pruned.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(3600))
        {
            pruned = Some(std::time::Instant::now());
            let before = crate::util::now_ms() - i64::from(days) * 86_400_000;
            match store.delete_room_keys_received_before(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, days, "deleted old room keys"),
                Err(e) => tracing::warn!(error = %e, "could not delete old room keys"),
            }
        }
        let stored = part.input_stored.notified();
        tokio::pin!(stored);
        stored.as_mut().enable();
        match store.crypto_inputs(after, 32).await {
            Ok(rows) if !rows.is_empty() => {
                for (seq, json) in rows {
                    feed_row(ctx, part, device, seq, &json).await;
                    after = seq;
                }
                requests_owed = send_requests(device).await;
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the bridge device's input"),
        }
        if requests_owed {
            requests_owed = send_requests(device).await;
        }
        tokio::select! {
            () = stored => {}
            () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
        }
    }
}

/// Sends the machine's waiting requests; returns whether some are still owed.
async fn send_requests(device: &BridgeDevice) -> bool {
    match device.send_outgoing_requests().await {
        Ok(_) => false,
        Err(e) => {
            tracing::warn!(error = %e, "could not send the bridge device's requests");
            true
        }
    }
}

async fn feed_row(ctx: &Context, part: &DevicePart, device: &BridgeDevice, seq: i64, json: &str) {
    let store = ctx.store();
    let room_keys = match serde_json::from_str::<DeviceInput>(json) {
        Ok(input) => {
            let mut delay = std::time::Duration::from_millis(200);
            loop {
                match input.feed(device.machine()).await {
                    Ok(keys) => break keys,
                    Err(e) => {
                        tracing::warn!(error = %e, seq, "the machine could not take its input");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(std::time::Duration::from_secs(30));
                    }
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, seq, "dropping unreadable bridge device input");
            Vec::new()
        }
    };
    let mut delay = std::time::Duration::from_millis(200);
    while let Err(e) = store.delete_crypto_input(seq).await {
        tracing::warn!(error = %e, seq, "cannot delete the bridge device's input");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(30));
    }
    for key in &room_keys {
        match store.requeue_awaiting_key(key.room_id.as_str(), &key.session_id).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(room_id = %key.room_id, events = n,
                "a room key arrived; the events set aside for it are back in line"),
            Err(e) => tracing::warn!(error = %e, "cannot put events awaiting a key back in line"),
        }
    }
    if !room_keys.is_empty() {
        part.slot.bump();
    }
}

#[cfg(test)]
mod tests {
    use matrix_sdk_crypto::types::requests::AnyOutgoingRequest;
    use ruma::{api::client::keys::upload_keys, device_id, uint, user_id};

    use super::*;

    fn raw(json: serde_json::Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(&json).unwrap()
    }

    fn to_device(user: &str, device: &str, marker: &str) -> ToDeviceEvent {
        ToDeviceEvent {
            kind: "m.room.encrypted".into(),
            json: raw(serde_json::json!({
                "type": "m.room.encrypted", "sender": "@alice:x", "to_user_id": user,
                "to_device_id": device, "content": {"marker": marker},
            })),
        }
    }

    #[test]
    fn only_the_bridge_devices_part_is_picked() {
        let (bot, dev) = (user_id!("@bot:x"), device_id!("BRIDGE"));
        let events = [
            to_device("@bot:x", "BRIDGE", "one"),
            to_device("@bot:x", "OTHER", "other device"),
            to_device("@ghost:x", "BRIDGE", "other user"),
            to_device("@bot:x", "BRIDGE", "two"),
        ];
        let data = DeviceData {
            device_lists: Some(raw(serde_json::json!({"changed": ["@a:x"], "left": ["@b:x"]}))),
            one_time_key_counts: Some(raw(serde_json::json!({
                "@bot:x": {"BRIDGE": {"signed_curve25519": 7}, "OTHER": {"signed_curve25519": 1}},
                "@ghost:x": {"BRIDGE": {"signed_curve25519": 2}},
            }))),
            unused_fallback_key_types: Some(raw(serde_json::json!({
                "@bot:x": {"BRIDGE": ["signed_curve25519"]},
            }))),
        };
        let input = DeviceInput::pick(&events, &data, bot, dev);
        let markers: Vec<String> = input
            .to_device
            .iter()
            .map(|e| {
                e.get_field::<serde_json::Value>("content").unwrap().unwrap()["marker"].to_string()
            })
            .collect();
        assert_eq!(markers, [r#""one""#, r#""two""#]);
        assert_eq!(input.device_lists.changed, [user_id!("@a:x").to_owned()]);
        assert_eq!(input.device_lists.left, [user_id!("@b:x").to_owned()]);
        let counts = input.one_time_key_counts.unwrap();
        assert_eq!(counts.get(&OneTimeKeyAlgorithm::SignedCurve25519), Some(&uint!(7)));
        assert_eq!(input.unused_fallback_keys, Some(vec![OneTimeKeyAlgorithm::SignedCurve25519]));
    }

    /// Counts pushed for other devices only are no counts for the bridge device: unknown, not
    /// zero.
    #[test]
    fn counts_of_other_devices_leave_the_bridge_devices_unknown() {
        let data = DeviceData {
            one_time_key_counts: Some(raw(serde_json::json!({
                "@bot:x": {"OTHER": {"signed_curve25519": 0}},
            }))),
            ..DeviceData::default()
        };
        let input = DeviceInput::pick(&[], &data, user_id!("@bot:x"), device_id!("BRIDGE"));
        assert!(input.one_time_key_counts.is_none() && input.unused_fallback_keys.is_none());
        assert!(input.is_empty());
    }

    async fn uploads(machine: &OlmMachine) -> usize {
        let requests = machine.outgoing_requests().await.unwrap();
        requests.iter().filter(|r| matches!(r.request(), AnyOutgoingRequest::KeysUpload(_))).count()
    }

    /// With the real machine: a transaction without counts for the bridge device uploads no
    /// keys; one that says the device has none left does.
    #[tokio::test]
    async fn a_missing_count_uploads_nothing_and_a_zero_count_tops_up() {
        let machine = OlmMachine::new(user_id!("@bot:x"), device_id!("BRIDGE")).await;
        // The first upload (device keys and one-time keys), answered with a full count.
        let requests = machine.outgoing_requests().await.unwrap();
        let upload = requests
            .iter()
            .find(|r| matches!(r.request(), AnyOutgoingRequest::KeysUpload(_)))
            .expect("a new device uploads its keys");
        let full = BTreeMap::from([(OneTimeKeyAlgorithm::SignedCurve25519, uint!(50))]);
        let response = upload_keys::v3::Response::new(full);
        machine.mark_request_as_sent(upload.request_id(), &response).await.unwrap();
        assert_eq!(uploads(&machine).await, 0);

        DeviceInput::default().feed(&machine).await.unwrap();
        assert_eq!(uploads(&machine).await, 0, "a missing count was read as zero");

        let empty = DeviceInput {
            one_time_key_counts: Some(BTreeMap::from([(
                OneTimeKeyAlgorithm::SignedCurve25519,
                uint!(0),
            )])),
            ..DeviceInput::default()
        };
        empty.feed(&machine).await.unwrap();
        assert_eq!(uploads(&machine).await, 1, "no top-up after a count of zero");
    }
}
