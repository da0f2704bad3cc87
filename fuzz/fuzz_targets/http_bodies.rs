//! Fuzz target `http_bodies`: the checks of `permd::fuzzing::http_bodies`; a broken invariant is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = permd::fuzzing::http_bodies(data) {
        panic!("{violation}");
    }
});
