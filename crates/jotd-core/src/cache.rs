//! The verified-token cache: gateways present the same token many times.
//!
//! Keyed by the tenant and the exact token bytes (never by the signature
//! alone; a token valid for two tenants has an entry for each). An entry
//! remembers what was verified once: signature, header, and the claim rules
//! that do not depend on time or the request. Time claims, revocation and
//! policy are checked again on every hit. Entries die at `exp` + leeway (or
//! `max_ttl`), and are ignored once their tenant's epoch changes.
//!
//! Never a pessimisation: the map is `quick_cache` (CLOCK-Pro/S3-FIFO style:
//! new entries start cold and only reuse makes them hot; O(1) eviction per
//! insert, never a sweep; a byte bound by weight), with hits taking a
//! per-thread read-lock slot. In front of it, once the cache has had to evict,
//! a doorkeeper admits a token only on evidence of reuse (its second sighting
//! within a window): a stream of one-time tokens costs a bit test each, not an
//! insert and an eviction, and cannot push the hot set out.
//!
//! A cache can still cost more than it saves: when nearly every token is new
//! and verifying one is cheap (HMAC), each lookup that misses (a hash of the
//! whole token and a probe of a map far bigger than the CPU's caches) adds
//! ~15 % to a verification that a rare hit does not win back; and when a
//! working set a little bigger than the cache recurs, every miss is admitted
//! and evicts another entry (an insert costs about one HMAC verification).
//! So the cache keeps score ([`Payoff`]): every window of lookups it weighs
//! what the hits saved against what the misses and inserts cost, and
//! - when the cache does not pay, only one token in [`SAMPLE_EVERY`] is looked
//!   up (the others are verified straight away, counted as `bypassed`); the
//!   sampled lookups keep measuring, so a hot set that appears brings every
//!   lookup back within a window;
//! - when most lookups would insert (churn), an admitted token gets in with
//!   probability 1/[`THROTTLE`] only, so a recurring working set larger than
//!   the cache settles into a stable part that hits instead of cycling through.
//!
//! Neither changes a decision: a token not looked up is verified in full.

use crate::decision::TokenInfo;
use crate::policy::Grants;
use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Verified-token cache limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Most entries held. Default: 100 000.
    pub max_entries: NonZeroUsize,
    /// Most bytes held (approximate: token, claims, bookkeeping). Default: 64 MiB.
    pub max_bytes: NonZeroUsize,
    /// Longest an entry lives, whatever its `exp`. Default: 1 hour.
    pub max_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: NonZeroUsize::new(100_000).expect("non-zero"),
            max_bytes: NonZeroUsize::new(64 << 20).expect("non-zero"),
            max_ttl: Duration::from_secs(3600),
        }
    }
}

/// Counters and sizes of the verified-token cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Entries held now.
    pub entries: usize,
    /// Bytes held now, as the bound measures them: each entry's approximate
    /// footprint, and at least `max_bytes / max_entries`.
    pub bytes: usize,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to verify.
    pub misses: u64,
    /// Entries added.
    pub inserts: u64,
    /// Entries dropped to stay within bounds (and every entry dropped by a clear).
    pub evictions: u64,
    /// Verified tokens not admitted: the cache was full and the token had not
    /// been seen before within the doorkeeper's window, or it was and the
    /// cache was churning and it lost the [`THROTTLE`] draw (or, rarely, the
    /// entry was too large for a shard).
    pub admission_rejected: u64,
    /// Tokens verified without a lookup: the cache was not paying for the
    /// traffic it saw, so only one token in [`SAMPLE_EVERY`] was looked up.
    pub bypassed: u64,
    /// One token in how many is looked up now: 1 while the cache pays, else
    /// [`SAMPLE_EVERY`].
    pub sample_every: u32,
    /// Whether admission is throttled now (most lookups would insert).
    pub throttled: bool,
}

impl CacheStats {
    /// Hits over lookups (bypassed tokens are not lookups), 0 when there was none.
    #[must_use]
    pub fn hit_ratio(&self) -> f64 {
        let lookups = self.hits + self.misses;
        if lookups == 0 {
            0.0
        } else {
            self.hits as f64 / lookups as f64
        }
    }
}

/// Time claims of a verified token.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Times {
    pub(crate) exp: Option<u64>,
    pub(crate) nbf: Option<u64>,
    pub(crate) iat: Option<u64>,
}

/// A cache key: the tenant a token was verified for, and the token (its
/// length as two bytes, the tenant id, the token). A token valid for two
/// tenants (one identity provider's keys configured for both) gets an entry
/// for each; keyed by the token alone, the two replaced each other and
/// neither hit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TokenKey(Box<[u8]>);

impl TokenKey {
    /// `None` for a tenant id over 65,535 bytes (the config allows 256
    /// characters; an embedder's may be longer): such a tenant is not cached.
    fn new(tenant: &str, token: &[u8]) -> Option<Self> {
        let n = u16::try_from(tenant.len()).ok()?;
        let mut key = Vec::with_capacity(Self::len(tenant, token.len()));
        key.extend_from_slice(&n.to_le_bytes());
        key.extend_from_slice(tenant.as_bytes());
        key.extend_from_slice(token);
        Some(Self(key.into_boxed_slice()))
    }

    const fn len(tenant: &str, token_len: usize) -> usize {
        2 + tenant.len() + token_len
    }

    fn parts(&self) -> (&[u8], &[u8]) {
        let n = usize::from(u16::from_le_bytes([self.0[0], self.0[1]]));
        self.0[2..].split_at(n)
    }
}

/// A lookup's borrowed [`TokenKey`]: hashed and compared as the key it names.
#[derive(Debug)]
pub(crate) struct KeyRef<'a> {
    pub(crate) tenant: &'a str,
    pub(crate) token: &'a [u8],
}

// A key and its borrowed form hash the token alone: the lookup costs what it
// did when the token was the whole key, and a token held for two tenants is
// two entries in one bucket, told apart by `equivalent`.
impl std::hash::Hash for KeyRef<'_> {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write(self.token);
    }
}

impl std::hash::Hash for TokenKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write(self.parts().1);
    }
}

impl quick_cache::Equivalent<TokenKey> for KeyRef<'_> {
    #[inline]
    fn equivalent(&self, key: &TokenKey) -> bool {
        key.parts() == (self.tenant.as_bytes(), self.token)
    }
}

/// What the cache keeps per token.
#[derive(Debug)]
pub(crate) struct CachedToken {
    pub(crate) tenant: Box<str>,
    pub(crate) epoch: u64,
    pub(crate) dies_at: u64,
    pub(crate) times: Times,
    pub(crate) jti: Option<Box<str>>,
    pub(crate) grants: Grants<'static>,
    pub(crate) info: Arc<TokenInfo>,
    bytes: usize,
    /// Set when the map evicts the entry: a worker's copy drops it then, so
    /// the copies keep no evicted entry alive beyond their next probe.
    evicted: AtomicBool,
}

/// The map's slot for an entry (key and value pointers, hash, metadata).
const SLOT_BYTES: usize = 64;

/// What a heap allocation of `n` bytes takes from the allocator: glibc
/// rounds `n` plus its 8-byte header up to 16 bytes, and no chunk is under
/// 32 (jemalloc's size classes are smaller). An empty allocation takes
/// nothing. The byte bound counts this, not `n`: an entry of many one-byte
/// strings takes 32 bytes for each.
pub(crate) const fn heap_alloc(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        let chunk = (n + 8).div_ceil(16) * 16;
        if chunk < 32 { 32 } else { chunk }
    }
}

impl CachedToken {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        token_len: usize,
        tenant: &str,
        epoch: u64,
        dies_at: u64,
        times: Times,
        jti: Option<Box<str>>,
        grants: Grants<'static>,
        info: Arc<TokenInfo>,
    ) -> Self {
        // What the entry really holds, so the byte bound holds in resident memory:
        // every allocation (the key with its tenant, the entry's and the token
        // facts' Arcs with their two counts, the tenant, the jti, and the heap
        // parts of the grants and facts) as the allocator sizes it, plus the
        // map's slot.
        let bytes = heap_alloc(TokenKey::len(tenant, token_len))
            + heap_alloc(std::mem::size_of::<Self>() + 16)
            + heap_alloc(std::mem::size_of::<TokenInfo>() + 16)
            + heap_alloc(tenant.len())
            + jti.as_ref().map_or(0, |j| heap_alloc(j.len()))
            + grants.heap_bytes()
            + info.heap_bytes()
            + SLOT_BYTES;
        Self {
            tenant: tenant.into(),
            epoch,
            dies_at,
            times,
            jti,
            grants,
            info,
            bytes,
            evicted: AtomicBool::new(false),
        }
    }
}

impl CachedToken {
    /// Whether this entry may answer for `tenant` at `now`.
    #[inline]
    pub(crate) fn valid_for(&self, tenant: &str, epoch: u64, now: u64) -> bool {
        *self.tenant == *tenant && self.epoch == epoch && now < self.dies_at
    }
}

/// A worker's private copies of the tokens it keeps seeing (a small
/// direct-mapped table, slot picked by the token's last bytes: base64url of
/// signature bits). Hits on the shared map take the shard's read lock and
/// bump the entry's and the token facts' refcounts, cache lines that every
/// worker writes: on many cores those lines bounce between them on every
/// hit. A copy here is touched by its worker only (its own facts, its own
/// count), is filled on the second shared hit in a row of one entry into its
/// slot (so a working set far larger than the table, whose tokens take turns
/// in each slot, does not churn it), and is validated like any cache entry on every use
/// (tenant, epoch, expiry), besides the cache's identity and its clears.
///
/// Bounded: [`HOT_SLOTS`] copies of tokens up to [`HOT_TOKEN_BYTES`] per
/// worker, each with its own copy of the token's facts, beside the cache's
/// byte bound: about 0.5 KiB a slot for a typical 300-byte token (~256 KiB
/// per worker thread when every slot is full), at most 512 × (1 KiB + the
/// facts). A copy whose entry the map evicted is dropped when its token is
/// next asked for or another token's shared hit lands in its slot; until
/// then it keeps that entry alive (at most one per slot). Copies taken
/// under an engine that is gone are dropped when the thread next serves an
/// engine with a cache.
#[derive(Debug, Default)]
pub(crate) struct HotTokens {
    slots: Vec<HotSlot>,
    /// The cache (its id) and clear count the copies were taken under.
    cache: u64,
    clears: u64,
}

#[derive(Debug, Default)]
struct HotSlot {
    /// Hits on the copy since it was taken (every [`TOUCH_EVERY`]th also reaches the map).
    uses: u32,
    /// The map's insert count when this copy last reached the map.
    touched_at: u64,
    tail: u64,
    token: Vec<u8>,
    entry: Option<Arc<CachedToken>>,
    info: Option<Arc<TokenInfo>>,
    /// Address of the last shared entry hit into this slot (compared, never dereferenced).
    last_hit: usize,
}

/// One hit in this many on a worker's copy is also looked up in the shared
/// map, so the map's eviction sees the token in use (a token served only from
/// copies would look idle there, be evicted, and be verified again).
pub(crate) const TOUCH_EVERY: u32 = 64;

/// A copy also reaches the map once the map has taken in 1/this of its
/// capacity (in smallest entries) since the copy last did: the map's eviction
/// turns with its inserts, not with a worker's hits, so a token used less
/// often than one in [`TOUCH_EVERY`] turns would otherwise look colder there
/// than a scan passing through, and be evicted though it is the hottest there
/// is. While nothing is inserted (a hot set that fits) copies stay off the
/// map; while the map churns they reach it about as often as the token is
/// used, which is what a lookup without copies costs. (1/16 still lost a
/// fifth of a hot set's lookups to a scan five times the cache.)
const TOUCH_SHARE: u64 = 256;

/// Copies per worker (a power of two).
pub const HOT_SLOTS: usize = 512;

/// Tokens longer than this are not copied (the table's bytes stay small).
pub const HOT_TOKEN_BYTES: usize = 1024;

impl HotTokens {
    /// The token's last 8 bytes (signature bits), which pick its slot and
    /// are compared before the token itself (no trip to the heap for another
    /// token's slot).
    #[inline]
    fn tail_of(token: &[u8]) -> u64 {
        let mut tail = [0u8; 8];
        let n = token.len().min(8);
        tail[..n].copy_from_slice(&token[token.len() - n..]);
        u64::from_le_bytes(tail)
    }

    #[inline]
    const fn slot_of(tail: u64) -> usize {
        (tail.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & (HOT_SLOTS - 1)
    }

    /// Drops every copy when the cache or its clear count changed since they were taken.
    #[inline]
    fn sync(&mut self, cache: u64, clears: u64) {
        if self.cache != cache || self.clears != clears {
            self.slots.clear();
            self.cache = cache;
            self.clears = clears;
        }
    }

    /// The copy's entry and private facts when the table holds exactly `token`
    /// taken under this cache and clear count, and whether this hit should
    /// also touch the shared map: one in [`TOUCH_EVERY`], and once the map has
    /// taken in `turn` inserts since the copy last touched it (`inserts` is
    /// the map's count now).
    #[inline]
    pub(crate) fn get(
        &mut self,
        token: &[u8],
        cache: u64,
        clears: u64,
        (inserts, turn): (u64, u64),
    ) -> Option<(&CachedToken, &Arc<TokenInfo>, bool)> {
        self.sync(cache, clears);
        let tail = Self::tail_of(token);
        let slot = self.slots.get_mut(Self::slot_of(tail))?;
        if slot.tail != tail || slot.token != token {
            return None;
        }
        if slot.entry.as_ref().is_some_and(|e| e.evicted.load(Relaxed)) {
            // Evicted from the map: let it go, and the slot is free to refill.
            slot.entry = None;
            slot.info = None;
            return None;
        }
        slot.uses = slot.uses.wrapping_add(1);
        let touch = slot.uses % TOUCH_EVERY == 0 || inserts.wrapping_sub(slot.touched_at) >= turn;
        if touch {
            slot.touched_at = inserts;
        }
        match (&slot.entry, &slot.info) {
            (Some(e), Some(i)) => Some((e, i, touch)),
            _ => None,
        }
    }

    /// Notes a shared-cache hit on `token` (after [`HotTokens::get`] missed,
    /// under the same cache and clear count); fills its slot when this is the
    /// second hit in a row of the same entry into it.
    pub(crate) fn saw(&mut self, token: &[u8], hit: &Arc<CachedToken>, inserts: u64) {
        if token.len() > HOT_TOKEN_BYTES {
            return;
        }
        if self.slots.is_empty() {
            self.slots.resize_with(HOT_SLOTS, HotSlot::default);
        }
        let tail = Self::tail_of(token);
        let slot = &mut self.slots[Self::slot_of(tail)];
        if slot.entry.as_ref().is_some_and(|e| e.evicted.load(Relaxed)) {
            // The copy held here was evicted from the map: let it go.
            slot.entry = None;
            slot.info = None;
        }
        let addr = Arc::as_ptr(hit) as usize;
        if addr != slot.last_hit {
            slot.last_hit = addr;
            return;
        }
        // Emptied first: a slot is never seen with one token's bytes and another's entry.
        slot.entry = None;
        slot.info = None;
        slot.uses = 0;
        slot.touched_at = inserts;
        slot.tail = tail;
        slot.token.clear();
        slot.token.extend_from_slice(token);
        slot.info = Some(Arc::new((*hit.info).clone()));
        slot.entry = Some(Arc::clone(hit));
    }
}

/// Per-worker counts, flushed once per chunk so the hot path touches no shared counter.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LocalCounts {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) inserts: u64,
    pub(crate) rejected: u64,
    /// Doorkeeper sightings, added to its window count at the flush.
    pub(crate) sightings: u64,
    /// Hits on tokens whose verification is costly (not HMAC).
    pub(crate) costly_hits: u64,
    /// Tokens the doorkeeper admitted into a full cache (before the throttle's draw).
    pub(crate) approved: u64,
    /// Tokens verified without a lookup.
    pub(crate) bypassed: u64,
    /// Signatures checked with a public key (RSA, ECDSA, EdDSA), whatever the
    /// outcome: the costly work (not flushed anywhere; batches read it).
    pub(crate) public_key_checks: u64,
}

type Hasher = foldhash::fast::RandomState;

/// An entry weighs its bytes, and at least `max_bytes / max_entries`, so the
/// one weight bound holds both limits.
#[derive(Clone, Copy, Debug)]
struct EntryWeight {
    floor: u64,
}

impl quick_cache::Weighter<TokenKey, Arc<CachedToken>> for EntryWeight {
    #[inline]
    fn weight(&self, _: &TokenKey, entry: &Arc<CachedToken>) -> u64 {
        (entry.bytes as u64).max(self.floor)
    }
}

/// Counts evictions and notes that the cache has filled up (admission starts then).
#[derive(Clone, Debug)]
struct Evictions(Arc<EvictionState>);

#[derive(Debug, Default)]
struct EvictionState {
    evictions: AtomicU64,
    /// Set at the first eviction, cleared by `clear`: from then on the doorkeeper decides.
    full: AtomicBool,
}

impl quick_cache::Lifecycle<TokenKey, Arc<CachedToken>> for Evictions {
    /// Up to two evicted entries, dropped after the shard lock is released.
    type RequestState = [Option<(TokenKey, Arc<CachedToken>)>; 2];

    #[inline]
    fn on_evict(&self, state: &mut Self::RequestState, key: TokenKey, val: Arc<CachedToken>) {
        self.0.evictions.fetch_add(1, Relaxed);
        val.evicted.store(true, Relaxed);
        if !self.0.full.load(Relaxed) {
            self.0.full.store(true, Relaxed);
        }
        if let Some(slot) = state.iter_mut().find(|s| s.is_none()) {
            *slot = Some((key, val));
        }
    }
}

/// TinyLFU's doorkeeper: a bit set of recently seen token hashes (two bits
/// each). A token is admitted when both its bits are already set. After
/// `window` sightings the set is cleared, so "recently" means within the last
/// window (sized to the cache's capacity in entries). Racy by design: a lost
/// bit costs one extra verification, never a wrong decision.
#[derive(Debug)]
struct Doorkeeper {
    bits: Box<[AtomicU64]>,
    mask: u64,
    seen: AtomicU64,
    window: u64,
}

impl Doorkeeper {
    fn new(window: usize) -> Self {
        // About 8 bits per windowed token: two bits each keep false admissions near 5 %.
        let words = (window.max(64) * 8 / 64).next_power_of_two();
        Self {
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            mask: (words * 64 - 1) as u64,
            seen: AtomicU64::new(0),
            window: window.max(64) as u64,
        }
    }

    /// Records a sighting of `hash`; true when it had been seen before. A bit
    /// already set is only read (no write to a shared line); the sighting is
    /// counted by the caller and added in [`Doorkeeper::note`].
    fn admit(&self, hash: u64) -> bool {
        let (a, b) = (hash & self.mask, (hash >> 32) & self.mask);
        let set = |bit: u64| {
            let word = &self.bits[(bit / 64) as usize];
            let flag = 1u64 << (bit % 64);
            word.load(Relaxed) & flag != 0 || word.fetch_or(flag, Relaxed) & flag != 0
        };
        set(a) & set(b)
    }

    /// Adds a worker's sightings; clears the set once a window has passed.
    fn note(&self, sightings: u64) {
        if self.seen.fetch_add(sightings, Relaxed) + sightings >= self.window {
            self.reset();
        }
    }

    fn reset(&self) {
        self.seen.store(0, Relaxed);
        for w in &self.bits {
            w.store(0, Relaxed);
        }
    }
}

/// While the cache does not pay, one token in this many is looked up.
pub const SAMPLE_EVERY: u32 = 16;

/// While the cache churns, one admitted token in this many is inserted.
pub const THROTTLE: u64 = 8;

/// Tokens per payoff window at least (all workers, bypassed ones included);
/// the window is as long as the doorkeeper's, the entries the cache holds,
/// so that a working set that recurs about as often as the cache turns over
/// is seen whole.
const WINDOW: u64 = 4096;

/// What one lookup that misses, an HMAC verification, an insert and a costly
/// (RSA, EC, EdDSA) verification cost, in lookups. Measured with `jotd speed
/// --algs HS256 --tokens N` on one core: a missing lookup in a 64 MiB cache
/// ~0.2 µs, an HS256 verification ~1.3 µs, an insert with its eviction
/// ~5 µs (allocations, an eviction and the frees, in a map far bigger than the
/// CPU's caches); RS256 ~30 µs, ES256 ~50 µs. Costly hits are counted low on purpose.
const MISS_COST: u64 = 1;
const HMAC_COST: u64 = 6;
const INSERT_COST: u64 = 24;
const COSTLY_COST: u64 = 120;

/// The cache's score over the last window and what it decided (see the module docs).
#[derive(Debug)]
struct Payoff {
    /// Read on every lookup: kept on its own cache line, written once per window.
    mode: Mode,
    /// Counter values at the window's start and the running score, kept by
    /// whoever closes a window.
    window: std::sync::Mutex<Window>,
    /// Tokens seen (looked up or bypassed) at which the current window closes.
    closes_at: AtomicU64,
    /// Tokens per window.
    len: u64,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Mode {
    sample_every: std::sync::atomic::AtomicU32,
    throttle: AtomicBool,
}

#[derive(Clone, Copy, Debug, Default)]
struct WindowStart {
    bypassed: u64,
    hits: u64,
    misses: u64,
    costly_hits: u64,
    approved: u64,
}

#[derive(Debug, Default)]
struct Window {
    start: WindowStart,
    /// What a lookup saved net, per 1024 lookups, averaged over windows (each
    /// new one weighs a quarter), so one lucky stretch of a long scan does not
    /// flip the mode.
    score: i64,
}

impl WindowStart {
    const fn seen(&self) -> u64 {
        self.hits + self.misses + self.bypassed
    }
}

/// The mode for the next window, from the last one's counts and the running
/// `score`: `(sample_every, throttle)`. While the cache has room every token
/// is looked up and every insert is an investment. Once it is full: throttle
/// admission when the admitted tokens' inserts would cost more than half of
/// what the hits saved (churn); then look every token up while what the hits
/// save covers the missing lookups and the inserts the next window will make
/// (the admitted ones, or one in [`THROTTLE`] of them under the throttle),
/// averaged over windows, else sample one in [`SAMPLE_EVERY`].
fn next_mode(w: WindowStart, full: bool, score: &mut i64) -> (u32, bool) {
    if !full {
        *score = 0;
        return (1, false);
    }
    let lookups = w.hits + w.misses;
    if lookups == 0 {
        return (SAMPLE_EVERY, false);
    }
    let cheap_hits = w.hits - w.costly_hits.min(w.hits);
    let saved = cheap_hits * HMAC_COST + w.costly_hits * COSTLY_COST;
    let throttle = w.approved * INSERT_COST * 2 > saved;
    let inserts = if throttle {
        w.approved / THROTTLE
    } else {
        w.approved
    };
    let spent = w.misses * MISS_COST + inserts * INSERT_COST;
    let net = (i128::from(saved) - i128::from(spent)) * 1024 / i128::from(lookups);
    let net = i64::try_from(net).unwrap_or(if net < 0 { i64::MIN / 4 } else { i64::MAX / 4 });
    *score = *score - *score / 4 + net / 4;
    (if *score >= 0 { 1 } else { SAMPLE_EVERY }, throttle)
}

/// The largest entry the shards are sized for: an 8 KiB token (the engine's
/// default cap) with its claims, grants and facts held again on the heap.
const LARGE_ENTRY: u64 = 40 << 10;

/// The smallest entry there is, for sizing the doorkeeper's window.
const SMALL_ENTRY: usize = 256;

/// Identities handed to caches (0 is no cache's: an empty table of copies).
static NEXT_CACHE_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) struct TokenCache {
    map: quick_cache::sync::Cache<TokenKey, Arc<CachedToken>, EntryWeight, Hasher, Evictions>,
    /// quick_cache hands an entry heavier than ~97 % of a shard straight back
    /// (evicted unseen): such an entry is turned away here instead.
    max_weight: u64,
    weigher: EntryWeight,
    state: Arc<EvictionState>,
    doorkeeper: Doorkeeper,
    hasher: Hasher,
    config: CacheConfig,
    /// This cache's identity (unique in the process), so a worker's copies
    /// taken from another engine's cache are never used for this one.
    id: u64,
    /// Bumped by `clear`, so per-worker hot-token memos drop what they hold.
    clears: AtomicU64,
    /// Inserts after which a worker's copy touches the map again (see [`TOUCH_SHARE`]).
    turn: u64,
    hits: AtomicU64,
    misses: AtomicU64,
    inserts: AtomicU64,
    rejected: AtomicU64,
    costly_hits: AtomicU64,
    approved: AtomicU64,
    bypassed: AtomicU64,
    payoff: Payoff,
}

impl TokenCache {
    pub(crate) fn new(config: CacheConfig) -> Self {
        let entries = config.max_entries.get();
        let bytes = config.max_bytes.get() as u64;
        let state = Arc::new(EvictionState::default());
        let hasher = Hasher::default();
        let weigher = EntryWeight {
            floor: (bytes / entries as u64).max(1),
        };
        // Shards (a power of two, at most 64) each big enough for 16 large entries, or one.
        let mut shards = 64u64;
        while shards > 1 && bytes / shards < 16 * LARGE_ENTRY.max(weigher.floor) {
            shards /= 2;
        }
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(entries)
            .weight_capacity(bytes)
            .shards(shards as usize)
            .build()
            .expect("capacities are set");
        let map = quick_cache::sync::Cache::with_options(
            options,
            weigher,
            hasher.clone(),
            Evictions(Arc::clone(&state)),
        );
        let max_weight = map.shard_capacity() / 100 * 96;
        // A window of the entries the bound can hold, however large max_entries is.
        let window = entries.min(config.max_bytes.get() / SMALL_ENTRY);
        Self {
            map,
            max_weight,
            weigher,
            state,
            doorkeeper: Doorkeeper::new(window),
            hasher,
            config,
            id: NEXT_CACHE_ID.fetch_add(1, Relaxed),
            clears: AtomicU64::new(0),
            turn: (window as u64 / TOUCH_SHARE).max(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            inserts: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            costly_hits: AtomicU64::new(0),
            approved: AtomicU64::new(0),
            bypassed: AtomicU64::new(0),
            payoff: Payoff {
                mode: Mode {
                    sample_every: std::sync::atomic::AtomicU32::new(1),
                    throttle: AtomicBool::new(false),
                },
                window: std::sync::Mutex::new(Window::default()),
                closes_at: AtomicU64::new((window as u64).max(WINDOW)),
                len: (window as u64).max(WINDOW),
            },
        }
    }

    /// Whether the `tick`-th token a worker sees is looked up: every one while
    /// the cache pays, else one in [`SAMPLE_EVERY`].
    #[inline]
    pub(crate) fn probes(&self, tick: u32) -> bool {
        let every = self.payoff.mode.sample_every.load(Relaxed);
        // Mixed, so that a workload that repeats with a period of a multiple of
        // `every` tokens is not sampled at the same tokens every time round.
        every <= 1
            || (u64::from(tick).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32)
                .is_multiple_of(u64::from(every))
    }

    pub(crate) const fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// The entry of `token` verified for `tenant`.
    #[inline]
    pub(crate) fn get(&self, tenant: &str, token: &[u8]) -> Option<Arc<CachedToken>> {
        self.map.get(&KeyRef { tenant, token })
    }

    /// Whether a verified token may be inserted: always while the cache has
    /// room; once it is full, only when the doorkeeper has seen the token
    /// before within its window (else it is counted as rejected).
    /// While the cache churns, an admitted token also has to win a 1 in
    /// [`THROTTLE`] draw (mixed from the token's hash and the worker's `tick`).
    pub(crate) fn admits(&self, token: &[u8], counts: &mut LocalCounts, tick: u32) -> bool {
        // The doorkeeper hashes the token's last 16 bytes: base64url of 96 signature bits,
        // distinct for distinct tokens, and a fraction of the cost of hashing the whole token.
        if !self.state.full.load(Relaxed) {
            return true;
        }
        let tail = &token[token.len().saturating_sub(16)..];
        counts.sightings += 1;
        let hash = self.hasher.hash_one(tail);
        if !self.doorkeeper.admit(hash) {
            counts.rejected += 1;
            return false;
        }
        counts.approved += 1;
        if self.payoff.mode.throttle.load(Relaxed) {
            let draw = (hash ^ u64::from(tick).wrapping_mul(0x9E37_79B9_7F4A_7C15))
                .wrapping_mul(0xD6E8_FEB8_6659_FD93);
            if draw >> 32 & (THROTTLE - 1) != 0 {
                counts.rejected += 1;
                return false;
            }
        }
        true
    }

    /// Inserts a verified token that [`TokenCache::admits`] let in; one too
    /// large for a shard is counted as rejected instead.
    pub(crate) fn insert(&self, token: &[u8], entry: CachedToken, counts: &mut LocalCounts) {
        let Some(key) = TokenKey::new(&entry.tenant, token) else {
            counts.rejected += 1;
            return;
        };
        let entry = Arc::new(entry);
        if quick_cache::Weighter::weight(&self.weigher, &key, &entry) > self.max_weight {
            counts.rejected += 1;
            return;
        }
        self.map.insert(key, entry);
        counts.inserts += 1;
    }

    pub(crate) fn flush(&self, counts: &mut LocalCounts) {
        let looked = counts.hits + counts.misses;
        for (local, shared) in [
            (&mut counts.hits, &self.hits),
            (&mut counts.misses, &self.misses),
            (&mut counts.inserts, &self.inserts),
            (&mut counts.rejected, &self.rejected),
            (&mut counts.costly_hits, &self.costly_hits),
            (&mut counts.approved, &self.approved),
            (&mut counts.bypassed, &self.bypassed),
        ] {
            if *local != 0 {
                shared.fetch_add(std::mem::take(local), Relaxed);
            }
        }
        if counts.sightings != 0 {
            self.doorkeeper.note(std::mem::take(&mut counts.sightings));
        }
        if looked != 0 {
            self.score();
        }
    }

    /// Closes the payoff window once it holds [`WINDOW`] lookups, and sets
    /// the mode for the next one. One worker closes it; others go on.
    fn score(&self) {
        let now = self.window_now();
        if now.seen() < self.payoff.closes_at.load(Relaxed) {
            return;
        }
        let Ok(mut window) = self.payoff.window.try_lock() else {
            return;
        };
        let start = window.start;
        let now = self.window_now();
        if now.seen() < self.payoff.closes_at.load(Relaxed) {
            return;
        }
        let w = WindowStart {
            bypassed: now.bypassed.saturating_sub(start.bypassed),
            hits: now.hits.saturating_sub(start.hits),
            misses: now.misses.saturating_sub(start.misses),
            costly_hits: now.costly_hits.saturating_sub(start.costly_hits),
            approved: now.approved.saturating_sub(start.approved),
        };
        let mode = &self.payoff.mode;
        let (every, throttle) = next_mode(w, self.state.full.load(Relaxed), &mut window.score);
        mode.sample_every.store(every, Relaxed);
        mode.throttle.store(throttle, Relaxed);
        window.start = now;
        self.payoff
            .closes_at
            .store(now.seen() + self.payoff.len, Relaxed);
    }

    fn window_now(&self) -> WindowStart {
        WindowStart {
            bypassed: self.bypassed.load(Relaxed),
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            costly_hits: self.costly_hits.load(Relaxed),
            approved: self.approved.load(Relaxed),
        }
    }

    /// This cache's identity in the process.
    #[inline]
    pub(crate) const fn id(&self) -> u64 {
        self.id
    }

    /// How many times the cache was cleared (read per lookup by hot-token memos).
    #[inline]
    pub(crate) fn clears(&self) -> u64 {
        self.clears.load(Relaxed)
    }

    /// The map's insert count (as flushed) and the inserts after which a
    /// worker's copy touches the map again: read per copy hit.
    #[inline]
    pub(crate) fn turnover(&self) -> (u64, u64) {
        (self.inserts.load(Relaxed), self.turn)
    }

    pub(crate) fn clear(&self) {
        self.clears.fetch_add(1, Relaxed);
        let n = self.map.len() as u64;
        self.map.clear();
        // Again once the map is empty: a worker that read the first count
        // may have copied an entry from a shard not yet drained (a clear does
        // not evict one by one, so no entry is marked); this count drops it.
        self.clears.fetch_add(1, Relaxed);
        self.doorkeeper.reset();
        self.state.full.store(false, Relaxed);
        // An empty cache starts paying again: every token looked up, no throttle.
        if let Ok(mut w) = self.payoff.window.lock() {
            w.score = 0;
        }
        self.payoff.mode.sample_every.store(1, Relaxed);
        self.payoff.mode.throttle.store(false, Relaxed);
        self.state.evictions.fetch_add(n, Relaxed);
    }

    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.map.len(),
            bytes: self.map.weight() as usize,
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            inserts: self.inserts.load(Relaxed),
            evictions: self.state.evictions.load(Relaxed),
            admission_rejected: self.rejected.load(Relaxed),
            bypassed: self.bypassed.load(Relaxed),
            sample_every: self.payoff.mode.sample_every.load(Relaxed),
            throttled: self.payoff.mode.throttle.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod payoff_tests {
    use super::{SAMPLE_EVERY, WindowStart, next_mode};

    fn window(hits: u64, misses: u64, costly_hits: u64, approved: u64) -> WindowStart {
        WindowStart {
            bypassed: 0,
            hits,
            misses,
            costly_hits,
            approved,
        }
    }

    /// Runs `w` for a few windows from a neutral score; returns the last mode.
    fn settle(w: WindowStart) -> (u32, bool) {
        let mut score = 0;
        let mut mode = (0, false);
        for _ in 0..8 {
            mode = next_mode(w, true, &mut score);
        }
        mode
    }

    #[test]
    fn a_cache_with_room_looks_every_token_up() {
        let mut score = -5000;
        assert_eq!(
            next_mode(window(0, 4096, 0, 0), false, &mut score),
            (1, false)
        );
        assert_eq!(score, 0, "a cache with room starts its score afresh");
    }

    #[test]
    fn new_cheap_tokens_only_are_sampled() {
        assert_eq!(settle(window(0, 4096, 0, 0)), (SAMPLE_EVERY, false));
        assert_eq!(settle(window(40, 4056, 0, 0)), (SAMPLE_EVERY, false));
    }

    #[test]
    fn hits_on_cheap_tokens_pay_when_they_cover_the_misses() {
        assert_eq!(settle(window(4000, 96, 0, 0)), (1, false));
        assert_eq!(settle(window(1024, 3072, 0, 0)), (1, false));
    }

    #[test]
    fn a_few_hits_on_costly_tokens_pay_for_many_cheap_misses() {
        // 2 % of lookups hit RSA/EC tokens, the rest are new HMAC tokens.
        assert_eq!(settle(window(80, 4016, 80, 0)), (1, false));
    }

    #[test]
    fn churn_throttles_admission_and_keeps_lookups_when_hits_still_pay() {
        // Half the lookups hit, nearly every miss would insert.
        assert_eq!(settle(window(2048, 2048, 0, 2000)), (1, true));
        // Few hits and many admitted inserts: throttled, and sampled.
        assert_eq!(settle(window(100, 3996, 0, 3000)), (SAMPLE_EVERY, true));
    }

    #[test]
    fn one_lucky_window_does_not_flip_a_long_scan() {
        let mut score = 0;
        for _ in 0..8 {
            next_mode(window(0, 4096, 0, 0), true, &mut score);
        }
        assert_eq!(
            next_mode(window(1500, 2596, 0, 0), true, &mut score).0,
            SAMPLE_EVERY
        );
        // A hot set that stays brings every lookup back within a few windows.
        let mut back = 0;
        while next_mode(window(3000, 1096, 0, 0), true, &mut score).0 != 1 {
            back += 1;
            assert!(back < 3, "still sampling after {back} hot windows");
        }
    }
}
