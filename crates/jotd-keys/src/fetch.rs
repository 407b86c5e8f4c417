//! JWKS over HTTPS: periodic refresh (bounded by `Cache-Control: max-age`),
//! a single-flight, rate-limited refetch when a token names an unknown kid,
//! stale-if-error (the last good keys keep serving, with their age on record,
//! for at most [`FetchConfig::max_stale`] when one is set),
//! and limits on time and size for every fetch. URLs come from the config only.
//!
//! The HTTP client is reqwest on rustls with aws-lc-rs, trusting the system's
//! roots plus any extra CA given in [`FetchConfig`] (private IdPs, tests).
//! Time is tokio's, so tests can pause it.

use crate::jwk::JwkError;
use crate::load::KeysConfig;
use crate::reload::Reloader;
use crate::tenants::JwksLocation;
use jotd_core::Algorithm;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Fetcher settings. Every field has a default (see [`FetchConfig::default`]).
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Whole-request time limit (connect, headers, body). Default: 10 s.
    pub timeout: Duration,
    /// Largest JWKS document accepted. Default: 512 KiB.
    pub max_bytes: usize,
    /// Least time between two fetches of one source triggered by unknown kids. Default: 30 s.
    pub refetch_interval: Duration,
    /// Shortest refresh, whatever `max-age` says. Default: 10 s.
    pub min_refresh: Duration,
    /// First retry delay after a failure, doubling up to the refresh interval. Default: 5 s.
    pub retry_after: Duration,
    /// Extra trusted CA certificates (PEM), besides the system's roots.
    pub extra_roots_pem: Option<Vec<u8>>,
    /// How long a source's last good keys outlive failed fetches: once they
    /// are older than this, a fetch is tried at once and, if it fails, the
    /// keys are dropped (their tokens are `unknown_kid` until a fetch
    /// succeeds). `None`: kept however old. Default: `None`.
    pub max_stale: Option<Duration>,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_bytes: 512 << 10,
            refetch_interval: Duration::from_secs(30),
            min_refresh: Duration::from_secs(10),
            retry_after: Duration::from_secs(5),
            extra_roots_pem: None,
            max_stale: None,
        }
    }
}

impl FetchConfig {
    /// Checks the settings as [`JwksFetcher::new`] does: `timeout` up to 10
    /// min, the other times up to a day (a time near `Duration::MAX`
    /// overflowed a clock), `timeout`, `min_refresh` and `retry_after` above
    /// zero (zero refreshed or retried in a busy loop against the identity
    /// provider), `max_stale` above zero and at most 30 days when set,
    /// `max_bytes` 1 to 64 MiB. The daemon's `[jwks_fetch]` section
    /// is stricter (whole seconds from 1).
    ///
    /// # Errors
    /// The first setting out of range, named.
    pub fn validate(&self) -> Result<(), FetchError> {
        const DAY: Duration = Duration::from_secs(86_400);
        for (name, t, zero_ok, max) in [
            ("timeout", self.timeout, false, Duration::from_secs(600)),
            ("refetch_interval", self.refetch_interval, true, DAY),
            ("min_refresh", self.min_refresh, false, DAY),
            ("retry_after", self.retry_after, false, DAY),
        ] {
            if t > max || (t.is_zero() && !zero_ok) {
                let from = if zero_ok { "0" } else { "above 0" };
                return Err(FetchError::Setup(format!(
                    "{name} {t:?}: must be {from} and at most {max:?}"
                )));
            }
        }
        if let Some(t) = self.max_stale
            && (t.is_zero() || t > 30 * DAY)
        {
            return Err(FetchError::Setup(format!(
                "max_stale {t:?}: must be above 0 and at most {:?}",
                30 * DAY
            )));
        }
        if let Some(t) = self.max_stale
            && t < self.min_refresh
        {
            // Keys would pass max_stale before a refetch is allowed: every
            // source would drop its keys between two fetches.
            return Err(FetchError::Setup(format!(
                "max_stale {t:?}: must be at least min_refresh ({:?})",
                self.min_refresh
            )));
        }
        if !(1..=64 << 20).contains(&self.max_bytes) {
            return Err(FetchError::Setup(format!(
                "max_bytes {}: must be 1 to 67108864 (64 MiB)",
                self.max_bytes
            )));
        }
        Ok(())
    }
}

/// Why one fetch failed. The source keeps its last good keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Connection, TLS or protocol failure.
    #[error("request failed: {0}")]
    Http(String),
    /// The server answered with a status other than 200.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The document exceeds the size limit.
    #[error("document larger than {0} bytes")]
    TooLarge(usize),
    /// The request took longer than the time limit.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The body is not a usable JWKS.
    #[error("{0}")]
    Jwks(#[from] JwkError),
    /// The client could not be built (bad extra CA).
    #[error("client setup: {0}")]
    Setup(String),
    /// One of the above from the server a redirect led to (shown redacted),
    /// not the configured one.
    #[error("{error} (at {at}, after a redirect)")]
    Redirected {
        /// The URL the failure happened at.
        at: String,
        /// What went wrong there.
        error: Box<Self>,
    },
}

/// Redirects followed for one JWKS fetch, at most.
pub const MAX_REDIRECTS: usize = 3;

/// Why a JWKS URL (configured, or the target of a redirect) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksUrlError {
    /// Not an absolute URL.
    #[error("not a URL ({0})")]
    Parse(String),
    /// A scheme other than `https` (or `http` to loopback).
    #[error("scheme `{0}` is not https")]
    Scheme(String),
    /// Plain `http` to a host that is not loopback.
    #[error(
        "plain http only to a loopback host (127.0.0.0/8, [::1] or exactly `localhost`), not `{0}`"
    )]
    NotLoopback(String),
    /// `user[:password]@` in the URL: it hides the real host from a reader.
    #[error("the URL carries userinfo (`…@`); put no credentials in a JWKS URL")]
    Userinfo,
}

/// `url` as it is shown (logs, metrics labels, `/readyz`, errors): any
/// `user:password@` and fragment left out, the query replaced by a short
/// digest of it.
#[must_use]
pub fn redacted_url(url: &str) -> String {
    let Ok(mut u) = reqwest::Url::parse(url) else {
        return "(not a URL)".to_owned();
    };
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_fragment(None);
    // A query may carry a credential (`?access_token=…`, a presigned object
    // store URL after a redirect): shown as a short digest, so two sources
    // that differ only there stay two.
    let query = u.query().map(|q| {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, q.as_bytes());
        d.as_ref()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    });
    u.set_query(None);
    match query {
        Some(q) => format!("{u}?…{q}"),
        None => u.to_string(),
    }
}

/// Checks a JWKS URL on its **parsed** host: `https` to any host, plain
/// `http` only to 127.0.0.0/8, `[::1]` or exactly `localhost` (never by
/// string prefix: `http://localhost.evil.example/` is not loopback), and no
/// userinfo anywhere. The same rule judges the config and every redirect.
///
/// # Errors
/// See [`JwksUrlError`].
pub fn check_jwks_url(url: &str) -> Result<reqwest::Url, JwksUrlError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| JwksUrlError::Parse(e.to_string()))?;
    check_parsed_url(&parsed)?;
    Ok(parsed)
}

fn check_parsed_url(url: &reqwest::Url) -> Result<(), JwksUrlError> {
    if !url.username().is_empty() || url.password().is_some() {
        return Err(JwksUrlError::Userinfo);
    }
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Domain(d)) => d == "localhost",
                Some(url::Host::Ipv4(a)) => a.is_loopback(),
                Some(url::Host::Ipv6(a)) => a.is_loopback(),
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                Err(JwksUrlError::NotLoopback(
                    url.host_str().unwrap_or_default().to_owned(),
                ))
            }
        }
        other => Err(JwksUrlError::Scheme(other.to_owned())),
    }
}

/// Whether `ip` is an address inside a network rather than on the
/// internet: loopback, private (RFC 1918, IPv6 unique local), link-local
/// (cloud metadata services live at 169.254.169.254), shared (CGNAT
/// 100.64/10), benchmarking (198.18/15), IETF protocol assignments
/// (192.0.0/24), reserved (240/4, broadcast included), unspecified,
/// multicast, `0/8`, IPv6 site-local, and IPv4 held in an IPv6 address
/// (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`,
/// 6to4 `2002::/16`, Teredo `2001::/32`'s client) when that IPv4 address
/// is internal; the NAT64 local-use prefix `64:ff9b:1::/48` always.
#[must_use]
pub(crate) fn internal_address(ip: std::net::IpAddr) -> bool {
    use std::net::{IpAddr, Ipv4Addr};
    match ip {
        IpAddr::V4(a) => {
            let [first, second, third, _] = a.octets();
            a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_multicast()
                || first == 0
                || first >= 240
                || (first == 100 && second & 0xc0 == 64)
                || (first == 198 && second & 0xfe == 18)
                || (first == 192 && second == 0 && third == 0)
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            let v4 = |hi: u16, lo: u16| Ipv4Addr::from(u32::from(hi) << 16 | u32::from(lo));
            let embedded = [
                a.to_ipv4_mapped(),
                // IPv4-compatible (deprecated), past `::` and `::1`.
                (s[..6] == [0; 6] && (s[6] != 0 || s[7] > 1)).then(|| v4(s[6], s[7])),
                (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]).then(|| v4(s[6], s[7])),
                (s[0] == 0x2002).then(|| v4(s[1], s[2])),
                (s[..2] == [0x2001, 0]).then(|| v4(!s[6], !s[7])),
            ];
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                // NAT64 local-use (RFC 8215): local by definition, and its
                // prefixes of /48 to /64 place the IPv4 address around the
                // u-octet, so reading it from the last 32 bits is wrong.
                || s[..3] == [0x64, 0xff9b, 1]
                || s[0] & 0xfe00 == 0xfc00
                || s[0] & 0xffc0 == 0xfe80
                || s[0] & 0xffc0 == 0xfec0
                || embedded
                    .into_iter()
                    .flatten()
                    .any(|v4| internal_address(IpAddr::V4(v4)))
        }
    }
}

/// Why a JWKS URL's host is internal as written (an internal address
/// literal, or `localhost`), or `None`. Names that resolve inside are
/// found when fetched (the resolver).
#[must_use]
pub(crate) fn internal_host(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    match u.host()? {
        url::Host::Ipv4(a) => {
            internal_address(a.into()).then(|| format!("{a} is an internal address"))
        }
        url::Host::Ipv6(a) => {
            internal_address(a.into()).then(|| format!("{a} is an internal address"))
        }
        url::Host::Domain(d) => {
            let d = host_key(d);
            (d == "localhost" || d.ends_with(".localhost")).then(|| format!("{d} is this machine"))
        }
    }
}

/// Refuses an unmarked JWKS URL at a host some `internal = true` URL marks,
/// on a port no marked URL names: the resolver lets a marked name resolve
/// inside whatever the port, so that URL would reach another service of the
/// inside machine. `place(tenant, source)` gives the line and key of a
/// source for the error.
pub(crate) fn check_internal_ports(
    tenants: &[crate::TenantSpec],
    place: &dyn Fn(usize, usize) -> (usize, String),
) -> Result<(), (usize, String, String)> {
    let mut marked = InternalHosts::default();
    for s in tenants.iter().flat_map(|t| t.jwks.iter()) {
        marked.add(s);
    }
    if marked.hosts.is_empty() {
        return Ok(());
    }
    for (ti, t) in tenants.iter().enumerate() {
        for (si, s) in t.jwks.iter().enumerate() {
            let JwksLocation::Url(url) = &s.location else {
                continue;
            };
            if s.internal {
                continue;
            }
            let Ok(u) = reqwest::Url::parse(url) else {
                continue;
            };
            let (Some(h), Some(port)) = (u.host_str(), u.port_or_known_default()) else {
                continue;
            };
            let h = host_key(h);
            if marked.hosts.contains(&h) && !marked.pairs.contains(&(h.clone(), port)) {
                let (line, key) = place(ti, si);
                let mut ports: Vec<u16> = marked
                    .pairs
                    .iter()
                    .filter(|(mh, _)| *mh == h)
                    .map(|(_, p)| *p)
                    .collect();
                ports.sort_unstable();
                return Err((
                    line,
                    key,
                    format!(
                        "`{}`: {h} is marked internal (`internal = true`) at port(s) {ports:?} only; \
                         another port of it is another service of an inside machine (mark this \
                         source too if it is an identity provider)",
                        redacted_url(url)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A URL's host as the internal-address rules compare it: lower case,
/// without IPv6 brackets or a trailing dot.
fn host_key(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Where the config lets a fetch reach an internal address: the hosts, and
/// (host, port) pairs, of the JWKS URLs marked `internal = true`.
#[derive(Default)]
struct InternalHosts {
    hosts: HashSet<String>,
    pairs: HashSet<(String, u16)>,
}

impl InternalHosts {
    fn of(config: &KeysConfig) -> Self {
        let mut out = Self::default();
        for s in config.tenants.iter().flat_map(|t| t.jwks.iter()) {
            out.add(s);
        }
        out
    }

    /// Adds `s` when it is a URL marked `internal = true`.
    fn add(&mut self, s: &crate::JwksSource) {
        if let (true, JwksLocation::Url(url)) = (s.internal, &s.location)
            && let Ok(u) = reqwest::Url::parse(url)
            && let (Some(h), Some(port)) = (u.host_str(), u.port_or_known_default())
        {
            let h = host_key(h);
            self.pairs.insert((h.clone(), port));
            self.hosts.insert(h);
        }
    }
}

/// An [`InternalHosts`] and the config snapshot it was built from.
type Built = (std::sync::Weak<KeysConfig>, Arc<InternalHosts>);

/// The internal-address rule every fetch goes through. An internal address
/// (loopback, private, link-local and the rest: [`internal_address`]) is
/// reached only at a host that a JWKS URL marked `internal = true` names,
/// by literal (the redirect rule) or by name (the resolver); a redirect to
/// such a host must also keep to a port one of those URLs names. A URL not
/// so marked whose name resolves inside (a tenant's own IdP domain pointed
/// at 10.0.0.5 or the metadata service) fails its fetch, and an identity
/// provider turned hostile cannot steer jotd at an admin port on the inside.
/// The set is built once per config snapshot (not per resolution).
#[derive(Clone)]
struct NamedHosts {
    reloader: Option<Arc<Reloader>>,
    built: Arc<Mutex<Option<Built>>>,
}

impl NamedHosts {
    fn new(reloader: Option<Arc<Reloader>>) -> Self {
        Self {
            reloader,
            built: Arc::new(Mutex::new(None)),
        }
    }

    /// The serving config's [`InternalHosts`].
    fn current(&self) -> Arc<InternalHosts> {
        let Some(reloader) = &self.reloader else {
            return Arc::default();
        };
        let config = reloader.config();
        let mut built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((of, set)) = &*built
            && std::ptr::eq(of.as_ptr(), Arc::as_ptr(&config))
        {
            return Arc::clone(set);
        }
        let set = Arc::new(InternalHosts::of(&config));
        *built = Some((Arc::downgrade(&config), Arc::clone(&set)));
        set
    }

    /// Whether `host` may be reached at an internal address (by name: the
    /// resolver does not know the port).
    fn names(&self, host: &str) -> bool {
        self.current().hosts.contains(&host_key(host))
    }
}

impl reqwest::dns::Resolve for NamedHosts {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let named = self.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(inside) = addrs.iter().find(|a| internal_address(a.ip()))
                && !named.names(&host)
            {
                return Err(format!(
                    "`{host}` resolves to the internal address {}, and no JWKS URL \
                     of the config marked `internal = true` names that host",
                    inside.ip()
                )
                .into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The redirect rule: at most [`MAX_REDIRECTS`], never a change of scheme
/// (so an `https` source never ends on plain `http`), every target must
/// pass [`check_jwks_url`], and an internal address (by literal here, by
/// name in [`NamedHosts`]'s resolver) only at a host, and here a port, that
/// a JWKS URL marked `internal = true` names.
fn redirect_policy(named: NamedHosts) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        let from = attempt.previous().last().cloned();
        let to = attempt.url().clone();
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        if let Some(from) = &from
            && from.scheme() != to.scheme()
        {
            return attempt.error(format!(
                "redirect from {} to {} changes the scheme; refused",
                redacted_url(from.as_str()),
                redacted_url(to.as_str())
            ));
        }
        if let Err(e) = check_parsed_url(&to) {
            return attempt.error(format!(
                "redirect to {} refused: {e}",
                redacted_url(to.as_str())
            ));
        }
        let internal = named.current();
        let host = to.host_str().map(host_key).unwrap_or_default();
        if internal.hosts.contains(&host) {
            // A host marked internal, at a port no marked URL names: its
            // other services are not the identity provider's.
            let port = to.port_or_known_default().unwrap_or(0);
            if !internal.pairs.contains(&(host.clone(), port)) {
                return attempt.error(format!(
                    "redirect to {} refused: {host} is marked internal only at the \
                     ports its `internal = true` JWKS URLs name, not {port}",
                    redacted_url(to.as_str())
                ));
            }
            return attempt.follow();
        }
        let literal = match to.host() {
            Some(url::Host::Ipv4(a)) => Some(std::net::IpAddr::V4(a)),
            Some(url::Host::Ipv6(a)) => Some(std::net::IpAddr::V6(a)),
            _ => None,
        };
        if let Some(ip) = literal
            && internal_address(ip)
        {
            return attempt.error(format!(
                "redirect to {} refused: {ip} is an internal address, and no JWKS URL of \
                 the config marked `internal = true` names that host",
                redacted_url(to.as_str())
            ));
        }
        attempt.follow()
    })
}

/// An error and its causes, one line (reqwest keeps the useful part in `source()`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// Health of one URL source, for `/readyz` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceHealth {
    /// Tenant id.
    pub tenant: String,
    /// The URL.
    pub url: String,
    /// Time since the last good fetch; `None` when never fetched.
    pub age: Option<Duration>,
    /// The configured refresh interval.
    pub refresh: Duration,
    /// Fetches that failed in a row.
    pub failures: u32,
    /// The last failure, until a fetch succeeds.
    pub last_error: Option<FetchError>,
    /// Fetches done so far (good or not), counted on the source whose tenant
    /// ran them: a fetch of a URL shared by several tenants counts once.
    pub fetches: u64,
    /// Whether a fetch of this source's URL (this tenant's or one shared with
    /// another tenant) has finished, good or not.
    pub tried: bool,
    /// Fetches that failed, in all.
    pub failed_total: u64,
    /// The URL the installed keys actually came from (after redirects);
    /// `None` until a fetch succeeds.
    pub keys_url: Option<String>,
    /// Whether the last good keys were dropped, older than
    /// [`FetchConfig::max_stale`] when a fetch failed (until one succeeds).
    pub dropped: bool,
}

#[derive(Debug, Default)]
struct Info {
    /// When the last good fetch finished.
    last_good: Option<Instant>,
    /// When the last fetch (good or not) finished.
    last_attempt: Option<Instant>,
    /// When the last fetch triggered by an unknown kid finished (the rate limit's clock).
    last_triggered: Option<Instant>,
    next_due: Option<Instant>,
    failures: u32,
    last_error: Option<FetchError>,
    fetches: u64,
    failed_total: u64,
    /// Where the last good document came from, after redirects.
    keys_url: Option<String>,
    /// When the last good keys pass [`FetchConfig::max_stale`]: a fetch is
    /// due then, and its failure drops them. `None`: no limit, or dropped.
    expires: Option<Instant>,
    /// The last good keys were dropped (past `max_stale`, a fetch failed).
    dropped: bool,
    /// The source's `alg` and `symmetric_keys` at the last fetch (good or
    /// not): `None` before the first.
    fetched_for: Option<(Option<Algorithm>, bool)>,
}

impl Info {
    /// When the source falls due; `None` when it is due now: never fetched, or the
    /// config's `alg` or `symmetric_keys` changed since the last fetch (keys read
    /// under the old settings are not used, so the new ones are fetched at once,
    /// not at the next refresh).
    fn due(&self, t: &Target) -> Option<Instant> {
        if self.fetched_for != Some((t.alg, t.symmetric_keys)) {
            return None;
        }
        match (self.next_due, self.expires) {
            (Some(due), Some(expires)) => Some(due.min(expires)),
            (due, expires) => due.or(expires),
        }
    }
}

#[derive(Debug, Default)]
struct Source {
    info: Mutex<Info>,
}

/// One URL as read (a [`UrlKey`]): every tenant reading it alike fetches it
/// through this, one fetch at a time.
#[derive(Debug, Default)]
struct Flight {
    /// Held while the URL is fetched.
    lock: tokio::sync::Mutex<()>,
    /// Unknown-kid triggers queued on `lock` now (see [`MAX_WAITERS`]).
    waiters: std::sync::atomic::AtomicUsize,
}

/// Unknown-kid triggers that may wait on one URL's fetch in flight, whichever
/// tenants they name. Past it a trigger returns at once (its batch is decided
/// on the keys at hand): a flood of forged kids while the IdP is slow would
/// otherwise queue a task per batch for as long as the fetch takes. Counted per
/// URL, not per tenant: counted per tenant, forged kids naming a few tenants
/// behind one slow identity provider held every trigger of [`MAX_TRIGGERS`],
/// and a rotation at another provider went unfetched.
pub const MAX_WAITERS: usize = 256;

/// Unknown-kid triggers waiting or fetching at once, across every source:
/// [`MAX_WAITERS`] counts per URL, and forged kids naming tenants of many
/// slow identity providers could otherwise park a trigger per waiter of
/// each (each holding its fetch's state) and start a fetch per URL without
/// bound. Past it a trigger is answered at once: the keys at hand decide
/// (`unknown_kid`).
pub const MAX_TRIGGERS: usize = 1024;

/// Sources fetched at once by [`JwksFetcher::refresh_due`].
pub const PARALLEL_FETCHES: usize = 16;

/// A place among a URL's waiters, given back on drop.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn take(count: &'a std::sync::atomic::AtomicUsize) -> Option<Self> {
        use std::sync::atomic::Ordering::Relaxed;
        count
            .fetch_update(Relaxed, Relaxed, |n| (n < MAX_WAITERS).then_some(n + 1))
            .ok()
            .map(|_| Self(count))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What one fetch did, for the daemon's logs and metrics.
#[derive(Debug)]
pub enum FetchEvent<'a> {
    /// Keys were installed.
    Installed {
        /// Tenant id.
        tenant: &'a str,
        /// The configured URL.
        url: &'a str,
        /// The URL the keys actually came from (differs after a redirect).
        keys_url: &'a str,
        /// Keys installed.
        keys: usize,
        /// Why keys of the document were left out, one line each (`kid "k": why`),
        /// the first [`MAX_SKIPPED_LISTED`](crate::jwk::MAX_SKIPPED_LISTED).
        skipped: &'a [String],
        /// Keys left out in all, listed or not.
        left_out: usize,
        /// Kids the tenant now has from two sources with other key material
        /// (this document and another, or two others: a static key, a JWKS
        /// file, another URL, listed earlier or later): the first listed
        /// wins, so the other's key for them verifies nothing.
        shadowed: &'a [String],
    },
    /// The fetch failed; the source keeps its last good keys (unless a
    /// [`FetchEvent::Dropped`] for it follows).
    Failed {
        /// Tenant id.
        tenant: &'a str,
        /// The configured URL.
        url: &'a str,
        /// Why.
        error: &'a FetchError,
    },
    /// A fetch failed while the source's last good keys were older than
    /// [`FetchConfig::max_stale`]: they were dropped.
    Dropped {
        /// Tenant id.
        tenant: &'a str,
        /// The configured URL.
        url: &'a str,
        /// Age of the dropped keys (since their fetch).
        age: Duration,
        /// The configured limit.
        max_stale: Duration,
    },
}

/// Called with every fetch's outcome (refreshes and unknown-kid refetches alike).
pub type FetchObserver = Box<dyn Fn(&FetchEvent<'_>) + Send + Sync>;

/// One URL source as the config lists it.
#[derive(Debug, Clone)]
struct Target {
    tenant: String,
    url: String,
    refresh: Duration,
    alg: Option<Algorithm>,
    symmetric_keys: bool,
}

impl Target {
    /// What one fetch serves: every tenant whose source names this URL with
    /// the same `alg` and `symmetric_keys` reads the same keys from it.
    fn url_key(&self) -> UrlKey {
        (self.url.clone(), self.alg, self.symmetric_keys)
    }
}

/// A URL as its keys are read: (URL, `alg`, `symmetric_keys`).
type UrlKey = (String, Option<Algorithm>, bool);

/// Which targets (by index) read each URL alike.
type ByUrl = Arc<HashMap<UrlKey, Vec<usize>>>;

/// A config, the URL sources it lists, and which of them read one URL alike.
type TargetsOf = (Arc<KeysConfig>, Arc<Vec<Target>>, ByUrl, ByTenant);

/// The targets of each tenant: a range of [`Target`]s (a tenant's sources
/// are listed together), so an unknown-kid trigger looks at its tenant's
/// sources alone, not every source of the config.
type ByTenant = Arc<HashMap<String, std::ops::Range<usize>>>;

/// Fetches every JWKS URL of the config and installs the keys through the [`Reloader`].
pub struct JwksFetcher {
    client: reqwest::Client,
    config: FetchConfig,
    reloader: Arc<Reloader>,
    observer: Option<FetchObserver>,
    sources: Mutex<HashMap<(String, String), Arc<Source>>>,
    /// Held while a URL is fetched, for every tenant reading it alike: one
    /// fetch at a time per URL (single flight across tenants).
    flights: Mutex<HashMap<UrlKey, Arc<Flight>>>,
    /// URL sources of the config they were computed from (held, so the pointer stays unique).
    targets: Mutex<Option<TargetsOf>>,
    /// Unknown-kid triggers waiting or fetching, across every source
    /// ([`MAX_TRIGGERS`]).
    triggers: Arc<tokio::sync::Semaphore>,
    /// URLs (as read) whose sources' due times a fetch has just set, for
    /// [`Self::run`] to put back on its agenda: a fetch outside the loop (an
    /// unknown-kid refetch that failed) can make a source due sooner than
    /// the agenda says.
    moved: Mutex<HashSet<UrlKey>>,
    /// Wakes [`Self::run`] when `moved` gains a URL.
    moved_wake: tokio::sync::Notify,
}

impl std::fmt::Debug for JwksFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksFetcher")
            .field("config", &self.config)
            .field("observer", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `max-age` from a `Cache-Control` header (`no-store`/`no-cache` count as 0).
#[must_use]
pub fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').map(str::trim).find_map(|d| {
        let d = d.to_ascii_lowercase();
        if d == "no-store" || d == "no-cache" {
            return Some(Duration::ZERO);
        }
        d.strip_prefix("max-age=")
            .and_then(|v| v.trim_matches('"').parse().ok())
            .map(Duration::from_secs)
    })
}

/// Checks what [`JwksFetcher::new`] will build from `config` (the extra CA
/// above all), without a reloader: `jotd config check` refuses what `jotd
/// serve` would. Returns how many extra CA certificates it holds.
///
/// # Errors
/// As [`JwksFetcher::new`].
pub fn check_fetch_config(config: &FetchConfig) -> Result<usize, FetchError> {
    client(config, NamedHosts::new(None))?;
    Ok(match &config.extra_roots_pem {
        Some(pem) => extra_roots(pem)?.len(),
        None => 0,
    })
}

/// The certificates of an extra CA bundle: at least one. A file with none
/// (a key, a typo'd path to the wrong PEM) trusted nothing and said nothing.
fn extra_roots(pem: &[u8]) -> Result<Vec<reqwest::Certificate>, FetchError> {
    let certs = reqwest::Certificate::from_pem_bundle(pem)
        .map_err(|e| FetchError::Setup(format!("extra CA: {e}")))?;
    if certs.is_empty() {
        return Err(FetchError::Setup(
            "extra CA: no PEM CERTIFICATE block in it".into(),
        ));
    }
    Ok(certs)
}

/// The HTTP client every fetch goes through.
fn client(config: &FetchConfig, named: NamedHosts) -> Result<reqwest::Client, FetchError> {
    config.validate()?;
    let mut builder = reqwest::Client::builder()
        .timeout(config.timeout)
        .https_only(false)
        // No proxy from the environment: "plain http only to loopback" must hold on the
        // wire, and an https source must not be steered through a proxy it did not name.
        .no_proxy()
        .redirect(redirect_policy(named.clone()))
        .dns_resolver(Arc::new(named))
        .user_agent(concat!("jotd/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = &config.extra_roots_pem {
        builder = builder.tls_certs_merge(extra_roots(pem)?);
    }
    builder
        .build()
        .map_err(|e| FetchError::Setup(e.to_string()))
}

impl JwksFetcher {
    /// Builds the client.
    ///
    /// # Errors
    /// A setting out of range ([`FetchConfig::validate`]), an extra CA
    /// without a certificate, or the TLS client cannot be built.
    pub fn new(reloader: Arc<Reloader>, config: FetchConfig) -> Result<Self, FetchError> {
        let client = client(&config, NamedHosts::new(Some(Arc::clone(&reloader))))?;
        Ok(Self {
            client,
            config,
            reloader,
            observer: None,
            sources: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
            moved: Mutex::new(HashSet::new()),
            moved_wake: tokio::sync::Notify::new(),
            triggers: Arc::new(tokio::sync::Semaphore::new(MAX_TRIGGERS)),
            targets: Mutex::new(None),
        })
    }

    /// Reports every fetch's outcome to `observer` (the daemon logs and counts them).
    #[must_use]
    pub fn with_observer(mut self, observer: FetchObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    fn report(&self, event: &FetchEvent<'_>) {
        if let Some(observer) = &self.observer {
            observer(event);
        }
    }

    /// The config's URL sources, computed once per config (a reload makes a new one),
    /// so the refresh loop and unknown-kid triggers do not rescan every tenant.
    fn targets(&self) -> Arc<Vec<Target>> {
        self.targets_and_urls().0
    }

    /// `tenant`'s URL sources (an index lookup, not a walk of every source).
    fn tenant_targets(&self, tenant: &str) -> Vec<Target> {
        // Brings the cache up to date; the list and its index are then read
        // from the one cache entry (a config change in between would pair a
        // new index with an old list).
        let _ = self.targets_and_urls();
        let cached = lock(&self.targets);
        let Some((_, targets, _, by_tenant)) = &*cached else {
            return Vec::new();
        };
        by_tenant
            .get(tenant)
            .and_then(|r| targets.get(r.clone()))
            .map(<[Target]>::to_vec)
            .unwrap_or_default()
    }

    /// [`Self::targets`], and the targets that read each URL alike.
    fn targets_and_urls(&self) -> (Arc<Vec<Target>>, ByUrl) {
        let cfg = self.reloader.config();
        let mut cached = lock(&self.targets);
        if let Some((of, targets, by_url, _)) = &*cached
            && Arc::ptr_eq(of, &cfg)
        {
            return (Arc::clone(targets), Arc::clone(by_url));
        }
        let targets: Arc<Vec<Target>> = Arc::new(
            cfg.tenants
                .iter()
                .flat_map(|t| {
                    t.jwks.iter().filter_map(|s| match &s.location {
                        JwksLocation::Url(url) => Some(Target {
                            tenant: t.tenant.id.to_string(),
                            url: url.clone(),
                            refresh: s.refresh,
                            alg: s.alg,
                            symmetric_keys: s.symmetric_keys,
                        }),
                        JwksLocation::File(_) => None,
                    })
                })
                .collect(),
        );
        let mut by_url: HashMap<UrlKey, Vec<usize>> = HashMap::new();
        for (i, t) in targets.iter().enumerate() {
            by_url.entry(t.url_key()).or_default().push(i);
        }
        let by_url = Arc::new(by_url);
        let mut by_tenant: HashMap<String, std::ops::Range<usize>> = HashMap::new();
        for (i, t) in targets.iter().enumerate() {
            by_tenant
                .entry(t.tenant.clone())
                .and_modify(|r| r.end = i + 1)
                .or_insert(i..i + 1);
        }
        *cached = Some((
            cfg,
            Arc::clone(&targets),
            Arc::clone(&by_url),
            Arc::new(by_tenant),
        ));
        // A source the new config no longer names is forgotten, and so is one
        // whose keys the reloader dropped (removed by a reload this fetcher
        // never saw, then named again): named (again), it starts afresh, due
        // now. Kept, it waited for its old next refresh with no keys, its
        // health showing the old fetch.
        let named: std::collections::HashSet<(&str, &str)> = targets
            .iter()
            .map(|t| (t.tenant.as_str(), t.url.as_str()))
            .collect();
        // A source whose keys this fetcher dropped itself (past max_stale) is
        // kept: the reloader holds none for it on purpose, and forgetting it
        // would clear its `dropped` mark at every reload (readiness then saw
        // "no keys loaded").
        lock(&self.sources).retain(|(tenant, url), source| {
            let info = lock(&source.info);
            named.contains(&(tenant.as_str(), url.as_str()))
                && (info.last_good.is_none()
                    || info.dropped
                    || self.reloader.has_fetched(tenant, url))
        });
        lock(&self.flights).retain(|key, _| by_url.contains_key(key));
        (targets, by_url)
    }

    /// The lock one fetch of `t`'s URL holds (shared by every tenant reading
    /// it alike).
    fn flight(&self, t: &Target) -> Arc<Flight> {
        Arc::clone(lock(&self.flights).entry(t.url_key()).or_default())
    }

    fn source(&self, t: &Target) -> Arc<Source> {
        Arc::clone(
            lock(&self.sources)
                .entry((t.tenant.clone(), t.url.clone()))
                .or_default(),
        )
    }

    fn http_error(&self, e: &reqwest::Error) -> FetchError {
        if e.is_timeout() {
            FetchError::Timeout(self.config.timeout)
        } else {
            // reqwest names the URL in its message: shown redacted.
            let text = error_chain(e);
            FetchError::Http(match e.url() {
                Some(u) => text.replace(u.as_str(), &redacted_url(u.as_str())),
                None => text,
            })
        }
    }

    /// GET + size limit + parse, nothing installed. Returns the keys and the server's max-age.
    async fn download(
        &self,
        t: &Target,
    ) -> Result<(crate::jwk::JwksKeys, Option<Duration>, String), FetchError> {
        let limit = self.config.max_bytes;
        let request = async {
            let mut resp = self
                .client
                .get(&t.url)
                .send()
                .await
                .map_err(|e| self.http_error(&e))?;
            let final_url = resp.url().to_string();
            // A failure past a redirect names the server that failed (URLs
            // compared parsed: `https://idp` is fetched as `https://idp/`).
            let redirected = reqwest::Url::parse(&t.url).ok().as_ref() != Some(resp.url());
            let at = |error| {
                if !redirected {
                    error
                } else {
                    FetchError::Redirected {
                        at: redacted_url(&final_url),
                        error: Box::new(error),
                    }
                }
            };
            if resp.status() != reqwest::StatusCode::OK {
                return Err(at(FetchError::Status(resp.status().as_u16())));
            }
            if resp.content_length().is_some_and(|n| n > limit as u64) {
                return Err(at(FetchError::TooLarge(limit)));
            }
            let age = resp
                .headers()
                .get(reqwest::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .and_then(max_age);
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| at(self.http_error(&e)))? {
                if body.len() + chunk.len() > limit {
                    return Err(at(FetchError::TooLarge(limit)));
                }
                body.extend_from_slice(&chunk);
            }
            Ok((body, age, final_url, redirected))
        };
        let (body, age, final_url, redirected) = tokio::time::timeout(self.config.timeout, request)
            .await
            .map_err(|_| FetchError::Timeout(self.config.timeout))??;
        let max_keys = self.reloader.config().max_jwks_keys;
        let keys = crate::jwk::parse_fetched_jwks(&body, t.alg, max_keys, t.symmetric_keys)
            .map_err(|e| {
                let e = FetchError::Jwks(e);
                if !redirected {
                    e
                } else {
                    FetchError::Redirected {
                        at: redacted_url(&final_url),
                        error: Box::new(e),
                    }
                }
            })?;
        Ok((keys, age, final_url))
    }

    /// Fetches one source now and records the outcome, for every tenant whose
    /// source reads this URL alike too (one fetch serves them all: N tenants
    /// of one identity provider are not N fetches per refresh, nor N per
    /// unknown-kid trigger); on success installs the keys for all of them.
    /// `triggered`: by an unknown kid (the rate limit's clock starts for all).
    /// The request is counted once, on `t`'s source.
    async fn fetch(&self, t: &Target, source: &Source, triggered: bool) -> Result<(), FetchError> {
        let mut result = self
            .download(t)
            .await
            .map(|(keys, age, final_url)| (Arc::new(keys), age, final_url));
        let now = Instant::now();
        {
            let mut info = lock(&source.info);
            info.fetches += 1;
            if result.is_err() {
                info.failed_total += 1;
            }
        }
        let (targets, by_url) = self.targets_and_urls();
        // Whether the config still reads `t`'s URL this way for its tenant:
        // a fetch begun before a reload changed the source's `alg` or
        // `symmetric_keys` (its keys are refused at install) must not record
        // its outcome over the new reading's (health showed the old fetch,
        // and the refresh loop scheduled by it).
        let current = by_url
            .get(&t.url_key())
            .is_some_and(|v| v.iter().any(|&i| targets[i].tenant == t.tenant));
        let sharing: Vec<&Target> = by_url
            .get(&t.url_key())
            .into_iter()
            .flatten()
            .map(|&i| &targets[i])
            .filter(|o| o.tenant != t.tenant)
            .collect();
        // Keys first, then the sources' records: a config change computing
        // the targets in between finds the keys installed for every source
        // it sees as fetched (else it forgot them, and they were fetched again).
        let mut shadowed = Vec::new();
        if let Ok((keys, _, _)) = &result {
            let tenants: Vec<String> = std::iter::once(t.tenant.clone())
                .chain(sharing.iter().map(|o| o.tenant.clone()))
                .collect();
            // Off the runtime's threads: a changed document rebuilds every
            // tenant that reads the URL (all of them, for an identity provider
            // that serves 100k tenants), which must not stall the I/O they run;
            // so is what takes the reloader's lock (held through a reload's
            // whole build).
            let reloader = Arc::clone(&self.reloader);
            let (url, keys) = (t.url.clone(), Arc::clone(keys));
            let installed = tokio::task::spawn_blocking(move || {
                let names: Vec<&str> = tenants.iter().map(String::as_str).collect();
                reloader.set_fetched_many(&names, &url, keys);
                reloader.shadowed_kids(&tenants[0])
            })
            .await;
            match installed {
                Ok(kids) => shadowed = kids,
                // A panic while installing (a bug) is this fetch's failure,
                // recorded and reported as one: re-raised, it ended the
                // refresh loop for good (nothing refreshed or expired again,
                // readiness still ready). Cancelled only at shutdown.
                Err(e) if e.is_panic() => {
                    lock(&source.info).failed_total += 1;
                    result = Err(FetchError::Setup(
                        "installing the fetched keys panicked (a bug): they were not installed"
                            .into(),
                    ));
                }
                Err(_) => {}
            }
        }
        // Every source that reads the URL alike, `t`'s first, gets the outcome.
        // Those whose last good keys are past `max_stale` lose them on a failure.
        let mut dropping: Vec<(String, Duration)> = Vec::new();
        let own = current.then_some(t);
        for o in own.into_iter().chain(sharing.iter().copied()) {
            let other = (o.tenant != t.tenant).then(|| self.source(o));
            let mut info = lock(other.as_deref().map_or(&source.info, |s| &s.info));
            info.last_attempt = Some(now);
            info.fetched_for = Some((o.alg, o.symmetric_keys));
            if triggered {
                info.last_triggered = Some(now);
            }
            match &result {
                Ok((_, age, final_url)) => {
                    let refresh = age
                        .map_or(o.refresh, |a| a.min(o.refresh))
                        .max(self.config.min_refresh);
                    info.next_due = Some(now + refresh);
                    info.last_good = Some(now);
                    info.failures = 0;
                    info.last_error = None;
                    info.keys_url = Some(final_url.clone());
                    info.expires = self.config.max_stale.map(|m| now + m);
                    info.dropped = false;
                }
                Err(e) => {
                    info.failures = info.failures.saturating_add(1);
                    let backoff = self
                        .config
                        .retry_after
                        .saturating_mul(1 << info.failures.min(16).saturating_sub(1));
                    info.next_due = Some(now + backoff.min(o.refresh));
                    info.last_error = Some(e.clone());
                    if info.expires.is_some_and(|x| x <= now) {
                        info.expires = None;
                        info.dropped = true;
                        let age = info.last_good.map_or(Duration::ZERO, |g| now - g);
                        dropping.push((o.tenant.clone(), age));
                    }
                }
            }
        }
        lock(&self.moved).insert(t.url_key());
        self.moved_wake.notify_one();
        if !dropping.is_empty() {
            // Off the runtime's threads, as installing is (a snapshot rebuild).
            let reloader = Arc::clone(&self.reloader);
            let url = t.url.clone();
            let tenants: Vec<String> = dropping.iter().map(|(t, _)| t.clone()).collect();
            let forgotten = tokio::task::spawn_blocking(move || {
                let names: Vec<&str> = tenants.iter().map(String::as_str).collect();
                reloader.forget_fetched_many(&names, &url);
            })
            .await;
            // A panic here (a bug) leaves the keys in place until the next
            // try; the loop goes on (see above).
            let _ = forgotten;
        }
        match result {
            Ok((keys, _, final_url)) => {
                self.report(&FetchEvent::Installed {
                    tenant: &t.tenant,
                    url: &redacted_url(&t.url),
                    keys_url: &redacted_url(&final_url),
                    keys: keys.keys.len(),
                    skipped: &keys.skipped,
                    left_out: keys.skipped_total,
                    shadowed: &shadowed,
                });
                Ok(())
            }
            Err(e) => {
                let url = redacted_url(&t.url);
                self.report(&FetchEvent::Failed {
                    tenant: &t.tenant,
                    url: &url,
                    error: &e,
                });
                for (tenant, age) in &dropping {
                    self.report(&FetchEvent::Dropped {
                        tenant,
                        url: &url,
                        age: *age,
                        max_stale: self.config.max_stale.unwrap_or_default(),
                    });
                }
                Err(e)
            }
        }
    }

    /// Fetches every source that is due (never fetched, or past its refresh or
    /// retry time), [`PARALLEL_FETCHES`] at a time: one IdP that hangs until the
    /// timeout does not hold back every other tenant's refresh. Returns the
    /// failures, by tenant and URL.
    pub async fn refresh_due(&self) -> Vec<(String, String, FetchError)> {
        use futures_util::StreamExt as _;
        let due: Vec<(Target, Arc<Source>)> = self
            .targets()
            .iter()
            .filter_map(|t| {
                let source = self.source(t);
                let due = lock(&source.info)
                    .due(t)
                    .is_none_or(|d| d <= Instant::now());
                due.then(|| (t.clone(), source))
            })
            .collect();
        // One slot per URL as read (as in `run`): the sources reading it alike
        // go one after another in it, and the first fetch serves the rest
        // (they find themselves no longer due).
        let mut groups: Vec<Vec<(Target, Arc<Source>)>> = Vec::new();
        let mut group_of: HashMap<UrlKey, usize> = HashMap::new();
        for (t, source) in due {
            let g = *group_of.entry(t.url_key()).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push((t, source));
        }
        let mut failures = Vec::new();
        let mut fetches = futures_util::stream::iter(groups)
            .map(|group| async move {
                let mut failed = Vec::new();
                for (t, source) in group {
                    failed.extend(self.fetch_due(t, source).await);
                }
                failed
            })
            .buffer_unordered(PARALLEL_FETCHES);
        while let Some(outcome) = fetches.next().await {
            failures.extend(outcome);
        }
        failures
    }

    async fn fetch_due(
        &self,
        t: Target,
        source: Arc<Source>,
    ) -> Option<(String, String, FetchError)> {
        let flight = self.flight(&t);
        let _flight = flight.lock.lock().await;
        // An unknown-kid refetch, or another tenant's fetch of the same URL,
        // may have run while this waited for the flight:
        // then the source is no longer due and is not fetched twice in a row.
        if lock(&source.info)
            .due(&t)
            .is_some_and(|due| due > Instant::now())
        {
            return None;
        }
        let e = self.fetch(&t, &source, false).await.err()?;
        Some((t.tenant, t.url, e))
    }

    /// When the next source falls due (`None` when there are no URL sources).
    #[must_use]
    pub fn next_due(&self) -> Option<Instant> {
        self.targets()
            .iter()
            .map(|t| {
                lock(&self.source(t).info)
                    .due(t)
                    .unwrap_or_else(Instant::now)
            })
            .min()
    }

    /// Refetches the tenant's URL sources after a token named a kid they lack.
    /// Single flight: concurrent callers wait for one fetch. Rate limited: a
    /// source fetched less than `refetch_interval` ago is not fetched again.
    /// Returns whether any source was fetched successfully.
    ///
    /// The tenant's sources are tried at once, not one after another: a
    /// slow identity provider listed first does not hold back the tenant's
    /// others (nor hold this trigger's place in [`MAX_TRIGGERS`] for the sum
    /// of their times).
    pub async fn on_unknown_kid(&self, tenant: &str) -> bool {
        let Ok(_trigger) = self.triggers.try_acquire() else {
            return false;
        };
        let targets = self.tenant_targets(tenant);
        futures_util::future::join_all(targets.iter().map(|t| self.refetch(t)))
            .await
            .into_iter()
            .any(|fetched| fetched)
    }

    /// One source's part of [`Self::on_unknown_kid`]: whether its keys are
    /// (now) from a fetch that finished after the trigger asked.
    async fn refetch(&self, t: &Target) -> bool {
        let source = self.source(t);
        let asked = Instant::now();
        let flight = self.flight(t);
        let Some(waiting) = Waiting::take(&flight.waiters) else {
            return false;
        };
        let _flight = flight.lock.lock().await;
        drop(waiting);
        let (good, attempt, triggered) = {
            let info = lock(&source.info);
            (info.last_good, info.last_attempt, info.last_triggered)
        };
        if good.is_some_and(|g| g >= asked) {
            true // a fetch that finished after we asked: its keys are ours too
        } else if attempt.is_some_and(|a| a >= asked)
            || triggered.is_some_and(|t| t + self.config.refetch_interval > Instant::now())
        {
            // It just failed for someone else, or the rate limit holds: do not hammer the IdP.
            false
        } else {
            self.fetch(t, &source, true).await.is_ok()
        }
    }

    /// Whether every URL source has been tried (a fetch of its URL finished,
    /// good or not): [`Self::health`]'s `tried` for all, without building
    /// (and redacting) each source's report.
    #[must_use]
    pub fn all_tried(&self) -> bool {
        self.targets()
            .iter()
            .all(|t| lock(&self.source(t).info).last_attempt.is_some())
    }

    /// Every URL source's state.
    #[must_use]
    pub fn health(&self) -> Vec<SourceHealth> {
        let now = Instant::now();
        self.targets()
            .iter()
            .map(|t| {
                let source = self.source(t);
                let info = lock(&source.info);
                SourceHealth {
                    age: info.last_good.map(|g| now - g),
                    refresh: t.refresh,
                    failures: info.failures,
                    failed_total: info.failed_total,
                    last_error: info.last_error.clone(),
                    fetches: info.fetches,
                    tried: info.last_attempt.is_some(),
                    keys_url: info.keys_url.as_deref().map(redacted_url),
                    dropped: info.dropped,
                    tenant: t.tenant.clone(),
                    url: redacted_url(&t.url),
                }
            })
            .collect()
    }

    /// When `t` falls due (now, if never fetched).
    fn due_of(&self, t: &Target, now: Instant) -> Instant {
        lock(&self.source(t).info).due(t).unwrap_or(now)
    }

    /// Keeps every source fresh until `shutdown` resolves. Outcomes go to the
    /// observer (a failed source keeps its last good keys; retries back off,
    /// so failures stay few).
    ///
    /// Each source's fetch runs on its own, [`PARALLEL_FETCHES`] at a time, and
    /// the loop does not wait for a round to end: a source that falls due is
    /// fetched as soon as a slot is free, even while another IdP hangs until the
    /// timeout.
    ///
    /// The sources wait on an [`Agenda`], earliest due first: a free slot goes
    /// to the source that has waited longest, whatever its place in the config
    /// (in config order, URLs that hang and fall due again at once kept the
    /// slots from the sources listed after them), and a turn costs a heap step
    /// per fetch, not a look at every source (at 100k tenants, a scan of them
    /// all a second and after each fetch, on a runtime thread). The agenda is
    /// rebuilt when the config changes.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        use futures_util::StreamExt as _;
        tokio::pin!(shutdown);
        let mut in_flight = futures_util::stream::FuturesUnordered::new();
        // By URL as read, not by source: tenants that read one URL alike fall
        // due together and one fetch serves them all, so they take one slot
        // (else 16 of them behind one hanging identity provider held every
        // slot, and every other provider's refresh waited).
        let mut fetching: HashSet<UrlKey> = HashSet::new();
        let mut plan: Option<Plan> = None;
        loop {
            let now = Instant::now();
            let (targets, by_url) = self.targets_and_urls();
            let plan = match &mut plan {
                Some(p) if Arc::ptr_eq(&p.targets, &targets) => p,
                _ => {
                    // Every due time is read afresh: what `moved` holds is in it.
                    lock(&self.moved).clear();
                    let mut agenda = Agenda::new(targets.len());
                    for (i, t) in targets.iter().enumerate() {
                        agenda.put(i, self.due_of(t, now));
                    }
                    plan.insert(Plan {
                        targets,
                        by_url,
                        agenda,
                    })
                }
            };
            let moved: Vec<UrlKey> = lock(&self.moved).drain().collect();
            for key in &moved {
                plan.reschedule(&self, key, now);
            }
            while in_flight.len() < PARALLEL_FETCHES {
                let Some(i) = plan.agenda.pop_due(now) else {
                    break;
                };
                let t = &plan.targets[i];
                let source = self.source(t);
                // Fetched meanwhile (for another tenant reading the URL
                // alike, or by an unknown-kid refetch): back on the agenda.
                let due = lock(&source.info).due(t);
                if let Some(due) = due.filter(|&d| d > now) {
                    plan.agenda.put(i, due);
                    continue;
                }
                let key = t.url_key();
                // A fetch of the URL is in flight: it serves this source
                // too, which goes back on the agenda when it ends.
                if !fetching.insert(key.clone()) {
                    continue;
                }
                let t = t.clone();
                let this = &self;
                in_flight.push(async move {
                    // The outcome went to the observer.
                    let _ = this.fetch_due(t, source).await;
                    key
                });
            }
            // Notice new sources after a reload within a second. With every
            // slot taken, a due source waits for a fetch to end.
            let mut wake = now + Duration::from_secs(1);
            if in_flight.len() < PARALLEL_FETCHES
                && let Some(next) = plan.agenda.next()
            {
                wake = wake.min(next);
            }
            tokio::select! {
                () = &mut shutdown => return,
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    fetching.remove(&done);
                    plan.reschedule(&self, &done, Instant::now());
                }
                () = self.moved_wake.notified() => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

/// The refresh loop's view of one config: its URL sources and their agenda.
struct Plan {
    targets: Arc<Vec<Target>>,
    by_url: ByUrl,
    agenda: Agenda,
}

impl Plan {
    /// Puts every source reading `key` back on the agenda at its due time
    /// (after a fetch of it, which set them all).
    fn reschedule(&mut self, fetcher: &JwksFetcher, key: &UrlKey, now: Instant) {
        for &i in self.by_url.get(key).into_iter().flatten() {
            self.agenda.put(i, fetcher.due_of(&self.targets[i], now));
        }
    }
}

/// When each source (by index) falls due, earliest first. A source's time is
/// replaced, not updated in place: `at` holds each source's live time, and a
/// heap entry that differs from it is stale, dropped when it comes up (the
/// heap is rebuilt from `at` when stale entries outnumber live ones).
#[derive(Debug)]
struct Agenda {
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, usize)>>,
    at: Vec<Option<Instant>>,
}

impl Agenda {
    fn new(len: usize) -> Self {
        Self {
            heap: std::collections::BinaryHeap::with_capacity(len),
            at: vec![None; len],
        }
    }

    /// Source `i` falls due at `when` (replacing the time it had).
    fn put(&mut self, i: usize, when: Instant) {
        if self.at[i] == Some(when) {
            return;
        }
        self.at[i] = Some(when);
        self.heap.push(std::cmp::Reverse((when, i)));
        if self.heap.len() > 2 * self.at.len() + 64 {
            self.heap = self
                .at
                .iter()
                .enumerate()
                .filter_map(|(i, w)| w.map(|w| std::cmp::Reverse((w, i))))
                .collect();
        }
    }

    /// Takes the source due longest ago, if one is due at `now` (ties: the
    /// one listed first). Taken, it is off the agenda until put back.
    fn pop_due(&mut self, now: Instant) -> Option<usize> {
        while let Some(&std::cmp::Reverse((when, i))) = self.heap.peek() {
            if when > now {
                return None;
            }
            self.heap.pop();
            if self.at[i] == Some(when) {
                self.at[i] = None;
                return Some(i);
            }
        }
        None
    }

    /// When the next source falls due (stale entries at the head dropped).
    fn next(&mut self) -> Option<Instant> {
        while let Some(&std::cmp::Reverse((when, i))) = self.heap.peek() {
            if self.at[i] == Some(when) {
                return Some(when);
            }
            self.heap.pop();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::internal_address;

    /// The agenda hands out sources earliest due first (ties by index),
    /// never one not yet due; a new time replaces the old one, earlier or
    /// later; a taken source is off it until put back; and replaced times
    /// do not pile up.
    #[test]
    fn the_agenda_goes_by_due_time() {
        use super::Agenda;
        use std::time::Duration;
        let t0 = tokio::time::Instant::now();
        let s = Duration::from_secs;
        let mut a = Agenda::new(4);
        a.put(0, t0 + s(30));
        a.put(1, t0 + s(10));
        a.put(2, t0 + s(10));
        a.put(3, t0 + s(20));
        assert_eq!(a.next(), Some(t0 + s(10)));
        assert_eq!(a.pop_due(t0 + s(5)), None, "nothing is due yet");
        assert_eq!(a.pop_due(t0 + s(25)), Some(1));
        assert_eq!(a.pop_due(t0 + s(25)), Some(2));
        // Moved earlier (a failed refetch retries sooner) and later.
        a.put(0, t0 + s(1));
        a.put(3, t0 + s(40));
        assert_eq!(a.pop_due(t0 + s(25)), Some(0));
        assert_eq!(a.pop_due(t0 + s(25)), None, "3's old time is stale");
        assert_eq!(a.next(), Some(t0 + s(40)));
        assert_eq!(a.pop_due(t0 + s(100)), Some(3));
        assert_eq!(a.pop_due(t0 + s(100)), None, "all taken");
        assert_eq!(a.next(), None);
        // Rescheduled over and over before coming up: the heap stays bounded.
        for k in 0..10_000u64 {
            a.put(1, t0 + s(1000 + k));
        }
        assert!(a.heap.len() <= 2 * 4 + 64 + 1, "{}", a.heap.len());
        assert_eq!(a.pop_due(t0 + s(20_000)), Some(1));
        assert_eq!(a.pop_due(t0 + s(20_000)), None);
    }

    /// Every internal range, in both families and embedded in IPv6; public
    /// addresses next to each range's edge are not internal.
    #[test]
    fn internal_addresses_are_told_from_public_ones() {
        let inside = [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fc12::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
            "64:ff9b:1::a9fe:a9fe",
            "64:ff9b:1::808:808",
            "64:ff9b:1:a9fe:a9:fe00:808:808",
            "::a9fe:a9fe",
            "::10.0.0.1",
            "2002:a9fe:a9fe::1",
            "2002:7f00:1::",
            // Teredo: the client's IPv4 address inverted in the last 32 bits.
            "2001:0:4136:e378:8000:63bf:5601:5601",
            "198.18.0.1",
            "198.19.255.255",
            "192.0.0.1",
            "240.0.0.1",
            "254.1.2.3",
        ];
        let outside = [
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.1.1",
            "1.1.1.1",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "::808:808",
            "2002:808:808::1",
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
            "198.17.255.255",
            "198.20.0.1",
            "192.0.1.1",
            "192.0.2.1",
        ];
        for ip in inside {
            assert!(internal_address(ip.parse().unwrap()), "{ip}");
        }
        for ip in outside {
            assert!(!internal_address(ip.parse().unwrap()), "{ip}");
        }
    }
}
