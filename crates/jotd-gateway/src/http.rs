//! HTTP plumbing shared by the doors: the accept loop with drain, bodies
//! read under a cap, the bearer token, JSON answers.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jotd_transport::slots::{Admitted, ConnectionSlots, Slot};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The answer type of every door.
pub type Answer = Response<AnswerBody>;

/// Bytes of an answer handed to the connection at a time.
const ANSWER_SLICE: usize = 64 << 10;

/// The slowest overall pace a node's answer may be taken at, after a first
/// `write_timeout`: past it the connection is closed (the stall rule alone
/// let a client taking 16 KiB per window hold a 64 MiB answer for hours).
pub const MIN_ANSWER_RATE: usize = 16 << 10;

/// The gateway's answer buffer (`max_answer_buffer_bytes`): bytes of node
/// answers held, from their first byte until their client has taken them.
/// A node call is admitted only with [`ADMIT_ROOM`] of it reserved and the
/// bytes held (overdraft included) plus it within the budget; an answer the
/// node already sent is never made to wait for room (waiting while holding
/// room, answers stalled one another) and is dropped only past twice the
/// budget (the node ran the call: dropped, a retry would run it twice).
/// Bytes past the budget are an overdraft, capped at the budget, which holds
/// admission back until the total is under the budget again.
#[derive(Debug)]
pub struct AnswerRoom {
    sem: Arc<tokio::sync::Semaphore>,
    over: std::sync::atomic::AtomicUsize,
    /// The budget: the overdraft may not pass it either (memory at most
    /// twice the budget; an answer that would pass it fails, counted).
    max: usize,
}

/// Room reserved for a node call as it is sent.
pub const ADMIT_ROOM: usize = 64 << 10;

impl AnswerRoom {
    /// A buffer of `max` bytes.
    #[must_use]
    pub fn new(max: usize) -> Arc<Self> {
        let max = max.min(tokio::sync::Semaphore::MAX_PERMITS);
        Arc::new(Self {
            sem: Arc::new(tokio::sync::Semaphore::new(max)),
            over: std::sync::atomic::AtomicUsize::new(0),
            max,
        })
    }

    /// Bytes free (not counting the overdraft).
    #[must_use]
    pub fn free(&self) -> usize {
        self.sem.available_permits()
    }

    /// Bytes held past the budget.
    #[must_use]
    pub fn overdraft(&self) -> usize {
        self.over.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// An empty charge.
    #[must_use]
    pub fn charge(self: &Arc<Self>) -> Charge {
        Charge {
            permit: None,
            over: 0,
            room: Arc::clone(self),
        }
    }

    /// A charge of `n` reserved for a call, or `None` while the buffer has
    /// no `n` free or runs an overdraft.
    #[must_use]
    pub fn admit(self: &Arc<Self>, n: usize) -> Option<Charge> {
        // Held + n within the budget: room freed elsewhere counts against the
        // overdraft at once (an overdraft held by one slow reader closed
        // admission until that reader finished).
        if self.free() < n.saturating_add(self.overdraft()) {
            return None;
        }
        let permit = Arc::clone(&self.sem)
            .try_acquire_many_owned(u32::try_from(n).ok()?)
            .ok()?;
        Some(Charge {
            permit: Some(permit),
            over: 0,
            room: Arc::clone(self),
        })
    }
}

/// Bytes charged to an [`AnswerRoom`], given back when dropped.
#[derive(Debug)]
pub struct Charge {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    over: usize,
    room: Arc<AnswerRoom>,
}

impl Charge {
    /// Bytes charged.
    #[must_use]
    pub fn len(&self) -> usize {
        self.permit
            .as_ref()
            .map_or(0, tokio::sync::OwnedSemaphorePermit::num_permits)
            + self.over
    }

    /// Whether nothing is charged.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Charges up to `n` more from what the budget has free; returns how
    /// many it could not (never waits).
    fn take_free(&mut self, n: usize) -> usize {
        let k = n.min(self.room.free());
        let got = u32::try_from(k)
            .ok()
            .filter(|k| *k > 0)
            .and_then(|k| Arc::clone(&self.room.sem).try_acquire_many_owned(k).ok());
        let taken = got
            .as_ref()
            .map_or(0, tokio::sync::OwnedSemaphorePermit::num_permits);
        match (got, &mut self.permit) {
            (Some(p), Some(mine)) => mine.merge(p),
            (Some(p), None) => self.permit = Some(p),
            (None, _) => {}
        }
        n - taken
    }

    /// Charges `n` more: what the budget has free, the rest as an overdraft
    /// (never waits). `false` when the overdraft would pass the budget
    /// (then nothing is charged).
    #[must_use]
    pub fn add(&mut self, n: usize) -> bool {
        let had = self.len();
        let short = self.take_free(n);
        if short == 0 {
            return true;
        }
        let max = self.room.max;
        let ok = self
            .room
            .over
            .fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |o| o.checked_add(short).filter(|t| *t <= max),
            )
            .is_ok();
        if ok {
            self.over += short;
        } else {
            // Nothing charged after all: the free part goes back too.
            self.shrink_to(had);
        }
        ok
    }

    /// Charges at least `n` in all, overdrawing when short; `false` when
    /// the overdraft would pass the budget.
    #[must_use]
    pub fn cover(&mut self, n: usize) -> bool {
        let have = self.len();
        have >= n || self.add(n - have)
    }

    /// Charges up to `n` in all from what the budget has free, never
    /// overdrawing (bytes the gateway writes itself).
    pub fn cover_free(&mut self, n: usize) {
        let have = self.len();
        if have < n {
            let _ = self.take_free(n - have);
        }
    }

    /// Gives back all but `n`: the overdraft first.
    pub fn shrink_to(&mut self, n: usize) {
        let mut excess = self.len().saturating_sub(n);
        let from_over = excess.min(self.over);
        self.over -= from_over;
        self.room
            .over
            .fetch_sub(from_over, std::sync::atomic::Ordering::Relaxed);
        excess -= from_over;
        if excess > 0
            && let Some(p) = &mut self.permit
        {
            drop(p.split(excess));
        }
    }

    /// Takes `other`'s bytes into this charge.
    pub fn merge(&mut self, mut other: Self) {
        if let Some(p) = other.permit.take() {
            match &mut self.permit {
                Some(mine) => mine.merge(p),
                None => self.permit = Some(p),
            }
        }
        self.over += std::mem::take(&mut other.over);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.room
            .over
            .fetch_sub(self.over, std::sync::atomic::Ordering::Relaxed);
    }
}

/// An answer's body, whole in memory (a JSON error, a node's answer
/// collected under `max_upstream_bytes`), handed to the connection in 64 KiB
/// slices, so a node answer's share of the gateway's answer buffer
/// (`max_answer_buffer_bytes`) is held until its last slice is taken, and
/// one not taken by its deadline ends the connection.
pub struct AnswerBody {
    data: Bytes,
    room: Option<Charge>,
    by: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl AnswerBody {
    /// A body of `data`, outside the answer buffer.
    #[must_use]
    pub fn new(data: impl Into<Bytes>) -> Self {
        Self {
            data: data.into(),
            room: None,
            by: None,
        }
    }

    /// The body's bytes not yet handed on.
    #[must_use]
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether nothing is left to hand on.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Holds `room` (its share of the answer buffer) until the body is
    /// taken or dropped, and ends it with an error past `write_timeout` +
    /// its length at [`MIN_ANSWER_RATE`].
    pub(crate) fn hold(&mut self, room: Charge, write_timeout: Duration) {
        let pace = Duration::from_secs((self.data.len() / MIN_ANSWER_RATE) as u64);
        let by = tokio::time::Instant::now() + write_timeout + pace;
        self.room = Some(room);
        self.by = Some(Box::pin(tokio::time::sleep_until(by)));
    }
}

impl hyper::body::Body for AnswerBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        if this.data.is_empty() {
            this.room = None;
            return Poll::Ready(None);
        }
        if let Some(by) = &mut this.by
            && by.as_mut().poll(cx).is_ready()
        {
            this.room = None;
            this.data = Bytes::new();
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took its answer slower than the gateway allows",
            ))));
        }
        let slice = this.data.split_to(this.data.len().min(ANSWER_SLICE));
        if this.data.is_empty() {
            this.room = None;
        }
        Poll::Ready(Some(Ok(hyper::body::Frame::data(slice))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.data.len() as u64)
    }
}

/// A JSON answer.
#[must_use]
pub fn json<T: serde::Serialize + ?Sized>(status: StatusCode, body: &T) -> Answer {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "null".into());
    let mut r = Response::new(AnswerBody::new(text));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A plain-text answer.
#[must_use]
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Answer {
    let mut r = Response::new(AnswerBody::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The bearer token of a request, RFC 6750 §2.1: one `Authorization`
/// header, scheme `Bearer` (any case), one space, the token.
///
/// `Ok(None)`: no `Authorization` header, or another scheme (the request has
/// no bearer token). `Err`: a malformed one (more than one header, an empty
/// token, bytes a token cannot hold).
pub fn bearer(headers: &HeaderMap) -> Result<Option<Vec<u8>>, &'static str> {
    let mut all = headers.get_all(AUTHORIZATION).iter();
    let Some(v) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err("more than one Authorization header");
    }
    let v = v.as_bytes();
    if v.len() >= 6 && v[..6].eq_ignore_ascii_case(b"bearer") {
        // `Bearer` alone, or followed by a tab or another blank: a bearer
        // token written wrongly, not "no token" (which a tenant without
        // `require_jwt` would let through as `ok_no_auth`).
        match v.get(6) {
            None => return Err("a Bearer Authorization header without a token"),
            Some(b' ') => {}
            // `Bearerish ...`: the scheme name goes on (a tchar, RFC 9110
            // §5.6.2), so it is another scheme.
            Some(c) if c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(c) => {
                return Ok(None);
            }
            // A tab, NBSP (0xA0), a comma...: backends that split on any
            // blank would read the token after it.
            Some(_) => {
                return Err(
                    "a Bearer Authorization header whose scheme is followed by something other than a space",
                );
            }
        }
    } else {
        return Ok(None);
    }
    let token = v[7..].trim_ascii();
    if token.is_empty() {
        return Err("an empty bearer token");
    }
    // b64token (RFC 6750): ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/", then "="s.
    if !token
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(b))
    {
        return Err("a bearer token with characters a token cannot hold");
    }
    Ok(Some(token.to_vec()))
}

/// A header as UTF-8 text, when present and readable.
#[must_use]
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A header a request carries once, or not at all: an error when it
/// appears twice or is not visible ASCII (a client's copy beside a
/// gateway's, two `Host`s read one way here and another way by the next
/// hop, bytes no route or allowlist can match), never a silent pick of one.
///
/// # Errors
/// Why, naming the header.
pub fn single_header<'h>(h: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, String> {
    let mut all = h.get_all(name).iter();
    let Some(first) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(format!("`{name}` appears more than once"));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| format!("`{name}` is not visible ASCII"))
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Over the cap.
    TooLarge,
    /// The gateway's buffer for request bodies (`max_body_buffer_bytes`)
    /// has no room for its next bytes.
    Busy,
    /// The client went away or sent a broken body.
    Broken(String),
    /// The body did not finish arriving in time.
    Timeout,
}

impl BodyError {
    /// The JSON-RPC error answer a door gives for it (bodies of at most
    /// `max` bytes): the same at every door that reads bodies.
    #[must_use]
    pub fn answer(&self, max: usize) -> Answer {
        use crate::jsonrpc::{code, error_object};
        let (status, code, message, data) = match self {
            Self::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                code::INTERNAL,
                "the gateway's buffer for request bodies (max_body_buffer_bytes) is full: retry"
                    .to_owned(),
                Some(serde_json::json!({ "reason": "unavailable" })),
            ),
            Self::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                code::INVALID_REQUEST,
                format!("the body is over {max} bytes"),
                None,
            ),
            Self::Broken(e) => (StatusCode::BAD_REQUEST, code::PARSE_ERROR, e.clone(), None),
            Self::Timeout => (
                StatusCode::REQUEST_TIMEOUT,
                code::INVALID_REQUEST,
                "the body did not arrive in time".to_owned(),
                None,
            ),
        };
        json(status, &error_object(None, code, &message, data))
    }
}

/// Request bodies held at once across the doors that read them
/// (`[limits] max_body_buffer_bytes`): each body takes room for its bytes
/// as they arrive and keeps it until its request is answered. Bodies had
/// only a per-request cap: 10,000 connections each holding a body of just
/// under 1 MiB until `body_timeout_ms` held about 10 GiB.
///
/// Shared between client sources where the door sees them (the proxy: an
/// IPv4 address or IPv6 prefix, as connection slots count them): once the
/// buffer is three quarters full, a source holding half of it (or one body
/// of `max_body_bytes`, if more) takes no more, so one address with a few
/// hundred stalled bodies cannot turn every other client's request into a
/// 503. (The forward-auth door's requests all come from the gateway in
/// front of it: no share there.)
#[derive(Debug, Clone)]
pub struct BodyRoom(Arc<BodyRoomInner>);

#[derive(Debug)]
struct BodyRoomInner {
    sem: Arc<tokio::sync::Semaphore>,
    max: usize,
    shares: jotd_transport::slots::ByteShares,
}

impl BodyRoom {
    /// A buffer of `max` bytes, whose bodies are at most `max_body` each.
    #[must_use]
    pub fn new(max: usize, max_body: usize) -> Self {
        let max = max.min(tokio::sync::Semaphore::MAX_PERMITS);
        Self(Arc::new(BodyRoomInner {
            sem: Arc::new(tokio::sync::Semaphore::new(max)),
            max,
            shares: jotd_transport::slots::ByteShares::new(max, max_body),
        }))
    }

    /// Bytes free.
    #[must_use]
    pub fn free(&self) -> usize {
        self.0.sem.available_permits()
    }

    /// Takes `n` bytes for `source` (none: no share applies); `None` when
    /// the buffer has no room, or is contended and `source` holds its share.
    fn take(
        &self,
        source: Option<std::net::IpAddr>,
        n: usize,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if let Some(source) = source {
            let in_use = self.0.max.saturating_sub(self.0.sem.available_permits());
            if !self.0.shares.take(source, n, in_use, true) {
                return None;
            }
        }
        let permit = Arc::clone(&self.0.sem)
            .try_acquire_many_owned(u32::try_from(n).unwrap_or(u32::MAX))
            .ok();
        if permit.is_none() {
            self.give(source, n);
        }
        permit
    }

    fn give(&self, source: Option<std::net::IpAddr>, n: usize) {
        if let Some(source) = source {
            self.0.shares.give(source, n);
        }
    }
}

/// A body read whole, and the room it holds in the [`BodyRoom`] (given
/// back on drop: keep it until the request is answered).
#[derive(Debug)]
pub struct HeldBody {
    /// The bytes.
    pub bytes: Bytes,
    room: Option<tokio::sync::OwnedSemaphorePermit>,
    charged: usize,
    source: Option<std::net::IpAddr>,
    body_room: Option<BodyRoom>,
}

impl Drop for HeldBody {
    fn drop(&mut self) {
        self.room = None;
        if let Some(r) = &self.body_room {
            r.give(self.source, self.charged);
        }
    }
}

impl std::ops::Deref for HeldBody {
    type Target = Bytes;
    fn deref(&self) -> &Bytes {
        &self.bytes
    }
}

/// Reads a body of at most `max` bytes within `timeout`, each chunk taking
/// its room in `room` as it arrives, counted against `source`'s share
/// where the door knows the client (none left: [`BodyError::Busy`]). A
/// `Content-Length` over `max` is refused before a byte is read (it took
/// room until the count passed `max`, and a full buffer then said "retry"
/// to a request that can never pass).
pub async fn read_body(
    body: Incoming,
    max: usize,
    timeout: Duration,
    room: &BodyRoom,
    source: Option<std::net::IpAddr>,
) -> Result<HeldBody, BodyError> {
    use hyper::body::Body as _;
    let declared = body.size_hint().lower();
    if declared > max as u64 {
        return Err(BodyError::TooLarge);
    }
    let read = async {
        let mut body = Limited::new(body, max);
        // The declared length up front (at most `max`): the buffer does not
        // double past what was charged for it.
        let mut out = HeldBody {
            bytes: Bytes::new(),
            room: None,
            charged: 0,
            source,
            body_room: Some(room.clone()),
        };
        let mut bytes = bytes::BytesMut::with_capacity(usize::try_from(declared).unwrap_or(max));
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(f) => f,
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    return Err(BodyError::TooLarge);
                }
                Err(e) => return Err(BodyError::Broken(e.to_string())),
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            if data.is_empty() {
                continue;
            }
            let Some(more) = room.take(source, data.len()) else {
                return Err(BodyError::Busy);
            };
            out.charged += data.len();
            match &mut out.room {
                Some(h) => h.merge(more),
                None => out.room = Some(more),
            }
            bytes.extend_from_slice(&data);
        }
        out.bytes = bytes.freeze();
        Ok(out)
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(BodyError::Timeout))
}

/// What answers a door's requests (with the peer's address).
pub type Handler = Arc<
    dyn Fn(Request<Incoming>, SocketAddr) -> std::pin::Pin<Box<dyn Future<Output = Answer> + Send>>
        + Send
        + Sync,
>;

/// Resolves once `stop` holds true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A connection's socket whose writes fail once a client stops taking its
/// answers: hyper waits on a client's flow control without limit, so a client
/// that sends requests and never reads the answers held its connection (slot,
/// buffered answer) for good and stalled the drain. When a write has to wait,
/// a window of `timeout` opens in which the client must take
/// [`MIN_PROGRESS`] bytes, or the connection fails at its end. A new window
/// opens only for a client that falls behind after the last one ended (it had
/// caught up: its writes taken whole). So a client reading a few bytes now and
/// then cannot hold a connection, whether its answers are large or many small
/// pipelined ones.
struct WriteStall<S> {
    inner: S,
    timeout: Duration,
    /// The open window: the bytes taken in it (it ends at `timer`'s
    /// deadline). One timer per connection, reset for each window.
    window: Option<usize>,
    /// Since when the client has been behind (a write not taken whole).
    behind_since: Option<tokio::time::Instant>,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

/// Bytes a client behind on its answers must take within `write_timeout`
/// (with the default 10 s, a floor of 1.6 KB/s while it is behind).
const MIN_PROGRESS: usize = 16 << 10;

impl<S> WriteStall<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            window: None,
            behind_since: None,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    /// Counts the outcome of a write of `wanted` bytes: bytes taken count
    /// towards [`MIN_PROGRESS`] (reached: the window closes), a write taken
    /// whole means the client caught up; a write that must wait opens a
    /// window if none is open for this spell behind, and turns into an error
    /// when the window ends.
    fn check(
        &mut self,
        cx: &mut std::task::Context<'_>,
        wanted: usize,
        poll: std::task::Poll<std::io::Result<usize>>,
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        match &poll {
            Poll::Ready(Ok(n)) => {
                if let Some(taken) = self.window.as_mut() {
                    *taken += n;
                    if *taken >= MIN_PROGRESS {
                        self.window = None;
                    }
                }
                if *n >= wanted {
                    self.behind_since = None;
                } else if self.behind_since.is_none() {
                    self.behind_since = Some(tokio::time::Instant::now());
                }
                return poll;
            }
            Poll::Ready(Err(_)) => return poll,
            Poll::Pending => {}
        }
        // (The clock is read only when the client is behind.)
        let now = tokio::time::Instant::now();
        let since = *self.behind_since.get_or_insert(now);
        // No window, or the last one ended before this spell behind began.
        if self.window.is_none() || self.timer.deadline() < since {
            self.window = Some(0);
            self.timer.as_mut().reset(now + self.timeout);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took too little of its answer in write_timeout_ms",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteStall<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteStall<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, buf.len(), poll)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        let wanted = bufs.iter().map(|b| b.len()).sum();
        self.check(cx, wanted, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    // Only writes count as progress: a socket's flush and shutdown are ready
    // at once and say nothing about whether the client reads.
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves HTTP/1.1 on `listener` with `handle` until `stop` turns true; then
/// stops accepting and lets open connections finish (keep-alive ones close
/// after their current request), each within `drain_timeout`. A write that
/// leaves a client behind on its answers closes its connection when the
/// client has not taken 16 KiB within `write_timeout` ([`WriteStall`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: Handler,
    mut stop: watch::Receiver<bool>,
    (header_timeout, write_timeout, drain_timeout): (Duration, Duration, Duration),
    slots: Arc<ConnectionSlots>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors or similar: back off, keep serving.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // At the connection cap: a door makes room at the cost of an address
        // holding two connections more than the newcomer's, else refuses it
        // (the peer retries elsewhere); the admin listener closes a
        // connection to make room (`jotd_transport::slots`).
        let Some(slot) = admit(&slots, peer) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handle = Arc::clone(&handle);
        let mut stop = stop.clone();
        let slot = Arc::new(slot);
        tasks.spawn(async move {
            let held = Arc::clone(&slot);
            let service = hyper::service::service_fn(move |req| {
                // Busy until its answer is ready: a door at its cap makes room
                // from idle connections first.
                let busy = held.busy();
                let fut = handle(req, peer);
                async move {
                    let answer = fut.await;
                    drop(busy);
                    Ok::<_, std::convert::Infallible>(answer)
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder
                .serve_connection(
                    TokioIo::new(WriteStall::new(stream, write_timeout)),
                    service,
                )
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                // Closed to make room for another address.
                () = slot.closed() => {}
                () = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(drain_timeout, conn).await;
                }
            }
        });
        // Reap finished connections so the set does not grow.
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
}

/// Admits `peer` to `slots`, counting what the cap did: `None` when refused.
pub(crate) fn admit(slots: &Arc<ConnectionSlots>, peer: SocketAddr) -> Option<Slot> {
    match slots.admit(peer.ip(), std::time::Instant::now()) {
        Admitted::In { slot, closed } => {
            if closed > 0 {
                metrics::counter!("jotd_gateway_connections_closed_for_room_total")
                    .increment(closed as u64);
            }
            Some(slot)
        }
        Admitted::Refused => {
            metrics::counter!("jotd_gateway_connections_refused_total").increment(1);
            None
        }
    }
}

/// A connection of the gRPC (ext_authz) listener holding its slot: reads and
/// writes fail once the listener closes it to make room, and the slot is given
/// back when hyper and every call of the connection have dropped it. Each
/// call marks the connection busy ([`SlotInfo`]), so room is made from idle
/// connections first.
pub(crate) struct Slotted {
    io: tokio::net::TcpStream,
    slot: Arc<Slot>,
    /// Waits for the close signal; `None` once it came (the error is sticky).
    closed: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
}

/// The connect info each gRPC call of a [`Slotted`] connection carries in its
/// request extensions: [`Slot::busy`] while the call runs.
#[derive(Clone)]
pub(crate) struct SlotInfo {
    pub(crate) slot: Arc<Slot>,
}

impl Slotted {
    fn check(&mut self, cx: &mut std::task::Context<'_>) -> std::io::Result<()> {
        let closed = match self.closed.as_mut() {
            Some(wait) => wait.as_mut().poll(cx).is_ready(),
            None => true,
        };
        if closed {
            // Never poll the finished future again.
            self.closed = None;
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "closed to make room for another address",
            ));
        }
        Ok(())
    }
}

impl tokio::io::AsyncRead for Slotted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.check(cx)?;
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Slotted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.check(cx)?;
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Slotted {
    type ConnectInfo = SlotInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        SlotInfo {
            slot: Arc::clone(&self.slot),
        }
    }
}

/// The gRPC listener's connections, each admitted to `slots` first (the
/// same rule as the HTTP doors: one address cannot hold every slot).
pub(crate) fn slotted_incoming(
    listener: tokio::net::TcpListener,
    slots: Arc<ConnectionSlots>,
) -> impl futures_util::Stream<Item = std::io::Result<Slotted>> {
    futures_util::stream::unfold((listener, slots), |(listener, slots)| async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(slot) = admit(&slots, peer) else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let slot = Arc::new(slot);
            let waits = Arc::clone(&slot);
            let closed: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> =
                Box::pin(async move { waits.closed().await });
            let io = Slotted {
                io: stream,
                slot,
                closed: Some(closed),
            };
            return Some((Ok(io), (listener, slots)));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A charge takes from the budget while it can and runs an overdraft
    /// past it (never waiting, never failing); admission closes while there
    /// is an overdraft; shrinking pays the overdraft back first.
    #[test]
    fn answer_room_charges_admits_and_overdraws() {
        let room = AnswerRoom::new(100 << 10);
        let mut a = room.admit(ADMIT_ROOM).unwrap();
        assert_eq!(
            (room.free(), a.len()),
            ((100 << 10) - ADMIT_ROOM, ADMIT_ROOM)
        );
        // 64 KiB more with 36 KiB free: the free part taken, the rest overdrawn.
        assert!(a.add(64 << 10));
        assert_eq!((room.free(), room.overdraft()), (0, 28 << 10));
        assert!(room.admit(1).is_none(), "held + 1 passes the budget");
        a.shrink_to(ADMIT_ROOM);
        assert_eq!((room.overdraft(), a.len()), (0, ADMIT_ROOM));
        assert!(room.admit(1).is_some());
        let mut b = room.charge();
        assert!(b.add(10));
        a.merge(b);
        assert_eq!(a.len(), ADMIT_ROOM + 10);
        // The overdraft stops at the budget.
        assert!(!a.add(1 << 20));
        assert_eq!(room.overdraft(), 0);
        // An overdraft, then room freed elsewhere: admission opens again as
        // soon as held + n fits, not when the overdraft is paid back.
        let mut big = room.charge();
        assert!(big.add(room.free()));
        assert!(a.add(4 << 10));
        assert_eq!(room.overdraft(), 4 << 10);
        assert!(room.admit(1).is_none());
        drop(big);
        assert!(
            room.admit(1).is_some(),
            "room freed elsewhere covers the overdraft"
        );
        // Gateway-made bytes are only ever taken from what is free.
        let before = room.overdraft();
        let mut c = room.charge();
        c.cover_free(1 << 20);
        assert_eq!((room.free(), room.overdraft()), (0, before));
        drop(c);
        drop(a);
        assert_eq!((room.overdraft(), room.free()), (0, 100 << 10));
    }

    /// A node answer's room in the answer buffer is held until its last
    /// slice is handed on (not when hyper takes the body: a slow reader's
    /// answer stays counted), and given back if the body is dropped; one
    /// not taken by its pace deadline ends with an error.
    #[tokio::test(start_paused = true)]
    async fn an_answer_holds_its_room_until_taken_and_keeps_a_pace() {
        use hyper::body::Body as _;
        let room = AnswerRoom::new(1 << 20);
        let data = Bytes::from(vec![b'x'; 200 << 10]);
        let mut body = AnswerBody::new(data.clone());
        body.hold(room.admit(200 << 10).unwrap(), Duration::from_secs(10));
        let mut body = std::pin::pin!(body);
        let mut got = 0;
        while let Some(frame) = body.frame().await {
            let n = frame.unwrap().into_data().unwrap().len();
            assert!(n <= ANSWER_SLICE);
            got += n;
            if got < data.len() {
                assert_eq!(
                    room.free(),
                    (1 << 20) - (200 << 10),
                    "held while slices are left"
                );
            }
        }
        assert_eq!(got, data.len());
        assert_eq!(room.free(), 1 << 20, "given back once taken");
        assert!(body.is_end_stream());

        // Dropped half-taken (a client gone): given back.
        let mut body = AnswerBody::new(data.clone());
        body.hold(room.admit(1000).unwrap(), Duration::from_secs(10));
        drop(body);
        assert_eq!(room.free(), 1 << 20);

        // Past write_timeout + its length at MIN_ANSWER_RATE (10 s + 12 s
        // here), the next slice is an error and the room goes back.
        let mut body = AnswerBody::new(data.clone());
        body.hold(room.admit(1000).unwrap(), Duration::from_secs(10));
        let mut body = std::pin::pin!(body);
        assert!(body.frame().await.unwrap().is_ok());
        tokio::time::advance(Duration::from_secs(21)).await;
        assert!(body.frame().await.unwrap().is_ok(), "within its pace");
        tokio::time::advance(Duration::from_secs(2)).await;
        let e = body.frame().await.unwrap().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(room.free(), 1 << 20);
        // Answers outside the buffer (errors, small JSON) have no deadline.
        let mut plain = std::pin::pin!(AnswerBody::new(data));
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(plain.frame().await.unwrap().is_ok());
    }

    fn h(values: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in values {
            m.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn bearer_tokens_are_read_strictly() {
        assert_eq!(bearer(&h(&[])), Ok(None));
        assert_eq!(bearer(&h(&["Basic dXNlcjpwYXNz"])), Ok(None));
        assert_eq!(
            bearer(&h(&["Bearer abc.def.ghi"])),
            Ok(Some(b"abc.def.ghi".to_vec()))
        );
        assert_eq!(bearer(&h(&["bearer abc"])), Ok(Some(b"abc".to_vec())));
        assert!(bearer(&h(&["Bearer "])).is_err());
        assert!(bearer(&h(&["Bearer a b"])).is_err());
        assert!(bearer(&h(&["Bearer a\"b"])).is_err());
        assert!(bearer(&h(&["Bearer a", "Bearer b"])).is_err());
        // A bearer token written wrongly is refused, not read as no token
        // (which a tenant without `require_jwt` would let through).
        assert!(bearer(&h(&["Bearer\tabc.def.ghi"])).is_err());
        assert!(bearer(&h(&["bearer"])).is_err());
        assert!(bearer(&h(&["Bearer,abc"])).is_err());
        let mut nbsp = HeaderMap::new();
        nbsp.insert(
            AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer\xa0abc.def.ghi").unwrap(),
        );
        assert!(bearer(&nbsp).is_err());
        // Another scheme that only starts like it is still another scheme.
        assert_eq!(bearer(&h(&["Bearerish abc"])), Ok(None));
    }

    /// A connection closed to make room fails every read and write after,
    /// without polling its finished close future again (a panic).
    #[tokio::test]
    async fn a_slotted_connection_closed_for_room_stays_closed() {
        use jotd_transport::slots::SlotRule;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let slots = ConnectionSlots::new(2, SlotRule::Share, 64);
        let two = [10, 0, 0, 2].into();
        let Admitted::In { slot, .. } = slots.admit(two, std::time::Instant::now()) else {
            panic!("admitted")
        };
        let slot = Arc::new(slot);
        let waits = Arc::clone(&slot);
        let mut io = Slotted {
            io: stream,
            slot,
            closed: Some(Box::pin(async move { waits.closed().await })),
        };
        let _second = slots.admit(two, std::time::Instant::now());
        // A newcomer elsewhere: the oldest of 10.0.0.2 (ours) makes room.
        let _third = slots.admit([10, 0, 0, 3].into(), std::time::Instant::now());
        let mut buf = [0u8; 8];
        for _ in 0..3 {
            let e = io.read(&mut buf).await.unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
            let e = io.write(b"x").await.unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
        }
    }

    /// A reader that takes a few bytes every 20 ms: each write progresses,
    /// but far below `MIN_PROGRESS` per timeout. The stall timer is not
    /// restarted by such crumbs (before, any progress restarted it and such a
    /// client held its connection for good); a reader that takes all gets
    /// everything.
    #[tokio::test]
    async fn a_reader_taking_crumbs_is_cut_off_and_a_fast_one_is_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let answer = vec![7u8; 64 << 10];
        for (crumb, every, cut) in [(8usize, 20u64, true), (64 << 10, 0, false)] {
            let (near, mut far) = tokio::io::duplex(4096);
            let mut io = WriteStall::new(near, Duration::from_millis(300));
            let reader = tokio::spawn(async move {
                let mut buf = vec![0u8; crumb];
                let mut taken = 0;
                loop {
                    if every > 0 {
                        tokio::time::sleep(Duration::from_millis(every)).await;
                    }
                    match far.read(&mut buf).await {
                        Ok(0) | Err(_) => return taken,
                        Ok(n) => taken += n,
                    }
                }
            });
            let written = tokio::time::timeout(Duration::from_secs(20), io.write_all(&answer))
                .await
                .expect("the write ends");
            if cut {
                let e = written.unwrap_err();
                assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
                reader.abort();
            } else {
                written.unwrap();
                drop(io);
                assert_eq!(reader.await.unwrap(), answer.len());
            }
        }
    }

    /// A client that falls behind for a moment and catches up (its last
    /// write taken whole) ends the stall: a later answer, past the first
    /// stall's deadline, is not cut off for it.
    #[tokio::test]
    async fn a_client_that_catches_up_ends_the_stall() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, mut far) = tokio::io::duplex(4096);
        let mut io = WriteStall::new(near, Duration::from_millis(300));
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut taken = 0;
            // Behind for 200 ms, then takes everything as it comes.
            tokio::time::sleep(Duration::from_millis(200)).await;
            loop {
                match far.read(&mut buf).await {
                    Ok(0) | Err(_) => return taken,
                    Ok(n) => taken += n,
                }
            }
        });
        // The first answer outgrows the buffer: a write waits (the stall
        // starts), then the client takes it whole (1,000 bytes, below
        // MIN_PROGRESS).
        io.write_all(&[1u8; 5096]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        // Past the first stall's deadline: a second answer that outgrows the
        // buffer again goes out.
        io.write_all(&[2u8; 9000]).await.unwrap();
        drop(io);
        assert_eq!(reader.await.unwrap(), 5096 + 9000);
    }

    /// Many small answers: each is taken whole now and then (256 bytes every
    /// 100 ms, far below MIN_PROGRESS per window), which must not open a
    /// fresh window each time.
    #[tokio::test]
    async fn many_small_answers_taken_slowly_are_cut_off_too() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, mut far) = tokio::io::duplex(4096);
        let mut io = WriteStall::new(near, Duration::from_millis(300));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 256];
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if matches!(far.read(&mut buf).await, Ok(0) | Err(_)) {
                    return;
                }
            }
        });
        let written: std::io::Result<()> = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                io.write_all(&[0u8; 200]).await?;
            }
        })
        .await
        .expect("cut off within the test's time");
        let e = written.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        reader.abort();
    }
}
