//! `jotd-gateway`: serve the doors, or check a config.

use anyhow::Context;
use clap::{Parser, Subcommand};
use jotd_gateway::config::Config;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "jotd-gateway",
    version,
    about = "The gateway side of jotd: JSON-RPC reverse proxy and HTTP forward-auth, micro-batching checks into a jotd pool"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the configured doors (SIGTERM / Ctrl-C drains).
    Serve {
        /// The config file.
        #[arg(long, conflicts_with = "dev")]
        config: Option<PathBuf>,
        /// Development defaults: the pool is the `jotd serve` dev daemon (reads
        /// its `jotd-dev/` folder); proxy on 127.0.0.1:8600, forward-auth on
        /// 127.0.0.1:8601, Envoy ext_authz (gRPC) on 127.0.0.1:8602, admin on 127.0.0.1:9466.
        #[arg(long)]
        dev: bool,
        /// With --dev: the folder `jotd serve` wrote.
        #[arg(long, default_value = "jotd-dev", conflicts_with = "config")]
        dev_dir: PathBuf,
        /// With --dev: the upstream node(s).
        #[arg(
            long,
            default_value = "http://127.0.0.1:8545",
            conflicts_with = "config"
        )]
        upstream: Vec<String>,
    },
    /// Config commands.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Check a config file and print what it sets up.
    Check {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
}

/// The config `--dev` runs on (parsed like any file, so it is checked the same way).
fn dev_config(dir: &Path, upstreams: &[String]) -> anyhow::Result<Config> {
    let manifest = dir.join("load.json");
    let text = jotd_transport::files::read_text(&manifest).with_context(|| {
        format!(
            "{}: cannot read (start `jotd serve` on its development defaults first: it writes {})",
            manifest.display(),
            dir.display()
        )
    })?;
    let m: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", manifest.display()))?;
    let endpoint = m["endpoint"].as_str().unwrap_or("127.0.0.1:4433");
    let ups = upstreams
        .iter()
        .map(|u| format!("{u:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let toml = format!(
        r#"# jotd-gateway --dev
[pool]
endpoints = ["{endpoint}"]
ca_file = "ca.pem"

[proxy]
listen = "127.0.0.1:8600"
upstreams = [{ups}]

[forward_auth]
listen = "127.0.0.1:8601"

[ext_authz]
listen = "127.0.0.1:8602"

[admin]
listen = "127.0.0.1:9466"

# Infura-style: the project id in the path.
[[route]]
path = "/v3/{{tenant}}"

# Besu-style: one node, one tenant.
[[route]]
path = "/besu"
tenant = "demo-besu"
"#
    );
    Config::parse(&dir.join("jotd-gateway.toml (--dev)"), &toml).map_err(Into::into)
}

fn check(cfg: &Config) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    // The files `serve` would read at start, read and checked the same way.
    jotd_gateway::pool_tls(cfg)?;
    let mut out = String::new();
    writeln!(out, "{}: OK", cfg.file.display())?;
    writeln!(
        out,
        "pool: {} (ca {}{}, server name {})",
        cfg.pool.endpoints.join(", "),
        cfg.pool.ca_file.display(),
        if cfg.pool.client_cert.is_some() {
            ", mutual TLS"
        } else {
            ""
        },
        cfg.pool.server_name
    )?;
    writeln!(
        out,
        "  check timeout {:?}, failure mode {:?}, batches of up to {} checks, {:?} max delay, {} eager",
        cfg.pool.check_timeout,
        cfg.pool.failure_mode,
        cfg.batch.max_items,
        cfg.batch.max_delay,
        cfg.batch.eager_batches
    )?;
    if let Some(p) = &cfg.proxy {
        let ups: Vec<String> = p.upstreams.iter().map(ToString::to_string).collect();
        writeln!(out, "proxy: {} → {}", p.listen, ups.join(", "))?;
    }
    if let Some(f) = &cfg.forward_auth {
        writeln!(
            out,
            "forward_auth: {} (original URI from {}, host from {})",
            f.listen,
            f.uri_header
                .as_ref()
                .map_or("the request's own path", |h| h.as_str()),
            f.host_header.as_ref().map_or("Host alone", |h| h.as_str())
        )?;
    }
    if let Some(e) = cfg.ext_authz {
        writeln!(
            out,
            "ext_authz: {} (gRPC; authorization removed upstream: {})",
            e.listen, e.remove_authorization
        )?;
    }
    if let Some(a) = cfg.admin {
        writeln!(out, "admin: {a}")?;
    }
    writeln!(out, "routes: {}", cfg.routes.len())?;
    writeln!(
        out,
        "address table: {} methods",
        cfg.addresses.rows().count()
    )?;
    // Written at once; a reader that stops early (`| head -1`) is not an
    // error (println! panicked on the closed pipe).
    match std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // SIGHUP's default action ends the process: an operator's (or logrotate's)
    // habitual reload signal would take a gateway down. It has no reload; the
    // signal is logged once serving ([`ignore_hangups`]) and ignored until then.
    #[cfg(unix)]
    if let Err(e) = signal_hook::flag::register(
        signal_hook::consts::SIGHUP,
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
    ) {
        eprintln!("jotd-gateway: cannot catch SIGHUP (a SIGHUP ends the process): {e}");
    }
    // RUST_LOG, else `info`. A blank one (`Environment=RUST_LOG=`) is unset:
    // as a filter it has no rule and would log nothing, errors included. An
    // unreadable one is said so, not dropped quietly.
    let env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.split(',').all(|d| d.trim().is_empty()));
    let (filter, bad_env) = match env.map(|v| tracing_subscriber::EnvFilter::try_new(&v)) {
        Some(Ok(f)) => (f, None),
        Some(Err(e)) => (
            tracing_subscriber::EnvFilter::new("info"),
            Some(e.to_string()),
        ),
        None => (tracing_subscriber::EnvFilter::new("info"), None),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not into journald or a file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(e) = bad_env {
        tracing::warn!(
            error = %e.escape_default(),
            "RUST_LOG is not a valid filter; logging at info"
        );
    }
    let result = match cli.cmd {
        Cmd::Config {
            cmd: ConfigCmd::Check { config },
        } => Config::load(&config)
            .map_err(anyhow::Error::from)
            .and_then(|c| check(&c)),
        Cmd::Serve {
            config,
            dev,
            dev_dir,
            upstream,
        } => {
            let cfg = match (config, dev) {
                (Some(f), false) => Config::load(&f).map_err(anyhow::Error::from),
                (None, true) => dev_config(&dev_dir, &upstream),
                _ => Err(anyhow::anyhow!("give --config FILE, or --dev")),
            };
            cfg.and_then(serve)
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jotd-gateway: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve(cfg: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
            )?
            .install_recorder()?;
        metrics::describe_counter!(
            "jotd_gateway_checks_total",
            "Checks (one per JSON-RPC call, or per auth subrequest without a body), by door and outcome (the jotd reason, fail_open, unavailable)"
        );
        metrics::describe_counter!(
            "jotd_gateway_requests_total",
            "HTTP requests answered, by door and status"
        );
        metrics::describe_histogram!(
            "jotd_gateway_upstream_seconds",
            "Time for the upstream node's answer"
        );
        metrics::describe_counter!(
            "jotd_gateway_upstream_errors_total",
            "Upstream requests that failed, by kind (connect, timeout, request, too_large, body, bad_answer)"
        );
        metrics::describe_counter!(
            "jotd_gateway_connections_refused_total",
            "Connections closed at once because a listener had max_connections open and no address held two more than the newcomer's (the admin listener: 64, each from another address and younger than 1 s)"
        );
        metrics::describe_counter!(
            "jotd_gateway_connections_closed_for_room_total",
            "Connections closed to make room for a new one: at a door's max_connections the oldest idle one of an address holding two more than the newcomer's; at the admin listener's 64 the oldest of the address holding the most"
        );
        let render: jotd_gateway::Render = Arc::new(move || handle.render());
        // Listening for SIGHUP before "serving" is logged: a SIGHUP after
        // that line is always logged and ignored, never taken by the
        // start-up flag alone.
        #[cfg(unix)]
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let gw = jotd_gateway::start(&cfg, Some(render)).await?;
        #[cfg(unix)]
        tokio::spawn(ignore_hangups(hup));
        tracing::info!(
            proxy = ?gw.proxy,
            forward_auth = ?gw.forward_auth,
            ext_authz = ?gw.ext_authz,
            admin = ?gw.admin,
            pool = ?cfg.pool.endpoints,
            "jotd-gateway serving"
        );

        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let signal = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal,
            "draining (a second SIGTERM or SIGINT exits at once, cutting off requests in flight)"
        );
        // A signal within a second of the first is the same request twice
        // (Ctrl-C to a process group whose wrapper forwards SIGTERM).
        let first = tokio::time::Instant::now();
        tokio::spawn(async move {
            let again = loop {
                let again = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                if first.elapsed() >= std::time::Duration::from_secs(1) {
                    break again;
                }
            };
            tracing::error!(
                signal = again,
                "second stop signal: exiting without finishing the drain"
            );
            std::process::exit(1);
        });
        gw.drain().await;
        tracing::info!("drained");
        Ok(())
    })
}

/// Logs each SIGHUP: the gateway reads its config once (restart it to apply a
/// change), and says so rather than dying of the signal's default action.
#[cfg(unix)]
async fn ignore_hangups(mut hup: tokio::signal::unix::Signal) {
    while hup.recv().await.is_some() {
        tracing::warn!(
            "SIGHUP ignored: jotd-gateway does not reload its config; restart it to apply a change"
        );
    }
}
