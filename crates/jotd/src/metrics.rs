//! Prometheus metrics (`metrics` + `metrics-exporter-prometheus`, rendered by
//! the admin listener). Every handle is created once; tokens are counted per
//! batch from the batch's tally, never per token on the hot path. No label
//! carries a tenant or a kid: cardinality is fixed by the reason codes and
//! algorithms (and the JWKS URLs the operator configured).

use jotd_core::{Algorithm, Engine, Reason};
use jotd_keys::{JwksFetcher, Reloader};
use jotd_transport::{ErrorCode, Event, Overload, Refusal, ServerStats, StreamEnd, TenantWatch};
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Batch sizes (items).
const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];
/// Batch times (seconds): 50 µs … 5 s.
const TIME_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

const ALGS: usize = Algorithm::ALL.len() + 1;

enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric jotd exports through the recorder, with its help text
/// (docs/operations.md lists the same); the `process_*` ones are rendered by
/// `process_metrics`.
const DESCRIPTIONS: &[(&str, Kind, &str)] = &[
    (
        "jotd_tokens_total",
        Kind::Counter,
        "Decisions by outcome (allow/deny), reason code and verified algorithm (none: signature not verified)",
    ),
    (
        "jotd_batches_total",
        Kind::Counter,
        "Batches answered: decided, abandoned (the client stopped reading first), or the error code that failed them as a whole",
    ),
    (
        "jotd_batches_refused_total",
        Kind::Counter,
        "Batches refused before verification, by why (overloaded: no room in the tokens-in-flight budget; request_buffer: no room in the buffer for requests not yet decided)",
    ),
    ("jotd_batch_size", Kind::Histogram, "Items per batch"),
    (
        "jotd_batch_duration_seconds",
        Kind::Histogram,
        "From the end of a batch's request to its last answer byte handed to QUIC",
    ),
    (
        "jotd_batch_verify_seconds",
        Kind::Histogram,
        "Time a batch spent on the verification pool",
    ),
    (
        "jotd_batch_queue_seconds",
        Kind::Histogram,
        "Time a batch waited for room in the tokens-in-flight budget",
    ),
    (
        "jotd_key_lookup_misses_total",
        Kind::Counter,
        "Decisions whose key was not found (unknown_kid, unknown_tenant, missing_kid)",
    ),
    (
        "jotd_connections_total",
        Kind::Counter,
        "QUIC connections accepted",
    ),
    (
        "jotd_connections_refused_total",
        Kind::Counter,
        "QUIC connections refused, by why (connection_limit: after the handshake; handshake_limit, handshake_share (max_handshakes_per_address), handshake_timeout, handshake: failed; closed_for_room: an open connection closed at max_connections for an address holding fewer)",
    ),
    (
        "jotd_retries_sent_total",
        Kind::Counter,
        "QUIC Retry packets sent to unvalidated addresses while handshakes piled up",
    ),
    (
        "jotd_streams_reset_total",
        Kind::Counter,
        "Streams the server gave up on, by why (request_timeout: the request did not arrive in time; write_timeout: the client did not read its answer)",
    ),
    (
        "jotd_handshakes_in_progress",
        Kind::Gauge,
        "QUIC handshakes in progress (they hold no connection slot)",
    ),
    (
        "jotd_request_buffer_bytes",
        Kind::Gauge,
        "Bytes reserved by requests not yet decided (arriving, waiting for token room, verifying)",
    ),
    (
        "jotd_request_buffer_limit_bytes",
        Kind::Gauge,
        "server.max_request_buffer_bytes",
    ),
    (
        "jotd_streams_aborted_total",
        Kind::Counter,
        "Streams whose client reset them or vanished before the answer",
    ),
    (
        "jotd_refetch_reverified_batches_total",
        Kind::Counter,
        "Batches whose unknown_kid decisions were re-verified after a JWKS refetch",
    ),
    (
        "jotd_config_reloads_total",
        Kind::Counter,
        "Config reloads by result (ok, rejected)",
    ),
    (
        "jotd_config_generation",
        Kind::Gauge,
        "Generation of the key snapshot serving now",
    ),
    (
        "jotd_tenants_loaded",
        Kind::Gauge,
        "Tenants in the serving snapshot",
    ),
    (
        "jotd_keys_loaded",
        Kind::Gauge,
        "Keys in the serving snapshot (static and JWKS)",
    ),
    (
        "jotd_connections_open",
        Kind::Gauge,
        "QUIC connections open",
    ),
    (
        "jotd_connections_limit",
        Kind::Gauge,
        "server.max_connections",
    ),
    (
        "jotd_streams_open",
        Kind::Gauge,
        "Streams (batches) being served",
    ),
    (
        "jotd_tokens_in_flight",
        Kind::Gauge,
        "Tokens holding room in the in-flight budget",
    ),
    (
        "jotd_tokens_in_flight_limit",
        Kind::Gauge,
        "server.max_tokens_in_flight",
    ),
    (
        "jotd_cache_hits_total",
        Kind::Counter,
        "Verified-token cache hits",
    ),
    (
        "jotd_cache_misses_total",
        Kind::Counter,
        "Verified-token cache misses",
    ),
    (
        "jotd_cache_evictions_total",
        Kind::Counter,
        "Verified-token cache entries dropped (bounds or death)",
    ),
    (
        "jotd_cache_admission_rejected_total",
        Kind::Counter,
        "Verified tokens not admitted to the full cache (first sighting within the doorkeeper window, or the churn throttle's draw)",
    ),
    (
        "jotd_cache_bypassed_total",
        Kind::Counter,
        "Tokens verified without a cache lookup because the cache was not paying for the traffic (only 1 in jotd_cache_sample_every looked up)",
    ),
    (
        "jotd_cache_sample_every",
        Kind::Gauge,
        "One token in this many is looked up in the cache: 1 while it pays, 16 while it does not",
    ),
    (
        "jotd_cache_throttled",
        Kind::Gauge,
        "1 while cache admission is throttled because most lookups would insert (churn), else 0",
    ),
    (
        "jotd_cache_hit_ratio",
        Kind::Gauge,
        "Cache hits over lookups during the last sampling second (0 when there was no lookup)",
    ),
    (
        "jotd_cache_entries",
        Kind::Gauge,
        "Verified-token cache entries",
    ),
    (
        "jotd_cache_bytes",
        Kind::Gauge,
        "Verified-token cache size, approximate bytes",
    ),
    (
        "jotd_jwks_fetches_total",
        Kind::Counter,
        "JWKS fetches by URL and result (ok, failed)",
    ),
    (
        "jotd_jwks_age_seconds",
        Kind::Gauge,
        "Seconds since the last good fetch of a JWKS URL (-1: never)",
    ),
    (
        "jotd_jwks_stale",
        Kind::Gauge,
        "1 when a JWKS URL is past its stale budget (3 refresh intervals), never fetched, or its keys were dropped",
    ),
    (
        "jotd_jwks_keys_dropped",
        Kind::Gauge,
        "1 when a JWKS URL's last good keys were dropped (older than jwks_fetch.max_stale_s, and a fetch failed)",
    ),
    (
        "jotd_jwks_redirected",
        Kind::Gauge,
        "1 when a JWKS URL's installed keys came through a redirect (same scheme only; the log names the final URL)",
    ),
    (
        "jotd_build_info",
        Kind::Gauge,
        "Always 1; the version label says which build",
    ),
    (
        "jotd_tenant_tokens_total",
        Kind::Counter,
        "Decisions of the tenants listed in [admin] tenant_labels, by outcome (no other tenant is labelled)",
    ),
];

fn alg_index(alg: Option<Algorithm>) -> usize {
    alg.and_then(|a| Algorithm::ALL.iter().position(|x| *x == a))
        .unwrap_or(ALGS - 1)
}

/// The daemon's metric handles.
pub(crate) struct Metrics {
    handle: PrometheusHandle,
    /// The last exposition and when its render began ([`Metrics::render`]).
    last_render: std::sync::Mutex<Option<(std::time::Instant, String)>>,
    /// `jotd_tokens_total{outcome,reason,alg}`, created on first use.
    tokens: Box<[OnceLock<Counter>]>,
    /// `jotd_tenant_tokens_total{tenant,outcome}`: `[allow, deny]` per slot of
    /// `[admin] tenant_labels`.
    tenant_tokens: Vec<[Counter; 2]>,
    batches_ok: Counter,
    batches_abandoned: Counter,
    batches_failed: Vec<Counter>,
    batch_size: Histogram,
    batch_seconds: Histogram,
    verify_seconds: Histogram,
    queue_seconds: Histogram,
    lookup_misses: Counter,
    /// `jotd_connections_refused_total{why}`, by [`Refusal`].
    refused: [Counter; 6],
    overloaded: Counter,
    request_buffer_full: Counter,
    streams_aborted: Counter,
    request_timeouts: Counter,
    write_timeouts: Counter,
    answer_buffer_full: Counter,
    retries: Counter,
    connections_total: Counter,
    refetch_reverified: Counter,
    reload_ok: Counter,
    reload_failed: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Installs the global recorder and creates the handles.
    pub(crate) fn install(watch: Option<&TenantWatch>) -> anyhow::Result<Self> {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full("jotd_batch_size".into()), SIZE_BUCKETS)?
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), TIME_BUCKETS)?
            .install_recorder()?;
        for (name, kind, help) in DESCRIPTIONS {
            match kind {
                Kind::Counter => metrics::describe_counter!(*name, *help),
                Kind::Gauge => metrics::describe_gauge!(*name, *help),
                Kind::Histogram => metrics::describe_histogram!(*name, *help),
            }
        }
        gauge!("jotd_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        let batches_failed = ErrorCode::ALL
            .iter()
            .map(|c| counter!("jotd_batches_total", "result" => c.as_str()))
            .collect();
        let tenant_tokens = watch
            .map(|w| {
                w.names()
                    .iter()
                    .map(|t| {
                        [
                            counter!("jotd_tenant_tokens_total", "tenant" => t.clone(), "outcome" => "allow"),
                            counter!("jotd_tenant_tokens_total", "tenant" => t.clone(), "outcome" => "deny"),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            handle,
            last_render: std::sync::Mutex::new(None),
            tenant_tokens,
            tokens: (0..Reason::ALL.len() * ALGS)
                .map(|_| OnceLock::new())
                .collect(),
            batches_ok: counter!("jotd_batches_total", "result" => "decided"),
            batches_abandoned: counter!("jotd_batches_total", "result" => "abandoned"),
            batches_failed,
            batch_size: histogram!("jotd_batch_size"),
            batch_seconds: histogram!("jotd_batch_duration_seconds"),
            verify_seconds: histogram!("jotd_batch_verify_seconds"),
            queue_seconds: histogram!("jotd_batch_queue_seconds"),
            lookup_misses: counter!("jotd_key_lookup_misses_total"),
            refused: [
                "connection_limit",
                "handshake_limit",
                "handshake_timeout",
                "handshake",
                "handshake_share",
                "closed_for_room",
            ]
            .map(|why| counter!("jotd_connections_refused_total", "why" => why)),
            overloaded: counter!("jotd_batches_refused_total", "why" => "overloaded"),
            request_buffer_full: counter!("jotd_batches_refused_total", "why" => "request_buffer"),
            streams_aborted: counter!("jotd_streams_aborted_total"),
            request_timeouts: counter!("jotd_streams_reset_total", "why" => "request_timeout"),
            write_timeouts: counter!("jotd_streams_reset_total", "why" => "write_timeout"),
            answer_buffer_full: counter!("jotd_streams_reset_total", "why" => "answer_buffer_full"),
            retries: counter!("jotd_retries_sent_total"),
            connections_total: counter!("jotd_connections_total"),
            refetch_reverified: counter!("jotd_refetch_reverified_batches_total"),
            reload_ok: counter!("jotd_config_reloads_total", "result" => "ok"),
            reload_failed: counter!("jotd_config_reloads_total", "result" => "rejected"),
        })
    }

    fn token_counter(&self, reason: Reason, alg: Option<Algorithm>) -> &Counter {
        let r = Reason::ALL.iter().position(|x| *x == reason).unwrap_or(0);
        let a = alg_index(alg);
        self.tokens[r * ALGS + a].get_or_init(|| {
            counter!(
                "jotd_tokens_total",
                "outcome" => if reason.is_allow() { "allow" } else { "deny" },
                "reason" => reason.as_str(),
                "alg" => alg.map_or("none", Algorithm::as_str),
            )
        })
    }

    /// Records a server event.
    pub(crate) fn event(&self, event: &Event<'_>) {
        match event {
            Event::Batch(b) => {
                match b.error {
                    None if b.abandoned => self.batches_abandoned.increment(1),
                    None => self.batches_ok.increment(1),
                    Some(code) => {
                        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
                            self.batches_failed[i].increment(1);
                        }
                    }
                }
                if b.items > 0 {
                    self.batch_size.record(b.items as f64);
                    self.batch_seconds.record(b.total.as_secs_f64());
                    self.verify_seconds.record(b.verify.as_secs_f64());
                    self.queue_seconds.record(b.queued.as_secs_f64());
                }
                let mut misses = 0;
                for (reason, alg, n) in b.tally.iter() {
                    self.token_counter(reason, alg).increment(u64::from(n));
                    if matches!(
                        reason,
                        Reason::UnknownKid | Reason::UnknownTenant | Reason::MissingKid
                    ) {
                        misses += u64::from(n);
                    }
                }
                if misses > 0 {
                    self.lookup_misses.increment(misses);
                }
                for (slot, allowed, denied) in b.tally.tenants() {
                    if let Some([allow, deny]) = self.tenant_tokens.get(slot) {
                        allow.increment(u64::from(allowed));
                        deny.increment(u64::from(denied));
                    }
                }
                if b.refetched {
                    self.refetch_reverified.increment(1);
                }
            }
            Event::ConnectionOpened { .. } => self.connections_total.increment(1),
            Event::ConnectionRefused { why, .. } => {
                let i = match why {
                    Refusal::ConnectionLimit => 0,
                    Refusal::HandshakeLimit => 1,
                    Refusal::HandshakeTimeout => 2,
                    Refusal::Handshake => 3,
                    Refusal::HandshakeShare => 4,
                    Refusal::ClosedForRoom => 5,
                };
                self.refused[i].increment(1);
            }
            Event::Retry { .. } => self.retries.increment(1),
            Event::Overloaded { why, .. } => match why {
                Overload::TokensInFlight => self.overloaded.increment(1),
                Overload::RequestBuffer => self.request_buffer_full.increment(1),
            },
            Event::Stream(end) => match end {
                StreamEnd::Aborted => self.streams_aborted.increment(1),
                StreamEnd::RequestTimeout => self.request_timeouts.increment(1),
                StreamEnd::WriteTimeout => self.write_timeouts.increment(1),
                StreamEnd::AnswerBufferFull => self.answer_buffer_full.increment(1),
            },
            Event::ConnectionClosed { .. } => {}
        }
    }

    /// Counts a config reload.
    pub(crate) fn reload(&self, ok: bool) {
        if ok {
            self.reload_ok.increment(1);
        } else {
            self.reload_failed.increment(1);
        }
    }

    /// The Prometheus text exposition: the recorder's metrics, then (Linux)
    /// the standard process metrics, read now.
    ///
    /// One render at a time: a request that waited for another's render
    /// takes the next one begun after it asked (as fresh as its own), so
    /// scrapes on every admin connection at once cost one render in turn,
    /// not one each in parallel (each walks the registry and reads `/proc`,
    /// on the threads the verification pool shares the cores with).
    pub(crate) fn render(&self) -> String {
        let asked = std::time::Instant::now();
        let mut last = self
            .last_render
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((began, text)) = last.as_ref()
            && *began >= asked
        {
            return text.clone();
        }
        let began = std::time::Instant::now();
        #[cfg_attr(not(target_os = "linux"), allow(unused_mut))]
        let mut text = self.handle.render();
        #[cfg(target_os = "linux")]
        crate::process_metrics::render(&mut text);
        *last = Some((began, text.clone()));
        text
    }

    /// Samples gauges (server, cache, keys, JWKS) once a second.
    pub(crate) fn start_sampler(
        self: &Arc<Self>,
        limits: &jotd_transport::ServerOptions,
        stats: Arc<ServerStats>,
        engine: Arc<Engine>,
        reloader: Arc<Reloader>,
        fetcher: Arc<JwksFetcher>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        gauge!("jotd_tokens_in_flight_limit").set(limits.max_tokens_in_flight.get() as f64);
        gauge!("jotd_connections_limit").set(limits.max_connections.get() as f64);
        gauge!("jotd_request_buffer_limit_bytes").set(limits.max_request_buffer_bytes.get() as f64);
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let s = Arc::new(Sampler::new());
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            // A slow sample (every JWKS source's health at 100k tenants) is
            // not caught up in a burst.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = crate::stopped(&mut stop) => return,
                    _ = tick.tick() => {}
                }
                // On the blocking pool: it walks every tenant's JWKS
                // sources, off the I/O threads that carry batches.
                let (s, st, en, re, fe) = (
                    Arc::clone(&s),
                    Arc::clone(&stats),
                    Arc::clone(&engine),
                    Arc::clone(&reloader),
                    Arc::clone(&fetcher),
                );
                let _ = tokio::task::spawn_blocking(move || s.sample(&st, &en, &re, &fe)).await;
                me.handle.run_upkeep();
            }
        });
    }
}

struct Sampler {
    connections: Gauge,
    streams: Gauge,
    in_flight: Gauge,
    handshakes: Gauge,
    request_bytes: Gauge,
    cache_hits: Counter,
    cache_misses: Counter,
    cache_evictions: Counter,
    cache_rejected: Counter,
    cache_bypassed: Counter,
    cache_sample_every: Gauge,
    cache_throttled: Gauge,
    cache_hit_ratio: Gauge,
    /// Hits and lookups at the last sample, for the ratio over one interval.
    cache_last: std::sync::Mutex<(u64, u64)>,
    jwks_totals: std::sync::Mutex<FetchTotals>,
    /// The URLs whose JWKS gauges the last sample set.
    jwks_urls: std::sync::Mutex<std::collections::BTreeSet<String>>,
    cache_entries: Gauge,
    cache_bytes: Gauge,
    tenants: Gauge,
    keys: Gauge,
    generation: Gauge,
    seen_generation: std::sync::atomic::AtomicU64,
}

impl Sampler {
    fn new() -> Self {
        Self {
            connections: gauge!("jotd_connections_open"),
            streams: gauge!("jotd_streams_open"),
            in_flight: gauge!("jotd_tokens_in_flight"),
            handshakes: gauge!("jotd_handshakes_in_progress"),
            request_bytes: gauge!("jotd_request_buffer_bytes"),
            cache_hits: counter!("jotd_cache_hits_total"),
            cache_misses: counter!("jotd_cache_misses_total"),
            cache_evictions: counter!("jotd_cache_evictions_total"),
            cache_rejected: counter!("jotd_cache_admission_rejected_total"),
            cache_bypassed: counter!("jotd_cache_bypassed_total"),
            cache_sample_every: gauge!("jotd_cache_sample_every"),
            cache_throttled: gauge!("jotd_cache_throttled"),
            cache_hit_ratio: gauge!("jotd_cache_hit_ratio"),
            cache_last: std::sync::Mutex::new((0, 0)),
            jwks_totals: std::sync::Mutex::new(FetchTotals::default()),
            jwks_urls: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            cache_entries: gauge!("jotd_cache_entries"),
            cache_bytes: gauge!("jotd_cache_bytes"),
            tenants: gauge!("jotd_tenants_loaded"),
            keys: gauge!("jotd_keys_loaded"),
            generation: gauge!("jotd_config_generation"),
            seen_generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn sample(
        &self,
        stats: &ServerStats,
        engine: &Engine,
        reloader: &Reloader,
        fetcher: &JwksFetcher,
    ) {
        self.connections.set(stats.connections() as f64);
        self.streams.set(stats.streams() as f64);
        self.in_flight.set(stats.tokens_in_flight() as f64);
        self.handshakes.set(stats.handshakes() as f64);
        self.request_bytes.set(stats.request_bytes() as f64);
        if let Some(c) = engine.cache_stats() {
            self.cache_hits.absolute(c.hits);
            self.cache_misses.absolute(c.misses);
            self.cache_evictions.absolute(c.evictions);
            self.cache_rejected.absolute(c.admission_rejected);
            self.cache_bypassed.absolute(c.bypassed);
            self.cache_sample_every.set(f64::from(c.sample_every));
            self.cache_throttled.set(f64::from(u8::from(c.throttled)));
            let lookups = c.hits + c.misses;
            let mut last = self
                .cache_last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (dh, dl) = (
                c.hits.saturating_sub(last.0),
                lookups.saturating_sub(last.1),
            );
            *last = (c.hits, lookups);
            self.cache_hit_ratio
                .set(if dl == 0 { 0.0 } else { dh as f64 / dl as f64 });
            self.cache_entries.set(c.entries as f64);
            self.cache_bytes.set(c.bytes as f64);
        }
        let snap = reloader.store().load();
        let generation = snap.generation();
        // Counting keys walks every tenant: only when the snapshot changed.
        if self
            .seen_generation
            .swap(generation, std::sync::atomic::Ordering::Relaxed)
            != generation
        {
            self.tenants.set(snap.len() as f64);
            self.keys
                .set(snap.tenants().map(|t| t.keys.len()).sum::<usize>() as f64);
            self.generation.set(generation as f64);
        }
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let health = fetcher.health();
        {
            let mut totals = self
                .jwks_totals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            totals.add(&health);
            let live = &totals.live;
            for (url, (ok, failed)) in totals.per_url.iter().filter(|(u, _)| live.contains(*u)) {
                counter!("jotd_jwks_fetches_total", "url" => url.clone(), "result" => "ok")
                    .absolute(*ok);
                counter!("jotd_jwks_fetches_total", "url" => url.clone(), "result" => "failed")
                    .absolute(*failed);
            }
        }
        let urls = per_url(health);
        for (url, u) in &urls {
            gauge!("jotd_jwks_stale", "url" => url.clone()).set(flag(u.stale));
            gauge!("jotd_jwks_keys_dropped", "url" => url.clone()).set(flag(u.dropped));
            gauge!("jotd_jwks_redirected", "url" => url.clone()).set(flag(u.redirected));
            // -1: never fetched successfully.
            gauge!("jotd_jwks_age_seconds", "url" => url.clone())
                .set(u.oldest.flatten().unwrap_or(-1.0));
        }
        // A URL a reload removed: its series cannot be dropped (the recorder
        // has no removal), so they are zeroed: `jotd_jwks_stale` 0, so the
        // alert on it clears, instead of reading 1 until a restart.
        let mut published = self
            .jwks_urls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for gone in published.iter().filter(|u| !urls.contains_key(*u)) {
            gauge!("jotd_jwks_stale", "url" => gone.clone()).set(0.0);
            gauge!("jotd_jwks_keys_dropped", "url" => gone.clone()).set(0.0);
            gauge!("jotd_jwks_redirected", "url" => gone.clone()).set(0.0);
            gauge!("jotd_jwks_age_seconds", "url" => gone.clone()).set(0.0);
        }
        *published = urls.into_keys().collect();
    }
}

/// Gone JWKS URLs whose fetch totals are kept.
const MAX_GONE_URLS: usize = 10_000;

/// JWKS fetches per URL, as counters that only grow. Several tenants may share a
/// URL (each its own source): the URL's count is the sum of what its sources did,
/// accumulated as increments, so a reload that removes one of the tenants does not
/// make the counter go down (Prometheus would read that as a restart), and one that
/// brings it back does not count its old fetches twice.
#[derive(Debug, Default)]
struct FetchTotals {
    /// Each source's (good, failed) fetches when last seen.
    seen: std::collections::HashMap<(String, String), (u64, u64)>,
    /// Per URL: (good, failed) fetches so far.
    per_url: std::collections::BTreeMap<String, (u64, u64)>,
    /// The URLs some source names now (the ones written out).
    live: std::collections::HashSet<String>,
}

impl FetchTotals {
    fn add(&mut self, health: &[jotd_keys::SourceHealth]) {
        // Sources of one tenant whose URLs read alike once redacted
        // (`https://idp/jwks` and `https://idp/jwks#es`) are summed first:
        // each one's count diffed against the other's grew the total by
        // their difference every sample, with no fetch at all.
        let mut now_by: std::collections::HashMap<(&str, &str), (u64, u64)> =
            std::collections::HashMap::with_capacity(health.len());
        for h in health {
            let n = now_by.entry((&h.tenant, &h.url)).or_default();
            n.0 += h.fetches - h.failed_total;
            n.1 += h.failed_total;
        }
        // A source the fetcher no longer has (a reload removed it) is
        // forgotten here too: named again, it starts counting from 0, and
        // each of its fetches adds one. (A set lookup: comparing against
        // every source was n² a second, 10 s and more at 100k tenants.)
        self.seen
            .retain(|(tenant, url), _| now_by.contains_key(&(tenant.as_str(), url.as_str())));
        // The URLs some source names now: only these are written each
        // second (every URL ever configured was, until a restart). A URL's
        // total is kept when it goes, so one named again counts on from it
        // (the counter only grows: written from 0, `absolute` would hold the
        // old value and read as no fetches until it caught up).
        self.live = now_by.keys().map(|(_, u)| (*u).to_owned()).collect();
        // Totals of gone URLs are kept up to a bound (rotating presigned
        // URLs would grow them for ever); past it they go, and one named
        // again counts from 0, which the recorder (keeping the highest
        // value written) shows as no fetches until it catches up.
        if self.per_url.len() > self.live.len() + MAX_GONE_URLS {
            let live = &self.live;
            self.per_url.retain(|url, _| live.contains(url));
        }
        for ((tenant, url), now) in now_by {
            let before = self
                .seen
                .insert((tenant.to_owned(), url.to_owned()), now)
                .unwrap_or((0, 0));
            let total = self.per_url.entry(url.to_owned()).or_default();
            // A source's counts never go down while the fetcher keeps it.
            total.0 += now.0.saturating_sub(before.0);
            total.1 += now.1.saturating_sub(before.1);
        }
    }
}

/// One URL's JWKS sources, folded: several tenants may share one URL (each its own
/// source), and the series are per URL, so sources are taken at their worst
/// (staleness, redirects, age), never written over one another.
#[derive(Debug, Default, PartialEq)]
struct PerUrl {
    stale: bool,
    dropped: bool,
    redirected: bool,
    /// The oldest last good fetch, in seconds; `Some(None)`: some source of this
    /// URL never fetched successfully.
    oldest: Option<Option<f64>>,
}

fn per_url(health: Vec<jotd_keys::SourceHealth>) -> std::collections::BTreeMap<String, PerUrl> {
    let mut out: std::collections::BTreeMap<String, PerUrl> = std::collections::BTreeMap::new();
    for h in health {
        let u = out.entry(h.url.clone()).or_default();
        // Stale by the same rule as /readyz: never fetched, or older than
        // STALE_REFRESHES refresh intervals.
        // Dropped keys (past `max_stale_s`) are stale whatever the budget says.
        u.stale |= h.dropped
            || h.age
                .is_none_or(|a| a > h.refresh * crate::admin::STALE_REFRESHES);
        u.dropped |= h.dropped;
        // The installed keys came from another URL than the configured one.
        u.redirected |= h.keys_url.as_ref().is_some_and(|k| *k != h.url);
        let age = h.age.map(|a| a.as_secs_f64());
        u.oldest = Some(match (u.oldest, age) {
            (None, a) => a,
            (Some(None), _) | (_, None) => None,
            (Some(Some(x)), Some(y)) => Some(x.max(y)),
        });
    }
    out
}

#[cfg(test)]
mod per_url_tests {
    use super::*;
    use std::time::Duration;

    fn source(
        tenant: &str,
        url: &str,
        age: Option<u64>,
        fetches: u64,
        failed: u64,
    ) -> jotd_keys::SourceHealth {
        jotd_keys::SourceHealth {
            tenant: tenant.into(),
            url: url.into(),
            age: age.map(Duration::from_secs),
            refresh: Duration::from_secs(300),
            failures: 0,
            last_error: None,
            fetches,
            tried: fetches > 0,
            failed_total: failed,
            keys_url: None,
            dropped: false,
        }
    }

    /// The only test in this binary that installs the global recorder.
    /// A batch whose client stopped reading is `abandoned`, not `decided`.
    #[test]
    fn batches_are_counted_by_result() {
        let m = super::Metrics::install(None).unwrap();
        let decided = jotd_transport::BatchReport {
            items: 2,
            ..jotd_transport::BatchReport::default()
        };
        let abandoned = jotd_transport::BatchReport {
            items: 1,
            abandoned: true,
            ..jotd_transport::BatchReport::default()
        };
        m.event(&jotd_transport::Event::Batch(&decided));
        m.event(&jotd_transport::Event::Batch(&abandoned));
        m.event(&jotd_transport::Event::Batch(&abandoned));
        let text = m.render();
        assert!(
            text.contains("jotd_batches_total{result=\"decided\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("jotd_batches_total{result=\"abandoned\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn tenants_sharing_a_url_are_taken_at_their_worst() {
        let shared = "https://idp.example/jwks";
        let m = per_url(vec![
            source("a", shared, Some(10), 5, 1),
            source("b", shared, Some(2000), 3, 0),
            source("c", "https://other.example/jwks", None, 2, 2),
        ]);
        assert_eq!(
            m[shared],
            PerUrl {
                stale: true,
                dropped: false,
                redirected: false,
                oldest: Some(Some(2000.0))
            }
        );
        let other = &m["https://other.example/jwks"];
        assert!(other.stale && other.oldest == Some(None));
    }

    /// Two sources of one tenant whose URLs redact alike (a `#fragment`
    /// apart) count their fetches once each: diffed against each other,
    /// the total grew by their difference every sample with no fetch.
    #[test]
    fn sources_that_read_alike_once_redacted_are_summed() {
        let url = "https://idp.example/jwks";
        let mut t = FetchTotals::default();
        for _ in 0..3 {
            t.add(&[
                source("a", url, Some(1), 10, 0),
                source("a", url, Some(1), 3, 0),
            ]);
            assert_eq!(t.per_url[url], (13, 0));
        }
        t.add(&[
            source("a", url, Some(1), 11, 0),
            source("a", url, Some(1), 4, 1),
        ]);
        assert_eq!(t.per_url[url], (14, 1));
    }

    #[test]
    fn dropped_keys_are_stale_whatever_their_age() {
        let url = "https://idp.example/jwks";
        let fresh = source("a", url, Some(100), 5, 1);
        assert!(!per_url(vec![fresh.clone()])[url].stale, "within budget");
        let m = per_url(vec![
            fresh.clone(),
            jotd_keys::SourceHealth {
                dropped: true,
                ..source("b", url, Some(100), 5, 1)
            },
        ]);
        assert!(m[url].stale && m[url].dropped, "{:?}", m[url]);
    }

    #[test]
    fn fetch_counts_per_url_are_summed_and_never_go_down() {
        let shared = "https://idp.example/jwks";
        let mut t = FetchTotals::default();
        t.add(&[
            source("a", shared, Some(10), 5, 1),
            source("b", shared, Some(20), 3, 0),
        ]);
        assert_eq!(t.per_url[shared], (7, 1));
        // A reload removes tenant b: the count stays; a's new fetches add on.
        t.add(&[source("a", shared, Some(10), 6, 1)]);
        assert_eq!(t.per_url[shared], (8, 1));
        // b comes back as a new source (the fetcher forgot the old one): its
        // one failed fetch adds one, nothing is counted twice or lost.
        t.add(&[
            source("a", shared, Some(10), 6, 1),
            source("b", shared, None, 1, 1),
        ]);
        assert_eq!(t.per_url[shared], (8, 2));
        t.add(&[
            source("a", shared, Some(10), 6, 1),
            source("b", shared, Some(1), 3, 1),
        ]);
        assert_eq!(t.per_url[shared], (10, 2));
        // Every source of a URL gone: no longer written out, its total kept;
        // named again, it counts on from that total (never back to 0).
        t.add(&[source("a", "https://other.example/jwks", Some(1), 1, 0)]);
        assert!(!t.live.contains(shared), "{:?}", t.live);
        assert_eq!(t.per_url[shared], (10, 2));
        t.add(&[
            source("a", "https://other.example/jwks", Some(1), 1, 0),
            source("c", shared, Some(1), 1, 0),
        ]);
        assert!(t.live.contains(shared));
        assert_eq!(t.per_url[shared], (11, 2));
    }
}
