//! One configuration file for a service, `trustwire.toml`, and the signer,
//! trust store and verifier built from it.
//!
//! ```toml
//! [service]
//! id = "payments"
//! key_dir = "/etc/trustwire/keys"
//!
//! [verify]
//! leeway_seconds = 30
//!
//! [[trust]]
//! issuer = "orders"
//! jwks_url = "https://orders.internal/.well-known/jwks.json"
//!
//! [[policy.allow]]
//! issuer = "orders"
//! channels = ["nats:orders.>"]
//!
//! [jwks]
//! snapshot_dir = "/var/lib/trustwire/jwks"
//! ```
//!
//! Every setting has a default and an environment variable that overrides
//! the file; [`SETTINGS`] lists them all. Durations are whole seconds and
//! sizes whole bytes. Relative paths are resolved against the directory of
//! the file. A value that cannot be used fails loading with a
//! [`ConfigError`] that names the setting (or the environment variable that
//! set it) and gives the fix. Unknown settings are errors too, so a
//! misspelt name never falls back to a default silently.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::envelope::{
    DEFAULT_LEEWAY, DEFAULT_MAX_LIFETIME, DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_MAX_TOKEN_BYTES, DEFAULT_TTL,
    MAX_SAFE_LEEWAY, Signer, Verifier, VerifierBuilder, VerifierConfigError,
};
use crate::identity::ServiceId;
use crate::jwks::{KeySource, RemoteJwks, RemoteJwksConfig, TrustStore};
use crate::keys::{DEFAULT_RELOAD_INTERVAL, KeyDir, KeyDirWatcher};
use crate::policy::Policy;
use crate::replay::{DEFAULT_CAPACITY, MemoryReplayGuard};

/// One setting of `trustwire.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Setting {
    /// The dotted key in the file, such as `verify.leeway_seconds`.
    pub key: &'static str,
    /// The environment variable that overrides the file.
    pub env: &'static str,
    /// The value used when neither sets it.
    pub default: &'static str,
}

const fn setting(key: &'static str, env: &'static str, default: &'static str) -> Setting {
    Setting { key, env, default }
}

const SERVICE_ID: Setting = setting("service.id", "TRUSTWIRE_SERVICE_ID", "none (required)");
const KEY_DIR: Setting = setting("service.key_dir", "TRUSTWIRE_KEY_DIR", "none (the service cannot sign)");
const KEY_RELOAD: Setting = setting("service.key_reload_seconds", "TRUSTWIRE_KEY_RELOAD_SECONDS", "10");
const TOKEN_LIFETIME: Setting = setting(
    "signing.token_lifetime_seconds",
    "TRUSTWIRE_TOKEN_LIFETIME_SECONDS",
    "60",
);
const SIGN_MAX_LIFETIME: Setting = setting(
    "signing.max_token_lifetime_seconds",
    "TRUSTWIRE_SIGNING_MAX_TOKEN_LIFETIME_SECONDS",
    "3600",
);
const LEEWAY: Setting = setting("verify.leeway_seconds", "TRUSTWIRE_LEEWAY_SECONDS", "30");
const MAX_LIFETIME: Setting = setting(
    "verify.max_token_lifetime_seconds",
    "TRUSTWIRE_MAX_TOKEN_LIFETIME_SECONDS",
    "600",
);
const MAX_TOKEN_BYTES: Setting = setting("verify.max_token_bytes", "TRUSTWIRE_MAX_TOKEN_BYTES", "8192");
const MAX_PAYLOAD_BYTES: Setting = setting("verify.max_payload_bytes", "TRUSTWIRE_MAX_PAYLOAD_BYTES", "16777216");
const POLICY_FILE: Setting = setting(
    "verify.policy_file",
    "TRUSTWIRE_POLICY_FILE",
    "none (the [[policy.allow]] rules, or every trusted issuer everywhere)",
);
const POLICY_ALLOW: Setting = setting(
    "policy.allow",
    "TRUSTWIRE_POLICY_FILE",
    "none (every trusted issuer everywhere)",
);
const REPLAY_GUARD: Setting = setting("replay.guard", "TRUSTWIRE_REPLAY_GUARD", "memory");
const REPLAY_CAPACITY: Setting = setting("replay.capacity", "TRUSTWIRE_REPLAY_CAPACITY", "1000000");
const REPLAY_BUCKET: Setting = setting("replay.bucket", "TRUSTWIRE_REPLAY_BUCKET", "trustwire_replay");
const TRUST: Setting = setting("trust", "TRUSTWIRE_TRUST", "none (the service cannot verify)");
const URL_TEMPLATE: Setting = setting("jwks.url_template", "TRUSTWIRE_JWKS_URL_TEMPLATE", "none");
const FETCH_TIMEOUT: Setting = setting(
    "jwks.fetch_timeout_seconds",
    "TRUSTWIRE_JWKS_FETCH_TIMEOUT_SECONDS",
    "5",
);
const MAX_RESPONSE: Setting = setting("jwks.max_response_bytes", "TRUSTWIRE_JWKS_MAX_RESPONSE_BYTES", "262144");
const DEFAULT_TTL_S: Setting = setting("jwks.default_ttl_seconds", "TRUSTWIRE_JWKS_DEFAULT_TTL_SECONDS", "300");
const MIN_TTL: Setting = setting("jwks.min_ttl_seconds", "TRUSTWIRE_JWKS_MIN_TTL_SECONDS", "30");
const MAX_TTL: Setting = setting("jwks.max_ttl_seconds", "TRUSTWIRE_JWKS_MAX_TTL_SECONDS", "3600");
const COOLDOWN: Setting = setting(
    "jwks.unknown_kid_cooldown_seconds",
    "TRUSTWIRE_JWKS_UNKNOWN_KID_COOLDOWN_SECONDS",
    "30",
);
const MAX_STALENESS: Setting = setting(
    "jwks.max_staleness_seconds",
    "TRUSTWIRE_JWKS_MAX_STALENESS_SECONDS",
    "21600",
);
const RETRY_INTERVAL: Setting = setting(
    "jwks.retry_interval_seconds",
    "TRUSTWIRE_JWKS_RETRY_INTERVAL_SECONDS",
    "5",
);
const SNAPSHOT_DIR: Setting = setting("jwks.snapshot_dir", "TRUSTWIRE_JWKS_SNAPSHOT_DIR", "none (no snapshot)");
const ALLOW_HTTP: Setting = setting(
    "jwks.insecure_allow_http",
    "TRUSTWIRE_JWKS_INSECURE_ALLOW_HTTP",
    "false",
);

/// Every setting of `trustwire.toml`, with its environment variable and
/// default.
///
/// `trust` is an array of tables, each with `issuer` and one of `jwks_url`
/// and `jwks_file` (or neither, when `jwks.url_template` is set);
/// `TRUSTWIRE_TRUST` replaces the whole array with a comma-separated list of
/// `ISSUER=URL_OR_FILE`. `policy.allow` is an array of policy rules, as in a
/// policy file; `TRUSTWIRE_POLICY_FILE` replaces them with a policy file.
pub const SETTINGS: &[Setting] = &[
    SERVICE_ID,
    KEY_DIR,
    KEY_RELOAD,
    TOKEN_LIFETIME,
    SIGN_MAX_LIFETIME,
    LEEWAY,
    MAX_LIFETIME,
    MAX_TOKEN_BYTES,
    MAX_PAYLOAD_BYTES,
    POLICY_FILE,
    POLICY_ALLOW,
    REPLAY_GUARD,
    REPLAY_CAPACITY,
    REPLAY_BUCKET,
    TRUST,
    URL_TEMPLATE,
    FETCH_TIMEOUT,
    MAX_RESPONSE,
    DEFAULT_TTL_S,
    MIN_TTL,
    MAX_TTL,
    COOLDOWN,
    MAX_STALENESS,
    RETRY_INTERVAL,
    SNAPSHOT_DIR,
    ALLOW_HTTP,
];

/// Keys allowed inside each `[[trust]]` table.
const TRUST_KEYS: [&str; 3] = ["issuer", "jwks_url", "jwks_file"];

/// An error in a configuration file or its environment overrides.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The file is not valid TOML; the message shows the line.
    #[error("{path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the line and column.
        message: String,
    },

    /// A setting has a value that cannot be used, is missing or is unknown.
    #[error("{key}: {problem}; {fix}")]
    Invalid {
        /// The setting, such as `verify.leeway_seconds`, or the environment
        /// variable that set it.
        key: String,
        /// The problem with the value.
        problem: String,
        /// How to fix it.
        fix: String,
    },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// Returns the setting or environment variable the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid { key, .. } => Some(key),
            Self::Read { .. } | Self::Syntax { .. } => None,
        }
    }
}

/// The replay guard a verifier uses.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplayGuardChoice {
    /// A [`MemoryReplayGuard`] in this process: `memory`.
    Memory {
        /// Maximum number of entries.
        capacity: usize,
    },
    /// A JetStream KV bucket shared by every instance: `nats_kv`.
    NatsKv {
        /// The bucket name.
        bucket: String,
    },
}

/// The source of a trusted issuer's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyLocation {
    /// A JWKS URL, fetched and cached.
    Url(String),
    /// A JWKS or single JWK file, read once.
    File(PathBuf),
}

/// One trusted issuer and where its keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TrustedIssuer {
    /// The issuer.
    pub issuer: ServiceId,
    /// The source of its keys.
    pub location: KeyLocation,
    /// The setting that named it, for error messages.
    key: String,
}

/// A loaded and checked `trustwire.toml`.
///
/// ```no_run
/// use trustwire::config::Config;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = Config::load("trustwire.toml".as_ref())?;
/// let signer = config.signer()?;
/// let _watcher = config.watch_key_dir(&signer)?;
/// let verifier = config.verifier()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// This service's id: the `iss` of its tokens and the `aud` it accepts.
    pub service: ServiceId,
    /// The key directory, if the service signs.
    pub key_dir: Option<PathBuf>,
    /// How often a [`KeyDirWatcher`] reloads the key directory.
    pub key_reload_interval: Duration,
    /// Default lifetime of signed tokens.
    pub token_lifetime: Duration,
    /// Longest lifetime a single signed token may request.
    pub signing_max_token_lifetime: Duration,
    /// Clock leeway of verification.
    pub leeway: Duration,
    /// Longest accepted token lifetime.
    pub max_token_lifetime: Duration,
    /// Largest accepted token, in bytes.
    pub max_token_bytes: usize,
    /// Largest accepted payload, in bytes.
    pub max_payload_bytes: usize,
    /// The policy.
    pub policy: Policy,
    /// The replay guard.
    pub replay_guard: ReplayGuardChoice,
    /// The trusted issuers.
    pub trust: Vec<TrustedIssuer>,
    /// Settings of every remote JWKS cache.
    pub jwks: RemoteJwksConfig,
    /// Directory of the last-good JWKS snapshots, one file per issuer.
    pub snapshot_dir: Option<PathBuf>,
    /// Whether plain `http://` JWKS URLs to hosts other than loopback are allowed.
    pub insecure_allow_http: bool,
}

impl Config {
    /// Loads `path`, with overrides from the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base_dir = path.parent().unwrap_or_else(|| Path::new("."));
        Self::parse(&text, path, base_dir, |name| std::env::var(name).ok())
    }

    /// Parses the text of a configuration file named `path`, with overrides
    /// from `env` (a lookup of environment variables; tests pass a map).
    /// Relative paths are resolved against `base_dir`.
    pub fn parse(
        text: &str,
        path: &Path,
        base_dir: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let table: toml::Table = text.parse().map_err(|err: toml::de::Error| ConfigError::Syntax {
            path: path.to_owned(),
            message: err.to_string().trim_end().to_owned(),
        })?;
        check_known_keys(&table)?;
        let mut reader = Reader {
            table: &table,
            env: &env,
            base_dir,
        };
        reader.config()
    }

    /// Opens the key directory and returns a signer with its active key and
    /// the configured lifetimes. Keep it current with [`Self::watch_key_dir`].
    pub fn signer(&self) -> Result<Signer, ConfigError> {
        let dir = self.require_key_dir()?;
        let keys = KeyDir::open(dir).map_err(|err| {
            ConfigError::invalid(
                KEY_DIR.key,
                format!("cannot open the key directory: {}", error_chain(&err)),
                format!(
                    "fix the directory, or create one with `trustwire keygen --service {} --dir {}`",
                    self.service,
                    dir.display()
                ),
            )
        })?;
        if keys.service() != &self.service {
            return Err(ConfigError::invalid(
                SERVICE_ID.key,
                format!(
                    "the key directory {} holds the keys of {}, not of {}",
                    dir.display(),
                    keys.service(),
                    self.service
                ),
                "set service.id to the directory's service or point service.key_dir at this service's keys",
            ));
        }

        Signer::builder(self.service.clone(), keys.into_active_key())
            .ttl(self.token_lifetime)
            .max_ttl(self.signing_max_token_lifetime)
            .build()
            .map_err(|err| {
                ConfigError::invalid(
                    TOKEN_LIFETIME.key,
                    err.to_string(),
                    "make signing.token_lifetime_seconds at most signing.max_token_lifetime_seconds",
                )
            })
    }

    /// Starts a [`KeyDirWatcher`] that keeps `signer` on the active key of
    /// the key directory, reloading it every `service.key_reload_seconds`.
    /// Call it inside a Tokio runtime.
    pub fn watch_key_dir(&self, signer: &Signer) -> Result<KeyDirWatcher, ConfigError> {
        let dir = self.require_key_dir()?;
        Ok(KeyDirWatcher::spawn(dir, signer.clone(), self.key_reload_interval))
    }

    fn require_key_dir(&self) -> Result<&Path, ConfigError> {
        self.key_dir.as_deref().ok_or_else(|| {
            ConfigError::invalid(
                KEY_DIR.key,
                "no key directory is set, so this service cannot sign",
                format!(
                    "set service.key_dir (or {}) to a directory created by `trustwire keygen`",
                    KEY_DIR.env
                ),
            )
        })
    }

    /// Builds the trust store: one key source per trusted issuer, each remote
    /// one with the `[jwks]` cache settings and, with `jwks.snapshot_dir`,
    /// its own snapshot file `<issuer>.json`. Nothing is fetched yet.
    pub fn trust_store(&self) -> Result<TrustStore, ConfigError> {
        if self.trust.is_empty() {
            return Err(ConfigError::invalid(
                TRUST.key,
                "no trusted issuer is configured, so no token could verify",
                format!(
                    "add a [[trust]] table with issuer and jwks_url, or set {}=ISSUER=URL",
                    TRUST.env
                ),
            ));
        }

        let mut store = TrustStore::new();
        for trusted in &self.trust {
            let source = match &trusted.location {
                KeyLocation::Url(url) => KeySource::Remote(self.remote_jwks(trusted, url)?),
                KeyLocation::File(path) => KeySource::file(path).map_err(|err| {
                    ConfigError::invalid(
                        &trusted.key,
                        err.to_string(),
                        "point it at a readable JWKS or JWK file of that issuer",
                    )
                })?,
            };
            store = store.trust(trusted.issuer.clone(), source);
        }
        Ok(store)
    }

    fn remote_jwks(&self, trusted: &TrustedIssuer, url: &str) -> Result<RemoteJwks, ConfigError> {
        let mut builder = RemoteJwks::builder(url).config(self.jwks.clone());
        if self.insecure_allow_http {
            builder = builder.insecure_allow_http();
        }
        if let Some(dir) = &self.snapshot_dir {
            builder = builder.snapshot(dir.join(snapshot_file_name(&trusted.issuer)));
        }
        builder.build().map_err(|err| {
            ConfigError::invalid(
                &trusted.key,
                err.to_string(),
                "use an https:// URL of the issuer's JWKS (plain http:// only to loopback, or with jwks.insecure_allow_http = true)",
            )
        })
    }

    /// Returns a verifier builder for this service with the trust store,
    /// policy, leeway, lifetimes and limits set, but no replay guard: set
    /// the one `replay.guard` names (a `KvReplayGuard` for `nats_kv`).
    pub fn verifier_builder(&self) -> Result<VerifierBuilder, ConfigError> {
        let builder = Verifier::builder(self.service.clone(), self.trust_store()?)
            .policy(self.policy.clone())
            .leeway(self.leeway)
            .max_lifetime(self.max_token_lifetime)
            .max_token_bytes(self.max_token_bytes)
            .max_payload_bytes(self.max_payload_bytes);
        Ok(builder)
    }

    /// Builds the verifier, with a memory replay guard. Fails when
    /// `replay.guard` is `nats_kv`: open the bucket and pass the guard to
    /// [`Self::verifier_builder`] instead.
    pub fn verifier(&self) -> Result<Verifier, ConfigError> {
        let capacity = match &self.replay_guard {
            ReplayGuardChoice::Memory { capacity } => *capacity,
            ReplayGuardChoice::NatsKv { bucket } => {
                return Err(ConfigError::invalid(
                    REPLAY_GUARD.key,
                    format!("nats_kv needs a NATS connection to open the bucket {bucket}"),
                    "open trustwire::nats::KvReplayGuard on it and pass it to Config::verifier_builder().replay_guard(..)",
                ));
            }
        };
        self.verifier_builder()?
            .replay_guard(Arc::new(MemoryReplayGuard::with_capacity(capacity)))
            .build()
            .map_err(|err| {
                let key = match err {
                    VerifierConfigError::LeewayTooLong(_) => LEEWAY.key,
                    VerifierConfigError::NoIssuers => TRUST.key,
                    _ => "verify",
                };
                ConfigError::invalid(key, err.to_string(), "fix the setting")
            })
    }
}

/// Returns the snapshot file name of `issuer`: its id with every character other
/// than ASCII letters, digits, `-` and `.` replaced by `_`, so a SPIFFE ID
/// stays one file name.
fn snapshot_file_name(issuer: &ServiceId) -> String {
    let name: String = issuer
        .as_str()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{name}.json")
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

/// Rejects keys that are not settings, suggesting the closest one.
fn check_known_keys(table: &toml::Table) -> Result<(), ConfigError> {
    let known: BTreeSet<&str> = SETTINGS.iter().map(|setting| setting.key).collect();
    let sections: BTreeSet<&str> = known
        .iter()
        .filter_map(|key| key.split_once('.'))
        .map(|(section, _)| section)
        .collect();

    for (name, value) in table {
        if name == "trust" {
            continue;
        }
        let toml::Value::Table(section) = value else {
            return Err(unknown_key(name, &known));
        };
        if !sections.contains(name.as_str()) {
            return Err(unknown_key(name, &known));
        }
        for key in section.keys() {
            let dotted = format!("{name}.{key}");
            if !known.contains(dotted.as_str()) {
                return Err(unknown_key(&dotted, &known));
            }
        }
    }
    Ok(())
}

fn unknown_key(key: &str, known: &BTreeSet<&str>) -> ConfigError {
    let closest = known
        .iter()
        .map(|candidate| (edit_distance(key, candidate), *candidate))
        .min()
        .filter(|(distance, _)| *distance <= 3);
    let fix = match closest {
        Some((_, candidate)) => format!("did you mean {candidate}?"),
        None => "remove it; trustwire::config::SETTINGS lists every setting".to_owned(),
    };
    ConfigError::invalid(key, "unknown setting", fix)
}

/// Levenshtein distance, for suggesting a setting name.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// A raw value and where it came from.
enum Raw<'a> {
    File(&'a toml::Value),
    Env(String),
}

/// Reads settings from the table, each overridden by its environment
/// variable, and names the source of a bad value in the error.
struct Reader<'a, E: Fn(&str) -> Option<String>> {
    table: &'a toml::Table,
    env: &'a E,
    base_dir: &'a Path,
}

impl<'a, E: Fn(&str) -> Option<String>> Reader<'a, E> {
    fn config(&mut self) -> Result<Config, ConfigError> {
        let service = self.service_id()?;
        let key_dir = self.path(&KEY_DIR)?;
        let key_reload_interval = self.seconds(&KEY_RELOAD, DEFAULT_RELOAD_INTERVAL, 1)?;

        let token_lifetime = self.seconds(&TOKEN_LIFETIME, DEFAULT_TTL, 1)?;
        let signing_max_token_lifetime = self.seconds(&SIGN_MAX_LIFETIME, Duration::from_secs(3600), 1)?;
        if token_lifetime > signing_max_token_lifetime {
            return Err(ConfigError::invalid(
                TOKEN_LIFETIME.key,
                format!(
                    "{} s is longer than signing.max_token_lifetime_seconds ({} s)",
                    token_lifetime.as_secs(),
                    signing_max_token_lifetime.as_secs()
                ),
                "lower it or raise signing.max_token_lifetime_seconds",
            ));
        }

        let leeway = self.seconds(&LEEWAY, DEFAULT_LEEWAY, 0)?;
        if leeway > MAX_SAFE_LEEWAY {
            return Err(self.bad_value(
                &LEEWAY,
                format!("{} s is above the 300 s limit", leeway.as_secs()),
                "set it to 300 or less: a longer leeway keeps expired and stolen tokens valid that much longer",
            ));
        }
        let max_token_lifetime = self.seconds(&MAX_LIFETIME, DEFAULT_MAX_LIFETIME, 1)?;
        let max_token_bytes = self.count(&MAX_TOKEN_BYTES, DEFAULT_MAX_TOKEN_BYTES, 1)?;
        let max_payload_bytes = self.count(&MAX_PAYLOAD_BYTES, DEFAULT_MAX_PAYLOAD_BYTES, 1)?;
        let policy = self.policy()?;
        let replay_guard = self.replay_guard()?;

        let jwks = self.jwks_config()?;
        let snapshot_dir = self.path(&SNAPSHOT_DIR)?;
        let insecure_allow_http = self.boolean(&ALLOW_HTTP, false)?;
        let trust = self.trust()?;

        Ok(Config {
            service,
            key_dir,
            key_reload_interval,
            token_lifetime,
            signing_max_token_lifetime,
            leeway,
            max_token_lifetime,
            max_token_bytes,
            max_payload_bytes,
            policy,
            replay_guard,
            trust,
            jwks,
            snapshot_dir,
            insecure_allow_http,
        })
    }

    fn jwks_config(&mut self) -> Result<RemoteJwksConfig, ConfigError> {
        let defaults = RemoteJwksConfig::default();
        let config = RemoteJwksConfig {
            fetch_timeout: self.seconds(&FETCH_TIMEOUT, defaults.fetch_timeout, 1)?,
            max_response_bytes: self.count(&MAX_RESPONSE, defaults.max_response_bytes, 1)?,
            default_ttl: self.seconds(&DEFAULT_TTL_S, defaults.default_ttl, 1)?,
            min_ttl: self.seconds(&MIN_TTL, defaults.min_ttl, 1)?,
            max_ttl: self.seconds(&MAX_TTL, defaults.max_ttl, 1)?,
            unknown_kid_cooldown: self.seconds(&COOLDOWN, defaults.unknown_kid_cooldown, 0)?,
            max_staleness: self.seconds(&MAX_STALENESS, defaults.max_staleness, 0)?,
            retry_interval: self.seconds(&RETRY_INTERVAL, defaults.retry_interval, 1)?,
        };
        if config.min_ttl > config.max_ttl {
            return Err(ConfigError::invalid(
                MIN_TTL.key,
                format!(
                    "{} s is above jwks.max_ttl_seconds ({} s)",
                    config.min_ttl.as_secs(),
                    config.max_ttl.as_secs()
                ),
                "make jwks.min_ttl_seconds at most jwks.max_ttl_seconds",
            ));
        }
        Ok(config)
    }

    /// Returns the raw value of `setting`: the environment variable if set,
    /// else the file's value.
    fn raw(&self, setting: &Setting) -> Option<Raw<'a>> {
        if let Some(value) = (self.env)(setting.env) {
            return Some(Raw::Env(value));
        }
        let (section, name) = setting.key.split_once('.')?;
        self.table.get(section)?.as_table()?.get(name).map(Raw::File)
    }

    /// Returns an error about the value of `setting` that names where it came from.
    fn bad_value(&self, setting: &Setting, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
        let key = match (self.env)(setting.env) {
            Some(_) => format!("{} (from the environment, overriding {})", setting.env, setting.key),
            None => setting.key.to_owned(),
        };
        ConfigError::invalid(key, problem, fix)
    }

    fn string(&self, setting: &Setting) -> Result<Option<String>, ConfigError> {
        match self.raw(setting) {
            None => Ok(None),
            Some(Raw::Env(value)) => Ok(Some(value)),
            Some(Raw::File(toml::Value::String(value))) => Ok(Some(value.clone())),
            Some(Raw::File(other)) => Err(self.bad_value(
                setting,
                format!("expected a string, found {}", other.type_str()),
                "quote the value",
            )),
        }
    }

    fn integer(&self, setting: &Setting, min: u64) -> Result<Option<u64>, ConfigError> {
        let fix = || {
            format!(
                "set it to a whole number of at least {min}, or remove it for the default {}",
                setting.default
            )
        };
        let value = match self.raw(setting) {
            None => return Ok(None),
            Some(Raw::Env(text)) => text
                .trim()
                .parse::<u64>()
                .map_err(|_| self.bad_value(setting, format!("{text:?} is not a whole number"), fix()))?,
            Some(Raw::File(toml::Value::Integer(number))) => {
                u64::try_from(*number).map_err(|_| self.bad_value(setting, format!("{number} is negative"), fix()))?
            }
            Some(Raw::File(other)) => {
                return Err(self.bad_value(
                    setting,
                    format!("expected a whole number, found {}", other.type_str()),
                    fix(),
                ));
            }
        };
        if value < min {
            return Err(self.bad_value(setting, format!("{value} is below the minimum of {min}"), fix()));
        }
        Ok(Some(value))
    }

    fn seconds(&self, setting: &Setting, default: Duration, min: u64) -> Result<Duration, ConfigError> {
        Ok(self.integer(setting, min)?.map_or(default, Duration::from_secs))
    }

    fn count(&self, setting: &Setting, default: usize, min: u64) -> Result<usize, ConfigError> {
        match self.integer(setting, min)? {
            None => Ok(default),
            Some(value) => {
                usize::try_from(value).map_err(|_| self.bad_value(setting, format!("{value} is too large"), "lower it"))
            }
        }
    }

    fn boolean(&self, setting: &Setting, default: bool) -> Result<bool, ConfigError> {
        match self.raw(setting) {
            None => Ok(default),
            Some(Raw::File(toml::Value::Boolean(value))) => Ok(*value),
            Some(Raw::Env(text)) if text == "true" => Ok(true),
            Some(Raw::Env(text)) if text == "false" => Ok(false),
            Some(_) => Err(self.bad_value(setting, "expected true or false", "set it to true or false")),
        }
    }

    fn path(&self, setting: &Setting) -> Result<Option<PathBuf>, ConfigError> {
        match self.string(setting)? {
            None => Ok(None),
            Some(value) if value.is_empty() => {
                Err(self.bad_value(setting, "the path is empty", "set a path, or remove the setting"))
            }
            Some(value) => Ok(Some(self.base_dir.join(value))),
        }
    }

    fn service_id(&self) -> Result<ServiceId, ConfigError> {
        let Some(value) = self.string(&SERVICE_ID)? else {
            return Err(ConfigError::invalid(
                SERVICE_ID.key,
                "missing",
                format!(
                    "set id in the [service] table (or {}) to this service's name or SPIFFE ID",
                    SERVICE_ID.env
                ),
            ));
        };
        ServiceId::new(&value).map_err(|err| {
            self.bad_value(
                &SERVICE_ID,
                format!("{value:?} is not a valid service id: {err}"),
                "use a name such as \"orders\" or a SPIFFE ID such as \"spiffe://example.org/orders\"",
            )
        })
    }

    fn policy(&self) -> Result<Policy, ConfigError> {
        let inline = self
            .table
            .get("policy")
            .and_then(toml::Value::as_table)
            .and_then(|policy| policy.get("allow"));

        if let Some(path) = self.path(&POLICY_FILE)? {
            if inline.is_some() && (self.env)(POLICY_FILE.env).is_none() {
                return Err(ConfigError::invalid(
                    POLICY_FILE.key,
                    "both verify.policy_file and [[policy.allow]] rules are set",
                    "keep one of them",
                ));
            }
            let text = std::fs::read_to_string(&path).map_err(|err| {
                self.bad_value(
                    &POLICY_FILE,
                    format!("cannot read {}: {err}", path.display()),
                    "point it at a readable policy file",
                )
            })?;
            return Policy::from_toml(&text).map_err(|err| {
                self.bad_value(
                    &POLICY_FILE,
                    format!("{} is invalid: {err}", path.display()),
                    "fix the policy file",
                )
            });
        }

        let Some(allow) = inline else {
            return Ok(Policy::allow_all_trusted());
        };
        let mut document = toml::Table::new();
        document.insert("allow".into(), allow.clone());
        Policy::from_toml(&document.to_string()).map_err(|err| {
            ConfigError::invalid(
                POLICY_ALLOW.key,
                err.to_string(),
                "each [[policy.allow]] needs an issuer and may list channels and routes",
            )
        })
    }

    fn replay_guard(&self) -> Result<ReplayGuardChoice, ConfigError> {
        let guard = self.string(&REPLAY_GUARD)?;
        match guard.as_deref() {
            None | Some("memory") => Ok(ReplayGuardChoice::Memory {
                capacity: self.count(&REPLAY_CAPACITY, DEFAULT_CAPACITY, 1)?,
            }),
            Some("nats_kv") => Ok(ReplayGuardChoice::NatsKv {
                bucket: self
                    .string(&REPLAY_BUCKET)?
                    .unwrap_or_else(|| REPLAY_BUCKET.default.to_owned()),
            }),
            Some(other) => Err(self.bad_value(
                &REPLAY_GUARD,
                format!("unknown replay guard {other:?}"),
                "use \"memory\" (one process) or \"nats_kv\" (shared by every instance through JetStream KV)",
            )),
        }
    }

    fn trust(&self) -> Result<Vec<TrustedIssuer>, ConfigError> {
        let template = self.string(&URL_TEMPLATE)?;
        let mut trusted = match (self.env)(TRUST.env) {
            Some(list) => self.trust_from_env(&list)?,
            None => self.trust_from_file(template.as_deref())?,
        };

        let mut seen = BTreeMap::new();
        for entry in &trusted {
            if let Some(first) = seen.insert(entry.issuer.clone(), entry.key.clone()) {
                return Err(ConfigError::invalid(
                    &entry.key,
                    format!("the issuer {} is already trusted by {first}", entry.issuer),
                    "list each issuer once",
                ));
            }
        }
        trusted.sort_by(|a, b| a.issuer.cmp(&b.issuer));
        Ok(trusted)
    }

    fn trust_from_env(&self, list: &str) -> Result<Vec<TrustedIssuer>, ConfigError> {
        let mut trusted = Vec::new();
        for item in list.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            let Some((issuer, location)) = item.split_once('=') else {
                return Err(ConfigError::invalid(
                    TRUST.env,
                    format!("{item:?} is not ISSUER=URL_OR_FILE"),
                    "write it as orders=https://orders.internal/.well-known/jwks.json, comma-separated",
                ));
            };
            let issuer = ServiceId::new(issuer.trim()).map_err(|err| {
                ConfigError::invalid(
                    TRUST.env,
                    format!("{issuer:?} is not a valid service id: {err}"),
                    "fix the issuer",
                )
            })?;
            let location = location.trim();
            let location = if location.starts_with("https://") || location.starts_with("http://") {
                KeyLocation::Url(location.to_owned())
            } else {
                KeyLocation::File(self.base_dir.join(location))
            };
            trusted.push(TrustedIssuer {
                issuer,
                location,
                key: TRUST.env.to_owned(),
            });
        }
        Ok(trusted)
    }

    fn trust_from_file(&self, template: Option<&str>) -> Result<Vec<TrustedIssuer>, ConfigError> {
        let Some(entries) = self.table.get("trust") else {
            return Ok(Vec::new());
        };
        let toml::Value::Array(entries) = entries else {
            return Err(ConfigError::invalid(
                TRUST.key,
                "expected an array of tables",
                "write each trusted issuer as a [[trust]] table",
            ));
        };

        let mut trusted = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let key = |name: &str| format!("trust[{index}].{name}");
            let toml::Value::Table(entry) = entry else {
                return Err(ConfigError::invalid(
                    format!("trust[{index}]"),
                    "expected a table",
                    "write each trusted issuer as a [[trust]] table",
                ));
            };
            if let Some(unknown) = entry.keys().find(|name| !TRUST_KEYS.contains(&name.as_str())) {
                return Err(ConfigError::invalid(
                    key(unknown),
                    "unknown setting",
                    "a [[trust]] table has issuer and one of jwks_url and jwks_file",
                ));
            }

            let text = |name: &str| -> Result<Option<&str>, ConfigError> {
                match entry.get(name) {
                    None => Ok(None),
                    Some(toml::Value::String(value)) => Ok(Some(value.as_str())),
                    Some(other) => Err(ConfigError::invalid(
                        key(name),
                        format!("expected a string, found {}", other.type_str()),
                        "quote the value",
                    )),
                }
            };
            let issuer = text("issuer")?.ok_or_else(|| {
                ConfigError::invalid(
                    key("issuer"),
                    "missing",
                    "name the trusted service, such as issuer = \"orders\"",
                )
            })?;
            let issuer = ServiceId::new(issuer).map_err(|err| {
                ConfigError::invalid(
                    key("issuer"),
                    format!("{issuer:?} is not a valid service id: {err}"),
                    "use a name such as \"orders\" or a SPIFFE ID",
                )
            })?;

            let (location, location_key) = match (text("jwks_url")?, text("jwks_file")?, template) {
                (Some(_), Some(_), _) => {
                    return Err(ConfigError::invalid(
                        key("jwks_url"),
                        "both jwks_url and jwks_file are set",
                        "keep one of them",
                    ));
                }
                (Some(url), None, _) => (KeyLocation::Url(url.to_owned()), key("jwks_url")),
                (None, Some(file), _) => (KeyLocation::File(self.base_dir.join(file)), key("jwks_file")),
                (None, None, Some(template)) => (
                    KeyLocation::Url(template.replace("{issuer}", issuer.as_str())),
                    URL_TEMPLATE.key.to_owned(),
                ),
                (None, None, None) => {
                    return Err(ConfigError::invalid(
                        key("jwks_url"),
                        format!("no key source for the issuer {issuer}"),
                        "set jwks_url or jwks_file, or a jwks.url_template with {issuer} in it",
                    ));
                }
            };
            trusted.push(TrustedIssuer {
                issuer,
                location,
                key: location_key,
            });
        }
        Ok(trusted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_have_unique_keys_and_env_names() {
        let keys: BTreeSet<&str> = SETTINGS.iter().map(|setting| setting.key).collect();
        assert_eq!(keys.len(), SETTINGS.len());
        let envs: BTreeSet<&str> = SETTINGS.iter().map(|setting| setting.env).collect();
        // policy.allow and verify.policy_file share TRUSTWIRE_POLICY_FILE.
        assert_eq!(envs.len(), SETTINGS.len() - 1);
        assert!(SETTINGS.iter().all(|setting| setting.env.starts_with("TRUSTWIRE_")));
    }

    #[test]
    fn defaults_match_the_library() {
        let jwks = RemoteJwksConfig::default();
        assert_eq!(FETCH_TIMEOUT.default, jwks.fetch_timeout.as_secs().to_string());
        assert_eq!(MAX_RESPONSE.default, jwks.max_response_bytes.to_string());
        assert_eq!(DEFAULT_TTL_S.default, jwks.default_ttl.as_secs().to_string());
        assert_eq!(MIN_TTL.default, jwks.min_ttl.as_secs().to_string());
        assert_eq!(MAX_TTL.default, jwks.max_ttl.as_secs().to_string());
        assert_eq!(COOLDOWN.default, jwks.unknown_kid_cooldown.as_secs().to_string());
        assert_eq!(MAX_STALENESS.default, jwks.max_staleness.as_secs().to_string());
        assert_eq!(RETRY_INTERVAL.default, jwks.retry_interval.as_secs().to_string());
        assert_eq!(LEEWAY.default, DEFAULT_LEEWAY.as_secs().to_string());
        assert_eq!(MAX_LIFETIME.default, DEFAULT_MAX_LIFETIME.as_secs().to_string());
        assert_eq!(MAX_TOKEN_BYTES.default, DEFAULT_MAX_TOKEN_BYTES.to_string());
        assert_eq!(MAX_PAYLOAD_BYTES.default, DEFAULT_MAX_PAYLOAD_BYTES.to_string());
        assert_eq!(TOKEN_LIFETIME.default, DEFAULT_TTL.as_secs().to_string());
        assert_eq!(KEY_RELOAD.default, DEFAULT_RELOAD_INTERVAL.as_secs().to_string());
        assert_eq!(REPLAY_CAPACITY.default, DEFAULT_CAPACITY.to_string());
        #[cfg(feature = "nats")]
        assert_eq!(REPLAY_BUCKET.default, crate::nats::DEFAULT_REPLAY_BUCKET);
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("leway", "leeway"), 1);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn snapshot_names_are_one_file() {
        let spiffe = ServiceId::new("spiffe://example.org/ns/orders").unwrap();
        assert_eq!(snapshot_file_name(&spiffe), "spiffe___example.org_ns_orders.json");
    }
}
