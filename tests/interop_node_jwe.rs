//! Sealed-message interop with Node's `jose` 6.2.19 (tests/node, installed
//! from the npm registry by scripts/test.sh), driven through
//! tests/node/jwe_interop.mjs: jose decrypts what we seal, for X25519 and
//! P-256 keys and for fan-out, and we open what jose encrypts. A tampered
//! JWE fails in jose too, so the driver can report a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use trustwire::clock::FixedClock;
use trustwire::jwks::{JwkSet, KeySource, TrustStore};
use trustwire::keys::EncryptionKey;
use trustwire::seal::{Opener, Recipient, Sealer};
use trustwire::{Binding, Expected, ServiceId, Signer, SigningKey, Verifier};

const SCRIPT: &str = "tests/node/jwe_interop.mjs";
const NOW: i64 = 1_800_000_000;
const CHANNEL: &str = "nats:orders.created";
const PAYLOAD: &[u8] = "{\"order\":42,\"note\":\"caf\u{e9}\"}".as_bytes();

/// Sends one request to the jose driver and returns its JSON response.
fn jose(request: &Value) -> Value {
    let mut child = Command::new("node")
        .arg(SCRIPT)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| {
            panic!("cannot start node: {err}; install Node.js 20 or newer (apt-get install nodejs npm)")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("Cannot find package 'jose'") {
        panic!("Node's jose is not installed: run `npm install` in tests/node, or scripts/test.sh, which does it");
    }
    assert!(output.status.success(), "{SCRIPT} failed: {stderr}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| panic!("{SCRIPT} printed invalid JSON: {err}"))
}

fn id(name: &str) -> ServiceId {
    ServiceId::new(name).unwrap()
}

fn channel() -> Binding {
    Binding::channel(CHANNEL).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn orders_signer(key: SigningKey) -> Signer {
    Signer::builder(id("orders"), key)
        .clock(Arc::new(FixedClock::new(NOW)))
        .build()
        .unwrap()
}

fn private_jwk(key: &EncryptionKey) -> Value {
    serde_json::from_str(&key.to_private_jwk()).unwrap()
}

/// Asserts that jose decrypted `response` to PAYLOAD.
fn assert_decrypted(response: &Value, context: &str) {
    assert_eq!(response["ok"], true, "{context}: {response}");
    let plaintext = URL_SAFE_NO_PAD.decode(response["plaintext"].as_str().unwrap()).unwrap();
    assert_eq!(plaintext, PAYLOAD, "{context}");
}

#[test]
fn our_compact_jwe_decrypts_with_jose() {
    for key in [
        EncryptionKey::generate().unwrap(),
        EncryptionKey::generate_p256().unwrap(),
    ] {
        let sealer = Sealer::new(orders_signer(SigningKey::generate().unwrap()));
        let recipients = [Recipient::new(id("payments"), key.public_key().clone())];
        let sealed = sealer.seal(&recipients, channel(), PAYLOAD).unwrap();

        let response = jose(&json!({
            "op": "decrypt",
            "jwe": String::from_utf8(sealed.jwe).unwrap(),
            "jwk": private_jwk(&key),
        }));
        let context = format!("{:?}", key.curve());
        assert_decrypted(&response, &context);
        assert_eq!(response["protectedHeader"]["alg"], "ECDH-ES+A256KW", "{context}");
        assert_eq!(response["protectedHeader"]["enc"], "A256GCM", "{context}");
        assert_eq!(response["protectedHeader"]["kid"], key.kid(), "{context}");
        assert_eq!(response["protectedHeader"]["iss"], "orders", "{context}");
        assert_eq!(response["protectedHeader"]["jti"], sealed.jti.as_str(), "{context}");
    }
}

#[test]
fn our_fan_out_decrypts_with_jose() {
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
    let document: Value = serde_json::from_slice(&sealed.jwe).unwrap();

    for key in &keys {
        let response = jose(&json!({"op": "decrypt", "jwe": document, "jwk": private_jwk(key)}));
        assert_decrypted(&response, key.kid());
        assert_eq!(response["protectedHeader"]["iss"], "orders");
    }

    let stranger = EncryptionKey::generate().unwrap();
    let response = jose(&json!({"op": "decrypt", "jwe": document, "jwk": private_jwk(&stranger)}));
    assert_eq!(response["ok"], false, "{response}");
}

#[test]
fn tampered_jwe_fails_in_jose() {
    let key = EncryptionKey::generate().unwrap();
    let sealer = Sealer::new(orders_signer(SigningKey::generate().unwrap()));
    let recipients = [Recipient::new(id("payments"), key.public_key().clone())];
    let sealed = sealer.seal(&recipients, channel(), PAYLOAD).unwrap();

    let text = String::from_utf8(sealed.jwe).unwrap();
    let mut parts: Vec<String> = text.split('.').map(str::to_owned).collect();
    let mut ciphertext = URL_SAFE_NO_PAD.decode(&parts[3]).unwrap();
    ciphertext[0] ^= 1;
    parts[3] = b64(&ciphertext);

    let response = jose(&json!({"op": "decrypt", "jwe": parts.join("."), "jwk": private_jwk(&key)}));
    assert_eq!(response["ok"], false, "{response}");
    assert_eq!(response["code"], "ERR_JWE_DECRYPTION_FAILED");
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

/// Signs an orders token over a JWE that jose made.
fn token_over(orders_key: &SigningKey, jwe: &[u8], jti: &str) -> String {
    let signer = orders_signer(SigningKey::from_private_jwk(&orders_key.to_private_jwk()).unwrap());
    signer
        .token(id("payments"))
        .binding(channel())
        .payload(jwe)
        .jti(jti)
        .sign()
        .unwrap()
}

#[tokio::test]
async fn jose_compact_jwe_opens_with_us() {
    for key in [
        EncryptionKey::generate().unwrap(),
        EncryptionKey::generate_p256().unwrap(),
    ] {
        let orders_key = SigningKey::generate().unwrap();
        let jti = format!("jose-{}", key.kid());
        let response = jose(&json!({
            "op": "encrypt",
            "jwk": key.public_key().to_jwk(),
            "plaintext": b64(PAYLOAD),
            "protectedHeader": {
                "alg": "ECDH-ES+A256KW",
                "enc": "A256GCM",
                "kid": key.kid(),
                "iss": "orders",
                "jti": jti,
            },
        }));
        let jwe = response["jwe"].as_str().unwrap().as_bytes().to_vec();

        let token = token_over(&orders_key, &jwe, &jti);
        let curve = key.curve();
        let opener = payments_opener(&orders_key, vec![key]);
        let opened = opener
            .open(&token, &Expected::message(channel(), &jwe))
            .await
            .unwrap_or_else(|rejection| panic!("{curve:?}: {rejection}"));
        assert_eq!(opened.plaintext, PAYLOAD);
    }
}

#[tokio::test]
async fn jose_general_json_opens_with_us() {
    let orders_key = SigningKey::generate().unwrap();
    let ours = EncryptionKey::generate_p256().unwrap();
    let other = EncryptionKey::generate().unwrap();
    let jti = "jose-fan-out";
    let response = jose(&json!({
        "op": "encrypt_general",
        "recipients": [other.public_key().to_jwk(), ours.public_key().to_jwk()],
        "plaintext": b64(PAYLOAD),
        "protectedHeader": {"enc": "A256GCM", "iss": "orders", "jti": jti},
    }));
    let jwe = serde_json::to_vec(&response["jwe"]).unwrap();

    let token = token_over(&orders_key, &jwe, jti);
    let opener = payments_opener(&orders_key, vec![ours]);
    let opened = opener.open(&token, &Expected::message(channel(), &jwe)).await.unwrap();
    assert_eq!(opened.plaintext, PAYLOAD);
}
