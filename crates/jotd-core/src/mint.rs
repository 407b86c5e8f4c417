//! Minting: signing keys and tokens, for tests, `jotd speed` and the load harness.
//!
//! Behind the `mint` feature; verification never needs it. Key generation and
//! ECDSA/PSS signing draw randomness from aws-lc-rs's system RNG.

use crate::alg::{Algorithm, KeyFamily};
use crate::key::{KeyError, VerifyingKey};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use aws_lc_rs::{hmac, rsa};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Why a signing key could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    /// aws-lc-rs refused to generate or parse the key.
    #[error("cannot make a {0} signing key")]
    Key(Algorithm),
    /// Signing failed inside aws-lc-rs.
    #[error("{0} signing failed")]
    Sign(Algorithm),
}

/// Infura-style claims of about 230 bytes, deterministic in `serial`: issuer,
/// subject, audience `jotd`, `iat = now`, `exp = now + 1 h`, a `jti`, a method
/// allowlist and an origin allowlist (`https://*.example.com`). The workload of
/// `jotd speed`, the benches and the load harness.
#[must_use]
pub fn sample_claims(now: u64, serial: u32) -> String {
    format!(
        concat!(
            r#"{{"iss":"https://auth.example.com","sub":"project-{serial:06}","aud":"jotd","iat":{now},"#,
            r#""exp":{exp},"jti":"{jti:016x}","methods":["eth_call","eth_blockNumber","eth_getBalance"],"#,
            r#""origins":["https://*.example.com"]}}"#
        ),
        serial = serial,
        now = now,
        exp = now + 3600,
        jti = u64::from(serial).wrapping_mul(0x9e37_79b9_7f4a_7c15),
    )
}

#[allow(clippy::large_enum_variant)] // few, long-lived keys
enum Inner {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    Hmac(hmac::Key, Vec<u8>),
}

/// A private key bound to one algorithm.
pub struct SigningKey {
    alg: Algorithm,
    inner: Inner,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

fn ec_signing(alg: Algorithm) -> &'static signature::EcdsaSigningAlgorithm {
    match alg {
        Algorithm::Es384 => &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        Algorithm::Es512 => &signature::ECDSA_P521_SHA512_FIXED_SIGNING,
        Algorithm::Es256K => &signature::ECDSA_P256K1_SHA256_FIXED_SIGNING,
        _ => &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
    }
}

fn rsa_encoding(alg: Algorithm) -> &'static dyn signature::RsaEncoding {
    match alg {
        Algorithm::Rs384 => &signature::RSA_PKCS1_SHA384,
        Algorithm::Rs512 => &signature::RSA_PKCS1_SHA512,
        Algorithm::Ps256 => &signature::RSA_PSS_SHA256,
        Algorithm::Ps384 => &signature::RSA_PSS_SHA384,
        Algorithm::Ps512 => &signature::RSA_PSS_SHA512,
        _ => &signature::RSA_PKCS1_SHA256,
    }
}

impl SigningKey {
    /// Generates a fresh key: RSA 2048 bits, the algorithm's curve, or a
    /// random HMAC secret of the hash length.
    ///
    /// # Errors
    /// aws-lc-rs failed to generate.
    pub fn generate(alg: Algorithm) -> Result<Self, MintError> {
        let err = |_| MintError::Key(alg);
        let inner = match alg.family() {
            KeyFamily::Rsa => Inner::Rsa(RsaKeyPair::generate(rsa::KeySize::Rsa2048).map_err(err)?),
            KeyFamily::Ec => Inner::Ec(EcdsaKeyPair::generate(ec_signing(alg)).map_err(err)?),
            KeyFamily::Ed25519 => Inner::Ed(Ed25519KeyPair::generate().map_err(err)?),
            KeyFamily::Hmac => {
                let mut secret = vec![0u8; alg.min_secret_len()];
                SystemRandom::new().fill(&mut secret).map_err(err)?;
                return Self::from_hmac_secret(alg, &secret);
            }
        };
        Ok(Self { alg, inner })
    }

    /// Loads a PKCS#8 private key (RSA, EC or Ed25519) for `alg`.
    ///
    /// # Errors
    /// The document does not hold a key of `alg`'s family and curve.
    pub fn from_pkcs8(alg: Algorithm, der: &[u8]) -> Result<Self, MintError> {
        let err = |_| MintError::Key(alg);
        let inner = match alg.family() {
            KeyFamily::Rsa => Inner::Rsa(RsaKeyPair::from_pkcs8(der).map_err(err)?),
            KeyFamily::Ec => {
                Inner::Ec(EcdsaKeyPair::from_pkcs8(ec_signing(alg), der).map_err(err)?)
            }
            KeyFamily::Ed25519 => {
                Inner::Ed(Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(err)?)
            }
            KeyFamily::Hmac => return Err(MintError::Key(alg)),
        };
        Ok(Self { alg, inner })
    }

    /// An HMAC signing key from a secret.
    ///
    /// # Errors
    /// `alg` is not HS*.
    pub fn from_hmac_secret(alg: Algorithm, secret: &[u8]) -> Result<Self, MintError> {
        let h = alg.hmac().ok_or(MintError::Key(alg))?;
        Ok(Self {
            alg,
            inner: Inner::Hmac(hmac::Key::new(h, secret), secret.to_vec()),
        })
    }

    /// The algorithm this key signs with.
    #[must_use]
    pub const fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The PKCS#8 private key document; `None` for HMAC keys.
    #[must_use]
    pub fn to_pkcs8(&self) -> Option<Vec<u8>> {
        match &self.inner {
            Inner::Rsa(k) => k.as_der().ok().map(|d| d.as_ref().to_vec()),
            Inner::Ec(k) => k.to_pkcs8v1().ok().map(|d| d.as_ref().to_vec()),
            Inner::Ed(k) => k.to_pkcs8v1().ok().map(|d| d.as_ref().to_vec()),
            Inner::Hmac(..) => None,
        }
    }

    /// The HMAC secret; `None` for public-key algorithms.
    #[must_use]
    pub fn hmac_secret(&self) -> Option<&[u8]> {
        match &self.inner {
            Inner::Hmac(_, s) => Some(s),
            _ => None,
        }
    }

    /// The public half as the engine loads it (raw/PKCS#1/SEC1 bytes → [`VerifyingKey`]).
    ///
    /// # Errors
    /// Only if aws-lc-rs refuses its own public key.
    pub fn verifying_key(&self) -> Result<VerifyingKey, KeyError> {
        match &self.inner {
            Inner::Rsa(k) => VerifyingKey::from_public_der(self.alg, k.public_key().as_ref()),
            Inner::Ec(k) => VerifyingKey::from_public_der(self.alg, k.public_key().as_ref()),
            Inner::Ed(k) => VerifyingKey::from_public_der(self.alg, k.public_key().as_ref()),
            Inner::Hmac(_, s) => VerifyingKey::from_hmac_secret(self.alg, s),
        }
    }

    /// Signs `message` as JWS wants it (ECDSA fixed-width `r || s`).
    ///
    /// # Errors
    /// aws-lc-rs failed to sign.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, MintError> {
        let err = |_| MintError::Sign(self.alg);
        Ok(match &self.inner {
            Inner::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(
                    rsa_encoding(self.alg),
                    &SystemRandom::new(),
                    message,
                    &mut sig,
                )
                .map_err(err)?;
                sig
            }
            Inner::Ec(k) => k
                .sign(&SystemRandom::new(), message)
                .map_err(err)?
                .as_ref()
                .to_vec(),
            Inner::Ed(k) => k.sign(message).as_ref().to_vec(),
            Inner::Hmac(k, _) => hmac::sign(k, message).as_ref().to_vec(),
        })
    }

    /// Mints a compact JWS: header `{"alg":…,"typ":"JWT","kid":…}` and the given claims JSON
    /// (used verbatim, so tests can mint odd payloads).
    ///
    /// # Errors
    /// aws-lc-rs failed to sign.
    pub fn mint(&self, kid: Option<&str>, claims_json: &str) -> Result<String, MintError> {
        let header = match kid {
            Some(kid) => format!(
                r#"{{"alg":"{}","typ":"JWT","kid":{}}}"#,
                self.alg,
                serde_json::Value::from(kid)
            ),
            None => format!(r#"{{"alg":"{}","typ":"JWT"}}"#, self.alg),
        };
        self.mint_raw(header.as_bytes(), claims_json.as_bytes())
    }

    /// Mints a compact JWS from raw header and payload bytes (for attack tests).
    ///
    /// # Errors
    /// aws-lc-rs failed to sign.
    pub fn mint_raw(&self, header: &[u8], payload: &[u8]) -> Result<String, MintError> {
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let sig = self.sign(token.as_bytes())?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(sig, &mut token);
        Ok(token)
    }
}

/// The baseline that `jotd speed` and the benches compare the engine with: raw
/// aws-lc-rs, a pre-parsed key, on an already split signing input and an
/// already decoded signature. The crypto alone, nothing of JWT.
pub struct RawVerifier {
    inner: RawInner,
}

#[allow(clippy::large_enum_variant)] // one per measurement
enum RawInner {
    Public(signature::ParsedPublicKey),
    Hmac(hmac::Key),
}

impl RawVerifier {
    /// The baseline for tokens signed by `key`.
    ///
    /// # Errors
    /// Only if aws-lc-rs refuses its own public key.
    pub fn new(key: &SigningKey) -> Result<Self, MintError> {
        let err = |_| MintError::Key(key.alg);
        let inner = match (&key.inner, key.alg.verification()) {
            (Inner::Hmac(k, _), _) => RawInner::Hmac(k.clone()),
            (_, Some(alg)) => {
                let spki = key
                    .verifying_key()
                    .ok()
                    .and_then(|k| k.spki_der())
                    .ok_or(MintError::Key(key.alg))?;
                RawInner::Public(signature::ParsedPublicKey::new(alg, spki).map_err(err)?)
            }
            (_, None) => return Err(MintError::Key(key.alg)),
        };
        Ok(Self { inner })
    }

    /// Verifies `signature` over `signing_input`.
    #[must_use]
    pub fn verify(&self, signing_input: &[u8], signature: &[u8]) -> bool {
        match &self.inner {
            RawInner::Public(k) => k.verify_sig(signing_input, signature).is_ok(),
            RawInner::Hmac(k) => hmac::verify(k, signing_input, signature).is_ok(),
        }
    }
}

/// Splits a compact JWS into its signing input and decoded signature (for [`RawVerifier`]).
///
/// # Errors
/// Not three segments, or the signature is not base64url.
pub fn split_for_raw(token: &str) -> Result<(Vec<u8>, Vec<u8>), MintError> {
    let bad = MintError::Sign(Algorithm::Hs256);
    let (input, sig) = token.rsplit_once('.').ok_or(bad.clone())?;
    let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| bad)?;
    Ok((input.as_bytes().to_vec(), sig))
}
