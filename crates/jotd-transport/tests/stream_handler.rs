//! The server's per-stream work through an in-memory driver (no sockets):
//! bytes in, frames out; exactly one decision per item or exactly one error frame.

use jotd_core::{
    Algorithm, Engine, EngineConfig, Reason, SigningKey, Snapshot, Tenant, TenantKey, UnixTime,
};
use jotd_transport::{
    BatchRequest, DecisionChunk, ErrorCode, FrameType, Item, Limits, Served, Tally, TenantWatch,
    decode_decisions, decode_error, encode_batch, encode_decisions, next_frame, serve_stream,
    serve_stream_with,
};
use std::sync::{Arc, Mutex};

const NOW: u64 = 1_800_000_000;

struct Fixture {
    engine: Engine,
    pool: rayon::ThreadPool,
    snapshot: Snapshot,
    es: SigningKey,
    hs: SigningKey,
}

fn fixture() -> Fixture {
    let es = SigningKey::generate(Algorithm::Es256).unwrap();
    let hs = SigningKey::generate(Algorithm::Hs256).unwrap();
    let keys = vec![
        TenantKey {
            kid: "es".into(),
            key: es.verifying_key().unwrap(),
        },
        TenantKey {
            kid: "hs".into(),
            key: hs.verifying_key().unwrap(),
        },
    ];
    Fixture {
        engine: Engine::new(EngineConfig::default()),
        pool: rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap(),
        snapshot: Snapshot::new(1, [Arc::new(Tenant::new("t", keys))]),
        es,
        hs,
    }
}

/// Runs one stream; returns what it served and the frames it sent.
fn run(f: &Fixture, input: &[u8], limits: &Limits) -> (Served, Vec<Vec<u8>>) {
    let sent = Mutex::new(Vec::new());
    let served = serve_stream(
        &f.engine,
        &f.pool,
        &f.snapshot,
        input,
        limits,
        UnixTime(NOW),
        &|frame| sent.lock().unwrap().push(frame),
    );
    (served, sent.into_inner().unwrap())
}

fn only_error(frames: &[Vec<u8>]) -> (u64, u16) {
    assert_eq!(frames.len(), 1, "exactly one error frame");
    let frame = next_frame(&frames[0], &Limits::default()).unwrap().unwrap();
    assert_eq!(frame.kind, FrameType::Error);
    let e = decode_error(frame.body).unwrap();
    (e.request_id, e.code)
}

#[test]
fn every_item_gets_exactly_one_decision() {
    let f = fixture();
    let good_es =
        f.es.mint(Some("es"), &format!(r#"{{"sub":"a","exp":{}}}"#, NOW + 60))
            .unwrap();
    let good_hs =
        f.hs.mint(Some("hs"), &format!(r#"{{"sub":"b","exp":{}}}"#, NOW + 60))
            .unwrap();
    let expired =
        f.hs.mint(Some("hs"), &format!(r#"{{"exp":{}}}"#, NOW - 600))
            .unwrap();
    let mut items = Vec::new();
    let mut want = Vec::new();
    for i in 0..70 {
        let (token, reason): (Option<&[u8]>, Reason) = match i % 5 {
            0 => (Some(good_es.as_bytes()), Reason::Ok),
            1 => (Some(good_hs.as_bytes()), Reason::Ok),
            2 => (Some(expired.as_bytes()), Reason::Expired),
            3 => (Some(b"not.a.token"), Reason::Malformed),
            _ => (None, Reason::MissingToken),
        };
        items.push(Item {
            token,
            tenant: "t",
            method: Some("eth_call"),
            addresses: vec![],
            origin: None,
            user_agent: None,
        });
        want.push(reason);
    }
    let mut input = Vec::new();
    encode_batch(
        &BatchRequest {
            request_id: 42,
            items,
        },
        &mut input,
    )
    .unwrap();
    let (served, frames) = run(&f, &input, &Limits::default());
    assert_eq!(
        served,
        Served::Decided {
            items: 70,
            frames: 5
        },
        "70 items in chunks of 16"
    );
    let mut seen: Vec<Option<Reason>> = vec![None; 70];
    for bytes in &frames {
        let frame = next_frame(bytes, &Limits::default()).unwrap().unwrap();
        assert_eq!(
            (frame.kind, frame.consumed),
            (FrameType::Decisions, bytes.len())
        );
        let chunk: DecisionChunk<'_> = decode_decisions(frame.body).unwrap();
        assert_eq!(chunk.request_id, 42);
        for d in chunk.decisions {
            let i = d.index as usize;
            assert!(seen[i].is_none(), "item {i} decided twice");
            assert_eq!(d.allow, d.reason().unwrap().is_allow());
            seen[i] = d.reason();
            if i == 0 {
                assert_eq!(
                    (d.kid, d.sub, d.exp),
                    (Some("es"), Some("a"), Some(NOW + 60))
                );
            }
        }
    }
    let seen: Vec<Reason> = seen
        .into_iter()
        .map(|r| r.expect("every item decided"))
        .collect();
    assert_eq!(seen, want);

    let mut empty = Vec::new();
    encode_batch(
        &BatchRequest {
            request_id: 1,
            items: vec![],
        },
        &mut empty,
    )
    .unwrap();
    assert_eq!(
        run(&f, &empty, &Limits::default()),
        (
            Served::Decided {
                items: 0,
                frames: 0
            },
            vec![]
        )
    );
}

#[test]
fn a_batch_that_cannot_be_served_gets_one_error_frame() {
    let f = fixture();
    let item = Item {
        token: Some(b"x"),
        tenant: "t",
        method: None,
        addresses: vec![],
        origin: None,
        user_agent: None,
    };
    let mut good = Vec::new();
    encode_batch(
        &BatchRequest {
            request_id: 9,
            items: vec![item.clone(); 3],
        },
        &mut good,
    )
    .unwrap();
    let small = Limits {
        max_frame_bytes: 1 << 20,
        max_items: 2,
    };
    let mut trailing = good.clone();
    trailing.push(0);
    let mut decisions_frame = Vec::new();
    encode_decisions(
        &DecisionChunk {
            request_id: 9,
            decisions: vec![],
        },
        &mut decisions_frame,
    )
    .unwrap();
    let mut garbage = vec![0, 0, 0, 4, 1];
    garbage.extend_from_slice(&[0xfd, 0xff, 0xff]);
    let cases: Vec<(&[u8], Limits, ErrorCode)> = vec![
        (&good, small, ErrorCode::TooManyItems),
        (&trailing, Limits::default(), ErrorCode::MalformedFrame),
        (
            &good[..good.len() - 1],
            Limits::default(),
            ErrorCode::MalformedFrame,
        ),
        (&[], Limits::default(), ErrorCode::MalformedFrame),
        (
            &[0x7f, 0, 0, 0],
            Limits::default(),
            ErrorCode::FrameTooLarge,
        ),
        (
            &decisions_frame,
            Limits::default(),
            ErrorCode::UnsupportedFrame,
        ),
        (
            &[0, 0, 0, 1, 9],
            Limits::default(),
            ErrorCode::UnsupportedFrame,
        ),
        (&garbage, Limits::default(), ErrorCode::MalformedFrame),
    ];
    for (i, (input, limits, code)) in cases.into_iter().enumerate() {
        let (served, frames) = run(&f, input, &limits);
        assert_eq!(served, Served::Failed(code), "case {i}");
        assert_eq!(only_error(&frames), (0, code as u16), "case {i}");
    }
}

#[test]
fn watched_tenants_are_counted_one_by_one_and_only_they() {
    let f = fixture();
    let good =
        f.hs.mint(Some("hs"), &format!(r#"{{"exp":{}}}"#, NOW + 60))
            .unwrap();
    // 40 items over three tenant ids: "t" (keys, allowed), "u" (unknown), "v" (unknown, not watched).
    let tenants = ["t", "t", "u", "v"];
    let items: Vec<Item<'_>> = (0..40)
        .map(|i| Item {
            token: Some(good.as_bytes()),
            tenant: tenants[i % 4],
            method: None,
            addresses: vec![],
            origin: None,
            user_agent: None,
        })
        .collect();
    let mut input = Vec::new();
    encode_batch(
        &BatchRequest {
            request_id: 7,
            items,
        },
        &mut input,
    )
    .unwrap();
    let watch = Arc::new(TenantWatch::new(["u", "t", "u"]).unwrap());
    assert_eq!(watch.names(), ["u", "t"], "duplicates ignored, order kept");
    let serve = |tally: &mut Tally| {
        serve_stream_with(
            &f.engine,
            &f.pool,
            &f.snapshot,
            &input,
            &Limits::default(),
            UnixTime(NOW),
            None,
            tally,
            &|_| {},
        )
    };
    let mut tally = Tally::watching(Some(watch));
    let (served, held) = serve(&mut tally);
    assert_eq!(
        served,
        Served::Decided {
            items: 40,
            frames: 3
        }
    );
    assert!(held.is_empty());
    let mut per_tenant: Vec<(usize, u32, u32)> = tally.tenants().collect();
    per_tenant.sort_unstable();
    // slot 0 = "u": 10 denied (unknown_tenant); slot 1 = "t": 20 allowed; "v" nowhere.
    assert_eq!(per_tenant, [(0, 0, 10), (1, 20, 0)]);
    let total: u32 = tally.iter().map(|(_, _, n)| n).sum();
    assert_eq!(total, 40, "the (reason, alg) counts still cover every item");

    // Without a watch list nothing is counted per tenant.
    let mut plain = Tally::default();
    serve(&mut plain);
    assert_eq!(plain.tenants().count(), 0);

    let too_many: Vec<String> = (0..=TenantWatch::MAX).map(|i| format!("t{i}")).collect();
    assert!(TenantWatch::new(too_many).is_err());
    assert!(TenantWatch::new([""]).is_err());
}
