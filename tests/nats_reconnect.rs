//! Connections cut mid-stream by a TCP proxy between client and server: no
//! valid message is rejected, and none is lost on JetStream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod nats_fixture;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use nats_fixture::{
    connect, connect_counting, connect_to, nats_addr, next_within, round_trip, service, suffix, verifier, verifier_with,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use trustwire::ServiceId;
use trustwire::nats::{
    DeadLetter, KvReplayGuard, SignedJetStream, SignedPublisher, VerifyingConsumer, VerifyingSubscriber,
};

/// A TCP proxy on 127.0.0.1 that forwards to the NATS server and can drop
/// every connection it carries, as a network failure would.
struct Proxy {
    addr: SocketAddr,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let upstream = nats_addr();
        let accepted = Arc::clone(&connections);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let forward = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                accepted.lock().unwrap().push(forward);
            }
        });
        Self {
            addr,
            connections,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Drops every open connection; new ones are still accepted.
    fn cut(&self) -> usize {
        let open: Vec<_> = self.connections.lock().unwrap().drain(..).collect();
        for connection in &open {
            connection.abort();
        }
        open.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Waits until `connects` has grown past `before`: the client reconnected.
async fn wait_reconnected(connects: &AtomicUsize, before: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while connects.load(Ordering::SeqCst) <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client never reconnected through the proxy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn jetstream_consumer_survives_cut() {
    const COUNT: usize = 60;
    let orders = service("orders");
    let sfx = suffix();
    let subject = format!("rc.{sfx}.orders");
    let dead_letter = format!("rc.{sfx}.dead");
    let bucket = format!("tw_rc_{sfx}");

    // Publisher and observer talk to the server directly.
    let direct = connect().await;
    let direct_js = jetstream::new(direct.clone());
    let stream = direct_js
        .create_stream(stream::Config {
            name: format!("TW_RC_{sfx}"),
            subjects: vec![format!("rc.{sfx}.>")],
            storage: stream::StorageType::Memory,
            max_age: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("payments".to_owned()),
            ack_wait: Duration::from_secs(2),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut dead = direct.subscribe(dead_letter.clone()).await.unwrap();
    let publisher = SignedJetStream::new(
        direct_js.clone(),
        orders.signer.clone(),
        ServiceId::new("payments").unwrap(),
    );
    for index in 0..COUNT / 2 {
        publisher
            .publish(subject.clone(), Bytes::from(index.to_string()))
            .await
            .unwrap();
    }

    // The consumer, and its replay guard, go through the proxy.
    let proxy = Proxy::start().await;
    let proxied = connect_to(&proxy.url()).await;
    let proxied_js = jetstream::new(proxied.clone());
    let guard = KvReplayGuard::open(&proxied_js, &bucket, Duration::from_secs(660))
        .await
        .unwrap();
    let verifier = verifier_with("payments", &[&orders], |builder| builder.replay_guard(Arc::new(guard)));
    let mut verifying = VerifyingConsumer::builder(&proxied_js, verifier)
        .dead_letter(DeadLetter::subject(&dead_letter))
        .transient_retry_delay(Duration::from_millis(300))
        .messages(&consumer)
        .await
        .unwrap();
    let (sender, mut handled) = mpsc::unbounded_channel();
    let worker = tokio::spawn(async move {
        verifying
            .run(move |message| {
                let sender = sender.clone();
                async move {
                    // Slow enough that the cut lands mid-stream.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    sender.send(String::from_utf8(message.payload().to_vec()).unwrap()).ok();
                    Ok::<(), String>(())
                }
            })
            .await
    });

    let mut seen = BTreeSet::new();
    let mut deliveries = 0;
    let mut cut = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    while seen.len() < COUNT {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let index = tokio::time::timeout(remaining, handled.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {COUNT} messages were handled", seen.len()))
            .unwrap();
        deliveries += 1;
        seen.insert(index.parse::<usize>().unwrap());
        if deliveries == 15 && !cut {
            assert!(proxy.cut() > 0, "the proxy carried no connection");
            cut = true;
            for index in COUNT / 2..COUNT {
                publisher
                    .publish(subject.clone(), Bytes::from(index.to_string()))
                    .await
                    .unwrap();
            }
        }
    }

    assert!(cut);
    assert_eq!(seen, (0..COUNT).collect::<BTreeSet<_>>());
    assert!(
        next_within(&mut dead, Duration::from_millis(500)).await.is_none(),
        "a valid message was rejected"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = consumer.info().await.unwrap().clone();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "messages left unacknowledged: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    worker.abort();
    direct_js.delete_stream(format!("TW_RC_{sfx}")).await.unwrap();
    direct_js.delete_key_value(&bucket).await.unwrap();
}

#[tokio::test]
async fn core_subscriber_survives_cut() {
    let orders = service("orders");
    let sfx = suffix();
    let subject = format!("rc.{sfx}.core");
    let dead_letter = format!("rc.{sfx}.dead");

    let direct = connect().await;
    let mut dead = direct.subscribe(dead_letter.clone()).await.unwrap();
    round_trip(&direct).await;
    let proxy = Proxy::start().await;

    // Publisher and subscriber both go through the proxy.
    let (publishing, publishing_connects) = connect_counting(&proxy.url()).await;
    let (subscribing, subscribing_connects) = connect_counting(&proxy.url()).await;
    let publisher = SignedPublisher::new(
        publishing.clone(),
        orders.signer.clone(),
        ServiceId::new("payments").unwrap(),
    );
    let mut subscriber = VerifyingSubscriber::builder(subscribing.clone(), verifier("payments", &[&orders]))
        .dead_letter(DeadLetter::subject(&dead_letter))
        .subscribe(subject.clone())
        .await
        .unwrap();
    // Core NATS delivers only to subscriptions the server already has, and
    // `subscribe` returns before the SUB reaches the server. Without this
    // round trip the publisher's first messages, sent on another
    // connection, can reach the server first and are dropped.
    round_trip(&subscribing).await;
    let (sender, mut verified) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = subscriber.next().await {
            sender.send(String::from_utf8(message.payload().to_vec()).unwrap()).ok();
        }
    });

    for index in 0..20 {
        publisher
            .publish(subject.clone(), Bytes::from(format!("before {index}")))
            .await
            .unwrap();
    }
    publishing.flush().await.unwrap();
    let mut before_cut = BTreeSet::new();
    while before_cut.len() < 20 {
        let payload = tokio::time::timeout(Duration::from_secs(5), verified.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of 20 messages arrived before the cut", before_cut.len()))
            .expect("the verifying subscriber ended");
        before_cut.insert(payload);
    }

    let before = (
        publishing_connects.load(Ordering::SeqCst),
        subscribing_connects.load(Ordering::SeqCst),
    );
    assert!(proxy.cut() >= 2, "the proxy should carry both connections");
    wait_reconnected(&publishing_connects, before.0).await;
    wait_reconnected(&subscribing_connects, before.1).await;
    // async-nats sends the SUB again after reconnecting. Messages published
    // before the server has it would be dropped, as before the cut.
    round_trip(&subscribing).await;

    for index in 0..20 {
        publisher
            .publish(subject.clone(), Bytes::from(format!("after {index}")))
            .await
            .unwrap();
    }
    publishing.flush().await.unwrap();
    let mut after = BTreeSet::new();
    while after.len() < 20 {
        let payload = tokio::time::timeout(Duration::from_secs(5), verified.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of 20 messages arrived after the reconnect", after.len()))
            .expect("the verifying subscriber ended");
        if let Some(index) = payload.strip_prefix("after ") {
            after.insert(index.to_owned());
        }
    }
    assert!(
        next_within(&mut dead, Duration::from_millis(500)).await.is_none(),
        "a valid message was rejected"
    );
}
