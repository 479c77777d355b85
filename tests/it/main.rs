//! One integration-test binary (links once): `mod` per area.

mod bad_input;
mod bridge_error;
mod chaos;
mod cli;
mod common;
mod crash;
mod db_faults;
mod hs_faults;
mod inbox;
mod secrets;
mod store;
mod synapse;
mod synapse_restart;
mod webhook;
