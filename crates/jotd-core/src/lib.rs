//! jotd-core: the sans-IO JWT verification engine.
//!
//! Contract: token bytes + request metadata + a key [`Snapshot`] + `now` →
//! one [`Decision`] per request. No I/O, no sockets, no clock, no threads of
//! its own (batches run on a rayon pool the caller owns), no environment,
//! no globals. A rejected token is a value (a [`Reason`]), not an error.
//!
//! Security rules enforced here (see DESIGN.md): a key is bound to one
//! algorithm at load and the header never chooses the key type; no `none`,
//! no JWE, no `b64`, no `crit`, no embedded keys; strict base64url, exactly
//! three segments, byte cap before decoding; duplicate or wrongly typed
//! registered claims rejected; RSA 2048..=8192 bits; EC points on the curve;
//! HMAC secrets at least the hash length, tags compared in constant time;
//! any internal failure is an `internal_error` deny.

mod alg;
mod batch;
mod cache;
mod claims;
mod decision;
mod engine;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod json;
mod key;
#[cfg(feature = "mint")]
mod mint;
mod policy;
mod reason;
mod request;
mod tenant;
mod token;

pub use alg::{Algorithm, AlgorithmSet, KeyFamily, UnknownAlgorithm};
pub use cache::{CacheConfig, CacheStats, HOT_SLOTS, HOT_TOKEN_BYTES, SAMPLE_EVERY, THROTTLE};
pub use decision::{Decision, TokenInfo};
pub use engine::{Engine, EngineConfig, Scratch};
pub use key::{KeyError, RSA_MAX_BITS, RSA_MIN_BITS, VerifyingKey};
#[cfg(feature = "mint")]
pub use mint::{MintError, RawVerifier, SigningKey, sample_claims, split_for_raw};
pub use policy::{PolicyModel, origin_pattern_ok};
pub use reason::Reason;
pub use request::{Request, UnixTime, token_hash};
pub use tenant::{ClaimRules, Denylist, Snapshot, Tenant, TenantKey, TypRule};
