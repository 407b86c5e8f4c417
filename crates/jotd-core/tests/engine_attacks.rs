//! The attack corpus: one test per known JWT attack, each with the reason the engine must give.

mod fixture;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fixture::{NOW, claims, kid, mint, reason, signer, snapshot, tenant, uncached};
use jotd_core::Algorithm::{EdDsa, Es256, Hs256, Rs256};
use jotd_core::{Engine, EngineConfig, Reason, SigningKey, Snapshot};
use serde_json::json;
use std::num::NonZeroUsize;

/// Tenant `t` holds RS256, ES256 and EdDSA keys; tenant `h` holds HS256 and RS256 keys.
fn setup() -> (Engine, Snapshot) {
    (
        uncached(),
        snapshot(vec![
            tenant("t", &[Rs256, Es256, EdDsa]),
            tenant("h", &[Hs256, Rs256]),
        ]),
    )
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with this header and the default claims, signed by `key`.
fn signed(key: &SigningKey, header: &str) -> String {
    key.mint_raw(header.as_bytes(), claims(json!({})).as_bytes())
        .expect("mint")
}

/// `token` with its signature replaced by `sig`.
fn with_signature(token: &str, sig: &[u8]) -> String {
    let (input, _) = token.rsplit_once('.').unwrap();
    format!("{input}.{}", b64(sig))
}

fn check(token: &str, want: Reason) {
    let (engine, snap) = setup();
    assert_eq!(
        reason(&engine, &snap, "t", token),
        want,
        "token: {:.120}",
        token
    );
}

#[test]
fn baseline_tokens_are_allowed() {
    for alg in [Rs256, Es256, EdDsa] {
        check(&mint(alg, json!({})), Reason::Ok);
    }
}

#[test]
fn alg_none() {
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims(json!({})).as_bytes())
    );
    check(&unsigned, Reason::Malformed);
    for alg in ["none", "None", "NONE", "nOnE"] {
        let with_sig = format!(
            "{}.{}.AAAA",
            b64(format!(r#"{{"alg":"{alg}"}}"#).as_bytes()),
            b64(b"{}")
        );
        check(&with_sig, Reason::UnsupportedAlg);
    }
}

#[test]
fn hs256_signed_with_the_rsa_public_key_bytes() {
    let spki = signer(Rs256).verifying_key().unwrap().spki_der().unwrap();
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&spki)
    );
    let (engine, snap) = setup();
    for secret in [spki.clone(), pem.into_bytes()] {
        let forger = SigningKey::from_hmac_secret(Hs256, &secret).unwrap();
        let token = signed(&forger, r#"{"alg":"HS256","kid":"rs256"}"#);
        // A tenant without HS256 never considers it; one with HS256 still binds kid rs256 to RS256.
        assert_eq!(reason(&engine, &snap, "t", &token), Reason::AlgNotAllowed);
        assert_eq!(reason(&engine, &snap, "h", &token), Reason::KeyAlgMismatch);
    }
}

#[test]
fn ecdsa_zero_and_out_of_range_signatures() {
    const N: &str = "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";
    let n: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&N[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let valid = mint(Es256, json!({}));
    let sig = URL_SAFE_NO_PAD
        .decode(valid.rsplit_once('.').unwrap().1)
        .unwrap();
    let cases: Vec<Vec<u8>> = vec![
        vec![0; 64],                                           // r = s = 0
        [n.clone(), n.clone()].concat(),                       // r = s = n
        [sig[..32].to_vec(), n.clone()].concat(),              // s = n
        [n.clone(), sig[32..].to_vec()].concat(),              // r = n
        vec![0xff; 64],                                        // r, s > n
        [vec![0; 31], vec![1], vec![0; 31], vec![1]].concat(), // r = s = 1
    ];
    for bad in cases {
        check(&with_signature(&valid, &bad), Reason::BadSignature);
    }
}

#[test]
fn wrong_length_signatures() {
    for alg in [Rs256, Es256, EdDsa] {
        let valid = mint(alg, json!({}));
        let sig = URL_SAFE_NO_PAD
            .decode(valid.rsplit_once('.').unwrap().1)
            .unwrap();
        let shorter = &sig[..sig.len() - 1];
        let longer = [sig.as_slice(), &[0]].concat();
        let zero_prefixed = [&[0], sig.as_slice()].concat();
        for bad in [shorter, &longer, &zero_prefixed, &sig[..1]] {
            check(&with_signature(&valid, bad), Reason::BadSignature);
        }
    }
    // A DER-encoded ECDSA signature is not a JWS signature.
    let valid = mint(Es256, json!({}));
    let sig = URL_SAFE_NO_PAD
        .decode(valid.rsplit_once('.').unwrap().1)
        .unwrap();
    let int = |b: &[u8]| {
        let b = &b[b.iter().position(|x| *x != 0).unwrap_or(31)..];
        let pad = b[0] >= 0x80;
        let mut v = vec![0x02, (b.len() + usize::from(pad)) as u8];
        if pad {
            v.push(0);
        }
        v.extend_from_slice(b);
        v
    };
    let body = [int(&sig[..32]), int(&sig[32..])].concat();
    let der = [vec![0x30, body.len() as u8], body].concat();
    check(&with_signature(&valid, &der), Reason::BadSignature);
    // A truncated HMAC tag.
    let (engine, snap) = setup();
    let hs = mint(Hs256, json!({}));
    let tag = URL_SAFE_NO_PAD
        .decode(hs.rsplit_once('.').unwrap().1)
        .unwrap();
    assert_eq!(reason(&engine, &snap, "h", &hs), Reason::Ok);
    assert_eq!(
        reason(&engine, &snap, "h", &with_signature(&hs, &tag[..16])),
        Reason::BadSignature
    );
}

#[test]
fn jwe_five_segments() {
    let header = b64(br#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#);
    check(&format!("{header}.AAAA.AAAA.AAAA.AAAA"), Reason::Malformed);
    check(&format!("{header}.AAAA.AAAA"), Reason::Malformed); // `enc` in a 3-segment token
}

#[test]
fn unknown_crit_and_b64() {
    let key = signer(Es256);
    check(
        &signed(
            key,
            r#"{"alg":"ES256","kid":"es256","crit":["exp"],"exp":1}"#,
        ),
        Reason::UnsupportedCrit,
    );
    check(
        &signed(
            key,
            r#"{"alg":"ES256","kid":"es256","crit":["b64"],"b64":false}"#,
        ),
        Reason::UnsupportedCrit,
    );
    check(
        &signed(key, r#"{"alg":"ES256","kid":"es256","b64":false}"#),
        Reason::Malformed,
    );
}

#[test]
fn embedded_keys_are_never_trusted() {
    let attacker = SigningKey::generate(Es256).unwrap();
    let spki = attacker.verifying_key().unwrap().spki_der().unwrap();
    let x5c = base64::engine::general_purpose::STANDARD.encode(&spki);
    for member in [
        r#""jwk":{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}"#.to_owned(),
        r#""jku":"https://attacker.example/jwks.json""#.to_owned(),
        r#""x5u":"https://attacker.example/cert.pem""#.to_owned(),
        format!(r#""x5c":["{x5c}"]"#),
    ] {
        check(
            &signed(&attacker, &format!(r#"{{"alg":"ES256",{member}}}"#)),
            Reason::Malformed,
        );
        check(
            &signed(
                &attacker,
                &format!(r#"{{"alg":"ES256","kid":"es256",{member}}}"#),
            ),
            Reason::Malformed,
        );
    }
    // Without the embedded key, the attacker's signature meets the configured key and fails.
    check(
        &signed(&attacker, r#"{"alg":"ES256","kid":"es256"}"#),
        Reason::BadSignature,
    );
}

#[test]
fn kid_with_path_or_sql_characters() {
    let key = signer(Es256);
    for evil in [
        "../../../../dev/null",
        "/etc/passwd",
        "' OR '1'='1",
        "es256'; DROP TABLE keys; --",
        "es256\u{0}",
        "es256/../es256",
        "ES256",
        " es256",
    ] {
        let header = json!({"alg": "ES256", "kid": evil}).to_string();
        check(&signed(key, &header), Reason::UnknownKid);
    }
}

#[test]
fn padding_and_non_canonical_base64() {
    let valid = mint(Es256, json!({}));
    let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
    let with = |i: usize, s: String| {
        let mut p = parts.clone();
        p[i] = s;
        p.join(".")
    };
    check(&with(0, format!("{}=", parts[0])), Reason::Malformed);
    check(&with(1, format!("{}==", parts[1])), Reason::Malformed);
    check(&with(2, format!("{}==", parts[2])), Reason::Malformed);
    // A 64-byte signature ends in a 2-character group whose last 4 bits must be zero.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let sig = parts[2].clone().into_bytes();
    let last = ALPHABET
        .iter()
        .position(|c| *c == sig[sig.len() - 1])
        .unwrap();
    assert_eq!(last & 0xf, 0, "canonical encoding");
    let mut odd = sig.clone();
    *odd.last_mut().unwrap() = ALPHABET[last | 1];
    check(&with(2, String::from_utf8(odd).unwrap()), Reason::Malformed);
    // The standard alphabet, whitespace and line breaks are not base64url.
    parts[1] = parts[1].replacen(|c: char| c.is_ascii_alphanumeric(), "+", 1);
    check(&parts.join("."), Reason::Malformed);
    check(&valid.replacen('.', " .", 1), Reason::Malformed);
    check(&format!("{valid}\n"), Reason::Malformed);
}

#[test]
fn token_over_the_cap_is_refused_before_decoding() {
    let token = mint(Es256, json!({"pad": "x".repeat(1000)}));
    let snap = snapshot(vec![tenant("t", &[Es256])]);
    let cap = |n: usize| {
        Engine::new(EngineConfig {
            cache: None,
            max_token_bytes: NonZeroUsize::new(n).unwrap(),
            ..EngineConfig::default()
        })
    };
    assert_eq!(reason(&cap(token.len()), &snap, "t", &token), Reason::Ok);
    assert_eq!(
        reason(&cap(token.len() - 1), &snap, "t", &token),
        Reason::TokenTooLarge
    );
    // Default cap 8 KiB: even garbage is refused by size first.
    check(&"x".repeat(8 * 1024 + 1), Reason::TokenTooLarge);
}

#[test]
fn token_of_many_dots() {
    check(&".".repeat(5000), Reason::Malformed);
    check(&format!("{}.x", mint(Es256, json!({}))), Reason::Malformed);
    check(&"a.".repeat(2000), Reason::Malformed);
}

#[test]
fn deep_json_nesting() {
    let key = signer(Es256);
    let deep = format!("{}1{}", "[".repeat(2000), "]".repeat(2000));
    let payload = format!(r#"{{"sub":"x","exp":{},"x":{deep}}}"#, NOW + 60);
    check(
        &key.mint_raw(br#"{"alg":"ES256","kid":"es256"}"#, payload.as_bytes())
            .unwrap(),
        Reason::Malformed,
    );
    let header = format!(r#"{{"alg":"ES256","kid":"es256","x":{deep}}}"#);
    check(&signed(key, &header), Reason::Malformed);
}

#[test]
fn duplicate_and_wrongly_typed_claims() {
    let key = signer(Es256);
    let raw = |payload: String| {
        key.mint_raw(br#"{"alg":"ES256","kid":"es256"}"#, payload.as_bytes())
            .unwrap()
    };
    let exp = NOW + 600;
    check(
        &raw(format!(r#"{{"exp":{exp},"exp":{}}}"#, NOW - 600)),
        Reason::Malformed,
    );
    check(&raw(format!(r#"{{"exp":"{exp}"}}"#)), Reason::InvalidClaim);
    check(
        &raw(format!(r#"{{"exp":{exp},"aud":42}}"#)),
        Reason::InvalidClaim,
    );
    check(
        &raw(format!(r#"{{"exp":{exp},"sub":{{"id":1}}}}"#)),
        Reason::InvalidClaim,
    );
    check(
        &raw(format!(r#"{{"exp":{exp},"nbf":"0"}}"#)),
        Reason::InvalidClaim,
    );
    check(
        &signed(key, r#"{"alg":"ES256","alg":"ES256","kid":"es256"}"#),
        Reason::Malformed,
    );
}

#[test]
fn header_alg_differs_from_the_keys_alg() {
    // ES256 header naming the RSA key: rejected before any signature work.
    check(
        &signed(
            signer(Es256),
            &format!(r#"{{"alg":"ES256","kid":"{}"}}"#, kid(Rs256)),
        ),
        Reason::KeyAlgMismatch,
    );
    // EdDSA and Ed25519 name the same key type.
    check(
        &signed(signer(EdDsa), r#"{"alg":"Ed25519","kid":"eddsa"}"#),
        Reason::Ok,
    );
}

#[test]
fn non_utf8_and_binary_garbage() {
    let (engine, snap) = setup();
    let garbage: &[u8] = b"\xff\xfe.\x00\x01.\x80";
    let d = engine.verify(
        &snap,
        &jotd_core::Request::bearer("t", garbage),
        jotd_core::UnixTime(NOW),
    );
    assert_eq!(d.reason(), Reason::Malformed);
}

/// `s` replaced by `n - s` (P-256 order `n`): the other valid signature
/// of the same token. RFC 7518 has no low-S rule; jotd accepts both, like
/// PyJWT and jose.
fn high_s_twin(token: &str) -> String {
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];
    let (_, sig) = token.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    let s = &mut sig[32..];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(N[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(d < 0);
        s[i] = d.rem_euclid(256) as u8;
    }
    assert_eq!(borrow, 0, "s < n");
    with_signature(token, &sig)
}

/// Malleable ECDSA: both `(r, s)` and `(r, n - s)` verify. The cache keys on
/// the whole token bytes (the twin is a second entry, never a lookup by
/// signature), and revocation keys on `jti`/`sub`, so revoking the token
/// revokes its twin, cached or not.
#[test]
fn high_s_ecdsa_twins_verify_and_are_revoked_together() {
    let token = mint(Es256, json!({"jti": "twin-1"}));
    let twin = high_s_twin(&token);
    assert_ne!(token, twin);
    check(&token, Reason::Ok);
    check(&twin, Reason::Ok);
    let engine = Engine::new(EngineConfig::default());
    let open = snapshot(vec![tenant("t", &[Es256])]);
    for t in [&token, &twin, &token, &twin] {
        assert_eq!(reason(&engine, &open, "t", t), Reason::Ok);
    }
    let stats = engine.cache_stats().unwrap();
    assert_eq!(
        (stats.inserts, stats.hits),
        (2, 2),
        "one entry per token bytes"
    );
    let mut revoked = tenant("t", &[Es256]);
    let mut denylist = jotd_core::Denylist::default();
    denylist
        .jti
        .insert("twin-1".into(), jotd_core::UnixTime(NOW + 600));
    let denylist = std::sync::Arc::new(denylist);
    revoked.denylist = std::sync::Arc::clone(&denylist);
    let closed = snapshot(vec![revoked]);
    for t in [&token, &twin] {
        assert_eq!(reason(&engine, &closed, "t", t), Reason::Revoked);
        assert_eq!(reason(&uncached(), &closed, "t", t), Reason::Revoked);
    }
    // The same entry in the list shared by every tenant revokes alike.
    let mut shared = tenant("t", &[Es256]);
    shared.shared_denylist = denylist;
    let closed = snapshot(vec![shared]);
    for t in [&token, &twin] {
        assert_eq!(reason(&engine, &closed, "t", t), Reason::Revoked);
        assert_eq!(reason(&uncached(), &closed, "t", t), Reason::Revoked);
    }
    // A flipped bit in the twin is still a bad signature.
    let (input, sig) = twin.rsplit_once('.').unwrap();
    let mut bad = URL_SAFE_NO_PAD.decode(sig).unwrap();
    bad[63] ^= 1;
    check(&format!("{input}.{}", b64(&bad)), Reason::BadSignature);
}

/// Policy smuggling through the whole engine: origins that carry another
/// host after a path, query, fragment, backslash or userinfo, and Besu
/// permission strings that only look like grants.
#[test]
fn policy_smuggling_end_to_end() {
    let engine = uncached();
    let mut allow = tenant("a", &[Es256]);
    allow.policy = jotd_core::PolicyModel::Allowlist;
    let mut besu = tenant("b", &[Es256]);
    besu.policy = jotd_core::PolicyModel::Permissions;
    let snap = snapshot(vec![allow, besu]);
    let origin_token = mint(Es256, json!({"origins": ["https://*.example.com"]}));
    let with_origin = |origin: &str| {
        let req = jotd_core::Request {
            token: Some(origin_token.as_bytes()),
            tenant: "a",
            method: Some("eth_call"),
            addresses: &[],
            origin: Some(origin),
            user_agent: None,
        };
        engine
            .verify(&snap, &req, jotd_core::UnixTime(NOW))
            .reason()
    };
    assert_eq!(with_origin("https://a.example.com"), Reason::Ok);
    assert_eq!(with_origin("https://a.b.example.com"), Reason::Ok);
    for evil in [
        "https://evil.com/.example.com",
        "https://evil.com?.example.com",
        "https://evil.com#.example.com",
        "https://evil.com\\.example.com",
        "https://user@evil.com/.example.com",
        "https://example.com.evil.com",
        "https://a.example.com/",
        "http://a.example.com",
    ] {
        assert_eq!(with_origin(evil), Reason::OriginNotAllowed, "{evil}");
    }
    for (perm, method, want) in [
        ("eth:*", "eth_call", Reason::Ok),
        ("eth:call", "eth_call", Reason::Ok),
        ("*:*", "admin_peers", Reason::Ok),
        ("*:call", "eth_call", Reason::PermissionDenied),
        (":*", "eth_call", Reason::PermissionDenied),
        ("*", "eth_call", Reason::PermissionDenied),
        ("eth:", "eth_call", Reason::PermissionDenied),
        ("eth", "eth_call", Reason::PermissionDenied),
        ("eth:*", "ethx_call", Reason::PermissionDenied),
    ] {
        let token = mint(Es256, json!({"permissions": [perm]}));
        let req = jotd_core::Request {
            token: Some(token.as_bytes()),
            tenant: "b",
            method: Some(method),
            addresses: &[],
            origin: None,
            user_agent: None,
        };
        assert_eq!(
            engine
                .verify(&snap, &req, jotd_core::UnixTime(NOW))
                .reason(),
            want,
            "{perm} for {method}"
        );
    }
}
