//! Transaction bodies: never a panic; accepted events always have storable IDs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let _ = mxbridge::server::fuzzing::parse_transaction(body);
});
