//! The verifying consumer: verifies each delivery's token, hands verified
//! deliveries to the application and dead-letters the rest.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Acker, BasicProperties, Channel, Connection, Consumer};

use super::channel_binding;
use super::dead_letter::{DeadLetter, Disposition, Rejected, dead_letter};
use super::headers::{HANDLER_ERROR_HEADER, REJECTED_HEADER, token_from};
use super::sealed::{reject_sealed, require_sealed};
use super::settle::{Settle, settle};
use crate::envelope::{Claims, Expected, MAX_SIGNATURE_BATCH, Reason, Rejection, Verified, Verifier, verify_checked};
use crate::seal::Opener;

/// Default prefetch count of a channel the consumer opens itself.
pub const DEFAULT_PREFETCH: u16 = 32;

/// Maximum length, in bytes, of a handler error copied into a dead-lettered message.
const MAX_HANDLER_ERROR_LEN: usize = 256;

/// Errors from [`VerifyingConsumer`] and [`VerifiedDelivery`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumeError {
    /// The channel or connection failed. Unacknowledged deliveries go back
    /// to the queue; connect again and start a new consumer with the same
    /// verifier.
    #[error("AMQP channel or connection failed")]
    Amqp(#[from] lapin::Error),

    /// The channel closed, or the acknowledgement did not complete within
    /// 10 s, before the delivery was settled. RabbitMQ redelivers it once
    /// the channel is gone.
    #[error("the delivery could not be acknowledged because the channel closed; RabbitMQ will redeliver it")]
    ChannelClosed,

    /// A rejected delivery could not be dead-lettered. The consumer stopped
    /// and closed its channel, so the delivery and every other unacknowledged
    /// one went back to the queue. Fix the dead-letter setup and restart.
    #[error("cannot dead-letter a rejected delivery: {0}")]
    DeadLetter(String),

    /// The consumer options are invalid.
    #[error("invalid consumer options: {0}")]
    Config(String),

    /// The task verifying a delivery panicked or was cancelled; the delivery
    /// stays unacknowledged until the channel closes.
    #[error("verifying a delivery failed unexpectedly: {0}")]
    Internal(String),
}

/// Counts of what a consumer did, since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// Deliveries whose token verified.
    pub verified: u64,
    /// Verified deliveries acknowledged after the handler succeeded.
    pub acked: u64,
    /// Rejected deliveries, by reason code.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Deliveries published to the dead-letter exchange or rejected into the
    /// queue's own dead-letter exchange.
    pub dead_lettered: u64,
    /// Deliveries requeued for one more attempt.
    pub requeued: u64,
    /// Verified deliveries whose handler failed.
    pub handler_failures: u64,
}

impl ConsumerStats {
    /// Returns the total number of rejected deliveries.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// Options of a [`VerifyingConsumer`].
#[derive(Debug)]
#[must_use = "a consumer is only started by consume or consume_on_channel"]
pub struct ConsumerBuilder {
    verifier: Verifier,
    opener: Option<Opener>,
    dead_letter: DeadLetter,
    prefetch: Option<u16>,
    consumer_tag: String,
    exclusive: bool,
}

impl ConsumerBuilder {
    /// Sets the channel's prefetch count (`basic.qos`). Default:
    /// [`DEFAULT_PREFETCH`] on a channel the consumer opens, and no change on
    /// a channel passed to [`consume_on_channel`](Self::consume_on_channel).
    pub fn prefetch(mut self, count: u16) -> Self {
        self.prefetch = Some(count);
        self
    }

    /// Sets the consumer tag. Default: empty, so the broker generates one.
    pub fn consumer_tag(mut self, tag: impl Into<String>) -> Self {
        self.consumer_tag = tag.into();
        self
    }

    /// Asks for exclusive access to the queue. Default: off.
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        self
    }

    /// Opens a channel on `connection` and starts consuming `queue`.
    pub async fn consume(mut self, connection: &Connection, queue: &str) -> Result<VerifyingConsumer, ConsumeError> {
        let channel = connection.create_channel().await?;
        let frame_max = connection.configuration().frame_max();
        self.prefetch = Some(self.prefetch.unwrap_or(DEFAULT_PREFETCH));
        self.consume_on_channel(channel, frame_max, queue).await
    }

    /// Starts consuming `queue` on `channel`. `frame_max` must be the
    /// connection's negotiated value, `connection.configuration().frame_max()`.
    ///
    /// With [`DeadLetter::Exchange`], publisher confirms are enabled on the
    /// channel so that a dead-lettered copy is known to be stored before the
    /// original is acknowledged.
    pub async fn consume_on_channel(
        self,
        channel: Channel,
        frame_max: u32,
        queue: &str,
    ) -> Result<VerifyingConsumer, ConsumeError> {
        let queue_name = ShortString::try_new(queue)
            .map_err(|_| ConsumeError::Config(format!("the queue name {queue:?} is longer than 255 bytes")))?;
        let tag = ShortString::try_new(self.consumer_tag.as_str())
            .map_err(|_| ConsumeError::Config("the consumer tag is longer than 255 bytes".into()))?;

        if let Some(count) = self.prefetch {
            channel.basic_qos(count, BasicQosOptions::default()).await?;
        }
        if matches!(self.dead_letter, DeadLetter::Exchange { .. }) {
            channel.confirm_select(ConfirmSelectOptions::default()).await?;
        }

        // NOTE: no_ack stays false. A consumer with automatic acknowledgement
        // could neither dead-letter a rejected message nor get a failed one
        // redelivered.
        let options = BasicConsumeOptions {
            exclusive: self.exclusive,
            ..BasicConsumeOptions::default()
        };
        let consumer = channel
            .basic_consume(queue_name, tag, options, FieldTable::default())
            .await?;
        tracing::info!(aud = %self.verifier.audience(), queue, consumer_tag = %consumer.tag(), dead_letter = ?self.dead_letter, sealed = self.opener.is_some(), "AMQP verifying consumer started");

        Ok(VerifyingConsumer {
            consumer,
            queue: queue.to_owned(),
            stopped: false,
            ended: false,
            ready: VecDeque::new(),
            shared: Arc::new(Shared {
                channel,
                frame_max,
                verifier: self.verifier,
                opener: self.opener,
                dead_letter: self.dead_letter,
                stats: Mutex::new(ConsumerStats::default()),
                warn_limiter: WarnLimiter::default(),
            }),
        })
    }
}

/// State shared by a consumer and the deliveries it handed out.
struct Shared {
    channel: Channel,
    frame_max: u32,
    verifier: Verifier,
    /// Set for a consumer of sealed messages; its verifier is `verifier`.
    opener: Option<Opener>,
    dead_letter: DeadLetter,
    stats: Mutex<ConsumerStats>,
    warn_limiter: WarnLimiter,
}

impl Shared {
    fn stats(&self) -> MutexGuard<'_, ConsumerStats> {
        // Each update is a single counter increment, so a poisoned lock still
        // guards consistent data.
        self.stats.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn consumer_name(&self) -> &str {
        self.verifier.audience().as_str()
    }

    /// Verifies the token of each delivery of `batch` against the exchange,
    /// routing key and body that arrived, and returns the results in order.
    /// The deliveries that pass the transport's checks (token header,
    /// binding, sealed marker) are verified with one
    /// [`Verifier::verify_batch`] call. A consumer of sealed messages opens
    /// them with one [`Opener::open_batch`] call instead and returns the
    /// plaintext too.
    async fn verify_batch(&self, batch: &[Delivery]) -> Vec<Result<(Verified, Option<Vec<u8>>), Rejection>> {
        let check_marker = if self.opener.is_some() {
            require_sealed
        } else {
            reject_sealed
        };
        let checked = batch
            .iter()
            .map(|delivery| {
                let (token, expected) = read_token_and_binding(delivery)?;
                check_marker(&delivery.properties).map_err(transport_rejection)?;
                Ok((token, expected))
            })
            .collect();

        let Some(opener) = &self.opener else {
            return verify_checked(&self.verifier, checked)
                .await
                .into_iter()
                .map(|result| result.map(|verified| (verified, None)))
                .collect();
        };
        opener
            .open_checked(checked)
            .await
            .into_iter()
            .map(|result| result.map(|opened| (opened.verified, Some(opened.plaintext))))
            .collect()
    }

    /// Verifies `batch` and settles each rejected delivery. Returns, in
    /// delivery order, the verified deliveries and the errors of settling.
    ///
    /// After a dead-lettering failure the channel is closed, so every
    /// unacknowledged delivery goes back to the queue. The deliveries of the
    /// batch after that one are not returned, and the `jti` of each verified
    /// one is forgotten so that its redelivery verifies.
    async fn process_batch(self: Arc<Self>, batch: Vec<Delivery>) -> Vec<Result<VerifiedDelivery, ConsumeError>> {
        let mut results = self.verify_batch(&batch).await.into_iter();
        let mut outcomes = Vec::with_capacity(batch.len());
        for delivery in batch {
            let Some(result) = results.next() else {
                break;
            };
            match Arc::clone(&self).process(delivery, result).await {
                Ok(Some(verified)) => outcomes.push(Ok(verified)),
                Ok(None) => {}
                Err(err) => {
                    let stopped = matches!(err, ConsumeError::DeadLetter(_));
                    outcomes.push(Err(err));
                    if stopped {
                        for verified in results.by_ref().flatten() {
                            self.verifier.forget(&verified.0).await;
                        }
                        break;
                    }
                }
            }
        }
        outcomes
    }

    /// Returns `delivery` when its token verified, and handles it as
    /// rejected otherwise. After a dead-lettering failure the channel is
    /// closed, so every unacknowledged delivery goes back to the queue.
    async fn process(
        self: Arc<Self>,
        delivery: Delivery,
        verification: Result<(Verified, Option<Vec<u8>>), Rejection>,
    ) -> Result<Option<VerifiedDelivery>, ConsumeError> {
        let rejection = match verification {
            Ok((verified, plaintext)) => {
                let shared = Arc::clone(&self);
                return Ok(Some(VerifiedDelivery::new(delivery, verified, plaintext, shared)));
            }
            Err(rejection) => rejection,
        };
        if let Err(err) = self.reject(&delivery, &rejection).await {
            tracing::warn!(
                reason = rejection.code(), iss = rejection.iss().unwrap_or(""), kid = rejection.kid().unwrap_or(""),
                jti = rejection.jti().unwrap_or(""), exchange = %delivery.exchange, routing_key = %delivery.routing_key,
                error = %err, "AMQP delivery rejected but not settled; RabbitMQ redelivers it when the channel closes"
            );
            if matches!(err, ConsumeError::DeadLetter(_)) {
                self.stop(&err).await;
            }
            return Err(err);
        }
        Ok(None)
    }

    /// Decides what happens to a rejected delivery, does it and logs it.
    async fn reject(&self, delivery: &Delivery, rejection: &Rejection) -> Result<(), ConsumeError> {
        self.stats()
            .rejected
            .entry(rejection.code())
            .and_modify(|count| *count += 1)
            .or_insert(1);

        // A key source or replay store that is down is not the sender's
        // fault: one more attempt later may verify.
        let disposition = if rejection.reason().is_transient() && !delivery.redelivered {
            settle(&self.channel, &delivery.acker, Settle::Requeue).await?;
            Disposition::Requeued
        } else {
            let rejected = Rejected {
                exchange: delivery.exchange.as_str(),
                routing_key: delivery.routing_key.as_str(),
                properties: &delivery.properties,
                payload: &delivery.data,
                why: (REJECTED_HEADER, rejection.code().to_owned()),
            };
            dead_letter(
                &self.channel,
                self.frame_max,
                &self.dead_letter,
                self.consumer_name(),
                &delivery.acker,
                rejected,
            )
            .await?
        };
        self.count(disposition);

        metrics::counter!("trustwire_amqp_rejected_total", "reason" => rejection.code(), "disposition" => disposition.as_str()).increment(1);
        let fields = (
            rejection.code(),
            rejection.iss().unwrap_or(""),
            rejection.kid().unwrap_or(""),
            rejection.jti().unwrap_or(""),
        );
        if self.warn_limiter.allow() {
            tracing::warn!(
                reason = fields.0, iss = fields.1, kid = fields.2, jti = fields.3,
                exchange = %delivery.exchange, routing_key = %delivery.routing_key, redelivered = delivery.redelivered,
                disposition = %disposition, detail = rejection.detail(), "AMQP delivery rejected"
            );
        } else {
            tracing::debug!(
                reason = fields.0, iss = fields.1, kid = fields.2, jti = fields.3,
                exchange = %delivery.exchange, routing_key = %delivery.routing_key, redelivered = delivery.redelivered,
                disposition = %disposition, detail = rejection.detail(), "AMQP delivery rejected"
            );
        }
        Ok(())
    }

    fn count(&self, disposition: Disposition) {
        let mut stats = self.stats();
        match disposition {
            Disposition::Requeued => stats.requeued += 1,
            Disposition::DeadLettered | Disposition::QueueDeadLettered => stats.dead_lettered += 1,
        }
    }

    async fn stop(&self, error: &ConsumeError) {
        tracing::error!(aud = %self.verifier.audience(), error = %error, "AMQP consumer stopped: closing its channel so unacknowledged deliveries are requeued");
        if let Err(err) = self
            .channel
            .close(
                541,
                ShortString::from("trustwire: cannot dead-letter a rejected delivery"),
            )
            .await
        {
            tracing::warn!(error = %err, "closing the consumer's channel failed");
        }
    }
}

/// Counts a rejection that the transport makes before the verifier runs;
/// the verifier counts its own rejections.
fn transport_rejection(rejection: Rejection) -> Rejection {
    metrics::counter!("trustwire_rejected_total", "reason" => rejection.code()).increment(1);
    rejection
}

/// Reads the token header of `delivery` and what the token must be bound
/// to: the exchange, routing key and body that arrived.
fn read_token_and_binding(delivery: &Delivery) -> Result<(&str, Expected<'_>), Rejection> {
    let token = token_from(&delivery.properties).map_err(transport_rejection)?;
    let binding = channel_binding(delivery.exchange.as_str(), delivery.routing_key.as_str())
        .map_err(|detail| transport_rejection(Rejection::new(Reason::BindingMismatch, detail)))?;
    Ok((token, Expected::message(binding, &delivery.data)))
}

/// Consumes a queue on a lapin channel, verifying every delivery's
/// `trustwire-token` header.
///
/// Verified deliveries come out of [`next`](Self::next) (or go to the
/// handler of [`run`](Self::run)) and are acknowledged when the
/// application is done with them. Every rejected delivery is counted,
/// logged with its reason code, `iss`, `kid` and `jti`, and sent to the
/// [`DeadLetter`] destination. It is never requeued more than once and
/// never dropped without a log line. Only rejections the sender is not at
/// fault for (`key_source_unavailable`, `replay_guard_unavailable`) are
/// requeued, once, before they are dead-lettered.
///
/// When the channel has several deliveries buffered (a prefetch count above
/// 1), up to [`MAX_SIGNATURE_BATCH`] of them are verified together with
/// [`Verifier::verify_batch`], which gives each the result that verifying it
/// alone would. A consumer of sealed messages opens them together with
/// [`Opener::open_batch`] in the same way. Rejected deliveries of a batch are
/// settled before the verified ones are returned, in order. The consumer
/// never waits for more deliveries to fill a batch.
///
/// ```no_run
/// use lapin::{Connection, ConnectionProperties};
/// use trustwire::amqp::{DeadLetter, VerifyingConsumer};
/// use trustwire::jwks::{KeySource, TrustStore};
/// use trustwire::{ServiceId, Verifier};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let connection = Connection::connect("amqp://127.0.0.1:5672/%2f", ConnectionProperties::default()).await?;
/// let trust = TrustStore::new().trust(
///     ServiceId::new("orders")?,
///     KeySource::remote("https://orders.internal/.well-known/jwks.json")?,
/// );
/// let verifier = Verifier::builder(ServiceId::new("billing")?, trust).build()?;
/// let consumer = VerifyingConsumer::builder(verifier, DeadLetter::exchange("billing.rejected"))
///     .consume(&connection, "billing.orders")
///     .await?;
/// consumer
///     .run(|message| async move {
///         println!("{} sent {} bytes", message.claims.iss, message.payload.len());
///         Ok::<(), std::io::Error>(())
///     })
///     .await?;
/// # Ok(())
/// # }
/// ```
pub struct VerifyingConsumer {
    consumer: Consumer,
    queue: String,
    stopped: bool,
    /// Whether the lapin consumer returned `None` while a batch was taken.
    ended: bool,
    /// Outcomes of the last batch that `next` has not returned yet, in
    /// delivery order.
    ready: VecDeque<Result<VerifiedDelivery, ConsumeError>>,
    shared: Arc<Shared>,
}

impl VerifyingConsumer {
    /// Starts configuring a consumer that verifies with `verifier` and sends
    /// rejected deliveries to `dead_letter`.
    pub fn builder(verifier: Verifier, dead_letter: DeadLetter) -> ConsumerBuilder {
        ConsumerBuilder {
            verifier,
            opener: None,
            dead_letter,
            prefetch: None,
            consumer_tag: String::new(),
            exclusive: false,
        }
    }

    /// Starts configuring a consumer of sealed messages: each delivery is
    /// opened with `opener`, and its payload is the plaintext. A plain
    /// delivery is rejected as `wrong_type` and sent to `dead_letter` like
    /// every other rejection. See `docs/sealing.md`.
    pub fn opening(opener: Opener, dead_letter: DeadLetter) -> ConsumerBuilder {
        ConsumerBuilder {
            verifier: opener.verifier().clone(),
            opener: Some(opener),
            dead_letter,
            prefetch: None,
            consumer_tag: String::new(),
            exclusive: false,
        }
    }

    /// Returns the channel the consumer receives on.
    pub fn channel(&self) -> &Channel {
        &self.shared.channel
    }

    /// Returns the consumer tag.
    pub fn tag(&self) -> String {
        self.consumer.tag().to_string()
    }

    /// Returns a snapshot of the consumer's counts.
    pub fn stats(&self) -> ConsumerStats {
        self.shared.stats().clone()
    }

    /// Waits for the next delivery whose token verifies, handling rejected
    /// deliveries on the way.
    ///
    /// Returns `None` once the consumer is cancelled (by [`cancel`](Self::cancel)
    /// or by the broker, when the queue is deleted) and its prefetched
    /// deliveries are drained, and after a [`ConsumeError::DeadLetter`].
    /// A connection failure comes out as [`ConsumeError::Amqp`], then `None`.
    ///
    /// The future may be dropped at any point, in a `select!` say: the
    /// delivery being handled is still settled, and one that verified is
    /// requeued.
    pub async fn next(&mut self) -> Option<Result<VerifiedDelivery, ConsumeError>> {
        loop {
            if self.stopped {
                return None;
            }
            if let Some(outcome) = self.ready.pop_front() {
                if matches!(outcome, Err(ConsumeError::DeadLetter(_))) {
                    self.stopped = true;
                    self.ready.clear();
                }
                return Some(outcome);
            }
            if self.ended {
                return None;
            }

            let first = match self.consumer.next().await? {
                Ok(delivery) => delivery,
                Err(err) => return Some(Err(err.into())),
            };
            let batch = self.take_buffered(first);

            // Each batch is verified and settled in its own task, so that
            // dropping this future (a `select!` on shutdown) never leaves a
            // delivery half handled. Verified deliveries whose caller is gone
            // are dropped, which requeues them.
            let task = tokio::spawn(Arc::clone(&self.shared).process_batch(batch));
            match task.await {
                // Ahead of a consumer error that `take_buffered` queued.
                Ok(outcomes) => {
                    for outcome in outcomes.into_iter().rev() {
                        self.ready.push_front(outcome);
                    }
                }
                Err(err) => self.ready.push_front(Err(ConsumeError::Internal(err.to_string()))),
            }
        }
    }

    /// Returns `first` and the deliveries the channel already buffered,
    /// without waiting for more, up to [`MAX_SIGNATURE_BATCH`] in all. A
    /// consumer error ends the batch and is queued in `ready`, so that it
    /// follows the batch.
    fn take_buffered(&mut self, first: Delivery) -> Vec<Delivery> {
        let mut batch = vec![first];
        while batch.len() < MAX_SIGNATURE_BATCH {
            match self.consumer.next().now_or_never() {
                Some(Some(Ok(delivery))) => batch.push(delivery),
                Some(Some(Err(err))) => {
                    self.ready.push_back(Err(err.into()));
                    break;
                }
                Some(None) => {
                    self.ended = true;
                    break;
                }
                None => break,
            }
        }
        batch
    }

    /// Runs `handler` on each verified message, one at a time, until the
    /// consumer is cancelled.
    ///
    /// A message is acknowledged when its handler returns `Ok`. When the
    /// handler fails, the message is requeued once; when it fails again on
    /// the redelivery, the message is dead-lettered with a
    /// `trustwire-handler-error` header. Returns `Ok` when the consumer is
    /// cancelled and the error when the channel or connection fails.
    pub async fn run<F, Fut, E>(mut self, mut handler: F) -> Result<(), ConsumeError>
    where
        F: FnMut(VerifiedMessage) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: fmt::Display,
    {
        while let Some(next) = self.next().await {
            let delivery = next?;
            match handler(delivery.message.clone()).await {
                Ok(()) => delivery.ack().await?,
                Err(err) => delivery.fail(&err.to_string()).await?,
            }
        }
        Ok(())
    }

    /// Asks the broker to stop sending deliveries. Deliveries already
    /// prefetched still come out of [`next`](Self::next), then it returns `None`.
    pub async fn cancel(&self) -> Result<(), ConsumeError> {
        self.shared
            .channel
            .basic_cancel(self.consumer.tag(), BasicCancelOptions::default())
            .await?;
        tracing::info!(queue = %self.queue, consumer_tag = %self.consumer.tag(), "AMQP verifying consumer cancelled");
        Ok(())
    }
}

impl fmt::Debug for VerifyingConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingConsumer")
            .field("queue", &self.queue)
            .field("consumer_tag", &self.consumer.tag())
            .field("audience", self.shared.verifier.audience())
            .field("dead_letter", &self.shared.dead_letter)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

/// A message whose token verified: where it arrived, what it carries and
/// who sent it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifiedMessage {
    /// The exchange it was published to; empty for the default exchange.
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Whether the broker delivered it before (the `redelivered` flag).
    pub redelivered: bool,
    /// The delivery tag on the consumer's channel.
    pub delivery_tag: u64,
    /// The AMQP properties, headers included.
    pub properties: BasicProperties,
    /// The body; for a sealed message, the decrypted plaintext.
    pub payload: Bytes,
    /// The verified claims; `claims.iss` is the sending service.
    pub claims: Claims,
    /// The key id that signed the token.
    pub kid: String,
}

/// A verified delivery that the application must settle: [`ack`](Self::ack)
/// when it is processed, [`fail`](Self::fail) when it could not be.
///
/// Dropping it unsettled requeues it (with a warning), and its `jti` is
/// forgotten so the redelivery is not taken for a replay.
#[must_use = "settle the delivery with ack() or fail()"]
pub struct VerifiedDelivery {
    message: VerifiedMessage,
    /// The JWE of a sealed message, which a dead-lettered copy carries
    /// instead of the plaintext.
    sealed_body: Option<Bytes>,
    acker: Acker,
    verified: Verified,
    shared: Arc<Shared>,
    settled: bool,
}

impl VerifiedDelivery {
    fn new(delivery: Delivery, verified: Verified, plaintext: Option<Vec<u8>>, shared: Arc<Shared>) -> Self {
        shared.stats().verified += 1;
        let (payload, sealed_body) = match plaintext {
            Some(plaintext) => (Bytes::from(plaintext), Some(Bytes::from(delivery.data))),
            None => (Bytes::from(delivery.data), None),
        };
        let message = VerifiedMessage {
            exchange: delivery.exchange.to_string(),
            routing_key: delivery.routing_key.to_string(),
            redelivered: delivery.redelivered,
            delivery_tag: delivery.delivery_tag,
            properties: delivery.properties,
            payload,
            claims: verified.claims.clone(),
            kid: verified.kid.clone(),
        };
        Self {
            message,
            sealed_body,
            acker: delivery.acker,
            verified,
            shared,
            settled: false,
        }
    }

    /// Returns the message.
    pub fn message(&self) -> &VerifiedMessage {
        &self.message
    }

    /// Acknowledges the delivery.
    ///
    /// When the acknowledgement cannot be sent (the channel closed), the
    /// token's `jti` is forgotten, because RabbitMQ redelivers the message
    /// and that redelivery must verify.
    pub async fn ack(mut self) -> Result<(), ConsumeError> {
        self.settled = true;
        match settle(&self.shared.channel, &self.acker, Settle::Ack).await {
            Ok(()) => {
                self.shared.stats().acked += 1;
                Ok(())
            }
            Err(err) => {
                self.shared.verifier.forget(&self.verified).await;
                Err(err)
            }
        }
    }

    /// Reports that the handler failed on this message.
    ///
    /// The token's `jti` is forgotten, and a first delivery is requeued. A
    /// redelivery is dead-lettered with a `trustwire-handler-error` header
    /// containing `error` (at most 256 bytes), so a message that always
    /// fails is not requeued forever. The copy of a sealed message carries
    /// the JWE that arrived, never the plaintext.
    pub async fn fail(mut self, error: &str) -> Result<(), ConsumeError> {
        self.settled = true;
        let shared = Arc::clone(&self.shared);
        shared.verifier.forget(&self.verified).await;
        shared.stats().handler_failures += 1;

        let message = &self.message;
        let error_text = truncate(error, MAX_HANDLER_ERROR_LEN);
        let disposition = if message.redelivered {
            let rejected = Rejected {
                exchange: &message.exchange,
                routing_key: &message.routing_key,
                properties: &message.properties,
                payload: self.sealed_body.as_ref().unwrap_or(&message.payload),
                why: (HANDLER_ERROR_HEADER, error_text.clone()),
            };
            let outcome = dead_letter(
                &shared.channel,
                shared.frame_max,
                &shared.dead_letter,
                shared.consumer_name(),
                &self.acker,
                rejected,
            )
            .await;
            match outcome {
                Ok(disposition) => disposition,
                Err(err) => {
                    tracing::warn!(
                        iss = %message.claims.iss, jti = %message.claims.jti, handler_error = %error_text, error = %err,
                        "AMQP message handler failed and the message could not be dead-lettered"
                    );
                    if matches!(err, ConsumeError::DeadLetter(_)) {
                        shared.stop(&err).await;
                    }
                    return Err(err);
                }
            }
        } else {
            settle(&shared.channel, &self.acker, Settle::Requeue).await?;
            Disposition::Requeued
        };
        shared.count(disposition);

        metrics::counter!("trustwire_amqp_handler_failures_total", "disposition" => disposition.as_str()).increment(1);
        tracing::warn!(
            iss = %message.claims.iss, kid = %message.kid, jti = %message.claims.jti,
            exchange = %message.exchange, routing_key = %message.routing_key, redelivered = message.redelivered,
            disposition = %disposition, error = %error_text, "AMQP message handler failed"
        );
        Ok(())
    }
}

impl Deref for VerifiedDelivery {
    type Target = VerifiedMessage;

    fn deref(&self) -> &VerifiedMessage {
        &self.message
    }
}

impl Drop for VerifiedDelivery {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        tracing::warn!(
            iss = %self.message.claims.iss, jti = %self.message.claims.jti, delivery_tag = self.message.delivery_tag,
            "verified AMQP delivery dropped without ack or fail; requeuing it"
        );
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Without a runtime the delivery stays unacknowledged until the
            // channel closes, and its redelivery will be rejected as replayed.
            return;
        };
        let shared = Arc::clone(&self.shared);
        let verified = self.verified.clone();
        let acker = self.acker.clone();
        runtime.spawn(async move {
            shared.verifier.forget(&verified).await;
            if let Err(err) = settle(&shared.channel, &acker, Settle::Requeue).await {
                tracing::warn!(error = %err, "requeuing a dropped delivery failed; it returns to the queue when the channel closes");
            }
        });
    }
}

impl fmt::Debug for VerifiedDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedDelivery")
            .field("message", &self.message)
            .field("settled", &self.settled)
            .finish_non_exhaustive()
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Allows at most 10 rejection warnings per second; the rest go to debug.
#[derive(Default)]
struct WarnLimiter {
    second: AtomicU64,
    count: AtomicU64,
}

impl WarnLimiter {
    const PER_SECOND: u64 = 10;

    fn allow(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or(0);
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < Self::PER_SECOND
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_keeps_char_boundaries() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("ééé", 3), "é");
        assert_eq!(
            truncate(&"x".repeat(300), MAX_HANDLER_ERROR_LEN).len(),
            MAX_HANDLER_ERROR_LEN
        );
    }

    #[test]
    fn warn_limiter_caps_a_second() {
        let limiter = WarnLimiter::default();
        let allowed = (0..50).filter(|_| limiter.allow()).count();
        // The loop may straddle a second boundary, which allows one more batch.
        assert!((10..=20).contains(&allowed), "{allowed}");
    }
}
