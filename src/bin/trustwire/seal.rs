//! `trustwire seal` and `trustwire open`: sealed (encrypted) messages, the
//! counterparts of `sign` and `verify`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use trustwire::envelope::{
    DEFAULT_LEEWAY, DEFAULT_MAX_LIFETIME, DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_MAX_TOKEN_BYTES, DEFAULT_TTL,
    MAX_SAFE_LEEWAY, SignError,
};
use trustwire::jwks::{KeySource, TrustStore};
use trustwire::seal::{DEFAULT_MAX_SEALED_BYTES, Opener, Recipient, SealError, Sealer};
use trustwire::{Binding, Expected, KeyDir, Policy, ServiceId, Signer, Verifier};

use crate::error::{CliError, EXIT_FAILURE, error_chain, key_error};
use crate::input::{
    PayloadSource, STDIN_ARG, one_binding, parse_channel, parse_http, parse_payload_source, read_payload, read_token,
};
use crate::output::{print_stderr_line, print_stdout};

/// Maximum lifetime `--ttl` accepts, in seconds.
const MAX_TTL_SECS: u64 = 3600;

/// Arguments of `trustwire seal`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Writes the JWE to --out and prints the signed token on stdout; \
    send both, the JWE as the message payload and the token where a signed message carries its token.")]
pub(crate) struct SealArgs {
    /// Key directory created by `trustwire keygen`; its active key signs and
    /// its service id is the `iss` of the token and of the JWE header
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,

    /// Receiving service and the source of its public keys, as SERVICE=URL or
    /// SERVICE=FILE; its first X25519 (else P-256) `use: enc` key is sealed
    /// to. A value starting with http:// or https:// is a JWKS URL (plain
    /// http:// only to loopback). Repeat the option to seal to several
    /// services with one JWE (JSON serialization); the token's `aud` lists them
    #[arg(long = "recipient", value_name = "SERVICE=URL_OR_FILE", required = true, value_parser = parse_key_source_arg)]
    recipients: Vec<KeySourceArg>,

    #[command(flatten)]
    binding: ChannelOrHttp,

    /// File with the payload to encrypt; `-` reads stdin
    #[arg(long, value_name = "FILE|-", value_parser = parse_payload_source)]
    payload: PayloadSource,

    /// File to write the JWE to (created or replaced)
    #[arg(long, value_name = "FILE")]
    out: PathBuf,

    /// Token lifetime from `iat` to `exp`, in seconds (1 to 3600)
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = DEFAULT_TTL.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=MAX_TTL_SECS),
    )]
    ttl: u64,

    /// Principal the sender acts for, the `sub` claim; 1 to 1024 bytes. It
    /// travels in the signed token, which is not encrypted
    #[arg(long, value_name = "SUB")]
    subject: Option<String>,
}

/// Arguments of `trustwire open`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 opened (the plaintext on stdout or in --out), 1 rejected \
    (`rejected: <reason_code>: <detail>` on stderr), 2 usage or configuration error."
)]
pub(crate) struct OpenArgs {
    /// This service's key directory: its service id is the audience the
    /// token must name, and its encryption keys decrypt
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,

    /// Trusted issuer and the source of its public keys, as ISSUER=URL or
    /// ISSUER=FILE, as for `verify`. Repeat the option for several issuers
    #[arg(long = "trust", value_name = "ISSUER=URL_OR_FILE", required = true, value_parser = parse_key_source_arg)]
    trust: Vec<KeySourceArg>,

    #[command(flatten)]
    binding: ChannelOrHttp,

    /// File with the JWE that arrived as the payload; `-` reads stdin
    #[arg(long, value_name = "FILE|-", value_parser = parse_payload_source)]
    jwe: PayloadSource,

    /// File to write the plaintext to; without it the plaintext goes to stdout
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,

    /// Policy file (TOML) listing which issuer may send on which channel or
    /// call which route. Without it every trusted issuer is allowed everywhere
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,

    /// Allowed clock difference for `exp`, `nbf` and `iat`, in seconds (0 to 300)
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = DEFAULT_LEEWAY.as_secs(),
        value_parser = clap::value_parser!(u64).range(0..=MAX_SAFE_LEEWAY.as_secs()),
    )]
    leeway: u64,

    /// Maximum accepted token lifetime (`exp` minus `iat`), in seconds
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = DEFAULT_MAX_LIFETIME.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..),
    )]
    max_lifetime: u64,

    /// The token, or `-` to read it from stdin (one trailing newline is removed)
    #[arg(value_name = "TOKEN|-")]
    token: String,
}

/// The channel or HTTP request a sealed message is bound to: exactly one of the two.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct ChannelOrHttp {
    /// Message channel, the whole `chn` claim, such as `nats:orders.created`
    #[arg(long, value_name = "CHN", value_parser = parse_channel)]
    channel: Option<Binding>,

    /// HTTP request, the `htm` and `htu` claims: method and path with query,
    /// such as "POST /v1/charges?currency=EUR"
    #[arg(long, value_name = "METHOD PATH", value_parser = parse_http)]
    http: Option<Binding>,
}

/// One SERVICE=URL_OR_FILE value, before its keys are loaded.
#[derive(Debug, Clone)]
struct KeySourceArg {
    service: ServiceId,
    location: String,
}

fn parse_key_source_arg(value: &str) -> Result<KeySourceArg, String> {
    let Some((service, location)) = value.split_once('=') else {
        return Err(
            "expected SERVICE=URL_OR_FILE, such as payments=https://payments.internal/.well-known/jwks.json".to_owned(),
        );
    };
    let service = ServiceId::new(service).map_err(|err| err.to_string())?;
    if location.is_empty() {
        return Err(format!("no JWKS URL or file given for {service}"));
    }
    Ok(KeySourceArg {
        service,
        location: location.to_owned(),
    })
}

/// Builds the key source of one argument: a URL or a file.
// NOTE: `verify` parses --trust the same way in its own module; keep the two
// in step.
fn key_source(arg: &KeySourceArg, option: &str) -> Result<KeySource, CliError> {
    let source = if arg.location.starts_with("http://") || arg.location.starts_with("https://") {
        KeySource::remote(&arg.location)
    } else {
        KeySource::file(Path::new(&arg.location))
    };
    source.map_err(|err| CliError::usage(format!("{option} {}: {}", arg.service, error_chain(&err))))
}

/// Rejects a service given twice to one option.
fn check_unique(args: &[KeySourceArg], option: &str) -> Result<(), CliError> {
    let mut seen = BTreeSet::new();
    for arg in args {
        if !seen.insert(&arg.service) {
            return Err(CliError::usage(format!(
                "{option} names {} twice; give each service one key source",
                arg.service
            )));
        }
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| CliError::failed(format!("cannot start the async runtime: {err}")))
}

/// Seals the payload, writes the JWE and prints the token.
pub(crate) fn run_seal(args: SealArgs) -> Result<ExitCode, CliError> {
    check_unique(&args.recipients, "--recipient")?;
    let binding = one_binding(args.binding.channel, args.binding.http)?;
    let payload = read_payload(&args.payload, None)?;

    let keys = KeyDir::open(&args.dir).map_err(key_error)?;
    let service = keys.service().clone();
    let signer = Signer::builder(service, keys.into_active_key())
        .max_ttl(Duration::from_secs(MAX_TTL_SECS))
        .ttl(Duration::from_secs(args.ttl))
        .build()
        .map_err(sign_error)?;
    let sealer = Sealer::new(signer);

    let recipients = runtime()?.block_on(async {
        let mut recipients = Vec::with_capacity(args.recipients.len());
        for arg in &args.recipients {
            let source = key_source(arg, "--recipient")?;
            let recipient = Recipient::from_source(arg.service.clone(), &source)
                .await
                .map_err(|err| CliError::usage(format!("--recipient {}: {}", arg.service, error_chain(&err))))?;
            recipients.push(recipient);
        }
        Ok::<_, CliError>(recipients)
    })?;

    let mut message = sealer.message(&recipients, binding);
    if let Some(subject) = &args.subject {
        message = message.subject(subject);
    }
    let sealed = message.seal(&payload).map_err(seal_error)?;

    std::fs::write(&args.out, &sealed.jwe)
        .map_err(|err| CliError::usage(format!("cannot write the JWE to {}: {err}", args.out.display())))?;
    print_stdout(&format!("{}\n", sealed.token))?;
    Ok(ExitCode::SUCCESS)
}

fn sign_error(err: SignError) -> CliError {
    match err {
        SignError::InvalidLifetime { .. } => CliError::usage(format!("--ttl: {}", error_chain(&err))),
        SignError::InvalidSubject(_) => CliError::usage(format!("--subject: {}", error_chain(&err))),
        _ => CliError::failed(format!("signing failed: {}", error_chain(&err))),
    }
}

fn seal_error(err: SealError) -> CliError {
    match err {
        SealError::Sign(err) => sign_error(err),
        SealError::Random(_) | SealError::KeyAgreement(_) => {
            CliError::failed(format!("sealing failed: {}", error_chain(&err)))
        }
        _ => CliError::usage(format!("--recipient: {}", error_chain(&err))),
    }
}

/// Verifies the token, decrypts the JWE and writes the plaintext, or prints
/// the rejection on stderr.
pub(crate) fn run_open(args: OpenArgs) -> Result<ExitCode, CliError> {
    if args.token == STDIN_ARG && args.jwe == PayloadSource::Stdin {
        return Err(CliError::usage(
            "the token and the JWE cannot both be read from stdin; pass the token as an argument or the JWE as a file",
        ));
    }
    check_unique(&args.trust, "--trust")?;
    let binding = one_binding(args.binding.channel, args.binding.http)?;
    let policy = args.policy.as_deref().map(load_policy).transpose()?;

    let keys = KeyDir::open(&args.dir).map_err(key_error)?;
    let audience = keys.service().clone();
    let (_, encryption_keys) = keys.into_keys();
    if encryption_keys.is_empty() {
        return Err(CliError::usage(format!(
            "the key directory {} has no encryption key; it was created before sealed messages existed, so create a new one with `trustwire keygen`",
            args.dir.display()
        )));
    }

    // One byte over each limit, so an oversized input is still rejected as
    // too large instead of being read truncated.
    let max_jwe = DEFAULT_MAX_SEALED_BYTES.max(DEFAULT_MAX_PAYLOAD_BYTES) + 1;
    let jwe = read_payload(&args.jwe, Some(max_jwe))?;
    let token = read_token(&args.token, DEFAULT_MAX_TOKEN_BYTES + 1)?;
    let token = String::from_utf8(token).map_err(|_| CliError::usage("the token is not UTF-8 text"))?;

    runtime()?.block_on(async {
        let mut trust = TrustStore::new();
        for arg in &args.trust {
            trust = trust.trust(arg.service.clone(), key_source(arg, "--trust")?);
        }
        let mut builder = Verifier::builder(audience, trust)
            .leeway(Duration::from_secs(args.leeway))
            .max_lifetime(Duration::from_secs(args.max_lifetime));
        if let Some(policy) = policy {
            builder = builder.policy(policy);
        }
        let verifier = builder.build().map_err(|err| CliError::usage(error_chain(&err)))?;
        // Fetch every remote issuer first, as `verify` does, so a kid of
        // another trusted issuer is reported as issuer_mismatch.
        let _ = verifier.trust_store().prefetch().await;
        let opener = Opener::new(verifier, encryption_keys).map_err(|err| CliError::usage(error_chain(&err)))?;

        match opener.open(&token, &Expected::new(binding, Some(&jwe))).await {
            Ok(opened) => {
                match &args.out {
                    Some(path) => std::fs::write(path, &opened.plaintext).map_err(|err| {
                        CliError::usage(format!("cannot write the plaintext to {}: {err}", path.display()))
                    })?,
                    None => print_stdout_bytes(&opened.plaintext)?,
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(rejection) => {
                print_stderr_line(&format!("rejected: {}: {}", rejection.code(), rejection.detail()));
                Ok(ExitCode::from(EXIT_FAILURE))
            }
        }
    })
}

/// Writes raw bytes to stdout: a plaintext need not be UTF-8.
fn print_stdout_bytes(bytes: &[u8]) -> Result<(), CliError> {
    use std::io::Write;

    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(|err| CliError::failed(format!("cannot write to stdout: {err}")))
}

fn load_policy(path: &Path) -> Result<Policy, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| CliError::usage(format!("cannot read policy file {}: {err}", path.display())))?;
    Policy::from_toml(&text)
        .map_err(|err| CliError::usage(format!("invalid policy file {}: {}", path.display(), error_chain(&err))))
}
