//! Claim rules, key selection and tenant settings, through the whole engine.

mod fixture;

use fixture::{NOW, kid, mint, reason, signer, snapshot, tenant, uncached};
use jotd_core::Algorithm::{
    EdDsa, Es256, Es256K, Es384, Es512, Hs256, Hs384, Hs512, Ps256, Ps384, Ps512, Rs256, Rs384,
    Rs512,
};
use jotd_core::{
    Algorithm, Denylist, Engine, EngineConfig, PolicyModel, Reason, Request, Snapshot, Tenant,
    TypRule, UnixTime,
};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

fn one(t: Tenant) -> Snapshot {
    snapshot(vec![t])
}

#[test]
fn every_algorithm_round_trips_and_carries_its_facts() {
    let all = [
        Rs256, Rs384, Rs512, Ps256, Ps384, Ps512, Es256, Es384, Es512, Es256K, EdDsa, Hs256, Hs384,
        Hs512,
    ];
    let snap = one(tenant("t", &all));
    let engine = uncached();
    for alg in all {
        let token = mint(alg, json!({"sub": format!("sub-{alg}")}));
        let d = engine.verify(
            &snap,
            &Request::bearer("t", token.as_bytes()),
            UnixTime(NOW),
        );
        assert_eq!(d.reason(), Reason::Ok, "{alg}");
        let info = d.token().expect("verified facts");
        assert_eq!(
            (info.alg(), info.kid(), info.sub(), info.exp()),
            (
                alg,
                Some(&*kid(alg)),
                Some(&*format!("sub-{alg}")),
                Some(NOW + 600)
            )
        );
    }
}

#[test]
fn time_claims_with_leeway() {
    let snap = one(tenant("t", &[Es256]));
    let e = uncached();
    let r = |extra| reason(&e, &snap, "t", &mint(Es256, extra));
    assert_eq!(r(json!({"exp": NOW - 31})), Reason::Expired);
    assert_eq!(
        r(json!({"exp": NOW - 30})),
        Reason::Expired,
        "now == exp + leeway is expired"
    );
    assert_eq!(r(json!({"exp": NOW - 29})), Reason::Ok, "within leeway");
    assert_eq!(r(json!({"nbf": NOW + 31})), Reason::NotYetValid);
    assert_eq!(r(json!({"nbf": NOW + 30})), Reason::Ok);
    assert_eq!(r(json!({"iat": NOW + 31})), Reason::IssuedInFuture);
    assert_eq!(r(json!({"iat": NOW + 30})), Reason::Ok);
    assert_eq!(
        r(json!({"exp": null})),
        Reason::MissingClaim,
        "exp required by default"
    );
    assert_eq!(
        r(json!({"exp": (NOW + 600) as f64 + 0.75})),
        Reason::Ok,
        "fractional NumericDate"
    );
}

/// A fractional NumericDate (RFC 7519 allows one) is rounded toward refusal
/// for each check: `exp` down, `nbf` and `iat` up, and the lifetime measured
/// from `iat` down to `exp` up. (Truncating every one let a token with `nbf`
/// half a second ahead verify with no leeway.)
#[test]
fn fractional_dates_round_toward_refusal() {
    let mut t = tenant("t", &[Es256]);
    t.claims.leeway = Duration::ZERO;
    t.claims.max_lifetime = Some(Duration::from_secs(60));
    let snap = one(t);
    let e = uncached();
    let half = |s: u64| s as f64 + 0.5;
    let at = |now: u64, claims: serde_json::Value| {
        let token = mint(Es256, claims);
        e.verify(
            &snap,
            &Request::bearer("t", token.as_bytes()),
            UnixTime(now),
        )
        .reason()
    };
    let base = |extra: serde_json::Value| {
        let mut c = json!({"iat": NOW - 10, "exp": NOW + 30});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    };
    assert_eq!(
        at(NOW, base(json!({"nbf": half(NOW)}))),
        Reason::NotYetValid
    );
    assert_eq!(at(NOW + 1, base(json!({"nbf": half(NOW)}))), Reason::Ok);
    assert_eq!(
        at(NOW, base(json!({"iat": half(NOW)}))),
        Reason::IssuedInFuture
    );
    assert_eq!(at(NOW + 1, base(json!({"iat": half(NOW)}))), Reason::Ok);
    assert_eq!(at(NOW, base(json!({"exp": half(NOW)}))), Reason::Expired);
    assert_eq!(at(NOW - 1, base(json!({"exp": half(NOW)}))), Reason::Ok);
    // Lifetime 60.5 s, or 60.25 s, against a 60 s cap.
    assert_eq!(
        at(NOW, base(json!({"exp": half(NOW + 50)}))),
        Reason::LifetimeTooLong
    );
    assert_eq!(
        at(
            NOW,
            base(json!({"iat": (NOW - 10) as f64 - 0.25, "exp": NOW + 50}))
        ),
        Reason::LifetimeTooLong
    );
    assert_eq!(at(NOW, base(json!({"exp": NOW + 50}))), Reason::Ok);
}

#[test]
fn exp_optional_and_lifetime_cap() {
    let mut t = tenant("t", &[Es256]);
    t.claims.require_exp = false;
    t.claims.max_lifetime = Some(Duration::from_secs(3600));
    let snap = one(t);
    let e = uncached();
    let r = |extra| reason(&e, &snap, "t", &mint(Es256, extra));
    assert_eq!(
        r(json!({"exp": null})),
        Reason::MissingClaim,
        "a lifetime cap needs exp"
    );
    assert_eq!(r(json!({"iat": NOW, "exp": NOW + 3600})), Reason::Ok);
    assert_eq!(
        r(json!({"iat": NOW, "exp": NOW + 3601})),
        Reason::LifetimeTooLong
    );
    // Without iat the lifetime cannot be measured: a year-long token would otherwise
    // pass in its last hour.
    for exp in [NOW + 3601, NOW + 60] {
        assert_eq!(
            r(json!({"iat": null, "exp": exp})),
            Reason::MissingClaim,
            "a lifetime cap needs iat"
        );
    }
    assert_eq!(
        r(json!({"iat": NOW + 20, "exp": NOW + 10})),
        Reason::InvalidClaim,
        "issued after it expires"
    );
    let mut lax = tenant("l", &[Es256]);
    lax.claims.require_exp = false;
    assert_eq!(
        reason(&e, &one(lax), "l", &mint(Es256, json!({"exp": null}))),
        Reason::Ok
    );
}

/// The reason for an ES256 token (kid `es256`) with exactly `payload`, of
/// tenant `t`.
fn es256_payload_reason(e: &Engine, snap: &Snapshot, payload: &str) -> Reason {
    let token = signer(Es256)
        .mint_raw(br#"{"alg":"ES256","kid":"es256"}"#, payload.as_bytes())
        .unwrap();
    reason(e, snap, "t", &token)
}

/// A required claim must carry a value: a literal `null` (which the fixture's
/// `claims()` cannot write: it removes null claims) is as good as absent,
/// whether or not the claim is also returned. A name required twice is met
/// by one claim (it denied every token).
#[test]
fn a_required_claim_that_is_null_is_missing() {
    let mut t = tenant("t", &[Es256]);
    t.claims.required = vec!["name".into(), "tier".into(), "tier".into()];
    t.claims_to_return = vec!["tier".into()];
    let snap = one(t);
    for e in [uncached(), Engine::new(EngineConfig::default())] {
        let with = |payload: &str| es256_payload_reason(&e, &snap, payload);
        let exp = NOW + 600;
        assert_eq!(
            with(&format!(r#"{{"exp":{exp},"name":"n","tier":"gold"}}"#)),
            Reason::Ok
        );
        assert_eq!(
            with(&format!(r#"{{"exp":{exp},"name":null,"tier":"gold"}}"#)),
            Reason::MissingClaim,
            "a null claim that is only required"
        );
        assert_eq!(
            with(&format!(r#"{{"exp":{exp},"name":"n","tier":null}}"#)),
            Reason::MissingClaim,
            "a null claim that is also returned"
        );
        assert_eq!(
            with(&format!(r#"{{"exp":{exp},"name":{{}},"tier":[]}}"#)),
            Reason::Ok,
            "empty objects and arrays are values"
        );
    }
    // A registered claim required and null is missing too (it was
    // `invalid_claim`); not required, null is `invalid_claim`.
    let mut t = tenant("t", &[Es256]);
    t.claims.required = vec!["sub".into()];
    let snap = one(t);
    for e in [uncached(), Engine::new(EngineConfig::default())] {
        let with = |payload: &str| es256_payload_reason(&e, &snap, payload);
        let exp = NOW + 600;
        assert_eq!(
            with(&format!(r#"{{"exp":{exp},"sub":null}}"#)),
            Reason::MissingClaim
        );
        assert_eq!(
            with(&format!(r#"{{"exp":{exp},"sub":"s","jti":null}}"#)),
            Reason::InvalidClaim
        );
    }
}

/// A claim twice in the payload is `malformed` wherever it is: typed,
/// returned, neither, or inside an object at any depth (what reads the
/// token or the returned claims after jotd may take the other copy).
#[test]
fn a_claim_twice_anywhere_is_malformed() {
    let mut t = tenant("t", &[Es256]);
    t.claims_to_return = vec!["groups".into()];
    let snap = one(t);
    for e in [uncached(), Engine::new(EngineConfig::default())] {
        let with = |payload: &str| es256_payload_reason(&e, &snap, payload);
        let exp = NOW + 600;
        for body in [
            r#""role":"user","role":"admin""#,
            r#""r\u006fle":"user","role":"admin""#,
            r#""groups":{"admin":false,"admin":true}"#,
            r#""other":{"a":{"b":1,"b":2}}"#,
            r#""other":[{"k":1,"k":1}]"#,
            r#""sub":"a","sub":"b""#,
        ] {
            assert_eq!(
                with(&format!(r#"{{"exp":{exp},{body}}}"#)),
                Reason::Malformed,
                "{body}"
            );
        }
        let many: String = (0..100)
            .map(|i| format!(r#","c{i}":{{"k{i}":1,"j":2}}"#))
            .collect();
        assert_eq!(with(&format!(r#"{{"exp":{exp}{many}}}"#)), Reason::Ok);
        let dup_late: String = (0..40).map(|i| format!(r#","c{i}":1"#)).collect();
        assert_eq!(
            with(&format!(r#"{{"exp":{exp}{dup_late},"c3":2}}"#)),
            Reason::Malformed,
            "past the short list"
        );
    }
}

#[test]
fn audience_issuer_required_claims_and_typ() {
    let mut t = tenant("t", &[Es256]);
    t.claims.audiences = vec!["api".into(), "rpc".into()];
    t.claims.issuers = vec!["https://issuer.example".into()];
    t.claims.required = vec!["name".into()];
    let snap = one(t);
    let e = uncached();
    let good = json!({"aud": ["other", "rpc"], "iss": "https://issuer.example", "name": "n"});
    let with = |patch: serde_json::Value| {
        let mut v = good.clone();
        v.as_object_mut()
            .unwrap()
            .extend(patch.as_object().unwrap().clone());
        reason(&e, &snap, "t", &mint(Es256, v))
    };
    assert_eq!(with(json!({})), Reason::Ok);
    assert_eq!(with(json!({"aud": "api"})), Reason::Ok, "aud as a string");
    assert_eq!(with(json!({"aud": ["nope"]})), Reason::BadAudience);
    assert_eq!(with(json!({"aud": []})), Reason::BadAudience);
    assert_eq!(with(json!({"aud": null})), Reason::MissingClaim);
    assert_eq!(
        with(json!({"iss": "https://evil.example"})),
        Reason::BadIssuer
    );
    assert_eq!(with(json!({"iss": null})), Reason::MissingClaim);
    assert_eq!(with(json!({"name": null})), Reason::MissingClaim);

    // A tenant that lists no audiences identifies itself with none (RFC 7519 §4.1.3):
    // a token that names audiences is not for it, whatever it names.
    let open = one(tenant("o", &[Es256]));
    let r = |claims: serde_json::Value| reason(&e, &open, "o", &mint(Es256, claims));
    assert_eq!(r(json!({})), Reason::Ok, "no aud, no audiences");
    for aud in [json!("other-api"), json!(["a", "b"]), json!([]), json!("")] {
        assert_eq!(r(json!({"aud": aud})), Reason::BadAudience, "{aud}");
    }
    assert_eq!(r(json!({"aud": 7})), Reason::InvalidClaim);

    let mut strict = tenant("s", &[Es256]);
    strict.claims.typ = TypRule {
        required: true,
        ..TypRule::default()
    };
    let snap = one(strict);
    let key = signer(Es256);
    let claims = fixture::claims(json!({}));
    let r = |header: &str| {
        reason(
            &e,
            &snap,
            "s",
            &key.mint_raw(header.as_bytes(), claims.as_bytes()).unwrap(),
        )
    };
    assert_eq!(
        r(r#"{"alg":"ES256","kid":"es256","typ":"JWT"}"#),
        Reason::Ok
    );
    assert_eq!(r(r#"{"alg":"ES256","kid":"es256"}"#), Reason::BadTyp);
    assert_eq!(
        r(r#"{"alg":"ES256","kid":"es256","typ":"at+jwt"}"#),
        Reason::BadTyp
    );
}

#[test]
fn key_selection_rotation_and_algorithm_allowlist() {
    // Three keys in rotation: each kid verifies with its own key only.
    let snap = one(tenant("t", &[Rs256, Es256, EdDsa]));
    let e = uncached();
    for alg in [Rs256, Es256, EdDsa] {
        assert_eq!(reason(&e, &snap, "t", &mint(alg, json!({}))), Reason::Ok);
    }
    let no_kid = signer(Es256)
        .mint(None, &fixture::claims(json!({})))
        .unwrap();
    assert_eq!(
        reason(&e, &snap, "t", &no_kid),
        Reason::MissingKid,
        "several keys, no kid"
    );
    assert_eq!(
        reason(&e, &one(tenant("single", &[Es256])), "single", &no_kid),
        Reason::Ok,
        "one key, no kid"
    );
    let other_kid = signer(Es256)
        .mint(Some("retired"), &fixture::claims(json!({})))
        .unwrap();
    assert_eq!(reason(&e, &snap, "t", &other_kid), Reason::UnknownKid);
    // A tenant may narrow the algorithms below its keys'.
    let mut narrow = tenant("n", &[Rs256, Es256]);
    narrow.algorithms = [Algorithm::Es256].into_iter().collect();
    assert_eq!(
        reason(&e, &one(narrow), "n", &mint(Rs256, json!({}))),
        Reason::AlgNotAllowed
    );
    // The signature of one tenant's key means nothing to another tenant.
    assert_eq!(
        reason(&e, &snap, "nobody", &mint(Es256, json!({}))),
        Reason::UnknownTenant
    );
    // Same kid, different key material: the signature does not verify.
    let other = jotd_core::SigningKey::generate(Es256)
        .unwrap()
        .verifying_key()
        .unwrap();
    let impostor = one(Tenant::new(
        "t",
        vec![jotd_core::TenantKey {
            kid: kid(Es256).into(),
            key: other,
            issuer: None,
        }],
    ));
    assert_eq!(
        reason(&e, &impostor, "t", &mint(Es256, json!({}))),
        Reason::BadSignature
    );
    assert_eq!(
        reason(
            &e,
            &one(tenant("t", &[Es384])),
            "t",
            &mint(Es256, json!({}))
        ),
        Reason::AlgNotAllowed
    );
}

#[test]
fn missing_token_no_auth_methods_and_require_jwt() {
    let mut t = tenant("t", &[Es256]);
    t.no_auth_methods = vec!["net_version".into()];
    t.policy = PolicyModel::Permissions;
    let mut open = tenant("open", &[Es256]);
    open.require_jwt = false;
    let snap = snapshot(vec![t, open]);
    let e = uncached();
    let ask = |tenant: &str, token: Option<&str>, method: &str| {
        let req = Request {
            token: token.map(str::as_bytes),
            tenant,
            method: Some(method),
            addresses: &[],
            origin: None,
            user_agent: None,
        };
        e.verify(&snap, &req, UnixTime(NOW)).reason()
    };
    assert_eq!(ask("t", None, "eth_call"), Reason::MissingToken);
    assert_eq!(
        ask("t", Some(""), "eth_call"),
        Reason::MissingToken,
        "empty token is no token"
    );
    assert_eq!(ask("t", None, "net_version"), Reason::OkNoAuth);
    // A token on a no-auth method is still verified; one whose own rules
    // allow the call is `ok` (with its identity), one whose rules refuse it
    // (here: no `permissions`) `ok_no_auth`, naming no one.
    assert_eq!(
        ask("t", Some(&mint(Es256, json!({}))), "net_version"),
        Reason::OkNoAuth
    );
    assert_eq!(
        ask(
            "t",
            Some(&mint(Es256, json!({"permissions": ["net:*"]}))),
            "net_version"
        ),
        Reason::Ok
    );
    // Cached or not, the refused token's identity stays out of the answer.
    let cached = Engine::new(EngineConfig::default());
    let refused = mint(Es256, json!({"sub": "alice"}));
    let allowed = mint(Es256, json!({"sub": "bob", "permissions": ["net:*"]}));
    for _ in 0..2 {
        for (token, sub) in [(&refused, None), (&allowed, Some("bob"))] {
            let req = Request {
                token: Some(token.as_bytes()),
                tenant: "t",
                method: Some("net_version"),
                addresses: &[],
                origin: None,
                user_agent: None,
            };
            for engine in [&e, &cached] {
                let d = engine.verify(&snap, &req, UnixTime(NOW));
                assert!(d.allow());
                assert_eq!(d.token().and_then(|t| t.sub()), sub);
            }
        }
    }
    assert_eq!(ask("t", Some("garbage"), "net_version"), Reason::Malformed);
    assert_eq!(
        ask("t", Some(&mint(Es256, json!({}))), "eth_call"),
        Reason::MissingClaim,
        "permissions claim required"
    );
    assert_eq!(
        ask(
            "t",
            Some(&mint(Es256, json!({"permissions": ["eth:*"]}))),
            "eth_call"
        ),
        Reason::Ok
    );
    assert_eq!(ask("open", None, "eth_call"), Reason::OkNoAuth);
    assert_eq!(
        ask(
            "open",
            Some(&mint(Es256, json!({"exp": NOW - 100}))),
            "eth_call"
        ),
        Reason::Expired,
        "bad token still denied"
    );
}

/// A token that states a restriction its tenant's policy model does not
/// enforce is refused as `invalid_claim` (before, the restriction was dropped:
/// a tenant left on `policy = "none"` let a token limited to `eth_chainId`
/// send transactions). Restrictions of the tenant's own model apply as
/// before; a token without any passes as before.
#[test]
fn restrictions_the_tenant_cannot_enforce_are_refused() {
    let restrictions = [
        ("methods", json!(["eth_chainId"])),
        (
            "addresses",
            json!(["0x1111111111111111111111111111111111111111"]),
        ),
        ("origins", json!(["https://app.example"])),
        ("user_agents", json!(["curl"])),
        ("permissions", json!(["eth:chainId"])),
    ];
    let e = uncached();
    for model in [
        PolicyModel::None,
        PolicyModel::Allowlist,
        PolicyModel::Permissions,
    ] {
        let mut t = tenant("t", &[Es256]);
        t.policy = model;
        let snap = one(t);
        let call = |token: &str| {
            e.verify(
                &snap,
                &Request {
                    token: Some(token.as_bytes()),
                    tenant: "t",
                    method: Some("eth_sendTransaction"),
                    addresses: &[],
                    origin: None,
                    user_agent: None,
                },
                UnixTime(NOW),
            )
            .reason()
        };
        let bare = call(&mint(Es256, json!({})));
        assert_eq!(
            bare,
            if model == PolicyModel::Permissions {
                // Besu requires the claim.
                Reason::MissingClaim
            } else {
                Reason::Ok
            },
            "{model:?}, no restriction"
        );
        for (claim, value) in &restrictions {
            let got = call(&mint(Es256, json!({ *claim: value })));
            let enforced = match model {
                PolicyModel::None => false,
                PolicyModel::Allowlist => *claim != "permissions",
                PolicyModel::Permissions => *claim == "permissions",
            };
            if enforced {
                // Enforced by its own rule (a call that touches no address
                // passes an address allowlist, as documented).
                assert_ne!(got, Reason::InvalidClaim, "{model:?} enforces {claim}");
                assert_eq!(
                    got == Reason::Ok,
                    *claim == "addresses",
                    "{model:?} {claim}: {got:?}"
                );
            } else {
                assert_eq!(
                    got,
                    Reason::InvalidClaim,
                    "{model:?} cannot enforce {claim}"
                );
            }
        }
    }
}

#[test]
fn allowlist_policy_and_returned_claims() {
    let mut t = tenant("t", &[Es256]);
    t.policy = PolicyModel::Allowlist;
    t.claims_to_return = vec!["groups".into(), "name".into()];
    let snap = one(t);
    let e = uncached();
    let token = mint(
        Es256,
        json!({"methods": ["eth_call"], "origins": ["https://*.dapp.io"], "groups": ["admin"], "name": "Ada"}),
    );
    let req = |method, origin| Request {
        token: Some(token.as_bytes()),
        tenant: "t",
        method: Some(method),
        addresses: &[],
        origin: Some(origin),
        user_agent: None,
    };
    let ok = e.verify(
        &snap,
        &req("eth_call", "https://app.dapp.io"),
        UnixTime(NOW),
    );
    assert_eq!(ok.reason(), Reason::Ok);
    let claims: Vec<_> = ok
        .token()
        .unwrap()
        .claims()
        .iter()
        .map(|(k, v)| (&**k, &**v))
        .collect();
    assert_eq!(claims, [("groups", r#"["admin"]"#), ("name", r#""Ada""#)]);
    assert_eq!(
        e.verify(
            &snap,
            &req("eth_sendRawTransaction", "https://app.dapp.io"),
            UnixTime(NOW)
        )
        .reason(),
        Reason::MethodNotAllowed
    );
    let denied = e.verify(&snap, &req("eth_call", "https://evil.io"), UnixTime(NOW));
    assert_eq!(denied.reason(), Reason::OriginNotAllowed);
    assert_eq!(
        denied.token().unwrap().sub(),
        Some("user-1"),
        "policy denies still say who"
    );
}

#[test]
fn revocation_by_jti_and_sub() {
    let mut t = tenant("t", &[Es256]);
    let mut d = Denylist::default();
    d.jti.insert("stolen".into(), UnixTime(NOW + 1000));
    d.sub.insert("mallory".into(), UnixTime(NOW + 1000));
    // Lapsed: past `until` and the tenant's 30 s leeway.
    d.sub.insert("old".into(), UnixTime(NOW - 31));
    // Revoked until the token's `exp` (as the docs advise).
    d.jti.insert("until-exp".into(), UnixTime(NOW + 600));
    t.denylist = Arc::new(d);
    let snap = one(t);
    let e = uncached();
    assert_eq!(
        reason(&e, &snap, "t", &mint(Es256, json!({"jti": "stolen"}))),
        Reason::Revoked
    );
    assert_eq!(
        reason(&e, &snap, "t", &mint(Es256, json!({"sub": "mallory"}))),
        Reason::Revoked
    );
    assert_eq!(
        reason(&e, &snap, "t", &mint(Es256, json!({"sub": "old"}))),
        Reason::Ok,
        "lapsed entry"
    );
    assert_eq!(
        reason(&e, &snap, "t", &mint(Es256, json!({"jti": "fine"}))),
        Reason::Ok
    );
    // Between `exp` and `exp + leeway` the token still verifies, so the
    // revocation must still hold there (it lapsed at `until` before), on the
    // uncached and the cached path alike.
    let revoked = mint(Es256, json!({"jti": "until-exp"}));
    let cached = Engine::new(EngineConfig::default());
    assert_eq!(reason(&cached, &snap, "t", &revoked), Reason::Revoked);
    for engine in [&e, &cached] {
        for at in [NOW + 599, NOW + 600, NOW + 629] {
            assert_eq!(
                engine
                    .verify(
                        &snap,
                        &Request::bearer("t", revoked.as_bytes()),
                        UnixTime(at)
                    )
                    .reason(),
                Reason::Revoked,
                "at exp {:+}",
                at as i64 - (NOW + 600) as i64
            );
        }
        assert_eq!(
            engine
                .verify(
                    &snap,
                    &Request::bearer("t", revoked.as_bytes()),
                    UnixTime(NOW + 630)
                )
                .reason(),
            Reason::Expired
        );
    }
}

#[test]
fn one_workers_scratch_never_carries_a_header_across_tokens() {
    let snap = one(tenant("t", &[Es256, EdDsa, Hs256]));
    let e = uncached();
    let mut scratch = jotd_core::Scratch::new();
    let es = mint(Es256, json!({}));
    let ed = mint(EdDsa, json!({}));
    let hs = mint(Hs256, json!({}));
    let (es_head, es_rest) = es.split_once('.').unwrap();
    let broken_header = format!("e{es_head}.{es_rest}");
    let swapped = format!("{}.{}", ed.split_once('.').unwrap().0, es_rest);
    let sequence = [
        (&es, Reason::Ok),
        (&broken_header, Reason::Malformed),
        (&es, Reason::Ok),
        (&swapped, Reason::BadSignature),
        (&hs, Reason::Ok),
        (&ed, Reason::Ok),
        (&es, Reason::Ok),
        (&swapped, Reason::BadSignature),
    ];
    for (i, (token, want)) in sequence.iter().enumerate() {
        let d = e.verify_with(
            &mut scratch,
            &snap,
            &Request::bearer("t", token.as_bytes()),
            UnixTime(NOW),
        );
        assert_eq!(d.reason(), *want, "step {i}");
    }
}

/// A tenant's own origin allowlist holds every request, with a token or
/// without (a page cannot put a token on a WebSocket, so a tenant taking
/// calls without one had no origin rule): a missing or unlisted `Origin` is
/// `origin_not_allowed` before the token is looked at; a listed one goes on
/// to the usual rules.
#[test]
fn a_tenant_origin_allowlist_holds_requests_with_and_without_a_token() {
    let mut t = tenant("t", &[Es256]);
    t.require_jwt = false;
    t.origins = vec!["https://app.example.com".into(), "*.example.org".into()];
    let snap = one(t);
    let engine = uncached();
    let token = mint(Es256, json!({}));
    let forged = token.replacen('e', "f", 1);
    let ask = |token: Option<&str>, origin: Option<&str>| {
        let req = Request {
            token: token.map(str::as_bytes),
            tenant: "t",
            method: Some("eth_call"),
            addresses: &[],
            origin,
            user_agent: None,
        };
        engine.verify(&snap, &req, UnixTime(NOW)).reason()
    };
    for origin in [
        Some("https://app.example.com"),
        Some("http://a.b.example.org"),
    ] {
        assert_eq!(ask(Some(&token), origin), Reason::Ok, "{origin:?}");
        assert_eq!(ask(None, origin), Reason::OkNoAuth, "{origin:?}");
        assert_ne!(ask(Some(&forged), origin), Reason::Ok, "{origin:?}");
    }
    for origin in [
        None,
        Some("https://evil.example"),
        Some("https://app.example.com.evil.example"),
        Some("https://example.org"),
        Some("null"),
    ] {
        for t in [Some(token.as_str()), None, Some(forged.as_str())] {
            assert_eq!(ask(t, origin), Reason::OriginNotAllowed, "{origin:?}");
        }
    }
}

/// `Reason::decided_by_token` is what a client relies on to check a token
/// once for many calls (jotd-gateway, for a large JSON-RPC batch): every
/// reason it names comes out the same for the request with no call and for
/// each call, a no-auth method's included (where a policy refusal would be
/// `ok_no_auth`), with the cache on and off.
#[test]
fn reasons_decided_by_the_token_hold_for_every_call() {
    let mut t = tenant("t", &[Es256, Rs256]);
    t.policy = PolicyModel::Allowlist;
    t.claims.audiences = vec!["api".into()];
    t.claims.issuers = vec!["idp".into()];
    t.claims.max_lifetime = Some(Duration::from_secs(3600));
    t.no_auth_methods = vec!["web3_clientVersion".into()];
    let mut d = Denylist::default();
    d.sub.insert("mallory".into(), UnixTime(NOW + 1000));
    t.denylist = Arc::new(d);
    let snap = one(t);
    let ok = json!({"aud": "api", "iss": "idp"});
    let with = |extra: serde_json::Value| {
        let mut c = ok.clone();
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let good = mint(Es256, with(json!({"methods": ["eth_chainId"]})));
    let mut forged = good.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    // Each token with the reason it gets with no call: a mint that came out
    // as another reason (a claim rule of the tenant's firing first) fails
    // here rather than skip its case.
    let tokens: Vec<(&str, String, Reason)> = vec![
        (
            "t",
            String::from_utf8(forged).unwrap(),
            Reason::BadSignature,
        ),
        (
            "t",
            mint(Es256, with(json!({"iat": NOW - 200, "exp": NOW - 100}))),
            Reason::Expired,
        ),
        (
            "t",
            mint(Es256, with(json!({"nbf": NOW + 100}))),
            Reason::NotYetValid,
        ),
        (
            "t",
            mint(Es256, with(json!({"iat": NOW + 100}))),
            Reason::IssuedInFuture,
        ),
        (
            "t",
            mint(Es256, with(json!({"exp": NOW + 7200}))),
            Reason::LifetimeTooLong,
        ),
        (
            "t",
            mint(Es256, with(json!({"aud": "other"}))),
            Reason::BadAudience,
        ),
        (
            "t",
            mint(Es256, with(json!({"iss": "other"}))),
            Reason::BadIssuer,
        ),
        (
            "t",
            mint(Es256, with(json!({"sub": "mallory"}))),
            Reason::Revoked,
        ),
        (
            "t",
            signer(Es256)
                .mint(Some("retired"), &fixture::claims(ok.clone()))
                .unwrap(),
            Reason::UnknownKid,
        ),
        (
            "t",
            signer(Es256)
                .mint(None, &fixture::claims(ok.clone()))
                .unwrap(),
            Reason::MissingKid,
        ),
        ("t", mint(Hs256, ok.clone()), Reason::AlgNotAllowed),
        ("t", "not.a-token".to_owned(), Reason::Malformed),
        ("t", "x".repeat(70_000), Reason::TokenTooLarge),
        ("nobody", good.clone(), Reason::UnknownTenant),
        // Not decided by the token: a policy refusal or an allow.
        ("t", good.clone(), Reason::MethodNotAllowed),
        // (With no call an allowlist finds no method to allow.)
        (
            "t",
            mint(Es256, with(json!({"methods": ["*"]}))),
            Reason::MethodNotAllowed,
        ),
    ];
    let calls: [(Option<&str>, &[&str]); 4] = [
        (
            Some("eth_getBalance"),
            &["0x1937c5b8f6f0a2c4e1b0c7f4f4b2b5a1a3e2d1c0"],
        ),
        (Some("web3_clientVersion"), &[]),
        (Some("eth_chainId"), &[]),
        (None, &["*"]),
    ];
    let mut decided = std::collections::BTreeSet::new();
    for engine in [uncached(), Engine::new(EngineConfig::default())] {
        for (tenant_id, token, want) in &tokens {
            let alone = reason(&engine, &snap, tenant_id, token);
            assert_eq!(alone, *want, "{tenant_id}: {}", &token[..20]);
            if !alone.decided_by_token() {
                continue;
            }
            decided.insert(alone);
            for (method, addresses) in calls {
                let r = engine
                    .verify(
                        &snap,
                        &Request {
                            method,
                            addresses,
                            ..Request::bearer(tenant_id, token.as_bytes())
                        },
                        UnixTime(NOW),
                    )
                    .reason();
                assert_eq!(r, alone, "{tenant_id} {method:?}: {}", &token[..20]);
            }
        }
    }
    assert_eq!(decided.len(), 14, "{decided:?}");
    assert!(!Reason::MethodNotAllowed.decided_by_token());
    assert!(!Reason::InvalidClaim.decided_by_token());
    // Why a policy reason is not: a no-auth method turns it into an allow.
    let call = |method| {
        uncached()
            .verify(
                &snap,
                &Request {
                    method: Some(method),
                    ..Request::bearer("t", good.as_bytes())
                },
                UnixTime(NOW),
            )
            .reason()
    };
    assert_eq!(call("eth_getBalance"), Reason::MethodNotAllowed);
    assert_eq!(call("web3_clientVersion"), Reason::OkNoAuth);

    // `origin_not_allowed` comes two ways, told apart by the token facts a
    // client sees (the kid): the tenant's own allowlist refuses before the
    // token is read, for every call alike and with no facts; a token's
    // `origins` claim refuses after the signature (facts), and a no-auth
    // method turns that into an allow.
    let mut o = tenant("o", &[Es256]);
    o.origins = vec!["https://app.example".into()];
    o.policy = PolicyModel::Allowlist;
    o.no_auth_methods = vec!["web3_clientVersion".into()];
    let with_origins = snapshot(vec![o, {
        let mut c = tenant("c", &[Es256]);
        c.policy = PolicyModel::Allowlist;
        c.no_auth_methods = vec!["web3_clientVersion".into()];
        c
    }]);
    let token = mint(
        Es256,
        json!({"origins": ["https://app.example"], "methods": ["*"]}),
    );
    let forged = format!("{}x", &token[..token.len() - 1]);
    for e in [uncached(), Engine::new(EngineConfig::default())] {
        for method in [None, Some("eth_call"), Some("web3_clientVersion")] {
            let d = |tenant, token: &str| {
                e.verify(
                    &with_origins,
                    &Request {
                        method,
                        origin: Some("https://evil.example"),
                        ..Request::bearer(tenant, token.as_bytes())
                    },
                    UnixTime(NOW),
                )
            };
            for t in [&token, &forged] {
                let tenant_level = d("o", t);
                assert_eq!(
                    tenant_level.reason(),
                    Reason::OriginNotAllowed,
                    "{method:?}"
                );
                assert!(tenant_level.token().is_none(), "{method:?}");
            }
            let claim_level = d("c", &token);
            if method == Some("web3_clientVersion") {
                assert_eq!(claim_level.reason(), Reason::OkNoAuth);
            } else {
                assert_eq!(claim_level.reason(), Reason::OriginNotAllowed, "{method:?}");
                assert!(claim_level.token().and_then(|i| i.kid()).is_some());
            }
        }
    }
}
