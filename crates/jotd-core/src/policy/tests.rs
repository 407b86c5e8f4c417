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
        ("https://app.test", "https://app.test/"),
        ("https://app.test:8443", "https://app.test:8443"),
    ];
    let no = [
        ("https://*.example.com", "https://example.com"),
        ("https://*.example.com", "https://badexample.com"),
        ("https://*.example.com", "http://a.example.com"),
        ("https://*.example.com", "https://a.example.com.evil.net"),
        ("https://app.test", "app.test"),
        ("https://app.test", "https://app.test:8443"),
        ("app.test", "https://app.test.evil"),
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
    assert_eq!(permissions(&g(&["eth:*"]), &r("eth")), Ok(()));
    assert_eq!(
        permissions(&g(&["*:*"]), &req(None, &[], None, None)),
        Err(Reason::PermissionDenied)
    );
    assert_eq!(
        permissions(&Grants::default(), &r("eth_call")),
        Err(Reason::MissingClaim)
    );
}
