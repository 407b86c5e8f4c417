//! The QUIC server's limits and timers, and the QUIC transport they imply.

use crate::codec::{HARD_MAX_FRAME_BYTES, Limits};
use crate::report::TenantWatch;
use quinn::VarInt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

/// Server limits and timers. Every limit holds against a hostile peer:
/// half-sent requests time out, a client that stops reading cannot hold the
/// in-flight budget, and handshakes cannot take connection slots.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Frame and batch limits.
    pub limits: Limits,
    /// Connections served at once (counted once their handshake completed);
    /// a connection past it is closed right after its handshake. Default 1024.
    pub max_connections: NonZeroUsize,
    /// Concurrent streams (batches) per connection. Default 256.
    pub max_streams_per_connection: NonZeroU32,
    /// Tokens being verified across the server. A batch holds its tokens'
    /// room until its decisions are produced (not until the client has read
    /// them). Default 65,536.
    pub max_tokens_in_flight: NonZeroUsize,
    /// How long a batch may wait for room in the in-flight budget before it
    /// gets an `overloaded` error. Default 2 s.
    pub overload_wait: Duration,
    /// Bytes of requests still arriving, across the server. A request takes
    /// room for its declared length when its length prefix arrives; one that
    /// finds none is refused at once with `overloaded`. Default 128 MiB.
    pub max_request_buffer_bytes: NonZeroUsize,
    /// A request that has not arrived whole (up to its FIN) this long after
    /// its stream opened is refused with `request_timeout`, its stream stopped
    /// and its bytes released. Default 10 s.
    pub request_timeout: Duration,
    /// Longest a write of the answer may wait for the client to read (flow
    /// control); then the stream is reset. Default 10 s.
    pub write_timeout: Duration,
    /// A handshake not complete this long after the first packet is dropped.
    /// Default 5 s.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; a new attempt past it is refused.
    /// Default 1024.
    pub max_handshakes: NonZeroUsize,
    /// With this many handshakes in progress, a new attempt from an address
    /// not yet validated gets a QUIC Retry (it must prove it receives at that
    /// address). 0: always. Default 32.
    pub retry_after_handshakes: usize,
    /// A connection with no traffic for this long is closed. Default 30 s.
    pub idle_timeout: Duration,
    /// Keep-alive interval. Default 10 s.
    pub keep_alive: Duration,
    /// Longest wait for batches in flight at shutdown. Default 10 s.
    pub drain_timeout: Duration,
    /// Tenants whose decisions each batch's report also counts per tenant
    /// (an operator's bounded opt-in for per-tenant metrics). Default none.
    pub tenant_watch: Option<Arc<TenantWatch>>,
}

const fn nz(n: usize) -> NonZeroUsize {
    match NonZeroUsize::new(n) {
        Some(n) => n,
        None => panic!("a default limit is zero"),
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            limits: Limits::default(),
            max_connections: nz(1024),
            max_streams_per_connection: NonZeroU32::new(256).expect("non-zero"),
            max_tokens_in_flight: nz(65_536),
            overload_wait: Duration::from_secs(2),
            max_request_buffer_bytes: nz(128 << 20),
            request_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            max_handshakes: nz(1024),
            retry_after_handshakes: 32,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            tenant_watch: None,
        }
    }
}

/// Why options cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server option {key}: {message}")]
pub struct OptionsError {
    /// The option.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

impl ServerOptions {
    /// Checks every limit and timer (the daemon calls it when it reads its
    /// config, so a bad value names the config key before anything binds).
    ///
    /// # Errors
    /// The first option out of range.
    pub fn validate(&self) -> Result<(), OptionsError> {
        let err = |key, message: &str| {
            Err(OptionsError {
                key,
                message: message.to_owned(),
            })
        };
        // Counts are NonZero by type; the frame limits are plain numbers.
        let at_least_one = [
            ("max_batch_items", self.limits.max_items),
            ("max_frame_bytes", self.limits.max_frame_bytes),
        ];
        for (key, v) in at_least_one {
            if v == 0 {
                return err(key, "must be at least 1");
            }
        }
        if self.limits.max_frame_bytes > HARD_MAX_FRAME_BYTES {
            return err("max_frame_bytes", "at most 16 MiB");
        }
        if self.max_request_buffer_bytes.get() < self.limits.max_frame_bytes + 4 {
            return err(
                "max_request_buffer_bytes",
                "must hold at least one whole request (max_frame_bytes + 4)",
            );
        }
        for (key, d) in [
            ("request_timeout", self.request_timeout),
            ("write_timeout", self.write_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if d.is_zero() {
                return err(key, "must be longer than zero");
            }
        }
        if quinn::IdleTimeout::try_from(self.idle_timeout).is_err() {
            return err("idle_timeout", "too long for QUIC");
        }
        if self.keep_alive.is_zero() || self.keep_alive >= self.idle_timeout {
            return err("keep_alive", "must be above zero and below idle_timeout");
        }
        Ok(())
    }

    /// The QUIC transport these options imply.
    pub(crate) fn transport(&self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        t.max_concurrent_bidi_streams(VarInt::from_u32(self.max_streams_per_connection.get()))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .max_idle_timeout(quinn::IdleTimeout::try_from(self.idle_timeout).ok())
            .keep_alive_interval(Some(self.keep_alive))
            .mtu_discovery_config(Some(mtu_discovery()));
        // A request stream may carry a whole frame; let it arrive without
        // stalls. One connection may hold at most a few whole requests unread
        // in QUIC's buffers (the default is unbounded): the server reads every
        // stream it accepts at once, so this caps only what a client sends
        // ahead of the streams it was granted.
        let frame = self.limits.max_frame_bytes.min(HARD_MAX_FRAME_BYTES) + 5;
        let window = u32::try_from(frame).unwrap_or(u32::MAX);
        t.stream_receive_window(VarInt::from_u32(window));
        let connection = u32::try_from((2 * frame).max(16 << 20)).unwrap_or(u32::MAX);
        t.receive_window(VarInt::from_u32(connection));
        t
    }
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
