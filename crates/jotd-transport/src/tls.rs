//! TLS 1.3 configurations on rustls + aws-lc-rs (no ring), built from PEM bytes
//! the caller read. ALPN is always `jotd/1`.

use crate::messages::ALPN;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// Why a TLS configuration could not be built. `what` names the input
/// (`cert_file`, `key_file`, `client_ca_file`, `ca`), so a config error can point at it.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct TlsError {
    /// Which input was wrong.
    pub what: &'static str,
    /// What was wrong with it.
    pub message: String,
}

pub(crate) fn err(what: &'static str, message: impl std::fmt::Display) -> TlsError {
    TlsError {
        what,
        message: message.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Certificates from PEM text; at least one.
///
/// # Errors
/// No `CERTIFICATE` block, or a block that does not decode.
pub fn certificates(
    what: &'static str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(what, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err(what, "no CERTIFICATE block"));
    }
    Ok(certs)
}

fn private_key(what: &'static str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        err(
            what,
            format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
        )
    })
}

fn roots(what: &'static str, pem: &[u8]) -> Result<rustls::RootCertStore, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for cert in certificates(what, pem)? {
        store
            .add(cert)
            .map_err(|e| err(what, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(store)
}

/// The server's TLS: its certificate chain and key, and, when `client_ca_pem`
/// is given, mutual TLS (a client without a certificate issued by that CA is refused).
///
/// # Errors
/// Unreadable PEM, a key that does not match the certificate, a bad CA.
pub fn server_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
) -> Result<rustls::ServerConfig, TlsError> {
    let certs = certificates("cert_file", cert_chain_pem)?;
    let key = private_key("key_file", key_pem)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err("tls", e))?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots("client_ca_file", pem)?),
                provider(),
            )
            .build()
            .map_err(|e| err("client_ca_file", e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| err("key_file", format!("does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Checks the name a client verifies the servers' certificates against: a
/// DNS name or an IP address. An empty or malformed name would fail every
/// handshake at run time; it is refused where it is configured instead.
///
/// # Errors
/// The name is neither, with the reason.
pub fn check_server_name(name: &str) -> Result<(), String> {
    rustls::pki_types::ServerName::try_from(name)
        .map(|_| ())
        .map_err(|e| {
            format!(
                "`{}` is not a DNS name or IP address ({e})",
                name.escape_default()
            )
        })
}

/// A client's TLS: trust `ca_pem` only (never the system roots: jotd runs on a
/// private PKI), and present `client` (certificate chain PEM, key PEM) when given.
///
/// # Errors
/// Unreadable PEM or a key that does not match the certificate.
pub fn client_config(
    ca_pem: &[u8],
    client: Option<(&[u8], &[u8])>,
) -> Result<rustls::ClientConfig, TlsError> {
    client_config_alpn(ca_pem, client, &[ALPN])
}

/// [`client_config`] offering other ALPN ids (tests of refusal use it).
///
/// # Errors
/// As [`client_config`].
pub fn client_config_alpn(
    ca_pem: &[u8],
    client: Option<(&[u8], &[u8])>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err("tls", e))?
        .with_root_certificates(roots("ca", ca_pem)?);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates("cert", cert)?, private_key("key", key)?)
            .map_err(|e| err("key", format!("does not fit the certificate: {e}")))?,
    };
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_names_are_dns_names_or_ip_addresses() {
        for ok in ["localhost", "jotd.internal", "10.0.0.1", "::1"] {
            assert!(super::check_server_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "jotd pool", "a..b", "-x-.example", "jotd\n"] {
            let e = super::check_server_name(bad).unwrap_err();
            assert!(
                e.contains("is not a DNS name or IP address"),
                "{bad:?}: {e}"
            );
        }
    }
}
