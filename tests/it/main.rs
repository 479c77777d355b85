//! One integration-test binary (links once): `mod` per area. Its items are public to its own
//! modules only, so the library's `unreachable_pub` and `missing_docs` do not apply here.
#![allow(unreachable_pub, missing_docs)]

mod bad_input;
mod bridge_error;
mod chaos;
mod cli;
mod common;
mod crash;
#[cfg(feature = "encryption")]
mod crypto_late_key;
#[cfg(feature = "encryption-conformance")]
mod crypto_store;
mod db_faults;
mod hs_faults;
mod inbox;
mod media;
mod secrets;
mod store;
mod store_users;
mod synapse;
mod synapse_crash;
#[cfg(feature = "encryption")]
mod synapse_crypto;
mod synapse_dms;
#[cfg(feature = "encryption")]
mod synapse_e2ee;
#[cfg(feature = "encryption")]
mod synapse_e2ee_crash;
mod synapse_logins;
mod synapse_mappings;
mod synapse_portals;
mod synapse_puppet;
mod synapse_restart;
mod webhook;
