//! Splitting, strict base64url and header parsing on arbitrary bytes: never panics,
//! and the three segments always tile the token exactly.
#![no_main]

use jotd_core::Reason;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assert_ne!(jotd_core::fuzzing::token_split(data), Err(Reason::InternalError));
});
