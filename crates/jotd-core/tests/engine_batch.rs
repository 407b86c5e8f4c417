//! Batch verification on a caller-owned rayon pool: order, streaming, and exactly-once delivery.

mod fixture;

use fixture::{NOW, mint, snapshot, tenant};
use jotd_core::Algorithm::{EdDsa, Es256, Hs256, Rs256};
use jotd_core::{Engine, EngineConfig, Reason, Request, UnixTime};
use serde_json::json;
use std::sync::Mutex;

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// A mixed batch and the reason expected for each item.
fn mixed(n: usize) -> (Vec<String>, Vec<Reason>) {
    let mut tokens = Vec::new();
    let mut want = Vec::new();
    for i in 0..n {
        let (t, r) = match i % 6 {
            0 => (mint(Rs256, json!({"jti": i.to_string()})), Reason::Ok),
            1 => (mint(Es256, json!({"exp": NOW - 100})), Reason::Expired),
            2 => (mint(EdDsa, json!({})), Reason::Ok),
            3 => (format!("garbage-{i}"), Reason::Malformed),
            4 => (mint(Hs256, json!({"sub": i.to_string()})), Reason::Ok),
            _ => (
                mint(Es256, json!({})).replacen('e', "f", 1),
                Reason::Malformed,
            ),
        };
        tokens.push(t);
        want.push(r);
    }
    (tokens, want)
}

#[test]
fn ordered_batches_match_one_by_one_verification() {
    let snap = snapshot(vec![tenant("t", &[Rs256, Es256, EdDsa, Hs256])]);
    let (tokens, want) = mixed(300);
    let reqs: Vec<_> = tokens
        .iter()
        .map(|t| Request::bearer("t", t.as_bytes()))
        .collect();
    for engine in [Engine::new(EngineConfig::default()), fixture::uncached()] {
        for threads in [1, 3] {
            let got: Vec<Reason> = engine
                .verify_batch(&pool(threads), &snap, &reqs, UnixTime(NOW))
                .iter()
                .map(|d| d.reason())
                .collect();
            assert_eq!(got, want, "threads {threads}");
        }
    }
    assert!(
        Engine::new(EngineConfig::default())
            .verify_batch(&pool(2), &snap, &[], UnixTime(NOW))
            .is_empty()
    );
}

#[test]
fn streaming_delivers_every_index_exactly_once() {
    let snap = snapshot(vec![tenant("t", &[Rs256, Es256, EdDsa, Hs256])]);
    let (tokens, want) = mixed(257);
    let reqs: Vec<_> = tokens
        .iter()
        .map(|t| Request::bearer("t", t.as_bytes()))
        .collect();
    let engine = Engine::new(EngineConfig::default());
    let seen = Mutex::new(vec![None; reqs.len()]);
    let chunks = Mutex::new(0);
    engine.verify_batch_streaming(&pool(3), &snap, &reqs, UnixTime(NOW), |first, decisions| {
        *chunks.lock().unwrap() += 1;
        let mut seen = seen.lock().unwrap();
        for (i, d) in decisions.into_iter().enumerate() {
            assert!(
                seen[first + i].is_none(),
                "index {} delivered twice",
                first + i
            );
            seen[first + i] = Some(d.reason());
        }
    });
    let seen: Vec<Reason> = seen
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every index delivered"))
        .collect();
    assert_eq!(seen, want);
    assert_eq!(*chunks.lock().unwrap(), 257_usize.div_ceil(16));
}

#[test]
fn one_hot_token_across_threads() {
    let snap = snapshot(vec![tenant("t", &[Es256])]);
    let token = mint(Es256, json!({}));
    let reqs = vec![Request::bearer("t", token.as_bytes()); 4096];
    let engine = Engine::new(EngineConfig::default());
    let out = engine.verify_batch(&pool(4), &snap, &reqs, UnixTime(NOW));
    assert!(out.iter().all(|d| d.reason() == Reason::Ok));
    let s = engine.cache_stats().unwrap();
    assert_eq!(
        s.hits + s.misses,
        4096,
        "every lookup counted once, per chunk"
    );
    assert!(
        s.hits >= 4096 - 4,
        "at most one miss per thread racing the first insert"
    );
}

#[test]
fn cheap_batches_stay_on_the_calling_thread_and_costly_ones_use_the_pool() {
    let snap = snapshot(vec![tenant("t", &[Es256, Hs256])]);
    let engine = Engine::new(EngineConfig::default());
    let pool = pool(2);
    let caller = std::thread::current().id();
    let run = |tokens: &[String]| {
        let reqs: Vec<_> = tokens
            .iter()
            .map(|t| Request::bearer("t", t.as_bytes()))
            .collect();
        let threads = Mutex::new(Vec::new());
        let decided = Mutex::new(0);
        engine.verify_batch_streaming(&pool, &snap, &reqs, UnixTime(NOW), |_, decisions| {
            threads.lock().unwrap().push(std::thread::current().id());
            assert!(decisions.iter().all(|d| d.reason() == Reason::Ok));
            *decided.lock().unwrap() += decisions.len();
        });
        assert_eq!(*decided.lock().unwrap(), tokens.len());
        threads.into_inner().unwrap()
    };
    // HMAC: cheap; every chunk decided on the calling thread.
    let hs: Vec<String> = (0..64)
        .map(|i| mint(Hs256, json!({"sub": i.to_string()})))
        .collect();
    assert!(run(&hs).iter().all(|t| *t == caller));
    assert!(engine.batches_are_cheap());
    // ES256 not seen before: costly; the pool shares the rest of the batch.
    let es: Vec<String> = (0..64)
        .map(|i| mint(Es256, json!({"sub": i.to_string()})))
        .collect();
    assert!(run(&es).iter().any(|t| *t != caller));
    assert!(!engine.batches_are_cheap());
    // The same tokens again are cache hits: cheap.
    assert!(run(&es).iter().all(|t| *t == caller));
    assert!(engine.batches_are_cheap());

    // Forged ES256 signatures cost as much to refuse as good ones to accept:
    // the first one ends what the calling thread decides (before, a refusal
    // carried no token and counted as cheap, so a flood of forgeries ran on
    // the caller, a server's I/O thread).
    let forged: Vec<String> = es
        .iter()
        .map(|t| {
            let (head, sig) = t.rsplit_once('.').unwrap();
            let flipped = if sig.starts_with('A') { "B" } else { "A" };
            format!("{head}.{flipped}{}", &sig[1..])
        })
        .collect();
    let reqs: Vec<_> = forged
        .iter()
        .map(|t| Request::bearer("t", t.as_bytes()))
        .collect();
    let decided = engine.verify_batch_while_cheap(&snap, &reqs, UnixTime(NOW), 128, |_, d| {
        assert!(
            d.iter().all(|d| d.reason() == Reason::BadSignature),
            "{d:?}"
        );
    });
    assert_eq!(decided, 1, "one costly item at most on the calling thread");
    assert!(!engine.batches_are_cheap());
}
