#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `trustwire.toml`: defaults, environment overrides, the signer and
//! verifier built from it, and an error that names the setting for every
//! kind of bad value.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use trustwire::config::{Config, ConfigError, KeyLocation, ReplayGuardChoice, SETTINGS};
use trustwire::{Binding, Expected, KeyDir, Reason, ServiceId};

fn parse_with_env(text: &str, base_dir: &Path, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: BTreeMap<String, String> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    Config::parse(text, Path::new("trustwire.toml"), base_dir, |name| {
        env.get(name).cloned()
    })
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_with_env(text, Path::new("/etc/trustwire"), &[])
}

/// Asserts that `result` failed with an error about `key` whose message
/// contains `fix`.
#[track_caller]
fn assert_config_error<T: std::fmt::Debug>(result: Result<T, ConfigError>, key: &str, fix: &str) {
    let err = result.expect_err("the configuration should be rejected");
    assert_eq!(err.key(), Some(key), "{err}");
    let message = err.to_string();
    assert!(
        message.starts_with(key),
        "the message should start with the key: {message}"
    );
    assert!(message.contains(fix), "expected {fix:?} in: {message}");
}

const MINIMAL: &str = r#"
[service]
id = "payments"
"#;

#[test]
fn defaults_of_minimal_file() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.service.as_str(), "payments");
    assert_eq!(config.key_dir, None);
    assert_eq!(config.key_reload_interval, Duration::from_secs(10));
    assert_eq!(config.token_lifetime, Duration::from_secs(60));
    assert_eq!(config.signing_max_token_lifetime, Duration::from_secs(3600));
    assert_eq!(config.leeway, Duration::from_secs(30));
    assert_eq!(config.max_token_lifetime, Duration::from_secs(600));
    assert_eq!(config.max_token_bytes, 8192);
    assert_eq!(config.max_payload_bytes, 16 * 1024 * 1024);
    assert_eq!(config.replay_guard, ReplayGuardChoice::Memory { capacity: 1_000_000 });
    assert!(config.trust.is_empty());
    assert_eq!(config.jwks.max_ttl, Duration::from_secs(3600));
    assert_eq!(config.jwks.max_staleness, Duration::from_secs(6 * 3600));
    assert_eq!(config.snapshot_dir, None);
    assert!(!config.insecure_allow_http);
}

#[test]
fn environment_overrides_file() {
    let text = r#"
[service]
id = "payments"

[verify]
leeway_seconds = 10

[jwks]
max_ttl_seconds = 600
"#;
    let env = [
        ("TRUSTWIRE_LEEWAY_SECONDS", "45"),
        ("TRUSTWIRE_JWKS_MAX_TTL_SECONDS", "60"),
        ("TRUSTWIRE_SERVICE_ID", "billing"),
        ("TRUSTWIRE_KEY_DIR", "keys/billing"),
        ("TRUSTWIRE_REPLAY_GUARD", "nats_kv"),
        ("TRUSTWIRE_JWKS_INSECURE_ALLOW_HTTP", "true"),
        (
            "TRUSTWIRE_TRUST",
            "orders=https://orders.internal/jwks.json, gateway=gateway.jwks",
        ),
    ];
    let config = parse_with_env(text, Path::new("/etc/trustwire"), &env).unwrap();
    assert_eq!(config.leeway, Duration::from_secs(45));
    assert_eq!(config.jwks.max_ttl, Duration::from_secs(60));
    assert_eq!(config.service.as_str(), "billing");
    assert_eq!(
        config.key_dir.as_deref(),
        Some(Path::new("/etc/trustwire/keys/billing"))
    );
    assert_eq!(
        config.replay_guard,
        ReplayGuardChoice::NatsKv {
            bucket: "trustwire_replay".into()
        }
    );
    assert!(config.insecure_allow_http);
    let locations: Vec<(&str, &KeyLocation)> = config
        .trust
        .iter()
        .map(|trusted| (trusted.issuer.as_str(), &trusted.location))
        .collect();
    assert_eq!(
        locations,
        vec![
            ("gateway", &KeyLocation::File("/etc/trustwire/gateway.jwks".into())),
            ("orders", &KeyLocation::Url("https://orders.internal/jwks.json".into())),
        ]
    );
}

#[test]
fn url_template_fills_issuer() {
    let text = r#"
[service]
id = "payments"

[jwks]
url_template = "https://keys.internal/{issuer}/jwks.json"

[[trust]]
issuer = "orders"

[[trust]]
issuer = "billing"
jwks_url = "https://billing.internal/jwks.json"
"#;
    let config = parse(text).unwrap();
    let urls: Vec<&KeyLocation> = config.trust.iter().map(|trusted| &trusted.location).collect();
    assert_eq!(
        urls,
        vec![
            &KeyLocation::Url("https://billing.internal/jwks.json".into()),
            &KeyLocation::Url("https://keys.internal/orders/jwks.json".into()),
        ]
    );
    config.trust_store().unwrap();
}

/// A whole service from one file: it signs with its key directory and
/// verifies a peer's tokens with the policy and trust written there.
#[tokio::test]
async fn signer_and_verifier_from_file() {
    let tmp = tempfile::tempdir().unwrap();
    let orders_keys = KeyDir::create(&tmp.path().join("orders-keys"), ServiceId::new("orders").unwrap()).unwrap();
    std::fs::copy(orders_keys.jwks_path(), tmp.path().join("orders.jwks")).unwrap();
    let orders_text = r#"
[service]
id = "orders"
key_dir = "orders-keys"

[signing]
token_lifetime_seconds = 120
"#;
    let payments_text = r#"
[service]
id = "payments"

[[trust]]
issuer = "orders"
jwks_file = "orders.jwks"

[[policy.allow]]
issuer = "orders"
channels = ["nats:orders.>"]
"#;
    std::fs::write(tmp.path().join("orders.toml"), orders_text).unwrap();
    std::fs::write(tmp.path().join("payments.toml"), payments_text).unwrap();
    let orders = Config::load(&tmp.path().join("orders.toml")).unwrap();
    let payments = Config::load(&tmp.path().join("payments.toml")).unwrap();

    let signer = orders.signer().unwrap();
    assert_eq!(signer.kid(), orders_keys.active_key().kid());
    let _watcher = orders.watch_key_dir(&signer).unwrap();
    let verifier = payments.verifier().unwrap();

    let allowed = Binding::channel("nats:orders.created").unwrap();
    let token = signer
        .token(ServiceId::new("payments").unwrap())
        .binding(allowed.clone())
        .payload(b"{}")
        .sign()
        .unwrap();
    let verified = verifier
        .verify(&token, &Expected::message(allowed, b"{}"))
        .await
        .unwrap();
    assert_eq!(verified.claims.exp - verified.claims.iat, 120);

    let denied = Binding::channel("nats:billing.created").unwrap();
    let token = signer
        .token(ServiceId::new("payments").unwrap())
        .binding(denied.clone())
        .payload(b"{}")
        .sign()
        .unwrap();
    let rejection = verifier
        .verify(&token, &Expected::message(denied, b"{}"))
        .await
        .unwrap_err();
    assert_eq!(rejection.reason(), Reason::NotAllowed);
}

/// Every kind of bad value, each with the setting its error must name and
/// a part of the fix it must give.
#[test]
fn every_error_names_its_setting() {
    let cases: &[(&str, &str, &str, &str)] = &[
        ("missing id", "", "service.id", "set id in the [service] table"),
        ("invalid id", "[service]\nid = \"\"", "service.id", "use a name such as"),
        (
            "leeway above limit",
            "[service]\nid = \"a\"\n[verify]\nleeway_seconds = 900",
            "verify.leeway_seconds",
            "set it to 300 or less",
        ),
        (
            "negative seconds",
            "[service]\nid = \"a\"\n[verify]\nleeway_seconds = -1",
            "verify.leeway_seconds",
            "whole number of at least 0",
        ),
        (
            "string for number",
            "[service]\nid = \"a\"\n[jwks]\nmax_ttl_seconds = \"1h\"",
            "jwks.max_ttl_seconds",
            "whole number of at least 1",
        ),
        (
            "zero lifetime",
            "[service]\nid = \"a\"\n[verify]\nmax_token_lifetime_seconds = 0",
            "verify.max_token_lifetime_seconds",
            "at least 1",
        ),
        (
            "misspelt key",
            "[service]\nid = \"a\"\n[verify]\nleway_seconds = 30",
            "verify.leway_seconds",
            "did you mean verify.leeway_seconds?",
        ),
        (
            "unknown section",
            "[service]\nid = \"a\"\n[cache]\nttl = 1",
            "cache",
            "trustwire::config::SETTINGS lists every setting",
        ),
        (
            "min above max ttl",
            "[service]\nid = \"a\"\n[jwks]\nmin_ttl_seconds = 600\nmax_ttl_seconds = 60",
            "jwks.min_ttl_seconds",
            "at most jwks.max_ttl_seconds",
        ),
        (
            "lifetime above signing max",
            "[service]\nid = \"a\"\n[signing]\ntoken_lifetime_seconds = 7200",
            "signing.token_lifetime_seconds",
            "raise signing.max_token_lifetime_seconds",
        ),
        (
            "unknown replay guard",
            "[service]\nid = \"a\"\n[replay]\nguard = \"redis\"",
            "replay.guard",
            "use \"memory\"",
        ),
        (
            "boolean as string",
            "[service]\nid = \"a\"\n[jwks]\ninsecure_allow_http = \"yes\"",
            "jwks.insecure_allow_http",
            "set it to true or false",
        ),
        (
            "trust without source",
            "[service]\nid = \"a\"\n[[trust]]\nissuer = \"orders\"",
            "trust[0].jwks_url",
            "set jwks_url or jwks_file",
        ),
        (
            "trust with two sources",
            "[service]\nid = \"a\"\n[[trust]]\nissuer = \"orders\"\njwks_url = \"https://o/j\"\njwks_file = \"o.json\"",
            "trust[0].jwks_url",
            "keep one of them",
        ),
        (
            "trust without issuer",
            "[service]\nid = \"a\"\n[[trust]]\njwks_url = \"https://o/j\"",
            "trust[0].issuer",
            "name the trusted service",
        ),
        (
            "trust unknown key",
            "[service]\nid = \"a\"\n[[trust]]\nissuer = \"orders\"\nurl = \"https://o/j\"",
            "trust[0].url",
            "one of jwks_url and jwks_file",
        ),
        (
            "issuer trusted twice",
            "[service]\nid = \"a\"\n[[trust]]\nissuer = \"o\"\njwks_url = \"https://o/j\"\n[[trust]]\nissuer = \"o\"\njwks_url = \"https://p/j\"",
            "trust[1].jwks_url",
            "list each issuer once",
        ),
        (
            "invalid inline policy",
            "[service]\nid = \"a\"\n[[policy.allow]]\nissuer = \"o\"\nroutes = [\"charges\"]",
            "policy.allow",
            "each [[policy.allow]] needs an issuer",
        ),
        (
            "missing policy file",
            "[service]\nid = \"a\"\n[verify]\npolicy_file = \"no-such-policy.toml\"",
            "verify.policy_file",
            "point it at a readable policy file",
        ),
    ];
    for (name, text, key, fix) in cases {
        let err = parse(text).expect_err(name);
        assert_eq!(err.key(), Some(*key), "{name}: {err}");
        let message = err.to_string();
        assert!(
            message.starts_with(key),
            "{name}: the message should start with the key: {message}"
        );
        assert!(message.contains(fix), "{name}: expected {fix:?} in: {message}");
    }
}

#[test]
fn environment_errors_name_the_variable() {
    let base = Path::new("/etc/trustwire");
    let err = parse_with_env(MINIMAL, base, &[("TRUSTWIRE_LEEWAY_SECONDS", "abc")]).unwrap_err();
    let key = err.key().unwrap();
    assert!(key.starts_with("TRUSTWIRE_LEEWAY_SECONDS"), "{err}");
    assert!(key.contains("verify.leeway_seconds"), "{err}");
    assert!(err.to_string().contains("\"abc\" is not a whole number"), "{err}");

    let err = parse_with_env(MINIMAL, base, &[("TRUSTWIRE_TRUST", "orders")]).unwrap_err();
    assert_eq!(err.key(), Some("TRUSTWIRE_TRUST"), "{err}");
    assert!(err.to_string().contains("is not ISSUER=URL_OR_FILE"), "{err}");
}

#[test]
fn syntax_error_shows_line() {
    let err = parse("[service]\nid = \"payments\n").unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
    assert!(err.to_string().contains("line 2"), "{err}");
}

#[test]
fn build_errors_name_the_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();

    assert_config_error(parse(MINIMAL).unwrap().signer(), "service.key_dir", "trustwire keygen");
    assert_config_error(parse(MINIMAL).unwrap().verifier(), "trust", "add a [[trust]] table");

    let missing_dir = "[service]\nid = \"payments\"\nkey_dir = \"no-such-dir\"";
    let config = parse_with_env(missing_dir, base, &[]).unwrap();
    assert_config_error(
        config.signer(),
        "service.key_dir",
        "trustwire keygen --service payments",
    );

    KeyDir::create(&base.join("orders-keys"), ServiceId::new("orders").unwrap()).unwrap();
    let wrong_service = "[service]\nid = \"payments\"\nkey_dir = \"orders-keys\"";
    let config = parse_with_env(wrong_service, base, &[]).unwrap();
    assert_config_error(config.signer(), "service.id", "holds the keys of orders");

    let plain_http =
        "[service]\nid = \"a\"\n[[trust]]\nissuer = \"o\"\njwks_url = \"http://orders.internal/jwks.json\"";
    assert_config_error(
        parse(plain_http).unwrap().trust_store(),
        "trust[0].jwks_url",
        "use an https:// URL",
    );

    let missing_file = "[service]\nid = \"a\"\n[[trust]]\nissuer = \"o\"\njwks_file = \"no-such.jwks\"";
    assert_config_error(
        parse_with_env(missing_file, base, &[]).unwrap().trust_store(),
        "trust[0].jwks_file",
        "readable JWKS or JWK file",
    );

    let nats_kv =
        "[service]\nid = \"a\"\n[replay]\nguard = \"nats_kv\"\n[[trust]]\nissuer = \"o\"\njwks_url = \"https://o/j\"";
    assert_config_error(parse(nats_kv).unwrap().verifier(), "replay.guard", "KvReplayGuard");
}

/// The operations guide lists every setting with its variable and default.
#[test]
fn operations_guide_lists_every_setting() {
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).unwrap();
    for setting in SETTINGS {
        assert!(
            guide.contains(&format!("`{}`", setting.key)),
            "docs/operations.md misses {}",
            setting.key
        );
        assert!(
            guide.contains(&format!("`{}`", setting.env)),
            "docs/operations.md misses {}",
            setting.env
        );
    }
}
