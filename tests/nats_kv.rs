//! The JetStream KV replay guard against the real server: atomic create
//! under a race, redelivery recognition, forget, expiry limits, and two
//! subscriber instances racing on one replayed message.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod nats_fixture;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, Context};
use bytes::Bytes;
use futures_util::future::join_all;
use nats_fixture::{connect, header, next_within, service, suffix, verifier_with};
use tokio::sync::mpsc;
use trustwire::nats::{
    DeadLetter, KvReplayGuard, KvReplayGuardError, REJECTED_HEADER, SignedPublisher, VerifiedMessage,
    VerifyingSubscriber,
};
use trustwire::replay::{ReplayEntry, ReplayGuard, ReplayStatus};
use trustwire::{ServiceId, Verifier};

const WAIT: Duration = Duration::from_secs(5);
const MAX_AGE: Duration = Duration::from_secs(660);

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn entry(jti: &str, delivery_id: Option<&str>) -> ReplayEntry {
    ReplayEntry {
        iss: "orders".into(),
        jti: jti.into(),
        expires_at: now() + 90,
        delivery_id: delivery_id.map(str::to_owned),
    }
}

/// A fresh bucket name and a context on its own connection.
async fn bucket() -> (Context, String) {
    (jetstream::new(connect().await), format!("tw_replay_{}", suffix()))
}

/// A guard on `bucket` over a connection of its own, as another instance would have.
async fn instance(bucket: &str) -> KvReplayGuard {
    KvReplayGuard::open(&jetstream::new(connect().await), bucket, MAX_AGE)
        .await
        .unwrap()
}

#[tokio::test]
async fn racing_guards_accept_once() {
    let (context, bucket) = bucket().await;
    let guards = join_all((0..6).map(|_| instance(&bucket))).await;
    let shared = entry("race", None);

    let outcomes = join_all(guards.iter().map(|guard| guard.check_and_record(&shared))).await;
    let fresh = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, Ok(ReplayStatus::Fresh)))
        .count();
    let replayed = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, Ok(ReplayStatus::Replayed)))
        .count();
    assert_eq!(fresh, 1, "{outcomes:?}");
    assert_eq!(replayed, 5, "{outcomes:?}");

    context.delete_key_value(&bucket).await.unwrap();
}

#[tokio::test]
async fn same_delivery_fresh_other_replayed() {
    let (context, bucket) = bucket().await;
    let guard = instance(&bucket).await;

    assert_eq!(
        guard.check_and_record(&entry("a", Some("S:7"))).await.unwrap(),
        ReplayStatus::Fresh
    );
    assert_eq!(
        guard.check_and_record(&entry("a", Some("S:7"))).await.unwrap(),
        ReplayStatus::Fresh
    );
    assert_eq!(
        guard.check_and_record(&entry("a", Some("S:8"))).await.unwrap(),
        ReplayStatus::Replayed
    );
    assert_eq!(
        guard.check_and_record(&entry("a", None)).await.unwrap(),
        ReplayStatus::Replayed
    );

    assert_eq!(
        guard.check_and_record(&entry("b", None)).await.unwrap(),
        ReplayStatus::Fresh
    );
    assert_eq!(
        guard.check_and_record(&entry("b", None)).await.unwrap(),
        ReplayStatus::Replayed
    );

    context.delete_key_value(&bucket).await.unwrap();
}

#[tokio::test]
async fn forget_allows_redelivery() {
    let (context, bucket) = bucket().await;
    let guard = instance(&bucket).await;
    let other = instance(&bucket).await;

    assert_eq!(
        guard.check_and_record(&entry("f", None)).await.unwrap(),
        ReplayStatus::Fresh
    );
    guard.forget(&entry("f", None)).await.unwrap();
    // Over the delete marker, exactly one instance creates the entry again.
    let outcomes = join_all([
        guard.check_and_record(&entry("f", None)),
        other.check_and_record(&entry("f", None)),
    ])
    .await;
    let fresh = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, Ok(ReplayStatus::Fresh)))
        .count();
    assert_eq!(fresh, 1, "{outcomes:?}");

    context.delete_key_value(&bucket).await.unwrap();
}

#[tokio::test]
async fn entry_outliving_bucket_refused() {
    let (context, bucket) = bucket().await;
    let guard = instance(&bucket).await;
    let mut long = entry("long", None);
    long.expires_at = now() + MAX_AGE.as_secs() as i64 + 60;

    let err = guard.check_and_record(&long).await.unwrap_err();
    assert!(err.to_string().contains("max_age"), "{err}");

    context.delete_key_value(&bucket).await.unwrap();
}

#[tokio::test]
async fn short_bucket_max_age_refused() {
    let (context, bucket) = bucket().await;
    KvReplayGuard::open(&context, &bucket, Duration::from_secs(60))
        .await
        .unwrap();

    let err = KvReplayGuard::open(&context, &bucket, MAX_AGE).await.unwrap_err();
    assert!(
        matches!(
            err,
            KvReplayGuardError::MaxAgeTooShort {
                found_s: 60,
                wanted_s: 660,
                ..
            }
        ),
        "{err:?}"
    );

    context.delete_key_value(&bucket).await.unwrap();
}

/// A verifying subscriber with its own connection and its own guard
/// instance on `bucket`, driven in a task.
async fn subscriber_instance(
    orders: &nats_fixture::Service,
    bucket: &str,
    subject: &str,
    group: Option<&str>,
    dead_letter: &str,
) -> mpsc::UnboundedReceiver<VerifiedMessage> {
    let guard = instance(bucket).await;
    let verifier: Verifier = verifier_with("payments", &[orders], |builder| builder.replay_guard(Arc::new(guard)));
    let builder = VerifyingSubscriber::builder(connect().await, verifier).dead_letter(DeadLetter::subject(dead_letter));
    let mut subscriber = match group {
        Some(group) => builder.queue_subscribe(subject.to_owned(), group).await.unwrap(),
        None => builder.subscribe(subject.to_owned()).await.unwrap(),
    };
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = subscriber.next().await {
            sender.send(message).ok();
        }
    });
    receiver
}

#[tokio::test]
async fn two_instances_race_on_one_message() {
    let orders = service("orders");
    let (context, bucket) = bucket().await;
    let sfx = suffix();
    let subject = format!("kv.{sfx}.orders");
    let dead_letter = format!("kv.{sfx}.dead");
    let client = connect().await;
    let mut dead = client.subscribe(dead_letter.clone()).await.unwrap();

    // Both instances receive every message (no queue group), so both verify
    // the same token at the same moment.
    let mut first = subscriber_instance(&orders, &bucket, &subject, None, &dead_letter).await;
    let mut second = subscriber_instance(&orders, &bucket, &subject, None, &dead_letter).await;
    client.flush().await.unwrap();

    let publisher = SignedPublisher::new(
        client.clone(),
        orders.signer.clone(),
        ServiceId::new("payments").unwrap(),
    );
    for index in 0..10 {
        publisher
            .publish(subject.clone(), Bytes::from(format!("{index}")))
            .await
            .unwrap();
    }

    let mut accepted = 0;
    let mut rejected = 0;
    while accepted + rejected < 20 {
        tokio::select! {
            Some(_) = first.recv() => accepted += 1,
            Some(_) = second.recv() => accepted += 1,
            Some(copy) = async { next_within(&mut dead, WAIT).await } => {
                assert_eq!(header(&copy, REJECTED_HEADER).as_deref(), Some("replayed"));
                rejected += 1;
            }
            _ = tokio::time::sleep(WAIT) => panic!("stalled at {accepted} accepted and {rejected} rejected"),
        }
    }
    assert_eq!(accepted, 10);
    assert_eq!(rejected, 10);

    context.delete_key_value(&bucket).await.unwrap();
}

#[tokio::test]
async fn queue_group_rejects_replayed_copy() {
    let orders = service("orders");
    let (context, bucket) = bucket().await;
    let sfx = suffix();
    let subject = format!("kv.{sfx}.orders");
    let dead_letter = format!("kv.{sfx}.dead");
    let client = connect().await;
    let mut capture = client.subscribe(subject.clone()).await.unwrap();
    let mut dead = client.subscribe(dead_letter.clone()).await.unwrap();

    let mut first = subscriber_instance(&orders, &bucket, &subject, Some("payments"), &dead_letter).await;
    let mut second = subscriber_instance(&orders, &bucket, &subject, Some("payments"), &dead_letter).await;
    client.flush().await.unwrap();

    let publisher = SignedPublisher::new(
        client.clone(),
        orders.signer.clone(),
        ServiceId::new("payments").unwrap(),
    );
    publisher
        .publish(subject.clone(), Bytes::from_static(b"pay once"))
        .await
        .unwrap();
    let captured = next_within(&mut capture, WAIT).await.unwrap();
    // Copies of the same message: whichever instance gets each, one is accepted.
    for _ in 0..3 {
        client
            .publish_with_headers(
                subject.clone(),
                captured.headers.clone().unwrap(),
                captured.payload.clone(),
            )
            .await
            .unwrap();
    }

    let mut accepted = 0;
    for _ in 0..3 {
        let copy = next_within(&mut dead, WAIT)
            .await
            .expect("a copy was not dead-lettered");
        assert_eq!(header(&copy, REJECTED_HEADER).as_deref(), Some("replayed"));
    }
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(300), async {
        tokio::select! {
            Some(message) = first.recv() => Some(message),
            Some(message) = second.recv() => Some(message),
        }
    })
    .await
    {
        assert_eq!(message.payload().as_ref(), b"pay once");
        accepted += 1;
    }
    assert_eq!(accepted, 1);

    context.delete_key_value(&bucket).await.unwrap();
}
