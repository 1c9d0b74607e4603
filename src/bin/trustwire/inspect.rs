//! `trustwire inspect`: decodes a token's header and claims without
//! verifying anything, for debugging.

use std::process::ExitCode;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::error::{CliError, EXIT_FAILURE};
use crate::input::read_token;
use crate::output::{print_stderr_line, print_stdout};

/// Largest token read from stdin, in bytes. Far above any real token; it
/// only bounds the memory that garbage input can take.
const MAX_INSPECT_BYTES: usize = 1024 * 1024;

/// The label printed on both stdout and stderr.
const NOT_VERIFIED: &str = "NOT VERIFIED: decoded without checking the signature, issuer, audience, times or binding";

/// Arguments of `trustwire inspect`.
#[derive(Debug, clap::Args)]
pub(crate) struct InspectArgs {
    /// The token, or `-` to read it from stdin (one trailing newline is removed)
    #[arg(value_name = "TOKEN|-")]
    token: String,
}

/// One decoded part of the token, or why it could not be decoded.
struct Part {
    name: &'static str,
    decoded: Result<String, String>,
}

/// Prints what decodes and an error for each part that does not. Exits 1
/// when nothing decodes.
pub(crate) fn run(args: InspectArgs) -> Result<ExitCode, CliError> {
    let bytes = read_token(&args.token, MAX_INSPECT_BYTES)?;
    let text = String::from_utf8_lossy(&bytes);
    let segments: Vec<&str> = text.split('.').collect();
    print_stderr_line(NOT_VERIFIED);
    let parts = decode_parts(&segments);

    let mut report = format!("{NOT_VERIFIED}\n");
    let mut decoded_any = false;
    for part in &parts {
        match &part.decoded {
            Ok(decoded) => {
                decoded_any = true;
                report.push_str(&format!("{}:\n{decoded}\n", part.name));
            }
            Err(reason) => print_stderr_line(&format!("error: {}: {reason}", part.name)),
        }
    }

    if !decoded_any {
        print_stderr_line("error: nothing in the input decodes as a JWS or JWE");
        return Ok(ExitCode::from(EXIT_FAILURE));
    }
    print_stdout(&report)?;
    Ok(ExitCode::SUCCESS)
}

/// Decodes the parts of a compact JWS (3 segments) or JWE (5 segments).
/// Any other segment count is reported, and the first two segments are
/// still decoded as header and claims.
fn decode_parts(segments: &[&str]) -> Vec<Part> {
    let mut parts = vec![Part {
        name: "header",
        decoded: decode_json(segments.first().copied().unwrap_or_default()),
    }];

    match segments.len() {
        3 => {
            parts.push(Part {
                name: "claims",
                decoded: decode_json(segments[1]),
            });
            parts.push(Part {
                name: "signature",
                decoded: decode_base64(segments[2]).map(|bytes| format!("{} bytes", bytes.len())),
            });
        }
        5 => print_stderr_line("note: the token is a JWE; only its protected header is readable without the key"),
        count => {
            parts.push(Part {
                name: "format",
                decoded: Err(format!(
                    "expected 3 dot-separated segments (JWS) or 5 (JWE), found {count}"
                )),
            });
            if let Some(claims) = segments.get(1) {
                parts.push(Part {
                    name: "claims",
                    decoded: decode_json(claims),
                });
            }
        }
    }
    parts
}

fn decode_base64(segment: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|err| format!("not strict unpadded base64url: {err}"))
}

/// Decodes a segment to pretty JSON. serde_json escapes control characters
/// in strings, so the output cannot carry terminal escape sequences.
fn decode_json(segment: &str) -> Result<String, String> {
    if segment.is_empty() {
        return Err("empty".to_owned());
    }
    let bytes = decode_base64(segment)?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|err| format!("not JSON: {err}"))?;
    serde_json::to_string_pretty(&value).map_err(|err| format!("cannot format as JSON: {err}"))
}
