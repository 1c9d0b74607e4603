//! Public keys that verify token signatures, parsed from JWKs.

use std::fmt;

use p256::ecdsa::signature::Verifier as _;
use serde_json::{Map, Value};

use super::thumbprint::{ec_thumbprint, okp_thumbprint};
use super::{Algorithm, KeyError};
use crate::encoding::b64_decode_array;

/// JWK members that carry private or symmetric key material (RFC 7518
/// sections 6.2.2, 6.3.2 and 6.4.1, RFC 8037 section 2). A public key set
/// containing any of them is rejected as a whole: someone published a secret.
pub(crate) const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// A public key that verifies signatures, with its key id.
#[derive(Clone)]
pub struct PublicKey {
    kid: String,
    material: Material,
    /// The `alg` the JWK was restricted to, if it named one.
    pinned_alg: Option<Algorithm>,
}

#[derive(Clone)]
enum Material {
    Ed25519(Ed25519Key),
    P256(p256::ecdsa::VerifyingKey),
}

/// An Ed25519 public key, parsed once for each verification backend.
#[derive(Clone)]
struct Ed25519Key {
    /// Used by batch verification, and by single verification unless
    /// aws-lc-rs is the faster backend (see `dalek_verifies_faster`).
    dalek: ed25519_dalek::VerifyingKey,
    #[cfg(feature = "aws-lc-rs")]
    aws_lc: std::sync::Arc<aws_lc_rs::signature::ParsedPublicKey>,
    /// Whether the key lies in the prime-order subgroup. A key A + T with a
    /// torsion part T loads, like in `verify_strict`, but is kept out of
    /// batch verification (see `PublicKey::batch_ed25519_key`).
    torsion_free: bool,
}

impl Ed25519Key {
    /// Parses a key that was already screened: canonical and not of small order.
    fn new(dalek: ed25519_dalek::VerifyingKey) -> Result<Self, KeyError> {
        Ok(Self {
            #[cfg(feature = "aws-lc-rs")]
            aws_lc: std::sync::Arc::new(
                aws_lc_rs::signature::ParsedPublicKey::new(&aws_lc_rs::signature::ED25519, dalek.as_bytes())
                    .map_err(|_| KeyError::InvalidJwk("aws-lc-rs rejected the Ed25519 public key".into()))?,
            ),
            torsion_free: dalek.to_edwards().is_torsion_free(),
            dalek,
        })
    }

    /// Checks `signature` over `message` with the rules of ed25519-dalek's
    /// `verify_strict`, with the faster backend on this CPU.
    ///
    /// `verify_strict` accepts (R, s) when s is below the group order L, R
    /// and A are not of small order, and the encoding of [s]B - [k]A equals
    /// the 32 bytes of R. ed25519-dalek's plain `verify` and aws-lc-rs
    /// (`ED25519_verify`) check s and compare the same encoding, but accept
    /// a small-order R, which the key's owner can make: R = identity with
    /// s = k·a. The explicit check below rejects it first, and keys of
    /// small order never load, so both backends accept exactly the
    /// signatures that `verify_strict` accepts.
    fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        if !has_strict_ed25519_encoding(signature) {
            return false;
        }

        #[cfg(feature = "aws-lc-rs")]
        if !dalek_verifies_faster() {
            return self.verify_with_aws_lc(message, signature);
        }
        self.verify_with_dalek(message, signature)
    }

    /// Runs the curve arithmetic of [`Ed25519Key::verify`] with ed25519-dalek.
    fn verify_with_dalek(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        use ed25519_dalek::Verifier as _;
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        self.dalek.verify(message, &signature).is_ok()
    }

    /// Runs the curve arithmetic of [`Ed25519Key::verify`] with aws-lc-rs.
    #[cfg(feature = "aws-lc-rs")]
    fn verify_with_aws_lc(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.aws_lc.verify_sig(message, signature).is_ok()
    }
}

/// The library that checks single Ed25519 signatures in this process:
/// `"aws-lc-rs"` or `"ed25519-dalek"`. Batch verification always uses
/// curve25519-dalek, the curve arithmetic under ed25519-dalek.
pub fn single_verification_backend() -> &'static str {
    #[cfg(feature = "aws-lc-rs")]
    if !dalek_verifies_faster() {
        return "aws-lc-rs";
    }
    "ed25519-dalek"
}

/// Returns whether ed25519-dalek verifies faster than aws-lc-rs here: when
/// it was built with its AVX-512 IFMA backend and the CPU has AVX-512 IFMA
/// and VL, the features that backend needs. Measured in docs/benchmarks.md
/// on one such x86_64 CPU. Elsewhere aws-lc-rs was the faster one.
#[cfg(any(feature = "aws-lc-rs", test))]
fn dalek_verifies_faster() -> bool {
    #[cfg(all(target_arch = "x86_64", curve25519_dalek_backend = "avx512"))]
    {
        std::arch::is_x86_feature_detected!("avx512ifma") && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(all(target_arch = "x86_64", curve25519_dalek_backend = "avx512")))]
    {
        false
    }
}

/// The group order L = 2^252 + 27742317777372353535851937790883648493,
/// little-endian.
const GROUP_ORDER_LE: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
];

/// The field prime p = 2^255 - 19, little-endian.
const FIELD_PRIME_LE: [u8; 32] = [
    0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
];

/// The canonical encodings of the eight points of order 1, 2, 4 and 8 on
/// edwards25519. Their non-canonical encodings are rejected by
/// `is_canonical_nonce_encoding`, so they need no entry.
const SMALL_ORDER_ENCODINGS: [[u8; 32]; 8] = [
    // The identity (0, 1), order 1.
    hex32("0100000000000000000000000000000000000000000000000000000000000000"),
    // (0, -1), order 2.
    hex32("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    // (±sqrt(-1), 0), order 4.
    hex32("0000000000000000000000000000000000000000000000000000000000000000"),
    hex32("0000000000000000000000000000000000000000000000000000000000000080"),
    // The four points of order 8.
    hex32("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    hex32("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
    hex32("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    hex32("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"),
];

/// Decodes 64 hex digits at compile time.
const fn hex32(hex: &str) -> [u8; 32] {
    const fn nibble(digit: u8) -> u8 {
        match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            _ => panic!("not a lowercase hex digit"),
        }
    }
    let hex = hex.as_bytes();
    assert!(hex.len() == 64, "expected 64 hex digits");
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = (nibble(hex[2 * i]) << 4) | nibble(hex[2 * i + 1]);
        i += 1;
    }
    out
}

/// Whether the little-endian integer `value` is below `bound`.
fn is_below_le(value: &[u8], bound: &[u8; 32]) -> bool {
    for (byte, bound_byte) in value.iter().rev().zip(bound.iter().rev()) {
        if byte != bound_byte {
            return byte < bound_byte;
        }
    }
    false
}

/// Whether an Ed25519 signature passes the encoding checks that come
/// before the curve arithmetic: s below the group order, and R a canonical
/// encoding of a point not of small order.
///
/// Single verification never accepts a non-canonical R, because it compares
/// R's bytes with the canonical encoding of [s]B - [k]A. Batch verification
/// decodes R to a point instead, so a non-canonical encoding of the identity
/// (such as y = p + 1) with s = k·a would pass the batch equation there.
pub(crate) fn has_strict_ed25519_encoding(signature: &[u8; 64]) -> bool {
    let (r, s) = signature.split_at(32);
    let Ok(r) = <&[u8; 32]>::try_from(r) else {
        return false;
    };
    is_canonical_scalar(s) && is_canonical_nonce_encoding(r) && !is_small_order_encoding(r)
}

/// Whether `r` is the only encoding of its point: y below the field prime,
/// and no sign bit when x is 0. x is 0 only at y = 1 and y = p - 1.
fn is_canonical_nonce_encoding(r: &[u8; 32]) -> bool {
    if !is_canonical_point_encoding(r) {
        return false;
    }
    let sign_bit = r[31] & 0x80 != 0;
    let mut y = *r;
    y[31] &= 0x7f;
    let mut minus_one = FIELD_PRIME_LE;
    minus_one[0] -= 1;
    let x_is_zero = y == SMALL_ORDER_ENCODINGS[0] || y == minus_one;
    !(sign_bit && x_is_zero)
}

/// Whether the 32-byte little-endian scalar `s` is below the group order.
fn is_canonical_scalar(s: &[u8]) -> bool {
    s.len() == 32 && is_below_le(s, &GROUP_ORDER_LE)
}

/// Whether `r` is the canonical encoding of a point of small order.
fn is_small_order_encoding(r: &[u8]) -> bool {
    SMALL_ORDER_ENCODINGS.iter().any(|point| point.as_slice() == r)
}

/// Whether an Ed25519 point encoding is canonical: its y coordinate (the
/// low 255 bits) is below the field prime. Decoders that reduce y modulo p
/// would give the point a second encoding, and with it a second `kid`.
fn is_canonical_point_encoding(encoding: &[u8; 32]) -> bool {
    let mut y = *encoding;
    y[31] &= 0x7f;
    is_below_le(&y, &FIELD_PRIME_LE)
}

/// Screens an Ed25519 public key before it verifies anything.
fn screen_ed25519(key: ed25519_dalek::VerifyingKey) -> Result<Ed25519Key, KeyError> {
    if key.is_weak() {
        return Err(KeyError::WeakKey);
    }
    if !is_canonical_point_encoding(key.as_bytes()) {
        return Err(KeyError::InvalidJwk(
            "Ed25519 \"x\" is not a canonical encoding: its y coordinate is at or above the field prime".into(),
        ));
    }
    Ed25519Key::new(key)
}

/// The outcome of parsing one JWK of a set.
// A short-lived value, moved once into the set, so the size gap between
// the variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum ParsedJwk {
    /// A signature verification key.
    Signing(PublicKey),
    /// A key that is valid but not for signatures here (`use: enc`, X25519,
    /// an unknown `kty` or `crv`); it is skipped.
    Skipped(String),
}

impl PublicKey {
    /// Wraps an Ed25519 verifying key, rejecting small-order (weak) keys.
    pub fn ed25519(key: ed25519_dalek::VerifyingKey) -> Result<Self, KeyError> {
        let key = screen_ed25519(key)?;
        let x = crate::encoding::b64_encode(key.dalek.as_bytes());
        Ok(Self {
            kid: okp_thumbprint("Ed25519", &x),
            material: Material::Ed25519(key),
            pinned_alg: None,
        })
    }

    /// The key id (`kid`).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Whether this key verifies tokens whose header names `alg`.
    pub fn allows(&self, alg: Algorithm) -> bool {
        let family_ok = match self.material {
            Material::Ed25519(_) => matches!(alg, Algorithm::EdDsa | Algorithm::Ed25519),
            Material::P256(_) => alg == Algorithm::Es256,
        };
        if !family_ok {
            return false;
        }

        match self.pinned_alg {
            // EdDSA and Ed25519 name the same algorithm for an Ed25519 key,
            // so a JWK pinned to one still verifies tokens that use the other.
            Some(Algorithm::EdDsa | Algorithm::Ed25519) => matches!(alg, Algorithm::EdDsa | Algorithm::Ed25519),
            Some(pinned) => pinned == alg,
            None => true,
        }
    }

    /// Verifies `signature` over `signing_input`. The caller has already
    /// checked [`PublicKey::allows`]; this only checks the signature bytes.
    pub(crate) fn verify_signature(&self, signing_input: &[u8], signature: &[u8]) -> bool {
        match &self.material {
            Material::Ed25519(key) => {
                let Ok(signature) = <&[u8; 64]>::try_from(signature) else {
                    return false;
                };
                key.verify(signing_input, signature)
            }
            Material::P256(key) => {
                // JWS ES256 signatures are the 64-byte R || S form (RFC 7518
                // section 3.4); DER is not accepted. from_slice rejects r or s
                // equal to zero or not below the group order.
                if signature.len() != 64 {
                    return false;
                }
                let Ok(signature) = p256::ecdsa::Signature::from_slice(signature) else {
                    return false;
                };
                key.verify(signing_input, &signature).is_ok()
            }
        }
    }

    /// The Ed25519 verifying key for batch verification, or `None` for a
    /// P-256 key or an Ed25519 key with a torsion part.
    ///
    /// Under a key A + T the owner's signatures leave [k]T in the equation.
    /// `verify_strict` rejects them unless [k]T is the identity, but the
    /// batch equation merges the key's signatures into one term
    /// [Σ z_i·k_i](A + T) and is satisfied whenever [Σ z_i·k_i]T is the
    /// identity. Honest key generation never makes such a key, so checking
    /// its tokens one at a time costs nothing in practice.
    pub(crate) fn batch_ed25519_key(&self) -> Option<&ed25519_dalek::VerifyingKey> {
        match &self.material {
            Material::Ed25519(key) if key.torsion_free => Some(&key.dalek),
            Material::Ed25519(_) | Material::P256(_) => None,
        }
    }

    /// The public JWK of this key, with `kid`, `use: sig` and, when known, `alg`.
    ///
    /// An Ed25519 key carries `alg` only when the JWK it was parsed from
    /// named one. Its tokens may say `EdDSA` or `Ed25519`, and verifiers such
    /// as Node's jose and Python's joserfc skip a key whose `alg` is not the
    /// token's, so naming one would reject the other.
    pub fn to_jwk(&self) -> Value {
        let mut jwk = Map::new();
        match &self.material {
            Material::Ed25519(key) => {
                jwk.insert("kty".into(), "OKP".into());
                jwk.insert("crv".into(), "Ed25519".into());
                jwk.insert("x".into(), crate::encoding::b64_encode(key.dalek.as_bytes()).into());
                if let Some(alg) = self.pinned_alg {
                    jwk.insert("alg".into(), alg.name().into());
                }
            }
            Material::P256(key) => {
                let point = key.to_encoded_point(false);
                let x = point.x().map(|x| crate::encoding::b64_encode(x)).unwrap_or_default();
                let y = point.y().map(|y| crate::encoding::b64_encode(y)).unwrap_or_default();
                jwk.insert("kty".into(), "EC".into());
                jwk.insert("crv".into(), "P-256".into());
                jwk.insert("x".into(), x.into());
                jwk.insert("y".into(), y.into());
                jwk.insert("alg".into(), "ES256".into());
            }
        }
        jwk.insert("use".into(), "sig".into());
        jwk.insert("kid".into(), self.kid.clone().into());
        Value::Object(jwk)
    }

    /// Parses a public JWK (RFC 7517).
    ///
    /// Returns [`ParsedJwk::Skipped`] for keys that are well formed but not
    /// signature keys trustwire uses, and an error for private members, bad
    /// encodings, points not on the curve and small-order Ed25519 keys.
    pub(crate) fn from_jwk(jwk: &Map<String, Value>) -> Result<ParsedJwk, KeyError> {
        for member in PRIVATE_MEMBERS {
            if jwk.contains_key(member) {
                return Err(KeyError::PrivateMaterial { member });
            }
        }

        let kty = string_member(jwk, "kty")?.ok_or(KeyError::InvalidJwk("missing \"kty\"".into()))?;
        let crv = string_member(jwk, "crv")?.unwrap_or_default();
        let declared_kid = string_member(jwk, "kid")?;

        if let Some(key_use) = string_member(jwk, "use")?
            && key_use != "sig"
        {
            return Ok(ParsedJwk::Skipped(format!("\"use\" is {key_use:?}, not \"sig\"")));
        }
        if let Some(ops) = jwk.get("key_ops") {
            let verifies = ops
                .as_array()
                .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")));
            if !verifies {
                return Ok(ParsedJwk::Skipped("\"key_ops\" does not include \"verify\"".into()));
            }
        }

        let pinned_alg = match string_member(jwk, "alg")? {
            None => None,
            Some(name) => match Algorithm::from_name(name) {
                Some(alg) => Some(alg),
                None => return Ok(ParsedJwk::Skipped(format!("\"alg\" {name:?} is not supported"))),
            },
        };

        let (material, thumbprint) = match (kty, crv) {
            ("OKP", "Ed25519") => {
                let x = string_member(jwk, "x")?.ok_or(KeyError::InvalidJwk("Ed25519 key without \"x\"".into()))?;
                let bytes: [u8; 32] = b64_decode_array(x).ok_or(KeyError::InvalidJwk(
                    "Ed25519 \"x\" is not 32 bytes of base64url".into(),
                ))?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                    .map_err(|_| KeyError::InvalidJwk("Ed25519 \"x\" is not a valid point".into()))?;
                (Material::Ed25519(screen_ed25519(key)?), okp_thumbprint("Ed25519", x))
            }
            ("EC", "P-256") => {
                let x = string_member(jwk, "x")?.ok_or(KeyError::InvalidJwk("P-256 key without \"x\"".into()))?;
                let y = string_member(jwk, "y")?.ok_or(KeyError::InvalidJwk("P-256 key without \"y\"".into()))?;
                let xb: [u8; 32] = b64_decode_array(x)
                    .ok_or(KeyError::InvalidJwk("P-256 \"x\" is not 32 bytes of base64url".into()))?;
                let yb: [u8; 32] = b64_decode_array(y)
                    .ok_or(KeyError::InvalidJwk("P-256 \"y\" is not 32 bytes of base64url".into()))?;
                let point = p256::EncodedPoint::from_affine_coordinates(&xb.into(), &yb.into(), false);
                // from_encoded_point checks that the point is on the curve and
                // is not the identity.
                let key = p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                    .map_err(|_| KeyError::InvalidJwk("P-256 (x, y) is not a point on the curve".into()))?;
                (Material::P256(key), ec_thumbprint("P-256", x, y))
            }
            (kty, crv) => {
                return Ok(ParsedJwk::Skipped(format!(
                    "kty {kty:?} with crv {crv:?} is not a supported signature key"
                )));
            }
        };

        let key = Self {
            kid: declared_kid.map_or(thumbprint, str::to_owned),
            material,
            pinned_alg,
        };
        if let Some(alg) = pinned_alg
            && !key.allows(alg)
        {
            return Ok(ParsedJwk::Skipped(format!("\"alg\" {alg} does not match the key type")));
        }
        Ok(ParsedJwk::Signing(key))
    }
}

/// Reads an optional string member; a member of another JSON type is an error.
pub(crate) fn string_member<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, KeyError> {
    match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(value)) => Ok(Some(value)),
        Some(_) => Err(KeyError::InvalidJwk(format!("\"{name}\" is not a string"))),
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.material {
            Material::Ed25519(_) => "Ed25519",
            Material::P256(_) => "P-256",
        };
        f.debug_struct("PublicKey")
            .field("kid", &self.kid)
            .field("type", &kind)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use curve25519_dalek::Scalar;
    use curve25519_dalek::edwards::CompressedEdwardsY;
    use ed25519_dalek::Signer as _;
    use sha2::{Digest, Sha512};

    use super::*;

    fn signing_key(seed: u8) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
    }

    fn screened(key: &ed25519_dalek::SigningKey) -> Ed25519Key {
        screen_ed25519(key.verifying_key()).unwrap()
    }

    /// The result of every backend, which must agree.
    fn backends_agree(key: &Ed25519Key, message: &[u8], signature: &[u8; 64]) -> bool {
        let dalek = key.verify_with_dalek(message, signature);
        #[cfg(feature = "aws-lc-rs")]
        {
            let aws_lc = key.verify_with_aws_lc(message, signature);
            assert_eq!(dalek, aws_lc, "the backends disagree on {signature:02x?}");
        }
        dalek
    }

    fn verify_strict(key: &ed25519_dalek::SigningKey, message: &[u8], signature: &[u8; 64]) -> bool {
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        key.verifying_key().verify_strict(message, &signature).is_ok()
    }

    /// Adds L to a canonical scalar: the same point, a second encoding.
    fn add_group_order(s: &[u8]) -> [u8; 32] {
        let mut sum = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let total = u16::from(s[i]) + u16::from(GROUP_ORDER_LE[i]) + carry;
            sum[i] = total as u8;
            carry = total >> 8;
        }
        sum
    }

    #[test]
    fn backend_name_matches_choice() {
        let expected = if cfg!(feature = "aws-lc-rs") && !dalek_verifies_faster() {
            "aws-lc-rs"
        } else {
            "ed25519-dalek"
        };
        assert_eq!(single_verification_backend(), expected);
    }

    #[test]
    fn small_order_table_lists_all_eight_points() {
        let mut seen = Vec::new();
        for encoding in SMALL_ORDER_ENCODINGS {
            let point = CompressedEdwardsY(encoding).decompress().expect("a point on the curve");
            assert!(point.is_small_order(), "{encoding:02x?} is not of small order");
            assert_eq!(
                point.compress().to_bytes(),
                encoding,
                "{encoding:02x?} is not canonical"
            );
            assert!(!seen.contains(&encoding), "{encoding:02x?} is listed twice");
            seen.push(encoding);
        }
        // The torsion subgroup of edwards25519 has exactly eight points.
        assert_eq!(seen.len(), 8);
    }

    #[test]
    fn scalar_bound_is_group_order() {
        let order = GROUP_ORDER_LE;
        let mut below = order;
        below[0] -= 1;
        assert!(bool::from(Scalar::from_canonical_bytes(order).is_none()));
        assert!(bool::from(Scalar::from_canonical_bytes(below).is_some()));
        assert!(!is_canonical_scalar(&order));
        assert!(is_canonical_scalar(&below));
        assert!(is_canonical_scalar(&[0u8; 32]));
        assert!(!is_canonical_scalar(&[0xff; 32]));
    }

    #[test]
    fn valid_signatures_verify() {
        for seed in 0..32u8 {
            let key = signing_key(seed);
            let message = vec![seed; usize::from(seed) * 7];
            let signature = key.sign(&message).to_bytes();
            assert!(screened(&key).verify(&message, &signature), "seed {seed}");
            assert!(backends_agree(&screened(&key), &message, &signature), "seed {seed}");
        }
    }

    /// The key's owner can sign with R = identity and s = k·a: cofactorless
    /// verification computes [s]B - [k]A = identity and accepts it, but
    /// `verify_strict` rejects a small-order R, and so must trustwire.
    #[test]
    fn identity_nonce_signature_rejected() {
        let key = signing_key(7);
        let public = key.verifying_key();
        let message = b"orders.created";
        let r = SMALL_ORDER_ENCODINGS[0];

        let mut hasher = Sha512::new();
        hasher.update(r);
        hasher.update(public.as_bytes());
        hasher.update(message);
        let k = Scalar::from_bytes_mod_order_wide(&hasher.finalize().into());
        let s = k * key.to_scalar();

        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(&r);
        signature[32..].copy_from_slice(s.as_bytes());

        assert!(!verify_strict(&key, message, &signature));
        assert!(!screened(&key).verify(message, &signature));
        // Without the explicit check both backends would accept it.
        assert!(backends_agree(&screened(&key), message, &signature));
    }

    #[test]
    fn non_canonical_s_rejected() {
        let key = signing_key(3);
        let message = b"payments.settled";
        let mut signature = key.sign(message).to_bytes();
        let s = add_group_order(&signature[32..]);
        signature[32..].copy_from_slice(&s);
        assert!(!verify_strict(&key, message, &signature));
        assert!(!screened(&key).verify(message, &signature));
    }

    #[test]
    fn small_order_nonces_rejected() {
        let key = signing_key(5);
        let message = b"x";
        let valid = key.sign(message).to_bytes();
        for r in SMALL_ORDER_ENCODINGS {
            let mut signature = valid;
            signature[..32].copy_from_slice(&r);
            assert!(!screened(&key).verify(message, &signature), "R = {r:02x?}");
        }
    }

    /// Both backends and `verify_strict` agree on every single-bit change of
    /// a valid signature, message or not.
    #[test]
    fn bit_flips_rejected_like_verify_strict() {
        for seed in 0..8u8 {
            let key = signing_key(seed);
            let message = [seed; 40];
            let valid = key.sign(&message).to_bytes();
            for bit in 0..512 {
                let mut signature = valid;
                signature[bit / 8] ^= 1 << (bit % 8);
                let screened = screened(&key);
                let ours = screened.verify(&message, &signature);
                assert_eq!(
                    ours,
                    verify_strict(&key, &message, &signature),
                    "seed {seed}, bit {bit}"
                );
                if has_strict_ed25519_encoding(&signature) {
                    assert!(
                        !backends_agree(&screened, &message, &signature),
                        "seed {seed}, bit {bit}"
                    );
                }
                assert!(!ours, "seed {seed}, bit {bit}");
            }
        }
    }

    /// The six non-canonical encodings of small-order points that
    /// curve25519-dalek decodes: x = 0 with the sign bit set (y = 1 and
    /// y = p - 1), and y = p + 1 and y = p with either sign bit.
    const NON_CANONICAL_SMALL_ORDER: [[u8; 32]; 6] = [
        hex32("0100000000000000000000000000000000000000000000000000000000000080"),
        hex32("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
        hex32("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
        hex32("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
        hex32("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
        hex32("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
    ];

    /// k = SHA-512(R || A || M) mod L.
    fn challenge(r: &[u8], public: &[u8; 32], message: &[u8]) -> Scalar {
        let mut hasher = Sha512::new();
        hasher.update(r);
        hasher.update(public);
        hasher.update(message);
        Scalar::from_bytes_mod_order_wide(&hasher.finalize().into())
    }

    /// Signs with secret scalar `a` under the published key `public` and
    /// the nonce point `nonce`, whose discrete log is `r` plus a torsion
    /// part: s = r + k·a with k taken over the bytes of `nonce`.
    fn sign_raw(a: &Scalar, public: &[u8; 32], r: &Scalar, nonce: &[u8; 32], message: &[u8]) -> [u8; 64] {
        let k = challenge(nonce, public, message);
        let s = r + k * a;
        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(nonce);
        signature[32..].copy_from_slice(s.as_bytes());
        signature
    }

    /// Checks that trustwire's verification, ed25519-dalek's
    /// `verify_strict` and both backends agree on `signature`, and returns
    /// the verdict.
    fn verdicts_agree(key: &ed25519_dalek::VerifyingKey, message: &[u8], signature: &[u8; 64], case: &str) -> bool {
        let screened = screen_ed25519(*key).unwrap();
        let strict = key
            .verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature))
            .is_ok();
        let ours = screened.verify(message, signature);
        assert_eq!(ours, strict, "trustwire and verify_strict disagree: {case}");

        // The backends alone, without the encoding checks, agree with each
        // other always, and with verify_strict whenever those checks pass.
        let backends = backends_agree(&screened, message, signature);
        if has_strict_ed25519_encoding(signature) {
            assert_eq!(backends, strict, "the backends and verify_strict disagree: {case}");
        }
        ours
    }

    /// A point of order 8; its multiples are the whole torsion subgroup.
    fn torsion_generator() -> curve25519_dalek::EdwardsPoint {
        CompressedEdwardsY(SMALL_ORDER_ENCODINGS[4]).decompress().unwrap()
    }

    #[test]
    fn small_order_encodings_not_strict() {
        let key = signing_key(11);
        let message = b"audit.logged";
        let public = key.verifying_key().to_bytes();
        for r in SMALL_ORDER_ENCODINGS.iter().chain(&NON_CANONICAL_SMALL_ORDER) {
            let point = CompressedEdwardsY(*r).decompress().expect("decodes");
            assert!(point.is_small_order(), "{r:02x?}");

            // s = k·a: [s]B - [k]A is the identity.
            let s = challenge(r, &public, message) * key.to_scalar();
            let mut signature = [0u8; 64];
            signature[..32].copy_from_slice(r);
            signature[32..].copy_from_slice(s.as_bytes());

            assert!(!has_strict_ed25519_encoding(&signature), "R = {r:02x?}");
            assert!(
                !verdicts_agree(&key.verifying_key(), message, &signature, &format!("R = {r:02x?}")),
                "R = {r:02x?}"
            );
        }
    }

    #[test]
    fn scalar_encodings_match_verify_strict() {
        let key = signing_key(12);
        let message = b"stock.reserved";
        let valid = key.sign(message).to_bytes();
        assert!(verdicts_agree(&key.verifying_key(), message, &valid, "valid"));

        let mut cases: Vec<(&str, [u8; 32])> = vec![
            ("s + L", add_group_order(&valid[32..])),
            ("s = L", GROUP_ORDER_LE),
            ("s = 2^256 - 1", [0xff; 32]),
        ];
        for high_bits in [0x20u8, 0x40, 0x80, 0xe0] {
            let mut s: [u8; 32] = valid[32..].try_into().unwrap();
            s[31] |= high_bits;
            cases.push(("s with high bits", s));
        }

        for (case, s) in cases {
            let mut signature = valid;
            signature[32..].copy_from_slice(&s);
            assert!(!has_strict_ed25519_encoding(&signature), "{case}");
            assert!(
                !verdicts_agree(&key.verifying_key(), message, &signature, case),
                "{case}"
            );
        }
    }

    #[test]
    fn nonce_encodings_match_verify_strict() {
        let key = signing_key(13);
        let verifying = key.verifying_key();
        let message = b"invoice.sent";
        let valid = key.sign(message).to_bytes();

        // R not on the curve: the first y values that do not decode.
        let mut off_curve = 0;
        for y in 2u8..64 {
            let mut r = [0u8; 32];
            r[0] = y;
            if CompressedEdwardsY(r).decompress().is_some() {
                continue;
            }
            off_curve += 1;
            let mut signature = valid;
            signature[..32].copy_from_slice(&r);
            assert!(!verdicts_agree(
                &verifying,
                message,
                &signature,
                &format!("R off the curve, y = {y}")
            ));
        }
        assert!(off_curve > 0);

        // Non-canonical encodings y + p of large-order points. Their discrete
        // logarithms are unknown, so the s of a valid signature is used instead.
        let mut non_canonical = 0;
        for y in 2u8..19 {
            let mut r = FIELD_PRIME_LE;
            r[0] += y;
            let Some(point) = CompressedEdwardsY(r).decompress() else {
                continue;
            };
            if point.is_small_order() {
                continue;
            }
            non_canonical += 1;
            let mut signature = valid;
            signature[..32].copy_from_slice(&r);
            assert!(!has_strict_ed25519_encoding(&signature), "y = {y} + p");
            assert!(!verdicts_agree(
                &verifying,
                message,
                &signature,
                &format!("R = y + p, y = {y}")
            ));
        }
        assert!(non_canonical > 0);

        // A valid signature with the sign bit of R flipped: -R.
        let mut signature = valid;
        signature[31] ^= 0x80;
        assert!(!verdicts_agree(&verifying, message, &signature, "R negated"));
    }

    /// R = [r]B + T for each torsion point T, with s = r + k·a: [s]B - [k]A
    /// is [r]B, not R, so every backend must reject it.
    #[test]
    fn nonce_with_torsion_rejected() {
        let key = signing_key(14);
        let public = key.verifying_key().to_bytes();
        let a = key.to_scalar();
        let message = b"refund.issued";
        let r = Scalar::from_bytes_mod_order_wide(&[0x5a; 64]);
        let nonce = curve25519_dalek::constants::ED25519_BASEPOINT_POINT * r;

        let honest = sign_raw(&a, &public, &r, &nonce.compress().to_bytes(), message);
        assert!(verdicts_agree(&key.verifying_key(), message, &honest, "torsion-free R"));

        for multiple in 1..8u8 {
            let torsion = torsion_generator() * Scalar::from(multiple);
            let encoded = (nonce + torsion).compress().to_bytes();
            let signature = sign_raw(&a, &public, &r, &encoded, message);
            assert!(has_strict_ed25519_encoding(&signature), "T = {multiple}·T8");
            assert!(
                !verdicts_agree(&key.verifying_key(), message, &signature, &format!("R + {multiple}·T8")),
                "R + {multiple}·T8"
            );
        }
    }

    /// A mixed-order key A + T is not of small order, so it loads. A
    /// signature s = r + k·a under it satisfies [s]B - [k](A + T) = R - [k]T,
    /// which equals R exactly when [k]T is the identity. All verifiers must
    /// agree on which of these signatures pass.
    #[test]
    fn mixed_order_key_matches_verify_strict() {
        let key = signing_key(15);
        let a = key.to_scalar();
        for multiple in [1u8, 2, 4] {
            let torsion = torsion_generator() * Scalar::from(multiple);
            let mixed = curve25519_dalek::constants::ED25519_BASEPOINT_POINT * a + torsion;
            let public = mixed.compress().to_bytes();
            let verifying = ed25519_dalek::VerifyingKey::from_bytes(&public).unwrap();
            assert!(!verifying.is_weak());
            assert!(PublicKey::ed25519(verifying).is_ok(), "the mixed-order key loads");

            let (mut accepted, mut rejected) = (0, 0);
            for index in 0..64u32 {
                let message = index.to_le_bytes();
                let r = Scalar::from(u64::from(index) * 7919 + 1);
                let nonce = (curve25519_dalek::constants::ED25519_BASEPOINT_POINT * r)
                    .compress()
                    .to_bytes();
                let signature = sign_raw(&a, &public, &r, &nonce, &message);

                let k = challenge(&nonce, &public, &message);
                let expected = curve25519_dalek::traits::IsIdentity::is_identity(&(torsion * k));
                let case = format!("{multiple}·T8, message {index}");
                assert_eq!(
                    verdicts_agree(&verifying, &message, &signature, &case),
                    expected,
                    "{case}"
                );
                if expected {
                    accepted += 1;
                } else {
                    rejected += 1;
                }
            }
            // Both outcomes occur, so the comparison covered each.
            assert!(
                accepted > 0 && rejected > 0,
                "{multiple}·T8: {accepted} accepted, {rejected} rejected"
            );
        }
    }

    #[test]
    fn non_canonical_key_rejected() {
        // y + p for small y: a second encoding of the point with that y.
        let mut found = 0;
        for y in 0u8..19 {
            let mut encoding = FIELD_PRIME_LE;
            encoding[0] += y;
            let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&encoding) else {
                continue;
            };
            if key.is_weak() {
                continue;
            }
            found += 1;
            let err = PublicKey::ed25519(key).unwrap_err();
            assert!(
                matches!(&err, KeyError::InvalidJwk(reason) if reason.contains("canonical")),
                "y = {y}: {err}"
            );

            let jwk = serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": crate::encoding::b64_encode(&encoding),
            });
            let err = PublicKey::from_jwk(jwk.as_object().unwrap()).unwrap_err();
            assert!(
                matches!(&err, KeyError::InvalidJwk(reason) if reason.contains("canonical")),
                "JWK with y = {y}: {err}"
            );
        }
        assert!(
            found > 0,
            "no non-canonical encoding of a large-order point among y + p"
        );
    }

    #[test]
    fn canonical_key_accepted() {
        let key = signing_key(9).verifying_key();
        assert!(is_canonical_point_encoding(key.as_bytes()));
        assert!(PublicKey::ed25519(key).is_ok());
    }
}
