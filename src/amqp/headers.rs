//! Reading and writing the trustwire headers in an AMQP field table, and
//! checking that a message's properties fit in one frame.

use lapin::BasicProperties;
use lapin::protocol::basic::gen_properties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::envelope::{Reason, Rejection};

/// The header that carries the signed token, as an AMQP long string.
pub const TOKEN_HEADER: &str = "trustwire-token";

/// The header a dead-lettered copy carries with the rejection's reason code,
/// such as `bad_signature`.
pub const REJECTED_HEADER: &str = "trustwire-rejected";

/// The header a dead-lettered copy carries with the handler's error, when
/// the token verified but the handler failed on every delivery.
pub const HANDLER_ERROR_HEADER: &str = "trustwire-handler-error";

/// The exchange the rejected message was published to.
pub const ORIGINAL_EXCHANGE_HEADER: &str = "trustwire-original-exchange";

/// The routing key the rejected message was published with.
pub const ORIGINAL_ROUTING_KEY_HEADER: &str = "trustwire-original-routing-key";

/// The service whose consumer rejected the message.
pub const CONSUMER_HEADER: &str = "trustwire-consumer";

/// Set to `true` when the original headers did not fit in one frame with
/// the trustwire headers and were left out of the dead-lettered copy.
pub const HEADERS_DROPPED_HEADER: &str = "trustwire-headers-dropped";

/// Bytes of a content header frame around the encoded properties: frame
/// type (1), channel (2), size (4), class id (2), weight (2), body size (8)
/// and the frame end octet (1), as AMQP 0-9-1 section 4.2.6 lays them out.
const HEADER_FRAME_OVERHEAD: usize = 20;

/// Returns the AMQP type of a field-table value, named as the specification does.
pub(crate) fn type_name(value: &AMQPValue) -> &'static str {
    match value {
        AMQPValue::Boolean(_) => "boolean",
        AMQPValue::ShortShortInt(_) => "short-short-int",
        AMQPValue::ShortShortUInt(_) => "short-short-uint",
        AMQPValue::ShortInt(_) => "short-int",
        AMQPValue::ShortUInt(_) => "short-uint",
        AMQPValue::LongInt(_) => "long-int",
        AMQPValue::LongUInt(_) => "long-uint",
        AMQPValue::LongLongInt(_) => "long-long-int",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) => "short string",
        AMQPValue::LongString(_) => "long string",
        AMQPValue::FieldArray(_) => "field array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "field table",
        AMQPValue::ByteArray(_) => "byte array",
        AMQPValue::Void => "void",
    }
}

/// Reads the token from the `trustwire-token` header.
///
/// Anything but a UTF-8 long string is rejected as `malformed`: a missing
/// header, a byte array, a nested table, a number. A short string is
/// rejected too, although no RabbitMQ delivery can carry one.
pub(crate) fn token_from(properties: &BasicProperties) -> Result<&str, Rejection> {
    let value = properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(TOKEN_HEADER));
    let Some(value) = value else {
        return Err(Rejection::new(
            Reason::Malformed,
            format!("the message has no {TOKEN_HEADER} header"),
        ));
    };
    let AMQPValue::LongString(text) = value else {
        return Err(Rejection::new(
            Reason::Malformed,
            format!(
                "the {TOKEN_HEADER} header is an AMQP {}, expected a long string",
                type_name(value)
            ),
        ));
    };
    std::str::from_utf8(text.as_bytes()).map_err(|_| {
        Rejection::new(
            Reason::Malformed,
            format!("the {TOKEN_HEADER} header is not valid UTF-8"),
        )
    })
}

/// Finds the first short-string value in `table`, nested tables and arrays
/// included, and returns its header name.
///
/// RabbitMQ does not take the `s` field type of the AMQP 0-9-1 grammar as a
/// short string: a short string anywhere in the headers makes it close the
/// whole connection (3.10 replies `INTERNAL_ERROR`).
pub(crate) fn find_short_string(table: &FieldTable) -> Option<String> {
    table.inner().iter().find_map(|(name, value)| {
        if value_has_short_string(value) {
            Some(name.to_string())
        } else {
            None
        }
    })
}

fn value_has_short_string(value: &AMQPValue) -> bool {
    match value {
        AMQPValue::ShortString(_) => true,
        AMQPValue::FieldTable(table) => table.inner().values().any(value_has_short_string),
        AMQPValue::FieldArray(array) => array.as_slice().iter().any(value_has_short_string),
        _ => false,
    }
}

/// Returns `headers` with `name` set to the long string `value`.
pub(crate) fn with_long_string(mut headers: FieldTable, name: &str, value: impl Into<LongString>) -> FieldTable {
    headers.insert(ShortString::from(name), AMQPValue::LongString(value.into()));
    headers
}

/// Computes the size in bytes of the content header frame that carries
/// `properties`, encoded by the same code lapin sends it with.
pub(crate) fn header_frame_len(properties: &BasicProperties) -> Result<usize, String> {
    let serialize = gen_properties::<Vec<u8>>(properties);
    let context =
        serialize(Vec::new().into()).map_err(|err| format!("cannot encode the message properties: {err:?}"))?;
    let encoded = usize::try_from(context.position).unwrap_or(usize::MAX);
    Ok(encoded.saturating_add(HEADER_FRAME_OVERHEAD))
}

#[cfg(test)]
mod tests {
    use lapin::types::{ByteArray, FieldArray};

    use super::*;

    fn with_token_value(value: AMQPValue) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from(TOKEN_HEADER), value);
        BasicProperties::default().with_headers(headers)
    }

    #[test]
    fn long_string_token_read() {
        let properties = with_token_value(AMQPValue::LongString("a.b.c".into()));
        assert_eq!(token_from(&properties).unwrap(), "a.b.c");
    }

    #[test]
    fn unexpected_types_malformed() {
        let mut nested = FieldTable::default();
        nested.insert(ShortString::from("x"), AMQPValue::LongString("a.b.c".into()));
        let cases = [
            (AMQPValue::ByteArray(ByteArray::from(b"a.b.c".as_slice())), "byte array"),
            (AMQPValue::ShortString(ShortString::from("a.b.c")), "short string"),
            (AMQPValue::FieldTable(nested), "field table"),
            (
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Boolean(true)])),
                "field array",
            ),
            (AMQPValue::LongLongInt(7), "long-long-int"),
            (AMQPValue::Void, "void"),
        ];
        for (value, name) in cases {
            let rejection = token_from(&with_token_value(value)).unwrap_err();
            assert_eq!(rejection.reason(), Reason::Malformed, "{name}");
            assert!(rejection.detail().contains(name), "{name}: {}", rejection.detail());
        }
    }

    #[test]
    fn missing_header_malformed() {
        let rejection = token_from(&BasicProperties::default()).unwrap_err();
        assert_eq!(rejection.reason(), Reason::Malformed);
        let other = BasicProperties::default().with_headers(with_long_string(FieldTable::default(), "other", "x"));
        assert_eq!(token_from(&other).unwrap_err().reason(), Reason::Malformed);
    }

    #[test]
    fn invalid_utf8_malformed() {
        let properties = with_token_value(AMQPValue::LongString(vec![0xff, 0xfe].into()));
        let rejection = token_from(&properties).unwrap_err();
        assert_eq!(rejection.reason(), Reason::Malformed);
    }

    #[test]
    fn nested_short_string_found() {
        let mut inner = FieldTable::default();
        inner.insert(
            ShortString::from("deep"),
            AMQPValue::ShortString(ShortString::from("x")),
        );
        let mut headers = with_long_string(FieldTable::default(), "fine", "x");
        assert_eq!(find_short_string(&headers), None);
        headers.insert(
            ShortString::from("outer"),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(inner)])),
        );
        assert_eq!(find_short_string(&headers).as_deref(), Some("outer"));
    }

    #[test]
    fn header_frame_len_counts_headers() {
        let empty = header_frame_len(&BasicProperties::default()).unwrap();
        // Only the 16-bit property flags follow the fixed fields.
        assert_eq!(empty, HEADER_FRAME_OVERHEAD + 2);

        let token = "t".repeat(1000);
        let properties =
            BasicProperties::default().with_headers(with_long_string(FieldTable::default(), TOKEN_HEADER, token));
        // flags (2) + table length (4) + name length (1) + name + type tag (1)
        // + string length (4) + string.
        let expected = HEADER_FRAME_OVERHEAD + 2 + 4 + 1 + TOKEN_HEADER.len() + 1 + 4 + 1000;
        assert_eq!(header_frame_len(&properties).unwrap(), expected);
    }
}
