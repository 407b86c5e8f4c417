//! Batch verification over a rayon pool the caller owns.

use crate::decision::Decision;
use crate::engine::{Engine, Scratch};
use crate::request::{Request, UnixTime};
use crate::tenant::Snapshot;
use rayon::ThreadPool;
use rayon::prelude::*;

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
                .map_init(Scratch::new, |scratch, part| {
                    self.verify_chunk(scratch, snapshot, part, now)
                })
                .flatten_iter()
                .collect()
        })
    }

    /// Decides every request of a batch on `pool`, handing each chunk to
    /// `on_chunk(first_index, decisions)` as soon as it is done (completion
    /// order, not input order). Every index in `0..reqs.len()` is delivered
    /// exactly once before this returns.
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
        let chunk = self.config.chunk_size.get();
        pool.install(|| {
            reqs.par_chunks(chunk)
                .enumerate()
                .for_each_init(Scratch::new, |scratch, (i, part)| {
                    let decisions = self.verify_chunk(scratch, snapshot, part, now);
                    on_chunk(i * chunk, decisions);
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
        let out = part
            .iter()
            .map(|r| self.verify_with(scratch, snapshot, r, now))
            .collect();
        self.flush(scratch);
        out
    }
}
