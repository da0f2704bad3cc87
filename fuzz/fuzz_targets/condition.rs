//! Fuzz target `condition`: the checks of `permd::fuzzing::condition`; a broken invariant is a
//! crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = permd::fuzzing::condition(data) {
        panic!("{violation}");
    }
});
