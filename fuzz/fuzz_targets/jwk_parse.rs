//! Single JWKs on arbitrary bytes: JSON into `Jwk`, then `to_key` with no
//! config algorithm and with each one: never panics, and a key that builds is
//! bound to the algorithm `Jwk::algorithm` names.
#![no_main]

use jotd_core::Algorithm;
use jotd_keys::jwk::Jwk;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(jwk) = serde_json::from_slice::<Jwk>(data) else { return };
    for config in std::iter::once(None).chain(Algorithm::ALL.map(Some)) {
        if let Ok(key) = jwk.to_key(config) {
            let alg = jwk.algorithm(config).expect("to_key built a key but algorithm() fails");
            assert_eq!(key.algorithm(), alg, "config {config:?}");
            if let Some(c) = config {
                assert_eq!(alg, c);
            }
        }
    }
});
