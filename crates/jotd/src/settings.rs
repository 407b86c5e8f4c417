//! The config file has one owner, this binary: it is read and parsed once
//! (per start or reload) into the daemon's typed sections (`[server]`,
//! `[verify]`, `[admin]`, `[log]`, `[jwks_fetch]`) and the keys section
//! (`max_keys_per_tenant`, `max_jwks_keys`, `denylist_file`, `[[tenant]]`),
//! which goes to jotd-keys as a typed [`jotd_keys::KeysSection`] (jotd-keys
//! knows nothing of the daemon's sections). Unknown keys anywhere and bad
//! values are errors with file, line and key.
//!
//! ```toml
//! [server]
//! listen = "0.0.0.0:4433"
//! cert_file = "tls/server.pem"        # chain, PEM
//! key_file = "tls/server.key"         # PKCS#8, PKCS#1 or SEC1 PEM
//! client_ca_file = "tls/clients.pem"  # optional: mutual TLS
//! max_connections = 1024
//! max_streams_per_connection = 256
//! max_tokens_in_flight = 65536
//! max_batch_items = 4096
//! max_frame_bytes = 4194304
//! overload_wait_ms = 250
//! max_request_buffer_bytes = 134217728  # requests not yet decided, server-wide
//! request_timeout_ms = 10000          # a request must arrive whole in this time
//! write_timeout_ms = 10000            # a client must read its answer in this time
//! refetch_hold_ms = 1000              # unknown kids wait this long for a JWKS refetch
//! handshake_timeout_ms = 5000
//! max_handshakes = 1024
//! max_handshakes_per_address = 64
//! ipv6_share_prefix = 64              # an IPv6 /64 is one source for the shares
//! retry_after_handshakes = 32         # QUIC Retry for unvalidated addresses past this
//! idle_timeout_s = 30
//! keep_alive_s = 0                    # server pings; 0: off (clients keep alive)
//! drain_timeout_s = 10
//! io_threads = 0                      # 0: one per 4 cores, at least 1
//! watch_interval_s = 2                # 0: reload on SIGHUP only
//!
//! [verify]
//! threads = 0                         # 0: one per core
//! max_token_bytes = 8192
//! chunk_size = 16
//! cache = true
//! cache_entries = 100000
//! cache_bytes = 67108864
//! cache_max_ttl_s = 3600
//!
//! [admin]
//! listen = "127.0.0.1:9464"           # "off" disables it
//! tenant_labels = ["acme", "globex"]  # optional: per-tenant token counts for
//!                                     # these tenants only (at most 256)
//!
//! [log]
//! format = "text"                     # or "json"
//! level = "info"                      # RUST_LOG overrides
//!
//! [jwks_fetch]
//! timeout_s = 10
//! max_bytes = 524288
//! refetch_interval_s = 30
//! min_refresh_s = 10
//! max_stale_s = 86400                 # drop keys this old once a fetch fails (absent: keep)
//! extra_ca_file = "idp-ca.pem"
//! ```

use jotd_core::{CacheConfig, EngineConfig};
use jotd_keys::{ConfigError, FetchConfig, KeysConfig, KeysSection};
use jotd_transport::{HARD_MAX_FRAME_BYTES, HARD_MAX_ITEMS, Limits, ServerOptions, TenantWatch};
use serde::Deserialize;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The largest `[verify] cache_entries`: 16M entries (the map is sized for them at start).
const MAX_CACHE_ENTRIES: usize = 1 << 24;
/// The largest `[verify] cache_bytes`: 64 GiB.
const MAX_CACHE_BYTES: usize = 64 << 30;
/// The longest `[verify] cache_max_ttl_s`: one day.
const MAX_CACHE_TTL_S: u64 = 86_400;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    // The keys section (jotd-keys validates it).
    #[serde(default = "default_max_keys")]
    max_keys_per_tenant: usize,
    #[serde(default = "default_max_jwks_keys")]
    max_jwks_keys: usize,
    #[serde(default)]
    denylist_file: Option<toml::Spanned<String>>,
    #[serde(default)]
    tenant: Vec<toml::Spanned<jotd_keys::RawTenant>>,
    // The daemon's sections.
    #[serde(default)]
    server: Option<RawServer>,
    #[serde(default)]
    verify: Option<RawVerify>,
    #[serde(default)]
    admin: Option<RawAdmin>,
    #[serde(default)]
    log: Option<RawLog>,
    #[serde(default)]
    jwks_fetch: Option<RawFetch>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_ca_file: Option<String>,
    max_connections: Option<usize>,
    max_streams_per_connection: Option<u32>,
    max_tokens_in_flight: Option<usize>,
    max_batch_items: Option<usize>,
    max_frame_bytes: Option<usize>,
    overload_wait_ms: Option<u64>,
    max_request_buffer_bytes: Option<usize>,
    request_timeout_ms: Option<u64>,
    write_timeout_ms: Option<u64>,
    refetch_hold_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    max_handshakes: Option<usize>,
    max_handshakes_per_address: Option<usize>,
    ipv6_share_prefix: Option<u64>,
    retry_after_handshakes: Option<usize>,
    idle_timeout_s: Option<u64>,
    keep_alive_s: Option<u64>,
    drain_timeout_s: Option<u64>,
    io_threads: Option<usize>,
    watch_interval_s: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVerify {
    threads: Option<usize>,
    max_token_bytes: Option<usize>,
    chunk_size: Option<usize>,
    cache: Option<bool>,
    cache_entries: Option<usize>,
    cache_bytes: Option<usize>,
    cache_max_ttl_s: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    tenant_labels: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFetch {
    timeout_s: Option<u64>,
    max_bytes: Option<usize>,
    refetch_interval_s: Option<u64>,
    min_refresh_s: Option<u64>,
    max_stale_s: Option<u64>,
    extra_ca_file: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// The daemon's settings, validated.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) server: ServerOptions,
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) client_ca_file: Option<PathBuf>,
    pub(crate) io_threads: usize,
    pub(crate) watch_interval: Option<Duration>,
    pub(crate) verify_threads: usize,
    /// `[verify]`'s engine part; read it through [`Settings::engine_config`].
    engine: EngineConfig,
    pub(crate) admin: Option<SocketAddr>,
    pub(crate) log_format: LogFormat,
    pub(crate) log_level: String,
    pub(crate) fetch: FetchConfig,
    pub(crate) fetch_extra_ca_file: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server: ServerOptions::default(),
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            io_threads: 0,
            watch_interval: Some(Duration::from_secs(2)),
            verify_threads: 0,
            engine: EngineConfig::default(),
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            fetch: FetchConfig::default(),
            fetch_extra_ca_file: None,
        }
    }
}

impl Settings {
    /// The engine configuration (`[verify]` max_token_bytes, chunk_size, cache)
    /// of every command that verifies or reports on verifying: `serve`,
    /// `check` and `config check` all build it here, from the same file, so the
    /// offline answer is the daemon's answer.
    pub(crate) const fn engine_config(&self) -> EngineConfig {
        self.engine
    }
}

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn line_of(&self, key: &str, section: &str) -> Option<usize> {
        // Where the TOML parser itself found `key` of `[section]`: dotted keys,
        // inline tables and commented headers locate too.
        jotd_keys::line_of_key(self.text, &[section, key])
    }

    fn err(&self, section: &str, key: &str, message: impl std::fmt::Display) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: self.line_of(key, section),
            key: format!("{section}.{key}"),
            message: message.to_string(),
        }
    }

    fn path(&self, named: &str) -> PathBuf {
        let p = Path::new(named);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.file.parent().unwrap_or(Path::new(".")).join(p)
        }
    }
}

fn positive(
    ctx: &Ctx<'_>,
    section: &str,
    key: &str,
    v: Option<usize>,
    default: usize,
) -> Result<usize, ConfigError> {
    match v {
        Some(0) => Err(ctx.err(section, key, "must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

/// A `[server]` count that must be at least 1.
fn non_zero(
    ctx: &Ctx<'_>,
    key: &str,
    v: Option<usize>,
    default: NonZeroUsize,
) -> Result<NonZeroUsize, ConfigError> {
    match v {
        None => Ok(default),
        Some(n) => NonZeroUsize::new(n).ok_or_else(|| ctx.err("server", key, "must be at least 1")),
    }
}

fn addr(ctx: &Ctx<'_>, section: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|_| {
        ctx.err(
            section,
            "listen",
            format_args!("`{v}` is not an IP:port address (e.g. 127.0.0.1:4433 or [::]:4433)"),
        )
    })
}

const fn default_max_keys() -> usize {
    jotd_keys::DEFAULT_MAX_KEYS_PER_TENANT
}

const fn default_max_jwks_keys() -> usize {
    jotd_keys::DEFAULT_MAX_JWKS_KEYS
}

/// Parses `text` (the config file `file`) once: the daemon's settings, and
/// the keys section for jotd-keys.
pub(crate) fn parse(file: &Path, text: &str) -> Result<(Settings, KeysSection), ConfigError> {
    let mut raw: RawFile =
        toml::from_str(text).map_err(|e| jotd_keys::toml_error(file, text, &e))?;
    let keys = KeysSection {
        max_keys_per_tenant: raw.max_keys_per_tenant,
        max_jwks_keys: raw.max_jwks_keys,
        denylist_file: raw.denylist_file.take(),
        tenant: std::mem::take(&mut raw.tenant),
    };
    Ok((settings(file, text, raw)?, keys))
}

fn settings(file: &Path, text: &str, raw: RawFile) -> Result<Settings, ConfigError> {
    let ctx = Ctx { file, text };
    let mut s = Settings::default();
    if let Some(r) = raw.server {
        let d = ServerOptions::default();
        if let Some(l) = &r.listen {
            s.server.listen = addr(&ctx, "server", l)?;
        }
        s.cert_file = r.cert_file.as_deref().map(|p| ctx.path(p));
        s.key_file = r.key_file.as_deref().map(|p| ctx.path(p));
        s.client_ca_file = r.client_ca_file.as_deref().map(|p| ctx.path(p));
        if s.cert_file.is_some() != s.key_file.is_some() {
            let missing = if s.cert_file.is_some() {
                "key_file"
            } else {
                "cert_file"
            };
            return Err(ctx.err("server", missing, "cert_file and key_file go together"));
        }
        if s.client_ca_file.is_some() && s.cert_file.is_none() {
            // Mutual TLS without a server certificate of the file's own: a file
            // that `jotd serve` refuses is refused by `config check` too.
            return Err(ctx.err(
                "server",
                "client_ca_file",
                "mutual TLS needs the server's cert_file and key_file too",
            ));
        }
        s.server.max_connections = non_zero(
            &ctx,
            "max_connections",
            r.max_connections,
            d.max_connections,
        )?;
        s.server.max_streams_per_connection = match r.max_streams_per_connection {
            None => d.max_streams_per_connection,
            Some(v) => std::num::NonZeroU32::new(v).ok_or_else(|| {
                ctx.err("server", "max_streams_per_connection", "must be at least 1")
            })?,
        };
        s.server.max_tokens_in_flight = non_zero(
            &ctx,
            "max_tokens_in_flight",
            r.max_tokens_in_flight,
            d.max_tokens_in_flight,
        )?;
        let items = positive(
            &ctx,
            "server",
            "max_batch_items",
            r.max_batch_items,
            d.limits.max_items,
        )?;
        let frame = positive(
            &ctx,
            "server",
            "max_frame_bytes",
            r.max_frame_bytes,
            d.limits.max_frame_bytes,
        )?;
        if frame > HARD_MAX_FRAME_BYTES {
            return Err(ctx.err(
                "server",
                "max_frame_bytes",
                format_args!("at most {HARD_MAX_FRAME_BYTES}"),
            ));
        }
        if items > HARD_MAX_ITEMS {
            return Err(ctx.err(
                "server",
                "max_batch_items",
                format_args!("at most {HARD_MAX_ITEMS}"),
            ));
        }
        if items > s.server.max_tokens_in_flight.get() {
            return Err(ctx.err(
                "server",
                "max_batch_items",
                "must not exceed max_tokens_in_flight (such a batch could never run)",
            ));
        }
        s.server.limits = Limits {
            max_frame_bytes: frame,
            max_items: items,
        };
        // Every [server] time within a range: a value meant in µs (or
        // u64::MAX) let half-sent requests hold the request buffer for
        // hours, and a zero drain cut every batch in flight at SIGTERM.
        let within = |key: &str, v: u64, range: std::ops::RangeInclusive<u64>, unit: &str| {
            if range.contains(&v) {
                Ok(v)
            } else {
                Err(ctx.err(
                    "server",
                    key,
                    format_args!("{v}: must be {} to {} {unit}", range.start(), range.end()),
                ))
            }
        };
        if let Some(ms) = r.overload_wait_ms {
            s.server.overload_wait =
                Duration::from_millis(within("overload_wait_ms", ms, 0..=60_000, "ms")?);
        }
        if let Some(v) = r.idle_timeout_s {
            s.server.idle_timeout =
                Duration::from_secs(within("idle_timeout_s", v, 1..=86_400, "seconds")?);
        }
        if let Some(v) = r.keep_alive_s {
            if Some(v) >= r.idle_timeout_s.or(Some(d.idle_timeout.as_secs())) {
                return Err(ctx.err(
                    "server",
                    "keep_alive_s",
                    "must be below idle_timeout_s (0: off)",
                ));
            }
            s.server.keep_alive = Duration::from_secs(v);
        }
        if let Some(v) = r.drain_timeout_s {
            s.server.drain_timeout =
                Duration::from_secs(within("drain_timeout_s", v, 1..=3_600, "seconds")?);
        }
        for (key, v, field) in [
            (
                "request_timeout_ms",
                r.request_timeout_ms,
                &mut s.server.request_timeout,
            ),
            (
                "write_timeout_ms",
                r.write_timeout_ms,
                &mut s.server.write_timeout,
            ),
            (
                "refetch_hold_ms",
                r.refetch_hold_ms,
                &mut s.server.refetch_hold,
            ),
            (
                "handshake_timeout_ms",
                r.handshake_timeout_ms,
                &mut s.server.handshake_timeout,
            ),
        ] {
            if let Some(ms) = v {
                *field = Duration::from_millis(within(key, ms, 1..=3_600_000, "ms")?);
            }
        }
        s.server.max_handshakes =
            non_zero(&ctx, "max_handshakes", r.max_handshakes, d.max_handshakes)?;
        s.server.max_handshakes_per_address = non_zero(
            &ctx,
            "max_handshakes_per_address",
            r.max_handshakes_per_address,
            d.max_handshakes_per_address,
        )?;
        match r.ipv6_share_prefix {
            None => {}
            Some(v @ 1..=128) => s.server.ipv6_share_prefix = u8::try_from(v).unwrap_or(128),
            Some(v) => {
                return Err(ctx.err(
                    "server",
                    "ipv6_share_prefix",
                    format_args!("{v}: must be 1 to 128 (leading bits of an IPv6 address)"),
                ));
            }
        }
        if let Some(v) = r.retry_after_handshakes {
            s.server.retry_after_handshakes = v;
        }
        s.server.max_request_buffer_bytes = non_zero(
            &ctx,
            "max_request_buffer_bytes",
            r.max_request_buffer_bytes,
            d.max_request_buffer_bytes,
        )?;
        let floor = jotd_transport::min_request_buffer_bytes(&s.server.limits);
        if s.server.max_request_buffer_bytes.get() < floor {
            return Err(ctx.err(
                "server",
                "max_request_buffer_bytes",
                format_args!(
                    "{}: must hold one full-size request while it is decided, at least \
                     {floor} here (2 × (max_frame_bytes + 4), plus the decoded form of \
                     max_batch_items items and of the protocol's most addresses, and the \
                     stream's own 2 KiB)",
                    s.server.max_request_buffer_bytes
                ),
            ));
        }
        if let Err(e) = s.server.validate() {
            // The library names its fields; the file names them with their unit.
            let key = match e.key {
                "idle_timeout" | "keep_alive" => format!("{}_s", e.key),
                "request_timeout" | "write_timeout" | "refetch_hold" | "handshake_timeout" => {
                    format!("{}_ms", e.key)
                }
                other => other.to_owned(),
            };
            return Err(ctx.err("server", &key, e.message));
        }
        s.io_threads = r.io_threads.unwrap_or(0);
        if s.io_threads > 256 {
            return Err(ctx.err("server", "io_threads", "must be at most 256 (0: automatic)"));
        }
        if let Some(v) = r.watch_interval_s {
            if v > 86_400 {
                return Err(ctx.err(
                    "server",
                    "watch_interval_s",
                    format_args!("{v}: at most 86400 seconds (0: SIGHUP only)"),
                ));
            }
            s.watch_interval = (v > 0).then(|| Duration::from_secs(v));
        }
    }
    if let Some(r) = raw.verify {
        s.verify_threads = r.threads.unwrap_or(0);
        if s.verify_threads > 1024 {
            return Err(ctx.err(
                "verify",
                "threads",
                "must be at most 1024 (0: one per core)",
            ));
        }
        if let Some(v) = r.max_token_bytes {
            s.engine.max_token_bytes = NonZeroUsize::new(v)
                .ok_or_else(|| ctx.err("verify", "max_token_bytes", "must be at least 1"))?;
        }
        if let Some(v) = r.chunk_size {
            s.engine.chunk_size = NonZeroUsize::new(v)
                .ok_or_else(|| ctx.err("verify", "chunk_size", "must be at least 1"))?;
        }
        if r.cache == Some(false) {
            s.engine.cache = None;
        } else {
            let mut c = CacheConfig::default();
            // The map is sized for its entries up front: a bound past any machine's
            // memory is refused here, not met by an allocation failure at start.
            if let Some(v) = r.cache_entries {
                if v > MAX_CACHE_ENTRIES {
                    return Err(ctx.err(
                        "verify",
                        "cache_entries",
                        format_args!("{v}: at most {MAX_CACHE_ENTRIES}"),
                    ));
                }
                c.max_entries = NonZeroUsize::new(v).ok_or_else(|| {
                    ctx.err(
                        "verify",
                        "cache_entries",
                        "must be at least 1 (set cache = false to disable)",
                    )
                })?;
            }
            if let Some(v) = r.cache_bytes {
                if v > MAX_CACHE_BYTES {
                    return Err(ctx.err(
                        "verify",
                        "cache_bytes",
                        format_args!("{v}: at most {MAX_CACHE_BYTES} (64 GiB)"),
                    ));
                }
                c.max_bytes = NonZeroUsize::new(v).ok_or_else(|| {
                    ctx.err(
                        "verify",
                        "cache_bytes",
                        "must be at least 1 (set cache = false to disable)",
                    )
                })?;
            }
            if let Some(v) = r.cache_max_ttl_s {
                if !(1..=MAX_CACHE_TTL_S).contains(&v) {
                    return Err(ctx.err(
                        "verify",
                        "cache_max_ttl_s",
                        format_args!(
                            "{v}: 1 to {MAX_CACHE_TTL_S} seconds (set cache = false to disable)"
                        ),
                    ));
                }
                c.max_ttl = Duration::from_secs(v);
            }
            s.engine.cache = Some(c);
        }
    }
    if let Some(r) = raw.admin {
        if let Some(l) = r.listen {
            s.admin = if l == "off" {
                None
            } else {
                Some(addr(&ctx, "admin", &l)?)
            };
        }
        if let Some(names) = r.tenant_labels
            && !names.is_empty()
        {
            let watch =
                TenantWatch::new(names).map_err(|e| ctx.err("admin", "tenant_labels", e))?;
            s.server.tenant_watch = Some(Arc::new(watch));
        }
    }
    if let Some(r) = raw.log {
        if let Some(f) = r.format {
            s.log_format = match f.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(ctx.err(
                        "log",
                        "format",
                        format_args!("`{other}`: expected \"text\" or \"json\""),
                    ));
                }
            };
        }
        if let Some(l) = r.level {
            // A blank level parses as a filter of no rule, which logs nothing.
            if crate::logging::blank_filter(&l)
                || tracing_subscriber::EnvFilter::try_new(&l).is_err()
            {
                return Err(ctx.err(
                    "log",
                    "level",
                    format_args!("`{l}`: expected error, warn, info, debug, trace or a filter like jotd=debug"),
                ));
            }
            s.log_level = l;
        }
    }
    if let Some(r) = raw.jwks_fetch {
        // Every duration within a range: 0 would turn a rate limit into a busy loop
        // against the IdP, and a value near u64::MAX overflows when added to a clock.
        let secs = |key: &str, v: u64, max: u64| {
            if (1..=max).contains(&v) {
                Ok(Duration::from_secs(v))
            } else {
                Err(ctx.err(
                    "jwks_fetch",
                    key,
                    format_args!("{v}: must be 1 to {max} seconds"),
                ))
            }
        };
        if let Some(v) = r.timeout_s {
            s.fetch.timeout = secs("timeout_s", v, 600)?;
        }
        if let Some(v) = r.max_bytes {
            s.fetch.max_bytes = positive(&ctx, "jwks_fetch", "max_bytes", Some(v), 0)?;
            if s.fetch.max_bytes > 64 << 20 {
                return Err(ctx.err(
                    "jwks_fetch",
                    "max_bytes",
                    format_args!("{v}: must be at most 67108864 (64 MiB)"),
                ));
            }
        }
        if let Some(v) = r.refetch_interval_s {
            s.fetch.refetch_interval = secs("refetch_interval_s", v, 86_400)?;
        }
        if let Some(v) = r.min_refresh_s {
            s.fetch.min_refresh = secs("min_refresh_s", v, 86_400)?;
        }
        if let Some(v) = r.max_stale_s {
            // At least a minute: once keys are this old a fetch is due, so a
            // few seconds would poll the identity provider that often.
            if !(60..=30 * 86_400).contains(&v) {
                return Err(ctx.err(
                    "jwks_fetch",
                    "max_stale_s",
                    format_args!("{v}: must be 60 to 2592000 seconds (30 days)"),
                ));
            }
            s.fetch.max_stale = Some(Duration::from_secs(v));
            if s.fetch.max_stale < Some(s.fetch.min_refresh) {
                // Keys would pass max_stale before a refetch is allowed.
                return Err(ctx.err(
                    "jwks_fetch",
                    "max_stale_s",
                    format_args!(
                        "{v}: must be at least min_refresh_s ({})",
                        s.fetch.min_refresh.as_secs()
                    ),
                ));
            }
        }
        s.fetch_extra_ca_file = r.extra_ca_file.as_deref().map(|p| ctx.path(p));
    }
    Ok(s)
}

/// The `[admin] tenant_labels` that name no configured tenant: a typo there
/// showed as a series stuck at 0. Warned about (a reload may add the tenant
/// later), never refused.
pub(crate) fn unknown_tenant_labels(settings: &Settings, keys: &KeysConfig) -> Vec<String> {
    settings
        .server
        .tenant_watch
        .as_ref()
        .map(|w| {
            w.names()
                .iter()
                .filter(|n| !keys.tenants.iter().any(|t| &*t.tenant.id == n.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// The denylist entries whose `until` has passed, one line each (at most 10,
/// then a count): past the leeway they revoke nothing, which a mistyped `until` (a digit
/// short, milliseconds' digits cut) does silently. Warned about at start, at
/// each reload and by `config check`, never refused (entries lapse as time
/// goes by).
pub(crate) fn lapsed_revocations(keys: &KeysConfig) -> Vec<String> {
    const SHOWN: usize = 10;
    let Some(file) = &keys.denylist_file else {
        return Vec::new();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let lapsed = keys.denylists.lapsed(jotd_core::UnixTime(now));
    let mut lines: Vec<String> = lapsed
        .iter()
        .take(SHOWN)
        .map(|&(line, until)| {
            format!(
                "{}:{line}: revoke until = {until} is {} s in the past: once the tenant's leeway_s has gone by too, the entry revokes nothing (until is Unix seconds, usually the token's exp)",
                file.display(),
                now - until
            )
        })
        .collect();
    if lapsed.len() > SHOWN {
        lines.push(format!(
            "{}: {} more lapsed revoke entries",
            file.display(),
            lapsed.len() - SHOWN
        ));
    }
    lines
}

/// Reads and parses the daemon's sections of a config file.
/// Reads the config file once and validates all of it: the daemon's
/// settings, and the tenants and keys (with every file they name).
pub(crate) fn load(file: &Path) -> Result<(Settings, KeysConfig), ConfigError> {
    let read = |p: &Path| jotd_transport::files::read_file(p);
    let text = jotd_keys::read_text(file, &read)?;
    let (settings, keys) = parse(file, &text)?;
    let keys = jotd_keys::load_section(file, &text, &keys, &read)?;
    Ok((settings, keys))
}

/// The JWKS fetcher's settings as `serve` uses them, `extra_ca_file` read
/// and every setting checked as the fetcher checks them ([`jotd_keys::check_fetch_config`]),
/// with the number of extra CA certificates: one reading for `serve`,
/// `config check` and each reload (a reload took an unreadable or garbage
/// CA file as a change for the next restart, which then failed to start).
///
/// # Errors
/// The file cannot be read or holds no usable certificate, named by key.
pub(crate) fn fetch_config(
    s: &Settings,
    file: &Path,
) -> Result<(jotd_keys::FetchConfig, usize), ConfigError> {
    let error = |message: String| ConfigError {
        file: s
            .fetch_extra_ca_file
            .clone()
            .unwrap_or_else(|| file.to_owned()),
        line: None,
        key: "jwks_fetch.extra_ca_file".to_owned(),
        message,
    };
    let mut fetch = s.fetch.clone();
    if let Some(p) = &s.fetch_extra_ca_file {
        fetch.extra_roots_pem = Some(
            jotd_transport::files::read_file(p).map_err(|e| error(format!("cannot read: {e}")))?,
        );
    }
    let roots = jotd_keys::check_fetch_config(&fetch).map_err(|e| error(e.to_string()))?;
    Ok((fetch, roots))
}

/// The server's TLS from the files `[server]` names (certificate chain, key,
/// client CA): read at start, and again at each reload, which applies them
/// to new handshakes (a renewed certificate, a CA taken out of
/// `client_ca_file`).
pub(crate) fn server_tls(s: &Settings, file: &Path) -> Result<rustls::ServerConfig, ConfigError> {
    let error = |file: &Path, key: &str, message: String| ConfigError {
        file: file.to_owned(),
        line: None,
        key: key.to_owned(),
        message,
    };
    let (Some(cert), Some(key)) = (&s.cert_file, &s.key_file) else {
        return Err(error(
            file,
            "server.cert_file",
            "server.cert_file and server.key_file are required (jotd serve without --config generates development ones)".into(),
        ));
    };
    let read = |p: &Path, k: &str| {
        jotd_transport::files::read_file(p)
            .map_err(|e| error(p, &format!("server.{k}"), format!("cannot read: {e}")))
    };
    let ca = match &s.client_ca_file {
        Some(p) => Some(read(p, "client_ca_file")?),
        None => None,
    };
    jotd_transport::server_config(
        &read(cert, "cert_file")?,
        &read(key, "key_file")?,
        ca.as_deref(),
    )
    .map_err(|e| {
        // Named by the file it came from (`tls`: the combination).
        let (path, key) = match e.what {
            "cert_file" => (cert.as_path(), "server.cert_file"),
            "key_file" => (key.as_path(), "server.key_file"),
            "client_ca_file" => (
                s.client_ca_file.as_deref().unwrap_or(file),
                "server.client_ca_file",
            ),
            _ => (file, "server"),
        };
        error(path, key, format!("server TLS: {}", e.message))
    })
}

/// The files outside the keys config that a reload watches: the server's TLS
/// files (applied) and the JWKS fetcher's extra CA (read at start only).
pub(crate) fn watched_files(s: &Settings) -> impl Iterator<Item = PathBuf> + '_ {
    [
        &s.cert_file,
        &s.key_file,
        &s.client_ca_file,
        &s.fetch_extra_ca_file,
    ]
    .into_iter()
    .flatten()
    .cloned()
}

/// What a reload runs: the whole file read and validated again (a reload
/// whose daemon sections no longer validate is rejected too), the keys
/// config kept, and the server's TLS files applied through `tls` (set once
/// the server is bound). `running` is the file's settings at start (before
/// command-line overrides): a reload that changes a section it cannot apply
/// says so, naming the sections, instead of a bare "config reloaded" the
/// operator would take for done.
///
/// The loader only reads and checks: what it prepares for the running server
/// (the TLS files, whether client certificates are on, the sections a restart
/// must apply) is applied by [`ServerReload::commit`], which the caller runs
/// once the reload is accepted. A reload the reloader rejects after a good
/// read (a file that kept changing, a later read that failed) applied the
/// new TLS files and logged "config reloaded" while the log said it was
/// rejected and the old tenants served.
pub(crate) fn loader(
    file: &Path,
    running: &Settings,
    tls: Arc<std::sync::OnceLock<jotd_transport::TlsSwitch>>,
) -> (jotd_keys::Loader, Arc<ServerReload>) {
    let file = file.to_owned();
    let running = running.clone();
    let server = Arc::new(ServerReload {
        tls: Arc::clone(&tls),
        mtls_on: std::sync::atomic::AtomicBool::new(running.client_ca_file.is_some()),
        pending: std::sync::Mutex::new(None),
        file: file.clone(),
    });
    let shared = Arc::clone(&server);
    let extra_ca = |s: &Settings| {
        s.fetch_extra_ca_file
            .as_ref()
            .map(|p| jotd_transport::files::read_file(p).ok())
    };
    let extra_ca_at_start = extra_ca(&running);
    let server_reload = Arc::clone(&server);
    let loader: jotd_keys::Loader = Box::new(move || {
        let server = &server_reload;
        // A read that fails leaves nothing to apply.
        *server.pending() = None;
        let (new, mut keys) = load(&file)?;
        // Read and checked as the next start will: a CA file that would
        // stop the daemon from starting rejects the reload now.
        fetch_config(&new, &file)?;
        // Client certificates turned off by a reload (a config-management
        // merge that lost the line) would open the port to any client with
        // no more than an info line: it takes a restart, said so.
        if server.mtls_on.load(std::sync::atomic::Ordering::SeqCst) && new.client_ca_file.is_none()
        {
            return Err(ConfigError {
                file: file.clone(),
                line: None,
                key: "server.client_ca_file".into(),
                message: "removed: a reload does not turn client certificates off (any client \
                          could connect); restart to run without them"
                    .into(),
            });
        }
        let mut sections = restart_needed(&running, &new);
        if !sections.contains(&"jwks_fetch") && extra_ca(&new) != extra_ca_at_start {
            sections.push("jwks_fetch");
        }
        // A TLS file that does not load rejects the reload whole: the old
        // certificate keeps serving.
        let prepared = match tls.get() {
            Some(switch) => {
                let config = server_tls(&new, &file)?;
                Some(switch.prepare(config).map_err(|e| ConfigError {
                    file: file.clone(),
                    line: None,
                    key: "server".into(),
                    message: e.to_string(),
                })?)
            }
            None => None,
        };
        keys.files.extend(watched_files(&new));
        *server.pending() = Some(PendingServer {
            tls: prepared,
            client_ca: new.client_ca_file.is_some(),
            sections,
        });
        Ok(keys)
    });
    (loader, shared)
}

/// What the last good read of a reload prepared for the running server.
struct PendingServer {
    tls: Option<jotd_transport::PreparedTls>,
    client_ca: bool,
    sections: Vec<&'static str>,
}

/// The running server's part of a reload (see [`loader`]).
pub(crate) struct ServerReload {
    tls: Arc<std::sync::OnceLock<jotd_transport::TlsSwitch>>,
    /// Whether client certificates are required now: at start, or since a
    /// reload applied a `client_ca_file` (the settings at start alone missed
    /// start-without, reload-with, reload-without).
    mtls_on: std::sync::atomic::AtomicBool,
    pending: std::sync::Mutex<Option<PendingServer>>,
    file: PathBuf,
}

impl ServerReload {
    fn pending(&self) -> std::sync::MutexGuard<'_, Option<PendingServer>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies what the reload just accepted read: its TLS files, its
    /// client-certificate setting, and the warning for sections only a
    /// restart applies. Call it only after [`jotd_keys::Reloader::reload`]
    /// (or `reload_if_changed`) returned `Ok`.
    pub(crate) fn commit(&self) {
        let Some(p) = self.pending().take() else {
            return;
        };
        if let (Some(switch), Some(tls)) = (self.tls.get(), p.tls)
            && !switch.apply(tls)
        {
            tracing::info!("draining: the server's TLS files are not applied (no new connections)");
        }
        self.mtls_on
            .store(p.client_ca, std::sync::atomic::Ordering::SeqCst);
        if !p.sections.is_empty() {
            tracing::warn!(
                file = %self.file.display(),
                sections = ?p.sections,
                "config reloaded: tenants, keys, the denylist and the server's TLS files are applied; changes to these sections take effect at the next restart"
            );
        }
    }
}

/// The daemon's sections that differ between two readings of the file: a reload
/// applies none of them.
pub(crate) fn restart_needed(running: &Settings, new: &Settings) -> Vec<&'static str> {
    let sections = |s: &Settings| {
        // `tenant_labels` is read into the server's options but written in [admin].
        let mut server = s.server.clone();
        let watch = server.tenant_watch.take();
        [
            (
                "server",
                format!(
                    "{:?}",
                    // The TLS files are not here: a reload applies them.
                    (&server, s.io_threads, s.watch_interval)
                ),
            ),
            ("verify", format!("{:?}", (s.verify_threads, &s.engine))),
            ("admin", format!("{:?}", (&s.admin, watch))),
            ("log", format!("{:?}", (s.log_format, &s.log_level))),
            (
                "jwks_fetch",
                format!("{:?}", (&s.fetch, &s.fetch_extra_ca_file)),
            ),
        ]
    };
    sections(running)
        .into_iter()
        .zip(sections(new))
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, _)| a.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Settings, String> {
        parse(Path::new("/etc/jotd/jotd.toml"), text)
            .map(|(s, _)| s)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_without_sections() {
        let s = p("[[tenant]]\nid = \"a\"\n").unwrap();
        assert_eq!(s.server.listen, "127.0.0.1:4433".parse().unwrap());
        assert_eq!(s.admin, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(s.engine.cache.is_some());
        assert_eq!(s.io_threads, 0, "automatic");
    }

    #[test]
    fn values_and_relative_paths() {
        let s = p(r#"
[server]
listen = "[::]:5000"
cert_file = "tls/s.pem"
key_file = "/abs/s.key"
max_tokens_in_flight = 5000
max_batch_items = 100
[verify]
threads = 3
cache = false
[admin]
listen = "off"
[log]
format = "json"
level = "jotd=debug"
"#)
        .unwrap();
        assert_eq!(s.server.listen, "[::]:5000".parse().unwrap());
        assert_eq!(s.cert_file.unwrap(), Path::new("/etc/jotd/tls/s.pem"));
        assert_eq!(s.key_file.unwrap(), Path::new("/abs/s.key"));
        assert_eq!(s.server.limits.max_items, 100);
        assert_eq!(s.verify_threads, 3);
        assert!(s.engine.cache.is_none());
        assert!(s.admin.is_none());
        assert_eq!(s.log_format, LogFormat::Json);
    }

    #[test]
    fn deploy_examples_have_valid_daemon_sections() {
        for (name, text) in [
            (
                "infura-allowlist.toml",
                include_str!("../../../deploy/examples/infura-allowlist.toml"),
            ),
            (
                "besu-permissions.toml",
                include_str!("../../../deploy/examples/besu-permissions.toml"),
            ),
            (
                "jwks-tenant.toml",
                include_str!("../../../deploy/examples/jwks-tenant.toml"),
            ),
        ] {
            let (s, _) = parse(Path::new(name), text).unwrap_or_else(|e| panic!("{e}"));
            if name == "infura-allowlist.toml" {
                assert_eq!(s.server.tenant_watch.unwrap().names().len(), 1);
            }
        }
    }

    #[test]
    fn one_parse_gives_the_daemon_its_sections_and_jotd_keys_its_own() {
        let text = "max_keys_per_tenant = 2\n[server]\nmax_connections = 7\n[[tenant]]\nid = \"a\"\n[[tenant]]\nid = \"b\"\n";
        let (s, keys) = parse(Path::new("/etc/jotd/jotd.toml"), text).unwrap();
        assert_eq!(s.server.max_connections.get(), 7);
        assert_eq!(keys.max_keys_per_tenant, 2);
        assert_eq!(s.server.ipv6_share_prefix, 64, "the default");
        let (s, _) = parse(
            Path::new("/etc/jotd/jotd.toml"),
            "[server]\nipv6_share_prefix = 48\n",
        )
        .unwrap();
        assert_eq!(s.server.ipv6_share_prefix, 48);
        assert_eq!(keys.tenant.len(), 2);
        // A typo at the top level is the daemon's to refuse, with its line.
        let e = p("max_keys_per_tenant = 2\ntenants = 1\n").unwrap_err();
        assert!(
            e.starts_with("/etc/jotd/jotd.toml:2: tenants:")
                && e.contains("unknown field `tenants`"),
            "{e}"
        );
    }

    #[test]
    fn values_refused_after_parsing_carry_their_line_however_the_table_is_written() {
        // Commented headers, dotted keys, inline tables and quoted keys: the line
        // comes from the TOML parser, not from a scan of `key =` under `[section]`.
        for (text, line, key) in [
            (
                "# top\n[server] # the QUIC side\nmax_connections = 0\n",
                3,
                "server.max_connections",
            ),
            ("\n\nserver.keep_alive_s = 30\n", 3, "server.keep_alive_s"),
            (
                "[server]\nmax_connections = 2\nipv6_share_prefix = 129\n",
                3,
                "server.ipv6_share_prefix",
            ),
            (
                "[server]\n\nipv6_share_prefix = 0\n",
                3,
                "server.ipv6_share_prefix",
            ),
            (
                "verify = { threads = 1,\n  chunk_size = 0 }\n",
                2,
                "verify.chunk_size",
            ),
            ("[ log ]\n\"format\" = \"xml\"\n", 2, "log.format"),
            (
                "[jwks_fetch]\n# timeout_s = 5\ntimeout_s = 0\n",
                3,
                "jwks_fetch.timeout_s",
            ),
        ] {
            let e = p(text).unwrap_err();
            assert!(
                e.starts_with(&format!("/etc/jotd/jotd.toml:{line}: {key}:")),
                "{text:?}: {e}"
            );
        }
        // The keys section's bounds have their line too.
        for (text, key) in [
            ("\nmax_keys_per_tenant = 0\n", "max_keys_per_tenant"),
            ("\nmax_jwks_keys = 0\n", "max_jwks_keys"),
            ("\nmax_keys_per_tenant = 5000\n", "max_keys_per_tenant"),
        ] {
            let (_, keys) = parse(Path::new("/etc/jotd/jotd.toml"), text).unwrap();
            let e = jotd_keys::load_section(Path::new("/etc/jotd/jotd.toml"), text, &keys, &|_| {
                Err(std::io::Error::other("no files"))
            })
            .unwrap_err()
            .to_string();
            assert!(
                e.starts_with(&format!("/etc/jotd/jotd.toml:2: {key}:"))
                    && e.contains("must be 1 to 1024"),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn a_reload_reads_the_whole_file_and_refuses_bad_daemon_sections() {
        let dir = tempfile::Builder::new()
            .prefix("jotd-settings-")
            .tempdir()
            .unwrap();
        let file = dir.path().join("jotd.toml");
        let tenant = "[[tenant]]\nid = \"a\"\n[[tenant.key]]\nkid = \"k\"\nalg = \"HS256\"\nsecret = \"0123456789abcdefghijklmnopqrstuv\"\n";
        std::fs::write(&file, format!("[server]\nmax_connections = 7\n{tenant}")).unwrap();
        let (settings, keys) = load(&file).unwrap();
        assert_eq!(
            (settings.server.max_connections.get(), keys.tenants.len()),
            (7, 1)
        );
        let (reload, _) = loader(&file, &settings, Arc::default());
        assert_eq!(reload().unwrap().tenants.len(), 1);
        std::fs::write(&file, format!("[server]\nmax_connections = 0\n{tenant}")).unwrap();
        let e = reload().unwrap_err().to_string();
        assert!(
            e.contains(":2: server.max_connections: must be at least 1"),
            "{e}"
        );
        // The JWKS client's extra CA is read and checked as the next start
        // will: one that start would refuse rejects the reload (it was
        // taken as a change for the restart, which then failed).
        let ca = dir.path().join("idp-ca.pem");
        std::fs::write(&ca, jotd_transport::DevPki::generate().unwrap().ca_pem).unwrap();
        let with_ca = format!("[jwks_fetch]\nextra_ca_file = \"idp-ca.pem\"\n{tenant}");
        std::fs::write(&file, &with_ca).unwrap();
        assert_eq!(reload().unwrap().tenants.len(), 1);
        for (content, want) in [(Some("garbage"), "certificate"), (None, "cannot read")] {
            match content {
                Some(c) => std::fs::write(&ca, c).unwrap(),
                None => std::fs::remove_file(&ca).unwrap(),
            }
            let e = reload().unwrap_err().to_string();
            assert!(
                e.contains("jwks_fetch.extra_ca_file") && e.to_lowercase().contains(want),
                "{e}"
            );
        }
        // Mutual TLS at start: a reload that drops client_ca_file is
        // refused (it would let any client connect); one that keeps it is
        // applied.
        let pki = jotd_transport::DevPki::generate().unwrap();
        for (name, pem) in [
            ("s.pem", &pki.server_cert_pem),
            ("s.key", &pki.server_key_pem),
            ("clients.pem", &pki.ca_pem),
        ] {
            std::fs::write(dir.path().join(name), pem).unwrap();
        }
        let tls = "[server]\ncert_file = \"s.pem\"\nkey_file = \"s.key\"\n";
        let mtls = format!("{tls}client_ca_file = \"clients.pem\"\n{tenant}");
        std::fs::write(&file, &mtls).unwrap();
        let (settings, _) = load(&file).unwrap();
        let (reload, server) = loader(&file, &settings, Arc::default());
        assert!(reload().is_ok());
        server.commit();
        std::fs::write(&file, format!("{tls}{tenant}")).unwrap();
        let e = reload().unwrap_err().to_string();
        assert!(e.contains("server.client_ca_file: removed"), "{e}");
        std::fs::write(&file, &mtls).unwrap();
        assert!(reload().is_ok());
        server.commit();
        // Started without, a reload turns them on; a later reload cannot
        // turn them off again.
        std::fs::write(&file, format!("{tls}{tenant}")).unwrap();
        let (settings, _) = load(&file).unwrap();
        let (reload, server) = loader(&file, &settings, Arc::default());
        assert!(reload().is_ok(), "without, as at start");
        server.commit();
        std::fs::write(&file, &mtls).unwrap();
        assert!(reload().is_ok(), "read with them on");
        // A good read the reloader then rejects (a file that kept changing,
        // a later read that failed) is never committed: nothing of it
        // applies, so client certificates are still off and a config
        // without them still loads. (The loader applied them at read.)
        std::fs::write(&file, format!("{tls}{tenant}")).unwrap();
        assert!(
            reload().is_ok(),
            "an uncommitted read turned client certificates on"
        );
        server.commit();
        std::fs::write(&file, &mtls).unwrap();
        assert!(reload().is_ok(), "turned on");
        // A failed read after it leaves nothing to commit.
        std::fs::write(&file, "[server]\nmax_connections = 0\n").unwrap();
        assert!(reload().is_err());
        server.commit();
        std::fs::write(&file, format!("{tls}{tenant}")).unwrap();
        assert!(
            reload().is_ok(),
            "the failed read's commit applied the one before it"
        );
        std::fs::write(&file, &mtls).unwrap();
        assert!(reload().is_ok(), "turned on");
        server.commit();
        std::fs::write(&file, format!("{tls}{tenant}")).unwrap();
        let e = reload().unwrap_err().to_string();
        assert!(e.contains("server.client_ca_file: removed"), "{e}");
    }

    /// A reload applies tenants, keys and the denylist; every other section it names
    /// as needing a restart, and only those that changed.
    #[test]
    fn a_reload_names_the_sections_it_cannot_apply() {
        let tenant = "[[tenant]]\nid = \"a\"\n";
        let base = p(tenant).unwrap();
        assert!(
            restart_needed(
                &base,
                &p(&format!("{tenant}require_jwt = false\n")).unwrap()
            )
            .is_empty()
        );
        for (section, text, want) in [
            ("server", "max_connections = 9", vec!["server"]),
            // Applied by the reload (read again, new handshakes use them).
            (
                "server",
                "cert_file = \"b.pem\"\nkey_file = \"b.key\"",
                vec![],
            ),
            ("verify", "cache = false", vec!["verify"]),
            ("admin", "listen = \"127.0.0.1:1\"", vec!["admin"]),
            ("admin", "tenant_labels = [\"a\"]", vec!["admin"]),
            ("log", "level = \"debug\"", vec!["log"]),
            ("jwks_fetch", "min_refresh_s = 20", vec!["jwks_fetch"]),
        ] {
            let new = p(&format!("[{section}]\n{text}\n{tenant}")).unwrap();
            assert_eq!(restart_needed(&base, &new), want, "{section}");
        }
        // The same file read twice needs no restart, whatever order a hash
        // map prints its entries in (a watch list of many tenants).
        let labels = format!(
            "[admin]\ntenant_labels = [{}]\n{tenant}",
            (0..40)
                .map(|i| format!("\"t{i}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for _ in 0..8 {
            assert!(restart_needed(&p(&labels).unwrap(), &p(&labels).unwrap()).is_empty());
        }
    }

    #[test]
    fn errors_name_file_line_and_key() {
        assert_eq!(
            p("[server]\nlisten = \"4433\"\n").unwrap_err(),
            "/etc/jotd/jotd.toml:2: server.listen: `4433` is not an IP:port address (e.g. 127.0.0.1:4433 or [::]:4433)"
        );
        let e = p("[server]\nlisen = \"1.2.3.4:5\"\n").unwrap_err();
        assert!(
            e.starts_with("/etc/jotd/jotd.toml:2:") && e.contains("unknown field `lisen`"),
            "{e}"
        );
        let e = p("[server]\ncert_file = \"a.pem\"\n").unwrap_err();
        assert!(
            e.contains("server.key_file: cert_file and key_file go together"),
            "{e}"
        );
        let e = p("\n[verify]\nmax_token_bytes = 0\n").unwrap_err();
        assert_eq!(
            e,
            "/etc/jotd/jotd.toml:3: verify.max_token_bytes: must be at least 1"
        );
        let e = p("[log]\nformat = \"xml\"\n").unwrap_err();
        assert!(e.contains("log.format: `xml`"), "{e}");
        // A blank level would log nothing at all, errors included.
        for blank in ["", " ", ",", " , "] {
            let e = p(&format!("[log]\nlevel = \"{blank}\"\n")).unwrap_err();
            assert!(e.contains(":2: log.level:"), "{blank:?}: {e}");
        }
        assert!(crate::logging::blank_filter(" , ") && !crate::logging::blank_filter("warn,"));
        let e = p("[server]\nmax_tokens_in_flight = 10\nmax_batch_items = 11\n").unwrap_err();
        assert!(e.contains(":3: server.max_batch_items"), "{e}");
        assert_eq!(
            p("[server]\nio_threads = 257\n").unwrap_err(),
            "/etc/jotd/jotd.toml:2: server.io_threads: must be at most 256 (0: automatic)"
        );
        assert_eq!(p("[server]\nio_threads = 3\n").unwrap().io_threads, 3);
        // The request buffer must hold a full-size request while it is
        // decided, not only its bytes: at the old floor (max_frame_bytes + 4)
        // every full-size batch was `overloaded` on an idle server.
        let limits = jotd_transport::Limits {
            max_frame_bytes: 1 << 20,
            max_items: 4096,
        };
        let floor = jotd_transport::min_request_buffer_bytes(&limits);
        assert!(floor > (1 << 20) + 4 + 4096 * 24, "{floor}");
        let e = p(&format!(
            "[server]\nmax_frame_bytes = {}\nmax_request_buffer_bytes = {}\n",
            1 << 20,
            (1 << 20) + 4
        ))
        .unwrap_err();
        assert!(
            e.contains(":3: server.max_request_buffer_bytes: 1048580: must hold one full-size")
                && e.contains(&format!("at least {floor} here")),
            "{e}"
        );
        let ok = p(&format!(
            "[server]\nmax_frame_bytes = {}\nmax_request_buffer_bytes = {floor}\n",
            1 << 20
        ))
        .unwrap();
        assert_eq!(ok.server.max_request_buffer_bytes.get(), floor);
        // Every [jwks_fetch] duration in range: 0 would busy-loop against the IdP, and
        // u64::MAX would overflow when added to a clock.
        for (key, bad, line) in [
            ("timeout_s", "0", "must be 1 to 600 seconds"),
            ("refetch_interval_s", "0", "must be 1 to 86400 seconds"),
            ("min_refresh_s", "0", "must be 1 to 86400 seconds"),
            (
                "min_refresh_s",
                "18446744073709551615",
                "must be 1 to 86400 seconds",
            ),
            ("max_bytes", "0", "must be at least 1"),
            ("max_bytes", "1000000000", "must be at most 67108864"),
            ("max_stale_s", "59", "must be 60 to 2592000 seconds"),
            ("max_stale_s", "2592001", "must be 60 to 2592000 seconds"),
        ] {
            let e = p(&format!("[jwks_fetch]\n{key} = {bad}\n")).unwrap_err();
            assert!(
                e.starts_with(&format!("/etc/jotd/jotd.toml:2: jwks_fetch.{key}:"))
                    && e.contains(line),
                "{key} = {bad}: {e}"
            );
        }
        assert_eq!(
            p("[jwks_fetch]\nmax_stale_s = 3600\n")
                .unwrap()
                .fetch
                .max_stale,
            Some(Duration::from_secs(3600))
        );
        assert_eq!(p("").unwrap().fetch.max_stale, None, "kept however old");
        // Keys that pass max_stale before a refetch is allowed would be dropped
        // between every two fetches: refused, naming both keys.
        let e = p("[jwks_fetch]\nmax_stale_s = 120\nmin_refresh_s = 600\n").unwrap_err();
        assert!(
            e.contains("jwks_fetch.max_stale_s: 120: must be at least min_refresh_s (600)"),
            "{e}"
        );
        assert!(p("[jwks_fetch]\nmax_stale_s = 600\nmin_refresh_s = 600\n").is_ok());
        // Sizes past any machine's memory and times past any use are refused with
        // their line (a cache of u64::MAX entries aborted the process at start).
        for (section, key, bad, want) in [
            (
                "verify",
                "cache_entries",
                "18446744073709551615",
                "at most 16777216",
            ),
            (
                "verify",
                "cache_bytes",
                "18446744073709551615",
                "at most 68719476736",
            ),
            ("verify", "cache_max_ttl_s", "0", "1 to 86400 seconds"),
            (
                "verify",
                "cache_max_ttl_s",
                "18446744073709551615",
                "1 to 86400 seconds",
            ),
            (
                "server",
                "watch_interval_s",
                "18446744073709551615",
                "at most 86400",
            ),
            (
                "server",
                "idle_timeout_s",
                "18446744073709551615",
                "must be 1 to 86400 seconds",
            ),
            // Every [server] time has a range (a value meant in µs held
            // half-sent requests for hours; a zero drain cut every batch).
            (
                "server",
                "request_timeout_ms",
                "18446744073709551615",
                "must be 1 to 3600000 ms",
            ),
            (
                "server",
                "write_timeout_ms",
                "3600001",
                "must be 1 to 3600000 ms",
            ),
            (
                "server",
                "handshake_timeout_ms",
                "0",
                "must be 1 to 3600000 ms",
            ),
            (
                "server",
                "overload_wait_ms",
                "60001",
                "must be 0 to 60000 ms",
            ),
            (
                "server",
                "drain_timeout_s",
                "0",
                "must be 1 to 3600 seconds",
            ),
        ] {
            let e = p(&format!("[{section}]\n{key} = {bad}\n")).unwrap_err();
            assert!(
                e.starts_with(&format!("/etc/jotd/jotd.toml:2: {section}.{key}:"))
                    && e.contains(want),
                "{key} = {bad}: {e}"
            );
        }
        let e = p("[verify]\nthreads = 100000\n").unwrap_err();
        assert!(
            e.contains(":2: verify.threads: must be at most 1024"),
            "{e}"
        );
        assert_eq!(
            p("[server]\nrefetch_hold_ms = 0\n").unwrap_err(),
            "/etc/jotd/jotd.toml:2: server.refetch_hold_ms: 0: must be 1 to 3600000 ms"
        );
        assert_eq!(
            p("[server]\nrefetch_hold_ms = 250\n")
                .unwrap()
                .server
                .refetch_hold,
            Duration::from_millis(250)
        );
        for bad in ["\"\"", "\"a\\u0000b\"", "\"a\\nb\""] {
            let e = p(&format!("[admin]\ntenant_labels = [\"a\", {bad}]\n")).unwrap_err();
            assert!(
                e.starts_with("/etc/jotd/jotd.toml:2: admin.tenant_labels: `")
                    && e.ends_with("`: a tenant id is 1..=256 printable characters"),
                "{bad}: {e}"
            );
        }
        let long = "x".repeat(257);
        let e = p(&format!("[admin]\ntenant_labels = [\"{long}\"]\n")).unwrap_err();
        assert!(e.contains("1..=256 printable characters"), "{e}");
        let many: Vec<String> = (0..300).map(|i| format!("\"t{i}\"")).collect();
        let e = p(&format!("[admin]\ntenant_labels = [{}]\n", many.join(","))).unwrap_err();
        assert!(
            e.ends_with("admin.tenant_labels: at most 256 tenants"),
            "{e}"
        );
        let w = p("[admin]\ntenant_labels = [\"b\", \"a\"]\n")
            .unwrap()
            .server
            .tenant_watch
            .unwrap();
        assert_eq!(w.names(), ["b", "a"]);
        let e = p("[server]\nmax_connections = -1\n").unwrap_err();
        assert!(e.starts_with("/etc/jotd/jotd.toml:2:"), "{e}");
    }
}
