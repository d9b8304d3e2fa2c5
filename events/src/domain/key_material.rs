//! Key material: what a key looks like, how it is checked offline, and how it
//! is hashed for storage.
//!
//! A key is `<prefix><body><checksum>`: the prefix names its type
//! (`pk_live_`, `sk_live_`, `sk_test_`), the body is 256 random bits in 43
//! base62 characters, and the checksum is the CRC32 of prefix + body in 6
//! base62 characters. Secret scanners (and our own parser) can therefore
//! recognise a key and reject a mistyped one without any database access.
//!
//! Only a blake3 *keyed* hash of the whole key is stored, keyed with the
//! server's hash key: a leaked table cannot be brute-forced without it.

use std::fmt;

use serde::{Deserialize, Serialize};

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const BODY_LEN: usize = 43;
const CHECKSUM_LEN: usize = 6;
const PREFIX_LEN: usize = 8;
/// Length of every key: prefix, body and checksum.
pub const KEY_LEN: usize = PREFIX_LEN + BODY_LEN + CHECKSUM_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// Client-side (browser SDK, widgets): read-only scopes.
    Public,
    /// Server-side: full permissions.
    Secret,
    /// Test environment only.
    Test,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Live,
    Test,
}

impl KeyType {
    pub const ALL: [KeyType; 3] = [KeyType::Public, KeyType::Secret, KeyType::Test];

    pub fn prefix(self) -> &'static str {
        match self {
            KeyType::Public => "pk_live_",
            KeyType::Secret => "sk_live_",
            KeyType::Test => "sk_test_",
        }
    }

    pub fn environment(self) -> Environment {
        match self {
            KeyType::Test => Environment::Test,
            KeyType::Public | KeyType::Secret => Environment::Live,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Public => "public",
            KeyType::Secret => "secret",
            KeyType::Test => "test",
        }
    }

    pub fn parse(text: &str) -> Option<KeyType> {
        KeyType::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Live => "live",
            Environment::Test => "test",
        }
    }

    pub fn parse(text: &str) -> Option<Environment> {
        match text {
            "live" => Some(Environment::Live),
            "test" => Some(Environment::Test),
            _ => None,
        }
    }
}

/// A key in clear text. It exists only between generation and the one answer
/// that shows it, or between reading a request and hashing it; its `Debug`
/// never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct PlainKey(String);

impl fmt::Debug for PlainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlainKey({}…{})", self.prefix(), self.last_four())
    }
}

impl PlainKey {
    /// The key for `random` (256 bits from the OS CSPRNG, supplied by the caller).
    pub fn encode(key_type: KeyType, random: &[u8; 32]) -> PlainKey {
        let mut text = String::with_capacity(KEY_LEN);
        text.push_str(key_type.prefix());
        text.push_str(&base62(random, BODY_LEN));
        let checksum = checksum_digits(crc32fast::hash(text.as_bytes()));
        text.push_str(std::str::from_utf8(&checksum).expect("base62 is ASCII"));
        PlainKey(text)
    }

    /// Checks prefix, length, alphabet and checksum; touches nothing else.
    pub fn parse(text: &str) -> Result<(PlainKey, KeyType), MalformedKey> {
        let key_type = KeyType::ALL
            .into_iter()
            .find(|t| text.starts_with(t.prefix()))
            .ok_or(MalformedKey::Prefix)?;
        if text.len() != KEY_LEN {
            return Err(MalformedKey::Length);
        }
        let rest = &text.as_bytes()[PREFIX_LEN..];
        if !rest.iter().all(u8::is_ascii_alphanumeric) {
            return Err(MalformedKey::Alphabet);
        }
        let (signed, checksum) = text.split_at(KEY_LEN - CHECKSUM_LEN);
        if checksum.as_bytes() != checksum_digits(crc32fast::hash(signed.as_bytes())) {
            return Err(MalformedKey::Checksum);
        }
        Ok((PlainKey(text.to_owned()), key_type))
    }

    /// The clear text, for the single answer that shows it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn prefix(&self) -> &str {
        &self.0[..PREFIX_LEN]
    }

    /// Last four characters, kept for display ("sk_live_…x9Qa").
    pub fn last_four(&self) -> &str {
        &self.0[self.0.len() - 4..]
    }
}

/// Every key keyledger issues, and nothing else of its output, as a
/// regular expression (RE2, PCRE and Rust syntax alike) for secret
/// scanners — gitleaks, TruffleHog — and for the README, which quotes it.
/// The word boundaries keep a longer run of letters and digits from
/// matching in part.
pub const KEY_PATTERN: &str = r"\b(?:pk_live|sk_live|sk_test)_[0-9A-Za-z]{49}\b";

/// [`KEY_PATTERN`] without its boundaries: GitHub's custom patterns take
/// the secret's format alone (their default before/after patterns bound it).
pub const KEY_SECRET_FORMAT: &str = r"(?:pk_live|sk_live|sk_test)_[0-9A-Za-z]{49}";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MalformedKey {
    #[error("the key does not start with pk_live_, sk_live_ or sk_test_")]
    Prefix,
    #[error("the key has the wrong length")]
    Length,
    #[error("the key has characters outside base62")]
    Alphabet,
    #[error("the key's checksum does not match (a typo?)")]
    Checksum,
}

/// A key's checksum: its CRC-32 in [`CHECKSUM_LEN`] base62 digits, as
/// [`base62`] writes the four bytes, but on the stack (every verification
/// checks one: the general form's allocations and 128-bit divisions were a
/// fortieth of a verification's instructions).
fn checksum_digits(crc: u32) -> [u8; CHECKSUM_LEN] {
    let mut remainder = crc;
    let mut digits = [0u8; CHECKSUM_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(remainder % 62) as usize];
        remainder /= 62;
    }
    digits
}

/// Fixed-width base62 of a big-endian number (leading zeros kept).
fn base62(bytes: &[u8], width: usize) -> String {
    // Ten digits at a time: the number, in 64-bit limbs (most significant
    // first), divided by 62^10 (under 2^60) per pass. A byte at a time took
    // a division per byte and digit: a tenth of a key creation's work.
    const TEN_DIGITS: u64 = 62u64.pow(10);
    let mut limbs: Vec<u64> = bytes
        .rchunks(8)
        .rev()
        .map(|chunk| chunk.iter().fold(0, |n, &b| (n << 8) | u64::from(b)))
        .collect();
    let mut digits = vec![0u8; width];
    for group in digits.rchunks_mut(10) {
        let mut remainder = 0u64;
        for limb in limbs.iter_mut() {
            let value = (u128::from(remainder) << 64) | u128::from(*limb);
            *limb = (value / u128::from(TEN_DIGITS)) as u64;
            remainder = (value % u128::from(TEN_DIGITS)) as u64;
        }
        for digit in group.iter_mut().rev() {
            *digit = BASE62[(remainder % 62) as usize];
            remainder /= 62;
        }
        debug_assert!(remainder == 0, "width too small");
    }
    debug_assert!(limbs.iter().all(|&l| l == 0), "width too small");
    String::from_utf8(digits).expect("base62 is ASCII")
}

/// The server-side key of the keyed hash (32 bytes, configured as 64 hex
/// characters). Its `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct HashKey([u8; 32]);

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashKey(redacted)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the hash key must be 64 hexadecimal characters (32 bytes)")]
pub struct InvalidHashKey;

impl HashKey {
    pub fn from_bytes(bytes: [u8; 32]) -> HashKey {
        HashKey(bytes)
    }

    pub fn from_hex(text: &str) -> Result<HashKey, InvalidHashKey> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| InvalidHashKey)?;
        Ok(HashKey(bytes))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn hash(&self, key: &PlainKey) -> KeyHash {
        KeyHash(*blake3::keyed_hash(&self.0, key.0.as_bytes()).as_bytes())
    }

    /// A key of its own for another purpose (`context`: a fixed,
    /// globally unique string), so no MAC made with it can ever be taken
    /// for a key hash or for another purpose's MAC.
    pub fn derive(&self, context: &'static str) -> [u8; 32] {
        blake3::derive_key(context, &self.0)
    }
}

/// The stored form of a key: its keyed blake3 hash (hex in events).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({})", hex::encode(&self.0[..4]))
    }
}

impl Serialize for KeyHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for KeyHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&text, &mut bytes).map_err(serde::de::Error::custom)?;
        Ok(KeyHash(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// base62 a byte at a time, as keys were first written: the faster
    /// form must give every key the same text.
    fn base62_bytewise(bytes: &[u8], width: usize) -> String {
        let mut number = bytes.to_vec();
        let mut digits = vec![0u8; width];
        for digit in digits.iter_mut().rev() {
            let mut remainder = 0u32;
            for byte in number.iter_mut() {
                let value = (remainder << 8) | u32::from(*byte);
                *byte = (value / 62) as u8;
                remainder = value % 62;
            }
            *digit = BASE62[remainder as usize];
        }
        String::from_utf8(digits).unwrap()
    }

    #[test]
    fn base62_writes_what_it_always_wrote() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        };
        for round in 0..2_000 {
            let body: [u8; 32] = std::array::from_fn(|_| next());
            let checksum: [u8; 4] = std::array::from_fn(|_| next());
            assert_eq!(
                base62(&body, BODY_LEN),
                base62_bytewise(&body, BODY_LEN),
                "round {round}"
            );
            assert_eq!(
                base62(&checksum, CHECKSUM_LEN),
                base62_bytewise(&checksum, CHECKSUM_LEN)
            );
            assert_eq!(
                checksum_digits(u32::from_be_bytes(checksum)).as_slice(),
                base62_bytewise(&checksum, CHECKSUM_LEN).as_bytes()
            );
        }
        for edge in [[0u8; 32], [0xff; 32], [1; 32]] {
            assert_eq!(base62(&edge, BODY_LEN), base62_bytewise(&edge, BODY_LEN));
        }
        assert_eq!(base62(&[0xff; 4], CHECKSUM_LEN), "4gfFC3");
        assert_eq!(&checksum_digits(u32::MAX), b"4gfFC3");
        assert_eq!(&checksum_digits(0), b"000000");
        assert_eq!(base62(&[0; 32], BODY_LEN), "0".repeat(BODY_LEN));
    }

    fn key(key_type: KeyType, fill: u8) -> PlainKey {
        PlainKey::encode(key_type, &[fill; 32])
    }

    #[test]
    fn every_type_round_trips_through_the_parser() {
        for key_type in KeyType::ALL {
            for fill in [0u8, 1, 0x7f, 0xff] {
                let plain = key(key_type, fill);
                assert_eq!(plain.expose().len(), KEY_LEN);
                assert!(plain.expose().starts_with(key_type.prefix()));
                let (parsed, parsed_type) = PlainKey::parse(plain.expose()).unwrap();
                assert_eq!((parsed, parsed_type), (plain, key_type));
            }
        }
    }

    #[test]
    fn the_parser_names_what_is_wrong() {
        let good = key(KeyType::Secret, 42).expose().to_owned();
        assert_eq!(
            PlainKey::parse(&good.replacen("sk_live_", "xk_live_", 1)).unwrap_err(),
            MalformedKey::Prefix
        );
        assert_eq!(PlainKey::parse(&good[..KEY_LEN - 1]).unwrap_err(), MalformedKey::Length);
        assert_eq!(PlainKey::parse(&format!("{good}a")).unwrap_err(), MalformedKey::Length);
        let mut bad_alphabet = good.clone().into_bytes();
        bad_alphabet[20] = b'-';
        assert_eq!(
            PlainKey::parse(std::str::from_utf8(&bad_alphabet).unwrap()).unwrap_err(),
            MalformedKey::Alphabet
        );
        let mut typo = good.into_bytes();
        typo[20] = if typo[20] == b'a' { b'b' } else { b'a' };
        assert_eq!(
            PlainKey::parse(std::str::from_utf8(&typo).unwrap()).unwrap_err(),
            MalformedKey::Checksum
        );
    }

    #[test]
    fn the_hash_depends_on_the_hash_key_and_never_shows_the_key() {
        let plain = key(KeyType::Test, 7);
        let a = HashKey::from_bytes([1; 32]);
        let b = HashKey::from_hex(&"02".repeat(32)).unwrap();
        assert_ne!(a.hash(&plain), b.hash(&plain));
        assert_eq!(a.hash(&plain), a.hash(&plain));
        assert!(!format!("{plain:?}").contains(&plain.expose()[8..51]));
        assert_eq!(format!("{a:?}"), "HashKey(redacted)");
        assert!(HashKey::from_hex("abc").is_err());
    }

    /// The expressions the README publishes for secret scanners match every
    /// key of every type and nothing else keyledger writes, nor near misses.
    #[test]
    fn the_published_key_expressions_match_every_key_and_nothing_else() {
        let readme = include_str!("../../../README.md");
        for quoted in [
            format!("`{KEY_PATTERN}`"),
            format!("regex = \'\'\'{KEY_PATTERN}\'\'\'"),
            format!("keyledger: '{KEY_PATTERN}'"),
            format!("`{KEY_SECRET_FORMAT}`"),
        ] {
            assert!(readme.contains(&quoted), "the README quotes {quoted}");
        }
        assert_eq!(KEY_PATTERN, format!(r"\b{KEY_SECRET_FORMAT}\b"));
        let pattern = regex::Regex::new(KEY_PATTERN).unwrap();
        let whole = regex::Regex::new(&format!("^{KEY_SECRET_FORMAT}$")).unwrap();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = || {
            let mut bytes = [0u8; 32];
            for b in &mut bytes {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            bytes
        };
        for key_type in KeyType::ALL {
            for n in 0..2_000 {
                let bytes = if n == 0 {
                    [0; 32]
                } else if n == 1 {
                    [255; 32]
                } else {
                    random()
                };
                let key = PlainKey::encode(key_type, &bytes);
                let text = key.expose();
                assert!(whole.is_match(text), "{text}");
                for context in [
                    format!("KEY={text}"),
                    format!("\"key\": \"{text}\","),
                    format!("Bearer {text}\n"),
                ] {
                    let found = pattern.find(&context).map(|m| m.as_str());
                    assert_eq!(found, Some(text), "{context}");
                }
            }
        }
        let key = PlainKey::encode(KeyType::Secret, &[7; 32]);
        let body = &key.expose()[PREFIX_LEN..];
        let never = [
            "key_01JDZ8Q4M5X7H9K2N3P4R5S6T7".to_owned(),
            "org_01JDZ8Q4M5X7H9K2N3P4R5S6T7".to_owned(),
            "req_0193a1c2b3d47e4f8a9b0c1d2e3f4a5b".to_owned(),
            "0193a1c2-b3d4-7e4f-8a9b-0c1d2e3f4a5b".to_owned(),
            hex::encode(HashKey::from_bytes([3; 32]).hash(&key).0),
            format!("sk_live_{}", &body[1..]),
            format!("sk_live_{body}A"),
            format!("sk_prod_{body}"),
            format!("pk_test_{body}"),
            format!("SK_LIVE_{body}"),
            format!("sk_live{body}"),
            format!("sk-live-{body}"),
            format!("sk_live_{}-{}", &body[..20], &body[21..]),
            format!("sk_live_{}é", &body[..48]),
            format!("xsk_live_{body}"),
            format!("whsec_{body}"),
            format!("sk_live_…{}", &body[45..]),
        ];
        for text in &never {
            assert!(!pattern.is_match(text), "matched {text}");
        }
    }
}
