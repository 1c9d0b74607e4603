//! Sealing outbound request bodies: the body is encrypted to the encryption
//! keys of the audience, and the token signs the JWE.

use std::future::Future;

use bytes::Bytes;
use http::Request;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http_body::Body;
use http_body_util::Full;
use reqwest::RequestBuilder;

use crate::envelope::{Binding, InvalidBinding, SignError};
use crate::http::BoxError;
use crate::http::body::{BodyError, collect_limited};
use crate::http::sealed::{JOSE_CONTENT_TYPE, JOSE_JSON_CONTENT_TYPE, SEALED_CONTENT_TYPE_HEADER, SEALED_HEADER};
use crate::http::server::DEFAULT_MAX_BODY_BYTES;
use crate::http::target::{request_binding, url_binding};
use crate::identity::Audience;
use crate::seal::{RecipientDirectory, SealError, Sealer};

/// Why a request could not be sealed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealRequestError {
    /// The method or target cannot be bound.
    #[error("cannot bind the request")]
    InvalidTarget(#[from] InvalidBinding),

    /// The body is a stream, so it cannot be encrypted and digested before
    /// it is sent.
    #[error("the request body is a stream; pass the body as bytes so it can be sealed")]
    StreamingBody,

    /// The body is above the sealer's buffering limit.
    #[error("the request body is above the limit of {limit} bytes; raise RequestSealer::max_body_bytes")]
    BodyTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },

    /// Reading the body failed.
    #[error("reading the request body failed")]
    Body(#[source] BoxError),

    /// The recipients could not be resolved from the audience (a service
    /// missing from the directory, a key source that cannot be fetched, a
    /// JWK Set without an encryption key) or the body could not be sealed.
    #[error("cannot seal the request body")]
    Seal(#[from] SealError),

    /// Signing the token of a request without a body failed.
    #[error("signing the request token failed")]
    Sign(#[from] SignError),

    /// reqwest could not build the request.
    #[error("building the request failed")]
    Request(#[source] ::reqwest::Error),
}

/// Seals outbound HTTP request bodies to one audience: the body becomes a
/// JWE to the encryption keys of the audience, which a
/// [`RecipientDirectory`] resolves, and the token binds the method, the
/// canonical path and query, and the JWE.
///
/// A request without a body has nothing to encrypt, so it is signed as a
/// plain request. The response is not sealed.
///
/// ```no_run
/// use trustwire::http::{RequestSealer, SealRequestBuilderExt};
/// use trustwire::jwks::KeySource;
/// use trustwire::seal::{RecipientDirectory, Sealer};
/// use trustwire::{ServiceId, Signer, SigningKey};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let sealer = Sealer::new(Signer::new(ServiceId::new("orders")?, SigningKey::generate()?));
/// let payments = ServiceId::new("payments")?;
/// let directory = RecipientDirectory::new().add(
///     payments.clone(),
///     KeySource::remote("https://payments.internal/.well-known/jwks.json")?,
/// );
/// let to_payments = RequestSealer::new(sealer, payments, directory);
///
/// let response = reqwest::Client::new()
///     .post("https://payments.internal/v1/charges")
///     .header("content-type", "application/json")
///     .body(r#"{"card":"4111 1111 1111 1111"}"#)
///     .seal_with(&to_payments)
///     .await?
///     .send()
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RequestSealer {
    sealer: Sealer,
    audience: Audience,
    directory: RecipientDirectory,
    header: HeaderName,
    max_body_bytes: usize,
}

impl RequestSealer {
    /// A sealer of request bodies to `audience`, whose encryption keys come
    /// from `directory`, sending the token in `Authorization: Bearer`.
    pub fn new(sealer: Sealer, audience: impl Into<Audience>, directory: RecipientDirectory) -> Self {
        Self {
            sealer,
            audience: audience.into(),
            directory,
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

    /// Sets the largest body that [`seal_request`](Self::seal_request)
    /// buffers. Default 2 MiB. The JWE is about a third larger than the
    /// body, and the receiving layer limits the JWE.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// The header the token goes in.
    pub fn header_name(&self) -> &HeaderName {
        &self.header
    }

    /// Seals `body` for a request bound to `binding`, sets the token and
    /// sealing headers in `headers`, and returns the body to send.
    ///
    /// With a non-empty body, the returned body is the JWE, `Content-Type`
    /// becomes `application/jose` (or `application/jose+json` for several
    /// recipients), the caller's `Content-Type` moves to
    /// `Trustwire-Sealed-Content-Type`, `Trustwire-Sealed: 1` is set and any
    /// `Content-Length` is removed. An empty body is returned empty, with a
    /// plain signed token.
    pub async fn seal_parts(
        &self,
        binding: Binding,
        headers: &mut HeaderMap,
        body: &[u8],
    ) -> Result<Bytes, SealRequestError> {
        headers.remove(SEALED_HEADER);
        headers.remove(SEALED_CONTENT_TYPE_HEADER);

        if body.is_empty() {
            let token = self
                .sealer
                .signer()
                .token(self.audience.clone())
                .binding(binding)
                .sign()?;
            headers.insert(self.header.clone(), self.token_value(token)?);
            return Ok(Bytes::new());
        }

        let recipients = self.directory.resolve(&self.audience).await?;
        let sealed = self.sealer.seal(&recipients, binding, body)?;

        if let Some(content_type) = headers.remove(CONTENT_TYPE) {
            headers.insert(HeaderName::from_static(SEALED_CONTENT_TYPE_HEADER), content_type);
        }
        let media_type = if sealed.jwe.first() == Some(&b'{') {
            JOSE_JSON_CONTENT_TYPE
        } else {
            JOSE_CONTENT_TYPE
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(media_type));
        headers.insert(HeaderName::from_static(SEALED_HEADER), HeaderValue::from_static("1"));
        headers.remove(CONTENT_LENGTH);
        headers.insert(self.header.clone(), self.token_value(sealed.token)?);

        tracing::debug!(iss = %self.sealer.signer().service(), jti = %sealed.jti, recipients = recipients.len(), "sealed request body");
        Ok(Bytes::from(sealed.jwe))
    }

    /// Seals a built `reqwest` request in place: its body becomes the JWE
    /// and its headers those of [`seal_parts`](Self::seal_parts).
    ///
    /// The body must be bytes, as `.body(..)` sets it from bytes or a
    /// string. A streaming body fails with [`SealRequestError::StreamingBody`].
    pub async fn seal_reqwest(&self, request: &mut reqwest::Request) -> Result<(), SealRequestError> {
        let binding = url_binding(request.method(), request.url())?;
        let body = match request.body() {
            None => Bytes::new(),
            Some(body) => Bytes::copy_from_slice(body.as_bytes().ok_or(SealRequestError::StreamingBody)?),
        };
        let sealed = self.seal_parts(binding, request.headers_mut(), &body).await?;
        if !sealed.is_empty() {
            *request.body_mut() = Some(sealed.into());
        }
        Ok(())
    }

    /// Buffers the body of an `http` request (up to
    /// [`max_body_bytes`](Self::max_body_bytes)) and seals it, for hyper and
    /// other clients that take `Request<Full<Bytes>>`.
    pub async fn seal_request<B>(&self, request: Request<B>) -> Result<Request<Full<Bytes>>, SealRequestError>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = request.into_parts();
        let binding = request_binding(&parts.method, &parts.uri)?;

        let limit = self.max_body_bytes;
        let body = match collect_limited(&parts.headers, body, limit).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) => return Err(SealRequestError::BodyTooLarge { limit }),
            Err(BodyError::Read(err)) => return Err(SealRequestError::Body(err)),
        };

        let sealed = self.seal_parts(binding, &mut parts.headers, &body).await?;
        Ok(Request::from_parts(parts, Full::new(sealed)))
    }

    fn token_value(&self, token: String) -> Result<HeaderValue, SealRequestError> {
        let value = if self.header == AUTHORIZATION {
            format!("Bearer {token}")
        } else {
            token
        };
        HeaderValue::try_from(value)
            .map_err(|_| SignError::Encoding("the token is not a valid header value".to_owned()).into())
    }
}

/// Sealing for `reqwest::RequestBuilder`. Call it last, after the body and
/// query are set, because the token binds them.
pub trait SealRequestBuilderExt: Sized {
    /// Builds the request, seals its body with `sealer` and returns a
    /// builder ready to `send`.
    fn seal_with(self, sealer: &RequestSealer)
    -> impl Future<Output = Result<RequestBuilder, SealRequestError>> + Send;
}

impl SealRequestBuilderExt for RequestBuilder {
    async fn seal_with(self, sealer: &RequestSealer) -> Result<RequestBuilder, SealRequestError> {
        let (client, request) = self.build_split();
        let mut request = request.map_err(SealRequestError::Request)?;
        sealer.seal_reqwest(&mut request).await?;
        Ok(RequestBuilder::from_parts(client, request))
    }
}
