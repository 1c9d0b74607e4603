//! RFC 7638 JWK thumbprints, used as key ids.

use sha2::{Digest, Sha256};

use crate::encoding::b64_encode;

/// Computes the RFC 7638 SHA-256 thumbprint of an OKP key (`crv`, `x`).
pub(crate) fn okp_thumbprint(crv: &str, x: &str) -> String {
    // RFC 7638 section 3.2: the required members only, in lexicographic order,
    // no whitespace. `crv` and `x` are base64url or fixed names, so no escaping
    // is needed, but serde_json writes them to be safe.
    let canonical = format!(r#"{{"crv":{},"kty":"OKP","x":{}}}"#, json_string(crv), json_string(x));
    b64_encode(&Sha256::digest(canonical.as_bytes()))
}

/// Computes the RFC 7638 SHA-256 thumbprint of an EC key (`crv`, `x`, `y`).
pub(crate) fn ec_thumbprint(crv: &str, x: &str, y: &str) -> String {
    let canonical = format!(
        r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
        json_string(crv),
        json_string(x),
        json_string(y)
    );
    b64_encode(&Sha256::digest(canonical.as_bytes()))
}

/// Computes the RFC 7638 SHA-256 thumbprint of an RSA key (`e`, `n`); used
/// only by the thumbprint test vector, since RSA keys are not accepted.
#[cfg(test)]
pub(crate) fn rsa_thumbprint(e: &str, n: &str) -> String {
    let canonical = format!(r#"{{"e":{},"kty":"RSA","n":{}}}"#, json_string(e), json_string(n));
    b64_encode(&Sha256::digest(canonical.as_bytes()))
}

fn json_string(value: &str) -> String {
    serde_json::Value::String(value.to_owned()).to_string()
}
