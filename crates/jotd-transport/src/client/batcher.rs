//! Micro-batching: single checks from many tasks gathered into batches.
//!
//! A gateway sees one request at a time; jotd pays off per batch. A
//! [`Batcher`] takes checks from any number of tasks and sends them to the
//! pool through its [`Client`] as batches, Nagle-style:
//!
//! - while fewer than `eager_batches` batches are outstanding, whatever is
//!   queued goes out at once (a lone check waits for nothing);
//! - otherwise checks gather until `max_items` are queued, `max_delay` has
//!   passed since the oldest one arrived, or an outstanding batch is answered.
//!
//! So light load sees no added delay and heavy load forms large batches. Each
//! check has its own deadline and gets exactly one outcome: its decision, or
//! an error ([`CheckError`]); a check whose caller has gone (timed out,
//! dropped) is left out of the batch when it has not been sent yet.

use super::{Client, ClientDecision, ClientError};
use crate::messages::Item;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How checks are gathered into batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatcherOptions {
    /// A batch is sent once this many checks are queued. Default 64.
    pub max_items: NonZeroUsize,
    /// The longest a check waits to be sent (tokio's timers tick in
    /// milliseconds: shorter values act as 1 ms; longer than an hour acts as
    /// an hour, so no clock arithmetic overflows). Default 1 ms.
    pub max_delay: Duration,
    /// Queued checks go out at once while fewer batches than this are
    /// outstanding. Default 1.
    pub eager_batches: NonZeroUsize,
    /// Checks queued before [`Batcher::check`] answers `Overloaded` at once.
    /// Default 65 536.
    pub max_queued: NonZeroUsize,
    /// A batch holds at most about this many bytes of checks (tokens,
    /// tenants, methods, addresses, headers), so no batch nears the server's
    /// frame limit; a single larger check goes alone. Default 1 MiB.
    pub max_batch_bytes: NonZeroUsize,
}

impl Default for BatcherOptions {
    fn default() -> Self {
        Self {
            max_items: NonZeroUsize::new(64).expect("non-zero"),
            max_delay: Duration::from_millis(1),
            eager_batches: NonZeroUsize::new(1).expect("non-zero"),
            max_queued: NonZeroUsize::new(65_536).expect("non-zero"),
            max_batch_bytes: NonZeroUsize::new(1 << 20).expect("non-zero"),
        }
    }
}

/// One request to check, owned (it crosses tasks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Check {
    /// Bearer token bytes (without `Bearer `), when the request had one.
    pub token: Option<Vec<u8>>,
    /// Tenant id.
    pub tenant: String,
    /// JSON-RPC method.
    pub method: Option<String>,
    /// Addresses the request touches.
    pub addresses: Vec<String>,
    /// HTTP `Origin`.
    pub origin: Option<String>,
    /// HTTP `User-Agent`.
    pub user_agent: Option<String>,
}

impl Check {
    /// About the bytes this check takes in a batch frame.
    fn size(&self) -> usize {
        16 + self.token.as_ref().map_or(0, Vec::len)
            + self.tenant.len()
            + self.method.as_ref().map_or(0, String::len)
            + self.addresses.iter().map(|a| a.len() + 2).sum::<usize>()
            + self.origin.as_ref().map_or(0, String::len)
            + self.user_agent.as_ref().map_or(0, String::len)
    }

    fn item(&self) -> Item<'_> {
        Item {
            token: self.token.as_deref(),
            tenant: &self.tenant,
            method: self.method.as_deref(),
            addresses: self.addresses.iter().map(String::as_str).collect(),
            origin: self.origin.as_deref(),
            user_agent: self.user_agent.as_deref(),
        }
    }
}

/// Why a check has no decision. The caller fails closed (or open, where its
/// operator said so).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The check's deadline passed before its decision arrived.
    #[error("no decision within the check's deadline")]
    Deadline,
    /// More checks are queued than `max_queued`.
    #[error("too many checks queued")]
    Overloaded,
    /// The batch carrying the check failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The batcher has shut down.
    #[error("batcher closed")]
    Closed,
}

/// Why a batch was sent (for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    /// `max_items` checks were queued.
    Full,
    /// Fewer than `eager_batches` batches were outstanding.
    Eager,
    /// An outstanding batch was answered.
    Answered,
    /// The oldest queued check had waited `max_delay`.
    Delay,
}

/// What a batcher did, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatcherStats {
    /// Checks taken.
    pub checks: u64,
    /// Batches sent.
    pub batches: u64,
    /// Checks sent in those batches.
    pub items: u64,
    /// Batches sent because `max_items` were queued, …
    pub flush_full: u64,
    /// … because few batches were outstanding, …
    pub flush_eager: u64,
    /// … because an outstanding batch was answered, …
    pub flush_answered: u64,
    /// … because the oldest check had waited `max_delay`.
    pub flush_delay: u64,
    /// Checks dropped before sending: their caller had gone or their deadline passed.
    pub abandoned: u64,
    /// Checks refused because the queue was full.
    pub overloaded: u64,
    /// Checks whose batch failed while their caller still waited (a check
    /// whose deadline passed first is not counted here).
    pub failed: u64,
    /// Batches stopped in flight because every check in them had gone (its
    /// deadline passed or its caller dropped it): their streams are reset, so
    /// the pool stops spending work and load on answers nobody reads.
    pub cancelled: u64,
}

#[derive(Debug, Default)]
struct Counters {
    checks: AtomicU64,
    batches: AtomicU64,
    items: AtomicU64,
    flush: [AtomicU64; 4],
    abandoned: AtomicU64,
    overloaded: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    queued: AtomicU64,
}

struct Queued {
    check: Check,
    /// When the check was queued: the flush timer runs from the oldest one
    /// waiting, also after a batch took only part of the queue.
    arrived: Instant,
    deadline: Instant,
    reply: oneshot::Sender<Result<ClientDecision, CheckError>>,
}

/// Gathers single checks into batches (see the module docs). Cheap to clone;
/// the flushing task ends when the last clone is dropped.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<Queued>,
    client: Arc<Client>,
    counters: Arc<Counters>,
    max_queued: u64,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl Batcher {
    /// Starts the flushing task on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    #[must_use]
    pub fn new(client: Arc<Client>, opts: BatcherOptions) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        tokio::spawn(flush_loop(
            Arc::clone(&client),
            opts,
            rx,
            Arc::clone(&counters),
        ));
        Self {
            tx,
            client,
            counters,
            max_queued: opts.max_queued.get() as u64,
        }
    }

    /// Whether the client holds a live connection to at least one endpoint
    /// now. A caller that fails open on [`CheckError::Deadline`] should do so
    /// only when this is false: a deadline missed while the pool is reachable
    /// is that check's own doing (a held item, a slow key fetch), not the
    /// pool being down.
    #[must_use]
    pub fn pool_reachable(&self) -> bool {
        self.client.has_live_connection()
    }

    /// Checks one request; waits for its decision until `deadline`.
    ///
    /// # Errors
    /// See [`CheckError`].
    pub async fn check(
        &self,
        check: Check,
        deadline: Instant,
    ) -> Result<ClientDecision, CheckError> {
        let c = &self.counters;
        c.checks.fetch_add(1, Relaxed);
        if c.queued.fetch_add(1, Relaxed) >= self.max_queued {
            c.queued.fetch_sub(1, Relaxed);
            c.overloaded.fetch_add(1, Relaxed);
            return Err(CheckError::Overloaded);
        }
        let (reply, answer) = oneshot::channel();
        if self
            .tx
            .send(Queued {
                check,
                arrived: Instant::now(),
                deadline,
                reply,
            })
            .is_err()
        {
            c.queued.fetch_sub(1, Relaxed);
            return Err(CheckError::Closed);
        }
        match tokio::time::timeout_at(deadline, answer).await {
            // A failure that landed on the deadline's own tick is the
            // deadline's (the caller's rules for a missed deadline apply).
            Ok(Ok(Err(_))) if Instant::now() >= deadline => Err(CheckError::Deadline),
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(CheckError::Closed),
            Err(_) => Err(CheckError::Deadline),
        }
    }

    /// Counters since the batcher started.
    #[must_use]
    pub fn stats(&self) -> BatcherStats {
        let c = &self.counters;
        let f = |i: usize| c.flush[i].load(Relaxed);
        BatcherStats {
            checks: c.checks.load(Relaxed),
            batches: c.batches.load(Relaxed),
            items: c.items.load(Relaxed),
            flush_full: f(0),
            flush_eager: f(1),
            flush_answered: f(2),
            flush_delay: f(3),
            abandoned: c.abandoned.load(Relaxed),
            cancelled: c.cancelled.load(Relaxed),
            overloaded: c.overloaded.load(Relaxed),
            failed: c.failed.load(Relaxed),
        }
    }
}

async fn flush_loop(
    client: Arc<Client>,
    opts: BatcherOptions,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    counters: Arc<Counters>,
) {
    // `oldest + max_delay` is computed on every turn (select! evaluates disabled
    // branches too): a delay near `Duration::MAX` panicked there.
    let max_delay = opts.max_delay.min(Duration::from_secs(3600));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let mut queue: Vec<Queued> = Vec::new();
    // When the oldest queued check arrived.
    let mut oldest = Instant::now();
    let mut outstanding = 0usize;
    let mut open = true;
    loop {
        // What woke us decides the flush reason, should one follow.
        let mut reason = None;
        tokio::select! {
            // An answer first: a check arriving with it then sees the batch gone.
            biased;
            Some(()) = done_rx.recv() => {
                outstanding -= 1;
                reason = Some(FlushReason::Answered);
            }
            got = rx.recv(), if open => match got {
                Some(q) => {
                    if queue.is_empty() {
                        oldest = q.arrived;
                    }
                    queue.push(q);
                    // Everything already waiting joins without another wake-up.
                    while queue.len() < opts.max_items.get() {
                        match rx.try_recv() {
                            Ok(q) => queue.push(q),
                            Err(_) => break,
                        }
                    }
                }
                None => open = false,
            },
            () = tokio::time::sleep_until(oldest + max_delay), if !queue.is_empty() => {
                reason = Some(FlushReason::Delay);
            }
        }
        while !queue.is_empty() {
            let why = if queue.len() >= opts.max_items.get() {
                FlushReason::Full
            } else if outstanding < opts.eager_batches.get() {
                reason.unwrap_or(FlushReason::Eager)
            } else if let Some(r) = reason.take() {
                r
            } else if !open {
                FlushReason::Delay
            } else {
                break;
            };
            // At most max_items checks, about max_batch_bytes and the
            // protocol's MAX_ADDRESSES_PER_BATCH (one check at least): checks
            // each within bounds must not make a batch the server refuses
            // whole, failing every check in it.
            let mut n = 0;
            let mut bytes = 0;
            let mut addresses = 0;
            for q in queue.iter().take(opts.max_items.get()) {
                bytes += q.check.size();
                addresses += q.check.addresses.len();
                if n > 0
                    && (bytes > opts.max_batch_bytes.get()
                        || addresses > crate::MAX_ADDRESSES_PER_BATCH)
                {
                    break;
                }
                n += 1;
            }
            let batch: Vec<Queued> = queue.drain(..n).collect();
            counters.queued.fetch_sub(n as u64, Relaxed);
            // The checks left behind (a batch cut by bytes or addresses)
            // keep their own wait: each split must not add another max_delay.
            oldest = queue.first().map_or_else(Instant::now, |q| q.arrived);
            if send(&client, batch, why, &counters, &done_tx) {
                outstanding += 1;
            }
            reason = None;
        }
        if !open && queue.is_empty() && outstanding == 0 {
            return;
        }
    }
}

/// How often a batch in flight looks whether any of its callers still waits.
const GONE_CHECK: Duration = Duration::from_millis(25);

/// Sends one batch on its own task; false when nothing was left to send.
fn send(
    client: &Arc<Client>,
    batch: Vec<Queued>,
    why: FlushReason,
    counters: &Arc<Counters>,
    done: &mpsc::UnboundedSender<()>,
) -> bool {
    let now = Instant::now();
    let (live, gone): (Vec<Queued>, Vec<Queued>) = batch
        .into_iter()
        .partition(|q| !q.reply.is_closed() && q.deadline > now);
    if !gone.is_empty() {
        counters.abandoned.fetch_add(gone.len() as u64, Relaxed);
        for q in gone {
            let _ = q.reply.send(Err(CheckError::Deadline));
        }
    }
    if live.is_empty() {
        return false;
    }
    counters.batches.fetch_add(1, Relaxed);
    counters.items.fetch_add(live.len() as u64, Relaxed);
    counters.flush[why as usize].fetch_add(1, Relaxed);
    let client = Arc::clone(client);
    let counters = Arc::clone(counters);
    let done = done.clone();
    tokio::spawn(async move {
        let (checks, replies): (Vec<Check>, Vec<_>) =
            live.into_iter().map(|q| (q.check, Some(q.reply))).unzip();
        let items: Vec<Item<'_>> = checks.iter().map(Check::item).collect();
        // Shared by the delivery below and the watch for gone callers (both
        // run on this task: the lock is never contended).
        let replies = std::sync::Mutex::new(replies);
        let lock = || {
            replies
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        // Each check hears its decision as soon as its chunk arrives: a check
        // the server holds (an unknown `kid` while it refetches a key set)
        // delays only itself, not the checks that share its batch.
        let verify = client.verify_with(&items, |chunk| {
            let mut replies = lock();
            for d in &chunk.decisions {
                if let Some(reply) = replies.get_mut(d.index as usize).and_then(Option::take) {
                    let _ = reply.send(Ok(d.into()));
                }
            }
        });
        // Every caller gone (deadlines passed, requests dropped) while the
        // batch is still out: stop it, so its streams are reset and the pool
        // stops working on answers nobody reads.
        let all_gone = async {
            loop {
                tokio::time::sleep(GONE_CHECK).await;
                // Some check still unanswered, and every such caller gone (a
                // batch whose checks were all answered just ends on its own).
                let replies = lock();
                let mut waiting = replies.iter().flatten().peekable();
                if waiting.peek().is_some() && waiting.all(oneshot::Sender::is_closed) {
                    break;
                }
            }
        };
        let outcome = tokio::select! {
            outcome = verify => Some(outcome),
            () = all_gone => None,
        };
        drop(items);
        let _ = done.send(());
        let Some(outcome) = outcome else {
            counters.cancelled.fetch_add(1, Relaxed);
            return;
        };
        let replies = replies
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Pending delivers every index once before it ends; any left over
        // (the batch failed, or an index never came) get an error, never
        // silence.
        let undecided = replies.iter().filter(|r| r.is_some()).count();
        if undecided > 0 {
            // Counted only for callers still waiting: one whose deadline passed
            // first has had its answer (`Deadline`) and is not counted twice.
            let waiting = replies.iter().flatten().filter(|r| !r.is_closed()).count();
            counters.failed.fetch_add(waiting as u64, Relaxed);
            let e = match outcome {
                Err(e) => e,
                Ok(()) => ClientError::Incomplete(undecided),
            };
            for reply in replies.into_iter().flatten() {
                let _ = reply.send(Err(CheckError::Client(e.clone())));
            }
        }
    });
    true
}
