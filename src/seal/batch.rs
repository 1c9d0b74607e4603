//! Opening several sealed messages at once, for transports that receive
//! messages in batches (JetStream pull batches, AMQP prefetch).

use super::opener::{Opened, Opener};
use crate::envelope::{Expected, Rejection, verify_checked};

impl Opener {
    /// Opens several sealed messages, each against what arrived with it, and
    /// returns one result per message in the same order.
    ///
    /// Each result is the one [`Opener::open`] would return for that
    /// message, with the same reason codes, logs and metrics. The size checks
    /// run first, one message at a time. The tokens of the messages that pass
    /// them are then verified together with
    /// [`Verifier::verify_batch`](crate::Verifier::verify_batch), which
    /// checks their Ed25519 signatures in one equation per
    /// [`MAX_SIGNATURE_BATCH`](crate::envelope::MAX_SIGNATURE_BATCH) tokens.
    /// Last, each message whose token verified is decrypted and its header
    /// binding checked, as `open` does.
    ///
    /// Messages go through the replay guard in order, so of two messages
    /// with the same `jti` the later one is `replayed`. A message rejected by
    /// a size check never reaches the replay guard, and one rejected after
    /// verification (it does not decrypt, say) has used its `jti`, as with
    /// `open`.
    ///
    /// NOTE: the exception that `verify_batch` documents applies here too. A
    /// signature whose nonce point R has a torsion part, which only the
    /// key's owner can make, may pass in a batch while `open` rejects it as
    /// `bad_signature`.
    ///
    /// ```
    /// use trustwire::jwks::{JwkSet, KeySource, TrustStore};
    /// use trustwire::keys::EncryptionKey;
    /// use trustwire::seal::{Opener, Recipient, Sealer};
    /// use trustwire::{Binding, Expected, ServiceId, Signer, SigningKey, Verifier};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let payments_key = EncryptionKey::generate()?;
    /// let payments_jwks = JwkSet::default().with_encryption_keys(vec![payments_key.public_key().clone()]);
    /// let signing_key = SigningKey::generate()?;
    /// let orders_jwks = JwkSet::from_keys(vec![signing_key.public_key().clone()]);
    /// let sealer = Sealer::new(Signer::new(ServiceId::new("orders")?, signing_key));
    /// let recipients = [Recipient::from_jwks(ServiceId::new("payments")?, &payments_jwks)?];
    ///
    /// let channel = Binding::channel("nats:orders.created")?;
    /// let payloads: [&[u8]; 3] = [b"1", b"2", b"3"];
    /// let mut sealed = Vec::new();
    /// for payload in payloads {
    ///     sealed.push(sealer.seal(&recipients, channel.clone(), payload)?);
    /// }
    ///
    /// let trust = TrustStore::new().trust(ServiceId::new("orders")?, KeySource::inline(orders_jwks));
    /// let verifier = Verifier::builder(ServiceId::new("payments")?, trust).build()?;
    /// let opener = Opener::new(verifier, vec![payments_key])?;
    /// let messages: Vec<(&str, Expected<'_>)> = sealed
    ///     .iter()
    ///     .map(|message| (message.token.as_str(), Expected::message(channel.clone(), &message.jwe)))
    ///     .collect();
    /// let results = opener.open_batch(&messages).await;
    /// for (result, payload) in results.into_iter().zip(payloads) {
    ///     assert_eq!(result?.plaintext, payload);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn open_batch(&self, messages: &[(&str, Expected<'_>)]) -> Vec<Result<Opened, Rejection>> {
        let checked = messages
            .iter()
            .map(|(token, expected)| Ok((*token, expected.clone())))
            .collect();
        self.open_checked(checked).await
    }

    /// Opens the messages that passed a transport's own checks (token
    /// header, channel, sealed marker) together, as
    /// [`open_batch`](Self::open_batch) does, and returns one result per
    /// entry of `checked`, in order. An entry that is already a rejection
    /// stays one.
    pub(crate) async fn open_checked(
        &self,
        checked: Vec<Result<(&str, Expected<'_>), Rejection>>,
    ) -> Vec<Result<Opened, Rejection>> {
        // The checks that `open` makes before it verifies the token. A
        // rejected entry keeps an empty JWE beside it, which is never read,
        // because `verify_checked` keeps a rejection in its slot.
        let mut jwes: Vec<&[u8]> = Vec::with_capacity(checked.len());
        let mut admitted = Vec::with_capacity(checked.len());
        for entry in checked {
            let entry = entry.and_then(|(token, expected)| {
                let jwe = self.sealed_payload(&expected)?;
                Ok((jwe, (token, expected)))
            });
            match entry {
                Ok((jwe, message)) => {
                    jwes.push(jwe);
                    admitted.push(Ok(message));
                }
                Err(rejection) => {
                    jwes.push(&[]);
                    admitted.push(Err(rejection));
                }
            }
        }

        let verified = verify_checked(self.verifier(), admitted).await;

        verified
            .into_iter()
            .zip(jwes)
            .map(|(result, jwe)| result.and_then(|verified| self.open_verified(verified, jwe)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::jwe;
    use super::*;
    use crate::clock::FixedClock;
    use crate::envelope::{Binding, Reason, Signer, Verifier, random_jti};
    use crate::identity::ServiceId;
    use crate::jwks::{JwkSet, KeySource, TrustStore};
    use crate::keys::{EncryptionKey, SigningKey};
    use crate::seal::{Recipient, Sealed, Sealer};

    const NOW: i64 = 1_800_000_000;
    const CHANNEL: &str = "nats:orders.created";
    /// The opener's `max_sealed_bytes`: above the JWE of a short payload,
    /// below that of [`BIG_PAYLOAD`] bytes.
    const MAX_SEALED_BYTES: usize = 2048;
    const BIG_PAYLOAD: usize = 4096;

    fn id(name: &str) -> ServiceId {
        ServiceId::new(name).unwrap()
    }

    fn signing_key() -> SigningKey {
        SigningKey::from_seed(&[1; 32]).unwrap()
    }

    /// Returns payments' own encryption key.
    fn payments_key() -> EncryptionKey {
        EncryptionKey::from_x25519_bytes(&[9; 32]).unwrap()
    }

    /// Returns an encryption key that payments does not have.
    fn other_key() -> EncryptionKey {
        EncryptionKey::from_x25519_bytes(&[10; 32]).unwrap()
    }

    fn channel() -> Binding {
        Binding::channel(CHANNEL).unwrap()
    }

    fn signer() -> Signer {
        Signer::builder(id("orders"), signing_key())
            .clock(Arc::new(FixedClock::new(NOW)))
            .build()
            .unwrap()
    }

    fn sealer() -> Sealer {
        Sealer::new(signer())
    }

    /// Builds an opener for payments that trusts orders, with its own
    /// replay guard, so two openers judge the same messages alike.
    fn opener() -> Opener {
        let keys = KeySource::inline(JwkSet::from_keys(vec![signing_key().public_key().clone()]));
        let trust = TrustStore::new().trust(id("orders"), keys);
        let verifier = Verifier::builder(id("payments"), trust)
            .clock(Arc::new(FixedClock::new(NOW)))
            .build()
            .unwrap();
        Opener::builder(verifier, vec![payments_key()])
            .max_sealed_bytes(MAX_SEALED_BYTES)
            .build()
            .unwrap()
    }

    fn seal_to(service: &str, key: &EncryptionKey, payload: &[u8]) -> Sealed {
        let recipients = [Recipient::new(id(service), key.public_key().clone())];
        sealer().seal(&recipients, channel(), payload).unwrap()
    }

    /// Replaces the first character of the signature segment with another
    /// base64url character, so the signature no longer verifies.
    fn corrupt_signature(token: &str) -> String {
        let (input, signature) = token.rsplit_once('.').unwrap();
        let first = if signature.starts_with('A') { "B" } else { "A" };
        format!("{input}.{first}{}", &signature[1..])
    }

    /// Replaces the first character of the ciphertext segment of a compact
    /// JWE, so AES-GCM no longer authenticates it.
    fn tamper_ciphertext(jwe: &[u8]) -> Vec<u8> {
        let text = std::str::from_utf8(jwe).unwrap();
        let mut parts: Vec<String> = text.split('.').map(str::to_owned).collect();
        assert_eq!(parts.len(), 5, "not a compact JWE");
        let first = if parts[3].starts_with('A') { "B" } else { "A" };
        parts[3].replace_range(..1, first);
        parts.join(".").into_bytes()
    }

    /// Signs a token from orders over `jwe`, with `jti`.
    fn token_over(jwe: &[u8], jti: &str) -> String {
        signer()
            .token(id("payments"))
            .binding(channel())
            .payload(jwe)
            .jti(jti)
            .sign()
            .unwrap()
    }

    /// One message as it arrived: its token and, unless `None`, its JWE.
    struct Arrived {
        case: &'static str,
        token: String,
        jwe: Option<Vec<u8>>,
    }

    impl Arrived {
        fn sealed(case: &'static str, sealed: &Sealed) -> Self {
            Self {
                case,
                token: sealed.token.clone(),
                jwe: Some(sealed.jwe.clone()),
            }
        }

        fn expected(&self) -> (&str, Expected<'_>) {
            (self.token.as_str(), Expected::new(channel(), self.jwe.as_deref()))
        }
    }

    /// Builds a batch with a message for each rejection `open` can make
    /// after the transport's checks, between messages that open. Returns the
    /// messages and the code expected for each.
    fn mixed_batch() -> (Vec<Arrived>, Vec<&'static str>) {
        let first = seal_to("payments", &payments_key(), b"first");
        let second = seal_to("payments", &payments_key(), b"second");
        let unread = seal_to("payments", &payments_key(), b"unread");
        let reused = seal_to("payments", &payments_key(), b"reused");
        let tampered = seal_to("payments", &payments_key(), b"tampered");
        let tampered_jwe = tamper_ciphertext(&tampered.jwe);

        // The JWE header names another jti than the token.
        let header_jwe = jwe::encrypt(
            &[payments_key().public_key()],
            "orders",
            &random_jti().unwrap(),
            b"header",
        )
        .unwrap();
        let header_token = token_over(&header_jwe, &random_jti().unwrap());

        let mut forged = Arrived::sealed("bad signature", &seal_to("payments", &payments_key(), b"forged"));
        forged.token = corrupt_signature(&forged.token);
        let no_payload = Arrived {
            case: "no payload",
            token: unread.token.clone(),
            jwe: None,
        };
        let wire_tampered = Arrived {
            case: "tampered on the wire",
            token: tampered.token.clone(),
            jwe: Some(tampered_jwe.clone()),
        };
        let resigned = Arrived {
            case: "tampered and signed again",
            token: token_over(&tampered_jwe, &tampered.jti),
            jwe: Some(tampered_jwe),
        };
        let header_mismatch = Arrived {
            case: "header jti mismatch",
            token: header_token,
            jwe: Some(header_jwe),
        };
        let new_token = Arrived {
            case: "new token over an old JWE",
            token: token_over(&reused.jwe, &random_jti().unwrap()),
            jwe: Some(reused.jwe.clone()),
        };

        let cases = vec![
            (Arrived::sealed("first", &first), "ok"),
            (forged, "bad_signature"),
            (Arrived::sealed("replay of first", &first), "replayed"),
            (
                Arrived::sealed("sealed to billing", &seal_to("billing", &payments_key(), b"billing")),
                "wrong_audience",
            ),
            (
                Arrived::sealed("key not held", &seal_to("payments", &other_key(), b"other key")),
                "not_a_recipient",
            ),
            (
                Arrived::sealed("oversized", &seal_to("payments", &payments_key(), &[b'x'; BIG_PAYLOAD])),
                "too_large",
            ),
            (no_payload, "malformed"),
            // The message without payload did not use the jti.
            (Arrived::sealed("unread", &unread), "ok"),
            (wire_tampered, "digest_mismatch"),
            (resigned, "decryption_failed"),
            // The message that did not decrypt used the jti.
            (Arrived::sealed("tampered original", &tampered), "replayed"),
            (header_mismatch, "seal_mismatch"),
            (new_token, "seal_mismatch"),
            (Arrived::sealed("second", &second), "ok"),
        ];
        cases.into_iter().unzip()
    }

    /// The parts of one result that a caller can see: the code, the
    /// plaintext, and for a rejection its detail and the ids of the token.
    type Outcome<'r> = (&'static str, Option<&'r [u8]>, Option<String>, [Option<&'r str>; 3]);

    fn outcome(result: &Result<Opened, Rejection>) -> Outcome<'_> {
        match result {
            Ok(opened) => ("ok", Some(opened.plaintext.as_slice()), None, [None; 3]),
            Err(rejection) => (
                rejection.code(),
                None,
                Some(rejection.detail().to_owned()),
                [rejection.kid(), rejection.iss(), rejection.jti()],
            ),
        }
    }

    fn codes(results: &[Result<Opened, Rejection>]) -> Vec<&'static str> {
        results.iter().map(|result| outcome(result).0).collect()
    }

    fn run<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn mixed_batch_matches_open() {
        let (arrived, expected_codes) = mixed_batch();
        let messages: Vec<(&str, Expected<'_>)> = arrived.iter().map(Arrived::expected).collect();

        let one_by_one_opener = opener();
        let one_by_one: Vec<Result<Opened, Rejection>> = run(async {
            let mut results = Vec::new();
            for (token, expected) in &messages {
                results.push(one_by_one_opener.open(token, expected).await);
            }
            results
        });
        let batch = run(opener().open_batch(&messages));

        assert_eq!(batch.len(), arrived.len());
        for (index, message) in arrived.iter().enumerate() {
            let case = message.case;
            assert_eq!(
                outcome(&batch[index]).0,
                expected_codes[index],
                "message {index} ({case})"
            );
            assert_eq!(
                outcome(&batch[index]),
                outcome(&one_by_one[index]),
                "message {index} ({case})"
            );
        }
        let plaintexts: Vec<&[u8]> = batch.iter().filter_map(|result| outcome(result).1).collect();
        assert_eq!(plaintexts, [&b"first"[..], b"unread", b"second"]);
    }

    #[test]
    fn valid_batch_all_opened() {
        let payloads: Vec<Vec<u8>> = (0..10).map(|index| format!("order {index}").into_bytes()).collect();
        let sealed: Vec<Sealed> = payloads
            .iter()
            .map(|payload| seal_to("payments", &payments_key(), payload))
            .collect();
        let messages: Vec<(&str, Expected<'_>)> = sealed
            .iter()
            .map(|sealed| (sealed.token.as_str(), Expected::message(channel(), &sealed.jwe)))
            .collect();

        let results = run(opener().open_batch(&messages));

        assert_eq!(codes(&results), vec!["ok"; 10]);
        for (result, payload) in results.iter().zip(&payloads) {
            let opened = result.as_ref().unwrap();
            assert_eq!(&opened.plaintext, payload);
            assert_eq!(opened.enc_kid, payments_key().kid());
            assert_eq!(opened.verified.claims.iss, "orders");
        }
    }

    #[test]
    fn transport_rejections_keep_their_slots() {
        let sealed: Vec<Sealed> = (0..3)
            .map(|index| seal_to("payments", &payments_key(), &[b'0' + index]))
            .collect();
        let transport = || Err(Rejection::new(Reason::WrongType, "plain message"));
        let checked = vec![
            transport(),
            Ok((sealed[0].token.as_str(), Expected::message(channel(), &sealed[0].jwe))),
            Ok((sealed[1].token.as_str(), Expected::message(channel(), &sealed[2].jwe))),
            transport(),
            Ok((sealed[2].token.as_str(), Expected::message(channel(), &sealed[2].jwe))),
        ];

        let results = run(opener().open_checked(checked));

        assert_eq!(
            codes(&results),
            ["wrong_type", "ok", "digest_mismatch", "wrong_type", "ok"]
        );
        assert_eq!(results[1].as_ref().unwrap().plaintext, b"0");
        assert_eq!(results[4].as_ref().unwrap().plaintext, b"2");
    }

    #[test]
    fn empty_batch_opens_nothing() {
        assert!(run(opener().open_batch(&[])).is_empty());
    }
}
