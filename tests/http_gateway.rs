//! The forward-auth gateway over HTTP on loopback, called as a proxy calls
//! it: API keys, identity-provider JWTs served from a real JWKS endpoint,
//! routing, every denial with its status and reason code, and the internal
//! token checked by an upstream verifier.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::Signer as _;
use http::StatusCode;
use http::header::{AUTHORIZATION, CACHE_CONTROL, WWW_AUTHENTICATE};
use serde_json::{Value, json};
use trustwire::http::gateway::{ApiKeys, Gateway, GatewayConfig, IdentityProvider, Route, key_entry};
use trustwire::jwks::{JWKS_PATH, JwkSet, JwksPublisher, KeySource, RemoteJwks, TrustStore};
use trustwire::{Binding, Expected, KeyDir, ServiceId, Signer, SigningKey, Verifier};

const ACME_KEY: &str = "twk_acme-test-key-0123456789abcdefghijklmnopqrstuv";
const GLOBEX_KEY: &str = "twk_globex-test-key-0123456789abcdefghijklmnopqrs";
const IDP_ISSUER: &str = "https://idp.test/";

fn id(name: &str) -> ServiceId {
    ServiceId::new(name).unwrap()
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An identity provider: its raw Ed25519 seed, and its JWKS served on loopback.
struct Idp {
    seed: [u8; 32],
    kid: String,
    jwks_url: String,
}

impl Idp {
    async fn start() -> Self {
        let seed = [7u8; 32];
        let key = SigningKey::from_seed(&seed).unwrap();
        let set = JwkSet::from_keys(vec![key.public_key().clone()]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = JwksPublisher::new(&set).router();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self {
            seed,
            kid: key.kid().to_owned(),
            jwks_url: format!("http://{address}{JWKS_PATH}"),
        }
    }

    fn provider(&self) -> IdentityProvider {
        let jwks = RemoteJwks::builder(self.jwks_url.as_str()).build().unwrap();
        IdentityProvider::new(IDP_ISSUER, jwks, "public-api").subject_prefix("idp:")
    }

    fn header(&self) -> Value {
        json!({"alg": "EdDSA", "kid": self.kid, "typ": "JWT"})
    }

    fn claims(&self) -> Value {
        json!({"iss": IDP_ISSUER, "sub": "alice", "aud": "public-api", "iat": now(), "exp": now() + 300})
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let key = ed25519_dalek::SigningKey::from_bytes(&self.seed);
        let signature = key.sign(input.as_bytes()).to_bytes();
        format!("{input}.{}", b64(&signature))
    }
}

/// A gateway `edge` in front of `orders` (any consumer) and `admin` (acme
/// only), with two API keys and the IdP; plus a verifier for `orders`.
struct Fixture {
    idp: Idp,
    base: String,
    orders: Verifier,
}

impl Fixture {
    async fn start() -> Self {
        let idp = Idp::start().await;
        let edge_key = SigningKey::generate().unwrap();
        let edge_keys = JwkSet::from_keys(vec![edge_key.public_key().clone()]);
        let api_keys = ApiKeys::default()
            .with_key("acme", ACME_KEY)
            .unwrap()
            .with_key("globex", GLOBEX_KEY)
            .unwrap();
        let gateway = Gateway::builder(Signer::new(id("edge"), edge_key))
            .api_keys(api_keys)
            .identity_provider(idp.provider())
            .route(Route::new("/orders", id("orders")).unwrap())
            .route(Route::new("/admin", id("admin")).unwrap().consumers(["acme"]))
            .route(Route::new("/reports", id("reports")).unwrap().methods(["GET"]))
            .build()
            .unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = gateway.router();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

        let trust = TrustStore::new().trust(id("edge"), KeySource::inline(edge_keys));
        let orders = Verifier::builder(id("orders"), trust)
            .issuers_without_digest([id("edge")])
            .build()
            .unwrap();
        Self {
            idp,
            base: format!("http://{address}/auth"),
            orders,
        }
    }

    /// Sends a forward-auth subrequest for `method uri` with extra headers.
    async fn check(&self, method: &str, uri: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = reqwest::Client::new()
            .get(&self.base)
            .header("x-forwarded-method", method)
            .header("x-forwarded-uri", uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }
}

fn bearer_token(response: &reqwest::Response) -> String {
    let value = response.headers()[AUTHORIZATION].to_str().unwrap();
    value.strip_prefix("Bearer ").expect("a Bearer value").to_owned()
}

fn reason_code(response: &reqwest::Response) -> String {
    let challenge = response.headers()[WWW_AUTHENTICATE].to_str().unwrap();
    let (_, rest) = challenge
        .split_once("error_description=\"")
        .unwrap_or_else(|| panic!("no error_description in {challenge:?}"));
    rest.trim_end_matches('"').to_owned()
}

#[tokio::test]
async fn api_key_gets_bound_internal_token() {
    let fixture = Fixture::start().await;

    let response = fixture
        .check("POST", "/orders/42?b=2&a=1", &[("x-api-key", ACME_KEY)])
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
    let token = bearer_token(&response);
    // The forwarded request has a body the subrequest never saw.
    let binding = Binding::http("POST", "/orders/42?a=1&b=2").unwrap();
    let verified = fixture
        .orders
        .verify(&token, &Expected::new(binding, Some(br#"{"qty":1}"#)))
        .await
        .unwrap();
    assert_eq!(verified.claims.iss, "edge");
    assert_eq!(verified.claims.sub.as_deref(), Some("acme"));
    assert_eq!(verified.claims.aud, ["orders"]);
    assert_eq!(verified.claims.dig, None);
}

#[tokio::test]
async fn internal_token_bound_to_original_request() {
    let fixture = Fixture::start().await;
    let response = fixture.check("GET", "/orders/42", &[("x-api-key", ACME_KEY)]).await;
    let token = bearer_token(&response);

    let other_route = Expected::new(Binding::http("GET", "/orders/43").unwrap(), None);
    let rejection = fixture.orders.verify(&token, &other_route).await.unwrap_err();

    assert_eq!(rejection.code(), "binding_mismatch");
}

#[tokio::test]
async fn wrong_api_key_rejected() {
    let fixture = Fixture::start().await;

    let response = fixture
        .check("GET", "/orders/42", &[("x-api-key", "twk_not-a-key")])
        .await;

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reason_code(&response), "invalid_api_key");
    assert!(response.headers().get(AUTHORIZATION).is_none());
}

#[tokio::test]
async fn missing_credential_rejected() {
    let fixture = Fixture::start().await;

    let response = fixture.check("GET", "/orders/42", &[]).await;

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer");
    assert_eq!(response.text().await.unwrap(), "missing_credential\n");
}

#[tokio::test]
async fn unrouted_path_forbidden() {
    let fixture = Fixture::start().await;

    let response = fixture.check("GET", "/ordersx", &[("x-api-key", ACME_KEY)]).await;

    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(reason_code(&response), "no_route");
}

#[tokio::test]
async fn method_outside_route_forbidden() {
    let fixture = Fixture::start().await;

    let response = fixture.check("DELETE", "/reports/1", &[("x-api-key", ACME_KEY)]).await;

    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(reason_code(&response), "no_route");
}

#[tokio::test]
async fn consumer_outside_route_forbidden() {
    let fixture = Fixture::start().await;

    let allowed = fixture.check("GET", "/admin/users", &[("x-api-key", ACME_KEY)]).await;
    let denied = fixture.check("GET", "/admin/users", &[("x-api-key", GLOBEX_KEY)]).await;

    assert_eq!(allowed.status(), StatusCode::OK);
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    assert_eq!(reason_code(&denied), "not_allowed");
}

#[tokio::test]
async fn missing_forwarded_headers_rejected() {
    let fixture = Fixture::start().await;

    let response = reqwest::Client::new()
        .get(&fixture.base)
        .header("x-api-key", ACME_KEY)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.text().await.unwrap(), "invalid_forwarded_request\n");
}

#[tokio::test]
async fn idp_token_accepted_with_prefixed_subject() {
    let fixture = Fixture::start().await;
    let jwt = fixture.idp.sign(&fixture.idp.header(), &fixture.idp.claims());

    let response = fixture
        .check("GET", "/orders/42", &[("authorization", &format!("Bearer {jwt}"))])
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    let token = bearer_token(&response);
    let binding = Binding::http("GET", "/orders/42").unwrap();
    let verified = fixture
        .orders
        .verify(&token, &Expected::new(binding, None))
        .await
        .unwrap();
    assert_eq!(verified.claims.sub.as_deref(), Some("idp:alice"));
}

#[tokio::test]
async fn at_jwt_type_accepted() {
    let fixture = Fixture::start().await;
    let mut header = fixture.idp.header();
    header["typ"] = json!("application/at+jwt");
    let jwt = fixture.idp.sign(&header, &fixture.idp.claims());

    let response = fixture
        .check("GET", "/orders/42", &[("authorization", &format!("Bearer {jwt}"))])
        .await;

    assert_eq!(response.status(), StatusCode::OK);
}

/// Each altered IdP token and the reason code it must be rejected with.
#[tokio::test]
async fn idp_token_rejections() {
    let fixture = Fixture::start().await;
    let idp = &fixture.idp;
    let with_header = |name: &str, value: Value| {
        let mut header = idp.header();
        header[name] = value;
        idp.sign(&header, &idp.claims())
    };
    let with_claim = |name: &str, value: Value| {
        let mut claims = idp.claims();
        claims[name] = value;
        idp.sign(&idp.header(), &claims)
    };
    let without_claim = |name: &str| {
        let mut claims = idp.claims();
        claims.as_object_mut().unwrap().remove(name);
        idp.sign(&idp.header(), &claims)
    };
    let tampered = {
        let jwt = idp.sign(&idp.header(), &idp.claims());
        let (input, _) = jwt.rsplit_once('.').unwrap();
        format!("{input}.{}", b64(&[0u8; 64]))
    };

    let cases = [
        (
            "wrong audience",
            with_claim("aud", json!("other-api")),
            "wrong_audience",
        ),
        ("expired", with_claim("exp", json!(now() - 3600)), "expired"),
        ("not yet valid", with_claim("nbf", json!(now() + 3600)), "not_yet_valid"),
        (
            "unknown issuer",
            with_claim("iss", json!("https://evil.test/")),
            "unknown_key",
        ),
        ("no exp", without_claim("exp"), "missing_claim"),
        ("no sub", without_claim("sub"), "missing_claim"),
        (
            "trustwire typ",
            with_header("typ", json!("trustwire+jwt")),
            "wrong_type",
        ),
        ("alg none", with_header("alg", json!("none")), "unsupported_alg"),
        ("alg HS256", with_header("alg", json!("HS256")), "unsupported_alg"),
        (
            "alg ES256 on Ed25519 key",
            with_header("alg", json!("ES256")),
            "unsupported_alg",
        ),
        (
            "jku header",
            with_header("jku", json!("https://evil.test/jwks")),
            "unsupported_header",
        ),
        ("unknown kid", with_header("kid", json!("nope")), "unknown_key"),
        ("bad signature", tampered, "bad_signature"),
        ("not a JWT", "abc".to_owned(), "malformed"),
    ];

    for (case, jwt, expected) in cases {
        let response = fixture
            .check("GET", "/orders/42", &[("authorization", &format!("Bearer {jwt}"))])
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{case}");
        assert_eq!(reason_code(&response), expected, "{case}");
    }
}

#[tokio::test]
async fn api_key_preferred_over_bearer() {
    let fixture = Fixture::start().await;
    let jwt = fixture.idp.sign(&fixture.idp.header(), &fixture.idp.claims());

    // A wrong API key is not rescued by a valid bearer token.
    let response = fixture
        .check(
            "GET",
            "/orders/42",
            &[("x-api-key", "twk_wrong"), ("authorization", &format!("Bearer {jwt}"))],
        )
        .await;

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reason_code(&response), "invalid_api_key");
}

#[tokio::test]
async fn config_file_builds_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyDir::create(&dir.path().join("keys"), id("edge")).unwrap();
    std::fs::write(dir.path().join("api-keys.toml"), key_entry("acme", ACME_KEY)).unwrap();
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(
        &config_path,
        r#"
key_dir = "keys"
listen = "127.0.0.1:0"
token_ttl_s = 30
api_keys = "api-keys.toml"

[headers]
method = "X-Original-Method"
uri = "X-Original-URI"

[[route]]
prefix = "/orders"
upstream = "orders"
"#,
    )
    .unwrap();

    let gateway = GatewayConfig::load(&config_path).unwrap().build().unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("x-original-method", "GET".parse().unwrap());
    headers.insert("x-original-uri", "/orders/1".parse().unwrap());
    headers.insert("x-api-key", ACME_KEY.parse().unwrap());
    let authorized = gateway.authorize(&headers).await.unwrap();

    let trust = TrustStore::new().trust(id("edge"), KeySource::inline(keys.jwks()));
    let verifier = Verifier::builder(id("orders"), trust).build().unwrap();
    let binding = Binding::http("GET", "/orders/1").unwrap();
    let verified = verifier
        .verify(&authorized.token, &Expected::new(binding, None))
        .await
        .unwrap();
    assert_eq!(verified.claims.exp - verified.claims.iat, 30);
    assert_eq!(verified.claims.sub.as_deref(), Some("acme"));
}

#[tokio::test]
async fn config_without_routes_rejected() {
    let dir = tempfile::tempdir().unwrap();
    KeyDir::create(&dir.path().join("keys"), id("edge")).unwrap();
    std::fs::write(dir.path().join("api-keys.toml"), key_entry("acme", ACME_KEY)).unwrap();
    let text = "key_dir = \"keys\"\napi_keys = \"api-keys.toml\"\n";

    let err = GatewayConfig::parse(text, dir.path()).unwrap().build().unwrap_err();

    assert_eq!(err.to_string(), "the gateway configuration is incomplete");
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("no routes"), "{source}");
}

#[tokio::test]
async fn config_unknown_key_rejected() {
    let err = GatewayConfig::parse("key_dir = \"k\"\nlisten_on = \"x\"\n", ".".as_ref()).unwrap_err();

    assert!(err.to_string().contains("listen_on"), "{err}");
}
