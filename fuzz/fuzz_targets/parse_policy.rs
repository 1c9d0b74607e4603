//! Fuzzes policy parsing and matching. The input is a policy file, a NUL
//! byte, and a channel or `METHOD /path` to match against every issuer the
//! policy names.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trustwire::{Binding, Policy};

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&byte| byte == 0).unwrap_or(data.len());
    let Ok(text) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let Ok(policy) = Policy::from_toml(text) else {
        return;
    };

    let probe = data
        .get(split + 1..)
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .unwrap_or("nats:orders.created");
    let binding = match probe.split_once(' ') {
        Some((method, path)) => Binding::http(method, path),
        None => Binding::channel(probe),
    };
    let Ok(binding) = binding else {
        return;
    };
    for issuer in ["orders", "payments", "gateway", probe] {
        let _ = policy.allows(issuer, Some(&binding));
        let _ = policy.allows(issuer, None);
    }
});
