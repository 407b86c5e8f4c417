//! The server's work for one stream, sans IO: the bytes a client sent → the
//! frames to send back. Decodes the one `Batch` frame, verifies every item on
//! the caller's rayon pool against one snapshot, and hands each `Decisions`
//! frame to `send` as its chunk completes; a batch that cannot be served gets
//! exactly one `Error` frame instead. Every item gets exactly one decision.

use crate::codec::{
    FrameType, Limits, WireError, decode_batch, encode_decisions, encode_error, next_frame,
};
use crate::messages::{BatchRequest, DecisionChunk, ErrorCode, ErrorFrame, WireDecision};
use jotd_core::{Algorithm, Decision, Engine, Reason, Request, Snapshot, UnixTime, token_hash};
use rayon::ThreadPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Decisions of one batch counted by (reason, algorithm), for metrics recorded
/// once per batch. The algorithm is known only when the signature verified.
/// With a [`TenantWatch`], decisions of the watched tenants are also counted
/// per tenant (allowed, denied).
#[derive(Debug, Clone, Default)]
pub struct Tally {
    entries: Vec<(Reason, Option<Algorithm>, u32)>,
    watch: Option<Arc<TenantWatch>>,
    /// `[allowed, denied]` per watched tenant, indexed like the watch list
    /// (empty until a watched tenant is counted).
    tenants: Vec<[u32; 2]>,
    /// The slot of the last watched tenant seen: batches tend to repeat a
    /// tenant, and comparing with its name needs no hashing.
    last_hit: Option<u16>,
}

/// A bounded list of tenants an operator chose to see in per-tenant metrics
/// (per-tenant labels are otherwise never used: unbounded cardinality).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantWatch {
    names: Vec<String>,
    index: HashMap<String, u16>,
}

impl TenantWatch {
    /// The most tenants a watch list may hold.
    pub const MAX: usize = 256;

    /// A watch list; duplicates are ignored.
    ///
    /// # Errors
    /// More than [`TenantWatch::MAX`] distinct names, or an empty name.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Result<Self, String> {
        let mut watch = Self {
            names: Vec::new(),
            index: HashMap::new(),
        };
        for name in names {
            let name: String = name.into();
            if name.is_empty() {
                return Err("a tenant id must not be empty".into());
            }
            if watch.index.contains_key(&name) {
                continue;
            }
            if watch.names.len() == Self::MAX {
                return Err(format!("at most {} tenants", Self::MAX));
            }
            let slot = u16::try_from(watch.names.len()).expect("MAX fits u16");
            watch.index.insert(name.clone(), slot);
            watch.names.push(name);
        }
        Ok(watch)
    }

    /// The watched tenant ids; a [`Tally`]'s per-tenant slots index this list.
    #[must_use]
    pub fn names(&self) -> &[String] {
        &self.names
    }

    fn slot(&self, tenant: &str) -> Option<u16> {
        self.index.get(tenant).copied()
    }
}

impl Tally {
    /// An empty tally that also counts the tenants of `watch` one by one.
    #[must_use]
    pub fn watching(watch: Option<Arc<TenantWatch>>) -> Self {
        Self {
            watch,
            ..Self::default()
        }
    }

    /// An empty tally watching the same tenants as this one.
    #[must_use]
    pub fn empty_like(&self) -> Self {
        Self::watching(self.watch.clone())
    }

    /// Counts one decision.
    pub fn add(&mut self, d: &Decision) {
        self.add_n(d.reason(), d.token().map(jotd_core::TokenInfo::alg), 1);
    }

    /// Counts one decision of `tenant`'s request: like [`add`](Self::add),
    /// and per tenant when the tenant is watched.
    pub fn add_for(&mut self, tenant: &str, d: &Decision) {
        self.add(d);
        let Some(watch) = &self.watch else { return };
        let slot = match self.last_hit {
            Some(s) if watch.names[usize::from(s)] == tenant => Some(s),
            _ => watch.slot(tenant),
        };
        if let Some(slot) = slot {
            self.last_hit = Some(slot);
            if self.tenants.is_empty() {
                self.tenants = vec![[0, 0]; watch.names.len()];
            }
            let outcome = usize::from(!d.reason().is_allow());
            self.tenants[usize::from(slot)][outcome] += 1;
        }
    }

    fn add_n(&mut self, reason: Reason, alg: Option<Algorithm>, n: u32) {
        match self
            .entries
            .iter_mut()
            .find(|(r, a, _)| *r == reason && *a == alg)
        {
            Some(e) => e.2 += n,
            None => self.entries.push((reason, alg, n)),
        }
    }

    /// Adds another tally to this one (per-tenant counts too, when both
    /// watch the same list).
    pub fn merge(&mut self, other: &Self) {
        for &(r, a, n) in &other.entries {
            self.add_n(r, a, n);
        }
        if !other.tenants.is_empty() {
            if self.tenants.is_empty() {
                self.tenants = vec![[0, 0]; other.tenants.len()];
            }
            for (mine, theirs) in self.tenants.iter_mut().zip(&other.tenants) {
                mine[0] += theirs[0];
                mine[1] += theirs[1];
            }
        }
    }

    /// `(reason, algorithm, count)` entries.
    pub fn iter(&self) -> impl Iterator<Item = (Reason, Option<Algorithm>, u32)> + '_ {
        self.entries.iter().copied()
    }

    /// `(slot in the watch list, allowed, denied)` for each watched tenant
    /// with decisions in this tally.
    pub fn tenants(&self) -> impl Iterator<Item = (usize, u32, u32)> + '_ {
        self.tenants
            .iter()
            .enumerate()
            .filter(|(_, c)| **c != [0, 0])
            .map(|(i, c)| (i, c[0], c[1]))
    }
}

/// Which decisions to hold back (not send) for a second look, given the item's
/// tenant: the server holds `unknown_kid` of tenants with remote JWKS, refetches,
/// and re-verifies them with [`serve_held`].
pub type Hold<'a> = &'a (dyn Fn(&str, &Decision) -> bool + Sync);

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
    let mut tally = Tally::default();
    serve_stream_with(
        engine, pool, snapshot, input, limits, now, None, &mut tally, send,
    )
    .0
}

/// [`serve_stream`], counting decisions into `tally` and holding back the ones
/// `hold` picks: they are returned (index, decision), not sent, and the caller
/// must send them with [`serve_held`] so every item still gets exactly one decision.
#[allow(clippy::too_many_arguments)]
pub fn serve_stream_with(
    engine: &Engine,
    pool: &ThreadPool,
    snapshot: &Snapshot,
    input: &[u8],
    limits: &Limits,
    now: UnixTime,
    hold: Option<Hold<'_>>,
    tally: &mut Tally,
    send: &(dyn Fn(Vec<u8>) + Sync),
) -> (Served, Vec<(u32, Decision)>) {
    let batch = match read_batch(input, limits) {
        Ok(b) => b,
        Err((code, message)) => return (fail(0, code, &message, send), Vec::new()),
    };
    let id = batch.request_id;
    let requests = requests(&batch);
    let frames = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let held = Mutex::new(Vec::new());
    // Denials at debug level, for an operator chasing one client's failures
    // (`[log] level = "info,jotd::decision=debug"`). Checked once per batch.
    let log_denials = tracing::enabled!(target: "jotd::decision", tracing::Level::DEBUG);
    let shared_tally = Mutex::new(tally.empty_like());
    engine.verify_batch_streaming(pool, snapshot, &requests, now, |first, decisions| {
        let mut local = tally.empty_like();
        let mut keep = Vec::new();
        let mut wire = Vec::with_capacity(decisions.len());
        for (i, d) in decisions.iter().enumerate() {
            let index = u32::try_from(first + i).unwrap_or(u32::MAX);
            if let Some(hold) = hold
                && hold(requests[first + i].tenant, d)
            {
                keep.push(index);
                continue;
            }
            local.add_for(requests[first + i].tenant, d);
            if log_denials && !d.reason().is_allow() {
                log_denial(id, index, &requests[first + i], d);
            }
            wire.push(WireDecision::from_decision(index, d));
        }
        if !wire.is_empty() {
            if send_chunk(id, wire, send) {
                frames.fetch_add(1, Ordering::Relaxed);
            } else {
                failed.store(true, Ordering::Relaxed);
            }
        }
        shared_tally.lock().expect("tally").merge(&local);
        if !keep.is_empty() {
            let mut held = held.lock().expect("held");
            for index in keep {
                held.push((index, decisions[index as usize - first].clone()));
            }
        }
    });
    tally.merge(&shared_tally.into_inner().expect("tally"));
    if failed.into_inner() {
        // A chunk could not be encoded (claims over the frame limit): the batch fails
        // as a whole rather than leaving items undecided.
        return (
            fail(
                id,
                ErrorCode::Internal,
                "a decision chunk exceeded the frame limit",
                send,
            ),
            Vec::new(),
        );
    }
    (
        Served::Decided {
            items: requests.len(),
            frames: frames.into_inner(),
        },
        held.into_inner().expect("held"),
    )
}

/// Sends the decisions [`serve_stream_with`] held back. With `reverify`, each
/// held item is verified again against `snapshot` (which has the refetched keys)
/// and that decision is sent; otherwise the held decision itself is. Returns the
/// number of frames sent.
#[allow(clippy::too_many_arguments)]
pub fn serve_held(
    engine: &Engine,
    pool: &ThreadPool,
    snapshot: &Snapshot,
    input: &[u8],
    limits: &Limits,
    now: UnixTime,
    held: Vec<(u32, Decision)>,
    reverify: bool,
    tally: &mut Tally,
    send: &(dyn Fn(Vec<u8>) + Sync),
) -> usize {
    if held.is_empty() {
        return 0;
    }
    let batch = read_batch(input, limits);
    let tenant_of = |i: u32| match &batch {
        Ok(b) => b.items.get(i as usize).map_or("", |item| item.tenant),
        Err(_) => "",
    };
    let (id, decided): (u64, Vec<(u32, Decision)>) = match &batch {
        Ok(batch) if reverify => {
            let all = requests(batch);
            let picked: Vec<Request<'_>> = held.iter().map(|(i, _)| all[*i as usize]).collect();
            let fresh = engine.verify_batch(pool, snapshot, &picked, now);
            (
                batch.request_id,
                held.iter().map(|(i, _)| *i).zip(fresh).collect(),
            )
        }
        Ok(batch) => (batch.request_id, held),
        // Unreachable in practice (the same bytes decoded before); the held
        // decisions still go out.
        Err(_) => (0, held),
    };
    let mut frames = 0;
    for part in decided.chunks(256) {
        for (i, d) in part {
            tally.add_for(tenant_of(*i), d);
        }
        let wire = part
            .iter()
            .map(|(i, d)| WireDecision::from_decision(*i, d))
            .collect();
        if send_chunk(id, wire, send) {
            frames += 1;
        } else {
            let bare: Vec<WireDecision<'_>> = part
                .iter()
                .map(|(i, _)| WireDecision {
                    index: *i,
                    allow: false,
                    reason: Reason::InternalError.code(),
                    kid: None,
                    sub: None,
                    exp: None,
                    claims: Vec::new(),
                })
                .collect();
            if send_chunk(id, bare, send) {
                frames += 1;
            }
        }
    }
    frames
}

/// One debug line per denied item: never the token, its short hash.
fn log_denial(request_id: u64, index: u32, req: &Request<'_>, d: &Decision) {
    tracing::debug!(
        target: "jotd::decision",
        request_id,
        index,
        tenant = req.tenant,
        method = req.method.unwrap_or(""),
        reason = d.reason().as_str(),
        kid = d.token().and_then(jotd_core::TokenInfo::kid).unwrap_or(""),
        token = req.token.map_or_else(|| "-".to_owned(), token_hash),
        "denied"
    );
}

fn send_chunk(
    request_id: u64,
    decisions: Vec<WireDecision<'_>>,
    send: &(dyn Fn(Vec<u8>) + Sync),
) -> bool {
    let mut out = Vec::new();
    match encode_decisions(
        &DecisionChunk {
            request_id,
            decisions,
        },
        &mut out,
    ) {
        Ok(()) => {
            send(out);
            true
        }
        Err(_) => false,
    }
}

fn requests<'a>(batch: &'a BatchRequest<'a>) -> Vec<Request<'a>> {
    batch
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
        .collect()
}

/// Reads the one Batch frame a stream must hold.
fn read_batch<'a>(
    input: &'a [u8],
    limits: &Limits,
) -> Result<BatchRequest<'a>, (ErrorCode, String)> {
    let frame = match next_frame(input, limits) {
        Ok(Some(f)) if f.consumed == input.len() => f,
        Ok(Some(_)) => {
            return Err((
                ErrorCode::MalformedFrame,
                "one frame per stream, and nothing after it".into(),
            ));
        }
        Ok(None) => {
            return Err((
                ErrorCode::MalformedFrame,
                "stream ended inside a frame".into(),
            ));
        }
        Err(WireError::FrameTooLarge { len, limit }) => {
            return Err((
                ErrorCode::FrameTooLarge,
                format!("frame of {len} bytes exceeds {limit}"),
            ));
        }
        Err(e) => return Err((ErrorCode::UnsupportedFrame, e.to_string())),
    };
    if frame.kind != FrameType::Batch {
        return Err((
            ErrorCode::UnsupportedFrame,
            "a client sends Batch frames only".into(),
        ));
    }
    match decode_batch(frame.body, limits) {
        Ok(b) => Ok(b),
        Err(WireError::TooManyItems { count, limit }) => Err((
            ErrorCode::TooManyItems,
            format!("{count} items; at most {limit}"),
        )),
        Err(e) => Err((ErrorCode::MalformedFrame, e.to_string())),
    }
}

/// Sends the one error frame of a batch that failed as a whole (the server
/// uses it for refusals decided before any verification: overload, drain).
pub fn send_error(
    request_id: u64,
    code: ErrorCode,
    message: &str,
    send: &(dyn Fn(Vec<u8>) + Sync),
) {
    fail(request_id, code, message, send);
}
