//! Framing and encoding, sans IO: bytes in caller buffers, limits checked
//! before anything is allocated.
//!
//! A frame is `len: u32 big-endian` (bytes after the prefix), `type: u8`, then
//! the bincode body (standard config: little-endian varints). See docs/protocol.md.

use crate::messages::{BatchRequest, DecisionChunk, ErrorFrame};
use bincode::config::{self, Config};

/// Default largest frame accepted: 4 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 4 << 20;
/// No configuration may raise the frame limit above this (16 MiB).
pub const HARD_MAX_FRAME_BYTES: usize = 16 << 20;
/// Default most items in one batch.
pub const DEFAULT_MAX_ITEMS: usize = 4096;
/// No configuration may raise the item limit above this.
pub const HARD_MAX_ITEMS: usize = 65_536;

/// What bincode may count as read while decoding one body. Its limit counts
/// claims, not wire bytes: a varint length claims 8 bytes however short, an
/// option or a bool 1, and a list its items' in-memory size up front (104
/// bytes an item). A body therefore claims its size plus ~50 bytes an item
/// and 8 an address: a 16 MiB frame of 4,096 items went over a 16 MiB limit
/// and was `malformed_frame` (review, 2026-12-05). Twice the largest frame
/// covers the largest frame with [`HARD_MAX_ITEMS`] items and
/// `MAX_ADDRESSES_PER_BATCH` addresses (about 27 MiB claimed).
const DECODE_CLAIM_LIMIT: usize = 2 * HARD_MAX_FRAME_BYTES;

/// The bincode configuration of every body. The limit makes bincode refuse a
/// container length that claims more than a frame could hold, before it
/// allocates.
fn bincode_config() -> impl Config {
    config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
        .with_limit::<DECODE_CLAIM_LIMIT>()
}

/// Codec limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame (after the length prefix). Default 4 MiB, at most 16 MiB.
    pub max_frame_bytes: usize,
    /// Most items per batch. Default 4096, at most [`HARD_MAX_ITEMS`].
    pub max_items: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_items: DEFAULT_MAX_ITEMS,
        }
    }
}

/// Frame types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// Client → server: [`BatchRequest`].
    Batch = 1,
    /// Server → client: [`DecisionChunk`].
    Decisions = 2,
    /// Server → client: [`ErrorFrame`].
    Error = 3,
}

impl FrameType {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Batch),
            2 => Some(Self::Decisions),
            3 => Some(Self::Error),
            _ => None,
        }
    }
}

/// What went wrong on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A length prefix over the limit (the body is not read).
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    FrameTooLarge {
        /// Claimed length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A frame of length 0: not even a type byte.
    #[error("empty frame (length 0, no type byte)")]
    EmptyFrame,
    /// An unknown type byte.
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// A batch claims more items than allowed (checked before decoding them).
    #[error("batch of {count} items exceeds the limit of {limit}")]
    TooManyItems {
        /// Claimed item count.
        count: u64,
        /// The limit.
        limit: usize,
    },
    /// The body does not decode, or bytes are left over.
    #[error("malformed frame body: {0}")]
    Malformed(String),
    /// Encoding failed (a message over the frame limit).
    #[error("cannot encode: {0}")]
    Encode(String),
}

/// One whole frame split off the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFrame<'a> {
    /// Its type.
    pub kind: FrameType,
    /// The bincode body.
    pub body: &'a [u8],
    /// Bytes of the buffer this frame used (prefix included).
    pub consumed: usize,
}

/// Splits the next whole frame off `buf`. `Ok(None)`: more bytes are needed.
///
/// # Errors
/// A length over `limits.max_frame_bytes` (before its body arrives), an empty
/// frame, or an unknown type.
pub fn next_frame<'a>(buf: &'a [u8], limits: &Limits) -> Result<Option<RawFrame<'a>>, WireError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
    let limit = limits.max_frame_bytes.min(HARD_MAX_FRAME_BYTES);
    if len > limit {
        return Err(WireError::FrameTooLarge { len, limit });
    }
    let Some(frame) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    let (&kind, body) = frame.split_first().ok_or(WireError::EmptyFrame)?;
    let kind = FrameType::from_byte(kind).ok_or(WireError::UnknownFrameType(kind))?;
    Ok(Some(RawFrame {
        kind,
        body,
        consumed: 4 + len,
    }))
}

fn encode<E: bincode::Encode>(
    kind: FrameType,
    msg: &E,
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, kind as u8]);
    let written = bincode::encode_into_std_write(msg, out, bincode_config())
        .map_err(|e| WireError::Encode(e.to_string()));
    let len = out.len() - start - 4;
    match written {
        Ok(_) if len <= HARD_MAX_FRAME_BYTES => {
            out[start..start + 4]
                .copy_from_slice(&u32::try_from(len).expect("under 16 MiB").to_be_bytes());
            Ok(())
        }
        Ok(_) => {
            out.truncate(start);
            Err(WireError::Encode(format!(
                "{len} bytes exceed the {HARD_MAX_FRAME_BYTES}-byte frame limit"
            )))
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Appends a batch frame to `out`.
///
/// # Errors
/// The frame would exceed the hard frame limit.
pub fn encode_batch(msg: &BatchRequest<'_>, out: &mut Vec<u8>) -> Result<(), WireError> {
    encode(FrameType::Batch, msg, out)
}

/// Appends a decisions frame to `out`.
///
/// # Errors
/// The frame would exceed the hard frame limit.
pub fn encode_decisions(msg: &DecisionChunk<'_>, out: &mut Vec<u8>) -> Result<(), WireError> {
    encode(FrameType::Decisions, msg, out)
}

/// Appends an error frame to `out`.
///
/// # Errors
/// The frame would exceed the hard frame limit.
pub fn encode_error(msg: &ErrorFrame<'_>, out: &mut Vec<u8>) -> Result<(), WireError> {
    encode(FrameType::Error, msg, out)
}

fn decode<'a, T: bincode::BorrowDecode<'a, ()>>(body: &'a [u8]) -> Result<T, WireError> {
    let (msg, used) = bincode::borrow_decode_from_slice(body, bincode_config())
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(WireError::Malformed(format!(
            "{} bytes left over",
            body.len() - used
        )));
    }
    Ok(msg)
}

/// Decodes a batch body, borrowing tokens and strings from it. The item count
/// is checked against `limits.max_items` before any item is decoded.
///
/// # Errors
/// Too many items, or a malformed body.
pub fn decode_batch<'a>(body: &'a [u8], limits: &Limits) -> Result<BatchRequest<'a>, WireError> {
    // The body starts with request_id (u64) then the item count (u64), both varints.
    if let Ok(((_, count), _)) = bincode::decode_from_slice::<(u64, u64), _>(body, bincode_config())
        && count > limits.max_items as u64
    {
        return Err(WireError::TooManyItems {
            count,
            limit: limits.max_items,
        });
    }
    decode(body)
}

/// Decodes a decisions body.
///
/// # Errors
/// A malformed body.
pub fn decode_decisions(body: &[u8]) -> Result<DecisionChunk<'_>, WireError> {
    decode(body)
}

/// Decodes an error body.
///
/// # Errors
/// A malformed body.
pub fn decode_error(body: &[u8]) -> Result<ErrorFrame<'_>, WireError> {
    decode(body)
}

/// The request id and item count of a whole `Batch` frame (length prefix
/// included, nothing after it); `None` for anything else. For a caller that
/// sends frames it did not encode and must check them first.
#[must_use]
pub(crate) fn peek_batch_head(frame: &[u8]) -> Option<(u64, u64)> {
    let (declared, body) = batch_body(frame)?;
    if declared.checked_add(4) != Some(frame.len()) {
        return None;
    }
    bincode::decode_from_slice::<(u64, u64), _>(body, bincode_config())
        .ok()
        .map(|(head, _)| head)
}

/// A Batch frame's declared length and the bytes of its body that `head`
/// holds (none past the declared length); `None` when `head` does not start
/// a Batch frame.
fn batch_body(head: &[u8]) -> Option<(usize, &[u8])> {
    if head.get(4) != Some(&(FrameType::Batch as u8)) {
        return None;
    }
    let declared = u32::from_be_bytes(head.get(..4)?.try_into().ok()?) as usize;
    let end = head.len().min(declared.saturating_add(4));
    Some((declared, head.get(5..end)?))
}

/// The request id a Batch frame's first bytes carry, read from as much of
/// the stream as has arrived (the 4-byte length, the type byte, then the id as
/// a varint): refusals echo it whenever it was readable. `None` when `head`
/// is too short or does not start a Batch frame, or when the id's bytes lie
/// past the length the frame declares (they are not the frame's).
#[must_use]
pub fn peek_request_id(head: &[u8]) -> Option<u64> {
    let (_, body) = batch_body(head)?;
    bincode::decode_from_slice::<u64, _>(body, bincode_config())
        .ok()
        .map(|(id, _)| id)
}
