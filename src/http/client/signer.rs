//! The request signer shared by the reqwest extension and the tower layer.

use http::header::{AUTHORIZATION, HeaderName, HeaderValue};

use crate::envelope::{Binding, InvalidBinding, SignError, Signer};
use crate::http::BoxError;
use crate::http::server::DEFAULT_MAX_BODY_BYTES;
use crate::identity::Audience;

/// Signs outbound HTTP requests to one audience: each token binds the
/// method, the canonical path and query, and a non-empty body.
///
/// ```
/// use trustwire::http::{RequestBuilderExt, RequestSigner};
/// use trustwire::{ServiceId, Signer, SigningKey};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let signer = Signer::new(ServiceId::new("orders")?, SigningKey::generate()?);
/// let payments = RequestSigner::new(signer, ServiceId::new("payments")?);
///
/// let response = reqwest::Client::new()
///     .post("http://127.0.0.1:8080/v1/charges?currency=EUR")
///     .body(r#"{"amount":42}"#)
///     .sign_with(&payments)?
///     .send()
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RequestSigner {
    signer: Signer,
    audience: Audience,
    header: HeaderName,
    max_body_bytes: usize,
}

/// Why a request could not be signed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignRequestError {
    /// The method or target cannot be bound.
    #[error("cannot bind the request")]
    InvalidTarget(#[from] InvalidBinding),

    /// The body is a stream, so its digest is not known before sending.
    #[error("the request body is a stream; pass the body as bytes so its digest can be signed")]
    StreamingBody,

    /// The body is above the signer's buffering limit.
    #[error("the request body is above the limit of {limit} bytes; raise RequestSigner::max_body_bytes")]
    BodyTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },

    /// Reading the body to digest it failed.
    #[error("reading the request body failed")]
    Body(#[source] BoxError),

    /// Signing the token failed.
    #[error("signing the request token failed")]
    Sign(#[from] SignError),

    /// reqwest could not build the request.
    #[error("building the request failed")]
    Request(#[source] ::reqwest::Error),
}

impl RequestSigner {
    /// A signer of requests to `audience`, sending `Authorization: Bearer`.
    pub fn new(signer: Signer, audience: impl Into<Audience>) -> Self {
        Self {
            signer,
            audience: audience.into(),
            header: AUTHORIZATION,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }

    /// Sends the token in `header` instead of `Authorization`, as the bare
    /// token with no `Bearer` scheme. Default: `Authorization: Bearer <token>`.
    pub fn header(mut self, header: HeaderName) -> Self {
        self.header = header;
        self
    }

    /// Sets the largest body that [`super::SignLayer`] buffers to digest.
    /// Default 2 MiB, the receiving layer's default limit.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// The header the token goes in.
    pub fn header_name(&self) -> &HeaderName {
        &self.header
    }

    pub(crate) fn body_limit(&self) -> usize {
        self.max_body_bytes
    }

    /// Signs a token for `binding` and `body` and returns the header value
    /// to send. An empty body is not bound, matching the receiving layer.
    pub fn header_value(&self, binding: Binding, body: &[u8]) -> Result<HeaderValue, SignRequestError> {
        let mut token = self.signer.token(self.audience.clone()).binding(binding);
        if !body.is_empty() {
            token = token.payload(body);
        }
        let token = token.sign()?;

        let value = if self.header == AUTHORIZATION {
            format!("Bearer {token}")
        } else {
            token
        };
        HeaderValue::try_from(value)
            .map_err(|_| SignError::Encoding("the token is not a valid header value".to_owned()).into())
    }
}
