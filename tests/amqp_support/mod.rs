//! Shared fixtures of the RabbitMQ tests: keys and services, a connection to
//! the real broker, per-test exchanges and queues, raw publishing, and ways
//! to break a connection (server-side close and a TCP proxy).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use trustwire::amqp::{DeadLetter, SignedPublisher, TOKEN_HEADER, VerifyingConsumer};
use trustwire::jwks::{JwkSet, KeySource, TrustStore};
use trustwire::{ServiceId, Signer, SigningKey, Verifier};

/// The broker the tests use: `AMQP_URL`, or the local default.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The URL with its password replaced, for failure messages.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Connects to `url` with a connection name, or fails the test with what to start.
pub async fn connect_to(url: &str, name: &str) -> Connection {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    match tokio::time::timeout(Duration::from_secs(10), Connection::connect(url, properties)).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(err)) => panic!(
            "cannot connect to RabbitMQ at {}: {err}. Start it with `rabbitmq-server -detached` \
             (or `bash scripts/test.sh`), or point AMQP_URL at a running broker",
            redacted(url)
        ),
        Err(_) => panic!(
            "connecting to RabbitMQ at {} timed out after 10 s. Start it with `rabbitmq-server -detached`, \
             or point AMQP_URL at a running broker",
            redacted(url)
        ),
    }
}

/// Connects to the test broker.
pub async fn connect(name: &str) -> Connection {
    connect_to(&amqp_url(), name).await
}

/// A random suffix for exchange, queue and connection names.
pub fn suffix() -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).unwrap();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A service with its own key pair.
pub struct Service {
    pub id: ServiceId,
    pub key_seed: [u8; 32],
}

impl Service {
    pub fn new(name: &str) -> Self {
        let mut key_seed = [0u8; 32];
        getrandom::fill(&mut key_seed).unwrap();
        Self {
            id: ServiceId::new(name).unwrap(),
            key_seed,
        }
    }

    pub fn key(&self) -> SigningKey {
        SigningKey::from_seed(&self.key_seed).unwrap()
    }

    pub fn signer(&self) -> Signer {
        Signer::new(self.id.clone(), self.key())
    }

    pub fn jwks(&self) -> JwkSet {
        JwkSet::from_keys(vec![self.key().public_key().clone()])
    }
}

/// A trust store that trusts each of `senders` with its inline keys.
pub fn trust(senders: &[&Service]) -> TrustStore {
    senders.iter().fold(TrustStore::new(), |store, sender| {
        store.trust(sender.id.clone(), KeySource::inline(sender.jwks()))
    })
}

/// A verifier for `audience` that trusts `senders`, with default options.
pub fn verifier(audience: &str, senders: &[&Service]) -> Verifier {
    Verifier::builder(ServiceId::new(audience).unwrap(), trust(senders))
        .build()
        .unwrap()
}

/// One test's exchange, queue and dead-letter exchange and queue, deleted on
/// [`Topology::delete`]. Queues also expire after 2 minutes unused, and
/// exchanges are auto-deleted with their last binding, so a failed test
/// leaves nothing behind for long.
pub struct Topology {
    pub exchange: String,
    pub queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub channel: Channel,
}

pub fn queue_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), AMQPValue::LongInt(120_000));
    arguments
}

impl Topology {
    /// Declares an exchange of `kind` with the queue bound by `binding_keys`,
    /// and a fanout dead-letter exchange with its queue.
    pub async fn declare(connection: &Connection, kind: ExchangeKind, binding_keys: &[&str]) -> Self {
        Self::declare_with(connection, kind, binding_keys, FieldTable::default()).await
    }

    /// Like [`Topology::declare`], with extra arguments for the main queue.
    pub async fn declare_with(
        connection: &Connection,
        kind: ExchangeKind,
        binding_keys: &[&str],
        extra_queue_arguments: FieldTable,
    ) -> Self {
        let id = suffix();
        let channel = connection.create_channel().await.unwrap();
        let topology = Self {
            exchange: format!("tw-test-{id}"),
            queue: format!("tw-test-{id}"),
            dead_letter_exchange: format!("tw-test-dlx-{id}"),
            dead_letter_queue: format!("tw-test-dlq-{id}"),
            channel,
        };
        let channel = &topology.channel;

        let exchange_options = ExchangeDeclareOptions {
            auto_delete: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                topology.exchange.as_str().into(),
                kind,
                exchange_options,
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .exchange_declare(
                topology.dead_letter_exchange.as_str().into(),
                ExchangeKind::Fanout,
                exchange_options,
                FieldTable::default(),
            )
            .await
            .unwrap();

        let mut arguments = queue_arguments();
        for (name, value) in extra_queue_arguments.inner() {
            arguments.insert(name.clone(), value.clone());
        }
        channel
            .queue_declare(
                topology.queue.as_str().into(),
                QueueDeclareOptions::default(),
                arguments,
            )
            .await
            .unwrap();
        channel
            .queue_declare(
                topology.dead_letter_queue.as_str().into(),
                QueueDeclareOptions::default(),
                queue_arguments(),
            )
            .await
            .unwrap();

        for key in binding_keys {
            channel
                .queue_bind(
                    topology.queue.as_str().into(),
                    topology.exchange.as_str().into(),
                    (*key).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        channel
            .queue_bind(
                topology.dead_letter_queue.as_str().into(),
                topology.dead_letter_exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        topology
    }

    pub fn dead_letter(&self) -> DeadLetter {
        DeadLetter::exchange(self.dead_letter_exchange.clone())
    }

    /// Takes every message from the dead-letter queue (acknowledging them).
    pub async fn drain_dead_letters(&self) -> Vec<lapin::message::Delivery> {
        drain(&self.channel, &self.dead_letter_queue).await
    }

    /// Takes every message from the main queue (acknowledging them).
    pub async fn drain_queue(&self) -> Vec<lapin::message::Delivery> {
        drain(&self.channel, &self.queue).await
    }

    pub async fn delete(self) {
        for queue in [&self.queue, &self.dead_letter_queue] {
            let _ = self
                .channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        // An auto-delete exchange that never had a binding is never deleted.
        for exchange in [&self.exchange, &self.dead_letter_exchange] {
            let _ = self
                .channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
}

/// Takes every message from `queue` with basic.get.
pub async fn drain(channel: &Channel, queue: &str) -> Vec<lapin::message::Delivery> {
    let mut messages = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .unwrap()
    {
        message.delivery.ack(BasicAckOptions::default()).await.unwrap();
        messages.push(message.delivery);
    }
    messages
}

/// A publisher on its own connection.
pub async fn publisher(connection: &Connection, sender: &Service, audience: &str) -> SignedPublisher {
    SignedPublisher::builder(sender.signer(), ServiceId::new(audience).unwrap())
        .build(connection)
        .await
        .unwrap()
}

/// A channel with confirms for publishing messages trustwire did not sign.
pub async fn raw_channel(connection: &Connection) -> Channel {
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    channel
}

/// Publishes `payload` unchanged with `properties`, waiting for the confirm.
pub async fn publish_raw(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    properties: BasicProperties,
) {
    let confirmation = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            payload,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        confirmation.is_ack(),
        "raw publish to {exchange}/{routing_key} was not confirmed"
    );
}

/// Replaces the first character of the signature segment with another
/// base64url character, so the token still parses but its signature does
/// not verify.
pub fn corrupt_signature(token: &str) -> String {
    let (signing_input, signature) = token.rsplit_once('.').unwrap();
    let first = if signature.starts_with('A') { "B" } else { "A" };
    format!("{signing_input}.{first}{}", &signature[1..])
}

/// Properties with a message id and these headers.
pub fn properties(message_id: &str, headers: &[(&str, AMQPValue)]) -> BasicProperties {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        table.insert(ShortString::from(*name), value.clone());
    }
    BasicProperties::default()
        .with_message_id(message_id.into())
        .with_headers(table)
}

/// A header value as the test reads it: long strings as text.
pub fn header_text(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        other => Some(format!("{other:?}")),
    }
}

/// The token a publisher put on a message.
pub fn token_of(properties: &BasicProperties) -> String {
    header_text(properties, TOKEN_HEADER).expect("the message has a token")
}

/// Dead-lettered messages by message id: `trustwire-rejected` header values.
pub fn reasons_by_id(messages: &[lapin::message::Delivery]) -> BTreeMap<String, String> {
    messages
        .iter()
        .map(|message| {
            let id = message
                .properties
                .message_id()
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            let reason = header_text(&message.properties, trustwire::amqp::REJECTED_HEADER).unwrap_or_default();
            (id, reason)
        })
        .collect()
}

/// Receives the next verified delivery within 10 s.
pub async fn next_verified(consumer: &mut VerifyingConsumer) -> trustwire::amqp::VerifiedDelivery {
    match tokio::time::timeout(Duration::from_secs(10), consumer.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(Some(Err(err))) => panic!("consumer failed: {err}"),
        Ok(None) => panic!("consumer ended before a verified delivery arrived"),
        Err(_) => panic!("no verified delivery within 10 s; stats: {:?}", consumer.stats()),
    }
}

/// Closes the connection named `name` from the broker's side with
/// `rabbitmqctl close_connection`.
pub fn close_connection_on_server(name: &str) {
    // The broker registers a connection's name a moment after the handshake.
    for _ in 0..50 {
        let output = Command::new("rabbitmqctl")
            .args([
                "list_connections",
                "pid",
                "client_properties",
                "--quiet",
                "--no-table-headers",
            ])
            .output()
            .expect("rabbitmqctl must be installed to close a connection from the server side");
        assert!(
            output.status.success(),
            "rabbitmqctl list_connections failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // Each line is the pid, a tab, then the client properties.
        let listing = String::from_utf8_lossy(&output.stdout);
        let pid = listing
            .lines()
            .find(|line| line.contains(name))
            .and_then(|line| line.split('\t').next())
            .map(str::to_owned);
        if let Some(pid) = pid {
            let status = Command::new("rabbitmqctl")
                .args(["close_connection", &pid, "closed by a trustwire test", "--quiet"])
                .status()
                .unwrap();
            assert!(status.success(), "rabbitmqctl close_connection {pid} failed");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the broker lists no connection named {name}");
}

/// A TCP proxy on 127.0.0.1 in front of the broker, whose connections the
/// test can cut at once.
pub struct Proxy {
    pub url: String,
    accept: JoinHandle<()>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    pub async fn start() -> Self {
        let upstream_url = url::Url::parse(&amqp_url()).unwrap();
        let upstream = format!(
            "{}:{}",
            upstream_url.host_str().unwrap(),
            upstream_url.port().unwrap_or(5672)
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut url = upstream_url.clone();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(port)).unwrap();

        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept_links = Arc::clone(&links);
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let link = tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                accept_links.lock().unwrap().push(link);
            }
        });
        Self {
            url: url.to_string(),
            accept,
            links,
        }
    }

    /// Drops every proxied connection: both sockets close at once, as when
    /// a network link fails.
    pub fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
