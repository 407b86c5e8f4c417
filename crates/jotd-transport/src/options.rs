//! The QUIC server's limits and timers, and the QUIC transport they imply.

use crate::codec::{HARD_MAX_FRAME_BYTES, HARD_MAX_ITEMS, Limits};
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
    /// gets an `overloaded` error. Default 250 ms: well below the clients'
    /// deadlines, so the answer leaves them time to try another replica.
    pub overload_wait: Duration,
    /// Bytes of requests and answers in progress, across the server. A
    /// request takes room for its bytes as they arrive (not for its declared
    /// length) and for its decoded form, and keeps it until its decisions
    /// exist; one that finds none is refused at once with `overloaded`. The
    /// answer's frames not yet written take room too; an answer that finds
    /// none is reset (code 4). Default 128 MiB.
    pub max_request_buffer_bytes: NonZeroUsize,
    /// A request that has not arrived whole (up to its FIN) this long after
    /// its stream opened is refused with `request_timeout`, its stream stopped
    /// and its bytes released. Default 10 s.
    pub request_timeout: Duration,
    /// Longest a write of the answer may wait for the client to read (flow
    /// control); then the stream is reset. Default 10 s.
    pub write_timeout: Duration,
    /// Longest a batch's unknown-`kid` items wait for their tenant's key-set
    /// refetch; past it they are decided on the keys at hand (`unknown_kid`)
    /// while the refetch goes on in the background. Keeps a slow identity
    /// provider from holding a stream, its tokens' room and a gateway's
    /// check past their deadlines. Default 1 s.
    pub refetch_hold: Duration,
    /// A handshake not complete this long after the first packet is dropped.
    /// Default 5 s.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; a new attempt past it is refused.
    /// Default 1024.
    pub max_handshakes: NonZeroUsize,
    /// Handshakes in progress from one address; more from it are refused, so
    /// one source cannot hold every handshake slot. Default 64.
    pub max_handshakes_per_address: NonZeroUsize,
    /// Leading bits of an IPv6 address that name its source for the shares
    /// above and for `max_connections` ([`crate::slots::source`]); 1..=128,
    /// 128 counts each address on its own. An IPv4 address is a source whole.
    /// Default 64 (one host is routinely handed a /64).
    pub ipv6_share_prefix: u8,
    /// With this many handshakes in progress, a new attempt from an address
    /// not yet validated gets a QUIC Retry (it must prove it receives at that
    /// address). 0: always. Default 32.
    pub retry_after_handshakes: usize,
    /// A connection with no traffic for this long is closed. Default 30 s.
    pub idle_timeout: Duration,
    /// Keep-alive interval the server itself pings at; zero: off (the
    /// default). Clients keep their connections alive (the client library
    /// pings every 100 ms): a server ping would keep a silent client's
    /// connection, and its slot, for ever; without it a connection with no
    /// traffic closes after `idle_timeout`.
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
            overload_wait: Duration::from_millis(250),
            max_request_buffer_bytes: nz(128 << 20),
            request_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            refetch_hold: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(5),
            max_handshakes: nz(1024),
            max_handshakes_per_address: nz(64),
            ipv6_share_prefix: crate::slots::IPV6_PREFIX,
            retry_after_handshakes: 32,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::ZERO,
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
        if self.limits.max_items > HARD_MAX_ITEMS {
            return err("max_batch_items", "at most 65536");
        }
        // The floor for any request at all. The daemon's config asks for
        // [`crate::min_request_buffer_bytes`], the room for a full-size
        // request while it is decided; tests of the budget's edges go lower.
        if self.max_request_buffer_bytes.get() < self.limits.max_frame_bytes + 4 {
            return err(
                "max_request_buffer_bytes",
                "must hold at least one whole request (max_frame_bytes + 4)",
            );
        }
        for (key, d) in [
            ("request_timeout", self.request_timeout),
            ("write_timeout", self.write_timeout),
            ("refetch_hold", self.refetch_hold),
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
        if self.keep_alive >= self.idle_timeout {
            return err("keep_alive", "must be below idle_timeout (zero: off)");
        }
        Ok(())
    }

    /// The QUIC transport these options imply.
    pub(crate) fn transport(&self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        t.max_concurrent_bidi_streams(VarInt::from_u32(self.max_streams_per_connection.get()))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .max_idle_timeout(quinn::IdleTimeout::try_from(self.idle_timeout).ok())
            .keep_alive_interval((!self.keep_alive.is_zero()).then_some(self.keep_alive))
            .mtu_discovery_config(Some(mtu_discovery()));
        // A request stream may carry a whole frame; let it arrive without
        // stalls.
        let frame = self.limits.max_frame_bytes.min(HARD_MAX_FRAME_BYTES) + 5;
        let window = u32::try_from(frame).unwrap_or(u32::MAX);
        t.stream_receive_window(VarInt::from_u32(window));
        // What one connection's client may send before the server has read it
        // (quinn's default is unbounded). The server reads in-order bytes at
        // once and counts them in `max_request_buffer_bytes`; bytes sent past
        // a gap (out of order, offset 0 held back) wait in QUIC's buffers
        // outside that budget, up to this window per connection. A larger
        // frame still flows: the window slides as the server reads.
        t.receive_window(VarInt::from_u32(RECEIVE_WINDOW));
        // Answers a connection's client has not taken yet, held in QUIC's send
        // buffer: quinn's default (10 MB a connection) let clients that grant
        // credit and never read hold 10 GB at max_connections = 1024.
        t.send_window(SEND_WINDOW);
        // No DATAGRAM frames: jotd never reads them, and quinn's default
        // buffers ~1.25 MB of them per connection (each holding its whole
        // packet), outside every budget. A client's DATAGRAM is then a
        // protocol violation that closes its connection.
        t.datagram_receive_buffer_size(None);
        t
    }
}

/// Bytes one connection's client may send ahead of the server's reads: the
/// most QUIC buffers for it out of order (outside `max_request_buffer_bytes`),
/// `max_connections` × 2 MiB in all.
pub(crate) const RECEIVE_WINDOW: u32 = 2 << 20;

/// Bytes of answers one connection may hold in QUIC's send buffer (written,
/// not yet acknowledged): decision frames are small (tens of bytes an item),
/// and on a LAN 2 MiB is far above what is in flight in one round trip.
pub(crate) const SEND_WINDOW: u64 = 2 << 20;

/// The largest UDP payload jotd sends and advertises (the QUIC
/// `max_udp_payload_size` transport parameter). quinn's default is 1,472
/// (Ethernet), and a peer never sends more than the other side advertises,
/// so without this path-MTU discovery stops at 1,472 whatever its upper bound.
pub(crate) const MAX_UDP_PAYLOAD: u16 = MTU_UPPER_BOUND;

/// Path MTU discovery goes up to this: batches are tens of kilobytes, and
/// fewer, larger packets cost far less CPU on both ends (one encryption, one
/// header, one acknowledgement each). A path that drops large packets keeps
/// the size it proved: discovery probes, and quinn's black-hole detection
/// falls back. Loopback and jumbo-frame networks reach the bound; plain
/// Ethernet stays at 1,452.
///
/// Why not more: quinn hands the kernel up to 10 packets in one
/// segmentation-offload (GSO) send, and Linux refuses a send over 65,507
/// bytes (one IPv4 UDP datagram's limit) with EINVAL or EMSGSIZE. quinn drops
/// that send (the packets are lost) and turns GSO off for the socket for
/// good. 10 × 6,550 = 65,500 stays under the limit.
pub(crate) const MTU_UPPER_BOUND: u16 = 6550;

/// Path-MTU discovery up to [`MTU_UPPER_BOUND`].
pub(crate) fn mtu_discovery() -> quinn::MtuDiscoveryConfig {
    let mut m = quinn::MtuDiscoveryConfig::default();
    m.upper_bound(MTU_UPPER_BOUND);
    m
}

/// The UDP socket buffers jotd asks for, each way. The kernel default
/// (about 208 KiB) holds about a hundred datagrams: a burst of batches from a
/// few clients overflows it, the kernel drops datagrams, and QUIC reads the
/// drops as congestion (smaller window, retransmissions, hedges in the
/// client) and as an MTU black hole (back to 1,200-byte packets).
pub(crate) const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// Asks for [`SOCKET_BUFFER_BYTES`] each way; Linux caps the request at
/// `net.core.rmem_max` / `wmem_max`, so what was granted is logged.
fn socket_buffers(socket: &socket2::Socket) {
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    let recv = socket.recv_buffer_size().unwrap_or(0);
    let send = socket.send_buffer_size().unwrap_or(0);
    // Linux reports twice what it grants (bookkeeping overhead included).
    if recv < SOCKET_BUFFER_BYTES || send < SOCKET_BUFFER_BYTES {
        tracing::info!(
            recv_buffer_bytes = recv,
            send_buffer_bytes = send,
            wanted = SOCKET_BUFFER_BYTES,
            "UDP socket buffers smaller than wanted; raise net.core.rmem_max and \
             net.core.wmem_max to at least {} (sysctl) to avoid drops under bursts",
            SOCKET_BUFFER_BYTES / 2
        );
    } else {
        tracing::debug!(
            recv_buffer_bytes = recv,
            send_buffer_bytes = send,
            "UDP socket buffers"
        );
    }
}

/// A QUIC endpoint on `addr` (a server when `server` is set) that advertises
/// [`MAX_UDP_PAYLOAD`]. An IPv6 address also takes IPv4 where the system
/// allows it (as `quinn::Endpoint::client` does).
pub(crate) fn endpoint(
    addr: std::net::SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6()
        && server.is_none()
        && let Err(e) = socket.set_only_v6(false)
    {
        tracing::debug!(%e, "unable to make the socket dual-stack");
    }
    socket.bind(&addr.into())?;
    socket_buffers(&socket);
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .map_err(|e| std::io::Error::other(format!("max_udp_payload_size: {e}")))?;
    quinn::Endpoint::new(
        config,
        server,
        socket.into(),
        std::sync::Arc::new(quinn::TokioRuntime),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_holds_at_most_two_mib_each_way() {
        // quinn's fields are private; its Debug output names them.
        let t = format!("{:?}", ServerOptions::default().transport());
        assert!(t.contains(&format!("send_window: {SEND_WINDOW}")), "{t}");
        assert_eq!(SEND_WINDOW, 2 << 20);
        // Nor more than 2 MiB of a client's bytes ahead of its reads.
        assert!(
            t.contains(&format!("receive_window: {RECEIVE_WINDOW}")),
            "{t}"
        );
        assert_eq!(RECEIVE_WINDOW, 2 << 20);
        // And the server does not ping by default.
        assert!(t.contains("keep_alive_interval: None"), "{t}");
        // Nor buffer DATAGRAM frames (quinn's default: ~1.25 MB a connection).
        assert!(t.contains("datagram_receive_buffer_size: None"), "{t}");
    }
}
