//! `/metrics` of a running `jotd serve` carries the standard Prometheus
//! process metrics under the names and types of the official clients' process
//! collectors, so stock dashboards and alerts work, with plausible values.

use jotd_e2e::{Daemon, now, scratch_dir};
use std::collections::HashMap;

/// The standard process metrics and their types.
const PROCESS_METRICS: [(&str, &str); 6] = [
    ("process_cpu_seconds_total", "counter"),
    ("process_start_time_seconds", "gauge"),
    ("process_max_fds", "gauge"),
    ("process_open_fds", "gauge"),
    ("process_resident_memory_bytes", "gauge"),
    ("process_virtual_memory_bytes", "gauge"),
];

#[cfg(target_os = "linux")]
#[test]
fn metrics_carry_the_standard_process_metrics() {
    let dir = scratch_dir("process-metrics");
    let before = now();
    let d = Daemon::start(&[], &dir);
    let (status, text) = d.get("/metrics");
    assert_eq!(status, 200, "{text}");

    // Every `# TYPE` line of the exposition, by metric name; none twice.
    let mut types: HashMap<&str, &str> = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                types.insert(name, kind).is_none(),
                "two TYPE lines for {name}:\n{text}"
            );
        }
    }
    let value = |name: &str| -> f64 {
        let samples: Vec<f64> = text
            .lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} {v}")))
            .collect();
        assert_eq!(samples.len(), 1, "one sample of {name}:\n{text}");
        samples[0]
    };
    for (name, kind) in PROCESS_METRICS {
        assert_eq!(
            types.get(name),
            Some(&kind),
            "# TYPE {name} {kind}:\n{text}"
        );
        assert!(
            text.contains(&format!("\n# HELP {name} ")),
            "# HELP {name}:\n{text}"
        );
        assert!(value(name) >= 0.0, "{name}");
    }
    assert!(
        !types.contains_key("process_cpu_seconds"),
        "the old gauge is gone"
    );

    let start = value("process_start_time_seconds");
    assert!(
        start >= (before - 2) as f64 && start <= (now() + 1) as f64,
        "start time {start} is when the daemon started ({before})"
    );
    let (open, max) = (value("process_open_fds"), value("process_max_fds"));
    assert!(open >= 3.0 && max >= open, "open fds {open}, max {max}");
    let (rss, vsize) = (
        value("process_resident_memory_bytes"),
        value("process_virtual_memory_bytes"),
    );
    assert!(
        rss >= 1_048_576.0 && vsize >= rss,
        "resident {rss} B, virtual {vsize} B"
    );
    // The limit is this process's soft RLIMIT_NOFILE, which it inherited from us.
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let soft: f64 = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert_eq!(max, soft, "process_max_fds is the soft limit");
}
