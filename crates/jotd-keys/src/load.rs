//! Loading: the config file, the files it names, JWKS files, the denylist →
//! a validated [`KeysConfig`] and an immutable [`Snapshot`].

use crate::config::{ConfigError, KeysSection, Locator};
use crate::denylist::{self, Denylists};
use crate::jwk::{self, JwksKeys};
use crate::tenants::{self, JwksLocation, ReadFile, TenantSpec};
use aws_lc_rs::digest;
use jotd_core::{Algorithm, Snapshot, TenantKey, VerifyingKey};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest JWKS file read (a JWKS URL's document is capped by
/// `jwks_fetch.max_bytes`, 512 KiB by default; a file may hold more).
pub const MAX_JWKS_FILE_BYTES: usize = 16 << 20;

/// A validated config: tenants with their static keys, JWKS sources, the
/// denylist file, and every file it was built from (for watching).
#[derive(Debug, Clone)]
pub struct KeysConfig {
    /// The config file.
    pub file: PathBuf,
    /// Tenants in file order.
    pub tenants: Vec<TenantSpec>,
    /// Keys kept from one JWKS document at most.
    pub max_jwks_keys: usize,
    /// The denylist file, if any.
    pub denylist_file: Option<PathBuf>,
    /// Denylists read from it.
    pub denylists: Denylists,
    /// Keys of file-based JWKS sources, by (tenant index, source index).
    pub jwks_files: HashMap<(usize, usize), Arc<JwksKeys>>,
    /// Every file read: config, key files, JWKS files, denylist.
    pub files: Vec<PathBuf>,
}

/// Reads and validates a file that holds the keys section alone, and
/// everything it names. (A binary whose file has sections of its own parses
/// it once and calls [`load_section`].)
///
/// # Errors
/// The first problem found, with file, line and key.
pub fn load(file: &Path, read: ReadFile<'_>) -> Result<KeysConfig, ConfigError> {
    let text = read_text(file, read)?;
    let raw = Locator { file, text: &text }.parse()?;
    load_section(file, &text, &raw, read)
}

/// A config file's text, or an error naming the file.
///
/// # Errors
/// The file cannot be read or is not UTF-8.
pub fn read_text(file: &Path, read: ReadFile<'_>) -> Result<String, ConfigError> {
    let whole = |message: String| ConfigError {
        file: file.to_owned(),
        line: None,
        key: String::new(),
        message,
    };
    let bytes = read(file).map_err(|e| whole(format!("cannot read: {e}")))?;
    String::from_utf8(bytes).map_err(|_| whole("not UTF-8".into()))
}

/// Validates a keys section parsed from `text` (the file `file`, whose spans
/// it carries) and reads everything it names.
///
/// # Errors
/// The first problem found, with file, line and key.
pub fn load_section(
    file: &Path,
    text: &str,
    raw: &KeysSection,
    read: ReadFile<'_>,
) -> Result<KeysConfig, ConfigError> {
    let whole = |message: String| ConfigError {
        file: file.to_owned(),
        line: None,
        key: String::new(),
        message,
    };
    let loc = Locator { file, text };
    let top = |key: &str, message: String| ConfigError {
        line: crate::config::line_of_key(text, &[key]),
        key: key.to_owned(),
        ..whole(message)
    };
    if !(1..=1024).contains(&raw.max_keys_per_tenant) {
        return Err(top(
            "max_keys_per_tenant",
            format!("{}: must be 1 to 1024", raw.max_keys_per_tenant),
        ));
    }
    if !(1..=1024).contains(&raw.max_jwks_keys) {
        return Err(top(
            "max_jwks_keys",
            format!("{}: must be 1 to 1024", raw.max_jwks_keys),
        ));
    }
    let files_read = std::cell::RefCell::new(vec![file.to_owned()]);
    let tracking = |p: &Path| {
        files_read.borrow_mut().push(p.to_owned());
        read(p)
    };
    let mut tenants: Vec<TenantSpec> = Vec::with_capacity(raw.tenant.len());
    let mut index: HashMap<String, usize> = HashMap::with_capacity(raw.tenant.len());
    for (i, t) in raw.tenant.iter().enumerate() {
        let spec = tenants::tenant(&loc, &tracking, raw.max_keys_per_tenant, i, t)?;
        if let Some(first) = index.insert(spec.tenant.id.to_string(), i) {
            let first_line = loc.line(raw.tenant[first].span().start);
            return Err(loc.error(
                t.get_ref().id.span(),
                format!("tenant[{i}].id"),
                format_args!(
                    "duplicate tenant id `{}` (first at line {first_line})",
                    spec.tenant.id
                ),
            ));
        }
        tenants.push(spec);
    }
    // `internal = true` marks a (host, port): an unmarked URL at a marked host
    // but another port would pass the fetcher's resolver (which sees names,
    // not ports) and reach the inside machine's other services.
    crate::fetch::check_internal_ports(&tenants, &|ti, si| {
        (
            loc.line(raw.tenant[ti].get_ref().jwks[si].span().start),
            format!("tenant[{ti}].jwks[{si}].url"),
        )
    })
    .map_err(|(line, key, message)| ConfigError {
        file: file.to_owned(),
        line: Some(line),
        key,
        message,
    })?;
    let mut jwks_files = HashMap::new();
    // Each file is read and parsed once per `alg` however many tenants name
    // it (a file shared by 100k tenants was read 100k times per reload).
    let mut parsed: HashMap<(&Path, Option<Algorithm>), Arc<_>> = HashMap::new();
    for (ti, spec) in tenants.iter().enumerate() {
        for (si, source) in spec.jwks.iter().enumerate() {
            if let JwksLocation::File(path) = &source.location {
                let at = format!("tenant[{ti}].jwks[{si}].file");
                let line = Some(loc.line(raw.tenant[ti].get_ref().jwks[si].span().start));
                let fail = |message: String| ConfigError {
                    file: file.to_owned(),
                    line,
                    key: at.clone(),
                    message,
                };
                let keys = match parsed.get(&(path.as_path(), source.alg)) {
                    Some(keys) => Arc::clone(keys),
                    None => {
                        let bytes = tracking(path)
                            .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
                        if bytes.len() > MAX_JWKS_FILE_BYTES {
                            return Err(fail(format!(
                                "{}: {} bytes: a JWKS file holds at most {MAX_JWKS_FILE_BYTES}",
                                path.display(),
                                bytes.len()
                            )));
                        }
                        let keys = Arc::new(
                            jwk::parse_jwks(&bytes, source.alg, raw.max_jwks_keys)
                                .map_err(|e| fail(format!("{}: {e}", path.display())))?,
                        );
                        parsed.insert((path.as_path(), source.alg), Arc::clone(&keys));
                        keys
                    }
                };
                // Keys outside the tenant's configured `algorithms` could
                // never verify (`alg_not_allowed`): left out and listed, as a
                // static key of such an algorithm is refused.
                let keys = if spec.algorithms_configured
                    && keys
                        .keys
                        .iter()
                        .any(|(_, k)| !spec.tenant.algorithms.contains(k.algorithm()))
                {
                    let mut kept = (*keys).clone();
                    kept.keys.clear();
                    for (kid, key) in &keys.keys {
                        if spec.tenant.algorithms.contains(key.algorithm()) {
                            kept.keys.push((kid.clone(), key.clone()));
                        } else {
                            kept.skip(&format!(
                                "kid {kid:?}: {} is not in the tenant's algorithms",
                                key.algorithm()
                            ));
                        }
                    }
                    if kept.keys.is_empty() {
                        return Err(fail(format!(
                            "{}: no key of the tenant's algorithms ({})",
                            path.display(),
                            kept.skipped_summary()
                        )));
                    }
                    Arc::new(kept)
                } else {
                    keys
                };
                jwks_files.insert((ti, si), keys);
            }
        }
    }
    let (denylist_file, denylists) = match &raw.denylist_file {
        None => (None, Denylists::default()),
        Some(named) => {
            let path = crate::config::resolve(file, named.get_ref());
            let bytes = tracking(&path).map_err(|e| {
                loc.error(
                    named.span(),
                    "denylist_file",
                    format_args!("cannot read {}: {e}", path.display()),
                )
            })?;
            let text = String::from_utf8(bytes)
                .map_err(|_| loc.error(named.span(), "denylist_file", "not UTF-8"))?;
            let lists = denylist::parse(&path, &text, &|t| index.contains_key(t))?;
            (Some(path), lists)
        }
    };
    Ok(KeysConfig {
        file: file.to_owned(),
        tenants,
        max_jwks_keys: raw.max_jwks_keys,
        denylist_file,
        denylists,
        jwks_files,
        files: files_read.into_inner(),
    })
}

/// Whether two keys are one: the same algorithm and key material (two
/// sources publishing the same key under one kid shadow nothing).
pub(crate) fn same_key(a: &VerifyingKey, b: &VerifyingKey) -> bool {
    a.algorithm() == b.algorithm() && a.material_digest() == b.material_digest()
}

impl KeysConfig {
    /// Kids a JWKS file publishes that its tenant already has from a static
    /// key or an earlier file source, with other key material: `(tenant id,
    /// kid)`. The first source wins, so these keys verify nothing; the daemon
    /// warns at start and `config check` prints them. (With URL sources in
    /// the order too: [`KeysConfig::shadowed_in`], checked at each fetch.)
    #[must_use]
    pub fn shadowed_kids(&self) -> Vec<(String, String)> {
        self.shadowed_all(&|_, _| None)
    }

    /// [`KeysConfig::shadowed_in`] for every tenant: `(tenant id, kid)`.
    #[must_use]
    pub fn shadowed_all(
        &self,
        fetched: &dyn Fn(&str, &str) -> Option<Arc<JwksKeys>>,
    ) -> Vec<(String, String)> {
        (0..self.tenants.len())
            .flat_map(|ti| {
                let id = self.tenants[ti].tenant.id.to_string();
                self.shadowed_at(ti, fetched)
                    .into_iter()
                    .map(move |kid| (id.clone(), kid))
            })
            .collect()
    }

    /// The kids tenant `tenant` has from two sources with other key material
    /// (static keys first, then its JWKS sources in the order listed, URL
    /// sources with the keys `fetched` holds for them): the first source
    /// wins, so the later one's key for the kid verifies nothing. Whichever
    /// source arrived last, the file or the URL, earlier or later in the list.
    #[must_use]
    pub fn shadowed_in(
        &self,
        tenant: &str,
        fetched: &dyn Fn(&str, &str) -> Option<Arc<JwksKeys>>,
    ) -> Vec<String> {
        self.tenants
            .iter()
            .position(|t| *t.tenant.id == *tenant)
            .map(|ti| self.shadowed_at(ti, fetched))
            .unwrap_or_default()
    }

    fn shadowed_at(
        &self,
        ti: usize,
        fetched: &dyn Fn(&str, &str) -> Option<Arc<JwksKeys>>,
    ) -> Vec<String> {
        let spec = &self.tenants[ti];
        // (kid, key, the issuer it is bound to): the first source's wins, so a
        // later source's key under the kid is unused when it differs, and so
        // is its issuer binding (the same key published by two providers,
        // each bound to its own issuer: the second's tokens are bad_issuer).
        let mut held: Vec<(String, VerifyingKey, Option<Box<str>>)> = spec
            .tenant
            .keys
            .iter()
            .map(|k| (k.kid.to_string(), k.key.clone(), k.issuer.clone()))
            .collect();
        let mut out = Vec::new();
        for si in 0..spec.jwks.len() {
            let Some(keys) = self.source_keys(ti, si, fetched) else {
                continue;
            };
            let issuer = &spec.jwks[si].issuer;
            for (kid, key) in &keys.keys {
                match held.iter().find(|(k, _, _)| k == kid) {
                    Some((_, first, bound)) if !same_key(first, key) || bound != issuer => {
                        if !out.contains(kid) {
                            out.push(kid.clone());
                        }
                    }
                    Some(_) => {}
                    None => held.push((kid.clone(), key.clone(), issuer.clone())),
                }
            }
        }
        out
    }

    /// The keys JWKS source `si` of tenant `ti` contributes now: a file's as
    /// read, a URL's as `fetched` holds them, unless fetched while the source
    /// named another `alg`, or holding secrets where the source no longer
    /// takes them (keys read without secrets keep serving after a reload
    /// turns `symmetric_keys` on, until the refetch that follows at once:
    /// they were good under both settings; a late fetch read without them
    /// is not installed over keys read with them, see
    /// `Reloader::set_fetched_many`): the
    /// next fetch reads them the new way.
    fn source_keys(
        &self,
        ti: usize,
        si: usize,
        fetched: &dyn Fn(&str, &str) -> Option<Arc<JwksKeys>>,
    ) -> Option<Arc<JwksKeys>> {
        let spec = &self.tenants[ti];
        let source = &spec.jwks[si];
        match &source.location {
            JwksLocation::File(_) => self.jwks_files.get(&(ti, si)).cloned(),
            JwksLocation::Url(url) => fetched(&spec.tenant.id, url).filter(|k| {
                k.parsed_alg == source.alg && (source.symmetric_keys || !k.has_symmetric())
            }),
        }
    }

    /// Builds the snapshot: static keys, then JWKS keys (file sources from the
    /// config; URL sources from `fetched`, by tenant id and URL), denylists, and
    /// each tenant's epoch = a digest of its rules and every key's material, so
    /// an unchanged tenant keeps its cached tokens across reloads.
    #[must_use]
    pub fn snapshot(
        &self,
        generation: u64,
        fetched: &dyn Fn(&str, &str) -> Option<Arc<JwksKeys>>,
    ) -> Snapshot {
        let tenants = (0..self.tenants.len()).map(|ti| self.tenant(ti, fetched));
        Snapshot::new(generation, tenants.collect::<Vec<_>>())
    }

    /// [`KeysConfig::snapshot`] when only the tenants `rebuild` names have new
    /// fetched keys: every other tenant is taken from `base` as it is (the same
    /// `Arc`), so a JWKS fetch for one tenant costs that tenant, not all of
    /// them. `base` must be a snapshot of this config; a tenant it lacks is built.
    #[must_use]
    pub fn snapshot_rebuilding(
        &self,
        generation: u64,
        base: &Snapshot,
        rebuild: &dyn Fn(&str) -> bool,
        fetched: &dyn Fn(&str, &str) -> Option<Arc<JwksKeys>>,
    ) -> Snapshot {
        let tenants = self.tenants.iter().enumerate().map(|(ti, spec)| {
            let id = &*spec.tenant.id;
            match base.tenant_arc(id) {
                Some(kept) if !rebuild(id) => Arc::clone(kept),
                _ => self.tenant(ti, fetched),
            }
        });
        Snapshot::new(generation, tenants.collect::<Vec<_>>())
    }

    /// Tenant `ti` as served: its configured keys, then its JWKS keys, its
    /// denylist and its epoch.
    fn tenant(
        &self,
        ti: usize,
        fetched: &dyn Fn(&str, &str) -> Option<Arc<JwksKeys>>,
    ) -> Arc<jotd_core::Tenant> {
        let spec = &self.tenants[ti];
        let mut tenant = spec.tenant.clone();
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&spec.digest);
        for (si, source) in spec.jwks.iter().enumerate() {
            // A source's declared algorithm counts before its keys arrive, so a token
            // for a key not fetched yet is `unknown_kid` (what triggers a refetch).
            if let Some(alg) = source.alg
                && !spec.algorithms_configured
            {
                tenant.algorithms.insert(alg);
            }
            if matches!(source.location, JwksLocation::Url(_)) {
                tenant.remote_keys = true;
                tenant.algorithms_follow_keys = !spec.algorithms_configured;
            }
            let keys = self.source_keys(ti, si, fetched);
            for (kid, key) in keys.iter().flat_map(|k| k.keys.iter()) {
                // A static key of the same kid wins; a JWKS cannot shadow configuration.
                if tenant.keys.iter().any(|k| *k.kid == **kid) {
                    continue;
                }
                // Outside the configured algorithms a key could never verify
                // (`alg_not_allowed`), from a file (left out and listed at
                // load) or a URL alike: it is not served, and not in the epoch.
                if spec.algorithms_configured && !spec.tenant.algorithms.contains(key.algorithm()) {
                    continue;
                }
                // Every kind of key, HMAC secrets included: a secret rotated under the
                // same kid must drop the tokens cached under the old one.
                tenants::digest_key(
                    &mut ctx,
                    kid,
                    key.algorithm(),
                    &key.material_digest(),
                    source.issuer.as_deref(),
                );
                if !spec.algorithms_configured {
                    tenant.algorithms.insert(key.algorithm());
                }
                tenant.keys.push(TenantKey {
                    kid: kid.as_str().into(),
                    key: key.clone(),
                    issuer: source.issuer.clone(),
                });
            }
        }
        let d = ctx.finish();
        tenant.epoch = u64::from_le_bytes(d.as_ref()[..8].try_into().expect("8 bytes"));
        if let Some(list) = self.denylists.for_tenant(&tenant.id) {
            tenant.denylist = Arc::clone(list);
        }
        if let Some(list) = self.denylists.every_tenant() {
            tenant.shared_denylist = Arc::clone(list);
        }
        Arc::new(tenant)
    }
}
