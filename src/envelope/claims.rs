//! Token claims, read with strict types.

use serde::Serialize;
use serde_json::{Map, Value};

use super::rejection::{Reason, Rejection};
use crate::encoding::{JsonError, MemberNames, Members};

/// Largest accepted NumericDate: 9999-12-31T23:59:59Z. Checked before any
/// arithmetic, so a huge or negative time can never overflow.
pub(crate) const MAX_NUMERIC_DATE: i64 = 253_402_300_799;

/// Maximum length of a `jti`, in bytes.
pub(crate) const MAX_JTI_LEN: usize = 256;

/// Maximum number of entries in an `aud` array.
const MAX_AUDIENCES: usize = 64;

/// The claims of a token whose signature has been verified.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Claims {
    /// Sending service (`iss`).
    pub iss: String,
    /// Principal the sender acts for (`sub`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Receiving services (`aud`).
    pub aud: Vec<String>,
    /// Issued at, Unix seconds (`iat`).
    pub iat: i64,
    /// Expires at, Unix seconds (`exp`).
    pub exp: i64,
    /// Not before, Unix seconds (`nbf`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Token id (`jti`).
    pub jti: String,
    /// Message channel (`chn`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chn: Option<String>,
    /// HTTP method (`htm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub htm: Option<String>,
    /// HTTP path and canonical query (`htu`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub htu: Option<String>,
    /// Payload digest (`dig`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dig: Option<String>,
    /// RFC 8693 actor chain (`act`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub act: Option<Value>,
    /// Any other claims, unverified in meaning.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The claims that [`Claims`] has a field for, in the order of the slots of
/// [`ClaimMembers`].
const KNOWN: [&str; 12] = [
    "iss", "sub", "aud", "iat", "exp", "nbf", "jti", "chn", "htm", "htu", "dig", "act",
];

/// The members of a token's claims object before their types are checked:
/// the claims of [`KNOWN`] in fixed slots, any others in a map.
pub(crate) type ClaimMembers = Members<{ KNOWN.len() }>;

static KNOWN_NAMES: MemberNames<{ KNOWN.len() }> = MemberNames::new(KNOWN);

/// Parses a claims object with the checks of `parse_object`.
pub(crate) fn parse_claims(bytes: &[u8]) -> Result<ClaimMembers, JsonError> {
    Members::parse(bytes, &KNOWN_NAMES)
}

impl Claims {
    /// Reads the claims with strict types: strings must be strings, times
    /// must be integers in `0..=MAX_NUMERIC_DATE`. On success the claims
    /// not named here move from `map` into `extra`, and `map` is left empty.
    /// On error `map` is unchanged, so the caller can still log its values.
    pub(crate) fn from_members(map: &mut ClaimMembers) -> Result<Self, Rejection> {
        // Every check runs on borrowed values first, so an error leaves `map`
        // unchanged. Then the values move out instead of being copied. The
        // moves repeat the type checks, so they return the same errors.
        check_members(map)?;

        let claims = Self {
            iss: required_string(map, "iss")?,
            sub: optional_string(map, "sub")?,
            aud: take_audience(map)?,
            iat: required(map, "iat", numeric_date)?,
            exp: required(map, "exp", numeric_date)?,
            nbf: optional(map, "nbf", numeric_date)?,
            jti: required_string(map, "jti")?,
            chn: optional_string(map, "chn")?,
            htm: optional_string(map, "htm")?,
            htu: optional_string(map, "htu")?,
            dig: optional_string(map, "dig")?,
            act: optional(map, "act", actor)?,
            extra: Map::new(),
        };
        Ok(Self {
            extra: map.take_others(),
            ..claims
        })
    }
}

/// The checks of [`Claims::from_members`], in the order that decides which
/// error a token with several faults gets.
fn check_members(map: &ClaimMembers) -> Result<(), Rejection> {
    required(map, "iss", string)?;
    match map.get("aud") {
        None => return Err(missing("aud")),
        Some(value) => check_audience(value)?,
    }
    required(map, "iat", numeric_date)?;
    required(map, "exp", numeric_date)?;
    let jti = required(map, "jti", string)?;
    if jti.is_empty() || jti.len() > MAX_JTI_LEN {
        return Err(malformed("\"jti\" must be 1 to 256 bytes".to_owned()));
    }

    optional(map, "sub", string)?;
    optional(map, "nbf", numeric_date)?;
    optional(map, "chn", string)?;
    optional(map, "htm", string)?;
    optional(map, "htu", string)?;
    optional(map, "dig", string)?;
    optional(map, "act", actor)?;
    Ok(())
}

fn required_string(map: &mut ClaimMembers, name: &str) -> Result<String, Rejection> {
    optional_string(map, name)?.ok_or_else(|| missing(name))
}

fn optional_string(map: &mut ClaimMembers, name: &str) -> Result<Option<String>, Rejection> {
    match map.take(name) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(not_a_string(name)),
    }
}

fn take_audience(map: &mut ClaimMembers) -> Result<Vec<String>, Rejection> {
    let value = map.take("aud").ok_or_else(|| missing("aud"))?;
    check_audience(&value)?;
    match value {
        Value::String(one) => Ok(vec![one]),
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::String(text) => Ok(text),
                _ => Err(aud_item_not_a_string()),
            })
            .collect(),
        _ => Err(aud_not_strings()),
    }
}

fn malformed(detail: String) -> Rejection {
    Rejection::new(Reason::Malformed, detail)
}

fn missing(name: &str) -> Rejection {
    Rejection::new(
        Reason::MissingClaim,
        format!("the required claim \"{name}\" is missing"),
    )
}

fn required<'a, T>(
    map: &'a ClaimMembers,
    name: &str,
    read: fn(&str, &'a Value) -> Result<T, Rejection>,
) -> Result<T, Rejection> {
    match map.get(name) {
        None => Err(missing(name)),
        Some(value) => read(name, value),
    }
}

fn optional<'a, T>(
    map: &'a ClaimMembers,
    name: &str,
    read: fn(&str, &'a Value) -> Result<T, Rejection>,
) -> Result<Option<T>, Rejection> {
    map.get(name).map(|value| read(name, value)).transpose()
}

fn string<'a>(name: &str, value: &'a Value) -> Result<&'a str, Rejection> {
    match value {
        Value::String(text) => Ok(text),
        _ => Err(not_a_string(name)),
    }
}

fn not_a_string(name: &str) -> Rejection {
    malformed(format!("\"{name}\" is not a string"))
}

fn numeric_date(name: &str, value: &Value) -> Result<i64, Rejection> {
    let Value::Number(number) = value else {
        return Err(malformed(format!("\"{name}\" is not a number")));
    };
    // as_i64 is None for floats (1.5, 1e300) and for integers above i64::MAX.
    let Some(seconds) = number.as_i64() else {
        return Err(malformed(format!("\"{name}\" is not an integer NumericDate")));
    };
    if !(0..=MAX_NUMERIC_DATE).contains(&seconds) {
        return Err(malformed(format!("\"{name}\" is outside the years 1970 to 9999")));
    }
    Ok(seconds)
}

fn check_audience(value: &Value) -> Result<(), Rejection> {
    match value {
        Value::String(_) => Ok(()),
        Value::Array(items) => {
            if items.len() > MAX_AUDIENCES {
                return Err(malformed("\"aud\" has more than 64 entries".to_owned()));
            }
            if items.iter().any(|item| !item.is_string()) {
                return Err(aud_item_not_a_string());
            }
            Ok(())
        }
        _ => Err(aud_not_strings()),
    }
}

fn aud_item_not_a_string() -> Rejection {
    malformed("\"aud\" contains a value that is not a string".to_owned())
}

fn aud_not_strings() -> Rejection {
    malformed("\"aud\" is neither a string nor an array of strings".to_owned())
}

fn actor(name: &str, value: &Value) -> Result<Value, Rejection> {
    match value {
        Value::Object(_) => Ok(value.clone()),
        _ => Err(malformed(format!("\"{name}\" is not an object"))),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const VALID: &str = r#"{"iss":"orders","aud":["billing","audit"],"iat":100,"exp":200,"jti":"j-1","chn":"nats:a","dig":"x","team":"blue"}"#;

    #[test]
    fn valid_claims_move_out() {
        let mut members = parse_claims(VALID.as_bytes()).unwrap();
        let claims = Claims::from_members(&mut members).unwrap();

        assert_eq!(claims.iss, "orders");
        assert_eq!(claims.aud, ["billing", "audit"]);
        assert_eq!((claims.iat, claims.exp), (100, 200));
        assert_eq!(claims.jti, "j-1");
        assert_eq!(claims.chn.as_deref(), Some("nats:a"));
        assert_eq!(claims.dig.as_deref(), Some("x"));
        assert_eq!(claims.extra.get("team"), Some(&Value::from("blue")));
        assert!(members.get("iss").is_none());
        assert!(members.get("team").is_none());
    }

    /// The verifier logs the claimed iss and jti of a rejected token, so a
    /// failed read must leave them in place.
    #[test]
    fn failed_read_keeps_members() {
        let text = r#"{"iss":"orders","aud":"billing","iat":100,"exp":"200","jti":"j-1","chn":"nats:a"}"#;
        let mut members = parse_claims(text.as_bytes()).unwrap();

        let rejection = Claims::from_members(&mut members).unwrap_err();

        assert_eq!(rejection.reason(), Reason::Malformed);
        assert_eq!(members.get("iss"), Some(&Value::from("orders")));
        assert_eq!(members.get("jti"), Some(&Value::from("j-1")));
        assert_eq!(members.get("chn"), Some(&Value::from("nats:a")));
    }

    #[test]
    fn first_fault_decides_reason() {
        // jti is missing and sub is not a string: the required claims are
        // checked first.
        let text = r#"{"iss":"orders","aud":"billing","iat":100,"exp":200,"sub":7}"#;
        let mut members = parse_claims(text.as_bytes()).unwrap();
        let rejection = Claims::from_members(&mut members).unwrap_err();
        assert_eq!(rejection.reason(), Reason::MissingClaim);

        let text = r#"{"iss":"orders","aud":"billing","iat":100,"exp":200,"jti":"j","sub":7}"#;
        let mut members = parse_claims(text.as_bytes()).unwrap();
        let rejection = Claims::from_members(&mut members).unwrap_err();
        assert_eq!(rejection.reason(), Reason::Malformed);
    }

    /// For each claim with a slot: a valid value (the first, drawn most
    /// often) and values of a wrong type or out of range. `None` leaves the
    /// claim out.
    fn claim_value(name: &'static str) -> impl Strategy<Value = Option<(&'static str, &'static str)>> {
        let values: &'static [&'static str] = match name {
            "aud" => &[
                r#""billing""#,
                r#"["billing","audit"]"#,
                "[]",
                r#"["billing",7]"#,
                "7",
                "null",
            ],
            "iat" | "exp" | "nbf" => &[
                "100",
                "0",
                "253402300799",
                "253402300800",
                "-1",
                "1.5",
                "1e300",
                r#""100""#,
            ],
            "act" => &[r#"{"sub":"gateway"}"#, r#""gateway""#, "[]"],
            "jti" => &[r#""j-1""#, r#""""#, "7", "null"],
            _ => &[r#""orders""#, "7", "true", "[]", "{}"],
        };
        let value = prop_oneof![9 => Just(values[0]), 1 => proptest::sample::select(values)];
        proptest::option::weighted(0.9, value.prop_map(move |value| (name, value)))
    }

    fn claims_document() -> impl Strategy<Value = String> {
        let claims: Vec<_> = KNOWN.iter().map(|name| claim_value(name)).collect();
        (claims, proptest::option::of(Just(r#""team":"blue""#))).prop_map(|(claims, extra)| {
            let mut members: Vec<String> = claims
                .into_iter()
                .flatten()
                .map(|(name, value)| format!("\"{name}\":{value}"))
                .collect();
            members.extend(extra.map(str::to_owned));
            format!("{{{}}}", members.join(","))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// A failed read leaves every member in place, so the verifier can
        /// log the claimed iss and jti. A successful one moves them out.
        #[test]
        fn failed_read_keeps_every_member(document in claims_document()) {
            let reference = crate::encoding::parse_object(document.as_bytes()).unwrap();
            let mut members = parse_claims(document.as_bytes()).unwrap();

            match Claims::from_members(&mut members) {
                Err(_) => {
                    for (name, value) in &reference {
                        prop_assert_eq!(members.get(name), Some(value), "{} in {}", name, document);
                    }
                }
                Ok(claims) => {
                    prop_assert_eq!(Some(&Value::from(claims.iss)), reference.get("iss"));
                    prop_assert_eq!(Some(&Value::from(claims.jti)), reference.get("jti"));
                    prop_assert_eq!(Some(&Value::from(claims.iat)), reference.get("iat"));
                    prop_assert_eq!(Some(&Value::from(claims.exp)), reference.get("exp"));
                    prop_assert_eq!(claims.extra.get("team"), reference.get("team"));
                    for name in KNOWN {
                        prop_assert!(members.get(name).is_none(), "{} left in {}", name, document);
                    }
                    prop_assert!(members.get("team").is_none());
                }
            }
        }
    }

    /// The generated documents include many that read and many that fail,
    /// so both branches of the property run.
    #[test]
    fn generated_claims_cover_both_outcomes() {
        use proptest::strategy::ValueTree;

        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = claims_document();
        let mut read = 0;
        for _ in 0..1000 {
            let document = strategy.new_tree(&mut runner).unwrap().current();
            let mut members = parse_claims(document.as_bytes()).unwrap();
            if Claims::from_members(&mut members).is_ok() {
                read += 1;
            }
        }
        assert!(read > 100, "{read} of 1000 read");
        assert!(read < 900, "{read} of 1000 read");
    }

    #[test]
    fn duplicate_claim_rejected() {
        assert!(parse_claims(br#"{"sub":"a","sub":"b"}"#).is_err());
        assert!(parse_claims(br#"{"iss":"a","\u0069ss":"b"}"#).is_err());
        assert!(parse_claims(br#"{"x":1,"x":2}"#).is_err());
    }
}
