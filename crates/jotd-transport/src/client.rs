//! The gateway's client: batches out over QUIC, decisions back as they arrive.
//!
//! A [`Client`] holds connections to one or more jotd endpoints (optionally
//! several per endpoint), sends each batch on the connection with the least
//! outstanding work, connects lazily and reconnects with exponential backoff.
//! Every call either yields exactly one decision per item or returns an error
//! covering the batch: a missing, duplicated or out-of-range decision is a
//! [`ClientError::Protocol`], never silence.

use crate::codec::{
    FrameType, HARD_MAX_FRAME_BYTES, Limits, WireError, decode_decisions, decode_error,
    encode_batch, next_frame,
};
use crate::messages::{BatchRequest, DecisionChunk, ErrorCode, Item, WireDecision};
use jotd_core::Reason;
use quinn::{Connection, Endpoint, RecvStream, VarInt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// jotd endpoints; batches spread across them.
    pub endpoints: Vec<SocketAddr>,
    /// Connections to open to each endpoint. Default 1.
    pub connections_per_endpoint: usize,
    /// The name the server certificate must carry. Default `localhost`.
    pub server_name: String,
    /// TLS (see [`crate::client_config`]).
    pub tls: rustls::ClientConfig,
    /// Longest time for one batch, connecting included. Default 5 s.
    pub batch_timeout: Duration,
    /// Longest time to establish a connection. Default 3 s.
    pub connect_timeout: Duration,
    /// First reconnect delay after a failure; doubles up to `backoff_max`. Default 100 ms.
    pub backoff_min: Duration,
    /// Longest reconnect delay. Default 5 s.
    pub backoff_max: Duration,
    /// Largest answer frame accepted. Default 16 MiB.
    pub max_frame_bytes: usize,
}

impl ClientOptions {
    /// Defaults for `endpoints` with `tls`.
    #[must_use]
    pub fn new(endpoints: Vec<SocketAddr>, tls: rustls::ClientConfig) -> Self {
        Self {
            endpoints,
            connections_per_endpoint: 1,
            server_name: "localhost".into(),
            tls,
            batch_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            max_frame_bytes: HARD_MAX_FRAME_BYTES,
        }
    }
}

/// Why a batch has no (complete) answer. The batch as a whole is undecided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// A bad setting (no endpoints, a TLS config QUIC cannot use, …).
    #[error("client configuration: {0}")]
    Config(String),
    /// No endpoint could take the batch (all failed or are backing off).
    #[error("no endpoint available: {0}")]
    Unavailable(String),
    /// The batch took longer than `batch_timeout`.
    #[error("batch timed out after {0:?}")]
    Timeout(Duration),
    /// The server refused the batch as a whole with an error frame.
    #[error("server error {code} ({}): {message}", ErrorCode::from_code(*code).map_or("unknown".to_owned(), |c| format!("{c:?}")))]
    Server {
        /// The [`ErrorCode`] number.
        code: u16,
        /// The server's message.
        message: String,
    },
    /// The connection or stream failed mid-batch.
    #[error("connection lost: {0}")]
    Connection(String),
    /// The answer broke the protocol (missing, duplicate or unknown decisions, bad frames).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The batch cannot be encoded (over the frame limit).
    #[error("cannot send batch: {0}")]
    Encode(String),
}

impl From<WireError> for ClientError {
    fn from(e: WireError) -> Self {
        Self::Protocol(e.to_string())
    }
}

/// One decision as the client owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientDecision {
    /// Whether the request is allowed.
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
            allow: d.allow,
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

struct SlotState {
    conn: Option<Connection>,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

struct Slot {
    addr: SocketAddr,
    outstanding: AtomicUsize,
    state: tokio::sync::Mutex<SlotState>,
}

/// A connection pool to jotd endpoints. Cheap to share (`Arc`); all methods take `&self`.
pub struct Client {
    endpoint: Endpoint,
    config: quinn::ClientConfig,
    opts: ClientOptions,
    slots: Vec<Slot>,
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

struct Outstanding<'a>(&'a AtomicUsize, usize);

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::Relaxed);
    }
}

impl Client {
    /// A client for `opts.endpoints`; nothing is connected until the first batch.
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// No endpoints, a TLS config unfit for QUIC, or the local UDP socket failing.
    pub fn new(opts: ClientOptions) -> Result<Self, ClientError> {
        if opts.endpoints.is_empty() {
            return Err(ClientError::Config("no endpoints".into()));
        }
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(opts.tls.clone())
            .map_err(|e| ClientError::Config(format!("TLS: {e}")))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(Duration::from_secs(5)))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .stream_receive_window(VarInt::from_u32(4 << 20))
            .mtu_discovery_config(Some(crate::options::mtu_discovery()));
        config.transport_config(Arc::new(transport));
        let local: SocketAddr = if opts.endpoints[0].is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = Endpoint::client(local)
            .map_err(|e| ClientError::Config(format!("cannot bind {local}: {e}")))?;
        let per = opts.connections_per_endpoint.max(1);
        let slots = opts
            .endpoints
            .iter()
            .flat_map(|a| std::iter::repeat_n(*a, per))
            .map(|addr| Slot {
                addr,
                outstanding: AtomicUsize::new(0),
                state: tokio::sync::Mutex::new(SlotState {
                    conn: None,
                    failures: 0,
                    retry_at: None,
                    last_error: String::new(),
                }),
            })
            .collect();
        Ok(Self {
            endpoint,
            config,
            opts,
            slots,
            next_id: AtomicU64::new(1),
            rotate: AtomicUsize::new(0),
        })
    }

    /// Connects every slot now (instead of on first use).
    ///
    /// # Errors
    /// The first slot that cannot connect.
    pub async fn connect_all(&self) -> Result<(), ClientError> {
        for slot in &self.slots {
            self.connection(slot).await?;
        }
        Ok(())
    }

    async fn connection(&self, slot: &Slot) -> Result<Connection, ClientError> {
        let mut st = slot.state.lock().await;
        if let Some(c) = &st.conn
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        st.conn = None;
        if let Some(at) = st.retry_at
            && Instant::now() < at
        {
            return Err(ClientError::Unavailable(format!(
                "{} backing off after: {}",
                slot.addr, st.last_error
            )));
        }
        let attempt = async {
            let connecting = self
                .endpoint
                .connect_with(self.config.clone(), slot.addr, &self.opts.server_name)
                .map_err(|e| e.to_string())?;
            connecting.await.map_err(|e| e.to_string())
        };
        let result = match tokio::time::timeout(self.opts.connect_timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "connect timed out after {:?}",
                self.opts.connect_timeout
            )),
        };
        match result {
            Ok(c) => {
                st.failures = 0;
                st.retry_at = None;
                st.conn = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                let exp = st.failures.min(16);
                let delay = self
                    .opts
                    .backoff_min
                    .saturating_mul(1 << exp)
                    .min(self.opts.backoff_max);
                st.failures += 1;
                st.retry_at = Some(Instant::now() + delay);
                st.last_error = format!("{}: {e}", slot.addr);
                Err(ClientError::Unavailable(st.last_error.clone()))
            }
        }
    }

    /// Slots ordered by outstanding work (ties rotate).
    fn order(&self) -> Vec<usize> {
        let n = self.slots.len();
        let start = self.rotate.fetch_add(1, Ordering::Relaxed);
        let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        order.sort_by_key(|&i| self.slots[i].outstanding.load(Ordering::Relaxed));
        order
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
        .map_err(|e| ClientError::Encode(e.to_string()))?;
        self.verify_frame(&frame, request_id, items.len()).await
    }

    /// Sends an already encoded Batch frame (see [`crate::encode_batch`]) of
    /// `items` items with `request_id`: for callers that send the same batches
    /// many times (load generators) and would rather not encode each time.
    ///
    /// # Errors
    /// No endpoint could take the batch, or the batch timed out.
    pub async fn verify_frame(
        &self,
        frame: &[u8],
        request_id: u64,
        items: usize,
    ) -> Result<Pending<'_>, ClientError> {
        let deadline = Instant::now() + self.opts.batch_timeout;
        let mut last = ClientError::Unavailable("no endpoints".into());
        // Try each slot at most once; a batch is only retried elsewhere while
        // nothing of it has been sent.
        for i in self.order() {
            let slot = &self.slots[i];
            let remaining = deadline.saturating_duration_since(Instant::now());
            let opened = tokio::time::timeout(remaining, async {
                let conn = self.connection(slot).await?;
                let (send, recv) = conn
                    .open_bi()
                    .await
                    .map_err(|e| ClientError::Connection(e.to_string()))?;
                Ok::<_, ClientError>((conn, send, recv))
            })
            .await;
            let (conn, mut send, recv) = match opened {
                Err(_) => return Err(ClientError::Timeout(self.opts.batch_timeout)),
                Ok(Err(e)) => {
                    last = e;
                    continue;
                }
                Ok(Ok(x)) => x,
            };
            slot.outstanding.fetch_add(items, Ordering::Relaxed);
            let guard = Outstanding(&slot.outstanding, items);
            let written = tokio::time::timeout(
                deadline.saturating_duration_since(Instant::now()),
                send.write_all(frame),
            )
            .await;
            match written {
                Err(_) => return Err(ClientError::Timeout(self.opts.batch_timeout)),
                // The server stopped reading (a request over its limit): its
                // answer, an error frame, is still on the way.
                Ok(Err(quinn::WriteError::Stopped(_))) => {}
                Ok(Err(e)) => {
                    drop(conn);
                    return Err(ClientError::Connection(e.to_string()));
                }
                Ok(Ok(())) => {
                    let _ = send.finish();
                }
            }
            return Ok(Pending {
                recv,
                _guard: guard,
                request_id,
                items,
                seen: vec![false; items],
                decided: 0,
                buf: Vec::new(),
                start: 0,
                finished: false,
                deadline,
                timeout: self.opts.batch_timeout,
                limits: Limits {
                    max_frame_bytes: self.opts.max_frame_bytes,
                    max_items: usize::MAX,
                },
                ready: std::collections::VecDeque::new(),
            });
        }
        Err(last)
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
        out.into_iter()
            .enumerate()
            .map(|(i, d)| d.ok_or_else(|| ClientError::Protocol(format!("item {i} undecided"))))
            .collect()
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

/// The answer to one batch, read as it arrives.
pub struct Pending<'c> {
    recv: RecvStream,
    _guard: Outstanding<'c>,
    request_id: u64,
    items: usize,
    seen: Vec<bool>,
    decided: usize,
    buf: Vec<u8>,
    start: usize,
    finished: bool,
    deadline: Instant,
    timeout: Duration,
    limits: Limits,
    ready: std::collections::VecDeque<(u32, ClientDecision)>,
}

impl std::fmt::Debug for Pending<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("request_id", &self.request_id)
            .field("items", &self.items)
            .field("decided", &self.decided)
            .finish_non_exhaustive()
    }
}

impl Pending<'_> {
    /// The batch's request id.
    #[must_use]
    pub const fn request_id(&self) -> u64 {
        self.request_id
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

    /// Waits for the next decision chunk and hands it to `f` once checked.
    /// `Ok(false)`: every item is decided and the stream ended.
    ///
    /// # Errors
    /// An error frame, a broken connection, the batch timeout, a frame that
    /// does not decode, a decision for an unknown or already-decided item, or a
    /// stream that ends with items undecided.
    pub async fn next_chunk(
        &mut self,
        mut f: impl FnMut(&DecisionChunk<'_>),
    ) -> Result<bool, ClientError> {
        loop {
            // A whole frame buffered?
            let frame = next_frame(&self.buf[self.start..], &self.limits)?;
            if let Some(frame) = frame {
                let consumed = frame.consumed;
                let result = match frame.kind {
                    FrameType::Decisions => {
                        let chunk = decode_decisions(frame.body)?;
                        check(self.request_id, &mut self.seen, &mut self.decided, &chunk)?;
                        f(&chunk);
                        Ok(true)
                    }
                    FrameType::Error => {
                        let e = decode_error(frame.body)?;
                        Err(ClientError::Server {
                            code: e.code,
                            message: e.message.to_owned(),
                        })
                    }
                    FrameType::Batch => {
                        Err(ClientError::Protocol("server sent a Batch frame".into()))
                    }
                };
                self.start += consumed;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                return result;
            }
            if self.finished {
                if self.start != self.buf.len() {
                    return Err(ClientError::Protocol("stream ended inside a frame".into()));
                }
                if self.decided != self.items {
                    return Err(ClientError::Protocol(format!(
                        "stream ended with {} of {} items undecided",
                        self.items - self.decided,
                        self.items
                    )));
                }
                return Ok(false);
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, self.recv.read_chunk(64 << 10, true)).await {
                Err(_) => return Err(ClientError::Timeout(self.timeout)),
                Ok(Err(e)) => return Err(ClientError::Connection(e.to_string())),
                Ok(Ok(None)) => self.finished = true,
                Ok(Ok(Some(chunk))) => self.buf.extend_from_slice(&chunk.bytes),
            }
        }
    }
}

/// Checks a chunk against the batch: its request id, every index in range and new.
fn check(
    request_id: u64,
    seen: &mut [bool],
    decided: &mut usize,
    chunk: &DecisionChunk<'_>,
) -> Result<(), ClientError> {
    if chunk.request_id != request_id {
        return Err(ClientError::Protocol(format!(
            "answer for request {} on the stream of request {request_id}",
            chunk.request_id
        )));
    }
    let items = seen.len();
    for d in &chunk.decisions {
        let i = d.index as usize;
        match seen.get_mut(i) {
            None => {
                return Err(ClientError::Protocol(format!(
                    "decision for item {i} of a {items}-item batch"
                )));
            }
            Some(true) => {
                return Err(ClientError::Protocol(format!(
                    "second decision for item {i}"
                )));
            }
            Some(seen) => *seen = true,
        }
    }
    *decided += chunk.decisions.len();
    Ok(())
}
