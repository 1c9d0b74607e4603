//! Crypto throughput of trustwire beside the raw primitives and the JOSE
//! libraries users would pick instead, measured in one criterion harness.
//!
//! Every group measures each payload size (64 B, 1 KiB, 16 KiB, 256 KiB);
//! a benchmark id is `<group>/<implementation>/<size>`.
//!
//! - `sign`: trustwire's signer. Beside it, the floors: raw ed25519-dalek and
//!   aws-lc-rs signing the same signing input after a SHA-256 of the
//!   payload. Then jsonwebtoken, jwt-simple and josekit signing the same
//!   claims, each computing the payload digest on every call as trustwire
//!   does.
//! - `verify`: trustwire's whole nine-step pipeline, with the issuer's JWKS
//!   fetched from a loopback server and cached before the measurement, and
//!   with the in-memory replay guard on. Beside it, the raw floors
//!   (`verify_strict`, plain `verify`, which with two cheap checks accepts the
//!   same signatures, and aws-lc-rs) and
//!   the peers, each also checking the digest.
//! - `verify_batch`: 64 messages per iteration, verified one by one and with
//!   `Verifier::verify_batch`, beside dalek's raw `verify_batch`.
//! - `seal` and `open`: trustwire's sealed messages (JWE with ECDH-ES+A256KW,
//!   A256GCM and X25519, plus the signed token over it) beside josekit doing
//!   the same (JWE and a signed token), and josekit's JWE alone.
//!
//! `cargo bench --bench crypto` is a criterion run. With `TRUSTWIRE_RATIOS=1`
//! the harness runs the same groups interleaved instead (see `mod ratios`).
//! `python3 scripts/plot_benchmarks.py` turns either into the tables and the
//! plot of `docs/benchmarks.md`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashSet;
use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group};
use ed25519_dalek::Signer as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use trustwire::envelope::payload_digest;
use trustwire::jwks::{JwkSet, JwksPublisher, KeySource, RemoteJwks, TrustStore};
use trustwire::keys::EncryptionKey;
use trustwire::seal::{Opener, Recipient, Sealer};
use trustwire::{Binding, Expected, ServiceId, Signer, SigningKey, Verifier};

/// Payload sizes measured in every group, with their labels.
const SIZES: [(usize, &str); 4] = [
    (64, "64B"),
    (1024, "1KiB"),
    (16 * 1024, "16KiB"),
    (256 * 1024, "256KiB"),
];

/// Messages per iteration in the `verify_batch` group.
const BATCH: usize = 64;

/// Lifetime of the peers' tokens. A token signed once is verified over and
/// over, for longer than trustwire's 60 s default on a busy machine.
const PEER_TOKEN_LIFETIME_SECS: i64 = 3600;

const ISSUER: &str = "orders";
const AUDIENCE: &str = "payments";
const CHANNEL: &str = "nats:orders.created";

/// One Ed25519 key in every library's form, all from the same seed.
struct Keys {
    seed: [u8; 32],
    kid: String,
    dalek: ed25519_dalek::SigningKey,
    aws: aws_lc_rs::signature::Ed25519KeyPair,
}

impl Keys {
    fn new() -> Self {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).unwrap();
        let kid = SigningKey::from_seed(&seed).unwrap().kid().to_owned();
        Self {
            seed,
            kid,
            dalek: ed25519_dalek::SigningKey::from_bytes(&seed),
            aws: aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(&seed).unwrap(),
        }
    }

    fn public(&self) -> [u8; 32] {
        self.dalek.verifying_key().to_bytes()
    }

    /// Encodes the private key as RFC 8410 PKCS#8 v1 DER.
    fn pkcs8(&self) -> Vec<u8> {
        const PREFIX: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
        ];
        [&PREFIX[..], &self.seed[..]].concat()
    }
}

/// trustwire's signer, and the loopback JWKS server its verifiers fetch from.
struct Trustwire {
    runtime: tokio::runtime::Runtime,
    signer: Signer,
    jwks_url: String,
    channel: Binding,
}

impl Trustwire {
    fn new(keys: &Keys) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let key = SigningKey::from_seed(&keys.seed).unwrap();
        let publisher = JwksPublisher::new(&JwkSet::from_keys(vec![key.public_key().clone()]));
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let address = listener.local_addr().unwrap();
        runtime.spawn(async move { axum::serve(listener, publisher.router()).await });

        Self {
            runtime,
            signer: Signer::new(service(ISSUER), key),
            jwks_url: format!("http://{address}/.well-known/jwks.json"),
            channel: Binding::channel(CHANNEL).unwrap(),
        }
    }

    /// Builds a verifier with a fresh replay guard and the issuer's keys
    /// already cached.
    fn verifier(&self) -> Verifier {
        let source = KeySource::Remote(RemoteJwks::builder(&self.jwks_url).build().unwrap());
        let trust = TrustStore::new().trust(service(ISSUER), source);
        self.runtime.block_on(trust.prefetch()).unwrap();
        Verifier::builder(service(AUDIENCE), trust).build().unwrap()
    }

    fn sign(&self, payload: &[u8]) -> String {
        self.signer
            .token(service(AUDIENCE))
            .binding(self.channel.clone())
            .payload(payload)
            .sign()
            .unwrap()
    }

    fn expected<'a>(&self, payload: &'a [u8]) -> Expected<'a> {
        Expected::message(self.channel.clone(), payload)
    }
}

/// Signing inputs and signatures of distinct trustwire tokens, for the
/// raw verification floors.
struct RawSamples {
    samples: Vec<(Vec<u8>, ed25519_dalek::Signature)>,
}

impl RawSamples {
    const COUNT: usize = 256;

    fn new(trustwire: &Trustwire, payload: &[u8]) -> Self {
        let samples = (0..Self::COUNT)
            .map(|_| {
                let token = trustwire.sign(payload);
                let signature = ed25519_dalek::Signature::from_bytes(&signature_of(&token));
                (signing_input(&token).as_bytes().to_vec(), signature)
            })
            .collect();
        Self { samples }
    }

    /// Returns a closure that yields the samples in turn, round and round.
    fn cycle<'s>(&'s self) -> impl FnMut() -> (&'s [u8], &'s ed25519_dalek::Signature) + 's {
        let mut index = 0;
        move || {
            let (input, signature) = &self.samples[index % Self::COUNT];
            index += 1;
            (input.as_slice(), signature)
        }
    }
}

fn service(name: &str) -> ServiceId {
    ServiceId::new(name).unwrap()
}

/// The claims every peer signs: those of a trustwire message token.
#[derive(Debug, Serialize, Deserialize)]
struct PeerClaims {
    iss: String,
    aud: String,
    iat: i64,
    exp: i64,
    jti: String,
    chn: String,
    dig: String,
}

impl PeerClaims {
    fn new(payload: &[u8]) -> Self {
        let iat = now();
        Self {
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            iat,
            exp: iat + PEER_TOKEN_LIFETIME_SECS,
            jti: random_jti(),
            chn: CHANNEL.to_owned(),
            dig: payload_digest(payload),
        }
    }
}

/// The `chn` and `dig` claims, for jwt-simple's custom claims.
#[derive(Debug, Serialize, Deserialize)]
struct BindingClaims {
    chn: String,
    dig: String,
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn random_jti() -> String {
    let mut jti = [0u8; 16];
    getrandom::fill(&mut jti).unwrap();
    URL_SAFE_NO_PAD.encode(jti)
}

/// Deterministic payload bytes of `size`.
fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|index| b'a' + (index % 26) as u8).collect()
}

/// Returns the signing input (`header.claims`) of a trustwire token.
fn signing_input(token: &str) -> &str {
    token.rsplit_once('.').unwrap().0
}

fn signature_of(token: &str) -> [u8; 64] {
    let signature = URL_SAFE_NO_PAD.decode(token.rsplit_once('.').unwrap().1).unwrap();
    signature.try_into().unwrap()
}

fn sign(c: &mut Criterion) {
    let keys = Keys::new();
    let trustwire = Trustwire::new(&keys);
    let jsonwebtoken_key = jsonwebtoken::EncodingKey::from_ed_der(&keys.pkcs8());
    let mut jsonwebtoken_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    jsonwebtoken_header.kid = Some(keys.kid.clone());
    let jwt_simple_key = jwt_simple_key_pair(&keys);
    let josekit_signer = josekit_signer(&keys);

    let mut group = c.benchmark_group("sign");
    for (size, label) in SIZES {
        let payload = payload(size);
        let token = trustwire.sign(&payload);
        let input = signing_input(&token).as_bytes();
        group.throughput(Throughput::Bytes(size as u64));

        group.bench_function(BenchmarkId::new("ed25519-dalek", label), |b| {
            b.iter(|| {
                black_box(Sha256::digest(black_box(&payload)));
                black_box(keys.dalek.sign(black_box(input)))
            });
        });
        group.bench_function(BenchmarkId::new("aws-lc-rs", label), |b| {
            b.iter(|| {
                black_box(Sha256::digest(black_box(&payload)));
                black_box(keys.aws.sign(black_box(input)))
            });
        });
        group.bench_function(BenchmarkId::new("trustwire", label), |b| {
            b.iter(|| trustwire.sign(black_box(&payload)));
        });
        group.bench_function(BenchmarkId::new("jsonwebtoken", label), |b| {
            b.iter(|| {
                jsonwebtoken::encode(
                    &jsonwebtoken_header,
                    &PeerClaims::new(black_box(&payload)),
                    &jsonwebtoken_key,
                )
                .unwrap()
            });
        });
        group.bench_function(BenchmarkId::new("jwt-simple", label), |b| {
            b.iter(|| jwt_simple_sign(&jwt_simple_key, black_box(&payload)));
        });
        group.bench_function(BenchmarkId::new("josekit", label), |b| {
            b.iter(|| josekit_sign(&josekit_signer, &keys.kid, black_box(&payload)));
        });
    }
    group.finish();
}

fn verify(c: &mut Criterion) {
    let keys = Keys::new();
    let trustwire = Trustwire::new(&keys);
    let public = keys.public();
    let dalek_public = keys.dalek.verifying_key();
    // Parsed once, as trustwire keeps its keys: the fastest form of the floor.
    let aws_public = aws_lc_rs::signature::ParsedPublicKey::new(&aws_lc_rs::signature::ED25519, public).unwrap();

    let jsonwebtoken_key = jsonwebtoken::EncodingKey::from_ed_der(&keys.pkcs8());
    let jsonwebtoken_public = jsonwebtoken::DecodingKey::from_ed_der(&public);
    let mut jsonwebtoken_validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    jsonwebtoken_validation.set_audience(&[AUDIENCE]);
    jsonwebtoken_validation.set_issuer(&[ISSUER]);
    let jwt_simple_key = jwt_simple_key_pair(&keys);
    let jwt_simple_public = jwt_simple_key.public_key();
    let josekit_signer = josekit_signer(&keys);
    let josekit_verifier = josekit_verifier(&keys);

    let mut group = c.benchmark_group("verify");
    for (size, label) in SIZES {
        let payload = payload(size);
        // The floors verify distinct tokens in turn, as trustwire does.
        let samples = RawSamples::new(&trustwire, &payload);
        group.throughput(Throughput::Bytes(size as u64));

        group.bench_function(BenchmarkId::new("ed25519-dalek verify_strict", label), |b| {
            let mut next = samples.cycle();
            b.iter(|| {
                let (input, signature) = next();
                black_box(Sha256::digest(black_box(&payload)));
                dalek_public.verify_strict(black_box(input), signature).unwrap();
            });
        });
        group.bench_function(BenchmarkId::new("ed25519-dalek verify", label), |b| {
            let mut next = samples.cycle();
            b.iter(|| {
                let (input, signature) = next();
                black_box(Sha256::digest(black_box(&payload)));
                ed25519_dalek::Verifier::verify(&dalek_public, black_box(input), signature).unwrap();
            });
        });
        group.bench_function(BenchmarkId::new("aws-lc-rs", label), |b| {
            let mut next = samples.cycle();
            b.iter(|| {
                let (input, signature) = next();
                black_box(Sha256::digest(black_box(&payload)));
                aws_public.verify_sig(black_box(input), &signature.to_bytes()).unwrap();
            });
        });

        // A fresh verifier per size keeps the replay guard below its
        // capacity; every iteration gets a token it has not seen.
        let verifier = trustwire.verifier();
        let expected = trustwire.expected(&payload);
        group.bench_function(BenchmarkId::new("trustwire", label), |b| {
            b.iter_batched(
                || trustwire.sign(&payload),
                |token| trustwire.runtime.block_on(verifier.verify(&token, &expected)).unwrap(),
                BatchSize::SmallInput,
            );
        });

        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
            &PeerClaims::new(&payload),
            &jsonwebtoken_key,
        )
        .unwrap();
        group.bench_function(BenchmarkId::new("jsonwebtoken", label), |b| {
            b.iter(|| {
                let data = jsonwebtoken::decode::<PeerClaims>(
                    black_box(&token),
                    &jsonwebtoken_public,
                    &jsonwebtoken_validation,
                )
                .unwrap();
                assert_eq!(data.claims.dig, payload_digest(black_box(&payload)));
            });
        });

        let token = jwt_simple_sign(&jwt_simple_key, &payload);
        let options = jwt_simple_options();
        group.bench_function(BenchmarkId::new("jwt-simple", label), |b| {
            b.iter(|| {
                use jwt_simple::prelude::EdDSAPublicKeyLike as _;
                let claims = jwt_simple_public
                    .verify_token::<BindingClaims>(black_box(&token), Some(options.clone()))
                    .unwrap();
                assert_eq!(claims.custom.dig, payload_digest(black_box(&payload)));
            });
        });

        let token = josekit_sign(&josekit_signer, &keys.kid, &payload);
        group.bench_function(BenchmarkId::new("josekit", label), |b| {
            b.iter(|| josekit_verify(&josekit_verifier, black_box(&token), black_box(&payload)));
        });
    }
    group.finish();
}

fn verify_batch(c: &mut Criterion) {
    let keys = Keys::new();
    let trustwire = Trustwire::new(&keys);
    let dalek_public = keys.dalek.verifying_key();

    let mut group = c.benchmark_group("verify_batch");
    for (size, label) in SIZES {
        let payloads: Vec<Vec<u8>> = (0..BATCH)
            .map(|index| {
                let mut bytes = payload(size);
                bytes[0] = index as u8;
                bytes
            })
            .collect();
        let sign_all = || {
            payloads
                .iter()
                .map(|payload| trustwire.sign(payload))
                .collect::<Vec<_>>()
        };
        group.throughput(Throughput::Elements(BATCH as u64));

        let tokens = sign_all();
        let inputs: Vec<&[u8]> = tokens.iter().map(|token| signing_input(token).as_bytes()).collect();
        let signatures: Vec<ed25519_dalek::Signature> = tokens
            .iter()
            .map(|token| ed25519_dalek::Signature::from_bytes(&signature_of(token)))
            .collect();
        let public_keys = vec![dalek_public; BATCH];
        group.bench_function(BenchmarkId::new("ed25519-dalek verify_strict", label), |b| {
            b.iter(|| {
                for ((payload, input), signature) in payloads.iter().zip(&inputs).zip(&signatures) {
                    black_box(Sha256::digest(black_box(payload)));
                    dalek_public.verify_strict(input, signature).unwrap();
                }
            });
        });
        group.bench_function(BenchmarkId::new("ed25519-dalek verify_batch", label), |b| {
            b.iter(|| {
                for payload in &payloads {
                    black_box(Sha256::digest(black_box(payload)));
                }
                ed25519_dalek::verify_batch(&inputs, &signatures, &public_keys).unwrap();
            });
        });

        let verifier = trustwire.verifier();
        let expected: Vec<Expected<'_>> = payloads.iter().map(|payload| trustwire.expected(payload)).collect();
        group.bench_function(BenchmarkId::new("trustwire single", label), |b| {
            b.iter_batched(
                sign_all,
                |tokens| {
                    trustwire.runtime.block_on(async {
                        for (token, expected) in tokens.iter().zip(&expected) {
                            verifier.verify(token, expected).await.unwrap();
                        }
                    });
                },
                BatchSize::LargeInput,
            );
        });

        let verifier = trustwire.verifier();
        group.bench_function(BenchmarkId::new("trustwire batch", label), |b| {
            b.iter_batched(
                sign_all,
                |tokens| {
                    let messages: Vec<(&str, Expected<'_>)> = tokens
                        .iter()
                        .zip(&expected)
                        .map(|(token, expected)| (token.as_str(), expected.clone()))
                        .collect();
                    let results = trustwire.runtime.block_on(verifier.verify_batch(&messages));
                    assert!(results.iter().all(Result::is_ok));
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

fn seal_and_open(c: &mut Criterion) {
    use josekit::jwe::{self, ECDH_ES_A256KW, JweHeader};
    use josekit::jwk::KeyPair as _;
    use josekit::jwk::alg::ecx::{EcxCurve, EcxKeyPair};

    let keys = Keys::new();
    let trustwire = Trustwire::new(&keys);
    let receiver_key = EncryptionKey::generate().unwrap();
    let receiver_keys = JwkSet::default().with_encryption_keys(vec![receiver_key.public_key().clone()]);
    let recipients = [Recipient::from_jwks(service(AUDIENCE), &receiver_keys).unwrap()];
    let sealer = Sealer::new(Signer::new(service(ISSUER), SigningKey::from_seed(&keys.seed).unwrap()));
    // One opener for every size: opening is slow enough that its replay
    // guard stays far below capacity.
    let opener = Opener::new(trustwire.verifier(), vec![receiver_key]).unwrap();
    let seal = |payload: &[u8]| sealer.seal(&recipients, trustwire.channel.clone(), payload).unwrap();

    let pair = EcxKeyPair::generate(EcxCurve::X25519).unwrap();
    let encrypter = ECDH_ES_A256KW.encrypter_from_jwk(&pair.to_jwk_public_key()).unwrap();
    let decrypter = ECDH_ES_A256KW.decrypter_from_jwk(&pair.to_jwk_private_key()).unwrap();
    let mut header = JweHeader::new();
    header.set_content_encryption("A256GCM");
    let josekit_signer = josekit_signer(&keys);
    let josekit_verifier = josekit_verifier(&keys);
    // The josekit equivalent of a sealed message: the JWE, and a signed token
    // whose `dig` covers the JWE bytes.
    let josekit_seal = |payload: &[u8]| {
        let sealed = jwe::serialize_compact(payload, &header, &encrypter).unwrap();
        let token = josekit_sign(&josekit_signer, &keys.kid, sealed.as_bytes());
        (sealed, token)
    };

    let mut group = c.benchmark_group("seal");
    for (size, label) in SIZES {
        let payload = payload(size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::new("trustwire", label), |b| {
            b.iter(|| seal(black_box(&payload)));
        });
        group.bench_function(BenchmarkId::new("josekit", label), |b| {
            b.iter(|| josekit_seal(black_box(&payload)));
        });
        group.bench_function(BenchmarkId::new("josekit JWE only", label), |b| {
            b.iter(|| jwe::serialize_compact(black_box(&payload), &header, &encrypter).unwrap());
        });
    }
    group.finish();

    let mut group = c.benchmark_group("open");
    for (size, label) in SIZES {
        let payload = payload(size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::new("trustwire", label), |b| {
            b.iter_batched(
                || seal(&payload),
                |sealed| {
                    let expected = Expected::message(trustwire.channel.clone(), &sealed.jwe);
                    let opened = trustwire
                        .runtime
                        .block_on(opener.open(&sealed.token, &expected))
                        .unwrap();
                    assert_eq!(opened.plaintext.len(), payload.len());
                },
                BatchSize::SmallInput,
            );
        });

        let (sealed, token) = josekit_seal(&payload);
        group.bench_function(BenchmarkId::new("josekit", label), |b| {
            b.iter(|| {
                josekit_verify(&josekit_verifier, black_box(&token), sealed.as_bytes());
                let (plaintext, _) = jwe::deserialize_compact(black_box(&sealed), &decrypter).unwrap();
                assert_eq!(plaintext.len(), payload.len());
            });
        });
        group.bench_function(BenchmarkId::new("josekit JWE only", label), |b| {
            b.iter(|| jwe::deserialize_compact(black_box(&sealed), &decrypter).unwrap());
        });
    }
    group.finish();
}

fn jwt_simple_key_pair(keys: &Keys) -> jwt_simple::prelude::Ed25519KeyPair {
    let bytes = [&keys.seed[..], &keys.public()[..]].concat();
    jwt_simple::prelude::Ed25519KeyPair::from_bytes(&bytes)
        .unwrap()
        .with_key_id(&keys.kid)
}

fn jwt_simple_sign(key: &jwt_simple::prelude::Ed25519KeyPair, payload: &[u8]) -> String {
    use jwt_simple::prelude::{Claims, EdDSAKeyPairLike as _};

    let binding = BindingClaims {
        chn: CHANNEL.to_owned(),
        dig: payload_digest(payload),
    };
    let lifetime = jwt_simple::prelude::Duration::from_secs(PEER_TOKEN_LIFETIME_SECS as u64);
    let claims = Claims::with_custom_claims(binding, lifetime)
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE)
        .with_jwt_id(random_jti());
    key.sign(claims).unwrap()
}

fn jwt_simple_options() -> jwt_simple::prelude::VerificationOptions {
    jwt_simple::prelude::VerificationOptions {
        allowed_issuers: Some(HashSet::from([ISSUER.to_owned()])),
        allowed_audiences: Some(HashSet::from([AUDIENCE.to_owned()])),
        ..Default::default()
    }
}

fn josekit_signer(keys: &Keys) -> josekit::jws::alg::eddsa::EddsaJwsSigner {
    let private = SigningKey::from_seed(&keys.seed).unwrap().to_private_jwk();
    let jwk = josekit::jwk::Jwk::from_bytes(private.as_bytes()).unwrap();
    josekit::jws::EdDSA.signer_from_jwk(&jwk).unwrap()
}

fn josekit_verifier(keys: &Keys) -> josekit::jws::alg::eddsa::EddsaJwsVerifier {
    let public = SigningKey::from_seed(&keys.seed).unwrap().public_key().to_jwk();
    let jwk = josekit::jwk::Jwk::from_bytes(public.to_string().as_bytes()).unwrap();
    josekit::jws::EdDSA.verifier_from_jwk(&jwk).unwrap()
}

fn josekit_sign(signer: &josekit::jws::alg::eddsa::EddsaJwsSigner, kid: &str, payload: &[u8]) -> String {
    use josekit::jwt::JwtPayload;
    use serde_json::json;

    let mut header = josekit::jws::JwsHeader::new();
    header.set_token_type("trustwire+jwt");
    header.set_key_id(kid);
    // josekit's own time setters write fractional seconds; a NumericDate
    // here is an integer, as in every other implementation measured.
    let iat = now();
    let mut claims = JwtPayload::new();
    claims.set_issuer(ISSUER);
    claims.set_audience(vec![AUDIENCE]);
    claims.set_claim("iat", Some(json!(iat))).unwrap();
    claims
        .set_claim("exp", Some(json!(iat + PEER_TOKEN_LIFETIME_SECS)))
        .unwrap();
    claims.set_jwt_id(random_jti());
    claims.set_claim("chn", Some(json!(CHANNEL))).unwrap();
    claims.set_claim("dig", Some(json!(payload_digest(payload)))).unwrap();
    josekit::jwt::encode_with_signer(&claims, &header, signer).unwrap()
}

fn josekit_verify(verifier: &josekit::jws::alg::eddsa::EddsaJwsVerifier, token: &str, payload: &[u8]) {
    let (claims, _) = josekit::jwt::decode_with_verifier(token, verifier).unwrap();
    let mut validator = josekit::jwt::JwtPayloadValidator::new();
    validator.set_base_time(SystemTime::now());
    validator.set_issuer(ISSUER);
    validator.set_audience(AUDIENCE);
    validator.validate(&claims).unwrap();
    assert_eq!(
        claims.claim("dig").and_then(|dig| dig.as_str()),
        Some(payload_digest(payload).as_str())
    );
}

/// Shortens criterion's default warm-up and measurement times, so all groups
/// together run in about a quarter of an hour on two cores.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = sign, verify, verify_batch, seal_and_open
}

fn main() {
    if std::env::var_os("TRUSTWIRE_RATIOS").is_some() {
        ratios::run();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

/// The interleaved mode: `TRUSTWIRE_RATIOS=1 cargo bench --bench crypto`.
///
/// Criterion measures one implementation after another, so on a shared
/// machine a change in load between two of them shows up as a ratio. This
/// mode runs a short chunk of every implementation of a group in turn, round
/// after round, and reports each one's median per-round ratio to the floor,
/// which a change in load moves far less. It writes the results as JSON to
/// `target/ratios.json` (or `TRUSTWIRE_RATIOS_OUT`), which
/// `scripts/plot_benchmarks.py` reads.
mod ratios {
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    use serde::Serialize;

    use super::*;

    /// Time each implementation runs per size, summed over its chunks,
    /// unless `TRUSTWIRE_RATIOS_SECONDS` sets another.
    const BUDGET: Duration = Duration::from_secs(2);

    /// Time one chunk should take.
    const CHUNK_TIME: Duration = Duration::from_millis(4);

    /// Runs `count` operations and returns the time the operations took,
    /// without any setup such as signing the tokens to verify.
    type Chunk<'a> = Box<dyn FnMut(usize) -> Duration + 'a>;

    struct Row<'a> {
        name: &'static str,
        is_floor: bool,
        chunk: Chunk<'a>,
    }

    #[derive(Serialize)]
    struct Result {
        group: &'static str,
        implementation: &'static str,
        size: &'static str,
        ops_per_second: f64,
        /// Median over rounds of this rate divided by the fastest floor
        /// of the same round; `None` in groups without floors.
        ratio_to_floor: Option<f64>,
        /// Median over rounds of this rate divided by `trustwire single`,
        /// in the `verify_batch` group.
        ratio_to_single: Option<f64>,
    }

    fn timed(count: usize, mut operation: impl FnMut()) -> Duration {
        let started = Instant::now();
        for _ in 0..count {
            operation();
        }
        started.elapsed()
    }

    pub(super) fn run() {
        let keys = Keys::new();
        let trustwire = Trustwire::new(&keys);
        let peers = Peers::new(&keys);
        let mut results = Vec::new();
        let out = std::env::var("TRUSTWIRE_RATIOS_OUT").unwrap_or_else(|_| "target/ratios.json".to_owned());

        for (size, label) in SIZES {
            let payload = payload(size);
            let batch_payloads: Vec<Vec<u8>> = (0..BATCH)
                .map(|index| {
                    let mut bytes = payload.clone();
                    bytes[0] = index as u8;
                    bytes
                })
                .collect();
            for group in ["sign", "verify", "verify_batch", "seal", "open"] {
                if !selected(group) {
                    continue;
                }
                eprintln!("ratios: {group} at {label}");
                let rows = rows(group, &keys, &trustwire, &peers, &payload, &batch_payloads);
                results.extend(measure(group, label, rows));
                // Written after every group, so an interrupted run keeps
                // what it measured.
                std::fs::write(&out, serde_json::to_string_pretty(&results).unwrap()).unwrap();
            }
        }
        eprintln!("ratios: wrote {out}");
    }

    /// Whether `TRUSTWIRE_RATIOS_GROUPS` (a comma-separated list of group
    /// names) selects `group`; without it every group runs.
    fn selected(group: &str) -> bool {
        match std::env::var("TRUSTWIRE_RATIOS_GROUPS") {
            Ok(groups) => groups.split(',').any(|name| name.trim() == group),
            Err(_) => true,
        }
    }

    /// Runs the rows of one group interleaved until each has run for `BUDGET`.
    fn measure(group: &'static str, size: &'static str, mut rows: Vec<Row<'_>>) -> Vec<Result> {
        let budget = std::env::var("TRUSTWIRE_RATIOS_SECONDS")
            .ok()
            .and_then(|seconds| seconds.parse().ok())
            .map_or(BUDGET, Duration::from_secs_f64);

        // One chunk each warms the caches and sizes the chunks.
        let counts: Vec<usize> = rows
            .iter_mut()
            .map(|row| {
                let per_operation = (row.chunk)(8).as_secs_f64() / 8.0;
                ((CHUNK_TIME.as_secs_f64() / per_operation) as usize).max(1)
            })
            .collect();

        let mut totals = vec![(Duration::ZERO, 0usize); rows.len()];
        let mut rounds: Vec<Vec<f64>> = Vec::new();
        while totals.iter().any(|(elapsed, _)| *elapsed < budget) {
            let mut rates = Vec::with_capacity(rows.len());
            for (index, row) in rows.iter_mut().enumerate() {
                let elapsed = (row.chunk)(counts[index]);
                totals[index].0 += elapsed;
                totals[index].1 += counts[index];
                rates.push(counts[index] as f64 / elapsed.as_secs_f64());
            }
            rounds.push(rates);
            if rounds.len().is_multiple_of(100) {
                eprintln!("ratios: {group} at {size}, round {}", rounds.len());
            }
        }

        let median = |mut values: Vec<f64>| {
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        let has_floor = rows.iter().any(|row| row.is_floor);
        let single = rows.iter().position(|row| row.name == "trustwire single");
        rows.iter()
            .enumerate()
            .map(|(index, row)| {
                let ratio_to_floor = has_floor.then(|| {
                    median(
                        rounds
                            .iter()
                            .map(|rates| {
                                let floor = rows
                                    .iter()
                                    .zip(rates)
                                    .filter(|(row, _)| row.is_floor)
                                    .map(|(_, rate)| *rate)
                                    .fold(0.0, f64::max);
                                rates[index] / floor
                            })
                            .collect(),
                    )
                });
                let ratio_to_single =
                    single.map(|single| median(rounds.iter().map(|rates| rates[index] / rates[single]).collect()));
                Result {
                    group,
                    implementation: row.name,
                    size,
                    ops_per_second: totals[index].1 as f64 / totals[index].0.as_secs_f64(),
                    ratio_to_floor,
                    ratio_to_single,
                }
            })
            .collect()
    }

    /// The keys and reusable objects of every peer.
    struct Peers {
        jsonwebtoken_key: jsonwebtoken::EncodingKey,
        jsonwebtoken_header: jsonwebtoken::Header,
        jsonwebtoken_public: jsonwebtoken::DecodingKey,
        jsonwebtoken_validation: jsonwebtoken::Validation,
        jwt_simple_key: jwt_simple::prelude::Ed25519KeyPair,
        jwt_simple_public: jwt_simple::prelude::Ed25519PublicKey,
        josekit_signer: josekit::jws::alg::eddsa::EddsaJwsSigner,
        josekit_verifier: josekit::jws::alg::eddsa::EddsaJwsVerifier,
        jwe_header: josekit::jwe::JweHeader,
        jwe_encrypter: josekit::jwe::alg::ecdh_es::EcdhEsJweEncrypter,
        jwe_decrypter: josekit::jwe::alg::ecdh_es::EcdhEsJweDecrypter,
        sealer: Sealer,
        recipients: Vec<Recipient>,
        receiver_key: std::cell::RefCell<Option<EncryptionKey>>,
    }

    impl Peers {
        fn new(keys: &Keys) -> Self {
            use josekit::jwk::KeyPair as _;
            use josekit::jwk::alg::ecx::{EcxCurve, EcxKeyPair};

            let mut jsonwebtoken_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
            jsonwebtoken_header.kid = Some(keys.kid.clone());
            let mut jsonwebtoken_validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
            jsonwebtoken_validation.set_audience(&[AUDIENCE]);
            jsonwebtoken_validation.set_issuer(&[ISSUER]);
            let jwt_simple_key = jwt_simple_key_pair(keys);
            let pair = EcxKeyPair::generate(EcxCurve::X25519).unwrap();
            let mut jwe_header = josekit::jwe::JweHeader::new();
            jwe_header.set_content_encryption("A256GCM");
            let receiver_key = EncryptionKey::generate().unwrap();
            let receiver_keys = JwkSet::default().with_encryption_keys(vec![receiver_key.public_key().clone()]);

            Self {
                jsonwebtoken_key: jsonwebtoken::EncodingKey::from_ed_der(&keys.pkcs8()),
                jsonwebtoken_header,
                jsonwebtoken_public: jsonwebtoken::DecodingKey::from_ed_der(&keys.public()),
                jsonwebtoken_validation,
                jwt_simple_public: jwt_simple_key.public_key(),
                jwt_simple_key,
                josekit_signer: josekit_signer(keys),
                josekit_verifier: josekit_verifier(keys),
                jwe_header,
                jwe_encrypter: josekit::jwe::ECDH_ES_A256KW
                    .encrypter_from_jwk(&pair.to_jwk_public_key())
                    .unwrap(),
                jwe_decrypter: josekit::jwe::ECDH_ES_A256KW
                    .decrypter_from_jwk(&pair.to_jwk_private_key())
                    .unwrap(),
                sealer: Sealer::new(Signer::new(service(ISSUER), SigningKey::from_seed(&keys.seed).unwrap())),
                recipients: vec![Recipient::from_jwks(service(AUDIENCE), &receiver_keys).unwrap()],
                receiver_key: std::cell::RefCell::new(Some(receiver_key)),
            }
        }
    }

    fn rows<'a>(
        group: &'static str,
        keys: &'a Keys,
        trustwire: &'a Trustwire,
        peers: &'a Peers,
        payload: &'a [u8],
        batch_payloads: &'a [Vec<u8>],
    ) -> Vec<Row<'a>> {
        let row = |name, is_floor, chunk: Chunk<'a>| Row { name, is_floor, chunk };
        let token = trustwire.sign(payload);
        let input = signing_input(&token).as_bytes().to_vec();
        let public = keys.dalek.verifying_key();

        match group {
            "sign" => vec![
                row(
                    "ed25519-dalek",
                    true,
                    Box::new(move |count| {
                        timed(count, || {
                            black_box(Sha256::digest(black_box(payload)));
                            black_box(keys.dalek.sign(&input));
                        })
                    }),
                ),
                row(
                    "aws-lc-rs",
                    true,
                    Box::new({
                        let input = signing_input(&token).as_bytes().to_vec();
                        move |count| {
                            timed(count, || {
                                black_box(Sha256::digest(black_box(payload)));
                                black_box(keys.aws.sign(&input));
                            })
                        }
                    }),
                ),
                row(
                    "trustwire",
                    false,
                    Box::new(move |count| timed(count, || drop(black_box(trustwire.sign(payload))))),
                ),
                row(
                    "jsonwebtoken",
                    false,
                    Box::new(move |count| {
                        timed(count, || {
                            let claims = PeerClaims::new(payload);
                            black_box(
                                jsonwebtoken::encode(&peers.jsonwebtoken_header, &claims, &peers.jsonwebtoken_key)
                                    .unwrap(),
                            );
                        })
                    }),
                ),
                row(
                    "jwt-simple",
                    false,
                    Box::new(move |count| {
                        timed(count, || {
                            drop(black_box(jwt_simple_sign(&peers.jwt_simple_key, payload)))
                        })
                    }),
                ),
                row(
                    "josekit",
                    false,
                    Box::new(move |count| {
                        timed(count, || {
                            drop(black_box(josekit_sign(&peers.josekit_signer, &keys.kid, payload)))
                        })
                    }),
                ),
            ],
            "verify" => {
                let verifier = trustwire.verifier();
                let expected = trustwire.expected(payload);
                let jsonwebtoken_token = jsonwebtoken::encode(
                    &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
                    &PeerClaims::new(payload),
                    &peers.jsonwebtoken_key,
                )
                .unwrap();
                let jwt_simple_token = jwt_simple_sign(&peers.jwt_simple_key, payload);
                let jwt_simple_options = jwt_simple_options();
                let josekit_token = josekit_sign(&peers.josekit_signer, &keys.kid, payload);
                let aws_public =
                    aws_lc_rs::signature::ParsedPublicKey::new(&aws_lc_rs::signature::ED25519, keys.public()).unwrap();
                // The floors verify distinct tokens in turn, as trustwire does.
                // Verifying one signature over and over lets the branch
                // predictor learn the variable-time scalar multiplication,
                // which flattered the floors by 2-3% in a trial run.
                let samples = Rc::new(RawSamples::new(trustwire, payload));
                let (strict_samples, plain_samples, aws_samples) = (samples.clone(), samples.clone(), samples);
                vec![
                    row(
                        "ed25519-dalek verify_strict",
                        true,
                        Box::new(move |count| {
                            let mut next = strict_samples.cycle();
                            timed(count, || {
                                let (input, signature) = next();
                                black_box(Sha256::digest(black_box(payload)));
                                public.verify_strict(input, signature).unwrap();
                            })
                        }),
                    ),
                    row(
                        "ed25519-dalek verify",
                        true,
                        Box::new(move |count| {
                            let mut next = plain_samples.cycle();
                            timed(count, || {
                                let (input, signature) = next();
                                black_box(Sha256::digest(black_box(payload)));
                                ed25519_dalek::Verifier::verify(&public, input, signature).unwrap();
                            })
                        }),
                    ),
                    row(
                        "aws-lc-rs",
                        true,
                        Box::new(move |count| {
                            let mut next = aws_samples.cycle();
                            timed(count, || {
                                let (input, signature) = next();
                                black_box(Sha256::digest(black_box(payload)));
                                aws_public.verify_sig(input, &signature.to_bytes()).unwrap();
                            })
                        }),
                    ),
                    row(
                        "trustwire",
                        false,
                        Box::new(move |count| {
                            let tokens: Vec<String> = (0..count).map(|_| trustwire.sign(payload)).collect();
                            let started = Instant::now();
                            trustwire.runtime.block_on(async {
                                for token in &tokens {
                                    verifier.verify(token, &expected).await.unwrap();
                                }
                            });
                            started.elapsed()
                        }),
                    ),
                    row(
                        "jsonwebtoken",
                        false,
                        Box::new(move |count| {
                            timed(count, || {
                                let data = jsonwebtoken::decode::<PeerClaims>(
                                    &jsonwebtoken_token,
                                    &peers.jsonwebtoken_public,
                                    &peers.jsonwebtoken_validation,
                                )
                                .unwrap();
                                assert_eq!(data.claims.dig, payload_digest(payload));
                            })
                        }),
                    ),
                    row(
                        "jwt-simple",
                        false,
                        Box::new(move |count| {
                            use jwt_simple::prelude::EdDSAPublicKeyLike as _;
                            timed(count, || {
                                let claims = peers
                                    .jwt_simple_public
                                    .verify_token::<BindingClaims>(&jwt_simple_token, Some(jwt_simple_options.clone()))
                                    .unwrap();
                                assert_eq!(claims.custom.dig, payload_digest(payload));
                            })
                        }),
                    ),
                    row(
                        "josekit",
                        false,
                        Box::new(move |count| {
                            timed(count, || {
                                josekit_verify(&peers.josekit_verifier, &josekit_token, payload)
                            })
                        }),
                    ),
                ]
            }
            "verify_batch" => {
                let single_verifier = trustwire.verifier();
                let batch_verifier = trustwire.verifier();
                let expected: Vec<Expected<'a>> = batch_payloads
                    .iter()
                    .map(|payload| trustwire.expected(payload))
                    .collect();
                let batch_expected = expected.clone();
                // Counts are messages, rounded up to whole batches of 64.
                let sign_batches = move |count: usize| -> Vec<String> {
                    let batches = count.div_ceil(BATCH);
                    (0..batches * BATCH)
                        .map(|index| trustwire.sign(&batch_payloads[index % BATCH]))
                        .collect()
                };
                vec![
                    row(
                        "trustwire single",
                        false,
                        Box::new(move |count| {
                            let tokens = sign_batches(count);
                            let started = Instant::now();
                            trustwire.runtime.block_on(async {
                                for (index, token) in tokens.iter().enumerate() {
                                    single_verifier.verify(token, &expected[index % BATCH]).await.unwrap();
                                }
                            });
                            // Scaled to `count` messages, as the batch row is.
                            started.elapsed().mul_f64(count as f64 / tokens.len() as f64)
                        }),
                    ),
                    row(
                        "trustwire batch",
                        false,
                        Box::new(move |count| {
                            let tokens = sign_batches(count);
                            let mut elapsed = Duration::ZERO;
                            for batch in tokens.chunks(BATCH) {
                                let messages: Vec<(&str, Expected<'_>)> = batch
                                    .iter()
                                    .zip(&batch_expected)
                                    .map(|(token, expected)| (token.as_str(), expected.clone()))
                                    .collect();
                                let started = Instant::now();
                                let results = trustwire.runtime.block_on(batch_verifier.verify_batch(&messages));
                                elapsed += started.elapsed();
                                assert!(results.iter().all(|result| result.is_ok()));
                            }
                            elapsed.mul_f64(count as f64 / tokens.len() as f64)
                        }),
                    ),
                ]
            }
            "seal" => {
                let seal = move || {
                    peers
                        .sealer
                        .seal(&peers.recipients, trustwire.channel.clone(), payload)
                        .unwrap()
                };
                vec![
                    row(
                        "trustwire",
                        false,
                        Box::new(move |count| timed(count, || drop(black_box(seal())))),
                    ),
                    row(
                        "josekit",
                        false,
                        Box::new(move |count| {
                            timed(count, || {
                                let sealed =
                                    josekit::jwe::serialize_compact(payload, &peers.jwe_header, &peers.jwe_encrypter)
                                        .unwrap();
                                black_box(josekit_sign(&peers.josekit_signer, &keys.kid, sealed.as_bytes()));
                            })
                        }),
                    ),
                    row(
                        "josekit JWE only",
                        false,
                        Box::new(move |count| {
                            timed(count, || {
                                black_box(
                                    josekit::jwe::serialize_compact(payload, &peers.jwe_header, &peers.jwe_encrypter)
                                        .unwrap(),
                                );
                            })
                        }),
                    ),
                ]
            }
            "open" => {
                // The opener takes the receiver's key, so it is built once
                // and shared by every size.
                let opener = OPENER.with(|opener| {
                    opener
                        .get_or_init(|| {
                            let key = peers.receiver_key.borrow_mut().take().unwrap();
                            Opener::new(trustwire.verifier(), vec![key]).unwrap()
                        })
                        .clone()
                });
                let sealed = josekit::jwe::serialize_compact(payload, &peers.jwe_header, &peers.jwe_encrypter).unwrap();
                let token = josekit_sign(&peers.josekit_signer, &keys.kid, sealed.as_bytes());
                let sealed_only = sealed.clone();
                vec![
                    row(
                        "trustwire",
                        false,
                        Box::new(move |count| {
                            let messages: Vec<_> = (0..count)
                                .map(|_| {
                                    peers
                                        .sealer
                                        .seal(&peers.recipients, trustwire.channel.clone(), payload)
                                        .unwrap()
                                })
                                .collect();
                            let started = Instant::now();
                            trustwire.runtime.block_on(async {
                                for message in &messages {
                                    let expected = Expected::message(trustwire.channel.clone(), &message.jwe);
                                    opener.open(&message.token, &expected).await.unwrap();
                                }
                            });
                            started.elapsed()
                        }),
                    ),
                    row(
                        "josekit",
                        false,
                        Box::new(move |count| {
                            timed(count, || {
                                josekit_verify(&peers.josekit_verifier, &token, sealed.as_bytes());
                                black_box(josekit::jwe::deserialize_compact(&sealed, &peers.jwe_decrypter).unwrap());
                            })
                        }),
                    ),
                    row(
                        "josekit JWE only",
                        false,
                        Box::new(move |count| {
                            timed(count, || {
                                black_box(
                                    josekit::jwe::deserialize_compact(&sealed_only, &peers.jwe_decrypter).unwrap(),
                                );
                            })
                        }),
                    ),
                ]
            }
            _ => unreachable!("unknown group {group}"),
        }
    }

    thread_local! {
        static OPENER: std::cell::OnceCell<Opener> = const { std::cell::OnceCell::new() };
    }
}
