//! The whole engine on arbitrary token bytes against a tenant with real keys:
//! never panics, never `internal_error`, never allows (no forger has the keys).
#![no_main]

use jotd_core::{Algorithm, Engine, EngineConfig, Reason, Request, SigningKey, Snapshot, Tenant, TenantKey, UnixTime};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, LazyLock};

static SETUP: LazyLock<(Engine, Snapshot)> = LazyLock::new(|| {
    let keys = [Algorithm::Rs256, Algorithm::Es256, Algorithm::EdDsa, Algorithm::Hs256]
        .into_iter()
        .map(|alg| TenantKey {
            kid: alg.as_str().to_ascii_lowercase().into(),
            key: SigningKey::generate(alg).unwrap().verifying_key().unwrap(),
            issuer: None,
        })
        .collect();
    (Engine::new(EngineConfig::default()), Snapshot::new(1, [Arc::new(Tenant::new("t", keys))]))
});

fuzz_target!(|data: &[u8]| {
    let (engine, snap) = &*SETUP;
    let d = engine.verify(snap, &Request::bearer("t", data), UnixTime(1_700_000_000));
    assert!(!d.allow() || data.is_empty(), "allowed {data:?}");
    assert_ne!(d.reason(), Reason::InternalError);
});
