//! Registration and config YAML: an error or a value, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = mxbridge::Registration::from_yaml(text);
    let _ = mxbridge::Config::<mxbridge::config::NoBridgeConfig>::from_yaml(text);
});
