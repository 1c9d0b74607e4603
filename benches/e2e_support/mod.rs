//! What the end-to-end benchmarks share: the crypto timings behind the
//! crypto-bound rate, latency percentiles and the report.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use trustwire::envelope::MAX_SIGNATURE_BATCH;
use trustwire::jwks::{JwkSet, KeySource, TrustStore};
use trustwire::{Binding, Expected, ServiceId, Signer, Verifier};

pub(crate) const ISSUER: &str = "orders";
pub(crate) const AUDIENCE: &str = "payments";

/// Payload size of every message.
pub(crate) const PAYLOAD_BYTES: usize = 1024;

/// Pause between two latency samples, so that each message crosses an idle
/// broker and an idle subscriber.
pub(crate) const LATENCY_GAP: Duration = Duration::from_millis(1);

/// Latency samples taken before the recorded ones, to warm up connections
/// and caches.
pub(crate) const LATENCY_WARMUP: usize = 100;

/// Rounds, message and sample counts of one run.
#[derive(Clone, Copy)]
pub(crate) struct Counts {
    /// Throughput rounds. Each round times the crypto, then the unsigned
    /// flow, then the signed flow, so that the ratios of one round are taken
    /// under the same load.
    pub(crate) rounds: usize,
    /// Messages per throughput run, and tokens per crypto timing.
    pub(crate) messages: usize,
    /// Recorded latency samples per flow.
    pub(crate) samples: usize,
}

impl Counts {
    /// Full counts under `cargo bench`, which passes `--bench`. `cargo test
    /// --all-targets` runs the benchmark without it, and then a short run
    /// only checks that the flows work.
    pub(crate) fn from_args(rounds: usize, messages: usize, samples: usize) -> Self {
        if std::env::args().any(|argument| argument == "--bench") {
            Self {
                rounds,
                messages,
                samples,
            }
        } else {
            Self {
                rounds: 1,
                messages: 200,
                samples: 50,
            }
        }
    }
}

pub(crate) fn service(name: &str) -> ServiceId {
    ServiceId::new(name).unwrap()
}

pub(crate) fn verifier(keys: &JwkSet) -> Verifier {
    let trust = TrustStore::new().trust(service(ISSUER), KeySource::inline(keys.clone()));
    Verifier::builder(service(AUDIENCE), trust).build().unwrap()
}

/// A random suffix, so that runs never share subjects, queues or exchanges.
pub(crate) fn unique_suffix() -> u64 {
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).unwrap();
    u64::from_le_bytes(suffix)
}

/// Seconds per message of the crypto alone, timed in this process.
pub(crate) struct CryptoCost {
    /// Signing one token.
    pub(crate) sign: f64,
    /// Verifying one token on its own (`Verifier::verify`).
    pub(crate) verify: f64,
    /// Verifying one token in batches of `MAX_SIGNATURE_BATCH`
    /// (`Verifier::verify_batch`), as a subscriber does when messages wait.
    pub(crate) verify_batch: f64,
}

impl CryptoCost {
    /// Times signing and both kinds of verification over `count` tokens
    /// bound to `channel`.
    pub(crate) async fn measure(
        signer: &Signer,
        keys: &JwkSet,
        channel: &Binding,
        payload: &[u8],
        count: usize,
    ) -> Self {
        let started = Instant::now();
        let tokens: Vec<String> = (0..count).map(|_| sign(signer, channel, payload)).collect();
        let sign = started.elapsed().as_secs_f64() / count as f64;

        // Each verifier has its own replay guard, so every token verifies
        // once under each.
        let single = verifier(keys);
        let expected = Expected::message(channel.clone(), payload);
        let started = Instant::now();
        for token in &tokens {
            single.verify(token, &expected).await.unwrap();
        }
        let verify = started.elapsed().as_secs_f64() / count as f64;

        let batched = verifier(keys);
        let started = Instant::now();
        for chunk in tokens.chunks(MAX_SIGNATURE_BATCH) {
            let messages: Vec<(&str, Expected<'_>)> = chunk
                .iter()
                .map(|token| (token.as_str(), Expected::message(channel.clone(), payload)))
                .collect();
            let results = batched.verify_batch(&messages).await;
            assert!(results.iter().all(Result::is_ok), "a benchmark token did not verify");
        }
        let verify_batch = started.elapsed().as_secs_f64() / count as f64;

        Self {
            sign,
            verify,
            verify_batch,
        }
    }

    /// Messages per second of a two-stage pipeline, signing on one core and
    /// verifying in batches on the other, that costs only its crypto.
    pub(crate) fn bound(&self) -> f64 {
        1.0 / self.sign.max(self.verify_batch)
    }

    /// As [`bound`](Self::bound), with every token verified on its own.
    pub(crate) fn bound_single(&self) -> f64 {
        1.0 / self.sign.max(self.verify)
    }
}

pub(crate) fn sign(signer: &Signer, channel: &Binding, payload: &[u8]) -> String {
    signer
        .token(service(AUDIENCE))
        .binding(channel.clone())
        .payload(payload)
        .sign()
        .unwrap()
}

/// Times signing one token and verifying it, as a latency sample of the
/// crypto on one hop.
pub(crate) async fn sign_and_verify_seconds(
    signer: &Signer,
    verifier: &Verifier,
    channel: &Binding,
    payload: &[u8],
) -> f64 {
    let started = Instant::now();
    let token = sign(signer, channel, payload);
    verifier
        .verify(&token, &Expected::message(channel.clone(), payload))
        .await
        .unwrap();
    started.elapsed().as_secs_f64()
}

/// Latency samples of one flow, in seconds.
#[derive(Default)]
pub(crate) struct Samples(Vec<f64>);

impl Samples {
    pub(crate) fn push(&mut self, seconds: f64) {
        self.0.push(seconds);
    }

    /// Returns the value below which `fraction` of the samples lie (nearest rank).
    pub(crate) fn percentile(&self, fraction: f64) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
    }

    /// Returns the share of samples above `seconds`.
    pub(crate) fn share_above(&self, seconds: f64) -> f64 {
        self.0.iter().filter(|sample| **sample > seconds).count() as f64 / self.0.len() as f64
    }
}

/// Paced latency samples of the unsigned flow, the signed flow and the
/// crypto alone, taken in turn so that all three see the same machine.
#[derive(Default)]
pub(crate) struct Latency {
    pub(crate) unsigned: Samples,
    pub(crate) signed: Samples,
    pub(crate) sign_and_verify: Samples,
}

/// One throughput round: the crypto timed, then both flows, in messages
/// per second.
pub(crate) struct Round {
    pub(crate) crypto: CryptoCost,
    pub(crate) unsigned: f64,
    pub(crate) signed: f64,
    /// Where the time of the signed flow went, where Linux reports it.
    pub(crate) signed_usage: Option<Usage>,
}

/// Time on a CPU and time runnable but waiting for one, in seconds, summed
/// over the threads of some processes (Linux `/proc/<pid>/task/*/schedstat`).
#[derive(Clone, Copy, Default)]
pub(crate) struct SchedStat {
    pub(crate) running: f64,
    pub(crate) waiting: f64,
}

impl SchedStat {
    /// Sums over the threads of this process, or `None` without `/proc`.
    pub(crate) fn this_process() -> Option<Self> {
        Self::of_pid_dir(std::path::Path::new("/proc/self"))
    }

    /// Sums over every process whose name (`/proc/<pid>/comm`) is `name`,
    /// or `None` when there is none.
    pub(crate) fn of_processes(name: &str) -> Option<Self> {
        let mut total: Option<Self> = None;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != name {
                continue;
            }
            if let Some(stat) = Self::of_pid_dir(&entry.path()) {
                let sum = total.get_or_insert_with(Self::default);
                sum.running += stat.running;
                sum.waiting += stat.waiting;
            }
        }
        total
    }

    fn of_pid_dir(dir: &std::path::Path) -> Option<Self> {
        let mut total = Self::default();
        for task in std::fs::read_dir(dir.join("task")).ok()?.flatten() {
            let Ok(line) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            let mut fields = line.split_whitespace().map(|field| field.parse::<f64>().unwrap_or(0.0));
            total.running += fields.next().unwrap_or(0.0) / 1e9;
            total.waiting += fields.next().unwrap_or(0.0) / 1e9;
        }
        Some(total)
    }

    fn since(self, earlier: Self) -> Self {
        Self {
            running: self.running - earlier.running,
            waiting: self.waiting - earlier.waiting,
        }
    }
}

/// Scheduler times of the benchmark process and of the broker over one
/// flow, in seconds per message.
#[derive(Clone, Copy)]
pub(crate) struct Usage {
    pub(crate) benchmark: SchedStat,
    pub(crate) broker: SchedStat,
}

/// Scheduler times at the start of a flow.
pub(crate) struct UsageStart {
    broker_name: &'static str,
    benchmark: Option<SchedStat>,
    broker: Option<SchedStat>,
}

impl UsageStart {
    /// Reads this process's and the broker process's (named `broker_name`)
    /// scheduler times now.
    pub(crate) fn now(broker_name: &'static str) -> Self {
        Self {
            broker_name,
            benchmark: SchedStat::this_process(),
            broker: SchedStat::of_processes(broker_name),
        }
    }

    /// Returns the times since `now`, divided by `messages`.
    pub(crate) fn per_message(self, messages: usize) -> Option<Usage> {
        let benchmark = SchedStat::this_process()?.since(self.benchmark?);
        let broker = SchedStat::of_processes(self.broker_name)?.since(self.broker?);
        let per = |stat: SchedStat| SchedStat {
            running: stat.running / messages as f64,
            waiting: stat.waiting / messages as f64,
        };
        Some(Usage {
            benchmark: per(benchmark),
            broker: per(broker),
        })
    }
}

/// Returns the median of `values`.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// What one end-to-end run measured.
pub(crate) struct Report<'a> {
    pub(crate) transport: &'a str,
    pub(crate) counts: Counts,
    pub(crate) rounds: Vec<Round>,
    pub(crate) latency: Latency,
}

impl Report<'_> {
    pub(crate) fn print(&self) {
        println!(
            "{} end to end, {PAYLOAD_BYTES} B payloads, {} rounds of {} messages, {} latency samples per flow",
            self.transport, self.counts.rounds, self.counts.messages, self.counts.samples
        );
        println!();
        println!(
            "{:>5} {:>7} {:>7} {:>7} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8}",
            "round", "sign", "verify", "batch", "unsigned", "signed", "bound", "bound-1", "s/bound", "s/bnd-1", "s/uns"
        );
        println!(
            "{:>5} {:>7} {:>7} {:>7} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8}",
            "", "µs", "µs", "µs", "msg/s", "msg/s", "msg/s", "msg/s", "", "", ""
        );
        for (index, round) in self.rounds.iter().enumerate() {
            let crypto = &round.crypto;
            println!(
                "{:>5} {:>7.1} {:>7.1} {:>7.1} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>8.2} {:>8.2} {:>8.2}",
                index + 1,
                crypto.sign * 1e6,
                crypto.verify * 1e6,
                crypto.verify_batch * 1e6,
                round.unsigned,
                round.signed,
                crypto.bound(),
                crypto.bound_single(),
                round.signed / crypto.bound(),
                round.signed / crypto.bound_single(),
                round.signed / round.unsigned
            );
        }
        let median_of = |ratio: fn(&Round) -> f64| median(self.rounds.iter().map(ratio).collect());
        println!(
            "median signed / crypto-bound: {:.2}× (target ≥ 0.8×)",
            median_of(|round| round.signed / round.crypto.bound())
        );
        println!(
            "median signed / single-verify bound: {:.2}×",
            median_of(|round| round.signed / round.crypto.bound_single())
        );
        println!(
            "median signed / unsigned: {:.2}×",
            median_of(|round| round.signed / round.unsigned)
        );
        println!();

        println!("signed flow, per message: on CPU and waiting in the run queue (Linux schedstat)");
        println!(
            "{:>5} {:>12} {:>12} {:>12} {:>12} {:>12}",
            "round", "bench CPU", "bench wait", "broker CPU", "broker wait", "vCPUs used"
        );
        for (index, round) in self.rounds.iter().enumerate() {
            let Some(usage) = round.signed_usage else {
                println!("{:>5} not available", index + 1);
                continue;
            };
            println!(
                "{:>5} {:>9.1} µs {:>9.1} µs {:>9.1} µs {:>9.1} µs {:>12.2}",
                index + 1,
                usage.benchmark.running * 1e6,
                usage.benchmark.waiting * 1e6,
                usage.broker.running * 1e6,
                usage.broker.waiting * 1e6,
                (usage.benchmark.running + usage.broker.running) * round.signed
            );
        }
        println!();

        let latency = &self.latency;
        println!(
            "{:<46} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "latency per hop, paced, one message in flight", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "> 1 ms"
        );
        for (name, samples) in [
            ("unsigned", &latency.unsigned),
            ("signed and verified", &latency.signed),
            ("sign + verify alone", &latency.sign_and_verify),
        ] {
            println!(
                "{:<46} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>7.1}%",
                name,
                samples.percentile(0.50) * 1e6,
                samples.percentile(0.90) * 1e6,
                samples.percentile(0.99) * 1e6,
                samples.percentile(0.999) * 1e6,
                samples.share_above(1e-3) * 100.0
            );
        }
        let added_p50 = latency.signed.percentile(0.50) - latency.unsigned.percentile(0.50);
        let added_p99 = latency.signed.percentile(0.99) - latency.unsigned.percentile(0.99);
        let crypto_p50 = latency.sign_and_verify.percentile(0.50);
        println!(
            "added p50: {:.0} µs = {:.2}× (sign + verify p50)",
            added_p50 * 1e6,
            added_p50 / crypto_p50
        );
        println!(
            "added p99: {:.0} µs = {:.2}× (sign + verify p50) (target ≤ 2×)",
            added_p99 * 1e6,
            added_p99 / crypto_p50
        );
    }
}

/// Waits up to 30 s for `next`, which a lost or rejected message never
/// completes.
pub(crate) async fn within<T>(next: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), next)
        .await
        .expect("no message arrived within 30 s: one was lost or rejected")
}

/// Builds a multi-threaded runtime with two workers, one per vCPU of the
/// project's benchmark machine.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
