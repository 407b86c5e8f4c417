//! The batch job through an in-memory driver with a fake clock (no sockets,
//! no tokio): bytes in, frames out; exactly one decision per item or exactly
//! one error frame; `unknown_kid` of remote-key tenants held for a refetch and
//! resumed on the new snapshot; one report at the end.

use jotd_core::{
    Algorithm, Engine, EngineConfig, Reason, SigningKey, Snapshot, Tenant, TenantKey, UnixTime,
};
use jotd_transport::{
    BatchJob, BatchReport, BatchRequest, DecisionChunk, ErrorCode, FrameType, Item, JobContext,
    Limits, Next, TenantWatch, decode_decisions, decode_error, encode_batch, encode_decisions,
    next_frame, serve_to_end,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
            issuer: None,
        },
        TenantKey {
            kid: "hs".into(),
            key: hs.verifying_key().unwrap(),
            issuer: None,
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

/// A fake clock: every reading moves it 5 ms on.
struct FakeClock {
    base: Instant,
    ticks: AtomicU64,
}

impl FakeClock {
    const STEP: Duration = Duration::from_millis(5);
    fn new() -> Self {
        Self {
            base: Instant::now(),
            ticks: AtomicU64::new(0),
        }
    }
    fn read(&self) -> Instant {
        let n = self.ticks.fetch_add(1, Ordering::SeqCst);
        self.base + Self::STEP * u32::try_from(n).unwrap()
    }
}

fn context<'a>(
    f: &'a Fixture,
    clock: &'a (dyn Fn() -> Instant + Sync),
    watch: Option<&'a Arc<TenantWatch>>,
    record_denials: bool,
) -> JobContext<'a> {
    JobContext {
        engine: &f.engine,
        pool: &f.pool,
        watch,
        record_denials,
        clock,
    }
}

/// Runs one batch to its end (no refetch); returns its report and the frames it sent.
fn run(f: &Fixture, input: &[u8], limits: &Limits) -> (BatchReport, Vec<Vec<u8>>) {
    let sent = Mutex::new(Vec::new());
    let clock = FakeClock::new();
    let read = || clock.read();
    let report = serve_to_end(
        &context(f, &read, None, false),
        &f.snapshot,
        input.to_vec(),
        limits,
        UnixTime(NOW),
        &|frame| sent.lock().unwrap().push(frame),
    );
    (report, sent.into_inner().unwrap())
}

/// Every decision in `frames`, by index; panics on a duplicate or an error frame.
fn decisions(frames: &[Vec<u8>], n: usize, request_id: u64) -> Vec<Reason> {
    let mut seen: Vec<Option<Reason>> = vec![None; n];
    for bytes in frames {
        let frame = next_frame(bytes, &Limits::default()).unwrap().unwrap();
        assert_eq!(frame.kind, FrameType::Decisions);
        let chunk: DecisionChunk<'_> = decode_decisions(frame.body).unwrap();
        assert_eq!(chunk.request_id, request_id);
        for d in chunk.decisions {
            let i = d.index as usize;
            assert!(seen[i].is_none(), "item {i} decided twice");
            seen[i] = d.reason();
        }
    }
    seen.into_iter()
        .map(|r| r.expect("every item decided"))
        .collect()
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
    let (report, frames) = run(&f, &input, &Limits::default());
    assert_eq!((report.items, report.error, report.held), (70, None, 0));
    // Chunks of at most 16 (the engine's chunk size), one frame each.
    assert_eq!(report.frames, frames.len());
    assert!(frames.len() >= 5, "{} frames", frames.len());
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
    let (report, frames) = run(&f, &empty, &Limits::default());
    assert_eq!((report.items, report.frames, report.error), (0, 0, None));
    assert!(frames.is_empty());
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
    // A frame over the limit whose id is readable: the id is echoed.
    let mut big_head = good[..8].to_vec();
    big_head[..4].copy_from_slice(&(2u32 << 20).to_be_bytes());
    // (input, limits, code, request id echoed: 9 wherever the bytes carry it)
    let cases: Vec<(&[u8], Limits, ErrorCode, u64)> = vec![
        (&good, small, ErrorCode::TooManyItems, 9),
        (&trailing, Limits::default(), ErrorCode::MalformedFrame, 9),
        (
            &good[..good.len() - 1],
            Limits::default(),
            ErrorCode::MalformedFrame,
            9,
        ),
        (&[], Limits::default(), ErrorCode::MalformedFrame, 0),
        // A frame of length 0 has no type byte: it does not decode.
        (
            &[0, 0, 0, 0],
            Limits::default(),
            ErrorCode::MalformedFrame,
            0,
        ),
        (
            &[0x7f, 0, 0, 0],
            Limits::default(),
            ErrorCode::FrameTooLarge,
            0,
        ),
        (&big_head, small, ErrorCode::FrameTooLarge, 9),
        (
            &decisions_frame,
            Limits::default(),
            ErrorCode::UnsupportedFrame,
            0,
        ),
        (
            &[0, 0, 0, 1, 9],
            Limits::default(),
            ErrorCode::UnsupportedFrame,
            0,
        ),
        (&garbage, Limits::default(), ErrorCode::MalformedFrame, 0),
    ];
    for (i, (input, limits, code, id)) in cases.into_iter().enumerate() {
        let (report, frames) = run(&f, input, &limits);
        assert_eq!((report.error, report.items), (Some(code), 0), "case {i}");
        assert_eq!(only_error(&frames), (id, code as u16), "case {i}");
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
    let clock = FakeClock::new();
    let read = || clock.read();
    let serve = |watch: Option<&Arc<TenantWatch>>| {
        serve_to_end(
            &context(&f, &read, watch, false),
            &f.snapshot,
            input.clone(),
            &Limits::default(),
            UnixTime(NOW),
            &|_| {},
        )
    };
    let report = serve(Some(&watch));
    assert_eq!((report.items, report.held), (40, 0));
    assert!(report.frames >= 3);
    let tally = report.tally;
    let mut per_tenant: Vec<(usize, u32, u32)> = tally.tenants().collect();
    per_tenant.sort_unstable();
    // slot 0 = "u": 10 denied (unknown_tenant); slot 1 = "t": 20 allowed; "v" nowhere.
    assert_eq!(per_tenant, [(0, 0, 10), (1, 20, 0)]);
    let total: u32 = tally.iter().map(|(_, _, n)| n).sum();
    assert_eq!(total, 40, "the (reason, alg) counts still cover every item");

    // Without a watch list nothing is counted per tenant.
    assert_eq!(serve(None).tally.tenants().count(), 0);

    let too_many: Vec<String> = (0..=TenantWatch::MAX).map(|i| format!("t{i}")).collect();
    assert!(TenantWatch::new(too_many).is_err());
    assert!(TenantWatch::new([""]).is_err());
}

/// A snapshot where tenant "remote" has remote keys (only `es` fetched so
/// far, or both after a refetch) and tenant "t" static keys.
fn remote_snapshot(f: &Fixture, generation: u64, fetched_hs: bool) -> Snapshot {
    let mut keys = vec![TenantKey {
        kid: "es".into(),
        key: f.es.verifying_key().unwrap(),
        issuer: None,
    }];
    if fetched_hs {
        keys.push(TenantKey {
            kid: "hs".into(),
            key: f.hs.verifying_key().unwrap(),
            issuer: None,
        });
    }
    let mut remote = Tenant::new("remote", keys.clone());
    remote.remote_keys = true;
    remote.epoch = generation;
    remote.algorithms = jotd_core::AlgorithmSet::ALL;
    let mut local = Tenant::new("t", keys);
    local.algorithms = jotd_core::AlgorithmSet::ALL;
    Snapshot::new(generation, [Arc::new(remote), Arc::new(local)])
}

fn batch(request_id: u64, items: &[(Option<&str>, &str)]) -> Vec<u8> {
    let items = items
        .iter()
        .map(|(token, tenant)| Item {
            token: token.map(str::as_bytes),
            tenant,
            method: Some("eth_call"),
            addresses: vec!["0xab"],
            origin: None,
            user_agent: None,
        })
        .collect();
    let mut out = Vec::new();
    encode_batch(&BatchRequest { request_id, items }, &mut out).unwrap();
    out
}

#[test]
fn unknown_kid_of_a_remote_tenant_is_held_refetched_and_resumed() {
    let f = fixture();
    let hs =
        f.hs.mint(Some("hs"), &format!(r#"{{"exp":{}}}"#, NOW + 60))
            .unwrap();
    let es =
        f.es.mint(Some("es"), &format!(r#"{{"exp":{}}}"#, NOW + 60))
            .unwrap();
    let input = batch(
        5,
        &[
            (Some(&hs), "remote"),
            (Some(&es), "remote"),
            (Some(&hs), "t"),
            (Some(&hs), "remote"),
        ],
    );
    let before = remote_snapshot(&f, 1, false);
    let after = remote_snapshot(&f, 2, true);
    let clock = FakeClock::new();
    let read = || clock.read();
    let cx = context(&f, &read, None, false);
    let sent = Mutex::new(Vec::new());
    let emit = |frame: Vec<u8>| sent.lock().unwrap().push(frame);

    let mut job = BatchJob::decode(input.clone(), &Limits::default()).unwrap();
    assert_eq!((job.request_id(), job.len()), (5, 4));
    // Held: the remote tenant's unknown kids (twice, one tenant named once);
    // "t" has static keys, so its unknown kid is final now.
    let next = job.verify(&cx, &before, UnixTime(NOW), &emit);
    assert_eq!(next, Next::Refetch(vec!["remote".to_owned()]));
    let early: usize = sent
        .lock()
        .unwrap()
        .iter()
        .map(|f| {
            let frame = next_frame(f, &Limits::default()).unwrap().unwrap();
            decode_decisions(frame.body).unwrap().decisions.len()
        })
        .sum();
    assert_eq!(
        early, 2,
        "the two final decisions go out before the refetch"
    );
    // The driver refetched: the held items are decided on the new keys.
    assert_eq!(
        job.resume(&cx, Some(&after), UnixTime(NOW), &emit),
        Next::Done
    );
    let report = job.finish();
    assert_eq!(
        decisions(&sent.into_inner().unwrap(), 4, 5),
        [Reason::Ok, Reason::Ok, Reason::UnknownKid, Reason::Ok]
    );
    assert_eq!(
        (report.items, report.held, report.refetched, report.error),
        (4, 2, true, None)
    );
    let counted: u32 = report.tally.iter().map(|(_, _, n)| n).sum();
    assert_eq!(counted, 4, "held items are counted once, when decided");
    // Two clock readings for verify, two for resume: 5 ms each.
    assert_eq!(report.verify, FakeClock::STEP * 2);

    // A refetch that brought nothing: the held decisions go out as they were.
    let sent = Mutex::new(Vec::new());
    let emit = |frame: Vec<u8>| sent.lock().unwrap().push(frame);
    let mut job = BatchJob::decode(input, &Limits::default()).unwrap();
    assert!(matches!(
        job.verify(&cx, &before, UnixTime(NOW), &emit),
        Next::Refetch(_)
    ));
    assert_eq!(job.resume(&cx, None, UnixTime(NOW), &emit), Next::Done);
    let report = job.finish();
    assert_eq!(
        decisions(&sent.into_inner().unwrap(), 4, 5),
        [
            Reason::UnknownKid,
            Reason::Ok,
            Reason::UnknownKid,
            Reason::UnknownKid
        ]
    );
    assert!(!report.refetched);
    let counted: u32 = report.tally.iter().map(|(_, _, n)| n).sum();
    assert_eq!(counted, 4);
}

#[test]
fn denials_are_recorded_only_when_asked_and_never_with_the_token() {
    let f = fixture();
    let expired =
        f.hs.mint(Some("hs"), &format!(r#"{{"exp":{}}}"#, NOW - 600))
            .unwrap();
    let good =
        f.hs.mint(Some("hs"), &format!(r#"{{"exp":{}}}"#, NOW + 60))
            .unwrap();
    let input = batch(3, &[(Some(&good), "t"), (Some(&expired), "t"), (None, "t")]);
    let clock = FakeClock::new();
    let read = || clock.read();
    for record in [false, true] {
        let report = serve_to_end(
            &context(&f, &read, None, record),
            &f.snapshot,
            input.clone(),
            &Limits::default(),
            UnixTime(NOW),
            &|_| {},
        );
        if !record {
            assert!(report.denials.is_empty());
            continue;
        }
        let mut denials = report.denials;
        denials.sort_by_key(|d| d.index);
        assert_eq!(denials.len(), 2);
        assert_eq!(
            (
                denials[0].index,
                denials[0].reason,
                denials[0].kid.as_deref()
            ),
            (1, Reason::Expired, Some("hs"))
        );
        assert_eq!(denials[0].method.as_deref(), Some("eth_call"));
        let hash = denials[0].token_hash.as_deref().unwrap();
        assert_eq!(hash, jotd_core::token_hash(expired.as_bytes()));
        assert!(!expired.contains(hash) && hash.len() < 40);
        assert_eq!(
            (
                denials[1].index,
                denials[1].reason,
                denials[1].token_hash.as_deref()
            ),
            (2, Reason::MissingToken, None)
        );
    }
}

/// A driver on an I/O thread decides cheap items itself (`verify_while_cheap`)
/// and leaves what is costly, or past its limit, to `verify` on the pool:
/// every item once across both steps, `unknown_kid` items held in either
/// step, one report that counts each item once.
#[test]
fn cheap_items_are_decided_inline_and_the_rest_on_the_pool() {
    let f = fixture();
    let hs =
        f.hs.mint(Some("hs"), &format!(r#"{{"exp":{}}}"#, NOW + 60))
            .unwrap();
    let es =
        f.es.mint(Some("es"), &format!(r#"{{"exp":{}}}"#, NOW + 60))
            .unwrap();
    // Before the refetch neither tenant has the HMAC key: `hs` at "t" is a
    // final unknown_kid (cheap, refused before the signature), at "remote"
    // it is held. `es` needs an ECDSA verification (costly).
    let mut items: Vec<(Option<&str>, &str)> = Vec::new();
    let mut want = Vec::new();
    for i in 0..60 {
        let (item, reason) = match i {
            0 | 50 => ((Some(hs.as_str()), "remote"), Reason::Ok),
            20 => ((Some(es.as_str()), "t"), Reason::Ok),
            55 => ((Some(es.as_str()), "remote"), Reason::Ok),
            _ => ((Some(hs.as_str()), "t"), Reason::UnknownKid),
        };
        items.push(item);
        want.push(reason);
    }
    let input = batch(9, &items);
    let before = remote_snapshot(&f, 1, false);
    let after = remote_snapshot(&f, 2, true);
    let clock = FakeClock::new();
    let read = || clock.read();
    let cx = context(&f, &read, None, false);
    let sent = Mutex::new(Vec::new());
    let emit = |frame: Vec<u8>| sent.lock().unwrap().push(frame);

    let mut job = BatchJob::decode(input, &Limits::default()).unwrap();
    assert_eq!(
        job.verify_while_cheap(&cx, &before, UnixTime(NOW), 128, &emit),
        Next::Pool,
        "the chunk with the ECDSA token ends the inline part"
    );
    assert!(!f.engine.batches_are_cheap());
    // As docs/protocol.md says: a first frame of up to 4 (item 0 is held, so
    // 3 are sent), then up to 16, and a frame that ends at the first costly item.
    let sizes: Vec<usize> = sent
        .lock()
        .unwrap()
        .iter()
        .map(|fr| {
            let frame = next_frame(fr, &Limits::default()).unwrap().unwrap();
            decode_decisions(frame.body).unwrap().decisions.len()
        })
        .collect();
    assert_eq!(sizes, [3, 16, 1], "inline frames");

    assert_eq!(
        job.verify(&cx, &before, UnixTime(NOW), &emit),
        Next::Refetch(vec!["remote".to_owned()])
    );
    assert_eq!(
        job.resume(&cx, Some(&after), UnixTime(NOW), &emit),
        Next::Done
    );
    let report = job.finish();
    assert_eq!(decisions(&sent.into_inner().unwrap(), 60, 9), want);
    assert_eq!(
        (report.items, report.held, report.refetched, report.error),
        (60, 2, true, None)
    );
    let counted: u32 = report.tally.iter().map(|(_, _, n)| n).sum();
    assert_eq!(counted, 60, "each item counted once");

    // All cheap but longer than the limit: the limit's worth inline, the rest on the pool.
    let long: Vec<(Option<&str>, &str)> = (0..200).map(|_| (Some(hs.as_str()), "t")).collect();
    let sent = Mutex::new(Vec::new());
    let emit = |frame: Vec<u8>| sent.lock().unwrap().push(frame);
    let mut job = BatchJob::decode(batch(10, &long), &Limits::default()).unwrap();
    assert_eq!(
        job.verify_while_cheap(&cx, &before, UnixTime(NOW), 128, &emit),
        Next::Pool
    );
    assert!(f.engine.batches_are_cheap());
    assert_eq!(job.verify(&cx, &before, UnixTime(NOW), &emit), Next::Done);
    assert_eq!(job.finish().items, 200);
    assert_eq!(
        decisions(&sent.into_inner().unwrap(), 200, 10),
        vec![Reason::UnknownKid; 200]
    );

    // Short and cheap: done inline, nothing for the pool.
    let sent = Mutex::new(Vec::new());
    let emit = |frame: Vec<u8>| sent.lock().unwrap().push(frame);
    let mut job = BatchJob::decode(batch(11, &long[..40]), &Limits::default()).unwrap();
    assert_eq!(
        job.verify_while_cheap(&cx, &before, UnixTime(NOW), 128, &emit),
        Next::Done
    );
    assert_eq!(job.finish().items, 40);
    assert_eq!(decisions(&sent.into_inner().unwrap(), 40, 11).len(), 40);
}

/// A batch naming many remote-key tenants with unknown kids asks to refetch
/// for at most `MAX_REFETCH_TENANTS` of them, each once (it set off a fetch
/// per tenant and scanned its list once per item); every held item is still
/// decided once after the hold.
#[test]
fn a_batch_refetches_for_a_bounded_number_of_tenants() {
    let f = fixture();
    let hs =
        f.hs.mint(Some("hs"), &format!(r#"{{"exp":{}}}"#, NOW + 60))
            .unwrap();
    let names: Vec<String> = (0..100).map(|i| format!("r{i}")).collect();
    let tenants: Vec<Arc<Tenant>> = names
        .iter()
        .map(|n| {
            let mut t = Tenant::new(
                n.as_str(),
                vec![TenantKey {
                    kid: "es".into(),
                    key: f.es.verifying_key().unwrap(),
                    issuer: None,
                }],
            );
            t.remote_keys = true;
            t.algorithms = jotd_core::AlgorithmSet::ALL;
            Arc::new(t)
        })
        .collect();
    let snap = Snapshot::new(1, tenants);
    // Each tenant twice: 200 held items.
    let items: Vec<(Option<&str>, &str)> = names
        .iter()
        .chain(names.iter())
        .map(|n| (Some(hs.as_str()), n.as_str()))
        .collect();
    let clock = FakeClock::new();
    let read = || clock.read();
    let cx = context(&f, &read, None, false);
    let sent = Mutex::new(Vec::new());
    let emit = |frame: Vec<u8>| sent.lock().unwrap().push(frame);
    let mut job = BatchJob::decode(batch(9, &items), &Limits::default()).unwrap();
    let Next::Refetch(asked) = job.verify(&cx, &snap, UnixTime(NOW), &emit) else {
        panic!("held")
    };
    assert_eq!(asked.len(), jotd_transport::MAX_REFETCH_TENANTS);
    assert_eq!(asked, names[..jotd_transport::MAX_REFETCH_TENANTS]);
    assert_eq!(job.held_count(), 200);
    job.resume(&cx, None, UnixTime(NOW), &emit);
    let report = job.finish();
    assert_eq!((report.items, report.held), (200, 200));
}
