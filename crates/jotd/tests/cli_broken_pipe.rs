//! Every command that prints, run with its standard output a pipe whose reader
//! is already gone (what `jotd config check --config X | head -1` turns into
//! once `head` has its line): it stops quietly. No panic, no `jotd: …` line on
//! standard error, exit status 0 (the reader had what it wanted).

use jotd_core::{Algorithm, SigningKey};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn keys_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../jotd-keys/tests/data")
        .join(name)
}

/// Runs jotd with `args`, its standard output the write end of a pipe whose
/// read end is closed before jotd starts, so its first write fails with EPIPE.
/// Returns (exit code, standard error).
fn with_stdout_closed(args: &[&str]) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_jotd"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run jotd");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_printing_command_exits_quietly_when_stdout_is_closed() {
    let scratch = tempfile::Builder::new()
        .prefix("jotd-epipe-")
        .tempdir()
        .unwrap();
    let dir = scratch.path();
    let secret = "0123456789abcdefghijklmnopqrstuv";
    let config = dir.join("jotd.toml");
    std::fs::write(
        &config,
        format!(
            "[[tenant]]\nid = \"t\"\n[[tenant.key]]\nkid = \"hs\"\nalg = \"HS256\"\nsecret = \"{secret}\"\n"
        ),
    )
    .unwrap();
    // Enough decisions to be more than one buffer of output.
    let token = SigningKey::from_hmac_secret(Algorithm::Hs256, secret.as_bytes())
        .unwrap()
        .mint(Some("hs"), r#"{"sub":"a","exp":4102444800}"#)
        .unwrap();
    let requests = dir.join("requests.jsonl");
    std::fs::write(
        &requests,
        format!("{{\"token\":\"{token}\",\"tenant\":\"t\"}}\n").repeat(2000),
    )
    .unwrap();
    let (config, requests, key) = (
        config.to_str().unwrap(),
        requests.to_str().unwrap(),
        keys_data("ec_p256.pem"),
    );
    let speed = [
        "speed",
        "--seconds",
        "0.01",
        "--algs",
        "HS256",
        "--tokens",
        "1",
    ];
    let cases: Vec<Vec<&str>> = vec![
        vec!["config", "check", "--config", config],
        vec!["check", "--config", config, "--input", requests],
        vec!["key", "fingerprint", key.to_str().unwrap()],
        speed.to_vec(),
        [&speed[..], &["--json"]].concat(),
        vec!["--help"],
        vec!["--version"],
        vec!["check", "--help"],
    ];
    for args in cases {
        let (code, stderr) = with_stdout_closed(&args);
        assert!(
            !stderr.contains("panicked"),
            "jotd {}: panicked on a closed stdout:\n{stderr}",
            args.join(" ")
        );
        assert_eq!(
            (code, stderr.as_str()),
            (Some(0), ""),
            "jotd {}: exit status and standard error on a closed stdout",
            args.join(" ")
        );
    }
}

/// Any other write error is no quiet exit: status 1 and a message naming
/// standard output (/dev/full answers every write with ENOSPC).
#[cfg(target_os = "linux")]
#[test]
fn other_stdout_errors_are_reported() {
    let key = keys_data("ec_p256.pem");
    let out = Command::new(env!("CARGO_BIN_EXE_jotd"))
        .args(["key", "fingerprint", key.to_str().unwrap()])
        .stdout(std::fs::File::create("/dev/full").expect("/dev/full"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("jotd: cannot write to standard output: ")
            && !stderr.contains("panicked"),
        "{stderr}"
    );
}
