//! Gateway forward-auth: the endpoint that an edge proxy (nginx
//! `auth_request`, Traefik ForwardAuth, a Kong plugin) calls before it
//! forwards a request.
//!
//! For each subrequest the gateway:
//!
//! 1. reads the original method and URI from the headers the proxy sets
//!    (`X-Forwarded-Method` and `X-Forwarded-Uri` by default) and binds them
//!    in canonical form (400 `invalid_forwarded_request` when they are
//!    missing or invalid);
//! 2. authenticates the edge credential: an API key (checked against
//!    SHA-256 hashes, see [`ApiKeys`]) or else a bearer JWT from an
//!    [`IdentityProvider`]. No credential gets 401 `missing_credential`,
//!    a wrong one 401 `invalid_api_key` or the JWT's reason code;
//! 3. picks the upstream by the longest matching [`Route`] prefix (403
//!    `no_route` when none matches, 403 `not_allowed` when the route does
//!    not allow the consumer);
//! 4. returns 200 with an internal token in the token header
//!    (`Authorization: Bearer <token>` by default): `iss` is the gateway,
//!    `sub` the consumer, `aud` the upstream, `htm`/`htu` the original
//!    request. The subrequest has no body, so the token has no `dig`; the
//!    upstream's verifier must list the gateway in
//!    [`crate::envelope::VerifierBuilder::issuers_without_digest`].
//!
//! The proxy copies the token header onto the request it forwards. A
//! request that reaches the upstream some other way carries no valid
//! token and is rejected there. `docs/gateways.md` has the proxy
//! configurations.

mod api_keys;
mod config;
mod idp;
mod routes;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use http_body_util::Full;

pub use api_keys::{
    ApiKeys, ApiKeysError, GeneratedKey, MAX_API_KEY_LEN, MAX_CONSUMER_LEN, generate_api_key, key_entry,
};
pub use config::{ConfigError, GatewayConfig};
pub use idp::{IdentityProvider, MAX_IDP_TOKEN_BYTES};
pub use routes::Route;

use crate::clock::{Clock, SystemClock};
use crate::envelope::{Binding, Rejection, Signer};
use crate::http::response;
use crate::http::target::request_binding;

/// Default header with the original request method.
pub const DEFAULT_METHOD_HEADER: &str = "x-forwarded-method";

/// Default header with the original request URI (path and query).
pub const DEFAULT_URI_HEADER: &str = "x-forwarded-uri";

/// Default header with the edge client's API key.
pub const DEFAULT_API_KEY_HEADER: &str = "x-api-key";

/// The forward-auth gateway. Cloning is cheap; clones share everything.
///
/// ```
/// use trustwire::http::gateway::{ApiKeys, Gateway, Route};
/// use trustwire::{ServiceId, Signer, SigningKey};
///
/// let signer = Signer::new(ServiceId::new("edge")?, SigningKey::generate()?);
/// let gateway = Gateway::builder(signer)
///     .api_keys(ApiKeys::default().with_key("acme", "twk_example-key")?)
///     .route(Route::new("/orders", ServiceId::new("orders")?)?)
///     .build()?;
/// let app: axum::Router = gateway.router();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    signer: Signer,
    api_keys: ApiKeys,
    api_key_header: HeaderName,
    providers: Vec<IdentityProvider>,
    routes: Vec<Route>,
    method_header: HeaderName,
    uri_header: HeaderName,
    token_header: HeaderName,
    clock: Arc<dyn Clock>,
    warn_limiter: WarnLimiter,
}

/// Options of a [`Gateway`].
#[derive(Debug)]
pub struct GatewayBuilder {
    signer: Signer,
    api_keys: ApiKeys,
    api_key_header: HeaderName,
    providers: Vec<IdentityProvider>,
    routes: Vec<Route>,
    method_header: HeaderName,
    uri_header: HeaderName,
    token_header: HeaderName,
}

/// Why a gateway cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// Neither API keys nor an identity provider are configured, so every
    /// request would be refused.
    #[error("the gateway accepts no credential: add API keys or an identity provider")]
    NoCredentials,

    /// No route is configured, so every request would be refused.
    #[error("the gateway has no routes: add at least one route to an upstream")]
    NoRoutes,
}

impl GatewayBuilder {
    /// Accepts these API keys. Default: none.
    pub fn api_keys(mut self, keys: ApiKeys) -> Self {
        self.api_keys = keys;
        self
    }

    /// Reads the API key from `header`. Default `X-Api-Key`.
    pub fn api_key_header(mut self, header: HeaderName) -> Self {
        self.api_key_header = header;
        self
    }

    /// Accepts bearer JWTs from `provider`. Default: none.
    pub fn identity_provider(mut self, provider: IdentityProvider) -> Self {
        self.providers.push(provider);
        self
    }

    /// Adds a route.
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// Reads the original method from `method` and the original URI from
    /// `uri`. Defaults `X-Forwarded-Method` and `X-Forwarded-Uri`, which
    /// Traefik sends; nginx and Kong set them in their configuration. The
    /// proxy must overwrite these headers, never pass a client's own.
    pub fn forwarded_headers(mut self, method: HeaderName, uri: HeaderName) -> Self {
        self.method_header = method;
        self.uri_header = uri;
        self
    }

    /// Sends the token in `header` of the response, as the bare token. Default
    /// `Authorization: Bearer <token>`, which the proxy copies onto the
    /// forwarded request in place of the edge credential.
    pub fn token_header(mut self, header: HeaderName) -> Self {
        self.token_header = header;
        self
    }

    /// Checks the options and builds the gateway.
    pub fn build(self) -> Result<Gateway, GatewayError> {
        if self.api_keys.is_empty() && self.providers.is_empty() {
            return Err(GatewayError::NoCredentials);
        }
        if self.routes.is_empty() {
            return Err(GatewayError::NoRoutes);
        }

        tracing::info!(
            iss = %self.signer.service(),
            kid = self.signer.kid(),
            api_keys = self.api_keys.len(),
            identity_providers = self.providers.len(),
            routes = self.routes.len(),
            "gateway ready"
        );
        Ok(Gateway {
            inner: Arc::new(Inner {
                signer: self.signer,
                api_keys: self.api_keys,
                api_key_header: self.api_key_header,
                providers: self.providers,
                routes: self.routes,
                method_header: self.method_header,
                uri_header: self.uri_header,
                token_header: self.token_header,
                clock: Arc::new(SystemClock),
                warn_limiter: WarnLimiter::default(),
            }),
        })
    }
}

/// A request the gateway let through.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Authorized {
    /// The authenticated consumer, the token's `sub`.
    pub consumer: String,
    /// The upstream service, the token's `aud`.
    pub upstream: String,
    /// The original request, the token's `htm` and `htu`.
    pub binding: Binding,
    /// The internal token.
    pub token: String,
}

/// A request the gateway refused: the status, a stable reason code for the
/// client and a detail for the logs.
#[derive(Debug, Clone)]
pub struct Denial {
    status: StatusCode,
    code: &'static str,
    detail: String,
}

impl Denial {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
        }
    }

    fn from_rejection(rejection: &Rejection) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, rejection.code(), rejection.detail())
    }

    /// The HTTP status: 400, 401, 403 or 500.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable reason code, such as `invalid_api_key` or `no_route`.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// What exactly failed; for logs only.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        match self.status {
            StatusCode::UNAUTHORIZED if self.code == MISSING_CREDENTIAL => response::missing_credential(self.code),
            StatusCode::UNAUTHORIZED => response::invalid_token(self.code),
            StatusCode::FORBIDDEN => response::forbidden(self.code, format!("{}\n", self.code)),
            StatusCode::BAD_REQUEST => response::bad_request(self.code),
            status => {
                let mut response = Response::new(Full::new(Bytes::from(format!("{}\n", self.code))));
                *response.status_mut() = status;
                response
            }
        }
    }
}

const MISSING_CREDENTIAL: &str = "missing_credential";
const INVALID_API_KEY: &str = "invalid_api_key";
const INVALID_FORWARDED_REQUEST: &str = "invalid_forwarded_request";
const NO_ROUTE: &str = "no_route";
const NOT_ALLOWED: &str = "not_allowed";
const SIGNING_FAILED: &str = "signing_failed";

impl Gateway {
    /// Starts configuring a gateway that signs internal tokens with `signer`.
    pub fn builder(signer: Signer) -> GatewayBuilder {
        GatewayBuilder {
            signer,
            api_keys: ApiKeys::default(),
            api_key_header: HeaderName::from_static(DEFAULT_API_KEY_HEADER),
            providers: Vec::new(),
            routes: Vec::new(),
            method_header: HeaderName::from_static(DEFAULT_METHOD_HEADER),
            uri_header: HeaderName::from_static(DEFAULT_URI_HEADER),
            token_header: AUTHORIZATION,
        }
    }

    /// The gateway's service id, the `iss` of its tokens.
    pub fn service(&self) -> &crate::ServiceId {
        self.inner.signer.service()
    }

    /// Decides one forward-auth subrequest from its headers, logs the
    /// outcome and counts it.
    pub async fn authorize(&self, headers: &HeaderMap) -> Result<Authorized, Denial> {
        let result = self.decide(headers).await;
        match &result {
            Ok(authorized) => {
                metrics::counter!("trustwire_gateway_authorized_total", "upstream" => authorized.upstream.clone())
                    .increment(1);
                tracing::debug!(
                    sub = %authorized.consumer,
                    aud = %authorized.upstream,
                    binding = %authorized.binding,
                    "gateway authorized a request"
                );
            }
            Err(denial) => {
                metrics::counter!("trustwire_gateway_denied_total", "reason" => denial.code).increment(1);
                self.log_denial(denial);
            }
        }
        result
    }

    /// Returns an axum router that responds to every path and method with
    /// the forward-auth decision.
    pub fn router(&self) -> Router {
        Router::new().fallback(forward_auth).with_state(self.clone())
    }

    async fn decide(&self, headers: &HeaderMap) -> Result<Authorized, Denial> {
        let inner = &self.inner;
        let binding = self.forwarded_binding(headers)?;
        let consumer = self.authenticate(headers).await?;

        let Some(route) = routes::find(&inner.routes, &binding) else {
            return Err(Denial::new(
                StatusCode::FORBIDDEN,
                NO_ROUTE,
                format!("no route matches {binding}"),
            ));
        };
        if !route.allows(&consumer) {
            return Err(Denial::new(
                StatusCode::FORBIDDEN,
                NOT_ALLOWED,
                format!("consumer {consumer:?} may not call {}", route.upstream()),
            ));
        }

        let token = inner
            .signer
            .token(route.upstream().clone())
            .binding(binding.clone())
            .subject(&consumer)
            .sign()
            .map_err(|err| Denial::new(StatusCode::INTERNAL_SERVER_ERROR, SIGNING_FAILED, err.to_string()))?;
        Ok(Authorized {
            consumer,
            upstream: route.upstream().to_string(),
            binding,
            token,
        })
    }

    fn forwarded_binding(&self, headers: &HeaderMap) -> Result<Binding, Denial> {
        let inner = &self.inner;
        let invalid = |detail: String| Denial::new(StatusCode::BAD_REQUEST, INVALID_FORWARDED_REQUEST, detail);

        let method = single_header(headers, &inner.method_header)
            .ok_or_else(|| invalid(format!("the proxy sent no single {} header", inner.method_header)))?;
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| invalid(format!("{} is not an HTTP method", inner.method_header)))?;
        let uri = single_header(headers, &inner.uri_header)
            .ok_or_else(|| invalid(format!("the proxy sent no single {} header", inner.uri_header)))?;
        let uri: Uri = uri
            .parse()
            .map_err(|_| invalid(format!("{} is not a request URI", inner.uri_header)))?;
        request_binding(&method, &uri).map_err(|err| invalid(err.to_string()))
    }

    /// Returns the consumer: the API key's if one is sent, else the bearer
    /// JWT's.
    async fn authenticate(&self, headers: &HeaderMap) -> Result<String, Denial> {
        let inner = &self.inner;

        if !inner.api_keys.is_empty()
            && let Some(value) = headers.get(&inner.api_key_header)
        {
            let consumer = value
                .to_str()
                .ok()
                .and_then(|key| inner.api_keys.authenticate(key.trim()));
            return match consumer {
                Some(consumer) => Ok(consumer.to_owned()),
                None => Err(Denial::new(
                    StatusCode::UNAUTHORIZED,
                    INVALID_API_KEY,
                    "the API key matches no stored hash",
                )),
            };
        }

        if !inner.providers.is_empty()
            && let Some(value) = headers.get(AUTHORIZATION)
        {
            let token = value
                .to_str()
                .ok()
                .and_then(|value| value.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim());
            let Some(token) = token else {
                return Err(Denial::new(
                    StatusCode::UNAUTHORIZED,
                    crate::Reason::Malformed.code(),
                    "the Authorization header is not a Bearer token",
                ));
            };
            return idp::authenticate(&inner.providers, token)
                .await
                .map_err(|rejection| Denial::from_rejection(&rejection));
        }

        Err(Denial::new(
            StatusCode::UNAUTHORIZED,
            MISSING_CREDENTIAL,
            "the request has no API key and no bearer token",
        ))
    }

    fn token_value(&self, token: &str) -> Option<HeaderValue> {
        let value = if self.inner.token_header == AUTHORIZATION {
            format!("Bearer {token}")
        } else {
            token.to_owned()
        };
        HeaderValue::try_from(value).ok()
    }

    fn log_denial(&self, denial: &Denial) {
        let client_error = denial.status == StatusCode::UNAUTHORIZED || denial.status == StatusCode::FORBIDDEN;
        if client_error && !self.inner.warn_limiter.allow(self.inner.clock.now()) {
            tracing::debug!(reason = denial.code, detail = denial.detail, "gateway denied a request");
        } else if client_error {
            tracing::warn!(reason = denial.code, detail = denial.detail, "gateway denied a request");
        } else {
            // A missing forwarded header or a signing failure is a deployment fault.
            tracing::error!(
                reason = denial.code,
                detail = denial.detail,
                "gateway could not decide a request"
            );
        }
    }
}

async fn forward_auth(State(gateway): State<Gateway>, headers: HeaderMap) -> Response {
    let mut response = match gateway.authorize(&headers).await {
        Ok(authorized) => match gateway.token_value(&authorized.token) {
            Some(value) => {
                let mut response = Response::new(Full::new(Bytes::new()));
                response.headers_mut().insert(gateway.inner.token_header.clone(), value);
                response
            }
            None => Denial::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                SIGNING_FAILED,
                "the token is not a valid header value",
            )
            .into_response(),
        },
        Err(denial) => denial.into_response(),
    };
    // A decision is for one request; no proxy may reuse it.
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.into_response()
}

/// The value of `name` when the header appears exactly once.
fn single_header<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h str> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    value.to_str().ok()
}

/// Allows at most 10 denial warnings per second; the rest go to debug.
#[derive(Default)]
struct WarnLimiter {
    second: AtomicU64,
    count: AtomicU64,
}

impl WarnLimiter {
    const PER_SECOND: u64 = 10;

    fn allow(&self, now: i64) -> bool {
        let now = u64::try_from(now).unwrap_or(0);
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < Self::PER_SECOND
    }
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway")
            .field("service", self.inner.signer.service())
            .field("api_keys", &self.inner.api_keys)
            .field("providers", &self.inner.providers)
            .field("routes", &self.inner.routes)
            .finish_non_exhaustive()
    }
}
