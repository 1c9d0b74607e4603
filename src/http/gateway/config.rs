//! The gateway's configuration file.
//!
//! ```toml
//! # The gateway's own keys, created with `trustwire keygen --service edge`.
//! # Relative paths are relative to this file.
//! key_dir = "keys/edge"
//! listen = "127.0.0.1:9400"     # default
//! token_ttl_s = 60              # default
//! api_keys = "api-keys.toml"    # optional: SHA-256 hashes of API keys
//!
//! [headers]                     # optional; the defaults are shown
//! method = "X-Forwarded-Method"
//! uri = "X-Forwarded-Uri"
//! api_key = "X-Api-Key"
//! token = "Authorization"       # sent as "Bearer <token>"
//!
//! [[idp]]                       # optional, repeatable
//! issuer = "https://idp.example.com/"
//! jwks_url = "https://idp.example.com/.well-known/jwks.json"
//! audience = "public-api"
//! typ = ["JWT", "at+jwt"]       # default
//! subject_prefix = "idp:"       # default ""
//!
//! [[route]]                     # at least one
//! prefix = "/orders"
//! upstream = "orders"
//! methods = ["GET", "POST"]     # default: any
//! consumers = ["acme"]          # default: any authenticated consumer
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::{HeaderName, InvalidHeaderName};
use serde::Deserialize;

use super::{ApiKeys, ApiKeysError, Gateway, GatewayError, IdentityProvider, Route};
use crate::envelope::{DEFAULT_TTL, InvalidBinding, SignError, Signer};
use crate::identity::ServiceId;
use crate::jwks::{RemoteJwks, SourceError};
use crate::keys::{KeyDir, KeyError};

/// The parsed configuration file of `trustwire gateway`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    key_dir: PathBuf,
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    #[serde(default = "default_ttl_s")]
    token_ttl_s: u64,
    #[serde(default)]
    api_keys: Option<PathBuf>,
    #[serde(default)]
    headers: Headers,
    #[serde(default)]
    idp: Vec<IdpConfig>,
    #[serde(default)]
    route: Vec<RouteConfig>,
    #[serde(skip)]
    base_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Headers {
    #[serde(default = "default_method_header")]
    method: String,
    #[serde(default = "default_uri_header")]
    uri: String,
    #[serde(default = "default_api_key_header")]
    api_key: String,
    #[serde(default = "default_token_header")]
    token: String,
}

impl Default for Headers {
    fn default() -> Self {
        Self {
            method: default_method_header(),
            uri: default_uri_header(),
            api_key: default_api_key_header(),
            token: default_token_header(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdpConfig {
    issuer: String,
    jwks_url: String,
    audience: String,
    #[serde(default)]
    typ: Option<Vec<String>>,
    #[serde(default)]
    subject_prefix: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteConfig {
    prefix: String,
    upstream: ServiceId,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    consumers: Option<Vec<String>>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9400))
}

fn default_ttl_s() -> u64 {
    DEFAULT_TTL.as_secs()
}

fn default_method_header() -> String {
    super::DEFAULT_METHOD_HEADER.to_owned()
}

fn default_uri_header() -> String {
    super::DEFAULT_URI_HEADER.to_owned()
}

fn default_api_key_header() -> String {
    super::DEFAULT_API_KEY_HEADER.to_owned()
}

fn default_token_header() -> String {
    "authorization".to_owned()
}

/// Why a gateway configuration cannot be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the gateway configuration {path}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The TOML is invalid or has unknown keys.
    #[error("invalid gateway configuration: {0}")]
    Invalid(String),

    /// The key directory cannot be opened.
    #[error("cannot open the gateway's key directory")]
    Keys(#[source] KeyError),

    /// The signer cannot be built with the configured token lifetime.
    #[error("invalid token_ttl_s")]
    Signer(#[source] SignError),

    /// The API keys file is invalid.
    #[error("cannot load the API keys file {path}")]
    ApiKeys {
        /// The file.
        path: String,
        /// What is wrong with it.
        #[source]
        source: ApiKeysError,
    },

    /// A header name is invalid.
    #[error("invalid header name {name:?} in [headers]")]
    Header {
        /// The name as written.
        name: String,
        /// Why it is invalid.
        #[source]
        source: InvalidHeaderName,
    },

    /// An identity provider's JWKS URL is invalid.
    #[error("invalid jwks_url for identity provider {issuer:?}")]
    Idp {
        /// The provider's issuer.
        issuer: String,
        /// Why the URL was rejected.
        #[source]
        source: SourceError,
    },

    /// A route prefix is invalid.
    #[error("invalid route prefix {prefix:?}")]
    Route {
        /// The prefix as written.
        prefix: String,
        /// Why it is invalid.
        #[source]
        source: InvalidBinding,
    },

    /// The configuration describes a gateway that would refuse everything.
    #[error("the gateway configuration is incomplete")]
    Gateway(#[source] GatewayError),
}

impl GatewayConfig {
    /// Reads and parses a configuration file; relative paths in it are
    /// taken relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let base_dir = path.parent().unwrap_or(Path::new(".")).to_owned();
        Self::parse(&text, &base_dir)
    }

    /// Parses configuration text, resolving relative paths against `base_dir`.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let mut config: Self = toml::from_str(text).map_err(|err| ConfigError::Invalid(err.to_string()))?;
        config.base_dir = base_dir.to_owned();
        Ok(config)
    }

    /// The address to listen on. Default `127.0.0.1:9400`.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// Overrides the address to listen on.
    pub fn set_listen(&mut self, listen: SocketAddr) {
        self.listen = listen;
    }

    /// Loads the keys and files the configuration names and builds the gateway.
    pub fn build(&self) -> Result<Gateway, ConfigError> {
        let keys = KeyDir::open(&self.base_dir.join(&self.key_dir)).map_err(ConfigError::Keys)?;
        let service = keys.service().clone();
        let signer = Signer::builder(service, keys.into_active_key())
            .ttl(Duration::from_secs(self.token_ttl_s))
            .build()
            .map_err(ConfigError::Signer)?;

        let mut builder = Gateway::builder(signer)
            .api_key_header(header_name(&self.headers.api_key)?)
            .forwarded_headers(header_name(&self.headers.method)?, header_name(&self.headers.uri)?)
            .token_header(header_name(&self.headers.token)?);

        if let Some(path) = &self.api_keys {
            let path = self.base_dir.join(path);
            let keys = ApiKeys::load(&path).map_err(|source| ConfigError::ApiKeys {
                path: path.display().to_string(),
                source,
            })?;
            builder = builder.api_keys(keys);
        }

        for idp in &self.idp {
            let jwks = RemoteJwks::builder(idp.jwks_url.as_str())
                .build()
                .map_err(|source| ConfigError::Idp {
                    issuer: idp.issuer.clone(),
                    source,
                })?;
            let mut provider = IdentityProvider::new(idp.issuer.as_str(), jwks, idp.audience.as_str())
                .subject_prefix(idp.subject_prefix.as_str());
            if let Some(types) = &idp.typ {
                provider = provider.accepted_types(types.iter().cloned());
            }
            builder = builder.identity_provider(provider);
        }

        for route in &self.route {
            let mut built = Route::new(&route.prefix, route.upstream.clone()).map_err(|source| ConfigError::Route {
                prefix: route.prefix.clone(),
                source,
            })?;
            built = built.methods(route.methods.iter().cloned());
            if let Some(consumers) = &route.consumers {
                built = built.consumers(consumers.iter().cloned());
            }
            builder = builder.route(built);
        }

        builder.build().map_err(ConfigError::Gateway)
    }
}

fn header_name(name: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::try_from(name).map_err(|source| ConfigError::Header {
        name: name.to_owned(),
        source,
    })
}
