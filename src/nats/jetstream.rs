//! JetStream: signed publish with the acknowledgement returned, and a
//! verifying pull consumer that acks, naks and terminates for the caller.
//!
//! The consumer passes each message's stream and stream sequence to the
//! verifier as its delivery id, so a broker redelivery of the same stored
//! message is not a replay, while a copy published again (a new sequence)
//! is `replayed`. The replay entry is kept when a message is nak'd: if it
//! were forgotten, a copy could take the `jti` first and the original's
//! redelivery would then be rejected.
//!
//! NOTE: the stream, sequence and storage time come from the reply subject
//! of the delivered message, which the server sets. A client that may
//! publish to the consumer's inbox subjects could forge them; deny untrusted
//! clients publish rights on `_INBOX.>` (or the custom inbox prefix).

use std::collections::VecDeque;
use std::fmt::{self, Display};
use std::future::Future;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::{MessagesError, MessagesErrorKind, Stream as PullStream};
use async_nats::jetstream::context::PublishError as ContextPublishError;
use async_nats::jetstream::{self, AckKind};
use async_nats::subject::ToSubject;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};

use super::dead_letter::{DeadLetter, DeadLetterSink, note_transport_rejection};
use super::headers::{
    HeadersTooLarge, ORIGINAL_SEQUENCE_HEADER, ORIGINAL_STREAM_HEADER, ORIGINAL_SUBJECT_HEADER, channel_binding,
    check_jetstream_len,
};
use super::publisher::{PublishError, Stamp};
use super::subscriber::{VerifiedMessage, message_token};
use crate::envelope::{
    Claims, Expected, MAX_SIGNATURE_BATCH, Reason, Rejection, Signer, Verified, Verifier, verify_checked,
};
use crate::identity::Audience;

/// Default delay before a message rejected for a transient reason (key
/// source or replay guard unavailable) is redelivered: 5 s.
pub const DEFAULT_TRANSIENT_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Errors from a signed JetStream publish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JetStreamPublishError {
    /// The message could not be signed.
    #[error("cannot sign the message")]
    Sign(#[from] PublishError),

    /// The headers with the token are longer than JetStream stores
    /// ([`super::MAX_JETSTREAM_HEADER_BYTES`]). Nothing was sent.
    #[error(transparent)]
    TooLarge(#[from] HeadersTooLarge),

    /// The publish or its acknowledgement failed (no stream for the subject,
    /// timeout, duplicate rules).
    #[error("JetStream publish failed")]
    Publish(#[from] ContextPublishError),
}

impl JetStreamPublishError {
    /// Returns the rejection reason this error corresponds to, when it has
    /// one: [`Reason::TooLarge`] for [`JetStreamPublishError::TooLarge`].
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Self::TooLarge(_) => Some(Reason::TooLarge),
            _ => None,
        }
    }
}

/// Signs what a service publishes to JetStream and returns the stream's
/// acknowledgement. Cloning is cheap.
///
/// ```no_run
/// use trustwire::nats::SignedJetStream;
/// use trustwire::{ServiceId, Signer, SigningKey};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let signer = Signer::new(ServiceId::new("orders")?, SigningKey::generate()?);
/// let jetstream = SignedJetStream::new(async_nats::jetstream::new(client), signer, ServiceId::new("payments")?);
/// let ack = jetstream.publish("orders.created", r#"{"order":42}"#.into()).await?;
/// println!("stored as {} #{}", ack.stream, ack.sequence);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SignedJetStream {
    context: jetstream::Context,
    stamp: Stamp,
}

impl SignedJetStream {
    /// Wraps `context`; every message is signed by `signer` for `audience`.
    pub fn new(context: jetstream::Context, signer: Signer, audience: impl Into<Audience>) -> Self {
        Self {
            context,
            stamp: Stamp {
                signer,
                audience: audience.into(),
                ttl: None,
            },
        }
    }

    /// Sets the token lifetime of messages from this publisher. Default: the
    /// signer's lifetime. Consumers must accept it: raise their verifier's
    /// `max_lifetime`, or let them judge time at storage (see
    /// [`ConsumerBuilder::judge_time_at_storage`]).
    pub fn token_ttl(mut self, ttl: Duration) -> Self {
        self.stamp.ttl = Some(ttl);
        self
    }

    /// The wrapped JetStream context.
    pub fn context(&self) -> &jetstream::Context {
        &self.context
    }

    /// Signs and publishes `payload` on `subject`, then waits for the
    /// stream's acknowledgement.
    pub async fn publish<S: ToSubject>(
        &self,
        subject: S,
        payload: Bytes,
    ) -> Result<jetstream::publish::PublishAck, JetStreamPublishError> {
        self.publish_inner(subject, None, payload).await
    }

    /// As [`publish`](Self::publish), with the caller's headers kept
    /// (`Nats-Msg-Id` for deduplication, say).
    /// Headers that, with the token, take more than
    /// [`MAX_JETSTREAM_HEADER_BYTES`](super::MAX_JETSTREAM_HEADER_BYTES)
    /// are rejected as `TooLarge` before anything is sent.
    pub async fn publish_with_headers<S: ToSubject>(
        &self,
        subject: S,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<jetstream::publish::PublishAck, JetStreamPublishError> {
        self.publish_inner(subject, Some(&headers), payload).await
    }

    async fn publish_inner<S: ToSubject>(
        &self,
        subject: S,
        user: Option<&HeaderMap>,
        payload: Bytes,
    ) -> Result<jetstream::publish::PublishAck, JetStreamPublishError> {
        let subject = subject.to_subject();
        let headers = self
            .stamp
            .headers_for(&self.stamp.audience, subject.as_str(), user, &payload)?;
        check_jetstream_len(&headers)?;
        let ack = self
            .context
            .publish_with_headers(subject, headers, payload)
            .await?
            .await?;
        Ok(ack)
    }
}

/// Errors of a verifying consumer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// The pull subscription could not be started.
    #[error("cannot start pulling messages")]
    Start(#[from] async_nats::jetstream::consumer::StreamError),

    /// Pulling messages failed (missed heartbeats, consumer deleted).
    #[error("pulling messages failed")]
    Messages(#[from] MessagesError),

    /// Acknowledging a message failed; the server will redeliver it.
    #[error("acknowledging the message failed: {0}")]
    Ack(String),
}

impl ConsumerError {
    /// Whether the consumer cannot continue (it was deleted, or the server
    /// refused its pull requests); other errors pass once the connection is back.
    pub fn is_fatal(&self) -> bool {
        match self {
            Self::Start(_) => true,
            Self::Messages(err) => matches!(
                err.kind(),
                MessagesErrorKind::ConsumerDeleted
                    | MessagesErrorKind::PushBasedConsumer
                    | MessagesErrorKind::RequestLimitExceeded
            ),
            Self::Ack(_) => false,
        }
    }
}

/// Options of a [`VerifyingConsumer`].
#[derive(Debug)]
#[must_use = "a consumer is only created by messages()"]
pub struct ConsumerBuilder {
    context: jetstream::Context,
    verifier: Verifier,
    dead_letter: DeadLetter,
    judge_time_at_storage: bool,
    transient_retry_delay: Duration,
}

impl ConsumerBuilder {
    /// Sets where rejected messages are copied before they are terminated.
    /// Default: a core publish to `trustwire.dead_letter`; use
    /// [`DeadLetter::stream`] to wait for a stream's acknowledgement before
    /// terminating.
    pub fn dead_letter(mut self, dead_letter: DeadLetter) -> Self {
        self.dead_letter = dead_letter;
        self
    }

    /// Judges `exp`, `nbf` and `iat` against the time the stream stored the
    /// message instead of now. Default: off.
    ///
    /// A durable consumer whose backlog can outlive token lifetimes then
    /// still accepts a message that was valid when it was stored. The cost:
    /// a captured message stays acceptable for as long as it sits in the
    /// stream, and a copy re-published within the token lifetime is caught
    /// only while its replay guard entry lives (see `docs/nats.md`).
    pub fn judge_time_at_storage(mut self, enabled: bool) -> Self {
        self.judge_time_at_storage = enabled;
        self
    }

    /// Sets how long a message rejected for a transient reason waits before
    /// redelivery. Default 5 s.
    pub fn transient_retry_delay(mut self, delay: Duration) -> Self {
        self.transient_retry_delay = delay;
        self
    }

    /// Starts pulling from `consumer`.
    pub async fn messages(self, consumer: &PullConsumer) -> Result<VerifyingConsumer, ConsumerError> {
        let messages = consumer.messages().await?;
        let sink = DeadLetterSink::new(self.context.client(), self.dead_letter);
        tracing::info!(
            aud = %self.verifier.audience(),
            dead_letter = sink.subject(),
            judge_time_at_storage = self.judge_time_at_storage,
            "verifying JetStream consumer started"
        );
        Ok(VerifyingConsumer {
            messages,
            verifier: self.verifier,
            sink,
            judge_time_at_storage: self.judge_time_at_storage,
            transient_retry_delay: self.transient_retry_delay,
            ready: VecDeque::new(),
            ended: false,
        })
    }
}

/// A verified JetStream message, to be acked or nak'd by the caller.
#[derive(Debug)]
#[non_exhaustive]
pub struct JetStreamDelivery {
    /// The message as delivered.
    pub message: jetstream::Message,
    /// The verified token.
    pub verified: Verified,
}

impl JetStreamDelivery {
    /// The verified claims.
    pub fn claims(&self) -> &Claims {
        &self.verified.claims
    }

    /// The sending service (`iss`).
    pub fn issuer(&self) -> &str {
        &self.verified.claims.iss
    }

    /// The payload, unchanged.
    pub fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    /// The stream sequence of the message, if its metadata is readable.
    pub fn stream_sequence(&self) -> Option<u64> {
        self.message.info().ok().map(|info| info.stream_sequence)
    }

    /// The message and its verified token as a [`VerifiedMessage`], the type
    /// the core subscriber yields.
    pub fn to_verified_message(&self) -> VerifiedMessage {
        VerifiedMessage::new(self.message.message.clone(), self.verified.clone())
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

/// Pulls from a JetStream consumer and yields only verified messages.
///
/// A rejected message is copied to the dead-letter subject and then
/// terminated (`+TERM`), so it is never redelivered. A message rejected for a
/// transient reason (`key_source_unavailable`, `replay_guard_unavailable`) is
/// nak'd with a delay instead, because the sender is not at fault.
///
/// When the pull stream contains several fetched messages, up to
/// [`MAX_SIGNATURE_BATCH`] of them are verified together with
/// [`Verifier::verify_batch`], which gives each the result that verifying
/// it alone would. Rejected messages of a batch are settled before the
/// verified ones are returned, in order. The consumer never waits for more
/// messages to fill a batch.
///
/// ```no_run
/// use trustwire::nats::VerifyingConsumer;
///
/// # async fn run(context: async_nats::jetstream::Context, consumer: async_nats::jetstream::consumer::PullConsumer, verifier: trustwire::Verifier) -> Result<(), Box<dyn std::error::Error>> {
/// let mut consumer = VerifyingConsumer::builder(&context, verifier).messages(&consumer).await?;
/// consumer
///     .run(|message| async move {
///         println!("order from {}", message.issuer());
///         Ok::<(), std::io::Error>(())
///     })
///     .await?;
/// # Ok(())
/// # }
/// ```
pub struct VerifyingConsumer {
    pub(super) messages: PullStream,
    verifier: Verifier,
    sink: DeadLetterSink,
    pub(super) judge_time_at_storage: bool,
    transient_retry_delay: Duration,
    /// Outcomes of the last batch that `next` has not returned yet, in
    /// delivery order: verified messages, and a pull error that ended it.
    ready: VecDeque<Result<JetStreamDelivery, ConsumerError>>,
    /// Whether the pull stream returned `None` while a batch was taken.
    pub(super) ended: bool,
}

/// What a JetStream delivery is checked against: its subject and payload,
/// its stream and sequence as the delivery id, and, with
/// `judge_time_at_storage`, the time the stream stored it.
pub(super) fn expected_delivery(
    message: &jetstream::Message,
    judge_time_at_storage: bool,
) -> Result<Expected<'_>, Rejection> {
    let subject = message.subject.as_str();
    let (delivery_id, stored_at) = match message.info() {
        Ok(info) => (
            format!("{}:{}", info.stream, info.stream_sequence),
            info.published.unix_timestamp(),
        ),
        Err(err) => {
            let rejection = Rejection::new(Reason::Malformed, format!("not a JetStream delivery: {err}"));
            note_transport_rejection(&rejection, subject);
            return Err(rejection);
        }
    };
    let binding = match channel_binding(subject) {
        Ok(binding) => binding,
        Err(err) => {
            let rejection = Rejection::new(Reason::Malformed, err.to_string());
            note_transport_rejection(&rejection, subject);
            return Err(rejection);
        }
    };

    let mut expected = Expected::message(binding, &message.payload).with_delivery_id(delivery_id);
    if judge_time_at_storage {
        expected = expected.with_reference_time(stored_at);
    }
    Ok(expected)
}

impl fmt::Debug for VerifyingConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingConsumer")
            .field("verifier", &self.verifier)
            .field("sink", &self.sink)
            .field("judge_time_at_storage", &self.judge_time_at_storage)
            .field("transient_retry_delay", &self.transient_retry_delay)
            .finish_non_exhaustive()
    }
}

impl VerifyingConsumer {
    /// Starts configuring a consumer that verifies with `verifier`.
    pub fn builder(context: &jetstream::Context, verifier: Verifier) -> ConsumerBuilder {
        ConsumerBuilder {
            context: context.clone(),
            verifier,
            dead_letter: DeadLetter::default(),
            judge_time_at_storage: false,
            transient_retry_delay: DEFAULT_TRANSIENT_RETRY_DELAY,
        }
    }

    /// Waits for the next verified message; rejected ones are handled on the
    /// way. Returns `None` when the pull stream ends.
    ///
    /// NOTE: not cancel-safe. If the future is dropped while it checks a
    /// batch (in a `select!`, for example), the messages of that batch it
    /// has not settled or queued yet are neither acked nor returned. The
    /// server redelivers them after the consumer's `ack_wait`.
    pub async fn next(&mut self) -> Option<Result<JetStreamDelivery, ConsumerError>> {
        loop {
            if let Some(outcome) = self.ready.pop_front() {
                return Some(outcome);
            }
            if self.ended {
                return None;
            }
            let first = match self.messages.next().await? {
                Ok(message) => message,
                Err(err) => return Some(Err(err.into())),
            };
            let (batch, pull_error) = self.take_fetched(first);
            self.verify_batch(batch).await;
            self.ready.extend(pull_error.map(|err| Err(err.into())));
        }
    }

    /// Returns `first` and the messages the pull stream already contains,
    /// without waiting for more, up to [`MAX_SIGNATURE_BATCH`] in all. A
    /// pull error ends the batch and is returned beside it.
    pub(super) fn take_fetched(
        &mut self,
        first: jetstream::Message,
    ) -> (Vec<jetstream::Message>, Option<MessagesError>) {
        let mut batch = vec![first];
        while batch.len() < MAX_SIGNATURE_BATCH {
            match self.messages.next().now_or_never() {
                Some(Some(Ok(message))) => batch.push(message),
                Some(Some(Err(err))) => return (batch, Some(err)),
                Some(None) => {
                    self.ended = true;
                    break;
                }
                None => break,
            }
        }
        (batch, None)
    }

    /// Verifies `batch`, settles the rejected messages and queues the
    /// verified ones in order.
    async fn verify_batch(&mut self, batch: Vec<jetstream::Message>) {
        let checked = batch
            .iter()
            .map(|message| {
                let expected = expected_delivery(message, self.judge_time_at_storage)?;
                Ok((message_token(&message.message)?, expected))
            })
            .collect();
        let results = verify_checked(&self.verifier, checked).await;

        for (message, result) in batch.into_iter().zip(results) {
            match result {
                Ok(verified) => self.ready.push_back(Ok(JetStreamDelivery { message, verified })),
                Err(rejection) => self.reject(&message, &rejection).await,
            }
        }
    }

    /// Calls `handler` with each verified message; acks it when the handler
    /// returns `Ok` and naks it (for redelivery) when it returns `Err`.
    /// Returns when the pull stream ends or on an error after which the
    /// consumer cannot continue; other errors are logged.
    pub async fn run<F, Fut, E>(&mut self, mut handler: F) -> Result<(), ConsumerError>
    where
        F: FnMut(VerifiedMessage) -> Fut,
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
            match handler(delivery.to_verified_message()).await {
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

    pub(super) async fn reject(&self, message: &jetstream::Message, rejection: &Rejection) {
        let subject = message.subject.as_str();
        if rejection.reason().is_transient() {
            metrics::counter!("trustwire_nats_retried_total", "reason" => rejection.code()).increment(1);
            self.settle(message, AckKind::Nak(Some(self.transient_retry_delay)), rejection)
                .await;
            return;
        }

        let Ok(info) = message.info() else {
            // Without JetStream metadata there is nothing to ack; keep a copy.
            let origin = [(ORIGINAL_SUBJECT_HEADER, subject.to_owned())];
            self.sink.send(&message.message, rejection, &origin).await;
            return;
        };
        let origin = [
            (ORIGINAL_SUBJECT_HEADER, subject.to_owned()),
            (ORIGINAL_STREAM_HEADER, info.stream.to_owned()),
            (ORIGINAL_SEQUENCE_HEADER, info.stream_sequence.to_string()),
        ];

        // A stream that captures the dead-letter subject and is consumed here
        // would otherwise copy its own copies forever.
        let copied = subject == self.sink.subject() || self.sink.send(&message.message, rejection, &origin).await;
        if copied {
            self.settle(message, AckKind::Term, rejection).await;
        } else {
            self.settle(message, AckKind::Nak(Some(self.transient_retry_delay)), rejection)
                .await;
        }
    }

    async fn settle(&self, message: &jetstream::Message, kind: AckKind, rejection: &Rejection) {
        let action = match kind {
            AckKind::Term => "term",
            _ => "nak",
        };
        if let Err(err) = message.ack_with(kind).await {
            tracing::warn!(reason = rejection.code(), subject = %message.subject, action, error = %err, "settling a rejected message failed; it will be redelivered");
        }
    }
}
