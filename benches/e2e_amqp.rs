//! End-to-end cost of signing over RabbitMQ: signed publish to verified
//! consume beside the same flow unsigned, and beside the crypto-bound rate
//! measured in the same run.
//!
//! Needs RabbitMQ: `AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`;
//! the run fails when it is unreachable. Run
//! `cargo bench --features amqp --bench e2e_amqp`.
//!
//! Both flows publish to the default exchange with the queue's name as
//! routing key, with publisher confirms on, and consume with prefetch
//! `PREFETCH`, acknowledging each message. Publisher and consumer have a
//! connection each.
//!
//! - Throughput: a publisher task sends `MESSAGES` messages of 1 KiB without
//!   waiting for each confirm, while a consumer task receives them and, when
//!   they are signed, verifies them. The rate is messages over the time until
//!   the last one was acknowledged. Rounds as in `e2e_nats`.
//! - Crypto-bound rate: `1 / max(sign, verify_batch)`, as in `e2e_nats`.
//! - Latency per hop: one message at a time, each published 1 ms after the
//!   previous one arrived, timed from publish to delivery. The confirm is
//!   awaited after that, outside the timed span. Samples of the unsigned
//!   flow, the signed flow and sign + verify alone are taken in turn.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod e2e_support;

use std::time::{Duration, Instant};

use e2e_support::{
    AUDIENCE, Counts, CryptoCost, ISSUER, LATENCY_GAP, LATENCY_WARMUP, Latency, PAYLOAD_BYTES, Report, Round,
    UsageStart, runtime, service, sign_and_verify_seconds, unique_suffix, verifier, within,
};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use trustwire::amqp::{DeadLetter, SignedPublisher, VerifyingConsumer};
use trustwire::jwks::JwkSet;
use trustwire::{Binding, Signer, SigningKey};

/// Throughput rounds.
const ROUNDS: usize = 5;

/// Messages per throughput run.
const MESSAGES: usize = 10_000;

/// Recorded latency samples per flow.
const SAMPLES: usize = 2_000;

/// Name of the broker's process, whose CPU time the report shows.
const BROKER_PROCESS: &str = "beam.smp";

/// Prefetch count of both consumers: room for two full signature batches.
const PREFETCH: u16 = 128;

fn main() {
    let counts = Counts::from_args(ROUNDS, MESSAGES, SAMPLES);
    runtime().block_on(run(counts));
}

/// The publishing and the consuming service's connections.
struct Connections {
    publisher: Connection,
    consumer: Connection,
}

async fn run(counts: Counts) {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let connections = Connections {
        publisher: connect(&url).await,
        consumer: connect(&url).await,
    };

    let key = SigningKey::generate().unwrap();
    let keys = JwkSet::from_keys(vec![key.public_key().clone()]);
    let signer = Signer::new(service(ISSUER), key);
    let payload = vec![b'x'; PAYLOAD_BYTES];

    let channel = Binding::channel("amqp:/bench-e2e-crypto").unwrap();
    let mut rounds = Vec::with_capacity(counts.rounds);
    for _ in 0..counts.rounds {
        let crypto = CryptoCost::measure(&signer, &keys, &channel, &payload, counts.messages).await;
        let unsigned = throughput_unsigned(&connections, &payload, counts.messages).await;
        let usage = UsageStart::now(BROKER_PROCESS);
        let signed = throughput_signed(&connections, &signer, &keys, &payload, counts.messages).await;
        let signed_usage = usage.per_message(counts.messages);
        rounds.push(Round {
            crypto,
            unsigned,
            signed,
            signed_usage,
        });
    }
    let latency = latency(&connections, &signer, &keys, &payload, counts.samples).await;

    Report {
        transport: "RabbitMQ",
        counts,
        rounds,
        latency,
    }
    .print();
}

/// Connects to `url`, panicking with what to start when the broker is
/// unreachable: a benchmark without its broker must fail, not skip.
async fn connect(url: &str) -> Connection {
    let attempt = tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await;
    // The part after the credentials, so that no password is printed.
    let host = url.rsplit('@').next().unwrap_or(url);
    match attempt {
        Ok(Ok(connection)) => connection,
        Ok(Err(err)) => panic!("cannot connect to RabbitMQ at {host}: {err}; start it with rabbitmq-server -detached"),
        Err(_) => panic!("connecting to RabbitMQ at {host} timed out; start it with rabbitmq-server -detached"),
    }
}

/// Declares a queue that no other run uses and that the broker deletes 2
/// minutes after its last use, so an aborted run leaves nothing behind.
async fn declare_queue(connection: &Connection, flow: &str) -> String {
    let name = format!("bench-e2e-{flow}-{}", unique_suffix());
    let channel = connection.create_channel().await.unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), AMQPValue::LongInt(120_000));
    channel
        .queue_declare(name.as_str().into(), QueueDeclareOptions::default(), arguments)
        .await
        .unwrap();
    name
}

async fn delete_queue(connection: &Connection, queue: &str) {
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

/// Opens a channel with publisher confirms, as the signed publisher has.
async fn confirm_channel(connection: &Connection) -> Channel {
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    channel
}

/// Starts a plain consumer of `queue` with prefetch [`PREFETCH`].
async fn plain_consumer(connection: &Connection, queue: &str) -> Consumer {
    let channel = connection.create_channel().await.unwrap();
    channel.basic_qos(PREFETCH, BasicQosOptions::default()).await.unwrap();
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap()
}

async fn verifying_consumer(connection: &Connection, keys: &JwkSet, queue: &str) -> VerifyingConsumer {
    VerifyingConsumer::builder(verifier(keys), DeadLetter::QueueDeadLetterExchange)
        .prefetch(PREFETCH)
        .consume(connection, queue)
        .await
        .unwrap()
}

async fn signed_publisher(connection: &Connection, signer: &Signer) -> SignedPublisher {
    SignedPublisher::builder(signer.clone(), service(AUDIENCE))
        .build(connection)
        .await
        .unwrap()
}

async fn throughput_unsigned(connections: &Connections, payload: &[u8], count: usize) -> f64 {
    let queue = declare_queue(&connections.publisher, "unsigned").await;
    let mut consumer = plain_consumer(&connections.consumer, &queue).await;
    let channel = confirm_channel(&connections.publisher).await;

    let started = Instant::now();
    let receiver = tokio::spawn(async move {
        for _ in 0..count {
            let delivery = within(consumer.next())
                .await
                .expect("the consumer ended early")
                .unwrap();
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
    });
    let mut confirms = Vec::with_capacity(count);
    for _ in 0..count {
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                payload,
                BasicProperties::default(),
            )
            .await
            .unwrap();
        confirms.push(confirm);
    }
    receiver.await.unwrap();
    let rate = count as f64 / started.elapsed().as_secs_f64();

    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack(), "the broker did not store a message");
    }
    delete_queue(&connections.publisher, &queue).await;
    rate
}

async fn throughput_signed(
    connections: &Connections,
    signer: &Signer,
    keys: &JwkSet,
    payload: &[u8],
    count: usize,
) -> f64 {
    let queue = declare_queue(&connections.publisher, "signed").await;
    let mut consumer = verifying_consumer(&connections.consumer, keys, &queue).await;
    let publisher = signed_publisher(&connections.publisher, signer).await;

    let started = Instant::now();
    let receiver = tokio::spawn(async move {
        for _ in 0..count {
            let delivery = within(consumer.next())
                .await
                .expect("the consumer ended early")
                .unwrap();
            delivery.ack().await.unwrap();
        }
        consumer
    });
    let mut confirms = Vec::with_capacity(count);
    for _ in 0..count {
        let confirm = publisher
            .basic_publish(
                "",
                &queue,
                BasicPublishOptions::default(),
                payload,
                BasicProperties::default(),
            )
            .await
            .unwrap();
        confirms.push(confirm);
    }
    let consumer = receiver.await.unwrap();
    let rate = count as f64 / started.elapsed().as_secs_f64();

    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack(), "the broker did not store a message");
    }
    assert_eq!(consumer.stats().rejected_total(), 0, "a benchmark message was rejected");
    delete_queue(&connections.publisher, &queue).await;
    rate
}

/// Takes paced samples of the unsigned flow, the signed flow and sign +
/// verify alone, in turn.
async fn latency(connections: &Connections, signer: &Signer, keys: &JwkSet, payload: &[u8], count: usize) -> Latency {
    let unsigned_queue = declare_queue(&connections.publisher, "unsigned-latency").await;
    let mut unsigned = plain_consumer(&connections.consumer, &unsigned_queue).await;
    let channel = confirm_channel(&connections.publisher).await;

    let signed_queue = declare_queue(&connections.publisher, "signed-latency").await;
    let mut signed = verifying_consumer(&connections.consumer, keys, &signed_queue).await;
    let publisher = signed_publisher(&connections.publisher, signer).await;

    let crypto_channel = Binding::channel("amqp:/bench-e2e-latency-crypto").unwrap();
    let crypto_verifier = verifier(keys);
    let mut latency = Latency::default();
    for sample in 0..LATENCY_WARMUP + count {
        let record = sample >= LATENCY_WARMUP;

        tokio::time::sleep(LATENCY_GAP).await;
        let started = Instant::now();
        let confirm = channel
            .basic_publish(
                "".into(),
                unsigned_queue.as_str().into(),
                BasicPublishOptions::default(),
                payload,
                BasicProperties::default(),
            )
            .await
            .unwrap();
        let delivery = within(unsigned.next())
            .await
            .expect("the consumer ended early")
            .unwrap();
        if record {
            latency.unsigned.push(started.elapsed().as_secs_f64());
        }
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        assert!(confirm.await.unwrap().is_ack(), "the broker did not store a message");

        tokio::time::sleep(LATENCY_GAP).await;
        let started = Instant::now();
        let confirm = publisher
            .basic_publish(
                "",
                &signed_queue,
                BasicPublishOptions::default(),
                payload,
                BasicProperties::default(),
            )
            .await
            .unwrap();
        let delivery = within(signed.next()).await.expect("the consumer ended early").unwrap();
        if record {
            latency.signed.push(started.elapsed().as_secs_f64());
        }
        delivery.ack().await.unwrap();
        assert!(confirm.await.unwrap().is_ack(), "the broker did not store a message");

        tokio::time::sleep(LATENCY_GAP).await;
        let seconds = sign_and_verify_seconds(signer, &crypto_verifier, &crypto_channel, payload).await;
        if record {
            latency.sign_and_verify.push(seconds);
        }
    }

    delete_queue(&connections.publisher, &unsigned_queue).await;
    delete_queue(&connections.publisher, &signed_queue).await;
    latency
}
