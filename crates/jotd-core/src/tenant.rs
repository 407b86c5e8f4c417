//! Tenants and the immutable key snapshot the engine reads once per batch.

use crate::alg::AlgorithmSet;
use crate::key::VerifyingKey;
use crate::policy::PolicyModel;
use crate::request::UnixTime;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// One named key of a tenant.
#[derive(Clone, Debug)]
pub struct TenantKey {
    /// The key id a token names in its header's `kid`.
    pub kid: Box<str>,
    /// The verifying key, bound to one algorithm.
    pub key: VerifyingKey,
    /// When set, a token this key verifies must carry exactly this `iss`
    /// (`bad_issuer`, or `missing_claim` without one). A tenant whose keys come from
    /// several identity providers binds each key to its own, so one provider cannot
    /// sign tokens in another's name. `None`: the tenant's `issuers` rule alone.
    pub issuer: Option<Box<str>>,
}

/// How a tenant treats the header's `typ`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypRule {
    /// Reject tokens without `typ`. Default: `false`.
    pub required: bool,
    /// Accepted values, compared case-insensitively, with or without an
    /// `application/` prefix (RFC 7515 §4.1.9). Default: `["JWT"]`.
    pub accepted: Vec<Box<str>>,
}

impl Default for TypRule {
    fn default() -> Self {
        Self {
            required: false,
            accepted: vec!["JWT".into()],
        }
    }
}

impl TypRule {
    /// Whether a header `typ` (or its absence) passes.
    #[must_use]
    pub fn accepts(&self, typ: Option<&str>) -> bool {
        let Some(typ) = typ else {
            return !self.required;
        };
        let bare = match typ.get(..12) {
            Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &typ[12..],
            _ => typ,
        };
        self.accepted.iter().any(|a| a.eq_ignore_ascii_case(bare))
    }
}

/// Claim rules of a tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRules {
    /// Deny tokens without `exp`. Default: `true`.
    pub require_exp: bool,
    /// Clock skew allowed on `exp`, `nbf` and `iat`. Default: 30 s.
    pub leeway: Duration,
    /// Longest accepted `exp - iat`; when set, tokens without `iat` are `missing_claim`.
    /// Default: none.
    pub max_lifetime: Option<Duration>,
    /// `aud` must contain one of these; when empty, a token carrying `aud` is
    /// `bad_audience` (RFC 7519 §4.1.3). Default: empty.
    pub audiences: Vec<Box<str>>,
    /// If not empty, `iss` must be one of these. Default: empty.
    pub issuers: Vec<Box<str>>,
    /// Claims that must be present (at most 64). Default: empty.
    pub required: Vec<Box<str>>,
    /// Header `typ` rule. Default: [`TypRule::default`].
    pub typ: TypRule,
}

impl Default for ClaimRules {
    fn default() -> Self {
        Self {
            require_exp: true,
            leeway: Duration::from_secs(30),
            max_lifetime: None,
            audiences: Vec::new(),
            issuers: Vec::new(),
            required: Vec::new(),
            typ: TypRule::default(),
        }
    }
}

/// Revoked token ids and subjects of a tenant, each with the time its entry lapses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Denylist {
    /// `jti` → revoked until (usually the token's `exp`).
    pub jti: HashMap<Box<str>, UnixTime>,
    /// `sub` → revoked until.
    pub sub: HashMap<Box<str>, UnixTime>,
}

impl Denylist {
    /// Whether a token with this `jti` and `sub` is revoked at `now`.
    #[must_use]
    pub fn is_revoked(&self, jti: Option<&str>, sub: Option<&str>, now: UnixTime) -> bool {
        let hit = |map: &HashMap<Box<str>, UnixTime>, id: Option<&str>| {
            id.and_then(|id| map.get(id))
                .is_some_and(|until| now < *until)
        };
        (!self.jti.is_empty() && hit(&self.jti, jti))
            || (!self.sub.is_empty() && hit(&self.sub, sub))
    }

    /// Whether no entry is listed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.jti.is_empty() && self.sub.is_empty()
    }
}

/// A tenant: its keys, claim rules and policy.
#[derive(Clone, Debug)]
pub struct Tenant {
    /// The tenant id requests name.
    pub id: Box<str>,
    /// Up to a few keys (rotation); looked up by `kid`.
    pub keys: Vec<TenantKey>,
    /// Must change whenever `keys`, `algorithms`, `claims` or `claims_to_return`
    /// change: cached verified tokens of another epoch are dropped. The engine
    /// trusts it: a caller that changes a rule or a key and keeps the epoch
    /// gets cached answers of the old rules. jotd-keys derives it from a digest
    /// of everything it covers (`cache_differential.rs` checks the two engines
    /// agree); a direct user of this crate must do the same. [`Tenant::new`]
    /// starts at 0.
    pub epoch: u64,
    /// Algorithms accepted. Default: every algorithm of a configured key.
    pub algorithms: AlgorithmSet,
    /// Claim rules.
    pub claims: ClaimRules,
    /// How a valid token is authorized.
    pub policy: PolicyModel,
    /// Methods allowed without a token (with one, a policy refusal is
    /// `ok_no_auth`, without its identity).
    pub no_auth_methods: Vec<Box<str>>,
    /// When `false`, a request without a token is allowed (`ok_no_auth`);
    /// a request with a bad token is still denied. Default: `true`.
    pub require_jwt: bool,
    /// Claims copied into the decision as raw JSON (Infura `groups`, Besu `privacyPublicKey`).
    pub claims_to_return: Vec<Box<str>>,
    /// Revoked `jti`/`sub` values, checked on every request, cached tokens included.
    pub denylist: Arc<Denylist>,
    /// Revocations for every tenant (one list shared by all: a mass
    /// revocation is not copied per tenant), checked as `denylist` is.
    pub shared_denylist: Arc<Denylist>,
    /// Some keys come from a remote JWKS that can be fetched again: a front
    /// door holds this tenant's `unknown_kid` decisions for one refetch
    /// (read from the snapshot, so deciding takes no lock). Default: `false`.
    pub remote_keys: bool,
    /// `algorithms` was not configured: it is the algorithms of the keys at
    /// hand. With `remote_keys`, a header algorithm outside it may be that of
    /// a key the next fetch brings (an identity provider moving from RS256 to
    /// ES256 under a new kid), so an unknown kid is `unknown_kid` (which
    /// triggers a refetch) rather than `alg_not_allowed`. Default: `false`.
    pub algorithms_follow_keys: bool,
    /// HTTP origins every request of the tenant must come from, with a token
    /// or without (Infura's project-level origin allowlist; entries as a
    /// token's `origins` claim reads them). Checked before the token: a
    /// request without an `Origin`, or with one no entry matches, is
    /// `origin_not_allowed`. Empty: any origin, or none. Default: empty.
    pub origins: Vec<Box<str>>,
}

impl Tenant {
    /// A tenant with default rules (policy `none`, `exp` required, 30 s leeway)
    /// accepting exactly the algorithms of `keys`.
    #[must_use]
    pub fn new(id: &str, keys: Vec<TenantKey>) -> Self {
        let algorithms = keys.iter().map(|k| k.key.algorithm()).collect();
        Self {
            id: id.into(),
            keys,
            epoch: 0,
            algorithms,
            claims: ClaimRules::default(),
            policy: PolicyModel::None,
            no_auth_methods: Vec::new(),
            require_jwt: true,
            claims_to_return: Vec::new(),
            denylist: Arc::default(),
            shared_denylist: Arc::default(),
            remote_keys: false,
            algorithms_follow_keys: false,
            origins: Vec::new(),
        }
    }

    /// Whether `method` may be called without a token.
    #[must_use]
    pub fn is_no_auth(&self, method: Option<&str>) -> bool {
        method.is_some_and(|m| self.no_auth_methods.iter().any(|n| **n == *m))
    }
}

/// An immutable view of every tenant. Readers take one per batch (through an
/// `Arc`/`ArcSwap` held by the caller); writers build a new one and swap it in.
#[derive(Debug, Default)]
pub struct Snapshot {
    generation: u64,
    tenants: HashMap<Box<str>, Arc<Tenant>, foldhash::fast::RandomState>,
}

impl Snapshot {
    /// Builds a snapshot. `generation` should grow with every swap.
    #[must_use]
    pub fn new(generation: u64, tenants: impl IntoIterator<Item = Arc<Tenant>>) -> Self {
        let tenants = tenants.into_iter().map(|t| (t.id.clone(), t)).collect();
        Self {
            generation,
            tenants,
        }
    }

    /// The generation this snapshot was built with.
    #[must_use]
    pub const fn generation(&self) -> u64 {
        self.generation
    }

    /// A tenant by id, as the shared `Arc` this snapshot holds (to carry it
    /// into the next snapshot unchanged).
    #[must_use]
    pub fn tenant_arc(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.tenants.get(id)
    }

    /// Looks a tenant up by id.
    #[must_use]
    #[inline]
    pub fn tenant(&self, id: &str) -> Option<&Tenant> {
        self.tenants.get(id).map(|t| &**t)
    }

    /// Every tenant, in no particular order.
    pub fn tenants(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.tenants.values()
    }

    /// Number of tenants.
    #[must_use]
    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    /// Whether there are no tenants.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typ_rule() {
        let lax = TypRule::default();
        assert!(lax.accepts(None) && lax.accepts(Some("JWT")) && lax.accepts(Some("jwt")));
        assert!(lax.accepts(Some("application/JWT")));
        assert!(
            !lax.accepts(Some("at+jwt")) && !lax.accepts(Some("JWE")) && !lax.accepts(Some(""))
        );
        let strict = TypRule {
            required: true,
            ..TypRule::default()
        };
        assert!(!strict.accepts(None) && strict.accepts(Some("JWT")));
    }

    #[test]
    fn denylist_entries_lapse() {
        let mut d = Denylist::default();
        d.jti.insert("j1".into(), UnixTime(100));
        d.sub.insert("alice".into(), UnixTime(200));
        assert!(d.is_revoked(Some("j1"), None, UnixTime(99)));
        assert!(!d.is_revoked(Some("j1"), None, UnixTime(100)));
        assert!(d.is_revoked(Some("x"), Some("alice"), UnixTime(150)));
        assert!(!d.is_revoked(Some("x"), Some("bob"), UnixTime(150)));
        assert!(!d.is_revoked(None, None, UnixTime(0)));
    }
}
