//! Validation: raw config → tenants with parsed keys, ready for a snapshot.

use crate::config::{ConfigError, Locator, RawJwks, RawKey, RawTenant, resolve};
use crate::material::{self, MaterialError};
use aws_lc_rs::digest;
use jotd_core::{Algorithm, AlgorithmSet, ClaimRules, PolicyModel, Tenant, TenantKey, TypRule};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Reads a file named in the config. The binary passes `jotd_transport::files::read_file` (regular files, capped); tests pass a map.
pub type ReadFile<'a> = &'a dyn Fn(&Path) -> io::Result<Vec<u8>>;

/// A configured key, as `jotd config check` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// Key id.
    pub kid: String,
    /// Display name.
    pub name: Option<String>,
    /// Bound algorithm.
    pub alg: Algorithm,
    /// base64(SHA-256(DER SPKI)); `None` for HMAC secrets.
    pub fingerprint: Option<String>,
    /// Where the material came from (`pem_file keys/a.pem`, `jwk`, `secret`, ...).
    pub source: String,
}

/// Where a JWKS comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksLocation {
    /// Fetched over HTTPS.
    Url(String),
    /// Read from a file (resolved against the config's folder).
    File(PathBuf),
}

/// One `[[tenant.jwks]]` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksSource {
    /// Where the document lives.
    pub location: JwksLocation,
    /// How often to refresh (bounded by `Cache-Control: max-age` when the server sends it).
    pub refresh: Duration,
    /// Algorithm for keys whose JWK has no `alg` (RSA keys need one).
    pub alg: Option<Algorithm>,
    /// The `iss` every token verified by this source's keys must carry
    /// ([`TenantKey::issuer`](jotd_core::TenantKey::issuer)).
    pub issuer: Option<Box<str>>,
    /// URL sources only: take `oct` (HMAC) keys from the document. Off by
    /// default: the fetcher sends no credentials, so whoever can fetch the
    /// URL has the secret and can sign tokens.
    pub symmetric_keys: bool,
    /// URL sources only: the identity provider lives inside the network.
    /// Its URL's host may be, or resolve to, an internal address, and a
    /// redirect may reach it at the ports such URLs name. Off by default:
    /// no fetch reaches an internal address (`fetch::internal_address`).
    pub internal: bool,
}

/// Default JWKS refresh interval.
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);

/// A validated tenant: its static keys parsed, rules set, JWKS sources listed.
#[derive(Debug, Clone)]
pub struct TenantSpec {
    /// The tenant with its static keys (JWKS keys are merged in when the snapshot is built).
    pub tenant: Tenant,
    /// Whether `algorithms` was configured (else it follows the keys).
    pub algorithms_configured: bool,
    /// The static keys, for listing.
    pub keys: Vec<KeyInfo>,
    /// The JWKS sources.
    pub jwks: Vec<JwksSource>,
    /// SHA-256 over the rules and key material: the basis of the cache epoch.
    pub digest: [u8; 32],
}

struct Ctx<'a, 'l> {
    loc: &'a Locator<'l>,
    read: ReadFile<'a>,
    max_keys: usize,
}

impl Ctx<'_, '_> {
    fn err<T>(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        msg: impl std::fmt::Display,
    ) -> Result<T, ConfigError> {
        Err(self.loc.error(span, key, msg))
    }

    fn read_named(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        named: &str,
    ) -> Result<(PathBuf, Vec<u8>), ConfigError> {
        let path = resolve(self.loc.file, named);
        match (self.read)(&path) {
            Ok(bytes) => Ok((path, bytes)),
            Err(e) => self.err(
                span,
                key,
                format_args!("cannot read {}: {e}", path.display()),
            ),
        }
    }
}

fn alg_named(name: &str) -> Result<Algorithm, String> {
    Algorithm::from_name(name).ok_or_else(|| format!("unknown algorithm `{name}` (RS256..512, PS256..512, ES256, ES384, ES512, ES256K, EdDSA, HS256..512)"))
}

/// Most `[[tenant.jwks]]` sources one tenant may list.
pub const MAX_JWKS_SOURCES: usize = 16;

pub(crate) fn tenant(
    loc: &Locator<'_>,
    read: ReadFile<'_>,
    max_keys: usize,
    index: usize,
    raw: &Spanned<RawTenant>,
) -> Result<TenantSpec, ConfigError> {
    let cx = Ctx {
        loc,
        read,
        max_keys,
    };
    let t = raw.get_ref();
    let at = |field: &str| format!("tenant[{index}].{field}");
    let id = t.id.get_ref();
    if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
        return cx.err(
            t.id.span(),
            &at("id"),
            "must be 1..=256 printable characters",
        );
    }
    let policy = match &t.policy {
        None => PolicyModel::None,
        Some(p) => PolicyModel::from_name(p.get_ref()).map_or_else(
            || {
                cx.err(
                    p.span(),
                    &at("policy"),
                    format_args!("`{}` is not allowlist, permissions or none", p.get_ref()),
                )
            },
            Ok,
        )?,
    };
    let mut claims = ClaimRules {
        require_exp: t.require_exp,
        ..ClaimRules::default()
    };
    if let Some(l) = &t.leeway_s {
        if *l.get_ref() > 600 {
            return cx.err(l.span(), &at("leeway_s"), "must be at most 600 seconds");
        }
        claims.leeway = Duration::from_secs(*l.get_ref());
    }
    if let Some(m) = &t.max_lifetime_s {
        if *m.get_ref() == 0 {
            return cx.err(m.span(), &at("max_lifetime_s"), "must be at least 1 second");
        }
        claims.max_lifetime = Some(Duration::from_secs(*m.get_ref()));
    }
    claims.audiences = names(&cx, &t.audiences, &at("audiences"), MAX_NAMES)?
        .iter()
        .map(|s| s.as_str().into())
        .collect();
    claims.issuers = names(&cx, &t.issuers, &at("issuers"), MAX_NAMES)?
        .iter()
        .map(|s| s.as_str().into())
        .collect();
    claims.required = names(&cx, &t.required_claims, &at("required_claims"), 64)?
        .iter()
        .map(|s| s.as_str().into())
        .collect();
    let no_auth_methods = names(&cx, &t.no_auth_methods, &at("no_auth_methods"), MAX_NAMES)?;
    let origins = names(&cx, &t.origins, &at("origins"), MAX_NAMES)?;
    if let (Some(list), Some((i, bad))) = (
        &t.origins,
        origins
            .iter()
            .enumerate()
            .find(|(_, o)| !jotd_core::origin_pattern_ok(o)),
    ) {
        return cx.err(
            list.span(),
            &at("origins"),
            format_args!(
                "entry {i} `{}` can match no origin: write `[scheme://]host[:port]`, `*.` only as the first label (`https://app.example.com`, `*.example.com`)",
                bad.escape_default()
            ),
        );
    }
    let claims_to_return = names(&cx, &t.claims_to_return, &at("claims_to_return"), 64)?;
    claims.typ = TypRule {
        required: t.require_typ,
        ..TypRule::default()
    };
    if let Some(list) = &t.accepted_typ {
        let bad = |m: &str| cx.err(list.span(), &at("accepted_typ"), m);
        if list.get_ref().is_empty() {
            return bad("give at least one media type (the default is [\"JWT\"])");
        }
        let mut accepted = Vec::with_capacity(list.get_ref().len());
        for typ in list.get_ref() {
            // Written with or without `application/` (RFC 7515 §4.1.9), as tokens are:
            // both sides are compared without it.
            let bare = match typ.get(..12) {
                Some(p) if p.eq_ignore_ascii_case("application/") => &typ[12..],
                _ => typ.as_str(),
            };
            if bare.is_empty()
                || bare.len() > 64
                || !bare.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
            {
                return bad(&format!(
                    "`{}`: a media type such as JWT or at+jwt (printable ASCII, at most 64 characters)",
                    typ.escape_default()
                ));
            }
            accepted.push(bare.into());
        }
        claims.typ.accepted = accepted;
    }

    let configured_algs = match &t.algorithms {
        None => None,
        Some(list) => {
            let mut set = AlgorithmSet::EMPTY;
            for name in list.get_ref() {
                set.insert(alg_named(name).or_else(|m| cx.err(list.span(), &at("algorithms"), m))?);
            }
            Some(set)
        }
    };

    if t.key.len() > cx.max_keys {
        return cx.err(
            raw.span(),
            &at("key"),
            format_args!(
                "{} keys, more than max_keys_per_tenant = {}",
                t.key.len(),
                cx.max_keys
            ),
        );
    }
    // Every part length-prefixed and every list counted, so no two configurations
    // feed the same bytes (a method named `a\0b` is not the two methods `a` and `b`).
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in [
        id.as_str(),
        policy.as_str(),
        &format!("{:?}|{}|", claims, t.require_jwt),
    ] {
        put(&mut ctx, part.as_bytes());
    }
    for list in [&no_auth_methods, &claims_to_return, &origins] {
        ctx.update(&(list.len() as u64).to_le_bytes());
        for s in list {
            put(&mut ctx, s.as_bytes());
        }
    }
    match configured_algs {
        None => ctx.update(&[0]),
        Some(set) => {
            ctx.update(&[1]);
            for a in set.iter() {
                put(&mut ctx, a.as_str().as_bytes());
            }
        }
    }
    let mut keys = Vec::new();
    let mut infos: Vec<KeyInfo> = Vec::new();
    for (k, raw_key) in t.key.iter().enumerate() {
        let (tenant_key, info, material) = key(&cx, &format!("tenant[{index}].key[{k}]"), raw_key)
            .map_err(|mut e| {
                e.message = format!(
                    "tenant `{id}`, key `{}`: {}",
                    raw_key.get_ref().kid.get_ref(),
                    e.message
                );
                e
            })?;
        if let Some(first) = infos.iter().position(|i| i.kid == info.kid) {
            let line = t.key[first].span().start;
            return cx.err(
                raw_key.get_ref().kid.span(),
                &format!("tenant[{index}].key[{k}].kid"),
                format_args!(
                    "duplicate kid `{}` (first at line {})",
                    info.kid,
                    loc.line(line)
                ),
            );
        }
        if let Some(set) = configured_algs
            && !set.contains(info.alg)
        {
            return cx.err(
                raw_key.span(),
                &format!("tenant[{index}].key[{k}].alg"),
                format_args!("{} is not in this tenant's algorithms", info.alg),
            );
        }
        digest_key(
            &mut ctx,
            &info.kid,
            info.alg,
            &material,
            tenant_key.issuer.as_deref(),
        );
        keys.push(tenant_key);
        infos.push(info);
    }
    // A tenant rotates between a few identity providers at most; thousands
    // of sources were each fetched and scanned per token's kid.
    if t.jwks.len() > MAX_JWKS_SOURCES {
        return cx.err(
            t.jwks[MAX_JWKS_SOURCES].span(),
            &format!("tenant[{index}].jwks[{MAX_JWKS_SOURCES}]"),
            format_args!("at most {MAX_JWKS_SOURCES} [[tenant.jwks]] per tenant"),
        );
    }
    let jwks = t
        .jwks
        .iter()
        .enumerate()
        .map(|(j, s)| jwks_source(&cx, &format!("tenant[{index}].jwks[{j}]"), s))
        .collect::<Result<Vec<_>, _>>()?;
    // One source per place: the fetcher keeps one state per (tenant, url), so the
    // same URL twice (say with two `alg`s) would flip that state on every fetch and
    // refetch it without end; the same file twice only repeats its keys.
    for (j, s) in jwks.iter().enumerate() {
        if let Some(first) = jwks[..j].iter().position(|o| o.location == s.location) {
            let (field, shown) = match &s.location {
                JwksLocation::Url(url) => ("url", crate::fetch::redacted_url(url)),
                JwksLocation::File(path) => ("file", path.display().to_string()),
            };
            return cx.err(
                t.jwks[j].span(),
                &format!("tenant[{index}].jwks[{j}].{field}"),
                format_args!(
                    "`{shown}` is already tenant[{index}].jwks[{first}]: list each source once (one `alg` per source)"
                ),
            );
        }
    }
    if keys.is_empty() && jwks.is_empty() && t.require_jwt {
        return cx.err(raw.span(), &at("key"), "no key and no jwks: every token would be denied (set require_jwt = false for a tenant without tokens)");
    }
    let mut tenant = Tenant::new(id, keys);
    if let Some(set) = configured_algs {
        tenant.algorithms = set;
    }
    tenant.claims = claims;
    tenant.policy = policy;
    tenant.require_jwt = t.require_jwt;
    tenant.no_auth_methods = no_auth_methods.iter().map(|s| s.as_str().into()).collect();
    tenant.origins = origins.iter().map(|s| s.as_str().into()).collect();
    tenant.claims_to_return = claims_to_return.iter().map(|s| s.as_str().into()).collect();
    let digest = ctx
        .finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes");
    Ok(TenantSpec {
        tenant,
        algorithms_configured: configured_algs.is_some(),
        keys: infos,
        jwks,
        digest,
    })
}

/// Parses one key; returns it, its listing, and the digest of its material ([`VerifyingKey::material_digest`](jotd_core::VerifyingKey::material_digest)).
fn key(
    cx: &Ctx<'_, '_>,
    at: &str,
    raw: &Spanned<RawKey>,
) -> Result<(TenantKey, KeyInfo, [u8; 32]), ConfigError> {
    let k = raw.get_ref();
    let span = raw.span();
    let kid = k.kid.get_ref();
    if !crate::is_kid(kid) {
        return cx.err(
            k.kid.span(),
            &format!("{at}.kid"),
            "must be 1..=256 characters, no control characters",
        );
    }
    let sources = [
        k.pem.is_some(),
        k.pem_file.is_some(),
        k.pem_base64.is_some(),
        k.der_file.is_some(),
        k.jwk.is_some(),
        k.secret.is_some(),
        k.secret_base64.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() != 1 {
        return cx.err(
            span,
            at,
            "give exactly one of pem, pem_file, pem_base64, der_file, jwk, secret, secret_base64",
        );
    }
    let alg = match &k.alg {
        Some(a) => {
            Some(alg_named(a.get_ref()).or_else(|m| cx.err(a.span(), &format!("{at}.alg"), m))?)
        }
        None => None,
    };
    let need_alg = || {
        alg.map_or_else(
            || {
                cx.err(
                    span.clone(),
                    &format!("{at}.alg"),
                    "missing: the algorithm is bound to the key here, never taken from tokens",
                )
            },
            Ok,
        )
    };
    let bad = |e: MaterialError| cx.loc.error(span.clone(), at, e);
    let (key, source) = if let Some(crate::config::InlineJwk(jwk)) = &k.jwk {
        // The table's own kid is the key's: a JWK naming another one is a
        // copy-paste of the wrong key, or of the right key under the wrong
        // name (tokens would carry the JWK's kid and find nothing).
        if let Some(own) = jwk.kid.as_deref()
            && own != k.kid.get_ref()
        {
            return cx.err(
                span.clone(),
                &format!("{at}.jwk"),
                format_args!(
                    "the JWK's kid `{}` differs from the key's kid `{}`",
                    own.escape_default(),
                    k.kid.get_ref().escape_default()
                ),
            );
        }
        let key = jwk
            .to_key(alg)
            .map_err(|e| cx.loc.error(span.clone(), format!("{at}.jwk"), e))?;
        (key, "jwk".to_owned())
    } else if let Some(secret) = &k.secret {
        let key = jotd_core::VerifyingKey::from_hmac_secret(need_alg()?, secret.as_bytes())
            .map_err(|e| bad(e.into()))?;
        (key, "secret".to_owned())
    } else if let Some(secret) = &k.secret_base64 {
        let bytes = material::decode_secret_base64(secret).map_err(bad)?;
        let key = jotd_core::VerifyingKey::from_hmac_secret(need_alg()?, &bytes)
            .map_err(|e| bad(e.into()))?;
        (key, "secret_base64".to_owned())
    } else {
        let (bytes, source) = if let Some(pem) = &k.pem {
            (pem.as_bytes().to_vec(), "pem".to_owned())
        } else if let Some(b64) = &k.pem_base64 {
            (b64.as_bytes().to_vec(), "pem_base64".to_owned())
        } else {
            let named = k
                .pem_file
                .as_ref()
                .or(k.der_file.as_ref())
                .expect("one source");
            let field = if k.pem_file.is_some() {
                "pem_file"
            } else {
                "der_file"
            };
            let (path, bytes) = cx.read_named(span.clone(), &format!("{at}.{field}"), named)?;
            (bytes, format!("{field} {}", path.display()))
        };
        (
            material::public_key(need_alg()?, &bytes).map_err(bad)?,
            source,
        )
    };
    let alg = key.algorithm();
    let fingerprint = key.fingerprint();
    let material = key.material_digest();
    let info = KeyInfo {
        kid: kid.clone(),
        name: k.name.clone(),
        alg,
        fingerprint,
        source,
    };
    Ok((
        TenantKey {
            kid: kid.as_str().into(),
            key,
            issuer: checked_issuer(
                cx,
                span.clone(),
                &format!("{at}.issuer"),
                k.issuer.as_deref(),
            )?,
        },
        info,
        material,
    ))
}

fn jwks_source(
    cx: &Ctx<'_, '_>,
    at: &str,
    raw: &Spanned<RawJwks>,
) -> Result<JwksSource, ConfigError> {
    let j = raw.get_ref();
    let span = raw.span();
    let location = match (&j.url, &j.file) {
        (Some(url), None) => {
            if let Err(e) = crate::fetch::check_jwks_url(url) {
                let shown = crate::fetch::redacted_url(url);
                return cx.err(span, &format!("{at}.url"), format_args!("`{shown}`: {e}"));
            }
            JwksLocation::Url(url.clone())
        }
        (None, Some(file)) => JwksLocation::File(resolve(cx.loc.file, file)),
        _ => return cx.err(span, at, "give exactly one of url, file"),
    };
    let refresh = match j.refresh_s {
        None => DEFAULT_JWKS_REFRESH,
        Some(s) if (10..=86_400).contains(&s) => Duration::from_secs(s),
        Some(_) => {
            return cx.err(
                span,
                &format!("{at}.refresh_s"),
                "must be 10..=86400 seconds",
            );
        }
    };
    let alg = match &j.alg {
        Some(a) => Some(alg_named(a).or_else(|m| cx.err(span.clone(), &format!("{at}.alg"), m))?),
        None => None,
    };
    if j.internal && matches!(location, JwksLocation::File(_)) {
        return cx.err(
            span,
            &format!("{at}.internal"),
            "applies to url sources only",
        );
    }
    if let (false, JwksLocation::Url(url)) = (j.internal, &location)
        && let Some(why) = crate::fetch::internal_host(url)
    {
        let shown = crate::fetch::redacted_url(url);
        return cx.err(
            span,
            &format!("{at}.url"),
            format_args!(
                "`{shown}`: {why}; an identity provider inside the network needs \
                 `internal = true` on this source"
            ),
        );
    }
    if j.symmetric_keys && matches!(location, JwksLocation::File(_)) {
        return cx.err(
            span,
            &format!("{at}.symmetric_keys"),
            "applies to url sources only (a JWKS file's symmetric keys are always read)",
        );
    }
    let issuer = checked_issuer(cx, span, &format!("{at}.issuer"), j.issuer.as_deref())?;
    Ok(JwksSource {
        location,
        refresh,
        alg,
        issuer,
        symmetric_keys: j.symmetric_keys,
        internal: j.internal,
    })
}

/// Whether `name` can be an entry compared byte for byte with what tokens and
/// requests carry: 1 to 1,024 bytes, no control characters, no leading or
/// trailing blanks (an entry outside that can only be a mistake: it matches
/// nothing, and says nothing).
pub(crate) fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 1024
        && !name.chars().any(char::is_control)
        && name.trim() == name
}

/// The most entries in a tenant's `audiences`, `issuers` or `no_auth_methods`.
const MAX_NAMES: usize = 1024;

/// A tenant's list of names (audiences, issuers, methods, claim names), each
/// compared byte for byte with what tokens and requests carry: at most `max`
/// entries, each 1 to 1,024 bytes without control characters or surrounding
/// blanks. An empty entry (a template's unset variable) or `" aud"` matched
/// nothing, or only a token crafted to match, and said nothing.
fn names(
    cx: &Ctx<'_, '_>,
    list: &Option<Spanned<Vec<String>>>,
    at: &str,
    max: usize,
) -> Result<Vec<String>, ConfigError> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    if list.get_ref().len() > max {
        return cx.err(list.span(), at, format_args!("at most {max} entries"));
    }
    for (i, name) in list.get_ref().iter().enumerate() {
        if !is_name(name) {
            return cx.err(
                list.span(),
                at,
                format_args!(
                    "entry {i} `{}`: 1 to 1024 characters, no control characters, no leading or trailing blanks",
                    name.escape_default()
                ),
            );
        }
    }
    Ok(list.get_ref().clone())
}

/// A key's or source's `issuer`: a name as [`is_name`] has it (a blank at an
/// end matched no token's `iss`: every token that key verified was
/// `bad_issuer`, and nothing said why).
fn checked_issuer(
    cx: &Ctx<'_, '_>,
    span: std::ops::Range<usize>,
    at: &str,
    issuer: Option<&str>,
) -> Result<Option<Box<str>>, ConfigError> {
    match issuer {
        None => Ok(None),
        Some(i) if is_name(i) => Ok(Some(i.into())),
        Some(_) => cx.err(
            span,
            at,
            "must be the exact `iss` of the tokens this key signs (1 to 1024 characters, no control characters, no leading or trailing blanks)",
        ),
    }
}

/// Feeds one key into a tenant's epoch digest: kid, algorithm, key material and
/// the issuer it is bound to, each length-prefixed (and the issuer's absence
/// marked), so two different keys never feed the same bytes and a change to any
/// field changes the epoch (dropping tokens cached under the old key).
pub(crate) fn digest_key(
    ctx: &mut digest::Context,
    kid: &str,
    alg: Algorithm,
    material: &[u8],
    issuer: Option<&str>,
) {
    for field in [kid.as_bytes(), alg.as_str().as_bytes(), material] {
        put(ctx, field);
    }
    match issuer {
        None => ctx.update(&[0]),
        Some(i) => {
            ctx.update(&[1]);
            put(ctx, i.as_bytes());
        }
    }
}

/// Feeds `bytes` into an epoch digest after their length.
fn put(ctx: &mut digest::Context, bytes: &[u8]) {
    ctx.update(&(bytes.len() as u64).to_le_bytes());
    ctx.update(bytes);
}

#[cfg(test)]
mod digest_tests {
    use super::*;

    fn epoch(kid: &str, material: &[u8], issuer: Option<&str>) -> Vec<u8> {
        let mut ctx = digest::Context::new(&digest::SHA256);
        digest_key(&mut ctx, kid, Algorithm::Hs256, material, issuer);
        ctx.finish().as_ref().to_vec()
    }

    #[test]
    fn no_two_keys_feed_the_same_bytes() {
        // A field boundary moved: concatenated, these were the same bytes.
        assert_ne!(epoch("ab", b"c", None), epoch("a", b"bc", None));
        assert_ne!(epoch("k", b"m", Some("x")), epoch("k", b"mx", None));
        // No issuer and an issuer that is one NUL byte.
        assert_ne!(epoch("k", b"m", None), epoch("k", b"m", Some("\0")));
        assert_ne!(epoch("k", b"m", None), epoch("k", b"m", Some("")));
        assert_eq!(epoch("k", b"m", Some("i")), epoch("k", b"m", Some("i")));
    }
}
