//! The key directory: a service's private keys, their states and its public JWKS.
//!
//! Layout:
//!
//! ```text
//! DIR/keys.json     manifest: service id and each key's kid, use, state and times
//! DIR/<kid>.jwk     private JWK (signing or encryption), mode 0600
//! DIR/jwks.json     public JWK Set served to verifiers and senders
//! DIR/.lock         empty; writers hold an exclusive lock on it
//! ```
//!
//! A manifest entry without `use` is a signing key, so directories created
//! before encryption keys existed still open. An entry's schedule
//! (`activate_at`, `retire_at`, `remove_at`, `revoked_at`) is absent until
//! a rotation or revocation sets it; `lifecycle` describes the states.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::lifecycle::{KeyState, Schedule, state_at};
use super::{EncryptionKey, KeyError, SigningKey};
use crate::identity::ServiceId;
use crate::jwks::JwkSet;

const MANIFEST: &str = "keys.json";
const JWKS_FILE: &str = "jwks.json";
const LOCK_FILE: &str = ".lock";

/// How many times [`KeyDir::open`] loads the keys while writers keep
/// changing `keys.json` under it.
const OPEN_ATTEMPTS: u32 = 8;

/// How long a change waits for another writer to release the directory.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// How often a waiting change tries the lock again.
const LOCK_RETRY: Duration = Duration::from_millis(20);

/// What a key is for: the JWK `use` member.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum KeyUse {
    /// Signs tokens.
    #[default]
    Sig,
    /// Receives sealed messages (key agreement).
    Enc,
}

impl KeyUse {
    fn is_sig(&self) -> bool {
        *self == KeyUse::Sig
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Manifest {
    pub(super) service: ServiceId,
    pub(super) keys: Vec<ManifestEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ManifestEntry {
    pub(super) kid: String,
    /// Absent (signing) in manifests written before encryption keys existed.
    #[serde(rename = "use", default, skip_serializing_if = "KeyUse::is_sig")]
    pub(super) key_use: KeyUse,
    /// The state when the manifest was written; the state now also depends
    /// on `schedule` and the clock.
    pub(super) state: KeyState,
    /// Unix time in seconds.
    pub(super) created_at: u64,
    #[serde(flatten)]
    pub(super) schedule: Schedule,
}

/// A service's key directory, opened and checked.
#[derive(Debug)]
pub struct KeyDir {
    pub(super) path: PathBuf,
    pub(super) manifest: Manifest,
    /// The signing key that is active now.
    pub(super) active: SigningKey,
    /// The next and retired signing keys, which are published but do not sign.
    pub(super) published: Vec<SigningKey>,
    /// Encryption keys, the active one first; empty for a directory created
    /// before encryption keys existed.
    pub(super) encryption: Vec<EncryptionKey>,
}

impl KeyDir {
    /// Creates a key directory for `service` with one new active Ed25519
    /// signing key and one new active X25519 encryption key
    /// (`use: enc`, `alg: ECDH-ES+A256KW`), and writes the private keys
    /// (mode 0600), the manifest and `jwks.json`, which publishes both.
    ///
    /// Fails if `dir` already contains a key directory, so keys are never
    /// overwritten by accident.
    pub fn create(dir: &Path, service: ServiceId) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;

        let _lock = WriteLock::acquire(dir)?;
        if dir.join(MANIFEST).exists() {
            return Err(KeyError::InvalidKeyDir {
                path: dir.to_owned(),
                reason: format!(
                    "it already contains {MANIFEST}; choose an empty directory or remove the old keys first"
                ),
            });
        }
        // Only after the check, so that a failed create leaves the mode of
        // an existing key directory as its operator set it.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;

        let key = SigningKey::generate()?;
        let encryption_key = EncryptionKey::generate()?;
        write_file(&key_path(dir, key.kid()), key.to_private_jwk().as_bytes(), 0o600)?;
        write_file(
            &key_path(dir, encryption_key.kid()),
            encryption_key.to_private_jwk().as_bytes(),
            0o600,
        )?;

        let created_at = unix_now();
        let manifest = Manifest {
            service,
            keys: vec![
                ManifestEntry {
                    kid: key.kid().to_owned(),
                    key_use: KeyUse::Sig,
                    state: KeyState::Active,
                    created_at,
                    schedule: Schedule::default(),
                },
                ManifestEntry {
                    kid: encryption_key.kid().to_owned(),
                    key_use: KeyUse::Enc,
                    state: KeyState::Active,
                    created_at,
                    schedule: Schedule::default(),
                },
            ],
        };

        let key_dir = Self {
            path: dir.to_owned(),
            manifest,
            published: Vec::new(),
            active: key,
            encryption: vec![encryption_key],
        };
        key_dir.write_manifest()?;
        key_dir.write_jwks()?;
        tracing::info!(
            dir = %dir.display(),
            service = %key_dir.service(),
            kid = key_dir.active.kid(),
            enc_kid = key_dir.encryption[0].kid(),
            "created key directory"
        );
        Ok(key_dir)
    }

    /// Opens a key directory and loads its keys, checking that each private
    /// key file is readable by its owner only.
    ///
    /// Each key's state is the one its schedule gives for the current time,
    /// which may be ahead of the state written in `keys.json`: a next key
    /// whose `activate_at` has passed loads as the active key. Removed and
    /// revoked keys are not loaded.
    pub fn open(dir: &Path) -> Result<Self, KeyError> {
        Self::open_with(dir, || fs::read(dir.join(MANIFEST)))
    }

    /// [`Self::open`] with the bytes of `keys.json` from `read_manifest`.
    ///
    /// Readers take no lock, and a writer that revokes or removes a key
    /// deletes its file after it has written the `keys.json` without it. A
    /// reader that read the older `keys.json` then finds a key file missing.
    /// It reads `keys.json` again and starts over if it has changed, up to
    /// [`OPEN_ATTEMPTS`] times.
    fn open_with(dir: &Path, mut read_manifest: impl FnMut() -> std::io::Result<Vec<u8>>) -> Result<Self, KeyError> {
        let mut text = read_manifest_file(dir, &mut read_manifest)?;
        let mut attempt = 1;
        loop {
            let err = match Self::load(dir, &text) {
                Err(err) if is_missing_file(&err) && attempt < OPEN_ATTEMPTS => err,
                result => return result,
            };
            let reread = read_manifest_file(dir, &mut read_manifest)?;
            if reread == text {
                return Err(err);
            }
            text = reread;
            attempt += 1;
        }
    }

    /// Loads the keys that the manifest `text` lists.
    fn load(dir: &Path, text: &[u8]) -> Result<Self, KeyError> {
        let manifest: Manifest = serde_json::from_slice(text).map_err(|err| KeyError::InvalidKeyDir {
            path: dir.to_owned(),
            reason: format!("{MANIFEST} is invalid: {err}"),
        })?;

        let mismatch = |entry: &ManifestEntry, found: &str| KeyError::InvalidKeyDir {
            path: dir.to_owned(),
            reason: format!("the key file for {:?} holds the key {found:?}", entry.kid),
        };
        let now = unix_now();
        let mut active = None;
        let mut published = Vec::new();
        let mut active_encryption = None;
        let mut other_encryption = Vec::new();
        for entry in &manifest.keys {
            let state = state_at(entry.state, &entry.schedule, now);
            if !state.is_published() {
                continue;
            }
            if entry.key_use == KeyUse::Enc {
                let key = load_encryption_key(&key_path(dir, &entry.kid))?;
                if key.kid() != entry.kid {
                    return Err(mismatch(entry, key.kid()));
                }
                match state {
                    KeyState::Active if active_encryption.is_none() => active_encryption = Some(key),
                    KeyState::Active => {
                        return Err(KeyError::InvalidKeyDir {
                            path: dir.to_owned(),
                            reason: format!("{MANIFEST} lists more than one active encryption key"),
                        });
                    }
                    _ => other_encryption.push(key),
                }
                continue;
            }

            let key = load_private_key(&key_path(dir, &entry.kid))?;
            if key.kid() != entry.kid {
                return Err(mismatch(entry, key.kid()));
            }
            match state {
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
        let encryption = active_encryption.into_iter().chain(other_encryption).collect();
        Ok(Self {
            path: dir.to_owned(),
            manifest,
            active,
            published,
            encryption,
        })
    }

    /// Adds a new active X25519 encryption key to a directory that has none
    /// (one created before encryption keys existed), writes it (mode 0600)
    /// and republishes `jwks.json`.
    ///
    /// Fails if the directory already has an active encryption key.
    pub fn add_encryption_key(&mut self) -> Result<&EncryptionKey, KeyError> {
        let _lock = WriteLock::acquire(&self.path)?;
        self.reload()?;
        self.add_encryption_key_locked()
    }

    /// [`Self::add_encryption_key`] for a caller that holds the write lock.
    pub(super) fn add_encryption_key_locked(&mut self) -> Result<&EncryptionKey, KeyError> {
        let has_active = self.manifest.keys.iter().any(|entry| {
            entry.key_use == KeyUse::Enc && state_at(entry.state, &entry.schedule, unix_now()) == KeyState::Active
        });
        if has_active {
            return Err(KeyError::InvalidKeyDir {
                path: self.path.clone(),
                reason: "it already has an active encryption key".into(),
            });
        }

        let key = EncryptionKey::generate()?;
        write_file(&key_path(&self.path, key.kid()), key.to_private_jwk().as_bytes(), 0o600)?;
        self.manifest.keys.push(ManifestEntry {
            kid: key.kid().to_owned(),
            key_use: KeyUse::Enc,
            state: KeyState::Active,
            created_at: unix_now(),
            schedule: Schedule::default(),
        });
        self.encryption.insert(0, key);
        self.write_manifest()?;
        self.write_jwks()?;

        let key = &self.encryption[0];
        tracing::info!(dir = %self.path.display(), service = %self.service(), enc_kid = key.kid(), "added encryption key");
        Ok(key)
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The service these keys belong to.
    pub fn service(&self) -> &ServiceId {
        &self.manifest.service
    }

    /// The key that signs now.
    pub fn active_key(&self) -> &SigningKey {
        &self.active
    }

    /// Consumes the directory handle and returns the active signing key.
    pub fn into_active_key(self) -> SigningKey {
        self.active
    }

    /// The encryption keys (active first, then next and retired), which
    /// decrypt sealed messages; empty for a directory created before
    /// encryption keys existed.
    pub fn encryption_keys(&self) -> &[EncryptionKey] {
        &self.encryption
    }

    /// Consumes the directory handle and returns the active signing key and
    /// every encryption key, for a service that both signs and opens sealed
    /// messages.
    pub fn into_keys(self) -> (SigningKey, Vec<EncryptionKey>) {
        (self.active, self.encryption)
    }

    /// The public JWK Set of every published key (active, next and retired),
    /// signing keys first, then encryption keys with the active one first.
    pub fn jwks(&self) -> JwkSet {
        let keys = std::iter::once(&self.active)
            .chain(self.published.iter())
            .map(|key| key.public_key().clone())
            .collect();
        let encryption_keys = self.encryption.iter().map(|key| key.public_key().clone()).collect();
        JwkSet::from_keys(keys).with_encryption_keys(encryption_keys)
    }

    /// The path of the public `jwks.json`.
    pub fn jwks_path(&self) -> PathBuf {
        self.path.join(JWKS_FILE)
    }

    pub(super) fn write_jwks(&self) -> Result<(), KeyError> {
        let text = self.jwks().to_json_pretty();
        write_file(&self.jwks_path(), text.as_bytes(), 0o644)
    }

    pub(super) fn write_manifest(&self) -> Result<(), KeyError> {
        let text = serde_json::to_vec_pretty(&self.manifest).map_err(|err| KeyError::InvalidKeyDir {
            path: self.path.clone(),
            reason: err.to_string(),
        })?;
        write_file(&self.path.join(MANIFEST), &text, 0o644)
    }
}

/// Returns whether `err` is a file that was not found.
fn is_missing_file(err: &KeyError) -> bool {
    matches!(err, KeyError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// Reads `keys.json` with `read_manifest`, naming the command that creates
/// the directory when it is missing.
fn read_manifest_file(
    dir: &Path,
    read_manifest: &mut impl FnMut() -> std::io::Result<Vec<u8>>,
) -> Result<Vec<u8>, KeyError> {
    read_manifest().map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => KeyError::InvalidKeyDir {
            path: dir.to_owned(),
            reason: format!(
                "{MANIFEST} not found; create the directory with `trustwire keygen --service ID --dir {}`",
                dir.display()
            ),
        },
        _ => KeyError::Io {
            path: dir.join(MANIFEST),
            source,
        },
    })
}

pub(super) fn key_path(dir: &Path, kid: &str) -> PathBuf {
    dir.join(format!("{kid}.jwk"))
}

/// Loads a private signing key file after checking its permissions.
pub(crate) fn load_private_key(path: &Path) -> Result<SigningKey, KeyError> {
    let text = read_private_key_file(path)?;
    SigningKey::from_private_jwk(&text).map_err(|err| name_file(err, path))
}

/// Loads a private encryption key file after checking its permissions.
fn load_encryption_key(path: &Path) -> Result<EncryptionKey, KeyError> {
    let text = read_private_key_file(path)?;
    EncryptionKey::from_private_jwk(&text).map_err(|err| name_file(err, path))
}

/// Reads a private key file, failing if group or others can read it.
fn read_private_key_file(path: &Path) -> Result<zeroize::Zeroizing<String>, KeyError> {
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
    Ok(zeroize::Zeroizing::new(fs::read_to_string(path).map_err(io)?))
}

fn name_file(err: KeyError, path: &Path) -> KeyError {
    match err {
        KeyError::InvalidJwk(reason) => KeyError::InvalidJwk(format!("{}: {reason}", path.display())),
        other => other,
    }
}

/// An exclusive lock on a key directory's lock file, released on drop.
///
/// Every change to the directory takes it and then rereads the directory,
/// so two processes that change it at once (a timer's `keys advance` and an
/// operator's `keys rotate`, say) take turns, and neither writes a
/// `keys.json` that drops the other's change. Readers take no lock. Each
/// file is replaced by a rename, a private key file is written before the
/// manifest that names it, and [`KeyDir::open`] reads the manifest again
/// when a key file it names was deleted after it was read.
pub(super) struct WriteLock {
    // The lock is held as long as this descriptor is open.
    _file: fs::File,
}

impl WriteLock {
    /// Waits until no other writer holds the lock on `dir`, then takes it,
    /// creating the lock file (mode 0600) if it is missing. Fails after
    /// [`LOCK_WAIT`] rather than hang behind a writer that is stuck.
    ///
    /// NOTE: the lock is not reentrant; a caller that holds it and takes it
    /// again waits for itself and fails after `LOCK_WAIT`. Methods that run
    /// under the lock call the `_locked` forms of the others.
    pub(super) fn acquire(dir: &Path) -> Result<Self, KeyError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| KeyError::Io {
            path: path.clone(),
            source,
        };
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Self { _file: file }),
                Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(LOCK_RETRY);
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(KeyError::InvalidKeyDir {
                        path: dir.to_owned(),
                        reason: format!(
                            "another process has been changing it for {} s (it holds the lock on {}); try again when it is done",
                            LOCK_WAIT.as_secs(),
                            path.display()
                        ),
                    });
                }
                Err(fs::TryLockError::Error(source)) => return Err(io(source)),
            }
        }
    }
}

/// Writes a file atomically (temporary file, then rename) with `mode`.
pub(super) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), KeyError> {
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

pub(super) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change gives up with an error, instead of hanging, when another
    /// writer keeps the lock for longer than `LOCK_WAIT`.
    #[test]
    fn change_fails_when_lock_stays_held() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        KeyDir::create(&dir, ServiceId::new("orders").unwrap()).unwrap();
        let mut keys = KeyDir::open(&dir).unwrap();

        let _lock = WriteLock::acquire(&dir).unwrap();
        let err = keys.advance().unwrap_err();
        assert!(
            err.to_string()
                .contains("another process has been changing it for 10 s (it holds the lock on"),
            "{err}"
        );
    }

    /// A change waits while another writer holds the directory's lock.
    #[test]
    fn change_waits_for_lock_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let created = KeyDir::create(&dir, ServiceId::new("orders").unwrap()).unwrap();
        let encryption = created.encryption_keys()[0].kid().to_owned();
        let mut stale = KeyDir::open(&dir).unwrap();

        let lock = WriteLock::acquire(&dir).unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let writer = std::thread::spawn(move || {
            let result = stale.revoke(&encryption);
            done_tx.send(()).unwrap();
            result
        });
        // While the lock is held, the other writer must not finish.
        assert_eq!(
            done_rx.recv_timeout(std::time::Duration::from_millis(300)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout),
            "a change went through while another writer held the lock"
        );
        drop(lock);

        let revocation = writer.join().unwrap().unwrap();
        assert!(revocation.replacement.is_some());
    }

    /// A reader that read `keys.json` just before a writer revoked a key
    /// finds that key's file deleted. It reads `keys.json` again and loads
    /// the directory as the writer left it.
    #[test]
    fn open_rereads_manifest_after_key_file_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let created = KeyDir::create(&dir, ServiceId::new("orders").unwrap()).unwrap();
        let revoked = created.encryption_keys()[0].kid().to_owned();
        let before = fs::read(dir.join(MANIFEST)).unwrap();

        let mut writer = KeyDir::open(&dir).unwrap();
        let replacement = writer.revoke(&revoked).unwrap().replacement.unwrap();
        assert!(!key_path(&dir, &revoked).exists());

        let mut reads = 0;
        let reader = KeyDir::open_with(&dir, || {
            reads += 1;
            if reads == 1 {
                Ok(before.clone())
            } else {
                fs::read(dir.join(MANIFEST))
            }
        })
        .unwrap();
        assert_eq!(reads, 2);
        assert_eq!(reader.encryption_keys()[0].kid(), replacement);
    }

    /// A key file missing while `keys.json` stays the same is an error, not
    /// a reason to read the manifest again and again.
    #[test]
    fn open_fails_for_missing_key_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let created = KeyDir::create(&dir, ServiceId::new("orders").unwrap()).unwrap();
        let missing = key_path(&dir, created.active_key().kid());
        fs::remove_file(&missing).unwrap();

        let mut reads = 0;
        let err = KeyDir::open_with(&dir, || {
            reads += 1;
            fs::read(dir.join(MANIFEST))
        })
        .unwrap_err();
        match err {
            KeyError::Io { path, source } => {
                assert_eq!(path, missing);
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected a missing key file, got {other}"),
        }
        assert_eq!(reads, 2, "keys.json read once more to see whether it changed");
    }

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
    fn create_makes_published_encryption_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let created = KeyDir::create(&dir, ServiceId::new("orders").unwrap()).unwrap();
        let encryption_key = &created.encryption_keys()[0];
        assert_eq!(encryption_key.curve(), crate::keys::EncryptionCurve::X25519);
        assert_ne!(encryption_key.kid(), created.active_key().kid());

        let key_file = dir.join(format!("{}.jwk", encryption_key.kid()));
        let mode = fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let published = JwkSet::parse(&fs::read(created.jwks_path()).unwrap()).unwrap();
        let public = published.find_encryption_key(encryption_key.kid()).unwrap();
        assert_eq!(
            public.to_jwk()["use"],
            "enc",
            "the encryption key is published with use: enc"
        );
        assert_eq!(public.to_jwk()["alg"], "ECDH-ES+A256KW");
        assert!(published.find(created.active_key().kid()).is_some());

        let opened = KeyDir::open(&dir).unwrap();
        assert_eq!(opened.encryption_keys().len(), 1);
        assert_eq!(opened.encryption_keys()[0].kid(), encryption_key.kid());
    }

    /// A directory written before encryption keys existed: one signing key
    /// and a manifest whose entries have no "use".
    fn write_old_key_dir(dir: &Path) -> SigningKey {
        fs::create_dir_all(dir).unwrap();
        let key = SigningKey::generate().unwrap();
        write_file(&key_path(dir, key.kid()), key.to_private_jwk().as_bytes(), 0o600).unwrap();
        let manifest = format!(
            r#"{{"service":"orders","keys":[{{"kid":"{}","state":"active","created_at":1700000000}}]}}"#,
            key.kid()
        );
        write_file(&dir.join(MANIFEST), manifest.as_bytes(), 0o644).unwrap();
        key
    }

    #[test]
    fn old_dir_without_encryption_key_opens() {
        let tmp = tempfile::tempdir().unwrap();
        let key = write_old_key_dir(tmp.path());

        let opened = KeyDir::open(tmp.path()).unwrap();
        assert_eq!(opened.active_key().kid(), key.kid());
        assert!(opened.encryption_keys().is_empty());
        assert!(opened.jwks().encryption_keys().is_empty());
    }

    #[test]
    fn old_dir_gains_encryption_key() {
        let tmp = tempfile::tempdir().unwrap();
        write_old_key_dir(tmp.path());

        let mut opened = KeyDir::open(tmp.path()).unwrap();
        let kid = opened.add_encryption_key().unwrap().kid().to_owned();
        let err = opened.add_encryption_key().unwrap_err();
        assert!(matches!(err, KeyError::InvalidKeyDir { .. }), "{err:?}");

        let reopened = KeyDir::open(tmp.path()).unwrap();
        assert_eq!(reopened.encryption_keys()[0].kid(), kid);
        let published = JwkSet::parse(&fs::read(reopened.jwks_path()).unwrap()).unwrap();
        assert!(published.find_encryption_key(&kid).is_some());
    }

    #[test]
    fn group_readable_encryption_key_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let created = KeyDir::create(tmp.path(), ServiceId::new("orders").unwrap()).unwrap();
        let key_file = tmp.path().join(format!("{}.jwk", created.encryption_keys()[0].kid()));
        fs::set_permissions(&key_file, fs::Permissions::from_mode(0o644)).unwrap();

        let err = KeyDir::open(tmp.path()).unwrap_err();
        assert!(
            matches!(err, KeyError::InsecurePermissions { mode: 0o644, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn create_refuses_existing_dir() {
        let tmp = tempfile::tempdir().unwrap();
        KeyDir::create(tmp.path(), ServiceId::new("orders").unwrap()).unwrap();
        let err = KeyDir::create(tmp.path(), ServiceId::new("orders").unwrap()).unwrap_err();
        assert!(matches!(err, KeyError::InvalidKeyDir { .. }));
    }

    /// A failed `create` leaves an existing key directory as it was: an
    /// operator may have opened it to the user that serves `jwks.json`.
    #[test]
    fn create_keeps_existing_dir_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        KeyDir::create(&dir, ServiceId::new("orders").unwrap()).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();

        let err = KeyDir::create(&dir, ServiceId::new("orders").unwrap()).unwrap_err();
        assert!(err.to_string().contains("it already contains keys.json"), "{err}");
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755, "mode {mode:o}");
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
