//! The verified-token cache: hits skip the crypto but never the time, revocation or policy checks.

mod fixture;

use fixture::{NOW, mint, snapshot, tenant};
use jotd_core::Algorithm::{Es256, Hs256};
use jotd_core::{
    CacheConfig, Denylist, Engine, EngineConfig, PolicyModel, Reason, Request, Snapshot, UnixTime,
};
use serde_json::json;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

fn cached(max_entries: usize) -> Engine {
    Engine::new(EngineConfig {
        cache: Some(CacheConfig {
            max_entries: NonZeroUsize::new(max_entries).unwrap(),
            ..CacheConfig::default()
        }),
        ..EngineConfig::default()
    })
}

fn at(e: &Engine, snap: &Snapshot, token: &str, method: Option<&str>, now: u64) -> Reason {
    let req = Request {
        token: Some(token.as_bytes()),
        tenant: "t",
        method,
        addresses: &[],
        origin: None,
        user_agent: None,
    };
    e.verify(snap, &req, UnixTime(now)).reason()
}

#[test]
fn hits_are_counted_and_still_check_time() {
    let e = cached(1000);
    let snap = snapshot(vec![tenant("t", &[Es256])]);
    let token = mint(Es256, json!({"exp": NOW + 100}));
    assert_eq!(at(&e, &snap, &token, None, NOW), Reason::Ok);
    assert_eq!(at(&e, &snap, &token, None, NOW + 1), Reason::Ok);
    let s = e.cache_stats().unwrap();
    assert_eq!((s.misses, s.hits, s.inserts, s.entries), (1, 1, 1, 1));
    // Past exp the entry is dead: the token is verified again and found expired.
    assert_eq!(at(&e, &snap, &token, None, NOW + 200), Reason::Expired);
    assert_eq!(e.cache_stats().unwrap().hits, 1);
    // Within leeway of exp the cached entry still answers, with the time check applied.
    let nbf = mint(Es256, json!({"nbf": NOW + 100}));
    assert_eq!(at(&e, &snap, &nbf, None, NOW), Reason::NotYetValid);
    assert_eq!(at(&e, &snap, &nbf, None, NOW + 100), Reason::Ok);
    assert_eq!(
        e.cache_stats().unwrap().hits,
        2,
        "the not-yet-valid token was cached"
    );
}

#[test]
fn policy_is_checked_on_every_hit() {
    let e = cached(1000);
    let mut t = tenant("t", &[Es256]);
    t.policy = PolicyModel::Permissions;
    let snap = snapshot(vec![t]);
    let token = mint(Es256, json!({"permissions": ["eth:blockNumber"]}));
    assert_eq!(
        at(&e, &snap, &token, Some("eth_blockNumber"), NOW),
        Reason::Ok
    );
    assert_eq!(
        at(&e, &snap, &token, Some("eth_sendRawTransaction"), NOW),
        Reason::PermissionDenied
    );
    assert_eq!(
        at(&e, &snap, &token, Some("eth_blockNumber"), NOW),
        Reason::Ok
    );
    assert_eq!(e.cache_stats().unwrap().hits, 2);
}

#[test]
fn revocation_applies_to_cached_tokens() {
    let e = cached(1000);
    let token = mint(Es256, json!({"jti": "j-1"}));
    let before = snapshot(vec![tenant("t", &[Es256])]);
    assert_eq!(at(&e, &before, &token, None, NOW), Reason::Ok);
    let mut revoked = tenant("t", &[Es256]);
    let mut d = Denylist::default();
    d.jti.insert("j-1".into(), UnixTime(NOW + 600));
    revoked.denylist = Arc::new(d);
    let after = snapshot(vec![revoked]);
    assert_eq!(at(&e, &after, &token, None, NOW), Reason::Revoked);
    assert_eq!(
        e.cache_stats().unwrap().hits,
        1,
        "answered from the cache, and still revoked"
    );
}

#[test]
fn key_changes_drop_cached_tokens() {
    let e = cached(1000);
    let token = mint(Es256, json!({}));
    let v1 = snapshot(vec![tenant("t", &[Es256])]);
    assert_eq!(at(&e, &v1, &token, None, NOW), Reason::Ok);
    // Rotation removed the key: a new epoch, so the cached entry no longer counts.
    let mut rotated = tenant("t", &[Hs256]);
    rotated.epoch = 1;
    let v2 = snapshot(vec![rotated]);
    assert_eq!(at(&e, &v2, &token, None, NOW), Reason::AlgNotAllowed);
    assert_eq!(e.cache_stats().unwrap().hits, 0);
    // A token cached for one tenant is not a hit for another.
    let other = snapshot(vec![tenant("u", &[Es256]), tenant("t", &[Es256])]);
    let req = Request::bearer("u", token.as_bytes());
    assert_eq!(e.verify(&other, &req, UnixTime(NOW)).reason(), Reason::Ok);
    assert_eq!(e.cache_stats().unwrap().hits, 0);
}

/// One identity provider's keys configured for two tenants: a token valid
/// for both has an entry per tenant, each checked against its own tenant's
/// rules and epoch. (Keyed by the token alone, each tenant's verify replaced
/// the other's entry, and a client alternating between them never hit.)
#[test]
fn a_token_valid_for_two_tenants_hits_for_each() {
    let e = cached(1000);
    // Tenant u has revoked the token's jti; tenant t has not.
    let revoked = || {
        let mut u = tenant("u", &[Es256]);
        let mut d = Denylist::default();
        d.jti.insert("j-9".into(), UnixTime(NOW + 600));
        u.denylist = Arc::new(d);
        u
    };
    let snap = snapshot(vec![tenant("t", &[Es256]), revoked()]);
    let token = mint(Es256, json!({"jti": "j-9"}));
    let on = |snap: &Snapshot, tenant: &str| {
        let req = Request::bearer(tenant, token.as_bytes());
        e.verify(snap, &req, UnixTime(NOW)).reason()
    };
    for _ in 0..5 {
        assert_eq!(on(&snap, "t"), Reason::Ok);
        assert_eq!(on(&snap, "u"), Reason::Revoked);
    }
    let s = e.cache_stats().unwrap();
    assert_eq!((s.misses, s.inserts, s.entries), (2, 2, 2), "{s:?}");
    assert_eq!(s.hits, 8);
    // A new epoch for one tenant drops its entry only.
    let mut u2 = revoked();
    u2.epoch = 7;
    let snap2 = snapshot(vec![tenant("t", &[Es256]), u2]);
    assert_eq!(on(&snap2, "t"), Reason::Ok);
    assert_eq!(on(&snap2, "u"), Reason::Revoked);
    let s2 = e.cache_stats().unwrap();
    assert_eq!((s2.hits - s.hits, s2.misses - s.misses), (1, 1), "{s2:?}");
}

#[test]
fn bounded_in_entries_and_bytes() {
    let e = cached(64);
    let snap = snapshot(vec![tenant("t", &[Hs256])]);
    for i in 0..1000 {
        let token = mint(Hs256, json!({"jti": format!("t-{i}")}));
        assert_eq!(at(&e, &snap, &token, None, NOW), Reason::Ok);
        let s = e.cache_stats().unwrap();
        assert!(s.entries <= 64 + 1, "entries {} over the bound", s.entries);
    }
    let s = e.cache_stats().unwrap();
    // Once full, one-time tokens are not admitted (the doorkeeper never saw them before).
    assert_eq!(s.inserts + s.admission_rejected, 1000);
    assert!(s.admission_rejected > 800, "{s:?}");
    assert!(s.evictions + 65 >= s.inserts, "{s:?}");

    let small = Engine::new(EngineConfig {
        cache: Some(CacheConfig {
            max_bytes: NonZeroUsize::new(16 << 10).unwrap(),
            ..CacheConfig::default()
        }),
        ..EngineConfig::default()
    });
    for i in 0..500 {
        let token = mint(
            Hs256,
            json!({"jti": format!("b-{i}"), "pad": "p".repeat(200)}),
        );
        assert_eq!(at(&small, &snap, &token, None, NOW), Reason::Ok);
        assert!(small.cache_stats().unwrap().bytes <= (16 << 10) + 4096);
    }
    let s = small.cache_stats().unwrap();
    assert!(
        s.entries > 0 && s.bytes > 0,
        "the small cache holds entries: {s:?}"
    );
}

#[test]
fn entries_live_no_longer_than_max_ttl() {
    let e = Engine::new(EngineConfig {
        cache: Some(CacheConfig {
            max_ttl: Duration::from_secs(10),
            ..CacheConfig::default()
        }),
        ..EngineConfig::default()
    });
    let snap = snapshot(vec![tenant("t", &[Es256])]);
    let token = mint(Es256, json!({}));
    assert_eq!(at(&e, &snap, &token, None, NOW), Reason::Ok);
    assert_eq!(at(&e, &snap, &token, None, NOW + 9), Reason::Ok);
    assert_eq!(at(&e, &snap, &token, None, NOW + 10), Reason::Ok);
    let s = e.cache_stats().unwrap();
    assert_eq!(
        (s.hits, s.misses),
        (1, 2),
        "the entry died at max_ttl and was verified again"
    );
    e.clear_cache();
    assert_eq!(e.cache_stats().unwrap().entries, 0);
}

#[test]
fn a_workers_hot_token_copy_obeys_clear_revocation_and_epoch() {
    let e = cached(1000);
    let token = mint(Es256, json!({"jti": "hot"}));
    let snap = snapshot(vec![tenant("t", &[Es256])]);
    let mut scratch = jotd_core::Scratch::new();
    let mut ask = |snap: &Snapshot, now: u64| {
        let d = e.verify_with(
            &mut scratch,
            snap,
            &Request::bearer("t", token.as_bytes()),
            UnixTime(now),
        );
        e.flush(&mut scratch);
        d.reason()
    };
    // Miss, then two shared hits (the second fills the worker's copy), then copy hits.
    for _ in 0..5 {
        assert_eq!(ask(&snap, NOW), Reason::Ok);
    }
    assert_eq!(
        (
            e.cache_stats().unwrap().misses,
            e.cache_stats().unwrap().hits
        ),
        (1, 4)
    );
    // Revocation arrives with a new snapshot: the worker's copy still answers `revoked`.
    let mut revoked = tenant("t", &[Es256]);
    let mut d = Denylist::default();
    d.jti.insert("hot".into(), UnixTime(NOW + 600));
    revoked.denylist = Arc::new(d);
    assert_eq!(ask(&snapshot(vec![revoked]), NOW), Reason::Revoked);
    // Past exp the copy is dead.
    assert_eq!(ask(&snap, NOW + 700), Reason::Expired);
    // A new epoch: the copy and the shared entry are both ignored.
    let mut rotated = tenant("t", &[Es256]);
    rotated.epoch = 7;
    let before = e.cache_stats().unwrap().misses;
    assert_eq!(ask(&snapshot(vec![rotated]), NOW), Reason::Ok);
    assert_eq!(e.cache_stats().unwrap().misses, before + 1);
    // Clearing the cache also empties every worker's copy.
    let snap7 = {
        let mut t = tenant("t", &[Es256]);
        t.epoch = 7;
        snapshot(vec![t])
    };
    for _ in 0..3 {
        assert_eq!(ask(&snap7, NOW), Reason::Ok);
    }
    e.clear_cache();
    let before = e.cache_stats().unwrap().misses;
    assert_eq!(ask(&snap7, NOW), Reason::Ok);
    assert_eq!(
        e.cache_stats().unwrap().misses,
        before + 1,
        "verified again after clear"
    );
}

/// A worker's copies are keyed by the cache they came from: a scratch used
/// with two engines (a reload builds a new one; threads keep their scratch)
/// never answers for the second from the first one's copies.
#[test]
fn a_workers_copies_answer_only_for_the_cache_they_came_from() {
    let (a, b) = (cached(1000), cached(1000));
    let snap = snapshot(vec![tenant("t", &[Es256])]);
    let token = mint(Es256, json!({"jti": "shared"}));
    let req = Request::bearer("t", token.as_bytes());
    let mut scratch = jotd_core::Scratch::new();
    for _ in 0..4 {
        assert_eq!(
            a.verify_with(&mut scratch, &snap, &req, UnixTime(NOW))
                .reason(),
            Reason::Ok
        );
    }
    a.flush(&mut scratch);
    assert_eq!(a.cache_stats().unwrap().hits, 3);
    assert_eq!(
        b.verify_with(&mut scratch, &snap, &req, UnixTime(NOW))
            .reason(),
        Reason::Ok
    );
    b.flush(&mut scratch);
    let s = b.cache_stats().unwrap();
    assert_eq!(
        (s.hits, s.misses),
        (0, 1),
        "verified by b, not answered from a's copy"
    );
}

/// A worker's copy lets go of an entry the map evicted (it would otherwise
/// keep it alive outside the byte bound): the token is verified again.
#[test]
fn a_workers_copy_drops_an_entry_the_map_evicted() {
    let e = cached(4);
    let snap = snapshot(vec![tenant("t", &[Hs256])]);
    let mut scratch = jotd_core::Scratch::new();
    let mut ask = |token: &str| {
        let d = e.verify_with(
            &mut scratch,
            &snap,
            &Request::bearer("t", token.as_bytes()),
            UnixTime(NOW),
        );
        e.flush(&mut scratch);
        assert_eq!(d.reason(), Reason::Ok);
    };
    let first = mint(Hs256, json!({"jti": "first"}));
    for _ in 0..3 {
        ask(&first);
    }
    // Others, each seen three times (admitted on reuse), push it out of a 4-entry map.
    for i in 0..64 {
        let other = mint(Hs256, json!({"jti": format!("other-{i}")}));
        for _ in 0..3 {
            ask(&other);
        }
    }
    let before = e.cache_stats().unwrap();
    assert!(before.evictions > 0 && before.entries <= 4, "{before:?}");
    ask(&first);
    let after = e.cache_stats().unwrap();
    assert_eq!(
        (after.hits, after.misses),
        (before.hits, before.misses + 1),
        "{after:?}"
    );
}

/// A copy answers for the tenant it was verified for only: copies are keyed
/// by token bytes, and the same bytes presented for another tenant (whose
/// keys do not verify them) are decided for that tenant.
#[test]
fn a_workers_copy_answers_only_for_its_tenant() {
    let e = cached(1000);
    let snap = snapshot(vec![tenant("t", &[Hs256]), tenant("u", &[Es256])]);
    let token = mint(Hs256, json!({"sub": "alice"}));
    let mut scratch = jotd_core::Scratch::new();
    for _ in 0..4 {
        let d = e.verify_with(
            &mut scratch,
            &snap,
            &Request::bearer("t", token.as_bytes()),
            UnixTime(NOW),
        );
        assert_eq!(d.reason(), Reason::Ok);
    }
    let d = e.verify_with(
        &mut scratch,
        &snap,
        &Request::bearer("u", token.as_bytes()),
        UnixTime(NOW),
    );
    assert_ne!(
        d.reason(),
        Reason::Ok,
        "tenant u answered from tenant t's copy"
    );
    assert!(!d.allow());
}

/// A copy answers for its exact token bytes only: a token that shares the
/// bytes the slot is picked by (its signature's tail) but differs anywhere
/// else is verified, and a forgery that way fails.
#[test]
fn a_workers_copy_answers_only_for_the_exact_token() {
    let e = cached(1000);
    let snap = snapshot(vec![tenant("t", &[Hs256])]);
    let token = mint(Hs256, json!({"sub": "alice"}));
    let mut scratch = jotd_core::Scratch::new();
    for _ in 0..4 {
        let d = e.verify_with(
            &mut scratch,
            &snap,
            &Request::bearer("t", token.as_bytes()),
            UnixTime(NOW),
        );
        assert_eq!(d.reason(), Reason::Ok);
    }
    // Same header and signature (so the same slot), one payload byte changed.
    let dot = token.find('.').unwrap() + 3;
    let mut forged = token.clone().into_bytes();
    forged[dot] = if forged[dot] == b'A' { b'B' } else { b'A' };
    let d = e.verify_with(
        &mut scratch,
        &snap,
        &Request::bearer("t", &forged),
        UnixTime(NOW),
    );
    assert_ne!(
        d.reason(),
        Reason::Ok,
        "a forged token answered from a copy"
    );
    assert!(!d.allow());
}

/// A hot set keeps its hits while ten times the cache's capacity of valid
/// one-time tokens streams past: they are verified, not admitted.
#[test]
fn a_scan_of_one_time_tokens_does_not_evict_the_hot_set() {
    let e = cached(256);
    let snap = snapshot(vec![tenant("t", &[Hs256])]);
    let hot: Vec<String> = (0..100)
        .map(|i| mint(Hs256, json!({"jti": format!("hot-{i}")})))
        .collect();
    // Warm up: the hot set is seen a few times (and fills the cache's room).
    for _ in 0..3 {
        for t in &hot {
            assert_eq!(at(&e, &snap, t, None, NOW), Reason::Ok);
        }
    }
    let before = e.cache_stats().unwrap();
    let (mut hot_hits, mut hot_lookups) = (0u64, 0u64);
    for i in 0..2560 {
        let one_time = mint(Hs256, json!({"jti": format!("scan-{i}")}));
        assert_eq!(at(&e, &snap, &one_time, None, NOW), Reason::Ok);
        if i % 4 == 0 {
            let t = &hot[(i / 4) % hot.len()];
            let h = e.cache_stats().unwrap().hits;
            assert_eq!(at(&e, &snap, t, None, NOW), Reason::Ok);
            hot_lookups += 1;
            hot_hits += e.cache_stats().unwrap().hits - h;
        }
    }
    let after = e.cache_stats().unwrap();
    assert!(
        hot_hits * 100 >= hot_lookups * 95,
        "hot-set hit ratio {hot_hits}/{hot_lookups}; {before:?} -> {after:?}"
    );
    assert!(
        after.admission_rejected - before.admission_rejected >= 2000,
        "{after:?}"
    );
    assert!(after.hit_ratio() > 0.0 && after.hit_ratio() < 1.0);
}

/// Once the cache has evicted, a token is admitted on evidence of reuse: most
/// first sightings are turned away (the doorkeeper's bits give a few false
/// admissions), and every token is in by its third sighting (a window reset
/// may fall between two sightings, never between three).
#[test]
fn a_full_cache_admits_on_evidence_of_reuse() {
    let e = cached(64);
    let snap = snapshot(vec![tenant("t", &[Hs256])]);
    for i in 0..200 {
        let t = mint(Hs256, json!({"jti": format!("fill-{i}")}));
        assert_eq!(at(&e, &snap, &t, None, NOW), Reason::Ok);
    }
    let mut turned_away = 0;
    for i in 0..20 {
        let token = mint(Hs256, json!({"jti": format!("reused-{i}")}));
        let s0 = e.cache_stats().unwrap();
        assert_eq!(at(&e, &snap, &token, None, NOW), Reason::Ok);
        turned_away += e.cache_stats().unwrap().admission_rejected - s0.admission_rejected;
        let mut sightings = 1;
        while e.cache_stats().unwrap().inserts == s0.inserts {
            assert!(
                sightings < 3,
                "token {i} not admitted by its third sighting"
            );
            assert_eq!(at(&e, &snap, &token, None, NOW), Reason::Ok);
            sightings += 1;
        }
        let hits = e.cache_stats().unwrap().hits;
        assert_eq!(at(&e, &snap, &token, None, NOW), Reason::Ok);
        assert_eq!(
            e.cache_stats().unwrap().hits,
            hits + 1,
            "token {i} is cached"
        );
    }
    assert!(
        turned_away >= 15,
        "only {turned_away} of 20 first sightings turned away"
    );
    // A clear empties the cache and its doorkeeper: admission starts afresh.
    e.clear_cache();
    let fresh = mint(Hs256, json!({"jti": "fresh"}));
    let s3 = e.cache_stats().unwrap();
    assert_eq!(at(&e, &snap, &fresh, None, NOW), Reason::Ok);
    assert_eq!(e.cache_stats().unwrap().inserts, s3.inserts + 1);
}

/// Decides `tokens` in order with one long-lived scratch (as a pool worker
/// does), flushing every 64 like the batch path; every decision must be `ok`.
fn stream(e: &Engine, snap: &Snapshot, scratch: &mut jotd_core::Scratch, tokens: &[String]) {
    for (i, t) in tokens.iter().enumerate() {
        let d = e.verify_with(
            scratch,
            snap,
            &Request::bearer("t", t.as_bytes()),
            UnixTime(NOW),
        );
        assert_eq!(d.reason(), Reason::Ok, "token {i}");
        if i % 64 == 63 {
            e.flush(scratch);
        }
    }
    e.flush(scratch);
}

/// A full cache that only ever sees new HMAC tokens does not pay for its
/// lookups: it samples one token in 16 (the rest are verified without a
/// lookup, with the same decisions), and comes back to looking every token
/// up once a hot set shows up in the sampled lookups.
#[test]
fn a_cache_that_does_not_pay_samples_and_comes_back_for_a_hot_set() {
    let e = cached(64);
    let snap = snapshot(vec![tenant("t", &[Hs256])]);
    let mut scratch = jotd_core::Scratch::new();
    let one_time: Vec<String> = (0..4 * 4096)
        .map(|i| mint(Hs256, json!({"jti": format!("once-{i}")})))
        .collect();
    stream(&e, &snap, &mut scratch, &one_time);
    let s = e.cache_stats().unwrap();
    assert_eq!(s.sample_every, jotd_core::SAMPLE_EVERY, "{s:?}");
    assert!(s.bypassed > 4096, "{s:?}");
    assert_eq!(
        s.hits + s.misses + s.bypassed,
        one_time.len() as u64,
        "every token is a lookup or bypassed, once"
    );
    // A hot set of 8 tokens, reused: the sampled lookups see hits, and every
    // token is looked up again.
    let hot: Vec<String> = (0..8)
        .map(|i| mint(Hs256, json!({"jti": format!("hot-{i}")})))
        .collect();
    let reused: Vec<String> = (0..3 * 4096).map(|i| hot[i % 8].clone()).collect();
    stream(&e, &snap, &mut scratch, &reused);
    let back = e.cache_stats().unwrap();
    assert_eq!(back.sample_every, 1, "{back:?}");
    let before = back.bypassed;
    stream(&e, &snap, &mut scratch, &reused[..1024]);
    let after = e.cache_stats().unwrap();
    assert_eq!(after.bypassed, before, "no token bypassed: {after:?}");
    assert_eq!(after.hits - back.hits, 1024, "{after:?}");
    // A clear starts afresh: every token looked up.
    e.clear_cache();
    assert_eq!(e.cache_stats().unwrap().sample_every, 1);
}

/// A bypassed token gets the same decision as a looked-up one: revocation,
/// time and policy all apply (it is verified in full).
#[test]
fn bypassed_tokens_are_decided_in_full() {
    let e = cached(64);
    let snap = snapshot(vec![tenant("t", &[Hs256])]);
    let mut scratch = jotd_core::Scratch::new();
    let one_time: Vec<String> = (0..3 * 4096)
        .map(|i| mint(Hs256, json!({"jti": format!("once-{i}")})))
        .collect();
    stream(&e, &snap, &mut scratch, &one_time);
    assert_eq!(
        e.cache_stats().unwrap().sample_every,
        jotd_core::SAMPLE_EVERY
    );
    let mut revoked = tenant("t", &[Hs256]);
    let mut d = Denylist::default();
    d.jti.insert("gone".into(), UnixTime(NOW + 600));
    revoked.denylist = Arc::new(d);
    let revoked = snapshot(vec![revoked]);
    let gone = mint(Hs256, json!({"jti": "gone", "exp": NOW + 100}));
    let late = mint(Hs256, json!({"exp": NOW - 100}));
    let bypassed = e.cache_stats().unwrap().bypassed;
    for _ in 0..32 {
        for (token, now, want) in [(&gone, NOW, Reason::Revoked), (&late, NOW, Reason::Expired)] {
            let req = Request::bearer("t", token.as_bytes());
            let d = e.verify_with(&mut scratch, &revoked, &req, UnixTime(now));
            assert_eq!(d.reason(), want);
        }
    }
    e.flush(&mut scratch);
    assert!(e.cache_stats().unwrap().bypassed > bypassed + 32);
}

/// A working set a little bigger than the cache, reused in a cycle: without
/// a throttle every miss would be admitted and evict the next token to come
/// round; with it, the cache settles into a stable part that hits.
#[test]
fn a_recurring_working_set_larger_than_the_cache_throttles_admission() {
    let e = cached(64);
    let snap = snapshot(vec![tenant("t", &[Hs256])]);
    let mut scratch = jotd_core::Scratch::new();
    // Tokens too long for a worker's private copies, so every lookup reaches
    // the shared map (96 short ones would all be served from the copies).
    let pad = "p".repeat(jotd_core::HOT_TOKEN_BYTES);
    let set: Vec<String> = (0..96)
        .map(|i| mint(Hs256, json!({"jti": format!("ws-{i}"), "pad": pad})))
        .collect();
    let cycle: Vec<String> = (0..6 * 4096).map(|i| set[i % 96].clone()).collect();
    stream(&e, &snap, &mut scratch, &cycle);
    let s0 = e.cache_stats().unwrap();
    assert!(s0.throttled, "{s0:?}");
    stream(&e, &snap, &mut scratch, &cycle[..4096]);
    let s1 = e.cache_stats().unwrap();
    let (hits, inserts) = (s1.hits - s0.hits, s1.inserts - s0.inserts);
    assert!(
        hits * 100 >= 4096 * 40,
        "the stable part hits: {hits} of 4096; {s1:?}"
    );
    assert!(inserts * 8 <= 4096, "few inserts once throttled: {inserts}");
}

/// A hot set served from a worker's private copies stays in the shared map
/// while a recurring scan several times the cache streams past: the copies
/// touch the map as often as it turns over, not only one hit in 64 (a hot
/// token used once in 200 tokens reached the map once in 12,800, less often
/// than each scan token, and was evicted as the coldest there: a third of
/// the hot set was out of the map at any time, a fifth of its lookups missed).
#[test]
fn a_hot_set_served_from_copies_stays_in_the_map_under_a_scan() {
    let e = Engine::new(EngineConfig {
        cache: Some(CacheConfig {
            max_bytes: NonZeroUsize::new(256 << 10).unwrap(),
            ..CacheConfig::default()
        }),
        ..EngineConfig::default()
    });
    let snap = snapshot(vec![tenant("t", &[Hs256])]);
    // The scan is about five times what the cache holds (~215 of these entries in 256 KiB).
    let (hot, per_hot, n) = (50, 3, 1000);
    let tokens: Vec<String> = (0..n)
        .map(|i| mint(Hs256, json!({"jti": format!("tok-{i}")})))
        .collect();
    // One hot token, then three of the scan, round after round.
    let order: Vec<String> = (0..120_000)
        .map(|i| {
            let (round, pos) = (i / (per_hot + 1), i % (per_hot + 1));
            let at = if pos == 0 {
                round % hot
            } else {
                hot + (round * per_hot + pos - 1) % (n - hot)
            };
            tokens[at].clone()
        })
        .collect();
    let mut scratch = jotd_core::Scratch::new();
    stream(&e, &snap, &mut scratch, &order);
    // One lookup of each hot token with a fresh scratch: the map answers.
    let before = e.cache_stats().unwrap();
    let mut fresh = jotd_core::Scratch::new();
    for t in &tokens[..hot] {
        let req = Request::bearer("t", t.as_bytes());
        assert_eq!(
            e.verify_with(&mut fresh, &snap, &req, UnixTime(NOW))
                .reason(),
            Reason::Ok
        );
    }
    e.flush(&mut fresh);
    let after = e.cache_stats().unwrap();
    assert_eq!(
        after.hits - before.hits,
        hot as u64,
        "hot tokens evicted from the map: {before:?} -> {after:?}"
    );
}
