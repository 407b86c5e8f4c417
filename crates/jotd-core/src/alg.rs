//! JWS algorithms and their aws-lc-rs counterparts.

use aws_lc_rs::{hmac, signature};
use std::fmt;

/// A JWS signature algorithm that jotd verifies.
///
/// A key is bound to exactly one `Algorithm` when it is loaded; the token
/// header's `alg` only selects among a tenant's keys and never decides the
/// key type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256, 32-byte salt.
    Ps256,
    /// RSASSA-PSS with SHA-384, MGF1-SHA-384, 48-byte salt.
    Ps384,
    /// RSASSA-PSS with SHA-512, MGF1-SHA-512, 64-byte salt.
    Ps512,
    /// ECDSA on P-256 with SHA-256, fixed-width `r || s`.
    Es256,
    /// ECDSA on P-384 with SHA-384, fixed-width `r || s`.
    Es384,
    /// ECDSA on P-521 with SHA-512, fixed-width `r || s`.
    Es512,
    /// ECDSA on secp256k1 with SHA-256, fixed-width `r || s` (RFC 8812).
    Es256K,
    /// EdDSA over Ed25519 (`EdDSA`, or `Ed25519` per RFC 9864).
    EdDsa,
    /// HMAC with SHA-256.
    Hs256,
    /// HMAC with SHA-384.
    Hs384,
    /// HMAC with SHA-512.
    Hs512,
}

/// The key family an algorithm needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFamily {
    /// RSA public key (RS*, PS*).
    Rsa,
    /// Elliptic-curve public key (ES*).
    Ec,
    /// Ed25519 public key (EdDSA).
    Ed25519,
    /// Shared secret (HS*).
    Hmac,
}

impl Algorithm {
    /// Every algorithm, in a stable order.
    pub const ALL: [Self; 14] = [
        Self::Rs256,
        Self::Rs384,
        Self::Rs512,
        Self::Ps256,
        Self::Ps384,
        Self::Ps512,
        Self::Es256,
        Self::Es384,
        Self::Es512,
        Self::Es256K,
        Self::EdDsa,
        Self::Hs256,
        Self::Hs384,
        Self::Hs512,
    ];

    /// Parses a JOSE `alg` name. `EdDSA` and `Ed25519` both name [`Algorithm::EdDsa`];
    /// `none` and every unknown name return `None`. Names are case-sensitive (RFC 7515).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "ES512" => Self::Es512,
            "ES256K" => Self::Es256K,
            "EdDSA" | "Ed25519" => Self::EdDsa,
            "HS256" => Self::Hs256,
            "HS384" => Self::Hs384,
            "HS512" => Self::Hs512,
            _ => return None,
        })
    }

    /// The canonical JOSE name (`EdDSA` for Ed25519).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::Es512 => "ES512",
            Self::Es256K => "ES256K",
            Self::EdDsa => "EdDSA",
            Self::Hs256 => "HS256",
            Self::Hs384 => "HS384",
            Self::Hs512 => "HS512",
        }
    }

    /// The key family this algorithm verifies with.
    #[must_use]
    pub const fn family(self) -> KeyFamily {
        match self {
            Self::Rs256 | Self::Rs384 | Self::Rs512 | Self::Ps256 | Self::Ps384 | Self::Ps512 => {
                KeyFamily::Rsa
            }
            Self::Es256 | Self::Es384 | Self::Es512 | Self::Es256K => KeyFamily::Ec,
            Self::EdDsa => KeyFamily::Ed25519,
            Self::Hs256 | Self::Hs384 | Self::Hs512 => KeyFamily::Hmac,
        }
    }

    /// A bit for [`AlgorithmSet`].
    const fn bit(self) -> u16 {
        1 << (self as u16)
    }

    /// The aws-lc-rs verification algorithm, for public-key algorithms.
    pub(crate) fn verification(self) -> Option<&'static dyn signature::VerificationAlgorithm> {
        if let Some(rsa) = self.rsa_parameters() {
            return Some(rsa);
        }
        Some(match self {
            Self::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
            Self::Es384 => &signature::ECDSA_P384_SHA384_FIXED,
            Self::Es512 => &signature::ECDSA_P521_SHA512_FIXED,
            Self::Es256K => &signature::ECDSA_P256K1_SHA256_FIXED,
            Self::EdDsa => &signature::ED25519,
            _ => return None,
        })
    }

    /// The aws-lc-rs RSA parameters, for RS* and PS*.
    pub(crate) fn rsa_parameters(self) -> Option<&'static signature::RsaParameters> {
        Some(match self {
            Self::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Self::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Self::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Self::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
            Self::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
            Self::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
            _ => return None,
        })
    }

    /// The aws-lc-rs HMAC algorithm, for HS*.
    pub(crate) const fn hmac(self) -> Option<hmac::Algorithm> {
        match self {
            Self::Hs256 => Some(hmac::HMAC_SHA256),
            Self::Hs384 => Some(hmac::HMAC_SHA384),
            Self::Hs512 => Some(hmac::HMAC_SHA512),
            _ => None,
        }
    }

    /// The shortest HMAC secret accepted: the hash output length (RFC 7518 §3.2).
    #[must_use]
    pub const fn min_secret_len(self) -> usize {
        match self {
            Self::Hs384 => 48,
            Self::Hs512 => 64,
            _ => 32,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s).ok_or(UnknownAlgorithm)
    }
}

/// The error for an algorithm name jotd does not implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown algorithm (expected one of RS256..512, PS256..512, ES256, ES384, ES512, ES256K, EdDSA, Ed25519, HS256..512)"
)]
pub struct UnknownAlgorithm;

/// A set of algorithms, as a bit set (`Copy`, no allocation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AlgorithmSet(u16);

impl AlgorithmSet {
    /// The empty set.
    pub const EMPTY: Self = Self(0);
    /// Every algorithm.
    pub const ALL: Self = Self((1 << Algorithm::ALL.len()) - 1);

    /// Whether the set holds `alg`.
    #[must_use]
    pub const fn contains(self, alg: Algorithm) -> bool {
        self.0 & alg.bit() != 0
    }

    /// Adds `alg`.
    pub const fn insert(&mut self, alg: Algorithm) {
        self.0 |= alg.bit();
    }

    /// Whether the set is empty.
    #[must_use]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The algorithms in the set, in [`Algorithm::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Algorithm> {
        Algorithm::ALL
            .into_iter()
            .filter(move |a| self.contains(*a))
    }
}

impl FromIterator<Algorithm> for AlgorithmSet {
    fn from_iter<I: IntoIterator<Item = Algorithm>>(iter: I) -> Self {
        let mut set = Self::EMPTY;
        for alg in iter {
            set.insert(alg);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_ed25519_is_an_alias() {
        for alg in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(alg.as_str()), Some(alg));
        }
        assert_eq!(Algorithm::from_name("Ed25519"), Some(Algorithm::EdDsa));
        for bad in ["none", "None", "rs256", "HS256 ", "", "ES256k", "RSA1_5"] {
            assert_eq!(Algorithm::from_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sets_hold_exactly_what_was_inserted() {
        let set: AlgorithmSet = [Algorithm::Rs256, Algorithm::EdDsa].into_iter().collect();
        assert!(set.contains(Algorithm::Rs256) && set.contains(Algorithm::EdDsa));
        assert!(!set.contains(Algorithm::Hs256));
        assert_eq!(set.iter().count(), 2);
        assert!(
            Algorithm::ALL
                .iter()
                .all(|a| AlgorithmSet::ALL.contains(*a))
        );
    }
}
