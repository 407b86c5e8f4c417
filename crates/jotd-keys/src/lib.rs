//! jotd-keys: the key cache.
//!
//! Key material (PEM SPKI/PKCS#1/certificate, base64-wrapped PEM, DER, JWK,
//! JWKS, HMAC secrets) → pre-parsed `jotd_core::VerifyingKey`s bound to one
//! algorithm each; the typed keys section of a config (tenants, keys, JWKS
//! sources, denylist; parsed by the binary that owns the file, or from a
//! keys-only file) with errors naming file, line and key; per-tenant
//! denylists; immutable snapshots swapped whole.
//!
//! Contract: nothing here reads files or the clock on its own; the caller
//! passes a file reader ([`ReadFile`]) and times.

mod config;
pub mod denylist;
mod fetch;
pub mod jwk;
mod load;
pub mod material;
mod reload;
mod store;
mod tenants;

pub use config::{
    ConfigError, DEFAULT_MAX_JWKS_KEYS, DEFAULT_MAX_KEYS_PER_TENANT, KeysSection, RawTenant,
    key_before, line_of_key, toml_error, toml_error_key,
};
pub use fetch::{
    FetchConfig, FetchError, FetchEvent, FetchObserver, JwksFetcher, JwksUrlError, MAX_REDIRECTS,
    MAX_TRIGGERS, MAX_WAITERS, PARALLEL_FETCHES, SourceHealth, check_fetch_config, check_jwks_url,
    max_age, redacted_url,
};
pub use load::{KeysConfig, MAX_JWKS_FILE_BYTES, load, load_section, read_text};
pub use reload::{
    FetchedJwks, FileStamp, Loader, MTIME_SLACK, Reader, ReloadStatus, Reloader, Stamper,
};
pub use store::KeyStore;
pub use tenants::{
    DEFAULT_JWKS_REFRESH, JwksLocation, JwksSource, KeyInfo, MAX_JWKS_SOURCES, ReadFile, TenantSpec,
};

/// A key id every source accepts (config, JWK, JWKS file or URL): 1 to 256
/// bytes, no control characters.
pub(crate) fn is_kid(kid: &str) -> bool {
    !kid.is_empty() && kid.len() <= 256 && !kid.chars().any(char::is_control)
}
