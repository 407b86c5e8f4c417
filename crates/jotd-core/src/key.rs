//! Pre-parsed verifying keys, each bound to exactly one algorithm.

use crate::alg::{Algorithm, KeyFamily};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents};
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
    Hmac(hmac::Key),
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
            Inner::Hmac(_) => "hmac",
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
        if alg.family() == KeyFamily::Rsa {
            // Measure first, so a small key is reported by its size rather than as "TooSmall".
            let rejected = |e: aws_lc_rs::error::KeyRejected| KeyError::Rejected {
                alg,
                why: e.description_(),
            };
            let pkcs1 = rsa::PublicKey::from_der(der).map_err(rejected)?;
            let bits =
                signature::RsaParameters::public_modulus_len(pkcs1.as_ref()).map_err(|_| {
                    KeyError::Rejected {
                        alg,
                        why: "cannot measure the RSA modulus",
                    }
                })?;
            check_rsa_bits(bits as usize)?;
        }
        let parsed = ParsedPublicKey::new(verification, der).map_err(rejected(alg))?;
        Ok(Self {
            alg,
            inner: Inner::Public(parsed),
        })
    }

    /// Builds an RSA key from big-endian modulus and exponent (JWK `n`, `e`).
    ///
    /// # Errors
    /// `alg` is not RS*/PS*, the modulus is out of range, or the components are inconsistent.
    pub fn from_rsa_components(alg: Algorithm, n: &[u8], e: &[u8]) -> Result<Self, KeyError> {
        let params = alg.rsa_parameters().ok_or(KeyError::WrongKeyType {
            alg,
            expected: alg.family(),
        })?;
        let n = strip_leading_zeros(n);
        let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
        check_rsa_bits(bits)?;
        let parsed = RsaPublicKeyComponents {
            n,
            e: strip_leading_zeros(e),
        }
        .to_parsed_public_key(params)
        .map_err(rejected(alg))?;
        Ok(Self {
            alg,
            inner: Inner::Public(parsed),
        })
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
        Ok(Self {
            alg,
            inner: Inner::Hmac(hmac::Key::new(hmac_alg, secret)),
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
            Inner::Hmac(_) => None,
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
            Inner::Hmac(key) => hmac::verify(key, message, signature).is_ok(),
        }
    }
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

fn check_rsa_bits(bits: usize) -> Result<(), KeyError> {
    if (RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(KeyError::RsaModulusSize { bits })
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}
