//! Revocation: per-tenant denylists by `jti` and by `sub`, each entry with the
//! time it lapses, read from the file named by `denylist_file`:
//!
//! ```toml
//! [[revoke]]
//! tenant = "project-a"
//! jti = "5f1c2a"            # or sub = "user-17"
//! until = 1767225600        # Unix seconds; usually the token's exp
//! ```

use crate::config::{ConfigError, Locator};
use jotd_core::{Denylist, UnixTime};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    revoke: Vec<Spanned<RawEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    tenant: String,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    until: u64,
}

/// Per-tenant denylists, by tenant id.
pub type Denylists = HashMap<String, Arc<Denylist>>;

/// Parses a denylist file. Every tenant named must exist (`known`).
///
/// # Errors
/// Bad TOML, an entry with neither or both of `jti`/`sub`, or an unknown tenant.
pub fn parse(
    file: &Path,
    text: &str,
    known: &dyn Fn(&str) -> bool,
) -> Result<Denylists, ConfigError> {
    let loc = Locator { file, text };
    let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError {
        file: file.to_owned(),
        line: e.span().map(|s| loc.line(s.start)),
        key: String::new(),
        message: e.message().trim().to_owned(),
    })?;
    let mut lists: HashMap<String, Denylist> = HashMap::new();
    for (i, entry) in raw.revoke.iter().enumerate() {
        let e = entry.get_ref();
        let at = format!("revoke[{i}]");
        if !known(&e.tenant) {
            return Err(loc.error(
                entry.span(),
                format!("{at}.tenant"),
                format_args!("no tenant `{}` in the config", e.tenant),
            ));
        }
        let list = lists.entry(e.tenant.clone()).or_default();
        match (&e.jti, &e.sub) {
            (Some(jti), None) => list.jti.insert(jti.as_str().into(), UnixTime(e.until)),
            (None, Some(sub)) => list.sub.insert(sub.as_str().into(), UnixTime(e.until)),
            _ => return Err(loc.error(entry.span(), at, "give exactly one of jti, sub")),
        };
    }
    Ok(lists.into_iter().map(|(k, v)| (k, Arc::new(v))).collect())
}
