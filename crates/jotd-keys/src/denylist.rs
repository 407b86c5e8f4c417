//! Revocation: per-tenant denylists by `jti` and by `sub`, each entry with the
//! time it lapses, read from the file named by `denylist_file`:
//!
//! ```toml
//! [[revoke]]
//! tenant = "project-a"      # or all_tenants = true
//! jti = "5f1c2a"            # or sub = "user-17"
//! until = 1767225600        # Unix seconds; usually the token's exp
//! ```
//!
//! `all_tenants = true` revokes in every tenant, those a reload adds too:
//! one identity provider's keys often serve several tenants, and a token
//! revoked in one alone still verified in the others.

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
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    all_tenants: Option<bool>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    until: u64,
}

/// Most `[[revoke]]` entries one denylist file may hold.
pub const MAX_ENTRIES: usize = 1_000_000;

/// The denylists of a config: per tenant, and the entries for every tenant.
#[derive(Debug, Default, Clone)]
pub struct Denylists {
    /// By tenant id, the tenant's own entries.
    tenants: HashMap<String, Arc<Denylist>>,
    /// The entries for every tenant (`all_tenants = true`), one list shared
    /// by every tenant's snapshot (a mass revocation is not copied into
    /// each tenant that has entries of its own).
    every: Option<Arc<Denylist>>,
    /// Each entry's `(line, until)`, in file order: for [`Denylists::lapsed`].
    untils: Vec<(usize, u64)>,
}

impl Denylists {
    /// Tenant `id`'s own entries (every tenant's are [`Self::every_tenant`]).
    #[must_use]
    pub fn for_tenant(&self, id: &str) -> Option<&Arc<Denylist>> {
        self.tenants.get(id)
    }

    /// Whether tenant `id` revokes a token with this `jti` and `sub` at
    /// `now`: its own entries or every tenant's.
    #[must_use]
    pub fn is_revoked(
        &self,
        id: &str,
        jti: Option<&str>,
        sub: Option<&str>,
        now: UnixTime,
    ) -> bool {
        self.for_tenant(id)
            .into_iter()
            .chain(self.every.as_ref())
            .any(|l| l.is_revoked(jti, sub, now))
    }

    /// The entries for every tenant, if any.
    #[must_use]
    pub fn every_tenant(&self) -> Option<&Arc<Denylist>> {
        self.every.as_ref()
    }

    /// The entries whose `until` is not after `now`, as `(line, until)` in
    /// file order: once the tenant's leeway has gone by too, they revoke
    /// nothing. Harmless once the revoked tokens have
    /// expired, but a mistyped `until` (a digit short, a date in 1975) loads
    /// without an error and revokes nothing, so the binary names them
    /// (the parser has no clock).
    #[must_use]
    pub fn lapsed(&self, now: UnixTime) -> Vec<(usize, u64)> {
        self.untils
            .iter()
            .copied()
            .filter(|&(_, until)| until <= now.0)
            .collect()
    }
}

/// Adds `entry` to `list`, the later `until` holding when it is listed twice.
fn add(list: &mut HashMap<Box<str>, UnixTime>, value: &str, until: u64) {
    let at = list.entry(value.into()).or_insert(UnixTime(until));
    at.0 = at.0.max(until);
}

/// Parses a denylist file. Every tenant named must exist (`known`).
///
/// # Errors
/// Bad TOML, an entry with neither or both of `jti`/`sub` or of
/// `tenant`/`all_tenants = true`, or an unknown tenant.
pub fn parse(
    file: &Path,
    text: &str,
    known: &dyn Fn(&str) -> bool,
) -> Result<Denylists, ConfigError> {
    let loc = Locator { file, text };
    let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError {
        file: file.to_owned(),
        line: e.span().map(|s| loc.line(s.start)),
        key: crate::config::toml_error_key(text, &e),
        message: e.message().trim().to_owned(),
    })?;
    let mut lists: HashMap<String, Denylist> = HashMap::new();
    let mut every = Denylist::default();
    if raw.revoke.len() > MAX_ENTRIES {
        return Err(ConfigError {
            file: file.to_owned(),
            line: None,
            key: "revoke".into(),
            message: format!(
                "{} entries: at most {MAX_ENTRIES} (a list that long is better as shorter token lifetimes or a key rotation)",
                raw.revoke.len()
            ),
        });
    }
    let mut untils = Vec::with_capacity(raw.revoke.len());
    for (i, entry) in raw.revoke.iter().enumerate() {
        let e = entry.get_ref();
        untils.push((loc.line(entry.span().start), e.until));
        let at = format!("revoke[{i}]");
        let list = match (&e.tenant, e.all_tenants) {
            (Some(tenant), None | Some(false)) => {
                if !known(tenant) {
                    return Err(loc.error(
                        entry.span(),
                        format!("{at}.tenant"),
                        format_args!("no tenant `{tenant}` in the config"),
                    ));
                }
                lists.entry(tenant.clone()).or_default()
            }
            (None, Some(true)) => &mut every,
            _ => {
                return Err(loc.error(
                    entry.span(),
                    at,
                    "give exactly one of tenant = \"…\", all_tenants = true",
                ));
            }
        };
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
        add(map, value, e.until);
    }
    let every = (!every.is_empty()).then(|| Arc::new(every));
    Ok(Denylists {
        tenants: lists.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
        every,
        untils,
    })
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
                let list = lists.for_tenant("t").unwrap();
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

    /// Entries whose `until` has passed are named by line, in file order,
    /// whichever list they went to; later ones are not.
    #[test]
    fn lapsed_entries_are_named_by_line() {
        let text = "[[revoke]]\ntenant = \"t\"\njti = \"a\"\nuntil = 176722560\n\
                    [[revoke]]\nall_tenants = true\nsub = \"b\"\nuntil = 2000000000\n\
                    [[revoke]]\nall_tenants = true\nsub = \"c\"\nuntil = 1900000000\n";
        let lists = parse(Path::new("revoked.toml"), text, &|t| t == "t").unwrap();
        assert_eq!(
            lists.lapsed(UnixTime(1_900_000_000)),
            [(1, 176_722_560), (9, 1_900_000_000)]
        );
        assert_eq!(lists.lapsed(UnixTime(1)), []);
    }

    /// `all_tenants = true` revokes in every tenant, merged into the lists of
    /// tenants with entries of their own (the later `until` holding); an
    /// entry names a tenant or all of them, never both or neither.
    #[test]
    fn an_entry_for_all_tenants_reaches_every_tenant() {
        let text = "[[revoke]]\nall_tenants = true\njti = \"leaked\"\nuntil = 300\n\
                    [[revoke]]\ntenant = \"t\"\njti = \"leaked\"\nuntil = 200\n\
                    [[revoke]]\ntenant = \"t\"\nsub = \"own\"\nuntil = 300\n";
        let known = |t: &str| t == "t" || t == "u";
        let lists = parse(Path::new("revoked.toml"), text, &known).unwrap();
        for id in ["t", "u", "added-by-a-reload"] {
            assert!(
                lists.is_revoked(id, Some("leaked"), None, UnixTime(250)),
                "{id}"
            );
            assert!(
                !lists.is_revoked(id, Some("leaked"), None, UnixTime(300)),
                "{id}"
            );
            assert_eq!(
                lists.is_revoked(id, None, Some("own"), UnixTime(1)),
                id == "t"
            );
        }
        assert_eq!(lists.every_tenant().unwrap().jti.len(), 1);
        // One shared list: a tenant's own list holds only its own entries.
        assert_eq!(lists.for_tenant("t").unwrap().jti.len(), 1);
        assert!(lists.for_tenant("u").is_none());
        for (entry, line) in [
            ("tenant = \"t\"\nall_tenants = true\n", 2),
            ("all_tenants = false\n", 2),
            ("", 2),
        ] {
            let text = format!("\n[[revoke]]\n{entry}jti = \"x\"\nuntil = 1\n");
            let e = parse(Path::new("revoked.toml"), &text, &known).unwrap_err();
            assert_eq!(
                (e.line, e.key.as_str()),
                (Some(line), "revoke[0]"),
                "{text}: {e}"
            );
            assert!(e.message.contains("all_tenants = true"), "{e}");
        }
        let none = parse(Path::new("revoked.toml"), "", &known).unwrap();
        assert!(none.for_tenant("t").is_none() && none.every_tenant().is_none());
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

    /// An `until` written as a date string (a wrong type) names its key and
    /// line: serde's error names neither key nor entry.
    #[test]
    fn a_wrong_type_names_its_key() {
        let text = "[[revoke]]\ntenant = \"t\"\njti = \"a\"\nuntil = \"2027-01-01\"\n";
        let e = parse(Path::new("revoked.toml"), text, &|t| t == "t").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (Some(4), "until"), "{e}");
    }
}
