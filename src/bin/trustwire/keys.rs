//! `trustwire keys`: rotates, lists, advances and revokes the keys of a key
//! directory. Each command that changes keys rewrites `jwks.json`, which a
//! running `trustwire jwks serve` reloads within a second.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use trustwire::KeyDir;
use trustwire::keys::{DEFAULT_PRE_PUBLISH, DEFAULT_RETENTION, KeyRecord, Rotation};

use crate::error::{CliError, key_error};
use crate::output::{print_stderr_line, print_stdout};

/// Default of `--max-cache-age`: the `Cache-Control: max-age` that
/// `trustwire jwks serve` sends by default.
const DEFAULT_MAX_CACHE_AGE_SECS: u64 = 300;

/// Subcommands of `trustwire keys`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum KeysCommand {
    /// Publish a new next key that starts signing after the pre-publication
    /// delay, and schedule the active key to retire then
    Rotate(RotateArgs),

    /// Show every key of a key directory with its state and times
    List(ListArgs),

    /// Write the states the clock has reached to keys.json, delete the
    /// private files of keys whose retention ended and drop them from
    /// jwks.json; run it from a timer, such as every minute
    Advance(DirArgs),

    /// Remove a key from jwks.json at once and delete its private file; a
    /// revoked active key is replaced by the next key or a new one
    Revoke(RevokeArgs),
}

/// The key directory option shared by every `keys` subcommand.
#[derive(Debug, clap::Args)]
pub(crate) struct DirArgs {
    /// Key directory created by `trustwire keygen`
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
}

/// Arguments of `trustwire keys rotate`.
#[derive(Debug, clap::Args)]
pub(crate) struct RotateArgs {
    #[command(flatten)]
    dir: DirArgs,

    /// Seconds the new key is published before it signs. Use at least the
    /// longest time any verifier caches this JWKS (`--max-cache-age`)
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_PRE_PUBLISH.as_secs())]
    pre_publish: u64,

    /// Longest time, in seconds, that any verifier caches this JWKS: the
    /// `--max-age` of `trustwire jwks serve`, or more for gateways that keep
    /// keys longer. A shorter `--pre-publish` prints a warning
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_MAX_CACHE_AGE_SECS)]
    max_cache_age: u64,

    /// Seconds the retiring key stays published after it stops signing: the
    /// longest token lifetime this service signs with plus the verifiers'
    /// leeway (default: 600 s maximum lifetime + 30 s leeway)
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_RETENTION.as_secs())]
    retain: u64,
}

/// Arguments of `trustwire keys list`.
#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    dir: DirArgs,

    /// Print a JSON array instead of a table, with times in Unix seconds
    #[arg(long)]
    json: bool,
}

/// Arguments of `trustwire keys revoke`.
#[derive(Debug, clap::Args)]
pub(crate) struct RevokeArgs {
    /// Key id to revoke, as `trustwire keys list` shows it (a kid may start
    /// with `-`)
    #[arg(value_name = "KID", allow_hyphen_values = true)]
    kid: String,

    #[command(flatten)]
    dir: DirArgs,
}

/// Runs `trustwire keys`.
pub(crate) fn run(command: KeysCommand) -> Result<ExitCode, CliError> {
    match command {
        KeysCommand::Rotate(args) => rotate(args),
        KeysCommand::List(args) => list(args),
        KeysCommand::Advance(args) => advance(args),
        KeysCommand::Revoke(args) => revoke(args),
    }
}

fn rotate(args: RotateArgs) -> Result<ExitCode, CliError> {
    if args.pre_publish < args.max_cache_age {
        print_stderr_line(&format!(
            "warning: the pre-publication delay ({} s) is shorter than the verifiers' maximum cache age ({} s): \
             a verifier that cached the JWKS just before this rotation does not have the new key when it starts \
             signing, and rejects its tokens as unknown_key until its unknown-kid refresh fetches the JWKS again; \
             use --pre-publish {} or more",
            args.pre_publish, args.max_cache_age, args.max_cache_age
        ));
    }

    let mut keys = KeyDir::open(&args.dir.dir).map_err(key_error)?;
    let rotation = Rotation {
        pre_publish: Duration::from_secs(args.pre_publish),
        retention: Duration::from_secs(args.retain),
    };
    let kid = keys.rotate(&rotation).map_err(key_error)?.kid().to_owned();

    // `rotate` reads the directory again once it holds the write lock, so
    // the key it retires is found in the records it wrote, not in the
    // active key of the directory as `open` read it.
    let records = keys.records();
    let activate_at = records
        .iter()
        .find(|record| record.kid == kid)
        .and_then(|record| record.activate_at);
    let retiring = records.iter().find(|record| {
        record.key_use == "sig" && record.kid != kid && activate_at.is_some() && record.retire_at == activate_at
    });
    let report = format!(
        "next key: {kid}\nactive from: {}\nretiring key: {}\nretiring key removed from the JWKS at: {}\npublic JWKS: {}\n",
        format_time(activate_at),
        retiring.map_or("-", |record| record.kid.as_str()),
        format_time(retiring.and_then(|record| record.remove_at)),
        keys.jwks_path().display(),
    );
    print_stdout(&report)?;
    Ok(ExitCode::SUCCESS)
}

fn list(args: ListArgs) -> Result<ExitCode, CliError> {
    let keys = KeyDir::open(&args.dir.dir).map_err(key_error)?;
    let records = keys.records();
    if args.json {
        let rows: Vec<serde_json::Value> = records.iter().map(record_json).collect();
        let text = serde_json::to_string_pretty(&rows)
            .map_err(|err| CliError::failed(format!("cannot encode the key list: {err}")))?;
        print_stdout(&format!("{text}\n"))?;
        return Ok(ExitCode::SUCCESS);
    }

    let mut text = format!(
        "service: {}\n{:<43}  {:<3}  {:<7}  {:<20}  {:<20}  {:<20}  {:<20}\n",
        keys.service(),
        "KID",
        "USE",
        "STATE",
        "CREATED",
        "ACTIVE FROM",
        "RETIRES",
        "REMOVED OR REVOKED"
    );
    for record in &records {
        let ended = record.revoked_at.or(record.remove_at);
        text.push_str(&format!(
            "{:<43}  {:<3}  {:<7}  {:<20}  {:<20}  {:<20}  {:<20}\n",
            record.kid,
            record.key_use,
            record.state.as_str(),
            format_time(Some(record.created_at)),
            format_time(record.activate_at),
            format_time(record.retire_at),
            format_time(ended),
        ));
    }
    print_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

fn record_json(record: &KeyRecord) -> serde_json::Value {
    serde_json::json!({
        "kid": record.kid,
        "use": record.key_use,
        "state": record.state.as_str(),
        "stored_state": record.stored_state.as_str(),
        "created_at": record.created_at,
        "activate_at": record.activate_at,
        "retire_at": record.retire_at,
        "remove_at": record.remove_at,
        "revoked_at": record.revoked_at,
    })
}

fn advance(args: DirArgs) -> Result<ExitCode, CliError> {
    let mut keys = KeyDir::open(&args.dir).map_err(key_error)?;
    let changes = keys.advance().map_err(key_error)?;
    if changes.is_empty() {
        print_stdout("no key changed state\n")?;
        return Ok(ExitCode::SUCCESS);
    }

    let mut text = String::new();
    for change in &changes {
        text.push_str(&format!(
            "{}: {} -> {}\n",
            change.kid,
            change.from.as_str(),
            change.to.as_str()
        ));
    }
    print_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

fn revoke(args: RevokeArgs) -> Result<ExitCode, CliError> {
    let mut keys = KeyDir::open(&args.dir.dir).map_err(key_error)?;
    let revocation = keys.revoke(&args.kid).map_err(key_error)?;

    let mut text = format!("revoked: {}\n", revocation.kid);
    if let Some(replacement) = &revocation.replacement {
        text.push_str(&format!("active key now: {replacement}\n"));
    }
    text.push_str(&format!("public JWKS: {}\n", keys.jwks_path().display()));
    print_stdout(&text)?;

    print_stderr_line(&format!(
        "note: verifiers accept {} until they refresh the JWKS; force a refresh on them \
         (TrustStore::refresh_all) or wait out their cache time to live",
        revocation.kid
    ));
    Ok(ExitCode::SUCCESS)
}

/// Formats Unix seconds as UTC, `2026-01-31T12:00:00Z`; `-` for none.
fn format_time(unix_seconds: Option<u64>) -> String {
    let Some(seconds) = unix_seconds else {
        return "-".to_owned();
    };
    let days = seconds / 86_400;
    let rest = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Converts days since 1970-01-01 to a (year, month, day) date of the
/// proleptic Gregorian calendar, with Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        assert_eq!(format_time(Some(0)), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(Some(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(format_time(Some(1_767_225_599)), "2025-12-31T23:59:59Z");
        assert_eq!(format_time(None), "-");
    }
}
