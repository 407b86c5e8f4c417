//! Which tenant a request belongs to: a path pattern (`/v3/{tenant}`), a host
//! pattern (`{tenant}.rpc.example.com`), or a fixed tenant (a Besu-style
//! single node). First match wins.

/// A bad route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Tenant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// Path segments (`/v3/{tenant}`): same number of segments, literals exact.
    Path(Vec<Part>),
    /// Host labels (`{tenant}.rpc.example.com`), compared case-insensitively.
    Host(Vec<Part>),
    /// Every request.
    Any,
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pattern: Pattern,
    /// The tenant when the pattern does not capture one.
    fixed: Option<String>,
}

/// The longest tenant id taken from a request.
const MAX_TENANT: usize = 128;

/// Whether `s` may be a tenant id taken from a request. `.` and `..` are not:
/// a front proxy that resolves dot-segments sees another path than the one the
/// tenant was taken from.
fn tenant_ok(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= MAX_TENANT
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn parts(items: &[&str], what: &str) -> Result<Vec<Part>, RouteError> {
    let mut out = Vec::new();
    for item in items {
        if *item == "{tenant}" {
            out.push(Part::Tenant);
        } else if item.contains('{') || item.contains('}') {
            return Err(RouteError(format!(
                "{what} part `{item}`: only a whole `{{tenant}}` part is a capture"
            )));
        } else {
            out.push(Part::Literal((*item).to_owned()));
        }
    }
    if out.iter().filter(|p| **p == Part::Tenant).count() > 1 {
        return Err(RouteError(format!("{what}: `{{tenant}}` more than once")));
    }
    Ok(out)
}

impl Route {
    /// A path pattern such as `/v3/{tenant}`.
    ///
    /// # Errors
    /// The pattern does not start with `/` or has a bad capture.
    pub fn path(pattern: &str) -> Result<Self, RouteError> {
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err(RouteError(format!("path `{pattern}` must start with `/`")));
        };
        let segs: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.trim_end_matches('/').split('/').collect()
        };
        let p = parts(&segs, "path")?;
        // A request's path reaches the routes without its query or fragment,
        // as sent (no blanks), and only in canonical form (see
        // [`non_canonical`]): a literal holding `?`, `#`, a blank, `%` or
        // `\`, an empty segment or a dot-segment matched nothing, silently;
        // so did one past ASCII (HTTP/1 servers refuse such a path, and the
        // forwarded headers must be visible ASCII).
        for part in &p {
            if let Part::Literal(l) = part
                && (l.is_empty()
                    || l == "."
                    || l == ".."
                    || l.bytes().any(|b| {
                        matches!(b, b'?' | b'#' | b'%' | b'\\')
                            || b.is_ascii_whitespace()
                            || b.is_ascii_control()
                            || !b.is_ascii()
                    }))
            {
                return Err(RouteError(format!(
                    "path `{pattern}`: segment `{l}` can match no request (empty, `.`, `..`, or it holds `?`, `#`, `%`, `\\`, a blank or a character past ASCII; requests are matched in canonical form only)"
                )));
            }
        }
        Ok(Self {
            fixed: None,
            pattern: Pattern::Path(p),
        })
    }

    /// A host pattern such as `{tenant}.rpc.example.com`.
    ///
    /// # Errors
    /// A bad capture.
    pub fn host(pattern: &str) -> Result<Self, RouteError> {
        if pattern.is_empty() {
            return Err(RouteError("empty host pattern".into()));
        }
        let labels: Vec<String> = pattern.split('.').map(str::to_ascii_lowercase).collect();
        let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
        let p = parts(&refs, "host")?;
        // Requests are matched on the host less its port and trailing dot,
        // label by label: a port, an empty label or a wildcard in the pattern
        // matched nothing, silently.
        for part in &p {
            if let Part::Literal(l) = part
                && (l.is_empty()
                    || !l
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_')))
            {
                return Err(RouteError(format!(
                    "host `{pattern}`: label `{l}` can match no request (labels are letters, digits, `-`, `_`; no port, no `*`, no empty label)"
                )));
            }
        }
        Ok(Self {
            fixed: None,
            pattern: Pattern::Host(p),
        })
    }

    /// Every request belongs to `tenant`.
    ///
    /// # Errors
    /// `tenant` is not a valid id.
    pub fn fixed(tenant: &str) -> Result<Self, RouteError> {
        Self {
            pattern: Pattern::Any,
            fixed: None,
        }
        .with_tenant(tenant)
    }

    /// This pattern (which must not capture) names `tenant`.
    ///
    /// # Errors
    /// The pattern captures, or `tenant` is not a valid id.
    pub fn with_tenant(mut self, tenant: &str) -> Result<Self, RouteError> {
        let captures = match &self.pattern {
            Pattern::Path(p) | Pattern::Host(p) => p.contains(&Part::Tenant),
            Pattern::Any => false,
        };
        if captures {
            return Err(RouteError(
                "a pattern with `{tenant}` cannot also set `tenant`".into(),
            ));
        }
        if !tenant_ok(tenant) {
            return Err(RouteError(format!(
                "tenant `{tenant}`: 1 to {MAX_TENANT} of A-Z a-z 0-9 - _ ."
            )));
        }
        self.fixed = Some(tenant.to_owned());
        Ok(self)
    }

    /// Whether every request `later` matches is matched by this route first
    /// (so `later` is never used): a catch-all covers all; patterns of one
    /// kind and length cover part by part (a capture covers any literal a
    /// request could give as a tenant, a literal itself in any letter case:
    /// a request whose case alone picks `later` over this route is refused,
    /// [`tenant_of`], so `/V3/ops` after `/v3/{tenant}` is never used).
    #[must_use]
    pub fn covers(&self, later: &Self) -> bool {
        let part_covers = |a: &Part, b: &Part| match (a, b) {
            (Part::Tenant, Part::Tenant) => true,
            (Part::Tenant, Part::Literal(l)) => tenant_ok(l),
            (Part::Literal(x), Part::Literal(y)) => x.eq_ignore_ascii_case(y),
            (Part::Literal(_), Part::Tenant) => false,
        };
        let all = |a: &[Part], b: &[Part]| {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| part_covers(a, b))
        };
        match (&self.pattern, &later.pattern) {
            (Pattern::Any, _) => true,
            (Pattern::Path(a), Pattern::Path(b)) | (Pattern::Host(a), Pattern::Host(b)) => {
                all(a, b)
            }
            _ => false,
        }
    }

    /// The capture of `items` under `parts`, if they match; literals
    /// compared ignoring ASCII case when `fold`.
    fn capture<'a>(parts: &[Part], items: &[&'a str], fold: bool) -> Option<Option<&'a str>> {
        if parts.len() != items.len() {
            return None;
        }
        let mut got = None;
        for (p, i) in parts.iter().zip(items) {
            match p {
                Part::Literal(l) if l == i || (fold && l.eq_ignore_ascii_case(i)) => {}
                Part::Literal(_) => return None,
                Part::Tenant if tenant_ok(i) => got = Some(*i),
                Part::Tenant => return None,
            }
        }
        Some(got)
    }

    /// The tenant of a request to `path` (no query) on `host` (no port), if this route matches.
    #[must_use]
    pub fn tenant(&self, path: &str, host: Option<&str>) -> Option<String> {
        self.tenant_with(path, host, false)
    }

    /// [`Route::tenant`], path literals compared ignoring ASCII case when
    /// `fold` (hosts are always).
    fn tenant_with(&self, path: &str, host: Option<&str>, fold: bool) -> Option<String> {
        let captured: Option<String> = match &self.pattern {
            Pattern::Any => None,
            Pattern::Path(p) => {
                let rest = path.strip_prefix('/')?;
                let segs: Vec<&str> = if rest.is_empty() {
                    Vec::new()
                } else {
                    rest.trim_end_matches('/').split('/').collect()
                };
                Self::capture(p, &segs, fold)?.map(str::to_owned)
            }
            Pattern::Host(p) => {
                let host = host?.trim_end_matches('.').to_ascii_lowercase();
                let labels: Vec<&str> = host.split('.').collect();
                Self::capture(p, &labels, false)?.map(str::to_owned)
            }
        };
        captured.or_else(|| self.fixed.clone())
    }
}

/// Why `path` (no query) is not in canonical form, or `None`: a
/// percent-escape, a backslash, a `#` (no request-target holds one; a
/// proxy that keeps it cleans the dot-segments after it, and a door that
/// cut there read another path), an empty segment (`//`; one trailing `/`
/// is fine) or a dot-segment (`.`, `..`). The proxy in front (NGINX, Caddy,
/// Envoy) routes on the path decoded and normalised, while an authorizer
/// door is handed it as sent: `/v3/%76ictim` or `/v3/./victim` would miss
/// the door's `/v3/{tenant}` route and fall through to a later one (a host
/// route naming the caller's own tenant) while the proxy sends it on to
/// `victim`'s upstream. Refusing every spelling the two could read apart
/// closes that, for every route.
#[must_use]
pub fn non_canonical(path: &str) -> Option<&'static str> {
    if path.bytes().any(|b| b == b'%') {
        return Some("a percent-escape (`%`)");
    }
    if path.bytes().any(|b| b == b'\\') {
        return Some("a backslash");
    }
    if path.bytes().any(|b| b == b'#') {
        return Some("a fragment mark (`#`)");
    }
    let rest = path.strip_prefix('/').unwrap_or(path);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return None;
    }
    for seg in rest.split('/') {
        match seg {
            "" => return Some("an empty segment (`//`)"),
            "." | ".." => return Some("a dot-segment (`.` or `..`)"),
            _ => {}
        }
    }
    None
}

/// The tenant of a request: the first route that matches. `host` may carry a port.
///
/// # Errors
/// The path is not canonical ([`non_canonical`]): no route is tried. Or
/// its letter case picks another route than the same path would under a
/// case-insensitive match (NGINX `location ~*`, Caddy and Envoy matchers
/// set so): `/V3/victim` misses `/v3/{tenant}` here and would fall through
/// to a later route (a host route naming the caller's own tenant) while the
/// proxy in front sends it to the `/v3/` upstream.
pub fn tenant_of(
    routes: &[Route],
    path: &str,
    host: Option<&str>,
) -> Result<Option<String>, &'static str> {
    if let Some(why) = non_canonical(path) {
        return Err(why);
    }
    let host = host.map(|h| match h.rsplit_once(':') {
        Some((name, port)) if !h.ends_with(']') && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => h,
    });
    let exact = routes
        .iter()
        .enumerate()
        .find_map(|(i, r)| Some((i, r.tenant(path, host)?)));
    let folded = routes
        .iter()
        .position(|r| r.tenant_with(path, host, true).is_some());
    if exact.as_ref().map(|(i, _)| *i) != folded {
        return Err("letter case that another route matches when case is ignored");
    }
    Ok(exact.map(|(_, t)| t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_host_and_fixed_routes() {
        let routes = [
            Route::path("/v3/{tenant}").unwrap(),
            Route::host("{tenant}.rpc.example.com").unwrap(),
            Route::path("/besu").unwrap().with_tenant("node-1").unwrap(),
        ];
        let t = |p: &str, h: Option<&str>| tenant_of(&routes, p, h).unwrap();
        assert_eq!(t("/v3/abc123", None).as_deref(), Some("abc123"));
        assert_eq!(t("/v3/abc123/", None).as_deref(), Some("abc123"));
        assert_eq!(t("/v3/", None), None);
        assert_eq!(t("/v3/a/b", None), None);
        assert_eq!(t("/v3/a.b", None).as_deref(), Some("a.b"));
        assert_eq!(t("/v3/a:b", None), None, "only safe ids are captured");
        assert_eq!(
            t("/", Some("ACME.rpc.example.com:443")).as_deref(),
            Some("acme")
        );
        assert_eq!(t("/", Some("rpc.example.com")), None);
        assert_eq!(t("/besu", None).as_deref(), Some("node-1"));
        assert_eq!(t("/other", Some("example.org")), None);
        let any = [Route::fixed("solo").unwrap()];
        assert_eq!(
            tenant_of(&any, "/x/y", None).unwrap().as_deref(),
            Some("solo")
        );
    }

    /// Every spelling a front proxy would normalise before routing is
    /// refused before any route is tried: with a path route first and a
    /// host route after it, `/v3/%76ictim` reached the host route (the
    /// caller's own tenant) while NGINX routed it as `/v3/victim`.
    #[test]
    fn paths_not_in_canonical_form_reach_no_route() {
        let routes = [
            Route::path("/v3/{tenant}").unwrap(),
            Route::host("{tenant}.rpc.example.com").unwrap(),
            Route::fixed("public").unwrap(),
        ];
        let host = Some("attacker.rpc.example.com");
        for (path, why) in [
            ("/v3/%76ictim", "percent"),
            ("/v3/victim%2f", "percent"),
            ("/v3/./victim", "dot-segment"),
            ("/v3/victim/.", "dot-segment"),
            ("/v3/x/../victim", "dot-segment"),
            ("/v3//victim", "empty segment"),
            ("//v3/victim", "empty segment"),
            ("/v3/victim//", "empty segment"),
            ("/v3\\victim", "backslash"),
            ("/v3/attacker#/../../v3/victim", "fragment"),
            ("/v3/victim#", "fragment"),
        ] {
            let e = tenant_of(&routes, path, host).unwrap_err();
            assert!(e.contains(why), "{path}: {e}");
        }
        for (path, want) in [
            ("/v3/victim", "victim"),
            ("/v3/victim/", "victim"),
            ("/", "attacker"),
            ("/other/x.y", "attacker"),
        ] {
            assert_eq!(
                tenant_of(&routes, path, host).unwrap().as_deref(),
                Some(want),
                "{path}"
            );
        }
    }

    /// A path whose letter case alone keeps it from the route a
    /// case-insensitive front proxy would pick is refused; case that picks
    /// the same route either way (a tenant id, a pattern's own capitals)
    /// is not.
    #[test]
    fn letter_case_that_changes_the_route_is_refused() {
        let routes = [
            Route::path("/v3/{tenant}").unwrap(),
            Route::path("/Besu/rpc")
                .unwrap()
                .with_tenant("node-1")
                .unwrap(),
            Route::host("{tenant}.rpc.example.com").unwrap(),
        ];
        let host = Some("attacker.rpc.example.com");
        for path in [
            "/V3/victim",
            "/v3/victim".to_uppercase().as_str(),
            "/besu/rpc",
            "/BESU/RPC",
        ] {
            let e = tenant_of(&routes, path, host).unwrap_err();
            assert!(e.contains("letter case"), "{path}: {e}");
        }
        for (path, want) in [
            ("/v3/Victim", "Victim"),
            ("/v3/ABC", "ABC"),
            ("/Besu/rpc", "node-1"),
            ("/Other/Path", "attacker"),
        ] {
            assert_eq!(
                tenant_of(&routes, path, host).unwrap().as_deref(),
                Some(want),
                "{path}"
            );
        }
        // With no route to fall through to, the same case is refused too
        // (it was a 404 at the proxy: now named).
        let only = [Route::path("/v3/{tenant}").unwrap()];
        assert!(tenant_of(&only, "/V3/victim", None).is_err());
        assert_eq!(tenant_of(&only, "/x/victim", None), Ok(None));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(Route::path("v3/{tenant}").is_err());
        assert!(Route::path("/v3/x{tenant}").is_err());
        assert!(Route::path("/{tenant}/{tenant}").is_err());
        assert!(
            Route::path("/v3/{tenant}")
                .unwrap()
                .with_tenant("a")
                .is_err()
        );
        assert!(Route::fixed("bad id").is_err());
        assert!(Route::fixed("").is_err());
        // Patterns no request can match.
        for p in [
            "/rpc?x=1",
            "/rpc#a",
            "/a b",
            "/v3//x",
            "/v3/%41",
            "/v3/./x",
            "/v3/..",
            "/a\\b",
            "/v3/caf\u{e9}",
        ] {
            assert!(Route::path(p).is_err(), "{p}");
        }
        for h in [
            "{tenant}.rpc.example.com:8600",
            "{tenant}.rpc.example.com.",
            "*.example.com",
            "a..example.com",
        ] {
            assert!(Route::host(h).is_err(), "{h}");
        }
    }

    #[test]
    fn a_route_covers_those_it_would_always_match_first() {
        let p = |s: &str| Route::path(s).unwrap();
        let h = |s: &str| Route::host(s).unwrap();
        let capture = p("/v3/{tenant}");
        assert!(capture.covers(&p("/v3/internal").with_tenant("ops").unwrap()));
        assert!(capture.covers(&p("/v3/{tenant}")));
        assert!(!capture.covers(&p("/v3/a/b")), "another length");
        assert!(!capture.covers(&p("/v4/{tenant}")));
        assert!(
            !capture.covers(&p("/v3/a:b").with_tenant("x").unwrap()),
            "no tenant id"
        );
        assert!(
            !p("/v3/internal").covers(&capture),
            "a literal covers only itself"
        );
        // In any letter case: a request `/V3/ops` matches `/v3/{tenant}`
        // ignoring case, so it is refused, and `/V3/ops` is never used.
        assert!(capture.covers(&p("/V3/ops").with_tenant("ops").unwrap()));
        assert!(p("/v3/ops").covers(&p("/V3/OPS").with_tenant("x").unwrap()));
        assert!(!p("/v3/ops").covers(&p("/v3/opx").with_tenant("x").unwrap()));
        assert!(
            Route::fixed("solo")
                .unwrap()
                .covers(&h("rpc.example.com").with_tenant("x").unwrap())
        );
        assert!(h("{tenant}.example.com").covers(&h("ops.example.com").with_tenant("x").unwrap()));
        assert!(
            !capture.covers(&h("{tenant}.example.com")),
            "other kinds overlap, never cover"
        );
        assert!(!capture.covers(&Route::fixed("solo").unwrap()));
    }
}
