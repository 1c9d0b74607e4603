//! Opening sealed messages: verify the token, decrypt, check the header binding.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use super::jwe;
use crate::envelope::{Expected, Reason, Rejection, Verified, Verifier};
use crate::keys::EncryptionKey;

/// Default maximum size of a sealed message's JWE: 16 MiB, the same as the
/// verifier's default payload limit. The compact serialization grows the
/// plaintext by a third (base64url), so this admits about 12 MiB of payload.
pub const DEFAULT_MAX_SEALED_BYTES: usize = 16 * 1024 * 1024;

/// Errors in an opener's configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenerConfigError {
    /// No encryption key was given, so nothing could ever be opened.
    #[error("no encryption keys: pass this service's keys, such as KeyDir::encryption_keys")]
    NoKeys,

    /// Two keys share a `kid`.
    #[error("two encryption keys have the kid {0:?}")]
    DuplicateKid(String),

    /// The size limit is zero.
    #[error("max_sealed_bytes must be greater than zero")]
    ZeroLimit,
}

/// Options of an [`Opener`].
#[derive(Debug)]
pub struct OpenerBuilder {
    verifier: Verifier,
    keys: Vec<EncryptionKey>,
    max_sealed_bytes: usize,
}

impl OpenerBuilder {
    /// Sets the maximum JWE size in bytes, checked before the token is
    /// verified. Default 16 MiB. The verifier's payload limit applies too.
    pub fn max_sealed_bytes(mut self, bytes: usize) -> Self {
        self.max_sealed_bytes = bytes;
        self
    }

    /// Checks the options and builds the opener.
    pub fn build(self) -> Result<Opener, OpenerConfigError> {
        if self.keys.is_empty() {
            return Err(OpenerConfigError::NoKeys);
        }
        if self.max_sealed_bytes == 0 {
            return Err(OpenerConfigError::ZeroLimit);
        }
        let mut kids = HashSet::new();
        for key in &self.keys {
            if !kids.insert(key.kid()) {
                return Err(OpenerConfigError::DuplicateKid(key.kid().to_owned()));
            }
        }

        let kids: Vec<&str> = self.keys.iter().map(EncryptionKey::kid).collect();
        tracing::info!(aud = %self.verifier.audience(), enc_kids = ?kids, "opener ready");
        Ok(Opener {
            inner: Arc::new(OpenerInner {
                verifier: self.verifier,
                keys: self.keys,
                max_sealed_bytes: self.max_sealed_bytes,
                warn_limiter: WarnLimiter::default(),
            }),
        })
    }
}

/// A sealed message that was verified and decrypted.
#[derive(Clone)]
#[non_exhaustive]
pub struct Opened {
    /// The verified token.
    pub verified: Verified,
    /// The decrypted payload.
    pub plaintext: Vec<u8>,
    /// The `kid` of the local encryption key that decrypted it.
    pub enc_kid: String,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("verified", &self.verified)
            .field("plaintext_bytes", &self.plaintext.len())
            .field("enc_kid", &self.enc_kid)
            .finish()
    }
}

/// Opens sealed messages sent to one service. Cloning is cheap.
///
/// The verifier checks the token exactly as for a signed message, with the
/// JWE bytes as the payload. Then the JWE is decrypted with the key it names
/// by `kid`, and its protected header's `iss` and `jti` must equal the
/// token's.
#[derive(Clone)]
pub struct Opener {
    inner: Arc<OpenerInner>,
}

struct OpenerInner {
    verifier: Verifier,
    keys: Vec<EncryptionKey>,
    max_sealed_bytes: usize,
    warn_limiter: WarnLimiter,
}

impl Opener {
    /// An opener with the default options.
    pub fn new(verifier: Verifier, keys: Vec<EncryptionKey>) -> Result<Self, OpenerConfigError> {
        Self::builder(verifier, keys).build()
    }

    /// Starts configuring an opener that verifies tokens with `verifier` and
    /// decrypts with `keys` (this service's encryption keys, any state).
    pub fn builder(verifier: Verifier, keys: Vec<EncryptionKey>) -> OpenerBuilder {
        OpenerBuilder {
            verifier,
            keys,
            max_sealed_bytes: DEFAULT_MAX_SEALED_BYTES,
        }
    }

    /// The verifier.
    pub fn verifier(&self) -> &Verifier {
        &self.inner.verifier
    }

    /// Opens a sealed message. `expected` contains the channel or request it
    /// arrived on and, as its payload, the JWE bytes.
    ///
    /// Verification comes first (size, token, binding, `dig` over the JWE,
    /// policy, replay), then decryption, then the header binding. Rejections
    /// after verification are logged and counted here; the verifier logs
    /// its own. [`open_batch`](Self::open_batch) opens several messages at
    /// once with the same results.
    pub async fn open(&self, token: &str, expected: &Expected<'_>) -> Result<Opened, Rejection> {
        let jwe = self.sealed_payload(expected)?;
        let verified = self.inner.verifier.verify(token, expected).await?;
        self.open_verified(verified, jwe)
    }

    /// Checks that the JWE arrived and is within `max_sealed_bytes`, which
    /// comes before the token is verified, and returns it.
    pub(super) fn sealed_payload<'a>(&self, expected: &Expected<'a>) -> Result<&'a [u8], Rejection> {
        let Some(jwe) = expected.payload() else {
            return Err(self.reject(Rejection::new(
                Reason::Malformed,
                "a sealed message needs its JWE as the payload",
            )));
        };
        if jwe.len() > self.inner.max_sealed_bytes {
            return Err(self.reject(Rejection::new(
                Reason::TooLarge,
                format!(
                    "sealed message is {} bytes, above the limit of {}",
                    jwe.len(),
                    self.inner.max_sealed_bytes
                ),
            )));
        }
        Ok(jwe)
    }

    /// Finishes opening `jwe` once its token verified: requires `dig`,
    /// decrypts, checks the header binding, then logs and counts the outcome.
    pub(super) fn open_verified(&self, verified: Verified, jwe: &[u8]) -> Result<Opened, Rejection> {
        let ids = |rejection: Rejection| {
            rejection.with_ids(
                Some(&verified.kid),
                Some(&verified.claims.iss),
                Some(&verified.claims.jti),
            )
        };

        // A verifier may accept a token without dig from some issuers; a
        // sealed message must be bound to its ciphertext all the same.
        if verified.claims.dig.is_none() {
            return Err(self.reject(ids(Rejection::new(
                Reason::DigestMismatch,
                "the token of a sealed message has no dig claim over the JWE",
            ))));
        }

        let decrypted = jwe::decrypt(jwe, &self.inner.keys).map_err(|rejection| self.reject(ids(rejection)))?;
        check_header_binding(&decrypted.protected, &verified).map_err(|rejection| self.reject(ids(rejection)))?;

        metrics::counter!("trustwire_opened_total", "iss" => verified.claims.iss.clone()).increment(1);
        tracing::debug!(
            iss = %verified.claims.iss,
            jti = %verified.claims.jti,
            enc_kid = %decrypted.kid,
            plaintext_bytes = decrypted.plaintext.len(),
            "sealed message opened"
        );
        Ok(Opened {
            verified,
            plaintext: decrypted.plaintext,
            enc_kid: decrypted.kid,
        })
    }

    /// Logs and counts a rejection made here, then returns it.
    fn reject(&self, rejection: Rejection) -> Rejection {
        metrics::counter!("trustwire_rejected_total", "reason" => rejection.code()).increment(1);
        let (code, kid, iss, jti) = (
            rejection.code(),
            rejection.kid().unwrap_or(""),
            rejection.iss().unwrap_or(""),
            rejection.jti().unwrap_or(""),
        );
        if self.inner.warn_limiter.allow() {
            tracing::warn!(
                reason = code,
                kid,
                iss,
                jti,
                detail = rejection.detail(),
                "sealed message rejected"
            );
        } else {
            tracing::debug!(
                reason = code,
                kid,
                iss,
                jti,
                detail = rejection.detail(),
                "sealed message rejected"
            );
        }
        rejection
    }
}

/// The JWE protected header's `iss` and `jti` must equal the verified
/// token's: the header is authenticated by AES-GCM, so a service that
/// re-signs another's ciphertext cannot make them match its own token.
fn check_header_binding(protected: &serde_json::Map<String, Value>, verified: &Verified) -> Result<(), Rejection> {
    for (name, expected) in [("iss", &verified.claims.iss), ("jti", &verified.claims.jti)] {
        match protected.get(name) {
            Some(Value::String(value)) if value == expected => {}
            Some(Value::String(value)) => {
                let shown: String = value.chars().take(128).collect();
                return Err(Rejection::new(
                    Reason::SealMismatch,
                    format!("JWE header {name} {shown:?} is not the token's {expected:?}"),
                ));
            }
            Some(_) => {
                return Err(Rejection::new(
                    Reason::SealMismatch,
                    format!("JWE header {name} is not a string"),
                ));
            }
            None => {
                return Err(Rejection::new(
                    Reason::SealMismatch,
                    format!("JWE protected header has no {name}"),
                ));
            }
        }
    }
    Ok(())
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("verifier", &self.inner.verifier)
            .field("keys", &self.inner.keys)
            .field("max_sealed_bytes", &self.inner.max_sealed_bytes)
            .finish()
    }
}

/// Allows at most 10 rejection warnings per second; the rest go to debug.
#[derive(Default)]
struct WarnLimiter {
    second: AtomicU64,
    count: AtomicU64,
}

impl WarnLimiter {
    const PER_SECOND: u64 = 10;

    fn allow(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < Self::PER_SECOND
    }
}
