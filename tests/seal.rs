//! Sealed messages end to end: seal with one service's keys, open with
//! another's, for one recipient and for a fan-out to several, with keys
//! from key directories and from a JWKS served over loopback HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use trustwire::clock::FixedClock;
use trustwire::envelope::payload_digest;
use trustwire::jwks::{JwkSet, JwksPublisher, KeySource, RemoteJwks, TrustStore};
use trustwire::keys::{EncryptionCurve, EncryptionKey};
use trustwire::seal::{Opener, OpenerConfigError, Recipient, RecipientDirectory, SealError, Sealer};
use trustwire::{Audience, Binding, Expected, KeyDir, Reason, ServiceId, Signer, SigningKey, Verifier};

const NOW: i64 = 1_800_000_000;
const CHANNEL: &str = "nats:orders.created";
const PAYLOAD: &[u8] = br#"{"order":42,"card":"4111 1111 1111 1111"}"#;

fn id(name: &str) -> ServiceId {
    ServiceId::new(name).unwrap()
}

fn channel() -> Binding {
    Binding::channel(CHANNEL).unwrap()
}

/// A sending service: its signing key and the public set receivers trust.
struct Sender {
    sealer: Sealer,
    jwks: JwkSet,
}

fn sender(name: &str) -> Sender {
    let key = SigningKey::generate().unwrap();
    let jwks = JwkSet::from_keys(vec![key.public_key().clone()]);
    let signer = Signer::builder(id(name), key)
        .clock(Arc::new(FixedClock::new(NOW)))
        .build()
        .unwrap();
    Sender {
        sealer: Sealer::new(signer),
        jwks,
    }
}

/// Builds an opener for `service` that trusts `senders` and decrypts with `keys`.
fn opener(service: &str, senders: &[(&str, &Sender)], keys: Vec<EncryptionKey>) -> Opener {
    let mut trust = TrustStore::new();
    for (name, sender) in senders {
        trust = trust.trust(id(name), KeySource::inline(sender.jwks.clone()));
    }
    let verifier = Verifier::builder(id(service), trust)
        .clock(Arc::new(FixedClock::new(NOW)))
        .build()
        .unwrap();
    Opener::new(verifier, keys).unwrap()
}

fn recipient(service: &str, key: &EncryptionKey) -> Recipient {
    Recipient::new(id(service), key.public_key().clone())
}

#[tokio::test]
async fn x25519_round_trip() {
    let orders = sender("orders");
    let payments_key = EncryptionKey::generate().unwrap();
    let payments_kid = payments_key.kid().to_owned();
    let sealed = orders
        .sealer
        .seal(&[recipient("payments", &payments_key)], channel(), PAYLOAD)
        .unwrap();

    let opener = opener("payments", &[("orders", &orders)], vec![payments_key]);
    let opened = opener
        .open(&sealed.token, &Expected::message(channel(), &sealed.jwe))
        .await
        .unwrap();
    assert_eq!(opened.plaintext, PAYLOAD);
    assert_eq!(opened.verified.claims.iss, "orders");
    assert_eq!(opened.verified.claims.jti, sealed.jti);
    assert_eq!(opened.enc_kid, payments_kid);
}

#[tokio::test]
async fn p256_recipient_round_trip() {
    let orders = sender("orders");
    let payments_key = EncryptionKey::generate_p256().unwrap();
    let sealed = orders
        .sealer
        .seal(&[recipient("payments", &payments_key)], channel(), PAYLOAD)
        .unwrap();

    let header = compact_header(&sealed.jwe);
    assert_eq!(header["epk"]["crv"], "P-256");

    let opener = opener("payments", &[("orders", &orders)], vec![payments_key]);
    let opened = opener
        .open(&sealed.token, &Expected::message(channel(), &sealed.jwe))
        .await
        .unwrap();
    assert_eq!(opened.plaintext, PAYLOAD);
}

fn compact_header(jwe: &[u8]) -> Value {
    let text = std::str::from_utf8(jwe).unwrap();
    let header_b64 = text.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header_b64).unwrap()).unwrap()
}

#[tokio::test]
async fn wire_format_of_one_recipient() {
    let orders = sender("orders");
    let payments_key = EncryptionKey::generate().unwrap();
    let sealed = orders
        .sealer
        .seal(&[recipient("payments", &payments_key)], channel(), PAYLOAD)
        .unwrap();

    let text = std::str::from_utf8(&sealed.jwe).unwrap();
    let segments: Vec<&str> = text.split('.').collect();
    assert_eq!(segments.len(), 5, "compact serialization");
    assert_eq!(
        URL_SAFE_NO_PAD.decode(segments[1]).unwrap().len(),
        40,
        "A256KW-wrapped key"
    );
    assert_eq!(URL_SAFE_NO_PAD.decode(segments[2]).unwrap().len(), 12, "GCM nonce");
    assert_eq!(URL_SAFE_NO_PAD.decode(segments[4]).unwrap().len(), 16, "GCM tag");

    let header = compact_header(&sealed.jwe);
    assert_eq!(header["alg"], "ECDH-ES+A256KW");
    assert_eq!(header["enc"], "A256GCM");
    assert_eq!(header["kid"], payments_key.kid());
    assert_eq!(header["iss"], "orders");
    assert_eq!(header["jti"], sealed.jti.as_str());
    assert_eq!(header["epk"]["kty"], "OKP");
    assert_eq!(header["epk"]["crv"], "X25519");
    assert!(header.get("zip").is_none());

    let claims = token_claims(&sealed.token);
    assert_eq!(claims["dig"], payload_digest(&sealed.jwe));
    assert_eq!(claims["jti"], sealed.jti.as_str());
    assert_eq!(claims["aud"], "payments");
    assert_eq!(claims["chn"], CHANNEL);

    let needle = b"4111";
    assert!(!sealed.jwe.windows(needle.len()).any(|window| window == needle));
    assert!(!sealed.token.contains("4111"));
}

fn token_claims(token: &str) -> Value {
    let claims_b64 = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims_b64).unwrap()).unwrap()
}

#[tokio::test]
async fn fan_out_opens_for_every_recipient() {
    let orders = sender("orders");
    let keys = [
        ("payments", EncryptionKey::generate().unwrap()),
        ("billing", EncryptionKey::generate_p256().unwrap()),
        ("audit", EncryptionKey::generate().unwrap()),
    ];
    let recipients: Vec<Recipient> = keys.iter().map(|(name, key)| recipient(name, key)).collect();
    let sealed = orders.sealer.seal(&recipients, channel(), PAYLOAD).unwrap();

    let document: Value = serde_json::from_slice(&sealed.jwe).unwrap();
    let entries = document["recipients"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "one recipient entry each");
    for ((_, key), entry) in keys.iter().zip(entries) {
        assert_eq!(entry["header"]["kid"], key.kid());
        assert_eq!(entry["header"]["epk"]["crv"], key.curve().name());
    }
    let protected: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(document["protected"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(protected["iss"], "orders");
    assert_eq!(protected["jti"], sealed.jti.as_str());
    assert!(protected.get("kid").is_none(), "kid is per recipient");

    let claims = token_claims(&sealed.token);
    assert_eq!(claims["aud"], serde_json::json!(["payments", "billing", "audit"]));

    for (name, key) in keys {
        let opener = opener(name, &[("orders", &orders)], vec![key]);
        let opened = opener
            .open(&sealed.token, &Expected::message(channel(), &sealed.jwe))
            .await
            .unwrap_or_else(|rejection| panic!("{name}: {rejection}"));
        assert_eq!(opened.plaintext, PAYLOAD, "{name}");
    }
}

#[tokio::test]
async fn subject_and_ttl_reach_token() {
    let orders = sender("orders");
    let payments_key = EncryptionKey::generate().unwrap();
    let recipients = [recipient("payments", &payments_key)];
    let sealed = orders
        .sealer
        .message(&recipients, channel())
        .subject("user-7")
        .ttl(Duration::from_secs(120))
        .seal(PAYLOAD)
        .unwrap();

    let claims = token_claims(&sealed.token);
    assert_eq!(claims["sub"], "user-7");
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 120);

    let opener = opener("payments", &[("orders", &orders)], vec![payments_key]);
    let opened = opener
        .open(&sealed.token, &Expected::message(channel(), &sealed.jwe))
        .await
        .unwrap();
    assert_eq!(opened.verified.claims.sub.as_deref(), Some("user-7"));
}

#[tokio::test]
async fn second_open_is_replayed() {
    let orders = sender("orders");
    let payments_key = EncryptionKey::generate().unwrap();
    let sealed = orders
        .sealer
        .seal(&[recipient("payments", &payments_key)], channel(), PAYLOAD)
        .unwrap();
    let opener = opener("payments", &[("orders", &orders)], vec![payments_key]);
    let expected = Expected::message(channel(), &sealed.jwe);

    opener.open(&sealed.token, &expected).await.unwrap();
    let rejection = opener.open(&sealed.token, &expected).await.unwrap_err();
    assert_eq!(rejection.reason(), Reason::Replayed);
}

#[tokio::test]
async fn http_binding_round_trip() {
    let orders = sender("orders");
    let payments_key = EncryptionKey::generate().unwrap();
    let binding = Binding::http("POST", "/v1/charges").unwrap();
    let sealed = orders
        .sealer
        .seal(&[recipient("payments", &payments_key)], binding.clone(), PAYLOAD)
        .unwrap();
    let opener = opener("payments", &[("orders", &orders)], vec![payments_key]);
    let opened = opener
        .open(&sealed.token, &Expected::new(binding, Some(&sealed.jwe)))
        .await
        .unwrap();
    assert_eq!(opened.plaintext, PAYLOAD);
}

#[tokio::test]
async fn key_directories_seal_and_open() {
    let tmp = tempfile::tempdir().unwrap();
    let orders_dir = KeyDir::create(&tmp.path().join("orders"), id("orders")).unwrap();
    let payments_dir = KeyDir::create(&tmp.path().join("payments"), id("payments")).unwrap();

    // Each side reads only the other's published jwks.json.
    let orders_jwks = JwkSet::parse(&std::fs::read(orders_dir.jwks_path()).unwrap()).unwrap();
    let payments_jwks = JwkSet::parse(&std::fs::read(payments_dir.jwks_path()).unwrap()).unwrap();

    let sealer = Sealer::new(Signer::new(id("orders"), orders_dir.into_active_key()));
    let recipients = [Recipient::from_jwks(id("payments"), &payments_jwks).unwrap()];
    let sealed = sealer.seal(&recipients, channel(), PAYLOAD).unwrap();

    let (_, payments_keys) = payments_dir.into_keys();
    let trust = TrustStore::new().trust(id("orders"), KeySource::inline(orders_jwks));
    let verifier = Verifier::builder(id("payments"), trust).build().unwrap();
    let opener = Opener::new(verifier, payments_keys).unwrap();
    let opened = opener
        .open(&sealed.token, &Expected::message(channel(), &sealed.jwe))
        .await
        .unwrap();
    assert_eq!(opened.plaintext, PAYLOAD);
}

#[tokio::test]
async fn recipient_key_from_served_jwks() {
    let payments_key = EncryptionKey::generate().unwrap();
    let payments_jwks = JwkSet::default().with_encryption_keys(vec![payments_key.public_key().clone()]);
    let publisher = JwksPublisher::new(&payments_jwks);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, publisher.router()).await });

    let url = format!("http://{address}/.well-known/jwks.json");
    let source = KeySource::Remote(RemoteJwks::builder(url).build().unwrap());
    let directory = RecipientDirectory::new().add(id("payments"), source);
    let recipients = directory.resolve(&Audience::one(id("payments"))).await.unwrap();
    server.abort();

    assert_eq!(recipients.len(), 1);
    assert_eq!(recipients[0].key().kid(), payments_key.kid());
    assert_eq!(recipients[0].key().curve(), EncryptionCurve::X25519);
}

#[tokio::test]
async fn directory_rejects_unknown_service() {
    let directory = RecipientDirectory::new();
    let err = directory.resolve(&Audience::one(id("payments"))).await.unwrap_err();
    assert!(
        matches!(err, SealError::UnknownRecipient(ref service) if service.as_str() == "payments"),
        "{err:?}"
    );
}

#[test]
fn set_without_encryption_key_rejected() {
    let signing_only = JwkSet::from_keys(vec![SigningKey::generate().unwrap().public_key().clone()]);
    let err = Recipient::from_jwks(id("payments"), &signing_only).unwrap_err();
    assert!(matches!(err, SealError::NoEncryptionKey(_)), "{err:?}");
}

#[test]
fn recipient_list_checked() {
    let orders = sender("orders");
    let key = EncryptionKey::generate().unwrap();
    let other = EncryptionKey::generate().unwrap();

    let err = orders.sealer.seal(&[], channel(), PAYLOAD).unwrap_err();
    assert!(matches!(err, SealError::NoRecipients), "{err:?}");

    let twice = [recipient("payments", &key), recipient("payments", &other)];
    let err = orders.sealer.seal(&twice, channel(), PAYLOAD).unwrap_err();
    assert!(matches!(err, SealError::DuplicateRecipient(_)), "{err:?}");

    let shared_key = [recipient("payments", &key), recipient("billing", &key)];
    let err = orders.sealer.seal(&shared_key, channel(), PAYLOAD).unwrap_err();
    assert!(matches!(err, SealError::DuplicateKey(_)), "{err:?}");

    let many: Vec<Recipient> = (0..65)
        .map(|i| recipient(&format!("svc{i}"), &EncryptionKey::generate().unwrap()))
        .collect();
    let err = orders.sealer.seal(&many, channel(), PAYLOAD).unwrap_err();
    assert!(matches!(err, SealError::TooManyRecipients(65)), "{err:?}");
}

#[test]
fn opener_configuration_checked() {
    let orders = sender("orders");
    let verifier = || {
        let trust = TrustStore::new().trust(id("orders"), KeySource::inline(orders.jwks.clone()));
        Verifier::builder(id("payments"), trust).build().unwrap()
    };

    let err = Opener::new(verifier(), Vec::new()).unwrap_err();
    assert!(matches!(err, OpenerConfigError::NoKeys), "{err:?}");

    let seed = [7u8; 32];
    let twice = vec![
        EncryptionKey::from_x25519_bytes(&seed).unwrap(),
        EncryptionKey::from_x25519_bytes(&seed).unwrap(),
    ];
    let err = Opener::new(verifier(), twice).unwrap_err();
    assert!(matches!(err, OpenerConfigError::DuplicateKid(_)), "{err:?}");

    let err = Opener::builder(verifier(), vec![EncryptionKey::generate().unwrap()])
        .max_sealed_bytes(0)
        .build()
        .unwrap_err();
    assert!(matches!(err, OpenerConfigError::ZeroLimit), "{err:?}");
}

#[tokio::test]
async fn retired_key_still_opens() {
    let orders = sender("orders");
    let old_key = EncryptionKey::generate().unwrap();
    let new_key = EncryptionKey::generate().unwrap();
    let sealed = orders
        .sealer
        .seal(&[recipient("payments", &old_key)], channel(), PAYLOAD)
        .unwrap();

    let opener = opener("payments", &[("orders", &orders)], vec![new_key, old_key]);
    let opened = opener
        .open(&sealed.token, &Expected::message(channel(), &sealed.jwe))
        .await
        .unwrap();
    assert_eq!(opened.plaintext, PAYLOAD);
}
