//! The signing publisher: adds a `trustwire-token` header to every message
//! and publishes with confirms enabled.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};

use super::channel_binding;
use super::headers::{TOKEN_HEADER, find_short_string, header_frame_len, with_long_string};
use crate::Signer;
use crate::envelope::{Reason, SignError};
use crate::identity::Audience;

/// Errors from [`SignedPublisher`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The exchange or routing key is longer than the 255 bytes AMQP allows.
    #[error("the {what} {value:?} is longer than 255 bytes")]
    NameTooLong {
        /// `exchange` or `routing key`.
        what: &'static str,
        /// The first 80 characters of the name.
        value: String,
    },

    /// The exchange and routing key do not form a valid `chn` claim: an
    /// exchange name with `/`, or control characters.
    #[error("cannot bind the token to this exchange and routing key: {0}")]
    InvalidChannel(String),

    /// The token could not be signed; a lifetime above the signer's
    /// `max_ttl` ends here.
    #[error("cannot sign the token")]
    Sign(#[from] SignError),

    /// A caller header contains an AMQP short string, which RabbitMQ does
    /// not accept in field tables: it would close the connection.
    #[error(
        "header {name:?} contains an AMQP short string, which RabbitMQ rejects by closing the connection; use AMQPValue::LongString"
    )]
    ShortStringHeader {
        /// The top-level header that contains the short string.
        name: String,
    },

    /// The properties with the token do not fit in one frame of the
    /// connection's negotiated `frame_max`. Nothing was sent: RabbitMQ would
    /// close the connection on such a frame.
    #[error(
        "the message properties with the token take {header_frame_bytes} bytes, above the connection's frame_max of {frame_max}; send fewer or smaller headers"
    )]
    TooLarge {
        /// The size of the content header frame that would have been sent.
        header_frame_bytes: usize,
        /// The negotiated maximum frame size.
        frame_max: u32,
    },

    /// The properties could not be encoded.
    #[error("{0}")]
    Encoding(String),

    /// The broker did not confirm the message (a `basic.nack`): it was not
    /// stored, so publish it again.
    #[error("the broker rejected the message (basic.nack) published to {exchange:?} with routing key {routing_key:?}")]
    Nacked {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
    },

    /// The broker returned a mandatory message that no queue was bound for.
    #[error(
        "the broker returned the message published to {exchange:?} with routing key {routing_key:?}: {reply_code} {reply_text}"
    )]
    Returned {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
        /// The AMQP reply code, such as 312 (`NO_ROUTE`).
        reply_code: u16,
        /// The broker's reply text.
        reply_text: String,
    },

    /// The channel or connection failed.
    #[error("AMQP channel or connection failed")]
    Amqp(#[from] lapin::Error),
}

impl PublishError {
    /// Returns the rejection reason this error corresponds to, when it has
    /// one: [`Reason::TooLarge`] for [`PublishError::TooLarge`].
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Self::TooLarge { .. } => Some(Reason::TooLarge),
            _ => None,
        }
    }
}

/// Options of a [`SignedPublisher`].
#[derive(Debug)]
#[must_use = "a publisher is only created by build or build_on_channel"]
pub struct PublisherBuilder {
    signer: Signer,
    audience: Audience,
    ttl: Option<Duration>,
}

impl PublisherBuilder {
    /// Sets the lifetime of every token this publisher signs. Default: the
    /// signer's default lifetime (60 s unless configured).
    ///
    /// Messages that wait in a durable queue need a lifetime longer than the
    /// time they may wait. The signer's `max_ttl` bounds it, and receivers
    /// must raise their verifier's `max_lifetime` to match.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Opens a channel on `connection`, enables publisher confirms on it and
    /// builds the publisher. The frame size limit is read from the connection.
    pub async fn build(self, connection: &Connection) -> Result<SignedPublisher, PublishError> {
        let channel = connection.create_channel().await?;
        let frame_max = connection.configuration().frame_max();
        self.build_on_channel(channel, frame_max).await
    }

    /// Enables publisher confirms on `channel` and builds the publisher.
    /// `frame_max` must be the connection's negotiated value,
    /// `connection.configuration().frame_max()`.
    pub async fn build_on_channel(self, channel: Channel, frame_max: u32) -> Result<SignedPublisher, PublishError> {
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        tracing::info!(iss = %self.signer.service(), kid = self.signer.kid(), channel = channel.id(), frame_max, "AMQP signing publisher ready");
        Ok(SignedPublisher {
            channel,
            signer: self.signer,
            audience: self.audience,
            ttl: self.ttl,
            frame_max,
        })
    }
}

/// Publishes messages on a lapin channel with a signed `trustwire-token`
/// header, bound to the exchange, the routing key and the body.
///
/// The token's `chn` claim is `amqp:<exchange>/<routing key>`, with the
/// default exchange written as an empty name (`amqp:/orders`). The caller's
/// properties and headers are sent unchanged, apart from the token header,
/// which replaces any header of that name. Publisher confirms are enabled on
/// the channel when the publisher is built.
///
/// ```no_run
/// use lapin::{BasicProperties, Connection, ConnectionProperties, options::BasicPublishOptions};
/// use trustwire::amqp::SignedPublisher;
/// use trustwire::{ServiceId, Signer, SigningKey};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let connection = Connection::connect("amqp://127.0.0.1:5672/%2f", ConnectionProperties::default()).await?;
/// let signer = Signer::new(ServiceId::new("orders")?, SigningKey::generate()?);
/// let publisher = SignedPublisher::builder(signer, ServiceId::new("billing")?).build(&connection).await?;
/// publisher
///     .publish("events", "orders.created", BasicPublishOptions::default(), br#"{"order":42}"#, BasicProperties::default())
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SignedPublisher {
    channel: Channel,
    signer: Signer,
    audience: Audience,
    ttl: Option<Duration>,
    frame_max: u32,
}

impl SignedPublisher {
    /// Starts configuring a publisher that signs with `signer` for `audience`.
    pub fn builder(signer: Signer, audience: impl Into<Audience>) -> PublisherBuilder {
        PublisherBuilder {
            signer,
            audience: audience.into(),
            ttl: None,
        }
    }

    /// Returns the channel the publisher sends on.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Returns the connection's negotiated maximum frame size.
    pub fn frame_max(&self) -> u32 {
        self.frame_max
    }

    /// Signs and publishes a message, returning lapin's confirm future: it
    /// resolves to the broker's `Confirmation` (ack, nack, or ack with the
    /// returned message when a mandatory publish was unroutable).
    ///
    /// Nothing is sent when signing fails, when a header is a short string or
    /// when the properties with the token do not fit in one frame.
    pub async fn basic_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        options: BasicPublishOptions,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<PublisherConfirm, PublishError> {
        let exchange_name = short_string("exchange", exchange)?;
        let routing_key_name = short_string("routing key", routing_key)?;
        let properties = self.sign_properties(exchange, routing_key, payload, properties)?;

        let confirm = self
            .channel
            .basic_publish(exchange_name, routing_key_name, options, payload, properties)
            .await?;
        Ok(confirm)
    }

    /// Signs and publishes a message, then waits for the broker's confirm.
    ///
    /// Returns [`PublishError::Nacked`] when the broker did not store the
    /// message and [`PublishError::Returned`] when a mandatory message could
    /// not be routed.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        options: BasicPublishOptions,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let confirmation = self
            .basic_publish(exchange, routing_key, options, payload, properties)
            .await?
            .await?;
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(PublishError::Returned {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
                reply_code: returned.reply_code,
                reply_text: returned.reply_text.to_string(),
            }),
            Confirmation::Nack(_) => Err(PublishError::Nacked {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
        }
    }

    /// Returns `properties` with the signed token header, checked to fit in
    /// one frame.
    fn sign_properties(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<BasicProperties, PublishError> {
        let headers = properties.headers().clone().unwrap_or_default();
        if let Some(name) = find_short_string(&headers) {
            return Err(PublishError::ShortStringHeader { name });
        }
        if headers.contains_key(TOKEN_HEADER) {
            tracing::debug!(exchange, routing_key, "replacing an existing {TOKEN_HEADER} header");
        }

        let mut token = self
            .signer
            .token(self.audience.clone())
            .binding(channel_binding(exchange, routing_key).map_err(PublishError::InvalidChannel)?)
            .payload(payload);
        if let Some(ttl) = self.ttl {
            token = token.ttl(ttl);
        }
        let token = token.sign()?;

        // NOTE: always a long string. lapin would send a short string as is,
        // and RabbitMQ closes the connection on one.
        let properties = properties.with_headers(with_long_string(headers, TOKEN_HEADER, token));
        let header_frame_bytes = header_frame_len(&properties).map_err(PublishError::Encoding)?;
        if header_frame_bytes > usize::try_from(self.frame_max).unwrap_or(usize::MAX) {
            return Err(PublishError::TooLarge {
                header_frame_bytes,
                frame_max: self.frame_max,
            });
        }
        Ok(properties)
    }
}

fn short_string(what: &'static str, name: &str) -> Result<ShortString, PublishError> {
    ShortString::try_new(name).map_err(|_| PublishError::NameTooLong {
        what,
        value: name.chars().take(80).collect(),
    })
}
