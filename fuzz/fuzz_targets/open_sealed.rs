//! Fuzzes opening sealed messages. The input is the JWE; the target signs a
//! token whose `dig` covers it with the trusted key, so every input reaches
//! the JWE parser and decryption behind the signature check.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use trustwire::jwks::{JwkSet, KeySource, TrustStore};
use trustwire::keys::EncryptionKey;
use trustwire::seal::Opener;
use trustwire::{Binding, Expected, ServiceId, Signer, SigningKey, Verifier};

const SIGNING_SEED: [u8; 32] = [7; 32];
/// The recipient's X25519 secret; the seed corpus is sealed to its public key.
const ENCRYPTION_SECRET: [u8; 32] = [9; 32];
const CHANNEL: &str = "nats:orders.created";

struct Target {
    runtime: tokio::runtime::Runtime,
    opener: Opener,
    signer: Signer,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let orders = ServiceId::new("orders").expect("valid service id");
        let signing_key = SigningKey::from_seed(&SIGNING_SEED).expect("a fixed seed is a valid key");
        let set = JwkSet::from_keys(vec![signing_key.public_key().clone()]);
        let trust = TrustStore::new().trust(orders.clone(), KeySource::inline(set));
        let verifier = Verifier::builder(ServiceId::new("payments").expect("valid service id"), trust)
            .build()
            .expect("valid verifier options");
        let encryption_key =
            EncryptionKey::from_x25519_bytes(&ENCRYPTION_SECRET).expect("any 32 bytes are an X25519 key");
        let opener = Opener::new(verifier, vec![encryption_key]).expect("valid opener options");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime");
        Target {
            runtime,
            opener,
            signer: Signer::new(orders, signing_key),
        }
    })
}

fuzz_target!(|jwe: &[u8]| {
    let target = target();
    let binding = Binding::channel(CHANNEL).expect("valid channel");
    let token = target
        .signer
        .token(ServiceId::new("payments").expect("valid service id"))
        .binding(binding.clone())
        .payload(jwe)
        .sign()
        .expect("signing with a fixed key");
    let expected = Expected::message(binding, jwe);
    if let Ok(opened) = target.runtime.block_on(target.opener.open(&token, &expected)) {
        assert_eq!(opened.verified.claims.iss, "orders");
    }
});
