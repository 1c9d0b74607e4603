//! The Concat KDF (NIST SP 800-56A section 5.8.1) with SHA-256, as JWA uses
//! it to derive a key from an ECDH-ES shared secret (RFC 7518 section 4.6.2).

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Derives `key_bits` bits (at most 256) of key from the shared secret `z`.
///
/// `algorithm_id` is the `alg` value for key agreement with key wrapping
/// (`ECDH-ES+A256KW`) or the `enc` value for direct key agreement, and `apu`
/// and `apv` are the decoded `apu` and `apv` header values (empty when
/// absent). The result fills the first `key_bits / 8` bytes; the rest of the
/// array is the remainder of the SHA-256 output and must not be used.
pub(crate) fn concat_kdf(
    z: &[u8; 32],
    algorithm_id: &str,
    apu: &[u8],
    apv: &[u8],
    key_bits: u32,
) -> Zeroizing<[u8; 32]> {
    debug_assert!(key_bits <= 256, "one SHA-256 round yields at most 256 bits");

    // Each field of OtherInfo is a 32-bit big-endian length and the bytes;
    // SuppPubInfo is the key length in bits and SuppPrivInfo is empty.
    let mut hash = Sha256::new();
    hash.update(1u32.to_be_bytes());
    hash.update(z);
    for field in [algorithm_id.as_bytes(), apu, apv] {
        hash.update(length_prefix(field));
        hash.update(field);
    }
    hash.update(key_bits.to_be_bytes());

    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&hash.finalize());
    key
}

fn length_prefix(field: &[u8]) -> [u8; 4] {
    // Callers bound every field far below 4 GiB.
    u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes()
}
