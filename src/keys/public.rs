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
    Ed25519(ed25519_dalek::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
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
        if key.is_weak() {
            return Err(KeyError::WeakKey);
        }
        let x = crate::encoding::b64_encode(key.as_bytes());
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
                let Ok(bytes) = <[u8; 64]>::try_from(signature) else {
                    return false;
                };
                let signature = ed25519_dalek::Signature::from_bytes(&bytes);
                // verify_strict rejects non-canonical and malleable encodings
                // and small-order components that plain verify accepts.
                key.verify_strict(signing_input, &signature).is_ok()
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

    /// The Ed25519 verifying key, or `None` for a P-256 key.
    #[allow(dead_code)]
    pub(crate) fn ed25519_key(&self) -> Option<&ed25519_dalek::VerifyingKey> {
        match &self.material {
            Material::Ed25519(key) => Some(key),
            Material::P256(_) => None,
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
                jwk.insert("x".into(), crate::encoding::b64_encode(key.as_bytes()).into());
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
                if key.is_weak() {
                    return Err(KeyError::WeakKey);
                }
                (Material::Ed25519(key), okp_thumbprint("Ed25519", x))
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
