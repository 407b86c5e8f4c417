//! The workload: the manifest (what the daemon was configured with), outcome
//! mixes, the token pool (every token with the decision it must get), and
//! pre-encoded batches.

use anyhow::{Context, bail};
use base64::Engine as _;
use jotd_core::{Algorithm, Reason, SigningKey};
use jotd_transport::{BatchRequest, Item, encode_batch};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What the harness knows about the daemon's config: written next to it by
/// `jotd serve` (development defaults) and by `jotd-load tenants`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Manifest {
    /// The daemon's QUIC address.
    pub(crate) endpoint: String,
    /// CA certificate file (relative to the manifest).
    pub(crate) ca: String,
    /// The audience every tenant requires.
    pub(crate) audience: String,
    /// A method every tenant allows without a token.
    pub(crate) no_auth_method: String,
    /// A `sub` revoked for `revoked_tenants`.
    pub(crate) revoked_sub: String,
    /// Tenants where `revoked_sub` is revoked.
    pub(crate) revoked_tenants: Vec<String>,
    /// Signing keys, shared by every tenant.
    pub(crate) keys: Vec<ManifestKey>,
    /// Tenants.
    pub(crate) tenants: Vec<ManifestTenant>,
}

/// One signing key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ManifestKey {
    pub(crate) kid: String,
    pub(crate) alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs8_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_base64_file: Option<String>,
}

/// One tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ManifestTenant {
    pub(crate) id: String,
    /// `allowlist`, `permissions` or `none`.
    pub(crate) policy: String,
}

impl Manifest {
    pub(crate) fn load(path: &Path) -> anyhow::Result<(Self, PathBuf)> {
        let text = jotd_transport::files::read_text(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let m: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a jotd-load manifest", path.display()))?;
        if m.tenants.is_empty() || m.keys.is_empty() {
            bail!("{}: no tenants or no keys", path.display());
        }
        let dir = path.parent().unwrap_or(Path::new(".")).to_owned();
        Ok((m, dir))
    }

    /// Loads the signing keys of `algs` (all when empty).
    pub(crate) fn signing_keys(
        &self,
        dir: &Path,
        algs: &[Algorithm],
    ) -> anyhow::Result<Vec<(String, SigningKey)>> {
        let mut out = Vec::new();
        for k in &self.keys {
            let alg = Algorithm::from_name(&k.alg)
                .with_context(|| format!("manifest key {}: unknown alg {}", k.kid, k.alg))?;
            if !algs.is_empty() && !algs.contains(&alg) {
                continue;
            }
            let key = if let Some(f) = &k.pkcs8_file {
                let der = jotd_transport::files::read_file(&dir.join(f))
                    .with_context(|| format!("manifest key {}: cannot read {f}", k.kid))?;
                SigningKey::from_pkcs8(alg, &der)
                    .map_err(|e| anyhow::anyhow!("manifest key {}: {f}: {e}", k.kid))?
            } else if let Some(f) = &k.secret_base64_file {
                let text = jotd_transport::files::read_text(&dir.join(f))
                    .with_context(|| format!("manifest key {}: cannot read {f}", k.kid))?;
                let secret = base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .with_context(|| format!("manifest key {}: {f} is not base64", k.kid))?;
                SigningKey::from_hmac_secret(alg, &secret)
                    .map_err(|e| anyhow::anyhow!("manifest key {}: {e}", k.kid))?
            } else {
                bail!(
                    "manifest key {}: neither pkcs8_file nor secret_base64_file",
                    k.kid
                );
            };
            out.push((k.kid.clone(), key));
        }
        if out.is_empty() {
            bail!("no manifest key has one of the algorithms asked for");
        }
        Ok(out)
    }
}

/// What a request is built to exercise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Outcome {
    Valid,
    Expired,
    NotYetValid,
    BadSignature,
    UnknownKid,
    WrongAudience,
    PolicyDeny,
    Malformed,
    Revoked,
    MissingToken,
    NoAuth,
}

impl Outcome {
    pub(crate) const ALL: [Self; 11] = [
        Self::Valid,
        Self::Expired,
        Self::NotYetValid,
        Self::BadSignature,
        Self::UnknownKid,
        Self::WrongAudience,
        Self::PolicyDeny,
        Self::Malformed,
        Self::Revoked,
        Self::MissingToken,
        Self::NoAuth,
    ];

    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadSignature => "bad_signature",
            Self::UnknownKid => "unknown_kid",
            Self::WrongAudience => "wrong_audience",
            Self::PolicyDeny => "policy_deny",
            Self::Malformed => "malformed",
            Self::Revoked => "revoked",
            Self::MissingToken => "missing_token",
            Self::NoAuth => "no_auth",
        }
    }
}

/// `valid=0.9,expired=0.1` → normalized weights.
pub(crate) fn parse_mix(text: &str) -> anyhow::Result<Vec<(Outcome, f64)>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, w) = part
            .split_once('=')
            .with_context(|| format!("--mix: `{part}` is not name=weight"))?;
        let outcome = Outcome::ALL
            .into_iter()
            .find(|o| o.name() == name.trim())
            .with_context(|| {
                format!(
                    "--mix: unknown outcome `{name}`; known: {}",
                    Outcome::ALL.map(Outcome::name).join(", ")
                )
            })?;
        let w: f64 = w
            .trim()
            .parse()
            .ok()
            .filter(|w: &f64| w.is_finite() && *w >= 0.0)
            .with_context(|| format!("--mix: weight of `{name}` must be a number ≥ 0"))?;
        if out.iter().any(|(o, _)| *o == outcome) {
            bail!("--mix: `{name}` given twice");
        }
        out.push((outcome, w));
    }
    // Scaled by the largest first: weights near f64::MAX summed to infinity,
    // every share came out 0, and the workload builder panicked on the
    // empty pool.
    let largest = out.iter().map(|(_, w)| *w).fold(0.0, f64::max);
    if largest <= 0.0 {
        bail!("--mix: weights sum to zero");
    }
    let total: f64 = out.iter().map(|(_, w)| w).sum();
    let scale = if total.is_finite() { 1.0 } else { largest };
    let total: f64 = out.iter().map(|(_, w)| w / scale).sum();
    Ok(out
        .into_iter()
        .map(|(o, w)| (o, w / scale / total))
        .collect())
}

/// One request with the decision it must get.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) token: Option<String>,
    pub(crate) tenant: usize,
    pub(crate) method: &'static str,
    pub(crate) expected: Reason,
}

/// Requests by outcome.
pub(crate) struct Pool {
    pub(crate) tenants: Vec<String>,
    pub(crate) by_outcome: Vec<(Outcome, Vec<Entry>)>,
}

const METHOD: &str = "eth_call";

fn flip_signature(token: &str) -> String {
    // A character well inside the signature: changing the last one could leave
    // non-canonical trailing bits (`malformed`, not `bad_signature`).
    let mut b = token.as_bytes().to_vec();
    let at = b.len() - 8;
    b[at] = if b[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).expect("ASCII")
}

/// Mints the pool: for each tenant used and each key, `distinct` valid tokens;
/// a few tokens per other outcome. `now` is Unix seconds.
pub(crate) fn build_pool(
    m: &Manifest,
    keys: &[(String, SigningKey)],
    tenants_used: usize,
    distinct: usize,
    mix: &[(Outcome, f64)],
    now: u64,
) -> anyhow::Result<Pool> {
    let tenants: Vec<&ManifestTenant> = m.tenants.iter().take(tenants_used.max(1)).collect();
    let aud = &m.audience;
    let policy_claims = |t: &ManifestTenant, deny: bool| match (t.policy.as_str(), deny) {
        ("allowlist", false) => r#","methods":["eth_call","eth_getBalance"]"#,
        ("allowlist", true) => r#","methods":["eth_getBalance"]"#,
        ("permissions", false) => r#","permissions":["eth:*"]"#,
        ("permissions", true) => r#","permissions":["net:*"]"#,
        _ => "",
    };
    let deny_reason = |t: &ManifestTenant| match t.policy.as_str() {
        "allowlist" => Some(Reason::MethodNotAllowed),
        "permissions" => Some(Reason::PermissionDenied),
        _ => None,
    };
    let mut by_outcome = Vec::new();
    for &(outcome, weight) in mix {
        if weight == 0.0 {
            continue;
        }
        let per = if outcome == Outcome::Valid {
            distinct.max(1)
        } else {
            distinct.clamp(1, 16)
        };
        // (tenant index, key index, serial) jobs, minted in parallel, serial
        // first: batches take entries in this order and the prepared ones
        // repeat, so tenant by tenant a large `--distinct` sent one
        // tenant's tokens (and one key's) only.
        let key_count = match outcome {
            Outcome::Malformed | Outcome::MissingToken | Outcome::NoAuth => 1,
            _ => keys.len(),
        };
        let applicable: Vec<usize> = tenants
            .iter()
            .enumerate()
            .filter(|(_, t)| match outcome {
                Outcome::PolicyDeny => deny_reason(t).is_some(),
                Outcome::Revoked => m.revoked_tenants.contains(&t.id),
                _ => true,
            })
            .map(|(ti, _)| ti)
            .collect();
        let mut jobs = Vec::new();
        for serial in 0..per {
            for &ti in &applicable {
                for ki in 0..key_count {
                    jobs.push((ti, ki, serial));
                }
            }
        }
        if jobs.is_empty() {
            bail!(
                "--mix asks for `{}` but no tenant in use can produce it (policy_deny needs an allowlist or permissions tenant, revoked a tenant with a denylist)",
                outcome.name()
            );
        }
        let entries: Vec<Entry> = jobs
            .par_iter()
            .map(|&(ti, ki, serial)| -> anyhow::Result<Entry> {
                let t = tenants[ti];
                let (kid, key) = &keys[ki];
                let sub = format!("load-{ti}-{serial}");
                let mint = |kid: &str, claims: String| {
                    key.mint(Some(kid), &claims)
                        .map_err(|e| anyhow::anyhow!("minting with {kid}: {e}"))
                };
                let claims = |sub: &str, aud: &str, extra: &str, times: String| {
                    format!(r#"{{"sub":"{sub}","aud":"{aud}",{times}{extra}}}"#)
                };
                let live = format!(r#""iat":{now},"exp":{}"#, now + 3600);
                let ok_claims = policy_claims(t, false);
                let (token, method, expected) = match outcome {
                    Outcome::Valid => (
                        Some(mint(kid, claims(&sub, aud, ok_claims, live))?),
                        METHOD,
                        Reason::Ok,
                    ),
                    Outcome::Expired => (
                        Some(mint(
                            kid,
                            claims(&sub, aud, ok_claims, format!(r#""exp":{}"#, now - 3600)),
                        )?),
                        METHOD,
                        Reason::Expired,
                    ),
                    Outcome::NotYetValid => (
                        Some(mint(
                            kid,
                            claims(
                                &sub,
                                aud,
                                ok_claims,
                                // A day ahead: an hour ahead, the daemon's
                                // leeway (up to 600 s) made them valid in the
                                // last minutes of a long run, read as the
                                // daemon's mismatch.
                                format!(r#""nbf":{},"exp":{}"#, now + 86_400, now + 90_000),
                            ),
                        )?),
                        METHOD,
                        Reason::NotYetValid,
                    ),
                    Outcome::BadSignature => (
                        Some(flip_signature(&mint(
                            kid,
                            claims(&sub, aud, ok_claims, live),
                        )?)),
                        METHOD,
                        Reason::BadSignature,
                    ),
                    Outcome::UnknownKid => (
                        Some(mint(
                            &format!("{kid}-not-configured"),
                            claims(&sub, aud, ok_claims, live),
                        )?),
                        METHOD,
                        Reason::UnknownKid,
                    ),
                    Outcome::WrongAudience => (
                        Some(mint(kid, claims(&sub, "someone-else", ok_claims, live))?),
                        METHOD,
                        Reason::BadAudience,
                    ),
                    Outcome::PolicyDeny => (
                        Some(mint(kid, claims(&sub, aud, policy_claims(t, true), live))?),
                        METHOD,
                        deny_reason(t).expect("filtered"),
                    ),
                    Outcome::Malformed => (
                        Some(format!("not-a-jwt-{serial}")),
                        METHOD,
                        Reason::Malformed,
                    ),
                    Outcome::Revoked => (
                        Some(mint(kid, claims(&m.revoked_sub, aud, ok_claims, live))?),
                        METHOD,
                        Reason::Revoked,
                    ),
                    Outcome::MissingToken => (None, METHOD, Reason::MissingToken),
                    Outcome::NoAuth => (None, leak(&m.no_auth_method), Reason::OkNoAuth),
                };
                Ok(Entry {
                    token,
                    tenant: ti,
                    method,
                    expected,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        by_outcome.push((outcome, entries));
    }
    Ok(Pool {
        tenants: tenants.iter().map(|t| t.id.clone()).collect(),
        by_outcome,
    })
}

/// The no-auth method lives as long as the run; one small leak per run.
fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

/// A batch ready to send: its frame and each item's expected reason code.
pub(crate) struct Batch {
    pub(crate) frame: Vec<u8>,
    pub(crate) request_id: u64,
    pub(crate) expected: Vec<u16>,
}

/// Builds `count` batches of `size` items, outcomes drawn by the mix with a
/// fixed-seed generator (runs are reproducible), tokens taken round-robin.
pub(crate) fn build_batches(
    pool: &Pool,
    mix: &[(Outcome, f64)],
    size: usize,
    count: usize,
) -> anyhow::Result<Vec<Batch>> {
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut cursors = vec![0usize; pool.by_outcome.len()];
    let cumulative: Vec<(usize, f64)> = {
        let mut acc = 0.0;
        pool.by_outcome
            .iter()
            .enumerate()
            .map(|(i, (o, _))| {
                acc += mix.iter().find(|(x, _)| x == o).map_or(0.0, |(_, w)| *w);
                (i, acc)
            })
            .collect()
    };
    let total = cumulative.last().map_or(1.0, |c| c.1);
    let mut batches = Vec::with_capacity(count);
    for b in 0..count {
        let mut picked: Vec<&Entry> = Vec::with_capacity(size);
        for _ in 0..size {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let x = (rng >> 11) as f64 / (1u64 << 53) as f64 * total;
            let i = cumulative
                .iter()
                .find(|(_, c)| x < *c)
                .map_or(cumulative.len() - 1, |(i, _)| *i);
            let entries = &pool.by_outcome[i].1;
            picked.push(&entries[cursors[i] % entries.len()]);
            cursors[i] += 1;
        }
        let items: Vec<Item<'_>> = picked
            .iter()
            .map(|e| Item {
                token: e.token.as_deref().map(str::as_bytes),
                tenant: &pool.tenants[e.tenant],
                method: Some(e.method),
                addresses: Vec::new(),
                origin: None,
                user_agent: None,
            })
            .collect();
        let request_id = b as u64 + 1;
        let mut frame = Vec::new();
        encode_batch(&BatchRequest { request_id, items }, &mut frame)
            .map_err(|e| anyhow::anyhow!("encoding a batch: {e}"))?;
        batches.push(Batch {
            frame,
            request_id,
            expected: picked.iter().map(|e| e.expected.code()).collect(),
        });
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_normalizes_and_names_errors() {
        let m = parse_mix("valid=9, expired=1").unwrap();
        assert_eq!(m, [(Outcome::Valid, 0.9), (Outcome::Expired, 0.1)]);
        assert!(
            parse_mix("valid=1,bogus=1")
                .unwrap_err()
                .to_string()
                .contains("unknown outcome `bogus`")
        );
        assert!(parse_mix("valid").is_err());
        assert!(parse_mix("valid=-1").is_err());
        assert!(parse_mix("valid=0").is_err());
        assert!(parse_mix("valid=1,valid=2").is_err());
        // Weights near f64::MAX summed to infinity: every share was 0 and
        // the workload builder panicked on the empty pool.
        assert_eq!(
            parse_mix("valid=1e308,expired=1e308").unwrap(),
            [(Outcome::Valid, 0.5), (Outcome::Expired, 0.5)]
        );
    }

    /// The pool's valid tokens go round the tenants (and keys) first, so
    /// the prepared batches, which repeat, reach every tenant however large
    /// `--distinct` is: minted tenant by tenant, the first ones were all a
    /// large pool's batches ever held.
    #[test]
    fn the_pool_goes_round_the_tenants_first() {
        let m = Manifest {
            endpoint: String::new(),
            ca: String::new(),
            audience: "aud".into(),
            no_auth_method: "web3_clientVersion".into(),
            revoked_sub: "r".into(),
            revoked_tenants: Vec::new(),
            keys: Vec::new(),
            tenants: (0..4)
                .map(|i| ManifestTenant {
                    id: format!("t{i}"),
                    policy: "none".into(),
                })
                .collect(),
        };
        let keys: Vec<(String, SigningKey)> = (0..2)
            .map(|i| {
                (
                    format!("k{i}"),
                    SigningKey::generate(jotd_core::Algorithm::Hs256).unwrap(),
                )
            })
            .collect();
        let pool = build_pool(&m, &keys, 4, 100, &[(Outcome::Valid, 1.0)], 1_800_000_000).unwrap();
        let valid = &pool.by_outcome[0].1;
        assert_eq!(valid.len(), 4 * 2 * 100);
        let first: std::collections::BTreeSet<usize> =
            valid[..8].iter().map(|e| e.tenant).collect();
        assert_eq!(first.len(), 4, "the first eight entries cover every tenant");
    }

    #[test]
    fn flipped_signatures_stay_canonical_base64() {
        let t = "aaa.bbb.ABCDEFGHIJKLMNOPQRSTUVWXYZ0";
        let f = flip_signature(t);
        assert_ne!(t, f);
        assert_eq!(t.len(), f.len());
        assert_eq!(t.as_bytes().last(), f.as_bytes().last());
    }
}
