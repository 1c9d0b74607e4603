//! Sealed-message interop with josekit 0.10 (JOSE over OpenSSL): JWEs we
//! seal decrypt with josekit, and JWEs josekit encrypts open with us, for
//! X25519 and P-256 keys, one recipient and several.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use josekit::jwe::{ECDH_ES_A256KW, JweHeader, JweHeaderSet};
use josekit::jwk::Jwk;
use serde_json::json;
use trustwire::clock::FixedClock;
use trustwire::jwks::{JwkSet, KeySource, TrustStore};
use trustwire::keys::EncryptionKey;
use trustwire::seal::{Opener, Recipient, Sealer};
use trustwire::{Binding, Expected, ServiceId, Signer, SigningKey, Verifier};

const NOW: i64 = 1_800_000_000;
const CHANNEL: &str = "amqp:events/orders.created";
const PAYLOAD: &[u8] = "{\"order\":42,\"note\":\"caf\u{e9} \u{2713}\"}".as_bytes();

fn id(name: &str) -> ServiceId {
    ServiceId::new(name).unwrap()
}

fn channel() -> Binding {
    Binding::channel(CHANNEL).unwrap()
}

fn orders_signer(key: SigningKey) -> Signer {
    Signer::builder(id("orders"), key)
        .clock(Arc::new(FixedClock::new(NOW)))
        .build()
        .unwrap()
}

/// Converts one of our JWKs, public or private, to josekit's type.
fn josekit_jwk(jwk: &serde_json::Value) -> Jwk {
    Jwk::from_bytes(serde_json::to_vec(jwk).unwrap()).unwrap()
}

fn private_jwk(key: &EncryptionKey) -> Jwk {
    Jwk::from_bytes(key.to_private_jwk().as_bytes()).unwrap()
}

#[test]
fn our_compact_jwe_decrypts_with_josekit() {
    for key in [
        EncryptionKey::generate().unwrap(),
        EncryptionKey::generate_p256().unwrap(),
    ] {
        let sealer = Sealer::new(orders_signer(SigningKey::generate().unwrap()));
        let recipients = [Recipient::new(id("payments"), key.public_key().clone())];
        let sealed = sealer.seal(&recipients, channel(), PAYLOAD).unwrap();

        let decrypter = ECDH_ES_A256KW.decrypter_from_jwk(&private_jwk(&key)).unwrap();
        let (plaintext, header) =
            josekit::jwe::deserialize_compact(std::str::from_utf8(&sealed.jwe).unwrap(), &decrypter).unwrap();
        assert_eq!(plaintext, PAYLOAD, "{:?}", key.curve());
        assert_eq!(header.algorithm(), Some("ECDH-ES+A256KW"));
        assert_eq!(header.content_encryption(), Some("A256GCM"));
        assert_eq!(header.key_id(), Some(key.kid()));
        assert_eq!(header.claim("iss"), Some(&json!("orders")));
        assert_eq!(header.claim("jti"), Some(&json!(sealed.jti)));
    }
}

#[test]
fn our_fan_out_decrypts_with_josekit() {
    let keys = [
        EncryptionKey::generate().unwrap(),
        EncryptionKey::generate_p256().unwrap(),
        EncryptionKey::generate().unwrap(),
    ];
    let recipients: Vec<Recipient> = keys
        .iter()
        .zip(["payments", "billing", "audit"])
        .map(|(key, name)| Recipient::new(id(name), key.public_key().clone()))
        .collect();
    let sealer = Sealer::new(orders_signer(SigningKey::generate().unwrap()));
    let sealed = sealer.seal(&recipients, channel(), PAYLOAD).unwrap();

    for key in &keys {
        // decrypter_from_jwk takes the kid from the JWK, so josekit picks
        // this key's recipient entry.
        let decrypter = ECDH_ES_A256KW.decrypter_from_jwk(&private_jwk(key)).unwrap();
        let (plaintext, header) =
            josekit::jwe::deserialize_json(std::str::from_utf8(&sealed.jwe).unwrap(), &decrypter).unwrap();
        assert_eq!(plaintext, PAYLOAD, "{}", key.kid());
        assert_eq!(header.key_id(), Some(key.kid()));
        assert_eq!(header.claim("iss"), Some(&json!("orders")));
    }
}

/// Builds the opener of payments, which trusts orders and owns `keys`.
fn payments_opener(orders_key: &SigningKey, keys: Vec<EncryptionKey>) -> Opener {
    let trust = TrustStore::new().trust(
        id("orders"),
        KeySource::inline(JwkSet::from_keys(vec![orders_key.public_key().clone()])),
    );
    let verifier = Verifier::builder(id("payments"), trust)
        .clock(Arc::new(FixedClock::new(NOW)))
        .build()
        .unwrap();
    Opener::new(verifier, keys).unwrap()
}

/// Signs an orders token over a JWE that another library made.
fn token_over(signer: &Signer, jwe: &[u8], jti: &str) -> String {
    signer
        .token(id("payments"))
        .binding(channel())
        .payload(jwe)
        .jti(jti)
        .sign()
        .unwrap()
}

#[tokio::test]
async fn josekit_compact_jwe_opens_with_us() {
    for key in [
        EncryptionKey::generate().unwrap(),
        EncryptionKey::generate_p256().unwrap(),
    ] {
        let orders_key = SigningKey::generate().unwrap();
        let encrypter = ECDH_ES_A256KW
            .encrypter_from_jwk(&josekit_jwk(&key.public_key().to_jwk()))
            .unwrap();
        let jti = format!("josekit-{}", key.kid());
        let mut header = JweHeader::new();
        header.set_content_encryption("A256GCM");
        header.set_key_id(key.kid());
        header.set_issuer("orders");
        header.set_claim("jti", Some(json!(jti))).unwrap();
        let jwe = josekit::jwe::serialize_compact(PAYLOAD, &header, &encrypter).unwrap();

        let signer = orders_signer(SigningKey::from_private_jwk(&orders_key.to_private_jwk()).unwrap());
        let token = token_over(&signer, jwe.as_bytes(), &jti);
        let curve = key.curve();
        let opener = payments_opener(&orders_key, vec![key]);
        let opened = opener
            .open(&token, &Expected::message(channel(), jwe.as_bytes()))
            .await
            .unwrap_or_else(|rejection| panic!("{curve:?}: {rejection}"));
        assert_eq!(opened.plaintext, PAYLOAD);
    }
}

#[tokio::test]
async fn josekit_general_json_opens_with_us() {
    let orders_key = SigningKey::generate().unwrap();
    let ours = EncryptionKey::generate().unwrap();
    let other = EncryptionKey::generate_p256().unwrap();

    let jti = "josekit-fan-out";
    let mut shared = JweHeaderSet::new();
    shared.set_algorithm("ECDH-ES+A256KW", true);
    shared.set_content_encryption("A256GCM", true);
    shared.set_issuer("orders", true);
    shared.set_claim("jti", Some(json!(jti)), true).unwrap();

    let encrypters = [
        ECDH_ES_A256KW
            .encrypter_from_jwk(&josekit_jwk(&other.public_key().to_jwk()))
            .unwrap(),
        ECDH_ES_A256KW
            .encrypter_from_jwk(&josekit_jwk(&ours.public_key().to_jwk()))
            .unwrap(),
    ];
    let mut headers = [JweHeader::new(), JweHeader::new()];
    headers[0].set_key_id(other.kid());
    headers[1].set_key_id(ours.kid());
    let recipients = [
        (Some(&headers[0]), &encrypters[0] as &dyn josekit::jwe::JweEncrypter),
        (Some(&headers[1]), &encrypters[1] as &dyn josekit::jwe::JweEncrypter),
    ];
    let jwe = josekit::jwe::serialize_general_json(PAYLOAD, Some(&shared), &recipients, None).unwrap();

    let signer = orders_signer(SigningKey::from_private_jwk(&orders_key.to_private_jwk()).unwrap());
    let token = token_over(&signer, jwe.as_bytes(), jti);
    let opener = payments_opener(&orders_key, vec![ours]);
    let opened = opener
        .open(&token, &Expected::message(channel(), jwe.as_bytes()))
        .await
        .unwrap();
    assert_eq!(opened.plaintext, PAYLOAD);
}
