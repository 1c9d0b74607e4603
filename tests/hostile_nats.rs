//! Oversized token headers on the real NATS server (127.0.0.1:4222, with
//! JetStream). A core subscriber dead-letters a token over the verifier's
//! 8 KiB limit, or over 64 KiB, as `too_large` without parsing it. JetStream
//! stores the first and dead-letters it the same way. It refuses to store a
//! header block over 64 KiB (error 10097 from nats-server 2.9), so that
//! message never reaches a consumer.

#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod nats_fixture;

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use nats_fixture::{connect, header, next_within, service, suffix, verifier};
use trustwire::nats::{DeadLetter, REJECTED_HEADER, TOKEN_HEADER, VerifyingConsumer, VerifyingSubscriber};

const WAIT: Duration = Duration::from_secs(10);

/// Token sizes: one byte over the verifier's 8 KiB limit, and 64 KiB, over
/// the JetStream header limit.
const SIZES: [usize; 2] = [8 * 1024 + 1, 65_536];

fn token_headers(size: usize) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(TOKEN_HEADER, "A".repeat(size).as_str());
    headers
}

#[tokio::test]
async fn oversized_token_on_core_nats() {
    let orders = service("orders");
    let client = connect().await;
    let suffix = suffix();
    let subject = format!("hostile.{suffix}.orders");
    let dead_letter = format!("hostile.{suffix}.dead");
    let mut dead = client.subscribe(dead_letter.clone()).await.unwrap();
    let mut subscriber = VerifyingSubscriber::builder(client.clone(), verifier("payments", &[&orders]))
        .dead_letter(DeadLetter::subject(&dead_letter))
        .subscribe(subject.clone())
        .await
        .unwrap();
    tokio::spawn(async move { while subscriber.next().await.is_some() {} });

    for size in SIZES {
        client
            .publish_with_headers(subject.clone(), token_headers(size), Bytes::from_static(b"big"))
            .await
            .unwrap();
        client.flush().await.unwrap();
        let copy = next_within(&mut dead, WAIT).await.expect("no dead-letter copy arrived");
        assert_eq!(header(&copy, REJECTED_HEADER).as_deref(), Some("too_large"), "{size}");
        assert_eq!(copy.payload.as_ref(), b"big");
    }
}

#[tokio::test]
async fn oversized_token_on_jetstream() {
    let orders = service("orders");
    let client = connect().await;
    let context = jetstream::new(client.clone());
    let suffix = suffix();
    let stream = context
        .create_stream(stream::Config {
            name: format!("TW_HOSTILE_{suffix}"),
            subjects: vec![format!("hostile-js.{suffix}.>")],
            storage: stream::StorageType::Memory,
            max_age: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .unwrap();
    let subject = format!("hostile-js.{suffix}.orders");
    let dead_letter = format!("hostile-dead.{suffix}");
    let mut dead = client.subscribe(dead_letter.clone()).await.unwrap();

    let pull = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("payments".to_owned()),
            ack_wait: Duration::from_secs(1),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut verifying = VerifyingConsumer::builder(&context, verifier("payments", &[&orders]))
        .dead_letter(DeadLetter::subject(&dead_letter))
        .messages(&pull)
        .await
        .unwrap();
    tokio::spawn(async move {
        verifying
            .run(|_message| async { Err::<(), String>("an oversized token reached the handler".to_owned()) })
            .await
    });

    // Over the verifier's limit: stored, then dead-lettered unparsed.
    let ack = context
        .publish_with_headers(subject.clone(), token_headers(SIZES[0]), Bytes::from_static(b"big"))
        .await
        .unwrap()
        .await;
    assert!(ack.is_ok(), "{ack:?}");
    let copy = next_within(&mut dead, WAIT).await.expect("no dead-letter copy arrived");
    assert_eq!(header(&copy, REJECTED_HEADER).as_deref(), Some("too_large"));

    // Over the JetStream header limit: the server refuses to store it
    // (JetStream error 10097), so no consumer ever sees it.
    let ack = context
        .publish_with_headers(subject.clone(), token_headers(SIZES[1]), Bytes::from_static(b"big"))
        .await
        .unwrap()
        .await;
    let error = ack.expect_err("a header over 64 KiB was stored").to_string();
    assert!(error.contains("10097"), "{error}");
    assert!(next_within(&mut dead, Duration::from_secs(2)).await.is_none());
    let _ = context.delete_stream(format!("TW_HOSTILE_{suffix}")).await;
}
