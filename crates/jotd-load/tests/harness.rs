//! The harness against an in-process daemon: zero mismatches on a mixed
//! workload; and against a server that flips one answer: exactly one
//! mismatch, and a failed run. So the harness's checking can fail.

use jotd_core::{Engine, EngineConfig, Snapshot, UnixTime};
use jotd_load::{Outcome, main_with, run::Report};
use jotd_transport::{
    Backend, JobContext, Limits, Server, ServerOptions, decode_decisions, encode_decisions,
    next_frame, serve_to_end, server_config,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

const MIX: &str = "valid=0.4,expired=0.06,not_yet_valid=0.06,bad_signature=0.06,unknown_kid=0.06,wrong_audience=0.06,policy_deny=0.06,malformed=0.06,revoked=0.06,missing_token=0.06,no_auth=0.06";

/// A scratch folder, removed when the returned guard drops. The harness
/// creates the folder itself, so the guard's path does not exist yet.
fn scratch(name: &str) -> (tempfile::TempDir, PathBuf) {
    let guard = tempfile::Builder::new()
        .prefix(&format!("jotd-load-{name}-"))
        .tempdir()
        .unwrap();
    let dir = guard.path().join("run");
    (guard, dir)
}

fn tenants(dir: &Path) {
    let out = main_with([
        "jotd-load",
        "tenants",
        "--count",
        "6",
        "--algs",
        "ES256,EdDSA,HS256",
        "--out",
        dir.to_str().unwrap(),
    ])
    .unwrap();
    assert!(matches!(out, Outcome::Done));
}

/// The keys of the daemon config `jotd-load tenants` wrote: its keys
/// section goes to jotd-keys (the daemon's own sections are the daemon's).
fn snapshot(dir: &Path) -> Snapshot {
    let config = dir.join("jotd.toml");
    let mut file: toml::Table = toml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    for daemon_section in ["server", "verify", "admin", "log", "jwks_fetch"] {
        file.remove(daemon_section);
    }
    let keys_only = toml::to_string(&file).unwrap();
    let read = |p: &Path| {
        if p == config {
            Ok(keys_only.clone().into_bytes())
        } else {
            std::fs::read(p)
        }
    };
    let cfg = jotd_keys::load(&config, &read).unwrap();
    cfg.snapshot(1, &|_, _| None)
}

fn now() -> UnixTime {
    UnixTime(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
}

struct Fixed(Arc<Snapshot>);

impl Backend for Fixed {
    fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.0)
    }
    fn now(&self) -> UnixTime {
        now()
    }
}

fn tls(dir: &Path) -> rustls::ServerConfig {
    server_config(
        &std::fs::read(dir.join("server.pem")).unwrap(),
        &std::fs::read(dir.join("server.key")).unwrap(),
        None,
    )
    .unwrap()
}

fn run_harness(dir: &Path, addr: SocketAddr, count: &str) -> Report {
    run_harness_on(dir, addr, count, "1")
}

fn run_harness_on(dir: &Path, addr: SocketAddr, count: &str, connections: &str) -> Report {
    let out = main_with([
        "jotd-load",
        "run",
        "--manifest",
        dir.join("load.json").to_str().unwrap(),
        "--endpoint",
        &addr.to_string(),
        "--count",
        count,
        "--batch",
        "32",
        "--distinct",
        "8",
        "--tenants",
        "6",
        "--connections",
        connections,
        "--streams",
        "4",
        "--threads",
        "2",
        "--quiet",
        "--mix",
        MIX,
    ])
    .unwrap();
    match out {
        Outcome::Ran(r) => r,
        Outcome::Done => panic!("run reports"),
    }
}

#[test]
fn zero_mismatches_against_the_real_server_on_a_mixed_workload() {
    let (_scratch, dir) = scratch("real");
    tenants(&dir);
    let snap = Arc::new(snapshot(&dir));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (addr, stop) = rt.block_on(async {
        let server = Server::bind(
            ServerOptions {
                listen: "127.0.0.1:0".parse().unwrap(),
                ..ServerOptions::default()
            },
            tls(&dir),
            Arc::new(Engine::new(EngineConfig::default())),
            Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(2)
                    .build()
                    .unwrap(),
            ),
            Arc::new(Fixed(snap)),
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        (addr, tx)
    });
    let r = run_harness(&dir, addr, "8000");
    assert!(r.passed(), "{r:#?}");
    assert_eq!(r.tokens, 8000);
    assert_eq!(r.mismatches, 0);
    for reason in [
        "ok",
        "expired",
        "not_yet_valid",
        "bad_signature",
        "unknown_kid",
        "bad_audience",
        "method_not_allowed",
        "permission_denied",
        "malformed",
        "revoked",
        "missing_token",
        "ok_no_auth",
    ] {
        assert!(
            r.reasons.get(reason).copied().unwrap_or(0) > 0,
            "no {reason}: {r:#?}"
        );
    }
    let _ = stop.send(());
}

/// A manifest's folder (kept while the first part lives), the runtime the
/// server runs on, and a faulty server's address.
fn faulty(
    name: &str,
    fault: Fault,
) -> (
    tempfile::TempDir,
    PathBuf,
    tokio::runtime::Runtime,
    SocketAddr,
) {
    let (scratch, dir) = scratch(name);
    tenants(&dir);
    let snap = Arc::new(snapshot(&dir));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = rt.block_on(faulty_server(&dir, snap, fault));
    (scratch, dir, rt, addr)
}

/// What a faulty server does to the first decision of its fifth stream.
#[derive(Clone, Copy)]
enum Fault {
    /// A wrong reason, and the allow bit with it.
    Flip,
    /// The allow bit alone (the reason right).
    FlipAllow,
    /// The decision sent twice on its stream.
    Duplicate,
    /// From the fifth stream on, no answer at all (the stream held open).
    Stall,
}

/// A server that answers through the batch job (`serve_to_end`) but spoils the first decision
/// of its fifth stream as `fault` says.
async fn faulty_server(dir: &Path, snap: Arc<Snapshot>, fault: Fault) -> SocketAddr {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls(dir)).unwrap();
    let endpoint = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(crypto)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let engine = Arc::new(Engine::new(EngineConfig::default()));
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap(),
    );
    let streams = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let (engine, pool, snap, streams) = (
                Arc::clone(&engine),
                Arc::clone(&pool),
                Arc::clone(&snap),
                Arc::clone(&streams),
            );
            tokio::spawn(async move {
                let conn = incoming.await.unwrap();
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let (engine, pool, snap) =
                        (Arc::clone(&engine), Arc::clone(&pool), Arc::clone(&snap));
                    let nth = streams.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let input = recv.read_to_end(1 << 24).await.unwrap();
                        if matches!(fault, Fault::Stall) && nth >= 4 {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        let frames = tokio::task::spawn_blocking(move || {
                            let out = std::sync::Mutex::new(Vec::new());
                            let clock = std::time::Instant::now;
                            let cx = JobContext {
                                engine: &engine,
                                pool: &pool,
                                watch: None,
                                record_denials: false,
                                clock: &clock,
                            };
                            serve_to_end(&cx, &snap, input, &Limits::default(), now(), &|f| {
                                out.lock().unwrap().push(f)
                            });
                            out.into_inner().unwrap()
                        })
                        .await
                        .unwrap();
                        for (i, frame) in frames.iter().enumerate() {
                            if nth == 4 && i == 0 {
                                let raw = next_frame(frame, &Limits::default()).unwrap().unwrap();
                                let mut chunk = decode_decisions(raw.body).unwrap();
                                let d = &mut chunk.decisions[0];
                                match fault {
                                    // The wrong answer: a deny becomes ok, anything else bad_signature.
                                    Fault::Flip => {
                                        let ok = jotd_core::Reason::Ok.code();
                                        let bad = jotd_core::Reason::BadSignature.code();
                                        d.reason = if d.reason == ok { bad } else { ok };
                                        d.allow = !d.allow;
                                    }
                                    Fault::FlipAllow => d.allow = !d.allow,
                                    Fault::Stall => unreachable!("never answers"),
                                    Fault::Duplicate => {
                                        let again = d.clone();
                                        chunk.decisions.push(again);
                                    }
                                }
                                let mut flipped = Vec::new();
                                encode_decisions(&chunk, &mut flipped).unwrap();
                                send.write_all(&flipped).await.unwrap();
                            } else {
                                send.write_all(frame).await.unwrap();
                            }
                        }
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    });
                }
            });
        }
    });
    addr
}

#[test]
fn a_flipped_answer_is_caught_and_fails_the_run() {
    let (_scratch, dir, _rt, addr) = faulty("flip", Fault::Flip);
    let r = run_harness(&dir, addr, "640");
    assert_eq!(r.mismatches, 1, "{r:#?}");
    assert_eq!(r.missing, 0);
    assert!(!r.passed());
    assert_eq!(r.first_mismatches.len(), 1);
}

/// The allow bit is what a gateway acts on: one flipped while the reason is
/// right is a mismatch too.
#[test]
fn a_flipped_allow_bit_alone_is_caught() {
    let (_scratch, dir, _rt, addr) = faulty("flip-allow", Fault::FlipAllow);
    let r = run_harness(&dir, addr, "640");
    assert_eq!(r.mismatches, 1, "{r:#?}");
    assert!(!r.passed());
    assert!(
        r.first_mismatches[0].contains("allow"),
        "{:?}",
        r.first_mismatches
    );
}

/// A decision sent twice on one stream is a protocol violation: the client
/// drops that answer and a second connection decides the batch cleanly, but
/// the run still fails (it promised to catch duplicated decisions).
#[test]
fn a_duplicated_decision_fails_the_run_even_when_a_retry_decides_the_batch() {
    let (_scratch, dir, _rt, addr) = faulty("dup", Fault::Duplicate);
    let r = run_harness_on(&dir, addr, "640", "2");
    assert_eq!(r.mismatches, 0, "{r:#?}");
    assert_eq!(r.fleet.protocol_violations, 1, "{r:#?}");
    assert_eq!(
        (r.missing, r.batch_errors),
        (0, 0),
        "the retry decided it: {r:#?}"
    );
    assert!(!r.passed(), "{r:#?}");
}

/// Open loop against a daemon that stops answering: the batches that came
/// due while every worker waited are not dropped from the report (they were
/// never sent), they are counted and in the percentiles as having waited
/// until the end.
#[test]
fn batches_due_while_the_daemon_stalls_are_in_the_latency() {
    let (_scratch, dir, _rt, addr) = faulty("stall", Fault::Stall);
    let out = main_with([
        "jotd-load",
        "run",
        "--manifest",
        dir.join("load.json").to_str().unwrap(),
        "--endpoint",
        &addr.to_string(),
        "--rate",
        "3200",
        "--batch",
        "32",
        "--duration",
        "2",
        "--timeout-ms",
        "2500",
        "--connections",
        "1",
        "--streams",
        "4",
        "--no-hedge",
        "--quiet",
    ])
    .unwrap();
    let Outcome::Ran(r) = out else {
        panic!("run reports")
    };
    // 100 batches a second for 2 s; four answered, four stuck, the rest queued.
    assert!(r.unsent_due >= 100, "{r:#?}");
    assert!(r.latency_us.p90 >= 500_000, "{:?}", r.latency_us);
    assert!(!r.passed());
}

#[test]
fn bad_flags_are_named() {
    let e = main_with([
        "jotd-load",
        "run",
        "--mix",
        "valid=1,nope=2",
        "--manifest",
        "/nonexistent/load.json",
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("/nonexistent/load.json"), "{e}");
    let (_scratch, dir) = scratch("flags");
    tenants(&dir);
    let m = dir.join("load.json");
    let e = main_with([
        "jotd-load",
        "run",
        "--manifest",
        m.to_str().unwrap(),
        "--mix",
        "valid=1,nope=2",
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown outcome `nope`"), "{e}");
    let e = main_with([
        "jotd-load",
        "run",
        "--manifest",
        m.to_str().unwrap(),
        "--duration",
        "5 parsecs",
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("--duration"), "{e}");
    let e = main_with([
        "jotd-load",
        "run",
        "--manifest",
        m.to_str().unwrap(),
        "--algs",
        "RS999",
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("RS999"), "{e}");
    // The client's bounds, refused as the flags that set them.
    for (flag, value) in [
        ("--connections", "65"),
        ("--timeout-ms", "0"),
        ("--timeout-ms", "18446744073709551615"),
        ("--server-name", ""),
        ("--server-name", "jotd pool"),
        // A run that checks nothing, lists that would allocate without bound,
        // a pacer that would spin, a run outliving its tokens, a silent 0.
        ("--count", "0"),
        ("--batch", "0"),
        ("--connections", "0"),
        ("--streams", "0"),
        ("--batch", "65537"),
        ("--streams", "18446744073709551615"),
        ("--rate", "1e12"),
        ("--duration", "2h"),
        ("--tenants", "0"),
        ("--tenants", "100000"),
        ("--distinct", "0"),
        ("--distinct", "18446744073709551615"),
        ("--resolve-interval-s", "0"),
        ("--metrics-url", "https://127.0.0.1:9464/metrics"),
        ("--metrics-url", "127.0.0.1:9464/metrics"),
    ] {
        let e = main_with([
            "jotd-load",
            "run",
            "--manifest",
            m.to_str().unwrap(),
            "--endpoint",
            "127.0.0.1:9",
            flag,
            value,
        ])
        .unwrap_err()
        .to_string();
        assert!(e.starts_with(flag), "{flag} {value:?}: {e}");
    }
    // A --count at its --rate that outlives the tokens' hour (it had no
    // limit without --duration: every token came back expired at the end).
    let e = main_with([
        "jotd-load",
        "run",
        "--manifest",
        m.to_str().unwrap(),
        "--endpoint",
        "127.0.0.1:9",
        "--count",
        "1000000000",
        "--rate",
        "1000",
    ])
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("--count 1000000000 at --rate 1000"), "{e}");
    // Stall mode: a --part that is the whole frame (or more) is no stall.
    for (flag, extra) in [
        ("--part", ["--size", "10", "--part", "14"]),
        ("--part", ["--size", "100", "--part", "5"]),
        ("--size", ["--size", "1", "--part", "6"]),
        ("--streams", ["--streams", "0", "--part", "6"]),
    ] {
        let mut argv = vec![
            "jotd-load",
            "stall",
            "--endpoint",
            "127.0.0.1:9",
            "--ca",
            "/nonexistent/ca.pem",
        ];
        argv.extend(extra);
        let e = main_with(argv).unwrap_err().to_string();
        assert!(e.starts_with(flag), "{extra:?}: {e}");
    }
}
