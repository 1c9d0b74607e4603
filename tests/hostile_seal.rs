//! Sealed-message (JWE) attack inputs from public advisories, fed to a real
//! `Opener` whose sender keys come from a JWKS server on 127.0.0.1 that
//! counts requests. Each case carries a token that verifies, because its
//! `dig` covers the JWE, so the JWE itself is what gets rejected. Each case
//! asserts the exact reason code, no request and a time bound.
//!
//! The epk cases (off the curve, on the wrong curve, small-order X25519)
//! are in `tests/seal_rejections.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use axum::extract::Request;
use axum::middleware::{self, Next};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use trustwire::jwks::{JWKS_PATH, JwkSet, JwksPublisher, KeySource, RemoteJwks, TrustStore};
use trustwire::keys::EncryptionKey;
use trustwire::seal::Opener;
use trustwire::{Binding, Expected, Reason, ServiceId, Signer, SigningKey, Verifier};

const CHANNEL: &str = "nats:orders.created";
const CASE_TIME_LIMIT: Duration = Duration::from_secs(1);
/// What the zip bomb inflates to: at least 64 MiB.
const BOMB_BYTES: usize = 64 * 1024 * 1024;

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn service(name: &str) -> ServiceId {
    ServiceId::new(name).unwrap()
}

/// An opener for `payments` whose `orders` keys come from a counting JWKS
/// server, and a signer for `orders`.
struct Env {
    opener: Opener,
    signer: Signer,
    recipient: EncryptionKey,
    requests: Arc<AtomicUsize>,
}

impl Env {
    async fn start() -> Self {
        let signing_key = SigningKey::from_seed(&[51; 32]).unwrap();
        let publisher = JwksPublisher::new(&JwkSet::from_keys(vec![signing_key.public_key().clone()]));
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&requests);
        let app = publisher
            .router()
            .layer(middleware::from_fn(move |request: Request, next: Next| {
                counter.fetch_add(1, Ordering::SeqCst);
                next.run(request)
            }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}{JWKS_PATH}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let remote = RemoteJwks::builder(url)
            .unknown_kid_cooldown(Duration::from_secs(3600))
            .build()
            .unwrap();
        let trust = TrustStore::new().trust(service("orders"), KeySource::Remote(remote));
        let verifier = Verifier::builder(service("payments"), trust).build().unwrap();
        verifier.trust_store().prefetch().await.unwrap();

        let recipient = EncryptionKey::from_x25519_bytes(&[52; 32]).unwrap();
        let opener = Opener::new(verifier, vec![EncryptionKey::from_x25519_bytes(&[52; 32]).unwrap()]).unwrap();
        Self {
            opener,
            signer: Signer::new(service("orders"), signing_key),
            recipient,
            requests,
        }
    }

    /// Opens `jwe` under a token that verifies and binds it; asserts the
    /// reason, that no request was sent and the time bound.
    async fn reject(&self, name: &str, jwe: &[u8], reason: Reason) {
        let binding = Binding::channel(CHANNEL).unwrap();
        let token = self
            .signer
            .token(service("payments"))
            .binding(binding.clone())
            .payload(jwe)
            .sign()
            .unwrap();
        let before = self.requests.load(Ordering::SeqCst);

        let started = Instant::now();
        let result = self.opener.open(&token, &Expected::message(binding, jwe)).await;
        let took = started.elapsed();

        let rejection = match result {
            Ok(opened) => panic!("{name}: opened {} bytes", opened.plaintext.len()),
            Err(rejection) => rejection,
        };
        assert_eq!(
            rejection.reason(),
            reason,
            "{name}: {} ({})",
            rejection.code(),
            rejection.detail()
        );
        assert_eq!(
            self.requests.load(Ordering::SeqCst),
            before,
            "{name}: a request was sent"
        );
        assert!(took < CASE_TIME_LIMIT, "{name}: took {took:?}");
    }

    fn recipient_x(&self) -> [u8; 32] {
        let x = self.recipient.public_key().to_jwk()["x"].as_str().unwrap().to_owned();
        URL_SAFE_NO_PAD.decode(x).unwrap().try_into().unwrap()
    }

    /// Builds a protected header addressed to the recipient key, with `extra`
    /// members added or replaced.
    fn header(&self, epk_x: &[u8; 32], extra: &Value) -> Map<String, Value> {
        let mut header = json!({
            "alg": "ECDH-ES+A256KW",
            "enc": "A256GCM",
            "kid": self.recipient.kid(),
            "epk": {"kty": "OKP", "crv": "X25519", "x": b64(epk_x)},
            "iss": "orders",
            "jti": "hostile-seal",
        });
        for (name, value) in extra.as_object().unwrap() {
            header[name] = value.clone();
        }
        let Value::Object(header) = header else { unreachable!() };
        header
    }

    /// Encrypts `plaintext` as a compact JWE with ECDH-ES+A256KW over
    /// X25519 and A256GCM (RFC 7518 sections 4.6 and 5.3), with `extra`
    /// protected header members, exactly as a conforming sender would.
    fn encrypt(&self, extra: &Value, plaintext: &[u8]) -> Vec<u8> {
        let ephemeral = x25519_dalek::StaticSecret::from([53; 32]);
        let ephemeral_public = x25519_dalek::PublicKey::from(&ephemeral);
        let shared = ephemeral.diffie_hellman(&x25519_dalek::PublicKey::from(self.recipient_x()));
        let header = self.header(ephemeral_public.as_bytes(), extra);
        let protected = b64(Value::Object(header).to_string().as_bytes());

        let kek = concat_kdf(shared.as_bytes(), "ECDH-ES+A256KW");
        let cek = [54u8; 32];
        let mut wrapped = [0u8; 40];
        aes_kw::KekAes256::from(kek).wrap(&cek, &mut wrapped).unwrap();

        let iv = [55u8; 12];
        let mut ciphertext = plaintext.to_vec();
        let tag = Aes256Gcm::new_from_slice(&cek)
            .unwrap()
            .encrypt_in_place_detached(&iv.into(), protected.as_bytes(), &mut ciphertext)
            .unwrap();
        [protected, b64(&wrapped), b64(&iv), b64(&ciphertext), b64(&tag)]
            .join(".")
            .into_bytes()
    }

    /// Builds a compact JWE with this protected header and arbitrary parts,
    /// for inputs rejected before any decryption.
    fn shaped(&self, extra: &Value, encrypted_key: &[u8]) -> Vec<u8> {
        let header = self.header(&[9; 32], extra);
        [
            b64(Value::Object(header).to_string().as_bytes()),
            b64(encrypted_key),
            b64(&[1; 12]),
            b64(&[2; 32]),
            b64(&[3; 16]),
        ]
        .join(".")
        .into_bytes()
    }
}

/// Derives the key-encryption key with the Concat KDF of RFC 7518 section 4.6.2 for a 256-bit key with empty
/// `apu` and `apv`.
fn concat_kdf(shared: &[u8], alg: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(1u32.to_be_bytes());
    hash.update(shared);
    hash.update((alg.len() as u32).to_be_bytes());
    hash.update(alg.as_bytes());
    hash.update(0u32.to_be_bytes());
    hash.update(0u32.to_be_bytes());
    hash.update(256u32.to_be_bytes());
    hash.finalize().into()
}

/// Writes bits least significant first, as DEFLATE (RFC 1951) packs them.
#[derive(Default)]
struct BitWriter {
    bytes: Vec<u8>,
    filled: u32,
}

impl BitWriter {
    fn bits(&mut self, value: u32, count: u32) {
        for index in 0..count {
            if self.filled.is_multiple_of(8) {
                self.bytes.push(0);
            }
            let bit = ((value >> index) & 1) as u8;
            *self.bytes.last_mut().unwrap() |= bit << (self.filled % 8);
            self.filled += 1;
        }
    }

    /// Writes a Huffman code, which DEFLATE stores most significant bit first.
    fn code(&mut self, code: u32, length: u32) {
        let reversed = code.reverse_bits() >> (32 - length);
        self.bits(reversed, length);
    }
}

/// Builds a raw DEFLATE stream of one fixed-Huffman block that inflates to at
/// least `size` zero bytes: a literal 0, then copies of 258 bytes at
/// distance 1. Each copy costs 13 bits, so 64 MiB fit in about 420 KiB.
fn deflate_bomb(size: usize) -> Vec<u8> {
    let mut writer = BitWriter::default();
    writer.bits(1, 1); // BFINAL
    writer.bits(1, 2); // BTYPE 01: fixed Huffman codes
    writer.code(0x30, 8); // literal 0
    for _ in 0..(size - 1).div_ceil(258) {
        writer.code(0xc5, 8); // length symbol 285: 258 bytes
        writer.code(0, 5); // distance code 0: distance 1
    }
    writer.code(0, 7); // end of block (symbol 256)
    writer.bytes
}

fn bomb() -> &'static [u8] {
    static BOMB: OnceLock<Vec<u8>> = OnceLock::new();
    BOMB.get_or_init(|| deflate_bomb(BOMB_BYTES))
}

/// The control: a JWE from `Env::encrypt` decrypts. Its header names a
/// fixed `jti` that the token does not carry, so the opener gets as far as
/// the header binding, which comes after decryption.
#[tokio::test]
async fn control_jwe_decrypts() {
    let env = Env::start().await;
    let jwe = env.encrypt(&json!({}), b"plain");
    let binding = Binding::channel(CHANNEL).unwrap();
    let token = env
        .signer
        .token(service("payments"))
        .binding(binding.clone())
        .payload(&jwe)
        .sign()
        .unwrap();
    let rejection = env
        .opener
        .open(&token, &Expected::message(binding, &jwe))
        .await
        .unwrap_err();
    assert_eq!(rejection.reason(), Reason::SealMismatch, "{}", rejection.detail());
}

/// PBES2 with the largest `p2c` a 32-bit counter allows: about 2 billion
/// PBKDF2 rounds in a library that honours it.
#[tokio::test]
async fn pbes2_huge_iteration_count() {
    let env = Env::start().await;
    for alg in ["PBES2-HS256+A128KW", "PBES2-HS384+A192KW", "PBES2-HS512+A256KW"] {
        let extra = json!({"alg": alg, "p2c": 2_147_483_647u32, "p2s": b64(&[7; 16])});
        env.reject(
            &format!("{alg} p2c 2^31-1"),
            &env.shaped(&extra, &[0; 40]),
            Reason::UnsupportedAlg,
        )
        .await;
    }
    // p2c next to the right alg is still a member that is never accepted.
    let extra = json!({"p2c": 2_147_483_647u32, "p2s": b64(&[7; 16])});
    env.reject(
        "p2c beside ECDH-ES+A256KW",
        &env.shaped(&extra, &[0; 40]),
        Reason::UnsupportedHeader,
    )
    .await;
}

/// A real JWE whose plaintext is a raw DEFLATE stream that inflates to
/// 64 MiB, sealed with `zip: "DEF"`. It is rejected before decryption, so
/// the bomb is never inflated.
#[tokio::test]
async fn zip_bomb_never_inflated() {
    let env = Env::start().await;
    let jwe = env.encrypt(&json!({"zip": "DEF"}), bomb());
    assert!(jwe.len() < 1024 * 1024, "the sealed bomb is {} bytes", jwe.len());
    env.reject("zip DEF, 64 MiB bomb", &jwe, Reason::UnsupportedHeader)
        .await;
}

/// The bomb is real: josekit, which registers DEF by default, decrypts the
/// same JWE and inflates it to 64 MiB.
#[tokio::test]
async fn zip_bomb_inflates_in_josekit() {
    use josekit::jwe::ECDH_ES_A256KW;
    use josekit::jwk::Jwk;

    let env = Env::start().await;
    let jwe = env.encrypt(&json!({"zip": "DEF"}), bomb());
    let private = Jwk::from_bytes(env.recipient.to_private_jwk().as_bytes()).unwrap();
    let decrypter = ECDH_ES_A256KW.decrypter_from_jwk(&private).unwrap();
    let jwe = String::from_utf8(jwe).unwrap();
    let (plaintext, header) = josekit::jwe::deserialize_compact(&jwe, &decrypter).unwrap();
    assert_eq!(header.compression(), Some("DEF"));
    assert!(plaintext.len() >= BOMB_BYTES, "inflated to {} bytes", plaintext.len());
    assert!(plaintext.iter().all(|&byte| byte == 0));
}

/// ECDH-ES+A256KW wraps a 256-bit key into 40 bytes. Key-unwrap lengths
/// that are not a multiple of 8 have made josekit panic.
#[tokio::test]
async fn encrypted_key_of_odd_length() {
    let env = Env::start().await;
    for length in [4, 20, 1, 7, 39, 41, 1024] {
        let jwe = env.shaped(&json!({}), &vec![0xa6; length]);
        env.reject(&format!("{length}-byte encrypted_key"), &jwe, Reason::Malformed)
            .await;
    }
}
