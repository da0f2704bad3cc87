//! Fuzz target `delta`: the checks of `permd::fuzzing::delta`; a broken invariant is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = permd::fuzzing::delta(data) {
        panic!("{violation}");
    }
});
