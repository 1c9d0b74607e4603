//! File names of the key directory layout that `trustwire keygen` writes:
//!
//! ```text
//! DIR/keys.json     manifest: service id and each key's kid, state and times
//! DIR/<kid>.jwk     private JWK, mode 0600
//! DIR/jwks.json     public JWK Set served to verifiers
//! ```
//!
//! NOTE: the library's `KeyDir` owns this layout but keeps the file names
//! private; these constants must follow it.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use trustwire::ServiceId;

use crate::error::CliError;

/// The manifest file.
pub(crate) const MANIFEST_FILE: &str = "keys.json";

/// The public JWK Set file.
pub(crate) const JWKS_FILE: &str = "jwks.json";

/// Returns the path of the private key file of `kid`.
pub(crate) fn private_key_path(dir: &Path, kid: &str) -> PathBuf {
    dir.join(format!("{kid}.jwk"))
}

/// The fields of the manifest that the CLI reads; others are ignored.
#[derive(Deserialize)]
struct ManifestService {
    service: ServiceId,
}

/// Reads the service id from the manifest, without loading any private key,
/// so a JWKS server needs no access to the private key files.
pub(crate) fn read_service(dir: &Path) -> Result<ServiceId, CliError> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read(&path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => CliError::usage(format!(
            "{} not found; create the key directory with `trustwire keygen --service ID --dir {}`",
            path.display(),
            dir.display()
        )),
        _ => CliError::usage(format!("cannot read {}: {err}", path.display())),
    })?;

    let manifest: ManifestService = serde_json::from_slice(&text)
        .map_err(|err| CliError::usage(format!("invalid key directory manifest {}: {err}", path.display())))?;
    Ok(manifest.service)
}
