//! The QUIC server: moves bytes between QUIC streams and batch jobs. Each
//! stream's request is read under the server's limits and handed to a
//! [`BatchJob`](crate::BatchJob): a cheap batch (cached tokens, HMAC; at
//! most 128 items) is decided on the stream's own task, anything costly on
//! the dedicated rayon pool (no tokio worker waits on the pool; while the
//! engine says batches are cheap, one costly check may run inline before the
//! batch moves to the pool); its frames are written back as they come. Every decision is the job's; this module only decides when to stop
//! listening.
//!
//! Connections: an attempt takes a handshake slot (`max_handshakes`, shared
//! between sources as connection slots are; at most
//! `max_handshakes_per_address` of them from one source (an IPv4 address or
//! an IPv6 `ipv6_share_prefix`, [`source`](crate::slots::source)), Retry from
//! `retry_after_handshakes` on, `handshake_timeout`) and only a completed
//! handshake takes a connection slot (`max_connections`), so clients that
//! never finish a handshake (no certificate under mutual TLS, say) cannot lock
//! out clients that do. At `max_connections` an address holding two
//! connections more than the newcomer's gives up its oldest idle one
//! ([`SlotRule::Share`](crate::slots::SlotRule::Share)): one source cannot
//! hold every slot.
//!
//! Drain (on the `shutdown` future): new connections are refused, streams
//! opened from then on are answered `shutting_down`, batches in flight finish
//! (up to `drain_timeout`), then connections close with code 0 `"shutdown"`.

use crate::options::ServerOptions;
use crate::report::BatchReport;
use crate::slots::{Admitted, ConnectionSlots, SlotRule};
use crate::stream::{refuse_draining, stream};
use jotd_core::{Engine, Snapshot, UnixTime};
use quinn::{Endpoint, Incoming, VarInt};
use rayon::ThreadPool;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// QUIC application close code: the server is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 0;
/// QUIC application close code: the server is at `max_connections`.
pub const CLOSE_CONNECTION_LIMIT: u32 = 2;
/// QUIC stream stop code: the request exceeded the frame limit.
pub const STOP_TOO_LARGE: u32 = 1;
/// QUIC stream stop code: the server will not read this request (timed out,
/// refused for overload, or the server is draining).
pub const STOP_REFUSED: u32 = 2;
/// QUIC stream reset code: the client did not read the answer within
/// `write_timeout`.
pub const RESET_WRITE_TIMEOUT: u32 = 3;
/// QUIC stream reset code: the answer's frames not yet read found no room in
/// `max_request_buffer_bytes` (a client reading too slowly while the server
/// is full); the decisions not yet sent are dropped.
pub const RESET_ANSWER_BUFFER_FULL: u32 = 4;

/// A future the backend returns from [`Backend::refetch`].
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What the server needs from the daemon around it: keys, the clock, and
/// somewhere to report.
pub trait Backend: Send + Sync + 'static {
    /// The key snapshot a new batch is verified against (read once per batch).
    fn snapshot(&self) -> Arc<Snapshot>;
    /// The time a new batch is verified at.
    fn now(&self) -> UnixTime;
    /// Refetch keys of these tenants (single-flight, rate-limited by the
    /// implementation). Resolves to `true` when new keys were installed. Asked
    /// only for tenants whose snapshot entry has remote keys.
    fn refetch(&self, _tenants: Vec<String>) -> BoxFuture<bool> {
        Box::pin(async { false })
    }
    /// Whether batch reports should list denied items (a debug log is on).
    /// Read once per batch.
    fn record_denials(&self) -> bool {
        false
    }
    /// Something happened; called on tokio threads, must not block.
    fn event(&self, _event: &Event<'_>) {}
}

/// Why a connection was refused or ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// At `max_connections` (after the handshake), no address holding two
    /// connections more than this one's.
    ConnectionLimit,
    /// Closed at `max_connections` to make room for a connection from an
    /// address holding at least two fewer ([`SlotRule::Share`](crate::slots::SlotRule::Share)).
    ClosedForRoom,
    /// At `max_handshakes` (before the handshake).
    HandshakeLimit,
    /// Its address already has `max_handshakes_per_address` in progress.
    HandshakeShare,
    /// The handshake did not complete within `handshake_timeout`.
    HandshakeTimeout,
    /// The TLS handshake failed (wrong ALPN, no or bad client certificate, …).
    Handshake,
}

/// Why the server gave up on a stream before answering it whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The client reset the stream or vanished.
    Aborted,
    /// The request did not arrive within `request_timeout`.
    RequestTimeout,
    /// The client did not read the answer within `write_timeout`.
    WriteTimeout,
    /// The answer's unread frames found no room in the request buffer.
    AnswerBufferFull,
}

/// Why a batch was refused for load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overload {
    /// No room in `max_tokens_in_flight` within `overload_wait`.
    TokensInFlight,
    /// No room in `max_request_buffer_bytes` for what arrived of the request.
    RequestBuffer,
}

/// Server events for logs and metrics.
#[derive(Debug)]
pub enum Event<'a> {
    /// A connection finished its handshake and took a slot.
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
    /// A connection attempt from an unvalidated address got a QUIC Retry.
    Retry {
        /// Peer address (as claimed).
        remote: SocketAddr,
    },
    /// A stream ended without its whole answer.
    Stream(StreamEnd),
    /// A batch was refused for load.
    Overloaded {
        /// Items in the refused batch (0 when refused before it arrived).
        items: usize,
        /// Which budget was full.
        why: Overload,
    },
    /// A batch was answered (decisions or an error frame).
    Batch(&'a BatchReport),
}

/// Live gauges, readable at any time (metrics sample them).
#[derive(Debug, Default)]
pub struct ServerStats {
    pub(crate) connections: AtomicUsize,
    pub(crate) handshakes: AtomicUsize,
    pub(crate) streams: AtomicUsize,
    pub(crate) tokens_in_flight: AtomicUsize,
    pub(crate) request_bytes: AtomicUsize,
    pub(crate) batches: AtomicU64,
}

impl ServerStats {
    /// Connections open (handshake complete).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
    /// Handshakes in progress.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::Relaxed)
    }
    /// Streams being served.
    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }
    /// Tokens holding room in the in-flight budget.
    pub fn tokens_in_flight(&self) -> usize {
        self.tokens_in_flight.load(Ordering::Relaxed)
    }
    /// Bytes reserved by requests not yet decided.
    pub fn request_bytes(&self) -> usize {
        self.request_bytes.load(Ordering::Relaxed)
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

pub(crate) struct Shared {
    pub(crate) opts: ServerOptions,
    pub(crate) engine: Arc<Engine>,
    pub(crate) pool: Arc<ThreadPool>,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) tokens: Arc<Semaphore>,
    pub(crate) request_bytes: Arc<Semaphore>,
    pub(crate) stats: Arc<ServerStats>,
    draining: watch::Receiver<bool>,
    /// Connection slots, shared fairly between addresses.
    slots: Arc<ConnectionSlots>,
    /// Handshake slots (`max_handshakes`), shared alike: at the cap a source
    /// holding two handshakes more than the newcomer's gives up its oldest
    /// (the count was first-come: 16 sources answering Retry and never
    /// finishing held all of them, mutual TLS or not).
    handshake_slots: Arc<ConnectionSlots>,
    /// Handshakes in progress per address.
    handshaking: Mutex<HashMap<IpAddr, usize>>,
    /// The request buffer (`max_request_buffer_bytes`) shared between
    /// client sources (an IPv4 address, an IPv6 `ipv6_share_prefix`):
    /// once it is three quarters full, a source holding half of it (or one
    /// full-size request, if more) gets no more room for request bytes.
    /// Answers to batches already admitted are counted but not refused by
    /// the share (only by the buffer). A lone client still takes request
    /// bytes up to three quarters of the buffer (or its share, if more).
    pub(crate) request_shares: crate::slots::ByteShares,
}

/// A bound, not yet running, QUIC server.
pub struct Server {
    endpoint: Endpoint,
    transport: Arc<quinn::TransportConfig>,
    /// Set (with the endpoint's server config taken away) when the drain
    /// begins: a TLS switch after that must not open the endpoint again.
    closed: Arc<Mutex<bool>>,
    shared: Arc<Shared>,
    drain: watch::Sender<bool>,
}

fn quic_server_config(
    tls: rustls::ServerConfig,
    transport: &Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig, ServerError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::clone(transport));
    Ok(config)
}

/// Replaces a running server's TLS configuration (a renewed certificate, a
/// new client CA): handshakes from then on use it; connections already open
/// keep theirs. Cheap to clone; outlives nothing it needs.
#[derive(Clone)]
pub struct TlsSwitch {
    endpoint: Endpoint,
    transport: Arc<quinn::TransportConfig>,
    closed: Arc<Mutex<bool>>,
}

impl std::fmt::Debug for TlsSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSwitch").finish_non_exhaustive()
    }
}

/// A TLS config checked for QUIC ([`TlsSwitch::prepare`]), to be applied
/// later ([`TlsSwitch::apply`]): a reload checks the new files while it
/// reads the config and applies them only once the reload is accepted.
#[derive(Clone)]
pub struct PreparedTls(quinn::ServerConfig);

impl std::fmt::Debug for PreparedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedTls").finish_non_exhaustive()
    }
}

impl TlsSwitch {
    /// Checks `tls` for QUIC and builds what [`TlsSwitch::apply`] serves;
    /// nothing changes yet.
    ///
    /// # Errors
    /// A TLS config unfit for QUIC.
    pub fn prepare(&self, tls: rustls::ServerConfig) -> Result<PreparedTls, ServerError> {
        Ok(PreparedTls(quic_server_config(tls, &self.transport)?))
    }

    /// Serves new handshakes with `tls`; once the server drains, does
    /// nothing (the endpoint stays closed to new connections). Returns
    /// whether it was applied.
    pub fn apply(&self, tls: PreparedTls) -> bool {
        let closed = self.closed.lock().unwrap_or_else(PoisonError::into_inner);
        if *closed {
            return false;
        }
        self.endpoint.set_server_config(Some(tls.0));
        true
    }

    /// [`TlsSwitch::prepare`], then [`TlsSwitch::apply`].
    ///
    /// # Errors
    /// A TLS config unfit for QUIC (the old one keeps serving).
    pub fn replace(&self, tls: rustls::ServerConfig) -> Result<bool, ServerError> {
        let prepared = self.prepare(tls)?;
        Ok(self.apply(prepared))
    }
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
    /// An option is out of range.
    #[error(transparent)]
    Options(#[from] crate::options::OptionsError),
}

impl Server {
    /// Binds the UDP socket. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// A TLS config unfit for QUIC, an option out of range, or the bind failing.
    pub fn bind(
        opts: ServerOptions,
        tls: rustls::ServerConfig,
        engine: Arc<Engine>,
        pool: Arc<ThreadPool>,
        backend: Arc<dyn Backend>,
    ) -> Result<Self, ServerError> {
        opts.validate()?;
        let transport = Arc::new(opts.transport());
        let config = quic_server_config(tls, &transport)?;
        let endpoint = crate::options::endpoint(opts.listen, Some(config)).map_err(|source| {
            ServerError::Bind {
                addr: opts.listen,
                source,
            }
        })?;
        let (drain, draining) = watch::channel(false);
        let permits = |n: usize| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)));
        let opts_connections = opts.max_connections.get();
        let opts_handshakes = opts.max_handshakes.get();
        let ipv6_prefix = opts.ipv6_share_prefix;
        let request_shares = crate::slots::ByteShares::new(
            opts.max_request_buffer_bytes.get(),
            crate::job::min_request_buffer_bytes(&opts.limits),
        );
        Ok(Self {
            endpoint,
            transport,
            closed: Arc::new(Mutex::new(false)),
            shared: Arc::new(Shared {
                tokens: permits(opts.max_tokens_in_flight.get()),
                request_bytes: permits(opts.max_request_buffer_bytes.get()),
                opts,
                engine,
                pool,
                backend,
                stats: Arc::new(ServerStats::default()),
                draining,
                slots: ConnectionSlots::new(opts_connections, SlotRule::Share, ipv6_prefix),
                handshake_slots: ConnectionSlots::new(
                    opts_handshakes,
                    SlotRule::Share,
                    ipv6_prefix,
                ),
                handshaking: Mutex::new(HashMap::new()),
                request_shares,
            }),
            drain,
        })
    }

    /// A handle that replaces the TLS configuration while the server runs.
    #[must_use]
    pub fn tls_switch(&self) -> TlsSwitch {
        TlsSwitch {
            endpoint: self.endpoint.clone(),
            transport: Arc::clone(&self.transport),
            closed: Arc::clone(&self.closed),
        }
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
                    self.admit(incoming, &mut connections);
                }
            }
        }
        // Drain: refuse new connections, answer new streams `shutting_down`,
        // let batches finish. Under the lock a TLS switch takes, so a reload
        // during the drain cannot open the endpoint again.
        {
            let mut closed = self.closed.lock().unwrap_or_else(PoisonError::into_inner);
            *closed = true;
            self.endpoint.set_server_config(None);
        }
        let streams_at_start = self.shared.stats.streams();
        let _ = self.drain.send(true);
        let complete = tokio::time::timeout(self.shared.opts.drain_timeout, async {
            while connections.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        // Connections closed first, then the tasks aborted: an aborted
        // stream task drops its send stream, which quinn would finish (FIN,
        // maybe mid-frame: an answer cut short that reads as whole up to
        // there); on a closed connection that sends nothing, and the client
        // sees `shutdown`.
        self.endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
        connections.abort_all();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        DrainReport {
            streams_at_start,
            complete,
        }
    }

    /// Decides what a connection attempt gets: a handshake, a Retry, or a
    /// refusal. No connection slot is taken here.
    fn admit(&self, incoming: Incoming, connections: &mut JoinSet<()>) {
        let shared = &self.shared;
        let opts = &shared.opts;
        let remote = incoming.remote_address();
        let handshakes = shared.stats.handshakes();
        if handshakes >= opts.retry_after_handshakes && !incoming.remote_address_validated() {
            // A spoofed source never answers the Retry, so floods of Initials
            // from addresses it cannot receive at cost one packet each.
            match incoming.retry() {
                Ok(()) => {
                    shared.backend.event(&Event::Retry { remote });
                    return;
                }
                Err(e) => return self.admit_validated(e.into_incoming(), connections),
            }
        }
        self.admit_validated(incoming, connections);
    }

    fn admit_validated(&self, incoming: Incoming, connections: &mut JoinSet<()>) {
        let shared = &self.shared;
        let remote = incoming.remote_address();
        let Some(share) = HandshakeShare::take(shared, remote.ip()) else {
            shared.backend.event(&Event::ConnectionRefused {
                remote,
                why: Refusal::HandshakeShare,
                detail: "at max_handshakes_per_address",
            });
            incoming.refuse();
            return;
        };
        let slot = match shared.handshake_slots.admit(remote.ip(), Instant::now()) {
            Admitted::In { slot, .. } => slot,
            Admitted::Refused => {
                shared.backend.event(&Event::ConnectionRefused {
                    remote,
                    why: Refusal::HandshakeLimit,
                    detail: "at max_handshakes",
                });
                incoming.refuse();
                return;
            }
        };
        shared.stats.handshakes.fetch_add(1, Ordering::Relaxed);
        // Made here, not in the task: a task aborted before it first runs
        // (the drain timeout's `abort_all`) still gives the count back.
        let handshake = OwnedCount::new(&shared.stats, |s| &s.handshakes, 1);
        connections.spawn(connection(
            Arc::clone(shared),
            incoming,
            share,
            (handshake, slot),
        ));
    }
}

/// One handshake in progress counted against its address; given back on drop.
struct HandshakeShare {
    shared: Arc<Shared>,
    peer: IpAddr,
}

impl HandshakeShare {
    /// `None` when `peer`'s source ([`crate::slots::source`]) already has
    /// `max_handshakes_per_address` in progress.
    fn take(shared: &Arc<Shared>, peer: IpAddr) -> Option<Self> {
        let peer = crate::slots::source(peer, shared.opts.ipv6_share_prefix);
        let mut map = shared
            .handshaking
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(peer).or_default();
        if *n >= shared.opts.max_handshakes_per_address.get() {
            return None;
        }
        *n += 1;
        Some(Self {
            shared: Arc::clone(shared),
            peer,
        })
    }
}

impl Drop for HandshakeShare {
    fn drop(&mut self) {
        let mut map = self
            .shared
            .handshaking
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

/// Decrements a gauge when dropped.
pub(crate) struct CountGuard<'a>(pub(crate) &'a AtomicUsize, pub(crate) usize);

/// A [`CountGuard`] that owns its way to the gauge, so it can be made before
/// a task is spawned and moved in: dropped with the task's future even when
/// the task is aborted before it first runs.
pub(crate) struct OwnedCount {
    stats: Arc<ServerStats>,
    field: fn(&ServerStats) -> &AtomicUsize,
    n: usize,
}

impl OwnedCount {
    /// Counts `n` already added to `field`; takes them off when dropped.
    pub(crate) fn new(
        stats: &Arc<ServerStats>,
        field: fn(&ServerStats) -> &AtomicUsize,
        n: usize,
    ) -> Self {
        Self {
            stats: Arc::clone(stats),
            field,
            n,
        }
    }
}

impl Drop for OwnedCount {
    fn drop(&mut self) {
        (self.field)(&self.stats).fetch_sub(self.n, Ordering::Relaxed);
    }
}

impl Drop for CountGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::Relaxed);
    }
}

/// Reports a connection refused (or closed) at `max_connections` and closes
/// it with code 2 and the reason: `at max_connections` for a newcomer, or
/// `closed to make room for another address`.
fn close_at_limit(shared: &Shared, conn: &quinn::Connection, why: Refusal) {
    let detail = match why {
        Refusal::ClosedForRoom => "closed to make room for another address",
        _ => "at max_connections",
    };
    shared.backend.event(&Event::ConnectionRefused {
        remote: conn.remote_address(),
        why,
        detail,
    });
    conn.close(VarInt::from_u32(CLOSE_CONNECTION_LIMIT), detail.as_bytes());
}

async fn connection(
    shared: Arc<Shared>,
    incoming: Incoming,
    share: HandshakeShare,
    handshake: (OwnedCount, crate::slots::Slot),
) {
    let remote = incoming.remote_address();
    let accepted = match incoming.accept() {
        Ok(connecting) => {
            let done = tokio::time::timeout(shared.opts.handshake_timeout, connecting);
            let made_room = handshake.1.closed();
            let outcome = tokio::select! {
                r = done => Some(r),
                // Its slot went to a newcomer from a source holding fewer
                // (this one's holds two more): the attempt is dropped.
                () = made_room => None,
            };
            match outcome {
                None => Err((
                    Refusal::HandshakeLimit,
                    "closed at max_handshakes to make room for another source".to_owned(),
                )),
                Some(Ok(Ok(conn))) => Ok(conn),
                Some(Ok(Err(e))) => Err((Refusal::Handshake, e.to_string())),
                Some(Err(_)) => Err((
                    Refusal::HandshakeTimeout,
                    format!(
                        "no complete handshake within {:?}",
                        shared.opts.handshake_timeout
                    ),
                )),
            }
        }
        Err(e) => Err((Refusal::Handshake, e.to_string())),
    };
    drop((handshake, share));
    let conn = match accepted {
        Ok(c) => c,
        Err((why, detail)) => {
            shared.backend.event(&Event::ConnectionRefused {
                remote,
                why,
                detail: &detail,
            });
            return;
        }
    };
    // A handshake that completes during the drain takes no slot: admitting
    // it could close another address's connection (streams in flight) to
    // make room for one that would close at once.
    if *shared.draining.borrow() {
        conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
        return;
    }
    // Only an authenticated, complete handshake takes a slot.
    let stats = &shared.stats;
    let slot = match shared.slots.admit(remote.ip(), Instant::now()) {
        Admitted::In { slot, .. } => slot,
        Admitted::Refused => {
            close_at_limit(&shared, &conn, Refusal::ConnectionLimit);
            return;
        }
    };
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let _open = CountGuard(&stats.connections, 1);
    // Whose share of the request buffer this connection's streams take.
    let source = crate::slots::source(remote.ip(), shared.opts.ipv6_share_prefix);
    shared.backend.event(&Event::ConnectionOpened { remote });
    let mut work = JoinSet::new();
    let mut refusals = JoinSet::new();
    let mut draining = shared.draining.clone();
    let mut drain = *draining.borrow();
    if drain {
        conn.set_max_concurrent_bi_streams(VarInt::from_u32(0));
    }
    loop {
        if drain && work.is_empty() {
            break;
        }
        tokio::select! {
            changed = draining.changed(), if !drain => {
                // A closed sender means the server is gone: drain as well.
                drain = changed.is_err() || *draining.borrow();
                if drain {
                    // No new stream credit; streams the client opened before it
                    // learns so are answered `shutting_down`.
                    conn.set_max_concurrent_bi_streams(VarInt::from_u32(0));
                }
            }
            Some(_) = work.join_next(), if !work.is_empty() => {}
            () = slot.closed() => {
                // Its address held two connections more than a newcomer's.
                close_at_limit(&shared, &conn, Refusal::ClosedForRoom);
                break;
            }
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    while work.try_join_next().is_some() {}
                    while refusals.try_join_next().is_some() {}
                    if drain {
                        refusals.spawn(refuse_draining(Arc::clone(&shared), send, recv));
                    } else {
                        stats.streams.fetch_add(1, Ordering::Relaxed);
                        let count = OwnedCount::new(&shared.stats, |s| &s.streams, 1);
                        // Busy while it runs: room is made from idle
                        // connections first.
                        let busy = slot.busy();
                        let job = stream(Arc::clone(&shared), send, recv, source);
                        work.spawn(async move {
                            job.await;
                            drop((busy, count));
                        });
                    }
                }
                Err(_) => break,
            },
        }
    }
    // Drained, or the peer closed / timed out: streams still running cannot
    // be answered; let them notice and end.
    while work.join_next().await.is_some() {}
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while refusals.join_next().await.is_some() {}
    })
    .await;
    if drain {
        conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
    }
    shared.backend.event(&Event::ConnectionClosed { remote });
}

#[cfg(test)]
mod tests {
    use super::{OwnedCount, ServerStats};
    use crate::slots::ByteShares as RequestShares;

    /// Uncontended, a source takes what it asks; past three quarters of the
    /// buffer, one holding half takes no more, while another source still
    /// does; what is given back counts; a share is never below one request.
    #[test]
    fn request_shares_hold_past_three_quarters() {
        let a: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let b: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        let s = RequestShares::new(1000, 100);
        assert!(
            s.take(a, 700, 0, true),
            "a lone source, buffer not contended"
        );
        assert!(
            !s.take(a, 60, 700, true),
            "past three quarters, holding half"
        );
        assert!(s.take(b, 60, 700, true), "another source still takes");
        s.give(a, 300);
        assert!(
            s.take(a, 60, 460, true),
            "given back: below three quarters again"
        );
        assert!(s.take(a, 40, 760, true), "contended, but within half (460)");
        assert!(!s.take(a, 20, 800, true), "contended, past half");
        assert!(
            s.take(a, 20, 800, false),
            "an admitted answer: counted, not refused"
        );
        s.give(a, 20);
        // A buffer of one request: the share is the request, whatever half is.
        let one = RequestShares::new(1000, 1000);
        assert!(one.take(a, 999, 0, true));
        assert!(one.take(a, 1, 999, true));
        // Everything given back leaves nothing behind.
        s.give(a, 500);
        s.give(b, 60);
        assert!(s.is_empty());
    }
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    /// A count made before its task is spawned goes back when the task is
    /// aborted before it ever runs (the drain timeout's `abort_all`): made
    /// inside the task, it stayed one too high.
    #[test]
    fn a_task_aborted_before_it_runs_gives_its_count_back() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let stats = Arc::new(ServerStats::default());
        rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..3 {
                stats.streams.fetch_add(1, Ordering::Relaxed);
                let count = OwnedCount::new(&stats, |s| &s.streams, 1);
                set.spawn(async move {
                    std::future::pending::<()>().await;
                    drop(count);
                });
            }
            assert_eq!(stats.streams.load(Ordering::Relaxed), 3);
            // Nothing has run yet on this one-thread runtime.
            set.abort_all();
            while set.join_next().await.is_some() {}
        });
        assert_eq!(stats.streams.load(Ordering::Relaxed), 0);
    }
}
