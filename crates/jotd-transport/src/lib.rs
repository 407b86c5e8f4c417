//! jotd-transport: the wire between gateways and jotd.
//!
//! - [`messages`](BatchRequest) and a sans-IO codec (frames in caller
//!   buffers, limits before allocation); the byte layout is specified in
//!   docs/protocol.md, kept honest by a golden-bytes test.
//! - [`serve_stream`]: the server's per-stream work, sans IO.
//! - [`Server`]: QUIC (quinn, TLS 1.3 on rustls + aws-lc-rs, ALPN `jotd/1`,
//!   optional mutual TLS) with connection, stream and in-flight limits and a
//!   bounded drain.
//! - [`Client`]: the gateway side: several endpoints, least-outstanding
//!   spreading, reconnect with backoff, per-batch timeout, exactly one decision
//!   per item or an error.

mod client;
mod codec;
mod handler;
mod messages;
mod server;
mod tls;

pub use client::{Client, ClientDecision, ClientError, ClientOptions, Pending};
pub use codec::{
    DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_ITEMS, FrameType, HARD_MAX_FRAME_BYTES, Limits, RawFrame,
    WireError, decode_batch, decode_decisions, decode_error, encode_batch, encode_decisions,
    encode_error, next_frame, peek_batch_header,
};
pub use handler::{
    Hold, Served, Tally, TenantWatch, send_error, serve_held, serve_stream, serve_stream_with,
};
pub use messages::{ALPN, BatchRequest, DecisionChunk, ErrorCode, ErrorFrame, Item, WireDecision};
pub use server::{
    Backend, BatchReport, BoxFuture, CLOSE_SHUTDOWN, DrainReport, Event, Refusal, STOP_TOO_LARGE,
    Server, ServerError, ServerOptions, ServerStats,
};
pub use tls::{DevPki, TlsError, certificates, client_config, client_config_alpn, server_config};
