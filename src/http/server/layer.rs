//! The layer that verifies inbound calls, and the service it wraps around
//! the application.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderMap, HeaderName};
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower::{Layer, Service};

use super::extractor::Caller;
use super::future::VerifyFuture;
use crate::envelope::{Expected, Verifier};
use crate::http::BoxError;
use crate::http::body::{BodyError, ResponseBody, collect_limited};
use crate::http::response;
use crate::http::sealed::is_sealed;
use crate::http::target::request_binding;

/// Default limit of a buffered request body: 2 MiB, the default of axum's
/// `DefaultBodyLimit`.
pub const DEFAULT_MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// A tower layer that verifies the token on every request before the inner
/// service receives it.
///
/// For each request it:
///
/// 1. canonicalises the method and target (400 `invalid_target` when that
///    fails);
/// 2. reads the token from `Authorization: Bearer` or the configured header
///    (401 when it is missing or the header is not a single bearer token);
/// 3. buffers the body up to [`VerifyLayer::max_body_bytes`] (413 beyond it);
/// 4. verifies the token with the [`Verifier`]: `aud` is the verifier's
///    service, `htm`/`htu` are the request's, and `dig` is checked against a
///    non-empty body. A policy denial answers 403; every other rejection
///    answers 401 with `WWW-Authenticate: Bearer error="invalid_token",
///    error_description="<reason code>"`;
/// 5. calls the inner service with the same parts and the same body bytes,
///    as a `Request<Full<Bytes>>`, with the [`Caller`] in its extensions.
///
/// Responses carry only the reason code; the verifier logs the detail.
///
/// ```
/// use axum::{Router, routing::get};
/// use trustwire::http::{Caller, VerifyLayer};
/// # use trustwire::{ServiceId, SigningKey, Verifier};
/// # use trustwire::jwks::{JwkSet, KeySource, TrustStore};
/// # fn verifier() -> Result<Verifier, Box<dyn std::error::Error>> {
/// #     let key = SigningKey::generate()?;
/// #     let set = JwkSet::from_keys(vec![key.public_key().clone()]);
/// #     let trust = TrustStore::new().trust(ServiceId::new("orders")?, KeySource::inline(set));
/// #     Ok(Verifier::builder(ServiceId::new("payments")?, trust).build()?)
/// # }
///
/// let app: Router = Router::new()
///     .route("/v1/balance", get(|caller: Caller| async move { caller.issuer().to_owned() }))
///     .layer(VerifyLayer::new(verifier()?).max_body_bytes(64 * 1024));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct VerifyLayer {
    config: Arc<VerifyConfig>,
}

#[derive(Clone)]
pub(super) struct VerifyConfig {
    verifier: Verifier,
    header: HeaderName,
    max_body_bytes: usize,
    detailed_errors: bool,
}

impl VerifyLayer {
    /// A layer that verifies with `verifier`, reading `Authorization: Bearer`
    /// and buffering bodies up to [`DEFAULT_MAX_BODY_BYTES`].
    pub fn new(verifier: Verifier) -> Self {
        Self {
            config: Arc::new(VerifyConfig {
                verifier,
                header: AUTHORIZATION,
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                detailed_errors: false,
            }),
        }
    }

    /// Reads the token from `header` instead of `Authorization`, for
    /// applications that keep `Authorization` for the end user's own
    /// credential. That header carries the bare token, with no `Bearer`
    /// scheme. Default: `Authorization: Bearer <token>`.
    pub fn header(mut self, header: HeaderName) -> Self {
        Arc::make_mut(&mut self.config).header = header;
        self
    }

    /// Sets the largest request body that is buffered and verified. A larger
    /// body, or a larger `Content-Length`, gets 413. Default
    /// [`DEFAULT_MAX_BODY_BYTES`]. The verifier's own payload limit still
    /// applies, so keep this at or below it.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        Arc::make_mut(&mut self.config).max_body_bytes = bytes;
        self
    }

    /// Puts each rejection's detail in the response body, beside its code.
    ///
    /// The detail can quote claims and tell a prober which check failed.
    /// Use it only while developing, never where untrusted clients connect.
    /// Default: off, so responses carry only the reason code.
    pub fn dangerous_detailed_errors(mut self) -> Self {
        tracing::warn!("VerifyLayer sends rejection details to clients; use this only while developing");
        Arc::make_mut(&mut self.config).detailed_errors = true;
        self
    }
}

impl<S> Layer<S> for VerifyLayer {
    type Service = VerifyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        VerifyService {
            inner,
            config: Arc::clone(&self.config),
        }
    }
}

/// The service of [`VerifyLayer`]: verifies each request, then calls the
/// inner service with a `Request<Full<Bytes>>`.
pub struct VerifyService<S> {
    inner: S,
    config: Arc<VerifyConfig>,
}

// Written out so that cloning needs only `S: Clone`, not a clonable request body.
impl<S: Clone> Clone for VerifyService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for VerifyService<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
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
        VerifyFuture::new(Box::pin(authenticate(config, request)), ready)
    }
}

/// Verifies one request; `Err` is the response to send instead of calling
/// the inner service.
async fn authenticate<B>(
    config: Arc<VerifyConfig>,
    request: Request<B>,
) -> Result<Request<Full<Bytes>>, Response<Full<Bytes>>>
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
            return Err(response::invalid_token(crate::Reason::Malformed.code()));
        }
    };

    // Verified as plain, a sealed body would reach the handler as its JWE.
    if is_sealed(&parts.headers) {
        metrics::counter!("trustwire_rejected_total", "reason" => crate::Reason::WrongType.code()).increment(1);
        tracing::debug!(binding = %binding, "sealed request reached a layer that verifies plain requests; use OpenLayer");
        return Err(response::invalid_token(crate::Reason::WrongType.code()));
    }

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

    let payload = if body.is_empty() { None } else { Some(&body[..]) };
    let verified = config
        .verifier
        .verify(&token, &Expected::new(binding, payload))
        .await
        .map_err(|rejection| response::rejection(&rejection, config.detailed_errors))?;

    parts.extensions.insert(Caller::new(verified));
    Ok(Request::from_parts(parts, Full::new(body)))
}

pub(super) enum TokenError {
    Missing,
    Malformed(&'static str),
}

/// Reads the token: `Bearer <token>` from `Authorization`, the bare value
/// from any other header. Exactly one header field is accepted.
pub(super) fn read_token(headers: &HeaderMap, name: &HeaderName) -> Result<String, TokenError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Err(TokenError::Missing);
    };
    if values.next().is_some() {
        return Err(TokenError::Malformed("the header appears more than once"));
    }
    let Ok(value) = value.to_str() else {
        return Err(TokenError::Malformed("the header is not visible ASCII"));
    };

    let token = if name == AUTHORIZATION {
        // RFC 9110 section 11.1: the scheme name is case-insensitive.
        match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(TokenError::Malformed("the Authorization scheme is not Bearer")),
        }
    } else {
        value.trim()
    };

    if token.is_empty() {
        return Err(TokenError::Malformed("the token is empty"));
    }
    Ok(token.to_owned())
}

impl fmt::Debug for VerifyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyLayer")
            .field("verifier", &self.config.verifier)
            .field("header", &self.config.header)
            .field("max_body_bytes", &self.config.max_body_bytes)
            .field("detailed_errors", &self.config.detailed_errors)
            .finish()
    }
}

impl<S: fmt::Debug> fmt::Debug for VerifyService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyService")
            .field("inner", &self.inner)
            .field("header", &self.config.header)
            .field("max_body_bytes", &self.config.max_body_bytes)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &HeaderName, values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(name, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn bearer_token_read() {
        let found = read_token(&headers(&AUTHORIZATION, &["bearer abc.def.ghi"]), &AUTHORIZATION);
        assert_eq!(found.ok().as_deref(), Some("abc.def.ghi"));
    }

    #[test]
    fn other_scheme_malformed() {
        let found = read_token(&headers(&AUTHORIZATION, &["Basic dXNlcjpwdw=="]), &AUTHORIZATION);
        assert!(matches!(found, Err(TokenError::Malformed(_))));
    }

    #[test]
    fn repeated_header_malformed() {
        let found = read_token(&headers(&AUTHORIZATION, &["Bearer a", "Bearer b"]), &AUTHORIZATION);
        assert!(matches!(found, Err(TokenError::Malformed(_))));
    }

    #[test]
    fn custom_header_bare_token() {
        let name = HeaderName::from_static("trustwire-token");
        let found = read_token(&headers(&name, &["abc.def.ghi"]), &name);
        assert_eq!(found.ok().as_deref(), Some("abc.def.ghi"));
    }

    #[test]
    fn absent_header_missing() {
        assert!(matches!(
            read_token(&HeaderMap::new(), &AUTHORIZATION),
            Err(TokenError::Missing)
        ));
    }
}
