//! `trustwire verify`: verifies a token against trusted issuers' keys, the
//! channel or request it arrived on, its payload and a policy.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use trustwire::envelope::{
    DEFAULT_LEEWAY, DEFAULT_MAX_LIFETIME, DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_MAX_TOKEN_BYTES, MAX_SAFE_LEEWAY,
};
use trustwire::jwks::{KeySource, TrustStore};
use trustwire::{Binding, Expected, Policy, ServiceId, Verifier};

use crate::error::{CliError, EXIT_FAILURE, error_chain};
use crate::input::{
    PayloadSource, STDIN_ARG, one_binding, parse_channel, parse_http, parse_payload_source, read_payload, read_token,
};
use crate::output::{print_stderr_line, print_stdout};

/// Arguments of `trustwire verify`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Exit status: 0 verified (claims as JSON on stdout), 1 rejected \
    (`rejected: <reason_code>: <detail>` on stderr), 2 usage or configuration error.")]
pub(crate) struct VerifyArgs {
    /// Trusted issuer and the source of its public keys, as ISSUER=URL or
    /// ISSUER=FILE. A value starting with http:// or https:// is a JWKS URL
    /// (plain http:// only to loopback); anything else is a JWKS or single
    /// JWK file. Repeat the option for several issuers
    #[arg(long = "trust", value_name = "ISSUER=URL_OR_FILE", required = true, value_parser = parse_trust)]
    trust: Vec<TrustArg>,

    /// This service's id; the token's `aud` claim must contain it
    #[arg(long, value_name = "SELF")]
    audience: ServiceId,

    #[command(flatten)]
    binding: VerifyBinding,

    /// File with the exact payload that arrived, checked against the `dig`
    /// claim; `-` reads stdin. Without it the token must bind no payload
    #[arg(long, value_name = "FILE|-", value_parser = parse_payload_source)]
    payload: Option<PayloadSource>,

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

    /// Longest accepted token lifetime (`exp` minus `iat`), in seconds
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

/// The channel or HTTP request that arrived (exactly one).
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct VerifyBinding {
    /// Message channel the message arrived on, compared with the whole `chn`
    /// claim, such as `nats:orders.created`
    #[arg(long, value_name = "CHN", value_parser = parse_channel)]
    channel: Option<Binding>,

    /// HTTP request that arrived, compared with the `htm` and `htu` claims:
    /// method and path with query, such as "POST /v1/charges?currency=EUR"
    #[arg(long, value_name = "METHOD PATH", value_parser = parse_http)]
    http: Option<Binding>,
}

/// One `--trust ISSUER=URL_OR_FILE` value, before its keys are loaded.
#[derive(Debug, Clone)]
struct TrustArg {
    issuer: ServiceId,
    location: String,
}

fn parse_trust(value: &str) -> Result<TrustArg, String> {
    let Some((issuer, location)) = value.split_once('=') else {
        return Err(
            "expected ISSUER=URL_OR_FILE, such as orders=https://orders.internal/.well-known/jwks.json".to_owned(),
        );
    };
    let issuer = ServiceId::new(issuer).map_err(|err| err.to_string())?;
    if location.is_empty() {
        return Err(format!("no JWKS URL or file given for issuer {issuer}"));
    }
    Ok(TrustArg {
        issuer,
        location: location.to_owned(),
    })
}

/// Verifies the token; prints the claims, or the rejection on stderr.
pub(crate) fn run(args: VerifyArgs) -> Result<ExitCode, CliError> {
    if args.token == STDIN_ARG && args.payload == Some(PayloadSource::Stdin) {
        return Err(CliError::usage(
            "the token and the payload cannot both be read from stdin; pass the token as an argument or the payload as a file",
        ));
    }

    let binding = one_binding(args.binding.channel, args.binding.http)?;
    let policy = args.policy.as_deref().map(load_policy).transpose()?;

    // Read one byte over each limit, so the verifier rejects an oversized
    // input as too_large instead of checking a truncated copy.
    let payload = args
        .payload
        .as_ref()
        .map(|source| read_payload(source, Some(DEFAULT_MAX_PAYLOAD_BYTES + 1)))
        .transpose()?;
    let token = read_token(&args.token, DEFAULT_MAX_TOKEN_BYTES + 1)?;
    if token.is_empty() {
        return Err(CliError::usage(
            "the token is empty; pass it as TOKEN or on stdin with -",
        ));
    }
    let token = String::from_utf8(token).map_err(|_| CliError::usage("the token is not UTF-8 text"))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| CliError::failed(format!("cannot start the async runtime: {err}")))?;
    runtime.block_on(async {
        let trust = build_trust_store(&args.trust)?;
        let mut builder = Verifier::builder(args.audience, trust)
            .leeway(Duration::from_secs(args.leeway))
            .max_lifetime(Duration::from_secs(args.max_lifetime));
        if let Some(policy) = policy {
            builder = builder.policy(policy);
        }
        let verifier = builder.build().map_err(|err| CliError::usage(error_chain(&err)))?;

        // Fetch every remote issuer first, so a kid that belongs to another
        // trusted issuer is reported as issuer_mismatch, not unknown_key. A
        // failed fetch is logged; verify() reports it if the token needs it.
        let _ = verifier.trust_store().prefetch().await;

        let expected = Expected::new(binding, payload.as_deref());
        match verifier.verify(&token, &expected).await {
            Ok(verified) => {
                let claims = serde_json::to_string_pretty(&verified.claims)
                    .map_err(|err| CliError::failed(format!("cannot encode the claims as JSON: {err}")))?;
                print_stdout(&format!("{claims}\n"))?;
                Ok(ExitCode::SUCCESS)
            }
            Err(rejection) => {
                print_stderr_line(&format!("rejected: {}: {}", rejection.code(), rejection.detail()));
                Ok(ExitCode::from(EXIT_FAILURE))
            }
        }
    })
}

fn build_trust_store(args: &[TrustArg]) -> Result<TrustStore, CliError> {
    let mut seen = BTreeSet::new();
    let mut trust = TrustStore::new();
    for arg in args {
        if !seen.insert(arg.issuer.clone()) {
            return Err(CliError::usage(format!(
                "--trust names issuer {} twice; give each issuer one key source",
                arg.issuer
            )));
        }

        let source = if arg.location.starts_with("http://") || arg.location.starts_with("https://") {
            KeySource::remote(&arg.location)
        } else {
            KeySource::file(Path::new(&arg.location))
        };
        let source = source.map_err(|err| CliError::usage(format!("--trust {}: {}", arg.issuer, error_chain(&err))))?;
        trust = trust.trust(arg.issuer.clone(), source);
    }
    Ok(trust)
}

fn load_policy(path: &Path) -> Result<Policy, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| CliError::usage(format!("cannot read policy file {}: {err}", path.display())))?;
    Policy::from_toml(&text)
        .map_err(|err| CliError::usage(format!("invalid policy file {}: {}", path.display(), error_chain(&err))))
}
