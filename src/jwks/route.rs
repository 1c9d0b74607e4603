//! The HTTP route that serves a service's JWK Set.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;

use super::JwkSet;

/// The path a JWK Set is served on.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// The media type of a JWK Set (RFC 7517 section 8.5.2).
pub const JWKS_MEDIA_TYPE: &str = "application/jwk-set+json";

/// Default `Cache-Control: max-age` of the served set.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);

/// Serves a JWK Set at [`JWKS_PATH`], and lets the owner replace the set
/// while it is being served (after a key rotation, say).
///
/// ```no_run
/// use trustwire::{KeyDir, jwks::JwksPublisher};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let keys = KeyDir::open("keys/orders".as_ref())?;
/// let publisher = JwksPublisher::new(&keys.jwks());
/// let app = axum::Router::new().merge(publisher.router());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// axum::serve(listener, app).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct JwksPublisher {
    document: Arc<RwLock<Bytes>>,
    cache_control: HeaderValue,
}

impl JwksPublisher {
    /// Serves `set` with `Cache-Control: max-age=300`.
    pub fn new(set: &JwkSet) -> Self {
        Self::with_max_age(set, DEFAULT_MAX_AGE)
    }

    /// Serves `set` with the given `Cache-Control: max-age`, in whole seconds.
    ///
    /// Verifiers cache the set for this long, so a key rotation must publish
    /// the next key at least this long before it signs.
    pub fn with_max_age(set: &JwkSet, max_age: Duration) -> Self {
        let cache_control = HeaderValue::from_str(&format!("public, max-age={}", max_age.as_secs()))
            .unwrap_or_else(|_| HeaderValue::from_static("public, max-age=300"));
        Self {
            document: Arc::new(RwLock::new(Bytes::from(set.to_json()))),
            cache_control,
        }
    }

    /// Replaces the served set.
    pub fn update(&self, set: &JwkSet) {
        let document = Bytes::from(set.to_json());
        match self.document.write() {
            Ok(mut guard) => *guard = document,
            Err(poisoned) => *poisoned.into_inner() = document,
        }
        tracing::info!(keys = set.keys().len(), "updated served JWK Set");
    }

    /// The served document.
    pub fn document(&self) -> Bytes {
        match self.document.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// A router with `GET` [`JWKS_PATH`], to merge into an application's router.
    pub fn router(&self) -> Router {
        Router::new().route(JWKS_PATH, get(serve_jwks)).with_state(self.clone())
    }
}

async fn serve_jwks(State(publisher): State<JwksPublisher>) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(JWKS_MEDIA_TYPE)),
        (header::CACHE_CONTROL, publisher.cache_control.clone()),
    ];
    (StatusCode::OK, headers, publisher.document()).into_response()
}
