//! `trustwire jwks serve`: serves a key directory's public keys over HTTP
//! and reloads them when `jwks.json` changes on disk.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncReadExt;
use tokio::signal::unix::{SignalKind, signal};
use trustwire::ServiceId;
use trustwire::jwks::{JWKS_PATH, JwkSet, JwksPublisher};

use crate::error::{CliError, error_chain};
use crate::keydir::{JWKS_FILE, read_service};
use crate::output::print_stdout;

/// Default `Cache-Control: max-age` of the served set, in seconds; the same
/// as `JwksPublisher::new`.
const DEFAULT_MAX_AGE_SECS: u64 = 300;

/// How often the modification time of `jwks.json` is checked.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Largest `jwks.json` served, in bytes: the default response limit of the
/// remote JWKS cache, so verifiers can fetch whatever is served.
const MAX_JWKS_BYTES: u64 = 256 * 1024;

/// Subcommands of `trustwire jwks`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum JwksCommand {
    /// Serve a key directory's public keys at /.well-known/jwks.json and
    /// reload them when its jwks.json changes
    Serve(ServeArgs),
}

/// Arguments of `trustwire jwks serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Key directory created by `trustwire keygen`; its jwks.json is served
    /// and checked for changes once a second
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,

    /// Address and port to listen on, such as 127.0.0.1:8080 or [::1]:8080;
    /// port 0 picks a free port, which the first output line shows
    #[arg(long, value_name = "ADDR")]
    listen: String,

    /// `Cache-Control: max-age` of the served set, in seconds: how long
    /// verifiers may cache the keys, so publish a new key at least this long
    /// before it signs
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_MAX_AGE_SECS)]
    max_age: u64,
}

/// Runs `trustwire jwks`.
pub(crate) fn run(command: JwksCommand) -> Result<ExitCode, CliError> {
    match command {
        JwksCommand::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> Result<ExitCode, CliError> {
    let service = read_service(&args.dir)?;
    let jwks_path = args.dir.join(JWKS_FILE);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|err| CliError::failed(format!("cannot start the async runtime: {err}")))?;
    runtime.block_on(serve_until_signal(args, service, jwks_path))
}

async fn serve_until_signal(args: ServeArgs, service: ServiceId, jwks_path: PathBuf) -> Result<ExitCode, CliError> {
    // The stamp is taken before the file is read: a change while reading
    // then shows up as a new stamp at the next poll.
    let stamp = file_stamp(&jwks_path).await.ok();
    let set = load_jwks(&jwks_path).await.map_err(CliError::usage)?;
    let publisher = JwksPublisher::with_max_age(&set, Duration::from_secs(args.max_age));

    let signal_error = |err: std::io::Error| CliError::failed(format!("cannot install a signal handler: {err}"));
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;

    let listener = tokio::net::TcpListener::bind(&args.listen).await.map_err(|err| {
        CliError::usage(format!(
            "cannot listen on {}: {err}; choose another address or port",
            args.listen
        ))
    })?;
    let address = listener
        .local_addr()
        .map_err(|err| CliError::failed(format!("cannot read the bound address: {err}")))?;
    let url = format!("http://{address}{JWKS_PATH}");

    print_stdout(&format!("serving JWKS of {service} at {url}\n"))?;
    tracing::info!(service = %service, url = %url, kids = ?kids(&set), max_age_s = args.max_age, "serving JWKS");

    let watcher = tokio::spawn(watch_jwks(jwks_path, stamp, publisher.clone()));
    let shutdown = async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!(signal = name, "received signal; shutting down");
    };
    let served = axum::serve(listener, publisher.router())
        .with_graceful_shutdown(shutdown)
        .await;
    watcher.abort();

    served.map_err(|err| CliError::failed(format!("serving JWKS at {url} failed: {err}")))?;
    tracing::info!(service = %service, "stopped serving JWKS");
    Ok(ExitCode::SUCCESS)
}

/// The identity of one version of a file. A replacement by rename changes
/// the inode, and an edit in place changes the modification time or size.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

async fn file_stamp(path: &Path) -> std::io::Result<FileStamp> {
    let metadata = tokio::fs::metadata(path).await?;
    Ok(FileStamp {
        modified: metadata.modified().ok(),
        len: metadata.len(),
        inode: metadata.ino(),
    })
}

/// Checks the file once per [`POLL_INTERVAL`] and serves each new valid
/// version. An invalid or missing file is logged once per change and the
/// previous keys stay served.
async fn watch_jwks(path: PathBuf, mut last: Option<FileStamp>, publisher: JwksPublisher) {
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;

    loop {
        interval.tick().await;
        let current = match file_stamp(&path).await {
            Ok(stamp) => Some(stamp),
            Err(err) => {
                if last.is_some() {
                    tracing::warn!(path = %path.display(), error = %err, "cannot read jwks.json; still serving the previous keys");
                }
                None
            }
        };
        if current.is_none() || current == last {
            last = current;
            continue;
        }
        last = current;

        match load_jwks(&path).await {
            Ok(set) => {
                publisher.update(&set);
                tracing::info!(path = %path.display(), kids = ?kids(&set), "reloaded jwks.json");
            }
            Err(reason) => {
                tracing::warn!(path = %path.display(), error = %reason, "jwks.json changed but cannot be served; still serving the previous keys");
            }
        }
    }
}

/// Reads and checks a public JWK Set file. Parsing rejects private key
/// members, so a private key written there by mistake is never served.
///
/// NOTE: `JwkSet` keeps signature keys only, so keys it skips (`use: enc`,
/// unknown types) are not served.
async fn load_jwks(path: &Path) -> Result<JwkSet, String> {
    let fail = |reason: String| format!("cannot serve {}: {reason}", path.display());

    let file = tokio::fs::File::open(path).await.map_err(|err| fail(err.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_JWKS_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|err| fail(err.to_string()))?;
    if bytes.len() as u64 > MAX_JWKS_BYTES {
        return Err(fail(format!("the file is larger than {MAX_JWKS_BYTES} bytes")));
    }

    let set = JwkSet::parse(&bytes).map_err(|err| fail(error_chain(&err)))?;
    if set.keys().is_empty() {
        return Err(fail(
            "it contains no signature keys, so no token could verify".to_owned(),
        ));
    }
    Ok(set)
}

fn kids(set: &JwkSet) -> Vec<&str> {
    set.keys().iter().map(|key| key.kid()).collect()
}
