//! Fuzzes token extraction from HTTP requests through the real
//! `VerifyLayer`. The input contains the method, the request target, up to two
//! `Authorization` values and the body, separated by NUL bytes. Values that
//! `http` itself rejects (CR, LF, NUL) never reach a server, so they are
//! skipped here too.

#![no_main]

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use libfuzzer_sys::fuzz_target;
use tower::{Layer, ServiceExt};
use trustwire::clock::FixedClock;
use trustwire::http::VerifyLayer;
use trustwire::jwks::{JwkSet, KeySource, TrustStore};
use trustwire::{ServiceId, SigningKey, Verifier};

struct Target {
    runtime: tokio::runtime::Runtime,
    layer: VerifyLayer,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let key = SigningKey::from_seed(&[7; 32]).expect("a fixed seed is a valid key");
        let set = JwkSet::from_keys(vec![key.public_key().clone()]);
        let trust = TrustStore::new().trust(
            ServiceId::new("orders").expect("valid service id"),
            KeySource::inline(set),
        );
        let verifier = Verifier::builder(ServiceId::new("payments").expect("valid service id"), trust)
            .clock(Arc::new(FixedClock::new(1_800_000_000)))
            .build()
            .expect("valid verifier options");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime");
        Target {
            runtime,
            layer: VerifyLayer::new(verifier).max_body_bytes(64 * 1024),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(5, |&byte| byte == 0);
    let method = parts.next().unwrap_or_default();
    let target_text = parts.next().unwrap_or(b"/");
    let first = parts.next();
    let second = parts.next();
    let body = parts.next().unwrap_or_default().to_vec();

    let mut request = Request::builder().method(method).uri(target_text);
    for value in [first, second].into_iter().flatten() {
        let Ok(value) = HeaderValue::from_bytes(value) else {
            return;
        };
        request = request.header(AUTHORIZATION, value);
    }
    let Ok(request) = request.body(Full::new(Bytes::from(body))) else {
        return;
    };

    let target = target();
    let inner = tower::service_fn(|_request: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    });
    let service = target.layer.layer(inner);
    let response = target
        .runtime
        .block_on(service.oneshot(request))
        .expect("the inner service never fails");
    // No token signed by the trusted key can come out of random bytes.
    assert_ne!(response.status(), StatusCode::OK);
});
