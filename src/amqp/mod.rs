//! RabbitMQ transport (AMQP 0-9-1, over lapin): signing publishers and
//! verifying consumers.
//!
//! - [`SignedPublisher`] adds a `trustwire-token` header (an AMQP long
//!   string) to every message, bound to `amqp:<exchange>/<routing key>` and
//!   to the body, and publishes with confirms.
//! - [`VerifyingConsumer`] verifies that header on every delivery, hands
//!   verified messages to the application with the sender's claims, and
//!   sends rejected ones to a [`DeadLetter`] destination.
//! - [`SealedPublisher`] encrypts each body to the audience's encryption
//!   keys, and [`VerifyingConsumer::opening`] builds a consumer that opens
//!   them (see `docs/sealing.md`).
//!
//! See `docs/rabbitmq.md` for the headers, the dead-lettering setup and how
//! to choose token lifetimes for durable queues.

mod consumer;
mod dead_letter;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;
mod headers;
mod publisher;
mod sealed;
mod settle;

pub use consumer::{
    ConsumeError, ConsumerBuilder, ConsumerStats, DEFAULT_PREFETCH, VerifiedDelivery, VerifiedMessage,
    VerifyingConsumer,
};
pub use dead_letter::DeadLetter;
pub use headers::{
    CONSUMER_HEADER, HANDLER_ERROR_HEADER, HEADERS_DROPPED_HEADER, ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER, REJECTED_HEADER, TOKEN_HEADER,
};
pub use publisher::{PublishError, PublisherBuilder, SignedPublisher};
pub use sealed::{SEALED_HEADER, SealedPublishError, SealedPublisher, SealedPublisherBuilder};

use crate::envelope::Binding;

/// Builds the `chn` binding of a message: `amqp:<exchange>/<routing key>`,
/// with the default exchange written as an empty name.
///
/// An exchange name containing `/` is refused: `amqp:a/b/c` could otherwise
/// be exchange `a` with routing key `b/c` or exchange `a/b` with routing key
/// `c`, and a token for one would verify for the other.
pub(crate) fn channel_binding(exchange: &str, routing_key: &str) -> Result<Binding, String> {
    if exchange.contains('/') {
        return Err(format!(
            "the exchange name {exchange:?} contains '/', which would make the amqp: channel ambiguous"
        ));
    }
    Binding::channel(format!("amqp:{exchange}/{routing_key}")).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_exchange_is_empty_name() {
        assert_eq!(
            channel_binding("", "orders").unwrap(),
            Binding::Channel("amqp:/orders".into())
        );
        assert_eq!(
            channel_binding("events", "orders.created").unwrap(),
            Binding::Channel("amqp:events/orders.created".into())
        );
        assert_eq!(
            channel_binding("events", "a/b").unwrap(),
            Binding::Channel("amqp:events/a/b".into())
        );
    }

    #[test]
    fn ambiguous_or_invalid_channels_refused() {
        assert!(channel_binding("a/b", "c").is_err());
        assert!(channel_binding("events", "bad\nkey").is_err());
    }
}
