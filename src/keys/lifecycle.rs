//! Key rotation: the states a key goes through, their schedule in the key
//! directory's manifest, and the signer that follows them.
//!
//! A signing key moves through these states:
//!
//! ```text
//! next ──activate_at──▶ active ──retire_at──▶ retired ──remove_at──▶ removed
//!   published,            signing and           published,             gone from the
//!   not signing           published             not signing            JWKS and the disk
//! ```
//!
//! [`KeyDir::rotate`] schedules a whole rotation at once: it publishes a new
//! next key with `activate_at` = now + the pre-publication delay, and gives
//! the active key `retire_at` = that same time and `remove_at` = `retire_at`
//! plus the retention (maximum token lifetime + leeway). Every reader derives a
//! key's state from these times and the clock, so a signer switches keys at
//! `activate_at` without any command running then. [`KeyDir::advance`]
//! writes the states that time has reached to `keys.json`, deletes the
//! private files of removed keys and drops them from `jwks.json`.
//!
//! [`KeyDir::revoke`] ends a key at once, in any state: it leaves the JWKS
//! and its private file is deleted.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::dir::{KeyUse, ManifestEntry, WriteLock, key_path, unix_now, write_file};
use super::{KeyDir, KeyError, SigningKey};
use crate::envelope::Signer;

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
    /// Out of the JWKS after its retention ended; its private file is deleted.
    Removed,
    /// Taken out of the JWKS at once by `revoke`; its private file is deleted.
    Revoked,
}

impl KeyState {
    /// Returns the lowercase name used in `keys.json` and by `trustwire keys list`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Next => "next",
            Self::Active => "active",
            Self::Retired => "retired",
            Self::Removed => "removed",
            Self::Revoked => "revoked",
        }
    }

    /// Returns whether a key in this state is in the JWKS.
    pub fn is_published(&self) -> bool {
        matches!(self, Self::Next | Self::Active | Self::Retired)
    }
}

/// The scheduled transitions of one key, in Unix seconds. Stored flattened
/// into the key's manifest entry; each field is absent until set, so
/// manifests written before rotation existed still load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Schedule {
    /// When a next key becomes active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) activate_at: Option<u64>,
    /// When an active key becomes retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) retire_at: Option<u64>,
    /// When a retired key leaves the JWKS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) remove_at: Option<u64>,
    /// When the key was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) revoked_at: Option<u64>,
}

/// Returns the state a key with `stored` state and `schedule` is in at
/// `now`. States only move forward, so a key whose whole schedule has passed
/// is removed even if `keys.json` still records it as next.
pub(crate) fn state_at(stored: KeyState, schedule: &Schedule, now: u64) -> KeyState {
    if stored == KeyState::Revoked || schedule.revoked_at.is_some() {
        return KeyState::Revoked;
    }
    let reached = |at: Option<u64>| at.is_some_and(|at| now >= at);

    let mut state = stored;
    if state == KeyState::Next && reached(schedule.activate_at) {
        state = KeyState::Active;
    }
    if state == KeyState::Active && reached(schedule.retire_at) {
        state = KeyState::Retired;
    }
    if state == KeyState::Retired && reached(schedule.remove_at) {
        state = KeyState::Removed;
    }
    state
}

/// Default pre-publication delay: 300 s, the `Cache-Control: max-age` that
/// `JwksPublisher` and `trustwire jwks serve` send by default.
pub const DEFAULT_PRE_PUBLISH: Duration = Duration::from_secs(300);

/// Default retention of a retired key: 630 s, the verifier's default maximum
/// token lifetime (600 s) plus its default leeway (30 s).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(630);

/// The timing of one rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// How long the next key is published before it signs. It must be at
    /// least the longest time any verifier caches the JWKS, so every verifier
    /// has the key before the first token it signs arrives. Default 300 s.
    pub pre_publish: Duration,
    /// How long the retired key stays published after it stops signing: the
    /// longest token lifetime any signer of this service uses, plus the
    /// verifiers' leeway. Default 630 s.
    pub retention: Duration,
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            pre_publish: DEFAULT_PRE_PUBLISH,
            retention: DEFAULT_RETENTION,
        }
    }
}

/// One key of a key directory, with its state now and its times in Unix
/// seconds, as `trustwire keys list` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyRecord {
    /// The key id.
    pub kid: String,
    /// The JWK `use`: `sig` for a signing key, `enc` for an encryption key.
    pub key_use: &'static str,
    /// The state now, derived from the schedule and the clock.
    pub state: KeyState,
    /// The state stored in `keys.json`; it lags `state` until the next
    /// [`KeyDir::advance`].
    pub stored_state: KeyState,
    /// When the key was created and published.
    pub created_at: u64,
    /// When a next key becomes, or became, active.
    pub activate_at: Option<u64>,
    /// When the key stops, or stopped, signing.
    pub retire_at: Option<u64>,
    /// When the retired key leaves, or left, the JWKS.
    pub remove_at: Option<u64>,
    /// When the key was revoked.
    pub revoked_at: Option<u64>,
}

/// A change of state written by [`KeyDir::advance`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transition {
    /// The key id.
    pub kid: String,
    /// The state `keys.json` had.
    pub from: KeyState,
    /// The state it has now.
    pub to: KeyState,
}

/// The outcome of [`KeyDir::revoke`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Revocation {
    /// The revoked key.
    pub kid: String,
    /// The key that became active at once because the revoked key was the
    /// active one: the next key if there was one, or a new key. Verifiers
    /// learn it through their unknown-`kid` refresh.
    pub replacement: Option<String>,
}

impl KeyDir {
    /// Publishes a new next signing key that becomes active after
    /// `rotation.pre_publish`, and schedules the active key to retire then
    /// and to leave the JWKS `rotation.retention` later. Writes the private
    /// key (mode 0600), `keys.json` and `jwks.json`, which now lists the new
    /// key. Returns the new key.
    ///
    /// Writes the states time has already reached first, as
    /// [`Self::advance`] does. Fails if a next key is still waiting to become
    /// active: rotate again after it has.
    ///
    /// Like every change to the directory, it holds the directory's write
    /// lock and starts from the files as they are then, not as they were
    /// when this `KeyDir` was opened.
    pub fn rotate(&mut self, rotation: &Rotation) -> Result<&SigningKey, KeyError> {
        let _lock = WriteLock::acquire(&self.path)?;
        self.reload()?;
        self.advance_locked()?;
        if let Some(pending) = self.signing_entries().find(|entry| entry.state == KeyState::Next) {
            return Err(KeyError::InvalidKeyDir {
                path: self.path.clone(),
                reason: format!(
                    "the next key {} is not active yet (it becomes active at Unix time {}); rotate again after that",
                    pending.kid,
                    pending
                        .schedule
                        .activate_at
                        .map_or_else(|| "unknown".to_owned(), |at| at.to_string())
                ),
            });
        }

        let key = SigningKey::generate()?;
        write_file(&key_path(&self.path, key.kid()), key.to_private_jwk().as_bytes(), 0o600)?;

        // unix_now() rounds down, so adding one second keeps the real delay
        // at least `pre_publish`.
        let now = unix_now();
        let activate_at = now.saturating_add(1).saturating_add(rotation.pre_publish.as_secs());
        let remove_at = activate_at.saturating_add(rotation.retention.as_secs());
        let active_kid = self.active.kid().to_owned();
        for entry in &mut self.manifest.keys {
            if entry.kid == active_kid && entry.key_use == KeyUse::Sig {
                entry.schedule.retire_at = Some(activate_at);
                entry.schedule.remove_at = Some(remove_at);
            }
        }
        self.manifest.keys.push(ManifestEntry {
            kid: key.kid().to_owned(),
            key_use: KeyUse::Sig,
            state: KeyState::Next,
            created_at: now,
            schedule: Schedule {
                activate_at: Some(activate_at),
                ..Schedule::default()
            },
        });
        self.write_manifest()?;
        self.reload()?;
        self.write_jwks()?;

        tracing::info!(dir = %self.path.display(), service = %self.service(), kid = key.kid(), retiring_kid = %active_kid, activate_at, remove_at, "published next key");
        let kid = key.kid().to_owned();
        drop(key);
        self.published
            .iter()
            .find(|published| published.kid() == kid)
            .ok_or_else(|| KeyError::InvalidKeyDir {
                path: self.path.clone(),
                reason: format!("the new key {kid} is missing after writing keys.json"),
            })
    }

    /// Writes to `keys.json` the states that time has reached, deletes the
    /// private files of keys whose retention ended and rewrites `jwks.json`
    /// without them. Returns the changes; an empty list writes nothing.
    ///
    /// Readers derive states from the clock, so a signer switches keys on
    /// time without this. Run it (`trustwire keys advance`) from a timer so
    /// that removed keys leave the served JWKS.
    pub fn advance(&mut self) -> Result<Vec<Transition>, KeyError> {
        let _lock = WriteLock::acquire(&self.path)?;
        self.reload()?;
        self.advance_locked()
    }

    /// [`Self::advance`] for a caller that holds the write lock.
    fn advance_locked(&mut self) -> Result<Vec<Transition>, KeyError> {
        let now = unix_now();
        let mut changes = Vec::new();
        for entry in &mut self.manifest.keys {
            let state = state_at(entry.state, &entry.schedule, now);
            if state != entry.state {
                changes.push(Transition {
                    kid: entry.kid.clone(),
                    from: entry.state,
                    to: state,
                });
                entry.state = state;
            }
        }
        if changes.is_empty() {
            return Ok(changes);
        }

        for change in changes.iter().filter(|change| !change.to.is_published()) {
            remove_private_key(&self.path, &change.kid)?;
        }
        self.write_manifest()?;
        self.reload()?;
        self.write_jwks()?;
        for change in &changes {
            tracing::info!(dir = %self.path.display(), kid = %change.kid, from = change.from.as_str(), to = change.to.as_str(), "key changed state");
        }
        Ok(changes)
    }

    /// Revokes the key `kid` at once: it leaves `jwks.json`, its private file
    /// is deleted and `keys.json` marks it revoked.
    ///
    /// Verifiers stop accepting it only when they refresh the JWKS, so force
    /// a refresh on them ([`crate::jwks::TrustStore::refresh_all`]). If `kid`
    /// is the active signing key, the next key becomes active now, or a new
    /// key does when there is no next key. Verifiers find that key through
    /// their unknown-`kid` refresh. Revoking the active encryption key adds
    /// a new one.
    pub fn revoke(&mut self, kid: &str) -> Result<Revocation, KeyError> {
        let _lock = WriteLock::acquire(&self.path)?;
        self.reload()?;
        self.advance_locked()?;
        let now = unix_now();
        let Some(index) = self.manifest.keys.iter().position(|entry| entry.kid == kid) else {
            return Err(KeyError::InvalidKeyDir {
                path: self.path.clone(),
                reason: format!("it has no key {kid:?}; `trustwire keys list` shows its keys"),
            });
        };
        let entry = &self.manifest.keys[index];
        if !entry.state.is_published() {
            return Err(KeyError::InvalidKeyDir {
                path: self.path.clone(),
                reason: format!("the key {kid} is already {}", entry.state.as_str()),
            });
        }
        let was_active = entry.state == KeyState::Active;
        let was_next = entry.state == KeyState::Next;
        let activate_at = entry.schedule.activate_at;
        let key_use = entry.key_use;

        let mut replacement = None;
        if was_active && key_use == KeyUse::Sig {
            replacement = Some(self.activate_replacement(now)?);
        }
        if was_next && key_use == KeyUse::Sig {
            self.cancel_retirement(activate_at);
        }
        let entry = &mut self.manifest.keys[index];
        entry.state = KeyState::Revoked;
        entry.schedule.revoked_at = Some(now);

        if was_active && key_use == KeyUse::Enc {
            // The replacement goes into the same keys.json and jwks.json
            // writes that revoke the old key, so that no reader finds the
            // directory without an active encryption key in between.
            self.encryption.retain(|key| key.kid() != kid);
            replacement = Some(self.add_encryption_key_locked()?.kid().to_owned());
        } else {
            self.write_manifest()?;
        }
        remove_private_key(&self.path, kid)?;
        self.reload()?;
        self.write_jwks()?;
        tracing::info!(dir = %self.path.display(), service = %self.service(), kid, replacement = replacement.as_deref().unwrap_or(""), "revoked key");
        Ok(Revocation {
            kid: kid.to_owned(),
            replacement,
        })
    }

    /// Keeps the active signing key active when the next key that was to
    /// replace it at `activate_at` is revoked; otherwise the directory would
    /// have no active key from then on.
    fn cancel_retirement(&mut self, activate_at: Option<u64>) {
        let Some(activate_at) = activate_at else {
            return;
        };
        for entry in &mut self.manifest.keys {
            let retiring = entry.key_use == KeyUse::Sig
                && entry.state == KeyState::Active
                && entry.schedule.retire_at == Some(activate_at);
            if retiring {
                entry.schedule.retire_at = None;
                entry.schedule.remove_at = None;
            }
        }
    }

    /// Makes the next signing key active now, or a new key when there is
    /// none, and returns its kid. Only the manifest is changed.
    fn activate_replacement(&mut self, now: u64) -> Result<String, KeyError> {
        let next = self
            .manifest
            .keys
            .iter_mut()
            .find(|entry| entry.key_use == KeyUse::Sig && entry.state == KeyState::Next);
        if let Some(next) = next {
            next.state = KeyState::Active;
            next.schedule.activate_at = Some(now);
            return Ok(next.kid.clone());
        }

        let key = SigningKey::generate()?;
        write_file(&key_path(&self.path, key.kid()), key.to_private_jwk().as_bytes(), 0o600)?;
        self.manifest.keys.push(ManifestEntry {
            kid: key.kid().to_owned(),
            key_use: KeyUse::Sig,
            state: KeyState::Active,
            created_at: now,
            schedule: Schedule {
                activate_at: Some(now),
                ..Schedule::default()
            },
        });
        Ok(key.kid().to_owned())
    }

    /// Returns every key of the directory, revoked and removed ones included, with
    /// its state now and its times, in the order of `keys.json`.
    pub fn records(&self) -> Vec<KeyRecord> {
        let now = unix_now();
        self.manifest
            .keys
            .iter()
            .map(|entry| KeyRecord {
                kid: entry.kid.clone(),
                key_use: match entry.key_use {
                    KeyUse::Sig => "sig",
                    KeyUse::Enc => "enc",
                },
                state: state_at(entry.state, &entry.schedule, now),
                stored_state: entry.state,
                created_at: entry.created_at,
                activate_at: entry.schedule.activate_at,
                retire_at: entry.schedule.retire_at,
                remove_at: entry.schedule.remove_at,
                revoked_at: entry.schedule.revoked_at,
            })
            .collect()
    }

    /// When the next scheduled change of the active signing key happens, in
    /// Unix seconds: the `activate_at` of a next key, if any.
    pub fn next_activation(&self) -> Option<u64> {
        let now = unix_now();
        self.signing_entries()
            .filter(|entry| state_at(entry.state, &entry.schedule, now) == KeyState::Next)
            .filter_map(|entry| entry.schedule.activate_at)
            .min()
    }

    fn signing_entries(&self) -> impl Iterator<Item = &ManifestEntry> {
        self.manifest.keys.iter().filter(|entry| entry.key_use == KeyUse::Sig)
    }

    /// Reopens the directory, so the loaded keys follow the manifest.
    pub(super) fn reload(&mut self) -> Result<(), KeyError> {
        *self = Self::open(&self.path)?;
        Ok(())
    }
}

/// Deletes the private key file of `kid`; a file already gone is fine.
fn remove_private_key(dir: &Path, kid: &str) -> Result<(), KeyError> {
    let path = key_path(dir, kid);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(KeyError::Io { path, source }),
    }
}

/// Switches `signer` to the active key of the key directory at `dir`, if it
/// signs with another key. Returns whether it switched.
///
/// This is the explicit reload call; [`KeyDirWatcher`] makes it
/// periodically and at each scheduled activation.
pub fn reload_signer(signer: &Signer, dir: &Path) -> Result<bool, KeyError> {
    let keys = KeyDir::open(dir)?;
    switch_signer(signer, keys).map(|(switched, _)| switched)
}

/// Switches `signer` to the active key of `keys`; returns whether it
/// switched and the next scheduled activation.
fn switch_signer(signer: &Signer, keys: KeyDir) -> Result<(bool, Option<u64>), KeyError> {
    if keys.service() != signer.service() {
        return Err(KeyError::InvalidKeyDir {
            path: keys.path().to_owned(),
            reason: format!(
                "it holds the keys of {}, but the signer signs for {}",
                keys.service(),
                signer.service()
            ),
        });
    }
    let next_activation = keys.next_activation();
    if keys.active_key().kid() == signer.kid() {
        return Ok((false, next_activation));
    }
    signer.replace_key(keys.into_active_key());
    Ok((true, next_activation))
}

/// Default interval between two reloads of a watched key directory: 10 s.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// A background task that keeps a [`Signer`] signing with the active key of
/// its key directory, so a running service follows `trustwire keys rotate`
/// and `trustwire keys revoke` without a restart. Dropping it stops the task.
///
/// It reloads the directory every `interval` and also wakes at the
/// `activate_at` of a next key, so the switch happens on time. A revoked
/// active key keeps signing until the next reload, so keep the interval
/// short. Keep it well below the pre-publication delay too, or a rotation
/// may activate a key this task has not seen yet.
///
/// ```no_run
/// use trustwire::keys::{DEFAULT_RELOAD_INTERVAL, KeyDirWatcher};
/// use trustwire::{KeyDir, Signer};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let keys = KeyDir::open("keys/orders".as_ref())?;
/// let signer = Signer::new(keys.service().clone(), keys.into_active_key());
/// let _watcher = KeyDirWatcher::spawn("keys/orders", signer.clone(), DEFAULT_RELOAD_INTERVAL);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct KeyDirWatcher {
    task: tokio::task::JoinHandle<()>,
}

impl KeyDirWatcher {
    /// Starts watching `dir` for `signer` on the current Tokio runtime.
    ///
    /// # Panics
    ///
    /// Panics when called outside a Tokio runtime, as `tokio::spawn` does.
    pub fn spawn(dir: impl Into<PathBuf>, signer: Signer, interval: Duration) -> Self {
        let dir = dir.into();
        let task = tokio::spawn(watch(dir, signer, interval));
        Self { task }
    }
}

impl Drop for KeyDirWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn watch(dir: PathBuf, signer: Signer, interval: Duration) {
    tracing::info!(dir = %dir.display(), iss = %signer.service(), interval_ms = interval.as_millis() as u64, "watching key directory");
    let mut failing = false;
    loop {
        let opened = {
            let dir = dir.clone();
            let signer = signer.clone();
            tokio::task::spawn_blocking(move || KeyDir::open(&dir).and_then(|keys| switch_signer(&signer, keys))).await
        };
        let next_activation = match opened {
            Ok(Ok((_, next_activation))) => {
                if failing {
                    tracing::info!(dir = %dir.display(), "key directory readable again");
                }
                failing = false;
                next_activation
            }
            Ok(Err(err)) => {
                metrics::counter!("trustwire_key_reload_failures_total").increment(1);
                if !failing {
                    tracing::warn!(dir = %dir.display(), error = %err, "cannot reload the key directory; still signing with kid {}", signer.kid());
                }
                failing = true;
                None
            }
            Err(err) => {
                tracing::error!(dir = %dir.display(), error = %err, "key directory reload task failed");
                None
            }
        };

        let wait = next_activation.map_or(interval, |at| interval.min(until_unix(at)));
        tokio::time::sleep(wait).await;
    }
}

/// Time from now until Unix second `at`, plus 10 ms so the wake-up lands in
/// that second; zero if it has passed.
fn until_unix(at: u64) -> Duration {
    let target = UNIX_EPOCH + Duration::from_secs(at) + Duration::from_millis(10);
    target.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(activate: Option<u64>, retire: Option<u64>, remove: Option<u64>) -> Schedule {
        Schedule {
            activate_at: activate,
            retire_at: retire,
            remove_at: remove,
            revoked_at: None,
        }
    }

    #[test]
    fn next_becomes_active_at_activate_at() {
        let next = schedule(Some(100), None, None);
        assert_eq!(state_at(KeyState::Next, &next, 99), KeyState::Next);
        assert_eq!(state_at(KeyState::Next, &next, 100), KeyState::Active);
    }

    #[test]
    fn active_retires_then_is_removed() {
        let active = schedule(None, Some(100), Some(200));
        assert_eq!(state_at(KeyState::Active, &active, 99), KeyState::Active);
        assert_eq!(state_at(KeyState::Active, &active, 100), KeyState::Retired);
        assert_eq!(state_at(KeyState::Active, &active, 199), KeyState::Retired);
        assert_eq!(state_at(KeyState::Active, &active, 200), KeyState::Removed);
    }

    #[test]
    fn whole_schedule_passed_is_removed() {
        let passed = schedule(Some(10), Some(20), Some(30));
        assert_eq!(state_at(KeyState::Next, &passed, 1000), KeyState::Removed);
    }

    #[test]
    fn unscheduled_states_stay() {
        let none = Schedule::default();
        for state in [KeyState::Next, KeyState::Active, KeyState::Retired, KeyState::Removed] {
            assert_eq!(state_at(state, &none, u64::MAX), state);
        }
    }

    #[test]
    fn revoked_wins() {
        let revoked = Schedule {
            revoked_at: Some(5),
            ..schedule(Some(1), None, None)
        };
        assert_eq!(state_at(KeyState::Active, &revoked, 0), KeyState::Revoked);
    }

    #[test]
    fn states_never_move_back() {
        let active = schedule(None, Some(100), Some(200));
        assert_eq!(state_at(KeyState::Removed, &active, 0), KeyState::Removed);
        assert_eq!(state_at(KeyState::Retired, &active, 0), KeyState::Retired);
    }
}
