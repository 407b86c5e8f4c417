//! Hot reload: changed files are picked up, a bad config is rejected whole
//! while the old snapshot keeps serving, fetched JWKS keys survive reloads.

use jotd_core::{Algorithm, Engine, EngineConfig, Reason, Request, SigningKey, UnixTime};
use jotd_keys::Reloader;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const NOW: u64 = 1_800_000_000;

/// Files with a version each; writing bumps it, as a new mtime would.
#[derive(Clone, Default)]
struct Fs(Arc<Mutex<HashMap<PathBuf, Versioned>>>);

/// A file's bytes and version.
type Versioned = (Vec<u8>, u64);

impl Fs {
    fn write(&self, path: &str, text: &str) {
        let mut m = self.0.lock().unwrap();
        let v = m.get(Path::new(path)).map_or(0, |e| e.1) + 1;
        m.insert(PathBuf::from(path), (text.as_bytes().to_vec(), v));
    }

    fn reloader(&self) -> Result<Reloader, jotd_keys::ConfigError> {
        let (r, s) = (self.clone(), self.clone());
        Reloader::start(
            Path::new("/cfg/jotd.toml"),
            Box::new(move |p| {
                r.0.lock()
                    .unwrap()
                    .get(p)
                    .map(|e| e.0.clone())
                    .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
            }),
            Box::new(move |p| s.0.lock().unwrap().get(p).map(|e| (None, e.1))),
        )
    }
}

fn secret_config(secret: &str) -> String {
    format!(
        "[[tenant]]\nid = \"t\"\n[[tenant.key]]\nkid = \"k\"\nalg = \"HS256\"\nsecret_base64 = \"{secret}\"\n"
    )
}

fn token(secret: &[u8]) -> String {
    SigningKey::from_hmac_secret(Algorithm::Hs256, secret)
        .unwrap()
        .mint(Some("k"), &format!(r#"{{"exp":{}}}"#, NOW + 60))
        .unwrap()
}

fn decide(r: &Reloader, token: &str) -> Reason {
    let engine = Engine::new(EngineConfig {
        cache: None,
        ..EngineConfig::default()
    });
    engine
        .verify(
            &r.store().load(),
            &Request::bearer("t", token.as_bytes()),
            UnixTime(NOW),
        )
        .reason()
}

#[test]
fn changed_files_reload_and_bad_configs_are_rejected_whole() {
    let fs = Fs::default();
    let (one, two) = (
        std::array::from_fn::<u8, 32, _>(|i| (i as u8).wrapping_mul(7).wrapping_add(1)),
        std::array::from_fn::<u8, 32, _>(|i| (i as u8).wrapping_mul(7).wrapping_add(2)),
    );
    use base64::Engine as _;
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    fs.write(
        "/cfg/jotd.toml",
        &format!(
            "denylist_file = \"revoked.toml\"\n{}",
            secret_config(&b64(&one))
        ),
    );
    fs.write("/cfg/revoked.toml", "");
    let r = fs.reloader().unwrap();
    assert_eq!(r.store().load().generation(), 1);
    assert!(r.reload_if_changed().is_none(), "nothing changed");
    assert_eq!(decide(&r, &token(&one)), Reason::Ok);

    // Rotate the secret: the new key serves, the old one no longer does.
    fs.write(
        "/cfg/jotd.toml",
        &format!(
            "denylist_file = \"revoked.toml\"\n{}",
            secret_config(&b64(&two))
        ),
    );
    assert_eq!(r.reload_if_changed(), Some(Ok(2)));
    assert_eq!(decide(&r, &token(&two)), Reason::Ok);
    assert_eq!(decide(&r, &token(&one)), Reason::BadSignature);
    let in_flight = r.store().load();

    // A broken config: rejected whole, generation 2 keeps serving, the error is kept for health.
    fs.write(
        "/cfg/jotd.toml",
        "[[tenant]]\nid = \"t\"\npolicy = \"nope\"\n",
    );
    let err = r.reload_if_changed().unwrap().unwrap_err();
    assert_eq!((err.line, err.key.as_str()), (Some(3), "tenant[0].policy"));
    assert_eq!(r.store().load().generation(), 2);
    assert_eq!(decide(&r, &token(&two)), Reason::Ok);
    let status = r.status();
    assert_eq!((status.ok, status.failed), (1, 1));
    assert_eq!(status.last_error.as_ref(), Some(&err));
    // Nothing changed since: not read (and rejected) again on every check.
    assert!(r.reload_if_changed().is_none(), "rejected already");
    assert_eq!(r.status().failed, 1);
    // Changed again (still broken): read again.
    fs.write(
        "/cfg/jotd.toml",
        "[[tenant]]\nid = \"t\"\npolicy = \"nope2\"\n",
    );
    assert!(matches!(r.reload_if_changed(), Some(Err(_))));
    assert_eq!(r.status().failed, 2);

    // A watched file other than the config (the denylist) also triggers a reload.
    fs.write(
        "/cfg/jotd.toml",
        &format!(
            "denylist_file = \"revoked.toml\"\n{}",
            secret_config(&b64(&two))
        ),
    );
    assert!(r.reload().is_ok());
    fs.write("/cfg/revoked.toml", "[[revoke]]\ntenant = \"t\"\nsub = \"x\"\nuntil = 1\n[[revoke]]\ntenant = \"t\"\nsub = \"y\"\nuntil = 1\n");
    assert!(matches!(r.reload_if_changed(), Some(Ok(_))));
    assert_eq!(r.store().load().tenant("t").unwrap().denylist.sub.len(), 2);
    assert_eq!(r.status().last_error, None);
    assert_eq!(
        in_flight.generation(),
        2,
        "a batch's snapshot never changes under it"
    );
}

#[test]
fn fetched_jwks_keys_survive_reloads() {
    let fs = Fs::default();
    let config = "[[tenant]]\nid = \"t\"\n[[tenant.jwks]]\nurl = \"https://idp.example/jwks\"\nalg = \"HS256\"\nsymmetric_keys = true\n";
    fs.write("/cfg/jotd.toml", config);
    let r = fs.reloader().unwrap();
    let secret = std::array::from_fn::<u8, 32, _>(|i| (i as u8).wrapping_mul(7).wrapping_add(9));
    assert_eq!(
        decide(&r, &token(&secret)),
        Reason::UnknownKid,
        "no keys fetched yet"
    );
    use base64::Engine as _;
    let doc = format!(
        r#"{{"keys":[{{"kty":"oct","kid":"k","k":"{}"}}]}}"#,
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let keys = jotd_keys::jwk::parse_jwks(doc.as_bytes(), Some(Algorithm::Hs256), 16).unwrap();
    let generation = r.set_fetched("t", "https://idp.example/jwks", Arc::new(keys));
    assert_eq!(generation, 2);
    assert_eq!(decide(&r, &token(&secret)), Reason::Ok);
    // The same document fetched again (a refresh, a refetch for an unknown
    // kid): nothing is rebuilt, the serving snapshot stays.
    let again = jotd_keys::jwk::parse_jwks(doc.as_bytes(), Some(Algorithm::Hs256), 16).unwrap();
    let before = r.store().load();
    assert_eq!(
        r.set_fetched("t", "https://idp.example/jwks", Arc::new(again)),
        2
    );
    assert!(
        Arc::ptr_eq(&before, &r.store().load()),
        "an unchanged document rebuilt the snapshot"
    );
    // Keys read under another `alg` than the source now has (a fetch begun
    // before a reload changed it, finishing late) are not installed: they
    // would replace the good keys with ones the snapshot ignores.
    let stale = jotd_keys::jwk::parse_jwks(doc.as_bytes(), None, 16);
    let stale = stale.unwrap_or_else(|_| {
        // An oct key needs an alg: read one that names its own.
        let own = doc.replace(r#""kty":"oct","#, r#""kty":"oct","alg":"HS256","#);
        jotd_keys::jwk::parse_jwks(own.as_bytes(), None, 16).unwrap()
    });
    assert_eq!(stale.parsed_alg, None);
    r.set_fetched("t", "https://idp.example/jwks", Arc::new(stale));
    assert_eq!(
        decide(&r, &token(&secret)),
        Reason::Ok,
        "the keys read the source's way still serve"
    );
    // The same for `symmetric_keys`: a document read with the flag off (a
    // fetch begun before a reload turned it on, finishing after the new
    // one) holds no secret, and would have replaced the keys read with it.
    // (A document of secrets alone read so fails to parse; one that also
    // holds public keys gives those, and this is its secret-less part.)
    let unflagged = jotd_keys::jwk::JwksKeys {
        keys: Vec::new(),
        skipped: vec!["kid \"k\": a symmetric key in a JWKS fetched over the network".into()],
        skipped_total: 1,
        parsed_alg: Some(Algorithm::Hs256),
        parsed_symmetric: false,
    };
    let before = r.store().load();
    r.set_fetched("t", "https://idp.example/jwks", Arc::new(unflagged));
    assert!(
        Arc::ptr_eq(&before, &r.store().load()),
        "keys read without the source's symmetric_keys were installed"
    );
    assert_eq!(decide(&r, &token(&secret)), Reason::Ok);
    fs.write(
        "/cfg/jotd.toml",
        &config.replace("id = \"t\"\n", "id = \"t\"\nleeway_s = 5\n"),
    );
    assert_eq!(r.reload_if_changed(), Some(Ok(3)));
    assert_eq!(
        decide(&r, &token(&secret)),
        Reason::Ok,
        "fetched keys are kept across a reload"
    );
    // The tenant removed, then added back: its old fetched keys do not come
    // back with it (its identity provider may have retired them meanwhile);
    // the next fetch brings what the provider serves then.
    let other = "[[tenant]]\nid = \"o\"\nrequire_jwt = false\n";
    fs.write("/cfg/jotd.toml", other);
    assert!(matches!(r.reload_if_changed(), Some(Ok(_))));
    // A fetch that finishes after the removal is not kept either.
    let late = jotd_keys::jwk::parse_jwks(doc.as_bytes(), Some(Algorithm::Hs256), 16).unwrap();
    r.set_fetched("t", "https://idp.example/jwks", Arc::new(late));
    fs.write("/cfg/jotd.toml", config);
    assert!(matches!(r.reload_if_changed(), Some(Ok(_))));
    assert_eq!(
        decide(&r, &token(&secret)),
        Reason::UnknownKid,
        "keys fetched for a removed tenant are gone"
    );
}

/// After a read of the denylist that found it torn (empty): mallory still
/// passes; the next check reads it again (`why`) and revokes her; then nothing
/// is left to read.
fn read_torn_then_again(r: &Reloader, mallory: &str, why: &str) {
    assert_eq!(decide(r, mallory), Reason::Ok, "the torn read had no entry");
    assert!(matches!(r.reload_if_changed(), Some(Ok(_))), "{why}");
    assert_eq!(decide(r, mallory), Reason::Revoked, "{why}");
    assert!(r.reload_if_changed().is_none(), "and then left alone");
}

/// A file read while it is being rewritten (truncated, then written) is read again
/// on the next check: it is stamped before the read, so the finished file's stamp
/// differs from the one recorded. Stamped after the read, the half-written denylist
/// stayed in service until the file changed once more.
#[test]
fn a_file_read_mid_write_is_read_again() {
    let fs = Fs::default();
    let secret = std::array::from_fn::<u8, 32, _>(|i| (i as u8).wrapping_mul(7).wrapping_add(7));
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    fs.write(
        "/cfg/jotd.toml",
        &format!("denylist_file = \"revoked.toml\"\n{}", secret_config(&b64)),
    );
    fs.write("/cfg/revoked.toml", "");
    // The writer: what `finish` holds for a path is written right after the next read
    // of it, as a writer that truncated the file and is still writing would.
    let finish: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let (files, stamps, f) = (fs.clone(), fs.clone(), Arc::clone(&finish));
    let r = Reloader::start(
        Path::new("/cfg/jotd.toml"),
        Box::new(move |p| {
            let read = files
                .0
                .lock()
                .unwrap()
                .get(p)
                .map(|e| e.0.clone())
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound));
            if let Some(text) = f.lock().unwrap().remove(p.to_str().unwrap()) {
                files.write(p.to_str().unwrap(), &text);
            }
            read
        }),
        Box::new(move |p| stamps.0.lock().unwrap().get(p).map(|e| (None, e.1))),
    )
    .unwrap();
    let mallory = SigningKey::from_hmac_secret(Algorithm::Hs256, &secret)
        .unwrap()
        .mint(
            Some("k"),
            &format!(r#"{{"exp":{},"sub":"mallory"}}"#, NOW + 60),
        )
        .unwrap();
    assert_eq!(decide(&r, &mallory), Reason::Ok);

    // Truncated (a new stamp), read empty, then finished.
    fs.write("/cfg/revoked.toml", "");
    finish.lock().unwrap().insert(
        "/cfg/revoked.toml".to_owned(),
        format!(
            "[[revoke]]\ntenant = \"t\"\nsub = \"mallory\"\nuntil = {}\n",
            NOW + 3600
        ),
    );
    // The stamp moved during the read: read again within the same reload,
    // so the torn (empty) denylist is never served.
    assert!(matches!(r.reload_if_changed(), Some(Ok(_))));
    assert_eq!(
        decide(&r, &mallory),
        Reason::Revoked,
        "the finished file was read at once"
    );
    assert!(r.reload_if_changed().is_none(), "and then left alone");

    // A file that keeps changing under every read is not installed: the
    // running config stays (mallory still revoked), and the error says why.
    let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (files, stamps, w) = (fs.clone(), fs.clone(), Arc::clone(&writes));
    let config_text = fs.0.lock().unwrap()[Path::new("/cfg/jotd.toml")].0.clone();
    let churn = Reloader::start(
        Path::new("/cfg/jotd.toml"),
        Box::new(move |p| {
            let read = files.0.lock().unwrap().get(p).map(|e| e.0.clone());
            if p.ends_with("revoked.toml")
                && w.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 1
            {
                files.write("/cfg/revoked.toml", "");
            }
            read.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }),
        Box::new(move |p| stamps.0.lock().unwrap().get(p).map(|e| (None, e.1))),
    )
    .unwrap();
    assert!(!config_text.is_empty());
    assert_eq!(decide(&churn, &mallory), Reason::Revoked);
    fs.write("/cfg/revoked.toml", "");
    let e = churn.reload_if_changed().unwrap().unwrap_err();
    assert!(e.message.contains("kept changing while it was read"), "{e}");
    assert_eq!(
        decide(&churn, &mallory),
        Reason::Revoked,
        "the running config stays"
    );
}

/// A file the config names for the first time has no stamp from before its
/// read. Added by a reload, it is stamped and read once more within that
/// reload. At start, it is stamped after: one modified after its read may
/// have begun (here: read half-written, finished at once) is read again at
/// the first check; one left alone for longer than the slack is not.
/// Real files, so the modification times are the file system's.
#[test]
fn a_new_file_modified_while_it_was_read_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let write = |name: &str, text: &str, modified: Option<std::time::SystemTime>| {
        std::fs::write(path(name), text).unwrap();
        if let Some(m) = modified {
            std::fs::File::options()
                .write(true)
                .open(path(name))
                .unwrap()
                .set_modified(m)
                .unwrap();
        }
    };
    use base64::Engine as _;
    let secret = std::array::from_fn::<u8, 32, _>(|i| (i as u8).wrapping_mul(7).wrapping_add(9));
    let config = secret_config(&base64::engine::general_purpose::STANDARD.encode(secret));
    let revoked = format!(
        "[[revoke]]\ntenant = \"t\"\nsub = \"mallory\"\nuntil = {}\n",
        NOW + 3600
    );
    let start = |torn: Arc<Mutex<Vec<PathBuf>>>| {
        Reloader::start(
            &path("jotd.toml"),
            Box::new(move |p| {
                // A path in `torn` is read once as the empty file a writer had just
                // truncated; the finished text is on disk by the time it is stamped.
                let mut torn = torn.lock().unwrap();
                if let Some(i) = torn.iter().position(|t| t == p) {
                    torn.remove(i);
                    return Ok(Vec::new());
                }
                std::fs::read(p)
            }),
            Box::new(|p| {
                std::fs::metadata(p)
                    .ok()
                    .map(|m| (m.modified().ok(), m.len()))
            }),
        )
        .unwrap()
    };
    let mallory = SigningKey::from_hmac_secret(Algorithm::Hs256, &secret)
        .unwrap()
        .mint(
            Some("k"),
            &format!(r#"{{"exp":{},"sub":"mallory"}}"#, NOW + 60),
        )
        .unwrap();

    // Files untouched for an hour: settled at start, nothing to read again.
    write("jotd.toml", &config, Some(long_ago));
    let torn: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
    let r = start(Arc::clone(&torn));
    assert!(r.reload_if_changed().is_none(), "old files are settled");

    // A reload names a denylist for the first time, read torn.
    write("revoked.toml", &revoked, None);
    write(
        "jotd.toml",
        &format!("denylist_file = \"revoked.toml\"\n{config}"),
        None,
    );
    // It is read a second time within the reload (a file named anew gets a
    // stamp before a read of its own), so the torn read is never served.
    torn.lock().unwrap().push(path("revoked.toml"));
    assert!(matches!(r.reload_if_changed(), Some(Ok(_))));
    assert_eq!(
        decide(&r, &mallory),
        Reason::Revoked,
        "a file named anew is read again at once"
    );
    assert!(r.reload_if_changed().is_none(), "and then left alone");

    // The same at start: the denylist read torn, read again at the first check.
    torn.lock().unwrap().push(path("revoked.toml"));
    let r = start(Arc::clone(&torn));
    read_torn_then_again(&r, &mallory, "a file read torn at start is read again");
}

/// A JWKS fetch rebuilds the tenants that read its URL and carries every
/// other tenant over as it is (the same `Arc`): at 100k tenants a fetch for
/// one costs that one. What it builds equals a full rebuild's.
#[test]
fn a_fetch_rebuilds_only_the_tenants_that_read_its_url() {
    use base64::Engine as _;
    let fs = Fs::default();
    let jwks = |url: &str| {
        format!(
            "[[tenant.jwks]]\ninternal = true\nurl = \"{url}\"\nalg = \"HS256\"\nsymmetric_keys = true\n"
        )
    };
    let (u1, u2) = ("https://one.example/jwks", "https://two.example/jwks");
    let stat = std::array::from_fn::<u8, 32, _>(|i| (i as u8).wrapping_mul(7).wrapping_add(3));
    fs.write(
        "/cfg/jotd.toml",
        &format!(
            "[[tenant]]\nid = \"a\"\n{}[[tenant]]\nid = \"b\"\n{}[[tenant]]\nid = \"c\"\n{}{}",
            jwks(u1),
            jwks(u1),
            jwks(u2),
            secret_config(&base64::engine::general_purpose::STANDARD.encode(stat))
                .replace("id = \"t\"", "id = \"d\"")
        ),
    );
    let r = fs.reloader().unwrap();
    let keys = |seed: u8| {
        let secret =
            std::array::from_fn::<u8, 32, _>(|i| (i as u8).wrapping_mul(7).wrapping_add(seed));
        let doc = format!(
            r#"{{"keys":[{{"kty":"oct","kid":"k","k":"{}"}}]}}"#,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        let parsed =
            jotd_keys::jwk::parse_jwks(doc.as_bytes(), Some(Algorithm::Hs256), 16).unwrap();
        (secret, Arc::new(parsed))
    };
    let decide_for = |tenant: &str, token: &str| {
        Engine::new(EngineConfig {
            cache: None,
            ..EngineConfig::default()
        })
        .verify(
            &r.store().load(),
            &Request::bearer(tenant, token.as_bytes()),
            UnixTime(NOW),
        )
        .reason()
    };
    let same = |a: &jotd_core::Snapshot, b: &jotd_core::Snapshot, id: &str| {
        Arc::ptr_eq(a.tenant_arc(id).unwrap(), b.tenant_arc(id).unwrap())
    };

    let (s1, k1) = keys(11);
    let before = r.store().load();
    r.set_fetched_many(&["a", "b"], u1, k1);
    let after = r.store().load();
    assert!(!same(&before, &after, "a") && !same(&before, &after, "b"));
    assert!(same(&before, &after, "c") && same(&before, &after, "d"));
    assert_eq!(decide_for("a", &token(&s1)), Reason::Ok);
    assert_eq!(decide_for("b", &token(&s1)), Reason::Ok);
    assert_eq!(decide_for("c", &token(&s1)), Reason::UnknownKid);
    assert_eq!(decide_for("d", &token(&stat)), Reason::Ok);

    let (s2, k2) = keys(12);
    let before = r.store().load();
    r.set_fetched("c", u2, k2);
    let after = r.store().load();
    assert!(!same(&before, &after, "c"));
    assert!(["a", "b", "d"].iter().all(|t| same(&before, &after, t)));
    assert_eq!(decide_for("c", &token(&s2)), Reason::Ok);
    assert_eq!(decide_for("a", &token(&s1)), Reason::Ok);

    // What the fetches built equals a full rebuild from the same config and keys.
    let incremental = r.store().load();
    fs.write(
        "/cfg/jotd.toml",
        &format!(
            "{}\n",
            String::from_utf8(fs.0.lock().unwrap()[Path::new("/cfg/jotd.toml")].0.clone()).unwrap()
        ),
    );
    assert!(matches!(r.reload_if_changed(), Some(Ok(_))));
    let full = r.store().load();
    for id in ["a", "b", "c", "d"] {
        let (x, y) = (incremental.tenant(id).unwrap(), full.tenant(id).unwrap());
        assert!(
            !same(&incremental, &full, id),
            "{id}: the reload rebuilt it"
        );
        assert_eq!(x.epoch, y.epoch, "{id}");
        assert_eq!(x.keys.len(), y.keys.len(), "{id}");
        assert_eq!(x.algorithms, y.algorithms, "{id}");
    }
}
