//! `jotd-gateway.toml`: read once, typed, checked; errors name file, line and key.
//!
//! ```toml
//! [pool]
//! endpoints = ["127.0.0.1:4433"]     # addresses or names (re-resolved)
//! ca_file = "ca.pem"                 # the CA the jotd servers' certificates chain to
//! # client_cert_file = "client.pem"  # mutual TLS, when jotd asks for it
//! # client_key_file = "client.key"
//! server_name = "localhost"
//! check_timeout_ms = 2000            # per check, micro-batching and failover included
//! failure_mode = "closed"            # or "open": allow when the pool cannot answer
//!
//! [batch]
//! max_items = 64
//! max_delay_us = 1000
//! eager_batches = 1
//!
//! [proxy]                            # the JSON-RPC reverse proxy
//! listen = "127.0.0.1:8545"
//! upstreams = ["http://127.0.0.1:8546"]
//! # pass_origin = true             # the node sees the client's Origin (its --ws.origins apply)
//!
//! [forward_auth]                     # NGINX auth_request, Caddy forward_auth, Traefik, APISIX
//! listen = "127.0.0.1:9180"
//!
//! [ext_authz]                        # Envoy external authorization (gRPC)
//! listen = "127.0.0.1:9191"
//! remove_authorization = true
//!
//! [admin]
//! listen = "127.0.0.1:9465"          # /metrics /healthz /readyz
//!
//! [[route]]                          # first match wins
//! path = "/v3/{tenant}"              # or host = "{tenant}.rpc.example.com", or tenant = "node-1"
//! ```

use crate::jsonrpc::AddressTable;
use crate::route::{Route, RouteError};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// A config error, located.
#[derive(Debug, thiserror::Error)]
#[error("{}{}{}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default(), if key.is_empty() { String::new() } else { format!(": `{key}`") })]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// The 1-based line, when known.
    pub line: Option<usize>,
    /// The key, when known.
    pub key: String,
    /// What was wrong.
    pub message: String,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Whether the pool's failure means deny or allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Deny (HTTP 503) when the pool cannot answer. Default.
    #[default]
    Closed,
    /// Allow when the pool cannot answer (Envoy's `failure_mode_allow`).
    Open,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    pool: Spanned<RawPool>,
    #[serde(default)]
    batch: RawBatch,
    proxy: Option<Spanned<RawProxy>>,
    forward_auth: Option<Spanned<RawForwardAuth>>,
    ext_authz: Option<Spanned<RawExtAuthz>>,
    admin: Option<Spanned<RawListen>>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
    /// Extra or replaced rows of the method → address-parameter table.
    #[serde(default)]
    address_params: std::collections::BTreeMap<String, Spanned<Vec<String>>>,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    endpoints: Vec<Spanned<String>>,
    ca_file: Spanned<String>,
    client_cert_file: Option<Spanned<String>>,
    client_key_file: Option<Spanned<String>>,
    server_name: Option<Spanned<String>>,
    check_timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    failure_mode: FailureMode,
}

const fn check_timeout() -> u64 {
    2000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    #[serde(default = "max_items")]
    max_items: Spanned<usize>,
    max_delay_us: Option<Spanned<u64>>,
    #[serde(default = "one")]
    eager_batches: Spanned<usize>,
}

impl Default for RawBatch {
    fn default() -> Self {
        Self {
            max_items: max_items(),
            max_delay_us: None,
            eager_batches: one(),
        }
    }
}

fn max_items() -> Spanned<usize> {
    Spanned::new(0..0, 64)
}
const fn max_delay() -> u64 {
    1000
}
fn one() -> Spanned<usize> {
    Spanned::new(0..0, 1)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    listen: Spanned<String>,
    upstreams: Vec<Spanned<String>>,
    upstream_timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pass_origin: bool,
}

const fn upstream_timeout() -> u64 {
    30_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    listen: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForwardAuth {
    listen: Spanned<String>,
    #[serde(default = "uri_header")]
    uri_header: Spanned<String>,
    #[serde(default = "host_header")]
    host_header: Spanned<String>,
}

fn uri_header() -> Spanned<String> {
    Spanned::new(0..0, "x-forwarded-uri".into())
}
fn host_header() -> Spanned<String> {
    Spanned::new(0..0, "x-forwarded-host".into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExtAuthz {
    listen: Spanned<String>,
    #[serde(default = "yes")]
    remove_authorization: bool,
}

const fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
    tenant: Option<Spanned<String>>,
}

/// Each limit with where it was written (for errors); absent ones take their default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_body_bytes: Option<Spanned<u64>>,
    body_timeout_ms: Option<Spanned<u64>>,
    write_timeout_ms: Option<Spanned<u64>>,
    max_connections: Option<Spanned<u64>>,
    ipv6_share_prefix: Option<Spanned<u64>>,
    max_upstream_bytes: Option<Spanned<u64>>,
    max_answer_buffer_bytes: Option<Spanned<u64>>,
    max_body_buffer_bytes: Option<Spanned<u64>>,
    max_batch_calls: Option<Spanned<u64>>,
    max_token_bytes: Option<Spanned<u64>>,
    websocket_recheck_ms: Option<Spanned<u64>>,
    drain_delay_ms: Option<Spanned<u64>>,
    drain_timeout_ms: Option<Spanned<u64>>,
}

/// The longest time a config value may give: an hour, in milliseconds.
const HOUR_MS: u64 = 3_600_000;

const fn websocket_recheck() -> u64 {
    30_000
}

const fn max_body() -> u64 {
    1 << 20
}
const fn body_timeout() -> u64 {
    10_000
}
const fn max_connections() -> u64 {
    10_000
}
const fn max_upstream() -> u64 {
    64 << 20
}
const fn max_answer_buffer() -> u64 {
    512 << 20
}
const fn max_body_buffer() -> u64 {
    256 << 20
}
const fn max_calls() -> u64 {
    100
}
const fn max_token() -> u64 {
    8 << 10
}

/// Where the jotd pool is and how to reach it.
#[derive(Debug, Clone)]
pub struct Pool {
    /// Endpoints as written: `ip:port` or `name:port`.
    pub endpoints: Vec<String>,
    /// CA PEM file.
    pub ca_file: PathBuf,
    /// Client certificate and key PEM files (mutual TLS).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The name jotd's certificate must carry.
    pub server_name: String,
    /// Longest wait for one check's decision.
    pub check_timeout: Duration,
    /// Deny or allow when the pool cannot answer.
    pub failure_mode: FailureMode,
}

/// Micro-batching settings (see `jotd_transport::BatcherOptions`).
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    /// Flush at this many checks.
    pub max_items: std::num::NonZeroUsize,
    /// Flush when the oldest check waited this long.
    pub max_delay: Duration,
    /// Send at once while fewer batches are outstanding.
    pub eager_batches: std::num::NonZeroUsize,
}

/// The reverse proxy's settings.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// Listen address.
    pub listen: SocketAddr,
    /// Upstream node URLs (`http://host:port[/path]`), used in turn.
    pub upstreams: Vec<hyper::Uri>,
    /// Longest wait for an upstream's answer.
    pub upstream_timeout: Duration,
    /// Whether the client's `Origin` goes on to the node (HTTP and the
    /// WebSocket handshake), so the node's own `--http.corsdomain` /
    /// `--ws.origins` apply as well as jotd's origin allowlists. Default
    /// false: the node sees no `Origin` (one set by jotd's allowlist may not
    /// be in the node's).
    pub pass_origin: bool,
}

/// The forward-auth door's settings.
#[derive(Debug, Clone)]
pub struct ForwardAuth {
    /// Listen address.
    pub listen: SocketAddr,
    /// The one header the original URI is read from (the gateway sets it and
    /// overwrites a client's). Default `x-forwarded-uri` (Caddy, Traefik,
    /// APISIX; the NGINX snippet sets it). Absent from the request: the
    /// request's own path, less a leading `/auth` (Envoy's HTTP ext_authz
    /// `path_prefix`). `None` (`uri_header = ""`): the request's own path
    /// always, for a gateway that sets no such header (Envoy), so a client's
    /// copy can never choose the tenant.
    pub uri_header: Option<hyper::header::HeaderName>,
    /// The one header the original host is read from, else `Host`. Default
    /// `x-forwarded-host`. `None` (`host_header = ""`): `Host` always, for a
    /// gateway that passes client headers on without setting one (so a
    /// client's copy can never choose the tenant of a host route).
    pub host_header: Option<hyper::header::HeaderName>,
}

/// The Envoy ext_authz door's settings.
#[derive(Debug, Clone, Copy)]
pub struct ExtAuthz {
    /// Listen address (gRPC, plaintext HTTP/2).
    pub listen: SocketAddr,
    /// Whether allowed requests lose `authorization` upstream. Default true.
    pub remove_authorization: bool,
}

/// Request limits shared by the doors.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body read (413 beyond); also the largest WebSocket message.
    pub max_body_bytes: usize,
    /// Longest wait for a request body to finish arriving (408 beyond).
    pub body_timeout: Duration,
    /// Once a write to a client has to wait, the window in which it must take
    /// 16 KiB of its answers (a client that stops reading, or reads a few
    /// bytes now and then); the connection is closed beyond, freeing its slot.
    pub write_timeout: Duration,
    /// Most open connections per listener (HTTP doors, the gRPC door), and
    /// again for the proxy's WebSockets, shared per address
    /// (`jotd_transport::slots::SlotRule::Share`).
    pub max_connections: usize,
    /// Leading bits of an IPv6 address that name its source for those shares
    /// (`jotd_transport::slots::source`); 128: each address on its own.
    pub ipv6_share_prefix: u8,
    /// Largest upstream answer relayed (502 beyond).
    pub max_upstream_bytes: usize,
    /// Bytes of node answers the proxy holds at once, across connections,
    /// from their first byte until the client has taken them (503 beyond).
    pub max_answer_buffer_bytes: usize,
    /// Bytes of request bodies the proxy and forward-auth doors hold at
    /// once, across connections, from their first byte until the request
    /// is answered (503 beyond).
    pub max_body_buffer_bytes: usize,
    /// Most calls in one JSON-RPC batch array.
    pub max_batch_calls: usize,
    /// Largest bearer token passed on (longer ones are `token_too_large` at jotd;
    /// the gateway refuses them before they cross the network).
    pub max_token_bytes: usize,
    /// How often an open WebSocket's token is checked again (a key removed,
    /// a token revoked, the tenant gone: the socket is closed with 1008).
    pub websocket_recheck: Duration,
    /// How long the doors keep taking new connections after the drain began,
    /// `/readyz` already `503 draining`: time for a balancer that polls
    /// readiness to take the node out first. Default 0.
    pub drain_delay: Duration,
    /// How long a connection may take to finish after the listeners closed,
    /// its request in flight included; dropped beyond. At least the
    /// proxy's `upstream_timeout`. Default 30 s.
    pub drain_timeout: Duration,
}

/// The whole config, checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (relative paths are resolved against its folder).
    pub file: PathBuf,
    /// The jotd pool.
    pub pool: Pool,
    /// Micro-batching.
    pub batch: Batch,
    /// The reverse proxy, when configured.
    pub proxy: Option<Proxy>,
    /// The forward-auth door, when configured.
    pub forward_auth: Option<ForwardAuth>,
    /// The Envoy ext_authz (gRPC) listener, when configured.
    pub ext_authz: Option<ExtAuthz>,
    /// The admin listener, when configured.
    pub admin: Option<SocketAddr>,
    /// Routes, first match wins.
    pub routes: Vec<Route>,
    /// Method → address parameters.
    pub addresses: AddressTable,
    /// Request limits.
    pub limits: Limits,
}

impl Config {
    /// Reads and checks `file`.
    ///
    /// # Errors
    /// The file cannot be read, or a value is wrong (located).
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let whole = |message: String| ConfigError {
            file: file.to_owned(),
            line: None,
            key: String::new(),
            message,
        };
        let bytes = jotd_transport::files::read_file(file)
            .map_err(|e| whole(format!("cannot read: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|_| whole("not UTF-8".to_owned()))?;
        Self::parse(file, &text)
    }

    /// Checks `text` as if read from `file`.
    ///
    /// # Errors
    /// A value is wrong (located).
    #[allow(clippy::too_many_lines)]
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let err = |span: std::ops::Range<usize>, key: &str, message: String| ConfigError {
            file: file.to_owned(),
            line: (span.end > 0).then(|| line_of(text, span.start)),
            key: key.to_owned(),
            message,
        };
        // A count or a time from 1 to `max` (its default when absent), or an error on its line.
        let ranged = |v: &Option<Spanned<u64>>, key: &str, default: u64, max: u64| match v {
            None => Ok(default),
            Some(s) if (1..=max).contains(s.get_ref()) => Ok(*s.get_ref()),
            Some(s) => Err(err(
                s.span(),
                key,
                format!("{}: must be 1 to {max}", s.get_ref()),
            )),
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_owned();
            let key = jotd_keys::toml_error_key(text, &e);
            ConfigError {
                file: file.to_owned(),
                line: e.span().map(|s| line_of(text, s.start)),
                key,
                message,
            }
        })?;
        let dir = file.parent().unwrap_or(Path::new("."));
        let resolve = |p: &str| {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_owned()
            } else {
                dir.join(p)
            }
        };
        let listen = |s: &Spanned<String>, key: &str| {
            s.get_ref().parse::<SocketAddr>().map_err(|e| {
                err(
                    s.span(),
                    key,
                    format!("`{}` is not an address (ip:port): {e}", s.get_ref()),
                )
            })
        };

        let pool_span = raw.pool.span();
        let p = raw.pool.into_inner();
        if p.endpoints.is_empty() {
            return Err(err(pool_span, "endpoints", "no jotd endpoint given".into()));
        }
        for (i, e) in p.endpoints.iter().enumerate() {
            let s = e.get_ref();
            // Twice in the list, one endpoint would take two shares of the
            // checks and write each pool metric series twice.
            if p.endpoints[..i].iter().any(|f| f.get_ref() == s) {
                return Err(err(e.span(), "endpoints", format!("`{s}` is listed twice")));
            }
            // Port 0 dials nothing: every check failed at run time.
            let ok = s.parse::<SocketAddr>().is_ok_and(|a| a.port() != 0)
                || s.rsplit_once(':').is_some_and(|(h, port)| {
                    // A host holding `:` is an IPv6 address without brackets
                    // (its port forgotten): `2001:db8::10` read as host
                    // `2001:db8:` and port 10 failed every check at run time.
                    !h.is_empty() && !h.contains(':') && port.parse::<u16>().is_ok_and(|p| p != 0)
                });
            if !ok {
                return Err(err(
                    e.span(),
                    "endpoints",
                    format!(
                        "`{s}` is neither ip:port nor name:port (port 1 to 65535; IPv6 as [addr]:port)"
                    ),
                ));
            }
        }
        let client_cert = match (p.client_cert_file, p.client_key_file) {
            (Some(c), Some(k)) => Some((resolve(c.get_ref()), resolve(k.get_ref()))),
            (None, None) => None,
            (Some(c), None) => {
                return Err(err(
                    c.span(),
                    "client_key_file",
                    "client_cert_file needs client_key_file".into(),
                ));
            }
            (None, Some(k)) => {
                return Err(err(
                    k.span(),
                    "client_cert_file",
                    "client_key_file needs client_cert_file".into(),
                ));
            }
        };
        let server_name = match p.server_name {
            None => "localhost".to_owned(),
            Some(n) => {
                jotd_transport::check_server_name(n.get_ref())
                    .map_err(|e| err(n.span(), "server_name", e))?;
                n.into_inner()
            }
        };
        let check_timeout_ms = ranged(
            &p.check_timeout_ms,
            "check_timeout_ms",
            check_timeout(),
            HOUR_MS,
        )?;
        let pool = Pool {
            endpoints: p.endpoints.iter().map(|e| e.get_ref().clone()).collect(),
            ca_file: resolve(p.ca_file.get_ref()),
            client_cert,
            server_name,
            check_timeout: Duration::from_millis(check_timeout_ms),
            failure_mode: p.failure_mode,
        };

        let nz = |s: &Spanned<usize>, key: &str| {
            std::num::NonZeroUsize::new(*s.get_ref())
                .ok_or_else(|| err(s.span(), key, "must be above 0".into()))
        };
        // Up to a second, and below the check deadline: a check that waits
        // longer than its deadline to be sent is never answered in time.
        let max_delay_us = match &raw.batch.max_delay_us {
            None => max_delay(),
            Some(s) if *s.get_ref() <= 1_000_000 && *s.get_ref() < check_timeout_ms * 1000 => {
                *s.get_ref()
            }
            Some(s) => {
                return Err(err(
                    s.span(),
                    "max_delay_us",
                    format!(
                        "{}: at most 1000000 (1 s) and below pool.check_timeout_ms",
                        s.get_ref()
                    ),
                ));
            }
        };
        let batch = Batch {
            max_items: nz(&raw.batch.max_items, "max_items")?,
            max_delay: Duration::from_micros(max_delay_us),
            eager_batches: nz(&raw.batch.eager_batches, "eager_batches")?,
        };
        if batch.max_items.get() > jotd_transport::DEFAULT_MAX_ITEMS {
            return Err(err(
                raw.batch.max_items.span(),
                "max_items",
                format!(
                    "at most {} (jotd's default per-batch limit)",
                    jotd_transport::DEFAULT_MAX_ITEMS
                ),
            ));
        }

        // Where each listener's address was written, for a clash between two.
        let listen_spans: Vec<(&str, std::ops::Range<usize>)> = [
            (
                "proxy",
                raw.proxy.as_ref().map(|x| x.get_ref().listen.span()),
            ),
            (
                "forward_auth",
                raw.forward_auth.as_ref().map(|x| x.get_ref().listen.span()),
            ),
            (
                "ext_authz",
                raw.ext_authz.as_ref().map(|x| x.get_ref().listen.span()),
            ),
            (
                "admin",
                raw.admin.as_ref().map(|x| x.get_ref().listen.span()),
            ),
        ]
        .into_iter()
        .filter_map(|(n, s)| s.map(|s| (n, s)))
        .collect();
        let proxy = match raw.proxy {
            None => None,
            Some(px) => {
                let span = px.span();
                let px = px.into_inner();
                if px.upstreams.is_empty() {
                    return Err(err(span, "upstreams", "no upstream node given".into()));
                }
                let listen_at = listen(&px.listen, "listen")?;
                let mut upstreams: Vec<hyper::Uri> = Vec::new();
                for u in &px.upstreams {
                    let uri = upstream_uri(u.get_ref()).map_err(|why| {
                        err(u.span(), "upstreams", format!("`{}`: {why}", u.get_ref()))
                    })?;
                    // Twice in the list, a node took two turns, and the retry
                    // after a connection failure dialled the same dead node.
                    if let Some(first) = upstreams.iter().find(|f| same_node(f, &uri)) {
                        return Err(err(
                            u.span(),
                            "upstreams",
                            format!("`{}` is listed twice (as `{first}`)", u.get_ref()),
                        ));
                    }
                    if is_listener(&uri, listen_at) {
                        return Err(err(
                            u.span(),
                            "upstreams",
                            format!(
                                "`{}` is this proxy's own listen address: a request would loop back into it",
                                u.get_ref()
                            ),
                        ));
                    }
                    upstreams.push(uri);
                }
                let upstream_timeout_ms = ranged(
                    &px.upstream_timeout_ms,
                    "upstream_timeout_ms",
                    upstream_timeout(),
                    HOUR_MS,
                )?;
                Some(Proxy {
                    listen: listen_at,
                    upstreams,
                    upstream_timeout: Duration::from_millis(upstream_timeout_ms),
                    pass_origin: px.pass_origin,
                })
            }
        };
        let header_name = |h: &Spanned<String>, key: &str| {
            hyper::header::HeaderName::from_bytes(h.get_ref().as_bytes()).map_err(|_| {
                err(
                    h.span(),
                    key,
                    format!("`{}` is not a header name", h.get_ref()),
                )
            })
        };
        // A forwarded-URI or -host header must be one the door reads for
        // nothing else: `uri_header = "x-forwarded-host"` routed on a host
        // read as a path, and one header for both read each as the other.
        let forwarded_header = |h: &Spanned<String>, key: &str, also: Option<&str>| {
            let name = header_name(h, key)?;
            let n = name.as_str();
            if READ_BY_THE_DOOR.contains(&n)
                || n.starts_with(crate::forward_auth::JOTD_PREFIX)
                || (key == "uri_header" && n == "host")
            {
                return Err(err(
                    h.span(),
                    key,
                    format!(
                        "`{n}` is a header the door reads for something else (the token, origin, user agent, method, body or its own `x-jotd-*` answers): name the header your gateway puts the original {} in",
                        if key == "uri_header" { "URI" } else { "host" }
                    ),
                ));
            }
            if also == Some(n) {
                return Err(err(
                    h.span(),
                    key,
                    format!(
                        "`{n}` is also `uri_header` (the default `host_header` is `x-forwarded-host`): the URI and the host need two headers"
                    ),
                ));
            }
            Ok(name)
        };
        let forward_auth = match raw.forward_auth.as_ref() {
            None => None,
            Some(f) => {
                let f = f.get_ref();
                let uri_header = if f.uri_header.get_ref().is_empty() {
                    None
                } else {
                    Some(forwarded_header(&f.uri_header, "uri_header", None)?)
                };
                let host_header = if f.host_header.get_ref().is_empty() {
                    None
                } else {
                    Some(forwarded_header(
                        &f.host_header,
                        "host_header",
                        uri_header.as_ref().map(hyper::header::HeaderName::as_str),
                    )?)
                };
                Some(ForwardAuth {
                    listen: listen(&f.listen, "listen")?,
                    uri_header,
                    host_header,
                })
            }
        };
        let admin = raw
            .admin
            .as_ref()
            .map(|f| listen(&f.get_ref().listen, "listen"))
            .transpose()?;
        let ext_authz = raw
            .ext_authz
            .as_ref()
            .map(|e| {
                let e = e.get_ref();
                listen(&e.listen, "listen").map(|l| ExtAuthz {
                    listen: l,
                    remove_authorization: e.remove_authorization,
                })
            })
            .transpose()?;
        // Two listeners on one port (the same address, or one on all addresses)
        // would fail at bind with no line to go on: refused here, at the second.
        let addrs: Vec<(&str, SocketAddr)> = [
            ("proxy", proxy.as_ref().map(|x| x.listen)),
            ("forward_auth", forward_auth.as_ref().map(|x| x.listen)),
            ("ext_authz", ext_authz.as_ref().map(|x| x.listen)),
            ("admin", admin),
        ]
        .into_iter()
        .filter_map(|(n, a)| a.map(|a| (n, a)))
        .collect();
        for (j, (name, b)) in addrs.iter().enumerate() {
            let clash = addrs[..j].iter().find(|(_, a)| {
                a.port() == b.port()
                    && a.port() != 0
                    && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
            });
            if let Some((first, a)) = clash {
                let span = listen_spans
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(0..0, |(_, s)| s.clone());
                return Err(err(
                    span,
                    "listen",
                    format!(
                        "[{name}] {b} takes the port of [{first}] {a}: give each listener its own"
                    ),
                ));
            }
        }
        if proxy.is_none() && forward_auth.is_none() && ext_authz.is_none() {
            return Err(err(
                0..0,
                "",
                "nothing to serve: configure [proxy], [forward_auth] and/or [ext_authz]".into(),
            ));
        }

        let mut routes = Vec::new();
        for r in &raw.route {
            let span = r.span();
            let r = r.get_ref();
            let route = match (&r.path, &r.host, &r.tenant) {
                (Some(p), None, None) => Route::path(p.get_ref()),
                (None, Some(h), None) => Route::host(h.get_ref()),
                (None, None, Some(t)) => Route::fixed(t.get_ref()),
                (Some(p), None, Some(t)) => {
                    Route::path(p.get_ref()).and_then(|r| r.with_tenant(t.get_ref()))
                }
                (None, Some(h), Some(t)) => {
                    Route::host(h.get_ref()).and_then(|r| r.with_tenant(t.get_ref()))
                }
                _ => Err(RouteError(
                    "a route has one of `path` or `host` (with `{tenant}`, or with `tenant`), or only `tenant`".into(),
                )),
            }
            .map_err(|e| err(span.clone(), "route", e.0))?;
            // Refused rather than left dead: the requests it was written for
            // went to the earlier route's tenant, with its keys and policy.
            if let Some(i) = routes
                .iter()
                .position(|earlier: &Route| earlier.covers(&route))
            {
                let at = line_of(text, raw.route[i].span().start);
                return Err(err(
                    span.clone(),
                    "route",
                    format!(
                        "never used: the route at line {at} matches every request this one does, first"
                    ),
                ));
            }
            routes.push(route);
        }
        if routes.is_empty() {
            return Err(err(
                0..0,
                "route",
                "no [[route]]: say how a request names its tenant (path = \"/v3/{tenant}\", host = \"{tenant}.example.com\", or tenant = \"id\")".into(),
            ));
        }

        let mut addresses = AddressTable::ethereum();
        for (method, params) in &raw.address_params {
            addresses
                .set(method, params.get_ref())
                .map_err(|e| err(params.span(), method, e))?;
        }

        // Every limit from 1 to a bound past any real use: 0 would refuse or
        // time out everything, and a huge count panicked at start (a semaphore).
        let l = raw.limits;
        let limit = |v: &Option<Spanned<u64>>, key: &str, default: u64, max: u64| {
            ranged(v, &format!("limits.{key}"), default, max)
        };
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        let max_body_bytes = limit(&l.max_body_bytes, "max_body_bytes", max_body(), 1 << 30)?;
        let body_timeout_ms = limit(
            &l.body_timeout_ms,
            "body_timeout_ms",
            body_timeout(),
            HOUR_MS,
        )?;
        let write_timeout_ms = limit(
            &l.write_timeout_ms,
            "write_timeout_ms",
            body_timeout(),
            HOUR_MS,
        )?;
        let max_connections = limit(
            &l.max_connections,
            "max_connections",
            max_connections(),
            1_000_000,
        )?;
        let ipv6_share_prefix = limit(
            &l.ipv6_share_prefix,
            "ipv6_share_prefix",
            u64::from(jotd_transport::slots::IPV6_PREFIX),
            128,
        )?;
        let max_upstream_bytes = limit(
            &l.max_upstream_bytes,
            "max_upstream_bytes",
            max_upstream(),
            1 << 30,
        )?;
        // A gateway-wide buffer of `key`: at least one item of the largest
        // size (`one`, set by `one_key`), or such items are refused however
        // idle the gateway.
        let buffer =
            |v: &Option<Spanned<u64>>, key: &str, default: u64, one: u64, one_key: &str| {
                let bytes = limit(v, key, default.max(one), 1 << 36)?;
                match v {
                    Some(at) if bytes < one => Err(err(
                        at.span(),
                        &format!("limits.{key}"),
                        format!("{bytes}: must hold one item of {one_key} ({one})"),
                    )),
                    _ => Ok(bytes),
                }
            };
        let max_answer_buffer_bytes = buffer(
            &l.max_answer_buffer_bytes,
            "max_answer_buffer_bytes",
            max_answer_buffer(),
            max_upstream_bytes,
            "max_upstream_bytes",
        )?;
        let max_body_buffer_bytes = buffer(
            &l.max_body_buffer_bytes,
            "max_body_buffer_bytes",
            max_body_buffer(),
            max_body_bytes,
            "max_body_bytes",
        )?;
        let max_batch_calls = limit(&l.max_batch_calls, "max_batch_calls", max_calls(), 100_000)?;
        let max_token_bytes = limit(&l.max_token_bytes, "max_token_bytes", max_token(), 1 << 20)?;
        let websocket_recheck_ms = limit(
            &l.websocket_recheck_ms,
            "websocket_recheck_ms",
            websocket_recheck(),
            24 * HOUR_MS,
        )?;
        let drain_delay_ms = match &l.drain_delay_ms {
            None => 0,
            Some(s) if *s.get_ref() <= 600_000 => *s.get_ref(),
            Some(s) => {
                return Err(err(
                    s.span(),
                    "limits.drain_delay_ms",
                    format!("{}: must be 0 to 600000 (10 min)", s.get_ref()),
                ));
            }
        };
        // After the listeners close, a request already accepted may still
        // take its whole body time, its check and (at the proxy) its node
        // time, each as long as configured: the drain must outlast that, or
        // it cuts the request (at the proxy, after the node ran the call and
        // before the client got its answer; at ext_authz, an error Envoy's
        // `failure_mode_allow` lets through). Not set, the drain is that
        // long, 30 s at least; set below it, refused, naming the terms.
        let upstream_ms = proxy.as_ref().map_or(0, |px| {
            u64::try_from(px.upstream_timeout.as_millis()).unwrap_or(u64::MAX)
        });
        let check_ms = u64::try_from(pool.check_timeout.as_millis()).unwrap_or(u64::MAX);
        let request_ms = body_timeout_ms
            .saturating_add(check_ms)
            .saturating_add(upstream_ms);
        let drain_timeout_ms = match &l.drain_timeout_ms {
            None => request_ms.max(30_000),
            Some(_) => {
                // Up to an hour, or the request time when that is longer (a
                // node timeout of an hour must still be drainable).
                let set = limit(
                    &l.drain_timeout_ms,
                    "drain_timeout_ms",
                    30_000,
                    HOUR_MS.max(request_ms),
                )?;
                if set < request_ms {
                    let node = if proxy.is_some() {
                        format!(" + [proxy] upstream_timeout_ms {upstream_ms}")
                    } else {
                        String::new()
                    };
                    return Err(err(
                        l.drain_timeout_ms.as_ref().map_or(0..0, Spanned::span),
                        "limits.drain_timeout_ms",
                        format!(
                            "{set}: below the longest a request may still take once the listeners close \
                             (body_timeout_ms {body_timeout_ms} + [pool] check_timeout_ms {check_ms}{node} = {request_ms}): \
                             the drain would cut it (at the proxy after the node ran the call, at ext_authz as an error \
                             failure_mode_allow lets through); raise it or leave it out"
                        ),
                    ));
                }
                set
            }
        };
        Ok(Self {
            file: file.to_owned(),
            pool,
            batch,
            proxy,
            forward_auth,
            ext_authz,
            admin,
            routes,
            addresses,
            limits: Limits {
                max_body_bytes: size(max_body_bytes),
                body_timeout: Duration::from_millis(body_timeout_ms),
                write_timeout: Duration::from_millis(write_timeout_ms),
                max_connections: size(max_connections),
                ipv6_share_prefix: u8::try_from(ipv6_share_prefix).unwrap_or(128),
                max_upstream_bytes: size(max_upstream_bytes),
                max_answer_buffer_bytes: size(max_answer_buffer_bytes),
                max_body_buffer_bytes: size(max_body_buffer_bytes),
                max_batch_calls: size(max_batch_calls),
                max_token_bytes: size(max_token_bytes),
                websocket_recheck: Duration::from_millis(websocket_recheck_ms),
                drain_delay: Duration::from_millis(drain_delay_ms),
                drain_timeout: Duration::from_millis(drain_timeout_ms),
            },
        })
    }
}

/// Headers the forward-auth door reads for what they are, never as a
/// forwarded URI or host.
const READ_BY_THE_DOOR: &[&str] = &[
    "authorization",
    "origin",
    "user-agent",
    "x-forwarded-method",
    "content-type",
    "content-length",
    "transfer-encoding",
    "content-encoding",
    "connection",
    "upgrade",
    "cookie",
];

/// Whether two upstream URLs name one node and path (`http://n:1` is
/// `http://N:1/`).
fn same_node(a: &hyper::Uri, b: &hyper::Uri) -> bool {
    let path = |u: &hyper::Uri| u.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let host = |u: &hyper::Uri| {
        u.authority()
            .map(|a| (a.host().to_ascii_lowercase(), a.port_u16().unwrap_or(80)))
    };
    host(a) == host(b) && path(a) == path(b)
}

/// Whether `uri` surely reaches the proxy's own listener at `listen`: its
/// port, and its address, or for a wildcard listener a loopback or wildcard
/// address of a family it takes (an IPv4 wildcard takes no IPv6; an IPv6 one
/// both). Another host's address on the same port is a node elsewhere (a
/// wildcard listener on :8545 in front of `10.0.0.12:8545`); one of this
/// host's own non-loopback addresses is not told apart (no interface list).
///
/// The host is read as the resolver would dial it: an IPv4-mapped IPv6
/// address as its IPv4 one (`[::ffff:127.0.0.1]` reaches an IPv4
/// listener), the shorthand IPv4 forms `getaddrinfo` takes (`127.1`, `0`,
/// `2130706433`, `0x7f.1`), and `localhost` or a name under it, with or
/// without a trailing dot.
fn is_listener(uri: &hyper::Uri, listen: SocketAddr) -> bool {
    let Some(a) = uri.authority() else {
        return false;
    };
    if a.port_u16().unwrap_or(80) != listen.port() {
        return false;
    }
    let host = a.host().trim_start_matches('[').trim_end_matches(']');
    let host = host.strip_suffix('.').unwrap_or(host);
    let listen_ip = listen.ip().to_canonical();
    let takes = |ip: std::net::IpAddr| {
        let ip = ip.to_canonical();
        ip == listen_ip
            || (listen_ip.is_unspecified()
                && (ip.is_loopback() || ip.is_unspecified())
                && (listen.is_ipv6() || ip.is_ipv4()))
            // Dialled, the unspecified address reaches this host's loopback
            // (0.0.0.0 an IPv4 one, :: an IPv6 one).
            || (ip.is_unspecified() && listen_ip.is_loopback() && ip.is_ipv4() == listen_ip.is_ipv4())
    };
    match host
        .parse::<std::net::IpAddr>()
        .ok()
        .or_else(|| shorthand_ipv4(host).map(std::net::IpAddr::V4))
    {
        Some(ip) => takes(ip),
        None => {
            let lower = host.to_ascii_lowercase();
            (lower == "localhost" || lower.ends_with(".localhost"))
                && (listen_ip.is_loopback() || listen_ip.is_unspecified())
        }
    }
}

/// An IPv4 address in a form `inet_aton` (and so `getaddrinfo`) reads but
/// `Ipv4Addr::from_str` does not: one to four parts, each decimal, `0x` hex
/// or `0`-led octal, the last filling the bytes left (`127.1`,
/// `2130706433`, `0x7f.0.0.1`, `0177.1`).
fn shorthand_ipv4(host: &str) -> Option<std::net::Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut nums = Vec::with_capacity(parts.len());
    for p in &parts {
        let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X"))
        {
            (h, 16)
        } else if p.len() > 1 && p.starts_with('0') {
            (&p[1..], 8)
        } else {
            (*p, 10)
        };
        // Digits only (`from_str_radix` takes a leading `+`), at least one.
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        nums.push(u32::from_str_radix(digits, radix).ok()?);
    }
    let (last, head) = nums.split_last()?;
    if head.iter().any(|&n| n > 255) {
        return None;
    }
    let rest_bits = 8 * (4 - head.len() as u32);
    if rest_bits < 32 && u64::from(*last) >= 1u64 << rest_bits {
        return None;
    }
    let mut v: u32 = 0;
    for (i, &n) in head.iter().enumerate() {
        v |= n << (24 - 8 * i as u32);
    }
    Some(std::net::Ipv4Addr::from(v | last))
}

/// An upstream node's URL: `http://host[:port][/path][?query]`. Refused, each
/// by name: another scheme (TLS to the node is not spoken), no host, a port
/// that is not 1..=65535 (the HTTP library would quietly dial port 80
/// instead), and credentials (`user:pass@`, which would never be sent).
fn upstream_uri(s: &str) -> Result<hyper::Uri, String> {
    let uri: hyper::Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
    let only_http = "only http://host:port upstreams (the node beside the gateway; terminate TLS in front of the gateway)";
    let (Some("http"), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(only_http.into());
    };
    if authority.host().is_empty() {
        return Err(only_http.into());
    }
    if authority.as_str().contains('@') {
        return Err(
            "credentials in the URL are not sent to the node: give the node's address alone".into(),
        );
    }
    // What follows the host (past an IPv6 literal's brackets) is `:port` or nothing.
    let after_host = authority
        .as_str()
        .rsplit_once(']')
        .map_or(authority.as_str(), |(_, rest)| rest);
    if let Some((_, port)) = after_host.rsplit_once(':') {
        match port.parse::<u16>() {
            Ok(p) if p != 0 => {}
            _ => return Err(format!("`{port}` is not a port (1 to 65535)")),
        }
    }
    Ok(uri)
}

#[cfg(test)]
mod listener_tests {
    use super::is_listener;

    /// The proxy's own listener is refused as its upstream; a node on the
    /// same port elsewhere is not (a wildcard listener in front of a LAN node
    /// was refused as a loop).
    #[test]
    fn only_the_proxys_own_address_is_a_loop() {
        let l = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        let u = |s: &str| s.parse::<hyper::Uri>().unwrap();
        for (listen, upstream, loops) in [
            ("0.0.0.0:8545", "http://10.0.0.12:8545", false),
            ("0.0.0.0:8545", "http://127.0.0.1:8545", true),
            ("0.0.0.0:8545", "http://127.0.0.2:8545", true),
            ("0.0.0.0:8545", "http://0.0.0.0:8545", true),
            ("0.0.0.0:8545", "http://localhost:8545", true),
            ("0.0.0.0:8545", "http://[::1]:8545", false),
            ("0.0.0.0:8545", "http://127.0.0.1:8546", false),
            ("[::]:8545", "http://[::1]:8545", true),
            ("[::]:8545", "http://127.0.0.1:8545", true),
            ("[::]:8545", "http://[fd00::12]:8545", false),
            ("10.0.0.5:8545", "http://10.0.0.5:8545", true),
            ("10.0.0.5:8545", "http://10.0.0.12:8545", false),
            ("10.0.0.5:8545", "http://127.0.0.1:8545", false),
            ("127.0.0.1:80", "http://localhost", true),
            ("127.0.0.1:8545", "http://node:8545", false),
            // Other spellings of the same addresses, as the resolver reads them.
            ("0.0.0.0:8545", "http://[::ffff:127.0.0.1]:8545", true),
            ("127.0.0.1:8545", "http://[::ffff:127.0.0.1]:8545", true),
            ("127.0.0.1:8545", "http://127.1:8545", true),
            ("0.0.0.0:8545", "http://0:8545", true),
            ("0.0.0.0:8545", "http://2130706433:8545", true),
            ("0.0.0.0:8545", "http://0x7f.1:8545", true),
            ("0.0.0.0:8545", "http://0177.0.0.1:8545", true),
            ("0.0.0.0:8545", "http://localhost.:8545", true),
            ("0.0.0.0:8545", "http://node.LOCALHOST:8545", true),
            ("0.0.0.0:8545", "http://10.1:8545", false),
            ("0.0.0.0:8545", "http://[::ffff:10.0.0.12]:8545", false),
            ("127.0.0.1:8545", "http://node.:8545", false),
            ("127.0.0.1:8545", "http://1.2.3.4.5:8545", false),
            ("127.0.0.1:8545", "http://+127.0.0.1:8545", false),
            ("0.0.0.0:8545", "http://0x:8545", false),
            ("0.0.0.0:8545", "http://08:8545", false),
            ("127.0.0.1:8545", "http://0.0.0.0:8545", true),
            ("127.0.0.1:8545", "http://0:8545", true),
            ("[::1]:8545", "http://[::]:8545", true),
            ("127.0.0.1:8545", "http://[::]:8545", false),
        ] {
            assert_eq!(
                is_listener(&u(upstream), l(listen)),
                loops,
                "{listen} -> {upstream}"
            );
        }
    }
}

#[cfg(test)]
mod default_tests {
    /// A daemon on its defaults answers `overloaded` early enough in a check's
    /// default deadline for the client to send the batch to another replica
    /// (a wait equal to the deadline made every such answer too late).
    #[test]
    fn the_daemons_overload_wait_leaves_time_to_fail_over() {
        let wait = jotd_transport::ServerOptions::default().overload_wait;
        let deadline = std::time::Duration::from_millis(super::check_timeout());
        assert!(wait * 4 <= deadline, "{wait:?} against {deadline:?}");
    }
}
