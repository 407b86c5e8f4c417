//! The key store: one immutable [`Snapshot`], read once per batch without locks
//! (`arc-swap`), replaced whole when a new config validates.

use arc_swap::ArcSwap;
use jotd_core::Snapshot;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Holds the current snapshot. Readers `load()` it once per batch and keep
/// that `Arc` to the end of the batch: a swap never changes a batch in flight.
#[derive(Debug)]
pub struct KeyStore {
    current: ArcSwap<Snapshot>,
    generation: AtomicU64,
}

impl KeyStore {
    /// A store serving `first` (its generation should be 1).
    #[must_use]
    pub fn new(first: Snapshot) -> Self {
        let generation = AtomicU64::new(first.generation());
        Self {
            current: ArcSwap::from_pointee(first),
            generation,
        }
    }

    /// The snapshot to use for one batch.
    #[must_use]
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The generation the next snapshot should carry.
    #[must_use]
    pub fn next_generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire) + 1
    }

    /// Builds a snapshot with the next generation and swaps it in; on error the
    /// current snapshot keeps serving and the error is returned.
    ///
    /// # Errors
    /// Whatever `build` returns.
    pub fn replace<E>(&self, build: impl FnOnce(u64) -> Result<Snapshot, E>) -> Result<u64, E> {
        let generation = self.next_generation();
        let snapshot = build(generation)?;
        self.current.store(Arc::new(snapshot));
        self.generation.store(generation, Ordering::Release);
        Ok(generation)
    }
}
