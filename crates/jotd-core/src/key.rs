//! Pre-parsed verifying keys, each bound to exactly one algorithm.

use crate::alg::{Algorithm, KeyFamily};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::ParsedPublicKey;
use aws_lc_rs::{digest, hmac, rsa};
use base64::Engine as _;
use std::fmt;

/// Smallest RSA modulus accepted, in bits.
pub const RSA_MIN_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits.
pub const RSA_MAX_BITS: usize = 8192;

/// Why key material was refused. Each variant names the reason; the caller
/// (jotd-keys) adds which tenant and key it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A public key was given for an HMAC algorithm, or a secret for a public-key one,
    /// or an EC key for an RSA algorithm, and so on.
    #[error("{alg} needs a {expected:?} key")]
    WrongKeyType {
        /// The algorithm the key was to be bound to.
        alg: Algorithm,
        /// The family that algorithm needs.
        expected: KeyFamily,
    },
    /// The RSA modulus is outside 2048..=8192 bits.
    #[error("RSA modulus of {bits} bits is outside {RSA_MIN_BITS}..={RSA_MAX_BITS}")]
    RsaModulusSize {
        /// The modulus size found.
        bits: usize,
    },
    /// The HMAC secret is public key material (a PEM block, an SSH public
    /// key, a DER key or certificate): anyone holding the public key could
    /// sign tokens with it.
    #[error(
        "{alg} secret is {what}: an HMAC secret must not be public key material (anyone who has the public key could sign tokens)"
    )]
    PublicKeyAsSecret {
        /// The HMAC algorithm.
        alg: Algorithm,
        /// What the secret looks like.
        what: &'static str,
    },
    /// The HMAC secret is long enough but guessable: a placeholder such as
    /// 32 spaces, zero bytes, `abab…` or a short word repeated, or a short
    /// secret padded out with one byte. Its length says nothing of its
    /// strength, so an attacker tries these first.
    #[error(
        "{alg} secret is {why}: a guessable HMAC secret lets anyone sign tokens; use random bytes (e.g. `openssl rand -base64 32`)"
    )]
    WeakSecret {
        /// The HMAC algorithm.
        alg: Algorithm,
        /// What makes it guessable.
        why: &'static str,
    },
    /// The HMAC secret is shorter than the hash output.
    #[error("{alg} secret of {len} bytes is shorter than the {min}-byte minimum")]
    SecretTooShort {
        /// The HMAC algorithm.
        alg: Algorithm,
        /// The secret's length in bytes.
        len: usize,
        /// The minimum for `alg`.
        min: usize,
    },
    /// An EC coordinate has the wrong length for the curve.
    #[error("EC coordinate of {len} bytes; {alg} needs {expected}")]
    CoordinateLength {
        /// The algorithm (and so the curve).
        alg: Algorithm,
        /// The length found.
        len: usize,
        /// The length the curve needs.
        expected: usize,
    },
    /// The RSA public exponent is even, below 3, or 2^32 or more.
    #[error("RSA public exponent {shown} is not an odd number in 3..2^32")]
    RsaExponent {
        /// The exponent, in decimal when it fits 64 bits, else its size.
        shown: String,
    },
    /// The RSA modulus is even (so it is not a product of two odd primes).
    #[error("RSA modulus is even")]
    RsaEvenModulus,
    /// An Ed25519 public key that must never verify anything: a small-order
    /// point (with it, `R = identity, S = 0` verifies for every message), a
    /// non-canonical encoding, or bytes that are no point on the curve.
    #[error("Ed25519 public key refused: {why}")]
    WeakEd25519 {
        /// Which of the three it is.
        why: &'static str,
    },
    /// aws-lc-rs rejected the key: bad encoding, point not on the curve,
    /// curve not matching the algorithm, inconsistent RSA components.
    #[error("key rejected for {alg}: {why}")]
    Rejected {
        /// The algorithm the key was to be bound to.
        alg: Algorithm,
        /// aws-lc-rs's description.
        why: &'static str,
    },
}

// Keys sit in a tenant's Vec behind an Arc: size does not matter, an extra indirection on
// every verify would.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Inner {
    Public(ParsedPublicKey),
    /// The key, and a digest of its secret for [`VerifyingKey::material_digest`]
    /// (aws-lc-rs does not give the secret back).
    Hmac(hmac::Key, [u8; 32]),
}

/// A verifying key, parsed once at load time and bound to one [`Algorithm`].
///
/// Public keys hold an aws-lc-rs [`ParsedPublicKey`] (no re-parsing per
/// verify); HMAC keys hold an [`hmac::Key`], compared in constant time.
/// Cloning shares the parsed key (aws-lc reference count), it does not re-parse.
#[derive(Clone)]
pub struct VerifyingKey {
    alg: Algorithm,
    inner: Inner,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.inner {
            Inner::Public(_) => "public",
            Inner::Hmac(..) => "hmac",
        };
        f.debug_struct("VerifyingKey")
            .field("alg", &self.alg)
            .field("kind", &kind)
            .finish()
    }
}

impl VerifyingKey {
    /// Parses a DER public key for `alg`: SubjectPublicKeyInfo for every
    /// family, PKCS#1 `RSAPublicKey` for RSA, a SEC1 point for EC, the raw
    /// 32 bytes for Ed25519.
    ///
    /// # Errors
    /// The key's family does not match `alg`, the RSA modulus is out of range,
    /// the EC point is not on `alg`'s curve, or the encoding is bad.
    pub fn from_public_der(alg: Algorithm, der: &[u8]) -> Result<Self, KeyError> {
        let verification = alg.verification().ok_or(KeyError::WrongKeyType {
            alg,
            expected: KeyFamily::Hmac,
        })?;
        // Every source (PEM, DER, JWK, JWKS) ends here, so each rule below holds for all of them.
        if alg.family() == KeyFamily::Rsa {
            // Our rule first, on the components read from the DER, so a bad exponent is named
            // as such (aws-lc says only "InvalidEncoding"); then aws-lc's own parse and checks.
            if let Some((n, e)) = rsa_components(der) {
                check_rsa(strip_leading_zeros(n), strip_leading_zeros(e))?;
            }
            let pkcs1 = rsa::PublicKey::from_der(der).map_err(rejected(alg))?;
            check_rsa(
                pkcs1.modulus().big_endian_without_leading_zero(),
                pkcs1.exponent().big_endian_without_leading_zero(),
            )?;
        }
        if alg.family() == KeyFamily::Ec && matches!(ec_point_form(der), Some(0x06 | 0x07)) {
            // X9.62's hybrid form: RFC 5480 says it MUST NOT be used (aws-lc accepts it).
            return Err(KeyError::Rejected {
                alg,
                why: "EC point in hybrid form (RFC 5480: must not be used)",
            });
        }
        let parsed = ParsedPublicKey::new(verification, der).map_err(rejected(alg))?;
        if alg.family() == KeyFamily::Ed25519 {
            check_ed25519(&spki_of(&parsed, alg)?)?;
        }
        Ok(Self {
            alg,
            inner: Inner::Public(parsed),
        })
    }

    /// Builds an RSA key from big-endian modulus and exponent (JWK `n`, `e`).
    /// The components are encoded as PKCS#1 and parsed by
    /// [`VerifyingKey::from_public_der`], so a JWK meets exactly the rules a PEM key meets.
    ///
    /// # Errors
    /// `alg` is not RS*/PS*, the modulus is out of range or even, the
    /// exponent is not odd in 3..2^32, or aws-lc-rs refuses the key.
    pub fn from_rsa_components(alg: Algorithm, n: &[u8], e: &[u8]) -> Result<Self, KeyError> {
        if alg.family() != KeyFamily::Rsa {
            return Err(KeyError::WrongKeyType {
                alg,
                expected: alg.family(),
            });
        }
        let (n, e) = (strip_leading_zeros(n), strip_leading_zeros(e));
        // Refuse by the same rule before encoding, so the error names the component.
        check_rsa(n, e)?;
        Self::from_public_der(alg, &rsa_public_key_der(n, e))
    }

    /// Builds an EC key from its affine coordinates (JWK `x`, `y`), each
    /// exactly the curve's field size. The point is checked to be on the curve.
    ///
    /// # Errors
    /// `alg` is not ES*, a coordinate has the wrong length, or the point is off the curve.
    pub fn from_ec_coordinates(alg: Algorithm, x: &[u8], y: &[u8]) -> Result<Self, KeyError> {
        let expected = match alg {
            Algorithm::Es256 | Algorithm::Es256K => 32,
            Algorithm::Es384 => 48,
            Algorithm::Es512 => 66,
            _ => {
                return Err(KeyError::WrongKeyType {
                    alg,
                    expected: KeyFamily::Ec,
                });
            }
        };
        for c in [x, y] {
            if c.len() != expected {
                return Err(KeyError::CoordinateLength {
                    alg,
                    len: c.len(),
                    expected,
                });
            }
        }
        let mut point = Vec::with_capacity(1 + 2 * expected);
        point.push(0x04);
        point.extend_from_slice(x);
        point.extend_from_slice(y);
        Self::from_public_der(alg, &point)
    }

    /// Builds an Ed25519 key from its raw 32 bytes (JWK `x`).
    ///
    /// # Errors
    /// Not 32 bytes, or not a valid Ed25519 point encoding.
    pub fn from_ed25519(alg: Algorithm, raw: &[u8]) -> Result<Self, KeyError> {
        if alg != Algorithm::EdDsa {
            return Err(KeyError::WrongKeyType {
                alg,
                expected: alg.family(),
            });
        }
        if raw.len() != 32 {
            return Err(KeyError::CoordinateLength {
                alg,
                len: raw.len(),
                expected: 32,
            });
        }
        Self::from_public_der(alg, raw)
    }

    /// Builds an HMAC key. The secret must be at least the hash length.
    ///
    /// # Errors
    /// `alg` is not HS*, or the secret is too short.
    pub fn from_hmac_secret(alg: Algorithm, secret: &[u8]) -> Result<Self, KeyError> {
        let hmac_alg = alg.hmac().ok_or(KeyError::WrongKeyType {
            alg,
            expected: alg.family(),
        })?;
        if secret.len() < alg.min_secret_len() {
            return Err(KeyError::SecretTooShort {
                alg,
                len: secret.len(),
                min: alg.min_secret_len(),
            });
        }
        if let Some(what) = public_material(secret) {
            return Err(KeyError::PublicKeyAsSecret { alg, what });
        }
        if let Some(why) = guessable(secret) {
            return Err(KeyError::WeakSecret { alg, why });
        }
        Ok(Self {
            alg,
            inner: Inner::Hmac(
                hmac::Key::new(hmac_alg, secret),
                sha256(&[b"jotd hmac secret\0", secret]),
            ),
        })
    }

    /// The one algorithm this key verifies.
    #[must_use]
    pub const fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The DER SubjectPublicKeyInfo of a public key; `None` for HMAC keys.
    #[must_use]
    pub fn spki_der(&self) -> Option<Vec<u8>> {
        match &self.inner {
            Inner::Public(p) => spki_of(p, self.alg).ok(),
            Inner::Hmac(..) => None,
        }
    }

    /// A digest that changes whenever the key material changes, for every kind of key:
    /// SHA-256 of the DER SPKI for public keys, of the secret (domain-separated) for HMAC.
    /// Key sets digest it into a tenant's cache epoch, so a key replaced under the same
    /// `kid` (a rotated HMAC secret included) drops the tokens cached under the old one.
    #[must_use]
    pub fn material_digest(&self) -> [u8; 32] {
        match &self.inner {
            Inner::Public(p) => match p.as_der() {
                Ok(der) => sha256(&[b"jotd public key\0", der.as_ref()]),
                // Not expected for keys aws-lc-rs parsed; the raw key bytes identify it too.
                Err(_) => sha256(&[b"jotd raw public key\0", p.as_ref()]),
            },
            Inner::Hmac(_, d) => *d,
        }
    }

    /// base64(SHA-256(DER SPKI)), as Infura shows it and as
    /// `openssl pkey -pubin -outform DER | openssl sha256 -binary | openssl base64` prints it.
    /// `None` for HMAC keys (a fingerprint of a secret would leak it to brute force).
    #[must_use]
    pub fn fingerprint(&self) -> Option<String> {
        let der = self.spki_der()?;
        let hash = digest::digest(&digest::SHA256, &der);
        Some(base64::engine::general_purpose::STANDARD.encode(hash.as_ref()))
    }

    /// Verifies `signature` over `message` with this key's algorithm. HMAC tags
    /// are compared in constant time; ECDSA signatures must be fixed-width `r || s`.
    #[inline]
    #[must_use]
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.inner {
            Inner::Public(key) => key.verify_sig(message, signature).is_ok(),
            Inner::Hmac(key, _) => hmac::verify(key, message, signature).is_ok(),
        }
    }
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    ctx.finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

fn spki_of(parsed: &ParsedPublicKey, alg: Algorithm) -> Result<Vec<u8>, KeyError> {
    parsed
        .as_der()
        .map(|d| d.as_ref().to_vec())
        .map_err(|_| KeyError::Rejected {
            alg,
            why: "cannot encode as SubjectPublicKeyInfo",
        })
}

/// Maps aws-lc-rs's refusal of a key to [`KeyError::Rejected`] for `alg`.
fn rejected(alg: Algorithm) -> impl Fn(aws_lc_rs::error::KeyRejected) -> KeyError {
    move |e| KeyError::Rejected {
        alg,
        why: e.description_(),
    }
}

/// The one RSA rule, whatever the source: modulus 2048..=8192 bits and odd,
/// exponent odd in 3..2^32. `n` and `e` are big-endian without leading zeros.
fn check_rsa(n: &[u8], e: &[u8]) -> Result<(), KeyError> {
    // `n` has no leading zero byte, so its first byte fixes the size (an empty `n` is 0 bits).
    let bits = n
        .first()
        .map_or(0, |b| n.len() * 8 - b.leading_zeros() as usize);
    if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
        return Err(KeyError::RsaModulusSize { bits });
    }
    if n.last().is_some_and(|b| b & 1 == 0) {
        return Err(KeyError::RsaEvenModulus);
    }
    let value = (e.len() <= 8).then(|| e.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b)));
    match value {
        Some(v) if (3..1 << 32).contains(&v) && v & 1 == 1 => Ok(()),
        Some(v) => Err(KeyError::RsaExponent {
            shown: v.to_string(),
        }),
        None => Err(KeyError::RsaExponent {
            shown: format!("of {} bytes", e.len()),
        }),
    }
}

/// One DER element: `(tag, contents, rest)`; `None` when malformed.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        (
            bytes.iter().fold(0usize, |v, b| (v << 8) | usize::from(*b)),
            rest,
        )
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The modulus and exponent of a DER RSA key, PKCS#1 `RSAPublicKey` or
/// SubjectPublicKeyInfo; `None` when the bytes are neither (aws-lc then says why).
fn rsa_components(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (0x30, body, _) = der_element(der)? else {
        return None;
    };
    let (tag, _, rest) = der_element(body)?;
    let pkcs1 = match tag {
        0x02 => body,
        0x30 => {
            // SPKI: AlgorithmIdentifier (skipped), then a BIT STRING holding RSAPublicKey.
            let (0x03, bits, _) = der_element(rest)? else {
                return None;
            };
            let (0x30, inner, _) = der_element(bits.strip_prefix(&[0])?)? else {
                return None;
            };
            inner
        }
        _ => return None,
    };
    let (0x02, n, rest) = der_element(pkcs1)? else {
        return None;
    };
    let (0x02, e, _) = der_element(rest)? else {
        return None;
    };
    Some((n, e))
}

/// The first byte of an EC key's point (its form: 2/3 compressed, 4
/// uncompressed, 6/7 hybrid), for a raw SEC1 point or a SubjectPublicKeyInfo.
fn ec_point_form(der: &[u8]) -> Option<u8> {
    match der.first()? {
        0x30 => {
            let (_, spki, _) = der_element(der)?;
            let (_, _, rest) = der_element(spki)?;
            let (0x03, bits, _) = der_element(rest)? else {
                return None;
            };
            bits.get(1).copied()
        }
        form => Some(*form),
    }
}

/// DER `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`
/// (RFC 8017) of two positive big-endian integers without leading zeros.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn push_len(out: &mut Vec<u8>, len: usize) {
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes
                .iter()
                .position(|b| *b != 0)
                .unwrap_or(bytes.len() - 1);
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
    }
    fn integer(out: &mut Vec<u8>, v: &[u8]) {
        let pad = v.first().is_none_or(|b| b & 0x80 != 0);
        out.push(0x02);
        push_len(out, v.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
    }
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    integer(&mut body, n);
    integer(&mut body, e);
    let mut out = Vec::with_capacity(body.len() + 8);
    out.push(0x30);
    push_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// Refuses Ed25519 public keys that are small-order points, non-canonical
/// encodings or not on the curve. `spki` is the key's SubjectPublicKeyInfo,
/// whose last 32 bytes are the encoded point (RFC 8410).
fn check_ed25519(spki: &[u8]) -> Result<(), KeyError> {
    use curve25519_dalek::edwards::CompressedEdwardsY;
    let weak = |why| Err(KeyError::WeakEd25519 { why });
    let Some(raw) = spki.last_chunk::<32>() else {
        return weak("shorter than 32 bytes");
    };
    let Some(point) = CompressedEdwardsY(*raw).decompress() else {
        return weak("not a point on the curve");
    };
    // Decompression reduces y modulo p and accepts a sign bit on x = 0: a
    // canonical encoding is the one that compresses back to the same bytes.
    if point.compress().as_bytes() != raw {
        return weak("a non-canonical encoding");
    }
    if point.is_small_order() {
        return weak("a small-order point (anyone could forge tokens for it)");
    }
    Ok(())
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// What an HMAC secret looks like when it is public key material, checked
/// for every source (`secret`, `secret_base64`, an `oct` JWK, a JWKS). The
/// classic algorithm-confusion key: a verifier handed the RSA public key as
/// its HS256 secret accepts tokens anyone can sign. Checked as a class, in
/// every form someone holding the public key could rebuild byte for byte
/// (after a byte-order mark and surrounding whitespace):
/// - a PEM block anywhere in it (a certificate dump has text before it);
/// - OpenSSH: a line that starts with a key type, or any word of it (an
///   `authorized_keys` line with options, an RFC 4716 or PuTTY file, a bare
///   blob) that is base64 of an SSH wire-format key; the wire blob itself;
/// - DER: SEQUENCEs in minimal form that fill it exactly (trailing
///   whitespace aside), each starting with a SEQUENCE, an INTEGER or a
///   certificate's `[0]` (an SPKI, a PKCS#1 key, a certificate, a chain);
///   never printable text;
/// - base64 text (a PEM body without its armour, wrapped or not) or hex text
///   (colons allowed, as `openssl` prints) that decodes to such DER;
/// - JSON holding a JWK anywhere (a JWK, a JWKS document, an array of JWKs).
///
/// A random binary secret passes for DER with a probability around 2^-26;
/// a hex or base64 secret string only if its decoded bytes do (base64 of 32
/// bytes or more), about as rarely; an SSH blob needs 8 fixed bytes or more.
/// A bare key (32 bytes of an Ed25519 point, 65 of an uncompressed EC
/// point, a JWK's `n` or `x` alone) is random-looking and cannot be told
/// from a secret: docs/security.md lists that limit. `public_material_tests`
/// loads thousands of random secrets.
fn public_material(secret: &[u8]) -> Option<&'static str> {
    let text = secret.trim_ascii();
    let text = text
        .strip_prefix("\u{feff}".as_bytes())
        .unwrap_or(text)
        .trim_ascii();
    if text.windows(11).any(|w| w == b"-----BEGIN ") {
        return Some("a PEM block");
    }
    // A key type as the first word, with more after it (a passphrase that
    // merely starts with `ssh-rsa`, or has it as its first word and nothing
    // after, is a secret).
    let first = text
        .split(|b| b.is_ascii_whitespace())
        .next()
        .unwrap_or_default();
    if (ssh_key_type(first) && text.len() > first.len()) || ssh_wire_key(text) {
        return Some("an OpenSSH public key");
    }
    if text
        .split(|b| b.is_ascii_whitespace())
        .any(|word| base64_prefix(word).is_some_and(|blob| ssh_wire_key(&blob)))
    {
        return Some("an OpenSSH public key (base64 of its wire form)");
    }
    if der_structure(text) {
        return Some("a DER structure (a public key or certificate)");
    }
    if base64_of_der(text) {
        return Some("base64 of a DER structure (a PEM body without its armour lines)");
    }
    if hex_decode(text).is_some_and(|der| der_structure(&der) || ssh_wire_key(&der)) {
        return Some("hex of a DER structure or an OpenSSH key");
    }
    if (text.starts_with(b"{") || text.starts_with(b"["))
        && serde_json::from_slice::<serde_json::Value>(text).is_ok_and(|v| holds_jwk(&v))
    {
        return Some("a JWK or a JWKS document");
    }
    None
}

/// OpenSSH key type names that stand alone (each also with OpenSSH's
/// certificate suffix).
const SSH_KEY_TYPES: [&[u8]; 4] = [b"ssh-rsa", b"ssh-ed25519", b"ssh-ed448", b"ssh-dss"];

/// OpenSSH key type families: a curve or hash name follows.
const SSH_KEY_FAMILIES: [&[u8]; 4] = [b"ecdsa-sha2-", b"sk-ssh-", b"sk-ecdsa-", b"rsa-sha2-"];

/// Whether `name` is an OpenSSH key type: one of [`SSH_KEY_TYPES`] exactly
/// (or with `-cert-v01@openssh.com`), or a family of
/// [`SSH_KEY_FAMILIES`] with a name after it. A word that merely starts like
/// one (`ssh-rsa-rotation`) is not.
fn ssh_key_type(name: &[u8]) -> bool {
    let name = name.strip_suffix(b"-cert-v01@openssh.com").unwrap_or(name);
    SSH_KEY_TYPES.contains(&name)
        || SSH_KEY_FAMILIES
            .iter()
            .any(|f| name.len() > f.len() && name.starts_with(f))
}

/// Whether `b` starts as an SSH wire-format public key (RFC 4253 6.6): a
/// 4-byte big-endian length of 7 to 64, then that many bytes of key type
/// name (`ssh-…`, `ecdsa-sha2-…`, `sk-…`, `rsa-sha2-…`).
fn ssh_wire_key(b: &[u8]) -> bool {
    let Some((len, rest)) = b.split_first_chunk::<4>() else {
        return false;
    };
    let len = u32::from_be_bytes(*len) as usize;
    (7..=64).contains(&len)
        && rest.len() >= len
        && rest[..len].iter().all(|c| c.is_ascii_graphic())
        && ssh_key_type(&rest[..len])
}

/// The bytes that the longest whole-quantum prefix of a base64 word (at
/// least 20 characters, standard or URL-safe alphabet) decodes to: enough
/// to read the head of a blob wrapped across lines.
fn base64_prefix(word: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let word = word
        .strip_suffix(b"==")
        .or_else(|| word.strip_suffix(b"="))
        .unwrap_or(word);
    if word.len() < 20 {
        return None;
    }
    let whole = &word[..word.len() / 4 * 4];
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(whole)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(whole))
        .ok()
}

/// `text` as hex digits (whitespace and `:` between pairs allowed), at
/// least 32 bytes' worth, decoded; `None` when it is anything else.
fn hex_decode(text: &[u8]) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace() && *b != b':')
        .collect();
    if digits.len() < 64 || !digits.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    digits
        .chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

/// Whether a JSON value is, or holds at any depth, an object with a `kty`
/// member (a JWK, a JWKS document, an array of keys).
fn holds_jwk(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Object(map) => map.contains_key("kty") || map.values().any(holds_jwk),
        serde_json::Value::Array(items) => items.iter().any(holds_jwk),
        _ => false,
    }
}

/// Fewest distinct byte values a secret may hold. Random bytes of the
/// minimum length (32) hold about 30, hex text about 14, base64 about 25;
/// the chance that 32 random decimal digits hold fewer than 6 is about
/// 6e-8 (hex and base64: far less). Placeholders with more (`changeme`)
/// are caught as repeats.
const MIN_DISTINCT_BYTES: usize = 6;

/// Why an HMAC secret long enough for its algorithm is still guessable, or
/// `None`: fewer than [`MIN_DISTINCT_BYTES`] distinct byte values (32
/// spaces, zero bytes, `abab…`), one byte value filling half of it or more
/// (a short secret padded out to the length rule), or a unit of at most
/// half of it (and 64 bytes) repeated (`changeme` four times, a 16-byte
/// secret written twice).
fn guessable(secret: &[u8]) -> Option<&'static str> {
    let mut count = [0usize; 256];
    for &b in secret {
        count[usize::from(b)] += 1;
    }
    let distinct = count.iter().filter(|&&n| n > 0).count();
    if distinct < MIN_DISTINCT_BYTES {
        return Some(
            "made of fewer than 6 distinct byte values (one byte or a short word repeated)",
        );
    }
    let most = count.iter().copied().max().unwrap_or(0);
    if most * 2 >= secret.len() {
        return Some("half or more one byte value (a short secret padded out)");
    }
    // Periods up to 64 bytes, so a huge secret costs 64 passes at most.
    if (1..=(secret.len() / 2).min(64)).any(|p| secret[p..] == secret[..secret.len() - p]) {
        return Some("a shorter secret repeated (written twice or more)");
    }
    None
}

/// Whether `b` is DER public material: one or more SEQUENCEs (a key, a
/// certificate, a chain) that fill it exactly, with nothing after but
/// whitespace, each in minimal length form and starting with a SEQUENCE, an
/// INTEGER or a `[0]` that fits. Printable text never is (real DER holds
/// control bytes such as the OID tag 0x06), so a hex or base64 secret that
/// happens to start with `0` (0x30) is not taken for DER.
fn der_structure(b: &[u8]) -> bool {
    if b.iter()
        .all(|c| c.is_ascii_graphic() || c.is_ascii_whitespace())
    {
        return false;
    }
    let mut rest = b.trim_ascii_end();
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let Some((&0x30, after_tag)) = rest.split_first() else {
            return false;
        };
        let Some((len, used)) = der_len(after_tag) else {
            return false;
        };
        if after_tag.len() < used + len
            || !whole_tlv_start(&after_tag[used..used + len])
                .is_some_and(|t| [0x30, 0x02, 0xa0].contains(&t))
        {
            return false;
        }
        rest = &after_tag[used + len..];
    }
    true
}

/// Whether `text` is base64 (standard or URL-safe, padded or not, any
/// whitespace between) of at least 32 bytes that decode to a DER structure.
fn base64_of_der(text: &[u8]) -> bool {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LAX: GeneralPurposeConfig = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    let compact: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if compact.len() < 43 {
        return false;
    }
    let standard = compact
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(b));
    let url = compact
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(b));
    let decoded = if standard {
        GeneralPurpose::new(&base64::alphabet::STANDARD, LAX).decode(&compact)
    } else if url {
        GeneralPurpose::new(&base64::alphabet::URL_SAFE, LAX).decode(&compact)
    } else {
        return false;
    };
    decoded.is_ok_and(|der| der_structure(&der))
}

/// A DER length at the start of `b` (after the tag): the length and how many
/// bytes encode it.
fn der_len(b: &[u8]) -> Option<(usize, usize)> {
    match *b {
        [n, ..] if n < 0x80 => Some((usize::from(n), 1)),
        // Long forms only where the short or a shorter one cannot say it (DER).
        [0x81, n, ..] if n >= 0x80 => Some((usize::from(n), 2)),
        [0x82, a, c, ..] if a != 0 => Some((usize::from(u16::from_be_bytes([a, c])), 3)),
        [0x83, a, c, d, ..] if a != 0 => Some((
            usize::from(a) << 16 | usize::from(c) << 8 | usize::from(d),
            4,
        )),
        _ => None,
    }
}

/// The tag of the first element of `content` when that element fits in it.
fn whole_tlv_start(content: &[u8]) -> Option<u8> {
    let (&tag, rest) = content.split_first()?;
    let (len, used) = der_len(rest)?;
    (used + len <= rest.len()).then_some(tag)
}

#[cfg(test)]
mod public_material_tests {
    use super::{guessable, public_material};
    use base64::Engine as _;

    /// Secrets an operator makes (`openssl rand`, raw, hex or base64) are
    /// never taken for public key material: thousands of each, seeded.
    #[test]
    fn random_secrets_in_every_usual_form_load() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // 16 random bytes are 32 hex digits or 24 base64 characters: the HS256
        // minimum in text form.
        for len in [16usize, 24, 32, 48, 64] {
            for _ in 0..3000 {
                let raw: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
                let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
                let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
                // Decimal digits, 2 per byte (the chance of fewer than 6
                // distinct in 32 is ~6e-8: none in these 15,000 draws).
                let digits: String = raw.iter().map(|b| format!("{:02}", b % 100)).collect();
                for form in [
                    &raw[..],
                    hex.as_bytes(),
                    b64.as_bytes(),
                    url.as_bytes(),
                    digits.as_bytes(),
                ] {
                    if form.len() < 32 {
                        continue;
                    }
                    assert_eq!(public_material(form), None, "{form:?}");
                    assert_eq!(guessable(form), None, "{form:?}");
                }
            }
        }
        // A passphrase that only starts like a key type is a secret.
        for passphrase in [
            &b"ssh-rsa-rotation-secret-2026-0123456789"[..],
            b"ssh-rsa-rotation 2026 and a long passphrase",
            b"ssh-ed25519x rotation 2026 and a long passphrase",
            b"ecdsa-sha2- and then a long passphrase of words",
        ] {
            assert_eq!(public_material(passphrase), None, "{passphrase:?}");
        }
        // Key types as OpenSSH writes them are still caught.
        for line in [
            &b"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ user@host"[..],
            b"ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQ",
            b"ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY",
            b"sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29t",
        ] {
            assert!(public_material(line).is_some(), "{line:?}");
        }
        // The reviewer's case: hex that starts "0900" reads as a SEQUENCE in ASCII.
        let hex = format!("0900{}", "ab".repeat(30));
        assert_eq!(public_material(hex.as_bytes()), None);
    }

    /// Placeholders and padded secrets are guessable whatever their length;
    /// passphrases and the usual test strings are not.
    #[test]
    fn guessable_secrets_are_named() {
        let placeholders: Vec<Vec<u8>> = vec![
            vec![b' '; 32],
            vec![0; 64],
            vec![7; 32],
            b"ab".repeat(16),
            b"changeme".repeat(4),
            b"1234567".repeat(5),
            [&b"hunter2!"[..], &[0u8; 24]].concat(),
            [&b"0123456789abcdef"[..], &[b'x'; 16]].concat(),
            b"12345678".repeat(4),
            b"secret-key-1234!".repeat(8),
            b"my-super-secret!".repeat(2),
            b"changeme12345678".repeat(2),
            b"0123456789abcdef0123456789abcdef".to_vec(),
        ];
        for p in &placeholders {
            assert!(guessable(p).is_some(), "{:?}", String::from_utf8_lossy(p));
        }
        for fine in [
            &b"0123456789abcdefghijklmnopqrstuv"[..],
            b"a secret of at least thirty-two bytes, for HS256",
            b"correct horse battery staple, and then some",
            // Random decimal digits (a vault's numeric secret).
            b"73019284650192837465019283746501",
        ] {
            assert_eq!(guessable(fine), None, "{:?}", String::from_utf8_lossy(fine));
        }
    }
}
