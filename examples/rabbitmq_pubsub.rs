//! Orders publishes signed events to a RabbitMQ topic exchange. Billing and
//! shipping each consume them from their own queue and verify every one. A
//! forged publish and an unsigned one end up in the dead-letter queue with
//! their reason codes.
//!
//! Run against RabbitMQ (`AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`):
//!
//! ```text
//! cargo run --example rabbitmq_pubsub --features amqp
//! ```

use std::error::Error;
use std::io::IsTerminal;

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tracing_subscriber::EnvFilter;
use trustwire::amqp::{DeadLetter, REJECTED_HEADER, SignedPublisher, VerifyingConsumer};
use trustwire::jwks::{JwkSet, KeySource, TrustStore};
use trustwire::{Audience, ServiceId, Signer, SigningKey, Verifier};

const EXCHANGE: &str = "trustwire.demo.events";
const DEAD_LETTER_EXCHANGE: &str = "trustwire.demo.rejected";
const DEAD_LETTER_QUEUE: &str = "trustwire.demo.rejected";
const ORDERS: usize = 2;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")))
        .init();

    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .map_err(|err| {
            format!("cannot connect to RabbitMQ: {err}; start it with `rabbitmq-server -detached` or set AMQP_URL")
        })?;
    println!("connected to RabbitMQ");
    let setup = connection.create_channel().await?;
    declare_topology(&setup).await?;

    // Three services, each with its own key. Billing and shipping trust
    // orders' public keys (in production, fetched from its JWKS URL).
    let orders = ServiceId::new("orders")?;
    let orders_key = SigningKey::generate()?;
    let orders_keys = JwkSet::from_keys(vec![orders_key.public_key().clone()]);
    let audience =
        Audience::many(vec![ServiceId::new("billing")?, ServiceId::new("shipping")?]).ok_or("the audience is empty")?;
    let publisher = SignedPublisher::builder(Signer::new(orders.clone(), orders_key), audience)
        .build(&connection)
        .await?;

    let mut consumers = Vec::new();
    for name in ["billing", "shipping"] {
        let trust = TrustStore::new().trust(orders.clone(), KeySource::inline(orders_keys.clone()));
        let verifier = Verifier::builder(ServiceId::new(name)?, trust).build()?;
        let consumer = VerifyingConsumer::builder(verifier, DeadLetter::exchange(DEAD_LETTER_EXCHANGE))
            .consume(&connection, &queue_of(name))
            .await?;
        consumers.push((name, consumer));
    }

    // Orders publishes signed events.
    for number in 1..=ORDERS {
        let body = format!(r#"{{"order":{number}}}"#);
        let properties = BasicProperties::default().with_content_type("application/json".into());
        publisher
            .publish(
                EXCHANGE,
                "orders.created",
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties,
            )
            .await?;
        println!("orders published {body}");
    }

    // Mallory signs with a key of its own while claiming to be orders, and
    // someone else publishes with no token at all.
    let forger = Signer::new(orders.clone(), SigningKey::generate()?);
    let forged = SignedPublisher::builder(forger, ServiceId::new("billing")?)
        .build(&connection)
        .await?;
    forged
        .publish(
            EXCHANGE,
            "orders.created",
            BasicPublishOptions::default(),
            br#"{"order":999,"refund":true}"#,
            BasicProperties::default(),
        )
        .await?;
    let raw = connection.create_channel().await?;
    raw.basic_publish(
        EXCHANGE.into(),
        "orders.created".into(),
        BasicPublishOptions::default(),
        br#"{"order":1000}"#,
        BasicProperties::default(),
    )
    .await?
    .await?;
    println!("a forged and an unsigned message were published");

    // Each service receives only orders' genuine events.
    for (name, consumer) in &mut consumers {
        for _ in 0..ORDERS {
            let delivery = consumer.next().await.ok_or("the consumer stopped")??;
            println!(
                "{name} accepted {} from {} (kid {}…)",
                String::from_utf8_lossy(&delivery.payload),
                delivery.claims.iss,
                delivery.kid.chars().take(8).collect::<String>()
            );
            delivery.ack().await?;
        }
    }

    // The rejected messages wait in the dead-letter queue, two per service.
    let mut rejected = Vec::new();
    while rejected.len() < 2 * consumers.len() {
        match setup
            .basic_get(DEAD_LETTER_QUEUE.into(), BasicGetOptions::default())
            .await?
        {
            Some(message) => {
                message.delivery.ack(BasicAckOptions::default()).await?;
                rejected.push(message.delivery);
            }
            None => {
                // The consumers dead-letter in the background of next().
                for (_, consumer) in &mut consumers {
                    let _ = tokio::time::timeout(std::time::Duration::from_millis(200), consumer.next()).await;
                }
            }
        }
    }
    for message in &rejected {
        println!(
            "dead letter for {}: {} ({})",
            header_text(&message.properties, "trustwire-consumer"),
            header_text(&message.properties, REJECTED_HEADER),
            String::from_utf8_lossy(&message.data)
        );
    }
    for (name, consumer) in &consumers {
        let stats = consumer.stats();
        println!(
            "{name}: {} verified, {} rejected, {} dead-lettered",
            stats.verified,
            stats.rejected_total(),
            stats.dead_lettered
        );
    }

    for (_, consumer) in &consumers {
        consumer.cancel().await?;
    }
    connection.close(200, "done".into()).await?;
    Ok(())
}

fn queue_of(service: &str) -> String {
    format!("trustwire.demo.{service}")
}

/// Declares the topic exchange with a queue per service, and the dead-letter
/// exchange with its queue. The queues are exclusive to this connection, so
/// they go away when it closes, and the exchanges go with their last queue.
async fn declare_topology(channel: &Channel) -> Result<(), lapin::Error> {
    let exchange_options = ExchangeDeclareOptions {
        auto_delete: true,
        ..ExchangeDeclareOptions::default()
    };
    let queue_options = QueueDeclareOptions {
        exclusive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Topic,
            exchange_options,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            DEAD_LETTER_EXCHANGE.into(),
            ExchangeKind::Fanout,
            exchange_options,
            FieldTable::default(),
        )
        .await?;

    for service in ["billing", "shipping"] {
        let queue = queue_of(service);
        channel
            .queue_declare(queue.as_str().into(), queue_options, FieldTable::default())
            .await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                EXCHANGE.into(),
                "orders.*".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    channel
        .queue_declare(DEAD_LETTER_QUEUE.into(), queue_options, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            DEAD_LETTER_QUEUE.into(),
            DEAD_LETTER_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

fn header_text(properties: &BasicProperties, name: &str) -> String {
    let value = properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(name));
    match value {
        Some(AMQPValue::LongString(text)) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
