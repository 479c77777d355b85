//! One integration-test binary (links once): `mod` per area.

mod bad_input;
mod chaos;
mod cli;
mod common;
mod crash;
mod db_faults;
mod hs_faults;
mod inbox;
mod secrets;
mod store;
mod store_users;
mod synapse;
mod synapse_logins;
mod synapse_restart;
mod webhook;
