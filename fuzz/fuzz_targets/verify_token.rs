//! Fuzzes token parsing and verification.
//!
//! The first input byte picks the mode. Even: the rest is the token text.
//! Odd: the rest is header and claims bytes, split at the first NUL, which
//! the target signs with the trusted key, so the input reaches the claim,
//! binding and policy checks behind the signature.

#![no_main]

use std::sync::{Arc, OnceLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::Signer as _;
use libfuzzer_sys::fuzz_target;
use trustwire::clock::FixedClock;
use trustwire::envelope::payload_digest;
use trustwire::jwks::{JwkSet, KeySource, TrustStore};
use trustwire::{Binding, Expected, ServiceId, SigningKey, Verifier};

const SEED: [u8; 32] = [7; 32];
const NOW: i64 = 1_800_000_000;
const CHANNEL: &str = "nats:orders.created";
const PAYLOAD: &[u8] = br#"{"order":42}"#;

struct Target {
    runtime: tokio::runtime::Runtime,
    verifier: Verifier,
    key: ed25519_dalek::SigningKey,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let key = SigningKey::from_seed(&SEED).expect("a fixed seed is a valid key");
        let set = JwkSet::from_keys(vec![key.public_key().clone()]);
        let orders = ServiceId::new("orders").expect("valid service id");
        let trust = TrustStore::new().trust(orders, KeySource::inline(set));
        let payments = ServiceId::new("payments").expect("valid service id");
        let verifier = Verifier::builder(payments, trust)
            .clock(Arc::new(FixedClock::new(NOW)))
            .build()
            .expect("valid verifier options");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime");
        Target {
            runtime,
            verifier,
            key: ed25519_dalek::SigningKey::from_bytes(&SEED),
        }
    })
}

fn sign(key: &ed25519_dalek::SigningKey, header: &[u8], claims: &[u8]) -> String {
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let target = target();
    let token = if mode % 2 == 0 {
        match std::str::from_utf8(rest) {
            Ok(text) => text.to_owned(),
            Err(_) => return,
        }
    } else {
        let split = rest.iter().position(|&byte| byte == 0).unwrap_or(rest.len());
        let claims = rest.get(split + 1..).unwrap_or_default();
        sign(&target.key, &rest[..split], claims)
    };

    let binding = Binding::channel(CHANNEL).expect("valid channel");
    let expected = Expected::message(binding, PAYLOAD);
    if let Ok(verified) = target.runtime.block_on(target.verifier.verify(&token, &expected)) {
        // Whatever got through must be exactly what the checks promise.
        let claims = &verified.claims;
        assert_eq!(claims.iss, "orders");
        assert!(claims.aud.iter().any(|aud| aud == "payments"));
        assert_eq!(claims.chn.as_deref(), Some(CHANNEL));
        assert_eq!(claims.dig.as_deref(), Some(payload_digest(PAYLOAD).as_str()));
        assert!(claims.exp > claims.iat);
        assert!(claims.exp + 30 >= NOW);
    }
});
