//! Reading tokens and payloads from arguments, files and stdin, and the
//! argument parsers shared by several subcommands.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

use trustwire::Binding;

use crate::error::CliError;

/// The argument value that stands for stdin.
pub(crate) const STDIN_ARG: &str = "-";

/// The source of a payload: a file or stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PayloadSource {
    /// Standard input (`-`).
    Stdin,
    /// A file.
    File(PathBuf),
}

/// Parses a `--payload` value: `-` for stdin, anything else a file path.
pub(crate) fn parse_payload_source(value: &str) -> Result<PayloadSource, String> {
    if value.is_empty() {
        return Err("the payload path is empty; pass a file or - for stdin".to_owned());
    }
    if value == STDIN_ARG {
        return Ok(PayloadSource::Stdin);
    }
    Ok(PayloadSource::File(PathBuf::from(value)))
}

/// Parses a `--channel` value such as `nats:orders.created`.
///
/// Only the two forms the transports bind to are accepted, so that a token
/// signed here can verify where it is sent: `nats:<subject>` and
/// `amqp:<exchange>/<routing key>` (the exchange may be empty).
pub(crate) fn parse_channel(value: &str) -> Result<Binding, String> {
    let binding = Binding::channel(value).map_err(|err| err.to_string())?;
    let transport_form = match value.split_once(':') {
        Some(("nats", subject)) => !subject.is_empty(),
        Some(("amqp", exchange_and_key)) => exchange_and_key.contains('/'),
        _ => false,
    };
    if !transport_form {
        return Err(format!(
            "{value:?} is not a channel the transports bind to; use nats:<subject> or amqp:<exchange>/<routing key>"
        ));
    }
    Ok(binding)
}

/// HTTP methods that a lowercase `--http` method is most likely meant to be.
const STANDARD_METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "PATCH"];

/// Parses an `--http` value such as `"POST /v1/charges?currency=EUR"`.
///
/// HTTP methods are case-sensitive (RFC 9110 section 9.1) and verifiers
/// compare them exactly, so `post` is rejected here rather than signed
/// into a token that no `POST` request would match.
pub(crate) fn parse_http(value: &str) -> Result<Binding, String> {
    let method = value.trim().split(' ').next().unwrap_or_default();
    let upper = method.to_ascii_uppercase();
    if method != upper && STANDARD_METHODS.contains(&upper.as_str()) {
        return Err(format!(
            "HTTP method {method:?} is case-sensitive and would not match a {upper} request; write {upper}"
        ));
    }
    Binding::parse_http(value).map_err(|err| err.to_string())
}

/// Returns the one binding clap let through; clap's argument group makes
/// `--channel` and `--http` required and mutually exclusive.
pub(crate) fn one_binding(channel: Option<Binding>, http: Option<Binding>) -> Result<Binding, CliError> {
    match (channel, http) {
        (Some(binding), None) | (None, Some(binding)) => Ok(binding),
        _ => Err(CliError::usage("pass exactly one of --channel and --http")),
    }
}

/// Reads a payload's exact bytes, never trimming anything.
///
/// With `limit`, reads at most `limit` bytes, so a huge file costs no more
/// memory than that. Callers pass one byte more than they accept, so an
/// oversized payload is still seen as oversized.
pub(crate) fn read_payload(source: &PayloadSource, limit: Option<usize>) -> Result<Vec<u8>, CliError> {
    match source {
        PayloadSource::Stdin => read_limited(std::io::stdin().lock(), limit)
            .map_err(|err| CliError::usage(format!("cannot read the payload from stdin: {err}"))),
        PayloadSource::File(path) => {
            let fail =
                |err: std::io::Error| CliError::usage(format!("cannot read payload file {}: {err}", path.display()));
            let file = File::open(path).map_err(fail)?;
            read_limited(file, limit).map_err(fail)
        }
    }
}

/// Returns the token bytes of a `TOKEN|-` argument: the argument itself, or
/// at most `limit` bytes of stdin for `-`. One trailing newline (`\n` or
/// `\r\n`) is removed, as `echo` and most editors add one.
pub(crate) fn read_token(argument: &str, limit: usize) -> Result<Vec<u8>, CliError> {
    let mut bytes = if argument == STDIN_ARG {
        read_limited(std::io::stdin().lock(), Some(limit))
            .map_err(|err| CliError::usage(format!("cannot read the token from stdin: {err}")))?
    } else {
        // A compact JWS has two dots and a JWE four; another argument that
        // names a file is the common mistake of passing the file instead of
        // `- < FILE`.
        let dots = argument.matches('.').count();
        if dots != 2 && dots != 4 && std::path::Path::new(argument).is_file() {
            return Err(CliError::usage(format!(
                "TOKEN is the token text, but {argument:?} is a file; read it from stdin with `- < {argument}`"
            )));
        }
        argument.as_bytes().to_vec()
    };

    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    Ok(bytes)
}

fn read_limited(reader: impl Read, limit: Option<usize>) -> std::io::Result<Vec<u8>> {
    let limit = limit.map_or(u64::MAX, |limit| u64::try_from(limit).unwrap_or(u64::MAX));
    let mut bytes = Vec::new();
    reader.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}
