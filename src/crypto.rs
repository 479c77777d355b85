//! End-to-bridge encryption (the `encryption` feature): one device for the bridge, its keys in
//! the bridge's database, with matrix-sdk-crypto's `OlmMachine` doing all the cryptography.
//!
//! - [`SqlCryptoStore`]: the machine's store on the bridge's SQL [`Store`](crate::Store).

/// The `OlmMachine` and the rest of matrix-sdk-crypto, as this build uses them.
pub use matrix_sdk_crypto;

pub use crate::store::crypto::SqlCryptoStore;
