//! JWK Sets: the document model, the route that serves one, the remote cache
//! that fetches one, and the trust store that maps issuers to key sources.

mod remote;
mod route;
mod trust;

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::keys::{KeyError, ParsedJwk, PublicKey};

pub use remote::{RemoteJwks, RemoteJwksBuilder, RemoteJwksConfig, SourceError};
pub use route::{JWKS_MEDIA_TYPE, JWKS_PATH, JwksPublisher};
pub use trust::{KeySource, TrustStore};

/// Maximum number of keys accepted in one JWK Set. Real sets hold a handful
/// (active, next, retired); the limit bounds the work an attacker-served set
/// can cause.
pub const MAX_KEYS: usize = 100;

/// A JWK Set (RFC 7517 section 5) of signature verification keys.
///
/// Parsing is strict: a set with private key members, a small-order Ed25519
/// key, a malformed supported key or two keys with one `kid` is rejected as a
/// whole. Keys of a type trustwire does not verify with (unknown `kty` or
/// `crv`, `use: enc`) are skipped and logged at debug level.
#[derive(Debug, Clone, Default)]
pub struct JwkSet {
    keys: Vec<PublicKey>,
}

/// Why a JWK Set was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The document is not strict JSON or not a JWK Set object.
    #[error("invalid JWK Set: {0}")]
    Invalid(String),

    /// The set has more than [`MAX_KEYS`] keys.
    #[error("JWK Set has {0} keys, more than the limit of {MAX_KEYS}")]
    TooManyKeys(usize),

    /// Two keys share a `kid`.
    #[error("JWK Set has two keys with kid {0:?}")]
    DuplicateKid(String),

    /// A key in the set is invalid, weak or private.
    #[error("JWK Set key #{index} rejected")]
    Key {
        /// Position of the key in `keys`.
        index: usize,
        /// Why the key was rejected.
        #[source]
        source: KeyError,
    },
}

impl JwkSet {
    /// Builds a set from keys already parsed.
    pub fn from_keys(keys: Vec<PublicKey>) -> Self {
        Self { keys }
    }

    /// Parses a JWK Set document.
    pub fn parse(bytes: &[u8]) -> Result<Self, JwksError> {
        let document = crate::encoding::parse_object(bytes).map_err(|err| JwksError::Invalid(err.0))?;
        let Some(Value::Array(entries)) = document.get("keys") else {
            return Err(JwksError::Invalid("missing \"keys\" array".into()));
        };
        if entries.len() > MAX_KEYS {
            return Err(JwksError::TooManyKeys(entries.len()));
        }

        let mut keys = Vec::with_capacity(entries.len());
        let mut kids = HashSet::new();
        for (index, entry) in entries.iter().enumerate() {
            let Value::Object(jwk) = entry else {
                return Err(JwksError::Key {
                    index,
                    source: KeyError::InvalidJwk("not a JSON object".into()),
                });
            };
            match PublicKey::from_jwk(jwk).map_err(|source| JwksError::Key { index, source })? {
                ParsedJwk::Signing(key) => {
                    if !kids.insert(key.kid().to_owned()) {
                        return Err(JwksError::DuplicateKid(key.kid().to_owned()));
                    }
                    keys.push(key);
                }
                ParsedJwk::Skipped(reason) => {
                    tracing::debug!(index, reason = %reason, "skipped JWK that is not a supported signature key");
                }
            }
        }
        Ok(Self { keys })
    }

    /// The signature keys in the set.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Finds a key by `kid`.
    pub fn find(&self, kid: &str) -> Option<&PublicKey> {
        self.keys.iter().find(|key| key.kid() == kid)
    }

    /// Serialises the set as compact JSON.
    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }

    /// Serialises the set as indented JSON.
    pub fn to_json_pretty(&self) -> String {
        let mut text = serde_json::to_string_pretty(&self.to_value()).unwrap_or_default();
        text.push('\n');
        text
    }

    fn to_value(&self) -> Value {
        let keys = self.keys.iter().map(PublicKey::to_jwk).collect();
        let mut document = Map::new();
        document.insert("keys".into(), Value::Array(keys));
        Value::Object(document)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    #[test]
    fn parses_ed25519_and_p256() {
        let doc = format!(
            r#"{{"keys":[
                {{"kty":"OKP","crv":"Ed25519","x":"{ED_X}"}},
                {{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"ec1"}}
            ]}}"#
        );
        let set = JwkSet::parse(doc.as_bytes()).unwrap();
        assert_eq!(set.keys().len(), 2);
        assert!(set.find("ec1").is_some());
    }

    #[test]
    fn unknown_types_skipped() {
        let doc = format!(
            r#"{{"keys":[
                {{"kty":"RSA","n":"AQAB","e":"AQAB"}},
                {{"kty":"OKP","crv":"X25519","x":"{ED_X}"}},
                {{"kty":"OKP","crv":"Ed25519","x":"{ED_X}","use":"enc"}},
                {{"kty":"OKP","crv":"Ed25519","x":"{ED_X}"}}
            ]}}"#
        );
        let set = JwkSet::parse(doc.as_bytes()).unwrap();
        assert_eq!(set.keys().len(), 1);
    }

    #[test]
    fn private_members_rejected() {
        let doc = format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{ED_X}","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"}}]}}"#
        );
        let err = JwkSet::parse(doc.as_bytes()).unwrap_err();
        assert!(
            matches!(
                err,
                JwksError::Key {
                    source: KeyError::PrivateMaterial { member: "d" },
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn symmetric_key_rejected() {
        let err = JwkSet::parse(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).unwrap_err();
        assert!(matches!(
            err,
            JwksError::Key {
                source: KeyError::PrivateMaterial { member: "k" },
                ..
            }
        ));
    }

    #[test]
    fn weak_ed25519_keys_rejected() {
        for x in [
            "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            let doc = format!(r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{x}"}}]}}"#);
            let err = JwkSet::parse(doc.as_bytes()).unwrap_err();
            assert!(
                matches!(
                    err,
                    JwksError::Key {
                        source: KeyError::WeakKey,
                        ..
                    }
                ),
                "{x}: {err:?}"
            );
        }
    }

    #[test]
    fn off_curve_p256_rejected() {
        let doc = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a4"}]}"#;
        assert!(matches!(JwkSet::parse(doc.as_bytes()), Err(JwksError::Key { .. })));
    }

    #[test]
    fn duplicate_kid_rejected() {
        let doc = format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{ED_X}"}},{{"kty":"OKP","crv":"Ed25519","x":"{ED_X}"}}]}}"#
        );
        assert!(matches!(JwkSet::parse(doc.as_bytes()), Err(JwksError::DuplicateKid(_))));
    }

    #[test]
    fn too_many_keys_rejected() {
        let one = r#"{"kty":"RSA"}"#;
        let doc = format!(r#"{{"keys":[{}]}}"#, vec![one; MAX_KEYS + 1].join(","));
        assert!(matches!(
            JwkSet::parse(doc.as_bytes()),
            Err(JwksError::TooManyKeys(101))
        ));
    }

    #[test]
    fn not_a_set_rejected() {
        assert!(matches!(JwkSet::parse(b"{}"), Err(JwksError::Invalid(_))));
        assert!(matches!(JwkSet::parse(b"[]"), Err(JwksError::Invalid(_))));
        assert!(matches!(JwkSet::parse(br#"{"keys":{}}"#), Err(JwksError::Invalid(_))));
    }
}
