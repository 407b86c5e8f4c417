//! `jotd serve`: the daemon. Wires the config (jotd-keys `Reloader`), JWKS
//! fetching, the engine and its rayon pool, the QUIC server, reloads (SIGHUP
//! and file watching), the admin listener (metrics, health) and the drain on
//! SIGTERM/SIGINT.

use crate::admin::{self, Health};
use crate::logging::Escaped;
use crate::metrics::Metrics;
use crate::settings::{self, LogFormat, Settings};
use crate::{dev, logging};
use anyhow::Context;
use clap::Args;
use jotd_core::{Engine, Snapshot, UnixTime};
use jotd_keys::{JwksFetcher, Reloader};
use jotd_transport::{Backend, BatchReport, BoxFuture, Event, Refusal, Server};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};
use tracing::{error, info, warn};

/// Options of `jotd serve`.
#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    /// The config file. Without it, jotd generates development defaults in
    /// `--dev-dir` (CA, certificates, demo keys, config) and serves those.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where development defaults are written when `--config` is absent.
    #[arg(long, default_value = "jotd-dev")]
    dev_dir: PathBuf,
    /// QUIC listen address (overrides `[server] listen`).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin (metrics, health) listen address, or `off` (overrides `[admin] listen`).
    #[arg(long)]
    admin: Option<String>,
    /// Verification threads (overrides `[verify] threads`; 0 = one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Log format: `text` or `json` (overrides `[log] format`).
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Record no metrics (to measure what they cost).
    #[arg(long)]
    no_metrics: bool,
}

fn unix_now() -> UnixTime {
    UnixTime(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

fn stamp(p: &std::path::Path) -> Option<jotd_keys::FileStamp> {
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.modified().ok(), m.len()))
}

/// The daemon side of the server: snapshots from the reloader, refetches
/// through the JWKS fetcher, events into metrics and logs.
struct Daemon {
    reloader: Arc<Reloader>,
    fetcher: Arc<JwksFetcher>,
    metrics: Option<Arc<Metrics>>,
    refusals: jotd_transport::ratelimit::RateLimited,
}

impl Backend for Daemon {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.reloader.store().load()
    }

    fn now(&self) -> UnixTime {
        unix_now()
    }

    fn refetch(&self, tenants: Vec<String>) -> BoxFuture<bool> {
        // Every tenant's refetch at once (each is single-flight and rate
        // limited in the fetcher): a batch waits for the slowest, not the sum.
        let mut fetches = tokio::task::JoinSet::new();
        for t in tenants {
            let fetcher = Arc::clone(&self.fetcher);
            fetches.spawn(async move { fetcher.on_unknown_kid(&t).await });
        }
        Box::pin(async move {
            let mut any = false;
            while let Some(installed) = fetches.join_next().await {
                any |= installed.unwrap_or(false);
            }
            any
        })
    }

    fn record_denials(&self) -> bool {
        // `[log] level = "info,jotd::decision=debug"`: an operator chasing one
        // client's failures.
        tracing::enabled!(target: "jotd::decision", tracing::Level::DEBUG)
    }

    fn event(&self, event: &Event<'_>) {
        if let Some(m) = &self.metrics {
            m.event(event);
        }
        if let Event::Batch(report) = event {
            log_denials(report);
        }
        if let Event::ConnectionRefused {
            remote,
            why,
            detail,
        } = event
        {
            self.refusals.log(|suppressed| {
                let why = match why {
                    Refusal::ConnectionLimit => "connection limit",
                    Refusal::HandshakeLimit => "handshake limit",
                    Refusal::HandshakeTimeout => "handshake timed out",
                    Refusal::Handshake => "handshake failed",
                    Refusal::HandshakeShare => "handshakes per address limit",
                    Refusal::ClosedForRoom => "closed to make room for another address",
                };
                warn!(%remote, why, detail, suppressed, "connection refused");
            });
        }
    }
}

/// One debug line per denied item of a batch (never the token: its short hash).
fn log_denials(report: &BatchReport) {
    for d in &report.denials {
        tracing::debug!(
            target: "jotd::decision",
            request_id = report.request_id.unwrap_or(0),
            index = d.index,
            tenant = d.tenant,
            method = d.method.as_deref().unwrap_or(""),
            reason = d.reason.as_str(),
            kid = d.kid.as_deref().unwrap_or(""),
            token = d.token_hash.as_deref().unwrap_or("-"),
            "denied"
        );
    }
}

pub(crate) fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let early_hup = early_hangup();
    let mut dev_notes = Vec::new();
    let (config_path, dev) = match &args.config {
        Some(p) => (p.clone(), false),
        None => {
            let listen = args
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 4433)));
            // The development defaults hold demo keys whose private halves sit in
            // the dev directory, and an admin port without authentication: they
            // serve loopback only (checked before anything is written).
            // Parsed whole before the dev directory is written: a value that
            // does not parse was skipped here, and failed only after every
            // development key and certificate had been made anew.
            let admin = match args.admin.as_deref().filter(|a| *a != "off") {
                Some(a) => Some(
                    a.parse::<SocketAddr>()
                        .with_context(|| format!("--admin {a}: not an IP:port address or `off`"))?,
                ),
                None => None,
            };
            for (flag, addr) in [("--listen", Some(listen)), ("--admin", admin)] {
                if let Some(a) = addr.filter(|a| !a.ip().is_loopback()) {
                    anyhow::bail!(
                        "{flag} {a}: development defaults (no --config) serve loopback addresses only; write a config (docs/configuration.md) to serve {a}"
                    );
                }
            }
            (
                dev::generate(&args.dev_dir, &listen.to_string(), &mut dev_notes)?,
                true,
            )
        }
    };
    // The file is read and parsed once: the daemon's settings and the keys.
    let read_since = std::time::SystemTime::now();
    let (mut settings, keys): (Settings, _) = settings::load(&config_path)?;
    let from_file = settings.clone();
    if let Some(l) = args.listen {
        settings.server.listen = l;
    }
    if let Some(a) = &args.admin {
        settings.admin = if a == "off" {
            None
        } else {
            Some(
                a.parse()
                    .with_context(|| format!("--admin {a}: not an IP:port address or `off`"))?,
            )
        };
    }
    if let Some(t) = args.threads {
        if t > 1024 {
            anyhow::bail!("--threads {t}: must be at most 1024 (0: one per core)");
        }
        settings.verify_threads = t;
    }
    if let Some(f) = &args.log_format {
        settings.log_format = if f == "json" {
            LogFormat::Json
        } else {
            LogFormat::Text
        };
    }
    logging::init(settings.log_format, &settings.log_level);
    for note in dev_notes {
        warn!("{}", Escaped(note));
    }
    if dev {
        info!(
            dir = %args.dev_dir.display(),
            "no --config: serving development defaults (fresh CA, certificates and demo keys in {}; never for production)",
            args.dev_dir.display()
        );
    }

    for line in settings::lapsed_revocations(&keys) {
        tracing::warn!("{}", Escaped(line));
    }
    for (tenant, kid) in keys.shadowed_kids() {
        tracing::warn!(
            tenant = %tenant,
            kid = ?kid,
            "a JWKS file's kid is already held (a static key or an earlier source) with other key material: the first wins, this key verifies nothing"
        );
    }
    for name in settings::unknown_tenant_labels(&settings, &keys) {
        tracing::warn!(
            tenant = %name,
            "admin.tenant_labels names a tenant no [[tenant]] has: its count stays 0 until a reload adds it"
        );
    }
    let tls = settings::server_tls(&settings, &config_path)?;
    let tls_switch = Arc::new(std::sync::OnceLock::new());
    let mut keys = keys;
    // The TLS files are watched with the config: a renewed certificate or a
    // new client CA is applied by the reload it triggers.
    keys.files.extend(settings::watched_files(&settings));
    let (loader, server_reload) =
        settings::loader(&config_path, &from_file, Arc::clone(&tls_switch));
    let reloader = Arc::new(Reloader::with_loader(
        keys,
        loader,
        Box::new(stamp),
        read_since,
    ));
    let (fetch, _) = settings::fetch_config(&settings, &config_path)?;

    let threads = if settings.verify_threads == 0 {
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    } else {
        settings.verify_threads
    };
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("jotd-verify-{i}"))
            .build()
            .context("starting the verification pool")?,
    );
    let engine = Arc::new(Engine::new(settings.engine_config()));
    let io_threads = io_threads(settings.io_threads);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(io_threads)
        .thread_name("jotd-io")
        .enable_all()
        .build()
        .context("starting the I/O runtime")?;
    let served = runtime.block_on(serve(
        settings,
        config_path,
        (reloader, server_reload),
        fetch,
        engine,
        pool,
        (tls, tls_switch),
        threads,
        args.no_metrics,
        early_hup,
    ));
    // Blocking work still under way (a reload reading a file on a hung
    // mount, a 100k-tenant snapshot build, a readiness walk) does not hold
    // the exit past this: dropped, the runtime waited for it without bound,
    // and a drain that had finished looked like a hang to the supervisor.
    runtime.shutdown_timeout(EXIT_WAIT);
    served
}

/// How long the exit waits for blocking work still under way.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// SIGHUP's default action ends the process, and the reload loop listens only
/// once the config and every key file are read (seconds with 100k tenants): a
/// SIGHUP then (logrotate, an operator's reload during a restart) killed a
/// starting daemon. This flag takes SIGHUP from the first line of `serve`; the
/// reload loop reloads once when it starts if the flag was raised.
fn early_hangup() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    #[cfg(unix)]
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&flag)) {
        // Logging is not set up yet (it comes from the config).
        eprintln!("jotd: cannot catch SIGHUP while starting (a SIGHUP now ends the process): {e}");
    }
    flag
}

/// I/O threads for `[server] io_threads` (0: automatic: one per 4 cores, at
/// least one). On 2 cores a second I/O thread cost ~6 % of RS256 throughput in
/// wake-ups (`docs/benchmarks.md`); on a 16-core machine one I/O thread per 8
/// cores held RS256 × 64 to 0.69 × 12 × the one-core rate and one per 4 cores
/// reached 0.93 (the measurement in issue 12, `benches/e2e.sh`).
fn io_threads(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    (cores / 4).max(1)
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    settings: Settings,
    config_path: PathBuf,
    (reloader, server_reload): (Arc<Reloader>, Arc<settings::ServerReload>),
    fetch: jotd_keys::FetchConfig,
    engine: Arc<Engine>,
    pool: Arc<rayon::ThreadPool>,
    (tls, tls_switch): (
        rustls::ServerConfig,
        Arc<std::sync::OnceLock<jotd_transport::TlsSwitch>>,
    ),
    threads: usize,
    no_metrics: bool,
    early_hup: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let fetcher = Arc::new(
        JwksFetcher::new(Arc::clone(&reloader), fetch)
            .context("starting the JWKS fetcher")?
            .with_observer(Box::new(log_fetch)),
    );
    let metrics = if no_metrics || settings.admin.is_none() {
        None
    } else {
        Some(Arc::new(Metrics::install(
            settings.server.tenant_watch.as_deref(),
        )?))
    };
    let daemon = Arc::new(Daemon {
        reloader: Arc::clone(&reloader),
        fetcher: Arc::clone(&fetcher),
        metrics: metrics.clone(),
        refusals: jotd_transport::ratelimit::RateLimited::new(Duration::from_secs(10)),
    });
    let server = Server::bind(
        settings.server.clone(),
        tls,
        Arc::clone(&engine),
        pool,
        Arc::clone(&daemon) as Arc<dyn Backend>,
    )?;
    let _ = tls_switch.set(server.tls_switch());
    let addr = server.local_addr()?;
    let stats = server.stats();
    let draining = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    // JWKS refresh (outcomes are logged by `log_fetch`).
    {
        let fetcher = Arc::clone(&fetcher);
        let mut stop = stop_rx.clone();
        tokio::spawn(async move { fetcher.run(crate::stopped(&mut stop)).await });
    }
    // Reloads: SIGHUP, and polling the files the config was built from.
    // Listening for SIGHUP here, before anything is spawned, leaves no gap
    // between the start-up flag and the loop.
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .inspect_err(|e| error!(error = %Escaped(e), "cannot listen for SIGHUP; reloads come from the file watcher only"))
        .ok();
    #[cfg(not(unix))]
    let hup = None;
    tokio::spawn(reload_loop(
        Arc::clone(&reloader),
        server_reload,
        settings.watch_interval,
        metrics.clone(),
        stop_rx.clone(),
        Hangups {
            signal: hup,
            during_start: early_hup,
        },
    ));
    // Admin: metrics and health.
    if let Some(admin_addr) = settings.admin {
        let started = Arc::new(AtomicBool::new(false));
        tokio::spawn(admin::watch_first_fetches(
            Arc::clone(&fetcher),
            Arc::clone(&started),
        ));
        let health = Health {
            reloader: Arc::clone(&reloader),
            fetcher: Arc::clone(&fetcher),
            draining: Arc::clone(&draining),
            started,
            last: std::sync::Mutex::new(None),
        };
        let bound = admin::start(admin_addr, health, metrics.clone(), stop_rx.clone())
            .await
            .with_context(|| format!("admin listener on {admin_addr}"))?;
        info!(%bound, "admin listening: /metrics /healthz /readyz");
    }
    if let Some(m) = &metrics {
        m.start_sampler(
            &settings.server,
            Arc::clone(&stats),
            Arc::clone(&engine),
            Arc::clone(&reloader),
            Arc::clone(&fetcher),
            stop_rx.clone(),
        );
    }
    let snapshot = reloader.store().load();
    info!(
        %addr,
        config = %config_path.display(),
        tenants = snapshot.len(),
        threads,
        "jotd serving (QUIC, ALPN jotd/1)"
    );

    let shutdown = {
        let draining = Arc::clone(&draining);
        let mut signals = StopSignals::install();
        async move {
            let signal = signals.next().await;
            draining.store(true, Ordering::SeqCst);
            info!(
                signal,
                "draining: finishing batches in flight, refusing new connections (a second SIGTERM or SIGINT exits at once)"
            );
            // An operator who cannot wait for the drain (drain_timeout_s) says so
            // again, as with most servers; the batches in flight are cut off. A
            // signal within a second of the first is the same request twice
            // (Ctrl-C reaching a process group whose wrapper also forwards
            // SIGTERM), not a second one.
            tokio::spawn(async move {
                let first = tokio::time::Instant::now();
                let again = loop {
                    let again = signals.next().await;
                    if first.elapsed() >= SECOND_SIGNAL_AFTER {
                        break again;
                    }
                };
                error!(
                    signal = again,
                    "second stop signal: exiting without finishing the drain; batches in flight are cut off"
                );
                std::process::exit(1);
            });
        }
    };
    let report = server.run(shutdown).await;
    let _ = stop_tx.send(true);
    if report.complete {
        info!(
            streams = report.streams_at_start,
            "drained; all batches in flight finished"
        );
    } else {
        // Exit status 1, as for a second stop signal: a supervisor tells a
        // drain that cut batches off from a clean one (it exited 0 either way).
        anyhow::bail!(
            "drain timed out after drain_timeout_s; some of the {} batches in flight were cut off",
            report.streams_at_start
        );
    }
    Ok(())
}

/// A stop signal this long after the first ends the drain at once; sooner,
/// it is taken for the same request delivered twice.
const SECOND_SIGNAL_AFTER: Duration = Duration::from_secs(1);

/// SIGTERM and SIGINT (Ctrl-C elsewhere), listened for once so that a second
/// one is not missed while the first is handled.
struct StopSignals {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Self {
                    signals: Some((term, int)),
                },
                _ => {
                    error!("cannot install SIGTERM/SIGINT handlers; stop with SIGKILL");
                    Self { signals: None }
                }
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The next stop signal's name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            let Some((term, int)) = self.signals.as_mut() else {
                return std::future::pending().await;
            };
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                // No handler: never a stop signal (rather than one at once,
                // over and over).
                return std::future::pending().await;
            }
            "ctrl-c"
        }
    }
}

/// Where reloads on demand come from.
struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
    #[cfg(not(unix))]
    signal: Option<std::convert::Infallible>,
    /// Raised by a SIGHUP before `signal` listened ([`early_hangup`]).
    during_start: Arc<AtomicBool>,
}

async fn reload_loop(
    reloader: Arc<Reloader>,
    server_reload: Arc<settings::ServerReload>,
    watch: Option<Duration>,
    metrics: Option<Arc<Metrics>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    hangups: Hangups,
) {
    let Hangups {
        signal: mut hup,
        during_start,
    } = hangups;
    let mut pending_hup = during_start.load(Ordering::SeqCst);
    let tick = watch.unwrap_or(Duration::from_secs(3600));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = {
            let _ = &mut hup;
            std::future::pending::<()>()
        };
        let trigger = if std::mem::take(&mut pending_hup) {
            info!("SIGHUP while starting: reloading now");
            "SIGHUP"
        } else {
            tokio::select! {
                _ = crate::stopped(&mut stop) => return,
                () = hangup => "SIGHUP",
                _ = interval.tick(), if watch.is_some() => "file change",
            }
        };
        // Reading and parsing every file can take seconds (100k tenants): off the I/O
        // threads, so QUIC keeps moving during a reload.
        // What the new config warns about is worked out there too: it walks
        // every tenant under the reloader's lock, which a fetch's rebuild
        // holds for as long as that takes.
        let r = Arc::clone(&reloader);
        let server = Arc::clone(&server_reload);
        let result = tokio::task::spawn_blocking(move || {
            let result = if trigger == "SIGHUP" {
                Some(r.reload())
            } else {
                r.reload_if_changed()
            };
            result.map(|result| {
                result.map(|generation| {
                    // Accepted: only now the server takes the new TLS
                    // files and client-certificate setting. (What it
                    // commits is the last read's: right while this loop is
                    // the only caller of `reload`, one reload at a time; a
                    // second caller would need the commit tied to its read.)
                    server.commit();
                    let lapsed = settings::lapsed_revocations(&r.config());
                    (generation, lapsed, r.shadowed_all())
                })
            })
        })
        .await;
        let result = match result {
            Ok(Some(result)) => result,
            Ok(None) => continue,
            Err(e) => {
                // A reload that panicked is a rejected reload too (the alert counts these).
                error!(trigger, error = %Escaped(e), "config reload failed; still serving the previous config");
                if let Some(m) = &metrics {
                    m.reload(false);
                }
                continue;
            }
        };
        match result {
            Ok((generation, lapsed, shadowed)) => {
                let tenants = reloader.store().load().len();
                info!(trigger, generation, tenants, "config reloaded");
                for line in lapsed {
                    warn!("{}", Escaped(line));
                }
                for (tenant, kid) in shadowed {
                    warn!(
                        tenant = %tenant,
                        kid = ?kid,
                        "a kid is held by two sources of the tenant with other key material: the one listed first (a static key before any JWKS) is used, the other verifies nothing"
                    );
                }
                if let Some(m) = &metrics {
                    m.reload(true);
                }
            }
            Err(e) => {
                error!(trigger, error = %Escaped(e), "config reload rejected; still serving the previous config");
                if let Some(m) = &metrics {
                    m.reload(false);
                }
            }
        }
    }
}

/// One log line per JWKS fetch: failures and redirects at `warn`, then one line
/// for the keys of a fetched document that were left out (weak, not for
/// verification, ...: how many, and the first reasons, escaped) and one for
/// its kids another source shadows, at `warn`; plain installs at `debug`. Names the URL the keys came from. One line, not one per key:
/// an IdP publishing thousands of junk entries cannot flood the log.
fn log_fetch(event: &jotd_keys::FetchEvent<'_>) {
    match *event {
        jotd_keys::FetchEvent::Installed {
            tenant,
            url,
            keys_url,
            keys,
            skipped,
            left_out,
            shadowed,
        } => {
            if keys_url == url {
                tracing::debug!(tenant, url, keys, "jwks fetched");
            } else {
                warn!(
                    tenant,
                    url, keys_url, keys, "jwks fetched through a redirect"
                );
            }
            if left_out > 0 {
                warn!(tenant, keys_url, left_out, reasons = ?skipped, "jwks keys left out");
            }
            if !shadowed.is_empty() {
                // The first source listed wins a kid: these keys verify nothing.
                warn!(
                    tenant,
                    keys_url,
                    kids = ?shadowed,
                    "jwks kids shadowed: two sources of the tenant have them with other key material; the one listed first (a static key before any JWKS) is used"
                );
            }
        }
        jotd_keys::FetchEvent::Failed { tenant, url, error } => {
            warn!(tenant, url, error = %Escaped(error), "jwks fetch failed; keeping the last good keys");
        }
        jotd_keys::FetchEvent::Dropped {
            tenant,
            url,
            age,
            max_stale,
        } => {
            tracing::error!(
                tenant,
                url,
                age_s = age.as_secs(),
                max_stale_s = max_stale.as_secs(),
                "jwks keys dropped: older than jwks_fetch.max_stale_s and the fetch failed; the tenant's tokens signed with them are unknown_kid until a fetch succeeds"
            );
        }
    }
}
