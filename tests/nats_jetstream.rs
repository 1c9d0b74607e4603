//! JetStream against the real server: signed publish with its ack, the
//! verifying pull consumer's ack/nak/term behaviour, redelivery versus
//! replay, and judging token time at storage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod nats_fixture;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{self, PullConsumer};
use async_nats::jetstream::stream::{self, Stream};
use async_nats::jetstream::{self, Context};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use nats_fixture::{
    Service, connect, corrupt_signature, header, next_within, service, service_with, suffix, verifier, verifier_with,
};
use tokio::sync::mpsc;
use trustwire::nats::{
    DeadLetter, JetStreamPublishError, KvReplayGuard, MAX_JETSTREAM_HEADER_BYTES, ORIGINAL_SEQUENCE_HEADER,
    ORIGINAL_STREAM_HEADER, ORIGINAL_SUBJECT_HEADER, REJECTED_HEADER, SignedJetStream, VerifiedMessage,
    VerifyingConsumer,
};
use trustwire::{Reason, ServiceId, Verifier};

const WAIT: Duration = Duration::from_secs(5);

/// A memory stream on `js.<suffix>.>` and a dead-letter subject outside it.
struct Setup {
    context: Context,
    stream: Stream,
    subject: String,
    dead_letter: String,
    suffix: String,
}

async fn setup() -> Setup {
    let client = connect().await;
    let context = jetstream::new(client);
    let suffix = suffix();
    let stream = context
        .create_stream(stream::Config {
            name: format!("TW_{suffix}"),
            subjects: vec![format!("js.{suffix}.>")],
            storage: stream::StorageType::Memory,
            max_age: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .unwrap();
    Setup {
        context,
        stream,
        subject: format!("js.{suffix}.orders"),
        dead_letter: format!("dead.{suffix}"),
        suffix,
    }
}

impl Setup {
    /// Deletes the test's streams; a failed test leaves them for the
    /// server's memory limits, as their messages age out after 10 minutes.
    async fn cleanup(&self) {
        for name in [format!("TW_{}", self.suffix), format!("TW_DLQ_{}", self.suffix)] {
            let _ = self.context.delete_stream(name).await;
        }
    }

    async fn consumer(&self, name: &str) -> PullConsumer {
        self.stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(name.to_owned()),
                ack_wait: Duration::from_secs(1),
                ..Default::default()
            })
            .await
            .unwrap()
    }

    fn publisher(&self, sender: &Service) -> SignedJetStream {
        SignedJetStream::new(
            self.context.clone(),
            sender.signer.clone(),
            ServiceId::new("payments").unwrap(),
        )
    }

    /// Starts a verifying consumer whose handler forwards each message and
    /// fails the calls listed in `fail_calls` (1-based).
    async fn run(
        &self,
        consumer: &PullConsumer,
        verifier: Verifier,
        fail_calls: &'static [usize],
    ) -> mpsc::UnboundedReceiver<VerifiedMessage> {
        let mut verifying = VerifyingConsumer::builder(&self.context, verifier)
            .dead_letter(DeadLetter::subject(&self.dead_letter))
            .messages(consumer)
            .await
            .unwrap();
        let (sender, receiver) = mpsc::unbounded_channel();
        let calls = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            verifying
                .run(move |message| {
                    let sender = sender.clone();
                    let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    async move {
                        sender.send(message).ok();
                        if fail_calls.contains(&call) {
                            return Err(format!("handler failure on call {call}"));
                        }
                        Ok(())
                    }
                })
                .await
                .unwrap();
        });
        receiver
    }
}

/// Waits until the consumer has nothing pending or unacknowledged.
async fn assert_settled(consumer: &mut PullConsumer) -> consumer::Info {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let info = consumer.info().await.unwrap().clone();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return info;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "consumer never settled: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn recv(receiver: &mut mpsc::UnboundedReceiver<VerifiedMessage>) -> VerifiedMessage {
    tokio::time::timeout(WAIT, receiver.recv())
        .await
        .expect("no verified message arrived")
        .unwrap()
}

#[tokio::test]
async fn publish_ack_surfaced() {
    let orders = service("orders");
    let setup = setup().await;
    let publisher = setup.publisher(&orders);

    let first = publisher
        .publish(setup.subject.clone(), Bytes::from_static(b"1"))
        .await
        .unwrap();
    let second = publisher
        .publish(setup.subject.clone(), Bytes::from_static(b"2"))
        .await
        .unwrap();
    assert_eq!(first.stream, format!("TW_{}", setup.suffix));
    assert_eq!(first.sequence, 1);
    assert_eq!(second.sequence, 2);
    assert!(!second.duplicate);

    let err = publisher
        .publish(format!("nostream.{}", setup.suffix), Bytes::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, trustwire::nats::JetStreamPublishError::Publish(_)),
        "{err:?}"
    );
    setup.cleanup().await;
}

#[tokio::test]
async fn handled_messages_acked() {
    let orders = service("orders");
    let setup = setup().await;
    let mut consumer = setup.consumer("payments").await;
    let mut verified = setup.run(&consumer, verifier("payments", &[&orders]), &[]).await;

    let publisher = setup.publisher(&orders);
    for index in 0..3 {
        publisher
            .publish(setup.subject.clone(), Bytes::from(format!("{index}")))
            .await
            .unwrap();
    }
    for index in 0..3 {
        let message = recv(&mut verified).await;
        assert_eq!(message.issuer(), "orders");
        assert_eq!(message.payload().as_ref(), format!("{index}").as_bytes());
    }

    let info = assert_settled(&mut consumer).await;
    assert_eq!(info.delivered.stream_sequence, 3);
    assert_eq!(info.num_redelivered, 0);
    setup.cleanup().await;
}

#[tokio::test]
async fn forged_message_dead_lettered_then_terminated() {
    let orders = service("orders");
    let impostor = service("orders");
    let setup = setup().await;
    let dlq_subject = format!("dlq.{}", setup.suffix);
    let mut dlq_stream = setup
        .context
        .create_stream(stream::Config {
            name: format!("TW_DLQ_{}", setup.suffix),
            subjects: vec![dlq_subject.clone()],
            storage: stream::StorageType::Memory,
            max_age: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut dead = setup.context.client().subscribe(dlq_subject.clone()).await.unwrap();

    let mut consumer = setup.consumer("payments").await;
    let mut verifying = VerifyingConsumer::builder(&setup.context, verifier("payments", &[&orders]))
        .dead_letter(DeadLetter::stream(&dlq_subject))
        .messages(&consumer)
        .await
        .unwrap();
    let (sender, mut handled) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        verifying
            .run(move |message| {
                let sender = sender.clone();
                async move {
                    sender.send(message).ok();
                    Ok::<(), String>(())
                }
            })
            .await
    });

    let ack = setup
        .publisher(&impostor)
        .publish(setup.subject.clone(), Bytes::from_static(b"forged"))
        .await
        .unwrap();

    let copy = next_within(&mut dead, WAIT).await.expect("no dead-letter copy");
    assert_eq!(header(&copy, REJECTED_HEADER).as_deref(), Some("unknown_key"));
    assert_eq!(header(&copy, ORIGINAL_SUBJECT_HEADER), Some(setup.subject.clone()));
    assert_eq!(header(&copy, ORIGINAL_STREAM_HEADER), Some(ack.stream.clone()));
    assert_eq!(header(&copy, ORIGINAL_SEQUENCE_HEADER), Some(ack.sequence.to_string()));
    assert_eq!(copy.payload.as_ref(), b"forged");

    // Terminated, not redelivered: after two ack waits nothing came back.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(handled.try_recv().is_err(), "a forged message reached the handler");
    assert!(
        next_within(&mut dead, Duration::from_millis(200)).await.is_none(),
        "the message was dead-lettered twice"
    );
    let info = assert_settled(&mut consumer).await;
    assert_eq!(info.num_redelivered, 0);
    assert_eq!(dlq_stream.info().await.unwrap().state.messages, 1);
    setup.cleanup().await;
}

#[tokio::test]
async fn failed_handler_redelivered_not_replayed() {
    let orders = service("orders");
    let setup = setup().await;
    let mut dead = setup
        .context
        .client()
        .subscribe(setup.dead_letter.clone())
        .await
        .unwrap();
    let mut consumer = setup.consumer("payments").await;
    let mut verified = setup.run(&consumer, verifier("payments", &[&orders]), &[1]).await;

    setup
        .publisher(&orders)
        .publish(setup.subject.clone(), Bytes::from_static(b"retry me"))
        .await
        .unwrap();

    let first = recv(&mut verified).await;
    let second = recv(&mut verified).await;
    assert_eq!(first.claims().jti, second.claims().jti);
    assert_eq!(second.payload().as_ref(), b"retry me");
    assert!(
        next_within(&mut dead, Duration::from_millis(300)).await.is_none(),
        "a redelivery was dead-lettered"
    );
    let info = assert_settled(&mut consumer).await;
    assert_eq!(info.num_redelivered, 0);
    setup.cleanup().await;
}

#[tokio::test]
async fn unacked_delivery_redelivered_not_replayed() {
    let orders = service("orders");
    let setup = setup().await;
    let mut consumer = setup.consumer("payments").await;
    let mut verifying = VerifyingConsumer::builder(&setup.context, verifier("payments", &[&orders]))
        .dead_letter(DeadLetter::subject(&setup.dead_letter))
        .messages(&consumer)
        .await
        .unwrap();

    setup
        .publisher(&orders)
        .publish(setup.subject.clone(), Bytes::from_static(b"lost ack"))
        .await
        .unwrap();

    let first = tokio::time::timeout(WAIT, verifying.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.stream_sequence(), Some(1));
    drop(first);

    // ack_wait is 1 s: the server redelivers the same stored message.
    let again = tokio::time::timeout(WAIT, verifying.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(again.stream_sequence(), Some(1));
    assert_eq!(again.message.info().unwrap().delivered, 2);
    again.ack().await.unwrap();
    assert_settled(&mut consumer).await;
    setup.cleanup().await;
}

#[tokio::test]
async fn copy_of_acked_message_replayed() {
    let orders = service("orders");
    let setup = setup().await;
    let mut dead = setup
        .context
        .client()
        .subscribe(setup.dead_letter.clone())
        .await
        .unwrap();
    let mut capture = setup.context.client().subscribe(setup.subject.clone()).await.unwrap();
    let mut consumer = setup.consumer("payments").await;
    let mut verified = setup.run(&consumer, verifier("payments", &[&orders]), &[]).await;

    setup
        .publisher(&orders)
        .publish(setup.subject.clone(), Bytes::from_static(b"pay once"))
        .await
        .unwrap();
    recv(&mut verified).await;
    let captured = next_within(&mut capture, WAIT).await.unwrap();
    assert_settled(&mut consumer).await;

    // The same headers and payload, stored again as a new message.
    let ack = setup
        .context
        .publish_with_headers(
            setup.subject.clone(),
            captured.headers.clone().unwrap(),
            captured.payload.clone(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.sequence, 2);

    let copy = next_within(&mut dead, WAIT).await.expect("no dead-letter copy");
    assert_eq!(header(&copy, REJECTED_HEADER).as_deref(), Some("replayed"));
    assert_eq!(header(&copy, ORIGINAL_SEQUENCE_HEADER).as_deref(), Some("2"));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), verified.recv())
            .await
            .is_err(),
        "the copy reached the handler"
    );
    assert_settled(&mut consumer).await;
    setup.cleanup().await;
}

#[tokio::test]
async fn storage_time_judging_is_opt_in() {
    let orders = service_with("orders", |builder| builder.ttl(Duration::from_secs(1)));
    let setup = setup().await;
    let mut dead = setup
        .context
        .client()
        .subscribe(setup.dead_letter.clone())
        .await
        .unwrap();
    let short_leeway = |builder: trustwire::envelope::VerifierBuilder| builder.leeway(Duration::from_secs(1));

    setup
        .publisher(&orders)
        .publish(setup.subject.clone(), Bytes::from_static(b"backlog"))
        .await
        .unwrap();
    // The token expires 1 s after signing, plus 1 s of leeway.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let at_storage = setup.consumer("at_storage").await;
    let mut verifying = VerifyingConsumer::builder(&setup.context, verifier_with("payments", &[&orders], short_leeway))
        .dead_letter(DeadLetter::subject(&setup.dead_letter))
        .judge_time_at_storage(true)
        .messages(&at_storage)
        .await
        .unwrap();
    let delivery = tokio::time::timeout(WAIT, verifying.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(delivery.payload().as_ref(), b"backlog");
    delivery.ack().await.unwrap();

    let now = setup.consumer("now").await;
    let _rejecting = setup
        .run(&now, verifier_with("payments", &[&orders], short_leeway), &[])
        .await;
    let copy = next_within(&mut dead, WAIT).await.expect("no dead-letter copy");
    assert_eq!(header(&copy, REJECTED_HEADER).as_deref(), Some("expired"));
    setup.cleanup().await;
}

#[tokio::test]
async fn transient_rejection_retried_not_dead_lettered() {
    let orders = service("orders");
    let setup = setup().await;
    let bucket = format!("tw_transient_{}", setup.suffix);
    let guard = KvReplayGuard::open(&setup.context, &bucket, Duration::from_secs(660))
        .await
        .unwrap();
    let verifier = verifier_with("payments", &[&orders], |builder| builder.replay_guard(Arc::new(guard)));

    // Without its bucket the guard cannot record anything.
    setup.context.delete_key_value(&bucket).await.unwrap();

    let mut dead = setup
        .context
        .client()
        .subscribe(setup.dead_letter.clone())
        .await
        .unwrap();
    let mut consumer = setup.consumer("payments").await;
    let mut verifying = VerifyingConsumer::builder(&setup.context, verifier)
        .dead_letter(DeadLetter::subject(&setup.dead_letter))
        .transient_retry_delay(Duration::from_millis(500))
        .messages(&consumer)
        .await
        .unwrap();
    let (sender, mut verified) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        verifying
            .run(move |message| {
                let sender = sender.clone();
                async move {
                    sender.send(message).ok();
                    Ok::<(), String>(())
                }
            })
            .await
    });

    setup
        .publisher(&orders)
        .publish(setup.subject.clone(), Bytes::from_static(b"wait for the guard"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(verified.try_recv().is_err(), "accepted without a replay guard");

    // The bucket is back: the redelivery is accepted, nothing was dead-lettered.
    KvReplayGuard::open(&setup.context, &bucket, Duration::from_secs(660))
        .await
        .unwrap();
    let message = recv(&mut verified).await;
    assert_eq!(message.payload().as_ref(), b"wait for the guard");
    assert!(
        next_within(&mut dead, Duration::from_millis(200)).await.is_none(),
        "a transient rejection was dead-lettered"
    );
    assert_settled(&mut consumer).await;
    setup.context.delete_key_value(&bucket).await.unwrap();
    setup.cleanup().await;
}

#[tokio::test]
async fn batch_forgery_terminated_alone() {
    let orders = service("orders");
    let setup = setup().await;
    let mut dead = setup
        .context
        .client()
        .subscribe(setup.dead_letter.clone())
        .await
        .unwrap();

    // Nine messages are stored before the consumer starts, so its first
    // pull fetches them together. The fifth carries a signature that does
    // not verify under the sender's key.
    let publisher = setup.publisher(&orders);
    for index in 0..9u8 {
        let payload = Bytes::from(vec![b'0' + index]);
        if index != 4 {
            publisher.publish(setup.subject.clone(), payload).await.unwrap();
            continue;
        }
        let token = orders
            .signer
            .token(ServiceId::new("payments").unwrap())
            .binding(trustwire::nats::channel_binding(&setup.subject).unwrap())
            .payload(&payload)
            .sign()
            .unwrap();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(trustwire::nats::TOKEN_HEADER, corrupt_signature(&token).as_str());
        setup
            .context
            .publish_with_headers(setup.subject.clone(), headers, payload)
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let mut consumer = setup.consumer("payments").await;
    let mut verified = setup.run(&consumer, verifier("payments", &[&orders]), &[]).await;

    let mut payloads = Vec::new();
    for _ in 0..8 {
        payloads.push(recv(&mut verified).await.payload().clone());
    }
    assert_eq!(
        payloads,
        ["0", "1", "2", "3", "5", "6", "7", "8"].map(|text| Bytes::from_static(text.as_bytes()))
    );

    let copy = next_within(&mut dead, WAIT).await.expect("no dead-letter copy");
    assert_eq!(header(&copy, REJECTED_HEADER).as_deref(), Some("bad_signature"));
    assert_eq!(header(&copy, ORIGINAL_SEQUENCE_HEADER).as_deref(), Some("5"));
    assert_eq!(copy.payload.as_ref(), b"4");

    // Terminated, not redelivered: after two ack waits nothing came back.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        next_within(&mut dead, Duration::from_millis(200)).await.is_none(),
        "more than the forged message was dead-lettered, or it was redelivered"
    );
    assert!(verified.try_recv().is_err(), "a message was handled twice");
    let info = assert_settled(&mut consumer).await;
    assert_eq!(info.delivered.stream_sequence, 9);
    assert_eq!(info.num_redelivered, 0);
    setup.cleanup().await;
}

/// Computes the size of a header block as sent, from the `NATS/1.0` line
/// through the blank line, which is what nats-server limits.
fn wire_len(headers: &HeaderMap) -> usize {
    let mut len = "NATS/1.0\r\n\r\n".len();
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        for value in values {
            len += name.len() + ": ".len() + value.as_str().len() + "\r\n".len();
        }
    }
    len
}

fn app_header(len: usize) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        HeaderName::from_static("App"),
        HeaderValue::try_from("a".repeat(len)).unwrap(),
    );
    headers
}

#[tokio::test]
async fn header_limit_checked_before_publish() {
    let orders = service("orders");
    let mut setup = setup().await;
    let publisher = setup.publisher(&orders);

    // The token's share of the header block, measured on a stored message.
    let probe = publisher
        .publish_with_headers(setup.subject.clone(), app_header(1), Bytes::from_static(b"1"))
        .await
        .unwrap();
    let stored = setup.stream.get_raw_message(probe.sequence).await.unwrap();
    let without_app = wire_len(&stored.headers) - 1;

    // A block of exactly the limit is stored.
    let fill = MAX_JETSTREAM_HEADER_BYTES - without_app;
    let at_limit = publisher
        .publish_with_headers(setup.subject.clone(), app_header(fill), Bytes::from_static(b"2"))
        .await
        .unwrap();
    assert_eq!(at_limit.sequence, 2);
    let stored = setup.stream.get_raw_message(at_limit.sequence).await.unwrap();
    assert_eq!(wire_len(&stored.headers), MAX_JETSTREAM_HEADER_BYTES);

    // One byte more is rejected before it is sent.
    let err = publisher
        .publish_with_headers(setup.subject.clone(), app_header(fill + 1), Bytes::from_static(b"3"))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Some(Reason::TooLarge), "{err:?}");
    assert!(matches!(err, JetStreamPublishError::TooLarge(_)), "{err:?}");

    // Sent without the check, the same size is rejected by the server, so
    // the limit is the server's and not a guess.
    let mut oversized = stored.headers.clone();
    oversized.insert(
        HeaderName::from_static("App"),
        HeaderValue::try_from("a".repeat(fill + 1)).unwrap(),
    );
    assert_eq!(wire_len(&oversized), MAX_JETSTREAM_HEADER_BYTES + 1);
    let raw = setup
        .context
        .publish_with_headers(setup.subject.clone(), oversized, Bytes::from_static(b"3"))
        .await
        .unwrap()
        .await;
    let raw_err = raw.expect_err("nats-server stored a header block above its limit");
    assert!(raw_err.to_string().contains("10097"), "{raw_err}");

    let state = setup.stream.info().await.unwrap().state.clone();
    assert_eq!(state.messages, 2);
    assert_eq!(state.last_sequence, 2);
    setup.cleanup().await;
}
