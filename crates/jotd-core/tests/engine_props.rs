//! Properties: garbage never panics and never allows; any one-byte change to a
//! valid token is denied; mint → verify round-trips for every algorithm.

mod fixture;

use fixture::{NOW, signer, snapshot, tenant};
use jotd_core::{Algorithm, Engine, EngineConfig, Reason, Request, Snapshot, UnixTime};
use proptest::prelude::*;
use std::sync::LazyLock;

static SNAP: LazyLock<Snapshot> = LazyLock::new(|| snapshot(vec![tenant("t", &Algorithm::ALL)]));
static ENGINE: LazyLock<Engine> = LazyLock::new(|| Engine::new(EngineConfig::default()));

fn decide(token: &[u8]) -> Reason {
    ENGINE
        .verify(&SNAP, &Request::bearer("t", token), UnixTime(NOW))
        .reason()
}

fn alg() -> impl Strategy<Value = Algorithm> {
    proptest::sample::select(Algorithm::ALL.to_vec())
}

fn token_for(alg: Algorithm, sub: &str, extra: &str) -> String {
    let claims = serde_json::json!({"sub": sub, "exp": NOW + 600, "x": extra}).to_string();
    signer(alg).mint(Some(&fixture::kid(alg)), &claims).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_allow(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let r = decide(&bytes);
        prop_assert!(!r.is_allow() || bytes.is_empty(), "{r}");
    }

    #[test]
    fn jws_shaped_garbage_never_allows(h in "[A-Za-z0-9_-]{0,60}", p in "[A-Za-z0-9_-]{0,200}", s in "[A-Za-z0-9_-]{0,120}") {
        let r = decide(format!("{h}.{p}.{s}").as_bytes());
        prop_assert!(!r.is_allow(), "{r}");
    }

    #[test]
    fn any_one_byte_change_is_denied(alg in alg(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let token = token_for(alg, "u", "v").into_bytes();
        prop_assert_eq!(decide(&token), Reason::Ok);
        let i = pos.index(token.len());
        prop_assume!(token[i] != byte);
        let mut changed = token.clone();
        changed[i] = byte;
        let r = decide(&changed);
        prop_assert!(!r.is_allow(), "{alg}: byte {i} {:?} -> {:?} allowed ({r})", token[i] as char, byte as char);
    }

    #[test]
    fn mint_verify_round_trips(alg in alg(), sub in "\\PC{0,40}", extra in "\\PC{0,100}") {
        let token = token_for(alg, &sub, &extra);
        let d = ENGINE.verify(&SNAP, &Request::bearer("t", token.as_bytes()), UnixTime(NOW));
        prop_assert_eq!(d.reason(), Reason::Ok);
        prop_assert_eq!(d.token().unwrap().sub(), Some(sub.as_str()));
    }
}
