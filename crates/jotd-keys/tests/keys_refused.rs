//! Key material that must be refused, by the same rule from every source:
//! DER, PEM, base64-wrapped PEM, `pem`/`pem_file`/`der_file`/`pem_base64`
//! in the config, inline JWK, JWKS files and documents. Weak keys (forgeable
//! Ed25519 points, off-curve EC points, RSA with a bad exponent or an even
//! modulus), PEM with more than one block, JWKs not meant for verifying, and
//! JWKS URLs that are plain http to a host that only looks like loopback.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jotd_core::{Algorithm, SigningKey};
use jotd_keys::jwk::{Jwk, JwkError, parse_jwks};
use jotd_keys::material::{self, MaterialError};
use jotd_keys::{ConfigError, KeysConfig, check_jwks_url};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

const CONFIG: &str = "/etc/jotd/jotd.toml";

/// One piece of bad material in every form a source can take.
struct Weak {
    what: &'static str,
    alg: Algorithm,
    /// DER (SPKI, or PKCS#1 for RSA).
    der: Vec<u8>,
    pem_label: &'static str,
    jwk: Value,
}

impl Weak {
    fn pem(&self) -> String {
        pem::encode(&pem::Pem::new(self.pem_label, self.der.clone()))
    }
}

fn b64u(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn ed25519(what: &'static str, raw: [u8; 32]) -> Weak {
    let mut der = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    der.extend_from_slice(&raw);
    Weak {
        what,
        alg: Algorithm::EdDsa,
        der,
        pem_label: "PUBLIC KEY",
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": b64u(&raw)}),
    }
}

/// A real EC key's SPKI with the last byte of y flipped: off the curve.
fn ec_off_curve(alg: Algorithm, crv: &str, size: usize) -> Weak {
    let mut der = SigningKey::generate(alg)
        .unwrap()
        .verifying_key()
        .unwrap()
        .spki_der()
        .unwrap();
    *der.last_mut().unwrap() ^= 1;
    let point = &der[der.len() - 2 * size..];
    let jwk =
        json!({"kty": "EC", "crv": crv, "x": b64u(&point[..size]), "y": b64u(&point[size..])});
    Weak {
        what: "off-curve EC point",
        alg,
        der,
        pem_label: "PUBLIC KEY",
        jwk,
    }
}

/// PKCS#1 `RSAPublicKey` DER of a 256-byte modulus and a short exponent.
fn pkcs1(n: &[u8], e: &[u8]) -> Vec<u8> {
    assert_eq!(n.len(), 256);
    assert!(e.len() < 0x80);
    let pad_e = e.first().is_none_or(|b| b & 0x80 != 0);
    let body_len = 4 + 1 + 256 + 2 + e.len() + usize::from(pad_e);
    let mut der = vec![0x30, 0x82, (body_len >> 8) as u8, body_len as u8];
    der.extend_from_slice(&[0x02, 0x82, 0x01, 0x01, 0x00]);
    der.extend_from_slice(n);
    der.extend_from_slice(&[0x02, (e.len() + usize::from(pad_e)) as u8]);
    if pad_e {
        der.push(0);
    }
    der.extend_from_slice(e);
    der
}

fn rsa(what: &'static str, n: &[u8], e: &[u8]) -> Weak {
    Weak {
        what,
        alg: Algorithm::Rs256,
        der: pkcs1(n, e),
        pem_label: "RSA PUBLIC KEY",
        jwk: json!({"kty": "RSA", "n": b64u(n), "e": b64u(e), "alg": "RS256"}),
    }
}

fn rsa_modulus() -> Vec<u8> {
    let spki = SigningKey::generate(Algorithm::Rs256)
        .unwrap()
        .verifying_key()
        .unwrap()
        .spki_der()
        .unwrap();
    spki[spki.len() - 5 - 256..spki.len() - 5].to_vec()
}

fn weak_keys() -> Vec<Weak> {
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut order8 = [0u8; 32];
    order8.copy_from_slice(
        &hex(b"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")[..],
    );
    let mut non_canonical = [0xffu8; 32];
    non_canonical[0] = 0xee; // y = p + 1 (the identity, non-canonically)
    non_canonical[31] = 0x7f;
    let n = rsa_modulus();
    let mut even = n.clone();
    *even.last_mut().unwrap() &= 0xfe;
    vec![
        ed25519("Ed25519 identity", identity),
        ed25519("Ed25519 zero bytes (order 4)", [0; 32]),
        ed25519("Ed25519 order-8 point", order8),
        ed25519("Ed25519 non-canonical identity", non_canonical),
        ec_off_curve(Algorithm::Es256, "P-256", 32),
        ec_off_curve(Algorithm::Es256K, "secp256k1", 32),
        ec_off_curve(Algorithm::Es384, "P-384", 48),
        rsa("RSA e = 65536 (even)", &n, &[1, 0, 0]),
        rsa("RSA e = 1", &n, &[1]),
        rsa("RSA e = 2^32 + 1", &n, &[1, 0, 0, 0, 1]),
        rsa("RSA even modulus", &even, &[1, 0, 1]),
    ]
}

fn hex(text: &[u8]) -> Vec<u8> {
    text.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// A JSON object as the body of a TOML inline table (`k = v, ...`).
fn inline_table(object: &Value) -> String {
    object
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An in-memory file system for config loads.
fn load(config: &str, files: &[(&str, Vec<u8>)]) -> Result<KeysConfig, ConfigError> {
    let mut fs: HashMap<PathBuf, Vec<u8>> = files
        .iter()
        .map(|(p, b)| (PathBuf::from(p), b.clone()))
        .collect();
    fs.insert(PathBuf::from(CONFIG), config.as_bytes().to_vec());
    jotd_keys::load(Path::new(CONFIG), &|p| {
        fs.get(p)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    })
}

#[test]
fn weak_keys_are_refused_from_every_source() {
    let good = SigningKey::generate(Algorithm::EdDsa).unwrap();
    let good_spki = good.verifying_key().unwrap().spki_der().unwrap();
    let good_jwk =
        json!({"kty": "OKP", "crv": "Ed25519", "kid": "good", "x": b64u(&good_spki[12..])});
    for w in weak_keys() {
        let what = w.what;
        let alg = w.alg;
        // Bytes: DER, PEM, base64-wrapped PEM.
        for (form, bytes) in [
            ("DER", w.der.clone()),
            ("PEM", w.pem().into_bytes()),
            ("base64 PEM", STANDARD.encode(w.pem()).into_bytes()),
        ] {
            assert!(
                material::public_key(alg, &bytes).is_err(),
                "{what} as {form} must be refused"
            );
        }
        // Inline JWK.
        let jwk: Jwk = serde_json::from_value(w.jwk.clone()).unwrap();
        assert!(jwk.to_key(Some(alg)).is_err(), "{what} as JWK");
        // A JWKS document: the weak key is left out and listed, the good one kept.
        let mut weak_jwk = w.jwk.clone();
        weak_jwk["kid"] = json!("weak");
        weak_jwk["alg"] = json!(alg.as_str());
        let doc = json!({"keys": [weak_jwk, good_jwk]}).to_string();
        let keys = parse_jwks(doc.as_bytes(), None, 10).unwrap();
        assert_eq!(keys.keys.len(), 1, "{what} in a JWKS");
        assert_eq!(keys.keys[0].0, "good");
        assert!(
            keys.skipped.iter().any(|s| s.starts_with("kid \"weak\":")),
            "{what}: {:?}",
            keys.skipped
        );
        let only = json!({"keys": [weak_jwk]}).to_string();
        assert!(matches!(
            parse_jwks(only.as_bytes(), None, 10),
            Err(JwkError::NoUsableKey(_))
        ));
        // The config: every key source names file, line and key.
        let files = [
            ("/etc/jotd/weak.der", w.der.clone()),
            ("/etc/jotd/weak.pem", w.pem().into_bytes()),
        ];
        let jwk_toml = inline_table(&w.jwk);
        for source in [
            "der_file = \"weak.der\"".to_owned(),
            "pem_file = \"weak.pem\"".to_owned(),
            format!("pem = \"\"\"{}\"\"\"", w.pem()),
            format!("pem_base64 = \"{}\"", STANDARD.encode(w.pem())),
            format!("jwk = {{ {jwk_toml} }}"),
        ] {
            let config = format!(
                "[[tenant]]\nid = \"t\"\n\n[[tenant.key]]\nkid = \"weak\"\nalg = \"{alg}\"\n{source}\n"
            );
            let e = load(&config, &files).expect_err(what).to_string();
            assert!(
                e.starts_with(&format!("{CONFIG}:4:")) && e.contains("tenant[0].key[0]"),
                "{what} via {source}: {e}"
            );
            assert!(e.contains("tenant `t`, key `weak`"), "{e}");
        }
        // A JWKS file named by the config: the weak key never reaches the snapshot.
        let jwks_file = ("/etc/jotd/idp.json", doc.clone().into_bytes());
        let cfg = load(
            "[[tenant]]\nid = \"t\"\n[[tenant.jwks]]\nfile = \"idp.json\"\n",
            &[jwks_file],
        )
        .unwrap();
        let snapshot = cfg.snapshot(1, &|_, _| None);
        let tenant = snapshot.tenant("t").unwrap();
        let kids: Vec<&str> = tenant.keys.iter().map(|k| &*k.kid).collect();
        assert_eq!(kids, ["good"], "{what} via a JWKS file");
    }
}

#[test]
fn the_errors_say_what_is_weak() {
    let weak = weak_keys();
    let message = |i: usize| {
        material::public_key(weak[i].alg, &weak[i].der)
            .unwrap_err()
            .to_string()
    };
    assert!(message(0).contains("small-order point"), "{}", message(0));
    assert!(message(3).contains("non-canonical"), "{}", message(3));
    for i in [7, 8, 9] {
        assert!(message(i).contains("RSA public exponent"), "{}", message(i));
    }
    assert!(
        message(10).contains("RSA modulus is even"),
        "{}",
        message(10)
    );
}

#[test]
fn pem_with_more_than_one_block_names_the_extra_block() {
    let key = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ed25519.pem"),
    )
    .unwrap();
    let cert = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ec_p256_cert.pem"),
    )
    .unwrap();
    assert!(material::public_key(Algorithm::EdDsa, key.as_bytes()).is_ok());
    for (text, label) in [
        (format!("{key}{key}"), "PUBLIC KEY"),
        (format!("{key}\n{cert}"), "CERTIFICATE"),
        (format!("{cert}{cert}"), "CERTIFICATE"),
    ] {
        for bytes in [
            text.clone().into_bytes(),
            STANDARD.encode(&text).into_bytes(),
        ] {
            let e = material::public_key(Algorithm::EdDsa, &bytes).unwrap_err();
            assert_eq!(
                e,
                MaterialError::ExtraPemBlock {
                    index: 2,
                    label: label.to_owned()
                }
            );
            assert!(e.to_string().contains("PEM block 2"), "{e}");
        }
        let config = format!(
            "[[tenant]]\nid = \"t\"\n[[tenant.key]]\nkid = \"k\"\nalg = \"EdDSA\"\npem = \"\"\"{text}\"\"\"\n"
        );
        let e = load(&config, &[]).unwrap_err().to_string();
        assert!(
            e.contains("PEM block 2") && e.contains("tenant[0].key[0]"),
            "{e}"
        );
    }
    // A second block cut off before its END line: the parser dropped it and
    // the first key loaded; now refused, in every encoding.
    let cut = &cert[..cert.len() / 2];
    let text = format!("{key}{cut}");
    for bytes in [
        text.clone().into_bytes(),
        STANDARD.encode(&text).into_bytes(),
    ] {
        let e = material::public_key(Algorithm::EdDsa, &bytes)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cut off before its END line"), "{e}");
    }
}

/// A JWE key (an encryption `alg`, an ECDH-only curve) sharing a signing
/// key's kid is not a duplicate: it is skipped and named, the signing key
/// kept (the whole document was refused as `DuplicateKid`).
#[test]
fn encryption_keys_sharing_a_kid_are_skipped_not_duplicates() {
    let signing = json!({"kty":"OKP","crv":"Ed25519","kid":"k1","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
    for enc in [
        json!({"kty":"RSA","kid":"k1","alg":"RSA-OAEP-256","n":b64u(&[7u8; 256]),"e":"AQAB"}),
        json!({"kty":"OKP","crv":"X25519","kid":"k1","x":b64u(&[9u8; 32])}),
        json!({"kty":"EC","crv":"P-256","kid":"k1","alg":"ECDH-ES+A256KW","x":b64u(&[1u8; 32]),"y":b64u(&[2u8; 32])}),
    ] {
        for doc in [
            json!({"keys": [signing.clone(), enc.clone()]}),
            json!({"keys": [enc.clone(), signing.clone()]}),
        ] {
            let keys = parse_jwks(doc.to_string().as_bytes(), None, 10)
                .unwrap_or_else(|e| panic!("{enc}: {e}"));
            assert_eq!(keys.keys.len(), 1, "{enc}");
            assert!(
                keys.skipped[0].contains("encryption") || keys.skipped[0].contains("key agreement"),
                "{:?}",
                keys.skipped
            );
        }
    }
}

/// Public key material given as an HMAC secret (the algorithm-confusion
/// key: whoever has the public key signs HS256 tokens with it) is refused
/// from every source: `secret`, `secret_base64`, an inline `oct` JWK, and a
/// JWKS (skipped there, the other keys kept).
/// Every way a config can give an HMAC secret of these bytes: base64, an
/// `oct` JWK, and the text itself when it is text.
fn secret_sources(bytes: &[u8]) -> Vec<String> {
    let mut sources = vec![
        format!("secret_base64 = \"{}\"", STANDARD.encode(bytes)),
        format!("jwk = {{ kty = \"oct\", k = \"{}\" }}", b64u(bytes)),
    ];
    if let Ok(text) = std::str::from_utf8(bytes)
        && !text.contains('\0')
    {
        sources.push(format!("secret = {}", serde_json::to_string(text).unwrap()));
    }
    sources
}

#[test]
fn public_key_material_is_never_an_hmac_secret() {
    let rsa = SigningKey::generate(Algorithm::Rs256).unwrap();
    let spki = rsa.verifying_key().unwrap().spki_der().unwrap();
    let pem = pem::encode(&pem::Pem::new("PUBLIC KEY", spki.clone()));
    let ssh =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@host";
    // Every form the public key's holder could rebuild byte for byte.
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("\n");
    let jwk = json!({"kty": "RSA", "n": b64u(&[1u8; 256]), "e": "AQAB"}).to_string();
    let blob = ssh.split(' ').nth(1).unwrap().to_owned();
    let wire = STANDARD.decode(&blob).unwrap();
    let hex: String = spki.iter().map(|b| format!("{b:02x}")).collect();
    let forms: Vec<(&str, Vec<u8>)> = vec![
        ("PEM block", pem.clone().into_bytes()),
        ("DER structure", spki.clone()),
        ("OpenSSH", ssh.as_bytes().to_vec()),
        ("PEM body, wrapped", body.clone().into_bytes()),
        ("PEM body on one line", body.replace('\n', "").into_bytes()),
        (
            "PEM after text",
            format!("subject=CN = idp\nissuer=CN = idp\n{pem}").into_bytes(),
        ),
        (
            "PEM after a byte-order mark",
            format!("\u{feff}{pem}").into_bytes(),
        ),
        (
            "DER with a newline",
            [spki.clone(), b"\n".to_vec()].concat(),
        ),
        ("DER chain", [spki.clone(), spki.clone()].concat()),
        ("JWK text", jwk.clone().into_bytes()),
        // The forms a review found missing (helper-49): the class is every
        // encoding of every key format, wherever in the text it sits.
        ("OpenSSH blob without its type", blob.clone().into_bytes()),
        ("OpenSSH wire form", wire.clone()),
        (
            "OpenSSH line with options",
            format!("from=\"10.0.0.0/8\",no-pty {ssh}").into_bytes(),
        ),
        (
            "OpenSSH key in RFC 4716 form",
            format!(
                "---- BEGIN SSH2 PUBLIC KEY ----\nComment: \"ops@host\"\n{}\n{}\n---- END SSH2 PUBLIC KEY ----\n",
                &blob[..40],
                &blob[40..]
            )
            .into_bytes(),
        ),
        (
            "DER after a newline",
            [b"\n".to_vec(), spki.clone()].concat(),
        ),
        (
            "DER after a byte-order mark",
            ["\u{feff}".as_bytes().to_vec(), spki.clone()].concat(),
        ),
        ("DER as hex", hex.clone().into_bytes()),
        (
            "DER as hex with colons, wrapped",
            hex.as_bytes()
                .chunks(2)
                .map(|p| std::str::from_utf8(p).unwrap())
                .collect::<Vec<_>>()
                .chunks(15)
                .map(|line| line.join(":"))
                .collect::<Vec<_>>()
                .join(":\n    ")
                .into_bytes(),
        ),
        ("JWKS document", format!("{{\"keys\":[{jwk}]}}").into_bytes()),
        ("array of JWKs", format!("  [{jwk}]\n").into_bytes()),
    ];
    for (what, bytes) in &forms {
        for source in secret_sources(bytes) {
            let config = format!(
                "[[tenant]]\nid = \"t\"\n[[tenant.key]]\nkid = \"k\"\nalg = \"HS256\"\n{source}\n"
            );
            let e = load(&config, &[]).unwrap_err().to_string();
            assert!(
                e.contains("must not be public key material"),
                "{what}, {source}: {e}"
            );
        }
        let doc = json!({"keys": [
            {"kty": "oct", "kid": "confused", "alg": "HS256", "k": b64u(bytes)},
            {"kty": "oct", "kid": "fine", "alg": "HS256", "k": b64u(b"a fine secret of 32 random bytes")},
        ]})
        .to_string();
        let keys = parse_jwks(doc.as_bytes(), None, 10).unwrap();
        assert_eq!(keys.keys.len(), 1, "{what}");
        assert!(
            keys.skipped[0].contains("public key material"),
            "{what}: {:?}",
            keys.skipped
        );
    }
}

/// Guessable secrets, as the class: placeholders, padded short secrets and
/// short units repeated are refused from every source, whatever the algorithm
/// and length; a JWKS leaves such a key out and names it.
#[test]
fn guessable_hmac_secrets_are_refused_from_every_source() {
    let forms: Vec<(&str, &str, Vec<u8>)> = vec![
        ("HS256", "fewer than 6 distinct", vec![b' '; 32]),
        ("HS256", "fewer than 6 distinct", vec![0; 32]),
        ("HS384", "repeated", b"changeme".repeat(6)),
        ("HS256", "repeated", b"my-super-secret!".repeat(2)),
        ("HS512", "fewer than 6 distinct", b"ab".repeat(32)),
        (
            "HS256",
            "half or more one byte",
            [&b"hunter2!"[..], &[0; 24]].concat(),
        ),
        (
            "HS256",
            "half or more one byte",
            format!("{:032x}", 1_764_000_000_123_456_789_u128).into_bytes(),
        ),
        ("HS256", "repeated", b"12345678".repeat(4)),
        ("HS512", "repeated", b"my-secret-key-01".repeat(4)),
    ];
    for (alg, why, bytes) in &forms {
        for source in secret_sources(bytes) {
            let config = format!(
                "[[tenant]]\nid = \"t\"\n[[tenant.key]]\nkid = \"k\"\nalg = \"{alg}\"\n{source}\n"
            );
            let e = load(&config, &[]).unwrap_err().to_string();
            assert!(
                e.contains("guessable HMAC secret") && e.contains(why) && e.contains("key `k`"),
                "{why}, {source}: {e}"
            );
        }
        let doc = json!({"keys": [
            {"kty": "oct", "kid": "weak", "alg": alg, "k": b64u(bytes)},
            {"kty": "oct", "kid": "fine", "alg": "HS256", "k": b64u(b"a fine secret of 32 random bytes")},
        ]})
        .to_string();
        let keys = parse_jwks(doc.as_bytes(), None, 10).unwrap();
        assert_eq!(keys.keys.len(), 1, "{why}");
        assert!(
            keys.skipped[0].contains("weak") && keys.skipped[0].contains("guessable"),
            "{why}: {:?}",
            keys.skipped
        );
    }
}

#[test]
fn jwks_not_for_verification_are_refused_inline_and_skipped_in_a_jwks() {
    let good = SigningKey::generate(Algorithm::EdDsa).unwrap();
    let spki = good.verifying_key().unwrap().spki_der().unwrap();
    let base = json!({"kty": "OKP", "crv": "Ed25519", "x": b64u(&spki[12..])});
    let with = |k: &str, v: Value| {
        let mut j = base.clone();
        j[k] = v;
        j
    };
    for ok in [
        base.clone(),
        with("use", json!("sig")),
        with("key_ops", json!(["verify"])),
        with("key_ops", json!(["sign", "verify"])),
    ] {
        let jwk: Jwk = serde_json::from_value(ok.clone()).unwrap();
        assert!(jwk.to_key(None).is_ok(), "{ok}");
    }
    for bad in [
        with("use", json!("enc")),
        with("use", json!("SIG")),
        with("use", json!("")),
        with("key_ops", json!([])),
        with("key_ops", json!(["sign"])),
        with("key_ops", json!(["encrypt", "wrapKey"])),
        with("key_ops", json!(["Verify"])),
    ] {
        let jwk: Jwk = serde_json::from_value(bad.clone()).unwrap();
        assert!(
            matches!(jwk.to_key(None), Err(JwkError::NotForVerification(_))),
            "{bad} must be refused inline"
        );
        let mut in_set = bad.clone();
        in_set["kid"] = json!("bad");
        let mut kept = base.clone();
        kept["kid"] = json!("good");
        let doc = json!({"keys": [in_set, kept]}).to_string();
        let keys = parse_jwks(doc.as_bytes(), None, 10).unwrap();
        assert_eq!(keys.keys.len(), 1);
        assert!(
            keys.skipped[0].starts_with("kid \"bad\": JWK is not for verifying"),
            "{:?}",
            keys.skipped
        );
        let toml = inline_table(&bad);
        let config =
            format!("[[tenant]]\nid = \"t\"\n[[tenant.key]]\nkid = \"k\"\njwk = {{ {toml} }}\n");
        let e = load(&config, &[]).unwrap_err().to_string();
        assert!(
            e.contains("tenant[0].key[0].jwk") && e.contains("not for verifying"),
            "{e}"
        );
    }
}

#[test]
fn plain_http_jwks_urls_only_to_a_parsed_loopback_host() {
    for ok in [
        "https://idp.example.com/.well-known/jwks.json",
        "https://127.0.0.1:8443/jwks",
        "http://127.0.0.1/jwks",
        "http://127.1.2.3:8080/jwks",
        "http://[::1]:9000/jwks",
        "http://localhost/jwks",
        "http://LOCALHOST:80/jwks",
    ] {
        assert!(check_jwks_url(ok).is_ok(), "{ok}: {:?}", check_jwks_url(ok));
    }
    for bad in [
        "http://localhost.evil.example/",
        "http://127.0.0.1.nip.io.evil.example/",
        "http://localhost@evil.example/",
        "http://127.0.0.1@evil.example/",
        "http://[::1]@evil.example/",
        "https://user:pass@idp.example.com/jwks",
        "http://localhost./jwks",
        "http://evil.example/localhost",
        "http://evil.example/?http://127.0.0.1",
        "http://10.0.0.1/jwks",
        "http://[::ffff:127.0.0.1]/jwks",
        "http://0.0.0.0/jwks",
        "ftp://127.0.0.1/jwks",
        "file:///etc/jwks.json",
        "//127.0.0.1/jwks",
        "127.0.0.1/jwks",
        "",
    ] {
        assert!(check_jwks_url(bad).is_err(), "{bad} must be refused");
        let config = format!("[[tenant]]\nid = \"t\"\n[[tenant.jwks]]\nurl = \"{bad}\"\n");
        let e = load(&config, &[]).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{CONFIG}:3:")) && e.contains("tenant[0].jwks[0].url"),
            "{bad}: {e}"
        );
    }
}

/// A JWKS URL whose host is internal as written (an internal address in any
/// form, or `localhost`) needs `internal = true` on its source: without it a
/// tenant's URL could aim jotd at the metadata service or an admin port.
/// Public hosts need nothing; file sources cannot be marked.
#[test]
fn internal_jwks_hosts_are_opted_into() {
    let with = |url: &str, extra: &str| {
        load(
            &format!("[[tenant]]\nid = \"t\"\n[[tenant.jwks]]\nurl = \"{url}\"\n{extra}"),
            &[],
        )
    };
    for inside in [
        "https://169.254.169.254/latest/meta-data/",
        "https://10.0.0.5/jwks",
        "https://[fd00::1]/jwks",
        "https://[::ffff:10.0.0.1]/jwks",
        "https://[64:ff9b::a9fe:a9fe]/jwks",
        "https://[2002:a9fe:a9fe::1]/jwks",
        "https://198.18.0.1/jwks",
        "https://127.0.0.1:8443/jwks",
        "http://127.0.0.1/jwks",
        "http://localhost/jwks",
        "https://idp.localhost/jwks",
        "https://LOCALHOST./jwks",
    ] {
        let e = with(inside, "").unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{CONFIG}:3:"))
                && e.contains("tenant[0].jwks[0].url")
                && e.contains("internal = true"),
            "{inside}: {e}"
        );
        assert!(with(inside, "internal = true\n").is_ok(), "{inside}");
    }
    for public in [
        "https://idp.example.com/jwks",
        "https://8.8.8.8/jwks",
        "https://[2001:4860::8888]/jwks",
    ] {
        assert!(with(public, "").is_ok(), "{public}");
    }
    // `internal = true` marks a host and port: an unmarked URL (another
    // tenant's) at that host on another port is refused, naming the ports;
    // at the marked port it is the same service.
    let two = |second: &str| {
        load(
            &format!(
                "[[tenant]]\nid = \"a\"\n[[tenant.jwks]]\nurl = \"https://idp.corp:8443/jwks\"\ninternal = true\n\
                 [[tenant]]\nid = \"b\"\n[[tenant.jwks]]\nurl = \"{second}\"\n"
            ),
            &[],
        )
    };
    let e = two("https://IDP.corp.:9000/admin").unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{CONFIG}:8:"))
            && e.contains("tenant[1].jwks[0].url")
            && e.contains("port(s) [8443] only"),
        "{e}"
    );
    assert!(two("https://idp.corp:8443/other-jwks").is_ok());
    assert!(two("https://idp.example.com/jwks").is_ok());
    let e = load(
        "[[tenant]]\nid = \"t\"\n[[tenant.jwks]]\nfile = \"jwks.json\"\ninternal = true\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("tenant[0].jwks[0].internal: applies to url sources only"),
        "{e}"
    );
}

/// A refused URL's error never repeats a password it carried.
/// One kid rule for every source: a JWKS entry whose kid is empty (which a
/// token's `"kid": ""` would find), holds control characters, or runs past
/// 256 bytes is left out, as a configured one is refused.
#[test]
fn kids_follow_one_rule_in_every_source() {
    let key = SigningKey::generate(Algorithm::EdDsa).unwrap();
    let spki = key.verifying_key().unwrap().spki_der().unwrap();
    let x = b64u(&spki[12..]);
    for bad in [String::new(), "a\u{0}b".to_owned(), "k".repeat(257)] {
        let doc = json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": bad, "x": x},
            {"kty": "OKP", "crv": "Ed25519", "kid": "fine", "x": x},
        ]})
        .to_string();
        let keys = parse_jwks(doc.as_bytes(), None, 10).unwrap();
        assert_eq!(keys.keys.len(), 1, "{bad:?}");
        assert_eq!(&*keys.keys[0].0, "fine");
        let config = format!(
            "[[tenant]]\nid = \"t\"\n[[tenant.key]]\nkid = {}\njwk = {{ kty = \"OKP\", crv = \"Ed25519\", x = \"{x}\" }}\n",
            serde_json::to_string(&bad).unwrap()
        );
        let e = load(&config, &[]).unwrap_err().to_string();
        assert!(e.contains("tenant[0].key[0].kid"), "{bad:?}: {e}");
    }
}

/// A JWKS URL is shown (logs, metrics labels, `/readyz`, errors) without
/// what may be a credential: userinfo, the fragment, and the query (as a
/// short digest, so two sources differing there stay apart).
#[test]
fn shown_urls_leave_credentials_out() {
    let a = jotd_keys::redacted_url("https://idp.example/jwks?access_token=S3CRET#frag");
    let b = jotd_keys::redacted_url("https://idp.example/jwks?access_token=OTHER");
    assert!(a.starts_with("https://idp.example/jwks?…"), "{a}");
    assert!(!a.contains("S3CRET") && !a.contains("frag"), "{a}");
    assert_ne!(a, b);
    assert_eq!(
        jotd_keys::redacted_url("https://idp.example/jwks"),
        "https://idp.example/jwks"
    );
}

#[test]
fn url_errors_leave_the_password_out() {
    let config =
        "[[tenant]]\nid = \"t\"\n[[tenant.jwks]]\nurl = \"http://user:s3cret@idp.example/jwks\"\n";
    let e = load(config, &[]).unwrap_err().to_string();
    assert!(e.contains("userinfo") && !e.contains("s3cret"), "{e}");
}

/// Two signing keys sharing a kid make the document invalid in either order,
/// whether or not one of them is refused.
#[test]
fn a_duplicate_kid_is_an_error_whichever_key_comes_first() {
    let good = SigningKey::generate(Algorithm::EdDsa).unwrap();
    let spki = good.verifying_key().unwrap().spki_der().unwrap();
    let ok = json!({"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": b64u(&spki[12..])});
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak = json!({"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": b64u(&identity)});
    for keys in [[&ok, &weak], [&weak, &ok]] {
        let doc = json!({ "keys": keys }).to_string();
        assert!(
            matches!(parse_jwks(doc.as_bytes(), None, 10), Err(JwkError::DuplicateKid(k)) if k == "\"k\""),
            "{doc}"
        );
    }
    // An encryption key may share a signing key's kid.
    let enc =
        json!({"kty": "OKP", "crv": "Ed25519", "kid": "k", "use": "enc", "x": b64u(&spki[12..])});
    let doc = json!({ "keys": [enc, ok] }).to_string();
    assert_eq!(parse_jwks(doc.as_bytes(), None, 10).unwrap().keys.len(), 1);
}

/// An inline `jwk = { … }` is held to the file's rule for unknown keys (a
/// `keyops` typo dropped the key's restriction silently) and its own kid
/// must be the key's; a JWKS document keeps its members of its own.
#[test]
fn an_inline_jwk_names_unknown_members_and_a_kid_of_its_own() {
    let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    let config = |members: &str| {
        format!(
            "[[tenant]]\nid = \"t\"\n[[tenant.key]]\nkid = \"k\"\nalg = \"EdDSA\"\njwk = {{ kty = \"OKP\", crv = \"Ed25519\", x = \"{x}\"{members} }}\n"
        )
    };
    assert!(load(&config(""), &[]).is_ok());
    assert!(load(&config(", kid = \"k\", use = \"sig\", ext = true"), &[]).is_ok());
    let e = load(&config(", keyops = [\"encrypt\"]"), &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown JWK member `keyops`") && e.contains("jotd.toml:6: jwk"),
        "{e}"
    );
    let e = load(&config(", kid = \"2025-retired\""), &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("kid `2025-retired` differs") && e.contains("tenant[0].key[0].jwk"),
        "{e}"
    );
    // A JWKS document's members of its own (x5t, iat, …) are no error.
    let doc = json!({"keys": [{"kty":"OKP","crv":"Ed25519","kid":"k","x":x,"x5t":"abc","iat":1}]});
    assert_eq!(
        parse_jwks(doc.to_string().as_bytes(), None, 10)
            .unwrap()
            .keys
            .len(),
        1
    );
}
