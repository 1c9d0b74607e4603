#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The remote JWKS cache and the trust store against a real HTTP server.
//!
//! Each test starts its own HTTP/1.1 server on 127.0.0.1. The server is
//! written on a raw `TcpListener` so that it can misbehave in ways a framework
//! would not allow: delay, reset the connection, declare a body it never
//! sends, stream a body without end. It records when each request arrived, and the tests
//! assert request counts and the gaps between requests.
//!
//! Durations are hundreds of milliseconds. Each timing assert uses a bound
//! that the cache guarantees (a refresh can never come before its time) on
//! one side, and a margin of at least 150 ms on the other.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Barrier;
use trustwire::jwks::{JwkSet, KeySource, RemoteJwks, SourceError, TrustStore};
use trustwire::{Binding, Expected, PublicKey, Reason, Rejection, ServiceId, Signer, SigningKey, Verified, Verifier};

const AUDIENCE: &str = "payments";
const CHANNEL: &str = "nats:orders.created";
const PAYLOAD: &[u8] = br#"{"order":42}"#;

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

// ---------------------------------------------------------------------------
// The test server.
// ---------------------------------------------------------------------------

/// The response the test server sends after it has read a request.
#[derive(Debug, Clone)]
enum Reply {
    /// `200 OK` with this body and, if given, this `Cache-Control` value.
    Jwks {
        body: String,
        cache_control: Option<String>,
    },
    /// This status with an empty body.
    Status(u16),
    /// A TCP reset (`SO_LINGER` 0, then close) instead of a response.
    Reset,
    /// `200 OK` with this `Content-Length`, then no body: the connection stays
    /// open until the client hangs up.
    DeclaredLength(u64),
    /// `200 OK` with a chunked body that never ends: 1 KiB every 5 ms.
    EndlessChunks,
    /// `302 Found` to this location.
    Redirect(String),
}

impl Reply {
    fn jwks(keys: &[&PublicKey]) -> Self {
        Self::body(jwks_json(keys))
    }

    fn body(body: impl Into<String>) -> Self {
        Self::Jwks {
            body: body.into(),
            cache_control: None,
        }
    }
}

#[derive(Debug)]
struct ServerState {
    reply: Reply,
    delay: Duration,
    /// Arrival time of each complete request head.
    requests: Vec<Instant>,
}

/// An HTTP/1.1 server on 127.0.0.1 that serves one path with a reply the
/// test can change at any time. Every response closes its connection.
#[derive(Debug, Clone)]
struct JwksServer {
    addr: SocketAddr,
    state: Arc<Mutex<ServerState>>,
}

impl JwksServer {
    async fn start(reply: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind a port on 127.0.0.1 for the test JWKS server");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ServerState {
            reply,
            delay: Duration::ZERO,
            requests: Vec::new(),
        }));

        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_connection(stream, Arc::clone(&shared)));
            }
        });
        Self { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn serve(&self, reply: Reply) {
        self.state.lock().unwrap().reply = reply;
    }

    /// Waits this long after reading each request before replying.
    fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    fn requests(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    fn request_times(&self) -> Vec<Instant> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Polls until `count` requests have arrived and returns whether they did
    /// within `limit`.
    async fn wait_for_requests(&self, count: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.requests() < count {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(ms(5)).await;
        }
        true
    }
}

async fn serve_connection(mut stream: TcpStream, state: Arc<Mutex<ServerState>>) {
    if !read_request_head(&mut stream).await {
        return;
    }
    let (reply, delay) = {
        let mut state = state.lock().unwrap();
        state.requests.push(Instant::now());
        (state.reply.clone(), state.delay)
    };

    tokio::time::sleep(delay).await;
    // A failed write means that the client hung up, which several tests
    // cause on purpose.
    let _ = write_reply(&mut stream, reply).await;
}

/// Reads up to the blank line that ends a request head. The cache sends GET
/// requests without a body, so the head is the whole request.
async fn read_request_head(stream: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return false;
        }
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return false,
            Ok(read) => head.extend_from_slice(&buffer[..read]),
        }
    }
    true
}

async fn write_reply(stream: &mut TcpStream, reply: Reply) -> std::io::Result<()> {
    match reply {
        Reply::Jwks { body, cache_control } => {
            let cache_control = cache_control
                .map(|value| format!("Cache-Control: {value}\r\n"))
                .unwrap_or_default();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/jwk-set+json\r\nContent-Length: {}\r\n{cache_control}Connection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body.as_bytes()).await?;
        }
        Reply::Status(code) => {
            let head = format!("HTTP/1.1 {code} Test Failure\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            stream.write_all(head.as_bytes()).await?;
        }
        Reply::Reset => {
            // Closing a socket whose linger time is zero sends RST, not FIN.
            stream.set_zero_linger()?;
            return Ok(());
        }
        Reply::DeclaredLength(length) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/jwk-set+json\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await?;
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Reply::EndlessChunks => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/jwk-set+json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(b"9\r\n{\"keys\":[\r\n").await?;
            let padding = " ".repeat(1024);
            // Ends when a write fails because the client hung up, or when the
            // test's runtime shuts down.
            loop {
                let chunk = format!("{:x}\r\n{padding}\r\n", padding.len());
                stream.write_all(chunk.as_bytes()).await?;
                tokio::time::sleep(ms(5)).await;
            }
        }
        Reply::Redirect(location) => {
            let head =
                format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            stream.write_all(head.as_bytes()).await?;
        }
    }
    stream.shutdown().await
}

// ---------------------------------------------------------------------------
// Tokens and verifiers.
// ---------------------------------------------------------------------------

fn service(name: &str) -> ServiceId {
    ServiceId::new(name).unwrap()
}

/// Generates a key and returns a signer for `iss` and the public key to publish.
fn new_key(iss: &str) -> (Signer, PublicKey) {
    let key = SigningKey::generate().unwrap();
    let public = key.public_key().clone();
    (Signer::new(service(iss), key), public)
}

fn jwks_json(keys: &[&PublicKey]) -> String {
    JwkSet::from_keys(keys.iter().map(|key| (*key).clone()).collect()).to_json()
}

/// Signs a new token (with a new `jti`) for the test message.
fn sign(signer: &Signer) -> String {
    signer
        .token(service(AUDIENCE))
        .binding(Binding::channel(CHANNEL).unwrap())
        .payload(PAYLOAD)
        .sign()
        .unwrap()
}

async fn verify(verifier: &Verifier, token: &str) -> Result<Verified, Rejection> {
    let expected = Expected::message(Binding::channel(CHANNEL).unwrap(), PAYLOAD);
    verifier.verify(token, &expected).await
}

fn verifier(trust: TrustStore) -> Verifier {
    Verifier::builder(service(AUDIENCE), trust).build().unwrap()
}

/// Builds a verifier that trusts only `issuer`, with keys from `remote`.
fn verifier_for(issuer: &str, remote: &RemoteJwks) -> Verifier {
    verifier(TrustStore::new().trust(service(issuer), KeySource::Remote(remote.clone())))
}

#[track_caller]
fn assert_rejected(result: &Result<Verified, Rejection>, expected: Reason) {
    match result {
        Ok(verified) => panic!(
            "expected rejection {expected}, but the token from {} with kid {} verified",
            verified.claims.iss, verified.kid
        ),
        Err(rejection) => assert_eq!(rejection.reason(), expected, "rejection detail: {}", rejection.detail()),
    }
}

#[track_caller]
fn assert_verified(result: &Result<Verified, Rejection>) {
    if let Err(rejection) = result {
        panic!("expected the token to verify, but it was rejected: {rejection}");
    }
}

async fn sleep_until(deadline: Instant) {
    tokio::time::sleep_until(deadline.into()).await;
}

// ---------------------------------------------------------------------------
// Fetch limits.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_timeout_is_key_source_unavailable() {
    let (signer, public) = new_key("orders");
    let server = JwksServer::start(Reply::jwks(&[&public])).await;
    server.set_delay(Duration::from_secs(3));
    let remote = RemoteJwks::builder(server.url())
        .fetch_timeout(ms(200))
        .build()
        .unwrap();
    let verifier = verifier_for("orders", &remote);

    let started = Instant::now();
    let result = verify(&verifier, &sign(&signer)).await;
    let took = started.elapsed();

    assert_rejected(&result, Reason::KeySourceUnavailable);
    let detail = result.unwrap_err().detail().to_owned();
    assert!(detail.contains("timed out"), "detail: {detail}");
    assert!(
        took >= ms(180),
        "gave up after {took:?}, before the 200 ms fetch timeout"
    );
    assert!(
        took < ms(1000),
        "took {took:?}; the fetch timeout is 200 ms and the server delays 3 s"
    );
    assert_eq!(server.requests(), 1, "one verification should make one request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limit_declared_content_length() {
    let (signer, public) = new_key("orders");
    let body = jwks_json(&[&public]);
    let server = JwksServer::start(Reply::body(body.clone())).await;

    // A body of exactly the limit is accepted, one byte more is not.
    let at_limit = RemoteJwks::builder(server.url())
        .max_response_bytes(body.len())
        .build()
        .unwrap();
    let keys = at_limit.keys().await.expect("a body at the limit");
    assert!(keys.find(signer.kid()).is_some());
    let one_short = RemoteJwks::builder(server.url())
        .max_response_bytes(body.len() - 1)
        .build()
        .unwrap();
    let err = one_short.keys().await.unwrap_err();
    assert!(err.to_string().contains("larger than the limit"), "{err}");
    assert_eq!(server.requests(), 2);

    // The server declares one byte over the limit and then sends nothing, so
    // only the Content-Length check can end the fetch before the timeout.
    server.serve(Reply::DeclaredLength(4097));
    let remote = RemoteJwks::builder(server.url())
        .max_response_bytes(4096)
        .fetch_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let verifier = verifier_for("orders", &remote);

    let started = Instant::now();
    let err = remote.keys().await.unwrap_err();
    let took = started.elapsed();

    assert!(
        err.to_string()
            .contains("response is larger than the limit of 4096 bytes"),
        "{err}"
    );
    assert!(
        took < ms(1000),
        "took {took:?}: the cache waited for the body instead of rejecting the declared length"
    );
    assert_rejected(&verify(&verifier, &sign(&signer)).await, Reason::KeySourceUnavailable);
    assert_eq!(
        server.requests(),
        3,
        "the verification inside the retry wait should not fetch again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limit_chunked_body() {
    let (signer, _) = new_key("orders");
    let server = JwksServer::start(Reply::EndlessChunks).await;
    let remote = RemoteJwks::builder(server.url())
        .max_response_bytes(4096)
        .fetch_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let verifier = verifier_for("orders", &remote);

    let started = Instant::now();
    let err = remote.keys().await.unwrap_err();
    let took = started.elapsed();

    // 4 KiB arrive within about 25 ms; a cache that ignored the limit would
    // read on until the 3 s timeout.
    assert!(
        err.to_string()
            .contains("response is larger than the limit of 4096 bytes"),
        "{err}"
    );
    assert!(took < ms(1500), "took {took:?} to give up on an endless body");
    assert_rejected(&verify(&verifier, &sign(&signer)).await, Reason::KeySourceUnavailable);
    assert_eq!(server.requests(), 1);
}

// ---------------------------------------------------------------------------
// Time to live.
// ---------------------------------------------------------------------------

/// Serves a set with `cache_control` to a cache with a default TTL of 800 ms
/// and bounds of [400 ms, 1200 ms], polls `keys()` every 10 ms, and returns
/// the time between the first two requests.
///
/// The cache refreshes after 3/4 of the TTL, and it cannot do so earlier:
/// the first request arrived before its response set the refresh time. So
/// the gap is at least 3/4 of the TTL, plus at most one poll and a fetch.
async fn time_to_second_request(cache_control: Option<&str>) -> Duration {
    let (_, public) = new_key("orders");
    let server = JwksServer::start(Reply::Jwks {
        body: jwks_json(&[&public]),
        cache_control: cache_control.map(str::to_owned),
    })
    .await;
    let remote = RemoteJwks::builder(server.url())
        .default_ttl(ms(800))
        .ttl_bounds(ms(400), ms(1200))
        .build()
        .unwrap();

    remote.keys().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while server.requests() < 2 && Instant::now() < deadline {
        remote.keys().await.unwrap();
        tokio::time::sleep(ms(10)).await;
    }

    let times = server.request_times();
    assert!(
        times.len() >= 2,
        "no second request within 3 s (Cache-Control: {cache_control:?})"
    );
    times[1] - times[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_below_min_is_raised() {
    // max-age=0 is raised to min_ttl (400 ms), so the refresh starts at 300 ms.
    let gap = time_to_second_request(Some("public, max-age=0")).await;
    assert!(gap >= ms(300), "refreshed after {gap:?}, before 300 ms");
    assert!(gap < ms(550), "refreshed after {gap:?}, expected about 300 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_above_max_is_lowered() {
    // max-age=60 is lowered to max_ttl (1200 ms), so the refresh starts at 900 ms.
    let gap = time_to_second_request(Some("max-age=60")).await;
    assert!(gap >= ms(900), "refreshed after {gap:?}, before 900 ms");
    assert!(gap < ms(1150), "refreshed after {gap:?}, expected about 900 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_without_max_age_is_default() {
    // Without max-age the TTL is default_ttl (800 ms), so the refresh starts at 600 ms.
    let gap = time_to_second_request(None).await;
    assert!(gap >= ms(600), "refreshed after {gap:?}, before 600 ms");
    assert!(gap < ms(850), "refreshed after {gap:?}, expected about 600 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_durations_do_not_overflow() {
    let (signer, public) = new_key("orders");
    let server = JwksServer::start(Reply::Jwks {
        body: jwks_json(&[&public]),
        cache_control: Some(format!("max-age={}", u64::MAX)),
    })
    .await;
    // A caller passes Duration::MAX to mean "no upper bound" or "forever".
    let remote = RemoteJwks::builder(server.url())
        .ttl_bounds(Duration::ZERO, Duration::MAX)
        .max_staleness(Duration::MAX)
        .retry_interval(Duration::MAX)
        .build()
        .unwrap();
    let verifier = verifier_for("orders", &remote);

    let keys = remote.keys().await.expect("keys with a max-age of u64::MAX");
    assert!(keys.find(signer.kid()).is_some());
    assert_verified(&verify(&verifier, &sign(&signer)).await);

    // A failure sets the retry time from retry_interval.
    server.serve(Reply::Status(500));
    let kept = remote.refresh().await.expect("the keys cached before");
    assert!(kept.find(signer.kid()).is_some());
    assert_verified(&verify(&verifier, &sign(&signer)).await);
    assert_eq!(server.requests(), 2);
}

// ---------------------------------------------------------------------------
// Refresh ahead and single flight.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_ahead_returns_cached_keys_at_once() {
    let (signer, old) = new_key("orders");
    let (_, new) = new_key("orders");
    let server = JwksServer::start(Reply::jwks(&[&old])).await;
    // Every response lives 400 ms, so a refresh is due 300 ms after a fetch.
    let remote = RemoteJwks::builder(server.url())
        .ttl_bounds(ms(400), ms(400))
        .build()
        .unwrap();
    let verifier = verifier_for("orders", &remote);
    remote.keys().await.unwrap();
    let fetched = Instant::now();

    server.set_delay(ms(600));
    server.serve(Reply::jwks(&[&old, &new]));
    sleep_until(fetched + ms(350)).await;

    let started = Instant::now();
    let keys = remote.keys().await.unwrap();
    let took = started.elapsed();
    assert!(
        took < ms(100),
        "keys() took {took:?}; it should not wait for the 600 ms refresh"
    );
    assert!(keys.find(old.kid()).is_some());
    assert!(
        keys.find(new.kid()).is_none(),
        "keys() returned the refreshed set, so it waited for the refresh"
    );

    let started = Instant::now();
    assert_verified(&verify(&verifier, &sign(&signer)).await);
    let took = started.elapsed();
    assert!(
        took < ms(100),
        "verifying with a cached key took {took:?} during a refresh"
    );

    assert!(
        server.wait_for_requests(2, Duration::from_secs(2)).await,
        "no refresh request"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while remote.cached().unwrap().find(new.kid()).is_none() {
        assert!(
            Instant::now() < deadline,
            "the background refresh never stored the new set"
        );
        tokio::time::sleep(ms(10)).await;
    }
    assert_eq!(
        server.requests(),
        2,
        "calls during a refresh in flight started another one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_flight_on_cold_cache() {
    let (signer, public) = new_key("orders");
    let server = JwksServer::start(Reply::jwks(&[&public])).await;
    server.set_delay(ms(300));
    let remote = RemoteJwks::builder(server.url()).build().unwrap();

    let barrier = Arc::new(Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let remote = remote.clone();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                remote.keys().await
            })
        })
        .collect();
    for task in tasks {
        let keys = task.await.unwrap().expect("keys from the shared fetch");
        assert!(keys.find(signer.kid()).is_some());
    }

    assert_eq!(server.requests(), 1);
}

/// Verifies each token in its own task, all released at once.
async fn verify_concurrently(verifier: &Verifier, tokens: Vec<String>) -> Vec<Result<Verified, Rejection>> {
    let barrier = Arc::new(Barrier::new(tokens.len()));
    let tasks: Vec<_> = tokens
        .into_iter()
        .map(|token| {
            let verifier = verifier.clone();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                verify(&verifier, &token).await
            })
        })
        .collect();

    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_flight_for_unknown_kid() {
    let (_, old) = new_key("orders");
    let (next_signer, next) = new_key("orders");
    let server = JwksServer::start(Reply::jwks(&[&old])).await;
    let remote = RemoteJwks::builder(server.url()).build().unwrap();
    let verifier = verifier_for("orders", &remote);
    remote.keys().await.unwrap();

    // The server publishes the next key; 50 tokens signed with it arrive at
    // once. One refresh serves them all.
    server.serve(Reply::jwks(&[&old, &next]));
    server.set_delay(ms(300));
    let tokens = (0..50).map(|_| sign(&next_signer)).collect();
    for result in verify_concurrently(&verifier, tokens).await {
        assert_verified(&result);
    }
    assert_eq!(server.requests(), 2);

    // A kid that the server does not publish either: the cooldown (30 s by
    // default) started by the refresh above holds back any further fetch.
    let (stranger, _) = new_key("orders");
    let tokens = (0..50).map(|_| sign(&stranger)).collect();
    for result in verify_concurrently(&verifier, tokens).await {
        assert_rejected(&result, Reason::UnknownKey);
    }
    assert_eq!(server.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_on_cold_cache_fetches_once() {
    let (_, published) = new_key("orders");
    let (stranger, _) = new_key("orders");
    let server = JwksServer::start(Reply::jwks(&[&published])).await;
    let remote = RemoteJwks::builder(server.url()).build().unwrap();
    let verifier = verifier_for("orders", &remote);

    // The lookup fetches the set because nothing is cached; fetching it
    // again for the unknown kid would return the same set.
    assert_rejected(&verify(&verifier, &sign(&stranger)).await, Reason::UnknownKey);
    assert_eq!(server.requests(), 1);
}

// ---------------------------------------------------------------------------
// Unknown-kid cooldown.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_cooldown_per_source() {
    let cooldown = ms(500);
    let (orders, orders_old) = new_key("orders");
    let (billing, billing_old) = new_key("billing");
    let orders_server = JwksServer::start(Reply::jwks(&[&orders_old])).await;
    let billing_server = JwksServer::start(Reply::jwks(&[&billing_old])).await;
    let orders_remote = RemoteJwks::builder(orders_server.url())
        .unknown_kid_cooldown(cooldown)
        .build()
        .unwrap();
    let billing_remote = RemoteJwks::builder(billing_server.url())
        .unknown_kid_cooldown(cooldown)
        .build()
        .unwrap();
    let verifier = verifier(
        TrustStore::new()
            .trust(service("orders"), KeySource::Remote(orders_remote))
            .trust(service("billing"), KeySource::Remote(billing_remote)),
    );
    verifier.trust_store().prefetch().await.unwrap();
    assert_verified(&verify(&verifier, &sign(&orders)).await);
    assert_verified(&verify(&verifier, &sign(&billing)).await);

    // orders signs with a key that it has not published yet: one refresh.
    let (orders_next_signer, orders_next) = new_key("orders");
    let orders_next_token = || sign(&orders_next_signer);
    assert_rejected(&verify(&verifier, &orders_next_token()).await, Reason::UnknownKey);
    let cooling_since = Instant::now();
    assert_eq!(orders_server.requests(), 2);

    // Now it publishes the key, but the cooldown holds back the refresh.
    orders_server.serve(Reply::jwks(&[&orders_old, &orders_next]));
    for _ in 0..5 {
        assert_rejected(&verify(&verifier, &orders_next_token()).await, Reason::UnknownKey);
    }
    assert!(
        cooling_since.elapsed() < cooldown,
        "the test ran too slowly to check the cooldown"
    );
    assert_eq!(orders_server.requests(), 2, "refreshed again within the cooldown");

    // billing's cooldown is separate from orders'.
    let (billing_next_signer, _) = new_key("billing");
    assert_rejected(
        &verify(&verifier, &sign(&billing_next_signer)).await,
        Reason::UnknownKey,
    );
    assert_eq!(billing_server.requests(), 2);
    assert_eq!(orders_server.requests(), 2);

    // After the cooldown, the next unknown kid refreshes and finds the key.
    sleep_until(cooling_since + cooldown + ms(100)).await;
    assert_verified(&verify(&verifier, &orders_next_token()).await);
    assert_eq!(orders_server.requests(), 3);
}

// ---------------------------------------------------------------------------
// Failures and outages.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_refresh_keeps_good_keys() {
    let (signer, public) = new_key("orders");
    let server = JwksServer::start(Reply::jwks(&[&public])).await;
    let remote = RemoteJwks::builder(server.url()).build().unwrap();
    let verifier = verifier_for("orders", &remote);
    remote.keys().await.unwrap();

    let private_key = SigningKey::generate().unwrap();
    let private_set = format!(r#"{{"keys":[{}]}}"#, private_key.to_private_jwk().as_str());
    let failures = [
        ("HTTP 500", Reply::Status(500), "HTTP status 500"),
        ("connection reset", Reply::Reset, "fetching JWKS from"),
        (
            "invalid JSON",
            Reply::body(r#"{"keys":[{"kty":"OKP","#),
            "invalid JWK Set",
        ),
        ("private member", Reply::body(private_set), "private member \"d\""),
    ];

    for (name, reply, expected_error) in failures {
        server.serve(reply);
        let before = server.requests();

        // A cold cache reports the failure itself, which shows that the server fails as intended.
        let cold = RemoteJwks::builder(server.url()).build().unwrap();
        let err = cold.keys().await.unwrap_err();
        assert!(matches!(err, SourceError::Unavailable { .. }), "{name}: {err:?}");
        assert!(err.to_string().contains(expected_error), "{name}: {err}");

        // The warm cache tries, fails and keeps its keys.
        let kept = remote
            .refresh()
            .await
            .unwrap_or_else(|err| panic!("{name}: the failed refresh dropped the cached keys: {err}"));
        assert!(kept.find(signer.kid()).is_some(), "{name}");
        assert_eq!(server.requests(), before + 2, "{name}");
        let result = verify(&verifier, &sign(&signer)).await;
        assert!(result.is_ok(), "{name}: {:?}", result.err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_keys_through_outage() {
    let (signer, public) = new_key("orders");
    let server = JwksServer::start(Reply::jwks(&[&public])).await;
    // Fresh for 300 ms, then usable for 900 ms more: 1200 ms in all.
    let remote = RemoteJwks::builder(server.url())
        .ttl_bounds(ms(300), ms(300))
        .max_staleness(ms(900))
        .retry_interval(ms(100))
        .build()
        .unwrap();
    let verifier = verifier_for("orders", &remote);
    remote.keys().await.unwrap();
    let fetched = Instant::now();
    server.serve(Reply::Status(503));

    sleep_until(fetched + ms(450)).await;
    let result = verify(&verifier, &sign(&signer)).await;
    assert!(result.is_ok(), "stale keys at 450 ms: {:?}", result.err());
    sleep_until(fetched + ms(900)).await;
    let result = verify(&verifier, &sign(&signer)).await;
    assert!(result.is_ok(), "stale keys at 900 ms: {:?}", result.err());
    assert!(server.requests() >= 2, "no refresh was tried during the outage");

    // The keys were fetched before `fetched`, so they are past their
    // maximum staleness at 1200 ms at the latest.
    sleep_until(fetched + ms(1500)).await;
    assert_rejected(&verify(&verifier, &sign(&signer)).await, Reason::KeySourceUnavailable);

    // Once the server is back, the next retry fetches the keys again.
    server.serve(Reply::jwks(&[&public]));
    let deadline = Instant::now() + Duration::from_secs(5);
    while verify(&verifier, &sign(&signer)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "still rejected 5 s after the server came back"
        );
        tokio::time::sleep(ms(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_backoff_after_failure() {
    let (signer, _) = new_key("orders");
    let server = JwksServer::start(Reply::Status(500)).await;
    let remote = RemoteJwks::builder(server.url())
        .retry_interval(ms(100))
        .build()
        .unwrap();
    let verifier = verifier_for("orders", &remote);

    let started = Instant::now();
    let mut verifications = 0;
    while started.elapsed() < ms(1100) {
        assert_rejected(&verify(&verifier, &sign(&signer)).await, Reason::KeySourceUnavailable);
        verifications += 1;
        tokio::time::sleep(ms(10)).await;
    }

    // Waits of 100, 200 and 400 ms put requests at about 0, 100, 300 and
    // 700 ms. The next wait is 800 ms, so a fifth request cannot come before
    // 1500 ms.
    let times = server.request_times();
    assert!(verifications >= 30, "only {verifications} verifications ran");
    assert!(
        (3..=4).contains(&times.len()),
        "{} requests for {verifications} verifications; expected 4",
        times.len()
    );
    for (index, pair) in times.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let wait = ms(100) * 2u32.pow(index as u32);
        assert!(
            gap >= wait,
            "request {} came {gap:?} after the one before; the retry wait was {wait:?}",
            index + 2
        );
    }
}

// ---------------------------------------------------------------------------
// Transport security.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_only_to_loopback() {
    // Nothing is fetched from these hosts: building the cache only checks
    // the URL.
    let refused = [
        "http://jwks.example.invalid/.well-known/jwks.json",
        "http://localhost.example.invalid/.well-known/jwks.json",
        "http://127.0.0.1.example.invalid/.well-known/jwks.json",
        "http://192.0.2.10/.well-known/jwks.json",
    ];
    for url in refused {
        match RemoteJwks::builder(url).build() {
            Err(err @ SourceError::PlainHttp { .. }) => {
                assert!(err.to_string().contains("insecure_allow_http"), "{err}");
            }
            other => panic!("{url}: expected a PlainHttp error, got {other:?}"),
        }
        assert!(
            matches!(KeySource::remote(url), Err(SourceError::PlainHttp { .. })),
            "{url}: KeySource::remote accepted plain http"
        );
        assert!(
            RemoteJwks::builder(url).insecure_allow_http().build().is_ok(),
            "{url}: refused even with insecure_allow_http"
        );
    }

    let (_, public) = new_key("orders");
    let server = JwksServer::start(Reply::jwks(&[&public])).await;
    let loopback_urls = [
        server.url(),
        format!("http://localhost:{}/.well-known/jwks.json", server.addr.port()),
    ];
    for (index, url) in loopback_urls.iter().enumerate() {
        let remote = RemoteJwks::builder(url).build().unwrap();
        let keys = remote.keys().await.unwrap_or_else(|err| panic!("{url}: {err}"));
        assert!(keys.find(public.kid()).is_some(), "{url}");
        assert_eq!(server.requests(), index + 1, "{url}");
    }
    assert!(RemoteJwks::builder("http://[::1]:8080/jwks.json").build().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_not_followed() {
    let (_, public) = new_key("orders");
    let target = JwksServer::start(Reply::jwks(&[&public])).await;
    let redirector = JwksServer::start(Reply::Redirect(target.url())).await;
    let remote = RemoteJwks::builder(redirector.url()).build().unwrap();

    let err = remote.keys().await.unwrap_err();

    assert!(err.to_string().contains("HTTP status 302"), "{err}");
    assert_eq!(redirector.requests(), 1);
    assert_eq!(target.requests(), 0, "the cache followed the redirect");
}

// ---------------------------------------------------------------------------
// Trust store.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_store_binds_keys_to_issuer() {
    // Three signers share one key: orders itself, one that claims to be billing
    // and one that claims to be an untrusted intruder.
    let orders_seed = [0x4f; 32];
    let orders_key = SigningKey::from_seed(&orders_seed).unwrap();
    let orders_public = orders_key.public_key().clone();
    let orders = Signer::new(service("orders"), orders_key);
    let orders_as_billing = Signer::new(service("billing"), SigningKey::from_seed(&orders_seed).unwrap());
    let orders_as_intruder = Signer::new(service("intruder"), SigningKey::from_seed(&orders_seed).unwrap());
    let (billing, billing_public) = new_key("billing");
    let (intruder, _) = new_key("intruder");

    let orders_server = JwksServer::start(Reply::jwks(&[&orders_public])).await;
    let billing_server = JwksServer::start(Reply::jwks(&[&billing_public])).await;
    let verifier = verifier(
        TrustStore::new()
            .trust(
                service("orders"),
                KeySource::Remote(RemoteJwks::builder(orders_server.url()).build().unwrap()),
            )
            .trust(
                service("billing"),
                KeySource::Remote(RemoteJwks::builder(billing_server.url()).build().unwrap()),
            ),
    );
    let requests = || (orders_server.requests(), billing_server.requests());

    // An untrusted iss never makes a source fetch, whatever the kid.
    assert_rejected(&verify(&verifier, &sign(&intruder)).await, Reason::UnknownKey);
    assert_rejected(&verify(&verifier, &sign(&orders_as_intruder)).await, Reason::UnknownKey);
    assert_eq!(requests(), (0, 0), "an untrusted iss caused a fetch");

    verifier.trust_store().prefetch().await.unwrap();
    assert_eq!(requests(), (1, 1));

    // orders' key, found in orders' set, does not verify a token from billing.
    assert_rejected(
        &verify(&verifier, &sign(&orders_as_billing)).await,
        Reason::IssuerMismatch,
    );
    assert_rejected(
        &verify(&verifier, &sign(&orders_as_intruder)).await,
        Reason::IssuerMismatch,
    );
    assert_rejected(&verify(&verifier, &sign(&intruder)).await, Reason::UnknownKey);
    assert_eq!(requests(), (1, 1), "a rejected token caused a fetch");

    // Each issuer's own tokens still verify.
    assert_verified(&verify(&verifier, &sign(&orders)).await);
    assert_verified(&verify(&verifier, &sign(&billing)).await);
    assert_eq!(requests(), (1, 1));
}
