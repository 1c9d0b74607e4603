//! JWS algorithm names accepted and emitted.

use std::fmt;

/// A JWS signature algorithm (`alg` header value) that trustwire accepts.
///
/// The algorithm a token may use is decided by the key it names, never by the
/// token: an Ed25519 key verifies only `EdDSA` and `Ed25519`, a P-256 key only
/// `ES256`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// Ed25519 under its RFC 8037 name `EdDSA`, which older verifiers expect.
    EdDsa,
    /// Ed25519 under its fully specified name `Ed25519` from RFC 9864.
    Ed25519,
    /// ECDSA with P-256 and SHA-256 (RFC 7518 section 3.4), accepted for
    /// verification only.
    Es256,
}

impl Algorithm {
    /// The `alg` header value.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::EdDsa => "EdDSA",
            Algorithm::Ed25519 => "Ed25519",
            Algorithm::Es256 => "ES256",
        }
    }

    /// Looks up an `alg` header value; the match is exact and case-sensitive.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "EdDSA" => Some(Algorithm::EdDsa),
            "Ed25519" => Some(Algorithm::Ed25519),
            "ES256" => Some(Algorithm::Es256),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
