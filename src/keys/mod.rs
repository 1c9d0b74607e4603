//! Signing keys, encryption keys, public keys, key ids and the key directory.

mod algorithm;
mod dir;
mod encryption;
mod lifecycle;
mod public;
mod signing;
mod thumbprint;

use std::path::PathBuf;

pub use algorithm::Algorithm;
pub use dir::KeyDir;
pub use encryption::{EncryptionCurve, EncryptionKey, EncryptionPublicKey, KEY_MANAGEMENT_ALG};
pub(crate) use encryption::{ParsedEncryptionJwk, Point};
pub use lifecycle::{
    DEFAULT_PRE_PUBLISH, DEFAULT_RELOAD_INTERVAL, DEFAULT_RETENTION, KeyDirWatcher, KeyRecord, KeyState, Revocation,
    Rotation, Transition, reload_signer,
};
pub(crate) use public::{ParsedJwk, has_strict_ed25519_encoding};
pub use public::{PublicKey, single_verification_backend};
pub use signing::SigningKey;

#[cfg(test)]
use thumbprint::rsa_thumbprint;
#[cfg(test)]
mod vector_tests;

/// Errors from creating, parsing or loading keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A JWK is malformed or of an unsupported kind.
    #[error("invalid JWK: {0}")]
    InvalidJwk(String),

    /// An Ed25519 public key is a small-order point. Signatures under such a
    /// key can be forged without the private key, so it is never used.
    #[error("weak Ed25519 public key: the point has small order, so anyone can forge signatures for it")]
    WeakKey,

    /// A public key or key set contains private or symmetric key material.
    #[error("public key contains the private member {member:?}; publish only public keys")]
    PrivateMaterial {
        /// The private member found, such as `d`.
        member: &'static str,
    },

    /// The `x` of a private JWK is not the public key of its `d`.
    #[error("private JWK's \"x\" does not match the public key derived from its \"d\"")]
    MismatchedPrivateKey,

    /// A private key file can be read by group or others.
    #[error("private key file {path} is readable by group or others (mode {mode:03o}); run `chmod 600 {path}`")]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// A key file or directory could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The key directory's manifest is missing or invalid.
    #[error("invalid key directory {path}: {reason}")]
    InvalidKeyDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// The operating system's random number generator failed.
    #[error("random number generator failed: {0}")]
    Random(String),
}
