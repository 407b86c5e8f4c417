//! The claims parser on arbitrary bytes: never panics, and every claim it hands
//! back raw is itself valid JSON.
#![no_main]

use jotd_core::Reason;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assert_ne!(jotd_core::fuzzing::claims_json(data), Err(Reason::InternalError));
});
