//! API keys, stored only as SHA-256 hashes.
//!
//! The keys file is TOML with one entry per key:
//!
//! ```toml
//! [[key]]
//! consumer = "acme-mobile"
//! sha256 = "5f0c…"   # 64 hex digits: SHA-256 of the key's UTF-8 bytes
//! ```
//!
//! An unsalted fast hash is enough only because the keys are random: the
//! keys that [`generate_api_key`] makes carry 256 bits, so guessing one
//! from its hash is infeasible. Keys that people choose need a slow, salted hash
//! instead, and this file format does not support them.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::encoding::b64_encode;

/// Maximum length of an API key, in bytes; longer keys are rejected unhashed.
pub const MAX_API_KEY_LEN: usize = 512;

/// Maximum length of a consumer name, in bytes. The name becomes the
/// internal token's `sub`.
pub const MAX_CONSUMER_LEN: usize = 256;

/// The API keys a gateway accepts, as SHA-256 hashes with their consumers.
#[derive(Clone, Default)]
pub struct ApiKeys {
    entries: Vec<Entry>,
}

#[derive(Clone)]
struct Entry {
    consumer: String,
    hash: [u8; 32],
}

/// Why a keys file was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiKeysError {
    /// The file could not be read.
    #[error("cannot read the API keys file {path}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The file is not valid TOML of the expected shape.
    #[error("invalid API keys file: {0}")]
    Invalid(String),

    /// An entry is invalid.
    #[error("API key entry #{index} is invalid: {reason}")]
    Entry {
        /// Position of the entry in the file, from 0.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },

    /// The operating system's random number generator failed.
    #[error("random number generator failed: {0}")]
    Random(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    key: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    consumer: String,
    sha256: String,
}

impl ApiKeys {
    /// Parses a keys file's text.
    pub fn parse(text: &str) -> Result<Self, ApiKeysError> {
        let file: KeysFile = toml::from_str(text).map_err(|err| ApiKeysError::Invalid(err.to_string()))?;
        let mut keys = Self::default();
        for (index, entry) in file.key.into_iter().enumerate() {
            let fail = |reason: String| ApiKeysError::Entry { index, reason };
            let hash =
                decode_hex_32(&entry.sha256).ok_or_else(|| fail("sha256 must be 64 hexadecimal digits".to_owned()))?;
            keys = keys.with_hash(&entry.consumer, hash).map_err(fail)?;
        }
        Ok(keys)
    }

    /// Reads and parses a keys file.
    pub fn load(path: &Path) -> Result<Self, ApiKeysError> {
        let text = std::fs::read_to_string(path).map_err(|source| ApiKeysError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Adds the key whose SHA-256 is `hash`, for `consumer`.
    fn with_hash(mut self, consumer: &str, hash: [u8; 32]) -> Result<Self, String> {
        check_consumer(consumer)?;
        if self.entries.iter().any(|entry| entry.hash == hash) {
            return Err(format!("the key of consumer {consumer:?} is listed twice"));
        }
        self.entries.push(Entry {
            consumer: consumer.to_owned(),
            hash,
        });
        Ok(self)
    }

    /// Adds `key` for `consumer`, hashing it; for tests and programs that
    /// hold keys in memory.
    pub fn with_key(self, consumer: &str, key: &str) -> Result<Self, ApiKeysError> {
        let index = self.entries.len();
        self.with_hash(consumer, Sha256::digest(key.as_bytes()).into())
            .map_err(|reason| ApiKeysError::Entry { index, reason })
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Returns the consumer whose key is `presented`, comparing its hash
    /// with every stored hash in constant time.
    pub fn authenticate(&self, presented: &str) -> Option<&str> {
        if presented.is_empty() || presented.len() > MAX_API_KEY_LEN {
            return None;
        }
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();

        // Every entry is compared, so the time taken does not depend on
        // where, or whether, the key is found.
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.hash.ct_eq(&hash)) {
                found = Some(entry.consumer.as_str());
            }
        }
        found
    }
}

/// A new API key and the line that stores its hash.
#[derive(Clone)]
#[non_exhaustive]
pub struct GeneratedKey {
    /// The key to hand to the consumer: `twk_` and 43 base64url characters
    /// (256 random bits). It is shown once and never stored.
    pub key: Zeroizing<String>,
    /// The keys-file entry for it.
    pub entry: String,
}

impl fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("key", &"<redacted>")
            .field("entry", &self.entry)
            .finish()
    }
}

/// Generates a random API key for `consumer` and its keys-file entry.
pub fn generate_api_key(consumer: &str) -> Result<GeneratedKey, ApiKeysError> {
    check_consumer(consumer).map_err(|reason| ApiKeysError::Entry { index: 0, reason })?;
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(bytes.as_mut()).map_err(|err| ApiKeysError::Random(err.to_string()))?;
    let key = Zeroizing::new(format!("twk_{}", b64_encode(bytes.as_ref())));
    let entry = key_entry(consumer, &key);
    Ok(GeneratedKey { key, entry })
}

/// The keys-file entry (a `[[key]]` table) for `key`.
pub fn key_entry(consumer: &str, key: &str) -> String {
    let hash = encode_hex(&Sha256::digest(key.as_bytes()));
    // The Debug form of a str is a valid TOML basic string for printable text.
    format!("[[key]]\nconsumer = {consumer:?}\nsha256 = \"{hash}\"\n")
}

fn check_consumer(consumer: &str) -> Result<(), String> {
    if consumer.is_empty() || consumer.len() > MAX_CONSUMER_LEN {
        return Err(format!("the consumer name must be 1 to {MAX_CONSUMER_LEN} bytes"));
    }
    if consumer.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
        return Err("the consumer name may not contain control characters, '\"' or '\\'".to_owned());
    }
    Ok(())
}

fn decode_hex_32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (index, pair) in bytes.chunks_exact(2).enumerate() {
        let high = (pair[0] as char).to_digit(16)?;
        let low = (pair[1] as char).to_digit(16)?;
        out[index] = u8::try_from(high << 4 | low).ok()?;
    }
    Some(out)
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let consumers: Vec<&str> = self.entries.iter().map(|entry| entry.consumer.as_str()).collect();
        f.debug_struct("ApiKeys").field("consumers", &consumers).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_hash_authenticates() {
        let keys = ApiKeys::parse(&key_entry("acme", "secret-key-1")).unwrap();
        assert_eq!(keys.authenticate("secret-key-1"), Some("acme"));
    }

    #[test]
    fn wrong_key_rejected() {
        let keys = ApiKeys::parse(&key_entry("acme", "secret-key-1")).unwrap();
        assert_eq!(keys.authenticate("secret-key-2"), None);
        assert_eq!(keys.authenticate(""), None);
    }

    #[test]
    fn overlong_key_rejected() {
        let long = "k".repeat(MAX_API_KEY_LEN + 1);
        let keys = ApiKeys::default().with_key("acme", &long).unwrap();
        assert_eq!(keys.authenticate(&long), None);
    }

    #[test]
    fn generated_key_matches_entry() {
        let generated = generate_api_key("acme").unwrap();
        assert!(generated.key.starts_with("twk_"));
        assert_eq!(generated.key.len(), 4 + 43);
        let keys = ApiKeys::parse(&generated.entry).unwrap();
        assert_eq!(keys.authenticate(&generated.key), Some("acme"));
    }

    #[test]
    fn invalid_entries_rejected() {
        let short_hash = "[[key]]\nconsumer = \"a\"\nsha256 = \"abcd\"\n";
        assert!(matches!(
            ApiKeys::parse(short_hash),
            Err(ApiKeysError::Entry { index: 0, .. })
        ));

        let twice = format!("{}{}", key_entry("a", "k"), key_entry("b", "k"));
        assert!(matches!(
            ApiKeys::parse(&twice),
            Err(ApiKeysError::Entry { index: 1, .. })
        ));

        let unknown_field = "[[key]]\nconsumer = \"a\"\nkey = \"plain\"\n";
        assert!(matches!(ApiKeys::parse(unknown_field), Err(ApiKeysError::Invalid(_))));
    }

    #[test]
    fn debug_shows_no_hashes() {
        let keys = ApiKeys::parse(&key_entry("acme", "secret-key-1")).unwrap();
        let shown = format!("{keys:?}");
        assert!(shown.contains("acme"));
        assert!(!shown.contains(&encode_hex(&Sha256::digest(b"secret-key-1"))));
    }
}
