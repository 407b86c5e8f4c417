//! The server's work for one stream, sans IO: the bytes a client sent → the
//! frames to send back. Decodes the one `Batch` frame, verifies every item on
//! the caller's rayon pool against one snapshot, and hands each `Decisions`
//! frame to `send` as its chunk completes; a batch that cannot be served gets
//! exactly one `Error` frame instead. Every item gets exactly one decision.

use crate::codec::{
    FrameType, Limits, WireError, decode_batch, encode_decisions, encode_error, next_frame,
};
use crate::messages::{DecisionChunk, ErrorCode, ErrorFrame, WireDecision};
use jotd_core::{Engine, Request, Snapshot, UnixTime};
use rayon::ThreadPool;

/// What one stream produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// All `items` decided, in `frames` decision frames.
    Decided {
        /// Items in the batch.
        items: usize,
        /// `Decisions` frames sent.
        frames: usize,
    },
    /// The batch failed as a whole; one `Error` frame was sent.
    Failed(ErrorCode),
}

fn fail(
    request_id: u64,
    code: ErrorCode,
    message: &str,
    send: &(dyn Fn(Vec<u8>) + Sync),
) -> Served {
    let mut out = Vec::new();
    let frame = ErrorFrame {
        request_id,
        code: code as u16,
        message,
    };
    if encode_error(&frame, &mut out).is_ok() {
        send(out);
    }
    Served::Failed(code)
}

/// Serves one stream whose whole content is `input` (the client finished its side).
pub fn serve_stream(
    engine: &Engine,
    pool: &ThreadPool,
    snapshot: &Snapshot,
    input: &[u8],
    limits: &Limits,
    now: UnixTime,
    send: &(dyn Fn(Vec<u8>) + Sync),
) -> Served {
    let frame = match next_frame(input, limits) {
        Ok(Some(f)) if f.consumed == input.len() => f,
        Ok(Some(_)) => {
            return fail(
                0,
                ErrorCode::MalformedFrame,
                "one frame per stream, and nothing after it",
                send,
            );
        }
        Ok(None) => {
            return fail(
                0,
                ErrorCode::MalformedFrame,
                "stream ended inside a frame",
                send,
            );
        }
        Err(WireError::FrameTooLarge { len, limit }) => {
            return fail(
                0,
                ErrorCode::FrameTooLarge,
                &format!("frame of {len} bytes exceeds {limit}"),
                send,
            );
        }
        Err(e) => return fail(0, ErrorCode::UnsupportedFrame, &e.to_string(), send),
    };
    if frame.kind != FrameType::Batch {
        return fail(
            0,
            ErrorCode::UnsupportedFrame,
            "a client sends Batch frames only",
            send,
        );
    }
    let batch = match decode_batch(frame.body, limits) {
        Ok(b) => b,
        Err(WireError::TooManyItems { count, limit }) => {
            return fail(
                0,
                ErrorCode::TooManyItems,
                &format!("{count} items; at most {limit}"),
                send,
            );
        }
        Err(e) => return fail(0, ErrorCode::MalformedFrame, &e.to_string(), send),
    };
    let id = batch.request_id;
    let requests: Vec<Request<'_>> = batch
        .items
        .iter()
        .map(|i| Request {
            token: i.token,
            tenant: i.tenant,
            method: i.method,
            addresses: &i.addresses,
            origin: i.origin,
            user_agent: i.user_agent,
        })
        .collect();
    let frames = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    engine.verify_batch_streaming(pool, snapshot, &requests, now, |first, decisions| {
        let decisions: Vec<WireDecision<'_>> = decisions
            .iter()
            .enumerate()
            .map(|(i, d)| {
                WireDecision::from_decision(u32::try_from(first + i).unwrap_or(u32::MAX), d)
            })
            .collect();
        let mut out = Vec::new();
        match encode_decisions(
            &DecisionChunk {
                request_id: id,
                decisions,
            },
            &mut out,
        ) {
            Ok(()) => {
                frames.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                send(out);
            }
            Err(_) => failed.store(true, std::sync::atomic::Ordering::Relaxed),
        }
    });
    if failed.into_inner() {
        // A chunk could not be encoded (claims over the frame limit): the batch fails
        // as a whole rather than leaving items undecided.
        return fail(
            id,
            ErrorCode::Internal,
            "a decision chunk exceeded the frame limit",
            send,
        );
    }
    Served::Decided {
        items: requests.len(),
        frames: frames.into_inner(),
    }
}
