#![doc = include_str!("../../docs/seed-coverage.md")]

// The names the table's links use; only the documentation uses them.
#[allow(unused_imports)]
use {
    super::*,
    crate::{
        Context,
        client::{Client, RequestOptions},
        store::Store,
    },
};
