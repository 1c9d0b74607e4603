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
        let iss = required(map, "iss", string)?;
        let aud = match map.get("aud") {
            None => return Err(missing("aud")),
            Some(value) => audience(value)?,
        };
        let iat = required(map, "iat", numeric_date)?;
        let exp = required(map, "exp", numeric_date)?;
        let jti = required(map, "jti", string)?;
        if jti.is_empty() || jti.len() > MAX_JTI_LEN {
            return Err(malformed("\"jti\" must be 1 to 256 bytes".to_owned()));
        }

        let claims = Self {
            iss,
            sub: optional(map, "sub", string)?,
            aud,
            iat,
            exp,
            nbf: optional(map, "nbf", numeric_date)?,
            jti,
            chn: optional(map, "chn", string)?,
            htm: optional(map, "htm", string)?,
            htu: optional(map, "htu", string)?,
            dig: optional(map, "dig", string)?,
            act: optional(map, "act", actor)?,
            extra: Map::new(),
        };

        Ok(Self {
            extra: map.take_others(),
            ..claims
        })
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

fn required<T>(map: &ClaimMembers, name: &str, read: fn(&str, &Value) -> Result<T, Rejection>) -> Result<T, Rejection> {
    match map.get(name) {
        None => Err(missing(name)),
        Some(value) => read(name, value),
    }
}

fn optional<T>(
    map: &ClaimMembers,
    name: &str,
    read: fn(&str, &Value) -> Result<T, Rejection>,
) -> Result<Option<T>, Rejection> {
    map.get(name).map(|value| read(name, value)).transpose()
}

fn string(name: &str, value: &Value) -> Result<String, Rejection> {
    match value {
        Value::String(text) => Ok(text.clone()),
        _ => Err(malformed(format!("\"{name}\" is not a string"))),
    }
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

fn audience(value: &Value) -> Result<Vec<String>, Rejection> {
    match value {
        Value::String(one) => Ok(vec![one.clone()]),
        Value::Array(items) => {
            if items.len() > MAX_AUDIENCES {
                return Err(malformed("\"aud\" has more than 64 entries".to_owned()));
            }
            items
                .iter()
                .map(|item| match item {
                    Value::String(text) => Ok(text.clone()),
                    _ => Err(malformed("\"aud\" contains a value that is not a string".to_owned())),
                })
                .collect()
        }
        _ => Err(malformed(
            "\"aud\" is neither a string nor an array of strings".to_owned(),
        )),
    }
}

fn actor(name: &str, value: &Value) -> Result<Value, Rejection> {
    match value {
        Value::Object(_) => Ok(value.clone()),
        _ => Err(malformed(format!("\"{name}\" is not an object"))),
    }
}
