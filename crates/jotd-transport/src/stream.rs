//! One QUIC stream: read the request under the server's limits, drive its
//! [`BatchJob`] on the pool, write the frames back. Bytes only: every
//! decision (and every refusal's wording) is the job's or [`Refused`]'s.

use crate::codec::HARD_MAX_FRAME_BYTES;
use crate::job::{BatchJob, JobContext, Next, Refused};
use crate::messages::ErrorCode;
use crate::report::BatchReport;
use crate::server::{
    Event, Overload, RESET_ANSWER_BUFFER_FULL, RESET_WRITE_TIMEOUT, STOP_REFUSED, STOP_TOO_LARGE,
    Shared, StreamEnd,
};
use quinn::{RecvStream, SendStream, VarInt};
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

/// The first bytes read before the length is known: the 4-byte length, the
/// type byte and up to a 9-byte request id, so refusals can echo the id.
const HEAD: usize = 14;

/// How reading a request ended without a request.
enum ReadFailure {
    /// Answer with this error frame (the stream has been stopped).
    Refuse(Refused, Option<Overload>),
    /// The client reset the stream or the connection went away.
    Aborted,
}

/// A request's room in the server's request buffer
/// (`max_request_buffer_bytes`), counted in the `request_bytes` gauge. It
/// grows with the request's bytes as they arrive (a length prefix alone
/// reserves nothing: 4-byte streams declaring 4 MiB each once took the whole
/// buffer for `request_timeout`), then by the decoded form, and is held
/// until the request's decisions exist (or it is refused): the bytes and
/// their decoded form stay within the budget while the batch waits for token
/// room and is verified. From then on it covers the answer's frames not yet
/// written ([`Held`]), shrinking as the client reads them.
pub(crate) struct Room {
    permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
    /// The client's source, whose share of the buffer the bytes count in
    /// ([`crate::slots::ByteShares`]).
    source: IpAddr,
    shared: Arc<Shared>,
}

impl Room {
    fn new(shared: &Arc<Shared>, source: IpAddr) -> Self {
        Self {
            permit: None,
            bytes: 0,
            source,
            shared: Arc::clone(shared),
        }
    }

    /// Takes room for `n` more bytes; `false` when the buffer has none, or
    /// the buffer is contended and the client's source holds its share.
    fn grow(&mut self, n: usize) -> bool {
        self.grow_as(n, true)
    }

    /// [`Room::grow`] for the answer of a batch already admitted: bounded by
    /// the buffer alone, not the source's share (counted in it all the
    /// same). Cut by the share, answers to batches already verified were
    /// reset and sent again, elsewhere or later: the work twice, for a
    /// client already at its share.
    fn grow_for_answer(&mut self, n: usize) -> bool {
        self.grow_as(n, false)
    }

    fn grow_as(&mut self, n: usize, share: bool) -> bool {
        if n == 0 {
            return true;
        }
        let shared = &*self.shared;
        let in_use = shared
            .opts
            .max_request_buffer_bytes
            .get()
            .saturating_sub(shared.request_bytes.available_permits());
        if !shared.request_shares.take(self.source, n, in_use, share) {
            return false;
        }
        let Ok(more) = Arc::clone(&shared.request_bytes)
            .try_acquire_many_owned(u32::try_from(n).unwrap_or(u32::MAX))
        else {
            shared.request_shares.give(self.source, n);
            return false;
        };
        match &mut self.permit {
            Some(p) => p.merge(more),
            None => self.permit = Some(more),
        }
        self.bytes += n;
        self.shared
            .stats
            .request_bytes
            .fetch_add(n, Ordering::Relaxed);
        true
    }

    /// Gives back all but `n` bytes of room.
    fn shrink_to(&mut self, n: usize) {
        if n >= self.bytes {
            return;
        }
        let freed = self.bytes - n;
        if n == 0 {
            self.permit = None;
        } else if let Some(p) = &mut self.permit {
            drop(p.split(freed));
        }
        self.bytes = n;
        self.shared
            .stats
            .request_bytes
            .fetch_sub(freed, Ordering::Relaxed);
        self.shared.request_shares.give(self.source, freed);
    }
}

/// A stream's room and the answer frames produced but not yet written: the
/// frames wait in memory while the client's flow control holds them back,
/// so they are charged to the request buffer like the request was (a client
/// that sets a tiny window and sends many small-item batches held their
/// answers outside every budget until `write_timeout`).
struct Held {
    room: Room,
    /// Room the request and its decoded form take until the decisions exist.
    request: usize,
    /// Bytes of frames produced and not yet written.
    pending: usize,
    /// The decisions exist: the room covers `pending` alone from now on.
    decided: bool,
    /// A frame found no room: it and every later one were dropped, and the
    /// stream is reset ([`RESET_ANSWER_BUFFER_FULL`]), never finished short.
    overflow: bool,
}

/// A stream's [`Held`] state, and the writer's wake-up when the answer is
/// cut (it may be waiting on the client's flow control right then).
struct Answer {
    held: Mutex<Held>,
    cut: tokio::sync::Notify,
}

impl Answer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Until the answer is cut (a stored wake-up counts: the writer may not
    /// be waiting yet when it happens).
    async fn cut(&self) {
        self.cut.notified().await;
    }
}

impl Held {
    /// Room the stream needs now.
    fn needed(&self) -> usize {
        self.pending + if self.decided { 0 } else { self.request }
    }
}

/// Where a job's frames go: charged to the stream's [`Held`] room, then on
/// to the stream's writer.
#[derive(Clone)]
struct Frames {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    answer: Arc<Answer>,
}

impl Frames {
    /// Sends `frame` to the writer if the request buffer has room for it
    /// (the stream's own room first); else marks the answer cut.
    fn send(&self, frame: Vec<u8>) {
        // The writer is gone (stream reset or finished): nothing will read
        // this frame, so it is neither charged nor queued.
        if self.tx.is_closed() {
            return;
        }
        let mut h = self.answer.lock();
        if h.overflow {
            return;
        }
        h.pending += frame.len();
        let need = h.needed();
        if need > h.room.bytes {
            let more = need - h.room.bytes;
            if !h.room.grow_for_answer(more) {
                h.pending -= frame.len();
                h.overflow = true;
                drop(h);
                // Wakes the writer, which resets the stream.
                self.answer.cut.notify_one();
                return;
            }
        }
        drop(h);
        if let Err(lost) = self.tx.send(frame) {
            // Closed between the check and the send: give the charge back,
            // and the room it grew.
            let mut h = self.answer.lock();
            h.pending -= lost.0.len();
            let need = h.needed();
            h.room.shrink_to(need);
        }
    }

    /// The decisions exist: the request's share of the room goes back.
    fn decided(&self) {
        let mut h = self.answer.lock();
        h.decided = true;
        let need = h.needed();
        h.room.shrink_to(need);
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    async fn closed(&self) {
        self.tx.closed().await;
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        self.shared
            .stats
            .request_bytes
            .fetch_sub(self.bytes, Ordering::Relaxed);
        self.shared.request_shares.give(self.source, self.bytes);
    }
}

/// Reads one request's bytes: the length prefix first (a frame over the limit is
/// refused from it alone), then the bytes up to the client's FIN, each chunk
/// taking its room in the server's request buffer as it arrives, all within
/// `request_timeout`.
async fn read_request(
    shared: &Arc<Shared>,
    recv: &mut RecvStream,
    source: IpAddr,
) -> Result<(Vec<u8>, Room), ReadFailure> {
    let opts = &shared.opts;
    let limit = opts.limits.max_frame_bytes.min(HARD_MAX_FRAME_BYTES);
    let mut bytes: Vec<u8> = Vec::new();
    let mut room = Room::new(shared, source);
    let read = tokio::time::timeout(opts.request_timeout, async {
        // Whatever has arrived, until the length prefix is in: QUIC flow
        // control (the stream window is one frame) bounds what that can be.
        // Not charged yet (fewer than 4 bytes wait uncharged), so a frame over
        // the limit is `frame_too_large` from its prefix even while the
        // buffer is full, not `overloaded` (which says "retry elsewhere").
        fill(shared, recv, &mut bytes, None, 4, |_| limit + 5).await?;
        let declared = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
        if declared > limit {
            let _ = recv.stop(VarInt::from_u32(STOP_TOO_LARGE));
            return Err(refuse(
                &bytes,
                ErrorCode::FrameTooLarge,
                &format!("frame of {declared} bytes exceeds the frame limit of {limit}"),
            ));
        }
        let total = declared + 4;
        if bytes.len() > total {
            let _ = recv.stop(VarInt::from_u32(STOP_REFUSED));
            return Err(refuse(
                &bytes,
                ErrorCode::MalformedFrame,
                "one frame per stream, and nothing after it",
            ));
        }
        if !room.grow(bytes.capacity()) {
            let _ = recv.stop(VarInt::from_u32(STOP_REFUSED));
            return Err(overloaded(shared, &bytes));
        }
        // The rest, each chunk into room it takes as it comes.
        fill(shared, recv, &mut bytes, Some(&mut room), total, |have| {
            total - have
        })
        .await?;
        // The answer starts at the client's FIN: nothing may follow the frame.
        match recv.read_chunk(1, true).await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => {
                let _ = recv.stop(VarInt::from_u32(STOP_REFUSED));
                Err(refuse(
                    &bytes,
                    ErrorCode::MalformedFrame,
                    "one frame per stream, and nothing after it",
                ))
            }
            Err(_) => Err(ReadFailure::Aborted),
        }
    })
    .await;
    match read {
        Ok(Ok(())) => Ok((bytes, room)),
        Ok(Err(failure)) => Err(failure),
        Err(_) => {
            // Timed out: stop the stream; its bytes and room are released
            // when this returns.
            let _ = recv.stop(VarInt::from_u32(STOP_REFUSED));
            Err(refuse(
                &bytes,
                ErrorCode::RequestTimeout,
                &format!(
                    "the request did not arrive whole within request_timeout = {:?}",
                    opts.request_timeout
                ),
            ))
        }
    }
}

/// Reads into `bytes` until it holds `want` bytes, each read at most
/// `most(bytes held)`. With a `room`, what the buffer holds (its capacity,
/// not only the bytes in it) is charged to the server's request buffer as it
/// grows, refused as `overloaded` when that is full: the buffer doubles up to
/// `want` while room allows, else grows by just the chunk.
async fn fill(
    shared: &Shared,
    recv: &mut RecvStream,
    bytes: &mut Vec<u8>,
    mut room: Option<&mut Room>,
    want: usize,
    most: impl Fn(usize) -> usize,
) -> Result<(), ReadFailure> {
    while bytes.len() < want {
        match recv.read_chunk(most(bytes.len()), true).await {
            Ok(Some(chunk)) => {
                let need = bytes.len() + chunk.bytes.len();
                if need > bytes.capacity() {
                    let doubled = need.max(bytes.capacity() * 2).min(want.max(need));
                    let cap = bytes.capacity();
                    let grown = match room.as_deref_mut() {
                        None => Some(doubled),
                        Some(r) => {
                            if r.grow(doubled - cap) {
                                Some(doubled)
                            } else {
                                r.grow(need - cap).then_some(need)
                            }
                        }
                    };
                    let Some(grown) = grown else {
                        let _ = recv.stop(VarInt::from_u32(STOP_REFUSED));
                        // The id may sit partly in the refused chunk: the
                        // head is what arrived, up to HEAD bytes.
                        let mut head = bytes[..bytes.len().min(HEAD)].to_vec();
                        let more = HEAD.saturating_sub(head.len()).min(chunk.bytes.len());
                        head.extend_from_slice(&chunk.bytes[..more]);
                        return Err(overloaded(shared, &head));
                    };
                    bytes.reserve_exact(grown - bytes.len());
                }
                bytes.extend_from_slice(&chunk.bytes);
            }
            Ok(None) => {
                return Err(refuse(
                    bytes,
                    ErrorCode::MalformedFrame,
                    "stream ended inside a frame",
                ));
            }
            Err(_) => return Err(ReadFailure::Aborted),
        }
    }
    Ok(())
}

/// How long a stream refused for want of room waits for its error frame
/// to go out before it is reset instead.
const NO_ROOM_ANSWER_WAIT: Duration = Duration::from_millis(200);

/// The request buffer is full: `overloaded`, echoing what `head` holds of the
/// request.
fn overloaded(shared: &Shared, head: &[u8]) -> ReadFailure {
    ReadFailure::Refuse(
        Refused::of(head, ErrorCode::Overloaded, buffer_full(shared)),
        Some(Overload::RequestBuffer),
    )
}

/// What an `overloaded` refusal for a full request buffer says.
fn buffer_full(shared: &Shared) -> String {
    format!(
        "the server's buffer for requests in progress (max_request_buffer_bytes = {}) is full, or this client's address holds its share of it (half, once it is three quarters full)",
        shared.opts.max_request_buffer_bytes
    )
}

/// Refuses a decoded batch as `overloaded` (`why`): its room and the job
/// go before the error frame waits on the client.
async fn refuse_overloaded(
    shared: &Shared,
    send: &mut SendStream,
    room: Room,
    job: BatchJob,
    why: Overload,
    message: String,
) {
    drop(room);
    shared.backend.event(&Event::Overloaded {
        items: job.len(),
        why,
    });
    let refused = Refused {
        request_id: Some(job.request_id()),
        code: ErrorCode::Overloaded,
        message,
    };
    drop(job);
    answer_refused(shared, send, &refused).await;
}

fn refuse(head: &[u8], code: ErrorCode, message: &str) -> ReadFailure {
    ReadFailure::Refuse(Refused::of(head, code, message), None)
}

/// Serves one stream to its end.
/// The `streams` gauge is the caller's ([`crate::server`] counts the stream
/// before spawning it, so an aborted task gives the count back too).
pub(crate) async fn stream(
    shared: Arc<Shared>,
    mut send: SendStream,
    mut recv: RecvStream,
    source: IpAddr,
) {
    // The stream's own cost, from now until it ends (`STREAM_BYTES`): a
    // stream with no room is refused at once, before it waits for bytes.
    let mut own = Room::new(&shared, source);
    if !own.grow(crate::job::STREAM_BYTES) {
        let _ = recv.stop(VarInt::from_u32(STOP_REFUSED));
        shared.backend.event(&Event::Overloaded {
            items: 0,
            why: Overload::RequestBuffer,
        });
        let refused = crate::job::Refused::of(&[], ErrorCode::Overloaded, buffer_full(&shared));
        // Uncharged, so its write is not waited on for long: a client that
        // reads its answers has the error frame at once; one that grants no
        // window gets the stream reset (a load code, which does not eject),
        // rather than hold this task for `write_timeout` outside every
        // budget. (After a write, the acknowledgement wait is 2 s, as for
        // every refusal.)
        answer_refused_within(&shared, &mut send, &refused, Some(NO_ROOM_ANSWER_WAIT)).await;
        return;
    }
    let (bytes, room) = match read_request(&shared, &mut recv, source).await {
        Ok(r) => r,
        Err(ReadFailure::Aborted) => {
            shared.backend.event(&Event::Stream(StreamEnd::Aborted));
            return;
        }
        Err(ReadFailure::Refuse(refused, overload)) => {
            if let Some(why) = overload {
                shared.backend.event(&Event::Overloaded { items: 0, why });
            }
            if refused.code == ErrorCode::RequestTimeout {
                shared
                    .backend
                    .event(&Event::Stream(StreamEnd::RequestTimeout));
            }
            answer_refused(&shared, &mut send, &refused).await;
            return;
        }
    };
    let started = Instant::now();
    let limits = shared.opts.limits;
    let mut room = room;
    let job = match BatchJob::decode(bytes, &limits) {
        Ok(job) => job,
        Err(refused) => {
            // Refused as a whole: nothing of the request is kept while the
            // error frame waits on the client.
            drop(room);
            answer_refused(&shared, &mut send, &refused).await;
            return;
        }
    };
    // The decoded form (spans per item and address) is held with the bytes:
    // a batch of many empty addresses is several times its size decoded.
    if !room.grow(job.held_bytes()) {
        let message = buffer_full(&shared);
        refuse_overloaded(
            &shared,
            &mut send,
            room,
            job,
            Overload::RequestBuffer,
            message,
        )
        .await;
        return;
    }
    // Reserve the batch's tokens (an empty batch one) until its decisions exist.
    let max_permits = shared.opts.max_tokens_in_flight.get().min(usize::MAX >> 4);
    let items = job.len().clamp(1, max_permits);
    let permits = u32::try_from(items).unwrap_or(u32::MAX);
    let Ok(Ok(permit)) = tokio::time::timeout(
        shared.opts.overload_wait,
        Arc::clone(&shared.tokens).acquire_many_owned(permits),
    )
    .await
    else {
        let message = format!(
            "{items} tokens would exceed max_tokens_in_flight = {}",
            shared.opts.max_tokens_in_flight
        );
        refuse_overloaded(
            &shared,
            &mut send,
            room,
            job,
            Overload::TokensInFlight,
            message,
        )
        .await;
        return;
    };
    shared
        .stats
        .tokens_in_flight
        .fetch_add(items, Ordering::Relaxed);
    let mut tokens = Tokens {
        permit,
        count: items,
        gauge: &shared.stats.tokens_in_flight,
    };
    let queued = started.elapsed();

    let (tx, rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let answer = Arc::new(Answer {
        held: Mutex::new(Held {
            request: room.bytes,
            room,
            pending: 0,
            decided: false,
            overflow: false,
        }),
        cut: tokio::sync::Notify::new(),
    });
    let frames = Frames {
        tx,
        answer: Arc::clone(&answer),
    };
    let request_id = job.request_id();
    let control = async {
        let decided = frames.clone();
        let report = drive(&shared, job, frames, &mut tokens).await;
        // Decisions produced: the tokens go back now, whether or not the
        // client reads its answer, and the room shrinks to the answer's
        // frames not yet written.
        drop(tokens);
        decided.decided();
        drop(decided);
        report
    };
    let mut sent = 0;
    let (report, written) = tokio::join!(
        control,
        write_frames(&shared, &mut send, rx, Some(&answer), &mut sent)
    );
    let mut report = report.unwrap_or_else(|| BatchReport {
        request_id: Some(request_id),
        error: Some(ErrorCode::Internal),
        ..BatchReport::default()
    });
    report.queued = queued;
    report.total = started.elapsed();
    shared.stats.batches.fetch_add(1, Ordering::Relaxed);
    shared.backend.event(&Event::Batch(&report));
    match written {
        Ok(()) => {
            // Keep the stream until the peer has the answer, so a drain that
            // closes the connection next cannot cut it off.
            let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
        }
        // A client that read every decision may stop the stream before the
        // driver has closed the channel (quinn stops a receive stream dropped
        // before its FIN): it had the whole answer, nothing was cut off.
        Err(StreamEnd::Aborted)
            if report.error.is_none() && !report.abandoned && sent == report.frames => {}
        Err(end) => shared.backend.event(&Event::Stream(end)),
    }
}

/// Runs the job on the pool (refetching between its steps when it asks),
/// sending its frames into `frames`. `None`: the job panicked; an `internal`
/// error frame was sent after whatever decisions had gone.
/// A batch's share of `max_tokens_in_flight`, and its count in the gauge.
struct Tokens<'a> {
    permit: tokio::sync::OwnedSemaphorePermit,
    count: usize,
    gauge: &'a std::sync::atomic::AtomicUsize,
}

impl Tokens<'_> {
    /// Keeps `n` tokens (at least one), giving the rest back now.
    fn keep(&mut self, n: usize) {
        let n = n.max(1);
        if n < self.count {
            drop(self.permit.split(self.count - n));
            self.gauge.fetch_sub(self.count - n, Ordering::Relaxed);
            self.count = n;
        }
    }
}

impl Drop for Tokens<'_> {
    fn drop(&mut self) {
        self.gauge.fetch_sub(self.count, Ordering::Relaxed);
    }
}

async fn drive(
    shared: &Arc<Shared>,
    job: BatchJob,
    frames: Frames,
    tokens: &mut Tokens<'_>,
) -> Option<BatchReport> {
    let request_id = job.request_id();
    let backend = Arc::clone(&shared.backend);
    let snapshot = backend.snapshot();
    let now = backend.now();
    let record_denials = backend.record_denials();
    // While batches are cheap (cached tokens, HMAC), decide them here on the
    // I/O thread, up to INLINE_ITEMS: handing one to another thread and back
    // costs two wake-ups, more than the work. What is costly or left goes to
    // the pool.
    let (job, next) = if shared.engine.batches_are_cheap() {
        let snapshot = Arc::clone(&snapshot);
        let cheap: Step = Box::new(move |mut job, cx, emit| {
            let next = job.verify_while_cheap(cx, &snapshot, now, INLINE_ITEMS, emit);
            (job, next)
        });
        run_step(shared, &frames, record_denials, job, cheap)
            .or_else(|| internal(&frames, request_id))?
    } else {
        (job, Next::Pool)
    };
    // Let the writer look at the stream first (it drops the channel when the
    // client has stopped reading): on the first pass `join!` polls this
    // driver before the writer has ever run.
    if matches!(next, Next::Pool) {
        tokio::task::yield_now().await;
    }
    let (job, next) = match next {
        // The client stopped reading: nothing more is worth deciding.
        Next::Pool if frames.is_closed() => return Some(job.abandon()),
        Next::Pool => {
            let verify: Step = Box::new(move |mut job, cx, emit| {
                let next = job.verify(cx, &snapshot, now, emit);
                (job, next)
            });
            match on_pool(shared, &frames, record_denials, job, verify).await {
                Pooled::Ran(job, next) => (job, next),
                Pooled::Skipped(job) => return Some(job.abandon()),
                Pooled::Panicked => return internal(&frames, request_id),
            }
        }
        decided => (job, decided),
    };
    let job = match next {
        Next::Done => job,
        // `verify` decides every item: nothing is left for the pool.
        Next::Pool => return internal(&frames, request_id),
        Next::Refetch(tenants) => {
            // Only the held items keep their tokens through the hold: the
            // decided ones' go back now (a batch of 4,096 with one unknown
            // kid held 4,096 tokens for `refetch_hold`, and 16 such batches
            // every token of the server).
            tokens.keep(job.held_count());
            // The refetch runs on its own task: past `refetch_hold` the held
            // items are decided on the keys at hand, and the fetch still
            // lands for the next batch.
            let refetch = tokio::spawn(backend.refetch(tenants));
            let fetched = tokio::select! {
                r = tokio::time::timeout(shared.opts.refetch_hold, refetch) => {
                    matches!(r, Ok(Ok(true)))
                }
                // Nobody reads the answer: stop holding its room now.
                () = frames.closed() => return Some(job.abandon()),
            };
            let fresh = fetched.then(|| backend.snapshot());
            let now = backend.now();
            let resume: Step = Box::new(move |mut job, cx, emit| {
                job.resume(cx, fresh.as_deref(), now, emit);
                (job, Next::Done)
            });
            match on_pool(shared, &frames, record_denials, job, resume).await {
                Pooled::Ran(job, _) => job,
                Pooled::Skipped(job) => return Some(job.abandon()),
                Pooled::Panicked => return internal(&frames, request_id),
            }
        }
    };
    Some(job.finish())
}

fn internal<T>(frames: &Frames, request_id: u64) -> Option<T> {
    // Per-token panics are caught in the engine; this is the batch plumbing
    // itself. The stream fails as a whole, loudly.
    let refused = Refused {
        request_id: Some(request_id),
        code: ErrorCode::Internal,
        message: "internal error serving the batch".into(),
    };
    frames.send(refused.frame());
    None
}

/// What a job step does on the pool.
type Step = Box<
    dyn FnOnce(BatchJob, &JobContext<'_>, &(dyn Fn(Vec<u8>) + Sync)) -> (BatchJob, Next) + Send,
>;

/// Items of a cheap batch decided on the I/O thread at most: 128 cache hits
/// are ~20 µs, 128 HMAC verifications ~170 µs on one core.
const INLINE_ITEMS: usize = 128;

/// Runs one step of `job` on the calling thread, its frames into `frames`;
/// `None` when it panicked. Only for steps that never wait on the pool
/// ([`BatchJob::verify_while_cheap`]).
fn run_step(
    shared: &Arc<Shared>,
    frames: &Frames,
    record_denials: bool,
    job: BatchJob,
    step: Step,
) -> Option<(BatchJob, Next)> {
    let emit = |frame: Vec<u8>| frames.send(frame);
    let clock = Instant::now;
    let cx = JobContext {
        engine: &shared.engine,
        pool: &shared.pool,
        watch: shared.opts.tenant_watch.as_ref(),
        record_denials,
        clock: &clock,
    };
    std::panic::catch_unwind(AssertUnwindSafe(|| step(job, &cx, &emit))).ok()
}

/// What a step sent to the pool came to.
enum Pooled {
    /// It ran: the job and what it needs next.
    Ran(BatchJob, Next),
    /// Its stream's reader was gone by the time a pool thread took it (the
    /// pool backed up): skipped, not run.
    Skipped(BatchJob),
    /// It panicked.
    Panicked,
}

/// Runs one step of `job` on the verification pool, its frames into
/// `frames`. A step whose client stopped reading while it waited in the
/// pool's queue is skipped there (4,096 forged tokens stopped at once cost
/// no signature check). The stream's task awaits the answer without blocking
/// its tokio thread.
async fn on_pool(
    shared: &Arc<Shared>,
    frames: &Frames,
    record_denials: bool,
    job: BatchJob,
    step: Step,
) -> Pooled {
    let (done, result) = oneshot::channel();
    let pool_shared = Arc::clone(shared);
    let frames = frames.clone();
    shared.pool.spawn(move || {
        let out = if frames.is_closed() {
            Pooled::Skipped(job)
        } else {
            match run_step(&pool_shared, &frames, record_denials, job, step) {
                Some((job, next)) => Pooled::Ran(job, next),
                None => Pooled::Panicked,
            }
        };
        let _ = done.send(out);
    });
    result.await.unwrap_or(Pooled::Panicked)
}

/// Writes frames as they come until every sender is gone, then finishes the
/// stream. The time spent waiting on the client's flow control, summed over
/// the whole answer, is bounded by `write_timeout`: past it the stream is
/// reset (a client that reads a byte now and then cannot keep an answer, its
/// stream and its connection busy for ever). Waiting for decisions does not
/// count. After a failed write the rest are dropped (the pool never waits on
/// a stream). A client that stops the stream (STOP_SENDING) ends it at once,
/// even while no frame is waiting. Frames written whole are counted in `sent`.
/// With `answer`, each frame written gives its room back once the decisions
/// exist, and an answer cut for want of room is reset at once (even while a
/// write waits on the client), never finished short.
async fn write_frames(
    shared: &Shared,
    send: &mut SendStream,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    answer: Option<&Answer>,
    sent: &mut usize,
) -> Result<(), StreamEnd> {
    let cut = |send: &mut SendStream| {
        let _ = send.reset(VarInt::from_u32(RESET_ANSWER_BUFFER_FULL));
        Err(StreamEnd::AnswerBufferFull)
    };
    let overflow = || answer.is_some_and(|a| a.lock().overflow);
    let cut_off = async {
        match answer {
            Some(a) => a.cut().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(cut_off);
    let mut left = shared.opts.write_timeout;
    loop {
        // A client that stops reading (STOP_SENDING, or its connection gone)
        // is noticed while the batch is still being decided: dropping `rx`
        // tells the driver to stop spending work on it.
        let frame = tokio::select! {
            frame = rx.recv() => match frame {
                Some(frame) => frame,
                None => break,
            },
            _ = send.stopped() => return Err(StreamEnd::Aborted),
            () = &mut cut_off => return cut(send),
        };
        let started = Instant::now();
        let written = tokio::select! {
            w = tokio::time::timeout(left, send.write_all(&frame)) => w,
            () = &mut cut_off => return cut(send),
        };
        match written {
            Ok(Ok(())) => {
                *sent += 1;
                left = left.saturating_sub(started.elapsed());
                if let Some(a) = answer {
                    let mut h = a.lock();
                    h.pending -= frame.len();
                    if h.decided {
                        let need = h.needed();
                        h.room.shrink_to(need);
                    }
                }
            }
            Ok(Err(_)) => return Err(StreamEnd::Aborted),
            Err(_) => {
                let _ = send.reset(VarInt::from_u32(RESET_WRITE_TIMEOUT));
                return Err(StreamEnd::WriteTimeout);
            }
        }
    }
    if overflow() {
        return cut(send);
    }
    send.finish().map_err(|_| StreamEnd::Aborted)
}

/// Answers a batch refused as a whole: its one error frame, then FIN.
async fn answer_refused(shared: &Shared, send: &mut SendStream, refused: &Refused) {
    answer_refused_within(shared, send, refused, None).await;
}

/// [`answer_refused`], its write bounded by `within` when given: a frame
/// not written by then is not waited for, and the stream is reset (code 4,
/// a load code clients retry and do not eject for).
async fn answer_refused_within(
    shared: &Shared,
    send: &mut SendStream,
    refused: &Refused,
    within: Option<Duration>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(refused.frame());
    drop(tx);
    let mut waited = 0;
    let write = write_frames(shared, send, rx, None, &mut waited);
    let written = match within {
        Some(limit) => tokio::time::timeout(limit, write).await.ok(),
        None => Some(write.await),
    };
    shared.stats.batches.fetch_add(1, Ordering::Relaxed);
    shared.backend.event(&Event::Batch(&refused.report()));
    match written {
        Some(Ok(())) => {
            let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
        }
        Some(Err(end)) => shared.backend.event(&Event::Stream(end)),
        None => {
            let _ = send.reset(VarInt::from_u32(RESET_ANSWER_BUFFER_FULL));
        }
    }
}

/// Answers a stream opened while the server drains: `shutting_down`, echoing
/// the request id when its first bytes arrive promptly. Nothing more is read.
pub(crate) async fn refuse_draining(
    shared: Arc<Shared>,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let mut head = Vec::with_capacity(HEAD);
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        while head.len() < HEAD {
            match recv.read_chunk(HEAD - head.len(), true).await {
                Ok(Some(chunk)) => head.extend_from_slice(&chunk.bytes),
                _ => break,
            }
        }
    })
    .await;
    let _ = recv.stop(VarInt::from_u32(STOP_REFUSED));
    let refused = Refused::of(
        &head,
        ErrorCode::ShuttingDown,
        "the server is draining for shutdown; send this batch to another endpoint",
    );
    answer_refused(&shared, &mut send, &refused).await;
}
