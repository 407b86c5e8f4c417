//! JWK and JWKS documents (RFC 7517) → pre-parsed keys.

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use jotd_core::{Algorithm, KeyError, VerifyingKey};
use serde::Deserialize;

/// Why a JWK or JWKS could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    /// Not JSON of the expected shape.
    #[error("not a JWK/JWKS document: {0}")]
    Json(String),
    /// Neither the config nor the JWK says which algorithm (needed for RSA and oct).
    #[error("no algorithm: set `alg` in the config or the JWK")]
    MissingAlg,
    /// An `alg` jotd does not implement.
    #[error("unknown algorithm `{0}`")]
    UnknownAlg(String),
    /// The config and the JWK name different algorithms.
    #[error("config says {config} but the JWK says {jwk}")]
    AlgMismatch {
        /// From the config.
        config: Algorithm,
        /// From the JWK's `alg`.
        jwk: String,
    },
    /// The curve does not belong to the algorithm.
    #[error("curve `{crv}` cannot be used with {alg}")]
    CurveMismatch {
        /// The JWK's `crv`.
        crv: String,
        /// The algorithm.
        alg: Algorithm,
    },
    /// A required member is missing or not base64url.
    #[error("member `{0}` missing or not base64url")]
    Member(&'static str),
    /// A `kty` jotd does not verify with.
    #[error("unsupported key type `{0}`")]
    UnsupportedKty(String),
    /// The JWK carries private key members: refused so the secret does not spread.
    #[error("JWK holds private key material (`d`); publish the public key only")]
    PrivateKey,
    /// The JWK says it is not for verifying signatures (`use` other than
    /// `sig`, or `key_ops` without `verify`).
    #[error("JWK is not for verifying signatures ({0})")]
    NotForVerification(String),
    /// Two keys of one JWKS share a `kid` (quoted and escaped: it comes from the IdP).
    #[error("duplicate kid {0:?} in the JWKS")]
    DuplicateKid(String),
    /// No key of the JWKS is usable (the reasons are in the skipped list).
    #[error("no usable key in the JWKS ({0})")]
    NoUsableKey(String),
    /// More entries in the document than a JWKS of `max_jwks_keys` usable keys needs
    /// (refused before any entry is parsed).
    #[error(
        "{found} entries in the JWKS, more than {limit} ({MAX_ENTRIES_PER_KEY} per key of max_jwks_keys)"
    )]
    TooManyEntries {
        /// Entries in the document.
        found: usize,
        /// The limit.
        limit: usize,
    },
    /// More keys than allowed.
    #[error("{found} keys, more than the limit of {limit}")]
    TooManyKeys {
        /// Keys in the document.
        found: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The key material is not acceptable.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// A JSON Web Key (public members only; others are ignored).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Jwk {
    /// Key type: `RSA`, `EC`, `OKP`, `oct`.
    pub kty: String,
    /// Key id.
    #[serde(default)]
    pub kid: Option<String>,
    /// Algorithm the key is meant for.
    #[serde(default)]
    pub alg: Option<String>,
    /// `sig` or `enc`.
    #[serde(default, rename = "use")]
    pub use_: Option<String>,
    /// Permitted operations (`verify`, `sign`, `encrypt`, ...); when present, must hold `verify`.
    #[serde(default)]
    pub key_ops: Option<Vec<String>>,
    /// Curve (`EC`, `OKP`).
    #[serde(default)]
    pub crv: Option<String>,
    /// RSA modulus.
    #[serde(default)]
    pub n: Option<String>,
    /// RSA exponent.
    #[serde(default)]
    pub e: Option<String>,
    /// EC x / OKP public key.
    #[serde(default)]
    pub x: Option<String>,
    /// EC y.
    #[serde(default)]
    pub y: Option<String>,
    /// Symmetric key.
    #[serde(default)]
    pub k: Option<String>,
    /// Private exponent / scalar: must be absent.
    #[serde(default)]
    pub d: Option<serde::de::IgnoredAny>,
}

fn b64(value: Option<&String>, member: &'static str) -> Result<Vec<u8>, JwkError> {
    const LAX: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let text = value.ok_or(JwkError::Member(member))?;
    GeneralPurpose::new(&base64::alphabet::URL_SAFE, LAX)
        .decode(text)
        .map_err(|_| JwkError::Member(member))
}

impl Jwk {
    /// The algorithm this key is bound to: the config's, which must agree with
    /// the JWK's `alg` if both are set; else the JWK's; else the curve's for EC
    /// and OKP keys (a curve has one JWS algorithm). RSA and oct keys need one.
    ///
    /// # Errors
    /// Missing, unknown or disagreeing algorithm.
    pub fn algorithm(&self, config: Option<Algorithm>) -> Result<Algorithm, JwkError> {
        let from_jwk = match self.alg.as_deref() {
            Some(name) => Some(
                Algorithm::from_name(name).ok_or_else(|| JwkError::UnknownAlg(name.to_owned()))?,
            ),
            None => None,
        };
        match (config, from_jwk) {
            (Some(c), Some(j)) if c != j => Err(JwkError::AlgMismatch {
                config: c,
                jwk: j.to_string(),
            }),
            (Some(a), _) | (None, Some(a)) => Ok(a),
            (None, None) => match (self.kty.as_str(), self.crv.as_deref()) {
                ("EC", Some("P-256")) => Ok(Algorithm::Es256),
                ("EC", Some("P-384")) => Ok(Algorithm::Es384),
                ("EC", Some("P-521")) => Ok(Algorithm::Es512),
                ("EC", Some("secp256k1")) => Ok(Algorithm::Es256K),
                ("OKP", Some("Ed25519")) => Ok(Algorithm::EdDsa),
                _ => Err(JwkError::MissingAlg),
            },
        }
    }

    /// Refuses a key its publisher did not mean for verifying signatures:
    /// `use` other than `sig` (RFC 7517 §4.2), or `key_ops` present without
    /// `verify` (§4.3). The one rule for inline JWKs and JWKS documents alike.
    ///
    /// # Errors
    /// [`JwkError::NotForVerification`], naming the member.
    pub fn check_verification_use(&self) -> Result<(), JwkError> {
        if let Some(use_) = self.use_.as_deref()
            && use_ != "sig"
        {
            return Err(JwkError::NotForVerification(format!("use is `{use_}`")));
        }
        if let Some(ops) = &self.key_ops
            && !ops.iter().any(|o| o == "verify")
        {
            return Err(JwkError::NotForVerification(format!(
                "key_ops {ops:?} lacks `verify`"
            )));
        }
        Ok(())
    }

    /// Builds the verifying key, bound to [`Jwk::algorithm`].
    ///
    /// # Errors
    /// Not for verification (see [`Jwk::check_verification_use`]),
    /// unsupported type, wrong curve, bad members, private material, or a key
    /// the engine refuses (RSA size or exponent, point not on the curve or of
    /// small order, short secret).
    pub fn to_key(&self, config: Option<Algorithm>) -> Result<VerifyingKey, JwkError> {
        if self.d.is_some() && self.kty != "oct" {
            return Err(JwkError::PrivateKey);
        }
        self.check_verification_use()?;
        let alg = self.algorithm(config)?;
        let curve_ok = |want: &str| {
            let crv = self.crv.as_deref().unwrap_or("");
            if crv == want {
                Ok(())
            } else {
                Err(JwkError::CurveMismatch {
                    crv: crv.to_owned(),
                    alg,
                })
            }
        };
        Ok(match self.kty.as_str() {
            "RSA" => VerifyingKey::from_rsa_components(
                alg,
                &b64(self.n.as_ref(), "n")?,
                &b64(self.e.as_ref(), "e")?,
            )?,
            "EC" => {
                curve_ok(match alg {
                    Algorithm::Es256 => "P-256",
                    Algorithm::Es384 => "P-384",
                    Algorithm::Es512 => "P-521",
                    Algorithm::Es256K => "secp256k1",
                    _ => "(none)",
                })?;
                VerifyingKey::from_ec_coordinates(
                    alg,
                    &b64(self.x.as_ref(), "x")?,
                    &b64(self.y.as_ref(), "y")?,
                )?
            }
            "OKP" => {
                curve_ok("Ed25519")?;
                VerifyingKey::from_ed25519(alg, &b64(self.x.as_ref(), "x")?)?
            }
            "oct" => VerifyingKey::from_hmac_secret(alg, &b64(self.k.as_ref(), "k")?)?,
            other => return Err(JwkError::UnsupportedKty(other.to_owned())),
        })
    }
}

/// Entries a JWKS may hold per usable key allowed (`max_jwks_keys`): room for
/// encryption keys and keys of other types beside the signing keys, not for a
/// document of thousands of junk entries.
pub const MAX_ENTRIES_PER_KEY: usize = 4;

/// Reasons kept in [`JwksKeys::skipped`]; the rest are only counted.
pub const MAX_SKIPPED_LISTED: usize = 8;

/// The usable keys of a JWKS document, and why the others were left out.
#[derive(Debug)]
pub struct JwksKeys {
    /// `(kid, key)` in document order.
    pub keys: Vec<(String, VerifyingKey)>,
    /// Why keys were left out (`use: enc`, no kid, unsupported type, ...), one line
    /// each, the first [`MAX_SKIPPED_LISTED`]; kids are quoted and escaped.
    pub skipped: Vec<String>,
    /// Keys left out in all, listed or not.
    pub skipped_total: usize,
    /// The algorithm the document was parsed with for keys without `alg` (the
    /// source's `alg`). A snapshot uses the keys only while the source still says
    /// the same, so a reload that changes it never leaves keys read the old way serving.
    pub parsed_alg: Option<Algorithm>,
}

impl JwksKeys {
    fn skip(&mut self, why: String) {
        self.skipped_total += 1;
        if self.skipped.len() < MAX_SKIPPED_LISTED {
            // The reasons quote the IdP's strings (kids, types, serde's messages): control
            // characters are escaped so a `\n` in a kid cannot forge a log line.
            let printable = if why.chars().any(char::is_control) {
                why.chars()
                    .map(|c| {
                        if c.is_control() {
                            c.escape_default().to_string()
                        } else {
                            c.to_string()
                        }
                    })
                    .collect()
            } else {
                why
            };
            self.skipped.push(printable);
        }
    }

    /// The reasons as one line, with how many more were not listed.
    #[must_use]
    pub fn skipped_summary(&self) -> String {
        let mut line = self.skipped.join("; ");
        let more = self.skipped_total - self.skipped.len();
        if more > 0 {
            line.push_str(&format!("; and {more} more"));
        }
        line
    }
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

/// Parses a JWKS document. Keys not for verification (`use` other than `sig`,
/// `key_ops` without `verify`), without a `kid`, or that the engine refuses
/// (type, curve, weak or malformed material) are left out (and listed); a document with no usable
/// key, duplicate kids or more than `max_keys` usable keys is an error, so a
/// broken document never replaces good keys.
///
/// # Errors
/// See [`JwkError`].
pub fn parse_jwks(
    bytes: &[u8],
    config_alg: Option<Algorithm>,
    max_keys: usize,
) -> Result<JwksKeys, JwkError> {
    let doc: Document = serde_json::from_slice(bytes).map_err(|e| JwkError::Json(e.to_string()))?;
    let limit = max_keys.max(1).saturating_mul(MAX_ENTRIES_PER_KEY);
    if doc.keys.len() > limit {
        return Err(JwkError::TooManyEntries {
            found: doc.keys.len(),
            limit,
        });
    }
    let mut out = JwksKeys {
        keys: Vec::new(),
        skipped: Vec::new(),
        skipped_total: 0,
        parsed_alg: config_alg,
    };
    let mut signing_kids: std::collections::HashSet<String> = std::collections::HashSet::new();
    for (i, value) in doc.keys.into_iter().enumerate() {
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(j) => j,
            Err(e) => {
                out.skip(format!("keys[{i}]: {e}"));
                continue;
            }
        };
        let Some(kid) = jwk.kid.clone() else {
            out.skip(format!("keys[{i}]: no kid"));
            continue;
        };
        // Before the duplicate check: a publisher may give its encryption key the same kid.
        if let Err(e) = jwk.check_verification_use() {
            out.skip(format!("kid {kid:?}: {e}"));
            continue;
        }
        // Against every signing key seen, kept or refused, so the outcome does not depend
        // on which of two keys sharing a kid comes first.
        if !signing_kids.insert(kid.clone()) {
            return Err(JwkError::DuplicateKid(kid));
        }
        match jwk.to_key(config_alg) {
            Ok(key) => out.keys.push((kid, key)),
            Err(e) => out.skip(format!("kid {kid:?}: {e}")),
        }
    }
    if out.keys.is_empty() {
        return Err(JwkError::NoUsableKey(out.skipped_summary()));
    }
    if out.keys.len() > max_keys {
        return Err(JwkError::TooManyKeys {
            found: out.keys.len(),
            limit: max_keys,
        });
    }
    Ok(out)
}
