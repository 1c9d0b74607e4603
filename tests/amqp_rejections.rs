//! Every rejection a RabbitMQ consumer can see, and where rejected deliveries
//! go: the dead-letter exchange with a `trustwire-rejected` header, the
//! queue's own dead-letter exchange, and what happens when dead-lettering
//! fails or the handler does.
//!
//! Needs RabbitMQ at `AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`);
//! the tests fail when it is unreachable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod amqp_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use amqp_support::{
    Service, Topology, connect, corrupt_signature, header_text, next_verified, properties, publish_raw, publisher,
    raw_channel, reasons_by_id, token_of, verifier,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::Signer as _;
use lapin::ExchangeKind;
use lapin::options::{BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::{AMQPValue, ByteArray, FieldTable, ShortString};
use trustwire::amqp::{
    CONSUMER_HEADER, ConsumeError, DeadLetter, HANDLER_ERROR_HEADER, ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER, REJECTED_HEADER, SignedPublisher, TOKEN_HEADER, VerifyingConsumer,
};
use trustwire::clock::{Clock, FixedClock, SystemClock};
use trustwire::jwks::{KeySource, TrustStore};
use trustwire::replay::MemoryReplayGuard;
use trustwire::{Binding, Policy, ServiceId, Signer, Verifier};

/// Signs `claims` under `header` with `service`'s key, for tokens the Signer
/// would never produce.
fn craft(service: &Service, header: &serde_json::Value, claims: &serde_json::Value) -> String {
    let key = ed25519_dalek::SigningKey::from_bytes(&service.key_seed);
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// A message published without trustwire's publisher: message id, expected
/// reason code, headers, body and routing key.
type RawCase<'a> = (&'a str, &'a str, Vec<(&'a str, AMQPValue)>, &'a [u8], &'a str);

fn token(signer: &Signer, audience: &str, channel: &str, body: &[u8]) -> String {
    signer
        .token(ServiceId::new(audience).unwrap())
        .binding(Binding::channel(channel).unwrap())
        .payload(body)
        .sign()
        .unwrap()
}

fn token_header(token: impl Into<String>) -> (&'static str, AMQPValue) {
    (TOKEN_HEADER, AMQPValue::LongString(token.into().into()))
}

fn signer_at(service: &Service, unix_seconds: i64) -> Signer {
    Signer::builder(service.id.clone(), service.key())
        .clock(Arc::new(FixedClock::new(unix_seconds)))
        .build()
        .unwrap()
}

#[tokio::test]
async fn rejections_dead_lettered_with_reason() {
    let connection = connect("tw-test-rejections").await;
    let topology = Topology::declare(&connection, ExchangeKind::Topic, &["#"]).await;
    let exchange = topology.exchange.clone();
    let channel_of = |routing_key: &str| format!("amqp:{exchange}/{routing_key}");

    let orders = Service::new("orders");
    let inventory = Service::new("inventory");
    let mallory = Service::new("mallory");
    let policy = Policy::deny_all()
        .allow_channel(orders.id.clone(), &format!("amqp:{exchange}/orders.*"))
        .unwrap()
        .allow_channel(inventory.id.clone(), &format!("amqp:{exchange}/orders.*"))
        .unwrap();
    let verifier = Verifier::builder(
        ServiceId::new("billing").unwrap(),
        amqp_support::trust(&[&orders, &inventory]),
    )
    .policy(policy)
    .build()
    .unwrap();
    let mut consumer = VerifyingConsumer::builder(verifier, topology.dead_letter())
        .consume(&connection, &topology.queue)
        .await
        .unwrap();

    let publisher = publisher(&connection, &orders, "billing").await;
    let raw = raw_channel(&connection).await;
    let body = br#"{"order":42}"#.as_slice();
    let routing_key = "orders.created";
    let good_token = token(&orders.signer(), "billing", &channel_of(routing_key), body);
    let now = SystemClock.now();

    // The first valid message, whose exact copy comes back later as a replay.
    let original = properties("original", &[]);
    publisher
        .publish(&exchange, routing_key, BasicPublishOptions::default(), body, original)
        .await
        .unwrap();

    let mut nested = FieldTable::default();
    nested.insert(
        ShortString::from("token"),
        AMQPValue::LongString(good_token.clone().into()),
    );
    let other_signature = token(&orders.signer(), "billing", &channel_of(routing_key), b"other");
    let swapped_signature = format!(
        "{}.{}",
        good_token.rsplit_once('.').unwrap().0,
        other_signature.rsplit_once('.').unwrap().1
    );
    let kid = orders.key().kid().to_owned();
    let claims = serde_json::json!({
        "iss": "orders", "aud": "billing", "iat": now, "exp": now + 60, "jti": "crafted-jti",
        "chn": channel_of(routing_key), "dig": trustwire::envelope::payload_digest(body),
    });
    let mut claims_without_jti = claims.clone();
    claims_without_jti.as_object_mut().unwrap().remove("jti");

    let raw_cases: Vec<RawCase<'_>> = vec![
        ("missing_header", "malformed", vec![], body, routing_key),
        (
            "byte_array",
            "malformed",
            vec![(
                TOKEN_HEADER,
                AMQPValue::ByteArray(ByteArray::from(good_token.as_bytes())),
            )],
            body,
            routing_key,
        ),
        (
            "field_table",
            "malformed",
            vec![(TOKEN_HEADER, AMQPValue::FieldTable(nested))],
            body,
            routing_key,
        ),
        (
            "long_long_int",
            "malformed",
            vec![(TOKEN_HEADER, AMQPValue::LongLongInt(42))],
            body,
            routing_key,
        ),
        (
            "not_utf8",
            "malformed",
            vec![(TOKEN_HEADER, AMQPValue::LongString(vec![0xff, 0xfe, 0x2e].into()))],
            body,
            routing_key,
        ),
        (
            "not_a_token",
            "malformed",
            vec![token_header("not-a-token")],
            body,
            routing_key,
        ),
        (
            "jwe_shaped",
            "wrong_type",
            vec![token_header("a.b.c.d.e")],
            body,
            routing_key,
        ),
        (
            "typ_jwt",
            "wrong_type",
            vec![token_header(craft(
                &orders,
                &serde_json::json!({"alg": "EdDSA", "kid": kid, "typ": "JWT"}),
                &claims,
            ))],
            body,
            routing_key,
        ),
        (
            "alg_hs256",
            "unsupported_alg",
            vec![token_header(craft(
                &orders,
                &serde_json::json!({"alg": "HS256", "kid": kid, "typ": "trustwire+jwt"}),
                &claims,
            ))],
            body,
            routing_key,
        ),
        (
            "jku_header",
            "unsupported_header",
            vec![token_header(craft(
                &orders,
                &serde_json::json!({"alg": "EdDSA", "kid": kid, "typ": "trustwire+jwt", "jku": "https://127.0.0.1/keys"}),
                &claims,
            ))],
            body,
            routing_key,
        ),
        (
            "oversized_token",
            "too_large",
            vec![token_header("a".repeat(9000))],
            body,
            routing_key,
        ),
        (
            "swapped_signature",
            "bad_signature",
            vec![token_header(swapped_signature)],
            body,
            routing_key,
        ),
        (
            "untrusted_key",
            "unknown_key",
            vec![token_header(token(
                &Signer::new(orders.id.clone(), mallory.key()),
                "billing",
                &channel_of(routing_key),
                body,
            ))],
            body,
            routing_key,
        ),
        (
            "other_issuers_key",
            "issuer_mismatch",
            vec![token_header(token(
                &Signer::new(inventory.id.clone(), orders.key()),
                "billing",
                &channel_of(routing_key),
                body,
            ))],
            body,
            routing_key,
        ),
        (
            "other_audience",
            "wrong_audience",
            vec![token_header(token(
                &orders.signer(),
                "shipping",
                &channel_of(routing_key),
                body,
            ))],
            body,
            routing_key,
        ),
        (
            "expired",
            "expired",
            vec![token_header(token(
                &signer_at(&orders, now - 3600),
                "billing",
                &channel_of(routing_key),
                body,
            ))],
            body,
            routing_key,
        ),
        (
            "issued_in_future",
            "not_yet_valid",
            vec![token_header(token(
                &signer_at(&orders, now + 3600),
                "billing",
                &channel_of(routing_key),
                body,
            ))],
            body,
            routing_key,
        ),
        (
            "no_jti",
            "missing_claim",
            vec![token_header(craft(
                &orders,
                &serde_json::json!({"alg": "EdDSA", "kid": kid, "typ": "trustwire+jwt"}),
                &claims_without_jti,
            ))],
            body,
            routing_key,
        ),
        (
            "other_routing_key",
            "binding_mismatch",
            vec![token_header(token(
                &orders.signer(),
                "billing",
                &channel_of("orders.cancelled"),
                body,
            ))],
            body,
            routing_key,
        ),
        (
            "other_exchange",
            "binding_mismatch",
            vec![token_header(token(
                &orders.signer(),
                "billing",
                &format!("amqp:elsewhere/{routing_key}"),
                body,
            ))],
            body,
            routing_key,
        ),
        (
            "changed_body",
            "digest_mismatch",
            vec![token_header(good_token.clone())],
            b"{\"order\":43}",
            routing_key,
        ),
        (
            "policy_denied",
            "not_allowed",
            vec![token_header(token(
                &orders.signer(),
                "billing",
                &channel_of("audit.log"),
                body,
            ))],
            body,
            "audit.log",
        ),
    ];
    for (id, _, headers, payload, key) in &raw_cases {
        let mut all_headers = headers.clone();
        all_headers.push(("case", AMQPValue::LongString((*id).into())));
        publish_raw(&raw, &exchange, key, payload, properties(id, &all_headers)).await;
    }

    // A token whose lifetime is above the verifier's 10 minute maximum.
    let long_lived = SignedPublisher::builder(orders.signer(), ServiceId::new("billing").unwrap())
        .ttl(Duration::from_secs(3600))
        .build(&connection)
        .await
        .unwrap();
    long_lived
        .publish(
            &exchange,
            routing_key,
            BasicPublishOptions::default(),
            body,
            properties("long_lived", &[]),
        )
        .await
        .unwrap();

    // The valid message is handled; then its exact copy is a replay.
    let first = next_verified(&mut consumer).await;
    assert_eq!(first.properties.message_id().as_ref().unwrap().as_str(), "original");
    let copy = first.properties.clone().with_message_id("replay".into());
    let copy_body = first.payload.clone();
    first.ack().await.unwrap();
    publish_raw(&raw, &exchange, routing_key, &copy_body, copy).await;

    // A valid message last: once it arrives, every case before it is handled.
    publisher
        .publish(
            &exchange,
            routing_key,
            BasicPublishOptions::default(),
            body,
            properties("sentinel", &[]),
        )
        .await
        .unwrap();
    let sentinel = next_verified(&mut consumer).await;
    assert_eq!(sentinel.properties.message_id().as_ref().unwrap().as_str(), "sentinel");
    sentinel.ack().await.unwrap();

    let mut expected: BTreeMap<String, String> = raw_cases
        .iter()
        .map(|(id, reason, ..)| ((*id).to_owned(), (*reason).to_owned()))
        .collect();
    expected.insert("long_lived".into(), "lifetime_too_long".into());
    expected.insert("replay".into(), "replayed".into());

    let dead_letters = topology.drain_dead_letters().await;
    let reasons = reasons_by_id(&dead_letters);
    for (id, reason) in &expected {
        assert_eq!(reasons.get(id), Some(reason), "dead-letter reason of case {id}");
    }
    assert_eq!(reasons.len(), expected.len(), "dead-lettered cases: {reasons:?}");

    // Each copy keeps the original body and headers and names where it came from.
    for (id, _, headers, payload, key) in &raw_cases {
        let copy = dead_letters
            .iter()
            .find(|message| message.properties.message_id().as_ref().map(ShortString::as_str) == Some(*id))
            .unwrap();
        assert_eq!(copy.data.as_slice(), *payload, "body of case {id}");
        assert_eq!(
            header_text(&copy.properties, "case").as_deref(),
            Some(*id),
            "case header of {id}"
        );
        assert_eq!(
            header_text(&copy.properties, ORIGINAL_EXCHANGE_HEADER).as_deref(),
            Some(exchange.as_str())
        );
        assert_eq!(
            header_text(&copy.properties, ORIGINAL_ROUTING_KEY_HEADER).as_deref(),
            Some(*key)
        );
        assert_eq!(
            header_text(&copy.properties, CONSUMER_HEADER).as_deref(),
            Some("billing")
        );
        let original_token = headers
            .iter()
            .find(|(name, _)| *name == TOKEN_HEADER)
            .map(|(_, value)| value);
        let copied_token = copy.properties.headers().as_ref().unwrap().inner().get(TOKEN_HEADER);
        assert_eq!(copied_token, original_token, "token header of case {id}");
    }

    let stats = consumer.stats();
    assert_eq!(stats.verified, 2);
    assert_eq!(stats.acked, 2);
    assert_eq!(stats.rejected_total(), expected.len() as u64);
    assert_eq!(stats.dead_lettered, expected.len() as u64);
    assert_eq!(stats.rejected.get("malformed"), Some(&6));
    assert_eq!(stats.requeued, 0);
    assert!(topology.drain_queue().await.is_empty());
    topology.delete().await;
}

#[tokio::test]
async fn slash_exchange_rejected_as_binding_mismatch() {
    let connection = connect("tw-test-slash-exchange").await;
    let topology = Topology::declare(&connection, ExchangeKind::Direct, &[]).await;
    let exchange = format!("{}/ambiguous", topology.exchange);
    let options = ExchangeDeclareOptions {
        auto_delete: true,
        ..ExchangeDeclareOptions::default()
    };
    topology
        .channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Direct,
            options,
            FieldTable::default(),
        )
        .await
        .unwrap();
    topology
        .channel
        .queue_bind(
            topology.queue.as_str().into(),
            exchange.as_str().into(),
            "key".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    // A token for exchange `<name>` and routing key `ambiguous/key` would
    // have the same chn as exchange `<name>/ambiguous` and routing key `key`.
    let orders = Service::new("orders");
    let ambiguous = format!("amqp:{}/ambiguous/key", topology.exchange);
    let forged = token(&orders.signer(), "billing", &ambiguous, b"body");
    let raw = raw_channel(&connection).await;
    publish_raw(
        &raw,
        &exchange,
        "key",
        b"body",
        properties("slash", &[token_header(forged)]),
    )
    .await;

    let mut consumer = VerifyingConsumer::builder(verifier("billing", &[&orders]), topology.dead_letter())
        .consume(&connection, &topology.queue)
        .await
        .unwrap();
    let dead_letter = dead_letter_while_consuming(&mut consumer, &topology).await;
    assert_eq!(
        header_text(&dead_letter.properties, REJECTED_HEADER).as_deref(),
        Some("binding_mismatch")
    );
    assert_eq!(consumer.stats().rejected.get("binding_mismatch"), Some(&1));
    consumer.cancel().await.unwrap();
    assert!(consumer.next().await.is_none());
    topology.delete().await;
}

#[tokio::test]
async fn queue_dead_letter_exchange_used() {
    let connection = connect("tw-test-queue-dlx").await;
    let probe = Topology::declare(&connection, ExchangeKind::Direct, &[]).await;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(probe.dead_letter_exchange.as_str().into()),
    );
    let topology = Topology::declare_with(&connection, ExchangeKind::Direct, &["k"], arguments).await;
    let orders = Service::new("orders");
    let mallory = Service::new("mallory");
    let forger = publisher(&connection, &mallory, "billing").await;

    let mut consumer = VerifyingConsumer::builder(verifier("billing", &[&orders]), DeadLetter::QueueDeadLetterExchange)
        .consume(&connection, &topology.queue)
        .await
        .unwrap();
    forger
        .publish(
            &topology.exchange,
            "k",
            BasicPublishOptions::default(),
            b"forged",
            properties("forged", &[]),
        )
        .await
        .unwrap();

    // RabbitMQ moves the rejected message to the queue's dead-letter
    // exchange: it lands in the probe's dead-letter queue with x-death.
    let dead_letter = dead_letter_while_consuming(&mut consumer, &probe).await;
    assert_eq!(dead_letter.data, b"forged");
    assert_eq!(header_text(&dead_letter.properties, REJECTED_HEADER), None);
    let headers = dead_letter.properties.headers().as_ref().unwrap();
    assert!(headers.contains_key("x-death"), "headers: {headers:?}");
    assert!(headers.contains_key(TOKEN_HEADER));

    let stats = consumer.stats();
    assert_eq!(stats.rejected.get("unknown_key"), Some(&1));
    assert_eq!(stats.dead_lettered, 1);
    consumer.cancel().await.unwrap();
    assert!(consumer.next().await.is_none());
    topology.delete().await;
    probe.delete().await;
}

#[tokio::test]
async fn unroutable_dead_letter_stops_consumer() {
    let connection = connect("tw-test-dlx-unroutable").await;
    let topology = Topology::declare(&connection, ExchangeKind::Direct, &["k"]).await;
    // An exchange with no queue bound: the dead-lettered copy is unroutable.
    let nowhere = format!("{}-nowhere", topology.exchange);
    topology
        .channel
        .exchange_declare(
            nowhere.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let orders = Service::new("orders");
    let raw = raw_channel(&connection).await;
    publish_raw(&raw, &topology.exchange, "k", b"unsigned", properties("unsigned", &[])).await;

    let mut consumer =
        VerifyingConsumer::builder(verifier("billing", &[&orders]), DeadLetter::exchange(nowhere.clone()))
            .consume(&connection, &topology.queue)
            .await
            .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .unwrap();
    let err = outcome.unwrap().unwrap_err();
    assert!(
        matches!(&err, ConsumeError::DeadLetter(detail) if detail.contains("returned")),
        "{err:?}"
    );
    assert!(
        consumer.next().await.is_none(),
        "the consumer stops after a dead-lettering failure"
    );

    // The message was not dropped: it is back in the queue, marked redelivered.
    let requeued = wait_for_message(&topology.channel, &topology.queue).await;
    assert_eq!(requeued.data, b"unsigned");
    assert!(requeued.redelivered);
    assert_eq!(consumer.stats().dead_lettered, 0);

    topology
        .channel
        .exchange_delete(nowhere.as_str().into(), Default::default())
        .await
        .unwrap();
    topology.delete().await;
}

#[tokio::test]
async fn dead_letter_loop_refused() {
    let connection = connect("tw-test-dlx-loop").await;
    let topology = Topology::declare(&connection, ExchangeKind::Fanout, &[""]).await;
    let orders = Service::new("orders");
    let raw = raw_channel(&connection).await;
    publish_raw(&raw, &topology.exchange, "", b"unsigned", properties("unsigned", &[])).await;

    // Dead-lettering into the exchange the message came from would route
    // the copy back to this queue and reject it again, forever.
    let dead_letter = DeadLetter::exchange(topology.exchange.clone());
    let mut consumer = VerifyingConsumer::builder(verifier("billing", &[&orders]), dead_letter)
        .consume(&connection, &topology.queue)
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .unwrap();
    let err = outcome.unwrap().unwrap_err();
    assert!(
        matches!(&err, ConsumeError::DeadLetter(detail) if detail.contains("separate exchange")),
        "{err:?}"
    );
    assert!(consumer.next().await.is_none());

    let requeued = wait_for_message(&topology.channel, &topology.queue).await;
    assert_eq!(requeued.data, b"unsigned");
    assert!(
        topology.drain_queue().await.is_empty(),
        "exactly one copy of the message exists"
    );
    topology.delete().await;
}

#[tokio::test]
async fn failed_handler_requeued_then_dead_lettered() {
    let connection = connect("tw-test-handler-failure").await;
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
            b"poison",
            properties("poison", &[]),
        )
        .await
        .unwrap();

    let first = next_verified(&mut consumer).await;
    assert!(!first.redelivered);
    let jti = first.claims.jti.clone();
    first.fail("database unavailable").await.unwrap();

    // The redelivery verifies again: its jti was forgotten, so it is no replay.
    let second = next_verified(&mut consumer).await;
    assert!(second.redelivered);
    assert_eq!(second.claims.jti, jti);
    second.fail("database unavailable").await.unwrap();

    let dead_letter = wait_for_dead_letter(&topology).await;
    assert_eq!(dead_letter.data, b"poison");
    assert_eq!(
        header_text(&dead_letter.properties, HANDLER_ERROR_HEADER).as_deref(),
        Some("database unavailable")
    );
    assert_eq!(header_text(&dead_letter.properties, REJECTED_HEADER), None);
    assert_eq!(token_of(&dead_letter.properties).split('.').count(), 3);

    let stats = consumer.stats();
    assert_eq!(stats.verified, 2);
    assert_eq!(stats.handler_failures, 2);
    assert_eq!(stats.requeued, 1);
    assert_eq!(stats.dead_lettered, 1);
    assert_eq!(stats.rejected_total(), 0);
    assert!(topology.drain_queue().await.is_empty());
    topology.delete().await;
}

#[tokio::test]
async fn transient_rejection_requeued_once() {
    let connection = connect("tw-test-transient").await;
    let topology = Topology::declare(&connection, ExchangeKind::Direct, &["k"]).await;
    let orders = Service::new("orders");
    let publisher = publisher(&connection, &orders, "billing").await;

    // orders' keys come from a JWKS URL where nothing listens.
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let source = KeySource::remote(&format!("http://127.0.0.1:{closed_port}/jwks.json")).unwrap();
    let trust = TrustStore::new().trust(orders.id.clone(), source);
    let verifier = Verifier::builder(ServiceId::new("billing").unwrap(), trust)
        .build()
        .unwrap();
    let mut consumer = VerifyingConsumer::builder(verifier, topology.dead_letter())
        .consume(&connection, &topology.queue)
        .await
        .unwrap();
    publisher
        .publish(
            &topology.exchange,
            "k",
            BasicPublishOptions::default(),
            b"valid",
            properties("valid", &[]),
        )
        .await
        .unwrap();

    let dead_letter = dead_letter_while_consuming(&mut consumer, &topology).await;
    assert_eq!(
        header_text(&dead_letter.properties, REJECTED_HEADER).as_deref(),
        Some("key_source_unavailable")
    );
    let stats = consumer.stats();
    assert_eq!(stats.rejected.get("key_source_unavailable"), Some(&2), "{stats:?}");
    assert_eq!(stats.requeued, 1);
    assert_eq!(stats.dead_lettered, 1);
    consumer.cancel().await.unwrap();
    assert!(consumer.next().await.is_none());
    topology.delete().await;
}

#[tokio::test]
async fn oversized_body_rejected_too_large() {
    let connection = connect("tw-test-big-body").await;
    let topology = Topology::declare(&connection, ExchangeKind::Direct, &["k"]).await;
    let orders = Service::new("orders");
    let publisher = publisher(&connection, &orders, "billing").await;
    let verifier = Verifier::builder(ServiceId::new("billing").unwrap(), amqp_support::trust(&[&orders]))
        .max_payload_bytes(1024)
        .build()
        .unwrap();
    let mut consumer = VerifyingConsumer::builder(verifier, topology.dead_letter())
        .consume(&connection, &topology.queue)
        .await
        .unwrap();
    let body = vec![b'x'; 4096];
    publisher
        .publish(
            &topology.exchange,
            "k",
            BasicPublishOptions::default(),
            &body,
            properties("big", &[]),
        )
        .await
        .unwrap();

    let dead_letter = dead_letter_while_consuming(&mut consumer, &topology).await;
    assert_eq!(
        header_text(&dead_letter.properties, REJECTED_HEADER).as_deref(),
        Some("too_large")
    );
    assert_eq!(dead_letter.data.len(), 4096);
    consumer.cancel().await.unwrap();
    assert!(consumer.next().await.is_none());
    topology.delete().await;
}

#[tokio::test]
async fn full_replay_guard_requeued_once() {
    let connection = connect("tw-test-guard-full").await;
    let topology = Topology::declare(&connection, ExchangeKind::Direct, &["k"]).await;
    let orders = Service::new("orders");
    let publisher = publisher(&connection, &orders, "billing").await;

    // A guard with room for one token: the second message cannot be recorded.
    let guard = Arc::new(MemoryReplayGuard::with_capacity(1));
    let verifier = Verifier::builder(ServiceId::new("billing").unwrap(), amqp_support::trust(&[&orders]))
        .replay_guard(guard)
        .build()
        .unwrap();
    let mut consumer = VerifyingConsumer::builder(verifier, topology.dead_letter())
        .consume(&connection, &topology.queue)
        .await
        .unwrap();
    for id in ["first", "second"] {
        publisher
            .publish(
                &topology.exchange,
                "k",
                BasicPublishOptions::default(),
                id.as_bytes(),
                properties(id, &[]),
            )
            .await
            .unwrap();
    }

    let first = next_verified(&mut consumer).await;
    assert_eq!(first.payload.as_ref(), b"first");
    first.ack().await.unwrap();
    let dead_letter = dead_letter_while_consuming(&mut consumer, &topology).await;
    assert_eq!(dead_letter.data, b"second");
    assert_eq!(
        header_text(&dead_letter.properties, REJECTED_HEADER).as_deref(),
        Some("replay_guard_unavailable")
    );
    let stats = consumer.stats();
    assert_eq!(stats.rejected.get("replay_guard_unavailable"), Some(&2), "{stats:?}");
    assert_eq!(stats.requeued, 1);
    assert_eq!(stats.dead_lettered, 1);
    consumer.cancel().await.unwrap();
    assert!(consumer.next().await.is_none());
    topology.delete().await;
}

/// Waits up to 10 s for a message in the topology's dead-letter queue.
async fn wait_for_dead_letter(topology: &Topology) -> lapin::message::Delivery {
    wait_for_message(&topology.channel, &topology.dead_letter_queue).await
}

/// Runs the consumer until a message arrives in the topology's dead-letter
/// queue; no delivery may verify meanwhile.
async fn dead_letter_while_consuming(
    consumer: &mut VerifyingConsumer,
    topology: &Topology,
) -> lapin::message::Delivery {
    tokio::select! {
        outcome = consumer.next() => panic!("expected only rejections, the consumer returned {outcome:?}"),
        dead_letter = wait_for_dead_letter(topology) => dead_letter,
    }
}

/// Waits up to 10 s for a message in `queue`, taking it with basic.get.
async fn wait_for_message(channel: &lapin::Channel, queue: &str) -> lapin::message::Delivery {
    for _ in 0..100 {
        if let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            return message.delivery;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no message arrived in {queue} within 10 s");
}

#[tokio::test]
async fn batch_forgery_dead_lettered_alone() {
    let connection = connect("tw-test-batch-forgery").await;
    let topology = Topology::declare(&connection, ExchangeKind::Direct, &["k"]).await;
    let orders = Service::new("orders");
    let publisher = publisher(&connection, &orders, "billing").await;
    let raw = raw_channel(&connection).await;
    let channel = format!("amqp:{}/k", topology.exchange);

    // Nine messages wait in the queue before the consumer starts, so the
    // channel buffers several at once (prefetch 32). The fifth carries a
    // signature that does not verify under the sender's key.
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
        let forged = corrupt_signature(&token(&orders.signer(), "billing", &channel, &body));
        publish_raw(
            &raw,
            &topology.exchange,
            "k",
            &body,
            properties(&id, &[token_header(forged)]),
        )
        .await;
    }

    let mut consumer = VerifyingConsumer::builder(verifier("billing", &[&orders]), topology.dead_letter())
        .consume(&connection, &topology.queue)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut bodies = Vec::new();
    for _ in 0..8 {
        let delivery = next_verified(&mut consumer).await;
        bodies.push(delivery.payload.clone());
        delivery.ack().await.unwrap();
    }
    assert_eq!(
        bodies,
        ["0", "1", "2", "3", "5", "6", "7", "8"].map(|body| body.as_bytes())
    );

    let dead_letter = wait_for_dead_letter(&topology).await;
    assert_eq!(dead_letter.data, b"4");
    assert_eq!(
        header_text(&dead_letter.properties, REJECTED_HEADER).as_deref(),
        Some("bad_signature")
    );

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
