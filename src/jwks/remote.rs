//! A cache of a remote JWK Set, fetched over HTTPS.
//!
//! The cache is built so that the verification path never waits on the
//! network for a key it already has:
//!
//! - the time to live comes from `Cache-Control: max-age`, clamped to
//!   `[min_ttl, max_ttl]` (`default_ttl` when the header is absent);
//! - once three quarters of the time to live have passed, the next lookup
//!   starts a refresh in the background and still returns the cached keys;
//! - concurrent fetches are merged into one request (single flight);
//! - a `kid` that is not in the set triggers at most one refresh per
//!   `unknown_kid_cooldown`;
//! - a failed refresh never evicts good keys: they stay usable for
//!   `max_staleness` past their expiry, after which lookups fail with
//!   `key_source_unavailable` until a fetch succeeds;
//! - after a failure, the next attempt waits `retry_interval`, doubling up to
//!   one minute, so a down server is not hammered;
//! - with a snapshot file (opt-in), each successful fetch is written to disk,
//!   and a cache whose first fetch fails loads it, so a verifier restarted
//!   during an outage keeps the keys it had (see [`RemoteJwksBuilder::snapshot`]);
//! - for a revoked key, [`RemoteJwks::force_refresh`] fetches at once and
//!   [`RemoteJwks::set_ttl_cap`] shortens the time to live while an incident
//!   lasts. Waiting for an unknown `kid` does not help there: a revoked key is
//!   one the cache already knows.

mod snapshot;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use url::Url;

use super::{JwkSet, JwksError};

/// Settings of a [`RemoteJwks`] cache. Every field has a stated default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RemoteJwksConfig {
    /// Time limit of one fetch, from connect to the last body byte. Default 5 s.
    pub fetch_timeout: Duration,
    /// Maximum size of a JWK Set response body, in bytes. Default 256 KiB.
    pub max_response_bytes: usize,
    /// Time to live when the response has no `Cache-Control: max-age`. Default 300 s.
    pub default_ttl: Duration,
    /// Lower bound of the time to live. Default 30 s.
    pub min_ttl: Duration,
    /// Upper bound of the time to live. Default 3600 s.
    pub max_ttl: Duration,
    /// Minimum time between two refreshes caused by an unknown `kid`. Default 30 s.
    pub unknown_kid_cooldown: Duration,
    /// How long past its expiry a key set stays usable while refreshes fail.
    /// Default 6 hours.
    pub max_staleness: Duration,
    /// Wait before retrying after a failed fetch; doubles on each further
    /// failure, up to 60 s. Default 5 s.
    pub retry_interval: Duration,
}

impl Default for RemoteJwksConfig {
    fn default() -> Self {
        Self {
            fetch_timeout: Duration::from_secs(5),
            max_response_bytes: 256 * 1024,
            default_ttl: Duration::from_secs(300),
            min_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(3600),
            unknown_kid_cooldown: Duration::from_secs(30),
            max_staleness: Duration::from_secs(6 * 3600),
            retry_interval: Duration::from_secs(5),
        }
    }
}

/// Maximum wait between retries after repeated fetch failures.
const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(60);

/// Stands in for longer durations, such as `Duration::MAX` for "keep stale
/// keys forever", so that adding them to an `Instant` cannot overflow.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// Returns `instant + duration`, with `duration` capped at [`FAR_FUTURE`].
fn later(instant: Instant, duration: Duration) -> Instant {
    instant + duration.min(FAR_FUTURE)
}

/// Errors of a key source.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The JWKS URL cannot be used.
    #[error("invalid JWKS URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The JWKS URL is plain `http://` to a host that is not loopback.
    #[error(
        "refusing plain http:// JWKS URL {url}: keys fetched without TLS can be replaced in transit; use https://, or allow it explicitly with insecure_allow_http"
    )]
    PlainHttp {
        /// The URL.
        url: String,
    },

    /// A fetch failed: connection, timeout, status, size or content.
    #[error("fetching JWKS from {url} failed: {reason}")]
    Fetch {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },

    /// No usable keys: the last fetch failed and no keys, or only keys older
    /// than the maximum staleness, are cached.
    #[error("no usable keys from {url}: {reason}")]
    Unavailable {
        /// The URL.
        url: String,
        /// The last fetch error.
        reason: String,
    },

    /// A key file could not be read or parsed.
    #[error("cannot load keys from {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
}

/// A cached remote JWK Set. Cloning is cheap and clones share the cache.
///
/// ```no_run
/// use std::time::Duration;
/// use trustwire::jwks::RemoteJwks;
///
/// let jwks = RemoteJwks::builder("https://orders.internal/.well-known/jwks.json")
///     .max_staleness(Duration::from_secs(3600))
///     .build()?;
/// # Ok::<(), trustwire::jwks::SourceError>(())
/// ```
#[derive(Clone)]
pub struct RemoteJwks {
    inner: Arc<Inner>,
}

struct Inner {
    url: Url,
    client: reqwest::Client,
    config: RemoteJwksConfig,
    /// The last-good snapshot file, if enabled.
    snapshot: Option<PathBuf>,
    state: Mutex<State>,
    /// Held for the duration of a fetch; waiting on it merges concurrent fetches.
    fetch_gate: tokio::sync::Mutex<()>,
}

/// A lock of [`Inner::fetch_gate`], taken as a parameter to show that the caller has locked it.
type GateGuard<'a> = tokio::sync::MutexGuard<'a, ()>;

#[derive(Default)]
struct State {
    keys: Option<Arc<JwkSet>>,
    /// When the fetch that returned `keys` started.
    keys_fetch_started: Option<Instant>,
    refresh_at: Option<Instant>,
    fresh_until: Option<Instant>,
    usable_until: Option<Instant>,
    /// Completed fetch attempts, successful or not.
    attempts: u64,
    failures: u32,
    last_error: Option<String>,
    next_attempt: Option<Instant>,
    refreshing: bool,
    last_unknown_kid_refresh: Option<Instant>,
    stale_warned: bool,
    /// Upper bound of the time to live set at run time, during an incident.
    ttl_cap: Option<Duration>,
    /// Whether the snapshot file was already read, so it is read once at most.
    snapshot_tried: bool,
    /// Whether the last snapshot write failed, so a failing disk logs one
    /// warning per streak of failures instead of one per fetch.
    snapshot_write_failed: bool,
}

/// Builder of a [`RemoteJwks`].
#[derive(Debug)]
pub struct RemoteJwksBuilder {
    url: String,
    config: RemoteJwksConfig,
    insecure_allow_http: bool,
    snapshot: Option<PathBuf>,
}

impl RemoteJwksBuilder {
    /// Replaces all settings at once.
    pub fn config(mut self, config: RemoteJwksConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the time limit of one fetch. Default 5 s.
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.config.fetch_timeout = timeout;
        self
    }

    /// Sets the maximum response size in bytes. Default 256 KiB.
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        self.config.max_response_bytes = bytes;
        self
    }

    /// Sets the time to live used without `Cache-Control: max-age`. Default 300 s.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.config.default_ttl = ttl;
        self
    }

    /// Sets the bounds of the time to live. Defaults 30 s and 3600 s.
    pub fn ttl_bounds(mut self, min: Duration, max: Duration) -> Self {
        self.config.min_ttl = min;
        self.config.max_ttl = max;
        self
    }

    /// Sets the minimum time between unknown-`kid` refreshes. Default 30 s.
    pub fn unknown_kid_cooldown(mut self, cooldown: Duration) -> Self {
        self.config.unknown_kid_cooldown = cooldown;
        self
    }

    /// Sets how long past expiry keys stay usable while refreshes fail. Default 6 h.
    pub fn max_staleness(mut self, staleness: Duration) -> Self {
        self.config.max_staleness = staleness;
        self
    }

    /// Sets the first retry wait after a failed fetch. Default 5 s.
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.config.retry_interval = interval;
        self
    }

    /// Keeps a last-good snapshot of the set in the file `path`. Default: none.
    ///
    /// After each successful fetch the set is written there atomically
    /// (temporary file, then rename) with mode 0600. When the first fetch of
    /// this cache fails, as after a restart during a JWKS outage, the
    /// snapshot is loaded instead. It must come from the same URL and be
    /// younger than its time to live plus `max_staleness`. Its keys count as
    /// stale, so they are replaced as soon as a fetch succeeds.
    ///
    /// Anyone who can write the file can plant keys, so keep it in a
    /// directory only the service can write. A snapshot that group or others
    /// can write is rejected. Give each URL its own file.
    pub fn snapshot(mut self, path: impl Into<PathBuf>) -> Self {
        self.snapshot = Some(path.into());
        self
    }

    /// Allows a plain `http://` URL to a host that is not loopback.
    ///
    /// Anyone on the network path can then replace the keys and forge
    /// tokens. Use it only inside a network you trust for this, such as a
    /// service mesh that already encrypts the hop.
    pub fn insecure_allow_http(mut self) -> Self {
        self.insecure_allow_http = true;
        self
    }

    /// Validates the URL and builds the cache. Nothing is fetched yet.
    pub fn build(self) -> Result<RemoteJwks, SourceError> {
        let url = Url::parse(&self.url).map_err(|err| SourceError::InvalidUrl {
            url: self.url.clone(),
            reason: err.to_string(),
        })?;
        check_scheme(&url, self.insecure_allow_http)?;

        if self.config.min_ttl > self.config.max_ttl {
            return Err(SourceError::InvalidUrl {
                url: self.url,
                reason: "min_ttl is greater than max_ttl".into(),
            });
        }

        let client = reqwest::Client::builder()
            .timeout(self.config.fetch_timeout)
            .connect_timeout(self.config.fetch_timeout)
            // A redirect could lead from https:// to a plain or foreign URL.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("trustwire/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| SourceError::InvalidUrl {
                url: self.url.clone(),
                reason: format!("cannot build the HTTP client: {err}"),
            })?;

        Ok(RemoteJwks {
            inner: Arc::new(Inner {
                url,
                client,
                config: self.config,
                snapshot: self.snapshot,
                state: Mutex::new(State::default()),
                fetch_gate: tokio::sync::Mutex::new(()),
            }),
        })
    }
}

fn check_scheme(url: &Url, insecure_allow_http: bool) -> Result<(), SourceError> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" if insecure_allow_http => {
            tracing::warn!(url = %url, "fetching JWKS over plain http:// to a non-loopback host; tokens can be forged by anyone on the path");
            Ok(())
        }
        "http" => Err(SourceError::PlainHttp { url: url.to_string() }),
        other => Err(SourceError::InvalidUrl {
            url: url.to_string(),
            reason: format!("unsupported scheme {other:?}; use https://"),
        }),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

impl RemoteJwks {
    /// Starts building a cache for the JWK Set at `url`.
    pub fn builder(url: impl Into<String>) -> RemoteJwksBuilder {
        RemoteJwksBuilder {
            url: url.into(),
            config: RemoteJwksConfig::default(),
            insecure_allow_http: false,
            snapshot: None,
        }
    }

    /// The URL of the set.
    pub fn url(&self) -> &str {
        self.inner.url.as_str()
    }

    /// Returns the cached keys, fetching only when none are usable.
    ///
    /// When the cached keys are due for refresh, a refresh starts in the
    /// background and this call returns the cached keys at once.
    pub async fn keys(&self) -> Result<Arc<JwkSet>, SourceError> {
        let now = Instant::now();
        let seen = {
            let mut state = self.inner.lock_state();
            if let Some(keys) = state.usable_keys(now) {
                self.maybe_refresh_in_background(&mut state, now);
                return Ok(keys);
            }
            if state.next_attempt.is_some_and(|at| now < at) {
                return Err(self.inner.unavailable(&state));
            }
            state.attempts
        };
        self.inner.fetch_once(seen).await
    }

    /// Returns the cached keys if usable, without any network access.
    pub fn cached(&self) -> Option<Arc<JwkSet>> {
        self.inner.lock_state().usable_keys(Instant::now())
    }

    /// Refreshes because a token named a `kid` that is not cached.
    ///
    /// Fetches at most once per `unknown_kid_cooldown`, and not while the
    /// retry wait after a failed fetch runs. Otherwise it waits for a fetch
    /// in flight, if any, and returns the cached keys.
    pub async fn refresh_for_unknown_kid(&self) -> Result<Arc<JwkSet>, SourceError> {
        self.refresh_for_unknown_kid_since(None).await
    }

    /// Does what [`Self::refresh_for_unknown_kid`] does, but also skips the
    /// fetch when the cached keys come from a fetch that started at or after
    /// `since`, because that fetch already saw the set as it is now.
    pub(crate) async fn refresh_for_unknown_kid_since(
        &self,
        since: Option<Instant>,
    ) -> Result<Arc<JwkSet>, SourceError> {
        // Deciding under the gate makes every caller that finds the cooldown
        // running wait until the fetch that started it has stored its keys.
        let gate = self.inner.fetch_gate.lock().await;
        let now = Instant::now();
        {
            let mut state = self.inner.lock_state();
            let cooling = state
                .last_unknown_kid_refresh
                .is_some_and(|at| now.duration_since(at) < self.inner.config.unknown_kid_cooldown);
            let backing_off = state.next_attempt.is_some_and(|at| now < at);
            let fetched_since =
                since.is_some_and(|since| state.keys_fetch_started.is_some_and(|started| started >= since));
            if cooling || backing_off || fetched_since {
                return state.usable_keys(now).ok_or_else(|| self.inner.unavailable(&state));
            }
            state.last_unknown_kid_refresh = Some(now);
        }

        tracing::debug!(url = %self.inner.url, "refreshing JWKS for an unknown kid");
        self.inner.fetch_and_store(&gate).await
    }

    /// Fetches the set now, whatever the cache holds. The result is cached;
    /// a failure keeps the keys cached before.
    pub async fn refresh(&self) -> Result<Arc<JwkSet>, SourceError> {
        let seen = self.inner.lock_state().attempts;
        self.inner.fetch_once(seen).await
    }

    /// Fetches the set now and reports whether that fetch succeeded: the
    /// refresh to run after a key was revoked.
    ///
    /// Unlike [`Self::refresh`], it always starts a new request after any
    /// fetch in flight has finished, ignoring the time to live, the
    /// unknown-`kid` cooldown and the retry wait, so the keys it returns were
    /// published after the call began. A key no longer in the set stops
    /// verifying at once. A failed fetch returns its error; the keys cached
    /// before stay usable, as after any failed fetch.
    pub async fn force_refresh(&self) -> Result<Arc<JwkSet>, SourceError> {
        let gate = self.inner.fetch_gate.lock().await;
        tracing::info!(url = %self.inner.url, "forced JWKS refresh");
        self.inner.fetch_and_record(&gate).await
    }

    /// Caps the time to live of the cached set at `cap`, below what
    /// `Cache-Control` and `max_ttl` allow, or lifts the cap with `None`.
    ///
    /// During an incident a short cap (such as 30 s) makes every verifier
    /// drop a revoked key within that time of its removal from the JWKS,
    /// without a restart; the cost is one request per cap per verifier. The
    /// cap also applies to the keys cached now: if they are older than three
    /// quarters of `cap`, the next lookup starts a refresh.
    pub fn set_ttl_cap(&self, cap: Option<Duration>) {
        let mut state = self.inner.lock_state();
        state.ttl_cap = cap;
        let (Some(cap), Some(started)) = (cap, state.keys_fetch_started) else {
            tracing::info!(url = %self.inner.url, cap_ms = cap.map(|cap| cap.as_millis() as u64), "JWKS time-to-live cap changed");
            return;
        };

        let refresh_at = later(started, cap - cap / 4);
        let fresh_until = later(started, cap);
        state.refresh_at = Some(state.refresh_at.map_or(refresh_at, |at| at.min(refresh_at)));
        state.fresh_until = Some(state.fresh_until.map_or(fresh_until, |at| at.min(fresh_until)));
        tracing::info!(url = %self.inner.url, cap_ms = cap.as_millis() as u64, "JWKS time-to-live capped");
    }

    fn maybe_refresh_in_background(&self, state: &mut State, now: Instant) {
        let due = state.refresh_at.is_some_and(|at| now >= at);
        let allowed = state.next_attempt.is_none_or(|at| now >= at);
        if !due || !allowed || state.refreshing {
            return;
        }

        let stale = state.fresh_until.is_some_and(|until| now >= until);
        if stale && !state.stale_warned {
            state.stale_warned = true;
            tracing::warn!(url = %self.inner.url, last_error = state.last_error.as_deref().unwrap_or(""), "JWKS is stale; verifying with cached keys until it can be refreshed");
        }

        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        state.refreshing = true;
        let seen = state.attempts;
        let inner = Arc::clone(&self.inner);
        runtime.spawn(async move {
            let _ = inner.fetch_once(seen).await;
            inner.lock_state().refreshing = false;
        });
    }
}

impl State {
    fn usable_keys(&self, now: Instant) -> Option<Arc<JwkSet>> {
        let keys = self.keys.as_ref()?;
        if self.usable_until.is_some_and(|until| now < until) {
            Some(Arc::clone(keys))
        } else {
            None
        }
    }
}

impl Inner {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        // The state is plain data updated in single assignments, so a panic
        // elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn unavailable(&self, state: &State) -> SourceError {
        let reason = match (&state.last_error, &state.keys) {
            (Some(error), Some(_)) => format!("cached keys are older than the maximum staleness; last error: {error}"),
            (Some(error), None) => error.clone(),
            (None, _) => "no fetch has succeeded yet".to_owned(),
        };
        SourceError::Unavailable {
            url: self.url.to_string(),
            reason,
        }
    }

    /// Fetches unless another fetch completed since the caller read
    /// `seen_attempts`, in which case that fetch's outcome is returned.
    async fn fetch_once(&self, seen_attempts: u64) -> Result<Arc<JwkSet>, SourceError> {
        let gate = self.fetch_gate.lock().await;
        {
            let state = self.lock_state();
            if state.attempts != seen_attempts {
                return state
                    .usable_keys(Instant::now())
                    .ok_or_else(|| self.unavailable(&state));
            }
        }
        self.fetch_and_store(&gate).await
    }

    /// Fetches and records the outcome: new keys on success, the error and
    /// the next retry time on failure, keeping any keys still usable.
    async fn fetch_and_store(&self, gate: &GateGuard<'_>) -> Result<Arc<JwkSet>, SourceError> {
        match self.fetch_and_record(gate).await {
            Ok(set) => Ok(set),
            Err(_) => {
                let state = self.lock_state();
                state
                    .usable_keys(Instant::now())
                    .ok_or_else(|| self.unavailable(&state))
            }
        }
    }

    /// Fetches and records the outcome as [`Self::fetch_and_store`] does, but
    /// returns the fetch error even when cached keys stay usable.
    async fn fetch_and_record(&self, _gate: &GateGuard<'_>) -> Result<Arc<JwkSet>, SourceError> {
        let started = Instant::now();
        let result = self.fetch().await;
        let now = Instant::now();

        let (set, ttl) = match result {
            Ok(fetched) => fetched,
            Err(err) => {
                self.record_failure(&err, now);
                self.load_snapshot_after_first_failure().await;
                metrics::counter!("trustwire_jwks_fetches_total", "result" => "error").increment(1);
                return Err(err);
            }
        };

        let set = Arc::new(set);
        let ttl = {
            let mut state = self.lock_state();
            let ttl = state.ttl_cap.map_or(ttl, |cap| ttl.min(cap));
            log_key_changes(&self.url, state.keys.as_deref(), &set, ttl, now - started);
            state.attempts += 1;
            state.keys = Some(Arc::clone(&set));
            state.keys_fetch_started = Some(started);
            state.refresh_at = Some(later(now, ttl - ttl / 4));
            state.fresh_until = Some(later(now, ttl));
            state.usable_until = Some(later(now, ttl.saturating_add(self.config.max_staleness)));
            state.failures = 0;
            state.last_error = None;
            state.next_attempt = None;
            state.stale_warned = false;
            // Once a fetch succeeded, an older snapshot is never needed again.
            state.snapshot_tried = true;
            ttl
        };
        metrics::counter!("trustwire_jwks_fetches_total", "result" => "ok").increment(1);

        if let Some(path) = &self.snapshot {
            let written = snapshot::write(path, self.url.as_str(), &set, ttl).await;
            self.log_snapshot_write(path, written);
        }
        Ok(set)
    }

    fn record_failure(&self, err: &SourceError, now: Instant) {
        let mut state = self.lock_state();
        state.attempts += 1;
        state.failures = state.failures.saturating_add(1);
        let shift = state.failures.saturating_sub(1).min(16);
        let wait = self
            .config
            .retry_interval
            .saturating_mul(1 << shift)
            .min(MAX_RETRY_INTERVAL.max(self.config.retry_interval));
        state.next_attempt = Some(later(now, wait));
        state.last_error = Some(err.to_string());
        let keeps_keys = state.usable_keys(now).is_some();
        tracing::warn!(url = %self.url, error = %err, failures = state.failures, retry_in_ms = wait.as_millis() as u64, keeps_cached_keys = keeps_keys, "JWKS fetch failed");
    }

    /// Loads the snapshot file when the cache has never held keys, once.
    /// The caller has locked the fetch gate, so no fetch can store keys meanwhile.
    async fn load_snapshot_after_first_failure(&self) {
        let Some(path) = &self.snapshot else {
            return;
        };
        {
            let mut state = self.lock_state();
            if state.snapshot_tried || state.keys.is_some() {
                return;
            }
            state.snapshot_tried = true;
        }

        let loaded = match snapshot::read(path, self.url.as_str(), self.config.max_response_bytes).await {
            Ok(loaded) => loaded,
            Err(reason) => {
                tracing::warn!(url = %self.url, path = %path.display(), reason = %reason, "cannot use the JWKS snapshot");
                return;
            }
        };
        let age = loaded.age();
        let Some(remaining) = loaded.ttl.saturating_add(self.config.max_staleness).checked_sub(age) else {
            tracing::warn!(url = %self.url, path = %path.display(), age_s = age.as_secs(), "JWKS snapshot is older than its time to live plus the maximum staleness; not using it");
            return;
        };

        let now = Instant::now();
        let kids: Vec<&str> = loaded.set.keys().iter().map(|key| key.kid()).collect();
        tracing::warn!(url = %self.url, path = %path.display(), age_s = age.as_secs(), kids = ?kids, "verifying with the last-good JWKS snapshot until a fetch succeeds");
        metrics::counter!("trustwire_jwks_snapshot_loads_total").increment(1);

        let mut state = self.lock_state();
        state.keys = Some(Arc::new(loaded.set));
        state.keys_fetch_started = None;
        state.refresh_at = Some(now);
        state.fresh_until = Some(now);
        state.usable_until = Some(later(now, remaining));
        // The warning above already reported that these keys are stale.
        state.stale_warned = true;
    }

    fn log_snapshot_write(&self, path: &Path, written: Result<(), String>) {
        let mut state = self.lock_state();
        match written {
            Ok(()) => {
                if state.snapshot_write_failed {
                    tracing::info!(url = %self.url, path = %path.display(), "JWKS snapshot written again");
                }
                state.snapshot_write_failed = false;
            }
            Err(reason) => {
                metrics::counter!("trustwire_jwks_snapshot_write_failures_total").increment(1);
                if !state.snapshot_write_failed {
                    tracing::warn!(url = %self.url, path = %path.display(), reason = %reason, "cannot write the JWKS snapshot; a restart during an outage would find no keys");
                }
                state.snapshot_write_failed = true;
            }
        }
    }

    async fn fetch(&self) -> Result<(JwkSet, Duration), SourceError> {
        let fail = |reason: String| SourceError::Fetch {
            url: self.url.to_string(),
            reason,
        };
        let request = self
            .client
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/jwk-set+json, application/json");

        let work = async {
            let response = request.send().await.map_err(|err| fail(describe_reqwest_error(&err)))?;
            let status = response.status();
            if status != reqwest::StatusCode::OK {
                return Err(fail(format!("HTTP status {status}")));
            }

            let limit = self.config.max_response_bytes;
            if response.content_length().is_some_and(|length| length > limit as u64) {
                return Err(fail(format!("response is larger than the limit of {limit} bytes")));
            }
            let ttl = self.ttl_from(response.headers());

            let mut body = Vec::new();
            let mut stream = response.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|err| fail(describe_reqwest_error(&err)))?;
                if body.len() + chunk.len() > limit {
                    return Err(fail(format!("response is larger than the limit of {limit} bytes")));
                }
                body.extend_from_slice(&chunk);
            }

            let set = JwkSet::parse(&body).map_err(|err: JwksError| fail(error_chain(&err)))?;
            Ok((set, ttl))
        };

        match tokio::time::timeout(self.config.fetch_timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(fail(format!(
                "timed out after {} ms",
                self.config.fetch_timeout.as_millis()
            ))),
        }
    }

    fn ttl_from(&self, headers: &reqwest::header::HeaderMap) -> Duration {
        let max_age = headers
            .get_all(reqwest::header::CACHE_CONTROL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .find_map(parse_max_age);
        let ttl = max_age.unwrap_or(self.config.default_ttl);
        ttl.clamp(self.config.min_ttl, self.config.max_ttl)
    }
}

/// Parses one `Cache-Control` directive; `no-store` and `no-cache` count as
/// `max-age=0`, which the minimum TTL then raises.
fn parse_max_age(directive: &str) -> Option<Duration> {
    let directive = directive.trim();
    if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache") {
        return Some(Duration::ZERO);
    }
    let (name, value) = directive.split_once('=')?;
    if !name.trim().eq_ignore_ascii_case("max-age") {
        return None;
    }
    let seconds: u64 = value.trim().trim_matches('"').parse().ok()?;
    Some(Duration::from_secs(seconds))
}

fn describe_reqwest_error(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return "timed out".to_owned();
    }
    if err.is_connect() {
        return format!("connection failed: {}", error_chain(err));
    }
    error_chain(err)
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

fn log_key_changes(url: &Url, old: Option<&JwkSet>, new: &JwkSet, ttl: Duration, took: Duration) {
    let old_kids: Vec<&str> = old
        .map(|set| set.keys().iter().map(|key| key.kid()).collect())
        .unwrap_or_default();
    let new_kids: Vec<&str> = new.keys().iter().map(|key| key.kid()).collect();
    if old_kids == new_kids {
        tracing::debug!(url = %url, keys = new_kids.len(), ttl_s = ttl.as_secs(), took_ms = took.as_millis() as u64, "fetched JWKS");
    } else {
        tracing::info!(url = %url, kids = ?new_kids, ttl_s = ttl.as_secs(), took_ms = took.as_millis() as u64, "fetched JWKS with changed keys");
    }
}

impl fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("url", &self.inner.url.as_str())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_parsing() {
        assert_eq!(parse_max_age("max-age=60"), Some(Duration::from_secs(60)));
        assert_eq!(parse_max_age(" MAX-AGE = 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(parse_max_age("public"), None);
        assert_eq!(parse_max_age("max-age=-1"), None);
        assert_eq!(parse_max_age("s-maxage=60"), None);
    }

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(RemoteJwks::builder("http://127.0.0.1:1/jwks").build().is_ok());
        assert!(RemoteJwks::builder("http://[::1]:1/jwks").build().is_ok());
        assert!(RemoteJwks::builder("http://localhost:1/jwks").build().is_ok());
        assert!(matches!(
            RemoteJwks::builder("http://orders.internal/jwks").build(),
            Err(SourceError::PlainHttp { .. })
        ));
        assert!(
            RemoteJwks::builder("http://orders.internal/jwks")
                .insecure_allow_http()
                .build()
                .is_ok()
        );
        assert!(matches!(
            RemoteJwks::builder("ftp://x/jwks").build(),
            Err(SourceError::InvalidUrl { .. })
        ));
    }
}
