//! The main job in one process, with no broker: the `orders` service serves
//! its JWKS on loopback and signs an `orders.created` message; `payments`
//! fetches the JWKS over HTTP, verifies the message, and then rejects six
//! forged or misused tokens, each with its reason code.
//!
//! Run with `cargo run --example quickstart`. It exits 0 only if every
//! outcome is the expected one. Set `RUST_LOG=debug` to see the library's logs.

use std::process::ExitCode;
use std::sync::Arc;

use trustwire::clock::{Clock, FixedClock, SystemClock};
use trustwire::jwks::{JWKS_PATH, JwkSet, JwksPublisher, KeySource, RemoteJwks, TrustStore};
use trustwire::{Binding, Expected, Reason, ServiceId, Signer, SigningKey, Verifier};

const CHANNEL: &str = "nats:orders.created";

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("quickstart failed: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<bool, Box<dyn std::error::Error>> {
    println!("trustwire quickstart\n");
    let orders = ServiceId::new("orders")?;
    let payments = ServiceId::new("payments")?;

    // orders: a signing key, and its public JWKS served on loopback.
    let key = SigningKey::generate()?;
    let kid = key.kid().to_owned();
    // Kept to build a second signer with a stopped clock for the expired case.
    let key_jwk = key.to_private_jwk();
    let publisher = JwksPublisher::new(&JwkSet::from_keys(vec![key.public_key().clone()]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let jwks_url = format!("http://{}{JWKS_PATH}", listener.local_addr()?);
    let app = publisher.router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("[orders]   serving JWKS at {jwks_url} (kid {kid})");

    // orders signs a message for payments.
    let signer = Signer::new(orders.clone(), key);
    let payload: &[u8] = br#"{"order_id":42,"amount_cents":1999,"currency":"EUR"}"#;
    let channel = Binding::channel(CHANNEL)?;
    let token = signer
        .token(payments.clone())
        .binding(channel.clone())
        .payload(payload)
        .sign()?;
    println!(
        "[orders]   signed a {}-byte message on {CHANNEL}: token of {} bytes",
        payload.len(),
        token.len()
    );

    // payments trusts orders' keys from its JWKS URL and verifies.
    let remote = RemoteJwks::builder(jwks_url).build()?;
    let trust = TrustStore::new().trust(orders.clone(), KeySource::Remote(remote));
    let verifier = Verifier::builder(payments.clone(), trust).build()?;

    let arrived = Expected::message(channel.clone(), payload);
    let verified = match verifier.verify(&token, &arrived).await {
        Ok(verified) => verified,
        Err(rejection) => {
            println!("[payments] FAILED: the genuine message was rejected: {rejection}");
            return Ok(false);
        }
    };
    println!(
        "[payments] verified: iss={} kid={} jti={} chn={}\n",
        verified.claims.iss,
        verified.kid,
        verified.claims.jti,
        verified.claims.chn.as_deref().unwrap_or("-")
    );

    println!("[payments] each of these must be rejected:");
    let mut all_expected = true;

    let tampered: &[u8] = br#"{"order_id":42,"amount_cents":1,"currency":"EUR"}"#;
    let outcome = verifier
        .verify(&token, &Expected::message(channel.clone(), tampered))
        .await;
    all_expected &= report("tampered payload", outcome, Reason::DigestMismatch);

    let other_channel = Binding::channel("nats:payments.refund")?;
    let outcome = verifier
        .verify(&token, &Expected::message(other_channel, payload))
        .await;
    all_expected &= report("token replayed on another channel", outcome, Reason::BindingMismatch);

    let outcome = verifier.verify(&token, &arrived).await;
    all_expected &= report("same jti replayed", outcome, Reason::Replayed);

    let stranger = Signer::new(orders.clone(), SigningKey::generate()?);
    let forged = stranger
        .token(payments.clone())
        .binding(channel.clone())
        .payload(payload)
        .sign()?;
    let outcome = verifier.verify(&forged, &arrived).await;
    all_expected &= report("token from an unknown key", outcome, Reason::UnknownKey);

    let for_billing = signer
        .token(ServiceId::new("billing")?)
        .binding(channel.clone())
        .payload(payload)
        .sign()?;
    let outcome = verifier.verify(&for_billing, &arrived).await;
    all_expected &= report("token for another audience", outcome, Reason::WrongAudience);

    let an_hour_ago: Arc<dyn Clock> = Arc::new(FixedClock::new(SystemClock.now() - 3600));
    let past_key = SigningKey::from_private_jwk(&key_jwk)?;
    let past_signer = Signer::builder(orders, past_key).clock(an_hour_ago).build()?;
    let expired = past_signer.token(payments).binding(channel).payload(payload).sign()?;
    let outcome = verifier.verify(&expired, &arrived).await;
    all_expected &= report("expired token", outcome, Reason::Expired);

    println!();
    if all_expected {
        println!("all 7 outcomes as expected");
    } else {
        println!("FAILED: some outcomes were not as expected");
    }
    Ok(all_expected)
}

/// Prints one expected rejection and returns whether it matched.
fn report(case: &str, outcome: Result<trustwire::Verified, trustwire::Rejection>, expected: Reason) -> bool {
    match outcome {
        Err(rejection) if rejection.reason() == expected => {
            println!("  ok    {case:<34} -> {}", rejection.code());
            true
        }
        Err(rejection) => {
            println!(
                "  FAIL  {case:<34} -> {} (expected {})",
                rejection.code(),
                expected.code()
            );
            false
        }
        Ok(_) => {
            println!("  FAIL  {case:<34} -> accepted (expected {})", expected.code());
            false
        }
    }
}
