//! Property tests of the signed envelope: every token the signer makes
//! verifies with the claims it was given, and any single-byte change of a
//! token or of its payload is rejected.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Signer as _;
use proptest::prelude::*;
use serde_json::{Value, json};
use trustwire::clock::FixedClock;
use trustwire::envelope::payload_digest;
use trustwire::jwks::{JwkSet, KeySource, TrustStore};
use trustwire::keys::Algorithm;
use trustwire::{Audience, Binding, Expected, Reason, ServiceId, Signer, SigningKey, Verifier};

const NOW: i64 = 1_800_000_000;

/// The reasons a token can get when one of its bytes changed: the change
/// breaks the encoding, the header or the signature, and never gets as far
/// as the claims.
const BYTE_CHANGE_REASONS: [Reason; 6] = [
    Reason::Malformed,
    Reason::WrongType,
    Reason::UnsupportedAlg,
    Reason::UnsupportedHeader,
    Reason::UnknownKey,
    Reason::BadSignature,
];

fn service(name: &str) -> ServiceId {
    ServiceId::new(name).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn verifier(set: JwkSet) -> Verifier {
    let trust = TrustStore::new().trust(service("orders"), KeySource::inline(set));
    Verifier::builder(service("payments"), trust)
        .clock(Arc::new(FixedClock::new(NOW)))
        .build()
        .unwrap()
}

fn signer(seed: [u8; 32], fully_specified: bool, ttl: Duration) -> (Signer, JwkSet) {
    let key = SigningKey::from_seed(&seed).unwrap();
    let set = JwkSet::from_keys(vec![key.public_key().clone()]);
    let mut builder = Signer::builder(service("orders"), key)
        .clock(Arc::new(FixedClock::new(NOW)))
        .ttl(ttl);
    if fully_specified {
        builder = builder.fully_specified_alg();
    }
    (builder.build().unwrap(), set)
}

/// A P-256 key for hand-made ES256 tokens (trustwire verifies ES256 but
/// signs only with Ed25519).
struct EsSigner {
    key: p256::ecdsa::SigningKey,
    kid: String,
    set: JwkSet,
}

impl EsSigner {
    /// Returns `None` when `secret` is zero or not below the group order.
    fn new(secret: [u8; 32]) -> Option<Self> {
        let key = p256::ecdsa::SigningKey::from_bytes(&p256::FieldBytes::from(secret)).ok()?;
        let point = key.verifying_key().to_encoded_point(false);
        let jwk = json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        });
        let set = JwkSet::parse(json!({ "keys": [jwk] }).to_string().as_bytes()).unwrap();
        let kid = set.keys()[0].kid().to_owned();
        Some(Self { key, kid, set })
    }

    fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "kid": self.kid, "typ": "trustwire+jwt"});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature: p256::ecdsa::Signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }
}

fn channel_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        "nats:[a-z0-9_-]{1,12}(\\.[a-z0-9_*>-]{1,12}){0,4}",
        "amqp:[a-z0-9._-]{0,12}/[a-z0-9_-]{1,12}(\\.[a-z0-9_#*-]{1,12}){0,3}",
    ]
}

/// Generates audiences that include `payments`, alone or in a list.
fn audience_strategy() -> impl Strategy<Value = Vec<String>> {
    (
        proptest::collection::vec("[a-z][a-z0-9-]{0,10}[a-z0-9]", 0..4),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(mut others, position)| {
            let at = position.index(others.len() + 1);
            others.insert(at, "payments".to_owned());
            others
        })
}

fn audience_of(names: &[String]) -> Audience {
    let ids: Vec<ServiceId> = names.iter().map(|name| service(name)).collect();
    Audience::many(ids).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn message_token_round_trip(
        seed in any::<[u8; 32]>(),
        fully_specified in any::<bool>(),
        ttl in 1u64..=600,
        channel in channel_strategy(),
        audience in audience_strategy(),
        payload in proptest::collection::vec(any::<u8>(), 0..2048),
        subject in proptest::option::of("[ -~]{1,64}"),
    ) {
        let (signer, set) = signer(seed, fully_specified, Duration::from_secs(ttl));
        let binding = Binding::channel(channel.clone()).unwrap();
        let mut token = signer.token(audience_of(&audience)).binding(binding.clone()).payload(&payload);
        if let Some(subject) = &subject {
            token = token.subject(subject);
        }
        let token = token.sign().unwrap();

        let verified = runtime()
            .block_on(verifier(set).verify(&token, &Expected::message(binding, &payload)))
            .unwrap();
        let claims = &verified.claims;
        prop_assert_eq!(&claims.iss, "orders");
        prop_assert_eq!(&claims.aud, &audience);
        prop_assert_eq!(claims.iat, NOW);
        prop_assert_eq!(claims.exp - claims.iat, ttl as i64);
        prop_assert_eq!(claims.chn.as_deref(), Some(channel.as_str()));
        prop_assert_eq!(claims.dig.clone(), Some(payload_digest(&payload)));
        prop_assert_eq!(&claims.sub, &subject);
        prop_assert_eq!(claims.jti.len(), 22);
        prop_assert_eq!(&verified.kid, signer.kid());
        let alg = if fully_specified { Algorithm::Ed25519 } else { Algorithm::EdDsa };
        prop_assert_eq!(verified.alg, alg);
    }

    #[test]
    fn http_token_round_trip(
        seed in any::<[u8; 32]>(),
        method in prop::sample::select(vec!["GET", "POST", "PUT", "PATCH", "DELETE"]),
        path in "(/[a-zA-Z0-9._~-]{1,12}){1,5}",
        query in proptest::collection::vec(("[a-z]{1,6}", "[a-zA-Z0-9]{0,8}"), 0..4),
        body in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..1024)),
    ) {
        let (signer, set) = signer(seed, false, Duration::from_secs(60));
        let query: Vec<String> = query.iter().map(|(name, value)| format!("{name}={value}")).collect();
        let target = if query.is_empty() { path.clone() } else { format!("{path}?{}", query.join("&")) };
        let binding = Binding::http(method, &target).unwrap();

        let mut token = signer.token(service("payments")).binding(binding.clone());
        if let Some(body) = &body {
            token = token.payload(body);
        }
        let token = token.sign().unwrap();

        let expected = Expected::new(binding.clone(), body.as_deref());
        let verified = runtime().block_on(verifier(set).verify(&token, &expected)).unwrap();
        let Binding::Http { method: bound_method, target: bound_target } = binding else {
            unreachable!("Binding::http returns an HTTP binding")
        };
        prop_assert_eq!(verified.claims.htm.as_deref(), Some(bound_method.as_str()));
        prop_assert_eq!(verified.claims.htu.as_deref(), Some(bound_target.as_str()));
        prop_assert_eq!(verified.claims.dig.clone(), body.as_deref().map(payload_digest));
        prop_assert_eq!(verified.claims.chn.clone(), None);
    }

    /// Every position, every replacement: a changed token never verifies,
    /// and the reason is one that comes before the claims are trusted.
    #[test]
    fn token_byte_change_rejected(
        seed in any::<[u8; 32]>(),
        channel in channel_strategy(),
        payload in proptest::collection::vec(any::<u8>(), 0..256),
        position in any::<prop::sample::Index>(),
        replacement in 0u8..128,
    ) {
        let (signer, set) = signer(seed, false, Duration::from_secs(60));
        let binding = Binding::channel(channel).unwrap();
        let token = signer.token(service("payments")).binding(binding.clone()).payload(&payload).sign().unwrap();

        let mut bytes = token.clone().into_bytes();
        let at = position.index(bytes.len());
        prop_assume!(bytes[at] != replacement);
        bytes[at] = replacement;
        let changed = String::from_utf8(bytes).unwrap();

        let runtime = runtime();
        let verifier = verifier(set);
        let expected = Expected::message(binding, &payload);
        let rejection = runtime.block_on(verifier.verify(&changed, &expected)).unwrap_err();
        prop_assert!(
            BYTE_CHANGE_REASONS.contains(&rejection.reason()),
            "byte {at} changed: {} ({})",
            rejection.code(),
            rejection.detail()
        );
        // The original still verifies with the same verifier: the change,
        // not the set-up, caused the rejection.
        prop_assert!(runtime.block_on(verifier.verify(&token, &expected)).is_ok());
    }

    /// Changes one character to any Unicode character, so that bytes outside
    /// ASCII are covered too: a `&str` carries them only inside a multi-byte
    /// character.
    #[test]
    fn token_char_change_rejected(
        seed in any::<[u8; 32]>(),
        position in any::<prop::sample::Index>(),
        replacement in any::<char>(),
    ) {
        let (signer, set) = signer(seed, false, Duration::from_secs(60));
        let binding = Binding::channel("nats:orders.created").unwrap();
        let token = signer.token(service("payments")).binding(binding.clone()).payload(b"x").sign().unwrap();

        let mut chars: Vec<char> = token.chars().collect();
        let at = position.index(chars.len());
        prop_assume!(chars[at] != replacement);
        chars[at] = replacement;
        let changed: String = chars.into_iter().collect();

        let rejection = runtime()
            .block_on(verifier(set).verify(&changed, &Expected::message(binding, b"x")))
            .unwrap_err();
        prop_assert!(BYTE_CHANGE_REASONS.contains(&rejection.reason()), "{}", rejection.code());
    }

    #[test]
    fn payload_byte_change_rejected(
        seed in any::<[u8; 32]>(),
        payload in proptest::collection::vec(any::<u8>(), 1..2048),
        position in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let (signer, set) = signer(seed, false, Duration::from_secs(60));
        let binding = Binding::channel("nats:orders.created").unwrap();
        let token = signer.token(service("payments")).binding(binding.clone()).payload(&payload).sign().unwrap();

        let mut changed = payload.clone();
        let at = position.index(changed.len());
        changed[at] ^= flip;

        let rejection = runtime()
            .block_on(verifier(set).verify(&token, &Expected::message(binding, &changed)))
            .unwrap_err();
        prop_assert_eq!(rejection.reason(), Reason::DigestMismatch);
    }

    #[test]
    fn payload_length_change_rejected(
        seed in any::<[u8; 32]>(),
        payload in proptest::collection::vec(any::<u8>(), 1..512),
        extra in any::<u8>(),
        append in any::<bool>(),
    ) {
        let (signer, set) = signer(seed, false, Duration::from_secs(60));
        let binding = Binding::channel("nats:orders.created").unwrap();
        let token = signer.token(service("payments")).binding(binding.clone()).payload(&payload).sign().unwrap();

        let changed = if append {
            [payload.as_slice(), &[extra]].concat()
        } else {
            payload[..payload.len() - 1].to_vec()
        };
        let rejection = runtime()
            .block_on(verifier(set).verify(&token, &Expected::message(binding, &changed)))
            .unwrap_err();
        prop_assert_eq!(rejection.reason(), Reason::DigestMismatch);
    }

    /// Arbitrary text never panics the verifier and is never accepted.
    #[test]
    fn arbitrary_text_rejected(text in prop_oneof![
        "[A-Za-z0-9_-]{0,200}\\.[A-Za-z0-9_-]{0,200}\\.[A-Za-z0-9_-]{0,100}",
        ".{0,400}",
    ]) {
        let (_, set) = signer([3; 32], false, Duration::from_secs(60));
        let binding = Binding::channel("nats:orders.created").unwrap();
        let result = runtime().block_on(verifier(set).verify(&text, &Expected::message(binding, b"x")));
        prop_assert!(result.is_err());
    }
}

/// Generates arbitrary JSON values, nested up to four levels.
fn json_strategy() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        (NOW - 100..NOW + 100).prop_map(Value::from),
        "[a-z]{0,10}".prop_map(Value::from),
        prop::sample::select(vec!["orders", "payments", "nats:orders.created"]).prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Generates claims objects from the registered names, with values of any type.
fn claims_strategy() -> impl Strategy<Value = Value> {
    let names = prop::sample::select(vec![
        "iss", "aud", "iat", "exp", "nbf", "jti", "sub", "chn", "htm", "htu", "dig", "act", "x",
    ]);
    proptest::collection::btree_map(names, json_strategy(), 0..12)
        .prop_map(|map| Value::Object(map.into_iter().map(|(name, value)| (name.to_owned(), value)).collect()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn es256_token_round_trip(
        secret in any::<[u8; 32]>(),
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        position in any::<prop::sample::Index>(),
        replacement in 0u8..128,
    ) {
        let signer = EsSigner::new(secret);
        prop_assume!(signer.is_some());
        let signer = signer.unwrap();
        let claims = json!({
            "iss": "orders", "aud": "payments", "iat": NOW, "exp": NOW + 60,
            "jti": "es256-round-trip", "chn": "nats:orders.created", "dig": payload_digest(&payload),
        });
        let token = signer.sign(&claims);
        let binding = Binding::channel("nats:orders.created").unwrap();
        let expected = Expected::message(binding, &payload);

        let runtime = runtime();
        let verifier = verifier(signer.set.clone());
        let mut bytes = token.clone().into_bytes();
        let at = position.index(bytes.len());
        if bytes[at] != replacement {
            bytes[at] = replacement;
            let changed = String::from_utf8(bytes).unwrap();
            let rejection = runtime.block_on(verifier.verify(&changed, &expected)).unwrap_err();
            prop_assert!(BYTE_CHANGE_REASONS.contains(&rejection.reason()), "{}", rejection.code());
        }

        let verified = runtime.block_on(verifier.verify(&token, &expected)).unwrap();
        prop_assert_eq!(verified.alg, Algorithm::Es256);
        prop_assert_eq!(&verified.kid, &signer.kid);
    }

    /// Signed claims of any shape never panic the verifier; when accepted,
    /// they are exactly what a well-formed token carries.
    #[test]
    fn signed_arbitrary_claims_never_panic(claims in claims_strategy()) {
        let key = SigningKey::from_seed(&[5; 32]).unwrap();
        let set = JwkSet::from_keys(vec![key.public_key().clone()]);
        let header = json!({"alg": "EdDSA", "kid": key.kid(), "typ": "trustwire+jwt"});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = ed25519_dalek::Signer::sign(&ed25519_dalek::SigningKey::from_bytes(&[5; 32]), input.as_bytes());
        let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()));

        let binding = Binding::channel("nats:orders.created").unwrap();
        let result = runtime().block_on(verifier(set).verify(&token, &Expected::message(binding, b"x")));
        if let Ok(verified) = result {
            prop_assert_eq!(&verified.claims.iss, "orders");
            prop_assert!(verified.claims.aud.iter().any(|aud| aud == "payments"));
            prop_assert_eq!(verified.claims.dig.clone(), Some(payload_digest(b"x")));
        }
    }
}
