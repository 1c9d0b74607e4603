//! Tests of `trustwire seal` and `trustwire open`, run as a child process
//! with key directories made by `trustwire keygen`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const BIN: &str = env!("CARGO_BIN_EXE_trustwire");
const CHANNEL: &str = "nats:orders.created";
const PAYLOAD: &[u8] = b"{\"order\":42}\n\xff binary tail";

fn run(args: &[&str]) -> Output {
    assert_cmd::Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        stderr(output)
    );
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Two key directories, orders and payments, and a payload file.
struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_owned();
        for service in ["orders", "payments", "billing"] {
            let dir = root.join(service);
            assert_exit(&run(&["keygen", "--service", service, "--dir", path(&dir)]), 0);
        }
        std::fs::write(root.join("payload.bin"), PAYLOAD).unwrap();
        Self { _tmp: tmp, root }
    }

    fn dir(&self, service: &str) -> String {
        path(&self.root.join(service)).to_owned()
    }

    fn jwks(&self, service: &str) -> String {
        format!("{service}={}", path(&self.root.join(service).join("jwks.json")))
    }

    fn file(&self, name: &str) -> String {
        path(&self.root.join(name)).to_owned()
    }

    /// Seals the payload from orders to `recipients`; returns the token.
    fn seal(&self, recipients: &[&str], out: &str) -> String {
        let mut args = vec![
            "seal".to_owned(),
            "--dir".to_owned(),
            self.dir("orders"),
            "--channel".to_owned(),
            CHANNEL.to_owned(),
            "--payload".to_owned(),
            self.file("payload.bin"),
            "--out".to_owned(),
            self.file(out),
        ];
        for recipient in recipients {
            args.push("--recipient".to_owned());
            args.push(self.jwks(recipient));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = run(&args);
        assert_exit(&output, 0);
        String::from_utf8(output.stdout).unwrap().trim_end().to_owned()
    }

    fn open(&self, service: &str, token: &str, jwe: &str) -> Output {
        run(&[
            "open",
            "--dir",
            &self.dir(service),
            "--trust",
            &self.jwks("orders"),
            "--channel",
            CHANNEL,
            "--jwe",
            &self.file(jwe),
            token,
        ])
    }
}

#[test]
fn seal_then_open() {
    let setup = Setup::new();
    let token = setup.seal(&["payments"], "message.jwe");
    assert_eq!(token.split('.').count(), 3, "a signed token: {token}");

    let jwe = std::fs::read(setup.file("message.jwe")).unwrap();
    assert_eq!(jwe.split(|&b| b == b'.').count(), 5, "a compact JWE");
    assert!(
        !jwe.windows(8).any(|window| window == b"order\":4"),
        "the payload is encrypted"
    );

    let output = setup.open("payments", &token, "message.jwe");
    assert_exit(&output, 0);
    assert_eq!(output.stdout, PAYLOAD);
}

#[test]
fn fan_out_opens_for_each() {
    let setup = Setup::new();
    let token = setup.seal(&["payments", "billing"], "message.jwe");
    let jwe: serde_json::Value = serde_json::from_slice(&std::fs::read(setup.file("message.jwe")).unwrap()).unwrap();
    assert_eq!(jwe["recipients"].as_array().unwrap().len(), 2);

    for service in ["payments", "billing"] {
        let output = setup.open(service, &token, "message.jwe");
        assert_exit(&output, 0);
        assert_eq!(output.stdout, PAYLOAD, "{service}");
    }
}

#[test]
fn open_writes_plaintext_to_file() {
    let setup = Setup::new();
    let token = setup.seal(&["payments"], "message.jwe");
    let out = setup.file("plain.bin");
    let output = run(&[
        "open",
        "--dir",
        &setup.dir("payments"),
        "--trust",
        &setup.jwks("orders"),
        "--channel",
        CHANNEL,
        "--jwe",
        &setup.file("message.jwe"),
        "--out",
        &out,
        &token,
    ]);
    assert_exit(&output, 0);
    assert!(output.stdout.is_empty());
    assert_eq!(std::fs::read(out).unwrap(), PAYLOAD);
}

#[test]
fn tampered_jwe_rejected_with_code() {
    let setup = Setup::new();
    let token = setup.seal(&["payments"], "message.jwe");

    // Flip one ciphertext bit: the token's dig no longer matches, so the
    // message is rejected before any decryption.
    let text = std::fs::read_to_string(setup.file("message.jwe")).unwrap();
    let mut parts: Vec<String> = text.split('.').map(str::to_owned).collect();
    let mut ciphertext = URL_SAFE_NO_PAD.decode(&parts[3]).unwrap();
    ciphertext[0] ^= 1;
    parts[3] = URL_SAFE_NO_PAD.encode(&ciphertext);
    std::fs::write(setup.file("tampered.jwe"), parts.join(".")).unwrap();

    let output = setup.open("payments", &token, "tampered.jwe");
    assert_exit(&output, 1);
    assert!(
        stderr(&output).starts_with("rejected: digest_mismatch: "),
        "{}",
        stderr(&output)
    );
}

/// A token for billing over a JWE sealed to payments only: the token
/// verifies, and decryption finds no key of billing.
#[test]
fn jwe_for_other_service_rejected_with_code() {
    let setup = Setup::new();
    setup.seal(&["payments"], "message.jwe");
    let output = run(&[
        "sign",
        "--dir",
        &setup.dir("orders"),
        "--audience",
        "billing",
        "--channel",
        CHANNEL,
        "--payload",
        &setup.file("message.jwe"),
    ]);
    assert_exit(&output, 0);
    let token = String::from_utf8(output.stdout).unwrap();

    let output = setup.open("billing", token.trim_end(), "message.jwe");
    assert_exit(&output, 1);
    assert_eq!(
        stderr(&output).lines().collect::<Vec<_>>().len(),
        1,
        "only the rejection line: {}",
        stderr(&output)
    );
    assert!(
        stderr(&output).starts_with("rejected: not_a_recipient: "),
        "{}",
        stderr(&output)
    );
}

#[test]
fn wrong_recipient_rejected_with_code() {
    let setup = Setup::new();
    let token = setup.seal(&["payments"], "message.jwe");
    let output = setup.open("billing", &token, "message.jwe");
    assert_exit(&output, 1);
    assert!(
        stderr(&output).starts_with("rejected: wrong_audience: "),
        "{}",
        stderr(&output)
    );
}

#[test]
fn recipient_without_encryption_key_is_usage_error() {
    let setup = Setup::new();
    // A JWKS with only the signing key of payments.
    let jwks: serde_json::Value =
        serde_json::from_slice(&std::fs::read(setup.root.join("payments").join("jwks.json")).unwrap()).unwrap();
    let signing_only: Vec<_> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|key| key["use"] == "sig")
        .cloned()
        .collect();
    std::fs::write(
        setup.file("signing_only.json"),
        serde_json::json!({ "keys": signing_only }).to_string(),
    )
    .unwrap();

    let output = run(&[
        "seal",
        "--dir",
        &setup.dir("orders"),
        "--recipient",
        &format!("payments={}", setup.file("signing_only.json")),
        "--channel",
        CHANNEL,
        "--payload",
        &setup.file("payload.bin"),
        "--out",
        &setup.file("message.jwe"),
    ]);
    assert_exit(&output, 2);
    assert!(stderr(&output).contains("no encryption key"), "{}", stderr(&output));
}
