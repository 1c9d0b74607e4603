//! `trustwire bench`: measures signing, verification, sealing and opening on
//! this machine, one core at a time, beside the raw Ed25519 operations they
//! are built on.
//!
//! The operations of one payload size run interleaved, a short chunk of each
//! in turn, so a change in machine load affects all of them alike and the
//! ratios to the raw operations stay meaningful on a busy machine.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ed25519_dalek::Signer as _;
use serde::Serialize;
use sha2::{Digest, Sha256};
use trustwire::jwks::{JwkSet, KeySource, TrustStore};
use trustwire::keys::EncryptionKey;
use trustwire::seal::{Opener, Recipient, Sealer};
use trustwire::{Binding, Expected, ServiceId, Signer, SigningKey, Verifier};

use crate::error::CliError;
use crate::output::print_stdout;

/// Payload sizes measured when `--sizes` is not given, in bytes.
const DEFAULT_SIZES: [u64; 4] = [64, 1024, 16 * 1024, 256 * 1024];

/// Largest payload size `--sizes` accepts: 16 MiB, the verifier's default limit.
const MAX_SIZE: usize = 16 * 1024 * 1024;

/// Messages in each `verify_batch` call.
const BATCH: usize = 64;

/// Distinct tokens that the raw verifications cycle through. Verifying one
/// signature over and over lets the branch predictor learn the
/// variable-time scalar multiplication, which makes the floor a few
/// percent faster than verifying the distinct tokens trustwire receives.
const RAW_SAMPLES: usize = 256;

/// Time one chunk of an operation should take, so operations alternate
/// many times within each measurement.
const CHUNK_TIME: Duration = Duration::from_millis(5);

const ISSUER: &str = "bench-sender";
const AUDIENCE: &str = "bench-receiver";
const CHANNEL: &str = "nats:bench.messages";

/// Arguments of `trustwire bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Time spent measuring each operation at each payload size, in seconds
    /// (0.1 to 60). The operations of one size run interleaved, so one size
    /// takes about this times the number of operations
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0, value_parser = parse_seconds)]
    seconds: f64,

    /// Payload sizes to measure, in bytes, separated by commas (1 to 16777216)
    #[arg(
        long,
        value_name = "BYTES,...",
        value_delimiter = ',',
        default_values_t = DEFAULT_SIZES,
        value_parser = clap::value_parser!(u64).range(1..=MAX_SIZE as u64),
    )]
    sizes: Vec<u64>,

    /// Print the results as JSON instead of a table
    #[arg(long)]
    json: bool,
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(0.1..=60.0).contains(&seconds) {
        return Err(format!("{seconds} s is outside 0.1 to 60 s"));
    }
    Ok(seconds)
}

/// An operation that `trustwire bench` measures. Each one runs on one
/// thread, so its rate is the rate of one core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Operation {
    /// Signing a token bound to a channel and the payload's SHA-256.
    Sign,
    /// The verifier's nine steps, with the keys loaded and the in-memory
    /// replay guard on.
    Verify,
    /// `Verifier::verify_batch` over 64 messages, per message.
    VerifyBatch,
    /// `Sealer::seal` to one X25519 recipient: the JWE and the signed token
    /// over it.
    Seal,
    /// `Opener::open` of such a message: the verifier's nine steps, then
    /// the decryption.
    Open,
    /// ed25519-dalek signing a token's signing input, plus a SHA-256 of the
    /// payload: a floor under `Sign`.
    RawSign,
    /// aws-lc-rs doing the same: the other floor under `Sign`.
    #[cfg(feature = "aws-lc-rs")]
    RawAwsLcSign,
    /// ed25519-dalek `verify_strict` of a token's signing input, plus a
    /// SHA-256 of the payload: a floor under `Verify`.
    RawVerifyStrict,
    /// ed25519-dalek plain `verify` of the same: with two cheap checks, which
    /// trustwire adds, it accepts what `verify_strict` accepts, so it is a
    /// floor under `Verify` too.
    RawVerify,
    /// aws-lc-rs verifying the same, with the key parsed once: the last
    /// floor under `Verify`.
    #[cfg(feature = "aws-lc-rs")]
    RawAwsLcVerify,
}

const OPERATIONS: &[Operation] = &[
    Operation::Sign,
    Operation::Verify,
    Operation::VerifyBatch,
    Operation::Seal,
    Operation::Open,
    Operation::RawSign,
    #[cfg(feature = "aws-lc-rs")]
    Operation::RawAwsLcSign,
    Operation::RawVerifyStrict,
    Operation::RawVerify,
    #[cfg(feature = "aws-lc-rs")]
    Operation::RawAwsLcVerify,
];

impl Operation {
    fn label(self) -> &'static str {
        match self {
            Self::Sign => "sign",
            Self::Verify => "verify",
            Self::VerifyBatch => "verify, batches of 64",
            Self::Seal => "seal (X25519)",
            Self::Open => "open (X25519)",
            Self::RawSign => "ed25519-dalek sign (raw)",
            #[cfg(feature = "aws-lc-rs")]
            Self::RawAwsLcSign => "aws-lc-rs sign (raw)",
            Self::RawVerifyStrict => "ed25519-dalek verify_strict (raw)",
            Self::RawVerify => "ed25519-dalek verify (raw)",
            #[cfg(feature = "aws-lc-rs")]
            Self::RawAwsLcVerify => "aws-lc-rs verify (raw)",
        }
    }

    /// Returns whether `floor` is one of the raw operations under this one.
    /// Sealing and opening have no raw floor here.
    fn has_floor(self, floor: Self) -> bool {
        match self {
            Self::Sign => floor.is_raw_sign(),
            Self::Verify | Self::VerifyBatch => floor.is_raw_verify(),
            _ => false,
        }
    }

    fn is_raw_sign(self) -> bool {
        match self {
            Self::RawSign => true,
            #[cfg(feature = "aws-lc-rs")]
            Self::RawAwsLcSign => true,
            _ => false,
        }
    }

    fn is_raw_verify(self) -> bool {
        match self {
            Self::RawVerifyStrict | Self::RawVerify => true,
            #[cfg(feature = "aws-lc-rs")]
            Self::RawAwsLcVerify => true,
            _ => false,
        }
    }
}

/// The rate of one operation at one payload size.
#[derive(Debug, Serialize)]
struct Measurement {
    operation: Operation,
    payload_bytes: usize,
    operations: u64,
    seconds: f64,
    ops_per_second: f64,
    micros_per_op: f64,
    /// This rate divided by the fastest raw operation under it, measured at
    /// the same payload size; `None` for the raw operations.
    ratio_to_floor: Option<f64>,
}

/// The Ed25519 backends this binary and this CPU can use.
#[derive(Debug, Serialize)]
struct Backends {
    /// Whether the CPU has AVX-512 IFMA and AVX-512 VL.
    cpu_has_avx512_ifma: bool,
    /// Whether this binary was built with curve25519-dalek's AVX-512 backend.
    built_with_avx512_backend: bool,
    /// The backend that verifies single signatures in this run.
    verify_backend: &'static str,
    /// The backend that verifies batches of signatures in this run.
    batch_verify_backend: &'static str,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    trustwire_version: &'static str,
    seconds_per_measurement: f64,
    backends: &'a Backends,
    advice: Option<String>,
    results: &'a [Measurement],
}

/// Runs `trustwire bench`.
pub(crate) fn run(args: BenchArgs) -> Result<ExitCode, CliError> {
    let sizes: Vec<usize> = args.sizes.iter().map(|&size| size as usize).collect();
    let budget = Duration::from_secs_f64(args.seconds);
    let fixture = Fixture::new()?;

    let mut progress = Progress::new(sizes.len());
    let mut results = Vec::with_capacity(sizes.len() * OPERATIONS.len());
    for &size in &sizes {
        progress.start(size);
        results.extend(fixture.measure(&payload(size), budget, &mut progress)?);
    }
    progress.finish();

    let backends = backends();
    let advice = advice(&backends);
    let text = if args.json {
        let report = Report {
            trustwire_version: env!("CARGO_PKG_VERSION"),
            seconds_per_measurement: args.seconds,
            backends: &backends,
            advice,
            results: &results,
        };
        let mut json = serde_json::to_string_pretty(&report)
            .map_err(|err| CliError::failed(format!("cannot encode the results as JSON: {err}")))?;
        json.push('\n');
        json
    } else {
        table(&results, &sizes, &backends, advice.as_deref())
    };
    print_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// A signer and the key material every measurement uses.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    signer: Signer,
    sealer: Sealer,
    recipients: Vec<Recipient>,
    /// The receiver's X25519 key, which the opener of each size gets a copy of.
    receiver_key: EncryptionKey,
    raw_key: ed25519_dalek::SigningKey,
    keys: JwkSet,
    channel: Binding,
    audience: ServiceId,
}

impl Fixture {
    fn new() -> Result<Self, CliError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| CliError::failed(format!("cannot start the async runtime: {err}")))?;

        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|err| CliError::failed(format!("random number generator failed: {err}")))?;
        let key = SigningKey::from_seed(&seed).map_err(crate::error::key_error)?;
        let keys = JwkSet::from_keys(vec![key.public_key().clone()]);
        let sealing_key = SigningKey::from_seed(&seed).map_err(crate::error::key_error)?;

        let receiver_key = EncryptionKey::generate().map_err(crate::error::key_error)?;
        let receiver_keys = JwkSet::default().with_encryption_keys(vec![receiver_key.public_key().clone()]);
        let recipient = Recipient::from_jwks(service(AUDIENCE)?, &receiver_keys)
            .map_err(|err| CliError::failed(format!("cannot make the benchmark recipient: {err}")))?;

        Ok(Self {
            runtime,
            signer: Signer::new(service(ISSUER)?, key),
            sealer: Sealer::new(Signer::new(service(ISSUER)?, sealing_key)),
            recipients: vec![recipient],
            receiver_key,
            raw_key: ed25519_dalek::SigningKey::from_bytes(&seed),
            keys,
            channel: Binding::channel(CHANNEL).map_err(|err| CliError::failed(err.to_string()))?,
            audience: service(AUDIENCE)?,
        })
    }

    /// Builds a verifier with the sender's keys loaded and an empty replay
    /// guard.
    fn verifier(&self) -> Result<Verifier, CliError> {
        let trust = TrustStore::new().trust(service(ISSUER)?, KeySource::inline(self.keys.clone()));
        Verifier::builder(self.audience.clone(), trust)
            .build()
            .map_err(|err| CliError::failed(err.to_string()))
    }

    fn sign(&self, payload: &[u8]) -> Result<String, CliError> {
        self.signer
            .token(self.audience.clone())
            .binding(self.channel.clone())
            .payload(payload)
            .sign()
            .map_err(|err| CliError::failed(format!("signing failed: {err}")))
    }

    fn sign_many(&self, payload: &[u8], count: usize) -> Result<Vec<String>, CliError> {
        (0..count).map(|_| self.sign(payload)).collect()
    }

    fn seal(&self, payload: &[u8]) -> Result<trustwire::seal::Sealed, CliError> {
        self.sealer
            .seal(&self.recipients, self.channel.clone(), payload)
            .map_err(|err| CliError::failed(format!("sealing failed: {err}")))
    }

    /// Builds an opener for the receiver's key, with its own verifier.
    fn opener(&self) -> Result<Opener, CliError> {
        let key =
            EncryptionKey::from_private_jwk(&self.receiver_key.to_private_jwk()).map_err(crate::error::key_error)?;
        Opener::new(self.verifier()?, vec![key]).map_err(|err| CliError::failed(err.to_string()))
    }

    /// Measures every operation at one payload size, interleaved: each round
    /// runs one chunk of each operation, until each has run for `budget`.
    fn measure(&self, payload: &[u8], budget: Duration, progress: &mut Progress) -> Result<Vec<Measurement>, CliError> {
        let sample = self.sign(payload)?;
        let (signing_input, _) = raw_parts(&sample)?;
        let raw_samples = self
            .sign_many(payload, RAW_SAMPLES)?
            .iter()
            .map(|token| raw_parts(token))
            .collect::<Result<Vec<_>, _>>()?;
        let context = SizeContext {
            verifier: self.verifier()?,
            expected: Expected::message(self.channel.clone(), payload),
            payload,
            signing_input,
            raw_samples,
            opener: self.opener()?,
            #[cfg(feature = "aws-lc-rs")]
            aws_lc_key: self.aws_lc_key()?,
            #[cfg(feature = "aws-lc-rs")]
            aws_lc_public: aws_lc_rs::signature::ParsedPublicKey::new(
                &aws_lc_rs::signature::ED25519,
                self.raw_key.verifying_key().as_bytes(),
            )
            .map_err(|err| CliError::failed(format!("aws-lc-rs rejected the benchmark key: {err}")))?,
        };

        // One chunk each warms the caches and sizes the chunks.
        let mut chunk_sizes = Vec::with_capacity(OPERATIONS.len());
        for &operation in OPERATIONS {
            let elapsed = self.run_chunk(operation, BATCH, &context)?;
            let per_operation = elapsed.as_secs_f64() / BATCH as f64;
            let fitting = (CHUNK_TIME.as_secs_f64() / per_operation.max(1e-9)) as usize;
            // Batches stay whole, so the batch operation runs full batches.
            let size = if operation == Operation::VerifyBatch {
                (fitting / BATCH).max(1) * BATCH
            } else {
                fitting.max(1)
            };
            chunk_sizes.push(size);
        }

        let mut totals = vec![(Duration::ZERO, 0u64); OPERATIONS.len()];
        while totals.iter().any(|(elapsed, _)| *elapsed < budget) {
            for (index, &operation) in OPERATIONS.iter().enumerate() {
                totals[index].0 += self.run_chunk(operation, chunk_sizes[index], &context)?;
                totals[index].1 += chunk_sizes[index] as u64;
            }
            let slowest = totals.iter().map(|(elapsed, _)| *elapsed).min().unwrap_or(budget);
            progress.advance(slowest.as_secs_f64() / budget.as_secs_f64());
        }

        let mut measurements: Vec<Measurement> = OPERATIONS
            .iter()
            .zip(totals)
            .map(|(&operation, (elapsed, operations))| {
                let seconds = elapsed.as_secs_f64();
                Measurement {
                    operation,
                    payload_bytes: payload.len(),
                    operations,
                    seconds,
                    ops_per_second: operations as f64 / seconds,
                    micros_per_op: seconds * 1e6 / operations as f64,
                    ratio_to_floor: None,
                }
            })
            .collect();
        let rates: Vec<(Operation, f64)> = measurements.iter().map(|m| (m.operation, m.ops_per_second)).collect();
        for measurement in &mut measurements {
            let floor = rates
                .iter()
                .filter(|(floor, _)| measurement.operation.has_floor(*floor))
                .map(|(_, rate)| *rate)
                .fold(None, |fastest: Option<f64>, rate| {
                    Some(fastest.map_or(rate, |f| f.max(rate)))
                });
            measurement.ratio_to_floor = floor.map(|floor| measurement.ops_per_second / floor);
        }
        Ok(measurements)
    }

    /// Runs `count` of `operation` and returns the time they took. Only the
    /// operation itself is timed, not the signing of tokens to verify.
    fn run_chunk(&self, operation: Operation, count: usize, context: &SizeContext<'_>) -> Result<Duration, CliError> {
        let payload = context.payload;
        match operation {
            Operation::Sign => {
                let started = Instant::now();
                for _ in 0..count {
                    self.sign(payload)?;
                }
                Ok(started.elapsed())
            }
            Operation::Verify => {
                let tokens = self.sign_many(payload, count)?;
                let started = Instant::now();
                self.runtime.block_on(async {
                    for token in &tokens {
                        context
                            .verifier
                            .verify(token, &context.expected)
                            .await
                            .map_err(rejected)?;
                    }
                    Ok::<(), CliError>(())
                })?;
                Ok(started.elapsed())
            }
            Operation::VerifyBatch => {
                let tokens = self.sign_many(payload, count)?;
                let mut elapsed = Duration::ZERO;
                for batch in tokens.chunks(BATCH) {
                    let messages: Vec<(&str, Expected<'_>)> = batch
                        .iter()
                        .map(|token| (token.as_str(), context.expected.clone()))
                        .collect();
                    let started = Instant::now();
                    let results = self.runtime.block_on(context.verifier.verify_batch(&messages));
                    elapsed += started.elapsed();
                    for result in results {
                        result.map_err(rejected)?;
                    }
                }
                Ok(elapsed)
            }
            Operation::Seal => {
                let started = Instant::now();
                for _ in 0..count {
                    std::hint::black_box(self.seal(payload)?);
                }
                Ok(started.elapsed())
            }
            Operation::Open => {
                let messages = (0..count).map(|_| self.seal(payload)).collect::<Result<Vec<_>, _>>()?;
                let started = Instant::now();
                self.runtime.block_on(async {
                    for message in &messages {
                        let expected = Expected::message(self.channel.clone(), &message.jwe);
                        let opened = context.opener.open(&message.token, &expected).await.map_err(rejected)?;
                        std::hint::black_box(opened);
                    }
                    Ok::<(), CliError>(())
                })?;
                Ok(started.elapsed())
            }
            Operation::RawSign => {
                let started = Instant::now();
                for _ in 0..count {
                    std::hint::black_box(Sha256::digest(payload));
                    std::hint::black_box(self.raw_key.sign(context.signing_input.as_bytes()));
                }
                Ok(started.elapsed())
            }
            #[cfg(feature = "aws-lc-rs")]
            Operation::RawAwsLcSign => {
                let started = Instant::now();
                for _ in 0..count {
                    std::hint::black_box(Sha256::digest(payload));
                    std::hint::black_box(context.aws_lc_key.sign(context.signing_input.as_bytes()));
                }
                Ok(started.elapsed())
            }
            Operation::RawVerifyStrict => {
                let public = self.raw_key.verifying_key();
                let started = Instant::now();
                for (input, signature) in context.raw_samples.iter().cycle().take(count) {
                    std::hint::black_box(Sha256::digest(payload));
                    public
                        .verify_strict(input.as_bytes(), signature)
                        .map_err(|err| CliError::failed(format!("raw verification failed: {err}")))?;
                }
                Ok(started.elapsed())
            }
            Operation::RawVerify => {
                use ed25519_dalek::Verifier as _;
                let public = self.raw_key.verifying_key();
                let started = Instant::now();
                for (input, signature) in context.raw_samples.iter().cycle().take(count) {
                    std::hint::black_box(Sha256::digest(payload));
                    public
                        .verify(input.as_bytes(), signature)
                        .map_err(|err| CliError::failed(format!("raw verification failed: {err}")))?;
                }
                Ok(started.elapsed())
            }
            #[cfg(feature = "aws-lc-rs")]
            Operation::RawAwsLcVerify => {
                let started = Instant::now();
                for (input, signature) in context.raw_samples.iter().cycle().take(count) {
                    std::hint::black_box(Sha256::digest(payload));
                    context
                        .aws_lc_public
                        .verify_sig(input.as_bytes(), &signature.to_bytes())
                        .map_err(|_| CliError::failed("raw aws-lc-rs verification failed"))?;
                }
                Ok(started.elapsed())
            }
        }
    }

    #[cfg(feature = "aws-lc-rs")]
    fn aws_lc_key(&self) -> Result<aws_lc_rs::signature::Ed25519KeyPair, CliError> {
        aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(self.raw_key.as_bytes())
            .map_err(|err| CliError::failed(format!("aws-lc-rs rejected the benchmark key: {err}")))
    }
}

/// The state that the operations of one payload size share.
struct SizeContext<'a> {
    verifier: Verifier,
    expected: Expected<'a>,
    payload: &'a [u8],
    /// A token's signing input, which the raw signing operations sign.
    signing_input: String,
    /// Those of [`RAW_SAMPLES`] distinct tokens, which the raw verifications
    /// verify in turn, as `Verify` verifies distinct tokens.
    raw_samples: Vec<(String, ed25519_dalek::Signature)>,
    opener: Opener,
    #[cfg(feature = "aws-lc-rs")]
    aws_lc_key: aws_lc_rs::signature::Ed25519KeyPair,
    #[cfg(feature = "aws-lc-rs")]
    aws_lc_public: aws_lc_rs::signature::ParsedPublicKey,
}

fn service(name: &str) -> Result<ServiceId, CliError> {
    ServiceId::new(name).map_err(|err| CliError::failed(err.to_string()))
}

fn rejected(rejection: trustwire::Rejection) -> CliError {
    CliError::failed(format!("a token signed for the benchmark was rejected: {rejection}"))
}

/// Splits a compact JWS into its signing input and signature.
fn raw_parts(token: &str) -> Result<(String, ed25519_dalek::Signature), CliError> {
    use base64::Engine;

    let invalid = || CliError::failed("the benchmark token is not a compact JWS");
    let (input, signature) = token.rsplit_once('.').ok_or_else(invalid)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| invalid())?;
    let bytes: [u8; 64] = bytes.try_into().map_err(|_| invalid())?;
    Ok((input.to_owned(), ed25519_dalek::Signature::from_bytes(&bytes)))
}

/// Payload bytes of `size`: printable, so they look like a message body.
fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|index| b'a' + (index % 26) as u8).collect()
}

fn backends() -> Backends {
    let cpu_has_avx512_ifma = cpu_has_avx512_ifma();
    let built_with_avx512_backend = cfg!(curve25519_dalek_backend = "avx512");
    let batch_verify_backend = if built_with_avx512_backend && cpu_has_avx512_ifma {
        "curve25519-dalek AVX-512 IFMA"
    } else if cpu_has_avx2() {
        "curve25519-dalek AVX2"
    } else {
        "curve25519-dalek serial"
    };
    let verify_backend = match trustwire::keys::single_verification_backend() {
        "aws-lc-rs" => "aws-lc-rs",
        _ => batch_verify_backend,
    };
    Backends {
        cpu_has_avx512_ifma,
        built_with_avx512_backend,
        verify_backend,
        batch_verify_backend,
    }
}

/// Returns how to get faster verification on this CPU, if there is a way.
fn advice(backends: &Backends) -> Option<String> {
    if backends.cpu_has_avx512_ifma && !backends.built_with_avx512_backend {
        return Some(
            "this CPU supports AVX-512 IFMA, which this build does not use. For faster Ed25519 \
             verification, build with RUSTFLAGS='--cfg curve25519_dalek_backend=\"avx512\"' (Rust 1.89 or \
             later), or put that flag in .cargo/config.toml; the backend is chosen at run time, so the \
             binary still runs on CPUs without it"
                .to_owned(),
        );
    }
    None
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_avx512_ifma() -> bool {
    std::arch::is_x86_feature_detected!("avx512ifma") && std::arch::is_x86_feature_detected!("avx512vl")
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_avx512_ifma() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_avx2() -> bool {
    false
}

/// Formats the results: one row per operation and payload size.
fn table(results: &[Measurement], sizes: &[usize], backends: &Backends, advice: Option<&str>) -> String {
    let mut text = String::new();
    text.push_str(&format!(
        "{:<34} {:>9} {:>16} {:>10} {:>10}\n",
        "operation", "payload", "ops/s per core", "µs/op", "vs raw"
    ));
    for &size in sizes {
        for result in results.iter().filter(|result| result.payload_bytes == size) {
            let ratio = result
                .ratio_to_floor
                .map_or_else(String::new, |ratio| format!("{ratio:.2}×"));
            text.push_str(&format!(
                "{:<34} {:>9} {:>16.0} {:>10.1} {:>10}\n",
                result.operation.label(),
                size_label(size),
                result.ops_per_second,
                result.micros_per_op,
                ratio
            ));
        }
    }

    text.push('\n');
    text.push_str("vs raw: the rate divided by the fastest raw operation under it, at the same payload size.\n");
    text.push_str(&format!(
        "Ed25519 verification backend: {} (single), {} (batches)\n",
        backends.verify_backend, backends.batch_verify_backend
    ));
    if let Some(advice) = advice {
        text.push_str(&format!("Note: {advice}\n"));
    }
    text
}

fn size_label(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} B")
    }
}

/// A progress bar on stderr, advanced per payload size. When stderr is not a
/// terminal it prints one line per payload size instead.
struct Progress {
    total: usize,
    done: usize,
    current: String,
    terminal: bool,
}

impl Progress {
    const WIDTH: usize = 24;

    fn new(total: usize) -> Self {
        Self {
            total,
            done: 0,
            current: String::new(),
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn start(&mut self, size: usize) {
        if !self.current.is_empty() {
            self.done += 1;
        }
        self.current = format!("payload {}", size_label(size));
        if self.terminal {
            self.advance(0.0);
        } else {
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(
                stderr,
                "[{}/{}] measuring at {}",
                self.done + 1,
                self.total,
                self.current
            );
        }
    }

    /// Redraws the bar, with `fraction` of the current payload size done.
    fn advance(&mut self, fraction: f64) {
        if !self.terminal {
            return;
        }
        let overall = (self.done as f64 + fraction.min(1.0)) / self.total as f64;
        let filled = ((overall * Self::WIDTH as f64).round() as usize).min(Self::WIDTH);
        let bar = format!("{}{}", "#".repeat(filled), " ".repeat(Self::WIDTH - filled));
        let mut stderr = std::io::stderr().lock();
        let _ = write!(
            stderr,
            "\r\x1b[2K[{bar}] {:>3}% {}/{} {}",
            (overall * 100.0) as u32,
            self.done + 1,
            self.total,
            self.current
        );
        let _ = stderr.flush();
    }

    /// Clears the bar.
    fn finish(&mut self) {
        if self.terminal {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[2K");
            let _ = stderr.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_labels() {
        assert_eq!(size_label(64), "64 B");
        assert_eq!(size_label(1000), "1000 B");
        assert_eq!(size_label(1024), "1 KiB");
        assert_eq!(size_label(256 * 1024), "256 KiB");
        assert_eq!(size_label(16 * 1024 * 1024), "16 MiB");
    }

    #[test]
    fn seconds_outside_range_rejected() {
        assert_eq!(parse_seconds("2").unwrap(), 2.0);
        assert!(parse_seconds("0.05").is_err());
        assert!(parse_seconds("61").is_err());
        assert!(parse_seconds("two").is_err());
    }

    #[test]
    fn measure_reports_every_operation() {
        let fixture = Fixture::new().unwrap();
        let mut progress = Progress::new(1);

        let measurements = fixture
            .measure(&payload(64), Duration::from_millis(1), &mut progress)
            .unwrap();

        assert_eq!(measurements.len(), OPERATIONS.len());
        for (measurement, &operation) in measurements.iter().zip(OPERATIONS) {
            assert_eq!(measurement.operation, operation);
            assert_eq!(measurement.payload_bytes, 64);
            assert!(measurement.operations > 0, "{operation:?} ran no operation");
            assert!(measurement.ops_per_second > 0.0, "{operation:?}");
            let has_floor = matches!(operation, Operation::Sign | Operation::Verify | Operation::VerifyBatch);
            assert_eq!(measurement.ratio_to_floor.is_some(), has_floor, "{operation:?} ratio");
        }
    }
}
