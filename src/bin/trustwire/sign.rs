//! `trustwire sign`: signs a token with a key directory's active key.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use trustwire::envelope::{DEFAULT_TTL, SignError};
use trustwire::{Audience, Binding, KeyDir, ServiceId, Signer};

use crate::error::{CliError, error_chain, key_error};
use crate::input::{PayloadSource, one_binding, parse_channel, parse_http, parse_payload_source, read_payload};
use crate::output::print_stdout;

/// Maximum token lifetime that `--ttl` accepts, in seconds.
const MAX_TTL_SECS: u64 = 3600;

/// Arguments of `trustwire sign`.
#[derive(Debug, clap::Args)]
pub(crate) struct SignArgs {
    /// Key directory created by `trustwire keygen`; its active key signs and
    /// its service id is the `iss` claim
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,

    /// Receiving service, the `aud` claim; repeat the option for several
    /// receivers
    #[arg(long = "audience", value_name = "AUD", required = true)]
    audiences: Vec<ServiceId>,

    #[command(flatten)]
    binding: SignBinding,

    /// File whose exact bytes the token is bound to: the `dig` claim is their
    /// SHA-256. `-` reads stdin. Without it the token binds no payload
    #[arg(long, value_name = "FILE|-", value_parser = parse_payload_source)]
    payload: Option<PayloadSource>,

    /// Token lifetime from `iat` to `exp`, in seconds (1 to 3600). Verifiers
    /// reject lifetimes above their own maximum (600 seconds by default)
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = DEFAULT_TTL.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=MAX_TTL_SECS),
    )]
    ttl: u64,

    /// Principal the sender acts for, the `sub` claim (such as the end user
    /// a gateway authenticated); 1 to 1024 bytes
    #[arg(long, value_name = "SUB")]
    subject: Option<String>,

    /// Write `alg: Ed25519` (RFC 9864) in the header instead of `alg: EdDSA`.
    /// Verifiers that predate RFC 9864 accept only `EdDSA`
    #[arg(long)]
    fully_specified_alg: bool,
}

/// The channel or HTTP request the signed token is bound to (exactly one).
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct SignBinding {
    /// Message channel the token is bound to, the whole `chn` claim, such as
    /// `nats:orders.created` or `amqp:events/orders.created`
    #[arg(long, value_name = "CHN", value_parser = parse_channel)]
    channel: Option<Binding>,

    /// HTTP request the token is bound to, the `htm` and `htu` claims: method
    /// and path with query, such as "POST /v1/charges?currency=EUR"
    #[arg(long, value_name = "METHOD PATH", value_parser = parse_http)]
    http: Option<Binding>,
}

/// Signs the token and prints it on stdout.
pub(crate) fn run(args: SignArgs) -> Result<ExitCode, CliError> {
    let keys = KeyDir::open(&args.dir).map_err(key_error)?;
    let service = keys.service().clone();
    let mut builder = Signer::builder(service, keys.into_active_key())
        .max_ttl(Duration::from_secs(MAX_TTL_SECS))
        .ttl(Duration::from_secs(args.ttl));
    if args.fully_specified_alg {
        builder = builder.fully_specified_alg();
    }
    let signer = builder.build().map_err(sign_error)?;

    let binding = one_binding(args.binding.channel, args.binding.http)?;
    let audience = Audience::many(args.audiences).ok_or_else(|| CliError::usage("pass at least one --audience"))?;
    let payload = args.payload.map(|source| read_payload(&source, None)).transpose()?;

    let mut token = signer.token(audience).binding(binding);
    if let Some(payload) = &payload {
        token = token.payload(payload);
    }
    if let Some(subject) = &args.subject {
        token = token.subject(subject);
    }
    let token = token.sign().map_err(sign_error)?;

    print_stdout(&format!("{token}\n"))?;
    Ok(ExitCode::SUCCESS)
}

fn sign_error(err: SignError) -> CliError {
    match err {
        SignError::InvalidLifetime { .. } => CliError::usage(format!("--ttl: {}", error_chain(&err))),
        SignError::InvalidSubject(_) => CliError::usage(format!("--subject: {}", error_chain(&err))),
        _ => CliError::failed(format!("signing failed: {}", error_chain(&err))),
    }
}
