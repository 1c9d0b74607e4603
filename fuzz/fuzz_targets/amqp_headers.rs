//! Fuzzes reading the token from a RabbitMQ delivery's headers through the
//! checks the plain and opening `VerifyingConsumer` run.
//!
//! The first input byte picks the mode. Bit 0 set: the opening (sealed)
//! consumer, clear: the plain one. Bit 1 set: the rest is the encoded
//! content-header properties, decoded by lapin's own parser as a delivery
//! is. Bit 1 clear: the rest drives an `Unstructured` that builds a header
//! table of every AMQP field type, nested tables and arrays included. Two
//! thirds of the names are the token or marker header in some case, or
//! another trustwire or RabbitMQ header.

#![no_main]

use lapin::BasicProperties;
use lapin::protocol::basic::parse_properties;
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString};
use libfuzzer_sys::arbitrary::{Error as BuildError, Result as BuildResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use trustwire::Reason;
use trustwire::fuzzing::amqp::{plain_token, sealed_token};

const TOKEN_HEADER: &str = "trustwire-token";
const SEALED_HEADER: &str = "trustwire-sealed";
const NAMES: [&str; 6] = [
    TOKEN_HEADER,
    "Trustwire-Token",
    SEALED_HEADER,
    "TRUSTWIRE-SEALED",
    "trustwire-rejected",
    "x-death",
];
/// Deeper tables add nothing the consumer reads, only build time.
const MAX_DEPTH: u32 = 4;

/// Builds a short string of at most 255 bytes, as the wire format allows.
/// lapin's `ShortString::from` panics on a longer one.
fn short_string(input: &mut Unstructured<'_>) -> BuildResult<ShortString> {
    ShortString::try_new(input.arbitrary::<String>()?).map_err(|_| BuildError::IncorrectFormat)
}

fn name(input: &mut Unstructured<'_>) -> BuildResult<ShortString> {
    if input.ratio(2, 3)? {
        Ok(ShortString::from(*input.choose(&NAMES)?))
    } else {
        short_string(input)
    }
}

fn table(input: &mut Unstructured<'_>, depth: u32) -> BuildResult<FieldTable> {
    let mut table = FieldTable::default();
    let entries = input.int_in_range(0..=6)?;
    for _ in 0..entries {
        table.insert(name(input)?, value(input, depth)?);
    }
    Ok(table)
}

fn value(input: &mut Unstructured<'_>, depth: u32) -> BuildResult<AMQPValue> {
    let last_kind = if depth < MAX_DEPTH { 17 } else { 15 };
    Ok(match input.int_in_range(0..=last_kind)? {
        0 => AMQPValue::Boolean(input.arbitrary()?),
        1 => AMQPValue::ShortShortInt(input.arbitrary()?),
        2 => AMQPValue::ShortShortUInt(input.arbitrary()?),
        3 => AMQPValue::ShortInt(input.arbitrary()?),
        4 => AMQPValue::ShortUInt(input.arbitrary()?),
        5 => AMQPValue::LongInt(input.arbitrary()?),
        6 => AMQPValue::LongUInt(input.arbitrary()?),
        7 => AMQPValue::LongLongInt(input.arbitrary()?),
        8 => AMQPValue::Float(input.arbitrary()?),
        9 => AMQPValue::Double(input.arbitrary()?),
        10 => AMQPValue::DecimalValue(DecimalValue {
            scale: input.arbitrary()?,
            value: input.arbitrary()?,
        }),
        11 => AMQPValue::ShortString(short_string(input)?),
        12 => AMQPValue::LongString(LongString::from(input.arbitrary::<Vec<u8>>()?)),
        13 => AMQPValue::ByteArray(ByteArray::from(input.arbitrary::<Vec<u8>>()?)),
        14 => AMQPValue::Timestamp(input.arbitrary()?),
        15 => AMQPValue::Void,
        16 => {
            let len = input.int_in_range(0..=4)?;
            let mut items = Vec::with_capacity(len);
            for _ in 0..len {
                items.push(value(input, depth + 1)?);
            }
            AMQPValue::FieldArray(FieldArray::from(items))
        }
        _ => AMQPValue::FieldTable(table(input, depth + 1)?),
    })
}

/// Computes the outcome the consumers promise from the table alone.
fn expected(headers: Option<&FieldTable>, sealed_consumer: bool) -> Result<Vec<u8>, Reason> {
    let Some(headers) = headers else {
        return Err(Reason::Malformed);
    };
    let Some(AMQPValue::LongString(token)) = headers.inner().get(TOKEN_HEADER) else {
        return Err(Reason::Malformed);
    };
    if std::str::from_utf8(token.as_bytes()).is_err() {
        return Err(Reason::Malformed);
    }
    let marked = headers
        .inner()
        .keys()
        .any(|name| name.as_str().eq_ignore_ascii_case(SEALED_HEADER));
    if marked != sealed_consumer {
        return Err(Reason::WrongType);
    }
    Ok(token.as_bytes().to_vec())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let sealed_consumer = mode & 1 == 1;
    let properties = if mode & 2 == 2 {
        match parse_properties(rest) {
            Ok((_, properties)) => properties,
            Err(_) => return,
        }
    } else {
        let Ok(headers) = table(&mut Unstructured::new(rest), 0) else {
            return;
        };
        BasicProperties::default().with_headers(headers)
    };

    let read = if sealed_consumer {
        sealed_token(&properties)
    } else {
        plain_token(&properties)
    };
    let outcome = read
        .map(|token| token.as_bytes().to_vec())
        .map_err(|rejection| rejection.reason());
    assert_eq!(outcome, expected(properties.headers().as_ref(), sealed_consumer));
});
