//! Request/reply with both directions signed.
//!
//! The request is signed like any message. The responder signs its reply for
//! the requester (`aud` is the request's verified `iss`) and binds it to the
//! reply subject, `nats:<inbox>`. The requester makes a fresh random inbox
//! for every request and verifies the reply against that inbox, so a reply
//! captured from one request cannot be replayed onto another.

use async_nats::subject::ToSubject;
use async_nats::{HeaderMap, Request};
use bytes::Bytes;

use super::headers::channel_binding;
use super::publisher::{PublishError, SignedPublisher};
use super::subscriber::{VerifiedMessage, verify_message};
use crate::envelope::{Expected, Rejection, Verifier};
use crate::identity::{Audience, ServiceId};

/// Errors from a signed request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The request could not be signed or its headers built.
    #[error("cannot sign the request")]
    Sign(#[from] PublishError),

    /// No reply in time, no responders, or the connection failed.
    #[error("the request failed")]
    Request(#[from] async_nats::RequestError),

    /// The reply arrived but failed verification.
    #[error("the reply was rejected: {}", .0.code())]
    ReplyRejected(Rejection),
}

impl RequestError {
    /// The rejection, when the reply arrived but failed verification.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Self::ReplyRejected(rejection) => Some(rejection),
            _ => None,
        }
    }
}

impl SignedPublisher {
    /// Signs and sends a request, waits for the reply and returns it only if
    /// `replies` verifies it: signed for `replies`' audience by a trusted
    /// issuer, bound to this request's inbox and payload.
    ///
    /// ```no_run
    /// # use trustwire::nats::SignedPublisher;
    /// # async fn run(publisher: SignedPublisher, replies: trustwire::Verifier) -> Result<(), Box<dyn std::error::Error>> {
    /// let reply = publisher.request("payments.quote", r#"{"order":42}"#.into(), &replies).await?;
    /// println!("quote from {}: {:?}", reply.issuer(), reply.payload());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn request<S: ToSubject>(
        &self,
        subject: S,
        payload: Bytes,
        replies: &Verifier,
    ) -> Result<VerifiedMessage, RequestError> {
        self.request_inner(subject, None, payload, replies).await
    }

    /// As [`request`](Self::request), with the caller's headers kept.
    pub async fn request_with_headers<S: ToSubject>(
        &self,
        subject: S,
        headers: HeaderMap,
        payload: Bytes,
        replies: &Verifier,
    ) -> Result<VerifiedMessage, RequestError> {
        self.request_inner(subject, Some(&headers), payload, replies).await
    }

    async fn request_inner<S: ToSubject>(
        &self,
        subject: S,
        user: Option<&HeaderMap>,
        payload: Bytes,
        replies: &Verifier,
    ) -> Result<VerifiedMessage, RequestError> {
        let subject = subject.to_subject();
        let stamp = self.stamp();
        let headers = stamp.headers_for(&stamp.audience, subject.as_str(), user, &payload)?;

        let inbox = self.client().new_inbox();
        let request = Request::new()
            .inbox(inbox.clone())
            .headers(headers)
            .payload(payload)
            .timeout(Some(self.request_timeout));
        let reply = self.client().send_request(subject, request).await?;

        // The reply is judged against the inbox this call made, not against
        // whatever subject the reply claims to have arrived on.
        let binding = channel_binding(&inbox).map_err(|err| RequestError::Sign(err.into()))?;
        let expected = Expected::message(binding, &reply.payload);
        match verify_message(replies, &reply, &expected).await {
            Ok(verified) => Ok(VerifiedMessage::new(reply, verified)),
            Err(rejection) => Err(RequestError::ReplyRejected(rejection)),
        }
    }

    /// Signs `payload` as the reply to `request` and publishes it on the
    /// request's reply subject. The token's `aud` is the requester (the
    /// request's verified `iss`), not this publisher's audience.
    pub async fn reply(&self, request: &VerifiedMessage, payload: Bytes) -> Result<(), PublishError> {
        self.reply_with_headers(request, HeaderMap::new(), payload).await
    }

    /// As [`reply`](Self::reply), with the caller's headers kept.
    pub async fn reply_with_headers(
        &self,
        request: &VerifiedMessage,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), PublishError> {
        let Some(reply_subject) = request.message.reply.clone() else {
            return Err(PublishError::NoReplySubject {
                subject: request.message.subject.to_string(),
            });
        };

        // A verified issuer is a trust store key, so this parse only fails for
        // a message that was not verified by this crate.
        let requester = ServiceId::new(request.issuer())?;
        let stamp = self.stamp();
        let headers = stamp.headers_for(
            &Audience::one(requester),
            reply_subject.as_str(),
            Some(&headers),
            &payload,
        )?;
        self.client()
            .publish_with_headers(reply_subject, headers, payload)
            .await?;
        Ok(())
    }
}
