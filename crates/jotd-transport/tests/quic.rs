//! The QUIC server and client over loopback: decisions, limits, refusals,
//! vanishing clients, reloads at batch boundaries, drain, refetch on unknown kid.

mod support;

use jotd_core::{Algorithm, Engine, EngineConfig, Reason, SigningKey, Snapshot, Tenant};
use jotd_transport::{
    Client, ClientError, ClientOptions, ErrorCode, Item, Limits, Server, ServerOptions,
    client_config, client_config_alpn, server_config,
};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::*;
use tokio::sync::oneshot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_batch_gets_one_right_decision_per_item() {
    let k = keys();
    let backend = TestBackend::new(snapshot(1, &k, true));
    let r = start(backend, ServerOptions::default(), false);
    let c = client(&r, vec![r.addr], false);
    let good = k.es.mint(Some("es"), &claims("alice", NOW + 60)).unwrap();
    let good_hs = k.hs.mint(Some("hs"), &claims("bob", NOW + 60)).unwrap();
    let expired = k.es.mint(Some("es"), &claims("carol", NOW - 600)).unwrap();
    let unknown = k.es.mint(Some("nope"), &claims("dave", NOW + 60)).unwrap();
    // Flip one character inside the signature (not the last: its trailing bits
    // would make it non-canonical base64, which is `malformed`).
    let mut bad_sig = good.clone().into_bytes();
    let at = bad_sig.len() - 10;
    bad_sig[at] = if bad_sig[at] == b'A' { b'B' } else { b'A' };
    let bad_sig = String::from_utf8(bad_sig).unwrap();
    let items = vec![
        item(Some(&good), "t"),
        item(Some(&good_hs), "t"),
        item(Some(&expired), "t"),
        item(Some(&unknown), "t"),
        item(Some(&bad_sig), "t"),
        item(Some("not.a.jwt"), "t"),
        item(None, "t"),
        item(Some(&good), "who"),
    ];
    let got = c.verify_all(&items).await.unwrap();
    let reasons: Vec<_> = got.iter().map(|d| d.reason().unwrap()).collect();
    assert_eq!(
        reasons,
        [
            Reason::Ok,
            Reason::Ok,
            Reason::Expired,
            Reason::UnknownKid,
            Reason::BadSignature,
            Reason::Malformed,
            Reason::MissingToken,
            Reason::UnknownTenant,
        ]
    );
    assert!(got[0].allow && !got[2].allow);
    assert_eq!(got[0].sub.as_deref(), Some("alice"));
    assert_eq!(got[1].kid.as_deref(), Some("hs"));

    // The streaming form yields each index once.
    let mut pending = c.verify(&items).await.unwrap();
    let mut seen = vec![0; items.len()];
    while let Some(d) = pending.next().await {
        let (i, d) = d.unwrap();
        seen[i as usize] += 1;
        assert_eq!(d.reason().unwrap(), reasons[i as usize]);
    }
    assert_eq!(seen, vec![1; items.len()]);
    let report = r.stop().await;
    assert!(report.complete);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_streams_and_the_size_extremes() {
    let k = keys();
    let backend = TestBackend::new(snapshot(1, &k, true));
    let r = start(backend, ServerOptions::default(), false);
    let c = Arc::new(client(&r, vec![r.addr], false));
    let tokens: Vec<String> = (0..64)
        .map(|i| {
            k.hs.mint(Some("hs"), &claims(&format!("u{i}"), NOW + 60))
                .unwrap()
        })
        .collect();
    let tokens = Arc::new(tokens);
    let mut tasks = Vec::new();
    for s in 0..1000usize {
        let c = Arc::clone(&c);
        let tokens = Arc::clone(&tokens);
        tasks.push(tokio::spawn(async move {
            let n = 1 + s % 8;
            let items: Vec<Item<'_>> = (0..n)
                .map(|i| item(Some(&tokens[(s + i) % 64]), "t"))
                .collect();
            let got = c.verify_all(&items).await.unwrap();
            assert_eq!(got.len(), n);
            assert!(got.iter().all(|d| d.allow));
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, (0..1000).map(|s| 1 + s % 8).sum::<usize>());

    // One item, and the maximum.
    let one = c.verify_all(&[item(Some(&tokens[0]), "t")]).await.unwrap();
    assert_eq!(one.len(), 1);
    let max = Limits::default().max_items;
    let items: Vec<Item<'_>> = (0..max).map(|i| item(Some(&tokens[i % 64]), "t")).collect();
    let got = c.verify_all(&items).await.unwrap();
    assert_eq!(got.len(), max);
    assert!(got.iter().all(|d| d.reason() == Some(Reason::Ok)));
    // One more than the maximum fails as a whole.
    let mut over = items.clone();
    over.push(item(Some(&tokens[0]), "t"));
    match c.verify_all(&over).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::TooManyItems as u16),
        other => panic!("{other:?}"),
    }
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_gets_an_error_and_the_connection_keeps_serving() {
    let k = keys();
    let backend = TestBackend::new(snapshot(1, &k, true));
    let opts = ServerOptions {
        limits: Limits {
            max_frame_bytes: 64 << 10,
            ..Limits::default()
        },
        ..ServerOptions::default()
    };
    let r = start(backend, opts, false);
    let c = client(&r, vec![r.addr], false);
    let big = "x".repeat(100 << 10);
    let good = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let small_items = [item(Some(&good), "t")];
    let large_items = [item(Some(&big), "t")];
    let (small, large) = tokio::join!(c.verify_all(&small_items), c.verify_all(&large_items));
    assert!(small.unwrap()[0].allow);
    match large {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::FrameTooLarge as u16),
        other => panic!("{other:?}"),
    }
    // The same connection still serves.
    let again = c.verify_all(&[item(Some(&good), "t")]).await.unwrap();
    assert!(again[0].allow);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_alpn_and_missing_client_certificates_are_refused() {
    let k = keys();
    let backend = TestBackend::new(snapshot(1, &k, true));
    let r = start(Arc::clone(&backend), ServerOptions::default(), true);
    let good = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let items = [item(Some(&good), "t")];

    // With a client certificate: served.
    let with = client(&r, vec![r.addr], true);
    assert!(with.verify_all(&items).await.unwrap()[0].allow);

    // Without: refused at the handshake.
    let without = client(&r, vec![r.addr], false);
    let err = without.verify_all(&items).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Unavailable { .. } | ClientError::Connection { .. }
        ),
        "{err:?}"
    );
    assert_eq!(err.endpoint(), Some(r.addr), "{err}");

    // Wrong ALPN (with a valid certificate): refused.
    let tls = client_config_alpn(
        r.pki.ca_pem.as_bytes(),
        Some((
            r.pki.client_cert_pem.as_bytes(),
            r.pki.client_key_pem.as_bytes(),
        )),
        &[b"h3"],
    )
    .unwrap();
    let wrong = Client::new(ClientOptions::new(vec![r.addr], tls)).unwrap();
    let err = wrong.verify_all(&items).await.unwrap_err();
    assert!(matches!(err, ClientError::Unavailable { .. }), "{err:?}");
    // The server counts a refusal when its side of the handshake ends, which
    // may be just after the client has seen the error.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while backend.handshake_refusals.load(Ordering::SeqCst) < 2
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(backend.handshake_refusals.load(Ordering::SeqCst) >= 2);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_mid_batch_leaks_nothing() {
    let k = keys();
    let backend = TestBackend::new(snapshot(1, &k, true));
    let opts = ServerOptions {
        idle_timeout: Duration::from_secs(2),
        keep_alive: Duration::from_millis(500),
        ..ServerOptions::default()
    };
    let r = start(backend, opts, false);
    // A raw quinn client: open a stream, write half a frame, vanish.
    let tls = client_config(r.pki.ca_pem.as_bytes(), None).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = endpoint
        .connect(r.addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 0, 1, 0, 1, 7, 7]).await.unwrap();
    // A second stream with a whole batch whose answer nobody reads.
    let tokens: Vec<String> = (0..256)
        .map(|i| {
            k.es.mint(Some("es"), &claims(&format!("{i}"), NOW + 60))
                .unwrap()
        })
        .collect();
    let items: Vec<Item<'_>> = tokens.iter().map(|t| item(Some(t), "t")).collect();
    let mut frame = Vec::new();
    jotd_transport::encode_batch(
        &jotd_transport::BatchRequest {
            request_id: 9,
            items,
        },
        &mut frame,
    )
    .unwrap();
    let (mut send2, _recv2) = conn.open_bi().await.unwrap();
    send2.write_all(&frame).await.unwrap();
    send2.finish().unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Vanish without a goodbye: drop the endpoint's socket.
    drop((send, send2, _recv, _recv2));
    drop(conn);
    drop(endpoint);
    // The server notices by idle timeout; everything returns to zero.
    let mut settled = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if r.stats.connections() == 0 && r.stats.streams() == 0 && r.stats.tokens_in_flight() == 0 {
            settled = true;
            break;
        }
    }
    assert!(
        settled,
        "connections {} streams {} tokens {}",
        r.stats.connections(),
        r.stats.streams(),
        r.stats.tokens_in_flight()
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_during_traffic_switches_at_a_batch_boundary() {
    let k = keys();
    let backend = TestBackend::new(snapshot(1, &k, true));
    let r = start(Arc::clone(&backend), ServerOptions::default(), false);
    let c = Arc::new(client(&r, vec![r.addr], false));
    let token = Arc::new(k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap());
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = Arc::clone(&c);
        let token = Arc::clone(&token);
        tasks.push(tokio::spawn(async move {
            let mut kinds = Vec::new();
            for _ in 0..60 {
                let items: Vec<Item<'_>> = (0..64).map(|_| item(Some(&token), "t")).collect();
                let got = c.verify_all(&items).await.unwrap();
                let allowed = got.iter().filter(|d| d.allow).count();
                // Each batch saw one snapshot: all allowed (hs key present) or none.
                assert!(allowed == 0 || allowed == 64, "torn batch: {allowed} of 64");
                kinds.push(allowed == 64);
            }
            kinds
        }));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    backend.set(snapshot(2, &k, false));
    let mut saw_new = false;
    for t in tasks {
        let kinds = t.await.unwrap();
        // Once a task saw the new snapshot it never sees the old one again.
        let first_new = kinds.iter().position(|k| !k).unwrap_or(kinds.len());
        assert!(kinds[first_new..].iter().all(|k| !k));
        saw_new |= kinds.iter().any(|k| !k);
    }
    assert!(saw_new);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_batches_in_flight() {
    let rs = SigningKey::generate(Algorithm::Rs256).unwrap();
    let mut snap_tenant = Tenant::new(
        "t",
        vec![TenantKey {
            kid: "rs".into(),
            key: rs.verifying_key().unwrap(),
            issuer: None,
        }],
    );
    snap_tenant.algorithms = jotd_core::AlgorithmSet::ALL;
    let backend = TestBackend::new(Snapshot::new(1, [Arc::new(snap_tenant)]));
    let r = start(backend, ServerOptions::default(), false);
    let c = client(&r, vec![r.addr], false);
    // Distinct tokens so the cache cannot shortcut: a batch that takes a while.
    let tokens: Vec<String> = (0..2000)
        .map(|i| {
            rs.mint(Some("rs"), &claims(&format!("{i}"), NOW + 60))
                .unwrap()
        })
        .collect();
    let items: Vec<Item<'_>> = tokens.iter().map(|t| item(Some(t), "t")).collect();
    c.connect_all().await.unwrap();
    let addr = r.addr;
    let pki = r.pki.clone();
    let stats = Arc::clone(&r.stats);
    let stop = async {
        // Stop once the batch is being verified.
        while stats.tokens_in_flight() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        r.stop().await
    };
    let (got, report) = tokio::join!(c.verify_all(&items), stop);
    let got = got.unwrap();
    assert_eq!(got.len(), 2000);
    assert!(got.iter().all(|d| d.allow));
    assert!(report.complete);
    assert!(report.streams_at_start >= 1, "{report:?}");
    // Closed afterwards: a new client cannot connect.
    let tls = client_config(pki.ca_pem.as_bytes(), None).unwrap();
    let mut opts = ClientOptions::new(vec![addr], tls);
    opts.connect_timeout = Duration::from_millis(500);
    let late = Client::new(opts).unwrap();
    assert!(late.verify_all(&items[..1]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_an_error_frame_after_the_wait() {
    let rs = SigningKey::generate(Algorithm::Rs256).unwrap();
    let backend = TestBackend::new(Snapshot::new(
        1,
        [Arc::new(Tenant::new(
            "t",
            vec![TenantKey {
                kid: "rs".into(),
                key: rs.verifying_key().unwrap(),
                issuer: None,
            }],
        ))],
    ));
    let opts = ServerOptions {
        max_tokens_in_flight: std::num::NonZeroUsize::new(100).unwrap(),
        overload_wait: Duration::from_millis(1),
        ..ServerOptions::default()
    };
    let r = start(backend, opts, false);
    let c = Arc::new(client(&r, vec![r.addr], false));
    // Tokens of its own per batch: none is a cache hit, so every batch needs
    // RSA on the pool and the eight overlap (cached ones would be decided in
    // microseconds on the I/O thread, one after the other). All minted
    // before any batch is sent.
    let batches: Vec<Vec<String>> = (0..8)
        .map(|task| {
            (0..100)
                .map(|i| {
                    rs.mint(Some("rs"), &claims(&format!("{task}-{i}"), NOW + 60))
                        .unwrap()
                })
                .collect()
        })
        .collect();
    let mut tasks = Vec::new();
    for tokens in batches {
        let c = Arc::clone(&c);
        tasks.push(tokio::spawn(async move {
            let items: Vec<Item<'_>> = tokens.iter().map(|t| item(Some(t), "t")).collect();
            c.verify_all(&items).await
        }));
    }
    let (mut ok, mut overloaded) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(d) => {
                assert_eq!(d.len(), 100);
                ok += 1;
            }
            Err(ClientError::Server { code, .. }) if code == ErrorCode::Overloaded as u16 => {
                overloaded += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        ok >= 1 && overloaded >= 1,
        "ok {ok} overloaded {overloaded}"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_of_a_jwks_tenant_is_reverified_after_a_refetch() {
    let k = keys();
    let backend = TestBackend::new(snapshot(1, &k, false));
    *backend.after_refetch.lock().unwrap() = Some(Arc::new(snapshot(2, &k, true)));
    let r = start(Arc::clone(&backend), ServerOptions::default(), false);
    let c = client(&r, vec![r.addr], false);
    let hs = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let es = k.es.mint(Some("es"), &claims("b", NOW + 60)).unwrap();
    // Tenant "t" is not refetchable: its unknown kid is final, in the same batch.
    let items = [
        item(Some(&hs), "jwks"),
        item(Some(&es), "jwks"),
        item(Some(&hs), "t"),
    ];
    let got = c.verify_all(&items).await.unwrap();
    assert_eq!(got[0].reason(), Some(Reason::Ok));
    assert_eq!(got[1].reason(), Some(Reason::Ok));
    assert_eq!(got[2].reason(), Some(Reason::UnknownKid));
    assert_eq!(backend.refetches.load(Ordering::SeqCst), 1);
    // A refetch that brings nothing leaves the decision as it was.
    let other = SigningKey::generate(Algorithm::Hs256).unwrap();
    let stranger = other.mint(Some("zz"), &claims("c", NOW + 60)).unwrap();
    let got = c
        .verify_all(&[item(Some(&stranger), "jwks")])
        .await
        .unwrap();
    assert_eq!(got[0].reason(), Some(Reason::UnknownKid));
    assert_eq!(backend.refetches.load(Ordering::SeqCst), 2);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_spreads_over_endpoints_and_survives_a_dead_one() {
    let k = keys();
    let b1 = TestBackend::new(snapshot(1, &k, true));
    let b2 = TestBackend::new(snapshot(1, &k, true));
    let r1 = start(b1, ServerOptions::default(), false);
    // The second server shares the first's CA so one client trusts both.
    let pki = r1.pki.clone();
    let tls = server_config(
        pki.server_cert_pem.as_bytes(),
        pki.server_key_pem.as_bytes(),
        None,
    )
    .unwrap();
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap(),
    );
    let s2 = Server::bind(
        ServerOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..ServerOptions::default()
        },
        tls,
        Arc::new(Engine::new(EngineConfig::default())),
        pool,
        b2,
    )
    .unwrap();
    let addr2 = s2.local_addr().unwrap();
    let (stop2, stopped2) = oneshot::channel::<()>();
    let done2 = tokio::spawn(s2.run(async {
        let _ = stopped2.await;
    }));
    // A dead endpoint: a bound UDP port nobody answers on.
    let dead_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = dead_socket.local_addr().unwrap();
    let tls = client_config(pki.ca_pem.as_bytes(), None).unwrap();
    let mut opts = ClientOptions::new(vec![dead, r1.addr, addr2], tls);
    opts.connect_timeout = Duration::from_millis(300);
    let c = Arc::new(Client::new(opts).unwrap());
    let token = Arc::new(k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap());
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let c = Arc::clone(&c);
        let token = Arc::clone(&token);
        tasks.push(tokio::spawn(async move {
            let items: Vec<Item<'_>> = (0..16).map(|_| item(Some(&token), "t")).collect();
            c.verify_all(&items).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if let Ok(d) = t.await.unwrap() {
            assert_eq!(d.len(), 16);
            ok += 1;
        }
    }
    // Batches that picked the dead endpoint moved on to a live one.
    assert_eq!(ok, 40);
    let sent = |addr| {
        c.stats()
            .endpoints
            .iter()
            .filter(|e| e.addr == addr)
            .map(|e| e.sent)
            .sum::<u64>()
    };
    assert!(
        sent(addr2) > 0 && sent(r1.addr) > 0,
        "both live endpoints used"
    );
    let _ = stop2.send(());
    done2.await.unwrap();
    r1.stop().await;
}

/// Both ends advertise a large `max_udp_payload_size`, so path-MTU discovery
/// on loopback goes past Ethernet's 1,472 (quinn's default caps it there),
/// and the size it reaches survives bursts: each offloaded (GSO) send of up
/// to 10 packets stays within the kernel's 64 KiB, so none is refused, lost,
/// and read as an MTU black hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_mtu_discovery_goes_past_ethernet_and_survives_bursts() {
    let k = keys();
    let backend = TestBackend::new(snapshot(1, &k, true));
    let r = start(backend, ServerOptions::default(), false);
    let c = client(&r, vec![r.addr], false);
    let mtu = |c: &Client| c.stats().endpoints[0].path.as_ref().map(|p| p.mtu);
    let token = k.hs.mint(Some("hs"), &claims("alice", NOW + 60)).unwrap();
    let items: Vec<Item<'_>> = (0..64).map(|_| item(Some(&token), "t")).collect();
    for _ in 0..100 {
        let decisions = c.verify_all(&items).await.unwrap();
        assert!(decisions.iter().all(|d| d.reason() == Some(Reason::Ok)));
        if mtu(&c).is_some_and(|m| m > 1472_u16) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let found = mtu(&c);
    assert!(
        found.is_some_and(|m| m > 1472_u16),
        "path MTU stayed at {found:?} on loopback"
    );
    // Bursts: batches of ~170 KiB (2 KiB of claims per token), 16 at a time,
    // so the client sends many full packets in each offloaded send.
    let pad = "x".repeat(2048);
    let big = Arc::new(
        k.hs.mint(
            Some("hs"),
            &format!(r#"{{"sub":"alice","exp":{},"pad":"{pad}"}}"#, NOW + 60),
        )
        .unwrap(),
    );
    let c = Arc::new(c);
    for _ in 0..8 {
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (c, big) = (Arc::clone(&c), Arc::clone(&big));
            tasks.push(tokio::spawn(async move {
                let items: Vec<Item<'_>> = (0..64).map(|_| item(Some(&big), "t")).collect();
                let got = c.verify_all(&items).await.unwrap();
                assert!(got.iter().all(|d| d.reason() == Some(Reason::Ok)));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
    let after = mtu(&c);
    assert!(
        after >= found,
        "path MTU fell from {found:?} to {after:?} after bursts (a black hole was detected)"
    );
    r.stop().await;
}

/// A client that read its whole answer may stop the stream before the
/// server has closed it (quinn stops a receive stream dropped before its
/// FIN, as the client does once every item is decided): that is not counted
/// as an aborted stream, for cheap batches decided inline or costly ones on
/// the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_read_every_decision_are_not_counted_as_aborted() {
    let k = keys();
    let backend = TestBackend::new(snapshot(1, &k, true));
    let r = start(Arc::clone(&backend), ServerOptions::default(), false);
    let c = client(&r, vec![r.addr], false);
    let hs = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let es = k.es.mint(Some("es"), &claims("b", NOW + 60)).unwrap();
    for round in 0..200 {
        let token = if round % 2 == 0 { &hs } else { &es };
        let got = c
            .verify_all(&[item(Some(token), "t"), item(Some(token), "t")])
            .await
            .unwrap();
        assert_eq!(got.len(), 2);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(backend.ends(jotd_transport::StreamEnd::Aborted), 0);
}
