//! Sealed messages: the payload encrypted to the recipient services (JWE,
//! `ECDH-ES+A256KW` with `A256GCM`) and a signed token whose `dig` covers
//! the JWE bytes.
//!
//! A sender seals with a [`Sealer`], and a receiver opens with an [`Opener`].
//! The opener verifies the token first and then decrypts with the local key
//! that the JWE names by `kid`. Last, it checks that the JWE protected
//! header's `iss` and `jti` equal the token's. That check stops another
//! service from re-signing someone else's ciphertext as its own, because
//! AES-GCM authenticates the header and it cannot be changed without the
//! content key.
//!
//! ```
//! use trustwire::jwks::{JwkSet, KeySource, TrustStore};
//! use trustwire::keys::EncryptionKey;
//! use trustwire::seal::{Opener, Recipient, Sealer};
//! use trustwire::{Binding, Expected, ServiceId, Signer, SigningKey, Verifier};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The receiver, payments, owns an encryption key and publishes its public half.
//! let payments = ServiceId::new("payments")?;
//! let payments_key = EncryptionKey::generate()?;
//! let payments_jwks = JwkSet::default().with_encryption_keys(vec![payments_key.public_key().clone()]);
//!
//! // The sender, orders, seals to payments' key.
//! let orders = ServiceId::new("orders")?;
//! let signing_key = SigningKey::generate()?;
//! let orders_jwks = JwkSet::from_keys(vec![signing_key.public_key().clone()]);
//! let sealer = Sealer::new(Signer::new(orders.clone(), signing_key));
//! let recipients = [Recipient::from_jwks(payments.clone(), &payments_jwks)?];
//! let channel = Binding::channel("nats:orders.created")?;
//! let sealed = sealer.seal(&recipients, channel.clone(), br#"{"order":42}"#)?;
//!
//! // payments opens it: the JWE is the payload that arrived.
//! let trust = TrustStore::new().trust(orders, KeySource::inline(orders_jwks));
//! let verifier = Verifier::builder(payments, trust).build()?;
//! let opener = Opener::new(verifier, vec![payments_key])?;
//! let opened = opener.open(&sealed.token, &Expected::message(channel, &sealed.jwe)).await?;
//! assert_eq!(opened.plaintext, br#"{"order":42}"#);
//! # Ok(())
//! # }
//! ```
//!
//! See `docs/sealing.md` for what is and is not encrypted and the threat model.

mod batch;
mod jwe;
mod kdf;
mod opener;
mod sealer;

#[cfg(test)]
mod vector_tests;

pub use crate::keys::KEY_MANAGEMENT_ALG;
pub use opener::{DEFAULT_MAX_SEALED_BYTES, Opened, Opener, OpenerBuilder, OpenerConfigError};
pub use sealer::{Recipient, RecipientDirectory, SealBuilder, SealError, Sealed, Sealer};

/// The JWE content encryption algorithm of every sealed message.
pub const CONTENT_ENCRYPTION: &str = "A256GCM";

/// Maximum number of recipients of one sealed message.
pub const MAX_RECIPIENTS: usize = 64;
