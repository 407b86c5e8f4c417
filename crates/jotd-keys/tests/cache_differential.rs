//! The verified-token cache never changes a decision: through random
//! sequences of config changes (rules, policy, keys rotated under the same
//! kid, tenants removed and added back) and requests (tokens, methods, times),
//! a cached engine that lives through all of them answers exactly as an
//! uncached one, reason and token facts alike. Snapshots are built the way
//! the daemon builds them (jotd-keys from config text, tenant epochs
//! included), so the epoch digest is under test too.

use jotd_core::{Algorithm, Engine, EngineConfig, Request, SigningKey, UnixTime};
use proptest::prelude::*;
use std::path::Path;

const NOW: u64 = 1_800_000_000;
const SECRETS: [&[u8; 32]; 2] = [
    b"cache-differential secret, one!!",
    b"cache-differential secret, two!!",
];

/// One tenant's rules, chosen by index (each field one option of a few).
#[derive(Debug, Clone, Copy)]
struct Rules {
    present: bool,
    secret: usize,
    leeway: usize,
    audience: bool,
    policy: usize,
    required: bool,
    returned: bool,
    no_auth: bool,
}

fn rules() -> impl Strategy<Value = Rules> {
    (
        prop::bool::weighted(0.85),
        0..2usize,
        0..2usize,
        any::<bool>(),
        0..3usize,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(present, secret, leeway, audience, policy, required, returned, no_auth)| Rules {
                present,
                secret,
                leeway,
                audience,
                policy,
                required,
                returned,
                no_auth,
            },
        )
}

fn config(tenants: &[Rules; 2]) -> String {
    use base64::Engine as _;
    let mut out = String::new();
    for (i, r) in tenants.iter().enumerate() {
        if !r.present {
            continue;
        }
        out += &format!(
            "[[tenant]]\nid = \"t{i}\"\npolicy = \"{}\"\nleeway_s = {}\n",
            ["none", "allowlist", "permissions"][r.policy],
            [0, 30][r.leeway]
        );
        if r.audience {
            out += "audiences = [\"api\"]\n";
        }
        if r.required {
            out += "required_claims = [\"name\"]\n";
        }
        if r.returned {
            out += "claims_to_return = [\"name\", \"tier\"]\n";
        }
        if r.no_auth {
            out += "no_auth_methods = [\"net_version\"]\n";
        }
        out += &format!(
            "[[tenant.key]]\nkid = \"k\"\nalg = \"HS256\"\nsecret_base64 = \"{}\"\n",
            base64::engine::general_purpose::STANDARD.encode(SECRETS[r.secret])
        );
    }
    out
}

/// A token: which secret signs it, and which claims it carries.
#[derive(Debug, Clone, Copy)]
struct Tok {
    secret: usize,
    aud: bool,
    name: usize,
    exp: usize,
    grants: usize,
    jti: usize,
}

fn tok() -> impl Strategy<Value = Tok> {
    (
        0..2usize,
        any::<bool>(),
        0..3usize,
        0..3usize,
        0..3usize,
        0..3usize,
    )
        .prop_map(|(secret, aud, name, exp, grants, jti)| Tok {
            secret,
            aud,
            name,
            exp,
            grants,
            jti,
        })
}

fn mint(t: Tok) -> String {
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), "user".into());
    claims.insert("jti".into(), format!("j{}", t.jti).into());
    match t.exp {
        0 => {
            claims.insert("exp".into(), (NOW + 20).into());
        }
        1 => {
            claims.insert("exp".into(), (NOW + 3600).into());
        }
        _ => {}
    }
    if t.aud {
        claims.insert("aud".into(), "api".into());
    }
    match t.name {
        0 => {}
        1 => {
            claims.insert("name".into(), "ada".into());
        }
        _ => {
            claims.insert("name".into(), serde_json::Value::Null);
        }
    }
    match t.grants {
        0 => {}
        1 => {
            claims.insert("methods".into(), serde_json::json!(["eth_call"]));
        }
        _ => {
            claims.insert("permissions".into(), serde_json::json!(["eth:*"]));
        }
    }
    claims.insert("tier".into(), serde_json::json!({"level": t.jti}));
    SigningKey::from_hmac_secret(Algorithm::Hs256, SECRETS[t.secret])
        .unwrap()
        .mint(Some("k"), &serde_json::Value::Object(claims).to_string())
        .unwrap()
}

#[derive(Debug, Clone)]
enum Step {
    Reconfigure([Rules; 2]),
    Verify {
        /// Index into the run's pool of tokens (few, so they recur across
        /// config changes: the case the cache must get right).
        tok: usize,
        tenant: usize,
        method: usize,
        later: u64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => [rules(), rules()].prop_map(Step::Reconfigure),
        6 => (0..4usize, 0..2usize, 0..3usize, 0..4u64).prop_map(|(tok, tenant, method, later)| Step::Verify {
            tok,
            tenant,
            method,
            later: [0, 15, 40, 4000][later as usize],
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn the_cache_never_changes_a_decision(
        first in [rules(), rules()],
        pool in [tok(), tok(), tok(), tok()],
        steps in prop::collection::vec(step(), 1..40),
    ) {
        let tokens: Vec<String> = pool.iter().map(|t| mint(*t)).collect();
        let cached = Engine::new(EngineConfig::default());
        let uncached = Engine::new(EngineConfig { cache: None, ..EngineConfig::default() });
        let load = |tenants: &[Rules; 2], generation: u64| {
            let text = config(tenants);
            let read = |_: &Path| Ok(text.clone().into_bytes());
            jotd_keys::load(Path::new("/etc/jotd/jotd.toml"), &read)
                .unwrap()
                .snapshot(generation, &|_, _| None)
        };
        let mut generation = 1;
        let mut snap = load(&first, generation);
        for step in steps {
            match step {
                Step::Reconfigure(tenants) => {
                    generation += 1;
                    snap = load(&tenants, generation);
                }
                Step::Verify { tok, tenant, method, later } => {
                    let token = &tokens[tok];
                    let tenant = format!("t{tenant}");
                    let req = Request {
                        token: Some(token.as_bytes()),
                        tenant: &tenant,
                        method: [None, Some("eth_call"), Some("net_version")][method],
                        addresses: &[],
                        origin: None,
                        user_agent: None,
                    };
                    let now = UnixTime(NOW + later);
                    // Three times: seen, admitted, then a hit.
                    for _ in 0..3 {
                        let a = cached.verify(&snap, &req, now);
                        let b = uncached.verify(&snap, &req, now);
                        prop_assert_eq!(&a, &b, "{:?} for {} at +{}", pool[tok], tenant, later);
                    }
                }
            }
        }
    }
}
