//! One request to authorize: a token (maybe) plus the gateway's metadata.

/// Seconds since the Unix epoch, passed in by the caller: the engine never reads a clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixTime(pub u64);

/// A request as the gateway saw it. Borrowed: the engine copies nothing it does not keep.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The bearer token's bytes (without `Bearer `), or `None` when the request had none.
    pub token: Option<&'a [u8]>,
    /// The tenant (Infura project id, Besu node, API key owner).
    pub tenant: &'a str,
    /// The JSON-RPC method (`eth_blockNumber`), if any.
    pub method: Option<&'a str>,
    /// Addresses the request touches (`to` of a call, say); hex, any case.
    /// Empty means "touches no address", never "unknown": a caller that
    /// cannot tell what a call touches (a contract creation, a filter id, a
    /// method it does not know) must send `*`, which only a token allowing
    /// `*` accepts (jotd-gateway's address table does so).
    pub addresses: &'a [&'a str],
    /// The HTTP `Origin` header, if any.
    pub origin: Option<&'a str>,
    /// The HTTP `User-Agent` header, if any.
    pub user_agent: Option<&'a str>,
}

impl<'a> Request<'a> {
    /// A request with a token and no metadata.
    #[must_use]
    pub const fn bearer(tenant: &'a str, token: &'a [u8]) -> Self {
        Self {
            token: Some(token),
            tenant,
            method: None,
            addresses: &[],
            origin: None,
            user_agent: None,
        }
    }
}

/// A short, stable name for a token in logs: the first 8 bytes of its
/// SHA-256, in hex (16 characters). A token is a bearer credential, so logs
/// never carry one whole; the hash still lets an operator match a log line
/// to a token a client reports.
#[must_use]
pub fn token_hash(token: &[u8]) -> String {
    use std::fmt::Write;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token);
    digest.as_ref()[..8]
        .iter()
        .fold(String::with_capacity(16), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::token_hash;

    #[test]
    fn token_hash_is_the_sha256_prefix() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223...
        assert_eq!(token_hash(b"abc"), "ba7816bf8f01cfea");
        assert_ne!(token_hash(b"abd"), token_hash(b"abc"));
    }
}
