//! A real Prometheus scrapes a real `jotd serve`: the token count Prometheus
//! reports equals what the client sent, the standard process metrics arrive;
//! `promtool check metrics` passes on the exposition and `promtool check
//! rules` on deploy/prometheus/jotd-alerts.yml.
//!
//! Prometheus comes from Debian's `prometheus` package; `.ci/run` installs it,
//! and this test installs it itself when it is missing and it may (root).

use jotd_core::{Algorithm, SigningKey};
use jotd_e2e::{Daemon, http_get, now, runtime, scratch_dir};
use jotd_transport::{Client, ClientOptions, Item, client_config};
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tool(name: &str) -> PathBuf {
    let find = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .find(|p| p.is_file())
        })
    };
    if let Some(p) = find() {
        return p;
    }
    // Install Debian's package (what .ci/run does), when we are root.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if root {
        let _ = Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "prometheus"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status();
    }
    find().unwrap_or_else(|| {
        panic!("`{name}` not found: install Debian's prometheus package (.ci/run does: apt-get install prometheus)")
    })
}

fn repo() -> PathBuf {
    jotd_e2e::workspace_root()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prometheus_counts_what_the_client_sent_and_promtool_accepts_metrics_and_rules() {
    let prometheus = tool("prometheus");
    let promtool = tool("promtool");
    let dir = scratch_dir("prometheus");
    let d = Daemon::start(&[], &dir);
    let dev = dir.join("jotd-dev");

    // Traffic: 3 batches, 250 tokens: allowed, expired and malformed.
    let key = SigningKey::from_pkcs8(
        Algorithm::Es256,
        &std::fs::read(dev.join("keys/es256.pk8.der")).unwrap(),
    )
    .unwrap();
    let n = now();
    let good: Vec<String> = (0..100)
        .map(|i| {
            key.mint(
                Some("es256"),
                &format!(r#"{{"sub":"u{i}","aud":"jotd-dev","exp":{}}}"#, n + 600),
            )
            .unwrap()
        })
        .collect();
    let expired = key
        .mint(
            Some("es256"),
            &format!(r#"{{"sub":"old","aud":"jotd-dev","exp":{}}}"#, n - 600),
        )
        .unwrap();
    let ca = std::fs::read(dev.join("ca.pem")).unwrap();
    let rt = runtime();
    let sent = rt.block_on(async {
        let c = Client::new(ClientOptions::new(
            vec![d.quic],
            client_config(&ca, None).unwrap(),
        ))
        .unwrap();
        let item = |t: &'static str, token: Option<&'static [u8]>| Item {
            token,
            tenant: t,
            method: Some("eth_call"),
            addresses: vec![],
            origin: None,
            user_agent: None,
        };
        let good: &'static [String] = Box::leak(good.into_boxed_slice());
        let expired: &'static str = Box::leak(expired.into_boxed_str());
        let a: Vec<Item<'_>> = good
            .iter()
            .map(|t| item("demo", Some(t.as_bytes())))
            .collect();
        let b: Vec<Item<'_>> = (0..100)
            .map(|_| item("demo", Some(expired.as_bytes())))
            .collect();
        let m: Vec<Item<'_>> = (0..50).map(|_| item("demo-besu", Some(b"x.y"))).collect();
        let mut sent = 0;
        for batch in [a, b, m] {
            sent += c.verify_all(&batch).await.unwrap().len();
        }
        sent
    });
    assert_eq!(sent, 250);

    // The exposition passes promtool's linter.
    let (status, body) = http_get(d.admin, "/metrics");
    assert_eq!(status, 200);
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The alert rules are valid.
    let rules = repo().join("deploy/prometheus/jotd-alerts.yml");
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A real Prometheus scrapes the daemon; its count equals what was sent.
    let port = free_port();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: jotd\n    static_configs:\n      - targets: [\"{}\"]\n",
            d.admin
        ),
    )
    .unwrap();
    let _prom = Killed(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let query = |q: &str| -> Option<f64> {
        let (status, body) =
            std::panic::catch_unwind(|| http_get(addr, &format!("/api/v1/query?query={q}")))
                .ok()?;
        if status != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let mut last = None;
    while Instant::now() < deadline {
        last = query("sum(jotd_tokens_total)");
        if last == Some(sent as f64) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(last, Some(250.0), "Prometheus's count of tokens");
    let denied = query("sum(jotd_tokens_total%7Boutcome=%22deny%22%7D)");
    assert_eq!(denied, Some(150.0));
    let expired = query("sum(jotd_tokens_total%7Breason=%22expired%22%7D)");
    assert_eq!(expired, Some(100.0));
    let batches = query("sum(jotd_batch_size_count)");
    assert_eq!(batches, Some(3.0));
    // The standard process metrics arrive under their standard names (what
    // the JotdFileDescriptorsNearLimit rule and the dashboard query).
    for name in [
        "process_cpu_seconds_total",
        "process_start_time_seconds",
        "process_open_fds",
        "process_max_fds",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
    ] {
        assert!(
            query(&format!("{name}%7Bjob=%22jotd%22%7D")).is_some_and(|v| v > 0.0),
            "{name} in Prometheus"
        );
    }
}
