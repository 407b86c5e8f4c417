//! Candidates for jotd-core's verified-token cache, measured side by side in one run:
//! - `current`: a copy of `crates/jotd-core/src/cache.rs` (DashMap; when full, sweep the
//!   whole map: drop dead entries, then every fourth while above 7/8 of a bound);
//! - `quick_cache`: `quick_cache::sync::Cache` weighted by bytes;
//! - `moka`: `moka::sync::Cache` weighted by bytes;
//! - `own`: sharded CLOCK with a doorkeeper (admit on second sighting once full).
//!
//! Scenarios: A `lookup-or-insert` over N uniform random keys; B 1,000 hot keys
//! among a stream of one-time keys (hot-set hit ratio); C scenario A at N = 256
//! on 2 threads; D resident memory after 1,000,000 inserts (one child process
//! per candidate, so one's freed memory does not flatter the next). A and C also run
//! as interleaved rounds with per-round ratios to `current` (lines starting `P`),
//! which background load on a small machine disturbs less than criterion's
//! one-candidate-after-another runs.
//!
//! Run: `cargo bench -p jotd-core --bench cache_compare`. Results: docs/cache-compare.md.

use criterion::{BenchmarkId, Criterion, Throughput};
use dashmap::DashMap;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Barrier, PoisonError, RwLock};
use std::time::{Duration, Instant};

const NOW: u64 = 1_800_000_000;
const KEY_LEN: usize = 180;
const PAYLOAD: usize = 200;
/// Weight of one entry, as `CachedToken::new` counts it: 2 × token + payload + 192.
const WEIGHT: usize = 2 * KEY_LEN + PAYLOAD + 192;
const MAX_BYTES: usize = 64 << 20;
const MAX_ENTRIES: usize = 100_000;
/// Scenario B's smaller bound, so that 10 × capacity of one-time keys runs fast.
const SCAN_BYTES: usize = 4 << 20;
const HOT: usize = 1_000;
/// One-time keys between two hot-key lookups: a hot key comes back after ~8,000
/// one-time keys, more than the 5,577 entries that 4 MiB holds.
const ONE_TIME_PER_HOT: usize = 8;
const NAMES: [&str; 4] = ["current", "quick_cache", "moka", "own"];

/// Stands in for `CachedToken`: ~200 bytes of payload, its weight and its death time.
struct Val {
    payload: Box<[u8]>,
    bytes: usize,
    dies_at: u64,
}

fn make_val(key: &[u8]) -> Arc<Val> {
    Arc::new(Val {
        payload: vec![key[key.len() - 1]; PAYLOAD].into(),
        bytes: WEIGHT,
        dies_at: NOW + 3600,
    })
}

/// The operations the engine needs from the verified-token cache.
trait TokenCacheImpl: Sync {
    fn get(&self, key: &[u8]) -> Option<Arc<Val>>;
    fn insert(&self, key: &[u8], val: Arc<Val>, weight_bytes: usize);
    /// Entries and accounted bytes held now (after any pending maintenance).
    fn held(&self) -> (usize, usize);
}

fn build(name: &str, max_bytes: usize) -> Box<dyn TokenCacheImpl> {
    match name {
        "current" => Box::new(Current::new(MAX_ENTRIES, max_bytes)),
        "quick_cache" => Box::new(Quick::new(max_bytes)),
        "moka" => Box::new(Moka::new(max_bytes)),
        "own" => Box::new(Own::new(max_bytes, max_bytes / WEIGHT)),
        _ => unreachable!("unknown candidate {name}"),
    }
}

// ---- current: a faithful copy of cache.rs's map, bounds and sweep ----

struct Current {
    map: DashMap<Box<[u8]>, Arc<Val>, foldhash::fast::RandomState>,
    max_entries: usize,
    max_bytes: usize,
    bytes: AtomicUsize,
    evicting: AtomicBool,
}

impl Current {
    fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            map: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            max_entries,
            max_bytes,
            bytes: AtomicUsize::new(0),
            evicting: AtomicBool::new(false),
        }
    }

    fn make_room(&self, now: u64) {
        if self.evicting.swap(true, Relaxed) {
            return;
        }
        let mut freed = 0usize;
        self.map.retain(|_, e| {
            let keep = e.dies_at > now;
            if !keep {
                freed += e.bytes;
            }
            keep
        });
        self.bytes.fetch_sub(freed, Relaxed);
        let full = |c: &Self| {
            c.map.len() * 8 > c.max_entries * 7 || c.bytes.load(Relaxed) * 8 > c.max_bytes * 7
        };
        if full(self) {
            let (mut n, mut freed) = (0u64, 0usize);
            self.map.retain(|_, e| {
                n += 1;
                let keep = n % 4 != 0;
                if !keep {
                    freed += e.bytes;
                }
                keep
            });
            self.bytes.fetch_sub(freed, Relaxed);
        }
        self.evicting.store(false, Relaxed);
    }
}

impl TokenCacheImpl for Current {
    fn get(&self, key: &[u8]) -> Option<Arc<Val>> {
        self.map.get(key).map(|e| Arc::clone(e.value()))
    }

    fn insert(&self, key: &[u8], val: Arc<Val>, weight_bytes: usize) {
        let over = self.map.len() >= self.max_entries
            || self.bytes.load(Relaxed) + weight_bytes > self.max_bytes;
        if over {
            self.make_room(NOW);
        }
        if let Some(old) = self.map.insert(key.into(), val) {
            self.bytes.fetch_sub(old.bytes, Relaxed);
        }
        self.bytes.fetch_add(weight_bytes, Relaxed);
    }

    fn held(&self) -> (usize, usize) {
        (self.map.len(), self.bytes.load(Relaxed))
    }
}

// ---- quick_cache ----

/// Weighs an entry by its accounted bytes.
#[derive(Clone, Copy)]
struct ByBytes;

impl quick_cache::Weighter<Box<[u8]>, Arc<Val>> for ByBytes {
    fn weight(&self, _key: &Box<[u8]>, val: &Arc<Val>) -> u64 {
        val.bytes as u64
    }
}

struct Quick(quick_cache::sync::Cache<Box<[u8]>, Arc<Val>, ByBytes>);

impl Quick {
    fn new(max_bytes: usize) -> Self {
        Self(quick_cache::sync::Cache::with_weighter(
            max_bytes / WEIGHT,
            max_bytes as u64,
            ByBytes,
        ))
    }
}

impl TokenCacheImpl for Quick {
    fn get(&self, key: &[u8]) -> Option<Arc<Val>> {
        // `[u8]: Equivalent<Box<[u8]>>` (through `Borrow`): no allocation per lookup.
        self.0.get(key)
    }

    fn insert(&self, key: &[u8], val: Arc<Val>, _weight_bytes: usize) {
        self.0.insert(key.into(), val);
    }

    fn held(&self) -> (usize, usize) {
        (self.0.len(), self.0.weight() as usize)
    }
}

// ---- moka ----

struct Moka(moka::sync::Cache<Box<[u8]>, Arc<Val>, foldhash::fast::RandomState>);

impl Moka {
    fn new(max_bytes: usize) -> Self {
        Self(
            moka::sync::Cache::builder()
                .max_capacity(max_bytes as u64)
                .weigher(|_, val: &Arc<Val>| u32::try_from(val.bytes).unwrap_or(u32::MAX))
                .build_with_hasher(foldhash::fast::RandomState::default()),
        )
    }
}

impl TokenCacheImpl for Moka {
    fn get(&self, key: &[u8]) -> Option<Arc<Val>> {
        self.0.get(key)
    }

    fn insert(&self, key: &[u8], val: Arc<Val>, _weight_bytes: usize) {
        self.0.insert(key.into(), val);
    }

    fn held(&self) -> (usize, usize) {
        self.0.run_pending_tasks();
        (
            self.0.entry_count() as usize,
            self.0.weighted_size() as usize,
        )
    }
}

// ---- own: sharded CLOCK + doorkeeper ----

const OWN_SHARDS: usize = 64;

/// Sharded CLOCK, byte-bounded per shard. A hit takes the shard's read lock and sets
/// the entry's reference bit only if it is clear (a hot entry's line is then only
/// read). Once a shard is full, a key is admitted only on its second sighting (the
/// doorkeeper remembers 2 to 4 capacities of misses), so a scan of one-time keys
/// evicts almost nothing.
struct Own {
    shards: Box<[Padded]>,
    hasher: foldhash::fast::RandomState,
}

/// One shard per 128 bytes, so one shard's lock word never shares a line with another's.
#[repr(align(128))]
struct Padded(RwLock<Shard>);

struct Entry {
    key: Box<[u8]>,
    val: Arc<Val>,
    weight: usize,
    referenced: AtomicBool,
}

/// The map is keyed by the 64-bit hash alone and the entry keeps the key, which a
/// lookup compares. Two keys with one hash share an entry (the later replaces the
/// earlier): a miss, never a wrong answer. `ring` holds the hashes in CLOCK order.
struct Shard {
    map: HashMap<u64, Entry, BuildHasherDefault<Prehashed>>,
    ring: Vec<u64>,
    hand: usize,
    bytes: usize,
    budget: usize,
    /// Doorkeeper: two generations of a 2-hash bit set; `seen[0]` takes new sightings.
    seen: [Vec<u64>; 2],
    seen_count: usize,
    window: usize,
}

/// The map's keys are already hashes.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys")
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl Own {
    fn new(max_bytes: usize, expected_entries: usize) -> Self {
        // A generation lasts 2 × a shard's entries of first sightings, so a key is
        // remembered for 2 to 4 cache capacities of misses.
        let window = (2 * expected_entries / OWN_SHARDS).max(16);
        let bits = (window * 8).next_power_of_two();
        let shards = (0..OWN_SHARDS)
            .map(|_| {
                Padded(RwLock::new(Shard {
                    map: HashMap::default(),
                    ring: Vec::new(),
                    hand: 0,
                    bytes: 0,
                    budget: max_bytes / OWN_SHARDS,
                    seen: [vec![0; bits / 64], vec![0; bits / 64]],
                    seen_count: 0,
                    window,
                }))
            })
            .collect();
        Self {
            shards,
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Shard from bits 40.., doorkeeper from bits 0..40, hashbrown's tag from the top 7.
    fn shard(&self, hash: u64) -> &RwLock<Shard> {
        &self.shards[(hash >> 40) as usize % OWN_SHARDS].0
    }
}

impl Shard {
    /// Whether `hash` was seen in this or the previous generation; records it if not.
    fn sighted_before(&mut self, hash: u64) -> bool {
        let mask = self.seen[0].len() * 64 - 1;
        let (a, b) = (hash as usize & mask, (hash >> 20) as usize & mask);
        let has = |s: &[u64]| s[a / 64] >> (a % 64) & 1 == 1 && s[b / 64] >> (b % 64) & 1 == 1;
        if has(&self.seen[0]) || has(&self.seen[1]) {
            return true;
        }
        self.seen[0][a / 64] |= 1 << (a % 64);
        self.seen[0][b / 64] |= 1 << (b % 64);
        self.seen_count += 1;
        if self.seen_count >= self.window {
            self.seen.swap(0, 1);
            self.seen[0].fill(0);
            self.seen_count = 0;
        }
        false
    }

    /// Evicts the first entry the hand finds unreferenced, clearing bits on the way.
    /// The last hash in the ring moves into the victim's place.
    fn evict_one(&mut self) {
        loop {
            if self.hand >= self.ring.len() {
                self.hand = 0;
            }
            let hash = self.ring[self.hand];
            let entry = self.map.get_mut(&hash).expect("ring and map agree");
            if std::mem::take(entry.referenced.get_mut()) {
                self.hand += 1;
                continue;
            }
            self.bytes -= entry.weight;
            self.map.remove(&hash);
            self.ring.swap_remove(self.hand);
            return;
        }
    }
}

impl TokenCacheImpl for Own {
    fn get(&self, key: &[u8]) -> Option<Arc<Val>> {
        let hash = self.hasher.hash_one(key);
        let shard = self
            .shard(hash)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = shard.map.get(&hash)?;
        if *entry.key != *key {
            return None;
        }
        if !entry.referenced.load(Relaxed) {
            entry.referenced.store(true, Relaxed);
        }
        Some(Arc::clone(&entry.val))
    }

    fn insert(&self, key: &[u8], val: Arc<Val>, weight: usize) {
        let hash = self.hasher.hash_one(key);
        let mut guard = self
            .shard(hash)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let s = &mut *guard;
        let entry = Entry {
            key: key.into(),
            val,
            weight,
            referenced: AtomicBool::new(false),
        };
        if let Some(old) = s.map.get_mut(&hash) {
            s.bytes = s.bytes - old.weight + weight;
            *old = entry;
            return;
        }
        if weight > s.budget {
            return;
        }
        if s.bytes + weight > s.budget {
            if !s.sighted_before(hash) {
                return;
            }
            while s.bytes + weight > s.budget {
                s.evict_one();
            }
        }
        s.map.insert(hash, entry);
        s.ring.push(hash);
        s.bytes += weight;
    }

    fn held(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(n, b), s| {
            let s = s.0.read().unwrap_or_else(PoisonError::into_inner);
            (n + s.map.len(), b + s.bytes)
        })
    }
}

// ---- workload ----

/// xorshift64*: cheap, so the loop measures the cache.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32;
        ((x * n as u64) >> 32) as usize
    }
}

/// A JWT-shaped key of `KEY_LEN` bytes, distinct per `i` (the index opens the payload).
fn key(i: usize) -> Box<[u8]> {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut k = b"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.".to_vec();
    let mut id = i;
    for _ in 0..6 {
        k.push(B64[id % 64]);
        id /= 64;
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9));
    while k.len() < KEY_LEN {
        let c = if k.len() == KEY_LEN - 44 {
            b'.'
        } else {
            B64[rng.below(64)]
        };
        k.push(c);
    }
    k.into()
}

fn keys(n: usize) -> Vec<Box<[u8]>> {
    (0..n).map(key).collect()
}

/// One `get`; on a miss, verify (here: build the entry) and `insert`. True on a hit.
#[inline]
fn lookup_or_insert(cache: &dyn TokenCacheImpl, key: &[u8]) -> bool {
    if let Some(v) = cache.get(key) {
        black_box(&v.payload);
        return true;
    }
    cache.insert(key, make_val(key), WEIGHT);
    false
}

fn scenario_a(c: &mut Criterion, keys: &[Box<[u8]>]) {
    let mut g = c.benchmark_group("A-lookup-or-insert");
    g.throughput(Throughput::Elements(1));
    for n in [256usize, 16_384, 65_536, 1_000_000] {
        for name in NAMES {
            let cache = build(name, MAX_BYTES);
            let mut rng = Rng(0x1234_5678 + n as u64);
            for k in &keys[..n] {
                lookup_or_insert(&*cache, k);
            }
            for _ in 0..(2 * n).min(2_000_000) {
                lookup_or_insert(&*cache, &keys[rng.below(n)]);
            }
            let (mut ops, mut hits) = (0u64, 0u64);
            g.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        hits += u64::from(lookup_or_insert(&*cache, &keys[rng.below(n)]));
                    }
                    ops += iters;
                    start.elapsed()
                });
            });
            let (entries, bytes) = cache.held();
            println!(
                "A n={n} {name}: hit ratio {:.4} over {ops} ops; holds {entries} entries, {:.1} MiB",
                hits as f64 / ops as f64,
                bytes as f64 / f64::from(1 << 20)
            );
        }
    }
    g.finish();
}

fn scenario_b(keys: &[Box<[u8]>]) {
    let one_time = 10 * SCAN_BYTES / WEIGHT;
    println!(
        "B: {HOT} hot keys, {one_time} one-time keys (10 x {} MiB / {WEIGHT} B), \
         one hot lookup per {ONE_TIME_PER_HOT} one-time keys",
        SCAN_BYTES >> 20
    );
    for name in NAMES {
        let cache = build(name, SCAN_BYTES);
        let mut rng = Rng(0xb0b);
        for k in &keys[..HOT] {
            lookup_or_insert(&*cache, k);
        }
        let (mut hot_ops, mut hot_hits) = (0u64, 0u64);
        let start = Instant::now();
        for (j, k) in keys[HOT..HOT + one_time].iter().enumerate() {
            lookup_or_insert(&*cache, k);
            if j % ONE_TIME_PER_HOT == 0 {
                hot_ops += 1;
                hot_hits += u64::from(lookup_or_insert(&*cache, &keys[rng.below(HOT)]));
            }
        }
        let elapsed = start.elapsed();
        let ops = one_time as u64 + hot_ops;
        println!(
            "B {name}: hot-set hit ratio {:.4} ({hot_hits}/{hot_ops}); one pass {:.2} Mops/s",
            hot_hits as f64 / hot_ops as f64,
            ops as f64 / elapsed.as_secs_f64() / 1e6
        );
    }
}

fn scenario_c(c: &mut Criterion, keys: &[Box<[u8]>]) {
    const N: usize = 256;
    let mut g = c.benchmark_group("C-2-threads-hits-256");
    g.throughput(Throughput::Elements(1));
    for name in NAMES {
        let cache = build(name, MAX_BYTES);
        for k in &keys[..N] {
            lookup_or_insert(&*cache, k);
        }
        let mut round = 0u64;
        // Each of 2 threads does `iters` lookups; the time is the slower thread's, so
        // the reported rate is per thread (compare with A's 1-thread n=256 cell).
        g.bench_function(BenchmarkId::new(name, "per-thread"), |b| {
            b.iter_custom(|iters| {
                round += 1;
                let barrier = Barrier::new(2);
                let cache = &*cache;
                std::thread::scope(|s| {
                    let workers: Vec<_> = (0..2u64)
                        .map(|t| {
                            let barrier = &barrier;
                            s.spawn(move || {
                                let mut rng = Rng(0x5eed + 2 * round + t);
                                barrier.wait();
                                let start = Instant::now();
                                for _ in 0..iters {
                                    lookup_or_insert(cache, &keys[rng.below(N)]);
                                }
                                start.elapsed()
                            })
                        })
                        .collect();
                    workers
                        .into_iter()
                        .map(|w| w.join().expect("worker"))
                        .max()
                        .unwrap_or_default()
                })
            });
        });
    }
    g.finish();
}

/// Lookup-or-insert on `threads` threads for `slice`; ops/s per thread.
fn timed_slice(
    cache: &dyn TokenCacheImpl,
    keys: &[Box<[u8]>],
    n: usize,
    threads: u64,
    seed: u64,
) -> f64 {
    const SLICE: Duration = Duration::from_millis(150);
    let barrier = Barrier::new(threads as usize);
    let rates: Vec<f64> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut rng = Rng(seed * 2 + t + 1);
                    barrier.wait();
                    let (start, mut ops) = (Instant::now(), 0u64);
                    while start.elapsed() < SLICE {
                        for _ in 0..1024 {
                            lookup_or_insert(cache, &keys[rng.below(n)]);
                        }
                        ops += 1024;
                    }
                    ops as f64 / start.elapsed().as_secs_f64()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect()
    });
    rates.iter().sum::<f64>() / rates.len() as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Scenarios A and C again, interleaved: in each of 9 rounds every candidate runs a
/// 150 ms slice (order rotated per round), and each ratio is to `current`'s slice in
/// the same round. Background load that comes and goes hits all four alike.
fn paired_rounds(keys: &[Box<[u8]>]) {
    const ROUNDS: usize = 9;
    let cells = [
        (256usize, 1u64),
        (16_384, 1),
        (65_536, 1),
        (1_000_000, 1),
        (256, 2),
    ];
    for (n, threads) in cells {
        let caches: Vec<_> = NAMES.iter().map(|name| build(name, MAX_BYTES)).collect();
        for cache in &caches {
            let mut rng = Rng(0x1234_5678 + n as u64);
            for k in &keys[..n] {
                lookup_or_insert(&**cache, k);
            }
            for _ in 0..(2 * n).min(2_000_000) {
                lookup_or_insert(&**cache, &keys[rng.below(n)]);
            }
        }
        let mut rates = vec![Vec::new(); NAMES.len()];
        for round in 0..ROUNDS {
            for i in (0..NAMES.len()).map(|i| (i + round) % NAMES.len()) {
                let seed = (round * NAMES.len() + i) as u64;
                rates[i].push(timed_slice(&*caches[i], keys, n, threads, seed));
            }
        }
        let line: Vec<String> = NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let ratios: Vec<f64> = (0..ROUNDS).map(|r| rates[i][r] / rates[0][r]).collect();
                let (lo, hi) = ratios
                    .iter()
                    .fold((f64::MAX, 0f64), |(l, h), &x| (l.min(x), h.max(x)));
                format!(
                    "{name} {:.3} M/s x{:.2} [{lo:.2}-{hi:.2}]",
                    median(rates[i].clone()) / 1e6,
                    median(ratios)
                )
            })
            .collect();
        println!(
            "P n={n} threads={threads} (per thread): {}",
            line.join("; ")
        );
    }
}

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("rss field");
    pages * 4096
}

/// In a child process: RSS growth over 1,000,000 distinct inserts into a 64 MiB cache.
fn scenario_d_child(name: &str) {
    const N: usize = 1_000_000;
    let keys = keys(N);
    let cache = build(name, MAX_BYTES);
    let before = resident_bytes();
    for k in &keys {
        lookup_or_insert(&*cache, k);
    }
    let (entries, bytes) = cache.held();
    let growth = resident_bytes() - before;
    println!(
        "D {name}: RSS +{:.1} MiB after {N} inserts (bound {} MiB); holds {entries} entries, \
         {:.1} MiB accounted; RSS growth / bound {:.2}",
        growth as f64 / f64::from(1 << 20),
        MAX_BYTES >> 20,
        bytes as f64 / f64::from(1 << 20),
        growth as f64 / MAX_BYTES as f64
    );
}

fn scenario_d() {
    let exe = std::env::current_exe().expect("own path");
    for name in NAMES {
        let out = std::process::Command::new(&exe)
            .env("CACHE_COMPARE_RSS", name)
            .output()
            .expect("child");
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

fn main() {
    if let Ok(name) = std::env::var("CACHE_COMPARE_RSS") {
        scenario_d_child(&name);
        return;
    }
    let keys = keys(1_000_000);
    scenario_b(&keys);
    scenario_d();
    paired_rounds(&keys);
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10)
        .configure_from_args();
    scenario_a(&mut c, &keys);
    scenario_c(&mut c, &keys);
    c.final_summary();
}
