//! The trust store: which issuers are trusted, and where each one's keys come from.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{JwkSet, RemoteJwks, SourceError};
use crate::envelope::{Reason, Rejection};
use crate::identity::ServiceId;
use crate::keys::PublicKey;

/// Where an issuer's public keys come from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum KeySource {
    /// A JWK Set fetched over HTTPS and cached.
    Remote(RemoteJwks),
    /// A fixed set: loaded from a file or given inline.
    Static(Arc<JwkSet>),
}

impl KeySource {
    /// A remote JWK Set with the default cache settings.
    pub fn remote(url: &str) -> Result<Self, SourceError> {
        Ok(Self::Remote(RemoteJwks::builder(url).build()?))
    }

    /// A JWK Set file, or a file with a single public JWK, read once now.
    pub fn file(path: &Path) -> Result<Self, SourceError> {
        let fail = |reason: String| SourceError::File {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|err| fail(err.to_string()))?;
        let set = parse_set_or_key(&bytes).map_err(fail)?;
        Ok(Self::Static(Arc::new(set)))
    }

    /// A fixed set of keys.
    pub fn inline(set: JwkSet) -> Self {
        Self::Static(Arc::new(set))
    }

    async fn keys(&self) -> Result<Arc<JwkSet>, SourceError> {
        match self {
            Self::Remote(remote) => remote.keys().await,
            Self::Static(set) => Ok(Arc::clone(set)),
        }
    }

    fn cached(&self) -> Option<Arc<JwkSet>> {
        match self {
            Self::Remote(remote) => remote.cached(),
            Self::Static(set) => Some(Arc::clone(set)),
        }
    }

    /// Refreshes for a `kid` that was not cached when the lookup started at
    /// `lookup_started`. A fetch that started since then is not repeated.
    async fn refresh_for_unknown_kid(&self, lookup_started: Instant) -> Result<Arc<JwkSet>, SourceError> {
        match self {
            Self::Remote(remote) => remote.refresh_for_unknown_kid_since(Some(lookup_started)).await,
            Self::Static(set) => Ok(Arc::clone(set)),
        }
    }
}

/// Parses a JWK Set, or wraps a single JWK (a document with `kty`) in one.
fn parse_set_or_key(bytes: &[u8]) -> Result<JwkSet, String> {
    let document = crate::encoding::parse_object(bytes).map_err(|err| err.0)?;
    if document.contains_key("keys") {
        return JwkSet::parse(bytes).map_err(|err| error_chain(&err));
    }
    if document.contains_key("kty") {
        let wrapped = serde_json::json!({ "keys": [serde_json::Value::Object(document)] });
        return JwkSet::parse(wrapped.to_string().as_bytes()).map_err(|err| error_chain(&err));
    }
    Err("expected a JWK Set ({\"keys\": [...]}) or a single JWK".to_owned())
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The issuers a verifier trusts, each bound to its own key source.
///
/// A key found in issuer A's source only ever verifies tokens whose `iss` is
/// A: the verifier compares `iss` with the owner of the key that verified the
/// signature.
///
/// ```no_run
/// use trustwire::{ServiceId, jwks::{KeySource, TrustStore}};
///
/// let trust = TrustStore::new().trust(
///     ServiceId::new("orders")?,
///     KeySource::remote("https://orders.internal/.well-known/jwks.json")?,
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    issuers: BTreeMap<ServiceId, KeySource>,
}

impl TrustStore {
    /// An empty trust store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `issuer`, with keys from `source`. Trusting the same issuer again
    /// replaces its source.
    pub fn trust(mut self, issuer: ServiceId, source: KeySource) -> Self {
        self.issuers.insert(issuer, source);
        self
    }

    /// The trusted issuers.
    pub fn issuers(&self) -> impl Iterator<Item = &ServiceId> {
        self.issuers.keys()
    }

    /// Whether no issuer is trusted.
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Fetches every remote source once, so the first verification does not
    /// wait. Returns the first error; other sources are still fetched.
    pub async fn prefetch(&self) -> Result<(), SourceError> {
        let mut first_error = None;
        for (issuer, source) in &self.issuers {
            if let Err(err) = source.keys().await {
                tracing::warn!(iss = %issuer, error = %err, "prefetching JWKS failed");
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Fetches every remote source now, even within its time to live: the
    /// step after an issuer revoked a key, so this verifier drops it at once.
    ///
    /// Each fetch starts after the call, so keys removed from a JWKS before
    /// the call stop verifying when it returns `Ok`. Returns the first error;
    /// other sources are still fetched, and a source whose fetch failed keeps
    /// its cached keys, revoked ones included. See
    /// [`RemoteJwks::force_refresh`].
    pub async fn refresh_all(&self) -> Result<(), SourceError> {
        let mut first_error = None;
        for (issuer, source) in &self.issuers {
            let KeySource::Remote(remote) = source else {
                continue;
            };
            if let Err(err) = remote.force_refresh().await {
                tracing::warn!(iss = %issuer, error = %err, "forced JWKS refresh failed; the cached keys stay in use");
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Caps the time to live of every remote source at `cap`, or lifts the
    /// cap with `None`; see [`RemoteJwks::set_ttl_cap`]. During an incident,
    /// a short cap bounds how long any key removed from a JWKS keeps
    /// verifying here.
    pub fn set_ttl_cap(&self, cap: Option<Duration>) {
        for source in self.issuers.values() {
            if let KeySource::Remote(remote) = source {
                remote.set_ttl_cap(cap);
            }
        }
    }

    /// Finds the key `kid` and its owner.
    ///
    /// Looks in the claimed issuer's source first (fetching it if nothing
    /// usable is cached), then in the cached keys of the other issuers, and
    /// finally refreshes the claimed issuer's source once. That refresh is
    /// skipped within the source's unknown-`kid` cooldown or retry wait, and
    /// when the first lookup already fetched the set. `claimed_iss` is
    /// unverified and used only to choose which source to look in and refresh.
    pub(crate) async fn find_key(
        &self,
        kid: &str,
        claimed_iss: Option<&str>,
    ) -> Result<(ServiceId, PublicKey), Rejection> {
        let lookup_started = Instant::now();
        let claimed = claimed_iss.and_then(|iss| self.issuers.get_key_value(iss));

        let mut claimed_error = None;
        if let Some((issuer, source)) = claimed {
            match source.keys().await {
                Ok(set) => {
                    if let Some(key) = set.find(kid) {
                        return Ok((issuer.clone(), key.clone()));
                    }
                }
                Err(err) => claimed_error = Some(err),
            }
        }

        for (issuer, source) in &self.issuers {
            if let Some(key) = source.cached().as_deref().and_then(|set| set.find(kid)) {
                return Ok((issuer.clone(), key.clone()));
            }
        }

        if let Some((issuer, source)) = claimed {
            match source.refresh_for_unknown_kid(lookup_started).await {
                Ok(set) => {
                    if let Some(key) = set.find(kid) {
                        return Ok((issuer.clone(), key.clone()));
                    }
                    claimed_error = None;
                }
                Err(err) => claimed_error = Some(err),
            }
        }

        match claimed_error {
            Some(err) => Err(Rejection::new(Reason::KeySourceUnavailable, err.to_string())),
            None => Err(Rejection::new(
                Reason::UnknownKey,
                format!("no trusted issuer has a key with kid {kid:?}"),
            )),
        }
    }
}
