//! The batch job: one request's bytes → its decisions, sans IO. Every front
//! door (the QUIC server today; ext_authz and forward-auth next) drives one
//! job per batch, in the manner of quinn-proto's `Connection`:
//!
//! 1. [`BatchJob::decode`] reads the one `Batch` frame (the only decode: items
//!    are kept as spans of the request bytes) or gives the [`Refused`] answer.
//! 2. [`BatchJob::verify`] decides every item on the caller's rayon pool
//!    against one snapshot, emitting `Decisions` frames as chunks complete.
//!    `unknown_kid` items of tenants whose snapshot entry has
//!    [`remote_keys`](jotd_core::Tenant::remote_keys) are held back, and
//!    [`Next::Refetch`] names their tenants. A driver that runs on an async
//!    I/O thread may first call [`BatchJob::verify_while_cheap`] there: it
//!    decides items while they are cheap (cache hits, HMAC, refusals before
//!    the signature), up to a limit, and answers [`Next::Pool`] when the
//!    rest needs the pool, where [`BatchJob::verify`] decides what is left.
//! 3. The driver refetches (however it likes) and calls [`BatchJob::resume`]
//!    with the new snapshot, or `None` to send the held decisions as they are.
//! 4. [`BatchJob::finish`] gives the one [`BatchReport`].
//!
//! Every item gets exactly one decision, or the batch ends with one `Error`
//! frame. The job reads no clock of its own: timings come from the
//! [`JobContext::clock`] the driver passes in.

use crate::codec::{
    FrameType, Limits, WireError, decode_batch, encode_decisions, encode_error, next_frame,
    peek_request_id,
};
use crate::messages::{BatchRequest, DecisionChunk, ErrorCode, ErrorFrame, WireDecision};
use crate::report::{BatchReport, Denial, Tally, TenantWatch};
use jotd_core::{Decision, Engine, Reason, Request, Snapshot, UnixTime, token_hash};
use rayon::ThreadPool;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// Where a job's frames go: called from pool threads, once per frame.
pub type Emit<'a> = &'a (dyn Fn(Vec<u8>) + Sync);

/// Which decisions `decide` keeps back, given the item's tenant.
type Hold<'a> = &'a (dyn Fn(&str, &Decision) -> bool + Sync);

/// What a job runs with: the engine, the pool, and what the driver wants
/// reported.
#[derive(Clone, Copy)]
pub struct JobContext<'a> {
    /// The engine.
    pub engine: &'a Engine,
    /// The verification pool: [`BatchJob::verify`] and [`BatchJob::resume`]
    /// run there; [`BatchJob::verify_while_cheap`] runs on the caller's thread
    /// and never touches it.
    pub pool: &'a ThreadPool,
    /// Tenants also counted one by one in the report's tally.
    pub watch: Option<&'a Arc<TenantWatch>>,
    /// Whether to record each denied item in the report (for a debug log).
    pub record_denials: bool,
    /// The driver's clock, for the report's timings (a fake one in tests).
    pub clock: &'a (dyn Fn() -> Instant + Sync),
}

impl std::fmt::Debug for JobContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("watch", &self.watch)
            .field("record_denials", &self.record_denials)
            .finish_non_exhaustive()
    }
}

/// A batch refused as a whole: the error frame to send instead of decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The request id, when the bytes that carry it arrived and were readable.
    pub request_id: Option<u64>,
    /// The error code.
    pub code: ErrorCode,
    /// What was wrong, for the client's logs.
    pub message: String,
}

impl Refused {
    /// A refusal of the request whose first bytes are `head` (the request id
    /// is echoed when those bytes hold it).
    #[must_use]
    pub fn of(head: &[u8], code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            request_id: peek_request_id(head),
            code,
            message: message.into(),
        }
    }

    /// The one `Error` frame that answers the request.
    #[must_use]
    pub fn frame(&self) -> Vec<u8> {
        error_frame(self.request_id.unwrap_or(0), self.code, &self.message)
    }

    /// The report of the refused batch.
    #[must_use]
    pub fn report(&self) -> BatchReport {
        BatchReport::refused(self.request_id, self.code)
    }
}

fn error_frame(request_id: u64, code: ErrorCode, message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let frame = ErrorFrame {
        request_id,
        code: code as u16,
        message,
    };
    // An error frame of a short message always encodes; should it not, the
    // driver sends nothing and the stream ends without an answer (never a
    // wrong one).
    let _ = encode_error(&frame, &mut out);
    out
}

/// Decisions per frame when held items are sent as they were decided.
const HELD_CHUNK: usize = 256;

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Every item is decided; call [`BatchJob::finish`].
    Done,
    /// Items are left that need the pool (costly, or past the inline limit):
    /// call [`BatchJob::verify`] there.
    Pool,
    /// Items of these tenants are held on `unknown_kid`: refetch their keys,
    /// then call [`BatchJob::resume`].
    Refetch(Vec<String>),
}

/// A byte range of the request.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    end: u32,
}

/// One item as spans of the request bytes (decoded once, borrowed never).
#[derive(Debug, Clone)]
struct ItemSpans {
    token: Option<Span>,
    tenant: Span,
    method: Option<Span>,
    /// Indices into [`BatchJob::addresses`].
    addresses: Range<u32>,
    origin: Option<Span>,
    user_agent: Option<Span>,
}

/// The least `max_request_buffer_bytes` that holds one request of the
/// largest size `limits` allow while it is decided: its bytes with their
/// length prefix, its decoded form ([`BatchJob::held_bytes`]: spans for
/// every item and for every address the protocol allows,
/// [`MAX_ADDRESSES_PER_BATCH`](crate::MAX_ADDRESSES_PER_BATCH)), and as many
/// bytes again of answer frames not yet written, and the stream's own
/// [`STREAM_BYTES`]. Below it a full-size batch is refused `overloaded` on
/// an idle server, every time.
#[must_use]
pub const fn min_request_buffer_bytes(limits: &crate::Limits) -> usize {
    2 * (limits.max_frame_bytes + 4)
        + limits.max_items * std::mem::size_of::<ItemSpans>()
        + crate::MAX_ADDRESSES_PER_BATCH * std::mem::size_of::<Span>()
        + STREAM_BYTES
}

/// What a stream costs the request buffer from the moment it is accepted
/// until it ends, bytes or none: its task and quinn's state for it. One
/// STREAM frame opens every lower-numbered stream of a connection at once
/// (256 by default), and each waited for its first bytes until
/// `request_timeout` outside every budget; charged, idle streams are
/// bounded by the buffer (and a source's share of it) like bytes are.
pub const STREAM_BYTES: usize = 2 << 10;

/// One batch being decided. See the module docs for the order of calls.
#[derive(Debug)]
pub struct BatchJob {
    input: Vec<u8>,
    request_id: u64,
    items: Vec<ItemSpans>,
    addresses: Vec<Span>,
    /// Items `0..decided` have their decisions (sent, or held).
    decided: usize,
    held: Vec<(u32, Decision)>,
    report: BatchReport,
}

/// Most tenants one batch asks to refetch keys for.
pub const MAX_REFETCH_TENANTS: usize = 64;

impl BatchJob {
    /// Decodes the one `Batch` frame `input` must hold (the whole stream).
    ///
    /// # Errors
    /// The answer to send instead: a frame over the limit, more items than
    /// allowed, bytes after the frame, a frame of another type, a body that
    /// does not decode. The request id is echoed whenever it was readable.
    pub fn decode(input: Vec<u8>, limits: &Limits) -> Result<Self, Refused> {
        let spans = {
            let batch = read_batch(&input, limits)?;
            let base = input.as_ptr() as usize;
            let span = |s: &[u8]| {
                let start = s.as_ptr() as usize - base;
                // The input is at most 16 MiB (HARD_MAX_FRAME_BYTES): spans fit u32.
                Span {
                    start: start as u32,
                    end: (start + s.len()) as u32,
                }
            };
            // Exact capacities: `held_bytes` is what
            // [`min_request_buffer_bytes`] bounds.
            let mut addresses =
                Vec::with_capacity(batch.items.iter().map(|i| i.addresses.len()).sum());
            let items = batch
                .items
                .iter()
                .map(|i| {
                    let first = addresses.len() as u32;
                    addresses.extend(i.addresses.iter().map(|a| span(a.as_bytes())));
                    ItemSpans {
                        token: i.token.map(span),
                        tenant: span(i.tenant.as_bytes()),
                        method: i.method.map(|m| span(m.as_bytes())),
                        addresses: first..addresses.len() as u32,
                        origin: i.origin.map(|o| span(o.as_bytes())),
                        user_agent: i.user_agent.map(|u| span(u.as_bytes())),
                    }
                })
                .collect();
            (batch.request_id, items, addresses)
        };
        let (request_id, items, addresses) = spans;
        Ok(Self {
            input,
            request_id,
            items,
            addresses,
            decided: 0,
            held: Vec::new(),
            report: BatchReport {
                request_id: Some(request_id),
                ..BatchReport::default()
            },
        })
    }

    /// The request id.
    #[must_use]
    pub const fn request_id(&self) -> u64 {
        self.request_id
    }

    /// Items in the batch.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the batch has no items (it is answered with no decision frame).
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes the decoded form holds beyond the request's own bytes: spans
    /// per item and per address, which a server charges to its request
    /// buffer with the bytes (a batch of many empty addresses is several
    /// times its wire size decoded).
    #[must_use]
    pub const fn held_bytes(&self) -> usize {
        self.items.capacity() * std::mem::size_of::<ItemSpans>()
            + self.addresses.capacity() * std::mem::size_of::<Span>()
    }

    fn bytes(&self, s: Span) -> &[u8] {
        &self.input[s.start as usize..s.end as usize]
    }

    fn text(&self, s: Span) -> &str {
        // Validated as UTF-8 when decoded; "" is unreachable.
        std::str::from_utf8(self.bytes(s)).unwrap_or("")
    }

    fn tenant(&self, index: u32) -> &str {
        self.items
            .get(index as usize)
            .map_or("", |i| self.text(i.tenant))
    }

    /// Decides every item against `snapshot` at `now`, emitting `Decisions`
    /// frames as chunks complete.
    /// Items [`BatchJob::verify_while_cheap`] already decided are not decided again.
    pub fn verify(
        &mut self,
        cx: &JobContext<'_>,
        snapshot: &Snapshot,
        now: UnixTime,
        emit: Emit<'_>,
    ) -> Next {
        self.decide_pending(cx, snapshot, now, None, emit)
    }

    /// Decides items on the calling thread (never the pool) while they are
    /// cheap, at most `limit` of them: [`Next::Pool`] when items are left
    /// for [`BatchJob::verify`] on the pool, else as `verify` answers. For a
    /// driver on an async I/O thread, where waking a pool thread for a batch
    /// of cached tokens costs more than deciding it.
    pub fn verify_while_cheap(
        &mut self,
        cx: &JobContext<'_>,
        snapshot: &Snapshot,
        now: UnixTime,
        limit: usize,
        emit: Emit<'_>,
    ) -> Next {
        self.decide_pending(cx, snapshot, now, Some(limit), emit)
    }

    fn decide_pending(
        &mut self,
        cx: &JobContext<'_>,
        snapshot: &Snapshot,
        now: UnixTime,
        inline: Option<usize>,
        emit: Emit<'_>,
    ) -> Next {
        let started = (cx.clock)();
        if self.decided == 0 {
            self.report.tally = Tally::watching(cx.watch.cloned());
        }
        let pending: Vec<u32> = (self.decided as u32..self.items.len() as u32).collect();
        let hold = |tenant: &str, d: &Decision| {
            d.reason() == Reason::UnknownKid
                && snapshot.tenant(tenant).is_some_and(|t| t.remote_keys)
        };
        let (mut held, decided) =
            self.decide(cx, snapshot, now, &pending, Some(&hold), inline, emit);
        self.decided += decided;
        self.held.append(&mut held);
        self.report.verify += (cx.clock)().saturating_duration_since(started);
        if self.report.error.is_some() {
            // An error frame went out: it is the stream's last frame, so
            // items held for a refetch are never decided after it.
            self.held.clear();
            return Next::Done;
        }
        if self.decided < self.items.len() {
            return Next::Pool;
        }
        if self.held.is_empty() {
            return Next::Done;
        }
        // The tenants to refetch for, each once and at most
        // MAX_REFETCH_TENANTS of them: a batch naming thousands of JWKS
        // tenants with random kids scanned its list once per item and set
        // off a fetch per tenant. Held items of the others are decided again
        // on the keys at hand after the hold (`unknown_kid`, as before).
        let mut seen = std::collections::HashSet::new();
        let mut tenants: Vec<String> = Vec::new();
        for (i, _) in &self.held {
            if tenants.len() == MAX_REFETCH_TENANTS {
                break;
            }
            let t = self.tenant(*i);
            if seen.insert(t) {
                tenants.push(t.to_owned());
            }
        }
        self.report.held = self.held.len();
        Next::Refetch(tenants)
    }

    /// Items waiting on a refetch.
    #[must_use]
    pub fn held_count(&self) -> usize {
        self.held.len()
    }

    /// Decides the held items: again against `snapshot` (the refetched keys)
    /// when given, else as they were decided (`unknown_kid`).
    pub fn resume(
        &mut self,
        cx: &JobContext<'_>,
        snapshot: Option<&Snapshot>,
        now: UnixTime,
        emit: Emit<'_>,
    ) -> Next {
        let held = std::mem::take(&mut self.held);
        if held.is_empty() || self.report.error.is_some() {
            return Next::Done;
        }
        let started = (cx.clock)();
        if let Some(snapshot) = snapshot {
            self.report.refetched = true;
            let picked: Vec<u32> = held.iter().map(|(i, _)| *i).collect();
            self.decide(cx, snapshot, now, &picked, None, None, emit);
        } else {
            let mut tally = self.report.tally.empty_like();
            let mut denials = Vec::new();
            for part in held.chunks(HELD_CHUNK) {
                let mut wire = Vec::with_capacity(part.len());
                for (i, d) in part {
                    let item = &self.items[*i as usize];
                    // What accounting reads (addresses are not).
                    let req = Request {
                        token: item.token.map(|t| self.bytes(t)),
                        tenant: self.text(item.tenant),
                        method: item.method.map(|m| self.text(m)),
                        addresses: &[],
                        origin: None,
                        user_agent: None,
                    };
                    Self::account(cx, *i, &req, d, &mut tally, &mut denials);
                    wire.push(WireDecision::from_decision(*i, d));
                }
                self.send_chunk(wire, emit);
            }
            self.report.tally.merge(&tally);
            self.report.denials.append(&mut denials);
        }
        self.report.verify += (cx.clock)().saturating_duration_since(started);
        Next::Done
    }

    /// The report of a batch whose client stopped reading before it was
    /// done: the items decided so far (held ones included), no more work.
    #[must_use]
    pub fn abandon(mut self) -> BatchReport {
        self.report.items = self.decided;
        self.report.abandoned = true;
        self.report
    }

    /// The report. Call once every item is decided ([`Next::Done`]).
    #[must_use]
    pub fn finish(mut self) -> BatchReport {
        if self.report.error.is_none() {
            self.report.items = self.items.len();
        }
        self.report
    }

    /// Counts the decision of item `index` (request `req`), and records it
    /// when it is a denial the driver asked for.
    fn account(
        cx: &JobContext<'_>,
        index: u32,
        req: &Request<'_>,
        d: &Decision,
        tally: &mut Tally,
        denials: &mut Vec<Denial>,
    ) {
        tally.add_for(req.tenant, d);
        if cx.record_denials && !d.reason().is_allow() {
            denials.push(Denial {
                index,
                tenant: req.tenant.to_owned(),
                method: req.method.map(str::to_owned),
                reason: d.reason(),
                kid: d
                    .token()
                    .and_then(jotd_core::TokenInfo::kid)
                    .map(str::to_owned),
                token_hash: req.token.map(token_hash),
            });
        }
    }

    fn send_chunk(&mut self, wire: Vec<WireDecision<'_>>, emit: Emit<'_>) {
        match chunk_frame(self.request_id, wire) {
            Some(frame) => {
                emit(frame);
                self.report.frames += 1;
            }
            None => self.fail_internal(emit),
        }
    }

    fn fail_internal(&mut self, emit: Emit<'_>) {
        if self.report.error.is_none() {
            // A chunk could not be encoded (claims over the frame limit): the
            // batch fails as a whole rather than leaving items undecided.
            emit(error_frame(
                self.request_id,
                ErrorCode::Internal,
                "a decision chunk exceeded the frame limit",
            ));
            self.report.error = Some(ErrorCode::Internal);
        }
    }

    /// Decides the items `picked` on the pool, or with `inline` a prefix of
    /// them on the calling thread while they are cheap (at most that many),
    /// emitting frames; returns the decisions `hold` kept back and how many
    /// of `picked` were decided (all of them after a failure: the batch has
    /// ended with its error frame).
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &mut self,
        cx: &JobContext<'_>,
        snapshot: &Snapshot,
        now: UnixTime,
        picked: &[u32],
        hold: Option<Hold<'_>>,
        inline: Option<usize>,
        emit: Emit<'_>,
    ) -> (Vec<(u32, Decision)>, usize) {
        let addresses: Vec<&str> = self.addresses.iter().map(|s| self.text(*s)).collect();
        let requests: Vec<Request<'_>> = picked
            .iter()
            .map(|&i| {
                let item = &self.items[i as usize];
                Request {
                    token: item.token.map(|t| self.bytes(t)),
                    tenant: self.text(item.tenant),
                    method: item.method.map(|m| self.text(m)),
                    addresses: &addresses
                        [item.addresses.start as usize..item.addresses.end as usize],
                    origin: item.origin.map(|o| self.text(o)),
                    user_agent: item.user_agent.map(|u| self.text(u)),
                }
            })
            .collect();
        let frames = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let held = Mutex::new(Vec::new());
        let shared = Mutex::new((self.report.tally.empty_like(), Vec::new()));
        let id = self.request_id;
        let this = &*self;
        let on_chunk = |first: usize, decisions: Vec<Decision>| {
            let mut tally = this.report.tally.empty_like();
            let mut denials = Vec::new();
            let mut keep = Vec::new();
            let mut wire = Vec::with_capacity(decisions.len());
            for (k, d) in decisions.iter().enumerate() {
                let index = picked[first + k];
                if let Some(hold) = hold
                    && hold(requests[first + k].tenant, d)
                {
                    keep.push(k);
                    continue;
                }
                Self::account(cx, index, &requests[first + k], d, &mut tally, &mut denials);
                wire.push(WireDecision::from_decision(index, d));
            }
            if !wire.is_empty() {
                match chunk_frame(id, wire) {
                    Some(frame) => {
                        emit(frame);
                        frames.fetch_add(1, Ordering::Relaxed);
                    }
                    None => failed.store(true, Ordering::Relaxed),
                }
            }
            {
                let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
                shared.0.merge(&tally);
                shared.1.append(&mut denials);
            }
            if !keep.is_empty() {
                let mut held = held.lock().unwrap_or_else(PoisonError::into_inner);
                for k in keep {
                    held.push((picked[first + k], decisions[k].clone()));
                }
            }
        };
        let decided = match inline {
            Some(limit) => cx
                .engine
                .verify_batch_while_cheap(snapshot, &requests, now, limit, on_chunk),
            None => {
                cx.engine
                    .verify_batch_streaming(cx.pool, snapshot, &requests, now, on_chunk);
                requests.len()
            }
        };
        drop(requests);
        drop(addresses);
        let (tally, mut denials) = shared.into_inner().unwrap_or_else(PoisonError::into_inner);
        self.report.tally.merge(&tally);
        self.report.denials.append(&mut denials);
        self.report.frames += frames.into_inner();
        if failed.into_inner() {
            self.fail_internal(emit);
            return (Vec::new(), picked.len());
        }
        (
            held.into_inner().unwrap_or_else(PoisonError::into_inner),
            decided,
        )
    }
}

fn chunk_frame(request_id: u64, decisions: Vec<WireDecision<'_>>) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    encode_decisions(
        &DecisionChunk {
            request_id,
            decisions,
        },
        &mut out,
    )
    .ok()
    .map(|()| out)
}

/// Reads the one Batch frame a stream must hold.
fn read_batch<'a>(input: &'a [u8], limits: &Limits) -> Result<BatchRequest<'a>, Refused> {
    let refuse = |code, message: String| Err(Refused::of(input, code, message));
    let frame = match next_frame(input, limits) {
        Ok(Some(f)) if f.consumed == input.len() => f,
        Ok(Some(_)) => {
            return refuse(
                ErrorCode::MalformedFrame,
                "one frame per stream, and nothing after it".into(),
            );
        }
        Ok(None) => {
            return refuse(
                ErrorCode::MalformedFrame,
                "stream ended inside a frame".into(),
            );
        }
        Err(WireError::FrameTooLarge { len, limit }) => {
            return refuse(
                ErrorCode::FrameTooLarge,
                format!("frame of {len} bytes exceeds {limit}"),
            );
        }
        Err(e @ WireError::UnknownFrameType(_)) => {
            return refuse(ErrorCode::UnsupportedFrame, e.to_string());
        }
        Err(e) => return refuse(ErrorCode::MalformedFrame, e.to_string()),
    };
    if frame.kind != FrameType::Batch {
        return refuse(
            ErrorCode::UnsupportedFrame,
            "a client sends Batch frames only".into(),
        );
    }
    match decode_batch(frame.body, limits) {
        Ok(b) => Ok(b),
        Err(WireError::TooManyItems { count, limit }) => refuse(
            ErrorCode::TooManyItems,
            format!("{count} items; at most {limit}"),
        ),
        Err(e) => refuse(ErrorCode::MalformedFrame, e.to_string()),
    }
}

/// Drives a job to its end with no refetch (held items are sent as decided):
/// the whole of a front door that has no key source to refetch from, and the
/// in-memory driver of tests and benchmarks.
pub fn serve_to_end(
    cx: &JobContext<'_>,
    snapshot: &Snapshot,
    input: Vec<u8>,
    limits: &Limits,
    now: UnixTime,
    emit: Emit<'_>,
) -> BatchReport {
    let mut job = match BatchJob::decode(input, limits) {
        Ok(job) => job,
        Err(refused) => {
            emit(refused.frame());
            return refused.report();
        }
    };
    if let Next::Refetch(_) = job.verify(cx, snapshot, now, emit) {
        job.resume(cx, None, now, emit);
    }
    job.finish()
}
