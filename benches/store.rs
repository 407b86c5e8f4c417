//! The key store at scale: N tenants × 3 keys (RSA 2048, EC P-256, Ed25519),
//! each key in a `pem_file`. Prints config load (parse + validate + key
//! parsing) time, snapshot build time, resident memory per key, and the cost
//! of a tenant lookup in the snapshot. One shot, not criterion: these are
//! sizes and one-time costs. Memory is counted by jemalloc, which this bench
//! installs for the whole process so aws-lc's own allocations are counted too.
//!
//! Run: `cargo bench -p jotd-keys --bench store` (`-- 20000` for another N).

use jotd_core::{Algorithm, SigningKey};
use std::collections::HashMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

// jemalloc replaces malloc for the whole process (aws-lc's C allocations included),
// so `stats.allocated` counts every byte the snapshot holds.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn allocated_bytes() -> u64 {
    tikv_jemalloc_ctl::epoch::advance().expect("jemalloc epoch");
    tikv_jemalloc_ctl::stats::allocated::read().expect("jemalloc stats") as u64
}

fn pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let mut files: HashMap<PathBuf, Vec<u8>> = HashMap::new();
    for (name, alg) in [
        ("rsa.pem", Algorithm::Rs256),
        ("ec.pem", Algorithm::Es256),
        ("ed.pem", Algorithm::EdDsa),
    ] {
        let spki = SigningKey::generate(alg)
            .unwrap()
            .verifying_key()
            .unwrap()
            .spki_der()
            .unwrap();
        files.insert(
            PathBuf::from("/bench/keys").join(name),
            pem(&spki).into_bytes(),
        );
    }
    let mut config = String::with_capacity(n * 330);
    for i in 0..n {
        config.push_str(&format!(
            "[[tenant]]\nid = \"project-{i:07}\"\npolicy = \"allowlist\"\n\
             [[tenant.key]]\nkid = \"rsa\"\nalg = \"RS256\"\npem_file = \"keys/rsa.pem\"\n\
             [[tenant.key]]\nkid = \"ec\"\nalg = \"ES256\"\npem_file = \"keys/ec.pem\"\n\
             [[tenant.key]]\nkid = \"ed\"\nalg = \"EdDSA\"\npem_file = \"keys/ed.pem\"\n"
        ));
    }
    files.insert(PathBuf::from("/bench/jotd.toml"), config.into_bytes());
    let read = |p: &Path| {
        files
            .get(p)
            .cloned()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    };

    let before = allocated_bytes();
    let t = Instant::now();
    let cfg = jotd_keys::load(Path::new("/bench/jotd.toml"), &read).expect("config loads");
    let load = t.elapsed();
    let t = Instant::now();
    let snapshot = cfg.snapshot(1, &|_, _| None);
    let build = t.elapsed();
    // What a JWKS fetch for one tenant builds: that tenant, the others carried over.
    let t = Instant::now();
    let one = cfg.snapshot_rebuilding(2, &snapshot, &|id| id == "project-0000000", &|_, _| None);
    let rebuild_one = t.elapsed();
    assert_eq!(one.len(), snapshot.len());
    drop(one);
    drop(cfg);
    let held = allocated_bytes().saturating_sub(before);
    let keys = 3 * n;

    let ids: Vec<String> = (0..n)
        .map(|i| format!("project-{:07}", (i * 7919) % n))
        .collect();
    let rounds = 10_000_000 / n.max(1) + 1;
    let t = Instant::now();
    let mut found = 0usize;
    for _ in 0..rounds {
        for id in &ids {
            found += usize::from(black_box(snapshot.tenant(id)).is_some());
        }
    }
    let lookups = rounds * ids.len();
    let per_lookup = t.elapsed().as_nanos() as f64 / lookups as f64;
    assert_eq!(found, lookups);

    println!(
        "tenants: {n}, keys: {keys} (RSA 2048 + EC P-256 + Ed25519 per tenant, pem_file each)"
    );
    println!(
        "config load (TOML parse, validation, {keys} key parses): {:.3} s ({:.2} µs per key)",
        load.as_secs_f64(),
        load.as_secs_f64() * 1e6 / keys as f64
    );
    println!(
        "snapshot build (tenant clones, epochs, map): {:.3} s",
        build.as_secs_f64()
    );
    println!(
        "snapshot for one tenant's fetched keys (one tenant built, {} carried over): {:.3} s",
        n - 1,
        rebuild_one.as_secs_f64()
    );
    println!(
        "memory held by the snapshot (jemalloc stats.allocated, config dropped): {:.1} MiB, {:.0} bytes per key, tenant and map included",
        held as f64 / (1 << 20) as f64,
        held as f64 / keys as f64
    );
    println!(
        "tenant lookup in the snapshot: {per_lookup:.1} ns ({lookups} lookups, scattered ids)"
    );
}
