//! trustwire gives every service its own identity and puts a short-lived
//! signed token (JWS) on every message it publishes and every HTTP call it
//! makes. Receivers verify the token against the sender's published keys
//! (JWKS), check that it is bound to this exact message or request, apply a
//! policy and reject replays.
//!
//! # Getting started
//!
//! ```
//! use trustwire::jwks::{KeySource, TrustStore};
//! use trustwire::{Binding, Expected, ServiceId, Signer, SigningKey, Verifier};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The sender: a service id and its signing key.
//! let orders = ServiceId::new("orders")?;
//! let key = SigningKey::generate()?;
//! let public_keys = trustwire::jwks::JwkSet::from_keys(vec![key.public_key().clone()]);
//! let signer = Signer::new(orders.clone(), key);
//!
//! let payload = br#"{"order":42}"#;
//! let channel = Binding::channel("nats:orders.created")?;
//! let token = signer
//!     .token(ServiceId::new("payments")?)
//!     .binding(channel.clone())
//!     .payload(payload)
//!     .sign()?;
//!
//! // The receiver trusts orders' keys (usually fetched from its JWKS URL).
//! let trust = TrustStore::new().trust(orders, KeySource::inline(public_keys));
//! let verifier = Verifier::builder(ServiceId::new("payments")?, trust).build()?;
//! let verified = verifier.verify(&token, &Expected::message(channel, payload)).await?;
//! assert_eq!(verified.claims.iss, "orders");
//! # Ok(())
//! # }
//! ```
//!
//! Every rejection carries a stable [`Reason`] code; see `docs/envelope.md`
//! for the wire format.

pub mod clock;
pub mod config;
mod encoding;
pub mod envelope;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod jwks;
pub mod keys;
pub mod policy;
pub mod replay;
pub mod seal;

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "nats")]
pub mod nats;

pub use envelope::{Binding, Claims, Expected, Reason, Rejection, Signer, Verified, Verifier};
pub use identity::{Audience, InvalidServiceId, ServiceId};
pub use keys::{KeyDir, KeyError, PublicKey, SigningKey};
pub use policy::Policy;
