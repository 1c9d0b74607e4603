//! Delivery guarantees against a real RabbitMQ: a redelivery of a message
//! that was never acknowledged verifies, a copy of one that was is
//! `replayed`, and cancelling a consumer or losing its connection loses no
//! valid message.
//!
//! Needs RabbitMQ at `AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`);
//! the connection-loss test also runs `rabbitmqctl`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod amqp_support;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use amqp_support::{
    Proxy, Service, Topology, close_connection_on_server, connect, connect_to, next_verified, properties, publish_raw,
    publisher, raw_channel, reasons_by_id, suffix, verifier,
};
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{Connection, ExchangeKind};
use trustwire::Verifier;
use trustwire::amqp::{ConsumeError, SignedPublisher, VerifiedDelivery, VerifyingConsumer};

const MESSAGES: usize = 20;

fn message_id(delivery: &VerifiedDelivery) -> String {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map(ShortString::to_string)
        .unwrap()
}

async fn publish_numbered(publisher: &SignedPublisher, topology: &Topology, count: usize) {
    for number in 0..count {
        let id = format!("m{number:02}");
        publisher
            .publish(
                &topology.exchange,
                "k",
                BasicPublishOptions::default(),
                id.as_bytes(),
                properties(&id, &[]),
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn unacked_redelivery_not_replayed() {
    let connection = connect("tw-test-redelivery").await;
    let topology = Topology::declare(&connection, ExchangeKind::Direct, &["k"]).await;
    let orders = Service::new("orders");
    let publisher = publisher(&connection, &orders, "billing").await;
    let verifier = verifier("billing", &[&orders]);
    let mut first = VerifyingConsumer::builder(verifier.clone(), topology.dead_letter())
        .consume(&connection, &topology.queue)
        .await
        .unwrap();
    publisher
        .publish(
            &topology.exchange,
            "k",
            BasicPublishOptions::default(),
            b"once",
            properties("once", &[]),
        )
        .await
        .unwrap();

    let delivery = next_verified(&mut first).await;
    assert!(!delivery.redelivered);
    let jti = delivery.claims.jti.clone();

    // The channel closes before the ack: RabbitMQ requeues the message, and
    // the failed ack makes the verifier forget the jti.
    first.channel().close(200, "closed by the test".into()).await.unwrap();
    let err = delivery.ack().await.unwrap_err();
    assert!(
        matches!(err, ConsumeError::ChannelClosed | ConsumeError::Amqp(_)),
        "{err:?}"
    );

    let mut second = VerifyingConsumer::builder(verifier, topology.dead_letter())
        .consume(&connection, &topology.queue)
        .await
        .unwrap();
    let redelivery = next_verified(&mut second).await;
    assert!(redelivery.redelivered);
    assert_eq!(redelivery.claims.jti, jti);
    redelivery.ack().await.unwrap();

    assert_eq!(second.stats().rejected_total(), 0);
    assert!(topology.drain_dead_letters().await.is_empty());
    assert!(topology.drain_queue().await.is_empty());
    topology.delete().await;
}

#[tokio::test]
async fn dropped_delivery_requeued_not_replayed() {
    let connection = connect("tw-test-dropped").await;
    let topology = Topology::declare(&connection, ExchangeKind::Direct, &["k"]).await;
    let orders = Service::new("orders");
    let publisher = publisher(&connection, &orders, "billing").await;
    let mut consumer = VerifyingConsumer::builder(verifier("billing", &[&orders]), topology.dead_letter())
        .consume(&connection, &topology.queue)
        .await
        .unwrap();
    publisher
        .publish(
            &topology.exchange,
            "k",
            BasicPublishOptions::default(),
            b"dropped",
            properties("dropped", &[]),
        )
        .await
        .unwrap();

    let delivery = next_verified(&mut consumer).await;
    let jti = delivery.claims.jti.clone();
    drop(delivery);

    let redelivery = next_verified(&mut consumer).await;
    assert!(redelivery.redelivered);
    assert_eq!(redelivery.claims.jti, jti);
    redelivery.ack().await.unwrap();
    let stats = consumer.stats();
    assert_eq!(stats.verified, 2);
    assert_eq!(stats.acked, 1);
    assert_eq!(stats.rejected_total(), 0);
    topology.delete().await;
}

#[tokio::test]
async fn copies_of_accepted_message_replayed() {
    let connection = connect("tw-test-replay").await;
    let topology = Topology::declare(&connection, ExchangeKind::Direct, &["k"]).await;
    let orders = Service::new("orders");
    let publisher = publisher(&connection, &orders, "billing").await;
    let raw = raw_channel(&connection).await;
    let mut consumer = VerifyingConsumer::builder(verifier("billing", &[&orders]), topology.dead_letter())
        .consume(&connection, &topology.queue)
        .await
        .unwrap();
    publisher
        .publish(
            &topology.exchange,
            "k",
            BasicPublishOptions::default(),
            b"pay 10",
            properties("original", &[]),
        )
        .await
        .unwrap();

    // A copy published while the original is still unacknowledged is a
    // replay: only the broker's own redelivery is exempt.
    let original = next_verified(&mut consumer).await;
    let copy_properties = original.properties.clone();
    let copy_body = original.payload.clone();
    publish_raw(
        &raw,
        &topology.exchange,
        "k",
        &copy_body,
        copy_properties.clone().with_message_id("in-flight".into()),
    )
    .await;
    publisher
        .publish(
            &topology.exchange,
            "k",
            BasicPublishOptions::default(),
            b"next",
            properties("next", &[]),
        )
        .await
        .unwrap();
    let next = next_verified(&mut consumer).await;
    assert_eq!(message_id(&next), "next");
    next.ack().await.unwrap();

    // A copy published after the original was acknowledged is a replay too.
    original.ack().await.unwrap();
    publish_raw(
        &raw,
        &topology.exchange,
        "k",
        &copy_body,
        copy_properties.with_message_id("after-ack".into()),
    )
    .await;
    publisher
        .publish(
            &topology.exchange,
            "k",
            BasicPublishOptions::default(),
            b"last",
            properties("last", &[]),
        )
        .await
        .unwrap();
    let last = next_verified(&mut consumer).await;
    assert_eq!(message_id(&last), "last");
    last.ack().await.unwrap();

    let reasons = reasons_by_id(&topology.drain_dead_letters().await);
    let expected: BTreeMap<String, String> = [("in-flight", "replayed"), ("after-ack", "replayed")]
        .map(|(id, reason)| (id.to_owned(), reason.to_owned()))
        .into();
    assert_eq!(reasons, expected);
    assert_eq!(consumer.stats().rejected.get("replayed"), Some(&2));
    topology.delete().await;
}

#[tokio::test]
async fn cancelled_consumer_loses_nothing() {
    let connection = connect("tw-test-cancel").await;
    let topology = Topology::declare(&connection, ExchangeKind::Direct, &["k"]).await;
    let orders = Service::new("orders");
    let publisher = publisher(&connection, &orders, "billing").await;
    let verifier = verifier("billing", &[&orders]);
    publish_numbered(&publisher, &topology, MESSAGES).await;

    let mut handled = Vec::new();
    let mut first = VerifyingConsumer::builder(verifier.clone(), topology.dead_letter())
        .prefetch(5)
        .consume(&connection, &topology.queue)
        .await
        .unwrap();
    for _ in 0..3 {
        let delivery = next_verified(&mut first).await;
        handled.push(message_id(&delivery));
        delivery.ack().await.unwrap();
    }

    // After the cancel, the prefetched deliveries still come out, then None.
    first.cancel().await.unwrap();
    while let Some(outcome) = tokio::time::timeout(Duration::from_secs(10), first.next())
        .await
        .unwrap()
    {
        let delivery = outcome.unwrap();
        handled.push(message_id(&delivery));
        delivery.ack().await.unwrap();
    }
    assert!(
        handled.len() < MESSAGES,
        "the cancelled consumer took only its prefetch: {handled:?}"
    );

    let mut second = VerifyingConsumer::builder(verifier, topology.dead_letter())
        .consume(&connection, &topology.queue)
        .await
        .unwrap();
    while handled.len() < MESSAGES {
        let delivery = next_verified(&mut second).await;
        handled.push(message_id(&delivery));
        delivery.ack().await.unwrap();
    }

    let expected: Vec<String> = (0..MESSAGES).map(|number| format!("m{number:02}")).collect();
    handled.sort();
    assert_eq!(handled, expected, "every message handled exactly once");
    assert!(topology.drain_dead_letters().await.is_empty());
    assert!(topology.drain_queue().await.is_empty());
    topology.delete().await;
}

#[tokio::test]
async fn server_closed_connection_loses_nothing() {
    let name = format!("tw-test-server-close-{}", suffix());
    let target = name.clone();
    let close = async move {
        // rabbitmqctl blocks, so it runs off the runtime, which keeps lapin
        // reading while the broker closes the connection.
        tokio::task::spawn_blocking(move || close_connection_on_server(&target))
            .await
            .unwrap();
    };
    connection_loss_loses_nothing(amqp_support::amqp_url(), name, close).await;
}

#[tokio::test]
async fn cut_tcp_connection_loses_nothing() {
    let proxy = Proxy::start().await;
    let name = format!("tw-test-tcp-cut-{}", suffix());
    connection_loss_loses_nothing(proxy.url.clone(), name, async { proxy.cut() }).await;
}

/// Publishes numbered messages, consumes a few through a connection to
/// `consumer_url`, breaks that connection with `break_connection` while one
/// delivery is unacknowledged, then reconnects and checks that every
/// message was handled.
///
/// An acknowledgement sent shortly before or as the connection broke may
/// never reach the broker, even when lapin's `ack` returned `Ok` (seen for
/// the last ack before the cut). That message comes back, and the consumer
/// rejects it as `replayed` because its handler already ran: such duplicates
/// of acknowledged messages are the only dead letters allowed.
async fn connection_loss_loses_nothing(consumer_url: String, name: String, break_connection: impl Future<Output = ()>) {
    let control = connect("tw-test-loss-control").await;
    let topology = Topology::declare(&control, ExchangeKind::Direct, &["k"]).await;
    let orders = Service::new("orders");
    let publisher = publisher(&control, &orders, "billing").await;
    let verifier = verifier("billing", &[&orders]);
    publish_numbered(&publisher, &topology, MESSAGES).await;

    let connection = connect_to(&consumer_url, &name).await;
    let mut consumer = start_consumer(&verifier, &topology, &connection).await;
    let mut handled = BTreeMap::new();
    let mut acked_before_break = Vec::new();
    for _ in 0..5 {
        let delivery = next_verified(&mut consumer).await;
        let id = message_id(&delivery);
        handled.insert(id.clone(), delivery.redelivered);
        delivery.ack().await.unwrap();
        acked_before_break.push(id);
    }
    let in_flight = next_verified(&mut consumer).await;
    let in_flight_id = message_id(&in_flight);

    break_connection.await;

    // The consumer reports the failure, possibly after deliveries it still
    // had buffered. A failed ack forgets the jti, so the redelivery verifies.
    let mut acked_after_break = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap()
        {
            Some(Ok(delivery)) => {
                let id = message_id(&delivery);
                if delivery.ack().await.is_ok() {
                    handled.insert(id.clone(), false);
                    acked_after_break.push(id);
                }
            }
            Some(Err(ConsumeError::Amqp(_))) | None => break,
            Some(Err(other)) => panic!("unexpected consumer error: {other:?}"),
        }
    }
    if in_flight.ack().await.is_ok() {
        handled.insert(in_flight_id.clone(), false);
        acked_after_break.push(in_flight_id.clone());
    }

    let connection = connect("tw-test-loss-reconnect").await;
    let mut consumer = start_consumer(&verifier, &topology, &connection).await;
    while handled.len() < MESSAGES {
        let delivery = next_verified(&mut consumer).await;
        let id = message_id(&delivery);
        assert!(!handled.contains_key(&id), "{id} handled twice");
        handled.insert(id, delivery.redelivered);
        delivery.ack().await.unwrap();
    }

    let expected: Vec<String> = (0..MESSAGES).map(|number| format!("m{number:02}")).collect();
    assert_eq!(
        handled.keys().cloned().collect::<Vec<_>>(),
        expected,
        "every message handled"
    );
    if !acked_after_break.contains(&in_flight_id) {
        assert_eq!(
            handled.get(&in_flight_id),
            Some(&true),
            "the in-flight message came back as a redelivery"
        );
    }

    // Give the consumer a moment to take any duplicates of lost acks.
    let _ = tokio::time::timeout(Duration::from_millis(500), consumer.next()).await;
    for (id, reason) in reasons_by_id(&topology.drain_dead_letters().await) {
        assert_eq!(reason, "replayed", "dead letter {id}");
        assert!(
            acked_before_break.contains(&id) || acked_after_break.contains(&id),
            "{id} was dead-lettered but its ack had not been sent"
        );
    }
    let stats = consumer.stats();
    assert_eq!(
        stats.rejected_total(),
        stats.rejected.get("replayed").copied().unwrap_or(0)
    );
    assert!(topology.drain_queue().await.is_empty());
    topology.delete().await;
}

async fn start_consumer(verifier: &Verifier, topology: &Topology, connection: &Connection) -> VerifyingConsumer {
    VerifyingConsumer::builder(verifier.clone(), topology.dead_letter())
        .prefetch(4)
        .consume(connection, &topology.queue)
        .await
        .unwrap()
}
