//! The keys section of a config file (TOML): raw types, parsing, and errors
//! that name the file, the line and the key. This crate knows the tenants'
//! keys (`max_keys_per_tenant`, `max_jwks_keys`, `denylist_file`,
//! `[[tenant]]`) and nothing else: a binary that keeps other sections in the
//! same file parses the file once itself and hands over a [`KeysSection`].
//!
//! ```toml
//! max_keys_per_tenant = 3            # default 3
//! denylist_file = "revoked.toml"     # optional; see `denylist`
//!
//! [[tenant]]
//! id = "project-a"
//! policy = "allowlist"               # allowlist | permissions | none (default)
//! audiences = ["jotd"]
//! [[tenant.key]]
//! kid = "2026-11"
//! name = "primary"
//! alg = "RS256"
//! pem_file = "keys/project-a.pem"    # or pem, pem_base64, der_file, jwk = {…}, secret, secret_base64
//! [[tenant.jwks]]
//! url = "https://idp.example.com/.well-known/jwks.json"   # or file = "jwks.json"
//! refresh_s = 300
//! ```

use crate::jwk::Jwk;

/// A `jwk = { … }` table in the config: a [`Jwk`] whose members are all
/// known, like every other table of the file (a JWKS document from an
/// identity provider may carry members of its own; a hand-written key may
/// not: `keyops` for `key_ops` dropped the restriction silently).
#[derive(Debug, Clone)]
pub(crate) struct InlineJwk(pub(crate) Jwk);

/// The members an inline JWK may hold (RFC 7517 and 7518, and WebCrypto's
/// `ext`; private ones are read only to be refused).
const JWK_MEMBERS: [&str; 23] = [
    "kty", "kid", "alg", "use", "key_ops", "crv", "n", "e", "x", "y", "k", "x5c", "x5t",
    "x5t#S256", "x5u", "ext", "d", "p", "q", "dp", "dq", "qi", "oth",
];

impl<'de> Deserialize<'de> for InlineJwk {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let table = toml::Table::deserialize(d)?;
        if let Some(unknown) = table.keys().find(|k| !JWK_MEMBERS.contains(&k.as_str())) {
            return Err(D::Error::custom(format!(
                "unknown JWK member `{unknown}`; expected one of {}",
                JWK_MEMBERS[..15].join(", ")
            )));
        }
        Jwk::deserialize(toml::Value::Table(table))
            .map(Self)
            .map_err(D::Error::custom)
    }
}
use serde::Deserialize;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// A config error: which file, which line (when known), which key, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file (or the file it names, for a key or JWKS file).
    pub file: PathBuf,
    /// 1-based line in `file`.
    pub line: Option<usize>,
    /// The key, as a path: `tenant[2].key[0].alg`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Default `max_keys_per_tenant`.
pub const DEFAULT_MAX_KEYS_PER_TENANT: usize = 3;
/// Default `max_jwks_keys` (keys taken from one JWKS document).
pub const DEFAULT_MAX_JWKS_KEYS: usize = 16;

fn default_max_keys() -> usize {
    DEFAULT_MAX_KEYS_PER_TENANT
}
fn default_max_jwks_keys() -> usize {
    DEFAULT_MAX_JWKS_KEYS
}
fn yes() -> bool {
    true
}

/// The keys section as written: the top-level keys this crate owns. Spans
/// are byte offsets into the text it was parsed from (errors give lines).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSection {
    /// Keys a tenant may have (rotation). Default 3.
    #[serde(default = "default_max_keys")]
    pub max_keys_per_tenant: usize,
    /// Keys taken from one JWKS document. Default 16.
    #[serde(default = "default_max_jwks_keys")]
    pub max_jwks_keys: usize,
    /// The denylist file, relative to the config file.
    #[serde(default)]
    pub denylist_file: Option<Spanned<String>>,
    /// Every `[[tenant]]`.
    #[serde(default)]
    pub tenant: Vec<Spanned<RawTenant>>,
}

impl Default for KeysSection {
    fn default() -> Self {
        Self {
            max_keys_per_tenant: DEFAULT_MAX_KEYS_PER_TENANT,
            max_jwks_keys: DEFAULT_MAX_JWKS_KEYS,
            denylist_file: None,
            tenant: Vec::new(),
        }
    }
}

/// A [`ConfigError`] from a TOML error in `text` (the file `file`): its line,
/// and its key: the unknown one serde named, else the one written before
/// the error on its line ([`key_before`]: a value of the wrong type).
#[must_use]
pub fn toml_error(file: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().to_owned();
    let key = toml_error_key(text, e);
    ConfigError {
        file: file.to_owned(),
        line: e.span().map(|s| {
            text.as_bytes()[..s.start.min(text.len())]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1
        }),
        key,
        message,
    }
}

/// The key a TOML error is about: the unknown field serde names
/// ("unknown field `x`"), else [`key_before`] the error's place; empty
/// when neither says.
#[must_use]
pub fn toml_error_key(text: &str, e: &toml::de::Error) -> String {
    e.message()
        .split_once("unknown field `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(k, _)| k.to_owned())
        .or_else(|| e.span().and_then(|s| key_before(text, s.start)))
        .unwrap_or_default()
}

/// The key written before byte `offset` of `text` on its line: `key` of
/// `key = value`, or the last `key =` of an inline table before it. How a
/// TOML error serde reports without a key (a wrong type, a value out of its
/// type's range) gets one. `None` when that line has no `=` before
/// `offset`, or what precedes it is not a plain or quoted key.
#[must_use]
pub fn key_before(text: &str, offset: usize) -> Option<String> {
    let upto = text.get(..offset.min(text.len()))?;
    let line = &upto[upto.rfind('\n').map_or(0, |i| i + 1)..];
    // `=`, `{` and `,` outside quoted strings only (`"a=b", 5` on a line of a
    // multi-line array named no key), and nothing after a comment's `#`.
    let mut key_at = None;
    let mut sep = 0;
    let mut quote: Option<u8> = None;
    let mut escaped = false;
    for (i, b) in line.bytes().enumerate() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if b == b'\\' && q == b'"' {
                    escaped = true;
                } else if b == q {
                    quote = None;
                }
            }
            None => match b {
                b'"' | b'\'' => quote = Some(b),
                b'#' => break,
                b'=' => key_at = Some((sep, i)),
                b'{' | b',' => sep = i + 1,
                _ => {}
            },
        }
    }
    let (from, eq) = key_at?;
    let key = line[from..eq].trim();
    let bare = key.trim_matches(|c| c == '"' || c == '\'');
    let plain = !bare.is_empty()
        && bare
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    plain.then(|| bare.to_owned())
}

/// The 1-based line where the key at `path` (a table path, then the key:
/// `["server", "listen"]`, or `["max_jwks_keys"]` at the top) is written in
/// `text`, read by the TOML parser itself: dotted keys, inline tables and
/// headers with comments all locate. `None` when the text does not parse or
/// has no such key.
#[must_use]
pub fn line_of_key(text: &str, path: &[&str]) -> Option<usize> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let (last, tables) = path.split_last()?;
    let mut table = doc.get_ref();
    for name in tables {
        let (_, v) = table.iter().find(|(k, _)| k.get_ref() == name)?;
        let toml::de::DeValue::Table(t) = v.get_ref() else {
            return None;
        };
        table = t;
    }
    let (k, v) = table.iter().find(|(k, _)| k.get_ref() == last)?;
    // A key's own span, else its value's (the parser may leave either unset).
    let at = [k.span(), v.span()].into_iter().find(|s| s.end > 0)?.start;
    Some(
        text.as_bytes()[..at.min(text.len())]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1,
    )
}

/// One `[[tenant]]` as written (its fields are read by this crate only).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    pub(crate) id: Spanned<String>,
    #[serde(default)]
    pub(crate) policy: Option<Spanned<String>>,
    #[serde(default = "yes")]
    pub(crate) require_jwt: bool,
    #[serde(default)]
    pub(crate) require_typ: bool,
    #[serde(default)]
    pub(crate) accepted_typ: Option<Spanned<Vec<String>>>,
    #[serde(default = "yes")]
    pub(crate) require_exp: bool,
    #[serde(default)]
    pub(crate) audiences: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub(crate) issuers: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub(crate) algorithms: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub(crate) no_auth_methods: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub(crate) origins: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub(crate) leeway_s: Option<Spanned<u64>>,
    #[serde(default)]
    pub(crate) max_lifetime_s: Option<Spanned<u64>>,
    #[serde(default)]
    pub(crate) claims_to_return: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub(crate) required_claims: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub(crate) key: Vec<Spanned<RawKey>>,
    #[serde(default)]
    pub(crate) jwks: Vec<Spanned<RawJwks>>,
}

/// One `[[tenant.key]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKey {
    pub(crate) kid: Spanned<String>,
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) alg: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) pem: Option<String>,
    #[serde(default)]
    pub(crate) pem_file: Option<String>,
    #[serde(default)]
    pub(crate) pem_base64: Option<String>,
    #[serde(default)]
    pub(crate) der_file: Option<String>,
    #[serde(default)]
    pub(crate) jwk: Option<InlineJwk>,
    #[serde(default)]
    pub(crate) secret: Option<String>,
    #[serde(default)]
    pub(crate) secret_base64: Option<String>,
    #[serde(default)]
    pub(crate) issuer: Option<String>,
}

/// One `[[tenant.jwks]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJwks {
    #[serde(default)]
    pub(crate) url: Option<String>,
    #[serde(default)]
    pub(crate) file: Option<String>,
    #[serde(default)]
    pub(crate) refresh_s: Option<u64>,
    #[serde(default)]
    pub(crate) alg: Option<String>,
    #[serde(default)]
    pub(crate) issuer: Option<String>,
    #[serde(default)]
    pub(crate) symmetric_keys: bool,
    #[serde(default)]
    pub(crate) internal: bool,
}

/// Locates errors in one file's text.
pub(crate) struct Locator<'a> {
    pub(crate) file: &'a Path,
    pub(crate) text: &'a str,
}

impl Locator<'_> {
    /// The 1-based line of a byte offset.
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.text.as_bytes()[..offset.min(self.text.len())]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    /// An error at `span` about `key`.
    pub(crate) fn error(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl fmt::Display,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: Some(self.line(span.start)),
            key: key.into(),
            message: message.to_string(),
        }
    }

    /// Parses a file holding the keys section alone, turning TOML errors
    /// (syntax, unknown keys, wrong types) into [`ConfigError`].
    pub(crate) fn parse(&self) -> Result<KeysSection, ConfigError> {
        toml::from_str(self.text).map_err(|e| toml_error(self.file, self.text, &e))
    }
}

/// Resolves a path named in the config against the config file's folder.
pub(crate) fn resolve(config_file: &Path, named: &str) -> PathBuf {
    let p = Path::new(named);
    if p.is_absolute() {
        p.to_owned()
    } else {
        config_file.parent().unwrap_or(Path::new(".")).join(p)
    }
}
