//! Interop with josekit, an independent JOSE implementation over OpenSSL:
//! our tokens verify with josekit, and josekit's EdDSA and ES256 tokens
//! verify with us.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use josekit::jwk::Jwk;
use josekit::jwk::alg::ed::EdCurve;
use josekit::jws::{ES256, EdDSA, JwsHeader};
use josekit::jwt::{self, JwtPayload};
use serde_json::json;
use trustwire::clock::FixedClock;
use trustwire::envelope::payload_digest;
use trustwire::jwks::{JwkSet, KeySource, TrustStore};
use trustwire::{Binding, Expected, Reason, ServiceId, Signer, SigningKey, Verifier};

const CHANNEL: &str = "nats:orders.created";
const PAYLOAD: &[u8] = br#"{"order":42}"#;

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn verifier(set: JwkSet) -> Verifier {
    let trust = TrustStore::new().trust(ServiceId::new("orders").unwrap(), KeySource::inline(set));
    Verifier::builder(ServiceId::new("payments").unwrap(), trust)
        .build()
        .unwrap()
}

fn expected() -> Expected<'static> {
    Expected::message(Binding::channel(CHANNEL).unwrap(), PAYLOAD)
}

/// Claims as a trustwire signer would write them, built with josekit.
///
/// josekit's `set_issued_at` and `set_expires_at` write fractional seconds
/// (`as_secs_f64`); the trustwire wire format requires integer NumericDates,
/// so the times are set as integers here.
fn josekit_claims() -> JwtPayload {
    let issued = now();
    let mut payload = JwtPayload::new();
    payload.set_issuer("orders");
    payload.set_audience(vec!["payments"]);
    payload.set_claim("iat", Some(json!(issued))).unwrap();
    payload.set_claim("exp", Some(json!(issued + 60))).unwrap();
    payload.set_jwt_id("josekit-0000000000001");
    payload.set_claim("chn", Some(json!(CHANNEL))).unwrap();
    payload.set_claim("dig", Some(json!(payload_digest(PAYLOAD)))).unwrap();
    payload
}

/// The kid trustwire computes for a public JWK (its RFC 7638 thumbprint).
fn our_kid(public_jwk: &Jwk) -> (String, JwkSet) {
    let document = json!({ "keys": [serde_json::to_value(public_jwk.as_ref()).unwrap()] });
    let set = JwkSet::parse(document.to_string().as_bytes()).unwrap();
    (set.keys()[0].kid().to_owned(), set)
}

#[test]
fn our_token_verifies_with_josekit() {
    let key = SigningKey::generate().unwrap();
    let public_jwk = serde_json::to_string(&key.public_key().to_jwk()).unwrap();
    let signer = Signer::new(ServiceId::new("orders").unwrap(), key);
    let token = signer
        .token(ServiceId::new("payments").unwrap())
        .binding(Binding::channel(CHANNEL).unwrap())
        .payload(PAYLOAD)
        .sign()
        .unwrap();

    let jwk = Jwk::from_bytes(public_jwk.as_bytes()).unwrap();
    let josekit_verifier = EdDSA.verifier_from_jwk(&jwk).unwrap();
    let (claims, header) = jwt::decode_with_verifier(&token, &josekit_verifier).unwrap();

    assert_eq!(header.token_type(), Some("trustwire+jwt"));
    assert_eq!(header.key_id(), Some(signer.kid()));
    assert_eq!(claims.issuer(), Some("orders"));
    assert_eq!(claims.audience(), Some(vec!["payments"]));
    assert_eq!(claims.claim("chn"), Some(&json!(CHANNEL)));
    assert_eq!(claims.claim("dig"), Some(&json!(payload_digest(PAYLOAD))));
}

#[test]
fn our_tampered_token_fails_josekit() {
    let key = SigningKey::generate().unwrap();
    let public_jwk = serde_json::to_string(&key.public_key().to_jwk()).unwrap();
    let signer = Signer::new(ServiceId::new("orders").unwrap(), key);
    let token = signer.token(ServiceId::new("payments").unwrap()).sign().unwrap();
    let mut tampered = token.into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };

    let jwk = Jwk::from_bytes(public_jwk.as_bytes()).unwrap();
    let josekit_verifier = EdDSA.verifier_from_jwk(&jwk).unwrap();
    assert!(jwt::decode_with_verifier(&tampered, &josekit_verifier).is_err());
}

#[tokio::test]
async fn josekit_eddsa_token_verifies_with_us() {
    let key_pair = EdDSA.generate_key_pair(EdCurve::Ed25519).unwrap();
    let (kid, set) = our_kid(&key_pair.to_jwk_public_key());

    let mut header = JwsHeader::new();
    header.set_token_type("trustwire+jwt");
    header.set_key_id(&kid);
    let signer = EdDSA.signer_from_jwk(&key_pair.to_jwk_private_key()).unwrap();
    let token = jwt::encode_with_signer(&josekit_claims(), &header, &signer).unwrap();

    let verified = verifier(set).verify(&token, &expected()).await.unwrap();
    assert_eq!(verified.claims.iss, "orders");
    assert_eq!(verified.kid, kid);
}

#[tokio::test]
async fn josekit_es256_token_verifies_with_us() {
    let key_pair = ES256.generate_key_pair().unwrap();
    let (kid, set) = our_kid(&key_pair.to_jwk_public_key());

    let mut header = JwsHeader::new();
    header.set_token_type("trustwire+jwt");
    header.set_key_id(&kid);
    let signer = ES256.signer_from_jwk(&key_pair.to_jwk_private_key()).unwrap();
    let token = jwt::encode_with_signer(&josekit_claims(), &header, &signer).unwrap();

    let verified = verifier(set).verify(&token, &expected()).await.unwrap();
    assert_eq!(verified.alg, trustwire::keys::Algorithm::Es256);
}

#[tokio::test]
async fn josekit_es256_tampered_rejected() {
    let key_pair = ES256.generate_key_pair().unwrap();
    let (kid, set) = our_kid(&key_pair.to_jwk_public_key());

    let mut header = JwsHeader::new();
    header.set_token_type("trustwire+jwt");
    header.set_key_id(&kid);
    let signer = ES256.signer_from_jwk(&key_pair.to_jwk_private_key()).unwrap();
    let token = jwt::encode_with_signer(&josekit_claims(), &header, &signer).unwrap();
    let tampered = Expected::message(Binding::channel(CHANNEL).unwrap(), b"other payload");
    let rejection = verifier(set).verify(&token, &tampered).await.unwrap_err();
    assert_eq!(rejection.reason(), Reason::DigestMismatch);
}

#[tokio::test]
async fn es256_zero_signature_rejected() {
    // r = s = 0 must never verify, whatever the message (CVE-2022-21449 class).
    let key_pair = ES256.generate_key_pair().unwrap();
    let (kid, set) = our_kid(&key_pair.to_jwk_public_key());
    let header = json!({"alg": "ES256", "kid": kid, "typ": "trustwire+jwt"}).to_string();
    let claims = josekit_claims().to_string();

    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let verifier = verifier(set);

    // Group order n of P-256.
    let n = hex_bytes("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
    let der_zero = [0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00];
    let signatures: Vec<Vec<u8>> = vec![vec![0; 64], [n.clone(), n].concat(), der_zero.to_vec()];
    for signature in signatures {
        let token = format!("{input}.{}", b64(&signature));
        let rejection = verifier.verify(&token, &expected()).await.unwrap_err();
        assert_eq!(rejection.reason(), Reason::BadSignature, "signature {signature:02x?}");
    }
}

fn hex_bytes(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn josekit_fractional_times_malformed() {
    let key_pair = EdDSA.generate_key_pair(EdCurve::Ed25519).unwrap();
    let (kid, set) = our_kid(&key_pair.to_jwk_public_key());
    let mut header = JwsHeader::new();
    header.set_token_type("trustwire+jwt");
    header.set_key_id(&kid);
    let mut claims = josekit_claims();
    let issued = SystemTime::now();
    claims.set_issued_at(&issued);
    claims.set_expires_at(&(issued + Duration::from_secs(60)));
    let signer = EdDSA.signer_from_jwk(&key_pair.to_jwk_private_key()).unwrap();
    let token = jwt::encode_with_signer(&claims, &header, &signer).unwrap();
    let rejection = verifier(set).verify(&token, &expected()).await.unwrap_err();
    assert_eq!(rejection.reason(), Reason::Malformed);
}

#[tokio::test]
async fn josekit_expired_token_rejected() {
    let key_pair = EdDSA.generate_key_pair(EdCurve::Ed25519).unwrap();
    let (kid, set) = our_kid(&key_pair.to_jwk_public_key());
    let mut header = JwsHeader::new();
    header.set_token_type("trustwire+jwt");
    header.set_key_id(&kid);
    let signer = EdDSA.signer_from_jwk(&key_pair.to_jwk_private_key()).unwrap();
    let token = jwt::encode_with_signer(&josekit_claims(), &header, &signer).unwrap();

    let trust = TrustStore::new().trust(ServiceId::new("orders").unwrap(), KeySource::inline(set));
    let later = Verifier::builder(ServiceId::new("payments").unwrap(), trust)
        .clock(Arc::new(FixedClock::new(now() + 3600)))
        .build()
        .unwrap();
    assert_eq!(
        later.verify(&token, &expected()).await.unwrap_err().reason(),
        Reason::Expired
    );
}
