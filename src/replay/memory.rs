//! The in-memory replay guard.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};

use super::{BoxFuture, ReplayEntry, ReplayGuard, ReplayGuardError, ReplayStatus};
use crate::clock::{Clock, SystemClock};

/// Default capacity: one million entries, about 50 MB. At the default
/// 60 s lifetime plus 30 s leeway that holds 11 000 messages per second.
pub const DEFAULT_CAPACITY: usize = 1_000_000;

/// A replay guard for one process, with bounded memory.
///
/// Entries are keyed by a SHA-256 of (`iss`, `jti`), truncated to 128 bits,
/// and dropped once the token has expired. When the guard is full even after
/// dropping expired entries, new tokens are rejected with
/// `replay_guard_unavailable` rather than accepted unchecked.
///
/// Instances of a consumer group do not share this guard; use a shared guard
/// (on NATS JetStream KV) for that.
#[derive(Debug, Clone)]
pub struct MemoryReplayGuard {
    inner: Arc<Mutex<Inner>>,
    capacity: usize,
    clock: Arc<dyn Clock>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Key to (expiry, hash of the delivery id or 0 when there is none).
    entries: HashMap<u128, (i64, u64)>,
    /// Unix second of the last sweep of expired entries.
    last_sweep: i64,
}

impl Default for MemoryReplayGuard {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl MemoryReplayGuard {
    /// A guard holding at most `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner::default())),
            capacity,
            clock: Arc::new(SystemClock),
        }
    }

    /// Replaces the clock that decides when entries expire.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The number of entries held.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the guard holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Each update is a single map operation, so a poisoned lock still
        // guards consistent data.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn key(entry: &ReplayEntry) -> u128 {
        let mut hasher = Sha256::new();
        hasher.update((entry.iss.len() as u64).to_be_bytes());
        hasher.update(entry.iss.as_bytes());
        hasher.update(entry.jti.as_bytes());
        let digest = hasher.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        u128::from_be_bytes(first)
    }

    fn record(&self, entry: &ReplayEntry) -> Result<ReplayStatus, ReplayGuardError> {
        let now = self.clock.now();
        let key = Self::key(entry);
        let mut inner = self.lock();

        let delivery = delivery_hash(entry);
        if let Some(&(expires_at, recorded_delivery)) = inner.entries.get(&key)
            && expires_at >= now
        {
            let redelivery = delivery != 0 && recorded_delivery == delivery;
            return Ok(if redelivery {
                ReplayStatus::Fresh
            } else {
                ReplayStatus::Replayed
            });
        }

        // Sweep at most once a second, or whenever the map is full.
        if inner.entries.len() >= self.capacity || now > inner.last_sweep {
            inner.entries.retain(|_, (expires_at, _)| *expires_at >= now);
            inner.last_sweep = now;
        }
        if inner.entries.len() >= self.capacity && !inner.entries.contains_key(&key) {
            return Err(ReplayGuardError(format!(
                "the in-memory replay guard is full ({} unexpired entries)",
                self.capacity
            )));
        }

        inner.entries.insert(key, (entry.expires_at, delivery));
        Ok(ReplayStatus::Fresh)
    }
}

/// A 64-bit hash of the delivery id, never 0 for a present id.
fn delivery_hash(entry: &ReplayEntry) -> u64 {
    let Some(id) = &entry.delivery_id else {
        return 0;
    };
    let digest = Sha256::digest(id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first).max(1)
}

impl ReplayGuard for MemoryReplayGuard {
    fn check_and_record<'a>(&'a self, entry: &'a ReplayEntry) -> BoxFuture<'a, Result<ReplayStatus, ReplayGuardError>> {
        let result = self.record(entry);
        Box::pin(async move { result })
    }

    fn forget<'a>(&'a self, entry: &'a ReplayEntry) -> BoxFuture<'a, Result<(), ReplayGuardError>> {
        self.lock().entries.remove(&Self::key(entry));
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FixedClock;

    fn entry(jti: &str, expires_at: i64) -> ReplayEntry {
        ReplayEntry {
            iss: "orders".into(),
            jti: jti.into(),
            expires_at,
            delivery_id: None,
        }
    }

    #[test]
    fn second_sighting_replayed() {
        let guard = MemoryReplayGuard::with_capacity(10).with_clock(Arc::new(FixedClock::new(100)));
        assert_eq!(guard.record(&entry("a", 200)).unwrap(), ReplayStatus::Fresh);
        assert_eq!(guard.record(&entry("a", 200)).unwrap(), ReplayStatus::Replayed);
        assert_eq!(guard.record(&entry("b", 200)).unwrap(), ReplayStatus::Fresh);
    }

    #[test]
    fn issuers_do_not_collide() {
        let guard = MemoryReplayGuard::with_capacity(10).with_clock(Arc::new(FixedClock::new(100)));
        let mut other = entry("a", 200);
        other.iss = "payments".into();
        assert_eq!(guard.record(&entry("a", 200)).unwrap(), ReplayStatus::Fresh);
        assert_eq!(guard.record(&other).unwrap(), ReplayStatus::Fresh);
    }

    #[test]
    fn expired_entries_dropped() {
        let clock = FixedClock::new(100);
        let guard = MemoryReplayGuard::with_capacity(2).with_clock(Arc::new(clock.clone()));
        guard.record(&entry("a", 110)).unwrap();
        guard.record(&entry("b", 110)).unwrap();
        clock.set(111);
        assert_eq!(guard.record(&entry("c", 200)).unwrap(), ReplayStatus::Fresh);
        assert_eq!(guard.len(), 1);
    }

    #[test]
    fn full_guard_fails_closed() {
        let guard = MemoryReplayGuard::with_capacity(2).with_clock(Arc::new(FixedClock::new(100)));
        guard.record(&entry("a", 200)).unwrap();
        guard.record(&entry("b", 200)).unwrap();
        assert!(guard.record(&entry("c", 200)).is_err());
        assert_eq!(guard.record(&entry("a", 200)).unwrap(), ReplayStatus::Replayed);
    }

    #[test]
    fn same_delivery_is_not_a_replay() {
        let guard = MemoryReplayGuard::with_capacity(10).with_clock(Arc::new(FixedClock::new(100)));
        let mut first = entry("a", 200);
        first.delivery_id = Some("stream-seq-7".into());
        let mut copy = entry("a", 200);
        copy.delivery_id = Some("stream-seq-8".into());
        assert_eq!(guard.record(&first).unwrap(), ReplayStatus::Fresh);
        assert_eq!(guard.record(&first).unwrap(), ReplayStatus::Fresh);
        assert_eq!(guard.record(&copy).unwrap(), ReplayStatus::Replayed);
        assert_eq!(guard.record(&entry("a", 200)).unwrap(), ReplayStatus::Replayed);
    }

    #[test]
    fn forget_allows_redelivery() {
        let guard = MemoryReplayGuard::with_capacity(10).with_clock(Arc::new(FixedClock::new(100)));
        guard.record(&entry("a", 200)).unwrap();
        drop(guard.forget(&entry("a", 200)));
        assert_eq!(guard.record(&entry("a", 200)).unwrap(), ReplayStatus::Fresh);
    }
}
