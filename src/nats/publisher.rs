//! The signing publisher for core NATS.

use std::time::Duration;

use async_nats::subject::ToSubject;
use async_nats::{Client, HeaderMap};
use bytes::Bytes;

use super::headers::{InvalidHeader, channel_binding, with_token};
use crate::envelope::{InvalidBinding, SignError, Signer};
use crate::identity::{Audience, InvalidServiceId};

/// Default time [`SignedPublisher::request`] waits for a reply: 10 s, as
/// async-nats' own requests.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors from signing and publishing a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The token could not be signed.
    #[error("cannot sign the message")]
    Sign(#[from] SignError),

    /// The subject cannot be a channel binding (empty, too long or with
    /// control characters).
    #[error("cannot bind the token to the subject")]
    Subject(#[from] InvalidBinding),

    /// A caller's header value contains `\r` or `\n`.
    #[error(transparent)]
    Header(#[from] InvalidHeader),

    /// The message that is replied to has no reply subject.
    #[error("the request on subject {subject:?} has no reply subject to respond to")]
    NoReplySubject {
        /// The subject the request arrived on.
        subject: String,
    },

    /// The request's issuer is not a valid service id, so the reply cannot
    /// be addressed to it.
    #[error("cannot address the reply to the requester")]
    Requester(#[from] InvalidServiceId),

    /// async-nats could not publish the message.
    #[error("publishing to NATS failed")]
    Publish(#[from] async_nats::PublishError),
}

/// Signs what a service publishes: each message gets a `Trustwire-Token`
/// header bound to its subject and payload, addressed to the audience given
/// here. Cloning is cheap.
///
/// ```no_run
/// use trustwire::nats::SignedPublisher;
/// use trustwire::{ServiceId, Signer, SigningKey};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let signer = Signer::new(ServiceId::new("orders")?, SigningKey::generate()?);
/// let publisher = SignedPublisher::new(client, signer, ServiceId::new("payments")?);
/// publisher.publish("orders.created", r#"{"order":42}"#.into()).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SignedPublisher {
    client: Client,
    stamp: Stamp,
    pub(super) request_timeout: Duration,
}

/// The signer, audience and optional lifetime override that every signed
/// message of one publisher shares.
#[derive(Debug, Clone)]
pub(crate) struct Stamp {
    pub(crate) signer: Signer,
    pub(crate) audience: Audience,
    pub(crate) ttl: Option<Duration>,
}

impl Stamp {
    /// Signs a token for `audience` bound to `subject` and `payload`, and
    /// returns `user` headers with it added.
    pub(crate) fn headers_for(
        &self,
        audience: &Audience,
        subject: &str,
        user: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Result<HeaderMap, PublishError> {
        let mut token = self
            .signer
            .token(audience.clone())
            .binding(channel_binding(subject)?)
            .payload(payload);
        if let Some(ttl) = self.ttl {
            token = token.ttl(ttl);
        }
        let token = token.sign()?;
        Ok(with_token(user, &token)?)
    }
}

impl SignedPublisher {
    /// Wraps `client`; every message is signed by `signer` for `audience`.
    pub fn new(client: Client, signer: Signer, audience: impl Into<Audience>) -> Self {
        Self {
            client,
            stamp: Stamp {
                signer,
                audience: audience.into(),
                ttl: None,
            },
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// Sets the token lifetime of messages from this publisher. Default: the
    /// signer's lifetime (60 s unless configured otherwise).
    pub fn token_ttl(mut self, ttl: Duration) -> Self {
        self.stamp.ttl = Some(ttl);
        self
    }

    /// Sets how long [`request`](Self::request) waits for a reply. Default 10 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The wrapped client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The signer.
    pub fn signer(&self) -> &Signer {
        &self.stamp.signer
    }

    pub(super) fn stamp(&self) -> &Stamp {
        &self.stamp
    }

    /// Signs and publishes `payload` on `subject`.
    pub async fn publish<S: ToSubject>(&self, subject: S, payload: Bytes) -> Result<(), PublishError> {
        self.publish_inner(subject, None, payload).await
    }

    /// Signs and publishes `payload` on `subject` with the caller's headers,
    /// which are kept; a `Trustwire-Token` among them is replaced.
    pub async fn publish_with_headers<S: ToSubject>(
        &self,
        subject: S,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), PublishError> {
        self.publish_inner(subject, Some(&headers), payload).await
    }

    async fn publish_inner<S: ToSubject>(
        &self,
        subject: S,
        user: Option<&HeaderMap>,
        payload: Bytes,
    ) -> Result<(), PublishError> {
        let subject = subject.to_subject();
        let headers = self
            .stamp
            .headers_for(&self.stamp.audience, subject.as_str(), user, &payload)?;
        self.client.publish_with_headers(subject, headers, payload).await?;
        Ok(())
    }
}
