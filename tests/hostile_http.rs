//! Hostile `Authorization` headers sent as raw bytes to a real axum server
//! on 127.0.0.1 behind `VerifyLayer`: each case asserts the status, the
//! reason code in `WWW-Authenticate`, and that the handler never ran.

#![cfg(feature = "http")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use trustwire::http::VerifyLayer;
use trustwire::jwks::{JwkSet, KeySource, TrustStore};
use trustwire::{Binding, ServiceId, Signer, SigningKey, Verifier};

const PATH: &str = "/v1/charges";
const BODY: &[u8] = br#"{"amount":1}"#;

struct Server {
    address: String,
    calls: Arc<AtomicUsize>,
    signer: Signer,
}

impl Server {
    async fn start() -> Self {
        let key = SigningKey::from_seed(&[41; 32]).unwrap();
        let set = JwkSet::from_keys(vec![key.public_key().clone()]);
        let orders = ServiceId::new("orders").unwrap();
        let trust = TrustStore::new().trust(orders.clone(), KeySource::inline(set));
        let verifier = Verifier::builder(ServiceId::new("payments").unwrap(), trust)
            .build()
            .unwrap();

        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let app = Router::new()
            .route(
                PATH,
                post(move || {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async { "ok" }
                }),
            )
            .layer(VerifyLayer::new(verifier));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            address,
            calls,
            signer: Signer::new(orders, key),
        }
    }

    fn token(&self) -> String {
        self.signer
            .token(ServiceId::new("payments").unwrap())
            .binding(Binding::http("POST", PATH).unwrap())
            .payload(BODY)
            .sign()
            .unwrap()
    }

    /// Sends a POST whose header lines are `headers`, byte for byte, and
    /// returns the status code and the `WWW-Authenticate` value.
    async fn post(&self, headers: &[&[u8]]) -> (u16, String) {
        let mut request = format!(
            "POST {PATH} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.address,
            BODY.len()
        )
        .into_bytes();
        for line in headers {
            request.extend_from_slice(line);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(BODY);

        let mut stream = TcpStream::connect(&self.address).await.unwrap();
        stream.write_all(&request).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
            .await
            .expect("the server answered within 10 s")
            .unwrap();

        let text = String::from_utf8_lossy(&response);
        let status = text.split(' ').nth(1).unwrap().parse().unwrap();
        let challenge = text
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("www-authenticate")
                    .then(|| value.trim().to_owned())
            })
            .unwrap_or_default();
        (status, challenge)
    }
}

fn bearer(token: &str) -> Vec<u8> {
    format!("Authorization: Bearer {token}").into_bytes()
}

fn malformed() -> String {
    r#"Bearer error="invalid_token", error_description="malformed""#.to_owned()
}

#[tokio::test]
async fn valid_token_reaches_handler() {
    let server = Server::start().await;
    let (status, _) = server.post(&[&bearer(&server.token())]).await;
    assert_eq!(status, 200);
    assert_eq!(server.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn hostile_authorization_headers() {
    let server = Server::start().await;
    let token = server.token();
    let (head, rest) = token.split_at(20);

    let cases: Vec<(&str, Vec<Vec<u8>>, u16, String)> = vec![
        (
            "two Authorization headers",
            vec![bearer(&token), bearer(&token)],
            401,
            malformed(),
        ),
        (
            "space inside the token",
            vec![bearer(&format!("{head} {rest}"))],
            401,
            malformed(),
        ),
        (
            "two tokens in one header",
            vec![bearer(&format!("{token} {token}"))],
            401,
            malformed(),
        ),
        (
            "tab after the scheme",
            vec![format!("Authorization: Bearer\t{token}").into_bytes()],
            401,
            malformed(),
        ),
        (
            "byte outside ASCII",
            vec![[bearer(&token), vec![0xff]].concat()],
            401,
            malformed(),
        ),
        (
            "token split by a comma",
            vec![bearer(&format!("{head},{rest}"))],
            401,
            malformed(),
        ),
        ("scheme only", vec![b"Authorization: Bearer".to_vec()], 401, malformed()),
    ];
    for (name, headers, status, challenge) in cases {
        let lines: Vec<&[u8]> = headers.iter().map(Vec::as_slice).collect();
        let (got_status, got_challenge) = server.post(&lines).await;
        assert_eq!(got_status, status, "{name}");
        assert_eq!(got_challenge, challenge, "{name}");
    }
    assert_eq!(server.calls.load(Ordering::SeqCst), 0);
}

/// A bare CR or LF inside the value splits or ends the header line, so hyper
/// returns 400 before the layer or the handler sees the request.
#[tokio::test]
async fn line_breaks_in_token_never_reach_the_layer() {
    let server = Server::start().await;
    let token = server.token();
    let (head, rest) = token.split_at(20);

    for (name, line) in [
        ("bare CR", format!("Authorization: Bearer {head}\r{rest}")),
        ("NUL", format!("Authorization: Bearer {head}\0{rest}")),
    ] {
        let (status, challenge) = server.post(&[line.as_bytes()]).await;
        assert_eq!(status, 400, "{name}");
        assert_eq!(challenge, "", "{name}");
    }

    // CR LF ends the line, so the rest of the token becomes a header line
    // with no colon, for which hyper also returns 400.
    let smuggled = format!("Authorization: Bearer {head}\r\n{rest}");
    let (status, _) = server.post(&[smuggled.as_bytes()]).await;
    assert_eq!(status, 400);
    assert_eq!(server.calls.load(Ordering::SeqCst), 0);
}
