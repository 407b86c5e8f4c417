//! Wire messages. They borrow: a server decodes request items straight out of
//! the frame buffer (no allocation per token or string), and encodes decisions
//! borrowing from the engine's `Decision`s.

use bincode::{BorrowDecode, Encode};
use jotd_core::{Decision, Reason};

/// The QUIC ALPN protocol id. An incompatible change gets a new one (`jotd/2`).
pub const ALPN: &[u8] = b"jotd/1";

/// One request to authorize.
#[derive(Debug, Clone, PartialEq, Eq, Encode, BorrowDecode)]
pub struct Item<'a> {
    /// Bearer token bytes, without `Bearer `; `None` when the request had none.
    pub token: Option<&'a [u8]>,
    /// Tenant id.
    pub tenant: &'a str,
    /// JSON-RPC method.
    pub method: Option<&'a str>,
    /// Addresses the request touches.
    pub addresses: Vec<&'a str>,
    /// HTTP `Origin`.
    pub origin: Option<&'a str>,
    /// HTTP `User-Agent`.
    pub user_agent: Option<&'a str>,
}

/// The most addresses one batch may carry, all items together. Each takes
/// one wire byte at least (an empty string) but about 40 bytes once decoded
/// and indexed, so without a cap a frame of empty addresses held about 30
/// times its size. The gateway stays far below (at most 64 addresses per
/// call, 4,096 in a micro-batch of 64 checks).
pub const MAX_ADDRESSES_PER_BATCH: usize = 65_536;

/// A batch: the one frame a client writes on a stream.
#[derive(Debug, Clone, PartialEq, Eq, Encode)]
pub struct BatchRequest<'a> {
    /// Chosen by the client; echoed in every answer frame.
    pub request_id: u64,
    /// The requests; decisions refer to them by index.
    pub items: Vec<Item<'a>>,
}

// Decoded by hand (the same wire form as the derive) to count addresses
// across the whole batch before any list is allocated.
impl<'de, C> BorrowDecode<'de, C> for BatchRequest<'de> {
    fn borrow_decode<D: bincode::de::BorrowDecoder<'de, Context = C>>(
        d: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        use bincode::Decode;
        use bincode::error::DecodeError;
        let len = |d: &mut D| {
            let v = <u64 as Decode<C>>::decode(d)?;
            usize::try_from(v).map_err(|_| DecodeError::OutsideUsizeRange(v))
        };
        let request_id = <u64 as Decode<C>>::decode(d)?;
        let count = len(d)?;
        d.claim_container_read::<Item<'de>>(count)?;
        // Grown as items arrive, never reserved from the declared count: a
        // frame of a few bytes declaring thousands of items reserves nothing.
        let mut items = Vec::with_capacity(count.min(16));
        let mut left = MAX_ADDRESSES_PER_BATCH;
        for _ in 0..count {
            d.unclaim_bytes_read(std::mem::size_of::<Item<'de>>());
            let token = <Option<&'de [u8]>>::borrow_decode(d)?;
            let tenant = <&'de str>::borrow_decode(d)?;
            let method = <Option<&'de str>>::borrow_decode(d)?;
            let n = len(d)?;
            left = left.checked_sub(n).ok_or_else(|| {
                DecodeError::OtherString(format!(
                    "more than {MAX_ADDRESSES_PER_BATCH} addresses in the batch"
                ))
            })?;
            d.claim_container_read::<&'de str>(n)?;
            let mut addresses = Vec::with_capacity(n.min(8));
            for _ in 0..n {
                d.unclaim_bytes_read(std::mem::size_of::<&'de str>());
                addresses.push(<&'de str>::borrow_decode(d)?);
            }
            let origin = <Option<&'de str>>::borrow_decode(d)?;
            let user_agent = <Option<&'de str>>::borrow_decode(d)?;
            items.push(Item {
                token,
                tenant,
                method,
                addresses,
                origin,
                user_agent,
            });
        }
        Ok(Self { request_id, items })
    }
}

/// The decision for one item.
#[derive(Debug, Clone, PartialEq, Eq, Encode, BorrowDecode)]
pub struct WireDecision<'a> {
    /// Index of the item in the batch.
    pub index: u32,
    /// Whether the request is allowed.
    pub allow: bool,
    /// Reason code (`jotd_core::Reason::code`).
    pub reason: u16,
    /// Key id, when the signature verified.
    pub kid: Option<&'a str>,
    /// `sub`, when the signature verified.
    pub sub: Option<&'a str>,
    /// `exp` (Unix seconds), when the signature verified.
    pub exp: Option<u64>,
    /// Claims the tenant returns: (name, raw JSON value).
    pub claims: Vec<(&'a str, &'a str)>,
}

impl<'a> WireDecision<'a> {
    /// The wire form of an engine decision for item `index`.
    #[must_use]
    pub fn from_decision(index: u32, d: &'a Decision) -> Self {
        let t = d.token();
        Self {
            index,
            allow: d.allow(),
            reason: d.reason().code(),
            kid: t.and_then(|t| t.kid()),
            sub: t.and_then(|t| t.sub()),
            exp: t.and_then(|t| t.exp()),
            claims: t
                .map(|t| t.claims().iter().map(|(k, v)| (&**k, &**v)).collect())
                .unwrap_or_default(),
        }
    }

    /// The reason, if the code is known to this build.
    #[must_use]
    pub fn reason(&self) -> Option<Reason> {
        Reason::from_code(self.reason)
    }
}

/// Decisions for some items of a batch, in completion order.
#[derive(Debug, Clone, PartialEq, Eq, Encode, BorrowDecode)]
pub struct DecisionChunk<'a> {
    /// The batch's `request_id`.
    pub request_id: u64,
    /// Decisions, each naming its item.
    pub decisions: Vec<WireDecision<'a>>,
}

/// The whole batch failed; no further frames follow on the stream.
#[derive(Debug, Clone, PartialEq, Eq, Encode, BorrowDecode)]
pub struct ErrorFrame<'a> {
    /// The batch's `request_id` (0 when the request could not be read).
    pub request_id: u64,
    /// An [`ErrorCode`].
    pub code: u16,
    /// Human-readable detail.
    pub message: &'a str,
}

/// Why a batch failed as a whole. Codes are stable; new ones are appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The request frame exceeds the server's frame limit.
    FrameTooLarge = 1,
    /// The request frame could not be decoded.
    MalformedFrame = 2,
    /// More items than the server's per-batch limit.
    TooManyItems = 3,
    /// The server is at its limit of tokens in flight; retry later or elsewhere.
    Overloaded = 4,
    /// The server is draining for shutdown.
    ShuttingDown = 5,
    /// An unexpected failure inside the server.
    Internal = 6,
    /// A frame type this server does not know.
    UnsupportedFrame = 7,
    /// The request did not finish arriving within the server's
    /// `request_timeout`; the server stopped reading it.
    RequestTimeout = 8,
}

impl ErrorCode {
    /// Looks a code up.
    #[must_use]
    pub const fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            1 => Self::FrameTooLarge,
            2 => Self::MalformedFrame,
            3 => Self::TooManyItems,
            4 => Self::Overloaded,
            5 => Self::ShuttingDown,
            6 => Self::Internal,
            7 => Self::UnsupportedFrame,
            8 => Self::RequestTimeout,
            _ => return None,
        })
    }

    /// Every code, in code order (for metrics that pre-register a series each).
    pub const ALL: [Self; 8] = [
        Self::FrameTooLarge,
        Self::MalformedFrame,
        Self::TooManyItems,
        Self::Overloaded,
        Self::ShuttingDown,
        Self::Internal,
        Self::UnsupportedFrame,
        Self::RequestTimeout,
    ];

    /// The stable snake_case name (docs/protocol.md, metrics labels).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::FrameTooLarge => "frame_too_large",
            Self::MalformedFrame => "malformed_frame",
            Self::TooManyItems => "too_many_items",
            Self::Overloaded => "overloaded",
            Self::ShuttingDown => "shutting_down",
            Self::Internal => "internal",
            Self::UnsupportedFrame => "unsupported_frame",
            Self::RequestTimeout => "request_timeout",
        }
    }
}
