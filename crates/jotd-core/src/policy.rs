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
    /// A valid token is enough.
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

    /// Approximate heap bytes, for the cache's memory bound.
    pub(crate) fn heap_bytes(&self) -> usize {
        [
            &self.methods,
            &self.addresses,
            &self.origins,
            &self.user_agents,
            &self.permissions,
        ]
        .into_iter()
        .flatten()
        .map(|l| l.iter().map(|s| s.len() + 24).sum::<usize>() + 24)
        .sum()
    }
}

/// Applies `model` to a request carrying a valid token with these grants.
pub(crate) fn authorize(
    model: PolicyModel,
    grants: &Grants<'_>,
    req: &Request<'_>,
) -> Result<(), Reason> {
    match model {
        PolicyModel::None => Ok(()),
        PolicyModel::Allowlist => allowlist(grants, req),
        PolicyModel::Permissions => permissions(grants, req),
    }
}

fn allowlist(g: &Grants<'_>, req: &Request<'_>) -> Result<(), Reason> {
    if let Some(methods) = &g.methods {
        let method = req.method.ok_or(Reason::MethodNotAllowed)?;
        if !methods.iter().any(|m| m == method) {
            return Err(Reason::MethodNotAllowed);
        }
    }
    if let Some(allowed) = &g.addresses {
        // Every address the request touches must be allowed; hex compares case-insensitively
        // (EIP-55 checksums are mixed case).
        let ok = req
            .addresses
            .iter()
            .all(|a| allowed.iter().any(|x| x.eq_ignore_ascii_case(a)));
        if !ok {
            return Err(Reason::AddressNotAllowed);
        }
    }
    if let Some(origins) = &g.origins {
        let origin = req.origin.ok_or(Reason::OriginNotAllowed)?;
        if !origins.iter().any(|p| origin_matches(p, origin)) {
            return Err(Reason::OriginNotAllowed);
        }
    }
    if let Some(agents) = &g.user_agents {
        let ua = req.user_agent.ok_or(Reason::UserAgentNotAllowed)?;
        if !agents.iter().any(|p| ua.contains(&**p)) {
            return Err(Reason::UserAgentNotAllowed);
        }
    }
    Ok(())
}

fn permissions(g: &Grants<'_>, req: &Request<'_>) -> Result<(), Reason> {
    let perms = g.permissions.as_ref().ok_or(Reason::MissingClaim)?;
    let method = req.method.ok_or(Reason::PermissionDenied)?;
    // `eth_blockNumber` is group `eth`, method `blockNumber`; a name without `_` is a group alone.
    let (group, name) = method.split_once('_').unwrap_or((method, ""));
    let granted = perms.iter().any(|p| {
        let Some((pg, pm)) = p.split_once(':') else {
            return false;
        };
        (pg == "*" || pg == group) && (pm == "*" || (pm == name && !name.is_empty()))
    });
    if granted {
        Ok(())
    } else {
        Err(Reason::PermissionDenied)
    }
}

/// Splits `scheme://host` into its parts; a bare host has no scheme.
fn split_scheme(s: &str) -> (Option<&str>, &str) {
    // A scheme holds no ':', so the first ':' decides (cheaper than a substring search).
    let (scheme, rest) = match s.find(':') {
        Some(i) if s.as_bytes()[i + 1..].starts_with(b"//") => (Some(&s[..i]), &s[i + 3..]),
        _ => (None, s),
    };
    (scheme, rest.trim_end_matches('/'))
}

/// Matches an HTTP origin against an allowlist entry: `https://app.example.com`,
/// `app.example.com` (any scheme), `https://*.example.com` (any subdomain, not the
/// apex). Case-insensitive; a port in the origin must appear in the entry.
pub(crate) fn origin_matches(pattern: &str, origin: &str) -> bool {
    let (p_scheme, p_host) = split_scheme(pattern);
    let (o_scheme, o_host) = split_scheme(origin);
    if let Some(ps) = p_scheme
        && !o_scheme.is_some_and(|os| os.eq_ignore_ascii_case(ps))
    {
        return false;
    }
    match p_host.strip_prefix("*.") {
        Some(suffix) => {
            let Some(cut) = o_host.len().checked_sub(suffix.len() + 1) else {
                return false;
            };
            cut > 0
                && o_host.as_bytes()[cut] == b'.'
                && o_host.is_char_boundary(cut + 1)
                && o_host[cut + 1..].eq_ignore_ascii_case(suffix)
        }
        None => o_host.eq_ignore_ascii_case(p_host),
    }
}

#[cfg(test)]
mod tests;
