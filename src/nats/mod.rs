//! NATS transport (feature `nats`): signing publishers, verifying
//! subscribers, signed request/reply, JetStream publish and pull consumers,
//! dead-lettering and a replay guard shared through JetStream KV. Sealed
//! (encrypted) messages have their own publishers and opening consumers.
//!
//! Payloads are never changed: the token travels in the `Trustwire-Token`
//! header, bound to `nats:<subject>` (`chn`) and to the payload digest
//! (`dig`).
//!
//! ```no_run
//! use trustwire::nats::{SignedPublisher, VerifyingSubscriber};
//! use trustwire::{ServiceId, Signer, SigningKey, Verifier};
//! use trustwire::jwks::{JwkSet, KeySource, TrustStore};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = async_nats::connect("nats://127.0.0.1:4222").await?;
//!
//! // The sender wraps its client and signs for the receiving service.
//! let key = SigningKey::generate()?;
//! let orders_keys = JwkSet::from_keys(vec![key.public_key().clone()]);
//! let signer = Signer::new(ServiceId::new("orders")?, key);
//! let publisher = SignedPublisher::new(client.clone(), signer, ServiceId::new("payments")?);
//!
//! // The receiver verifies every message; rejected ones are dead-lettered.
//! let trust = TrustStore::new().trust(ServiceId::new("orders")?, KeySource::inline(orders_keys));
//! let verifier = Verifier::builder(ServiceId::new("payments")?, trust).build()?;
//! let mut subscriber = VerifyingSubscriber::builder(client, verifier)
//!     .queue_subscribe("orders.created", "payments")
//!     .await?;
//!
//! publisher.publish("orders.created", r#"{"order":42}"#.into()).await?;
//! if let Some(message) = subscriber.next().await {
//!     println!("order from {}", message.issuer());
//! }
//! # Ok(())
//! # }
//! ```
//!
//! See `docs/nats.md` for the headers, dead-lettering, JetStream notes and
//! the choice of replay guard.

mod dead_letter;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;
mod headers;
mod jetstream;
mod kv;
mod publisher;
mod request;
mod sealed;
mod sealed_jetstream;
mod subscriber;

pub use dead_letter::{DEFAULT_DEAD_LETTER_SUBJECT, DeadLetter};
pub use headers::{
    HeadersTooLarge, InvalidHeader, MAX_JETSTREAM_HEADER_BYTES, ORIGINAL_HEADER_PREFIX, ORIGINAL_SEQUENCE_HEADER,
    ORIGINAL_STREAM_HEADER, ORIGINAL_SUBJECT_HEADER, REJECTED_HEADER, TOKEN_HEADER, channel_binding,
};
pub use jetstream::{
    ConsumerBuilder, ConsumerError, DEFAULT_TRANSIENT_RETRY_DELAY, JetStreamDelivery, JetStreamPublishError,
    SignedJetStream, VerifyingConsumer,
};
pub use kv::{DEFAULT_REPLAY_BUCKET, KvReplayGuard, KvReplayGuardError, recommended_max_age};
pub use publisher::{DEFAULT_REQUEST_TIMEOUT, PublishError, SignedPublisher};
pub use request::RequestError;
pub use sealed::{
    OpenedMessage, OpeningSubscriber, OpeningSubscriberBuilder, SEALED_HEADER, SealedPublishError, SealedPublisher,
};
pub use sealed_jetstream::{OpenedJetStreamDelivery, OpeningConsumer, OpeningConsumerBuilder, SealedJetStream};
pub use subscriber::{SubscriberBuilder, VerifiedMessage, VerifyingSubscriber};
