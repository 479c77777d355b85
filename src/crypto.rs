//! End-to-bridge encryption (the `encryption` feature): one device for the bridge, its keys in
//! the bridge's database, with matrix-sdk-crypto's `OlmMachine` doing all the cryptography.
//!
//! - [`SqlCryptoStore`]: the machine's store on the bridge's SQL [`Store`](crate::Store).
//! - [`BridgeDevice`]: the bot's device (made through the appservice, MSC4190) and its machine,
//!   started with the bridge when `encryption.allow` is set ([`Context::bridge_device`]).
//! - [`DeviceInput`]: the bridge device's part of a transaction. It is committed before the
//!   transaction is answered (`mx_crypto_inbox`) and handed to the machine in order by a task
//!   of its own, so a crash after the answer loses no room key.
//! - Reading: the dispatcher decrypts `m.room.encrypted` events before routing them
//!   (`room.rs`); an event whose room key has not arrived holds its room at most
//!   `encryption.key_wait_secs`, is then set aside (parked, naming the key's session), and is
//!   put back in line when that key arrives.
//! - Writing: every intent's message sends into a room whose state says it is encrypted are
//!   encrypted by the bridge device, after the room key is shared with the members' devices.

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use ruma::OwnedDeviceId;
use tokio::sync::{Notify, watch};

use crate::{Context, event::EphemeralBatch, store::StoreError};

pub(crate) mod commands;
mod device;
mod input;
mod media;
mod room;

pub use device::{BridgeDevice, CryptoError};
pub use input::DeviceInput;
/// The `OlmMachine` and the rest of matrix-sdk-crypto, as this build uses them.
pub use matrix_sdk_crypto;
pub(crate) use media::{decrypt_attachment, encrypt_attachment, encrypted_file};
pub(crate) use room::{Decryption, room_encryption};

pub use crate::store::crypto::SqlCryptoStore;

/// Where the bridge device's ID is kept (`mx_kv`).
pub(crate) const KV_NAMESPACE: &str = "crypto";
const KV_DEVICE_ID: &str = "device_id";

/// The bridge device as the rest of the framework reaches it: empty until the device started.
/// Those waiting for it, or for room keys, watch it. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct DeviceSlot(Arc<SlotInner>);

#[derive(Debug)]
struct SlotInner {
    device: OnceLock<BridgeDevice>,
    /// Bumped when the device starts and whenever room keys arrive.
    changed: watch::Sender<u64>,
}

impl Default for DeviceSlot {
    fn default() -> Self {
        Self(Arc::new(SlotInner { device: OnceLock::new(), changed: watch::Sender::new(0) }))
    }
}

impl DeviceSlot {
    /// The device, once started.
    pub(crate) fn get(&self) -> Option<&BridgeDevice> {
        self.0.device.get()
    }

    /// A receiver that sees the next start of the device or arrival of room keys.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.changed.subscribe()
    }

    fn bump(&self) {
        self.0.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// The context's part.
#[derive(Debug, Default)]
struct DevicePart {
    /// The device's ID: read (or made and stored) before the server takes transactions, so
    /// that none of its input is missed while the device itself is not up yet.
    device_id: OnceLock<OwnedDeviceId>,
    slot: DeviceSlot,
    /// Woken when input was stored.
    input_stored: Notify,
    /// The key counts of the input last stored: a transaction that brings the same counts and
    /// nothing else stores nothing (Synapse pushes the counts with nearly every transaction).
    last_counts: Mutex<Option<String>>,
}

impl Context {
    /// The bridge device, once it started (`encryption.allow`; it starts beside the bridge and
    /// until it could reach the homeserver there is none).
    pub fn bridge_device(&self) -> Option<&BridgeDevice> {
        self.device_part().slot.get()
    }

    fn device_part(&self) -> &DevicePart {
        self.crypto_part().get::<DevicePart>()
    }

    /// The slot of the bridge device, when encryption is allowed.
    pub(crate) fn device_slot(&self) -> Option<&DeviceSlot> {
        self.config().encryption.allow.then(|| &self.device_part().slot)
    }
}

/// Where a reset asked for by an admin waits for the next start (`mx_kv`).
const KV_RESET: &str = "reset_requested";

/// Asks for a new bridge device at the next start: the old one is then deleted on the
/// homeserver and its keys and sessions are forgotten. Messages encrypted for the old device
/// (and events set aside waiting for its keys) can no longer be decrypted.
///
/// # Errors
/// When the database fails.
pub async fn request_reset(store: &crate::Store) -> Result<(), StoreError> {
    store.kv_put(KV_NAMESPACE, KV_RESET, "1").await
}

/// Reads the bridge device's ID, or makes and stores one, when encryption is allowed. Runs
/// before the server takes transactions. A reset asked for is made first: the old device is
/// deleted on the homeserver (a failure there is logged: the device is forgotten all the same),
/// every crypto table emptied, and a new ID made.
///
/// # Errors
/// When the database fails.
pub(crate) async fn prepare(ctx: &Context) -> Result<(), StoreError> {
    if !ctx.config().encryption.allow {
        return Ok(());
    }
    let store = ctx.store();
    if store.kv_get(KV_NAMESPACE, KV_RESET).await?.is_some() {
        if let Some(old) = store.kv_get(KV_NAMESPACE, KV_DEVICE_ID).await? {
            let request = ruma::api::client::device::delete_device::v3::Request::new(old.into());
            match ctx.client().send(request, None).await {
                Ok(_) => tracing::info!("deleted the old bridge device"),
                Err(e) => tracing::warn!(error = %e, "could not delete the old bridge device"),
            }
        }
        store.wipe_crypto().await?;
        store.kv_delete(KV_NAMESPACE, KV_DEVICE_ID).await?;
        store.kv_delete(KV_NAMESPACE, device::KV_CROSS_SIGNED).await?;
        store.kv_delete(KV_NAMESPACE, KV_RESET).await?;
        tracing::info!("the bridge device was reset: a new one is made");
    }
    let id = match store.kv_get(KV_NAMESPACE, KV_DEVICE_ID).await? {
        Some(id) => id,
        None => {
            let id = format!("MXB{}", crate::Secret::generate(10).expose().to_ascii_uppercase());
            store.kv_put(KV_NAMESPACE, KV_DEVICE_ID, &id).await?;
            id
        }
    };
    let _ = ctx.device_part().device_id.set(OwnedDeviceId::from(id));
    Ok(())
}

/// Commits the bridge device's part of a transaction (if it has one) before the transaction
/// is stored and answered. A transaction the homeserver sends again stores its part once.
///
/// # Errors
/// When the database fails: the transaction must then not be answered 200.
pub(crate) async fn stash_input(
    ctx: &Context,
    txn_id: &str,
    batch: &EphemeralBatch,
) -> Result<(), StoreError> {
    if !ctx.config().encryption.allow
        || (batch.to_device.is_empty() && batch.device_data.is_empty())
    {
        return Ok(());
    }
    let part = ctx.device_part();
    let Some(device_id) = part.device_id.get() else { return Ok(()) };
    let input = DeviceInput::pick(
        &batch.to_device,
        &batch.device_data,
        ctx.client().bot_user_id(),
        device_id,
    );
    if input.is_empty() {
        return Ok(());
    }
    let counts = input.counts_json();
    let counts_only = input.to_device.is_empty()
        && input.device_lists.changed.is_empty()
        && input.device_lists.left.is_empty();
    if counts_only && *part.last_counts.lock().expect("lock poisoned") == Some(counts.clone()) {
        return Ok(());
    }
    let json = serde_json::to_string(&input).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    ctx.store().put_crypto_input(txn_id, &json).await?;
    *part.last_counts.lock().expect("lock poisoned") = Some(counts);
    part.input_stored.notify_one();
    Ok(())
}

/// Starts the bridge device in a task of its own when encryption is allowed: until it works,
/// with growing pauses (1 s to 60 s), since the homeserver may not answer yet. The task then
/// hands the stored input to the machine, in order, for as long as the bridge runs.
pub(crate) fn start(ctx: &Context) -> Option<tokio::task::JoinHandle<()>> {
    if !ctx.config().encryption.allow {
        return None;
    }
    let ctx = ctx.clone();
    Some(tokio::spawn(async move {
        let part = ctx.device_part();
        let Some(device_id) = part.device_id.get().cloned() else {
            tracing::error!("the bridge device has no ID (the bridge started without it)");
            return;
        };
        let mut delay = Duration::from_secs(1);
        let device = loop {
            match BridgeDevice::start(ctx.store(), ctx.client(), device_id.clone()).await {
                Ok(device) => break device,
                Err(e) => tracing::warn!(
                    error = %e,
                    retry_in_s = delay.as_secs(),
                    "could not start the bridge device"
                ),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(60));
        };
        let _ = part.slot.0.device.set(device.clone());
        part.slot.bump();
        input::feed_loop(&ctx, part, &device).await;
    }))
}
