//! Policy: which issuer may send on which channel and call which HTTP route.
//!
//! A policy file lists allow rules; anything not allowed is denied:
//!
//! ```toml
//! [[allow]]
//! issuer = "orders"
//! channels = ["nats:orders.>", "amqp:events/orders.#"]
//! routes = ["POST /v1/charges", "GET /v1/charges/*"]
//! ```
//!
//! Channel patterns follow the broker's own wildcards:
//!
//! - `nats:<subject>`: tokens split on `.`; `*` matches one token, `>` as the
//!   last token matches one or more tokens.
//! - `amqp:<exchange>/<routing key>`: the exchange matches exactly (or `*`
//!   for any exchange); routing-key words split on `.`; `*` matches one word,
//!   `#` matches zero or more words.
//! - any other pattern matches only the identical channel.
//!
//! Route patterns are `METHOD /path`: the method matches exactly, or `*` for
//! any method; path segments split on `/`; `*` matches one segment and `**`
//! as the last segment matches the rest of the path (zero or more segments).
//! The query is not part of route matching.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::envelope::Binding;
use crate::identity::ServiceId;

/// An allow-list of issuers, channels and routes.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `None` allows every trusted issuer everywhere.
    rules: Option<BTreeMap<ServiceId, Rules>>,
}

#[derive(Debug, Clone, Default)]
struct Rules {
    channels: Vec<String>,
    routes: Vec<(String, String)>,
}

/// Why a policy file was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The TOML is invalid or has unknown keys.
    #[error("invalid policy: {0}")]
    Invalid(String),

    /// A route pattern is not `METHOD /path`.
    #[error(
        "invalid route pattern {pattern:?} for issuer {issuer}: expected \"METHOD /path\", for example \"POST /v1/charges\""
    )]
    InvalidRoute {
        /// The issuer the rule is for.
        issuer: String,
        /// The pattern.
        pattern: String,
    },

    /// A `>` or `**` that is not the last token, or an empty pattern.
    #[error("invalid channel pattern {pattern:?} for issuer {issuer}: {reason}")]
    InvalidChannel {
        /// The issuer the rule is for.
        issuer: String,
        /// The pattern.
        pattern: String,
        /// What is wrong.
        reason: &'static str,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    allow: Vec<AllowRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowRule {
    issuer: ServiceId,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    routes: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Self::allow_all_trusted()
    }
}

impl Policy {
    /// Allows every trusted issuer on every channel and route: the trust
    /// store is then the only allow-list.
    pub fn allow_all_trusted() -> Self {
        Self { rules: None }
    }

    /// A policy that denies everything until rules are added.
    pub fn deny_all() -> Self {
        Self {
            rules: Some(BTreeMap::new()),
        }
    }

    /// Allows `issuer` on channels matching `pattern`.
    pub fn allow_channel(mut self, issuer: ServiceId, pattern: &str) -> Result<Self, PolicyError> {
        check_channel_pattern(issuer.as_str(), pattern)?;
        self.rules
            .get_or_insert_with(BTreeMap::new)
            .entry(issuer)
            .or_default()
            .channels
            .push(pattern.to_owned());
        Ok(self)
    }

    /// Allows `issuer` to call routes matching `pattern` (`METHOD /path`).
    pub fn allow_route(mut self, issuer: ServiceId, pattern: &str) -> Result<Self, PolicyError> {
        let route = parse_route(issuer.as_str(), pattern)?;
        self.rules
            .get_or_insert_with(BTreeMap::new)
            .entry(issuer)
            .or_default()
            .routes
            .push(route);
        Ok(self)
    }

    /// Parses a policy file.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|err| PolicyError::Invalid(err.to_string()))?;
        let mut policy = Self::deny_all();
        for rule in file.allow {
            for pattern in &rule.channels {
                policy = policy.allow_channel(rule.issuer.clone(), pattern)?;
            }
            for pattern in &rule.routes {
                policy = policy.allow_route(rule.issuer.clone(), pattern)?;
            }
            policy
                .rules
                .get_or_insert_with(BTreeMap::new)
                .entry(rule.issuer)
                .or_default();
        }
        Ok(policy)
    }

    /// Whether `issuer` may send on or call `binding`. A token with no
    /// binding is allowed only by an allow-all policy.
    pub fn allows(&self, issuer: &str, binding: Option<&Binding>) -> bool {
        let Some(rules) = &self.rules else {
            return true;
        };
        let Some(rules) = rules.get(issuer) else {
            return false;
        };
        match binding {
            None => false,
            Some(Binding::Channel(channel)) => rules.channels.iter().any(|pattern| channel_matches(pattern, channel)),
            Some(Binding::Http { method, target }) => {
                let path = target.split('?').next().unwrap_or("");
                rules.routes.iter().any(|(pattern_method, pattern_path)| {
                    (pattern_method == "*" || pattern_method == method) && path_matches(pattern_path, path)
                })
            }
        }
    }
}

fn check_channel_pattern(issuer: &str, pattern: &str) -> Result<(), PolicyError> {
    let fail = |reason| PolicyError::InvalidChannel {
        issuer: issuer.to_owned(),
        pattern: pattern.to_owned(),
        reason,
    };
    if pattern.is_empty() {
        return Err(fail("the pattern is empty"));
    }
    if let Some(subject) = pattern.strip_prefix("nats:") {
        let tokens: Vec<&str> = subject.split('.').collect();
        if tokens.iter().any(|token| token.is_empty()) {
            return Err(fail("a NATS subject has an empty token"));
        }
        if tokens[..tokens.len() - 1].contains(&">") {
            return Err(fail("'>' may only be the last token"));
        }
    }
    Ok(())
}

fn parse_route(issuer: &str, pattern: &str) -> Result<(String, String), PolicyError> {
    let fail = || PolicyError::InvalidRoute {
        issuer: issuer.to_owned(),
        pattern: pattern.to_owned(),
    };
    let (method, path) = pattern.trim().split_once(' ').ok_or_else(fail)?;
    let path = path.trim();
    if method.is_empty() || !path.starts_with('/') || path.contains('?') {
        return Err(fail());
    }
    let segments: Vec<&str> = path.split('/').collect();
    if segments[..segments.len() - 1].contains(&"**") {
        return Err(fail());
    }
    Ok((method.to_owned(), path.to_owned()))
}

fn channel_matches(pattern: &str, channel: &str) -> bool {
    if let (Some(pattern), Some(subject)) = (pattern.strip_prefix("nats:"), channel.strip_prefix("nats:")) {
        return nats_matches(pattern, subject);
    }
    if let (Some(pattern), Some(target)) = (pattern.strip_prefix("amqp:"), channel.strip_prefix("amqp:")) {
        return amqp_matches(pattern, target);
    }
    pattern == channel
}

fn nats_matches(pattern: &str, subject: &str) -> bool {
    let mut pattern_tokens = pattern.split('.');
    let mut subject_tokens = subject.split('.');
    loop {
        match (pattern_tokens.next(), subject_tokens.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(token)) if !token.is_empty() => {}
            (Some(expected), Some(token)) if expected == token => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn amqp_matches(pattern: &str, target: &str) -> bool {
    let (Some((pattern_exchange, pattern_key)), Some((exchange, key))) =
        (pattern.split_once('/'), target.split_once('/'))
    else {
        return pattern == target;
    };
    if pattern_exchange != "*" && pattern_exchange != exchange {
        return false;
    }
    let pattern_words: Vec<&str> = pattern_key.split('.').collect();
    let words: Vec<&str> = if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    };
    topic_matches(&pattern_words, &words)
}

/// AMQP topic matching: `*` is exactly one word, `#` zero or more words.
fn topic_matches(pattern: &[&str], words: &[&str]) -> bool {
    match pattern.split_first() {
        None => words.is_empty(),
        Some((&"#", rest)) => (0..=words.len()).any(|skip| topic_matches(rest, &words[skip..])),
        Some((&"*", rest)) => !words.is_empty() && topic_matches(rest, &words[1..]),
        Some((word, rest)) => words.first() == Some(word) && topic_matches(rest, &words[1..]),
    }
}

fn path_matches(pattern: &str, path: &str) -> bool {
    let pattern_segments: Vec<&str> = pattern.split('/').collect();
    let segments: Vec<&str> = path.split('/').collect();
    for (index, expected) in pattern_segments.iter().enumerate() {
        if *expected == "**" {
            return true;
        }
        match segments.get(index) {
            Some(segment) if *expected == "*" && !segment.is_empty() => {}
            Some(segment) if segment == expected => {}
            _ => return false,
        }
    }
    segments.len() == pattern_segments.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_wildcards() {
        assert!(nats_matches("orders.*", "orders.created"));
        assert!(!nats_matches("orders.*", "orders.created.eu"));
        assert!(nats_matches("orders.>", "orders.created.eu"));
        assert!(!nats_matches("orders.>", "orders"));
        assert!(!nats_matches("orders.created", "orders.deleted"));
        assert!(nats_matches("orders.created", "orders.created"));
        assert!(!nats_matches("orders", "orders.created"));
    }

    #[test]
    fn amqp_wildcards() {
        assert!(amqp_matches("events/orders.#", "events/orders"));
        assert!(amqp_matches("events/orders.#", "events/orders.created.eu"));
        assert!(amqp_matches("events/*.created", "events/orders.created"));
        assert!(!amqp_matches("events/*.created", "events/created"));
        assert!(!amqp_matches("events/orders.#", "other/orders.created"));
        assert!(amqp_matches("*/orders", "events/orders"));
        assert!(amqp_matches("/jobs", "/jobs"));
        assert!(amqp_matches("events/#", "events/"));
    }

    #[test]
    fn route_patterns() {
        assert!(path_matches("/v1/charges/*", "/v1/charges/42"));
        assert!(!path_matches("/v1/charges/*", "/v1/charges/42/refund"));
        assert!(path_matches("/v1/**", "/v1/charges/42/refund"));
        assert!(!path_matches("/v1/charges", "/v1/charges/42"));
        assert!(!path_matches("/v1/charges/*", "/v1/charges/"));
    }

    #[test]
    fn toml_policy() {
        let policy = Policy::from_toml(
            r#"
            [[allow]]
            issuer = "orders"
            channels = ["nats:orders.>"]
            routes = ["POST /v1/charges", "* /health"]
            "#,
        )
        .unwrap();
        let channel = Binding::channel("nats:orders.created").unwrap();
        let other_channel = Binding::channel("nats:payments.created").unwrap();
        let route = Binding::http("POST", "/v1/charges?x=1").unwrap();
        let wrong_method = Binding::http("GET", "/v1/charges").unwrap();
        let health = Binding::http("GET", "/health").unwrap();

        assert!(policy.allows("orders", Some(&channel)));
        assert!(!policy.allows("orders", Some(&other_channel)));
        assert!(policy.allows("orders", Some(&route)));
        assert!(!policy.allows("orders", Some(&wrong_method)));
        assert!(policy.allows("orders", Some(&health)));
        assert!(!policy.allows("billing", Some(&channel)));
        assert!(!policy.allows("orders", None));
    }

    #[test]
    fn invalid_policies_rejected() {
        assert!(Policy::from_toml("[[allow]]\nissuer = \"Orders\"").is_err());
        assert!(Policy::from_toml("[[allow]]\nissuer = \"orders\"\nroute = []").is_err());
        assert!(Policy::from_toml("[[allow]]\nissuer = \"orders\"\nroutes = [\"/x\"]").is_err());
        assert!(Policy::from_toml("[[allow]]\nissuer = \"orders\"\nchannels = [\"nats:a.>.b\"]").is_err());
        assert!(Policy::from_toml("[[allow]]\nissuer = \"orders\"\nroutes = [\"GET /**/x\"]").is_err());
    }
}
