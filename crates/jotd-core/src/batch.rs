//! Batch verification over a rayon pool the caller owns.

use crate::decision::Decision;
use crate::engine::{Engine, Scratch};
use crate::request::{Request, UnixTime};
use crate::tenant::Snapshot;
use rayon::ThreadPool;
use rayon::prelude::*;
use std::cell::RefCell;

thread_local! {
    /// This thread's scratch between chunks and batches: decoding buffers
    /// already grown, the header memo, and the worker's private copies of hot
    /// tokens (which only pay if they outlive a batch). Taken out while in
    /// use, so a nested call gets a fresh one.
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's scratch. Its cache counts must be flushed
/// before `f` returns (every caller flushes per chunk).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    let mut scratch = SCRATCH.with(|c| c.borrow_mut().take()).unwrap_or_default();
    let out = f(&mut scratch);
    SCRATCH.with(|c| *c.borrow_mut() = Some(scratch));
    out
}

impl Engine {
    /// Decides every request of a batch on `pool`, returning decisions in input order.
    ///
    /// Work is split in chunks of [`EngineConfig::chunk_size`](crate::EngineConfig);
    /// keys come from the one `snapshot` for the whole batch; nothing is shared
    /// between threads but the snapshot (read-only) and the token cache.
    #[must_use]
    pub fn verify_batch(
        &self,
        pool: &ThreadPool,
        snapshot: &Snapshot,
        reqs: &[Request<'_>],
        now: UnixTime,
    ) -> Vec<Decision> {
        let chunk = self.config.chunk_size.get();
        pool.install(|| {
            reqs.par_chunks(chunk)
                .map(|part| with_scratch(|scratch| self.verify_chunk(scratch, snapshot, part, now)))
                .flatten_iter()
                .collect()
        })
    }

    /// Decides every request of a batch on `pool`, handing each chunk to
    /// `on_chunk(first_index, decisions)` as soon as it is done (completion
    /// order, not input order). Every index in `0..reqs.len()` is delivered
    /// exactly once before this returns.
    ///
    /// The first few items are decided on the calling thread. While every
    /// token decided there needed no costly signature check (a cache hit,
    /// HMAC, or refused before its signature), the batch stays on the calling
    /// thread chunk by chunk: waking other threads would cost more than the
    /// work (a batch of 64 cached tokens is a few microseconds). Otherwise the
    /// rest is shared on `pool`, cut so that a batch smaller than
    /// `chunk_size` × the pool's threads gives every thread a chunk (a lone
    /// batch on an idle pool is spread over every thread); a big batch keeps
    /// whole chunks.
    pub fn verify_batch_streaming<F>(
        &self,
        pool: &ThreadPool,
        snapshot: &Snapshot,
        reqs: &[Request<'_>],
        now: UnixTime,
        on_chunk: F,
    ) where
        F: Fn(usize, Vec<Decision>) + Sync,
    {
        let chunk = streaming_chunk(
            self.config.chunk_size.get(),
            reqs.len(),
            pool.current_num_threads(),
        );
        let start = with_scratch(|s| {
            self.while_cheap(s, snapshot, reqs, now, chunk, usize::MAX, &on_chunk)
        });
        self.verify_rest_on_pool(pool, snapshot, reqs, start, now, chunk, &on_chunk);
    }

    /// Decides the first items of a batch on the calling thread while they
    /// are cheap (a cache hit, HMAC, or refused before the signature) and at
    /// most `limit` of them, stopping right after the first costly one,
    /// handing each chunk to `on_chunk(first_index,
    /// decisions)`; returns how many were decided (a prefix of `reqs`). A
    /// driver that must not block (an async I/O thread) calls this first and
    /// [`Engine::verify_batch_streaming`] on the pool for the rest
    /// (`reqs[n..]`), if any. Updates the hint [`Engine::batches_are_cheap`].
    pub fn verify_batch_while_cheap<F>(
        &self,
        snapshot: &Snapshot,
        reqs: &[Request<'_>],
        now: UnixTime,
        limit: usize,
        on_chunk: F,
    ) -> usize
    where
        F: Fn(usize, Vec<Decision>) + Sync,
    {
        let chunk = self.config.chunk_size.get();
        with_scratch(|s| self.while_cheap(s, snapshot, reqs, now, chunk, limit, &on_chunk))
    }

    #[allow(clippy::too_many_arguments)]
    fn while_cheap<F>(
        &self,
        scratch: &mut Scratch,
        snapshot: &Snapshot,
        reqs: &[Request<'_>],
        now: UnixTime,
        chunk: usize,
        limit: usize,
        on_chunk: &F,
    ) -> usize
    where
        F: Fn(usize, Vec<Decision>) + Sync,
    {
        let mut start = 0;
        let mut cheap = true;
        let end = reqs.len().min(limit);
        while cheap && start < end {
            // A short probe first, so a costly batch loses little latency.
            let len = if start == 0 { chunk.min(PROBE) } else { chunk };
            let part = &reqs[start..(start + len).min(end)];
            let mut decisions = Vec::with_capacity(part.len());
            for r in part {
                let checks = scratch.counts.public_key_checks;
                let d = self.verify_with(scratch, snapshot, r, now);
                // Costly: a signature was checked with a public key, whatever
                // its outcome (a forged signature costs as much as a good one;
                // judged by the decision, a flood of forgeries ran inline).
                cheap = scratch.counts.public_key_checks == checks;
                decisions.push(d);
                if !cheap {
                    // The rest goes where costly work belongs: at most this
                    // one costly item was decided on the calling thread.
                    break;
                }
            }
            self.flush(scratch);
            let decided = decisions.len();
            on_chunk(start, decisions);
            start += decided;
        }
        self.cheap
            .store(cheap, std::sync::atomic::Ordering::Relaxed);
        start
    }

    #[allow(clippy::too_many_arguments)]
    fn verify_rest_on_pool<F>(
        &self,
        pool: &ThreadPool,
        snapshot: &Snapshot,
        reqs: &[Request<'_>],
        start: usize,
        now: UnixTime,
        chunk: usize,
        on_chunk: &F,
    ) where
        F: Fn(usize, Vec<Decision>) + Sync,
    {
        if start >= reqs.len() {
            return;
        }
        let rest = &reqs[start..];
        pool.install(|| {
            rest.par_chunks(chunk).enumerate().for_each(|(i, part)| {
                let decisions =
                    with_scratch(|scratch| self.verify_chunk(scratch, snapshot, part, now));
                on_chunk(start + i * chunk, decisions);
            });
        });
    }

    fn verify_chunk(
        &self,
        scratch: &mut Scratch,
        snapshot: &Snapshot,
        part: &[Request<'_>],
        now: UnixTime,
    ) -> Vec<Decision> {
        let out = self.verify_chunk_unflushed(scratch, snapshot, part, now);
        self.flush(scratch);
        out
    }

    fn verify_chunk_unflushed(
        &self,
        scratch: &mut Scratch,
        snapshot: &Snapshot,
        part: &[Request<'_>],
        now: UnixTime,
    ) -> Vec<Decision> {
        part.iter()
            .map(|r| self.verify_with(scratch, snapshot, r, now))
            .collect()
    }
}

/// Items decided on the calling thread before a batch is known to be cheap.
const PROBE: usize = 4;

/// Items per streamed chunk: `configured`, or fewer so that a batch of
/// `items` gives every one of `threads` a chunk.
fn streaming_chunk(configured: usize, items: usize, threads: usize) -> usize {
    items.div_ceil(threads.max(1)).clamp(1, configured.max(1))
}

#[cfg(test)]
mod tests {
    use super::streaming_chunk;

    #[test]
    fn small_batches_are_spread_over_every_thread_and_big_ones_keep_whole_chunks() {
        // 64 items on 12 threads: 6 per chunk (11 chunks) rather than 4 of 16.
        assert_eq!(streaming_chunk(16, 64, 12), 6);
        // On 2 threads the configured chunk already gives each a share.
        assert_eq!(streaming_chunk(16, 64, 2), 16);
        assert_eq!(streaming_chunk(16, 4096, 16), 16);
        assert_eq!(streaming_chunk(16, 3, 12), 1);
        assert_eq!(streaming_chunk(16, 0, 12), 1);
    }
}
