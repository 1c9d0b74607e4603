//! The response future of [`super::VerifyService`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower::Service;

use crate::http::body::ResponseBody;

/// The verification step: the request for the inner service, or the
/// response that rejects it.
pub(super) type Authenticating =
    Pin<Box<dyn Future<Output = Result<Request<Full<Bytes>>, Response<Full<Bytes>>>> + Send>>;

pin_project! {
    /// The response future of [`super::VerifyService`]: first buffers and
    /// verifies, then runs the inner service's future.
    pub struct VerifyFuture<S>
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
        Authenticating {
            step: Authenticating,
            // The inner service that `poll_ready` readied, taken when it is called.
            service: Option<S>,
        },
        Calling {
            #[pin]
            future: S::Future,
        },
    }
}

impl<S> VerifyFuture<S>
where
    S: Service<Request<Full<Bytes>>>,
{
    pub(super) fn new(step: Authenticating, ready_service: S) -> Self {
        Self {
            state: State::Authenticating {
                step,
                service: Some(ready_service),
            },
        }
    }
}

impl<S, ResBody> Future for VerifyFuture<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Authenticating { step, service } => {
                    let request = match ready!(step.as_mut().poll(cx)) {
                        Ok(request) => request,
                        Err(rejection) => return Poll::Ready(Ok(rejection.map(ResponseBody::local))),
                    };
                    let Some(mut service) = service.take() else {
                        panic!("VerifyFuture polled after it completed");
                    };
                    let future = service.call(request);
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                }
            }
        }
    }
}

impl<S> fmt::Debug for VerifyFuture<S>
where
    S: Service<Request<Full<Bytes>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Authenticating { .. } => "authenticating",
            State::Calling { .. } => "calling",
        };
        f.debug_struct("VerifyFuture").field("state", &state).finish()
    }
}
