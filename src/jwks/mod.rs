//! JWK Sets: the document model, the route that serves one, the remote cache
//! that fetches one, and the trust store that maps issuers to key sources.

mod remote;
mod route;
mod trust;

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::keys::{EncryptionCurve, EncryptionPublicKey, KeyError, ParsedEncryptionJwk, ParsedJwk, PublicKey};

pub use remote::{RemoteJwks, RemoteJwksBuilder, RemoteJwksConfig, SourceError};
pub use route::{JWKS_MEDIA_TYPE, JWKS_PATH, JwksPublisher};
pub use trust::{KeySource, TrustStore};

/// Maximum number of keys accepted in one JWK Set. Real sets hold a handful
/// (active, next, retired); the limit bounds the work an attacker-served set
/// can cause.
pub const MAX_KEYS: usize = 100;

/// A JWK Set (RFC 7517 section 5) of signature verification keys and
/// public encryption keys.
///
/// Encryption keys are X25519 keys and P-256 keys marked `use: enc` (or with
/// an `alg` of the ECDH-ES family). Every other supported key is a signature
/// key. Parsing is strict: a set with private key members, a small-order
/// Ed25519 or X25519 key, a P-256 point off the curve, a malformed supported
/// key or two signature keys (or two encryption keys) with one `kid` is
/// rejected as a whole. Keys trustwire cannot use (unknown `kty` or `crv`,
/// another encryption `alg`) are skipped and logged at debug level.
#[derive(Debug, Clone, Default)]
pub struct JwkSet {
    keys: Vec<PublicKey>,
    encryption_keys: Vec<EncryptionPublicKey>,
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
    /// Builds a set from signature keys already parsed.
    pub fn from_keys(keys: Vec<PublicKey>) -> Self {
        Self {
            keys,
            encryption_keys: Vec::new(),
        }
    }

    /// Adds public encryption keys to the set, after any it already has.
    /// Senders seal to the first X25519 key, so list the current key first.
    pub fn with_encryption_keys(mut self, keys: Vec<EncryptionPublicKey>) -> Self {
        self.encryption_keys.extend(keys);
        self
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
        let mut encryption_keys = Vec::new();
        let mut kids = HashSet::new();
        let mut encryption_kids = HashSet::new();
        for (index, entry) in entries.iter().enumerate() {
            let Value::Object(jwk) = entry else {
                return Err(JwksError::Key {
                    index,
                    source: KeyError::InvalidJwk("not a JSON object".into()),
                });
            };

            match EncryptionPublicKey::from_jwk(jwk).map_err(|source| JwksError::Key { index, source })? {
                ParsedEncryptionJwk::Encryption(key) => {
                    // A signature key and an encryption key may share a kid,
                    // as RFC 7517 section 4.5 allows across key types, because
                    // each lookup searches one kind only.
                    if !encryption_kids.insert(key.kid().to_owned()) {
                        return Err(JwksError::DuplicateKid(key.kid().to_owned()));
                    }
                    encryption_keys.push(key);
                    continue;
                }
                ParsedEncryptionJwk::Skipped(reason) => {
                    tracing::debug!(index, reason = %reason, "skipped JWK that is not a supported encryption key");
                    continue;
                }
                ParsedEncryptionJwk::NotEncryption => {}
            }

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
        Ok(Self { keys, encryption_keys })
    }

    /// The signature keys in the set.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Finds a signature key by `kid`.
    pub fn find(&self, kid: &str) -> Option<&PublicKey> {
        self.keys.iter().find(|key| key.kid() == kid)
    }

    /// The public encryption keys in the set, in document order.
    pub fn encryption_keys(&self) -> &[EncryptionPublicKey] {
        &self.encryption_keys
    }

    /// Finds an encryption key by `kid`.
    pub fn find_encryption_key(&self, kid: &str) -> Option<&EncryptionPublicKey> {
        self.encryption_keys.iter().find(|key| key.kid() == kid)
    }

    /// The encryption key a sender seals to: the first X25519 key, or the
    /// first P-256 key when the set has no X25519 key.
    pub fn preferred_encryption_key(&self) -> Option<&EncryptionPublicKey> {
        let first_on = |curve| self.encryption_keys.iter().find(|key| key.curve() == curve);
        first_on(EncryptionCurve::X25519).or_else(|| first_on(EncryptionCurve::P256))
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
        let keys = self
            .keys
            .iter()
            .map(PublicKey::to_jwk)
            .chain(self.encryption_keys.iter().map(EncryptionPublicKey::to_jwk))
            .collect();
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

    /// RFC 8037 Appendix A.6: Bob's X25519 public key.
    const X25519_X: &str = "3p7bfXt9wbTTW2HC7OQ1Nz-DQ8hbeGdNrfx-FG-IK08";
    const P256_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const P256_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

    #[test]
    fn parses_encryption_keys() {
        let doc = format!(
            r#"{{"keys":[
                {{"kty":"OKP","crv":"Ed25519","x":"{ED_X}"}},
                {{"kty":"EC","crv":"P-256","x":"{P256_X}","y":"{P256_Y}","use":"enc","kid":"p256-enc"}},
                {{"kty":"OKP","crv":"X25519","x":"{X25519_X}","use":"enc","alg":"ECDH-ES+A256KW"}}
            ]}}"#
        );
        let set = JwkSet::parse(doc.as_bytes()).unwrap();
        assert_eq!(set.keys().len(), 1);
        assert_eq!(set.encryption_keys().len(), 2);
        assert!(set.find_encryption_key("p256-enc").is_some());
        assert!(set.find("p256-enc").is_none());
        let preferred = set.preferred_encryption_key().unwrap();
        assert_eq!(preferred.curve(), EncryptionCurve::X25519);
    }

    #[test]
    fn p256_without_enc_marker_stays_signature_key() {
        let doc = format!(r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"{P256_X}","y":"{P256_Y}","kid":"ec1"}}]}}"#);
        let set = JwkSet::parse(doc.as_bytes()).unwrap();
        assert!(set.find("ec1").is_some());
        assert!(set.encryption_keys().is_empty());
    }

    #[test]
    fn p256_only_set_prefers_p256() {
        let doc = format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"{P256_X}","y":"{P256_Y}","alg":"ECDH-ES+A256KW"}}]}}"#
        );
        let set = JwkSet::parse(doc.as_bytes()).unwrap();
        let preferred = set.preferred_encryption_key().unwrap();
        assert_eq!(preferred.curve(), EncryptionCurve::P256);
    }

    #[test]
    fn encryption_keys_round_trip_through_json() {
        let x25519 = crate::keys::EncryptionKey::generate().unwrap();
        let p256 = crate::keys::EncryptionKey::generate_p256().unwrap();
        let signing = crate::keys::SigningKey::generate().unwrap();
        let set = JwkSet::from_keys(vec![signing.public_key().clone()])
            .with_encryption_keys(vec![x25519.public_key().clone(), p256.public_key().clone()]);

        let parsed = JwkSet::parse(set.to_json().as_bytes()).unwrap();
        assert_eq!(parsed.keys().len(), 1);
        assert_eq!(parsed.encryption_keys().len(), 2);
        assert!(parsed.find_encryption_key(x25519.kid()).is_some());
        assert!(parsed.find_encryption_key(p256.kid()).is_some());
        assert!(parsed.find(signing.kid()).is_some());
    }

    #[test]
    fn small_order_x25519_rejected() {
        for x in [
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "4Ot6fDtBuK4WVuP68Z_EatoJjeucMrH9hmIFFl9JuAA",
        ] {
            let doc = format!(r#"{{"keys":[{{"kty":"OKP","crv":"X25519","x":"{x}","use":"enc"}}]}}"#);
            let err = JwkSet::parse(doc.as_bytes()).unwrap_err();
            assert!(
                matches!(&err, JwksError::Key { source: KeyError::InvalidJwk(reason), .. } if reason.contains("small-order")),
                "{x}: {err:?}"
            );
        }
    }

    #[test]
    fn off_curve_p256_encryption_key_rejected() {
        let doc = format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","use":"enc","x":"{P256_X}","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a4"}}]}}"#
        );
        let err = JwkSet::parse(doc.as_bytes()).unwrap_err();
        assert!(
            matches!(&err, JwksError::Key { source: KeyError::InvalidJwk(reason), .. } if reason.contains("not a point on the curve")),
            "{err:?}"
        );
    }

    #[test]
    fn private_encryption_key_rejected() {
        let doc = format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"X25519","x":"{X25519_X}","d":"XasIfmJKikt54X-Lg4AO5m87sSkmGLb9HC-LJ_-I4Os"}}]}}"#
        );
        let err = JwkSet::parse(doc.as_bytes()).unwrap_err();
        assert!(matches!(
            err,
            JwksError::Key {
                source: KeyError::PrivateMaterial { member: "d" },
                ..
            }
        ));
    }

    #[test]
    fn other_encryption_algs_skipped() {
        let doc = format!(
            r#"{{"keys":[
                {{"kty":"OKP","crv":"X25519","x":"{X25519_X}","alg":"ECDH-ES"}},
                {{"kty":"OKP","crv":"X25519","x":"{X25519_X}","use":"sig"}},
                {{"kty":"OKP","crv":"X25519","x":"{X25519_X}","key_ops":["sign"]}},
                {{"kty":"EC","crv":"P-256","x":"{P256_X}","y":"{P256_Y}","alg":"ECDH-ES+A128KW"}}
            ]}}"#
        );
        let set = JwkSet::parse(doc.as_bytes()).unwrap();
        assert!(set.encryption_keys().is_empty());
        assert!(set.keys().is_empty());
    }

    #[test]
    fn duplicate_encryption_kid_rejected() {
        let doc = format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"X25519","x":"{X25519_X}"}},{{"kty":"OKP","crv":"X25519","x":"{X25519_X}"}}]}}"#
        );
        assert!(matches!(JwkSet::parse(doc.as_bytes()), Err(JwksError::DuplicateKid(_))));
    }

    #[test]
    fn signature_and_encryption_keys_may_share_kid() {
        let doc = format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{ED_X}","kid":"k1"}},{{"kty":"OKP","crv":"X25519","x":"{X25519_X}","kid":"k1"}}]}}"#
        );
        let set = JwkSet::parse(doc.as_bytes()).unwrap();
        assert!(set.find("k1").is_some());
        assert!(set.find_encryption_key("k1").is_some());
    }

    #[test]
    fn not_a_set_rejected() {
        assert!(matches!(JwkSet::parse(b"{}"), Err(JwksError::Invalid(_))));
        assert!(matches!(JwkSet::parse(b"[]"), Err(JwksError::Invalid(_))));
        assert!(matches!(JwkSet::parse(br#"{"keys":{}}"#), Err(JwksError::Invalid(_))));
    }
}
