//! Batch verification for transports and the opener of sealed messages,
//! whose own checks (token header, channel, sealed marker, JWE size) reject
//! some messages before they reach the verifier.

use super::rejection::{Reason, Rejection};
use super::verifier::{Expected, Verified, Verifier};

/// Verifies the messages that passed the transport's checks together and
/// returns one result per entry of `checked`, in order.
///
/// An entry that is already a rejection stays one. With a single message
/// left this calls [`Verifier::verify`]; with more it calls
/// [`Verifier::verify_batch`], whose results are the same as `verify`'s.
pub(crate) async fn verify_checked(
    verifier: &Verifier,
    checked: Vec<Result<(&str, Expected<'_>), Rejection>>,
) -> Vec<Result<Verified, Rejection>> {
    let mut results: Vec<Option<Result<Verified, Rejection>>> = Vec::with_capacity(checked.len());
    let mut messages = Vec::with_capacity(checked.len());
    for entry in checked {
        match entry {
            Ok(message) => {
                results.push(None);
                messages.push(message);
            }
            Err(rejection) => results.push(Some(Err(rejection))),
        }
    }

    let mut verified = match messages.as_slice() {
        [] => Vec::new(),
        [(token, expected)] => vec![verifier.verify(token, expected).await],
        _ => verifier.verify_batch(&messages).await,
    }
    .into_iter();

    // Each empty slot takes the next result, since both are in message order.
    results
        .into_iter()
        .map(|slot| match slot {
            Some(rejection) => rejection,
            // NOTE: both verify functions return one result per message, so
            // this rejection only guards against a broken invariant.
            None => verified.next().unwrap_or_else(|| {
                Err(Rejection::new(
                    Reason::Malformed,
                    "internal error: the verifier returned fewer results than messages",
                ))
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Binding, Signer};
    use crate::identity::ServiceId;
    use crate::jwks::{JwkSet, KeySource, TrustStore};
    use crate::keys::SigningKey;

    fn fixture() -> (Signer, Verifier, Binding) {
        let key = SigningKey::from_seed(&[7; 32]).unwrap();
        let keys = KeySource::inline(JwkSet::from_keys(vec![key.public_key().clone()]));
        let signer = Signer::new(ServiceId::new("orders").unwrap(), key);
        let trust = TrustStore::new().trust(ServiceId::new("orders").unwrap(), keys);
        let verifier = Verifier::builder(ServiceId::new("payments").unwrap(), trust)
            .build()
            .unwrap();
        (signer, verifier, Binding::channel("nats:orders.created").unwrap())
    }

    fn sign(signer: &Signer, channel: &Binding, payload: &[u8]) -> String {
        signer
            .token(ServiceId::new("payments").unwrap())
            .binding(channel.clone())
            .payload(payload)
            .sign()
            .unwrap()
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

    fn transport_rejection() -> Rejection {
        Rejection::new(Reason::WrongType, "sealed")
    }

    #[test]
    fn rejections_keep_their_slots() {
        let (signer, verifier, channel) = fixture();
        let payloads: [&[u8]; 3] = [b"1", b"2", b"3"];
        let tokens: Vec<String> = payloads
            .iter()
            .map(|payload| sign(&signer, &channel, payload))
            .collect();
        let checked = vec![
            Err(transport_rejection()),
            Ok((tokens[0].as_str(), Expected::message(channel.clone(), payloads[0]))),
            Ok((tokens[1].as_str(), Expected::message(channel.clone(), b"other"))),
            Err(transport_rejection()),
            Ok((tokens[2].as_str(), Expected::message(channel.clone(), payloads[2]))),
        ];

        let results = run(verify_checked(&verifier, checked));

        assert_eq!(
            codes(&results),
            vec!["wrong_type", "ok", "digest_mismatch", "wrong_type", "ok"]
        );
    }

    #[test]
    fn one_message_verified_alone() {
        let (signer, verifier, channel) = fixture();
        let token = sign(&signer, &channel, b"1");
        let checked = vec![
            Err(transport_rejection()),
            Ok((token.as_str(), Expected::message(channel.clone(), b"1"))),
        ];

        let results = run(verify_checked(&verifier, checked));

        assert_eq!(codes(&results), vec!["wrong_type", "ok"]);
    }

    #[test]
    fn all_rejected_before_verification() {
        let (_, verifier, _) = fixture();
        let results = run(verify_checked(&verifier, vec![Err(transport_rejection())]));
        assert_eq!(codes(&results), vec!["wrong_type"]);
    }
}
