//! What a token is bound to: a message channel or an HTTP request, and the
//! digest of the payload.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::encoding::b64_encode;

/// Maximum length of a channel or HTTP target, in bytes.
pub const MAX_BINDING_LEN: usize = 4096;

/// The channel or HTTP request a token is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Binding {
    /// A message channel, carried in `chn`: `nats:<subject>` or
    /// `amqp:<exchange>/<routing key>`.
    Channel(String),
    /// An HTTP request, carried in `htm` (method) and `htu` (path with the
    /// canonical query).
    Http {
        /// The request method, such as `POST`.
        method: String,
        /// The path and canonical query, such as `/v1/charges?currency=EUR`.
        target: String,
    },
}

/// Why a channel or HTTP target is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid binding {value:?}: {reason}")]
pub struct InvalidBinding {
    value: String,
    reason: &'static str,
}

impl InvalidBinding {
    fn new(value: &str, reason: &'static str) -> Self {
        Self {
            value: value.chars().take(80).collect(),
            reason,
        }
    }
}

impl Binding {
    /// A message channel such as `nats:orders.created`.
    pub fn channel(channel: impl Into<String>) -> Result<Self, InvalidBinding> {
        let channel = channel.into();
        if channel.is_empty() {
            return Err(InvalidBinding::new(&channel, "the channel is empty"));
        }
        if channel.len() > MAX_BINDING_LEN {
            return Err(InvalidBinding::new(&channel, "the channel is longer than 4096 bytes"));
        }
        if channel.chars().any(char::is_control) {
            return Err(InvalidBinding::new(&channel, "the channel contains control characters"));
        }
        Ok(Self::Channel(channel))
    }

    /// An HTTP request: `method` and the request target (path and optional
    /// query), which is canonicalised with [`canonical_target`].
    pub fn http(method: &str, path_and_query: &str) -> Result<Self, InvalidBinding> {
        let method_ok = !method.is_empty()
            && method.len() <= 32
            && method
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !method_ok {
            return Err(InvalidBinding::new(method, "the method is not an HTTP token"));
        }
        let target = canonical_target(path_and_query)?;
        Ok(Self::Http {
            method: method.to_owned(),
            target,
        })
    }

    /// Parses the CLI form `"METHOD /path?query"`.
    pub fn parse_http(request_line: &str) -> Result<Self, InvalidBinding> {
        let Some((method, target)) = request_line.trim().split_once(' ') else {
            return Err(InvalidBinding::new(request_line, "expected \"METHOD /path?query\""));
        };
        Self::http(method, target.trim())
    }
}

impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Binding::Channel(channel) => f.write_str(channel),
            Binding::Http { method, target } => write!(f, "{method} {target}"),
        }
    }
}

/// The `dig` claim of a payload: unpadded base64url of its SHA-256.
pub fn payload_digest(payload: &[u8]) -> String {
    b64_encode(&Sha256::digest(payload))
}

/// Canonicalises an HTTP request target (path and optional query) so that
/// signer and verifier compute the same `htu` even when a proxy re-encodes
/// the URL.
///
/// - The target must start with `/`; a fragment (`#...`) is not allowed.
/// - Each path segment and each query name and value is percent-decoded and
///   re-encoded: unreserved characters (RFC 3986 `ALPHA DIGIT - . _ ~`)
///   literally, every other byte as `%XX` with uppercase hex. `/` between
///   segments stays literal and `%2F` inside a segment stays encoded. A `%`
///   not followed by two hex digits is taken literally and becomes `%25`.
/// - Query parameters are split on `&`, empty ones dropped, each split on the
///   first `=` (a parameter without `=` keeps none), and sorted by name, then
///   value. `+` is not treated as a space: it becomes `%2B`.
/// - An empty query is dropped with its `?`.
///
/// ```
/// use trustwire::envelope::canonical_target;
///
/// assert_eq!(canonical_target("/v1/charges?b=2&a=%7e1").unwrap(), "/v1/charges?a=~1&b=2");
/// ```
pub fn canonical_target(target: &str) -> Result<String, InvalidBinding> {
    if !target.starts_with('/') {
        return Err(InvalidBinding::new(target, "the request target must start with '/'"));
    }
    if target.len() > MAX_BINDING_LEN {
        return Err(InvalidBinding::new(
            target,
            "the request target is longer than 4096 bytes",
        ));
    }
    if target.contains('#') {
        return Err(InvalidBinding::new(
            target,
            "the request target may not contain a fragment",
        ));
    }
    if target.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(InvalidBinding::new(
            target,
            "the request target contains spaces or control characters",
        ));
    }

    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };

    let mut canonical = path.split('/').map(normalize_component).collect::<Vec<_>>().join("/");

    let mut params: Vec<(String, Option<String>)> = query
        .unwrap_or("")
        .split('&')
        .filter(|param| !param.is_empty())
        .map(|param| match param.split_once('=') {
            Some((name, value)) => (normalize_component(name), Some(normalize_component(value))),
            None => (normalize_component(param), None),
        })
        .collect();
    params.sort();

    if !params.is_empty() {
        canonical.push('?');
        let joined: Vec<String> = params
            .into_iter()
            .map(|(name, value)| match value {
                Some(value) => format!("{name}={value}"),
                None => name,
            })
            .collect();
        canonical.push_str(&joined.join("&"));
    }
    Ok(canonical)
}

fn normalize_component(component: &str) -> String {
    let bytes = component.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(high), Some(low)) = (hex_value(bytes[i + 1]), hex_value(bytes[i + 2]))
        {
            decoded.push(high << 4 | low);
            i += 3;
            continue;
        }
        decoded.push(bytes[i]);
        i += 1;
    }

    let mut encoded = String::with_capacity(decoded.len());
    for byte in decoded {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_sorted_and_normalized() {
        assert_eq!(canonical_target("/a?z=1&a=2&m").unwrap(), "/a?a=2&m&z=1");
        assert_eq!(canonical_target("/a?x=%7e&y=%2f").unwrap(), "/a?x=~&y=%2F");
        assert_eq!(canonical_target("/a?x=a+b").unwrap(), "/a?x=a%2Bb");
        assert_eq!(canonical_target("/a?").unwrap(), "/a");
        assert_eq!(canonical_target("/a?&&").unwrap(), "/a");
        assert_eq!(canonical_target("/a?k=v=w").unwrap(), "/a?k=v%3Dw");
    }

    #[test]
    fn path_normalized_but_slashes_kept() {
        assert_eq!(canonical_target("/v1/%7euser/a%2Fb").unwrap(), "/v1/~user/a%2Fb");
        assert_eq!(canonical_target("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(canonical_target("/café").unwrap(), "/caf%C3%A9");
        assert_eq!(canonical_target("/100%").unwrap(), "/100%25");
        assert_eq!(canonical_target("/a%4").unwrap(), "/a%254");
    }

    #[test]
    fn invalid_targets_rejected() {
        for target in ["", "v1", "/a#b", "/a b", "/a\r\nb"] {
            assert!(canonical_target(target).is_err(), "{target:?}");
        }
    }

    #[test]
    fn repeated_params_kept_in_order() {
        assert_eq!(canonical_target("/a?x=2&x=1").unwrap(), "/a?x=1&x=2");
    }

    #[test]
    fn http_binding_parses_request_line() {
        let binding = Binding::parse_http("POST /v1/charges?currency=EUR").unwrap();
        assert_eq!(
            binding,
            Binding::Http {
                method: "POST".into(),
                target: "/v1/charges?currency=EUR".into()
            }
        );
        assert!(Binding::parse_http("POST").is_err());
        assert!(Binding::parse_http("PO ST /x").is_err());
    }

    #[test]
    fn digest_of_empty_payload() {
        assert_eq!(payload_digest(b""), "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU");
    }
}
