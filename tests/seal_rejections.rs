//! One test per rejection path of opening a sealed message, each asserting
//! the exact reason code. Every JWE here comes with a token that verifies
//! (signed by a trusted sender over the exact JWE bytes), so each test
//! reaches the JWE check it names.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use josekit::jwe::{ECDH_ES_A256KW, JweHeader};
use josekit::jwk::Jwk;
use serde_json::{Map, Value, json};
use trustwire::clock::FixedClock;
use trustwire::jwks::{JwkSet, KeySource, TrustStore};
use trustwire::keys::EncryptionKey;
use trustwire::seal::{Opener, Recipient, Sealer};
use trustwire::{Binding, Expected, Reason, ServiceId, Signer, SigningKey, Verifier};

const NOW: i64 = 1_800_000_000;
const CHANNEL: &str = "nats:orders.created";
const PAYLOAD: &[u8] = br#"{"order":42}"#;

/// X25519 small-order points (little-endian u): 0, 1, the two points of
/// order 8 and p - 1, as listed in libsodium's `has_small_order`.
const SMALL_ORDER_X25519: [&str; 5] = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
];

fn id(name: &str) -> ServiceId {
    ServiceId::new(name).unwrap()
}

fn channel() -> Binding {
    Binding::channel(CHANNEL).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(text).unwrap()
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn signer(name: &str, key: SigningKey) -> Signer {
    Signer::builder(id(name), key)
        .clock(Arc::new(FixedClock::new(NOW)))
        .build()
        .unwrap()
}

/// payments opens; orders and mallory are trusted senders.
struct Fixture {
    orders: Signer,
    mallory: Signer,
    x25519: EncryptionKey,
    p256: EncryptionKey,
    opener: Opener,
}

static NEXT_JTI: AtomicUsize = AtomicUsize::new(0);

fn fresh_jti() -> String {
    format!("test-jti-{}", NEXT_JTI.fetch_add(1, Ordering::Relaxed))
}

fn fixture() -> Fixture {
    fixture_with(|builder| builder)
}

fn fixture_with(configure: impl FnOnce(trustwire::seal::OpenerBuilder) -> trustwire::seal::OpenerBuilder) -> Fixture {
    let orders_key = SigningKey::generate().unwrap();
    let mallory_key = SigningKey::generate().unwrap();
    let trust = TrustStore::new()
        .trust(
            id("orders"),
            KeySource::inline(JwkSet::from_keys(vec![orders_key.public_key().clone()])),
        )
        .trust(
            id("mallory"),
            KeySource::inline(JwkSet::from_keys(vec![mallory_key.public_key().clone()])),
        );
    let verifier = Verifier::builder(id("payments"), trust)
        .clock(Arc::new(FixedClock::new(NOW)))
        .build()
        .unwrap();

    // The opener owns its keys; the fixture keeps copies rebuilt from the
    // same private JWKs.
    let x25519 = EncryptionKey::generate().unwrap();
    let p256 = EncryptionKey::generate_p256().unwrap();
    let copies = vec![
        EncryptionKey::from_private_jwk(&x25519.to_private_jwk()).unwrap(),
        EncryptionKey::from_private_jwk(&p256.to_private_jwk()).unwrap(),
    ];
    let opener = configure(Opener::builder(verifier, copies)).build().unwrap();

    Fixture {
        orders: signer("orders", orders_key),
        mallory: signer("mallory", mallory_key),
        x25519,
        p256,
        opener,
    }
}

impl Fixture {
    /// Seals a genuine message from orders to `key`.
    fn seal_to(&self, key: &EncryptionKey) -> trustwire::seal::Sealed {
        let sealer = Sealer::new(self.orders.clone());
        let recipients = [Recipient::new(id("payments"), key.public_key().clone())];
        sealer.seal(&recipients, channel(), PAYLOAD).unwrap()
    }

    /// Seals a genuine compact JWE from orders to payments' X25519 key.
    fn compact(&self) -> Compact {
        Compact::parse(&self.seal_to(&self.x25519).jwe)
    }

    /// Signs a valid orders token whose dig covers `jwe`.
    fn token_over(&self, jwe: &[u8], jti: &str) -> String {
        self.orders
            .token(id("payments"))
            .binding(channel())
            .payload(jwe)
            .jti(jti)
            .sign()
            .unwrap()
    }

    /// Opens `jwe` with a valid token over it and returns the rejection.
    async fn reason_of(&self, jwe: &[u8]) -> Reason {
        let token = self.token_over(jwe, &jti_of(jwe).unwrap_or_else(fresh_jti));
        self.reason_with_token(&token, jwe).await
    }

    async fn reason_with_token(&self, token: &str, jwe: &[u8]) -> Reason {
        match self.opener.open(token, &Expected::message(channel(), jwe)).await {
            Ok(opened) => panic!("sealed message was accepted: {opened:?}"),
            Err(rejection) => rejection.reason(),
        }
    }
}

/// Reads the `jti` in the JWE protected header, when there is one.
fn jti_of(jwe: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(jwe).ok()?;
    let protected = if text.starts_with('{') {
        let document: Value = serde_json::from_str(text).ok()?;
        document["protected"].as_str()?.to_owned()
    } else {
        text.split('.').next()?.to_owned()
    };
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(protected).ok()?).ok()?;
    header["jti"].as_str().map(str::to_owned)
}

/// A compact JWE taken apart: the protected header as JSON and the other
/// four parts as bytes, so a test can change one and put it back together.
#[derive(Clone)]
struct Compact {
    header: Map<String, Value>,
    encrypted_key: Vec<u8>,
    iv: Vec<u8>,
    ciphertext: Vec<u8>,
    tag: Vec<u8>,
}

impl Compact {
    fn parse(jwe: &[u8]) -> Self {
        let text = std::str::from_utf8(jwe).unwrap();
        let parts: Vec<&str> = text.split('.').collect();
        assert_eq!(parts.len(), 5);
        Self {
            header: serde_json::from_slice(&unb64(parts[0])).unwrap(),
            encrypted_key: unb64(parts[1]),
            iv: unb64(parts[2]),
            ciphertext: unb64(parts[3]),
            tag: unb64(parts[4]),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let header = Value::Object(self.header.clone()).to_string();
        self.encode_with_header_text(&header)
    }

    fn encode_with_header_text(&self, header: &str) -> Vec<u8> {
        [
            b64(header.as_bytes()),
            b64(&self.encrypted_key),
            b64(&self.iv),
            b64(&self.ciphertext),
            b64(&self.tag),
        ]
        .join(".")
        .into_bytes()
    }

    fn with(mut self, name: &str, value: Value) -> Self {
        self.header.insert(name.into(), value);
        self
    }

    fn without(mut self, name: &str) -> Self {
        self.header.remove(name);
        self
    }
}

/// Seals a genuine fan-out JWE to two X25519 keys (one of them payments') and parses its JSON.
fn general_json(fx: &Fixture) -> Map<String, Value> {
    let other = EncryptionKey::generate().unwrap();
    let sealer = Sealer::new(fx.orders.clone());
    let recipients = [
        Recipient::new(id("payments"), fx.x25519.public_key().clone()),
        Recipient::new(id("billing"), other.public_key().clone()),
    ];
    let sealed = sealer.seal(&recipients, channel(), PAYLOAD).unwrap();
    serde_json::from_slice(&sealed.jwe).unwrap()
}

fn json_bytes(document: &Map<String, Value>) -> Vec<u8> {
    Value::Object(document.clone()).to_string().into_bytes()
}

fn x25519_epk(hex_u: &str) -> Value {
    json!({"kty": "OKP", "crv": "X25519", "x": b64(&hex(hex_u))})
}

fn p256_epk_of(key: &EncryptionKey) -> Value {
    let jwk = key.public_key().to_jwk();
    json!({"kty": "EC", "crv": "P-256", "x": jwk["x"], "y": jwk["y"]})
}

// ---- sizes and shape ----

#[tokio::test]
async fn oversized_jwe_rejected_before_token() {
    let fx = fixture_with(|builder| builder.max_sealed_bytes(64));
    let jwe = fx.compact().encode();
    assert!(jwe.len() > 64);
    // The token is garbage: the size check comes first.
    assert_eq!(fx.reason_with_token("not a token", &jwe).await, Reason::TooLarge);
}

#[tokio::test]
async fn missing_payload_malformed() {
    let fx = fixture();
    let sealed = fx.seal_to(&fx.x25519);
    let rejection = fx
        .opener
        .open(&sealed.token, &Expected::new(channel(), None))
        .await
        .unwrap_err();
    assert_eq!(rejection.reason(), Reason::Malformed);
}

#[tokio::test]
async fn jws_instead_of_jwe_wrong_type() {
    let fx = fixture();
    let jws = fx.orders.token(id("payments")).binding(channel()).sign().unwrap();
    assert_eq!(fx.reason_of(jws.as_bytes()).await, Reason::WrongType);
}

#[tokio::test]
async fn four_segments_malformed() {
    let fx = fixture();
    let jwe = String::from_utf8(fx.compact().encode()).unwrap();
    let four = jwe.rsplit_once('.').unwrap().0;
    assert_eq!(fx.reason_of(four.as_bytes()).await, Reason::Malformed);
}

#[tokio::test]
async fn padded_base64_malformed() {
    let fx = fixture();
    let jwe = String::from_utf8(fx.compact().encode()).unwrap();
    let mut parts: Vec<String> = jwe.split('.').map(str::to_owned).collect();
    parts[2].push_str("==");
    assert_eq!(fx.reason_of(parts.join(".").as_bytes()).await, Reason::Malformed);
}

#[tokio::test]
async fn iv_length_malformed() {
    let fx = fixture();
    let mut compact = fx.compact();
    compact.iv.pop();
    assert_eq!(fx.reason_of(&compact.encode()).await, Reason::Malformed);
}

#[tokio::test]
async fn tag_length_malformed() {
    let fx = fixture();
    let mut compact = fx.compact();
    compact.tag.push(0);
    assert_eq!(fx.reason_of(&compact.encode()).await, Reason::Malformed);
}

#[tokio::test]
async fn encrypted_key_length_malformed() {
    let fx = fixture();
    for length in [0, 8, 32, 39, 41, 48] {
        let mut compact = fx.compact();
        compact.encrypted_key.resize(length, 0xa6);
        assert_eq!(
            fx.reason_of(&compact.encode()).await,
            Reason::Malformed,
            "{length} bytes"
        );
    }
}

#[tokio::test]
async fn duplicate_header_member_malformed() {
    let fx = fixture();
    let compact = fx.compact();
    let header = Value::Object(compact.header.clone()).to_string();
    let duplicated = header.replacen('{', r#"{"enc":"A128GCM","#, 1);
    assert_eq!(
        fx.reason_of(&compact.encode_with_header_text(&duplicated)).await,
        Reason::Malformed
    );
}

#[tokio::test]
async fn oversized_header_too_large() {
    let fx = fixture();
    let compact = fx.compact().with("pad", Value::String("x".repeat(5000)));
    assert_eq!(fx.reason_of(&compact.encode()).await, Reason::TooLarge);
}

#[tokio::test]
async fn missing_kid_malformed() {
    let fx = fixture();
    let compact = fx.compact().without("kid");
    assert_eq!(fx.reason_of(&compact.encode()).await, Reason::Malformed);
}

#[tokio::test]
async fn member_in_two_headers_malformed() {
    let fx = fixture();
    let mut document = general_json(&fx);
    document.insert("unprotected".into(), json!({"enc": "A256GCM"}));
    assert_eq!(fx.reason_of(&json_bytes(&document)).await, Reason::Malformed);
}

#[tokio::test]
async fn duplicate_recipient_kid_malformed() {
    let fx = fixture();
    let mut document = general_json(&fx);
    let entries = document["recipients"].as_array().unwrap().clone();
    let mut second = entries[1].clone();
    second["header"]["kid"] = entries[0]["header"]["kid"].clone();
    document.insert("recipients".into(), Value::Array(vec![entries[0].clone(), second]));
    assert_eq!(fx.reason_of(&json_bytes(&document)).await, Reason::Malformed);
}

#[tokio::test]
async fn flattened_and_general_mixed_malformed() {
    let fx = fixture();
    let mut document = general_json(&fx);
    document.insert("encrypted_key".into(), Value::String(b64(&[0u8; 40])));
    assert_eq!(fx.reason_of(&json_bytes(&document)).await, Reason::Malformed);
}

#[tokio::test]
async fn too_many_recipients_too_large() {
    let fx = fixture();
    let mut document = general_json(&fx);
    let entry = document["recipients"][0].clone();
    let entries: Vec<Value> = (0..65)
        .map(|i| {
            let mut entry = entry.clone();
            entry["header"]["kid"] = Value::String(format!("kid-{i}"));
            entry
        })
        .collect();
    document.insert("recipients".into(), Value::Array(entries));
    assert_eq!(fx.reason_of(&json_bytes(&document)).await, Reason::TooLarge);
}

// ---- algorithms ----

#[tokio::test]
async fn other_key_management_algs_rejected() {
    let fx = fixture();
    for alg in [
        "dir",
        "RSA1_5",
        "RSA-OAEP",
        "RSA-OAEP-256",
        "A256KW",
        "A256GCMKW",
        "ECDH-ES",
        "ECDH-ES+A128KW",
        "ECDH-ES+A192KW",
        "none",
    ] {
        let compact = fx.compact().with("alg", json!(alg));
        assert_eq!(fx.reason_of(&compact.encode()).await, Reason::UnsupportedAlg, "{alg}");
    }
}

#[tokio::test]
async fn dir_with_empty_encrypted_key_unsupported_alg() {
    let fx = fixture();
    let mut compact = fx.compact().with("alg", json!("dir")).without("epk");
    compact.encrypted_key.clear();
    assert_eq!(fx.reason_of(&compact.encode()).await, Reason::UnsupportedAlg);
}

#[tokio::test]
async fn pbes2_unsupported_alg() {
    let fx = fixture();
    for alg in ["PBES2-HS256+A128KW", "PBES2-HS384+A192KW", "PBES2-HS512+A256KW"] {
        let compact = fx
            .compact()
            .with("alg", json!(alg))
            .with("p2s", json!(b64(b"salt-salt-salt-s")))
            .with("p2c", json!(1_000_000_000u64))
            .without("epk");
        assert_eq!(fx.reason_of(&compact.encode()).await, Reason::UnsupportedAlg, "{alg}");
    }
}

#[tokio::test]
async fn missing_alg_unsupported_alg() {
    let fx = fixture();
    let compact = fx.compact().without("alg");
    assert_eq!(fx.reason_of(&compact.encode()).await, Reason::UnsupportedAlg);
}

#[tokio::test]
async fn rsa1_5_in_one_recipient_entry_rejected() {
    let fx = fixture();
    let mut document = general_json(&fx);
    // Move alg out of the protected header into each recipient's header.
    let protected_b64 = document["protected"].as_str().unwrap().to_owned();
    let mut protected: Map<String, Value> = serde_json::from_slice(&unb64(&protected_b64)).unwrap();
    protected.remove("alg");
    document.insert(
        "protected".into(),
        Value::String(b64(Value::Object(protected).to_string().as_bytes())),
    );
    let recipients = document.get_mut("recipients").unwrap().as_array_mut().unwrap();
    recipients[0]["header"]["alg"] = json!("ECDH-ES+A256KW");
    recipients[1]["header"]["alg"] = json!("RSA1_5");
    assert_eq!(fx.reason_of(&json_bytes(&document)).await, Reason::UnsupportedAlg);
}

#[tokio::test]
async fn content_encryptions_other_than_a256gcm_rejected() {
    let fx = fixture();
    for enc in ["A128GCM", "A192GCM", "A128CBC-HS256", "A256CBC-HS512", "none"] {
        let compact = fx.compact().with("enc", json!(enc));
        assert_eq!(fx.reason_of(&compact.encode()).await, Reason::UnsupportedEnc, "{enc}");
    }
}

#[tokio::test]
async fn missing_enc_unsupported_enc() {
    let fx = fixture();
    let compact = fx.compact().without("enc");
    assert_eq!(fx.reason_of(&compact.encode()).await, Reason::UnsupportedEnc);
}

#[tokio::test]
async fn unprotected_enc_unsupported_enc() {
    let fx = fixture();
    let mut document = general_json(&fx);
    let protected_b64 = document["protected"].as_str().unwrap().to_owned();
    let mut protected: Map<String, Value> = serde_json::from_slice(&unb64(&protected_b64)).unwrap();
    protected.remove("enc");
    document.insert(
        "protected".into(),
        Value::String(b64(Value::Object(protected).to_string().as_bytes())),
    );
    document.insert("unprotected".into(), json!({"enc": "A256GCM"}));
    assert_eq!(fx.reason_of(&json_bytes(&document)).await, Reason::UnsupportedEnc);
}

// ---- header members ----

#[tokio::test]
async fn zip_unsupported_header() {
    let fx = fixture();
    let compact = fx.compact().with("zip", json!("DEF"));
    assert_eq!(fx.reason_of(&compact.encode()).await, Reason::UnsupportedHeader);
}

#[tokio::test]
async fn zip_in_recipient_header_unsupported_header() {
    let fx = fixture();
    let mut document = general_json(&fx);
    document.get_mut("recipients").unwrap()[1]["header"]["zip"] = json!("DEF");
    assert_eq!(fx.reason_of(&json_bytes(&document)).await, Reason::UnsupportedHeader);
}

#[tokio::test]
async fn key_and_url_members_unsupported_header() {
    let fx = fixture();
    for (name, value) in [
        ("crit", json!(["exp"])),
        ("jku", json!("https://attacker.invalid/jwks.json")),
        ("jwk", x25519_epk(SMALL_ORDER_X25519[2])),
        ("x5u", json!("https://attacker.invalid/cert.pem")),
        ("x5c", json!(["MIIB"])),
    ] {
        let compact = fx.compact().with(name, value);
        assert_eq!(
            fx.reason_of(&compact.encode()).await,
            Reason::UnsupportedHeader,
            "{name}"
        );
    }
}

#[tokio::test]
async fn aad_member_unsupported_header() {
    let fx = fixture();
    let mut document = general_json(&fx);
    document.insert("aad".into(), json!(b64(b"extra")));
    assert_eq!(fx.reason_of(&json_bytes(&document)).await, Reason::UnsupportedHeader);
}

// ---- recipient key ----

#[tokio::test]
async fn other_services_key_not_a_recipient() {
    let fx = fixture();
    let billing = EncryptionKey::generate().unwrap();
    let jwe = fx.seal_to(&billing).jwe;
    assert_eq!(fx.reason_of(&jwe).await, Reason::NotARecipient);
}

#[tokio::test]
async fn fan_out_without_our_key_not_a_recipient() {
    let fx = fixture();
    let sealer = Sealer::new(fx.orders.clone());
    let recipients = [
        Recipient::new(id("billing"), EncryptionKey::generate().unwrap().public_key().clone()),
        Recipient::new(id("audit"), EncryptionKey::generate().unwrap().public_key().clone()),
    ];
    let jwe = sealer.seal(&recipients, channel(), PAYLOAD).unwrap().jwe;
    assert_eq!(fx.reason_of(&jwe).await, Reason::NotARecipient);
}

// ---- ephemeral key ----

#[tokio::test]
async fn missing_epk_invalid_epk() {
    let fx = fixture();
    let compact = fx.compact().without("epk");
    assert_eq!(fx.reason_of(&compact.encode()).await, Reason::InvalidEpk);
}

#[tokio::test]
async fn epk_not_object_invalid_epk() {
    let fx = fixture();
    let compact = fx
        .compact()
        .with("epk", json!("hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"));
    assert_eq!(fx.reason_of(&compact.encode()).await, Reason::InvalidEpk);
}

#[tokio::test]
async fn small_order_x25519_epk_invalid_epk() {
    let fx = fixture();
    for point in SMALL_ORDER_X25519 {
        let compact = fx.compact().with("epk", x25519_epk(point));
        assert_eq!(fx.reason_of(&compact.encode()).await, Reason::InvalidEpk, "{point}");
    }
}

#[tokio::test]
async fn non_canonical_x25519_epk_invalid_epk() {
    let fx = fixture();
    for point in [
        // p (= 0), p + 1 (= 1) and the base point with bit 255 set.
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0900000000000000000000000000000000000000000000000000000000000080",
    ] {
        let compact = fx.compact().with("epk", x25519_epk(point));
        assert_eq!(fx.reason_of(&compact.encode()).await, Reason::InvalidEpk, "{point}");
    }
}

#[tokio::test]
async fn epk_on_wrong_curve_invalid_epk() {
    let fx = fixture();

    // A P-256 epk for the X25519 key.
    let compact = fx
        .compact()
        .with("epk", p256_epk_of(&EncryptionKey::generate_p256().unwrap()));
    assert_eq!(fx.reason_of(&compact.encode()).await, Reason::InvalidEpk);

    // An X25519 epk for the P-256 key.
    let sealed = fx.seal_to(&fx.p256);
    let ephemeral = EncryptionKey::generate().unwrap().public_key().to_jwk();
    let compact = Compact::parse(&sealed.jwe).with("epk", json!({"kty": "OKP", "crv": "X25519", "x": ephemeral["x"]}));
    assert_eq!(fx.reason_of(&compact.encode()).await, Reason::InvalidEpk);

    // An Ed25519 point where an X25519 one belongs.
    let compact = fx.compact().with(
        "epk",
        json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
    );
    assert_eq!(fx.reason_of(&compact.encode()).await, Reason::InvalidEpk);
}

/// The invalid-curve attack: a P-256 epk that is not on the curve.
#[tokio::test]
async fn off_curve_p256_epk_invalid_epk() {
    let fx = fixture();
    let epk = Compact::parse(&fx.seal_to(&fx.p256).jwe).header["epk"].clone();

    let mut y = unb64(epk["y"].as_str().unwrap());
    y[31] ^= 1;
    let mut off_curve = epk.clone();
    off_curve["y"] = json!(b64(&y));

    // x = p, the field modulus, which is not a field element.
    let mut x_is_p = epk.clone();
    x_is_p["x"] = json!(b64(&hex(
        "ffffffff00000001000000000000000000000000ffffffffffffffffffffffff"
    )));

    let mut origin = epk.clone();
    origin["x"] = json!(b64(&[0u8; 32]));
    origin["y"] = json!(b64(&[0u8; 32]));

    for (name, bad) in [("off curve", off_curve), ("x = p", x_is_p), ("(0, 0)", origin)] {
        let compact = Compact::parse(&fx.seal_to(&fx.p256).jwe).with("epk", bad);
        assert_eq!(fx.reason_of(&compact.encode()).await, Reason::InvalidEpk, "{name}");
    }
}

#[tokio::test]
async fn epk_with_private_member_invalid_epk() {
    let fx = fixture();
    let mut compact = fx.compact();
    compact.header.get_mut("epk").unwrap()["d"] = json!(b64(&[1u8; 32]));
    assert_eq!(fx.reason_of(&compact.encode()).await, Reason::InvalidEpk);
}

#[tokio::test]
async fn epk_of_wrong_length_invalid_epk() {
    let fx = fixture();
    let compact = fx
        .compact()
        .with("epk", json!({"kty": "OKP", "crv": "X25519", "x": b64(&[9u8; 31])}));
    assert_eq!(fx.reason_of(&compact.encode()).await, Reason::InvalidEpk);
}

// ---- decryption ----

#[tokio::test]
async fn flipped_ciphertext_decryption_failed() {
    let fx = fixture();
    let mut compact = fx.compact();
    compact.ciphertext[0] ^= 1;
    assert_eq!(fx.reason_of(&compact.encode()).await, Reason::DecryptionFailed);
}

#[tokio::test]
async fn flipped_tag_decryption_failed() {
    let fx = fixture();
    let mut compact = fx.compact();
    compact.tag[15] ^= 0x80;
    assert_eq!(fx.reason_of(&compact.encode()).await, Reason::DecryptionFailed);
}

#[tokio::test]
async fn flipped_encrypted_key_decryption_failed() {
    let fx = fixture();
    let mut compact = fx.compact();
    compact.encrypted_key[20] ^= 1;
    assert_eq!(fx.reason_of(&compact.encode()).await, Reason::DecryptionFailed);
}

#[tokio::test]
async fn substituted_epk_decryption_failed() {
    let fx = fixture();
    let other = EncryptionKey::generate().unwrap().public_key().to_jwk();
    let compact = fx
        .compact()
        .with("epk", json!({"kty": "OKP", "crv": "X25519", "x": other["x"]}));
    assert_eq!(fx.reason_of(&compact.encode()).await, Reason::DecryptionFailed);
}

#[tokio::test]
async fn changed_header_decryption_failed() {
    let fx = fixture();
    // A new member changes the AES-GCM additional data.
    let compact = fx.compact().with("cty", json!("application/json"));
    assert_eq!(fx.reason_of(&compact.encode()).await, Reason::DecryptionFailed);

    // apu changes the derived key-encryption key as well.
    let compact = fx.compact().with("apu", json!(b64(b"orders")));
    assert_eq!(fx.reason_of(&compact.encode()).await, Reason::DecryptionFailed);
}

// ---- the header binding ----

/// Surreptitious re-signing: mallory takes orders' sealed message and signs
/// it as her own, reusing even the jti. The JWE header still says orders.
#[tokio::test]
async fn resigned_by_other_service_seal_mismatch() {
    let fx = fixture();
    let sealed = fx.seal_to(&fx.x25519);
    let token = fx
        .mallory
        .token(id("payments"))
        .binding(channel())
        .payload(&sealed.jwe)
        .jti(&sealed.jti)
        .sign()
        .unwrap();
    assert_eq!(fx.reason_with_token(&token, &sealed.jwe).await, Reason::SealMismatch);
}

/// The same sender's new token over an old JWE has another jti.
#[tokio::test]
async fn new_token_over_old_jwe_seal_mismatch() {
    let fx = fixture();
    let sealed = fx.seal_to(&fx.x25519);
    let token = fx.token_over(&sealed.jwe, &fresh_jti());
    assert_eq!(fx.reason_with_token(&token, &sealed.jwe).await, Reason::SealMismatch);
}

/// Encrypts with josekit to payments' key, under a header of our choosing.
fn josekit_jwe(fx: &Fixture, claims: &[(&str, Value)]) -> Vec<u8> {
    let public = serde_json::to_vec(&fx.x25519.public_key().to_jwk()).unwrap();
    let encrypter = ECDH_ES_A256KW
        .encrypter_from_jwk(&Jwk::from_bytes(&public).unwrap())
        .unwrap();
    let mut header = JweHeader::new();
    header.set_content_encryption("A256GCM");
    header.set_key_id(fx.x25519.kid());
    for (name, value) in claims {
        header.set_claim(name, Some(value.clone())).unwrap();
    }
    josekit::jwe::serialize_compact(PAYLOAD, &header, &encrypter)
        .unwrap()
        .into_bytes()
}

#[tokio::test]
async fn josekit_jwe_with_binding_opens() {
    // The control for the next test: the same construction with iss and
    // jti set is accepted.
    let fx = fixture();
    let jti = fresh_jti();
    let jwe = josekit_jwe(&fx, &[("iss", json!("orders")), ("jti", json!(jti))]);
    let token = fx.token_over(&jwe, &jti);
    let opened = fx
        .opener
        .open(&token, &Expected::message(channel(), &jwe))
        .await
        .unwrap();
    assert_eq!(opened.plaintext, PAYLOAD);
}

/// Builds the JWE header members of one case from the case's jti.
type HeaderClaims = fn(&str) -> Vec<(&'static str, Value)>;

#[tokio::test]
async fn header_without_iss_or_jti_seal_mismatch() {
    let fx = fixture();
    // Each case has its own jti, the same in the token and (where present)
    // in the header, so only the named difference remains.
    let cases: [(&str, HeaderClaims); 4] = [
        ("no iss", |jti| vec![("jti", json!(jti))]),
        ("no jti", |_| vec![("iss", json!("orders"))]),
        ("other iss", |jti| vec![("iss", json!("mallory")), ("jti", json!(jti))]),
        ("other jti", |_| {
            vec![("iss", json!("orders")), ("jti", json!("another-jti"))]
        }),
    ];
    for (name, claims) in cases {
        let jti = fresh_jti();
        let jwe = josekit_jwe(&fx, &claims(&jti));
        let token = fx.token_over(&jwe, &jti);
        assert_eq!(fx.reason_with_token(&token, &jwe).await, Reason::SealMismatch, "{name}");
    }
}

/// Encrypts a compact JWE to payments' X25519 key under any protected header,
/// built from the primitives (x25519-dalek, SHA-256 Concat KDF, RustCrypto AES-KW
/// and AES-GCM) for headers that josekit refuses to write.
fn raw_jwe(fx: &Fixture, mut protected: Map<String, Value>) -> Vec<u8> {
    use aes_gcm::aead::AeadInPlace;
    use aes_gcm::{Aes256Gcm, KeyInit};
    use sha2::{Digest, Sha256};

    let recipient_x: [u8; 32] = unb64(fx.x25519.public_key().to_jwk()["x"].as_str().unwrap())
        .try_into()
        .unwrap();
    let ephemeral = x25519_dalek::StaticSecret::from([0x42u8; 32]);
    let epk = x25519_dalek::PublicKey::from(&ephemeral);
    let z = ephemeral.diffie_hellman(&x25519_dalek::PublicKey::from(recipient_x));

    // RFC 7518 section 4.6.2 with empty apu and apv.
    let mut kdf = Sha256::new();
    kdf.update(1u32.to_be_bytes());
    kdf.update(z.as_bytes());
    kdf.update(14u32.to_be_bytes());
    kdf.update(b"ECDH-ES+A256KW");
    kdf.update(0u32.to_be_bytes());
    kdf.update(0u32.to_be_bytes());
    kdf.update(256u32.to_be_bytes());
    let kek: [u8; 32] = kdf.finalize().into();

    let cek = [0x17u8; 32];
    let mut encrypted_key = [0u8; 40];
    aes_kw::KekAes256::from(kek).wrap(&cek, &mut encrypted_key).unwrap();

    protected.insert("alg".into(), json!("ECDH-ES+A256KW"));
    protected.insert("enc".into(), json!("A256GCM"));
    protected.insert("kid".into(), json!(fx.x25519.kid()));
    protected.insert(
        "epk".into(),
        json!({"kty": "OKP", "crv": "X25519", "x": b64(epk.as_bytes())}),
    );
    let protected_b64 = b64(Value::Object(protected).to_string().as_bytes());

    let iv = [0x24u8; 12];
    let mut ciphertext = PAYLOAD.to_vec();
    let tag = Aes256Gcm::new_from_slice(&cek)
        .unwrap()
        .encrypt_in_place_detached(&iv.into(), protected_b64.as_bytes(), &mut ciphertext)
        .unwrap();
    [
        protected_b64,
        b64(&encrypted_key),
        b64(&iv),
        b64(&ciphertext),
        b64(&tag),
    ]
    .join(".")
    .into_bytes()
}

#[tokio::test]
async fn raw_jwe_with_binding_opens() {
    // The control for the next test: the same construction with string iss
    // and jti is accepted, so the primitives match ours.
    let fx = fixture();
    let jti = fresh_jti();
    let mut protected = Map::new();
    protected.insert("iss".into(), json!("orders"));
    protected.insert("jti".into(), json!(jti));
    let jwe = raw_jwe(&fx, protected);
    let token = fx.token_over(&jwe, &jti);
    let opened = fx
        .opener
        .open(&token, &Expected::message(channel(), &jwe))
        .await
        .unwrap();
    assert_eq!(opened.plaintext, PAYLOAD);
}

#[tokio::test]
async fn non_string_iss_or_jti_seal_mismatch() {
    let fx = fixture();
    for (name, iss, jti) in [
        ("numeric iss", json!(42), None),
        ("array iss", json!(["orders"]), None),
        ("numeric jti", json!("orders"), Some(json!(7))),
    ] {
        let token_jti = fresh_jti();
        let mut protected = Map::new();
        protected.insert("iss".into(), iss);
        protected.insert("jti".into(), jti.unwrap_or_else(|| json!(token_jti)));
        let jwe = raw_jwe(&fx, protected);
        let token = fx.token_over(&jwe, &token_jti);
        assert_eq!(fx.reason_with_token(&token, &jwe).await, Reason::SealMismatch, "{name}");
    }
}

// ---- the token still comes first ----

#[tokio::test]
async fn token_over_other_jwe_digest_mismatch() {
    let fx = fixture();
    let first = fx.seal_to(&fx.x25519);
    let second = fx.seal_to(&fx.x25519);
    assert_eq!(
        fx.reason_with_token(&first.token, &second.jwe).await,
        Reason::DigestMismatch
    );
}

#[tokio::test]
async fn token_without_dig_digest_mismatch() {
    let fx = fixture();
    let sealed = fx.seal_to(&fx.x25519);
    let token = fx
        .orders
        .token(id("payments"))
        .binding(channel())
        .jti(&sealed.jti)
        .sign()
        .unwrap();
    assert_eq!(fx.reason_with_token(&token, &sealed.jwe).await, Reason::DigestMismatch);
}

/// A verifier may let an issuer omit dig (a gateway's forward-auth tokens);
/// the opener still requires it, because dig binds the token to the JWE.
#[tokio::test]
async fn issuer_allowed_without_dig_still_needs_dig() {
    let orders_key = SigningKey::generate().unwrap();
    let trust = TrustStore::new().trust(
        id("orders"),
        KeySource::inline(JwkSet::from_keys(vec![orders_key.public_key().clone()])),
    );
    let verifier = Verifier::builder(id("payments"), trust)
        .clock(Arc::new(FixedClock::new(NOW)))
        .issuers_without_digest([id("orders")])
        .build()
        .unwrap();
    let payments_key = EncryptionKey::generate().unwrap();
    let recipients = [Recipient::new(id("payments"), payments_key.public_key().clone())];
    let opener = Opener::new(verifier, vec![payments_key]).unwrap();

    let orders = signer("orders", orders_key);
    let sealed = Sealer::new(orders.clone())
        .seal(&recipients, channel(), PAYLOAD)
        .unwrap();
    let token = orders
        .token(id("payments"))
        .binding(channel())
        .jti(&sealed.jti)
        .sign()
        .unwrap();
    let rejection = opener
        .open(&token, &Expected::message(channel(), &sealed.jwe))
        .await
        .unwrap_err();
    assert_eq!(rejection.reason(), Reason::DigestMismatch);
    assert!(rejection.detail().contains("sealed message"), "{}", rejection.detail());
}

#[tokio::test]
async fn token_for_other_audience_wrong_audience() {
    let fx = fixture();
    let sealed = fx.seal_to(&fx.x25519);
    let token = fx
        .orders
        .token(id("billing"))
        .binding(channel())
        .payload(&sealed.jwe)
        .jti(&sealed.jti)
        .sign()
        .unwrap();
    assert_eq!(fx.reason_with_token(&token, &sealed.jwe).await, Reason::WrongAudience);
}

#[tokio::test]
async fn untrusted_sender_unknown_key() {
    let fx = fixture();
    let stranger = signer("stranger", SigningKey::generate().unwrap());
    let sealer = Sealer::new(stranger);
    let recipients = [Recipient::new(id("payments"), fx.x25519.public_key().clone())];
    let sealed = sealer.seal(&recipients, channel(), PAYLOAD).unwrap();
    assert_eq!(
        fx.reason_with_token(&sealed.token, &sealed.jwe).await,
        Reason::UnknownKey
    );
}

#[tokio::test]
async fn new_reason_codes_are_stable() {
    let codes = [
        (Reason::UnsupportedEnc, "unsupported_enc"),
        (Reason::NotARecipient, "not_a_recipient"),
        (Reason::InvalidEpk, "invalid_epk"),
        (Reason::DecryptionFailed, "decryption_failed"),
        (Reason::SealMismatch, "seal_mismatch"),
    ];
    for (reason, code) in codes {
        assert_eq!(reason.code(), code);
        assert!(Reason::ALL.contains(&reason), "{code} is missing from Reason::ALL");
    }
}
