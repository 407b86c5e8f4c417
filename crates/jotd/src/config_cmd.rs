//! `jotd config check` and `jotd key fingerprint`.

use anyhow::Context;
use jotd_keys::JwksLocation;
use std::io::Write;
use std::path::Path;

pub(crate) fn check(config: &Path, out: &mut dyn Write) -> anyhow::Result<()> {
    let (settings, cfg) = crate::settings::load(config)?;
    // The files the daemon would read at start (and at each reload) must be
    // readable TLS material, read the way `serve` reads them.
    if settings.cert_file.is_some() && settings.key_file.is_some() {
        crate::settings::server_tls(&settings, config)?;
    }
    // The JWKS fetcher's client as `serve` builds it, extra CA included.
    let (_, extra_roots) = crate::settings::fetch_config(&settings, config)?;
    let s = &settings.server;
    let engine = settings.engine_config();
    writeln!(
        out,
        "server: listen {}, TLS {}{}, max {} connections x {} streams, {} tokens in flight, batches of at most {} items / {} bytes",
        s.listen,
        settings.cert_file.as_ref().map_or_else(
            || "(not configured: jotd serve needs cert_file and key_file)".to_owned(),
            |p| p.display().to_string()
        ),
        if settings.client_ca_file.is_some() {
            ", mutual TLS"
        } else {
            ""
        },
        s.max_connections,
        s.max_streams_per_connection,
        s.max_tokens_in_flight,
        s.limits.max_items,
        s.limits.max_frame_bytes,
    )?;
    writeln!(
        out,
        "verify: {} threads (0 = one per core), tokens up to {} bytes, cache {}; admin {}",
        settings.verify_threads,
        engine.max_token_bytes,
        engine.cache.map_or_else(
            || "off".to_owned(),
            |c| format!("{} entries / {} bytes", c.max_entries, c.max_bytes)
        ),
        settings
            .admin
            .map_or_else(|| "off".to_owned(), |a| a.to_string()),
    )?;
    if let Some(p) = &settings.fetch_extra_ca_file {
        writeln!(
            out,
            "jwks_fetch: extra CA {} ({extra_roots} certificate(s))",
            p.display()
        )?;
    }
    for line in crate::settings::lapsed_revocations(&cfg) {
        writeln!(out, "warning: {line}")?;
    }
    for (tenant, kid) in cfg.shadowed_kids() {
        writeln!(
            out,
            "warning: tenant `{tenant}`: a JWKS file's kid {kid:?} is already held (a static key or an earlier source) with other key material; the first wins, so this key verifies nothing"
        )?;
    }
    for name in crate::settings::unknown_tenant_labels(&settings, &cfg) {
        writeln!(
            out,
            "warning: admin.tenant_labels names `{name}`, which no [[tenant]] has (its count stays 0 until a reload adds it)"
        )?;
    }
    writeln!(
        out,
        "{}: ok, {} tenant(s)",
        config.display(),
        cfg.tenants.len()
    )?;
    for (tenant_index, spec) in cfg.tenants.iter().enumerate() {
        let t = &spec.tenant;
        let algs: Vec<_> = t.algorithms.iter().map(|a| a.as_str()).collect();
        writeln!(
            out,
            "tenant {}: policy {}, require_jwt {}, algorithms [{}]",
            t.id,
            t.policy.as_str(),
            t.require_jwt,
            algs.join(", ")
        )?;
        // The issuer a key or JWKS is bound to: only that issuer's tokens verify with it.
        let bound =
            |issuer: Option<&str>| issuer.map_or(String::new(), |i| format!(", issuer {i:?} only"));
        for k in &spec.keys {
            let issuer = t
                .keys
                .iter()
                .find(|tk| *tk.kid == *k.kid)
                .and_then(|tk| tk.issuer.as_deref());
            writeln!(
                out,
                "  key {} ({}) {} {} [{}]{}",
                k.kid,
                k.name.as_deref().unwrap_or("-"),
                k.alg,
                k.fingerprint
                    .as_deref()
                    .unwrap_or("(HMAC secret, no fingerprint)"),
                k.source,
                bound(issuer)
            )?;
        }
        for (i, source) in spec.jwks.iter().enumerate() {
            let index = tenant_index;
            match &source.location {
                JwksLocation::File(path) => {
                    let keys = cfg.jwks_files.get(&(index, i));
                    let kids: Vec<_> = keys
                        .iter()
                        .flat_map(|k| {
                            k.keys
                                .iter()
                                .map(|(kid, key)| format!("{kid:?} {}", key.algorithm()))
                        })
                        .collect();
                    writeln!(
                        out,
                        "  jwks file {} (refresh {}s{}): {}",
                        path.display(),
                        source.refresh.as_secs(),
                        bound(source.issuer.as_deref()),
                        kids.join(", ")
                    )?;
                    for k in keys.iter() {
                        for skipped in &k.skipped {
                            writeln!(out, "    left out: {skipped}")?;
                        }
                        let more = k.skipped_total - k.skipped.len();
                        if more > 0 {
                            writeln!(out, "    left out: {more} more")?;
                        }
                    }
                }
                JwksLocation::Url(url) => {
                    writeln!(
                        out,
                        "  jwks url {} (refresh {}s{}): fetched by the daemon, not by offline commands",
                        jotd_keys::redacted_url(url),
                        source.refresh.as_secs(),
                        bound(source.issuer.as_deref())
                    )?;
                }
            }
        }
        let own = cfg.denylists.for_tenant(&t.id);
        let every = cfg.denylists.every_tenant();
        if own.is_some() || every.is_some() {
            let count = |f: fn(&jotd_core::Denylist) -> usize| {
                own.map_or(0, |d| f(d)) + every.map_or(0, |d| f(d))
            };
            writeln!(
                out,
                "  denylist: {} jti, {} sub",
                count(|d| d.jti.len()),
                count(|d| d.sub.len())
            )?;
        }
    }
    Ok(())
}

pub(crate) fn fingerprint(file: &Path, out: &mut dyn Write) -> anyhow::Result<()> {
    let bytes = jotd_transport::files::read_file(file)
        .with_context(|| format!("{}: cannot read", file.display()))?;
    let fp =
        jotd_keys::material::fingerprint(&bytes).with_context(|| format!("{}", file.display()))?;
    writeln!(out, "{fp}")?;
    Ok(())
}
