use super::*;

fn list(items: &[&'static str]) -> Option<Strs<'static>> {
    Some(items.iter().map(|s| Cow::Borrowed(*s)).collect())
}

fn req<'a>(
    method: Option<&'a str>,
    addresses: &'a [&'a str],
    origin: Option<&'a str>,
    ua: Option<&'a str>,
) -> Request<'a> {
    Request {
        token: None,
        tenant: "t",
        method,
        addresses,
        origin,
        user_agent: ua,
    }
}

#[test]
fn allowlist_kinds_and_together_entries_or() {
    let g = Grants {
        methods: list(&["eth_call", "eth_blockNumber"]),
        addresses: list(&["0xAbC0000000000000000000000000000000000001"]),
        origins: list(&["https://*.example.com", "app.test"]),
        user_agents: list(&["MetaMask"]),
        permissions: None,
    };
    let addr = ["0xabc0000000000000000000000000000000000001"];
    let other = ["0xdead"];
    let good = req(
        Some("eth_call"),
        &addr,
        Some("https://dapp.example.com"),
        Some("Mozilla MetaMask/11"),
    );
    assert_eq!(allowlist(&g, &good), Ok(()));
    let cases = [
        (
            req(
                Some("eth_sendRawTransaction"),
                &addr,
                good.origin,
                good.user_agent,
            ),
            Reason::MethodNotAllowed,
        ),
        (
            req(None, &addr, good.origin, good.user_agent),
            Reason::MethodNotAllowed,
        ),
        (
            req(Some("eth_call"), &other, good.origin, good.user_agent),
            Reason::AddressNotAllowed,
        ),
        (
            req(
                Some("eth_call"),
                &addr,
                Some("https://example.com"),
                good.user_agent,
            ),
            Reason::OriginNotAllowed,
        ),
        (
            req(Some("eth_call"), &addr, None, good.user_agent),
            Reason::OriginNotAllowed,
        ),
        (
            req(Some("eth_call"), &addr, good.origin, Some("curl/8")),
            Reason::UserAgentNotAllowed,
        ),
        (
            req(Some("eth_call"), &addr, good.origin, None),
            Reason::UserAgentNotAllowed,
        ),
    ];
    for (r, want) in cases {
        assert_eq!(allowlist(&g, &r), Err(want), "{r:?}");
    }
    // A request without a method (a WebSocket upgrade, forward-auth without a
    // body) still learns that its Origin or User-Agent is refused: those are
    // checked before the per-call kinds.
    assert_eq!(
        allowlist(
            &g,
            &req(None, &[], Some("https://evil.test"), good.user_agent)
        ),
        Err(Reason::OriginNotAllowed)
    );
    assert_eq!(
        allowlist(&g, &req(None, &other, good.origin, Some("curl/8"))),
        Err(Reason::UserAgentNotAllowed)
    );
    // An address-less request passes an address allowlist; an absent kind never restricts.
    assert_eq!(
        allowlist(
            &g,
            &req(Some("eth_blockNumber"), &[], good.origin, good.user_agent)
        ),
        Ok(())
    );
    assert_eq!(
        allowlist(&Grants::default(), &req(None, &[], None, None)),
        Ok(())
    );
}

#[test]
fn origin_wildcards_and_schemes() {
    let yes = [
        ("https://*.example.com", "https://a.example.com"),
        ("https://*.example.com", "HTTPS://A.b.Example.com"),
        ("*.example.com", "http://a.example.com"),
        ("app.test", "https://app.test"),
        ("https://app.test:8443", "https://app.test:8443"),
        ("https://*.example.com", "https://a.b.example.com"),
        ("http://[::1]:8080", "http://[::1]:8080"),
        ("app.test:3000", "http://app.test:3000"),
        ("https://under_score.test", "https://under_score.test"),
    ];
    let no = [
        ("https://*.example.com", "https://example.com"),
        ("https://*.example.com", "https://badexample.com"),
        ("https://*.example.com", "http://a.example.com"),
        ("https://*.example.com", "https://a.example.com.evil.net"),
        ("https://app.test", "app.test"),
        ("https://app.test", "https://app.test:8443"),
        ("app.test", "https://app.test.evil"),
        ("https://app.test", "https://app.test/"),
        ("https://app.test:8443", "https://app.test"),
        ("app.test", "https://app.test:443"),
    ];
    for (p, o) in yes {
        assert!(origin_matches(p, o), "{p} should match {o}");
    }
    for (p, o) in no {
        assert!(!origin_matches(p, o), "{p} must not match {o}");
    }
}

#[test]
fn besu_permissions() {
    let g = |p: &[&'static str]| Grants {
        permissions: list(p),
        ..Grants::default()
    };
    let r = |m: &'static str| req(Some(m), &[], None, None);
    assert_eq!(permissions(&g(&["*:*"]), &r("eth_blockNumber")), Ok(()));
    assert_eq!(permissions(&g(&["eth:*"]), &r("eth_blockNumber")), Ok(()));
    assert_eq!(
        permissions(&g(&["eth:blockNumber"]), &r("eth_blockNumber")),
        Ok(())
    );
    assert_eq!(
        permissions(&g(&["net:*", "eth:blockNumber"]), &r("net_version")),
        Ok(())
    );
    assert_eq!(
        permissions(&g(&["eth:blockNumber"]), &r("eth_call")),
        Err(Reason::PermissionDenied)
    );
    assert_eq!(
        permissions(&g(&["net:*"]), &r("eth_call")),
        Err(Reason::PermissionDenied)
    );
    assert_eq!(
        permissions(&g(&[]), &r("eth_call")),
        Err(Reason::PermissionDenied)
    );
    assert_eq!(
        permissions(&g(&["eth"]), &r("eth_call")),
        Err(Reason::PermissionDenied)
    );
    assert_eq!(
        permissions(&g(&["eth:"]), &r("eth")),
        Err(Reason::PermissionDenied)
    );
    assert_eq!(
        permissions(&g(&["eth:*"]), &r("eth")),
        Err(Reason::PermissionDenied)
    );
    assert_eq!(permissions(&g(&["*:*"]), &r("eth")), Ok(()));
    assert_eq!(
        permissions(&g(&["*:*"]), &req(None, &[], None, None)),
        Err(Reason::PermissionDenied)
    );
    assert_eq!(
        permissions(&Grants::default(), &r("eth_call")),
        Err(Reason::MissingClaim)
    );
}

/// Every way to smuggle another host past `*.example.com` or an exact entry:
/// a path, query, fragment, backslash, userinfo, a suffix that is not a label
/// boundary, whitespace, percent-encoding, non-ASCII, empty labels.
#[test]
fn origin_smuggling_matches_nothing() {
    let patterns = [
        "https://*.example.com",
        "*.example.com",
        "https://example.com",
        "example.com",
    ];
    let origins = [
        "https://evil.com/.example.com",
        "https://evil.com?.example.com",
        "https://evil.com#.example.com",
        "https://evil.com\\.example.com",
        "https://user@evil.com/.example.com",
        "https://a.example.com@evil.com",
        "https://example.com@evil.com",
        "https://example.com.evil.com",
        "https://a.example.com.evil.com",
        "https://evilexample.com",
        "https://a.example.com/",
        "https://a.example.com/path",
        "https://a.example.com?q",
        "https://a.example.com#f",
        "https://a.example.com:",
        "https://a.example.com:99999",
        "https://a.example.com:0",
        "https://a.example.com:+443",
        "https://a.example.com :443",
        "https://a.example.com%2fevil.com",
        "https://a.example.com\t",
        "https:// a.example.com",
        "https://a..example.com",
        "https://.example.com",
        "https://a.example.com.",
        "https://\u{430}.example.com",
        "https:/a.example.com",
        "https:a.example.com",
        "//a.example.com",
        "a.example.com",
        "null",
        "",
        "https://",
        "1https://a.example.com",
        "ht tps://a.example.com",
        "https://[::1].example.com",
    ];
    for p in patterns {
        for o in origins {
            assert!(!origin_matches(p, o), "{p:?} must not match {o:?}");
        }
    }
    // Junk in a pattern matches nothing, not even the same junk.
    for p in [
        "https://example.com/",
        "https://example.com/path",
        "https://user@example.com",
        "https://*.",
        "*",
        "https://*",
        "https://a.*.example.com",
        "https://*example.com",
        "",
    ] {
        assert!(!origin_matches(p, p), "pattern {p:?} must match nothing");
        assert!(!origin_matches(p, "https://a.example.com"), "{p:?}");
    }
}

#[test]
fn origin_ports_and_schemes_must_agree_when_given() {
    assert!(origin_matches(
        "https://*.example.com:8443",
        "https://a.example.com:8443"
    ));
    assert!(!origin_matches(
        "https://*.example.com:8443",
        "https://a.example.com:8444"
    ));
    assert!(!origin_matches(
        "https://*.example.com:8443",
        "https://a.example.com"
    ));
    assert!(!origin_matches(
        "https://*.example.com",
        "https://a.example.com:8443"
    ));
    assert!(!origin_matches(
        "wss://*.example.com",
        "https://a.example.com"
    ));
    assert!(origin_matches(
        "HTTPS://*.EXAMPLE.com",
        "https://a.example.COM"
    ));
    // A port is written as RFC 6454 serialises it: no leading zero, never 0.
    for (p, o) in [
        ("https://a.test:443", "https://a.test:0443"),
        ("https://a.test:0443", "https://a.test:0443"),
        ("https://a.test:0443", "https://a.test:443"),
        ("https://*.test:8443", "https://a.test:08443"),
        ("https://a.test:0", "https://a.test:0"),
        ("https://a.test:00", "https://a.test:00"),
    ] {
        assert!(!origin_matches(p, o), "{p:?} must not match {o:?}");
    }
}

/// Only `*:*`, `group:*` and Besu's exact `group:method` grant.
#[test]
fn besu_permission_forms_that_grant_nothing() {
    for p in [
        "*:blockNumber",
        ":*",
        "*",
        "eth:",
        "eth",
        "",
        ":",
        "*:",
        ":blockNumber",
        "ETH:*",
        "eth:BlockNumber",
        "eth:*:*",
        "eth :*",
        "eth:* ",
        "eth:blockNumber ",
        " eth:blockNumber",
        "eth_blockNumber",
        "et:*",
        "eth:block*",
        "e*:*",
        "**",
        "*:**",
    ] {
        assert!(
            !permission_grants(p, "eth_blockNumber"),
            "{p:?} must grant nothing"
        );
    }
    assert!(permission_grants("*:*", "eth_blockNumber"));
    assert!(permission_grants("eth:*", "eth_blockNumber"));
    assert!(permission_grants("eth:blockNumber", "eth_blockNumber"));
    // Besu turns every `_` into `:`.
    assert!(permission_grants("priv:get:thing", "priv_get_thing"));
    assert!(!permission_grants("priv:get_thing", "priv_get_thing"));
    assert!(permission_grants("priv:*", "priv_get_thing"));
    // Empty group or name: `*:*` alone.
    for m in ["eth_", "_blockNumber", "eth", "_", ""] {
        assert!(!permission_grants("eth:*", m), "{m:?}");
        assert!(!permission_grants("eth:", m), "{m:?}");
        assert!(permission_grants("*:*", m), "{m:?}");
    }
}

/// Empty entries in a token's allowlists grant nothing: an empty User-Agent entry
/// would be a substring of every User-Agent, an empty origin or method or address
/// entry matches no real request.
#[test]
fn empty_allowlist_entries_grant_nothing() {
    let ua = Grants {
        user_agents: list(&[""]),
        ..Grants::default()
    };
    for agent in ["curl/8", "MetaMask", ""] {
        assert_eq!(
            allowlist(&ua, &req(None, &[], None, Some(agent))),
            Err(Reason::UserAgentNotAllowed),
            "{agent:?}"
        );
    }
    let both = Grants {
        user_agents: list(&["", "MetaMask"]),
        ..Grants::default()
    };
    assert_eq!(
        allowlist(&both, &req(None, &[], None, Some("MetaMask/11"))),
        Ok(())
    );
    let origins = Grants {
        origins: list(&[""]),
        ..Grants::default()
    };
    assert_eq!(
        allowlist(&origins, &req(None, &[], Some("https://a.test"), None)),
        Err(Reason::OriginNotAllowed)
    );
    let methods = Grants {
        methods: list(&[""]),
        ..Grants::default()
    };
    assert_eq!(
        allowlist(&methods, &req(Some("eth_call"), &[], None, None)),
        Err(Reason::MethodNotAllowed)
    );
    // Nor an empty method (a request's method may be "" on the wire).
    assert_eq!(
        allowlist(&methods, &req(Some(""), &[], None, None)),
        Err(Reason::MethodNotAllowed)
    );
    let addresses = Grants {
        addresses: list(&[""]),
        ..Grants::default()
    };
    assert_eq!(
        allowlist(
            &addresses,
            &req(
                None,
                &["0xabc0000000000000000000000000000000000001"],
                None,
                None
            )
        ),
        Err(Reason::AddressNotAllowed)
    );
    assert_eq!(
        allowlist(&addresses, &req(None, &[""], None, None)),
        Err(Reason::AddressNotAllowed),
        "an empty entry does not match an empty address either"
    );
    // `*` allows a call touching an unknown set of addresses, and so every named one;
    // only `*` itself does (not `0x*`, not a prefix).
    let star = Grants {
        addresses: list(&["*"]),
        ..Grants::default()
    };
    let one = ["0xabc0000000000000000000000000000000000001"];
    for touched in [&one[..], &["*"], &[one[0], "*"], &[]] {
        assert_eq!(
            allowlist(&star, &req(Some("eth_call"), touched, None, None)),
            Ok(()),
            "{touched:?}"
        );
    }
    for not_star in [&["0x*"][..], &["**"], &[" *"], &["0xabc*"]] {
        let g = Grants {
            addresses: list(not_star),
            ..Grants::default()
        };
        assert_eq!(
            allowlist(&g, &req(None, &one, None, None)),
            Err(Reason::AddressNotAllowed),
            "{not_star:?}"
        );
        assert_eq!(
            allowlist(&g, &req(None, &["*"], None, None)),
            Err(Reason::AddressNotAllowed),
            "{not_star:?}"
        );
    }
}
