//! The check every door makes: a request's calls → one jotd decision each,
//! micro-batched into the pool; what a decision means in HTTP terms.

use crate::config::FailureMode;
use jotd_core::Reason;
use jotd_transport::{Batcher, Check, CheckError, ClientDecision};
use std::sync::Arc;
use std::time::Duration;

/// Which front door a check came through (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// The JSON-RPC reverse proxy.
    Proxy,
    /// HTTP forward-auth.
    ForwardAuth,
    /// Envoy ext_authz over gRPC.
    ExtAuthz,
    /// The proxy's checks of a WebSocket's token: at the upgrade and every
    /// recheck, with no call (each message is checked as a `Proxy` call). A
    /// per-call reason there leaves the socket open and counts as `ok`.
    WebSocket,
}

impl Door {
    /// The label value.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Proxy => "proxy",
            Self::ForwardAuth => "forward_auth",
            Self::ExtAuthz => "ext_authz",
            Self::WebSocket => "websocket",
        }
    }
}

/// Reasons that refuse a call, not the token: a check with no call (a
/// WebSocket's upgrade or recheck) leaves them to each message.
#[must_use]
pub const fn per_call(r: Reason) -> bool {
    matches!(
        r,
        Reason::MethodNotAllowed | Reason::AddressNotAllowed | Reason::PermissionDenied
    )
}

/// What kind of "no" a denial is, which decides the HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// The token is valid and its policy refuses the call: 403.
    Policy,
    /// The token is missing or not valid: 401 with `WWW-Authenticate`.
    Token,
    /// No decision could be had (the pool is unavailable, an internal error): 503.
    Unavailable,
}

/// The class of a denial reason.
#[must_use]
pub fn class_of(reason: Reason) -> Class {
    match reason {
        Reason::MethodNotAllowed
        | Reason::AddressNotAllowed
        | Reason::OriginNotAllowed
        | Reason::UserAgentNotAllowed
        | Reason::PermissionDenied
        | Reason::UnknownTenant => Class::Policy,
        Reason::InternalError => Class::Unavailable,
        _ => Class::Token,
    }
}

/// One call's outcome.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// jotd allowed it.
    Allow(ClientDecision),
    /// The pool could not answer and the operator chose `failure_mode = "open"`.
    FailOpen(String),
    /// jotd denied it (or the gateway did, before asking: a token over the
    /// size cap), with jotd's decision when it made one: a denial after the
    /// signature verified (a method the token does not allow) carries its
    /// `sub` and `exp`, which a WebSocket opened for later calls needs.
    Deny(Reason, Option<Box<ClientDecision>>),
    /// The pool could not answer; fail closed.
    Unavailable(String),
}

impl Verdict {
    /// Whether the call goes on.
    #[must_use]
    pub const fn allowed(&self) -> bool {
        matches!(self, Self::Allow(_) | Self::FailOpen(_))
    }

    /// The denial class, when denied.
    #[must_use]
    pub fn class(&self) -> Option<Class> {
        match self {
            Self::Allow(_) | Self::FailOpen(_) => None,
            Self::Deny(r, _) => Some(class_of(*r)),
            Self::Unavailable(_) => Some(Class::Unavailable),
        }
    }

    /// The reason name (for bodies, headers and metrics).
    #[must_use]
    pub fn reason_name(&self) -> &'static str {
        match self {
            Self::Allow(d) => d.reason().map_or("unknown", Reason::as_str),
            Self::FailOpen(_) => "fail_open",
            Self::Deny(r, _) => r.as_str(),
            Self::Unavailable(_) => "unavailable",
        }
    }
}

/// The request facts a check carries besides the call.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The tenant.
    pub tenant: String,
    /// The bearer token, when there was one.
    pub token: Option<Vec<u8>>,
    /// HTTP `Origin`.
    pub origin: Option<String>,
    /// HTTP `User-Agent`.
    pub user_agent: Option<String>,
}

/// One call to check: its method and addresses.
#[derive(Debug, Clone, Default)]
pub struct CallFacts {
    /// JSON-RPC method, when known.
    pub method: Option<String>,
    /// Addresses it touches.
    pub addresses: Vec<String>,
}

impl CallFacts {
    /// The facts of each parsed call of `items` (invalid ones skipped), in order.
    #[must_use]
    pub fn of_calls(items: &[Result<crate::jsonrpc::Call, crate::jsonrpc::Invalid>]) -> Vec<Self> {
        items
            .iter()
            .filter_map(|c| c.as_ref().ok())
            .map(|c| Self {
                method: Some(c.method.clone()),
                addresses: c.addresses.clone(),
            })
            .collect()
    }
}

/// Checks calls against the pool.
#[derive(Debug, Clone)]
pub struct Gate {
    batcher: Batcher,
    timeout: Duration,
    failure_mode: FailureMode,
    max_token_bytes: usize,
}

impl Gate {
    /// A gate over `batcher`.
    #[must_use]
    pub const fn new(
        batcher: Batcher,
        timeout: Duration,
        failure_mode: FailureMode,
        max_token_bytes: usize,
    ) -> Self {
        Self {
            batcher,
            timeout,
            failure_mode,
            max_token_bytes,
        }
    }

    /// The batcher (for its counters).
    #[must_use]
    pub const fn batcher(&self) -> &Batcher {
        &self.batcher
    }

    /// One verdict per call, in order. All calls are checked concurrently
    /// (and so usually ride in one batch).
    pub async fn check(&self, door: Door, facts: &Facts, calls: Vec<CallFacts>) -> Vec<Verdict> {
        if facts
            .token
            .as_ref()
            .is_some_and(|t| t.len() > self.max_token_bytes)
        {
            let v = vec![Verdict::Deny(Reason::TokenTooLarge, None); calls.len()];
            count(door, &v);
            return v;
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        if let Some(v) = self.token_first(facts, calls.len(), deadline).await {
            count(door, &v);
            return v;
        }
        let facts = Arc::new(facts.clone());
        let pending: Vec<_> = calls
            .into_iter()
            .map(|c| {
                let check = Check {
                    token: facts.token.clone(),
                    tenant: facts.tenant.clone(),
                    method: c.method,
                    addresses: c.addresses,
                    origin: facts.origin.clone(),
                    user_agent: facts.user_agent.clone(),
                };
                let b = self.batcher.clone();
                async move { b.check(check, deadline).await }
            })
            .collect();
        let outcomes = futures_util::future::join_all(pending).await;
        let v: Vec<Verdict> = outcomes
            .into_iter()
            .map(|o| match o {
                // Every door passes the subject on in a header, the authorizer
                // doors every identity header: one no header can carry (a line
                // break in a value, a claim name such as
                // `https://example.com/roles`) would reach the node as no
                // identity at all, so the call is refused instead, and counted
                // so.
                Ok(d) if d.allow && let Some(bad) = unwritable(door, &facts.tenant, &d) => {
                    tracing::warn!(
                        door = door.as_str(),
                        tenant = %facts.tenant,
                        header = %bad.escape_default(),
                        "an identity header cannot be written (its claim's name or value): refused as invalid_claim"
                    );
                    Verdict::Deny(Reason::InvalidClaim, None)
                }
                Ok(d) if d.allow => Verdict::Allow(d),
                Ok(d) => Verdict::Deny(d.reason().unwrap_or(Reason::InternalError), Some(Box::new(d))),
                Err(e) => {
                    let why = describe(&e);
                    // Only the pool being unreachable may fail open: a full
                    // queue, a batch the pool refuses as a whole (too large,
                    // malformed), or a deadline missed while the pool is
                    // connected (a check held while jotd refetches a key set
                    // for an unknown `kid`) is something a caller can cause.
                    let pool_down = pool_down(&e, || self.batcher.pool_reachable());
                    match self.failure_mode {
                        FailureMode::Open if pool_down => Verdict::FailOpen(why),
                        _ => Verdict::Unavailable(why),
                    }
                }
            })
            .collect();
        count(door, &v);
        v
    }
}

impl Gate {
    /// A batch whose token copies would be many bytes has its token checked
    /// once, alone, first: when jotd refuses the token itself (a reason
    /// [`Reason::decided_by_token`] names: a forged signature, an expired or
    /// revoked token, another audience), every call gets that refusal and
    /// the copies are never sent. Each call carries its own copy of the
    /// token to jotd, so a 100-call body with an 8 KiB forged token was
    /// 800 KiB in the gateway and in jotd's request buffer, which ~160 such
    /// requests filled for every tenant. `None`: check the calls (the token
    /// verified, or its refusal depends on the call, or no answer came: the
    /// calls' own checks then meet the same deadline and failure rules).
    async fn token_first(
        &self,
        facts: &Facts,
        calls: usize,
        deadline: tokio::time::Instant,
    ) -> Option<Vec<Verdict>> {
        let token = facts.token.as_ref()?;
        if calls < 2 || token.len().saturating_mul(calls) <= TOKEN_FIRST_BYTES {
            return None;
        }
        let probe = Check {
            token: Some(token.clone()),
            tenant: facts.tenant.clone(),
            method: None,
            addresses: Vec::new(),
            origin: facts.origin.clone(),
            user_agent: facts.user_agent.clone(),
        };
        let d = self.batcher.check(probe, deadline).await.ok()?;
        // The tenant's own origin allowlist refuses before the token is
        // read, so for every call alike (no key named it: the same code
        // from a token's `origins` claim comes after the signature, with its
        // kid, and a no-auth method turns that one into `ok_no_auth`).
        let before_call =
            |r: Reason| r.decided_by_token() || (r == Reason::OriginNotAllowed && d.kid.is_none());
        let reason = d.reason().filter(|&r| !d.allow && before_call(r))?;
        let d = Box::new(d);
        Some(vec![Verdict::Deny(reason, Some(d)); calls])
    }
}

/// Token bytes a batch's calls may carry to jotd (one copy each) before
/// the token is checked alone first ([`Gate::check`]): 64 KiB, so 9 calls
/// or more with an 8 KiB token, 65 or more with a 1 KiB one. Up to it the
/// calls go at once, with no extra round trip; past it the check alone
/// comes first, within the same `check_timeout_ms`.
pub const TOKEN_FIRST_BYTES: usize = 64 << 10;

/// Whether a check that got no decision may fail open: only when the pool is
/// down. A full queue, a batch the pool refuses as a whole, and a timeout
/// of any form while the pool is connected (the check's deadline or its
/// batch's, both of which a held check outlasts; jotd's `request_timeout`
/// on a request slow to arrive, which its size can cause; a failover that
/// ended in one) are something a caller can cause: a batch timeout that fired on the same
/// tick as the check's deadline reached the caller first and failed open
/// with the pool connected. `reachable` is asked only where it decides.
fn pool_down(e: &CheckError, reachable: impl FnOnce() -> bool) -> bool {
    fn timed_out(c: &jotd_transport::ClientError) -> bool {
        use jotd_transport::ClientError as E;
        match c {
            E::Timeout(_) => true,
            E::Server { code, .. } => {
                jotd_transport::ErrorCode::from_code(*code)
                    == Some(jotd_transport::ErrorCode::RequestTimeout)
            }
            E::Unavailable { last: Some(l), .. } => timed_out(l),
            _ => false,
        }
    }
    match e {
        CheckError::Deadline => !reachable(),
        CheckError::Client(c) if timed_out(c) => !reachable(),
        CheckError::Client(c) => c.retryable(),
        CheckError::Overloaded | CheckError::Closed => false,
    }
}

/// The identity headers the authorizer doors (forward-auth, ext_authz) write
/// for an allowed decision of `tenant`, `x-jotd-reason` first: the gateway
/// copies them to the request it forwards.
#[must_use]
pub fn identity_headers(tenant: &str, d: &jotd_transport::ClientDecision) -> Vec<(String, String)> {
    let mut out = vec![
        ("x-jotd-tenant".to_owned(), tenant.to_owned()),
        (
            "x-jotd-reason".to_owned(),
            d.reason().map_or("ok", Reason::as_str).to_owned(),
        ),
    ];
    if let Some(s) = &d.sub {
        out.push(("x-jotd-subject".into(), s.clone()));
    }
    if let Some(k) = &d.kid {
        out.push(("x-jotd-kid".into(), k.clone()));
    }
    for (name, raw) in &d.claims {
        // Strings as their text, anything else as JSON.
        let v = serde_json::from_str::<String>(raw).unwrap_or_else(|_| raw.clone());
        out.push((format!("x-jotd-claim-{}", name.to_ascii_lowercase()), v));
    }
    out
}

/// The first identity header `door` would write for an allowed decision that
/// no HTTP header can carry (its name), if any. The proxy writes the subject
/// alone.
pub(crate) fn unwritable(
    door: Door,
    tenant: &str,
    d: &jotd_transport::ClientDecision,
) -> Option<String> {
    use hyper::header::{HeaderName, HeaderValue};
    let headers = match door {
        Door::Proxy | Door::WebSocket => d
            .sub
            .iter()
            .map(|s| ("x-jotd-subject".to_owned(), s.clone()))
            .collect(),
        Door::ForwardAuth | Door::ExtAuthz => identity_headers(tenant, d),
    };
    headers
        .into_iter()
        .find(|(n, v)| {
            HeaderName::from_bytes(n.as_bytes()).is_err()
                || HeaderValue::from_str(v).is_err()
                || !carried_whole(v)
        })
        .map(|(n, _)| n)
}

/// Whether a header value reaches the node as written: HTTP parsers strip
/// blanks at either end of a value (RFC 9110 §5.5), so a subject `"alice "`
/// would arrive as `alice`, an identity the token does not name (and one a
/// denylist entry for `alice` does not revoke); a tab inside is read as a
/// blank by some. Such a value is refused rather than passed on changed.
fn carried_whole(v: &str) -> bool {
    !v.starts_with([' ', '\t']) && !v.ends_with([' ', '\t']) && !v.contains('\t')
}

fn describe(e: &CheckError) -> String {
    match e {
        CheckError::Client(c) => format!("jotd pool: {c}"),
        other => format!("jotd pool: {other}"),
    }
}

/// The "no decision" log lines, rate-limited across every door: refused
/// (fail closed) and let through (fail open) apart, so neither hides the other.
static NO_DECISION: jotd_transport::ratelimit::RateLimited =
    jotd_transport::ratelimit::RateLimited::new(std::time::Duration::from_secs(10));
static FAIL_OPEN: jotd_transport::ratelimit::RateLimited =
    jotd_transport::ratelimit::RateLimited::new(std::time::Duration::from_secs(10));

/// The `outcome` label of one check through `door`.
fn outcome(door: Door, verdict: &Verdict) -> &'static str {
    match verdict {
        // Not a denial: the socket stays open and its messages are checked
        // (and counted) one by one.
        Verdict::Deny(r, _) if door == Door::WebSocket && per_call(*r) => "ok",
        _ => verdict.reason_name(),
    }
}

fn count(door: Door, v: &[Verdict]) {
    for verdict in v {
        metrics::counter!(
            "jotd_gateway_checks_total",
            "door" => door.as_str(),
            "outcome" => outcome(door, verdict),
        )
        .increment(1);
        if let Verdict::Unavailable(why) | Verdict::FailOpen(why) = verdict {
            // One line per check would be a line per JSON-RPC call while the
            // pool is down (a 1,000-call batch, 1,000 lines): at most one
            // every 10 s, counting the rest (`jotd_gateway_checks_total` has
            // every one).
            let limiter = match verdict {
                Verdict::FailOpen(_) => &FAIL_OPEN,
                _ => &NO_DECISION,
            };
            limiter.log(|suppressed| {
                tracing::warn!(
                    door = door.as_str(),
                    suppressed,
                    "no decision: {why} (suppressed: like lines left out since the last)"
                );
            });
        }
    }
}

/// The `WWW-Authenticate` value for a token denial (RFC 6750 §3: no error
/// code when the request had no token).
#[must_use]
pub fn www_authenticate(reason: Reason) -> String {
    if reason == Reason::MissingToken {
        "Bearer realm=\"jotd\"".into()
    } else {
        format!(
            "Bearer realm=\"jotd\", error=\"invalid_token\", error_description=\"{}\"",
            reason.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a held check can produce while the pool is connected fails
    /// closed in every form; a pool that is down (or a lost connection,
    /// `overloaded`) may fail open.
    #[test]
    fn only_a_pool_that_is_down_fails_open() {
        use jotd_transport::{ClientError as E, ErrorCode};
        let at: std::net::SocketAddr = "127.0.0.1:4433".parse().unwrap();
        let server = |code: ErrorCode| E::Server {
            endpoint: at,
            code: code as u16,
            message: String::new(),
        };
        let timeout = || E::Timeout(Duration::from_secs(2));
        for (e, connected, down) in [
            (CheckError::Deadline, true, false),
            (CheckError::Deadline, false, true),
            (CheckError::Client(timeout()), true, false),
            (CheckError::Client(timeout()), false, true),
            (
                CheckError::Client(server(ErrorCode::RequestTimeout)),
                true,
                false,
            ),
            (
                CheckError::Client(E::Unavailable {
                    tried: 2,
                    last: Some(Box::new(timeout())),
                }),
                true,
                false,
            ),
            (
                CheckError::Client(server(ErrorCode::Overloaded)),
                true,
                true,
            ),
            (
                CheckError::Client(E::Unavailable {
                    tried: 1,
                    last: None,
                }),
                false,
                true,
            ),
            (
                CheckError::Client(server(ErrorCode::MalformedFrame)),
                false,
                false,
            ),
            (CheckError::Overloaded, false, false),
            (CheckError::Closed, false, false),
        ] {
            assert_eq!(
                pool_down(&e, || connected),
                down,
                "{e:?}, connected {connected}"
            );
        }
    }

    fn allowed(sub: &str, claims: &[(&str, &str)]) -> jotd_transport::ClientDecision {
        jotd_transport::ClientDecision {
            allow: true,
            reason: Reason::Ok.code(),
            kid: Some("k1".into()),
            sub: Some(sub.into()),
            exp: None,
            claims: claims
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    /// The gate refuses (and counts as `invalid_claim`) what a door could not
    /// write; before, the authorizer doors refused after the gate had counted
    /// the check `ok`.
    #[test]
    fn each_door_is_held_to_the_identity_headers_it_writes() {
        let fine = allowed("alice", &[("scope", r#""read write""#), ("n", "3")]);
        for door in [Door::Proxy, Door::ForwardAuth, Door::ExtAuthz] {
            assert_eq!(unwritable(door, "t", &fine), None, "{door:?}");
        }
        // A claim name no header name can be, a value with a line break: the
        // proxy does not write claims; the authorizer doors do.
        for bad in [
            allowed("alice", &[("https://example.com/roles", r#""admin""#)]),
            allowed("alice", &[("scope", r#""read\nX-Injected: 1""#)]),
        ] {
            assert_eq!(unwritable(Door::Proxy, "t", &bad), None);
            for door in [Door::ForwardAuth, Door::ExtAuthz] {
                assert!(
                    unwritable(door, "t", &bad).is_some_and(|h| h.starts_with("x-jotd-claim-")),
                    "{door:?}"
                );
            }
        }
        // Every door writes the subject: one that would not arrive as
        // written (a line break; blanks at an end, which parsers strip, so
        // `alice ` would reach the node as `alice`; a tab) is refused.
        for written in [
            "alice\r\nX-Injected: 1",
            "alice ",
            " alice",
            "alice\t",
            "a\tb",
        ] {
            let sub = allowed(written, &[]);
            for door in [Door::Proxy, Door::ForwardAuth, Door::ExtAuthz] {
                assert_eq!(
                    unwritable(door, "t", &sub).as_deref(),
                    Some("x-jotd-subject"),
                    "{door:?} {written:?}"
                );
            }
        }
        // UTF-8 beyond ASCII is written as its bytes (a header value may hold them).
        assert_eq!(unwritable(Door::Proxy, "t", &allowed("josé", &[])), None);
        let padded = allowed("alice", &[("scope", r#"" read""#)]);
        for door in [Door::ForwardAuth, Door::ExtAuthz] {
            assert_eq!(
                unwritable(door, "t", &padded).as_deref(),
                Some("x-jotd-claim-scope"),
                "{door:?}"
            );
        }
        // What the authorizer doors write is what was checked.
        let headers = identity_headers("t", &fine);
        let want = [
            ("x-jotd-tenant", "t"),
            ("x-jotd-reason", "ok"),
            ("x-jotd-subject", "alice"),
            ("x-jotd-kid", "k1"),
            ("x-jotd-claim-scope", "read write"),
            ("x-jotd-claim-n", "3"),
        ]
        .map(|(n, v)| (n.to_owned(), v.to_owned()));
        assert_eq!(headers, want);
    }

    /// A WebSocket's token check has no call: a per-call reason there is not
    /// a denial (an idle Besu socket counted a `permission_denied` at its
    /// upgrade and at every recheck); the same reason on a call is.
    #[test]
    fn per_call_reasons_of_a_websocket_check_count_as_ok() {
        for r in [
            Reason::MethodNotAllowed,
            Reason::AddressNotAllowed,
            Reason::PermissionDenied,
        ] {
            assert_eq!(outcome(Door::WebSocket, &Verdict::Deny(r, None)), "ok");
            for door in [Door::Proxy, Door::ForwardAuth, Door::ExtAuthz] {
                assert_eq!(outcome(door, &Verdict::Deny(r, None)), r.as_str());
            }
        }
        assert_eq!(
            outcome(Door::WebSocket, &Verdict::Deny(Reason::Expired, None)),
            Reason::Expired.as_str()
        );
    }
}
