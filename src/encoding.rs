//! Strict base64url and JSON decoding for bytes that come from the network.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Maximum nesting depth of JSON objects and arrays accepted in a token or JWKS.
pub(crate) const MAX_JSON_DEPTH: usize = 16;

/// Encodes bytes as unpadded base64url (RFC 7515 section 2).
pub(crate) fn b64_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Appends the unpadded base64url of `bytes` to `text`.
pub(crate) fn b64_encode_into(bytes: &[u8], text: &mut String) {
    URL_SAFE_NO_PAD.encode_string(bytes, text);
}

/// Decodes unpadded base64url, rejecting padding, whitespace, characters of
/// the standard alphabet and non-zero trailing bits, so each value has
/// exactly one accepted encoding.
pub(crate) fn b64_decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(text)
}

/// Decodes base64url into a fixed-size array; `None` when the text is not
/// strict base64url or has the wrong length.
pub(crate) fn b64_decode_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = b64_decode(text).ok()?;
    bytes.try_into().ok()
}

/// Why a JSON document was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JsonError(pub(crate) String);

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a JSON object, rejecting duplicate member names at any depth
/// (after unescaping, so `"alg"` and `"\u0061lg"` are the same name),
/// nesting deeper than [`MAX_JSON_DEPTH`] and anything but an object at the top.
///
/// RFC 7515 section 5.2 lets a JWS parser either reject duplicates or keep the
/// last one; keeping one silently is how two parsers end up disagreeing about
/// what a token says, so this parser rejects them.
pub(crate) fn parse_object(bytes: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, JsonError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue { depth: 0 }
        .deserialize(&mut deserializer)
        .map_err(|err| JsonError(err.to_string()))?;
    deserializer.end().map_err(|err| JsonError(err.to_string()))?;

    match value {
        serde_json::Value::Object(map) => Ok(map),
        _ => Err(JsonError("expected a JSON object".to_owned())),
    }
}

/// Parses a JSON object with `visitor`, and rejects data after the object.
fn parse_object_with<'de, V: Visitor<'de>>(bytes: &'de [u8], visitor: V) -> Result<V::Value, JsonError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = deserializer
        .deserialize_map(visitor)
        .map_err(|err| JsonError(err.to_string()))?;
    deserializer.end().map_err(|err| JsonError(err.to_string()))?;
    Ok(value)
}

/// Builds the error for a member name that appears twice in one object.
fn duplicate_member<E: de::Error>(name: &str) -> E {
    let shown: String = name.chars().take(40).collect();
    de::Error::custom(format!("duplicate member name {shown:?}"))
}

/// The members of a JSON object, parsed in one pass with the checks of
/// [`parse_object`]: the members named in `names` in fixed slots, any others
/// in a map.
///
/// Finding a known member by its position instead of through a map is most
/// of the cost of reading a small token's header and claims.
#[derive(Debug)]
pub(crate) struct Members<const N: usize> {
    names: &'static MemberNames<N>,
    known: [Option<serde_json::Value>; N],
    others: serde_json::Map<String, serde_json::Value>,
}

/// The member names that get fixed slots in [`Members`], each also packed
/// into an integer so that finding a slot costs a few integer comparisons.
#[derive(Debug)]
pub(crate) struct MemberNames<const N: usize> {
    packed: [u64; N],
}

impl<const N: usize> MemberNames<N> {
    /// Packs `names` at compile time. Each must be 1 to 7 bytes long and
    /// appear once.
    pub(crate) const fn new(names: [&str; N]) -> Self {
        let mut packed = [0u64; N];
        let mut i = 0;
        while i < N {
            packed[i] = match pack_name(names[i]) {
                Some(value) => value,
                None => panic!("a member name with a slot must be 1 to 7 bytes long"),
            };
            let mut j = 0;
            while j < i {
                assert!(packed[j] != packed[i], "a member name is listed twice");
                j += 1;
            }
            i += 1;
        }
        Self { packed }
    }

    fn slot(&self, name: &str) -> Option<usize> {
        let packed = pack_name(name)?;
        self.packed.iter().position(|known| *known == packed)
    }
}

/// Packs a name of at most 7 bytes, and its length, into one integer; two
/// names pack equal exactly when they are equal.
const fn pack_name(name: &str) -> Option<u64> {
    let bytes = name.as_bytes();
    if bytes.len() > 7 {
        return None;
    }
    let mut packed = bytes.len() as u64;
    let mut i = 0;
    while i < bytes.len() {
        packed |= (bytes[i] as u64) << (8 * (i + 1));
        i += 1;
    }
    Some(packed)
}

impl<const N: usize> Members<N> {
    /// Parses an object, rejecting duplicate member names (after
    /// unescaping), nesting deeper than [`MAX_JSON_DEPTH`], anything but an
    /// object at the top and data after it.
    pub(crate) fn parse(bytes: &[u8], names: &'static MemberNames<N>) -> Result<Self, JsonError> {
        parse_object_with(bytes, MembersVisitor { names })
    }

    /// Returns the value of the member `name`, of any type.
    pub(crate) fn get(&self, name: &str) -> Option<&serde_json::Value> {
        match self.names.slot(name) {
            Some(slot) => self.known[slot].as_ref(),
            None => self.others.get(name),
        }
    }

    /// Removes and returns the member `name`.
    pub(crate) fn take(&mut self, name: &str) -> Option<serde_json::Value> {
        match self.names.slot(name) {
            Some(slot) => self.known[slot].take(),
            None => self.others.remove(name),
        }
    }

    /// Whether the object has a member `name`.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Removes and returns the members whose names are not in `names`, and
    /// drops the others.
    pub(crate) fn take_others(&mut self) -> serde_json::Map<String, serde_json::Value> {
        self.known = std::array::from_fn(|_| None);
        std::mem::take(&mut self.others)
    }
}

struct MembersVisitor<const N: usize> {
    names: &'static MemberNames<N>,
}

impl<'de, const N: usize> Visitor<'de> for MembersVisitor<N> {
    type Value = Members<N>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Members {
            names: self.names,
            known: std::array::from_fn(|_| None),
            others: serde_json::Map::new(),
        };
        // The members of the top-level object are at depth 1, as in parse_object.
        let depth = 1;
        while let Some(name) = map.next_key_seed(MemberName)? {
            match self.names.slot(&name) {
                Some(slot) => {
                    if members.known[slot].is_some() {
                        return Err(duplicate_member(&name));
                    }
                    members.known[slot] = Some(map.next_value_seed(StrictValue { depth })?);
                }
                None => match members.others.entry(name.into_owned()) {
                    serde_json::map::Entry::Occupied(entry) => return Err(duplicate_member(entry.key())),
                    serde_json::map::Entry::Vacant(entry) => {
                        entry.insert(map.next_value_seed(StrictValue { depth })?);
                    }
                },
            }
        }
        Ok(members)
    }
}

/// A member name, borrowed from the input unless it contains escapes.
struct MemberName;

impl<'de> DeserializeSeed<'de> for MemberName {
    type Value = std::borrow::Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for MemberName {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v))
    }
}

/// A JSON value at `depth` (the top-level object's members are at depth 1),
/// with the checks of [`parse_object`].
struct StrictValue {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = serde_json::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(StrictVisitor { depth: self.depth })
    }
}

struct StrictVisitor {
    depth: usize,
}

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(serde_json::Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(serde_json::Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // serde_json never produces a non-finite float; map one to null anyway.
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, serde_json::Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(serde_json::Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(serde_json::Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let depth = self.depth + 1;
        if depth > MAX_JSON_DEPTH {
            return Err(de::Error::custom("JSON nesting is too deep"));
        }

        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(StrictValue { depth })? {
            items.push(item);
        }
        Ok(serde_json::Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let depth = self.depth + 1;
        if depth > MAX_JSON_DEPTH {
            return Err(de::Error::custom("JSON nesting is too deep"));
        }

        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match object.entry(key) {
                serde_json::map::Entry::Occupied(entry) => return Err(duplicate_member(entry.key())),
                serde_json::map::Entry::Vacant(entry) => {
                    entry.insert(map.next_value_seed(StrictValue { depth })?);
                }
            }
        }
        Ok(serde_json::Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::Strategy;
    use proptest::prop_oneof;

    use super::*;

    #[test]
    fn duplicate_member_rejected() {
        let err = parse_object(br#"{"alg":"EdDSA","alg":"none"}"#).unwrap_err();
        assert_eq!(err.0, "duplicate member name \"alg\" at line 1 column 20");
    }

    #[test]
    fn escaped_duplicate_rejected() {
        assert!(parse_object(br#"{"alg":"EdDSA","\u0061lg":"none"}"#).is_err());
    }

    #[test]
    fn nested_duplicate_rejected() {
        assert!(parse_object(br#"{"act":{"sub":"a","sub":"b"}}"#).is_err());
    }

    #[test]
    fn deep_nesting_rejected() {
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        let doc = format!("{{\"a\":{deep}}}");
        assert!(parse_object(doc.as_bytes()).is_err());
    }

    #[test]
    fn trailing_data_rejected() {
        assert!(parse_object(br#"{"a":1} x"#).is_err());
        assert!(parse_object(br#"[1]"#).is_err());
    }

    /// Slot names for the differential tests: a 7-byte name (the longest
    /// that packs), a name with a NUL byte and two claim names.
    static TEST_NAMES: MemberNames<4> = MemberNames::new(["iss", "abcdefg", "a\0", "jti"]);

    /// Checks that `Members::parse` accepts exactly what `parse_object`
    /// accepts, and yields the same members with the same values.
    fn assert_parsers_agree(document: &str) {
        let bytes = document.as_bytes();
        let reference = parse_object(bytes);
        let members = Members::parse(bytes, &TEST_NAMES);
        let (reference, mut members) = match (reference, members) {
            (Ok(reference), Ok(members)) => (reference, members),
            // The error texts may differ: for an array at the top,
            // Members fails at its first byte and parse_object after it.
            (Err(_), Err(_)) => return,
            (reference, members) => {
                panic!("parsers disagree on {document:?}: parse_object {reference:?}, Members {members:?}")
            }
        };

        for (name, value) in &reference {
            assert_eq!(members.get(name), Some(value), "member {name:?} of {document:?}");
        }
        let in_slots = ["iss", "abcdefg", "a\0", "jti"]
            .iter()
            .filter(|name| members.contains(name))
            .count();
        let others = members.take_others();
        assert_eq!(in_slots + others.len(), reference.len(), "member count of {document:?}");
    }

    /// JSON string literals for member names: slot names, their escaped
    /// spellings, names one byte longer or shorter than a slot name, and
    /// names with NUL bytes.
    const NAME_LITERALS: [&str; 18] = [
        r#""iss""#,
        r#""\u0069ss""#,
        r#""i\u0073\u0073""#,
        r#""jti""#,
        r#""abcdefg""#,
        r#""abcdef\u0067""#,
        r#""abcdefgh""#,
        r#""abcdef""#,
        r#""a\u0000""#,
        r#""\u0061\u0000""#,
        r#""a""#,
        r#""\u0000""#,
        r#""iss\u0000""#,
        r#""""#,
        r#""é""#,
        r#""\ud83d\ude00""#,
        r#""\/""#,
        r#""/""#,
    ];

    /// JSON texts for leaf values, including numbers at and past the limits
    /// of i64, u64 and f64.
    const LEAF_VALUES: [&str; 18] = [
        "null",
        "true",
        "false",
        "0",
        "-0",
        "1.5",
        "1e300",
        "1e400",
        "-1e300",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775809",
        "123456789012345678901234567890",
        r#""text""#,
        r#""\u0000""#,
        r#""\ud800""#,
    ];

    fn json_value() -> impl Strategy<Value = String> {
        let leaf = proptest::sample::select(LEAF_VALUES.to_vec()).prop_map(str::to_owned);
        // Up to 20 levels, past MAX_JSON_DEPTH.
        leaf.prop_recursive(20, 64, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(|items| format!("[{}]", items.join(","))),
                proptest::collection::vec((proptest::sample::select(NAME_LITERALS.to_vec()), inner), 0..4)
                    .prop_map(|members| json_object(&members)),
            ]
        })
    }

    fn json_object(members: &[(&str, String)]) -> String {
        let members: Vec<String> = members.iter().map(|(name, value)| format!("{name}:{value}")).collect();
        format!("{{{}}}", members.join(","))
    }

    /// Generates a document: mostly an object, sometimes with data after it, inside
    /// an array, or some other value at the top.
    fn json_document() -> impl Strategy<Value = String> {
        let object = proptest::collection::vec((proptest::sample::select(NAME_LITERALS.to_vec()), json_value()), 0..8)
            .prop_map(|members| json_object(&members))
            .boxed();
        prop_oneof![
            6 => object.clone(),
            1 => object.clone().prop_map(|object| format!(" {object} \n")),
            1 => object.clone().prop_map(|object| format!("{object} x")),
            1 => object.clone().prop_map(|object| format!("{object}{object}")),
            1 => object.clone().prop_map(|object| format!("[{object}]")),
            1 => json_value(),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        #[test]
        fn members_agree_with_parse_object(document in json_document()) {
            assert_parsers_agree(&document);
        }
    }

    /// The generated documents include many that parse, so the value
    /// comparison runs, and many that do not.
    #[test]
    fn generated_documents_cover_both_verdicts() {
        use proptest::strategy::ValueTree;

        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = json_document();
        let mut accepted = 0;
        for _ in 0..1000 {
            let document = strategy.new_tree(&mut runner).unwrap().current();
            if parse_object(document.as_bytes()).is_ok() {
                accepted += 1;
            }
        }
        assert!(accepted > 100, "{accepted} of 1000 parse");
        assert!(accepted < 900, "{accepted} of 1000 parse");
    }

    #[test]
    fn members_agree_on_hostile_objects() {
        let many: Vec<String> = (0..5000).map(|i| format!("\"m{i}\":{i}")).collect();
        let many = format!("{{{}}}", many.join(","));
        let many_then_duplicate = format!("{},\"m17\":0}}", &many[..many.len() - 1]);
        let deep = |levels: usize| format!("{{\"a\":{}{}}}", "[".repeat(levels), "]".repeat(levels));

        let documents = [
            r#"{"iss":"a","\u0069ss":"b"}"#.to_owned(),
            r#"{"a\u0000":1,"\u0061\u0000":2}"#.to_owned(),
            r#"{"a\u0000":1,"a":2}"#.to_owned(),
            r#"{"abcdefg":1,"abcdefgh":2,"abcdef":3}"#.to_owned(),
            r#"{"abcdefgh":1,"abcdefg\u0068":2}"#.to_owned(),
            r#"{"iss":1e300,"jti":18446744073709551616,"x":-9223372036854775809}"#.to_owned(),
            r#"{"iss":1e400}"#.to_owned(),
            r#"{"iss":"a"} {"jti":"b"}"#.to_owned(),
            r#"{"iss":"a"}x"#.to_owned(),
            r#"{"iss":"a",}"#.to_owned(),
            r#"[{"iss":"a"}]"#.to_owned(),
            r#""iss""#.to_owned(),
            "null".to_owned(),
            String::new(),
            many,
            many_then_duplicate,
            deep(15),
            deep(16),
            deep(200),
        ];
        for document in &documents {
            assert_parsers_agree(document);
        }
    }

    #[test]
    fn strict_base64url() {
        assert_eq!(b64_decode("AQ").unwrap(), vec![1]);
        assert!(b64_decode("AQ==").is_err(), "padding");
        assert!(b64_decode("AR").is_err(), "non-zero trailing bits");
        assert!(b64_decode("A+").is_err(), "standard alphabet");
        assert!(b64_decode("A Q").is_err(), "whitespace");
    }
}
