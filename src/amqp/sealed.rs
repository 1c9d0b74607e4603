//! Sealed messages on RabbitMQ: the body is a JWE to the encryption keys of
//! the audience, the token signs the JWE, and a `trustwire-sealed` header
//! marks the message for opening.
//!
//! The marker is not authenticated, so it only routes a delivery to the
//! right check. A consumer built with [`super::VerifyingConsumer::opening`]
//! hands on nothing it did not open, and a plain one rejects a marked
//! delivery as `wrong_type` instead of passing the JWE on as the body.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};

use super::channel_binding;
use super::headers::{TOKEN_HEADER, find_short_string, header_frame_len, with_long_string};
use super::publisher::PublishError;
use crate::envelope::{Reason, Rejection};
use crate::identity::Audience;
use crate::seal::{RecipientDirectory, SealError, Sealer};

/// The header that marks a sealed message, as the AMQP long string `1`. A
/// consumer treats any delivery with the header (under any case, of any
/// type) as sealed.
pub const SEALED_HEADER: &str = "trustwire-sealed";

/// Errors from [`SealedPublisher`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealedPublishError {
    /// The recipients could not be resolved from the audience (a service
    /// missing from the directory, a key source that cannot be fetched, a
    /// JWK Set without an encryption key) or the message could not be
    /// sealed and signed.
    #[error("cannot seal the message")]
    Seal(#[from] SealError),

    /// Everything a signed publish can fail on, from a name above 255 bytes
    /// to a broker nack; see [`PublishError`].
    #[error(transparent)]
    Publish(#[from] PublishError),
}

impl SealedPublishError {
    /// Returns the rejection reason this error corresponds to, when it has
    /// one: [`Reason::TooLarge`] for properties above the frame size.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Self::Publish(err) => err.reason(),
            Self::Seal(_) => None,
        }
    }
}

/// Returns whether delivery properties carry the sealed marker, under any case.
fn is_sealed(properties: &BasicProperties) -> bool {
    properties.headers().as_ref().is_some_and(|headers| {
        headers
            .inner()
            .keys()
            .any(|name| name.as_str().eq_ignore_ascii_case(SEALED_HEADER))
    })
}

/// Rejects a sealed delivery that reached a consumer of plain messages:
/// verified as plain, its JWE would be handed on as the body.
pub(crate) fn reject_sealed(properties: &BasicProperties) -> Result<(), Rejection> {
    if !is_sealed(properties) {
        return Ok(());
    }
    Err(Rejection::new(
        Reason::WrongType,
        format!(
            "the delivery is sealed ({SEALED_HEADER} header), but this consumer verifies plain messages; build it with VerifyingConsumer::opening"
        ),
    ))
}

/// Rejects a plain delivery (no marker) that reached a consumer of sealed
/// messages.
pub(crate) fn require_sealed(properties: &BasicProperties) -> Result<(), Rejection> {
    if is_sealed(properties) {
        return Ok(());
    }
    Err(Rejection::new(
        Reason::WrongType,
        format!("the delivery is plain (no {SEALED_HEADER} header), but this consumer accepts only sealed messages"),
    ))
}

/// Options of a [`SealedPublisher`].
#[derive(Debug)]
#[must_use = "a publisher is only created by build or build_on_channel"]
pub struct SealedPublisherBuilder {
    sealer: Sealer,
    audience: Audience,
    directory: RecipientDirectory,
    ttl: Option<Duration>,
}

impl SealedPublisherBuilder {
    /// Sets the lifetime of every token this publisher signs. Default: the
    /// signer's default lifetime (60 s unless configured). Durable queues
    /// need a longer one, as for [`super::PublisherBuilder::ttl`].
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Opens a channel on `connection`, enables publisher confirms on it and
    /// builds the publisher. The frame size limit is read from the connection.
    pub async fn build(self, connection: &Connection) -> Result<SealedPublisher, SealedPublishError> {
        let channel = connection.create_channel().await.map_err(PublishError::from)?;
        let frame_max = connection.configuration().frame_max();
        self.build_on_channel(channel, frame_max).await
    }

    /// Enables publisher confirms on `channel` and builds the publisher.
    /// `frame_max` must be the connection's negotiated value,
    /// `connection.configuration().frame_max()`.
    pub async fn build_on_channel(
        self,
        channel: Channel,
        frame_max: u32,
    ) -> Result<SealedPublisher, SealedPublishError> {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(PublishError::from)?;
        tracing::info!(iss = %self.sealer.signer().service(), aud = ?self.audience.services(), channel = channel.id(), frame_max, "AMQP sealing publisher ready");
        Ok(SealedPublisher {
            channel,
            sealer: self.sealer,
            audience: self.audience,
            directory: self.directory,
            ttl: self.ttl,
            frame_max,
        })
    }
}

/// Publishes sealed messages on a lapin channel: the body is encrypted to
/// the encryption keys of the audience, which a [`RecipientDirectory`]
/// resolves, and the JWE is published with a `trustwire-token` header whose
/// token signs it and a `trustwire-sealed` header.
///
/// The token's `chn` claim is `amqp:<exchange>/<routing key>`, as for a
/// signed message. The caller's properties and headers are sent unchanged
/// and unencrypted, apart from the two trustwire headers, which replace any
/// of the same name. Publisher confirms are enabled on the channel when the
/// publisher is built.
///
/// ```no_run
/// use lapin::{BasicProperties, Connection, ConnectionProperties, options::BasicPublishOptions};
/// use trustwire::amqp::SealedPublisher;
/// use trustwire::jwks::KeySource;
/// use trustwire::seal::{RecipientDirectory, Sealer};
/// use trustwire::{ServiceId, Signer, SigningKey};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let connection = Connection::connect("amqp://127.0.0.1:5672/%2f", ConnectionProperties::default()).await?;
/// let sealer = Sealer::new(Signer::new(ServiceId::new("orders")?, SigningKey::generate()?));
/// let billing = ServiceId::new("billing")?;
/// let directory = RecipientDirectory::new().add(
///     billing.clone(),
///     KeySource::remote("https://billing.internal/.well-known/jwks.json")?,
/// );
/// let publisher = SealedPublisher::builder(sealer, billing, directory).build(&connection).await?;
/// publisher
///     .publish("events", "orders.created", BasicPublishOptions::default(), br#"{"order":42}"#, BasicProperties::default())
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SealedPublisher {
    channel: Channel,
    sealer: Sealer,
    audience: Audience,
    directory: RecipientDirectory,
    ttl: Option<Duration>,
    frame_max: u32,
}

impl SealedPublisher {
    /// Starts configuring a publisher that seals to `audience`, whose
    /// encryption keys come from `directory`, and signs with `sealer`.
    pub fn builder(
        sealer: Sealer,
        audience: impl Into<Audience>,
        directory: RecipientDirectory,
    ) -> SealedPublisherBuilder {
        SealedPublisherBuilder {
            sealer,
            audience: audience.into(),
            directory,
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

    /// Seals and publishes a message, returning lapin's confirm future.
    ///
    /// Nothing is sent when the recipients cannot be resolved, sealing
    /// fails, a header is a short string or the properties with the token
    /// do not fit in one frame.
    pub async fn basic_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        options: BasicPublishOptions,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<PublisherConfirm, SealedPublishError> {
        let exchange_name = short_string("exchange", exchange)?;
        let routing_key_name = short_string("routing key", routing_key)?;
        let headers = properties.headers().clone().unwrap_or_default();
        if let Some(name) = find_short_string(&headers) {
            return Err(PublishError::ShortStringHeader { name }.into());
        }
        let binding = channel_binding(exchange, routing_key).map_err(PublishError::InvalidChannel)?;

        let recipients = self.directory.resolve(&self.audience).await?;
        let mut message = self.sealer.message(&recipients, binding);
        if let Some(ttl) = self.ttl {
            message = message.ttl(ttl);
        }
        let sealed = message.seal(payload)?;

        let properties = properties.with_headers(sealed_headers(headers, sealed.token));
        self.check_frame(&properties)?;
        tracing::debug!(iss = %self.sealer.signer().service(), jti = %sealed.jti, exchange, routing_key, recipients = recipients.len(), "sealed AMQP message");

        let confirm = self
            .channel
            .basic_publish(exchange_name, routing_key_name, options, &sealed.jwe, properties)
            .await
            .map_err(PublishError::from)?;
        Ok(confirm)
    }

    /// Seals and publishes a message, then waits for the broker's confirm.
    ///
    /// Returns [`PublishError::Nacked`] when the broker did not store the
    /// message and [`PublishError::Returned`] when a mandatory message could
    /// not be routed, inside [`SealedPublishError::Publish`].
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        options: BasicPublishOptions,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), SealedPublishError> {
        let confirmation = self
            .basic_publish(exchange, routing_key, options, payload, properties)
            .await?
            .await
            .map_err(PublishError::from)?;
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(PublishError::Returned {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
                reply_code: returned.reply_code,
                reply_text: returned.reply_text.to_string(),
            }
            .into()),
            Confirmation::Nack(_) => Err(PublishError::Nacked {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            }
            .into()),
        }
    }

    /// Checks that the properties fit in one frame: RabbitMQ closes the
    /// connection on a larger content header frame.
    fn check_frame(&self, properties: &BasicProperties) -> Result<(), PublishError> {
        let header_frame_bytes = header_frame_len(properties).map_err(PublishError::Encoding)?;
        if header_frame_bytes > usize::try_from(self.frame_max).unwrap_or(usize::MAX) {
            return Err(PublishError::TooLarge {
                header_frame_bytes,
                frame_max: self.frame_max,
            });
        }
        Ok(())
    }
}

/// Returns the caller's headers with the token and the marker set, and any
/// marker under another case dropped.
fn sealed_headers(headers: FieldTable, token: String) -> FieldTable {
    let mut kept = FieldTable::default();
    for (name, value) in headers.inner() {
        if name.as_str().eq_ignore_ascii_case(SEALED_HEADER) {
            continue;
        }
        kept.insert(name.clone(), value.clone());
    }
    // NOTE: always long strings. lapin would send a short string as is,
    // and RabbitMQ closes the connection on one.
    let kept = with_long_string(kept, TOKEN_HEADER, token);
    with_long_string(kept, SEALED_HEADER, "1")
}

fn short_string(what: &'static str, name: &str) -> Result<ShortString, PublishError> {
    ShortString::try_new(name).map_err(|_| PublishError::NameTooLong {
        what,
        value: name.chars().take(80).collect(),
    })
}

#[cfg(test)]
mod tests {
    use lapin::types::AMQPValue;

    use super::*;

    fn with_headers(pairs: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut table = FieldTable::default();
        for (name, value) in pairs {
            table.insert(ShortString::from(*name), value.clone());
        }
        BasicProperties::default().with_headers(table)
    }

    #[test]
    fn marker_found_under_any_case_and_type() {
        assert!(is_sealed(&with_headers(&[(
            SEALED_HEADER,
            AMQPValue::LongString("1".into())
        )])));
        assert!(is_sealed(&with_headers(&[(
            "Trustwire-Sealed",
            AMQPValue::Boolean(true)
        )])));
        assert!(!is_sealed(&with_headers(&[(
            "other",
            AMQPValue::LongString("1".into())
        )])));
        assert!(!is_sealed(&BasicProperties::default()));
    }

    #[test]
    fn plain_consumer_refuses_marker() {
        let sealed = with_headers(&[(SEALED_HEADER, AMQPValue::LongString("1".into()))]);
        assert_eq!(reject_sealed(&sealed).unwrap_err().reason(), Reason::WrongType);
        assert!(reject_sealed(&BasicProperties::default()).is_ok());
    }

    #[test]
    fn sealed_consumer_requires_marker() {
        let sealed = with_headers(&[(SEALED_HEADER, AMQPValue::LongString("1".into()))]);
        assert!(require_sealed(&sealed).is_ok());
        let plain = require_sealed(&BasicProperties::default()).unwrap_err();
        assert_eq!(plain.reason(), Reason::WrongType);
    }

    #[test]
    fn caller_marker_replaced() {
        let mut table = FieldTable::default();
        table.insert(ShortString::from("TRUSTWIRE-SEALED"), AMQPValue::Boolean(false));
        table.insert(ShortString::from("keep"), AMQPValue::LongString("x".into()));
        let headers = sealed_headers(table, "a.b.c".to_owned());
        let names: Vec<&str> = headers.inner().keys().map(ShortString::as_str).collect();
        assert_eq!(names, ["keep", SEALED_HEADER, TOKEN_HEADER]);
    }
}
