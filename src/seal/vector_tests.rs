//! RFC test vectors for key agreement and the Concat KDF, read from
//! `tests/vectors/`, and unit tests of the JWE layer.

use serde_json::{Map, Value};

use super::jwe;
use super::kdf::concat_kdf;
use crate::encoding::{b64_decode, b64_encode};
use crate::envelope::Reason;
use crate::keys::{EncryptionKey, Point};

fn vector(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

fn field<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap()
}

fn b64_32(text: &str) -> [u8; 32] {
    b64_decode(text).unwrap().try_into().unwrap()
}

fn hex_32(hex: &str) -> [u8; 32] {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

#[test]
fn rfc7518_appendix_c_p256_agreement_and_kdf() {
    let v = vector(include_str!("../../tests/vectors/rfc7518_ecdh_es.json"));

    let bob = EncryptionKey::from_p256_bytes(&b64_32(field(&v, "/bob_jwk/d"))).unwrap();
    let bob_public = bob.public_key().to_jwk();
    assert_eq!(bob_public["x"], field(&v, "/bob_jwk/x"));
    assert_eq!(bob_public["y"], field(&v, "/bob_jwk/y"));

    let epk = Point::p256(
        &b64_32(field(&v, "/alice_ephemeral_jwk/x")),
        &b64_32(field(&v, "/alice_ephemeral_jwk/y")),
    )
    .unwrap();
    let z = bob.agree(&epk).unwrap();
    let expected_z: Vec<u8> = v["z"]
        .as_array()
        .unwrap()
        .iter()
        .map(|byte| u8::try_from(byte.as_u64().unwrap()).unwrap())
        .collect();
    assert_eq!(z.as_slice(), expected_z.as_slice());

    let key_bits = u32::try_from(v["key_bits"].as_u64().unwrap()).unwrap();
    let derived = concat_kdf(
        &z,
        field(&v, "/header/enc"),
        &b64_decode(field(&v, "/header/apu")).unwrap(),
        &b64_decode(field(&v, "/header/apv")).unwrap(),
        key_bits,
    );
    let key_len = usize::try_from(key_bits / 8).unwrap();
    assert_eq!(b64_encode(&derived[..key_len]), field(&v, "/derived_key"));
}

#[test]
fn rfc8037_appendix_a6_x25519_agreement() {
    let v = vector(include_str!("../../tests/vectors/rfc8037_ecdh_x25519.json"));

    let bob = EncryptionKey::from_x25519_bytes(&hex_32(field(&v, "/bob_private_hex"))).unwrap();
    assert_eq!(bob.public_key().to_jwk()["x"], field(&v, "/bob_jwk/x"));

    let ephemeral = EncryptionKey::from_x25519_bytes(&hex_32(field(&v, "/ephemeral_private_hex"))).unwrap();
    let ephemeral_x = field(&v, "/header/epk/x");
    assert_eq!(ephemeral.public_key().to_jwk()["x"], ephemeral_x);
    assert_eq!(b64_32(ephemeral_x), hex_32(field(&v, "/ephemeral_public_hex")));

    let epk_json = v.pointer("/header/epk").and_then(Value::as_object).unwrap();
    let epk = Point::from_jwk_members(epk_json).unwrap();
    let z = bob.agree(&epk).unwrap();
    assert_eq!(*z, hex_32(field(&v, "/z_hex")));
}

#[test]
fn round_trip_one_and_many_recipients() {
    let keys: Vec<EncryptionKey> = vec![
        EncryptionKey::generate().unwrap(),
        EncryptionKey::generate_p256().unwrap(),
        EncryptionKey::generate().unwrap(),
    ];
    for count in 1..=keys.len() {
        let publics: Vec<_> = keys[..count].iter().map(EncryptionKey::public_key).collect();
        let sealed = jwe::encrypt(&publics, "orders", "jti-1", b"payload").unwrap();
        for key in &keys[..count] {
            let decrypted = jwe::decrypt(&sealed, std::slice::from_ref(key)).unwrap();
            assert_eq!(decrypted.plaintext, b"payload");
            assert_eq!(decrypted.kid, key.kid());
            assert_eq!(decrypted.protected["iss"], "orders");
            assert_eq!(decrypted.protected["jti"], "jti-1");
        }
    }
}

#[test]
fn empty_payload_round_trips() {
    let key = EncryptionKey::generate().unwrap();
    let sealed = jwe::encrypt(&[key.public_key()], "orders", "jti-1", b"").unwrap();
    let decrypted = jwe::decrypt(&sealed, std::slice::from_ref(&key)).unwrap();
    assert!(decrypted.plaintext.is_empty());
}

#[test]
fn compact_header_is_protected() {
    let key = EncryptionKey::generate().unwrap();
    let sealed = jwe::encrypt(&[key.public_key()], "orders", "jti-1", b"payload").unwrap();
    let text = String::from_utf8(sealed).unwrap();
    let header_b64 = text.split('.').next().unwrap();
    let header: Map<String, Value> = serde_json::from_slice(&b64_decode(header_b64).unwrap()).unwrap();
    let mut names: Vec<&str> = header.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["alg", "enc", "epk", "iss", "jti", "kid"]);
    assert_eq!(header["alg"], "ECDH-ES+A256KW");
    assert_eq!(header["enc"], "A256GCM");
    assert_eq!(header["kid"], key.kid());
}

#[test]
fn flipped_ciphertext_bit_fails_decryption() {
    let key = EncryptionKey::generate().unwrap();
    let sealed = jwe::encrypt(&[key.public_key()], "orders", "jti-1", b"payload").unwrap();
    let text = String::from_utf8(sealed).unwrap();
    let mut parts: Vec<String> = text.split('.').map(str::to_owned).collect();
    let mut ciphertext = b64_decode(&parts[3]).unwrap();
    ciphertext[0] ^= 1;
    parts[3] = b64_encode(&ciphertext);
    let rejection = jwe::decrypt(parts.join(".").as_bytes(), std::slice::from_ref(&key)).unwrap_err();
    assert_eq!(rejection.reason(), Reason::DecryptionFailed);
}

#[test]
fn flipped_wrapped_key_bit_fails_decryption() {
    let key = EncryptionKey::generate().unwrap();
    let sealed = jwe::encrypt(&[key.public_key()], "orders", "jti-1", b"payload").unwrap();
    let text = String::from_utf8(sealed).unwrap();
    let mut parts: Vec<String> = text.split('.').map(str::to_owned).collect();
    let mut wrapped = b64_decode(&parts[1]).unwrap();
    wrapped[10] ^= 1;
    parts[1] = b64_encode(&wrapped);
    let rejection = jwe::decrypt(parts.join(".").as_bytes(), std::slice::from_ref(&key)).unwrap_err();
    assert_eq!(rejection.reason(), Reason::DecryptionFailed);
}
