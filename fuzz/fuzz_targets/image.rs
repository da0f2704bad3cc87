//! Fuzz target `image`: the checks of `permd::fuzzing::image` (an index image's body read back,
//! refused or answering); a broken invariant is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = permd::fuzzing::image(data) {
        panic!("{violation}");
    }
});
