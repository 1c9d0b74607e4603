//! Orders publishes signed messages; two payments instances consume them in
//! a queue group, sharing a replay guard on JetStream KV; a forged publish
//! is dead-lettered.
//!
//! Run against a NATS server with JetStream (`NATS_URL`, default
//! `nats://127.0.0.1:4222`):
//!
//! ```text
//! cargo run --example nats_pubsub --features nats
//! ```

use std::error::Error;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing_subscriber::EnvFilter;
use trustwire::envelope::{DEFAULT_LEEWAY, DEFAULT_MAX_LIFETIME};
use trustwire::jwks::{JwkSet, KeySource, TrustStore};
use trustwire::nats::{
    DEFAULT_REPLAY_BUCKET, DeadLetter, KvReplayGuard, REJECTED_HEADER, SignedPublisher, VerifyingSubscriber,
    recommended_max_age,
};
use trustwire::{ServiceId, Signer, SigningKey, Verifier};

const SUBJECT: &str = "demo.orders.created";
const DEAD_LETTER: &str = "demo.payments.dead_letter";
const ORDERS: usize = 3;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")))
        .init();

    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let client = async_nats::connect(&url)
        .await
        .map_err(|err| format!("cannot connect to NATS at {url}: {err}; start nats-server with -js or set NATS_URL"))?;
    println!("connected to {url}");

    // The orders service and the keys payments trusts for it.
    let orders = ServiceId::new("orders")?;
    let payments = ServiceId::new("payments")?;
    let orders_key = SigningKey::generate()?;
    let orders_keys = JwkSet::from_keys(vec![orders_key.public_key().clone()]);
    let publisher = SignedPublisher::new(
        client.clone(),
        Signer::new(orders.clone(), orders_key),
        payments.clone(),
    );

    // Watch the dead-letter subject, as an operator would.
    let mut dead_letters = client.subscribe(DEAD_LETTER).await?;

    // Two payments instances in one queue group, one replay guard between them.
    let max_age = recommended_max_age(DEFAULT_MAX_LIFETIME, DEFAULT_LEEWAY);
    let (verified_tx, mut verified_rx) = mpsc::unbounded_channel();
    for instance in 1..=2 {
        let connection = async_nats::connect(&url).await?;
        let guard = KvReplayGuard::open(
            &async_nats::jetstream::new(connection.clone()),
            DEFAULT_REPLAY_BUCKET,
            max_age,
        )
        .await?;
        let trust = TrustStore::new().trust(orders.clone(), KeySource::inline(orders_keys.clone()));
        let verifier = Verifier::builder(payments.clone(), trust)
            .replay_guard(Arc::new(guard))
            .build()?;
        let mut subscriber = VerifyingSubscriber::builder(connection, verifier)
            .dead_letter(DeadLetter::subject(DEAD_LETTER))
            .queue_subscribe(SUBJECT, "payments")
            .await?;

        let verified_tx = verified_tx.clone();
        tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                println!(
                    "payments-{instance}: verified {} from {} (kid {}, jti {})",
                    String::from_utf8_lossy(message.payload()),
                    message.issuer(),
                    message.verified.kid,
                    message.claims().jti,
                );
                verified_tx.send(()).ok();
            }
        });
    }
    client.flush().await?;

    for order in 1..=ORDERS {
        let payload = format!(r#"{{"order":{order}}}"#);
        publisher.publish(SUBJECT, Bytes::from(payload)).await?;
    }

    // A forger claims to be orders but signs with a key that payments does not trust.
    let forger = Signer::new(orders.clone(), SigningKey::generate()?);
    let forged = SignedPublisher::new(client.clone(), forger, payments.clone());
    forged
        .publish(SUBJECT, Bytes::from_static(br#"{"order":666,"refund":true}"#))
        .await?;
    client.flush().await?;

    let wait = Duration::from_secs(10);
    for _ in 0..ORDERS {
        tokio::time::timeout(wait, verified_rx.recv())
            .await
            .map_err(|_| "timed out waiting for a verified order")?;
    }
    let copy = tokio::time::timeout(wait, dead_letters.next())
        .await
        .map_err(|_| "timed out waiting for the dead-lettered forgery")?
        .ok_or("the dead-letter subscription ended")?;
    let reason = copy
        .headers
        .as_ref()
        .and_then(|headers| headers.get(REJECTED_HEADER))
        .map_or("(none)", |value| value.as_str());
    println!(
        "dead-lettered on {DEAD_LETTER}: {} ({REJECTED_HEADER}: {reason})",
        String::from_utf8_lossy(&copy.payload)
    );
    Ok(())
}
