//! End-to-end cost of signing over core NATS: signed publish to verified
//! consume beside the same flow unsigned, and beside the crypto-bound rate
//! measured in the same run.
//!
//! Needs a NATS server: `NATS_URL`, default `nats://127.0.0.1:4222`; the
//! run fails when it is unreachable. Run
//! `cargo bench --features nats --bench e2e_nats`.
//!
//! - Throughput: a publisher task sends `MESSAGES` messages of 1 KiB as fast
//!   as it can on one connection, while a subscriber task on another
//!   connection receives them and, when they are signed, verifies them. The
//!   rate is messages over the time until the last one arrived. Each of
//!   `ROUNDS` rounds times the crypto, the unsigned flow and the signed flow
//!   in turn, and the report gives each round's ratios and their medians.
//! - Crypto-bound rate: `1 / max(sign, verify_batch)`, the rate of a
//!   two-stage pipeline whose stages each have a core and cost only their
//!   crypto. The subscriber verifies the messages that wait together with
//!   `verify_batch`, so its stage costs the batched verification. Signing
//!   and verifying are timed in this process before the flows run.
//! - Latency per hop: one message at a time, each published 1 ms after the
//!   previous one arrived, so that broker and subscriber are idle. Samples
//!   of the unsigned flow, the signed flow and sign + verify alone are taken
//!   in turn. The added latency is signed minus unsigned, per percentile.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod e2e_support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e_support::{
    AUDIENCE, Counts, CryptoCost, ISSUER, LATENCY_GAP, LATENCY_WARMUP, Latency, PAYLOAD_BYTES, Report, Round,
    UsageStart, runtime, service, sign_and_verify_seconds, unique_suffix, verifier, within,
};
use futures_util::StreamExt;
use trustwire::jwks::JwkSet;
use trustwire::nats::{SignedPublisher, VerifyingSubscriber, channel_binding};
use trustwire::{Signer, SigningKey};

/// Throughput rounds.
const ROUNDS: usize = 5;

/// Messages per throughput run.
const MESSAGES: usize = 10_000;

/// Recorded latency samples per flow.
const SAMPLES: usize = 2_000;

/// Name of the broker's process, whose CPU time the report shows.
const BROKER_PROCESS: &str = "nats-server";

fn main() {
    let counts = Counts::from_args(ROUNDS, MESSAGES, SAMPLES);
    runtime().block_on(run(counts));
}

/// The publishing and the subscribing service's connections.
struct Clients {
    publisher: async_nats::Client,
    subscriber: async_nats::Client,
}

async fn run(counts: Counts) {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let clients = Clients {
        publisher: connect(&url).await,
        subscriber: connect(&url).await,
    };

    let key = SigningKey::generate().unwrap();
    let keys = JwkSet::from_keys(vec![key.public_key().clone()]);
    let signer = Signer::new(service(ISSUER), key);
    let payload = Bytes::from(vec![b'x'; PAYLOAD_BYTES]);

    let channel = channel_binding("bench.e2e.crypto").unwrap();
    let mut rounds = Vec::with_capacity(counts.rounds);
    for _ in 0..counts.rounds {
        let crypto = CryptoCost::measure(&signer, &keys, &channel, &payload, counts.messages).await;
        let unsigned = throughput_unsigned(&clients, &payload, counts.messages).await;
        let usage = UsageStart::now(BROKER_PROCESS);
        let signed = throughput_signed(&clients, &signer, &keys, &payload, counts.messages).await;
        let signed_usage = usage.per_message(counts.messages);
        rounds.push(Round {
            crypto,
            unsigned,
            signed,
            signed_usage,
        });
    }
    let latency = latency(&clients, &signer, &keys, &payload, counts.samples).await;

    Report {
        transport: "NATS",
        counts,
        rounds,
        latency,
    }
    .print();
}

/// Connects to `url`, panicking with what to start when the server is
/// unreachable: a benchmark without its broker must fail, not skip.
async fn connect(url: &str) -> async_nats::Client {
    match tokio::time::timeout(Duration::from_secs(5), async_nats::connect(url)).await {
        Ok(Ok(client)) => client,
        Ok(Err(err)) => panic!("cannot connect to NATS at {url}: {err}; start nats-server -a 127.0.0.1 -p 4222"),
        Err(_) => panic!("connecting to NATS at {url} timed out; start nats-server -a 127.0.0.1 -p 4222"),
    }
}

/// Returns once the server has processed everything `client` sent before,
/// subscriptions included. async-nats' `flush` only writes to the socket,
/// so a message published on the other connection right after it can reach
/// the server before the SUB and be dropped, which the run would report as
/// a lost message.
async fn wait_for_server(client: &async_nats::Client) {
    let inbox = client.new_inbox();
    let mut echo = client.subscribe(inbox.clone()).await.unwrap();
    client.publish(inbox, Bytes::new()).await.unwrap();
    client.flush().await.unwrap();
    within(echo.next()).await.expect("the echo subscription ended early");
    echo.unsubscribe().await.unwrap();
}

fn unique_subject(flow: &str) -> String {
    format!("bench.e2e.{flow}.{}", unique_suffix())
}

async fn throughput_unsigned(clients: &Clients, payload: &Bytes, count: usize) -> f64 {
    let subject = unique_subject("unsigned");
    let mut subscriber = clients.subscriber.subscribe(subject.clone()).await.unwrap();
    wait_for_server(&clients.subscriber).await;

    let started = Instant::now();
    let receiver = tokio::spawn(async move {
        for _ in 0..count {
            within(subscriber.next()).await.expect("the subscription ended early");
        }
    });
    for _ in 0..count {
        clients
            .publisher
            .publish(subject.clone(), payload.clone())
            .await
            .unwrap();
    }
    clients.publisher.flush().await.unwrap();
    receiver.await.unwrap();
    count as f64 / started.elapsed().as_secs_f64()
}

async fn throughput_signed(clients: &Clients, signer: &Signer, keys: &JwkSet, payload: &Bytes, count: usize) -> f64 {
    let subject = unique_subject("signed");
    let publisher = SignedPublisher::new(clients.publisher.clone(), signer.clone(), service(AUDIENCE));
    let mut subscriber = VerifyingSubscriber::builder(clients.subscriber.clone(), verifier(keys))
        .subscribe(subject.clone())
        .await
        .unwrap();
    wait_for_server(&clients.subscriber).await;

    let started = Instant::now();
    let receiver = tokio::spawn(async move {
        for _ in 0..count {
            within(subscriber.next()).await.expect("the subscription ended early");
        }
    });
    for _ in 0..count {
        publisher.publish(subject.clone(), payload.clone()).await.unwrap();
    }
    clients.publisher.flush().await.unwrap();
    receiver.await.unwrap();
    count as f64 / started.elapsed().as_secs_f64()
}

/// Takes paced samples of the unsigned flow, the signed flow and sign +
/// verify alone, in turn.
async fn latency(clients: &Clients, signer: &Signer, keys: &JwkSet, payload: &Bytes, count: usize) -> Latency {
    let unsigned_subject = unique_subject("unsigned-latency");
    let mut unsigned = clients.subscriber.subscribe(unsigned_subject.clone()).await.unwrap();

    let signed_subject = unique_subject("signed-latency");
    let publisher = SignedPublisher::new(clients.publisher.clone(), signer.clone(), service(AUDIENCE));
    let mut signed = VerifyingSubscriber::builder(clients.subscriber.clone(), verifier(keys))
        .subscribe(signed_subject.clone())
        .await
        .unwrap();
    wait_for_server(&clients.subscriber).await;

    let crypto_channel = channel_binding("bench.e2e.latency-crypto").unwrap();
    let crypto_verifier = verifier(keys);
    let mut latency = Latency::default();
    for sample in 0..LATENCY_WARMUP + count {
        let record = sample >= LATENCY_WARMUP;

        tokio::time::sleep(LATENCY_GAP).await;
        let started = Instant::now();
        clients
            .publisher
            .publish(unsigned_subject.clone(), payload.clone())
            .await
            .unwrap();
        clients.publisher.flush().await.unwrap();
        within(unsigned.next()).await.expect("the subscription ended early");
        if record {
            latency.unsigned.push(started.elapsed().as_secs_f64());
        }

        tokio::time::sleep(LATENCY_GAP).await;
        let started = Instant::now();
        publisher
            .publish(signed_subject.clone(), payload.clone())
            .await
            .unwrap();
        clients.publisher.flush().await.unwrap();
        within(signed.next()).await.expect("the subscription ended early");
        if record {
            latency.signed.push(started.elapsed().as_secs_f64());
        }

        tokio::time::sleep(LATENCY_GAP).await;
        let seconds = sign_and_verify_seconds(signer, &crypto_verifier, &crypto_channel, payload).await;
        if record {
            latency.sign_and_verify.push(seconds);
        }
    }
    latency
}
