//! Shared helpers of the NATS integration tests: the server connection,
//! services with keys, verifiers, unique names and a raw protocol client.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::{Client, Message, Subscriber};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use trustwire::envelope::VerifierBuilder;
use trustwire::jwks::{JwkSet, KeySource, TrustStore};
use trustwire::{ServiceId, Signer, SigningKey, Verifier};

const START_HINT: &str = "start it with: start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
     -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log";

/// The server URL: `NATS_URL`, default `nats://127.0.0.1:4222`.
pub(crate) fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// The `host:port` part of the server URL.
pub(crate) fn nats_addr() -> String {
    let url = nats_url();
    let without_scheme = url.split("://").last().unwrap_or(&url).to_owned();
    without_scheme.rsplit('@').next().unwrap_or(&without_scheme).to_owned()
}

/// Connects to the server, failing the test with what to start when it is
/// unreachable.
pub(crate) async fn connect() -> Client {
    connect_to(&nats_url()).await
}

/// Connects to `url` with a 5 s limit.
pub(crate) async fn connect_to(url: &str) -> Client {
    connect_with(url, async_nats::ConnectOptions::new()).await
}

/// Connects to `url` and counts the connections made, the first one and each
/// reconnect, so a test can wait for a reconnect it caused.
pub(crate) async fn connect_counting(url: &str) -> (Client, Arc<AtomicUsize>) {
    let connects = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&connects);
    let options = async_nats::ConnectOptions::new().event_callback(move |event| {
        let counter = Arc::clone(&counter);
        async move {
            if matches!(event, async_nats::Event::Connected) {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (connect_with(url, options).await, connects)
}

async fn connect_with(url: &str, options: async_nats::ConnectOptions) -> Client {
    let attempt = tokio::time::timeout(
        Duration::from_secs(5),
        options.connection_timeout(Duration::from_secs(3)).connect(url),
    )
    .await;
    match attempt {
        Ok(Ok(client)) => client,
        Ok(Err(err)) => panic!("cannot connect to the NATS server at {url}: {err}; {START_HINT}"),
        Err(_) => panic!("connecting to the NATS server at {url} timed out; {START_HINT}"),
    }
}

/// A random lowercase hex suffix, so tests can run in parallel and rerun.
pub(crate) fn suffix() -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A service with a fresh key.
pub(crate) struct Service {
    pub(crate) id: ServiceId,
    pub(crate) key_set: JwkSet,
    pub(crate) signer: Signer,
}

pub(crate) fn service(name: &str) -> Service {
    service_with(name, |builder| builder)
}

/// A service whose signer is configured by `configure`.
pub(crate) fn service_with(
    name: &str,
    configure: impl FnOnce(trustwire::envelope::SignerBuilder) -> trustwire::envelope::SignerBuilder,
) -> Service {
    let id = ServiceId::new(name).unwrap();
    let key = SigningKey::generate().unwrap();
    let key_set = JwkSet::from_keys(vec![key.public_key().clone()]);
    let signer = configure(Signer::builder(id.clone(), key)).build().unwrap();
    Service { id, key_set, signer }
}

/// A trust store with each of `issuers`' keys.
pub(crate) fn trust(issuers: &[&Service]) -> TrustStore {
    issuers.iter().fold(TrustStore::new(), |store, issuer| {
        store.trust(issuer.id.clone(), KeySource::inline(issuer.key_set.clone()))
    })
}

/// A verifier for `audience` trusting `issuers`, with default options.
pub(crate) fn verifier(audience: &str, issuers: &[&Service]) -> Verifier {
    verifier_with(audience, issuers, |builder| builder)
}

/// A verifier for `audience` trusting `issuers`, configured by `configure`.
pub(crate) fn verifier_with(
    audience: &str,
    issuers: &[&Service],
    configure: impl FnOnce(VerifierBuilder) -> VerifierBuilder,
) -> Verifier {
    configure(Verifier::builder(ServiceId::new(audience).unwrap(), trust(issuers)))
        .build()
        .unwrap()
}

/// The next message of `subscriber` within `wait`, or `None`.
pub(crate) async fn next_within(subscriber: &mut Subscriber, wait: Duration) -> Option<Message> {
    tokio::time::timeout(wait, subscriber.next()).await.ok().flatten()
}

/// A header value of `message`, as a string.
pub(crate) fn header(message: &Message, name: &str) -> Option<String> {
    message
        .headers
        .as_ref()?
        .get(name)
        .map(|value| value.as_str().to_owned())
}

/// Replaces the first character of the signature segment with another
/// base64url character, so the token still parses but its signature does
/// not verify.
pub(crate) fn corrupt_signature(token: &str) -> String {
    let (signing_input, signature) = token.rsplit_once('.').unwrap();
    let first = if signature.starts_with('A') { "B" } else { "A" };
    format!("{signing_input}.{first}{}", &signature[1..])
}

/// Waits until the server has processed every operation `client` sent
/// before this call, SUBs included.
///
/// In async-nats 0.52 `Client::flush` only writes to the socket (perhaps a
/// test proxy's), and the API has no PING. So the client publishes to an inbox it
/// subscribes to. The server handles a connection's operations in order, so
/// it echoes that message only after the earlier ones.
pub(crate) async fn round_trip(client: &async_nats::Client) {
    let inbox = client.new_inbox();
    let mut echo = client.subscribe(inbox.clone()).await.unwrap();
    client.publish(inbox, bytes::Bytes::new()).await.unwrap();
    client.flush().await.unwrap();
    assert!(
        next_within(&mut echo, Duration::from_secs(5)).await.is_some(),
        "no round trip to the NATS server within 5 s"
    );
    echo.unsubscribe().await.unwrap();
}

/// Publishes `headers` (a raw header block without the version line) and
/// `payload` on `subject` over a bare TCP connection, bypassing async-nats'
/// header checks, and waits until the server has processed it.
pub(crate) async fn raw_hpub(subject: &str, header_lines: &[u8], payload: &[u8]) {
    let stream = TcpStream::connect(nats_addr())
        .await
        .unwrap_or_else(|err| panic!("cannot reach the NATS server at {}: {err}; {START_HINT}", nats_addr()));
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);

    let mut info = String::new();
    read.read_line(&mut info).await.unwrap();
    assert!(info.starts_with("INFO"), "unexpected greeting {info:?}");
    write
        .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}\r\n")
        .await
        .unwrap();

    let mut block = b"NATS/1.0\r\n".to_vec();
    block.extend_from_slice(header_lines);
    block.extend_from_slice(b"\r\n");
    let total = block.len() + payload.len();
    let mut frame = format!("HPUB {subject} {} {total}\r\n", block.len()).into_bytes();
    frame.extend_from_slice(&block);
    frame.extend_from_slice(payload);
    frame.extend_from_slice(b"\r\nPING\r\n");
    write.write_all(&frame).await.unwrap();

    let mut line = String::new();
    loop {
        line.clear();
        read.read_line(&mut line).await.unwrap();
        assert!(
            !line.starts_with("-ERR"),
            "the server rejected the raw publish: {line:?}"
        );
        if line.starts_with("PONG") {
            break;
        }
    }
}

/// Serves `keys` at the JWKS path on 127.0.0.1 and delays each response by
/// `delay`. Returns the JWKS URL.
pub(crate) async fn slow_jwks_server(keys: &trustwire::jwks::JwkSet, delay: Duration) -> String {
    let body = keys.to_json();
    let router = axum::Router::new().route(
        trustwire::jwks::JWKS_PATH,
        axum::routing::get(move || {
            let body = body.clone();
            async move {
                tokio::time::sleep(delay).await;
                ([(http::header::CONTENT_TYPE, "application/json")], body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    format!("http://{addr}{}", trustwire::jwks::JWKS_PATH)
}
