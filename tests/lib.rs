//! jotd's end-to-end tests: the ones that span binaries and crates (the
//! daemon over QUIC with the client library, the load harness against the
//! daemon, a real Prometheus scrape). Unit and single-crate tests stay beside
//! their code.
//!
//! This library holds what they share: the workspace's binaries (built on
//! first use, in the profile the tests were built with), a running
//! `jotd serve`, plain HTTP GETs.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// The workspace's root folder.
#[must_use]
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A binary of the workspace (`jotd`, `jotd-load`), from the target folder
/// and profile these tests were built in. The first call in a test process
/// runs `cargo build` for both (a no-op when they are up to date), so
/// `cargo test -p jotd-e2e` alone never runs a stale daemon.
///
/// # Panics
/// The build fails.
#[must_use]
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    BUILT.get_or_init(|| {
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug");
        let target_dir = profile_dir.parent().expect("target folder");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "jotd",
            "-p",
            "jotd-load",
            "-p",
            "jotd-gateway",
            "--bins",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(workspace_root());
        if profile != "debug" {
            cmd.args(["--profile", profile]);
        }
        let status = cmd.status().expect("run cargo build");
        assert!(
            status.success(),
            "cargo build of jotd, jotd-load and jotd-gateway failed"
        );
    });
    profile_dir.join(name)
}

/// A fresh scratch folder for one test, removed when dropped (so a test run
/// leaves nothing under the temporary directory). It derefs to its path.
pub struct Scratch(tempfile::TempDir);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

/// A fresh scratch folder for one test; see [`Scratch`].
///
/// # Panics
/// The folder cannot be made.
#[must_use]
pub fn scratch_dir(name: &str) -> Scratch {
    Scratch(
        tempfile::Builder::new()
            .prefix(&format!("jotd-serve-{name}-"))
            .tempdir()
            .unwrap(),
    )
}

/// Seconds since the Unix epoch.
#[must_use]
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A two-thread tokio runtime for the client side.
///
/// # Panics
/// The runtime cannot start.
#[must_use]
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A running `jotd serve`, its log lines collected.
#[derive(Debug)]
pub struct Daemon {
    /// The process.
    pub child: Child,
    /// Its QUIC address.
    pub quic: SocketAddr,
    /// Its admin (metrics, health) address.
    pub admin: SocketAddr,
    /// Every log line so far (JSON).
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts `jotd serve` in `cwd` with `args`, on loopback ports it picks,
    /// and waits until it serves.
    ///
    /// # Panics
    /// It does not start within 30 s.
    #[must_use]
    pub fn start(args: &[&str], cwd: &Path) -> Self {
        Self::spawn(args, cwd).serving()
    }

    /// Starts `jotd serve` as [`Daemon::start`] does, without waiting.
    ///
    /// # Panics
    /// The binary cannot be run.
    #[must_use]
    pub fn spawn(args: &[&str], cwd: &Path) -> Starting {
        let mut child = Command::new(bin("jotd"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--log-format", "json"])
            .args(args)
            .current_dir(cwd)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run jotd serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line.clone());
                    log.lock().unwrap().push(line);
                }
            });
        }
        Starting {
            child: Some(child),
            log,
            rx,
        }
    }

    /// Sends a signal (`-HUP`, `-TERM`, …).
    ///
    /// # Panics
    /// `kill` fails.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// Waits (up to 20 s) for a log line containing `needle`.
    ///
    /// # Panics
    /// No such line arrives.
    pub fn wait_log(&self, needle: &str) {
        self.wait_log_all(&[needle]);
    }

    /// Waits (up to 20 s) for a log line holding `needle` and returns the
    /// first such line.
    ///
    /// # Panics
    /// When none came.
    #[must_use]
    pub fn log_line(&self, needle: &str) -> String {
        self.wait_log(needle);
        self.log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
            .expect("waited for it")
    }

    /// Waits (up to 20 s) for a log line holding every one of `needles`.
    pub fn wait_log_all(&self, needles: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let found = || {
            self.log
                .lock()
                .unwrap()
                .iter()
                .any(|l| needles.iter().all(|n| l.contains(n)))
        };
        while Instant::now() < deadline {
            if found() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "no log line with {needles:?}: {:?}",
            self.log.lock().unwrap()
        );
    }

    /// `/metrics` once `ready` holds for it (up to 5 s; then as it is). A
    /// batch's report, which the metrics count, lands a moment after its
    /// last answer byte: a test that reads counts right after its answers
    /// must wait for them.
    #[must_use]
    pub fn metrics_when(&self, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (status, body) = self.get("/metrics");
            assert_eq!(status, 200, "{body}");
            if ready(&body) || Instant::now() >= deadline {
                return body;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GETs `path` from the admin listener: (status, body).
    #[must_use]
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path)
    }
}

/// A `jotd serve` started by [`Daemon::spawn`], not yet serving.
#[derive(Debug)]
pub struct Starting {
    /// `None` once [`Starting::serving`] handed it on.
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    rx: std::sync::mpsc::Receiver<String>,
}

impl Starting {
    /// The process id (for signals while it starts).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits until it serves (its QUIC and admin addresses are logged).
    ///
    /// # Panics
    /// It does not within 30 s.
    #[must_use]
    pub fn serving(mut self) -> Daemon {
        let log = Arc::clone(&self.log);
        let (mut quic, mut admin) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while quic.is_none() || admin.is_none() {
            let line = self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("jotd serve did not start: {:?}", log.lock().unwrap()));
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if let Some(a) = v["addr"].as_str() {
                quic = a.parse().ok();
            }
            if let Some(a) = v["bound"].as_str() {
                admin = a.parse().ok();
            }
        }
        Daemon {
            child: self.child.take().expect("serving is called once"),
            quic: quic.unwrap(),
            admin: admin.unwrap(),
            log,
        }
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bare HTTP/1.1 GET (the admin listener speaks plain HTTP).
///
/// # Panics
/// The connection or the response fails.
#[must_use]
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A child process's exit status, waiting at most 20 s (`why`: the failure).
///
/// # Panics
/// When it has not exited by then.
pub fn exit_within_20_s(child: &mut std::process::Child, why: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "{why}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
