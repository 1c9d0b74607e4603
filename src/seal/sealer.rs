//! Sealing: encrypting a payload to its recipient services and signing a
//! token over the ciphertext.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::MAX_RECIPIENTS;
use super::jwe::{self, EncryptError};
use crate::envelope::{Binding, SignError, Signer, random_jti};
use crate::identity::{Audience, ServiceId};
use crate::jwks::{JwkSet, KeySource, SourceError};
use crate::keys::{EncryptionPublicKey, KeyError};

/// Errors from sealing a message or resolving its recipients.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// No recipient was given.
    #[error("no recipients: seal to at least one service")]
    NoRecipients,

    /// More recipients than [`MAX_RECIPIENTS`](super::MAX_RECIPIENTS).
    #[error("{0} recipients, more than the limit of {MAX_RECIPIENTS}; split the message")]
    TooManyRecipients(usize),

    /// A service is listed twice.
    #[error("recipient {0} is listed twice")]
    DuplicateRecipient(ServiceId),

    /// Two recipients share an encryption key id, so a receiver could not
    /// tell their entries apart.
    #[error("two recipients have the encryption key {0:?}")]
    DuplicateKey(String),

    /// A recipient's JWK Set has no encryption key trustwire can use.
    #[error(
        "the JWK Set of {0} has no encryption key (an X25519 or P-256 key with \"use\": \"enc\"); \
         recreate its keys with `trustwire keygen` or add one with KeyDir::add_encryption_key"
    )]
    NoEncryptionKey(ServiceId),

    /// The audience names a service the recipient directory does not know.
    #[error("no key source for recipient {0}; add it to the RecipientDirectory")]
    UnknownRecipient(ServiceId),

    /// A recipient's key source could not be fetched.
    #[error("cannot fetch the keys of recipient {service}")]
    KeySource {
        /// The recipient.
        service: ServiceId,
        /// The fetch error.
        #[source]
        source: SourceError,
    },

    /// Key agreement with a recipient's key failed.
    #[error("key agreement failed")]
    KeyAgreement(#[source] KeyError),

    /// Signing the token failed.
    #[error("cannot sign the token")]
    Sign(#[from] SignError),

    /// The operating system's random number generator failed.
    #[error("random number generator failed: {0}")]
    Random(String),
}

impl From<EncryptError> for SealError {
    fn from(err: EncryptError) -> Self {
        match err {
            EncryptError::Key(KeyError::Random(reason)) | EncryptError::Random(reason) => SealError::Random(reason),
            EncryptError::Key(other) => SealError::KeyAgreement(other),
        }
    }
}

/// A recipient service and the public encryption key to seal to.
#[derive(Debug, Clone)]
pub struct Recipient {
    service: ServiceId,
    key: EncryptionPublicKey,
}

impl Recipient {
    /// A recipient with a key you chose.
    pub fn new(service: ServiceId, key: EncryptionPublicKey) -> Self {
        Self { service, key }
    }

    /// A recipient with the preferred encryption key of its JWK Set: the
    /// first X25519 key, or else the first P-256 key.
    pub fn from_jwks(service: ServiceId, set: &JwkSet) -> Result<Self, SealError> {
        let key = set
            .preferred_encryption_key()
            .ok_or_else(|| SealError::NoEncryptionKey(service.clone()))?
            .clone();
        Ok(Self { service, key })
    }

    /// A recipient whose key comes from `source`, fetched now if it is a
    /// remote set that is not cached.
    pub async fn from_source(service: ServiceId, source: &KeySource) -> Result<Self, SealError> {
        let set = match source {
            KeySource::Remote(remote) => remote.keys().await.map_err(|source| SealError::KeySource {
                service: service.clone(),
                source,
            })?,
            KeySource::Static(set) => std::sync::Arc::clone(set),
        };
        Self::from_jwks(service, &set)
    }

    /// The recipient service.
    pub fn service(&self) -> &ServiceId {
        &self.service
    }

    /// The key sealed to.
    pub fn key(&self) -> &EncryptionPublicKey {
        &self.key
    }
}

/// A map from recipient service ids to the sources of their public keys, so
/// a transport can turn a token's audience into recipients.
///
/// ```no_run
/// use trustwire::jwks::KeySource;
/// use trustwire::seal::RecipientDirectory;
/// use trustwire::{Audience, ServiceId};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let directory = RecipientDirectory::new().add(
///     ServiceId::new("payments")?,
///     KeySource::remote("https://payments.internal/.well-known/jwks.json")?,
/// );
/// let recipients = directory.resolve(&Audience::one(ServiceId::new("payments")?)).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct RecipientDirectory {
    sources: BTreeMap<ServiceId, KeySource>,
}

impl RecipientDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `service` with keys from `source`; adding it again replaces the source.
    pub fn add(mut self, service: ServiceId, source: KeySource) -> Self {
        self.sources.insert(service, source);
        self
    }

    /// Resolves every service of `audience` to a recipient.
    pub async fn resolve(&self, audience: &Audience) -> Result<Vec<Recipient>, SealError> {
        let mut recipients = Vec::with_capacity(audience.services().len());
        for service in audience.services() {
            let source = self
                .sources
                .get(service)
                .ok_or_else(|| SealError::UnknownRecipient(service.clone()))?;
            recipients.push(Recipient::from_source(service.clone(), source).await?);
        }
        Ok(recipients)
    }
}

/// A sealed message: the JWE to send as the payload and the signed token
/// to send beside it, where a signed message carries its token.
#[derive(Clone)]
#[non_exhaustive]
pub struct Sealed {
    /// The JWE: compact serialization for one recipient, general JSON
    /// serialization for several.
    pub jwe: Vec<u8>,
    /// The compact JWS whose `dig` is the SHA-256 of `jwe`.
    pub token: String,
    /// The token's `jti`, also in the JWE protected header.
    pub jti: String,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("jwe_bytes", &self.jwe.len())
            .field("jti", &self.jti)
            .finish_non_exhaustive()
    }
}

/// Seals messages for one sending service.
///
/// ```
/// use trustwire::keys::EncryptionKey;
/// use trustwire::seal::{Recipient, Sealer};
/// use trustwire::{Binding, ServiceId, Signer, SigningKey};
///
/// let sealer = Sealer::new(Signer::new(ServiceId::new("orders")?, SigningKey::generate()?));
/// let payments_key = EncryptionKey::generate()?;
/// let recipients = [Recipient::new(ServiceId::new("payments")?, payments_key.public_key().clone())];
/// let sealed = sealer.seal(&recipients, Binding::channel("nats:orders.created")?, b"secret")?;
/// assert_eq!(sealed.jwe.split(|&b| b == b'.').count(), 5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Sealer {
    signer: Signer,
}

impl Sealer {
    /// A sealer that signs with `signer`; its service id is the `iss` of
    /// the token and of the JWE header.
    pub fn new(signer: Signer) -> Self {
        Self { signer }
    }

    /// The signer.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// Seals `payload` to `recipients`, bound to `binding`, with the
    /// signer's default lifetime and no subject.
    pub fn seal(&self, recipients: &[Recipient], binding: Binding, payload: &[u8]) -> Result<Sealed, SealError> {
        self.message(recipients, binding).seal(payload)
    }

    /// Starts a sealed message with options; finish with [`SealBuilder::seal`].
    pub fn message<'a>(&'a self, recipients: &'a [Recipient], binding: Binding) -> SealBuilder<'a> {
        SealBuilder {
            sealer: self,
            recipients,
            binding,
            subject: None,
            ttl: None,
        }
    }
}

/// One sealed message being built.
#[derive(Debug)]
#[must_use = "nothing is sealed until seal() is called"]
pub struct SealBuilder<'a> {
    sealer: &'a Sealer,
    recipients: &'a [Recipient],
    binding: Binding,
    subject: Option<&'a str>,
    ttl: Option<Duration>,
}

impl<'a> SealBuilder<'a> {
    /// Sets the token's `sub`. It travels in the signed token, which is not
    /// encrypted.
    pub fn subject(mut self, subject: &'a str) -> Self {
        self.subject = Some(subject);
        self
    }

    /// Overrides the signer's default token lifetime.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Encrypts `payload` and signs the token over the JWE.
    pub fn seal(self, payload: &[u8]) -> Result<Sealed, SealError> {
        let keys = check_recipients(self.recipients)?;
        let signer = &self.sealer.signer;

        // The jti goes into the JWE header, and the token's dig covers the
        // JWE, so the jti is drawn first.
        let jti = random_jti()?;
        let jwe = jwe::encrypt(&keys, signer.service().as_str(), &jti, payload)?;

        let services = self
            .recipients
            .iter()
            .map(|recipient| recipient.service.clone())
            .collect();
        let audience = Audience::many(services).ok_or(SealError::NoRecipients)?;
        let mut token = signer.token(audience).binding(self.binding).payload(&jwe).jti(&jti);
        if let Some(subject) = self.subject {
            token = token.subject(subject);
        }
        if let Some(ttl) = self.ttl {
            token = token.ttl(ttl);
        }
        let token = token.sign()?;

        metrics::counter!("trustwire_sealed_total").increment(1);
        tracing::trace!(iss = %signer.service(), jti = %jti, recipients = self.recipients.len(), jwe_bytes = jwe.len(), "sealed message");
        Ok(Sealed { jwe, token, jti })
    }
}

/// Checks the recipient list and returns their keys.
fn check_recipients(recipients: &[Recipient]) -> Result<Vec<&EncryptionPublicKey>, SealError> {
    if recipients.is_empty() {
        return Err(SealError::NoRecipients);
    }
    if recipients.len() > MAX_RECIPIENTS {
        return Err(SealError::TooManyRecipients(recipients.len()));
    }

    let mut services = HashSet::with_capacity(recipients.len());
    let mut kids = HashSet::with_capacity(recipients.len());
    for recipient in recipients {
        if !services.insert(&recipient.service) {
            return Err(SealError::DuplicateRecipient(recipient.service.clone()));
        }
        if !kids.insert(recipient.key.kid()) {
            return Err(SealError::DuplicateKey(recipient.key.kid().to_owned()));
        }
    }
    Ok(recipients.iter().map(|recipient| &recipient.key).collect())
}
