//! Outbound signing: the reqwest extension and the tower layer around a
//! real hyper client, both calling a verifying axum server on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use http::{HeaderName, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt};
use trustwire::http::{Caller, RequestBuilderExt, RequestSigner, SignLayer, SignRequestError, VerifyLayer};
use trustwire::jwks::{JwkSet, KeySource, TrustStore};
use trustwire::{ServiceId, Signer, SigningKey, Verifier};

fn id(name: &str) -> ServiceId {
    ServiceId::new(name).unwrap()
}

/// The `orders` signer for `payments`, and a `payments` server verifying it
/// with `layer_header` as the token header.
async fn setup(layer_header: Option<HeaderName>) -> (RequestSigner, String) {
    let key = SigningKey::generate().unwrap();
    let trust = TrustStore::new().trust(
        id("orders"),
        KeySource::inline(JwkSet::from_keys(vec![key.public_key().clone()])),
    );
    let verifier = Verifier::builder(id("payments"), trust).build().unwrap();
    let mut layer = VerifyLayer::new(verifier);
    if let Some(header) = layer_header {
        layer = layer.header(header);
    }

    let router = Router::new()
        .route(
            "/v1/charges",
            post(|caller: Caller, body: Bytes| async move {
                format!(
                    "{} {} {}",
                    caller.issuer(),
                    caller.claims().dig.is_some(),
                    String::from_utf8_lossy(&body)
                )
            }),
        )
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let signer = RequestSigner::new(Signer::new(id("orders"), key), id("payments"));
    (signer, format!("http://{address}"))
}

async fn body_text(response: http::Response<hyper::body::Incoming>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn hyper_client_signs_body_and_query() {
    let (signer, base) = setup(None).await;
    let client = signer.hyper_client();
    let request = Request::post(format!("{base}/v1/charges?b=2&a=1"))
        .body(Full::new(Bytes::from_static(br#"{"amount":42}"#)))
        .unwrap();

    let response = client.oneshot(request).await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_text(response).await, r#"orders true {"amount":42}"#);
}

#[tokio::test]
async fn hyper_client_leaves_empty_body_unbound() {
    let (signer, base) = setup(None).await;
    let request = Request::post(format!("{base}/v1/charges"))
        .body(Full::new(Bytes::new()))
        .unwrap();

    let response = signer.hyper_client().oneshot(request).await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_text(response).await, "orders false ");
}

#[tokio::test]
async fn hyper_client_reused_for_many_calls() {
    let (signer, base) = setup(None).await;
    let mut client = signer.hyper_client();

    for amount in 0..5 {
        let request = Request::post(format!("{base}/v1/charges"))
            .body(Full::new(Bytes::from(format!("{amount}"))))
            .unwrap();
        let ready = ServiceExt::<Request<Full<Bytes>>>::ready(&mut client).await.unwrap();
        let response = tower::Service::call(ready, request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "call {amount}");
    }
}

#[tokio::test]
async fn sign_layer_rejects_body_over_limit() {
    let (signer, base) = setup(None).await;
    let client = signer.max_body_bytes(4).hyper_client();
    let request = Request::post(format!("{base}/v1/charges"))
        .body(Full::new(Bytes::from_static(b"12345")))
        .unwrap();

    let err = client.oneshot(request).await.unwrap_err();

    let err = err.downcast::<SignRequestError>().unwrap();
    assert!(matches!(*err, SignRequestError::BodyTooLarge { limit: 4 }), "{err:?}");
}

#[tokio::test]
async fn sign_layer_wraps_any_tower_service() {
    let (signer, _) = setup(None).await;
    // A plain tower service standing in for a client shows what the layer sends.
    let capture = tower::service_fn(|request: Request<Full<Bytes>>| async move {
        let token = request.headers()["authorization"].to_str().unwrap().to_owned();
        let body = request.into_body().collect().await.unwrap().to_bytes();
        Ok::<_, Infallible>((token, body))
    });
    let request = Request::builder()
        .method(Method::PUT)
        .uri("/v1/charges/7")
        .body(Full::new(Bytes::from_static(b"data")))
        .unwrap();

    let (token, body) = SignLayer::new(signer).layer(capture).oneshot(request).await.unwrap();

    assert!(token.starts_with("Bearer "), "{token}");
    assert_eq!(token.matches('.').count(), 2);
    assert_eq!(&body[..], b"data");
}

#[tokio::test]
async fn reqwest_custom_header() {
    let header = HeaderName::from_static("trustwire-token");
    let (signer, base) = setup(Some(header.clone())).await;

    let response = reqwest::Client::new()
        .post(format!("{base}/v1/charges"))
        .body(r#"{"amount":1}"#)
        .sign_with(&signer.header(header))
        .unwrap()
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), r#"orders true {"amount":1}"#);
}

#[tokio::test]
async fn reqwest_streaming_body_rejected() {
    let (signer, base) = setup(None).await;
    let chunks: Vec<Result<&'static [u8], Infallible>> = vec![Ok(b"a")];

    let result = reqwest::Client::new()
        .post(format!("{base}/v1/charges"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .sign_with(&signer);

    assert!(matches!(result, Err(SignRequestError::StreamingBody)), "{result:?}");
}

#[tokio::test]
async fn reqwest_invalid_url_reported() {
    let (signer, _) = setup(None).await;

    let result = reqwest::Client::new().post("not a url").sign_with(&signer);

    assert!(matches!(result, Err(SignRequestError::Request(_))), "{result:?}");
}
