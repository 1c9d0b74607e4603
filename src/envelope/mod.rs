//! The signed envelope: claims, bindings, the signer, the verifier and the
//! rejection reason codes.

mod batch;
mod binding;
mod claims;
mod rejection;
mod signer;
mod transport_batch;
mod verifier;

pub use batch::MAX_SIGNATURE_BATCH;
pub use binding::{Binding, InvalidBinding, MAX_BINDING_LEN, canonical_target, payload_digest};
pub use claims::Claims;
pub use rejection::{Reason, Rejection};
pub(crate) use signer::random_jti;
pub use signer::{DEFAULT_TTL, SignError, Signer, SignerBuilder, TokenBuilder};
pub(crate) use transport_batch::verify_checked;
pub use verifier::{
    DEFAULT_LEEWAY, DEFAULT_MAX_LIFETIME, DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_MAX_TOKEN_BYTES, Expected,
    MAX_SAFE_LEEWAY, Verified, Verifier, VerifierBuilder, VerifierConfigError,
};

/// The `typ` header of a trustwire token.
pub const TOKEN_TYP: &str = "trustwire+jwt";
