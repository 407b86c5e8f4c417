//! The claims set: one pass over the decoded payload with borrowed strings.
//!
//! Registered claims (`exp`, `nbf`, `iat`, `iss`, `sub`, `jti`, `aud`) and
//! policy claims (`methods`, `addresses`, `origins`, `user_agents`,
//! `permissions`) are typed: a wrong type is `invalid_claim`, a duplicate is
//! `malformed`. Claims the tenant asks to return are kept as raw JSON.

use crate::json::{Skip, StrCow};
use crate::policy::{Grants, Strs};
use crate::reason::Reason;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

/// What a tenant needs from the claims beyond the registered ones.
#[derive(Clone, Copy)]
pub(crate) struct ClaimsWanted<'c> {
    /// Claims to copy into the decision (raw JSON).
    pub(crate) returned: &'c [Box<str>],
    /// Claims that must be present (at most 64 are tracked; more fail closed).
    pub(crate) required: &'c [Box<str>],
}

/// A parsed claims set, borrowing from the decoded payload.
#[derive(Debug, Default)]
pub(crate) struct Claims<'a> {
    /// Whole seconds, a fraction rounded toward refusal for each check
    /// (RFC 7519 allows one): `exp` down (it expires no later), `nbf` and
    /// `iat` up (valid no sooner, issued no earlier).
    pub(crate) exp: Option<u64>,
    pub(crate) nbf: Option<u64>,
    pub(crate) iat: Option<u64>,
    /// Whether `exp` / `iat` had a fraction: the lifetime cap measures
    /// `exp` rounded up from `iat` rounded down, so it is never understated.
    pub(crate) exp_fraction: bool,
    pub(crate) iat_fraction: bool,
    pub(crate) iss: Option<Cow<'a, str>>,
    pub(crate) sub: Option<Cow<'a, str>>,
    pub(crate) jti: Option<Cow<'a, str>>,
    pub(crate) aud: Option<Strs<'a>>,
    pub(crate) grants: Grants<'a>,
    /// `(index into ClaimsWanted::returned, raw JSON value)`.
    pub(crate) returned: Vec<(usize, &'a RawValue)>,
    /// Bit `i` set when `ClaimsWanted::required[i]` was present.
    pub(crate) required_seen: u64,
}

/// Parses decoded payload JSON into `out` (filled in place: the struct is large
/// and moving it through serde's layers showed up in profiles), or the reason
/// it is unacceptable. `out` should start as `Claims::default()`.
///
/// A JSON syntax error anywhere is `malformed`. A data error (a value of the
/// wrong type) takes the reason the visitor recorded for the claim it was
/// reading: `invalid_claim` for typed claims, `malformed` for duplicates and
/// over-deep nesting.
pub(crate) fn parse_claims<'a>(
    json: &'a str,
    wanted: ClaimsWanted<'_>,
    out: &mut Claims<'a>,
) -> Result<(), Reason> {
    let failure = Cell::new(None);
    let mut de = serde_json::Deserializer::from_str(json);
    let parsed = ClaimsSeed {
        wanted,
        failure: &failure,
        out,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    parsed.map_err(|e| match e.classify() {
        serde_json::error::Category::Data => failure.get().unwrap_or(Reason::Malformed),
        _ => Reason::Malformed,
    })
}

struct ClaimsSeed<'c, 'f, 'o, 'de> {
    wanted: ClaimsWanted<'c>,
    failure: &'f Cell<Option<Reason>>,
    out: &'o mut Claims<'de>,
}

impl<'de> DeserializeSeed<'de> for ClaimsSeed<'_, '_, '_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ClaimsSeed<'_, '_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of claims")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let Self {
            wanted,
            failure,
            out: claims,
        } = self;
        let fail = |reason: Reason| -> A::Error {
            failure.set(Some(reason));
            de::Error::custom(reason.as_str())
        };
        // Claims jotd neither types nor returns, by name: a second copy is
        // `malformed` as a typed or returned claim's is (what reads the
        // token after jotd may take the other copy).
        let mut others = crate::json::Seen::default();
        while let Some(StrCow(name)) = map.next_key::<StrCow<'de>>()? {
            // Every place this claim is required (a name listed twice is met
            // by one claim); `null` is as good as absent, so the bits are set
            // once the value is known not to be null.
            let required = wanted
                .required
                .iter()
                .take(64)
                .enumerate()
                .filter(|(_, r)| ***r == *name)
                .fold(0u64, |m, (i, _)| m | 1 << i);
            let returned = wanted.returned.iter().position(|r| **r == *name);
            let known = matches!(
                &*name,
                "exp"
                    | "nbf"
                    | "iat"
                    | "iss"
                    | "sub"
                    | "jti"
                    | "aud"
                    | "methods"
                    | "addresses"
                    | "origins"
                    | "user_agents"
                    | "permissions"
            );
            if !known && returned.is_none() {
                if !others.insert(name.clone()) {
                    return Err(fail(Reason::Malformed));
                }
                failure.set(Some(Reason::Malformed));
                let null = map.next_value_seed(Skip::new())?;
                failure.set(None);
                if !null {
                    claims.required_seen |= required;
                }
                continue;
            }
            // A registered or policy claim that is `null` is `invalid_claim`
            // below (`missing_claim` when required); a returned one is
            // checked here.
            if returned.is_none() {
                claims.required_seen |= required;
            }
            // Claims to return are kept raw (then also typed if registered); others are typed in place.
            let raw = match returned {
                Some(i) => {
                    let raw: &'de RawValue = map.next_value()?;
                    let skipped =
                        Skip::new().deserialize(&mut serde_json::Deserializer::from_str(raw.get()));
                    if claims.returned.iter().any(|(j, _)| *j == i) || skipped.is_err() {
                        return Err(fail(Reason::Malformed));
                    }
                    if matches!(skipped, Ok(false)) {
                        claims.required_seen |= required;
                    }
                    claims.returned.push((i, raw));
                    Some(raw)
                }
                None => None,
            };
            let mut value = Value {
                map: &mut map,
                raw,
                failure,
                required: required != 0,
            };
            let g = &mut claims.grants;
            match &*name {
                "exp" => value.set(&mut claims.exp, |d: NumericDate| {
                    claims.exp_fraction = d.fraction;
                    d.seconds
                })?,
                "nbf" => value.set(&mut claims.nbf, NumericDate::up)?,
                "iat" => value.set(&mut claims.iat, |d: NumericDate| {
                    claims.iat_fraction = d.fraction;
                    d.up()
                })?,
                "iss" => value.set(&mut claims.iss, |s: StrCow<'de>| s.0)?,
                "sub" => value.set(&mut claims.sub, |s: StrCow<'de>| s.0)?,
                "jti" => value.set(&mut claims.jti, |s: StrCow<'de>| s.0)?,
                "aud" => value.set(&mut claims.aud, |a: Audience<'de>| a.0)?,
                "methods" => value.set(&mut g.methods, |l: StrList<'de>| l.0)?,
                "addresses" => value.set(&mut g.addresses, |l: StrList<'de>| l.0)?,
                "origins" => value.set(&mut g.origins, |l: StrList<'de>| l.0)?,
                "user_agents" => value.set(&mut g.user_agents, |l: StrList<'de>| l.0)?,
                "permissions" => value.set(&mut g.permissions, |l: StrList<'de>| l.0)?,
                _ => {}
            }
        }
        Ok(())
    }
}

/// The value of one claim: still in the map, or already captured raw.
struct Value<'m, 'f, 'de, A> {
    map: &'m mut A,
    raw: Option<&'de RawValue>,
    failure: &'f Cell<Option<Reason>>,
    /// The tenant requires this claim: `null` is `missing_claim`, as an
    /// unregistered required claim's is.
    required: bool,
}

impl<'de, A: MapAccess<'de>> Value<'_, '_, 'de, A> {
    /// Sets a typed claim once: a second occurrence is `malformed`, a value of
    /// the wrong type `invalid_claim`.
    fn set<T: Deserialize<'de>, V>(
        &mut self,
        slot: &mut Option<V>,
        into: impl FnOnce(T) -> V,
    ) -> Result<(), A::Error> {
        if slot.is_some() {
            self.failure.set(Some(Reason::Malformed));
            return Err(de::Error::custom("duplicate claim"));
        }
        self.failure.set(Some(Reason::InvalidClaim));
        let value: Option<T> = match self.raw {
            Some(raw) => {
                serde_json::from_str(raw.get()).map_err(|_| de::Error::custom("invalid claim"))?
            }
            None => self.map.next_value()?,
        };
        let Some(value) = value else {
            if self.required {
                self.failure.set(Some(Reason::MissingClaim));
            }
            return Err(de::Error::custom("a claim set to null"));
        };
        self.failure.set(None);
        *slot = Some(into(value));
        Ok(())
    }
}

/// An array of strings (policy claims).
struct StrList<'a>(Strs<'a>);

impl<'de> Deserialize<'de> for StrList<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(StrListVisitor)
    }
}

struct StrListVisitor;

impl<'de> Visitor<'de> for StrListVisitor {
    type Value = StrList<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of strings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Strs::new();
        while let Some(StrCow(s)) = seq.next_element()? {
            out.push(s);
        }
        Ok(StrList(out))
    }
}

/// `aud`: one string or an array of strings (RFC 7519 §4.1.3).
struct Audience<'a>(Strs<'a>);

impl<'de> Deserialize<'de> for Audience<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Audience<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Audience(smallvec::smallvec![Cow::Borrowed(v)]))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Audience(smallvec::smallvec![Cow::Owned(v.to_owned())]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                StrListVisitor.visit_seq(seq).map(|l| Audience(l.0))
            }
        }
        d.deserialize_any(V)
    }
}

/// A NumericDate: a non-negative JSON number of seconds, whole, and whether
/// a fraction was cut off.
struct NumericDate {
    seconds: u64,
    fraction: bool,
}

impl NumericDate {
    /// Rounded up.
    const fn up(self) -> u64 {
        self.seconds.saturating_add(self.fraction as u64)
    }
}

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NumericDate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative number of seconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(NumericDate {
                    seconds: v,
                    fraction: false,
                })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(|seconds| NumericDate {
                        seconds,
                        fraction: false,
                    })
                    .map_err(|_| E::custom("negative NumericDate"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                if v.is_finite() && v >= 0.0 {
                    // `as` saturates at u64::MAX, which is far past any real expiry.
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    Ok(NumericDate {
                        seconds: v as u64,
                        fraction: v.fract() != 0.0,
                    })
                } else {
                    Err(E::custom("negative NumericDate"))
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests;
