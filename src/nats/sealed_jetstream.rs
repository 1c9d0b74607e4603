//! Sealed messages on JetStream: a sealing publisher that returns the
//! stream's acknowledgement, and an opening pull consumer that acks, naks
//! and terminates as the verifying consumer does.
//!
//! The stream stores the JWE, so the plaintext never rests in it. The
//! opening consumer handles rejections with the verifying consumer's own
//! code: copied (still encrypted) to the dead-letter subject and then
//! terminated, or nak'd for a transient reason.

use std::collections::VecDeque;
use std::fmt::{self, Display};
use std::future::Future;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind};
use async_nats::subject::ToSubject;
use bytes::Bytes;
use futures_util::StreamExt;

use super::dead_letter::DeadLetter;
use super::headers::check_jetstream_len;
use super::jetstream::{ConsumerBuilder, ConsumerError, VerifyingConsumer, expected_delivery};
use super::sealed::{OpenedMessage, SealStamp, SealedPublishError, sealed_message_token};
use crate::envelope::Claims;
use crate::identity::Audience;
use crate::seal::{Opened, Opener, RecipientDirectory, Sealer};

/// Seals what a service publishes to JetStream and returns the stream's
/// acknowledgement. Cloning is cheap.
///
/// ```no_run
/// use trustwire::jwks::KeySource;
/// use trustwire::nats::SealedJetStream;
/// use trustwire::seal::{RecipientDirectory, Sealer};
/// use trustwire::{ServiceId, Signer, SigningKey};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let sealer = Sealer::new(Signer::new(ServiceId::new("orders")?, SigningKey::generate()?));
/// let payments = ServiceId::new("payments")?;
/// let directory = RecipientDirectory::new().add(payments.clone(), KeySource::file("keys/payments/jwks.json".as_ref())?);
/// let jetstream = SealedJetStream::new(async_nats::jetstream::new(client), sealer, payments, directory);
/// let ack = jetstream.publish("orders.created", r#"{"order":42}"#.into()).await?;
/// println!("stored as {} #{}", ack.stream, ack.sequence);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SealedJetStream {
    context: jetstream::Context,
    stamp: SealStamp,
}

impl SealedJetStream {
    /// Wraps `context`; every message is sealed to `audience`, whose
    /// encryption keys come from `directory`, and signed by `sealer`.
    pub fn new(
        context: jetstream::Context,
        sealer: Sealer,
        audience: impl Into<Audience>,
        directory: RecipientDirectory,
    ) -> Self {
        Self {
            context,
            stamp: SealStamp {
                sealer,
                audience: audience.into(),
                directory,
                ttl: None,
            },
        }
    }

    /// Sets the token lifetime of messages from this publisher. Default: the
    /// signer's lifetime. Consumers must accept it, as for
    /// [`super::SignedJetStream::token_ttl`].
    pub fn token_ttl(mut self, ttl: Duration) -> Self {
        self.stamp.ttl = Some(ttl);
        self
    }

    /// The wrapped JetStream context.
    pub fn context(&self) -> &jetstream::Context {
        &self.context
    }

    /// Seals `payload`, publishes the JWE on `subject`, then waits for the
    /// stream's acknowledgement.
    pub async fn publish<S: ToSubject>(
        &self,
        subject: S,
        payload: Bytes,
    ) -> Result<jetstream::publish::PublishAck, SealedPublishError> {
        self.publish_inner(subject, None, payload).await
    }

    /// As [`publish`](Self::publish), with the caller's headers kept and
    /// sent unencrypted (`Nats-Msg-Id` for deduplication, say).
    /// Headers that, with the token, take more than
    /// [`MAX_JETSTREAM_HEADER_BYTES`](super::MAX_JETSTREAM_HEADER_BYTES)
    /// are rejected as `TooLarge` before anything is sent.
    pub async fn publish_with_headers<S: ToSubject>(
        &self,
        subject: S,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<jetstream::publish::PublishAck, SealedPublishError> {
        self.publish_inner(subject, Some(&headers), payload).await
    }

    async fn publish_inner<S: ToSubject>(
        &self,
        subject: S,
        user: Option<&HeaderMap>,
        payload: Bytes,
    ) -> Result<jetstream::publish::PublishAck, SealedPublishError> {
        let subject = subject.to_subject();
        let (headers, jwe) = self.stamp.seal(subject.as_str(), user, &payload).await?;
        check_jetstream_len(&headers)?;
        let ack = self.context.publish_with_headers(subject, headers, jwe).await?.await?;
        Ok(ack)
    }
}

/// Options of an [`OpeningConsumer`]: those of the verifying consumer.
#[derive(Debug)]
#[must_use = "a consumer is only created by messages()"]
pub struct OpeningConsumerBuilder {
    inner: ConsumerBuilder,
    opener: Opener,
}

impl OpeningConsumerBuilder {
    /// Sets where rejected messages are copied before they are terminated.
    /// Default: a core publish to `trustwire.dead_letter`. See
    /// [`ConsumerBuilder::dead_letter`].
    pub fn dead_letter(mut self, dead_letter: DeadLetter) -> Self {
        self.inner = self.inner.dead_letter(dead_letter);
        self
    }

    /// Judges token time against the time the stream stored the message.
    /// Default: off. See [`ConsumerBuilder::judge_time_at_storage`].
    pub fn judge_time_at_storage(mut self, enabled: bool) -> Self {
        self.inner = self.inner.judge_time_at_storage(enabled);
        self
    }

    /// Sets how long a message rejected for a transient reason waits before
    /// redelivery. Default 5 s.
    pub fn transient_retry_delay(mut self, delay: Duration) -> Self {
        self.inner = self.inner.transient_retry_delay(delay);
        self
    }

    /// Starts pulling from `consumer`.
    pub async fn messages(self, consumer: &PullConsumer) -> Result<OpeningConsumer, ConsumerError> {
        let inner = self.inner.messages(consumer).await?;
        tracing::info!(aud = %self.opener.verifier().audience(), "JetStream consumer opens sealed messages");
        Ok(OpeningConsumer {
            inner,
            opener: self.opener,
            ready: VecDeque::new(),
        })
    }
}

/// An opened JetStream message, to be acked or nak'd by the caller.
#[derive(Debug)]
#[non_exhaustive]
pub struct OpenedJetStreamDelivery {
    /// The message as delivered: its payload is the JWE.
    pub message: jetstream::Message,
    /// The verified token and the plaintext.
    pub opened: Opened,
}

impl OpenedJetStreamDelivery {
    /// The verified claims.
    pub fn claims(&self) -> &Claims {
        &self.opened.verified.claims
    }

    /// The sending service (`iss`).
    pub fn issuer(&self) -> &str {
        &self.opened.verified.claims.iss
    }

    /// The decrypted payload.
    pub fn payload(&self) -> &[u8] {
        &self.opened.plaintext
    }

    /// The stream sequence of the message, if its metadata is readable.
    pub fn stream_sequence(&self) -> Option<u64> {
        self.message.info().ok().map(|info| info.stream_sequence)
    }

    /// The message and its opened content as an [`OpenedMessage`], the type
    /// the core opening subscriber yields.
    pub fn to_opened_message(&self) -> OpenedMessage {
        OpenedMessage::new(self.message.message.clone(), self.opened.clone())
    }

    /// Acknowledges the message and waits for the server to confirm.
    pub async fn ack(&self) -> Result<(), ConsumerError> {
        self.message
            .double_ack()
            .await
            .map_err(|err| ConsumerError::Ack(err.to_string()))
    }

    /// Asks for redelivery, after `delay` if given. The replay entry is kept,
    /// and the redelivery is recognised by its stream sequence.
    pub async fn nak(&self, delay: Option<Duration>) -> Result<(), ConsumerError> {
        self.message
            .ack_with(AckKind::Nak(delay))
            .await
            .map_err(|err| ConsumerError::Ack(err.to_string()))
    }
}

/// Pulls from a JetStream consumer and yields only sealed messages that
/// open.
///
/// Rejections are handled exactly as by [`VerifyingConsumer`]: a rejected
/// message, plain ones included (`wrong_type`), is copied to the
/// dead-letter subject as it was stored, still encrypted, and then
/// terminated. One rejected for a transient reason is nak'd with a delay.
///
/// When the pull stream contains several fetched messages, up to
/// [`MAX_SIGNATURE_BATCH`](crate::envelope::MAX_SIGNATURE_BATCH) of them are
/// opened together with [`Opener::open_batch`], which gives each the result
/// that opening it alone would. Rejected messages of a batch are settled
/// before the opened ones are returned, in order. The consumer never waits
/// for more messages to fill a batch.
///
/// ```no_run
/// use trustwire::nats::OpeningConsumer;
///
/// # async fn run(context: async_nats::jetstream::Context, consumer: async_nats::jetstream::consumer::PullConsumer, opener: trustwire::seal::Opener) -> Result<(), Box<dyn std::error::Error>> {
/// let mut consumer = OpeningConsumer::builder(&context, opener).messages(&consumer).await?;
/// consumer
///     .run(|message| async move {
///         println!("{} bytes from {}", message.payload().len(), message.issuer());
///         Ok::<(), std::io::Error>(())
///     })
///     .await?;
/// # Ok(())
/// # }
/// ```
pub struct OpeningConsumer {
    inner: VerifyingConsumer,
    opener: Opener,
    /// Outcomes of the last batch that `next` has not returned yet, in
    /// delivery order: opened messages, and a pull error that ended it.
    ready: VecDeque<Result<OpenedJetStreamDelivery, ConsumerError>>,
}

impl fmt::Debug for OpeningConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpeningConsumer")
            .field("inner", &self.inner)
            .field("opener", &self.opener)
            .finish_non_exhaustive()
    }
}

impl OpeningConsumer {
    /// Starts configuring a consumer that opens with `opener`.
    pub fn builder(context: &jetstream::Context, opener: Opener) -> OpeningConsumerBuilder {
        OpeningConsumerBuilder {
            inner: VerifyingConsumer::builder(context, opener.verifier().clone()),
            opener,
        }
    }

    /// Waits for the next message that opens; rejected ones are handled on
    /// the way. Returns `None` when the pull stream ends.
    ///
    /// NOTE: not cancel-safe. If the future is dropped while it checks a
    /// batch (in a `select!`, for example), the messages of that batch it
    /// has not settled or queued yet are neither acked nor returned. The
    /// server redelivers them after the consumer's `ack_wait`.
    pub async fn next(&mut self) -> Option<Result<OpenedJetStreamDelivery, ConsumerError>> {
        loop {
            if let Some(outcome) = self.ready.pop_front() {
                return Some(outcome);
            }
            if self.inner.ended {
                return None;
            }
            let first = match self.inner.messages.next().await? {
                Ok(message) => message,
                Err(err) => return Some(Err(err.into())),
            };
            let (batch, pull_error) = self.inner.take_fetched(first);
            self.open_batch(batch).await;
            self.ready.extend(pull_error.map(|err| Err(err.into())));
        }
    }

    /// Opens `batch`, settles the rejected messages and queues the opened
    /// ones in order.
    async fn open_batch(&mut self, batch: Vec<jetstream::Message>) {
        let judge_time_at_storage = self.inner.judge_time_at_storage;
        let checked = batch
            .iter()
            .map(|message| {
                let expected = expected_delivery(message, judge_time_at_storage)?;
                Ok((sealed_message_token(&message.message)?, expected))
            })
            .collect();
        let results = self.opener.open_checked(checked).await;

        for (message, result) in batch.into_iter().zip(results) {
            match result {
                Ok(opened) => self.ready.push_back(Ok(OpenedJetStreamDelivery { message, opened })),
                Err(rejection) => self.inner.reject(&message, &rejection).await,
            }
        }
    }

    /// Calls `handler` with each opened message; acks it when the handler
    /// returns `Ok` and naks it (for redelivery) when it returns `Err`.
    /// Returns when the pull stream ends or on an error after which the
    /// consumer cannot continue; other errors are logged.
    pub async fn run<F, Fut, E>(&mut self, mut handler: F) -> Result<(), ConsumerError>
    where
        F: FnMut(OpenedMessage) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
    {
        while let Some(next) = self.next().await {
            let delivery = match next {
                Ok(delivery) => delivery,
                Err(err) if err.is_fatal() => return Err(err),
                Err(err) => {
                    tracing::warn!(error = %err, "pulling from JetStream failed; retrying");
                    continue;
                }
            };

            let ids = (delivery.issuer().to_owned(), delivery.claims().jti.clone());
            match handler(delivery.to_opened_message()).await {
                Ok(()) => {
                    if let Err(err) = delivery.ack().await {
                        tracing::warn!(iss = ids.0, jti = ids.1, error = %err, "ack failed; the message will be redelivered");
                    }
                }
                Err(error) => {
                    tracing::warn!(iss = ids.0, jti = ids.1, %error, "handler failed; asking for redelivery");
                    if let Err(err) = delivery.nak(None).await {
                        tracing::warn!(iss = ids.0, jti = ids.1, error = %err, "nak failed; the message will be redelivered after ack_wait");
                    }
                }
            }
        }
        Ok(())
    }
}
