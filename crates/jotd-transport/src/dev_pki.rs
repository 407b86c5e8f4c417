//! A throwaway PKI for development and tests (feature `dev-pki`): never part
//! of a production build of the library.

use crate::tls::{TlsError, err};

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
