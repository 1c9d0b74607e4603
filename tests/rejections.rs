//! One test per rejection path of the verifier, each asserting the exact
//! reason code, plus the accepted variants next to them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::Signer as _;
use serde_json::{Value, json};
use trustwire::clock::FixedClock;
use trustwire::envelope::payload_digest;
use trustwire::jwks::{JwkSet, JwksError, KeySource, RemoteJwks, TrustStore};
use trustwire::keys::KeyError;
use trustwire::replay::MemoryReplayGuard;
use trustwire::{Binding, Expected, Policy, Reason, ServiceId, Signer, SigningKey, Verifier};

const NOW: i64 = 1_800_000_000;
const CHANNEL: &str = "nats:orders.created";
const PAYLOAD: &[u8] = br#"{"order":42}"#;

/// A sender whose raw seed is known, so tests can sign any header and claims.
struct Sender {
    seed: [u8; 32],
    kid: String,
    set: JwkSet,
}

impl Sender {
    fn new(seed_byte: u8) -> Self {
        let seed = [seed_byte; 32];
        let key = SigningKey::from_seed(&seed).unwrap();
        Self {
            seed,
            kid: key.kid().to_owned(),
            set: JwkSet::from_keys(vec![key.public_key().clone()]),
        }
    }

    fn signer(&self, service: &str) -> Signer {
        Signer::builder(
            ServiceId::new(service).unwrap(),
            SigningKey::from_seed(&self.seed).unwrap(),
        )
        .clock(Arc::new(FixedClock::new(NOW)))
        .build()
        .unwrap()
    }

    /// Signs arbitrary header and claims JSON text.
    fn forge(&self, header: &str, claims: &str) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let key = ed25519_dalek::SigningKey::from_bytes(&self.seed);
        let signature = key.sign(input.as_bytes()).to_bytes();
        format!("{input}.{}", b64(&signature))
    }

    fn header(&self) -> String {
        json!({"alg": "EdDSA", "kid": self.kid, "typ": "trustwire+jwt"}).to_string()
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn claims() -> Value {
    json!({
        "iss": "orders",
        "aud": "payments",
        "iat": NOW,
        "exp": NOW + 60,
        "jti": "AAAAAAAAAAAAAAAAAAAAAA",
        "chn": CHANNEL,
        "dig": payload_digest(PAYLOAD),
    })
}

fn verifier_for(sender: &Sender) -> Verifier {
    verifier_with(sender, |builder| builder)
}

fn verifier_with(
    sender: &Sender,
    configure: impl FnOnce(trustwire::envelope::VerifierBuilder) -> trustwire::envelope::VerifierBuilder,
) -> Verifier {
    let trust = TrustStore::new().trust(ServiceId::new("orders").unwrap(), KeySource::inline(sender.set.clone()));
    let clock = Arc::new(FixedClock::new(NOW));
    let builder = Verifier::builder(ServiceId::new("payments").unwrap(), trust).clock(clock);
    configure(builder).build().unwrap()
}

fn expected() -> Expected<'static> {
    Expected::message(Binding::channel(CHANNEL).unwrap(), PAYLOAD)
}

async fn reason_of(verifier: &Verifier, token: &str) -> Reason {
    match verifier.verify(token, &expected()).await {
        Ok(verified) => panic!("token was accepted: {:?}", verified.claims),
        Err(rejection) => rejection.reason(),
    }
}

async fn reason_of_claims(sender: &Sender, claims: &Value) -> Reason {
    let token = sender.forge(&sender.header(), &claims.to_string());
    reason_of(&verifier_for(sender), &token).await
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn without(mut claims: Value, name: &str) -> Value {
    claims.as_object_mut().unwrap().remove(name);
    claims
}

#[tokio::test]
async fn signed_token_accepted() {
    let sender = Sender::new(1);
    let token = sender
        .signer("orders")
        .token(ServiceId::new("payments").unwrap())
        .binding(Binding::channel(CHANNEL).unwrap())
        .payload(PAYLOAD)
        .sign()
        .unwrap();
    let verified = verifier_for(&sender).verify(&token, &expected()).await.unwrap();
    assert_eq!(verified.claims.iss, "orders");
    assert_eq!(verified.kid, sender.kid);
}

#[tokio::test]
async fn both_ed25519_alg_names_accepted() {
    let sender = Sender::new(1);
    let verifier = verifier_for(&sender);
    for (index, alg) in ["EdDSA", "Ed25519"].iter().enumerate() {
        let header = json!({"alg": alg, "kid": sender.kid, "typ": "trustwire+jwt"}).to_string();
        let claims = with(claims(), "jti", json!(format!("jti-{index}")));
        let token = sender.forge(&header, &claims.to_string());
        assert!(verifier.verify(&token, &expected()).await.is_ok(), "alg {alg}");
    }
}

#[tokio::test]
async fn fully_specified_alg_signer() {
    let sender = Sender::new(1);
    let signer = Signer::builder(
        ServiceId::new("orders").unwrap(),
        SigningKey::from_seed(&sender.seed).unwrap(),
    )
    .clock(Arc::new(FixedClock::new(NOW)))
    .fully_specified_alg()
    .build()
    .unwrap();
    let token = signer
        .token(ServiceId::new("payments").unwrap())
        .binding(Binding::channel(CHANNEL).unwrap())
        .payload(PAYLOAD)
        .sign()
        .unwrap();
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(header["alg"], "Ed25519");
    let verified = verifier_for(&sender).verify(&token, &expected()).await.unwrap();
    assert_eq!(verified.alg, trustwire::keys::Algorithm::Ed25519);
}

#[tokio::test]
async fn token_too_large() {
    let sender = Sender::new(1);
    let token = "a".repeat(8 * 1024 + 1);
    assert_eq!(reason_of(&verifier_for(&sender), &token).await, Reason::TooLarge);
}

#[tokio::test]
async fn payload_too_large() {
    let sender = Sender::new(1);
    let verifier = verifier_with(&sender, |builder| builder.max_payload_bytes(4));
    let token = sender.forge(&sender.header(), &claims().to_string());
    assert_eq!(reason_of(&verifier, &token).await, Reason::TooLarge);
}

#[tokio::test]
async fn malformed_structure() {
    let sender = Sender::new(1);
    let verifier = verifier_for(&sender);
    let good = sender.forge(&sender.header(), &claims().to_string());
    let parts: Vec<&str> = good.split('.').collect();

    let cases = [
        ("two segments", format!("{}.{}", parts[0], parts[1])),
        ("four segments", format!("{good}.x")),
        ("empty", String::new()),
        ("padding", format!("{}=.{}.{}", parts[0], parts[1], parts[2])),
        ("standard alphabet", good.replace('-', "+").replace('_', "/") + "+"),
        ("whitespace", format!("{} .{}.{}", parts[0], parts[1], parts[2])),
        (
            "header not JSON",
            format!("{}.{}.{}", b64(b"not json"), parts[1], parts[2]),
        ),
        ("header array", format!("{}.{}.{}", b64(b"[]"), parts[1], parts[2])),
        ("claims not JSON", sender.forge(&sender.header(), "{")),
    ];
    for (name, token) in cases {
        assert_eq!(reason_of(&verifier, &token).await, Reason::Malformed, "{name}");
    }
}

#[tokio::test]
async fn duplicate_members_malformed() {
    let sender = Sender::new(1);
    let verifier = verifier_for(&sender);
    let kid = &sender.kid;
    let headers = [
        format!(r#"{{"alg":"EdDSA","alg":"EdDSA","kid":"{kid}","typ":"trustwire+jwt"}}"#),
        format!(r#"{{"alg":"EdDSA","\u0061lg":"none","kid":"{kid}","typ":"trustwire+jwt"}}"#),
    ];
    for header in headers {
        let token = sender.forge(&header, &claims().to_string());
        assert_eq!(reason_of(&verifier, &token).await, Reason::Malformed, "{header}");
    }

    let claims_text = claims()
        .to_string()
        .replacen('{', r#"{"sub":"alice","sub":"admin","#, 1);
    let token = sender.forge(&sender.header(), &claims_text);
    assert_eq!(reason_of(&verifier, &token).await, Reason::Malformed);
}

#[tokio::test]
async fn kid_missing_or_invalid_malformed() {
    let sender = Sender::new(1);
    let verifier = verifier_for(&sender);
    for header in [
        json!({"alg": "EdDSA", "typ": "trustwire+jwt"}),
        json!({"alg": "EdDSA", "typ": "trustwire+jwt", "kid": ""}),
        json!({"alg": "EdDSA", "typ": "trustwire+jwt", "kid": 7}),
        json!({"alg": "EdDSA", "typ": "trustwire+jwt", "kid": "k".repeat(257)}),
    ] {
        let token = sender.forge(&header.to_string(), &claims().to_string());
        assert_eq!(reason_of(&verifier, &token).await, Reason::Malformed, "{header}");
    }
}

#[tokio::test]
async fn wrong_type() {
    let sender = Sender::new(1);
    let verifier = verifier_for(&sender);
    for typ in [json!("JWT"), json!("at+jwt"), json!(1), Value::Null] {
        let mut header = json!({"alg": "EdDSA", "kid": sender.kid});
        if !typ.is_null() {
            header["typ"] = typ.clone();
        }
        let token = sender.forge(&header.to_string(), &claims().to_string());
        assert_eq!(reason_of(&verifier, &token).await, Reason::WrongType, "typ {typ}");
    }

    let jwe = "eyJhbGciOiJFQ0RILUVTK0EyNTZLVyIsImVuYyI6IkEyNTZHQ00ifQ.AA.AA.AA.AA";
    assert_eq!(reason_of(&verifier, jwe).await, Reason::WrongType);

    let header = json!({"alg": "EdDSA", "kid": sender.kid, "typ": "trustwire+jwt", "enc": "A256GCM"});
    let token = sender.forge(&header.to_string(), &claims().to_string());
    assert_eq!(reason_of(&verifier, &token).await, Reason::WrongType);
}

#[tokio::test]
async fn typ_compared_case_insensitively() {
    let sender = Sender::new(1);
    let verifier = verifier_for(&sender);
    for (index, typ) in ["TrustWire+JWT", "application/trustwire+jwt"].iter().enumerate() {
        let header = json!({"alg": "EdDSA", "kid": sender.kid, "typ": typ});
        let claims = with(claims(), "jti", json!(format!("typ-{index}")));
        let token = sender.forge(&header.to_string(), &claims.to_string());
        assert!(verifier.verify(&token, &expected()).await.is_ok(), "typ {typ}");
    }
}

#[tokio::test]
async fn unsupported_algorithms() {
    let sender = Sender::new(1);
    let verifier = verifier_for(&sender);
    for alg in [
        json!("none"),
        json!("None"),
        json!("NONE"),
        json!("nOnE"),
        json!(""),
        json!("HS256"),
        json!("RS256"),
        json!("eddsa"),
        json!(1),
        Value::Null,
    ] {
        let mut header = json!({"kid": sender.kid, "typ": "trustwire+jwt"});
        if !alg.is_null() {
            header["alg"] = alg.clone();
        }
        let token = sender.forge(&header.to_string(), &claims().to_string());
        assert_eq!(reason_of(&verifier, &token).await, Reason::UnsupportedAlg, "alg {alg}");
    }

    // An unsigned token: alg none with an empty signature.
    let header = json!({"alg": "none", "kid": sender.kid, "typ": "trustwire+jwt"});
    let token = format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(claims().to_string().as_bytes())
    );
    assert_eq!(reason_of(&verifier, &token).await, Reason::UnsupportedAlg);
}

#[tokio::test]
async fn alg_not_allowed_for_key() {
    let sender = Sender::new(1);
    let header = json!({"alg": "ES256", "kid": sender.kid, "typ": "trustwire+jwt"});
    let token = sender.forge(&header.to_string(), &claims().to_string());
    assert_eq!(reason_of(&verifier_for(&sender), &token).await, Reason::UnsupportedAlg);
}

#[tokio::test]
async fn forbidden_header_members() {
    let sender = Sender::new(1);
    let verifier = verifier_for(&sender);
    let members = [
        ("crit", json!(["exp"])),
        ("crit", json!([])),
        ("crit", json!("b64")),
        ("b64", json!(false)),
        ("jku", json!("https://attacker.example/jwks.json")),
        (
            "jwk",
            json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
        ),
        ("x5u", json!("https://attacker.example/cert.pem")),
        ("x5c", json!(["MIIB"])),
        ("zip", json!("DEF")),
    ];
    for (name, value) in members {
        let mut header = json!({"alg": "EdDSA", "kid": sender.kid, "typ": "trustwire+jwt"});
        header[name] = value.clone();
        let token = sender.forge(&header.to_string(), &claims().to_string());
        assert_eq!(
            reason_of(&verifier, &token).await,
            Reason::UnsupportedHeader,
            "{name}: {value}"
        );
    }
}

#[tokio::test]
async fn unknown_kid() {
    let sender = Sender::new(1);
    let stranger = Sender::new(2);
    let token = stranger.forge(&stranger.header(), &claims().to_string());
    assert_eq!(reason_of(&verifier_for(&sender), &token).await, Reason::UnknownKey);
}

#[tokio::test]
async fn key_source_unavailable() {
    let sender = Sender::new(1);
    // Port 1 on loopback refuses connections at once.
    let remote = RemoteJwks::builder("http://127.0.0.1:1/.well-known/jwks.json")
        .fetch_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let trust = TrustStore::new().trust(ServiceId::new("orders").unwrap(), KeySource::Remote(remote));
    let verifier = Verifier::builder(ServiceId::new("payments").unwrap(), trust)
        .clock(Arc::new(FixedClock::new(NOW)))
        .build()
        .unwrap();
    let token = sender.forge(&sender.header(), &claims().to_string());
    assert_eq!(reason_of(&verifier, &token).await, Reason::KeySourceUnavailable);
}

#[tokio::test]
async fn bad_signature() {
    let sender = Sender::new(1);
    let verifier = verifier_for(&sender);
    let token = sender.forge(&sender.header(), &claims().to_string());
    let (input, signature) = token.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();

    bytes[10] ^= 0x01;
    let flipped = format!("{input}.{}", b64(&bytes));
    assert_eq!(reason_of(&verifier, &flipped).await, Reason::BadSignature);

    let short = format!("{input}.{}", b64(&bytes[..63]));
    assert_eq!(reason_of(&verifier, &short).await, Reason::BadSignature);

    let empty = format!("{input}.");
    assert_eq!(reason_of(&verifier, &empty).await, Reason::BadSignature);

    // Claims changed after signing: the signature covers them.
    let header_b64 = input.split('.').next().unwrap();
    let changed = b64(with(claims(), "sub", json!("admin")).to_string().as_bytes());
    let swapped = format!("{header_b64}.{changed}.{signature}");
    assert_eq!(reason_of(&verifier, &swapped).await, Reason::BadSignature);
}

#[tokio::test]
async fn non_canonical_signature_rejected() {
    // verify_strict rejects S >= L; adding the group order L to S of a valid
    // signature gives a second encoding that plain verification accepts.
    let sender = Sender::new(1);
    let verifier = verifier_for(&sender);
    let token = sender.forge(&sender.header(), &claims().to_string());
    let (input, signature) = token.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();

    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(bytes[32 + i]) + u16::from(L[i]) + carry;
        bytes[32 + i] = (sum & 0xff) as u8;
        carry = sum >> 8;
    }
    let malleated = format!("{input}.{}", b64(&bytes));
    assert_eq!(reason_of(&verifier, &malleated).await, Reason::BadSignature);
}

#[tokio::test]
async fn issuer_mismatch() {
    let orders = Sender::new(1);
    let billing = Sender::new(2);
    let trust = TrustStore::new()
        .trust(ServiceId::new("orders").unwrap(), KeySource::inline(orders.set.clone()))
        .trust(
            ServiceId::new("billing").unwrap(),
            KeySource::inline(billing.set.clone()),
        );
    let verifier = Verifier::builder(ServiceId::new("payments").unwrap(), trust)
        .clock(Arc::new(FixedClock::new(NOW)))
        .build()
        .unwrap();

    // orders' key signing a token that claims to come from billing.
    let token = orders.forge(&orders.header(), &with(claims(), "iss", json!("billing")).to_string());
    assert_eq!(reason_of(&verifier, &token).await, Reason::IssuerMismatch);

    // orders' key signing for an issuer nobody trusts.
    let token = orders.forge(&orders.header(), &with(claims(), "iss", json!("evil")).to_string());
    assert_eq!(reason_of(&verifier, &token).await, Reason::IssuerMismatch);
}

#[tokio::test]
async fn wrong_audience() {
    let sender = Sender::new(1);
    for aud in [
        json!("billing"),
        json!([]),
        json!(""),
        json!("Payments"),
        json!(["billing", "PAYMENTS"]),
        json!("payments "),
    ] {
        let claims = with(claims(), "aud", aud.clone());
        assert_eq!(
            reason_of_claims(&sender, &claims).await,
            Reason::WrongAudience,
            "aud {aud}"
        );
    }
}

#[tokio::test]
async fn audience_array_accepted() {
    let sender = Sender::new(1);
    let claims = with(claims(), "aud", json!(["billing", "payments"]));
    let token = sender.forge(&sender.header(), &claims.to_string());
    assert!(verifier_for(&sender).verify(&token, &expected()).await.is_ok());
}

#[tokio::test]
async fn claims_of_wrong_type_malformed() {
    let sender = Sender::new(1);
    let cases = [
        ("aud", json!(123)),
        ("aud", json!([1])),
        ("iss", json!(7)),
        ("jti", json!(7)),
        ("jti", json!("")),
        ("sub", json!(1)),
        ("chn", json!(["nats:orders.created"])),
        ("dig", json!(null)),
        ("act", json!("svc")),
    ];
    for (name, value) in cases {
        let claims = with(claims(), name, value.clone());
        assert_eq!(
            reason_of_claims(&sender, &claims).await,
            Reason::Malformed,
            "{name}: {value}"
        );
    }
}

#[tokio::test]
async fn time_claims_of_wrong_type_malformed() {
    let sender = Sender::new(1);
    let values = [
        json!("1800000060"),
        Value::Null,
        json!(true),
        json!(-1),
        json!(1e300),
        json!(10_000_000_000_000_000_000_u64),
        json!(1_800_000_060.5),
        json!(253_402_300_800_i64),
    ];
    for name in ["exp", "nbf", "iat"] {
        for value in &values {
            let claims = with(claims(), name, value.clone());
            assert_eq!(
                reason_of_claims(&sender, &claims).await,
                Reason::Malformed,
                "{name}: {value}"
            );
        }
    }
}

#[tokio::test]
async fn huge_time_text_malformed() {
    // Numbers written with huge exponents or digits must not reach any
    // float-to-duration conversion.
    let sender = Sender::new(1);
    let text = claims()
        .to_string()
        .replace(&format!("\"exp\":{}", NOW + 60), "\"exp\":1e400");
    assert!(text.contains("1e400"));
    let token = sender.forge(&sender.header(), &text);
    assert_eq!(reason_of(&verifier_for(&sender), &token).await, Reason::Malformed);
}

#[tokio::test]
async fn exp_not_after_iat_malformed() {
    let sender = Sender::new(1);
    let claims = with(claims(), "exp", json!(NOW));
    assert_eq!(reason_of_claims(&sender, &claims).await, Reason::Malformed);
}

#[tokio::test]
async fn missing_required_claims() {
    let sender = Sender::new(1);
    for name in ["iss", "aud", "iat", "exp", "jti"] {
        let claims = without(claims(), name);
        let reason = reason_of_claims(&sender, &claims).await;
        assert_eq!(reason, Reason::MissingClaim, "without {name}");
    }
}

#[tokio::test]
async fn expired_beyond_leeway() {
    let sender = Sender::new(1);
    let claims = with(with(claims(), "iat", json!(NOW - 100)), "exp", json!(NOW - 31));
    assert_eq!(reason_of_claims(&sender, &claims).await, Reason::Expired);
}

#[tokio::test]
async fn expired_within_leeway_accepted() {
    let sender = Sender::new(1);
    let claims = with(with(claims(), "iat", json!(NOW - 100)), "exp", json!(NOW - 30));
    let token = sender.forge(&sender.header(), &claims.to_string());
    assert!(verifier_for(&sender).verify(&token, &expected()).await.is_ok());
}

#[tokio::test]
async fn not_yet_valid() {
    let sender = Sender::new(1);
    let nbf_future = with(claims(), "nbf", json!(NOW + 31));
    assert_eq!(reason_of_claims(&sender, &nbf_future).await, Reason::NotYetValid);

    let iat_future = with(with(claims(), "iat", json!(NOW + 31)), "exp", json!(NOW + 90));
    assert_eq!(reason_of_claims(&sender, &iat_future).await, Reason::NotYetValid);
}

#[tokio::test]
async fn lifetime_too_long() {
    let sender = Sender::new(1);
    let claims = with(claims(), "exp", json!(NOW + 601));
    assert_eq!(reason_of_claims(&sender, &claims).await, Reason::LifetimeTooLong);
}

#[tokio::test]
async fn reference_time_from_broker() {
    // A message stored when its token was valid verifies later when the
    // consumer judges time against the broker's stored timestamp.
    let sender = Sender::new(1);
    let verifier = verifier_for(&sender);
    let claims = with(with(claims(), "iat", json!(NOW - 3600)), "exp", json!(NOW - 3540));
    let token = sender.forge(&sender.header(), &claims.to_string());
    assert_eq!(reason_of(&verifier, &token).await, Reason::Expired);

    let stored = expected().with_reference_time(NOW - 3590);
    assert!(verifier.verify(&token, &stored).await.is_ok());
}

#[tokio::test]
async fn binding_mismatch() {
    let sender = Sender::new(1);
    let verifier = verifier_for(&sender);
    let token = sender.forge(&sender.header(), &claims().to_string());

    let other_channel = Expected::message(Binding::channel("nats:orders.deleted").unwrap(), PAYLOAD);
    assert_eq!(
        verifier.verify(&token, &other_channel).await.unwrap_err().reason(),
        Reason::BindingMismatch
    );

    let as_http = Expected::new(Binding::http("POST", "/orders").unwrap(), Some(PAYLOAD));
    assert_eq!(
        verifier.verify(&token, &as_http).await.unwrap_err().reason(),
        Reason::BindingMismatch
    );

    let no_chn = sender.forge(&sender.header(), &without(claims(), "chn").to_string());
    assert_eq!(
        verifier.verify(&no_chn, &expected()).await.unwrap_err().reason(),
        Reason::BindingMismatch
    );
}

#[tokio::test]
async fn http_binding_checked() {
    let sender = Sender::new(1);
    let verifier = verifier_for(&sender);
    let signer = sender.signer("orders");
    let sign = |method: &str, target: &str| {
        signer
            .token(ServiceId::new("payments").unwrap())
            .binding(Binding::http(method, target).unwrap())
            .sign()
            .unwrap()
    };

    let token = sign("POST", "/v1/charges?b=2&a=1");
    let same = Expected::new(Binding::http("POST", "/v1/charges?a=1&b=%32").unwrap(), None);
    assert!(verifier.verify(&token, &same).await.is_ok());

    let token = sign("POST", "/v1/charges");
    let other_method = Expected::new(Binding::http("DELETE", "/v1/charges").unwrap(), None);
    assert_eq!(
        verifier.verify(&token, &other_method).await.unwrap_err().reason(),
        Reason::BindingMismatch
    );

    let token = sign("POST", "/v1/charges");
    let other_path = Expected::new(Binding::http("POST", "/v1/refunds").unwrap(), None);
    assert_eq!(
        verifier.verify(&token, &other_path).await.unwrap_err().reason(),
        Reason::BindingMismatch
    );

    let token = sign("POST", "/v1/charges?amount=1");
    let other_query = Expected::new(Binding::http("POST", "/v1/charges?amount=1000").unwrap(), None);
    assert_eq!(
        verifier.verify(&token, &other_query).await.unwrap_err().reason(),
        Reason::BindingMismatch
    );

    let token = sign("POST", "/v1/charges");
    let channel = Expected::new(Binding::channel("nats:v1.charges").unwrap(), None);
    assert_eq!(
        verifier.verify(&token, &channel).await.unwrap_err().reason(),
        Reason::BindingMismatch
    );
}

#[tokio::test]
async fn digest_mismatch() {
    let sender = Sender::new(1);
    let verifier = verifier_for(&sender);
    let token = sender.forge(&sender.header(), &claims().to_string());
    let tampered = Expected::message(Binding::channel(CHANNEL).unwrap(), br#"{"order":43}"#);
    assert_eq!(
        verifier.verify(&token, &tampered).await.unwrap_err().reason(),
        Reason::DigestMismatch
    );

    let no_dig = sender.forge(&sender.header(), &without(claims(), "dig").to_string());
    assert_eq!(
        verifier.verify(&no_dig, &expected()).await.unwrap_err().reason(),
        Reason::DigestMismatch
    );

    let token = sender.forge(&sender.header(), &with(claims(), "jti", json!("other")).to_string());
    let no_payload = Expected::new(Binding::channel(CHANNEL).unwrap(), None);
    assert_eq!(
        verifier.verify(&token, &no_payload).await.unwrap_err().reason(),
        Reason::DigestMismatch
    );
}

#[tokio::test]
async fn policy_denial() {
    let sender = Sender::new(1);
    let policy = Policy::deny_all()
        .allow_channel(ServiceId::new("orders").unwrap(), "nats:orders.deleted")
        .unwrap();
    let verifier = verifier_with(&sender, |builder| builder.policy(policy));
    let token = sender.forge(&sender.header(), &claims().to_string());
    assert_eq!(reason_of(&verifier, &token).await, Reason::NotAllowed);
}

#[tokio::test]
async fn policy_allows_matching_channel() {
    let sender = Sender::new(1);
    let policy = Policy::deny_all()
        .allow_channel(ServiceId::new("orders").unwrap(), "nats:orders.*")
        .unwrap();
    let verifier = verifier_with(&sender, |builder| builder.policy(policy));
    let token = sender.forge(&sender.header(), &claims().to_string());
    assert!(verifier.verify(&token, &expected()).await.is_ok());
}

#[tokio::test]
async fn replayed_jti() {
    let sender = Sender::new(1);
    let verifier = verifier_for(&sender);
    let token = sender.forge(&sender.header(), &claims().to_string());
    assert!(verifier.verify(&token, &expected()).await.is_ok());
    assert_eq!(reason_of(&verifier, &token).await, Reason::Replayed);
}

#[tokio::test]
async fn forget_allows_redelivery() {
    let sender = Sender::new(1);
    let verifier = verifier_for(&sender);
    let token = sender.forge(&sender.header(), &claims().to_string());
    let verified = verifier.verify(&token, &expected()).await.unwrap();
    verifier.forget(&verified).await;
    assert!(verifier.verify(&token, &expected()).await.is_ok());
}

#[tokio::test]
async fn replay_guard_full() {
    let sender = Sender::new(1);
    let guard = MemoryReplayGuard::with_capacity(1).with_clock(Arc::new(FixedClock::new(NOW)));
    let verifier = verifier_with(&sender, |builder| builder.replay_guard(Arc::new(guard)));
    let first = sender.forge(&sender.header(), &claims().to_string());
    let second = sender.forge(&sender.header(), &with(claims(), "jti", json!("second")).to_string());
    assert!(verifier.verify(&first, &expected()).await.is_ok());
    assert_eq!(reason_of(&verifier, &second).await, Reason::ReplayGuardUnavailable);
}

#[tokio::test]
async fn every_reason_code_is_distinct() {
    let codes: std::collections::HashSet<&str> = Reason::ALL.iter().map(|reason| reason.code()).collect();
    assert_eq!(codes.len(), Reason::ALL.len());
}

#[test]
fn weak_key_in_jwks_rejected() {
    // The small-order point with x = 1 (the identity's neighbour) and all zeros.
    for x in [
        "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let doc = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x}]}).to_string();
        let result = JwkSet::parse(doc.as_bytes());
        assert!(
            matches!(
                result,
                Err(JwksError::Key {
                    index: 0,
                    source: KeyError::WeakKey,
                })
            ),
            "{x}: {result:?}"
        );
    }
}
