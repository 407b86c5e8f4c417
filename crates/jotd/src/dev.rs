//! Development defaults: what `jotd serve` without `--config` runs on.
//!
//! Writes a fresh directory (default `./jotd-dev/`): a throwaway CA and a
//! server certificate for localhost, a client certificate (for trying mutual
//! TLS), demo signing keys (RS256, ES256, EdDSA, HS256) with their public
//! halves, a denylist and `jotd.toml` wiring it all up: tenant `demo`
//! (allowlist policy, audience `jotd-dev`, `web3_clientVersion` needs no
//! token) and tenant `demo-besu` (permissions policy, same audience and no-auth method). The load harness and
//! the client read the same directory. Private keys are written mode 0600.

use anyhow::Context;
use base64::Engine as _;
use jotd_core::{Algorithm, SigningKey};
use jotd_transport::DevPki;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The demo keys: (kid, algorithm, file stem).
pub(crate) const DEMO_KEYS: [(&str, Algorithm, &str); 4] = [
    ("rs256", Algorithm::Rs256, "rs256"),
    ("es256", Algorithm::Es256, "es256"),
    ("eddsa", Algorithm::EdDsa, "eddsa"),
    ("hs256", Algorithm::Hs256, "hs256"),
];

/// The audience demo tokens must carry.
pub(crate) const DEMO_AUDIENCE: &str = "jotd-dev";

/// Writes `path` afresh: a new file (never opened through a symlink, never an
/// old file keeping its old mode), moved into place by a rename, which
/// replaces whatever stood there (a symlink included, not its target). The
/// directory must belong to the user writing: in one another user made
/// first (`--dev-dir /tmp/x`) they could swap the files before jotd reads them.
fn write(path: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    let cannot = || format!("cannot write {}", path.display());
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    // A leftover (or a planted link) goes; the link itself, not its target.
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    let mut f = opts.open(&tmp).with_context(cannot)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let mine = f.metadata().with_context(cannot)?.uid();
        let owner = std::fs::metadata(dir).with_context(cannot)?.uid();
        if owner != mine {
            let _ = std::fs::remove_file(&tmp);
            anyhow::bail!(
                "{}: belongs to another user (uid {owner}); give --dev-dir a directory of your own",
                dir.display()
            );
        }
    }
    f.write_all(bytes).with_context(cannot)?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(cannot)?;
    Ok(())
}

/// Generates the development directory; returns the config file's path and
/// adds to `notes` what the caller should log (logging is not up yet).
pub(crate) fn generate(
    dir: &Path,
    listen: &str,
    notes: &mut Vec<String>,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir.join("keys"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    // A folder others may write (a umask of 002, an old 0777 one) would let
    // them swap a file between its write and the daemon reading it back: the
    // user's own folders lose group and other write (another user's are
    // refused when written to).
    #[cfg(unix)]
    for d in [dir.to_path_buf(), dir.join("keys")] {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let m = std::fs::metadata(&d).with_context(|| format!("cannot read {}", d.display()))?;
        if m.mode() & 0o022 != 0 {
            // Fails on a folder of another user's: `write` refuses that one by name.
            let _ =
                std::fs::set_permissions(&d, std::fs::Permissions::from_mode(m.mode() & 0o7755));
            let now = std::fs::metadata(&d).map_or(m.mode(), |m| m.mode());
            // A filesystem that ignores permissions (WSL's /mnt/c, vboxsf,
            // CIFS): development files only, so said (once logging is up) and served.
            if now & 0o022 != 0 {
                notes.push(format!(
                    "{}: development folder stays writable by others (mode {:o}; its filesystem ignores permissions): keep it where only you can write",
                    d.display(),
                    now & 0o7777
                ));
            }
        }
    }
    let pki = DevPki::generate()?;
    write(&dir.join("ca.pem"), pki.ca_pem.as_bytes(), false)?;
    write(
        &dir.join("server.pem"),
        pki.server_cert_pem.as_bytes(),
        false,
    )?;
    write(&dir.join("server.key"), pki.server_key_pem.as_bytes(), true)?;
    write(
        &dir.join("client.pem"),
        pki.client_cert_pem.as_bytes(),
        false,
    )?;
    write(&dir.join("client.key"), pki.client_key_pem.as_bytes(), true)?;

    let mut key_entries = String::new();
    let mut manifest_keys = Vec::new();
    for (kid, alg, stem) in DEMO_KEYS {
        let key = SigningKey::generate(alg).with_context(|| format!("generating {alg}"))?;
        if let Some(secret) = key.hmac_secret() {
            let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
            write(
                &dir.join(format!("keys/{stem}.secret")),
                b64.as_bytes(),
                true,
            )?;
            key_entries.push_str(&format!(
                "[[tenant.key]]\nkid = \"{kid}\"\nname = \"demo {alg}\"\nalg = \"{alg}\"\nsecret_base64 = \"{b64}\"\n\n"
            ));
            manifest_keys.push(serde_json::json!({
                "kid": kid, "alg": alg.as_str(), "secret_base64_file": format!("keys/{stem}.secret")
            }));
        } else {
            let pk8 = key.to_pkcs8().context("exporting a demo key")?;
            write(&dir.join(format!("keys/{stem}.pk8.der")), &pk8, true)?;
            let spki = key
                .verifying_key()
                .ok()
                .and_then(|k| k.spki_der())
                .context("public half of a demo key")?;
            let pem = pem::encode(&pem::Pem::new("PUBLIC KEY", spki));
            write(
                &dir.join(format!("keys/{stem}.pub.pem")),
                pem.as_bytes(),
                false,
            )?;
            key_entries.push_str(&format!(
                "[[tenant.key]]\nkid = \"{kid}\"\nname = \"demo {alg}\"\nalg = \"{alg}\"\npem_file = \"keys/{stem}.pub.pem\"\n\n"
            ));
            manifest_keys.push(serde_json::json!({
                "kid": kid, "alg": alg.as_str(), "pkcs8_file": format!("keys/{stem}.pk8.der")
            }));
        }
    }
    write(
        &dir.join("revoked.toml"),
        b"# Tokens of this subject are `revoked` until 2100.\n[[revoke]]\ntenant = \"demo\"\nsub = \"revoked-user\"\nuntil = 4102444800\n",
        false,
    )?;
    let config = format!(
        r#"# jotd development config, written by `jotd serve` (no --config).
# Regenerated on every such start: fresh CA, certificates and keys.
max_keys_per_tenant = 4
denylist_file = "revoked.toml"

[server]
listen = "{listen}"
cert_file = "server.pem"
key_file = "server.key"
# client_ca_file = "ca.pem"   # uncomment for mutual TLS (client.pem / client.key)

[admin]
listen = "127.0.0.1:9464"

[[tenant]]
id = "demo"
policy = "allowlist"
audiences = ["{DEMO_AUDIENCE}"]
no_auth_methods = ["web3_clientVersion"]
claims_to_return = ["scope"]

{key_entries}[[tenant]]
id = "demo-besu"
policy = "permissions"
audiences = ["{DEMO_AUDIENCE}"]
no_auth_methods = ["web3_clientVersion"]

{key_entries}"#
    );
    // What the load harness (`jotd-load run --dev`) needs to mint tokens and
    // know each one's expected decision.
    let manifest = serde_json::json!({
        "endpoint": listen,
        "ca": "ca.pem",
        "audience": DEMO_AUDIENCE,
        "no_auth_method": "web3_clientVersion",
        "revoked_sub": "revoked-user",
        "revoked_tenants": ["demo"],
        "keys": manifest_keys,
        "tenants": [
            {"id": "demo", "policy": "allowlist"},
            {"id": "demo-besu", "policy": "permissions"},
        ],
    });
    write(
        &dir.join("load.json"),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
        false,
    )?;
    let path = dir.join("jotd.toml");
    // The config holds the HMAC secret: private.
    write(&path, config.as_bytes(), true)?;
    write(
        &dir.join("README.txt"),
        b"Written by `jotd serve` on development defaults. Throwaway material: never use in production.\n\
ca.pem                CA the client trusts (server.pem is issued by it)\n\
server.pem/.key       the server's certificate and key (localhost, 127.0.0.1, ::1)\n\
client.pem/.key       a client certificate for trying mutual TLS\n\
keys/*.pk8.der        demo private keys (PKCS#8) for minting tokens; *.pub.pem their public keys\n\
keys/hs256.secret     the HS256 secret (base64)\n\
revoked.toml          denylist: sub \"revoked-user\" of tenant demo\n\
load.json             what jotd-load --dev reads: endpoint, CA, keys, tenants, expected-decision facts\n\
jotd.toml             the config jotd serve runs on\n",
        false,
    )?;
    Ok(path)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A development folder others may write is made the user's alone before
    /// anything is written in it.
    #[test]
    fn a_dev_folder_others_may_write_is_restricted_first() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("dev");
        std::fs::create_dir_all(dev.join("keys")).unwrap();
        for d in [&dev, &dev.join("keys")] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        generate(&dev, "127.0.0.1:4433", &mut Vec::new()).unwrap();
        for d in [&dev, &dev.join("keys")] {
            let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o755, "{}", d.display());
        }
    }

    /// A file planted where a key goes (a symlink to a file another user
    /// reads, an old file with mode 0644) is replaced, not written through:
    /// the key lands in a new 0600 file and the link's target is untouched.
    #[test]
    fn keys_are_written_to_new_files_never_through_what_stood_there() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("dev");
        let outside = dir.path().join("readable-by-others");
        std::fs::write(&outside, "before").unwrap();
        std::fs::create_dir_all(dev.join("keys")).unwrap();
        std::os::unix::fs::symlink(&outside, dev.join("keys/hs256.secret")).unwrap();
        std::fs::write(dev.join("server.key"), "old").unwrap();
        std::fs::set_permissions(
            dev.join("server.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        generate(&dev, "127.0.0.1:4433", &mut Vec::new()).unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "before");
        for private in ["keys/hs256.secret", "server.key", "client.key"] {
            let m = std::fs::symlink_metadata(dev.join(private)).unwrap();
            assert!(m.file_type().is_file(), "{private}");
            assert_eq!(m.permissions().mode() & 0o777, 0o600, "{private}");
        }
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(&dev)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
