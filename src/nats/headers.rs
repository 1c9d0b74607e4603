//! Header names, reading the token from a received message, and building
//! outgoing header maps without reaching async-nats' panicking paths.
//!
//! async-nats 0.52 panics when a `&str` or `String` that is not a valid
//! header name is passed to `HeaderMap::insert`, `append` or `get`. This
//! module only ever passes its own constant names that way; names and values
//! that came from the network are copied as the typed `HeaderName` and
//! `HeaderValue` the parser produced, and every value is re-checked for
//! `\r` and `\n` before it is sent again.

use async_nats::{HeaderMap, HeaderName, HeaderValue};

use crate::envelope::{Binding, InvalidBinding, Reason, Rejection};

/// The header that carries the signed token.
pub const TOKEN_HEADER: &str = "Trustwire-Token";

/// The header a dead-lettered copy carries: the rejection's reason code.
pub const REJECTED_HEADER: &str = "Trustwire-Rejected";

/// The header a dead-lettered copy carries: the subject the message arrived on.
pub const ORIGINAL_SUBJECT_HEADER: &str = "Trustwire-Original-Subject";

/// The header a dead-lettered JetStream message carries: its stream.
pub const ORIGINAL_STREAM_HEADER: &str = "Trustwire-Original-Stream";

/// The header a dead-lettered JetStream message carries: its stream sequence.
pub const ORIGINAL_SEQUENCE_HEADER: &str = "Trustwire-Original-Sequence";

/// Prefix given to the original message's `Nats-*` headers in a dead-lettered
/// copy. Kept as they were, headers such as `Nats-Msg-Id`, `Nats-Rollup` or
/// `Nats-Expected-Last-Sequence` would let a forged message deduplicate,
/// purge or block the dead-letter stream.
pub const ORIGINAL_HEADER_PREFIX: &str = "Trustwire-Original-";

/// The largest header block JetStream stores, in bytes as sent: from the
/// `NATS/1.0` line through the blank line that ends the block.
///
/// nats-server stores the header length in 16 bits, so it rejects a
/// JetStream publish with a longer block with error 10097 ("header size
/// exceeds maximum allowed of 64k") and stores nothing. Measured on
/// nats-server 2.9.10 with memory and file streams: 65,535 bytes are
/// stored, 65,536 are rejected. Core NATS has no such limit, only the
/// server's `max_payload` (1 MiB by default) for headers and payload
/// together.
pub const MAX_JETSTREAM_HEADER_BYTES: usize = 65_535;

/// The channel binding of a NATS subject: `nats:<subject>`.
pub fn channel_binding(subject: &str) -> Result<Binding, InvalidBinding> {
    Binding::channel(format!("nats:{subject}"))
}

/// Reads the one token of a received message.
///
/// A message without the header, or with more than one (names compared
/// ASCII case-insensitively, so `trustwire-token` counts), is `malformed`:
/// two tokens would let different readers verify different ones.
pub(crate) fn read_token(headers: Option<&HeaderMap>) -> Result<&str, Rejection> {
    let Some(headers) = headers else {
        return Err(Rejection::new(
            Reason::Malformed,
            "the message has no headers, so no Trustwire-Token",
        ));
    };

    let mut found: Option<&str> = None;
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        if !name.eq_ignore_ascii_case(TOKEN_HEADER) {
            continue;
        }
        for value in values {
            if found.is_some() {
                return Err(Rejection::new(
                    Reason::Malformed,
                    "the message has more than one Trustwire-Token header",
                ));
            }
            found = Some(value.as_str());
        }
    }

    found.ok_or_else(|| Rejection::new(Reason::Malformed, "the message has no Trustwire-Token header"))
}

/// Copies `user` headers and adds the token, dropping any token header the
/// caller left in (under any case), so exactly one token is sent.
pub(crate) fn with_token(user: Option<&HeaderMap>, token: &str) -> Result<HeaderMap, InvalidHeader> {
    let mut headers = HeaderMap::new();
    if let Some(user) = user {
        for (name, values) in user.iter() {
            let text: &str = name.as_ref();
            if text.eq_ignore_ascii_case(TOKEN_HEADER) {
                continue;
            }
            for value in values {
                headers.append(name.clone(), checked_value(text, value.as_str())?);
            }
        }
    }
    headers.insert(
        HeaderName::from_static(TOKEN_HEADER),
        checked_value(TOKEN_HEADER, token)?,
    );
    Ok(headers)
}

/// Builds the headers of a dead-lettered copy: the original headers (with
/// `Nats-*` and earlier `Trustwire-Rejected`/`Trustwire-Original-*` names
/// renamed or dropped), then the reason code and where the message came from.
pub(crate) fn dead_letter_headers(
    original: Option<&HeaderMap>,
    code: &str,
    origin: &[(&'static str, String)],
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(original) = original {
        for (name, values) in original.iter() {
            let text: &str = name.as_ref();
            let lower = text.to_ascii_lowercase();
            // A forger could pre-set these to mislead whoever reads the dead letters.
            if lower == REJECTED_HEADER.to_ascii_lowercase()
                || lower.starts_with(&ORIGINAL_HEADER_PREFIX.to_ascii_lowercase())
            {
                continue;
            }
            let name = if lower.starts_with("nats-") {
                // The parser already checked the name, so the prefixed one is valid too.
                match HeaderName::try_from(format!("{ORIGINAL_HEADER_PREFIX}{text}")) {
                    Ok(renamed) => renamed,
                    Err(_) => continue,
                }
            } else {
                name.clone()
            };
            for value in values {
                // from_lossy turns each '\r' or '\n' into a space, so a value the
                // parser let through cannot add a header line to the copy.
                headers.append(name.clone(), HeaderValue::from_lossy(value.as_str()));
            }
        }
    }

    headers.insert(HeaderName::from_static(REJECTED_HEADER), HeaderValue::from_lossy(code));
    for (name, value) in origin {
        headers.insert(HeaderName::from_static(name), HeaderValue::from_lossy(value));
    }
    headers
}

/// Computes the size of `headers` as async-nats 0.52 sends them:
/// `NATS/1.0\r\n`, then `Name: value\r\n` for each value, then `\r\n`.
pub(crate) fn encoded_len(headers: &HeaderMap) -> usize {
    let mut len = "NATS/1.0\r\n".len() + "\r\n".len();
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        for value in values {
            len += name.len() + ": ".len() + value.as_str().len() + "\r\n".len();
        }
    }
    len
}

/// Rejects `headers` when JetStream would not store them, before anything
/// is sent: see [`MAX_JETSTREAM_HEADER_BYTES`].
pub(crate) fn check_jetstream_len(headers: &HeaderMap) -> Result<(), HeadersTooLarge> {
    let header_bytes = encoded_len(headers);
    if header_bytes > MAX_JETSTREAM_HEADER_BYTES {
        return Err(HeadersTooLarge { header_bytes });
    }
    Ok(())
}

/// Headers, the token included, above [`MAX_JETSTREAM_HEADER_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the message headers with the token take {header_bytes} bytes, above JetStream's limit of {MAX_JETSTREAM_HEADER_BYTES}; send fewer or smaller headers"
)]
pub struct HeadersTooLarge {
    /// The size of the header block that would have been sent.
    pub header_bytes: usize,
}

/// A header value that contains `\r` or `\n`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("header {name:?} has a value with a carriage return or line feed, which NATS headers cannot carry")]
pub struct InvalidHeader {
    name: String,
}

fn checked_value(name: &str, value: &str) -> Result<HeaderValue, InvalidHeader> {
    HeaderValue::try_from(value).map_err(|_| InvalidHeader { name: name.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            let name = HeaderName::try_from(*name).unwrap();
            headers.append(name, HeaderValue::from_lossy(value));
        }
        headers
    }

    #[test]
    fn one_token_read() {
        let headers = map(&[(TOKEN_HEADER, "a.b.c"), ("Other", "x")]);
        assert_eq!(read_token(Some(&headers)).unwrap(), "a.b.c");
    }

    #[test]
    fn missing_token_malformed() {
        assert_eq!(read_token(None).unwrap_err().reason(), Reason::Malformed);
        let headers = map(&[("Other", "x")]);
        assert_eq!(read_token(Some(&headers)).unwrap_err().reason(), Reason::Malformed);
    }

    #[test]
    fn two_tokens_malformed() {
        let same_case = map(&[(TOKEN_HEADER, "a.b.c"), (TOKEN_HEADER, "d.e.f")]);
        assert_eq!(read_token(Some(&same_case)).unwrap_err().reason(), Reason::Malformed);

        let mixed_case = map(&[(TOKEN_HEADER, "a.b.c"), ("trustwire-token", "d.e.f")]);
        assert_eq!(read_token(Some(&mixed_case)).unwrap_err().reason(), Reason::Malformed);
    }

    #[test]
    fn caller_token_replaced() {
        let user = map(&[("TRUSTWIRE-TOKEN", "old"), ("Keep", "1")]);
        let headers = with_token(Some(&user), "new").unwrap();
        assert_eq!(read_token(Some(&headers)).unwrap(), "new");
        assert_eq!(headers.get("Keep").unwrap().as_str(), "1");
    }

    #[test]
    fn value_with_newline_rejected() {
        assert!(checked_value("App", "x\r\nTrustwire-Token: forged").is_err());
        assert!(checked_value("App", "a.b.c").is_ok());
    }

    #[test]
    fn encoded_len_matches_wire_format() {
        let headers = map(&[(TOKEN_HEADER, "a.b.c"), ("App", "1"), ("App", "22")]);
        let wire = "NATS/1.0\r\nTrustwire-Token: a.b.c\r\nApp: 1\r\nApp: 22\r\n\r\n";
        assert_eq!(encoded_len(&headers), wire.len());
        assert_eq!(encoded_len(&HeaderMap::new()), "NATS/1.0\r\n\r\n".len());
    }

    #[test]
    fn jetstream_limit_inclusive() {
        let fixed = encoded_len(&map(&[(TOKEN_HEADER, "")]));
        let at_limit = map(&[(TOKEN_HEADER, &"t".repeat(MAX_JETSTREAM_HEADER_BYTES - fixed))]);
        let above = map(&[(TOKEN_HEADER, &"t".repeat(MAX_JETSTREAM_HEADER_BYTES - fixed + 1))]);

        assert_eq!(check_jetstream_len(&at_limit), Ok(()));
        assert_eq!(
            check_jetstream_len(&above),
            Err(HeadersTooLarge {
                header_bytes: MAX_JETSTREAM_HEADER_BYTES + 1
            })
        );
    }

    #[test]
    fn dead_letter_headers_neutralise_control_headers() {
        let original = map(&[
            (TOKEN_HEADER, "a.b.c"),
            ("Nats-Msg-Id", "1"),
            (REJECTED_HEADER, "none"),
            ("Trustwire-Original-Subject", "fake"),
            ("App", "v"),
        ]);
        let headers = dead_letter_headers(
            Some(&original),
            "bad_signature",
            &[(ORIGINAL_SUBJECT_HEADER, "orders.created".into())],
        );
        assert_eq!(headers.get(REJECTED_HEADER).unwrap().as_str(), "bad_signature");
        assert_eq!(headers.get(ORIGINAL_SUBJECT_HEADER).unwrap().as_str(), "orders.created");
        assert_eq!(headers.get("Trustwire-Original-Nats-Msg-Id").unwrap().as_str(), "1");
        assert!(headers.get("Nats-Msg-Id").is_none());
        assert_eq!(headers.get(TOKEN_HEADER).unwrap().as_str(), "a.b.c");
        assert_eq!(headers.get("App").unwrap().as_str(), "v");
    }
}
