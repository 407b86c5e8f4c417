//! The server holds its ground against clients that misbehave on purpose:
//! half-sent requests, frames that announce too much, clients that never read
//! their answers, handshakes that never finish, one address holding every
//! slot, streams opened during drain.
//! Each limit is shown to hold and to be released.

mod support;

use jotd_core::Reason;
use jotd_transport::{
    BatchRequest, CLOSE_CONNECTION_LIMIT, ErrorCode, Item, Limits, Refusal, ServerOptions,
    StreamEnd, encode_batch,
};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::*;

fn encoded(request_id: u64, tokens: &[&str], tenant: &str) -> Vec<u8> {
    let items = tokens
        .iter()
        .map(|t| Item {
            token: Some(t.as_bytes()),
            tenant,
            method: Some("eth_call"),
            addresses: vec![],
            origin: None,
            user_agent: None,
        })
        .collect();
    let mut out = Vec::new();
    encode_batch(&BatchRequest { request_id, items }, &mut out).unwrap();
    out
}

/// A UDP relay that forwards datagrams to `server` and drops every answer.
async fn one_way_relay(server: std::net::SocketAddr) -> std::net::SocketAddr {
    let inbound = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let outbound = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = inbound.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = inbound.recv(&mut buf).await {
            let _ = outbound.send_to(&buf[..n], server).await;
        }
    });
    addr
}

/// A handshake without a client certificate whose packets reach the server
/// through a [`one_way_relay`] and never hear back: it stalls until the
/// server's `handshake_timeout`. Keep the pair alive while it should last.
async fn stalled_handshake(
    r: &Running,
) -> (
    quinn::Endpoint,
    tokio::task::JoinHandle<Result<quinn::Connection, quinn::ConnectionError>>,
) {
    let relay = one_way_relay(r.addr).await;
    let tls = jotd_transport::client_config(r.pki.ca_pem.as_bytes(), None).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connecting = ep.connect(relay, "localhost").unwrap();
    (ep, tokio::spawn(connecting))
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_stay_within_the_buffer_and_go_after_request_timeout() {
    let k = keys();
    let backend = TestBackend::new(snapshot(1, &k, true));
    let frame = 1 << 20;
    let buffer = 4 * (frame + 4);
    let opts = ServerOptions {
        limits: Limits {
            max_frame_bytes: frame,
            ..Limits::default()
        },
        max_request_buffer_bytes: std::num::NonZeroUsize::new(buffer).unwrap(),
        request_timeout: Duration::from_secs(3),
        ..ServerOptions::default()
    };
    let r = start(Arc::clone(&backend), opts, false);
    let conn = raw_connection(&r, false, None).await;
    let hs = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let head = |id: u64, len: usize| {
        let mut head = (frame as u32).to_be_bytes().to_vec();
        head.push(1); // Batch
        head.push(u8::try_from(id).unwrap()); // request id, one varint byte
        head.resize(len, 0);
        head
    };
    // Eight streams each announce a 1 MiB frame and send its 6-byte head
    // alone: an announcement reserves nothing (it once took the whole buffer
    // for request_timeout, so every other client got `overloaded`).
    let mut streams = Vec::new();
    for id in 100..108u64 {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&head(id, 6)).await.unwrap();
        streams.push((send, recv));
    }
    // Each stream costs its own STREAM_BYTES from the start, and its head.
    wait_for("the heads to arrive", || {
        r.stats.request_bytes() == 8 * (6 + jotd_transport::STREAM_BYTES)
    })
    .await;
    let other = raw_connection(&r, false, None).await;
    let (mut send, mut recv) = other.open_bi().await.unwrap();
    send.write_all(&encoded(7, &[&hs], "t")).await.unwrap();
    send.finish().unwrap();
    let answer = recv.read_to_end(1 << 20).await.unwrap();
    assert_eq!(
        jotd_transport::next_frame(&answer, &Limits::default())
            .unwrap()
            .unwrap()
            .kind,
        jotd_transport::FrameType::Decisions,
        "another client's batch is decided"
    );
    // Five streams send all of their frame but its last byte: what arrives
    // is charged. The buffer would hold three such and part of a fourth;
    // once it is three quarters full this address holds its share (here one
    // full-size request's room, ~2.75 of the 4 frames: two and part of a
    // third), and the rest are refused at once.
    for id in 108..113u64 {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        // The server may stop a refused stream while this writes.
        let _ = send.write_all(&head(id, frame + 3)).await;
        streams.push((send, recv));
    }
    wait_for("two frames to be held", || {
        r.stats.request_bytes() >= 2 * (frame + 3)
    })
    .await;
    // Another address's full-size batch (one token of nearly a frame, which
    // the engine then calls too large) is still read and decided: while one
    // client could take all the room there was (three frames and a part of
    // a fourth, here), it was `overloaded` for as long as that client went on.
    let overhead = |n: usize| encoded(8, &[&"x".repeat(n)], "t").len() - n;
    let big = "x".repeat(frame + 4 - overhead(frame / 2));
    let full = encoded(8, &[&big], "t");
    assert_eq!(full.len(), frame + 4);
    let elsewhere = raw_connection_from(&r, false, None, [127, 0, 0, 2])
        .await
        .unwrap();
    let (mut send, mut recv) = elsewhere.open_bi().await.unwrap();
    send.write_all(&full).await.unwrap();
    send.finish().unwrap();
    let answer = recv.read_to_end(1 << 20).await.unwrap();
    assert_eq!(
        jotd_transport::next_frame(&answer, &Limits::default())
            .unwrap()
            .unwrap()
            .kind,
        jotd_transport::FrameType::Decisions,
        "another address's batch is decided while the first holds its share"
    );
    // Every stream's answer, read at once: a refusal comes at once, the
    // others at request_timeout.
    let started = Instant::now();
    let mut sends = Vec::new();
    let mut answers = Vec::new();
    for (send, mut recv) in streams {
        sends.push(send);
        answers.push(tokio::spawn(async move {
            let answer = error_answer(&mut recv).await;
            (answer, Instant::now())
        }));
    }
    let mut refused = Vec::new();
    let mut held = 0;
    for a in answers {
        let ((id, code), at) = a.await.unwrap();
        if code == ErrorCode::Overloaded as u16 {
            assert!(
                at - started < Duration::from_secs(1),
                "{id} refused at once"
            );
            refused.push(id);
        } else {
            // After request_timeout the rest are refused with request_timeout
            // and their room is released.
            assert_eq!(code, ErrorCode::RequestTimeout as u16, "{id}");
            assert!((100..113).contains(&id));
            held += 1;
        }
    }
    assert!(!refused.is_empty(), "the buffer filled: some were refused");
    assert!(
        refused.iter().all(|id| (108..113).contains(id)),
        "{refused:?}"
    );
    assert!(held >= 8 + 2, "the heads and what fits waited: {held}");
    drop(sends);
    wait_for("the buffer to empty", || r.stats.request_bytes() == 0).await;
    assert_eq!(backend.ends(StreamEnd::RequestTimeout), held);
    // The connection still serves.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&encoded(7, &[&hs], "t")).await.unwrap();
    send.finish().unwrap();
    let answer = recv.read_to_end(1 << 20).await.unwrap();
    assert!(!answer.is_empty());
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_limit_is_refused_from_its_prefix_alone() {
    let k = keys();
    let backend = TestBackend::new(snapshot(1, &k, true));
    let frame = 1usize << 16;
    let opts = ServerOptions {
        limits: Limits {
            max_frame_bytes: frame,
            ..Limits::default()
        },
        // One frame's worth, and the two streams' own cost: the first stream
        // below fills it.
        max_request_buffer_bytes: std::num::NonZeroUsize::new(
            frame + 4 + 2 * jotd_transport::STREAM_BYTES,
        )
        .unwrap(),
        request_timeout: Duration::from_secs(30),
        ..ServerOptions::default()
    };
    let r = start(Arc::clone(&backend), opts, false);
    let conn = raw_connection(&r, false, None).await;
    // A request of a whole frame but its last byte holds the request buffer:
    // a prefix over the limit is still `frame_too_large` (it was
    // `overloaded`, "retry elsewhere", when the prefix took room first).
    let (mut holder, _held) = conn.open_bi().await.unwrap();
    let mut body = u32::try_from(frame).unwrap().to_be_bytes().to_vec();
    body.extend_from_slice(&[1, 41]);
    body.resize(frame + 3, 0);
    holder.write_all(&body).await.unwrap();
    wait_for("the buffer to fill", || {
        r.stats.request_bytes() >= frame + 3 + jotd_transport::STREAM_BYTES
    })
    .await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // The prefix announces 1 MiB; only the header follows, and no FIN.
    let mut head = (1u32 << 20).to_be_bytes().to_vec();
    head.extend_from_slice(&[1, 42]);
    send.write_all(&head).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(2), error_answer(&mut recv))
        .await
        .expect("answered without waiting for the body or the timeout");
    assert_eq!(answer, (42, ErrorCode::FrameTooLarge as u16));
    drop(holder);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_releases_its_tokens_and_is_reset() {
    let k = keys();
    let backend = TestBackend::new(snapshot(1, &k, true));
    let opts = ServerOptions {
        max_tokens_in_flight: std::num::NonZeroUsize::new(400).unwrap(),
        overload_wait: Duration::from_millis(300),
        write_timeout: Duration::from_millis(700),
        ..ServerOptions::default()
    };
    let r = start(Arc::clone(&backend), opts, false);
    // Tokens with a long subject, so the 400 decisions are far larger than
    // the 1 KiB receive window this client grants and then never reads.
    let sub = "s".repeat(200);
    let hs = k.hs.mint(Some("hs"), &claims(&sub, NOW + 60)).unwrap();
    let tokens = vec![hs.as_str(); 400];
    let stuck = raw_connection(&r, false, Some(1024)).await;
    let (mut send, recv) = stuck.open_bi().await.unwrap();
    send.write_all(&encoded(1, &tokens, "t")).await.unwrap();
    send.finish().unwrap();
    // Its decisions are produced: the whole budget is free again although
    // the answer is still unread.
    wait_for("the budget to be free", || r.stats.tokens_in_flight() == 0).await;
    // Another client's batch of the whole budget is served, not overloaded.
    let c = client(&r, vec![r.addr], false);
    let items: Vec<Item<'_>> = tokens.iter().map(|t| item(Some(t), "t")).collect();
    let got = c.verify_all(&items).await.expect("served");
    assert!(got.iter().all(|d| d.reason() == Some(Reason::Ok)));
    // The stuck stream is reset after write_timeout.
    wait_for("the write timeout", || {
        backend.ends(StreamEnd::WriteTimeout) == 1
    })
    .await;
    drop(recv);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_never_finish_take_no_connection_slot() {
    let k = keys();
    let backend = TestBackend::new(snapshot(1, &k, true));
    let opts = ServerOptions {
        max_connections: std::num::NonZeroUsize::new(3).unwrap(),
        handshake_timeout: Duration::from_millis(600),
        ..ServerOptions::default()
    };
    let r = start(Arc::clone(&backend), opts, true);
    // Three clients without a certificate whose packets reach the server
    // but never hear back (a one-way relay): their handshakes stall.
    let mut attackers = Vec::new();
    for _ in 0..3 {
        attackers.push(stalled_handshake(&r).await);
    }
    wait_for("three stalled handshakes", || r.stats.handshakes() == 3).await;
    // A client with a certificate is served at once.
    let started = Instant::now();
    let c = client(&r, vec![r.addr], true);
    let hs = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let got = c.verify_all(&[item(Some(&hs), "t")]).await.unwrap();
    assert_eq!(got[0].reason(), Some(Reason::Ok));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the certified client waited {:?}",
        started.elapsed()
    );
    assert_eq!(
        r.stats.connections(),
        1,
        "only the certified client holds a slot"
    );
    // The stalled handshakes are dropped after handshake_timeout.
    wait_for("stalled handshakes to go", || r.stats.handshakes() == 0).await;
    assert_eq!(backend.handshake_refusals.load(Ordering::SeqCst), 3);
    drop(attackers);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unvalidated_attempts_get_a_retry_once_handshakes_pile_up() {
    let k = keys();
    let backend = TestBackend::new(snapshot(1, &k, true));
    let opts = ServerOptions {
        retry_after_handshakes: 0,
        ..ServerOptions::default()
    };
    let r = start(Arc::clone(&backend), opts, false);
    // A real client answers the Retry and is served.
    let c = client(&r, vec![r.addr], false);
    let hs = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let got = c.verify_all(&[item(Some(&hs), "t")]).await.unwrap();
    assert_eq!(got[0].reason(), Some(Reason::Ok));
    assert_eq!(backend.retries.load(Ordering::SeqCst), 1);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_opened_during_drain_get_shutting_down() {
    let k = keys();
    let (gate, gated) = tokio::sync::watch::channel(false);
    let backend = TestBackend::gated(snapshot(1, &k, false), gated);
    let r = start(Arc::clone(&backend), holding(), false);
    let conn = raw_connection(&r, false, None).await;
    // A batch held in flight: the JWKS tenant's unknown kid waits for a refetch.
    let hs = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let (mut send, mut held) = conn.open_bi().await.unwrap();
    send.write_all(&encoded(1, &[&hs], "jwks")).await.unwrap();
    send.finish().unwrap();
    wait_for("the refetch", || {
        backend.refetches.load(Ordering::SeqCst) == 1
    })
    .await;
    let stats = Arc::clone(&r.stats);
    let stopping = tokio::spawn(r.stop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A stream opened now is answered shutting_down with its id.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&encoded(2, &[&hs], "t")).await.unwrap();
    send.finish().unwrap();
    assert_eq!(
        error_answer(&mut recv).await,
        (2, ErrorCode::ShuttingDown as u16)
    );
    // The batch in flight still gets its decision, then the connection closes.
    gate.send(true).unwrap();
    let answer = held.read_to_end(1 << 20).await.unwrap();
    assert!(!answer.is_empty());
    let report = stopping.await.unwrap();
    assert!(report.complete);
    assert_eq!(stats.streams(), 0);
}

/// The application close code a connection ended with, if it was closed so.
async fn close_code(conn: &quinn::Connection) -> Option<u64> {
    match tokio::time::timeout(Duration::from_secs(10), conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => Some(c.error_code.into_inner()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_connection_slot() {
    let k = keys();
    let backend = TestBackend::new(snapshot(1, &k, true));
    let opts = ServerOptions {
        max_connections: std::num::NonZeroUsize::new(4).unwrap(),
        ..ServerOptions::default()
    };
    let r = start(Arc::clone(&backend), opts, false);
    // One address takes every slot; its first connection has a request in
    // flight (half sent), the others are idle.
    let mut flood = Vec::new();
    for i in 0..4 {
        flood.push(
            raw_connection_from(&r, false, None, [127, 0, 0, 2])
                .await
                .unwrap(),
        );
        // Admitted in this order (the client's handshake can end before the
        // server's task takes the slot): which one is oldest is known.
        wait_for("the connection's slot", || r.stats.connections() == i + 1).await;
    }
    let (mut send, _recv) = flood[0].open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 64, 1]).await.unwrap();
    wait_for("the stream in flight", || r.stats.streams() >= 1).await;
    // More from the same address: refused, nobody cut off.
    let more = raw_connection_from(&r, false, None, [127, 0, 0, 2])
        .await
        .unwrap();
    assert_eq!(
        close_code(&more).await,
        Some(u64::from(CLOSE_CONNECTION_LIMIT))
    );
    // A client elsewhere is served: the flooder's oldest idle connection
    // (not the busy one) makes room.
    let other = raw_connection_from(&r, false, None, [127, 0, 0, 3])
        .await
        .unwrap();
    let hs = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let (mut s, mut rcv) = other.open_bi().await.unwrap();
    s.write_all(&encoded(7, &[&hs], "t")).await.unwrap();
    s.finish().unwrap();
    let answer = rcv.read_to_end(1 << 20).await.unwrap();
    assert!(!answer.is_empty());
    assert_eq!(
        close_code(&flood[1]).await,
        Some(u64::from(CLOSE_CONNECTION_LIMIT))
    );
    assert!(
        flood[0].close_reason().is_none(),
        "the busy connection stays"
    );
    assert!(flood[2].close_reason().is_none() && flood[3].close_reason().is_none());
    let refusals = backend.refusals.lock().unwrap().clone();
    assert_eq!(
        refusals,
        [Refusal::ConnectionLimit, Refusal::ClosedForRoom],
        "{refusals:?}"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_handshake_slot() {
    let k = keys();
    let backend = TestBackend::new(snapshot(1, &k, true));
    let opts = ServerOptions {
        max_handshakes_per_address: std::num::NonZeroUsize::new(2).unwrap(),
        // Long enough that the two stalled handshakes are still in progress
        // when checked, however loaded the machine.
        handshake_timeout: Duration::from_secs(60),
        ..ServerOptions::default()
    };
    let r = start(Arc::clone(&backend), opts, true);
    // Handshakes from 127.0.0.1 that never hear back (one-way relays).
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(stalled_handshake(&r).await);
    }
    // Two are in progress; the third was refused for its address.
    wait_for("the third refused", || {
        backend.refusals.lock().unwrap().as_slice() == [Refusal::HandshakeShare]
    })
    .await;
    assert_eq!(r.stats.handshakes(), 2);
    // A client from another address shakes hands at once.
    let other = raw_connection_from(&r, true, None, [127, 0, 0, 4]).await;
    assert!(other.is_ok(), "{other:?}");
    drop(stalled);
    r.stop().await;
}

/// At `max_handshakes` a source holding two handshakes more than a
/// newcomer's gives up its oldest: sources that answer Retry and never
/// finish cannot hold every handshake slot (mutual TLS does not help:
/// slots are taken before the certificate). The same source is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_make_room_for_another_source() {
    let k = keys();
    let backend = TestBackend::new(snapshot(1, &k, true));
    let opts = ServerOptions {
        max_handshakes: std::num::NonZeroUsize::new(2).unwrap(),
        max_handshakes_per_address: std::num::NonZeroUsize::new(8).unwrap(),
        handshake_timeout: Duration::from_secs(60),
        ..ServerOptions::default()
    };
    let r = start(Arc::clone(&backend), opts, true);
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(stalled_handshake(&r).await);
    }
    // Two in progress fill the server; the third, from the same source, is
    // refused.
    wait_for("the third refused", || {
        backend.refusals.lock().unwrap().as_slice() == [Refusal::HandshakeLimit]
    })
    .await;
    assert_eq!(r.stats.handshakes(), 2);
    // Another source: the first source's oldest handshake makes room.
    let other = raw_connection_from(&r, true, None, [127, 0, 0, 4]).await;
    assert!(other.is_ok(), "{other:?}");
    wait_for("the room made", || {
        backend.refusals.lock().unwrap().as_slice()
            == [Refusal::HandshakeLimit, Refusal::HandshakeLimit]
    })
    .await;
    drop(stalled);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_a_little_now_and_then_is_reset_after_write_timeout_in_all() {
    let k = keys();
    let backend = TestBackend::new(snapshot(1, &k, true));
    let opts = ServerOptions {
        write_timeout: Duration::from_millis(700),
        ..ServerOptions::default()
    };
    let r = start(Arc::clone(&backend), opts, false);
    // ~20 KB of decisions in many small frames; the client grants 1 KiB and
    // takes 512 bytes every 150 ms: each frame goes out well within
    // write_timeout, the whole answer would take seconds.
    let sub = "s".repeat(40);
    let hs = k.hs.mint(Some("hs"), &claims(&sub, NOW + 60)).unwrap();
    let tokens = vec![hs.as_str(); 400];
    let slow = raw_connection(&r, false, Some(1024)).await;
    let (mut send, mut recv) = slow.open_bi().await.unwrap();
    send.write_all(&encoded(1, &tokens, "t")).await.unwrap();
    send.finish().unwrap();
    let started = Instant::now();
    let mut got = 0;
    let end = loop {
        tokio::time::sleep(Duration::from_millis(150)).await;
        match recv.read_chunk(512, true).await {
            Ok(Some(chunk)) => got += chunk.bytes.len(),
            other => break other.map(|_| ()),
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still reading after {got} bytes"
        );
    };
    assert!(
        matches!(
            end,
            Err(quinn::ReadError::Reset(code)) if code.into_inner() == u64::from(jotd_transport::RESET_WRITE_TIMEOUT)
        ),
        "the answer ({got} bytes) ended with {end:?}"
    );
    assert_eq!(backend.ends(StreamEnd::WriteTimeout), 1);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_room_is_held_until_its_decisions_exist() {
    let k = keys();
    let (gate, gated) = tokio::sync::watch::channel(false);
    let backend = TestBackend::gated(snapshot(1, &k, false), gated);
    let r = start(Arc::clone(&backend), holding(), false);
    let conn = raw_connection(&r, false, None).await;
    // A batch held in flight: the JWKS tenant's unknown kid waits for a refetch.
    let hs = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let request = encoded(1, &[&hs], "jwks");
    let (mut send, mut answer_stream) = conn.open_bi().await.unwrap();
    send.write_all(&request).await.unwrap();
    send.finish().unwrap();
    wait_for("the refetch", || {
        backend.refetches.load(Ordering::SeqCst) == 1
    })
    .await;
    // Arrived whole long ago, but not decided: its bytes and their decoded
    // form (one item's spans: under 100 bytes) still count against
    // max_request_buffer_bytes.
    let held = r.stats.request_bytes() - jotd_transport::STREAM_BYTES;
    assert!(
        held > request.len() && held < request.len() + 100,
        "{held} (and the stream's own cost) for a request of {}",
        request.len()
    );
    gate.send(true).unwrap();
    let answer = answer_stream.read_to_end(1 << 20).await.unwrap();
    assert!(!answer.is_empty());
    wait_for("the room to go back", || r.stats.request_bytes() == 0).await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_gives_its_room_back_before_its_answer_is_read() {
    let k = keys();
    let backend = TestBackend::new(snapshot(1, &k, true));
    let opts = ServerOptions {
        write_timeout: Duration::from_secs(5),
        ..ServerOptions::default()
    };
    let r = start(Arc::clone(&backend), opts, false);
    // A client that grants no stream credit: the error frame cannot go out.
    let stuck = raw_connection(&r, false, Some(0)).await;
    let (mut send, _recv) = stuck.open_bi().await.unwrap();
    let mut bad = vec![0u8; 4];
    bad.extend_from_slice(&[0u8; 60]);
    bad[3] = 60; // a 60-byte body that does not decode
    send.write_all(&bad).await.unwrap();
    send.finish().unwrap();
    wait_for("the stream", || r.stats.streams() == 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(r.stats.streams(), 1, "the answer still waits on the client");
    assert_eq!(
        r.stats.request_bytes(),
        jotd_transport::STREAM_BYTES,
        "yet the request's room went back (the stream's own cost stays while it lives)"
    );
    r.stop().await;
}

/// A handshake against `addr` trusting `ca_pem` only: whether it
/// completed within 3 s.
async fn handshake_trusting(addr: std::net::SocketAddr, ca_pem: &str) -> bool {
    let tls = jotd_transport::client_config(ca_pem.as_bytes(), None).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connecting = endpoint.connect(addr, "localhost").unwrap();
    matches!(
        tokio::time::timeout(Duration::from_secs(3), connecting).await,
        Ok(Ok(_))
    )
}

/// A TLS switch (a config reload's renewed certificate) applies to new
/// handshakes; once the server drains it does nothing: a reload during the
/// drain used to open the draining endpoint to new connections again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_switch_serves_new_handshakes_and_never_reopens_a_drain() {
    let k = keys();
    let backend = TestBackend::new(snapshot(1, &k, true));
    let r = start(backend, ServerOptions::default(), false);
    let renewed = jotd_transport::DevPki::generate().unwrap();
    let tls = |pki: &jotd_transport::DevPki| {
        jotd_transport::server_config(
            pki.server_cert_pem.as_bytes(),
            pki.server_key_pem.as_bytes(),
            None,
        )
        .unwrap()
    };
    assert!(handshake_trusting(r.addr, &r.pki.ca_pem).await);
    // Open before the switch: a connection keeps the TLS it was made with.
    let held = raw_connection(&r, false, None).await;
    assert!(r.switch.replace(tls(&renewed)).unwrap());
    assert!(
        handshake_trusting(r.addr, &renewed.ca_pem).await,
        "the renewed certificate"
    );
    assert!(
        !handshake_trusting(r.addr, &r.pki.ca_pem).await,
        "the old one is gone"
    );
    // A request that never finishes arriving holds the drain open.
    let (mut send, _recv) = held.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0x10, 0, 1]).await.unwrap();
    wait_for("the stream in flight", || r.stats.streams() >= 1).await;
    let switch = r.switch.clone();
    let (addr, ca) = (r.addr, renewed.ca_pem.clone());
    let stopping = tokio::spawn(r.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !stopping.is_finished(),
        "the held request keeps the drain going"
    );
    // Not applied: the endpoint stays closed to new connections. (A client
    // cannot tell: quinn drops a handshake it has no config for, and one the
    // server never accepts, alike; the reopened endpoint queued them.)
    assert!(!switch.replace(tls(&renewed)).unwrap());
    assert!(
        !handshake_trusting(addr, &ca).await,
        "a draining server takes no connection"
    );
    drop(held);
}

/// A client that stops reading while its batch waits on a refetch (held
/// items) frees the batch's room at once: the server stops spending work on
/// an answer nobody will read, instead of holding the tokens' budget for
/// `refetch_hold` (here ten minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_client_stops_reading_is_abandoned() {
    let k = keys();
    let (r, _gate) = start_held(&k);
    let conn = raw_connection(&r, false, None).await;
    let held = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&encoded(9, &[&held, &held], "jwks"))
        .await
        .unwrap();
    send.finish().unwrap();
    wait_for("the batch to be held", || r.stats.tokens_in_flight() == 2).await;
    recv.stop(0u32.into()).unwrap();
    wait_for("the budget to be free", || r.stats.tokens_in_flight() == 0).await;
    // The connection still serves.
    let ok = k.hs.mint(Some("hs"), &claims("b", NOW + 60)).unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&encoded(10, &[&ok], "t")).await.unwrap();
    send.finish().unwrap();
    let answer = recv.read_to_end(1 << 20).await.unwrap();
    let limits = jotd_transport::Limits::default();
    let frame = jotd_transport::next_frame(&answer, &limits)
        .unwrap()
        .unwrap();
    let chunk = jotd_transport::decode_decisions(frame.body).unwrap();
    assert_eq!(chunk.decisions.len(), 1);
}

/// 400 long-subject decisions for a client that grants 1 KiB and never
/// reads: ~90 KB of frames wait in the server.
async fn stuck_answer(r: &Running, k: &Keys) -> (Vec<u8>, quinn::Connection, quinn::RecvStream) {
    let sub = "s".repeat(200);
    let hs = k.hs.mint(Some("hs"), &claims(&sub, NOW + 60)).unwrap();
    let tokens = vec![hs.as_str(); 400];
    let request = encoded(1, &tokens, "t");
    let stuck = raw_connection(r, false, Some(1024)).await;
    let (mut send, recv) = stuck.open_bi().await.unwrap();
    send.write_all(&request).await.unwrap();
    send.finish().unwrap();
    (request, stuck, recv)
}

/// The frames of an answer the client has not read are charged to the
/// request buffer until written (they sat outside every budget once the
/// decisions existed: a client with a tiny window and many small-item
/// batches held ~2-3 × its request bytes for `write_timeout`), and go back
/// when the stream is reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_answer_is_charged_to_the_request_buffer_until_written() {
    let k = keys();
    let backend = TestBackend::new(snapshot(1, &k, true));
    let opts = ServerOptions {
        write_timeout: Duration::from_millis(1500),
        ..ServerOptions::default()
    };
    let r = start(Arc::clone(&backend), opts, false);
    let (_request, _conn, recv) = stuck_answer(&r, &k).await;
    wait_for("the decisions", || {
        r.stats.tokens_in_flight() == 0 && r.stats.streams() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let held = r.stats.request_bytes();
    assert!(held > 50_000, "unread answer frames charged: {held}");
    wait_for("the write timeout", || {
        backend.ends(StreamEnd::WriteTimeout) == 1
    })
    .await;
    wait_for("the room to go back", || r.stats.request_bytes() == 0).await;
    drop(recv);
    r.stop().await;
}

/// An answer whose unread frames find no room in the request buffer is
/// reset (code 4), never finished short, and its room goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_with_no_room_left_is_reset_not_cut_short() {
    let k = keys();
    let backend = TestBackend::new(snapshot(1, &k, true));
    let sub = "s".repeat(200);
    let hs = k.hs.mint(Some("hs"), &claims(&sub, NOW + 60)).unwrap();
    let size = encoded(1, &vec![hs.as_str(); 400], "t").len();
    // Room for the request, its decoded form and a few frames, not the answer.
    let opts = ServerOptions {
        limits: Limits {
            max_frame_bytes: size,
            ..Limits::default()
        },
        max_request_buffer_bytes: std::num::NonZeroUsize::new(size + 4 + 400 * 64 + 4096).unwrap(),
        write_timeout: Duration::from_secs(5),
        ..ServerOptions::default()
    };
    let r = start(Arc::clone(&backend), opts, false);
    let (_request, _conn, mut recv) = stuck_answer(&r, &k).await;
    wait_for("the reset", || {
        backend.ends(StreamEnd::AnswerBufferFull) == 1
    })
    .await;
    let end = loop {
        match recv.read_chunk(1 << 16, true).await {
            Ok(Some(_)) => {}
            other => break other.map(|_| ()),
        }
    };
    assert!(
        matches!(
            end,
            Err(quinn::ReadError::Reset(code)) if code.into_inner() == u64::from(jotd_transport::RESET_ANSWER_BUFFER_FULL)
        ),
        "{end:?}"
    );
    wait_for("the room to go back", || r.stats.request_bytes() == 0).await;
    r.stop().await;
}

/// The server takes no DATAGRAM frames: it never reads them, and quinn's
/// default buffered ~1.25 MB of them a connection (each holding its whole
/// packet) outside every budget. A client sees datagrams unsupported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_takes_no_datagrams() {
    let k = keys();
    let backend = TestBackend::new(snapshot(1, &k, true));
    let r = start(Arc::clone(&backend), ServerOptions::default(), false);
    let conn = raw_connection(&r, false, None).await;
    assert_eq!(conn.max_datagram_size(), None);
    assert!(conn.send_datagram(vec![b'x'].into()).is_err());
}

/// While a batch waits on a refetch for its held items, only those keep
/// their share of `max_tokens_in_flight`: the decided items' go back at
/// once (a 4,096-item batch with one unknown kid held 4,096 tokens through
/// `refetch_hold`, and 16 such batches every token of the server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_batch_keeps_tokens_for_its_held_items_only() {
    let k = keys();
    let (open, gated) = tokio::sync::watch::channel(false);
    let backend = TestBackend::gated(snapshot(1, &k, false), gated);
    let opts = ServerOptions {
        max_tokens_in_flight: std::num::NonZeroUsize::new(100).unwrap(),
        overload_wait: Duration::from_millis(200),
        ..holding()
    };
    let r = start(Arc::clone(&backend), opts, false);
    let c = Arc::new(client(&r, vec![r.addr], false));
    c.connect_all().await.unwrap();
    let held = k.hs.mint(Some("hs"), &claims("a", NOW + 60)).unwrap();
    let good = k.es.mint(Some("es"), &claims("b", NOW + 60)).unwrap();
    let good2 = good.clone();
    let verify = {
        let c = Arc::clone(&c);
        tokio::spawn(async move {
            let mut items = vec![item(Some(&held), "jwks")];
            items.extend((0..99).map(|_| item(Some(&good), "t")));
            c.verify_all(&items).await.map(|d| d.len())
        })
    };
    wait_for("the held item alone to hold a token", || {
        r.stats.tokens_in_flight() == 1
    })
    .await;
    // The budget itself (not only the gauge): 99 tokens are free, so a
    // batch of 99 is decided during the hold, not `overloaded`.
    let items: Vec<_> = (0..99).map(|_| item(Some(&good2), "t")).collect();
    let got = c.verify_all(&items).await.expect("decided during the hold");
    assert_eq!(got.len(), 99);
    open.send(true).unwrap();
    assert_eq!(verify.await.unwrap().unwrap(), 100);
    wait_for("every token back", || r.stats.tokens_in_flight() == 0).await;
}

/// A stream costs the request buffer from the moment it is accepted
/// (`STREAM_BYTES`), bytes or none: 100 streams that sent one byte of
/// their length prefix each, against a buffer of 40 streams' cost, leave
/// 40 waiting (until `request_timeout`) and 60 refused at once. Uncharged,
/// every idle stream (256 a connection, opened by one STREAM frame) held a
/// task until `request_timeout`, outside every budget. (The source share
/// does not act here: one full-size request's room exceeds this buffer.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_are_charged_to_the_request_buffer() {
    let k = keys();
    let backend = TestBackend::new(snapshot(1, &k, true));
    let per = jotd_transport::STREAM_BYTES;
    let opts = ServerOptions {
        limits: Limits {
            max_frame_bytes: 4096,
            ..Limits::default()
        },
        max_request_buffer_bytes: std::num::NonZeroUsize::new(40 * per).unwrap(),
        request_timeout: Duration::from_secs(3),
        ..ServerOptions::default()
    };
    let r = start(Arc::clone(&backend), opts, false);
    let conn = raw_connection(&r, false, None).await;
    let mut streams = Vec::new();
    for _ in 0..100 {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        let _ = send.write_all(&[0]).await;
        streams.push((send, recv));
    }
    let started = Instant::now();
    let mut sends = Vec::new();
    let mut answers = Vec::new();
    for (send, mut recv) in streams {
        sends.push(send);
        answers.push(tokio::spawn(async move {
            let answer = error_answer(&mut recv).await;
            (answer.1, Instant::now())
        }));
    }
    let mut refused = 0;
    let mut waited = 0;
    for a in answers {
        let (code, at) = a.await.unwrap();
        if code == ErrorCode::Overloaded as u16 {
            assert!(at - started < Duration::from_secs(2), "refused at once");
            refused += 1;
        } else {
            assert_eq!(code, ErrorCode::RequestTimeout as u16);
            waited += 1;
        }
        assert!(r.stats.request_bytes() <= 40 * per);
    }
    assert_eq!((waited, refused), (40, 60));
    drop(sends);
    wait_for("the buffer to empty", || r.stats.request_bytes() == 0).await;
    r.stop().await;
}

/// A stream refused for want of room is not held by a client that never
/// reads: its error frame gets a moment to go out, then the stream is
/// reset. (Uncharged, 216 such streams a connection waited on the client
/// for `write_timeout`, outside every budget.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_refused_for_room_are_not_held_by_a_client_that_never_reads() {
    let k = keys();
    let backend = TestBackend::new(snapshot(1, &k, true));
    let per = jotd_transport::STREAM_BYTES;
    let opts = ServerOptions {
        limits: Limits {
            max_frame_bytes: 4096,
            ..Limits::default()
        },
        max_request_buffer_bytes: std::num::NonZeroUsize::new(40 * per).unwrap(),
        request_timeout: Duration::from_secs(20),
        write_timeout: Duration::from_secs(20),
        ..ServerOptions::default()
    };
    let r = start(Arc::clone(&backend), opts, false);
    // No stream window: no answer can go out.
    let conn = raw_connection(&r, false, Some(0)).await;
    let mut streams = Vec::new();
    for _ in 0..100 {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        let _ = send.write_all(&[0]).await;
        streams.push((send, recv));
    }
    wait_for(
        "the refused streams to end, the charged ones to wait",
        || r.stats.streams() == 40,
    )
    .await;
    assert_eq!(r.stats.request_bytes(), 40 * per);
    drop(streams);
    drop(conn);
    r.stop().await;
}
