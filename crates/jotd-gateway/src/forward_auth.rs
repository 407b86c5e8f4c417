//! HTTP forward-auth: NGINX `auth_request`, Caddy `forward_auth`, Traefik
//! ForwardAuth, APISIX `forward-auth`, Envoy's HTTP ext_authz.
//!
//! The gateway asks this door about a request it holds; the door answers 200
//! with identity headers to copy, or 401 / 403 / 503 with a JSON-RPC error
//! body. The original path and host come from one configured header each
//! (`uri_header`, default `X-Forwarded-Uri`; `host_header`, default
//! `X-Forwarded-Host`, `""` for `Host` alone; any other copy is ignored); the token,
//! `Origin` and `User-Agent` from the copied request headers. When the gateway
//! sends the body (APISIX, Envoy `with_request_body`), every JSON-RPC call in
//! it must be allowed; without a body jotd checks the token, tenant, origin
//! and user agent, with no method (a token whose policy restricts methods is
//! then refused: method and address allowlists need the body).

use crate::config::Limits;
use crate::gate::{CallFacts, Door, Facts, Gate, Verdict};
use crate::http::{Answer, bearer, json, read_body, single_header};
use crate::jsonrpc::{self, AddressTable, Body, code, error_object};
use crate::proxy::{denial_parts, status_label};
use crate::route::{Route, tenant_of};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
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
    /// Where the original URI and host are read from.
    pub headers: crate::config::ForwardAuth,
    /// Request bodies held at once, shared with the proxy door.
    pub body_room: crate::http::BodyRoom,
}

/// The original path: from the one configured header, else the request's
/// own path less a leading `/auth` (Envoy's HTTP ext_authz `path_prefix`).
/// Other forwarding headers are ignored: a client could send them through a
/// gateway that sets only its own.
fn original_path(
    req: &Request<Incoming>,
    uri_header: Option<&HeaderName>,
) -> Result<String, String> {
    let sent = match uri_header {
        Some(h) => single_header(req.headers(), h.as_str())?,
        None => None,
    };
    let uri = sent.map_or_else(
        || {
            let p = req.uri().path();
            p.strip_prefix("/auth")
                .filter(|rest| rest.starts_with('/'))
                .unwrap_or(p)
                .to_owned()
        },
        str::to_owned,
    );
    // The path alone: no query. A `#` stays, for the route check to refuse:
    // no request-target holds one, and front proxies read it apart (Caddy
    // routes `/v3/a#/../../v3/b` cleaned, as `/v3/b`; cut at the `#`, the
    // door read `/v3/a`).
    Ok(uri.split('?').next().unwrap_or("").to_owned())
}

/// Every header the doors set starts with this.
pub const JOTD_PREFIX: &str = "x-jotd-";

/// The identity headers the doors set (claims add `x-jotd-claim-<name>`).
/// Forward-auth always sends all of them, empty when the token has none, so a
/// gateway that copies them overwrites any a client sent; ext_authz removes
/// the ones it does not set.
pub const IDENTITY: &[&str] = &[
    "x-jotd-tenant",
    "x-jotd-reason",
    "x-jotd-subject",
    "x-jotd-kid",
];

/// A client header that is not one of jotd's `x-jotd-*` names but reads as
/// one where `_` and `-` are the same (CGI, WSGI, Rack, PHP-FPM and nginx
/// with `underscores_in_headers` turn both into `HTTP_X_JOTD_…`): the doors
/// empty or remove the dashed names only, so `X_Jotd_Subject` would reach
/// the node beside (or instead of) the subject jotd wrote. Refused.
pub fn jotd_lookalike(h: &hyper::HeaderMap) -> Option<&str> {
    h.keys().map(HeaderName::as_str).find(|n| {
        // The `_` must be in the prefix: `x-jotd-claim-client_id` is jotd's
        // own (a claim name may hold `_`), overwritten or removed as such.
        reads_as_jotd_prefix(n) && n.as_bytes()[..JOTD_PREFIX.len()].contains(&b'_')
    })
}

/// Whether header name `name` starts with [`JOTD_PREFIX`], any case, `_`
/// read as `-` (no allocation: every header of every check goes through it).
pub(crate) fn reads_as_jotd_prefix(name: &str) -> bool {
    name.len() >= JOTD_PREFIX.len()
        && name
            .bytes()
            .zip(JOTD_PREFIX.bytes())
            .all(|(a, b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-'))
}

/// One authorization question, whatever door asked it.
#[derive(Debug)]
pub struct AuthQuestion<'a> {
    /// The tenant when the gateway names it (Envoy `context_extensions`);
    /// else the routes decide from `path` and `host`.
    pub tenant: Option<&'a str>,
    /// The original request's path (no query).
    pub path: &'a str,
    /// The original request's host.
    pub host: Option<&'a str>,
    /// The original request's headers (`Authorization`, `Origin`, `User-Agent` are read).
    pub headers: &'a hyper::HeaderMap,
    /// The original request's body, when the gateway sent it (empty: none).
    pub body: &'a [u8],
    /// The original request's method, where the gateway says it (Envoy's
    /// `method`, `X-Forwarded-Method` from Traefik and Caddy): `CONNECT`
    /// (a tunnel, or an HTTP/2 WebSocket, RFC 8441) is refused as an upgrade.
    pub method: Option<&'a str>,
}

/// The answer to an [`AuthQuestion`].
#[derive(Debug)]
pub enum AuthAnswer {
    /// Allowed.
    Allow {
        /// Headers to set on the upstream request.
        add: Vec<(String, String)>,
        /// `x-jotd-*` headers the client sent that this answer does not set
        /// (a claim header for a claim the token lacks): to remove, so a
        /// client cannot forge what the node reads as jotd's word.
        remove: Vec<String>,
    },
    /// Refused: the status, headers (`WWW-Authenticate`) and the JSON-RPC error body.
    Deny {
        /// 400, 401, 403, 413 or 503.
        status: StatusCode,
        /// Headers for the client.
        headers: Vec<(String, String)>,
        /// The JSON-RPC error object.
        body: Box<serde_json::value::RawValue>,
    },
}

impl AuthAnswer {
    fn deny(status: StatusCode, body: Box<serde_json::value::RawValue>) -> Self {
        Self::Deny {
            status,
            headers: Vec::new(),
            body,
        }
    }

    fn refused(v: &Verdict, id: Option<&serde_json::value::RawValue>) -> Self {
        let (status, www, body) = denial_parts(v, id);
        Self::Deny {
            status,
            headers: www
                .map(|w| ("www-authenticate".to_owned(), w))
                .into_iter()
                .collect(),
            body,
        }
    }
}

/// What a request asks its connection to become, if anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Upgrade {
    /// A WebSocket (`Upgrade: websocket`, or any WebSocket handshake header).
    WebSocket,
    /// Any other protocol named in `Upgrade` (`h2c`, ...) or asked for by
    /// `HTTP2-Settings` (an h2c upgrade whose `Upgrade` header a front proxy
    /// dropped as hop-by-hop).
    Other,
}

/// The upgrade a request asks for. Every one outlives the check: after a
/// `101` the front proxy relays the connection, and every later request on
/// it (an h2c tunnel to the node) or message (a WebSocket) is never checked.
fn upgrade_requested(h: &hyper::HeaderMap, method: Option<&str>) -> Option<Upgrade> {
    // An HTTP/2 WebSocket is a CONNECT with `:protocol: websocket` (RFC
    // 8441), which the ext_authz door hands over as an `upgrade` header; any
    // other CONNECT is a tunnel.
    let connect = method.is_some_and(|m| m.trim().eq_ignore_ascii_case("CONNECT"));
    let tokens = || {
        h.get_all(hyper::header::UPGRADE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
    };
    if tokens().any(|p| p.eq_ignore_ascii_case(b"websocket"))
        || h.contains_key(hyper::header::SEC_WEBSOCKET_KEY)
        || h.contains_key(hyper::header::SEC_WEBSOCKET_VERSION)
    {
        return Some(Upgrade::WebSocket);
    }
    (connect || tokens().any(|p| !p.is_empty()) || h.contains_key("http2-settings"))
        .then_some(Upgrade::Other)
}

/// Decides an authorization question: the shared core of forward-auth and
/// Envoy ext_authz. Without a body: one check with no method; with one:
/// every JSON-RPC call in it must be allowed.
pub async fn authorize(
    gate: &Gate,
    door: Door,
    routes: &[Route],
    table: &AddressTable,
    limits: &Limits,
    q: AuthQuestion<'_>,
) -> AuthAnswer {
    let tenant = match q.tenant {
        Some(t) => Some(t.to_owned()),
        None => match tenant_of(routes, q.path, q.host) {
            Ok(t) => t,
            // 403, not 400: NGINX's auth_request passes only 401 and 403 on.
            Err(why) => {
                return AuthAnswer::deny(
                    StatusCode::FORBIDDEN,
                    error_object(
                        None,
                        code::FORBIDDEN,
                        &format!(
                            "forbidden: the path is not in canonical form ({why}); \
                             send it decoded and normalised"
                        ),
                        Some(serde_json::json!({ "reason": "non_canonical_path" })),
                    ),
                );
            }
        },
    };
    let Some(tenant) = tenant else {
        return AuthAnswer::deny(
            StatusCode::FORBIDDEN,
            error_object(
                None,
                code::FORBIDDEN,
                "forbidden: no route names a tenant for this path or host",
                Some(serde_json::json!({ "reason": "no_route" })),
            ),
        );
    };
    let h = q.headers;
    if let Some(name) = jotd_lookalike(h) {
        return AuthAnswer::deny(
            StatusCode::BAD_REQUEST,
            error_object(
                None,
                code::INVALID_REQUEST,
                &format!(
                    "bad request: the header `{name}` reads as one of jotd's identity headers where `_` is taken for `-`; refused"
                ),
                Some(serde_json::json!({ "reason": "identity_header_lookalike" })),
            ),
        );
    }
    let token = match bearer(h) {
        Ok(t) => t,
        Err(why) => {
            return AuthAnswer::Deny {
                status: StatusCode::UNAUTHORIZED,
                headers: vec![(
                    "www-authenticate".into(),
                    "Bearer realm=\"jotd\", error=\"invalid_request\"".into(),
                )],
                body: error_object(
                    None,
                    code::UNAUTHORIZED,
                    &format!("unauthorized: {why}"),
                    None,
                ),
            };
        }
    };
    // Read once each: two `Origin`s were read as the first, which an
    // allowlist then judged while the next hop may read the other.
    let (origin, user_agent) = match (single_header(h, "origin"), single_header(h, "user-agent")) {
        (Ok(o), Ok(u)) => (o.map(str::to_owned), u.map(str::to_owned)),
        (Err(e), _) | (_, Err(e)) => {
            return AuthAnswer::deny(
                StatusCode::BAD_REQUEST,
                error_object(None, code::INVALID_REQUEST, &e, None),
            );
        }
    };
    let facts = Facts {
        tenant,
        token,
        origin,
        user_agent,
    };
    if q.body.len() > limits.max_body_bytes {
        return AuthAnswer::deny(
            StatusCode::PAYLOAD_TOO_LARGE,
            error_object(None, code::INVALID_REQUEST, "the body is too large", None),
        );
    }
    // Envoy with `allow_partial_message` sends the first bytes of a longer body
    // and says so: the calls checked would not be all the calls the node reads.
    if h.get_all("x-envoy-auth-partial-body")
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
    {
        return AuthAnswer::deny(
            StatusCode::PAYLOAD_TOO_LARGE,
            error_object(
                None,
                code::INVALID_REQUEST,
                "the body reached the gateway cut short (x-envoy-auth-partial-body): raise with_request_body.max_request_bytes above the bodies clients send",
                Some(serde_json::json!({ "reason": "partial_body" })),
            ),
        );
    }
    // A WebSocket allowed here would be checked once and then outlive the
    // token's `exp`, its revocation and its key: the front proxy relays the
    // socket without asking again. The proxy door relays WebSockets itself and
    // re-checks them (docs/gateways.md).
    // Any other upgrade likewise: an h2c tunnel to the node would carry
    // requests no door ever sees.
    if let Some(upgrade) = upgrade_requested(h, q.method) {
        let (message, reason) = match upgrade {
            Upgrade::WebSocket => (
                "forbidden: a WebSocket upgrade is not authorized here (it would outlive the token); send WebSockets through the gateway's proxy door",
                "websocket_upgrade",
            ),
            Upgrade::Other => (
                "forbidden: a protocol upgrade (Upgrade, HTTP2-Settings or a CONNECT tunnel) is not authorized here: the upgraded connection would carry requests no check sees",
                "protocol_upgrade",
            ),
        };
        return AuthAnswer::deny(
            StatusCode::FORBIDDEN,
            error_object(
                None,
                code::FORBIDDEN,
                message,
                Some(serde_json::json!({ "reason": reason })),
            ),
        );
    }
    let (calls, first_id) = if q.body.iter().all(u8::is_ascii_whitespace) {
        // No body: no method, and nothing bounds the addresses (a token that
        // restricts either is refused; see docs/gateways.md).
        (
            vec![CallFacts {
                method: None,
                addresses: vec![crate::jsonrpc::ANY.to_owned()],
            }],
            None,
        )
    } else {
        // The body is checked as the gateway sent it, and the node is handed
        // the request with its `Content-Encoding`: a compressed body would
        // be checked as bytes the node decodes into other calls (gzip never
        // parses as JSON; brotli's stored blocks can be made to). Refused
        // unless it is the identity.
        let encodings: Vec<&str> = q
            .headers
            .get_all(hyper::header::CONTENT_ENCODING)
            .iter()
            .map(|v| v.to_str().unwrap_or("?").trim())
            .filter(|v| !v.eq_ignore_ascii_case("identity"))
            .collect();
        if !encodings.is_empty() {
            return AuthAnswer::deny(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                error_object(
                    None,
                    code::INVALID_REQUEST,
                    &format!(
                        "a body sent with Content-Encoding `{}` cannot be checked: send it uncompressed",
                        encodings.join(", ")
                    ),
                    None,
                ),
            );
        }
        let invalid = |i: &jsonrpc::Invalid| {
            AuthAnswer::deny(
                StatusCode::BAD_REQUEST,
                error_object(i.id.as_deref(), i.code, &i.message, None),
            )
        };
        match jsonrpc::parse(q.body, table, limits.max_batch_calls) {
            Err(e) => {
                return AuthAnswer::deny(
                    StatusCode::BAD_REQUEST,
                    error_object(None, e.code, &e.message, None),
                );
            }
            Ok(Body::Single(Err(i))) => return invalid(&i),
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
                        Err(i) => return invalid(&i),
                    }
                }
                (calls, None)
            }
        }
    };
    let verdicts = gate.check(door, &facts, calls).await;
    // Every call must pass; the worst refusal answers.
    if let Some(refused) = verdicts
        .iter()
        .filter(|v| !v.allowed())
        .max_by_key(|v| v.class())
    {
        return AuthAnswer::refused(refused, first_id.as_deref());
    }
    let out = allow_headers(&facts.tenant, &verdicts);
    let remove: Vec<String> = q
        .headers
        .keys()
        .map(HeaderName::as_str)
        .filter(|n| n.starts_with(JOTD_PREFIX))
        .filter(|n| !IDENTITY.contains(n) && !out.iter().any(|(o, _)| o == n))
        .map(str::to_owned)
        .collect();
    AuthAnswer::Allow { add: out, remove }
}

/// The headers an allowed request carries upstream. The gate refused any
/// allowed call whose identity headers cannot be written
/// (`gate::identity_headers`), so every one here can be. The identity is the
/// token's, from the first call allowed as its holder: a public method first
/// (`ok_no_auth`, no one named) must not hide the subject that later calls of
/// the batch were allowed as (the proxy door picks alike). A call let through
/// unchecked (the pool down, `failure_mode = "open"`) marks the whole
/// request `fail_open`: the upstream must not read another call's `ok` as
/// covering it.
fn allow_headers(tenant: &str, verdicts: &[Verdict]) -> Vec<(String, String)> {
    let named = verdicts.iter().find(
        |v| matches!(v, Verdict::Allow(d) if d.reason() != Some(jotd_core::Reason::OkNoAuth)),
    );
    let mut out = match named.or(verdicts.first()) {
        Some(Verdict::Allow(d)) => crate::gate::identity_headers(tenant, d),
        _ => vec![("x-jotd-tenant".into(), tenant.to_owned())],
    };
    if verdicts.iter().any(|v| matches!(v, Verdict::FailOpen(_))) {
        out.retain(|(n, _)| n != "x-jotd-reason");
        out.push(("x-jotd-reason".into(), "fail_open".into()));
    }
    out
}

impl ForwardAuthDoor {
    /// Handles one auth subrequest.
    pub async fn handle(self: std::sync::Arc<Self>, req: Request<Incoming>) -> Answer {
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
        let ambiguous = |e: String| {
            json(
                StatusCode::BAD_REQUEST,
                &error_object(None, code::INVALID_REQUEST, &e, None),
            )
        };
        let path = match original_path(&req, self.headers.uri_header.as_ref()) {
            Ok(p) => p,
            Err(e) => return ambiguous(e),
        };
        let (parts, body) = req.into_parts();
        let h = &parts.headers;
        let forwarded = match &self.headers.host_header {
            Some(name) => single_header(h, name.as_str()),
            None => Ok(None),
        };
        let host = match forwarded {
            Ok(Some(v)) => Some(v),
            Ok(None) => match single_header(h, "host") {
                Ok(v) => v,
                Err(e) => return ambiguous(e),
            },
            Err(e) => return ambiguous(e),
        };
        // Read once, like every forwarded header: a second copy (a client's,
        // ahead of one a front proxy appends) could hide the real method.
        let method = match single_header(h, "x-forwarded-method") {
            Ok(m) => m,
            Err(e) => return ambiguous(e),
        };
        let body = match read_body(
            body,
            self.limits.max_body_bytes,
            self.limits.body_timeout,
            &self.body_room,
            // Every request comes from the gateway in front: no share.
            None,
        )
        .await
        {
            Ok(b) => b,
            Err(e) => return e.answer(self.limits.max_body_bytes),
        };
        let q = AuthQuestion {
            tenant: None,
            path: &path,
            host,
            method,
            headers: h,
            body: &body,
        };
        match authorize(
            &self.gate,
            Door::ForwardAuth,
            &self.routes,
            &self.table,
            &self.limits,
            q,
        )
        .await
        {
            AuthAnswer::Allow {
                add: headers,
                remove,
            } => {
                let mut ok = Response::new(crate::http::AnswerBody::new(Bytes::new()));
                for name in IDENTITY {
                    ok.headers_mut()
                        .insert(HeaderName::from_static(name), HeaderValue::from_static(""));
                }
                // Client-sent `x-jotd-*` headers this answer does not set go
                // back empty (a gateway that copies `x-jotd-*` overwrites the
                // client's copy) and are named for Envoy's HTTP ext_authz to
                // remove.
                for name in &remove {
                    if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                        ok.headers_mut().insert(n, HeaderValue::from_static(""));
                    }
                }
                if !remove.is_empty()
                    && let Ok(v) = HeaderValue::from_str(&remove.join(", "))
                {
                    ok.headers_mut()
                        .insert(HeaderName::from_static("x-envoy-auth-headers-to-remove"), v);
                }
                for (n, v) in headers {
                    if let (Ok(n), Ok(v)) = (
                        HeaderName::from_bytes(n.as_bytes()),
                        HeaderValue::from_str(&v),
                    ) {
                        ok.headers_mut().insert(n, v);
                    }
                }
                ok
            }
            AuthAnswer::Deny {
                status,
                headers,
                body,
            } => {
                let mut a = json(status, &body);
                for (n, v) in headers {
                    if let (Ok(n), Ok(v)) = (
                        HeaderName::from_bytes(n.as_bytes()),
                        HeaderValue::from_str(&v),
                    ) {
                        a.headers_mut().insert(n, v);
                    }
                }
                a
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `_` for `-` in the prefix is a lookalike; jotd's own names, `_` in a
    /// claim name included, are not; other names are neither.
    #[test]
    fn lookalikes_have_an_underscore_in_the_prefix() {
        let named = |n: &'static str| {
            let mut h = hyper::HeaderMap::new();
            h.insert(
                HeaderName::from_static(n),
                hyper::header::HeaderValue::from_static("v"),
            );
            jotd_lookalike(&h).map(str::to_owned)
        };
        for n in ["x_jotd_subject", "x-jotd_kid", "x_jotd-claim-role"] {
            assert_eq!(named(n).as_deref(), Some(n), "{n}");
        }
        for n in [
            "x-jotd-subject",
            "x-jotd-claim-client_id",
            "x-jot",
            "x_other_thing",
        ] {
            assert_eq!(named(n), None, "{n}");
        }
        assert!(reads_as_jotd_prefix("x-jotd-kid") && reads_as_jotd_prefix("X_JOTD_KID"));
        assert!(!reads_as_jotd_prefix("x-jotd") && !reads_as_jotd_prefix("x-jots-kid"));
    }

    /// One call let through unchecked marks the request `fail_open`, even
    /// after a call the pool allowed (whose identity still goes up); one
    /// with every call checked keeps the checked reason.
    #[test]
    fn a_fail_open_call_marks_the_whole_request() {
        let ok = |reason: jotd_core::Reason| {
            Verdict::Allow(jotd_transport::ClientDecision {
                allow: true,
                reason: reason.code(),
                kid: Some("k1".into()),
                sub: Some("alice".into()),
                exp: None,
                claims: Vec::new(),
            })
        };
        let get = |h: &[(String, String)], n: &str| {
            let all: Vec<&str> = h
                .iter()
                .filter(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
                .collect();
            assert!(all.len() <= 1, "{n} written twice: {h:?}");
            all.first().map(|v| (*v).to_owned())
        };
        let mixed = [
            ok(jotd_core::Reason::Ok),
            Verdict::FailOpen("pool down".into()),
        ];
        let h = allow_headers("t1", &mixed);
        assert_eq!(
            get(&h, "x-jotd-reason").as_deref(),
            Some("fail_open"),
            "{h:?}"
        );
        assert_eq!(get(&h, "x-jotd-subject").as_deref(), Some("alice"), "{h:?}");
        assert_eq!(get(&h, "x-jotd-tenant").as_deref(), Some("t1"));

        let open_first = [
            Verdict::FailOpen("pool down".into()),
            ok(jotd_core::Reason::Ok),
        ];
        let h = allow_headers("t1", &open_first);
        assert_eq!(
            get(&h, "x-jotd-reason").as_deref(),
            Some("fail_open"),
            "{h:?}"
        );

        let checked = [ok(jotd_core::Reason::OkNoAuth), ok(jotd_core::Reason::Ok)];
        let h = allow_headers("t1", &checked);
        assert_eq!(get(&h, "x-jotd-reason").as_deref(), Some("ok"), "{h:?}");
        assert_eq!(get(&h, "x-jotd-subject").as_deref(), Some("alice"));
    }
}
