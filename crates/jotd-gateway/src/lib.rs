//! jotd-gateway: the gateway side of jotd.
//!
//! Runs beside each gateway node (or as the gateway in front of a node) and
//! turns the requests it sees, one at a time, into micro-batched checks
//! against a pool of jotd daemons (QUIC, the client library: failover,
//! hedging, ejection). Doors:
//!
//! - a JSON-RPC reverse proxy ([`proxy`]): allowed calls go to the node,
//!   denied ones are answered with a JSON-RPC error carrying the jotd reason;
//! - HTTP forward-auth ([`forward_auth`]) for NGINX, Caddy, Traefik, APISIX;
//! - an admin listener: `/metrics`, `/healthz`, `/readyz`.
//!
//! The binary owns the config file ([`config`]); this library takes it typed.

pub mod config;
pub mod ext_authz;
pub mod forward_auth;
pub mod gate;
pub mod http;
pub mod jsonrpc;
pub mod proxy;
pub mod route;
pub mod ws;

use crate::config::Config;
use crate::forward_auth::ForwardAuthDoor;
use crate::gate::Gate;
use crate::http::{Answer, json, text};
use crate::proxy::ProxyDoor;
use anyhow::Context;
use hyper::StatusCode;
use jotd_transport::slots::{ConnectionSlots, SlotRule};
use jotd_transport::{Batcher, BatcherOptions, Client, ClientOptions, client_config};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Connections the admin listener serves at once (scrapers and probes).
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    /// Where the proxy listens, when configured.
    pub proxy: Option<SocketAddr>,
    /// Where forward-auth listens, when configured.
    pub forward_auth: Option<SocketAddr>,
    /// Where the Envoy ext_authz (gRPC) door listens, when configured.
    pub ext_authz: Option<SocketAddr>,
    /// Where the admin listener listens, when configured.
    pub admin: Option<SocketAddr>,
    /// The batcher (counters).
    pub batcher: Batcher,
    client: Arc<Client>,
    stop: watch::Sender<bool>,
    admin_stop: watch::Sender<bool>,
    /// Turns true when the drain begins (before `drain_delay`): the gRPC
    /// health service says NOT_SERVING from then on.
    drain_began: watch::Sender<bool>,
    draining: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<()>,
    admin_tasks: tokio::task::JoinSet<()>,
    limits: config::Limits,
}

impl Gateway {
    /// The pool client (counters).
    #[must_use]
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Turns `/readyz` to `503 draining`; after `[limits] drain_delay_ms`
    /// stops taking connections, lets requests in flight finish (each HTTP
    /// connection within `drain_timeout_ms`, every listener within a few
    /// seconds more: past that what is left is dropped), closes the pool.
    /// The admin listener answers until then.
    pub async fn drain(mut self) {
        self.draining.store(true, Ordering::SeqCst);
        let _ = self.drain_began.send(true);
        // The doors keep serving while a balancer that polls readiness
        // notices: stopped at once, the connections it still sent here
        // were refused.
        tokio::time::sleep(self.limits.drain_delay).await;
        let _ = self.stop.send(true);
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(self.limits.drain_timeout + Duration::from_secs(5), all)
            .await
            .is_err()
        {
            tracing::warn!("drain: connections still open past the drain timeout are dropped");
            self.tasks.abort_all();
        }
        let _ = self.admin_stop.send(true);
        let admin = async { while self.admin_tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(2), admin)
            .await
            .is_err()
        {
            self.admin_tasks.abort_all();
        }
        self.client.close();
    }
}

/// Renders the Prometheus text: the recorder's metrics (when one was
/// installed) plus the batcher's and the pool client's counters.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// The pool's TLS client, from the files `[pool]` names: read and checked
/// the same way by `serve` and by `config check`.
///
/// # Errors
/// A file cannot be read, or is not the PEM it should be (named).
pub fn pool_tls(cfg: &Config) -> anyhow::Result<rustls::ClientConfig> {
    let p = &cfg.pool;
    let ca = jotd_transport::files::read_file(&p.ca_file)
        .with_context(|| format!("{}: cannot read the pool CA (ca_file)", p.ca_file.display()))?;
    let cert = match &p.client_cert {
        Some((c, k)) => Some((
            jotd_transport::files::read_file(c)
                .with_context(|| format!("{}: cannot read client_cert_file", c.display()))?,
            jotd_transport::files::read_file(k)
                .with_context(|| format!("{}: cannot read client_key_file", k.display()))?,
        )),
        None => None,
    };
    let tls = client_config(
        &ca,
        cert.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
    )
    .map_err(|e| {
        // The library names its inputs; the file names them as keys, with their paths.
        let (key, path) = match (e.what, &p.client_cert) {
            ("cert", Some((c, _))) => ("client_cert_file", c),
            ("key", Some((_, k))) => ("client_key_file", k),
            _ => ("ca_file", &p.ca_file),
        };
        anyhow::anyhow!(
            "{}: pool.{key} {}: {}",
            cfg.file.display(),
            path.display(),
            e.message
        )
    })?;
    Ok(tls)
}

fn pool_client(cfg: &Config) -> anyhow::Result<Client> {
    let p = &cfg.pool;
    let tls = pool_tls(cfg)?;
    let (addrs, names): (Vec<&String>, Vec<&String>) = p
        .endpoints
        .iter()
        .partition(|e| e.parse::<SocketAddr>().is_ok());
    let mut opts = ClientOptions::new(
        addrs.iter().map(|a| a.parse().expect("checked")).collect(),
        tls,
    );
    opts.names = names.into_iter().cloned().collect();
    opts.server_name.clone_from(&p.server_name);
    // A second past the checks' own deadline: equal, the batch's timeout
    // fired on the checks' tick and reached them before their deadline did
    // (and ejected a replica holding a check for a key refetch). Callers
    // that have gone cancel their batch before it.
    opts.batch_timeout = p.check_timeout + Duration::from_secs(1);
    Client::new(opts).map_err(|e| anyhow::anyhow!("jotd pool: {e}"))
}

/// Binds a listener of config section `section`; returns it and its address.
async fn bind(
    section: &str,
    listen: SocketAddr,
) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("[{section}] listen {listen}"))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Starts every configured listener. `render` serves `/metrics` (none: 404).
///
/// # Errors
/// A file cannot be read, a listener cannot bind.
pub async fn start(cfg: &Config, render: Option<Render>) -> anyhow::Result<Gateway> {
    let client = Arc::new(pool_client(cfg)?);
    if let Err(e) = client.connect_all().await {
        // Not fatal: the pool may come up after the gateway; checks fail
        // (closed, or open where configured) until it does.
        tracing::warn!("jotd pool not reachable yet: {e}");
    }
    let batcher = Batcher::new(
        Arc::clone(&client),
        BatcherOptions {
            max_items: cfg.batch.max_items,
            max_delay: cfg.batch.max_delay,
            eager_batches: cfg.batch.eager_batches,
            ..BatcherOptions::default()
        },
    );
    let gate = Gate::new(
        batcher.clone(),
        cfg.pool.check_timeout,
        cfg.pool.failure_mode,
        cfg.limits.max_token_bytes,
    );
    let (stop, stopped) = watch::channel(false);
    // The admin listener stops only after the doors have drained: its
    // `/readyz` answers `503 draining` meanwhile, so a balancer takes the
    // node out while requests in flight finish.
    let (admin_stop, admin_stopped) = watch::channel(false);
    let (drain_began, drain_seen) = watch::channel(false);
    let draining = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    let mut admin_tasks = tokio::task::JoinSet::new();
    let header_timeout = Duration::from_secs(10);

    // One HTTP listener, served until `stopped` says so.
    let serve_http = |tasks: &mut tokio::task::JoinSet<()>,
                      stopped: &watch::Receiver<bool>,
                      listener,
                      door,
                      max,
                      rule| {
        tasks.spawn(http::serve(
            listener,
            door,
            stopped.clone(),
            (
                header_timeout,
                cfg.limits.write_timeout,
                cfg.limits.drain_timeout,
            ),
            ConnectionSlots::new(max, rule, cfg.limits.ipv6_share_prefix),
        ));
    };

    // One body budget for the doors that read bodies.
    let body_room =
        http::BodyRoom::new(cfg.limits.max_body_buffer_bytes, cfg.limits.max_body_bytes);
    let mut proxy_addr = None;
    if let Some(p) = &cfg.proxy {
        let (listener, addr) = bind("proxy", p.listen).await?;
        proxy_addr = Some(addr);
        let door = Arc::new(ProxyDoor::new(
            gate.clone(),
            cfg.routes.clone(),
            cfg.addresses.clone(),
            cfg.limits,
            p,
            stopped.clone(),
            body_room.clone(),
        ));
        let handle: http::Handler =
            Arc::new(move |req, peer| Box::pin(Arc::clone(&door).handle(req, peer)));
        serve_http(
            &mut tasks,
            &stopped,
            listener,
            handle,
            cfg.limits.max_connections,
            SlotRule::Share,
        );
    }
    let mut fa_addr = None;
    if let Some(fa) = &cfg.forward_auth {
        let (listener, addr) = bind("forward_auth", fa.listen).await?;
        fa_addr = Some(addr);
        let door = Arc::new(ForwardAuthDoor {
            gate: gate.clone(),
            routes: cfg.routes.clone(),
            table: cfg.addresses.clone(),
            limits: cfg.limits,
            headers: fa.clone(),
            body_room: body_room.clone(),
        });
        let handle: http::Handler = Arc::new(move |req, _| Box::pin(Arc::clone(&door).handle(req)));
        serve_http(
            &mut tasks,
            &stopped,
            listener,
            handle,
            cfg.limits.max_connections,
            SlotRule::Share,
        );
    }
    let mut ext_addr = None;
    if let Some(e) = cfg.ext_authz {
        let (listener, addr) = bind("ext_authz", e.listen).await?;
        ext_addr = Some(addr);
        let door = ext_authz::ExtAuthzDoor {
            gate: gate.clone(),
            routes: cfg.routes.clone(),
            table: cfg.addresses.clone(),
            limits: cfg.limits,
            remove_authorization: e.remove_authorization,
        };
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<envoy_types::ext_authz::v3::pb::AuthorizationServer<ext_authz::ExtAuthzDoor>>()
            .await;
        // NOT_SERVING (the door's service and the server's, `""`, Envoy's
        // default) as soon as the drain begins: the listener keeps serving
        // for `drain_delay_ms`, while Envoy's gRPC health checks see it and
        // move on; set at the stop, the listener was already gone.
        {
            let health = health.clone();
            let mut began = drain_seen.clone();
            tasks.spawn(async move {
                if began.wait_for(|b| *b).await.is_ok() {
                    health
                        .set_not_serving::<envoy_types::ext_authz::v3::pb::AuthorizationServer<
                            ext_authz::ExtAuthzDoor,
                        >>()
                        .await;
                    health
                        .set_service_status("", tonic_health::ServingStatus::NotServing)
                        .await;
                }
            });
        }
        let mut stop = stopped.clone();
        // A CheckRequest is read up to max_body_bytes + 1 MiB, and at least
        // MIN_CHECK_READ whatever max_body_bytes is: Envoy's max_request_bytes
        // may be set above max_body_bytes, and a body past the door's cap must
        // be answered 413 by the door, not refused by tonic with an error
        // that Envoy's `failure_mode_allow` lets through.
        let max_check_bytes = cfg
            .limits
            .max_body_bytes
            .saturating_add(1 << 20)
            .max(ext_authz::MIN_CHECK_READ);
        // Calls in flight per connection, so that one connection holds at
        // most 2 GiB of CheckRequests being read whatever the read cap is.
        let calls_per_connection = u32::try_from((2usize << 30) / max_check_bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, ext_authz::MAX_CALLS_PER_CONNECTION);
        // Past the check deadline (micro-batching and failover included), so
        // the door's own answer (503 when failing closed) comes first: a tonic
        // timeout is an error that `failure_mode_allow` lets through too.
        let call_timeout = cfg
            .pool
            .check_timeout
            .saturating_add(std::time::Duration::from_secs(5))
            .max(std::time::Duration::from_secs(30));
        // The same cap and share per address as the HTTP doors: Envoy is the
        // peer here (bind this listener where only it can reach it), but a
        // stray client opening connections without end would run the process
        // out of file descriptors for every door.
        let incoming = http::slotted_incoming(
            listener,
            ConnectionSlots::new(
                cfg.limits.max_connections,
                SlotRule::Share,
                cfg.limits.ipv6_share_prefix,
            ),
        );
        tasks.spawn(async move {
            // Bounded streams per connection, a deadline per call and
            // keep-alive probes so a dead peer's connection goes.
            // HTTP/2 limits set here, not left to tonic's defaults (0.14 passes
            // `None` for local-error resets, which turns h2's guard against
            // reset floods off; the listener has no authentication).
            let serve = tonic::transport::Server::builder()
                .http2_max_local_error_reset_streams(Some(1024))
                .http2_max_pending_accept_reset_streams(Some(20))
                .http2_max_header_list_size(Some(64 << 10))
                .max_concurrent_streams(Some(calls_per_connection))
                .timeout(call_timeout)
                .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
                .add_service(health_service)
                // A CheckRequest holds the body (up to max_body_bytes, refused by
                // the door beyond) plus headers: tonic's default 4 MiB cap would
                // refuse a larger one as an error, which Envoy's
                // `failure_mode_allow` reads as "let it through".
                .add_service(
                    envoy_types::ext_authz::v3::pb::AuthorizationServer::new(door)
                        .max_decoding_message_size(max_check_bytes),
                )
                .serve_with_incoming_shutdown(incoming, async move {
                    http::stopped(&mut stop).await;
                    health
                            .set_not_serving::<envoy_types::ext_authz::v3::pb::AuthorizationServer<
                                ext_authz::ExtAuthzDoor,
                            >>()
                            .await;
                });
            if let Err(e) = serve.await {
                tracing::error!("ext_authz server: {e}");
            }
        });
    }
    let mut admin_addr = None;
    if let Some(listen) = cfg.admin {
        let (listener, addr) = bind("admin", listen).await?;
        admin_addr = Some(addr);
        let st = Arc::new(AdminState {
            render,
            batcher: batcher.clone(),
            client: Arc::clone(&client),
            draining: Arc::clone(&draining),
            last_probe: tokio::sync::Mutex::new(None),
            fail_open: cfg.pool.failure_mode == config::FailureMode::Open,
            upstreams: cfg
                .proxy
                .as_ref()
                .map(|p| p.upstreams.clone())
                .unwrap_or_default(),
        });
        let handle: http::Handler = Arc::new(move |req, _| {
            let st = Arc::clone(&st);
            Box::pin(async move { st.answer(req.uri().path()).await })
        });
        // The admin listener: a few scrapers and probes, no authentication. A
        // client holding every slot loses its own, never a probe mid-request.
        serve_http(
            &mut admin_tasks,
            &admin_stopped,
            listener,
            handle,
            ADMIN_MAX_CONNECTIONS,
            SlotRule::MakeRoom,
        );
    }
    Ok(Gateway {
        proxy: proxy_addr,
        forward_auth: fa_addr,
        ext_authz: ext_addr,
        admin: admin_addr,
        batcher,
        client,
        stop,
        admin_stop,
        drain_began,
        draining,
        tasks,
        admin_tasks,
        limits: cfg.limits,
    })
}

/// A readiness probe's outcome: ready (with what is degraded, if anything),
/// or why not.
type Readiness = Result<Option<String>, String>;

/// Whether a check failed because the pool (or this gateway's queue) was
/// busy, not because no replica answers.
fn busy(e: &jotd_transport::CheckError) -> bool {
    match e {
        jotd_transport::CheckError::Overloaded => true,
        jotd_transport::CheckError::Client(jotd_transport::ClientError::Server {
            code, ..
        }) => *code == jotd_transport::ErrorCode::Overloaded as u16,
        _ => false,
    }
}

struct AdminState {
    render: Option<Render>,
    batcher: Batcher,
    client: Arc<Client>,
    draining: Arc<AtomicBool>,
    /// The last readiness probe's outcome and when it came.
    last_probe: tokio::sync::Mutex<Option<(tokio::time::Instant, Readiness)>>,
    /// The proxy's nodes: readiness needs one to take a connection.
    upstreams: Vec<hyper::Uri>,
    /// `failure_mode = "open"`: a pool that does not answer leaves the
    /// gateway ready (it serves, letting calls through), said in the body.
    fail_open: bool,
}

impl AdminState {
    async fn answer(&self, path: &str) -> Answer {
        match path {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => self.ready().await,
            "/metrics" => match &self.render {
                Some(r) => {
                    // The registry is rendered on the blocking pool, off the
                    // I/O threads that carry the doors' requests.
                    let r = Arc::clone(r);
                    let Ok(mut out) = tokio::task::spawn_blocking(move || r()).await else {
                        return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
                    };
                    self.pool_metrics(&mut out);
                    let mut a = text(StatusCode::OK, out);
                    a.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    a
                }
                None => text(StatusCode::NOT_FOUND, "metrics are off\n"),
            },
            _ => json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"paths": ["/metrics", "/healthz", "/readyz"]}),
            ),
        }
    }

    /// Ready when not draining, the pool answers a probe (a check for a
    /// tenant no config holds: any decision means a replica is serving),
    /// and, with a proxy, one of its nodes takes a TCP connection (a proxy
    /// whose node is down answered every call 502 while ready).
    async fn ready(&self) -> Answer {
        if self.draining.load(Ordering::SeqCst) {
            return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
        }
        // One probe a second at most, however often /readyz is asked, and
        // one at a time (askers meanwhile wait for its answer): the listener
        // has no authentication, and every probe is a check in the batcher's
        // queue, beside real ones.
        let mut last = self.last_probe.lock().await;
        // The drain may have begun while this waited for the probe.
        if self.draining.load(Ordering::SeqCst) {
            return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
        }
        let result = match &*last {
            Some((at, r)) if at.elapsed() < Duration::from_secs(1) => r.clone(),
            _ => {
                let probe = jotd_transport::Check {
                    tenant: "jotd-gateway-readiness-probe".into(),
                    ..jotd_transport::Check::default()
                };
                let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
                let r = match self.batcher.check(probe, deadline).await {
                    Ok(_) => self.a_node_answers().await.map(|()| None),
                    // Busy is not down: a queue full or a pool answering
                    // `overloaded` in a traffic spike would fail every
                    // gateway's readiness at once and empty the balancer.
                    Err(e) if busy(&e) => self.a_node_answers().await.map(|()| None),
                    Err(e) if self.fail_open => self
                        .a_node_answers()
                        .await
                        .map(|()| Some(format!("jotd pool not answering ({e}): calls are let through (failure_mode = \"open\")"))),
                    Err(e) => Err(format!("jotd pool not answering: {e}")),
                };
                *last = Some((tokio::time::Instant::now(), r.clone()));
                r
            }
        };
        drop(last);
        match result {
            Ok(None) => text(StatusCode::OK, "ready\n"),
            Ok(Some(degraded)) => text(StatusCode::OK, format!("ready; degraded: {degraded}\n")),
            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        }
    }

    /// `Ok` when there is no node to reach or one takes a TCP connection
    /// within a second (all dialled at once: one at a time, a probe with
    /// several silent nodes outlasted the balancer's check timeout); else
    /// why not, each node named in the configured order.
    async fn a_node_answers(&self) -> Result<(), String> {
        if self.upstreams.is_empty() {
            return Ok(());
        }
        let mut dials = tokio::task::JoinSet::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            let Some(a) = u.authority().cloned() else {
                continue;
            };
            dials.spawn(async move {
                let host = a.host().trim_start_matches('[').trim_end_matches(']');
                let port = a.port_u16().unwrap_or(80);
                let connect = tokio::net::TcpStream::connect((host, port));
                let why = match tokio::time::timeout(Duration::from_secs(1), connect).await {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(e)) => format!("{a}: {e}"),
                    Err(_) => format!("{a}: no connection within 1 s"),
                };
                Err((i, why))
            });
        }
        let mut why = Vec::new();
        // Dropping the set aborts the dials still running once one answered.
        while let Some(done) = dials.join_next().await {
            match done {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => why.push(e),
                Err(e) => why.push((usize::MAX, format!("probe task failed: {e}"))),
            }
        }
        why.sort_unstable();
        let why: Vec<String> = why.into_iter().map(|(_, w)| w).collect();
        Err(format!("no upstream node reachable: {}", why.join("; ")))
    }

    fn pool_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let s = self.batcher.stats();
        let _ = writeln!(
            out,
            "# HELP jotd_gateway_batches_total Batches sent to the jotd pool, by why they were sent.\n# TYPE jotd_gateway_batches_total counter"
        );
        for (why, n) in [
            ("full", s.flush_full),
            ("eager", s.flush_eager),
            ("answered", s.flush_answered),
            ("delay", s.flush_delay),
        ] {
            let _ = writeln!(out, "jotd_gateway_batches_total{{flush=\"{why}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP jotd_gateway_batches_cancelled_total Batches stopped in flight because every check in them had gone (deadline passed, client left).\n# TYPE jotd_gateway_batches_cancelled_total counter\njotd_gateway_batches_cancelled_total {}",
            s.cancelled
        );
        let _ = writeln!(
            out,
            "# HELP jotd_gateway_batch_items_total Checks sent in those batches (over batches: the mean batch size).\n# TYPE jotd_gateway_batch_items_total counter\njotd_gateway_batch_items_total {}",
            s.items
        );
        let _ = writeln!(
            out,
            "# HELP jotd_gateway_checks_dropped_total Checks never sent, by why.\n# TYPE jotd_gateway_checks_dropped_total counter\njotd_gateway_checks_dropped_total{{why=\"deadline\"}} {}\njotd_gateway_checks_dropped_total{{why=\"queue_full\"}} {}\njotd_gateway_checks_dropped_total{{why=\"batch_failed\"}} {}",
            s.abandoned, s.overloaded, s.failed
        );
        let c = self.client.stats();
        type PerEndpoint = fn(&jotd_transport::EndpointStats) -> u64;
        let per_endpoint: [(&str, &str, PerEndpoint); 3] = [
            (
                "jotd_gateway_pool_batches_total",
                "Batches sent to each jotd endpoint (first copies, retries, hedges).",
                |e| e.sent,
            ),
            (
                "jotd_gateway_pool_failures_total",
                "Attempts that failed or stalled, per jotd endpoint.",
                |e| e.failures,
            ),
            (
                "jotd_gateway_pool_ejections_total",
                "Times each jotd endpoint was taken out of rotation.",
                |e| e.ejections,
            ),
        ];
        for (name, help, value) in per_endpoint {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for e in &c.endpoints {
                let _ = writeln!(out, "{name}{{endpoint=\"{}\"}} {}", e.addr, value(e));
            }
        }
        let _ = writeln!(
            out,
            "# HELP jotd_gateway_pool_retries_total Batches sent again after a failure.\n# TYPE jotd_gateway_pool_retries_total counter\njotd_gateway_pool_retries_total {}\n# HELP jotd_gateway_pool_hedges_total Second copies of slow batches.\n# TYPE jotd_gateway_pool_hedges_total counter\njotd_gateway_pool_hedges_total {}",
            c.retries, c.hedges
        );
        let _ = writeln!(
            out,
            "# HELP jotd_gateway_pool_protocol_violations_total Answers from the pool that broke the protocol (dropped; the batch was sent again).\n# TYPE jotd_gateway_pool_protocol_violations_total counter\njotd_gateway_pool_protocol_violations_total {}\n# HELP jotd_gateway_pool_disagreements_total Late copies whose decision differed from the one used: replicas that decide one token differently (a stale key, another config).\n# TYPE jotd_gateway_pool_disagreements_total counter\njotd_gateway_pool_disagreements_total {}",
            c.protocol_violations, c.late_disagreements
        );
    }
}
