//! The two binaries together, as the README's commands use them: `jotd serve`
//! on its development defaults, `jotd-load run --dev` against it with a mixed
//! workload. Every decision is checked by the harness; the daemon's metrics
//! count what the harness got, plus at most the client's second copies.

use jotd_e2e::{Daemon, bin, scratch_dir};
use serde_json::Value;
use std::process::Command;

/// The value of an unlabelled series, or the sum of a labelled one.
fn metric_sum(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn the_harness_checks_every_decision_of_the_dev_daemon() {
    let dir = scratch_dir("harness-dev");
    let daemon = Daemon::start(&[], &dir);
    let report = dir.join("report.json");
    let out = Command::new(bin("jotd-load"))
        .args(["run", "--dev", "--duration", "2", "--quiet"])
        .args(["--endpoint", &daemon.quic.to_string()])
        .args(["--mix", "valid=0.8,expired=0.1,bad_signature=0.1"])
        .arg("--json")
        .arg(&report)
        .current_dir(&dir)
        .output()
        .expect("run jotd-load");
    assert!(
        out.status.success(),
        "jotd-load failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let tokens = r["tokens"].as_u64().unwrap();
    assert!(tokens > 0, "{r}");
    assert_eq!(r["mismatches"], 0, "{r}");
    assert_eq!(r["missing"], 0, "{r}");
    assert_eq!(r["batch_errors"], 0, "{r}");
    let reasons = r["reasons"].as_object().unwrap();
    for reason in ["ok", "expired", "bad_signature"] {
        assert!(
            reasons.get(reason).is_some_and(|n| n.as_u64() > Some(0)),
            "{reason}: {r}"
        );
    }
    // The daemon verified every token the harness got, and more only by
    // the client's second copies (hedges, retries: at most one batch each)
    // and the batches in flight when the run stopped (2 connections x 8
    // streams). Its batch reports land a moment after the last answer byte:
    // poll briefly.
    let fleet = &r["fleet"];
    let extra_batches = fleet["hedges"].as_u64().unwrap() + fleet["retries"].as_u64().unwrap() + 16;
    #[allow(clippy::cast_precision_loss)]
    let (got, most) = (tokens as f64, (tokens + 64 * extra_batches) as f64);
    let mut counted = 0.0;
    for _ in 0..100 {
        let (status, metrics) = daemon.get("/metrics");
        assert_eq!(status, 200);
        counted = metric_sum(&metrics, "jotd_tokens_total");
        if counted >= got {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        (got..=most).contains(&counted),
        "daemon counted {counted}, harness got {got}, fleet {fleet}"
    );
}
