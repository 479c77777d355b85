//! End-to-bridge encryption (the `encryption` feature): one device for the bridge, its keys in
//! the bridge's database, with matrix-sdk-crypto's `OlmMachine` doing all the cryptography.
//!
//! - [`SqlCryptoStore`]: the machine's store on the bridge's SQL [`Store`](crate::Store).
//! - [`BridgeDevice`]: the bot's device (made through the appservice, MSC4190) and its machine,
//!   started with the bridge when `encryption.allow` is set ([`Context::bridge_device`]).
//! - [`DeviceInput`]: the bridge device's part of a transaction, and handing it to the machine.

use std::{sync::OnceLock, time::Duration};

use crate::Context;

mod device;
mod input;

pub use device::{BridgeDevice, CryptoError};
pub use input::DeviceInput;
/// The `OlmMachine` and the rest of matrix-sdk-crypto, as this build uses them.
pub use matrix_sdk_crypto;

pub use crate::store::crypto::SqlCryptoStore;

/// The context's part: the bridge device once it started.
#[derive(Debug, Default)]
struct DevicePart(OnceLock<BridgeDevice>);

impl Context {
    /// The bridge device, once it started (`encryption.allow`; it starts beside the bridge and
    /// until it could reach the homeserver there is none).
    pub fn bridge_device(&self) -> Option<&BridgeDevice> {
        self.crypto_part().get::<DevicePart>().0.get()
    }
}

/// Starts the bridge device in a task of its own when encryption is allowed: until it works,
/// with growing pauses (1 s to 60 s), since the homeserver may not answer yet.
pub(crate) fn start(ctx: &Context) -> Option<tokio::task::JoinHandle<()>> {
    if !ctx.config().encryption.allow {
        return None;
    }
    let ctx = ctx.clone();
    Some(tokio::spawn(async move {
        let mut delay = Duration::from_secs(1);
        loop {
            match BridgeDevice::start(ctx.store(), ctx.client()).await {
                Ok(device) => {
                    let _ = ctx.crypto_part().get::<DevicePart>().0.set(device);
                    return;
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    retry_in_s = delay.as_secs(),
                    "could not start the bridge device"
                ),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(60));
        }
    }))
}
