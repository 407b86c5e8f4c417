//! Scaffolding shared by the loopback QUIC tests: a test backend, keys,
//! snapshots, a running server, clients (the library's and raw quinn ones).
#![allow(dead_code, unreachable_pub)]

pub use jotd_core::TenantKey;
use jotd_core::{Algorithm, Engine, EngineConfig, SigningKey, Snapshot, Tenant, UnixTime};
use jotd_transport::{
    Backend, BoxFuture, Client, ClientOptions, DevPki, Event, FrameType, Item, Limits, Refusal,
    Server, ServerOptions, ServerStats, StreamEnd, client_config, decode_error, next_frame,
    server_config,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, watch};

pub const NOW: u64 = 1_800_000_000;

pub struct TestBackend {
    pub snapshot: Mutex<Arc<Snapshot>>,
    /// Installed by `refetch` (a stand-in for a JWKS fetch), when set.
    pub after_refetch: Mutex<Option<Arc<Snapshot>>>,
    pub refetches: AtomicUsize,
    pub handshake_refusals: AtomicUsize,
    /// QUIC Retry packets sent.
    pub retries: AtomicUsize,
    /// Streams given up on, by why: aborted, request timeout, write timeout.
    pub stream_ends: [AtomicUsize; 4],
    /// When set, `refetch` waits until the gate opens (a batch in flight).
    pub refetch_gate: Option<watch::Receiver<bool>>,
    /// Every connection refusal, in order.
    pub refusals: Mutex<Vec<Refusal>>,
}

impl TestBackend {
    pub fn new(snapshot: Snapshot) -> Arc<Self> {
        Arc::new(Self::plain(snapshot))
    }
    /// A backend whose refetches wait until `gate` holds `true`.
    pub fn gated(snapshot: Snapshot, gate: watch::Receiver<bool>) -> Arc<Self> {
        Arc::new(Self {
            refetch_gate: Some(gate),
            ..Self::plain(snapshot)
        })
    }
    fn plain(snapshot: Snapshot) -> Self {
        Self {
            snapshot: Mutex::new(Arc::new(snapshot)),
            after_refetch: Mutex::new(None),
            refetches: AtomicUsize::new(0),
            handshake_refusals: AtomicUsize::new(0),
            retries: AtomicUsize::new(0),
            stream_ends: Default::default(),
            refetch_gate: None,
            refusals: Mutex::new(Vec::new()),
        }
    }
    pub fn ends(&self, end: StreamEnd) -> usize {
        let i = match end {
            StreamEnd::Aborted => 0,
            StreamEnd::RequestTimeout => 1,
            StreamEnd::WriteTimeout => 2,
            StreamEnd::AnswerBufferFull => 3,
        };
        self.stream_ends[i].load(Ordering::SeqCst)
    }
    pub fn set(&self, s: Snapshot) {
        *self.snapshot.lock().unwrap() = Arc::new(s);
    }
}

impl Backend for TestBackend {
    fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.lock().unwrap())
    }
    fn now(&self) -> UnixTime {
        UnixTime(NOW)
    }
    fn refetch(&self, tenants: Vec<String>) -> BoxFuture<bool> {
        assert_eq!(tenants, ["jwks"]);
        self.refetches.fetch_add(1, Ordering::SeqCst);
        let next = self.after_refetch.lock().unwrap().take();
        let gate = self.refetch_gate.clone();
        let installed = next.is_some();
        if let Some(s) = next {
            *self.snapshot.lock().unwrap() = s;
        }
        Box::pin(async move {
            if let Some(mut gate) = gate {
                let _ = gate.wait_for(|open| *open).await;
            }
            installed
        })
    }
    fn event(&self, event: &Event<'_>) {
        match event {
            Event::ConnectionRefused { why, .. } => {
                self.handshake_refusals.fetch_add(1, Ordering::SeqCst);
                self.refusals.lock().unwrap().push(*why);
            }
            Event::Retry { .. } => {
                self.retries.fetch_add(1, Ordering::SeqCst);
            }
            Event::Stream(end) => {
                let i = match end {
                    StreamEnd::Aborted => 0,
                    StreamEnd::RequestTimeout => 1,
                    StreamEnd::WriteTimeout => 2,
                    StreamEnd::AnswerBufferFull => 3,
                };
                self.stream_ends[i].fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        }
    }
}

pub struct Keys {
    pub es: SigningKey,
    pub hs: SigningKey,
}

pub fn keys() -> Keys {
    Keys {
        es: SigningKey::generate(Algorithm::Es256).unwrap(),
        hs: SigningKey::generate(Algorithm::Hs256).unwrap(),
    }
}

pub fn snapshot(generation: u64, k: &Keys, with_hs: bool) -> Snapshot {
    let mut keys = vec![TenantKey {
        kid: "es".into(),
        key: k.es.verifying_key().unwrap(),
        issuer: None,
    }];
    if with_hs {
        keys.push(TenantKey {
            kid: "hs".into(),
            key: k.hs.verifying_key().unwrap(),
            issuer: None,
        });
    }
    // As jotd-keys does: the epoch changes with the keys (cached tokens of the
    // old key set die), and a JWKS tenant allows its source's algorithms before
    // the keys arrive.
    let mut t = Tenant::new("t", keys.clone());
    t.epoch = generation;
    t.algorithms = jotd_core::AlgorithmSet::ALL;
    let mut jwks = Tenant::new("jwks", keys);
    jwks.epoch = generation;
    jwks.remote_keys = true;
    jwks.algorithms = jotd_core::AlgorithmSet::ALL;
    Snapshot::new(generation, [Arc::new(t), Arc::new(jwks)])
}

pub fn claims(sub: &str, exp: u64) -> String {
    format!(r#"{{"sub":"{sub}","exp":{exp}}}"#)
}

pub struct Running {
    pub addr: SocketAddr,
    pub pki: DevPki,
    pub stats: Arc<ServerStats>,
    pub switch: jotd_transport::TlsSwitch,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<jotd_transport::DrainReport>,
}

impl Running {
    pub async fn stop(mut self) -> jotd_transport::DrainReport {
        let _ = self.stop.take().unwrap().send(());
        self.done.await.unwrap()
    }
}

pub fn start(backend: Arc<TestBackend>, opts: ServerOptions, mtls: bool) -> Running {
    start_with(backend, opts, mtls, DevPki::generate().unwrap())
}

/// A server with the given PKI (several servers of one pool share a CA).
pub fn start_with(
    backend: Arc<TestBackend>,
    opts: ServerOptions,
    mtls: bool,
    pki: DevPki,
) -> Running {
    start_at("127.0.0.1:0".parse().unwrap(), backend, opts, mtls, pki)
}

/// A plain replica of a pool whose CA is `pki`'s: every key of `k`, HS256
/// included, default options, no client certificates.
pub fn replica(k: &Keys, pki: &DevPki) -> Running {
    start_with(
        TestBackend::new(snapshot(1, k, true)),
        ServerOptions::default(),
        false,
        pki.clone(),
    )
}

/// [`start_with`] listening on `listen` (`[::1]:0` for an IPv6 replica).
pub fn start_at(
    listen: std::net::SocketAddr,
    backend: Arc<TestBackend>,
    opts: ServerOptions,
    mtls: bool,
    pki: DevPki,
) -> Running {
    let tls = server_config(
        pki.server_cert_pem.as_bytes(),
        pki.server_key_pem.as_bytes(),
        mtls.then_some(pki.ca_pem.as_bytes()),
    )
    .unwrap();
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap(),
    );
    let engine = Arc::new(Engine::new(EngineConfig::default()));
    let server =
        Server::bind(ServerOptions { listen, ..opts }, tls, engine, pool, backend).unwrap();
    let addr = server.local_addr().unwrap();
    let stats = server.stats();
    let switch = server.tls_switch();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        pki,
        stats,
        switch,
        stop: Some(stop),
        done,
    }
}

pub fn client(r: &Running, addrs: Vec<SocketAddr>, with_cert: bool) -> Client {
    let cert = with_cert.then_some((
        r.pki.client_cert_pem.as_bytes(),
        r.pki.client_key_pem.as_bytes(),
    ));
    let tls = client_config(r.pki.ca_pem.as_bytes(), cert).unwrap();
    Client::new(ClientOptions::new(addrs, tls)).unwrap()
}

pub fn item<'a>(token: Option<&'a str>, tenant: &'a str) -> Item<'a> {
    Item {
        token: token.map(str::as_bytes),
        tenant,
        method: Some("eth_blockNumber"),
        addresses: vec![],
        origin: None,
        user_agent: None,
    }
}

/// A bare quinn connection to `r` (for tests that must misbehave as a client
/// library never would); `window`: the stream receive window it grants.
pub async fn raw_connection(
    r: &Running,
    with_cert: bool,
    window: Option<u32>,
) -> quinn::Connection {
    raw_connection_from(r, with_cert, window, [127, 0, 0, 1])
        .await
        .unwrap()
}

/// [`raw_connection`] from a loopback address of its own (any of 127/8), so
/// that the server sees another client address; the handshake's outcome.
pub async fn raw_connection_from(
    r: &Running,
    with_cert: bool,
    window: Option<u32>,
    local: [u8; 4],
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let cert = with_cert.then_some((
        r.pki.client_cert_pem.as_bytes(),
        r.pki.client_key_pem.as_bytes(),
    ));
    let tls = client_config(r.pki.ca_pem.as_bytes(), cert).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    if let Some(w) = window {
        let mut t = quinn::TransportConfig::default();
        t.stream_receive_window(quinn::VarInt::from_u32(w));
        config.transport_config(Arc::new(t));
    }
    let mut endpoint = quinn::Endpoint::client(std::net::SocketAddr::from((local, 0))).unwrap();
    endpoint.set_default_client_config(config);
    endpoint.connect(r.addr, "localhost").unwrap().await
}

/// Reads a stream's whole answer and returns its one error frame's
/// `(request_id, code)`; panics on anything else.
pub async fn error_answer(recv: &mut quinn::RecvStream) -> (u64, u16) {
    let bytes = recv.read_to_end(1 << 20).await.unwrap();
    let frame = next_frame(&bytes, &Limits::default()).unwrap().unwrap();
    assert_eq!(frame.kind, FrameType::Error);
    assert_eq!(frame.consumed, bytes.len(), "one frame");
    let e = decode_error(frame.body).unwrap();
    (e.request_id, e.code)
}

/// A UDP relay in front of a server that can be cut: after [`Relay::cut`]
/// every packet either way is dropped, as when a replica's node vanishes
/// (`kill -9`, a lost machine): no close, no reset, silence.
pub struct Relay {
    pub addr: SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    pub async fn start(server: SocketAddr) -> Self {
        use std::sync::atomic::AtomicBool;
        let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        back.connect(server).await.unwrap();
        let addr = front.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        {
            let (front, back, cut, client) = (
                Arc::clone(&front),
                Arc::clone(&back),
                Arc::clone(&cut),
                Arc::clone(&client),
            );
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    *client.lock().unwrap() = Some(from);
                    if !cut.load(Ordering::SeqCst) {
                        let _ = back.send(&buf[..n]).await;
                    }
                }
            });
        }
        {
            let cut = Arc::clone(&cut);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok(n) = back.recv(&mut buf).await {
                    let to = *client.lock().unwrap();
                    if let Some(to) = to
                        && !cut.load(Ordering::SeqCst)
                    {
                        let _ = front.send_to(&buf[..n], to).await;
                    }
                }
            });
        }
        Self { addr, cut }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

/// A server whose "jwks" items with an unknown kid are held (see
/// [`holding`]) until the returned gate is opened (sent `true`): an answer that
/// comes only when the test says so.
pub fn start_held(k: &Keys) -> (Running, watch::Sender<bool>) {
    let (open, gate) = watch::channel(false);
    let r = start(
        TestBackend::gated(snapshot(1, k, false), gate),
        holding(),
        false,
    );
    (r, open)
}

/// Server options under which held items wait for their refetch as long as
/// a test keeps the refetch gate shut (the default `refetch_hold` is 1 s).
pub fn holding() -> jotd_transport::ServerOptions {
    jotd_transport::ServerOptions {
        refetch_hold: std::time::Duration::from_secs(600),
        ..jotd_transport::ServerOptions::default()
    }
}
