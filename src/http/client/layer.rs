//! The tower layer that signs outbound requests, for hyper clients and any
//! other tower HTTP client.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::Request;
use http_body::Body;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::signer::{RequestSigner, SignRequestError};
use crate::http::BoxError;
use crate::http::body::{BodyError, collect_limited};
use crate::http::target::request_binding;

/// A plain-HTTP hyper client that sends `Full<Bytes>` bodies, the inner
/// service of [`RequestSigner::hyper_client`].
pub type HyperClient = Client<HttpConnector, Full<Bytes>>;

/// A tower layer that signs each request. It buffers the body up to the
/// signer's limit and binds the method, the canonical path and query, and
/// the body. Then it sets the token header and calls the inner service with
/// the same parts and body bytes, as a `Request<Full<Bytes>>`.
///
/// ```
/// use tower::Layer;
/// use trustwire::http::{HyperClient, RequestSigner, SignLayer};
/// use trustwire::{ServiceId, Signer, SigningKey};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let signer = Signer::new(ServiceId::new("orders")?, SigningKey::generate()?);
/// let payments = RequestSigner::new(signer, ServiceId::new("payments")?);
///
/// let hyper: HyperClient = hyper_util::client::legacy::Client::builder(
///     hyper_util::rt::TokioExecutor::new(),
/// )
/// .build_http();
/// let client = SignLayer::new(payments).layer(hyper);
/// # let _ = client;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SignLayer {
    signer: Arc<RequestSigner>,
}

impl SignLayer {
    /// A layer that signs with `signer`.
    pub fn new(signer: RequestSigner) -> Self {
        Self {
            signer: Arc::new(signer),
        }
    }
}

impl<S> Layer<S> for SignLayer {
    type Service = SignService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SignService {
            inner,
            signer: Arc::clone(&self.signer),
        }
    }
}

impl RequestSigner {
    /// A plain-HTTP hyper client (HTTP/1.1, connection pooling on the tokio
    /// runtime) that signs every request with this signer.
    pub fn hyper_client(&self) -> SignService<HyperClient> {
        let client: HyperClient = Client::builder(TokioExecutor::new()).build_http();
        SignLayer::new(self.clone()).layer(client)
    }
}

/// The service of [`SignLayer`].
pub struct SignService<S> {
    inner: S,
    signer: Arc<RequestSigner>,
}

// Written out so that cloning needs only `S: Clone`.
impl<S: Clone> Clone for SignService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            signer: Arc::clone(&self.signer),
        }
    }
}

impl<S, ReqBody> Service<Request<ReqBody>> for SignService<S>
where
    S: Service<Request<Full<Bytes>>> + Clone,
    S::Error: Into<BoxError>,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = SignFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // `poll_ready` readied `self.inner`, so that instance goes into the
        // future and the fresh clone stays here for the next `poll_ready`.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let signer = Arc::clone(&self.signer);
        SignFuture {
            state: State::Signing {
                step: Box::pin(sign(signer, request)),
                service: Some(ready),
            },
        }
    }
}

/// Buffers the body and signs the request.
async fn sign<B>(signer: Arc<RequestSigner>, request: Request<B>) -> Result<Request<Full<Bytes>>, SignRequestError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = request.into_parts();
    let binding = request_binding(&parts.method, &parts.uri)?;

    let limit = signer.body_limit();
    let body = match collect_limited(&parts.headers, body, limit).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return Err(SignRequestError::BodyTooLarge { limit }),
        Err(BodyError::Read(err)) => return Err(SignRequestError::Body(err)),
    };

    let value = signer.header_value(binding, &body)?;
    parts.headers.insert(signer.header_name().clone(), value);
    Ok(Request::from_parts(parts, Full::new(body)))
}

type Signing = Pin<Box<dyn Future<Output = Result<Request<Full<Bytes>>, SignRequestError>> + Send>>;

pin_project! {
    /// The response future of [`SignService`]: first buffers and signs,
    /// then runs the inner service's future.
    pub struct SignFuture<S>
    where
        S: Service<Request<Full<Bytes>>>,
    {
        #[pin]
        state: State<S>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S>
    where
        S: Service<Request<Full<Bytes>>>,
    {
        Signing {
            step: Signing,
            // The inner service that `poll_ready` readied, taken when it is called.
            service: Option<S>,
        },
        Calling {
            #[pin]
            future: S::Future,
        },
    }
}

impl<S> Future for SignFuture<S>
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Signing { step, service } => {
                    let request = ready!(step.as_mut().poll(cx))?;
                    let Some(mut service) = service.take() else {
                        panic!("SignFuture polled after it completed");
                    };
                    let future = service.call(request);
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    return future.poll(cx).map_err(Into::into);
                }
            }
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for SignService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignService")
            .field("inner", &self.inner)
            .field("signer", &self.signer)
            .finish()
    }
}

impl<S> fmt::Debug for SignFuture<S>
where
    S: Service<Request<Full<Bytes>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Signing { .. } => "signing",
            State::Calling { .. } => "calling",
        };
        f.debug_struct("SignFuture").field("state", &state).finish()
    }
}
