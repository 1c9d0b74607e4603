//! Core NATS against the real server: signed publish, verifying subscribers,
//! every transport-visible rejection, dead-letter contents and signed
//! request/reply.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod nats_fixture;

use std::collections::HashSet;
use std::time::Duration;

use async_nats::{HeaderMap, HeaderName, HeaderValue, Message};
use bytes::Bytes;
use futures_util::StreamExt;
use nats_fixture::{
    connect, corrupt_signature, header, next_within, raw_hpub, round_trip, service, slow_jwks_server, suffix, verifier,
    verifier_with,
};
use tokio::sync::mpsc;
use trustwire::nats::{
    DeadLetter, ORIGINAL_SUBJECT_HEADER, REJECTED_HEADER, RequestError, SignedPublisher, TOKEN_HEADER, VerifiedMessage,
    VerifyingSubscriber, channel_binding,
};
use trustwire::{Policy, Reason, ServiceId};

const WAIT: Duration = Duration::from_secs(5);

/// Subjects unique to one test run.
struct Names {
    subject: String,
    dead_letter: String,
}

fn names() -> Names {
    let sfx = suffix();
    Names {
        subject: format!("test.{sfx}.orders.created"),
        dead_letter: format!("test.{sfx}.dead"),
    }
}

/// Publishes `headers` and `payload` without signing, as a forger would.
async fn publish_raw(client: &async_nats::Client, subject: &str, headers: HeaderMap, payload: &'static [u8]) {
    client
        .publish_with_headers(subject.to_owned(), headers, Bytes::from_static(payload))
        .await
        .unwrap();
    client.flush().await.unwrap();
}

fn token_headers(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(TOKEN_HEADER, HeaderValue::try_from(token).unwrap());
    headers
}

/// Polls `subscriber` in a task, so rejected messages get dead-lettered
/// while the test waits elsewhere; verified messages come out of the channel.
fn drive(mut subscriber: VerifyingSubscriber) -> mpsc::UnboundedReceiver<VerifiedMessage> {
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

/// The dead-lettered copy, with its reason code checked.
async fn expect_dead_letter(dead: &mut async_nats::Subscriber, code: &str) -> Message {
    let copy = next_within(dead, WAIT).await.expect("no dead-letter copy arrived");
    assert_eq!(header(&copy, REJECTED_HEADER).as_deref(), Some(code));
    copy
}

#[tokio::test]
async fn verified_delivery_keeps_payload_and_headers() {
    let orders = service("orders");
    let client = connect().await;
    let names = names();
    let mut subscriber = VerifyingSubscriber::builder(client.clone(), verifier("payments", &[&orders]))
        .dead_letter(DeadLetter::subject(&names.dead_letter))
        .subscribe(names.subject.clone())
        .await
        .unwrap();
    let publisher = SignedPublisher::new(
        client.clone(),
        orders.signer.clone(),
        ServiceId::new("payments").unwrap(),
    );

    let mut user = HeaderMap::new();
    user.insert("Trace-Id", "abc");
    publisher
        .publish_with_headers(names.subject.clone(), user, Bytes::from_static(br#"{"order":42}"#))
        .await
        .unwrap();

    let message = tokio::time::timeout(WAIT, subscriber.next()).await.unwrap().unwrap();
    assert_eq!(message.issuer(), "orders");
    assert_eq!(message.claims().aud, vec!["payments".to_owned()]);
    assert_eq!(
        message.claims().chn.as_deref(),
        Some(format!("nats:{}", names.subject).as_str())
    );
    assert_eq!(message.payload().as_ref(), br#"{"order":42}"#);
    assert_eq!(header(&message.message, "Trace-Id").as_deref(), Some("abc"));
}

#[tokio::test]
async fn tampered_payload_dead_lettered() {
    let orders = service("orders");
    let client = connect().await;
    let names = names();
    let mut dead = client.subscribe(names.dead_letter.clone()).await.unwrap();
    let mut verified = drive(
        VerifyingSubscriber::builder(client.clone(), verifier("payments", &[&orders]))
            .dead_letter(DeadLetter::subject(&names.dead_letter))
            .subscribe(names.subject.clone())
            .await
            .unwrap(),
    );

    let token = orders
        .signer
        .token(ServiceId::new("payments").unwrap())
        .binding(channel_binding(&names.subject).unwrap())
        .payload(br#"{"amount":1}"#)
        .sign()
        .unwrap();
    let mut headers = token_headers(&token);
    headers.insert("App-Header", "kept");
    publish_raw(&client, &names.subject, headers, br#"{"amount":1000}"#).await;

    let copy = expect_dead_letter(&mut dead, "digest_mismatch").await;
    assert_eq!(copy.payload.as_ref(), br#"{"amount":1000}"#);
    assert_eq!(header(&copy, TOKEN_HEADER).as_deref(), Some(token.as_str()));
    assert_eq!(header(&copy, "App-Header").as_deref(), Some("kept"));
    assert_eq!(
        header(&copy, ORIGINAL_SUBJECT_HEADER).as_deref(),
        Some(names.subject.as_str())
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), verified.recv())
            .await
            .is_err(),
        "a rejected message reached the caller"
    );
}

#[tokio::test]
async fn republished_on_other_subject_rejected() {
    let orders = service("orders");
    let client = connect().await;
    let names = names();
    let captured_subject = format!("{}.captured", names.subject);
    let mut capture = client.subscribe(captured_subject.clone()).await.unwrap();
    let mut dead = client.subscribe(names.dead_letter.clone()).await.unwrap();
    let _verified = drive(
        VerifyingSubscriber::builder(client.clone(), verifier("payments", &[&orders]))
            .dead_letter(DeadLetter::subject(&names.dead_letter))
            .subscribe(names.subject.clone())
            .await
            .unwrap(),
    );

    let publisher = SignedPublisher::new(
        client.clone(),
        orders.signer.clone(),
        ServiceId::new("payments").unwrap(),
    );
    publisher
        .publish(captured_subject, Bytes::from_static(b"refund"))
        .await
        .unwrap();
    let captured = next_within(&mut capture, WAIT).await.unwrap();

    client
        .publish_with_headers(
            names.subject.clone(),
            captured.headers.clone().unwrap(),
            captured.payload.clone(),
        )
        .await
        .unwrap();
    let copy = expect_dead_letter(&mut dead, "binding_mismatch").await;
    assert_eq!(copy.payload.as_ref(), b"refund");
}

#[tokio::test]
async fn unknown_key_rejected() {
    let orders = service("orders");
    let impostor = service("orders");
    let client = connect().await;
    let names = names();
    let mut dead = client.subscribe(names.dead_letter.clone()).await.unwrap();
    let _verified = drive(
        VerifyingSubscriber::builder(client.clone(), verifier("payments", &[&orders]))
            .dead_letter(DeadLetter::subject(&names.dead_letter))
            .subscribe(names.subject.clone())
            .await
            .unwrap(),
    );

    let forged = SignedPublisher::new(
        client.clone(),
        impostor.signer.clone(),
        ServiceId::new("payments").unwrap(),
    );
    forged
        .publish(names.subject.clone(), Bytes::from_static(b"x"))
        .await
        .unwrap();
    expect_dead_letter(&mut dead, "unknown_key").await;
}

#[tokio::test]
async fn replayed_copy_rejected() {
    let orders = service("orders");
    let client = connect().await;
    let names = names();
    let mut capture = client.subscribe(names.subject.clone()).await.unwrap();
    let mut dead = client.subscribe(names.dead_letter.clone()).await.unwrap();
    let mut verified = drive(
        VerifyingSubscriber::builder(client.clone(), verifier("payments", &[&orders]))
            .dead_letter(DeadLetter::subject(&names.dead_letter))
            .subscribe(names.subject.clone())
            .await
            .unwrap(),
    );

    let publisher = SignedPublisher::new(
        client.clone(),
        orders.signer.clone(),
        ServiceId::new("payments").unwrap(),
    );
    publisher
        .publish(names.subject.clone(), Bytes::from_static(b"pay 10"))
        .await
        .unwrap();
    let original = tokio::time::timeout(WAIT, verified.recv()).await.unwrap().unwrap();
    let captured = next_within(&mut capture, WAIT).await.unwrap();

    client
        .publish_with_headers(
            names.subject.clone(),
            captured.headers.clone().unwrap(),
            captured.payload.clone(),
        )
        .await
        .unwrap();
    let copy = expect_dead_letter(&mut dead, "replayed").await;
    assert_eq!(header(&copy, TOKEN_HEADER), header(&original.message, TOKEN_HEADER));
}

#[tokio::test]
async fn policy_denial_rejected() {
    let orders = service("orders");
    let client = connect().await;
    let sfx = suffix();
    let allowed = format!("test.{sfx}.orders.created");
    let denied = format!("test.{sfx}.payments.refund");
    let dead_letter = format!("test.{sfx}.dead");
    let policy = Policy::deny_all()
        .allow_channel(orders.id.clone(), &format!("nats:test.{sfx}.orders.>"))
        .unwrap();
    let verifier = verifier_with("payments", &[&orders], |builder| builder.policy(policy));
    let mut dead = client.subscribe(dead_letter.clone()).await.unwrap();
    let mut verified = drive(
        VerifyingSubscriber::builder(client.clone(), verifier)
            .dead_letter(DeadLetter::subject(&dead_letter))
            .subscribe(format!("test.{sfx}.*.*"))
            .await
            .unwrap(),
    );

    let publisher = SignedPublisher::new(
        client.clone(),
        orders.signer.clone(),
        ServiceId::new("payments").unwrap(),
    );
    publisher
        .publish(denied.clone(), Bytes::from_static(b"refund"))
        .await
        .unwrap();
    publisher
        .publish(allowed.clone(), Bytes::from_static(b"order"))
        .await
        .unwrap();

    let copy = expect_dead_letter(&mut dead, "not_allowed").await;
    assert_eq!(header(&copy, ORIGINAL_SUBJECT_HEADER).as_deref(), Some(denied.as_str()));
    let accepted = tokio::time::timeout(WAIT, verified.recv()).await.unwrap().unwrap();
    assert_eq!(accepted.subject(), allowed);
}

#[tokio::test]
async fn missing_and_duplicate_tokens_malformed() {
    let orders = service("orders");
    let client = connect().await;
    let names = names();
    let mut dead = client.subscribe(names.dead_letter.clone()).await.unwrap();
    let _verified = drive(
        VerifyingSubscriber::builder(client.clone(), verifier("payments", &[&orders]))
            .dead_letter(DeadLetter::subject(&names.dead_letter))
            .subscribe(names.subject.clone())
            .await
            .unwrap(),
    );

    client
        .publish(names.subject.clone(), Bytes::from_static(b"unsigned"))
        .await
        .unwrap();
    let copy = expect_dead_letter(&mut dead, "malformed").await;
    assert_eq!(copy.payload.as_ref(), b"unsigned");

    // Two tokens: a valid one and another; neither may be picked.
    let valid = orders
        .signer
        .token(ServiceId::new("payments").unwrap())
        .binding(channel_binding(&names.subject).unwrap())
        .payload(b"two")
        .sign()
        .unwrap();
    let mut headers = token_headers(&valid);
    headers.append(TOKEN_HEADER, HeaderValue::try_from(valid.as_str()).unwrap());
    publish_raw(&client, &names.subject, headers, b"two").await;
    let copy = expect_dead_letter(&mut dead, "malformed").await;
    assert_eq!(copy.payload.as_ref(), b"two");

    // The same, with the second name in another case.
    let mut headers = token_headers(&valid);
    headers.append(
        HeaderName::try_from("trustwire-token").unwrap(),
        HeaderValue::try_from("x.y.z").unwrap(),
    );
    publish_raw(&client, &names.subject, headers, b"two").await;
    expect_dead_letter(&mut dead, "malformed").await;
}

#[tokio::test]
async fn raw_header_with_carriage_return_rejected() {
    let orders = service("orders");
    let client = connect().await;
    let names = names();
    let mut dead = client.subscribe(names.dead_letter.clone()).await.unwrap();
    let mut verified = drive(
        VerifyingSubscriber::builder(client.clone(), verifier("payments", &[&orders]))
            .dead_letter(DeadLetter::subject(&names.dead_letter))
            .subscribe(names.subject.clone())
            .await
            .unwrap(),
    );

    // A bare CR inside a value, and a value that tries to smuggle a header.
    let token = orders
        .signer
        .token(ServiceId::new("payments").unwrap())
        .binding(channel_binding(&names.subject).unwrap())
        .payload(b"cr")
        .sign()
        .unwrap();
    let lines = format!("{TOKEN_HEADER}: {token}\rTrustwire-Rejected: none\r\nApp: a\rb\r\n");
    // The raw publish comes over another connection, so the server must
    // have both SUBs first.
    round_trip(&client).await;
    raw_hpub(&names.subject, lines.as_bytes(), b"cr").await;

    let copy = expect_dead_letter(&mut dead, "malformed").await;
    assert_eq!(copy.payload.as_ref(), b"cr");
    let app = header(&copy, "App").unwrap();
    assert!(
        !app.contains(['\r', '\n']),
        "a control character survived into the copy: {app:?}"
    );

    // The subscriber is still alive and verifies the next genuine message.
    let publisher = SignedPublisher::new(
        client.clone(),
        orders.signer.clone(),
        ServiceId::new("payments").unwrap(),
    );
    publisher
        .publish(names.subject.clone(), Bytes::from_static(b"after"))
        .await
        .unwrap();
    let next = tokio::time::timeout(WAIT, verified.recv()).await.unwrap().unwrap();
    assert_eq!(next.payload().as_ref(), b"after");
}

#[tokio::test]
async fn invalid_header_name_does_not_panic() {
    let orders = service("orders");
    let client = connect().await;
    let names = names();
    let mut subscriber = VerifyingSubscriber::builder(client.clone(), verifier("payments", &[&orders]))
        .dead_letter(DeadLetter::subject(&names.dead_letter))
        .subscribe(names.subject.clone())
        .await
        .unwrap();

    // async-nats' parser refuses the name and drops the connection, then
    // reconnects; nothing may panic and the subscriber must carry on.
    round_trip(&client).await;
    raw_hpub(&names.subject, "Bad\u{e9}Name: x\r\n".as_bytes(), b"bad").await;

    let publisher = SignedPublisher::new(
        client.clone(),
        orders.signer.clone(),
        ServiceId::new("payments").unwrap(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        publisher
            .publish(names.subject.clone(), Bytes::from_static(b"after"))
            .await
            .unwrap();
        if let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(500), subscriber.next()).await {
            assert_eq!(message.payload().as_ref(), b"after");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the subscriber never recovered");
    }
}

#[tokio::test]
async fn queue_group_delivers_each_once() {
    let orders = service("orders");
    let client = connect().await;
    let names = names();
    let mut first = VerifyingSubscriber::builder(client.clone(), verifier("payments", &[&orders]))
        .dead_letter(DeadLetter::subject(&names.dead_letter))
        .queue_subscribe(names.subject.clone(), "payments")
        .await
        .unwrap();
    let mut second = VerifyingSubscriber::builder(connect().await, verifier("payments", &[&orders]))
        .dead_letter(DeadLetter::subject(&names.dead_letter))
        .queue_subscribe(names.subject.clone(), "payments")
        .await
        .unwrap();

    let publisher = SignedPublisher::new(
        client.clone(),
        orders.signer.clone(),
        ServiceId::new("payments").unwrap(),
    );
    for index in 0..20 {
        publisher
            .publish(names.subject.clone(), Bytes::from(format!("{index}")))
            .await
            .unwrap();
    }

    let mut seen = Vec::new();
    while seen.len() < 20 {
        let message = tokio::select! {
            Some(message) = first.next() => message,
            Some(message) = second.next() => message,
            _ = tokio::time::sleep(WAIT) => panic!("only {} of 20 messages arrived", seen.len()),
        };
        seen.push(String::from_utf8(message.payload().to_vec()).unwrap());
    }
    let distinct: HashSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), 20);
}

/// Serves `subject` as the payments service: verifies each request and
/// replies with `reply` signed for the requester.
async fn serve_payments(
    client: async_nats::Client,
    subject: String,
    payments: trustwire::Signer,
    trusted: trustwire::Verifier,
) {
    let mut requests = VerifyingSubscriber::builder(client.clone(), trusted)
        .subscribe(subject)
        .await
        .unwrap();
    let responder = SignedPublisher::new(client, payments, ServiceId::new("orders").unwrap());
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let answer = format!("quote for {}", String::from_utf8_lossy(request.payload()));
            responder.reply(&request, Bytes::from(answer)).await.unwrap();
        }
    });
}

#[tokio::test]
async fn request_reply_signed_both_ways() {
    let orders = service("orders");
    let payments = service("payments");
    let client = connect().await;
    let subject = format!("test.{}.payments.quote", suffix());
    serve_payments(
        client.clone(),
        subject.clone(),
        payments.signer.clone(),
        verifier("payments", &[&orders]),
    )
    .await;

    let requester = SignedPublisher::new(
        client.clone(),
        orders.signer.clone(),
        ServiceId::new("payments").unwrap(),
    );
    let replies = verifier("orders", &[&payments]);
    let reply = requester
        .request(subject, Bytes::from_static(b"order 42"), &replies)
        .await
        .unwrap();

    assert_eq!(reply.issuer(), "payments");
    assert_eq!(reply.claims().aud, vec!["orders".to_owned()]);
    assert!(reply.claims().chn.as_deref().unwrap().starts_with("nats:_INBOX."));
    assert_eq!(reply.payload().as_ref(), b"quote for order 42");
}

#[tokio::test]
async fn reply_replayed_onto_other_request_rejected() {
    let orders = service("orders");
    let payments = service("payments");
    let client = connect().await;
    let sfx = suffix();
    let honest = format!("test.{sfx}.payments.quote");
    let rogue = format!("test.{sfx}.rogue.quote");
    serve_payments(
        client.clone(),
        honest.clone(),
        payments.signer.clone(),
        verifier("payments", &[&orders]),
    )
    .await;

    let requester = SignedPublisher::new(
        client.clone(),
        orders.signer.clone(),
        ServiceId::new("payments").unwrap(),
    )
    .request_timeout(Duration::from_secs(3));
    let replies = verifier("orders", &[&payments]);
    let genuine = requester
        .request(honest, Bytes::from_static(b"a"), &replies)
        .await
        .unwrap();

    // A rogue responder answers every request with the captured reply.
    let mut rogue_requests = client.subscribe(rogue.clone()).await.unwrap();
    let rogue_client = client.clone();
    let captured = genuine.message.clone();
    tokio::spawn(async move {
        while let Some(request) = rogue_requests.next().await {
            let inbox = request.reply.unwrap();
            rogue_client
                .publish_with_headers(inbox, captured.headers.clone().unwrap(), captured.payload.clone())
                .await
                .unwrap();
        }
    });

    let err = requester
        .request(rogue, Bytes::from_static(b"a"), &replies)
        .await
        .unwrap_err();
    let rejection = err.rejection().expect("the reply should arrive and be rejected");
    assert_eq!(rejection.reason(), Reason::BindingMismatch);
}

#[tokio::test]
async fn unsigned_reply_rejected() {
    let orders = service("orders");
    let payments = service("payments");
    let client = connect().await;
    let subject = format!("test.{}.plain.quote", suffix());
    let mut requests = client.subscribe(subject.clone()).await.unwrap();
    let plain = client.clone();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            plain
                .publish(request.reply.unwrap(), Bytes::from_static(b"unsigned"))
                .await
                .unwrap();
        }
    });

    let requester = SignedPublisher::new(
        client.clone(),
        orders.signer.clone(),
        ServiceId::new("payments").unwrap(),
    );
    let err = requester
        .request(subject, Bytes::from_static(b"a"), &verifier("orders", &[&payments]))
        .await
        .unwrap_err();
    assert_eq!(err.rejection().map(|rejection| rejection.code()), Some("malformed"));
}

#[tokio::test]
async fn request_without_responders_fails() {
    let orders = service("orders");
    let payments = service("payments");
    let client = connect().await;
    let requester = SignedPublisher::new(client, orders.signer.clone(), ServiceId::new("payments").unwrap());
    let err = requester
        .request(
            format!("test.{}.nobody", suffix()),
            Bytes::new(),
            &verifier("orders", &[&payments]),
        )
        .await
        .unwrap_err();
    match err {
        RequestError::Request(inner) => assert_eq!(inner.kind(), async_nats::RequestErrorKind::NoResponders),
        other => panic!("expected no responders, got {other:?}"),
    }
}

#[tokio::test]
async fn reply_to_message_without_reply_subject_fails() {
    let orders = service("orders");
    let client = connect().await;
    let names = names();
    let mut subscriber = VerifyingSubscriber::builder(client.clone(), verifier("payments", &[&orders]))
        .subscribe(names.subject.clone())
        .await
        .unwrap();
    let publisher = SignedPublisher::new(
        client.clone(),
        orders.signer.clone(),
        ServiceId::new("payments").unwrap(),
    );
    publisher
        .publish(names.subject.clone(), Bytes::from_static(b"x"))
        .await
        .unwrap();
    let message = tokio::time::timeout(WAIT, subscriber.next()).await.unwrap().unwrap();

    let err = publisher.reply(&message, Bytes::new()).await.unwrap_err();
    assert!(
        matches!(err, trustwire::nats::PublishError::NoReplySubject { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn batch_forgery_dead_lettered_alone() {
    let orders = service("orders");
    let client = connect().await;
    let names = names();
    let mut dead = client.subscribe(names.dead_letter.clone()).await.unwrap();
    let mut subscriber = VerifyingSubscriber::builder(client.clone(), verifier("payments", &[&orders]))
        .dead_letter(DeadLetter::subject(&names.dead_letter))
        .subscribe(names.subject.clone())
        .await
        .unwrap();
    let publisher = SignedPublisher::new(
        client.clone(),
        orders.signer.clone(),
        ServiceId::new("payments").unwrap(),
    );

    // Nine messages arrive before the subscriber reads any, so they are
    // verified as one batch. The fifth carries a signature that does not
    // verify under the sender's key.
    for index in 0..9u8 {
        let payload = Bytes::from(vec![b'0' + index]);
        if index != 4 {
            publisher.publish(names.subject.clone(), payload).await.unwrap();
            continue;
        }
        let token = orders
            .signer
            .token(ServiceId::new("payments").unwrap())
            .binding(channel_binding(&names.subject).unwrap())
            .payload(&payload)
            .sign()
            .unwrap();
        client
            .publish_with_headers(
                names.subject.clone(),
                token_headers(&corrupt_signature(&token)),
                payload,
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut payloads = Vec::new();
    for _ in 0..8 {
        let message = tokio::time::timeout(WAIT, subscriber.next()).await.unwrap().unwrap();
        payloads.push(message.payload().clone());
    }
    assert_eq!(
        payloads,
        ["0", "1", "2", "3", "5", "6", "7", "8"].map(|text| Bytes::from_static(text.as_bytes()))
    );

    let copy = expect_dead_letter(&mut dead, "bad_signature").await;
    assert_eq!(copy.payload.as_ref(), b"4");
    assert!(
        next_within(&mut dead, Duration::from_millis(300)).await.is_none(),
        "more than the forged message was dead-lettered"
    );
}

/// A `next` dropped while it waits for the issuer's JWKS (the `select!`
/// case) loses none of the messages it took: the next calls return them.
#[tokio::test]
async fn next_dropped_mid_batch_loses_nothing() {
    let orders = service("orders");
    let url = slow_jwks_server(&orders.key_set, Duration::from_millis(300)).await;
    let remote = trustwire::jwks::RemoteJwks::builder(url).build().unwrap();
    let trust = trustwire::jwks::TrustStore::new().trust(orders.id.clone(), trustwire::jwks::KeySource::Remote(remote));
    let verifier = trustwire::Verifier::builder(ServiceId::new("payments").unwrap(), trust)
        .build()
        .unwrap();

    let client = connect().await;
    let names = names();
    let mut subscriber = VerifyingSubscriber::builder(client.clone(), verifier)
        .dead_letter(DeadLetter::subject(&names.dead_letter))
        .subscribe(names.subject.clone())
        .await
        .unwrap();
    let publisher = SignedPublisher::new(
        client.clone(),
        orders.signer.clone(),
        ServiceId::new("payments").unwrap(),
    );
    for index in 0..3 {
        publisher
            .publish(names.subject.clone(), Bytes::from(format!("{index}")))
            .await
            .unwrap();
    }
    // The echo comes back after the three messages reached the subscription.
    round_trip(&client).await;

    // This call takes the three messages and waits for the JWKS.
    let dropped = tokio::time::timeout(Duration::from_millis(50), subscriber.next()).await;
    assert!(dropped.is_err(), "a message verified before the JWKS answered");

    for index in 0..3 {
        let message = tokio::time::timeout(WAIT, subscriber.next())
            .await
            .expect("a message taken by the dropped call was lost")
            .expect("the subscription ended");
        assert_eq!(message.payload().as_ref(), format!("{index}").as_bytes());
    }
}

/// A message published on another connection right after `subscribe`
/// returns reaches the subscription: subscribing waits for the server.
/// Without that wait the publish can overtake the SUB, which this loop
/// catches in some runs, not every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_returns_after_server_registers() {
    let orders = service("orders");
    let subscribing = connect().await;
    let publishing = connect().await;
    let publisher = SignedPublisher::new(publishing, orders.signer.clone(), ServiceId::new("payments").unwrap());
    for round in 0..50 {
        let names = names();
        let mut subscriber = VerifyingSubscriber::builder(subscribing.clone(), verifier("payments", &[&orders]))
            .dead_letter(DeadLetter::subject(&names.dead_letter))
            .subscribe(names.subject.clone())
            .await
            .unwrap();
        publisher
            .publish(names.subject.clone(), Bytes::from_static(b"first"))
            .await
            .unwrap();
        let message = tokio::time::timeout(WAIT, subscriber.next())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the message published right after subscribe was lost"))
            .expect("the subscription ended");
        assert_eq!(message.payload().as_ref(), b"first");
    }
}
