//! `trustwire gateway`: the forward-auth endpoint that nginx `auth_request`,
//! Traefik ForwardAuth and Kong call, and `gateway new-key`, which creates
//! API keys and stores their hashes.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};
use trustwire::http::gateway::{GatewayConfig, generate_api_key};

use crate::error::{CliError, error_chain};
use crate::output::print_stdout;

/// Arguments of `trustwire gateway`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct GatewayArgs {
    #[command(subcommand)]
    command: Option<GatewayCommand>,

    /// Gateway configuration file (TOML): key directory, API keys file,
    /// identity providers and routes; see docs/gateways.md
    #[arg(long, value_name = "FILE", env = "TRUSTWIRE_GATEWAY_CONFIG")]
    config: Option<PathBuf>,

    /// Address to listen on, overriding `listen` in the configuration
    /// (default 127.0.0.1:9400)
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
}

#[derive(Debug, clap::Subcommand)]
enum GatewayCommand {
    /// Create a random API key for a consumer, append its SHA-256 to the
    /// keys file and print the key once on stdout
    NewKey(NewKeyArgs),
}

#[derive(Debug, clap::Args)]
struct NewKeyArgs {
    /// Consumer the key authenticates, the `sub` of the gateway's tokens
    #[arg(long, value_name = "NAME")]
    consumer: String,

    /// API keys file to append to; created with mode 0600 when missing
    #[arg(long, value_name = "FILE")]
    keys: PathBuf,
}

/// Runs `gateway new-key`, or serves the gateway until SIGINT or SIGTERM.
pub(crate) fn run(args: GatewayArgs) -> Result<ExitCode, CliError> {
    if let Some(GatewayCommand::NewKey(new_key)) = args.command {
        return create_key(new_key);
    }

    let Some(config_path) = args.config else {
        return Err(CliError::usage(
            "no configuration: pass --config FILE or set TRUSTWIRE_GATEWAY_CONFIG",
        ));
    };
    let mut config = GatewayConfig::load(&config_path).map_err(|err| CliError::usage(error_chain(&err)))?;
    if let Some(listen) = args.listen {
        config.set_listen(listen);
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|err| CliError::failed(format!("cannot start the async runtime: {err}")))?;
    runtime.block_on(serve_until_signal(config))
}

async fn serve_until_signal(config: GatewayConfig) -> Result<ExitCode, CliError> {
    let gateway = config.build().map_err(|err| CliError::usage(error_chain(&err)))?;

    let signal_error = |err: std::io::Error| CliError::failed(format!("cannot install a signal handler: {err}"));
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;

    let listener = tokio::net::TcpListener::bind(config.listen()).await.map_err(|err| {
        CliError::usage(format!(
            "cannot listen on {}: {err}; choose another address or port",
            config.listen()
        ))
    })?;
    let address = listener
        .local_addr()
        .map_err(|err| CliError::failed(format!("cannot read the bound address: {err}")))?;

    print_stdout(&format!(
        "gateway {} listening on http://{address}\n",
        gateway.service()
    ))?;
    tracing::info!(iss = %gateway.service(), address = %address, "serving forward-auth");

    let shutdown = async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!(signal = name, "received signal; shutting down");
    };
    axum::serve(listener, gateway.router())
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|err| CliError::failed(format!("serving the gateway on {address} failed: {err}")))?;
    tracing::info!(iss = %gateway.service(), "stopped serving forward-auth");
    Ok(ExitCode::SUCCESS)
}

fn create_key(args: NewKeyArgs) -> Result<ExitCode, CliError> {
    let generated = generate_api_key(&args.consumer).map_err(|err| CliError::usage(error_chain(&err)))?;

    let write_error = |err: std::io::Error| {
        CliError::failed(format!(
            "cannot append to the API keys file {}: {err}",
            args.keys.display()
        ))
    };
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&args.keys)
        .map_err(write_error)?;
    file.write_all(format!("\n{}", generated.entry).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(write_error)?;
    tracing::info!(consumer = %args.consumer, file = %args.keys.display(), "stored a new API key hash");

    print_stdout(&format!("{}\n", generated.key.as_str()))?;
    Ok(ExitCode::SUCCESS)
}
