//! A replay guard shared by every instance of a consumer group, stored in a
//! JetStream key-value bucket.
//!
//! Each accepted token is one key, written with an atomic create: a publish
//! that expects the key's last revision to be 0, or the revision of its
//! delete marker. When two instances race on one `jti`, exactly one create
//! succeeds. The value records the entry's expiry and delivery id, so
//! a redelivery of the same stream message is recognised.
//!
//! nats-server 2.9 has no per-key TTL (it arrived in 2.11), so entries expire
//! with the bucket's `max_age`. The guard refuses a token whose entry would
//! have to outlive that age, instead of accepting it unguarded.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::{Clock, SystemClock};
use crate::replay::{BoxFuture, ReplayEntry, ReplayGuard, ReplayGuardError, ReplayStatus};

/// Default bucket name: `trustwire_replay`.
pub const DEFAULT_REPLAY_BUCKET: &str = "trustwire_replay";

/// How many times a create is retried when another instance changes the
/// key in between (it deleted its entry, say).
const MAX_ATTEMPTS: usize = 4;

/// The bucket `max_age` that covers every token a verifier accepts: the
/// maximum lifetime plus twice the leeway (`iat` may be up to one leeway in
/// the future, and `exp` is honoured up to one leeway late).
///
/// ```
/// use std::time::Duration;
/// use trustwire::nats::recommended_max_age;
///
/// assert_eq!(recommended_max_age(Duration::from_secs(600), Duration::from_secs(30)), Duration::from_secs(660));
/// ```
pub fn recommended_max_age(max_lifetime: Duration, leeway: Duration) -> Duration {
    max_lifetime.saturating_add(leeway.saturating_mul(2))
}

/// Errors in opening the bucket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvReplayGuardError {
    /// The bucket does not exist and could not be created.
    #[error("cannot create the replay bucket {bucket:?}")]
    Create {
        /// The bucket name.
        bucket: String,
        /// The cause.
        #[source]
        source: jetstream::context::CreateStreamError,
    },

    /// The bucket was created but cannot be opened.
    #[error("cannot open the replay bucket {bucket:?}")]
    Open {
        /// The bucket name.
        bucket: String,
        /// The cause.
        #[source]
        source: jetstream::context::KeyValueError,
    },

    /// The bucket exists, but its status could not be read.
    #[error("cannot read the status of the replay bucket {bucket:?}")]
    Status {
        /// The bucket name.
        bucket: String,
        /// The cause.
        #[source]
        source: kv::StatusError,
    },

    /// The bucket exists with a `max_age` shorter than requested (or none),
    /// so entries would vanish while their tokens still verify.
    #[error(
        "the replay bucket {bucket:?} keeps entries for {found_s} s, less than the {wanted_s} s requested; \
         recreate it with a longer max_age (0 means entries never expire and is refused as well)"
    )]
    MaxAgeTooShort {
        /// The bucket name.
        bucket: String,
        /// The bucket's `max_age` in seconds (0: unlimited).
        found_s: u64,
        /// The requested `max_age` in seconds.
        wanted_s: u64,
    },
}

/// A [`ReplayGuard`] on a JetStream KV bucket, shared by every verifier that
/// opens the same bucket.
///
/// ```no_run
/// use std::sync::Arc;
/// use trustwire::nats::{KvReplayGuard, DEFAULT_REPLAY_BUCKET, recommended_max_age};
/// use trustwire::envelope::{DEFAULT_LEEWAY, DEFAULT_MAX_LIFETIME};
///
/// # async fn run(client: async_nats::Client, builder: trustwire::envelope::VerifierBuilder) -> Result<(), Box<dyn std::error::Error>> {
/// let max_age = recommended_max_age(DEFAULT_MAX_LIFETIME, DEFAULT_LEEWAY);
/// let guard = KvReplayGuard::open(&async_nats::jetstream::new(client), DEFAULT_REPLAY_BUCKET, max_age).await?;
/// let verifier = builder.replay_guard(Arc::new(guard)).build()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct KvReplayGuard {
    store: kv::Store,
    max_age_s: i64,
    clock: Arc<dyn Clock>,
}

/// The value stored under a key.
#[derive(Serialize, Deserialize)]
struct Record {
    /// Unix time after which the token can no longer verify.
    exp: i64,
    /// The delivery id of the message that was accepted, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    did: Option<String>,
}

impl KvReplayGuard {
    /// Opens bucket `bucket`, creating it with `max_age` (one revision per
    /// key, file storage, one replica) if it does not exist. An existing bucket must keep
    /// entries at least `max_age`; size it with [`recommended_max_age`] for
    /// the verifiers that share it. The default for the default verifier
    /// options is 660 s.
    pub async fn open(
        context: &jetstream::Context,
        bucket: &str,
        max_age: Duration,
    ) -> Result<Self, KvReplayGuardError> {
        let store = match context.get_key_value(bucket).await {
            Ok(store) => store,
            Err(_) => {
                create_bucket(context, bucket, max_age).await?;
                context
                    .get_key_value(bucket)
                    .await
                    .map_err(|source| KvReplayGuardError::Open {
                        bucket: bucket.to_owned(),
                        source,
                    })?
            }
        };

        let status = store.status().await.map_err(|source| KvReplayGuardError::Status {
            bucket: bucket.to_owned(),
            source,
        })?;
        let found = status.max_age();
        if found.is_zero() || found < max_age {
            return Err(KvReplayGuardError::MaxAgeTooShort {
                bucket: bucket.to_owned(),
                found_s: found.as_secs(),
                wanted_s: max_age.as_secs(),
            });
        }

        tracing::info!(bucket, max_age_s = found.as_secs(), "JetStream KV replay guard ready");
        Ok(Self {
            store,
            max_age_s: i64::try_from(found.as_secs()).unwrap_or(i64::MAX),
            clock: Arc::new(SystemClock),
        })
    }

    /// Replaces the clock used to check that an entry fits in the bucket's
    /// `max_age`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The key of an entry: hex SHA-256 of the issuer's length, the issuer
    /// and the `jti`, so any `jti` maps to a valid KV key and issuers cannot
    /// collide.
    fn key(entry: &ReplayEntry) -> String {
        let mut hasher = Sha256::new();
        hasher.update((entry.iss.len() as u64).to_be_bytes());
        hasher.update(entry.iss.as_bytes());
        hasher.update(entry.jti.as_bytes());
        hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect()
    }

    async fn record(&self, entry: &ReplayEntry) -> Result<ReplayStatus, ReplayGuardError> {
        let remaining = entry.expires_at.saturating_sub(self.clock.now());
        if remaining > self.max_age_s {
            return Err(ReplayGuardError(format!(
                "the token stays valid for {remaining} s, longer than the replay bucket keeps entries ({} s); \
                 raise the bucket's max_age or lower the verifier's max_lifetime",
                self.max_age_s
            )));
        }

        let key = Self::key(entry);
        let record = Record {
            exp: entry.expires_at,
            did: entry.delivery_id.clone(),
        };
        let value = Bytes::from(serde_json::to_vec(&record).map_err(|err| ReplayGuardError(err.to_string()))?);

        let mut expected_revision = 0;
        for _ in 0..MAX_ATTEMPTS {
            match self.store.update(&key, value.clone(), expected_revision).await {
                Ok(_) => return Ok(ReplayStatus::Fresh),
                Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                Err(err) => return Err(ReplayGuardError(format!("writing the replay entry failed: {err}"))),
            }

            // The key exists: an accepted token, or the delete marker left by
            // forget().
            let existing = self
                .store
                .entry(&key)
                .await
                .map_err(|err| ReplayGuardError(format!("reading the replay entry failed: {err}")))?;
            match existing {
                Some(found) if found.operation == kv::Operation::Put => {
                    return Ok(Self::compare(entry, &found.value));
                }
                Some(marker) => expected_revision = marker.revision,
                // Aged out in between.
                None => expected_revision = 0,
            }
        }
        Err(ReplayGuardError(format!(
            "the replay entry kept changing under {MAX_ATTEMPTS} attempts to create it"
        )))
    }

    /// Returns `Fresh` when the recorded entry carries the same delivery id
    /// as `entry` (a redelivery), and `Replayed` otherwise.
    fn compare(entry: &ReplayEntry, recorded: &[u8]) -> ReplayStatus {
        let Ok(record) = serde_json::from_slice::<Record>(recorded) else {
            return ReplayStatus::Replayed;
        };
        match (&entry.delivery_id, &record.did) {
            (Some(arrived), Some(stored)) if arrived == stored => ReplayStatus::Fresh,
            _ => ReplayStatus::Replayed,
        }
    }

    async fn remove(&self, entry: &ReplayEntry) -> Result<(), ReplayGuardError> {
        self.store
            .delete(Self::key(entry))
            .await
            .map_err(|err| ReplayGuardError(format!("deleting the replay entry failed: {err}")))
    }
}

/// Creates the stream behind bucket `bucket`, or finds the one another
/// instance created first, with the settings async-nats gives a KV bucket.
///
/// NOTE: async-nats 0.52's `create_key_value` first reads the account info,
/// and its parser requires `reserved_memory` and `reserved_storage`. Because
/// nats-server 2.9 does not send them, the stream is created directly.
async fn create_bucket(
    context: &jetstream::Context,
    bucket: &str,
    max_age: Duration,
) -> Result<(), KvReplayGuardError> {
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        description: Some("trustwire: accepted token ids (iss, jti)".to_owned()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    };
    context
        .get_or_create_stream(config)
        .await
        .map_err(|source| KvReplayGuardError::Create {
            bucket: bucket.to_owned(),
            source,
        })?;
    tracing::info!(
        bucket,
        max_age_s = max_age.as_secs(),
        "created the JetStream KV replay bucket"
    );
    Ok(())
}

impl ReplayGuard for KvReplayGuard {
    fn check_and_record<'a>(&'a self, entry: &'a ReplayEntry) -> BoxFuture<'a, Result<ReplayStatus, ReplayGuardError>> {
        Box::pin(self.record(entry))
    }

    fn forget<'a>(&'a self, entry: &'a ReplayEntry) -> BoxFuture<'a, Result<(), ReplayGuardError>> {
        Box::pin(self.remove(entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{DEFAULT_LEEWAY, DEFAULT_MAX_LIFETIME};

    fn entry(jti: &str, delivery_id: Option<&str>) -> ReplayEntry {
        ReplayEntry {
            iss: "orders".into(),
            jti: jti.into(),
            expires_at: 100,
            delivery_id: delivery_id.map(str::to_owned),
        }
    }

    #[test]
    fn key_is_valid_kv_key() {
        let key = KvReplayGuard::key(&entry("a/b.c*>", None));
        assert_eq!(key.len(), 64);
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn issuers_get_distinct_keys() {
        let mut other = entry("a", None);
        other.iss = "payments".into();
        assert_ne!(KvReplayGuard::key(&entry("a", None)), KvReplayGuard::key(&other));
    }

    #[test]
    fn same_delivery_is_fresh() {
        let recorded = serde_json::to_vec(&Record {
            exp: 100,
            did: Some("S:7".into()),
        })
        .unwrap();
        assert_eq!(
            KvReplayGuard::compare(&entry("a", Some("S:7")), &recorded),
            ReplayStatus::Fresh
        );
        assert_eq!(
            KvReplayGuard::compare(&entry("a", Some("S:8")), &recorded),
            ReplayStatus::Replayed
        );
        assert_eq!(
            KvReplayGuard::compare(&entry("a", None), &recorded),
            ReplayStatus::Replayed
        );
    }

    #[test]
    fn no_delivery_ids_replayed() {
        let recorded = serde_json::to_vec(&Record { exp: 100, did: None }).unwrap();
        assert_eq!(
            KvReplayGuard::compare(&entry("a", None), &recorded),
            ReplayStatus::Replayed
        );
        assert_eq!(
            KvReplayGuard::compare(&entry("a", None), b"not json"),
            ReplayStatus::Replayed
        );
    }

    #[test]
    fn default_max_age_matches_recommendation() {
        let max_age = recommended_max_age(DEFAULT_MAX_LIFETIME, DEFAULT_LEEWAY);
        assert_eq!(max_age, Duration::from_secs(660));
    }
}
