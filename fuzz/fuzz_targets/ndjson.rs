//! Fuzz target `ndjson`: the checks of `permd::fuzzing::ndjson`; a broken invariant is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = permd::fuzzing::ndjson(data) {
        panic!("{violation}");
    }
});
