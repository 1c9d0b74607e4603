//! Sealed messages on core NATS: the payload is a JWE to the encryption keys
//! of the audience, the token signs the JWE, and a `Trustwire-Sealed: 1`
//! header marks the message for opening.
//!
//! The marker is not authenticated, so it only routes a message to the
//! right check. An [`OpeningSubscriber`] hands on nothing it did not open,
//! and a plain [`super::VerifyingSubscriber`] rejects a marked message as
//! `wrong_type` instead of passing the JWE on as if it were the payload.

use std::time::Duration;

use async_nats::subject::ToSubject;
use async_nats::{Client, HeaderMap, HeaderName, HeaderValue, Message, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;

use super::dead_letter::{DeadLetter, DeadLetterSink, note_transport_rejection};
use super::headers::{HeadersTooLarge, InvalidHeader, channel_binding, read_token, with_token};
use super::subscriber::{BatchQueue, check_arrived, confirm_subscription, dead_letter, take_arrived};
use crate::envelope::{Claims, InvalidBinding, Reason, Rejection};
use crate::identity::Audience;
use crate::seal::{Opened, Opener, RecipientDirectory, SealError, Sealer};

/// The header that marks a sealed message. Its value is `1`; a receiver
/// treats any message with the header (under any case, with any value) as
/// sealed.
pub const SEALED_HEADER: &str = "Trustwire-Sealed";

/// Errors from sealing and publishing a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealedPublishError {
    /// The recipients could not be resolved from the audience (a service
    /// missing from the directory, a key source that cannot be fetched, a
    /// JWK Set without an encryption key) or the message could not be
    /// sealed and signed.
    #[error("cannot seal the message")]
    Seal(#[from] SealError),

    /// The subject cannot be a channel binding (empty, too long or with
    /// control characters).
    #[error("cannot bind the token to the subject")]
    Subject(#[from] InvalidBinding),

    /// A caller's header value contains `\r` or `\n`.
    #[error(transparent)]
    Header(#[from] InvalidHeader),

    /// The headers with the token are longer than JetStream stores
    /// ([`super::MAX_JETSTREAM_HEADER_BYTES`]). Only a [`super::SealedJetStream`]
    /// returns it. Nothing was sent.
    #[error(transparent)]
    TooLarge(#[from] HeadersTooLarge),

    /// async-nats could not publish the message.
    #[error("publishing to NATS failed")]
    Publish(#[from] async_nats::PublishError),

    /// The JetStream publish or its acknowledgement failed (no stream for
    /// the subject, timeout, duplicate rules).
    #[error("JetStream publish failed")]
    JetStream(#[from] async_nats::jetstream::context::PublishError),
}

impl SealedPublishError {
    /// Returns the rejection reason this error corresponds to, when it has
    /// one: [`Reason::TooLarge`] for [`SealedPublishError::TooLarge`].
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Self::TooLarge(_) => Some(Reason::TooLarge),
            _ => None,
        }
    }
}

/// The sealer, audience, recipient directory and optional lifetime override
/// that every sealed message of one publisher shares.
#[derive(Debug, Clone)]
pub(super) struct SealStamp {
    pub(super) sealer: Sealer,
    pub(super) audience: Audience,
    pub(super) directory: RecipientDirectory,
    pub(super) ttl: Option<Duration>,
}

impl SealStamp {
    /// Resolves the audience to recipients, seals `payload` bound to
    /// `subject`, and returns the headers (the caller's, the token and the
    /// marker) and the JWE to publish.
    pub(super) async fn seal(
        &self,
        subject: &str,
        user: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Result<(HeaderMap, Bytes), SealedPublishError> {
        let binding = channel_binding(subject)?;
        let recipients = self.directory.resolve(&self.audience).await?;
        let mut message = self.sealer.message(&recipients, binding);
        if let Some(ttl) = self.ttl {
            message = message.ttl(ttl);
        }
        let sealed = message.seal(payload)?;

        let user = user.map(without_marker);
        let mut headers = with_token(user.as_ref(), &sealed.token)?;
        headers.insert(HeaderName::from_static(SEALED_HEADER), HeaderValue::from_lossy("1"));
        tracing::debug!(iss = %self.sealer.signer().service(), jti = %sealed.jti, subject, recipients = recipients.len(), "sealed NATS message");
        Ok((headers, Bytes::from(sealed.jwe)))
    }
}

/// Copies `user` headers without any `Trustwire-Sealed` (under any case),
/// so the sealed message carries exactly the one marker the stamp adds.
fn without_marker(user: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, values) in user.iter() {
        let text: &str = name.as_ref();
        if text.eq_ignore_ascii_case(SEALED_HEADER) {
            continue;
        }
        for value in values {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// Returns whether a received message carries the sealed marker, under any case.
pub(crate) fn is_sealed(headers: Option<&HeaderMap>) -> bool {
    let Some(headers) = headers else {
        return false;
    };
    headers.iter().any(|(name, _)| {
        let text: &str = name.as_ref();
        text.eq_ignore_ascii_case(SEALED_HEADER)
    })
}

/// Reads the token of a message that reached a verifier for plain
/// messages. A sealed message is `wrong_type`: verified as plain, its JWE
/// would be handed on as the payload. Then [`read_token`] applies.
pub(crate) fn plain_token(headers: Option<&HeaderMap>) -> Result<&str, Rejection> {
    if is_sealed(headers) {
        return Err(Rejection::new(
            Reason::WrongType,
            "the message is sealed (Trustwire-Sealed header), but this receiver verifies plain messages; open it with an OpeningSubscriber or OpeningConsumer",
        ));
    }
    read_token(headers)
}

/// Reads the token of a message that reached an opener of sealed messages.
/// A plain message (no marker) is `wrong_type`. Then [`read_token`] applies.
pub(crate) fn sealed_token(headers: Option<&HeaderMap>) -> Result<&str, Rejection> {
    if !is_sealed(headers) {
        return Err(Rejection::new(
            Reason::WrongType,
            "the message is plain (no Trustwire-Sealed header), but this receiver accepts only sealed messages",
        ));
    }
    read_token(headers)
}

/// Reads the token of `message`, which must carry the sealed marker, so a
/// plain message is `wrong_type` here.
pub(super) fn sealed_message_token(message: &Message) -> Result<&str, Rejection> {
    sealed_token(message.headers.as_ref()).inspect_err(|rejection| {
        note_transport_rejection(rejection, message.subject.as_str());
    })
}

/// Seals what a service publishes on core NATS: each payload is encrypted to
/// the encryption keys of the audience, which `directory` resolves, and the
/// JWE is published with a `Trustwire-Token` header whose token signs it and
/// a `Trustwire-Sealed: 1` header. Cloning is cheap.
///
/// ```no_run
/// use trustwire::jwks::KeySource;
/// use trustwire::nats::SealedPublisher;
/// use trustwire::seal::{RecipientDirectory, Sealer};
/// use trustwire::{ServiceId, Signer, SigningKey};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let sealer = Sealer::new(Signer::new(ServiceId::new("orders")?, SigningKey::generate()?));
/// let payments = ServiceId::new("payments")?;
/// let directory = RecipientDirectory::new().add(
///     payments.clone(),
///     KeySource::remote("https://payments.internal/.well-known/jwks.json")?,
/// );
/// let publisher = SealedPublisher::new(client, sealer, payments, directory);
/// publisher.publish("orders.created", r#"{"card":"4111 1111 1111 1111"}"#.into()).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SealedPublisher {
    client: Client,
    stamp: SealStamp,
}

impl SealedPublisher {
    /// Wraps `client`; every message is sealed to `audience`, whose
    /// encryption keys come from `directory`, and signed by `sealer`.
    pub fn new(client: Client, sealer: Sealer, audience: impl Into<Audience>, directory: RecipientDirectory) -> Self {
        Self {
            client,
            stamp: SealStamp {
                sealer,
                audience: audience.into(),
                directory,
                ttl: None,
            },
        }
    }

    /// Sets the token lifetime of messages from this publisher. Default: the
    /// signer's lifetime (60 s unless configured otherwise).
    pub fn token_ttl(mut self, ttl: Duration) -> Self {
        self.stamp.ttl = Some(ttl);
        self
    }

    /// The wrapped client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Seals `payload` and publishes the JWE on `subject`.
    pub async fn publish<S: ToSubject>(&self, subject: S, payload: Bytes) -> Result<(), SealedPublishError> {
        self.publish_inner(subject, None, payload).await
    }

    /// Seals `payload` and publishes the JWE on `subject` with the caller's
    /// headers, which are kept and sent unencrypted. A `Trustwire-Token` or
    /// `Trustwire-Sealed` among them is replaced.
    pub async fn publish_with_headers<S: ToSubject>(
        &self,
        subject: S,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), SealedPublishError> {
        self.publish_inner(subject, Some(&headers), payload).await
    }

    async fn publish_inner<S: ToSubject>(
        &self,
        subject: S,
        user: Option<&HeaderMap>,
        payload: Bytes,
    ) -> Result<(), SealedPublishError> {
        let subject = subject.to_subject();
        let (headers, jwe) = self.stamp.seal(subject.as_str(), user, &payload).await?;
        self.client.publish_with_headers(subject, headers, jwe).await?;
        Ok(())
    }
}

/// A sealed message that was verified and decrypted.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OpenedMessage {
    /// The message as it arrived: its payload is the JWE.
    pub message: Message,
    /// The verified token and the plaintext.
    pub opened: Opened,
}

impl OpenedMessage {
    pub(super) fn new(message: Message, opened: Opened) -> Self {
        Self { message, opened }
    }

    /// The verified claims.
    pub fn claims(&self) -> &Claims {
        &self.opened.verified.claims
    }

    /// The sending service (`iss`).
    pub fn issuer(&self) -> &str {
        &self.opened.verified.claims.iss
    }

    /// The principal the sender acts for (`sub`), if any.
    pub fn principal(&self) -> Option<&str> {
        self.opened.verified.claims.sub.as_deref()
    }

    /// The subject the message arrived on.
    pub fn subject(&self) -> &str {
        self.message.subject.as_str()
    }

    /// The decrypted payload.
    pub fn payload(&self) -> &[u8] {
        &self.opened.plaintext
    }
}

/// Options of an [`OpeningSubscriber`].
#[derive(Debug)]
#[must_use = "a subscriber is only created by subscribe() or queue_subscribe()"]
pub struct OpeningSubscriberBuilder {
    client: Client,
    opener: Opener,
    dead_letter: DeadLetter,
}

impl OpeningSubscriberBuilder {
    /// Sets where rejected messages are copied. Default: a core publish to
    /// `trustwire.dead_letter`.
    pub fn dead_letter(mut self, dead_letter: DeadLetter) -> Self {
        self.dead_letter = dead_letter;
        self
    }

    /// Subscribes to `subject`. Returns once the server has registered the
    /// subscription (one round trip), so a message published after that, on
    /// any connection, reaches it.
    pub async fn subscribe<S: ToSubject>(self, subject: S) -> Result<OpeningSubscriber, async_nats::SubscribeError> {
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
    ) -> Result<OpeningSubscriber, async_nats::SubscribeError> {
        let subscriber = self.client.queue_subscribe(subject, group.into()).await?;
        confirm_subscription(&self.client).await;
        Ok(self.finish(subscriber))
    }

    fn finish(self, subscriber: Subscriber) -> OpeningSubscriber {
        tracing::info!(aud = %self.opener.verifier().audience(), dead_letter = self.dead_letter.as_subject(), "opening NATS subscriber started");
        OpeningSubscriber {
            subscriber,
            opener: self.opener,
            sink: DeadLetterSink::new(self.client, self.dead_letter),
            batches: BatchQueue::new(),
        }
    }
}

/// Yields only sealed messages that open: the token verifies against the
/// subject and the JWE, the JWE decrypts with one of this service's keys,
/// and its header names the token's `iss` and `jti`. Every other message,
/// plain ones included (`wrong_type`), is logged with its reason code,
/// counted and copied, still encrypted, to the dead-letter subject.
///
/// When several messages have arrived, up to
/// [`MAX_SIGNATURE_BATCH`](crate::envelope::MAX_SIGNATURE_BATCH) of them are
/// opened together with [`Opener::open_batch`], which gives each the result
/// that opening it alone would. The subscriber never waits for more messages
/// to fill a batch.
///
/// ```no_run
/// use trustwire::nats::{DeadLetter, OpeningSubscriber};
///
/// # async fn run(client: async_nats::Client, opener: trustwire::seal::Opener) -> Result<(), Box<dyn std::error::Error>> {
/// let mut subscriber = OpeningSubscriber::builder(client, opener)
///     .dead_letter(DeadLetter::subject("payments.rejected"))
///     .queue_subscribe("orders.>", "payments")
///     .await?;
/// while let Some(message) = subscriber.next().await {
///     println!("{} bytes from {}", message.payload().len(), message.issuer());
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct OpeningSubscriber {
    subscriber: Subscriber,
    opener: Opener,
    sink: DeadLetterSink,
    /// Opened messages that `next` has not returned yet.
    batches: BatchQueue<OpenedMessage>,
}

impl OpeningSubscriber {
    /// Starts configuring a subscriber that opens with `opener`.
    pub fn builder(client: Client, opener: Opener) -> OpeningSubscriberBuilder {
        OpeningSubscriberBuilder {
            client,
            opener,
            dead_letter: DeadLetter::default(),
        }
    }

    /// Waits for the next message that opens. Returns `None` once the
    /// subscription has ended (unsubscribed or the client was dropped).
    ///
    /// Cancel-safe: if the future is dropped at any point (in a `select!`,
    /// for example), the messages it took from the subscription are still
    /// opened and returned by the next call.
    pub async fn next(&mut self) -> Option<OpenedMessage> {
        loop {
            if let Some(message) = self.batches.next_ready().await {
                return Some(message);
            }
            let first = self.subscriber.next().await?;
            let batch = take_arrived(&mut self.subscriber, first);
            let work = open_batch(self.opener.clone(), self.sink.clone(), batch);
            self.batches.start(work);
        }
    }

    /// Unsubscribes; [`next`](Self::next) then returns `None` once the
    /// messages already received are consumed.
    pub async fn unsubscribe(&mut self) -> Result<(), async_nats::UnsubscribeError> {
        self.subscriber.unsubscribe().await
    }
}

/// Opens `batch`, dead-letters the rejected messages and returns the opened
/// ones in order.
async fn open_batch(opener: Opener, sink: DeadLetterSink, batch: Vec<Message>) -> Vec<OpenedMessage> {
    let checked = batch
        .iter()
        .map(|message| check_arrived(message, sealed_message_token))
        .collect();
    let results = opener.open_checked(checked).await;
    let mut opened_messages = Vec::with_capacity(batch.len());
    for (message, result) in batch.into_iter().zip(results) {
        match result {
            Ok(opened) => opened_messages.push(OpenedMessage::new(message, opened)),
            Err(rejection) => dead_letter(&sink, &message, &rejection).await,
        }
    }
    opened_messages
}

#[cfg(test)]
mod tests {
    use super::super::headers::TOKEN_HEADER;
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(HeaderName::try_from(*name).unwrap(), HeaderValue::from_lossy(value));
        }
        headers
    }

    #[test]
    fn marker_found_under_any_case() {
        assert!(is_sealed(Some(&map(&[(SEALED_HEADER, "1")]))));
        assert!(is_sealed(Some(&map(&[("trustwire-sealed", "yes")]))));
        assert!(!is_sealed(Some(&map(&[("Other", "1")]))));
        assert!(!is_sealed(None));
    }

    #[test]
    fn marker_decides_wrong_type() {
        let sealed = map(&[("trustwire-sealed", "1"), (TOKEN_HEADER, "a.b.c")]);
        let plain = map(&[(TOKEN_HEADER, "a.b.c")]);

        assert_eq!(plain_token(Some(&sealed)).unwrap_err().reason(), Reason::WrongType);
        assert_eq!(plain_token(Some(&plain)).unwrap(), "a.b.c");
        assert_eq!(sealed_token(Some(&plain)).unwrap_err().reason(), Reason::WrongType);
        assert_eq!(sealed_token(None).unwrap_err().reason(), Reason::WrongType);
        assert_eq!(sealed_token(Some(&sealed)).unwrap(), "a.b.c");
    }

    #[test]
    fn marker_checked_before_token() {
        let sealed_without_token = map(&[(SEALED_HEADER, "1")]);
        let plain_without_token = map(&[("Other", "1")]);

        assert_eq!(
            plain_token(Some(&sealed_without_token)).unwrap_err().reason(),
            Reason::WrongType
        );
        assert_eq!(
            sealed_token(Some(&sealed_without_token)).unwrap_err().reason(),
            Reason::Malformed
        );
        assert_eq!(
            plain_token(Some(&plain_without_token)).unwrap_err().reason(),
            Reason::Malformed
        );
    }

    #[test]
    fn caller_marker_dropped() {
        let user = map(&[("TRUSTWIRE-SEALED", "0"), ("Keep", "1")]);
        let headers = without_marker(&user);
        assert!(!is_sealed(Some(&headers)));
        assert_eq!(headers.get("Keep").unwrap().as_str(), "1");
    }
}
