//! `jotd serve` and a tenant whose keys come from a JWKS URL: a token naming a
//! kid the daemon does not have yet is held, the JWKS refetched, and the token
//! re-verified with the new keys; a second unknown kid inside
//! `jwks_fetch.refetch_interval_s` fetches nothing and stays `unknown_kid`.
//! (What docs/configuration.md, "Unknown kids", says.) And a URL that cannot
//! be fetched leaves the replica ready, reported as degraded.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jotd_core::{Algorithm, SigningKey};
use jotd_e2e::{Daemon, now, runtime, scratch_dir};
use jotd_transport::{Client, ClientOptions, DevPki, Item, client_config};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A JWKS endpoint over plain HTTP on loopback (allowed for loopback hosts):
/// answers every request with the current `doc` and counts the requests.
struct JwksEndpoint {
    url: String,
    doc: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
}

fn jwks_endpoint(doc: String) -> JwksEndpoint {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let doc = Arc::new(Mutex::new(doc));
    let hits = Arc::new(AtomicUsize::new(0));
    let (d, h) = (Arc::clone(&doc), Arc::clone(&hits));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 << 10 {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            h.fetch_add(1, Ordering::SeqCst);
            let body = d.lock().unwrap().clone();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    JwksEndpoint { url, doc, hits }
}

/// A scratch folder holding a development server certificate and key
/// (`server.pem`, `server.key`), and the PKI they came from.
fn with_tls(name: &str) -> (jotd_e2e::Scratch, DevPki) {
    let dir = scratch_dir(name);
    let pki = DevPki::generate().unwrap();
    std::fs::write(dir.join("server.pem"), &pki.server_cert_pem).unwrap();
    std::fs::write(dir.join("server.key"), &pki.server_key_pem).unwrap();
    (dir, pki)
}

/// `/readyz` once it answers 200 (up to 20 s; then as it is).
fn ready(d: &Daemon) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = d.get("/readyz");
        if status == 200 || Instant::now() > deadline {
            return (status, body);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An Ed25519 key and its JWK.
fn ed_key(kid: &str) -> (SigningKey, String) {
    let key = SigningKey::generate(Algorithm::EdDsa).unwrap();
    let spki = key.verifying_key().unwrap().spki_der().unwrap();
    let jwk = format!(
        r#"{{"kty":"OKP","crv":"Ed25519","kid":"{kid}","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(&spki[spki.len() - 32..])
    );
    (key, jwk)
}

#[test]
fn unknown_kid_of_a_jwks_url_tenant_is_refetched_once_and_reverified() {
    let (dir, pki) = with_tls("jwks-refetch");
    let (old_key, old_jwk) = ed_key("old");
    let (new_key, new_jwk) = ed_key("new");
    let (stranger, _) = ed_key("stranger");
    let jwks = jwks_endpoint(format!(r#"{{"keys":[{old_jwk}]}}"#));
    let config = dir.join("jotd.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
cert_file = "server.pem"
key_file = "server.key"
[jwks_fetch]
refetch_interval_s = 30

[[tenant]]
id = "sso"
policy = "none"
[[tenant.jwks]]
internal = true
url = "{}"
refresh_s = 3600
"#,
            jwks.url
        ),
    )
    .unwrap();
    let d = Daemon::start(&["--config", config.to_str().unwrap()], &dir);
    // Ready once the JWKS has been fetched at start.
    let (status, body) = ready(&d);
    assert_eq!(status, 200, "never ready: {body}");
    assert_eq!(jwks.hits.load(Ordering::SeqCst), 1, "one fetch at start");

    let exp = now() + 600;
    let mint = |key: &SigningKey, kid: &str| {
        key.mint(Some(kid), &format!(r#"{{"sub":"{kid}","exp":{exp}}}"#))
            .unwrap()
    };
    let (old, new, unknown) = (
        mint(&old_key, "old"),
        mint(&new_key, "new"),
        mint(&stranger, "stranger"),
    );
    let rt = runtime();
    let c = rt.block_on(async {
        Client::new(ClientOptions::new(
            vec![d.quic],
            client_config(pki.ca_pem.as_bytes(), None).unwrap(),
        ))
        .unwrap()
    });
    let decide = |tokens: &[&str]| -> Vec<String> {
        rt.block_on(async {
            let items: Vec<Item<'_>> = tokens
                .iter()
                .map(|t| Item {
                    token: Some(t.as_bytes()),
                    tenant: "sso",
                    method: None,
                    addresses: vec![],
                    origin: None,
                    user_agent: None,
                })
                .collect();
            c.verify_all(&items)
                .await
                .unwrap()
                .iter()
                .map(|d| d.reason().unwrap().as_str().to_owned())
                .collect()
        })
    };
    assert_eq!(decide(&[&old]), ["ok"]);
    assert_eq!(
        jwks.hits.load(Ordering::SeqCst),
        1,
        "a known kid fetches nothing"
    );

    // The identity provider rotates: "new" joins the document.
    *jwks.doc.lock().unwrap() = format!(r#"{{"keys":[{old_jwk},{new_jwk}]}}"#);
    assert_eq!(
        decide(&[&new, &old]),
        ["ok", "ok"],
        "the unknown kid was held, refetched and re-verified"
    );
    assert_eq!(jwks.hits.load(Ordering::SeqCst), 2, "one refetch");

    // Another unknown kid inside refetch_interval_s: no fetch, answered as it was.
    assert_eq!(decide(&[&unknown, &new]), ["unknown_kid", "ok"]);
    assert_eq!(
        jwks.hits.load(Ordering::SeqCst),
        2,
        "the refetch is rate limited"
    );
    let metrics = d.metrics_when(|m| m.contains("jotd_refetch_reverified_batches_total 1"));
    assert!(
        metrics.contains("jotd_refetch_reverified_batches_total 1"),
        "{metrics}"
    );
}

/// Readiness is about this replica, not one tenant's identity provider: a JWKS
/// URL that cannot be fetched is reported (`degraded`) while the replica stays
/// ready for every other tenant. Before, `/readyz` stayed 503, so an IdP outage
/// took every replica of the pool out of its balancer.
#[test]
fn an_unreachable_jwks_url_degrades_readiness_without_failing_it() {
    let (dir, _pki) = with_tls("jwks-unreachable");
    // A port nothing listens on: connection refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = dir.join("jotd.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
cert_file = "server.pem"
key_file = "server.key"

[[tenant]]
id = "static"
policy = "none"
[[tenant.key]]
kid = "hs"
alg = "HS256"
secret = "a secret of at least thirty-two bytes, for HS256"

[[tenant]]
id = "sso"
policy = "none"
[[tenant.jwks]]
internal = true
url = "http://{closed}/jwks.json"
refresh_s = 3600

# A second tenant of the same identity provider: the one fetch of the URL
# serves both, and both count as tried (readiness waited for ever on the
# tenant whose own fetch never ran).
[[tenant]]
id = "sso2"
policy = "none"
[[tenant.jwks]]
internal = true
url = "http://{closed}/jwks.json"
refresh_s = 3600
"#
        ),
    )
    .unwrap();
    let d = Daemon::start(&["--config", config.to_str().unwrap()], &dir);
    let (status, body) = ready(&d);
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ready: "), "{body}");
    assert!(
        body.contains("degraded: jwks http://127.0.0.1:")
            && body.contains("(tenant sso) never fetched: ")
            && body.contains("(tenant sso2) never fetched: "),
        "{body}"
    );
    let metrics = d.metrics_when(|m| m.contains("jotd_jwks_stale{"));
    assert!(
        metrics.contains(&format!(
            r#"jotd_jwks_stale{{url="http://{closed}/jwks.json"}} 1"#
        )),
        "{metrics}"
    );
    // The operator removes the dead URL (to clear the alert): its series is
    // zeroed, not left at 1 until a restart.
    let text = std::fs::read_to_string(&config).unwrap();
    let without = &text[..text.find("[[tenant]]\nid = \"sso\"").unwrap()];
    std::fs::write(&config, without).unwrap();
    d.signal("-HUP");
    d.wait_log("config reloaded");
    let stale = format!(r#"jotd_jwks_stale{{url="http://{closed}/jwks.json"}} 0"#);
    let metrics = d.metrics_when(|m| m.contains(&stale));
    assert!(metrics.contains(&stale), "{metrics}");
}

/// A JWKS URL a reload adds is not waited for: every replica reloads the same
/// config at once, so an identity provider that hangs would fail them all
/// together. Readiness lists it as degraded (`not fetched yet`) and stays 200.
#[test]
fn a_jwks_url_added_by_a_reload_does_not_fail_readiness_while_it_hangs() {
    let (dir, _pki) = with_tls("jwks-reload-hang");
    // Accepts connections and never answers (the fetch waits for its timeout).
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = hanging.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hanging.incoming() {
            held.push(s);
        }
    });
    let base = r#"
[server]
cert_file = "server.pem"
key_file = "server.key"
watch_interval_s = 0

[[tenant]]
id = "static"
policy = "none"
[[tenant.key]]
kid = "hs"
alg = "HS256"
secret = "a secret of at least thirty-two bytes, for HS256"
"#;
    let config = dir.join("jotd.toml");
    std::fs::write(&config, base).unwrap();
    let d = Daemon::start(&["--config", config.to_str().unwrap()], &dir);
    let (status, body) = ready(&d);
    assert_eq!(status, 200, "never ready: {body}");
    std::fs::write(
        &config,
        format!(
            "{base}\n[[tenant]]\nid = \"sso\"\npolicy = \"none\"\n[[tenant.jwks]]\ninternal = true\nurl = \"http://{at}/jwks.json\"\nrefresh_s = 3600\n"
        ),
    )
    .unwrap();
    d.signal("-HUP");
    d.wait_log("config reloaded");
    let until = Instant::now() + Duration::from_secs(2);
    let mut seen_pending = false;
    while Instant::now() < until {
        let (status, body) = d.get("/readyz");
        assert_eq!(status, 200, "{body}");
        seen_pending |= body.contains("degraded: jwks http://127.0.0.1:")
            && body.contains("(tenant sso) not fetched yet");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(seen_pending, "the hanging URL is listed as degraded");
}

/// A config whose tenants all have `require_jwt = false` and no keys is valid
/// (`config check` accepts it, `serve` answers): the replica is ready, not
/// `no keys loaded` for ever.
#[test]
fn a_replica_whose_tenants_need_no_token_is_ready() {
    let (dir, _pki) = with_tls("no-keys");
    let config = dir.join("jotd.toml");
    std::fs::write(
        &config,
        r#"
[server]
cert_file = "server.pem"
key_file = "server.key"

[[tenant]]
id = "pub"
policy = "none"
require_jwt = false
no_auth_methods = ["web3_clientVersion"]
"#,
    )
    .unwrap();
    let d = Daemon::start(&["--config", config.to_str().unwrap()], &dir);
    let (status, body) = ready(&d);
    assert_eq!(status, 200, "{body}");
    // The admin listener answers another method with 405 and the methods it allows.
    let mut s = std::net::TcpStream::connect(d.admin).unwrap();
    write!(
        s,
        "POST /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nallow: get, head\r\n"),
        "{answer}"
    );
}
