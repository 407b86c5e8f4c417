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
    #[error(
        "JWK holds private key material (`d`, `p`, `q`, `dp`, `dq`, `qi` or `oth`); publish the public key only"
    )]
    PrivateKey,
    /// The JWK says it is not for verifying signatures (`use` other than
    /// `sig`, or `key_ops` without `verify`).
    #[error("JWK is not for verifying signatures ({0})")]
    NotForVerification(String),
    /// Two keys of one JWKS share a `kid` (quoted, escaped and cut: it comes from the IdP).
    #[error("duplicate kid {0} in the JWKS")]
    DuplicateKid(String),
    /// No key of the JWKS is usable (the reasons are in the skipped list).
    #[error("no usable key in the JWKS ({0})")]
    NoUsableKey(String),
    /// More entries in the document than a JWKS of `max_jwks_keys` usable keys needs
    /// (refused while reading the list: no entry past the limit is kept or parsed).
    #[error(
        "more than {limit} entries in the JWKS ({MAX_ENTRIES_PER_KEY} per key of max_jwks_keys)"
    )]
    TooManyEntries {
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
    /// `x5c`, `x5t` or `x5t#S256` names another key or certificate than the
    /// JWK's own members: readers that prefer the certificate would trust
    /// another key than jotd does.
    #[error("{0}")]
    CertificateMismatch(String),
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
    /// X.509 certificate chain (standard base64 DER, leaf first): when
    /// present, the leaf's key must be the JWK's.
    #[serde(default)]
    pub x5c: Option<Vec<String>>,
    /// SHA-1 thumbprint of the leaf certificate: when present with `x5c`,
    /// must be the leaf's.
    #[serde(default)]
    pub x5t: Option<String>,
    /// SHA-256 thumbprint of the leaf certificate: as `x5t`.
    #[serde(default, rename = "x5t#S256")]
    pub x5t_s256: Option<String>,
    /// Private exponent / scalar: must be absent.
    #[serde(default)]
    pub d: Option<serde::de::IgnoredAny>,
    /// RSA private members (primes, CRT exponents and coefficient, other
    /// primes): must be absent; `p` and `q` alone are the whole private key.
    #[serde(default)]
    pub p: Option<serde::de::IgnoredAny>,
    /// See [`Jwk::p`].
    #[serde(default)]
    pub q: Option<serde::de::IgnoredAny>,
    /// See [`Jwk::p`].
    #[serde(default)]
    pub dp: Option<serde::de::IgnoredAny>,
    /// See [`Jwk::p`].
    #[serde(default)]
    pub dq: Option<serde::de::IgnoredAny>,
    /// See [`Jwk::p`].
    #[serde(default)]
    pub qi: Option<serde::de::IgnoredAny>,
    /// See [`Jwk::p`].
    #[serde(default)]
    pub oth: Option<serde::de::IgnoredAny>,
}

impl Jwk {
    /// Whether the JWK carries any private member.
    fn has_private_members(&self) -> bool {
        [
            &self.d, &self.p, &self.q, &self.dp, &self.dq, &self.qi, &self.oth,
        ]
        .iter()
        .any(|m| m.is_some())
    }
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
        // A JWE algorithm or an ECDH-only curve says "encryption" as plainly
        // as `use = "enc"`: such a key sharing a signing key's kid is no
        // duplicate (a JWKS publishing both was refused whole).
        if let Some(alg) = self.alg.as_deref()
            && is_jwe_alg(alg)
        {
            return Err(JwkError::NotForVerification(format!(
                "alg `{alg}` is a JWE (encryption) algorithm"
            )));
        }
        if let Some(crv) = self.crv.as_deref()
            && matches!(crv, "X25519" | "X448")
        {
            return Err(JwkError::NotForVerification(format!(
                "crv `{crv}` is for key agreement (ECDH), not signatures"
            )));
        }
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
        if self.has_private_members() && self.kty != "oct" {
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
        .and_then(|key| self.check_certificate(alg, &key).map(|()| key))
    }

    /// When the JWK carries `x5c`: its leaf certificate's key is `key`, and
    /// `x5t` / `x5t#S256` (when present) are the leaf's thumbprints. jotd
    /// verifies with the JWK's own members; a reader of the same document
    /// that prefers the certificate must not trust another key.
    fn check_certificate(&self, alg: Algorithm, key: &VerifyingKey) -> Result<(), JwkError> {
        let bad = |why: String| Err(JwkError::CertificateMismatch(why));
        // A thumbprint without the certificate names a certificate jotd
        // does not have: nothing to compare.
        let Some(chain) = &self.x5c else {
            return Ok(());
        };
        let Some(leaf) = chain.first() else {
            return bad("`x5c` is empty".into());
        };
        let Ok(der) = base64::engine::general_purpose::STANDARD.decode(leaf) else {
            return bad("`x5c[0]` is not standard base64".into());
        };
        let spki = match crate::material::certificate_spki(&der) {
            Ok(spki) => spki,
            Err(e) => return bad(format!("`x5c[0]`: {e}")),
        };
        let same = VerifyingKey::from_public_der(alg, &spki)
            .is_ok_and(|cert_key| cert_key.material_digest() == key.material_digest());
        if !same {
            return bad("the key of `x5c[0]` is not the JWK's (`n`/`e` or `x`/`y`)".into());
        }
        let thumbprint = |alg: &'static aws_lc_rs::digest::Algorithm| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(aws_lc_rs::digest::digest(alg, &der))
        };
        if let Some(t) = &self.x5t
            && t.trim_end_matches('=') != thumbprint(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY)
        {
            return bad("`x5t` is not the thumbprint of `x5c[0]`".into());
        }
        if let Some(t) = &self.x5t_s256
            && t.trim_end_matches('=') != thumbprint(&aws_lc_rs::digest::SHA256)
        {
            return bad("`x5t#S256` is not the thumbprint of `x5c[0]`".into());
        }
        Ok(())
    }
}

/// Entries a JWKS may hold per usable key allowed (`max_jwks_keys`): room for
/// encryption keys and keys of other types beside the signing keys, not for a
/// document of thousands of junk entries.
pub const MAX_ENTRIES_PER_KEY: usize = 4;

/// The longest reason or error text taken from a JWKS, in characters.
pub const MAX_REASON_CHARS: usize = 256;

/// Text quoting an IdP's strings (kids, types, serde's messages) made safe for a
/// log line: control characters escaped (a `\n` in a kid cannot forge a line) and
/// cut at [`MAX_REASON_CHARS`] (a megabyte kid does not become a megabyte line).
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_REASON_CHARS + 8));
    for (i, c) in text.chars().enumerate() {
        if i == MAX_REASON_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() || reorders_or_breaks(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Characters that are not control characters yet break a log line (U+2028,
/// U+2029) or reorder what a terminal shows (the bidi marks, embeddings,
/// overrides and isolates: "Trojan Source").
fn reorders_or_breaks(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Reasons kept in [`JwksKeys::skipped`]; the rest are only counted.
pub const MAX_SKIPPED_LISTED: usize = 8;

/// Whether `alg` is a JWE key-management algorithm (RFC 7518 §4): a key
/// published for it encrypts, never verifies.
fn is_jwe_alg(alg: &str) -> bool {
    matches!(
        alg,
        "RSA1_5"
            | "RSA-OAEP"
            | "RSA-OAEP-256"
            | "RSA-OAEP-384"
            | "RSA-OAEP-512"
            | "dir"
            | "ECDH-ES"
            | "ECDH-ES+A128KW"
            | "ECDH-ES+A192KW"
            | "ECDH-ES+A256KW"
            | "A128KW"
            | "A192KW"
            | "A256KW"
            | "A128GCMKW"
            | "A192GCMKW"
            | "A256GCMKW"
            | "PBES2-HS256+A128KW"
            | "PBES2-HS384+A192KW"
            | "PBES2-HS512+A256KW"
    )
}

/// The usable keys of a JWKS document, and why the others were left out.
#[derive(Debug, Clone)]
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
    /// Whether the document was read with symmetric (`oct`) keys allowed (a
    /// file always; a URL only with `symmetric_keys = true`). Fetched keys are
    /// installed only while their source still says the same: a fetch begun
    /// before a reload turned the flag on, finishing after the new one, would
    /// otherwise replace keys read with secrets by keys read without them.
    pub parsed_symmetric: bool,
}

impl JwksKeys {
    /// Whether `other` holds the same keys read the same way: kids, algorithms
    /// and key material in order, the parse algorithm and what was skipped. A
    /// refetch that brings an unchanged document rebuilds nothing.
    #[must_use]
    pub fn same_as(&self, other: &Self) -> bool {
        self.parsed_alg == other.parsed_alg
            && self.parsed_symmetric == other.parsed_symmetric
            && self.skipped_total == other.skipped_total
            && self.skipped == other.skipped
            && self.keys.len() == other.keys.len()
            && self.keys.iter().zip(&other.keys).all(|((ka, a), (kb, b))| {
                ka == kb
                    && a.algorithm() == b.algorithm()
                    && a.material_digest() == b.material_digest()
            })
    }

    /// Whether any key is symmetric (HMAC). A snapshot takes such fetched keys
    /// only while their source still says `symmetric_keys = true`: turning it
    /// off drops the HMAC keys of the last fetch at once.
    #[must_use]
    pub fn has_symmetric(&self) -> bool {
        self.keys.iter().any(|(_, k)| k.spki_der().is_none())
    }
}

impl JwksKeys {
    pub(crate) fn skip(&mut self, why: &str) {
        self.skipped_total += 1;
        if self.skipped.len() < MAX_SKIPPED_LISTED {
            self.skipped.push(printable(why));
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

/// The `keys` list of a JWKS document, each entry as its raw JSON text (parsed one
/// by one later), read with a cap on entries that stops at the first one past it.
fn document_keys(
    bytes: &[u8],
    limit: usize,
) -> Result<Vec<&serde_json::value::RawValue>, JwkError> {
    use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use serde_json::value::RawValue;
    use std::cell::Cell;
    use std::fmt;

    struct Doc<'a> {
        limit: usize,
        over: &'a Cell<bool>,
    }
    struct Entries<'a> {
        limit: usize,
        over: &'a Cell<bool>,
    }
    impl<'de> DeserializeSeed<'de> for Doc<'_> {
        type Value = Vec<&'de RawValue>;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Doc<'_> {
        type Value = Vec<&'de RawValue>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JWKS object with a `keys` list")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut keys = None;
            while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if name == "keys" {
                    if keys.is_some() {
                        return Err(de::Error::duplicate_field("keys"));
                    }
                    keys = Some(map.next_value_seed(Entries {
                        limit: self.limit,
                        over: self.over,
                    })?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            keys.ok_or_else(|| de::Error::missing_field("keys"))
        }
    }
    impl<'de> DeserializeSeed<'de> for Entries<'_> {
        type Value = Vec<&'de RawValue>;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de> Visitor<'de> for Entries<'_> {
        type Value = Vec<&'de RawValue>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of JWKs")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(entry) = seq.next_element::<&'de RawValue>()? {
                if out.len() == self.limit {
                    self.over.set(true);
                    return Err(de::Error::custom("too many entries"));
                }
                out.push(entry);
            }
            Ok(out)
        }
    }

    let over = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let read = Doc { limit, over: &over }
        .deserialize(&mut de)
        .and_then(|keys| de.end().map(|()| keys));
    match read {
        Ok(keys) => Ok(keys),
        Err(_) if over.get() => Err(JwkError::TooManyEntries { limit }),
        Err(e) => Err(JwkError::Json(printable(&e.to_string()))),
    }
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
    parse(bytes, config_alg, max_keys, true)
}

/// [`parse_jwks`] for a document fetched from a URL: symmetric (`oct`) keys
/// are left out (and listed) unless the source says `symmetric_keys = true`.
/// The fetcher sends no credentials, so whoever can fetch the URL holds such
/// a secret and can sign tokens with it.
///
/// # Errors
/// See [`JwkError`].
pub fn parse_fetched_jwks(
    bytes: &[u8],
    config_alg: Option<Algorithm>,
    max_keys: usize,
    symmetric_keys: bool,
) -> Result<JwksKeys, JwkError> {
    parse(bytes, config_alg, max_keys, symmetric_keys)
}

fn parse(
    bytes: &[u8],
    config_alg: Option<Algorithm>,
    max_keys: usize,
    symmetric_keys: bool,
) -> Result<JwksKeys, JwkError> {
    let limit = max_keys.max(1).saturating_mul(MAX_ENTRIES_PER_KEY);
    let entries = document_keys(bytes, limit)?;
    let mut out = JwksKeys {
        keys: Vec::new(),
        skipped: Vec::new(),
        skipped_total: 0,
        parsed_alg: config_alg,
        parsed_symmetric: symmetric_keys,
    };
    let mut signing_kids: std::collections::HashSet<String> = std::collections::HashSet::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let jwk: Jwk = match serde_json::from_str(entry.get()) {
            Ok(j) => j,
            Err(e) => {
                out.skip(&format!("keys[{i}]: {e}"));
                continue;
            }
        };
        let Some(kid) = jwk.kid.clone() else {
            out.skip(&format!("keys[{i}]: no kid"));
            continue;
        };
        // The rule a configured kid follows, for every source: an empty kid
        // (which a token's `"kid": ""` would find), control characters, or a
        // kid past 256 bytes is no key id.
        if !crate::is_kid(&kid) {
            out.skip(&format!(
                "keys[{i}]: kid {}: must be 1..=256 characters, no control characters",
                printable(&format!("{kid:?}"))
            ));
            continue;
        }
        // Before the duplicate check: a publisher may give its encryption key the same kid.
        if let Err(e) = jwk.check_verification_use() {
            out.skip(&format!("kid {kid:?}: {e}"));
            continue;
        }
        // Against every signing key seen, kept or refused, so the outcome does not depend
        // on which of two keys sharing a kid comes first.
        if !signing_kids.insert(kid.clone()) {
            return Err(JwkError::DuplicateKid(printable(&format!("{kid:?}"))));
        }
        match jwk.to_key(config_alg) {
            Ok(key) if !symmetric_keys && key.spki_der().is_none() => out.skip(&format!(
                "kid {kid:?}: a symmetric key in a JWKS fetched over the network (anyone who can fetch the URL could sign tokens; set symmetric_keys = true on the source to take it)"
            )),
            Ok(key) => out.keys.push((kid, key)),
            Err(e) => out.skip(&format!("kid {kid:?}: {e}")),
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
