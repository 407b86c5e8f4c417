//! jotd-transport: the wire between gateways and jotd.
//!
//! So far: the message types, a sans-IO codec (frames in caller buffers, no
//! sockets) and the server's per-stream work (`serve_stream`), also sans IO. The byte layout is specified in docs/protocol.md so a client can
//! be written in any language; the golden-bytes test keeps that page honest.
//! The QUIC server and client (quinn, ALPN `jotd/1`) are the next step.

mod codec;
mod handler;
mod messages;

pub use codec::{
    DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_ITEMS, FrameType, HARD_MAX_FRAME_BYTES, Limits, RawFrame,
    WireError, decode_batch, decode_decisions, decode_error, encode_batch, encode_decisions,
    encode_error, next_frame,
};
pub use handler::{Served, serve_stream};
pub use messages::{ALPN, BatchRequest, DecisionChunk, ErrorCode, ErrorFrame, Item, WireDecision};
