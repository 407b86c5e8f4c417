//! The client against a pool whose replicas go silent mid-batch, stall,
//! reset their streams, and drain: every batch still gets exactly one decision
//! per item, late answers are dropped and counted, failing replicas are
//! ejected.

mod support;

use jotd_core::Reason;
use jotd_transport::{
    Client, ClientDecision, ClientError, ClientOptions, DevPki, ErrorCode, Item, ServerOptions,
    client_config, server_config,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio::sync::watch;

fn pool_client(pki: &DevPki, endpoints: Vec<SocketAddr>) -> Arc<Client> {
    let tls = client_config(pki.ca_pem.as_bytes(), None).unwrap();
    let mut opts = ClientOptions::new(endpoints, tls);
    opts.batch_timeout = Duration::from_secs(5);
    Arc::new(Client::new(opts).unwrap())
}

fn assert_once(got: &[ClientDecision], n: usize, reason: Reason) {
    assert_eq!(got.len(), n);
    assert!(got.iter().all(|d| d.reason() == Some(reason)), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_goes_silent_mid_batch_costs_no_decision() {
    let k = keys();
    let pki = DevPki::generate().unwrap();
    // Every replica holds "jwks" batches (an unknown kid waits for a refetch)
    // until its gate opens: 30 batches are in flight across the pool.
    let (open, gate) = watch::channel(false);
    let replicas: Vec<Running> = (0..3)
        .map(|_| {
            let backend = TestBackend::gated(snapshot(1, &k, false), gate.clone());
            start_with(backend, holding(), false, pki.clone())
        })
        .collect();
    let relay = Relay::start(replicas[0].addr).await;
    let tls = client_config(pki.ca_pem.as_bytes(), None).unwrap();
    let endpoints = vec![relay.addr, replicas[1].addr, replicas[2].addr];
    let mut opts = ClientOptions::new(endpoints, tls);
    // Faster failure detection than the defaults, so the test is short.
    opts.keep_alive = Duration::from_millis(20);
    opts.dead_after = Duration::from_millis(60);
    let c = Arc::new(Client::new(opts).unwrap());
    c.connect_all().await.unwrap();
    let hs = Arc::new(k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap());
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let (c, hs) = (Arc::clone(&c), Arc::clone(&hs));
            tokio::spawn(async move {
                let items: Vec<Item<'_>> = (0..4).map(|_| item(Some(&hs), "jwks")).collect();
                c.verify_all(&items).await
            })
        })
        .collect();
    // The first replica's node vanishes with its batches unanswered; the
    // others go on.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let on_first: u64 = c.stats().endpoints[0].sent;
    assert!(on_first > 0, "some batches went to the first replica");
    relay.cut();
    open.send(true).unwrap();
    for t in tasks {
        let got = t.await.unwrap().expect("no batch fails");
        assert_once(&got, 4, Reason::UnknownKid);
    }
    // The late batches' liveness check finds the replica silent (no ACK,
    // no answer to keep-alive pings) for dead_after, and ejects it.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while c.stats().endpoints[0].ejections == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = c.stats();
    assert!(stats.hedges + stats.retries >= 1, "{stats:?}");
    assert!(stats.endpoints[0].ejections >= 1, "{stats:?}");
    assert_eq!(
        stats.late_duplicates, 0,
        "the silent replica answered nothing"
    );
    // New batches avoid the ejected replica and are answered at once.
    let got = c.verify_all(&[item(Some(&hs), "jwks")]).await.unwrap();
    assert_once(&got, 1, Reason::UnknownKid);
    for r in replicas.into_iter().skip(1) {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_is_dropped_and_counted() {
    let k = keys();
    let (got, stats) = hedged_past_a_slow_replica(&k, &k).await;
    assert_eq!(got[0].reason(), Some(Reason::Ok));
    assert_eq!(got[3].reason(), Some(Reason::UnknownKid));
    assert_eq!(stats.hedges, 1, "{stats:?}");
    assert_eq!(
        stats.late_duplicates, 3,
        "the hedge repeated three answered items"
    );
    assert_eq!(stats.late_disagreements, 0, "same keys, same decisions");
    assert_eq!(
        stats.endpoints[0].ejections, 0,
        "a slow replica that answers is not ejected"
    );
}

/// One batch (three `t` items, one `jwks`) on two replicas: the first, with
/// `slow_keys`, answers `t` items at once and holds `jwks` items; the second,
/// with `fast_keys`, answers everything, so a hedge to it decides the held
/// item and repeats the three answered ones.
async fn hedged_past_a_slow_replica(
    slow_keys: &Keys,
    fast_keys: &Keys,
) -> (Vec<ClientDecision>, jotd_transport::ClientStats) {
    let pki = DevPki::generate().unwrap();
    let (open, gate) = watch::channel(false);
    let slow = start_with(
        TestBackend::gated(snapshot(1, slow_keys, false), gate),
        holding(),
        false,
        pki.clone(),
    );
    let fast = start_with(
        TestBackend::new(snapshot(1, fast_keys, false)),
        ServerOptions::default(),
        false,
        pki.clone(),
    );
    let c = pool_client(&pki, vec![slow.addr, fast.addr]);
    c.connect_all().await.unwrap();
    let es = slow_keys
        .es
        .mint(Some("es"), &claims("a", NOW + 60))
        .unwrap();
    let hs = slow_keys
        .hs
        .mint(Some("hs"), &claims("a", NOW + 60))
        .unwrap();
    // The first batch goes to the first endpoint (nothing outstanding anywhere).
    let items = [
        item(Some(&es), "t"),
        item(Some(&es), "t"),
        item(Some(&es), "t"),
        item(Some(&hs), "jwks"),
    ];
    let got = c.verify_all(&items).await.unwrap();
    let stats = c.stats();
    open.send(true).unwrap();
    slow.stop().await;
    fast.stop().await;
    (got, stats)
}

/// A replica that keeps its connection up but answers nothing within a batch's
/// deadline (here: it holds the batch for a refetch that never ends) counts a
/// failure and is ejected; one that answered part of the batch is only counted.
/// Before, neither showed in the counts and the stalled replica kept drawing
/// batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_stalls_past_the_deadline_is_counted_and_ejected() {
    let k = keys();
    let pki = DevPki::generate().unwrap();
    let (_open, gate) = watch::channel(false);
    let stalled = start_with(
        TestBackend::gated(snapshot(1, &k, false), gate),
        holding(),
        false,
        pki.clone(),
    );
    let tls = client_config(pki.ca_pem.as_bytes(), None).unwrap();
    let mut opts = ClientOptions::new(vec![stalled.addr], tls);
    opts.batch_timeout = Duration::from_millis(400);
    opts.hedge.enabled = false;
    let c = Arc::new(Client::new(opts).unwrap());
    c.connect_all().await.unwrap();
    let es = k.es.mint(Some("es"), &claims("a", NOW + 60)).unwrap();
    let hs = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    // Part of the batch answered, the rest held: counted, not ejected.
    let err = c
        .verify_all(&[item(Some(&es), "t"), item(Some(&hs), "jwks")])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "timeout", "{err}");
    let stats = c.stats();
    assert_eq!(stats.endpoints[0].failures, 1, "{stats:?}");
    assert_eq!(stats.endpoints[0].ejections, 0, "{stats:?}");
    // Nothing answered in the whole deadline: counted and ejected.
    let err = c.verify_all(&[item(Some(&hs), "jwks")]).await.unwrap_err();
    assert_eq!(err.kind(), "timeout", "{err}");
    let stats = c.stats();
    assert_eq!(stats.endpoints[0].failures, 2, "{stats:?}");
    assert_eq!(stats.endpoints[0].ejections, 1, "{stats:?}");
}

/// A replica that cannot be reached while another is up is reconnected in the
/// background; each failed reconnect is an ejection in the counts (before, only
/// a failed connect a batch waited on was, so a replica that never came back
/// looked healthy on the dashboards).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_background_reconnects_are_counted() {
    let k = keys();
    let good = start(
        TestBackend::new(snapshot(1, &k, true)),
        ServerOptions::default(),
        false,
    );
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let tls = client_config(good.pki.ca_pem.as_bytes(), None).unwrap();
    let mut opts = ClientOptions::new(vec![good.addr, silent.local_addr().unwrap()], tls);
    opts.connect_timeout = Duration::from_millis(200);
    let c = Arc::new(Client::new(opts).unwrap());
    // The healthy one is connected first (the silent one's connect then fails,
    // counted nowhere: the caller has the error); from then on the silent one is
    // only retried in the background, while batches go to the healthy one.
    assert!(c.connect_all().await.is_err());
    let hs = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while c.stats().endpoints[1].ejections == 0 {
        assert!(std::time::Instant::now() < deadline, "{:?}", c.stats());
        let got = c.verify_all(&[item(Some(&hs), "t")]).await.unwrap();
        assert_once(&got, 1, Reason::Ok);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.stats().endpoints[1].sent, 0);
    drop(silent);
    good.stop().await;
}

/// A bare QUIC server with the dev certificate and `transport` settings: the
/// misbehaving replicas below are built on it.
fn bare_server(pki: &DevPki, transport: quinn::TransportConfig) -> quinn::Endpoint {
    let tls = server_config(
        pki.server_cert_pem.as_bytes(),
        pki.server_key_pem.as_bytes(),
        None,
    )
    .unwrap();
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap()
}

/// A server that reads every request and resets its answer stream.
async fn resetting_server(pki: &DevPki) -> SocketAddr {
    resetting_server_with(pki, 7).await
}

/// [`resetting_server`], resetting with `code`.
async fn resetting_server_with(pki: &DevPki, code: u32) -> SocketAddr {
    let endpoint = bare_server(pki, quinn::TransportConfig::default());
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let _ = recv.read_to_end(1 << 24).await;
                    let _ = send.reset(quinn::VarInt::from_u32(code));
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_resets_its_streams_is_skipped() {
    let k = keys();
    let good = start(
        TestBackend::new(snapshot(1, &k, true)),
        ServerOptions::default(),
        false,
    );
    let bad = resetting_server(&good.pki).await;
    let c = pool_client(&good.pki, vec![bad, good.addr]);
    c.connect_all().await.unwrap();
    let hs = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    for _ in 0..20 {
        let got = c
            .verify_all(&[item(Some(&hs), "t"), item(Some(&hs), "t")])
            .await;
        assert_once(&got.unwrap(), 2, Reason::Ok);
    }
    let stats = c.stats();
    assert!(stats.retries >= 1, "{stats:?}");
    assert!(stats.endpoints[0].failures >= 1, "{stats:?}");
    assert!(stats.endpoints[0].ejections >= 1, "{stats:?}");

    // Alone, the resetting replica's failure is typed and retryable.
    let alone = pool_client(&good.pki, vec![bad]);
    let err = alone.verify_all(&[item(Some(&hs), "t")]).await.unwrap_err();
    assert!(err.retryable(), "{err}");
    assert_eq!(err.endpoint(), Some(bad));
    assert_eq!(err.kind(), "connection", "{err}");
    good.stop().await;
}

/// A batch whose primary sits on a replica that died silently, and whose hedge
/// fails at once (here: a replica that resets its streams), is copied again
/// one hedge delay on to the replica left; before, the copy on the dead
/// replica was not looked at again and the batch ran out its whole deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_hedge_leaves_the_last_copy_watched() {
    let k = keys();
    let pki = DevPki::generate().unwrap();
    let dead = replica(&k, &pki);
    let relay = Relay::start(dead.addr).await;
    let resetting = resetting_server(&pki).await;
    let good = replica(&k, &pki);
    let tls = client_config(pki.ca_pem.as_bytes(), None).unwrap();
    let mut opts = ClientOptions::new(vec![relay.addr, resetting, good.addr], tls);
    opts.batch_timeout = Duration::from_secs(6);
    // Neither the dead replica's liveness check nor its connection's idle
    // timeout ends its copy within the test: only a new copy can decide the
    // batch in time (before, the batch waited out the idle timeout, 3 s by
    // default, with the defaults below).
    opts.dead_after = Duration::from_secs(5);
    opts.idle_timeout = Duration::from_secs(5);
    opts.hedge.min_delay = Duration::from_millis(30);
    opts.hedge.max_delay = Duration::from_millis(30);
    opts.hedge.budget = 1.0;
    let c = Arc::new(Client::new(opts).unwrap());
    c.connect_all().await.unwrap();
    relay.cut();
    let hs = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let started = std::time::Instant::now();
    // The first batch goes to the first endpoint, its hedge to the second.
    let got = c
        .verify_all(&[item(Some(&hs), "t"), item(Some(&hs), "t")])
        .await
        .expect("the third replica decides the batch");
    let took = started.elapsed();
    assert_once(&got, 2, Reason::Ok);
    // Generous against a shared machine; without the re-armed hedge the batch
    // was decided only when the dead connection's idle timeout (5 s) ended it.
    assert!(took < Duration::from_secs(3), "{took:?}");
    let stats = c.stats();
    assert_eq!(stats.endpoints[0].sent, 1, "{stats:?}");
    assert_eq!(stats.endpoints[1].sent, 1, "{stats:?}");
    assert!(stats.endpoints[1].ejections >= 1, "{stats:?}");
    assert_eq!(stats.endpoints[2].sent, 1, "{stats:?}");
    good.stop().await;
}

/// A server that completes every handshake and keeps the connection alive but
/// grants no stream: a replica whose streams are all stuck.
async fn streamless_server(pki: &DevPki) -> SocketAddr {
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(0u32.into());
    let endpoint = bare_server(pki, transport);
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(incoming) = endpoint.accept().await {
            if let Ok(conn) = incoming.await {
                held.push(conn);
            }
        }
    });
    addr
}

/// A replica that accepts connections but never grants a stream takes half of
/// what remains of a batch's deadline at most, then is ejected and the batch
/// goes to the next one; before, the wait for a stream took the whole deadline
/// and the batch failed with a timeout though a healthy replica was up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_grants_no_stream_is_left_for_the_next() {
    let k = keys();
    let good = start(
        TestBackend::new(snapshot(1, &k, true)),
        ServerOptions::default(),
        false,
    );
    let stuck = streamless_server(&good.pki).await;
    let tls = client_config(good.pki.ca_pem.as_bytes(), None).unwrap();
    let mut opts = ClientOptions::new(vec![stuck, good.addr], tls);
    opts.batch_timeout = Duration::from_secs(2);
    opts.hedge.enabled = false;
    let c = Arc::new(Client::new(opts).unwrap());
    c.connect_all().await.unwrap();
    let hs = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    for _ in 0..3 {
        let got = c
            .verify_all(&[item(Some(&hs), "t"), item(Some(&hs), "t")])
            .await
            .expect("the healthy replica answers");
        assert_once(&got, 2, Reason::Ok);
    }
    let stats = c.stats();
    assert!(stats.endpoints[0].failures >= 1, "{stats:?}");
    assert!(stats.endpoints[0].ejections >= 1, "{stats:?}");
    assert_eq!(stats.endpoints[0].sent, 0, "{stats:?}");
    good.stop().await;
}

/// A hedge sent to a replica that grants no stream gets one hedge delay to
/// open, then the batch goes back to reading its primary: before, the hedge
/// waited for a stream for the whole remaining deadline while the primary's
/// answer sat unread, and the batch failed with a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedge_that_cannot_open_does_not_hold_up_the_primary() {
    let k = keys();
    // The primary holds its one item (an unknown kid of a JWKS tenant) until
    // the gate opens: an answer that comes, but after the hedge delay.
    let (slow, open) = start_held(&k);
    let stuck = streamless_server(&slow.pki).await;
    let tls = client_config(slow.pki.ca_pem.as_bytes(), None).unwrap();
    let mut opts = ClientOptions::new(vec![slow.addr, stuck], tls);
    opts.batch_timeout = Duration::from_secs(6);
    opts.hedge.min_delay = Duration::from_millis(30);
    opts.hedge.max_delay = Duration::from_millis(30);
    opts.hedge.budget = 1.0;
    let c = Arc::new(Client::new(opts).unwrap());
    c.connect_all().await.unwrap();
    let held = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let started = std::time::Instant::now();
    let batch = tokio::spawn({
        let c = Arc::clone(&c);
        async move { c.verify_all(&[item(Some(&held), "jwks")]).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    open.send(true).unwrap();
    let got = batch
        .await
        .unwrap()
        .expect("the primary's answer is read though the hedge could not open");
    assert_eq!(got.len(), 1);
    let took = started.elapsed();
    // Generous against a shared machine; without the bound the batch ran out
    // its 6 s deadline.
    assert!(took < Duration::from_secs(3), "{took:?}");
    let stats = c.stats();
    assert_eq!(
        stats.endpoints[0].sent, 1,
        "the primary was the gated replica: {stats:?}"
    );
    // A replica only slower than one hedge delay to grant a stream is not
    // counted as failing for it.
    assert_eq!(stats.endpoints[1].failures, 0, "{stats:?}");
    slow.stop().await;
}

/// A hedge that could not be sent (its replica granted no stream in time)
/// gives its credit back and is tried again on the next replica: before, the
/// credit was spent and, with the budget drained, the held primary kept the
/// batch until its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedge_that_could_not_be_sent_costs_no_credit() {
    let k = keys();
    // The primary holds its one item until the batch is over.
    let (slow, _open) = start_held(&k);
    let stuck = streamless_server(&slow.pki).await;
    let good = replica(&k, &slow.pki);
    let tls = client_config(slow.pki.ca_pem.as_bytes(), None).unwrap();
    let mut opts = ClientOptions::new(vec![slow.addr, stuck, good.addr], tls);
    opts.batch_timeout = Duration::from_secs(6);
    opts.hedge.min_delay = Duration::from_millis(30);
    opts.hedge.max_delay = Duration::from_millis(30);
    // One credit, none earned: the only hedge this client may ever send.
    opts.hedge.budget = 0.0;
    opts.hedge.burst = 1;
    let c = Arc::new(Client::new(opts).unwrap());
    // The stuck replica's connect succeeds (it completes handshakes).
    c.connect_all().await.unwrap();
    let held = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let started = std::time::Instant::now();
    // The first batch goes to the first endpoint, its hedge to the second
    // (no stream), then to the third.
    let got = c
        .verify_all(&[item(Some(&held), "jwks")])
        .await
        .expect("the third replica decides the batch");
    let took = started.elapsed();
    // The third replica knows the key (the first holds the item for a refetch).
    assert_once(&got, 1, Reason::Ok);
    assert!(took < Duration::from_secs(3), "{took:?}");
    let stats = c.stats();
    assert_eq!(stats.hedges, 1, "{stats:?}");
    assert_eq!(stats.endpoints[1].sent, 0, "{stats:?}");
    assert_eq!(stats.endpoints[2].sent, 1, "{stats:?}");
    good.stop().await;
}

/// A pool whose only replica drops every packet (a socket that never reads),
/// with batch deadlines shorter than `connect_timeout`, as the gateway's checks
/// are by default: the connect still runs to its end and ejects the endpoint,
/// so the failure is counted and the next batches fail at once (fail closed or
/// open without waiting out each deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_pool_is_ejected_though_every_batch_gives_up_first() {
    let k = keys();
    let pki = DevPki::generate().unwrap();
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let tls = client_config(pki.ca_pem.as_bytes(), None).unwrap();
    let mut opts = ClientOptions::new(vec![silent.local_addr().unwrap()], tls);
    opts.batch_timeout = Duration::from_millis(300);
    opts.connect_timeout = Duration::from_millis(800);
    opts.backoff_min = Duration::from_secs(30);
    opts.backoff_max = Duration::from_secs(30);
    let c = Arc::new(Client::new(opts).unwrap());
    let hs = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let err = c.verify_all(&[item(Some(&hs), "t")]).await.unwrap_err();
    assert_eq!(err.kind(), "timeout", "{err}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while c.stats().endpoints[0].ejections == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the connect never ended: {:?}",
            c.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Refused as unavailable (at once), not cut off by the deadline.
    let err = c.verify_all(&[item(Some(&hs), "t")]).await.unwrap_err();
    assert!(err.retryable(), "{err}");
    assert_eq!(err.kind(), "unavailable", "{err}");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_replica_sends_its_new_batches_elsewhere() {
    let k = keys();
    let pki = DevPki::generate().unwrap();
    let (open, gate) = watch::channel(false);
    let draining = start_with(
        TestBackend::gated(snapshot(1, &k, true), gate),
        holding(),
        false,
        pki.clone(),
    );
    let other = replica(&k, &pki);
    let c = pool_client(&pki, vec![draining.addr, other.addr]);
    c.connect_all().await.unwrap();
    let hs = Arc::new(k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap());
    let es = Arc::new(k.es.mint(Some("zz"), &claims("a", NOW + 60)).unwrap());
    // A batch held in flight on the first replica (an unknown kid of the
    // JWKS tenant waits for its refetch), so its drain takes a while.
    let held = {
        let (c, es) = (Arc::clone(&c), Arc::clone(&es));
        tokio::spawn(async move { c.verify_all(&[item(Some(&es), "jwks")]).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stopping = tokio::spawn(draining.stop());
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Batches sent during the drain: none fails.
    for _ in 0..20 {
        let got = c.verify_all(&[item(Some(&hs), "t")]).await.unwrap();
        assert_once(&got, 1, Reason::Ok);
    }
    open.send(true).unwrap();
    let got = held.await.unwrap().unwrap();
    assert_once(&got, 1, Reason::UnknownKid);
    assert!(stopping.await.unwrap().complete);
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_no_server_will_take_fails_once_with_a_typed_error() {
    let k = keys();
    let opts = ServerOptions {
        limits: jotd_transport::Limits {
            max_items: 2,
            ..jotd_transport::Limits::default()
        },
        max_tokens_in_flight: std::num::NonZeroUsize::new(2).unwrap(),
        ..ServerOptions::default()
    };
    let a = start(TestBackend::new(snapshot(1, &k, true)), opts.clone(), false);
    let b = start_with(
        TestBackend::new(snapshot(1, &k, true)),
        opts,
        false,
        a.pki.clone(),
    );
    let c = pool_client(&a.pki, vec![a.addr, b.addr]);
    let hs = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let items: Vec<Item<'_>> = (0..3).map(|_| item(Some(&hs), "t")).collect();
    let err = c.verify_all(&items).await.unwrap_err();
    match &err {
        ClientError::Server { code, .. } => assert_eq!(*code, ErrorCode::TooManyItems as u16),
        e => panic!("{e:?}"),
    }
    assert!(!err.retryable());
    assert_eq!(
        c.stats().retries,
        0,
        "not sent again: no server would take it"
    );
    // Asked again after its error, a batch gives the same error: its copy
    // is not read again (its end would read as a replica leaving items
    // undecided, a protocol violation that ejects a replica that answered
    // correctly) and it is not sent anywhere else.
    let mut pending = c.verify(&items).await.unwrap();
    let first = pending.next().await.expect("an error").unwrap_err();
    assert_eq!(first, err);
    let again = pending.next().await.expect("the same error").unwrap_err();
    assert_eq!(again, err);
    let stats = c.stats();
    assert_eq!(stats.protocol_violations, 0, "{stats:?}");
    assert!(
        stats.endpoints.iter().all(|e| e.ejections == 0),
        "{stats:?}"
    );
    a.stop().await;
    b.stop().await;
}

/// A resolver the test rewrites: what a headless Service's DNS answer does
/// as pods come and go.
#[derive(Default)]
struct FakeDns(std::sync::Mutex<Vec<SocketAddr>>);

impl jotd_transport::Resolve for FakeDns {
    fn resolve(&self, _name: &str) -> jotd_transport::ResolveFuture {
        let addrs = self.0.lock().unwrap().clone();
        Box::pin(async move { Ok(addrs) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_added_to_and_removed_from_the_name_are_followed() {
    let k = keys();
    let pki = DevPki::generate().unwrap();
    let a = replica(&k, &pki);
    let b = replica(&k, &pki);
    let dns = Arc::new(FakeDns::default());
    dns.0.lock().unwrap().push(a.addr);
    let tls = client_config(pki.ca_pem.as_bytes(), None).unwrap();
    let mut opts = ClientOptions::new(vec![], tls);
    opts.names = vec!["jotd-headless.test.svc:4433".into()];
    opts.resolve_interval = Duration::from_millis(100);
    opts.resolver = Arc::clone(&dns) as Arc<dyn jotd_transport::Resolve>;
    let c = Client::new(opts).unwrap();
    let hs = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let batch = [item(Some(&hs), "t")];
    // Batches sent to an address, as the client counted them when it sent.
    let sent_to = |addr: SocketAddr| -> u64 {
        c.stats()
            .endpoints
            .iter()
            .filter(|e| e.addr == addr)
            .map(|e| e.sent)
            .sum()
    };
    // Only A is in the name's answer.
    for _ in 0..10 {
        assert_once(&c.verify_all(&batch).await.unwrap(), 1, Reason::Ok);
    }
    assert_eq!((sent_to(a.addr), sent_to(b.addr)), (10, 0));
    // B joins the answer: within two resolution intervals it gets batches.
    dns.0.lock().unwrap().push(b.addr);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..20 {
        assert_once(&c.verify_all(&batch).await.unwrap(), 1, Reason::Ok);
    }
    assert!(sent_to(b.addr) > 0, "the added replica serves");
    // A leaves the answer: after two intervals it gets nothing new.
    dns.0.lock().unwrap().retain(|x| *x != a.addr);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..10 {
        assert_once(&c.verify_all(&batch).await.unwrap(), 1, Reason::Ok);
    }
    // The removed replica's slot left the client with its counters; the one
    // left is B's.
    let stats = c.stats();
    assert_eq!(stats.endpoints.len(), 1, "{stats:?}");
    assert_eq!(stats.endpoints[0].addr, b.addr);
    // An empty answer (a resolver hiccup) is a failed lookup: B stays and
    // serves (the pool was emptied until the next round).
    dns.0.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_millis(250)).await;
    for _ in 0..5 {
        assert_once(&c.verify_all(&batch).await.unwrap(), 1, Reason::Ok);
    }
    assert_eq!(c.stats().endpoints.len(), 1);
    a.stop().await;
    b.stop().await;
}

/// `verify_frame` with a frame that is not what the call says (another
/// request id, another item count, a cut frame) is the caller's mistake: it
/// is refused before anything is sent, and no replica is blamed or ejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_is_not_what_the_call_says_is_refused_before_it_is_sent() {
    let k = keys();
    let pki = DevPki::generate().unwrap();
    let a = replica(&k, &pki);
    let c = pool_client(&pki, vec![a.addr]);
    let hs = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let mut frame = Vec::new();
    jotd_transport::encode_batch(
        &jotd_transport::BatchRequest {
            request_id: 7,
            items: vec![item(Some(&hs), "t"), item(Some(&hs), "t")],
        },
        &mut frame,
    )
    .unwrap();
    for (bytes, id, n) in [
        (&frame[..], 8, 2),
        (&frame[..], 7, 3),
        (&frame[..], 7, 1),
        (&frame[..frame.len() - 1], 7, 2),
        (&frame[4..], 7, 2),
    ] {
        match c.verify_frame(bytes, id, n).await {
            Err(ClientError::Config(why)) => assert!(why.contains("verify_frame"), "{why}"),
            other => panic!("{id} {n}: {:?}", other.map(|_| ())),
        }
    }
    let stats = c.stats();
    assert_eq!((stats.ejections, stats.retries), (0, 0), "{stats:?}");
    assert!(stats.endpoints.iter().all(|e| e.sent == 0), "{stats:?}");
    // The right call goes through.
    let mut p = c.verify_frame(&frame, 7, 2).await.unwrap();
    let mut decided = 0;
    while p
        .next_chunk(|chunk| decided += chunk.decisions.len())
        .await
        .unwrap()
    {}
    assert_eq!(decided, 2);
    a.stop().await;
}

/// A name that resolves to an IPv6 replica, and a list that names an IPv4
/// replica first and an IPv6 one after: the client's one socket reaches both
/// (an IPv4 socket refuses every IPv6 address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_replicas_are_reached_by_name_and_after_an_ipv4_one() {
    let k = keys();
    let pki = DevPki::generate().unwrap();
    let v6 = start_at(
        "[::1]:0".parse().unwrap(),
        TestBackend::new(snapshot(1, &k, true)),
        ServerOptions::default(),
        false,
        pki.clone(),
    );
    let v4 = replica(&k, &pki);
    let hs = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let batch = [item(Some(&hs), "t")];
    let tls = client_config(pki.ca_pem.as_bytes(), None).unwrap();
    // By name only.
    let dns = Arc::new(FakeDns::default());
    dns.0.lock().unwrap().push(v6.addr);
    let mut opts = ClientOptions::new(vec![], tls.clone());
    opts.names = vec!["jotd-headless.test.svc:4433".into()];
    opts.resolver = Arc::clone(&dns) as Arc<dyn jotd_transport::Resolve>;
    let c = Client::new(opts).unwrap();
    assert_once(&c.verify_all(&batch).await.unwrap(), 1, Reason::Ok);
    // IPv4 first, IPv6 second: both serve.
    let c = Client::new(ClientOptions::new(vec![v4.addr, v6.addr], tls)).unwrap();
    // Until both have served (a slot still connecting is passed over), or 5 s.
    let by = std::time::Instant::now() + Duration::from_secs(5);
    let served = || c.stats().endpoints.iter().all(|e| e.sent > 0);
    while !served() && std::time::Instant::now() < by {
        assert_once(&c.verify_all(&batch).await.unwrap(), 1, Reason::Ok);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent: Vec<u64> = c.stats().endpoints.iter().map(|e| e.sent).collect();
    assert!(
        sent.iter().all(|&n| n > 0),
        "both replicas served: {sent:?}"
    );
    assert_eq!(c.stats().ejections, 0);
    v6.stop().await;
    v4.stop().await;
}

/// A hedge refused for what the batch is (`too_many_items` at a replica with
/// a smaller limit, as during a rolling config change) does not throw away
/// the primary still in flight: the batch fails only when no copy can decide it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedge_refused_for_its_size_leaves_the_primary_to_decide() {
    let k = keys();
    let (slow, open, _small, c) = held_and_small(&k, Duration::from_secs(6)).await;
    let held = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let batch = tokio::spawn({
        let c = Arc::clone(&c);
        async move {
            c.verify_all(&[
                item(Some(&held), "jwks"),
                item(Some(&held), "jwks"),
                item(Some(&held), "jwks"),
            ])
            .await
        }
    });
    // Past the hedge delay and the small replica's refusal.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while c.stats().hedges == 0 && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(c.stats().hedges, 1, "a hedge went to the small replica");
    tokio::time::sleep(Duration::from_millis(200)).await;
    open.send(true).unwrap();
    let got = batch
        .await
        .unwrap()
        .expect("the primary decides though the hedge was refused");
    assert_eq!(got.len(), 3);
    let stats = c.stats();
    assert_eq!(
        stats.endpoints[0].sent, 1,
        "the primary was the gated replica: {stats:?}"
    );
    slow.stop().await;
}

/// Two replicas that decide one token differently (here the second holds
/// other keys: a stale rotation): the late copy's decisions are still dropped
/// (the first stands), and those that differ are counted as disagreements, so
/// a harness or an operator sees the split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_answers_that_disagree_are_counted() {
    let (got, stats) = hedged_past_a_slow_replica(&keys(), &keys()).await;
    assert_eq!(
        got[0].reason(),
        Some(Reason::Ok),
        "the first decision stands"
    );
    assert_eq!(stats.late_duplicates, 3, "{stats:?}");
    assert_eq!(stats.late_disagreements, 3, "{stats:?}");
}

/// When the copy left after a refusal for size fails too (here it runs out of
/// time), the batch's error is the refusal: a caller retrying on a timeout
/// would retry a batch that can never fit that replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_for_size_is_the_error_when_the_other_copy_fails_too() {
    let k = keys();
    let (_slow, _gate, _small, c) = held_and_small(&k, Duration::from_secs(1)).await;
    let held = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let items = [
        item(Some(&held), "jwks"),
        item(Some(&held), "jwks"),
        item(Some(&held), "jwks"),
    ];
    let e = c.verify_all(&items).await.unwrap_err();
    assert!(
        matches!(e, ClientError::Server { code, .. } if code == ErrorCode::TooManyItems as u16),
        "{e:?}"
    );
    assert_eq!(c.stats().hedges, 1);
}

/// Two replicas and a client hedging after 30 ms: the first (the primary of
/// the first batch) holds items of the `jwks` tenant until its gate opens;
/// the second takes at most two items a batch.
async fn held_and_small(
    k: &Keys,
    batch_timeout: Duration,
) -> (Running, watch::Sender<bool>, Running, Arc<Client>) {
    let (slow, open) = start_held(k);
    let small = start_with(
        TestBackend::new(snapshot(1, k, false)),
        ServerOptions {
            limits: jotd_transport::Limits {
                max_items: 2,
                ..jotd_transport::Limits::default()
            },
            ..ServerOptions::default()
        },
        false,
        slow.pki.clone(),
    );
    let tls = client_config(slow.pki.ca_pem.as_bytes(), None).unwrap();
    let mut opts = ClientOptions::new(vec![slow.addr, small.addr], tls);
    opts.batch_timeout = batch_timeout;
    opts.hedge.min_delay = Duration::from_millis(30);
    opts.hedge.max_delay = Duration::from_millis(30);
    opts.hedge.budget = 1.0;
    let c = Arc::new(Client::new(opts).unwrap());
    c.connect_all().await.unwrap();
    (slow, open, small, c)
}

/// A replica that answers `overloaded`, and another that is up but not yet
/// connected: the batch connects to the other and is answered. Before, the
/// other only got a background reconnect (the first still counted as up),
/// the batch failed at once with time left, and as `unavailable`, hiding
/// the `overloaded` that caused it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_replica_fails_over_to_one_not_yet_connected() {
    let k = keys();
    let pki = DevPki::generate().unwrap();
    let (_open, gate) = watch::channel(false);
    let busy = start_with(
        TestBackend::gated(snapshot(1, &k, false), gate),
        ServerOptions {
            max_tokens_in_flight: std::num::NonZeroUsize::new(1).unwrap(),
            overload_wait: Duration::from_millis(1),
            ..holding()
        },
        false,
        pki.clone(),
    );
    let spare = start_with(
        TestBackend::new(snapshot(1, &k, false)),
        ServerOptions::default(),
        false,
        pki.clone(),
    );
    let tls = client_config(pki.ca_pem.as_bytes(), None).unwrap();
    // Another client takes the busy replica's one token slot with a held check.
    let filler = Arc::new(Client::new(ClientOptions::new(vec![busy.addr], tls.clone())).unwrap());
    let hs = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let held = {
        let filler = Arc::clone(&filler);
        tokio::spawn(async move { filler.verify_all(&[item(Some(&hs), "jwks")]).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished());
    // The busy replica first (connected by this batch, as the first slot),
    // then the spare, whose connection nothing has opened yet.
    let mut opts = ClientOptions::new(vec![busy.addr, spare.addr], tls);
    opts.hedge.enabled = false;
    let c = Client::new(opts).unwrap();
    let es = k.es.mint(Some("es"), &claims("b", NOW + 60)).unwrap();
    let got = c.verify_all(&[item(Some(&es), "t")]).await;
    let stats = c.stats();
    let got = got.unwrap_or_else(|e| panic!("{e} ({}): {stats:?}", e.kind()));
    assert_once(&got, 1, Reason::Ok);
    assert_eq!(stats.endpoints[0].failures, 1, "overloaded once: {stats:?}");
    assert_eq!(stats.endpoints[1].sent, 1, "{stats:?}");
    held.abort();
}

/// A replica that resets answers because its answer buffer is full (code 4)
/// is busy, not broken: counted, not ejected (a load spike ejected every
/// replica in turn).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_out_of_answer_room_is_counted_not_ejected() {
    let k = keys();
    let good = start(
        TestBackend::new(snapshot(1, &k, true)),
        ServerOptions::default(),
        false,
    );
    let busy = resetting_server_with(&good.pki, jotd_transport::RESET_ANSWER_BUFFER_FULL).await;
    let c = pool_client(&good.pki, vec![busy, good.addr]);
    c.connect_all().await.unwrap();
    let hs = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    for _ in 0..10 {
        let got = c.verify_all(&[item(Some(&hs), "t")]).await;
        assert_once(&got.unwrap(), 1, Reason::Ok);
    }
    let stats = c.stats();
    assert!(stats.endpoints[0].failures >= 1, "{stats:?}");
    assert_eq!(stats.endpoints[0].ejections, 0, "{stats:?}");
    good.stop().await;
}

/// A server that takes streams and never reads them, with a receive window
/// of 1 KiB: a larger request's write blocks on flow control for ever (a
/// frozen replica whose connection stays up).
fn unread_server(pki: &DevPki) -> SocketAddr {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(quinn::VarInt::from_u32(1024))
        .receive_window(quinn::VarInt::from_u32(1024));
    let endpoint = bare_server(pki, t);
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let mut held = Vec::new();
                while let Ok(stream) = conn.accept_bi().await {
                    held.push(stream);
                }
            });
        }
    });
    addr
}

/// A request write that stalls gets half of what remains while another
/// replica is left, then its replica is counted failed and ejected and the
/// batch goes on; before, it took the whole deadline and failed the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_stops_reading_requests_is_left_for_the_next() {
    let k = keys();
    let good = start(
        TestBackend::new(snapshot(1, &k, true)),
        ServerOptions::default(),
        false,
    );
    let frozen = unread_server(&good.pki);
    let tls = client_config(good.pki.ca_pem.as_bytes(), None).unwrap();
    let mut opts = ClientOptions::new(vec![frozen, good.addr], tls);
    opts.batch_timeout = Duration::from_secs(4);
    opts.hedge.enabled = false;
    let c = Client::new(opts).unwrap();
    c.connect_all().await.unwrap();
    let sub = "s".repeat(300);
    let hs = k.hs.mint(Some("hs"), &claims(&sub, NOW + 60)).unwrap();
    let items: Vec<Item<'_>> = (0..40).map(|_| item(Some(&hs), "t")).collect();
    let got = c
        .verify_all(&items)
        .await
        .expect("decided by the other replica");
    assert_once(&got, 40, Reason::Ok);
    let stats = c.stats();
    let frozen_stats = stats.endpoints.iter().find(|e| e.addr == frozen).unwrap();
    assert!(
        frozen_stats.failures >= 1 && frozen_stats.ejections >= 1,
        "{stats:?}"
    );
    good.stop().await;
}

/// A server that answers every request with an empty `Decisions` frame,
/// then finishes.
async fn empty_chunk_server(pki: &DevPki) -> SocketAddr {
    let endpoint = bare_server(pki, quinn::TransportConfig::default());
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let Ok(req) = recv.read_to_end(1 << 24).await else {
                        return;
                    };
                    let batch =
                        jotd_transport::decode_batch(&req[5..], &jotd_transport::Limits::default())
                            .unwrap();
                    let mut out = Vec::new();
                    jotd_transport::encode_decisions(
                        &jotd_transport::DecisionChunk {
                            request_id: batch.request_id,
                            decisions: Vec::new(),
                        },
                        &mut out,
                    )
                    .unwrap();
                    let _ = send.write_all(&out).await;
                    let _ = send.finish();
                }
            });
        }
    });
    addr
}

/// A `Decisions` frame with no decision is a protocol violation (it counted
/// as progress, keeping a replica that decides nothing from ejection); the
/// batch goes to the next replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_decisions_frame_is_a_protocol_violation() {
    let k = keys();
    let good = start(
        TestBackend::new(snapshot(1, &k, true)),
        ServerOptions::default(),
        false,
    );
    let empty = empty_chunk_server(&good.pki).await;
    let c = pool_client(&good.pki, vec![empty, good.addr]);
    c.connect_all().await.unwrap();
    let hs = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let got = c.verify_all(&[item(Some(&hs), "t")]).await;
    assert_once(&got.unwrap(), 1, Reason::Ok);
    let stats = c.stats();
    assert!(stats.protocol_violations >= 1, "{stats:?}");
    let alone = pool_client(&good.pki, vec![empty]);
    let err = alone.verify_all(&[item(Some(&hs), "t")]).await.unwrap_err();
    assert!(err.to_string().contains("no decision"), "{err}");
    good.stop().await;
}
