//! The `trustwire` command-line tool: creates keys, serves a JWKS, and
//! signs, verifies and inspects tokens.

mod bench;
mod error;
#[cfg(feature = "http")]
mod gateway;
mod input;
mod inspect;
mod jwks;
mod keydir;
mod keygen;
mod keys;
mod output;
mod seal;
mod sign;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::output::print_stderr_line;

/// Log filter of the short commands: warnings only, so stdout carries only
/// the result. The verifier's and the opener's own warning for each
/// rejection is dropped because `verify` and `open` print the rejection
/// themselves.
const QUIET_LOG_FILTER: &str = "warn,trustwire::envelope::verifier=error,trustwire::seal::opener=error";

/// Log filter of `jwks serve`, which logs its start, reloads and stop.
const SERVER_LOG_FILTER: &str = "info";

/// Per-service keys and short-lived signed tokens (JWS) for messages and HTTP calls.
#[derive(Debug, Parser)]
#[command(
    name = "trustwire",
    version,
    after_help = "Logs go to stderr. RUST_LOG sets the level (default: warn; info for `jwks serve`)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a key directory with a new Ed25519 signing key, an X25519
    /// encryption key and their public JWKS
    Keygen(keygen::KeygenArgs),

    /// Serve public keys (JWKS) over HTTP
    #[command(subcommand)]
    Jwks(jwks::JwksCommand),

    /// Rotate, list, advance and revoke the keys of a key directory
    #[command(subcommand)]
    Keys(keys::KeysCommand),

    /// Sign a token bound to a channel or HTTP request and print it
    Sign(sign::SignArgs),

    /// Verify a token and print its claims as JSON
    Verify(verify::VerifyArgs),

    /// Decode a token's header and claims WITHOUT verifying them
    Inspect(inspect::InspectArgs),

    /// Measure signing and verification rates on this machine, per core
    Bench(bench::BenchArgs),

    /// Encrypt a payload to recipient services (JWE) and sign a token over it
    Seal(seal::SealArgs),

    /// Verify a sealed message's token, decrypt the JWE and print the plaintext
    Open(seal::OpenArgs),

    /// Serve the forward-auth endpoint for nginx, Traefik and Kong (feature `http`)
    #[cfg(feature = "http")]
    Gateway(gateway::GatewayArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();

    let default_filter = match cli.command {
        Command::Jwks(_) => SERVER_LOG_FILTER,
        #[cfg(feature = "http")]
        Command::Gateway(_) => SERVER_LOG_FILTER,
        _ => QUIET_LOG_FILTER,
    };
    init_logging(default_filter);

    let result = match cli.command {
        Command::Keygen(args) => keygen::run(args),
        Command::Jwks(command) => jwks::run(command),
        Command::Keys(command) => keys::run(command),
        Command::Sign(args) => sign::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Seal(args) => seal::run_seal(args),
        Command::Open(args) => seal::run_open(args),
        #[cfg(feature = "http")]
        Command::Gateway(args) => gateway::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            print_stderr_line(&format!("error: {err}"));
            err.exit_code()
        }
    }
}

/// Logs to stderr at the level in `RUST_LOG`, or `default_filter` when it is
/// unset or invalid.
fn init_logging(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colour codes only on a terminal: logs redirected to a file stay plain.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
