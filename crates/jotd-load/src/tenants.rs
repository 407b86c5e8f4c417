//! `jotd-load tenants` (a daemon config for N tenants) and `jotd-load mint`.

use crate::workload::{Manifest, ManifestKey, ManifestTenant};
use anyhow::{Context, bail};
use base64::Engine as _;
use clap::Args;
use jotd_core::{Algorithm, SigningKey};
use jotd_transport::DevPki;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Options of `jotd-load tenants`.
#[derive(Args, Debug)]
pub(crate) struct TenantsArgs {
    /// Number of tenants.
    #[arg(long)]
    count: usize,
    /// Algorithms: every tenant gets one key per algorithm (kid = the algorithm, lower case).
    #[arg(long, value_delimiter = ',', default_value = "RS256,ES256,EdDSA")]
    algs: Vec<String>,
    /// Output folder (created).
    #[arg(long)]
    out: PathBuf,
    /// The daemon's QUIC address, written into the config.
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: String,
    /// The daemon's admin address, written into the config.
    #[arg(long, default_value = "127.0.0.1:9464")]
    admin: String,
    /// Extra lines for the config's `[verify]` section (e.g. `cache = false`).
    #[arg(long)]
    verify: Vec<String>,
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

const POLICIES: [&str; 3] = ["allowlist", "permissions", "none"];
const AUDIENCE: &str = "jotd-load";
const NO_AUTH: &str = "web3_clientVersion";
const REVOKED_SUB: &str = "revoked-user";

pub(crate) fn tenants(a: &TenantsArgs) -> anyhow::Result<()> {
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    let algs = a
        .algs
        .iter()
        .map(|s| {
            Algorithm::from_name(s).with_context(|| format!("--algs: unknown algorithm `{s}`"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if algs.is_empty() {
        bail!("--algs: at least one");
    }
    let out = &a.out;
    std::fs::create_dir_all(out.join("keys"))
        .with_context(|| format!("cannot create {}", out.display()))?;
    let pki = DevPki::generate()?;
    write(&out.join("ca.pem"), pki.ca_pem.as_bytes())?;
    write(&out.join("server.pem"), pki.server_cert_pem.as_bytes())?;
    write(&out.join("server.key"), pki.server_key_pem.as_bytes())?;
    write(&out.join("client.pem"), pki.client_cert_pem.as_bytes())?;
    write(&out.join("client.key"), pki.client_key_pem.as_bytes())?;

    let mut key_block = String::new();
    let mut keys = Vec::new();
    for alg in &algs {
        let kid = alg.as_str().to_ascii_lowercase();
        let key = SigningKey::generate(*alg).map_err(|e| anyhow::anyhow!("{alg}: {e}"))?;
        if let Some(secret) = key.hmac_secret() {
            let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
            write(&out.join(format!("keys/{kid}.secret")), b64.as_bytes())?;
            let _ = write!(
                key_block,
                "[[tenant.key]]\nkid = \"{kid}\"\nalg = \"{alg}\"\nsecret_base64 = \"{b64}\"\n"
            );
            keys.push(ManifestKey {
                kid,
                alg: alg.as_str().into(),
                pkcs8_file: None,
                secret_base64_file: Some(format!(
                    "keys/{}.secret",
                    alg.as_str().to_ascii_lowercase()
                )),
            });
        } else {
            let pk8 = key.to_pkcs8().context("exporting a key")?;
            write(&out.join(format!("keys/{kid}.pk8.der")), &pk8)?;
            let spki = key
                .verifying_key()
                .ok()
                .and_then(|k| k.spki_der())
                .context("public half of a key")?;
            let pem = pem::encode(&pem::Pem::new("PUBLIC KEY", spki));
            write(&out.join(format!("keys/{kid}.pub.pem")), pem.as_bytes())?;
            let _ = write!(
                key_block,
                "[[tenant.key]]\nkid = \"{kid}\"\nalg = \"{alg}\"\npem_file = \"keys/{kid}.pub.pem\"\n"
            );
            keys.push(ManifestKey {
                kid: kid.clone(),
                alg: alg.as_str().into(),
                pkcs8_file: Some(format!("keys/{kid}.pk8.der")),
                secret_base64_file: None,
            });
        }
    }
    let revoked_count = a.count.min(100);
    let mut deny = String::new();
    let mut config = format!(
        "# Written by jotd-load tenants: {} tenants x {} keys.\nmax_keys_per_tenant = {}\ndenylist_file = \"revoked.toml\"\n\n[server]\nlisten = \"{}\"\ncert_file = \"server.pem\"\nkey_file = \"server.key\"\n\n[admin]\nlisten = \"{}\"\n\n[verify]\n{}\n",
        a.count,
        algs.len(),
        algs.len().max(3),
        a.listen,
        a.admin,
        a.verify.join("\n"),
    );
    let mut tenants = Vec::with_capacity(a.count);
    for i in 0..a.count {
        let id = format!("tenant-{i:06}");
        let policy = POLICIES[i % POLICIES.len()];
        let _ = write!(
            config,
            "\n[[tenant]]\nid = \"{id}\"\npolicy = \"{policy}\"\naudiences = [\"{AUDIENCE}\"]\nno_auth_methods = [\"{NO_AUTH}\"]\n{key_block}"
        );
        if i < revoked_count {
            let _ = write!(
                deny,
                "[[revoke]]\ntenant = \"{id}\"\nsub = \"{REVOKED_SUB}\"\nuntil = 4102444800\n"
            );
        }
        tenants.push(ManifestTenant {
            id,
            policy: policy.into(),
        });
    }
    // The last tenant takes rotated keys during soak runs (`run --reload-every`):
    // keys appended at the end of the file land in it. No load is sent to it.
    let _ = write!(
        config,
        "\n[[tenant]]\nid = \"rotation\"\n{}",
        rotated_key(0)?
    );
    write(&out.join("revoked.toml"), deny.as_bytes())?;
    write(&out.join("jotd.toml"), config.as_bytes())?;
    let manifest = Manifest {
        endpoint: a.listen.clone(),
        ca: "ca.pem".into(),
        audience: AUDIENCE.into(),
        no_auth_method: NO_AUTH.into(),
        revoked_sub: REVOKED_SUB.into(),
        revoked_tenants: tenants
            .iter()
            .take(revoked_count)
            .map(|t| t.id.clone())
            .collect(),
        keys,
        tenants,
    };
    write(
        &out.join("load.json"),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    println!(
        "wrote {}: jotd.toml ({} tenants + rotation, {} keys each), load.json, TLS files, keys/",
        out.display(),
        a.count,
        algs.len()
    );
    println!(
        "run:  jotd serve --config {0}/jotd.toml    then    jotd-load run --manifest {0}/load.json",
        out.display()
    );
    Ok(())
}

/// Options of `jotd-load mint`.
#[derive(Args, Debug)]
pub(crate) struct MintArgs {
    /// Private key: PKCS#8 DER file, or (HS*) a file holding the base64 secret.
    #[arg(long)]
    key: PathBuf,
    /// Algorithm.
    #[arg(long)]
    alg: String,
    /// `kid` header.
    #[arg(long)]
    kid: Option<String>,
    /// Claims (a JSON object); `iat` and `exp` are added when absent.
    #[arg(long, default_value = "{}")]
    claims: String,
    /// Lifetime in seconds, for the added `exp`.
    #[arg(long, default_value_t = 3600)]
    lifetime: u64,
}

pub(crate) fn mint(a: &MintArgs) -> anyhow::Result<()> {
    let alg =
        Algorithm::from_name(&a.alg).with_context(|| format!("--alg: unknown `{}`", a.alg))?;
    let bytes = jotd_transport::files::read_file(&a.key)
        .with_context(|| format!("--key {}: cannot read", a.key.display()))?;
    let key = if alg.as_str().starts_with("HS") {
        let secret = base64::engine::general_purpose::STANDARD
            .decode(String::from_utf8_lossy(&bytes).trim())
            .with_context(|| format!("--key {}: not a base64 secret", a.key.display()))?;
        SigningKey::from_hmac_secret(alg, &secret)
    } else {
        SigningKey::from_pkcs8(alg, &bytes)
    }
    .map_err(|e| anyhow::anyhow!("--key {}: {e}", a.key.display()))?;
    let mut claims: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&a.claims)
        .with_context(|| "--claims: not a JSON object".to_owned())?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    claims.entry("iat").or_insert(now.into());
    let exp = now
        .checked_add(a.lifetime)
        .with_context(|| format!("--lifetime {}: too long", a.lifetime))?;
    claims.entry("exp").or_insert(exp.into());
    let token = key
        .mint(
            a.kid.as_deref(),
            &serde_json::Value::Object(claims).to_string(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{token}");
    Ok(())
}

/// A `[[tenant.key]]` block with a fresh random HS256 secret under kid
/// `rot-{n}`, for the tenant that takes rotated keys. (A clock reading in hex
/// was once used: half its digits were zeros, and jotd refuses such a
/// guessable secret.)
pub(crate) fn rotated_key(n: u64) -> anyhow::Result<String> {
    let key = SigningKey::generate(Algorithm::Hs256).map_err(|e| anyhow::anyhow!("HS256: {e}"))?;
    let secret = key
        .hmac_secret()
        .context("an HS256 signing key holds a secret")?;
    Ok(format!(
        "[[tenant.key]]\nkid = \"rot-{n}\"\nalg = \"HS256\"\nsecret_base64 = \"{}\"\n",
        base64::engine::general_purpose::STANDARD.encode(secret)
    ))
}
