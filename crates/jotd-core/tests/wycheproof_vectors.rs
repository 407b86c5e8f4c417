//! Wycheproof vectors through the engine's own key types: every `valid` case
//! accepted, every `invalid` case rejected, `acceptable` cases pinned to the
//! engine's choice in tests/data/wycheproof_acceptable.txt (regenerate with
//! `JOTD_BLESS=1 cargo test -p jotd-core --test wycheproof_vectors`).
//! Vectors whose parameters JWS does not use (truncated HMAC tags, DER ECDSA,
//! other PSS salt lengths) must never be accepted.

use jotd_core::{Algorithm, VerifyingKey};
use std::fmt::Write as _;
use wycheproof::{TestResult, ecdsa, eddsa, mac, rsa_pkcs1_verify as pkcs1, rsa_pss_verify as pss};

#[derive(Default)]
struct Tally {
    valid: usize,
    invalid: usize,
    acceptable: Vec<String>,
    wrong: Vec<String>,
}

impl Tally {
    /// Records one case. `jws` says whether the vector uses parameters JWS allows.
    fn case(
        &mut self,
        set: &str,
        tc: usize,
        result: &TestResult,
        flags: &dyn std::fmt::Debug,
        accepted: bool,
        jws: bool,
    ) {
        let expect = match (result, jws) {
            (_, false) => Some(false),
            (TestResult::Valid, true) => Some(true),
            (TestResult::Invalid, true) => Some(false),
            (TestResult::Acceptable, true) => None,
        };
        match expect {
            Some(want) if want != accepted => {
                self.wrong.push(format!(
                    "{set} tc {tc} {result:?} {flags:?}: engine accepted={accepted}"
                ));
            }
            Some(true) => self.valid += 1,
            Some(false) => self.invalid += 1,
            None => {
                let choice = if accepted { "accepted" } else { "rejected" };
                self.acceptable
                    .push(format!("{set} tc {tc} {flags:?} -> {choice}"));
            }
        }
    }
}

fn verify(key: &Result<VerifyingKey, jotd_core::KeyError>, msg: &[u8], sig: &[u8]) -> bool {
    key.as_ref().is_ok_and(|k| k.verify(msg, sig))
}

fn rsa_pkcs1(t: &mut Tally) {
    use pkcs1::TestName::*;
    let sets = [
        (Rsa2048Sha256, Algorithm::Rs256),
        (Rsa3072Sha256, Algorithm::Rs256),
        (Rsa4096Sha256, Algorithm::Rs256),
        (Rsa8192Sha256, Algorithm::Rs256),
        (Rsa2048Sha384, Algorithm::Rs384),
        (Rsa3072Sha384, Algorithm::Rs384),
        (Rsa4096Sha384, Algorithm::Rs384),
        (Rsa8192Sha384, Algorithm::Rs384),
        (Rsa2048Sha512, Algorithm::Rs512),
        (Rsa3072Sha512, Algorithm::Rs512),
        (Rsa4096Sha512, Algorithm::Rs512),
        (Rsa8192Sha512, Algorithm::Rs512),
    ];
    for (name, alg) in sets {
        let set = pkcs1::TestSet::load(name).expect("test set");
        for g in &set.test_groups {
            let key = VerifyingKey::from_public_der(alg, &g.der);
            for c in &g.tests {
                t.case(
                    &format!("{alg}/{name:?}"),
                    c.tc_id,
                    &c.result,
                    &c.flags,
                    verify(&key, &c.msg, &c.sig),
                    true,
                );
            }
        }
    }
}

fn rsa_pss(t: &mut Tally) {
    use pss::TestName::*;
    let sets = [
        (RsaPss2048Sha256Mgf1SaltLen32, Algorithm::Ps256, true),
        (RsaPss3072Sha256Mgf1SaltLen32, Algorithm::Ps256, true),
        (RsaPss4096Sha256Mgf1SaltLen32, Algorithm::Ps256, true),
        (RsaPss2048Sha384Mgf1SaltLen48, Algorithm::Ps384, true),
        (RsaPss4096Sha384Mgf1SaltLen48, Algorithm::Ps384, true),
        (RsaPss4096Sha512Mgf1SaltLen64, Algorithm::Ps512, true),
        // JWS fixes the salt at the hash length and MGF1 at the same hash.
        (RsaPss2048Sha256Mgf1SaltLen0, Algorithm::Ps256, false),
        (RsaPss2048Sha256Mgf1Sha1_20, Algorithm::Ps256, false),
        (RsaPss4096Sha512Mgf1SaltLen32, Algorithm::Ps512, false),
    ];
    for (name, alg, jws) in sets {
        let set = pss::TestSet::load(name).expect("test set");
        for g in &set.test_groups {
            let key = VerifyingKey::from_public_der(alg, &g.der);
            // In the other-salt sets, a case re-signed with the hash-length salt is a genuine
            // JWS signature (Wycheproof calls it invalid for *that* set's parameters).
            let jws_salt = format!("s_len changed to {}", g.hash_len());
            for c in &g.tests {
                let jws = jws || (c.comment == jws_salt && g.mgf_hash == Some(g.hash));
                let result = if jws && c.comment == jws_salt {
                    &TestResult::Valid
                } else {
                    &c.result
                };
                t.case(
                    &format!("{alg}/{name:?}"),
                    c.tc_id,
                    result,
                    &c.flags,
                    verify(&key, &c.msg, &c.sig),
                    jws,
                );
            }
        }
    }
}

trait HashLen {
    fn hash_len(&self) -> usize;
}

impl HashLen for pss::TestGroup {
    fn hash_len(&self) -> usize {
        match self.hash {
            wycheproof::HashFunction::Sha2_384 => 48,
            wycheproof::HashFunction::Sha2_512 => 64,
            _ => 32,
        }
    }
}

fn ecdsa(t: &mut Tally) {
    use ecdsa::TestName::*;
    let sets = [
        (EcdsaSecp256r1Sha256P1363, Algorithm::Es256, true),
        (EcdsaSecp384r1Sha384P1363, Algorithm::Es384, true),
        (EcdsaSecp521r1Sha512P1363, Algorithm::Es512, true),
        (EcdsaSecp256k1Sha256P1363, Algorithm::Es256K, true),
        // DER-encoded signatures are not JWS signatures.
        (EcdsaSecp256r1Sha256, Algorithm::Es256, false),
        (EcdsaSecp256k1Sha256, Algorithm::Es256K, false),
        // The right curve with the wrong hash.
        (EcdsaSecp256r1Sha512P1363, Algorithm::Es256, false),
    ];
    for (name, alg, jws) in sets {
        let set = ecdsa::TestSet::load(name).expect("test set");
        for g in &set.test_groups {
            let key = VerifyingKey::from_public_der(alg, &g.der);
            for c in &g.tests {
                t.case(
                    &format!("{alg}/{name:?}"),
                    c.tc_id,
                    &c.result,
                    &c.flags,
                    verify(&key, &c.msg, &c.sig),
                    jws,
                );
            }
        }
    }
}

fn eddsa(t: &mut Tally) {
    let set = eddsa::TestSet::load(eddsa::TestName::Ed25519).expect("test set");
    for g in &set.test_groups {
        let key = VerifyingKey::from_public_der(Algorithm::EdDsa, &g.der);
        for c in &g.tests {
            t.case(
                "EdDSA/Ed25519",
                c.tc_id,
                &c.result,
                &c.flags,
                verify(&key, &c.msg, &c.sig),
                true,
            );
        }
    }
}

fn hmac(t: &mut Tally) {
    use mac::TestName::*;
    for (name, alg, bits) in [
        (HmacSha256, Algorithm::Hs256, 256),
        (HmacSha384, Algorithm::Hs384, 384),
        (HmacSha512, Algorithm::Hs512, 512),
    ] {
        let set = mac::TestSet::load(name).expect("test set");
        for g in &set.test_groups {
            // JWS uses the full tag; secrets shorter than the hash are refused at load.
            let jws = g.tag_size == bits && g.key_size >= bits;
            for c in &g.tests {
                let key = VerifyingKey::from_hmac_secret(alg, &c.key);
                if g.key_size < bits {
                    assert!(
                        key.is_err(),
                        "{alg}: a {}-bit secret must be refused",
                        g.key_size
                    );
                }
                t.case(
                    &format!("{alg}/{name:?}"),
                    c.tc_id,
                    &c.result,
                    &c.flags,
                    verify(&key, &c.msg, &c.tag),
                    jws,
                );
            }
        }
    }
}

#[test]
fn wycheproof_through_engine_key_types() {
    let mut t = Tally::default();
    rsa_pkcs1(&mut t);
    rsa_pss(&mut t);
    ecdsa(&mut t);
    eddsa(&mut t);
    hmac(&mut t);
    assert!(
        t.wrong.is_empty(),
        "{} wrong outcomes:\n{}",
        t.wrong.len(),
        t.wrong.join("\n")
    );
    assert!(
        t.valid > 500 && t.invalid > 2000,
        "too few vectors ran: {} valid, {} invalid",
        t.valid,
        t.invalid
    );

    let mut listing = String::from(
        "# Wycheproof `acceptable` cases and the engine's choice (tests/wycheproof_vectors.rs)\n",
    );
    for line in &t.acceptable {
        writeln!(listing, "{line}").expect("write to string");
    }
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/wycheproof_acceptable.txt"
    );
    if std::env::var_os("JOTD_BLESS").is_some() {
        std::fs::write(path, &listing).expect("write acceptable listing");
    }
    let pinned = std::fs::read_to_string(path).expect("tests/data/wycheproof_acceptable.txt");
    assert_eq!(
        pinned, listing,
        "the engine's choice on acceptable cases changed; review, then JOTD_BLESS=1"
    );
    println!(
        "wycheproof: {} valid accepted, {} invalid rejected, {} acceptable pinned",
        t.valid,
        t.invalid,
        t.acceptable.len()
    );
}
