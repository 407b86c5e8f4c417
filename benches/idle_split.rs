//! Does a costly batch that reaches an idle pool use every pool thread?
//!
//! 64 RS256 tokens on a pool of N threads (default 2), after idle gaps of
//! 0, 1, 5 and 30 ms, two ways:
//! - `split in the pool`: what the daemon does: one job spawned on the pool,
//!   which decides its first item and cuts the rest into chunks there
//!   (`Engine::verify_batch_streaming`, rayon join);
//! - `chunks injected`: every chunk spawned from outside the pool (the
//!   caller's thread, which then waits).
//!
//! Prints, per gap, the batch's p50/p90 time and how many pool threads took
//! part on average. Run: `cargo bench -p jotd-core --bench idle_split [-- N]`;
//! with `PIN=1` each pool thread is pinned to a core (`core_affinity`).

use jotd_core::{
    Algorithm, Decision, Engine, EngineConfig, PolicyModel, Request, SigningKey, Snapshot, Tenant,
    TenantKey, UnixTime, sample_claims,
};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NOW: u64 = 1_800_000_000;
const ROUNDS: usize = 100;

fn main() {
    let threads: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2);
    let key = SigningKey::generate(Algorithm::Rs256).expect("keygen");
    let tokens: Vec<String> = (0..64)
        .map(|i| key.mint(Some("k"), &sample_claims(NOW, i)).expect("mint"))
        .collect();
    let mut tenant = Tenant::new(
        "bench",
        vec![TenantKey {
            kid: "k".into(),
            key: key.verifying_key().expect("public key"),
            issuer: None,
        }],
    );
    tenant.policy = PolicyModel::Allowlist;
    tenant.claims.audiences = vec!["jotd".into()];
    tenant.claims.issuers = vec!["https://auth.example.com".into()];
    let snapshot = Snapshot::new(1, [Arc::new(tenant)]);
    let reqs: Vec<Request<'_>> = tokens
        .iter()
        .map(|t| Request {
            token: Some(t.as_bytes()),
            tenant: "bench",
            method: Some("eth_call"),
            addresses: &[],
            origin: Some("https://app.example.com"),
            user_agent: None,
        })
        .collect();
    let engine = Engine::new(EngineConfig {
        cache: None,
        ..EngineConfig::default()
    });
    let pin = std::env::var_os("PIN").is_some();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .start_handler(move |i| {
            if pin && let Some(cores) = core_affinity::get_core_ids().filter(|c| !c.is_empty()) {
                core_affinity::set_for_current(cores[i % cores.len()]);
            }
        })
        .build()
        .expect("pool");
    let chunk = 64usize.div_ceil(threads).min(16);
    println!("64 RS256 tokens, pool of {threads} threads, {ROUNDS} batches per gap");
    for (name, injected) in [("split in the pool", false), ("chunks injected", true)] {
        for gap_ms in [0u64, 1, 5, 30] {
            let mut times = Vec::with_capacity(ROUNDS);
            let mut used = 0usize;
            for _ in 0..ROUNDS {
                std::thread::sleep(Duration::from_millis(gap_ms));
                let who = Mutex::new(HashSet::new());
                let ok = Mutex::new(0usize);
                let record = |decisions: &[Decision]| {
                    who.lock().unwrap().insert(rayon::current_thread_index());
                    *ok.lock().unwrap() += decisions.iter().filter(|d| d.allow()).count();
                };
                let t = Instant::now();
                if injected {
                    pool.in_place_scope(|s| {
                        for part in reqs.chunks(chunk) {
                            let (engine, snapshot, record) = (&engine, &snapshot, &record);
                            s.spawn(move |_| {
                                let d: Vec<Decision> = part
                                    .iter()
                                    .map(|r| engine.verify(snapshot, r, UnixTime(NOW)))
                                    .collect();
                                record(&d);
                            });
                        }
                    });
                } else {
                    pool.install(|| {
                        engine.verify_batch_streaming(
                            &pool,
                            &snapshot,
                            &reqs,
                            UnixTime(NOW),
                            |_, d| record(&d),
                        );
                    });
                }
                times.push(t.elapsed().as_micros());
                assert_eq!(*ok.lock().unwrap(), 64, "every token verifies");
                used += who.lock().unwrap().len();
            }
            times.sort_unstable();
            println!(
                "{name:<18} gap {gap_ms:>2} ms: p50 {:>5} µs, p90 {:>5} µs, threads taking part {:.2}",
                times[ROUNDS / 2],
                times[ROUNDS * 9 / 10],
                used as f64 / ROUNDS as f64
            );
        }
    }
}
