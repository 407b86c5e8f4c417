//! JSON building blocks shared by the header and claims parsers.

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// Deepest nesting accepted in any claim value (objects and arrays).
pub(crate) const MAX_DEPTH: usize = 32;

/// Skips a value of any type, failing past [`MAX_DEPTH`] levels of nesting;
/// yields whether the value was `null`.
pub(crate) struct Skip {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(true)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let inner = self.nested()?;
        while seq.next_element_seed(Self { depth: inner })?.is_some() {}
        Ok(false)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let inner = self.nested()?;
        // A key twice in one object fails at any depth: parsers downstream
        // (the claims passed on raw, the token itself behind the gateway)
        // differ on which copy wins.
        let mut seen = Seen::default();
        while let Some(StrCow(key)) = map.next_key::<StrCow<'de>>()? {
            if !seen.insert(key) {
                return Err(de::Error::custom("a key twice in one object"));
            }
            map.next_value_seed(Self { depth: inner })?;
        }
        Ok(false)
    }
}

/// Keys met in one JSON object: a list while short, a hash set past that
/// (so an object of thousands of keys costs no quadratic scan).
#[derive(Default)]
pub(crate) struct Seen<'de> {
    few: Vec<Cow<'de, str>>,
    many: Option<std::collections::HashSet<Cow<'de, str>>>,
}

impl<'de> Seen<'de> {
    /// Records `key`; false when it was met before.
    pub(crate) fn insert(&mut self, key: Cow<'de, str>) -> bool {
        if let Some(many) = &mut self.many {
            return many.insert(key);
        }
        if self.few.contains(&key) {
            return false;
        }
        self.few.push(key);
        if self.few.len() > 16 {
            self.many = Some(self.few.drain(..).collect());
        }
        true
    }
}

impl Skip {
    /// A skipper at the top level.
    pub(crate) const fn new() -> Self {
        Self { depth: 0 }
    }

    fn nested<E: de::Error>(&self) -> Result<usize, E> {
        if self.depth >= MAX_DEPTH {
            Err(E::custom("nested too deeply"))
        } else {
            Ok(self.depth + 1)
        }
    }
}

/// A string that borrows from the input unless it had escapes.
pub(crate) struct StrCow<'a>(pub(crate) Cow<'a, str>);

impl<'de> Deserialize<'de> for StrCow<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrCowVisitor)
    }
}

struct StrCowVisitor;

impl<'de> Visitor<'de> for StrCowVisitor {
    type Value = StrCow<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(StrCow(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(StrCow(Cow::Owned(v.to_owned())))
    }
}
