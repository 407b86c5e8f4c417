//! What one batch produced, for metrics and logs outside the transport: the
//! decisions counted by reason and algorithm (and per watched tenant), the
//! denials when asked for, timings, and how the batch ended.

use crate::messages::ErrorCode;
use jotd_core::{Algorithm, Decision, Reason};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

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
#[derive(Clone, PartialEq, Eq)]
pub struct TenantWatch {
    names: Vec<String>,
    index: HashMap<String, u16>,
}

/// The names in order: the index is derived from them, and a `HashMap`
/// prints in an order of its own (two equal watch lists printed unalike).
impl std::fmt::Debug for TenantWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TenantWatch").field(&self.names).finish()
    }
}

impl TenantWatch {
    /// The most tenants a watch list may hold.
    pub const MAX: usize = 256;

    /// A watch list; duplicates are ignored.
    ///
    /// # Errors
    /// More than [`TenantWatch::MAX`] distinct names, or a name no tenant id
    /// can have (empty, over 256 bytes, control characters).
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Result<Self, String> {
        let mut watch = Self {
            names: Vec::new(),
            index: HashMap::new(),
        };
        for name in names {
            let name: String = name.into();
            // The rule tenant ids follow (jotd-keys): a name outside it matches no tenant.
            if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
                return Err(format!(
                    "`{}`: a tenant id is 1..=256 printable characters",
                    name.escape_default()
                ));
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

/// One denied item, recorded only when the driver asks for it (an operator
/// chasing one client's failures): never the token, its short hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The item's index in the batch.
    pub index: u32,
    /// The item's tenant.
    pub tenant: String,
    /// The item's JSON-RPC method, if any.
    pub method: Option<String>,
    /// Why it was denied.
    pub reason: Reason,
    /// The token's `kid`, when its header was read.
    pub kid: Option<String>,
    /// [`jotd_core::token_hash`] of the token; `None` without a token.
    pub token_hash: Option<String>,
}

/// How one batch ended, reported once per stream (or call) by its driver.
#[derive(Debug, Clone, Default)]
pub struct BatchReport {
    /// The request id, when it could be read.
    pub request_id: Option<u64>,
    /// Items decided (0 when the batch failed as a whole).
    pub items: usize,
    /// The error frame sent instead of (or after) decisions, if any.
    pub error: Option<ErrorCode>,
    /// Decisions by reason and algorithm (and per watched tenant).
    pub tally: Tally,
    /// Denied items, when the driver asked for them.
    pub denials: Vec<Denial>,
    /// `Decisions` frames emitted.
    pub frames: usize,
    /// Items held for a refetch (`unknown_kid` of a tenant with remote keys).
    pub held: usize,
    /// Whether held items were verified again on refetched keys.
    pub refetched: bool,
    /// The client stopped reading (it reset or stopped the stream) before
    /// every item was decided: the rest were not verified (`items` counts
    /// those that were, held ones included).
    pub abandoned: bool,
    /// Time spent waiting for room in the in-flight budget (set by the driver).
    pub queued: Duration,
    /// Time on the verification pool, refetch waits excluded.
    pub verify: Duration,
    /// From the end of the request to the last answer byte handed to QUIC
    /// (set by the driver, after the writer is done).
    pub total: Duration,
}

impl BatchReport {
    /// The report of a batch refused as a whole before any verification.
    #[must_use]
    pub fn refused(request_id: Option<u64>, code: ErrorCode) -> Self {
        Self {
            request_id,
            error: Some(code),
            ..Self::default()
        }
    }
}
