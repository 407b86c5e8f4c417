//! `jotd serve` as a process, driven over loopback QUIC with the client library:
//! the same cases as `jotd check` (so the two paths cannot drift), reloads on
//! SIGHUP (a bad config keeps the old one serving), metrics that count what was
//! sent, health endpoints, the drain on SIGTERM, and the development defaults.

use jotd_core::{Algorithm, SigningKey};
use jotd_e2e::{Daemon, now, runtime, scratch_dir};
use jotd_transport::{Client, ClientDecision, ClientOptions, DevPki, Item, client_config};
use serde_json::{Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn keys_data(name: &str) -> PathBuf {
    jotd_e2e::workspace_root()
        .join("crates/jotd-keys/tests/data")
        .join(name)
}

const HS_SECRET: &str = "0123456789abcdefghijklmnopqrstuv";

/// Writes TLS files and a config; `with_hs` decides whether the HS256 key is in
/// it, `verify` is added to its `[verify]` section.
fn write_config(dir: &Path, with_hs: bool, verify: &str) -> PathBuf {
    let config = dir.join("jotd.toml");
    let hs = if with_hs {
        format!("[[tenant.key]]\nkid = \"hs\"\nalg = \"HS256\"\nsecret = \"{HS_SECRET}\"\n")
    } else {
        String::new()
    };
    std::fs::write(
        &config,
        format!(
            r#"
denylist_file = "revoked.toml"
[server]
cert_file = "server.pem"
key_file = "server.key"
[verify]
threads = 2
{verify}

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
{hs}
[[tenant]]
id = "besu"
policy = "permissions"
[[tenant.key]]
kid = "es"
alg = "ES256"
pem_file = "es.pem"
"#,
            keys_data("rsa2048.pem").display()
        ),
    )
    .unwrap();
    config
}

struct Fixture {
    dir: jotd_e2e::Scratch,
    config: PathBuf,
    pki: DevPki,
    rsa: SigningKey,
    hs: SigningKey,
    es: SigningKey,
}

fn fixture(name: &str) -> Fixture {
    fixture_with(name, "")
}

/// [`fixture`] with `verify` added to the config's `[verify]` section.
fn fixture_with(name: &str, verify: &str) -> Fixture {
    let dir = scratch_dir(name);
    let pki = DevPki::generate().unwrap();
    std::fs::write(dir.join("server.pem"), &pki.server_cert_pem).unwrap();
    std::fs::write(dir.join("server.key"), &pki.server_key_pem).unwrap();
    std::fs::write(
        dir.join("revoked.toml"),
        "[[revoke]]\ntenant = \"infura\"\nsub = \"mallory\"\nuntil = 4102444800\n",
    )
    .unwrap();
    let es = SigningKey::generate(Algorithm::Es256).unwrap();
    let spki = es.verifying_key().unwrap().spki_der().unwrap();
    std::fs::write(
        dir.join("es.pem"),
        pem::encode(&pem::Pem::new("PUBLIC KEY", spki)),
    )
    .unwrap();
    let config = write_config(&dir, true, verify);
    Fixture {
        dir,
        config,
        pki,
        rsa: SigningKey::from_pkcs8(
            Algorithm::Rs256,
            &std::fs::read(keys_data("rsa2048.pk8.der")).unwrap(),
        )
        .unwrap(),
        hs: SigningKey::from_hmac_secret(Algorithm::Hs256, HS_SECRET.as_bytes()).unwrap(),
        es,
    }
}

fn client(f: &Fixture, d: &Daemon) -> Client {
    let tls = client_config(f.pki.ca_pem.as_bytes(), None).unwrap();
    Client::new(ClientOptions::new(vec![d.quic], tls)).unwrap()
}

/// One request as `jotd check` reads it.
#[derive(Clone)]
struct Case {
    token: Option<String>,
    tenant: String,
    method: Option<String>,
    addresses: Vec<String>,
}

impl Case {
    fn json(&self) -> String {
        let mut m = Map::new();
        if let Some(t) = &self.token {
            m.insert("token".into(), Value::String(t.clone()));
        }
        m.insert("tenant".into(), Value::String(self.tenant.clone()));
        if let Some(x) = &self.method {
            m.insert("method".into(), Value::String(x.clone()));
        }
        m.insert(
            "addresses".into(),
            Value::Array(self.addresses.iter().cloned().map(Value::String).collect()),
        );
        Value::Object(m).to_string()
    }
    fn item(&self) -> Item<'_> {
        Item {
            token: self.token.as_deref().map(str::as_bytes),
            tenant: &self.tenant,
            method: self.method.as_deref(),
            addresses: self.addresses.iter().map(String::as_str).collect(),
            origin: None,
            user_agent: None,
        }
    }
}

fn case(token: Option<&str>, tenant: &str, method: Option<&str>) -> Case {
    Case {
        token: token.map(str::to_owned),
        tenant: tenant.to_owned(),
        method: method.map(str::to_owned),
        addresses: Vec::new(),
    }
}

fn cases(f: &Fixture) -> Vec<Case> {
    let n = now();
    let good = f
        .rsa
        .mint(
            Some("rsa"),
            &format!(
                r#"{{"sub":"alice","exp":{},"methods":["eth_call"],"addresses":["0xAbC0000000000000000000000000000000000001"],"groups":["ops"]}}"#,
                n + 3600
            ),
        )
        .unwrap();
    let hs =
        f.hs.mint(
            Some("hs"),
            &format!(r#"{{"sub":"bob","exp":{}}}"#, n + 3600),
        )
        .unwrap();
    let expired =
        f.hs.mint(
            Some("hs"),
            &format!(r#"{{"sub":"carol","exp":{}}}"#, n - 3600),
        )
        .unwrap();
    let revoked =
        f.hs.mint(
            Some("hs"),
            &format!(r#"{{"sub":"mallory","exp":{}}}"#, n + 3600),
        )
        .unwrap();
    let future =
        f.hs.mint(
            Some("hs"),
            &format!(r#"{{"sub":"dan","nbf":{},"exp":{}}}"#, n + 1800, n + 3600),
        )
        .unwrap();
    let forged = SigningKey::generate(Algorithm::Rs256)
        .unwrap()
        .mint(Some("rsa"), &format!(r#"{{"exp":{}}}"#, n + 60))
        .unwrap();
    let unknown_kid =
        f.hs.mint(Some("other"), &format!(r#"{{"exp":{}}}"#, n + 60))
            .unwrap();
    let besu = |perms: &str| {
        f.es.mint(
            Some("es"),
            &format!(
                r#"{{"sub":"node","exp":{},"permissions":{perms}}}"#,
                n + 3600
            ),
        )
        .unwrap()
    };
    let mut with_addr = case(Some(&good), "infura", Some("eth_call"));
    with_addr.addresses = vec!["0xabc0000000000000000000000000000000000001".into()];
    let mut bad_addr = case(Some(&good), "infura", Some("eth_call"));
    bad_addr.addresses = vec!["0xdead000000000000000000000000000000000000".into()];
    vec![
        case(Some(&good), "infura", Some("eth_call")),
        case(Some(&good), "infura", Some("eth_sendRawTransaction")),
        with_addr,
        bad_addr,
        case(Some(&hs), "infura", Some("eth_call")),
        case(Some(&expired), "infura", None),
        case(Some(&revoked), "infura", None),
        case(Some(&future), "infura", None),
        case(Some(&forged), "infura", None),
        case(Some(&unknown_kid), "infura", None),
        case(Some("abc"), "infura", None),
        case(Some("a.b.c"), "infura", None),
        case(None, "infura", Some("net_version")),
        case(None, "infura", Some("eth_call")),
        case(Some(&good), "nobody", None),
        case(Some(&besu(r#"["eth:*"]"#)), "besu", Some("eth_blockNumber")),
        case(Some(&besu(r#"["net:*"]"#)), "besu", Some("eth_blockNumber")),
        case(Some(&besu("[]")), "besu", Some("eth_blockNumber")),
    ]
}

/// A decision in `jotd check`'s JSON shape, from the wire.
fn as_check_json(index: usize, d: &ClientDecision) -> Value {
    let mut m = Map::new();
    m.insert("index".into(), index.into());
    m.insert("allow".into(), d.allow.into());
    m.insert("reason".into(), d.reason().unwrap().as_str().into());
    if let Some(k) = &d.kid {
        m.insert("kid".into(), k.clone().into());
    }
    if let Some(s) = &d.sub {
        m.insert("sub".into(), s.clone().into());
    }
    if let Some(e) = d.exp {
        m.insert("exp".into(), e.into());
    }
    // Always present in `jotd check`'s lines, `{}` when empty.
    let claims: Map<String, Value> = d
        .claims
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::from_str(v).unwrap()))
        .collect();
    m.insert("claims".into(), Value::Object(claims));
    Value::Object(m)
}

/// `jotd check` on `config`, fed `cases` on standard input: one JSON line each.
fn decide_offline(config: &Path, cases: &[Case]) -> Vec<Value> {
    let input: String = cases.iter().map(|c| c.json() + "\n").collect();
    let out = Command::new(jotd_e2e::bin("jotd"))
        .args(["check", "--config", config.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(input.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "jotd check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The same cases in one batch over QUIC to the running daemon.
fn decide_online(f: &Fixture, d: &Daemon, cases: &[Case]) -> Vec<ClientDecision> {
    runtime().block_on(async {
        let c = client(f, d);
        let items: Vec<Item<'_>> = cases.iter().map(Case::item).collect();
        c.verify_all(&items).await.unwrap()
    })
}

/// Asserts that both paths decided every case alike: allow, reason, kid, sub,
/// exp and claims, item by item.
fn assert_same_decisions(cases: &[Case], offline: &[Value], online: &[ClientDecision]) {
    assert_eq!(offline.len(), cases.len(), "jotd check: one line per case");
    assert_eq!(
        online.len(),
        cases.len(),
        "jotd serve: one decision per case"
    );
    for (i, (off, on)) in offline.iter().zip(online).enumerate() {
        assert_eq!(
            *off,
            as_check_json(i, on),
            "case {i} (left: jotd check, right: jotd serve): {}",
            cases[i].json()
        );
    }
}

fn reasons(decisions: &[Value]) -> Vec<&str> {
    decisions
        .iter()
        .map(|v| v["reason"].as_str().unwrap())
        .collect()
}

#[test]
fn serve_and_check_agree_on_every_case() {
    let f = fixture("agree");
    let d = Daemon::start(&["--config", f.config.to_str().unwrap()], &f.dir);
    let cases = cases(&f);
    let offline = decide_offline(&f.config, &cases);
    let online = decide_online(&f, &d, &cases);
    // The cases cover what they claim to.
    assert_eq!(
        reasons(&offline),
        [
            "ok",
            "method_not_allowed",
            "ok",
            "address_not_allowed",
            "ok",
            "expired",
            "revoked",
            "not_yet_valid",
            "bad_signature",
            "unknown_kid",
            "malformed",
            "malformed",
            "ok_no_auth",
            "missing_token",
            "unknown_tenant",
            "ok",
            "permission_denied",
            "permission_denied",
        ]
    );
    assert_same_decisions(&cases, &offline, &online);

    // Every decision was counted once in the metrics, by reason.
    let total = |metrics: &str| -> usize {
        let sum: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("jotd_tokens_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        sum as usize
    };
    let metrics = d.metrics_when(|m| total(m) >= cases.len());
    assert_eq!(total(&metrics), cases.len(), "{metrics}");
    assert!(
        metrics.contains(r#"jotd_tokens_total{outcome="deny",reason="revoked",alg="HS256"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"jotd_batches_total{result="decided"} 1"#));
    assert!(!metrics.contains("infura"), "no tenant labels");
    let (status, body) = d.get("/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = d.get("/readyz");
    assert_eq!(status, 200, "{body}");
}

/// `[verify] max_token_bytes` for the next test: the RS256 tokens of [`cases`]
/// are longer (their signature alone is 342 characters), the HS256 and ES256
/// ones shorter.
const SMALL_MAX_TOKEN_BYTES: usize = 300;

#[test]
fn check_and_serve_apply_the_same_verify_settings() {
    let f = fixture_with(
        "verify-settings",
        &format!("max_token_bytes = {SMALL_MAX_TOKEN_BYTES}\nchunk_size = 3\ncache = false"),
    );
    let cases = cases(&f);
    let long = |c: &Case| {
        c.token
            .as_ref()
            .is_some_and(|t| t.len() > SMALL_MAX_TOKEN_BYTES)
    };
    assert!(
        cases.iter().any(long) && cases.iter().any(|c| c.token.is_some() && !long(c)),
        "the cases have tokens on both sides of the limit"
    );
    let d = Daemon::start(&["--config", f.config.to_str().unwrap()], &f.dir);
    let offline = decide_offline(&f.config, &cases);
    let online = decide_online(&f, &d, &cases);
    assert_same_decisions(&cases, &offline, &online);
    // The limit is what decided the long tokens, on both paths.
    assert_eq!(
        reasons(&offline),
        [
            "token_too_large",
            "token_too_large",
            "token_too_large",
            "token_too_large",
            "ok",
            "expired",
            "revoked",
            "not_yet_valid",
            "token_too_large",
            "unknown_kid",
            "malformed",
            "malformed",
            "ok_no_auth",
            "missing_token",
            "unknown_tenant",
            "ok",
            "permission_denied",
            "permission_denied",
        ]
    );
    // (The tenant is looked up first: a long token for "nobody" is unknown_tenant.)
    for (i, case) in cases.iter().enumerate() {
        assert_eq!(
            long(case) && case.tenant != "nobody",
            offline[i]["reason"] == "token_too_large",
            "case {i}: token_too_large exactly for the tokens over the limit"
        );
    }
    // `config check` reports the same engine settings from the same file.
    let out = Command::new(jotd_e2e::bin("jotd"))
        .args(["config", "check", "--config", f.config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains(&format!(
            "tokens up to {SMALL_MAX_TOKEN_BYTES} bytes, cache off"
        )),
        "{listing}"
    );
}

/// The fixture's config plus `extra` TOML, served; every case sent `rounds` times.
fn serve_cases_with(name: &str, extra: &str, rounds: usize) -> (Fixture, Daemon, Vec<Case>) {
    let f = fixture(name);
    let mut text = std::fs::read_to_string(&f.config).unwrap();
    text.push_str(&format!("\n{extra}\n"));
    std::fs::write(&f.config, text).unwrap();
    let d = Daemon::start(&["--config", f.config.to_str().unwrap()], &f.dir);
    let cases = cases(&f);
    runtime().block_on(async {
        let c = client(&f, &d);
        let items: Vec<Item<'_>> = cases.iter().map(Case::item).collect();
        for _ in 0..rounds {
            c.verify_all(&items).await.unwrap();
        }
    });
    (f, d, cases)
}

#[test]
fn tenant_labels_count_the_listed_tenants_and_no_other() {
    // "nobody" is listed but has no keys: its requests are counted too (denied).
    let (_f, d, _) = serve_cases_with(
        "tenant-labels",
        "[admin]\ntenant_labels = [\"besu\", \"nobody\"]",
        2,
    );
    // Twice the cases: besu 1 allowed + 2 denied, nobody 1 denied, per round.
    let metrics = d.metrics_when(|m| {
        m.contains(r#"jotd_tenant_tokens_total{tenant="besu",outcome="deny"} 4"#)
            && m.contains(r#"jotd_tenant_tokens_total{tenant="nobody",outcome="deny"} 2"#)
    });
    for want in [
        r#"jotd_tenant_tokens_total{tenant="besu",outcome="allow"} 2"#,
        r#"jotd_tenant_tokens_total{tenant="besu",outcome="deny"} 4"#,
        r#"jotd_tenant_tokens_total{tenant="nobody",outcome="allow"} 0"#,
        r#"jotd_tenant_tokens_total{tenant="nobody",outcome="deny"} 2"#,
    ] {
        assert!(metrics.contains(want), "{want} in\n{metrics}");
    }
    assert!(
        !metrics.contains("infura"),
        "an unlisted tenant is not labelled"
    );
}

#[test]
fn debug_logs_name_denied_tokens_by_hash_never_whole() {
    let (_f, d, cases) = serve_cases_with(
        "decision-log",
        "[log]\nlevel = \"info,jotd::decision=debug\"",
        1,
    );
    // Case 5 is the expired HS256 token: one line names it by hash.
    let expired = cases[5].token.clone().unwrap();
    let hash = jotd_core::token_hash(expired.as_bytes());
    d.wait_log(&hash);
    let log = d.log.lock().unwrap().clone();
    let line: Value = log
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["token"] == hash.as_str())
        .unwrap();
    assert_eq!(line["reason"], "expired", "{line}");
    assert_eq!(line["tenant"], "infura");
    assert_eq!(line["index"], 5);
    assert_eq!(line["level"], "DEBUG");
    // One line per denied case, none per allowed one, and no token in any
    // line. The lines are written with the batch's report, after its answer:
    // wait for all of them, then make sure no more come.
    let denied = || {
        d.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("\"denied\""))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while denied() < 13 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let log = d.log.lock().unwrap().clone();
    assert_eq!(denied(), 13, "{log:#?}");
    for case in &cases {
        if let Some(t) = &case.token
            && t.len() > 8
        {
            let signature = t.rsplit('.').next().unwrap();
            assert!(
                !log.iter().any(|l| l.contains(signature)),
                "a token leaked into the log"
            );
        }
    }
}

#[test]
fn sighup_reloads_and_a_bad_config_keeps_the_old_one_serving() {
    let f = fixture("reload");
    let d = Daemon::start(&["--config", f.config.to_str().unwrap()], &f.dir);
    let hs =
        f.hs.mint(
            Some("hs"),
            &format!(r#"{{"sub":"bob","exp":{}}}"#, now() + 3600),
        )
        .unwrap();
    let rt = runtime();
    let c = rt.block_on(async { client(&f, &d) });
    let decide = |c: &Client| {
        rt.block_on(async {
            let items = [Item {
                token: Some(hs.as_bytes()),
                tenant: "infura",
                method: Some("eth_call"),
                addresses: vec![],
                origin: None,
                user_agent: None,
            }];
            c.verify_all(&items).await.unwrap()[0]
                .reason()
                .unwrap()
                .as_str()
        })
    };
    assert_eq!(decide(&c), "ok");

    // The HS256 key leaves the config: after SIGHUP its tokens stop passing.
    write_config(&f.dir, false, "");
    d.signal("-HUP");
    // The SIGHUP's reload, not the one the first check may make of files written
    // just before the start (read again in case they were read half-written).
    d.wait_log_all(&["config reloaded", "SIGHUP"]);
    assert_eq!(decide(&c), "alg_not_allowed");

    // A broken config is rejected whole; the last good one keeps serving.
    std::fs::write(
        &f.config,
        "[[tenant]]\nid = \"infura\"\npolicy = \"bogus\"\n",
    )
    .unwrap();
    d.signal("-HUP");
    d.wait_log("config reload rejected");
    assert_eq!(decide(&c), "alg_not_allowed");
    let line = d.log_line("config reload rejected");
    assert!(
        line.contains("jotd.toml:3") && line.contains("policy"),
        "{line}"
    );
    let (_, metrics) = d.get("/metrics");
    assert!(metrics.contains(r#"jotd_config_reloads_total{result="rejected"} 1"#));

    // Fixed again, and noticed by the file watcher without a signal.
    write_config(&f.dir, true, "");
    let deadline = Instant::now() + Duration::from_secs(20);
    while decide(&c) != "ok" {
        assert!(Instant::now() < deadline, "file change not picked up");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A renewed server certificate (cert-manager rewriting the files in place)
/// is applied by the reload its change triggers: new connections get it.
/// TLS files were read at start only, and a reload said nothing (a CA taken
/// out of `client_ca_file` stayed trusted until a restart). A TLS file that
/// does not load rejects the reload whole; the last good one keeps serving.
#[test]
fn a_reload_applies_renewed_tls_files() {
    let f = fixture("tls-reload");
    let d = Daemon::start(&["--config", f.config.to_str().unwrap()], &f.dir);
    let rt = runtime();
    let hs =
        f.hs.mint(
            Some("hs"),
            &format!(r#"{{"sub":"bob","exp":{}}}"#, now() + 3600),
        )
        .unwrap();
    // A fresh connection trusting `ca_pem` only: the decision, or the error.
    let decide = |ca_pem: &str| {
        rt.block_on(async {
            let tls = client_config(ca_pem.as_bytes(), None).unwrap();
            let mut opts = ClientOptions::new(vec![d.quic], tls);
            opts.connect_timeout = Duration::from_secs(2);
            let c = Client::new(opts).unwrap();
            let items = [Item {
                token: Some(hs.as_bytes()),
                tenant: "infura",
                method: Some("eth_call"),
                addresses: vec![],
                origin: None,
                user_agent: None,
            }];
            c.verify_all(&items)
                .await
                .map(|d| d[0].reason().unwrap().as_str())
                .map_err(|e| e.to_string())
        })
    };
    assert_eq!(decide(&f.pki.ca_pem), Ok("ok"));
    let renewed = DevPki::generate().unwrap();
    std::fs::write(f.dir.join("server.pem"), &renewed.server_cert_pem).unwrap();
    std::fs::write(f.dir.join("server.key"), &renewed.server_key_pem).unwrap();
    d.signal("-HUP");
    d.wait_log_all(&["config reloaded", "SIGHUP"]);
    assert_eq!(decide(&renewed.ca_pem), Ok("ok"), "the renewed certificate");
    assert!(decide(&f.pki.ca_pem).is_err(), "the old one is gone");
    // A key file that does not load: rejected, the renewed pair serves on.
    std::fs::write(f.dir.join("server.key"), "not a key").unwrap();
    d.signal("-HUP");
    d.wait_log("config reload rejected");
    let line = d.log_line("config reload rejected");
    assert!(line.contains("server.key_file"), "{line}");
    assert_eq!(decide(&renewed.ca_pem), Ok("ok"));
}

#[test]
fn sigterm_drains_the_batch_in_flight_then_exits() {
    let f = fixture("drain");
    let mut d = Daemon::start(&["--config", f.config.to_str().unwrap()], &f.dir);
    let n = now();
    // Distinct ES256 tokens: no cache shortcut, a batch that takes a while.
    let tokens: Vec<String> = (0..4096)
        .map(|i| {
            f.es.mint(
                Some("es"),
                &format!(
                    r#"{{"sub":"{i}","exp":{},"permissions":["*:*"]}}"#,
                    n + 3600
                ),
            )
            .unwrap()
        })
        .collect();
    let rt = runtime();
    let c = rt.block_on(async { client(&f, &d) });
    let decided = rt.block_on(async {
        let items: Vec<Item<'_>> = tokens
            .iter()
            .map(|t| Item {
                token: Some(t.as_bytes()),
                tenant: "besu",
                method: Some("eth_call"),
                addresses: vec![],
                origin: None,
                user_agent: None,
            })
            .collect();
        let mut pending = c.verify(&items).await.unwrap();
        let mut allowed = 0;
        let mut chunks = 0;
        while pending
            .next_chunk(|chunk| {
                allowed += chunk.decisions.iter().filter(|d| d.allow).count();
            })
            .await
            .unwrap()
        {
            chunks += 1;
            if chunks == 1 {
                // The batch is in flight: ask the daemon to stop.
                d.signal("-TERM");
            }
        }
        allowed
    });
    assert_eq!(decided, 4096, "every item of the in-flight batch decided");
    let status = d.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    d.wait_log("drained; all batches in flight finished");
}

#[test]
fn development_defaults_need_no_files() {
    let dir = scratch_dir("dev");
    let d = Daemon::start(&[], &dir);
    d.wait_log("development defaults");
    for f in [
        "ca.pem",
        "server.pem",
        "server.key",
        "jotd.toml",
        "keys/rs256.pk8.der",
        "keys/es256.pk8.der",
        "keys/eddsa.pk8.der",
        "keys/hs256.secret",
    ] {
        assert!(dir.join("jotd-dev").join(f).is_file(), "{f}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("jotd-dev/keys/rs256.pk8.der"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "private keys are not readable by others");
    }
    // A token minted with a demo key passes, through the demo CA.
    let dev = dir.join("jotd-dev");
    let key = SigningKey::from_pkcs8(
        Algorithm::EdDsa,
        &std::fs::read(dev.join("keys/eddsa.pk8.der")).unwrap(),
    )
    .unwrap();
    let token = key
        .mint(
            Some("eddsa"),
            &format!(r#"{{"sub":"dev","aud":"jotd-dev","exp":{}}}"#, now() + 60),
        )
        .unwrap();
    let ca = std::fs::read(dev.join("ca.pem")).unwrap();
    let rt = runtime();
    let got = rt.block_on(async {
        let c = Client::new(ClientOptions::new(
            vec![d.quic],
            client_config(&ca, None).unwrap(),
        ))
        .unwrap();
        let items = [Item {
            token: Some(token.as_bytes()),
            tenant: "demo",
            method: Some("eth_call"),
            addresses: vec![],
            origin: None,
            user_agent: None,
        }];
        c.verify_all(&items).await.unwrap()
    });
    assert_eq!(got[0].reason().unwrap().as_str(), "ok");
    assert_eq!(got[0].kid.as_deref(), Some("eddsa"));
}

#[test]
fn serve_refuses_bad_settings_with_file_line_and_key() {
    let f = fixture("badsettings");
    // Writes `config`, runs `jotd serve` on it, returns its error output (it must fail).
    let refused = |config: &str| {
        std::fs::write(&f.config, config).unwrap();
        let out = Command::new(jotd_e2e::bin("jotd"))
            .args(["serve", "--config", f.config.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused(
        "[server]\ncert_file = \"server.pem\"\nkey_file = \"server.key\"\nmax_streams_per_connection = 0\n",
    );
    assert!(
        err.contains("jotd.toml:4: server.max_streams_per_connection: must be at least 1"),
        "{err}"
    );
    // A key file that is not a key.
    let err = refused("[server]\ncert_file = \"server.pem\"\nkey_file = \"server.pem\"\n");
    assert!(err.contains("key_file"), "{err}");
}

/// The admin listener holds at most 64 connections: a client holding all of them
/// cannot lock out probes and scrapers (the oldest connection is closed to make
/// room for a new one), and a client that never sends its headers is dropped
/// after the header timeout.
#[test]
fn the_admin_listener_caps_idle_connections() {
    use std::io::Read;
    use std::net::TcpStream;
    let dir = scratch_dir("admin-cap");
    let d = Daemon::start(&[], &dir);
    d.wait_log("development defaults");
    assert_eq!(d.get("/healthz").0, 200);
    let mut idle: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(d.admin).unwrap())
        .collect();
    // Accepted in order: give the listener a moment to take all 64.
    std::thread::sleep(Duration::from_millis(300));
    // All 64 slots are held, yet the probe is answered...
    assert_eq!(
        d.get("/healthz").0,
        200,
        "a probe gets through a full listener"
    );
    // ...and the slot it took was the oldest connection of the address holding
    // the most (all come from 127.0.0.1 here), which is closed.
    let mut buf = [0u8; 16];
    let first = &mut idle[0];
    first
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let n = first.read(&mut buf);
    let closed = matches!(n, Ok(0))
        || n.as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset);
    assert!(closed, "the oldest connection made room: {n:?}");
    // A held connection that never sends headers is dropped by the header timeout.
    let last = idle.last_mut().unwrap();
    last.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let start = Instant::now();
    let n = last.read(&mut buf);
    assert!(
        matches!(n, Ok(0)) || n.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "an idle connection is dropped"
    );
    assert!(start.elapsed() < Duration::from_secs(15));
    assert_eq!(d.get("/healthz").0, 200);
}

/// `fixture`'s config with `server` added to its `[server]` section.
fn with_server(f: &Fixture, server: &str) -> String {
    std::fs::read_to_string(&f.config).unwrap().replacen(
        "[server]\n",
        &format!("[server]\n{server}\n"),
        1,
    )
}

/// Whether process `pid` catches SIGHUP (bit 0 of `SigCgt` in its status).
#[cfg(target_os = "linux")]
fn catches_sighup(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let mask = s.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
            u64::from_str_radix(mask.trim(), 16).ok()
        })
        .is_some_and(|m| m & 1 == 1)
}

/// A SIGHUP that arrives while the daemon reads its config (seconds with many
/// tenants) reloads once it serves; before, the signal's default action ended
/// the starting process. The signal is sent as soon as the process catches
/// SIGHUP, while it reads a config of 20,000 tenants (about half a second).
#[cfg(target_os = "linux")]
#[test]
fn a_sighup_while_starting_reloads_instead_of_ending_the_process() {
    use std::fmt::Write as _;
    let f = fixture("early-hup");
    let mut config = with_server(&f, "watch_interval_s = 0");
    let pem = keys_data("rsa2048.pem");
    for i in 0..20_000 {
        write!(
            config,
            "\n[[tenant]]\nid = \"t{i}\"\npolicy = \"none\"\n[[tenant.key]]\nkid = \"rsa\"\nalg = \"RS256\"\npem_file = \"{}\"\n",
            pem.display()
        )
        .unwrap();
    }
    std::fs::write(&f.config, config).unwrap();
    let starting = Daemon::spawn(&["--config", f.config.to_str().unwrap()], &f.dir);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !catches_sighup(starting.pid()) {
        assert!(Instant::now() < deadline, "jotd never caught SIGHUP");
        std::thread::yield_now();
    }
    let hup = Command::new("kill")
        .args(["-HUP", &starting.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let d = starting.serving();
    // Taken while starting (not by the reload loop's own listener), and
    // acted on once serving.
    d.wait_log_all(&["SIGHUP while starting"]);
    d.wait_log_all(&["config reloaded", "SIGHUP"]);
    assert_eq!(d.get("/readyz").0, 200);
}

/// A second SIGTERM ends a drain at once (exit status 1, the batches in
/// flight cut off), as an operator who cannot wait expects; before, the
/// daemon waited out `drain_timeout_s` whatever it was sent. One within a
/// second of the first counts as the same.
#[test]
fn a_second_sigterm_ends_the_drain_at_once() {
    let (mut d, _held) = daemon_holding_a_request("second-term", 300);
    // Two at once: the same request twice (a Ctrl-C to the process group
    // plus a wrapper's SIGTERM), not a second one.
    d.signal("-TERM");
    d.signal("-INT");
    d.wait_log("draining");
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.child.try_wait().unwrap().is_none(), "the drain waits");
    std::thread::sleep(Duration::from_millis(1000));
    d.signal("-TERM");
    let status =
        jotd_e2e::exit_within_20_s(&mut d.child, "a second SIGTERM left the drain running");
    assert_eq!(status.code(), Some(1), "{status:?}");
    d.wait_log("second stop signal");
}

/// What keeps a held request (and the daemon's files) open: the scratch
/// directory, the client's runtime, endpoint, connection and stream.
type Held = (
    Fixture,
    tokio::runtime::Runtime,
    quinn::Endpoint,
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
);

/// A daemon with `drain_timeout_s` = `drain_timeout_s` holding a request
/// that never finishes arriving (a frame announcing 4 KiB, one byte sent):
/// it holds a drain for `request_timeout_ms` (300 s here).
fn daemon_holding_a_request(name: &str, drain_timeout_s: u64) -> (Daemon, Held) {
    let f = fixture(name);
    std::fs::write(
        &f.config,
        with_server(
            &f,
            &format!(
                "drain_timeout_s = {drain_timeout_s}\nrequest_timeout_ms = 300000\nidle_timeout_s = 600"
            ),
        ),
    )
    .unwrap();
    let d = Daemon::start(&["--config", f.config.to_str().unwrap()], &f.dir);
    let rt = runtime();
    let (endpoint, conn, send, recv) = rt.block_on(async {
        let tls = client_config(f.pki.ca_pem.as_bytes(), None).unwrap();
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
        let conn = endpoint
            .connect(d.quic, "localhost")
            .unwrap()
            .await
            .unwrap();
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&[0x00, 0x00, 0x10, 0x00, 0x01])
            .await
            .unwrap();
        (endpoint, conn, send, recv)
    });
    let m = d.metrics_when(|m| m.contains("jotd_streams_open 1"));
    assert!(m.contains("jotd_streams_open 1"), "{m}");
    (d, (f, rt, endpoint, conn, send, recv))
}

/// A drain that runs out of `drain_timeout_s` with a batch still in flight
/// exits with status 1, so a supervisor tells it from a clean drain (it
/// exited 0 either way).
#[test]
fn a_drain_that_times_out_exits_1() {
    let (mut d, _held) = daemon_holding_a_request("drain-timeout", 1);
    d.signal("-TERM");
    let status = jotd_e2e::exit_within_20_s(&mut d.child, "the drain never ended");
    assert_eq!(status.code(), Some(1), "{status:?}");
    d.wait_log("drain timed out");
}
