#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Key rotation, revocation and the last-good JWKS snapshot, end to end: a
//! key directory on disk, a real `JwksPublisher` on 127.0.0.1, a signer that
//! follows the directory and verifiers with a caching `RemoteJwks`.
//!
//! Schedules in `keys.json` have one-second resolution, so the rotation
//! tests take seconds, not milliseconds; the soak test runs for about
//! fifteen.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use trustwire::jwks::{JWKS_PATH, JwkSet, JwksPublisher, KeySource, RemoteJwks, TrustStore};
use trustwire::keys::{KeyDirWatcher, KeyState, Rotation};
use trustwire::{Binding, Expected, KeyDir, Reason, Rejection, ServiceId, Signer, Verified, Verifier};

const ISSUER: &str = "orders";
const AUDIENCE: &str = "payments";
const CHANNEL: &str = "nats:orders.created";
const PAYLOAD: &[u8] = br#"{"order":42}"#;

fn service(name: &str) -> ServiceId {
    ServiceId::new(name).unwrap()
}

/// A `JwksPublisher` served on 127.0.0.1 that serves the `jwks.json` of a
/// key directory, reloaded by [`Self::reload`] as `trustwire jwks serve`
/// does when the file changes. Dropping it stops the server.
struct Publisher {
    publisher: JwksPublisher,
    addr: SocketAddr,
    jwks_path: std::path::PathBuf,
    server: tokio::task::JoinHandle<()>,
}

impl Publisher {
    async fn start(keys: &KeyDir, max_age: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind a port on 127.0.0.1 for the JWKS publisher");
        Self::serve(keys, max_age, listener)
    }

    fn serve(keys: &KeyDir, max_age: Duration, listener: tokio::net::TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let publisher = JwksPublisher::with_max_age(&read_jwks(&keys.jwks_path()), max_age);
        let router = publisher.router();
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self {
            publisher,
            addr,
            jwks_path: keys.jwks_path(),
            server,
        }
    }

    fn url(&self) -> String {
        format!("http://{}{JWKS_PATH}", self.addr)
    }

    fn reload(&self) {
        self.publisher.update(&read_jwks(&self.jwks_path));
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn read_jwks(path: &Path) -> JwkSet {
    JwkSet::parse(&std::fs::read(path).unwrap()).unwrap()
}

fn sign(signer: &Signer) -> String {
    signer
        .token(service(AUDIENCE))
        .binding(Binding::channel(CHANNEL).unwrap())
        .payload(PAYLOAD)
        .sign()
        .unwrap()
}

async fn verify(verifier: &Verifier, token: &str) -> Result<Verified, Rejection> {
    let expected = Expected::message(Binding::channel(CHANNEL).unwrap(), PAYLOAD);
    verifier.verify(token, &expected).await
}

fn verifier_for(remote: &RemoteJwks) -> Verifier {
    let trust = TrustStore::new().trust(service(ISSUER), KeySource::Remote(remote.clone()));
    Verifier::builder(service(AUDIENCE), trust).build().unwrap()
}

#[track_caller]
fn assert_rejected(result: &Result<Verified, Rejection>, expected: Reason) {
    match result {
        Ok(verified) => panic!(
            "expected rejection {expected}, but the token with kid {} verified",
            verified.kid
        ),
        Err(rejection) => assert_eq!(rejection.reason(), expected, "detail: {}", rejection.detail()),
    }
}

#[track_caller]
fn assert_verified(result: &Result<Verified, Rejection>) {
    if let Err(rejection) = result {
        panic!("expected the token to verify, but it was rejected: {rejection}");
    }
}

/// Waits up to `limit` for `signer` to sign with a key other than `old_kid`
/// and returns the new kid.
async fn wait_for_switch(signer: &Signer, old_kid: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    while signer.kid() == old_kid {
        assert!(
            Instant::now() < deadline,
            "the signer still signs with {old_kid} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signer.kid().to_owned()
}

#[derive(Debug, Default)]
struct SoakResult {
    verified_by_kid: BTreeMap<String, usize>,
    rejections: Vec<String>,
}

/// Signs and verifies one token every 5 ms until `stop` is set.
async fn sign_and_verify_until(signer: Signer, verifier: Verifier, stop: Arc<AtomicBool>) -> SoakResult {
    let mut result = SoakResult::default();
    while !stop.load(Ordering::Relaxed) {
        let token = sign(&signer);
        match verify(&verifier, &token).await {
            Ok(verified) => *result.verified_by_kid.entry(verified.kid).or_default() += 1,
            Err(rejection) => result.rejections.push(rejection.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    result
}

/// A publisher signs continuously while its key is rotated twice; a
/// verifier that caches the JWKS for 3 s consumes every token. The
/// pre-publication delay (3 s) is at least that cache age, so no valid token
/// is ever rejected. A stranger's token starts the unknown-kid cooldown
/// (one hour) first, so that refresh cannot be what saves the test: with no
/// pre-publication delay, tokens of a new key are rejected until the next
/// scheduled refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_two_rotations_no_rejections() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("orders");
    let mut keys = KeyDir::create(&dir, service(ISSUER)).unwrap();
    let first_kid = keys.active_key().kid().to_owned();
    let publisher = Publisher::start(&keys, Duration::from_secs(3)).await;

    let signer = Signer::new(service(ISSUER), KeyDir::open(&dir).unwrap().into_active_key());
    let _watcher = KeyDirWatcher::spawn(&dir, signer.clone(), Duration::from_millis(200));
    let remote = RemoteJwks::builder(publisher.url())
        .ttl_bounds(Duration::from_secs(3), Duration::from_secs(3))
        .unknown_kid_cooldown(Duration::from_secs(3600))
        .build()
        .unwrap();
    let verifier = verifier_for(&remote);
    let stranger = Signer::new(service(ISSUER), trustwire::SigningKey::generate().unwrap());
    assert_rejected(&verify(&verifier, &sign(&stranger)).await, Reason::UnknownKey);

    let stop = Arc::new(AtomicBool::new(false));
    let consumer = tokio::spawn(sign_and_verify_until(signer.clone(), verifier, Arc::clone(&stop)));
    let started = Instant::now();

    let rotation = Rotation {
        pre_publish: Duration::from_secs(3),
        retention: Duration::from_secs(1),
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second_kid = keys.rotate(&rotation).unwrap().kid().to_owned();
    publisher.reload();
    assert_eq!(
        signer.kid(),
        first_kid,
        "the next key must not sign before its pre-publication delay"
    );
    assert_eq!(
        wait_for_switch(&signer, &first_kid, Duration::from_secs(8)).await,
        second_kid
    );

    let third_kid = keys.rotate(&rotation).unwrap().kid().to_owned();
    publisher.reload();
    assert_eq!(
        wait_for_switch(&signer, &second_kid, Duration::from_secs(8)).await,
        third_kid
    );

    // Past the second key's retention both old keys are removed; the
    // served set then holds the active key only, and signing goes on.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let changes = keys.advance().unwrap();
    publisher.reload();
    assert!(
        changes
            .iter()
            .any(|change| change.kid == second_kid && change.to == KeyState::Removed),
        "{changes:?}"
    );
    let served = read_jwks(&keys.jwks_path());
    let served_kids: Vec<&str> = served.keys().iter().map(|key| key.kid()).collect();
    assert_eq!(served_kids, vec![third_kid.as_str()]);
    assert!(
        !dir.join(format!("{first_kid}.jwk")).exists(),
        "the removed key's private file is kept"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;

    stop.store(true, Ordering::Relaxed);
    let result = consumer.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "the soak took {:?}",
        started.elapsed()
    );
    assert!(
        result.rejections.is_empty(),
        "valid tokens were rejected: {:?}",
        result.rejections
    );
    for kid in [&first_kid, &second_kid, &third_kid] {
        let count = result.verified_by_kid.get(kid).copied().unwrap_or(0);
        assert!(
            count >= 20,
            "only {count} tokens of {kid} verified: {:?}",
            result.verified_by_kid
        );
    }
}

/// Creates a key directory whose active key is `first` and whose next key
/// `second` is published but an hour from signing.
fn two_published_keys(dir: &Path) -> (KeyDir, String, String) {
    let mut keys = KeyDir::create(dir, service(ISSUER)).unwrap();
    let first = keys.active_key().kid().to_owned();
    let rotation = Rotation {
        pre_publish: Duration::from_secs(3600),
        retention: Duration::from_secs(3600),
    };
    let second = keys.rotate(&rotation).unwrap().kid().to_owned();
    (keys, first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_key_rejected_after_forced_refresh() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("orders");
    let (mut keys, revoked_kid, next_kid) = two_published_keys(&dir);
    // The revoked key's holder (an attacker with a copy, say) keeps signing.
    let stolen = Signer::new(service(ISSUER), KeyDir::open(&dir).unwrap().into_active_key());
    let service_signer = Signer::new(service(ISSUER), KeyDir::open(&dir).unwrap().into_active_key());
    let publisher = Publisher::start(&keys, Duration::from_secs(300)).await;
    let remote = RemoteJwks::builder(publisher.url()).build().unwrap();
    let verifier = verifier_for(&remote);
    assert_verified(&verify(&verifier, &sign(&stolen)).await);

    let revocation = keys.revoke(&revoked_kid).unwrap();
    publisher.reload();
    assert_eq!(revocation.replacement.as_deref(), Some(next_kid.as_str()));
    assert_eq!(keys.active_key().kid(), next_kid);
    assert!(!dir.join(format!("{revoked_kid}.jwk")).exists());
    assert!(read_jwks(&keys.jwks_path()).find(&revoked_kid).is_none());

    // The verifier cached the set for 300 s: the revoked key still verifies,
    // which is why revocation needs a forced refresh.
    assert_verified(&verify(&verifier, &sign(&stolen)).await);
    verifier.trust_store().refresh_all().await.unwrap();
    assert_rejected(&verify(&verifier, &sign(&stolen)).await, Reason::UnknownKey);

    // The service's own signer follows the directory to the next key.
    assert!(trustwire::keys::reload_signer(&service_signer, &dir).unwrap());
    assert_eq!(service_signer.kid(), next_kid);
    assert_verified(&verify(&verifier, &sign(&service_signer)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_cap_drops_revoked_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("orders");
    let (mut keys, revoked_kid, _) = two_published_keys(&dir);
    let stolen = Signer::new(service(ISSUER), KeyDir::open(&dir).unwrap().into_active_key());
    let publisher = Publisher::start(&keys, Duration::from_secs(300)).await;
    let remote = RemoteJwks::builder(publisher.url())
        .ttl_bounds(Duration::from_millis(100), Duration::from_secs(3600))
        .build()
        .unwrap();
    let verifier = verifier_for(&remote);
    assert_verified(&verify(&verifier, &sign(&stolen)).await);

    keys.revoke(&revoked_kid).unwrap();
    publisher.reload();
    assert_verified(&verify(&verifier, &sign(&stolen)).await);

    // An incident cap of 500 ms: lookups after three quarters of it refresh
    // in the background, and the revoked key drops out without a restart.
    let capped_at = Instant::now();
    verifier.trust_store().set_ttl_cap(Some(Duration::from_millis(500)));
    let result = loop {
        let result = verify(&verifier, &sign(&stolen)).await;
        if result.is_err() || capped_at.elapsed() > Duration::from_secs(5) {
            break result;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_rejected(&result, Reason::UnknownKey);
    assert!(
        capped_at.elapsed() >= Duration::from_millis(300),
        "the cached keys were dropped before three quarters of the cap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_survives_restart_during_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = KeyDir::create(&tmp.path().join("orders"), service(ISSUER)).unwrap();
    let signer = Signer::new(service(ISSUER), KeyDir::open(keys.path()).unwrap().into_active_key());
    let snapshot = tmp.path().join("orders.snapshot.json");
    let publisher = Publisher::start(&keys, Duration::from_secs(60)).await;
    let url = publisher.url();

    let before_outage = RemoteJwks::builder(&url).snapshot(&snapshot).build().unwrap();
    before_outage.keys().await.unwrap();
    let mode = std::fs::metadata(&snapshot).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // The JWKS server goes down; the verifier restarts with a fresh cache.
    drop(publisher);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let restarted = RemoteJwks::builder(&url).snapshot(&snapshot).build().unwrap();
    assert_verified(&verify(&verifier_for(&restarted), &sign(&signer)).await);

    let without_snapshot = RemoteJwks::builder(&url).build().unwrap();
    assert_rejected(
        &verify(&verifier_for(&without_snapshot), &sign(&signer)).await,
        Reason::KeySourceUnavailable,
    );

    // A snapshot of another URL is not used.
    let other_url = url.replace(JWKS_PATH, "/other/jwks.json");
    let other = RemoteJwks::builder(&other_url).snapshot(&snapshot).build().unwrap();
    assert_rejected(
        &verify(&verifier_for(&other), &sign(&signer)).await,
        Reason::KeySourceUnavailable,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_expires_with_staleness() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = KeyDir::create(&tmp.path().join("orders"), service(ISSUER)).unwrap();
    let signer = Signer::new(service(ISSUER), KeyDir::open(keys.path()).unwrap().into_active_key());
    let snapshot = tmp.path().join("orders.snapshot.json");
    let publisher = Publisher::start(&keys, Duration::from_secs(1)).await;
    let url = publisher.url();
    let builder = || {
        RemoteJwks::builder(&url)
            .snapshot(&snapshot)
            .ttl_bounds(Duration::from_secs(1), Duration::from_secs(1))
            .max_staleness(Duration::from_secs(1))
    };
    builder().build().unwrap().keys().await.unwrap();
    drop(publisher);

    // Fetched with a 1 s TTL and 1 s of staleness allowed: usable for 2 s.
    let fresh = builder().build().unwrap();
    assert_verified(&verify(&verifier_for(&fresh), &sign(&signer)).await);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let too_old = builder().build().unwrap();
    assert_rejected(
        &verify(&verifier_for(&too_old), &sign(&signer)).await,
        Reason::KeySourceUnavailable,
    );
}

#[test]
fn old_key_dir_still_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = KeyDir::create(tmp.path(), service(ISSUER)).unwrap();
    let kid = keys.active_key().kid().to_owned();
    // A manifest as written before schedules and encryption keys existed.
    let manifest =
        format!(r#"{{"service":"orders","keys":[{{"kid":"{kid}","state":"active","created_at":1700000000}}]}}"#);
    std::fs::write(tmp.path().join("keys.json"), manifest).unwrap();

    let mut opened = KeyDir::open(tmp.path()).unwrap();
    assert_eq!(opened.active_key().kid(), kid);
    let records = opened.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].state, KeyState::Active);
    assert_eq!(records[0].activate_at, None);
    assert!(opened.advance().unwrap().is_empty());

    let next = opened.rotate(&Rotation::default()).unwrap().kid().to_owned();
    let records = opened.records();
    assert_eq!(records[1].kid, next);
    assert_eq!(records[1].state, KeyState::Next);
    assert_eq!(records[0].retire_at, records[1].activate_at);
}

#[test]
fn second_rotation_waits_for_next_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut keys, first, second) = two_published_keys(tmp.path());
    let err = keys.rotate(&Rotation::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("the next key {second} is not active yet")),
        "{err}"
    );
    assert_eq!(keys.active_key().kid(), first);
}

#[test]
fn revoke_unknown_or_revoked_key_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut keys, first, second) = two_published_keys(tmp.path());
    let err = keys.revoke("no-such-kid").unwrap_err();
    assert!(err.to_string().contains("has no key \"no-such-kid\""), "{err}");

    // Revoking the next key leaves the active key alone, and active for
    // good: it no longer retires when the revoked key would have started.
    let revocation = keys.revoke(&second).unwrap();
    assert_eq!(revocation.replacement, None);
    assert_eq!(keys.active_key().kid(), first);
    let records = keys.records();
    assert_eq!(records[0].kid, first);
    assert_eq!(records[0].retire_at, None);
    assert_eq!(records[0].remove_at, None);
    let third = keys.rotate(&Rotation::default()).unwrap().kid().to_owned();
    keys.revoke(&third).unwrap();
    let err = keys.revoke(&second).unwrap_err();
    assert!(err.to_string().contains("already revoked"), "{err}");

    // The active key without a next key: a new key replaces it.
    let revocation = keys.revoke(&first).unwrap();
    let replacement = revocation.replacement.unwrap();
    assert_ne!(replacement, first);
    assert_eq!(keys.active_key().kid(), replacement);
    let published = read_jwks(&keys.jwks_path());
    let kids: Vec<&str> = published.keys().iter().map(|key| key.kid()).collect();
    assert_eq!(kids, vec![replacement.as_str()]);
}

/// Two handles on one directory, as two processes would hold: a change
/// made through the stale one keeps the change made through the other.
#[test]
fn change_through_stale_handle_keeps_other_change() {
    let tmp = tempfile::tempdir().unwrap();
    let mut operator = KeyDir::create(tmp.path(), service(ISSUER)).unwrap();
    let mut timer = KeyDir::open(tmp.path()).unwrap();
    let first = operator.active_key().kid().to_owned();
    let encryption = operator.encryption_keys()[0].kid().to_owned();

    let next = operator.rotate(&Rotation::default()).unwrap().kid().to_owned();
    // `timer` was opened before the rotation; revoking the encryption key
    // through it must not write back a keys.json without the next key.
    let revocation = timer.revoke(&encryption).unwrap();
    let new_encryption = revocation.replacement.unwrap();

    let reopened = KeyDir::open(tmp.path()).unwrap();
    let states: BTreeMap<String, KeyState> = reopened
        .records()
        .into_iter()
        .map(|record| (record.kid, record.state))
        .collect();
    assert_eq!(states.len(), 4, "{states:?}");
    assert_eq!(states[&first], KeyState::Active);
    assert_eq!(states[&next], KeyState::Next);
    assert_eq!(states[&encryption], KeyState::Revoked);
    assert_eq!(states[&new_encryption], KeyState::Active);

    let published = read_jwks(&reopened.jwks_path());
    let mut kids: Vec<&str> = published.keys().iter().map(|key| key.kid()).collect();
    kids.sort_unstable();
    let mut expected = vec![first.as_str(), next.as_str()];
    expected.sort_unstable();
    assert_eq!(kids, expected);
    let encryption_kids: Vec<&str> = published.encryption_keys().iter().map(|key| key.kid()).collect();
    assert_eq!(encryption_kids, vec![new_encryption.as_str()]);
}

/// While the active encryption key is revoked again and again, a reader of
/// jwks.json and keys.json always finds an encryption key: the replacement
/// is written together with the revocation, not after it.
#[test]
fn encryption_key_revocation_leaves_no_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let mut keys = KeyDir::create(tmp.path(), service(ISSUER)).unwrap();
    let jwks_path = keys.jwks_path();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = Arc::clone(&stop);
        let dir = tmp.path().to_owned();
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(Ordering::SeqCst) {
                let published = read_jwks(&jwks_path);
                assert!(
                    !published.encryption_keys().is_empty(),
                    "jwks.json had no encryption key after {reads} reads"
                );
                let opened = KeyDir::open(&dir).unwrap();
                assert!(
                    !opened.encryption_keys().is_empty(),
                    "the directory opened without an encryption key after {reads} reads"
                );
                reads += 1;
            }
            reads
        })
    };

    for _ in 0..30 {
        let active = keys.encryption_keys()[0].kid().to_owned();
        let revocation = keys.revoke(&active).unwrap();
        assert!(revocation.replacement.is_some());
    }
    stop.store(true, Ordering::SeqCst);
    let reads = reader.join().unwrap();
    assert!(reads > 0, "the reader never read the directory");
}
