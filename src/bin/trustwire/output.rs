//! Writing results to stdout and messages to stderr without panicking when
//! the reader has gone away (a closed pipe).

use std::io::Write;

use crate::error::CliError;

/// Writes `text` to stdout and flushes it.
pub(crate) fn print_stdout(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|err| CliError::failed(format!("cannot write to stdout: {err}")))
}

/// Writes one line to stderr. A failed write is ignored: stderr is where
/// the failure would be reported.
pub(crate) fn print_stderr_line(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}
