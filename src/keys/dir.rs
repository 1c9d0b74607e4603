//! The key directory: a service's private keys, their states and its public JWKS.
//!
//! Layout:
//!
//! ```text
//! DIR/keys.json     manifest: service id and each key's kid, state and times
//! DIR/<kid>.jwk     private JWK, mode 0600
//! DIR/jwks.json     public JWK Set served to verifiers
//! ```

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{KeyError, SigningKey};
use crate::identity::ServiceId;
use crate::jwks::JwkSet;

const MANIFEST: &str = "keys.json";
const JWKS_FILE: &str = "jwks.json";

/// The lifecycle state of a key in a key directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum KeyState {
    /// Published in the JWKS but not yet signing.
    Next,
    /// Signing and published.
    Active,
    /// No longer signing; published until the last token it signed expires.
    Retired,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    service: ServiceId,
    keys: Vec<ManifestEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ManifestEntry {
    kid: String,
    state: KeyState,
    /// Unix time in seconds.
    created_at: u64,
}

/// A service's key directory, opened and checked.
#[derive(Debug)]
pub struct KeyDir {
    path: PathBuf,
    service: ServiceId,
    active: SigningKey,
    published: Vec<SigningKey>,
}

impl KeyDir {
    /// Creates a key directory for `service` with one new active Ed25519 key,
    /// and writes the private key (mode 0600), the manifest and `jwks.json`.
    ///
    /// Fails if `dir` already holds a key directory, so keys are never
    /// overwritten by accident.
    pub fn create(dir: &Path, service: ServiceId) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;

        if dir.join(MANIFEST).exists() {
            return Err(KeyError::InvalidKeyDir {
                path: dir.to_owned(),
                reason: format!(
                    "it already contains {MANIFEST}; choose an empty directory or remove the old keys first"
                ),
            });
        }

        let key = SigningKey::generate()?;
        let key_path = dir.join(format!("{}.jwk", key.kid()));
        write_file(&key_path, key.to_private_jwk().as_bytes(), 0o600)?;

        let manifest = Manifest {
            service: service.clone(),
            keys: vec![ManifestEntry {
                kid: key.kid().to_owned(),
                state: KeyState::Active,
                created_at: unix_now(),
            }],
        };
        let manifest_text = serde_json::to_vec_pretty(&manifest).map_err(|err| KeyError::InvalidKeyDir {
            path: dir.to_owned(),
            reason: err.to_string(),
        })?;
        write_file(&dir.join(MANIFEST), &manifest_text, 0o644)?;

        let key_dir = Self {
            path: dir.to_owned(),
            service,
            published: Vec::new(),
            active: key,
        };
        key_dir.write_jwks()?;
        tracing::info!(dir = %dir.display(), service = %key_dir.service, kid = key_dir.active.kid(), "created key directory");
        Ok(key_dir)
    }

    /// Opens a key directory and loads its keys, checking that each private
    /// key file is readable by its owner only.
    pub fn open(dir: &Path) -> Result<Self, KeyError> {
        let manifest_path = dir.join(MANIFEST);
        let text = fs::read(&manifest_path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => KeyError::InvalidKeyDir {
                path: dir.to_owned(),
                reason: format!(
                    "{MANIFEST} not found; create the directory with `trustwire keygen --service ID --dir {}`",
                    dir.display()
                ),
            },
            _ => KeyError::Io {
                path: manifest_path.clone(),
                source,
            },
        })?;
        let manifest: Manifest = serde_json::from_slice(&text).map_err(|err| KeyError::InvalidKeyDir {
            path: dir.to_owned(),
            reason: format!("{MANIFEST} is invalid: {err}"),
        })?;

        let mut active = None;
        let mut published = Vec::new();
        for entry in &manifest.keys {
            let key = load_private_key(&dir.join(format!("{}.jwk", entry.kid)))?;
            if key.kid() != entry.kid {
                return Err(KeyError::InvalidKeyDir {
                    path: dir.to_owned(),
                    reason: format!("the key file for {:?} holds the key {:?}", entry.kid, key.kid()),
                });
            }
            match entry.state {
                KeyState::Active if active.is_none() => active = Some(key),
                KeyState::Active => {
                    return Err(KeyError::InvalidKeyDir {
                        path: dir.to_owned(),
                        reason: format!("{MANIFEST} lists more than one active key"),
                    });
                }
                _ => published.push(key),
            }
        }

        let active = active.ok_or_else(|| KeyError::InvalidKeyDir {
            path: dir.to_owned(),
            reason: format!("{MANIFEST} lists no active key"),
        })?;
        Ok(Self {
            path: dir.to_owned(),
            service: manifest.service,
            active,
            published,
        })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The service these keys belong to.
    pub fn service(&self) -> &ServiceId {
        &self.service
    }

    /// The key that signs now.
    pub fn active_key(&self) -> &SigningKey {
        &self.active
    }

    /// Consumes the directory handle and returns the active signing key.
    pub fn into_active_key(self) -> SigningKey {
        self.active
    }

    /// The public JWK Set of every published key (active, next and retired).
    pub fn jwks(&self) -> JwkSet {
        let keys = std::iter::once(&self.active)
            .chain(self.published.iter())
            .map(|key| key.public_key().clone())
            .collect();
        JwkSet::from_keys(keys)
    }

    /// The path of the public `jwks.json`.
    pub fn jwks_path(&self) -> PathBuf {
        self.path.join(JWKS_FILE)
    }

    fn write_jwks(&self) -> Result<(), KeyError> {
        let text = self.jwks().to_json_pretty();
        write_file(&self.jwks_path(), text.as_bytes(), 0o644)
    }
}

/// Loads a private key file after checking its permissions.
pub(crate) fn load_private_key(path: &Path) -> Result<SigningKey, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let metadata = fs::metadata(path).map_err(io)?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }

    let text = zeroize::Zeroizing::new(fs::read_to_string(path).map_err(io)?);
    SigningKey::from_private_jwk(&text).map_err(|err| match err {
        KeyError::InvalidJwk(reason) => KeyError::InvalidJwk(format!("{}: {reason}", path.display())),
        other => other,
    })
}

/// Writes a file atomically (temporary file, then rename) with `mode`.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);

    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    // The mode given to open() is reduced by the umask; set it exactly.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let created = KeyDir::create(&dir, ServiceId::new("orders").unwrap()).unwrap();
        let opened = KeyDir::open(&dir).unwrap();
        assert_eq!(opened.active_key().kid(), created.active_key().kid());
        assert_eq!(opened.service().as_str(), "orders");

        let key_file = dir.join(format!("{}.jwk", created.active_key().kid()));
        let mode = fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn create_refuses_existing_dir() {
        let tmp = tempfile::tempdir().unwrap();
        KeyDir::create(tmp.path(), ServiceId::new("orders").unwrap()).unwrap();
        let err = KeyDir::create(tmp.path(), ServiceId::new("orders").unwrap()).unwrap_err();
        assert!(matches!(err, KeyError::InvalidKeyDir { .. }));
    }

    #[test]
    fn group_readable_key_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let created = KeyDir::create(tmp.path(), ServiceId::new("orders").unwrap()).unwrap();
        let key_file = tmp.path().join(format!("{}.jwk", created.active_key().kid()));
        fs::set_permissions(&key_file, fs::Permissions::from_mode(0o640)).unwrap();

        let err = KeyDir::open(tmp.path()).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, KeyError::InsecurePermissions { mode: 0o640, .. }));
        assert!(
            message.contains(&format!("chmod 600 {}", key_file.display())),
            "{message}"
        );
    }
}
