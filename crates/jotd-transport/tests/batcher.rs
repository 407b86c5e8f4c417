//! Micro-batching: single checks from many tasks become batches, each check
//! gets exactly its own decision, deadlines hold, failures reach every check.

mod support;

use jotd_core::Reason;
use jotd_transport::{Batcher, BatcherOptions, Check, CheckError, ServerOptions};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio::sync::watch;
use tokio::time::Instant;

fn check(token: &str, tenant: &str) -> Check {
    Check {
        token: Some(token.as_bytes().to_vec()),
        tenant: tenant.into(),
        method: Some("eth_blockNumber".into()),
        ..Check::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_form_batches_and_each_gets_its_own_decision() {
    let k = keys();
    let r = start(
        TestBackend::new(snapshot(1, &k, true)),
        ServerOptions::default(),
        false,
    );
    let client = Arc::new(client(&r, vec![r.addr], false));
    client.connect_all().await.unwrap();
    let batcher = Batcher::new(
        Arc::clone(&client),
        BatcherOptions {
            max_items: NonZeroUsize::new(16).unwrap(),
            max_delay: Duration::from_millis(5),
            ..BatcherOptions::default()
        },
    );
    // Alternate valid, expired and bad-signature tokens: a decision handed to
    // the wrong check would show as the wrong reason.
    let valid = k.hs.mint(Some("hs"), &claims("ok", NOW + 60)).unwrap();
    let expired = k.hs.mint(Some("hs"), &claims("old", NOW - 600)).unwrap();
    let forged = format!("{}AAAA", &valid[..valid.len() - 4]);
    let cases = [
        (valid, Reason::Ok),
        (expired, Reason::Expired),
        (forged, Reason::BadSignature),
    ];
    let n = 600;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (token, want) = cases[i % 3].clone();
            let b = batcher.clone();
            tokio::spawn(async move {
                let d = b
                    .check(check(&token, "t"), Instant::now() + Duration::from_secs(5))
                    .await
                    .unwrap();
                assert_eq!(d.reason(), Some(want), "check {i}");
                assert_eq!(d.allow, want == Reason::Ok);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let s = batcher.stats();
    assert_eq!(s.checks, n as u64);
    assert_eq!(s.items, n as u64, "{s:?}");
    assert!(s.batches < n as u64 / 2, "no batching: {s:?}");
    assert_eq!(
        s.flush_full + s.flush_eager + s.flush_answered + s.flush_delay,
        s.batches
    );
    assert!(s.flush_full > 0, "{s:?}");
    assert_eq!(s.failed + s.abandoned + s.overloaded, 0, "{s:?}");
    let sent: u64 = client.stats().endpoints.iter().map(|e| e.sent).sum();
    assert!(
        sent >= s.batches,
        "one client batch (or more, hedged) per flush"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_check_is_sent_at_once() {
    let k = keys();
    let r = start(
        TestBackend::new(snapshot(1, &k, true)),
        ServerOptions::default(),
        false,
    );
    let client = Arc::new(client(&r, vec![r.addr], false));
    client.connect_all().await.unwrap();
    // A delay far longer than the test may take: only the eager rule sends it.
    // `Duration::MAX` also checks that no clock arithmetic overflows (it
    // panicked the flushing task, and every check waited for nothing).
    let batcher = Batcher::new(
        client,
        BatcherOptions {
            max_delay: Duration::MAX,
            ..BatcherOptions::default()
        },
    );
    let valid = k.hs.mint(Some("hs"), &claims("ok", NOW + 60)).unwrap();
    for _ in 0..3 {
        let d = tokio::time::timeout(
            Duration::from_secs(5),
            batcher.check(check(&valid, "t"), Instant::now() + Duration::from_secs(5)),
        )
        .await
        .expect("sent at once, not after max_delay")
        .unwrap();
        assert!(d.allow);
    }
    // Each went out without waiting for max_delay: eagerly, or (should the
    // previous answer's notice race the next check) as that answer landed.
    let s = batcher.stats();
    assert_eq!((s.batches, s.flush_delay), (3, 0), "{s:?}");
    assert_eq!(s.flush_eager + s.flush_answered, 3, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_past_its_deadline_fails_and_the_rest_still_decide() {
    let k = keys();
    // "jwks" items with an unknown kid wait for a refetch that waits for the gate.
    let (r, open) = start_held(&k);
    let client = Arc::new(client(&r, vec![r.addr], false));
    client.connect_all().await.unwrap();
    let batcher = Batcher::new(Arc::clone(&client), BatcherOptions::default());
    let held = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let started = Instant::now();
    let got = batcher
        .check(
            check(&held, "jwks"),
            Instant::now() + Duration::from_millis(200),
        )
        .await;
    assert_eq!(got, Err(CheckError::Deadline));
    assert!(started.elapsed() < Duration::from_secs(3));
    open.send(true).unwrap();
    // A check queued behind it (the first batch is still outstanding) is
    // sent when that batch answers, or after max_delay.
    let valid = k.es.mint(Some("es"), &claims("b", NOW + 60)).unwrap();
    let d = batcher
        .check(check(&valid, "t"), Instant::now() + Duration::from_secs(5))
        .await
        .unwrap();
    assert!(d.allow, "{d:?}");
    // A check already past its deadline when it is flushed is never sent.
    let before = batcher.stats();
    let got = batcher.check(check(&valid, "t"), Instant::now()).await;
    assert_eq!(got, Err(CheckError::Deadline));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = batcher.stats();
    assert_eq!(after.items, before.items, "{after:?}");
    assert_eq!(after.abandoned, before.abandoned + 1, "{after:?}");
}

/// A check whose deadline passes before its batch fails is answered
/// `Deadline` once and not counted again as failed by the batch: each check is
/// one answer and one count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_past_its_deadline_is_not_counted_again_when_its_batch_fails() {
    let k = keys();
    let (r, _open) = start_held(&k);
    let tls = jotd_transport::client_config(r.pki.ca_pem.as_bytes(), None).unwrap();
    let mut opts = jotd_transport::ClientOptions::new(vec![r.addr], tls);
    opts.batch_timeout = Duration::from_millis(500);
    opts.hedge.enabled = false;
    let client = Arc::new(jotd_transport::Client::new(opts).unwrap());
    client.connect_all().await.unwrap();
    let batcher = Batcher::new(Arc::clone(&client), BatcherOptions::default());
    let held = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let late = batcher.check(
        check(&held, "jwks"),
        Instant::now() + Duration::from_millis(100),
    );
    let waiting = batcher.check(
        check(&held, "jwks"),
        Instant::now() + Duration::from_secs(5),
    );
    let (late, waiting) = tokio::join!(late, waiting);
    assert_eq!(late, Err(CheckError::Deadline));
    assert!(
        matches!(waiting, Err(CheckError::Client(ref e)) if e.kind() == "timeout"),
        "{waiting:?}"
    );
    let stats = batcher.stats();
    assert_eq!(stats.items, 2, "{stats:?}");
    assert_eq!(stats.failed, 1, "only the check still waiting: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_check_delays_only_itself_not_its_batch() {
    let k = keys();
    // "jwks" items with an unknown kid are held until the gate opens (never,
    // in this test): a key set refetch that does not finish.
    let (r, _open) = start_held(&k);
    let client = Arc::new(client(&r, vec![r.addr], false));
    client.connect_all().await.unwrap();
    let opts = BatcherOptions {
        max_items: NonZeroUsize::new(2).unwrap(),
        max_delay: Duration::from_secs(5),
        ..BatcherOptions::default()
    };
    let batcher = Batcher::new(Arc::clone(&client), opts);
    let held = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let valid = k.es.mint(Some("es"), &claims("b", NOW + 60)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    // The first goes out alone (nothing outstanding); the next two wait for
    // a full batch of two and share it.
    let first = tokio::spawn({
        let (b, h) = (batcher.clone(), held.clone());
        async move { b.check(check(&h, "jwks"), deadline).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = tokio::spawn({
        let (b, h) = (batcher.clone(), held.clone());
        async move { b.check(check(&h, "jwks"), deadline).await }
    });
    let d = batcher
        .check(check(&valid, "t"), deadline)
        .await
        .expect("the valid check is decided while its batch-mate is held");
    assert!(d.allow, "{d:?}");
    let s = batcher.stats();
    assert_eq!((s.batches, s.items), (2, 3), "{s:?}");
    // The held ones miss their deadline while the pool is connected: a
    // caller must not read that as the pool being down.
    assert_eq!(first.await.unwrap(), Err(CheckError::Deadline));
    assert_eq!(second.await.unwrap(), Err(CheckError::Deadline));
    assert!(batcher.pool_reachable());
}

/// A batch still out when every check in it has gone (deadline passed) is
/// stopped, not kept until the batch's own timeout: the pool stops working on
/// an answer nobody reads, and the batch is counted as cancelled, not failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_checks_have_all_gone_is_stopped() {
    let k = keys();
    // Held until the gate opens (never): the batch would stay out for the
    // client's 5 s batch timeout.
    let (r, _open) = start_held(&k);
    let client = Arc::new(client(&r, vec![r.addr], false));
    client.connect_all().await.unwrap();
    let batcher = Batcher::new(Arc::clone(&client), BatcherOptions::default());
    let held = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let valid = k.es.mint(Some("es"), &claims("b", NOW + 60)).unwrap();
    let started = Instant::now();
    assert_eq!(
        batcher
            .check(check(&held, "jwks"), started + Duration::from_millis(200))
            .await,
        Err(CheckError::Deadline)
    );
    // Well inside the 5 s batch timeout (a timeout would count as failed).
    while batcher.stats().cancelled == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            batcher.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = batcher.stats();
    assert_eq!((s.batches, s.cancelled, s.failed), (1, 1, 0), "{s:?}");
    // The pool is still there for the next check.
    let d = batcher
        .check(check(&valid, "t"), Instant::now() + Duration::from_secs(5))
        .await
        .unwrap();
    assert!(d.allow, "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_items_wait_at_most_refetch_hold() {
    let k = keys();
    // The refetch installs the new keys at once but never reports back: a
    // slow identity provider.
    let (_open, gate) = watch::channel(false);
    let backend = TestBackend::gated(snapshot(1, &k, false), gate);
    *backend.after_refetch.lock().unwrap() = Some(Arc::new(snapshot(2, &k, true)));
    let opts = ServerOptions {
        refetch_hold: Duration::from_millis(200),
        ..ServerOptions::default()
    };
    let r = start(Arc::clone(&backend), opts, false);
    let batcher = Batcher::new(
        Arc::new(client(&r, vec![r.addr], false)),
        BatcherOptions::default(),
    );
    let held = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let d = batcher
        .check(
            check(&held, "jwks"),
            Instant::now() + Duration::from_secs(30),
        )
        .await
        .expect("decided once refetch_hold passed, not held until the deadline");
    assert_eq!(d.reason(), Some(Reason::UnknownKid), "{d:?}");
    assert_eq!(
        backend.refetches.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    // The next batch finds the keys the refetch brought.
    let d = batcher
        .check(
            check(&held, "jwks"),
            Instant::now() + Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(d.allow, "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_is_gone_fails_every_check_with_the_client_error() {
    let k = keys();
    let r = start(
        TestBackend::new(snapshot(1, &k, true)),
        ServerOptions::default(),
        false,
    );
    let addr = r.addr;
    let c = client(&r, vec![addr], false);
    r.stop().await;
    let batcher = Batcher::new(Arc::new(c), BatcherOptions::default());
    let valid = k.hs.mint(Some("hs"), &claims("ok", NOW + 60)).unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (b, v) = (batcher.clone(), valid.clone());
            tokio::spawn(async move {
                b.check(check(&v, "t"), Instant::now() + Duration::from_secs(10))
                    .await
            })
        })
        .collect();
    for t in tasks {
        match t.await.unwrap() {
            Err(CheckError::Client(e)) => assert!(e.retryable(), "{e}"),
            other => panic!("expected a client error, got {other:?}"),
        }
    }
    let s = batcher.stats();
    assert_eq!(s.failed, 20, "{s:?}");
    assert!(!batcher.pool_reachable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once() {
    let k = keys();
    let (r, _open) = start_held(&k);
    let client = Arc::new(client(&r, vec![r.addr], false));
    client.connect_all().await.unwrap();
    let batcher = Batcher::new(
        client,
        BatcherOptions {
            max_queued: NonZeroUsize::new(4).unwrap(),
            max_delay: Duration::from_secs(3600),
            ..BatcherOptions::default()
        },
    );
    let held = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    // The first check goes out eagerly and is held; four more fill the queue.
    let mut waiting = Vec::new();
    for _ in 0..5 {
        let (b, h) = (batcher.clone(), held.clone());
        waiting.push(tokio::spawn(async move {
            b.check(check(&h, "jwks"), Instant::now() + Duration::from_secs(2))
                .await
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = batcher
        .check(
            check(&held, "jwks"),
            Instant::now() + Duration::from_secs(2),
        )
        .await;
    assert_eq!(got, Err(CheckError::Overloaded));
    assert_eq!(batcher.stats().overloaded, 1);
    for w in waiting {
        assert_eq!(w.await.unwrap(), Err(CheckError::Deadline));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_stay_under_the_byte_cap() {
    let (k, _r, batcher) = batcher_with(BatcherOptions {
        max_batch_bytes: NonZeroUsize::new(1000).unwrap(),
        max_delay: Duration::from_millis(50),
        ..BatcherOptions::default()
    })
    .await;
    // 400 bytes of address each: at most two checks fit in 1000 bytes.
    let address = "0x".to_owned() + &"a".repeat(398);
    all_allowed(&k, &batcher, 10, &[address]).await;
    let s = batcher.stats();
    assert_eq!(s.items, 10);
    assert!(s.batches >= 5, "{s:?}");
}

/// Checks that are each within the protocol's address cap but together pass
/// it go in separate batches: one batch over the cap was refused whole, and
/// every check in it failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_stay_under_the_protocols_address_cap() {
    let (k, _r, batcher) = batcher_with(BatcherOptions {
        max_items: NonZeroUsize::new(6).unwrap(),
        max_delay: Duration::from_millis(50),
        ..BatcherOptions::default()
    })
    .await;
    // 40,000 addresses each (`*`: 80 KB a check on the wire, so a batch of
    // two is under the byte cap): two are 80,000 > 65,536, so a batch holds one.
    all_allowed(&k, &batcher, 6, &vec!["*".to_owned(); 40_000]).await;
    assert_eq!(batcher.stats().batches, 6);
}

/// A server on the test keys and a batcher with `opts` in front of it.
async fn batcher_with(opts: BatcherOptions) -> (Keys, Running, Batcher) {
    let k = keys();
    let r = start(
        TestBackend::new(snapshot(1, &k, true)),
        ServerOptions::default(),
        false,
    );
    let client = Arc::new(client(&r, vec![r.addr], false));
    client.connect_all().await.unwrap();
    (k, r, Batcher::new(client, opts))
}

/// `n` checks of one valid token touching `addresses`, sent at once from
/// their own tasks: each is decided, and allowed (not refused with its batch).
async fn all_allowed(k: &Keys, batcher: &Batcher, n: usize, addresses: &[String]) {
    let valid = k.hs.mint(Some("hs"), &claims("ok", NOW + 60)).unwrap();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (b, v, a) = (batcher.clone(), valid.clone(), addresses.to_vec());
            tokio::spawn(async move {
                let mut c = check(&v, "t");
                c.addresses = a;
                b.check(c, Instant::now() + Duration::from_secs(5)).await
            })
        })
        .collect();
    for t in tasks {
        let d = t
            .await
            .unwrap()
            .expect("decided, not refused with its batch");
        assert!(d.allow, "{d:?}");
    }
}
