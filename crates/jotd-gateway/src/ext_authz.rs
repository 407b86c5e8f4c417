//! Envoy external authorization over gRPC
//! (`envoy.service.auth.v3.Authorization/Check`), with the gRPC health service.
//!
//! The tenant comes from the filter's `context_extensions["tenant"]` when set
//! (per route in Envoy), else from the routes applied to the request's path and
//! host. The JSON-RPC body is checked call by call when Envoy sends it
//! (`with_request_body`; `body` or, with `pack_as_bytes`, `raw_body`). An
//! allowed request gets OK with `x-jotd-*` headers for the upstream (and
//! `authorization` removed, unless `remove_authorization = false`); a refused
//! one gets Denied with 401 (and `WWW-Authenticate`), 403 or 503 and the
//! JSON-RPC error body, so Envoy answers the client the same way the proxy
//! door would.

use crate::config::Limits;
use crate::forward_auth::{AuthAnswer, AuthQuestion, IDENTITY, authorize};
use crate::gate::{Door, Gate};
use crate::jsonrpc::AddressTable;
use crate::route::Route;
use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode,
};

use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use hyper::header::{HeaderName, HeaderValue};
use tonic::{Request, Response, Status};

/// The ext_authz service.
#[derive(Debug)]
pub struct ExtAuthzDoor {
    /// Checks.
    pub gate: Gate,
    /// Tenant routes (when `context_extensions` names none).
    pub routes: Vec<Route>,
    /// Method → address positions.
    pub table: AddressTable,
    /// Request limits.
    pub limits: Limits,
    /// Whether an allowed request loses its `authorization` header upstream.
    pub remove_authorization: bool,
}

/// The least a CheckRequest is read up to (16 MiB), whatever
/// `max_body_bytes` is: a body between the two is refused by the door (413).
/// Keep Envoy's `max_request_bytes` at or below it; a larger CheckRequest is
/// a gRPC error (docs/gateways.md). The calls in flight per connection are
/// cut so that one connection holds at most 2 GiB being read (2 MiB × 1,024
/// before), at most [`MAX_CALLS_PER_CONNECTION`].
pub(crate) const MIN_CHECK_READ: usize = 16 << 20;

/// Calls in flight on one gRPC connection at most (Envoy opens more
/// connections past it); fewer when `max_body_bytes` is large.
pub(crate) const MAX_CALLS_PER_CONNECTION: u32 = 128;

/// The headers the checks read.
const CHECKED: [&str; 8] = [
    "authorization",
    "origin",
    "user-agent",
    "upgrade",
    "http2-settings",
    "sec-websocket-key",
    "sec-websocket-version",
    "x-envoy-auth-partial-body",
];

/// The headers the checks read, as a header map, from whichever form Envoy
/// sent: `headers` (lower-cased, repeats joined with commas) or, with
/// `encode_raw_headers: true`, `header_map` (raw values, repeats kept: two
/// `authorization` headers are refused as over HTTP). Reading only `headers`
/// made every raw-encoded request look tokenless (a `require_jwt = false`
/// tenant let a forged token through as `ok_no_auth`).
///
/// # Errors
/// A checked header whose value no HTTP header can hold (it is never
/// dropped: a token the gateway cannot read is refused, not ignored).
fn headers_of(
    http: &envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest,
) -> Result<hyper::HeaderMap, String> {
    let pairs: Vec<(&str, &[u8])> = match &http.header_map {
        Some(m) if !m.headers.is_empty() => m
            .headers
            .iter()
            .map(|h| {
                let v = if h.raw_value.is_empty() {
                    h.value.as_bytes()
                } else {
                    h.raw_value.as_slice()
                };
                (h.key.as_str(), v)
            })
            .collect(),
        _ => http
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .collect(),
    };
    let mut out = hyper::HeaderMap::new();
    for (name, value) in pairs {
        let lower = name.to_ascii_lowercase();
        // HTTP/2's extended CONNECT names its protocol in a pseudo-header
        // (`:protocol: websocket`, RFC 8441): read as the upgrade it is.
        if lower == ":protocol" {
            let v = HeaderValue::from_bytes(value)
                .map_err(|_| "the :protocol pseudo-header holds bytes no header can".to_owned())?;
            out.append(hyper::header::UPGRADE, v);
            continue;
        }
        if let Some(known) = CHECKED.iter().find(|c| **c == lower) {
            let v = HeaderValue::from_bytes(value)
                .map_err(|_| format!("the {known} header holds bytes no header can"))?;
            out.append(HeaderName::from_static(known), v);
        } else if crate::forward_auth::reads_as_jotd_prefix(&lower)
            && let Ok(n) = HeaderName::from_bytes(lower.as_bytes())
        {
            // The client's `x-jotd-*` headers, by name only: what the answer
            // does not set is removed; a name with `_` for `-` is refused
            // (`forward_auth::jotd_lookalike`).
            out.insert(n, HeaderValue::from_static(""));
        }
    }
    Ok(out)
}

fn http_status(s: hyper::StatusCode) -> HttpStatusCode {
    match s.as_u16() {
        400 => HttpStatusCode::BadRequest,
        401 => HttpStatusCode::Unauthorized,
        403 => HttpStatusCode::Forbidden,
        413 => HttpStatusCode::PayloadTooLarge,
        _ => HttpStatusCode::ServiceUnavailable,
    }
}

impl ExtAuthzDoor {
    async fn decide(&self, req: &CheckRequest) -> CheckResponse {
        let attrs = req.attributes.as_ref();
        let http = attrs
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let Some(http) = http else {
            let mut r = CheckResponse::with_status(Status::invalid_argument(
                "no attributes.request.http in the CheckRequest",
            ));
            let mut denied = DeniedHttpResponseBuilder::new();
            denied.set_http_status(HttpStatusCode::Forbidden);
            r.set_http_response(denied);
            return r;
        };
        let tenant = attrs.and_then(|a| a.context_extensions.get("tenant"));
        let headers = match headers_of(http) {
            Ok(h) => h,
            Err(why) => {
                let mut r = CheckResponse::with_status(Status::invalid_argument(why));
                let mut denied = DeniedHttpResponseBuilder::new();
                denied.set_http_status(HttpStatusCode::BadRequest);
                r.set_http_response(denied);
                return r;
            }
        };
        // The path alone; a `#` stays, for the route check to refuse (as
        // forward-auth's `original_path`).
        let path = http.path.split('?').next().unwrap_or("");
        let body: &[u8] = if http.raw_body.is_empty() {
            http.body.as_bytes()
        } else {
            &http.raw_body
        };
        let q = AuthQuestion {
            tenant: tenant.map(String::as_str),
            path,
            host: (!http.host.is_empty()).then_some(http.host.as_str()),
            method: (!http.method.is_empty()).then_some(http.method.as_str()),
            headers: &headers,
            body,
        };
        match authorize(
            &self.gate,
            Door::ExtAuthz,
            &self.routes,
            &self.table,
            &self.limits,
            q,
        )
        .await
        {
            AuthAnswer::Allow { add, remove } => {
                let mut ok = OkHttpResponseBuilder::new();
                // Identity headers replace any the client sent; those not set
                // for this token, and any other `x-jotd-*` the client sent
                // (a claim the token lacks), are removed: a client cannot
                // forge them.
                for name in IDENTITY {
                    if !add.iter().any(|(n, _)| n == name) {
                        ok.remove_header(*name);
                    }
                }
                for name in remove {
                    ok.remove_header(name);
                }
                for (n, v) in add {
                    ok.add_header(
                        n,
                        v,
                        Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                        false,
                    );
                }
                if self.remove_authorization {
                    ok.remove_header("authorization");
                }
                let mut r = CheckResponse::with_status(Status::ok("allowed"));
                r.set_http_response(ok);
                r
            }
            AuthAnswer::Deny {
                status,
                headers,
                body,
            } => {
                let mut denied = DeniedHttpResponseBuilder::new();
                denied.set_http_status(http_status(status));
                denied.add_header("content-type", "application/json", None, false);
                for (n, v) in headers {
                    denied.add_header(n, v, None, false);
                }
                denied.set_body(body.to_string());
                let grpc = match status.as_u16() {
                    401 => Status::unauthenticated("unauthorized"),
                    503 => Status::unavailable("authorization unavailable"),
                    400 | 413 => Status::invalid_argument("bad request"),
                    _ => Status::permission_denied("forbidden"),
                };
                let mut r = CheckResponse::with_status(grpc);
                r.set_http_response(denied);
                r
            }
        }
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzDoor {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        // Busy while it runs: at the listener's cap, room is made from
        // connections with no call in flight first.
        let _busy = request
            .extensions()
            .get::<crate::http::SlotInfo>()
            .map(|c| c.slot.busy());
        let r = self.decide(request.get_ref()).await;
        let code = r.status.as_ref().map_or(0, |s| s.code);
        metrics::counter!(
            "jotd_gateway_requests_total",
            "door" => Door::ExtAuthz.as_str(),
            "status" => match code {
                0 => "ok",
                16 => "unauthenticated",
                7 => "permission_denied",
                14 => "unavailable",
                _ => "invalid_argument",
            },
        )
        .increment(1);
        Ok(Response::new(r))
    }
}
