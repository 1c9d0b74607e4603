//! Fuzzes JWK Set parsing, and checks that every accepted set survives a
//! round trip through its own serialisation with the same key ids.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trustwire::jwks::JwkSet;

fuzz_target!(|data: &[u8]| {
    let Ok(set) = JwkSet::parse(data) else {
        return;
    };
    let again = JwkSet::parse(set.to_json().as_bytes()).expect("a parsed set re-parses");
    let kids: Vec<&str> = set.keys().iter().map(|key| key.kid()).collect();
    let kids_again: Vec<&str> = again.keys().iter().map(|key| key.kid()).collect();
    assert_eq!(kids, kids_again);
    assert_eq!(set.encryption_keys().len(), again.encryption_keys().len());
});
