//! Bearer JWTs from an external identity provider (IdP), checked against its
//! JWKS.
//!
//! An IdP's access token is not a trustwire token: its `typ` is `JWT` or
//! `at+jwt` (RFC 9068), its `aud` is the API rather than a service, and it
//! binds no request. So it gets its own check, with the same strict parsing
//! as trustwire tokens:
//!
//! 1. at most 8 KiB; three strict base64url segments of strict JSON objects
//!    (duplicate members rejected);
//! 2. header: no `crit`, `b64`, `jku`, `jwk`, `x5u`, `x5c`, `zip` or `enc`;
//!    `typ` one of the accepted types; `alg` allowed for the key; `kid` set;
//! 3. the key comes from the provider's JWKS only, with one refresh for an
//!    unknown `kid` (rate-limited by the cache);
//! 4. signature, then `iss` equal to the provider's issuer, `aud` containing
//!    the configured audience, `exp` (required), `nbf` and `iat` with leeway,
//!    and a non-empty `sub`.
//!
//! NOTE: trustwire verifies Ed25519 (`EdDSA`) and P-256 (`ES256`) keys only.
//! An IdP that signs only with RSA (`RS256`) cannot be used here yet.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::clock::{Clock, SystemClock};
use crate::encoding::{b64_decode, parse_object};
use crate::envelope::{Reason, Rejection};
use crate::jwks::RemoteJwks;
use crate::keys::Algorithm;

/// Largest IdP token accepted, in bytes.
pub const MAX_IDP_TOKEN_BYTES: usize = 8 * 1024;

/// Longest `sub` accepted from an IdP token, in bytes.
const MAX_SUBJECT_LEN: usize = 256;

/// Header members never accepted, as for trustwire tokens.
const FORBIDDEN_HEADERS: [&str; 8] = ["crit", "b64", "jku", "jwk", "x5u", "x5c", "zip", "enc"];

/// An identity provider whose bearer tokens the gateway accepts.
///
/// ```no_run
/// use trustwire::http::gateway::IdentityProvider;
/// use trustwire::jwks::RemoteJwks;
///
/// let jwks = RemoteJwks::builder("https://idp.example.com/.well-known/jwks.json").build()?;
/// let idp = IdentityProvider::new("https://idp.example.com/", jwks, "public-api")
///     .subject_prefix("idp:");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct IdentityProvider {
    issuer: String,
    jwks: RemoteJwks,
    audience: String,
    accepted_types: Vec<String>,
    subject_prefix: String,
    leeway: i64,
    clock: Arc<dyn Clock>,
}

impl IdentityProvider {
    /// A provider whose tokens have `iss` = `issuer` and are signed by keys
    /// in `jwks`, accepted when their `aud` contains `audience`.
    pub fn new(issuer: impl Into<String>, jwks: RemoteJwks, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            jwks,
            audience: audience.into(),
            accepted_types: vec!["JWT".to_owned(), "at+jwt".to_owned()],
            subject_prefix: String::new(),
            leeway: 30,
            clock: Arc::new(SystemClock),
        }
    }

    /// Sets the accepted `typ` header values, compared case-insensitively
    /// with an optional `application/` prefix. Default `JWT` and `at+jwt`.
    /// A token without `typ` is always rejected.
    pub fn accepted_types(mut self, types: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.accepted_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Puts `prefix` before the token's `sub` to form the consumer name.
    /// Choose a prefix that no API key consumer name starts with, so an IdP
    /// subject cannot pass for an API key consumer. Default: none.
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.subject_prefix = prefix.into();
        self
    }

    /// Sets the clock leeway for `exp`, `nbf` and `iat`. Default 30 s.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = i64::try_from(leeway.as_secs()).unwrap_or(i64::MAX);
        self
    }

    /// Sets the clock. Default: the system clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The issuer (`iss`) this provider's tokens carry.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Checks a token that [`parse`] read and whose `iss` is this provider's,
    /// and returns the consumer name (prefix and `sub`).
    async fn check(&self, token: ParsedJwt<'_>) -> Result<String, Rejection> {
        check_typ(&token.header, &self.accepted_types)?;

        let keys = self
            .jwks
            .keys()
            .await
            .map_err(|err| Rejection::new(Reason::KeySourceUnavailable, err.to_string()))?;
        let key = match keys.find(&token.kid) {
            Some(key) => key.clone(),
            None => {
                let refreshed = self
                    .jwks
                    .refresh_for_unknown_kid()
                    .await
                    .map_err(|err| Rejection::new(Reason::KeySourceUnavailable, err.to_string()))?;
                refreshed.find(&token.kid).cloned().ok_or_else(|| {
                    Rejection::new(
                        Reason::UnknownKey,
                        format!("the identity provider has no key with kid {:?}", token.kid),
                    )
                })?
            }
        };

        if !key.allows(token.alg) {
            return Err(Rejection::new(
                Reason::UnsupportedAlg,
                format!("alg {} is not allowed for key {:?}", token.alg, token.kid),
            ));
        }
        if !key.verify_signature(token.signing_input.as_bytes(), &token.signature) {
            return Err(Rejection::new(Reason::BadSignature, "signature does not verify"));
        }

        self.check_claims(&token.claims)?;
        let subject = match token.claims.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() && sub.len() <= MAX_SUBJECT_LEN => sub,
            Some(_) => {
                return Err(Rejection::new(
                    Reason::Malformed,
                    "sub must be a string of 1 to 256 bytes",
                ));
            }
            None => {
                return Err(Rejection::new(
                    Reason::MissingClaim,
                    "the required claim \"sub\" is missing",
                ));
            }
        };
        Ok(format!("{}{subject}", self.subject_prefix))
    }

    fn check_claims(&self, claims: &Map<String, Value>) -> Result<(), Rejection> {
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => *aud == self.audience,
            Some(Value::Array(auds)) => auds.iter().any(|aud| aud.as_str() == Some(self.audience.as_str())),
            Some(_) => return Err(Rejection::new(Reason::Malformed, "aud is not a string or an array")),
            None => {
                return Err(Rejection::new(
                    Reason::MissingClaim,
                    "the required claim \"aud\" is missing",
                ));
            }
        };
        if !audience_ok {
            return Err(Rejection::new(
                Reason::WrongAudience,
                format!("aud does not contain {:?}", self.audience),
            ));
        }

        let now = self.clock.now();
        let Some(exp) = numeric_date(claims, "exp")? else {
            return Err(Rejection::new(
                Reason::MissingClaim,
                "the required claim \"exp\" is missing",
            ));
        };
        if now > exp.saturating_add(self.leeway) {
            return Err(Rejection::new(Reason::Expired, format!("expired {} s ago", now - exp)));
        }
        for name in ["nbf", "iat"] {
            if let Some(time) = numeric_date(claims, name)?
                && time > now.saturating_add(self.leeway)
            {
                return Err(Rejection::new(
                    Reason::NotYetValid,
                    format!("{name} is {} s in the future", time - now),
                ));
            }
        }
        Ok(())
    }
}

/// Checks a bearer token against the provider named by its `iss` and
/// returns the consumer name.
pub(crate) async fn authenticate(providers: &[IdentityProvider], token: &str) -> Result<String, Rejection> {
    let parsed = parse(token)?;
    // `iss` is unverified here; it only chooses whose keys to verify with.
    let Some(provider) = providers.iter().find(|provider| provider.issuer == parsed.iss) else {
        return Err(Rejection::new(
            Reason::UnknownKey,
            "no identity provider is configured for the token's iss",
        ));
    };
    provider.check(parsed).await
}

/// A token split and decoded, but not yet verified.
struct ParsedJwt<'t> {
    signing_input: &'t str,
    header: Map<String, Value>,
    alg: Algorithm,
    kid: String,
    iss: String,
    claims: Map<String, Value>,
    signature: Vec<u8>,
}

fn parse(token: &str) -> Result<ParsedJwt<'_>, Rejection> {
    if token.len() > MAX_IDP_TOKEN_BYTES {
        return Err(Rejection::new(
            Reason::TooLarge,
            format!(
                "token is {} bytes, above the limit of {MAX_IDP_TOKEN_BYTES}",
                token.len()
            ),
        ));
    }
    let segments: Vec<&str> = token.split('.').collect();
    if segments.len() == 5 {
        return Err(Rejection::new(
            Reason::WrongType,
            "a JWE was given where a signed JWT is expected",
        ));
    }
    let [header_b64, claims_b64, signature_b64] = segments[..] else {
        return Err(Rejection::new(
            Reason::Malformed,
            format!("expected 3 dot-separated segments, found {}", segments.len()),
        ));
    };

    let decode = |segment: &str, name: &str| {
        b64_decode(segment)
            .map_err(|_| Rejection::new(Reason::Malformed, format!("{name} is not strict unpadded base64url")))
    };
    let header = parse_object(&decode(header_b64, "header")?)
        .map_err(|err| Rejection::new(Reason::Malformed, format!("header is not a valid JSON object: {err}")))?;
    let claims = parse_object(&decode(claims_b64, "claims")?)
        .map_err(|err| Rejection::new(Reason::Malformed, format!("claims are not a valid JSON object: {err}")))?;
    let signature = decode(signature_b64, "signature")?;

    for name in FORBIDDEN_HEADERS {
        if header.contains_key(name) {
            return Err(Rejection::new(
                Reason::UnsupportedHeader,
                format!("header member {name:?} is not accepted"),
            ));
        }
    }
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some(name) => Algorithm::from_name(name).ok_or_else(|| {
            let shown: String = name.chars().take(40).collect();
            Rejection::new(Reason::UnsupportedAlg, format!("alg {shown:?} is not accepted"))
        })?,
        None => return Err(Rejection::new(Reason::UnsupportedAlg, "alg is missing or not a string")),
    };
    let kid = match header.get("kid") {
        Some(Value::String(kid)) if !kid.is_empty() && kid.len() <= 256 => kid.clone(),
        _ => {
            return Err(Rejection::new(
                Reason::Malformed,
                "kid must be a string of 1 to 256 bytes",
            ));
        }
    };
    let iss = match claims.get("iss") {
        Some(Value::String(iss)) => iss.clone(),
        Some(_) => return Err(Rejection::new(Reason::Malformed, "iss is not a string")),
        None => {
            return Err(Rejection::new(
                Reason::MissingClaim,
                "the required claim \"iss\" is missing",
            ));
        }
    };

    Ok(ParsedJwt {
        signing_input: &token[..header_b64.len() + 1 + claims_b64.len()],
        header,
        alg,
        kid,
        iss,
        claims,
        signature,
    })
}

/// RFC 7515 section 4.1.9: `typ` compares case-insensitively, and the
/// `application/` prefix may be omitted.
fn check_typ(header: &Map<String, Value>, accepted: &[String]) -> Result<(), Rejection> {
    let Some(Value::String(typ)) = header.get("typ") else {
        return Err(Rejection::new(Reason::WrongType, "typ is missing or not a string"));
    };
    let bare = match typ.get(..12) {
        Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &typ[12..],
        _ => typ.as_str(),
    };
    if accepted.iter().any(|accepted| accepted.eq_ignore_ascii_case(bare)) {
        return Ok(());
    }
    let shown: String = typ.chars().take(40).collect();
    Err(Rejection::new(
        Reason::WrongType,
        format!("typ {shown:?} is not one of {accepted:?}"),
    ))
}

fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, Rejection> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(number)) => match number.as_i64() {
            Some(seconds) if seconds >= 0 => Ok(Some(seconds)),
            _ => Err(Rejection::new(
                Reason::Malformed,
                format!("{name} is not a non-negative integer NumericDate"),
            )),
        },
        Some(_) => Err(Rejection::new(Reason::Malformed, format!("{name} is not a number"))),
    }
}
