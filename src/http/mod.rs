//! HTTP (feature `http`): verify inbound calls, sign outbound calls, and mint
//! internal tokens at the edge gateway.
//!
//! - [`VerifyLayer`] is a tower layer for axum routers and hyper services. It
//!   takes the token from `Authorization: Bearer` (or a header you name),
//!   buffers the body up to a limit, verifies the token against the method,
//!   the canonical request target and the body, and hands the request on
//!   unchanged. Handlers read the verified caller with the [`Caller`]
//!   extractor.
//! - [`RequestSigner`] signs outbound calls: [`RequestBuilderExt::sign_with`]
//!   for reqwest, and [`SignLayer`] for hyper clients and other tower services.
//! - Sealed bodies (opt-in): [`RequestSealer`] encrypts a request body to
//!   the audience's encryption keys, and [`OpenLayer`] opens it before the
//!   handler runs (see `docs/sealing.md`).
//! - [`gateway`] is the forward-auth endpoint that nginx `auth_request`,
//!   Traefik ForwardAuth and Kong call. It checks an API key or an identity
//!   provider's JWT and returns an internal token for the upstream.
//!
//! A token binds `htm` (the method) and `htu` (the path and query in the
//! canonical form of [`crate::envelope::canonical_target`]). A non-empty body
//! is bound by `dig`; an empty body counts as no body, so signers leave `dig`
//! out and verifiers expect none. `docs/http.md` has the details.
//!
//! ```no_run
//! use axum::{Router, routing::post};
//! use trustwire::http::{Caller, VerifyLayer};
//! use trustwire::jwks::{KeySource, TrustStore};
//! use trustwire::{ServiceId, Verifier};
//!
//! async fn charge(caller: Caller) -> String {
//!     format!("charged for {}", caller.issuer())
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let trust = TrustStore::new().trust(
//!     ServiceId::new("orders")?,
//!     KeySource::remote("https://orders.internal/.well-known/jwks.json")?,
//! );
//! let verifier = Verifier::builder(ServiceId::new("payments")?, trust).build()?;
//! let app: Router = Router::new()
//!     .route("/v1/charges", post(charge))
//!     .layer(VerifyLayer::new(verifier));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```

mod body;
mod client;
pub mod gateway;
mod response;
mod sealed;
mod server;
mod target;

pub use body::ResponseBody;
pub use client::{
    HyperClient, RequestBuilderExt, RequestSealer, RequestSigner, SealRequestBuilderExt, SealRequestError, SignFuture,
    SignLayer, SignRequestError, SignService,
};
pub use sealed::{JOSE_CONTENT_TYPE, JOSE_JSON_CONTENT_TYPE, SEALED_CONTENT_TYPE_HEADER, SEALED_HEADER};
pub use server::{
    Caller, DEFAULT_MAX_BODY_BYTES, MissingCaller, OpenLayer, OpenService, VerifyFuture, VerifyLayer, VerifyService,
};
pub use target::request_binding;

/// The error type of [`SignService`] and of [`ResponseBody`]: any error that
/// can cross threads.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
