//! jotd-transport: the wire between gateways and jotd.
//!
//! - [`messages`](BatchRequest) and a sans-IO codec (frames in caller
//!   buffers, limits before allocation); the byte layout is specified in
//!   docs/protocol.md, kept honest by a golden-bytes test.
//! - [`BatchJob`]: one batch's bytes → its decisions, sans IO; every front
//!   door drives one per batch and consumes its [`BatchReport`].
//! - [`Server`]: QUIC (quinn, TLS 1.3 on rustls + aws-lc-rs, ALPN `jotd/1`,
//!   optional mutual TLS) that only moves bytes between streams and jobs,
//!   under connection, handshake, stream, buffer, in-flight and time limits,
//!   with a bounded drain.
//! - [`Client`]: the gateway side: several endpoints (addresses, or names
//!   resolved again periodically), least-outstanding spreading, failover and
//!   hedged copies to other endpoints, ejection of failing ones with
//!   background reconnects, per-batch timeout, exactly one decision per item
//!   or a typed error.
//! - [`slots`]: the connection cap of the plain-TCP listeners (admin ports,
//!   the gateway's HTTP doors) and who gives way at it.

mod client;
mod codec;
#[cfg(feature = "dev-pki")]
mod dev_pki;
pub mod files;
mod job;
mod messages;
mod options;
pub mod ratelimit;
mod report;
mod server;
pub mod slots;
mod stream;
mod tls;

pub use client::{
    Batcher, BatcherOptions, BatcherStats, Check, CheckError, Client, ClientDecision, ClientError,
    ClientOptions, ClientStats, ConnectionFailure, EndpointStats, FlushReason, HedgePolicy,
    PathStats, Pending, Resolve, ResolveFuture, SystemResolver, Violation,
};
pub use codec::{
    DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_ITEMS, FrameType, HARD_MAX_FRAME_BYTES, HARD_MAX_ITEMS,
    Limits, RawFrame, WireError, decode_batch, decode_decisions, decode_error, encode_batch,
    encode_decisions, encode_error, next_frame, peek_request_id,
};
#[cfg(feature = "dev-pki")]
pub use dev_pki::DevPki;
pub use job::{
    BatchJob, Emit, JobContext, MAX_REFETCH_TENANTS, Next, Refused, STREAM_BYTES,
    min_request_buffer_bytes, serve_to_end,
};
pub use messages::{
    ALPN, BatchRequest, DecisionChunk, ErrorCode, ErrorFrame, Item, MAX_ADDRESSES_PER_BATCH,
    WireDecision,
};
pub use options::{OptionsError, ServerOptions};
pub use report::{BatchReport, Denial, Tally, TenantWatch};
pub use server::{
    Backend, BoxFuture, CLOSE_CONNECTION_LIMIT, CLOSE_SHUTDOWN, DrainReport, Event, Overload,
    PreparedTls, RESET_ANSWER_BUFFER_FULL, RESET_WRITE_TIMEOUT, Refusal, STOP_REFUSED,
    STOP_TOO_LARGE, Server, ServerError, ServerStats, StreamEnd, TlsSwitch,
};
pub use tls::{
    TlsError, certificates, check_server_name, client_config, client_config_alpn, server_config,
};
