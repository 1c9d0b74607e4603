//! Service identities: plain service names and SPIFFE IDs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Maximum length of a plain service name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Maximum length of a SPIFFE ID, in bytes (the SPIFFE ID specification's limit).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Maximum length of a SPIFFE trust domain name, in bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// The identity of a service: the `iss` of the tokens it signs and the `aud`
/// of the tokens sent to it.
///
/// Two forms are accepted:
///
/// - a plain name such as `orders` or `billing.eu-west`: 1 to 128 bytes of
///   lowercase ASCII letters, digits, `-`, `_` and `.`, starting and ending with
///   a letter or digit;
/// - a SPIFFE ID such as `spiffe://example.org/ns/prod/sa/orders`, validated
///   by the rules of the SPIFFE ID specification (lowercase trust domain, a
///   non-empty path of `[A-Za-z0-9._-]` segments, no `.` or `..` segments, no
///   query, fragment, port or user info).
///
/// Names are case-sensitive and never normalised, so `Orders` is rejected
/// instead of being quietly taken for `orders`.
///
/// ```
/// use trustwire::ServiceId;
///
/// let plain: ServiceId = "orders".parse()?;
/// let spiffe: ServiceId = "spiffe://example.org/ns/prod/sa/payments".parse()?;
/// assert!(spiffe.is_spiffe());
/// assert!("Orders".parse::<ServiceId>().is_err());
/// # Ok::<(), trustwire::InvalidServiceId>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(String);

/// Error returned when a string is not a valid [`ServiceId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid service id {value:?}: {reason}")]
pub struct InvalidServiceId {
    value: String,
    reason: &'static str,
}

impl InvalidServiceId {
    fn new(value: &str, reason: &'static str) -> Self {
        // Keep the echoed value short: it may come from an attacker's token.
        let value: String = value.chars().take(80).collect();
        Self { value, reason }
    }

    /// The reason the value was rejected.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl ServiceId {
    /// Parses and validates a service id.
    pub fn new(value: &str) -> Result<Self, InvalidServiceId> {
        if value.starts_with("spiffe://") {
            validate_spiffe_id(value)?;
        } else if value.contains("://") || value.starts_with("spiffe:") {
            return Err(InvalidServiceId::new(
                value,
                "only plain names and spiffe:// ids are supported",
            ));
        } else {
            validate_plain_name(value)?;
        }
        Ok(Self(value.to_owned()))
    }

    /// The id as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this id is a SPIFFE ID.
    pub fn is_spiffe(&self) -> bool {
        self.0.starts_with("spiffe://")
    }
}

fn validate_plain_name(value: &str) -> Result<(), InvalidServiceId> {
    if value.is_empty() {
        return Err(InvalidServiceId::new(value, "the name is empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(InvalidServiceId::new(value, "the name is longer than 128 bytes"));
    }

    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b);
    if !value.bytes().all(allowed) {
        return Err(InvalidServiceId::new(
            value,
            "a name may contain only lowercase ASCII letters, digits, '-', '_' and '.'",
        ));
    }

    let bytes = value.as_bytes();
    let edge_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !edge_ok(bytes[0]) || !edge_ok(bytes[bytes.len() - 1]) {
        return Err(InvalidServiceId::new(
            value,
            "a name must start and end with a lowercase letter or a digit",
        ));
    }
    Ok(())
}

fn validate_spiffe_id(value: &str) -> Result<(), InvalidServiceId> {
    if value.len() > MAX_SPIFFE_ID_LEN {
        return Err(InvalidServiceId::new(value, "the SPIFFE ID is longer than 2048 bytes"));
    }

    let rest = &value["spiffe://".len()..];
    let (trust_domain, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, ""),
    };

    if trust_domain.is_empty() {
        return Err(InvalidServiceId::new(value, "the SPIFFE trust domain is empty"));
    }
    if trust_domain.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(InvalidServiceId::new(
            value,
            "the SPIFFE trust domain is longer than 255 bytes",
        ));
    }
    let domain_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b);
    if !trust_domain.bytes().all(domain_ok) {
        return Err(InvalidServiceId::new(
            value,
            "a SPIFFE trust domain may contain only lowercase ASCII letters, digits, '-', '_' and '.' (no port, user info, query or fragment)",
        ));
    }

    if path.is_empty() {
        return Err(InvalidServiceId::new(
            value,
            "a SPIFFE ID for a service needs a path after the trust domain",
        ));
    }
    for segment in path[1..].split('/') {
        if segment.is_empty() {
            return Err(InvalidServiceId::new(
                value,
                "a SPIFFE ID path has an empty segment or a trailing '/'",
            ));
        }
        if segment == "." || segment == ".." {
            return Err(InvalidServiceId::new(
                value,
                "a SPIFFE ID path may not contain '.' or '..' segments",
            ));
        }
        let segment_ok = |b: u8| b.is_ascii_alphanumeric() || b"-_.".contains(&b);
        if !segment.bytes().all(segment_ok) {
            return Err(InvalidServiceId::new(
                value,
                "a SPIFFE ID path segment may contain only ASCII letters, digits, '-', '_' and '.'",
            ));
        }
    }
    Ok(())
}

impl FromStr for ServiceId {
    type Err = InvalidServiceId;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::new(value)
    }
}

impl TryFrom<&str> for ServiceId {
    type Error = InvalidServiceId;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceId({:?})", self.0)
    }
}

impl AsRef<str> for ServiceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// Hash, Eq and Ord are derived from the inner string, so looking a
// ServiceId up by &str in a map is consistent.
impl std::borrow::Borrow<str> for ServiceId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Serialize for ServiceId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ServiceId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        Self::new(&value).map_err(serde::de::Error::custom)
    }
}

/// The receiving service or services of a token (the `aud` claim).
///
/// Serialised as a single string when there is one recipient and as an array
/// otherwise, as RFC 7519 allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience(Vec<ServiceId>);

impl Audience {
    /// An audience of one service.
    pub fn one(service: ServiceId) -> Self {
        Self(vec![service])
    }

    /// An audience of several services; `None` when `services` is empty.
    pub fn many(services: Vec<ServiceId>) -> Option<Self> {
        if services.is_empty() {
            return None;
        }
        Some(Self(services))
    }

    /// The services in this audience.
    pub fn services(&self) -> &[ServiceId] {
        &self.0
    }

    /// Whether `service` is one of the recipients.
    pub fn contains(&self, service: &ServiceId) -> bool {
        self.0.iter().any(|member| member == service)
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        if self.0.len() == 1 {
            serde_json::Value::String(self.0[0].to_string())
        } else {
            serde_json::Value::Array(
                self.0
                    .iter()
                    .map(|s| serde_json::Value::String(s.to_string()))
                    .collect(),
            )
        }
    }
}

impl From<ServiceId> for Audience {
    fn from(service: ServiceId) -> Self {
        Self::one(service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_accepted() {
        for name in ["orders", "a", "billing.eu-west", "svc_1", "0day"] {
            assert!(ServiceId::new(name).is_ok(), "{name} should be valid");
        }
    }

    #[test]
    fn plain_names_rejected() {
        let long = "a".repeat(129);
        for name in [
            "",
            "Orders",
            "-orders",
            "orders-",
            "ord ers",
            "orders\n",
            "ördérs",
            long.as_str(),
            "http://x",
        ] {
            assert!(ServiceId::new(name).is_err(), "{name:?} should be invalid");
        }
    }

    #[test]
    fn spiffe_ids_accepted() {
        for id in ["spiffe://example.org/orders", "spiffe://td/ns/prod/sa/Orders_1.v2"] {
            assert!(ServiceId::new(id).is_ok(), "{id} should be valid");
        }
    }

    #[test]
    fn spiffe_ids_rejected() {
        for id in [
            "spiffe://",
            "spiffe://example.org",
            "spiffe://example.org/",
            "spiffe://Example.org/x",
            "spiffe://example.org:8080/x",
            "spiffe://user@example.org/x",
            "spiffe://example.org/a//b",
            "spiffe://example.org/a/../b",
            "spiffe://example.org/a/./b",
            "spiffe://example.org/a?b",
            "spiffe://example.org/a#b",
            "spiffe:example.org/a",
        ] {
            assert!(ServiceId::new(id).is_err(), "{id:?} should be invalid");
        }
    }

    #[test]
    fn error_names_value_and_reason() {
        let err = ServiceId::new("Orders").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid service id \"Orders\": a name may contain only lowercase ASCII letters, digits, '-', '_' and '.'"
        );
    }

    #[test]
    fn audience_json_forms() {
        let one = Audience::one(ServiceId::new("a").unwrap());
        assert_eq!(one.to_json(), serde_json::json!("a"));
        let two = Audience::many(vec![ServiceId::new("a").unwrap(), ServiceId::new("b").unwrap()]).unwrap();
        assert_eq!(two.to_json(), serde_json::json!(["a", "b"]));
        assert!(Audience::many(vec![]).is_none());
    }
}
