//! Key material the engine must refuse at load, whatever the constructor:
//! forgeable Ed25519 keys (small order, non-canonical, off the curve), EC
//! points at infinity, off the curve or of the wrong length on every curve,
//! and RSA keys with a bad exponent or an even modulus. Every source in
//! jotd-keys (PEM, DER, JWK, JWKS) ends in these constructors.

use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use curve25519_dalek::constants::EIGHT_TORSION;
use curve25519_dalek::edwards::CompressedEdwardsY;
use jotd_core::{Algorithm, KeyError, SigningKey, VerifyingKey};

/// RFC 8410 SubjectPublicKeyInfo of a raw Ed25519 key.
fn ed25519_spki(raw: &[u8; 32]) -> Vec<u8> {
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    spki.extend_from_slice(raw);
    spki
}

/// Every Ed25519 encoding that must never become a key: the eight
/// small-order points, their non-canonical twins (y + p where it fits in 255
/// bits, and x = 0 with the sign bit set), y = p itself, and bytes that are
/// not a point at all.
fn weak_ed25519() -> Vec<([u8; 32], &'static str)> {
    let mut out: Vec<([u8; 32], &'static str)> = EIGHT_TORSION
        .iter()
        .map(|p| (p.compress().to_bytes(), "small-order"))
        .collect();
    // p = 2^255 - 19, little-endian.
    let mut p = [0xffu8; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    // y + p for the small y's (0 and 1): non-canonical encodings of small-order points.
    for y in [0u8, 1] {
        let mut e = p;
        e[0] += y;
        out.push((e, "non-canonical"));
        let mut signed = e;
        signed[31] |= 0x80;
        out.push((signed, "non-canonical"));
    }
    // The identity and the order-2 point with the sign bit on x = 0.
    let mut identity_negative = [0u8; 32];
    identity_negative[0] = 1;
    identity_negative[31] = 0x80;
    out.push((identity_negative, "non-canonical"));
    let mut minus_one_negative = p;
    minus_one_negative[0] -= 1;
    minus_one_negative[31] |= 0x80;
    out.push((minus_one_negative, "non-canonical"));
    // All ones: y = 2^255 - 1, not canonical (>= p).
    out.push(([0xff; 32], "non-canonical or off-curve"));
    // The first few y's that are not on the curve.
    let mut off = 0;
    for y in 2u8..=255 {
        let mut e = [0u8; 32];
        e[0] = y;
        if CompressedEdwardsY(e).decompress().is_none() {
            out.push((e, "off-curve"));
            off += 1;
            if off == 4 {
                break;
            }
        }
    }
    assert_eq!(off, 4, "found off-curve encodings to test");
    out
}

#[test]
fn forgeable_ed25519_keys_are_refused_from_raw_bytes_and_spki() {
    for (raw, what) in weak_ed25519() {
        for result in [
            VerifyingKey::from_ed25519(Algorithm::EdDsa, &raw),
            VerifyingKey::from_public_der(Algorithm::EdDsa, &ed25519_spki(&raw)),
        ] {
            // jotd's own check must name the first two kinds (aws-lc-rs takes them);
            // bytes off the curve may be refused by either.
            match (what, result) {
                (_, Err(KeyError::WeakEd25519 { .. })) => {}
                ("off-curve" | "non-canonical or off-curve", Err(KeyError::Rejected { .. })) => {}
                (_, other) => panic!("{what} key {raw:02x?} must be refused, got {other:?}"),
            }
        }
    }
}

/// The attack the check closes: with the identity as public key, `R =
/// identity, S = 0` is a valid signature on every message. aws-lc-rs on its
/// own accepts it; jotd never holds such a key.
#[test]
fn identity_key_forgery_is_real_and_closed() {
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut forged = [0u8; 64];
    forged[0] = 1; // R = identity, S = 0
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","kid":"k"}"#);
    let claims = URL_SAFE_NO_PAD.encode(br#"{"sub":"anyone","exp":4000000000}"#);
    let input = format!("{header}.{claims}");
    let raw_accepts = UnparsedPublicKey::new(&ED25519, identity)
        .verify(input.as_bytes(), &forged)
        .is_ok();
    eprintln!("raw aws-lc-rs accepts the identity-key forgery: {raw_accepts}");
    // Whether or not a future aws-lc refuses it, jotd must.
    assert!(
        VerifyingKey::from_ed25519(Algorithm::EdDsa, &identity).is_err(),
        "identity key loaded (raw aws-lc-rs accepts the forgery: {raw_accepts})"
    );
}

#[test]
fn good_ed25519_keys_still_load() {
    for _ in 0..16 {
        let key = SigningKey::generate(Algorithm::EdDsa).unwrap();
        let spki = key.verifying_key().unwrap().spki_der().unwrap();
        VerifyingKey::from_public_der(Algorithm::EdDsa, &spki).unwrap();
        VerifyingKey::from_ed25519(Algorithm::EdDsa, &spki[spki.len() - 32..]).unwrap();
    }
}

/// Uncompressed SEC1 point of a freshly generated key, and the coordinate size.
fn ec_point(alg: Algorithm) -> (Vec<u8>, usize) {
    let spki = SigningKey::generate(alg)
        .unwrap()
        .verifying_key()
        .unwrap()
        .spki_der()
        .unwrap();
    let size = match alg {
        Algorithm::Es384 => 48,
        Algorithm::Es512 => 66,
        _ => 32,
    };
    (spki[spki.len() - (1 + 2 * size)..].to_vec(), size)
}

#[test]
fn ec_points_at_infinity_off_curve_or_of_wrong_length_are_refused_on_every_curve() {
    for alg in [
        Algorithm::Es256,
        Algorithm::Es384,
        Algorithm::Es512,
        Algorithm::Es256K,
    ] {
        let (point, size) = ec_point(alg);
        let (x, y) = point[1..].split_at(size);
        VerifyingKey::from_public_der(alg, &point).expect("the real point loads");
        VerifyingKey::from_ec_coordinates(alg, x, y).expect("the real coordinates load");

        let mut off_curve = point.clone();
        *off_curve.last_mut().unwrap() ^= 1;
        // Hybrid form (X9.62): 6 or 7 by y's parity, so it is the same, valid point; RFC
        // 5480 forbids the form, aws-lc-rs alone accepts it.
        let mut hybrid = point.clone();
        hybrid[0] = 0x06 | (point.last().unwrap() & 1);
        let mut hybrid_spki = SigningKey::generate(alg)
            .unwrap()
            .verifying_key()
            .unwrap()
            .spki_der()
            .unwrap();
        let at = hybrid_spki.len() - (1 + 2 * size);
        hybrid_spki[at] = 0x06 | (hybrid_spki.last().unwrap() & 1);
        let zeros = vec![0u8; size];
        let ones = vec![0xffu8; size];
        let bad_der: [(&str, Vec<u8>); 7] = [
            ("infinity", vec![0x00]),
            ("off-curve", off_curve.clone()),
            ("hybrid encoding", hybrid),
            ("hybrid encoding in an SPKI", hybrid_spki),
            ("truncated", point[..point.len() - 1].to_vec()),
            ("one byte long", [point.as_slice(), &[0]].concat()),
            ("empty", Vec::new()),
        ];
        for (what, der) in bad_der {
            assert!(
                VerifyingKey::from_public_der(alg, &der).is_err(),
                "{alg}: {what} point must be refused"
            );
        }
        let bad_coordinates: [(&str, &[u8], &[u8]); 6] = [
            ("(0, 0)", &zeros, &zeros),
            ("off-curve", x, &off_curve[1 + size..]),
            ("coordinates >= p", &ones, &ones),
            ("short x", &x[1..], y),
            ("long y", x, &[y, &[0]].concat()),
            ("empty", &[], &[]),
        ];
        for (what, x, y) in bad_coordinates {
            assert!(
                VerifyingKey::from_ec_coordinates(alg, x, y).is_err(),
                "{alg}: {what} must be refused"
            );
        }
    }
}

/// A 2048-bit modulus (from a generated key) with its low bit as given.
fn modulus(odd: bool) -> Vec<u8> {
    let spki = SigningKey::generate(Algorithm::Rs256)
        .unwrap()
        .verifying_key()
        .unwrap()
        .spki_der()
        .unwrap();
    // SPKI of RSA-2048 with e = 65537: the 256-byte modulus sits before `02 03 01 00 01`.
    assert_eq!(spki.len(), 294);
    let mut n = spki[spki.len() - 5 - 256..spki.len() - 5].to_vec();
    *n.last_mut().unwrap() = (n.last().unwrap() & 0xfe) | u8::from(odd);
    n
}

#[test]
fn rsa_exponents_and_moduli_outside_the_rule_are_refused() {
    let n = modulus(true);
    for alg in [Algorithm::Rs256, Algorithm::Ps512] {
        VerifyingKey::from_rsa_components(alg, &n, &[1, 0, 1]).expect("e = 65537 loads");
        VerifyingKey::from_rsa_components(alg, &n, &[3]).expect("e = 3 loads");
        VerifyingKey::from_rsa_components(alg, &n, &[0xff, 0xff, 0xff, 0xff])
            .expect("e = 2^32 - 1 loads");
        let exponents: [&[u8]; 9] = [
            &[],
            &[0],
            &[1],
            &[2],
            &[1, 0, 0],
            &[1, 0, 0, 0, 0],
            &[1, 0, 0, 0, 1],
            &[1, 0, 0, 0, 0, 0, 0, 0, 1],
            &[0, 0, 1],
        ];
        for e in exponents {
            assert!(
                matches!(
                    VerifyingKey::from_rsa_components(alg, &n, e),
                    Err(KeyError::RsaExponent { .. })
                ),
                "{alg}: e = {e:02x?} must be refused as an exponent"
            );
        }
        assert_eq!(
            VerifyingKey::from_rsa_components(alg, &modulus(false), &[1, 0, 1]).unwrap_err(),
            KeyError::RsaEvenModulus
        );
        // An empty or all-zero modulus (found by the jwk_parse fuzz target: it overflowed
        // the size arithmetic) is a 0-bit modulus.
        for n in [&[][..], &[0, 0][..]] {
            assert_eq!(
                VerifyingKey::from_rsa_components(alg, n, &[1, 0, 1]).unwrap_err(),
                KeyError::RsaModulusSize { bits: 0 }
            );
        }
    }
}
