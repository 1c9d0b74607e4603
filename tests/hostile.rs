//! Attack classes from public JOSE advisories, fed to a real verifier.
//!
//! The verifier trusts `orders`, whose Ed25519 and P-256 keys come from a
//! JWKS server on 127.0.0.1 that records every request, and two issuers with
//! inline keys. Each case asserts the exact reason code, that the server saw
//! no request while the case ran, and that the verification finished within
//! [`CASE_TIME_LIMIT`]. A panic fails the test. `attack_table_memory_bounded`
//! runs every case again in a child process and bounds its peak memory.
//!
//! Transport headers are attacked in `hostile_http.rs` and `hostile_nats.rs`,
//! sealed messages in `hostile_seal.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::Signer as _;
use p256::ecdsa::signature::Signer as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256, Sha384, Sha512};
use trustwire::clock::FixedClock;
use trustwire::envelope::payload_digest;
use trustwire::jwks::{JWKS_PATH, JwkSet, JwksError, JwksPublisher, KeySource, RemoteJwks, SourceError, TrustStore};
use trustwire::{Binding, Expected, KeyError, PublicKey, Reason, ServiceId, SigningKey, Verifier};

const NOW: i64 = 1_800_000_000;
const CHANNEL: &str = "nats:orders.created";
const PAYLOAD: &[u8] = br#"{"order":42}"#;

/// Maximum time a single rejection may take. The slowest case takes tens of
/// milliseconds in a debug build (the memory probe prints it), so the limit
/// catches only work that grows with an attacker-chosen number (PBES2 `p2c`,
/// nesting, huge integers).
const CASE_TIME_LIMIT: Duration = Duration::from_secs(1);

/// The small-order Ed25519 public keys named in the advisories: the identity
/// point and the all-zero encoding (a point of order 4).
const SMALL_ORDER_X: [&str; 2] = [
    "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
];

/// The order n of the P-256 group (FIPS 186-4, D.1.2.3), big-endian.
const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa,
    0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// The order L of the Ed25519 base point (RFC 8032 section 5.1), little-endian.
const ED25519_ORDER: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
];

// ---------------------------------------------------------------------------
// Keys and token forging
// ---------------------------------------------------------------------------

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An Ed25519 key whose seed is known, so tests can sign any bytes.
struct EdKey {
    seed: [u8; 32],
    kid: String,
    public: PublicKey,
}

impl EdKey {
    fn new(seed_byte: u8) -> Self {
        let seed = [seed_byte; 32];
        let key = SigningKey::from_seed(&seed).unwrap();
        Self {
            seed,
            kid: key.kid().to_owned(),
            public: key.public_key().clone(),
        }
    }

    fn x_bytes(&self) -> [u8; 32] {
        ed25519_dalek::SigningKey::from_bytes(&self.seed)
            .verifying_key()
            .to_bytes()
    }

    fn jwk(&self) -> Value {
        self.public.to_jwk()
    }

    fn header(&self) -> String {
        json!({"alg": "EdDSA", "kid": self.kid, "typ": "trustwire+jwt"}).to_string()
    }

    /// Signs arbitrary header and claims text with this key.
    fn forge(&self, header: &str, claims: &str) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let signature = ed25519_dalek::SigningKey::from_bytes(&self.seed).sign(input.as_bytes());
        format!("{input}.{}", b64(&signature.to_bytes()))
    }
}

/// A P-256 key that signs ES256 tokens.
struct EsKey {
    key: p256::ecdsa::SigningKey,
    kid: String,
}

impl EsKey {
    fn new(seed_byte: u8) -> Self {
        let key = p256::ecdsa::SigningKey::from_bytes(&p256::FieldBytes::from([seed_byte; 32])).unwrap();
        let mut es = Self {
            key,
            kid: String::new(),
        };
        let set = JwkSet::parse(json!({ "keys": [es.jwk()] }).to_string().as_bytes()).unwrap();
        es.kid = set.keys()[0].kid().to_owned();
        es
    }

    /// Returns the uncompressed SEC1 point, 0x04 || x || y.
    fn point(&self) -> Vec<u8> {
        self.key.verifying_key().to_encoded_point(false).as_bytes().to_vec()
    }

    fn jwk(&self) -> Value {
        let point = self.point();
        json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65])})
    }

    fn header(&self) -> String {
        json!({"alg": "ES256", "kid": self.kid, "typ": "trustwire+jwt"}).to_string()
    }

    /// Signs arbitrary header and claims text; returns the token and the raw
    /// 64-byte r || s signature.
    fn forge(&self, header: &str, claims: &str) -> (String, Vec<u8>) {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let signature: p256::ecdsa::Signature = self.key.sign(input.as_bytes());
        let bytes = signature.to_bytes().to_vec();
        (format!("{input}.{}", b64(&bytes)), bytes)
    }
}

/// Builds a compact token from header and claims text and raw signature bytes.
fn assemble(header: &str, claims: &str, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.as_bytes()),
        b64(claims.as_bytes()),
        b64(signature)
    )
}

/// Claims that pass every check when signed by `orders`.
fn claims() -> Value {
    json!({
        "iss": "orders",
        "aud": "payments",
        "iat": NOW,
        "exp": NOW + 60,
        "jti": "AAAAAAAAAAAAAAAAAAAAAA",
        "chn": CHANNEL,
        "dig": payload_digest(PAYLOAD),
    })
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn without(mut claims: Value, name: &str) -> Value {
    claims.as_object_mut().unwrap().remove(name);
    claims
}

/// HMAC (RFC 2104) over any of the SHA-2 functions, as an attacker would
/// compute an HS256/HS384/HS512 signature.
fn hmac<D: Digest>(block_size: usize, key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = if key.len() > block_size {
        D::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    block.resize(block_size, 0);
    let inner_pad: Vec<u8> = block.iter().map(|byte| byte ^ 0x36).collect();
    let outer_pad: Vec<u8> = block.iter().map(|byte| byte ^ 0x5c).collect();
    let inner = D::new().chain_update(&inner_pad).chain_update(message).finalize();
    D::new()
        .chain_update(&outer_pad)
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// Signs header and claims text with HMAC under `alg` and `key`.
fn hmac_token(alg: &str, header: &str, claims: &str, key: &[u8]) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let mac = match alg {
        "HS256" => hmac::<Sha256>(64, key, input.as_bytes()),
        "HS384" => hmac::<Sha384>(128, key, input.as_bytes()),
        "HS512" => hmac::<Sha512>(128, key, input.as_bytes()),
        other => panic!("no HMAC for {other}"),
    };
    format!("{input}.{}", b64(&mac))
}

/// PEM text of DER bytes, wrapped at 64 columns (RFC 7468).
fn pem(label: &str, der: &[u8], line_end: &str, indent: &str) -> String {
    let body = STANDARD.encode(der);
    let mut text = format!("{indent}-----BEGIN {label}-----{line_end}");
    for line in body.as_bytes().chunks(64) {
        text.push_str(indent);
        text.push_str(std::str::from_utf8(line).unwrap());
        text.push_str(line_end);
    }
    text.push_str(&format!("{indent}-----END {label}-----{line_end}"));
    text
}

/// SubjectPublicKeyInfo DER of an Ed25519 key (RFC 8410 section 4).
fn ed25519_spki(x: &[u8; 32]) -> Vec<u8> {
    let mut der = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    der.extend_from_slice(x);
    der
}

/// SubjectPublicKeyInfo DER of a P-256 key (RFC 5480 section 2).
fn p256_spki(point: &[u8]) -> Vec<u8> {
    let mut der = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
        0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    der.extend_from_slice(point);
    der
}

/// DER `ECDSA-Sig-Value` of big-endian r and s (RFC 3279 section 2.2.3).
fn ecdsa_der(r: &[u8], s: &[u8]) -> Vec<u8> {
    fn integer(value: &[u8]) -> Vec<u8> {
        let trimmed: Vec<u8> = value.iter().copied().skip_while(|byte| *byte == 0).collect();
        let mut content = if trimmed.is_empty() { vec![0] } else { trimmed };
        if content[0] & 0x80 != 0 {
            content.insert(0, 0);
        }
        let mut out = vec![0x02, content.len() as u8];
        out.extend(content);
        out
    }
    let body: Vec<u8> = [integer(r), integer(s)].concat();
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

// ---------------------------------------------------------------------------
// The JWKS server that counts requests
// ---------------------------------------------------------------------------

/// The path and arrival time of every request a test server received.
type RequestLog = Arc<Mutex<Vec<(String, Instant)>>>;

/// Serves `app` on 127.0.0.1, recording every request, whatever its path.
async fn serve_counting(app: axum::Router) -> (SocketAddr, RequestLog) {
    let log: RequestLog = Arc::default();
    let recorder = Arc::clone(&log);
    let app = app
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let recorder = Arc::clone(&recorder);
            async move {
                let path = request.uri().path().to_owned();
                recorder.lock().unwrap().push((path, Instant::now()));
                next.run(request).await
            }
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, log)
}

/// A real [`JwksPublisher`] on 127.0.0.1 behind a request counter.
struct CountingServer {
    publisher: JwksPublisher,
    log: RequestLog,
    addr: SocketAddr,
}

impl CountingServer {
    async fn start(set: &JwkSet, max_age: Duration) -> Self {
        let publisher = JwksPublisher::with_max_age(set, max_age);
        let (addr, log) = serve_counting(publisher.router()).await;
        Self { publisher, log, addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn jwks_url(&self) -> String {
        self.url(JWKS_PATH)
    }

    fn requests(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    fn request_times(&self) -> Vec<Instant> {
        self.log.lock().unwrap().iter().map(|(_, at)| *at).collect()
    }

    fn requests_to(&self, path: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|(seen, _)| seen == path).count()
    }
}

// ---------------------------------------------------------------------------
// The environment every attack case runs in
// ---------------------------------------------------------------------------

/// One attack input and the reason it must be rejected with.
struct Case {
    name: String,
    token: String,
    reason: Reason,
}

fn case(name: impl Into<String>, token: String, reason: Reason) -> Case {
    Case {
        name: name.into(),
        token,
        reason,
    }
}

/// A verifier for `payments` that trusts `orders` (remote JWKS on the
/// counting server: one Ed25519 and one P-256 key), `billing` (inline
/// Ed25519 key) and `legacy` (inline set with an RSA key that has no `alg`).
struct Env {
    server: CountingServer,
    verifier: Verifier,
    orders: EdKey,
    orders_es: EsKey,
    billing: EdKey,
}

const RSA_KID: &str = "legacy-rsa";

/// Returns a 2048-bit RSA public JWK with no `alg`, as many identity
/// providers publish them (the modulus of the RFC 7517 appendix A.1 key).
fn legacy_rsa_jwk() -> Value {
    json!({
        "kty": "RSA",
        "kid": RSA_KID,
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB"
    })
}

impl Env {
    async fn start() -> Self {
        let orders = EdKey::new(7);
        let orders_es = EsKey::new(9);
        let billing = EdKey::new(11);
        let legacy = EdKey::new(13);

        let orders_set = JwkSet::parse(
            json!({ "keys": [orders.jwk(), orders_es.jwk()] })
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        let server = CountingServer::start(&orders_set, Duration::from_secs(3600)).await;
        // Long TTL and cooldown: after the prefetch, any request is a failure.
        let remote = RemoteJwks::builder(server.jwks_url())
            .ttl_bounds(Duration::from_secs(3600), Duration::from_secs(3600))
            .unknown_kid_cooldown(Duration::from_secs(3600))
            .build()
            .unwrap();

        let legacy_set = JwkSet::parse(
            json!({ "keys": [legacy_rsa_jwk(), legacy.jwk()] })
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(legacy_set.keys().len(), 1, "the RSA key is skipped, not trusted");

        let trust = TrustStore::new()
            .trust(service("orders"), KeySource::Remote(remote))
            .trust(
                service("billing"),
                KeySource::inline(JwkSet::from_keys(vec![billing.public.clone()])),
            )
            .trust(service("legacy"), KeySource::inline(legacy_set));
        let verifier = Verifier::builder(service("payments"), trust)
            .clock(Arc::new(FixedClock::new(NOW)))
            .build()
            .unwrap();
        verifier.trust_store().prefetch().await.unwrap();
        assert_eq!(server.requests(), 1, "the prefetch is the only request");

        Self {
            server,
            verifier,
            orders,
            orders_es,
            billing,
        }
    }

    /// Signs `claims` with the orders Ed25519 key under its usual header.
    fn signed(&self, claims: &Value) -> String {
        self.orders.forge(&self.orders.header(), &claims.to_string())
    }

    /// Signs `header` with the orders Ed25519 key over the good claims.
    fn signed_header(&self, header: &Value) -> String {
        self.orders.forge(&header.to_string(), &claims().to_string())
    }

    async fn reject(&self, case: &Case) {
        let before = self.server.requests();
        let started = Instant::now();
        let result = self.verifier.verify(&case.token, &expected()).await;
        let took = started.elapsed();

        let rejection = match result {
            Ok(verified) => panic!("{}: accepted, claims {:?}", case.name, verified.claims),
            Err(rejection) => rejection,
        };
        assert_eq!(
            rejection.reason(),
            case.reason,
            "{}: rejected as {} ({})",
            case.name,
            rejection.code(),
            rejection.detail()
        );
        assert_eq!(
            self.server.requests(),
            before,
            "{}: the verifier sent a request",
            case.name
        );
        assert!(took < CASE_TIME_LIMIT, "{}: took {took:?}", case.name);
    }

    async fn reject_all(&self, cases: &[Case]) {
        assert!(!cases.is_empty());
        for case in cases {
            self.reject(case).await;
        }
    }
}

fn service(name: &str) -> ServiceId {
    ServiceId::new(name).unwrap()
}

fn expected() -> Expected<'static> {
    Expected::message(Binding::channel(CHANNEL).unwrap(), PAYLOAD)
}

// ---------------------------------------------------------------------------
// The attack table, one function per class
// ---------------------------------------------------------------------------

/// `alg: none` in every spelling, empty and absent (CVE-2015-9235 and its
/// many cousins): a library that takes `alg` from the token skips the
/// signature.
fn alg_none_cases(env: &Env) -> Vec<Case> {
    let good = claims().to_string();
    let mut cases = Vec::new();
    for alg in ["none", "None", "NONE", "nOnE", ""] {
        let header = json!({"alg": alg, "kid": env.orders.kid, "typ": "trustwire+jwt"}).to_string();
        cases.push(case(
            format!("alg {alg:?}, empty signature"),
            assemble(&header, &good, b""),
            Reason::UnsupportedAlg,
        ));
        cases.push(case(
            format!("alg {alg:?}, valid EdDSA signature"),
            env.orders.forge(&header, &good),
            Reason::UnsupportedAlg,
        ));
    }
    let absent = json!({"kid": env.orders.kid, "typ": "trustwire+jwt"}).to_string();
    cases.push(case(
        "alg absent",
        assemble(&absent, &good, b""),
        Reason::UnsupportedAlg,
    ));
    for (name, alg) in [("null", json!(null)), ("number", json!(0)), ("array", json!(["EdDSA"]))] {
        let header = json!({"alg": alg, "kid": env.orders.kid, "typ": "trustwire+jwt"});
        cases.push(case(
            format!("alg {name}"),
            env.signed_header(&header),
            Reason::UnsupportedAlg,
        ));
    }
    cases
}

/// Lists the public-key encodings a confused verifier might feed to HMAC as
/// the secret (CVE-2016-10555, CVE-2022-29217, CVE-2024-54150).
fn public_key_encodings(env: &Env) -> Vec<(String, Vec<u8>)> {
    let x = env.orders.x_bytes();
    let spki = ed25519_spki(&x);
    let es_spki = p256_spki(&env.orders_es.point());
    let jwk = env.orders.jwk();
    let served = env.server.publisher.document();

    let mut encodings = vec![
        ("raw x".to_owned(), x.to_vec()),
        ("base64url x".to_owned(), b64(&x).into_bytes()),
        ("SPKI DER".to_owned(), spki.clone()),
        ("PEM, LF".to_owned(), pem("PUBLIC KEY", &spki, "\n", "").into_bytes()),
        (
            "PEM, CRLF".to_owned(),
            pem("PUBLIC KEY", &spki, "\r\n", "").into_bytes(),
        ),
        (
            "PEM, leading spaces".to_owned(),
            pem("PUBLIC KEY", &spki, "\n", "    ").into_bytes(),
        ),
        (
            "PEM, no final newline".to_owned(),
            pem("PUBLIC KEY", &spki, "\n", "").trim_end().as_bytes().to_vec(),
        ),
        ("JWK JSON text".to_owned(), jwk.to_string().into_bytes()),
        (
            "JWK JSON text, indented".to_owned(),
            serde_json::to_string_pretty(&jwk).unwrap().into_bytes(),
        ),
        ("JWKS document as served".to_owned(), served.to_vec()),
        ("P-256 SPKI DER".to_owned(), es_spki.clone()),
        (
            "P-256 PEM, LF".to_owned(),
            pem("PUBLIC KEY", &es_spki, "\n", "").into_bytes(),
        ),
        ("P-256 SEC1 point".to_owned(), env.orders_es.point()),
    ];
    encodings.push(("empty key".to_owned(), Vec::new()));
    encodings
}

/// HS256/384/512 tokens keyed with each public encoding of a trusted key:
/// the algorithm comes from the key, so HMAC is never even computed.
fn hmac_confusion_cases(env: &Env) -> Vec<Case> {
    let good = claims().to_string();
    let mut cases = Vec::new();
    for (encoding, key) in public_key_encodings(env) {
        for alg in ["HS256", "HS384", "HS512"] {
            for kid in [&env.orders.kid, &env.orders_es.kid] {
                let header = json!({"alg": alg, "kid": kid, "typ": "trustwire+jwt"}).to_string();
                cases.push(case(
                    format!("{alg} keyed with {encoding}, kid {kid}"),
                    hmac_token(alg, &header, &good, &key),
                    Reason::UnsupportedAlg,
                ));
            }
        }
    }
    cases
}

/// Builds tokens that name an RSA JWK without `alg` from a trusted set, with
/// an empty-key HMAC or an RSA algorithm. The RSA key is skipped when the
/// set is loaded, and the algorithm is rejected before the lookup.
fn rsa_without_alg_cases(_env: &Env) -> Vec<Case> {
    let legacy_claims = with(claims(), "iss", json!("legacy")).to_string();
    let mut cases = Vec::new();
    for alg in ["HS256", "HS384", "HS512"] {
        let header = json!({"alg": alg, "kid": RSA_KID, "typ": "trustwire+jwt"}).to_string();
        cases.push(case(
            format!("{alg} with an empty key, kid of the RSA JWK"),
            hmac_token(alg, &header, &legacy_claims, b""),
            Reason::UnsupportedAlg,
        ));
    }
    for alg in ["RS256", "PS256"] {
        let header = json!({"alg": alg, "kid": RSA_KID, "typ": "trustwire+jwt"}).to_string();
        cases.push(case(
            format!("{alg}, kid of the RSA JWK"),
            assemble(&header, &legacy_claims, &[0x5a; 256]),
            Reason::UnsupportedAlg,
        ));
    }
    // An accepted algorithm naming the RSA key: the key was never loaded.
    let header = json!({"alg": "EdDSA", "kid": RSA_KID, "typ": "trustwire+jwt"}).to_string();
    cases.push(case(
        "EdDSA, kid of the skipped RSA JWK",
        assemble(&header, &legacy_claims, &[0; 64]),
        Reason::UnknownKey,
    ));
    cases
}

/// ES256 signatures that broken ECDSA verifiers accept: r = s = 0
/// ("psychic signatures", CVE-2022-21449), r = s = n, and DER in place of
/// the fixed-size JWS form.
fn ecdsa_cases(env: &Env) -> Vec<Case> {
    let header = env.orders_es.header();
    let good = claims().to_string();
    let (_, valid) = env.orders_es.forge(&header, &good);
    let (r, s) = valid.split_at(32);
    let zero = [0u8; 32];

    let signatures: Vec<(&str, Vec<u8>)> = vec![
        ("r = s = 0, raw", [zero, zero].concat()),
        ("r = s = 0, DER", ecdsa_der(&zero, &zero)),
        ("r = s = n, raw", [P256_ORDER, P256_ORDER].concat()),
        ("r = s = n, DER", ecdsa_der(&P256_ORDER, &P256_ORDER)),
        ("r = 0, valid s", [&zero[..], s].concat()),
        ("valid r, s = 0", [r, &zero[..]].concat()),
        ("valid r, s = n", [r, &P256_ORDER[..]].concat()),
        ("valid signature as DER", ecdsa_der(r, s)),
        ("valid signature, one byte short", valid[..63].to_vec()),
        ("valid signature, one byte added", [&valid[..], &[0]].concat()),
        ("empty", Vec::new()),
    ];
    let mut cases: Vec<Case> = signatures
        .into_iter()
        .map(|(name, signature)| {
            case(
                format!("ES256 {name}"),
                assemble(&header, &good, &signature),
                Reason::BadSignature,
            )
        })
        .collect();

    // An ES256 header naming the Ed25519 key, and the reverse.
    let es_on_ed = json!({"alg": "ES256", "kid": env.orders.kid, "typ": "trustwire+jwt"}).to_string();
    cases.push(case(
        "ES256 with the kid of an Ed25519 key",
        env.orders_es.forge(&es_on_ed, &good).0,
        Reason::UnsupportedAlg,
    ));
    let ed_on_es = json!({"alg": "EdDSA", "kid": env.orders_es.kid, "typ": "trustwire+jwt"}).to_string();
    cases.push(case(
        "EdDSA with the kid of a P-256 key",
        env.orders.forge(&ed_on_es, &good),
        Reason::UnsupportedAlg,
    ));
    cases
}

/// Ed25519 signatures that lenient verifiers accept: S + L (malleability),
/// the identity point with S = 0, and wrong lengths.
fn eddsa_signature_cases(env: &Env) -> Vec<Case> {
    let header = env.orders.header();
    let good = claims().to_string();
    let token = env.orders.forge(&header, &good);
    let signature = URL_SAFE_NO_PAD.decode(token.rsplit('.').next().unwrap()).unwrap();

    // S + L: the same scalar modulo L, a second encoding that `verify`
    // without the strict check accepts.
    let mut malleated = signature.clone();
    let mut carry = 0u16;
    for (byte, order) in malleated[32..].iter_mut().zip(ED25519_ORDER) {
        let sum = u16::from(*byte) + u16::from(order) + carry;
        *byte = sum as u8;
        carry = sum >> 8;
    }
    let mut identity_zero = vec![0u8; 64];
    identity_zero[0] = 1;

    vec![
        case(
            "EdDSA S + L",
            assemble(&header, &good, &malleated),
            Reason::BadSignature,
        ),
        case(
            "EdDSA identity point and S = 0",
            assemble(&header, &good, &identity_zero),
            Reason::BadSignature,
        ),
        case(
            "EdDSA all-zero signature",
            assemble(&header, &good, &[0; 64]),
            Reason::BadSignature,
        ),
        case(
            "EdDSA 63 bytes",
            assemble(&header, &good, &signature[..63]),
            Reason::BadSignature,
        ),
        case(
            "EdDSA 65 bytes",
            assemble(&header, &good, &[&signature[..], &[0]].concat()),
            Reason::BadSignature,
        ),
        case(
            "EdDSA empty signature",
            assemble(&header, &good, b""),
            Reason::BadSignature,
        ),
    ]
}

/// `crit` in every shape, and `b64` (RFC 7797) with and without `crit`:
/// extensions that change how the token is read are never accepted.
fn crit_and_b64_cases(env: &Env) -> Vec<Case> {
    let base = |extra: Value| {
        let mut header = json!({"alg": "EdDSA", "kid": env.orders.kid, "typ": "trustwire+jwt"});
        for (name, value) in extra.as_object().unwrap() {
            header[name] = value.clone();
        }
        header
    };
    let mut cases = Vec::new();
    let crits = [
        ("unknown name", json!({"crit": ["x-unknown"], "x-unknown": 1})),
        ("unknown name, member absent", json!({"crit": ["x-unknown"]})),
        ("string", json!({"crit": "exp"})),
        ("empty array", json!({"crit": []})),
        ("number in array", json!({"crit": [1]})),
        ("registered name", json!({"crit": ["alg"]})),
        ("null", json!({"crit": null})),
        ("b64 listed", json!({"crit": ["b64"], "b64": true})),
    ];
    for (name, extra) in crits {
        cases.push(case(
            format!("crit {name}"),
            env.signed_header(&base(extra)),
            Reason::UnsupportedHeader,
        ));
    }

    // b64: false signs the payload bytes as they are, so the second segment
    // is raw JSON, which RFC 7797 section 5.2 lets contain no '.'. Encoded,
    // unencoded and detached forms are all rejected for the header.
    let good = with(claims(), "chn", json!("nats:orders")).to_string();
    for (name, extra) in [
        ("b64 false with crit", json!({"b64": false, "crit": ["b64"]})),
        ("b64 false without crit", json!({"b64": false})),
        ("b64 true", json!({"b64": true})),
    ] {
        let header = base(extra).to_string();
        cases.push(case(
            format!("{name}, encoded payload"),
            env.orders.forge(&header, &good),
            Reason::UnsupportedHeader,
        ));
        let input = format!("{}.{good}", b64(header.as_bytes()));
        let signature = ed25519_dalek::SigningKey::from_bytes(&env.orders.seed).sign(input.as_bytes());
        cases.push(case(
            format!("{name}, unencoded payload"),
            format!("{input}.{}", b64(&signature.to_bytes())),
            Reason::UnsupportedHeader,
        ));
        cases.push(case(
            format!("{name}, detached payload"),
            format!("{}..{}", b64(header.as_bytes()), b64(&signature.to_bytes())),
            Reason::UnsupportedHeader,
        ));
    }
    let header = base(json!({"b64": false, "crit": ["b64"]})).to_string();
    let dotted = claims().to_string();
    cases.push(case(
        "b64 false, unencoded payload with a '.'",
        format!("{}.{dotted}.{}", b64(header.as_bytes()), b64(&[0; 64])),
        Reason::Malformed,
    ));
    cases
}

/// Header members that would let the token choose its own key or make the
/// verifier fetch a URL (CVE-2018-0114 for `jwk`). The URLs point at the
/// counting server, which must see no request for them.
fn embedded_key_cases(env: &Env) -> Vec<Case> {
    let attacker = EdKey::new(99);
    let good = claims().to_string();
    let mut cases = Vec::new();
    let members = [
        ("jwk", attacker.jwk()),
        ("jku", json!(env.server.url("/attacker/jwks.json"))),
        ("x5u", json!(env.server.url("/attacker/cert.pem"))),
        ("x5c", json!(["MIIBszCCAVmgAwIBAgIUAA"])),
    ];
    for (name, value) in members {
        for kid in [&attacker.kid, &env.orders.kid] {
            let mut header = json!({"alg": "EdDSA", "kid": kid, "typ": "trustwire+jwt"});
            header[name] = value.clone();
            cases.push(case(
                format!("{name} header, kid {kid}"),
                attacker.forge(&header.to_string(), &good),
                Reason::UnsupportedHeader,
            ));
        }
    }
    // A kid that is a URL or a path is only ever a lookup key.
    for kid in [
        env.server.url("/attacker/kid"),
        "../../../../dev/null".to_owned(),
        "' OR '1'='1".to_owned(),
        "kid\u{0}".to_owned(),
    ] {
        let header = json!({"alg": "EdDSA", "kid": kid, "typ": "trustwire+jwt"}).to_string();
        let billing_claims = with(claims(), "iss", json!("billing")).to_string();
        cases.push(case(
            format!("kid {kid:?}"),
            attacker.forge(&header, &billing_claims),
            Reason::UnknownKey,
        ));
    }
    cases
}

/// Builds JWEs, and JWE-only header members, where a signed token is
/// expected. The PBES2 header carries a `p2c` that would cost billions of PBKDF2 rounds if
/// anything ran it.
fn jwe_as_jws_cases(env: &Env) -> Vec<Case> {
    let pbes2 = json!({"alg": "PBES2-HS512+A256KW", "enc": "A256GCM", "p2c": 2_147_483_647u32, "p2s": "AAAAAAAAAAAAAAAAAAAAAA", "kid": env.orders.kid});
    let jwe = format!(
        "{}.{}.{}.{}.{}",
        b64(pbes2.to_string().as_bytes()),
        b64(&[1; 40]),
        b64(&[2; 12]),
        b64(&[3; 32]),
        b64(&[4; 16])
    );
    let ecdh = json!({"alg": "ECDH-ES+A256KW", "enc": "A256GCM", "zip": "DEF", "epk": {"kty": "OKP", "crv": "X25519", "x": b64(&[0; 32])}});
    let ecdh_jwe = format!(
        "{}.{}.{}.{}.{}",
        b64(ecdh.to_string().as_bytes()),
        b64(&[1; 4]),
        b64(&[2; 12]),
        b64(&[3; 32]),
        b64(&[4; 16])
    );
    let with_member = |name: &str, value: Value| {
        let mut header = json!({"alg": "EdDSA", "kid": env.orders.kid, "typ": "trustwire+jwt"});
        header[name] = value;
        env.signed_header(&header)
    };
    let pbes2_three = json!({"alg": "PBES2-HS512+A256KW", "p2c": 2_147_483_647u32, "p2s": "AAAAAAAAAAAAAAAAAAAAAA", "kid": env.orders.kid, "typ": "trustwire+jwt"});
    vec![
        case("compact JWE, PBES2 with p2c 2^31-1", jwe, Reason::WrongType),
        case(
            "compact JWE, ECDH-ES with zip and a 4-byte key",
            ecdh_jwe,
            Reason::WrongType,
        ),
        case(
            "enc in a JWS header",
            with_member("enc", json!("A256GCM")),
            Reason::WrongType,
        ),
        case(
            "zip in a JWS header",
            with_member("zip", json!("DEF")),
            Reason::UnsupportedHeader,
        ),
        case(
            "PBES2 alg in a three-segment token",
            env.signed_header(&pbes2_three),
            Reason::UnsupportedAlg,
        ),
    ]
}

/// Duplicate member names, also hidden behind JSON escapes: two parsers
/// that keep different duplicates read two different tokens.
fn duplicate_member_cases(env: &Env) -> Vec<Case> {
    let kid = &env.orders.kid;
    let good = claims().to_string();
    let headers = [
        (
            "alg twice",
            format!(r#"{{"alg":"EdDSA","alg":"none","kid":"{kid}","typ":"trustwire+jwt"}}"#),
        ),
        (
            "alg and \\u0061lg",
            format!(r#"{{"alg":"none","\u0061lg":"EdDSA","kid":"{kid}","typ":"trustwire+jwt"}}"#),
        ),
        (
            "kid twice",
            format!(r#"{{"alg":"EdDSA","kid":"{kid}","kid":"other","typ":"trustwire+jwt"}}"#),
        ),
        (
            "typ and \\u0074yp",
            format!(r#"{{"alg":"EdDSA","kid":"{kid}","typ":"trustwire+jwt","\u0074yp":"JWT"}}"#),
        ),
    ];
    let mut cases: Vec<Case> = headers
        .into_iter()
        .map(|(name, header)| {
            case(
                format!("header {name}"),
                env.orders.forge(&header, &good),
                Reason::Malformed,
            )
        })
        .collect();

    let header = env.orders.header();
    let digest = payload_digest(PAYLOAD);
    let body = format!(
        r#""iss":"orders","aud":"payments","iat":{NOW},"exp":{},"jti":"j","chn":"{CHANNEL}","dig":"{digest}""#,
        NOW + 60
    );
    let claim_sets = [
        ("sub twice", format!(r#"{{{body},"sub":"alice","sub":"admin"}}"#)),
        (
            "sub and \\u0073ub",
            format!(r#"{{{body},"sub":"alice","\u0073ub":"admin"}}"#),
        ),
        ("aud twice", format!(r#"{{{body},"aud":"billing"}}"#)),
        ("exp twice", format!(r#"{{{body},"exp":{}}}"#, NOW + 1_000_000)),
        ("iss twice", format!(r#"{{{body},"iss":"billing"}}"#)),
        (
            "nested act.sub twice",
            format!(r#"{{{body},"act":{{"sub":"a","sub":"b"}}}}"#),
        ),
    ];
    for (name, claims_text) in claim_sets {
        cases.push(case(
            format!("claims {name}"),
            env.orders.forge(&header, &claims_text),
            Reason::Malformed,
        ));
    }
    cases
}

/// `aud` in every shape that a loose comparison might take for ours.
fn audience_cases(env: &Env) -> Vec<Case> {
    let variants = [
        ("absent", None, Reason::MissingClaim),
        ("empty array", Some(json!([])), Reason::WrongAudience),
        ("empty string", Some(json!("")), Reason::WrongAudience),
        ("number", Some(json!(123)), Reason::Malformed),
        ("null", Some(json!(null)), Reason::Malformed),
        ("object", Some(json!({"payments": true})), Reason::Malformed),
        ("array with null", Some(json!([null])), Reason::Malformed),
        ("nested array", Some(json!([["payments"]])), Reason::Malformed),
        ("another service", Some(json!("billing")), Reason::WrongAudience),
        (
            "another service in an array",
            Some(json!(["billing"])),
            Reason::WrongAudience,
        ),
        ("case variant", Some(json!("Payments")), Reason::WrongAudience),
        ("upper case", Some(json!(["PAYMENTS"])), Reason::WrongAudience),
        ("trailing space", Some(json!("payments ")), Reason::WrongAudience),
        ("trailing NUL", Some(json!("payments\u{0}")), Reason::WrongAudience),
        ("Cyrillic a", Some(json!("p\u{0430}yments")), Reason::WrongAudience),
        ("prefix", Some(json!("payment")), Reason::WrongAudience),
        ("wildcard", Some(json!("*")), Reason::WrongAudience),
        (
            "SPIFFE id ending in ours",
            Some(json!("spiffe://example.org/payments")),
            Reason::WrongAudience,
        ),
        ("65 entries", Some(json!(vec!["payments"; 65])), Reason::Malformed),
    ];
    variants
        .into_iter()
        .map(|(name, value, reason)| {
            let token_claims = match value {
                None => without(claims(), "aud"),
                Some(value) => with(claims(), "aud", value),
            };
            case(format!("aud {name}"), env.signed(&token_claims), reason)
        })
        .collect()
}

/// `iss` that does not own the signing key.
fn issuer_cases(env: &Env) -> Vec<Case> {
    let good = claims();
    vec![
        case(
            "iss of another trusted issuer, our kid",
            env.signed(&with(good.clone(), "iss", json!("billing"))),
            Reason::IssuerMismatch,
        ),
        case(
            "iss of an untrusted issuer, our kid",
            env.signed(&with(good.clone(), "iss", json!("mallory"))),
            Reason::IssuerMismatch,
        ),
        case(
            "iss orders, signed with billing's key",
            env.billing.forge(&env.billing.header(), &good.to_string()),
            Reason::IssuerMismatch,
        ),
        case(
            "iss case variant",
            env.signed(&with(good.clone(), "iss", json!("Orders"))),
            Reason::IssuerMismatch,
        ),
        case(
            "iss absent",
            env.signed(&without(good.clone(), "iss")),
            Reason::MissingClaim,
        ),
        case(
            "iss number",
            env.signed(&with(good.clone(), "iss", json!(1))),
            Reason::Malformed,
        ),
        case(
            "iss array",
            env.signed(&with(good, "iss", json!(["orders"]))),
            Reason::Malformed,
        ),
    ]
}

/// `exp`, `nbf` and `iat` of every JSON type and range. A library that
/// converts them through floats can panic or wrap (josekit goes through
/// `Duration::from_secs_f64`); here each is rejected before any arithmetic.
fn time_claim_cases(env: &Env) -> Vec<Case> {
    let huge: Value = serde_json::from_str("10000000000000000000").unwrap();
    let values = [
        ("string", json!((NOW + 60).to_string())),
        ("null", json!(null)),
        ("true", json!(true)),
        ("false", json!(false)),
        ("negative", json!(-1)),
        ("1e300", json!(1e300)),
        ("10000000000000000000", huge),
        ("float with fraction", json!(NOW as f64 + 60.5)),
        ("integral float", json!(NOW as f64 + 60.0)),
        ("year 10000", json!(253_402_300_800i64)),
        ("i64 min", json!(i64::MIN)),
        ("array", json!([NOW + 60])),
    ];
    let mut cases = Vec::new();
    for claim in ["exp", "nbf", "iat"] {
        for (name, value) in &values {
            cases.push(case(
                format!("{claim} {name}"),
                env.signed(&with(claims(), claim, value.clone())),
                Reason::Malformed,
            ));
        }
    }
    cases.push(case(
        "exp absent",
        env.signed(&without(claims(), "exp")),
        Reason::MissingClaim,
    ));
    cases.push(case(
        "iat absent",
        env.signed(&without(claims(), "iat")),
        Reason::MissingClaim,
    ));
    cases.push(case(
        "exp equal to iat",
        env.signed(&with(claims(), "exp", json!(NOW))),
        Reason::Malformed,
    ));
    cases.push(case(
        "exp at the year 9999 limit",
        env.signed(&with(claims(), "exp", json!(253_402_300_799i64))),
        Reason::LifetimeTooLong,
    ));
    cases.push(case(
        "nbf at the year 9999 limit",
        env.signed(&with(claims(), "nbf", json!(253_402_300_799i64))),
        Reason::NotYetValid,
    ));
    cases.push(case(
        "iat and exp at 0",
        env.signed(&with(with(claims(), "iat", json!(0)), "exp", json!(60))),
        Reason::Expired,
    ));
    cases
}

/// Encodings that differ between parsers: padding, whitespace, the standard
/// alphabet, a byte-order mark, invalid UTF-8, lone surrogates, comments,
/// deep nesting and sizes at the limit.
fn encoding_cases(env: &Env) -> Vec<Case> {
    let header = env.orders.header();
    let good = claims().to_string();
    let token = env.signed(&claims());
    let parts: Vec<&str> = token.split('.').collect();

    let raw_claims = |bytes: &[u8]| {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(bytes));
        let signature = ed25519_dalek::SigningKey::from_bytes(&env.orders.seed).sign(input.as_bytes());
        format!("{input}.{}", b64(&signature.to_bytes()))
    };
    let deep = format!("{}{}", "[".repeat(17), "]".repeat(17));
    let deep_claims = with(claims(), "x", serde_json::from_str(&deep).unwrap());
    let near_limit = "[".repeat(2500) + &"]".repeat(2500);

    vec![
        case(
            "padded header",
            format!("{}==.{}.{}", parts[0], parts[1], parts[2]),
            Reason::Malformed,
        ),
        case("space before the token", format!(" {token}"), Reason::Malformed),
        case("newline after the token", format!("{token}\n"), Reason::Malformed),
        case(
            "CR LF inside the token",
            format!("{}.\r\n{}.{}", parts[0], parts[1], parts[2]),
            Reason::Malformed,
        ),
        case(
            "signature in the padded standard alphabet",
            format!(
                "{}.{}.{}",
                parts[0],
                parts[1],
                STANDARD.encode(URL_SAFE_NO_PAD.decode(parts[2]).unwrap())
            ),
            Reason::Malformed,
        ),
        case("four segments", format!("{token}.{}", parts[2]), Reason::Malformed),
        // Five parts, like a compact JWE, but not one token.
        case(
            "two tokens joined by a space",
            format!("{token} {token}"),
            Reason::Malformed,
        ),
        case(
            "two tokens joined by a comma",
            format!("{token},{token}"),
            Reason::Malformed,
        ),
        case("two segments", format!("{}.{}", parts[0], parts[1]), Reason::Malformed),
        case("empty token", String::new(), Reason::Malformed),
        case("only dots", "..".to_owned(), Reason::Malformed),
        case(
            "byte-order mark in claims",
            raw_claims(format!("\u{feff}{good}").as_bytes()),
            Reason::Malformed,
        ),
        case(
            "invalid UTF-8 in claims",
            raw_claims(b"{\"iss\":\"orders\xff\"}"),
            Reason::Malformed,
        ),
        case(
            "lone surrogate escape",
            raw_claims(br#"{"iss":"orders","sub":"\ud800"}"#),
            Reason::Malformed,
        ),
        case(
            "comment in claims",
            raw_claims(format!("/*x*/{good}").as_bytes()),
            Reason::Malformed,
        ),
        case("trailing comma", raw_claims(br#"{"iss":"orders",}"#), Reason::Malformed),
        case("NaN", raw_claims(br#"{"exp":NaN}"#), Reason::Malformed),
        case("claims are an array", raw_claims(b"[1,2,3]"), Reason::Malformed),
        case("claims are a string", raw_claims(b"\"orders\""), Reason::Malformed),
        case(
            "trailing data after claims",
            raw_claims(format!("{good} {{}}").as_bytes()),
            Reason::Malformed,
        ),
        case("nesting 17 deep", env.signed(&deep_claims), Reason::Malformed),
        case(
            "nesting 2500 deep",
            raw_claims(near_limit.as_bytes()),
            Reason::Malformed,
        ),
        case("token of 8 KiB + 1", "A".repeat(8 * 1024 + 1), Reason::TooLarge),
        case("token of 1 MiB", "A.".repeat(512 * 1024), Reason::TooLarge),
    ]
}

/// `typ` variants: only `trustwire+jwt` (any case, optional
/// `application/` prefix) is a trustwire token.
fn typ_cases(env: &Env) -> Vec<Case> {
    let variants = [
        ("JWT", Some(json!("JWT"))),
        ("at+jwt", Some(json!("at+jwt"))),
        ("absent", None),
        ("empty", Some(json!(""))),
        ("trailing space", Some(json!("trustwire+jwt "))),
        ("number", Some(json!(1))),
        ("other prefix", Some(json!("text/trustwire+jwt"))),
    ];
    variants
        .into_iter()
        .map(|(name, typ)| {
            let mut header = json!({"alg": "EdDSA", "kid": env.orders.kid});
            if let Some(typ) = typ {
                header["typ"] = typ;
            }
            case(format!("typ {name}"), env.signed_header(&header), Reason::WrongType)
        })
        .collect()
}

type CaseTable = fn(&Env) -> Vec<Case>;

/// Every class, for the memory probe.
const ALL_CLASSES: [(&str, CaseTable); 14] = [
    ("alg none", alg_none_cases),
    ("HMAC key confusion", hmac_confusion_cases),
    ("RSA JWK without alg", rsa_without_alg_cases),
    ("ECDSA signatures", ecdsa_cases),
    ("EdDSA signatures", eddsa_signature_cases),
    ("crit and b64", crit_and_b64_cases),
    ("embedded keys and URLs", embedded_key_cases),
    ("JWE as JWS", jwe_as_jws_cases),
    ("duplicate members", duplicate_member_cases),
    ("audience", audience_cases),
    ("issuer", issuer_cases),
    ("time claims", time_claim_cases),
    ("encodings", encoding_cases),
    ("typ", typ_cases),
];

// ---------------------------------------------------------------------------
// One test per class
// ---------------------------------------------------------------------------

async fn run_class(table: CaseTable) {
    let env = Env::start().await;
    env.reject_all(&table(&env)).await;
}

#[tokio::test]
async fn alg_none() {
    run_class(alg_none_cases).await;
}

#[tokio::test]
async fn hmac_with_public_key() {
    run_class(hmac_confusion_cases).await;
}

#[tokio::test]
async fn rsa_jwk_without_alg() {
    run_class(rsa_without_alg_cases).await;
}

#[tokio::test]
async fn ecdsa_zero_and_order_signatures() {
    run_class(ecdsa_cases).await;
}

#[tokio::test]
async fn eddsa_malleable_signatures() {
    run_class(eddsa_signature_cases).await;
}

#[tokio::test]
async fn crit_and_b64() {
    run_class(crit_and_b64_cases).await;
}

#[tokio::test]
async fn embedded_keys_and_urls() {
    let env = Env::start().await;
    env.reject_all(&embedded_key_cases(&env)).await;
    assert_eq!(env.server.requests_to("/attacker/jwks.json"), 0);
    assert_eq!(env.server.requests_to("/attacker/cert.pem"), 0);
    assert_eq!(env.server.requests_to("/attacker/kid"), 0);
}

#[tokio::test]
async fn jwe_where_jws_expected() {
    run_class(jwe_as_jws_cases).await;
}

#[tokio::test]
async fn duplicate_members() {
    run_class(duplicate_member_cases).await;
}

#[tokio::test]
async fn audience_variants() {
    run_class(audience_cases).await;
}

#[tokio::test]
async fn issuer_variants() {
    run_class(issuer_cases).await;
}

#[tokio::test]
async fn time_claim_types() {
    run_class(time_claim_cases).await;
}

#[tokio::test]
async fn encoding_variants() {
    run_class(encoding_cases).await;
}

#[tokio::test]
async fn typ_variants() {
    run_class(typ_cases).await;
}

/// The controls: the environment accepts good tokens from each key, so the
/// rejections above are not an artefact of a broken set-up.
#[tokio::test]
async fn controls_accepted() {
    let env = Env::start().await;
    let ed = env.signed(&claims());
    let es = env
        .orders_es
        .forge(&env.orders_es.header(), &with(claims(), "jti", json!("es")).to_string())
        .0;
    let billing = env.billing.forge(
        &env.billing.header(),
        &with(with(claims(), "iss", json!("billing")), "jti", json!("b")).to_string(),
    );
    for (name, token) in [("EdDSA", ed), ("ES256", es), ("billing", billing)] {
        let result = env.verifier.verify(&token, &expected()).await;
        assert!(result.is_ok(), "{name}: {:?}", result.err());
    }
    assert_eq!(env.server.requests(), 1);
}

/// The attack inputs are real attacks: a verifier that takes the algorithm
/// and key from the token accepts them. Without this check a test above
/// could pass on an input that no library would ever accept.
#[test]
fn attack_inputs_fool_naive_verifiers() {
    use josekit::jwk::Jwk;
    use josekit::jws::{EdDSA, HS256};

    // RFC 4231 test case 2 checks the HMAC used to forge the tokens.
    let mac = hmac::<Sha256>(64, b"Jefe", b"what do ya want for nothing?");
    assert_eq!(
        mac.iter().map(|byte| format!("{byte:02x}")).collect::<String>(),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );

    // HS256 keyed with the PEM of the public key verifies under josekit's
    // HMAC with those bytes as the secret, which is what CVE-2016-10555-style
    // libraries do when they read the algorithm from the token.
    let orders = EdKey::new(7);
    let spki_pem = pem("PUBLIC KEY", &ed25519_spki(&orders.x_bytes()), "\n", "");
    let header = json!({"alg": "HS256", "kid": orders.kid, "typ": "trustwire+jwt"}).to_string();
    let token = hmac_token("HS256", &header, &claims().to_string(), spki_pem.as_bytes());
    let verifier = HS256.verifier_from_bytes(spki_pem.as_bytes()).unwrap();
    assert!(josekit::jws::deserialize_compact(&token, &verifier).is_ok());

    // The small-order forgery: the identity point with S = 0 verifies under
    // ed25519-dalek's non-strict verify and under OpenSSL (through josekit)
    // for the identity key, for any message.
    let identity_x = URL_SAFE_NO_PAD.decode(SMALL_ORDER_X[0]).unwrap();
    let weak = ed25519_dalek::VerifyingKey::from_bytes(&identity_x.try_into().unwrap()).unwrap();
    let mut forged = [0u8; 64];
    forged[0] = 1;
    let forged = ed25519_dalek::Signature::from_bytes(&forged);
    assert!(weak.verify_strict(b"any message", &forged).is_err());
    assert!(
        ed25519_dalek::Verifier::verify(&weak, b"any message", &forged).is_ok(),
        "non-strict verify accepts the forgery"
    );

    let weak_jwk = Jwk::from_bytes(json!({"kty": "OKP", "crv": "Ed25519", "x": SMALL_ORDER_X[0]}).to_string()).unwrap();
    let weak_header = json!({"alg": "EdDSA", "kid": "weak", "typ": "trustwire+jwt"}).to_string();
    let mut identity_zero = vec![0u8; 64];
    identity_zero[0] = 1;
    let forged_token = assemble(&weak_header, &claims().to_string(), &identity_zero);
    let josekit_verifier = EdDSA.verifier_from_jwk(&weak_jwk).unwrap();
    assert!(
        josekit::jws::deserialize_compact(&forged_token, &josekit_verifier).is_ok(),
        "OpenSSL accepts the small-order forgery"
    );
}

// ---------------------------------------------------------------------------
// Keys rejected when a key set or private key is loaded
// ---------------------------------------------------------------------------

/// Every small-order point encoding: the eight canonical ones (identity,
/// order 2, two of order 4, four of order 8) and non-canonical y >= p
/// encodings of the same points.
const SMALL_ORDER_POINTS_HEX: [&str; 11] = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0100000000000000000000000000000000000000000000000000000000000080",
];

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(&text[index..index + 2], 16).unwrap())
        .collect()
}

#[test]
fn small_order_keys_rejected_at_load() {
    for point in SMALL_ORDER_POINTS_HEX {
        let x = b64(&hex(point));
        let good = EdKey::new(7).jwk();
        let document = json!({"keys": [good, {"kty": "OKP", "crv": "Ed25519", "x": x}]}).to_string();
        match JwkSet::parse(document.as_bytes()) {
            Err(JwksError::Key {
                index: 1,
                source: KeyError::WeakKey | KeyError::InvalidJwk(_),
            }) => {}
            other => panic!("{point}: {other:?}"),
        }
    }
    for x in SMALL_ORDER_X {
        let document =
            json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA", "use": "sig"}]}).to_string();
        let result = JwkSet::parse(document.as_bytes());
        assert!(
            matches!(
                result,
                Err(JwksError::Key {
                    source: KeyError::WeakKey,
                    ..
                })
            ),
            "{x}: {result:?}"
        );

        let bytes: [u8; 32] = URL_SAFE_NO_PAD.decode(x).unwrap().try_into().unwrap();
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).unwrap();
        assert!(matches!(PublicKey::ed25519(key), Err(KeyError::WeakKey)), "{x}");
    }
}

#[test]
fn small_order_key_file_rejected() {
    let dir = tempfile::tempdir().unwrap();
    for (index, x) in SMALL_ORDER_X.iter().enumerate() {
        let path = dir.path().join(format!("weak-{index}.json"));
        std::fs::write(&path, json!({"kty": "OKP", "crv": "Ed25519", "x": x}).to_string()).unwrap();
        let result = KeySource::file(&path);
        // The file error carries its cause as text, so the weak-key message
        // distinguishes this rejection from an unreadable or malformed file.
        match result {
            Err(SourceError::File { reason, .. }) => {
                assert!(reason.contains(&KeyError::WeakKey.to_string()), "{x}: {reason}");
            }
            other => panic!("{x}: {other:?}"),
        }
    }
}

/// A JWKS server that serves only a small-order key: the fetched set is
/// rejected as a whole, the forged token is rejected, and the retry wait
/// keeps a second token from causing a second fetch.
#[tokio::test]
async fn small_order_key_from_remote_jwks() {
    for x in SMALL_ORDER_X {
        // JwksPublisher serves only sets that passed JwkSet's checks, so the
        // weak set is served as plain bytes, as an attacker's server would.
        let weak_jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "weak"});
        let weak_document = json!({ "keys": [weak_jwk] }).to_string();
        let app = axum::Router::new().route(
            JWKS_PATH,
            axum::routing::get(move || {
                let body = weak_document.clone();
                async move { ([(axum::http::header::CONTENT_TYPE, "application/jwk-set+json")], body) }
            }),
        );
        let (addr, log) = serve_counting(app).await;
        let url = format!("http://{addr}{JWKS_PATH}");

        let remote = RemoteJwks::builder(url)
            .retry_interval(Duration::from_secs(60))
            .build()
            .unwrap();
        let trust = TrustStore::new().trust(service("mallory"), KeySource::Remote(remote.clone()));
        let verifier = Verifier::builder(service("payments"), trust)
            .clock(Arc::new(FixedClock::new(NOW)))
            .build()
            .unwrap();

        let header = json!({"alg": "EdDSA", "kid": "weak", "typ": "trustwire+jwt"}).to_string();
        let mut identity_zero = vec![0u8; 64];
        identity_zero[0] = 1;
        for jti in ["first", "second"] {
            let token_claims = with(with(claims(), "iss", json!("mallory")), "jti", json!(jti));
            let token = assemble(&header, &token_claims.to_string(), &identity_zero);
            let rejection = verifier.verify(&token, &expected()).await.unwrap_err();
            assert_eq!(
                rejection.reason(),
                Reason::KeySourceUnavailable,
                "{x}: {}",
                rejection.detail()
            );
            assert!(
                rejection.detail().contains("weak Ed25519 public key"),
                "{}",
                rejection.detail()
            );
        }
        assert_eq!(log.lock().unwrap().len(), 1, "{x}: one fetch, then the retry wait");
        assert!(remote.cached().is_none());
    }
}

#[test]
fn private_jwk_with_mismatched_x() {
    let key = SigningKey::from_seed(&[21; 32]).unwrap();
    let other = EdKey::new(22);
    let mut jwk: Value = serde_json::from_str(&key.to_private_jwk()).unwrap();

    // x of another key, with and without the kid that names the real key.
    jwk["x"] = json!(b64(&other.x_bytes()));
    let result = SigningKey::from_private_jwk(&jwk.to_string());
    assert!(matches!(result, Err(KeyError::MismatchedPrivateKey)), "{result:?}");
    jwk.as_object_mut().unwrap().remove("kid");
    let result = SigningKey::from_private_jwk(&jwk.to_string());
    assert!(matches!(result, Err(KeyError::MismatchedPrivateKey)), "{result:?}");

    // x of a small-order point: d still derives the real public key.
    jwk["x"] = json!(SMALL_ORDER_X[0]);
    let result = SigningKey::from_private_jwk(&jwk.to_string());
    assert!(matches!(result, Err(KeyError::MismatchedPrivateKey)), "{result:?}");

    // The same private JWK in a key set is rejected for its d.
    let document = json!({ "keys": [jwk] }).to_string();
    let result = JwkSet::parse(document.as_bytes());
    assert!(
        matches!(
            result,
            Err(JwksError::Key {
                source: KeyError::PrivateMaterial { member: "d" },
                ..
            })
        ),
        "{result:?}"
    );
}

/// The ES256 signature s can be replaced by n - s and still verify (RFC 7518
/// does not require low-s). The replay guard is keyed on `jti`, so the
/// second encoding of an accepted token is still a replay.
#[tokio::test]
async fn ecdsa_high_s_is_a_replay() {
    let env = Env::start().await;
    let header = env.orders_es.header();
    let good = with(claims(), "jti", json!("high-s")).to_string();
    let (token, signature) = env.orders_es.forge(&header, &good);

    let mut negated_s = [0u8; 32];
    let mut borrow = 0i16;
    for index in (0..32).rev() {
        let difference = i16::from(P256_ORDER[index]) - i16::from(signature[32 + index]) - borrow;
        negated_s[index] = difference.rem_euclid(256) as u8;
        borrow = i16::from(difference < 0);
    }
    let other = assemble(&header, &good, &[&signature[..32], &negated_s[..]].concat());

    env.verifier.verify(&token, &expected()).await.unwrap();
    let rejection = env.verifier.verify(&other, &expected()).await.unwrap_err();
    assert_eq!(rejection.reason(), Reason::Replayed, "{}", rejection.detail());
    assert_eq!(env.server.requests(), 1);
}

// ---------------------------------------------------------------------------
// A storm of unknown kids against a live JWKS server, with a key rotation
// ---------------------------------------------------------------------------

/// Sends 10 000 tokens with random `kid`s, in concurrent waves, to a
/// verifier whose JWKS server runs on loopback. Half way through, the issuer
/// publishes a new key and signs with it. The server must see at most one
/// fetch per cooldown, and the new key must verify within the cooldown plus
/// one fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_storm_with_rotation() {
    const TOKENS: usize = 10_000;
    const WAVE: usize = 250;
    const COOLDOWN: Duration = Duration::from_secs(1);
    const WAVE_GAP: Duration = Duration::from_millis(25);
    // The loopback fetch takes about a millisecond; this allows a slow CI.
    const FETCH_ALLOWANCE: Duration = Duration::from_millis(500);

    let old = SigningKey::from_seed(&[31; 32]).unwrap();
    let new = SigningKey::from_seed(&[32; 32]).unwrap();
    let server = CountingServer::start(
        &JwkSet::from_keys(vec![old.public_key().clone()]),
        Duration::from_secs(60),
    )
    .await;
    let remote = RemoteJwks::builder(server.jwks_url())
        .ttl_bounds(Duration::from_secs(60), Duration::from_secs(60))
        .unknown_kid_cooldown(COOLDOWN)
        .build()
        .unwrap();
    let trust = TrustStore::new().trust(service("orders"), KeySource::Remote(remote));
    let verifier = Verifier::builder(service("payments"), trust).build().unwrap();
    verifier.trust_store().prefetch().await.unwrap();

    let new_public = new.public_key().clone();
    let new_signer = trustwire::Signer::new(service("orders"), new);
    let random_kid_token = |index: usize| {
        let mut kid = [0u8; 32];
        getrandom::fill(&mut kid).unwrap();
        let header = json!({"alg": "EdDSA", "kid": b64(&kid), "typ": "trustwire+jwt"}).to_string();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let token_claims = json!({"iss": "orders", "aud": "payments", "iat": now, "exp": now + 60, "jti": format!("storm-{index}"), "chn": CHANNEL, "dig": payload_digest(PAYLOAD)});
        assemble(&header, &token_claims.to_string(), &[7; 64])
    };

    let started = Instant::now();
    let mut rotated_at = None;
    let mut new_key_accepted_at = None;
    let mut sent = 0;
    let mut unknown = 0;
    while sent < TOKENS {
        if rotated_at.is_none() && sent >= TOKENS / 2 {
            server
                .publisher
                .update(&JwkSet::from_keys(vec![old.public_key().clone(), new_public.clone()]));
            rotated_at = Some(Instant::now());
        }

        let mut wave: Vec<String> = (sent..sent + WAVE).map(random_kid_token).collect();
        if rotated_at.is_some() && new_key_accepted_at.is_none() {
            wave.push(
                new_signer
                    .token(service("payments"))
                    .binding(Binding::channel(CHANNEL).unwrap())
                    .payload(PAYLOAD)
                    .sign()
                    .unwrap(),
            );
        }
        let results = futures_util::future::join_all(wave.iter().map(|token| {
            let verifier = verifier.clone();
            async move { verifier.verify(token, &expected()).await }
        }))
        .await;
        // The first WAVE results are the random kids; a last one, if any,
        // is the token signed with the new key.
        for (index, result) in results.into_iter().enumerate() {
            match result {
                Ok(verified) => {
                    assert_eq!(index, WAVE, "a random kid was accepted");
                    assert_eq!(verified.kid, new_signer.kid());
                    new_key_accepted_at.get_or_insert_with(Instant::now);
                }
                Err(rejection) => {
                    assert_eq!(rejection.reason(), Reason::UnknownKey, "{}", rejection.detail());
                    if index < WAVE {
                        unknown += 1;
                    }
                }
            }
        }
        sent += WAVE;
        tokio::time::sleep(WAVE_GAP).await;
    }
    let elapsed = started.elapsed();

    assert_eq!(unknown, TOKENS);
    let rotated_at = rotated_at.unwrap();
    let accepted_at = new_key_accepted_at.expect("the new key was never accepted");
    let delay = accepted_at - rotated_at;
    assert!(
        delay <= COOLDOWN + FETCH_ALLOWANCE,
        "the new key was accepted {delay:?} after the rotation"
    );

    // The prefetch, then unknown-kid refreshes at least a cooldown apart.
    let times = server.request_times();
    let refreshes = &times[1..];
    // The server stamps arrival, not the client's decision to fetch, so a
    // gap may look shorter by the difference of two loopback connects, which
    // grows on a loaded CI machine.
    for pair in refreshes.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap + Duration::from_millis(200) >= COOLDOWN,
            "two fetches {gap:?} apart"
        );
    }
    let most = (elapsed.as_millis() / COOLDOWN.as_millis()) as usize + 1;
    assert!(
        refreshes.len() <= most,
        "{} refreshes in {elapsed:?}, more than {most}",
        refreshes.len()
    );
    assert!(elapsed < Duration::from_secs(60), "the storm took {elapsed:?}");
}

// ---------------------------------------------------------------------------
// Memory: every case again, in a process of its own
// ---------------------------------------------------------------------------

const PROBE_VAR: &str = "TRUSTWIRE_HOSTILE_MEMORY_PROBE";
const PROBE_ROUNDS: usize = 10;
/// Peak memory growth allowed over the probe's rounds, after a first round
/// has warmed every cache. A token is at most 8 KiB, so the whole table of
/// about 270 cases fits in well under a megabyte.
const PEAK_GROWTH_LIMIT_KIB: u64 = 16 * 1024;

/// Reads the peak resident set size (`VmHWM`) of this process, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|line| line.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Runs the memory probe in a child process, so that no other test's
/// allocations count, and bounds the peak memory growth it reports.
#[test]
#[cfg(target_os = "linux")]
fn attack_table_memory_bounded() {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "memory_probe",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PROBE_VAR, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "memory probe failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find(|line| line.contains("memory_probe cases="))
        .unwrap_or_else(|| panic!("the probe printed no result:\n{stdout}"));
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|pair| pair.strip_prefix(name))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(field("cases=") > 250, "{line}");
    assert!(field("growth_kib=") <= PEAK_GROWTH_LIMIT_KIB, "{line}");
}

#[tokio::test]
#[ignore = "run by attack_table_memory_bounded in a process of its own"]
async fn memory_probe() {
    if std::env::var_os(PROBE_VAR).is_none() {
        return;
    }
    let env = Env::start().await;
    let cases: Vec<Case> = ALL_CLASSES.iter().flat_map(|(_, table)| table(&env)).collect();
    env.reject_all(&cases).await;
    let warm = peak_rss_kib();

    let mut slowest = Duration::ZERO;
    for _ in 0..PROBE_ROUNDS {
        for case in &cases {
            let started = Instant::now();
            env.reject(case).await;
            slowest = slowest.max(started.elapsed());
        }
    }
    let peak = peak_rss_kib();
    println!(
        "memory_probe cases={} rounds={PROBE_ROUNDS} warm_kib={warm} peak_kib={peak} growth_kib={} slowest_us={}",
        cases.len(),
        peak - warm,
        slowest.as_micros()
    );
}
