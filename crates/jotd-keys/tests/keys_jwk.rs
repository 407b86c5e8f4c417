//! JWK and JWKS → keys: every key type, the algorithm rules, and documents
//! with keys to leave out.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jotd_core::{Algorithm, SigningKey};
use jotd_keys::jwk::{Jwk, JwkError, parse_jwks};
use serde_json::{Value, json};
use std::path::Path;

fn data(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name),
    )
    .expect(name)
}

/// The JWK of a test EC or Ed25519 key, built from its SPKI's trailing point bytes.
fn public_jwk(alg: Algorithm, pem: &str) -> Value {
    let spki = jotd_keys::material::public_der(&data(pem)).unwrap();
    let (crv, n) = match alg {
        Algorithm::Es256 => ("P-256", 32),
        Algorithm::Es384 => ("P-384", 48),
        Algorithm::Es512 => ("P-521", 66),
        Algorithm::Es256K => ("secp256k1", 32),
        _ => ("Ed25519", 32),
    };
    if alg == Algorithm::EdDsa {
        return json!({"kty": "OKP", "crv": crv, "x": URL_SAFE_NO_PAD.encode(&spki[spki.len() - 32..])});
    }
    let point = &spki[spki.len() - (2 * n + 1)..];
    assert_eq!(point[0], 4, "uncompressed point");
    json!({"kty": "EC", "crv": crv, "x": URL_SAFE_NO_PAD.encode(&point[1..=n]), "y": URL_SAFE_NO_PAD.encode(&point[n + 1..])})
}

fn jwk(v: &Value) -> Jwk {
    serde_json::from_value(v.clone()).unwrap()
}

fn verifies(alg: Algorithm, private: &str, key: &jotd_core::VerifyingKey) -> bool {
    let token = SigningKey::from_pkcs8(alg, &data(private))
        .unwrap()
        .mint(None, "{}")
        .unwrap();
    let (input, sig) = jotd_core::split_for_raw(&token).unwrap();
    key.verify(&input, &sig)
}

#[test]
fn ec_okp_and_oct_keys() {
    for (alg, pem, private) in [
        (Algorithm::Es256, "ec_p256.pem", "ec_p256.pk8.der"),
        (Algorithm::Es384, "ec_p384.pem", "ec_p384.pk8.der"),
        (Algorithm::Es512, "ec_p521.pem", "ec_p521.pk8.der"),
        (
            Algorithm::Es256K,
            "ec_secp256k1.pem",
            "ec_secp256k1.pk8.der",
        ),
        (Algorithm::EdDsa, "ed25519.pem", "ed25519.pk8.der"),
    ] {
        let v = public_jwk(alg, pem);
        // The curve alone names the algorithm; `alg` in config or JWK must agree with it.
        let key = jwk(&v)
            .to_key(None)
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(key.algorithm(), alg);
        assert!(verifies(alg, private, &key), "{alg}");
        assert!(jwk(&v).to_key(Some(alg)).is_ok());
    }
    let secret = std::array::from_fn::<u8, 32, _>(|i| (i as u8).wrapping_mul(7).wrapping_add(7));
    let oct = json!({"kty": "oct", "k": URL_SAFE_NO_PAD.encode(secret), "alg": "HS256"});
    let key = jwk(&oct).to_key(None).unwrap();
    let token = SigningKey::from_hmac_secret(Algorithm::Hs256, &secret)
        .unwrap()
        .mint(None, "{}")
        .unwrap();
    let (input, sig) = jotd_core::split_for_raw(&token).unwrap();
    assert!(key.verify(&input, &sig));
}

#[test]
fn rsa_jwk_from_rfc7515() {
    let doc: Value = serde_json::from_str(include_str!(
        "../../jotd-core/tests/data/rfc_jws_examples.json"
    ))
    .unwrap();
    let a2 = doc["examples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "RFC 7515 A.2")
        .unwrap();
    let mut v = a2["jwk"].clone();
    assert_eq!(
        jwk(&v).to_key(None).unwrap_err(),
        JwkError::MissingAlg,
        "RSA needs an algorithm"
    );
    let key = jwk(&v).to_key(Some(Algorithm::Rs256)).unwrap();
    let (input, sig) = jotd_core::split_for_raw(a2["token"].as_str().unwrap()).unwrap();
    assert!(key.verify(&input, &sig));
    v["alg"] = json!("RS256");
    assert!(jwk(&v).to_key(None).is_ok());
    assert!(matches!(
        jwk(&v).to_key(Some(Algorithm::Ps256)),
        Err(JwkError::AlgMismatch { .. })
    ));
}

#[test]
fn bad_jwks_name_their_problem() {
    let p256 = public_jwk(Algorithm::Es256, "ec_p256.pem");
    let with = |k: &str, v: Value| {
        let mut j = p256.clone();
        j[k] = v;
        jwk(&j).to_key(None).unwrap_err()
    };
    assert!(matches!(
        with("alg", json!("ES384")),
        JwkError::CurveMismatch { .. }
    ));
    assert_eq!(
        with("alg", json!("XS256")),
        JwkError::UnknownAlg("XS256".into())
    );
    assert_eq!(with("d", json!("c2VjcmV0")), JwkError::PrivateKey);
    // Any private member, not only `d` (an RSA JWK with `p` and `q` is the private key).
    for member in ["p", "q", "dp", "dq", "qi", "oth"] {
        assert_eq!(
            with(member, json!("c2VjcmV0")),
            JwkError::PrivateKey,
            "{member}"
        );
    }
    assert_eq!(with("x", json!("***")), JwkError::Member("x"));
    assert_eq!(
        with("crv", json!("P-384")),
        JwkError::Key(jotd_core::KeyError::CoordinateLength {
            alg: Algorithm::Es384,
            len: 32,
            expected: 48
        })
    );
    let short = json!({"kty": "oct", "k": URL_SAFE_NO_PAD.encode([1u8; 16]), "alg": "HS256"});
    assert!(matches!(
        jwk(&short).to_key(None),
        Err(JwkError::Key(jotd_core::KeyError::SecretTooShort { .. }))
    ));
    assert_eq!(
        jwk(&json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "alg": "ES256"}))
            .to_key(None)
            .map(|_| ())
            .unwrap_err(),
        JwkError::Key(jotd_core::KeyError::CoordinateLength {
            alg: Algorithm::Es256,
            len: 1,
            expected: 32
        })
    );
    assert_eq!(
        jwk(&json!({"kty": "Kyber"}))
            .to_key(Some(Algorithm::Es256))
            .unwrap_err(),
        JwkError::UnsupportedKty("Kyber".into())
    );
}

#[test]
fn jwks_documents_keep_usable_keys_and_list_the_rest() {
    let mut ec = public_jwk(Algorithm::Es256, "ec_p256.pem");
    ec["kid"] = json!("ec-1");
    let mut ed = public_jwk(Algorithm::EdDsa, "ed25519.pem");
    ed["kid"] = json!("ed-1");
    let mut enc = ec.clone();
    enc["kid"] = json!("enc-1");
    enc["use"] = json!("enc");
    let keyless = public_jwk(Algorithm::Es384, "ec_p384.pem");
    let doc = json!({"keys": [ec, ed, enc, keyless, {"kty": "Kyber", "kid": "pq"}, 5]});
    let parsed = parse_jwks(doc.to_string().as_bytes(), None, 16).unwrap();
    let kids: Vec<_> = parsed.keys.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kids, ["ec-1", "ed-1"]);
    assert_eq!(parsed.skipped.len(), 4, "{:?}", parsed.skipped);
    assert!(parsed.skipped.iter().any(|s| s.contains("use is `enc`")));

    let dup = json!({"keys": [doc["keys"][0], doc["keys"][0]]});
    assert_eq!(
        parse_jwks(dup.to_string().as_bytes(), None, 16).unwrap_err(),
        JwkError::DuplicateKid("\"ec-1\"".into())
    );
    assert!(matches!(
        parse_jwks(br#"{"keys":[]}"#, None, 16),
        Err(JwkError::NoUsableKey(_))
    ));
    assert!(matches!(
        parse_jwks(b"<html>", None, 16),
        Err(JwkError::Json(_))
    ));
    assert!(matches!(
        parse_jwks(br#"{"keys":{}}"#, None, 16),
        Err(JwkError::Json(_))
    ));
    let two = json!({"keys": [doc["keys"][0], doc["keys"][1]]});
    assert_eq!(
        parse_jwks(two.to_string().as_bytes(), None, 1).unwrap_err(),
        JwkError::TooManyKeys { found: 2, limit: 1 }
    );
}

/// A JWKS of junk entries cannot flood the log or an error: entries past
/// `MAX_ENTRIES_PER_KEY` × `max_jwks_keys` are refused before any is parsed, the
/// reasons kept are the first `MAX_SKIPPED_LISTED` (with a count of the rest), and
/// the IdP's strings in them are escaped (a `\n` in a kid cannot forge a log line).
#[test]
fn a_jwks_of_junk_is_bounded_and_its_strings_escaped() {
    use jotd_keys::jwk::{MAX_ENTRIES_PER_KEY, MAX_SKIPPED_LISTED};
    let mut ec = public_jwk(Algorithm::Es256, "ec_p256.pem");
    ec["kid"] = json!("good");
    let max_keys = 16;
    let junk = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"kty": "Kyber", "kid": format!("j{i}\nFAKE log\u{2028}line \u{202E}txt.exe\u{2066}")}))
            .collect()
    };
    let mut keys = junk(max_keys * MAX_ENTRIES_PER_KEY - 1);
    keys.push(ec.clone());
    let parsed = parse_jwks(json!({"keys": keys}).to_string().as_bytes(), None, max_keys).unwrap();
    assert_eq!(parsed.keys.len(), 1);
    assert_eq!(parsed.skipped_total, max_keys * MAX_ENTRIES_PER_KEY - 1);
    assert_eq!(parsed.skipped.len(), MAX_SKIPPED_LISTED);
    assert!(
        parsed
            .skipped
            .iter()
            .all(|s| !s.contains(['\n', '\u{2028}', '\u{202E}', '\u{2066}'])
                && s.contains("\\n")
                && s.contains("\\u{2028}")
                && s.contains("\\u{202e}")),
        "{:?}",
        parsed.skipped
    );
    let more = max_keys * MAX_ENTRIES_PER_KEY - 1 - MAX_SKIPPED_LISTED;
    assert!(
        parsed
            .skipped_summary()
            .ends_with(&format!("; and {more} more"))
    );

    // All junk: the error is bounded too.
    let e = parse_jwks(
        json!({"keys": junk(max_keys * MAX_ENTRIES_PER_KEY)})
            .to_string()
            .as_bytes(),
        None,
        max_keys,
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, JwkError::NoUsableKey(_)), "{text}");
    assert!(
        text.len() < 2048 && !text.contains(['\n', '\u{2028}', '\u{202E}']),
        "{text}"
    );

    // One entry more than the limit: refused whole, before parsing.
    let mut keys = junk(max_keys * MAX_ENTRIES_PER_KEY);
    keys.push(ec);
    assert_eq!(
        parse_jwks(json!({"keys": keys}).to_string().as_bytes(), None, max_keys).unwrap_err(),
        JwkError::TooManyEntries {
            limit: max_keys * MAX_ENTRIES_PER_KEY
        }
    );
    // The cap stops the reading: a document whose list runs on past it (here not
    // even finished) is refused for its length, not for its syntax.
    let mut unfinished = String::from(r#"{"keys":["#);
    for _ in 0..=max_keys * MAX_ENTRIES_PER_KEY {
        unfinished.push_str("{},");
    }
    assert_eq!(
        parse_jwks(unfinished.as_bytes(), None, max_keys).unwrap_err(),
        JwkError::TooManyEntries {
            limit: max_keys * MAX_ENTRIES_PER_KEY
        }
    );
    // A duplicate kid is named escaped as well.
    let dup = json!({"keys": [{"kty": "oct", "kid": "a\nb", "k": "x"}, {"kty": "oct", "kid": "a\nb", "k": "y"}]});
    let e = parse_jwks(dup.to_string().as_bytes(), None, max_keys).unwrap_err();
    assert!(!e.to_string().contains('\n'), "{e}");
    // An IdP's long strings are cut: a 100 KB kid, type or JSON error does not
    // become a 100 KB log line.
    let long = "k".repeat(100_000);
    let dup = json!({"keys": [{"kty": "oct", "kid": long, "k": "eA"}, {"kty": "oct", "kid": long, "k": "eQ"}]});
    // (Such kids are no key ids at all now: left out, by name, cut.)
    let e = parse_jwks(dup.to_string().as_bytes(), None, max_keys).unwrap_err();
    assert!(matches!(e, JwkError::NoUsableKey(_)), "{e}");
    assert!(e.to_string().len() < 1024, "{} bytes", e.to_string().len());
    let odd = json!({"keys": [{"kty": long, "kid": "a"}, {"kty": "oct", "kid": long}]});
    let e = parse_jwks(odd.to_string().as_bytes(), None, max_keys).unwrap_err();
    assert!(matches!(e, JwkError::NoUsableKey(_)), "{e}");
    assert!(e.to_string().len() < 2048, "{} bytes", e.to_string().len());
    // serde quotes the string it did not expect.
    let not_json = format!(r#"{{"keys": "{long}"}}"#);
    let e = parse_jwks(not_json.as_bytes(), None, max_keys).unwrap_err();
    assert!(matches!(e, JwkError::Json(_)), "{e}");
    assert!(e.to_string().len() < 1024, "{} bytes", e.to_string().len());
}

/// A JWK that carries `x5c` must carry its leaf certificate's key, and its
/// `x5t` / `x5t#S256` must be that certificate's thumbprints: a reader of
/// the same document that prefers the certificate must not trust another
/// key than jotd verifies with. A mismatched key is left out of a JWKS
/// (with the reason); the others load.
#[test]
fn a_certificate_in_a_jwk_must_hold_the_jwks_key() {
    use base64::engine::general_purpose::STANDARD;
    let pem = String::from_utf8(data("ec_p256_cert.pem")).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = STANDARD.decode(&body).unwrap();
    let sha = |alg: &'static aws_lc_rs::digest::Algorithm| {
        URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(alg, &der))
    };
    let good = |extra: Value| {
        let mut j = public_jwk(Algorithm::Es256, "ec_p256.pem");
        j["kid"] = json!("cert");
        j["alg"] = json!("ES256");
        j["x5c"] = json!([body]);
        for (k, v) in extra.as_object().unwrap() {
            j[k] = v.clone();
        }
        j
    };
    // The matching key, with and without its thumbprints: loads.
    for extra in [
        json!({}),
        json!({"x5t#S256": sha(&aws_lc_rs::digest::SHA256)}),
        json!({"x5t": sha(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY)}),
    ] {
        assert!(jwk(&good(extra.clone())).to_key(None).is_ok(), "{extra}");
    }
    // Another key under the certificate, a wrong thumbprint, a broken or
    // empty chain: refused by name.
    let other = SigningKey::generate(Algorithm::Es256).unwrap();
    let spki = other.verifying_key().unwrap().spki_der().unwrap().to_vec();
    let point = &spki[spki.len() - 65..];
    for (bad, why) in [
        (
            json!({"x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])}),
            "not the JWK's",
        ),
        (
            json!({"x5t#S256": sha(&aws_lc_rs::digest::SHA384)}),
            "x5t#S256",
        ),
        (json!({"x5t": sha(&aws_lc_rs::digest::SHA256)}), "`x5t`"),
        (json!({"x5c": ["not base64!"]}), "standard base64"),
        (json!({"x5c": []}), "empty"),
        (
            json!({"x5c": [STANDARD.encode(b"not a certificate")]}),
            "x5c[0]",
        ),
    ] {
        let e = jwk(&good(bad.clone())).to_key(None).unwrap_err();
        assert!(
            matches!(e, JwkError::CertificateMismatch(_)) && e.to_string().contains(why),
            "{bad}: {e}"
        );
    }
    // In a JWKS: the mismatched key is left out, named; the good one stays.
    let mut wrong = good(json!({"x5t#S256": sha(&aws_lc_rs::digest::SHA384)}));
    wrong["kid"] = json!("wrong");
    let doc = json!({"keys": [good(json!({})), wrong]}).to_string();
    let keys = parse_jwks(doc.as_bytes(), None, 10).unwrap();
    assert_eq!(keys.keys.len(), 1);
    assert!(
        keys.skipped_summary().contains("x5t#S256"),
        "{}",
        keys.skipped_summary()
    );
}
