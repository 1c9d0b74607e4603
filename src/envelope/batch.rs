//! Verifying the tokens of several messages at once, for transports that
//! receive messages in batches (JetStream pull batches, AMQP prefetch).

use super::rejection::Rejection;
use super::verifier::{Admitted, Expected, Verified, Verifier};
use crate::keys::has_strict_ed25519_encoding;

/// Maximum number of Ed25519 signatures checked in one batch equation.
///
/// When a batch equation fails, each signature in it is checked again on
/// its own, so this also bounds the work that one bad signature adds.
pub const MAX_SIGNATURE_BATCH: usize = 64;

impl Verifier {
    /// Verifies the tokens of several messages, each against what arrived
    /// with it, and returns one result per message in the same order.
    ///
    /// Each result is the one [`Verifier::verify`] would return for that
    /// message: the same nine steps, the same reason codes, logs and
    /// metrics. Messages go through the replay guard in order, so of two
    /// messages with the same `jti` the later one is `replayed`.
    ///
    /// NOTE: one exception remains. A signature whose nonce point R has a
    /// torsion part, which only the key's owner can make, is always
    /// `bad_signature` in [`Verifier::verify`] but passes here in some
    /// batches, depending on the other signatures in the batch.
    ///
    /// Only step 5 differs. The Ed25519 signatures of up to
    /// [`MAX_SIGNATURE_BATCH`] tokens are checked together in one
    /// multiscalar equation (`ed25519_dalek::verify_batch`), which costs
    /// about half as much per signature as checking them one at a time.
    /// When the equation fails, every signature of that batch is checked on
    /// its own by single verification, and only the bad ones are rejected as
    /// `bad_signature`. A batch with a bad signature therefore costs about
    /// 1.5 times as much as single verification. ES256 signatures are always
    /// checked one at a time.
    ///
    /// Batch verification accepts small-order public keys for any message,
    /// so it is only sound because key sets reject those keys when they are
    /// loaded.
    ///
    /// ```
    /// use trustwire::jwks::{JwkSet, KeySource, TrustStore};
    /// use trustwire::{Binding, Expected, ServiceId, Signer, SigningKey, Verifier};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let key = SigningKey::generate()?;
    /// let keys = JwkSet::from_keys(vec![key.public_key().clone()]);
    /// let signer = Signer::new(ServiceId::new("orders")?, key);
    /// let trust = TrustStore::new().trust(ServiceId::new("orders")?, KeySource::inline(keys));
    /// let verifier = Verifier::builder(ServiceId::new("payments")?, trust).build()?;
    ///
    /// let channel = Binding::channel("nats:orders.created")?;
    /// let payloads: [&[u8]; 3] = [b"1", b"2", b"3"];
    /// let mut tokens = Vec::new();
    /// for payload in payloads {
    ///     let token = signer.token(ServiceId::new("payments")?).binding(channel.clone()).payload(payload).sign()?;
    ///     tokens.push(token);
    /// }
    ///
    /// let messages: Vec<(&str, Expected<'_>)> = tokens
    ///     .iter()
    ///     .zip(payloads)
    ///     .map(|(token, payload)| (token.as_str(), Expected::message(channel.clone(), payload)))
    ///     .collect();
    /// let results = verifier.verify_batch(&messages).await;
    /// assert!(results.iter().all(Result::is_ok));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn verify_batch(&self, messages: &[(&str, Expected<'_>)]) -> Vec<Result<Verified, Rejection>> {
        // Steps 1 to 4, one message at a time.
        let mut admitted = Vec::with_capacity(messages.len());
        for (token, expected) in messages {
            admitted.push(self.admit(token, expected).await);
        }

        // Step 5, for all admitted tokens together.
        let signatures = check_signatures(&admitted);

        // Steps 6 to 9, in order.
        let mut results = Vec::with_capacity(messages.len());
        for ((admitted, signature_verifies), (_, expected)) in admitted.into_iter().zip(signatures).zip(messages) {
            let result = match admitted {
                Err(rejection) => Err(rejection),
                Ok(admitted) if !signature_verifies => Err(admitted.bad_signature()),
                Ok(admitted) => self.accept(admitted, expected).await,
            };
            self.record_outcome(&result, expected);
            results.push(result);
        }
        results
    }
}

/// Checks the signature of every admitted token and returns, per entry,
/// whether it verifies. Entries of tokens rejected earlier are `false`.
fn check_signatures(admitted: &[Result<Admitted<'_>, Rejection>]) -> Vec<bool> {
    let mut verifies = vec![false; admitted.len()];

    let mut batchable = Vec::new();
    for (index, entry) in admitted.iter().enumerate() {
        let Ok(token) = entry else {
            continue;
        };
        match Ed25519Check::of(token) {
            Some(check) => batchable.push((index, check)),
            None => verifies[index] = token.signature_verifies(),
        }
    }

    for chunk in batchable.chunks(MAX_SIGNATURE_BATCH) {
        if chunk.len() > 1 && batch_verifies(chunk) {
            for (index, _) in chunk {
                verifies[*index] = true;
            }
            continue;
        }

        // One token, or a batch that failed: find the bad signatures with
        // the same strict check that single verification uses.
        for (index, _) in chunk {
            if let Ok(token) = &admitted[*index] {
                verifies[*index] = token.signature_verifies();
            }
        }
    }
    verifies
}

/// The inputs of the batch equation for one Ed25519 token.
struct Ed25519Check<'t> {
    signing_input: &'t [u8],
    signature: ed25519_dalek::Signature,
    key: ed25519_dalek::VerifyingKey,
}

impl<'t> Ed25519Check<'t> {
    /// `None` for an ES256 key, an Ed25519 key with a torsion part, a
    /// signature that is not 64 bytes long, or one with a non-canonical s,
    /// a non-canonical R encoding or a small-order R. Those are checked one
    /// at a time, where the last three are rejected as `verify_strict` would.
    fn of(token: &'t Admitted<'_>) -> Option<Self> {
        let key = token.key.batch_ed25519_key()?;
        let signature = <[u8; 64]>::try_from(token.parsed.signature.as_slice()).ok()?;
        if !has_strict_ed25519_encoding(&signature) {
            return None;
        }
        Some(Self {
            signing_input: token.parsed.signing_input.as_bytes(),
            signature: ed25519_dalek::Signature::from_bytes(&signature),
            key: *key,
        })
    }
}

/// Whether every signature in `chunk` verifies, by one batch equation.
///
/// NOTE: the batch equation is looser than `verify_strict` in one way. For
/// a nonce point R = R' + T with a torsion part T it is satisfied whenever the
/// equation's factor z for that signature makes [z]T the identity, for T
/// of order 2 in about every second batch. Single verification rejects such
/// a signature as `bad_signature`. Only the holder of the private key can
/// make one, so a token that passes here was still signed by the key's
/// owner. Closing the gap needs a check that R is torsion-free, which costs
/// about one scalar multiplication per signature. Small-order and
/// non-canonical R, and keys with a torsion part, never get here because
/// `Ed25519Check::of` sends them to single verification.
fn batch_verifies(chunk: &[(usize, Ed25519Check<'_>)]) -> bool {
    let mut messages = Vec::with_capacity(chunk.len());
    let mut signatures = Vec::with_capacity(chunk.len());
    let mut keys = Vec::with_capacity(chunk.len());
    for (_, check) in chunk {
        messages.push(check.signing_input);
        signatures.push(check.signature);
        keys.push(check.key);
    }
    ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::FixedClock;
    use crate::envelope::{Binding, Reason, Signer};
    use crate::identity::ServiceId;
    use crate::jwks::{JwkSet, KeySource, TrustStore};
    use crate::keys::{PublicKey, SigningKey};

    const NOW: i64 = 1_800_000_000;
    const CHANNEL: &str = "nats:orders.created";

    struct Fixture {
        orders: Signer,
        billing: Signer,
        verifier: Verifier,
        channel: Binding,
    }

    /// Builds a signer whose key comes from `seed`.
    fn signer(service: &str, seed: u8) -> Signer {
        Signer::builder(ServiceId::new(service).unwrap(), key(seed))
            .clock(Arc::new(FixedClock::new(NOW)))
            .build()
            .unwrap()
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_seed(&[seed; 32]).unwrap()
    }

    fn fixture() -> Fixture {
        Fixture {
            orders: signer("orders", 1),
            billing: signer("billing", 2),
            verifier: verifier(),
            channel: Binding::channel(CHANNEL).unwrap(),
        }
    }

    /// Builds a verifier with its own replay guard that trusts `orders`
    /// (seed 1) and `billing` (seed 2).
    fn verifier() -> Verifier {
        let keys = |seed| KeySource::inline(JwkSet::from_keys(vec![key(seed).public_key().clone()]));
        let trust = TrustStore::new()
            .trust(ServiceId::new("orders").unwrap(), keys(1))
            .trust(ServiceId::new("billing").unwrap(), keys(2));
        Verifier::builder(ServiceId::new("payments").unwrap(), trust)
            .clock(Arc::new(FixedClock::new(NOW)))
            .build()
            .unwrap()
    }

    fn payload(index: usize) -> Vec<u8> {
        format!("{{\"order\":{index}}}").into_bytes()
    }

    fn sign(signer: &Signer, channel: &Binding, payload: &[u8]) -> String {
        signer
            .token(ServiceId::new("payments").unwrap())
            .binding(channel.clone())
            .payload(payload)
            .sign()
            .unwrap()
    }

    /// Replaces the first character of the signature segment with another
    /// base64url character, so the signature no longer verifies.
    fn corrupt_signature(token: &str) -> String {
        let (input, signature) = token.rsplit_once('.').unwrap();
        let mut signature = signature.to_owned();
        let first = if signature.starts_with('A') { "B" } else { "A" };
        signature.replace_range(..1, first);
        format!("{input}.{signature}")
    }

    fn codes(results: &[Result<Verified, Rejection>]) -> Vec<&'static str> {
        results
            .iter()
            .map(|result| match result {
                Ok(_) => "ok",
                Err(rejection) => rejection.code(),
            })
            .collect()
    }

    fn run<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn valid_batch_all_verified() {
        let fx = fixture();
        let payloads: Vec<Vec<u8>> = (0..10).map(payload).collect();
        let tokens: Vec<String> = payloads
            .iter()
            .enumerate()
            .map(|(index, payload)| {
                let signer = if index % 2 == 0 { &fx.orders } else { &fx.billing };
                sign(signer, &fx.channel, payload)
            })
            .collect();
        let messages: Vec<(&str, Expected<'_>)> = tokens
            .iter()
            .zip(&payloads)
            .map(|(token, payload)| (token.as_str(), Expected::message(fx.channel.clone(), payload)))
            .collect();

        let results = run(fx.verifier.verify_batch(&messages));

        assert_eq!(codes(&results), vec!["ok"; 10]);
        assert_eq!(results[0].as_ref().unwrap().claims.iss, "orders");
        assert_eq!(results[1].as_ref().unwrap().claims.iss, "billing");
    }

    #[test]
    fn bad_signature_found_after_failed_batch() {
        let fx = fixture();
        // 130 messages: three chunks of at most 64, the bad ones in the
        // first and the last chunk.
        let payloads: Vec<Vec<u8>> = (0..130).map(payload).collect();
        let mut tokens: Vec<String> = payloads
            .iter()
            .map(|payload| sign(&fx.orders, &fx.channel, payload))
            .collect();
        tokens[5] = corrupt_signature(&tokens[5]);
        tokens[129] = corrupt_signature(&tokens[129]);
        let messages: Vec<(&str, Expected<'_>)> = tokens
            .iter()
            .zip(&payloads)
            .map(|(token, payload)| (token.as_str(), Expected::message(fx.channel.clone(), payload)))
            .collect();

        let results = run(fx.verifier.verify_batch(&messages));

        for (index, result) in results.iter().enumerate() {
            match index {
                5 | 129 => assert_eq!(
                    result.as_ref().unwrap_err().reason(),
                    Reason::BadSignature,
                    "message {index}"
                ),
                _ => assert!(result.is_ok(), "message {index}: {result:?}"),
            }
        }
    }

    #[test]
    fn repeated_jti_in_batch_replayed() {
        let fx = fixture();
        let body = payload(1);
        let token = sign(&fx.orders, &fx.channel, &body);
        let messages = vec![
            (token.as_str(), Expected::message(fx.channel.clone(), &body)),
            (token.as_str(), Expected::message(fx.channel.clone(), &body)),
        ];

        let results = run(fx.verifier.verify_batch(&messages));

        assert_eq!(codes(&results), vec!["ok", "replayed"]);
    }

    #[test]
    fn batch_codes_match_single_verify() {
        let fx = fixture();
        let body = payload(1);
        let other_channel = Binding::channel("nats:orders.cancelled").unwrap();
        let stranger = signer("orders", 9);
        let tokens = [
            sign(&fx.orders, &fx.channel, &body),
            corrupt_signature(&sign(&fx.orders, &fx.channel, &body)),
            sign(&fx.orders, &other_channel, &body),
            sign(&fx.orders, &fx.channel, b"another payload"),
            sign(&stranger, &fx.channel, &body),
            "not.a.token".to_owned(),
            "a.b".to_owned(),
            sign(&fx.billing, &fx.channel, &body),
        ];
        let messages: Vec<(&str, Expected<'_>)> = tokens
            .iter()
            .map(|token| (token.as_str(), Expected::message(fx.channel.clone(), &body)))
            .collect();

        let batch = run(fx.verifier.verify_batch(&messages));
        let single_verifier = verifier();
        let single: Vec<Result<Verified, Rejection>> = messages
            .iter()
            .map(|(token, expected)| run(single_verifier.verify(token, expected)))
            .collect();

        assert_eq!(
            codes(&batch),
            vec![
                "ok",
                "bad_signature",
                "binding_mismatch",
                "digest_mismatch",
                "unknown_key",
                "malformed",
                "malformed",
                "ok"
            ]
        );
        assert_eq!(codes(&batch), codes(&single));
        for (batch, single) in batch.iter().zip(&single) {
            if let (Err(batch), Err(single)) = (batch, single) {
                assert_eq!(batch, single);
            }
        }
    }

    /// Re-signs the signing input of `token` with the key of `seed` and the
    /// nonce point encoding `r`, with s = k·a. The result verifies only where
    /// `r` decodes to the identity and its bytes are not compared.
    fn sign_with_identity_nonce(token: &str, seed: u8, r: [u8; 32]) -> String {
        use curve25519_dalek::Scalar;
        use sha2::{Digest, Sha512};

        let (input, _) = token.rsplit_once('.').unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        let mut hasher = Sha512::new();
        hasher.update(r);
        hasher.update(key.verifying_key().as_bytes());
        hasher.update(input.as_bytes());
        let k = Scalar::from_bytes_mod_order_wide(&hasher.finalize().into());
        let s = k * key.to_scalar();

        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(&r);
        signature[32..].copy_from_slice(s.as_bytes());
        format!("{input}.{}", crate::encoding::b64_encode(&signature))
    }

    /// Non-canonical encodings of the identity: x = 0 with the sign bit set,
    /// and y = p + 1 with either sign bit. Each decodes to the identity.
    const NON_CANONICAL_IDENTITY: [&str; 3] = [
        "0100000000000000000000000000000000000000000000000000000000000080",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    ];

    fn hex32(hex: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    /// The key's owner signs with a non-canonical encoding of the identity
    /// as R and s = k·a. `verify_strict` rejects it because the encoding of
    /// [s]B - [k]A is not those bytes. The batch equation decodes R to the
    /// identity and holds, so the batch path must not accept it either.
    #[test]
    fn non_canonical_identity_nonce_rejected_in_batch() {
        let fx = fixture();
        let body = payload(1);
        for r in NON_CANONICAL_IDENTITY {
            let valid = sign(&fx.orders, &fx.channel, &body);
            let forged = sign_with_identity_nonce(&sign(&fx.orders, &fx.channel, &body), 1, hex32(r));
            let messages = vec![
                (valid.as_str(), Expected::message(fx.channel.clone(), &body)),
                (forged.as_str(), Expected::message(fx.channel.clone(), &body)),
            ];

            let batch = run(fx.verifier.verify_batch(&messages));
            let single_verifier = verifier();
            let single: Vec<Result<Verified, Rejection>> = messages
                .iter()
                .map(|(token, expected)| run(single_verifier.verify(token, expected)))
                .collect();

            assert_eq!(codes(&single), vec!["ok", "bad_signature"], "single, R = {r}");
            assert_eq!(codes(&batch), vec!["ok", "bad_signature"], "batch, R = {r}");
        }
    }

    /// Re-signs the claims of `token` under the published key `public`
    /// (secret scalar `a`), with the header's `kid` set to `kid` and the
    /// nonce point [r]B + `torsion`: s = r + k·a, with k taken over the
    /// published bytes of both.
    fn resign(
        token: &str,
        kid: &str,
        a: &curve25519_dalek::Scalar,
        public: &[u8; 32],
        r: &curve25519_dalek::Scalar,
        torsion: curve25519_dalek::EdwardsPoint,
    ) -> String {
        use curve25519_dalek::Scalar;
        use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
        use sha2::{Digest, Sha512};

        let mut segments = token.split('.');
        let header = segments.next().unwrap();
        let claims = segments.next().unwrap();
        let header = crate::encoding::b64_decode(header).unwrap();
        let mut header: serde_json::Value = serde_json::from_slice(&header).unwrap();
        header["kid"] = kid.into();
        let header = crate::encoding::b64_encode(header.to_string().as_bytes());
        let input = format!("{header}.{claims}");

        let nonce = (ED25519_BASEPOINT_POINT * r + torsion).compress().to_bytes();
        let mut hasher = Sha512::new();
        hasher.update(nonce);
        hasher.update(public);
        hasher.update(input.as_bytes());
        let k = Scalar::from_bytes_mod_order_wide(&hasher.finalize().into());
        let s = r + k * a;

        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(&nonce);
        signature[32..].copy_from_slice(s.as_bytes());
        format!("{input}.{}", crate::encoding::b64_encode(&signature))
    }

    /// The point (0, -1), of order 2.
    fn order_two_point() -> curve25519_dalek::EdwardsPoint {
        let mut encoding = [0xffu8; 32];
        encoding[0] = 0xec;
        encoding[31] = 0x7f;
        curve25519_dalek::edwards::CompressedEdwardsY(encoding)
            .decompress()
            .unwrap()
    }

    /// Verifies `messages` as one batch and one at a time, with fresh
    /// verifiers built by `verifier`, and returns both lists of codes.
    fn batch_and_single(
        verifier: impl Fn() -> Verifier,
        messages: &[(&str, Expected<'_>)],
    ) -> (Vec<&'static str>, Vec<&'static str>) {
        let batch = run(verifier().verify_batch(messages));
        let single_verifier = verifier();
        let single: Vec<Result<Verified, Rejection>> = messages
            .iter()
            .map(|(token, expected)| run(single_verifier.verify(token, expected)))
            .collect();
        (codes(&batch), codes(&single))
    }

    /// A key A + T with T of order 2 is not of small order, so it loads. Its
    /// owner's signatures s = r + k·a pass `verify_strict` exactly when k
    /// is even. The batch equation multiplies the leftover [k]T by a
    /// per-signature factor z, so it is satisfied whenever z is even, and must not
    /// let through what single verification rejects.
    #[test]
    fn mixed_order_key_batch_matches_single() {
        use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;

        let fx = fixture();
        let body = payload(1);
        let secret = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        let a = secret.to_scalar();
        let mixed = (ED25519_BASEPOINT_POINT * a + order_two_point()).compress().to_bytes();
        let mixed_key = PublicKey::ed25519(ed25519_dalek::VerifyingKey::from_bytes(&mixed).unwrap()).unwrap();
        let kid = mixed_key.kid().to_owned();
        let mixed_verifier = || {
            let trust = TrustStore::new()
                .trust(
                    ServiceId::new("orders").unwrap(),
                    KeySource::inline(JwkSet::from_keys(vec![mixed_key.clone()])),
                )
                .trust(
                    ServiceId::new("billing").unwrap(),
                    KeySource::inline(JwkSet::from_keys(vec![key(2).public_key().clone()])),
                );
            Verifier::builder(ServiceId::new("payments").unwrap(), trust)
                .clock(Arc::new(FixedClock::new(NOW)))
                .build()
                .unwrap()
        };

        let mut outcomes = Vec::new();
        for attempt in 0..32u64 {
            let valid = sign(&fx.billing, &fx.channel, &body);
            let r = curve25519_dalek::Scalar::from(attempt * 7919 + 3);
            let forged = resign(
                &sign(&fx.orders, &fx.channel, &body),
                &kid,
                &a,
                &mixed,
                &r,
                curve25519_dalek::EdwardsPoint::default(),
            );
            let messages = vec![
                (valid.as_str(), Expected::message(fx.channel.clone(), &body)),
                (forged.as_str(), Expected::message(fx.channel.clone(), &body)),
            ];

            let (batch, single) = batch_and_single(mixed_verifier, &messages);
            assert_eq!(batch, single, "attempt {attempt}");
            outcomes.push(single[1]);
        }
        // About half the signatures have an even k; both outcomes occurred.
        assert!(outcomes.contains(&"ok"), "{outcomes:?}");
        assert!(outcomes.contains(&"bad_signature"), "{outcomes:?}");
    }

    /// The known gap of `batch_verifies`: the key's owner signs with the
    /// nonce point [r]B + T, T of order 2, and s = r + k·a. Single
    /// verification always rejects it, but the batch equation holds when
    /// its factor z for that signature is even, about every second batch.
    /// If a change closes this gap, this test fails and must then assert
    /// equal codes instead.
    #[test]
    fn torsion_nonce_can_pass_batch() {
        let fx = fixture();
        let body = payload(1);
        let secret = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        let public = secret.verifying_key().to_bytes();
        let kid = key(1).public_key().kid().to_owned();

        let mut batch_accepted = 0;
        for attempt in 0..32u64 {
            let valid = sign(&fx.billing, &fx.channel, &body);
            let r = curve25519_dalek::Scalar::from(attempt * 7919 + 3);
            let forged = resign(
                &sign(&fx.orders, &fx.channel, &body),
                &kid,
                &secret.to_scalar(),
                &public,
                &r,
                order_two_point(),
            );
            let messages = vec![
                (valid.as_str(), Expected::message(fx.channel.clone(), &body)),
                (forged.as_str(), Expected::message(fx.channel.clone(), &body)),
            ];

            let (batch, single) = batch_and_single(verifier, &messages);
            assert_eq!(single, vec!["ok", "bad_signature"], "attempt {attempt}");
            assert_eq!(batch[0], "ok", "attempt {attempt}");
            if batch[1] == "ok" {
                batch_accepted += 1;
            } else {
                assert_eq!(batch[1], "bad_signature", "attempt {attempt}");
            }
        }
        assert!(batch_accepted > 0, "no batch accepted the torsion nonce");
        assert!(batch_accepted < 32, "every batch accepted the torsion nonce");
    }

    #[test]
    fn empty_batch_empty_results() {
        let fx = fixture();
        let results = run(fx.verifier.verify_batch(&[]));
        assert!(results.is_empty());
    }
}
