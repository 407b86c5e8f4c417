//! The cache's byte bound counts what its entries hold in memory: measured
//! here with jemalloc's count of the bytes the process holds
//! (`stats.allocated`), against the cache's own count of its bytes.
//!
//! A file of its own: jemalloc serves the whole test binary, and this is its
//! only test (no other test's allocations interleave).

mod fixture;

use fixture::{NOW, mint, snapshot, tenant};
use jotd_core::Algorithm::Hs256;
use jotd_core::{CacheConfig, Engine, EngineConfig, PolicyModel, Request, UnixTime};
use serde_json::json;
use std::num::NonZeroUsize;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn allocated() -> f64 {
    tikv_jemalloc_ctl::epoch::advance().expect("jemalloc epoch");
    tikv_jemalloc_ctl::stats::allocated::read().expect("jemalloc stats") as f64
}

/// Tokens whose policy claims are many one-byte strings (a user who signs
/// their own tokens chooses them): each string is an allocation of its own
/// and each list's buffer is rounded up to a power of two, which the cache
/// counted as `len + 24` per string (about half of what they hold).
#[test]
fn the_byte_count_covers_what_cached_entries_hold() {
    let engine = Engine::new(EngineConfig {
        cache: Some(CacheConfig {
            max_entries: NonZeroUsize::new(1 << 20).unwrap(),
            max_bytes: NonZeroUsize::new(256 << 20).unwrap(),
            ..CacheConfig::default()
        }),
        ..EngineConfig::default()
    });
    let mut t = tenant("t", &[Hs256]);
    t.policy = PolicyModel::Allowlist;
    let snap = snapshot(vec![t]);
    let ones = |n: usize, s: &'static str| vec![s; n];
    // The ordinary shape too, so the bound is checked for both.
    let tokens: Vec<String> = (0..300)
        .map(|i| {
            if i % 2 == 0 {
                mint(
                    Hs256,
                    json!({"jti": format!("t{i}"), "methods": ones(700, "a"), "origins": ones(129, "o"), "user_agents": ones(65, "u")}),
                )
            } else {
                mint(Hs256, json!({"jti": format!("t{i}"), "methods": ["eth_call"]}))
            }
        })
        .collect();
    let verify = |token: &str| {
        let req = Request {
            token: Some(token.as_bytes()),
            tenant: "t",
            method: Some("eth_call"),
            addresses: &[],
            origin: None,
            user_agent: None,
        };
        drop(engine.verify(&snap, &req, UnixTime(NOW)));
    };
    // Warm up what is made once (thread scratch, the doorkeeper's tables).
    verify(&tokens[0]);
    verify(&tokens[1]);
    let counted_before = engine.cache_stats().unwrap().bytes;
    let live_before = allocated();
    // Twice each: the second sighting is admitted.
    for token in tokens.iter().skip(2) {
        verify(token);
        verify(token);
    }
    let stats = engine.cache_stats().unwrap();
    assert!(stats.entries >= 250, "{stats:?}");
    let held = allocated() - live_before;
    let counted = (stats.bytes - counted_before) as f64;
    assert!(
        held <= counted * 1.05,
        "entries hold {held} bytes, the cache counts {counted}"
    );
    // And the count is not wildly over either (the bound would then waste
    // room). The weights model glibc (the daemon's allocator: 16-byte steps,
    // 32 bytes at least), which takes more than jemalloc does here.
    assert!(counted <= held * 2.0, "counted {counted}, held {held}");
}
