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

fn err(what: &'static str, message: impl std::fmt::Display) -> TlsError {
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

/// A throwaway PKI for development and tests: a CA, a server certificate for
/// `localhost`, `127.0.0.1` and `::1`, and a client certificate (for mutual
/// TLS), all PEM, all ECDSA P-256. Never for production: the CA key is discarded.
#[derive(Clone)]
pub struct DevPki {
    /// The CA certificate clients trust (and servers trust for client certificates).
    pub ca_pem: String,
    /// The server's certificate.
    pub server_cert_pem: String,
    /// The server's private key (PKCS#8).
    pub server_key_pem: String,
    /// A client certificate issued by the CA.
    pub client_cert_pem: String,
    /// The client's private key (PKCS#8).
    pub client_key_pem: String,
}

impl std::fmt::Debug for DevPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevPki").finish_non_exhaustive()
    }
}

impl DevPki {
    /// Generates a fresh one.
    ///
    /// # Errors
    /// Key generation or signing failed.
    pub fn generate() -> Result<Self, TlsError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let e = |m: rcgen::Error| err("dev pki", m);
        let ca_key = KeyPair::generate().map_err(e)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        ca.distinguished_name
            .push(DnType::CommonName, "jotd development CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().map_err(e)?;
            let mut p = CertificateParams::new(names).map_err(e)?;
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![usage];
            let cert = p.signed_by(&key, &issuer).map_err(e)?;
            Ok::<_, TlsError>((cert.pem(), key.serialize_pem()))
        };
        let (server_cert_pem, server_key_pem) = leaf(
            vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            "jotd development server",
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert_pem, client_key_pem) = leaf(
            vec!["jotd-dev-client".into()],
            "jotd development client",
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            server_cert_pem,
            server_key_pem,
            client_cert_pem,
            client_key_pem,
        })
    }
}
