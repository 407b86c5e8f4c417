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
        let (map, value, field) = match (&e.jti, &e.sub) {
            (Some(jti), None) => (&mut list.jti, jti, "jti"),
            (None, Some(sub)) => (&mut list.sub, sub, "sub"),
            _ => return Err(loc.error(entry.span(), at, "give exactly one of jti, sub")),
        };
        // A value pasted with a trailing newline or blank revoked nothing, silently.
        if !crate::tenants::is_name(value) {
            return Err(loc.error(
                entry.span(),
                format!("{at}.{field}"),
                format_args!(
                    "`{}`: 1 to 1024 characters, no control characters, no leading or trailing blanks",
                    value.escape_default()
                ),
            ));
        }
        // The same jti or sub listed twice (an old entry left behind): the later `until`
        // holds, so a stale line can never shorten a revocation.
        let until = map
            .entry(value.as_str().into())
            .or_insert(UnixTime(e.until));
        until.0 = until.0.max(e.until);
    }
    Ok(lists.into_iter().map(|(k, v)| (k, Arc::new(v))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jti_or_sub_listed_twice_keeps_the_later_until_whatever_the_order() {
        let entry = |kind: &str, until: u64| {
            format!("[[revoke]]\ntenant = \"t\"\n{kind} = \"stolen\"\nuntil = {until}\n")
        };
        for kind in ["jti", "sub"] {
            for text in [
                entry(kind, 2_000_000_000) + &entry(kind, 1),
                entry(kind, 1) + &entry(kind, 2_000_000_000),
            ] {
                let lists = parse(Path::new("revoked.toml"), &text, &|t| t == "t").unwrap();
                let list = &lists["t"];
                let (jti, sub) = if kind == "jti" {
                    (Some("stolen"), None)
                } else {
                    (None, Some("stolen"))
                };
                assert!(list.is_revoked(jti, sub, UnixTime(1_900_000_000)), "{text}");
                assert!(
                    !list.is_revoked(jti, sub, UnixTime(2_000_000_000)),
                    "{text}"
                );
            }
        }
    }

    /// A `jti` or `sub` that can only be a paste mistake (a trailing newline
    /// or blank, an empty string) is refused on its entry's line: it revoked
    /// nothing, silently, during an incident.
    #[test]
    fn values_that_match_no_token_are_refused_on_their_line() {
        for kind in ["jti", "sub"] {
            for bad in ["\"\"", "\"5f1c2a \"", "\" 5f1c2a\"", "\"5f1c2a\\n\""] {
                let text = format!("\n[[revoke]]\ntenant = \"t\"\n{kind} = {bad}\nuntil = 1\n");
                let e = parse(Path::new("revoked.toml"), &text, &|t| t == "t").unwrap_err();
                assert_eq!(
                    (e.line, e.key.as_str()),
                    (Some(2), format!("revoke[0].{kind}").as_str()),
                    "{text}: {e}"
                );
            }
        }
    }
}
