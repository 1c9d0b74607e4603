//! Encryption keys for sealed messages: X25519 key agreement keys, and P-256
//! keys for interop with peers that lack X25519.
//!
//! These keys never sign. A service's encryption key is distinct from its
//! signing key and is published in its JWKS with `use: enc` and
//! `alg: ECDH-ES+A256KW`.

use std::fmt;

use serde_json::{Map, Value};
use zeroize::{Zeroize, Zeroizing};

use super::KeyError;
use super::public::{PRIVATE_MEMBERS, string_member};
use super::thumbprint::{ec_thumbprint, okp_thumbprint};
use crate::encoding::{b64_decode, b64_decode_array, b64_encode};

/// The JWE key management algorithm of every trustwire encryption key.
pub const KEY_MANAGEMENT_ALG: &str = "ECDH-ES+A256KW";

/// The curve of an encryption key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EncryptionCurve {
    /// X25519 (RFC 7748, as a JWK per RFC 8037): the default.
    X25519,
    /// NIST P-256, for peers whose JOSE library has no X25519.
    P256,
}

impl EncryptionCurve {
    /// The JWK `crv` value.
    pub fn name(self) -> &'static str {
        match self {
            EncryptionCurve::X25519 => "X25519",
            EncryptionCurve::P256 => "P-256",
        }
    }
}

impl fmt::Display for EncryptionCurve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A validated public point on one of the encryption curves.
///
/// Construction rejects every point that would make a key agreement unsafe.
/// For X25519 that is a point of small order, whose shared secret is all
/// zeros whatever the private key, and a non-canonical encoding. For P-256
/// it is a point off the curve (the invalid-curve attack) or the identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Point {
    X25519(x25519_dalek::PublicKey),
    P256(p256::PublicKey),
}

/// The field prime 2^255 - 19, little-endian, to reject non-canonical X25519
/// encodings.
const X25519_PRIME_LE: [u8; 32] = {
    let mut prime = [0xff; 32];
    prime[0] = 0xed;
    prime[31] = 0x7f;
    prime
};

impl Point {
    /// Parses and validates an X25519 public key (the little-endian u-coordinate).
    pub(crate) fn x25519(bytes: [u8; 32]) -> Result<Self, KeyError> {
        let point = Self::x25519_unscreened(bytes)?;
        if has_small_order_x25519(&bytes) {
            return Err(KeyError::InvalidJwk(
                "X25519 \"x\" is a small-order point: every key agreement with it gives the all-zero secret".into(),
            ));
        }
        Ok(point)
    }

    /// Parses an X25519 public key that is used only once, in one key
    /// agreement: the `epk` of a received JWE. It checks the encoding only.
    /// The small-order check of [`Point::x25519`] costs a scalar
    /// multiplication, and [`EncryptionKey::agree`] rejects the same points
    /// by its all-zero output (RFC 7748 section 6.1), so it is left out here.
    fn x25519_unscreened(bytes: [u8; 32]) -> Result<Self, KeyError> {
        if !is_canonical_x25519(&bytes) {
            return Err(KeyError::InvalidJwk(
                "X25519 \"x\" is not a canonical encoding: it is at or above the field prime 2^255 - 19".into(),
            ));
        }
        Ok(Self::X25519(x25519_dalek::PublicKey::from(bytes)))
    }

    /// Parses and validates a P-256 public key from its affine coordinates.
    pub(crate) fn p256(x: &[u8; 32], y: &[u8; 32]) -> Result<Self, KeyError> {
        let mut sec1 = [0u8; 65];
        sec1[0] = 0x04;
        sec1[1..33].copy_from_slice(x);
        sec1[33..].copy_from_slice(y);
        // from_sec1_bytes checks that the point is on the curve and is not the
        // identity; P-256 has cofactor 1, so no small subgroup remains.
        let key = p256::PublicKey::from_sec1_bytes(&sec1)
            .map_err(|_| KeyError::InvalidJwk("P-256 (x, y) is not a point on the curve".into()))?;
        Ok(Self::P256(key))
    }

    /// Reads `kty`, `crv`, `x` and (for P-256) `y` of a JWK.
    pub(crate) fn from_jwk_members(jwk: &Map<String, Value>) -> Result<Self, KeyError> {
        Self::from_members(jwk, Self::x25519)
    }

    /// Reads the `epk` of a received JWE, like [`Point::from_jwk_members`]
    /// but with the X25519 check of [`Point::x25519_unscreened`].
    pub(crate) fn from_epk_members(epk: &Map<String, Value>) -> Result<Self, KeyError> {
        Self::from_members(epk, Self::x25519_unscreened)
    }

    fn from_members(
        jwk: &Map<String, Value>,
        x25519: fn([u8; 32]) -> Result<Self, KeyError>,
    ) -> Result<Self, KeyError> {
        let kty = string_member(jwk, "kty")?.ok_or(KeyError::InvalidJwk("missing \"kty\"".into()))?;
        let crv = string_member(jwk, "crv")?.ok_or(KeyError::InvalidJwk("missing \"crv\"".into()))?;
        match (kty, crv) {
            ("OKP", "X25519") => {
                let x = string_member(jwk, "x")?.ok_or(KeyError::InvalidJwk("X25519 key without \"x\"".into()))?;
                let bytes = b64_decode_array(x)
                    .ok_or(KeyError::InvalidJwk("X25519 \"x\" is not 32 bytes of base64url".into()))?;
                x25519(bytes)
            }
            ("EC", "P-256") => {
                let x = string_member(jwk, "x")?.ok_or(KeyError::InvalidJwk("P-256 key without \"x\"".into()))?;
                let y = string_member(jwk, "y")?.ok_or(KeyError::InvalidJwk("P-256 key without \"y\"".into()))?;
                let x = b64_decode_array(x)
                    .ok_or(KeyError::InvalidJwk("P-256 \"x\" is not 32 bytes of base64url".into()))?;
                let y = b64_decode_array(y)
                    .ok_or(KeyError::InvalidJwk("P-256 \"y\" is not 32 bytes of base64url".into()))?;
                Self::p256(&x, &y)
            }
            (kty, crv) => {
                let kty: String = kty.chars().take(16).collect();
                let crv: String = crv.chars().take(16).collect();
                Err(KeyError::InvalidJwk(format!(
                    "kty {kty:?} with crv {crv:?} is not an encryption curve; expected X25519 or P-256"
                )))
            }
        }
    }

    /// The curve.
    pub(crate) fn curve(&self) -> EncryptionCurve {
        match self {
            Point::X25519(_) => EncryptionCurve::X25519,
            Point::P256(_) => EncryptionCurve::P256,
        }
    }

    /// The public JWK members `kty`, `crv`, `x` and, for P-256, `y`.
    pub(crate) fn to_jwk_members(&self) -> Map<String, Value> {
        let mut jwk = Map::new();
        match self {
            Point::X25519(key) => {
                jwk.insert("kty".into(), "OKP".into());
                jwk.insert("crv".into(), "X25519".into());
                jwk.insert("x".into(), b64_encode(key.as_bytes()).into());
            }
            Point::P256(key) => {
                let (x, y) = p256_coordinates(key);
                jwk.insert("kty".into(), "EC".into());
                jwk.insert("crv".into(), "P-256".into());
                jwk.insert("x".into(), x.into());
                jwk.insert("y".into(), y.into());
            }
        }
        jwk
    }

    /// The RFC 7638 thumbprint.
    fn thumbprint(&self) -> String {
        match self {
            Point::X25519(key) => okp_thumbprint("X25519", &b64_encode(key.as_bytes())),
            Point::P256(key) => {
                let (x, y) = p256_coordinates(key);
                ec_thumbprint("P-256", &x, &y)
            }
        }
    }
}

/// The base64url affine coordinates of a P-256 key.
fn p256_coordinates(key: &p256::PublicKey) -> (String, String) {
    use p256::elliptic_curve::sec1::ToEncodedPoint;

    let point = key.to_encoded_point(false);
    let x = point.x().map(|x| b64_encode(x)).unwrap_or_default();
    let y = point.y().map(|y| b64_encode(y)).unwrap_or_default();
    (x, y)
}

/// Whether `u` is below the field prime and has bit 255 clear. RFC 7748
/// section 5 lets X25519 accept other encodings by reducing them. trustwire
/// rejects them, so each key has exactly one encoding and one `kid`.
fn is_canonical_x25519(u: &[u8; 32]) -> bool {
    // Compare as little-endian integers, from the most significant byte.
    for (byte, prime_byte) in u.iter().rev().zip(X25519_PRIME_LE.iter().rev()) {
        if byte != prime_byte {
            return byte < prime_byte;
        }
    }
    false
}

/// Whether `u` is a point of small order on Curve25519 or its twist.
///
/// A clamped scalar is a multiple of the cofactor 8, so multiplying by it
/// sends exactly the points of order 1, 2, 4 or 8 to the all-zero output.
/// This is the all-zero check of RFC 7748 section 6.1, done once with a
/// fixed scalar when the key is loaded.
fn has_small_order_x25519(u: &[u8; 32]) -> bool {
    const PROBE_SCALAR: [u8; 32] = [0x5a; 32];
    x25519_dalek::x25519(PROBE_SCALAR, *u) == [0u8; 32]
}

/// A public key that senders encrypt to: an X25519 or P-256 key with its
/// `kid`, parsed from a JWK with `use: enc`.
#[derive(Clone)]
pub struct EncryptionPublicKey {
    kid: String,
    point: Point,
}

/// The outcome of reading one JWK of a set as an encryption key.
#[derive(Debug)]
pub(crate) enum ParsedEncryptionJwk {
    /// A usable encryption key.
    Encryption(EncryptionPublicKey),
    /// A key meant for encryption that trustwire cannot use (another `alg`,
    /// `key_ops` without key agreement); it is skipped.
    Skipped(String),
    /// Not an encryption key: left to the signature key parser.
    NotEncryption,
}

impl EncryptionPublicKey {
    /// The key id (`kid`).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The curve.
    pub fn curve(&self) -> EncryptionCurve {
        self.point.curve()
    }

    /// The public JWK, with `kid`, `use: enc` and `alg: ECDH-ES+A256KW`.
    pub fn to_jwk(&self) -> Value {
        let mut jwk = self.point.to_jwk_members();
        jwk.insert("use".into(), "enc".into());
        jwk.insert("alg".into(), KEY_MANAGEMENT_ALG.into());
        jwk.insert("kid".into(), self.kid.clone().into());
        Value::Object(jwk)
    }

    /// Parses a public JWK as an encryption key.
    ///
    /// An `OKP` key on `X25519` is always an encryption key. A `P-256` key is
    /// one only with `use: enc` or an `alg` of the ECDH-ES family. Without
    /// them it stays a signature key, as before encryption keys existed.
    /// Private members, bad encodings, points not on the curve and
    /// small-order X25519 points are errors, which reject the whole set.
    pub(crate) fn from_jwk(jwk: &Map<String, Value>) -> Result<ParsedEncryptionJwk, KeyError> {
        for member in PRIVATE_MEMBERS {
            if jwk.contains_key(member) {
                return Err(KeyError::PrivateMaterial { member });
            }
        }

        let kty = string_member(jwk, "kty")?;
        let crv = string_member(jwk, "crv")?;
        let key_use = string_member(jwk, "use")?;
        let alg = string_member(jwk, "alg")?;
        let is_candidate = match (kty, crv) {
            (Some("OKP"), Some("X25519")) => true,
            (Some("EC"), Some("P-256")) => key_use == Some("enc") || alg.is_some_and(|alg| alg.starts_with("ECDH-ES")),
            _ => false,
        };
        if !is_candidate {
            return Ok(ParsedEncryptionJwk::NotEncryption);
        }

        if let Some(key_use) = key_use
            && key_use != "enc"
        {
            return Ok(ParsedEncryptionJwk::Skipped(format!(
                "an X25519 key with \"use\" {key_use:?}, not \"enc\""
            )));
        }
        if let Some(alg) = alg
            && alg != KEY_MANAGEMENT_ALG
        {
            return Ok(ParsedEncryptionJwk::Skipped(format!(
                "\"alg\" {alg:?} is not {KEY_MANAGEMENT_ALG:?}"
            )));
        }
        if let Some(ops) = jwk.get("key_ops") {
            let agrees = ops.as_array().is_some_and(|ops| {
                ops.iter()
                    .any(|op| matches!(op.as_str(), Some("deriveKey" | "deriveBits" | "wrapKey" | "encrypt")))
            });
            if !agrees {
                return Ok(ParsedEncryptionJwk::Skipped(
                    "\"key_ops\" allows no key agreement (deriveKey, deriveBits, wrapKey or encrypt)".into(),
                ));
            }
        }

        let point = Point::from_jwk_members(jwk)?;
        let kid = match string_member(jwk, "kid")? {
            Some(kid) => kid.to_owned(),
            None => point.thumbprint(),
        };
        Ok(ParsedEncryptionJwk::Encryption(Self { kid, point }))
    }

    fn from_point(point: Point) -> Self {
        Self {
            kid: point.thumbprint(),
            point,
        }
    }
}

impl fmt::Debug for EncryptionPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionPublicKey")
            .field("kid", &self.kid)
            .field("curve", &self.curve().name())
            .finish()
    }
}

/// The secret half of an encryption key.
enum Secret {
    /// x25519-dalek zeroizes the scalar on drop.
    X25519(x25519_dalek::StaticSecret),
    /// The elliptic-curve crate zeroizes the scalar on drop.
    P256(p256::SecretKey),
}

/// A private encryption key with its RFC 7638 thumbprint as `kid`.
///
/// The secret scalar is zeroized on drop. `Debug` prints the `kid` only.
///
/// ```
/// use trustwire::keys::EncryptionKey;
///
/// let key = EncryptionKey::generate()?;
/// assert_eq!(format!("{key:?}"), format!("EncryptionKey {{ kid: {:?} }}", key.kid()));
/// # Ok::<(), trustwire::KeyError>(())
/// ```
pub struct EncryptionKey {
    secret: Secret,
    public: EncryptionPublicKey,
}

impl EncryptionKey {
    /// Generates a new X25519 key from the operating system's random number
    /// generator.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut()).map_err(|err| KeyError::Random(err.to_string()))?;
        Self::from_x25519_bytes(&bytes)
    }

    /// Generates a new P-256 key, for interop with peers that lack X25519.
    pub fn generate_p256() -> Result<Self, KeyError> {
        let secret = random_p256_secret()?;
        Ok(Self::from_p256_secret(secret))
    }

    /// Builds an X25519 key from its 32 secret bytes (the JWK `d` member).
    /// X25519 clamps the bytes, so every value is a valid key.
    pub fn from_x25519_bytes(secret: &[u8; 32]) -> Result<Self, KeyError> {
        let secret = x25519_dalek::StaticSecret::from(*secret);
        let public = x25519_dalek::PublicKey::from(&secret);
        let point = Point::x25519(public.to_bytes())?;
        Ok(Self {
            secret: Secret::X25519(secret),
            public: EncryptionPublicKey::from_point(point),
        })
    }

    /// Builds a P-256 key from its 32-byte big-endian scalar (the JWK `d`
    /// member), which must be between 1 and the group order.
    pub fn from_p256_bytes(secret: &[u8; 32]) -> Result<Self, KeyError> {
        let secret = p256::SecretKey::from_bytes(secret.into())
            .map_err(|_| KeyError::InvalidJwk("P-256 \"d\" is zero or not below the group order".into()))?;
        Ok(Self::from_p256_secret(secret))
    }

    fn from_p256_secret(secret: p256::SecretKey) -> Self {
        let public = EncryptionPublicKey::from_point(Point::P256(secret.public_key()));
        Self {
            secret: Secret::P256(secret),
            public,
        }
    }

    /// The key id: the RFC 7638 thumbprint of the public key.
    pub fn kid(&self) -> &str {
        self.public.kid()
    }

    /// The public half.
    pub fn public_key(&self) -> &EncryptionPublicKey {
        &self.public
    }

    /// The curve.
    pub fn curve(&self) -> EncryptionCurve {
        self.public.curve()
    }

    /// Computes the ECDH shared secret `Z` with a peer's point.
    ///
    /// Returns `None` when the curves differ or the result is the all-zero
    /// X25519 output. A validated [`Point`] never gives the latter, so it is a
    /// second line of defence.
    pub(crate) fn agree(&self, peer: &Point) -> Option<Zeroizing<[u8; 32]>> {
        match (&self.secret, peer) {
            (Secret::X25519(secret), Point::X25519(peer)) => x25519_agree(secret, peer),
            (Secret::P256(secret), Point::P256(peer)) => Some(p256_agree(secret, peer)),
            _ => None,
        }
    }

    /// Serialises the private JWK (with `d`). The returned string contains
    /// the secret, so write it only to a file with mode 0600. It is zeroized
    /// on drop.
    pub fn to_private_jwk(&self) -> Zeroizing<String> {
        let d = match &self.secret {
            Secret::X25519(secret) => Zeroizing::new(b64_encode(secret.as_bytes())),
            Secret::P256(secret) => Zeroizing::new(b64_encode(&Zeroizing::new(secret.to_bytes()))),
        };
        let coordinates = match &self.public.point {
            Point::X25519(public) => format!(
                "  \"kty\": \"OKP\",\n  \"crv\": \"X25519\",\n  \"x\": \"{}\",\n",
                b64_encode(public.as_bytes())
            ),
            Point::P256(public) => {
                let (x, y) = p256_coordinates(public);
                format!("  \"kty\": \"EC\",\n  \"crv\": \"P-256\",\n  \"x\": \"{x}\",\n  \"y\": \"{y}\",\n")
            }
        };
        let text = format!(
            "{{\n{coordinates}  \"kid\": \"{}\",\n  \"use\": \"enc\",\n  \"alg\": \"{KEY_MANAGEMENT_ALG}\",\n  \"d\": \"{}\"\n}}\n",
            self.kid(),
            d.as_str()
        );
        Zeroizing::new(text)
    }

    /// Parses a private X25519 or P-256 JWK, checking that its public members
    /// belong to `d` and that `kid`, when present, is the key's thumbprint.
    pub fn from_private_jwk(text: &str) -> Result<Self, KeyError> {
        let mut jwk: Map<String, Value> =
            crate::encoding::parse_object(text.as_bytes()).map_err(|err| KeyError::InvalidJwk(err.to_string()))?;
        let result = Self::from_private_jwk_map(&jwk);

        // Zeroize the copy of `d` held in the parsed map.
        if let Some(Value::String(d)) = jwk.get_mut("d") {
            d.zeroize();
        }
        result
    }

    fn from_private_jwk_map(jwk: &Map<String, Value>) -> Result<Self, KeyError> {
        if let Some(key_use) = string_member(jwk, "use")?
            && key_use != "enc"
        {
            return Err(KeyError::InvalidJwk(format!(
                "an encryption key must have \"use\": \"enc\", not {key_use:?}"
            )));
        }
        let d = string_member(jwk, "d")?.ok_or(KeyError::InvalidJwk("private key without \"d\"".into()))?;
        let d = Zeroizing::new(b64_decode(d).map_err(|_| KeyError::InvalidJwk("\"d\" is not base64url".into()))?);
        let d: &[u8; 32] = d
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::InvalidJwk("\"d\" is not 32 bytes".into()))?;

        let key = match (string_member(jwk, "kty")?, string_member(jwk, "crv")?) {
            (Some("OKP"), Some("X25519")) => Self::from_x25519_bytes(d)?,
            (Some("EC"), Some("P-256")) => Self::from_p256_bytes(d)?,
            _ => {
                return Err(KeyError::InvalidJwk(
                    "an encryption key must be an X25519 (\"kty\": \"OKP\") or P-256 (\"kty\": \"EC\") JWK".into(),
                ));
            }
        };

        let declared = Point::from_jwk_members(jwk)?;
        if declared != key.public.point {
            return Err(KeyError::MismatchedPrivateKey);
        }
        if let Some(kid) = string_member(jwk, "kid")?
            && kid != key.kid()
        {
            return Err(KeyError::InvalidJwk(format!(
                "\"kid\" {kid:?} is not the key's RFC 7638 thumbprint {:?}",
                key.kid()
            )));
        }
        Ok(key)
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionKey").field("kid", &self.kid()).finish()
    }
}

/// A one-time key pair for one recipient of one message (the JWE `epk`).
pub(crate) struct EphemeralAgreement {
    /// The ephemeral public key, sent as `epk`.
    pub(crate) epk: Point,
    /// The shared secret `Z` with the recipient.
    pub(crate) shared_secret: Zeroizing<[u8; 32]>,
}

impl EncryptionPublicKey {
    /// Generates an ephemeral key on this key's curve and agrees on `Z` with it.
    pub(crate) fn agree_ephemeral(&self) -> Result<EphemeralAgreement, KeyError> {
        match &self.point {
            Point::X25519(recipient) => {
                let mut bytes = Zeroizing::new([0u8; 32]);
                getrandom::fill(bytes.as_mut()).map_err(|err| KeyError::Random(err.to_string()))?;
                let secret = x25519_dalek::StaticSecret::from(*bytes);
                let epk = Point::X25519(x25519_dalek::PublicKey::from(&secret));
                // The recipient key was validated when it was loaded, so the
                // result is never all zeros; checked anyway.
                let shared_secret = x25519_agree(&secret, recipient).ok_or(KeyError::InvalidJwk(
                    "X25519 key agreement gave the all-zero secret".into(),
                ))?;
                Ok(EphemeralAgreement { epk, shared_secret })
            }
            Point::P256(recipient) => {
                let secret = random_p256_secret()?;
                let epk = Point::P256(secret.public_key());
                let shared_secret = p256_agree(&secret, recipient);
                Ok(EphemeralAgreement { epk, shared_secret })
            }
        }
    }
}

fn x25519_agree(secret: &x25519_dalek::StaticSecret, peer: &x25519_dalek::PublicKey) -> Option<Zeroizing<[u8; 32]>> {
    let shared = secret.diffie_hellman(peer);
    if !shared.was_contributory() {
        return None;
    }
    Some(Zeroizing::new(shared.to_bytes()))
}

fn p256_agree(secret: &p256::SecretKey, peer: &p256::PublicKey) -> Zeroizing<[u8; 32]> {
    let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), peer.as_affine());
    let mut bytes = Zeroizing::new([0u8; 32]);
    bytes.copy_from_slice(shared.raw_secret_bytes());
    bytes
}

/// Draws a P-256 scalar. A random 32-byte string is zero or above the group
/// order with probability below 2^-32, so the loop almost never repeats.
fn random_p256_secret() -> Result<p256::SecretKey, KeyError> {
    for _ in 0..16 {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut()).map_err(|err| KeyError::Random(err.to_string()))?;
        if let Ok(secret) = p256::SecretKey::from_bytes((&*bytes).into()) {
            return Ok(secret);
        }
    }
    Err(KeyError::Random(
        "16 random P-256 scalars in a row were out of range".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk_map(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn private_jwk_round_trip_x25519() {
        let key = EncryptionKey::generate().unwrap();
        let loaded = EncryptionKey::from_private_jwk(&key.to_private_jwk()).unwrap();
        assert_eq!(loaded.kid(), key.kid());
        assert_eq!(loaded.curve(), EncryptionCurve::X25519);
    }

    #[test]
    fn private_jwk_round_trip_p256() {
        let key = EncryptionKey::generate_p256().unwrap();
        let loaded = EncryptionKey::from_private_jwk(&key.to_private_jwk()).unwrap();
        assert_eq!(loaded.kid(), key.kid());
        assert_eq!(loaded.curve(), EncryptionCurve::P256);
    }

    #[test]
    fn mismatched_public_member_rejected() {
        let key = EncryptionKey::generate().unwrap();
        let other = EncryptionKey::generate().unwrap();
        let mut jwk: Map<String, Value> = serde_json::from_str(&key.to_private_jwk()).unwrap();
        let other_jwk = jwk_map(other.public_key().to_jwk());
        jwk.insert("x".into(), other_jwk["x"].clone());
        jwk.remove("kid");
        let text = serde_json::to_string(&jwk).unwrap();
        assert!(matches!(
            EncryptionKey::from_private_jwk(&text),
            Err(KeyError::MismatchedPrivateKey)
        ));
    }

    #[test]
    fn signing_jwk_is_not_an_encryption_key() {
        let signing = crate::keys::SigningKey::generate().unwrap();
        let err = EncryptionKey::from_private_jwk(&signing.to_private_jwk()).unwrap_err();
        assert!(matches!(err, KeyError::InvalidJwk(_)), "{err:?}");
    }

    #[test]
    fn debug_shows_kid_only() {
        for key in [
            EncryptionKey::generate().unwrap(),
            EncryptionKey::generate_p256().unwrap(),
        ] {
            let shown = format!("{key:?}");
            let jwk: Map<String, Value> = serde_json::from_str(&key.to_private_jwk()).unwrap();
            let d = jwk["d"].as_str().unwrap();
            assert!(!shown.contains(d));
            assert_eq!(shown, format!("EncryptionKey {{ kid: {:?} }}", key.kid()));
        }
    }

    #[test]
    fn public_jwk_parses_back() {
        for key in [
            EncryptionKey::generate().unwrap(),
            EncryptionKey::generate_p256().unwrap(),
        ] {
            let jwk = jwk_map(key.public_key().to_jwk());
            assert_eq!(jwk["use"], "enc");
            assert_eq!(jwk["alg"], KEY_MANAGEMENT_ALG);
            let ParsedEncryptionJwk::Encryption(parsed) = EncryptionPublicKey::from_jwk(&jwk).unwrap() else {
                panic!("not parsed as an encryption key");
            };
            assert_eq!(parsed.kid(), key.kid());
        }
    }

    /// The small-order points of Curve25519 and its twist, as listed in
    /// libsodium's `has_small_order`, plus their encodings with bit 255 set.
    #[test]
    fn small_order_x25519_points_rejected() {
        let order_8_a = "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800";
        let order_8_b = "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157";
        for hex in [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000000",
            order_8_a,
            order_8_b,
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ] {
            let bytes: [u8; 32] = hex_bytes(hex).try_into().unwrap();
            let err = Point::x25519(bytes).unwrap_err();
            assert!(
                matches!(&err, KeyError::InvalidJwk(reason) if reason.contains("small-order")),
                "{hex}: {err:?}"
            );
        }
    }

    #[test]
    fn non_canonical_x25519_rejected() {
        for hex in [
            // p, p + 1 and a value with bit 255 set.
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "0900000000000000000000000000000000000000000000000000000000000080",
        ] {
            let bytes: [u8; 32] = hex_bytes(hex).try_into().unwrap();
            let err = Point::x25519(bytes).unwrap_err();
            assert!(
                matches!(&err, KeyError::InvalidJwk(reason) if reason.contains("canonical")),
                "{hex}: {err:?}"
            );
        }
    }

    #[test]
    fn base_point_accepted() {
        let mut base = [0u8; 32];
        base[0] = 9;
        assert!(Point::x25519(base).is_ok());
    }

    #[test]
    fn off_curve_p256_rejected() {
        let key = EncryptionKey::generate_p256().unwrap();
        let mut jwk = jwk_map(key.public_key().to_jwk());
        let mut y = b64_decode(jwk["y"].as_str().unwrap()).unwrap();
        y[31] ^= 1;
        jwk.insert("y".into(), b64_encode(&y).into());
        let err = EncryptionPublicKey::from_jwk(&jwk).unwrap_err();
        assert!(
            matches!(&err, KeyError::InvalidJwk(reason) if reason.contains("not a point on the curve")),
            "{err:?}"
        );
    }

    #[test]
    fn agreement_is_symmetric() {
        for key in [
            EncryptionKey::generate().unwrap(),
            EncryptionKey::generate_p256().unwrap(),
        ] {
            let agreement = key.public_key().agree_ephemeral().unwrap();
            let z = key.agree(&agreement.epk).unwrap();
            assert_eq!(*z, *agreement.shared_secret);
        }
    }

    #[test]
    fn agreement_across_curves_fails() {
        let x25519 = EncryptionKey::generate().unwrap();
        let p256 = EncryptionKey::generate_p256().unwrap();
        let agreement = p256.public_key().agree_ephemeral().unwrap();
        assert!(x25519.agree(&agreement.epk).is_none());
    }

    fn hex_bytes(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }
}
