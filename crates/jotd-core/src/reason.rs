//! Reason codes: why a token was allowed or denied.
//!
//! The snake_case names and the `u16` codes are shared by the wire protocol,
//! metrics labels, the `check` CLI and the docs. New codes are appended,
//! never renumbered.

use std::fmt;

macro_rules! reasons {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal => $name:literal, )+) => {
        /// Why a request was allowed or denied. `Copy`, with a stable [`code`](Reason::code)
        /// and [`as_str`](Reason::as_str).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u16)]
        pub enum Reason {
            $( $(#[$doc])* $variant = $code, )+
        }

        impl Reason {
            /// Every reason, in code order.
            pub const ALL: &'static [Self] = &[ $( Self::$variant, )+ ];

            /// The stable snake_case name.
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self { $( Self::$variant => $name, )+ }
            }

            /// Looks a reason up by its stable numeric code.
            #[must_use]
            pub const fn from_code(code: u16) -> Option<Self> {
                match code { $( $code => Some(Self::$variant), )+ _ => None }
            }

            /// Looks a reason up by its snake_case name.
            #[must_use]
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $( $name => Some(Self::$variant), )+ _ => None }
            }
        }
    };
}

reasons! {
    /// The token is valid and the policy allows the request.
    Ok = 0 => "ok",
    /// Allowed without a token (a `no_auth_methods` method, or `require_jwt = false`).
    OkNoAuth = 1 => "ok_no_auth",
    /// No token, and the tenant requires one.
    MissingToken = 2 => "missing_token",
    /// The token is longer than the byte cap.
    TokenTooLarge = 3 => "token_too_large",
    /// Not a compact JWS: segments, base64url, JSON, duplicate members, embedded keys, `b64`.
    Malformed = 4 => "malformed",
    /// The header's `alg` is not one jotd implements (`none` included).
    UnsupportedAlg = 5 => "unsupported_alg",
    /// The tenant does not allow this algorithm.
    AlgNotAllowed = 6 => "alg_not_allowed",
    /// The tenant id is not configured.
    UnknownTenant = 7 => "unknown_tenant",
    /// No `kid`, and the tenant has more than one key.
    MissingKid = 8 => "missing_kid",
    /// The `kid` names no key of the tenant.
    UnknownKid = 9 => "unknown_kid",
    /// The header's `alg` differs from the algorithm the key was loaded with.
    KeyAlgMismatch = 10 => "key_alg_mismatch",
    /// The signature does not verify.
    BadSignature = 11 => "bad_signature",
    /// `exp` is in the past (beyond leeway).
    Expired = 12 => "expired",
    /// `nbf` is in the future (beyond leeway).
    NotYetValid = 13 => "not_yet_valid",
    /// `iat` is in the future (beyond leeway).
    IssuedInFuture = 14 => "issued_in_future",
    /// The token's lifetime exceeds the tenant's maximum.
    LifetimeTooLong = 15 => "lifetime_too_long",
    /// A required claim is absent.
    MissingClaim = 16 => "missing_claim",
    /// A registered or policy claim has the wrong type or value.
    InvalidClaim = 17 => "invalid_claim",
    /// No `aud` entry matches the tenant's audiences.
    BadAudience = 18 => "bad_audience",
    /// `iss` is not one of the tenant's issuers.
    BadIssuer = 19 => "bad_issuer",
    /// The header's `typ` is not accepted by the tenant.
    BadTyp = 20 => "bad_typ",
    /// The header lists `crit` extensions (jotd understands none).
    UnsupportedCrit = 21 => "unsupported_crit",
    /// The token's `jti` or `sub` is on the tenant's denylist.
    Revoked = 22 => "revoked",
    /// The token's `methods` allowlist does not include the request's method.
    MethodNotAllowed = 23 => "method_not_allowed",
    /// A request address is not in the token's `addresses` allowlist.
    AddressNotAllowed = 24 => "address_not_allowed",
    /// The request origin does not match the token's `origins` allowlist.
    OriginNotAllowed = 25 => "origin_not_allowed",
    /// The request user agent does not match the token's `user_agents` allowlist.
    UserAgentNotAllowed = 26 => "user_agent_not_allowed",
    /// The token's `permissions` do not grant the request's method.
    PermissionDenied = 27 => "permission_denied",
    /// jotd failed internally; the request is denied (fail closed).
    InternalError = 28 => "internal_error",
}

impl Reason {
    /// The stable numeric code carried on the wire.
    #[must_use]
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// Whether this reason allows the request (`ok` and `ok_no_auth`).
    #[must_use]
    pub const fn is_allow(self) -> bool {
        matches!(self, Self::Ok | Self::OkNoAuth)
    }

    /// Whether this denial of a request that carries a token is reached
    /// before the request's method and addresses are looked at, so every
    /// request with the same token, tenant, origin and user agent gets it,
    /// whatever its call: an unknown tenant, and the token's form, size,
    /// algorithm, key, signature, registered claims, lifetime, time claims
    /// and revocation. A client may check such a token once for many calls
    /// (jotd-gateway does, for a large JSON-RPC batch).
    ///
    /// Not: `missing_claim` and `invalid_claim` (a policy's claim can give
    /// them), the policy reasons (a no-auth method turns a policy refusal
    /// into `ok_no_auth`), `missing_token` (no token) and `internal_error`.
    #[must_use]
    pub const fn decided_by_token(self) -> bool {
        matches!(
            self,
            Self::UnknownTenant
                | Self::TokenTooLarge
                | Self::Malformed
                | Self::UnsupportedAlg
                | Self::AlgNotAllowed
                | Self::MissingKid
                | Self::UnknownKid
                | Self::KeyAlgMismatch
                | Self::BadSignature
                | Self::Expired
                | Self::NotYetValid
                | Self::IssuedInFuture
                | Self::LifetimeTooLong
                | Self::BadAudience
                | Self::BadIssuer
                | Self::BadTyp
                | Self::UnsupportedCrit
                | Self::Revoked
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Reason;

    #[test]
    fn codes_are_dense_stable_and_round_trip() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(usize::from(r.code()), i, "{r} is out of order");
            assert_eq!(Reason::from_code(r.code()), Some(*r));
            assert_eq!(Reason::from_name(r.as_str()), Some(*r));
        }
        // Pinned: these numbers are on the wire and must never move.
        assert_eq!(Reason::Ok.code(), 0);
        assert_eq!(Reason::BadSignature.code(), 11);
        assert_eq!(Reason::InternalError.code(), 28);
        assert_eq!(Reason::from_code(29), None);
    }

    #[test]
    fn only_ok_reasons_allow() {
        let allowing: Vec<_> = Reason::ALL.iter().filter(|r| r.is_allow()).collect();
        assert_eq!(allowing, [&Reason::Ok, &Reason::OkNoAuth]);
    }
}
