//! The tenants config: every key source, the rules, errors that name file,
//! line and key, denylists, JWKS files, epochs across reloads, the store.

use jotd_core::{
    Algorithm, Engine, EngineConfig, PolicyModel, Reason, Request, SigningKey, UnixTime,
};
use jotd_keys::{ConfigError, KeyStore, KeysConfig};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const CONFIG: &str = "/etc/jotd/tenants.toml";

fn data(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name),
    )
    .expect(name)
}

/// An in-memory file system: the config plus the test key files under /etc/jotd/keys/.
struct Files(HashMap<PathBuf, Vec<u8>>);

impl Files {
    fn new(config: &str) -> Self {
        let mut m = HashMap::new();
        m.insert(PathBuf::from(CONFIG), config.as_bytes().to_vec());
        for f in [
            "rsa2048.pem",
            "rsa2048.der",
            "rsa1024.pem",
            "ec_p256.pem",
            "ed25519.pem",
            "ec_p256_cert.pem",
        ] {
            m.insert(PathBuf::from("/etc/jotd/keys").join(f), data(f));
        }
        Self(m)
    }

    fn with(mut self, path: &str, text: &str) -> Self {
        self.0.insert(PathBuf::from(path), text.as_bytes().to_vec());
        self
    }

    fn read(&self, p: &Path) -> io::Result<Vec<u8>> {
        self.0
            .get(p)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }

    fn load(&self) -> Result<KeysConfig, ConfigError> {
        jotd_keys::load(Path::new(CONFIG), &|p| self.read(p))
    }
}

fn rsa_pem_inline() -> String {
    String::from_utf8(data("rsa2048_pkcs1.pem")).unwrap()
}

/// (tenant id, [(kid, alg, has fingerprint)]), as `config check` lists them.
type Listing = Vec<(String, Vec<(String, Algorithm, bool)>)>;

/// The base64 of a 64-byte secret of distinct bytes (jotd refuses a
/// guessable one such as 64 zero bytes), one per `seed`.
fn hs512_secret(seed: u8) -> String {
    base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        std::array::from_fn::<u8, 64, _>(|i| (i as u8).wrapping_mul(3).wrapping_add(seed)),
    )
}

fn full_config() -> String {
    format!(
        r#"
max_keys_per_tenant = 3

[[tenant]]
id = "infura-project"
policy = "allowlist"
require_typ = true
audiences = ["jotd"]
claims_to_return = ["groups"]
no_auth_methods = ["net_version"]
leeway_s = 10
max_lifetime_s = 86400

[[tenant.key]]
kid = "rsa-file"
name = "primary"
alg = "RS256"
pem_file = "keys/rsa2048.pem"

[[tenant.key]]
kid = "rsa-pkcs1-inline"
alg = "RS384"
pem = """{pem}"""

[[tenant.key]]
kid = "ec-cert"
alg = "ES256"
pem_file = "keys/ec_p256_cert.pem"

[[tenant]]
id = "besu-node"
policy = "permissions"
algorithms = ["RS256", "EdDSA", "HS512"]

[[tenant.key]]
kid = "der"
alg = "RS256"
der_file = "/etc/jotd/keys/rsa2048.der"

[[tenant.key]]
kid = "ed"
jwk = {{ kty = "OKP", crv = "Ed25519", x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" }}

[[tenant.key]]
kid = "hs"
alg = "HS512"
secret_base64 = "{secret}"

[[tenant]]
id = "public"
require_jwt = false
"#,
        pem = rsa_pem_inline(),
        secret = hs512_secret(1),
    )
}

#[test]
fn a_full_config_loads_every_key_source() {
    let cfg = Files::new(&full_config())
        .load()
        .unwrap_or_else(|e| panic!("{e}"));
    let listing: Listing = cfg
        .tenants
        .iter()
        .map(|t| {
            (
                t.tenant.id.to_string(),
                t.keys
                    .iter()
                    .map(|k| (k.kid.clone(), k.alg, k.fingerprint.is_some()))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        listing,
        [
            (
                "infura-project".to_owned(),
                vec![
                    ("rsa-file".into(), Algorithm::Rs256, true),
                    ("rsa-pkcs1-inline".into(), Algorithm::Rs384, true),
                    ("ec-cert".into(), Algorithm::Es256, true)
                ]
            ),
            (
                "besu-node".to_owned(),
                vec![
                    ("der".into(), Algorithm::Rs256, true),
                    ("ed".into(), Algorithm::EdDsa, true),
                    ("hs".into(), Algorithm::Hs512, false)
                ]
            ),
            ("public".to_owned(), vec![]),
        ]
    );
    let infura = &cfg.tenants[0].tenant;
    assert_eq!(infura.policy, PolicyModel::Allowlist);
    assert!(infura.claims.typ.required);
    assert_eq!(infura.claims.leeway.as_secs(), 10);
    assert_eq!(
        cfg.tenants[0].keys[0].source, "pem_file /etc/jotd/keys/rsa2048.pem",
        "relative to the config's folder"
    );
    assert!(
        cfg.files
            .contains(&PathBuf::from("/etc/jotd/keys/ec_p256_cert.pem"))
    );
    // Same key, three encodings: one fingerprint.
    assert_eq!(
        cfg.tenants[0].keys[0].fingerprint,
        cfg.tenants[1].keys[0].fingerprint
    );
}

fn err(config: &str) -> ConfigError {
    Files::new(config)
        .load()
        .expect_err("config must be refused")
}

#[test]
fn key_before_reads_the_key_written_before_a_place() {
    use jotd_keys::key_before;
    let at = |text: &str, needle: &str| key_before(text, text.find(needle).unwrap());
    assert_eq!(at("a = 1\nflag = \"yes\"\n", "\"yes"), Some("flag".into()));
    assert_eq!(at("t = { x = 1, y = \"z\" }", "\"z"), Some("y".into()));
    assert_eq!(at("\"quoted-key\" = 1", "1"), Some("quoted-key".into()));
    assert_eq!(at("a.b = true", "true"), Some("a.b".into()));
    // No `=` before it on its line (an array's later line), or no plain key.
    assert_eq!(at("xs = [\n  1,\n  \"two\"\n]", "\"two"), None);
    assert_eq!(at("[table]\n", "table"), None);
    assert_eq!(at("\"a b\" = 1", "1"), None);
    // `=`, `,` and `{` inside strings are not the line's own.
    assert_eq!(at("xs = [\n  \"a=b\", 5\n]", "5"), None);
    assert_eq!(at("k = \"v=w\" + 1", "+"), Some("k".into()));
    assert_eq!(
        at("t = { s = 'a,b=c', n = \"x\\\"=\", m = 1 }", "1 }"),
        Some("m".into())
    );
    // Past the end, inside a character: nothing, never a panic.
    assert_eq!(key_before("é = 1", 1), None);
    assert_eq!(key_before("k = 1", 99), Some("k".into()));
}

#[test]
fn errors_name_file_line_and_key() {
    let cases: &[(&str, usize, &str, &str)] = &[
        (
            "[[tenant]]\nid = \"a\"\npolcy = \"none\"\n",
            3,
            "polcy",
            "unknown field",
        ),
        // A wrong type: serde names no key; the line's key is taken.
        (
            "[[tenant]]\nid = \"a\"\nrequire_jwt = \"no\"\n",
            3,
            "require_jwt",
            "invalid type: string \"no\", expected a boolean",
        ),
        (
            "[[tenant]]\nid = \"a\"\nkey = [{ kid = \"k\", leeway = 1, alg = 5 }]\n",
            3,
            "alg",
            "invalid type: integer `5`",
        ),
        (
            "[[tenant]]\nid = \"a\"\npolicy = \"deny-all\"\n[[tenant.key]]\nkid=\"k\"\nalg=\"HS256\"\nsecret=\"0123456789abcdefghijklmnopqrstuv\"\n",
            3,
            "tenant[0].policy",
            "not allowlist",
        ),
        (
            "[[tenant]]\nid = \"a\"\n[[tenant.key]]\nkid = \"k\"\nalg = \"RS257\"\npem_file = \"keys/rsa2048.pem\"\n",
            5,
            "tenant[0].key[0].alg",
            "unknown algorithm `RS257`",
        ),
        (
            "[[tenant]]\nid = \"a\"\n[[tenant.key]]\nkid = \"k\"\npem_file = \"keys/rsa2048.pem\"\n",
            3,
            "tenant[0].key[0].alg",
            "missing",
        ),
        (
            "[[tenant]]\nid = \"a\"\n[[tenant.key]]\nkid = \"k\"\nalg = \"RS256\"\npem_file = \"keys/rsa1024.pem\"\n",
            3,
            "tenant[0].key[0]",
            "1024 bits",
        ),
        (
            "[[tenant]]\nid = \"a\"\n[[tenant.key]]\nkid = \"k\"\nalg = \"HS256\"\nsecret = \"short\"\n",
            3,
            "tenant[0].key[0]",
            "shorter than the 32-byte minimum",
        ),
        (
            "[[tenant]]\nid = \"a\"\n[[tenant.key]]\nkid = \"k\"\nalg = \"ES384\"\npem_file = \"keys/ec_p256.pem\"\n",
            3,
            "tenant[0].key[0]",
            "key rejected for ES384",
        ),
        (
            "[[tenant]]\nid = \"a\"\n[[tenant.key]]\nkid = \"k\"\nalg = \"RS256\"\npem_file = \"keys/missing.pem\"\n",
            3,
            "tenant[0].key[0].pem_file",
            "cannot read /etc/jotd/keys/missing.pem",
        ),
        (
            "[[tenant]]\nid = \"a\"\n[[tenant.key]]\nkid = \"k\"\nalg = \"HS256\"\nsecret = \"0123456789abcdefghijklmnopqrstuv\"\npem_file = \"keys/rsa2048.pem\"\n",
            3,
            "tenant[0].key[0]",
            "exactly one of",
        ),
        (
            "[[tenant]]\nid = \"a\"\n[[tenant.key]]\nkid = \"k\"\nalg = \"HS256\"\nsecret = \"0123456789abcdefghijklmnopqrstuv\"\n[[tenant.key]]\nkid = \"k\"\nalg = \"HS256\"\nsecret = \"0123456789abcdef0123456789abcdeX\"\n",
            8,
            "tenant[0].key[1].kid",
            "duplicate kid `k` (first at line 3)",
        ),
        (
            "[[tenant]]\nid = \"a\"\nrequire_jwt = false\n[[tenant]]\nid = \"a\"\nrequire_jwt = false\n",
            5,
            "tenant[1].id",
            "duplicate tenant id `a` (first at line 1)",
        ),
        (
            "[[tenant]]\nid = \"a\"\n",
            1,
            "tenant[0].key",
            "no key and no jwks",
        ),
        (
            "[[tenant]]\nid = \"a\"\nleeway_s = 3600\nrequire_jwt = false\n",
            3,
            "tenant[0].leeway_s",
            "at most 600",
        ),
        (
            "[[tenant]]\nid = \"a\"\nalgorithms = [\"ES256\"]\n[[tenant.key]]\nkid = \"k\"\nalg = \"RS256\"\npem_file = \"keys/rsa2048.pem\"\n",
            4,
            "tenant[0].key[0].alg",
            "not in this tenant's algorithms",
        ),
        (
            "[[tenant]]\nid = \"a\"\n[[tenant.jwks]]\nurl = \"http://idp.example.com/jwks\"\n",
            3,
            "tenant[0].jwks[0].url",
            "plain http only to a loopback host",
        ),
        (
            "[[tenant]]\nid = \"a\"\n[[tenant.jwks]]\nurl = \"https://idp.example.com/jwks\"\nrefresh_s = 1\n",
            3,
            "tenant[0].jwks[0].refresh_s",
            "10..=86400",
        ),
        (
            "[[tenant]]\nid = \"a\"\n[[tenant.jwks]]\nurl = \"https://idp.example.com/jwks\"\nalg = \"RS256\"\n[[tenant.jwks]]\nurl = \"https://idp.example.com/jwks\"\nalg = \"ES256\"\n",
            6,
            "tenant[0].jwks[1].url",
            "`https://idp.example.com/jwks` is already tenant[0].jwks[0]",
        ),
        (
            "[[tenant]]\nid = \"a\"\n[[tenant.jwks]]\nfile = \"jwks.json\"\n[[tenant.jwks]]\nurl = \"https://idp.example.com/jwks\"\n[[tenant.jwks]]\nfile = \"./jwks.json\"\n",
            7,
            "tenant[0].jwks[2].file",
            "`/etc/jotd/./jwks.json` is already tenant[0].jwks[0]",
        ),
        ("[[tenant]\nid = \"a\"\n", 1, "", "unclosed array table"),
        (
            "max_keys_per_tenant = \"three\"\n",
            1,
            "max_keys_per_tenant",
            "invalid type",
        ),
    ];
    for (config, line, key, needle) in cases {
        let e = err(config);
        assert_eq!(e.file, PathBuf::from(CONFIG), "{config}");
        assert_eq!(
            (e.line, e.key.as_str()),
            (Some(*line), *key),
            "{config}\n=> {e}"
        );
        assert!(
            e.to_string().contains(needle),
            "{config}\n=> {e}\n(wanted {needle:?})"
        );
        assert!(
            e.to_string().starts_with(&format!("{CONFIG}:{line}:")),
            "{e}"
        );
    }
    // Too many keys for the default limit of 3.
    let four: String = (0..4).map(|i| format!("[[tenant.key]]\nkid = \"k{i}\"\nalg = \"HS256\"\nsecret = \"0123456789abcdef0123456789abcde{i}\"\n")).collect();
    let e = err(&format!("[[tenant]]\nid = \"a\"\n{four}"));
    assert!(
        e.to_string()
            .contains("4 keys, more than max_keys_per_tenant = 3"),
        "{e}"
    );
    // This crate owns the keys section and nothing else: a daemon's
    // section in a file it is asked to load alone is an unknown key.
    let e = err("[server]\nlisten = \"127.0.0.1:4433\"\n");
    assert!(e.to_string().contains("unknown field `server`"), "{e}");
    let unreadable = jotd_keys::load(Path::new("/nowhere.toml"), &|_| {
        Err(io::Error::other("denied"))
    })
    .unwrap_err();
    assert_eq!(unreadable.to_string(), "/nowhere.toml: cannot read: denied");
}

#[test]
fn snapshots_verify_tokens_and_epochs_follow_changes() {
    let files = Files::new(&full_config());
    let cfg = files.load().unwrap();
    let snap = cfg.snapshot(1, &|_, _| None);
    let engine = Engine::new(EngineConfig::default());
    let besu = snap.tenant("besu-node").unwrap();
    assert!(
        besu.algorithms.contains(Algorithm::EdDsa) && !besu.algorithms.contains(Algorithm::Es256)
    );
    // An RS256 token signed by the test key verifies through the DER-configured key.
    let signer = SigningKey::from_pkcs8(Algorithm::Rs256, &data("rsa2048.pk8.der")).unwrap();
    let token = signer
        .mint(
            Some("der"),
            &format!(r#"{{"exp":{},"permissions":["eth:*"]}}"#, 2_000_000_000u64),
        )
        .unwrap();
    let req = Request {
        token: Some(token.as_bytes()),
        tenant: "besu-node",
        method: Some("eth_call"),
        addresses: &[],
        origin: None,
        user_agent: None,
    };
    assert_eq!(
        engine.verify(&snap, &req, UnixTime(1_800_000_000)).reason(),
        Reason::Ok
    );

    // Reloading the same config keeps every epoch (cached tokens survive);
    // changing one tenant's key changes that tenant's epoch only.
    let again = files.load().unwrap().snapshot(2, &|_, _| None);
    for id in ["infura-project", "besu-node", "public"] {
        assert_eq!(
            snap.tenant(id).unwrap().epoch,
            again.tenant(id).unwrap().epoch,
            "{id}"
        );
    }
    let changed = Files::new(&full_config().replace(&hs512_secret(1), &hs512_secret(2)))
        .load()
        .unwrap()
        .snapshot(3, &|_, _| None);
    assert_ne!(
        snap.tenant("besu-node").unwrap().epoch,
        changed.tenant("besu-node").unwrap().epoch
    );
    assert_eq!(
        snap.tenant("infura-project").unwrap().epoch,
        changed.tenant("infura-project").unwrap().epoch
    );
    let rules = Files::new(&full_config().replace("leeway_s = 10", "leeway_s = 20"))
        .load()
        .unwrap()
        .snapshot(4, &|_, _| None);
    assert_ne!(
        snap.tenant("infura-project").unwrap().epoch,
        rules.tenant("infura-project").unwrap().epoch
    );
}

/// A tenant's epoch digest feeds each rule with its length: moving a boundary
/// inside a list (one name against two) or between two lists is a different
/// configuration, so it must be a different epoch. (Names with control
/// characters, which a separator-based digest confused, are refused outright:
/// `name_lists_refuse_entries_that_match_nothing`.)
#[test]
fn list_boundaries_are_part_of_the_epoch() {
    let epoch = |lists: &str| {
        let config = format!("[[tenant]]\nid = \"t\"\nrequire_jwt = false\n{lists}\n");
        Files::new(&config)
            .load()
            .unwrap()
            .snapshot(1, &|_, _| None)
            .tenant("t")
            .unwrap()
            .epoch
    };
    let cases = [
        r#"no_auth_methods = ["a b"]"#,
        r#"no_auth_methods = ["a", "b"]"#,
        r#"no_auth_methods = ["ab"]"#,
        "no_auth_methods = [\"a\"]\nclaims_to_return = [\"b\"]",
        "no_auth_methods = [\"a\", \"b\"]\nclaims_to_return = [\"c\"]",
        "claims_to_return = [\"a\", \"b\"]",
        "no_auth_methods = []",
        "origins = [\"https://a.example\"]",
        "origins = [\"https://b.example\"]",
    ];
    let epochs: Vec<u64> = cases.iter().map(|c| epoch(c)).collect();
    for (i, a) in epochs.iter().enumerate() {
        for (j, b) in epochs.iter().enumerate().skip(i + 1) {
            assert_ne!(a, b, "`{}` and `{}`", cases[i], cases[j]);
        }
    }
    // Empty lists and absent ones are the same configuration.
    assert_eq!(epoch("no_auth_methods = []"), epoch(""));
    assert_eq!(epoch(cases[1]), epoch(cases[1]));
}

#[test]
fn jwks_files_and_denylists() {
    let jwks = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"ed-jwks","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},{"kty":"oct","kid":"enc","use":"enc","k":"AAAA"}]}"#;
    let config = "denylist_file = \"revoked.toml\"\n[[tenant]]\nid = \"idp\"\n[[tenant.jwks]]\nfile = \"jwks.json\"\n";
    let revoked = "[[revoke]]\ntenant = \"idp\"\njti = \"stolen\"\nuntil = 2000000000\n[[revoke]]\ntenant = \"idp\"\nsub = \"mallory\"\nuntil = 2000000000\n";
    let files = Files::new(config)
        .with("/etc/jotd/jwks.json", jwks)
        .with("/etc/jotd/revoked.toml", revoked);
    let cfg = files.load().unwrap_or_else(|e| panic!("{e}"));
    let snap = cfg.snapshot(1, &|_, _| None);
    let idp = snap.tenant("idp").unwrap();
    assert_eq!(
        idp.keys.iter().map(|k| &*k.kid).collect::<Vec<_>>(),
        ["ed-jwks"]
    );
    assert!(idp.algorithms.contains(Algorithm::EdDsa));
    assert!(idp.denylist.is_revoked(Some("stolen"), None, UnixTime(1)));
    assert!(idp.denylist.is_revoked(None, Some("mallory"), UnixTime(1)));
    assert!(cfg.files.contains(&PathBuf::from("/etc/jotd/revoked.toml")));

    // One IdP's token revoked in every tenant: one with entries of its own
    // and one without both hold it.
    let two = "denylist_file = \"revoked.toml\"\n[[tenant]]\nid = \"a\"\n[[tenant.key]]\nkid = \"h\"\nalg = \"HS256\"\nsecret = \"0123456789abcdefghijklmnopqrstuv\"\n[[tenant]]\nid = \"b\"\n[[tenant.key]]\nkid = \"h\"\nalg = \"HS256\"\nsecret = \"0123456789abcdefghijklmnopqrstuv\"\n";
    let everywhere = "[[revoke]]\nall_tenants = true\njti = \"leaked\"\nuntil = 2000000000\n[[revoke]]\ntenant = \"a\"\nsub = \"mallory\"\nuntil = 2000000000\n";
    let cfg = Files::new(two)
        .with("/etc/jotd/revoked.toml", everywhere)
        .load()
        .unwrap_or_else(|e| panic!("{e}"));
    let snap = cfg.snapshot(1, &|_, _| None);
    for id in ["a", "b"] {
        let t = snap.tenant(id).unwrap();
        assert!(
            t.shared_denylist
                .is_revoked(Some("leaked"), None, UnixTime(1)),
            "{id}"
        );
        assert!(
            !t.denylist.is_revoked(Some("leaked"), None, UnixTime(1)),
            "not copied"
        );
        assert_eq!(
            t.denylist.is_revoked(None, Some("mallory"), UnixTime(1)),
            id == "a"
        );
    }
    // One list for every tenant, not a copy per tenant.
    assert!(std::sync::Arc::ptr_eq(
        &snap.tenant("a").unwrap().shared_denylist,
        &snap.tenant("b").unwrap().shared_denylist
    ));

    let bad_jwks = Files::new(config)
        .with("/etc/jotd/jwks.json", "{\"keys\":[]}")
        .with("/etc/jotd/revoked.toml", revoked)
        .load()
        .unwrap_err();
    assert_eq!(
        (bad_jwks.line, bad_jwks.key.as_str()),
        (Some(4), "tenant[0].jwks[0].file")
    );
    assert!(bad_jwks.message.contains("no usable key"), "{bad_jwks}");
    let bad_revoke = Files::new(config)
        .with("/etc/jotd/jwks.json", jwks)
        .with(
            "/etc/jotd/revoked.toml",
            "[[revoke]]\ntenant = \"nobody\"\njti = \"x\"\nuntil = 1\n",
        )
        .load()
        .unwrap_err();
    assert_eq!(
        bad_revoke.to_string(),
        "/etc/jotd/revoked.toml:1: revoke[0].tenant: no tenant `nobody` in the config"
    );
    let both = Files::new(config)
        .with("/etc/jotd/jwks.json", jwks)
        .with(
            "/etc/jotd/revoked.toml",
            "[[revoke]]\ntenant = \"idp\"\njti = \"x\"\nsub = \"y\"\nuntil = 1\n",
        )
        .load()
        .unwrap_err();
    assert!(
        both.to_string().contains("exactly one of jti, sub"),
        "{both}"
    );
}

#[test]
fn the_store_swaps_whole_snapshots_and_keeps_the_old_one_on_error() {
    let cfg = Files::new(&full_config()).load().unwrap();
    let store = KeyStore::new(cfg.snapshot(1, &|_, _| None));
    let in_flight = store.load();
    assert_eq!(
        store.replace(
            |g| Files::new("[[tenant]]\nid = \"only\"\nrequire_jwt = false\n")
                .load()
                .map(|c| c.snapshot(g, &|_, _| None))
        ),
        Ok(2)
    );
    assert_eq!(store.load().generation(), 2);
    assert!(store.load().tenant("only").is_some());
    assert!(
        in_flight.tenant("besu-node").is_some(),
        "a batch keeps the snapshot it started with"
    );
    let refused = store.replace(|g| {
        Files::new("[[tenant]]\nid = 5\n")
            .load()
            .map(|c| c.snapshot(g, &|_, _| None))
    });
    assert!(refused.is_err());
    assert_eq!(store.load().generation(), 2, "a bad config changes nothing");
}

/// A key replaced under the same `kid` changes its tenant's cache epoch, from every
/// source, HMAC secrets included (a JWKS `oct` key's secret once counted as empty, so a
/// rotated secret kept tokens forged with the leaked one in the cache).
#[test]
fn a_key_replaced_under_its_kid_changes_the_epoch_from_every_source() {
    use base64::Engine as _;
    let b64 = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let (s1, s2) = (
        b"0123456789abcdefghijklmnopqrstuv".as_slice(),
        b"vutsrqponmlkjihgfedcba9876543210".as_slice(),
    );
    let oct = |s: &[u8]| {
        format!(
            r#"{{"kty":"oct","kid":"h","alg":"HS256","k":"{}"}}"#,
            b64(s)
        )
    };
    let jwks = |s: &[u8]| format!(r#"{{"keys":[{}]}}"#, oct(s));
    let tenant = "[[tenant]]\nid = \"t\"\n";
    // (what the source is, the config, extra files) for secret 1 and secret 2.
    let sources = |s: &[u8]| {
        vec![
            (
                "secret",
                format!(
                    "{tenant}[[tenant.key]]\nkid = \"h\"\nalg = \"HS256\"\nsecret = \"{}\"\n",
                    std::str::from_utf8(s).unwrap()
                ),
                None,
            ),
            (
                "secret_base64",
                format!(
                    "{tenant}[[tenant.key]]\nkid = \"h\"\nalg = \"HS256\"\nsecret_base64 = \"{}\"\n",
                    base64::engine::general_purpose::STANDARD.encode(s)
                ),
                None,
            ),
            (
                "inline jwk",
                format!(
                    "{tenant}[[tenant.key]]\nkid = \"h\"\nalg = \"HS256\"\njwk = {}\n",
                    toml_inline(&oct(s))
                ),
                None,
            ),
            (
                "jwks file",
                format!("{tenant}[[tenant.jwks]]\nfile = \"jwks.json\"\n"),
                Some(jwks(s)),
            ),
        ]
    };
    let engine = Engine::new(EngineConfig::default());
    let claims = format!(r#"{{"exp":{}}}"#, 2_000_000_000u64);
    let token = SigningKey::from_hmac_secret(Algorithm::Hs256, s1)
        .unwrap()
        .mint(Some("h"), &claims)
        .unwrap();
    let req = Request {
        token: Some(token.as_bytes()),
        tenant: "t",
        method: None,
        addresses: &[],
        origin: None,
        user_agent: None,
    };
    let now = UnixTime(1_800_000_000);
    for ((what, c1, f1), (_, c2, f2)) in sources(s1).into_iter().zip(sources(s2)) {
        let snap = |config: &str, file: Option<String>, generation| {
            let mut files = Files::new(config);
            if let Some(f) = file {
                files = files.with("/etc/jotd/jwks.json", &f);
            }
            files
                .load()
                .unwrap_or_else(|e| panic!("{what}: {e}"))
                .snapshot(generation, &|_, _| None)
        };
        let (old, new) = (snap(&c1, f1, 1), snap(&c2, f2, 2));
        assert_ne!(
            old.tenant("t").unwrap().epoch,
            new.tenant("t").unwrap().epoch,
            "{what}"
        );
        // End to end: the token signed with the old secret is cached under the old
        // snapshot (the second lookup hits), and refused under the new one.
        engine.clear_cache();
        let hits = engine.cache_stats().unwrap().hits;
        for _ in 0..2 {
            assert_eq!(
                engine.verify(&old, &req, now).reason(),
                Reason::Ok,
                "{what}"
            );
        }
        assert!(
            engine.cache_stats().unwrap().hits > hits,
            "{what}: not cached"
        );
        assert_eq!(
            engine.verify(&new, &req, now).reason(),
            Reason::BadSignature,
            "{what}"
        );
    }
    // A JWKS URL's keys come from the fetcher: the same rule.
    let url_config = format!(
        "{tenant}[[tenant.jwks]]\nurl = \"https://idp.example.com/jwks\"\nsymmetric_keys = true\n"
    );
    let cfg = Files::new(&url_config).load().unwrap();
    let fetched =
        |s: &[u8]| Arc::new(jotd_keys::jwk::parse_jwks(jwks(s).as_bytes(), None, 16).unwrap());
    let (k1, k2) = (fetched(s1), fetched(s2));
    let old = cfg.snapshot(1, &|_, _| Some(Arc::clone(&k1)));
    let new = cfg.snapshot(2, &|_, _| Some(Arc::clone(&k2)));
    assert_ne!(
        old.tenant("t").unwrap().epoch,
        new.tenant("t").unwrap().epoch
    );
    engine.clear_cache();
    for _ in 0..2 {
        assert_eq!(engine.verify(&old, &req, now).reason(), Reason::Ok);
    }
    assert_eq!(
        engine.verify(&new, &req, now).reason(),
        Reason::BadSignature
    );
}

/// A JSON object as a TOML inline table (flat objects of strings only).
fn toml_inline(json: &str) -> String {
    let v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json).unwrap();
    let fields: Vec<String> = v.iter().map(|(k, v)| format!("{k} = {}", v)).collect();
    format!("{{ {} }}", fields.join(", "))
}

#[test]
fn max_jwks_keys_is_bounded() {
    let tenant = "[[tenant]]\nid = \"t\"\n[[tenant.key]]\nkid = \"k\"\nalg = \"HS256\"\nsecret = \"0123456789abcdefghijklmnopqrstuv\"\n";
    for bad in [0, 1025] {
        let e = Files::new(&format!("max_jwks_keys = {bad}\n{tenant}"))
            .load()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(":1: max_jwks_keys: {bad}: must be 1 to 1024")),
            "{e}"
        );
    }
    assert!(
        Files::new(&format!("max_jwks_keys = 1024\n{tenant}"))
            .load()
            .is_ok()
    );
}

/// Every list of names a tenant compares byte for byte (audiences, issuers,
/// required claims, no-auth methods, claims to return) refuses entries that
/// can only be mistakes, on the list's line, and bounds its length.
#[test]
fn name_lists_refuse_entries_that_match_nothing() {
    let key = "[[tenant.key]]\nkid = \"k\"\nalg = \"HS256\"\nsecret = \"0123456789abcdefghijklmnopqrstuv\"\n";
    for field in [
        "audiences",
        "issuers",
        "required_claims",
        "no_auth_methods",
        "claims_to_return",
    ] {
        for bad in ["\"\"", "\" api\"", "\"api \"", "\"a\\u0000b\"", "\"a\\tb\""] {
            let e = err(&format!(
                "[[tenant]]\nid = \"t\"\n{field} = [\"ok\", {bad}]\n{key}"
            ));
            assert_eq!(
                (e.line, e.key.as_str()),
                (Some(3), format!("tenant[0].{field}").as_str()),
                "{field} = {bad}: {e}"
            );
            assert!(e.message.starts_with("entry 1 `"), "{e}");
        }
        let many: Vec<String> = (0..1025).map(|i| format!("\"n{i}\"")).collect();
        let e = err(&format!(
            "[[tenant]]\nid = \"t\"\n{field} = [{}]\n{key}",
            many.join(", ")
        ));
        assert!(e.message.starts_with("at most "), "{field}: {e}");
        let fine = Files::new(&format!(
            "[[tenant]]\nid = \"t\"\n{field} = [\"https://a.example/x y\", \"eth_call\"]\n{key}"
        ))
        .load();
        assert!(fine.is_ok(), "{field}: {:?}", fine.err());
    }
    // A key's and a JWKS source's `issuer` by the same rule (a blank at an end
    // made every token that key verified `bad_issuer`, silently).
    let jwks = "[[tenant.jwks]]\nurl = \"https://idp.example/jwks.json\"\nalg = \"RS256\"\n";
    for (section, at) in [
        (key, "tenant[0].key[0].issuer"),
        (jwks, "tenant[0].jwks[0].issuer"),
    ] {
        for bad in ["\"\"", "\" https://idp\"", "\"https://idp \"", "\"a\\tb\""] {
            let e = err(&format!(
                "[[tenant]]\nid = \"t\"\n{section}issuer = {bad}\n"
            ));
            assert_eq!(e.key, at, "issuer = {bad}: {e}");
            assert!(e.message.contains("no leading or trailing blanks"), "{e}");
        }
    }
}

/// `accepted_typ` lets a tenant take RFC 9068 access tokens (`at+jwt`) instead of
/// turning the typ check off; entries are compared without `application/`, as the
/// token's value is.
#[test]
fn accepted_typ_is_configurable_and_normalised() {
    let secret = "0123456789abcdefghijklmnopqrstuv";
    let config = |typ: &str| {
        format!(
            "[[tenant]]\nid = \"t\"\nrequire_typ = true\naccepted_typ = {typ}\n[[tenant.key]]\nkid = \"k\"\nalg = \"HS256\"\nsecret = \"{secret}\"\n"
        )
    };
    let snap = Files::new(&config(r#"["application/at+jwt"]"#))
        .load()
        .unwrap()
        .snapshot(1, &|_, _| None);
    let engine = Engine::new(EngineConfig::default());
    let key = SigningKey::from_hmac_secret(Algorithm::Hs256, secret.as_bytes()).unwrap();
    let claims = format!(r#"{{"exp":{}}}"#, 2_000_000_000u64);
    for (typ, want) in [
        (Some("at+jwt"), Reason::Ok),
        (Some("application/AT+JWT"), Reason::Ok),
        (Some("JWT"), Reason::BadTyp),
        (None, Reason::BadTyp),
    ] {
        let header = match typ {
            Some(t) => format!(r#"{{"alg":"HS256","kid":"k","typ":"{t}"}}"#),
            None => r#"{"alg":"HS256","kid":"k"}"#.to_owned(),
        };
        let token = key.mint_raw(header.as_bytes(), claims.as_bytes()).unwrap();
        let req = Request::bearer("t", token.as_bytes());
        assert_eq!(
            engine.verify(&snap, &req, UnixTime(1_800_000_000)).reason(),
            want,
            "{typ:?}"
        );
    }
    for (bad, why) in [
        ("[]", "at least one media type"),
        (r#"["a/b"]"#, "`a/b`: a media type"),
        (r#"["application/"]"#, "a media type"),
    ] {
        let e = Files::new(&config(bad)).load().unwrap_err().to_string();
        assert!(
            e.contains(":4: tenant[0].accepted_typ:") && e.contains(why),
            "{bad}: {e}"
        );
    }
}

/// A tenant fed by two identity providers binds each key (static or from a JWKS) to
/// its provider's `iss`: provider B's key cannot sign a token that claims to come
/// from provider A, even though the tenant accepts both issuers.
#[test]
fn keys_bound_to_an_issuer_verify_only_that_issuers_tokens() {
    let (sa, sb) = (
        "0123456789abcdefghijklmnopqrstuv",
        "vutsrqponmlkjihgfedcba9876543210",
    );
    let config = format!(
        "[[tenant]]\nid = \"t\"\nissuers = [\"https://a\", \"https://b\"]\n\
         [[tenant.key]]\nkid = \"ka\"\nalg = \"HS256\"\nsecret = \"{sa}\"\nissuer = \"https://a\"\n\
         [[tenant.key]]\nkid = \"kb\"\nalg = \"HS256\"\nsecret = \"{sb}\"\nissuer = \"https://b\"\n\
         [[tenant.jwks]]\nurl = \"https://idp-c.example/jwks\"\nissuer = \"https://c\"\nsymmetric_keys = true\n"
    );
    let cfg = Files::new(&config).load().unwrap_or_else(|e| panic!("{e}"));
    use base64::Engine as _;
    let sc = "0011223344556677889900aabbccddeeffgghh";
    let jwks = format!(
        r#"{{"keys":[{{"kty":"oct","kid":"kc","alg":"HS256","k":"{}"}}]}}"#,
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sc)
    );
    let fetched = Arc::new(jotd_keys::jwk::parse_jwks(jwks.as_bytes(), None, 16).unwrap());
    let snap = cfg.snapshot(1, &|_, _| Some(Arc::clone(&fetched)));
    let engine = Engine::new(EngineConfig::default());
    let decide = |secret: &str, kid: &str, iss: Option<&str>| {
        let claims = match iss {
            Some(i) => format!(r#"{{"exp":2000000000,"iss":"{i}"}}"#),
            None => r#"{"exp":2000000000}"#.to_owned(),
        };
        let token = SigningKey::from_hmac_secret(Algorithm::Hs256, secret.as_bytes())
            .unwrap()
            .mint(Some(kid), &claims)
            .unwrap();
        engine
            .verify(
                &snap,
                &Request::bearer("t", token.as_bytes()),
                UnixTime(1_800_000_000),
            )
            .reason()
    };
    assert_eq!(decide(sa, "ka", Some("https://a")), Reason::Ok);
    assert_eq!(decide(sb, "kb", Some("https://b")), Reason::Ok);
    assert_eq!(
        decide(sb, "kb", Some("https://a")),
        Reason::BadIssuer,
        "B speaking for A"
    );
    assert_eq!(
        decide(sa, "ka", Some("https://b")),
        Reason::BadIssuer,
        "A speaking for B"
    );
    assert_eq!(decide(sb, "kb", None), Reason::MissingClaim);
    // The fetched key is bound to its source's issuer; the tenant's list still applies.
    assert_eq!(decide(sc, "kc", Some("https://a")), Reason::BadIssuer);
    assert_eq!(
        decide(sc, "kc", Some("https://c")),
        Reason::BadIssuer,
        "not in issuers"
    );

    // Binding a key to another issuer changes the tenant's epoch (cached tokens go).
    let rebound = Files::new(&config.replace("issuer = \"https://b\"", "issuer = \"https://b2\""))
        .load()
        .unwrap()
        .snapshot(2, &|_, _| Some(Arc::clone(&fetched)));
    assert_ne!(
        snap.tenant("t").unwrap().epoch,
        rebound.tenant("t").unwrap().epoch
    );

    let e = Files::new(&config.replace("issuer = \"https://a\"", "issuer = \"\""))
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tenant[0].key[0].issuer:") && e.contains("must be the exact `iss`"),
        "{e}"
    );
}

/// Keys fetched while a source named one `alg` do not serve after a reload names
/// another: the key would keep verifying with the algorithm the operator removed.
#[test]
fn fetched_keys_read_under_another_alg_are_not_used() {
    use base64::Engine as _;
    let secret = std::array::from_fn::<u8, 64, _>(|i| (i as u8).wrapping_mul(7).wrapping_add(9));
    let jwks = format!(
        r#"{{"keys":[{{"kty":"oct","kid":"h","k":"{}"}}]}}"#,
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let config = |alg: &str| {
        format!(
            "[[tenant]]\nid = \"t\"\n[[tenant.jwks]]\nurl = \"https://idp.example/jwks\"\nalg = \"{alg}\"\nsymmetric_keys = true\n"
        )
    };
    let parsed =
        |alg| Arc::new(jotd_keys::jwk::parse_jwks(jwks.as_bytes(), Some(alg), 16).unwrap());
    let engine = Engine::new(EngineConfig::default());
    let token = |alg| {
        SigningKey::from_hmac_secret(alg, &secret)
            .unwrap()
            .mint(Some("h"), r#"{"exp":2000000000}"#)
            .unwrap()
    };
    let (t256, t384) = (token(Algorithm::Hs256), token(Algorithm::Hs384));
    let now = UnixTime(1_800_000_000);
    let decide = |snap: &jotd_core::Snapshot, t: &str| {
        engine
            .verify(snap, &Request::bearer("t", t.as_bytes()), now)
            .reason()
    };
    let old_keys = parsed(Algorithm::Hs256);
    let snap = Files::new(&config("HS256"))
        .load()
        .unwrap()
        .snapshot(1, &|_, _| Some(Arc::clone(&old_keys)));
    assert_eq!(decide(&snap, &t256), Reason::Ok);
    // The operator moves the source to HS384. Until the next fetch, the HS256 reading
    // of the document is not used: an HS384 token finds no key (which asks for a
    // refetch), rather than meeting the old HS256 key.
    let hs384 = Files::new(&config("HS384")).load().unwrap();
    let snap = hs384.snapshot(2, &|_, _| Some(Arc::clone(&old_keys)));
    assert_eq!(decide(&snap, &t384), Reason::UnknownKid);
    assert_ne!(decide(&snap, &t256), Reason::Ok);
    let new_keys = parsed(Algorithm::Hs384);
    let snap = hs384.snapshot(3, &|_, _| Some(Arc::clone(&new_keys)));
    assert_eq!(decide(&snap, &t384), Reason::Ok);
    assert_ne!(decide(&snap, &t256), Reason::Ok);
}

/// One key under one kid from two sources bound to two issuers (Azure AD's
/// v1 and v2 endpoints publish the same keys): the first source's binding
/// wins, so the second issuer's tokens are bad_issuer. That is reported as a
/// shadowed kid (it was silent: the key material is the same).
#[test]
fn one_key_under_two_issuers_is_reported_as_shadowed() {
    let jwks = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    let config = |second: &str| {
        format!(
            "[[tenant]]\nid = \"t\"\n[[tenant.jwks]]\nfile = \"a.json\"\nissuer = \"https://a/\"\n[[tenant.jwks]]\nfile = \"b.json\"\nissuer = \"{second}\"\n"
        )
    };
    for (second, shadowed) in [("https://b/", true), ("https://a/", false)] {
        let cfg = Files::new(&config(second))
            .with("/etc/jotd/a.json", jwks)
            .with("/etc/jotd/b.json", jwks)
            .load()
            .unwrap_or_else(|e| panic!("{e}"));
        let want: &[(String, String)] = if shadowed {
            &[("t".to_owned(), "k".to_owned())][..]
        } else {
            &[]
        };
        assert_eq!(cfg.shadowed_kids(), want, "{second}");
    }
}

/// A tenant's `origins` load into its rules; an entry that can match no
/// origin is an error naming the tenant, the key and the entry.
#[test]
fn tenant_origins_load_and_bad_entries_are_named() {
    let config = "[[tenant]]\nid = \"t\"\nrequire_jwt = false\norigins = [\"https://app.example.com\", \"*.example.org\"]\n";
    let snap = Files::new(config).load().unwrap().snapshot(1, &|_, _| None);
    let origins: Vec<&str> = snap
        .tenant("t")
        .unwrap()
        .origins
        .iter()
        .map(|o| &**o)
        .collect();
    assert_eq!(origins, ["https://app.example.com", "*.example.org"]);
    for bad in [
        "https://app.example.com/path",
        "app.*.example.com",
        "https://",
        "a b",
    ] {
        let config = format!(
            "[[tenant]]\nid = \"t\"\nrequire_jwt = false\norigins = [\"ok.example\", \"{bad}\"]\n"
        );
        let e = Files::new(&config).load().unwrap_err().to_string();
        assert!(
            e.contains("tenant[0].origins") && e.contains("entry 1"),
            "{bad}: {e}"
        );
    }
}

/// A JWKS file named by many tenants is read (and parsed) once per load;
/// a file past `MAX_JWKS_FILE_BYTES` is refused with its place; a tenant
/// lists at most `MAX_JWKS_SOURCES` sources.
#[test]
fn jwks_files_are_read_once_and_bounded() {
    let jwks = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"ed-jwks","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    let config: String = (0..200)
        .map(|i| format!("[[tenant]]\nid = \"t{i}\"\n[[tenant.jwks]]\nfile = \"jwks.json\"\n"))
        .collect();
    let files = Files::new(&config).with("/etc/jotd/jwks.json", jwks);
    let reads = std::cell::Cell::new(0);
    let cfg = jotd_keys::load(Path::new(CONFIG), &|p| {
        if p.ends_with("jwks.json") {
            reads.set(reads.get() + 1);
        }
        files.read(p)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reads.get(), 1, "read once for 200 tenants");
    let snap = cfg.snapshot(1, &|_, _| None);
    for i in [0, 199] {
        assert_eq!(snap.tenant(&format!("t{i}")).unwrap().keys.len(), 1);
    }

    let big = format!(
        r#"{{"keys":[],"pad":"{}"}}"#,
        "x".repeat(jotd_keys::MAX_JWKS_FILE_BYTES)
    );
    let e = Files::new("[[tenant]]\nid = \"t\"\n[[tenant.jwks]]\nfile = \"jwks.json\"\n")
        .with("/etc/jotd/jwks.json", &big)
        .load()
        .unwrap_err();
    assert!(
        e.key == "tenant[0].jwks[0].file" && e.message.contains("holds at most"),
        "{e}"
    );

    let many: String = (0..=jotd_keys::MAX_JWKS_SOURCES)
        .map(|i| format!("[[tenant.jwks]]\nurl = \"https://idp{i}.example/jwks\"\n"))
        .collect();
    let e = Files::new(&format!("[[tenant]]\nid = \"t\"\n{many}"))
        .load()
        .unwrap_err();
    assert_eq!(
        e.key,
        format!("tenant[0].jwks[{}]", jotd_keys::MAX_JWKS_SOURCES),
        "{e}"
    );
}

/// A JWKS file's keys outside the tenant's configured `algorithms` are left
/// out and listed (they could never verify), as a static key of such an
/// algorithm is refused; a file with none of the tenant's algorithms is an
/// error naming it. Without `algorithms`, every key loads.
#[test]
fn jwks_file_keys_outside_the_tenants_algorithms_are_left_out() {
    use base64::Engine as _;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        (0u8..32)
            .map(|i| i.wrapping_mul(37).wrapping_add(11))
            .collect::<Vec<_>>(),
    );
    let jwks = format!(
        r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}},{{"kty":"oct","kid":"h","alg":"HS256","k":"{secret}"}}]}}"#
    );
    let with = |algs: &str| {
        Files::new(&format!(
            "[[tenant]]\nid = \"t\"\n{algs}[[tenant.jwks]]\nfile = \"jwks.json\"\n"
        ))
        .with("/etc/jotd/jwks.json", &jwks)
        .load()
    };
    let cfg = with("algorithms = [\"HS256\"]\n").unwrap_or_else(|e| panic!("{e}"));
    let snap = cfg.snapshot(1, &|_, _| None);
    let kids: Vec<&str> = snap
        .tenant("t")
        .unwrap()
        .keys
        .iter()
        .map(|k| &*k.kid)
        .collect();
    assert_eq!(kids, ["h"]);
    let listed = &cfg.jwks_files[&(0, 0)];
    assert!(
        listed
            .skipped_summary()
            .contains("\"ed\": EdDSA is not in the tenant's algorithms"),
        "{}",
        listed.skipped_summary()
    );
    let cfg = with("").unwrap_or_else(|e| panic!("{e}"));
    let snap = cfg.snapshot(1, &|_, _| None);
    assert_eq!(snap.tenant("t").unwrap().keys.len(), 2);
    let e = with("algorithms = [\"ES256\"]\n").unwrap_err();
    assert!(
        e.key == "tenant[0].jwks[0].file"
            && e.message.contains("no key of the tenant's algorithms"),
        "{e}"
    );
    // Fetched from a URL, the same document: only the tenant's algorithms serve.
    let cfg = Files::new(
        "[[tenant]]\nid = \"u\"\nalgorithms = [\"HS256\"]\n[[tenant.jwks]]\nurl = \"https://idp.example/jwks\"\nsymmetric_keys = true\n",
    )
    .load()
    .unwrap_or_else(|e| panic!("{e}"));
    let doc =
        Arc::new(jotd_keys::jwk::parse_fetched_jwks(jwks.as_bytes(), None, 10, true).unwrap());
    let snap = cfg.snapshot(1, &|_, _| Some(Arc::clone(&doc)));
    let kids: Vec<&str> = snap
        .tenant("u")
        .unwrap()
        .keys
        .iter()
        .map(|k| &*k.kid)
        .collect();
    assert_eq!(kids, ["h"]);
}
