//! Dead-lettering: a rejected message is copied, headers and payload, to a
//! configurable subject with a `Trustwire-Rejected: <code>` header, logged and
//! counted, so nothing is dropped silently.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::{Client, Message, jetstream};

use super::headers::dead_letter_headers;
use crate::envelope::Rejection;

/// Default dead-letter subject: `trustwire.dead_letter`.
pub const DEFAULT_DEAD_LETTER_SUBJECT: &str = "trustwire.dead_letter";

/// Where rejected messages are copied.
///
/// ```
/// use trustwire::nats::DeadLetter;
///
/// // A core NATS publish: fire and forget, kept only if someone listens.
/// let core = DeadLetter::subject("payments.rejected");
/// // A JetStream publish that waits for the stream's acknowledgement.
/// let durable = DeadLetter::stream("dlq.payments");
/// assert_eq!(durable.as_subject(), "dlq.payments");
/// # let _ = core;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    subject: String,
    durable: bool,
}

impl Default for DeadLetter {
    /// A core publish to [`DEFAULT_DEAD_LETTER_SUBJECT`].
    fn default() -> Self {
        Self::subject(DEFAULT_DEAD_LETTER_SUBJECT)
    }
}

impl DeadLetter {
    /// Copies rejected messages to `subject` with a core NATS publish. The
    /// copy is lost if no client subscribes and no stream captures the subject.
    pub fn subject(subject: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            durable: false,
        }
    }

    /// Copies rejected messages to `subject` with a JetStream publish and
    /// waits for the stream's acknowledgement. A stream must capture
    /// `subject`; until one does, every dead-letter copy fails, and a
    /// JetStream consumer leaves the rejected message unacknowledged
    /// (redelivered later) instead of terminating it.
    pub fn stream(subject: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            durable: true,
        }
    }

    /// The dead-letter subject.
    pub fn as_subject(&self) -> &str {
        &self.subject
    }

    /// Whether copies go through JetStream and wait for its acknowledgement.
    pub fn is_durable(&self) -> bool {
        self.durable
    }
}

/// Publishes dead-letter copies for one subscriber or consumer.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetterSink {
    client: Client,
    jetstream: Option<jetstream::Context>,
    target: DeadLetter,
}

impl DeadLetterSink {
    pub(crate) fn new(client: Client, target: DeadLetter) -> Self {
        let jetstream = target.durable.then(|| jetstream::new(client.clone()));
        Self {
            client,
            jetstream,
            target,
        }
    }

    /// The dead-letter subject.
    pub(crate) fn subject(&self) -> &str {
        &self.target.subject
    }

    /// Copies `message` to the dead-letter subject with the rejection's code
    /// and `origin` headers. Returns whether the copy was sent (and, for a
    /// durable target, stored); failures are logged and counted here.
    pub(crate) async fn send(
        &self,
        message: &Message,
        rejection: &Rejection,
        origin: &[(&'static str, String)],
    ) -> bool {
        let headers = dead_letter_headers(message.headers.as_ref(), rejection.code(), origin);
        let subject = self.target.subject.clone();
        let payload = message.payload.clone();

        // NOTE: the copy adds headers to the original's, so a message near
        // MAX_JETSTREAM_HEADER_BYTES can give a copy that a stream rejects
        // (error 10097). That is a failed send, logged and counted below.
        let result = match &self.jetstream {
            Some(jetstream) => match jetstream.publish_with_headers(subject, headers, payload).await {
                Ok(ack) => ack.await.map(drop).map_err(|err| err.to_string()),
                Err(err) => Err(err.to_string()),
            },
            None => self
                .client
                .publish_with_headers(subject, headers, payload)
                .await
                .map_err(|err| err.to_string()),
        };

        let ids = (
            rejection.iss().unwrap_or(""),
            rejection.kid().unwrap_or(""),
            rejection.jti().unwrap_or(""),
        );
        match result {
            Ok(()) => {
                metrics::counter!("trustwire_dead_lettered_total", "transport" => "nats", "reason" => rejection.code())
                    .increment(1);
                tracing::debug!(
                    reason = rejection.code(),
                    iss = ids.0,
                    kid = ids.1,
                    jti = ids.2,
                    subject = %message.subject,
                    dead_letter = %self.target.subject,
                    "message dead-lettered"
                );
                true
            }
            Err(error) => {
                metrics::counter!("trustwire_dead_letter_failed_total", "transport" => "nats").increment(1);
                tracing::error!(
                    reason = rejection.code(),
                    iss = ids.0,
                    kid = ids.1,
                    jti = ids.2,
                    subject = %message.subject,
                    dead_letter = %self.target.subject,
                    error,
                    "dead-lettering a rejected message failed"
                );
                false
            }
        }
    }
}

/// Logs and counts a rejection the verifier did not see (a missing or
/// repeated token header), as the verifier does for its own.
pub(crate) fn note_transport_rejection(rejection: &Rejection, subject: &str) {
    metrics::counter!("trustwire_rejected_total", "reason" => rejection.code()).increment(1);
    if WARN_LIMITER.allow() {
        tracing::warn!(
            reason = rejection.code(),
            subject,
            detail = rejection.detail(),
            "message rejected before verification"
        );
    } else {
        tracing::debug!(
            reason = rejection.code(),
            subject,
            detail = rejection.detail(),
            "message rejected before verification"
        );
    }
}

static WARN_LIMITER: WarnLimiter = WarnLimiter {
    second: AtomicU64::new(0),
    count: AtomicU64::new(0),
};

/// Allows at most 10 warnings per second; the rest go to debug.
#[derive(Debug)]
struct WarnLimiter {
    second: AtomicU64,
    count: AtomicU64,
}

impl WarnLimiter {
    const PER_SECOND: u64 = 10;

    fn allow(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < Self::PER_SECOND
    }
}
