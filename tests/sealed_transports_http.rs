//! Sealed request bodies over HTTP on loopback: reqwest and hyper clients
//! seal, an axum server behind `OpenLayer` opens, a TCP proxy between them
//! records what crosses the network, and tampered, misaddressed and
//! mismatched requests get 401 with their reason codes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use trustwire::http::{
    Caller, OpenLayer, RequestBuilderExt, RequestSealer, RequestSigner, SEALED_HEADER, SealRequestBuilderExt,
    VerifyLayer,
};
use trustwire::jwks::{JwkSet, KeySource, TrustStore};
use trustwire::keys::EncryptionKey;
use trustwire::seal::{Opener, RecipientDirectory, Sealer};
use trustwire::{Audience, Binding, ServiceId, Signer, SigningKey, Verifier};

const PAYLOAD: &[u8] = br#"{"order":42,"card":"4111 1111 1111 1111"}"#;
const SECRET: &[u8] = b"4111 1111 1111 1111";

fn id(name: &str) -> ServiceId {
    ServiceId::new(name).unwrap()
}

/// The caller `orders`, and the encryption keys of `payments` and `billing`.
struct Fixture {
    orders: Signer,
    trust: TrustStore,
    payments_seed: [u8; 32],
    billing_seed: [u8; 32],
}

impl Fixture {
    fn new() -> Self {
        let key = SigningKey::generate().unwrap();
        let trust = TrustStore::new().trust(
            id("orders"),
            KeySource::inline(JwkSet::from_keys(vec![key.public_key().clone()])),
        );
        Self {
            orders: Signer::new(id("orders"), key),
            trust,
            payments_seed: seed(),
            billing_seed: seed(),
        }
    }

    fn key(seed: &[u8; 32]) -> EncryptionKey {
        EncryptionKey::from_x25519_bytes(seed).unwrap()
    }

    fn key_source(seed: &[u8; 32]) -> KeySource {
        KeySource::inline(JwkSet::default().with_encryption_keys(vec![Self::key(seed).public_key().clone()]))
    }

    fn verifier(&self, service: &str) -> Verifier {
        Verifier::builder(id(service), self.trust.clone()).build().unwrap()
    }

    fn opener(&self, service: &str) -> Opener {
        let seed = match service {
            "payments" => &self.payments_seed,
            _ => &self.billing_seed,
        };
        Opener::new(self.verifier(service), vec![Self::key(seed)]).unwrap()
    }

    /// The directory of a caller that knows both services' keys.
    fn directory(&self) -> RecipientDirectory {
        RecipientDirectory::new()
            .add(id("payments"), Self::key_source(&self.payments_seed))
            .add(id("billing"), Self::key_source(&self.billing_seed))
    }

    fn sealer_to(&self, audience: impl Into<Audience>) -> RequestSealer {
        RequestSealer::new(Sealer::new(self.orders.clone()), audience, self.directory())
    }
}

fn seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).unwrap();
    seed
}

/// Echoes the caller, the content type and the body the handler received.
async fn echo(caller: Caller, headers: HeaderMap, body: Bytes) -> String {
    let content_type = headers.get(CONTENT_TYPE).map_or("-", |value| value.to_str().unwrap());
    format!(
        "iss={} content-type={content_type} sealed-header={} body={}",
        caller.issuer(),
        headers.contains_key(SEALED_HEADER),
        String::from_utf8_lossy(&body)
    )
}

/// Reads the body with axum's JSON extractor, which needs the caller's
/// `Content-Type: application/json` back.
async fn charge(caller: Caller, Json(order): Json<serde_json::Value>) -> String {
    format!("{} ordered {}", caller.issuer(), order["order"])
}

fn routes() -> Router {
    Router::new()
        .route("/v1/echo", post(echo).get(echo))
        .route("/v1/charges", post(charge))
}

async fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{address}")
}

/// A TCP proxy on loopback in front of `upstream` that records every byte
/// the client sends.
async fn recording_proxy(upstream: &str) -> (String, Arc<Mutex<Vec<u8>>>) {
    let upstream = upstream.trim_start_matches("http://").to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&recorded);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(&upstream).await.unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let sink = Arc::clone(&sink);
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                loop {
                    let read = client_read.read(&mut buffer).await.unwrap_or(0);
                    if read == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buffer[..read]);
                    if server_write.write_all(&buffer[..read]).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
        }
    });
    (format!("http://{address}"), recorded)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
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

/// Flips one bit of the ciphertext segment of a compact JWE.
fn tamper_ciphertext(jwe: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(jwe).unwrap();
    let mut parts: Vec<String> = text.split('.').map(str::to_owned).collect();
    assert_eq!(parts.len(), 5, "not a compact JWE");
    let mut ciphertext = URL_SAFE_NO_PAD.decode(&parts[3]).unwrap();
    ciphertext[0] ^= 0x01;
    parts[3] = URL_SAFE_NO_PAD.encode(ciphertext);
    parts.join(".").into_bytes()
}

/// The `jti` claim of a compact JWS, read without verifying it.
fn jti_of(token: &str) -> String {
    let claims = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    claims["jti"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn sealed_body_round_trip_hides_plaintext() {
    let fixture = Fixture::new();
    let server = serve(routes().layer(OpenLayer::new(fixture.opener("payments")))).await;
    let (proxy, recorded) = recording_proxy(&server).await;
    let client = reqwest::Client::new();

    let response = client
        .post(format!("{proxy}/v1/echo?currency=EUR"))
        .header(CONTENT_TYPE, "application/json")
        .body(PAYLOAD)
        .seal_with(&fixture.sealer_to(id("payments")))
        .await
        .unwrap()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let echoed = response.text().await.unwrap();
    assert_eq!(
        echoed,
        format!(
            "iss=orders content-type=application/json sealed-header=false body={}",
            String::from_utf8_lossy(PAYLOAD)
        )
    );

    let response = client
        .post(format!("{proxy}/v1/charges"))
        .header(CONTENT_TYPE, "application/json")
        .body(PAYLOAD)
        .seal_with(&fixture.sealer_to(id("payments")))
        .await
        .unwrap()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "orders ordered 42");

    let wire = recorded.lock().unwrap().clone();
    let wire_text = String::from_utf8_lossy(&wire).to_ascii_lowercase();
    assert!(!contains(&wire, SECRET), "the plaintext crossed the network");
    assert!(
        !contains(&wire, b"\"order\""),
        "part of the plaintext crossed the network"
    );
    assert!(
        wire_text.contains("trustwire-sealed: 1"),
        "no sealed marker on the wire"
    );
    assert!(wire_text.contains("content-type: application/jose\r\n"));
    assert!(wire_text.contains("trustwire-sealed-content-type: application/json"));
}

#[tokio::test]
async fn fan_out_body_opens_for_each_recipient() {
    let fixture = Fixture::new();
    let payments = serve(routes().layer(OpenLayer::new(fixture.opener("payments")))).await;
    let billing = serve(routes().layer(OpenLayer::new(fixture.opener("billing")))).await;
    let sealer = fixture.sealer_to(Audience::many(vec![id("payments"), id("billing")]).unwrap());

    // The same sealed request, sent to each recipient.
    let mut request = reqwest::Client::new()
        .post(format!("{payments}/v1/echo"))
        .body(PAYLOAD)
        .build()
        .unwrap();
    sealer.seal_reqwest(&mut request).await.unwrap();
    assert_eq!(request.headers()[CONTENT_TYPE], "application/jose+json");
    let body = request.body().unwrap().as_bytes().unwrap().to_vec();
    assert!(!contains(&body, SECRET));

    for base in [&payments, &billing] {
        let response = reqwest::Client::new()
            .post(format!("{base}/v1/echo"))
            .headers(request.headers().clone())
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "at {base}");
        let echoed = response.text().await.unwrap();
        assert!(
            echoed.ends_with(&format!("body={}", String::from_utf8_lossy(PAYLOAD))),
            "{echoed}"
        );
    }
}

#[tokio::test]
async fn tampered_body_rejected_with_code() {
    let fixture = Fixture::new();
    let server = serve(routes().layer(OpenLayer::new(fixture.opener("payments")))).await;
    let client = reqwest::Client::new();

    let mut request = client.post(format!("{server}/v1/echo")).body(PAYLOAD).build().unwrap();
    fixture
        .sealer_to(id("payments"))
        .seal_reqwest(&mut request)
        .await
        .unwrap();
    let headers = request.headers().clone();
    let jwe = request.body().unwrap().as_bytes().unwrap().to_vec();
    let tampered = tamper_ciphertext(&jwe);
    let token = headers[AUTHORIZATION]
        .to_str()
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_owned();

    // On the wire: the token's dig no longer matches the JWE.
    let response = client
        .post(format!("{server}/v1/echo"))
        .headers(headers.clone())
        .body(tampered.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reason_code(&response), "digest_mismatch");

    // By the trusted caller itself, signing the tampered JWE: the token
    // verifies, and AES-GCM catches the change.
    let resigned = fixture
        .orders
        .token(id("payments"))
        .binding(Binding::http("POST", "/v1/echo").unwrap())
        .payload(&tampered)
        .jti(&jti_of(&token))
        .sign()
        .unwrap();
    let mut resigned_headers = headers.clone();
    resigned_headers.insert(AUTHORIZATION, format!("Bearer {resigned}").parse().unwrap());
    let response = client
        .post(format!("{server}/v1/echo"))
        .headers(resigned_headers)
        .body(tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reason_code(&response), "decryption_failed");
    assert_eq!(response.text().await.unwrap(), "decryption_failed\n");

    // The layer still opens a genuine request after the rejections.
    let response = client
        .post(format!("{server}/v1/echo"))
        .body(PAYLOAD)
        .seal_with(&fixture.sealer_to(id("payments")))
        .await
        .unwrap()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn sealed_to_other_service_rejected() {
    let fixture = Fixture::new();
    let server = serve(routes().layer(OpenLayer::new(fixture.opener("payments")))).await;
    let client = reqwest::Client::new();

    // Addressed to payments, but sealed to billing's key: the token verifies
    // and no JWE entry is for payments.
    let misdirected = RecipientDirectory::new().add(id("payments"), Fixture::key_source(&fixture.billing_seed));
    let sealer = RequestSealer::new(Sealer::new(fixture.orders.clone()), id("payments"), misdirected);
    let response = client
        .post(format!("{server}/v1/echo"))
        .body(PAYLOAD)
        .seal_with(&sealer)
        .await
        .unwrap()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reason_code(&response), "not_a_recipient");

    // Sealed to billing: the token is not for payments at all.
    let response = client
        .post(format!("{server}/v1/echo"))
        .body(PAYLOAD)
        .seal_with(&fixture.sealer_to(id("billing")))
        .await
        .unwrap()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reason_code(&response), "wrong_audience");
}

#[tokio::test]
async fn plain_and_sealed_mismatch_wrong_type() {
    let fixture = Fixture::new();
    let opening = serve(routes().layer(OpenLayer::new(fixture.opener("payments")))).await;
    let plain = serve(routes().layer(VerifyLayer::new(fixture.verifier("payments")))).await;
    let client = reqwest::Client::new();
    let signer = RequestSigner::new(fixture.orders.clone(), id("payments"));

    // A signed, not sealed, body to the opening layer.
    let response = client
        .post(format!("{opening}/v1/echo"))
        .body(PAYLOAD)
        .sign_with(&signer)
        .unwrap()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reason_code(&response), "wrong_type");

    // A request without a body has nothing to seal, so it passes as plain.
    let response = client
        .get(format!("{opening}/v1/echo"))
        .seal_with(&fixture.sealer_to(id("payments")))
        .await
        .unwrap()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.text().await.unwrap(),
        "iss=orders content-type=- sealed-header=false body="
    );

    // A sealed body to the plain layer: its token would verify, so only the
    // marker keeps the JWE from reaching the handler as the body.
    let response = client
        .post(format!("{plain}/v1/echo"))
        .body(PAYLOAD)
        .seal_with(&fixture.sealer_to(id("payments")))
        .await
        .unwrap()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reason_code(&response), "wrong_type");
}

#[tokio::test]
async fn plain_bodies_accepted_only_when_allowed() {
    let fixture = Fixture::new();
    let layer = OpenLayer::new(fixture.opener("payments")).insecure_accept_plain_bodies();
    let server = serve(routes().layer(layer)).await;
    let client = reqwest::Client::new();

    let response = client
        .post(format!("{server}/v1/echo"))
        .body(PAYLOAD)
        .sign_with(&RequestSigner::new(fixture.orders.clone(), id("payments")))
        .unwrap()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let response = client
        .post(format!("{server}/v1/echo"))
        .body(PAYLOAD)
        .seal_with(&fixture.sealer_to(id("payments")))
        .await
        .unwrap()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn hyper_request_sealed() {
    let fixture = Fixture::new();
    let server = serve(routes().layer(OpenLayer::new(fixture.opener("payments")))).await;
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();

    let request = http::Request::post(format!("{server}/v1/charges"))
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(PAYLOAD)))
        .unwrap();
    let sealed = fixture.sealer_to(id("payments")).seal_request(request).await.unwrap();
    assert_eq!(sealed.headers()[CONTENT_TYPE], "application/jose");
    assert_eq!(sealed.headers()[SEALED_HEADER], "1");

    let response = hyper.request(sealed).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"orders ordered 42");
}
