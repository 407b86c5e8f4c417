//! Key material → pre-parsed keys: PEM (SPKI, PKCS#1, certificate), PEM
//! wrapped in base64 (for environment variables), DER, HMAC secrets.
//!
//! The algorithm always comes from the caller (config or a JWK's `alg`);
//! nothing here guesses it from a token.

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use jotd_core::{Algorithm, KeyError, VerifyingKey};
use x509_cert::Certificate;
use x509_cert::der::{Decode, Encode};

/// Why key material could not become a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaterialError {
    /// Not PEM, not base64-wrapped PEM, not DER that aws-lc-rs accepts.
    #[error("not a PEM or DER public key ({0})")]
    Unreadable(String),
    /// A PEM block of a kind that holds no usable public key.
    #[error(
        "PEM block `{0}` is not a public key (expected PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE)"
    )]
    WrongPemLabel(String),
    /// More than one PEM block where one key belongs (a second key, a
    /// certificate chain): refused, so which key is used is never a guess.
    #[error("PEM block {index} (`{label}`) is extra: give exactly one key per file or value")]
    ExtraPemBlock {
        /// 1-based position of the first extra block.
        index: usize,
        /// Its label.
        label: String,
    },
    /// A private key where a public key belongs: refused so it does not spread.
    #[error("this is a private key (`{0}`); give jotd the public key only")]
    PrivateKey(String),
    /// The certificate could not be parsed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// A secret that is not valid base64 or base64url.
    #[error("secret is not base64 or base64url")]
    SecretEncoding,
    /// The key material parsed but is not acceptable for the algorithm.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Decodes public key material: PEM (`PUBLIC KEY`, `RSA PUBLIC KEY`,
/// `CERTIFICATE`; explanatory text around the block, as `openssl x509
/// -text` writes, is ignored as RFC 7468 says), the same PEM base64-encoded
/// once more, or DER (SPKI, PKCS#1 or an X.509 certificate), raw or in
/// base64. Every encoding of a key is read the same way: what PEM accepts,
/// DER accepts, and a private key is refused in each. Returns the DER the
/// engine parses (SPKI, or PKCS#1 for RSA).
///
/// # Errors
/// Unreadable input, a private key, or a PEM label that holds no public key.
pub fn public_der(bytes: &[u8]) -> Result<Vec<u8>, MaterialError> {
    let text = std::str::from_utf8(bytes).ok().map(str::trim);
    match text {
        Some(t) if has_pem_block(t) => pem_der(t.as_bytes()),
        Some(t)
            if !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+/=\r\n".contains(&b)) =>
        {
            let inner = STANDARD
                .decode(t.split_whitespace().collect::<String>())
                .map_err(|e| MaterialError::Unreadable(format!("base64: {e}")))?;
            let inner_text = std::str::from_utf8(&inner).map(str::trim).unwrap_or("");
            if has_pem_block(inner_text) {
                pem_der(inner_text.as_bytes())
            } else {
                der_public(inner) // base64 of DER: accept it too
            }
        }
        _ => der_public(bytes.to_vec()),
    }
}

/// Whether `text` holds a PEM encapsulation boundary at the start of a line.
fn has_pem_block(text: &str) -> bool {
    text.starts_with("-----BEGIN ") || text.contains("\n-----BEGIN ")
}

/// DER as the engine takes it: a certificate becomes its SubjectPublicKeyInfo
/// (as a PEM `CERTIFICATE` does), a private key is refused (as a PEM
/// `PRIVATE KEY` is), anything else goes to the engine as SPKI or PKCS#1.
fn der_public(der: Vec<u8>) -> Result<Vec<u8>, MaterialError> {
    if Certificate::from_der(&der).is_ok() {
        return certificate_spki(&der);
    }
    if let Some(kind) = der_private_key(&der) {
        return Err(MaterialError::PrivateKey(kind.to_owned()));
    }
    Ok(der)
}

/// A DER private key's kind, from its shape: a SEQUENCE whose first element
/// is the INTEGER version 0 (PKCS#8, PKCS#1 `RSAPrivateKey`) or 1 (SEC 1
/// `ECPrivateKey`, PKCS#8 v2). No public key starts so: an SPKI starts with a
/// SEQUENCE, a PKCS#1 public key with the modulus.
fn der_private_key(der: &[u8]) -> Option<&'static str> {
    use x509_cert::der::{Header, Reader, SliceReader, Tag};
    let mut r = SliceReader::new(der).ok()?;
    let outer = Header::decode(&mut r).ok()?;
    let first = Header::decode(&mut r).ok()?;
    if outer.tag != Tag::Sequence || first.tag != Tag::Integer || first.length != 1u8.into() {
        return None;
    }
    match r.read_byte().ok()? {
        0 => Some("DER private key (PKCS#8 or PKCS#1)"),
        1 => Some("DER private key (SEC 1 EC or PKCS#8 v2)"),
        _ => None,
    }
}

fn pem_der(text: &[u8]) -> Result<Vec<u8>, MaterialError> {
    let mut blocks =
        pem::parse_many(text).map_err(|e| MaterialError::Unreadable(format!("PEM: {e}")))?;
    // The parser drops a block it cannot finish (a second block cut off
    // before its END line): every BEGIN line must be a block read.
    let begins = text.windows(11).filter(|w| *w == b"-----BEGIN ").count();
    if begins > blocks.len() {
        return Err(MaterialError::Unreadable(format!(
            "PEM: {begins} BEGIN lines but {} whole block(s): one is cut off before its END line",
            blocks.len()
        )));
    }
    if let Some(extra) = blocks.get(1) {
        return Err(MaterialError::ExtraPemBlock {
            index: 2,
            label: extra.tag().to_owned(),
        });
    }
    let block = blocks
        .pop()
        .ok_or_else(|| MaterialError::Unreadable("PEM: no block".into()))?;
    match block.tag() {
        // A private key under a public label (a file renamed by hand) is
        // named as the private key it is, not "unreadable".
        "PUBLIC KEY" | "RSA PUBLIC KEY" => match der_private_key(block.contents()) {
            Some(kind) => Err(MaterialError::PrivateKey(format!(
                "{kind} under a `{}` label",
                block.tag()
            ))),
            None => Ok(block.contents().to_vec()),
        },
        "CERTIFICATE" => certificate_spki(block.contents()),
        tag if tag.contains("PRIVATE KEY") => Err(MaterialError::PrivateKey(tag.to_owned())),
        tag => Err(MaterialError::WrongPemLabel(tag.to_owned())),
    }
}

/// The SubjectPublicKeyInfo of a DER X.509 certificate.
///
/// # Errors
/// The bytes are not a certificate.
pub fn certificate_spki(der: &[u8]) -> Result<Vec<u8>, MaterialError> {
    let cert = Certificate::from_der(der).map_err(|e| MaterialError::Certificate(e.to_string()))?;
    cert.tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| MaterialError::Certificate(e.to_string()))
}

/// Parses public key material for `alg`.
///
/// # Errors
/// See [`public_der`] and [`VerifyingKey::from_public_der`].
pub fn public_key(alg: Algorithm, bytes: &[u8]) -> Result<VerifyingKey, MaterialError> {
    Ok(VerifyingKey::from_public_der(alg, &public_der(bytes)?)?)
}

/// Decodes a secret given as base64 or base64url, padded or not.
///
/// # Errors
/// Neither alphabet decodes it.
pub fn decode_secret_base64(text: &str) -> Result<Vec<u8>, MaterialError> {
    const LAX: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let text = text.trim();
    GeneralPurpose::new(&base64::alphabet::STANDARD, LAX)
        .decode(text)
        .or_else(|_| GeneralPurpose::new(&base64::alphabet::URL_SAFE, LAX).decode(text))
        .map_err(|_| MaterialError::SecretEncoding)
}

/// Every algorithm family, to find which one a bare public key belongs to.
const PROBE: [Algorithm; 6] = [
    Algorithm::Rs256,
    Algorithm::Es256,
    Algorithm::Es384,
    Algorithm::Es512,
    Algorithm::Es256K,
    Algorithm::EdDsa,
];

/// The fingerprint of a public key file: base64(SHA-256(DER SPKI)), as
/// `openssl pkey -pubin -in FILE -outform DER | openssl sha256 -binary | openssl base64` prints it.
///
/// # Errors
/// Not a public key jotd can load (RSA outside 2048..=8192 bits included).
pub fn fingerprint(bytes: &[u8]) -> Result<String, MaterialError> {
    let der = public_der(bytes)?;
    for alg in PROBE {
        match VerifyingKey::from_public_der(alg, &der) {
            Ok(key) => {
                return key
                    .fingerprint()
                    .ok_or(MaterialError::Unreadable("no SPKI".into()));
            }
            // An RSA key of the wrong size is still RSA: say so rather than "unreadable".
            Err(e @ KeyError::RsaModulusSize { .. }) => return Err(e.into()),
            Err(_) => {}
        }
    }
    Err(MaterialError::Unreadable(
        "not an RSA, EC (P-256, P-384, P-521, secp256k1) or Ed25519 public key".into(),
    ))
}
