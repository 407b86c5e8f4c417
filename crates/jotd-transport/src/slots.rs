//! Connection slots for every listener (the daemon's QUIC port, the daemon's
//! and the gateway's admin ports, the gateway's HTTP doors): a cap on
//! connections served at once, and what happens at the cap.
//!
//! A data listener ([`SlotRule::Share`]) keeps any one address from holding
//! slots a newcomer elsewhere needs: when some address holds at least two
//! connections more than the newcomer's address does, that address's oldest
//! idle connection (no request in flight; its oldest when none is idle) is
//! closed to make room. Otherwise the newcomer is refused (its client retries
//! elsewhere), so among addresses with equal shares nobody is cut off, and a
//! client opening more connections from its own address is refused.
//! Shares are counted per **source** ([`source`]): an IPv4 address (an IPv4
//! client of a dual-stack listener is its IPv4 address), or an IPv6 address's
//! first `ipv6_prefix` bits ([`IPV6_PREFIX`], 64, by default). One host is
//! routinely handed a whole IPv6 /64, so counting IPv6 addresses whole would
//! give one client 2^64 shares, and at the cap each fresh address would take
//! a connection from anyone holding two or more. A client holding many IPv4
//! addresses, or many /64s, still gets a share for each: authenticate clients
//! (mutual TLS) where that matters. Clients that share a /64 (a cloud subnet)
//! share one source; `ipv6_prefix` 128 counts every address on its own. An
//! admin listener ([`SlotRule::MakeRoom`]) counts every address on its own
//! whatever `ipv6_prefix` says: a probe may share a /64 with a flooder.
//!
//! An admin listener
//! ([`SlotRule::MakeRoom`]) has no authentication and must keep answering the
//! kubelet's probes and Prometheus' scrape while something holds every slot, so
//! it closes a connection to make room, chosen so that a flood only ever costs
//! the flooder:
//!
//! - when some address holds two connections or more, the oldest connection of
//!   the address holding the most is closed (a probe, one connection from its
//!   own address, is never the one while anyone holds two);
//! - when every connection comes from a different address, the oldest one open
//!   for at least [`MIN_AGE`] is closed (a probe's request takes milliseconds);
//! - when there is none, the newcomer is refused rather than a request cut off.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Under [`SlotRule::MakeRoom`], when every connection comes from a different
/// address, only one at least this old may be closed to make room.
pub const MIN_AGE: Duration = Duration::from_secs(1);

/// The default for how many leading bits of an IPv6 address name its
/// [`source`]: a /64, what one host or one customer is routinely handed.
pub const IPV6_PREFIX: u8 = 64;

/// The source a connection from `peer` counts against: an IPv4 address
/// whole (an IPv4-mapped IPv6 address as its IPv4 address), an IPv6 address
/// cut to its first `ipv6_prefix` bits (above 128 counts as 128), the rest
/// zeroed.
#[must_use]
pub fn source(peer: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// What a full listener does with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRule {
    /// Make room at the cost of an address holding more than the newcomer's
    /// (see the module docs).
    Share,
    /// Close an open connection to make room (see the module docs).
    MakeRoom,
}

struct Open {
    peer: IpAddr,
    since: Instant,
    close: Arc<Notify>,
    /// Requests in flight ([`Slot::busy`]).
    busy: Arc<AtomicUsize>,
}

struct Inner {
    open: BTreeMap<u64, Open>,
    next_id: u64,
}

/// The connections a listener serves, oldest first.
pub struct ConnectionSlots {
    max: usize,
    rule: SlotRule,
    ipv6_prefix: u8,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for ConnectionSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionSlots")
            .field("max", &self.max)
            .field("rule", &self.rule)
            .field("ipv6_prefix", &self.ipv6_prefix)
            .field("open", &self.open())
            .finish()
    }
}

/// What [`ConnectionSlots::admit`] did.
#[derive(Debug)]
pub enum Admitted {
    /// Served; `closed` connections were closed to make room (0 or 1).
    In {
        /// The slot (given back on drop).
        slot: Slot,
        /// Connections closed to make room for it.
        closed: usize,
    },
    /// Refused: the listener is full.
    Refused,
}

/// One admitted connection's slot; dropping it gives the slot back.
pub struct Slot {
    id: u64,
    close: Arc<Notify>,
    busy: Arc<AtomicUsize>,
    slots: Arc<ConnectionSlots>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("id", &self.id).finish()
    }
}

impl Slot {
    /// Resolves when the listener closes this connection to make room for
    /// another. Serve the connection until this or its own end, whichever is
    /// first.
    pub async fn closed(&self) {
        self.close.notified().await;
    }

    /// Marks a request in flight on this connection until the guard drops:
    /// [`SlotRule::Share`] closes idle connections before busy ones.
    #[must_use]
    pub fn busy(&self) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(Arc::clone(&self.busy))
    }
}

/// A request in flight on a connection ([`Slot::busy`]).
#[derive(Debug)]
pub struct Busy(Arc<AtomicUsize>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().open.remove(&self.id);
    }
}

impl ConnectionSlots {
    /// At most `max` connections at once (at least 1), handled at the cap by
    /// `rule`, with IPv6 addresses counted per `ipv6_prefix` bits ([`source`])
    /// under [`SlotRule::Share`] (an admin listener's [`SlotRule::MakeRoom`]
    /// counts each address on its own).
    #[must_use]
    pub fn new(max: usize, rule: SlotRule, ipv6_prefix: u8) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            rule,
            ipv6_prefix,
            inner: Mutex::new(Inner {
                open: BTreeMap::new(),
                next_id: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connections served now.
    #[must_use]
    pub fn open(&self) -> usize {
        self.lock().open.len()
    }

    /// A slot for a connection from `peer` accepted at `now`.
    pub fn admit(self: &Arc<Self>, peer: IpAddr, now: Instant) -> Admitted {
        // An admin listener counts addresses whole: its promise is that a
        // probe never pays for a flood, and a probe may share a /64 with the
        // flooder (a pod network).
        let prefix = match self.rule {
            SlotRule::Share => self.ipv6_prefix,
            SlotRule::MakeRoom => 128,
        };
        let peer = source(peer, prefix);
        let mut inner = self.lock();
        let mut closed = 0;
        while inner.open.len() >= self.max {
            let victim = match self.rule {
                SlotRule::MakeRoom => victim(&inner.open, now),
                SlotRule::Share => over_share(&inner.open, peer),
            };
            let Some(victim) = victim else {
                return Admitted::Refused;
            };
            let gone = inner.open.remove(&victim).expect("found in the map");
            // A stored permit: closes it even before its task waits.
            gone.close.notify_one();
            closed += 1;
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let close = Arc::new(Notify::new());
        let busy = Arc::new(AtomicUsize::new(0));
        inner.open.insert(
            id,
            Open {
                peer,
                since: now,
                close: Arc::clone(&close),
                busy: Arc::clone(&busy),
            },
        );
        Admitted::In {
            slot: Slot {
                id,
                close,
                busy,
                slots: Arc::clone(self),
            },
            closed,
        }
    }
}

/// The connection [`SlotRule::MakeRoom`] closes, if any (see the module docs).
fn victim(open: &BTreeMap<u64, Open>, now: Instant) -> Option<u64> {
    let mut held = HashMap::<IpAddr, usize>::with_capacity(open.len());
    for c in open.values() {
        *held.entry(c.peer).or_default() += 1;
    }
    let most = held.values().copied().max().unwrap_or(0);
    open.iter()
        .find(|(_, c)| {
            if most >= 2 {
                held[&c.peer] == most
            } else {
                now.saturating_duration_since(c.since) >= MIN_AGE
            }
        })
        .map(|(&id, _)| id)
}

/// The connection [`SlotRule::Share`] closes for a newcomer from `peer`, if
/// any: the oldest idle one (else the oldest) of the address holding the most,
/// when that is at least two more than `peer` holds.
fn over_share(open: &BTreeMap<u64, Open>, peer: IpAddr) -> Option<u64> {
    let mut held = HashMap::<IpAddr, usize>::with_capacity(open.len());
    for c in open.values() {
        *held.entry(c.peer).or_default() += 1;
    }
    let mine = held.get(&peer).copied().unwrap_or(0);
    // The address holding the most; among equals, the one whose connection is
    // oldest (the map iterates oldest first, and `max_by_key` keeps the last
    // maximum, so compare on the first id seen).
    let mut first = HashMap::<IpAddr, u64>::with_capacity(held.len());
    for (&id, c) in open {
        first.entry(c.peer).or_insert(id);
    }
    let (&top, &most) = held
        .iter()
        .min_by_key(|&(ip, &n)| (std::cmp::Reverse(n), first[ip]))?;
    if most < mine + 2 {
        return None;
    }
    let theirs = || open.iter().filter(move |(_, c)| c.peer == top);
    theirs()
        .find(|(_, c)| c.busy.load(Ordering::Relaxed) == 0)
        .or_else(|| theirs().next())
        .map(|(&id, _)| id)
}

/// One buffer's bytes held per source ([`source`]), and the rule that
/// shares it: once the buffer is three quarters full, a source holding
/// half of it (or `one` item of the largest size, if more) takes no more.
/// One client sending (or stalling) as fast as its bandwidth allows filled
/// a whole buffer, and every other client was refused for as long as it
/// went on. Used for the daemon's request buffer and the gateway's body
/// buffer; the buffer itself (a semaphore) is the caller's.
#[derive(Debug)]
pub struct ByteShares {
    max: usize,
    share: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

impl ByteShares {
    /// Shares of a buffer of `max` bytes whose largest item is `one` bytes.
    #[must_use]
    pub fn new(max: usize, one: usize) -> Self {
        Self {
            max,
            share: (max / 2).max(one),
            held: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `source` may take `n` more bytes while `in_use` bytes of the
    /// buffer are taken (by every source); taken if so. Not `enforce`d (an
    /// item already admitted), always taken: counted, not refused.
    pub fn take(&self, source: IpAddr, n: usize, in_use: usize, enforce: bool) -> bool {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = held.get(&source).copied().unwrap_or(0);
        let contended = in_use.saturating_add(n) > self.max / 4 * 3;
        if enforce && contended && mine.saturating_add(n) > self.share {
            return false;
        }
        *held.entry(source).or_default() += n;
        true
    }

    /// Gives back `n` bytes `source` took.
    pub fn give(&self, source: IpAddr, n: usize) {
        if n == 0 {
            return;
        }
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = held.get_mut(&source) {
            *h = h.saturating_sub(n);
            if *h == 0 {
                held.remove(&source);
            }
        }
    }

    /// Whether no source holds anything (every take given back).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const MAX: usize = 64;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn ids(slots: &ConnectionSlots) -> Vec<u64> {
        slots.lock().open.keys().copied().collect()
    }

    fn admit(slots: &Arc<ConnectionSlots>, peer: IpAddr, now: Instant) -> Option<Slot> {
        match slots.admit(peer, now) {
            Admitted::In { slot, .. } => Some(slot),
            Admitted::Refused => None,
        }
    }

    /// Whether the slot's close signal was given.
    fn fired(slot: &Slot) -> bool {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(1), slot.closed())
                .await
                .is_ok()
        })
    }

    #[test]
    fn a_flood_from_one_address_closes_only_its_own_connections() {
        let slots = ConnectionSlots::new(MAX, SlotRule::MakeRoom, IPV6_PREFIX);
        let t0 = Instant::now();
        // The probe connects first (id 1), then one address takes every other slot.
        let probe = admit(&slots, ip(1), t0).unwrap();
        let mut flood: Vec<Slot> = (1..MAX)
            .map(|_| admit(&slots, ip(2), t0).unwrap())
            .collect();
        // More from the flooder, all at once (younger than MIN_AGE): each closes
        // the flooder's own oldest, never the probe's.
        for _ in 0..10 {
            flood.push(admit(&slots, ip(2), t0).unwrap());
        }
        let now = ids(&slots);
        assert_eq!(now.len(), MAX);
        assert_eq!(now[0], 1, "the probe's connection stays: {now:?}");
        assert_eq!(now[1], 12, "the flooder's ten oldest were closed: {now:?}");
        assert!(fired(&flood[0]) && fired(&flood[9]));
        assert!(!fired(&flood[10]));
        assert!(!fired(&probe));
        // A new probe from a third address gets in too, again at the flooder's cost.
        assert!(admit(&slots, ip(3), t0).is_some());
        assert_eq!(ids(&slots)[..2], [1, 13]);
    }

    #[test]
    fn with_every_slot_from_another_address_only_an_old_connection_is_closed() {
        let slots = ConnectionSlots::new(MAX, SlotRule::MakeRoom, IPV6_PREFIX);
        let t0 = Instant::now();
        let _held: Vec<Slot> = (0..MAX)
            .map(|i| {
                let last = u8::try_from(i).unwrap();
                let at = t0 + Duration::from_millis(u64::from(last));
                admit(&slots, ip(last), at).unwrap()
            })
            .collect();
        // All younger than MIN_AGE: the newcomer is refused, nobody is cut off.
        let young = t0 + Duration::from_millis(500);
        assert!(admit(&slots, ip(200), young).is_none());
        assert_eq!(ids(&slots), (1..=MAX as u64).collect::<Vec<_>>());
        // Once the oldest has been open MIN_AGE, it makes room (only it).
        let later = t0 + MIN_AGE;
        let _newer = admit(&slots, ip(201), later).unwrap();
        let now = ids(&slots);
        assert_eq!((now[0], now.len()), (2, MAX));
        assert!(admit(&slots, ip(202), later).is_none());
    }

    #[test]
    fn two_from_one_address_pay_however_young() {
        let slots = ConnectionSlots::new(MAX, SlotRule::MakeRoom, IPV6_PREFIX);
        let t0 = Instant::now();
        let mut held: Vec<Slot> = (0..MAX - 1)
            .map(|i| admit(&slots, ip(u8::try_from(i).unwrap()), t0).unwrap())
            .collect();
        // ip(5) (id 6) connects again: it now holds two.
        held.push(admit(&slots, ip(5), t0).unwrap());
        assert!(admit(&slots, ip(250), t0).is_some());
        let now = ids(&slots);
        assert!(
            !now.contains(&6) && now.contains(&(MAX as u64)) && now.contains(&1),
            "{now:?}"
        );
    }

    #[test]
    fn a_mapped_ipv4_address_counts_as_the_same_peer() {
        let slots = ConnectionSlots::new(MAX, SlotRule::MakeRoom, IPV6_PREFIX);
        let t0 = Instant::now();
        let IpAddr::V4(v4) = ip(9) else {
            unreachable!()
        };
        let mut held: Vec<Slot> = (0..MAX - 2)
            .map(|i| admit(&slots, ip(u8::try_from(i + 10).unwrap()), t0).unwrap())
            .collect();
        held.push(admit(&slots, IpAddr::V6(v4.to_ipv6_mapped()), t0).unwrap());
        held.push(admit(&slots, ip(9), t0).unwrap());
        // ip(9) and its mapped form are one peer with two connections: it pays,
        // though every connection is young.
        assert!(admit(&slots, ip(250), t0).is_some());
        let now = ids(&slots);
        let mapped = MAX as u64 - 1;
        assert!(
            !now.contains(&mapped) && now.contains(&(mapped + 1)),
            "{now:?}"
        );
    }

    #[test]
    fn equal_shares_refuse_and_a_dropped_slot_is_given_back() {
        let slots = ConnectionSlots::new(2, SlotRule::Share, IPV6_PREFIX);
        let t0 = Instant::now();
        let a = admit(&slots, ip(1), t0).unwrap();
        let b = admit(&slots, ip(2), t0).unwrap();
        // One each: a newcomer from a third address would leave no one ahead.
        assert!(admit(&slots, ip(3), t0 + MIN_AGE * 10).is_none());
        assert!(!fired(&a) && !fired(&b));
        drop(a);
        assert_eq!(slots.open(), 1);
        let c = admit(&slots, ip(3), t0).unwrap();
        assert_eq!(ids(&slots), [2, 3]);
        drop((b, c));
        assert_eq!(slots.open(), 0);
    }

    #[test]
    fn a_shared_listener_takes_room_from_the_address_holding_more() {
        let slots = ConnectionSlots::new(MAX, SlotRule::Share, IPV6_PREFIX);
        let t0 = Instant::now();
        // One address takes every slot; the first two carry requests.
        let flood: Vec<Slot> = (0..MAX)
            .map(|_| admit(&slots, ip(2), t0).unwrap())
            .collect();
        let _busy = (flood[0].busy(), flood[1].busy());
        // More from the same address: refused, nobody is cut off.
        assert!(admit(&slots, ip(2), t0).is_none());
        assert!(flood.iter().all(|s| !fired(s)));
        // A newcomer elsewhere: the flooder's oldest idle connection makes room.
        let a = admit(&slots, ip(3), t0).unwrap();
        assert!(!fired(&flood[0]) && !fired(&flood[1]) && fired(&flood[2]));
        let b = admit(&slots, ip(3), t0).unwrap();
        assert!(fired(&flood[3]));
        // Shares even out: ip(3) may go on taking room while ip(2) holds two more.
        let mut mine = vec![a, b];
        while let Some(s) = admit(&slots, ip(3), t0) {
            mine.push(s);
        }
        assert_eq!(mine.len(), MAX / 2, "equal shares, then refused");
        assert_eq!(slots.open(), MAX);
        assert!(mine.iter().all(|s| !fired(s)));
    }

    #[test]
    fn a_shared_listener_closes_a_busy_connection_only_when_none_is_idle() {
        let slots = ConnectionSlots::new(4, SlotRule::Share, IPV6_PREFIX);
        let t0 = Instant::now();
        let held: Vec<Slot> = (0..4).map(|_| admit(&slots, ip(2), t0).unwrap()).collect();
        let mut busy: Vec<Busy> = held.iter().map(Slot::busy).collect();
        let _third = admit(&slots, ip(3), t0).unwrap();
        assert!(fired(&held[0]) && !fired(&held[1]));
        // held[1] stays busy; held[2]'s request ends: the idle one goes first,
        // though held[1] is older.
        let _still = busy.remove(1);
        drop(busy);
        let _fourth = admit(&slots, ip(4), t0).unwrap();
        assert!(!fired(&held[1]) && fired(&held[2]));
    }

    #[test]
    fn a_shared_listener_with_equal_shares_refuses() {
        let slots = ConnectionSlots::new(MAX, SlotRule::Share, IPV6_PREFIX);
        let t0 = Instant::now();
        let held: Vec<Slot> = (0..MAX)
            .map(|i| admit(&slots, ip(u8::try_from(i % 32).unwrap()), t0).unwrap())
            .collect();
        // Everyone holds two, the newcomer none: room is made at a difference
        // of two or more.
        let _first = admit(&slots, ip(100), t0).unwrap();
        assert_eq!(held.iter().filter(|s| fired(s)).count(), 1);
        // Now ip(100) holds one, ip(1)..ip(31) two, ip(0) one: no address holds
        // two more than ip(100).
        assert!(admit(&slots, ip(100), t0).is_none());
        assert!(admit(&slots, ip(0), t0).is_none());
    }

    fn v6(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_is_an_ipv4_address_or_an_ipv6_prefix() {
        let mapped = v6("::ffff:10.0.0.9");
        assert_eq!(source(mapped, 64), ip(9));
        assert_eq!(source(ip(9), 0), ip(9), "IPv4 is never cut");
        let a = v6("2001:db8:1:2:aaaa:bbbb:cccc:dddd");
        assert_eq!(source(a, 64), v6("2001:db8:1:2::"));
        assert_eq!(source(a, 48), v6("2001:db8:1::"));
        assert_eq!(source(a, 56), v6("2001:db8:1::"));
        assert_eq!(source(a, 60), v6("2001:db8:1::"));
        assert_eq!(source(v6("2001:db8:1:2ff::1"), 56), v6("2001:db8:1:200::"));
        assert_eq!(source(a, 128), a);
        assert_eq!(source(a, 200), a);
        assert_eq!(source(a, 0), v6("::"));
        assert_eq!(source(a, 1), v6("::"));
        assert_eq!(source(v6("8000::1"), 1), v6("8000::"));
    }

    /// Four gateways hold two connections each of eight slots; then a client
    /// holding one IPv6 /64 connects from 40 fresh addresses of it. Returns
    /// (gateway connections closed for it, slots it holds).
    fn flood_from_one_prefix(ipv6_prefix: u8) -> (usize, usize) {
        let slots = ConnectionSlots::new(8, SlotRule::Share, ipv6_prefix);
        let t0 = Instant::now();
        let gateways: Vec<Slot> = (1..=4)
            .flat_map(|n| [n, n])
            .map(|n| admit(&slots, v6(&format!("2001:db8:{n}::1")), t0).unwrap())
            .collect();
        let theirs: Vec<Slot> = (1..=40)
            .filter_map(|n| admit(&slots, v6(&format!("2001:db8:ff::{n:x}")), t0))
            .collect();
        (gateways.iter().filter(|s| fired(s)).count(), theirs.len())
    }

    /// An admin listener counts IPv6 addresses whole: a probe from the same
    /// /64 as a flooder (a pod network) is not the flooder's oldest
    /// connection, so it is never the one closed.
    #[test]
    fn an_admin_probe_sharing_a_flooders_prefix_is_not_closed() {
        let slots = ConnectionSlots::new(4, SlotRule::MakeRoom, IPV6_PREFIX);
        let t0 = Instant::now();
        let probe = admit(&slots, v6("2001:db8::1"), t0).unwrap();
        // One flooding address, the probe's /64.
        let _flood: Vec<Slot> = (0..8)
            .filter_map(|_| admit(&slots, v6("2001:db8::2"), t0 + MIN_AGE))
            .collect();
        assert!(!fired(&probe));
    }

    #[test]
    fn a_client_with_a_whole_ipv6_prefix_holds_one_share() {
        // Per /64 (the default): the prefix is one source. It takes one
        // connection from a gateway holding two more than it, then is refused.
        assert_eq!(flood_from_one_prefix(IPV6_PREFIX), (1, 1));
        // Per address: each fresh address takes another gateway connection,
        // until every gateway is down to one.
        assert_eq!(flood_from_one_prefix(128), (4, 4));
    }
}
