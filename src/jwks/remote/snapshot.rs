//! The last-good snapshot of a remote JWK Set, kept on disk so that a
//! verifier restarted during a JWKS outage still has the keys it had.
//!
//! The file is JSON:
//!
//! ```text
//! {"version": 1, "url": "https://…/jwks.json", "fetched_at": 1767225600, "ttl_s": 300, "jwks": {"keys": […]}}
//! ```
//!
//! `fetched_at` is the Unix time of the fetch in seconds and `ttl_s` the time
//! to live the cache gave the set then, so a loaded snapshot expires when the
//! fetched keys would have.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::jwks::JwkSet;

/// The format version written and accepted.
const VERSION: u32 = 1;

/// Room for the fields around the set, on top of the response size limit.
const ENVELOPE_BYTES: usize = 4096;

/// A snapshot read back from disk.
pub(super) struct Snapshot {
    pub(super) set: JwkSet,
    pub(super) fetched_at: SystemTime,
    pub(super) ttl: Duration,
}

impl Snapshot {
    /// How long ago the snapshot's set was fetched; zero if the clock is now
    /// before the fetch time.
    pub(super) fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.fetched_at)
            .unwrap_or(Duration::ZERO)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotFile {
    version: u32,
    url: String,
    fetched_at: u64,
    ttl_s: u64,
    jwks: serde_json::Value,
}

/// Writes `set`, fetched from `url` just now with time to live `ttl`, to
/// `path` atomically with mode 0600. Returns what failed.
pub(super) async fn write(path: &Path, url: &str, set: &JwkSet, ttl: Duration) -> Result<(), String> {
    let jwks: serde_json::Value = serde_json::from_str(&set.to_json()).map_err(|err| err.to_string())?;
    let file = SnapshotFile {
        version: VERSION,
        url: url.to_owned(),
        fetched_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs()),
        ttl_s: ttl.as_secs(),
        jwks,
    };
    let mut text = serde_json::to_vec_pretty(&file).map_err(|err| err.to_string())?;
    text.push(b'\n');

    let path = path.to_owned();
    tokio::task::spawn_blocking(move || write_atomically(&path, &text))
        .await
        .map_err(|err| format!("the write task failed: {err}"))?
}

/// Writes a temporary file beside `path`, syncs it and renames it over
/// `path`, so a reader finds either the old or the new snapshot, never a
/// partial one.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), String> {
    let tmp = temporary_path(path);
    let fail = |what: &str, err: std::io::Error| format!("cannot {what} {}: {err}", tmp.display());
    let _ = fs::remove_file(&tmp);

    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|err| fail("create", err))?;
    file.write_all(contents).map_err(|err| fail("write", err))?;
    file.sync_all().map_err(|err| fail("sync", err))?;
    // The mode given to open() is reduced by the umask; set it exactly.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(|err| fail("set the mode of", err))?;
    fs::rename(&tmp, path).map_err(|err| format!("cannot rename {} to {}: {err}", tmp.display(), path.display()))
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|name| name.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Reads the snapshot at `path` and checks that it was fetched from `url`.
/// Returns what failed.
pub(super) async fn read(path: &Path, url: &str, max_jwks_bytes: usize) -> Result<Snapshot, String> {
    let path = path.to_owned();
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || read_blocking(&path, &url, max_jwks_bytes))
        .await
        .map_err(|err| format!("the read task failed: {err}"))?
}

fn read_blocking(path: &Path, url: &str, max_jwks_bytes: usize) -> Result<Snapshot, String> {
    let metadata = fs::metadata(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "{} can be written by group or others (mode {mode:03o}), so anyone could plant keys; run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    let limit = max_jwks_bytes.saturating_add(ENVELOPE_BYTES);
    if metadata.len() > limit as u64 {
        return Err(format!("{} is larger than {limit} bytes", path.display()));
    }

    let bytes = fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let document = crate::encoding::parse_object(&bytes).map_err(|err| format!("invalid JSON: {}", err.0))?;
    let file: SnapshotFile = serde_json::from_value(serde_json::Value::Object(document))
        .map_err(|err| format!("not a trustwire JWKS snapshot: {err}"))?;
    if file.version != VERSION {
        return Err(format!(
            "unsupported snapshot version {}; expected {VERSION}",
            file.version
        ));
    }
    if file.url != url {
        return Err(format!("it holds the keys of {}, not of {url}", file.url));
    }

    let set = JwkSet::parse(file.jwks.to_string().as_bytes()).map_err(|err| format!("invalid JWK Set: {err}"))?;
    Ok(Snapshot {
        set,
        fetched_at: UNIX_EPOCH + Duration::from_secs(file.fetched_at),
        ttl: Duration::from_secs(file.ttl_s),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;

    const URL: &str = "https://orders.internal/.well-known/jwks.json";

    fn set() -> JwkSet {
        JwkSet::from_keys(vec![SigningKey::generate().unwrap().public_key().clone()])
    }

    #[test]
    fn round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("orders.json");
        let written = set();
        // The second write replaces the first.
        write_atomically(&path, b"{}").unwrap();
        let contents = serde_json::to_vec(&SnapshotFile {
            version: VERSION,
            url: URL.into(),
            fetched_at: 1_700_000_000,
            ttl_s: 300,
            jwks: serde_json::from_str(&written.to_json()).unwrap(),
        })
        .unwrap();
        write_atomically(&path, &contents).unwrap();

        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!temporary_path(&path).exists());
        let read = read_blocking(&path, URL, 256 * 1024).unwrap();
        assert_eq!(read.ttl, Duration::from_secs(300));
        assert_eq!(read.set.keys()[0].kid(), written.keys()[0].kid());
    }

    #[test]
    fn other_url_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("orders.json");
        let contents = format!(
            r#"{{"version":1,"url":"{URL}","fetched_at":1,"ttl_s":1,"jwks":{}}}"#,
            set().to_json()
        );
        write_atomically(&path, contents.as_bytes()).unwrap();
        let err = read_blocking(&path, "https://billing.internal/jwks.json", 4096)
            .err()
            .unwrap();
        assert!(err.contains("not of https://billing.internal"), "{err}");
    }

    #[test]
    fn group_writable_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("orders.json");
        write_atomically(&path, b"{}").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o660)).unwrap();
        let err = read_blocking(&path, URL, 4096).err().unwrap();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
