//! Public key material (PEM, base64-wrapped PEM, DER, certificates) on
//! arbitrary bytes: never panics; a key that loads is bound to the algorithm
//! asked for, and its SPKI loads again (as DER) to the same fingerprint.
#![no_main]

use jotd_core::{Algorithm, KeyFamily};
use jotd_keys::material::{fingerprint, public_der, public_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = public_der(data);
    let _ = fingerprint(data);
    for alg in Algorithm::ALL.into_iter().filter(|a| a.family() != KeyFamily::Hmac) {
        let Ok(key) = public_key(alg, data) else { continue };
        assert_eq!(key.algorithm(), alg);
        let spki = key.spki_der().unwrap_or_else(|| panic!("{alg}: public key without SPKI"));
        let again = public_key(alg, &spki).unwrap_or_else(|e| panic!("{alg}: own SPKI refused: {e}"));
        assert_eq!(again.algorithm(), alg);
        assert_eq!(again.fingerprint(), key.fingerprint(), "{alg}: fingerprint changed on re-parse");
    }
});
