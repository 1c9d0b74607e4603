//! RFC test vectors, read from `tests/vectors/`.

use serde_json::Value;

use super::{PublicKey, SigningKey, rsa_thumbprint};
use crate::encoding::{b64_decode, b64_encode};

fn vector(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

fn field<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap()
}

#[test]
fn rfc7638_thumbprint() {
    let v = vector(include_str!("../../tests/vectors/rfc7638.json"));
    let thumbprint = rsa_thumbprint(field(&v, "/jwk/e"), field(&v, "/jwk/n"));
    assert_eq!(thumbprint, field(&v, "/thumbprint"));
}

#[test]
fn rfc8037_thumbprint_is_kid() {
    let v = vector(include_str!("../../tests/vectors/rfc8037.json"));
    let seed: [u8; 32] = b64_decode(field(&v, "/private_jwk/d")).unwrap().try_into().unwrap();
    let key = SigningKey::from_seed(&seed).unwrap();
    assert_eq!(
        b64_encode(&key.inner_verifying_key_bytes()),
        field(&v, "/private_jwk/x")
    );
    assert_eq!(key.kid(), field(&v, "/thumbprint"));
}

#[test]
fn rfc8037_signature_a4() {
    let v = vector(include_str!("../../tests/vectors/rfc8037.json"));
    let seed: [u8; 32] = b64_decode(field(&v, "/private_jwk/d")).unwrap().try_into().unwrap();
    let key = SigningKey::from_seed(&seed).unwrap();

    let header = b64_encode(field(&v, "/protected_header").as_bytes());
    let payload = b64_encode(field(&v, "/payload").as_bytes());
    let signing_input = format!("{header}.{payload}");
    assert_eq!(signing_input, field(&v, "/signing_input"));

    let signature = key.sign(signing_input.as_bytes());
    assert_eq!(b64_encode(&signature), field(&v, "/signature"));
}

#[test]
fn rfc8037_validation_a5() {
    let v = vector(include_str!("../../tests/vectors/rfc8037.json"));
    let jwk = serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "x": field(&v, "/private_jwk/x") });
    let super::ParsedJwk::Signing(key) = PublicKey::from_jwk(jwk.as_object().unwrap()).unwrap() else {
        panic!("the RFC 8037 key was skipped");
    };
    let signature = b64_decode(field(&v, "/signature")).unwrap();
    let input = field(&v, "/signing_input");
    assert!(key.verify_signature(input.as_bytes(), &signature));

    let mut tampered = input.as_bytes().to_vec();
    tampered[0] ^= 1;
    assert!(!key.verify_signature(&tampered, &signature));
}
