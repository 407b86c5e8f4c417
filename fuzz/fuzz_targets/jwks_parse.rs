//! JWKS documents on arbitrary bytes: never panics, and a document that parses
//! yields at least one key, no more than `max_keys`, with unique kids.
//!
//! Input layout: byte 0 picks the config algorithm (0 → none, 1..=14 →
//! `Algorithm::ALL[n - 1]`, other values → none), byte 1 picks `max_keys`
//! (`byte % 8`, so 0 exercises the limit), the rest is the document.
#![no_main]

use jotd_core::Algorithm;
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;

fuzz_target!(|data: &[u8]| {
    let [alg_byte, max_byte, doc @ ..] = data else { return };
    let config_alg = Algorithm::ALL.get(usize::from(*alg_byte).wrapping_sub(1)).copied();
    let max_keys = usize::from(max_byte % 8);
    if let Ok(parsed) = jotd_keys::jwk::parse_jwks(doc, config_alg, max_keys) {
        assert!(!parsed.keys.is_empty(), "Ok with no keys");
        assert!(parsed.keys.len() <= max_keys, "{} keys > max_keys {max_keys}", parsed.keys.len());
        let mut kids = HashSet::new();
        for (kid, key) in &parsed.keys {
            assert!(kids.insert(kid.as_str()), "duplicate kid {kid:?}");
            if let Some(alg) = config_alg {
                assert_eq!(key.algorithm(), alg, "kid {kid:?} not bound to the config algorithm");
            }
        }
    }
});
