//! Replay protection: each `jti` is accepted once within its validity window.

mod memory;

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;

pub use memory::{DEFAULT_CAPACITY, MemoryReplayGuard};

/// A boxed future, as returned by [`ReplayGuard`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One accepted token, as the replay guard records it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReplayEntry {
    /// The verified issuer.
    pub iss: String,
    /// The token id.
    pub jti: String,
    /// Unix time in seconds after which the token can no longer verify
    /// (`exp` plus the verifier's leeway); the entry may be forgotten then.
    pub expires_at: i64,
    /// The broker's id of the stored message that carried the token (a
    /// JetStream stream sequence, say), when the transport has a stable one.
    /// A guard that finds the entry recorded with the same delivery id
    /// treats it as a redelivery of that message, not a replay.
    pub delivery_id: Option<String>,
}

/// Whether a `jti` was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplayStatus {
    /// First sighting; the entry is now recorded.
    Fresh,
    /// The entry was already recorded.
    Replayed,
}

/// Error of a replay guard's store.
#[derive(Debug, Clone, thiserror::Error)]
#[error("replay guard unavailable: {0}")]
pub struct ReplayGuardError(pub String);

/// A store of accepted token ids.
///
/// `check_and_record` must be atomic: when two verifiers race on the same
/// entry, exactly one gets [`ReplayStatus::Fresh`], unless both carry the
/// same `delivery_id` (two deliveries of one stored message).
pub trait ReplayGuard: Send + Sync + Debug {
    /// Records `entry` if it is new.
    fn check_and_record<'a>(&'a self, entry: &'a ReplayEntry) -> BoxFuture<'a, Result<ReplayStatus, ReplayGuardError>>;

    /// Forgets `entry`, so the same token is accepted again: for a message
    /// the handler did not process and the broker will redeliver.
    fn forget<'a>(&'a self, entry: &'a ReplayEntry) -> BoxFuture<'a, Result<(), ReplayGuardError>>;
}
