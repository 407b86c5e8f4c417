//! The QUIC server: connections and streams on tokio (quinn), verification on
//! a dedicated rayon pool, bridged by channels so no tokio worker ever blocks
//! on crypto.
//!
//! One bidirectional stream carries one batch: the server reads it to its end
//! (never more than the frame limit), reserves the batch's tokens from the
//! server-wide in-flight budget (waiting at most `overload_wait`, then an
//! `overloaded` error frame), verifies on the pool, writes each decision chunk
//! as it completes and finishes the stream. Limits, all enforced by waiting or
//! refusing, never by an unbounded queue: connections (extra ones are
//! refused), concurrent streams per connection (QUIC flow control: the client
//! cannot open more), tokens in flight across the server.
//!
//! Drain (on the `shutdown` future): new connections are refused, every
//! connection stops taking new streams, batches in flight finish (up to
//! `drain_timeout`), then connections close with code 0 `"shutdown"`.

use crate::codec::{HARD_MAX_FRAME_BYTES, Limits, peek_batch_header};
use crate::handler::{Served, Tally, TenantWatch, send_error, serve_held, serve_stream_with};
use crate::messages::ErrorCode;
use jotd_core::{Decision, Engine, Reason, Snapshot, UnixTime};
use quinn::{Endpoint, Incoming, RecvStream, SendStream, VarInt};
use rayon::ThreadPool;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

/// QUIC application close code: the server is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 0;
/// QUIC stream stop code: the request exceeded the frame limit.
pub const STOP_TOO_LARGE: u32 = 1;

/// Server limits and timers.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Frame and batch limits.
    pub limits: Limits,
    /// Connections served at once; more are refused. Default 1024.
    pub max_connections: usize,
    /// Concurrent streams (batches) per connection. Default 256.
    pub max_streams_per_connection: u32,
    /// Tokens being verified or answered across the server. Default 65,536.
    pub max_tokens_in_flight: usize,
    /// How long a batch may wait for room in the in-flight budget before it
    /// gets an `overloaded` error. Default 2 s.
    pub overload_wait: Duration,
    /// A connection with no traffic for this long is closed. Default 30 s.
    pub idle_timeout: Duration,
    /// Keep-alive interval. Default 10 s.
    pub keep_alive: Duration,
    /// Longest wait for batches in flight at shutdown. Default 10 s.
    pub drain_timeout: Duration,
    /// Tenants whose decisions each batch's [`Tally`] also counts per tenant
    /// (an operator's bounded opt-in for per-tenant metrics). Default none.
    pub tenant_watch: Option<Arc<TenantWatch>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            limits: Limits::default(),
            max_connections: 1024,
            max_streams_per_connection: 256,
            max_tokens_in_flight: 65_536,
            overload_wait: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            tenant_watch: None,
        }
    }
}

/// A future the backend returns from [`Backend::refetch`].
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What the server needs from the daemon around it: keys, the clock, and
/// somewhere to report.
pub trait Backend: Send + Sync + 'static {
    /// The key snapshot a new batch is verified against (read once per batch).
    fn snapshot(&self) -> Arc<Snapshot>;
    /// The time a new batch is verified at.
    fn now(&self) -> UnixTime;
    /// Whether an `unknown_kid` for `tenant` may be cured by refetching its
    /// keys (it has remote JWKS sources). Such decisions are held back until
    /// [`refetch`](Self::refetch) finishes.
    fn refetchable(&self, _tenant: &str) -> bool {
        false
    }
    /// Refetch keys of these tenants (single-flight, rate-limited by the
    /// implementation). Resolves to `true` when new keys were installed.
    fn refetch(&self, _tenants: Vec<String>) -> BoxFuture<bool> {
        Box::pin(async { false })
    }
    /// Something happened; called on tokio threads, must not block.
    fn event(&self, _event: &Event<'_>) {}
}

/// Why a connection was refused or ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// At `max_connections`.
    ConnectionLimit,
    /// The TLS handshake failed (wrong ALPN, no or bad client certificate, …).
    Handshake,
}

/// A finished batch, reported once per stream.
#[derive(Debug)]
pub struct BatchReport<'a> {
    /// Items in the batch (0 when it could not be read).
    pub items: usize,
    /// The error frame sent instead of decisions, if any.
    pub error: Option<ErrorCode>,
    /// Decisions by reason and algorithm.
    pub tally: &'a Tally,
    /// Time spent waiting for room in the in-flight budget.
    pub queued: Duration,
    /// Time on the verification pool.
    pub verify: Duration,
    /// From the end of the request to the last byte of the answer handed to QUIC.
    pub total: Duration,
    /// Whether held `unknown_kid` decisions were re-verified after a refetch.
    pub refetched: bool,
}

/// Server events for logs and metrics.
#[derive(Debug)]
pub enum Event<'a> {
    /// A connection finished its handshake.
    ConnectionOpened {
        /// Peer address.
        remote: SocketAddr,
    },
    /// A connection ended.
    ConnectionClosed {
        /// Peer address.
        remote: SocketAddr,
    },
    /// A connection was refused.
    ConnectionRefused {
        /// Peer address.
        remote: SocketAddr,
        /// Why.
        why: Refusal,
        /// Detail (the TLS alert, …).
        detail: &'a str,
    },
    /// A stream could not be served (the client reset it or vanished).
    StreamAborted,
    /// A batch waited `overload_wait` without room and was refused.
    Overloaded {
        /// Items in the refused batch.
        items: usize,
    },
    /// A batch was answered (decisions or an error frame).
    Batch(&'a BatchReport<'a>),
}

/// Live gauges, readable at any time (metrics sample them).
#[derive(Debug, Default)]
pub struct ServerStats {
    connections: AtomicUsize,
    streams: AtomicUsize,
    tokens_in_flight: AtomicUsize,
    batches: AtomicU64,
}

impl ServerStats {
    /// Connections open (handshaking included).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
    /// Streams being served.
    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }
    /// Tokens holding room in the in-flight budget.
    pub fn tokens_in_flight(&self) -> usize {
        self.tokens_in_flight.load(Ordering::Relaxed)
    }
    /// Batches answered since start.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
}

/// How a drain went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Streams in flight when the drain began.
    pub streams_at_start: usize,
    /// Whether every one finished within `drain_timeout`.
    pub complete: bool,
}

struct Shared {
    opts: ServerOptions,
    engine: Arc<Engine>,
    pool: Arc<ThreadPool>,
    backend: Arc<dyn Backend>,
    budget: Arc<Semaphore>,
    stats: Arc<ServerStats>,
    draining: watch::Receiver<bool>,
}

/// A bound, not yet running, QUIC server.
pub struct Server {
    endpoint: Endpoint,
    shared: Arc<Shared>,
    drain: watch::Sender<bool>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The TLS configuration does not suit QUIC.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Tls(String),
    /// Binding the UDP socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A limit is out of range.
    #[error("{0}")]
    Limit(String),
}

/// Path MTU discovery up to jumbo frames: batches are tens of kilobytes, and
/// fewer, larger packets cost far less CPU on both ends. Discovery probes; a
/// path that drops large packets keeps the size it proved (quinn's black-hole
/// detection falls back).
pub(crate) fn mtu_discovery() -> quinn::MtuDiscoveryConfig {
    let mut m = quinn::MtuDiscoveryConfig::default();
    m.upper_bound(8952);
    m
}

fn transport(opts: &ServerOptions) -> Result<quinn::TransportConfig, ServerError> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(opts.max_streams_per_connection))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(opts.idle_timeout)
                .map_err(|_| ServerError::Limit("idle_timeout is too long".into()))?,
        ))
        .keep_alive_interval(Some(opts.keep_alive))
        .mtu_discovery_config(Some(mtu_discovery()));
    // A request stream may carry a whole frame; let it arrive without stalls.
    let window = u32::try_from(opts.limits.max_frame_bytes.min(HARD_MAX_FRAME_BYTES) + 5)
        .unwrap_or(u32::MAX);
    t.stream_receive_window(VarInt::from_u32(window));
    Ok(t)
}

impl Server {
    /// Binds the UDP socket. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// A TLS config unfit for QUIC, a limit out of range, or the bind failing.
    pub fn bind(
        opts: ServerOptions,
        tls: rustls::ServerConfig,
        engine: Arc<Engine>,
        pool: Arc<ThreadPool>,
        backend: Arc<dyn Backend>,
    ) -> Result<Self, ServerError> {
        if opts.max_connections == 0
            || opts.max_streams_per_connection == 0
            || opts.max_tokens_in_flight == 0
        {
            return Err(ServerError::Limit(
                "max_connections, max_streams_per_connection and max_tokens_in_flight must be at least 1"
                    .into(),
            ));
        }
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| ServerError::Tls(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(transport(&opts)?));
        let endpoint =
            Endpoint::server(config, opts.listen).map_err(|source| ServerError::Bind {
                addr: opts.listen,
                source,
            })?;
        let (drain, draining) = watch::channel(false);
        let budget = Arc::new(Semaphore::new(
            opts.max_tokens_in_flight.min(Semaphore::MAX_PERMITS),
        ));
        Ok(Self {
            endpoint,
            shared: Arc::new(Shared {
                opts,
                engine,
                pool,
                backend,
                budget,
                stats: Arc::new(ServerStats::default()),
                draining,
            }),
            drain,
        })
    }

    /// The bound address (the port, when `listen` asked for port 0).
    ///
    /// # Errors
    /// The socket's address cannot be read.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The live gauges.
    #[must_use]
    pub fn stats(&self) -> Arc<ServerStats> {
        Arc::clone(&self.shared.stats)
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> DrainReport {
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    while connections.try_join_next().is_some() {}
                    let stats = &self.shared.stats;
                    if stats.connections() >= self.shared.opts.max_connections {
                        self.shared.backend.event(&Event::ConnectionRefused {
                            remote: incoming.remote_address(),
                            why: Refusal::ConnectionLimit,
                            detail: "at max_connections",
                        });
                        incoming.refuse();
                        continue;
                    }
                    stats.connections.fetch_add(1, Ordering::Relaxed);
                    connections.spawn(connection(Arc::clone(&self.shared), incoming));
                }
            }
        }
        // Drain: refuse new connections, stop new streams, let batches finish.
        self.endpoint.set_server_config(None);
        let streams_at_start = self.shared.stats.streams();
        let _ = self.drain.send(true);
        let complete = tokio::time::timeout(self.shared.opts.drain_timeout, async {
            while connections.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        connections.abort_all();
        self.endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        DrainReport {
            streams_at_start,
            complete,
        }
    }
}

struct CountGuard<'a>(&'a AtomicUsize, usize);

impl Drop for CountGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::Relaxed);
    }
}

async fn connection(shared: Arc<Shared>, incoming: Incoming) {
    let _count = CountGuard(&shared.stats.connections, 1);
    let remote = incoming.remote_address();
    let accepted = match incoming.accept() {
        Ok(connecting) => connecting.await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let conn = match accepted {
        Ok(c) => c,
        Err(detail) => {
            shared.backend.event(&Event::ConnectionRefused {
                remote,
                why: Refusal::Handshake,
                detail: &detail,
            });
            return;
        }
    };
    shared.backend.event(&Event::ConnectionOpened { remote });
    let mut streams = JoinSet::new();
    let mut draining = shared.draining.clone();
    loop {
        if *draining.borrow() {
            break;
        }
        tokio::select! {
            _ = draining.changed() => break,
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    while streams.try_join_next().is_some() {}
                    shared.stats.streams.fetch_add(1, Ordering::Relaxed);
                    streams.spawn(stream(Arc::clone(&shared), send, recv));
                }
                Err(_) => break,
            },
        }
    }
    if *draining.borrow() {
        conn.set_max_concurrent_bi_streams(VarInt::from_u32(0));
        while streams.join_next().await.is_some() {}
        conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
    } else {
        // The peer closed or the connection timed out: its streams cannot be
        // answered; let them notice and end.
        while streams.join_next().await.is_some() {}
    }
    shared.backend.event(&Event::ConnectionClosed { remote });
}

/// The result of the rayon job for one batch.
struct Job {
    served: Served,
    held: Vec<(u32, Decision)>,
    /// The distinct tenants of the held items.
    tenants: Vec<String>,
    tally: Tally,
    verify: Duration,
}

/// The distinct tenants of held items (decoding the request again: rare, and
/// on the pool).
fn held_tenants(input: &[u8], limits: &Limits, held: &[(u32, Decision)]) -> Vec<String> {
    let mut tenants: Vec<String> = Vec::new();
    if held.is_empty() {
        return tenants;
    }
    if let Ok(Some(frame)) = crate::codec::next_frame(input, limits)
        && let Ok(batch) = crate::codec::decode_batch(frame.body, limits)
    {
        for (i, _) in held {
            if let Some(item) = batch.items.get(*i as usize)
                && !tenants.iter().any(|t| t == item.tenant)
            {
                tenants.push(item.tenant.to_owned());
            }
        }
    }
    tenants
}

/// What a pool job sends to its stream's task: frames as they are encoded,
/// then the job's result (`None`: it panicked). One channel for both, so a
/// batch whose frames are written by then costs the I/O thread one wake-up.
enum FromPool<T> {
    Frame(Vec<u8>),
    Done(Option<T>),
}

/// Runs `job` on the verification pool with a frame sender, writes the frames
/// to the stream as they come (through a channel bounded in practice by one
/// batch), and returns the job's result; `None` when it panicked. No tokio
/// thread waits on crypto.
async fn on_pool<T: Send + 'static>(
    pool: &ThreadPool,
    send: &mut SendStream,
    writable: &mut bool,
    job: impl FnOnce(&(dyn Fn(Vec<u8>) + Sync)) -> T + Send + 'static,
) -> Option<T> {
    let (tx, mut rx) = mpsc::unbounded_channel::<FromPool<T>>();
    pool.spawn(move || {
        let frames = |frame: Vec<u8>| {
            let _ = tx.send(FromPool::Frame(frame));
        };
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| job(&frames))).ok();
        let _ = tx.send(FromPool::Done(result));
    });
    let (ok, result) = forward(&mut rx, send, *writable).await;
    *writable = ok;
    result
}

async fn stream(shared: Arc<Shared>, mut send: SendStream, mut recv: RecvStream) {
    let _count = CountGuard(&shared.stats.streams, 1);
    let limits = shared.opts.limits;
    let max_input = limits.max_frame_bytes.min(HARD_MAX_FRAME_BYTES) + 4;
    let input = match recv.read_to_end(max_input).await {
        Ok(bytes) => bytes,
        Err(quinn::ReadToEndError::TooLong) => {
            let _ = recv.stop(VarInt::from_u32(STOP_TOO_LARGE));
            let message = format!("request exceeds the frame limit of {max_input} bytes");
            answer_error(&shared, &mut send, 0, ErrorCode::FrameTooLarge, &message).await;
            return;
        }
        Err(_) => {
            shared.backend.event(&Event::StreamAborted);
            return;
        }
    };
    let started = Instant::now();
    // Reserve the batch's tokens; a malformed request reserves one and fails in the job.
    let max_permits = shared.opts.max_tokens_in_flight.min(Semaphore::MAX_PERMITS);
    let (request_id, claimed) = peek_batch_header(&input).unwrap_or((0, 1));
    let items = usize::try_from(claimed)
        .unwrap_or(usize::MAX)
        .clamp(1, limits.max_items.max(1))
        .min(max_permits);
    let permits = u32::try_from(items).unwrap_or(u32::MAX);
    let Ok(Ok(permit)) = tokio::time::timeout(
        shared.opts.overload_wait,
        Arc::clone(&shared.budget).acquire_many_owned(permits),
    )
    .await
    else {
        shared.backend.event(&Event::Overloaded { items });
        let message = format!(
            "{items} tokens would exceed max_tokens_in_flight = {}",
            shared.opts.max_tokens_in_flight
        );
        answer_error(
            &shared,
            &mut send,
            request_id,
            ErrorCode::Overloaded,
            &message,
        )
        .await;
        return;
    };
    shared
        .stats
        .tokens_in_flight
        .fetch_add(items, Ordering::Relaxed);
    let _in_flight = CountGuard(&shared.stats.tokens_in_flight, items);
    let queued = started.elapsed();
    let input = Arc::new(input);

    let snapshot = shared.backend.snapshot();
    let now = shared.backend.now();
    let mut writable = true;
    let first = {
        let shared = Arc::clone(&shared);
        let input = Arc::clone(&input);
        let snapshot = Arc::clone(&snapshot);
        on_pool(
            &shared.pool.clone(),
            &mut send,
            &mut writable,
            move |send| {
                let t = Instant::now();
                let backend = Arc::clone(&shared.backend);
                let watch = shared.opts.tenant_watch.clone();
                let hold = move |tenant: &str, d: &Decision| {
                    d.reason() == Reason::UnknownKid && backend.refetchable(tenant)
                };
                let mut tally = Tally::watching(watch);
                let (served, held) = serve_stream_with(
                    &shared.engine,
                    &shared.pool,
                    &snapshot,
                    &input,
                    &limits,
                    now,
                    Some(&hold),
                    &mut tally,
                    send,
                );
                let tenants = held_tenants(&input, &limits, &held);
                Job {
                    served,
                    held,
                    tenants,
                    tally,
                    verify: t.elapsed(),
                }
            },
        )
        .await
    };
    let mut job = match first {
        Some(job) => job,
        None => {
            // Per-token panics are caught in the engine; this is the batch
            // plumbing itself. The stream fails as a whole, loudly.
            write_error(
                &mut send,
                request_id,
                ErrorCode::Internal,
                "internal error serving the batch",
            )
            .await;
            Job {
                served: Served::Failed(ErrorCode::Internal),
                held: Vec::new(),
                tenants: Vec::new(),
                tally: Tally::default(),
                verify: Duration::ZERO,
            }
        }
    };
    let mut refetched = false;
    if !job.held.is_empty() {
        refetched = shared
            .backend
            .refetch(std::mem::take(&mut job.tenants))
            .await;
        let snapshot = if refetched {
            shared.backend.snapshot()
        } else {
            snapshot
        };
        let held = std::mem::take(&mut job.held);
        let job_shared = Arc::clone(&shared);
        let job_input = Arc::clone(&input);
        let second = on_pool(
            &shared.pool.clone(),
            &mut send,
            &mut writable,
            move |send| {
                let mut tally = Tally::watching(job_shared.opts.tenant_watch.clone());
                serve_held(
                    &job_shared.engine,
                    &job_shared.pool,
                    &snapshot,
                    &job_input,
                    &limits,
                    now,
                    held,
                    refetched,
                    &mut tally,
                    send,
                );
                tally
            },
        )
        .await;
        match second {
            Some(t) => job.tally.merge(&t),
            None => {
                // Held items would be left undecided: fail the batch as a whole.
                write_error(
                    &mut send,
                    request_id,
                    ErrorCode::Internal,
                    "internal error re-verifying held items",
                )
                .await;
                job.served = Served::Failed(ErrorCode::Internal);
            }
        }
    }
    let _ = send.finish();
    let (items, error) = match job.served {
        Served::Decided { items, .. } => (items, None),
        Served::Failed(code) => (0, Some(code)),
    };
    shared.stats.batches.fetch_add(1, Ordering::Relaxed);
    let report = BatchReport {
        items,
        error,
        tally: &job.tally,
        queued,
        verify: job.verify,
        total: started.elapsed(),
        refetched,
    };
    shared.backend.event(&Event::Batch(&report));
    if !writable {
        shared.backend.event(&Event::StreamAborted);
    }
    drop(_in_flight);
    drop(permit);
    // Keep the stream until the peer has the answer, so a drain that closes the
    // connection next cannot cut it off.
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
}

/// Writes one error frame.
async fn write_error(send: &mut SendStream, request_id: u64, code: ErrorCode, message: &str) {
    let frame = std::sync::Mutex::new(Vec::new());
    send_error(request_id, code, message, &|f| {
        *frame.lock().expect("frame") = f;
    });
    let frame = frame.into_inner().expect("frame");
    let _ = send.write_all(&frame).await;
}

/// Writes the frames the pool sends until it is done with them. After a
/// write fails (the client went away) the rest are drained and dropped, so the
/// pool never waits on a dead stream. Returns whether the stream is still
/// writable, and the job's result (`None` also if the job vanished unheard).
async fn forward<T>(
    rx: &mut mpsc::UnboundedReceiver<FromPool<T>>,
    send: &mut SendStream,
    mut writable: bool,
) -> (bool, Option<T>) {
    while let Some(msg) = rx.recv().await {
        match msg {
            FromPool::Frame(frame) => {
                if writable && send.write_all(&frame).await.is_err() {
                    writable = false;
                }
            }
            FromPool::Done(result) => return (writable, result),
        }
    }
    (writable, None)
}

async fn answer_error(
    shared: &Shared,
    send: &mut SendStream,
    request_id: u64,
    code: ErrorCode,
    message: &str,
) {
    write_error(send, request_id, code, message).await;
    let _ = send.finish();
    shared.stats.batches.fetch_add(1, Ordering::Relaxed);
    let tally = Tally::default();
    shared.backend.event(&Event::Batch(&BatchReport {
        items: 0,
        error: Some(code),
        tally: &tally,
        queued: Duration::ZERO,
        verify: Duration::ZERO,
        total: Duration::ZERO,
        refetched: false,
    }));
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
}
