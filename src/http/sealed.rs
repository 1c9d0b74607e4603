//! The headers of a sealed request body, shared by the sealing client and
//! the opening layer.
//!
//! A sealed request carries the JWE as its body, `Trustwire-Sealed: 1`, and
//! `Content-Type: application/jose` (one recipient, compact serialization)
//! or `application/jose+json` (several, JSON serialization), the media types
//! of RFC 7516 section 9. The caller's own `Content-Type` travels, not
//! encrypted, in `Trustwire-Sealed-Content-Type`, and the opening layer puts
//! it back before the handler runs.

use http::HeaderMap;

/// The header that marks a sealed request body (`Trustwire-Sealed`; HTTP
/// header names are case-insensitive). Its value is `1`; the layers treat
/// any request with the header as sealed.
pub const SEALED_HEADER: &str = "trustwire-sealed";

/// The header that carries the `Content-Type` of the plaintext.
pub const SEALED_CONTENT_TYPE_HEADER: &str = "trustwire-sealed-content-type";

/// `Content-Type` of a body sealed to one recipient (JWE compact serialization).
pub const JOSE_CONTENT_TYPE: &str = "application/jose";

/// `Content-Type` of a body sealed to several recipients (JWE JSON serialization).
pub const JOSE_JSON_CONTENT_TYPE: &str = "application/jose+json";

/// Returns whether a request carries the sealed marker.
pub(crate) fn is_sealed(headers: &HeaderMap) -> bool {
    headers.contains_key(SEALED_HEADER)
}
