//! The admin listener (HTTP/1.1, hyper): `/metrics` (Prometheus text),
//! `/healthz` (alive), `/readyz` (ready to take traffic). Bind it to a private
//! address: it has no authentication.

use crate::metrics::Metrics;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use jotd_keys::{JwksFetcher, Reloader};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What readiness looks at.
pub(crate) struct Health {
    pub(crate) reloader: Arc<Reloader>,
    pub(crate) fetcher: Arc<JwksFetcher>,
    pub(crate) draining: Arc<AtomicBool>,
}

/// A JWKS source is stale past this many refresh intervals (its keys still serve).
pub(crate) const STALE_REFRESHES: u32 = 3;

impl Health {
    /// `Ok(summary)` when ready; `Err(reasons)` otherwise.
    pub(crate) fn ready(&self) -> Result<String, String> {
        let mut problems = Vec::new();
        if self.draining.load(Ordering::SeqCst) {
            problems.push("draining".to_owned());
        }
        let snap = self.reloader.store().load();
        let keys: usize = snap.tenants().map(|t| t.keys.len()).sum();
        if keys == 0 {
            problems.push("no keys loaded".to_owned());
        }
        for h in self.fetcher.health() {
            let budget = h.refresh * STALE_REFRESHES;
            match h.age {
                None => problems.push(format!(
                    "jwks {} (tenant {}) never fetched{}",
                    h.url,
                    h.tenant,
                    h.last_error
                        .as_ref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                )),
                Some(age) if age > budget => problems.push(format!(
                    "jwks {} (tenant {}) stale: last good fetch {}s ago, budget {}s",
                    h.url,
                    h.tenant,
                    age.as_secs(),
                    budget.as_secs()
                )),
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            Ok(format!(
                "ready: generation {}, {} tenants, {keys} keys\n",
                snap.generation(),
                snap.len()
            ))
        } else {
            Err(format!("not ready: {}\n", problems.join("; ")))
        }
    }
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
    req: &Request<hyper::body::Incoming>,
    health: &Health,
    metrics: Option<&Metrics>,
) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into(), PLAIN);
    }
    match req.uri().path() {
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
/// closed to make room (see [`OpenConnections::admit`]), chosen so that a client
/// holding many slots loses its own, never a probe in the middle of its request.
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// When every open connection comes from a different address, only one at least
/// this old may be closed to make room (a probe's request takes milliseconds).
const MIN_AGE: Duration = Duration::from_secs(1);
/// Time for a client to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Request head buffer (hyper's default is ~400 KB); admin requests are one line.
const MAX_HEAD_BYTES: usize = 16 << 10;

/// One admin connection being served.
struct Open {
    peer: std::net::IpAddr,
    since: Instant,
    /// Closes it.
    close: Arc<tokio::sync::Notify>,
}

/// The admin connections being served, oldest first (ids grow).
#[derive(Default)]
struct OpenConnections(std::sync::Mutex<std::collections::BTreeMap<u64, Open>>);

impl OpenConnections {
    /// Takes a slot for connection `id` from `peer`. At the cap one connection is
    /// closed to make room: the oldest of the address holding the most connections
    /// when some address holds two or more (a flood from one address only ever
    /// closes its own); when every connection comes from a different address, the
    /// oldest one open for at least [`MIN_AGE`]. When there is none, `None`: the
    /// newcomer is refused rather than a request cut in the middle.
    fn admit(
        &self,
        id: u64,
        peer: std::net::IpAddr,
        now: Instant,
    ) -> Option<Arc<tokio::sync::Notify>> {
        let peer = peer.to_canonical();
        let mut open = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while open.len() >= MAX_CONNECTIONS {
            let mut held = std::collections::HashMap::<std::net::IpAddr, usize>::new();
            for c in open.values() {
                *held.entry(c.peer).or_default() += 1;
            }
            let most = held.values().copied().max().unwrap_or(0);
            let victim = open
                .iter()
                .find(|(_, c)| {
                    if most >= 2 {
                        held[&c.peer] == most
                    } else {
                        now.saturating_duration_since(c.since) >= MIN_AGE
                    }
                })
                .map(|(&id, _)| id)?;
            let closed = open.remove(&victim).expect("found above");
            // A stored permit: closes it even before its task waits.
            closed.close.notify_one();
        }
        let close = Arc::new(tokio::sync::Notify::new());
        open.insert(
            id,
            Open {
                peer,
                since: now,
                close: Arc::clone(&close),
            },
        );
        Some(close)
    }

    fn leave(&self, id: u64) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
    }
}

/// Binds and serves until `stop`; returns the bound address.
pub(crate) async fn start(
    addr: SocketAddr,
    health: Health,
    metrics: Option<Arc<Metrics>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let health = Arc::new(health);
    let open = Arc::new(OpenConnections::default());
    tokio::spawn(async move {
        let mut next_id = 0u64;
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
            next_id += 1;
            let id = next_id;
            let Some(close) = open.admit(id, peer.ip(), Instant::now()) else {
                tracing::debug!(%peer, "admin connection refused: {MAX_CONNECTIONS} open, each from another address and younger than {MIN_AGE:?}");
                drop(stream);
                continue;
            };
            let open = Arc::clone(&open);
            let health = Arc::clone(&health);
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let r = route(&req, &health, metrics.as_deref());
                    async move { Ok::<_, std::convert::Infallible>(r) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(MAX_HEAD_BYTES)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    // A slow or stuck scraper cannot hold a task forever.
                    _ = tokio::time::timeout(Duration::from_secs(30), conn) => {}
                    () = close.notified() => {
                        tracing::debug!("admin connection closed to make room: {MAX_CONNECTIONS} open");
                    }
                }
                open.leave(id);
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::{MAX_CONNECTIONS, MIN_AGE, OpenConnections};
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::{Duration, Instant};

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn ids(open: &OpenConnections) -> Vec<u64> {
        open.0.lock().unwrap().keys().copied().collect()
    }

    #[test]
    fn a_flood_from_one_address_closes_only_its_own_connections() {
        let open = OpenConnections::default();
        let t0 = Instant::now();
        // The probe connects first, then one address takes every other slot.
        let probe = open.admit(0, ip(1), t0).unwrap();
        let mut flood = Vec::new();
        for id in 1..MAX_CONNECTIONS as u64 {
            flood.push(open.admit(id, ip(2), t0).unwrap());
        }
        // More from the flooder, all at once (younger than MIN_AGE): each closes
        // the flooder's own oldest, never the probe's.
        for id in MAX_CONNECTIONS as u64..MAX_CONNECTIONS as u64 + 10 {
            assert!(open.admit(id, ip(2), t0).is_some());
        }
        let now = ids(&open);
        assert_eq!(now.len(), MAX_CONNECTIONS);
        assert_eq!(now[0], 0, "the probe's connection stays: {now:?}");
        assert_eq!(now[1], 11, "the flooder's ten oldest were closed: {now:?}");
        // Their close signals were given (stored permits); the probe's was not.
        let fired = |n: &tokio::sync::Notify| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(1), n.notified())
                    .await
                    .is_ok()
            })
        };
        assert!(fired(&flood[0]) && fired(&flood[9]));
        assert!(!fired(&flood[10]));
        assert!(!fired(&probe));
        // A new probe from a third address gets in too, again at the flooder's cost.
        assert!(open.admit(100, ip(3), t0).is_some());
        assert_eq!(ids(&open)[..2], [0, 12]);
    }

    #[test]
    fn with_every_slot_from_another_address_only_an_old_connection_is_closed() {
        let open = OpenConnections::default();
        let t0 = Instant::now();
        for id in 0..MAX_CONNECTIONS as u64 {
            let last = u8::try_from(id).unwrap();
            open.admit(id, ip(last), t0 + Duration::from_millis(id))
                .unwrap();
        }
        // All younger than MIN_AGE: the newcomer is refused, nobody is cut off.
        let young = t0 + Duration::from_millis(500);
        assert!(open.admit(1000, ip(200), young).is_none());
        assert_eq!(ids(&open), (0..MAX_CONNECTIONS as u64).collect::<Vec<_>>());
        // Once the oldest has been open MIN_AGE, it makes room (only it).
        let later = t0 + MIN_AGE;
        assert!(open.admit(1001, ip(201), later).is_some());
        let now = ids(&open);
        assert_eq!((now[0], now.len()), (1, MAX_CONNECTIONS));
        assert!(open.admit(1002, ip(202), later).is_none());
        // Two from one address: that address loses its oldest, however young.
        let open = OpenConnections::default();
        for id in 0..MAX_CONNECTIONS as u64 - 1 {
            let last = u8::try_from(id).unwrap();
            open.admit(id, ip(last), t0).unwrap();
        }
        open.admit(63, ip(5), t0).unwrap();
        assert!(open.admit(64, ip(250), t0).is_some());
        let now = ids(&open);
        assert!(
            !now.contains(&5) && now.contains(&63) && now.contains(&0),
            "{now:?}"
        );
    }

    #[test]
    fn a_mapped_ipv4_address_counts_as_the_same_peer() {
        let open = OpenConnections::default();
        let t0 = Instant::now();
        let v4 = ip(9);
        let IpAddr::V4(a) = v4 else { unreachable!() };
        let mapped = IpAddr::V6(a.to_ipv6_mapped());
        for id in 0..MAX_CONNECTIONS as u64 - 2 {
            let last = u8::try_from(id + 10).unwrap();
            open.admit(id, ip(last), t0).unwrap();
        }
        open.admit(62, mapped, t0).unwrap();
        open.admit(63, v4, t0).unwrap();
        // ip(9) and its mapped form are one peer with two connections: it pays,
        // though every connection is young.
        assert!(open.admit(64, ip(250), t0).is_some());
        let now = ids(&open);
        assert!(!now.contains(&62) && now.contains(&63), "{now:?}");
    }
}
