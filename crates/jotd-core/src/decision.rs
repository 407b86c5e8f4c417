//! Decisions: one per request, allow or deny, with the reason and what was verified.

use crate::alg::Algorithm;
use crate::reason::Reason;
use std::sync::Arc;

/// Facts about a token whose signature verified. Only the engine builds one
/// (the fields are private), so nothing downstream can fake a verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    alg: Algorithm,
    kid: Option<Box<str>>,
    sub: Option<Box<str>>,
    exp: Option<u64>,
    claims: Box<[(Box<str>, Box<str>)]>,
}

impl TokenInfo {
    pub(crate) const fn new(
        alg: Algorithm,
        kid: Option<Box<str>>,
        sub: Option<Box<str>>,
        exp: Option<u64>,
        claims: Box<[(Box<str>, Box<str>)]>,
    ) -> Self {
        Self {
            alg,
            kid,
            sub,
            exp,
            claims,
        }
    }

    /// The algorithm the signature verified with.
    #[must_use]
    pub const fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The `kid` of the key that verified the signature: the header's, or,
    /// for a token without one, the tenant's only key's (the key store names
    /// every key, so a decision from the engine always has one).
    #[must_use]
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The `sub` claim.
    #[must_use]
    pub fn sub(&self) -> Option<&str> {
        self.sub.as_deref()
    }

    /// The `exp` claim, in Unix seconds.
    #[must_use]
    pub const fn exp(&self) -> Option<u64> {
        self.exp
    }

    /// The claims the tenant asked to return, as `(name, raw JSON value)`, in token order.
    #[must_use]
    pub fn claims(&self) -> &[(Box<str>, Box<str>)] {
        &self.claims
    }

    /// Heap bytes as the allocator sizes them (the cache's memory bound).
    pub(crate) fn heap_bytes(&self) -> usize {
        use crate::cache::heap_alloc;
        let s = |o: &Option<Box<str>>| o.as_ref().map_or(0, |s| heap_alloc(s.len()));
        s(&self.kid)
            + s(&self.sub)
            + heap_alloc(self.claims.len() * std::mem::size_of::<(Box<str>, Box<str>)>())
            + self
                .claims
                .iter()
                .map(|(k, v)| heap_alloc(k.len()) + heap_alloc(v.len()))
                .sum::<usize>()
    }
}

/// The outcome for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    reason: Reason,
    token: Option<Arc<TokenInfo>>,
}

impl Decision {
    /// A deny (or `ok_no_auth`) that carries no verified token.
    ///
    /// `ok` can only come from the engine: passing [`Reason::Ok`] yields `internal_error`.
    #[must_use]
    pub const fn without_token(reason: Reason) -> Self {
        let reason = if matches!(reason, Reason::Ok) {
            Reason::InternalError
        } else {
            reason
        };
        Self {
            reason,
            token: None,
        }
    }

    /// A decision about a verified token; `ok_no_auth` (a public method the
    /// token's own rules refuse) carries none of its identity.
    pub(crate) fn with_token(reason: Reason, token: Arc<TokenInfo>) -> Self {
        Self {
            reason,
            token: (reason != Reason::OkNoAuth).then_some(token),
        }
    }

    /// Whether the request is allowed.
    #[must_use]
    pub const fn allow(&self) -> bool {
        self.reason.is_allow()
    }

    /// Why.
    #[must_use]
    pub const fn reason(&self) -> Reason {
        self.reason
    }

    /// What was verified, when the signature checked out (also for denies
    /// decided after that: `expired`, policy denies, `revoked`).
    #[must_use]
    pub fn token(&self) -> Option<&TokenInfo> {
        self.token.as_deref()
    }
}
