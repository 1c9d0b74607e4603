//! `trustwire keygen`: creates a key directory with a new signing key and
//! a new encryption key.

use std::path::PathBuf;
use std::process::ExitCode;

use trustwire::{KeyDir, ServiceId};

use crate::error::{CliError, key_error};
use crate::keydir::{MANIFEST_FILE, private_key_path};
use crate::output::print_stdout;

/// Arguments of `trustwire keygen`.
#[derive(Debug, clap::Args)]
pub(crate) struct KeygenArgs {
    /// Service id the keys belong to, used as the `iss` claim of signed
    /// tokens: a name such as `orders` or a SPIFFE ID
    #[arg(long, value_name = "ID")]
    service: ServiceId,

    /// Directory to create (mode 0700) and write the keys to; it must not
    /// already contain a key directory
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
}

/// Creates the key directory and prints the kid and every file written.
pub(crate) fn run(args: KeygenArgs) -> Result<ExitCode, CliError> {
    let keys = KeyDir::create(&args.dir, args.service).map_err(key_error)?;
    let kid = keys.active_key().kid();

    let mut report = format!(
        "service: {}\nkid: {kid}\nprivate key: {} (mode 0600)\n",
        keys.service(),
        private_key_path(keys.path(), kid).display(),
    );
    for encryption_key in keys.encryption_keys() {
        let enc_kid = encryption_key.kid();
        report.push_str(&format!(
            "encryption kid: {enc_kid}\nencryption private key: {} (mode 0600)\n",
            private_key_path(keys.path(), enc_kid).display()
        ));
    }
    report.push_str(&format!(
        "public JWKS: {}\nmanifest: {}\n",
        keys.jwks_path().display(),
        keys.path().join(MANIFEST_FILE).display()
    ));
    print_stdout(&report)?;
    Ok(ExitCode::SUCCESS)
}
