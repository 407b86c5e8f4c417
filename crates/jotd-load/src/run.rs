//! `jotd-load run`: drive the daemon, check every decision, report.
//!
//! Open loop (`--rate`): batch *i* is due at `start + i × batch / rate`;
//! latency is measured from that intended time, so a stalled server shows up
//! as latency instead of as fewer requests (no coordinated omission). Closed
//! loop (`--max`): each of `connections × streams` workers sends its next
//! batch as soon as the last one is answered.

use crate::workload::{Batch, Manifest, build_batches, build_pool, parse_mix};
use anyhow::{Context, bail};
use clap::Args;
use hdrhistogram::Histogram;
use jotd_core::{Algorithm, Reason};
use jotd_transport::{Client, ClientError, ClientOptions, client_config};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Options of `jotd-load run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Target `jotd serve`'s development defaults: reads ./jotd-dev/load.json.
    #[arg(long)]
    dev: bool,
    /// The manifest written by `jotd serve` (dev) or `jotd-load tenants`.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Daemon address (repeatable); default: the manifest's. An IP:port is
    /// used as it is; a `host:port` name is resolved again every
    /// `--resolve-interval-s` (a Kubernetes headless Service: replicas are
    /// followed as they come and go).
    #[arg(long = "endpoint")]
    endpoints: Vec<String>,
    /// How often endpoint names are resolved again, in seconds.
    #[arg(long, default_value_t = 5)]
    resolve_interval_s: u64,
    /// CA certificate (PEM); default: the manifest's.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate (PEM), for mutual TLS.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Client private key (PEM), for mutual TLS.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Server name to expect in the certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// QUIC connections per endpoint.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Concurrent batches (streams) per connection.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Items per batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Algorithms to sign with (comma-separated); default: every manifest key.
    #[arg(long, value_delimiter = ',')]
    algs: Vec<String>,
    /// How long to run: `10` (seconds), `10s`, `500ms`, `5m`. Default 10 s unless --count.
    #[arg(long)]
    duration: Option<String>,
    /// Stop after this many tokens, rounded up to whole batches.
    #[arg(long)]
    count: Option<u64>,
    /// Open loop at this many tokens per second.
    #[arg(long, conflicts_with = "max")]
    rate: Option<f64>,
    /// Closed loop, as fast as answers come (the default without --rate).
    #[arg(long)]
    max: bool,
    /// Distinct valid tokens per tenant and key (the rest of the run reuses them).
    #[arg(long, default_value_t = 256)]
    distinct: usize,
    /// Tenants of the manifest to use (default: 16, or all when it names fewer).
    #[arg(long)]
    tenants: Option<usize>,
    /// Outcome mix, e.g. `valid=0.9,expired=0.02,bad_signature=0.02,...`.
    #[arg(long, default_value = "valid=1")]
    mix: String,
    /// Per-batch timeout in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Send no hedged copies of late batches (failover after failures stays on).
    #[arg(long)]
    no_hedge: bool,
    /// I/O threads of the harness (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
    /// The daemon's metrics URL (`http://127.0.0.1:9464/metrics`), to report its memory.
    #[arg(long)]
    metrics_url: Option<String>,
    /// Soak: every this many seconds, rewrite `--reload-config` with a rotated key.
    #[arg(long, requires = "reload_config", value_parser = clap::value_parser!(u64).range(1..))]
    reload_every: Option<u64>,
    /// Soak: the daemon's config file (its last tenant gets the rotated key).
    #[arg(long, requires = "reload_every")]
    reload_config: Option<PathBuf>,
}

/// Parses `10`, `10s`, `500ms`, `5m`, `1h`.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let t = text.trim();
    let (num, unit) = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((t, "s"), |i| t.split_at(i));
    let n: f64 = num
        .parse()
        .with_context(|| format!("--duration `{text}`: expected e.g. 10, 10s, 500ms, 5m"))?;
    let secs = match unit {
        "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("--duration `{text}`: unit must be ms, s, m or h"),
    };
    if !(secs.is_finite() && secs > 0.0) {
        bail!("--duration `{text}` must be positive");
    }
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| *d <= Duration::from_secs(365 * 86_400))
        .with_context(|| format!("--duration `{text}`: at most a year"))
}

/// The report (`--json`); these field names are relied on by scripts.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// Decisions received.
    pub tokens: u64,
    /// Batches answered (or failed).
    pub batches: u64,
    /// Wall time of the load phase.
    pub seconds: f64,
    /// `tokens / seconds`.
    pub tokens_per_s: f64,
    /// `batches / seconds`.
    pub batches_per_s: f64,
    /// Items per batch.
    pub batch_size: usize,
    /// Open loop at a rate, or closed loop.
    pub mode: String,
    /// Batch latency (from the intended send time in open loop).
    pub latency_us: Latency,
    /// Decisions by reason code.
    pub reasons: BTreeMap<String, u64>,
    /// Decisions that differ from the expected one.
    pub mismatches: u64,
    /// Items without a decision (their batch failed).
    pub missing: u64,
    /// Batches that failed as a whole.
    pub batch_errors: u64,
    /// Open loop: batches due before the run ended that no worker had taken
    /// (every worker was waiting on the daemon). Each is in the latency
    /// percentiles as having waited from its due time to the end of the run,
    /// a lower bound, so a daemon that stalls near the end still shows.
    pub unsent_due: u64,
    /// Batch failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// The first few mismatches, described.
    pub first_mismatches: Vec<String>,
    /// CPU seconds the harness used during the load.
    pub client_cpu_s: f64,
    /// Config rewrites done (soak mode).
    pub reloads: u64,
    /// Daemon resident memory before the load (from `--metrics-url`).
    pub daemon_rss_bytes_start: Option<f64>,
    /// Daemon resident memory after the load.
    pub daemon_rss_bytes_end: Option<f64>,
    /// Daemon resident memory every 10 s during the load (seconds, bytes).
    pub daemon_rss_samples: Vec<(u64, f64)>,
    /// A `--count` run that reached the end of its tokens' validity window
    /// first (stopped there, with fewer tokens than asked).
    pub count_not_reached: bool,
    /// What the client library did across the replicas.
    pub fleet: Fleet,
}

/// The client library's failover and hedging, as counted by it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Fleet {
    /// Batches sent again after a failure, to another endpoint.
    pub retries: u64,
    /// Second copies of late batches.
    pub hedges: u64,
    /// Decisions dropped because their item was already decided by another
    /// copy (a hedge or a retry): the first decision of each item is checked
    /// against the expected one, these against that first decision, as far as
    /// they were read before the batch completed.
    pub late_duplicates: u64,
    /// Of those, the ones that differed from the decision checked (another
    /// allow bit or reason: replicas that disagree). Any fails the run.
    pub late_disagreements: u64,
    /// Answers that broke the protocol (a duplicate decision on one stream,
    /// an index out of range, another request's id, a stream ended early).
    /// The client drops such an answer and sends the batch again, so its
    /// batch may still succeed; any of these fails the run.
    pub protocol_violations: u64,
    /// Times an endpoint was taken out of rotation.
    pub ejections: u64,
    /// Per endpoint (connection slot): batches sent, failures, ejections.
    pub endpoints: Vec<EndpointCounts>,
}

/// One endpoint's counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EndpointCounts {
    /// The address.
    pub endpoint: String,
    /// Batches (first copies, retries, hedges) sent to it.
    pub sent: u64,
    /// Attempts on it that failed or stalled.
    pub failures: u64,
    /// Times it was ejected.
    pub ejections: u64,
    /// The smallest path MTU (UDP payload bytes) its live connections had
    /// proved when the run ended.
    pub path_mtu: Option<u16>,
    /// Packets the client's live connections to it declared lost.
    pub lost_packets: u64,
    /// Packets the client's live connections to it sent.
    pub sent_packets: u64,
}

impl From<jotd_transport::ClientStats> for Fleet {
    fn from(s: jotd_transport::ClientStats) -> Self {
        let mut endpoints: Vec<EndpointCounts> = Vec::new();
        for e in s.endpoints {
            let name = e.addr.to_string();
            match endpoints.iter_mut().find(|c| c.endpoint == name) {
                Some(c) => {
                    c.sent += e.sent;
                    c.failures += e.failures;
                    c.ejections += e.ejections;
                    if let Some(p) = &e.path {
                        c.path_mtu = Some(c.path_mtu.map_or(p.mtu, |m| m.min(p.mtu)));
                        c.lost_packets += p.lost_packets;
                        c.sent_packets += p.sent_packets;
                    }
                }
                None => endpoints.push(EndpointCounts {
                    endpoint: name,
                    sent: e.sent,
                    failures: e.failures,
                    ejections: e.ejections,
                    path_mtu: e.path.as_ref().map(|p| p.mtu),
                    lost_packets: e.path.as_ref().map_or(0, |p| p.lost_packets),
                    sent_packets: e.path.as_ref().map_or(0, |p| p.sent_packets),
                }),
            }
        }
        Self {
            retries: s.retries,
            hedges: s.hedges,
            late_duplicates: s.late_duplicates,
            late_disagreements: s.late_disagreements,
            protocol_violations: s.protocol_violations,
            ejections: s.ejections,
            endpoints,
        }
    }
}

impl Report {
    /// Every item got exactly one decision and each was the expected one
    /// (reason and allow bit), and no answer broke the protocol, even one
    /// whose batch a retry then decided.
    #[must_use]
    pub const fn passed(&self) -> bool {
        // A run that decided nothing proved nothing.
        self.tokens > 0
            && self.mismatches == 0
            && self.missing == 0
            && self.batch_errors == 0
            && self.fleet.protocol_violations == 0
            && self.fleet.late_disagreements == 0
    }
}

/// Batch latency percentiles, microseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

struct Shared {
    batches: Vec<Batch>,
    batch: usize,
    next: AtomicU64,
    stop: AtomicBool,
    limit_batches: Option<u64>,
    start: Instant,
    /// Open loop: (batch index, due time) released by the pacer thread.
    paced: Option<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<(u64, Instant)>>>,
    tokens_done: AtomicU64,
    errors_live: AtomicU64,
    window: Mutex<Histogram<u64>>,
    /// When the monitor ended the run (its duration up).
    stopped_at: std::sync::OnceLock<Instant>,
    /// Decided batches' latencies, in [`LATENCY_SHARDS`] parts (worker `k`
    /// records into part `k % LATENCY_SHARDS`): one histogram per worker
    /// was ~229 KB each, gigabytes at the flags' bounds (64 connections ×
    /// 4096 streams).
    latencies: Vec<Mutex<Histogram<u64>>>,
}

/// Parts the latency histogram is kept in (few locks contended, little memory).
const LATENCY_SHARDS: usize = 16;

#[derive(Default)]
struct Local {
    tokens: u64,
    batches: u64,
    reasons: BTreeMap<u16, u64>,
    mismatches: u64,
    missing: u64,
    batch_errors: u64,
    errors: BTreeMap<String, u64>,
    first_mismatches: Vec<String>,
}

/// The longest a run lasts (its tokens live an hour).
const MAX_RUN: Duration = Duration::from_secs(55 * 60);

/// Most distinct valid tokens per tenant and key (each is minted up front).
const MAX_DISTINCT: usize = 1 << 20;

/// The largest latency recorded, µs: `--timeout-ms`'s bound (a day), so no
/// sample is clipped.
const MAX_LATENCY_US: u64 = 86_400_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds")
}

fn error_kind(e: &ClientError) -> String {
    match e {
        ClientError::Server { .. } => format!("server_{}", e.kind()),
        _ => e.kind().to_owned(),
    }
}

async fn worker(client: Arc<Client>, s: Arc<Shared>, k: usize) -> Local {
    let mut local = Local::default();
    let latencies = &s.latencies[k % s.latencies.len()];
    loop {
        if s.stop.load(Ordering::Relaxed) {
            break;
        }
        let (i, intended) = match &s.paced {
            // Open loop: the pacer thread releases batch i at its due time.
            Some(rx) => match rx.lock().await.recv().await {
                Some(x) => x,
                None => break,
            },
            None => (s.next.fetch_add(1, Ordering::Relaxed), Instant::now()),
        };
        if s.limit_batches.is_some_and(|l| i >= l) {
            break;
        }
        let b = &s.batches[(i as usize) % s.batches.len()];
        let n = b.expected.len() as u64;
        let mut decided = 0u64;
        let result = async {
            let mut p = client
                .verify_frame(&b.frame, b.request_id, b.expected.len())
                .await?;
            while p
                .next_chunk(|chunk| {
                    for d in &chunk.decisions {
                        decided += 1;
                        *local.reasons.entry(d.reason).or_default() += 1;
                        let want = b.expected[d.index as usize];
                        // The allow bit is what a gateway acts on: it must
                        // agree with the reason, as the reason must with the
                        // expected one.
                        let want_allow = Reason::from_code(want).is_some_and(Reason::is_allow);
                        if d.reason != want || d.allow != want_allow {
                            local.mismatches += 1;
                            if local.first_mismatches.len() < 10 {
                                local.first_mismatches.push(format!(
                                    "batch {i} item {}: expected {} (allow {want_allow}), got {} (allow {})",
                                    d.index,
                                    name(want),
                                    name(d.reason),
                                    d.allow
                                ));
                            }
                        }
                    }
                })
                .await?
            {}
            Ok::<(), ClientError>(())
        }
        .await;
        // Decided batches only: a pool refusing at once lowered the
        // percentiles, timeouts pinned them at --timeout-ms. Failures are
        // counted (`batch errors`) and fail the run.
        if result.is_ok() {
            let latency = intended.elapsed().as_micros().max(1) as u64;
            if let Ok(mut h) = latencies.lock() {
                let _ = h.record(latency.min(MAX_LATENCY_US));
            }
            if let Ok(mut w) = s.window.lock() {
                let _ = w.record(latency.min(MAX_LATENCY_US));
            }
        }
        local.batches += 1;
        local.tokens += decided;
        if let Err(e) = result {
            local.batch_errors += 1;
            local.missing += n - decided.min(n);
            *local.errors.entry(error_kind(&e)).or_default() += 1;
            s.errors_live.fetch_add(1, Ordering::Relaxed);
            if local.errors.values().sum::<u64>() == 1 {
                eprintln!("jotd-load: batch error: {e}");
            }
        }
        s.tokens_done.fetch_add(decided, Ordering::Relaxed);
    }
    local
}

fn name(code: u16) -> String {
    Reason::from_code(code).map_or_else(|| format!("code {code}"), |r| r.as_str().to_owned())
}

fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(") ")?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            let u: f64 = f.get(11)?.parse().ok()?;
            let st: f64 = f.get(12)?.parse().ok()?;
            Some((u + st) / 100.0)
        })
        .unwrap_or(0.0)
}

/// Reads one gauge from a Prometheus text endpoint (plain HTTP), within
/// about 5 s all told (connect, request, answer), else `None`.
pub(crate) fn scrape(url: &str, metric: &str) -> Option<f64> {
    scrape_within(url, metric, Duration::from_secs(5))
}

/// The first of `addrs` that takes a connection, tried in turn before `by`
/// (`localhost` gives ::1 first, and only that was tried: a daemon on
/// 127.0.0.1 was never scraped).
fn connect_first(
    addrs: impl IntoIterator<Item = SocketAddr>,
    by: Instant,
) -> Option<std::net::TcpStream> {
    addrs.into_iter().find_map(|addr| {
        let left = by.checked_duration_since(Instant::now())?;
        std::net::TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(2))).ok()
    })
}

fn scrape_within(url: &str, metric: &str, limit: Duration) -> Option<f64> {
    use std::io::{Read, Write};
    let by = Instant::now() + limit;
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map_or((rest, "/"), |(h, p)| (h, p));
    let mut s = connect_first(host.to_socket_addrs().ok()?, by)?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    // One write (`write!` on the socket sent each piece as its own packet).
    let request = format!(
        "GET /{} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        path.trim_start_matches('/')
    );
    s.write_all(request.as_bytes()).ok()?;
    // Read to the end or the deadline, whichever first (a read timeout
    // alone restarts with every byte a trickling server sends).
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        if Instant::now() > by || raw.len() > 64 << 20 {
            return None;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return None,
        }
    }
    let body = String::from_utf8_lossy(&raw);
    body.lines()
        .find(|l| l.starts_with(metric) && l[metric.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("--endpoint {addr}: not HOST:PORT"))?
        .next()
        .with_context(|| format!("--endpoint {addr}: resolves to nothing"))
}

/// Mints the workload, drives the daemon, checks every decision.
///
/// # Errors
/// Bad flags or files, or no connection to the daemon. Wrong decisions are
/// not errors: they are counted in the report.
pub fn run(args: &RunArgs) -> anyhow::Result<Report> {
    let manifest_path = args
        .manifest
        .clone()
        .unwrap_or_else(|| PathBuf::from("jotd-dev/load.json"));
    if !args.dev && args.manifest.is_none() && !manifest_path.exists() {
        bail!(
            "no --manifest and no ./jotd-dev/load.json: start `jotd serve` (development defaults) first, or pass --manifest"
        );
    }
    let (m, dir) = Manifest::load(&manifest_path)?;
    let algs = args
        .algs
        .iter()
        .map(|a| {
            Algorithm::from_name(a).with_context(|| format!("--algs: unknown algorithm `{a}`"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let keys = m.signing_keys(&dir, &algs)?;
    let mix = parse_mix(&args.mix)?;
    for (flag, value) in [
        ("--batch", args.batch),
        ("--connections", args.connections),
        ("--streams", args.streams),
    ] {
        if value == 0 {
            bail!("{flag} 0: must be at least 1");
        }
    }
    // Bounds past which the harness would allocate without limit (a batch's
    // list, a stream per connection) or the protocol refuses anyway.
    if args.batch > 65_536 {
        bail!(
            "--batch {}: must be 1 to 65536 (the protocol's most items a batch)",
            args.batch
        );
    }
    if args.streams > 4096 {
        bail!("--streams {}: must be 1 to 4096", args.streams);
    }
    if args.count == Some(0) {
        bail!("--count 0: must be at least 1 (a run that checks nothing passes nothing)");
    }
    if args.tenants == Some(0) {
        bail!("--tenants 0: must be at least 1");
    }
    // Every distinct token is minted before the run: past a million per
    // tenant and key the list grew until memory ran out.
    if !(1..=MAX_DISTINCT).contains(&args.distinct) {
        bail!("--distinct {}: must be 1 to {MAX_DISTINCT}", args.distinct);
    }
    // A soak whose config cannot be read did no reload and said so only
    // as `reloads 0`.
    if let Some(path) = &args.reload_config {
        jotd_transport::files::read_text(path)
            .map_err(|e| anyhow::anyhow!("--reload-config {}: {e}", path.display()))?;
    }
    if let Some(url) = &args.metrics_url
        && !url.starts_with("http://")
    {
        bail!(
            "--metrics-url {url}: must be http://host:port/path (plain HTTP, as jotd's admin listener)"
        );
    }
    let tenants = match args.tenants {
        Some(n) if n > m.tenants.len() => bail!(
            "--tenants {n}: the manifest names only {} tenant(s)",
            m.tenants.len()
        ),
        Some(n) => n,
        None => m.tenants.len().min(16),
    };
    if args.resolve_interval_s == 0 {
        bail!("--resolve-interval-s 0: must be at least 1");
    }
    // The client's own bounds, named as flags (its errors name its options).
    if args.connections > 64 {
        bail!("--connections {}: must be 1 to 64", args.connections);
    }
    if !(1..=86_400_000).contains(&args.timeout_ms) {
        bail!(
            "--timeout-ms {}: must be 1 to 86400000 (a day)",
            args.timeout_ms
        );
    }
    jotd_transport::check_server_name(&args.server_name)
        .map_err(|e| anyhow::anyhow!("--server-name {e}"))?;
    let duration = match (&args.duration, args.count) {
        (Some(d), _) => Some(parse_duration(d)?),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    // Tokens are minted once, valid for an hour (and the not-yet-valid ones
    // become valid in an hour): a longer run would report the daemon wrong.
    if let Some(d) = duration
        && d > MAX_RUN
    {
        bail!(
            "--duration {}: at most 55m (the harness mints its tokens once, valid for an hour)",
            args.duration.as_deref().unwrap_or_default()
        );
    }
    if let (None, Some(c), Some(r)) = (duration, args.count, args.rate)
        && c as f64 / r > MAX_RUN.as_secs_f64()
    {
        bail!(
            "--count {c} at --rate {r}: {:.0} s, past 55m (the harness mints its tokens once, valid for an hour); lower --count or give --duration",
            c as f64 / r
        );
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let t = Instant::now();
    let pool = build_pool(&m, &keys, tenants, args.distinct, &mix, now)?;
    // The run must end while its tokens are valid, minting included (a
    // long mint ate into the hour, and a --count run had no end at all).
    let window = Duration::from_secs(3600 - 60).saturating_sub(t.elapsed());
    if let Some(d) = duration
        && d > window
    {
        bail!(
            "--duration {}: minting took {:.0} s, so at most {:.0} s are left of the tokens' hour",
            args.duration.as_deref().unwrap_or_default(),
            t.elapsed().as_secs_f64(),
            window.as_secs_f64()
        );
    }
    // A --count run stops there at the latest, said so in the report.
    let ends_early = duration.is_none();
    let duration = Some(duration.unwrap_or(window));
    let pool_size: usize = pool.by_outcome.iter().map(|(_, e)| e.len()).sum();
    let batch_count = (pool_size / args.batch + 1).clamp(64, 4096);
    let batches = build_batches(&pool, &mix, args.batch, batch_count)?;
    // The prepared batches repeat: past their items, the rest of the pool
    // is never sent (its tokens are interleaved across tenants and keys,
    // so each still gets its share). Said, not silent: a cache figure over
    // "65,536 distinct" tokens of which 262,144 items were sent is not one.
    let prepared = batch_count * args.batch;
    if pool_size > prepared {
        eprintln!(
            "jotd-load: note: {pool_size} tokens minted, {prepared} items prepared ({batch_count} batches of {}): at most {prepared} distinct tokens are sent",
            args.batch
        );
    }
    if !args.quiet {
        eprintln!(
            "jotd-load: {pool_size} tokens minted for {} tenants × {} keys, {} batches of {} prepared in {:.1}s",
            pool.tenants.len(),
            keys.len(),
            batches.len(),
            args.batch,
            t.elapsed().as_secs_f64()
        );
    }
    let (endpoints, names): (Vec<SocketAddr>, Vec<String>) = if args.endpoints.is_empty() {
        (vec![resolve(&m.endpoint)?], Vec::new())
    } else {
        let (addrs, names): (Vec<&String>, Vec<&String>) = args
            .endpoints
            .iter()
            .partition(|e| e.parse::<SocketAddr>().is_ok());
        for name in &names {
            resolve(name)?; // a name that does not resolve now is an error now
        }
        (
            addrs.iter().filter_map(|a| a.parse().ok()).collect(),
            names.into_iter().cloned().collect(),
        )
    };
    let ca_path = args.ca.clone().unwrap_or_else(|| dir.join(&m.ca));
    let ca = jotd_transport::files::read_file(&ca_path)
        .with_context(|| format!("--ca {}: cannot read", ca_path.display()))?;
    let client_cert = match (&args.cert, &args.key) {
        (Some(c), Some(k)) => Some((
            jotd_transport::files::read_file(c)
                .with_context(|| format!("--cert {}", c.display()))?,
            jotd_transport::files::read_file(k)
                .with_context(|| format!("--key {}", k.display()))?,
        )),
        _ => None,
    };
    let tls = client_config(
        &ca,
        client_cert
            .as_ref()
            .map(|(c, k)| (c.as_slice(), k.as_slice())),
    )?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, std::num::NonZero::get));
    if !(1..=1024).contains(&threads) {
        bail!("--threads {threads}: must be 1 to 1024");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let mode = match args.rate {
        Some(r) => format!("open loop at {r} tokens/s"),
        None => "closed loop (max)".into(),
    };
    let interval = match args.rate {
        // At least one token a second: a slower rate's interval overflows a clock.
        // …and at most one batch a microsecond: a shorter interval rounds
        // to nothing and the pacer spins.
        Some(r) if (1.0..=1e12).contains(&r) && args.batch as f64 / r >= 1e-6 => {
            Some(Duration::from_secs_f64(args.batch as f64 / r))
        }
        Some(r) => bail!(
            "--rate {r:e}: must be 1 to {:e} tokens per second (one batch of {} a microsecond)",
            args.batch as f64 * 1e6,
            args.batch
        ),
        None => None,
    };
    let rss_start = args
        .metrics_url
        .as_deref()
        .and_then(|u| scrape(u, "process_resident_memory_bytes"));
    let report = rt.block_on(async {
        let mut opts = ClientOptions::new(endpoints, tls);
        opts.names = names;
        opts.resolve_interval = Duration::from_secs(args.resolve_interval_s);
        opts.connections_per_endpoint = args.connections;
        opts.server_name = args.server_name.clone();
        opts.batch_timeout = Duration::from_millis(args.timeout_ms);
        opts.hedge.enabled = !args.no_hedge;
        let client = Arc::new(Client::new(opts)?);
        client
            .connect_all()
            .await
            .context("connecting to the daemon")?;
        let (paced_tx, paced_rx) = match interval {
            Some(_) => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let shared = Arc::new(Shared {
            batches,
            batch: args.batch,
            next: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            limit_batches: args.count.map(|c| c.div_ceil(args.batch as u64)),
            start: Instant::now(),
            paced: paced_rx.map(tokio::sync::Mutex::new),
            tokens_done: AtomicU64::new(0),
            errors_live: AtomicU64::new(0),
            window: Mutex::new(histogram()),
            stopped_at: std::sync::OnceLock::new(),
            latencies: (0..LATENCY_SHARDS)
                .map(|_| Mutex::new(histogram()))
                .collect(),
        });
        // The pacer: a plain thread sleeps to each batch's due time (finer than
        // tokio's millisecond timer) and hands the batch to whichever worker is
        // free; when none is, the batch waits and its latency, measured from
        // the due time, says so.
        if let (Some(every), Some(tx)) = (interval, paced_tx) {
            let s = Arc::clone(&shared);
            std::thread::spawn(move || {
                'pace: for i in 0u64.. {
                    if s.stop.load(Ordering::Relaxed) || s.limit_batches.is_some_and(|l| i >= l) {
                        break;
                    }
                    let due = s.start + every.mul_f64(i as f64);
                    // Asleep in slices, so a slow rate does not outlive the run
                    // (nor send a batch due after it ended).
                    loop {
                        let now = Instant::now();
                        if due <= now {
                            break;
                        }
                        std::thread::sleep((due - now).min(Duration::from_millis(50)));
                        if s.stop.load(Ordering::Relaxed) {
                            break 'pace;
                        }
                    }
                    if tx.send((i, due)).is_err() {
                        break;
                    }
                }
            });
        }
        let cpu0 = cpu_seconds();
        let workers = args.connections * args.streams * client_endpoints(args);
        let mut tasks = Vec::with_capacity(workers);
        for k in 0..workers {
            tasks.push(tokio::spawn(worker(
                Arc::clone(&client),
                Arc::clone(&shared),
                k,
            )));
        }
        // Progress, the duration limit, soak reloads.
        let monitor = {
            let s = Arc::clone(&shared);
            let quiet = args.quiet;
            let reload = args.reload_every.zip(args.reload_config.clone());
            let metrics_url = args.metrics_url.clone();
            tokio::spawn(async move {
                // Scrapes run on their own (a slow or silent metrics
                // endpoint held the monitor, and with it the run's end).
                let mut scrapes = Vec::new();
                let mut last = 0;
                let mut reloads = 0u64;
                let original = match &reload {
                    Some((_, path)) => jotd_transport::files::read_text(path).ok(),
                    None => None,
                };
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.tick().await;
                // The run ends at its duration, not at the next progress tick.
                let deadline = duration.map(|d| tokio::time::Instant::from_std(s.start + d));
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        () = async {
                            match deadline {
                                Some(d) => tokio::time::sleep_until(d).await,
                                None => std::future::pending().await,
                            }
                        } => {}
                    }
                    let elapsed = s.start.elapsed();
                    let done = s.tokens_done.load(Ordering::Relaxed);
                    if !quiet {
                        let p99 = s.window.lock().map(|mut w| {
                            let v = w.value_at_quantile(0.99);
                            w.reset();
                            v
                        });
                        eprintln!(
                            "[{:>5.0}s] {:>10.0} tokens/s  p99 {:>8} µs  errors {}",
                            elapsed.as_secs_f64(),
                            (done - last) as f64,
                            p99.unwrap_or(0),
                            s.errors_live.load(Ordering::Relaxed)
                        );
                    }
                    last = done;
                    if let Some(url) = &metrics_url
                        && elapsed.as_secs().is_multiple_of(10)
                    {
                        let url = url.clone();
                        scrapes.push((
                            elapsed.as_secs(),
                            tokio::task::spawn_blocking(move || {
                                scrape(&url, "process_resident_memory_bytes")
                            }),
                        ));
                    }
                    if let (Some((every, path)), Some(text)) = (&reload, &original)
                        && elapsed.as_secs() > 0
                        && elapsed.as_secs().is_multiple_of(*every)
                    {
                        reloads += 1;
                        // Rotate: the last tenant gets a fresh HS256 key (kid rot-N).
                        let rotated = crate::tenants::rotated_key(reloads)
                            .map(|key| format!("{text}\n{key}"));
                        if let Err(e) = rotated.and_then(|r| Ok(std::fs::write(path, r)?)) {
                            eprintln!("jotd-load: cannot rewrite {}: {e}", path.display());
                        }
                    }
                    if duration.is_some_and(|d| elapsed >= d) {
                        let _ = s.stopped_at.set(Instant::now());
                        s.stop.store(true, Ordering::Relaxed);
                    }
                    if s.stop.load(Ordering::Relaxed) {
                        if let (Some((_, path)), Some(text)) = (&reload, &original) {
                            let _ = std::fs::write(path, text);
                        }
                        // Each scrape ends within its own deadline.
                        let mut rss = Vec::new();
                        for (at, scrape) in scrapes {
                            if let Ok(Some(v)) = scrape.await {
                                rss.push((at, v));
                            }
                        }
                        return (reloads, rss);
                    }
                }
            })
        };
        let mut total = Local::default();
        let mut hist = histogram();
        for t in tasks {
            let l = t.await?;
            total.tokens += l.tokens;
            total.batches += l.batches;
            total.mismatches += l.mismatches;
            total.missing += l.missing;
            total.batch_errors += l.batch_errors;
            for (k, v) in l.reasons {
                *total.reasons.entry(k).or_default() += v;
            }
            for (k, v) in l.errors {
                *total.errors.entry(k).or_default() += v;
            }
            total.first_mismatches.extend(l.first_mismatches);
        }
        for part in &shared.latencies {
            let part = part
                .lock()
                .map_err(|_| anyhow::anyhow!("a worker panicked"))?;
            hist.add(&*part).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        // Open loop: batches released to the queue that no worker took before
        // the end count as having waited until then (coordinated omission:
        // dropping them would hide a daemon that stalls at the end).
        let mut unsent_due = 0u64;
        if let (Some(rx), Some(end)) = (&shared.paced, shared.stopped_at.get()) {
            let mut rx = rx.lock().await;
            while let Ok((_, due)) = rx.try_recv() {
                if due <= *end {
                    unsent_due += 1;
                    let waited = end.duration_since(due).as_micros().max(1) as u64;
                    let _ = hist.record(waited.min(MAX_LATENCY_US));
                }
            }
        }
        let seconds = shared.start.elapsed().as_secs_f64();
        shared.stop.store(true, Ordering::Relaxed);
        let (reloads, rss_samples) = monitor.await.unwrap_or_default();
        let cpu = cpu_seconds() - cpu0;
        let fleet = Fleet::from(client.stats());
        client.close();
        total.first_mismatches.truncate(10);
        Ok::<_, anyhow::Error>(Report {
            tokens: total.tokens,
            batches: total.batches,
            seconds,
            tokens_per_s: total.tokens as f64 / seconds,
            batches_per_s: total.batches as f64 / seconds,
            batch_size: shared.batch,
            mode,
            latency_us: Latency {
                p50: hist.value_at_quantile(0.50),
                p90: hist.value_at_quantile(0.90),
                p99: hist.value_at_quantile(0.99),
                p999: hist.value_at_quantile(0.999),
                max: hist.max(),
            },
            reasons: total
                .reasons
                .into_iter()
                .map(|(k, v)| (name(k), v))
                .collect(),
            mismatches: total.mismatches,
            missing: total.missing,
            batch_errors: total.batch_errors,
            unsent_due,
            errors: total.errors,
            first_mismatches: total.first_mismatches,
            client_cpu_s: cpu,
            reloads,
            daemon_rss_bytes_start: rss_start,
            daemon_rss_bytes_end: None,
            daemon_rss_samples: rss_samples,
            count_not_reached: ends_early && shared.stopped_at.get().is_some(),
            fleet,
        })
    })?;
    let mut report = report;
    report.daemon_rss_bytes_end = args
        .metrics_url
        .as_deref()
        .and_then(|u| scrape(u, "process_resident_memory_bytes"));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("--json {}: cannot write", path.display()))?;
    }
    Ok(report)
}

fn client_endpoints(args: &RunArgs) -> usize {
    args.endpoints.len().max(1)
}

/// The human report.
pub fn print(r: &Report) {
    println!("mode            {}", r.mode);
    println!(
        "tokens          {} in {:.2}s = {:.0} tokens/s ({:.0} batches/s of {})",
        r.tokens, r.seconds, r.tokens_per_s, r.batches_per_s, r.batch_size
    );
    println!(
        "latency (µs)    p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        r.latency_us.p50, r.latency_us.p90, r.latency_us.p99, r.latency_us.p999, r.latency_us.max
    );
    println!(
        "reasons         {}",
        serde_json::to_string(&r.reasons).unwrap_or_default()
    );
    println!(
        "checked         mismatches {}  missing {}  batch errors {}  due but never sent {} {}",
        r.mismatches,
        r.missing,
        r.batch_errors,
        r.unsent_due,
        if r.errors.is_empty() {
            String::new()
        } else {
            serde_json::to_string(&r.errors).unwrap_or_default()
        }
    );
    for m in &r.first_mismatches {
        println!("  mismatch: {m}");
    }
    if r.count_not_reached {
        println!(
            "count           not reached: stopped at the end of the tokens' validity window (minted once, valid for an hour)"
        );
    }
    println!("client cpu      {:.2}s", r.client_cpu_s);
    let f = &r.fleet;
    println!(
        "fleet           retries {}  hedges {}  late duplicates dropped {} (disagreeing {})  protocol violations {}  ejections {}",
        f.retries,
        f.hedges,
        f.late_duplicates,
        f.late_disagreements,
        f.protocol_violations,
        f.ejections
    );
    for e in &f.endpoints {
        println!(
            "  {:<22} sent {}  failures {}  ejections {}  path mtu {}  packets lost {} of {}",
            e.endpoint,
            e.sent,
            e.failures,
            e.ejections,
            e.path_mtu.map_or_else(|| "-".to_owned(), |m| m.to_string()),
            e.lost_packets,
            e.sent_packets
        );
    }
    if r.reloads > 0 {
        println!("reloads         {}", r.reloads);
    }
    if let (Some(a), Some(b)) = (r.daemon_rss_bytes_start, r.daemon_rss_bytes_end) {
        println!(
            "daemon rss      {:.1} MiB → {:.1} MiB",
            a / 1048576.0,
            b / 1048576.0
        );
    }
    if !r.daemon_rss_samples.is_empty() {
        let samples: Vec<String> = r
            .daemon_rss_samples
            .iter()
            .map(|(t, b)| format!("{t}s {:.1}", b / 1048576.0))
            .collect();
        println!("daemon rss MiB  {}", samples.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A metrics endpoint that trickles its answer is given up on at the
    /// deadline (a read timeout alone restarted with every byte); a prompt
    /// one is read.
    #[test]
    fn a_scrape_ends_by_its_deadline() {
        use std::io::{Read, Write};
        let serve = |trickle: bool| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}/metrics", l.local_addr().unwrap());
            std::thread::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                // The request's head, whole (closing with it unread resets).
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = b"HTTP/1.1 200 OK\r\n\r\nprocess_resident_memory_bytes 42\n";
                if trickle {
                    for b in answer.iter().cycle().take(10_000) {
                        if s.write_all(&[*b]).is_err() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                } else {
                    let _ = s.write_all(answer);
                }
            });
            url
        };
        let metric = "process_resident_memory_bytes";
        let t = Instant::now();
        assert_eq!(
            scrape_within(&serve(true), metric, Duration::from_millis(400)),
            None
        );
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(
            scrape_within(&serve(false), metric, Duration::from_secs(5)),
            Some(42.0)
        );
        // A name's addresses are tried in turn: one that refuses, then one that takes it.
        let refuses = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let takes = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let by = Instant::now() + Duration::from_secs(5);
        let s = connect_first([refuses, takes.local_addr().unwrap()], by).expect("the second");
        assert_eq!(s.peer_addr().unwrap(), takes.local_addr().unwrap());
        assert!(connect_first([refuses], by).is_none());
        assert!(connect_first([takes.local_addr().unwrap()], Instant::now()).is_none());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("0").is_err());
        // Past a year (and past what a Duration holds): an error, not a panic.
        assert!(parse_duration("99999999999999999999999").is_err());
        assert!(parse_duration("400d").is_err());
        assert!(parse_duration("366h").is_ok());
        assert!(parse_duration("").is_err());
    }
}
