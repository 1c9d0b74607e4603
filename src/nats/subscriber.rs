//! The verifying subscriber for core NATS.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use async_nats::subject::ToSubject;
use async_nats::{Client, Message, Subscriber};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tokio::task::JoinHandle;

use super::dead_letter::{DeadLetter, DeadLetterSink, note_transport_rejection};
use super::headers::{ORIGINAL_SUBJECT_HEADER, channel_binding};
use super::sealed::plain_token;
use crate::envelope::{Claims, Expected, MAX_SIGNATURE_BATCH, Reason, Rejection, Verified, Verifier, verify_checked};

/// A message whose token passed every check, with the sender's identity.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifiedMessage {
    /// The message as it arrived, headers included.
    pub message: Message,
    /// The verified token: claims, `kid` and the replay entry.
    pub verified: Verified,
}

impl VerifiedMessage {
    pub(crate) fn new(message: Message, verified: Verified) -> Self {
        Self { message, verified }
    }

    /// The verified claims.
    pub fn claims(&self) -> &Claims {
        &self.verified.claims
    }

    /// The sending service (`iss`).
    pub fn issuer(&self) -> &str {
        &self.verified.claims.iss
    }

    /// The principal the sender acts for (`sub`), if any.
    pub fn principal(&self) -> Option<&str> {
        self.verified.claims.sub.as_deref()
    }

    /// The subject the message arrived on.
    pub fn subject(&self) -> &str {
        self.message.subject.as_str()
    }

    /// The payload, unchanged.
    pub fn payload(&self) -> &Bytes {
        &self.message.payload
    }
}

/// Options of a [`VerifyingSubscriber`].
#[derive(Debug)]
#[must_use = "a subscriber is only created by subscribe() or queue_subscribe()"]
pub struct SubscriberBuilder {
    client: Client,
    verifier: Verifier,
    dead_letter: DeadLetter,
}

impl SubscriberBuilder {
    /// Sets where rejected messages are copied. Default: a core publish to
    /// `trustwire.dead_letter`.
    pub fn dead_letter(mut self, dead_letter: DeadLetter) -> Self {
        self.dead_letter = dead_letter;
        self
    }

    /// Subscribes to `subject`. Returns once the server has registered the
    /// subscription (see [`VerifyingSubscriber`]).
    pub async fn subscribe<S: ToSubject>(self, subject: S) -> Result<VerifyingSubscriber, async_nats::SubscribeError> {
        let subscriber = self.client.subscribe(subject).await?;
        confirm_subscription(&self.client).await;
        Ok(self.finish(subscriber))
    }

    /// Subscribes to `subject` in queue group `group`: each message goes to
    /// one member of the group. Returns once the server has registered the
    /// subscription.
    pub async fn queue_subscribe<S: ToSubject>(
        self,
        subject: S,
        group: impl Into<String>,
    ) -> Result<VerifyingSubscriber, async_nats::SubscribeError> {
        let subscriber = self.client.queue_subscribe(subject, group.into()).await?;
        confirm_subscription(&self.client).await;
        Ok(self.finish(subscriber))
    }

    fn finish(self, subscriber: Subscriber) -> VerifyingSubscriber {
        tracing::info!(aud = %self.verifier.audience(), dead_letter = self.dead_letter.as_subject(), "verifying NATS subscriber started");
        VerifyingSubscriber {
            subscriber,
            verifier: self.verifier,
            sink: DeadLetterSink::new(self.client, self.dead_letter),
            batches: BatchQueue::new(),
        }
    }
}

/// Yields only messages whose token verifies. Every other message is logged
/// with its reason code, counted and copied to the dead-letter subject; it
/// never reaches the caller.
///
/// When several messages have arrived, up to [`MAX_SIGNATURE_BATCH`] of
/// them are verified together with [`Verifier::verify_batch`], which gives
/// each the result that verifying it alone would. The subscriber never waits
/// for more messages to fill a batch.
///
/// Subscribing returns once the server has registered the subscription
/// (one round trip), so a message published after that, on any connection,
/// reaches it. async-nats' own `subscribe` returns earlier.
///
/// ```no_run
/// use trustwire::nats::{DeadLetter, VerifyingSubscriber};
///
/// # async fn run(client: async_nats::Client, verifier: trustwire::Verifier) -> Result<(), Box<dyn std::error::Error>> {
/// let mut subscriber = VerifyingSubscriber::builder(client, verifier)
///     .dead_letter(DeadLetter::subject("payments.rejected"))
///     .queue_subscribe("orders.>", "payments")
///     .await?;
/// while let Some(message) = subscriber.next().await {
///     println!("{} from {}", message.subject(), message.issuer());
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct VerifyingSubscriber {
    subscriber: Subscriber,
    verifier: Verifier,
    sink: DeadLetterSink,
    /// Verified messages that `next` has not returned yet.
    batches: BatchQueue<VerifiedMessage>,
}

impl VerifyingSubscriber {
    /// Starts configuring a subscriber that verifies with `verifier`.
    pub fn builder(client: Client, verifier: Verifier) -> SubscriberBuilder {
        SubscriberBuilder {
            client,
            verifier,
            dead_letter: DeadLetter::default(),
        }
    }

    /// Waits for the next verified message. Returns `None` once the
    /// subscription has ended (unsubscribed or the client was dropped).
    ///
    /// Cancel-safe: if the future is dropped at any point (in a `select!`,
    /// for example), the messages it took from the subscription are still
    /// verified and returned by the next call.
    pub async fn next(&mut self) -> Option<VerifiedMessage> {
        loop {
            if let Some(message) = self.batches.next_ready().await {
                return Some(message);
            }
            let first = self.subscriber.next().await?;
            let batch = take_arrived(&mut self.subscriber, first);
            let work = verify_batch(self.verifier.clone(), self.sink.clone(), batch);
            self.batches.start(work);
        }
    }

    /// Unsubscribes; [`next`](Self::next) then returns `None` once the
    /// messages already received are consumed.
    pub async fn unsubscribe(&mut self) -> Result<(), async_nats::UnsubscribeError> {
        self.subscriber.unsubscribe().await
    }
}

/// Verifies `batch`, dead-letters the rejected messages and returns the
/// verified ones in order.
async fn verify_batch(verifier: Verifier, sink: DeadLetterSink, batch: Vec<Message>) -> Vec<VerifiedMessage> {
    let checked = batch
        .iter()
        .map(|message| check_arrived(message, message_token))
        .collect();
    let results = verify_checked(&verifier, checked).await;
    let mut verified_messages = Vec::with_capacity(batch.len());
    for (message, result) in batch.into_iter().zip(results) {
        match result {
            Ok(verified) => verified_messages.push(VerifiedMessage::new(message, verified)),
            Err(rejection) => dead_letter(&sink, &message, &rejection).await,
        }
    }
    verified_messages
}

/// The checked messages of a core NATS receiver that `next` has not
/// returned yet, and the batch still being checked in a task of its own.
/// Both live in the receiver, not in the future `next` returns, so a
/// dropped `next` loses no message.
#[derive(Debug)]
pub(super) struct BatchQueue<T> {
    /// Checked messages in arrival order.
    ready: VecDeque<T>,
    /// The batch whose checks could not finish at once, if any.
    pending: Option<JoinHandle<Vec<T>>>,
}

impl<T: Send + 'static> BatchQueue<T> {
    pub(super) fn new() -> Self {
        Self {
            ready: VecDeque::new(),
            pending: None,
        }
    }

    /// Returns the next checked message, waiting for the pending batch if
    /// there is one. Returns `None` when nothing is queued or pending.
    pub(super) async fn next_ready(&mut self) -> Option<T> {
        loop {
            if let Some(message) = self.ready.pop_front() {
                return Some(message);
            }
            let task = self.pending.as_mut()?;
            let outcome = task.await;
            self.pending = None;
            match outcome {
                Ok(results) => self.ready.extend(results),
                Err(error) => {
                    tracing::error!(%error, "the task checking a batch of NATS messages failed; its messages are lost");
                }
            }
        }
    }

    /// Runs `work`, the checks of one batch, and queues its results. Work
    /// that cannot finish at once (a JWKS fetch, a dead-letter publish that
    /// waits) goes on in a task of its own, which [`Self::next_ready`]
    /// awaits.
    pub(super) fn start(&mut self, work: impl Future<Output = Vec<T>> + Send + 'static) {
        let mut work = Box::pin(work);
        match (&mut work).now_or_never() {
            Some(results) => self.ready.extend(results),
            None => self.pending = Some(tokio::spawn(work)),
        }
    }
}

/// Copies a rejected message to the dead-letter subject of `sink`.
pub(super) async fn dead_letter(sink: &DeadLetterSink, message: &Message, rejection: &Rejection) {
    // A subscription that covers the dead-letter subject receives its own
    // copies; copying them again would loop forever.
    if message.subject.as_str() == sink.subject() {
        tracing::debug!(reason = rejection.code(), subject = %message.subject, "rejected message on the dead-letter subject is not copied again");
        return;
    }
    let origin = [(ORIGINAL_SUBJECT_HEADER, message.subject.to_string())];
    sink.send(message, rejection, &origin).await;
}

/// How long subscribing waits for the server to confirm the subscription.
const CONFIRM_WAIT: Duration = Duration::from_secs(5);

/// Waits until the server has processed everything `client` sent before,
/// a new subscription included: sends an empty message to a fresh inbox
/// and waits for it to come back. async-nats' `subscribe` and `flush`
/// return once the SUB is written to the socket, so without this a message
/// published from another connection right afterwards can reach the server
/// first and miss the subscription.
///
/// Logs a warning and returns after [`CONFIRM_WAIT`] without the echo, when
/// the server is unreachable or this user may not use inboxes. The
/// subscription itself remains in both cases.
pub(super) async fn confirm_subscription(client: &Client) {
    let inbox = client.new_inbox();
    let echo = async {
        let mut echo = client.subscribe(inbox.clone()).await?;
        client.publish(inbox, Bytes::new()).await?;
        client.flush().await?;
        echo.next().await;
        echo.unsubscribe().await?;
        Ok::<(), async_nats::Error>(())
    };
    match tokio::time::timeout(CONFIRM_WAIT, echo).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "could not confirm a new subscription with the NATS server; messages published right after it may miss it");
        }
        Err(_) => {
            tracing::warn!(
                wait_s = CONFIRM_WAIT.as_secs(),
                "the NATS server did not confirm a new subscription in time; messages published right after it may miss it"
            );
        }
    }
}

/// Returns `first` and the messages that arrived after it on `subscriber`,
/// without waiting for more, up to [`MAX_SIGNATURE_BATCH`] in all.
pub(super) fn take_arrived(subscriber: &mut Subscriber, first: Message) -> Vec<Message> {
    let mut batch = vec![first];
    while batch.len() < MAX_SIGNATURE_BATCH {
        match subscriber.next().now_or_never() {
            Some(Some(message)) => batch.push(message),
            // Nothing more has arrived, or the subscription ended, which
            // the next call to `next` returns as `None`.
            Some(None) | None => break,
        }
    }
    batch
}

/// Reads the token of a core NATS message with `read_token` and what it
/// must be bound to: the subject it arrived on and its payload. The subject
/// is checked first.
pub(super) fn check_arrived<'m>(
    message: &'m Message,
    read_token: fn(&'m Message) -> Result<&'m str, Rejection>,
) -> Result<(&'m str, Expected<'m>), Rejection> {
    let binding = match channel_binding(message.subject.as_str()) {
        Ok(binding) => binding,
        Err(err) => {
            let rejection = Rejection::new(Reason::Malformed, err.to_string());
            note_transport_rejection(&rejection, message.subject.as_str());
            return Err(rejection);
        }
    };
    let token = read_token(message)?;
    Ok((token, Expected::message(binding, &message.payload)))
}

/// Reads the token of `message`. A sealed message is `wrong_type` here, so
/// its JWE is never handed on as the payload.
pub(crate) fn message_token(message: &Message) -> Result<&str, Rejection> {
    plain_token(message.headers.as_ref()).inspect_err(|rejection| {
        note_transport_rejection(rejection, message.subject.as_str());
    })
}

/// Reads the token of `message` and verifies it against `expected`.
pub(crate) async fn verify_message(
    verifier: &Verifier,
    message: &Message,
    expected: &Expected<'_>,
) -> Result<Verified, Rejection> {
    let token = message_token(message)?;
    verifier.verify(token, expected).await
}
