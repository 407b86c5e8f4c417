//! `jotd speed`: tokens/s per core for the engine (uncached and cached) and for
//! raw aws-lc-rs signature verification on the same keys and tokens.

use anyhow::{Context, bail};
use clap::Args;
use jotd_core::{
    Algorithm, CacheConfig, Engine, EngineConfig, PolicyModel, RawVerifier, Reason, Request,
    Scratch, SigningKey, Snapshot, Tenant, TenantKey, UnixTime, sample_claims, split_for_raw,
};
use std::io::Write;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Options of `jotd speed`.
#[derive(Args, Debug)]
pub(crate) struct SpeedArgs {
    /// Seconds to run each measurement (engine, cached, raw) per algorithm.
    #[arg(long, default_value_t = 1.0, value_parser = positive_seconds)]
    seconds: f64,
    /// Threads to run each measurement on; rates are reported per thread (per core).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: u16,
    /// Comma-separated algorithms (RS256,PS256,ES256,ES256K,EdDSA,HS256 by default; `all` for every one).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "RS256,PS256,ES256,ES256K,EdDSA,HS256"
    )]
    algs: Vec<String>,
    /// Distinct tokens per algorithm: the working set both loops cycle through
    /// in order (past the cache's capacity, a cyclic scan: the worst case for recency).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=2_000_000))]
    tokens: u32,
    /// Hot set plus scan: the first HOT of the tokens are reused, the others
    /// stream past once each in turn (`--scan-per-hot` one-time tokens per hot
    /// lookup). The table gains the hot set's hit ratio in the cached run.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    hot: Option<u32>,
    /// With `--hot`: one-time tokens between two hot lookups.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    scan_per_hot: u32,
    /// The verified-token cache's byte bound for the cached run (default: the daemon's, 64 MiB).
    #[arg(long, value_parser = clap::value_parser!(u64).range(4096..))]
    cache_bytes: Option<u64>,
    /// Print one JSON object per algorithm instead of a table.
    #[arg(long)]
    json: bool,
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds in (0, 3600]")),
    }
}

fn parse_algs(names: &[String]) -> anyhow::Result<Vec<Algorithm>> {
    if names.iter().any(|n| n.eq_ignore_ascii_case("all")) {
        return Ok(Algorithm::ALL.to_vec());
    }
    let mut algs = Vec::new();
    for name in names {
        let alg = Algorithm::from_name(name.trim()).with_context(|| {
            format!("--algs: unknown algorithm `{name}` (try RS256, ES256, EdDSA, HS256, or `all`)")
        })?;
        if !algs.contains(&alg) {
            algs.push(alg);
        }
    }
    if algs.is_empty() {
        bail!("--algs: no algorithm given");
    }
    Ok(algs)
}

/// Keys, a tenant and tokens for one algorithm.
struct Workload {
    alg: Algorithm,
    snapshot: Snapshot,
    tokens: Vec<String>,
    raw: RawVerifier,
    raw_cases: Vec<(Vec<u8>, Vec<u8>)>,
    now: UnixTime,
}

const TENANT: &str = "speed-tenant";
const METHOD: &str = "eth_call";
const ORIGIN: &str = "https://app.example.com";

fn workload(alg: Algorithm, count: u32) -> anyhow::Result<Workload> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .context("clock before 1970")?
        .as_secs();
    let key = SigningKey::generate(alg)?;
    let kid = format!("{}-2026-11", alg.as_str().to_ascii_lowercase());
    let mut tokens = Vec::with_capacity(count as usize);
    let mut raw_cases = Vec::with_capacity(count as usize);
    for i in 0..count {
        let token = key.mint(Some(&kid), &sample_claims(now, i))?;
        raw_cases.push(split_for_raw(&token)?);
        tokens.push(token);
    }
    let raw = RawVerifier::new(&key)?;
    let mut tenant = Tenant::new(
        TENANT,
        vec![TenantKey {
            kid: kid.into(),
            key: key.verifying_key()?,
            issuer: None,
        }],
    );
    tenant.policy = PolicyModel::Allowlist;
    tenant.claims.audiences = vec!["jotd".into()];
    tenant.claims.issuers = vec!["https://auth.example.com".into()];
    let snapshot = Snapshot::new(1, [Arc::new(tenant)]);
    Ok(Workload {
        alg,
        snapshot,
        tokens,
        raw,
        raw_cases,
        now: UnixTime(now),
    })
}

/// Runs `step(i)` on `threads` threads for `seconds`; returns operations per second per thread.
fn measure(
    threads: u16,
    seconds: f64,
    step: &(dyn Fn(usize) -> bool + Sync),
) -> anyhow::Result<f64> {
    let budget = Duration::from_secs_f64(seconds);
    let results: Vec<anyhow::Result<(u64, Duration)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let start = Instant::now();
                    let mut done = 0u64;
                    let mut i = usize::from(t) * 7919;
                    loop {
                        for _ in 0..32 {
                            if !step(i) {
                                bail!("a token failed verification during the measurement");
                            }
                            i = i.wrapping_add(1);
                        }
                        done += 32;
                        let elapsed = start.elapsed();
                        if elapsed >= budget {
                            return Ok((done, elapsed));
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("measurement thread panicked")))
            })
            .collect()
    });
    let mut per_thread = 0.0;
    for r in results {
        let (done, elapsed) = r?;
        per_thread += done as f64 / elapsed.as_secs_f64();
    }
    Ok(per_thread / f64::from(threads))
}

/// Which token step `i` presents: cycling through all of them, or (hot set
/// plus scan) one of the first `hot` after every `per_hot` one-time tokens.
#[derive(Clone, Copy, Debug)]
enum Order {
    Cycle,
    HotAndScan { hot: usize, per_hot: usize },
}

impl Order {
    fn index(self, i: usize, n: usize) -> usize {
        match self {
            Self::Cycle => i % n,
            Self::HotAndScan { hot, per_hot } => {
                let (round, pos) = (i / (per_hot + 1), i % (per_hot + 1));
                if pos == 0 {
                    round % hot
                } else {
                    hot + (round * per_hot + pos - 1) % (n - hot)
                }
            }
        }
    }
}

/// One verification through the engine, with a per-thread scratch as the batch path uses.
fn engine_step<'a>(
    engine: &'a Engine,
    w: &'a Workload,
    reqs: &'a [Request<'a>],
    order: Order,
) -> impl Fn(usize) -> bool + Sync + 'a {
    thread_local!(static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::new()));
    move |i| {
        SCRATCH.with_borrow_mut(|s| {
            let d = engine.verify_with(s, &w.snapshot, &reqs[order.index(i, reqs.len())], w.now);
            // Cache counts reach the engine every 64 steps (as the batch path flushes per chunk).
            if i % 64 == 63 {
                engine.flush(s);
            }
            d.allow()
        })
    }
}

struct Row {
    alg: Algorithm,
    engine: f64,
    cached: f64,
    raw: f64,
    /// The cached run's hit ratio (of every token, bypassed ones included; with `--hot`, of one lookup
    /// of each hot token right after the scan).
    hit_ratio: f64,
    /// Resident-set growth over the cached run (the cache's memory), bytes.
    cache_rss: Option<u64>,
    /// Share of the cached run's tokens verified without a lookup (the cache
    /// was sampling because it did not pay).
    bypassed: f64,
}

fn run_one(w: &Workload, args: &SpeedArgs) -> anyhow::Result<Row> {
    let n = w.tokens.len();
    let reqs: Vec<Request<'_>> = w
        .tokens
        .iter()
        .map(|t| Request {
            token: Some(t.as_bytes()),
            tenant: TENANT,
            method: Some(METHOD),
            addresses: &[],
            origin: Some(ORIGIN),
            user_agent: None,
        })
        .collect();
    let check_all = |engine: &Engine| -> anyhow::Result<()> {
        for r in &reqs {
            let reason = engine.verify(&w.snapshot, r, w.now).reason();
            if reason != Reason::Ok {
                bail!("{}: the engine answered {reason} for a valid token", w.alg);
            }
        }
        Ok(())
    };
    let order = match args.hot {
        None => Order::Cycle,
        Some(hot) if (hot as usize) < n => Order::HotAndScan {
            hot: hot as usize,
            per_hot: args.scan_per_hot as usize,
        },
        Some(hot) => bail!("--hot {hot} needs more --tokens than that ({n})"),
    };
    let uncached = Engine::new(EngineConfig {
        cache: None,
        ..EngineConfig::default()
    });
    check_all(&uncached)?;
    let mut cache = CacheConfig::default();
    if let Some(bytes) = args.cache_bytes {
        cache.max_bytes = usize::try_from(bytes)
            .ok()
            .and_then(NonZeroUsize::new)
            .context("--cache-bytes: too large for this machine")?;
    }
    let rss_before = crate::process_metrics::resident_bytes();
    let cached = Engine::new(EngineConfig {
        cache: Some(cache),
        ..EngineConfig::default()
    });
    // Warm-up: the order the measurement uses, twice over the working set.
    let warm = engine_step(&cached, w, &reqs, order);
    for i in 0..2 * n {
        if !warm(i) {
            bail!(
                "{}: a token failed verification while warming the cache",
                w.alg
            );
        }
    }

    let engine = measure(
        args.threads,
        args.seconds,
        &engine_step(&uncached, w, &reqs, order),
    )?;
    let before = cached.cache_stats().unwrap_or_default();
    let hits = measure(
        args.threads,
        args.seconds,
        &engine_step(&cached, w, &reqs, order),
    )?;
    let after = cached.cache_stats().unwrap_or_default();
    let seen = (after.hits + after.misses + after.bypassed)
        .saturating_sub(before.hits + before.misses + before.bypassed);
    let bypassed = if seen == 0 {
        0.0
    } else {
        (after.bypassed - before.bypassed) as f64 / seen as f64
    };
    let cache_rss = crate::process_metrics::resident_bytes()
        .zip(rss_before)
        .map(|(a, b)| a.saturating_sub(b));
    let (dh, lookups) = match order {
        Order::Cycle => (
            after.hits - before.hits,
            // Every token the cached engine saw: bypassed ones were not looked up.
            (after.hits + after.misses + after.bypassed)
                - (before.hits + before.misses + before.bypassed),
        ),
        // The hot set's hit ratio once the scan has streamed past: one lookup of each hot
        // token (a fresh scratch, so no worker's private copy answers), all counted.
        Order::HotAndScan { hot, .. } => {
            let mut scratch = Scratch::new();
            for r in &reqs[..hot] {
                let _ = cached.verify_with(&mut scratch, &w.snapshot, r, w.now);
            }
            cached.flush(&mut scratch);
            let probed = cached.cache_stats().unwrap_or_default();
            (probed.hits - after.hits, hot as u64)
        }
    };
    let raw = measure(args.threads, args.seconds, &|i| {
        let (input, sig) = &w.raw_cases[i % n];
        w.raw.verify(input, sig)
    })?;
    Ok(Row {
        alg: w.alg,
        engine,
        cached: hits,
        raw,
        hit_ratio: if lookups == 0 {
            0.0
        } else {
            dh as f64 / lookups as f64
        },
        cache_rss,
        bypassed,
    })
}

pub(crate) fn run(args: &SpeedArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let algs = parse_algs(&args.algs)?;
    if !args.json {
        writeln!(
            out,
            "jotd speed: {} token(s)/alg, {} s per measurement, {} thread(s); rates are tokens/s per thread",
            args.tokens, args.seconds, args.threads
        )?;
        writeln!(
            out,
            "{:<8} {:>14} {:>14} {:>14} {:>12} {:>14} {:>9} {:>12}",
            "alg",
            "engine",
            "cached",
            "raw aws-lc-rs",
            "engine/raw",
            "cached/engine",
            if args.hot.is_some() {
                "hot hit%"
            } else {
                "hit%"
            },
            "cache RSS"
        )?;
    }
    for alg in algs {
        let w = workload(alg, args.tokens)?;
        let row = run_one(&w, args)?;
        let ratio = row.engine / row.raw;
        if args.json {
            writeln!(
                out,
                "{}",
                serde_json::json!({
                    "alg": row.alg.as_str(),
                    "threads": args.threads,
                    "seconds": args.seconds,
                    "tokens": args.tokens,
                    "engine_per_s": row.engine.round(),
                    "cached_per_s": row.cached.round(),
                    "raw_per_s": row.raw.round(),
                    "ratio": (ratio * 1000.0).round() / 1000.0,
                    "cached_over_engine": (row.cached / row.engine * 1000.0).round() / 1000.0,
                    "hot": args.hot,
                    "scan_per_hot": args.hot.map(|_| args.scan_per_hot),
                    "hit_ratio": (row.hit_ratio * 10000.0).round() / 10000.0,
                    "cache_rss_bytes": row.cache_rss,
                    "bypassed": (row.bypassed * 10000.0).round() / 10000.0,
                })
            )?;
        } else {
            writeln!(
                out,
                "{:<8} {:>14.0} {:>14.0} {:>14.0} {:>12.3} {:>14.3} {:>9.1} {:>12}",
                row.alg.as_str(),
                row.engine,
                row.cached,
                row.raw,
                ratio,
                row.cached / row.engine,
                row.hit_ratio * 100.0,
                row.cache_rss.map_or_else(
                    || "-".to_owned(),
                    |b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
                )
            )?;
        }
    }
    Ok(())
}
