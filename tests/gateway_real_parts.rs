//! jotd-gateway with real parts: `jotd serve` on its development defaults as
//! the pool, a real Ethereum JSON-RPC dev node (ganache) as the upstream, and
//! real NGINX (`auth_request`) and Caddy (`forward_auth`) configured here in
//! front of it, besides the gateway's own proxy. Between every front and the
//! node sits a recording relay: the node must never see an `Authorization`
//! header or a refused call.
//!
//! `tests/tools/install-gateway-peers.sh` installs NGINX, Caddy and ganache
//! (`.ci/run` runs it; run as root, this test runs it when they are missing).

use jotd_core::{Algorithm, SigningKey};
use jotd_e2e::{Daemon, bin, now, scratch_dir, workspace_root};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// ganache's `--wallet.deterministic` account 0 (1000 ETH).
const ACCOUNT: &str = "0x90F8bf6A479f320ead074411a4B0e7944Ea8c9C1";
const OTHER: &str = "0xFFcf8FDEE72ac11b5c542428B35EEF5769C409f0";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ganache_cli() -> PathBuf {
    workspace_root().join("tests/.tools/node_modules/ganache/dist/node/cli.js")
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(name).is_file()))
}

/// NGINX, Caddy and ganache, installed by the project's script when missing.
fn ensure_peers() {
    if on_path("nginx") && on_path("caddy") && ganache_cli().is_file() {
        return;
    }
    let status = Command::new(workspace_root().join("tests/tools/install-gateway-peers.sh"))
        .status()
        .expect("run tests/tools/install-gateway-peers.sh");
    assert!(
        status.success() && on_path("nginx") && on_path("caddy") && ganache_cli().is_file(),
        "NGINX, Caddy and ganache are needed: run tests/tools/install-gateway-peers.sh (as root, or with sudo)"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(s)) = child.try_wait() {
            panic!("{what} exited: {s}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP relay to `to` that keeps a copy of everything sent towards it.
fn recording_relay(to: SocketAddr) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(upstream) = TcpStream::connect(to) else {
                continue;
            };
            let (mut c_read, mut u_write) =
                (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            let (mut u_read, mut c_write) = (upstream, client);
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(n) = c_read.read(&mut buf) {
                    if n == 0 || u_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    s.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                let _ = u_write.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u_read, &mut c_write);
                let _ = c_write.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (port, seen)
}

struct Reply {
    status: u16,
    headers: String,
    body: Value,
}

/// One HTTP/1.1 request on its own connection.
fn post(port: u16, path: &str, token: Option<&str>, body: &str) -> Reply {
    post_with(port, path, token, "", body)
}

/// As [`post`], with extra header lines (`Name: value\r\n` each).
fn post_with(port: u16, path: &str, token: Option<&str>, extra: &str, body: &str) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{auth}{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    // Some servers (ganache) reset a `Connection: close` socket after answering.
    if let Err(e) = s.read_to_end(&mut raw) {
        assert!(!raw.is_empty(), "POST {path} on {port}: {e}");
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    // Chunked bodies (Caddy): take the JSON between the first '{' or '[' and the last '}' or ']'.
    let body = match (rest.find(['{', '[']), rest.rfind(['}', ']'])) {
        (Some(a), Some(b)) if b >= a => serde_json::from_str(&rest[a..=b]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    Reply {
        status,
        headers: head.to_ascii_lowercase(),
        body,
    }
}

fn call(id: u64, method: &str, params: &Value) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}).to_string()
}

fn key(dev: &Path, stem: &str, alg: Algorithm) -> SigningKey {
    SigningKey::from_pkcs8(
        alg,
        &std::fs::read(dev.join(format!("keys/{stem}.pk8.der"))).unwrap(),
    )
    .unwrap()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(port: u16, token: &str) -> Result<Ws, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://127.0.0.1:{port}/v3/demo")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("WebSocket connect: {e}"),
    }
}

async fn ws_call(ws: &mut Ws, msg: &str) -> Value {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text(msg)).await.unwrap();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer")
            .expect("open")
            .unwrap();
        if let Message::Text(t) = m {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

async fn websocket(
    proxy: u16,
    node_port: u16,
    seed: &str,
    open: &str,
    expired: &str,
    es: &SigningKey,
) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    // A bad token never reaches the node.
    assert_eq!(ws_connect(proxy, expired).await.err(), Some(401));
    let mut ws = ws_connect(proxy, seed).await.expect("upgrade");
    let v = ws_call(
        &mut ws,
        &call(1, "eth_getBalance", &json!([ACCOUNT, "latest"])),
    )
    .await;
    assert_eq!(v["result"], "0x3635c9adc5dea00000", "{v}");
    let v = ws_call(
        &mut ws,
        &call(2, "eth_getBalance", &json!([OTHER, "latest"])),
    )
    .await;
    assert_eq!(v["error"]["data"]["reason"], "address_not_allowed", "{v}");
    let v = ws_call(&mut ws, &call(3, "eth_subscribe", &json!(["newHeads"]))).await;
    assert_eq!(v["error"]["data"]["reason"], "method_not_allowed", "{v}");
    drop(ws);
    // A subscription: notifications from the node reach the client.
    let mut ws = ws_connect(proxy, open).await.expect("upgrade");
    let v = ws_call(&mut ws, &call(4, "eth_subscribe", &json!(["newHeads"]))).await;
    assert!(v["result"].is_string(), "{v}");
    let mine = post(node_port, "/", None, &call(5, "evm_mine", &json!([])));
    assert_eq!(mine.status, 200);
    let note = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            break serde_json::from_str::<Value>(t.as_str()).unwrap();
        }
    };
    assert_eq!(note["method"], "eth_subscription", "{note}");
    drop(ws);
    // The socket closes at the token's exp.
    let short = es
        .mint(
            Some("es256"),
            &json!({"sub":"brief","aud":"jotd-dev","exp":now() + 2}).to_string(),
        )
        .unwrap();
    let mut ws = ws_connect(proxy, &short).await.expect("upgrade");
    let v = ws_call(&mut ws, &call(6, "eth_chainId", &json!([]))).await;
    assert!(v["result"].is_string(), "{v}");
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await
    .expect("closed at exp");
    assert_eq!(closed, Some(1008));
}

#[test]
#[allow(clippy::too_many_lines)]
fn gateway_proxy_nginx_and_caddy_in_front_of_a_real_node() {
    ensure_peers();
    let dir = scratch_dir("gateway-real-parts");
    let daemon = Daemon::start(&[], &dir);
    let dev = dir.join("jotd-dev");

    // The node, and a recording relay in front of it.
    let node_port = free_port();
    std::fs::create_dir_all(dir.join("ganache-db")).unwrap();
    let mut node = Killed(
        Command::new("node")
            .arg(ganache_cli())
            .args([
                "--server.host",
                "127.0.0.1",
                "--server.port",
                &node_port.to_string(),
            ])
            .args([
                "--wallet.deterministic",
                "--logging.quiet",
                "--chain.chainId",
                "1337",
            ])
            // In the scratch folder, so a killed node leaves no database behind.
            .arg("--database.dbPath")
            .arg(dir.join("ganache-db"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ganache"),
    );
    wait_port(node_port, "ganache", &mut node.0);
    let (relay, seen) = recording_relay(SocketAddr::from(([127, 0, 0, 1], node_port)));

    // The gateway.
    let (proxy, fa, admin) = (free_port(), free_port(), free_port());
    let config = dir.join("jotd-gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[pool]
endpoints = ["{quic}"]
ca_file = "jotd-dev/ca.pem"
[proxy]
listen = "127.0.0.1:{proxy}"
upstreams = ["http://127.0.0.1:{relay}/"]
[forward_auth]
listen = "127.0.0.1:{fa}"
[admin]
listen = "127.0.0.1:{admin}"
[[route]]
path = "/v3/{{tenant}}"
[[route]]
path = "/besu"
tenant = "demo-besu"
"#,
            quic = daemon.quic
        ),
    )
    .unwrap();
    let check = Command::new(bin("jotd-gateway"))
        .args(["config", "check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut gw = Killed(
        Command::new(bin("jotd-gateway"))
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(admin, "jotd-gateway", &mut gw.0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while jotd_e2e::http_get(SocketAddr::from(([127, 0, 0, 1], admin)), "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "jotd-gateway never ready");
        std::thread::sleep(Duration::from_millis(100));
    }

    let exp = now() + 600;
    let es = key(&dev, "es256", Algorithm::Es256);
    let rs = key(&dev, "rs256", Algorithm::Rs256);
    // The seed: eth_getBalance on one address, nothing else.
    let seed = json!({"sub":"infura-user","aud":"jotd-dev","exp":exp,"methods":["eth_getBalance"],"addresses":[ACCOUNT]}).to_string();
    let es_token = es.mint(Some("es256"), &seed).unwrap();
    let rs_token = rs.mint(Some("rs256"), &seed).unwrap();
    let open_token = es
        .mint(
            Some("es256"),
            &json!({"sub":"any","aud":"jotd-dev","exp":exp}).to_string(),
        )
        .unwrap();
    let expired = es
        .mint(
            Some("es256"),
            &json!({"sub":"old","aud":"jotd-dev","exp":now() - 60}).to_string(),
        )
        .unwrap();
    let besu = rs
        .mint(Some("rs256"), &json!({"sub":"op","aud":"jotd-dev","exp":exp,"permissions":["eth:blockNumber","eth:chainId"]}).to_string())
        .unwrap();

    // --- The proxy, straight in front of the node.
    for t in [&es_token, &rs_token] {
        let r = post(
            proxy,
            "/v3/demo",
            Some(t),
            &call(1, "eth_getBalance", &json!([ACCOUNT, "latest"])),
        );
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(
            r.body["result"], "0x3635c9adc5dea00000",
            "1000 ETH from the real node"
        );
    }
    let r = post(
        proxy,
        "/v3/demo",
        Some(&es_token),
        &call(2, "eth_getBalance", &json!([OTHER, "latest"])),
    );
    assert_eq!(
        (r.status, r.body["error"]["data"]["reason"].as_str()),
        (403, Some("address_not_allowed"))
    );
    let r = post(
        proxy,
        "/v3/demo",
        Some(&expired),
        &call(3, "eth_getBalance", &json!([ACCOUNT, "latest"])),
    );
    assert_eq!(r.status, 401);
    assert!(
        r.headers
            .contains("www-authenticate: bearer realm=\"jotd\", error=\"invalid_token\""),
        "{}",
        r.headers
    );
    let batch = format!(
        "[{},{},{}]",
        call(1, "eth_getBalance", &json!([ACCOUNT, "latest"])),
        call(
            2,
            "eth_sendTransaction",
            &json!([{"from": ACCOUNT, "to": OTHER, "value": "0x1"}])
        ),
        call(3, "eth_getBalance", &json!([OTHER, "latest"])),
    );
    let r = post(proxy, "/v3/demo", Some(&es_token), &batch);
    assert_eq!(r.status, 200);
    let a = r.body.as_array().unwrap();
    assert_eq!(a[0]["result"], "0x3635c9adc5dea00000");
    assert_eq!(a[1]["error"]["data"]["reason"], "method_not_allowed");
    assert_eq!(a[2]["error"]["data"]["reason"], "address_not_allowed");
    // Besu: group:method permissions on a fixed tenant, no-auth method.
    let r = post(
        proxy,
        "/besu",
        Some(&besu),
        &call(1, "eth_chainId", &json!([])),
    );
    assert_eq!((r.status, r.body["result"].as_str()), (200, Some("0x539")));
    let r = post(
        proxy,
        "/besu",
        Some(&besu),
        &call(2, "eth_accounts", &json!([])),
    );
    assert_eq!(
        (r.status, r.body["error"]["data"]["reason"].as_str()),
        (403, Some("permission_denied"))
    );
    let r = post(
        proxy,
        "/besu",
        None,
        &call(3, "web3_clientVersion", &json!([])),
    );
    assert_eq!(r.status, 200, "no-auth method: {:?}", r.body);

    // --- WebSocket through the proxy: token at the upgrade, calls per message,
    // subscriptions from the node, the socket closed at the token's exp.
    jotd_e2e::runtime().block_on(websocket(
        proxy,
        node_port,
        &es_token,
        &open_token,
        &expired,
        &es,
    ));

    // --- NGINX auth_request → forward-auth, then the node.
    let nginx_dir = dir.join("nginx");
    std::fs::create_dir_all(nginx_dir.join("tmp")).unwrap();
    let nginx_port = free_port();
    let conf = std::fs::read_to_string(workspace_root().join("deploy/gateways/nginx.conf"))
        .unwrap()
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{nginx_port}"))
        .replace("127.0.0.1:8601", &format!("127.0.0.1:{fa}"))
        .replace("127.0.0.1:8545", &format!("127.0.0.1:{relay}"))
        .replace("/var/lib/jotd-gateway/nginx", nginx_dir.to_str().unwrap());
    std::fs::write(nginx_dir.join("nginx.conf"), conf).unwrap();
    let mut nginx = Killed(
        Command::new("nginx")
            .args(["-p"])
            .arg(&nginx_dir)
            .args(["-c"])
            .arg(nginx_dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(nginx_dir.join("stderr.log")).unwrap())
            .spawn()
            .expect("start nginx"),
    );
    wait_port(nginx_port, "nginx", &mut nginx.0);
    // NGINX does not pass the body to auth_request: token, tenant, origin and
    // user agent are checked; a token whose policy lists methods is refused.
    let r = post(
        nginx_port,
        "/v3/demo",
        Some(&open_token),
        &call(1, "eth_getBalance", &json!([ACCOUNT, "latest"])),
    );
    assert_eq!(
        (r.status, r.body["result"].as_str()),
        (200, Some("0x3635c9adc5dea00000")),
        "nginx"
    );
    assert_eq!(
        post(
            nginx_port,
            "/v3/demo",
            Some(&es_token),
            &call(1, "eth_blockNumber", &json!([]))
        )
        .status,
        403
    );
    assert_eq!(
        post(
            nginx_port,
            "/v3/demo",
            Some(&expired),
            &call(1, "eth_blockNumber", &json!([]))
        )
        .status,
        401
    );
    assert_eq!(
        post(
            nginx_port,
            "/v3/demo",
            None,
            &call(1, "eth_blockNumber", &json!([]))
        )
        .status,
        401
    );

    // --- Caddy forward_auth → forward-auth, then the node.
    let caddy_port = free_port();
    let caddyfile = std::fs::read_to_string(workspace_root().join("deploy/gateways/Caddyfile"))
        .unwrap()
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{caddy_port}"))
        .replace("127.0.0.1:8601", &format!("127.0.0.1:{fa}"))
        .replace("127.0.0.1:8545", &format!("127.0.0.1:{relay}"));
    let caddy_dir = dir.join("caddy");
    std::fs::create_dir_all(&caddy_dir).unwrap();
    std::fs::write(caddy_dir.join("Caddyfile"), caddyfile).unwrap();
    let mut caddy = Killed(
        Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(caddy_dir.join("Caddyfile"))
            .env("HOME", &caddy_dir)
            .env("XDG_DATA_HOME", &caddy_dir)
            .env("XDG_CONFIG_HOME", &caddy_dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(caddy_dir.join("stderr.log")).unwrap())
            .spawn()
            .expect("start caddy"),
    );
    wait_port(caddy_port, "caddy", &mut caddy.0);
    let r = post(
        caddy_port,
        "/v3/demo",
        Some(&open_token),
        &call(1, "eth_getBalance", &json!([ACCOUNT, "latest"])),
    );
    assert_eq!(
        (r.status, r.body["result"].as_str()),
        (200, Some("0x3635c9adc5dea00000")),
        "caddy"
    );
    let r = post(
        caddy_port,
        "/v3/demo",
        Some(&expired),
        &call(1, "eth_blockNumber", &json!([])),
    );
    assert_eq!(
        (r.status, r.body["error"]["data"]["reason"].as_str()),
        (401, Some("expired")),
        "caddy relays the door's answer"
    );
    assert_eq!(
        post(
            caddy_port,
            "/v3/demo",
            Some(&es_token),
            &call(1, "eth_blockNumber", &json!([]))
        )
        .status,
        403
    );

    // --- What the node saw: allowed calls only, never a token.
    let seen = String::from_utf8_lossy(&seen.lock().unwrap()).to_ascii_lowercase();
    assert!(
        !seen.contains("authorization:"),
        "the node saw an Authorization header"
    );
    assert!(
        !seen.contains(&es_token.to_ascii_lowercase()),
        "the node saw a token"
    );
    for refused in ["eth_sendtransaction", "eth_accounts", "eth_blocknumber"] {
        assert!(
            !seen.contains(refused),
            "the node saw a refused call: {refused}"
        );
    }
    assert!(
        seen.contains("eth_getbalance")
            && seen.contains("eth_chainid")
            && seen.contains("web3_clientversion")
    );

    // The gateway's metrics count the checks by door and outcome.
    let (_, metrics) = jotd_e2e::http_get(SocketAddr::from(([127, 0, 0, 1], admin)), "/metrics");
    for needle in [
        "jotd_gateway_checks_total{door=\"proxy\",outcome=\"ok\"}",
        "jotd_gateway_checks_total{door=\"forward_auth\",outcome=\"expired\"}",
        "jotd_gateway_batches_total{flush=\"eager\"}",
        "# TYPE jotd_gateway_batches_cancelled_total counter\njotd_gateway_batches_cancelled_total 0",
        "jotd_gateway_upstream_seconds_bucket",
        "# TYPE jotd_gateway_pool_batches_total counter\njotd_gateway_pool_batches_total{endpoint=\"127.0.0.1:",
        "# TYPE jotd_gateway_pool_disagreements_total counter\njotd_gateway_pool_disagreements_total 0",
        "jotd_gateway_pool_protocol_violations_total 0",
    ] {
        assert!(metrics.contains(needle), "{needle} not in:\n{metrics}");
    }
    // The drain (SIGTERM) closes an open WebSocket with 1001.
    jotd_e2e::runtime().block_on(async {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let mut ws = ws_connect(proxy, &open_token).await.expect("upgrade");
        let v = ws_call(&mut ws, &call(7, "eth_chainId", &json!([]))).await;
        assert!(v["result"].is_string(), "{v}");
        let killed = Command::new("kill")
            .args(["-TERM", &gw.0.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let code = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => {}
                    _ => return None,
                }
            }
        })
        .await
        .expect("closed at the drain");
        assert_eq!(code, Some(1001));
    });
    drop(daemon);
}

/// jotd-gateway and signals: a SIGHUP is logged and ignored (it has no
/// reload; before, the signal's default action ended the process), and a
/// second SIGTERM ends a drain at once (exit status 1) where the first waits
/// for a request in flight to a node that never answers. Its log, not a
/// terminal here, carries no colour codes.
#[test]
fn the_gateway_outlives_sighup_and_a_second_sigterm_ends_its_drain() {
    let dir = scratch_dir("gateway-signals");
    let daemon = Daemon::start(&[], &dir);
    // An upstream that reads and never answers: a forwarded call holds its
    // connection, and so the drain.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = silent.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(0usize));
    {
        let seen = Arc::clone(&seen);
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in silent.incoming() {
                let Ok(mut s) = s else { continue };
                let mut buf = [0u8; 4096];
                if let Ok(n) = s.read(&mut buf) {
                    *seen.lock().unwrap() += n;
                }
                held.push(s);
            }
        });
    }
    let (proxy, admin) = (free_port(), free_port());
    let config = dir.join("jotd-gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[pool]
endpoints = ["{quic}"]
ca_file = "jotd-dev/ca.pem"
[proxy]
listen = "127.0.0.1:{proxy}"
upstreams = ["http://{upstream}/"]
upstream_timeout_ms = 600000
[admin]
listen = "127.0.0.1:{admin}"
[limits]
drain_timeout_ms = 700000
[[route]]
path = "/besu"
tenant = "demo-besu"
"#,
            quic = daemon.quic
        ),
    )
    .unwrap();
    let mut gw = Killed(
        Command::new(bin("jotd-gateway"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let log = Arc::new(Mutex::new(String::new()));
    {
        let log = Arc::clone(&log);
        let mut stderr = gw.0.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                log.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    let wait_log = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !log.lock().unwrap().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in {}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let kill = |sig: &str, pid: u32| {
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    let pid = gw.0.id();
    wait_port(admin, "jotd-gateway", &mut gw.0);
    wait_log("jotd-gateway serving");
    assert!(
        !log.lock().unwrap().contains('\x1b'),
        "colour codes in a log that is not a terminal"
    );

    kill("-HUP", pid);
    wait_log("SIGHUP ignored");
    assert!(
        gw.0.try_wait().unwrap().is_none(),
        "SIGHUP ended the gateway"
    );
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin));
    assert_eq!(jotd_e2e::http_get(admin_addr, "/healthz").0, 200);

    // A no-auth call, allowed and forwarded to the node that never answers.
    std::thread::spawn(move || {
        let body = call(1, "web3_clientVersion", &json!([]));
        let _ = std::panic::catch_unwind(|| post(proxy, "/besu", None, &body));
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while *seen.lock().unwrap() == 0 {
        assert!(Instant::now() < deadline, "the call never reached the node");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Two at once: the same request twice, not a second one.
    kill("-TERM", pid);
    kill("-INT", pid);
    wait_log("draining");
    std::thread::sleep(Duration::from_millis(300));
    assert!(gw.0.try_wait().unwrap().is_none(), "the drain waits");
    std::thread::sleep(Duration::from_millis(1000));
    kill("-TERM", pid);
    let status = jotd_e2e::exit_within_20_s(&mut gw.0, "a second SIGTERM left the drain running");
    assert_eq!(status.code(), Some(1), "{status:?}");
    wait_log("second stop signal");
}
