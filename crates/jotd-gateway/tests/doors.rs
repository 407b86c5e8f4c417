//! The doors against an in-process jotd server and a recording upstream:
//! the Infura flow (RS256/ES256 by kid, aud, exp, allowlists), the Besu flow
//! (group:method permissions, no-auth methods), batch arrays with mixed
//! outcomes, forward-auth, and a pool that is gone (closed and open). The
//! upstream records every request: it must never see a denied call or an
//! `Authorization` header.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use jotd_core::{
    Algorithm, AlgorithmSet, Engine, EngineConfig, PolicyModel, SigningKey, Snapshot, Tenant,
    TenantKey, UnixTime,
};
use jotd_gateway::config::Config;
use jotd_transport::{Backend, DevPki, Server, ServerOptions, server_config};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

const A: &str = "0x1937c4dd0ad26ee5f1a5b9e6d0bc2e2b5f2ef9ab";
const B: &str = "0x00000000000000000000000000000000000000b2";
const AUD: &str = "jotd-test";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Keys {
    rs: SigningKey,
    es: SigningKey,
}

struct Pool {
    addr: SocketAddr,
    pki: DevPki,
    /// The keys the pool serves; a test may swap them (a key removed).
    keys: Arc<Mutex<Arc<Snapshot>>>,
    _stop: oneshot::Sender<()>,
}

struct StaticBackend(Arc<Mutex<Arc<Snapshot>>>);

impl Backend for StaticBackend {
    fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.0.lock().unwrap())
    }
    fn now(&self) -> UnixTime {
        UnixTime(now())
    }
}

fn tenants(k: &Keys) -> Snapshot {
    let keys = vec![
        TenantKey {
            kid: "rsa-1".into(),
            key: k.rs.verifying_key().unwrap(),
            issuer: None,
        },
        TenantKey {
            kid: "ec-1".into(),
            key: k.es.verifying_key().unwrap(),
            issuer: None,
        },
    ];
    let mut infura = Tenant::new("infura", keys.clone());
    infura.policy = PolicyModel::Allowlist;
    infura.algorithms = AlgorithmSet::ALL;
    infura.claims.audiences = vec![AUD.into()];
    infura.no_auth_methods = vec!["web3_clientVersion".into()];
    infura.claims_to_return = vec!["scope".into(), "https://x.example/roles".into()];
    let mut besu = Tenant::new("besu", keys);
    besu.policy = PolicyModel::Permissions;
    besu.algorithms = AlgorithmSet::ALL;
    besu.no_auth_methods = vec!["net_version".into()];
    // A token-free tenant with an origin allowlist of its own.
    let mut open = Tenant::new("open", Vec::new());
    open.require_jwt = false;
    open.origins = vec!["https://app.example".into()];
    Snapshot::new(1, [Arc::new(infura), Arc::new(besu), Arc::new(open)])
}

fn start_pool(k: &Keys) -> Pool {
    let pki = DevPki::generate().unwrap();
    let keys = Arc::new(Mutex::new(Arc::new(tenants(k))));
    let tls = server_config(
        pki.server_cert_pem.as_bytes(),
        pki.server_key_pem.as_bytes(),
        None,
    )
    .unwrap();
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap(),
    );
    let server = Server::bind(
        ServerOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..ServerOptions::default()
        },
        tls,
        Arc::new(Engine::new(EngineConfig::default())),
        pool,
        Arc::new(StaticBackend(Arc::clone(&keys))),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Pool {
        addr,
        pki,
        keys,
        _stop: stop,
    }
}

/// What the upstream saw: each request's headers and body.
type Seen = Arc<Mutex<Vec<(hyper::HeaderMap, Value)>>>;

/// A JSON-RPC node stand-in: answers each call with `result = method`, and
/// batches in reverse order (answers are matched by id, as the spec allows).
async fn start_upstream() -> (SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let s = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let s = Arc::clone(&s);
                    async move {
                        let headers = req.headers().clone();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let v: Value = serde_json::from_slice(&body).unwrap();
                        s.lock().unwrap().push((headers, v.clone()));
                        let answer =
                            |c: &Value| json!({"jsonrpc":"2.0","id":c["id"],"result":c["method"]});
                        let out = match &v {
                            Value::Array(calls) => Value::Array(
                                calls
                                    .iter()
                                    .rev()
                                    .filter(|c| c.get("id").is_some())
                                    .map(answer)
                                    .collect(),
                            ),
                            c => answer(c),
                        };
                        // A batch of notifications only: nothing back, as
                        // geth sends (JSON-RPC 2.0 §6), not `[]`.
                        let text = match &out {
                            Value::Array(a) if a.is_empty() => String::new(),
                            _ => out.to_string(),
                        };
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            text,
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("jotd-gateway-{name}-"))
        .tempdir()
        .unwrap()
}

fn config(
    name: &str,
    pool: &Pool,
    pool_addr: SocketAddr,
    upstream: SocketAddr,
    extra: &str,
) -> (Config, tempfile::TempDir) {
    let dir = scratch(name);
    std::fs::write(dir.path().join("ca.pem"), &pool.pki.ca_pem).unwrap();
    let text = format!(
        r#"
[pool]
endpoints = ["{pool_addr}"]
ca_file = "ca.pem"
check_timeout_ms = 1500
{extra}
[proxy]
listen = "127.0.0.1:0"
upstreams = ["http://{upstream}/"]
[forward_auth]
listen = "127.0.0.1:0"
[[route]]
path = "/v3/{{tenant}}"
[[route]]
path = "/besu"
tenant = "besu"
"#
    );
    let file = dir.path().join("gw.toml");
    std::fs::write(&file, &text).unwrap();
    (Config::load(&file).unwrap(), dir)
}

/// Keys, one jotd daemon, the mock node (and what it saw), and a gateway
/// config over them (`config`'s text with `extra`, in its folder): what most
/// tests start from.
async fn rig(name: &str, extra: &str) -> (Keys, Pool, Seen, Config, tempfile::TempDir) {
    let k = keys();
    let pool = start_pool(&k);
    let (up, seen) = start_upstream().await;
    let (cfg, dir) = config(name, &pool, pool.addr, up, extra);
    (k, pool, seen, cfg, dir)
}

struct Http {
    status: u16,
    headers: hyper::HeaderMap,
    body: Value,
    raw_body: String,
}

async fn post(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> Http {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(if body.is_empty() { "GET" } else { "POST" })
        .uri(path)
        .header("host", "gateway.test");
    // A JSON body unless the test gives a content-type ("" for none).
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        req = req.header("content-type", "application/json");
    }
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        if !v.is_empty() {
            req = req.header(*k, *v);
        }
    }
    let resp = send
        .send_request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Http {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        raw_body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn call(id: u64, method: &str, params: &Value) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}).to_string()
}

fn keys() -> Keys {
    Keys {
        rs: SigningKey::generate(Algorithm::Rs256).unwrap(),
        es: SigningKey::generate(Algorithm::Es256).unwrap(),
    }
}

/// Asserts the upstream saw exactly `methods` since the last call, and no Authorization.
fn upstream_saw(seen: &Seen, methods: &[&str]) {
    let mut s = seen.lock().unwrap();
    let mut got = Vec::new();
    for (h, v) in s.drain(..) {
        assert!(
            h.get("authorization").is_none(),
            "the node saw Authorization"
        );
        let calls = match v {
            Value::Array(a) => a,
            c => vec![c],
        };
        got.extend(
            calls
                .iter()
                .map(|c| c["method"].as_str().unwrap().to_owned()),
        );
    }
    got.sort();
    let mut want: Vec<String> = methods.iter().map(|m| (*m).to_owned()).collect();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_infura_flow_through_the_proxy() {
    let (k, _pool, seen, cfg, _dir) = rig("infura", "").await;
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    let proxy = gw.proxy.unwrap();
    let exp = now() + 600;
    let claims = json!({"sub":"alice","aud":AUD,"exp":exp,"methods":["eth_getBalance","eth_call"],"addresses":[A],"scope":"read"}).to_string();
    let rs = k.rs.mint(Some("rsa-1"), &claims).unwrap();
    let es = k.es.mint(Some("ec-1"), &claims).unwrap();

    // The seed's call: eth_getBalance on the allowed address, RS256 and ES256.
    for token in [&rs, &es] {
        let r = post(
            proxy,
            "/v3/infura",
            Some(token),
            &[],
            &call(1, "eth_getBalance", &json!([A, "latest"])),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body["result"], "eth_getBalance");
        assert_eq!(r.body["id"], 1);
    }
    upstream_saw(&seen, &["eth_getBalance", "eth_getBalance"]);
    {
        // Identity reaches the node; the token does not.
        seen.lock().unwrap().clear();
        post(
            proxy,
            "/v3/infura",
            Some(&rs),
            &[],
            &call(1, "eth_getBalance", &json!([A])),
        )
        .await;
        let s = seen.lock().unwrap();
        assert_eq!(s[0].0.get("x-jotd-subject").unwrap(), "alice");
        assert_eq!(s[0].0.get("x-jotd-tenant").unwrap(), "infura");
    }
    seen.lock().unwrap().clear();

    // Another address, another method: 403 with the reason, same id.
    let r = post(
        proxy,
        "/v3/infura",
        Some(&rs),
        &[],
        &call(7, "eth_getBalance", &json!([B, "latest"])),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body["id"], 7);
    assert_eq!(r.body["error"]["data"]["reason"], "address_not_allowed");
    let r = post(
        proxy,
        "/v3/infura",
        Some(&rs),
        &[],
        &call(8, "eth_sendRawTransaction", &json!(["0x00"])),
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["data"]["reason"].as_str()),
        (403, Some("method_not_allowed"))
    );
    // eth_call's `to` is checked, a non-address there is refused before jotd.
    let r = post(
        proxy,
        "/v3/infura",
        Some(&rs),
        &[],
        &call(9, "eth_call", &json!([{"to": B, "data":"0x"}, "latest"])),
    )
    .await;
    assert_eq!(r.body["error"]["data"]["reason"], "address_not_allowed");
    let r = post(
        proxy,
        "/v3/infura",
        Some(&rs),
        &[],
        &call(10, "eth_call", &json!([{"to": [A]}, "latest"])),
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_i64()),
        (400, Some(-32602))
    );
    // Key spellings a case-folding node reads as the same key: refused, never forwarded.
    let folded = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":["{A}"],"METHOD":"eth_sendRawTransaction"}}"#
    );
    assert_eq!(
        post(proxy, "/v3/infura", Some(&rs), &[], &folded)
            .await
            .status,
        400
    );
    let to_folded = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[{{"to":"{A}","TO":"{B}"}}]}}"#
    );
    assert_eq!(
        post(proxy, "/v3/infura", Some(&rs), &[], &to_folded)
            .await
            .status,
        400
    );
    // A lone `TO` is refused, not read: geth would read it as `to`, a node
    // matching keys exactly would see a contract creation.
    let r = post(
        proxy,
        "/v3/infura",
        Some(&rs),
        &[],
        &format!(r#"{{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[{{"TO":"{B}"}}]}}"#),
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_i64()),
        (400, Some(-32602))
    );
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is not spelled `to`"),
        "{}",
        r.body
    );
    // eth_call without `to` (contract creation) is unbounded: refused for an
    // address-restricted token, allowed for one that lists "*".
    let create = call(11, "eth_call", &json!([{"data": "0x6000"}, "latest"]));
    let r = post(proxy, "/v3/infura", Some(&rs), &[], &create).await;
    assert_eq!(r.body["error"]["data"]["reason"], "address_not_allowed");
    let star =
        k.rs.mint(
            Some("rsa-1"),
            &json!({"sub":"s","aud":AUD,"exp":exp,"methods":["eth_call"],"addresses":["*"]})
                .to_string(),
        )
        .unwrap();
    assert_eq!(
        post(proxy, "/v3/infura", Some(&star), &[], &create)
            .await
            .status,
        200
    );
    upstream_saw(&seen, &["eth_call"]);
    // A duplicate key could read differently at the node: refused.
    let dup = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":["{A}"],"params":["{B}"]}}"#
    );
    let r = post(proxy, "/v3/infura", Some(&rs), &[], &dup).await;
    assert_eq!(r.status, 400);

    // Token problems: 401 with WWW-Authenticate (RFC 6750).
    let expired =
        k.rs.mint(
            Some("rsa-1"),
            &json!({"sub":"a","aud":AUD,"exp":now() - 60}).to_string(),
        )
        .unwrap();
    let wrong_aud =
        k.es.mint(
            Some("ec-1"),
            &json!({"sub":"a","aud":"other","exp":exp}).to_string(),
        )
        .unwrap();
    let unknown_kid =
        k.es.mint(
            Some("ec-9"),
            &json!({"sub":"a","aud":AUD,"exp":exp}).to_string(),
        )
        .unwrap();
    // Signed by a key that is not the tenant's, under the tenant's kid.
    let forged = SigningKey::generate(Algorithm::Es256)
        .unwrap()
        .mint(Some("ec-1"), &claims)
        .unwrap();
    for (token, reason) in [
        (Some(expired.as_str()), "expired"),
        (Some(wrong_aud.as_str()), "bad_audience"),
        (Some(unknown_kid.as_str()), "unknown_kid"),
        (Some(forged.as_str()), "bad_signature"),
        (None, "missing_token"),
    ] {
        let r = post(
            proxy,
            "/v3/infura",
            token,
            &[],
            &call(3, "eth_getBalance", &json!([A])),
        )
        .await;
        assert_eq!(r.status, 401, "{reason}: {:?}", r.body);
        assert_eq!(r.body["error"]["data"]["reason"], reason);
        let www = r.headers.get("www-authenticate").unwrap().to_str().unwrap();
        if reason == "missing_token" {
            assert_eq!(www, "Bearer realm=\"jotd\"");
        } else {
            assert!(www.contains("error=\"invalid_token\""), "{www}");
        }
    }
    // No-auth method without a token: allowed.
    let r = post(
        proxy,
        "/v3/infura",
        None,
        &[],
        &call(4, "web3_clientVersion", &json!([])),
    )
    .await;
    assert_eq!(r.status, 200);
    // An unknown tenant is refused.
    let r = post(
        proxy,
        "/v3/nobody",
        Some(&rs),
        &[],
        &call(5, "eth_getBalance", &json!([A])),
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["data"]["reason"].as_str()),
        (403, Some("unknown_tenant"))
    );
    // No route, not POST.
    assert_eq!(
        post(
            proxy,
            "/elsewhere",
            Some(&rs),
            &[],
            &call(1, "eth_getBalance", &json!([A]))
        )
        .await
        .status,
        404
    );
    assert_eq!(
        post(proxy, "/v3/infura", Some(&rs), &[], "").await.status,
        405
    );
    upstream_saw(&seen, &["web3_clientVersion"]);
    gw.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_array_is_answered_in_order_with_mixed_outcomes() {
    let (k, _pool, seen, cfg, _dir) = rig("batch", "").await;
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    let proxy = gw.proxy.unwrap();
    let claims = json!({"sub":"bob","aud":AUD,"exp":now() + 600,"methods":["eth_getBalance","eth_blockNumber"],"addresses":[A]}).to_string();
    let token = k.es.mint(Some("ec-1"), &claims).unwrap();
    let body = format!(
        "[{},{},{},5,{},{}]",
        call(1, "eth_getBalance", &json!([A, "latest"])),
        call(2, "eth_getBalance", &json!([B, "latest"])),
        call(3, "eth_blockNumber", &json!([])),
        // An allowed notification: forwarded, no answer.
        json!({"jsonrpc":"2.0","method":"eth_blockNumber"}),
        call(6, "eth_chainId", &json!([])),
    );
    let r = post(proxy, "/v3/infura", Some(&token), &[], &body).await;
    assert_eq!(r.status, 200);
    let a = r.body.as_array().unwrap();
    let ids: Vec<&Value> = a.iter().map(|x| &x["id"]).collect();
    assert_eq!(
        ids,
        [&json!(1), &json!(2), &json!(3), &Value::Null, &json!(6)]
    );
    assert_eq!(a[0]["result"], "eth_getBalance");
    assert_eq!(a[1]["error"]["data"]["reason"], "address_not_allowed");
    assert_eq!(a[2]["result"], "eth_blockNumber");
    assert_eq!(a[3]["error"]["code"], -32600);
    assert_eq!(a[4]["error"]["data"]["reason"], "method_not_allowed");
    upstream_saw(
        &seen,
        &["eth_getBalance", "eth_blockNumber", "eth_blockNumber"],
    );

    // Every call refused for the token: 401; for policy: 403.
    let expired =
        k.es.mint(
            Some("ec-1"),
            &json!({"aud":AUD,"exp":now() - 60}).to_string(),
        )
        .unwrap();
    let two = format!(
        "[{},{}]",
        call(1, "eth_getBalance", &json!([A])),
        call(2, "eth_blockNumber", &json!([]))
    );
    let r = post(proxy, "/v3/infura", Some(&expired), &[], &two).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body.as_array().unwrap().len(), 2);
    let denied = format!(
        "[{},{}]",
        call(1, "eth_getBalance", &json!([B])),
        call(2, "eth_chainId", &json!([]))
    );
    assert_eq!(
        post(proxy, "/v3/infura", Some(&token), &[], &denied)
            .await
            .status,
        403
    );
    // Duplicate ids among allowed calls: forwarded one by one, each still answered.
    let dup_ids = format!(
        "[{},{}]",
        call(1, "eth_getBalance", &json!([A])),
        call(1, "eth_blockNumber", &json!([]))
    );
    let r = post(proxy, "/v3/infura", Some(&token), &[], &dup_ids).await;
    let a = r.body.as_array().unwrap();
    assert_eq!(
        (a[0]["result"].as_str(), a[1]["result"].as_str()),
        (Some("eth_getBalance"), Some("eth_blockNumber"))
    );
    upstream_saw(&seen, &["eth_getBalance", "eth_blockNumber"]);
    // Ids written differently that a node reads alike (`1` and `1.0`, `"a"`
    // and `"\u0061"`) are duplicates too: never crossed.
    for (x, y) in [("1", "1.0"), (r#""a""#, r#""\u0061""#)] {
        let body = format!(
            r#"[{{"jsonrpc":"2.0","id":{x},"method":"eth_getBalance","params":["{A}"]}},{{"jsonrpc":"2.0","id":{y},"method":"eth_blockNumber"}}]"#
        );
        let r = post(proxy, "/v3/infura", Some(&token), &[], &body).await;
        let a = r.body.as_array().unwrap();
        assert_eq!(
            (a[0]["result"].as_str(), a[1]["result"].as_str()),
            (Some("eth_getBalance"), Some("eth_blockNumber")),
            "{body}"
        );
        upstream_saw(&seen, &["eth_getBalance", "eth_blockNumber"]);
    }
    // Only notifications: forwarded, and nothing to answer (204).
    let notes = format!("[{}]", json!({"jsonrpc":"2.0","method":"eth_blockNumber"}));
    let r = post(proxy, "/v3/infura", Some(&token), &[], &notes).await;
    assert_eq!(r.status, 204);
    upstream_saw(&seen, &["eth_blockNumber"]);
    // Ids are echoed as written.
    let r = post(
        proxy,
        "/v3/infura",
        Some(&token),
        &[],
        r#"{"jsonrpc":"2.0","id":1e0,"method":"eth_chainId"}"#,
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.raw_body.get(..30),
        Some(r#"{"jsonrpc":"2.0","id":1e0,"err"#)
    );
    gw.drain().await;
}

/// A large batch whose token jotd refuses for itself sends the token to
/// jotd once, not once per call: the gateway checks it alone first when the
/// calls' copies would pass 64 KiB (`TOKEN_FIRST_BYTES`), and every call
/// gets the refusal. A token that verifies costs that one extra check, then
/// each call is decided as before; a small batch goes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_sends_a_refused_token_once() {
    let (k, _pool, seen, cfg, _dir) = rig("token-first", "").await;
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    let proxy = gw.proxy.unwrap();
    let pad = "x".repeat(4000);
    let claims = |exp: u64| {
        json!({"sub":"bob","aud":AUD,"exp":exp,"methods":["eth_blockNumber"],"pad":pad}).to_string()
    };
    let good = k.es.mint(Some("ec-1"), &claims(now() + 600)).unwrap();
    let expired = k.es.mint(Some("ec-1"), &claims(now() - 60)).unwrap();
    let mut forged = good.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert!(good.len() * 20 > jotd_gateway::gate::TOKEN_FIRST_BYTES);
    let batch = |methods: &[&str]| {
        let calls: Vec<String> = methods
            .iter()
            .enumerate()
            .map(|(i, m)| call(i as u64 + 1, m, &json!([])))
            .collect();
        format!("[{}]", calls.join(","))
    };
    let items = || gw.batcher.stats().items;
    let twenty = batch(&["eth_blockNumber"; 20]);
    for (token, reason) in [(&forged, "bad_signature"), (&expired, "expired")] {
        let before = items();
        let r = post(proxy, "/v3/infura", Some(token), &[], &twenty).await;
        assert_eq!(r.status, 401, "{reason}");
        let a = r.body.as_array().unwrap();
        assert_eq!(a.len(), 20);
        for (i, x) in a.iter().enumerate() {
            assert_eq!(x["id"], json!(i + 1));
            assert_eq!(x["error"]["data"]["reason"], reason);
        }
        assert_eq!(items() - before, 1, "{reason}: one check, not twenty");
    }
    upstream_saw(&seen, &[]);
    // The tenant's own origin allowlist refuses before the token is read:
    // one check too (a review found a bad `Origin` sent every copy).
    let before = items();
    let r = post(
        proxy,
        "/v3/open",
        Some(&forged),
        &[("origin", "https://evil.example")],
        &twenty,
    )
    .await;
    assert_eq!(r.status, 403);
    let a = r.body.as_array().unwrap();
    assert_eq!(a.len(), 20);
    assert!(
        a.iter()
            .all(|x| x["error"]["data"]["reason"] == "origin_not_allowed")
    );
    assert_eq!(items() - before, 1, "origin: one check, not twenty");
    upstream_saw(&seen, &[]);
    // A token that verifies: the check alone, then each call, outcomes mixed.
    let mut methods = vec!["eth_blockNumber"; 10];
    methods.extend(["eth_chainId"; 10]);
    let before = items();
    let r = post(proxy, "/v3/infura", Some(&good), &[], &batch(&methods)).await;
    assert_eq!(r.status, 200);
    let a = r.body.as_array().unwrap();
    assert_eq!(a.len(), 20);
    assert!(a[..10].iter().all(|x| x["result"] == "eth_blockNumber"));
    assert!(
        a[10..]
            .iter()
            .all(|x| x["error"]["data"]["reason"] == "method_not_allowed")
    );
    assert_eq!(items() - before, 21);
    upstream_saw(&seen, &["eth_blockNumber"; 10]);
    // Below the threshold: no check alone.
    let small =
        k.es.mint(
            Some("ec-1"),
            &json!({"sub":"bob","aud":AUD,"exp":now() - 60}).to_string(),
        )
        .unwrap();
    let before = items();
    let r = post(
        proxy,
        "/v3/infura",
        Some(&small),
        &[],
        &batch(&["eth_blockNumber"; 2]),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(items() - before, 2);
    gw.drain().await;
}

/// Request bodies share one gateway-wide budget (`max_body_buffer_bytes`):
/// a client holding a half-sent body keeps its room until the body times
/// out, and a body that finds no room is refused 503 at once (bodies had a
/// per-request cap only: 10,000 connections could hold ~10 GiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_share_one_budget() {
    use tokio::io::AsyncWriteExt;
    let (k, _pool, seen, cfg, _dir) = rig(
        "body-budget",
        "[limits]\nmax_body_bytes = 1000\nmax_body_buffer_bytes = 1500\nbody_timeout_ms = 1500\n",
    )
    .await;
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    let proxy = gw.proxy.unwrap();
    let token =
        k.es.mint(
            Some("ec-1"),
            &json!({"aud":AUD,"exp":now() + 600}).to_string(),
        )
        .unwrap();
    // A holds 900 bytes of a 1,000-byte body and sends no more.
    let mut held = tokio::net::TcpStream::connect(proxy).await.unwrap();
    held.write_all(
        format!(
            "POST /v3/infura HTTP/1.1\r\nhost: gateway.test\r\ncontent-type: application/json\r\ncontent-length: 1000\r\nauthorization: Bearer {token}\r\n\r\n{}",
            " ".repeat(900)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let body = format!(
        "{}{}",
        call(1, "eth_blockNumber", &json!([])),
        " ".repeat(700)
    );
    let r = post(proxy, "/v3/infura", Some(&token), &[], &body).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.body["error"]["data"]["reason"], "unavailable");
    upstream_saw(&seen, &[]);
    // Past three quarters of the buffer, A's address holds its share (one
    // body of max_body_bytes): a small body from it is refused while the
    // same from another address is taken.
    let small = format!(
        "{}{}",
        call(1, "eth_blockNumber", &json!([])),
        " ".repeat(400)
    );
    let r = post(proxy, "/v3/infura", Some(&token), &[], &small).await;
    assert_eq!(r.status, 503, "same address: {:?}", r.body);
    let mut other = connect_from(proxy, [127, 0, 0, 2]).await;
    other
        .write_all(
            format!(
                "POST /v3/infura HTTP/1.1\r\nhost: gateway.test\r\ncontent-type: application/json\r\ncontent-length: {}\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n{small}",
                small.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut other, &mut answer)
        .await
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "other address: {answer}"
    );
    upstream_saw(&seen, &["eth_blockNumber"]);
    // A body declared over max_body_bytes is 413 before a byte is read,
    // even with the buffer contended.
    let big = " ".repeat(1001);
    let r = post(proxy, "/v3/infura", Some(&token), &[], &big).await;
    assert_eq!(r.status, 413, "{:?}", r.body);
    // A's body times out and its room goes back: B's body is taken.
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    let r = post(proxy, "/v3/infura", Some(&token), &[], &body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    upstream_saw(&seen, &["eth_blockNumber"]);
    drop(held);
    gw.drain().await;
}

/// `max_upstream_bytes` bounds what one request gathers from the node, not
/// each answer: calls whose ids collide go one by one, and once their answers
/// fill the budget the rest are not sent. And `0` and `-0` are one id (a node
/// reads both as 0), so they go one by one too, never crossed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_budget_holds_per_request_and_ids_never_cross() {
    // One answer of the mock node is 52 bytes: three fit in 160.
    let (k, _pool, seen, cfg, _dir) = rig("budget", "[limits]\nmax_upstream_bytes = 160\n").await;
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    let proxy = gw.proxy.unwrap();
    let claims = json!({"sub":"bob","aud":AUD,"exp":now() + 600}).to_string();
    let token = k.es.mint(Some("ec-1"), &claims).unwrap();
    let same_id: Vec<String> = (0..10)
        .map(|_| call(1, "eth_blockNumber", &json!([])))
        .collect();
    let r = post(
        proxy,
        "/v3/infura",
        Some(&token),
        &[],
        &format!("[{}]", same_id.join(",")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw_body);
    let a = r.body.as_array().unwrap();
    assert_eq!(a.len(), 10);
    let answered = a
        .iter()
        .filter(|x| x["result"] == "eth_blockNumber")
        .count();
    assert_eq!(answered, 3, "{}", r.raw_body);
    assert!(
        a[3..]
            .iter()
            .all(|x| x["id"] == 1 && x["error"]["code"] == -32603),
        "{}",
        r.raw_body
    );
    // The node saw only the calls whose answers were kept (and the one that
    // overflowed the budget, which it ran), not all ten.
    let calls = seen.lock().unwrap().len();
    assert!(calls <= 4, "the node got {calls} calls");
    seen.lock().unwrap().clear();

    // `0` and `-0`: sent one by one, each answered with its own call.
    let body = format!(
        "[{},{}]",
        call(0, "eth_blockNumber", &json!([])),
        json!({"jsonrpc":"2.0","id":-0.0,"method":"eth_chainId","params":[]}),
    );
    let r = post(proxy, "/v3/infura", Some(&token), &[], &body).await;
    assert_eq!(r.status, 200, "{}", r.raw_body);
    let a = r.body.as_array().unwrap();
    assert_eq!(
        (&a[0]["result"], &a[1]["result"]),
        (&json!("eth_blockNumber"), &json!("eth_chainId")),
        "{}",
        r.raw_body
    );
    assert!(
        seen.lock().unwrap().iter().all(|(_, v)| !v.is_array()),
        "sent as one array"
    );
    gw.drain().await;
}

/// A verified token whose `sub` (or a returned claim) holds a line break
/// cannot have its identity passed on in a header: before, the header was
/// dropped and the call went on with no identity; now every door refuses it
/// as `invalid_claim`, and the node never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_no_header_can_carry_is_refused() {
    let (k, _pool, seen, cfg, _dir) = rig("identity", "").await;
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    let (proxy, fa) = (gw.proxy.unwrap(), gw.forward_auth.unwrap());
    // (claims, refused by the proxy): the proxy passes the subject on, the
    // authorizer doors the subject and every returned claim.
    for (claims, by_proxy) in [
        (
            json!({"sub":"eve\r\nx-jotd-tenant: other","aud":AUD,"exp":now() + 600}),
            true,
        ),
        (
            json!({"sub":"eve","scope":"rw\nadmin","aud":AUD,"exp":now() + 600}),
            false,
        ),
        (
            json!({"sub":"eve","https://x.example/roles":"admin","aud":AUD,"exp":now() + 600}),
            false,
        ),
    ] {
        let token = k.es.mint(Some("ec-1"), &claims.to_string()).unwrap();
        let r = post(
            proxy,
            "/v3/infura",
            Some(&token),
            &[],
            &call(1, "eth_chainId", &json!([])),
        )
        .await;
        if by_proxy {
            assert_ne!(r.status, 200, "{}", r.raw_body);
            assert_eq!(
                r.body["error"]["data"]["reason"], "invalid_claim",
                "{}",
                r.raw_body
            );
        } else {
            assert_eq!(r.status, 200, "{claims}: {}", r.raw_body);
        }
        let r = post(
            fa,
            "/",
            Some(&token),
            &[("x-forwarded-uri", "/v3/infura")],
            "",
        )
        .await;
        assert_ne!(r.status, 200, "{claims}: {}", r.raw_body);
        assert_eq!(
            r.body["error"]["data"]["reason"], "invalid_claim",
            "{}",
            r.raw_body
        );
    }
    // Only the proxy calls whose subject it could pass on reached the node.
    assert_eq!(seen.lock().unwrap().len(), 2, "the node saw a refused call");
    gw.drain().await;
}

/// The proxy takes JSON bodies only (as geth does): what a browser sends
/// cross-site without a preflight (text/plain, a form, a body with no type)
/// is refused with 415 before any check or call, so a web page cannot drive
/// the node through a tenant that needs no token. JSON types pass in any
/// case and with parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_json_bodies_reach_the_node() {
    let (k, _pool, seen, cfg, _dir) = rig("media", "").await;
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    let proxy = gw.proxy.unwrap();
    let claims = json!({"sub":"alice","aud":AUD,"exp":now() + 600}).to_string();
    let token = k.es.mint(Some("ec-1"), &claims).unwrap();
    let body = call(1, "eth_chainId", &json!([]));
    let refused: [&[(&str, &str)]; 7] = [
        &[("content-type", "text/plain;charset=UTF-8")],
        &[("content-type", "application/x-www-form-urlencoded")],
        &[("content-type", "multipart/form-data; boundary=x")],
        &[("content-type", "")],
        &[("content-type", "application/jsonx")],
        &[("content-type", "text/json")],
        // Two headers: which one counts is not for a guess.
        &[
            ("content-type", "application/json"),
            ("content-type", "text/plain"),
        ],
    ];
    let accepted: [&[(&str, &str)]; 4] = [
        &[("content-type", "application/json")],
        &[("content-type", "Application/JSON; charset=utf-8")],
        &[("content-type", "application/json-rpc")],
        &[("content-type", "application/jsonrequest")],
    ];
    for (headers, status) in refused
        .iter()
        .map(|h| (h, 415))
        .chain(accepted.iter().map(|h| (h, 200)))
    {
        let r = post(proxy, "/v3/infura", Some(&token), headers, &body).await;
        assert_eq!(r.status, status, "{headers:?}: {}", r.raw_body);
        if status == 415 {
            assert_eq!(r.body["error"]["code"], -32600, "{}", r.raw_body);
            assert!(
                seen.lock().unwrap().is_empty(),
                "a refused body reached the node"
            );
        }
    }
    assert_eq!(seen.lock().unwrap().len(), 4);
    gw.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_besu_flow_on_a_fixed_tenant() {
    let (k, _pool, seen, cfg, _dir) = rig("besu", "").await;
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    let proxy = gw.proxy.unwrap();
    let token =
        k.rs.mint(
            Some("rsa-1"),
            &json!({"sub":"node-op","exp":now() + 600,"permissions":["eth:*","net:version"]})
                .to_string(),
        )
        .unwrap();
    let r = post(
        proxy,
        "/besu",
        Some(&token),
        &[],
        &call(1, "eth_blockNumber", &json!([])),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = post(
        proxy,
        "/besu",
        Some(&token),
        &[],
        &call(2, "admin_peers", &json!([])),
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["data"]["reason"].as_str()),
        (403, Some("permission_denied"))
    );
    let r = post(
        proxy,
        "/besu",
        None,
        &[],
        &call(3, "net_version", &json!([])),
    )
    .await;
    assert_eq!(r.status, 200, "no-auth method");
    let r = post(
        proxy,
        "/besu",
        None,
        &[],
        &call(4, "eth_blockNumber", &json!([])),
    )
    .await;
    assert_eq!(r.status, 401);
    upstream_saw(&seen, &["eth_blockNumber", "net_version"]);
    gw.drain().await;
}

/// `Host`, `Origin` and `User-Agent` are read once: two copies are a 400
/// at the proxy and at forward-auth (they were read as the first, which
/// routing or an allowlist judged while the next hop may read the other);
/// the proxy routes an absolute-form request by its target's authority,
/// not by `Host` (RFC 9112 §3.2.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_read_once_are_refused_when_doubled() {
    let (k, _pool, _seen, mut cfg, _dir) = rig("doubled", "").await;
    cfg.routes
        .push(jotd_gateway::route::Route::host("{tenant}.rpc.test").unwrap());
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    let (proxy, fa) = (gw.proxy.unwrap(), gw.forward_auth.unwrap());
    let token =
        k.rs.mint(
            Some("rsa-1"),
            &json!({"sub":"gina","aud":AUD,"exp":now() + 600}).to_string(),
        )
        .unwrap();
    let body = call(1, "eth_chainId", &json!([]));
    let fine = post(proxy, "/v3/infura", Some(&token), &[], &body).await;
    assert_eq!(fine.status, 200, "{}", fine.body);
    for (name, value) in [
        ("host", "other.test"),
        ("origin", "https://a.example"),
        ("user-agent", "b"),
    ] {
        // `post` sends `host` itself; the others twice here.
        let mut headers = vec![(name, value)];
        if name != "host" {
            headers.push((name, "second"));
        }
        let r = post(proxy, "/v3/infura", Some(&token), &headers, &body).await;
        assert_eq!(r.status, 400, "proxy, two {name}: {}", r.body);
        assert!(r.raw_body.contains(name), "{}", r.raw_body);
        if name != "host" {
            headers.push(("x-forwarded-uri", "/v3/infura"));
            let r = post(fa, "/auth", Some(&token), &headers, "").await;
            assert_eq!(r.status, 400, "forward-auth, two {name}: {}", r.body);
        }
    }
    // The forwarded method too: a client's copy ahead of the front proxy's
    // could hide a CONNECT.
    let r = post(
        fa,
        "/auth",
        Some(&token),
        &[
            ("x-forwarded-uri", "/v3/infura"),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-method", "CONNECT"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.raw_body);
    assert!(r.raw_body.contains("x-forwarded-method"), "{}", r.raw_body);
    // Routed by host: an absolute-form target's authority, not `Host`.
    let raw = |target: &str, host: &str| {
        format!(
            "POST {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    for (target, host, status) in [
        ("/", "infura.rpc.test", "200"),
        ("/", "nobody.other", "404"),
        ("http://infura.rpc.test/", "nobody.other", "200"),
        ("http://nobody.other/", "infura.rpc.test", "404"),
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
        s.write_all(raw(target, host).as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{target} with Host {host}: {answer}"
        );
    }
    // Forward-auth reads the host from `host_header` (X-Forwarded-Host by
    // default); with `host_header = ""`, from `Host` alone, so a client's
    // copy passed on by a gateway that does not set it cannot pick the tenant.
    let forwarded = [
        ("x-forwarded-uri", "/"),
        ("x-forwarded-host", "infura.rpc.test"),
    ];
    let r = post(fa, "/auth", Some(&token), &forwarded, "").await;
    assert_eq!(r.status, 200, "{}", r.raw_body);
    gw.drain().await;
    cfg.forward_auth.as_mut().unwrap().host_header = None;
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    let r = post(
        gw.forward_auth.unwrap(),
        "/auth",
        Some(&token),
        &forwarded,
        "",
    )
    .await;
    assert_eq!(
        r.status, 403,
        "Host alone (127.0.0.1) names no tenant here: {}",
        r.raw_body
    );
    assert!(r.raw_body.contains("no_route"), "{}", r.raw_body);
    gw.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_answers_from_the_forwarded_headers() {
    let (k, _pool, _seen, cfg, _dir) = rig("fa", "").await;
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    let fa = gw.forward_auth.unwrap();
    let exp = now() + 600;
    let open =
        k.es.mint(
            Some("ec-1"),
            &json!({"sub":"carol","aud":AUD,"exp":exp,"scope":"read"}).to_string(),
        )
        .unwrap();
    let limited =
        k.es.mint(
            Some("ec-1"),
            &json!({"sub":"dave","aud":AUD,"exp":exp,"methods":["eth_getBalance"],"addresses":[A]})
                .to_string(),
        )
        .unwrap();
    // The original URI from X-Forwarded-Uri (Caddy, Traefik, APISIX; the NGINX
    // snippet sets it). No body.
    for h in ["x-forwarded-uri"] {
        let r = post(fa, "/auth", Some(&open), &[(h, "/v3/infura?x=1")], "").await;
        assert_eq!(r.status, 200, "{h}");
        assert_eq!(r.headers.get("x-jotd-subject").unwrap(), "carol");
        assert_eq!(r.headers.get("x-jotd-tenant").unwrap(), "infura");
        assert_eq!(r.headers.get("x-jotd-claim-scope").unwrap(), "read");
    }
    // A public method first (`ok_no_auth`, no one named) does not hide the
    // subject the batch's other calls were allowed as.
    let batch = format!(
        "[{},{}]",
        call(1, "web3_clientVersion", &json!([])),
        call(2, "eth_getBalance", &json!([A, "latest"]))
    );
    let r = post(
        fa,
        "/auth",
        Some(&limited),
        &[("x-forwarded-uri", "/v3/infura")],
        &batch,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw_body);
    assert_eq!(r.headers.get("x-jotd-subject").unwrap(), "dave");
    assert_eq!(r.headers.get("x-jotd-reason").unwrap(), "ok");
    // Claim headers a client sent for claims the token lacks go back empty
    // and named for Envoy to remove; one the token has is jotd's value.
    let r = post(
        fa,
        "/auth",
        Some(&open),
        &[
            ("x-forwarded-uri", "/v3/infura"),
            ("x-jotd-claim-role", "admin"),
            ("x-jotd-claim-scope", "forged"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers.get("x-jotd-claim-role").unwrap(), "");
    assert_eq!(r.headers.get("x-jotd-claim-scope").unwrap(), "read");
    assert_eq!(
        r.headers.get("x-envoy-auth-headers-to-remove").unwrap(),
        "x-jotd-claim-role"
    );
    // Envoy's HTTP ext_authz: the original path after the `/auth` prefix.
    let r = post(fa, "/auth/v3/infura", Some(&open), &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers.get("x-jotd-tenant").unwrap(), "infura");
    // Only the configured header names the URI: another one a client adds
    // through a gateway that sets only its own is ignored.
    let r = post(
        fa,
        "/auth",
        Some(&open),
        &[
            ("x-original-uri", "/v3/infura"),
            ("x-forwarded-uri", "/v3/nobody"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body["error"]["data"]["reason"], "unknown_tenant");
    // The configured header twice (a client's copy beside the gateway's):
    // 400, not whichever came first.
    let r = post(
        fa,
        "/auth",
        Some(&open),
        &[
            ("x-forwarded-uri", "/v3/nobody"),
            ("x-forwarded-uri", "/v3/infura"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("more than once"),
        "{}",
        r.body
    );
    // A token without `sub`: the identity headers are still all there (empty
    // when unknown), so a gateway copying them overwrites a client's copies.
    let no_sub =
        k.es.mint(Some("ec-1"), &json!({"aud":AUD,"exp":exp}).to_string())
            .unwrap();
    let r = post(
        fa,
        "/auth",
        Some(&no_sub),
        &[("x-forwarded-uri", "/v3/infura")],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers.get("x-jotd-subject").unwrap(), "");
    assert_eq!(r.headers.get("x-jotd-kid").unwrap(), "ec-1");
    // A header that reads as jotd's where `_` is taken for `-`: refused.
    for lookalike in ["x_jotd_subject", "X_Jotd_Claim_Role"] {
        let r = post(
            fa,
            "/auth",
            Some(&no_sub),
            &[("x-forwarded-uri", "/v3/infura"), (lookalike, "alice")],
            "",
        )
        .await;
        assert_eq!(r.status, 400, "{lookalike}");
        assert_eq!(
            r.body["error"]["data"]["reason"], "identity_header_lookalike",
            "{}",
            r.body
        );
    }
    // A `_` after the prefix is a claim name's (jotd's own header): not refused.
    let r = post(
        fa,
        "/auth",
        Some(&no_sub),
        &[
            ("x-forwarded-uri", "/v3/infura"),
            ("x-jotd-claim-client_id", "forged"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw_body);
    // Without the body, a token that restricts addresses only is refused too:
    // nothing bounds what the request touches.
    let addr_only =
        k.es.mint(
            Some("ec-1"),
            &json!({"sub":"f","aud":AUD,"exp":exp,"addresses":[A]}).to_string(),
        )
        .unwrap();
    let r = post(
        fa,
        "/auth",
        Some(&addr_only),
        &[("x-forwarded-uri", "/v3/infura")],
        "",
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["data"]["reason"].as_str()),
        (403, Some("address_not_allowed"))
    );
    // Without the body, a token whose policy restricts methods is refused.
    let r = post(
        fa,
        "/auth",
        Some(&limited),
        &[("x-forwarded-uri", "/v3/infura")],
        "",
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["data"]["reason"].as_str()),
        (403, Some("method_not_allowed"))
    );
    // With the body (APISIX, Envoy with_request_body), every call counts.
    let ok = call(1, "eth_getBalance", &json!([A]));
    let r = post(
        fa,
        "/auth",
        Some(&limited),
        &[("x-forwarded-uri", "/v3/infura")],
        &ok,
    )
    .await;
    assert_eq!(r.status, 200);
    let mixed = format!("[{ok},{}]", call(2, "eth_getBalance", &json!([B])));
    let r = post(
        fa,
        "/auth",
        Some(&limited),
        &[("x-forwarded-uri", "/v3/infura")],
        &mixed,
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["data"]["reason"].as_str()),
        (403, Some("address_not_allowed"))
    );
    // A body the node would decode first is not checked as sent: 415. The
    // identity encoding is no encoding.
    for (encoding, want) in [("gzip", 415), ("br", 415), ("identity", 200)] {
        let r = post(
            fa,
            "/auth",
            Some(&limited),
            &[
                ("x-forwarded-uri", "/v3/infura"),
                ("content-encoding", encoding),
            ],
            &ok,
        )
        .await;
        assert_eq!(r.status, want, "{encoding}: {:?}", r.body);
    }
    // Token problems are 401; no route is 403.
    let r = post(fa, "/auth", None, &[("x-forwarded-uri", "/v3/infura")], "").await;
    assert_eq!(r.status, 401);
    assert!(r.headers.get("www-authenticate").is_some());
    assert_eq!(
        post(
            fa,
            "/auth",
            Some(&open),
            &[("x-forwarded-uri", "/nowhere")],
            ""
        )
        .await
        .status,
        403
    );
    // A path the front proxy would decode or normalise first is refused
    // before any route is tried (it could miss `/v3/{tenant}` here and
    // fall through to a later route while the proxy routes it to `infura`).
    for uri in [
        "/v3/%69nfura",
        "/v3/./infura",
        "/v3//infura",
        "/v3/x/../infura",
        // Caddy sends the raw URI and routes it cleaned (`/v3/infura`).
        "/v3/open#/../../v3/infura",
        "/v3/open#?q",
    ] {
        let r = post(fa, "/auth", Some(&open), &[("x-forwarded-uri", uri)], "").await;
        assert_eq!(
            (r.status, r.body["error"]["data"]["reason"].as_str()),
            (403, Some("non_canonical_path")),
            "{uri}"
        );
    }
    gw.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_is_gone_fails_closed_or_open_as_configured() {
    let k = keys();
    let pool = start_pool(&k);
    let (up, seen) = start_upstream().await;
    // Nothing listens there.
    let dead: SocketAddr = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let token =
        k.es.mint(
            Some("ec-1"),
            &json!({"aud":AUD,"exp":now() + 600}).to_string(),
        )
        .unwrap();
    let (cfg, _closed_dir) = config("closed", &pool, dead, up, "");
    let closed = jotd_gateway::start(&cfg, None).await.unwrap();
    let r = post(
        closed.proxy.unwrap(),
        "/v3/infura",
        Some(&token),
        &[],
        &call(1, "eth_blockNumber", &json!([])),
    )
    .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.body["error"]["data"]["reason"], "unavailable");
    let r = post(
        closed.forward_auth.unwrap(),
        "/auth",
        Some(&token),
        &[("x-forwarded-uri", "/v3/infura")],
        "",
    )
    .await;
    assert_eq!(r.status, 503);
    upstream_saw(&seen, &[]);
    closed.drain().await;
    let (cfg, _open_dir) = config("open", &pool, dead, up, "failure_mode = \"open\"");
    let open = jotd_gateway::start(&cfg, None).await.unwrap();
    let r = post(
        open.proxy.unwrap(),
        "/v3/infura",
        Some(&token),
        &[],
        &call(1, "eth_blockNumber", &json!([])),
    )
    .await;
    assert_eq!(r.status, 200);
    upstream_saw(&seen, &["eth_blockNumber"]);
    open.drain().await;
}

#[test]
fn config_errors_name_file_line_and_key() {
    let scratch = scratch("cfg");
    let dir = scratch.path();
    let file = dir.join("gw.toml");
    let cases = [
        (
            "[pool]\nendpoints = []\nca_file = \"ca.pem\"\n[proxy]\nlisten = \"127.0.0.1:1\"\nupstreams = [\"http://127.0.0.1:2\"]\n[[route]]\ntenant = \"a\"\n",
            "endpoints",
        ),
        (
            "[pool]\nendpoints = [\"x\"]\nca_file = \"ca.pem\"\n",
            "endpoints",
        ),
        (
            "[pool]\nendpoints = [\"127.0.0.1:1\"]\nca_file = \"ca.pem\"\n[proxy]\nlisten = \"nope\"\nupstreams = [\"http://127.0.0.1:2\"]\n[[route]]\ntenant = \"a\"\n",
            "listen",
        ),
        (
            "[pool]\nendpoints = [\"127.0.0.1:1\"]\nca_file = \"ca.pem\"\n[proxy]\nlisten = \"127.0.0.1:1\"\nupstreams = [\"http://127.0.0.1:2\"]\npass_origin = \"yes\"\n[[route]]\ntenant = \"a\"\n",
            "pass_origin",
        ),
        (
            "[pool]\nendpoints = [\"127.0.0.1:1\"]\nca_file = \"ca.pem\"\n[proxy]\nlisten = \"127.0.0.1:1\"\nupstreams = [\"https://node:443\"]\n[[route]]\ntenant = \"a\"\n",
            "upstreams",
        ),
        (
            "[pool]\nendpoints = [\"127.0.0.1:1\"]\nca_file = \"ca.pem\"\n[forward_auth]\nlisten = \"127.0.0.1:1\"\n[[route]]\npath = \"/v3/{tenant}\"\ntenant = \"a\"\n",
            "route",
        ),
        (
            "[pool]\nendpoints = [\"127.0.0.1:1\"]\nca_file = \"ca.pem\"\nbogus = 1\n",
            "bogus",
        ),
        (
            "[pool]\nendpoints = [\"127.0.0.1:1\"]\nca_file = \"ca.pem\"\n[batch]\nmax_items = 0\n[forward_auth]\nlisten = \"127.0.0.1:1\"\n[[route]]\ntenant = \"a\"\n",
            "max_items",
        ),
        (
            "[pool]\nendpoints = [\"127.0.0.1:1\"]\nca_file = \"ca.pem\"\n[forward_auth]\nlisten = \"127.0.0.1:1\"\n[[route]]\ntenant = \"a\"\n[address_params]\neth_x = [\"a.b\"]\n",
            "eth_x",
        ),
    ];
    // Every limit: 0 and a value past its bound (a huge max_connections panicked
    // at start) are refused on their own line, and so is a zero upstream timeout
    // (it was quietly read as 1 ms).
    let base = "[pool]\nendpoints = [\"127.0.0.1:1\"]\nca_file = \"ca.pem\"\n[proxy]\nlisten = \"127.0.0.1:1\"\nupstreams = [\"http://127.0.0.1:2\"]\n";
    let mut more = Vec::new();
    for key in [
        "max_body_bytes",
        "body_timeout_ms",
        "write_timeout_ms",
        "max_connections",
        "ipv6_share_prefix",
        "max_upstream_bytes",
        "max_answer_buffer_bytes",
        "max_body_buffer_bytes",
        "max_batch_calls",
        "max_token_bytes",
        "websocket_recheck_ms",
        "drain_timeout_ms",
    ] {
        for bad in ["0", "18446744073709551615"] {
            more.push((
                format!("{base}[[route]]\ntenant = \"a\"\n[limits]\n{key} = {bad}\n"),
                format!("limits.{key}"),
            ));
        }
    }
    more.push((
        base.replace(
            "endpoints = [\"127.0.0.1:1\"]",
            "endpoints = [\"127.0.0.1:1\", \"127.0.0.1:1\"]",
        ) + "[[route]]\ntenant = \"a\"\n",
        "endpoints".to_owned(),
    ));
    // A forwarded URI or host in a header the door reads for something
    // else, or both in one header.
    for (set, key) in [
        (
            "uri_header = \"x-forwarded-host\"\nhost_header = \"x-forwarded-host\"",
            "host_header",
        ),
        ("uri_header = \"Authorization\"", "uri_header"),
        ("uri_header = \"host\"", "uri_header"),
        ("uri_header = \"x-jotd-subject\"", "uri_header"),
        ("host_header = \"origin\"", "host_header"),
        ("host_header = \"x-forwarded-method\"", "host_header"),
    ] {
        more.push((
            format!(
                "{base}[forward_auth]\nlisten = \"127.0.0.1:3\"\n{set}\n[[route]]\ntenant = \"a\"\n"
            ),
            key.to_owned(),
        ));
    }
    // The drain: a delay past 10 minutes; a drain shorter than a node call
    // the proxy may wait for (the drain cut it: the node ran the call, the
    // client got no answer), at the default drain and at a set one.
    more.push((
        format!("{base}[[route]]\ntenant = \"a\"\n[limits]\ndrain_delay_ms = 600001\n"),
        "limits.drain_delay_ms".to_owned(),
    ));
    // An IPv6 endpoint without brackets (its port forgotten) was read as
    // host `2001:db8:` port 10.
    more.push((
        base.replace("127.0.0.1:1\"]", "2001:db8::10\"]") + "[[route]]\ntenant = \"a\"\n",
        "endpoints".to_owned(),
    ));
    // A drain shorter than a request may still take once the listeners
    // close (body, check, node) would cut it: refused when set; left out, it
    // is that long (below).
    more.push((
        base.replace("upstreams =", "upstream_timeout_ms = 60000\nupstreams =")
            + "[[route]]\ntenant = \"a\"\n[limits]\ndrain_timeout_ms = 60000\n",
        "limits.drain_timeout_ms".to_owned(),
    ));
    more.push((
        format!("{base}[[route]]\ntenant = \"a\"\n[limits]\ndrain_timeout_ms = 20000\n"),
        "limits.drain_timeout_ms".to_owned(),
    ));
    // An IPv6 prefix is at most 128 bits.
    more.push((
        format!("{base}[[route]]\ntenant = \"a\"\n[limits]\nipv6_share_prefix = 129\n"),
        "limits.ipv6_share_prefix".to_owned(),
    ));
    // Two listeners on one port, the same address or one on all addresses.
    for second in ["127.0.0.1:1", "0.0.0.0:1"] {
        more.push((
            format!("{base}[forward_auth]\nlisten = \"{second}\"\n[[route]]\ntenant = \"a\"\n"),
            "listen".to_owned(),
        ));
    }
    more.push((
        format!("{base}[admin]\nlisten = \"127.0.0.1:1\"\n[[route]]\ntenant = \"a\"\n"),
        "listen".to_owned(),
    ));
    for bad in ["0", "18446744073709551615"] {
        more.push((
            base.replace("ca_file =", &format!("check_timeout_ms = {bad}\nca_file ="))
                + "[[route]]\ntenant = \"a\"\n",
            "check_timeout_ms".to_owned(),
        ));
    }
    // A batching delay past a second or the check deadline (u64::MAX panicked
    // on the first check: clock arithmetic).
    for bad in ["1000001", "18446744073709551615"] {
        more.push((
            format!("{base}[[route]]\ntenant = \"a\"\n[batch]\nmax_delay_us = {bad}\n"),
            "max_delay_us".to_owned(),
        ));
    }
    more.push((
        base.replace("ca_file =", "check_timeout_ms = 5\nca_file =")
            + "[[route]]\ntenant = \"a\"\n[batch]\nmax_delay_us = 5000\n",
        "max_delay_us".to_owned(),
    ));
    // A server name no certificate can carry failed every handshake at run time.
    for bad in ["\"\"", "\"jotd pool\"", "\"-bad-.example\""] {
        more.push((
            base.replace("ca_file =", &format!("server_name = {bad}\nca_file ="))
                + "[[route]]\ntenant = \"a\"\n",
            "server_name".to_owned(),
        ));
    }
    // An answer buffer smaller than one answer of the largest size refused
    // every such answer however idle the gateway.
    more.push((
        format!(
            "{base}[[route]]\ntenant = \"a\"\n[limits]\nmax_upstream_bytes = 2048\nmax_answer_buffer_bytes = 1024\n"
        ),
        "limits.max_answer_buffer_bytes".to_owned(),
    ));
    // The same for bodies.
    more.push((
        format!(
            "{base}[[route]]\ntenant = \"a\"\n[limits]\nmax_body_bytes = 2048\nmax_body_buffer_bytes = 1024\n"
        ),
        "limits.max_body_buffer_bytes".to_owned(),
    ));
    more.push((
        base.replace("upstreams =", "upstream_timeout_ms = 0\nupstreams =")
            + "[[route]]\ntenant = \"a\"\n",
        "upstream_timeout_ms".to_owned(),
    ));
    // Upstream URLs the HTTP library would have read otherwise than written:
    // a port past 65535 (dialled port 80), port 0, credentials (never sent),
    // no host, another scheme.
    for bad in [
        "http://127.0.0.1:99999",
        "http://127.0.0.1:0",
        "http://[::1]:70000/rpc",
        "http://user:secret@127.0.0.1:8545",
        "http://:8545",
        "ws://127.0.0.1:8545",
        "127.0.0.1:8545",
    ] {
        more.push((
            base.replace("http://127.0.0.1:2", bad) + "[[route]]\ntenant = \"a\"\n",
            "upstreams".to_owned(),
        ));
    }
    // Routes never used (an earlier one matches all their requests first,
    // so they went to its tenant) or no request can match.
    for routes in [
        "[[route]]\npath = \"/v3/{tenant}\"\n[[route]]\npath = \"/v3/internal\"\ntenant = \"ops\"\n",
        "[[route]]\ntenant = \"a\"\n[[route]]\npath = \"/x\"\ntenant = \"b\"\n",
        "[[route]]\nhost = \"{tenant}.rpc.example.com\"\n[[route]]\nhost = \"{tenant}.RPC.example.com\"\n",
        "[[route]]\nhost = \"{tenant}.rpc.example.com:8600\"\n",
        "[[route]]\npath = \"/rpc?key=1\"\ntenant = \"a\"\n",
    ] {
        more.push((format!("{base}{routes}"), "route".to_owned()));
    }
    // A pool endpoint on port 0; an upstream listed twice (the retry
    // redialled the same dead node); the proxy as its own upstream (a
    // request looped until every connection was taken).
    for (from, to, key) in [
        ("[\"127.0.0.1:1\"]", "[\"127.0.0.1:0\"]", "endpoints"),
        ("[\"127.0.0.1:1\"]", "[\"jotd:0\"]", "endpoints"),
        (
            "[\"http://127.0.0.1:2\"]",
            "[\"http://127.0.0.1:2\", \"http://127.0.0.1:2/\"]",
            "upstreams",
        ),
        (
            "[\"http://127.0.0.1:2\"]",
            "[\"http://127.0.0.1:1/\"]",
            "upstreams",
        ),
        (
            "[\"http://127.0.0.1:2\"]",
            "[\"http://localhost:1\"]",
            "upstreams",
        ),
    ] {
        more.push((
            base.replace(from, to) + "[[route]]\ntenant = \"a\"\n",
            key.to_owned(),
        ));
    }
    for good in [
        "http://127.0.0.1:8545",
        "http://node",
        "http://[::1]:8545/rpc?x=1",
        "http://node.internal:8545/",
    ] {
        std::fs::write(
            &file,
            base.replace("http://127.0.0.1:2", good) + "[[route]]\ntenant = \"a\"\n",
        )
        .unwrap();
        Config::load(&file).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    let cases = cases
        .iter()
        .map(|(t, k)| ((*t).to_owned(), (*k).to_owned()))
        .chain(more);
    for (text, key) in cases {
        std::fs::write(&file, &text).unwrap();
        let e = Config::load(&file).unwrap_err();
        assert_eq!(e.key, key, "{e}");
        assert!(e.line.is_some(), "{e}");
        assert!(
            e.to_string().starts_with(&file.display().to_string()),
            "{e}"
        );
    }
}

/// `config check` and `serve` read the pool's TLS files through one function:
/// each unreadable or wrong file is named with its key and path.
#[test]
fn the_pools_tls_files_are_read_and_named_before_serving() {
    let scratch = scratch("tls");
    let dir = scratch.path();
    let pki = jotd_transport::DevPki::generate().unwrap();
    std::fs::write(dir.join("ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(dir.join("junk.pem"), "not a certificate\n").unwrap();
    let file = dir.join("gw.toml");
    let with = |pool: &str| {
        std::fs::write(
            &file,
            format!("[pool]\nendpoints = [\"127.0.0.1:1\"]\n{pool}[forward_auth]\nlisten = \"127.0.0.1:1\"\n[[route]]\ntenant = \"a\"\n"),
        )
        .unwrap();
        let cfg = Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
        jotd_gateway::pool_tls(&cfg)
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
    };
    with("ca_file = \"ca.pem\"\n").unwrap();
    for (pool, key, path) in [
        ("ca_file = \"missing.pem\"\n", "ca_file", "missing.pem"),
        ("ca_file = \"junk.pem\"\n", "ca_file", "junk.pem"),
        (
            "ca_file = \"ca.pem\"\nclient_cert_file = \"junk.pem\"\nclient_key_file = \"ca.pem\"\n",
            "client_cert_file",
            "junk.pem",
        ),
        (
            "ca_file = \"ca.pem\"\nclient_cert_file = \"ca.pem\"\nclient_key_file = \"junk.pem\"\n",
            "client_key_file",
            "junk.pem",
        ),
    ] {
        let e = with(pool).unwrap_err();
        assert!(e.contains(key) && e.contains(path), "{pool:?}: {e}");
    }
}

mod envoy {
    pub(crate) use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Request,
    };
    pub(crate) use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    pub(crate) use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    pub(crate) use envoy_types::pb::envoy::service::auth::v3::{
        AttributeContext, CheckRequest, CheckResponse,
    };
}

fn envoy_check(
    path: &str,
    token: Option<&str>,
    body: &str,
    tenant: Option<&str>,
) -> envoy::CheckRequest {
    let mut headers = std::collections::HashMap::new();
    if let Some(t) = token {
        headers.insert("authorization".to_owned(), format!("Bearer {t}"));
    }
    headers.insert("user-agent".to_owned(), "envoy-test".to_owned());
    envoy::CheckRequest {
        attributes: Some(envoy::AttributeContext {
            request: Some(envoy::Request {
                http: Some(envoy::HttpRequest {
                    method: "POST".into(),
                    path: path.into(),
                    host: "rpc.test".into(),
                    headers,
                    body: body.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: tenant
                .map(|t| [("tenant".to_owned(), t.to_owned())].into_iter().collect())
                .unwrap_or_default(),
            ..Default::default()
        }),
    }
}

/// Starts the gateway of `cfg` with the gRPC ext_authz door too, and an Envoy-side client.
async fn with_ext_authz(
    mut cfg: Config,
    remove_authorization: bool,
) -> (
    jotd_gateway::Gateway,
    envoy::AuthorizationClient<tonic::transport::Channel>,
) {
    cfg.ext_authz = Some(jotd_gateway::config::ExtAuthz {
        listen: "127.0.0.1:0".parse().unwrap(),
        remove_authorization,
    });
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    let addr = gw.ext_authz.unwrap();
    let client = envoy::AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    (gw, client)
}

/// Envoy with `encode_raw_headers: true` sends `header_map` and no
/// `headers`: the door reads it (before, every such request looked
/// tokenless), keeps repeats apart (two `authorization` headers are refused)
/// and refuses a checked header it cannot read rather than dropping it. A
/// CheckRequest past tonic's default 4 MiB but within `max_body_bytes` is
/// answered by the door, not refused as a gRPC error (which Envoy's
/// `failure_mode_allow` would let through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_raw_headers_and_large_checks_are_read() {
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
    let (k, _pool, _seen, cfg, _dir) =
        rig("envoy-raw", "[limits]\nmax_body_bytes = 8388608\n").await;
    let (gw, mut client) = with_ext_authz(cfg, true).await;
    let token =
        k.rs.mint(
            Some("rsa-1"),
            &json!({"sub":"erin","aud":AUD,"exp":now() + 600}).to_string(),
        )
        .unwrap();
    let raw = |pairs: &[(&str, &[u8])]| {
        let mut check = envoy_check("/v3/infura", None, "", None);
        let http = check
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
            .unwrap();
        http.headers.clear();
        http.header_map = Some(HeaderMap {
            headers: pairs
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: (*k).to_owned(),
                    raw_value: v.to_vec(),
                    ..Default::default()
                })
                .collect(),
        });
        check
    };
    let bearer = format!("Bearer {token}");
    let code = |r: &envoy::CheckResponse| r.status.as_ref().map_or(0, |s| s.code);
    let r = client
        .check(raw(&[
            ("authorization", bearer.as_bytes()),
            ("user-agent", b"envoy"),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r), 0, "allowed: {r:?}");
    let r = client
        .check(raw(&[
            ("authorization", bearer.as_bytes()),
            ("Authorization", bearer.as_bytes()),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(code(&r), 0, "two authorization headers: {r:?}");
    let r = client
        .check(raw(&[("authorization", b"Bearer a\nb")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r), 3, "an unreadable token is refused: {r:?}");
    // 5 MiB of body: within max_body_bytes, past tonic's default cap.
    let big = format!("[{}]", vec!["1"; 5 << 19].join(","));
    let r = client
        .check(envoy_check("/v3/infura", Some(&token), &big, None))
        .await
        .expect("the door answers, not tonic")
        .into_inner();
    assert_ne!(code(&r), 0, "{:?}", r.status);
    // Past max_body_bytes (Envoy's max_request_bytes may be set higher): the
    // door refuses it with 413, not tonic with a gRPC error.
    let huge = " ".repeat((8 << 20) + (2 << 20));
    let r = client
        .check(envoy_check("/v3/infura", Some(&token), &huge, None))
        .await
        .expect("the door answers, not tonic")
        .into_inner();
    let status = match r.http_response {
        Some(envoy::HttpResponse::DeniedResponse(d)) => d.status.map_or(0, |s| s.code),
        _ => -1,
    };
    assert_eq!(status, 413);
    gw.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_authz_over_grpc() {
    let (k, _pool, _seen, cfg, _dir) = rig("envoy", "").await;
    let (gw, mut client) = with_ext_authz(cfg, true).await;
    let exp = now() + 600;
    let token = k.rs.mint(Some("rsa-1"), &json!({"sub":"erin","aud":AUD,"exp":exp,"methods":["eth_getBalance"],"addresses":[A],"scope":"rw"}).to_string()).unwrap();

    // Allowed, with the body Envoy sends (with_request_body).
    let body = call(1, "eth_getBalance", &json!([A, "latest"]));
    let r = client
        .check(envoy_check("/v3/infura", Some(&token), &body, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.as_ref().unwrap().code, 0);
    let Some(envoy::HttpResponse::OkResponse(ok)) = r.http_response else {
        panic!("{r:?}")
    };
    let h = |name: &str| {
        ok.headers.iter().find_map(|o| {
            o.header
                .as_ref()
                .filter(|h| h.key == name)
                .map(|h| h.value.clone())
        })
    };
    assert_eq!(h("x-jotd-subject").as_deref(), Some("erin"));
    assert_eq!(h("x-jotd-claim-scope").as_deref(), Some("rw"));
    assert_eq!(
        ok.headers_to_remove,
        ["authorization"],
        "every identity header is set here"
    );
    assert!(
        ok.headers.iter().all(|o| o.append_action
            == envoy_types::ext_authz::v3::pb::HeaderAppendAction::OverwriteIfExistsOrAdd as i32),
        "identity headers overwrite the client's"
    );
    // A token without `sub`: a client-sent x-jotd-subject is removed.
    let anon =
        k.rs.mint(Some("rsa-1"), &json!({"aud":AUD,"exp":exp}).to_string())
            .unwrap();
    let r = client
        .check(envoy_check("/v3/infura", Some(&anon), "", None))
        .await
        .unwrap()
        .into_inner();
    let Some(envoy::HttpResponse::OkResponse(ok)) = r.http_response else {
        panic!("{r:?}")
    };
    assert!(
        ok.headers_to_remove.iter().any(|h| h == "x-jotd-subject"),
        "{ok:?}"
    );
    // Claim headers the client sent for claims the token lacks are removed;
    // one the token has is overwritten.
    let mut forged = envoy_check(
        "/v3/infura",
        Some(&token),
        &call(1, "eth_getBalance", &json!([A, "latest"])),
        None,
    );
    let http = forged
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .unwrap();
    http.headers
        .insert("x-jotd-claim-role".into(), "admin".into());
    http.headers
        .insert("x-jotd-claim-scope".into(), "forged".into());
    let r = client.check(forged).await.unwrap().into_inner();
    let Some(envoy::HttpResponse::OkResponse(ok)) = r.http_response else {
        panic!("{r:?}")
    };
    assert!(
        ok.headers_to_remove
            .iter()
            .any(|h| h == "x-jotd-claim-role"),
        "{ok:?}"
    );
    assert!(
        !ok.headers_to_remove
            .iter()
            .any(|h| h == "x-jotd-claim-scope"),
        "{ok:?}"
    );
    assert!(
        ok.headers.iter().any(|o| o
            .header
            .as_ref()
            .is_some_and(|h| h.key == "x-jotd-claim-scope" && h.value == "rw")),
        "{ok:?}"
    );

    // A name with `_` for `-` reads as jotd's where backends fold them
    // (CGI, WSGI, Rack, PHP-FPM): refused, whatever its case.
    for lookalike in ["x_jotd_subject", "X_JOTD_CLAIM_ROLE", "x-jotd_kid"] {
        let mut forged = envoy_check(
            "/v3/infura",
            Some(&token),
            &call(1, "eth_getBalance", &json!([A, "latest"])),
            None,
        );
        forged
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
            .unwrap()
            .headers
            .insert(lookalike.into(), "alice".into());
        let r = client.check(forged).await.unwrap().into_inner();
        let Some(envoy::HttpResponse::DeniedResponse(denied)) = r.http_response else {
            panic!("{lookalike}: {r:?}")
        };
        assert_eq!(denied.status.unwrap().code, 400, "{lookalike}");
        assert!(
            denied.body.contains("identity_header_lookalike"),
            "{}",
            denied.body
        );
    }

    // Refused by policy: 403 with the JSON-RPC body; by the token: 401 + WWW-Authenticate.
    let other = call(2, "eth_getBalance", &json!([B, "latest"]));
    let r = client
        .check(envoy_check("/v3/infura", Some(&token), &other, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.as_ref().unwrap().code, 7);
    let Some(envoy::HttpResponse::DeniedResponse(d)) = r.http_response else {
        panic!("{r:?}")
    };
    assert_eq!(d.status.unwrap().code, 403);
    let b: Value = serde_json::from_str(&d.body).unwrap();
    assert_eq!(
        (b["id"].as_i64(), b["error"]["data"]["reason"].as_str()),
        (Some(2), Some("address_not_allowed"))
    );
    let r = client
        .check(envoy_check("/v3/infura", None, &body, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.as_ref().unwrap().code, 16);
    let Some(envoy::HttpResponse::DeniedResponse(d)) = r.http_response else {
        panic!("{r:?}")
    };
    assert_eq!(d.status.unwrap().code, 401);
    assert!(d.headers.iter().any(|o| {
        o.header
            .as_ref()
            .is_some_and(|h| h.key == "www-authenticate")
    }));

    // The tenant from context_extensions (per Envoy route), whatever the path.
    let besu =
        k.es.mint(
            Some("ec-1"),
            &json!({"exp":exp,"permissions":["eth:*"]}).to_string(),
        )
        .unwrap();
    let r = client
        .check(envoy_check(
            "/anything",
            Some(&besu),
            &call(3, "eth_blockNumber", &json!([])),
            Some("besu"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.as_ref().unwrap().code, 0, "{r:?}");

    // The gRPC health service.
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", gw.ext_authz.unwrap()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let s = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "envoy.service.auth.v3.Authorization".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        s.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    gw.drain().await;
}

/// The gRPC health service says NOT_SERVING as soon as the drain begins,
/// for the door's service and the server's (`""`, Envoy's default), while
/// the listener still serves through `drain_delay_ms`: set at the stop, the
/// listener was already gone, and Envoy's health checks never saw the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_turns_not_serving_when_the_drain_begins() {
    let (_k, _pool, _seen, cfg, _dir) =
        rig("envoy-drain", "[limits]\ndrain_delay_ms = 3000\n").await;
    let (gw, _client) = with_ext_authz(cfg, true).await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", gw.ext_authz.unwrap()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = |service: &str| {
        let mut h = health.clone();
        let service = service.to_owned();
        async move {
            h.check(tonic_health::pb::HealthCheckRequest { service })
                .await
                .unwrap()
                .into_inner()
                .status
        }
    };
    use tonic_health::pb::health_check_response::ServingStatus;
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        assert_eq!(
            status(service).await,
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    let drain = tokio::spawn(gw.drain());
    tokio::time::sleep(Duration::from_millis(500)).await;
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        assert_eq!(
            status(service).await,
            ServingStatus::NotServing as i32,
            "{service:?}: within drain_delay_ms, the listener still up"
        );
    }
    drain.await.unwrap();
}

/// A drain left out of the config is long enough for a request accepted
/// before the listeners close (body, check, node): 30 s at least.
#[test]
fn the_default_drain_outlasts_a_request() {
    let scratch = scratch("drain-default");
    let file = scratch.path().join("gw.toml");
    for (upstream, want_ms) in [("", 41_000), ("upstream_timeout_ms = 60000\n", 71_000)] {
        std::fs::write(
            &file,
            format!(
                "[pool]\nendpoints = [\"127.0.0.1:1\"]\nca_file = \"ca.pem\"\ncheck_timeout_ms = 1000\n\
                 [proxy]\nlisten = \"127.0.0.1:1\"\nupstreams = [\"http://127.0.0.1:2\"]\n{upstream}\
                 [[route]]\ntenant = \"a\"\n"
            ),
        )
        .unwrap();
        let cfg = Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            cfg.limits.drain_timeout,
            Duration::from_millis(want_ms),
            "{upstream}"
        );
    }
}

/// `config check` into a reader that stops early (`| head -1`) exits 0; it
/// panicked on the closed pipe (exit 101).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_into_a_closed_pipe_is_not_an_error() {
    let (_k, _pool, _seen, _cfg, dir) = rig("closed-pipe", "").await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jotd-gateway"))
        .args(["config", "check", "--config"])
        .arg(dir.path().join("gw.toml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let full = std::process::Command::new(env!("CARGO_BIN_EXE_jotd-gateway"))
        .args(["config", "check", "--config"])
        .arg(dir.path().join("gw.toml"))
        .output()
        .unwrap();
    assert!(full.status.success());
    assert!(String::from_utf8_lossy(&full.stdout).contains(": OK\npool: "));
}

#[test]
fn the_shipped_example_config_checks() {
    let file =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/jotd-gateway.toml");
    let cfg = Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.routes.len(), 3);
    assert!(cfg.proxy.is_some() && cfg.forward_auth.is_some() && cfg.ext_authz.is_some());
    assert!(
        cfg.addresses
            .rows()
            .any(|(m, ps)| m == "acme_getThing" && ps == ["0.contract"])
    );
}

/// A WebSocket JSON-RPC node stand-in: answers each call with
/// `result = method`.
// tungstenite's handshake callback returns its `ErrorResponse` by value.
#[allow(clippy::result_large_err)]
async fn start_ws_upstream() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                // The identity headers of the handshake, echoed in each answer.
                let who = Arc::new(Mutex::new((String::new(), String::new(), String::new())));
                let seen = Arc::clone(&who);
                let record =
                    move |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                          resp| {
                        let h = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned()
                        };
                        *seen.lock().unwrap() =
                            (h("x-jotd-tenant"), h("x-jotd-subject"), h("origin"));
                        Ok(resp)
                    };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
                    return;
                };
                let (tenant, subject, origin) = who.lock().unwrap().clone();
                while let Some(Ok(m)) = ws.next().await {
                    if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                        let c: Value = serde_json::from_str(t.as_str()).unwrap();
                        let a = json!({"jsonrpc":"2.0","id":c["id"],"result":c["method"],"tenant":tenant,"subject":subject,"origin":origin});
                        let _ = ws
                            .send(tokio_tungstenite::tungstenite::Message::text(a.to_string()))
                            .await;
                    }
                }
            });
        }
    });
    addr
}

/// [`rig`] with the WebSocket stand-in node as the upstream.
async fn ws_rig(name: &str, extra: &str) -> (Keys, Pool, Config, tempfile::TempDir) {
    let k = keys();
    let pool = start_pool(&k);
    let up = start_ws_upstream().await;
    let (cfg, dir) = config(name, &pool, pool.addr, up, extra);
    (k, pool, cfg, dir)
}

/// The upgrade request to the proxy's `/v3/infura` with `token`.
fn ws_request(
    proxy: SocketAddr,
    token: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{proxy}/v3/infura")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

/// The node sees the client's `Origin` only with `[proxy] pass_origin`
/// (so its own `--ws.origins` / `--http.corsdomain` apply too), over HTTP
/// and in the WebSocket handshake alike; by default it sees none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_sees_the_origin_only_when_passed_on() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let k = keys();
    let pool = start_pool(&k);
    let (http_up, seen) = start_upstream().await;
    let ws_up = start_ws_upstream().await;
    let token =
        k.rs.mint(
            Some("rsa-1"),
            &json!({"sub":"gina","aud":AUD,"exp":now() + 600}).to_string(),
        )
        .unwrap();
    let page = "https://app.example";
    for pass in [false, true] {
        let want = if pass { page } else { "" };
        // HTTP.
        let (mut cfg, _dir) = config("origin-http", &pool, pool.addr, http_up, "");
        cfg.proxy.as_mut().unwrap().pass_origin = pass;
        let gw = jotd_gateway::start(&cfg, None).await.unwrap();
        let r = post(
            gw.proxy.unwrap(),
            "/v3/infura",
            Some(&token),
            &[("origin", page)],
            &call(1, "eth_chainId", &json!([])),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let (headers, _) = seen.lock().unwrap().pop().unwrap();
        let got = headers.get("origin").map(|v| v.to_str().unwrap());
        assert_eq!(got.unwrap_or(""), want, "HTTP, pass_origin = {pass}");
        gw.drain().await;
        // The WebSocket handshake.
        let (mut cfg, _dir) = config("origin-ws", &pool, pool.addr, ws_up, "");
        cfg.proxy.as_mut().unwrap().pass_origin = pass;
        let gw = jotd_gateway::start(&cfg, None).await.unwrap();
        let mut req = ws_request(gw.proxy.unwrap(), &token);
        req.headers_mut().insert("origin", page.parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        ws.send(Message::text(call(1, "eth_chainId", &json!([]))))
            .await
            .unwrap();
        let Some(Ok(Message::Text(t))) = ws.next().await else {
            panic!("no answer")
        };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(v["origin"], want, "WebSocket, pass_origin = {pass}");
        drop(ws);
        gw.drain().await;
    }
}

/// A token limited to some methods is `method_not_allowed` at the upgrade
/// (which names no method), a per-call refusal: the socket opens, and the
/// node still learns the verified token's subject (it saw none, so every
/// later call ran on the node as nobody); a method the token does not list
/// is refused per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_limited_tokens_socket_reaches_the_node_with_its_subject() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (k, _pool, cfg, _dir) = ws_rig("ws-method-subject", "").await;
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    let proxy = gw.proxy.unwrap();
    let token =
        k.rs.mint(
            Some("rsa-1"),
            &json!({"sub":"hana","aud":AUD,"exp":now() + 600,"methods":["eth_chainId"]})
                .to_string(),
        )
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request(proxy, &token))
        .await
        .unwrap();
    ws.send(Message::text(call(1, "eth_chainId", &json!([]))))
        .await
        .unwrap();
    let Some(Ok(Message::Text(t))) = ws.next().await else {
        panic!("no answer")
    };
    let v: Value = serde_json::from_str(t.as_str()).unwrap();
    assert_eq!(v["result"], "eth_chainId", "{v}");
    assert_eq!(v["subject"], "hana", "{v}");
    ws.send(Message::text(call(2, "eth_blockNumber", &json!([]))))
        .await
        .unwrap();
    let Some(Ok(Message::Text(t))) = ws.next().await else {
        panic!("no answer")
    };
    let v: Value = serde_json::from_str(t.as_str()).unwrap();
    assert_eq!(v["error"]["data"]["reason"], "method_not_allowed", "{v}");
    drop(ws);
    // A subject no header carries whole (a blank at its end, which parsers
    // strip: the node would see another identity) refuses the upgrade, as
    // it refuses an allowed call.
    let blank =
        k.rs.mint(
            Some("rsa-1"),
            &json!({"sub":"hana ","aud":AUD,"exp":now() + 600,"methods":["eth_chainId"]})
                .to_string(),
        )
        .unwrap();
    match tokio_tungstenite::connect_async(ws_request(proxy, &blank)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 401, "{r:?}");
        }
        other => panic!(
            "the upgrade went through: {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
    gw.drain().await;
}

/// A node message larger than `max_upstream_bytes` ends the socket, as an
/// HTTP answer that large is refused (the node's side took tungstenite's
/// default, up to 64 MiB, whatever the cap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_message_past_max_upstream_bytes_ends_the_socket() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    // The stand-in node's answer to eth_chainId (with the tenant and
    // subject it echoes) is over 64 bytes.
    let (k, _pool, cfg, _dir) = ws_rig("ws-node-cap", "[limits]\nmax_upstream_bytes = 64\n").await;
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    let proxy = gw.proxy.unwrap();
    let token =
        k.rs.mint(
            Some("rsa-1"),
            &json!({"sub":"gina","aud":AUD,"exp":now() + 600}).to_string(),
        )
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request(proxy, &token))
        .await
        .unwrap();
    ws.send(Message::text(call(1, "eth_chainId", &json!([]))))
        .await
        .unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
        .await
        .expect("an answer or a close");
    match got {
        Some(Ok(Message::Close(f))) => {
            assert_eq!(f.map(|f| u16::from(f.code)), Some(1001));
        }
        other => panic!("the oversized node message was relayed: {other:?}"),
    }
    gw.drain().await;
}

/// The close frame's code and reason, skipping other messages, within `secs`.
async fn close_frame<S>(ws: &mut S, secs: u64) -> (u16, String)
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    tokio::time::timeout(std::time::Duration::from_secs(secs), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => {
                    return f.map(|f| (u16::from(f.code), f.reason.to_string()));
                }
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await
    .expect("the socket closed in time")
    .expect("a close frame")
}

/// Failing closed, an open WebSocket whose token can no longer be checked
/// (the pool is gone) is closed at the next recheck, not left streaming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_closes_when_the_pool_cannot_check_its_token() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (k, pool, mut cfg, _dir) = ws_rig("ws-pool-gone", "").await;
    cfg.limits.websocket_recheck = std::time::Duration::from_millis(200);
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    let proxy = gw.proxy.unwrap();
    let token =
        k.rs.mint(
            Some("rsa-1"),
            &json!({"sub":"grace","aud":AUD,"exp":now() + 600}).to_string(),
        )
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request(proxy, &token))
        .await
        .unwrap();
    ws.send(Message::text(call(1, "eth_chainId", &json!([]))))
        .await
        .unwrap();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        answer.to_text().unwrap().contains("eth_chainId"),
        "{answer:?}"
    );
    drop(pool);
    let (code, reason) = close_frame(&mut ws, 30).await;
    assert_eq!(code, 1013, "{reason}");
    assert!(reason.contains("unavailable"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_closes_when_its_token_stops_verifying() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (k, pool, mut cfg, _dir) = ws_rig("ws-recheck", "").await;
    cfg.limits.websocket_recheck = std::time::Duration::from_millis(200);
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    let proxy = gw.proxy.unwrap();
    let token =
        k.rs.mint(
            Some("rsa-1"),
            &json!({"sub":"frank","aud":AUD,"exp":now() + 600}).to_string(),
        )
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request(proxy, &token))
        .await
        .unwrap();
    // The second call comes after several rechecks: while the token
    // verifies, they leave the socket open.
    for (id, pause_ms) in [(1, 0), (2, 600)] {
        tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
        ws.send(Message::text(call(id, "eth_chainId", &json!([]))))
            .await
            .unwrap();
        let answer = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            answer.to_text().unwrap().contains("eth_chainId"),
            "{answer:?}"
        );
        // The node learned the tenant and subject at the handshake, as over HTTP.
        let v: Value = serde_json::from_str(answer.to_text().unwrap()).unwrap();
        assert_eq!(
            (&v["tenant"], &v["subject"]),
            (&json!("infura"), &json!("frank"))
        );
    }
    // The operator removes the key (compromised): the socket closes with 1008.
    let mut without = Tenant::new(
        "infura",
        vec![TenantKey {
            kid: "ec-1".into(),
            key: k.es.verifying_key().unwrap(),
            issuer: None,
        }],
    );
    without.policy = PolicyModel::Allowlist;
    without.algorithms = AlgorithmSet::ALL;
    without.claims.audiences = vec![AUD.into()];
    // A key change bumps the tenant's epoch (the key store does on reload),
    // which drops its cached tokens.
    without.epoch = 1;
    *pool.keys.lock().unwrap() = Arc::new(Snapshot::new(2, [Arc::new(without)]));
    let (code, reason) = close_frame(&mut ws, 10).await;
    assert_eq!(code, 1008);
    assert!(reason.contains("unknown_kid"), "{reason}");
    gw.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_holding_every_admin_slot_cannot_fail_the_probe() {
    use tokio::io::AsyncReadExt;
    let (_k, _pool, _seen, cfg, _dir) =
        rig("admin-slots", "[admin]\nlisten = \"127.0.0.1:0\"\n").await;
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    let admin = gw.admin.unwrap();
    assert_eq!(post(admin, "/healthz", None, &[], "").await.status, 200);
    // 64 idle connections: every slot.
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(tokio::net::TcpStream::connect(admin).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The probe is answered (the old rule, refuse at the cap, failed it)...
    let r = post(admin, "/healthz", None, &[], "").await;
    assert_eq!((r.status, r.raw_body.as_str()), (200, "ok\n"));
    // ...at the cost of the slot holder's oldest connection, which is closed.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(3), idle[0].read(&mut buf))
        .await
        .expect("the oldest idle connection is closed");
    assert!(
        matches!(n, Ok(0)) || n.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "closed, not answered"
    );
    gw.drain().await;
}

/// While the gateway drains, its admin listener still answers, `/readyz`
/// with `503 draining`, so a balancer takes the node out while requests in
/// flight finish (the admin listener used to close with the doors, so the
/// documented answer never came). `/readyz` probes the pool once a second
/// at most, however often it is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_draining_while_the_doors_drain() {
    use tokio::io::AsyncWriteExt;
    let (_k, _pool, _seen, cfg, _dir) =
        rig("admin-drain", "[admin]\nlisten = \"127.0.0.1:0\"\n").await;
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    let (proxy, admin) = (gw.proxy.unwrap(), gw.admin.unwrap());
    let checks = || gw.batcher.stats().checks;
    let before = checks();
    for _ in 0..5 {
        let r = post(admin, "/readyz", None, &[], "").await;
        assert_eq!((r.status, r.raw_body.as_str()), (200, "ready\n"));
    }
    assert_eq!(
        checks() - before,
        1,
        "one probe for five asks within a second"
    );
    // Ten at once once that answer is old: still one probe (the others wait
    // for it rather than each sending their own).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = checks();
    let asks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(async move { post(admin, "/readyz", None, &[], "").await.status }))
        .collect();
    for a in asks {
        assert_eq!(a.await.unwrap(), 200);
    }
    assert_eq!(checks() - before, 1, "one probe for ten asks at once");
    // A request in flight: its body is still arriving.
    let mut slow = tokio::net::TcpStream::connect(proxy).await.unwrap();
    slow.write_all(b"POST /v3/infura HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let drain = tokio::spawn(gw.drain());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !drain.is_finished(),
        "the request in flight holds the drain"
    );
    let r = post(admin, "/readyz", None, &[], "").await;
    assert_eq!((r.status, r.raw_body.as_str()), (503, "draining\n"));
    drop(slow);
    tokio::time::timeout(Duration::from_secs(20), drain)
        .await
        .expect("the drain ends")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "the admin listener is closed once drained"
    );
}

/// A proxy whose node takes no connection is not ready (it answered every
/// call 502 while `/readyz` said 200); the reason names the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_needs_a_node_that_takes_connections() {
    let k = keys();
    let pool = start_pool(&k);
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (cfg, _dir) = config(
        "node-down",
        &pool,
        pool.addr,
        dead,
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
    );
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    let r = post(gw.admin.unwrap(), "/readyz", None, &[], "").await;
    assert_eq!(r.status, 503, "{}", r.raw_body);
    assert!(
        r.raw_body
            .starts_with(&format!("no upstream node reachable: {dead}: ")),
        "{}",
        r.raw_body
    );
    gw.drain().await;
}

/// With `drain_delay_ms`, the doors keep answering for that long after the
/// drain began while `/readyz` already says `503 draining` (a balancer that
/// polls readiness takes the node out before its listeners close; they
/// closed at once, refusing what it still sent); then they close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doors_serve_through_the_drain_delay() {
    let (k, _pool, _seen, cfg, _dir) = rig(
        "drain-delay",
        "[admin]\nlisten = \"127.0.0.1:0\"\n[limits]\ndrain_delay_ms = 1500\n",
    )
    .await;
    assert_eq!(cfg.limits.drain_delay, Duration::from_millis(1500));
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    let (proxy, admin) = (gw.proxy.unwrap(), gw.admin.unwrap());
    let token =
        k.rs.mint(
            Some("rsa-1"),
            &json!({"sub":"gina","aud":AUD,"exp":now() + 600}).to_string(),
        )
        .unwrap();
    let body = call(1, "eth_chainId", &json!([]));
    let drain = tokio::spawn(gw.drain());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = post(admin, "/readyz", None, &[], "").await;
    assert_eq!((r.status, r.raw_body.as_str()), (503, "draining\n"));
    let r = post(proxy, "/v3/infura", Some(&token), &[], &body).await;
    assert_eq!(
        r.status, 200,
        "a new connection within the delay: {}",
        r.body
    );
    tokio::time::timeout(Duration::from_secs(20), drain)
        .await
        .expect("the drain ends")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(proxy).await.is_err(),
        "closed after the delay"
    );
}

/// Sends one GET on a fresh connection; the status, or `None` when the
/// connection was refused (closed at the cap) or nothing came in 2 s.
async fn status_of_a_get(addr: SocketAddr) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /v3/infura HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let head = String::from_utf8_lossy(&buf);
        head.get(9..12)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// A connection to `addr` from loopback address `local`.
async fn connect_from(addr: SocketAddr, local: [u8; 4]) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((local, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

/// One address holding every slot of a door (idle keep-alive connections)
/// does not lock out another address: its oldest idle connection makes room.
/// The gRPC (ext_authz) door has the same cap.
/// More from the same address are refused, as before. (Before, every
/// newcomer was refused while one client held `max_connections`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_slot_of_a_door() {
    use tokio::io::AsyncReadExt;
    let (_k, _pool, _seen, cfg, _dir) = rig("door-share", "[limits]\nmax_connections = 4\n").await;
    let mut cfg = cfg;
    cfg.ext_authz = Some(jotd_gateway::config::ExtAuthz {
        listen: "127.0.0.1:0".parse().unwrap(),
        remove_authorization: false,
    });
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    // The gRPC door: the same cap and share (before, it had no cap at all).
    {
        let door = gw.ext_authz.unwrap();
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(connect_from(door, [127, 0, 0, 2]).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut more = connect_from(door, [127, 0, 0, 2]).await;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), more.read(&mut buf))
            .await
            .expect("refused at once");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{door}"))
            .unwrap()
            .local_address(Some([127, 0, 0, 3].into()))
            .connect()
            .await
            .unwrap();
        let mut client = envoy::AuthorizationClient::new(channel);
        let body = call(1, "eth_blockNumber", &json!([]));
        let answer = client
            .check(envoy_check("/v3/infura", None, &body, None))
            .await;
        assert!(answer.is_ok(), "{answer:?}");
        // (After the server's HTTP/2 SETTINGS, sent when it was admitted.)
        let mut rest = Vec::new();
        // Ended (EOF or reset) within the timeout, or the test fails here.
        let _ = tokio::time::timeout(Duration::from_secs(5), held[0].read_to_end(&mut rest))
            .await
            .expect("the oldest connection is closed");
    }
    for door in [gw.proxy.unwrap(), gw.forward_auth.unwrap()] {
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(connect_from(door, [127, 0, 0, 2]).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The same address again: refused (closed at once, no answer).
        let mut more = connect_from(door, [127, 0, 0, 2]).await;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), more.read(&mut buf))
            .await
            .expect("refused at once");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        // Another address is served.
        let served = {
            use tokio::io::AsyncWriteExt;
            let mut s = connect_from(door, [127, 0, 0, 3]).await;
            s.write_all(b"GET /v3/infura HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
            String::from_utf8_lossy(&answer).into_owned()
        };
        assert!(served.starts_with("HTTP/1.1 "), "{door}: {served:?}");
        // ...at the cost of the oldest of the address holding every slot.
        let n = tokio::time::timeout(Duration::from_secs(5), held[0].read(&mut buf))
            .await
            .expect("the oldest idle connection is closed");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
    gw.drain().await;
}

/// The gRPC door makes room from a connection with no call in flight: a
/// `Check` waiting on the pool (here a silent one: it waits out
/// `check_timeout_ms`) keeps its connection; the same address's idle one goes
/// (tonic's channel would quietly reconnect it, so only the busy side is
/// checked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_door_makes_room_from_idle_connections_first() {
    let k = keys();
    let pool = start_pool(&k);
    // A pool endpoint that takes packets and never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (up, _seen) = start_upstream().await;
    let (mut cfg, _dir) = config(
        "grpc-busy",
        &pool,
        silent.local_addr().unwrap(),
        up,
        "[limits]\nmax_connections = 2\n",
    );
    cfg.ext_authz = Some(jotd_gateway::config::ExtAuthz {
        listen: "127.0.0.1:0".parse().unwrap(),
        remove_authorization: false,
    });
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    let door = gw.ext_authz.unwrap();
    let channel = |local: [u8; 4]| async move {
        tonic::transport::Endpoint::from_shared(format!("http://{door}"))
            .unwrap()
            .local_address(Some(local.into()))
            .connect()
            .await
            .unwrap()
    };
    let body = call(1, "eth_blockNumber", &json!([]));
    // Envoy's first connection carries a call in flight; its second is idle.
    let mut busy = envoy::AuthorizationClient::new(channel([127, 0, 0, 2]).await);
    let idle = envoy::AuthorizationClient::new(channel([127, 0, 0, 2]).await);
    let in_flight = tokio::spawn(async move {
        busy.check(envoy_check("/v3/infura", None, &body, None))
            .await
    });
    // The call has reached the door (and marked its connection busy) once
    // the batcher has taken its check.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gw.batcher.stats().checks == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the call never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !in_flight.is_finished(),
        "the call waits on the silent pool"
    );
    // A newcomer from another address: the idle connection makes room.
    let _other = channel([127, 0, 0, 3]).await;
    let answer = in_flight.await.unwrap();
    assert!(answer.is_ok(), "the busy connection was cut: {answer:?}");
    drop(idle);
    gw.drain().await;
}

/// A socket opened while the pool was unreachable, with `failure_mode =
/// "open"`, reached the node with no subject and knew no `exp`: it is
/// closed (1013) at the first recheck jotd answers, so the client
/// reconnects and is checked whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_opened_failing_open_is_closed_once_jotd_answers() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let k = keys();
    let pool = start_pool(&k);
    let up = start_ws_upstream().await;
    let (relay, cut) = relay_until_cut(pool.addr).await;
    cut.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut cfg, _dir) = config("ws-fail-open", &pool, relay, up, "failure_mode = \"open\"");
    cfg.limits.websocket_recheck = std::time::Duration::from_millis(300);
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    let token =
        k.rs.mint(
            Some("rsa-1"),
            &json!({"sub":"grace","aud":AUD,"exp":now() + 600}).to_string(),
        )
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request(gw.proxy.unwrap(), &token))
        .await
        .expect("the upgrade fails open");
    ws.send(Message::text(call(1, "eth_chainId", &json!([]))))
        .await
        .unwrap();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        answer.to_text().unwrap().contains("eth_chainId"),
        "{answer:?}"
    );
    // Rechecks fail open while the pool stays away: the socket stays.
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    cut.store(false, std::sync::atomic::Ordering::SeqCst);
    let (code, reason) = close_frame(&mut ws, 30).await;
    assert_eq!(code, 1013, "{reason}");
    assert!(reason.contains("reconnect"), "{reason}");
    drop(pool);
}

/// A UDP relay to `to` (one client) that forwards both ways until the
/// returned switch is set (and again once it is cleared), dropping
/// everything meanwhile: a pool that answered the first checks and then
/// goes silent.
async fn relay_until_cut(to: SocketAddr) -> (SocketAddr, Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(to).await.unwrap();
    let addr = front.local_addr().unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let (f, b, c, x) = (
        Arc::clone(&front),
        Arc::clone(&back),
        Arc::clone(&client),
        Arc::clone(&cut),
    );
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = f.recv_from(&mut buf).await {
            *c.lock().unwrap() = Some(from);
            if !x.load(Ordering::SeqCst) {
                let _ = b.send(&buf[..n]).await;
            }
        }
    });
    let x = Arc::clone(&cut);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = back.recv(&mut buf).await {
            let to = *client.lock().unwrap();
            if let Some(to) = to
                && !x.load(Ordering::SeqCst)
            {
                let _ = front.send_to(&buf[..n], to).await;
            }
        }
    });
    (addr, cut)
}

/// A socket whose message waits on a check (the pool gone silent after the
/// upgrade: the check waits out its deadline) closes when its token expires,
/// not after the check (a known limit: the relay loop waited for it, then
/// answered the call, then closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_waiting_on_a_check_closes_when_its_token_expires() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let k = keys();
    let pool = start_pool(&k);
    let (relay, cut) = relay_until_cut(pool.addr).await;
    let up = start_ws_upstream().await;
    let (mut cfg, _dir) = config("ws-exp-check", &pool, relay, up, "");
    cfg.pool.check_timeout = Duration::from_secs(6);
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    // Expires one to two seconds from now (whole seconds).
    let token =
        k.rs.mint(
            Some("rsa-1"),
            &json!({"sub":"gina","aud":AUD,"exp":now() + 2}).to_string(),
        )
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request(gw.proxy.unwrap(), &token))
        .await
        .unwrap();
    cut.store(true, std::sync::atomic::Ordering::SeqCst);
    ws.send(Message::text(call(1, "eth_chainId", &json!([]))))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a frame");
    match first {
        Some(Ok(Message::Close(Some(f)))) => {
            assert_eq!(
                (u16::from(f.code), f.reason.as_str()),
                (1008, "token expired")
            );
        }
        other => panic!("the call was answered before the close: {other:?}"),
    }
    gw.drain().await;
}

/// WebSockets are shared per address too: at `max_connections` sockets, a
/// newcomer from another address closes the oldest socket (1013) of the one
/// holding two more; more from the same address get 503. (Before, a
/// semaphore: one client holding every socket refused everyone.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_websocket() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let (k, _pool, cfg, _dir) = ws_rig("ws-share", "[limits]\nmax_connections = 2\n").await;
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    let proxy = gw.proxy.unwrap();
    let token =
        k.rs.mint(
            Some("rsa-1"),
            &json!({"sub":"frank","aud":AUD,"exp":now() + 600}).to_string(),
        )
        .unwrap();
    let open = |local: [u8; 4]| {
        let token = token.clone();
        async move {
            let stream = connect_from(proxy, local).await;
            tokio_tungstenite::client_async(ws_request(proxy, &token), stream).await
        }
    };
    let (mut first, _) = open([127, 0, 0, 2]).await.unwrap();
    let (_second, _) = open([127, 0, 0, 2]).await.unwrap();
    // A third from the same address: refused.
    match open([127, 0, 0, 2]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("{other:?}"),
    }
    // Another address gets one, at the cost of the first address's oldest.
    let (_third, _) = open([127, 0, 0, 3]).await.unwrap();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match first.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await
    .expect("the oldest socket is closed");
    assert_eq!(closed, Some(1013));
    gw.drain().await;
}

/// A client that pipelines requests and never reads the answers: once a
/// write has made no progress for `write_timeout_ms` its connection is
/// closed, so such clients cannot hold every slot of a door, nor the drain.
/// (Before, hyper waited on the client's flow control for ever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_hold_a_connection_or_the_drain() {
    use tokio::io::AsyncWriteExt;
    let (_k, _pool, _seen, cfg, _dir) = rig(
        "never-reads",
        "[limits]\nmax_connections = 2\nwrite_timeout_ms = 500\n",
    )
    .await;
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    let proxy = gw.proxy.unwrap();
    assert_eq!(status_of_a_get(proxy).await, Some(405));
    // Two connections (every slot), each with a small receive buffer and
    // ~15 MB of answers asked for: far past what the kernel buffers hold.
    let request = b"GET /v3/infura HTTP/1.1\r\nHost: a\r\n\r\n".repeat(60_000);
    let mut writers = Vec::new();
    for _ in 0..2 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(2048).unwrap();
        let mut stream = socket.connect(proxy).await.unwrap();
        let request = request.clone();
        writers.push(tokio::spawn(async move {
            let _ = stream.write_all(&request).await;
            // Held open, never read.
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(stream);
        }));
    }
    // Both slots taken: a newcomer is refused while they are held...
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...and freed once their stalled writes time out.
    let started = std::time::Instant::now();
    loop {
        if status_of_a_get(proxy).await == Some(405) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the stalled connections were never closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::timeout(Duration::from_secs(10), gw.drain())
        .await
        .expect("the drain ends");
    for w in writers {
        w.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_and_cut_bodies_are_refused_by_the_authorizer_doors() {
    let (k, _pool, _seen, cfg, _dir) = rig("ws-auth", "").await;
    let (gw, mut client) = with_ext_authz(cfg, false).await;
    let fa = gw.forward_auth.unwrap();
    let exp = now() + 600;
    // An unrestricted token: the one a bodiless check lets through.
    let open =
        k.es.mint(
            Some("ec-1"),
            &json!({"sub":"carol","aud":AUD,"exp":exp}).to_string(),
        )
        .unwrap();
    let uri = ("x-forwarded-uri", "/v3/infura");
    assert_eq!(post(fa, "/auth", Some(&open), &[uri], "").await.status, 200);
    // The same check for a WebSocket handshake (as Caddy, NGINX or Traefik
    // forward it; Traefik drops the hop-by-hop Upgrade but keeps the key).
    for upgrade in [
        &[("upgrade", "websocket"), ("connection", "Upgrade")][..],
        &[("upgrade", "h2c, WebSocket")],
        &[("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")],
    ] {
        let mut headers = upgrade.to_vec();
        headers.push(uri);
        let r = post(fa, "/auth", Some(&open), &headers, "").await;
        assert_eq!(r.status, 403, "{upgrade:?}: {}", r.raw_body);
        assert_eq!(r.body["error"]["data"]["reason"], "websocket_upgrade");
    }
    // Any other upgrade too: an h2c tunnel to the node carries requests no
    // door sees (with its Upgrade header, or only HTTP2-Settings when the
    // front proxy dropped the hop-by-hop Upgrade).
    for upgrade in [
        &[
            ("upgrade", "h2c"),
            ("connection", "Upgrade, HTTP2-Settings"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ][..],
        &[("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")],
        &[("upgrade", "TLS/1.2")],
        // A CONNECT tunnel, as Traefik and Caddy name the method.
        &[("x-forwarded-method", "CONNECT")],
    ] {
        let mut headers = upgrade.to_vec();
        headers.push(uri);
        let r = post(fa, "/auth", Some(&open), &headers, "").await;
        assert_eq!(r.status, 403, "{upgrade:?}: {}", r.raw_body);
        assert_eq!(r.body["error"]["data"]["reason"], "protocol_upgrade");
    }
    // Through Envoy: the upgrade and a body Envoy says it cut short.
    let status_of = |r: envoy::CheckResponse| match r.http_response {
        Some(envoy::HttpResponse::DeniedResponse(d)) => d.status.map_or(0, |s| s.code),
        Some(envoy::HttpResponse::OkResponse(_)) => 200,
        _ => -1,
    };
    let body = call(1, "eth_blockNumber", &json!([]));
    let r = client
        .check(envoy_check("/v3/infura", Some(&open), &body, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status_of(r), 200);
    for (name, value, want) in [
        ("upgrade", "websocket", 403),
        ("upgrade", "h2c", 403),
        ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA", 403),
        ("x-envoy-auth-partial-body", "true", 413),
    ] {
        let mut req = envoy_check("/v3/infura", Some(&open), &body, None);
        let http = req
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
            .unwrap();
        http.headers.insert(name.to_owned(), value.to_owned());
        let r = client.check(req).await.unwrap().into_inner();
        assert_eq!(status_of(r), want, "{name}: {value}");
    }
    // HTTP/2: a WebSocket is a CONNECT with `:protocol` (RFC 8441); any
    // CONNECT is a tunnel. Both refused, in either header form Envoy sends.
    for (method, protocol, raw, reason) in [
        ("CONNECT", Some("websocket"), false, "websocket_upgrade"),
        ("CONNECT", Some("websocket"), true, "websocket_upgrade"),
        ("CONNECT", None, false, "protocol_upgrade"),
    ] {
        let mut req = envoy_check("/v3/infura", Some(&open), &body, None);
        let http = req
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
            .unwrap();
        http.method = method.into();
        if let Some(p) = protocol {
            if raw {
                let mut map = envoy_types::pb::envoy::config::core::v3::HeaderMap::default();
                for (k, v) in http
                    .headers
                    .iter()
                    .chain([(&":protocol".to_owned(), &p.to_owned())])
                {
                    map.headers
                        .push(envoy_types::pb::envoy::config::core::v3::HeaderValue {
                            key: k.clone(),
                            raw_value: v.clone().into_bytes(),
                            ..Default::default()
                        });
                }
                http.header_map = Some(map);
            } else {
                http.headers.insert(":protocol".to_owned(), p.to_owned());
            }
        }
        let r = client.check(req).await.unwrap().into_inner();
        let Some(envoy::HttpResponse::DeniedResponse(d)) = r.http_response else {
            panic!("{method} {protocol:?} raw {raw}: {r:?}")
        };
        assert_eq!(d.status.map_or(0, |s| s.code), 403);
        assert!(
            d.body.contains(reason),
            "{method} {protocol:?} raw {raw}: {}",
            d.body
        );
    }
    gw.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_header_off_takes_the_tenant_from_the_path_alone() {
    let (k, _pool, _seen, mut cfg, dir) = rig("uri-off", "").await;
    // `uri_header = ""` reads as "no such header".
    let text = std::fs::read_to_string(dir.path().join("gw.toml"))
        .unwrap()
        .replace(
            "[forward_auth]\nlisten = \"127.0.0.1:0\"\n",
            "[forward_auth]\nlisten = \"127.0.0.1:0\"\nuri_header = \"\"\n",
        );
    let file = dir.path().join("gw-off.toml");
    std::fs::write(&file, text).unwrap();
    let off = Config::load(&file).unwrap();
    assert!(off.forward_auth.as_ref().unwrap().uri_header.is_none());
    let token =
        k.es.mint(
            Some("ec-1"),
            &json!({"aud":AUD,"exp":now() + 600}).to_string(),
        )
        .unwrap();
    // Envoy's HTTP ext_authz shape: the original path after `/auth`; the
    // client added its own X-Forwarded-Uri naming another tenant.
    let forged = [("x-forwarded-uri", "/v3/someone-else")];
    // With the default, the header chooses (right for Caddy, Traefik, NGINX,
    // which set it over the client's).
    cfg.forward_auth.as_mut().unwrap().uri_header = Some("x-forwarded-uri".parse().unwrap());
    for (config, path_only) in [(&off, true), (&cfg, false)] {
        let gw = jotd_gateway::start(config, None).await.unwrap();
        let r = post(
            gw.forward_auth.unwrap(),
            "/auth/v3/infura",
            Some(&token),
            &forged,
            "",
        )
        .await;
        let tenant = r.headers.get("x-jotd-tenant").map(|v| v.to_str().unwrap());
        if path_only {
            assert_eq!((r.status, tenant), (200, Some("infura")), "{}", r.raw_body);
        } else {
            assert_ne!(tenant, Some("infura"));
        }
        gw.drain().await;
    }
}

/// A token-free tenant's own origin allowlist holds at the WebSocket
/// upgrade (a page cannot add a token to a socket, and such a tenant had no
/// origin rule): a page it does not list, or a request with no `Origin`, is
/// refused; a listed page gets its socket and its answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_origin_allowlist_holds_at_the_websocket_upgrade() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (_k, _pool, cfg, _dir) = ws_rig("ws-origins", "").await;
    let gw = jotd_gateway::start(&cfg, None).await.unwrap();
    let proxy = gw.proxy.unwrap();
    let upgrade = |origin: Option<&str>| {
        let mut req = format!("ws://{proxy}/v3/open")
            .into_client_request()
            .unwrap();
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        req
    };
    for origin in [Some("https://evil.example"), None] {
        let e = tokio_tungstenite::connect_async(upgrade(origin))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("403"), "{origin:?}: {e}");
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(upgrade(Some("https://app.example")))
        .await
        .unwrap();
    ws.send(Message::text(call(1, "eth_chainId", &json!([]))))
        .await
        .unwrap();
    let answer = ws.next().await.unwrap().unwrap();
    assert!(
        answer.to_text().unwrap().contains("eth_chainId"),
        "{answer:?}"
    );
    gw.drain().await;
}
