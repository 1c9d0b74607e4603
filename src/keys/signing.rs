//! Ed25519 signing keys.

use std::fmt;

use serde_json::{Map, Value};
use zeroize::{Zeroize, Zeroizing};

use super::public::string_member;
use super::thumbprint::okp_thumbprint;
use super::{KeyError, PublicKey};
use crate::encoding::{b64_decode, b64_encode};

/// An Ed25519 private key with its RFC 7638 thumbprint as `kid`.
///
/// The secret scalar lives in `ed25519_dalek::SigningKey`, which zeroizes its
/// memory on drop. With the `aws-lc-rs` feature (on by default) a copy also
/// lives in an aws-lc-rs key pair, which signs; AWS-LC clears that memory
/// when the key pair is freed. `Debug` prints the `kid` only.
///
/// ```
/// use trustwire::SigningKey;
///
/// let key = SigningKey::generate()?;
/// assert_eq!(format!("{key:?}"), format!("SigningKey {{ kid: {:?} }}", key.kid()));
/// # Ok::<(), trustwire::KeyError>(())
/// ```
pub struct SigningKey {
    kid: String,
    inner: ed25519_dalek::SigningKey,
    /// The same key in aws-lc-rs, which signs about twice as fast as
    /// ed25519-dalek on x86_64 (measured in docs/benchmarks.md). Ed25519
    /// signatures are deterministic (RFC 8032), so both sign the same bytes.
    #[cfg(feature = "aws-lc-rs")]
    fast: aws_lc_rs::signature::Ed25519KeyPair,
    public: PublicKey,
}

impl SigningKey {
    /// Generates a new key from the operating system's random number generator.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|err| KeyError::Random(err.to_string()))?;
        Self::from_seed(&seed)
    }

    /// Builds a key from its 32-byte seed (the JWK `d` member).
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, KeyError> {
        let inner = ed25519_dalek::SigningKey::from_bytes(seed);
        let public = PublicKey::ed25519(inner.verifying_key())?;
        #[cfg(feature = "aws-lc-rs")]
        let fast =
            aws_lc_rs::signature::Ed25519KeyPair::from_seed_and_public_key(seed, inner.verifying_key().as_bytes())
                .map_err(|err| KeyError::InvalidJwk(format!("aws-lc-rs rejected the Ed25519 key: {err}")))?;
        Ok(Self {
            kid: public.kid().to_owned(),
            inner,
            #[cfg(feature = "aws-lc-rs")]
            fast,
            public,
        })
    }

    /// The key id: the RFC 7638 thumbprint of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    #[cfg(test)]
    pub(crate) fn inner_verifying_key_bytes(&self) -> [u8; 32] {
        self.inner.verifying_key().to_bytes()
    }

    #[cfg(not(feature = "aws-lc-rs"))]
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        ed25519_dalek::Signer::sign(&self.inner, message).to_bytes()
    }

    #[cfg(feature = "aws-lc-rs")]
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut signature = [0u8; 64];
        signature.copy_from_slice(self.fast.sign(message).as_ref());
        signature
    }

    /// Serialises the private JWK (with `d`). The returned string holds the
    /// secret: write it only to a file with mode 0600; it is zeroized on drop.
    pub fn to_private_jwk(&self) -> Zeroizing<String> {
        let x = b64_encode(self.inner.verifying_key().as_bytes());
        let d = Zeroizing::new(b64_encode(self.inner.as_bytes()));
        let text = format!(
            "{{\n  \"kty\": \"OKP\",\n  \"crv\": \"Ed25519\",\n  \"kid\": \"{}\",\n  \"use\": \"sig\",\n  \"alg\": \"EdDSA\",\n  \"x\": \"{}\",\n  \"d\": \"{}\"\n}}\n",
            self.kid,
            x,
            d.as_str()
        );
        Zeroizing::new(text)
    }

    /// Parses a private Ed25519 JWK, checking that `x` is the public key of
    /// `d` and that `kid`, when present, is the key's thumbprint.
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
        if string_member(jwk, "kty")? != Some("OKP") || string_member(jwk, "crv")? != Some("Ed25519") {
            return Err(KeyError::InvalidJwk(
                "a signing key must be an Ed25519 JWK (\"kty\": \"OKP\", \"crv\": \"Ed25519\")".into(),
            ));
        }
        let d = string_member(jwk, "d")?.ok_or(KeyError::InvalidJwk("private key without \"d\"".into()))?;
        let x = string_member(jwk, "x")?.ok_or(KeyError::InvalidJwk("private key without \"x\"".into()))?;

        let seed = Zeroizing::new(b64_decode(d).map_err(|_| KeyError::InvalidJwk("\"d\" is not base64url".into()))?);
        let seed: &[u8; 32] = seed
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::InvalidJwk("\"d\" is not 32 bytes".into()))?;
        let key = Self::from_seed(seed)?;

        if b64_encode(key.inner.verifying_key().as_bytes()) != x {
            return Err(KeyError::MismatchedPrivateKey);
        }
        if let Some(kid) = string_member(jwk, "kid")? {
            let thumbprint = okp_thumbprint("Ed25519", x);
            if kid != thumbprint {
                return Err(KeyError::InvalidJwk(format!(
                    "\"kid\" {kid:?} is not the key's RFC 7638 thumbprint {thumbprint:?}"
                )));
            }
        }
        Ok(key)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_jwk_round_trip() {
        let key = SigningKey::generate().unwrap();
        let text = key.to_private_jwk();
        let loaded = SigningKey::from_private_jwk(&text).unwrap();
        assert_eq!(loaded.kid(), key.kid());
        assert_eq!(loaded.sign(b"m"), key.sign(b"m"));
    }

    #[test]
    fn mismatched_x_rejected() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let other_x = b64_encode(other.inner.verifying_key().as_bytes());
        let mut jwk: Map<String, Value> = serde_json::from_str(&key.to_private_jwk()).unwrap();
        jwk.insert("x".into(), other_x.into());
        jwk.remove("kid");
        let text = serde_json::to_string(&jwk).unwrap();
        assert!(matches!(
            SigningKey::from_private_jwk(&text),
            Err(KeyError::MismatchedPrivateKey)
        ));
    }

    /// RFC 8032 section 7.1, test 1: the empty message.
    #[test]
    fn rfc8032_test_1_signature() {
        let seed: [u8; 32] = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let expected: [u8; 64] = hex(
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        );
        let key = SigningKey::from_seed(&seed).unwrap();
        assert_eq!(key.sign(b""), expected);
        assert_eq!(ed25519_dalek::Signer::sign(&key.inner, b"").to_bytes(), expected);
    }

    #[test]
    fn backends_sign_same_bytes() {
        let key = SigningKey::generate().unwrap();
        for length in [0, 1, 64, 1000, 70_000] {
            let message = vec![0x5a; length];
            let dalek = ed25519_dalek::Signer::sign(&key.inner, &message).to_bytes();
            assert_eq!(key.sign(&message), dalek, "length {length}");
        }
    }

    fn hex<const N: usize>(text: &str) -> [u8; N] {
        let bytes: Vec<u8> = (0..text.len())
            .step_by(2)
            .map(|index| u8::from_str_radix(&text[index..index + 2], 16).unwrap())
            .collect();
        bytes.try_into().unwrap()
    }

    #[test]
    fn debug_shows_kid_only() {
        let key = SigningKey::generate().unwrap();
        let shown = format!("{key:?}");
        let d = b64_encode(key.inner.as_bytes());
        assert!(!shown.contains(&d));
        assert!(shown.contains(key.kid()));
    }
}
