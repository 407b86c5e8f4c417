//! Key material: every encoding loads to a key that verifies tokens signed by
//! its private half; bad material fails with a reason; fingerprints match openssl.

use base64::Engine as _;
use jotd_core::{Algorithm, KeyError, SigningKey, VerifyingKey};
use jotd_keys::material::{self, MaterialError};
use std::path::{Path, PathBuf};
use std::process::Command;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(data(name)).expect(name)
}

/// Signs a token with the test private key and checks `key` verifies it and not a tampered one.
fn assert_verifies(alg: Algorithm, private: &str, key: &VerifyingKey) {
    let signer = SigningKey::from_pkcs8(alg, &read(private)).expect("private key");
    let token = signer.mint(Some("k"), r#"{"sub":"s","exp":1}"#).unwrap();
    let (input, sig) = jotd_core::split_for_raw(&token).unwrap();
    assert!(key.verify(&input, &sig), "{alg} with {private}");
    let mut bad = sig.clone();
    bad[0] ^= 1;
    assert!(!key.verify(&input, &bad));
}

#[test]
fn every_public_encoding_loads_and_verifies() {
    let cases = [
        (Algorithm::Rs256, "rsa2048.pem", "rsa2048.pk8.der"),
        (Algorithm::Ps384, "rsa2048.pem", "rsa2048.pk8.der"),
        (Algorithm::Rs512, "rsa2048_pkcs1.pem", "rsa2048.pk8.der"),
        (Algorithm::Rs256, "rsa2048.der", "rsa2048.pk8.der"),
        (Algorithm::Es256, "ec_p256.pem", "ec_p256.pk8.der"),
        (Algorithm::Es256, "ec_p256_cert.pem", "ec_p256.pk8.der"),
        (Algorithm::Es384, "ec_p384.pem", "ec_p384.pk8.der"),
        (Algorithm::Es512, "ec_p521.pem", "ec_p521.pk8.der"),
        (
            Algorithm::Es256K,
            "ec_secp256k1.pem",
            "ec_secp256k1.pk8.der",
        ),
        (Algorithm::EdDsa, "ed25519.pem", "ed25519.pk8.der"),
    ];
    for (alg, public, private) in cases {
        let key =
            material::public_key(alg, &read(public)).unwrap_or_else(|e| panic!("{public}: {e}"));
        assert_verifies(alg, private, &key);
        // The same PEM, base64-encoded once more (as for environment variables).
        let wrapped = base64::engine::general_purpose::STANDARD.encode(read(public));
        let key = material::public_key(alg, wrapped.as_bytes())
            .unwrap_or_else(|e| panic!("base64 {public}: {e}"));
        assert_verifies(alg, private, &key);
    }
}

/// The DER inside a one-block PEM file of the test data.
fn pem_body(name: &str) -> Vec<u8> {
    let text = String::from_utf8(read(name)).unwrap();
    let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl CLI (install the `openssl` package)");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
    out.stdout
}

#[test]
fn a_certificate_or_private_key_reads_the_same_in_every_encoding() {
    // A certificate: PEM, PEM with `openssl x509 -text`'s explanatory text
    // ahead of it, DER, and DER in base64 all give the certificate's key.
    let cert_pem = data("ec_p256_cert.pem");
    let cert_pem = cert_pem.to_str().unwrap();
    let der = pem_body("ec_p256_cert.pem");
    assert_eq!(der, openssl(&["x509", "-in", cert_pem, "-outform", "DER"]));
    let text = openssl(&["x509", "-in", cert_pem, "-text"]);
    assert!(!text.starts_with(b"-----"), "explanatory text comes first");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let want = material::public_der(&read("ec_p256.pem")).unwrap();
    for (what, bytes) in [
        ("PEM", read("ec_p256_cert.pem")),
        ("PEM with text", text),
        ("DER", der),
        ("base64 DER", b64.into_bytes()),
    ] {
        assert_eq!(
            material::public_der(&bytes).unwrap_or_else(|e| panic!("{what}: {e}")),
            want,
            "{what}"
        );
        let key = material::public_key(Algorithm::Es256, &bytes).unwrap();
        assert_verifies(Algorithm::Es256, "ec_p256.pk8.der", &key);
    }

    // A private key is refused as such, whichever encoding carries it: PKCS#8
    // (RSA, EC, Ed25519), PKCS#1 RSA and SEC 1 EC, raw DER or base64 DER.
    let rsa_pk8 = data("rsa2048.pk8.der");
    let ec_pk8 = data("ec_p256.pk8.der");
    let pkcs1 = openssl(&[
        "rsa",
        "-inform",
        "DER",
        "-in",
        rsa_pk8.to_str().unwrap(),
        "-outform",
        "DER",
        "-traditional",
    ]);
    let sec1 = openssl(&[
        "ec",
        "-inform",
        "DER",
        "-in",
        ec_pk8.to_str().unwrap(),
        "-outform",
        "DER",
    ]);
    for (what, der) in [
        ("RSA PKCS#8", read("rsa2048.pk8.der")),
        ("EC PKCS#8", read("ec_p256.pk8.der")),
        ("Ed25519 PKCS#8", read("ed25519.pk8.der")),
        ("RSA PKCS#1", pkcs1),
        ("EC SEC 1", sec1),
    ] {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        // Under a public key's PEM label too (a file renamed by hand): named
        // as a private key, not "unreadable".
        let as_public: Vec<Vec<u8>> = ["PUBLIC KEY", "RSA PUBLIC KEY"]
            .iter()
            .map(|label| {
                let wrapped = b64
                    .as_bytes()
                    .chunks(64)
                    .map(|c| std::str::from_utf8(c).unwrap())
                    .collect::<Vec<_>>()
                    .join("\n");
                format!("-----BEGIN {label}-----\n{wrapped}\n-----END {label}-----\n").into_bytes()
            })
            .collect();
        for bytes in [der, b64.clone().into_bytes()].into_iter().chain(as_public) {
            let e = material::public_der(&bytes).unwrap_err();
            assert!(matches!(e, MaterialError::PrivateKey(_)), "{what}: {e}");
            assert!(e.to_string().contains("private key"), "{what}: {e}");
        }
    }
    // A public key's DER still loads as before (SPKI and PKCS#1).
    assert!(material::public_key(Algorithm::Rs256, &read("rsa2048.der")).is_ok());
    let pkcs1_public = pem_body("rsa2048_pkcs1.pem");
    assert!(material::public_key(Algorithm::Rs256, &pkcs1_public).is_ok());
}

#[test]
fn unusable_material_names_the_reason() {
    let rsa1024 = material::public_key(Algorithm::Rs256, &read("rsa1024.pem")).unwrap_err();
    assert_eq!(
        rsa1024,
        MaterialError::Key(KeyError::RsaModulusSize { bits: 1024 })
    );
    // A P-256 key for ES384, an RSA key for ES256, an EC key for RS256: refused at load.
    for (alg, file) in [
        (Algorithm::Es384, "ec_p256.pem"),
        (Algorithm::Es256, "rsa2048.pem"),
        (Algorithm::Rs256, "ec_p256.pem"),
        (Algorithm::EdDsa, "ec_p256.pem"),
    ] {
        assert!(
            matches!(
                material::public_key(alg, &read(file)),
                Err(MaterialError::Key(KeyError::Rejected { .. }))
            ),
            "{alg} {file}"
        );
    }
    assert!(matches!(
        material::public_key(Algorithm::Hs256, &read("rsa2048.pem")),
        Err(MaterialError::Key(KeyError::WrongKeyType { .. }))
    ));
    let private =
        b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIMx1\n-----END PRIVATE KEY-----\n";
    assert!(matches!(
        material::public_key(Algorithm::EdDsa, private),
        Err(MaterialError::PrivateKey(_))
    ));
    let other = b"-----BEGIN CERTIFICATE REQUEST-----\nMC4CAQAwBQYDK2VwBCIEIMx1\n-----END CERTIFICATE REQUEST-----\n";
    assert!(matches!(
        material::public_key(Algorithm::Es256, other),
        Err(MaterialError::WrongPemLabel(_))
    ));
    assert!(matches!(
        material::public_key(Algorithm::Es256, b"-----BEGIN PUBLIC KEY-----\n!!\n"),
        Err(MaterialError::Unreadable(_))
    ));
    // An uncompressed point that is not on P-256.
    let mut off_curve = vec![4u8];
    off_curve.extend_from_slice(&[1; 64]);
    assert!(VerifyingKey::from_public_der(Algorithm::Es256, &off_curve).is_err());
    assert!(VerifyingKey::from_ec_coordinates(Algorithm::Es256, &[1; 32], &[1; 32]).is_err());
}

#[test]
fn hmac_secrets_in_base64_or_base64url() {
    let secret: Vec<u8> = (0u8..48).map(|i| i.wrapping_mul(37) | 0xc0).collect();
    for text in [
        base64::engine::general_purpose::STANDARD.encode(&secret),
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(&secret),
        base64::engine::general_purpose::URL_SAFE.encode(&secret),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&secret),
    ] {
        assert_eq!(
            material::decode_secret_base64(&text).unwrap(),
            secret,
            "{text}"
        );
    }
    assert_eq!(
        material::decode_secret_base64("not base64!"),
        Err(MaterialError::SecretEncoding)
    );
}

/// `jotd key fingerprint` must print what this openssl pipeline prints.
fn openssl_fingerprint(file: &Path) -> String {
    let script = format!(
        "openssl pkey -pubin -in '{}' -outform DER | openssl sha256 -binary | openssl base64",
        file.display()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("openssl CLI (install the `openssl` package)");
    assert!(
        out.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn fingerprints_match_the_openssl_cli() {
    for file in [
        "rsa2048.pem",
        "rsa2048_pkcs1.pem",
        "ec_p256.pem",
        "ec_p384.pem",
        "ec_p521.pem",
        "ec_secp256k1.pem",
        "ed25519.pem",
    ] {
        let ours = material::fingerprint(&read(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        // openssl reads the PKCS#1 file as the SPKI file's key: compare both against SPKI.
        let reference = if file == "rsa2048_pkcs1.pem" {
            data("rsa2048.pem")
        } else {
            data(file)
        };
        assert_eq!(ours, openssl_fingerprint(&reference), "{file}");
    }
    assert_eq!(
        material::fingerprint(&read("ec_p256_cert.pem")).unwrap(),
        openssl_fingerprint(&data("ec_p256.pem"))
    );
    assert_eq!(
        material::fingerprint(&read("rsa2048.der")).unwrap(),
        openssl_fingerprint(&data("rsa2048.pem"))
    );
    assert!(matches!(
        material::fingerprint(&read("rsa1024.pem")),
        Err(MaterialError::Key(KeyError::RsaModulusSize { bits: 1024 }))
    ));
}
