//! Fuzz target `snapshot`: the checks of `permd::fuzzing::snapshot`; a broken invariant is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = permd::fuzzing::snapshot(data) {
        panic!("{violation}");
    }
});
