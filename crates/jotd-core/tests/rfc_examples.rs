//! The JWS examples of RFC 7515 (appendix A.1–A.4) and RFC 7520 (section 4.1–4.4),
//! bytes from tests/data/rfc_jws_examples.json.
//!
//! Every signature verifies through the engine's key types. Through the whole
//! engine, examples whose payload is a claims set are allowed; the others (a
//! text payload) verify their signature first and are then `malformed`, and
//! any tampering is `bad_signature`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jotd_core::{
    Algorithm, Engine, EngineConfig, Reason, Request, Snapshot, Tenant, TenantKey, UnixTime,
    VerifyingKey,
};
use serde_json::Value;
use std::sync::Arc;

fn b64(jwk: &Value, field: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(jwk[field].as_str().expect(field))
        .expect("base64url")
}

fn key_from_jwk(alg: Algorithm, jwk: &Value) -> VerifyingKey {
    match jwk["kty"].as_str() {
        Some("RSA") => VerifyingKey::from_rsa_components(alg, &b64(jwk, "n"), &b64(jwk, "e")),
        Some("EC") => VerifyingKey::from_ec_coordinates(alg, &b64(jwk, "x"), &b64(jwk, "y")),
        Some("oct") => VerifyingKey::from_hmac_secret(alg, &b64(jwk, "k")),
        other => panic!("unexpected kty {other:?}"),
    }
    .expect("RFC key loads")
}

struct Example {
    name: String,
    alg: Algorithm,
    token: String,
    key: VerifyingKey,
}

fn examples() -> Vec<Example> {
    let text = include_str!("data/rfc_jws_examples.json");
    let doc: Value = serde_json::from_str(text).expect("json");
    doc["examples"]
        .as_array()
        .expect("examples")
        .iter()
        .map(|e| {
            let alg = Algorithm::from_name(e["alg"].as_str().expect("alg")).expect("known alg");
            Example {
                name: e["name"].as_str().expect("name").to_owned(),
                alg,
                token: e["token"].as_str().expect("token").to_owned(),
                key: key_from_jwk(alg, &e["jwk"]),
            }
        })
        .collect()
}

fn decide(ex: Example, token: &str, now: u64) -> Reason {
    let kid = serde_json::from_slice::<Value>(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap()["kid"]
        .as_str()
        .unwrap_or("rfc")
        .to_owned();
    let tenant = Tenant::new(
        "rfc",
        vec![TenantKey {
            kid: kid.into(),
            key: ex.key,
            issuer: None,
        }],
    );
    let snap = Snapshot::new(1, [Arc::new(tenant)]);
    let engine = Engine::new(EngineConfig {
        cache: None,
        ..EngineConfig::default()
    });
    engine
        .verify(
            &snap,
            &Request::bearer("rfc", token.as_bytes()),
            UnixTime(now),
        )
        .reason()
}

/// RFC 7515's claims examples expire at 1300819380 (2011-03-22T18:43:00Z).
const RFC7515_NOW: u64 = 1_300_819_000;

#[test]
fn every_rfc_signature_verifies_with_the_engine_key_types() {
    let all = examples();
    assert_eq!(all.len(), 8);
    for ex in &all {
        let (signing_input, sig) = ex.token.rsplit_once('.').expect("three segments");
        let sig = URL_SAFE_NO_PAD.decode(sig).expect("base64url signature");
        assert!(
            ex.key.verify(signing_input.as_bytes(), &sig),
            "{} ({}) must verify",
            ex.name,
            ex.alg
        );
        let mut bad = sig.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(
            !ex.key.verify(signing_input.as_bytes(), &bad),
            "{}: a flipped bit must fail",
            ex.name
        );
    }
}

#[test]
fn rfc7515_claims_examples_pass_the_whole_engine() {
    for ex in examples()
        .into_iter()
        .filter(|e| ["RFC 7515 A.1", "RFC 7515 A.2", "RFC 7515 A.3"].contains(&e.name.as_str()))
    {
        let token = ex.token.clone();
        let name = ex.name.clone();
        assert_eq!(decide(ex, &token, RFC7515_NOW), Reason::Ok, "{name}");
    }
    let a1 = examples().into_iter().next().unwrap();
    let token = a1.token.clone();
    assert_eq!(
        decide(a1, &token, 1_300_819_380 + 30),
        Reason::Expired,
        "A.1 after exp + leeway"
    );
}

#[test]
fn text_payloads_verify_then_fail_as_claims_and_tampering_fails_first() {
    for ex in examples()
        .into_iter()
        .filter(|e| e.name == "RFC 7515 A.4" || e.name.starts_with("RFC 7520"))
    {
        let name = ex.name.clone();
        let token = ex.token.clone();
        let mut tampered = token.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        let ex2 = examples().into_iter().find(|e| e.name == name).unwrap();
        assert_eq!(
            decide(ex, &token, RFC7515_NOW),
            Reason::Malformed,
            "{name}: signature ok, payload not claims"
        );
        assert_eq!(
            decide(ex2, &tampered, RFC7515_NOW),
            Reason::BadSignature,
            "{name}: tampered"
        );
    }
}
