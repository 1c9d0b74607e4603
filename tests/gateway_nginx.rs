//! End to end through a real nginx: nginx is the edge, its `auth_request`
//! calls the trustwire gateway, and the upstream is an axum service behind
//! the verifying layer. Shows that the bypass is closed: only requests that
//! passed the gateway carry a token the upstream accepts.
//!
//! The test starts its own nginx with a config in a temporary directory,
//! listening on 127.0.0.1 only, and stops it at the end. It fails when nginx
//! is missing: `scripts/test.sh` installs it from Debian's packages when run
//! as root, or install it with `apt-get install nginx-light` (or `nginx`).
//! Set `NGINX` to use another binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use trustwire::http::gateway::{ApiKeys, Gateway, Route};
use trustwire::http::{Caller, VerifyLayer};
use trustwire::jwks::{JwkSet, KeySource, TrustStore};
use trustwire::{ServiceId, Signer, SigningKey, Verifier};

const ACME_KEY: &str = "twk_acme-e2e-key-0123456789abcdefghijklmnopqrstuvwx";

fn id(name: &str) -> ServiceId {
    ServiceId::new(name).unwrap()
}

/// An nginx process started for this test, killed when dropped.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

fn nginx_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NGINX") {
        return PathBuf::from(path);
    }
    for candidate in ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!(
        "nginx is not installed: this test needs a real nginx as the edge gateway. \
         Run scripts/test.sh as root (it installs nginx from Debian's packages), \
         or install it with `apt-get install nginx-light` (or `nginx`), or set NGINX to its path"
    );
}

/// A free loopback port, found by binding port 0 and releasing it.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts nginx on `edge_port`, sending `auth_request` subrequests to
/// `gateway` and authorized requests to `upstream`.
fn start_nginx(edge_port: u16, gateway: SocketAddr, upstream: SocketAddr) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display();
    // `master_process off` keeps nginx in one process running as this user,
    // so it can write to the temporary directory even when run as root.
    let config = format!(
        r#"
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;

    server {{
        listen 127.0.0.1:{edge_port};

        location = /_trustwire_auth {{
            internal;
            proxy_pass http://{gateway};
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Forwarded-Method $request_method;
            proxy_set_header X-Forwarded-Uri $request_uri;
        }}

        location / {{
            auth_request /_trustwire_auth;
            auth_request_set $trustwire_authorization $upstream_http_authorization;
            proxy_set_header Authorization $trustwire_authorization;
            proxy_set_header X-Api-Key "";
            proxy_pass http://{upstream};
        }}
    }}
}}
"#
    );
    let config_path = dir.path().join("nginx.conf");
    std::fs::write(&config_path, config).unwrap();

    let binary = nginx_binary();
    let child = Command::new(&binary)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&config_path)
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| {
            panic!(
                "starting {} failed: {err}; install nginx or set NGINX",
                binary.display()
            )
        });
    let nginx = Nginx { child, dir };

    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", edge_port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not listen on 127.0.0.1:{edge_port} within 10 s; its error log:\n{}",
            nginx.error_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    nginx
}

/// The upstream `orders`: echoes the caller, the body and the raw token it
/// received, and counts the requests that reached a handler.
async fn echo(State(hits): State<Arc<AtomicUsize>>, caller: Caller, headers: HeaderMap, body: Bytes) -> String {
    hits.fetch_add(1, Ordering::SeqCst);
    let token = headers[AUTHORIZATION].to_str().unwrap().trim_start_matches("Bearer ");
    json!({
        "iss": caller.issuer(),
        "sub": caller.subject(),
        "body": String::from_utf8_lossy(&body),
        "token": token,
    })
    .to_string()
}

struct Deployment {
    edge: String,
    upstream: String,
    hits: Arc<AtomicUsize>,
    nginx: Nginx,
}

/// nginx, the gateway served by the library in this process, and the upstream.
async fn deploy() -> Deployment {
    let edge_key = SigningKey::generate().unwrap();
    let edge_keys = JwkSet::from_keys(vec![edge_key.public_key().clone()]);

    let gateway = Gateway::builder(Signer::new(id("edge"), edge_key))
        .api_keys(ApiKeys::default().with_key("acme", ACME_KEY).unwrap())
        .route(Route::new("/orders", id("orders")).unwrap())
        .route(Route::new("/reports", id("orders")).unwrap())
        .build()
        .unwrap();
    let gateway_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway_address = gateway_listener.local_addr().unwrap();
    let gateway_router = gateway.router();
    tokio::spawn(async move { axum::serve(gateway_listener, gateway_router).await.unwrap() });

    deploy_behind(gateway_address, edge_keys).await
}

/// nginx and the upstream, for a gateway already listening on `gateway_address`
/// and signing with `edge_keys`.
async fn deploy_behind(gateway_address: SocketAddr, edge_keys: JwkSet) -> Deployment {
    let trust = TrustStore::new().trust(id("edge"), KeySource::inline(edge_keys));
    let verifier = Verifier::builder(id("orders"), trust)
        .issuers_without_digest([id("edge")])
        .build()
        .unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let upstream_router = Router::new()
        .route("/orders/{id}", post(echo).get(echo).put(echo))
        .route("/reports", get(echo))
        .layer(VerifyLayer::new(verifier))
        .with_state(Arc::clone(&hits));
    let upstream_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_address = upstream_listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(upstream_listener, upstream_router).await.unwrap() });

    let edge_port = free_port();
    let nginx = start_nginx(edge_port, gateway_address, upstream_address);
    Deployment {
        edge: format!("http://127.0.0.1:{edge_port}"),
        upstream: format!("http://{upstream_address}"),
        hits,
        nginx,
    }
}

fn reason_code(response: &reqwest::Response) -> String {
    let challenge = response
        .headers()
        .get(WWW_AUTHENTICATE)
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    match challenge.split_once("error_description=\"") {
        Some((_, rest)) => rest.trim_end_matches('"').to_owned(),
        None => challenge,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_gateway_closes_the_bypass() {
    let deployment = deploy().await;
    let client = reqwest::Client::new();
    let body = r#"{"qty":3}"#;

    // Through the edge with a valid API key, the upstream gets the consumer.
    let through_edge = client
        .post(format!("{}/orders/42?b=2&a=1", deployment.edge))
        .header("x-api-key", ACME_KEY)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        through_edge.status(),
        StatusCode::OK,
        "nginx error log:\n{}",
        deployment.nginx.error_log()
    );
    let echoed: Value = serde_json::from_str(&through_edge.text().await.unwrap()).unwrap();
    assert_eq!(echoed["iss"], "edge");
    assert_eq!(echoed["sub"], "acme");
    assert_eq!(echoed["body"], body);
    let captured = echoed["token"].as_str().unwrap().to_owned();
    assert_eq!(deployment.hits.load(Ordering::SeqCst), 1);

    // The same request straight to the upstream's port.
    let direct = client
        .post(format!("{}/orders/42?b=2&a=1", deployment.upstream))
        .header("x-api-key", ACME_KEY)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(direct.headers()[WWW_AUTHENTICATE], "Bearer");

    // The captured token replayed against another route.
    let other_route = client
        .post(format!("{}/orders/43?b=2&a=1", deployment.upstream))
        .bearer_auth(&captured)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(other_route.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reason_code(&other_route), "binding_mismatch");

    // The captured token replayed with another method.
    let other_method = client
        .get(format!("{}/orders/42?b=2&a=1", deployment.upstream))
        .bearer_auth(&captured)
        .send()
        .await
        .unwrap();
    assert_eq!(other_method.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reason_code(&other_method), "binding_mismatch");

    // The captured token replayed on its own request.
    let same_request = client
        .post(format!("{}/orders/42?b=2&a=1", deployment.upstream))
        .bearer_auth(&captured)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(same_request.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reason_code(&same_request), "replayed");

    // The gateway rejects a wrong API key, so the upstream never receives it.
    let wrong_key = client
        .post(format!("{}/orders/42", deployment.edge))
        .header("x-api-key", "twk_wrong-key")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_key.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reason_code(&wrong_key), "invalid_api_key");

    // A client's own token is overwritten at the edge, so it cannot stand in
    // for an API key.
    let smuggled = client
        .get(format!("{}/orders/42?b=2&a=1", deployment.edge))
        .bearer_auth(&captured)
        .send()
        .await
        .unwrap();
    assert_eq!(smuggled.status(), StatusCode::UNAUTHORIZED);

    assert_eq!(deployment.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_gateway_forwards_each_route() {
    let deployment = deploy().await;
    let client = reqwest::Client::new();

    for path in ["/orders/1", "/reports", "/orders/%7e2?x=a+b"] {
        let response = client
            .get(format!("{}{path}", deployment.edge))
            .header("x-api-key", ACME_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{path}; nginx error log:\n{}",
            deployment.nginx.error_log()
        );
    }

    let unrouted = client
        .get(format!("{}/admin", deployment.edge))
        .header("x-api-key", ACME_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(unrouted.status(), StatusCode::FORBIDDEN);
    assert_eq!(deployment.hits.load(Ordering::SeqCst), 3);
}

/// A `trustwire gateway` child process, killed when dropped.
struct GatewayProcess(Child);

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn trustwire(args: &[&str], dir: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_trustwire"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "trustwire {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_with_cli_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let keys = trustwire::KeyDir::create(&dir.path().join("edge"), id("edge")).unwrap();
    let api_key = trustwire(
        &["gateway", "new-key", "--consumer", "acme", "--keys", "api-keys.toml"],
        dir.path(),
    );
    let api_key = api_key.trim();
    let gateway_port = free_port();
    std::fs::write(
        dir.path().join("gateway.toml"),
        format!(
            "key_dir = \"edge\"\nlisten = \"127.0.0.1:{gateway_port}\"\napi_keys = \"api-keys.toml\"\n\n\
             [[route]]\nprefix = \"/orders\"\nupstream = \"orders\"\n"
        ),
    )
    .unwrap();

    let child = Command::new(env!("CARGO_BIN_EXE_trustwire"))
        .args(["gateway", "--config"])
        .arg(dir.path().join("gateway.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _gateway = GatewayProcess(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", gateway_port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "trustwire gateway did not listen on port {gateway_port} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let gateway_address = SocketAddr::from(([127, 0, 0, 1], gateway_port));
    let deployment = deploy_behind(gateway_address, keys.jwks()).await;
    let client = reqwest::Client::new();

    let accepted = client
        .put(format!("{}/orders/9", deployment.edge))
        .header("x-api-key", api_key)
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(
        accepted.status(),
        StatusCode::OK,
        "nginx error log:\n{}",
        deployment.nginx.error_log()
    );
    let echoed: Value = serde_json::from_str(&accepted.text().await.unwrap()).unwrap();
    assert_eq!(echoed["sub"], "acme");
    assert_eq!(echoed["body"], "payload");

    let refused = client
        .put(format!("{}/orders/9", deployment.edge))
        .header("x-api-key", "twk_wrong-key")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reason_code(&refused), "invalid_api_key");
    assert_eq!(deployment.hits.load(Ordering::SeqCst), 1);
}
