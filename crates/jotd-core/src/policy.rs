//! Per-tenant policy models: Infura-style allowlists and Besu-style permissions.

use crate::reason::Reason;
use crate::request::Request;
use std::borrow::Cow;

/// How a tenant authorizes a request once its token is valid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PolicyModel {
    /// Infura: optional token claims `methods`, `addresses`, `origins`,
    /// `user_agents`. Kinds AND together, entries of one kind OR; an absent
    /// kind does not restrict.
    Allowlist,
    /// Besu: a required `permissions` claim of `group:method` strings
    /// (`*:*`, `eth:*`, `eth:blockNumber`). An empty list allows nothing.
    Permissions,
    /// A valid token is enough; one that carries a restriction claim
    /// (`methods`, `addresses`, `origins`, `user_agents`, `permissions`) is
    /// refused (`invalid_claim`), as no rule here could enforce it.
    #[default]
    None,
}

impl PolicyModel {
    /// The config name (`allowlist`, `permissions`, `none`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allowlist => "allowlist",
            Self::Permissions => "permissions",
            Self::None => "none",
        }
    }

    /// Parses a config name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "allowlist" => Some(Self::Allowlist),
            "permissions" => Some(Self::Permissions),
            "none" => Some(Self::None),
            _ => None,
        }
    }
}

/// A claim's list of strings; up to four live inline (no allocation).
pub(crate) type Strs<'a> = smallvec::SmallVec<[Cow<'a, str>; 4]>;

/// The policy claims of a token, borrowed while verifying, owned in the cache.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Grants<'a> {
    pub(crate) methods: Option<Strs<'a>>,
    pub(crate) addresses: Option<Strs<'a>>,
    pub(crate) origins: Option<Strs<'a>>,
    pub(crate) user_agents: Option<Strs<'a>>,
    pub(crate) permissions: Option<Strs<'a>>,
}

fn own(list: Option<Strs<'_>>) -> Option<Strs<'static>> {
    list.map(|l| l.into_iter().map(|s| Cow::Owned(s.into_owned())).collect())
}

impl Grants<'_> {
    /// Copies every borrowed string, for the verified-token cache.
    pub(crate) fn into_owned(self) -> Grants<'static> {
        Grants {
            methods: own(self.methods),
            addresses: own(self.addresses),
            origins: own(self.origins),
            user_agents: own(self.user_agents),
            permissions: own(self.permissions),
        }
    }

    /// Heap bytes as the allocator sizes them, for the cache's memory bound:
    /// each list's buffer once it outgrows its inline room (at its capacity,
    /// which grows in powers of two), and each owned string's buffer.
    pub(crate) fn heap_bytes(&self) -> usize {
        use crate::cache::heap_alloc;
        [
            &self.methods,
            &self.addresses,
            &self.origins,
            &self.user_agents,
            &self.permissions,
        ]
        .into_iter()
        .flatten()
        .map(|l| {
            let buffer = if l.spilled() {
                heap_alloc(l.capacity() * std::mem::size_of::<Cow<'_, str>>())
            } else {
                0
            };
            buffer
                + l.iter()
                    .map(|s| match s {
                        Cow::Owned(o) => heap_alloc(o.capacity()),
                        Cow::Borrowed(_) => 0,
                    })
                    .sum::<usize>()
        })
        .sum()
    }
}

/// Applies `model` to a request carrying a valid token with these grants.
///
/// A token that states a restriction the tenant's model does not enforce
/// (`methods` for a tenant of model `none`, `permissions` for an allowlist
/// tenant, `origins` for a permissions tenant) is refused as `invalid_claim`:
/// honouring the rest of the token would allow what its issuer restricted
/// (one forgotten `policy` line removed every restriction).
pub(crate) fn authorize(
    model: PolicyModel,
    grants: &Grants<'_>,
    req: &Request<'_>,
) -> Result<(), Reason> {
    let allowlist_kinds = grants.methods.is_some()
        || grants.addresses.is_some()
        || grants.origins.is_some()
        || grants.user_agents.is_some();
    let unenforced = match model {
        PolicyModel::None => allowlist_kinds || grants.permissions.is_some(),
        PolicyModel::Allowlist => grants.permissions.is_some(),
        PolicyModel::Permissions => allowlist_kinds,
    };
    if unenforced {
        return Err(Reason::InvalidClaim);
    }
    match model {
        PolicyModel::None => Ok(()),
        PolicyModel::Allowlist => allowlist(grants, req),
        PolicyModel::Permissions => permissions(grants, req),
    }
}

fn allowlist(g: &Grants<'_>, req: &Request<'_>) -> Result<(), Reason> {
    // What the request as a whole carries (Origin, User-Agent) first, then
    // each call's method and addresses: a check with no method (a WebSocket
    // upgrade, forward-auth without a body) still learns an Origin refusal.
    if let Some(origins) = &g.origins {
        // Parsed once per request, then matched against each entry.
        if !origin_allowed(origins.iter().map(|p| &**p), req.origin) {
            return Err(Reason::OriginNotAllowed);
        }
    }
    if let Some(agents) = &g.user_agents {
        let ua = req.user_agent.ok_or(Reason::UserAgentNotAllowed)?;
        // Substring match, as Infura documents it; an empty entry would be a substring of
        // every User-Agent (allow-all hidden in an allowlist), so it matches none.
        if !agents.iter().any(|p| !p.is_empty() && ua.contains(&**p)) {
            return Err(Reason::UserAgentNotAllowed);
        }
    }
    if let Some(methods) = &g.methods {
        let method = req.method.ok_or(Reason::MethodNotAllowed)?;
        // An empty entry matches nothing, not even an empty method.
        if !methods.iter().any(|m| !m.is_empty() && m == method) {
            return Err(Reason::MethodNotAllowed);
        }
    }
    if let Some(allowed) = &g.addresses {
        // Every address the request touches must be allowed; hex compares case-insensitively
        // (EIP-55 checksums are mixed case). An entry `*` allows any address: it already
        // allows a call that touches an unknown set (the request's `*`), so refusing a
        // named one would refuse the narrower call and pass the wider.
        let any = allowed.iter().any(|x| x == "*");
        let ok = any
            || req.addresses.iter().all(|a| {
                allowed
                    .iter()
                    .any(|x| !x.is_empty() && x.eq_ignore_ascii_case(a))
            });
        if !ok {
            return Err(Reason::AddressNotAllowed);
        }
    }
    Ok(())
}

fn permissions(g: &Grants<'_>, req: &Request<'_>) -> Result<(), Reason> {
    let perms = g.permissions.as_ref().ok_or(Reason::MissingClaim)?;
    let method = req.method.ok_or(Reason::PermissionDenied)?;
    if perms.iter().any(|p| permission_grants(p, method)) {
        Ok(())
    } else {
        Err(Reason::PermissionDenied)
    }
}

/// Whether one Besu permission grants `method`. As Besu does, only three
/// forms grant, each by exact string: `*:*` (everything), `group:*` and
/// `group:method`, where the JSON-RPC method `eth_blockNumber` is group `eth`,
/// method `blockNumber` (Besu writes the permission as the method name with
/// every `_` turned into `:`). Case matters. `*:method`, `group:`, `:*`, `*`
/// and anything without a colon grant nothing; a method without `_` (or with
/// an empty group or name) is granted by `*:*` alone.
pub(crate) fn permission_grants(permission: &str, method: &str) -> bool {
    if permission == "*:*" {
        return true;
    }
    let Some((group, name)) = method.split_once('_') else {
        return false;
    };
    if group.is_empty() || name.is_empty() {
        return false;
    }
    // Besu's three strings: `*:*`, `{group}:*`, and the method with every `_` as `:`.
    let group_wide = permission
        .strip_prefix(group)
        .is_some_and(|rest| rest == ":*");
    let exact = permission.len() == method.len()
        && permission
            .bytes()
            .zip(method.bytes())
            .all(|(p, m)| p == if m == b'_' { b':' } else { m });
    group_wide || exact
}

/// Byte classes for origin parsing, one table lookup per byte.
const LABEL: u8 = 1; // letters, digits, `-`, `_`
const SCHEME: u8 = 2; // letters, digits, `+`, `-`, `.`
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() {
            t[b] = LABEL | SCHEME;
        }
        b += 1;
    }
    t[b'-' as usize] = LABEL | SCHEME;
    t[b'_' as usize] = LABEL;
    t[b'+' as usize] = SCHEME;
    t[b'.' as usize] = SCHEME;
    t
};

/// An origin or an allowlist pattern, parsed: `[scheme://]host[:port]`.
#[derive(Debug, PartialEq, Eq)]
struct OriginParts<'a> {
    scheme: Option<&'a str>,
    host: &'a str,
    port: Option<u16>,
}

/// Parses `scheme://host[:port]` (RFC 6454's serialisation), or with
/// `pattern`, also a bare `host[:port]` and a leading `*.` label. Anything
/// else (a path, `/` included, a query, a fragment, userinfo, a backslash,
/// whitespace, percent-encoding, non-ASCII, an empty label, a port out of
/// range) is `None`: such an origin matches no pattern, such a pattern no origin.
fn parse_origin(s: &str, pattern: bool) -> Option<OriginParts<'_>> {
    // Byte scans, no `str` pattern searchers: this runs on every allowlist check,
    // cache hits included.
    let bytes = s.as_bytes();
    let colon = bytes.iter().position(|b| *b == b':');
    let (scheme, rest) = match colon {
        Some(i) if bytes[i + 1..].starts_with(b"//") => {
            let scheme = &bytes[..i];
            let ok = scheme.first().is_some_and(u8::is_ascii_alphabetic)
                && scheme.iter().all(|b| CLASS[usize::from(*b)] & SCHEME != 0);
            if !ok {
                return None;
            }
            (Some(&s[..i]), &s[i + 3..])
        }
        _ if pattern => (None, s),
        _ => return None,
    };
    let rb = rest.as_bytes();
    let (host, port) = if rb.first() == Some(&b'[') {
        let close = rb.iter().position(|b| *b == b']')?;
        let addr = &rb[1..close];
        if addr.is_empty()
            || !addr
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return None;
        }
        (&rest[..=close], &rb[close + 1..])
    } else {
        let end = rb.iter().position(|b| *b == b':').unwrap_or(rb.len());
        let host = &rb[..end];
        let labels = match host {
            [b'*', b'.', tail @ ..] if pattern => tail,
            _ => host,
        };
        // Labels of letters, digits, `-` and `_`, none empty.
        let mut label_len = 0usize;
        for b in labels {
            if CLASS[usize::from(*b)] & LABEL != 0 {
                label_len += 1;
            } else if *b == b'.' && label_len > 0 {
                label_len = 0;
            } else {
                return None;
            }
        }
        if label_len == 0 {
            return None;
        }
        (&rest[..end], &rb[end..])
    };
    let port = match port {
        [] => None,
        [b':', digits @ ..] => {
            // RFC 6454 serialises a port as a plain decimal: no leading zero
            // (`:0443` is not `:443`), and never 0.
            if digits.is_empty()
                || digits.len() > 5
                || digits[0] == b'0'
                || !digits.iter().all(u8::is_ascii_digit)
            {
                return None;
            }
            let value = digits
                .iter()
                .fold(0u32, |v, d| v * 10 + u32::from(d - b'0'));
            Some(u16::try_from(value).ok().filter(|p| *p != 0)?)
        }
        _ => return None,
    };
    Some(OriginParts { scheme, host, port })
}

/// Whether `pattern` is an origin allowlist entry that can match an origin
/// (`[scheme://]host[:port]`, `*.` only as the first label): what a
/// configured list is checked with before it is used.
#[must_use]
pub fn origin_pattern_ok(pattern: &str) -> bool {
    parse_origin(pattern, true).is_some()
}

/// Whether `origin` (a request's `Origin`, `None` when it has none) matches
/// an entry of `patterns`: the rule a token's `origins` claim is held to.
pub(crate) fn origin_allowed<'p>(
    mut patterns: impl Iterator<Item = &'p str>,
    origin: Option<&str>,
) -> bool {
    let Some(origin) = origin.and_then(|o| parse_origin(o, false)) else {
        return false;
    };
    patterns.any(|p| parse_origin(p, true).is_some_and(|p| p.matches(&origin)))
}

/// Matches an HTTP `Origin` against an allowlist entry.
///
/// The origin must be exactly `scheme://host[:port]` (see [`parse_origin`]);
/// anything else matches nothing. Entries: `https://app.example.com` (that
/// scheme, host and port), `app.example.com` (any scheme), `https://*.example.com`
/// (any subdomain at any depth, not the apex). Scheme and host compare
/// case-insensitively; the ports must be equal (an origin with a port needs an
/// entry with that port, and the other way round).
#[cfg(test)]
pub(crate) fn origin_matches(pattern: &str, origin: &str) -> bool {
    match (parse_origin(pattern, true), parse_origin(origin, false)) {
        (Some(p), Some(o)) => p.matches(&o),
        _ => false,
    }
}

impl OriginParts<'_> {
    /// Whether this pattern matches the parsed `origin`: the rules `origin_matches` states.
    fn matches(&self, o: &OriginParts<'_>) -> bool {
        if self.port != o.port {
            return false;
        }
        if let Some(ps) = self.scheme
            && !o.scheme.is_some_and(|os| os.eq_ignore_ascii_case(ps))
        {
            return false;
        }
        match self.host.strip_prefix("*.") {
            Some(suffix) => {
                let Some(cut) = o.host.len().checked_sub(suffix.len() + 1) else {
                    return false;
                };
                // The origin's host is ASCII labels (parsed), so byte indexing is safe.
                cut > 0
                    && o.host.as_bytes()[cut] == b'.'
                    && o.host[cut + 1..].eq_ignore_ascii_case(suffix)
            }
            None => o.host.eq_ignore_ascii_case(self.host),
        }
    }
}

#[cfg(test)]
mod tests;
