//! Interop with Python's joserfc 1.8.0 (tests/python/.venv, installed from
//! PyPI by scripts/test.sh), driven through tests/python/joserfc_interop.py:
//! our tokens verify in joserfc, joserfc's EdDSA, Ed25519 and ES256 tokens
//! verify with us, and each side rejects what the other tampered with.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use trustwire::clock::FixedClock;
use trustwire::envelope::payload_digest;
use trustwire::jwks::{JwkSet, KeySource, TrustStore};
use trustwire::keys::Algorithm;
use trustwire::{Binding, Expected, Reason, ServiceId, Signer, SigningKey, Verifier};

const PYTHON: &str = "tests/python/.venv/bin/python";
const SCRIPT: &str = "tests/python/joserfc_interop.py";
const CHANNEL: &str = "nats:orders.created";
const PAYLOAD: &[u8] = br#"{"order":42}"#;

/// Sends one request to the joserfc driver and returns its JSON response.
fn joserfc(request: &Value) -> Value {
    let mut child = Command::new(PYTHON)
        .arg(SCRIPT)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| {
            panic!(
                "cannot start {PYTHON}: {err}; run scripts/test.sh, which creates it with joserfc, or: python3 -m venv tests/python/.venv && tests/python/.venv/bin/pip install -r tests/python/requirements.txt"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("No module named 'joserfc'") {
        panic!(
            "joserfc is not installed: run tests/python/.venv/bin/pip install -r tests/python/requirements.txt, or scripts/test.sh, which does it"
        );
    }
    assert!(output.status.success(), "{SCRIPT} failed: {stderr}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| panic!("{SCRIPT} printed invalid JSON: {err}"))
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn service(name: &str) -> ServiceId {
    ServiceId::new(name).unwrap()
}

fn expected() -> Expected<'static> {
    Expected::message(Binding::channel(CHANNEL).unwrap(), PAYLOAD)
}

fn verifier(set: JwkSet) -> Verifier {
    let trust = TrustStore::new().trust(service("orders"), KeySource::inline(set));
    Verifier::builder(service("payments"), trust).build().unwrap()
}

fn our_token(key: SigningKey, fully_specified: bool) -> (String, JwkSet, String) {
    let set = JwkSet::from_keys(vec![key.public_key().clone()]);
    let mut builder = Signer::builder(service("orders"), key);
    if fully_specified {
        builder = builder.fully_specified_alg();
    }
    let signer = builder.build().unwrap();
    let token = signer
        .token(service("payments"))
        .binding(Binding::channel(CHANNEL).unwrap())
        .payload(PAYLOAD)
        .sign()
        .unwrap();
    (token, set, signer.kid().to_owned())
}

fn joserfc_verify(token: &str, set: &JwkSet, algorithms: &[&str], audience: &str) -> Value {
    joserfc(&json!({
        "op": "verify",
        "token": token,
        "jwks": serde_json::from_str::<Value>(&set.to_json()).unwrap(),
        "issuer": "orders",
        "audience": audience,
        "algorithms": algorithms,
    }))
}

/// Claims as our signer writes them, for joserfc to sign.
fn claims_for_joserfc(jti: &str) -> Value {
    let issued = now();
    json!({
        "iss": "orders",
        "aud": "payments",
        "iat": issued,
        "exp": issued + 60,
        "jti": jti,
        "chn": CHANNEL,
        "dig": payload_digest(PAYLOAD),
    })
}

/// Has joserfc generate a key and sign; returns the token and the key set.
fn joserfc_token(alg: &str, jti: &str) -> (String, JwkSet, Value) {
    let response = joserfc(&json!({"op": "sign", "alg": alg, "claims": claims_for_joserfc(jti)}));
    let jwk = response["jwk"].clone();
    let set = JwkSet::parse(json!({ "keys": [jwk] }).to_string().as_bytes()).unwrap();
    (response["token"].as_str().unwrap().to_owned(), set, jwk)
}

#[test]
fn our_eddsa_token_verifies_in_joserfc() {
    for (fully_specified, alg) in [(false, "EdDSA"), (true, "Ed25519")] {
        let (token, set, kid) = our_token(SigningKey::generate().unwrap(), fully_specified);
        let response = joserfc_verify(&token, &set, &[alg], "payments");

        assert_eq!(response["ok"], true, "{alg}: {response}");
        assert_eq!(response["header"]["alg"], alg);
        assert_eq!(response["header"]["kid"], kid.as_str());
        assert_eq!(response["header"]["typ"], "trustwire+jwt");
        let payload = &response["claims"];
        assert_eq!(payload["iss"], "orders");
        assert_eq!(payload["aud"], "payments");
        assert_eq!(payload["chn"], CHANNEL);
        assert_eq!(payload["dig"], payload_digest(PAYLOAD).as_str());
        assert_eq!(payload["exp"].as_i64().unwrap() - payload["iat"].as_i64().unwrap(), 60);
    }
}

#[tokio::test]
async fn joserfc_tokens_verify_with_us() {
    for (alg, ours) in [
        ("EdDSA", Algorithm::EdDsa),
        ("Ed25519", Algorithm::Ed25519),
        ("ES256", Algorithm::Es256),
    ] {
        let (token, set, jwk) = joserfc_token(alg, &format!("joserfc-{alg}"));
        let verified = verifier(set)
            .verify(&token, &expected())
            .await
            .unwrap_or_else(|rejection| panic!("{alg}: {} ({})", rejection.code(), rejection.detail()));

        assert_eq!(verified.alg, ours);
        assert_eq!(verified.kid, jwk["kid"].as_str().unwrap());
        assert_eq!(verified.claims.iss, "orders");
        assert_eq!(verified.claims.jti, format!("joserfc-{alg}"));
        assert_eq!(verified.claims.chn.as_deref(), Some(CHANNEL));
    }
}

/// Both sides compute the same RFC 7638 thumbprint, so a kid from one is
/// found by the other.
#[test]
fn thumbprints_agree() {
    let key = SigningKey::generate().unwrap();
    let response = joserfc(&json!({"op": "thumbprint", "jwk": key.public_key().to_jwk()}));
    assert_eq!(response["thumbprint"], key.kid());

    for alg in ["Ed25519", "ES256"] {
        let (_, _, mut jwk) = joserfc_token(alg, "thumbprint");
        let joserfc_kid = jwk.as_object_mut().unwrap().remove("kid").unwrap();
        let set = JwkSet::parse(json!({ "keys": [jwk] }).to_string().as_bytes()).unwrap();
        assert_eq!(set.keys()[0].kid(), joserfc_kid.as_str().unwrap(), "{alg}");
    }
}

#[test]
fn joserfc_rejects_our_tampered_token() {
    let (token, set, _) = our_token(SigningKey::generate().unwrap(), false);

    // New claims under the old signature.
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["aud"] = json!("billing");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    let response = joserfc_verify(&tampered, &set, &["EdDSA"], "billing");
    assert_eq!(response["ok"], false);
    assert_eq!(response["error"], "BadSignatureError");

    // The untouched token, for another audience.
    let response = joserfc_verify(&token, &set, &["EdDSA"], "billing");
    assert_eq!(response["ok"], false);
    assert_eq!(response["error"], "InvalidClaimError");

    // The untouched token with an algorithm list that excludes ours.
    let response = joserfc_verify(&token, &set, &["ES256"], "payments");
    assert_eq!(response["ok"], false);
    assert_eq!(response["error"], "UnsupportedAlgorithmError");
}

#[tokio::test]
async fn we_reject_joserfc_tokens_on_mismatch() {
    let (token, set, _) = joserfc_token("EdDSA", "mismatch");
    let verifier = verifier(set.clone());

    let other_payload = Expected::message(Binding::channel(CHANNEL).unwrap(), b"{\"order\":43}");
    let rejection = verifier.verify(&token, &other_payload).await.unwrap_err();
    assert_eq!(rejection.reason(), Reason::DigestMismatch);

    let other_channel = Expected::message(Binding::channel("nats:orders.deleted").unwrap(), PAYLOAD);
    let rejection = verifier.verify(&token, &other_channel).await.unwrap_err();
    assert_eq!(rejection.reason(), Reason::BindingMismatch);

    let trust = TrustStore::new().trust(service("orders"), KeySource::inline(set));
    let billing = Verifier::builder(service("billing"), trust).build().unwrap();
    let rejection = billing.verify(&token, &expected()).await.unwrap_err();
    assert_eq!(rejection.reason(), Reason::WrongAudience);

    // A joserfc key that is not in the trust store.
    let (_, stranger, _) = joserfc_token("EdDSA", "stranger");
    let rejection = self::verifier(stranger).verify(&token, &expected()).await.unwrap_err();
    assert_eq!(rejection.reason(), Reason::UnknownKey);
}

/// joserfc's own time checks agree with ours on an expired token.
#[tokio::test]
async fn expired_token_rejected_by_both() {
    let key = SigningKey::generate().unwrap();
    let set = JwkSet::from_keys(vec![key.public_key().clone()]);
    let an_hour_ago = now() - 3600;
    let signer = Signer::builder(service("orders"), key)
        .clock(Arc::new(FixedClock::new(an_hour_ago)))
        .build()
        .unwrap();
    let token = signer
        .token(service("payments"))
        .binding(Binding::channel(CHANNEL).unwrap())
        .payload(PAYLOAD)
        .sign()
        .unwrap();

    let response = joserfc_verify(&token, &set, &["EdDSA"], "payments");
    assert_eq!(response["ok"], false);
    assert_eq!(response["error"], "ExpiredTokenError");

    let rejection = verifier(set).verify(&token, &expected()).await.unwrap_err();
    assert_eq!(rejection.reason(), Reason::Expired);
}
