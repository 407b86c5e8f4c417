//! The verification pipeline: token bytes + request + snapshot + `now` → [`Decision`].

use crate::alg::Algorithm;
use crate::cache::{
    CacheConfig, CacheStats, CachedToken, HotTokens, LocalCounts, Times, TokenCache,
};
use crate::claims::{Claims, ClaimsWanted, parse_claims};
use crate::decision::{Decision, TokenInfo};
use crate::policy::{Grants, authorize};
use crate::reason::Reason;
use crate::request::{Request, UnixTime};
use crate::tenant::{Snapshot, Tenant, TenantKey};
use crate::token::{Base64Url, Header, parse_header, split, utf8};
use std::num::NonZeroUsize;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// Engine settings. Every field has a default (see [`EngineConfig::default`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Tokens longer than this are `token_too_large`, checked before any decoding. Default: 8 KiB.
    pub max_token_bytes: NonZeroUsize,
    /// The verified-token cache; `None` disables it. Default: [`CacheConfig::default`].
    pub cache: Option<CacheConfig>,
    /// Items per unit of parallel work and per streamed chunk. Default: 16.
    pub chunk_size: NonZeroUsize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_token_bytes: NonZeroUsize::new(8 << 10).expect("non-zero"),
            cache: Some(CacheConfig::default()),
            chunk_size: NonZeroUsize::new(16).expect("non-zero"),
        }
    }
}

/// Reusable per-worker buffers: decoding allocates nothing once these have grown.
#[derive(Debug, Default)]
pub struct Scratch {
    header: Vec<u8>,
    payload: Vec<u8>,
    signature: Vec<u8>,
    memo: HeaderMemo,
    hot: HotTokens,
    /// The last token whose signature this worker checked, and how it went.
    signatures: SignatureMemo,
    pub(crate) counts: LocalCounts,
    /// Tokens this worker has seen: picks the ones looked up while the cache samples.
    tick: u32,
}

/// The last header segment this worker parsed. Tokens signed by one key share
/// a byte-identical header, so an exact match skips its decode and parse.
#[derive(Debug, Default)]
struct HeaderMemo {
    segment: Vec<u8>,
    alg: Option<Algorithm>,
    kid: Option<String>,
    typ: Option<String>,
}

impl HeaderMemo {
    fn store(&mut self, segment: &[u8], head: &Header<'_>) {
        fn put(slot: &mut Option<String>, value: Option<&str>) {
            match (slot.as_mut(), value) {
                (Some(s), Some(v)) => {
                    s.clear();
                    s.push_str(v);
                }
                (None, Some(v)) => *slot = Some(v.to_owned()),
                (_, None) => *slot = None,
            }
        }
        self.segment.clear();
        self.segment.extend_from_slice(segment);
        self.alg = Some(head.alg);
        put(&mut self.kid, head.kid.as_deref());
        put(&mut self.typ, head.typ.as_deref());
    }
}

/// The last token whose signature this worker checked, the digest of the
/// key it was checked against, and the outcome. One token copied into every
/// item of a batch (the gateway sends one item per JSON-RPC call, each with
/// the request's token) then costs one signature check per chunk, not one
/// per item, whether its signature is forged or good but the token is then
/// refused (expired, another audience or issuer, a claim missing: none of
/// those is cached). A signature's validity is a function of the token's
/// bytes and the key's alone, so the memo never changes a decision.
#[derive(Debug, Default)]
struct SignatureMemo {
    token: Vec<u8>,
    key: [u8; 32],
    good: bool,
}

impl SignatureMemo {
    /// The outcome of `token` against `key` last time, if it was the last
    /// checked: same bytes, same key material (a key replaced under its
    /// kid, whatever the epoch, misses).
    fn recall(&self, token: &[u8], key: &crate::VerifyingKey) -> Option<bool> {
        (!self.token.is_empty() && self.token == token && self.key == key.material_digest())
            .then_some(self.good)
    }

    fn store(&mut self, token: &[u8], key: &crate::VerifyingKey, good: bool) {
        self.token.clear();
        self.token.extend_from_slice(token);
        self.key = key.material_digest();
        self.good = good;
    }
}

impl Scratch {
    /// Empty buffers.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

/// The sans-IO verification engine. Share it (`&Engine` is `Sync`); it owns
/// only the verified-token cache. Keys come from the [`Snapshot`] passed per call.
pub struct Engine {
    pub(crate) config: EngineConfig,
    base64url: Base64Url,
    pub(crate) cache: Option<TokenCache>,
    /// Whether the last streamed batch needed no costly signature check
    /// (see [`Engine::batches_are_cheap`]).
    pub(crate) cheap: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Builds an engine.
    #[must_use]
    pub fn new(config: EngineConfig) -> Self {
        Self {
            config,
            base64url: Base64Url::new(),
            cache: config.cache.map(TokenCache::new),
            cheap: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether the last batch decided with [`Engine::verify_batch_streaming`]
    /// stayed on its calling thread (every token a cache hit, HMAC, or
    /// refused before its signature). A driver uses it as a hint for the
    /// next batch: cheap ones are best run where waking many threads costs
    /// nothing, costly ones on the pool.
    #[must_use]
    pub fn batches_are_cheap(&self) -> bool {
        self.cheap.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The settings this engine was built with.
    #[must_use]
    pub const fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Verified-token cache counters; `None` when the cache is off.
    #[must_use]
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.cache.as_ref().map(TokenCache::stats)
    }

    /// Drops every cached token (revocation by hand, tests).
    pub fn clear_cache(&self) {
        if let Some(c) = &self.cache {
            c.clear();
        }
    }

    /// Decides one request. Allocates scratch buffers; batch callers use [`Engine::verify_with`].
    #[must_use]
    pub fn verify(&self, snapshot: &Snapshot, req: &Request<'_>, now: UnixTime) -> Decision {
        let mut scratch = Scratch::new();
        let d = self.verify_with(&mut scratch, snapshot, req, now);
        self.flush(&mut scratch);
        d
    }

    /// Decides one request with caller-owned buffers. Never panics outward: an
    /// internal failure is an `internal_error` deny (fail closed). Cache counts
    /// gather in `scratch` until [`Engine::flush`].
    #[must_use]
    pub fn verify_with(
        &self,
        scratch: &mut Scratch,
        snapshot: &Snapshot,
        req: &Request<'_>,
        now: UnixTime,
    ) -> Decision {
        catch_unwind(AssertUnwindSafe(|| {
            self.decide(scratch, snapshot, req, now)
        }))
        .unwrap_or(Decision::without_token(Reason::InternalError))
    }

    /// Adds the counts gathered in `scratch` to the engine's counters.
    pub fn flush(&self, scratch: &mut Scratch) {
        if let Some(c) = &self.cache {
            c.flush(&mut scratch.counts);
        }
    }

    fn decide(
        &self,
        scratch: &mut Scratch,
        snapshot: &Snapshot,
        req: &Request<'_>,
        now: UnixTime,
    ) -> Decision {
        let Some(tenant) = snapshot.tenant(req.tenant) else {
            return Decision::without_token(Reason::UnknownTenant);
        };
        // The tenant's own origin allowlist holds every request, with a token
        // or without (a page cannot add a token to a WebSocket, so a tenant
        // that takes calls without one had no origin rule at all).
        if !tenant.origins.is_empty()
            && !crate::policy::origin_allowed(tenant.origins.iter().map(|p| &**p), req.origin)
        {
            return Decision::without_token(Reason::OriginNotAllowed);
        }
        let token = match req.token {
            Some(t) if !t.is_empty() => t,
            _ => {
                let allowed = !tenant.require_jwt || tenant.is_no_auth(req.method);
                return Decision::without_token(if allowed {
                    Reason::OkNoAuth
                } else {
                    Reason::MissingToken
                });
            }
        };
        if token.len() > self.config.max_token_bytes.get() {
            return Decision::without_token(Reason::TokenTooLarge);
        }
        if let Some(cache) = &self.cache {
            let clears = cache.clears();
            let turnover = cache.turnover();
            if let Some((hot, info, touch)) = scratch.hot.get(token, cache.id(), clears, turnover)
                && hot.valid_for(&tenant.id, tenant.epoch, now.0)
            {
                if touch {
                    // Now and then through the map too, so its eviction sees the token in use.
                    let _ = cache.get(&tenant.id, token);
                }
                scratch.counts.hits += 1;
                scratch.counts.costly_hits += u64::from(costly(info.alg()));
                let verdict = finish(
                    tenant,
                    hot.times,
                    hot.jti.as_deref(),
                    info.sub(),
                    &hot.grants,
                    req,
                    now,
                );
                return Decision::with_token(verdict, Arc::clone(info));
            }
            let tick = scratch.tick;
            scratch.tick = tick.wrapping_add(1);
            if !cache.probes(tick) {
                // The cache is not paying for this traffic: verify without a lookup.
                scratch.counts.bypassed += 1;
                return match self.verify_token(scratch, tenant, token, req, now, false) {
                    Ok(d) | Err(d) => d,
                };
            }
            if let Some(hit) = cache.get(&tenant.id, token)
                && hit.valid_for(&tenant.id, tenant.epoch, now.0)
            {
                scratch.counts.hits += 1;
                scratch.counts.costly_hits += u64::from(costly(hit.info.alg()));
                let (jti, sub) = (hit.jti.as_deref(), hit.info.sub());
                let verdict = finish(tenant, hit.times, jti, sub, &hit.grants, req, now);
                let decision = Decision::with_token(verdict, Arc::clone(&hit.info));
                scratch.hot.saw(token, &hit, turnover.0);
                return decision;
            }
            scratch.counts.misses += 1;
        }
        match self.verify_token(scratch, tenant, token, req, now, true) {
            Ok(d) | Err(d) => d,
        }
    }

    /// The uncached path: structure, header, key, signature, claims, then [`finish`].
    /// A verified token is offered to the cache only when it was `looked_up`
    /// there (a bypassed token may already be cached).
    fn verify_token(
        &self,
        scratch: &mut Scratch,
        tenant: &Tenant,
        token: &[u8],
        req: &Request<'_>,
        now: UnixTime,
        looked_up: bool,
    ) -> Result<Decision, Decision> {
        let deny = Decision::without_token;
        let seg = split(token).map_err(deny)?;
        let Scratch {
            header,
            payload,
            signature,
            memo,
            signatures,
            counts,
            tick,
            ..
        } = scratch;
        let b64 = &self.base64url;
        if memo.alg.is_none() || memo.segment != seg.header {
            b64.decode(seg.header, header).map_err(deny)?;
            let head = parse_header(utf8(header).map_err(deny)?).map_err(deny)?;
            memo.store(seg.header, &head);
        }
        let alg = memo.alg.ok_or(deny(Reason::InternalError))?;
        if !tenant.claims.typ.accepts(memo.typ.as_deref()) {
            return Err(deny(Reason::BadTyp));
        }
        if !tenant.algorithms.contains(alg) {
            // A key not fetched yet may bring this algorithm: an unknown kid
            // is told apart so the front door refetches (a known kid keeps
            // its own algorithm, which is in the set: not allowed).
            let refetch = tenant.remote_keys
                && tenant.algorithms_follow_keys
                && matches!(
                    find_key(tenant, memo.kid.as_deref()),
                    Err(Reason::UnknownKid)
                );
            return Err(deny(if refetch {
                Reason::UnknownKid
            } else {
                Reason::AlgNotAllowed
            }));
        }
        let key = find_key(tenant, memo.kid.as_deref()).map_err(deny)?;
        if key.key.algorithm() != alg {
            return Err(deny(Reason::KeyAlgMismatch));
        }
        // Every segment must be strict base64url before any crypto runs.
        b64.decode(seg.payload, payload).map_err(deny)?;
        b64.decode(seg.signature, signature).map_err(deny)?;
        let good = match signatures.recall(token, &key.key) {
            Some(good) => good,
            None => {
                if alg.family() != crate::KeyFamily::Hmac {
                    counts.public_key_checks += 1;
                }
                let good = key.key.verify(seg.signing_input, signature);
                signatures.store(token, &key.key, good);
                good
            }
        };
        if !good {
            return Err(deny(Reason::BadSignature));
        }

        // Signature good: from here on every decision carries the verified token.
        let wanted = ClaimsWanted {
            returned: &tenant.claims_to_return,
            required: &tenant.claims.required,
        };
        let mut claims = Claims::default();
        parse_claims(utf8(payload).map_err(deny)?, wanted, &mut claims).map_err(deny)?;
        let returned = claims
            .returned
            .iter()
            .map(|(i, raw)| (wanted.returned[*i].clone(), Box::<str>::from(raw.get())))
            .collect();
        let info = Arc::new(TokenInfo::new(
            alg,
            Some(key.kid.clone()),
            claims.sub.as_deref().map(Box::from),
            claims.exp,
            returned,
        ));
        if let Err(reason) = static_checks(tenant, key, &claims) {
            return Ok(Decision::with_token(reason, info));
        }
        let times = Times {
            exp: claims.exp,
            nbf: claims.nbf,
            iat: claims.iat,
        };
        // Cache only what lives past now and what the cache admits (decided before building
        // the entry, so a token turned away costs no allocation).
        let admitted = self.cache.as_ref().filter(|_| looked_up).and_then(|cache| {
            let cfg = cache.config();
            let ttl_end = now.0.saturating_add(cfg.max_ttl.as_secs());
            let exp_end = claims.exp.map_or(u64::MAX, |e| {
                e.saturating_add(tenant.claims.leeway.as_secs())
            });
            let dies_at = ttl_end.min(exp_end);
            (dies_at > now.0 && cache.admits(token, counts, *tick)).then_some((cache, dies_at))
        });
        let verdict = match admitted {
            Some((cache, dies_at)) => {
                let entry = CachedToken::new(
                    token.len(),
                    &tenant.id,
                    tenant.epoch,
                    dies_at,
                    times,
                    claims.jti.as_deref().map(Box::from),
                    claims.grants.into_owned(),
                    Arc::clone(&info),
                );
                let verdict = finish(
                    tenant,
                    times,
                    entry.jti.as_deref(),
                    info.sub(),
                    &entry.grants,
                    req,
                    now,
                );
                cache.insert(token, entry, counts);
                verdict
            }
            None => finish(
                tenant,
                times,
                claims.jti.as_deref(),
                info.sub(),
                &claims.grants,
                req,
                now,
            ),
        };
        Ok(Decision::with_token(verdict, info))
    }
}

/// Whether verifying a token of `alg` costs more than a cache insert (everything but HMAC).
fn costly(alg: crate::Algorithm) -> bool {
    alg.family() != crate::KeyFamily::Hmac
}

fn find_key<'t>(tenant: &'t Tenant, kid: Option<&str>) -> Result<&'t TenantKey, Reason> {
    match kid {
        Some(kid) => tenant
            .keys
            .iter()
            .find(|k| *k.kid == *kid)
            .ok_or(Reason::UnknownKid),
        None if tenant.keys.len() == 1 => Ok(&tenant.keys[0]),
        None => Err(Reason::MissingKid),
    }
}

/// Claim rules that depend on neither the clock nor the request: checked once, then cached.
fn static_checks(tenant: &Tenant, key: &TenantKey, claims: &Claims<'_>) -> Result<(), Reason> {
    let rules = &tenant.claims;
    if rules.require_exp && claims.exp.is_none() {
        return Err(Reason::MissingClaim);
    }
    if !rules.issuers.is_empty() {
        let iss = claims.iss.as_deref().ok_or(Reason::MissingClaim)?;
        if !rules.issuers.iter().any(|i| **i == *iss) {
            return Err(Reason::BadIssuer);
        }
    }
    // The key's own issuer: the provider that holds this key speaks for itself only.
    if let Some(bound) = &key.issuer {
        let iss = claims.iss.as_deref().ok_or(Reason::MissingClaim)?;
        if **bound != *iss {
            return Err(Reason::BadIssuer);
        }
    }
    // RFC 7519 §4.1.3: a token that names audiences must name one of ours. A tenant
    // without `audiences` identifies itself with none, so a token carrying `aud` (minted
    // for another API, or an OIDC ID token) is refused there too, not waved through.
    match (&claims.aud, rules.audiences.is_empty()) {
        (None, true) => {}
        (None, false) => return Err(Reason::MissingClaim),
        (Some(aud), _) => {
            if !aud
                .iter()
                .any(|a| rules.audiences.iter().any(|x| **x == **a))
            {
                return Err(Reason::BadAudience);
            }
        }
    }
    for i in 0..rules.required.len() {
        if i >= 64 || claims.required_seen & (1 << i) == 0 {
            return Err(Reason::MissingClaim);
        }
    }
    if let Some(max) = rules.max_lifetime {
        // The lifetime is `exp - iat`, so a cap needs `iat`: measured from `now` instead,
        // a year-long token without `iat` would pass in its last `max_lifetime`.
        let (Some(exp), Some(iat)) = (claims.exp, claims.iat) else {
            return Err(Reason::MissingClaim);
        };
        // Rounded so the lifetime is never understated: `exp` up, `iat` down.
        let exp = exp.saturating_add(u64::from(claims.exp_fraction));
        let iat = iat - u64::from(claims.iat_fraction);
        if iat > exp {
            return Err(Reason::InvalidClaim);
        }
        if exp - iat > max.as_secs() {
            return Err(Reason::LifetimeTooLong);
        }
    }
    Ok(())
}

/// Checks that run on every request, cache hits included: time claims,
/// revocation, then policy (a no-auth method it refuses is `ok_no_auth`).
fn finish(
    tenant: &Tenant,
    times: Times,
    jti: Option<&str>,
    sub: Option<&str>,
    grants: &Grants<'_>,
    req: &Request<'_>,
    now: UnixTime,
) -> Reason {
    let leeway = tenant.claims.leeway.as_secs();
    let now = now.0;
    if times
        .exp
        .is_some_and(|exp| now >= exp.saturating_add(leeway))
    {
        return Reason::Expired;
    }
    if times
        .nbf
        .is_some_and(|nbf| now.saturating_add(leeway) < nbf)
    {
        return Reason::NotYetValid;
    }
    if times
        .iat
        .is_some_and(|iat| iat > now.saturating_add(leeway))
    {
        return Reason::IssuedInFuture;
    }
    // A revocation holds until `until` plus the leeway `exp` gets: with
    // `until` = the token's `exp` (as the docs advise), the token would
    // otherwise verify again for the leeway after it.
    let revoked_at = UnixTime(now.saturating_sub(leeway));
    let revoked =
        |list: &crate::Denylist| !list.is_empty() && list.is_revoked(jti, sub, revoked_at);
    if revoked(&tenant.denylist) || revoked(&tenant.shared_denylist) {
        return Reason::Revoked;
    }
    match authorize(tenant.policy, grants, req) {
        Ok(()) => Reason::Ok,
        // A public method is allowed whatever the token's own rules say,
        // but not as its holder: `ok_no_auth` names no one (the answer
        // carried the subject of a token that did not allow the call).
        Err(_) if tenant.is_no_auth(req.method) => Reason::OkNoAuth,
        Err(reason) => reason,
    }
}

#[cfg(test)]
mod signature_memo_tests {
    use super::{Engine, EngineConfig, Scratch};
    use crate::{Algorithm, Reason, Request, SigningKey, Snapshot, Tenant, TenantKey, UnixTime};
    use std::sync::Arc;

    const NOW: u64 = 1_700_000_000;

    fn snapshot(kid: &str, key: &SigningKey, epoch: u64) -> Snapshot {
        let mut tenant = Tenant::new(
            "t",
            vec![TenantKey {
                kid: kid.into(),
                key: key.verifying_key().unwrap(),
                issuer: None,
            }],
        );
        tenant.epoch = epoch;
        Snapshot::new(1, [Arc::new(tenant)])
    }

    fn claims() -> String {
        format!(r#"{{"sub":"u","iat":{},"exp":{}}}"#, NOW - 10, NOW + 600)
    }

    /// One forged token in every item of a batch costs one signature check
    /// per worker run, not one per item; every item is still denied, and the
    /// same bytes against another key (replaced under its kid, epoch kept)
    /// are checked again and verify.
    #[test]
    fn a_forged_token_repeated_is_checked_once_per_key() {
        for alg in [Algorithm::Rs256, Algorithm::Es256, Algorithm::Hs256] {
            let (real, other) = (
                SigningKey::generate(alg).unwrap(),
                SigningKey::generate(alg).unwrap(),
            );
            let token = real.mint(Some("k"), &claims()).unwrap();
            let engine = Engine::new(EngineConfig::default());
            let mut scratch = Scratch::new();
            let forged = snapshot("k", &other, 7);
            let req = Request::bearer("t", token.as_bytes());
            for _ in 0..100 {
                let d = engine.verify_with(&mut scratch, &forged, &req, UnixTime(NOW));
                assert_eq!(d.reason(), Reason::BadSignature, "{alg:?}");
            }
            let costly = u64::from(alg != Algorithm::Hs256);
            assert_eq!(scratch.counts.public_key_checks, costly, "{alg:?}");
            // Another token, then the first again: one entry, checked anew.
            let other_token = other.mint(Some("k"), &claims()).unwrap();
            let ok = Request::bearer("t", other_token.as_bytes());
            assert_eq!(
                engine
                    .verify_with(&mut scratch, &forged, &ok, UnixTime(NOW))
                    .reason(),
                Reason::Ok
            );
            // The key the token was signed with now sits under the kid, the
            // epoch unchanged (a caller that forgot to bump it): verifies.
            let rotated = snapshot("k", &real, 7);
            let d = engine.verify_with(&mut scratch, &forged, &req, UnixTime(NOW));
            assert_eq!(d.reason(), Reason::BadSignature);
            let d = engine.verify_with(&mut scratch, &rotated, &req, UnixTime(NOW));
            assert_eq!(d.reason(), Reason::Ok, "{alg:?}");
        }
    }

    /// A token whose signature is good but which is refused after it
    /// (expired, another audience: never cached) costs one signature check
    /// when repeated, with or without a cache, and every copy gets the same
    /// decision with the verified token's facts.
    #[test]
    fn a_good_signature_refused_after_is_checked_once() {
        for alg in [Algorithm::Rs256, Algorithm::Es256] {
            let key = SigningKey::generate(alg).unwrap();
            let expired = key
                .mint(
                    Some("k"),
                    &format!(r#"{{"sub":"u","iat":{},"exp":{}}}"#, NOW - 7200, NOW - 3600),
                )
                .unwrap();
            for cached in [false, true] {
                let engine = Engine::new(EngineConfig {
                    cache: cached.then(crate::CacheConfig::default),
                    ..EngineConfig::default()
                });
                let mut scratch = Scratch::new();
                let snap = snapshot("k", &key, 7);
                let req = Request::bearer("t", expired.as_bytes());
                for _ in 0..50 {
                    let d = engine.verify_with(&mut scratch, &snap, &req, UnixTime(NOW));
                    assert_eq!(d.reason(), Reason::Expired, "{alg:?}");
                    assert_eq!(d.token().and_then(|t| t.sub()), Some("u"));
                }
                assert_eq!(
                    scratch.counts.public_key_checks, 1,
                    "{alg:?} cached {cached}"
                );
            }
        }
    }
}
