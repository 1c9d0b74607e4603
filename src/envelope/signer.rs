//! Signing tokens.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use serde::Serialize;

use super::TOKEN_TYP;
use super::binding::{Binding, payload_digest};
use super::claims::MAX_JTI_LEN;
use crate::clock::{Clock, SystemClock};
use crate::encoding::{b64_encode, b64_encode_into};
use crate::identity::{Audience, ServiceId};
use crate::keys::{Algorithm, SigningKey};

/// Default token lifetime: 60 s, for HTTP calls and core NATS messages.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

/// Errors from signing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The lifetime is zero or longer than the signer's configured maximum.
    #[error("invalid token lifetime of {seconds} s: it must be between 1 s and {max} s")]
    InvalidLifetime {
        /// The lifetime requested.
        seconds: u64,
        /// The maximum allowed.
        max: u64,
    },

    /// The `sub` value is empty or too long.
    #[error("invalid subject: {0}")]
    InvalidSubject(&'static str),

    /// The operating system's random number generator failed.
    #[error("random number generator failed: {0}")]
    Random(String),

    /// The claims could not be serialised.
    #[error("cannot encode the claims: {0}")]
    Encoding(String),

    /// The `jti` given to [`TokenBuilder::jti`] is empty or too long.
    #[error("invalid jti: it must be 1 to 256 bytes")]
    InvalidJti,
}

/// Signs tokens for one service with its active key.
///
/// ```
/// use trustwire::{Binding, ServiceId, Signer, SigningKey};
///
/// let signer = Signer::new(ServiceId::new("orders")?, SigningKey::generate()?);
/// let token = signer
///     .token(ServiceId::new("payments")?)
///     .binding(Binding::channel("nats:orders.created")?)
///     .payload(br#"{"order":42}"#)
///     .sign()?;
/// assert_eq!(token.split('.').count(), 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Signer {
    inner: Arc<SignerInner>,
}

#[derive(Debug)]
struct SignerInner {
    service: ServiceId,
    key: SigningKey,
    /// base64url of the protected header, computed once.
    header_b64: String,
    alg: Algorithm,
    /// The key set by [`Signer::replace_key`], which signs instead of `key`.
    replacement: RwLock<Option<Arc<Replacement>>>,
    /// Whether `replacement` is set, read first so that a signer whose key
    /// was never replaced takes no lock.
    replaced: AtomicBool,
    ttl: Duration,
    max_ttl: Duration,
    clock: Arc<dyn Clock>,
}

/// A key that replaced the signer's first key.
#[derive(Debug)]
struct Replacement {
    key: SigningKey,
    kid: &'static str,
    header_b64: String,
}

impl SignerInner {
    fn replacement(&self) -> Option<Arc<Replacement>> {
        if !self.replaced.load(Ordering::Acquire) {
            return None;
        }
        self.replacement.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

fn header_b64(alg: Algorithm, kid: &str) -> String {
    let header = format!(r#"{{"alg":"{}","kid":"{}","typ":"{}"}}"#, alg.name(), kid, TOKEN_TYP);
    b64_encode(header.as_bytes())
}

/// Returns `kid` with a `'static` lifetime, so that [`Signer::kid`] keeps
/// returning `&str` although the key can be replaced.
///
/// NOTE: each distinct kid is leaked once, about 43 bytes for a thumbprint,
/// so the memory grows with the number of keys a process switches to over
/// its life, not with the number of tokens or switches.
fn intern_kid(kid: &str) -> &'static str {
    static KIDS: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut kids = KIDS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(interned) = kids.get(kid) {
        return interned;
    }
    let interned: &'static str = Box::leak(kid.to_owned().into_boxed_str());
    kids.insert(interned);
    interned
}

/// Options of a [`Signer`].
#[derive(Debug)]
pub struct SignerBuilder {
    service: ServiceId,
    key: SigningKey,
    alg: Algorithm,
    ttl: Duration,
    max_ttl: Duration,
    clock: Arc<dyn Clock>,
}

impl SignerBuilder {
    /// Sets the default token lifetime. Default 60 s.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the longest lifetime a single token may request with
    /// [`TokenBuilder::ttl`]. Default 1 hour.
    pub fn max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl = max_ttl;
        self
    }

    /// Emits `alg: Ed25519` (RFC 9864) instead of `alg: EdDSA`. Verifiers
    /// older than RFC 9864 know only `EdDSA`, so that is the default.
    pub fn fully_specified_alg(mut self) -> Self {
        self.alg = Algorithm::Ed25519;
        self
    }

    /// Sets the clock. Default: the system clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Builds the signer.
    pub fn build(self) -> Result<Signer, SignError> {
        check_ttl(self.ttl, self.max_ttl)?;
        tracing::info!(iss = %self.service, kid = self.key.kid(), alg = self.alg.name(), "signer ready");
        Ok(Signer {
            inner: Arc::new(SignerInner {
                service: self.service,
                header_b64: header_b64(self.alg, self.key.kid()),
                key: self.key,
                alg: self.alg,
                replacement: RwLock::new(None),
                replaced: AtomicBool::new(false),
                ttl: self.ttl,
                max_ttl: self.max_ttl,
                clock: self.clock,
            }),
        })
    }
}

fn check_ttl(ttl: Duration, max: Duration) -> Result<(), SignError> {
    if ttl.as_secs() == 0 || ttl > max {
        return Err(SignError::InvalidLifetime {
            seconds: ttl.as_secs(),
            max: max.as_secs(),
        });
    }
    Ok(())
}

impl Signer {
    /// A signer with the default options (60 s lifetime, `alg: EdDSA`).
    pub fn new(service: ServiceId, key: SigningKey) -> Self {
        Self::builder(service, key)
            .build()
            .unwrap_or_else(|_| unreachable!("the default lifetime is within the default maximum"))
    }

    /// Starts configuring a signer.
    pub fn builder(service: ServiceId, key: SigningKey) -> SignerBuilder {
        SignerBuilder {
            service,
            key,
            alg: Algorithm::EdDsa,
            ttl: DEFAULT_TTL,
            max_ttl: Duration::from_secs(3600),
            clock: Arc::new(SystemClock),
        }
    }

    /// The signing service.
    pub fn service(&self) -> &ServiceId {
        &self.inner.service
    }

    /// The `kid` of the signing key.
    pub fn kid(&self) -> &str {
        match self.inner.replacement() {
            Some(replacement) => replacement.kid,
            None => self.inner.key.kid(),
        }
    }

    /// Signs every later token, in this signer and all its clones, with
    /// `key` instead of the current key: how a running service follows a key
    /// rotation. Tokens being signed during the call use either key.
    ///
    /// [`crate::keys::KeyDirWatcher`] calls it when the active key of a key
    /// directory changes.
    pub fn replace_key(&self, key: SigningKey) {
        let old_kid = self.kid();
        if key.kid() == old_kid {
            return;
        }
        let replacement = Replacement {
            kid: intern_kid(key.kid()),
            header_b64: header_b64(self.inner.alg, key.kid()),
            key,
        };
        let new_kid = replacement.kid;

        *self.inner.replacement.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(replacement));
        self.inner.replaced.store(true, Ordering::Release);
        metrics::counter!("trustwire_signer_key_replacements_total").increment(1);
        tracing::info!(iss = %self.inner.service, old_kid, kid = new_kid, "signer switched to a new key");
    }

    /// Starts a token for `audience`.
    pub fn token(&self, audience: impl Into<Audience>) -> TokenBuilder<'_> {
        TokenBuilder {
            signer: self,
            audience: audience.into(),
            binding: None,
            payload: None,
            subject: None,
            ttl: None,
            jti: None,
        }
    }
}

/// Draws a fresh `jti`: 128 random bits, base64url (22 characters).
pub(crate) fn random_jti() -> Result<String, SignError> {
    let mut jti = [0u8; 16];
    getrandom::fill(&mut jti).map_err(|err| SignError::Random(err.to_string()))?;
    Ok(b64_encode(&jti))
}

/// One token being built; finish with [`TokenBuilder::sign`].
#[derive(Debug)]
#[must_use = "a token is only produced by sign()"]
pub struct TokenBuilder<'a> {
    signer: &'a Signer,
    audience: Audience,
    binding: Option<Binding>,
    payload: Option<&'a [u8]>,
    subject: Option<&'a str>,
    ttl: Option<Duration>,
    jti: Option<&'a str>,
}

#[derive(Serialize)]
struct ClaimsOut<'a> {
    iss: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    aud: serde_json::Value,
    iat: i64,
    exp: i64,
    jti: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    chn: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    htm: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    htu: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dig: Option<String>,
}

impl<'a> TokenBuilder<'a> {
    /// Binds the token to a channel or HTTP request.
    pub fn binding(mut self, binding: Binding) -> Self {
        self.binding = Some(binding);
        self
    }

    /// Binds the token to these exact payload bytes (the `dig` claim).
    pub fn payload(mut self, payload: &'a [u8]) -> Self {
        self.payload = Some(payload);
        self
    }

    /// Sets `sub`, the principal the sender acts for.
    pub fn subject(mut self, subject: &'a str) -> Self {
        self.subject = Some(subject);
        self
    }

    /// Overrides the signer's default lifetime for this token.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets the `jti` instead of drawing a fresh random one, for a caller
    /// that must know it before signing (sealing writes it into the JWE
    /// header that `dig` covers). The caller keeps it unique: verifiers
    /// reject a repeated `jti` as `replayed`. Use 128 random bits, as the
    /// default does. It must be 1 to 256 bytes.
    pub fn jti(mut self, jti: &'a str) -> Self {
        self.jti = Some(jti);
        self
    }

    /// Signs and returns the compact JWS.
    pub fn sign(self) -> Result<String, SignError> {
        let inner = &self.signer.inner;
        let replacement = inner.replacement();
        let (key, header_b64) = match &replacement {
            Some(replacement) => (&replacement.key, &replacement.header_b64),
            None => (&inner.key, &inner.header_b64),
        };
        let ttl = self.ttl.unwrap_or(inner.ttl);
        check_ttl(ttl, inner.max_ttl)?;
        if let Some(subject) = self.subject
            && (subject.is_empty() || subject.len() > 1024)
        {
            return Err(SignError::InvalidSubject("it must be 1 to 1024 bytes"));
        }

        let jti = match self.jti {
            Some(jti) if jti.is_empty() || jti.len() > MAX_JTI_LEN => return Err(SignError::InvalidJti),
            Some(jti) => jti.to_owned(),
            None => random_jti()?,
        };

        let iat = inner.clock.now();
        let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let (chn, htm, htu) = match &self.binding {
            None => (None, None, None),
            Some(Binding::Channel(channel)) => (Some(channel.as_str()), None, None),
            Some(Binding::Http { method, target }) => (None, Some(method.as_str()), Some(target.as_str())),
        };
        let claims = ClaimsOut {
            iss: inner.service.as_str(),
            sub: self.subject,
            aud: self.audience.to_json(),
            iat,
            exp: iat.saturating_add(ttl_secs),
            jti: &jti,
            chn,
            htm,
            htu,
            dig: self.payload.map(payload_digest),
        };
        // Claims of a message token are about 250 bytes; the capacity saves
        // the vector from growing while serde_json writes.
        let mut claims_json = Vec::with_capacity(384);
        serde_json::to_writer(&mut claims_json, &claims).map_err(|err| SignError::Encoding(err.to_string()))?;

        // 86 characters of base64url signature and two dots.
        let mut token = String::with_capacity(header_b64.len() + claims_json.len().div_ceil(3) * 4 + 88);
        token.push_str(header_b64);
        token.push('.');
        b64_encode_into(&claims_json, &mut token);
        let signature = key.sign(token.as_bytes());
        token.push('.');
        b64_encode_into(&signature, &mut token);

        metrics::counter!("trustwire_signed_total").increment(1);
        tracing::trace!(iss = %inner.service, kid = key.kid(), jti = %jti, "signed token");
        Ok(token)
    }
}
