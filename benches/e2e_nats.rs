//! End-to-end cost of signing over NATS: signed publish to verified consume
//! beside the same flow unsigned, and beside the crypto-bound rate measured
//! in the same run.
//!
//! Needs a NATS server: `NATS_URL`, default `nats://127.0.0.1:4222`.
//! Run `cargo bench --features nats --bench e2e_nats`.
//!
//! - Throughput: a publisher task sends `MESSAGES` messages of 1 KiB as fast
//!   as it can, while a subscriber task receives them and, when they are
//!   signed, verifies them. The rate is messages over the time until the
//!   last one arrived.
//! - Crypto-bound rate: one message per `max(sign, verify)`, the rate of a
//!   two-stage pipeline whose stages each have a core and cost only their
//!   crypto. Signing and verifying are timed on this machine in this run.
//! - Latency: `ROUND_TRIPS` messages one at a time, each published only after
//!   the previous one arrived; p50 and p99 of publish-to-receive time.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use trustwire::jwks::{JwkSet, KeySource, TrustStore};
use trustwire::nats::{SignedPublisher, VerifyingSubscriber};
use trustwire::{Binding, Expected, ServiceId, Signer, SigningKey, Verifier};

/// Messages per throughput run.
const MESSAGES: usize = 20_000;

/// Messages per latency run.
const ROUND_TRIPS: usize = 2_000;

/// Payload size of every message.
const PAYLOAD_BYTES: usize = 1024;

const ISSUER: &str = "orders";
const AUDIENCE: &str = "payments";

fn main() {
    // `cargo bench` passes `--bench`. `cargo test --all-targets` runs this
    // file without it, and then a short run only checks that the flows work.
    let quick = !std::env::args().any(|argument| argument == "--bench");
    let messages = if quick { 200 } else { MESSAGES };
    let round_trips = if quick { 50 } else { ROUND_TRIPS };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(messages, round_trips));
}

async fn run(messages: usize, round_trips: usize) {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let client = tokio::time::timeout(Duration::from_secs(5), async_nats::connect(&url))
        .await
        .unwrap_or_else(|_| panic!("connecting to NATS at {url} timed out; start nats-server -a 127.0.0.1 -p 4222"))
        .unwrap_or_else(|err| panic!("cannot connect to NATS at {url}: {err}; start nats-server -a 127.0.0.1 -p 4222"));

    let key = SigningKey::generate().unwrap();
    let keys = JwkSet::from_keys(vec![key.public_key().clone()]);
    let signer = Signer::new(service(ISSUER), key);
    let payload = Bytes::from(vec![b'x'; PAYLOAD_BYTES]);

    let (sign_seconds, verify_seconds) = crypto_seconds(&signer, &keys, &payload, messages).await;
    let crypto_bound = 1.0 / sign_seconds.max(verify_seconds);

    let unsigned = throughput_unsigned(&client, &payload, messages).await;
    let signed = throughput_signed(&client, &signer, &keys, &payload, messages).await;
    let unsigned_latency = latency_unsigned(&client, &payload, round_trips).await;
    let signed_latency = latency_signed(&client, &signer, &keys, &payload, round_trips).await;

    println!("NATS end to end, {PAYLOAD_BYTES} B payloads, {messages} messages, {round_trips} round trips");
    println!(
        "sign {:.1} µs, verify {:.1} µs per message",
        sign_seconds * 1e6,
        verify_seconds * 1e6
    );
    println!("{:<34} {:>12}", "flow", "messages/s");
    println!("{:<34} {:>12.0}", "unsigned", unsigned);
    println!("{:<34} {:>12.0}", "signed and verified", signed);
    println!("{:<34} {:>12.0}", "crypto-bound (max of sign, verify)", crypto_bound);
    println!("signed / crypto-bound: {:.2}×", signed / crypto_bound);
    println!("signed / unsigned: {:.2}×", signed / unsigned);
    println!();
    println!("{:<34} {:>10} {:>10}", "latency per hop", "p50 µs", "p99 µs");
    println!(
        "{:<34} {:>10.0} {:>10.0}",
        "unsigned",
        unsigned_latency.0 * 1e6,
        unsigned_latency.1 * 1e6
    );
    println!(
        "{:<34} {:>10.0} {:>10.0}",
        "signed and verified",
        signed_latency.0 * 1e6,
        signed_latency.1 * 1e6
    );
    let added_p99 = signed_latency.1 - unsigned_latency.1;
    println!(
        "added p99: {:.0} µs = {:.2}× (sign + verify)",
        added_p99 * 1e6,
        added_p99 / (sign_seconds + verify_seconds)
    );
}

fn service(name: &str) -> ServiceId {
    ServiceId::new(name).unwrap()
}

fn verifier(keys: &JwkSet) -> Verifier {
    let trust = TrustStore::new().trust(service(ISSUER), KeySource::inline(keys.clone()));
    Verifier::builder(service(AUDIENCE), trust).build().unwrap()
}

/// Returns a subject that no other run of this benchmark uses.
fn unique_subject(flow: &str) -> String {
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).unwrap();
    format!("bench.e2e.{flow}.{}", u64::from_le_bytes(suffix))
}

/// Times signing and verifying `count` tokens one at a time, per message.
async fn crypto_seconds(signer: &Signer, keys: &JwkSet, payload: &[u8], count: usize) -> (f64, f64) {
    let channel = Binding::channel("nats:bench.e2e.crypto").unwrap();
    let started = Instant::now();
    let tokens: Vec<String> = (0..count)
        .map(|_| {
            signer
                .token(service(AUDIENCE))
                .binding(channel.clone())
                .payload(payload)
                .sign()
                .unwrap()
        })
        .collect();
    let sign = started.elapsed().as_secs_f64() / count as f64;

    let verifier = verifier(keys);
    let expected = Expected::message(channel, payload);
    let started = Instant::now();
    for token in &tokens {
        verifier.verify(token, &expected).await.unwrap();
    }
    let verify = started.elapsed().as_secs_f64() / count as f64;
    (sign, verify)
}

async fn throughput_unsigned(client: &async_nats::Client, payload: &Bytes, count: usize) -> f64 {
    let subject = unique_subject("unsigned");
    let mut subscriber = client.subscribe(subject.clone()).await.unwrap();
    client.flush().await.unwrap();

    let started = Instant::now();
    let receiver = tokio::spawn(async move {
        for _ in 0..count {
            receive(subscriber.next()).await;
        }
    });
    for _ in 0..count {
        client.publish(subject.clone(), payload.clone()).await.unwrap();
    }
    client.flush().await.unwrap();
    receiver.await.unwrap();
    count as f64 / started.elapsed().as_secs_f64()
}

async fn throughput_signed(
    client: &async_nats::Client,
    signer: &Signer,
    keys: &JwkSet,
    payload: &Bytes,
    count: usize,
) -> f64 {
    let subject = unique_subject("signed");
    let publisher = SignedPublisher::new(client.clone(), signer.clone(), service(AUDIENCE));
    let mut subscriber = VerifyingSubscriber::builder(client.clone(), verifier(keys))
        .subscribe(subject.clone())
        .await
        .unwrap();
    client.flush().await.unwrap();

    let started = Instant::now();
    let receiver = tokio::spawn(async move {
        for _ in 0..count {
            receive(subscriber.next()).await;
        }
    });
    for _ in 0..count {
        publisher.publish(subject.clone(), payload.clone()).await.unwrap();
    }
    client.flush().await.unwrap();
    receiver.await.unwrap();
    count as f64 / started.elapsed().as_secs_f64()
}

/// Returns (p50, p99) in seconds.
async fn latency_unsigned(client: &async_nats::Client, payload: &Bytes, count: usize) -> (f64, f64) {
    let subject = unique_subject("unsigned-latency");
    let mut subscriber = client.subscribe(subject.clone()).await.unwrap();
    client.flush().await.unwrap();

    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        client.publish(subject.clone(), payload.clone()).await.unwrap();
        client.flush().await.unwrap();
        receive(subscriber.next()).await;
        latencies.push(started.elapsed().as_secs_f64());
    }
    percentiles(latencies)
}

/// Returns (p50, p99) in seconds.
async fn latency_signed(
    client: &async_nats::Client,
    signer: &Signer,
    keys: &JwkSet,
    payload: &Bytes,
    count: usize,
) -> (f64, f64) {
    let subject = unique_subject("signed-latency");
    let publisher = SignedPublisher::new(client.clone(), signer.clone(), service(AUDIENCE));
    let mut subscriber = VerifyingSubscriber::builder(client.clone(), verifier(keys))
        .subscribe(subject.clone())
        .await
        .unwrap();
    client.flush().await.unwrap();

    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        publisher.publish(subject.clone(), payload.clone()).await.unwrap();
        client.flush().await.unwrap();
        receive(subscriber.next()).await;
        latencies.push(started.elapsed().as_secs_f64());
    }
    percentiles(latencies)
}

/// Waits for the next message. A rejected message never arrives, so the
/// wait is bounded.
async fn receive<T>(next: impl std::future::Future<Output = Option<T>>) -> T {
    tokio::time::timeout(Duration::from_secs(30), next)
        .await
        .expect("no message arrived within 30 s: one was lost or rejected")
        .expect("the subscription ended early")
}

fn percentiles(mut latencies: Vec<f64>) -> (f64, f64) {
    latencies.sort_by(f64::total_cmp);
    let at = |fraction: f64| latencies[((latencies.len() - 1) as f64 * fraction).round() as usize];
    (at(0.50), at(0.99))
}
