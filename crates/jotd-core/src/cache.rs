//! The verified-token cache: gateways present the same token many times.
//!
//! Keyed by the exact token bytes (never by the signature alone). An entry
//! remembers what was verified once: signature, header, and the claim rules
//! that do not depend on time or the request. Time claims, revocation and
//! policy are checked again on every hit. Entries die at `exp` + leeway (or
//! `max_ttl`), and are ignored once their tenant's epoch changes.

use crate::decision::TokenInfo;
use crate::policy::Grants;
use dashmap::DashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
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
    /// Approximate bytes held now.
    pub bytes: usize,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to verify.
    pub misses: u64,
    /// Entries added.
    pub inserts: u64,
    /// Entries dropped to stay within bounds or because they died.
    pub evictions: u64,
}

/// Time claims of a verified token.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Times {
    pub(crate) exp: Option<u64>,
    pub(crate) nbf: Option<u64>,
    pub(crate) iat: Option<u64>,
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
        let bytes = 2 * token_len
            + tenant.len()
            + jti.as_ref().map_or(0, |j| j.len())
            + grants.heap_bytes()
            + info.heap_bytes()
            + 192;
        Self {
            tenant: tenant.into(),
            epoch,
            dies_at,
            times,
            jti,
            grants,
            info,
            bytes,
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

/// A worker's private copy of the token it keeps seeing. A single hot token
/// hit from many threads would otherwise bounce one shard lock and one
/// refcount between cores on every request; this copy is touched by one
/// worker only. It is filled on the second consecutive hit of the same entry,
/// and validated like any cache entry on every use.
#[derive(Debug, Default)]
pub(crate) struct HotToken {
    token: Vec<u8>,
    entry: Option<Arc<CachedToken>>,
    info: Option<Arc<TokenInfo>>,
    clears: u64,
    /// Address of the last shared entry hit (compared, never dereferenced).
    last_hit: usize,
}

impl HotToken {
    /// The memo's entry and private facts when it holds exactly `token`.
    #[inline]
    pub(crate) fn get(&self, token: &[u8], clears: u64) -> Option<(&CachedToken, &Arc<TokenInfo>)> {
        match (&self.entry, &self.info) {
            (Some(e), Some(i)) if self.clears == clears && self.token == token => Some((e, i)),
            _ => None,
        }
    }

    /// Notes a shared-cache hit; the second in a row on one entry fills the memo.
    pub(crate) fn saw(&mut self, token: &[u8], hit: &Arc<CachedToken>, clears: u64) {
        let addr = Arc::as_ptr(hit) as usize;
        if addr != self.last_hit {
            self.last_hit = addr;
            return;
        }
        self.token.clear();
        self.token.extend_from_slice(token);
        self.info = Some(Arc::new((*hit.info).clone()));
        self.entry = Some(Arc::clone(hit));
        self.clears = clears;
    }
}

/// Per-worker counts, flushed once per chunk so the hot path touches no shared counter.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LocalCounts {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) inserts: u64,
}

pub(crate) struct TokenCache {
    map: DashMap<Box<[u8]>, Arc<CachedToken>, foldhash::fast::RandomState>,
    config: CacheConfig,
    bytes: AtomicUsize,
    /// Bumped by `clear`, so per-worker hot-token memos drop what they hold.
    clears: AtomicU64,
    evicting: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
    inserts: AtomicU64,
    evictions: AtomicU64,
}

impl TokenCache {
    pub(crate) fn new(config: CacheConfig) -> Self {
        Self {
            map: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            config,
            bytes: AtomicUsize::new(0),
            clears: AtomicU64::new(0),
            evicting: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            inserts: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    pub(crate) const fn config(&self) -> &CacheConfig {
        &self.config
    }

    #[inline]
    pub(crate) fn get(&self, token: &[u8]) -> Option<Arc<CachedToken>> {
        self.map.get(token).map(|e| Arc::clone(e.value()))
    }

    pub(crate) fn insert(&self, token: &[u8], entry: CachedToken, now: u64) {
        let over = self.map.len() >= self.config.max_entries.get()
            || self.bytes.load(Relaxed) + entry.bytes > self.config.max_bytes.get();
        if over {
            self.make_room(now);
        }
        let bytes = entry.bytes;
        if let Some(old) = self.map.insert(token.into(), Arc::new(entry)) {
            self.bytes.fetch_sub(old.bytes, Relaxed);
        }
        self.bytes.fetch_add(bytes, Relaxed);
    }

    pub(crate) fn flush(&self, counts: &mut LocalCounts) {
        for (local, shared) in [
            (&mut counts.hits, &self.hits),
            (&mut counts.misses, &self.misses),
            (&mut counts.inserts, &self.inserts),
        ] {
            if *local != 0 {
                shared.fetch_add(std::mem::take(local), Relaxed);
            }
        }
    }

    /// Drops dead entries, then about a quarter of the rest if still above 7/8 of a bound.
    /// One thread evicts at a time; others insert meanwhile (the bound is soft by that much).
    fn make_room(&self, now: u64) {
        if self.evicting.swap(true, Relaxed) {
            return;
        }
        let mut dropped = 0u64;
        let mut freed = 0usize;
        self.map.retain(|_, e| {
            let keep = e.dies_at > now;
            if !keep {
                dropped += 1;
                freed += e.bytes;
            }
            keep
        });
        self.bytes.fetch_sub(freed, Relaxed);
        let full = |c: &Self| {
            c.map.len() * 8 > c.config.max_entries.get() * 7
                || c.bytes.load(Relaxed) * 8 > c.config.max_bytes.get() * 7
        };
        if full(self) {
            let (mut n, mut freed) = (0u64, 0usize);
            self.map.retain(|_, e| {
                n += 1;
                let keep = n % 4 != 0;
                if !keep {
                    dropped += 1;
                    freed += e.bytes;
                }
                keep
            });
            self.bytes.fetch_sub(freed, Relaxed);
        }
        self.evictions.fetch_add(dropped, Relaxed);
        self.evicting.store(false, Relaxed);
    }

    /// How many times the cache was cleared (read per lookup by hot-token memos).
    #[inline]
    pub(crate) fn clears(&self) -> u64 {
        self.clears.load(Relaxed)
    }

    pub(crate) fn clear(&self) {
        self.clears.fetch_add(1, Relaxed);
        let n = self.map.len() as u64;
        self.map.clear();
        self.bytes.store(0, Relaxed);
        self.evictions.fetch_add(n, Relaxed);
    }

    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.map.len(),
            bytes: self.bytes.load(Relaxed),
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            inserts: self.inserts.load(Relaxed),
            evictions: self.evictions.load(Relaxed),
        }
    }
}
