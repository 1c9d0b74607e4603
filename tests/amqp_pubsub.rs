//! Signed publishing and verified consuming against a real RabbitMQ: direct,
//! topic and default exchanges, publisher confirms, the frame size limit and
//! per-publisher token lifetimes.
//!
//! Needs RabbitMQ at `AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`);
//! the tests fail when it is unreachable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod amqp_support;

use std::time::Duration;

use amqp_support::{
    Service, Topology, connect, connect_to, header_text, next_verified, properties, publisher, verifier,
};
use lapin::options::{BasicCancelOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, ShortString};
use lapin::{BasicProperties, ExchangeKind};
use trustwire::amqp::{PublishError, SignedPublisher, TOKEN_HEADER, VerifyingConsumer};
use trustwire::{Reason, ServiceId, Signer, Verifier};

#[tokio::test]
async fn direct_exchange_round_trip() {
    let connection = connect("tw-test-direct").await;
    let topology = Topology::declare(&connection, ExchangeKind::Direct, &["orders.created"]).await;
    let orders = Service::new("orders");
    let publisher = publisher(&connection, &orders, "billing").await;
    let mut consumer = VerifyingConsumer::builder(verifier("billing", &[&orders]), topology.dead_letter())
        .consume(&connection, &topology.queue)
        .await
        .unwrap();

    let sent = properties("order-42", &[("tenant", AMQPValue::LongString("acme".into()))])
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    publisher
        .publish(
            &topology.exchange,
            "orders.created",
            BasicPublishOptions::default(),
            br#"{"order":42}"#,
            sent,
        )
        .await
        .unwrap();

    let delivery = next_verified(&mut consumer).await;
    assert_eq!(delivery.payload.as_ref(), br#"{"order":42}"#);
    assert_eq!(delivery.claims.iss, "orders");
    assert_eq!(delivery.claims.aud, vec!["billing".to_owned()]);
    let expected_chn = format!("amqp:{}/orders.created", topology.exchange);
    assert_eq!(delivery.claims.chn.as_deref(), Some(expected_chn.as_str()));
    assert_eq!(delivery.kid, orders.key().kid());
    assert_eq!(delivery.exchange, topology.exchange);
    assert_eq!(delivery.routing_key, "orders.created");
    assert!(!delivery.redelivered);

    // The caller's properties and headers arrive unchanged beside the token.
    assert_eq!(header_text(&delivery.properties, "tenant").as_deref(), Some("acme"));
    assert_eq!(
        delivery.properties.content_type().as_ref().map(ShortString::as_str),
        Some("application/json")
    );
    assert_eq!(delivery.properties.delivery_mode(), &Some(2));
    assert_eq!(
        delivery.properties.message_id().as_ref().map(ShortString::as_str),
        Some("order-42")
    );
    let token_value = delivery
        .properties
        .headers()
        .as_ref()
        .unwrap()
        .inner()
        .get(TOKEN_HEADER)
        .unwrap();
    assert!(
        matches!(token_value, AMQPValue::LongString(_)),
        "token header is {token_value:?}"
    );

    delivery.ack().await.unwrap();
    let stats = consumer.stats();
    assert_eq!(stats.verified, 1);
    assert_eq!(stats.acked, 1);
    assert_eq!(stats.rejected_total(), 0);
    assert!(
        topology.drain_queue().await.is_empty(),
        "the acknowledged message is gone from the queue"
    );
    assert!(topology.drain_dead_letters().await.is_empty());
    topology.delete().await;
}

#[tokio::test]
async fn topic_exchange_round_trip() {
    let connection = connect("tw-test-topic").await;
    let topology = Topology::declare(&connection, ExchangeKind::Topic, &["orders.*", "audit.#"]).await;
    let orders = Service::new("orders");
    let publisher = publisher(&connection, &orders, "billing").await;
    let consumer = VerifyingConsumer::builder(verifier("billing", &[&orders]), topology.dead_letter())
        .consume(&connection, &topology.queue)
        .await
        .unwrap();

    let routing_keys = ["orders.created", "orders.paid", "audit.eu.orders"];
    for (index, routing_key) in routing_keys.iter().enumerate() {
        let body = format!("message {index}");
        publisher
            .publish(
                &topology.exchange,
                routing_key,
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap();
    }

    // run() hands each message to the handler; cancelling the consumer from
    // its channel ends it once the three are handled.
    let channel = consumer.channel().clone();
    let tag = consumer.tag();
    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
    let runner = tokio::spawn(consumer.run(move |message| {
        let sender = sender.clone();
        async move {
            sender.send(message).unwrap();
            Ok::<(), std::convert::Infallible>(())
        }
    }));

    let mut messages = Vec::new();
    for _ in routing_keys {
        let message = tokio::time::timeout(Duration::from_secs(10), received.recv())
            .await
            .unwrap()
            .unwrap();
        messages.push(message);
    }
    channel
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), runner)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    for (message, routing_key) in messages.iter().zip(routing_keys) {
        assert_eq!(message.routing_key, routing_key);
        let expected_chn = format!("amqp:{}/{routing_key}", topology.exchange);
        assert_eq!(message.claims.chn.as_deref(), Some(expected_chn.as_str()));
        assert_eq!(message.claims.iss, "orders");
    }
    assert!(
        topology.drain_queue().await.is_empty(),
        "run() acknowledged every message"
    );
    assert!(topology.drain_dead_letters().await.is_empty());
    topology.delete().await;
}

#[tokio::test]
async fn default_exchange_round_trip() {
    let connection = connect("tw-test-default").await;
    let topology = Topology::declare(&connection, ExchangeKind::Direct, &[]).await;
    let orders = Service::new("orders");
    let publisher = publisher(&connection, &orders, "billing").await;
    let mut consumer = VerifyingConsumer::builder(verifier("billing", &[&orders]), topology.dead_letter())
        .consume(&connection, &topology.queue)
        .await
        .unwrap();

    publisher
        .publish(
            "",
            &topology.queue,
            BasicPublishOptions::default(),
            b"direct to the queue",
            BasicProperties::default(),
        )
        .await
        .unwrap();

    let delivery = next_verified(&mut consumer).await;
    let expected_chn = format!("amqp:/{}", topology.queue);
    assert_eq!(delivery.claims.chn.as_deref(), Some(expected_chn.as_str()));
    assert_eq!(delivery.exchange, "");
    delivery.ack().await.unwrap();
    topology.delete().await;
}

#[tokio::test]
async fn publisher_confirms_surfaced() {
    let connection = connect("tw-test-confirms").await;
    let topology = Topology::declare(&connection, ExchangeKind::Direct, &["bound"]).await;
    let orders = Service::new("orders");
    let publisher = publisher(&connection, &orders, "billing").await;

    // basic_publish hands back lapin's confirm future.
    let confirm = publisher
        .basic_publish(
            &topology.exchange,
            "bound",
            BasicPublishOptions::default(),
            b"one",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let confirmation = confirm.await.unwrap();
    assert!(confirmation.is_ack());

    // A mandatory message no queue is bound for comes back as an error.
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let err = publisher
        .publish(
            &topology.exchange,
            "unbound",
            mandatory,
            b"two",
            BasicProperties::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::Returned { reply_code: 312, .. }), "{err:?}");

    assert_eq!(topology.drain_queue().await.len(), 1);
    topology.delete().await;
}

#[tokio::test]
async fn oversized_headers_refused_before_publishing() {
    // A small frame_max makes the limit easy to reach.
    let url = url_with_query(&amqp_support::amqp_url(), "frame_max=8192");
    let connection = connect_to(&url, "tw-test-frame-max").await;
    assert_eq!(connection.configuration().frame_max(), 8192);
    let topology = Topology::declare(&connection, ExchangeKind::Direct, &["big"]).await;
    let orders = Service::new("orders");
    let publisher = publisher(&connection, &orders, "billing").await;
    assert_eq!(publisher.frame_max(), 8192);

    let big = properties("big", &[("blob", AMQPValue::LongString("x".repeat(8000).into()))]);
    let err = publisher
        .publish(&topology.exchange, "big", BasicPublishOptions::default(), b"body", big)
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::TooLarge { frame_max: 8192, .. }), "{err:?}");
    assert_eq!(err.reason(), Some(Reason::TooLarge));
    assert_eq!(err.reason().unwrap().code(), "too_large");

    // Nothing reached the broker, so the connection is still open.
    let small = properties("small", &[("blob", AMQPValue::LongString("x".repeat(1000).into()))]);
    publisher
        .publish(
            &topology.exchange,
            "big",
            BasicPublishOptions::default(),
            b"body",
            small,
        )
        .await
        .unwrap();
    let queued = topology.drain_queue().await;
    assert_eq!(queued.len(), 1);
    assert_eq!(
        queued[0].properties.message_id().as_ref().map(ShortString::as_str),
        Some("small")
    );
    topology.delete().await;
}

#[tokio::test]
async fn short_string_header_refused() {
    let connection = connect("tw-test-short-string").await;
    let topology = Topology::declare(&connection, ExchangeKind::Direct, &["k"]).await;
    let orders = Service::new("orders");
    let publisher = publisher(&connection, &orders, "billing").await;

    let short = properties("short", &[("legacy", AMQPValue::ShortString("x".into()))]);
    let err = publisher
        .publish(&topology.exchange, "k", BasicPublishOptions::default(), b"body", short)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PublishError::ShortStringHeader { name } if name == "legacy"),
        "{err:?}"
    );

    // The connection survives because nothing was sent.
    publisher
        .publish(
            &topology.exchange,
            "k",
            BasicPublishOptions::default(),
            b"body",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    assert_eq!(topology.drain_queue().await.len(), 1);
    topology.delete().await;
}

#[tokio::test]
async fn slash_in_exchange_name_refused() {
    let connection = connect("tw-test-slash").await;
    let orders = Service::new("orders");
    let publisher = publisher(&connection, &orders, "billing").await;
    let err = publisher
        .publish(
            "a/b",
            "c",
            BasicPublishOptions::default(),
            b"body",
            BasicProperties::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::InvalidChannel(_)), "{err:?}");
}

#[tokio::test]
async fn long_publisher_lifetime_verifies() {
    let connection = connect("tw-test-lifetime").await;
    let topology = Topology::declare(&connection, ExchangeKind::Direct, &["durable"]).await;
    let orders = Service::new("orders");
    let signer = Signer::builder(orders.id.clone(), orders.key())
        .max_ttl(Duration::from_secs(86_400))
        .build()
        .unwrap();
    let publisher = SignedPublisher::builder(signer, ServiceId::new("billing").unwrap())
        .ttl(Duration::from_secs(6 * 3600))
        .build(&connection)
        .await
        .unwrap();
    let verifier = Verifier::builder(ServiceId::new("billing").unwrap(), amqp_support::trust(&[&orders]))
        .max_lifetime(Duration::from_secs(24 * 3600))
        .build()
        .unwrap();
    let mut consumer = VerifyingConsumer::builder(verifier, topology.dead_letter())
        .consume(&connection, &topology.queue)
        .await
        .unwrap();

    publisher
        .publish(
            &topology.exchange,
            "durable",
            BasicPublishOptions::default(),
            b"slow",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let delivery = next_verified(&mut consumer).await;
    assert_eq!(delivery.claims.exp - delivery.claims.iat, 6 * 3600);
    delivery.ack().await.unwrap();

    // A lifetime above the signer's max_ttl is refused before publishing.
    let capped = SignedPublisher::builder(orders.signer(), ServiceId::new("billing").unwrap())
        .ttl(Duration::from_secs(2 * 3600))
        .build(&connection)
        .await
        .unwrap();
    let err = capped
        .publish(
            &topology.exchange,
            "durable",
            BasicPublishOptions::default(),
            b"slow",
            BasicProperties::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::Sign(_)), "{err:?}");
    topology.delete().await;
}

fn url_with_query(url: &str, query: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{query}")
}
