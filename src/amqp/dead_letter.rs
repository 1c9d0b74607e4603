//! Dead-letter destinations for rejected deliveries: an exchange trustwire
//! publishes to, or the queue's own `x-dead-letter-exchange`.

use std::fmt;

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Acker, BasicProperties, Channel, Confirmation};

use super::consumer::ConsumeError;
use super::headers::{
    CONSUMER_HEADER, HEADERS_DROPPED_HEADER, ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER, header_frame_len,
    with_long_string,
};
use super::settle::{SETTLE_TIMEOUT, Settle, Waited, settle, wait_while_open};

/// Where a consumer sends the deliveries it rejects.
///
/// There is no default: every consumer names a destination for rejected
/// messages, so none is dropped without a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadLetter {
    /// Publish a copy to this exchange, with the original properties, headers
    /// and body plus a `trustwire-rejected` header carrying the reason code,
    /// wait for the broker's confirm, then acknowledge the original.
    ///
    /// The copy is published as mandatory: when no queue is bound to the
    /// exchange the broker returns it, the original stays unacknowledged and
    /// the consumer stops with [`ConsumeError::DeadLetter`].
    Exchange {
        /// The dead-letter exchange, which must exist.
        exchange: String,
        /// The routing key of the copy; `None` keeps the original routing key.
        routing_key: Option<String>,
    },
    /// Reject the delivery with `requeue = false`, so RabbitMQ moves it to the
    /// `x-dead-letter-exchange` configured on the queue (by queue argument or
    /// policy), with its own `x-death` header.
    ///
    /// The copy then carries no `trustwire-rejected` header: the reason is
    /// only in the consumer's log line. A queue without a dead-letter
    /// exchange discards rejected messages, so use this only for queues that
    /// have one.
    QueueDeadLetterExchange,
}

impl DeadLetter {
    /// Publishes rejected deliveries to `exchange`, keeping their routing key.
    pub fn exchange(exchange: impl Into<String>) -> Self {
        Self::Exchange {
            exchange: exchange.into(),
            routing_key: None,
        }
    }

    /// Publishes rejected deliveries to `exchange` with `routing_key`.
    pub fn exchange_with_routing_key(exchange: impl Into<String>, routing_key: impl Into<String>) -> Self {
        Self::Exchange {
            exchange: exchange.into(),
            routing_key: Some(routing_key.into()),
        }
    }
}

/// The action the consumer took on a delivery it did not hand to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Published to the configured dead-letter exchange and acknowledged.
    DeadLettered,
    /// Rejected with `requeue = false` into the queue's dead-letter exchange.
    QueueDeadLettered,
    /// Rejected with `requeue = true` for one more attempt.
    Requeued,
}

impl Disposition {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::DeadLettered => "dead_lettered",
            Self::QueueDeadLettered => "queue_dead_letter_exchange",
            Self::Requeued => "requeued",
        }
    }
}

impl fmt::Display for Disposition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A delivery the consumer is giving up on, with the header that gives the reason.
pub(crate) struct Rejected<'a> {
    pub(crate) exchange: &'a str,
    pub(crate) routing_key: &'a str,
    pub(crate) properties: &'a BasicProperties,
    pub(crate) payload: &'a [u8],
    /// The header that says why (`trustwire-rejected` or
    /// `trustwire-handler-error`) and its value.
    pub(crate) why: (&'static str, String),
}

/// Sends `rejected` to the `dead_letter` destination, then settles the delivery.
///
/// With [`DeadLetter::Exchange`] the copy must be confirmed by the broker
/// before the original is acknowledged. Otherwise the original is left
/// unacknowledged, so RabbitMQ requeues it when the channel closes, and the
/// error is returned.
pub(crate) async fn dead_letter(
    channel: &Channel,
    frame_max: u32,
    dead_letter: &DeadLetter,
    consumer: &str,
    acker: &Acker,
    rejected: Rejected<'_>,
) -> Result<Disposition, ConsumeError> {
    let (exchange, routing_key) = match dead_letter {
        DeadLetter::QueueDeadLetterExchange => {
            settle(channel, acker, Settle::DeadLetterInQueue).await?;
            return Ok(Disposition::QueueDeadLettered);
        }
        DeadLetter::Exchange { exchange, routing_key } => {
            (exchange, routing_key.as_deref().unwrap_or(rejected.routing_key))
        }
    };

    // A copy published back to the exchange the message came from would be
    // routed to this queue again and rejected again, forever.
    if exchange == rejected.exchange {
        return Err(ConsumeError::DeadLetter(format!(
            "the dead-letter exchange {exchange:?} is the exchange the rejected message arrived from; use a separate exchange"
        )));
    }

    let properties = copy_properties(&rejected, consumer, frame_max)?;
    let exchange_name = short_string(exchange)?;
    let routing_key_name = short_string(routing_key)?;
    let options = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let confirm = channel
        .basic_publish(exchange_name, routing_key_name, options, rejected.payload, properties)
        .await?;
    let confirmation = match wait_while_open(channel, confirm).await {
        Waited::Done(confirmation) => confirmation?,
        Waited::ChannelGone => return Err(ConsumeError::ChannelClosed),
        Waited::TimedOut => {
            return Err(ConsumeError::DeadLetter(format!(
                "the broker did not confirm the copy published to {exchange:?} within {} s",
                SETTLE_TIMEOUT.as_secs()
            )));
        }
    };

    match confirmation {
        Confirmation::Ack(None) => {}
        Confirmation::Ack(Some(returned)) => {
            return Err(ConsumeError::DeadLetter(format!(
                "the dead-letter exchange {exchange:?} returned the copy ({} {}): bind a queue to it for routing key {routing_key:?}",
                returned.reply_code, returned.reply_text
            )));
        }
        Confirmation::Nack(_) => {
            return Err(ConsumeError::DeadLetter(format!(
                "the broker did not confirm the copy published to {exchange:?}"
            )));
        }
        Confirmation::NotRequested => {
            return Err(ConsumeError::DeadLetter(
                "publisher confirms are not enabled on the consumer's channel".into(),
            ));
        }
    }

    settle(channel, acker, Settle::Ack).await?;
    Ok(Disposition::DeadLettered)
}

/// Builds the properties of the dead-lettered copy: the original ones, with
/// the trustwire headers added. When that would not fit in one frame, the
/// original headers are left out and `trustwire-headers-dropped` is set.
fn copy_properties(rejected: &Rejected<'_>, consumer: &str, frame_max: u32) -> Result<BasicProperties, ConsumeError> {
    let original = rejected.properties.headers().clone().unwrap_or_default();
    let full = rejected
        .properties
        .clone()
        .with_headers(add_reason(original, rejected, consumer));
    let frame_max = usize::try_from(frame_max).unwrap_or(usize::MAX);
    if header_frame_len(&full).map_err(ConsumeError::DeadLetter)? <= frame_max {
        return Ok(full);
    }

    let mut headers = add_reason(FieldTable::default(), rejected, consumer);
    headers.insert(ShortString::from(HEADERS_DROPPED_HEADER), AMQPValue::Boolean(true));
    let reduced = rejected.properties.clone().with_headers(headers);
    if header_frame_len(&reduced).map_err(ConsumeError::DeadLetter)? <= frame_max {
        return Ok(reduced);
    }
    Err(ConsumeError::DeadLetter(format!(
        "the message properties do not fit in a frame of {frame_max} bytes even without the original headers"
    )))
}

fn add_reason(headers: FieldTable, rejected: &Rejected<'_>, consumer: &str) -> FieldTable {
    let (name, value) = &rejected.why;
    let headers = with_long_string(headers, name, value.as_str());
    let headers = with_long_string(headers, ORIGINAL_EXCHANGE_HEADER, rejected.exchange);
    let headers = with_long_string(headers, ORIGINAL_ROUTING_KEY_HEADER, rejected.routing_key);
    with_long_string(headers, CONSUMER_HEADER, consumer)
}

fn short_string(name: &str) -> Result<ShortString, ConsumeError> {
    ShortString::try_new(name).map_err(|_| {
        ConsumeError::DeadLetter(format!(
            "the dead-letter exchange or routing key {name:?} is longer than 255 bytes"
        ))
    })
}
