//! Command failures and the exit status each one maps to.

use std::fmt;
use std::process::ExitCode;

/// Exit status of a rejected token, of `inspect` when nothing decodes and of
/// a failure while running.
pub(crate) const EXIT_FAILURE: u8 = 1;

/// Exit status of bad arguments and configuration: unreadable files, an
/// invalid policy, a key directory that cannot be used. clap exits with the
/// same status on its own usage errors.
pub(crate) const EXIT_USAGE: u8 = 2;

/// A command failure. The message names what failed and how to fix it.
#[derive(Debug)]
pub(crate) enum CliError {
    /// Bad arguments or configuration; exit status 2.
    Usage(String),
    /// A failure while running; exit status 1.
    Failed(String),
}

impl CliError {
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::Usage(message.into())
    }

    pub(crate) fn failed(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }

    pub(crate) fn exit_code(&self) -> ExitCode {
        match self {
            Self::Usage(_) => ExitCode::from(EXIT_USAGE),
            Self::Failed(_) => ExitCode::from(EXIT_FAILURE),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(message) | Self::Failed(message) => f.write_str(message),
        }
    }
}

/// Formats an error with its chain of sources, `outer: inner: innermost`,
/// because library errors keep the cause out of their own message.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Maps a key error: a failed random number generator is a failure while
/// running, everything else (permissions, missing or invalid files) is
/// configuration the user can fix.
pub(crate) fn key_error(err: trustwire::KeyError) -> CliError {
    match err {
        trustwire::KeyError::Random(_) => CliError::failed(error_chain(&err)),
        _ => CliError::usage(error_chain(&err)),
    }
}
