//! HTTP forward-auth: NGINX `auth_request`, Caddy `forward_auth`, Traefik
//! ForwardAuth, APISIX `forward-auth`, Envoy's HTTP ext_authz.
//!
//! The gateway asks this door about a request it holds; the door answers 200
//! with identity headers to copy, or 401 / 403 / 503 with a JSON-RPC error
//! body. The original path and host come from the forwarded headers
//! (`X-Original-URI`, `X-Forwarded-Uri`, `X-Forwarded-Host`); the token,
//! `Origin` and `User-Agent` from the copied request headers. When the gateway
//! sends the body (APISIX, Envoy `with_request_body`), every JSON-RPC call in
//! it must be allowed; without a body jotd checks the token, tenant, origin
//! and user agent, with no method (a token whose policy restricts methods is
//! then refused: method and address allowlists need the body).

use crate::config::Limits;
use crate::gate::{CallFacts, Door, Facts, Gate, Verdict};
use crate::http::{Answer, BodyError, bearer, header, json, read_body};
use crate::jsonrpc::{self, AddressTable, Body, code, error_object};
use crate::proxy::{denial, status_label};
use crate::route::{Route, tenant_of};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Request, Response, StatusCode};

/// What the forward-auth door needs.
#[derive(Debug)]
pub struct ForwardAuthDoor {
    /// Checks.
    pub gate: Gate,
    /// Tenant routes (matched against the original URI and host).
    pub routes: Vec<Route>,
    /// Method → address positions.
    pub table: AddressTable,
    /// Request limits.
    pub limits: Limits,
}

fn original_path(req: &Request<Incoming>) -> String {
    let h = req.headers();
    let uri = header(h, "x-original-uri")
        .or_else(|| header(h, "x-forwarded-uri"))
        .or_else(|| header(h, "x-envoy-original-path"))
        .map_or_else(
            // Envoy's HTTP ext_authz sends the original path after its
            // `path_prefix` (`/auth/v3/demo`).
            || {
                let p = req.uri().path();
                p.strip_prefix("/auth")
                    .filter(|rest| rest.starts_with('/'))
                    .unwrap_or(p)
                    .to_owned()
            },
            str::to_owned,
        );
    // The path alone: no query, no fragment.
    uri.split(['?', '#']).next().unwrap_or("").to_owned()
}

impl ForwardAuthDoor {
    /// Handles one auth subrequest.
    pub async fn handle(&self, req: Request<Incoming>) -> Answer {
        let answer = self.answer(req).await;
        metrics::counter!(
            "jotd_gateway_requests_total",
            "door" => Door::ForwardAuth.as_str(),
            "status" => status_label(answer.status()),
        )
        .increment(1);
        answer
    }

    async fn answer(&self, req: Request<Incoming>) -> Answer {
        let path = original_path(&req);
        let h = req.headers();
        let host = header(h, "x-forwarded-host").or_else(|| header(h, "host"));
        let Some(tenant) = tenant_of(&self.routes, &path, host) else {
            return json(
                StatusCode::FORBIDDEN,
                &error_object(
                    None,
                    code::FORBIDDEN,
                    "forbidden: no route names a tenant for this path or host",
                    Some(serde_json::json!({ "reason": "no_route" })),
                ),
            );
        };
        let token = match bearer(h) {
            Ok(t) => t,
            Err(why) => {
                let mut a = json(
                    StatusCode::UNAUTHORIZED,
                    &error_object(
                        None,
                        code::UNAUTHORIZED,
                        &format!("unauthorized: {why}"),
                        None,
                    ),
                );
                a.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"jotd\", error=\"invalid_request\""),
                );
                return a;
            }
        };
        let facts = Facts {
            tenant,
            token,
            origin: header(h, "origin").map(str::to_owned),
            user_agent: header(h, "user-agent").map(str::to_owned),
        };
        let body = match read_body(req.into_body(), self.limits.max_body_bytes).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                return json(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &error_object(None, code::INVALID_REQUEST, "the body is too large", None),
                );
            }
            Err(BodyError::Broken(e)) => {
                return json(
                    StatusCode::BAD_REQUEST,
                    &error_object(None, code::PARSE_ERROR, &e, None),
                );
            }
        };
        let (calls, first_id) = if body.iter().all(u8::is_ascii_whitespace) {
            (vec![CallFacts::default()], None)
        } else {
            match jsonrpc::parse(&body, &self.table, self.limits.max_batch_calls) {
                Err(e) => {
                    return json(
                        StatusCode::BAD_REQUEST,
                        &error_object(None, e.code, &e.message, None),
                    );
                }
                Ok(Body::Single(Err(i))) => {
                    return json(
                        StatusCode::BAD_REQUEST,
                        &error_object(i.id.as_deref(), i.code, &i.message, None),
                    );
                }
                Ok(Body::Single(Ok(c))) => (
                    vec![CallFacts {
                        method: Some(c.method),
                        addresses: c.addresses,
                    }],
                    c.id,
                ),
                Ok(Body::Batch(items)) => {
                    let mut calls = Vec::with_capacity(items.len());
                    for item in items {
                        match item {
                            Ok(c) => calls.push(CallFacts {
                                method: Some(c.method),
                                addresses: c.addresses,
                            }),
                            Err(i) => {
                                return json(
                                    StatusCode::BAD_REQUEST,
                                    &error_object(i.id.as_deref(), i.code, &i.message, None),
                                );
                            }
                        }
                    }
                    (calls, None)
                }
            }
        };
        let verdicts = self.gate.check(Door::ForwardAuth, &facts, calls).await;
        // Every call must pass; the first refusal answers (the worst class first).
        if let Some(refused) = verdicts
            .iter()
            .filter(|v| !v.allowed())
            .max_by_key(|v| v.class())
        {
            return denial(refused, first_id.as_deref());
        }
        let mut ok = Response::new(Full::new(Bytes::new()));
        let hs = ok.headers_mut();
        let mut set = |name: &str, value: &str| {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                hs.insert(n, v);
            }
        };
        set("x-jotd-tenant", &facts.tenant);
        match &verdicts[0] {
            Verdict::Allow(d) => {
                set(
                    "x-jotd-reason",
                    d.reason().map_or("ok", jotd_core::Reason::as_str),
                );
                if let Some(s) = &d.sub {
                    set("x-jotd-subject", s);
                }
                if let Some(k) = &d.kid {
                    set("x-jotd-kid", k);
                }
                for (name, raw) in &d.claims {
                    // Strings as their text, anything else as JSON.
                    let v = serde_json::from_str::<String>(raw).unwrap_or_else(|_| raw.clone());
                    set(&format!("x-jotd-claim-{}", name.to_ascii_lowercase()), &v);
                }
            }
            Verdict::FailOpen(_) => set("x-jotd-reason", "fail_open"),
            _ => {}
        }
        ok
    }
}
