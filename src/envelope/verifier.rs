//! Verifying tokens: the nine steps of the wire format, in order.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

use super::TOKEN_TYP;
use super::binding::{Binding, payload_digest};
use super::claims::{ClaimMembers, Claims, MAX_NUMERIC_DATE, parse_claims};
use super::rejection::{Reason, Rejection};
use crate::clock::{Clock, SystemClock};
use crate::encoding::{MemberNames, Members, b64_decode};
use crate::identity::ServiceId;
use crate::jwks::TrustStore;
use crate::keys::{Algorithm, PublicKey};
use crate::policy::Policy;
use crate::replay::{MemoryReplayGuard, ReplayEntry, ReplayGuard, ReplayStatus};

/// Default clock leeway for `exp`, `nbf` and `iat`: 30 s.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// Largest leeway the builder accepts without `dangerous_leeway`: 5 minutes.
pub const MAX_SAFE_LEEWAY: Duration = Duration::from_secs(300);

/// Default maximum token lifetime (`exp - iat`): 10 minutes.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(600);

/// Default maximum token size: 8 KiB.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Default maximum payload size: 16 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 16 * 1024 * 1024;

/// Maximum length of a `kid`, in bytes.
const MAX_KID_LEN: usize = 256;

/// Header members that are never accepted: they would make the token choose
/// its own key or URL (`jku`, `jwk`, `x5u`, `x5c`), change how the payload is
/// read (`b64`, `crit`, `zip`) or mark a JWE (`enc`).
const FORBIDDEN_HEADERS: [&str; 8] = ["crit", "b64", "jku", "jwk", "x5u", "x5c", "zip", "enc"];

/// The header members that verification reads: the three it needs and the
/// forbidden ones. They get fixed slots when the header is parsed; any
/// other member is still parsed, checked and kept.
static HEADER_MEMBERS: MemberNames<HEADER_MEMBER_COUNT> = MemberNames::new(header_member_names());

const HEADER_MEMBER_COUNT: usize = 3 + FORBIDDEN_HEADERS.len();

/// Lists `typ`, `alg`, `kid` and then [`FORBIDDEN_HEADERS`], so the two
/// lists cannot drift apart.
const fn header_member_names() -> [&'static str; HEADER_MEMBER_COUNT] {
    let mut names = ["typ", "alg", "kid", "", "", "", "", "", "", "", ""];
    let mut i = 0;
    while i < FORBIDDEN_HEADERS.len() {
        names[3 + i] = FORBIDDEN_HEADERS[i];
        i += 1;
    }
    names
}

/// The binding a receiver expects a token to carry: the channel or request
/// that actually arrived, and its payload.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    binding: Binding,
    payload: Option<&'a [u8]>,
    delivery_id: Option<String>,
    reference_time: Option<i64>,
}

impl<'a> Expected<'a> {
    /// A message that arrived on `channel` with `payload`.
    pub fn message(channel: Binding, payload: &'a [u8]) -> Self {
        Self {
            binding: channel,
            payload: Some(payload),
            delivery_id: None,
            reference_time: None,
        }
    }

    /// A binding with an optional payload (an HTTP request without a body
    /// passes `None`).
    pub fn new(binding: Binding, payload: Option<&'a [u8]>) -> Self {
        Self {
            binding,
            payload,
            delivery_id: None,
            reference_time: None,
        }
    }

    /// Sets the broker's stable id of the stored message (a JetStream stream
    /// sequence, say), so a redelivery of that same message is not taken for
    /// a replay. See [`ReplayEntry::delivery_id`].
    pub fn with_delivery_id(mut self, delivery_id: impl Into<String>) -> Self {
        self.delivery_id = Some(delivery_id.into());
        self
    }

    /// Judges `exp`, `nbf` and `iat` against `unix_seconds` instead of the
    /// verifier's clock: for durable consumers, the time the broker stored
    /// the message (JetStream metadata, say), so a message that waited in a
    /// stream longer than its token lifetime still verifies if it was valid
    /// on arrival. Take the time only from the broker, never from the message.
    pub fn with_reference_time(mut self, unix_seconds: i64) -> Self {
        self.reference_time = Some(unix_seconds);
        self
    }

    /// The binding.
    pub fn binding(&self) -> &Binding {
        &self.binding
    }

    /// The payload that arrived, if any.
    pub fn payload(&self) -> Option<&'a [u8]> {
        self.payload
    }
}

/// A token that passed every check.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Verified {
    /// The verified claims.
    pub claims: Claims,
    /// The key that signed the token.
    pub kid: String,
    /// The algorithm from the header.
    pub alg: Algorithm,
    /// The replay guard's record of this token, passed to `Verifier::forget`
    /// when the message is not processed and will be redelivered.
    pub replay_entry: ReplayEntry,
}

/// Errors in a verifier's configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifierConfigError {
    /// The trust store has no issuers, so nothing could ever verify.
    #[error("the trust store is empty: trust at least one issuer with TrustStore::trust")]
    NoIssuers,

    /// The leeway is above five minutes.
    #[error("a leeway of {0} s is above the 300 s limit; use dangerous_leeway to allow it")]
    LeewayTooLong(u64),

    /// A limit is zero.
    #[error("{0} must be greater than zero")]
    ZeroLimit(&'static str),
}

/// Options of a [`Verifier`].
#[derive(Debug)]
pub struct VerifierBuilder {
    audience: ServiceId,
    trust: TrustStore,
    policy: Policy,
    replay: Option<Arc<dyn ReplayGuard>>,
    leeway: Duration,
    dangerous_leeway: bool,
    max_lifetime: Duration,
    max_token_bytes: usize,
    max_payload_bytes: usize,
    issuers_without_digest: BTreeSet<ServiceId>,
    clock: Arc<dyn Clock>,
}

impl VerifierBuilder {
    /// Sets the policy. Default: every trusted issuer is allowed everywhere.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets the replay guard. Default: a [`MemoryReplayGuard`] of one million
    /// entries, which does not span processes.
    pub fn replay_guard(mut self, guard: Arc<dyn ReplayGuard>) -> Self {
        self.replay = Some(guard);
        self
    }

    /// Sets the clock leeway for `exp`, `nbf` and `iat`. Default 30 s, at most 300 s.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Sets a leeway above 300 s. Expired tokens then stay valid that much
    /// longer, and so does a stolen one.
    pub fn dangerous_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self.dangerous_leeway = true;
        self
    }

    /// Sets the longest accepted `exp - iat`. Default 600 s. Raise it for
    /// durable queues whose publishers sign with longer lifetimes.
    pub fn max_lifetime(mut self, max_lifetime: Duration) -> Self {
        self.max_lifetime = max_lifetime;
        self
    }

    /// Sets the maximum token size in bytes. Default 8 KiB.
    pub fn max_token_bytes(mut self, bytes: usize) -> Self {
        self.max_token_bytes = bytes;
        self
    }

    /// Sets the maximum payload size in bytes. Default 16 MiB.
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }

    /// Accepts tokens from `issuers` that have no `dig` claim although a
    /// payload arrived. Default: no issuer; every token must bind the payload.
    ///
    /// This is for an edge gateway's forward-auth endpoint: it responds to a
    /// subrequest that carries no body, so the tokens it mints cannot bind
    /// one. The body of such a request is then protected only by the token's
    /// short lifetime, its `htm`/`htu` binding and the replay guard. A token
    /// from these issuers that does have `dig` is still checked against the
    /// payload, and tokens from every other issuer still need `dig`.
    pub fn issuers_without_digest(mut self, issuers: impl IntoIterator<Item = ServiceId>) -> Self {
        self.issuers_without_digest.extend(issuers);
        self
    }

    /// Sets the clock. Default: the system clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Checks the options and builds the verifier.
    pub fn build(self) -> Result<Verifier, VerifierConfigError> {
        if self.trust.is_empty() {
            return Err(VerifierConfigError::NoIssuers);
        }
        if self.leeway > MAX_SAFE_LEEWAY && !self.dangerous_leeway {
            return Err(VerifierConfigError::LeewayTooLong(self.leeway.as_secs()));
        }
        if self.dangerous_leeway {
            tracing::warn!(
                leeway_s = self.leeway.as_secs(),
                "verifier built with a dangerous leeway"
            );
        }
        if self.max_token_bytes == 0 {
            return Err(VerifierConfigError::ZeroLimit("max_token_bytes"));
        }
        if self.max_lifetime.is_zero() {
            return Err(VerifierConfigError::ZeroLimit("max_lifetime"));
        }

        let replay = self
            .replay
            .unwrap_or_else(|| Arc::new(MemoryReplayGuard::default().with_clock(Arc::clone(&self.clock))));
        tracing::info!(aud = %self.audience, issuers = ?self.trust.issuers().map(ServiceId::as_str).collect::<Vec<_>>(), "verifier ready");
        Ok(Verifier {
            inner: Arc::new(VerifierInner {
                audience: self.audience,
                trust: self.trust,
                policy: self.policy,
                replay,
                leeway: i64::try_from(self.leeway.as_secs()).unwrap_or(MAX_NUMERIC_DATE),
                max_lifetime: i64::try_from(self.max_lifetime.as_secs()).unwrap_or(MAX_NUMERIC_DATE),
                max_token_bytes: self.max_token_bytes,
                max_payload_bytes: self.max_payload_bytes,
                issuers_without_digest: self.issuers_without_digest,
                clock: self.clock,
                warn_limiter: WarnLimiter::default(),
            }),
        })
    }
}

/// Verifies tokens sent to one service. Cloning is cheap; clones share caches.
///
/// ```no_run
/// use trustwire::{Binding, Expected, ServiceId, Verifier, jwks::{KeySource, TrustStore}};
///
/// # async fn run(token: &str, payload: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
/// let trust = TrustStore::new().trust(
///     ServiceId::new("orders")?,
///     KeySource::remote("https://orders.internal/.well-known/jwks.json")?,
/// );
/// let verifier = Verifier::builder(ServiceId::new("payments")?, trust).build()?;
/// let expected = Expected::message(Binding::channel("nats:orders.created")?, payload);
/// match verifier.verify(token, &expected).await {
///     Ok(verified) => println!("from {}", verified.claims.iss),
///     Err(rejection) => println!("rejected: {}", rejection.code()),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<VerifierInner>,
}

struct VerifierInner {
    audience: ServiceId,
    trust: TrustStore,
    policy: Policy,
    replay: Arc<dyn ReplayGuard>,
    leeway: i64,
    max_lifetime: i64,
    max_token_bytes: usize,
    max_payload_bytes: usize,
    issuers_without_digest: BTreeSet<ServiceId>,
    clock: Arc<dyn Clock>,
    warn_limiter: WarnLimiter,
}

/// The parts of a token read before its signature is checked.
pub(super) struct Parsed<'t> {
    pub(super) signing_input: &'t str,
    alg: Algorithm,
    kid: String,
    claims: ClaimMembers,
    pub(super) signature: Vec<u8>,
}

impl Parsed<'_> {
    /// Adds the token's `kid` and its claimed, still unverified, `iss` and
    /// `jti` to a rejection, for the logs.
    fn tag(&self, rejection: Rejection) -> Rejection {
        let claimed = |name| self.claims.get(name).and_then(Value::as_str);
        rejection.with_ids(Some(&self.kid), claimed("iss"), claimed("jti"))
    }
}

/// A token that passed steps 1 to 4 and waits for its signature check.
pub(super) struct Admitted<'t> {
    pub(super) parsed: Parsed<'t>,
    /// The issuer that owns `key`.
    owner: ServiceId,
    /// The key named by `kid`, already checked to allow the header's `alg`.
    pub(super) key: PublicKey,
}

impl Admitted<'_> {
    /// Step 5 for this token alone (the `verify_strict` rules for an Ed25519 key).
    pub(super) fn signature_verifies(&self) -> bool {
        self.key
            .verify_signature(self.parsed.signing_input.as_bytes(), &self.parsed.signature)
    }

    /// The rejection of a token whose signature does not verify.
    pub(super) fn bad_signature(&self) -> Rejection {
        self.parsed
            .tag(Rejection::new(Reason::BadSignature, "signature does not verify"))
    }
}

impl Verifier {
    /// Starts configuring a verifier for tokens addressed to `audience`,
    /// signed by the issuers in `trust`.
    pub fn builder(audience: ServiceId, trust: TrustStore) -> VerifierBuilder {
        VerifierBuilder {
            audience,
            trust,
            policy: Policy::allow_all_trusted(),
            replay: None,
            leeway: DEFAULT_LEEWAY,
            dangerous_leeway: false,
            max_lifetime: DEFAULT_MAX_LIFETIME,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            issuers_without_digest: BTreeSet::new(),
            clock: Arc::new(SystemClock),
        }
    }

    /// The service this verifier accepts tokens for.
    pub fn audience(&self) -> &ServiceId {
        &self.inner.audience
    }

    /// The trust store.
    pub fn trust_store(&self) -> &TrustStore {
        &self.inner.trust
    }

    /// Verifies `token` against what arrived, logs the outcome and counts it.
    pub async fn verify(&self, token: &str, expected: &Expected<'_>) -> Result<Verified, Rejection> {
        let result = self.verify_steps(token, expected).await;
        self.record_outcome(&result, expected);
        result
    }

    /// Counts the outcome of one verification and logs it.
    pub(super) fn record_outcome(&self, result: &Result<Verified, Rejection>, expected: &Expected<'_>) {
        match result {
            Ok(verified) => {
                metrics::counter!("trustwire_verified_total", "iss" => verified.claims.iss.clone()).increment(1);
                tracing::debug!(
                    iss = %verified.claims.iss,
                    kid = %verified.kid,
                    jti = %verified.claims.jti,
                    binding = %expected.binding,
                    "token verified"
                );
            }
            Err(rejection) => {
                // The label is the reason only: iss of a rejected token is
                // attacker-chosen and would make the metric unbounded.
                metrics::counter!("trustwire_rejected_total", "reason" => rejection.code()).increment(1);
                self.log_rejection(rejection, expected);
            }
        }
    }

    /// Forgets a verified token's `jti`, so a redelivery of the same message
    /// is accepted; call it when the message was not processed.
    pub async fn forget(&self, verified: &Verified) {
        if let Err(err) = self.inner.replay.forget(&verified.replay_entry).await {
            tracing::warn!(iss = %verified.claims.iss, jti = %verified.claims.jti, error = %err, "replay guard could not forget a token");
        }
    }

    fn log_rejection(&self, rejection: &Rejection, expected: &Expected<'_>) {
        let fields = (
            rejection.code(),
            rejection.kid().unwrap_or(""),
            rejection.iss().unwrap_or(""),
            rejection.jti().unwrap_or(""),
        );
        if self.inner.warn_limiter.allow(self.inner.clock.now()) {
            tracing::warn!(reason = fields.0, kid = fields.1, iss = fields.2, jti = fields.3, binding = %expected.binding, detail = rejection.detail(), "token rejected");
        } else {
            tracing::debug!(reason = fields.0, kid = fields.1, iss = fields.2, jti = fields.3, binding = %expected.binding, detail = rejection.detail(), "token rejected");
        }
    }

    async fn verify_steps(&self, token: &str, expected: &Expected<'_>) -> Result<Verified, Rejection> {
        let admitted = self.admit(token, expected).await?;

        // Step 5: signature.
        if !admitted.signature_verifies() {
            return Err(admitted.bad_signature());
        }

        self.accept(admitted, expected).await
    }

    /// Steps 1 to 4: size limits, strict decoding, the header and the key.
    pub(super) async fn admit<'t>(&self, token: &'t str, expected: &Expected<'_>) -> Result<Admitted<'t>, Rejection> {
        let inner = &self.inner;

        // Step 1: size limits, before any parsing.
        if token.len() > inner.max_token_bytes {
            return Err(Rejection::new(
                Reason::TooLarge,
                format!(
                    "token is {} bytes, above the limit of {}",
                    token.len(),
                    inner.max_token_bytes
                ),
            ));
        }
        if let Some(payload) = expected.payload
            && payload.len() > inner.max_payload_bytes
        {
            return Err(Rejection::new(
                Reason::TooLarge,
                format!(
                    "payload is {} bytes, above the limit of {}",
                    payload.len(),
                    inner.max_payload_bytes
                ),
            ));
        }

        // Steps 2 and 3: strict encoding, then the header.
        let parsed = parse_token(token)?;

        // Step 4: key lookup by kid; the algorithm must be allowed for the key.
        let claimed_iss = parsed.claims.get("iss").and_then(Value::as_str);
        let (owner, key) = match inner.trust.find_key(&parsed.kid, claimed_iss).await {
            Ok(found) => found,
            Err(rejection) => return Err(parsed.tag(rejection)),
        };
        if !key.allows(parsed.alg) {
            return Err(parsed.tag(Rejection::new(
                Reason::UnsupportedAlg,
                format!("alg {} is not allowed for key {:?}", parsed.alg, parsed.kid),
            )));
        }
        Ok(Admitted { parsed, owner, key })
    }

    /// Steps 6 to 9 for a token whose signature verified: claims, binding,
    /// policy and replay.
    pub(super) async fn accept(&self, admitted: Admitted<'_>, expected: &Expected<'_>) -> Result<Verified, Rejection> {
        let inner = &self.inner;
        let Admitted { mut parsed, owner, .. } = admitted;

        // Step 6: claims.
        let claims = match Claims::from_members(&mut parsed.claims) {
            Ok(claims) => claims,
            Err(rejection) => return Err(parsed.tag(rejection)),
        };
        let ids = |rejection: Rejection| rejection.with_ids(Some(&parsed.kid), Some(&claims.iss), Some(&claims.jti));
        // Clamped so a broken clock or broker time cannot overflow the checks.
        let now = expected
            .reference_time
            .unwrap_or_else(|| inner.clock.now())
            .clamp(0, MAX_NUMERIC_DATE);
        self.check_claims(&claims, &owner, now).map_err(ids)?;

        // Step 7: binding to what arrived.
        // `iss` was checked against the key's owner in step 6, so this set
        // is matched against a verified issuer.
        let digest_optional = inner.issuers_without_digest.contains(owner.as_str());
        check_binding(&claims, expected, digest_optional).map_err(ids)?;

        // Step 8: policy.
        let token_binding = token_binding(&claims);
        if !inner.policy.allows(&claims.iss, token_binding.as_ref()) {
            return Err(ids(Rejection::new(
                Reason::NotAllowed,
                format!("policy does not allow {} on {}", claims.iss, expected.binding),
            )));
        }

        // Step 9: replay.
        let replay_entry = ReplayEntry {
            iss: claims.iss.clone(),
            jti: claims.jti.clone(),
            expires_at: claims.exp.saturating_add(inner.leeway),
            delivery_id: expected.delivery_id.clone(),
        };
        match inner.replay.check_and_record(&replay_entry).await {
            Ok(ReplayStatus::Fresh) => {}
            Ok(_) => return Err(ids(Rejection::new(Reason::Replayed, "jti was already accepted"))),
            Err(err) => return Err(ids(Rejection::new(Reason::ReplayGuardUnavailable, err.to_string()))),
        }

        Ok(Verified {
            claims,
            kid: parsed.kid,
            alg: parsed.alg,
            replay_entry,
        })
    }

    fn check_claims(&self, claims: &Claims, owner: &ServiceId, now: i64) -> Result<(), Rejection> {
        let inner = &self.inner;

        if claims.iss != owner.as_str() {
            return Err(Rejection::new(
                Reason::IssuerMismatch,
                format!("iss {:?} is not the owner {} of the signing key", claims.iss, owner),
            ));
        }
        if !claims.aud.iter().any(|aud| aud == inner.audience.as_str()) {
            return Err(Rejection::new(
                Reason::WrongAudience,
                format!("aud {:?} does not contain {}", claims.aud, inner.audience),
            ));
        }

        // All times are within 0..=MAX_NUMERIC_DATE, so these sums cannot overflow.
        if claims.exp <= claims.iat {
            return Err(Rejection::new(Reason::Malformed, "exp is not after iat"));
        }
        if now > claims.exp + inner.leeway {
            return Err(Rejection::new(
                Reason::Expired,
                format!("expired {} s ago", now - claims.exp),
            ));
        }
        if claims.iat > now + inner.leeway {
            return Err(Rejection::new(
                Reason::NotYetValid,
                format!("iat is {} s in the future", claims.iat - now),
            ));
        }
        if let Some(nbf) = claims.nbf
            && nbf > now + inner.leeway
        {
            return Err(Rejection::new(
                Reason::NotYetValid,
                format!("nbf is {} s in the future", nbf - now),
            ));
        }
        if claims.exp - claims.iat > inner.max_lifetime {
            return Err(Rejection::new(
                Reason::LifetimeTooLong,
                format!(
                    "lifetime of {} s is above the maximum of {} s",
                    claims.exp - claims.iat,
                    inner.max_lifetime
                ),
            ));
        }
        Ok(())
    }
}

/// Steps 2 and 3: split, decode strictly, parse JSON, check the header.
fn parse_token(token: &str) -> Result<Parsed<'_>, Rejection> {
    match token.split('.').count() {
        3 => {}
        // Two tokens joined by a space or a comma also have five parts, but
        // a compact JWE has only base64url and '.'.
        5 if token.bytes().any(|byte| !is_compact_byte(byte)) => {
            return Err(Rejection::new(
                Reason::Malformed,
                "token has a character outside base64url and '.'",
            ));
        }
        5 => {
            return Err(Rejection::new(
                Reason::WrongType,
                "a JWE was given where a signed token (JWS) is expected",
            ));
        }
        count => {
            return Err(Rejection::new(
                Reason::Malformed,
                format!("expected 3 dot-separated segments, found {count}"),
            ));
        }
    }
    let mut segments = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64)) = (segments.next(), segments.next(), segments.next())
    else {
        return Err(Rejection::new(Reason::Malformed, "expected 3 dot-separated segments"));
    };

    let decode = |segment: &str, name: &str| {
        b64_decode(segment)
            .map_err(|_| Rejection::new(Reason::Malformed, format!("{name} is not strict unpadded base64url")))
    };
    let header_bytes = decode(header_b64, "header")?;
    let header = Members::parse(&header_bytes, &HEADER_MEMBERS)
        .map_err(|err| Rejection::new(Reason::Malformed, format!("header is not a valid JSON object: {err}")))?;

    // The header is checked before the claims are decoded: with `b64: false`
    // (RFC 7797) the second segment is not base64url at all, and the reason
    // to report is the header member, not the encoding it changes.
    let (alg, kid) = check_header(&header)?;

    let claims_bytes = decode(claims_b64, "claims")?;
    let signature = decode(signature_b64, "signature")?;
    let claims = parse_claims(&claims_bytes)
        .map_err(|err| Rejection::new(Reason::Malformed, format!("claims are not a valid JSON object: {err}")))?;

    Ok(Parsed {
        signing_input: &token[..header_b64.len() + 1 + claims_b64.len()],
        alg,
        kid,
        claims,
        signature,
    })
}

fn check_header(header: &Members<HEADER_MEMBER_COUNT>) -> Result<(Algorithm, String), Rejection> {
    for name in FORBIDDEN_HEADERS {
        if header.contains(name) {
            if name == "enc" {
                return Err(Rejection::new(
                    Reason::WrongType,
                    "header has \"enc\": a JWE header where a JWS is expected",
                ));
            }
            return Err(Rejection::new(
                Reason::UnsupportedHeader,
                format!("header member {name:?} is not accepted"),
            ));
        }
    }

    match header.get("typ") {
        Some(Value::String(typ)) if typ_matches(typ) => {}
        Some(Value::String(typ)) => {
            let shown: String = typ.chars().take(40).collect();
            return Err(Rejection::new(
                Reason::WrongType,
                format!("typ {shown:?} is not {TOKEN_TYP:?}"),
            ));
        }
        Some(_) => return Err(Rejection::new(Reason::WrongType, "typ is not a string")),
        None => {
            return Err(Rejection::new(
                Reason::WrongType,
                format!("typ is missing; expected {TOKEN_TYP:?}"),
            ));
        }
    }

    let alg = match header.get("alg") {
        None => return Err(Rejection::new(Reason::UnsupportedAlg, "alg is missing")),
        Some(Value::String(name)) => match Algorithm::from_name(name) {
            Some(alg) => alg,
            None => {
                let shown: String = name.chars().take(40).collect();
                return Err(Rejection::new(
                    Reason::UnsupportedAlg,
                    format!("alg {shown:?} is not accepted"),
                ));
            }
        },
        Some(_) => return Err(Rejection::new(Reason::UnsupportedAlg, "alg is not a string")),
    };

    let kid = match header.get("kid") {
        Some(Value::String(kid)) if !kid.is_empty() && kid.len() <= MAX_KID_LEN => kid.clone(),
        Some(Value::String(_)) => return Err(Rejection::new(Reason::Malformed, "kid must be 1 to 256 bytes")),
        Some(_) => return Err(Rejection::new(Reason::Malformed, "kid is not a string")),
        None => return Err(Rejection::new(Reason::Malformed, "kid is missing")),
    };
    Ok((alg, kid))
}

/// Whether `byte` can appear in a compact serialization: base64url or '.'.
fn is_compact_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.')
}

/// RFC 7515 section 4.1.9: `typ` compares case-insensitively, and the
/// `application/` prefix may be omitted.
fn typ_matches(typ: &str) -> bool {
    let bare = match typ.get(..12) {
        Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &typ[12..],
        _ => typ,
    };
    bare.eq_ignore_ascii_case(TOKEN_TYP)
}

fn token_binding(claims: &Claims) -> Option<Binding> {
    if let Some(channel) = &claims.chn {
        return Some(Binding::Channel(channel.clone()));
    }
    match (&claims.htm, &claims.htu) {
        (Some(method), Some(target)) => Some(Binding::Http {
            method: method.clone(),
            target: target.clone(),
        }),
        _ => None,
    }
}

/// Step 7: the token's `chn` or `htm`/`htu` and `dig` must equal what arrived.
/// `digest_optional` accepts a missing `dig` when a payload arrived.
fn check_binding(claims: &Claims, expected: &Expected<'_>, digest_optional: bool) -> Result<(), Rejection> {
    match &expected.binding {
        Binding::Channel(channel) => {
            if claims.htm.is_some() || claims.htu.is_some() {
                return Err(Rejection::new(
                    Reason::BindingMismatch,
                    "token is bound to an HTTP request, not a channel",
                ));
            }
            match &claims.chn {
                Some(chn) if chn == channel => {}
                Some(chn) => {
                    return Err(Rejection::new(
                        Reason::BindingMismatch,
                        format!("token is for channel {chn:?}, message arrived on {channel:?}"),
                    ));
                }
                None => return Err(Rejection::new(Reason::BindingMismatch, "token has no chn claim")),
            }
        }
        Binding::Http { method, target } => {
            if claims.chn.is_some() {
                return Err(Rejection::new(
                    Reason::BindingMismatch,
                    "token is bound to a channel, not an HTTP request",
                ));
            }
            if claims.htm.as_deref() != Some(method.as_str()) {
                return Err(Rejection::new(
                    Reason::BindingMismatch,
                    format!(
                        "token is for method {:?}, request is {method}",
                        claims.htm.as_deref().unwrap_or("")
                    ),
                ));
            }
            if claims.htu.as_deref() != Some(target.as_str()) {
                return Err(Rejection::new(
                    Reason::BindingMismatch,
                    format!(
                        "token is for {:?}, request is {target:?}",
                        claims.htu.as_deref().unwrap_or("")
                    ),
                ));
            }
        }
    }

    match (expected.payload, &claims.dig) {
        (Some(payload), Some(dig)) => {
            if payload_digest(payload) != *dig {
                return Err(Rejection::new(Reason::DigestMismatch, "dig does not match the payload"));
            }
        }
        (Some(_), None) if digest_optional => {
            tracing::debug!(iss = %claims.iss, jti = %claims.jti, "accepted a token without dig from an issuer allowed to omit it");
        }
        (Some(_), None) => {
            return Err(Rejection::new(
                Reason::DigestMismatch,
                "token has no dig claim for the payload",
            ));
        }
        (None, Some(_)) => {
            return Err(Rejection::new(
                Reason::DigestMismatch,
                "token binds a payload, but none arrived",
            ));
        }
        (None, None) => {}
    }
    Ok(())
}

/// Allows at most 10 rejection warnings per second; the rest go to debug.
#[derive(Default)]
struct WarnLimiter {
    second: AtomicU64,
    count: AtomicU64,
}

impl WarnLimiter {
    const PER_SECOND: u64 = 10;

    fn allow(&self, now: i64) -> bool {
        let now = u64::try_from(now).unwrap_or(0);
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < Self::PER_SECOND
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("audience", &self.inner.audience)
            .field("trust", &self.inner.trust)
            .field("leeway_s", &self.inner.leeway)
            .field("max_lifetime_s", &self.inner.max_lifetime)
            .finish_non_exhaustive()
    }
}
