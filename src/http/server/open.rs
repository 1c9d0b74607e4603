//! The layer that opens sealed request bodies before the handler runs, and
//! the service it wraps around the application.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower::{Layer, Service};

use super::extractor::Caller;
use super::future::VerifyFuture;
use super::layer::{DEFAULT_MAX_BODY_BYTES, TokenError, read_token};
use crate::envelope::{Expected, Reason};
use crate::http::BoxError;
use crate::http::body::{BodyError, collect_limited};
use crate::http::response;
use crate::http::sealed::{SEALED_CONTENT_TYPE_HEADER, SEALED_HEADER, is_sealed};
use crate::http::target::request_binding;
use crate::seal::Opener;

/// A tower layer that opens sealed request bodies: it verifies the token
/// and decrypts the body before the inner service receives the request.
///
/// For each request it:
///
/// 1. canonicalises the method and target (400 `invalid_target`);
/// 2. reads the token as [`super::VerifyLayer`] does (401 when it is
///    missing or malformed);
/// 3. buffers the body, the JWE, up to [`OpenLayer::max_body_bytes`] (413
///    beyond it);
/// 4. with `Trustwire-Sealed`, opens the body with the [`Opener`]: the token
///    is verified against the method, target and JWE, then the JWE is
///    decrypted and its header checked against the token. Every rejection
///    answers as the verifying layer does: 401 with the reason code, 403 for
///    `not_allowed`;
/// 5. without `Trustwire-Sealed`, rejects a non-empty body as `wrong_type`
///    (401), and verifies a request without a body as a plain one;
/// 6. calls the inner service with the plaintext as the body, the caller's
///    `Content-Type` put back from `Trustwire-Sealed-Content-Type`, the
///    sealing headers removed, and the [`Caller`] in its extensions.
///
/// ```
/// use axum::{Router, routing::post};
/// use trustwire::http::{Caller, OpenLayer};
/// # use trustwire::keys::EncryptionKey;
/// # use trustwire::seal::Opener;
/// # use trustwire::{ServiceId, SigningKey, Verifier};
/// # use trustwire::jwks::{JwkSet, KeySource, TrustStore};
/// # fn opener() -> Result<Opener, Box<dyn std::error::Error>> {
/// #     let key = SigningKey::generate()?;
/// #     let set = JwkSet::from_keys(vec![key.public_key().clone()]);
/// #     let trust = TrustStore::new().trust(ServiceId::new("orders")?, KeySource::inline(set));
/// #     let verifier = Verifier::builder(ServiceId::new("payments")?, trust).build()?;
/// #     Ok(Opener::new(verifier, vec![EncryptionKey::generate()?])?)
/// # }
///
/// let app: Router = Router::new()
///     .route("/v1/charges", post(|caller: Caller, body: String| async move { format!("{} sent {body}", caller.issuer()) }))
///     .layer(OpenLayer::new(opener()?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct OpenLayer {
    config: Arc<OpenConfig>,
}

#[derive(Clone)]
struct OpenConfig {
    opener: Opener,
    header: HeaderName,
    max_body_bytes: usize,
    accept_plain_bodies: bool,
    detailed_errors: bool,
}

impl OpenLayer {
    /// A layer that opens with `opener`, reading `Authorization: Bearer`
    /// and buffering bodies up to [`DEFAULT_MAX_BODY_BYTES`].
    pub fn new(opener: Opener) -> Self {
        Self {
            config: Arc::new(OpenConfig {
                opener,
                header: AUTHORIZATION,
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                accept_plain_bodies: false,
                detailed_errors: false,
            }),
        }
    }

    /// Reads the token from `header` instead of `Authorization`, as the bare
    /// token with no `Bearer` scheme. Default: `Authorization: Bearer <token>`.
    pub fn header(mut self, header: HeaderName) -> Self {
        Arc::make_mut(&mut self.config).header = header;
        self
    }

    /// Sets the largest request body, the JWE, that is buffered and opened.
    /// A larger body, or a larger `Content-Length`, gets 413. Default
    /// [`DEFAULT_MAX_BODY_BYTES`]; the JWE is about a third larger than
    /// the plaintext.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        Arc::make_mut(&mut self.config).max_body_bytes = bytes;
        self
    }

    /// Also accepts plain (signed, not sealed) requests with a body, for a
    /// migration while callers move to sealing. Their bodies cross the
    /// network unencrypted. Default: off, so a plain body is `wrong_type`.
    pub fn insecure_accept_plain_bodies(mut self) -> Self {
        tracing::warn!("OpenLayer accepts plain request bodies; their content is not encrypted in transit");
        Arc::make_mut(&mut self.config).accept_plain_bodies = true;
        self
    }

    /// Puts each rejection's detail in the response body, beside its code.
    /// Use it only while developing. Default: off.
    pub fn dangerous_detailed_errors(mut self) -> Self {
        tracing::warn!("OpenLayer sends rejection details to clients; use this only while developing");
        Arc::make_mut(&mut self.config).detailed_errors = true;
        self
    }
}

impl<S> Layer<S> for OpenLayer {
    type Service = OpenService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OpenService {
            inner,
            config: Arc::clone(&self.config),
        }
    }
}

/// The service of [`OpenLayer`]: opens each request, then calls the inner
/// service with a `Request<Full<Bytes>>` whose body is the plaintext.
pub struct OpenService<S> {
    inner: S,
    config: Arc<OpenConfig>,
}

// Written out so that cloning needs only `S: Clone`, not a clonable request body.
impl<S: Clone> Clone for OpenService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for OpenService<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
{
    type Response = Response<crate::http::ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = VerifyFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // `poll_ready` readied `self.inner`, so that instance goes into the
        // future and the fresh clone stays here for the next `poll_ready`.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let config = Arc::clone(&self.config);
        VerifyFuture::new(Box::pin(open(config, request)), ready)
    }
}

/// Opens one request; `Err` is the response to send instead of calling the
/// inner service.
async fn open<B>(config: Arc<OpenConfig>, request: Request<B>) -> Result<Request<Full<Bytes>>, Response<Full<Bytes>>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = request.into_parts();

    let binding = match request_binding(&parts.method, &parts.uri) {
        Ok(binding) => binding,
        Err(err) => {
            tracing::debug!(error = %err, "request target cannot be canonicalised");
            return Err(response::bad_request(response::INVALID_TARGET));
        }
    };

    // The token is read before the body, so a call without one costs no buffering.
    let token = match read_token(&parts.headers, &config.header) {
        Ok(token) => token,
        Err(TokenError::Missing) => {
            tracing::debug!(binding = %binding, header = %config.header, "request has no token");
            return Err(response::missing_credential(response::MISSING_TOKEN));
        }
        Err(TokenError::Malformed(why)) => {
            tracing::debug!(binding = %binding, header = %config.header, why, "token header is malformed");
            return Err(response::invalid_token(Reason::Malformed.code()));
        }
    };

    let body = match collect_limited(&parts.headers, body, config.max_body_bytes).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            tracing::debug!(binding = %binding, limit = config.max_body_bytes, "request body is above the limit");
            return Err(response::too_large());
        }
        Err(BodyError::Read(err)) => {
            tracing::debug!(binding = %binding, error = %err, "reading the request body failed");
            return Err(response::bad_request(response::BODY_UNREADABLE));
        }
    };

    if !is_sealed(&parts.headers) {
        if !body.is_empty() && !config.accept_plain_bodies {
            metrics::counter!("trustwire_rejected_total", "reason" => Reason::WrongType.code()).increment(1);
            tracing::debug!(binding = %binding, "plain request body where a sealed one is required");
            return Err(response::invalid_token(Reason::WrongType.code()));
        }
        let payload = if body.is_empty() { None } else { Some(&body[..]) };
        let verified = config
            .opener
            .verifier()
            .verify(&token, &Expected::new(binding, payload))
            .await
            .map_err(|rejection| response::rejection(&rejection, config.detailed_errors))?;
        parts.extensions.insert(Caller::new(verified));
        return Ok(Request::from_parts(parts, Full::new(body)));
    }

    let opened = config
        .opener
        .open(&token, &Expected::message(binding, &body))
        .await
        .map_err(|rejection| response::rejection(&rejection, config.detailed_errors))?;

    restore_plain_headers(&mut parts.headers, opened.plaintext.len());
    parts.extensions.insert(Caller::new(opened.verified));
    Ok(Request::from_parts(parts, Full::new(Bytes::from(opened.plaintext))))
}

/// Gives the handler the headers of the plaintext: the caller's
/// `Content-Type` back (or none), its length, and no sealing headers.
fn restore_plain_headers(headers: &mut HeaderMap, plaintext_len: usize) {
    headers.remove(SEALED_HEADER);
    match headers.remove(SEALED_CONTENT_TYPE_HEADER) {
        Some(content_type) => {
            headers.insert(CONTENT_TYPE, content_type);
        }
        None => {
            headers.remove(CONTENT_TYPE);
        }
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(plaintext_len));
}

impl fmt::Debug for OpenLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenLayer")
            .field("opener", &self.config.opener)
            .field("header", &self.config.header)
            .field("max_body_bytes", &self.config.max_body_bytes)
            .field("accept_plain_bodies", &self.config.accept_plain_bodies)
            .field("detailed_errors", &self.config.detailed_errors)
            .finish()
    }
}

impl<S: fmt::Debug> fmt::Debug for OpenService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenService")
            .field("inner", &self.inner)
            .field("header", &self.config.header)
            .field("max_body_bytes", &self.config.max_body_bytes)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_put_back() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/jose"));
        headers.insert(SEALED_HEADER, HeaderValue::from_static("1"));
        headers.insert(SEALED_CONTENT_TYPE_HEADER, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("999"));
        restore_plain_headers(&mut headers, 12);

        assert_eq!(headers.get(CONTENT_TYPE).unwrap(), "application/json");
        assert_eq!(headers.get(CONTENT_LENGTH).unwrap(), "12");
        assert!(headers.get(SEALED_HEADER).is_none());
        assert!(headers.get(SEALED_CONTENT_TYPE_HEADER).is_none());
    }

    #[test]
    fn jose_content_type_dropped_without_original() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/jose"));
        headers.insert(SEALED_HEADER, HeaderValue::from_static("1"));
        restore_plain_headers(&mut headers, 0);
        assert!(headers.get(CONTENT_TYPE).is_none());
    }
}
