//! The gateway's client: batches out over QUIC to a pool of jotd replicas,
//! decisions back as they arrive.
//!
//! Verification is a pure function of the token, the request and the key
//! snapshot, so a batch may be sent again, or twice, at no risk. A [`Client`]
//! uses that to survive replicas that die, stall, drain or refuse:
//!
//! - **Failover**: a batch whose stream fails (connection lost, reset, a
//!   retryable error frame such as `overloaded` or `shutting_down`, a broken
//!   answer) is sent again to another endpoint.
//! - **Hedging**: a batch with no complete answer after a delay derived from
//!   the observed latency ([`HedgePolicy`]) gets a second copy on another
//!   endpoint; a budget caps hedges to a fraction of batches, except when the
//!   first endpoint is already known to be failing.
//! - **Ejection**: an endpoint whose connection failed, or that stalled while
//!   a hedge answered, takes no new batches for a backoff that doubles while
//!   it keeps failing; a lost connection is re-established in the background,
//!   never on a batch's path while another endpoint is up.
//!
//! The caller sees exactly one decision per item: the first answer for an
//! item wins, a later one is dropped and counted ([`ClientStats`]). Every
//! call either yields all its decisions or returns a typed [`ClientError`].

mod batcher;
mod pending;

pub use batcher::{Batcher, BatcherOptions, BatcherStats, Check, CheckError, FlushReason};
pub use pending::Pending;

use crate::codec::{HARD_MAX_FRAME_BYTES, WireError, encode_batch};
use crate::messages::{BatchRequest, DecisionChunk, ErrorCode, Item, WireDecision};
use jotd_core::Reason;
use quinn::{Connection, Endpoint, VarInt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// When and how often a batch gets a second copy on another endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HedgePolicy {
    /// Hedge at all. Default `true`.
    pub enabled: bool,
    /// The hedge delay is the smoothed batch latency plus four times its
    /// deviation (as TCP's retransmission timer), within these bounds.
    /// Default 5 ms.
    pub min_delay: Duration,
    /// Default 50 ms: a batch stuck on a replica that died waits at most
    /// this long for its second copy.
    pub max_delay: Duration,
    /// Hedges per batch sent, at most, over time (a token bucket). Hedges of
    /// batches whose endpoint is ejected are free. Default 0.05.
    pub budget: f64,
    /// Hedges that may be spent at once. Default 10.
    pub burst: u32,
}

impl Default for HedgePolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            min_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
            budget: 0.05,
            burst: 10,
        }
    }
}

/// Resolves endpoint names (`host:port`) to addresses; the default asks the
/// system resolver. Tests and service-discovery integrations plug in their own.
pub trait Resolve: Send + Sync + 'static {
    /// The addresses `name` stands for now.
    fn resolve(&self, name: &str) -> ResolveFuture;
}

/// What [`Resolve::resolve`] returns.
pub type ResolveFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'static>,
>;

/// The system resolver (`getaddrinfo` on a blocking thread).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: &str) -> ResolveFuture {
        let name = name.to_owned();
        Box::pin(async move { Ok(tokio::net::lookup_host(name).await?.collect()) })
    }
}

/// Client settings.
#[derive(Clone)]
pub struct ClientOptions {
    /// jotd endpoints as addresses; batches spread across them.
    pub endpoints: Vec<SocketAddr>,
    /// jotd endpoints as names (`jotd-headless.ns.svc:4433`), resolved when
    /// the client starts and again every `resolve_interval`: replicas are
    /// followed as they come and go (a Kubernetes headless Service). A name
    /// that fails to resolve keeps its last addresses. Default none.
    pub names: Vec<String>,
    /// How often `names` are resolved again. Default 5 s.
    pub resolve_interval: Duration,
    /// Resolves `names`. Default [`SystemResolver`].
    pub resolver: Arc<dyn Resolve>,
    /// Connections to open to each endpoint. Default 1.
    pub connections_per_endpoint: usize,
    /// The name the server certificate must carry. Default `localhost`.
    pub server_name: String,
    /// TLS (see [`crate::client_config`]).
    pub tls: rustls::ClientConfig,
    /// Longest time for one batch, failovers and hedges included. Default 5 s.
    pub batch_timeout: Duration,
    /// Longest time to establish a connection. Default 2 s.
    pub connect_timeout: Duration,
    /// First ejection (and reconnect) delay after a failure; doubles up to
    /// `backoff_max` while the endpoint keeps failing. Default 100 ms.
    pub backoff_min: Duration,
    /// Longest such delay. Default 5 s.
    pub backoff_max: Duration,
    /// A connection with no packet from the server for this long is closed
    /// as dead. Default 3 s.
    pub idle_timeout: Duration,
    /// The client pings a connection it has sent nothing on for this long;
    /// a live server acknowledges within its ACK delay (25 ms), however busy
    /// its verification threads are. Default 100 ms.
    pub keep_alive: Duration,
    /// An endpoint with a batch late on it and no packet at all from it for
    /// this long (requests and pings unacknowledged) is dead: it is ejected
    /// and its late batches move on at once, outside the hedge budget.
    /// Default 250 ms; keep it well above `keep_alive` + 25 ms.
    pub dead_after: Duration,
    /// Hedged requests.
    pub hedge: HedgePolicy,
    /// Largest answer frame accepted. Default 16 MiB.
    pub max_frame_bytes: usize,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("endpoints", &self.endpoints)
            .field("names", &self.names)
            .field("batch_timeout", &self.batch_timeout)
            .field("hedge", &self.hedge)
            .finish_non_exhaustive()
    }
}

impl ClientOptions {
    /// Defaults for `endpoints` with `tls`.
    #[must_use]
    pub fn new(endpoints: Vec<SocketAddr>, tls: rustls::ClientConfig) -> Self {
        Self {
            endpoints,
            names: Vec::new(),
            resolve_interval: Duration::from_secs(5),
            resolver: Arc::new(SystemResolver),
            connections_per_endpoint: 1,
            server_name: "localhost".into(),
            tls,
            batch_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(3),
            keep_alive: Duration::from_millis(100),
            dead_after: Duration::from_millis(250),
            hedge: HedgePolicy::default(),
            max_frame_bytes: HARD_MAX_FRAME_BYTES,
        }
    }
}

impl ClientOptions {
    /// The longest any of the client's times may be: past it, adding the time
    /// to a clock overflows (a panic) long before it could matter.
    pub const MAX_TIME: Duration = Duration::from_secs(86_400);

    /// The shortest hedge delay while hedging is on.
    pub const MIN_HEDGE_DELAY: Duration = Duration::from_millis(1);

    /// Checks the options as [`Client::new`] does: every time non-zero (where
    /// zero would spin or fail every batch) and at most [`Self::MAX_TIME`];
    /// `backoff_min ≤ backoff_max`, `hedge.min_delay ≤ hedge.max_delay`
    /// (the hedge delay is clamped between them); a hedge budget from 0 to 1;
    /// 1 to 64 connections per endpoint; an answer frame limit from 1 byte to
    /// [`HARD_MAX_FRAME_BYTES`]; a server name that is a DNS name or an IP.
    ///
    /// # Errors
    /// The first option out of range, named.
    pub fn validate(&self) -> Result<(), ClientError> {
        let bad = |what: String| Err(ClientError::Config(what));
        crate::tls::check_server_name(&self.server_name)
            .map_err(|e| ClientError::Config(format!("server_name {e}")))?;
        for (name, t, zero_ok) in [
            ("resolve_interval", self.resolve_interval, false),
            ("batch_timeout", self.batch_timeout, false),
            ("connect_timeout", self.connect_timeout, false),
            ("backoff_min", self.backoff_min, true),
            ("backoff_max", self.backoff_max, false),
            ("idle_timeout", self.idle_timeout, false),
            ("keep_alive", self.keep_alive, false),
            ("dead_after", self.dead_after, false),
            ("hedge.min_delay", self.hedge.min_delay, true),
            ("hedge.max_delay", self.hedge.max_delay, true),
        ] {
            if t > Self::MAX_TIME || (t.is_zero() && !zero_ok) {
                let from = if zero_ok { "0" } else { "above 0" };
                return bad(format!(
                    "{name} {t:?}: must be {from} and at most {:?}",
                    Self::MAX_TIME
                ));
            }
        }
        if self.backoff_min > self.backoff_max {
            return bad("backoff_min must not exceed backoff_max".into());
        }
        if self.hedge.enabled && self.hedge.min_delay < Self::MIN_HEDGE_DELAY {
            return bad(format!(
                "hedge.min_delay {:?}: must be at least {:?} while hedging is on (a zero \
                 delay re-arms the hedge timer at once and spins)",
                self.hedge.min_delay,
                Self::MIN_HEDGE_DELAY
            ));
        }
        if self.hedge.min_delay > self.hedge.max_delay {
            return bad("hedge.min_delay must not exceed hedge.max_delay".into());
        }
        if !(0.0..=1.0).contains(&self.hedge.budget) {
            return bad(format!(
                "hedge.budget {}: must be 0 to 1 (hedges per batch)",
                self.hedge.budget
            ));
        }
        if !(1..=64).contains(&self.connections_per_endpoint) {
            return bad(format!(
                "connections_per_endpoint {}: must be 1 to 64",
                self.connections_per_endpoint
            ));
        }
        if !(1..=HARD_MAX_FRAME_BYTES).contains(&self.max_frame_bytes) {
            return bad(format!(
                "max_frame_bytes {}: must be 1 to {HARD_MAX_FRAME_BYTES}",
                self.max_frame_bytes
            ));
        }
        if self.keep_alive >= self.idle_timeout {
            return bad("keep_alive must be shorter than idle_timeout".into());
        }
        Ok(())
    }
}

/// How a connection or stream failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionFailure {
    /// The connection could not be started (a bad address, the endpoint closing).
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The handshake did not finish in time.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The connection ended (idle timeout, closed by the server, reset, …).
    #[error("connection lost: {0}")]
    Lost(#[from] quinn::ConnectionError),
    /// The server reset the answer stream with this code (a write timeout).
    #[error("stream reset by the server (code {0})")]
    Reset(u64),
    /// The server stopped reading the request with this code.
    #[error("request stopped by the server (code {0})")]
    Stopped(u64),
    /// The stream was already closed locally.
    #[error("stream closed")]
    Closed,
}

/// How an answer broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A frame that does not decode, or exceeds the limit.
    #[error("bad frame: {0}")]
    Frame(#[from] WireError),
    /// A chunk for another request.
    #[error("answer for request {0}")]
    WrongRequest(u64),
    /// A decision for an index outside the batch.
    #[error("decision for item {0}, outside the batch")]
    OutOfRange(u32),
    /// A second decision for one item on one stream.
    #[error("second decision for item {0}")]
    Duplicate(u32),
    /// The stream ended with items undecided.
    #[error("stream ended with {0} items undecided")]
    Undecided(usize),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// A frame type a server never sends.
    #[error("server sent a Batch frame")]
    BatchFrame,
    /// A `Decisions` frame with no decision in it.
    #[error("a Decisions frame with no decision")]
    EmptyChunk,
}

/// Why a batch has no (complete) answer. The batch as a whole is undecided;
/// [`retryable`](Self::retryable) says whether sending it again may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// A bad setting (no endpoints, a TLS config QUIC cannot use, …).
    #[error("client configuration: {0}")]
    Config(String),
    /// No endpoint could take the batch (all failed, ejected or tried).
    #[error("no endpoint available ({tried} tried){}", last.as_ref().map(|e| format!("; last: {e}")).unwrap_or_default())]
    Unavailable {
        /// Endpoints this batch was sent to or tried.
        tried: usize,
        /// The last failure, if any.
        last: Option<Box<Self>>,
    },
    /// The batch took longer than `batch_timeout`.
    #[error("batch timed out after {0:?}")]
    Timeout(Duration),
    /// A server refused the batch as a whole with an error frame.
    #[error("{endpoint}: server error {code} ({}): {message}", ErrorCode::from_code(*code).map_or("unknown", ErrorCode::as_str))]
    Server {
        /// The endpoint that answered.
        endpoint: SocketAddr,
        /// The [`ErrorCode`] number.
        code: u16,
        /// The server's message.
        message: String,
    },
    /// The connection or stream failed mid-batch.
    #[error("{endpoint}: {failure}")]
    Connection {
        /// The endpoint.
        endpoint: SocketAddr,
        /// What failed.
        failure: ConnectionFailure,
    },
    /// An answer broke the protocol.
    #[error("{endpoint}: protocol violation: {violation}")]
    Protocol {
        /// The endpoint that answered.
        endpoint: SocketAddr,
        /// What was wrong.
        violation: Violation,
    },
    /// The batch cannot be encoded (over the frame limit).
    #[error("cannot send batch: {0}")]
    Encode(WireError),
    /// The answers ended with items undecided (a client bug; fails closed).
    #[error("{0} items left undecided")]
    Incomplete(usize),
}

impl ClientError {
    /// Whether sending the same batch again (elsewhere, or later) may succeed.
    /// A batch the server found malformed or too large never will.
    #[must_use]
    pub fn retryable(&self) -> bool {
        match self {
            Self::Config(_) | Self::Encode(_) => false,
            Self::Server { code, .. } => matches!(
                ErrorCode::from_code(*code),
                Some(
                    ErrorCode::Overloaded
                        | ErrorCode::ShuttingDown
                        | ErrorCode::Internal
                        | ErrorCode::RequestTimeout
                )
            ),
            Self::Unavailable { .. }
            | Self::Timeout(_)
            | Self::Connection { .. }
            | Self::Protocol { .. }
            | Self::Incomplete(_) => true,
        }
    }

    /// The endpoint the failure came from, when one did.
    #[must_use]
    pub fn endpoint(&self) -> Option<SocketAddr> {
        match self {
            Self::Server { endpoint, .. }
            | Self::Connection { endpoint, .. }
            | Self::Protocol { endpoint, .. } => Some(*endpoint),
            Self::Unavailable { last, .. } => last.as_ref().and_then(|e| e.endpoint()),
            _ => None,
        }
    }

    /// A short stable name of the failure's kind (for counters).
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Unavailable { .. } => "unavailable",
            Self::Timeout(_) => "timeout",
            Self::Server { code, .. } => {
                ErrorCode::from_code(*code).map_or("server_unknown", ErrorCode::as_str)
            }
            Self::Connection { .. } => "connection",
            Self::Protocol { .. } => "protocol",
            Self::Encode(_) => "encode",
            Self::Incomplete(_) => "incomplete",
        }
    }
}

/// One decision as the client owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientDecision {
    /// Whether the request is allowed: the server said so **and** the reason
    /// is one this build knows to be an allow. A reason code this build does
    /// not know is a deny, whatever the server's `allow` bit (docs/protocol.md,
    /// "Reason codes"), so a newer server cannot make an older gateway fail open.
    pub allow: bool,
    /// Reason code number.
    pub reason: u16,
    /// Key id, when the signature verified.
    pub kid: Option<String>,
    /// `sub`, when the signature verified.
    pub sub: Option<String>,
    /// `exp`, when the signature verified.
    pub exp: Option<u64>,
    /// Returned claims: (name, raw JSON).
    pub claims: Vec<(String, String)>,
}

impl ClientDecision {
    /// The reason, when this build knows the code.
    #[must_use]
    pub fn reason(&self) -> Option<Reason> {
        Reason::from_code(self.reason)
    }
}

impl From<&WireDecision<'_>> for ClientDecision {
    fn from(d: &WireDecision<'_>) -> Self {
        Self {
            allow: d.allow && Reason::from_code(d.reason).is_some_and(Reason::is_allow),
            reason: d.reason,
            kid: d.kid.map(str::to_owned),
            sub: d.sub.map(str::to_owned),
            exp: d.exp,
            claims: d
                .claims
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }
}

/// What the client did, since it started (monotonic counters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Batches sent again after a failure on another endpoint.
    pub retries: u64,
    /// Second copies sent because the first had not answered in time.
    pub hedges: u64,
    /// Decisions that arrived for items already decided (dropped).
    pub late_duplicates: u64,
    /// Of those, the ones whose allow bit or reason differed from the
    /// decision delivered: two replicas that decide one token differently
    /// (a stale key, another config). Read only until the batch completes,
    /// so a lower bound.
    pub late_disagreements: u64,
    /// Answers that broke the protocol (a decision twice on one stream, an
    /// index out of range, another request's id, a stream ended early or
    /// with items undecided); each was dropped and its batch sent again
    /// elsewhere, so a batch can still succeed: a harness must count these.
    pub protocol_violations: u64,
    /// Times an endpoint was taken out of rotation.
    pub ejections: u64,
    /// Per endpoint (one row per connection slot).
    pub endpoints: Vec<EndpointStats>,
}

/// One endpoint's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStats {
    /// The address.
    pub addr: SocketAddr,
    /// Batches (first copies, retries and hedges) sent to it.
    pub sent: u64,
    /// Attempts on it that failed or stalled.
    pub failures: u64,
    /// Times it was ejected.
    pub ejections: u64,
    /// The live connection's path, if there is one.
    pub path: Option<PathStats>,
}

/// What QUIC knows of one live connection's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathStats {
    /// The UDP payload size path-MTU discovery has proved (1,200 at the
    /// start; up to 6,550 on loopback and jumbo-frame networks).
    pub mtu: u16,
    /// Packets this side declared lost (drops, or reordering past QUIC's
    /// thresholds); on loopback any loss means full socket buffers.
    pub lost_packets: u64,
    /// Packets this side sent.
    pub sent_packets: u64,
    /// The smoothed round-trip time.
    pub rtt: Duration,
}

struct SlotState {
    conn: Option<Connection>,
    /// Consecutive failures (connects, streams, stalls).
    failures: u32,
    /// No new batches before this.
    ejected_until: Option<Instant>,
}

pub(crate) struct Slot {
    addr: SocketAddr,
    outstanding: AtomicUsize,
    reconnecting: AtomicBool,
    /// A liveness check is under way (a batch was late on this slot).
    checking: AtomicBool,
    /// Held while connecting: one handshake per slot at a time.
    connecting: tokio::sync::Mutex<()>,
    sent: AtomicU64,
    failed: AtomicU64,
    ejections: AtomicU64,
    state: Mutex<SlotState>,
}

impl Slot {
    fn new(addr: SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            addr,
            outstanding: AtomicUsize::new(0),
            reconnecting: AtomicBool::new(false),
            checking: AtomicBool::new(false),
            connecting: tokio::sync::Mutex::new(()),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            state: Mutex::new(SlotState {
                conn: None,
                failures: 0,
                ejected_until: None,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A live connection that takes batches now.
    fn live(&self, now: Instant) -> Option<Connection> {
        let st = self.lock();
        if st.ejected_until.is_some_and(|t| now < t) {
            return None;
        }
        st.conn
            .as_ref()
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    fn ejected(&self, now: Instant) -> bool {
        self.lock().ejected_until.is_some_and(|t| now < t)
    }
}

/// Shared counters and the latency estimate.
#[derive(Default)]
struct Shared {
    retries: AtomicU64,
    hedges: AtomicU64,
    late_duplicates: AtomicU64,
    late_disagreements: AtomicU64,
    protocol_violations: AtomicU64,
    ejections: AtomicU64,
    /// Hedge credits, in thousandths.
    hedge_credit: AtomicU64,
    /// Smoothed batch latency and its deviation, µs.
    srtt_us: AtomicU64,
    rttvar_us: AtomicU64,
}

/// A connection pool to jotd endpoints. Cheap to share (`Arc`); all methods take `&self`.
pub struct Client {
    endpoint: Endpoint,
    config: quinn::ClientConfig,
    opts: ClientOptions,
    /// The slots now (swapped whole when names resolve differently).
    slots: Arc<arc_swap::ArcSwap<Vec<Arc<Slot>>>>,
    /// Counts resolutions of `names` (0: none finished yet).
    resolved: tokio::sync::watch::Receiver<u64>,
    resolver_task: Option<tokio::task::JoinHandle<()>>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    rotate: AtomicUsize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.opts.endpoints)
            .finish_non_exhaustive()
    }
}

/// Counts a batch's items against a slot while an attempt of it is open.
pub(crate) struct Outstanding(Arc<Slot>, usize);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(self.1, Ordering::Relaxed);
    }
}

impl Client {
    /// A client for `opts.endpoints`; nothing is connected until the first batch.
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// No endpoints, an option out of range ([`ClientOptions::validate`]), a
    /// TLS config unfit for QUIC, or the local UDP socket failing.
    pub fn new(opts: ClientOptions) -> Result<Self, ClientError> {
        if opts.endpoints.is_empty() && opts.names.is_empty() {
            return Err(ClientError::Config("no endpoints".into()));
        }
        opts.validate()?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(opts.tls.clone())
            .map_err(|e| ClientError::Config(format!("TLS: {e}")))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(opts.keep_alive))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(opts.idle_timeout)
                    .map_err(|_| ClientError::Config("idle_timeout too long".into()))?,
            ))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .stream_receive_window(VarInt::from_u32(4 << 20))
            // No DATAGRAM frames from a replica (nothing reads them).
            .datagram_receive_buffer_size(None)
            .mtu_discovery_config(Some(crate::options::mtu_discovery()));
        config.transport_config(Arc::new(transport));
        // One socket serves every endpoint: dual-stack IPv6 when any endpoint
        // is IPv6 or a name may resolve to one (an IPv4 socket cannot reach an
        // IPv6 replica at all), IPv4 when every endpoint is an IPv4 address or
        // the host has no IPv6.
        let v4: SocketAddr = (std::net::Ipv4Addr::UNSPECIFIED, 0).into();
        let v6: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, 0).into();
        let want_v6 = !opts.names.is_empty() || opts.endpoints.iter().any(SocketAddr::is_ipv6);
        let endpoint = match want_v6.then(|| crate::options::endpoint(v6, None)) {
            Some(Ok(e)) => e,
            Some(Err(e)) if opts.endpoints.iter().any(SocketAddr::is_ipv6) => {
                return Err(ClientError::Config(format!(
                    "cannot bind {v6} for the IPv6 endpoints: {e}"
                )));
            }
            _ => crate::options::endpoint(v4, None)
                .map_err(|e| ClientError::Config(format!("cannot bind {v4}: {e}")))?,
        };
        let per = opts.connections_per_endpoint.max(1);
        let slots: Vec<Arc<Slot>> = opts
            .endpoints
            .iter()
            .flat_map(|a| std::iter::repeat_n(*a, per))
            .map(Slot::new)
            .collect();
        let slots = Arc::new(arc_swap::ArcSwap::from_pointee(slots));
        let (resolved_tx, resolved) = tokio::sync::watch::channel(0u64);
        let resolver_task = (!opts.names.is_empty()).then(|| {
            tokio::spawn(follow_names(
                Arc::downgrade(&slots),
                opts.clone(),
                resolved_tx,
            ))
        });
        let shared = Arc::new(Shared::default());
        shared
            .hedge_credit
            .store(u64::from(opts.hedge.burst) * 1000, Ordering::Relaxed);
        Ok(Self {
            endpoint,
            config,
            opts,
            slots,
            resolved,
            resolver_task,
            shared,
            next_id: AtomicU64::new(1),
            rotate: AtomicUsize::new(0),
        })
    }

    /// Connects every slot now (instead of on first use).
    ///
    /// # Errors
    /// The first slot that cannot connect.
    pub async fn connect_all(&self) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.opts.connect_timeout;
        for slot in self.current_slots(deadline).await.iter() {
            let conn = connect(&self.endpoint, &self.config, &self.opts, slot).await?;
            slot.lock().conn = Some(conn);
        }
        Ok(())
    }

    /// Whether any endpoint has a live (not closed) connection now.
    #[must_use]
    pub fn has_live_connection(&self) -> bool {
        self.slots.load().iter().any(|slot| {
            slot.lock()
                .conn
                .as_ref()
                .is_some_and(|c| c.close_reason().is_none())
        })
    }

    /// What the client did so far.
    #[must_use]
    pub fn stats(&self) -> ClientStats {
        let s = &self.shared;
        ClientStats {
            retries: s.retries.load(Ordering::Relaxed),
            hedges: s.hedges.load(Ordering::Relaxed),
            late_duplicates: s.late_duplicates.load(Ordering::Relaxed),
            late_disagreements: s.late_disagreements.load(Ordering::Relaxed),
            protocol_violations: s.protocol_violations.load(Ordering::Relaxed),
            ejections: s.ejections.load(Ordering::Relaxed),
            endpoints: self
                .slots
                .load()
                .iter()
                .map(|slot| EndpointStats {
                    addr: slot.addr,
                    sent: slot.sent.load(Ordering::Relaxed),
                    failures: slot.failed.load(Ordering::Relaxed),
                    ejections: slot.ejections.load(Ordering::Relaxed),
                    path: slot
                        .lock()
                        .conn
                        .as_ref()
                        .filter(|c| c.close_reason().is_none())
                        .map(|c| {
                            let p = c.stats().path;
                            PathStats {
                                mtu: p.current_mtu,
                                lost_packets: p.lost_packets,
                                sent_packets: p.sent_packets,
                                rtt: p.rtt,
                            }
                        }),
                })
                .collect(),
        }
    }

    /// The connection to use on `slot` for a new attempt, or why not. A slot
    /// without a live connection is reconnected in the background while any
    /// other slot is up; only when none is, or this is the batch's
    /// `last_resort` (every other slot already tried: one that answered
    /// `overloaded` is up but no use to it), does the batch wait for a connect.
    async fn connection(
        &self,
        slot: &Arc<Slot>,
        even_ejected: bool,
        last_resort: bool,
    ) -> Result<Connection, ClientError> {
        let now = Instant::now();
        if let Some(c) = slot.live(now) {
            return Ok(c);
        }
        if even_ejected {
            let st = slot.lock();
            if let Some(c) = st.conn.as_ref().filter(|c| c.close_reason().is_none()) {
                return Ok(c.clone());
            }
        }
        if slot.ejected(now) {
            return Err(ClientError::Unavailable {
                tried: 1,
                last: None,
            });
        }
        let others_up = self
            .slots
            .load()
            .iter()
            .any(|s| !Arc::ptr_eq(s, slot) && s.live(now).is_some());
        if others_up && !last_resort {
            self.reconnect_in_background(slot);
            return Err(ClientError::Unavailable {
                tried: 1,
                last: None,
            });
        }
        // The connect runs in a task of its own, so it always ends (within
        // `connect_timeout`) and ejects an unreachable endpoint even when every
        // batch waiting on it gives up first (a batch deadline at or below
        // `connect_timeout`): later batches then fail at once instead of each
        // waiting out its deadline, and the failure shows in the counts.
        let (endpoint, config, opts, slot, shared) = (
            self.endpoint.clone(),
            self.config.clone(),
            self.opts.clone(),
            Arc::clone(slot),
            Arc::clone(&self.shared),
        );
        let unavailable = || ClientError::Unavailable {
            tried: 1,
            last: None,
        };
        tokio::spawn(async move {
            let _one_at_a_time = slot.connecting.lock().await;
            if let Some(c) = slot.live(Instant::now()) {
                return Ok(c);
            }
            if slot.ejected(Instant::now()) {
                return Err(unavailable());
            }
            match connect(&endpoint, &config, &opts, &slot).await {
                Ok(c) => {
                    // The failure streak ends with an answered batch (`healthy`).
                    let mut st = slot.lock();
                    st.ejected_until = None;
                    st.conn = Some(c.clone());
                    Ok(c)
                }
                Err(e) => {
                    eject(&slot, &shared, (opts.backoff_min, opts.backoff_max));
                    Err(e)
                }
            }
        })
        .await
        .unwrap_or_else(|_| Err(unavailable()))
    }

    fn reconnect_in_background(&self, slot: &Arc<Slot>) {
        if slot.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let (endpoint, config, opts, slot) = (
            self.endpoint.clone(),
            self.config.clone(),
            self.opts.clone(),
            Arc::clone(slot),
        );
        let backoff = (opts.backoff_min, opts.backoff_max);
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            let guard = slot.connecting.lock().await;
            let result = match slot.live(Instant::now()) {
                Some(c) => Ok(c),
                None => connect(&endpoint, &config, &opts, &slot).await,
            };
            drop(guard);
            match result {
                Ok(c) => {
                    // The failure streak ends when a batch is answered (`healthy`),
                    // not at the handshake: a replica that accepts and drops every
                    // connection keeps backing off longer.
                    let mut st = slot.lock();
                    st.conn = Some(c);
                    st.ejected_until = None;
                }
                // Counted as an ejection like any other failed connect.
                Err(_) => eject(&slot, &shared, backoff),
            }
            slot.reconnecting.store(false, Ordering::Release);
        });
    }

    /// A batch is late on `slot`: checks, once at a time per slot, whether
    /// its connection is alive. A live server acknowledges the client's
    /// requests and keep-alive pings within its ACK delay however busy it
    /// is; a connection that receives nothing for `dead_after` is ejected.
    fn suspect(&self, slot: &Arc<Slot>) {
        if slot.ejected(Instant::now()) || slot.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(conn) = slot.lock().conn.clone() else {
            slot.checking.store(false, Ordering::Release);
            return;
        };
        let (slot, shared) = (Arc::clone(slot), Arc::clone(&self.shared));
        let (dead_after, backoff) = (
            self.opts.dead_after,
            (self.opts.backoff_min, self.opts.backoff_max),
        );
        tokio::spawn(async move {
            let before = conn.stats().udp_rx.datagrams;
            tokio::time::sleep(dead_after).await;
            if conn.stats().udp_rx.datagrams == before {
                slot.failed.fetch_add(1, Ordering::Relaxed);
                eject(&slot, &shared, backoff);
            }
            slot.checking.store(false, Ordering::Release);
        });
    }

    /// Takes a slot out of rotation (see [`eject`]).
    fn eject(&self, slot: &Slot) {
        eject(
            slot,
            &self.shared,
            (self.opts.backoff_min, self.opts.backoff_max),
        );
    }

    /// A slot whose attempt succeeded: its failure streak ends.
    fn healthy(&self, slot: &Slot) {
        let mut st = slot.lock();
        if st.failures != 0 {
            st.failures = 0;
        }
    }

    /// The slots now; before the first resolution of `names` (with no
    /// fixed endpoint), waits for it until `deadline`.
    async fn current_slots(&self, deadline: Instant) -> Arc<Vec<Arc<Slot>>> {
        let slots = self.slots.load_full();
        if !slots.is_empty() || self.opts.names.is_empty() {
            return slots;
        }
        let mut resolved = self.resolved.clone();
        let _ = tokio::time::timeout_at(deadline.into(), resolved.wait_for(|n| *n > 0)).await;
        self.slots.load_full()
    }

    /// Indices of `slots` by outstanding work (ties rotate), live ones first.
    fn order(&self, slots: &[Arc<Slot>]) -> Vec<usize> {
        let n = slots.len();
        let start = self.rotate.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut order: Vec<(bool, usize, usize)> = (0..n)
            .map(|k| {
                let i = (start + k) % n;
                let slot = &slots[i];
                (
                    slot.live(now).is_none(),
                    slot.outstanding.load(Ordering::Relaxed),
                    i,
                )
            })
            .collect();
        // Slots that are down (not ejected) come back in the background
        // while others serve; with none up, the batch connects itself.
        if order.iter().any(|(down, _, _)| !down) {
            for &(down, _, i) in &order {
                if down && !slots[i].ejected(now) {
                    self.reconnect_in_background(&slots[i]);
                }
            }
        }
        order.sort_by_key(|&(down, load, _)| (down, load));
        order.into_iter().map(|(_, _, i)| i).collect()
    }

    /// The delay after which a batch without its answer is hedged.
    fn hedge_delay(&self) -> Duration {
        let h = &self.opts.hedge;
        let srtt = self.shared.srtt_us.load(Ordering::Relaxed);
        let var = self.shared.rttvar_us.load(Ordering::Relaxed);
        if srtt == 0 {
            return h.max_delay;
        }
        Duration::from_micros(srtt + 4 * var).clamp(h.min_delay, h.max_delay)
    }

    /// Feeds a completed batch's latency into the estimate (as TCP's RTT).
    fn observe(&self, latency: Duration) {
        let sample = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let s = &self.shared;
        let srtt = s.srtt_us.load(Ordering::Relaxed);
        if srtt == 0 {
            s.srtt_us.store(sample.max(1), Ordering::Relaxed);
            s.rttvar_us.store(sample / 2, Ordering::Relaxed);
            return;
        }
        let var = s.rttvar_us.load(Ordering::Relaxed);
        let dev = srtt.abs_diff(sample);
        s.rttvar_us.store((3 * var + dev) / 4, Ordering::Relaxed);
        s.srtt_us
            .store(((7 * srtt + sample) / 8).max(1), Ordering::Relaxed);
    }

    /// Adds the credit one batch earns towards hedges.
    fn earn_hedge_credit(&self) {
        let h = &self.opts.hedge;
        let cap = u64::from(h.burst) * 1000;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let earn = (h.budget.clamp(0.0, 1.0) * 1000.0) as u64;
        // One atomic update: a spend or refund in between is not overwritten.
        let _ = self
            .shared
            .hedge_credit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                (c < cap).then(|| (c + earn).min(cap))
            });
    }

    /// Spends one hedge credit, if there is one.
    fn spend_hedge_credit(&self) -> bool {
        self.shared
            .hedge_credit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                c.checked_sub(1000)
            })
            .is_ok()
    }

    /// Gives back a credit spent on a hedge that could not be sent (up to
    /// the burst).
    fn refund_hedge_credit(&self) {
        let cap = u64::from(self.opts.hedge.burst) * 1000;
        let _ = self
            .shared
            .hedge_credit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some((c + 1000).min(cap))
            });
    }

    /// Sends a batch; the returned [`Pending`] yields its decisions as they arrive.
    ///
    /// # Errors
    /// The batch cannot be encoded, or no endpoint could take it.
    pub async fn verify(&self, items: &[Item<'_>]) -> Result<Pending<'_>, ClientError> {
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        encode_batch(
            &BatchRequest {
                request_id,
                items: items.to_vec(),
            },
            &mut frame,
        )
        .map_err(ClientError::Encode)?;
        Pending::start(self, frame.into(), request_id, items.len()).await
    }

    /// Sends an already encoded Batch frame (see [`crate::encode_batch`]) of
    /// `items` items with `request_id`: for callers that send the same batches
    /// many times (load generators) and would rather not encode each time.
    ///
    /// # Errors
    /// The frame is not one whole `Batch` frame of `request_id` and `items`
    /// items ([`ClientError::Config`], before anything is sent: a mismatch
    /// would read as every server answering wrongly, and eject them all);
    /// no endpoint could take the batch, or the batch timed out.
    pub async fn verify_frame(
        &self,
        frame: &[u8],
        request_id: u64,
        items: usize,
    ) -> Result<Pending<'_>, ClientError> {
        match crate::codec::peek_batch_head(frame) {
            Some((id, n)) if id == request_id && n == items as u64 => {}
            Some((id, n)) => {
                return Err(ClientError::Config(format!(
                    "verify_frame: the frame is request {id} of {n} items, the call says request {request_id} of {items}"
                )));
            }
            None => {
                return Err(ClientError::Config(
                    "verify_frame: not one whole Batch frame".into(),
                ));
            }
        }
        Pending::start(self, frame.into(), request_id, items).await
    }

    /// Sends a batch and calls `on_chunk` with each decision chunk (borrowed,
    /// no copies) as it arrives; every index is checked (in range, once) before
    /// `on_chunk` sees it. Returns once all items are decided.
    ///
    /// # Errors
    /// As [`Client::verify`], and as [`Pending::next_chunk`].
    pub async fn verify_with(
        &self,
        items: &[Item<'_>],
        mut on_chunk: impl FnMut(&DecisionChunk<'_>),
    ) -> Result<(), ClientError> {
        let mut pending = self.verify(items).await?;
        while pending.next_chunk(&mut on_chunk).await? {}
        Ok(())
    }

    /// Sends a batch and collects its decisions in item order.
    ///
    /// # Errors
    /// As [`Client::verify_with`].
    pub async fn verify_all(&self, items: &[Item<'_>]) -> Result<Vec<ClientDecision>, ClientError> {
        let mut out: Vec<Option<ClientDecision>> = vec![None; items.len()];
        self.verify_with(items, |chunk| {
            for d in &chunk.decisions {
                out[d.index as usize] = Some(d.into());
            }
        })
        .await?;
        // Pending delivers every index exactly once before it ends; should
        // one be missing, the batch fails rather than shrink.
        let undecided = out.iter().filter(|d| d.is_none()).count();
        if undecided > 0 {
            return Err(ClientError::Incomplete(undecided));
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Closes every connection.
    pub fn close(&self) {
        self.endpoint.close(VarInt::from_u32(0), b"client closing");
    }

    /// Waits until closed connections have told their peers.
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}

/// Takes a slot out of rotation for a backoff that doubles while it keeps
/// failing; a dead connection is dropped.
fn eject(slot: &Slot, shared: &Shared, backoff: (Duration, Duration)) {
    let mut st = slot.lock();
    let now = Instant::now();
    if st.ejected_until.is_some_and(|t| now < t) {
        return;
    }
    let delay = backoff_delay(st.failures, backoff);
    st.failures = st.failures.saturating_add(1);
    st.ejected_until = Some(now + delay);
    if st.conn.as_ref().is_some_and(|c| c.close_reason().is_some()) {
        st.conn = None;
    }
    drop(st);
    slot.ejections.fetch_add(1, Ordering::Relaxed);
    shared.ejections.fetch_add(1, Ordering::Relaxed);
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(task) = &self.resolver_task {
            task.abort();
        }
    }
}

/// Resolves `opts.names` now and every `resolve_interval`, swapping in a
/// slot list with the fixed endpoints and every address the names give: a
/// kept address keeps its slots (connections, counters), a new one gets
/// fresh ones, a vanished one's slots leave (batches on them finish). A
/// name that fails to resolve, or resolves to no address, keeps its last
/// addresses.
async fn follow_names(
    slots: std::sync::Weak<arc_swap::ArcSwap<Vec<Arc<Slot>>>>,
    opts: ClientOptions,
    resolved: tokio::sync::watch::Sender<u64>,
) {
    let per = opts.connections_per_endpoint.max(1);
    let mut last: Vec<Vec<SocketAddr>> = vec![Vec::new(); opts.names.len()];
    let mut rounds = 0u64;
    loop {
        for (name, known) in opts.names.iter().zip(&mut last) {
            // An empty answer is a failed lookup too: it would empty the pool
            // (every batch `unavailable`, a fail-open gateway letting calls
            // through) until the next round.
            if let Ok(Ok(addrs)) =
                tokio::time::timeout(opts.connect_timeout, opts.resolver.resolve(name)).await
                && !addrs.is_empty()
            {
                *known = addrs;
            }
        }
        let Some(slots) = slots.upgrade() else { return };
        let mut wanted: Vec<SocketAddr> = opts.endpoints.clone();
        for addr in last.iter().flatten() {
            if !wanted.contains(addr) {
                wanted.push(*addr);
            }
        }
        let current = slots.load_full();
        let mut next: Vec<Arc<Slot>> = current
            .iter()
            .filter(|s| wanted.contains(&s.addr))
            .cloned()
            .collect();
        for addr in &wanted {
            if !next.iter().any(|s| s.addr == *addr) {
                next.extend(std::iter::repeat_with(|| Slot::new(*addr)).take(per));
            }
        }
        let changed = next.len() != current.len()
            || next
                .iter()
                .zip(current.iter())
                .any(|(a, b)| !Arc::ptr_eq(a, b));
        if changed {
            slots.store(Arc::new(next));
        }
        drop(slots);
        rounds += 1;
        let _ = resolved.send(rounds);
        tokio::time::sleep(opts.resolve_interval).await;
    }
}

fn backoff_delay(failures: u32, (min, max): (Duration, Duration)) -> Duration {
    min.saturating_mul(1 << failures.min(16)).min(max)
}

async fn connect(
    endpoint: &Endpoint,
    config: &quinn::ClientConfig,
    opts: &ClientOptions,
    slot: &Slot,
) -> Result<Connection, ClientError> {
    let failed = |failure| ClientError::Connection {
        endpoint: slot.addr,
        failure,
    };
    let connecting = endpoint
        .connect_with(config.clone(), slot.addr, &opts.server_name)
        .map_err(|e| failed(ConnectionFailure::Connect(e)))?;
    match tokio::time::timeout(opts.connect_timeout, connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(failed(ConnectionFailure::Lost(e))),
        Err(_) => Err(failed(ConnectionFailure::ConnectTimeout(
            opts.connect_timeout,
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `allow` bit counts only with a reason this build knows as an allow:
    /// an unknown code (a newer server's) and a known deny reason are denies
    /// whatever the bit says; a known allow with the bit off stays a deny.
    #[test]
    fn an_unknown_reason_is_a_deny_whatever_the_allow_bit() {
        let wire = |allow: bool, reason: u16| WireDecision {
            index: 0,
            allow,
            reason,
            kid: None,
            sub: None,
            exp: None,
            claims: Vec::new(),
        };
        let ok = Reason::Ok.code();
        assert!(ClientDecision::from(&wire(true, ok)).allow);
        assert!(!ClientDecision::from(&wire(false, ok)).allow);
        assert!(ClientDecision::from(&wire(true, Reason::OkNoAuth.code())).allow);
        for code in [
            999,
            u16::MAX,
            Reason::Expired.code(),
            Reason::BadSignature.code(),
        ] {
            let d = ClientDecision::from(&wire(true, code));
            assert!(!d.allow, "reason {code} with allow=true: {d:?}");
            assert_eq!(d.reason, code, "the code is kept as sent");
        }
    }

    /// Every option a caller can set wrong is refused by name when the client
    /// is built: a zero time that would spin or fail every batch, a time that
    /// overflows a clock, bounds the wrong way round (the hedge delay's clamp
    /// panicked), a budget out of 0..=1, and the rest.
    #[test]
    fn options_out_of_range_are_refused_by_name() {
        let pki = crate::DevPki::generate().unwrap();
        let tls = crate::client_config(pki.ca_pem.as_bytes(), None).unwrap();
        let base = ClientOptions::new(vec![SocketAddr::from(([127, 0, 0, 1], 9))], tls);
        base.validate().unwrap();
        type Edit = fn(&mut ClientOptions);
        let cases: [(&str, Edit); 15] = [
            ("hedge.min_delay", |o| o.hedge.min_delay = Duration::ZERO),
            ("server_name", |o| o.server_name = String::new()),
            ("resolve_interval", |o| o.resolve_interval = Duration::ZERO),
            ("batch_timeout", |o| o.batch_timeout = Duration::ZERO),
            ("batch_timeout", |o| o.batch_timeout = Duration::MAX),
            ("connect_timeout", |o| o.connect_timeout = Duration::ZERO),
            ("backoff_max", |o| {
                o.backoff_max = Duration::from_secs(86_401)
            }),
            ("backoff_min", |o| o.backoff_min = Duration::from_secs(10)),
            ("dead_after", |o| o.dead_after = Duration::ZERO),
            ("hedge.min_delay", |o| {
                o.hedge.min_delay = Duration::from_secs(1)
            }),
            ("hedge.budget", |o| o.hedge.budget = f64::NAN),
            ("hedge.budget", |o| o.hedge.budget = 2.0),
            ("connections_per_endpoint", |o| {
                o.connections_per_endpoint = 0
            }),
            ("max_frame_bytes", |o| {
                o.max_frame_bytes = HARD_MAX_FRAME_BYTES + 1
            }),
            ("keep_alive", |o| o.keep_alive = o.idle_timeout),
        ];
        for (name, edit) in cases {
            let mut o = base.clone();
            edit(&mut o);
            let e = o.validate().unwrap_err().to_string();
            assert!(e.contains(name), "{name}: {e}");
        }
    }
}
