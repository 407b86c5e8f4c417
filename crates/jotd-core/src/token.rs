//! Compact JWS structure: splitting, strict base64url and the protected header.

use crate::alg::Algorithm;
use crate::json::{Skip, StrCow};
use crate::reason::Reason;
use base64::Engine as _;
use serde::Deserializer as _;
use serde::de::{self, MapAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// The three segments of a compact JWS, still base64url-encoded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segments<'t> {
    pub(crate) header: &'t [u8],
    pub(crate) payload: &'t [u8],
    /// `header.payload`: the bytes the signature covers.
    pub(crate) signing_input: &'t [u8],
    pub(crate) signature: &'t [u8],
}

/// Splits a token into exactly three non-empty segments. Anything else
/// (JWE's five, a detached payload, a token of many dots) is `malformed`.
pub(crate) fn split(token: &[u8]) -> Result<Segments<'_>, Reason> {
    let mut dots = memchr::memchr_iter(b'.', token);
    let (Some(first), Some(second), None) = (dots.next(), dots.next(), dots.next()) else {
        return Err(Reason::Malformed);
    };
    let (header, rest) = token.split_at(first);
    let payload = &rest[1..second - first];
    let signature = &token[second + 1..];
    if header.is_empty() || payload.is_empty() || signature.is_empty() {
        return Err(Reason::Malformed);
    }
    Ok(Segments {
        header,
        payload,
        signing_input: &token[..second],
        signature,
    })
}

/// Strict base64url (the URL-safe alphabet, no padding, no non-canonical
/// trailing bits), SIMD-accelerated where the CPU has it. Built once per engine.
#[derive(Debug, Clone)]
pub(crate) struct Base64Url(Inner);

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
type Inner = base64::engine::Simd;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
type Inner = base64::engine::GeneralPurpose;

impl Base64Url {
    pub(crate) fn new() -> Self {
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        return Self(base64::engine::Simd::url_safe(
            base64::engine::general_purpose::NO_PAD,
        ));
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        return Self(base64::engine::general_purpose::URL_SAFE_NO_PAD);
    }

    /// Decodes into `out`, reusing its allocation.
    pub(crate) fn decode(&self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Reason> {
        out.clear();
        self.0.decode_vec(input, out).map_err(|_| Reason::Malformed)
    }
}

/// Decoded JSON must be UTF-8 (RFC 8259 §8.1); checked once per segment so the
/// JSON parser can borrow strings without validating each one again.
pub(crate) fn utf8(bytes: &[u8]) -> Result<&str, Reason> {
    std::str::from_utf8(bytes).map_err(|_| Reason::Malformed)
}

#[derive(Default)]
struct RawHeader<'h> {
    alg: Option<Cow<'h, str>>,
    kid: Option<Cow<'h, str>>,
    typ: Option<Cow<'h, str>>,
    crit: bool,
    forbidden: bool,
}

struct HeaderVisitor;

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = RawHeader<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JOSE header object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut h = RawHeader::default();
        while let Some(StrCow(name)) = map.next_key::<StrCow<'de>>()? {
            let slot = match &*name {
                "alg" => &mut h.alg,
                "kid" => &mut h.kid,
                "typ" => &mut h.typ,
                other => {
                    match other {
                        "crit" => h.crit = true,
                        "b64" | "enc" | "zip" | "jwk" | "jku" | "x5u" | "x5c" => h.forbidden = true,
                        _ => {}
                    }
                    map.next_value_seed(Skip::new())?;
                    continue;
                }
            };
            if slot.is_some() {
                return Err(de::Error::custom("duplicate header parameter"));
            }
            *slot = Some(map.next_value::<StrCow<'de>>()?.0);
        }
        Ok(h)
    }
}

/// The protected header, after the security rules have been applied.
#[derive(Debug)]
pub(crate) struct Header<'h> {
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<Cow<'h, str>>,
    pub(crate) typ: Option<Cow<'h, str>>,
}

/// Parses decoded header JSON. Duplicate members and wrongly typed `alg`,
/// `kid`, `typ` are `malformed`; `crit` of any kind is `unsupported_crit`;
/// JWE members (`enc`, `zip`), unencoded payloads (`b64`) and embedded keys
/// (`jwk`, `jku`, `x5u`, `x5c`) are `malformed`: jotd never takes a key from a token.
pub(crate) fn parse_header(json: &str) -> Result<Header<'_>, Reason> {
    let mut de = serde_json::Deserializer::from_str(json);
    let raw = de
        .deserialize_map(HeaderVisitor)
        .and_then(|h| de.end().map(|()| h))
        .map_err(|_| Reason::Malformed)?;
    if raw.crit {
        return Err(Reason::UnsupportedCrit);
    }
    if raw.forbidden {
        return Err(Reason::Malformed);
    }
    let alg = raw.alg.ok_or(Reason::Malformed)?;
    let alg = Algorithm::from_name(&alg).ok_or(Reason::UnsupportedAlg)?;
    Ok(Header {
        alg,
        kid: raw.kid,
        typ: raw.typ,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_needs_exactly_three_non_empty_segments() {
        let ok = split(b"aa.bb.cc").unwrap();
        assert_eq!(
            (ok.header, ok.payload, ok.signature),
            (&b"aa"[..], &b"bb"[..], &b"cc"[..])
        );
        assert_eq!(ok.signing_input, b"aa.bb");
        for bad in [
            &b""[..],
            b"a",
            b"a.b",
            b"a.b.c.d",
            b"a.b.c.d.e",
            b".b.c",
            b"a..c",
            b"a.b.",
            b".....",
        ] {
            assert_eq!(
                split(bad).unwrap_err(),
                Reason::Malformed,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn base64url_is_strict() {
        let mut out = Vec::new();
        let b64 = Base64Url::new();
        b64.decode(b"eyJhIjoxfQ", &mut out).unwrap();
        assert_eq!(out, br#"{"a":1}"#);
        // padding, the standard alphabet, whitespace, non-canonical trailing bits, impossible length
        for bad in [
            &b"eyJhIjoxfQ=="[..],
            b"ey+h",
            b"ey/h",
            b"eyJh Ijox",
            b"eR",
            b"eyJhI",
        ] {
            assert!(
                b64.decode(bad, &mut out).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // "eQ" is canonical for 'y'; "eR" sets trailing bits
        b64.decode(b"eQ", &mut out).unwrap();
        assert_eq!(out, b"y");
    }

    #[test]
    fn header_rules() {
        let h = parse_header(r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#).unwrap();
        assert_eq!(
            (h.alg, h.kid.as_deref(), h.typ.as_deref()),
            (Algorithm::Rs256, Some("k1"), Some("JWT"))
        );
        let cases: &[(&str, Reason)] = &[
            (r#"{"alg":"none"}"#, Reason::UnsupportedAlg),
            (r#"{"alg":"HS1"}"#, Reason::UnsupportedAlg),
            (r#"{}"#, Reason::Malformed),
            (r#"{"alg":256}"#, Reason::Malformed),
            (r#"{"alg":"RS256","alg":"HS256"}"#, Reason::Malformed),
            (r#"{"alg":"RS256","kid":1}"#, Reason::Malformed),
            (r#"{"alg":"RS256","crit":["exp"]}"#, Reason::UnsupportedCrit),
            (r#"{"alg":"RS256","crit":null}"#, Reason::UnsupportedCrit),
            (r#"{"alg":"RS256","b64":false}"#, Reason::Malformed),
            (r#"{"alg":"RS256","enc":"A128GCM"}"#, Reason::Malformed),
            (r#"{"alg":"RS256","jwk":{"kty":"oct"}}"#, Reason::Malformed),
            (r#"{"alg":"RS256","jku":"https://evil"}"#, Reason::Malformed),
            (r#"{"alg":"RS256","x5u":"https://evil"}"#, Reason::Malformed),
            (r#"{"alg":"RS256","x5c":["MII"]}"#, Reason::Malformed),
            (r#"["alg","RS256"]"#, Reason::Malformed),
            (r#"{"alg":"RS256"}x"#, Reason::Malformed),
            (
                r#"{"alg":"RS256","x":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}"#,
                Reason::Malformed,
            ),
        ];
        for (json, want) in cases {
            assert_eq!(parse_header(json).unwrap_err(), *want, "{json}");
        }
    }
}
