//! Sealed messages over a real RabbitMQ: a round trip, what a plain queue
//! bound beside the consumer's sees, and the rejections of tampered,
//! misaddressed and mismatched messages, each dead-lettered with its reason
//! code. A dead-lettered copy never holds the plaintext.
//!
//! Needs RabbitMQ at `AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`);
//! the tests fail when it is unreachable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod amqp_support;

use std::collections::BTreeMap;
use std::time::Duration;

use amqp_support::{
    Service, Topology, connect, corrupt_signature, drain, header_text, next_verified, properties, publish_raw,
    publisher, queue_arguments, raw_channel, reasons_by_id, token_of, verifier,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ExchangeKind};
use trustwire::amqp::{HANDLER_ERROR_HEADER, SEALED_HEADER, SealedPublisher, TOKEN_HEADER, VerifyingConsumer};
use trustwire::jwks::{JwkSet, KeySource};
use trustwire::keys::EncryptionKey;
use trustwire::seal::{Opener, Recipient, RecipientDirectory, Sealer};
use trustwire::{Audience, Binding, ServiceId};

const PAYLOAD: &[u8] = br#"{"order":42,"card":"4111 1111 1111 1111"}"#;
const SECRET: &[u8] = b"4111 1111 1111 1111";

fn id(name: &str) -> ServiceId {
    ServiceId::new(name).unwrap()
}

/// A receiving service's encryption key, kept as its seed so the test can
/// make as many copies as it needs.
struct Receiver {
    name: &'static str,
    seed: [u8; 32],
}

impl Receiver {
    fn new(name: &'static str) -> Self {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).unwrap();
        Self { name, seed }
    }

    fn key(&self) -> EncryptionKey {
        EncryptionKey::from_x25519_bytes(&self.seed).unwrap()
    }

    fn key_source(&self) -> KeySource {
        KeySource::inline(JwkSet::default().with_encryption_keys(vec![self.key().public_key().clone()]))
    }

    /// An opener for this service that trusts `senders`.
    fn opener(&self, senders: &[&Service]) -> Opener {
        Opener::new(verifier(self.name, senders), vec![self.key()]).unwrap()
    }

    fn recipient(&self) -> Recipient {
        Recipient::new(id(self.name), self.key().public_key().clone())
    }
}

async fn sealed_publisher(
    connection: &Connection,
    sender: &Service,
    audience: &str,
    directory: RecipientDirectory,
) -> SealedPublisher {
    SealedPublisher::builder(Sealer::new(sender.signer()), id(audience), directory)
        .build(connection)
        .await
        .unwrap()
}

fn directory_of(receiver: &Receiver) -> RecipientDirectory {
    RecipientDirectory::new().add(id(receiver.name), receiver.key_source())
}

/// Declares a queue bound to the topology's exchange with `binding_key`,
/// beside the consumer's, to see what travels through the broker.
async fn wire_queue(topology: &Topology, binding_key: &str) -> String {
    let name = format!("{}-wire", topology.queue);
    topology
        .channel
        .queue_declare(name.as_str().into(), QueueDeclareOptions::default(), queue_arguments())
        .await
        .unwrap();
    topology
        .channel
        .queue_bind(
            name.as_str().into(),
            topology.exchange.as_str().into(),
            binding_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    name
}

async fn delete_queue(topology: &Topology, name: &str) {
    let _ = topology
        .channel
        .queue_delete(name.into(), QueueDeleteOptions::default())
        .await;
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
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

/// `properties` with a new message id and `token` in the token header.
fn with_token(properties: &BasicProperties, message_id: &str, token: &str) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(ShortString::from(TOKEN_HEADER), AMQPValue::LongString(token.into()));
    properties
        .clone()
        .with_message_id(message_id.into())
        .with_headers(headers)
}

/// Runs the consumer until `count` messages are in the topology's
/// dead-letter queue; no delivery may verify meanwhile.
async fn dead_letters_while_consuming(
    consumer: &mut VerifyingConsumer,
    topology: &Topology,
    count: usize,
) -> Vec<lapin::message::Delivery> {
    let collect = async {
        let mut copies = Vec::new();
        for _ in 0..100 {
            while let Some(message) = topology
                .channel
                .basic_get(
                    topology.dead_letter_queue.as_str().into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap()
            {
                copies.push(message.delivery);
            }
            if copies.len() >= count {
                return copies;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{} of {count} dead-letter copies arrived within 10 s", copies.len());
    };
    tokio::select! {
        outcome = consumer.next() => panic!("expected only rejections, the consumer returned {outcome:?}"),
        copies = collect => copies,
    }
}

#[tokio::test]
async fn round_trip_hides_plaintext() {
    let connection = connect("tw-test-sealed-round-trip").await;
    let topology = Topology::declare(&connection, ExchangeKind::Direct, &["k"]).await;
    let wire = wire_queue(&topology, "k").await;
    let orders = Service::new("orders");
    let billing = Receiver::new("billing");

    let publisher = sealed_publisher(&connection, &orders, "billing", directory_of(&billing)).await;
    let mut consumer = VerifyingConsumer::opening(billing.opener(&[&orders]), topology.dead_letter())
        .consume(&connection, &topology.queue)
        .await
        .unwrap();
    publisher
        .publish(
            &topology.exchange,
            "k",
            BasicPublishOptions::default(),
            PAYLOAD,
            properties("m-1", &[("app", AMQPValue::LongString("kept".into()))]),
        )
        .await
        .unwrap();

    let delivery = next_verified(&mut consumer).await;
    assert_eq!(&delivery.payload[..], PAYLOAD);
    assert_eq!(delivery.claims.iss, "orders");
    assert_eq!(delivery.claims.aud, ["billing"]);
    assert_eq!(
        delivery.claims.chn.as_deref(),
        Some(format!("amqp:{}/k", topology.exchange).as_str())
    );
    assert_eq!(header_text(&delivery.properties, "app").as_deref(), Some("kept"));
    delivery.ack().await.unwrap();

    let seen = drain(&topology.channel, &wire).await;
    assert_eq!(seen.len(), 1);
    let on_wire = &seen[0];
    assert!(
        !contains(&on_wire.data, SECRET),
        "the plaintext went through the broker"
    );
    assert!(
        !contains(&on_wire.data, b"order"),
        "part of the plaintext went through the broker"
    );
    assert_eq!(on_wire.data.split(|&byte| byte == b'.').count(), 5);
    assert_eq!(header_text(&on_wire.properties, SEALED_HEADER).as_deref(), Some("1"));
    assert_eq!(token_of(&on_wire.properties).split('.').count(), 3);
    assert_eq!(
        on_wire.properties.message_id().as_ref().map(ShortString::as_str),
        Some("m-1")
    );

    let stats = consumer.stats();
    assert_eq!(stats.verified, 1);
    assert_eq!(stats.acked, 1);
    assert_eq!(stats.rejected_total(), 0);
    assert!(topology.drain_dead_letters().await.is_empty());
    delete_queue(&topology, &wire).await;
    topology.delete().await;
}

#[tokio::test]
async fn fan_out_opens_for_each_recipient() {
    let connection = connect("tw-test-sealed-fan-out").await;
    let topology = Topology::declare(&connection, ExchangeKind::Fanout, &[""]).await;
    let second_queue = wire_queue(&topology, "").await;
    let orders = Service::new("orders");
    let billing = Receiver::new("billing");
    let shipping = Receiver::new("shipping");

    let directory = directory_of(&billing).add(id("shipping"), shipping.key_source());
    let audience = Audience::many(vec![id("billing"), id("shipping")]).unwrap();
    let publisher = SealedPublisher::builder(Sealer::new(orders.signer()), audience, directory)
        .build(&connection)
        .await
        .unwrap();
    let mut at_billing = VerifyingConsumer::opening(billing.opener(&[&orders]), topology.dead_letter())
        .consume(&connection, &topology.queue)
        .await
        .unwrap();
    let mut at_shipping = VerifyingConsumer::opening(shipping.opener(&[&orders]), topology.dead_letter())
        .consume(&connection, &second_queue)
        .await
        .unwrap();
    publisher
        .publish(
            &topology.exchange,
            "any",
            BasicPublishOptions::default(),
            PAYLOAD,
            properties("m-1", &[]),
        )
        .await
        .unwrap();

    for consumer in [&mut at_billing, &mut at_shipping] {
        let delivery = next_verified(consumer).await;
        assert_eq!(&delivery.payload[..], PAYLOAD);
        assert_eq!(delivery.claims.aud, ["billing", "shipping"]);
        delivery.ack().await.unwrap();
    }
    delete_queue(&topology, &second_queue).await;
    topology.delete().await;
}

#[tokio::test]
async fn tampered_ciphertext_dead_lettered() {
    let connection = connect("tw-test-sealed-tampered").await;
    let topology = Topology::declare(&connection, ExchangeKind::Direct, &["k"]).await;
    let orders = Service::new("orders");
    let billing = Receiver::new("billing");

    // Capture a sealed message and take it off the queue before anything
    // opens it, so its jti is unused.
    sealed_publisher(&connection, &orders, "billing", directory_of(&billing))
        .await
        .publish(
            &topology.exchange,
            "k",
            BasicPublishOptions::default(),
            PAYLOAD,
            properties("original", &[]),
        )
        .await
        .unwrap();
    let captured = wait_for_one(&topology).await;
    let tampered = tamper_ciphertext(&captured.data);
    let token = token_of(&captured.properties);

    let raw = raw_channel(&connection).await;
    // On the wire: the token's dig no longer matches the JWE.
    publish_raw(
        &raw,
        &topology.exchange,
        "k",
        &tampered,
        with_token(&captured.properties, "wire", &token),
    )
    .await;
    // By a trusted sender that signs the tampered JWE: the token verifies,
    // and AES-GCM catches the change.
    let resigned = orders
        .signer()
        .token(id("billing"))
        .binding(Binding::channel(format!("amqp:{}/k", topology.exchange)).unwrap())
        .payload(&tampered)
        .jti(&jti_of(&token))
        .sign()
        .unwrap();
    publish_raw(
        &raw,
        &topology.exchange,
        "k",
        &tampered,
        with_token(&captured.properties, "resigned", &resigned),
    )
    .await;

    let mut consumer = VerifyingConsumer::opening(billing.opener(&[&orders]), topology.dead_letter())
        .consume(&connection, &topology.queue)
        .await
        .unwrap();
    let copies = dead_letters_while_consuming(&mut consumer, &topology, 2).await;
    let reasons = reasons_by_id(&copies);
    assert_eq!(reasons["wire"], "digest_mismatch");
    assert_eq!(reasons["resigned"], "decryption_failed");
    for copy in &copies {
        assert_eq!(copy.data, tampered);
        assert_eq!(header_text(&copy.properties, SEALED_HEADER).as_deref(), Some("1"));
    }

    let stats = consumer.stats();
    assert_eq!(stats.rejected.get("digest_mismatch"), Some(&1));
    assert_eq!(stats.rejected.get("decryption_failed"), Some(&1));
    assert_eq!(stats.dead_lettered, 2);
    assert_eq!(stats.verified, 0);
    topology.delete().await;
}

/// Takes the one message in the topology's queue, waiting up to 10 s.
async fn wait_for_one(topology: &Topology) -> lapin::message::Delivery {
    for _ in 0..100 {
        let mut messages = topology.drain_queue().await;
        if let Some(message) = messages.pop() {
            assert!(messages.is_empty(), "more than one message in the queue");
            return message;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no message arrived in {} within 10 s", topology.queue);
}

#[tokio::test]
async fn sealed_to_other_service_rejected() {
    let connection = connect("tw-test-sealed-other-service").await;
    let topology = Topology::declare(&connection, ExchangeKind::Direct, &["k"]).await;
    let orders = Service::new("orders");
    let billing = Receiver::new("billing");
    let shipping = Receiver::new("shipping");

    // Addressed to billing, but the directory holds shipping's key under
    // billing's name: the token verifies and no JWE entry is for billing.
    let misdirected = RecipientDirectory::new().add(id("billing"), shipping.key_source());
    sealed_publisher(&connection, &orders, "billing", misdirected)
        .await
        .publish(
            &topology.exchange,
            "k",
            BasicPublishOptions::default(),
            PAYLOAD,
            properties("misdirected", &[]),
        )
        .await
        .unwrap();
    // Sealed to shipping: the token is not for billing at all.
    sealed_publisher(&connection, &orders, "shipping", directory_of(&shipping))
        .await
        .publish(
            &topology.exchange,
            "k",
            BasicPublishOptions::default(),
            PAYLOAD,
            properties("for-shipping", &[]),
        )
        .await
        .unwrap();

    let mut consumer = VerifyingConsumer::opening(billing.opener(&[&orders]), topology.dead_letter())
        .consume(&connection, &topology.queue)
        .await
        .unwrap();
    let copies = dead_letters_while_consuming(&mut consumer, &topology, 2).await;
    let reasons = reasons_by_id(&copies);
    assert_eq!(reasons["misdirected"], "not_a_recipient");
    assert_eq!(reasons["for-shipping"], "wrong_audience");
    for copy in &copies {
        assert!(!contains(&copy.data, SECRET), "a dead-letter copy holds the plaintext");
    }
    topology.delete().await;
}

#[tokio::test]
async fn plain_and_sealed_mismatch_wrong_type() {
    let connection = connect("tw-test-sealed-mismatch").await;
    let topology = Topology::declare(&connection, ExchangeKind::Direct, &["sealed", "plain"]).await;
    let orders = Service::new("orders");
    let billing = Receiver::new("billing");

    // A signed, not sealed, message to a consumer of sealed messages.
    publisher(&connection, &orders, "billing")
        .await
        .publish(
            &topology.exchange,
            "sealed",
            BasicPublishOptions::default(),
            PAYLOAD,
            properties("plain-to-opening", &[]),
        )
        .await
        .unwrap();
    let mut opening = VerifyingConsumer::opening(billing.opener(&[&orders]), topology.dead_letter())
        .consume(&connection, &topology.queue)
        .await
        .unwrap();
    let copies = dead_letters_while_consuming(&mut opening, &topology, 1).await;
    assert_eq!(reasons_by_id(&copies)["plain-to-opening"], "wrong_type");
    opening.cancel().await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), opening.next()).await;
    assert!(matches!(ended, Ok(None)), "the cancelled consumer did not end");

    // A sealed message to a plain consumer: its token would verify, so only
    // the marker keeps the JWE from reaching the handler as the body.
    sealed_publisher(&connection, &orders, "billing", directory_of(&billing))
        .await
        .publish(
            &topology.exchange,
            "plain",
            BasicPublishOptions::default(),
            PAYLOAD,
            properties("sealed-to-plain", &[]),
        )
        .await
        .unwrap();
    let mut plain = VerifyingConsumer::builder(verifier("billing", &[&orders]), topology.dead_letter())
        .consume(&connection, &topology.queue)
        .await
        .unwrap();
    let copies = dead_letters_while_consuming(&mut plain, &topology, 1).await;
    assert_eq!(reasons_by_id(&copies)["sealed-to-plain"], "wrong_type");
    assert!(
        !contains(&copies[0].data, SECRET),
        "the dead-letter copy holds the plaintext"
    );
    assert_eq!(plain.stats().rejected.get("wrong_type"), Some(&1));
    topology.delete().await;
}

#[tokio::test]
async fn failed_handler_dead_letters_the_jwe() {
    let connection = connect("tw-test-sealed-handler-failure").await;
    let topology = Topology::declare(&connection, ExchangeKind::Direct, &["k"]).await;
    let wire = wire_queue(&topology, "k").await;
    let orders = Service::new("orders");
    let billing = Receiver::new("billing");

    let mut consumer = VerifyingConsumer::opening(billing.opener(&[&orders]), topology.dead_letter())
        .consume(&connection, &topology.queue)
        .await
        .unwrap();
    sealed_publisher(&connection, &orders, "billing", directory_of(&billing))
        .await
        .publish(
            &topology.exchange,
            "k",
            BasicPublishOptions::default(),
            PAYLOAD,
            properties("poison", &[]),
        )
        .await
        .unwrap();

    let first = next_verified(&mut consumer).await;
    assert_eq!(&first.payload[..], PAYLOAD);
    first.fail("database unavailable").await.unwrap();
    // The redelivery opens again: its jti was forgotten, so it is no replay.
    let second = next_verified(&mut consumer).await;
    assert!(second.redelivered);
    assert_eq!(&second.payload[..], PAYLOAD);
    second.fail("database unavailable").await.unwrap();

    let copies = topology_dead_letters(&topology, 1).await;
    let copy = &copies[0];
    assert_eq!(
        header_text(&copy.properties, HANDLER_ERROR_HEADER).as_deref(),
        Some("database unavailable")
    );
    assert!(
        !contains(&copy.data, SECRET),
        "the dead-letter copy holds the plaintext"
    );
    let sent = drain(&topology.channel, &wire).await;
    assert_eq!(
        copy.data, sent[0].data,
        "the dead-letter copy is not the JWE that was sent"
    );
    assert_eq!(header_text(&copy.properties, SEALED_HEADER).as_deref(), Some("1"));
    delete_queue(&topology, &wire).await;
    topology.delete().await;
}

#[tokio::test]
async fn batch_forgery_dead_lettered_alone() {
    let connection = connect("tw-test-sealed-batch-forgery").await;
    let topology = Topology::declare(&connection, ExchangeKind::Direct, &["k"]).await;
    let orders = Service::new("orders");
    let billing = Receiver::new("billing");
    let publisher = sealed_publisher(&connection, &orders, "billing", directory_of(&billing)).await;
    let raw = raw_channel(&connection).await;
    let channel = Binding::channel(format!("amqp:{}/k", topology.exchange)).unwrap();

    // Nine messages wait in the queue before the consumer starts, so the
    // channel buffers several at once (prefetch 32). The fifth is sealed by
    // orders, but its token carries a signature that does not verify under
    // orders' key.
    let mut forged_jwe = Vec::new();
    for index in 0..9u8 {
        let id = format!("m{index}");
        let body = [b'0' + index];
        if index != 4 {
            publisher
                .publish(
                    &topology.exchange,
                    "k",
                    BasicPublishOptions::default(),
                    &body,
                    properties(&id, &[]),
                )
                .await
                .unwrap();
            continue;
        }
        let sealed = Sealer::new(orders.signer())
            .seal(&[billing.recipient()], channel.clone(), &body)
            .unwrap();
        let headers = [
            (
                TOKEN_HEADER,
                AMQPValue::LongString(corrupt_signature(&sealed.token).into()),
            ),
            (SEALED_HEADER, AMQPValue::LongString("1".into())),
        ];
        publish_raw(&raw, &topology.exchange, "k", &sealed.jwe, properties(&id, &headers)).await;
        forged_jwe = sealed.jwe;
    }

    let mut consumer = VerifyingConsumer::opening(billing.opener(&[&orders]), topology.dead_letter())
        .consume(&connection, &topology.queue)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut bodies = Vec::new();
    for _ in 0..8 {
        let delivery = next_verified(&mut consumer).await;
        assert_eq!(delivery.claims.iss, "orders");
        bodies.push(delivery.payload.clone());
        delivery.ack().await.unwrap();
    }
    assert_eq!(
        bodies,
        ["0", "1", "2", "3", "5", "6", "7", "8"].map(|body| body.as_bytes())
    );

    let copies = topology_dead_letters(&topology, 1).await;
    assert_eq!(copies.len(), 1, "more than the forged message was dead-lettered");
    assert_eq!(
        reasons_by_id(&copies),
        BTreeMap::from([("m4".to_owned(), "bad_signature".to_owned())])
    );
    assert_eq!(copies[0].data, forged_jwe);
    assert_eq!(header_text(&copies[0].properties, SEALED_HEADER).as_deref(), Some("1"));

    let stats = consumer.stats();
    assert_eq!(stats.verified, 8);
    assert_eq!(stats.acked, 8);
    assert_eq!(stats.rejected, BTreeMap::from([("bad_signature", 1)]));
    assert_eq!(stats.dead_lettered, 1);
    assert_eq!(stats.requeued, 0);
    assert!(topology.drain_dead_letters().await.is_empty());
    assert!(topology.drain_queue().await.is_empty());
    topology.delete().await;
}

/// Waits up to 10 s for `count` messages in the topology's dead-letter queue.
async fn topology_dead_letters(topology: &Topology, count: usize) -> Vec<lapin::message::Delivery> {
    let mut copies = Vec::new();
    for _ in 0..100 {
        copies.extend(topology.drain_dead_letters().await);
        if copies.len() >= count {
            return copies;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} of {count} dead-letter copies arrived within 10 s", copies.len());
}
