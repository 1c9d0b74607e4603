//! Sealed messages over a real NATS server, core and JetStream: round trips,
//! what a plain subscriber and the stream see on the wire, and the
//! rejections of tampered, misaddressed and mismatched messages, each
//! dead-lettered with its reason code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod nats_fixture;

use std::time::Duration;

use async_nats::jetstream::consumer::{self, PullConsumer};
use async_nats::jetstream::stream;
use async_nats::{HeaderMap, HeaderName, HeaderValue, Message};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use nats_fixture::{
    Service, connect, corrupt_signature, header, next_within, round_trip, service, slow_jwks_server, suffix, verifier,
};
use tokio::sync::mpsc;
use trustwire::jwks::{JwkSet, KeySource, RemoteJwks, TrustStore};
use trustwire::keys::EncryptionKey;
use trustwire::nats::{
    DeadLetter, MAX_JETSTREAM_HEADER_BYTES, ORIGINAL_SEQUENCE_HEADER, ORIGINAL_STREAM_HEADER, ORIGINAL_SUBJECT_HEADER,
    OpenedMessage, OpeningConsumer, OpeningSubscriber, REJECTED_HEADER, SEALED_HEADER, SealedJetStream,
    SealedPublishError, SealedPublisher, SignedPublisher, TOKEN_HEADER, VerifiedMessage, VerifyingSubscriber,
    channel_binding,
};
use trustwire::seal::{Opener, Recipient, RecipientDirectory, Sealed, Sealer};
use trustwire::{Audience, Reason, ServiceId, Verifier};

const WAIT: Duration = Duration::from_secs(5);
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

/// A directory that resolves each receiver by its own name.
fn directory(receivers: &[&Receiver]) -> RecipientDirectory {
    receivers.iter().fold(RecipientDirectory::new(), |directory, receiver| {
        directory.add(id(receiver.name), receiver.key_source())
    })
}

fn sealed_publisher(client: &async_nats::Client, sender: &Service, receivers: &[&Receiver]) -> SealedPublisher {
    let audience = Audience::many(receivers.iter().map(|receiver| id(receiver.name)).collect()).unwrap();
    SealedPublisher::new(
        client.clone(),
        Sealer::new(sender.signer.clone()),
        audience,
        directory(receivers),
    )
}

/// Subjects unique to one test run.
struct Names {
    subject: String,
    dead_letter: String,
}

fn names() -> Names {
    let sfx = suffix();
    Names {
        subject: format!("test.{sfx}.sealed.orders"),
        dead_letter: format!("test.{sfx}.sealed.dead"),
    }
}

/// Polls `subscriber` in a task, so rejected messages get dead-lettered
/// while the test waits elsewhere; opened messages come out of the channel.
fn drive(mut subscriber: OpeningSubscriber) -> mpsc::UnboundedReceiver<OpenedMessage> {
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = subscriber.next().await {
            if sender.send(message).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Polls a plain subscriber in a task; verified messages come out of the channel.
fn drive_plain(mut subscriber: VerifyingSubscriber) -> mpsc::UnboundedReceiver<VerifiedMessage> {
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = subscriber.next().await {
            if sender.send(message).is_err() {
                break;
            }
        }
    });
    receiver
}

async fn next_opened(opened: &mut mpsc::UnboundedReceiver<OpenedMessage>) -> OpenedMessage {
    tokio::time::timeout(WAIT, opened.recv())
        .await
        .expect("no sealed message opened in time")
        .expect("the subscription ended")
}

async fn next_message(subscriber: &mut async_nats::Subscriber, what: &str) -> Message {
    next_within(subscriber, WAIT)
        .await
        .unwrap_or_else(|| panic!("no {what} within {WAIT:?}"))
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

/// The headers of `original` with the token replaced by `token`.
fn with_token(original: &HeaderMap, token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, values) in original.iter() {
        let text: &str = name.as_ref();
        if text.eq_ignore_ascii_case(TOKEN_HEADER) {
            continue;
        }
        for value in values {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(HeaderName::from_static(TOKEN_HEADER), HeaderValue::from_lossy(token));
    headers
}

/// The `jti` claim of a compact JWS, read without verifying it.
fn jti_of(token: &str) -> String {
    let claims = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    claims["jti"].as_str().unwrap().to_owned()
}

/// Seals `payload` from `sender` to `receiver` on `subject`, and returns the
/// sealed message with the headers of a sealed message whose token's
/// signature does not verify.
fn forged_sealed(sender: &Service, receiver: &Receiver, subject: &str, payload: &[u8]) -> (Sealed, HeaderMap) {
    let sealed = Sealer::new(sender.signer.clone())
        .seal(&[receiver.recipient()], channel_binding(subject).unwrap(), payload)
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(TOKEN_HEADER, corrupt_signature(&sealed.token).as_str());
    headers.insert(SEALED_HEADER, "1");
    (sealed, headers)
}

/// Returns the payloads of the batch tests: `0` to `8`, one byte each.
fn batch_payloads() -> Vec<Bytes> {
    (0..9u8).map(|index| Bytes::from(vec![b'0' + index])).collect()
}

/// Returns the payloads of the batch tests without the forged fifth one.
fn good_batch_payloads() -> Vec<Bytes> {
    ["0", "1", "2", "3", "5", "6", "7", "8"]
        .map(|text| Bytes::from_static(text.as_bytes()))
        .to_vec()
}

#[tokio::test]
async fn core_round_trip_hides_plaintext() {
    let orders = service("orders");
    let payments = Receiver::new("payments");
    let names = names();
    let client = connect().await;

    let mut wire = client.subscribe(names.subject.clone()).await.unwrap();
    let mut opening = drive(
        OpeningSubscriber::builder(client.clone(), payments.opener(&[&orders]))
            .dead_letter(DeadLetter::subject(&names.dead_letter))
            .subscribe(names.subject.clone())
            .await
            .unwrap(),
    );

    let mut user = HeaderMap::new();
    user.insert("App-Trace", "t-1");
    sealed_publisher(&client, &orders, &[&payments])
        .publish_with_headers(names.subject.clone(), user, Bytes::from_static(PAYLOAD))
        .await
        .unwrap();

    let opened = next_opened(&mut opening).await;
    assert_eq!(opened.payload(), PAYLOAD);
    assert_eq!(opened.issuer(), "orders");
    assert_eq!(opened.subject(), names.subject);
    assert_eq!(opened.claims().aud, ["payments"]);
    assert_eq!(
        opened.claims().chn.as_deref(),
        Some(format!("nats:{}", names.subject).as_str())
    );

    let captured = next_message(&mut wire, "copy on the wire").await;
    assert_eq!(header(&captured, SEALED_HEADER).as_deref(), Some("1"));
    assert_eq!(header(&captured, "App-Trace").as_deref(), Some("t-1"));
    assert!(header(&captured, TOKEN_HEADER).is_some());
    assert!(!contains(&captured.payload, SECRET), "the plaintext is on the wire");
    assert!(
        !contains(&captured.payload, b"order"),
        "part of the plaintext is on the wire"
    );
    assert_eq!(captured.payload.split(|&byte| byte == b'.').count(), 5);
    assert_eq!(opened.message.payload, captured.payload);
}

#[tokio::test]
async fn fan_out_opens_for_each_recipient() {
    let orders = service("orders");
    let payments = Receiver::new("payments");
    let billing = Receiver::new("billing");
    let names = names();
    let client = connect().await;

    let mut wire = client.subscribe(names.subject.clone()).await.unwrap();
    let mut at_payments = drive(
        OpeningSubscriber::builder(client.clone(), payments.opener(&[&orders]))
            .subscribe(names.subject.clone())
            .await
            .unwrap(),
    );
    let mut at_billing = drive(
        OpeningSubscriber::builder(client.clone(), billing.opener(&[&orders]))
            .subscribe(names.subject.clone())
            .await
            .unwrap(),
    );

    sealed_publisher(&client, &orders, &[&payments, &billing])
        .publish(names.subject.clone(), Bytes::from_static(PAYLOAD))
        .await
        .unwrap();

    assert_eq!(next_opened(&mut at_payments).await.payload(), PAYLOAD);
    assert_eq!(next_opened(&mut at_billing).await.payload(), PAYLOAD);

    let captured = next_message(&mut wire, "copy on the wire").await;
    assert!(!contains(&captured.payload, SECRET), "the plaintext is on the wire");
    let jwe: serde_json::Value = serde_json::from_slice(&captured.payload).unwrap();
    assert_eq!(jwe["recipients"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn tampered_ciphertext_dead_lettered() {
    let orders = service("orders");
    let payments = Receiver::new("payments");
    let names = names();
    let client = connect().await;

    // Capture a sealed message before anything opens it, so its jti is unused.
    let mut wire = client.subscribe(names.subject.clone()).await.unwrap();
    sealed_publisher(&client, &orders, &[&payments])
        .publish(names.subject.clone(), Bytes::from_static(PAYLOAD))
        .await
        .unwrap();
    let captured = next_message(&mut wire, "sealed message").await;
    let headers = captured.headers.clone().unwrap();
    let token = header(&captured, TOKEN_HEADER).unwrap();
    let tampered = tamper_ciphertext(&captured.payload);

    let mut dead = client.subscribe(names.dead_letter.clone()).await.unwrap();
    let mut opening = drive(
        OpeningSubscriber::builder(client.clone(), payments.opener(&[&orders]))
            .dead_letter(DeadLetter::subject(&names.dead_letter))
            .subscribe(names.subject.clone())
            .await
            .unwrap(),
    );

    // On the wire: the token's dig no longer matches the JWE.
    client
        .publish_with_headers(names.subject.clone(), headers.clone(), tampered.clone().into())
        .await
        .unwrap();
    // By a trusted sender that signs the tampered JWE: the token verifies,
    // and AES-GCM catches the change.
    let resigned = orders
        .signer
        .token(id("payments"))
        .binding(channel_binding(&names.subject).unwrap())
        .payload(&tampered)
        .jti(&jti_of(&token))
        .sign()
        .unwrap();
    client
        .publish_with_headers(
            names.subject.clone(),
            with_token(&headers, &resigned),
            tampered.clone().into(),
        )
        .await
        .unwrap();

    for expected in ["digest_mismatch", "decryption_failed"] {
        let copy = next_message(&mut dead, "dead-letter copy").await;
        assert_eq!(header(&copy, REJECTED_HEADER).as_deref(), Some(expected));
        assert_eq!(header(&copy, ORIGINAL_SUBJECT_HEADER), Some(names.subject.clone()));
        assert_eq!(header(&copy, SEALED_HEADER).as_deref(), Some("1"));
        assert_eq!(copy.payload.as_ref(), tampered.as_slice());
    }

    // The subscriber still opens a genuine message after the rejections.
    sealed_publisher(&client, &orders, &[&payments])
        .publish(names.subject.clone(), Bytes::from_static(PAYLOAD))
        .await
        .unwrap();
    assert_eq!(next_opened(&mut opening).await.payload(), PAYLOAD);
}

#[tokio::test]
async fn core_batch_forgery_dead_lettered_alone() {
    let orders = service("orders");
    let payments = Receiver::new("payments");
    let names = names();
    let client = connect().await;
    let mut dead = client.subscribe(names.dead_letter.clone()).await.unwrap();
    let mut subscriber = OpeningSubscriber::builder(client.clone(), payments.opener(&[&orders]))
        .dead_letter(DeadLetter::subject(&names.dead_letter))
        .subscribe(names.subject.clone())
        .await
        .unwrap();
    let publisher = sealed_publisher(&client, &orders, &[&payments]);

    // Nine messages arrive before the subscriber reads any, so they are
    // opened as one batch. The fifth is sealed by orders, but its token
    // carries a signature that does not verify under orders' key.
    let mut forged_jwe = Vec::new();
    for (index, payload) in batch_payloads().into_iter().enumerate() {
        if index != 4 {
            publisher.publish(names.subject.clone(), payload).await.unwrap();
            continue;
        }
        let (sealed, headers) = forged_sealed(&orders, &payments, &names.subject, &payload);
        client
            .publish_with_headers(names.subject.clone(), headers, sealed.jwe.clone().into())
            .await
            .unwrap();
        forged_jwe = sealed.jwe;
    }
    // The subscription shares the connection, so once the server echoes a
    // later message, all nine have reached the subscriber's buffer.
    round_trip(&client).await;

    let mut payloads = Vec::new();
    for _ in 0..8 {
        let message = tokio::time::timeout(WAIT, subscriber.next())
            .await
            .expect("no sealed message opened in time")
            .expect("the subscription ended");
        assert_eq!(message.issuer(), "orders");
        payloads.push(Bytes::copy_from_slice(message.payload()));
    }
    assert_eq!(payloads, good_batch_payloads());

    let copy = next_message(&mut dead, "dead-letter copy of the forged message").await;
    assert_eq!(header(&copy, REJECTED_HEADER).as_deref(), Some("bad_signature"));
    assert_eq!(header(&copy, ORIGINAL_SUBJECT_HEADER), Some(names.subject.clone()));
    assert_eq!(copy.payload.as_ref(), forged_jwe.as_slice());
    assert!(
        next_within(&mut dead, Duration::from_millis(300)).await.is_none(),
        "more than the forged message was dead-lettered"
    );
}

/// An opening `next` dropped while it waits for the sender's JWKS (the
/// `select!` case) loses none of the sealed messages it took: the next
/// calls open and return them.
#[tokio::test]
async fn core_next_dropped_mid_batch_loses_nothing() {
    let orders = service("orders");
    let payments = Receiver::new("payments");
    let url = slow_jwks_server(&orders.key_set, Duration::from_millis(300)).await;
    let remote = RemoteJwks::builder(url).build().unwrap();
    let trust = TrustStore::new().trust(orders.id.clone(), KeySource::Remote(remote));
    let verifier = Verifier::builder(id("payments"), trust).build().unwrap();
    let opener = Opener::new(verifier, vec![payments.key()]).unwrap();

    let names = names();
    let client = connect().await;
    let mut subscriber = OpeningSubscriber::builder(client.clone(), opener)
        .dead_letter(DeadLetter::subject(&names.dead_letter))
        .subscribe(names.subject.clone())
        .await
        .unwrap();
    let publisher = sealed_publisher(&client, &orders, &[&payments]);
    let payloads: Vec<Bytes> = batch_payloads().into_iter().take(3).collect();
    for payload in &payloads {
        publisher.publish(names.subject.clone(), payload.clone()).await.unwrap();
    }
    // The echo comes back after the three messages reached the subscription.
    round_trip(&client).await;

    // This call takes the three messages and waits for the JWKS.
    let dropped = tokio::time::timeout(Duration::from_millis(50), subscriber.next()).await;
    assert!(dropped.is_err(), "a message opened before the JWKS answered");

    for payload in payloads {
        let message = tokio::time::timeout(WAIT, subscriber.next())
            .await
            .expect("a message taken by the dropped call was lost")
            .expect("the subscription ended");
        assert_eq!(message.payload(), payload.as_ref());
    }
}

#[tokio::test]
async fn sealed_to_other_service_rejected() {
    let orders = service("orders");
    let payments = Receiver::new("payments");
    let billing = Receiver::new("billing");
    let names = names();
    let client = connect().await;

    let mut dead = client.subscribe(names.dead_letter.clone()).await.unwrap();
    let mut opening = drive(
        OpeningSubscriber::builder(client.clone(), payments.opener(&[&orders]))
            .dead_letter(DeadLetter::subject(&names.dead_letter))
            .subscribe(names.subject.clone())
            .await
            .unwrap(),
    );

    // Addressed to payments, but the directory holds billing's key under
    // payments' name: the token verifies and no JWE entry is for payments.
    let misdirected = RecipientDirectory::new().add(id("payments"), billing.key_source());
    SealedPublisher::new(
        client.clone(),
        Sealer::new(orders.signer.clone()),
        id("payments"),
        misdirected,
    )
    .publish(names.subject.clone(), Bytes::from_static(PAYLOAD))
    .await
    .unwrap();
    let copy = next_message(&mut dead, "dead-letter copy").await;
    assert_eq!(header(&copy, REJECTED_HEADER).as_deref(), Some("not_a_recipient"));
    assert!(
        !contains(&copy.payload, SECRET),
        "the dead-letter copy holds the plaintext"
    );

    // Sealed to billing: the token is not for payments at all.
    sealed_publisher(&client, &orders, &[&billing])
        .publish(names.subject.clone(), Bytes::from_static(PAYLOAD))
        .await
        .unwrap();
    let copy = next_message(&mut dead, "dead-letter copy").await;
    assert_eq!(header(&copy, REJECTED_HEADER).as_deref(), Some("wrong_audience"));

    assert!(
        opening.try_recv().is_err(),
        "a message sealed to another service was opened"
    );
}

#[tokio::test]
async fn plain_and_sealed_mismatch_wrong_type() {
    let orders = service("orders");
    let payments = Receiver::new("payments");
    let names = names();
    let plain_subject = format!("{}.plain", names.subject);
    let client = connect().await;

    let mut dead = client.subscribe(names.dead_letter.clone()).await.unwrap();
    let mut opening = drive(
        OpeningSubscriber::builder(client.clone(), payments.opener(&[&orders]))
            .dead_letter(DeadLetter::subject(&names.dead_letter))
            .subscribe(names.subject.clone())
            .await
            .unwrap(),
    );
    let mut verifying = drive_plain(
        VerifyingSubscriber::builder(client.clone(), verifier("payments", &[&orders]))
            .dead_letter(DeadLetter::subject(&names.dead_letter))
            .subscribe(plain_subject.clone())
            .await
            .unwrap(),
    );

    // A signed, not sealed, message to the opening subscriber.
    SignedPublisher::new(client.clone(), orders.signer.clone(), id("payments"))
        .publish(names.subject.clone(), Bytes::from_static(PAYLOAD))
        .await
        .unwrap();
    let copy = next_message(&mut dead, "dead-letter copy of the plain message").await;
    assert_eq!(header(&copy, REJECTED_HEADER).as_deref(), Some("wrong_type"));
    assert_eq!(header(&copy, ORIGINAL_SUBJECT_HEADER), Some(names.subject.clone()));

    // A sealed message to the plain subscriber: its token would verify, so
    // only the marker keeps the JWE from reaching the handler as the payload.
    sealed_publisher(&client, &orders, &[&payments])
        .publish(plain_subject.clone(), Bytes::from_static(PAYLOAD))
        .await
        .unwrap();
    let copy = next_message(&mut dead, "dead-letter copy of the sealed message").await;
    assert_eq!(header(&copy, REJECTED_HEADER).as_deref(), Some("wrong_type"));
    assert_eq!(header(&copy, ORIGINAL_SUBJECT_HEADER), Some(plain_subject.clone()));
    assert!(
        !contains(&copy.payload, SECRET),
        "the dead-letter copy holds the plaintext"
    );

    assert!(
        opening.try_recv().is_err(),
        "the opening subscriber handed on a plain message"
    );
    assert!(
        verifying.try_recv().is_err(),
        "the plain subscriber handed on a sealed message"
    );
}

/// A memory stream on `sealed.<suffix>.>` with a pull consumer, and a
/// dead-letter subject outside it.
struct JetStreamSetup {
    context: async_nats::jetstream::Context,
    stream: stream::Stream,
    consumer: PullConsumer,
    subject: String,
    dead_letter: String,
    stream_name: String,
}

/// Runs an opening consumer on `setup`'s consumer in a task, acking every
/// message it hands over; opened messages come out of the channel.
async fn run_opening_consumer(
    setup: &JetStreamSetup,
    opener: trustwire::seal::Opener,
) -> mpsc::UnboundedReceiver<OpenedMessage> {
    let mut opening = OpeningConsumer::builder(&setup.context, opener)
        .dead_letter(DeadLetter::subject(&setup.dead_letter))
        .messages(&setup.consumer)
        .await
        .unwrap();
    let (sender, handled) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        opening
            .run(move |message| {
                let sender = sender.clone();
                async move {
                    sender.send(message).ok();
                    Ok::<(), String>(())
                }
            })
            .await
    });
    handled
}

async fn jetstream_setup() -> JetStreamSetup {
    let client = connect().await;
    let context = async_nats::jetstream::new(client);
    let sfx = suffix();
    let stream_name = format!("TW_SEALED_{sfx}");
    let stream = context
        .create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("sealed.{sfx}.>")],
            storage: stream::StorageType::Memory,
            max_age: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("payments".to_owned()),
            ack_wait: Duration::from_secs(1),
            ..Default::default()
        })
        .await
        .unwrap();
    JetStreamSetup {
        context,
        stream,
        consumer,
        subject: format!("sealed.{sfx}.orders"),
        dead_letter: format!("dead.{sfx}"),
        stream_name,
    }
}

impl JetStreamSetup {
    /// Waits until the consumer has nothing pending or unacknowledged.
    async fn assert_settled(&mut self) -> consumer::Info {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let info = self.consumer.info().await.unwrap().clone();
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

    async fn cleanup(&self) {
        let _ = self.context.delete_stream(&self.stream_name).await;
    }
}

#[tokio::test]
async fn jetstream_round_trip_and_rejections() {
    let orders = service("orders");
    let payments = Receiver::new("payments");
    let mut setup = jetstream_setup().await;
    let client = setup.context.client();
    let mut dead = client.subscribe(setup.dead_letter.clone()).await.unwrap();

    let publisher = SealedJetStream::new(
        setup.context.clone(),
        Sealer::new(orders.signer.clone()),
        id("payments"),
        directory(&[&payments]),
    );
    let ack = publisher
        .publish(setup.subject.clone(), Bytes::from_static(PAYLOAD))
        .await
        .unwrap();

    // The stream stores the JWE, never the plaintext.
    let stored = setup.stream.get_raw_message(ack.sequence).await.unwrap();
    assert!(!contains(&stored.payload, SECRET), "the stream holds the plaintext");
    assert_eq!(stored.headers.get(SEALED_HEADER).map(|value| value.as_str()), Some("1"));

    let mut handled = run_opening_consumer(&setup, payments.opener(&[&orders])).await;

    let opened = tokio::time::timeout(WAIT, handled.recv())
        .await
        .expect("no sealed message opened in time")
        .unwrap();
    assert_eq!(opened.payload(), PAYLOAD);
    assert_eq!(opened.issuer(), "orders");

    // A copy whose ciphertext was changed in the stream's path, and a
    // signed message that is not sealed: both dead-lettered, then terminated.
    let tampered = tamper_ciphertext(&stored.payload);
    let tampered_ack = setup
        .context
        .publish_with_headers(setup.subject.clone(), stored.headers.clone(), tampered.clone().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let copy = next_message(&mut dead, "dead-letter copy of the tampered message").await;
    assert_eq!(header(&copy, REJECTED_HEADER).as_deref(), Some("digest_mismatch"));
    assert_eq!(header(&copy, ORIGINAL_STREAM_HEADER), Some(tampered_ack.stream.clone()));
    assert_eq!(copy.payload.as_ref(), tampered.as_slice());

    trustwire::nats::SignedJetStream::new(setup.context.clone(), orders.signer.clone(), id("payments"))
        .publish(setup.subject.clone(), Bytes::from_static(PAYLOAD))
        .await
        .unwrap();
    let copy = next_message(&mut dead, "dead-letter copy of the plain message").await;
    assert_eq!(header(&copy, REJECTED_HEADER).as_deref(), Some("wrong_type"));

    // Terminated, not redelivered: after two ack waits nothing came back.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(handled.try_recv().is_err(), "a rejected message reached the handler");
    assert!(
        next_within(&mut dead, Duration::from_millis(200)).await.is_none(),
        "a message was dead-lettered twice"
    );
    let info = setup.assert_settled().await;
    assert_eq!(info.num_redelivered, 0);
    setup.cleanup().await;
}

#[tokio::test]
async fn jetstream_oversized_headers_not_sent() {
    let orders = service("orders");
    let payments = Receiver::new("payments");
    let mut setup = jetstream_setup().await;
    let publisher = SealedJetStream::new(
        setup.context.clone(),
        Sealer::new(orders.signer.clone()),
        id("payments"),
        directory(&[&payments]),
    );

    // The caller's header alone fills the limit, so the token pushes the
    // block above it.
    let mut headers = HeaderMap::new();
    let fill = MAX_JETSTREAM_HEADER_BYTES - "NATS/1.0\r\nApp: \r\n\r\n".len();
    headers.insert(
        HeaderName::from_static("App"),
        HeaderValue::try_from("a".repeat(fill)).unwrap(),
    );
    let err = publisher
        .publish_with_headers(setup.subject.clone(), headers, Bytes::from_static(PAYLOAD))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Some(Reason::TooLarge), "{err:?}");
    assert!(matches!(err, SealedPublishError::TooLarge(_)), "{err:?}");

    let state = setup.stream.info().await.unwrap().state.clone();
    assert_eq!(state.messages, 0);
    assert_eq!(state.last_sequence, 0);

    // The publisher still works, and its first message is the stream's first.
    let ack = publisher
        .publish(setup.subject.clone(), Bytes::from_static(PAYLOAD))
        .await
        .unwrap();
    assert_eq!(ack.sequence, 1);
    setup.cleanup().await;
}

#[tokio::test]
async fn jetstream_batch_forgery_terminated_alone() {
    let orders = service("orders");
    let payments = Receiver::new("payments");
    let mut setup = jetstream_setup().await;
    let client = setup.context.client();
    let mut dead = client.subscribe(setup.dead_letter.clone()).await.unwrap();
    let publisher = SealedJetStream::new(
        setup.context.clone(),
        Sealer::new(orders.signer.clone()),
        id("payments"),
        directory(&[&payments]),
    );

    // Nine messages are stored before the consumer starts, so its first
    // pull fetches them together. The fifth is sealed by orders, but its
    // token carries a signature that does not verify under orders' key.
    let mut forged_jwe = Vec::new();
    for (index, payload) in batch_payloads().into_iter().enumerate() {
        if index != 4 {
            publisher.publish(setup.subject.clone(), payload).await.unwrap();
            continue;
        }
        let (sealed, headers) = forged_sealed(&orders, &payments, &setup.subject, &payload);
        setup
            .context
            .publish_with_headers(setup.subject.clone(), headers, sealed.jwe.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
        forged_jwe = sealed.jwe;
    }

    let mut handled = run_opening_consumer(&setup, payments.opener(&[&orders])).await;

    let mut payloads = Vec::new();
    for _ in 0..8 {
        let opened = tokio::time::timeout(WAIT, handled.recv())
            .await
            .expect("no sealed message opened in time")
            .expect("the consumer stopped");
        assert_eq!(opened.issuer(), "orders");
        payloads.push(Bytes::copy_from_slice(opened.payload()));
    }
    assert_eq!(payloads, good_batch_payloads());

    let copy = next_message(&mut dead, "dead-letter copy of the forged message").await;
    assert_eq!(header(&copy, REJECTED_HEADER).as_deref(), Some("bad_signature"));
    assert_eq!(header(&copy, ORIGINAL_SEQUENCE_HEADER).as_deref(), Some("5"));
    assert_eq!(copy.payload.as_ref(), forged_jwe.as_slice());

    // Terminated, not redelivered: after two ack waits nothing came back.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        next_within(&mut dead, Duration::from_millis(200)).await.is_none(),
        "more than the forged message was dead-lettered, or it was redelivered"
    );
    assert!(handled.try_recv().is_err(), "a message was handled twice");
    let info = setup.assert_settled().await;
    assert_eq!(info.delivered.stream_sequence, 9);
    assert_eq!(info.num_redelivered, 0);
    setup.cleanup().await;
}

/// Copies of sealed messages stored under other stream sequences and pulled
/// in one batch. Each copy after the first is `replayed`, also when the
/// first one verified but did not decrypt. No copy passes for a redelivery
/// of the first.
#[tokio::test]
async fn jetstream_batch_copies_replayed_in_order() {
    let orders = service("orders");
    let payments = Receiver::new("payments");
    let mut setup = jetstream_setup().await;
    let client = setup.context.client();
    let mut dead = client.subscribe(setup.dead_letter.clone()).await.unwrap();
    let sealer = Sealer::new(orders.signer.clone());
    let channel = channel_binding(&setup.subject).unwrap();
    let seal = |payload: &[u8]| sealer.seal(&[payments.recipient()], channel.clone(), payload).unwrap();
    let sealed_headers = |token: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(TOKEN_HEADER, token);
        headers.insert(SEALED_HEADER, "1");
        headers
    };

    let first = seal(b"first");
    let second = seal(b"second");
    let third = seal(b"third");
    // Signed by orders over a changed ciphertext, with the jti of `second`:
    // its token verifies, and then it does not decrypt.
    let broken_jwe = tamper_ciphertext(&second.jwe);
    let broken_token = orders
        .signer
        .token(id("payments"))
        .binding(channel.clone())
        .payload(&broken_jwe)
        .jti(&second.jti)
        .sign()
        .unwrap();
    let stored = [
        (sealed_headers(&first.token), first.jwe.clone()),
        (sealed_headers(&first.token), first.jwe.clone()),
        (sealed_headers(&broken_token), broken_jwe),
        (sealed_headers(&second.token), second.jwe.clone()),
        (sealed_headers(&third.token), third.jwe.clone()),
    ];
    for (headers, jwe) in stored {
        setup
            .context
            .publish_with_headers(setup.subject.clone(), headers, jwe.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let mut handled = run_opening_consumer(&setup, payments.opener(&[&orders])).await;

    let mut payloads = Vec::new();
    for _ in 0..2 {
        let opened = tokio::time::timeout(WAIT, handled.recv())
            .await
            .expect("no sealed message opened in time")
            .expect("the consumer stopped");
        payloads.push(Bytes::copy_from_slice(opened.payload()));
    }
    assert_eq!(
        payloads,
        vec![Bytes::from_static(b"first"), Bytes::from_static(b"third")]
    );

    for (reason, sequence) in [("replayed", "2"), ("decryption_failed", "3"), ("replayed", "4")] {
        let copy = next_message(&mut dead, "dead-letter copy").await;
        assert_eq!(
            header(&copy, REJECTED_HEADER).as_deref(),
            Some(reason),
            "sequence {sequence}"
        );
        assert_eq!(header(&copy, ORIGINAL_SEQUENCE_HEADER).as_deref(), Some(sequence));
    }

    // Terminated, not redelivered: after two ack waits nothing came back.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        next_within(&mut dead, Duration::from_millis(200)).await.is_none(),
        "a message was dead-lettered twice"
    );
    assert!(handled.try_recv().is_err(), "a copy reached the handler");
    let info = setup.assert_settled().await;
    assert_eq!(info.delivered.stream_sequence, 5);
    assert_eq!(info.num_redelivered, 0);
    setup.cleanup().await;
}
