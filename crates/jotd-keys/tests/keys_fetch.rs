//! JWKS over HTTPS against a local TLS server: fetch, max-age, rotation via
//! unknown kid, single flight, rate limit, and stale-if-error through 500s,
//! garbage, huge bodies and a server that never answers.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jotd_core::{Algorithm, Engine, EngineConfig, Reason, Request, SigningKey, UnixTime};
use jotd_keys::{FetchConfig, FetchError, JwksFetcher, Reloader};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the test server answers next.
#[derive(Clone)]
enum Mode {
    Doc {
        body: String,
        cache_control: Option<&'static str>,
    },
    /// The document, after a pause (to hold a fetch in flight).
    SlowDoc {
        body: String,
        pause: Duration,
    },
    Status(u16),
    Garbage,
    Huge(usize),
    Hang,
    /// `302 Location: location` for `/jwks.json`, the document on any other path.
    Redirect {
        location: String,
        body: String,
    },
}

struct Server {
    url: String,
    ca_pem: String,
    mode: Arc<Mutex<Mode>>,
    hits: Arc<AtomicUsize>,
}

impl Server {
    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn serve() -> Server {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let cert = rustls::pki_types::CertificateDer::from(certified.cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}/jwks.json",
        listener.local_addr().unwrap().port()
    );
    let mode = Arc::new(Mutex::new(Mode::Status(503)));
    let hits = Arc::new(AtomicUsize::new(0));
    let (m, h) = (Arc::clone(&mode), Arc::clone(&hits));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, m, h) = (acceptor.clone(), Arc::clone(&m), Arc::clone(&h));
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 << 10 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                h.fetch_add(1, Ordering::SeqCst);
                let mode = m.lock().unwrap().clone();
                let first_path = head.starts_with(b"GET /jwks.json ");
                let response = match mode {
                    Mode::Redirect { location, .. } if first_path => format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes(),
                    Mode::Redirect { body, .. } => format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).into_bytes(),
                    Mode::Doc { body, cache_control } => {
                        let cc = cache_control.map(|c| format!("Cache-Control: {c}\r\n")).unwrap_or_default();
                        format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{cc}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).into_bytes()
                    }
                    Mode::SlowDoc { body, pause } => {
                        tokio::time::sleep(pause).await;
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).into_bytes()
                    }
                    Mode::Status(code) => format!("HTTP/1.1 {code} Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes(),
                    Mode::Garbage => b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\nConnection: close\r\n\r\n<html>not json</html".to_vec(),
                    Mode::Huge(n) => {
                        let mut r = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"keys\":[".to_vec();
                        r.resize(r.len() + n, b' ');
                        r
                    }
                    Mode::Hang => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                };
                let _ = stream.write_all(&response).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Server {
        url,
        ca_pem: certified.cert.pem(),
        mode,
        hits,
    }
}

/// An Ed25519 key and its JWKS entry.
fn ed_key(kid: &str) -> (SigningKey, String) {
    let key = SigningKey::generate(Algorithm::EdDsa).unwrap();
    let spki = key.verifying_key().unwrap().spki_der().unwrap();
    let jwk = format!(
        r#"{{"kty":"OKP","crv":"Ed25519","kid":"{kid}","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(&spki[spki.len() - 32..])
    );
    (key, jwk)
}

fn doc(jwks: &[&str]) -> String {
    format!(r#"{{"keys":[{}]}}"#, jwks.join(","))
}

/// A reloader over one in-memory config text (every file stamped alike).
fn reloader_of(text: String) -> Arc<Reloader> {
    Arc::new(
        Reloader::start(
            Path::new("/cfg/jotd.toml"),
            Box::new(move |_| Ok(text.clone().into_bytes())),
            Box::new(|_| Some((None, 1))),
        )
        .unwrap(),
    )
}

fn setup(server: &Server, config: FetchConfig) -> (Arc<Reloader>, JwksFetcher) {
    setup_at(server, &server.url, config)
}

/// [`setup`] with the source's URL written as `url` (another spelling of
/// the server's).
fn setup_at(server: &Server, url: &str, config: FetchConfig) -> (Arc<Reloader>, JwksFetcher) {
    let text = format!(
        "[[tenant]]\nid = \"idp\"\n[[tenant.jwks]]\ninternal = true\nurl = \"{url}\"\nrefresh_s = 300\nalg = \"EdDSA\"\n"
    );
    let reloader = reloader_of(text);
    let config = FetchConfig {
        extra_roots_pem: Some(server.ca_pem.clone().into_bytes()),
        ..config
    };
    let fetcher = JwksFetcher::new(Arc::clone(&reloader), config).unwrap();
    (reloader, fetcher)
}

/// A reloader over the config text `config` gives at each read, and a
/// fetcher installing into it that trusts `server`'s CA.
fn fetching(
    server: &Server,
    config: impl Fn() -> String + Send + Sync + 'static,
) -> (Arc<Reloader>, JwksFetcher) {
    let reloader = Arc::new(
        Reloader::start(
            Path::new("/cfg/jotd.toml"),
            Box::new(move |_| Ok(config().into_bytes())),
            Box::new(|_| Some((None, 1))),
        )
        .unwrap(),
    );
    let settings = FetchConfig {
        extra_roots_pem: Some(server.ca_pem.clone().into_bytes()),
        ..FetchConfig::default()
    };
    let fetcher = JwksFetcher::new(Arc::clone(&reloader), settings).unwrap();
    (reloader, fetcher)
}

/// A fetcher's refresh loop, running until [`Looping::stop`].
struct Looping {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Looping {
    fn start(fetcher: &Arc<JwksFetcher>) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(Arc::clone(fetcher).run(async {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    /// Stops the loop, which must end within 5 s (a fetch still hanging
    /// or not).
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the loop stops on shutdown")
            .unwrap();
    }
}

fn decide(r: &Reloader, key: &SigningKey, kid: &str) -> Reason {
    decide_for(r, "idp", key, kid)
}

fn decide_for(r: &Reloader, tenant: &str, key: &SigningKey, kid: &str) -> Reason {
    let token = key.mint(Some(kid), r#"{"exp":4000000000}"#).unwrap();
    let engine = Engine::new(EngineConfig {
        cache: None,
        ..EngineConfig::default()
    });
    engine
        .verify(
            &r.store().load(),
            &Request::bearer(tenant, token.as_bytes()),
            UnixTime(1_800_000_000),
        )
        .reason()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_max_age_rotation_single_flight_and_rate_limit() {
    let server = serve().await;
    let (key_a, jwk_a) = ed_key("a");
    let (key_b, jwk_b) = ed_key("b");
    server.set(Mode::Doc {
        body: doc(&[&jwk_a]),
        cache_control: Some("public, max-age=60"),
    });
    let (reloader, fetcher) = setup(&server, FetchConfig::default());
    assert_eq!(
        decide(&reloader, &key_a, "a"),
        Reason::UnknownKid,
        "nothing fetched yet"
    );
    assert!(fetcher.refresh_due().await.is_empty());
    assert_eq!(decide(&reloader, &key_a, "a"), Reason::Ok);
    let due = fetcher.next_due().unwrap() - tokio::time::Instant::now();
    assert!(
        due <= Duration::from_secs(60) && due > Duration::from_secs(50),
        "max-age bounds the refresh: {due:?}"
    );
    assert!(fetcher.refresh_due().await.is_empty());
    assert_eq!(server.hits(), 1, "not due again yet");

    // The IdP rotates to key b. Tokens with kid b trigger one refetch for all waiters
    // (the server answers slowly, so all twenty ask while that fetch is in flight).
    server.set(Mode::SlowDoc {
        body: doc(&[&jwk_b]),
        pause: Duration::from_millis(300),
    });
    assert_eq!(decide(&reloader, &key_b, "b"), Reason::UnknownKid);
    let fetcher = Arc::new(fetcher);
    let waiters: Vec<_> = (0..20)
        .map(|_| {
            let f = Arc::clone(&fetcher);
            tokio::spawn(async move { f.on_unknown_kid("idp").await })
        })
        .collect();
    for w in waiters {
        assert!(w.await.unwrap(), "every waiter sees the refreshed keys");
    }
    assert_eq!(server.hits(), 2, "twenty unknown-kid triggers, one fetch");
    assert_eq!(decide(&reloader, &key_b, "b"), Reason::Ok);
    assert_eq!(
        decide(&reloader, &key_a, "a"),
        Reason::UnknownKid,
        "a rotated out"
    );
    // Rate limit: another unknown kid right away does not reach the server.
    assert!(!fetcher.on_unknown_kid("idp").await);
    assert_eq!(server.hits(), 2);
    assert!(!fetcher.on_unknown_kid("no-such-tenant").await);
    let health = fetcher.health();
    assert_eq!(
        (health.len(), health[0].failures, health[0].fetches),
        (1, 0, 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_keep_the_last_good_keys() {
    let server = serve().await;
    let (key, jwk) = ed_key("a");
    server.set(Mode::Doc {
        body: doc(&[&jwk]),
        cache_control: None,
    });
    let config = FetchConfig {
        refetch_interval: Duration::ZERO,
        timeout: Duration::from_millis(500),
        max_bytes: 64 << 10,
        ..FetchConfig::default()
    };
    // Written as the client does not send it (`..` resolved): no redirect
    // happens, and no error says one did.
    let url = server.url.replacen("/jwks.json", "/x/../jwks.json", 1);
    assert_ne!(url, server.url);
    let (reloader, fetcher) = setup_at(&server, &url, config);
    assert!(fetcher.on_unknown_kid("idp").await);
    let generation = reloader.store().load().generation();
    let cases = [
        (Mode::Status(500), FetchError::Status(500)),
        (
            Mode::Garbage,
            FetchError::Jwks(jotd_keys::jwk::JwkError::Json(
                "expected value at line 1 column 1".into(),
            )),
        ),
        (
            Mode::Doc {
                body: doc(&[]),
                cache_control: None,
            },
            FetchError::Jwks(jotd_keys::jwk::JwkError::NoUsableKey(String::new())),
        ),
        (Mode::Huge(1 << 20), FetchError::TooLarge(64 << 10)),
        (Mode::Hang, FetchError::Timeout(Duration::from_millis(500))),
    ];
    for (i, (mode, want)) in cases.into_iter().enumerate() {
        server.set(mode);
        assert!(!fetcher.on_unknown_kid("idp").await, "case {i}");
        let h = &fetcher.health()[0];
        assert_eq!(h.last_error.as_ref(), Some(&want), "case {i}");
        assert_eq!(h.failures, i as u32 + 1);
        assert!(
            h.age.is_some(),
            "the age of the last good keys stays on record"
        );
        assert_eq!(
            decide(&reloader, &key, "a"),
            Reason::Ok,
            "case {i}: the last good keys keep serving"
        );
        assert_eq!(
            reloader.store().load().generation(),
            generation,
            "case {i}: no snapshot swap"
        );
    }
    server.set(Mode::Doc {
        body: doc(&[&jwk]),
        cache_control: None,
    });
    assert!(fetcher.on_unknown_kid("idp").await);
    let h = &fetcher.health()[0];
    assert_eq!((h.failures, h.last_error.clone()), (0, None));
}

/// Observes `fetcher`'s events as lines (`installed`, `failed`, `dropped`
/// with the tenant, and the age and limit for drops).
fn heard(fetcher: JwksFetcher) -> (JwksFetcher, Arc<Mutex<Vec<String>>>) {
    let heard = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = Arc::clone(&heard);
    let fetcher = fetcher.with_observer(Box::new(move |event| {
        let line = match event {
            jotd_keys::FetchEvent::Installed { tenant, .. } => format!("installed {tenant}"),
            jotd_keys::FetchEvent::Failed { tenant, .. } => format!("failed {tenant}"),
            jotd_keys::FetchEvent::Dropped {
                tenant,
                age,
                max_stale,
                ..
            } => format!(
                "dropped {tenant} past {max_stale:?}: {}",
                if age >= max_stale { "older" } else { "younger" }
            ),
        };
        log.lock().unwrap().push(line);
    }));
    (fetcher, heard)
}

/// With `max_stale`, the last good keys outlive failed fetches only so
/// long: past it, the next failed fetch drops them (the tenant's tokens are
/// `unknown_kid`, as for a withdrawn key), once, with an event and the
/// source's health saying so; a good fetch brings keys back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_past_max_stale_are_dropped_when_a_fetch_fails() {
    let server = serve().await;
    let (key, jwk) = ed_key("a");
    let good = Mode::Doc {
        body: doc(&[&jwk]),
        cache_control: None,
    };
    server.set(good.clone());
    let config = FetchConfig {
        refetch_interval: Duration::ZERO,
        max_stale: Some(Duration::from_millis(400)),
        min_refresh: Duration::from_millis(400),
        ..FetchConfig::default()
    };
    let (reloader, fetcher) = setup(&server, config);
    let (fetcher, heard) = heard(fetcher);
    assert!(fetcher.on_unknown_kid("idp").await);
    assert_eq!(decide(&reloader, &key, "a"), Reason::Ok);
    server.set(Mode::Status(503));
    assert!(!fetcher.on_unknown_kid("idp").await);
    assert_eq!(
        decide(&reloader, &key, "a"),
        Reason::Ok,
        "younger than max_stale: kept"
    );
    assert!(!fetcher.health()[0].dropped);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!fetcher.on_unknown_kid("idp").await);
    assert_eq!(decide(&reloader, &key, "a"), Reason::UnknownKid, "dropped");
    let h = &fetcher.health()[0];
    assert!(
        h.dropped && h.age >= Some(Duration::from_millis(400)),
        "{h:?}"
    );
    assert!(!reloader.has_fetched("idp", &server.url));
    assert!(!fetcher.on_unknown_kid("idp").await);
    assert_eq!(
        *heard.lock().unwrap(),
        [
            "installed idp",
            "failed idp",
            "failed idp",
            "dropped idp past 400ms: older",
            "failed idp"
        ],
        "dropped once"
    );
    server.set(good);
    assert!(fetcher.on_unknown_kid("idp").await);
    assert_eq!(decide(&reloader, &key, "a"), Reason::Ok, "back");
    assert!(!fetcher.health()[0].dropped);
}

/// The refresh loop tries a fetch when the keys pass `max_stale` (the
/// source's refresh is 300 s away), so they are dropped on time with no
/// token to trigger it, and the identity provider is not polled meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_loop_drops_keys_when_they_pass_max_stale() {
    let server = serve().await;
    let (key, jwk) = ed_key("a");
    server.set(Mode::Doc {
        body: doc(&[&jwk]),
        cache_control: None,
    });
    let config = FetchConfig {
        max_stale: Some(Duration::from_millis(300)),
        min_refresh: Duration::from_millis(300),
        ..FetchConfig::default()
    };
    let (reloader, fetcher) = setup(&server, config);
    let fetcher = Arc::new(fetcher);
    let looping = Looping::start(&fetcher);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while decide(&reloader, &key, "a") != Reason::Ok {
        assert!(tokio::time::Instant::now() < deadline, "never fetched");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.set(Mode::Status(503));
    while decide(&reloader, &key, "a") == Reason::Ok {
        assert!(tokio::time::Instant::now() < deadline, "never dropped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(decide(&reloader, &key, "a"), Reason::UnknownKid);
    assert!(fetcher.health()[0].dropped);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The first fetch and the one at max_stale; the retry after that backs
    // off (5 s).
    assert_eq!(server.hits(), 2);
    looping.stop().await;
}

#[test]
fn cache_control_max_age() {
    use jotd_keys::max_age;
    assert_eq!(
        max_age("public, max-age=300"),
        Some(Duration::from_secs(300))
    );
    assert_eq!(
        max_age("Max-Age=\"60\", must-revalidate"),
        Some(Duration::from_secs(60))
    );
    assert_eq!(max_age("no-store"), Some(Duration::ZERO));
    assert_eq!(max_age("private"), None);
    assert_eq!(max_age("max-age=abc"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_loop_refreshes_on_max_age_and_stops_on_shutdown() {
    let server = serve().await;
    let (key_a, jwk_a) = ed_key("a");
    let (key_b, jwk_b) = ed_key("b");
    server.set(Mode::Doc {
        body: doc(&[&jwk_a]),
        cache_control: Some("max-age=0"),
    });
    // max-age=0 with a 50 ms floor: the loop refetches about every 50 ms.
    let config = FetchConfig {
        min_refresh: Duration::from_millis(50),
        ..FetchConfig::default()
    };
    let (reloader, fetcher) = setup(&server, config);
    let fetcher = Arc::new(fetcher);
    let looping = Looping::start(&fetcher);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while decide(&reloader, &key_a, "a") != Reason::Ok {
        assert!(
            tokio::time::Instant::now() < deadline,
            "first fetch never happened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Rotate without any unknown-kid trigger: the loop alone must pick it up.
    server.set(Mode::Doc {
        body: doc(&[&jwk_b]),
        cache_control: Some("max-age=0"),
    });
    while decide(&reloader, &key_b, "b") != Reason::Ok {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rotation never picked up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    looping.stop().await;
    let hits = server.hits();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.hits(), hits, "no fetches after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_sources_follow_config_reloads() {
    let server = serve().await;
    let (key, jwk) = ed_key("a");
    server.set(Mode::Doc {
        body: doc(&[&jwk]),
        cache_control: None,
    });
    let text = Arc::new(Mutex::new(
        "[[tenant]]\nid = \"idp\"\nrequire_jwt = false\n".to_owned(),
    ));
    let (read, stamp) = (Arc::clone(&text), Arc::clone(&text));
    let reloader = Arc::new(
        Reloader::start(
            Path::new("/cfg/jotd.toml"),
            Box::new(move |_| Ok(read.lock().unwrap().clone().into_bytes())),
            Box::new(move |_| Some((None, stamp.lock().unwrap().len() as u64))),
        )
        .unwrap(),
    );
    let config = FetchConfig {
        extra_roots_pem: Some(server.ca_pem.clone().into_bytes()),
        ..FetchConfig::default()
    };
    let fetcher = JwksFetcher::new(Arc::clone(&reloader), config).unwrap();
    assert!(fetcher.health().is_empty() && fetcher.refresh_due().await.is_empty());
    // The reloaded config adds a JWKS URL: the fetcher's next pass sees it.
    *text.lock().unwrap() = format!(
        "[[tenant]]\nid = \"idp\"\n[[tenant.jwks]]\ninternal = true\nurl = \"{}\"\nalg = \"EdDSA\"\n",
        server.url
    );
    assert!(matches!(reloader.reload_if_changed(), Some(Ok(_))));
    assert!(fetcher.refresh_due().await.is_empty());
    assert_eq!(fetcher.health().len(), 1);
    assert_eq!(decide(&reloader, &key, "a"), Reason::Ok);
    // And a reload that removes it drops the source.
    *text.lock().unwrap() =
        "[[tenant]]\nid = \"idp\"\nrequire_jwt = false\nleeway_s = 1\n".to_owned();
    assert!(matches!(reloader.reload_if_changed(), Some(Ok(_))));
    assert!(fetcher.health().is_empty());
    // Named again: fetched at once, not at the old source's next refresh (it
    // stayed keyless until then, its health showing the old fetch). Twice: a
    // removal the fetcher never saw (two reloads between its passes) too.
    let with_url = |leeway: u32| {
        format!(
            "[[tenant]]\nid = \"idp\"\nleeway_s = {leeway}\n[[tenant.jwks]]\ninternal = true\nurl = \"{}\"\nalg = \"EdDSA\"\n",
            server.url
        )
    };
    for unseen in [false, true] {
        let before = server.hits();
        if unseen {
            *text.lock().unwrap() =
                "[[tenant]]\nid = \"idp\"\nrequire_jwt = false\nleeway_s = 2\n".to_owned();
            assert!(matches!(reloader.reload_if_changed(), Some(Ok(_))));
        }
        *text.lock().unwrap() = with_url(if unseen { 30 } else { 4 });
        assert!(matches!(reloader.reload_if_changed(), Some(Ok(_))));
        assert!(fetcher.refresh_due().await.is_empty());
        assert_eq!(server.hits(), before + 1, "unseen removal: {unseen}");
        assert_eq!(
            decide(&reloader, &key, "a"),
            Reason::Ok,
            "unseen removal: {unseen}"
        );
    }
}

/// A plain-HTTP server on loopback that serves `body` to anyone and counts requests.
async fn plain_http(body: String) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://127.0.0.1:{}/keys",
        listener.local_addr().unwrap().port()
    );
    let hits = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = tcp.read(&mut buf).await;
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tcp.write_all(response.as_bytes()).await;
        }
    });
    (url, hits)
}

/// An https source never ends on plain http: a redirect that changes the
/// scheme, or one past the limit, fails the fetch (keys kept, nothing
/// installed, the error says why); a same-scheme redirect is followed and the
/// health names the URL the keys came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_never_leave_https_and_are_limited() {
    let server = serve().await;
    let (key, jwk) = ed_key("a");
    let (http_url, http_hits) = plain_http(doc(&[&jwk])).await;
    let config = FetchConfig {
        refetch_interval: Duration::ZERO,
        ..FetchConfig::default()
    };
    let (reloader, fetcher) = setup(&server, config);
    let base = server.url.trim_end_matches("/jwks.json").to_owned();
    let port = base[base.rfind(':').unwrap() + 1..].to_owned();
    let refused = [
        (http_url.clone(), "changes the scheme"),
        (
            http_url.replace("127.0.0.1", "localhost"),
            "changes the scheme",
        ),
        (format!("{base}/jwks.json"), "more than 3 redirects"),
        (format!("https://user@127.0.0.1:{port}/x"), "userinfo"),
        // Internal addresses only at hosts (and ports) a URL marked
        // `internal = true` names (127.0.0.1 at the server's port):
        // by address, in every family and form, and by a name that
        // resolves inside (`localhost` holds the same server and a
        // certificate for it, so only the rule stops it).
        (
            format!("https://127.0.0.2:{port}/jwks.json"),
            "127.0.0.2 is an internal address",
        ),
        (
            "https://169.254.169.254/latest/meta-data/".to_owned(),
            "169.254.169.254 is an internal address",
        ),
        (
            format!("https://[::ffff:127.0.0.1]:{port}/jwks.json"),
            "is an internal address",
        ),
        (
            format!("https://[::1]:{port}/jwks.json"),
            "::1 is an internal address",
        ),
        (
            format!("https://localhost:{port}/jwks.json"),
            "`localhost` resolves to the internal address",
        ),
        // The host marked internal, at a port its URL does not name (an
        // admin port on the identity provider's machine).
        (
            format!(
                "https://127.0.0.1:{}/admin",
                port.parse::<u16>().unwrap().wrapping_add(1).max(1)
            ),
            "marked internal only at the ports",
        ),
        ("https://127.0.0.1/admin".to_owned(), "not 443"),
    ];
    for (location, why) in refused {
        server.set(Mode::Redirect {
            location: location.clone(),
            body: doc(&[&jwk]),
        });
        assert!(!fetcher.on_unknown_kid("idp").await, "{location}");
        let h = &fetcher.health()[0];
        let error = h.last_error.as_ref().expect("the fetch failed").to_string();
        assert!(error.contains(why), "{location}: {error}");
        assert_eq!(h.keys_url, None);
        assert_eq!(
            decide(&reloader, &key, "a"),
            Reason::UnknownKid,
            "{location}"
        );
    }
    assert_eq!(
        http_hits.load(Ordering::SeqCst),
        0,
        "plain http was never asked"
    );

    // https -> https on another path: followed, and the health says where the keys came from.
    let other = format!("{base}/rotated/jwks.json");
    server.set(Mode::Redirect {
        location: other.clone(),
        body: doc(&[&jwk]),
    });
    assert!(fetcher.on_unknown_kid("idp").await);
    let h = &fetcher.health()[0];
    assert_eq!(h.keys_url.as_deref(), Some(other.as_str()));
    assert_eq!(h.url, server.url);
    assert_eq!(decide(&reloader, &key, "a"), Reason::Ok);

    // A failure past a redirect names the server that failed (it showed as
    // the configured URL's); the keys held stay.
    server.set(Mode::Redirect {
        location: other.clone(),
        body: "not a JWKS".to_owned(),
    });
    assert!(!fetcher.on_unknown_kid("idp").await);
    let h = &fetcher.health()[0];
    let error = h.last_error.as_ref().expect("the fetch failed").to_string();
    assert!(
        error.contains(&other) && error.contains("after a redirect"),
        "{error}"
    );
    assert_eq!(decide(&reloader, &key, "a"), Reason::Ok);
}

/// Every fetch is reported to the observer: what was installed, from which
/// URL, which keys were left out and why (a weak key in a fetched JWKS is
/// skipped and named), and failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_observer_hears_installs_skipped_keys_and_failures() {
    let server = serve().await;
    let (key, jwk) = ed_key("a");
    let identity = format!(
        r#"{{"kty":"OKP","crv":"Ed25519","kid":"weak","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode([&[1u8][..], &[0u8; 31]].concat())
    );
    server.set(Mode::Doc {
        body: doc(&[&identity, &jwk]),
        cache_control: None,
    });
    let config = FetchConfig {
        refetch_interval: Duration::ZERO,
        ..FetchConfig::default()
    };
    let (reloader, fetcher) = setup(&server, config);
    let heard = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = Arc::clone(&heard);
    let fetcher = fetcher.with_observer(Box::new(move |event| {
        let line = match event {
            jotd_keys::FetchEvent::Installed {
                tenant,
                keys_url,
                keys,
                skipped,
                ..
            } => format!("installed {tenant} {keys} from {keys_url}; skipped {skipped:?}"),
            jotd_keys::FetchEvent::Failed { tenant, error, .. } => {
                format!("failed {tenant}: {error}")
            }
            jotd_keys::FetchEvent::Dropped { tenant, .. } => format!("dropped {tenant}"),
        };
        log.lock().unwrap().push(line);
    }));
    assert!(fetcher.on_unknown_kid("idp").await);
    assert_eq!(decide(&reloader, &key, "a"), Reason::Ok);
    server.set(Mode::Status(500));
    assert!(!fetcher.on_unknown_kid("idp").await);
    let heard = heard.lock().unwrap().clone();
    assert_eq!(heard.len(), 2, "{heard:?}");
    assert!(
        heard[0].starts_with(&format!("installed idp 1 from {}", server.url))
            && heard[0]
                .contains(r#"kid \"weak\": Ed25519 public key refused: a small-order point"#),
        "{heard:?}"
    );
    assert_eq!(heard[1], "failed idp: HTTP status 500");
}

/// While a fetch is in flight, at most `MAX_WAITERS` unknown-kid triggers queue on
/// it; the rest return at once (their batches are decided on the keys at hand), so
/// a flood of forged kids while the IdP is slow cannot pile up a task per batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_a_slow_fetch_are_bounded() {
    let server = serve().await;
    let (_, jwk) = ed_key("a");
    server.set(Mode::SlowDoc {
        body: doc(&[&jwk]),
        pause: Duration::from_millis(1500),
    });
    let (_reloader, fetcher) = setup(&server, FetchConfig::default());
    let fetcher = Arc::new(fetcher);
    let extra = 60;
    let triggers: Vec<_> = (0..jotd_keys::MAX_WAITERS + 1 + extra)
        .map(|_| {
            let f = Arc::clone(&fetcher);
            tokio::spawn(async move { f.on_unknown_kid("idp").await })
        })
        .collect();
    let mut saw = 0;
    for t in triggers {
        saw += usize::from(t.await.unwrap());
    }
    assert!(
        saw <= jotd_keys::MAX_WAITERS + 1,
        "{saw} triggers waited on one fetch"
    );
    assert!(saw >= 1, "the fetch itself and its waiters see the keys");
    assert_eq!(server.hits(), 1, "one fetch");
}

/// Across tenants too: many tenants sharing one slow identity provider each
/// queue up to `MAX_WAITERS` on its one fetch, so the triggers are also
/// bounded in all (`MAX_TRIGGERS`): past it a trigger returns at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_are_bounded_across_tenants() {
    let server = serve().await;
    let (_, jwk) = ed_key("a");
    server.set(Mode::SlowDoc {
        body: doc(&[&jwk]),
        pause: Duration::from_millis(1500),
    });
    let tenants = jotd_keys::MAX_TRIGGERS / jotd_keys::MAX_WAITERS + 2;
    let text: String = (0..tenants)
        .map(|i| {
            format!(
                "[[tenant]]\nid = \"t{i}\"\n[[tenant.jwks]]\ninternal = true\nurl = \"{}\"\nalg = \"EdDSA\"\n",
                server.url
            )
        })
        .collect();
    let reloader = reloader_of(text);
    let config = FetchConfig {
        extra_roots_pem: Some(server.ca_pem.clone().into_bytes()),
        ..FetchConfig::default()
    };
    let fetcher = Arc::new(JwksFetcher::new(Arc::clone(&reloader), config).unwrap());
    let started = std::time::Instant::now();
    let triggers: Vec<_> = (0..tenants * jotd_keys::MAX_WAITERS)
        .map(|i| {
            let f = Arc::clone(&fetcher);
            tokio::spawn(async move { f.on_unknown_kid(&format!("t{}", i % tenants)).await })
        })
        .collect();
    let mut saw = 0;
    for t in triggers {
        saw += usize::from(t.await.unwrap());
    }
    assert!(saw <= jotd_keys::MAX_TRIGGERS, "{saw} triggers waited");
    assert!(saw >= 1, "the fetch and its waiters see the keys");
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// A due refresh that queued behind an unknown-kid refetch of the same source is
/// not fetched again once that refetch has made the source fresh: one fetch, not
/// two in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_queued_behind_a_refetch_is_not_fetched_twice() {
    let server = serve().await;
    let (key, jwk) = ed_key("a");
    server.set(Mode::SlowDoc {
        body: doc(&[&jwk]),
        pause: Duration::from_millis(600),
    });
    let (reloader, fetcher) = setup(&server, FetchConfig::default());
    let fetcher = Arc::new(fetcher);
    let f = Arc::clone(&fetcher);
    let refetch = tokio::spawn(async move { f.on_unknown_kid("idp").await });
    // The refetch holds the source's flight; the source (never fetched) is due, so
    // the refresh round picks it and waits for that flight.
    while server.hits() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let failures = fetcher.refresh_due().await;
    assert!(failures.is_empty(), "{failures:?}");
    assert!(refetch.await.unwrap());
    assert_eq!(decide(&reloader, &key, "a"), Reason::Ok);
    assert_eq!(
        server.hits(),
        1,
        "the queued refresh found the source fresh"
    );
    assert_eq!(fetcher.health()[0].fetches, 1);
}

/// `slow` tenants (`slow`, `slow1`, …) reading one IdP that accepts
/// connections (the kernel's backlog) and never answers, listed first; then
/// `idp`, served by `server`. Keep the returned listener alive for as long as
/// the IdP should hang.
fn slow_and_healthy(
    server: &Server,
    slow: usize,
    timeout: Duration,
    min_refresh: Option<Duration>,
) -> (std::net::TcpListener, Arc<Reloader>, Arc<JwksFetcher>) {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut text: String = (0..slow)
        .map(|i| {
            let id = if i == 0 { "slow".to_owned() } else { format!("slow{i}") };
            format!(
                "[[tenant]]\nid = \"{id}\"\n[[tenant.jwks]]\ninternal = true\nurl = \"https://127.0.0.1:{port}/jwks.json\"\nalg = \"EdDSA\"\n"
            )
        })
        .collect();
    text.push_str(&format!(
        "[[tenant]]\nid = \"idp\"\n[[tenant.jwks]]\ninternal = true\nurl = \"{}\"\nalg = \"EdDSA\"\n",
        server.url
    ));
    let reloader = reloader_of(text);
    let fetcher = fetcher_for(&reloader, server, timeout, min_refresh);
    (silent, reloader, fetcher)
}

/// A fetcher installing into `reloader` that trusts `server`'s CA.
fn fetcher_for(
    reloader: &Arc<Reloader>,
    server: &Server,
    timeout: Duration,
    min_refresh: Option<Duration>,
) -> Arc<JwksFetcher> {
    let mut config = FetchConfig {
        extra_roots_pem: Some(server.ca_pem.clone().into_bytes()),
        timeout,
        ..FetchConfig::default()
    };
    if let Some(m) = min_refresh {
        config.min_refresh = m;
    }
    Arc::new(JwksFetcher::new(Arc::clone(reloader), config).unwrap())
}

/// Due sources are fetched in parallel: an IdP that hangs until the timeout (listed
/// first here) does not hold back another tenant's keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_idp_does_not_hold_back_other_tenants() {
    let server = serve().await;
    let (key, jwk) = ed_key("a");
    server.set(Mode::Doc {
        body: doc(&[&jwk]),
        cache_control: None,
    });
    let (_silent, reloader, fetcher) = slow_and_healthy(&server, 1, Duration::from_secs(4), None);
    let f = Arc::clone(&fetcher);
    let refresh = tokio::spawn(async move { f.refresh_due().await });
    let start = tokio::time::Instant::now();
    while decide(&reloader, &key, "a") != Reason::Ok {
        assert!(
            !refresh.is_finished(),
            "the healthy tenant's keys arrive while the silent IdP is still being waited on"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(start.elapsed() < Duration::from_secs(4));
    let failures = refresh.await.unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].0, "slow");
}

/// The background loop does not wait for a round to end: while one IdP hangs
/// until the timeout, another tenant's source that falls due again and again is
/// fetched each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_loop_keeps_going_while_one_idp_hangs() {
    let server = serve().await;
    let (_, jwk) = ed_key("a");
    server.set(Mode::Doc {
        body: doc(&[&jwk]),
        cache_control: Some("max-age=0"),
    });
    let (_silent, _reloader, fetcher) = slow_and_healthy(
        &server,
        1,
        Duration::from_secs(30),
        Some(Duration::from_millis(100)),
    );
    let looping = Looping::start(&fetcher);
    // The silent IdP holds its fetch for 30 s; the healthy one falls due every 100 ms.
    let start = tokio::time::Instant::now();
    while server.hits() < 4 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the healthy source was fetched {} times in 10 s while the other hung",
            server.hits()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    looping.stop().await;
}

/// Tenants that read one URL alike take one of the loop's fetch slots, not
/// one each: 20 tenants behind one hanging IdP, listed first, held all 16
/// slots until its timeout (here 30 s), and another IdP's tenant waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_sharing_a_hanging_idp_take_one_fetch_slot() {
    let server = serve().await;
    let (key, jwk) = ed_key("a");
    server.set(Mode::Doc {
        body: doc(&[&jwk]),
        cache_control: None,
    });
    let (silent, reloader, fetcher) = slow_and_healthy(&server, 20, Duration::from_secs(30), None);
    let looping = Looping::start(&fetcher);
    let start = tokio::time::Instant::now();
    while decide(&reloader, &key, "a") != Reason::Ok {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the other IdP's tenant got no keys in 10 s while the shared one hung"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    looping.stop().await;
    // A one-off round the same way: a new key on the healthy IdP arrives
    // while the shared one still hangs.
    let (key2, jwk2) = ed_key("b");
    server.set(Mode::Doc {
        body: doc(&[&jwk, &jwk2]),
        cache_control: None,
    });
    let f = fetcher_for(&reloader, &server, Duration::from_secs(30), None);
    let round = tokio::spawn(async move { f.refresh_due().await });
    let start = tokio::time::Instant::now();
    while decide(&reloader, &key2, "b") != Reason::Ok {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "refresh_due: the other IdP's tenant got no new key in 10 s while the shared one hung"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    round.abort();
    drop(silent);
}

/// A JWKS fetched from a URL gives no symmetric (`oct`) keys unless its
/// source says `symmetric_keys = true`: the fetcher sends no credentials, so
/// whoever can fetch the URL holds the secret. The document's other keys are
/// installed; a JWKS file may hold symmetric keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_symmetric_keys_need_the_sources_consent() {
    let server = serve().await;
    let secret = std::array::from_fn::<u8, 32, _>(|i| (i as u8).wrapping_mul(7).wrapping_add(7));
    let ed = SigningKey::generate(Algorithm::EdDsa).unwrap();
    let spki = ed.verifying_key().unwrap().spki_der().unwrap();
    server.set(Mode::Doc {
        body: format!(
            r#"{{"keys":[{{"kty":"oct","kid":"h","alg":"HS256","k":"{}"}},{{"kty":"OKP","crv":"Ed25519","kid":"e","x":"{}"}}]}}"#,
            URL_SAFE_NO_PAD.encode(secret),
            URL_SAFE_NO_PAD.encode(&spki[12..])
        ),
        cache_control: None,
    });
    let hs = SigningKey::from_hmac_secret(Algorithm::Hs256, &secret).unwrap();
    for (consent, hs_ok) in [("", false), ("symmetric_keys = true\n", true)] {
        let url = server.url.clone();
        let (reloader, fetcher) = fetching(&server, move || {
            format!(
                "[[tenant]]\nid = \"idp\"\n[[tenant.jwks]]\ninternal = true\nurl = \"{url}\"\n{consent}"
            )
        });
        assert!(fetcher.refresh_due().await.is_empty());
        assert_eq!(decide(&reloader, &ed, "e"), Reason::Ok, "{consent:?}");
        // Without consent the HMAC key is not there (nor, then, HS256 among
        // the tenant's algorithms).
        assert_eq!(
            decide(&reloader, &hs, "h") == Reason::Ok,
            hs_ok,
            "{consent:?}"
        );
    }
    // Consent withdrawn by a reload: the HMAC key of the last fetch goes at
    // once (not at the next refresh), and the source is fetched again now.
    let consent = Arc::new(Mutex::new(true));
    let (url, current) = (server.url.clone(), Arc::clone(&consent));
    let (reloader, fetcher) = fetching(&server, move || {
        let line = if *current.lock().unwrap() {
            "symmetric_keys = true\n"
        } else {
            ""
        };
        format!(
            "[[tenant]]\nid = \"idp\"\n[[tenant.jwks]]\ninternal = true\nurl = \"{url}\"\nrefresh_s = 3600\n{line}"
        )
    });
    assert!(fetcher.refresh_due().await.is_empty());
    assert_eq!(decide(&reloader, &hs, "h"), Reason::Ok);
    *consent.lock().unwrap() = false;
    reloader.reload().unwrap();
    assert_ne!(
        decide(&reloader, &hs, "h"),
        Reason::Ok,
        "gone with the reload"
    );
    assert!(
        fetcher.next_due().unwrap() <= tokio::time::Instant::now(),
        "due now"
    );
    assert!(fetcher.refresh_due().await.is_empty());
    assert_ne!(decide(&reloader, &hs, "h"), Reason::Ok);
    assert_eq!(
        decide(&reloader, &ed, "e"),
        Reason::Ok,
        "the other key is back"
    );
}

/// A reload that changes a source's `alg` makes it due at once: the keys read
/// under the old `alg` are not used, so waiting for the refresh would leave the
/// tenant without URL keys for up to `refresh_s`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_alg_is_fetched_at_once() {
    let server = serve().await;
    let secret = std::array::from_fn::<u8, 64, _>(|i| (i as u8).wrapping_mul(7).wrapping_add(7));
    server.set(Mode::Doc {
        body: format!(
            r#"{{"keys":[{{"kty":"oct","kid":"h","k":"{}"}}]}}"#,
            URL_SAFE_NO_PAD.encode(secret)
        ),
        cache_control: None,
    });
    let alg = Arc::new(Mutex::new("HS256"));
    let url = server.url.clone();
    let current = Arc::clone(&alg);
    let (reloader, fetcher) = fetching(&server, move || {
        format!(
            "[[tenant]]\nid = \"idp\"\n[[tenant.jwks]]\ninternal = true\nurl = \"{url}\"\nrefresh_s = 3600\nsymmetric_keys = true\nalg = \"{}\"\n",
            current.lock().unwrap()
        )
    });
    let hs = |alg| SigningKey::from_hmac_secret(alg, &secret).unwrap();
    assert!(fetcher.refresh_due().await.is_empty());
    assert_eq!(decide(&reloader, &hs(Algorithm::Hs256), "h"), Reason::Ok);
    assert!(fetcher.next_due().unwrap() > tokio::time::Instant::now() + Duration::from_secs(3000));
    assert_eq!(server.hits(), 1);

    *alg.lock().unwrap() = "HS384";
    reloader.reload().unwrap();
    assert_eq!(
        decide(&reloader, &hs(Algorithm::Hs384), "h"),
        Reason::UnknownKid
    );
    assert!(
        fetcher.next_due().unwrap() <= tokio::time::Instant::now(),
        "the source is due now"
    );
    assert!(fetcher.refresh_due().await.is_empty());
    assert_eq!(server.hits(), 2);
    assert_eq!(decide(&reloader, &hs(Algorithm::Hs384), "h"), Reason::Ok);
    assert_ne!(decide(&reloader, &hs(Algorithm::Hs256), "h"), Reason::Ok);
}

/// Settings that spin against the identity provider or overflow a clock are
/// refused by name when the fetcher is built (and by `config check`).
#[test]
fn fetch_settings_out_of_range_are_refused_by_name() {
    jotd_keys::check_fetch_config(&FetchConfig::default()).unwrap();
    type Edit = fn(&mut FetchConfig);
    let cases: [(&str, Edit); 10] = [
        ("timeout", |c| c.timeout = Duration::ZERO),
        // Keys would pass max_stale before a refetch is allowed.
        ("at least min_refresh", |c| {
            c.max_stale = Some(Duration::from_secs(5));
        }),
        ("max_stale", |c| c.max_stale = Some(Duration::ZERO)),
        ("max_stale", |c| c.max_stale = Some(Duration::MAX)),
        ("timeout", |c| c.timeout = Duration::from_secs(601)),
        ("refetch_interval", |c| c.refetch_interval = Duration::MAX),
        ("min_refresh", |c| c.min_refresh = Duration::ZERO),
        ("retry_after", |c| c.retry_after = Duration::ZERO),
        ("max_bytes", |c| c.max_bytes = 0),
        ("max_bytes", |c| c.max_bytes = usize::MAX),
    ];
    for (name, edit) in cases {
        let mut c = FetchConfig::default();
        edit(&mut c);
        let e = jotd_keys::check_fetch_config(&c).unwrap_err().to_string();
        assert!(e.contains(name), "{name}: {e}");
    }
}

/// A fetched kid another source of the tenant already has with other key
/// material (here a static key) verifies nothing: the first source wins.
/// That is reported with the install (the daemon logs it), not left silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetched_kid_another_source_has_is_reported_as_shadowed() {
    let server = serve().await;
    let (key_a, jwk_a) = ed_key("a");
    let (key_b, jwk_b) = ed_key("b");
    server.set(Mode::Doc {
        body: doc(&[&jwk_a, &jwk_b]),
        cache_control: None,
    });
    let url = server.url.clone();
    let (reloader, fetcher) = fetching(&server, move || {
        format!(
            "[[tenant]]\nid = \"idp\"\n[[tenant.key]]\nkid = \"a\"\nalg = \"HS256\"\nsecret = \"0123456789abcdefghijklmnopqrstuv\"\n[[tenant.jwks]]\ninternal = true\nurl = \"{url}\"\nrefresh_s = 300\nalg = \"EdDSA\"\n"
        )
    });
    let heard = Arc::new(Mutex::new(Vec::<Vec<String>>::new()));
    let log = Arc::clone(&heard);
    let fetcher = fetcher.with_observer(Box::new(move |event| {
        if let jotd_keys::FetchEvent::Installed { shadowed, .. } = event {
            log.lock().unwrap().push(shadowed.to_vec());
        }
    }));
    assert!(fetcher.on_unknown_kid("idp").await);
    assert_eq!(heard.lock().unwrap().clone(), [vec!["a".to_owned()]]);
    assert_eq!(decide(&reloader, &key_b, "b"), Reason::Ok);
    assert_eq!(
        decide(&reloader, &key_a, "a"),
        Reason::KeyAlgMismatch,
        "the static HS256 key holds kid a"
    );
}

/// The same, the other way round and across kinds: a URL source listed ahead
/// of a JWKS file holds kid "b" with other material, so the file's "b" (read
/// at start, before any fetch, so nothing was reported then) verifies
/// nothing once the URL's keys arrive. The fetch reports it though the
/// shadowed key is the file's, not the document's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetched_kid_that_shadows_a_later_file_is_reported() {
    let server = serve().await;
    let (key_b, jwk_b) = ed_key("b");
    let (file_b, file_jwk_b) = ed_key("b");
    let (file_c, file_jwk_c) = ed_key("c");
    server.set(Mode::Doc {
        body: doc(&[&jwk_b]),
        cache_control: None,
    });
    let config = format!(
        "[[tenant]]\nid = \"idp\"\n[[tenant.jwks]]\ninternal = true\nurl = \"{}\"\nrefresh_s = 300\nalg = \"EdDSA\"\n[[tenant.jwks]]\nfile = \"keys.json\"\nalg = \"EdDSA\"\n",
        server.url
    );
    let file = doc(&[&file_jwk_b, &file_jwk_c]);
    let reloader = Arc::new(
        Reloader::start(
            Path::new("/cfg/jotd.toml"),
            Box::new(move |path: &Path| {
                Ok(if path.ends_with("keys.json") {
                    file.clone().into_bytes()
                } else {
                    config.clone().into_bytes()
                })
            }),
            Box::new(|_| Some((None, 1))),
        )
        .unwrap(),
    );
    // At start the URL holds nothing yet: the file's keys serve, no shadow.
    assert!(reloader.config().shadowed_kids().is_empty());
    assert_eq!(decide(&reloader, &file_b, "b"), Reason::Ok);
    let settings = FetchConfig {
        extra_roots_pem: Some(server.ca_pem.clone().into_bytes()),
        ..FetchConfig::default()
    };
    let heard = Arc::new(Mutex::new(Vec::<Vec<String>>::new()));
    let log = Arc::clone(&heard);
    let fetcher = JwksFetcher::new(Arc::clone(&reloader), settings)
        .unwrap()
        .with_observer(Box::new(move |event| {
            if let jotd_keys::FetchEvent::Installed { shadowed, .. } = event {
                log.lock().unwrap().push(shadowed.to_vec());
            }
        }));
    assert!(fetcher.on_unknown_kid("idp").await);
    assert_eq!(heard.lock().unwrap().clone(), [vec!["b".to_owned()]]);
    assert_eq!(reloader.shadowed_kids("idp"), ["b"]);
    assert_eq!(
        decide(&reloader, &key_b, "b"),
        Reason::Ok,
        "the URL, listed first, wins"
    );
    assert_eq!(decide(&reloader, &file_b, "b"), Reason::BadSignature);
    assert_eq!(decide(&reloader, &file_c, "c"), Reason::Ok);
    assert!(reloader.shadowed_kids("nobody").is_empty());
    // What the daemon warns about after a reload: every tenant's, fetched keys included.
    reloader.reload().unwrap();
    assert_eq!(
        reloader.shadowed_all(),
        [("idp".to_owned(), "b".to_owned())]
    );
    assert!(reloader.config().shadowed_kids().is_empty(), "files alone");
}

/// An identity provider that adds a key of a new algorithm under a new kid
/// (RS256 to ES256, say), for a tenant whose algorithms follow its keys (no
/// `alg` on the source, no `algorithms`): the first token of the new key is
/// `unknown_kid`, so a front door refetches, and verifies once fetched. It
/// was `alg_not_allowed` until the next periodic refresh. A known kid with
/// another algorithm, and a tenant with `algorithms` configured, stay
/// `alg_not_allowed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_of_a_new_algorithm_is_an_unknown_kid_and_fetched() {
    let server = serve().await;
    let (ed, jwk_ed) = ed_key("a");
    let es = SigningKey::generate(Algorithm::Es256).unwrap();
    let spki = es.verifying_key().unwrap().spki_der().unwrap();
    let point = &spki[spki.len() - 64..];
    let jwk_es = format!(
        r#"{{"kty":"EC","crv":"P-256","kid":"b","x":"{}","y":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(&point[..32]),
        URL_SAFE_NO_PAD.encode(&point[32..])
    );
    server.set(Mode::Doc {
        body: doc(&[&jwk_ed]),
        cache_control: None,
    });
    for (configured, want_before) in [
        ("", Reason::UnknownKid),
        ("algorithms = [\"EdDSA\"]\n", Reason::AlgNotAllowed),
    ] {
        let url = server.url.clone();
        let (reloader, fetcher) = fetching(&server, move || {
            format!(
                "[[tenant]]\nid = \"idp\"\n{configured}[[tenant.jwks]]\ninternal = true\nurl = \"{url}\"\n"
            )
        });
        server.set(Mode::Doc {
            body: doc(&[&jwk_ed]),
            cache_control: None,
        });
        assert!(fetcher.refresh_due().await.is_empty());
        assert_eq!(decide(&reloader, &ed, "a"), Reason::Ok);
        // A known kid under another algorithm is still not allowed.
        assert_eq!(decide(&reloader, &es, "a"), Reason::AlgNotAllowed);
        server.set(Mode::Doc {
            body: doc(&[&jwk_ed, &jwk_es]),
            cache_control: None,
        });
        assert_eq!(decide(&reloader, &es, "b"), want_before, "{configured}");
        assert!(fetcher.on_unknown_kid("idp").await);
        let after = if configured.is_empty() {
            Reason::Ok
        } else {
            Reason::AlgNotAllowed
        };
        assert_eq!(decide(&reloader, &es, "b"), after, "{configured}");
    }
}

/// Tenants of one identity provider (one URL, read alike): one fetch serves
/// them all. The periodic fetch is one request, not one per tenant; a batch
/// with a new kid for every tenant, all at once, is one more request (single
/// flight and one rate limit per URL), and every tenant gets the new key.
/// Before, each (tenant, URL) fetched on its own: N tenants, N requests per
/// refresh and per trigger, which a batch of random kids could set off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_sharing_a_url_share_its_fetches() {
    const TENANTS: usize = 20;
    let server = serve().await;
    let (a, jwk_a) = ed_key("a");
    let (b, jwk_b) = ed_key("b");
    server.set(Mode::Doc {
        body: doc(&[&jwk_a]),
        cache_control: None,
    });
    let url = server.url.clone();
    let (reloader, fetcher) = fetching(&server, move || {
        (0..TENANTS)
            .map(|i| {
                format!("[[tenant]]\nid = \"t{i}\"\n[[tenant.jwks]]\ninternal = true\nurl = \"{url}\"\nalg = \"EdDSA\"\n")
            })
            .collect::<String>()
            // One more reading the same URL another way (no `alg`): fetched
            // on its own.
            + &format!("[[tenant]]\nid = \"other\"\n[[tenant.jwks]]\ninternal = true\nurl = \"{url}\"\n")
    });
    assert!(fetcher.refresh_due().await.is_empty());
    assert_eq!(server.hits(), 2, "one per way of reading the URL");
    for i in 0..TENANTS {
        assert_eq!(decide_for(&reloader, &format!("t{i}"), &a, "a"), Reason::Ok);
    }
    assert!(fetcher.refresh_due().await.is_empty());
    assert_eq!(server.hits(), 2, "nothing due");
    // The provider adds key b; every tenant sees a token with it at once
    // (the answer is slow, so all of them ask while the one fetch is in
    // flight).
    server.set(Mode::SlowDoc {
        body: doc(&[&jwk_a, &jwk_b]),
        pause: Duration::from_millis(300),
    });
    let fetcher = Arc::new(fetcher);
    let triggers: Vec<_> = (0..TENANTS)
        .map(|i| {
            let f = Arc::clone(&fetcher);
            tokio::spawn(async move { f.on_unknown_kid(&format!("t{i}")).await })
        })
        .collect();
    for t in triggers {
        assert!(t.await.unwrap(), "every trigger sees the refetched keys");
    }
    assert_eq!(server.hits(), 3, "one refetch for all of them");
    for i in 0..TENANTS {
        assert_eq!(decide_for(&reloader, &format!("t{i}"), &b, "b"), Reason::Ok);
    }
    // And again within the rate limit: nothing fetched.
    fetcher.on_unknown_kid("t3").await;
    assert_eq!(server.hits(), 3);
    // A failure is shared too: a fresh fetcher whose first pass fails is one
    // request, and every tenant's source records the failure (and backs off).
    server.set(Mode::Status(503));
    let before = server.hits();
    let url = server.url.clone();
    let (_reloader, fresh) = fetching(&server, move || {
        (0..TENANTS)
            .map(|i| {
                format!(
                    "[[tenant]]\nid = \"t{i}\"\n[[tenant.jwks]]\ninternal = true\nurl = \"{url}\"\nalg = \"EdDSA\"\n"
                )
            })
            .collect::<String>()
    });
    assert_eq!(fresh.refresh_due().await.len(), 1, "one failed fetch");
    assert_eq!(server.hits(), before + 1);
    let health = fresh.health();
    assert_eq!(health.len(), TENANTS);
    assert!(
        health
            .iter()
            .all(|h| h.failures == 1 && h.last_error.is_some())
    );
    assert!(fresh.refresh_due().await.is_empty(), "all back off");
    assert_eq!(server.hits(), before + 1);
}

/// A refetch for an unknown kid that fails (outside the refresh loop) makes
/// its source due again after `retry_after`, sooner than its next refresh:
/// the loop retries it then, not at the refresh 300 s away. (The loop keeps
/// its sources on an agenda by due time; a due time moved earlier from
/// outside it must reach it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refetch_is_retried_by_the_loop() {
    let server = serve().await;
    let (key_a, jwk_a) = ed_key("a");
    let (key_b, jwk_b) = ed_key("b");
    server.set(Mode::Doc {
        body: doc(&[&jwk_a]),
        cache_control: None,
    });
    let config = FetchConfig {
        retry_after: Duration::from_millis(200),
        refetch_interval: Duration::ZERO,
        ..FetchConfig::default()
    };
    let (reloader, fetcher) = setup(&server, config);
    let fetcher = Arc::new(fetcher);
    let looping = Looping::start(&fetcher);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while decide(&reloader, &key_a, "a") != Reason::Ok {
        assert!(tokio::time::Instant::now() < deadline, "no first fetch");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.hits(), 1);
    server.set(Mode::Status(500));
    assert!(!fetcher.on_unknown_kid("idp").await, "the refetch failed");
    assert_eq!(server.hits(), 2);
    // The provider is back with the new key; nobody triggers again.
    server.set(Mode::Doc {
        body: doc(&[&jwk_a, &jwk_b]),
        cache_control: None,
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while decide(&reloader, &key_b, "b") != Reason::Ok {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the loop did not retry the source a refetch failed ({} fetches)",
            server.hits()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    looping.stop().await;
}

/// Free fetch slots go to the source due longest ago, not the one listed
/// first: 40 identity providers that never answer (1 s timeout, retried
/// after 1 ms), listed ahead of a healthy one, kept every slot busy with
/// each other in config order, and the healthy tenant waited for as long as
/// their back-off stayed under the timeout (about ten rounds). By due time
/// it is fetched in the third round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_slots_go_by_due_time_not_config_order() {
    let server = serve().await;
    let (key, jwk) = ed_key("a");
    server.set(Mode::Doc {
        body: doc(&[&jwk]),
        cache_control: None,
    });
    let silent: Vec<std::net::TcpListener> = (0..40)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let mut text: String = silent
        .iter()
        .enumerate()
        .map(|(i, l)| {
            format!(
                "[[tenant]]\nid = \"silent{i}\"\n[[tenant.jwks]]\ninternal = true\nurl = \"https://127.0.0.1:{}/jwks.json\"\nalg = \"EdDSA\"\n",
                l.local_addr().unwrap().port()
            )
        })
        .collect();
    text.push_str(&format!(
        "[[tenant]]\nid = \"idp\"\n[[tenant.jwks]]\ninternal = true\nurl = \"{}\"\nalg = \"EdDSA\"\n",
        server.url
    ));
    let reloader = reloader_of(text);
    let config = FetchConfig {
        extra_roots_pem: Some(server.ca_pem.clone().into_bytes()),
        timeout: Duration::from_secs(1),
        retry_after: Duration::from_millis(1),
        ..FetchConfig::default()
    };
    let fetcher = Arc::new(JwksFetcher::new(Arc::clone(&reloader), config).unwrap());
    let looping = Looping::start(&fetcher);
    let start = tokio::time::Instant::now();
    while decide(&reloader, &key, "a") != Reason::Ok {
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "the healthy tenant listed last got no keys in 6 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    looping.stop().await;
    drop(silent);
}

/// Unknown-kid triggers that wait on one URL's fetch are bounded per URL,
/// whichever tenants they name: forged kids naming six tenants behind one
/// slow identity provider (256 waiters each, counted per tenant) held all
/// 1,024 triggers, and a real rotation at another provider went unfetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_shared_idp_leaves_triggers_for_other_providers() {
    let slow = serve().await;
    let healthy = serve().await;
    let (_, jwk) = ed_key("a");
    slow.set(Mode::SlowDoc {
        body: doc(&[&jwk]),
        pause: Duration::from_secs(3),
    });
    let (key_b, jwk_b) = ed_key("b");
    healthy.set(Mode::Doc {
        body: doc(&[&jwk_b]),
        cache_control: None,
    });
    let tenants = jotd_keys::MAX_TRIGGERS / jotd_keys::MAX_WAITERS + 2;
    let mut text: String = (0..tenants)
        .map(|i| {
            format!(
                "[[tenant]]\nid = \"t{i}\"\n[[tenant.jwks]]\ninternal = true\nurl = \"{}\"\nalg = \"EdDSA\"\n",
                slow.url
            )
        })
        .collect();
    text.push_str(&format!(
        "[[tenant]]\nid = \"other\"\n[[tenant.jwks]]\ninternal = true\nurl = \"{}\"\nalg = \"EdDSA\"\n",
        healthy.url
    ));
    let reloader = reloader_of(text);
    // Both test servers' CAs.
    let roots = format!("{}{}", slow.ca_pem, healthy.ca_pem);
    let config = FetchConfig {
        extra_roots_pem: Some(roots.into_bytes()),
        ..FetchConfig::default()
    };
    let fetcher = Arc::new(JwksFetcher::new(Arc::clone(&reloader), config).unwrap());
    let flood: Vec<_> = (0..tenants * jotd_keys::MAX_WAITERS)
        .map(|i| {
            let f = Arc::clone(&fetcher);
            tokio::spawn(async move { f.on_unknown_kid(&format!("t{}", i % tenants)).await })
        })
        .collect();
    while slow.hits() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Every flooding trigger has queued or returned by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        fetcher.on_unknown_kid("other").await,
        "the other provider's tenant found no trigger free"
    );
    assert_eq!(decide_for(&reloader, "other", &key_b, "b"), Reason::Ok);
    let mut saw = 0;
    for t in flood {
        saw += usize::from(t.await.unwrap());
    }
    assert!(saw <= jotd_keys::MAX_WAITERS + 1, "{saw} triggers waited");
    assert_eq!(slow.hits(), 1, "one fetch of the slow provider");
}
