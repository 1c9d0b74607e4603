//! The verifying layer in front of a real axum server on loopback, called
//! over HTTP with reqwest: accepted calls, every HTTP-specific rejection
//! with its status and reason code, the body limit and the tower contract.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, post};
use http::header::WWW_AUTHENTICATE;
use http::{HeaderName, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use trustwire::http::{Caller, RequestBuilderExt, RequestSigner, VerifyLayer};
use trustwire::jwks::{JwkSet, KeySource, TrustStore};
use trustwire::{Binding, Policy, ServiceId, Signer, SigningKey, Verifier};

/// Two callers, `orders` and `edge`, and the `payments` service they call.
struct Fixture {
    orders: Signer,
    edge: Signer,
    trust: TrustStore,
}

impl Fixture {
    fn new() -> Self {
        let orders_key = SigningKey::generate().unwrap();
        let edge_key = SigningKey::generate().unwrap();
        let trust = TrustStore::new()
            .trust(
                id("orders"),
                KeySource::inline(JwkSet::from_keys(vec![orders_key.public_key().clone()])),
            )
            .trust(
                id("edge"),
                KeySource::inline(JwkSet::from_keys(vec![edge_key.public_key().clone()])),
            );
        Self {
            orders: Signer::new(id("orders"), orders_key),
            edge: Signer::new(id("edge"), edge_key),
            trust,
        }
    }

    fn verifier(&self) -> Verifier {
        Verifier::builder(id("payments"), self.trust.clone()).build().unwrap()
    }

    fn to_payments(&self) -> RequestSigner {
        RequestSigner::new(self.orders.clone(), id("payments"))
    }
}

fn id(name: &str) -> ServiceId {
    ServiceId::new(name).unwrap()
}

/// Echoes the caller, the subject and the body it received.
async fn echo(caller: Caller, body: Bytes) -> String {
    format!(
        "iss={} sub={} body={}",
        caller.issuer(),
        caller.subject().unwrap_or("-"),
        String::from_utf8_lossy(&body)
    )
}

fn app(layer: VerifyLayer) -> Router {
    Router::new()
        .route("/v1/charges", post(echo).get(echo))
        .route("/v1/refunds", post(echo))
        .layer(layer)
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{address}")
}

/// The `error_description` of a `WWW-Authenticate` challenge.
fn reason_code(response: &reqwest::Response) -> String {
    let challenge = response
        .headers()
        .get(WWW_AUTHENTICATE)
        .expect("a WWW-Authenticate header")
        .to_str()
        .unwrap();
    let (_, rest) = challenge
        .split_once("error_description=\"")
        .unwrap_or_else(|| panic!("no error_description in {challenge:?}"));
    rest.trim_end_matches('"').to_owned()
}

/// Signs a token for `method target` with `body` and returns it, so a test
/// can send it on a request that differs.
fn token_for(signer: &Signer, method: &str, target: &str, body: Option<&[u8]>) -> String {
    let mut token = signer
        .token(id("payments"))
        .binding(Binding::http(method, target).unwrap());
    if let Some(body) = body {
        token = token.payload(body);
    }
    token.sign().unwrap()
}

#[tokio::test]
async fn signed_post_reaches_handler_unchanged() {
    let fixture = Fixture::new();
    let base = serve(app(VerifyLayer::new(fixture.verifier()))).await;

    let response = reqwest::Client::new()
        .post(format!("{base}/v1/charges?currency=EUR&amount=42"))
        .body(r#"{"order":42}"#)
        .sign_with(&fixture.to_payments())
        .unwrap()
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), r#"iss=orders sub=- body={"order":42}"#);
}

#[tokio::test]
async fn signed_get_without_body_accepted() {
    let fixture = Fixture::new();
    let base = serve(app(VerifyLayer::new(fixture.verifier()))).await;

    let response = reqwest::Client::new()
        .get(format!("{base}/v1/charges"))
        .sign_with(&fixture.to_payments())
        .unwrap()
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "iss=orders sub=- body=");
}

#[tokio::test]
async fn query_in_other_order_and_encoding_accepted() {
    let fixture = Fixture::new();
    let base = serve(app(VerifyLayer::new(fixture.verifier()))).await;
    let token = token_for(&fixture.orders, "GET", "/v1/charges?a=~x&b=2", None);

    let response = reqwest::Client::new()
        .get(format!("{base}/v1/charges?b=2&a=%7Ex"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn missing_token_rejected_without_error_code() {
    let fixture = Fixture::new();
    let base = serve(app(VerifyLayer::new(fixture.verifier()))).await;

    let response = reqwest::Client::new()
        .post(format!("{base}/v1/charges"))
        .body("{}")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer");
    assert_eq!(response.text().await.unwrap(), "missing_token\n");
}

#[tokio::test]
async fn basic_scheme_rejected_as_malformed() {
    let fixture = Fixture::new();
    let base = serve(app(VerifyLayer::new(fixture.verifier()))).await;

    let response = reqwest::Client::new()
        .get(format!("{base}/v1/charges"))
        .basic_auth("orders", Some("password"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reason_code(&response), "malformed");
}

#[tokio::test]
async fn token_for_other_route_rejected() {
    let fixture = Fixture::new();
    let base = serve(app(VerifyLayer::new(fixture.verifier()))).await;
    let token = token_for(&fixture.orders, "POST", "/v1/charges", Some(b"{}"));

    let response = reqwest::Client::new()
        .post(format!("{base}/v1/refunds"))
        .bearer_auth(token)
        .body("{}")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reason_code(&response), "binding_mismatch");
    assert_eq!(response.text().await.unwrap(), "binding_mismatch\n");
}

#[tokio::test]
async fn token_for_other_method_rejected() {
    let fixture = Fixture::new();
    let base = serve(app(VerifyLayer::new(fixture.verifier()))).await;
    let token = token_for(&fixture.orders, "GET", "/v1/charges", None);

    let response = reqwest::Client::new()
        .post(format!("{base}/v1/charges"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reason_code(&response), "binding_mismatch");
}

#[tokio::test]
async fn token_for_other_query_rejected() {
    let fixture = Fixture::new();
    let base = serve(app(VerifyLayer::new(fixture.verifier()))).await;
    let token = token_for(&fixture.orders, "GET", "/v1/charges?amount=1", None);

    let response = reqwest::Client::new()
        .get(format!("{base}/v1/charges?amount=1000"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reason_code(&response), "binding_mismatch");
}

#[tokio::test]
async fn altered_body_rejected() {
    let fixture = Fixture::new();
    let base = serve(app(VerifyLayer::new(fixture.verifier()))).await;
    let token = token_for(&fixture.orders, "POST", "/v1/charges", Some(br#"{"amount":1}"#));

    let response = reqwest::Client::new()
        .post(format!("{base}/v1/charges"))
        .bearer_auth(token)
        .body(r#"{"amount":1000}"#)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reason_code(&response), "digest_mismatch");
}

#[tokio::test]
async fn body_added_to_bodiless_token_rejected() {
    let fixture = Fixture::new();
    let base = serve(app(VerifyLayer::new(fixture.verifier()))).await;
    let token = token_for(&fixture.orders, "POST", "/v1/charges", None);

    let response = reqwest::Client::new()
        .post(format!("{base}/v1/charges"))
        .bearer_auth(token)
        .body(r#"{"amount":1000}"#)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reason_code(&response), "digest_mismatch");
}

#[tokio::test]
async fn replayed_token_rejected() {
    let fixture = Fixture::new();
    let base = serve(app(VerifyLayer::new(fixture.verifier()))).await;
    let token = token_for(&fixture.orders, "GET", "/v1/charges", None);
    let client = reqwest::Client::new();

    let first = client
        .get(format!("{base}/v1/charges"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let second = client
        .get(format!("{base}/v1/charges"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();

    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reason_code(&second), "replayed");
}

#[tokio::test]
async fn policy_denial_answers_403() {
    let fixture = Fixture::new();
    let policy = Policy::deny_all()
        .allow_route(id("orders"), "POST /v1/charges")
        .unwrap();
    let verifier = Verifier::builder(id("payments"), fixture.trust.clone())
        .policy(policy)
        .build()
        .unwrap();
    let base = serve(app(VerifyLayer::new(verifier))).await;
    let client = reqwest::Client::new();

    let allowed = client
        .post(format!("{base}/v1/charges"))
        .body("{}")
        .sign_with(&fixture.to_payments())
        .unwrap()
        .send()
        .await
        .unwrap();
    let denied = client
        .post(format!("{base}/v1/refunds"))
        .body("{}")
        .sign_with(&fixture.to_payments())
        .unwrap()
        .send()
        .await
        .unwrap();

    assert_eq!(allowed.status(), StatusCode::OK);
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    assert_eq!(reason_code(&denied), "not_allowed");
}

#[tokio::test]
async fn body_over_limit_answers_413() {
    let fixture = Fixture::new();
    let base = serve(app(VerifyLayer::new(fixture.verifier()).max_body_bytes(16))).await;
    let body = vec![b'x'; 17];
    let token = token_for(&fixture.orders, "POST", "/v1/charges", Some(&body));

    let response = reqwest::Client::new()
        .post(format!("{base}/v1/charges"))
        .bearer_auth(token)
        .body(body)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn streamed_body_over_limit_answers_413() {
    let fixture = Fixture::new();
    let base = serve(app(VerifyLayer::new(fixture.verifier()).max_body_bytes(16))).await;
    let chunks: Vec<Result<&'static [u8], Infallible>> = vec![Ok(b"0123456789"), Ok(b"0123456789")];
    let token = token_for(&fixture.orders, "POST", "/v1/charges", Some(b"01234567890123456789"));

    // A stream has no Content-Length, so the limit must stop the reading.
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/charges"))
        .bearer_auth(token)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn body_at_limit_accepted() {
    let fixture = Fixture::new();
    let base = serve(app(VerifyLayer::new(fixture.verifier()).max_body_bytes(16))).await;

    let response = reqwest::Client::new()
        .post(format!("{base}/v1/charges"))
        .body(vec![b'x'; 16])
        .sign_with(&fixture.to_payments())
        .unwrap()
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn custom_header_carries_bare_token() {
    let fixture = Fixture::new();
    let header = HeaderName::from_static("trustwire-token");
    let base = serve(app(VerifyLayer::new(fixture.verifier()).header(header.clone()))).await;
    let signer = fixture.to_payments().header(header);

    // The end user's own Authorization header passes through untouched.
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/charges"))
        .header("authorization", "Bearer end-user-token")
        .body("{}")
        .sign_with(&signer)
        .unwrap()
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn digestless_token_needs_configured_issuer() {
    let fixture = Fixture::new();
    let strict = serve(app(VerifyLayer::new(fixture.verifier()))).await;
    let verifier = Verifier::builder(id("payments"), fixture.trust.clone())
        .issuers_without_digest([id("edge")])
        .build()
        .unwrap();
    let relaxed = serve(app(VerifyLayer::new(verifier))).await;
    let client = reqwest::Client::new();

    let send = |base: &str, token: String| {
        client
            .post(format!("{base}/v1/charges"))
            .bearer_auth(token)
            .body(r#"{"amount":1}"#)
            .send()
    };
    let edge_token = || {
        fixture
            .edge
            .token(id("payments"))
            .binding(Binding::http("POST", "/v1/charges").unwrap())
            .subject("acme")
            .sign()
            .unwrap()
    };

    let strict_edge = send(&strict, edge_token()).await.unwrap();
    assert_eq!(strict_edge.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reason_code(&strict_edge), "digest_mismatch");

    let relaxed_edge = send(&relaxed, edge_token()).await.unwrap();
    assert_eq!(relaxed_edge.status(), StatusCode::OK);
    assert_eq!(
        relaxed_edge.text().await.unwrap(),
        r#"iss=edge sub=acme body={"amount":1}"#
    );

    let relaxed_orders = send(&relaxed, token_for(&fixture.orders, "POST", "/v1/charges", None))
        .await
        .unwrap();
    assert_eq!(relaxed_orders.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reason_code(&relaxed_orders), "digest_mismatch");

    // An issuer allowed to omit dig is still held to a dig it does send.
    let wrong_dig = token_for(&fixture.edge, "POST", "/v1/charges", Some(b"other"));
    let relaxed_wrong_dig = send(&relaxed, wrong_dig).await.unwrap();
    assert_eq!(relaxed_wrong_dig.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reason_code(&relaxed_wrong_dig), "digest_mismatch");
}

#[tokio::test]
async fn detailed_errors_carry_detail() {
    let fixture = Fixture::new();
    let base = serve(app(VerifyLayer::new(fixture.verifier()).dangerous_detailed_errors())).await;
    let token = token_for(&fixture.orders, "GET", "/v1/charges", None);

    let response = reqwest::Client::new()
        .post(format!("{base}/v1/charges"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body = response.text().await.unwrap();
    assert!(
        body.starts_with("binding_mismatch: token is for method \"GET\""),
        "{body}"
    );
}

#[tokio::test]
async fn caller_without_layer_answers_500() {
    let router = Router::new().route("/", get(|caller: Caller| async move { caller.issuer().to_owned() }));
    let base = serve(router).await;

    let response = reqwest::get(format!("{base}/")).await.unwrap();

    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn optional_caller_is_none_without_layer() {
    let router = Router::new().route(
        "/",
        get(|caller: Option<Caller>| async move { format!("{}", caller.is_some()) }),
    );
    let base = serve(router).await;

    let response = reqwest::get(format!("{base}/")).await.unwrap();

    assert_eq!(response.text().await.unwrap(), "false");
}

/// An inner service that accepts a call only on the instance that
/// `poll_ready` readied; a clone starts not ready.
struct ReadyOnce {
    ready: bool,
    calls: Arc<AtomicUsize>,
}

impl Clone for ReadyOnce {
    fn clone(&self) -> Self {
        Self {
            ready: false,
            calls: Arc::clone(&self.calls),
        }
    }
}

impl Service<Request<Full<Bytes>>> for ReadyOnce {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        assert!(self.ready, "call on an instance that poll_ready did not ready");
        self.ready = false;
        self.calls.fetch_add(1, Ordering::SeqCst);
        let caller = request.extensions().get::<Caller>().unwrap().issuer().to_owned();
        std::future::ready(Ok(Response::new(Full::new(Bytes::from(caller)))))
    }
}

#[tokio::test]
async fn layer_calls_the_readied_service() {
    let fixture = Fixture::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut service = VerifyLayer::new(fixture.verifier()).layer(ReadyOnce {
        ready: false,
        calls: Arc::clone(&calls),
    });

    for _ in 0..3 {
        let token = token_for(&fixture.orders, "GET", "/v1/charges", None);
        let request = Request::get("/v1/charges")
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let ready = ServiceExt::<Request<Full<Bytes>>>::ready(&mut service).await.unwrap();
        let response = ready.call(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"orders");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn rejected_request_never_calls_inner() {
    let fixture = Fixture::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let service = VerifyLayer::new(fixture.verifier()).layer(ReadyOnce {
        ready: false,
        calls: Arc::clone(&calls),
    });
    let request = Request::get("/v1/charges").body(Full::new(Bytes::new())).unwrap();

    let response = service.oneshot(request).await.unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}
