//! An axum service, `payments`, whose routes accept only calls that carry a
//! valid trustwire token, bound to the exact request.
//!
//! Try it with the CLI and curl:
//!
//! ```text
//! trustwire keygen --service orders --dir keys/orders
//! cargo run --features http --example axum_service -- --trust orders=keys/orders/jwks.json
//!
//! printf '{"amount":42}' > body.json
//! TOKEN=$(trustwire sign --dir keys/orders --audience payments \
//!     --http "POST /v1/charges?currency=EUR" --payload body.json)
//! curl -i -H "Authorization: Bearer $TOKEN" --data-binary @body.json \
//!     'http://127.0.0.1:8080/v1/charges?currency=EUR'
//! ```
//!
//! The call returns 200 with the caller's id. Sending the same token again
//! returns 401 `replayed`, and a token signed for another path, method,
//! query or body returns 401 `binding_mismatch` or `digest_mismatch`.
//!
//! Behind a gateway, also trust the gateway's keys with `--gateway
//! edge=keys/edge/jwks.json`: its tokens carry the consumer as `sub` and no
//! body digest, which this service then accepts from that issuer only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Path;
use axum::routing::{get, post};
use clap::Parser;
use trustwire::http::{Caller, VerifyLayer};
use trustwire::jwks::{KeySource, TrustStore};
use trustwire::{ServiceId, Verifier};

/// Runs the `payments` example service.
#[derive(Debug, Parser)]
struct Args {
    /// This service's id, the `aud` that tokens must carry
    #[arg(long, default_value = "payments")]
    service: ServiceId,

    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// A trusted caller and its public keys, as ISSUER=JWKS_FILE; repeatable
    #[arg(long, value_name = "ISSUER=FILE", value_parser = parse_trust)]
    trust: Vec<(ServiceId, PathBuf)>,

    /// A trusted gateway, as ISSUER=JWKS_FILE; its tokens may omit the body
    /// digest because its forward-auth subrequest has no body
    #[arg(long, value_name = "ISSUER=FILE", value_parser = parse_trust)]
    gateway: Vec<(ServiceId, PathBuf)>,
}

fn parse_trust(value: &str) -> Result<(ServiceId, PathBuf), String> {
    let (issuer, path) = value
        .split_once('=')
        .ok_or_else(|| format!("expected ISSUER=JWKS_FILE, got {value:?}"))?;
    let issuer = ServiceId::new(issuer).map_err(|err| err.to_string())?;
    Ok((issuer, PathBuf::from(path)))
}

async fn create_charge(caller: Caller, body: Bytes) -> String {
    format!(
        "charge accepted from {} for {} ({} body bytes)\n",
        caller.issuer(),
        caller.subject().unwrap_or("-"),
        body.len()
    )
}

async fn show_charge(caller: Caller, Path(id): Path<u64>) -> String {
    format!("charge {id}, read by {}\n", caller.issuer())
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if args.trust.is_empty() && args.gateway.is_empty() {
        return Err("trust at least one caller: --trust orders=keys/orders/jwks.json".into());
    }

    let mut trust = TrustStore::new();
    for (issuer, path) in args.trust.iter().chain(&args.gateway) {
        trust = trust.trust(issuer.clone(), KeySource::file(path)?);
    }
    let gateways = args.gateway.iter().map(|(issuer, _)| issuer.clone());
    let verifier = Verifier::builder(args.service.clone(), trust)
        .issuers_without_digest(gateways)
        .build()?;

    let app = Router::new()
        .route("/v1/charges", post(create_charge))
        .route("/v1/charges/{id}", get(show_charge))
        .layer(VerifyLayer::new(verifier).max_body_bytes(64 * 1024));

    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(service = %args.service, address = %listener.local_addr()?, "serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    tracing::info!("stopped");
    Ok(())
}
