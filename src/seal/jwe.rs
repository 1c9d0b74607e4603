//! JWE (RFC 7516) with `ECDH-ES+A256KW` and `A256GCM` only: encryption to
//! one recipient (compact serialization) or several (general JSON
//! serialization), and a decryption that checks the shape, algorithms,
//! header members, recipient key and ephemeral key before any secret key
//! is used.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit};
use aes_kw::KekAes256;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::kdf::concat_kdf;
use super::{CONTENT_ENCRYPTION, MAX_RECIPIENTS};
use crate::encoding::{b64_decode, b64_encode, parse_object};
use crate::envelope::{Reason, Rejection};
use crate::keys::{EncryptionKey, EncryptionPublicKey, KEY_MANAGEMENT_ALG, KeyError, Point};

/// Length of the AES-256 content encryption key.
const CEK_LEN: usize = 32;

/// Length of an A256KW-wrapped 256-bit key: the key plus the 8-byte
/// integrity check value (RFC 3394).
pub(crate) const ENCRYPTED_KEY_LEN: usize = CEK_LEN + 8;

/// AES-GCM nonce length (RFC 7518 section 5.3: 96 bits).
const IV_LEN: usize = 12;

/// AES-GCM tag length (RFC 7518 section 5.3: 128 bits).
const TAG_LEN: usize = 16;

/// Largest decoded protected header accepted, in bytes. A trustwire header
/// with a P-256 `epk` is under 400 bytes.
pub(crate) const MAX_HEADER_BYTES: usize = 4096;

/// Largest decoded `apu` or `apv` accepted, in bytes.
const MAX_PARTY_INFO_BYTES: usize = 256;

/// Largest `kid` accepted, in bytes.
const MAX_KID_LEN: usize = 256;

/// Header members never accepted in a sealed message. Compression (`zip`)
/// opens the way to decompression bombs and CRIME-style length leaks. `crit`
/// would demand processing rules that trustwire does not have. The key and
/// URL members would let the message pick its own key, and `p2s`/`p2c`
/// belong to PBES2.
const FORBIDDEN_HEADERS: [&str; 8] = ["zip", "crit", "jku", "jwk", "x5u", "x5c", "p2s", "p2c"];

/// An encryption failure. Only the random number generator and key
/// agreement with a malformed key can fail.
#[derive(Debug)]
pub(crate) enum EncryptError {
    Key(KeyError),
    Random(String),
}

/// Encrypts `plaintext` to `recipients` with one content key.
///
/// One recipient gives the compact serialization, with `kid` and `epk` in
/// the protected header. Several give the general JSON serialization, with
/// `kid` and `epk` in each recipient's unprotected header. The protected
/// header always carries `alg`, `enc`, `iss` and `jti`, so AES-GCM
/// authenticates them.
pub(crate) fn encrypt(
    recipients: &[&EncryptionPublicKey],
    iss: &str,
    jti: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>, EncryptError> {
    let mut cek = Zeroizing::new([0u8; CEK_LEN]);
    getrandom::fill(cek.as_mut()).map_err(|err| EncryptError::Random(err.to_string()))?;
    let mut iv = [0u8; IV_LEN];
    getrandom::fill(&mut iv).map_err(|err| EncryptError::Random(err.to_string()))?;

    let mut protected = Map::new();
    protected.insert("alg".into(), KEY_MANAGEMENT_ALG.into());
    protected.insert("enc".into(), CONTENT_ENCRYPTION.into());
    protected.insert("iss".into(), iss.into());
    protected.insert("jti".into(), jti.into());

    let mut entries = Vec::with_capacity(recipients.len());
    for recipient in recipients {
        let agreement = recipient.agree_ephemeral().map_err(EncryptError::Key)?;
        let kek = concat_kdf(&agreement.shared_secret, KEY_MANAGEMENT_ALG, &[], &[], 256);
        let mut encrypted_key = [0u8; ENCRYPTED_KEY_LEN];
        key_wrap(&kek)
            .wrap(cek.as_ref(), &mut encrypted_key)
            .map_err(|err| EncryptError::Random(format!("AES key wrap failed: {err}")))?;

        let mut header = Map::new();
        header.insert("kid".into(), recipient.kid().into());
        header.insert("epk".into(), Value::Object(agreement.epk.to_jwk_members()));
        entries.push((header, encrypted_key));
    }

    let single = entries.len() == 1;
    if single && let Some((header, _)) = entries.first_mut() {
        protected.append(header);
    }
    let protected_b64 = b64_encode(Value::Object(protected).to_string().as_bytes());

    let mut ciphertext = plaintext.to_vec();
    let tag = content_cipher(&cek)
        .encrypt_in_place_detached(&iv.into(), protected_b64.as_bytes(), &mut ciphertext)
        .map_err(|_| EncryptError::Random("AES-GCM rejected the plaintext length".into()))?;

    if single {
        let encrypted_key = entries.first().map(|(_, key)| b64_encode(key)).unwrap_or_default();
        let compact = [
            protected_b64,
            encrypted_key,
            b64_encode(&iv),
            b64_encode(&ciphertext),
            b64_encode(&tag),
        ]
        .join(".");
        return Ok(compact.into_bytes());
    }

    let recipients: Vec<Value> = entries
        .into_iter()
        .map(|(header, encrypted_key)| {
            let mut entry = Map::new();
            entry.insert("header".into(), Value::Object(header));
            entry.insert("encrypted_key".into(), b64_encode(&encrypted_key).into());
            Value::Object(entry)
        })
        .collect();
    let mut document = Map::new();
    document.insert("protected".into(), protected_b64.into());
    document.insert("recipients".into(), Value::Array(recipients));
    document.insert("iv".into(), b64_encode(&iv).into());
    document.insert("ciphertext".into(), b64_encode(&ciphertext).into());
    document.insert("tag".into(), b64_encode(&tag).into());
    Ok(Value::Object(document).to_string().into_bytes())
}

/// A decrypted JWE: the plaintext, the protected header (authenticated by
/// AES-GCM) and the `kid` of the local key that decrypted it.
#[derive(Debug)]
pub(crate) struct Decrypted {
    pub(crate) plaintext: Vec<u8>,
    pub(crate) protected: Map<String, Value>,
    pub(crate) kid: String,
}

/// A JWE parsed from either serialization, not yet checked.
struct Parsed {
    /// The encoded protected header: the AES-GCM additional data.
    protected_b64: String,
    protected: Map<String, Value>,
    /// The JSON serialization's shared unprotected header.
    unprotected: Map<String, Value>,
    recipients: Vec<Entry>,
    iv: [u8; IV_LEN],
    ciphertext: Vec<u8>,
    tag: [u8; TAG_LEN],
}

/// One recipient: its unprotected header (empty in the compact
/// serialization) and its wrapped content key.
struct Entry {
    header: Map<String, Value>,
    encrypted_key: Vec<u8>,
}

fn malformed(detail: impl Into<String>) -> Rejection {
    Rejection::new(Reason::Malformed, detail)
}

/// Parses, checks and decrypts a JWE with one of `keys`, chosen by `kid`.
///
/// The caller has already bounded the size of `jwe`. These checks run in
/// order, all before any use of a private key:
///
/// 1. shape and strict encoding, the number of recipients, the header size;
/// 2. `alg` of every recipient, then `enc`, then forbidden header members;
/// 3. the recipient entry whose `kid` is one of `keys`;
/// 4. the length of its `encrypted_key`;
/// 5. its `epk`, which must be a valid point on the curve of the chosen key.
///
/// Then come ECDH, the Concat KDF, the AES key unwrap and AES-GCM. A failed
/// unwrap and a failed tag share one reason code.
pub(crate) fn decrypt(jwe: &[u8], keys: &[EncryptionKey]) -> Result<Decrypted, Rejection> {
    let parsed = parse(jwe)?;

    let mut joint_headers = Vec::with_capacity(parsed.recipients.len());
    for entry in &parsed.recipients {
        joint_headers.push(joint_header(&parsed, entry)?);
    }
    for header in &joint_headers {
        check_alg(header)?;
    }
    check_enc(&parsed)?;
    for header in &joint_headers {
        check_forbidden_members(header)?;
    }

    let (index, key) = choose_recipient(&joint_headers, keys)?;
    let entry = &parsed.recipients[index];
    let header = &joint_headers[index];

    if entry.encrypted_key.len() != ENCRYPTED_KEY_LEN {
        return Err(malformed(format!(
            "encrypted_key is {} bytes; A256KW of a 256-bit key is {ENCRYPTED_KEY_LEN}",
            entry.encrypted_key.len()
        )));
    }
    let epk = read_epk(header, key)?;
    let apu = party_info(header, "apu")?;
    let apv = party_info(header, "apv")?;

    let shared_secret = key
        .agree(&epk)
        .ok_or_else(|| Rejection::new(Reason::InvalidEpk, "key agreement with epk gave the all-zero secret"))?;
    let kek = concat_kdf(&shared_secret, KEY_MANAGEMENT_ALG, &apu, &apv, 256);

    let mut cek = Zeroizing::new([0u8; CEK_LEN]);
    key_wrap(&kek)
        .unwrap(&entry.encrypted_key, cek.as_mut())
        .map_err(|_| decryption_failed())?;

    let mut plaintext = parsed.ciphertext;
    content_cipher(&cek)
        .decrypt_in_place_detached(
            &parsed.iv.into(),
            parsed.protected_b64.as_bytes(),
            &mut plaintext,
            &parsed.tag.into(),
        )
        .map_err(|_| decryption_failed())?;

    Ok(Decrypted {
        plaintext,
        protected: parsed.protected,
        kid: key.kid().to_owned(),
    })
}

/// The A256KW cipher under a key-encryption key. The conversions from a
/// slice borrow the key instead of copying it.
fn key_wrap(kek: &[u8; 32]) -> KekAes256 {
    match KekAes256::try_from(kek.as_slice()) {
        Ok(cipher) => cipher,
        Err(_) => unreachable!("a 32-byte key is a valid AES-256 key"),
    }
}

/// The A256GCM cipher under a content encryption key.
fn content_cipher(cek: &[u8; CEK_LEN]) -> Aes256Gcm {
    match Aes256Gcm::new_from_slice(cek) {
        Ok(cipher) => cipher,
        Err(_) => unreachable!("a 32-byte key is a valid AES-256 key"),
    }
}

fn decryption_failed() -> Rejection {
    Rejection::new(
        Reason::DecryptionFailed,
        "the content key did not unwrap or the ciphertext did not authenticate",
    )
}

/// Splits either serialization and decodes every part strictly.
fn parse(jwe: &[u8]) -> Result<Parsed, Rejection> {
    if jwe.first() == Some(&b'{') {
        return parse_json(jwe);
    }

    let text = std::str::from_utf8(jwe).map_err(|_| malformed("a compact JWE is not ASCII text"))?;
    let segments: Vec<&str> = text.split('.').collect();
    match segments.len() {
        5 => {}
        3 => {
            return Err(Rejection::new(
                Reason::WrongType,
                "a JWS was given where a sealed message (JWE) is expected",
            ));
        }
        count => {
            return Err(malformed(format!(
                "a compact JWE has 5 dot-separated segments, found {count}"
            )));
        }
    }

    let protected_b64 = segments[0];
    let protected = decode_protected(protected_b64)?;
    let recipients = vec![Entry {
        header: Map::new(),
        encrypted_key: decode(segments[1], "encrypted_key")?,
    }];
    Ok(Parsed {
        protected_b64: protected_b64.to_owned(),
        protected,
        unprotected: Map::new(),
        recipients,
        iv: decode_array(segments[2], "iv")?,
        ciphertext: decode(segments[3], "ciphertext")?,
        tag: decode_array(segments[4], "tag")?,
    })
}

/// Parses the general or flattened JSON serialization (RFC 7516 section 7.2).
/// Members this format does not define are ignored, as section 7.2.1 requires.
fn parse_json(jwe: &[u8]) -> Result<Parsed, Rejection> {
    let document = parse_object(jwe).map_err(|err| malformed(format!("the JWE is not a valid JSON object: {err}")))?;
    if document.contains_key("aad") {
        return Err(Rejection::new(
            Reason::UnsupportedHeader,
            "the JWE member \"aad\" is not accepted",
        ));
    }

    // The AES-GCM additional data is the value of the "protected" member
    // (RFC 7516 section 5.2, step 14), which strict base64url keeps free of
    // JSON escapes.
    let protected_b64 = match document.get("protected") {
        Some(Value::String(value)) if !value.is_empty() => value.clone(),
        Some(_) => return Err(malformed("\"protected\" is not a non-empty string")),
        None => return Err(malformed("the JWE has no protected header")),
    };
    let protected = decode_protected(&protected_b64)?;

    let unprotected = match document.get("unprotected") {
        None => Map::new(),
        Some(Value::Object(header)) => header.clone(),
        Some(_) => return Err(malformed("\"unprotected\" is not an object")),
    };

    let recipients = match (document.get("recipients"), document.contains_key("encrypted_key")) {
        (Some(_), true) => {
            return Err(malformed(
                "the JWE has both \"recipients\" and a flattened \"encrypted_key\"",
            ));
        }
        (Some(Value::Array(entries)), false) => {
            if entries.is_empty() {
                return Err(malformed("\"recipients\" is empty"));
            }
            if entries.len() > MAX_RECIPIENTS {
                return Err(Rejection::new(
                    Reason::TooLarge,
                    format!("{} recipients, more than the limit of {MAX_RECIPIENTS}", entries.len()),
                ));
            }
            entries
                .iter()
                .map(|entry| match entry {
                    Value::Object(entry) => read_entry(entry),
                    _ => Err(malformed("a recipient entry is not an object")),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        (Some(_), false) => return Err(malformed("\"recipients\" is not an array")),
        (None, _) => vec![read_entry(&document)?],
    };

    Ok(Parsed {
        protected_b64,
        protected,
        unprotected,
        recipients,
        iv: decode_array(string_field(&document, "iv")?, "iv")?,
        ciphertext: decode(string_field(&document, "ciphertext")?, "ciphertext")?,
        tag: decode_array(string_field(&document, "tag")?, "tag")?,
    })
}

fn read_entry(entry: &Map<String, Value>) -> Result<Entry, Rejection> {
    let header = match entry.get("header") {
        None => Map::new(),
        Some(Value::Object(header)) => header.clone(),
        Some(_) => return Err(malformed("a recipient \"header\" is not an object")),
    };
    let encrypted_key = match entry.get("encrypted_key") {
        None => Vec::new(),
        Some(Value::String(text)) => decode(text, "encrypted_key")?,
        Some(_) => return Err(malformed("\"encrypted_key\" is not a string")),
    };
    Ok(Entry { header, encrypted_key })
}

fn string_field<'a>(document: &'a Map<String, Value>, name: &str) -> Result<&'a str, Rejection> {
    match document.get(name) {
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(malformed(format!("\"{name}\" is not a string"))),
        None => Err(malformed(format!("the JWE has no \"{name}\""))),
    }
}

fn decode(text: &str, name: &str) -> Result<Vec<u8>, Rejection> {
    b64_decode(text).map_err(|_| malformed(format!("{name} is not strict unpadded base64url")))
}

fn decode_array<const N: usize>(text: &str, name: &str) -> Result<[u8; N], Rejection> {
    let bytes = decode(text, name)?;
    let length = bytes.len();
    bytes
        .try_into()
        .map_err(|_| malformed(format!("{name} is {length} bytes; A256GCM needs {N}")))
}

fn decode_protected(text: &str) -> Result<Map<String, Value>, Rejection> {
    // base64url grows the header by 4/3, so this bounds the decoded size.
    if text.len() > MAX_HEADER_BYTES / 3 * 4 + 4 {
        return Err(Rejection::new(
            Reason::TooLarge,
            format!("the protected header is above the limit of {MAX_HEADER_BYTES} bytes"),
        ));
    }
    let bytes = decode(text, "protected header")?;
    parse_object(&bytes).map_err(|err| malformed(format!("the protected header is not a valid JSON object: {err}")))
}

/// Merges the protected, shared unprotected and recipient headers, whose
/// member names must be disjoint (RFC 7516 section 7.2.1).
fn joint_header(parsed: &Parsed, entry: &Entry) -> Result<Map<String, Value>, Rejection> {
    let mut joint = parsed.protected.clone();
    for (name, value) in parsed.unprotected.iter().chain(entry.header.iter()) {
        if joint.insert(name.clone(), value.clone()).is_some() {
            let shown: String = name.chars().take(40).collect();
            return Err(malformed(format!(
                "header member {shown:?} appears in more than one JWE header"
            )));
        }
    }
    Ok(joint)
}

fn check_alg(header: &Map<String, Value>) -> Result<(), Rejection> {
    match header.get("alg") {
        Some(Value::String(alg)) if alg == KEY_MANAGEMENT_ALG => Ok(()),
        Some(Value::String(alg)) => {
            let shown: String = alg.chars().take(40).collect();
            Err(Rejection::new(
                Reason::UnsupportedAlg,
                format!("JWE alg {shown:?} is not accepted; only {KEY_MANAGEMENT_ALG} is"),
            ))
        }
        Some(_) => Err(Rejection::new(Reason::UnsupportedAlg, "JWE alg is not a string")),
        None => Err(Rejection::new(Reason::UnsupportedAlg, "JWE alg is missing")),
    }
}

/// `enc` must be `A256GCM` and in the protected header, so that AES-GCM
/// authenticates it.
fn check_enc(parsed: &Parsed) -> Result<(), Rejection> {
    match parsed.protected.get("enc") {
        Some(Value::String(enc)) if enc == CONTENT_ENCRYPTION => Ok(()),
        Some(Value::String(enc)) => {
            let shown: String = enc.chars().take(40).collect();
            Err(Rejection::new(
                Reason::UnsupportedEnc,
                format!("JWE enc {shown:?} is not accepted; only {CONTENT_ENCRYPTION} is"),
            ))
        }
        Some(_) => Err(Rejection::new(Reason::UnsupportedEnc, "JWE enc is not a string")),
        None => Err(Rejection::new(
            Reason::UnsupportedEnc,
            "JWE enc is missing from the protected header",
        )),
    }
}

fn check_forbidden_members(header: &Map<String, Value>) -> Result<(), Rejection> {
    for name in FORBIDDEN_HEADERS {
        if header.contains_key(name) {
            return Err(Rejection::new(
                Reason::UnsupportedHeader,
                format!("JWE header member {name:?} is not accepted"),
            ));
        }
    }
    Ok(())
}

/// Finds the recipient entry whose `kid` names one of `keys`. Every entry
/// must have a distinct `kid`.
fn choose_recipient<'k>(
    headers: &[Map<String, Value>],
    keys: &'k [EncryptionKey],
) -> Result<(usize, &'k EncryptionKey), Rejection> {
    let mut kids = std::collections::HashSet::with_capacity(headers.len());
    let mut chosen = None;
    for (index, header) in headers.iter().enumerate() {
        let kid = match header.get("kid") {
            Some(Value::String(kid)) if !kid.is_empty() && kid.len() <= MAX_KID_LEN => kid.as_str(),
            Some(Value::String(_)) => return Err(malformed("a recipient kid must be 1 to 256 bytes")),
            Some(_) => return Err(malformed("a recipient kid is not a string")),
            None => return Err(malformed("a recipient entry has no kid")),
        };
        if !kids.insert(kid) {
            return Err(malformed(format!("two recipient entries name kid {kid:?}")));
        }
        if chosen.is_none()
            && let Some(key) = keys.iter().find(|key| key.kid() == kid)
        {
            chosen = Some((index, key));
        }
    }

    chosen.ok_or_else(|| {
        let named: Vec<String> = kids.iter().take(4).map(|kid| kid.chars().take(64).collect()).collect();
        Rejection::new(
            Reason::NotARecipient,
            format!("no recipient entry names one of this service's encryption keys; the JWE names {named:?}"),
        )
    })
}

/// Reads the `epk` and checks it is a valid public point on the curve of
/// `key`: the invalid-curve and small-subgroup checks.
fn read_epk(header: &Map<String, Value>, key: &EncryptionKey) -> Result<Point, Rejection> {
    let invalid = |detail: String| Rejection::new(Reason::InvalidEpk, detail);
    let epk = match header.get("epk") {
        Some(Value::Object(epk)) => epk,
        Some(_) => return Err(invalid("epk is not an object".into())),
        None => return Err(invalid("epk is missing".into())),
    };
    for member in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
        if epk.contains_key(member) {
            return Err(invalid(format!("epk contains the private member {member:?}")));
        }
    }

    // A small-order X25519 epk passes here and fails the key agreement,
    // also as `invalid_epk`.
    let point = Point::from_epk_members(epk).map_err(|err| match err {
        KeyError::InvalidJwk(reason) => invalid(format!("epk: {reason}")),
        other => invalid(format!("epk: {other}")),
    })?;
    if point.curve() != key.curve() {
        return Err(invalid(format!(
            "epk is on {}, but recipient key {:?} is on {}",
            point.curve(),
            key.kid(),
            key.curve()
        )));
    }
    Ok(point)
}

fn party_info(header: &Map<String, Value>, name: &str) -> Result<Vec<u8>, Rejection> {
    let text = match header.get(name) {
        None => return Ok(Vec::new()),
        Some(Value::String(text)) => text,
        Some(_) => return Err(malformed(format!("{name} is not a string"))),
    };
    let bytes = decode(text, name)?;
    if bytes.len() > MAX_PARTY_INFO_BYTES {
        return Err(malformed(format!(
            "{name} is {} bytes, above the limit of {MAX_PARTY_INFO_BYTES}",
            bytes.len()
        )));
    }
    Ok(bytes)
}
