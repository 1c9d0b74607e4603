//! Sealed-message interop with Python's joserfc 1.8.0 (tests/python/.venv,
//! installed from PyPI by scripts/test.sh), driven through
//! tests/python/jwe_interop.py. joserfc decrypts what we seal, for X25519
//! and P-256 keys and for fan-out. We open what joserfc encrypts, also
//! under a token that joserfc signs, as a Python sender would. A tampered
//! JWE fails in joserfc too, so the driver can report a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use trustwire::clock::FixedClock;
use trustwire::envelope::payload_digest;
use trustwire::jwks::{JwkSet, KeySource, TrustStore};
use trustwire::keys::EncryptionKey;
use trustwire::seal::{Opener, Recipient, Sealer};
use trustwire::{Binding, Expected, Reason, ServiceId, Signer, SigningKey, Verifier};

const PYTHON: &str = "tests/python/.venv/bin/python";
const JWE_SCRIPT: &str = "tests/python/jwe_interop.py";
const JWS_SCRIPT: &str = "tests/python/joserfc_interop.py";
const NOW: i64 = 1_800_000_000;
const CHANNEL: &str = "nats:orders.created";
const PAYLOAD: &[u8] = "{\"order\":42,\"note\":\"caf\u{e9}\"}".as_bytes();

/// Sends one request to a joserfc driver script and returns its JSON response.
fn joserfc(script: &str, request: &Value) -> Value {
    let mut child = Command::new(PYTHON)
        .arg(script)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| {
            panic!(
                "cannot start {PYTHON}: {err}; run scripts/test.sh, which creates it with joserfc, or: python3 -m venv tests/python/.venv && tests/python/.venv/bin/pip install -r tests/python/requirements.txt"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("No module named 'joserfc'") {
        panic!(
            "joserfc is not installed: run tests/python/.venv/bin/pip install -r tests/python/requirements.txt, or scripts/test.sh, which does it"
        );
    }
    assert!(output.status.success(), "{script} failed: {stderr}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| panic!("{script} printed invalid JSON: {err}"))
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

/// Asserts that joserfc decrypted `response` to PAYLOAD.
fn assert_decrypted(response: &Value, context: &str) {
    assert_eq!(response["ok"], true, "{context}: {response}");
    let plaintext = URL_SAFE_NO_PAD.decode(response["plaintext"].as_str().unwrap()).unwrap();
    assert_eq!(plaintext, PAYLOAD, "{context}");
}

#[test]
fn our_compact_jwe_decrypts_in_joserfc() {
    for key in [
        EncryptionKey::generate().unwrap(),
        EncryptionKey::generate_p256().unwrap(),
    ] {
        let sealer = Sealer::new(orders_signer(SigningKey::generate().unwrap()));
        let recipients = [Recipient::new(id("payments"), key.public_key().clone())];
        let sealed = sealer.seal(&recipients, channel(), PAYLOAD).unwrap();

        let response = joserfc(
            JWE_SCRIPT,
            &json!({
                "op": "decrypt",
                "jwe": String::from_utf8(sealed.jwe).unwrap(),
                "jwk": private_jwk(&key),
            }),
        );
        let context = format!("{:?}", key.curve());
        assert_decrypted(&response, &context);
        assert_eq!(response["protected"]["alg"], "ECDH-ES+A256KW", "{context}");
        assert_eq!(response["protected"]["enc"], "A256GCM", "{context}");
        assert_eq!(response["protected"]["kid"], key.kid(), "{context}");
        assert_eq!(response["protected"]["iss"], "orders", "{context}");
        assert_eq!(response["protected"]["jti"], sealed.jti.as_str(), "{context}");
    }
}

#[test]
fn our_fan_out_decrypts_in_joserfc() {
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
        let response = joserfc(
            JWE_SCRIPT,
            &json!({"op": "decrypt", "jwe": document, "jwk": private_jwk(key)}),
        );
        assert_decrypted(&response, key.kid());
        assert_eq!(response["protected"]["iss"], "orders");
        assert_eq!(response["protected"]["jti"], sealed.jti.as_str());
    }

    // Another X25519 key under the first recipient's kid: joserfc picks
    // that entry and fails to unwrap the content key.
    let mut stranger = private_jwk(&EncryptionKey::generate().unwrap());
    stranger["kid"] = json!(keys[0].kid());
    let response = joserfc(JWE_SCRIPT, &json!({"op": "decrypt", "jwe": document, "jwk": stranger}));
    assert_eq!(response["ok"], false, "{response}");
    assert_eq!(response["error"], "DecodeError", "{response}");
}

#[test]
fn tampered_jwe_fails_in_joserfc() {
    let key = EncryptionKey::generate().unwrap();
    let sealer = Sealer::new(orders_signer(SigningKey::generate().unwrap()));
    let recipients = [Recipient::new(id("payments"), key.public_key().clone())];
    let sealed = sealer.seal(&recipients, channel(), PAYLOAD).unwrap();

    let text = String::from_utf8(sealed.jwe).unwrap();
    let mut parts: Vec<String> = text.split('.').map(str::to_owned).collect();
    let mut ciphertext = URL_SAFE_NO_PAD.decode(&parts[3]).unwrap();
    ciphertext[0] ^= 1;
    parts[3] = b64(&ciphertext);

    let response = joserfc(
        JWE_SCRIPT,
        &json!({"op": "decrypt", "jwe": parts.join("."), "jwk": private_jwk(&key)}),
    );
    assert_eq!(response["ok"], false, "{response}");
    assert_eq!(response["error"], "DecodeError", "{response}");
}

/// Builds the opener of payments, which trusts `orders_keys` for orders
/// and owns `keys`.
fn payments_opener(orders_keys: JwkSet, keys: Vec<EncryptionKey>) -> Opener {
    let trust = TrustStore::new().trust(id("orders"), KeySource::inline(orders_keys));
    let verifier = Verifier::builder(id("payments"), trust)
        .clock(Arc::new(FixedClock::new(NOW)))
        .build()
        .unwrap();
    Opener::new(verifier, keys).unwrap()
}

/// Signs an orders token over a JWE that joserfc made.
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

/// Has joserfc seal PAYLOAD in compact form to `key`.
fn joserfc_compact(key: &EncryptionKey, jti: &str) -> Vec<u8> {
    let response = joserfc(
        JWE_SCRIPT,
        &json!({
            "op": "encrypt",
            "jwk": key.public_key().to_jwk(),
            "plaintext": b64(PAYLOAD),
            "protected": {
                "alg": "ECDH-ES+A256KW",
                "enc": "A256GCM",
                "kid": key.kid(),
                "iss": "orders",
                "jti": jti,
            },
        }),
    );
    response["jwe"].as_str().unwrap().as_bytes().to_vec()
}

#[tokio::test]
async fn joserfc_compact_jwe_opens_with_us() {
    for key in [
        EncryptionKey::generate().unwrap(),
        EncryptionKey::generate_p256().unwrap(),
    ] {
        let orders_key = SigningKey::generate().unwrap();
        let jti = format!("joserfc-{}", key.kid());
        let jwe = joserfc_compact(&key, &jti);

        let token = token_over(&orders_key, &jwe, &jti);
        let curve = key.curve();
        let opener = payments_opener(JwkSet::from_keys(vec![orders_key.public_key().clone()]), vec![key]);
        let opened = opener
            .open(&token, &Expected::message(channel(), &jwe))
            .await
            .unwrap_or_else(|rejection| panic!("{curve:?}: {rejection}"));
        assert_eq!(opened.plaintext, PAYLOAD);
    }
}

#[tokio::test]
async fn joserfc_general_json_opens_with_us() {
    let orders_key = SigningKey::generate().unwrap();
    let ours = EncryptionKey::generate_p256().unwrap();
    let other = EncryptionKey::generate().unwrap();
    let jti = "joserfc-fan-out";
    let response = joserfc(
        JWE_SCRIPT,
        &json!({
            "op": "encrypt_general",
            "recipients": [other.public_key().to_jwk(), ours.public_key().to_jwk()],
            "plaintext": b64(PAYLOAD),
            "protected": {"enc": "A256GCM", "iss": "orders", "jti": jti},
        }),
    );
    let jwe = serde_json::to_vec(&response["jwe"]).unwrap();

    let token = token_over(&orders_key, &jwe, jti);
    let opener = payments_opener(JwkSet::from_keys(vec![orders_key.public_key().clone()]), vec![ours]);
    let opened = opener.open(&token, &Expected::message(channel(), &jwe)).await.unwrap();
    assert_eq!(opened.plaintext, PAYLOAD);
}

/// A Python sender end to end: joserfc seals the payload and signs the
/// token over the JWE with its own Ed25519 key, which payments trusts for
/// orders.
#[tokio::test]
async fn joserfc_sender_sealed_message_opens() {
    let key = EncryptionKey::generate().unwrap();
    let jti = "joserfc-sender";
    let jwe = joserfc_compact(&key, jti);

    let claims = json!({
        "iss": "orders",
        "aud": "payments",
        "iat": NOW,
        "exp": NOW + 60,
        "jti": jti,
        "chn": CHANNEL,
        "dig": payload_digest(&jwe),
    });
    let signed = joserfc(JWS_SCRIPT, &json!({"op": "sign", "alg": "Ed25519", "claims": claims}));
    let token = signed["token"].as_str().unwrap();
    let orders_keys = JwkSet::parse(json!({ "keys": [signed["jwk"]] }).to_string().as_bytes()).unwrap();
    let opener = payments_opener(orders_keys, vec![key]);

    let opened = opener.open(token, &Expected::message(channel(), &jwe)).await.unwrap();
    assert_eq!(opened.plaintext, PAYLOAD);
    assert_eq!(opened.verified.claims.iss, "orders");

    // The same token over a JWE that joserfc sealed again: the digest no
    // longer matches.
    let resealed = joserfc_compact(&EncryptionKey::generate().unwrap(), jti);
    let rejection = opener
        .open(token, &Expected::message(channel(), &resealed))
        .await
        .unwrap_err();
    assert_eq!(rejection.reason(), Reason::DigestMismatch);
}
