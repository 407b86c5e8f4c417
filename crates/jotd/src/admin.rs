//! The admin listener (HTTP/1.1, hyper): `/metrics` (Prometheus text),
//! `/healthz` (alive), `/readyz` (ready to take traffic). Bind it to a private
//! address: it has no authentication.

use crate::metrics::Metrics;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use jotd_keys::{JwksFetcher, Reloader};
use jotd_transport::slots::{Admitted, ConnectionSlots, SlotRule};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What readiness looks at.
pub(crate) struct Health {
    pub(crate) reloader: Arc<Reloader>,
    pub(crate) fetcher: Arc<JwksFetcher>,
    pub(crate) draining: Arc<AtomicBool>,
    /// Set once every JWKS URL named at start has been tried
    /// ([`watch_first_fetches`]): from then on an untried URL (one a reload
    /// added) degrades readiness instead of failing it.
    pub(crate) started: Arc<AtomicBool>,
    /// The last answer and when it was worked out: probes pipelined on many
    /// connections cost one walk of every tenant and JWKS source per
    /// [`READY_FOR`], not one each, on the I/O threads that serve batches.
    pub(crate) last: std::sync::Mutex<Option<(std::time::Instant, Result<String, String>)>>,
}

/// How long one readiness answer is reused (a drain shows at once).
const READY_FOR: Duration = Duration::from_millis(250);

/// Sets `started` once every source the fetcher holds has been tried (a
/// fetch finished, good or not), checking every 100 ms.
pub(crate) async fn watch_first_fetches(fetcher: Arc<JwksFetcher>, started: Arc<AtomicBool>) {
    loop {
        // Every source, on the blocking pool (100k of them is no walk for
        // the I/O threads), without the health report (a redacted URL each).
        let f = Arc::clone(&fetcher);
        let tried = tokio::task::spawn_blocking(move || f.all_tried())
            .await
            .unwrap_or(false);
        if tried {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.store(true, Ordering::SeqCst);
}

/// A JWKS source is stale past this many refresh intervals (its keys still serve).
pub(crate) const STALE_REFRESHES: u32 = 3;

impl Health {
    /// `Ok(summary)` when ready; `Err(reasons)` otherwise.
    ///
    /// Readiness answers "send this replica traffic?", so it fails only on what
    /// makes this replica worse than a fresh peer: draining, no keys at all, or,
    /// while starting, a JWKS URL not tried yet (the first fetch is seconds
    /// away; a URL a reload adds later is not waited for: every replica adds it
    /// at once, and a hanging IdP would fail them all together). A URL
    /// that failed or went stale is reported in the body (`degraded: …`) and in
    /// `jotd_jwks_stale`, but keeps the replica ready: every replica sees the same
    /// identity provider, so failing readiness on it would pull the whole pool,
    /// every tenant, out of the balancer for one tenant's outage.
    pub(crate) fn ready(&self) -> Result<String, String> {
        // Draining is the whole answer (and shows at once): no walk of every
        // tenant and source per probe while the replica winds down.
        if self.draining.load(Ordering::SeqCst) {
            return Err("not ready: draining\n".to_owned());
        }
        // A poisoned lock (a panic while working an answer out) keeps the
        // reuse: skipped, every later probe walked every tenant and source.
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, answer)) = last.as_ref()
            && at.elapsed() < READY_FOR
        {
            return answer.clone();
        }
        let answer = self.work_out();
        *last = Some((std::time::Instant::now(), answer.clone()));
        answer
    }

    fn work_out(&self) -> Result<String, String> {
        let mut problems = Vec::new();
        let mut degraded = Vec::new();
        if self.draining.load(Ordering::SeqCst) {
            problems.push("draining".to_owned());
        }
        let snap = self.reloader.store().load();
        // No key at all is a replica that failed to load them, unless no
        // tenant needs one (every tenant `require_jwt = false`: a valid config).
        let keys: usize = snap.tenants().map(|t| t.keys.len()).sum();
        let health = self.fetcher.health();
        if keys == 0 && snap.tenants().any(|t| t.require_jwt) {
            // Keys `jwks_fetch.max_stale_s` dropped are gone on every
            // replica alike (they all fetch the same URL): degraded, listed
            // below, not a reason to pull the whole pool.
            if !health.iter().any(|h| h.dropped) {
                problems.push("no keys loaded".to_owned());
            }
        }
        for h in health {
            let budget = h.refresh * STALE_REFRESHES;
            let error = h
                .last_error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            match h.age {
                Some(age) if h.dropped => degraded.push(format!(
                    "jwks {} (tenant {}) keys dropped: last good fetch {}s ago, past jwks_fetch.max_stale_s{error}",
                    h.url,
                    h.tenant,
                    age.as_secs()
                )),
                None if !h.tried && !self.started.load(Ordering::SeqCst) => {
                    problems.push(format!(
                        "jwks {} (tenant {}) not fetched yet",
                        h.url, h.tenant
                    ));
                }
                None if !h.tried => degraded.push(format!(
                    "jwks {} (tenant {}) not fetched yet",
                    h.url, h.tenant
                )),
                None => degraded.push(format!(
                    "jwks {} (tenant {}) never fetched{error}",
                    h.url, h.tenant
                )),
                Some(age) if age > budget => degraded.push(format!(
                    "jwks {} (tenant {}) stale: last good fetch {}s ago, budget {}s{error}",
                    h.url,
                    h.tenant,
                    age.as_secs(),
                    budget.as_secs()
                )),
                Some(_) => {}
            }
        }
        let degraded = if degraded.is_empty() {
            String::new()
        } else {
            format!("; degraded: {}", listed(&degraded))
        };
        if problems.is_empty() {
            Ok(format!(
                "ready: generation {}, {} tenants, {keys} keys{degraded}\n",
                snap.generation(),
                snap.len()
            ))
        } else {
            Err(format!("not ready: {}{degraded}\n", listed(&problems)))
        }
    }
}

/// Most sources `/readyz` names in each list: with 100k tenants behind one
/// identity provider that is down, the answer was ~12 MB, copied per probe
/// (the metrics and the log name every source).
const READY_LISTED: usize = 20;

/// `items` joined, the first [`READY_LISTED`], then how many more.
fn listed(items: &[String]) -> String {
    let mut out = items
        .iter()
        .take(READY_LISTED)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("; ");
    if items.len() > READY_LISTED {
        out.push_str(&format!(
            "; and {} more (jotd_jwks_* metrics and the log name each)",
            items.len() - READY_LISTED
        ));
    }
    out
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

fn route(
    req: &hyper::http::request::Parts,
    health: &Health,
    metrics: Option<&Metrics>,
) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method != Method::GET && req.method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into(), PLAIN);
        // RFC 9110 15.5.6: a 405 names the methods the resource allows.
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    match req.uri.path() {
        "/metrics" => match metrics {
            Some(m) => text(
                StatusCode::OK,
                m.render(),
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            None => text(
                StatusCode::NOT_FOUND,
                "metrics are off (--no-metrics)\n".into(),
                PLAIN,
            ),
        },
        "/healthz" => text(StatusCode::OK, "ok\n".into(), PLAIN),
        "/readyz" => match health.ready() {
            Ok(s) => text(StatusCode::OK, s, PLAIN),
            Err(s) => text(StatusCode::SERVICE_UNAVAILABLE, s, PLAIN),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz, /readyz\n".into(),
            PLAIN,
        ),
    }
}

/// Connections served at once. Scrapers and probes need a handful; the cap keeps
/// idle or slow clients (anything that can reach the port: it has no
/// authentication) from piling up tasks and buffers. At the cap a connection is
/// closed to make room ([`SlotRule::MakeRoom`]): a client holding many slots
/// loses its own, never a probe in the middle of its request.
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// Time for a client to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Request head buffer (hyper's default is ~400 KB); admin requests are one line.
const MAX_HEAD_BYTES: usize = 16 << 10;

/// How long one connection is served before it is asked to close: a
/// request already arriving or answered then is finished first (hyper's
/// graceful shutdown), so a scraper that keeps a connection busy sees a
/// clean close between answers, never a cut inside one.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// After [`CONNECTION_LIFETIME`], how long that last answer may take before
/// the connection is dropped (a stuck or slow-reading client).
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Binds and serves until `stop`; returns the bound address.
pub(crate) async fn start(
    addr: SocketAddr,
    health: Health,
    metrics: Option<Arc<Metrics>>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    start_with(
        addr,
        Arc::new(health),
        metrics,
        stop,
        CONNECTION_LIFETIME,
        CLOSE_GRACE,
    )
    .await
}

/// [`start`] with the connection lifetime and grace given (tests shorten them).
async fn start_with(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Option<Arc<Metrics>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    lifetime: Duration,
    grace: Duration,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let slots = ConnectionSlots::new(
        MAX_CONNECTIONS,
        SlotRule::MakeRoom,
        jotd_transport::slots::IPV6_PREFIX,
    );
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                _ = crate::stopped(&mut stop) => return,
                accepted = listener.accept() => match accepted {
                    Ok(s) => s,
                    Err(_) => {
                        // Out of fds or similar: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let slot = match slots.admit(peer.ip(), Instant::now()) {
                Admitted::In { slot, closed } => {
                    if closed > 0 {
                        tracing::debug!(%peer, "admin connection closed to make room: {MAX_CONNECTIONS} open");
                    }
                    slot
                }
                Admitted::Refused => {
                    tracing::debug!(%peer, "admin connection refused: {MAX_CONNECTIONS} open, each from another address and younger than {:?}", jotd_transport::slots::MIN_AGE);
                    drop(stream);
                    continue;
                }
            };
            let health = Arc::clone(&health);
            let metrics = metrics.clone();
            tokio::spawn(async move {
                // Answers are worked out on the blocking pool: a /metrics
                // render or a readiness walk of every tenant stays off the
                // I/O threads that serve batches.
                let service = hyper::service::service_fn(move |req: Request<_>| {
                    let (health, metrics) = (Arc::clone(&health), metrics.clone());
                    let (parts, _body) = req.into_parts();
                    async move {
                        let r = tokio::task::spawn_blocking(move || {
                            route(&parts, &health, metrics.as_deref())
                        })
                        .await
                        .unwrap_or_else(|_| {
                            text(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "internal error\n".into(),
                                "text/plain; charset=utf-8",
                            )
                        });
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(MAX_HEAD_BYTES)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                let served = async {
                    // A busy scraper cannot hold a task forever: past its
                    // lifetime the connection finishes the request under
                    // way and closes; a stuck one is dropped after the grace.
                    if tokio::time::timeout(lifetime, conn.as_mut()).await.is_err() {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(grace, conn.as_mut()).await;
                    }
                };
                tokio::select! {
                    () = served => {}
                    () = slot.closed() => {}
                }
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// `/readyz` names 20 sources per list, then a count: the answer stays
    /// small however many tenants one identity provider's outage degrades.
    #[test]
    fn readiness_lists_are_capped() {
        let few: Vec<String> = (0..3).map(|i| format!("s{i}")).collect();
        assert_eq!(listed(&few), "s0; s1; s2");
        let many: Vec<String> = (0..100_000)
            .map(|i| format!("jwks https://idp/{i} (tenant t{i}) stale"))
            .collect();
        let out = listed(&many);
        assert!(
            out.ends_with("; and 99980 more (jotd_jwks_* metrics and the log name each)"),
            "{out}"
        );
        assert!(out.len() < 2_000, "{}", out.len());
        assert!(out.contains("tenant t19)") && !out.contains("tenant t20)"));
    }

    /// Serves `doc` over plain HTTP on loopback to `answers` requests, then
    /// stops listening (later fetches are refused).
    fn jwks_once(doc: &'static str, answers: usize) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", l.local_addr().unwrap());
        std::thread::spawn(move || {
            for _ in 0..answers {
                let Ok((mut s, _)) = l.accept() else { return };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{doc}",
                    doc.len()
                );
                let _ = s.write_all(answer.as_bytes());
            }
        });
        url
    }

    /// A connection past its lifetime finishes the answer under way, then
    /// closes cleanly (it was cut, even inside an answer: a failed scrape or
    /// probe every 30 s for a client that keeps its connection busy); an
    /// idle one is closed; an answer that takes past the grace is dropped.
    /// The answer is held up by holding the readiness cache's lock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(
        clippy::await_holding_lock,
        reason = "the lock is held on purpose, to hold up the answer"
    )]
    async fn a_connection_past_its_lifetime_finishes_its_answer_then_closes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let reloader = Arc::new(
            Reloader::start(
                std::path::Path::new("/cfg/jotd.toml"),
                Box::new(|_| Ok(b"[[tenant]]\nid = \"t\"\nrequire_jwt = false\n".to_vec())),
                Box::new(|_| Some((None, 1))),
            )
            .unwrap(),
        );
        let fetcher = Arc::new(
            JwksFetcher::new(Arc::clone(&reloader), jotd_keys::FetchConfig::default()).unwrap(),
        );
        let health = Arc::new(Health {
            reloader,
            fetcher,
            draining: Arc::new(AtomicBool::new(false)),
            started: Arc::new(AtomicBool::new(true)),
            last: std::sync::Mutex::new(None),
        });
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let lifetime = Duration::from_millis(300);
        let grace = Duration::from_millis(1500);
        let addr = start_with(
            "127.0.0.1:0".parse().unwrap(),
            Arc::clone(&health),
            None,
            stop,
            lifetime,
            grace,
        )
        .await
        .unwrap();
        let read_all = |mut s: tokio::net::TcpStream| async move {
            let mut got = Vec::new();
            let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
            r.expect("closed in time").unwrap();
            String::from_utf8_lossy(&got).into_owned()
        };
        let readyz = b"GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n";

        // One answer in time on a kept-alive connection, then one held up
        // across the lifetime: answered whole, then the connection closes.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(readyz).await.unwrap();
        let mut first = [0u8; 512];
        let n = s.read(&mut first).await.unwrap();
        assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
        {
            let held = health.last.lock().unwrap();
            s.write_all(readyz).await.unwrap();
            tokio::time::sleep(lifetime * 2).await;
            drop(held);
        }
        let text = read_all(s).await;
        assert!(
            text.starts_with("HTTP/1.1 200") && text.contains("\r\n\r\nready"),
            "{text:?}"
        );

        // An idle connection past its lifetime is closed (EOF, no reset).
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(read_all(s).await, "");
        assert!(
            started.elapsed() < lifetime + grace,
            "{:?}",
            started.elapsed()
        );

        // An answer held past the grace too: dropped, not waited for.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        let text = {
            let held = health.last.lock().unwrap();
            s.write_all(readyz).await.unwrap();
            let text = read_all(s).await;
            drop(held);
            text
        };
        assert_eq!(text, "");
        assert!(
            started.elapsed() >= lifetime + grace,
            "{:?}",
            started.elapsed()
        );
    }

    /// Keys `jwks_fetch.max_stale_s` dropped leave the replica ready (listed
    /// as degraded): every replica drops them alike, and "no keys loaded"
    /// failed readiness on all of them at once, pulling the whole pool.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_dropped_past_max_stale_degrade_readiness_without_failing_it() {
        // RFC 8037's Ed25519 example key.
        let url = jwks_once(
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
            1,
        );
        let text = format!(
            "[[tenant]]\nid = \"t\"\n[[tenant.jwks]]\ninternal = true\nurl = \"{url}\"\nalg = \"EdDSA\"\n"
        );
        let reloader = Arc::new(
            Reloader::start(
                std::path::Path::new("/cfg/jotd.toml"),
                Box::new(move |_| Ok(text.clone().into_bytes())),
                Box::new(|_| Some((None, 1))),
            )
            .unwrap(),
        );
        let config = jotd_keys::FetchConfig {
            refetch_interval: Duration::ZERO,
            max_stale: Some(Duration::from_millis(1)),
            min_refresh: Duration::from_millis(1),
            timeout: Duration::from_secs(2),
            ..jotd_keys::FetchConfig::default()
        };
        let fetcher = Arc::new(JwksFetcher::new(Arc::clone(&reloader), config).unwrap());
        let health = Health {
            reloader: Arc::clone(&reloader),
            fetcher: Arc::clone(&fetcher),
            draining: Arc::new(AtomicBool::new(false)),
            started: Arc::new(AtomicBool::new(true)),
            last: std::sync::Mutex::new(None),
        };
        assert!(fetcher.on_unknown_kid("t").await);
        assert!(health.work_out().is_ok());
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The endpoint is gone: the fetch fails, the keys are past max_stale.
        assert!(!fetcher.on_unknown_kid("t").await);
        assert!(fetcher.health()[0].dropped);
        let answer = health.work_out();
        let Ok(body) = answer else {
            panic!("{answer:?}")
        };
        assert!(
            body.contains("0 keys") && body.contains("keys dropped"),
            "{body}"
        );
        // A reload (same files) keeps the mark: the source was forgotten, its
        // mark with it, and readiness failed "no keys loaded".
        reloader.reload().unwrap();
        assert!(fetcher.health()[0].dropped, "{:?}", fetcher.health());
        let answer = health.work_out();
        let Ok(body) = answer else {
            panic!("after a reload: {answer:?}")
        };
        assert!(body.contains("keys dropped"), "{body}");
    }
}
