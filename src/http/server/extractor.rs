//! The axum extractor of the verified caller.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;

use crate::envelope::{Claims, Verified};

/// The verified caller of a request, put in the request's extensions by
/// [`super::VerifyLayer`] and read by handlers as an axum extractor.
///
/// ```
/// use trustwire::http::Caller;
///
/// async fn handler(caller: Caller) -> String {
///     match caller.subject() {
///         Some(sub) => format!("{} on behalf of {sub}", caller.issuer()),
///         None => caller.issuer().to_owned(),
///     }
/// }
/// ```
///
/// Extracting `Caller` on a route without the layer returns 500 and logs an
/// error. Extract `Option<Caller>` where the layer is optional.
#[derive(Debug, Clone)]
pub struct Caller {
    verified: Arc<Verified>,
}

impl Caller {
    pub(crate) fn new(verified: Verified) -> Self {
        Self {
            verified: Arc::new(verified),
        }
    }

    /// The calling service (`iss`).
    pub fn issuer(&self) -> &str {
        &self.verified.claims.iss
    }

    /// The principal the caller acts for (`sub`), such as the consumer that
    /// the gateway authenticated.
    pub fn subject(&self) -> Option<&str> {
        self.verified.claims.sub.as_deref()
    }

    /// All verified claims.
    pub fn claims(&self) -> &Claims {
        &self.verified.claims
    }

    /// The whole verification result, with the `kid` and algorithm.
    pub fn verified(&self) -> &Verified {
        &self.verified
    }
}

/// The rejection of the [`Caller`] extractor: the route has no
/// [`super::VerifyLayer`], which is a server bug, so it returns 500.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct MissingCaller;

impl IntoResponse for MissingCaller {
    fn into_response(self) -> Response {
        tracing::error!("a handler extracts Caller, but the route is not wrapped in VerifyLayer");
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = MissingCaller;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or(MissingCaller)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Caller>().cloned())
    }
}
