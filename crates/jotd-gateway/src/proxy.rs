//! The JSON-RPC reverse proxy: each call is checked with jotd; allowed calls
//! go to the upstream node (without `Authorization`), denied ones are answered
//! here with a JSON-RPC error carrying the jotd reason and never reach it.

use crate::config::{Limits, Proxy};
use crate::gate::{CallFacts, Class, Door, Facts, Gate, Verdict, www_authenticate};
use crate::http::{Answer, AnswerBody, bearer, json, read_body, single_header};
use crate::jsonrpc::{self, AddressTable, Body, Call, Invalid, code, error_object};
use crate::route::{Route, tenant_of};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What the proxy door needs.
#[derive(Debug)]
pub struct ProxyDoor {
    /// Checks.
    pub gate: Gate,
    /// Tenant routes.
    pub routes: Vec<Route>,
    /// Method → address positions.
    pub table: AddressTable,
    /// Request limits.
    pub limits: Limits,
    upstreams: Vec<Uri>,
    next: AtomicUsize,
    client: HttpClient<HttpConnector, Full<Bytes>>,
    upstream_timeout: Duration,
    /// [`Proxy::pass_origin`].
    pub(crate) pass_origin: bool,
    /// WebSockets open (each holds one; `max_connections` in all, shared
    /// per address as the listeners' slots are).
    pub(crate) ws_slots: std::sync::Arc<jotd_transport::slots::ConnectionSlots>,
    /// Turns true at the drain: open WebSockets close (1001).
    pub(crate) stop: tokio::sync::watch::Receiver<bool>,
    /// Bytes of node answers held, across every connection
    /// (`max_answer_buffer_bytes`): from their first byte until the
    /// client has taken them.
    answer_room: Arc<crate::http::AnswerRoom>,
    /// Request bodies held at once, shared with the forward-auth door.
    body_room: crate::http::BodyRoom,
}

/// What the upstream answered.
struct Upstream {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
    /// The body's share of the answer buffer.
    room: crate::http::Charge,
}

/// Why the upstream gave no answer, and whether it did not answer in time
/// (`Late`) or answered more than it may (`TooLarge`: the node ran the call).
#[derive(Debug)]
struct UpstreamError(String, Failed);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failed {
    Late,
    TooLarge,
    /// The gateway's answer buffer (`max_answer_buffer_bytes`) is full:
    /// refused before the node saw the call (503, safe to retry).
    Busy,
    /// The answer buffer and its overdraft were full while a node's answer
    /// came in: the node ran the call (502, as an answer too large).
    Overflow,
    Other,
}

/// The node's answer body, whole, by `by`, at most `cap` bytes, each chunk
/// charged to `room` (the gateway's answer buffer) as it arrives. Failures
/// here count as those before the head do (they were not counted: a node
/// that stalled mid-body failed every call with no `timeout` to alert on).
async fn collect_answer<B>(
    body: B,
    cap: usize,
    by: tokio::time::Instant,
    uri: &Uri,
    mut held: crate::http::Charge,
) -> Result<(Bytes, crate::http::Charge), UpstreamError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let collect = async {
        let mut body = std::pin::pin!(body);
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                upstream_error("body");
                UpstreamError::other(format!("{uri}: {}", e.into()))
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            // The answer is relayed whole: capped.
            if out.len() + data.len() > cap {
                upstream_error("too_large");
                return Err(UpstreamError(
                    format!("{uri}: answer larger than {cap} bytes"),
                    Failed::TooLarge,
                ));
            }
            out.extend_from_slice(&data);
            // The node has run the call: its answer is charged (past the
            // budget, as an overdraft that holds admission back), never made
            // to wait while it holds room; failed only past twice the budget
            // (the overdraft's own cap), counted.
            if !held.cover(out.len()) {
                upstream_error("answer_buffer");
                return Err(UpstreamError(
                    format!("{uri}: the gateway's answer buffer and its overdraft are full"),
                    Failed::Overflow,
                ));
            }
        }
        Ok((Bytes::from(out), held))
    };
    tokio::time::timeout_at(by, collect).await.map_err(|_| {
        upstream_error("timeout");
        UpstreamError(format!("{uri}: body not finished in time"), Failed::Late)
    })?
}

/// Counts one failed node request by `kind` (`connect`, `timeout`,
/// `request`, `too_large`, `body`, `bad_answer`).
fn upstream_error(kind: &'static str) {
    metrics::counter!("jotd_gateway_upstream_errors_total", "kind" => kind).increment(1);
}

impl UpstreamError {
    fn other(why: String) -> Self {
        Self(why, Failed::Other)
    }
    /// 504 when the node did not answer in time, 503 when the gateway had
    /// no room for the answer, else 502.
    fn status(&self) -> StatusCode {
        match self.1 {
            Failed::Late => StatusCode::GATEWAY_TIMEOUT,
            Failed::Busy => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

impl ProxyDoor {
    /// A proxy door forwarding to `proxy.upstreams`.
    #[must_use]
    pub fn new(
        gate: Gate,
        routes: Vec<Route>,
        table: AddressTable,
        limits: Limits,
        proxy: &Proxy,
        stop: tokio::sync::watch::Receiver<bool>,
        body_room: crate::http::BodyRoom,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = HttpClient::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        Self {
            gate,
            routes,
            table,
            limits,
            upstreams: proxy.upstreams.clone(),
            next: AtomicUsize::new(0),
            client,
            upstream_timeout: proxy.upstream_timeout,
            pass_origin: proxy.pass_origin,
            ws_slots: jotd_transport::slots::ConnectionSlots::new(
                limits.max_connections,
                jotd_transport::slots::SlotRule::Share,
                limits.ipv6_share_prefix,
            ),
            stop,
            answer_room: crate::http::AnswerRoom::new(limits.max_answer_buffer_bytes),
            body_room,
        }
    }

    /// Charges a finished answer built from node answers to the answer
    /// buffer (held until the client has taken it), starting from `have`,
    /// the room its node answers already hold: covered up to its length
    /// (an overdraft past the budget), the excess given back. Never refused:
    /// the node has run the calls, and an answer dropped now would be run
    /// again on a retry.
    fn held(&self, mut a: Answer, have: Option<crate::http::Charge>) -> Answer {
        let need = a.body().len();
        let mut room = have.unwrap_or_else(|| self.answer_room.charge());
        // Node bytes are held already (overdrawn if need be); what the
        // gateway wrote around them (denials, errors, the array) is taken
        // only from what is free, never overdrawn.
        room.shrink_to(need);
        room.cover_free(need);
        a.body_mut().hold(room, self.limits.write_timeout);
        a
    }

    /// Room reserved for a node call, or 503 before the node sees it (safe
    /// to retry) while the buffer has none or runs an overdraft.
    fn admit(&self, uri: &Uri) -> Result<crate::http::Charge, UpstreamError> {
        let n = crate::http::ADMIT_ROOM.min(self.limits.max_answer_buffer_bytes);
        self.answer_room.admit(n).ok_or_else(|| {
            upstream_error("answer_buffer");
            UpstreamError(
                format!("{uri}: the gateway's answer buffer (max_answer_buffer_bytes) is full"),
                Failed::Busy,
            )
        })
    }

    /// POSTs `body` to an upstream (the next in turn; on a connection
    /// failure, once more to the one after); its answer may hold at most
    /// `cap` bytes (an error beyond) and must be whole by `by` (both tries
    /// share it: a request's node time is `upstream_timeout_ms` in all).
    async fn forward(
        &self,
        body: Bytes,
        facts: &Facts,
        sub: Option<&str>,
        cap: usize,
        by: tokio::time::Instant,
    ) -> Result<Upstream, UpstreamError> {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let tries = self.upstreams.len().min(2);
        let mut last = String::new();
        for i in 0..tries {
            let uri = &self.upstreams[(first + i) % self.upstreams.len()];
            let reserved = self.admit(uri)?;
            // A fresh request: nothing of the client's headers (Authorization
            // above all) reaches the node but what is set here.
            let mut req = Request::builder()
                .method(Method::POST)
                .uri(uri.clone())
                .header(CONTENT_TYPE, "application/json")
                .header("x-jotd-tenant", facts.tenant.as_str());
            if let Some(s) = sub.and_then(|s| HeaderValue::from_str(s).ok()) {
                req = req.header("x-jotd-subject", s);
            }
            if let Some(o) = self.origin_for_node(facts) {
                req = req.header(hyper::header::ORIGIN, o);
            }
            let req = req
                .body(Full::new(body.clone()))
                .map_err(|e| UpstreamError::other(e.to_string()))?;
            let started = Instant::now();
            let sent = tokio::time::timeout_at(by, self.client.request(req)).await;
            match sent {
                Err(_) => {
                    upstream_error("timeout");
                    return Err(UpstreamError(
                        format!("{uri}: no answer within {:?}", self.upstream_timeout),
                        Failed::Late,
                    ));
                }
                Ok(Err(e)) if e.is_connect() => {
                    upstream_error("connect");
                    last = format!("{uri}: {e}");
                }
                Ok(Err(e)) => {
                    upstream_error("request");
                    return Err(UpstreamError::other(format!("{uri}: {e}")));
                }
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    let content_type = resp.headers().get(CONTENT_TYPE).cloned();
                    let (body, room) =
                        collect_answer(resp.into_body(), cap, by, uri, reserved).await?;
                    metrics::histogram!("jotd_gateway_upstream_seconds")
                        .record(started.elapsed().as_secs_f64());
                    return Ok(Upstream {
                        status,
                        content_type,
                        body,
                        room,
                    });
                }
            }
        }
        Err(UpstreamError::other(last))
    }

    /// The client's `Origin`, for the node, when `pass_origin` is set.
    pub(crate) fn origin_for_node(&self, facts: &Facts) -> Option<HeaderValue> {
        if !self.pass_origin {
            return None;
        }
        facts
            .origin
            .as_deref()
            .and_then(|o| HeaderValue::from_str(o).ok())
    }

    /// The WebSocket URL of the first upstream (`http` → `ws`).
    #[must_use]
    pub fn ws_upstream(&self) -> Option<String> {
        ws_url(self.upstreams.first()?)
    }

    /// Handles one HTTP request from `peer`.
    pub async fn handle(
        self: std::sync::Arc<Self>,
        req: Request<Incoming>,
        peer: std::net::SocketAddr,
    ) -> Answer {
        let answer = self.answer(req, peer).await;
        metrics::counter!(
            "jotd_gateway_requests_total",
            "door" => Door::Proxy.as_str(),
            "status" => status_label(answer.status()),
        )
        .increment(1);
        answer
    }

    async fn answer(
        self: &std::sync::Arc<Self>,
        req: Request<Incoming>,
        peer: std::net::SocketAddr,
    ) -> Answer {
        let upgrade = req.method() == Method::GET && crate::ws::is_upgrade(&req);
        if req.method() != Method::POST && !upgrade {
            let mut a = rpc_error(
                StatusCode::METHOD_NOT_ALLOWED,
                None,
                code::INVALID_REQUEST,
                "JSON-RPC over HTTP is POST (or a GET WebSocket upgrade)",
                None,
            );
            a.headers_mut()
                .insert(hyper::header::ALLOW, HeaderValue::from_static("POST, GET"));
            return a;
        }
        let headers = req.headers();
        // JSON bodies only, as geth asks: a browser sends a cross-site POST
        // without asking first (no preflight) only as text/plain, a form or
        // no type at all, and the node, given `application/json` by this
        // proxy, could not refuse it itself; refused here, a page cannot
        // drive a tenant that takes calls without a token.
        if !upgrade && !json_media_type(headers) {
            return rpc_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                None,
                code::INVALID_REQUEST,
                "Content-Type must be application/json (one header)",
                None,
            );
        }
        // One `Host`, one `Origin`, one `User-Agent` (RFC 9112 §3.2: two
        // `Host`s are a 400); an absolute-form target's authority wins
        // over `Host` (§3.2.2), as the next hop reads it.
        let single = |name: &str| single_header(headers, name);
        let (host, origin, user_agent) =
            match (single("host"), single("origin"), single("user-agent")) {
                (Ok(h), Ok(o), Ok(u)) => (
                    req.uri().authority().map(|a| a.as_str()).or(h),
                    o.map(str::to_owned),
                    u.map(str::to_owned),
                ),
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                    return rpc_error(
                        StatusCode::BAD_REQUEST,
                        None,
                        code::INVALID_REQUEST,
                        &e,
                        None,
                    );
                }
            };
        let tenant = match tenant_of(&self.routes, req.uri().path(), host) {
            Ok(Some(tenant)) => tenant,
            Ok(None) => {
                return rpc_error(
                    StatusCode::NOT_FOUND,
                    None,
                    code::INVALID_REQUEST,
                    "no route names a tenant for this path or host",
                    None,
                );
            }
            Err(why) => {
                return rpc_error(
                    StatusCode::BAD_REQUEST,
                    None,
                    code::INVALID_REQUEST,
                    &format!("the path is not in canonical form ({why})"),
                    Some(serde_json::json!({ "reason": "non_canonical_path" })),
                );
            }
        };
        let token = match bearer(headers) {
            Ok(t) => t,
            Err(why) => {
                let mut a = rpc_error(
                    StatusCode::BAD_REQUEST,
                    None,
                    code::UNAUTHORIZED,
                    &format!("unauthorized: {why}"),
                    None,
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
            origin,
            user_agent,
        };
        if upgrade {
            return crate::ws::upgrade(std::sync::Arc::clone(self), req, facts, peer).await;
        }
        // Held (its room in the body buffer) until the request is answered.
        let body = match read_body(
            req.into_body(),
            self.limits.max_body_bytes,
            self.limits.body_timeout,
            &self.body_room,
            Some(jotd_transport::slots::source(
                peer.ip(),
                self.limits.ipv6_share_prefix,
            )),
        )
        .await
        {
            Ok(b) => b,
            Err(e) => return e.answer(self.limits.max_body_bytes),
        };
        let parsed = match jsonrpc::parse(&body, &self.table, self.limits.max_batch_calls) {
            Ok(p) => p,
            Err(e) => return rpc_error(StatusCode::BAD_REQUEST, None, e.code, &e.message, None),
        };
        match parsed {
            Body::Single(Err(invalid)) => invalid_answer(StatusCode::BAD_REQUEST, &invalid),
            Body::Single(Ok(call)) => self.single(body.bytes.clone(), call, &facts).await,
            Body::Batch(calls) => self.batch(calls, &facts).await,
        }
    }

    async fn single(&self, body: Bytes, call: Call, facts: &Facts) -> Answer {
        let verdicts = self
            .gate
            .check(
                Door::Proxy,
                facts,
                vec![CallFacts {
                    method: Some(call.method.clone()),
                    addresses: call.addresses.clone(),
                }],
            )
            .await;
        let verdict = &verdicts[0];
        if !verdict.allowed() {
            return denial(verdict, call.id.as_deref());
        }
        let sub = match verdict {
            Verdict::Allow(d) => d.sub.as_deref(),
            _ => None,
        };
        match self
            .forward(
                body,
                facts,
                sub,
                self.limits.max_upstream_bytes,
                tokio::time::Instant::now() + self.upstream_timeout,
            )
            .await
        {
            Ok(up) => {
                let mut room = up.room;
                room.shrink_to(up.body.len());
                let mut body = AnswerBody::new(up.body);
                body.hold(room, self.limits.write_timeout);
                let mut r = hyper::Response::new(body);
                *r.status_mut() = up.status;
                if let Some(ct) = up.content_type {
                    r.headers_mut().insert(CONTENT_TYPE, ct);
                }
                r
            }
            Err(e) => {
                tracing::warn!("upstream: {}", e.0);
                rpc_error(
                    e.status(),
                    call.id.as_deref(),
                    code::INTERNAL,
                    "upstream unavailable",
                    None,
                )
            }
        }
    }

    async fn batch(&self, calls: Vec<Result<Call, Invalid>>, facts: &Facts) -> Answer {
        let to_check = CallFacts::of_calls(&calls);
        let mut verdicts = self
            .gate
            .check(Door::Proxy, facts, to_check)
            .await
            .into_iter();
        // Per element: Some(answer) when answered here, None when it goes upstream.
        let mut answers: Vec<Option<Box<RawValue>>> = Vec::with_capacity(calls.len());
        let mut forwarded: Vec<usize> = Vec::new();
        let mut worst: Option<Class> = None;
        let mut any_ok = false;
        let mut sub = None;
        let mut exp = None;
        let mut token_reason = None;
        for (i, c) in calls.iter().enumerate() {
            match c {
                Err(invalid) => {
                    any_ok = true; // answered on its own merits, not refused
                    answers.push(Some(error_object(
                        invalid.id.as_deref(),
                        invalid.code,
                        &invalid.message,
                        None,
                    )));
                }
                Ok(call) => {
                    let v = verdicts.next().expect("one verdict per call");
                    if v.allowed() {
                        any_ok = true;
                        if let Verdict::Allow(d) = &v {
                            sub = sub.or_else(|| d.sub.clone());
                            exp = exp.or(d.exp);
                        }
                        forwarded.push(i);
                        answers.push(None);
                    } else {
                        worst = worst.max(v.class());
                        if let (Verdict::Deny(r, _), Some(Class::Token)) = (&v, v.class()) {
                            token_reason = token_reason.or(Some(*r));
                        }
                        answers.push(Some(denial_object(&v, call.id.as_deref())));
                    }
                }
            }
        }
        let mut node_room = None;
        if !forwarded.is_empty() {
            let picked: Vec<&Call> = forwarded
                .iter()
                .map(|&i| calls[i].as_ref().expect("forwarded calls parsed"))
                .collect();
            match self
                .forward_calls(&picked, facts, sub.as_deref(), exp)
                .await
            {
                Ok((mut by_pos, room)) => {
                    node_room = room;
                    for (k, &i) in forwarded.iter().enumerate() {
                        answers[i] = by_pos[k].take();
                    }
                }
                Err(e) => {
                    tracing::warn!("upstream: {}", e.0);
                    for (k, &i) in forwarded.iter().enumerate() {
                        answers[i] = Some(error_object(
                            picked[k].id.as_deref(),
                            code::INTERNAL,
                            "upstream unavailable",
                            None,
                        ));
                    }
                }
            }
        }
        // Notifications (no id) get no answer, allowed or not (JSON-RPC 2.0 §6).
        let out: Vec<Box<RawValue>> = calls
            .iter()
            .zip(answers)
            .filter(|(c, _)| !matches!(c, Ok(call) if call.id.is_none()))
            .filter_map(|(_, a)| a)
            .collect();
        let status = match (any_ok, worst) {
            (false, Some(Class::Token)) => StatusCode::UNAUTHORIZED,
            (false, Some(Class::Policy)) => StatusCode::FORBIDDEN,
            (false, Some(Class::Unavailable)) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::OK,
        };
        if out.is_empty() && status == StatusCode::OK {
            // Only notifications: JSON-RPC 2.0 answers nothing.
            let mut a = hyper::Response::new(AnswerBody::new(Bytes::new()));
            *a.status_mut() = StatusCode::NO_CONTENT;
            return a;
        }
        let mut a = json(status, &*jsonrpc::raw_array(out.iter().map(|r| &**r)));
        // What the node answered, now in this body: held in the answer
        // buffer as a single call's answer is (the parts' shares went back
        // as they were copied in).
        if !forwarded.is_empty() {
            drop(out);
            a = self.held(a, node_room);
        }
        if let (StatusCode::UNAUTHORIZED, Some(r)) = (status, token_reason)
            && let Ok(h) = HeaderValue::from_str(&www_authenticate(r))
        {
            a.headers_mut().insert(WWW_AUTHENTICATE, h);
        }
        a
    }

    /// Forwards allowed calls of a batch; one answer (or none, for a
    /// notification) per call, by position. Calls go as one batch array when
    /// their ids tell the answers apart, else one by one. Either way the
    /// request's node time is one `upstream_timeout_ms` in all (one by one,
    /// 100 calls each given their own timeout held a connection for most of
    /// an hour and outlasted every drain), and no call is sent once the
    /// token's `exp` has passed.
    async fn forward_calls(
        &self,
        calls: &[&Call],
        facts: &Facts,
        sub: Option<&str>,
        exp: Option<u64>,
    ) -> Result<(Vec<Option<Box<RawValue>>>, Option<crate::http::Charge>), UpstreamError> {
        let by = tokio::time::Instant::now() + self.upstream_timeout;
        // Ids are told apart by the key answers are matched on, so two ids
        // written differently but read alike (`1` and `1.0`, `"a"` and
        // `"\u0061"`, integers past 2^53) go one by one, never crossed.
        let unique = {
            let mut seen = std::collections::HashSet::new();
            calls.iter().all(|c| {
                c.id.as_deref()
                    .is_none_or(|id| id_key_raw(id).is_some_and(|k| seen.insert(k)))
            })
        };
        if unique {
            let mut body =
                Vec::with_capacity(calls.iter().map(|c| c.raw.get().len() + 1).sum::<usize>() + 2);
            body.push(b'[');
            for (i, c) in calls.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(c.raw.get().as_bytes());
            }
            body.push(b']');
            let up = self
                .forward(body.into(), facts, sub, self.limits.max_upstream_bytes, by)
                .await?;
            // Only notifications: a node sends nothing back (JSON-RPC 2.0
            // §6), and there is nothing to match. Any 2xx will do; an empty
            // body was counted a bad answer and logged per request.
            if calls.iter().all(|c| c.id.is_none()) {
                if !up.status.is_success() {
                    upstream_error("bad_answer");
                    return Err(UpstreamError::other(format!(
                        "the node answered a batch of notifications with HTTP {}",
                        up.status
                    )));
                }
                return Ok((calls.iter().map(|_| None).collect(), None));
            }
            // Answers kept as the node wrote them (numbers and all).
            let answers: Vec<Box<RawValue>> =
                match serde_json::from_slice::<Vec<Box<RawValue>>>(&up.body) {
                    Ok(a) => a,
                    // A node may answer a one-call batch with a bare object.
                    Err(_) if up.body.trim_ascii_start().starts_with(b"{") => {
                        match serde_json::from_slice::<Box<RawValue>>(&up.body) {
                            Ok(v) => vec![v],
                            Err(_) => Vec::new(),
                        }
                    }
                    _ => {
                        upstream_error("bad_answer");
                        return Err(UpstreamError::other(format!(
                            "the node answered a batch with HTTP {} and no JSON array",
                            up.status
                        )));
                    }
                };
            #[derive(serde::Deserialize)]
            struct IdOf {
                id: Option<Value>,
            }
            // Matched on the id's value (a node may rewrite `1e0` as `1`).
            let mut by_id: HashMap<String, Box<RawValue>> = HashMap::new();
            for a in answers {
                if let Ok(IdOf { id: Some(id) }) = serde_json::from_str::<IdOf>(a.get())
                    && let Some(key) = id_key(&id)
                {
                    by_id.insert(key, a);
                }
            }
            let mut unanswered = false;
            let out = calls
                .iter()
                .map(|c| {
                    let id = c.id.as_deref()?;
                    let key = id_key_raw(id).unwrap_or_default();
                    Some(by_id.remove(&key).unwrap_or_else(|| {
                        unanswered = true;
                        error_object(
                            Some(id),
                            code::INTERNAL,
                            "the node sent no answer for this call",
                            None,
                        )
                    }))
                })
                .collect();
            if unanswered {
                upstream_error("bad_answer");
            }
            // The node's answer's room goes on to the request's answer.
            Ok((out, Some(up.room)))
        } else {
            // One by one; each call's own failure is its own answer (a call
            // the node already ran keeps its result). `max_upstream_bytes`
            // bounds the answers of the whole request, not each one: a batch of
            // 100 calls could otherwise hold 100 answers of the limit each.
            let mut out = Vec::with_capacity(calls.len());
            // Each answer's room is kept while the next call runs: its copy
            // waits in `out` (a batch of repeated ids held up to
            // `max_upstream_bytes` outside the answer buffer meanwhile).
            let mut held: Option<crate::http::Charge> = None;
            let mut sent_one = false;
            let mut left = self.limits.max_upstream_bytes;
            for c in calls {
                // Checked once a call has gone (the first was judged by jotd,
                // leeway included, an instant ago).
                let expired = sent_one && exp.is_some_and(|e| crate::ws::unix_now() >= e);
                let why_not = if left == 0 {
                    Some("not sent: the answers before it filled max_upstream_bytes")
                } else if tokio::time::Instant::now() >= by {
                    Some("not sent: the request's upstream_timeout_ms had passed")
                } else if expired {
                    Some("not sent: the token expired while the calls before it ran")
                } else {
                    None
                };
                if let Some(why) = why_not {
                    out.push(
                        c.id.as_ref()
                            .map(|id| error_object(Some(id), code::INTERNAL, why, None)),
                    );
                    continue;
                }
                let up = self
                    .forward(
                        Bytes::copy_from_slice(c.raw.get().as_bytes()),
                        facts,
                        sub,
                        left,
                        by,
                    )
                    .await;
                sent_one = true;
                let mut up = up;
                if let Ok(u) = &mut up {
                    let mut room = std::mem::replace(&mut u.room, self.answer_room.charge());
                    // Its answer's size, not the 64 KiB reserved for it.
                    room.shrink_to(u.body.len());
                    match &mut held {
                        Some(h) => h.merge(room),
                        None => held = Some(room),
                    }
                }
                match &up {
                    Ok(up) => left = left.saturating_sub(up.body.len()),
                    // Past the budget: no later call is sent (the node ran this one).
                    Err(e) if matches!(e.1, Failed::TooLarge | Failed::Overflow) => left = 0,
                    Err(_) => {}
                }
                out.push(c.id.as_ref().map(|id| match &up {
                    Ok(up) => {
                        serde_json::from_slice::<Box<RawValue>>(&up.body).unwrap_or_else(|_| {
                            error_object(
                                Some(id),
                                code::INTERNAL,
                                "the node's answer is not JSON",
                                None,
                            )
                        })
                    }
                    Err(e) => {
                        tracing::warn!("upstream: {}", e.0);
                        let why = if e.1 == Failed::TooLarge {
                            "the node's answers passed max_upstream_bytes"
                        } else {
                            "upstream unavailable"
                        };
                        error_object(Some(id), code::INTERNAL, why, None)
                    }
                }));
            }
            Ok((out, held))
        }
    }
}

/// The key a JSON-RPC id is matched on: a number by its value as the node's
/// parser most likely reads it (an `f64`: `1`, `1.0` and `1e0` are one key),
/// a string by its decoded text. `null` and other types have none.
fn id_key(id: &Value) -> Option<String> {
    match id {
        // `-0` and `0` are one key: a node that reads ids as integers (or
        // rewrites them) answers both as `0`.
        Value::Number(n) => n
            .as_f64()
            .map(|f| format!("n:{:?}", if f == 0.0 { 0.0 } else { f })),
        Value::String(s) => Some(format!("s:{s}")),
        _ => None,
    }
}

fn id_key_raw(id: &RawValue) -> Option<String> {
    id_key(&serde_json::from_str::<Value>(id.get()).ok()?)
}

/// A status's metric label.
#[must_use]
pub fn status_label(s: StatusCode) -> &'static str {
    match s.as_u16() {
        200 => "200",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        413 => "413",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 300 => "2xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

/// `upstream` as a WebSocket URL (`http` → `ws`), path and query kept as for
/// HTTP calls (`?key=…` on the node's URL was dropped).
fn ws_url(upstream: &Uri) -> Option<String> {
    let authority = upstream.authority()?;
    let path = upstream.path_and_query().map_or("/", |p| p.as_str());
    Some(format!("ws://{authority}{path}"))
}

/// Whether the request has one `Content-Type`, a JSON one (what geth takes:
/// `application/json`, `application/json-rpc`, `application/jsonrequest`,
/// any case, parameters such as `charset` allowed).
fn json_media_type(headers: &hyper::HeaderMap) -> bool {
    let mut values = headers.get_all(hyper::header::CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    [
        "application/json",
        "application/json-rpc",
        "application/jsonrequest",
    ]
    .iter()
    .any(|t| essence.eq_ignore_ascii_case(t))
}

fn rpc_error(
    status: StatusCode,
    id: Option<&RawValue>,
    code: i64,
    message: &str,
    data: Option<Value>,
) -> Answer {
    json(status, &error_object(id, code, message, data))
}

fn invalid_answer(status: StatusCode, invalid: &Invalid) -> Answer {
    rpc_error(
        status,
        invalid.id.as_deref(),
        invalid.code,
        &invalid.message,
        None,
    )
}

/// The JSON-RPC error object for a refused call: the jotd reason in `data`.
#[must_use]
pub fn denial_object(v: &Verdict, id: Option<&RawValue>) -> Box<RawValue> {
    let (code, message) = match v.class() {
        Some(Class::Token) => (code::UNAUTHORIZED, "unauthorized"),
        Some(Class::Policy) => (code::FORBIDDEN, "forbidden"),
        _ => (code::INTERNAL, "authorization unavailable"),
    };
    let reason = v.reason_name();
    error_object(
        id,
        code,
        &format!("{message}: {reason}"),
        Some(serde_json::json!({ "reason": reason })),
    )
}

/// A refused call's status (401, 403, 503), `WWW-Authenticate` value (for
/// 401) and JSON-RPC error object.
#[must_use]
pub fn denial_parts(
    v: &Verdict,
    id: Option<&RawValue>,
) -> (StatusCode, Option<String>, Box<RawValue>) {
    let status = match v.class() {
        Some(Class::Token) => StatusCode::UNAUTHORIZED,
        Some(Class::Policy) => StatusCode::FORBIDDEN,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let www = match v {
        Verdict::Deny(r, _) if status == StatusCode::UNAUTHORIZED => Some(www_authenticate(*r)),
        _ => None,
    };
    (status, www, denial_object(v, id))
}

/// The HTTP answer for one refused call: 401 (with `WWW-Authenticate`), 403 or 503.
#[must_use]
pub fn denial(v: &Verdict, id: Option<&RawValue>) -> Answer {
    let (status, www, body) = denial_parts(v, id);
    let mut a = json(status, &body);
    if let Some(h) = www.and_then(|w| HeaderValue::from_str(&w).ok()) {
        a.headers_mut().insert(WWW_AUTHENTICATE, h);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_websocket_url_keeps_path_and_query() {
        for (upstream, ws) in [
            ("http://node:8545", "ws://node:8545/"),
            ("http://node:8545/rpc?key=abc", "ws://node:8545/rpc?key=abc"),
            ("http://[::1]:8546/", "ws://[::1]:8546/"),
        ] {
            let u: Uri = upstream.parse().unwrap();
            assert_eq!(ws_url(&u).as_deref(), Some(ws), "{upstream}");
        }
    }

    /// A node answer that fails after its head (stalls past the deadline,
    /// grows past the cap, breaks) is counted by kind, as failures before
    /// the head are (it was not counted at all).
    #[test]
    fn failures_after_the_head_are_counted() {
        use futures_util::{StreamExt as _, stream};
        use http_body_util::StreamBody;
        use hyper::body::Frame;
        type Chunk = Result<Frame<Bytes>, std::io::Error>;
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let uri: Uri = "http://node:8545/".parse().unwrap();
        metrics::with_local_recorder(&recorder, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            rt.block_on(async {
                let soon = || tokio::time::Instant::now() + Duration::from_millis(50);
                let room = crate::http::AnswerRoom::new(1 << 20);
                let first: Chunk = Ok(Frame::data(Bytes::from_static(b"{")));
                let stalls = StreamBody::new(stream::iter([first]).chain(stream::pending()));
                let e = collect_answer(stalls, 1 << 20, soon(), &uri, room.charge())
                    .await
                    .unwrap_err();
                assert_eq!(e.1, Failed::Late);
                let big: Chunk = Ok(Frame::data(Bytes::from(vec![b' '; 100])));
                let e = collect_answer(
                    StreamBody::new(stream::iter([big])),
                    10,
                    soon(),
                    &uri,
                    room.charge(),
                )
                .await
                .unwrap_err();
                assert_eq!(e.1, Failed::TooLarge);
                let broken: Chunk = Err(std::io::Error::other("reset"));
                let e = collect_answer(
                    StreamBody::new(stream::iter([broken])),
                    10,
                    soon(),
                    &uri,
                    room.charge(),
                )
                .await
                .unwrap_err();
                assert_eq!(e.1, Failed::Other);
                assert_eq!(room.free(), 1 << 20, "failures give their room back");
                let fine: Chunk = Ok(Frame::data(Bytes::from_static(b"{}")));
                let (got, held) = collect_answer(
                    StreamBody::new(stream::iter([fine])),
                    10,
                    soon(),
                    &uri,
                    room.charge(),
                )
                .await
                .unwrap();
                assert_eq!(&got[..], b"{}");
                assert_eq!(held.len(), 2);
                assert_eq!(room.free(), (1 << 20) - 2);
                drop(held);
                // The answer buffer full: the node's answer (the node ran the
                // call) is kept as an overdraft, not dropped and not made to
                // wait; the overdraft holds admission back until it is given back.
                let small = crate::http::AnswerRoom::new(4);
                let five: Chunk = Ok(Frame::data(Bytes::from_static(b"[1,2]")));
                let (got, held) = collect_answer(
                    StreamBody::new(stream::iter([five])),
                    10,
                    soon(),
                    &uri,
                    small.charge(),
                )
                .await
                .unwrap();
                assert_eq!((&got[..], held.len()), (&b"[1,2]"[..], 5));
                assert_eq!((small.free(), small.overdraft()), (0, 1));
                assert!(small.admit(1).is_none());
                drop(held);
                assert_eq!((small.overdraft(), small.free()), (0, 4));
            });
        });
        let text = handle.render();
        for kind in ["timeout", "too_large", "body"] {
            assert!(
                text.contains(&format!(
                    "jotd_gateway_upstream_errors_total{{kind=\"{kind}\"}} 1"
                )),
                "{kind}: {text}"
            );
        }
    }
}
