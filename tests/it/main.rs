//! One integration-test binary (links once): `mod` per area.

mod cli;
mod common;
mod crash;
mod inbox;
mod store;
mod synapse;
mod webhook;
