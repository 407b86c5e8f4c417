//! Entry points for the cargo-fuzz targets in `fuzz/` (feature `fuzzing`).
//! Not a stable API: each function runs one internal parser on untrusted bytes
//! and returns what it decided, so a target can check invariants.

use crate::claims::{Claims, ClaimsWanted, parse_claims};
use crate::reason::Reason;
use crate::token::{Base64Url, parse_header, split, utf8};

/// Splits a token and strictly decodes and parses its header, as the engine does.
///
/// # Errors
/// The reason the engine would deny the token at this stage.
pub fn token_split(token: &[u8]) -> Result<(), Reason> {
    let seg = split(token)?;
    if seg.header.len() + seg.payload.len() + 1 + seg.signature.len() + 1 != token.len() {
        return Err(Reason::InternalError); // the segments must tile the token exactly
    }
    let b64 = Base64Url::new();
    let mut buf = Vec::new();
    b64.decode(seg.header, &mut buf)?;
    parse_header(utf8(&buf)?)?;
    b64.decode(seg.payload, &mut buf)?;
    b64.decode(seg.signature, &mut buf)
}

/// Parses a claims set, asking for two claims back and requiring one.
///
/// # Errors
/// The reason the engine would deny a token with this payload.
pub fn claims_json(json: &[u8]) -> Result<(), Reason> {
    let returned: [Box<str>; 2] = ["groups".into(), "sub".into()];
    let required: [Box<str>; 1] = ["name".into()];
    let wanted = ClaimsWanted {
        returned: &returned,
        required: &required,
    };
    let mut claims = Claims::default();
    parse_claims(utf8(json)?, wanted, &mut claims)?;
    // Every returned value must itself be valid JSON.
    for (_, raw) in &claims.returned {
        if serde_json::from_str::<serde::de::IgnoredAny>(raw.get()).is_err() {
            return Err(Reason::InternalError);
        }
    }
    Ok(())
}
