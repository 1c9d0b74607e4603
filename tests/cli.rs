//! Tests of the `trustwire` binary, run as a child process the way scripts
//! use it: keys on disk, a JWKS server on loopback, tokens on stdout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_trustwire");
const CHANNEL: &str = "nats:orders.created";
const PAYLOAD: &[u8] = br#"{"order":42}"#;

/// Builds a `trustwire` command with the default log level.
fn trustwire<I, S>(args: I) -> assert_cmd::Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = assert_cmd::Command::new(BIN);
    command.args(args).env_remove("RUST_LOG");
    command
}

fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    trustwire(args).output().unwrap()
}

fn run_with_stdin<I, S>(args: I, stdin: impl Into<Vec<u8>>) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    trustwire(args).write_stdin(stdin).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_success(output: &Output) {
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        stdout(output),
        stderr(output)
    );
}

fn assert_usage_error(output: &Output, message_part: &str) {
    assert_eq!(output.status.code(), Some(2), "stderr: {}", stderr(output));
    assert!(
        stderr(output).contains(message_part),
        "expected {message_part:?} in stderr: {}",
        stderr(output)
    );
}

/// Asserts exit status 1 and that stderr is exactly one `rejected:` line
/// with this reason code.
fn assert_rejected(output: &Output, code: &str) {
    let stderr = stderr(output);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.starts_with(&format!("rejected: {code}: ")),
        "expected reason {code}, stderr: {stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "stderr should hold only the rejection: {stderr}"
    );
    assert!(output.stdout.is_empty(), "stdout of a rejection: {}", stdout(output));
}

/// Runs `keygen` and returns the kid it printed.
fn keygen(dir: &Path, service: &str) -> String {
    let output = trustwire(["keygen", "--service", service, "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert_success(&output);
    let text = stdout(&output);
    let kid = text.lines().find_map(|line| line.strip_prefix("kid: ")).unwrap();
    kid.to_owned()
}

/// Signs a token for `payments` on [`CHANNEL`], bound to `payload_file`.
fn sign(dir: &Path, payload_file: &Path, extra: &[&str]) -> String {
    let mut args: Vec<&str> = vec!["sign", "--audience", "payments", "--channel", CHANNEL];
    args.extend_from_slice(extra);
    let output = trustwire(&args)
        .arg("--dir")
        .arg(dir)
        .arg("--payload")
        .arg(payload_file)
        .output()
        .unwrap();
    assert_success(&output);
    let token = stdout(&output);
    assert!(token.ends_with('\n'));
    token.trim_end().to_owned()
}

fn write_payload(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Arguments of `verify` as `payments` on [`CHANNEL`].
fn verify_args(trust: &str, payload_file: &Path, token: &str) -> Vec<String> {
    vec![
        "verify".into(),
        "--trust".into(),
        trust.into(),
        "--audience".into(),
        "payments".into(),
        "--channel".into(),
        CHANNEL.into(),
        "--payload".into(),
        payload_file.display().to_string(),
        token.into(),
    ]
}

fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"))
}

/// A `jwks serve` child process on 127.0.0.1 with a free port; killed on drop.
struct JwksServer {
    child: Child,
    url: String,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<thread::JoinHandle<()>>,
}

impl JwksServer {
    fn start(dir: &Path) -> Self {
        let mut child = std::process::Command::new(BIN)
            .args(["jwks", "serve", "--listen", "127.0.0.1:0", "--max-age", "60", "--dir"])
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
        let stderr_reader = thread::spawn(move || {
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
            stderr_reader: Some(stderr_reader),
        };
        let line =
            line.unwrap_or_else(|_| panic!("jwks serve printed no line within 30 s; stderr: {}", server.stderr()));
        let url = line
            .trim_end()
            .strip_prefix("serving JWKS of orders at ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}; stderr: {}", server.stderr()));
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        assert!(url.ends_with("/.well-known/jwks.json"), "{url}");
        assert!(
            !url.contains("127.0.0.1:0/"),
            "the line must show the bound port: {url}"
        );
        server.url = url.to_owned();
        server
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits up to 10 s for the process to exit.
    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(killed.success());

        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "jwks serve did not stop within 10 s of SIGTERM"
            );
            thread::sleep(Duration::from_millis(50));
        };
        if let Some(reader) = self.stderr_reader.take() {
            reader.join().unwrap();
        }
        (status, self.stderr())
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET to a loopback URL; returns the response head and body.
fn http_get(url: &str) -> (String, String) {
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
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_ascii_lowercase(), body.to_owned())
}

/// Returns the kids of the signature keys in a JWK Set. `keygen` also
/// publishes an encryption key (`use: enc`), which these tests leave out.
fn kids_of(jwks: &str) -> Vec<String> {
    let document = parse_json(jwks);
    document["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|key| key["use"] != "enc")
        .map(|key| key["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn keygen_writes_private_key_0600_and_jwks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("orders");
    let output = trustwire(["keygen", "--service", "orders", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_success(&output);
    let text = stdout(&output);
    let kid = text.lines().find_map(|line| line.strip_prefix("kid: ")).unwrap();

    let key_file = dir.join(format!("{kid}.jwk"));
    let jwks_file = dir.join("jwks.json");
    assert!(
        text.contains(&format!("private key: {} (mode 0600)", key_file.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("public JWKS: {}", jwks_file.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("manifest: {}", dir.join("keys.json").display())),
        "{text}"
    );

    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let jwks = std::fs::read_to_string(&jwks_file).unwrap();
    assert_eq!(kids_of(&jwks), vec![kid.to_owned()]);
    let key = &parse_json(&jwks)["keys"][0];
    assert_eq!(key["crv"], "Ed25519");
    assert!(key.get("d").is_none(), "jwks.json holds a private member: {jwks}");
}

#[test]
fn keygen_refuses_existing_key_dir() {
    let tmp = tempfile::tempdir().unwrap();
    keygen(tmp.path(), "orders");

    let output = trustwire(["keygen", "--service", "orders", "--dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_usage_error(&output, "already contains keys.json");
}

#[test]
fn keygen_rejects_invalid_service_id() {
    let tmp = tempfile::tempdir().unwrap();
    let output = trustwire(["keygen", "--service", "Orders", "--dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_usage_error(&output, "invalid service id");
}

#[test]
fn sign_rejects_channel_without_transport() {
    let tmp = tempfile::tempdir().unwrap();
    keygen(tmp.path(), "orders");
    for channel in ["orders.created", "nats:", "amqp:orders", "kafka:orders", ":orders"] {
        let output = trustwire(["sign", "--audience", "payments", "--channel", channel, "--dir"])
            .arg(tmp.path())
            .output()
            .unwrap();
        assert_usage_error(&output, "use nats:<subject> or amqp:<exchange>/<routing key>");
        assert!(output.stdout.is_empty(), "{channel}");
    }
}

#[test]
fn sign_accepts_both_transport_channels() {
    let tmp = tempfile::tempdir().unwrap();
    keygen(tmp.path(), "orders");
    let payload = write_payload(tmp.path(), "payload", PAYLOAD);
    for channel in ["nats:orders.created", "amqp:orders/created", "amqp:/orders-queue"] {
        let output = trustwire(["sign", "--audience", "payments", "--channel", channel, "--dir"])
            .arg(tmp.path())
            .arg("--payload")
            .arg(&payload)
            .output()
            .unwrap();
        assert_success(&output);
    }
}

#[test]
fn sign_rejects_lowercase_method() {
    let tmp = tempfile::tempdir().unwrap();
    keygen(tmp.path(), "orders");
    for request in ["post /v1/charges", "Get /v1/charges", " delete /v1/charges/7"] {
        let output = trustwire(["sign", "--audience", "payments", "--http", request, "--dir"])
            .arg(tmp.path())
            .output()
            .unwrap();
        assert_usage_error(&output, "is case-sensitive");
        assert!(output.stdout.is_empty(), "{request}");
    }
}

#[test]
fn verify_rejects_lowercase_method() {
    let output = trustwire(["verify", "--http", "post /x", "a.b.c"]).output().unwrap();
    assert_usage_error(&output, "write POST");
}

#[test]
fn sign_rejects_group_readable_key() {
    let tmp = tempfile::tempdir().unwrap();
    let kid = keygen(tmp.path(), "orders");
    let key_file = tmp.path().join(format!("{kid}.jwk"));
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o640)).unwrap();

    let output = trustwire(["sign", "--audience", "payments", "--channel", CHANNEL, "--dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_usage_error(&output, &format!("chmod 600 {}", key_file.display()));
    assert!(output.stdout.is_empty());
}

#[test]
fn end_to_end_against_served_jwks() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("orders");
    let kid = keygen(&keys, "orders");
    let server = JwksServer::start(&keys);

    let (head, body) = http_get(&server.url);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: application/jwk-set+json"), "{head}");
    assert!(head.contains("cache-control: public, max-age=60"), "{head}");
    assert_eq!(kids_of(&body), vec![kid.clone()]);

    let payload_file = write_payload(tmp.path(), "order.json", PAYLOAD);
    let token = sign(&keys, &payload_file, &[]);
    let trust = format!("orders={}", server.url);

    let output = run(verify_args(&trust, &payload_file, &token));
    assert_success(&output);
    assert!(output.stderr.is_empty(), "stderr of a success: {}", stderr(&output));
    let claims = parse_json(&stdout(&output));
    assert_eq!(claims["iss"], "orders");
    assert_eq!(claims["aud"], serde_json::json!(["payments"]));
    assert_eq!(claims["chn"], CHANNEL);
    assert!(claims["dig"].is_string());
    assert!(claims["jti"].is_string());
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 60);

    // The token read from stdin, with the newline `echo` adds.
    let output = run_with_stdin(verify_args(&trust, &payload_file, "-"), format!("{token}\n"));
    assert_success(&output);

    let mut tampered = PAYLOAD.to_vec();
    tampered[10] ^= 0x01;
    let tampered_file = write_payload(tmp.path(), "tampered.json", &tampered);
    assert_rejected(&run(verify_args(&trust, &tampered_file, &token)), "digest_mismatch");

    let mut wrong_channel = verify_args(&trust, &payload_file, &token);
    wrong_channel[6] = "nats:orders.deleted".into();
    assert_rejected(&run(wrong_channel), "binding_mismatch");

    let mut wrong_audience = verify_args(&trust, &payload_file, &token);
    wrong_audience[4] = "billing".into();
    assert_rejected(&run(wrong_audience), "wrong_audience");

    drop(server);
}

#[test]
fn verify_against_jwks_file() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("orders");
    keygen(&keys, "orders");
    let payload_file = write_payload(tmp.path(), "order.json", PAYLOAD);
    let token = sign(&keys, &payload_file, &[]);

    let trust = format!("orders={}", keys.join("jwks.json").display());
    let output = run(verify_args(&trust, &payload_file, &token));
    assert_success(&output);
    assert_eq!(parse_json(&stdout(&output))["iss"], "orders");

    // A file with a single public JWK works as well.
    let jwks = parse_json(&std::fs::read_to_string(keys.join("jwks.json")).unwrap());
    let jwk_file = write_payload(tmp.path(), "orders.jwk.json", jwks["keys"][0].to_string().as_bytes());
    let trust = format!("orders={}", jwk_file.display());
    assert_success(&run(verify_args(&trust, &payload_file, &token)));
}

#[test]
fn verify_rejects_key_of_other_issuer() {
    let tmp = tempfile::tempdir().unwrap();
    let orders = tmp.path().join("orders");
    let billing = tmp.path().join("billing");
    keygen(&orders, "orders");
    keygen(&billing, "billing");
    let payload_file = write_payload(tmp.path(), "order.json", PAYLOAD);
    let token = sign(&orders, &payload_file, &[]);

    let billing_keys = format!("billing={}", billing.join("jwks.json").display());
    assert_rejected(&run(verify_args(&billing_keys, &payload_file, &token)), "unknown_key");

    // orders' keys trusted under billing's name never sign for orders.
    let misattributed = format!("billing={}", orders.join("jwks.json").display());
    assert_rejected(
        &run(verify_args(&misattributed, &payload_file, &token)),
        "issuer_mismatch",
    );
}

#[test]
fn verify_policy_file() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("orders");
    keygen(&keys, "orders");
    let payload_file = write_payload(tmp.path(), "order.json", PAYLOAD);
    let token = sign(&keys, &payload_file, &[]);
    let trust = format!("orders={}", keys.join("jwks.json").display());

    let deny = write_payload(
        tmp.path(),
        "deny.toml",
        b"[[allow]]\nissuer = \"orders\"\nchannels = [\"nats:billing.>\"]\n",
    );
    let mut args = verify_args(&trust, &payload_file, &token);
    args.splice(1..1, ["--policy".to_owned(), deny.display().to_string()]);
    assert_rejected(&run(args), "not_allowed");

    let allow = write_payload(
        tmp.path(),
        "allow.toml",
        b"[[allow]]\nissuer = \"orders\"\nchannels = [\"nats:orders.>\"]\n",
    );
    let mut args = verify_args(&trust, &payload_file, &token);
    args.splice(1..1, ["--policy".to_owned(), allow.display().to_string()]);
    assert_success(&run(args));
}

#[test]
fn verify_http_binding() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("orders");
    keygen(&keys, "orders");
    let body_file = write_payload(tmp.path(), "body.json", br#"{"amount":100}"#);
    let output = trustwire([
        "sign",
        "--audience",
        "payments",
        "--http",
        "POST /v1/charges?currency=EUR&b=1",
        "--dir",
    ])
    .arg(&keys)
    .arg("--payload")
    .arg(&body_file)
    .output()
    .unwrap();
    assert_success(&output);
    let token = stdout(&output).trim_end().to_owned();
    let trust = format!("orders={}", keys.join("jwks.json").display());

    let verify = |request: &str| {
        trustwire([
            "verify",
            "--trust",
            trust.as_str(),
            "--audience",
            "payments",
            "--http",
            request,
            "--payload",
        ])
        .arg(&body_file)
        .arg(&token)
        .output()
        .unwrap()
    };

    // The query is compared in canonical form, so its order does not matter.
    let output = verify("POST /v1/charges?b=1&currency=EUR");
    assert_success(&output);
    let claims = parse_json(&stdout(&output));
    assert_eq!(claims["htm"], "POST");
    assert_eq!(claims["htu"], "/v1/charges?b=1&currency=EUR");

    assert_rejected(&verify("PUT /v1/charges?b=1&currency=EUR"), "binding_mismatch");
    assert_rejected(&verify("POST /v1/charges?currency=USD&b=1"), "binding_mismatch");

    let as_channel = trustwire([
        "verify",
        "--trust",
        trust.as_str(),
        "--audience",
        "payments",
        "--channel",
        CHANNEL,
        "--payload",
    ])
    .arg(&body_file)
    .arg(&token)
    .output()
    .unwrap();
    assert_rejected(&as_channel, "binding_mismatch");
}

#[test]
fn sign_several_audiences_and_subject() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("orders");
    keygen(&keys, "orders");
    let payload_file = write_payload(tmp.path(), "order.json", PAYLOAD);
    let token = sign(&keys, &payload_file, &["--audience", "billing", "--subject", "user-7"]);
    let trust = format!("orders={}", keys.join("jwks.json").display());

    let mut as_billing = verify_args(&trust, &payload_file, &token);
    as_billing[4] = "billing".into();
    let output = run(as_billing);
    assert_success(&output);
    let claims = parse_json(&stdout(&output));
    assert_eq!(claims["aud"], serde_json::json!(["payments", "billing"]));
    assert_eq!(claims["sub"], "user-7");

    assert_success(&run(verify_args(&trust, &payload_file, &token)));
}

#[test]
fn sign_fully_specified_alg_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("orders");
    keygen(&keys, "orders");
    let payload_file = write_payload(tmp.path(), "order.json", PAYLOAD);
    let token = sign(&keys, &payload_file, &["--fully-specified-alg"]);

    let inspected = run(["inspect", token.as_str()]);
    assert_success(&inspected);
    assert!(
        stdout(&inspected).contains(r#""alg": "Ed25519""#),
        "{}",
        stdout(&inspected)
    );

    let trust = format!("orders={}", keys.join("jwks.json").display());
    assert_success(&run(verify_args(&trust, &payload_file, &token)));
}

#[test]
fn payload_from_stdin_is_not_trimmed() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("orders");
    keygen(&keys, "orders");
    let with_newline = b"line\n";

    let output = trustwire([
        "sign",
        "--audience",
        "payments",
        "--channel",
        CHANNEL,
        "--payload",
        "-",
        "--dir",
    ])
    .arg(&keys)
    .write_stdin(with_newline.to_vec())
    .output()
    .unwrap();
    assert_success(&output);
    let token = stdout(&output).trim_end().to_owned();
    let trust = format!("orders={}", keys.join("jwks.json").display());
    let args = [
        "verify",
        "--trust",
        trust.as_str(),
        "--audience",
        "payments",
        "--channel",
        CHANNEL,
        "--payload",
        "-",
        token.as_str(),
    ];

    assert_success(&run_with_stdin(args, with_newline.to_vec()));
    assert_rejected(&run_with_stdin(args, b"line".to_vec()), "digest_mismatch");
}

#[test]
fn verify_without_payload_of_bound_token() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("orders");
    keygen(&keys, "orders");
    let payload_file = write_payload(tmp.path(), "order.json", PAYLOAD);
    let token = sign(&keys, &payload_file, &[]);
    let trust = format!("orders={}", keys.join("jwks.json").display());

    let output = run([
        "verify",
        "--trust",
        trust.as_str(),
        "--audience",
        "payments",
        "--channel",
        CHANNEL,
        token.as_str(),
    ]);
    assert_rejected(&output, "digest_mismatch");
}

#[test]
fn verify_expired_token() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("orders");
    keygen(&keys, "orders");
    let payload_file = write_payload(tmp.path(), "order.json", PAYLOAD);
    let token = sign(&keys, &payload_file, &["--ttl", "1"]);
    let trust = format!("orders={}", keys.join("jwks.json").display());

    // exp = iat + 1; two whole seconds later the token is past exp even
    // with --leeway 0, whatever fraction of a second iat was taken at.
    thread::sleep(Duration::from_millis(2100));
    let mut args = verify_args(&trust, &payload_file, &token);
    args.splice(1..1, ["--leeway".to_owned(), "0".to_owned()]);
    assert_rejected(&run(args), "expired");

    // The default leeway of 30 s still accepts it.
    assert_success(&run(verify_args(&trust, &payload_file, &token)));
}

#[test]
fn verify_max_lifetime() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("orders");
    keygen(&keys, "orders");
    let payload_file = write_payload(tmp.path(), "order.json", PAYLOAD);
    let token = sign(&keys, &payload_file, &["--ttl", "900"]);
    let trust = format!("orders={}", keys.join("jwks.json").display());

    assert_rejected(&run(verify_args(&trust, &payload_file, &token)), "lifetime_too_long");

    let mut args = verify_args(&trust, &payload_file, &token);
    args.splice(1..1, ["--max-lifetime".to_owned(), "900".to_owned()]);
    assert_success(&run(args));
}

#[test]
fn verify_unreachable_jwks_url() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("orders");
    keygen(&keys, "orders");
    let payload_file = write_payload(tmp.path(), "order.json", PAYLOAD);
    let token = sign(&keys, &payload_file, &[]);

    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let trust = format!("orders=http://127.0.0.1:{port}/.well-known/jwks.json");
    let output = run(verify_args(&trust, &payload_file, &token));
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    let last_line = stderr(&output).lines().last().unwrap_or("").to_owned();
    assert!(
        last_line.starts_with("rejected: key_source_unavailable: "),
        "{}",
        stderr(&output)
    );
}

#[test]
fn usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("orders");
    keygen(&keys, "orders");
    let payload_file = write_payload(tmp.path(), "order.json", PAYLOAD);
    let token = sign(&keys, &payload_file, &[]);
    let jwks = keys.join("jwks.json").display().to_string();
    let trust = format!("orders={jwks}");
    let invalid_policy = write_payload(
        tmp.path(),
        "invalid.toml",
        b"[[allow]]\nissuer = \"orders\"\nroutes = [\"/x\"]\n",
    );
    let invalid_policy = invalid_policy.display().to_string();
    let missing = tmp.path().join("missing.json").display().to_string();
    let missing_trust = format!("orders={missing}");
    let keys_dir = keys.display().to_string();

    let verify = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["verify", "--audience", "payments"];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (verify(&["--channel", CHANNEL, &token]), "--trust"),
        (verify(&["--trust", &trust, &token]), "--channel"),
        (
            verify(&["--trust", &trust, "--channel", CHANNEL, "--http", "GET /", &token]),
            "cannot be used with",
        ),
        (
            verify(&["--trust", &trust, "--channel", CHANNEL, "--payload", "-", "-"]),
            "cannot both be read from stdin",
        ),
        (
            verify(&["--trust", "orders", "--channel", CHANNEL, &token]),
            "ISSUER=URL_OR_FILE",
        ),
        (
            verify(&["--trust", "Orders=x.json", "--channel", CHANNEL, &token]),
            "invalid service id",
        ),
        (
            verify(&["--trust", &missing_trust, "--channel", CHANNEL, &token]),
            &missing,
        ),
        (
            verify(&["--trust", &trust, "--trust", &trust, "--channel", CHANNEL, &token]),
            "twice",
        ),
        (
            verify(&[
                "--trust",
                "orders=http://example.invalid/jwks.json",
                "--channel",
                CHANNEL,
                &token,
            ]),
            "plain http://",
        ),
        (
            verify(&["--trust", &trust, "--channel", CHANNEL, "--payload", &missing, &token]),
            &missing,
        ),
        (
            verify(&[
                "--trust",
                &trust,
                "--channel",
                CHANNEL,
                "--policy",
                &invalid_policy,
                &token,
            ]),
            "invalid policy file",
        ),
        (
            verify(&["--trust", &trust, "--channel", CHANNEL, "--policy", &missing, &token]),
            "cannot read policy file",
        ),
        (
            verify(&["--trust", &trust, "--channel", CHANNEL, "--leeway", "301", &token]),
            "--leeway",
        ),
        (
            verify(&["--trust", &trust, "--channel", CHANNEL, "--max-lifetime", "0", &token]),
            "--max-lifetime",
        ),
        (
            verify(&["--trust", &trust, "--http", "/v1/charges", &token]),
            "METHOD /path?query",
        ),
        (
            verify(&["--trust", &trust, "--channel", "", &token]),
            "the channel is empty",
        ),
        (
            vec![
                "sign".into(),
                "--audience".into(),
                "payments".into(),
                "--dir".into(),
                keys_dir.clone(),
            ],
            "--channel",
        ),
        (
            ["sign", "--channel", CHANNEL, "--dir", &keys_dir]
                .map(str::to_owned)
                .to_vec(),
            "--audience",
        ),
        (
            [
                "sign",
                "--audience",
                "payments",
                "--channel",
                CHANNEL,
                "--ttl",
                "0",
                "--dir",
                &keys_dir,
            ]
            .map(str::to_owned)
            .to_vec(),
            "--ttl",
        ),
        (
            [
                "sign",
                "--audience",
                "payments",
                "--channel",
                CHANNEL,
                "--subject",
                "",
                "--dir",
                &keys_dir,
            ]
            .map(str::to_owned)
            .to_vec(),
            "--subject",
        ),
        (
            [
                "sign",
                "--audience",
                "payments",
                "--channel",
                CHANNEL,
                "--dir",
                &missing,
            ]
            .map(str::to_owned)
            .to_vec(),
            "trustwire keygen",
        ),
        (
            ["jwks", "serve", "--listen", "127.0.0.1:0", "--dir", &missing]
                .map(str::to_owned)
                .to_vec(),
            "trustwire keygen",
        ),
        (
            ["jwks", "serve", "--listen", "not an address", "--dir", &keys_dir]
                .map(str::to_owned)
                .to_vec(),
            "cannot listen on",
        ),
        (
            ["no-such-command"].map(str::to_owned).to_vec(),
            "unrecognized subcommand",
        ),
    ];

    for (args, message_part) in cases {
        let output = run(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: stderr: {}", stderr(&output));
        assert!(
            stderr(&output).contains(message_part),
            "{args:?}: expected {message_part:?} in stderr: {}",
            stderr(&output)
        );
        assert!(output.stdout.is_empty(), "{args:?}: stdout: {}", stdout(&output));
    }
}

#[test]
fn inspect_labels_output_not_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("orders");
    let kid = keygen(&keys, "orders");
    let payload_file = write_payload(tmp.path(), "order.json", PAYLOAD);
    let token = sign(&keys, &payload_file, &["--subject", "user-7"]);

    let output = run_with_stdin(["inspect", "-"], format!("{token}\n"));
    assert_success(&output);
    let text = stdout(&output);
    assert!(text.starts_with("NOT VERIFIED"), "{text}");
    assert!(stderr(&output).starts_with("NOT VERIFIED"), "{}", stderr(&output));
    assert!(text.contains(r#""typ": "trustwire+jwt""#), "{text}");
    assert!(text.contains(&format!(r#""kid": "{kid}""#)), "{text}");
    assert!(text.contains(r#""iss": "orders""#), "{text}");
    assert!(text.contains(r#""sub": "user-7""#), "{text}");
    assert!(text.contains("signature:\n64 bytes"), "{text}");
}

#[test]
fn verify_token_file_or_empty_is_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "not used").unwrap();
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, r#"{"keys":[]}"#).unwrap();
    let trust = format!("orders={}", jwks_file.display());
    let common = [
        "verify",
        "--trust",
        trust.as_str(),
        "--audience",
        "payments",
        "--channel",
        "nats:x",
    ];

    let mut args: Vec<String> = common.iter().map(|arg| arg.to_string()).collect();
    args.push(token_file.display().to_string());
    let output = run(&args);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("is a file; read it from stdin with `- <"),
        "{}",
        stderr(&output)
    );

    let mut args: Vec<String> = common.iter().map(|arg| arg.to_string()).collect();
    args.push("-".to_owned());
    let output = run_with_stdin(&args, Vec::new());
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("the token is empty"), "{}", stderr(&output));
}

#[test]
fn inspect_garbage_exits_1() {
    let inputs: [&[u8]; 7] = [
        b"",
        b"hello",
        b"a.b.c",
        b"...",
        b"\xff\xfe.\x00",
        b"%%%.%%%",
        b"eyJhbGciOiJub25lIn0.!!.x.y",
    ];
    for input in inputs {
        let output = run_with_stdin(["inspect", "-"], input.to_vec());
        let text = stderr(&output);
        if input.starts_with(b"eyJ") {
            // The header decodes; the rest does not.
            assert_success(&output);
            assert!(stdout(&output).contains(r#""alg": "none""#), "{}", stdout(&output));
            assert!(text.contains("error: format: expected 3"), "{text}");
            continue;
        }
        assert_eq!(output.status.code(), Some(1), "{input:?}: {text}");
        assert!(text.contains("NOT VERIFIED"), "{input:?}: {text}");
        assert!(
            text.contains("error: nothing in the input decodes"),
            "{input:?}: {text}"
        );
        assert!(!text.contains("panicked"), "{input:?}: {text}");
        assert!(output.stdout.is_empty(), "{input:?}");
    }
}

#[test]
fn inspect_jwe_shows_header_only() {
    // base64url of {"alg":"ECDH-ES+A256KW","enc":"A256GCM","iss":"orders"}
    let header = "eyJhbGciOiJFQ0RILUVTK0EyNTZLVyIsImVuYyI6IkEyNTZHQ00iLCJpc3MiOiJvcmRlcnMifQ";
    let jwe = format!("{header}.a2V5.aXY.Y2lwaGVydGV4dA.dGFn");

    let output = run(["inspect", jwe.as_str()]);
    assert_success(&output);
    let text = stdout(&output);
    assert!(text.starts_with("NOT VERIFIED"), "{text}");
    assert!(text.contains(r#""enc": "A256GCM""#), "{text}");
    assert!(!text.contains("claims:"), "{text}");
    assert!(stderr(&output).contains("the token is a JWE"), "{}", stderr(&output));
}

#[test]
fn help_states_units_in_seconds() {
    let cases: [(&[&str], &[&str]); 3] = [
        (&["sign", "--help"], &["--ttl <SECONDS>", "in seconds"]),
        (
            &["verify", "--help"],
            &[
                "--leeway <SECONDS>",
                "--max-lifetime <SECONDS>",
                "in seconds",
                "Exit status",
            ],
        ),
        (&["jwks", "serve", "--help"], &["--max-age <SECONDS>", "in seconds"]),
    ];
    for (args, expected) in cases {
        let output = run(args);
        assert_success(&output);
        for part in expected {
            assert!(
                stdout(&output).contains(part),
                "{args:?}: expected {part:?} in:\n{}",
                stdout(&output)
            );
        }
    }

    for args in [&["keygen", "--help"][..], &["inspect", "--help"], &["--help"]] {
        let output = run(args);
        assert_success(&output);
        assert!(!stdout(&output).is_empty());
    }
}

#[test]
fn serve_reloads_changed_jwks() {
    let tmp = tempfile::tempdir().unwrap();
    let served = tmp.path().join("orders");
    let rotated = tmp.path().join("orders-next");
    let old_kid = keygen(&served, "orders");
    let new_kid = keygen(&rotated, "orders");
    let server = JwksServer::start(&served);
    let payload_file = write_payload(tmp.path(), "order.json", PAYLOAD);
    let token = sign(&rotated, &payload_file, &[]);
    let trust = format!("orders={}", server.url);

    assert_rejected(&run(verify_args(&trust, &payload_file, &token)), "unknown_key");

    // Publish both keys, replacing the file by rename as KeyDir does.
    let mut document = parse_json(&std::fs::read_to_string(served.join("jwks.json")).unwrap());
    let new_key = parse_json(&std::fs::read_to_string(rotated.join("jwks.json")).unwrap())["keys"][0].clone();
    document["keys"].as_array_mut().unwrap().push(new_key);
    let staged = served.join("jwks.json.new");
    std::fs::write(&staged, document.to_string()).unwrap();
    std::fs::rename(&staged, served.join("jwks.json")).unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = http_get(&server.url);
        if kids_of(&body) == vec![old_kid.clone(), new_kid.clone()] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "jwks.json not reloaded within 10 s; served {body}; stderr: {}",
            server.stderr()
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert_success(&run(verify_args(&trust, &payload_file, &token)));

    // An invalid file keeps the previous keys served and logs a warning.
    std::fs::write(served.join("jwks.json"), b"{\"keys\": [").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.stderr().contains("still serving the previous keys") {
        assert!(
            Instant::now() < deadline,
            "no warning for an invalid jwks.json; stderr: {}",
            server.stderr()
        );
        thread::sleep(Duration::from_millis(200));
    }
    let (_, body) = http_get(&server.url);
    assert_eq!(kids_of(&body), vec![old_kid, new_kid]);
}

#[test]
fn serve_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("orders");
    keygen(&keys, "orders");
    let server = JwksServer::start(&keys);
    let (_, body) = http_get(&server.url);
    assert_eq!(kids_of(&body).len(), 1);

    let (status, stderr) = server.terminate();
    assert!(status.success(), "{status}; stderr: {stderr}");
    assert!(stderr.contains("serving JWKS"), "{stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert!(stderr.contains("stopped serving JWKS"), "{stderr}");
}
