#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `trustwire keys rotate`, `list`, `advance` and `revoke` run as child
//! processes against a running `trustwire jwks serve`, the way an operator
//! uses them from a shell.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_trustwire");
const CHANNEL: &str = "nats:orders.created";

fn trustwire<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    assert_cmd::Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn assert_success(output: &Output) {
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        stdout(output),
        stderr(output)
    );
}

fn dir_arg(dir: &Path) -> String {
    dir.display().to_string()
}

/// Runs `keygen` and returns the kid it printed.
fn keygen(dir: &Path) -> String {
    let output = trustwire(["keygen", "--service", "orders", "--dir", &dir_arg(dir)]);
    assert_success(&output);
    let text = stdout(&output);
    text.lines()
        .find_map(|line| line.strip_prefix("kid: "))
        .unwrap()
        .to_owned()
}

/// Runs `keys list --json` and returns (kid, state) of each signing key.
fn signing_states(dir: &Path) -> Vec<(String, String)> {
    let output = trustwire(["keys", "list", "--json", "--dir", &dir_arg(dir)]);
    assert_success(&output);
    let rows: Value = serde_json::from_str(&stdout(&output)).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .filter(|row| row["use"] == "sig")
        .map(|row| {
            (
                row["kid"].as_str().unwrap().to_owned(),
                row["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Returns the time `field` (such as `activate_at`) of key `kid`, in Unix
/// seconds, from `keys list --json`.
fn time_of(dir: &Path, kid: &str, field: &str) -> u64 {
    let output = trustwire(["keys", "list", "--json", "--dir", &dir_arg(dir)]);
    assert_success(&output);
    let rows: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let row = rows.as_array().unwrap().iter().find(|row| row["kid"] == kid).unwrap();
    row[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{kid} has no {field}: {row}"))
}

/// Sleeps until 100 ms into Unix second `at`.
fn sleep_until_unix(at: u64) {
    let target = UNIX_EPOCH + Duration::from_secs(at) + Duration::from_millis(100);
    if let Ok(wait) = target.duration_since(SystemTime::now()) {
        thread::sleep(wait);
    }
}

/// Signs a token for `payments` on [`CHANNEL`] with the directory's active key.
fn sign(dir: &Path) -> String {
    let output = trustwire([
        "sign",
        "--audience",
        "payments",
        "--channel",
        CHANNEL,
        "--dir",
        &dir_arg(dir),
    ]);
    assert_success(&output);
    stdout(&output).trim_end().to_owned()
}

/// Verifies `token` against the served JWKS in a fresh process, so with no
/// cache: returns the output.
fn verify(url: &str, token: &str) -> Output {
    trustwire([
        "verify",
        "--trust",
        &format!("orders={url}"),
        "--audience",
        "payments",
        "--channel",
        CHANNEL,
        token,
    ])
}

/// A `jwks serve` child process on 127.0.0.1 with a free port; killed on drop.
struct JwksServer {
    child: Child,
    url: String,
    stderr: Arc<Mutex<String>>,
}

impl JwksServer {
    fn start(dir: &Path) -> Self {
        let mut child = std::process::Command::new(BIN)
            .args(["jwks", "serve", "--listen", "127.0.0.1:0", "--max-age", "1", "--dir"])
            .arg(dir)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();

        let stderr = Arc::new(Mutex::new(String::new()));
        let mut child_stderr = child.stderr.take().unwrap();
        let collected = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(count) = child_stderr.read(&mut buffer) {
                if count == 0 {
                    break;
                }
                collected
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..count]));
            }
        });

        let child_stdout = child.stdout.take().unwrap();
        let (sender, receiver) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(child_stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let line = receiver.recv_timeout(Duration::from_secs(30));
        let mut server = Self {
            child,
            url: String::new(),
            stderr,
        };
        let line =
            line.unwrap_or_else(|_| panic!("jwks serve printed no line within 30 s; stderr: {}", server.stderr()));
        server.url = line
            .trim_end()
            .strip_prefix("serving JWKS of orders at ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}; stderr: {}", server.stderr()))
            .to_owned();
        server
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Polls the served set until its signature kids equal `expected`.
    fn wait_for_kids(&self, expected: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let served = served_signing_kids(&self.url);
            if served == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the server still serves {served:?}, not {expected:?}, 10 s after jwks.json changed; stderr: {}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GETs the served JWKS and returns the kids of its signature keys.
fn served_signing_kids(url: &str) -> Vec<String> {
    let rest = url.strip_prefix("http://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = TcpStream::connect(authority).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    let document: Value = serde_json::from_str(body).unwrap();
    document["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|key| key["crv"] == "Ed25519")
        .map(|key| key["kid"].as_str().unwrap().to_owned())
        .collect()
}

fn key_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("orders");
    (tmp, dir)
}

#[test]
fn rotate_list_advance_against_server() {
    let (_tmp, dir) = key_dir();
    let first = keygen(&dir);
    let server = JwksServer::start(&dir);
    server.wait_for_kids(&[&first]);
    let old_token = sign(&dir);

    // A delay of at least the verifiers' cache age: no warning.
    let output = trustwire([
        "keys",
        "rotate",
        "--dir",
        &dir_arg(&dir),
        "--pre-publish",
        "2",
        "--max-cache-age",
        "1",
        "--retain",
        "2",
    ]);
    assert_success(&output);
    assert!(stderr(&output).is_empty(), "no warning expected: {}", stderr(&output));
    let report = stdout(&output);
    let second = report
        .lines()
        .find_map(|line| line.strip_prefix("next key: "))
        .unwrap()
        .to_owned();
    assert!(report.contains(&format!("retiring key: {first}")), "{report}");
    server.wait_for_kids(&[&first, &second]);
    assert_eq!(
        signing_states(&dir),
        vec![(first.clone(), "active".into()), (second.clone(), "next".into())]
    );

    // A second rotation must wait until the next key is active.
    let output = trustwire(["keys", "rotate", "--dir", &dir_arg(&dir)]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("is not active yet"), "{}", stderr(&output));

    // The table shows the states and times.
    let output = trustwire(["keys", "list", "--dir", &dir_arg(&dir)]);
    assert_success(&output);
    let table = stdout(&output);
    assert!(table.contains("STATE"), "{table}");
    assert!(
        table
            .lines()
            .any(|line| line.starts_with(&second) && line.contains(" next ")),
        "{table}"
    );

    // After the delay the new key signs with no command run, and the old
    // token still verifies: the retired key stays published.
    sleep_until_unix(time_of(&dir, &second, "activate_at"));
    assert_eq!(
        signing_states(&dir),
        vec![(first.clone(), "retired".into()), (second.clone(), "active".into())]
    );
    let new_token = sign(&dir);
    assert_success(&verify(&server.url, &new_token));
    assert_success(&verify(&server.url, &old_token));

    // After the retention, advance removes the old key from the served set.
    sleep_until_unix(time_of(&dir, &first, "remove_at"));
    let output = trustwire(["keys", "advance", "--dir", &dir_arg(&dir)]);
    assert_success(&output);
    assert!(
        stdout(&output).contains(&format!("{first}: active -> removed")),
        "{}",
        stdout(&output)
    );
    server.wait_for_kids(&[&second]);
    assert!(!dir.join(format!("{first}.jwk")).exists());
    let rejected = verify(&server.url, &old_token);
    assert_eq!(rejected.status.code(), Some(1));
    assert!(
        stderr(&rejected).starts_with("rejected: unknown_key: "),
        "{}",
        stderr(&rejected)
    );

    let output = trustwire(["keys", "advance", "--dir", &dir_arg(&dir)]);
    assert_success(&output);
    assert_eq!(stdout(&output), "no key changed state\n");
}

#[test]
fn rotate_warns_below_cache_age() {
    let (_tmp, dir) = key_dir();
    keygen(&dir);
    let output = trustwire(["keys", "rotate", "--dir", &dir_arg(&dir), "--pre-publish", "60"]);
    assert_success(&output);
    let warning = stderr(&output);
    assert!(
        warning.starts_with("warning: the pre-publication delay (60 s)"),
        "{warning}"
    );
    assert!(warning.contains("maximum cache age (300 s)"), "{warning}");
    assert!(warning.contains("--pre-publish 300"), "{warning}");
}

#[test]
fn revoke_removes_key_from_served_set() {
    let (_tmp, dir) = key_dir();
    let first = keygen(&dir);
    let server = JwksServer::start(&dir);
    let stolen_token = sign(&dir);
    assert_success(&verify(&server.url, &stolen_token));

    let output = trustwire(["keys", "revoke", &first, "--dir", &dir_arg(&dir)]);
    assert_success(&output);
    let report = stdout(&output);
    assert!(report.starts_with(&format!("revoked: {first}\n")), "{report}");
    let replacement = report
        .lines()
        .find_map(|line| line.strip_prefix("active key now: "))
        .unwrap()
        .to_owned();
    assert!(stderr(&output).contains("force a refresh"), "{}", stderr(&output));

    server.wait_for_kids(&[&replacement]);
    let rejected = verify(&server.url, &stolen_token);
    assert_eq!(rejected.status.code(), Some(1));
    assert!(
        stderr(&rejected).starts_with("rejected: unknown_key: "),
        "{}",
        stderr(&rejected)
    );
    assert_success(&verify(&server.url, &sign(&dir)));
    assert_eq!(
        signing_states(&dir),
        vec![(first.clone(), "revoked".into()), (replacement, "active".into())]
    );

    let output = trustwire(["keys", "revoke", &first, "--dir", &dir_arg(&dir)]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("already revoked"), "{}", stderr(&output));
    let output = trustwire(["keys", "revoke", "nope", "--dir", &dir_arg(&dir)]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("keys list"), "{}", stderr(&output));

    // A kid may start with `-`, as base64url allows.
    let output = trustwire(["keys", "revoke", "-nope", "--dir", &dir_arg(&dir)]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("has no key \"-nope\""), "{}", stderr(&output));
}

/// Returns whether process `pid` has the file at `path` open.
#[cfg(target_os = "linux")]
fn has_open(pid: u32, path: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    entries
        .flatten()
        .any(|entry| std::fs::read_link(entry.path()).is_ok_and(|target| target == path))
}

/// Returns the state letter of process `pid` from /proc (`T` once stopped).
#[cfg(target_os = "linux")]
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after_name) = stat.rsplit_once(')')?;
    after_name.trim_start().chars().next()
}

#[cfg(target_os = "linux")]
fn send_signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Polls `condition` every 10 ms for up to 10 s.
#[cfg(target_os = "linux")]
#[track_caller]
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A `keys rotate` that read the directory and then waited for another
/// writer reports the key that its rotation retires, not the key that was
/// active when it read the directory. The test holds the write lock until
/// the child has read `keys.json`, stops the child, revokes the active key
/// and lets the child go on.
#[cfg(target_os = "linux")]
#[test]
fn rotate_after_wait_reports_retiring_key() {
    let (_tmp, dir) = key_dir();
    let first = keygen(&dir);
    let lock_path = std::fs::canonicalize(dir.join(".lock")).unwrap();

    let lock = std::fs::OpenOptions::new().write(true).open(&lock_path).unwrap();
    lock.lock().unwrap();
    let child = std::process::Command::new(BIN)
        .args(["keys", "rotate", "--dir", &dir_arg(&dir)])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // The child opens the lock file only after it has read keys.json.
    wait_until("rotate opens the lock file", || has_open(pid, &lock_path));
    send_signal(pid, "STOP");
    wait_until("rotate is stopped", || process_state(pid) == Some('T'));
    drop(lock);

    let revocation = trustwire::KeyDir::open(&dir).unwrap().revoke(&first).unwrap();
    let replacement = revocation.replacement.unwrap();
    send_signal(pid, "CONT");
    let output = child.wait_with_output().unwrap();

    assert_success(&output);
    let report = stdout(&output);
    assert!(report.contains(&format!("retiring key: {replacement}\n")), "{report}");
    let states = signing_states(&dir);
    assert_eq!(states.len(), 3, "{states:?}");
    assert_eq!(states[0], (first, "revoked".to_owned()));
    assert_eq!(states[1], (replacement, "active".to_owned()));
    assert_eq!(states[2].1, "next");
}

/// Three `trustwire keys` processes change one directory at once (revoke
/// the encryption key, revoke the retired signing key, rotate) while
/// others list it. Each change succeeds in any order, so every one of them
/// must be in `keys.json` afterwards, and no reader may fail on a key file
/// that a writer deleted under it.
#[test]
fn concurrent_keys_commands_keep_every_change() {
    let (_tmp, dir) = key_dir();
    let first = keygen(&dir);
    let output = trustwire([
        "keys",
        "rotate",
        "--dir",
        &dir_arg(&dir),
        "--pre-publish",
        "0",
        "--max-cache-age",
        "0",
        "--retain",
        "3600",
    ]);
    assert_success(&output);
    let second = stdout(&output)
        .lines()
        .find_map(|line| line.strip_prefix("next key: "))
        .unwrap()
        .to_owned();
    sleep_until_unix(time_of(&dir, &second, "activate_at"));
    assert_success(&trustwire(["keys", "advance", "--dir", &dir_arg(&dir)]));
    let output = trustwire(["keys", "list", "--json", "--dir", &dir_arg(&dir)]);
    let rows: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let encryption = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["use"] == "enc")
        .map(|row| row["kid"].as_str().unwrap().to_owned())
        .unwrap();

    let dir_text = dir_arg(&dir);
    let commands: Vec<Vec<String>> = vec![
        vec![
            "keys".into(),
            "revoke".into(),
            "--dir".into(),
            dir_text.clone(),
            encryption.clone(),
        ],
        vec![
            "keys".into(),
            "revoke".into(),
            "--dir".into(),
            dir_text.clone(),
            first.clone(),
        ],
        vec!["keys".into(), "rotate".into(), "--dir".into(), dir_text.clone()],
    ];
    let writers: Vec<thread::JoinHandle<Output>> = commands
        .into_iter()
        .map(|args| thread::spawn(move || trustwire(args)))
        .collect();
    let readers: Vec<thread::JoinHandle<Vec<Output>>> = (0..3)
        .map(|_| {
            let dir_text = dir_text.clone();
            thread::spawn(move || {
                (0..10)
                    .map(|_| trustwire(["keys", "list", "--json", "--dir", &dir_text]))
                    .collect()
            })
        })
        .collect();
    let outputs: Vec<Output> = writers.into_iter().map(|writer| writer.join().unwrap()).collect();
    for output in &outputs {
        assert_success(output);
    }
    for reader in readers {
        for output in reader.join().unwrap() {
            assert_success(&output);
        }
    }

    let new_encryption = stdout(&outputs[0])
        .lines()
        .find_map(|line| line.strip_prefix("active key now: "))
        .unwrap()
        .to_owned();
    let third = stdout(&outputs[2])
        .lines()
        .find_map(|line| line.strip_prefix("next key: "))
        .unwrap()
        .to_owned();
    let output = trustwire(["keys", "list", "--json", "--dir", &dir_arg(&dir)]);
    assert_success(&output);
    let rows: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let states: std::collections::BTreeMap<&str, &str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row["kid"].as_str().unwrap(), row["stored_state"].as_str().unwrap()))
        .collect();
    assert_eq!(states.len(), 5, "{states:?}");
    assert_eq!(states[first.as_str()], "revoked");
    assert_eq!(states[second.as_str()], "active");
    assert_eq!(states[third.as_str()], "next");
    assert_eq!(states[encryption.as_str()], "revoked");
    assert_eq!(states[new_encryption.as_str()], "active");
}
