//! Why a token was rejected: stable reason codes plus detail for the logs.

use std::fmt;

/// The stable reason code of a rejection.
///
/// Codes appear in logs, metrics, HTTP `WWW-Authenticate` errors and
/// dead-letter headers; their strings never change once released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// Not a well-formed token: bad base64url, bad or duplicate-member JSON,
    /// a claim of the wrong type, a missing `kid`. For a sealed message, also
    /// a JWE of the wrong shape, such as an `encrypted_key` that is not 40
    /// bytes or an `iv` that is not 12.
    Malformed,
    /// The token, the payload or a sealed message (its size, header or
    /// number of recipients) is larger than the limit.
    TooLarge,
    /// The `typ` header is not `trustwire+jwt`, or a JWE arrived where a JWS
    /// was expected (or, for a sealed message, the reverse).
    WrongType,
    /// The `alg` is absent, unknown (`none`, `HS256`, ...) or not allowed for
    /// the key the token names. For a sealed message: any key management
    /// `alg` but `ECDH-ES+A256KW` (`dir`, `PBES2-*`, `RSA1_5`, ...).
    UnsupportedAlg,
    /// The header carries a member that is never accepted (`crit`, `b64`,
    /// `jku`, `jwk`, `x5u`, `x5c`, `zip`, `enc`; in a sealed message `zip`,
    /// `crit`, `jku`, `jwk`, `x5u`, `x5c`, `p2s`, `p2c` and the `aad` member).
    UnsupportedHeader,
    /// No trusted issuer has a key with the token's `kid`.
    UnknownKey,
    /// The claimed issuer's keys cannot be fetched and none usable are cached.
    KeySourceUnavailable,
    /// The signature does not verify.
    BadSignature,
    /// `iss` is not the owner of the key that signed the token.
    IssuerMismatch,
    /// `aud` does not contain this service.
    WrongAudience,
    /// `exp` has passed, beyond the leeway.
    Expired,
    /// `nbf` or `iat` is in the future, beyond the leeway.
    NotYetValid,
    /// `exp - iat` is longer than the verifier's maximum token lifetime.
    LifetimeTooLong,
    /// A required claim (`iss`, `aud`, `iat`, `exp`, `jti`) is missing.
    MissingClaim,
    /// `chn`, `htm` or `htu` do not match the channel or request that arrived.
    BindingMismatch,
    /// `dig` does not match the payload that arrived, or is missing.
    DigestMismatch,
    /// The policy does not allow this issuer on this channel or route.
    NotAllowed,
    /// The `jti` was already accepted within its validity window.
    Replayed,
    /// The replay guard could not record the `jti` (store unreachable or full).
    ReplayGuardUnavailable,
    /// A sealed message's JWE names a content encryption (`enc`) other than
    /// `A256GCM`.
    UnsupportedEnc,
    /// No recipient entry of a sealed message names one of this service's
    /// encryption keys by `kid`.
    NotARecipient,
    /// A sealed message's ephemeral public key (`epk`) is missing, on another
    /// curve than the recipient key, not a point on its curve, or a
    /// small-order X25519 point.
    InvalidEpk,
    /// A sealed message did not decrypt: the content key did not unwrap or
    /// the AES-GCM tag did not verify. Both give this one code, so a sender
    /// cannot tell which step failed.
    DecryptionFailed,
    /// A sealed message's JWE protected header lacks `iss` or `jti`, or they
    /// differ from the signed token's: another service re-signed someone
    /// else's ciphertext.
    SealMismatch,
}

impl Reason {
    /// Every reason, in the order of the verification steps, then the
    /// steps that open a sealed message.
    pub const ALL: [Reason; 24] = [
        Reason::TooLarge,
        Reason::Malformed,
        Reason::WrongType,
        Reason::UnsupportedAlg,
        Reason::UnsupportedHeader,
        Reason::UnknownKey,
        Reason::KeySourceUnavailable,
        Reason::BadSignature,
        Reason::IssuerMismatch,
        Reason::WrongAudience,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::LifetimeTooLong,
        Reason::MissingClaim,
        Reason::BindingMismatch,
        Reason::DigestMismatch,
        Reason::NotAllowed,
        Reason::Replayed,
        Reason::ReplayGuardUnavailable,
        Reason::UnsupportedEnc,
        Reason::NotARecipient,
        Reason::InvalidEpk,
        Reason::DecryptionFailed,
        Reason::SealMismatch,
    ];

    /// The stable code, such as `bad_signature`.
    pub fn code(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::TooLarge => "too_large",
            Reason::WrongType => "wrong_type",
            Reason::UnsupportedAlg => "unsupported_alg",
            Reason::UnsupportedHeader => "unsupported_header",
            Reason::UnknownKey => "unknown_key",
            Reason::KeySourceUnavailable => "key_source_unavailable",
            Reason::BadSignature => "bad_signature",
            Reason::IssuerMismatch => "issuer_mismatch",
            Reason::WrongAudience => "wrong_audience",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::LifetimeTooLong => "lifetime_too_long",
            Reason::MissingClaim => "missing_claim",
            Reason::BindingMismatch => "binding_mismatch",
            Reason::DigestMismatch => "digest_mismatch",
            Reason::NotAllowed => "not_allowed",
            Reason::Replayed => "replayed",
            Reason::ReplayGuardUnavailable => "replay_guard_unavailable",
            Reason::UnsupportedEnc => "unsupported_enc",
            Reason::NotARecipient => "not_a_recipient",
            Reason::InvalidEpk => "invalid_epk",
            Reason::DecryptionFailed => "decryption_failed",
            Reason::SealMismatch => "seal_mismatch",
        }
    }

    /// Whether the rejection is a policy denial rather than a bad token
    /// (HTTP maps it to 403 instead of 401).
    pub fn is_policy_denial(self) -> bool {
        self == Reason::NotAllowed
    }

    /// Whether the sender is not at fault and a retry later may succeed.
    pub fn is_transient(self) -> bool {
        matches!(self, Reason::KeySourceUnavailable | Reason::ReplayGuardUnavailable)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A rejected token: the reason code, a detail for logs and the ids known
/// at the point of rejection.
///
/// Send only [`Reason::code`] to peers; the detail is for your logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    reason: Reason,
    detail: String,
    kid: Option<String>,
    iss: Option<String>,
    jti: Option<String>,
}

impl Rejection {
    pub(crate) fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            kid: None,
            iss: None,
            jti: None,
        }
    }

    pub(crate) fn with_ids(mut self, kid: Option<&str>, iss: Option<&str>, jti: Option<&str>) -> Self {
        self.kid = kid.map(shorten);
        self.iss = iss.map(shorten);
        self.jti = jti.map(shorten);
        self
    }

    /// The reason.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// The stable reason code, such as `bad_signature`.
    pub fn code(&self) -> &'static str {
        self.reason.code()
    }

    /// What exactly failed; may quote (escaped, shortened) token values.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The token's `kid`, if it was read before the rejection.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The token's `iss` (unverified unless the signature was checked).
    pub fn iss(&self) -> Option<&str> {
        self.iss.as_deref()
    }

    /// The token's `jti` (unverified unless the signature was checked).
    pub fn jti(&self) -> Option<&str> {
        self.jti.as_deref()
    }
}

/// Keeps values from unverified tokens short enough for a log line.
fn shorten(value: &str) -> String {
    const MAX: usize = 128;
    if value.len() <= MAX {
        return value.to_owned();
    }
    let mut end = MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &value[..end])
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.code(), self.detail)
    }
}

impl std::error::Error for Rejection {}
