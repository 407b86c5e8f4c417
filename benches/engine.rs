//! Criterion benches for jotd-core, each measured beside its baseline in the same run:
//! - `verify/<alg>`: the engine uncached vs raw aws-lc-rs (parsed key, pre-decoded
//!   signature: the crypto alone) vs `jsonwebtoken` 11 (aws-lc-rs backend) `decode`;
//! - `cached/<alg>`: the verified-token cache hit path, policy included;
//! - `batch/<threads>`: 256 ES256 tokens through `verify_batch` on 1, 2, … threads.
//!
//! Run: `cargo bench -p jotd-core --bench engine` (add `-- verify/HS256` to filter).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use jotd_core::{
    Algorithm, Engine, EngineConfig, PolicyModel, RawVerifier, Request, Scratch, SigningKey,
    Snapshot, Tenant, TenantKey, UnixTime, sample_claims, split_for_raw,
};
use std::hint::black_box;
use std::sync::Arc;

const NOW: u64 = 1_800_000_000;
const TOKENS: u32 = 64;

struct Fixture {
    alg: Algorithm,
    snapshot: Snapshot,
    tokens: Vec<String>,
    spki_or_secret: Vec<u8>,
    raw: Vec<(Vec<u8>, Vec<u8>)>,
    baseline: RawVerifier,
}

fn fixture(alg: Algorithm) -> Fixture {
    let key = SigningKey::generate(alg).expect("keygen");
    let kid = "bench-key";
    let tokens: Vec<String> = (0..TOKENS)
        .map(|i| key.mint(Some(kid), &sample_claims(NOW, i)).expect("mint"))
        .collect();
    let raw = tokens
        .iter()
        .map(|t| split_for_raw(t).expect("jws"))
        .collect();
    let baseline = RawVerifier::new(&key).expect("baseline");
    let verifying = key.verifying_key().expect("public key");
    let spki_or_secret = match key.hmac_secret() {
        Some(s) => s.to_vec(),
        None => verifying.spki_der().expect("spki"),
    };
    let mut tenant = Tenant::new(
        "bench",
        vec![TenantKey {
            kid: kid.into(),
            key: verifying,
            issuer: None,
        }],
    );
    tenant.policy = PolicyModel::Allowlist;
    tenant.claims.audiences = vec!["jotd".into()];
    tenant.claims.issuers = vec!["https://auth.example.com".into()];
    Fixture {
        alg,
        snapshot: Snapshot::new(1, [Arc::new(tenant)]),
        tokens,
        spki_or_secret,
        raw,
        baseline,
    }
}

fn requests(f: &Fixture) -> Vec<Request<'_>> {
    f.tokens
        .iter()
        .map(|t| Request {
            token: Some(t.as_bytes()),
            tenant: "bench",
            method: Some("eth_call"),
            addresses: &[],
            origin: Some("https://app.example.com"),
            user_agent: None,
        })
        .collect()
}

/// `jsonwebtoken` 11: key built once (it still re-parses it inside every decode).
fn jwt_crate(f: &Fixture) -> Option<(jsonwebtoken::DecodingKey, jsonwebtoken::Validation)> {
    use jsonwebtoken::{Algorithm as A, DecodingKey as K};
    let (key, alg) = match f.alg {
        Algorithm::Rs256 => (K::from_rsa_der(&f.spki_or_secret), A::RS256),
        Algorithm::Ps256 => (K::from_rsa_der(&f.spki_or_secret), A::PS256),
        Algorithm::Es256 => (K::from_ec_der(&f.spki_or_secret), A::ES256),
        Algorithm::EdDsa => (K::from_ed_der(&f.spki_or_secret), A::EdDSA),
        Algorithm::Hs256 => (K::from_secret(&f.spki_or_secret), A::HS256),
        _ => return None, // no ES256K in jsonwebtoken
    };
    let mut v = jsonwebtoken::Validation::new(alg);
    v.set_audience(&["jotd"]);
    v.set_issuer(&["https://auth.example.com"]);
    Some((key, v))
}

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    iat: u64,
    jti: String,
    methods: Vec<String>,
    origins: Vec<String>,
}

const ALGS: [Algorithm; 6] = [
    Algorithm::Rs256,
    Algorithm::Ps256,
    Algorithm::Es256,
    Algorithm::Es256K,
    Algorithm::EdDsa,
    Algorithm::Hs256,
];

fn verify(c: &mut Criterion) {
    for alg in ALGS {
        let f = fixture(alg);
        let reqs = requests(&f);
        let mut g = c.benchmark_group(format!("verify/{alg}"));
        g.throughput(Throughput::Elements(1));
        let engine = Engine::new(EngineConfig {
            cache: None,
            ..EngineConfig::default()
        });
        let mut scratch = Scratch::new();
        let mut i = 0;
        g.bench_function("engine", |b| {
            b.iter(|| {
                i = (i + 1) % reqs.len();
                let d = engine.verify_with(&mut scratch, &f.snapshot, &reqs[i], UnixTime(NOW));
                assert!(d.allow());
                black_box(d)
            });
        });
        g.bench_function("raw_aws_lc_rs", |b| {
            b.iter(|| {
                i = (i + 1) % f.raw.len();
                let (input, sig) = &f.raw[i];
                assert!(f.baseline.verify(input, sig));
            });
        });
        if let Some((key, validation)) = jwt_crate(&f) {
            // jsonwebtoken checks exp against the real clock; the fixture's exp is in 2027.
            g.bench_function("jsonwebtoken_11", |b| {
                b.iter(|| {
                    i = (i + 1) % f.tokens.len();
                    black_box(
                        jsonwebtoken::decode::<Claims>(&f.tokens[i], &key, &validation)
                            .expect("valid"),
                    )
                });
            });
        }
        g.finish();
    }
}

fn cached(c: &mut Criterion) {
    for alg in [Algorithm::Rs256, Algorithm::Hs256] {
        let f = fixture(alg);
        let reqs = requests(&f);
        let engine = Engine::new(EngineConfig::default());
        let mut scratch = Scratch::new();
        for r in &reqs {
            assert!(
                engine
                    .verify_with(&mut scratch, &f.snapshot, r, UnixTime(NOW))
                    .allow()
            );
        }
        let mut g = c.benchmark_group(format!("cached/{alg}"));
        g.throughput(Throughput::Elements(1));
        let mut i = 0;
        g.bench_function("hit_with_policy", |b| {
            b.iter(|| {
                i = (i + 1) % reqs.len();
                black_box(engine.verify_with(&mut scratch, &f.snapshot, &reqs[i], UnixTime(NOW)))
            });
        });
        g.finish();
    }
}

fn batch(c: &mut Criterion) {
    let f = fixture(Algorithm::Es256);
    let reqs: Vec<Request<'_>> = requests(&f).into_iter().cycle().take(256).collect();
    let engine = Engine::new(EngineConfig {
        cache: None,
        ..EngineConfig::default()
    });
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Elements(reqs.len() as u64));
    let mut counts = vec![1, 2, cores];
    counts.dedup();
    for threads in counts {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        g.bench_with_input(BenchmarkId::new("ES256_x256", threads), &threads, |b, _| {
            b.iter(|| black_box(engine.verify_batch(&pool, &f.snapshot, &reqs, UnixTime(NOW))));
        });
    }
    g.finish();
}

criterion_group!(benches, verify, cached, batch);
criterion_main!(benches);
