//! The answer to one batch: one attempt, or more after a failover or a hedge,
//! read together; each item's first decision is delivered, later ones are
//! dropped and counted.

use super::{Client, ClientDecision, ClientError, ConnectionFailure, Outstanding, Violation};
use crate::codec::{FrameType, Limits, decode_decisions, decode_error, next_frame};
use crate::messages::{DecisionChunk, WireDecision};
use quinn::{ReadError, RecvStream, SendStream, VarInt, WriteError};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

/// One copy of the batch on one endpoint.
struct Attempt {
    slot: usize,
    recv: RecvStream,
    _outstanding: Outstanding,
    buf: Vec<u8>,
    start: usize,
    /// Items this stream decided (a second decision on one stream is a
    /// protocol violation; across streams it is a late duplicate).
    seen: Vec<bool>,
    decided: usize,
    finished: bool,
    /// Whether any byte of an answer arrived.
    progressed: bool,
    /// When the request went out on this replica.
    sent_at: Instant,
}

/// What woke the wait.
enum Wake {
    Data(usize, quinn::Chunk),
    Finished(usize),
    Failed(usize, ReadError),
    Timer,
}

/// What one buffered frame of an attempt gave.
enum Step {
    /// Nothing whole buffered.
    Idle,
    /// A frame was consumed; `delivered` decisions were new.
    Consumed { delivered: usize },
    /// This attempt failed; others may still answer, or a retry may.
    Failed(ClientError),
    /// The batch fails as a whole (no endpoint will take it).
    Fatal(ClientError),
}

/// A receive buffer whose consumed head is at least this long, and half of
/// it, is compacted.
const COMPACT_AT: usize = 64 << 10;

/// The longest server error message kept (a longer one is cut at a
/// character boundary, `…` added): a replica's message is copied to every
/// check of its batch, and a frame may carry up to `max_frame_bytes` of it.
const MAX_SERVER_MESSAGE: usize = 512;

fn capped_message(m: &str) -> String {
    if m.len() <= MAX_SERVER_MESSAGE {
        return m.to_owned();
    }
    let mut end = MAX_SERVER_MESSAGE;
    while !m.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &m[..end])
}

/// The answer to one batch, read as it arrives.
pub struct Pending<'c> {
    client: &'c Client,
    /// The client's slots when the batch started (indices refer to these).
    slots: Arc<Vec<Arc<super::Slot>>>,
    frame: Arc<[u8]>,
    request_id: u64,
    items: usize,
    /// A refusal for what the batch is (too many items, too large) from one
    /// copy while another was still in flight: the batch's error if that
    /// one fails too (a retryable error would hide that it can never fit).
    refused: Option<ClientError>,
    /// Per item, the (allow, reason) delivered, once it was.
    delivered: Vec<Option<(bool, u16)>>,
    decided: usize,
    attempts: Vec<Attempt>,
    tried: Vec<usize>,
    started: Instant,
    deadline: Instant,
    hedge_at: Option<Instant>,
    timer: Pin<Box<tokio::time::Sleep>>,
    last_error: Option<ClientError>,
    limits: Limits,
    ready: VecDeque<(u32, ClientDecision)>,
    done: bool,
    /// The error the batch ended with: every later call returns it.
    failed: Option<ClientError>,
}

impl std::fmt::Debug for Pending<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("request_id", &self.request_id)
            .field("items", &self.items)
            .field("decided", &self.decided)
            .field("attempts", &self.attempts.len())
            .finish_non_exhaustive()
    }
}

fn read_failure(e: ReadError) -> ConnectionFailure {
    match e {
        ReadError::Reset(code) => ConnectionFailure::Reset(code.into_inner()),
        ReadError::ConnectionLost(e) => ConnectionFailure::Lost(e),
        _ => ConnectionFailure::Closed,
    }
}

impl<'c> Pending<'c> {
    /// Sends the first copy of `frame`.
    pub(super) async fn start(
        client: &'c Client,
        frame: Arc<[u8]>,
        request_id: u64,
        items: usize,
    ) -> Result<Self, ClientError> {
        let started = Instant::now();
        let deadline = started + client.opts.batch_timeout;
        client.earn_hedge_credit();
        let hedge_at = client
            .opts
            .hedge
            .enabled
            .then(|| started + client.hedge_delay());
        let slots = client.current_slots(deadline).await;
        let mut pending = Self {
            client,
            slots,
            frame,
            request_id,
            items,
            delivered: vec![None; items],
            refused: None,
            decided: 0,
            attempts: Vec::with_capacity(2),
            tried: Vec::with_capacity(2),
            started,
            deadline,
            hedge_at,
            timer: Box::pin(tokio::time::sleep_until(deadline.into())),
            last_error: None,
            limits: Limits {
                max_frame_bytes: client.opts.max_frame_bytes,
                max_items: usize::MAX,
            },
            ready: VecDeque::new(),
            done: false,
            failed: None,
        };
        pending.send_attempt(None).await?;
        Ok(pending)
    }

    /// The batch's request id.
    #[must_use]
    pub const fn request_id(&self) -> u64 {
        self.request_id
    }

    /// Sends a copy of the batch to the best endpoint this batch has not
    /// used: another address first, then another connection to one, and
    /// when every one is ejected, an ejected one after all (better a slow
    /// answer than none). A hedge passes its `hedge` delay: it has that long
    /// to open a stream (one slow to open is not counted against its
    /// endpoint) and that long again to write the batch.
    async fn send_attempt(&mut self, hedge: Option<Duration>) -> Result<(), ClientError> {
        let open_by = hedge.map(|d| Instant::now() + d);
        let client = self.client;
        let order = client.order(&self.slots);
        let used: Vec<SocketAddr> = self.tried.iter().map(|&i| self.slots[i].addr).collect();
        let fresh_addr: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&i| !used.contains(&self.slots[i].addr))
            .collect();
        let rest: Vec<usize> = order
            .iter()
            .copied()
            .filter(|i| !fresh_addr.contains(i))
            .collect();
        let candidates = fresh_addr
            .iter()
            .chain(&rest)
            .map(|&i| (i, false))
            .chain(fresh_addr.iter().chain(&rest).map(|&i| (i, true)));
        for (i, even_ejected) in candidates {
            if self.tried.contains(&i) {
                continue;
            }
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ClientError::Timeout(client.opts.batch_timeout));
            }
            let slot = &self.slots[i];
            if !even_ejected && slot.ejected(Instant::now()) {
                continue;
            }
            self.tried.push(i);
            let addr = slot.addr;
            let lost = |failure| ClientError::Connection {
                endpoint: addr,
                failure,
            };
            // Counted from now: a batch waiting to open a stream is load on its
            // endpoint too, so a replica that stops granting streams stops looking idle.
            slot.outstanding.fetch_add(self.items, Ordering::Relaxed);
            let outstanding = Outstanding(Arc::clone(slot), self.items);
            // While another endpoint is left to try, this one gets half of what
            // remains to connect and open a stream: one that accepts connections but
            // never grants a stream (its every stream stuck) cannot take the whole
            // deadline and leave no time to fail over.
            let others_left = self.slots.len() > self.tried.len();
            let step = if others_left {
                remaining / 2
            } else {
                remaining
            };
            let step = open_by.map_or(step, |t| {
                step.min(t.saturating_duration_since(Instant::now()))
            });
            let opened = tokio::time::timeout(step, async {
                let conn = client.connection(slot, even_ejected, !others_left).await?;
                conn.open_bi()
                    .await
                    .map_err(|e| lost(ConnectionFailure::Lost(e)))
            })
            .await;
            let (send, recv) = match opened {
                // A hedge out of time: the primary still stands, and this
                // endpoint was only slower than one hedge delay.
                Err(_) if open_by.is_some() => {
                    return Err(ClientError::Timeout(step));
                }
                Err(_) if !others_left => {
                    return Err(ClientError::Timeout(client.opts.batch_timeout));
                }
                Err(_) => {
                    self.note_failure(i, ClientError::Timeout(step));
                    continue;
                }
                Ok(Err(e)) => {
                    self.note_failure(i, e);
                    continue;
                }
                Ok(Ok(x)) => x,
            };
            // Dropped before its frame is whole (a write out of time, a batch
            // cancelled mid-write), the stream is reset: quinn finishes a
            // dropped stream, and the server would read half a frame as a
            // malformed request from this client.
            let mut send = ResetUnlessFinished(Some(send));
            slot.sent.fetch_add(1, Ordering::Relaxed);
            // From the stream's open: a replica slow to take the write has
            // been given its time.
            let sent_at = Instant::now();
            // The write is bounded as the open is: a replica that stopped
            // reading (frozen, partitioned with its connection still up, its
            // flow-control window full) gets half of what remains while
            // another endpoint is left, then is counted failed and ejected,
            // and the batch goes on elsewhere.
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            let others_left = self.slots.len() > self.tried.len();
            let write_for = match hedge {
                Some(d) => remaining.min(d),
                None if others_left => remaining / 2,
                None => remaining,
            };
            let write = send.0.as_mut().expect("set above").write_all(&self.frame);
            match tokio::time::timeout(write_for, write).await {
                // A hedge not written in time is dropped (its stream reset); the
                // primary stands.
                Err(_) if hedge.is_some() => return Err(ClientError::Timeout(write_for)),
                Err(_) if others_left => {
                    self.note_failure(i, ClientError::Timeout(write_for));
                    continue;
                }
                Err(_) => return Err(ClientError::Timeout(client.opts.batch_timeout)),
                // The server stopped reading (a request over its limit, or a
                // refusal): its answer, an error frame, is still on the way.
                Ok(Err(WriteError::Stopped(_))) => {}
                Ok(Err(WriteError::ConnectionLost(e))) => {
                    self.note_failure(i, lost(ConnectionFailure::Lost(e)));
                    continue;
                }
                Ok(Err(_)) => {
                    self.note_failure(i, lost(ConnectionFailure::Closed));
                    continue;
                }
                Ok(Ok(())) => {
                    if let Some(mut whole) = send.0.take() {
                        let _ = whole.finish();
                    }
                }
            }
            self.attempts.push(Attempt {
                slot: i,
                recv,
                _outstanding: outstanding,
                buf: Vec::new(),
                start: 0,
                seen: vec![false; self.items],
                decided: 0,
                finished: false,
                progressed: false,
                sent_at,
            });
            return Ok(());
        }
        Err(ClientError::Unavailable {
            tried: self.tried.len(),
            last: self.last_error.clone().map(Box::new),
        })
    }

    /// Records a failed attempt against its endpoint: a connection, protocol
    /// or drain failure ejects it; a refusal for load does not.
    fn note_failure(&mut self, slot: usize, e: ClientError) {
        let client = self.client;
        let s = &self.slots[slot];
        if matches!(e, ClientError::Protocol { .. }) {
            client
                .shared
                .protocol_violations
                .fetch_add(1, Ordering::Relaxed);
        }
        match &e {
            // "Not connected, reconnecting in the background" says nothing of
            // the pool: it never hides a real failure met before it (an
            // `overloaded` read as `unavailable`, in the log and the metrics).
            ClientError::Unavailable { last: None, .. } if self.last_error.is_some() => return,
            ClientError::Unavailable { .. } => {}
            // Refusals for load (`overloaded`, or an answer reset because the
            // server's buffer had no room for it) count, but do not eject: a
            // spike would eject every replica in turn.
            ClientError::Server { code, .. } if *code == crate::ErrorCode::Overloaded as u16 => {
                s.failed.fetch_add(1, Ordering::Relaxed);
            }
            ClientError::Connection {
                failure: ConnectionFailure::Reset(code),
                ..
            } if *code == u64::from(crate::RESET_ANSWER_BUFFER_FULL) => {
                s.failed.fetch_add(1, Ordering::Relaxed);
            }
            // This client's own slowness, not the replica's: its request
            // arrived too slowly (`request_timeout`), or it did not read the
            // answer in time (reset for `write_timeout`). Counted; ejecting
            // a healthy replica for it sent the next batch elsewhere as slowly.
            ClientError::Server { code, .. }
                if *code == crate::ErrorCode::RequestTimeout as u16 =>
            {
                s.failed.fetch_add(1, Ordering::Relaxed);
            }
            ClientError::Connection {
                failure: ConnectionFailure::Reset(code),
                ..
            } if *code == u64::from(crate::RESET_WRITE_TIMEOUT) => {
                s.failed.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                s.failed.fetch_add(1, Ordering::Relaxed);
                client.eject(s);
            }
        }
        self.last_error = Some(e);
    }

    /// Drops attempt `k` after it failed and, when none is left, sends the
    /// batch again elsewhere.
    async fn fail_attempt(&mut self, k: usize, e: ClientError) -> Result<(), ClientError> {
        let attempt = self.attempts.swap_remove(k);
        self.note_failure(attempt.slot, e);
        drop(attempt);
        self.watch_last_copy();
        if self.attempts.is_empty() {
            if let Err(e) = self.send_attempt(None).await {
                // Nowhere else to go: the failure itself says the most.
                return Err(match (e, self.last_error.take()) {
                    (ClientError::Unavailable { .. }, Some(last)) => last,
                    (e, _) => e,
                });
            }
            self.client.shared.retries.fetch_add(1, Ordering::Relaxed);
            // The new copy is late only one hedge delay from now (the old
            // timer, usually past, would hedge it at once).
            if self.client.opts.hedge.enabled {
                self.hedge_at = Some(Instant::now() + self.client.hedge_delay());
            }
        }
        Ok(())
    }

    /// After one copy of two went, the copy left may sit on a replica that
    /// died silently (the one that went was often sent because it was late):
    /// it is looked at again one hedge delay on, and copied elsewhere as any
    /// late batch.
    fn watch_last_copy(&mut self) {
        if !self.attempts.is_empty() && self.hedge_at.is_none() && self.client.opts.hedge.enabled {
            self.hedge_at = Some(Instant::now() + self.client.hedge_delay());
        }
    }

    /// Sends a second copy when the first is late: always when its endpoint
    /// is ejected, else when the hedge budget has credit (without, it looks
    /// again one hedge delay later). A first copy that has had no answer at
    /// all gets its endpoint's liveness checked.
    async fn hedge(&mut self) {
        self.hedge_at = None;
        if self.attempts.len() != 1 {
            return;
        }
        let client = self.client;
        let primary = &self.slots[self.attempts[0].slot];
        if !self.attempts[0].progressed {
            client.suspect(primary);
        }
        let ejected = primary.ejected(Instant::now());
        if ejected || client.spend_hedge_credit() {
            // The primary is not read while the copy opens and is written: the
            // copy gets one hedge delay to find an endpoint that grants a stream
            // and one more to be written, or is not sent (a replica out of
            // streams or credit would otherwise hold the primary's answer
            // unread, up to the whole deadline).
            if self.send_attempt(Some(client.hedge_delay())).await.is_ok() {
                client.shared.hedges.fetch_add(1, Ordering::Relaxed);
            } else {
                // No copy went out: its credit goes back (a pool that cannot
                // hedge does not drain the budget of one that can).
                if !ejected {
                    client.refund_hedge_credit();
                }
                // Endpoints are left: look again (the primary may be ejected
                // by then, and its copy free).
                if self.slots.len() > self.tried.len() {
                    self.hedge_at = Some(Instant::now() + client.hedge_delay());
                }
            }
        } else {
            self.hedge_at = Some(Instant::now() + client.hedge_delay());
        }
    }

    /// The deadline passed with attempts still open: each counts as a failure
    /// of its endpoint, and one that sent nothing back for at least
    /// `dead_after` (or half the batch deadline, if shorter; a replica that
    /// stalls while its connection stays up) is
    /// ejected, so a stalled replica shows in the counts and stops drawing
    /// batches. A copy sent moments before the deadline (a late hedge or
    /// failover) had no time to answer: ejecting it ejected a healthy
    /// replica for the first one's stall.
    fn timed_out(&mut self) {
        let client = self.client;
        // `dead_after`, or half the batch's deadline where that is shorter
        // (a client with a 100 ms deadline never ejected a stalled replica).
        let silent_for = client.opts.dead_after.min(client.opts.batch_timeout / 2);
        for a in std::mem::take(&mut self.attempts) {
            let slot = &self.slots[a.slot];
            slot.failed.fetch_add(1, Ordering::Relaxed);
            if !a.progressed && a.sent_at.elapsed() >= silent_for {
                client.eject(slot);
            }
        }
    }

    /// Every item decided: the other attempts are dropped.
    fn complete(&mut self, winner: usize) {
        self.done = true;
        let client = self.client;
        client.observe(self.started.elapsed());
        client.healthy(&self.slots[winner]);
        self.attempts.clear();
    }

    /// Consumes one whole buffered frame of attempt `k`, delivering its new
    /// decisions to `f`.
    fn take_frame(&mut self, k: usize, f: &mut impl FnMut(&DecisionChunk<'_>)) -> Step {
        let endpoint = self.slots[self.attempts[k].slot].addr;
        let protocol = |violation| {
            Step::Failed(ClientError::Protocol {
                endpoint,
                violation,
            })
        };
        let a = &mut self.attempts[k];
        let frame = match next_frame(&a.buf[a.start..], &self.limits) {
            Err(e) => return protocol(Violation::Frame(e)),
            Ok(None) => {
                if a.finished && a.start != a.buf.len() {
                    return protocol(Violation::Truncated);
                }
                if a.finished && self.decided < self.items {
                    return protocol(Violation::Undecided(self.items - a.decided));
                }
                return Step::Idle;
            }
            Ok(Some(frame)) => frame,
        };
        let consumed = frame.consumed;
        let step = match frame.kind {
            FrameType::Decisions => match decode_decisions(frame.body) {
                Err(e) => protocol(Violation::Frame(e)),
                // Every frame must carry a decision: empty ones would count as
                // progress (keeping a stalled replica from ejection) while
                // deciding nothing.
                Ok(chunk) if chunk.decisions.is_empty() => protocol(Violation::EmptyChunk),
                Ok(chunk) => {
                    if chunk.request_id == self.request_id {
                        match check(&mut a.seen, &chunk) {
                            Err(v) => protocol(v),
                            Ok(()) => {
                                a.decided += chunk.decisions.len();
                                let shared = &self.client.shared;
                                let delivered = deliver(
                                    &mut self.delivered,
                                    &chunk,
                                    f,
                                    &shared.late_duplicates,
                                    &shared.late_disagreements,
                                );
                                self.decided += delivered;
                                Step::Consumed { delivered }
                            }
                        }
                    } else {
                        protocol(Violation::WrongRequest(chunk.request_id))
                    }
                }
            },
            FrameType::Error => match decode_error(frame.body) {
                Err(e) => protocol(Violation::Frame(e)),
                Ok(e) => {
                    let error = ClientError::Server {
                        endpoint,
                        code: e.code,
                        message: capped_message(e.message),
                    };
                    if error.retryable() {
                        Step::Failed(error)
                    } else {
                        Step::Fatal(error)
                    }
                }
            },
            FrameType::Batch => protocol(Violation::BatchFrame),
        };
        a.start += consumed;
        if a.start == a.buf.len() {
            a.buf.clear();
            a.start = 0;
        } else if a.start >= COMPACT_AT && a.start * 2 >= a.buf.len() {
            // Reads that keep ending inside a frame never empty the buffer:
            // the consumed head goes, so it holds about one frame, not the
            // whole answer.
            a.buf.drain(..a.start);
            a.start = 0;
        }
        step
    }

    /// The next decision, as `(index, decision)`; `None` once every item has
    /// had exactly one.
    ///
    /// # Errors
    /// As [`Pending::next_chunk`].
    pub async fn next(&mut self) -> Option<Result<(u32, ClientDecision), ClientError>> {
        loop {
            if let Some(d) = self.ready.pop_front() {
                return Some(Ok(d));
            }
            let mut ready = std::mem::take(&mut self.ready);
            match self
                .next_chunk(|chunk| {
                    ready.extend(chunk.decisions.iter().map(|d| (d.index, d.into())));
                })
                .await
            {
                Ok(true) => self.ready = ready,
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Waits for the next decisions not delivered before and hands them to
    /// `f` (each index checked: in range, once). `Ok(false)`: every item is
    /// decided.
    ///
    /// # Errors
    /// A non-retryable error frame, the batch timeout, or no endpoint left
    /// to send the batch to after the ones it was on failed.
    pub async fn next_chunk(
        &mut self,
        f: impl FnMut(&DecisionChunk<'_>),
    ) -> Result<bool, ClientError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.read_chunk(f).await {
            Err(e) => {
                // The batch is over: later calls get the same error, and no
                // copy is read again (its stream's end would read as a
                // replica leaving items undecided, and eject it).
                let e = self.refused.take().unwrap_or(e);
                self.failed = Some(e.clone());
                self.attempts.clear();
                Err(e)
            }
            ok => ok,
        }
    }

    async fn read_chunk(
        &mut self,
        mut f: impl FnMut(&DecisionChunk<'_>),
    ) -> Result<bool, ClientError> {
        loop {
            if self.done || self.items == 0 {
                self.done = true;
                return Ok(false);
            }
            // No copy in flight and the batch not done: a call dropped while
            // it failed over (between dropping the failed copy and sending
            // the next). Send it again rather than wait out the deadline.
            if self.attempts.is_empty() {
                self.send_attempt(None).await?;
                self.client.shared.retries.fetch_add(1, Ordering::Relaxed);
                if self.client.opts.hedge.enabled {
                    self.hedge_at = Some(Instant::now() + self.client.hedge_delay());
                }
            }
            // A whole frame buffered on any attempt?
            let mut k = 0;
            while k < self.attempts.len() {
                match self.take_frame(k, &mut f) {
                    Step::Idle => k += 1,
                    Step::Consumed { delivered } => {
                        if self.decided == self.items {
                            let winner = self.attempts[k].slot;
                            self.complete(winner);
                            return Ok(true);
                        }
                        if delivered > 0 {
                            return Ok(true);
                        }
                    }
                    Step::Failed(e) => {
                        self.fail_attempt(k, e).await?;
                        k = 0;
                    }
                    // Refused for what the batch is (too many items, a frame
                    // over this replica's limit): not worth sending anywhere
                    // else, but a copy already in flight to a replica with
                    // other limits (a rolling config change) may still
                    // decide it, so the batch fails only when none is left.
                    Step::Fatal(e) if self.attempts.len() > 1 => {
                        drop(self.attempts.swap_remove(k));
                        self.refused = Some(e);
                        self.watch_last_copy();
                        k = 0;
                    }
                    Step::Fatal(e) => return Err(e),
                }
            }
            let now = Instant::now();
            if now >= self.deadline {
                self.timed_out();
                return Err(ClientError::Timeout(self.client.opts.batch_timeout));
            }
            if self.hedge_at.is_some_and(|t| now >= t) {
                self.hedge().await;
                continue;
            }
            let wake_at = self
                .hedge_at
                .map_or(self.deadline, |t| t.min(self.deadline));
            self.timer.as_mut().reset(wake_at.into());
            let (attempts, timer) = (&mut self.attempts, &mut self.timer);
            let wake = std::future::poll_fn(|cx| {
                for (k, a) in attempts.iter_mut().enumerate() {
                    if a.finished {
                        continue;
                    }
                    // `read_chunk` is cancel-safe: a fresh future per poll.
                    let mut read = std::pin::pin!(a.recv.read_chunk(64 << 10, true));
                    match read.as_mut().poll(cx) {
                        Poll::Ready(Ok(Some(chunk))) => {
                            return Poll::Ready(Wake::Data(k, chunk));
                        }
                        Poll::Ready(Ok(None)) => return Poll::Ready(Wake::Finished(k)),
                        Poll::Ready(Err(e)) => return Poll::Ready(Wake::Failed(k, e)),
                        Poll::Pending => {}
                    }
                }
                timer.as_mut().poll(cx).map(|()| Wake::Timer)
            })
            .await;
            match wake {
                Wake::Data(k, chunk) => {
                    let a = &mut self.attempts[k];
                    a.progressed = true;
                    a.buf.extend_from_slice(&chunk.bytes);
                }
                Wake::Finished(k) => self.attempts[k].finished = true,
                Wake::Failed(k, e) => {
                    let endpoint = self.slots[self.attempts[k].slot].addr;
                    let error = ClientError::Connection {
                        endpoint,
                        failure: read_failure(e),
                    };
                    self.fail_attempt(k, error).await?;
                }
                Wake::Timer => {}
            }
        }
    }
}

/// Checks a chunk against what its stream decided before: every index in
/// range and new on this stream.
fn check(seen: &mut [bool], chunk: &DecisionChunk<'_>) -> Result<(), Violation> {
    for d in &chunk.decisions {
        match seen.get_mut(d.index as usize) {
            None => return Err(Violation::OutOfRange(d.index)),
            Some(true) => return Err(Violation::Duplicate(d.index)),
            Some(seen) => *seen = true,
        }
    }
    Ok(())
}

/// Hands `f` the decisions of `chunk` not delivered before (the whole chunk
/// when all are new); counts the rest as late duplicates, and those that
/// differ from the decision delivered (another allow bit or reason: two
/// replicas that disagree) as disagreements. Returns how many were delivered.
fn deliver(
    delivered: &mut [Option<(bool, u16)>],
    chunk: &DecisionChunk<'_>,
    f: &mut impl FnMut(&DecisionChunk<'_>),
    late: &std::sync::atomic::AtomicU64,
    disagreeing: &std::sync::atomic::AtomicU64,
) -> usize {
    let mut stale = 0u64;
    let mut differ = 0u64;
    for d in &chunk.decisions {
        if let Some(first) = delivered[d.index as usize] {
            stale += 1;
            differ += u64::from(first != (d.allow, d.reason));
        }
    }
    let fresh = chunk.decisions.len() - stale as usize;
    if stale > 0 {
        late.fetch_add(stale, Ordering::Relaxed);
    }
    if differ > 0 {
        disagreeing.fetch_add(differ, Ordering::Relaxed);
    }
    if fresh == 0 {
        return 0;
    }
    if stale == 0 {
        f(chunk);
    } else {
        let decisions: Vec<WireDecision<'_>> = chunk
            .decisions
            .iter()
            .filter(|d| delivered[d.index as usize].is_none())
            .cloned()
            .collect();
        f(&DecisionChunk {
            request_id: chunk.request_id,
            decisions,
        });
    }
    for d in &chunk.decisions {
        delivered[d.index as usize].get_or_insert((d.allow, d.reason));
    }
    fresh
}

/// A request stream that is reset, not finished, when dropped while it
/// still holds one (its frame not written whole).
struct ResetUnlessFinished(Option<SendStream>);

impl Drop for ResetUnlessFinished {
    fn drop(&mut self) {
        if let Some(s) = self.0.as_mut() {
            let _ = s.reset(VarInt::from_u32(0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's error message is kept up to 512 bytes, cut at a
    /// character boundary.
    #[test]
    fn server_messages_are_capped() {
        assert_eq!(capped_message("short"), "short");
        let long = "é".repeat(1000);
        let cut = capped_message(&long);
        assert!(
            cut.len() <= MAX_SERVER_MESSAGE + '…'.len_utf8(),
            "{}",
            cut.len()
        );
        assert!(cut.ends_with('…') && cut.starts_with("éé"));
        let exact = "a".repeat(MAX_SERVER_MESSAGE);
        assert_eq!(capped_message(&exact), exact);
    }
}
