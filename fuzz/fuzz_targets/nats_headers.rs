//! Fuzzes reading the token from a received NATS message's headers, and
//! building its dead-lettered copy, through the checks the subscribers and
//! JetStream consumers run.
//!
//! The first input byte picks the mode. Bit 0 set: the opening (sealed)
//! receiver, clear: the plain one. Bit 1 set: the message has no headers at
//! all. The rest is the header block after the `NATS/1.0` version line.
//!
//! The block becomes a `HeaderMap` as async-nats 0.52 parses an `HMSG`.
//! Lines are split at `\n`, with a trailing `\r` dropped, and empty lines
//! are skipped. `HeaderName` validates the name before the first `:`. The
//! value is trimmed, following lines that start with whitespace are
//! appended, and each remaining `\r` becomes a space. An input that
//! async-nats would reject is skipped, because such a message never
//! reaches a subscriber.

#![no_main]

use std::str::FromStr;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use trustwire::Reason;
use trustwire::fuzzing::nats::{dead_letter_headers, plain_token, sealed_token};

const TOKEN_HEADER: &str = "Trustwire-Token";
const SEALED_HEADER: &str = "Trustwire-Sealed";
const SUBJECT: &str = "orders.created";

/// Parses `block` the way async-nats does, returning the map and the
/// (name, value) pairs in arrival order, or `None` where async-nats would
/// fail the message.
fn parse(block: &str) -> Option<(HeaderMap, Vec<(String, String)>)> {
    let mut headers = HeaderMap::new();
    let mut pairs = Vec::new();
    let mut lines = block.lines().peekable();
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        let (name, value) = line.split_once(':')?;
        let name = HeaderName::from_str(name).ok()?;
        let mut value = value.trim_start().to_owned();
        while let Some(next) = lines.next_if(|next| next.starts_with(char::is_whitespace)) {
            value.push_str(next);
        }
        value.truncate(value.trim_end().len());

        let value = HeaderValue::from_lossy(&value);
        pairs.push((name.to_string(), value.as_str().to_owned()));
        headers.append(name, value);
    }
    Some((headers, pairs))
}

/// Computes the outcome the receivers promise from the pairs alone.
fn expected(pairs: &[(String, String)], sealed_receiver: bool) -> Result<String, Reason> {
    let marked = pairs.iter().any(|(name, _)| name.eq_ignore_ascii_case(SEALED_HEADER));
    if marked != sealed_receiver {
        return Err(Reason::WrongType);
    }
    let tokens: Vec<&String> = pairs
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case(TOKEN_HEADER))
        .map(|(_, value)| value)
        .collect();
    match tokens.as_slice() {
        [token] => Ok((*token).clone()),
        _ => Err(Reason::Malformed),
    }
}

fn values_named<'a>(headers: &'a HeaderMap, target: &str) -> Vec<&'a str> {
    let mut found = Vec::new();
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        if name.eq_ignore_ascii_case(target) {
            found.extend(values.iter().map(HeaderValue::as_str));
        }
    }
    found
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let sealed_receiver = mode & 1 == 1;
    let no_headers = mode & 2 == 2;
    let Ok(block) = std::str::from_utf8(rest) else {
        return;
    };
    let Some((map, pairs)) = parse(block) else {
        return;
    };
    let (headers, pairs) = if no_headers {
        (None, Vec::new())
    } else {
        (Some(&map), pairs)
    };

    let read = if sealed_receiver {
        sealed_token(headers)
    } else {
        plain_token(headers)
    };
    let outcome = read.map(str::to_owned).map_err(|rejection| rejection.reason());
    assert_eq!(outcome, expected(&pairs, sealed_receiver));

    // A rejected message's headers go on to its dead-lettered copy.
    let code = match &outcome {
        Ok(_) => Reason::BadSignature.code(),
        Err(reason) => reason.code(),
    };
    let copy = dead_letter_headers(headers, code, SUBJECT);
    assert_eq!(values_named(&copy, "Trustwire-Rejected"), [code]);
    assert_eq!(values_named(&copy, "Trustwire-Original-Subject"), [SUBJECT]);
    for (name, values) in copy.iter() {
        let name: &str = name.as_ref();
        assert!(
            !name.to_ascii_lowercase().starts_with("nats-"),
            "{name} kept its Nats- prefix"
        );
        for value in values {
            assert!(!value.as_str().contains(['\r', '\n']), "{name} has a line break");
        }
    }
    // Names that differ in case are separate map entries, iterated in no
    // fixed order, so the values are compared sorted.
    let mut original_tokens = headers
        .map(|headers| values_named(headers, TOKEN_HEADER))
        .unwrap_or_default();
    let mut copied_tokens = values_named(&copy, TOKEN_HEADER);
    original_tokens.sort_unstable();
    copied_tokens.sort_unstable();
    assert_eq!(copied_tokens, original_tokens);
});
