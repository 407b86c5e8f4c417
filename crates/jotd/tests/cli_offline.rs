//! The offline commands through the real binary: `key fingerprint`, `config check`, `check`.

use jotd_core::{Algorithm, SigningKey};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn keys_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../jotd-keys/tests/data")
        .join(name)
}

fn jotd(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_jotd"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run jotd");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A fresh folder for one test's files.
fn scratch_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("jotd-cli-{name}-"))
        .tempdir()
        .unwrap()
}

#[test]
fn key_fingerprint_matches_openssl_and_names_bad_files() {
    let file = keys_data("ec_p256.pem");
    let out = jotd(&["key", "fingerprint", file.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let openssl = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl pkey -pubin -in '{}' -outform DER | openssl sha256 -binary | openssl base64",
            file.display()
        ))
        .output()
        .expect("openssl CLI");
    assert_eq!(text(&out.stdout), text(&openssl.stdout));
    let small = jotd(
        &[
            "key",
            "fingerprint",
            keys_data("rsa1024.pem").to_str().unwrap(),
        ],
        None,
    );
    assert!(!small.status.success());
    assert!(
        text(&small.stderr).contains("rsa1024.pem: RSA modulus of 1024 bits"),
        "{}",
        text(&small.stderr)
    );
    let missing = jotd(&["key", "fingerprint", "/no/such/key.pem"], None);
    assert!(
        !missing.status.success()
            && text(&missing.stderr).contains("/no/such/key.pem: cannot read")
    );
}

fn write_config(dir: &Path) -> PathBuf {
    let config = dir.join("tenants.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[tenant]]
id = "infura"
policy = "allowlist"
no_auth_methods = ["net_version"]
claims_to_return = ["groups"]
[[tenant.key]]
kid = "rsa"
name = "primary"
alg = "RS256"
pem_file = "{}"
[[tenant.key]]
kid = "hs"
alg = "HS256"
secret = "0123456789abcdefghijklmnopqrstuv"
"#,
            keys_data("rsa2048.pem").display()
        ),
    )
    .unwrap();
    config
}

#[test]
fn config_check_lists_keys_or_names_the_error() {
    let scratch = scratch_dir("config");
    let dir = scratch.path();
    let config = write_config(dir);
    let out = jotd(
        &["config", "check", "--config", config.to_str().unwrap()],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    let fp = jotd_keys::material::fingerprint(&std::fs::read(keys_data("rsa2048.pem")).unwrap())
        .unwrap();
    assert!(
        listing.contains("tenant infura: policy allowlist"),
        "{listing}"
    );
    assert!(
        listing.contains(&format!("key rsa (primary) RS256 {fp}")),
        "{listing}"
    );
    assert!(
        listing.contains("key hs (-) HS256 (HMAC secret, no fingerprint)"),
        "{listing}"
    );

    std::fs::write(&config, "[[tenant]]\nid = \"x\"\n[[tenant.key]]\nkid = \"k\"\nalg = \"HS256\"\nsecret = \"short\"\n").unwrap();
    let bad = jotd(
        &["config", "check", "--config", config.to_str().unwrap()],
        None,
    );
    assert_eq!(bad.status.code(), Some(1));
    let err = text(&bad.stderr);
    assert!(
        err.contains(&format!(
            "{}:3: tenant[0].key[0]: tenant `x`, key `k`: HS256 secret of 5 bytes",
            config.display()
        )),
        "{err}"
    );

    // The daemon's sections are checked too: values, and the TLS files they name.
    let tenant = "[[tenant]]\nid = \"x\"\n[[tenant.key]]\nkid = \"k\"\nalg = \"HS256\"\nsecret = \"0123456789abcdefghijklmnopqrstuv\"\n";
    let check_with = |server: &str| {
        std::fs::write(&config, format!("{server}\n{tenant}")).unwrap();
        jotd(
            &["config", "check", "--config", config.to_str().unwrap()],
            None,
        )
    };
    let bad = check_with("[server]\n\n\n\nlisten = \"nowhere\"");
    assert_eq!(bad.status.code(), Some(1));
    let err = text(&bad.stderr);
    assert!(
        err.contains(":5: server.listen: `nowhere` is not an IP:port address"),
        "{err}"
    );
    let bad = check_with("[server]\ncert_file = \"missing.pem\"\nkey_file = \"missing.key\"");
    assert_eq!(bad.status.code(), Some(1));
    let err = text(&bad.stderr);
    assert!(
        err.contains("server.cert_file") && err.contains("missing.pem"),
        "{err}"
    );
    // A key bound to an issuer says so.
    std::fs::write(
        &config,
        format!("{tenant}issuer = \"https://idp.example/\"\n[[tenant.jwks]]\nurl = \"https://idp.example/jwks\"\nalg = \"RS256\"\nissuer = \"https://idp.example/\"\n[[tenant.jwks]]\nurl = \"https://idp.example/jwks?access_token=SECRET\"\nalg = \"ES256\"\n"),
    )
    .unwrap();
    let bound = jotd(
        &["config", "check", "--config", config.to_str().unwrap()],
        None,
    );
    assert!(bound.status.success(), "{}", text(&bound.stderr));
    let listing = text(&bound.stdout);
    assert!(
        listing.contains(r#"key k (-) HS256 (HMAC secret, no fingerprint) [secret], issuer "https://idp.example/" only"#)
            && listing.contains(r#"jwks url https://idp.example/jwks (refresh 300s, issuer "https://idp.example/" only)"#)
            && listing.contains("jwks url https://idp.example/jwks?")
            && !listing.contains("SECRET"),
        "{listing}"
    );
    let ok = check_with(
        "[server]\nlisten = \"0.0.0.0:5000\"\nmax_tokens_in_flight = 1000\nmax_batch_items = 100",
    );
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(
        text(&ok.stdout).contains("server: listen 0.0.0.0:5000, TLS (not configured"),
        "{}",
        text(&ok.stdout)
    );
}

/// `config check` reads every file `serve` would read at start and refuses
/// what `serve` would refuse, naming the key and the file.
#[test]
fn config_check_reads_every_file_the_daemon_would() {
    let scratch = scratch_dir("config-files");
    let dir = scratch.path();
    let pki = jotd_transport::DevPki::generate().unwrap();
    std::fs::write(dir.join("ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &pki.server_key_pem).unwrap();
    let config = dir.join("jotd.toml");
    let tenant = "[[tenant]]\nid = \"x\"\n[[tenant.key]]\nkid = \"k\"\nalg = \"HS256\"\nsecret = \"0123456789abcdefghijklmnopqrstuv\"\n";
    let check_with = |sections: &str| {
        std::fs::write(&config, format!("{sections}\n{tenant}")).unwrap();
        let out = jotd(
            &["config", "check", "--config", config.to_str().unwrap()],
            None,
        );
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    // The JWKS fetcher's extra CA: unreadable, or holding no certificate.
    for (file, says) in [
        ("missing.pem", "cannot read"),
        ("key.pem", "no PEM CERTIFICATE"),
    ] {
        let (code, _, err) = check_with(&format!("[jwks_fetch]\nextra_ca_file = \"{file}\""));
        assert_eq!(code, Some(1), "{file}: {err}");
        assert!(
            err.contains("jwks_fetch.extra_ca_file") && err.contains(file) && err.contains(says),
            "{file}: {err}"
        );
    }
    let (code, out, err) = check_with("[jwks_fetch]\nextra_ca_file = \"ca.pem\"");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("ca.pem (1 certificate(s))"), "{out}");
    // Mutual TLS without the server's own certificate: serve refuses it, so does check.
    let (code, _, err) = check_with("[server]\n\nclient_ca_file = \"ca.pem\"");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(":3: server.client_ca_file: mutual TLS needs"),
        "{err}"
    );
    // One of the certificate and its key without the other: serve refuses
    // it, so does check.
    for half in ["cert_file = \"ca.pem\"", "key_file = \"key.pem\""] {
        let (code, _, err) = check_with(&format!("[server]\n{half}"));
        assert_eq!(code, Some(1), "{half}: {err}");
        assert!(err.contains("cert_file and key_file go together"), "{err}");
    }
    // A per-tenant label that names no tenant is a warning, not an error.
    let (code, out, err) = check_with("[admin]\ntenant_labels = [\"x\", \"y\"]");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("warning: admin.tenant_labels names `y`") && !out.contains("names `x`"),
        "{out}"
    );
    // A revoke entry whose `until` has passed (a digit short) revokes nothing:
    // a warning naming its line; the one still in force is not named.
    std::fs::write(
        dir.join("revoked.toml"),
        "[[revoke]]\ntenant = \"x\"\njti = \"a\"\nuntil = 176722560\n\
         [[revoke]]\ntenant = \"x\"\njti = \"b\"\nuntil = 99999999999\n",
    )
    .unwrap();
    let (code, out, err) = check_with("denylist_file = \"revoked.toml\"");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("warning: ")
            && out.contains("revoked.toml:1: revoke until = 176722560 is ")
            && out.contains("revokes nothing")
            && !out.contains("revoked.toml:5"),
        "{out}"
    );
    // A JWKS file publishing kid `k`, which the static HS256 key already
    // holds: the file's key verifies nothing, and check says so (`j` is new).
    let jwk = |kid: &str| {
        use base64::Engine as _;
        let key = SigningKey::generate(Algorithm::EdDsa).unwrap();
        let spki = key.verifying_key().unwrap().spki_der().unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&spki[spki.len() - 32..]);
        format!(r#"{{"kty":"OKP","crv":"Ed25519","kid":"{kid}","x":"{x}"}}"#)
    };
    std::fs::write(
        dir.join("jwks.json"),
        format!(r#"{{"keys":[{},{}]}}"#, jwk("k"), jwk("j")),
    )
    .unwrap();
    std::fs::write(
        &config,
        format!("{tenant}[[tenant.jwks]]\nfile = \"jwks.json\"\nalg = \"EdDSA\"\n"),
    )
    .unwrap();
    let out = jotd(
        &["config", "check", "--config", config.to_str().unwrap()],
        None,
    );
    let (code, out) = (out.status.code(), text(&out.stdout));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("warning: tenant `x`: a JWKS file's kid \"k\" is already held")
            && !out.contains("kid \"j\""),
        "{out}"
    );
}

#[test]
fn check_decides_each_line_in_order() {
    let scratch = scratch_dir("check");
    let dir = scratch.path();
    let config = write_config(dir);
    let now = 1_800_000_000u64;
    let rsa = SigningKey::from_pkcs8(
        Algorithm::Rs256,
        &std::fs::read(keys_data("rsa2048.pk8.der")).unwrap(),
    )
    .unwrap();
    let hs = SigningKey::from_hmac_secret(Algorithm::Hs256, b"0123456789abcdefghijklmnopqrstuv")
        .unwrap();
    let good = rsa
        .mint(
            Some("rsa"),
            &format!(
                r#"{{"sub":"alice","exp":{},"methods":["eth_call"],"groups":["ops"]}}"#,
                now + 60
            ),
        )
        .unwrap();
    let expired = hs
        .mint(
            Some("hs"),
            &format!(r#"{{"sub":"bob","exp":{}}}"#, now - 3600),
        )
        .unwrap();
    let forged = SigningKey::generate(Algorithm::Rs256)
        .unwrap()
        .mint(Some("rsa"), &format!(r#"{{"exp":{}}}"#, now + 60))
        .unwrap();
    let input = [
        format!(r#"{{"token":"{good}","tenant":"infura","method":"eth_call"}}"#),
        format!(r#"{{"token":"{good}","tenant":"infura","method":"eth_sendRawTransaction"}}"#),
        format!(r#"{{"token":"{expired}","tenant":"infura"}}"#),
        format!(r#"{{"token":"{forged}","tenant":"infura"}}"#),
        "this is not json".to_owned(),
        r#"{"token":"abc"}"#.to_owned(),
        r#"{"tenant":"infura","method":"net_version"}"#.to_owned(),
        r#"{"tenant":"infura","method":"eth_call"}"#.to_owned(),
        format!(r#"{{"token":"{good}","tenant":"nobody"}}"#),
    ]
    .join("\n");
    let input_file = dir.join("requests.jsonl");
    std::fs::write(&input_file, &input).unwrap();
    for via_file in [false, true] {
        let mut args = vec![
            "check",
            "--config",
            config.to_str().unwrap(),
            "--now",
            "1800000000",
        ];
        if via_file {
            args.extend(["--input", input_file.to_str().unwrap()]);
        }
        let out = jotd(&args, (!via_file).then_some(input.as_str()));
        assert!(out.status.success(), "{}", text(&out.stderr));
        let lines: Vec<Value> = text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let got: Vec<(u64, bool, &str)> = lines
            .iter()
            .map(|v| {
                (
                    v["index"].as_u64().unwrap(),
                    v["allow"].as_bool().unwrap(),
                    v["reason"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (0, true, "ok"),
                (1, false, "method_not_allowed"),
                (2, false, "expired"),
                (3, false, "bad_signature"),
                (4, false, "malformed"),
                (5, false, "malformed"),
                (6, true, "ok_no_auth"),
                (7, false, "missing_token"),
                (8, false, "unknown_tenant"),
            ]
        );
        assert_eq!(
            (
                lines[0]["kid"].as_str(),
                lines[0]["sub"].as_str(),
                lines[0]["exp"].as_u64()
            ),
            (Some("rsa"), Some("alice"), Some(now + 60))
        );
        assert_eq!(lines[0]["claims"], serde_json::json!({"groups": ["ops"]}));
        // `claims` is always there (docs/configuration.md, `jotd check`): `{}`
        // for a verified token without the returned claims (2: expired, no
        // `groups`), for one that did not verify (3), for a bad input line (4)
        // and for no token at all (6).
        for (i, line) in lines.iter().enumerate() {
            assert!(line["claims"].is_object(), "line {i}: {line}");
            if i != 0 && i != 1 {
                assert_eq!(line["claims"], serde_json::json!({}), "line {i}: {line}");
            }
        }
        assert_eq!(
            lines[2]["sub"].as_str(),
            Some("bob"),
            "an expired token still says who"
        );
        assert!(
            lines[4]["error"]
                .as_str()
                .unwrap()
                .starts_with("input line 5:")
        );
        assert!(
            lines[5]["error"]
                .as_str()
                .unwrap()
                .contains("missing field `tenant`")
        );
    }
}

/// `jotd speed` in hot-set-plus-scan mode with a small cache: the scan is
/// several times the cache, the hot set keeps its hits, and the JSON says so.
#[test]
fn speed_hot_set_plus_scan_keeps_the_hot_set() {
    let out = jotd(
        &[
            "speed",
            "--algs",
            "HS256",
            "--tokens",
            "4000",
            "--hot",
            "50",
            "--scan-per-hot",
            "3",
            "--cache-bytes",
            "262144",
            "--seconds",
            "0.2",
            "--json",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(row["hot"], 50);
    assert_eq!(row["scan_per_hot"], 3);
    let ratio = row["hit_ratio"].as_f64().unwrap();
    assert!(ratio >= 0.95, "hot-set hit ratio {ratio}: {row}");
    assert!(row["cached_over_engine"].as_f64().unwrap() > 0.0);
    let bad = jotd(&["speed", "--tokens", "10", "--hot", "10"], None);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--hot 10 needs more --tokens"));
}

/// Every file a config names is read the same way: a FIFO (which would block the
/// read until a writer came), a device such as `/dev/zero` (which would read until
/// memory ran out) or a directory is an error naming the file and the key, at once.
#[test]
fn files_that_are_not_regular_files_are_named_not_read() {
    let scratch = scratch_dir("not-regular");
    let dir = scratch.path();
    let fifo = dir.join("key.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success(),
        "mkfifo"
    );
    let tenant = "[[tenant]]\nid = \"t\"\n[[tenant.key]]\nkid = \"k\"\nalg = \"ES256\"\n";
    let cases = [
        (
            format!("{tenant}pem_file = \"{}\"\n", fifo.display()),
            "a FIFO",
            "tenant[0].key[0].pem_file",
        ),
        (
            format!("{tenant}der_file = \"/dev/zero\"\n"),
            "a character device",
            "tenant[0].key[0].der_file",
        ),
        (
            format!("{tenant}pem_file = \"{}\"\n", dir.display()),
            "a directory",
            "tenant[0].key[0].pem_file",
        ),
        (
            format!(
                "denylist_file = \"{}\"\n{tenant}pem_file = \"{}\"\n",
                fifo.display(),
                keys_data("ec_p256.pem").display()
            ),
            "a FIFO",
            "denylist_file",
        ),
    ];
    for (config, why, key) in cases {
        let file = dir.join("jotd.toml");
        std::fs::write(&file, &config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_jotd"))
            .args(["config", "check", "--config", file.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > std::time::Duration::from_secs(20) {
                let _ = child.kill();
                panic!("`jotd config check` still reading after 20 s: {config}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{config}");
        assert!(err.contains(why) && err.contains(key), "{config}\n{err}");
    }
}

/// A line that is not UTF-8 or is over 1 MiB gets its own `malformed` answer naming
/// why; the lines after it are still decided (the whole run used to stop at a
/// non-UTF-8 line, and a long line was buffered whole).
#[test]
fn check_answers_bad_lines_and_goes_on() {
    let scratch = scratch_dir("check-bad-lines");
    let dir = scratch.path();
    let config = write_config(dir);
    let no_auth = br#"{"tenant":"infura","method":"net_version"}"#;
    let mut input = Vec::new();
    input.extend_from_slice(no_auth);
    input.extend_from_slice(b"\n\xff\xfe{}\n");
    input.extend(std::iter::repeat_n(b'a', 2 << 20));
    input.push(b'\n');
    input.extend_from_slice(no_auth);
    input.extend_from_slice(b"\r\n");
    // A misspelt field (`jwt` for `token`) was dropped and the line decided
    // as if it had no token (`ok_no_auth` on a public method).
    input.extend_from_slice(br#"{"tenant":"infura","method":"net_version","jwt":"x.y.z"}"#);
    input.push(b'\n');
    let file = dir.join("requests.jsonl");
    std::fs::write(&file, &input).unwrap();
    let out = jotd(
        &[
            "check",
            "--config",
            config.to_str().unwrap(),
            "--input",
            file.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(u64, &str)> = lines
        .iter()
        .map(|v| (v["index"].as_u64().unwrap(), v["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            (0, "ok_no_auth"),
            (1, "malformed"),
            (2, "malformed"),
            (3, "ok_no_auth"),
            (4, "malformed")
        ]
    );
    assert!(
        lines[4]["error"].as_str().unwrap().contains("jwt"),
        "{}",
        lines[4]
    );
    let why = |i: usize| lines[i]["error"].as_str().unwrap_or_default().to_owned();
    assert!(why(1).starts_with("input line 2: not UTF-8"), "{}", why(1));
    assert_eq!(why(2), "input line 3: longer than 1048576 bytes");
}

/// The development defaults (demo keys, an admin port without authentication)
/// never serve a non-loopback address, and a `--threads` past the config's own
/// bound is refused like the config key: each a one-line error naming the flag,
/// before anything is written or started.
#[test]
fn dev_defaults_stay_on_loopback_and_flags_keep_the_configs_bounds() {
    let scratch = scratch_dir("dev-flags");
    let dev = scratch.path().join("dev");
    let dev_dir = dev.to_str().unwrap();
    for (flag, value) in [("--listen", "0.0.0.0:0"), ("--admin", "[::]:0")] {
        let out = jotd(&["serve", "--dev-dir", dev_dir, flag, value], None);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("{flag} {value}")) && err.contains("loopback addresses only"),
            "{err}"
        );
        assert!(!dev.exists(), "nothing written for a refused start");
    }
    // An `--admin` that does not parse is refused before the dev directory
    // is written (it was skipped by the loopback check, and failed only
    // after every development key and certificate had been made anew).
    let out = jotd(
        &["serve", "--dev-dir", dev_dir, "--admin", "localhost:9464"],
        None,
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--admin localhost:9464: not an IP:port"),
        "{err}"
    );
    assert!(
        !dev.exists(),
        "nothing written for a flag that does not parse"
    );
    let out = jotd(
        &[
            "serve",
            "--dev-dir",
            dev_dir,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--threads",
            "100000",
        ],
        None,
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--threads 100000: must be at most 1024"),
        "{err}"
    );
}

/// An unreadable `RUST_LOG` is said so in the log (the config's level is used),
/// not dropped quietly; a blank one (`Environment=RUST_LOG=`) is unset, not a
/// filter of no rule that logs nothing at all.
#[test]
fn a_bad_or_blank_rust_log_is_not_silence() {
    use std::io::BufRead as _;
    for (rust_log, want) in [
        ("foo=[[[", "RUST_LOG is not a valid filter"),
        ("", "jotd serving"),
        (" , ", "jotd serving"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_jotd"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "off",
                "--dev-dir",
            ])
            .arg(dir.path().join("dev"))
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let found = loop {
            match rx.recv_timeout(std::time::Duration::from_secs(20)) {
                Ok(line) if line.contains(want) => break true,
                Ok(line) => seen.push(line),
                Err(_) => break false,
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        assert!(found, "RUST_LOG={rust_log:?}: {seen:#?}");
    }
}
