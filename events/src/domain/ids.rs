//! Identifiers of keys (`key_…`), organizations (`org_…`), webhook
//! endpoints (`wh_…`) and their deliveries (`whd_…`): a UUIDv7 written
//! in Crockford base32 (the ULID alphabet), so ids sort by creation time as
//! plain strings and read like those of other API products.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Characters of an id after its prefix.
const ENCODED_LEN: usize = 26;

/// `id` in Crockford base32, into `text` (which is `ENCODED_LEN` long).
fn encode_into(id: Uuid, text: &mut [u8]) {
    let value = id.as_u128();
    for (i, c) in text.iter_mut().enumerate() {
        *c = CROCKFORD[((value >> (125 - 5 * i)) & 31) as usize];
    }
}

/// What `encode_into` wrote (ASCII by construction).
fn as_text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("an id is ASCII")
}

fn decode(text: &str) -> Option<Uuid> {
    if text.len() != 26 || text.as_bytes()[0] > b'7' {
        return None;
    }
    let mut value: u128 = 0;
    for c in text.bytes() {
        let digit = CROCKFORD.iter().position(|&a| a == c.to_ascii_uppercase())?;
        value = (value << 5) | digit as u128;
    }
    Some(Uuid::from_u128(value))
}

macro_rules! prefixed_id {
    ($name:ident, $prefix:literal) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Uuid);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A new, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl $name {
            /// The id as text, on the stack (ids are written on every
            /// answer and event: no allocation, no formatting machinery).
            fn write_text(&self, text: &mut [u8; $prefix.len() + ENCODED_LEN]) {
                let (prefix, encoded) = text.split_at_mut($prefix.len());
                prefix.copy_from_slice($prefix.as_bytes());
                encode_into(self.0, encoded);
            }

            /// Appends the id's text to `out`: what `Display` writes,
            /// without the formatting machinery.
            pub fn push_to(&self, out: &mut Vec<u8>) {
                let mut text = [0; $prefix.len() + ENCODED_LEN];
                self.write_text(&mut text);
                out.extend_from_slice(&text);
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut text = [0; $prefix.len() + ENCODED_LEN];
                self.write_text(&mut text);
                f.write_str(as_text(&text))
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;

            fn from_str(text: &str) -> Result<Self, InvalidId> {
                text.strip_prefix($prefix)
                    .and_then(decode)
                    .map(Self)
                    .ok_or(InvalidId)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut text = [0; $prefix.len() + ENCODED_LEN];
                self.write_text(&mut text);
                s.serialize_str(as_text(&text))
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                /// Reads the text where it lies when it can (no copy).
                struct Text;

                impl serde::de::Visitor<'_> for Text {
                    type Value = $name;

                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "an identifier ({}…)", $prefix)
                    }

                    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<$name, E> {
                        text.parse().map_err(E::custom)
                    }
                }

                d.deserialize_str(Text)
            }
        }
    };
}

prefixed_id!(KeyId, "key_");
prefixed_id!(OrgId, "org_");
prefixed_id!(WebhookId, "wh_");
prefixed_id!(DeliveryId, "whd_");

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid identifier")]
pub struct InvalidId;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sort_by_creation() {
        let first = KeyId::new();
        let second = KeyId::new();
        let text = first.to_string();
        assert!(text.starts_with("key_") && text.len() == 30);
        assert_eq!(text.parse::<KeyId>().unwrap(), first);
        assert!(first.to_string() < second.to_string());
    }

    #[test]
    fn ids_are_json_strings_read_back_however_they_arrive() {
        let id = OrgId::new();
        let text = id.to_string();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        // Borrowed from the input, unescaped into a copy, or from a value.
        assert_eq!(serde_json::from_str::<OrgId>(&json).unwrap(), id);
        let escaped = format!("\"\\u006f{}\"", &text[1..]);
        assert_eq!(serde_json::from_str::<OrgId>(&escaped).unwrap(), id);
        assert_eq!(serde_json::from_value::<OrgId>(serde_json::json!(text)).unwrap(), id);
        let wrong = serde_json::from_str::<KeyId>(&json).unwrap_err().to_string();
        assert!(wrong.starts_with("not a valid identifier"), "{wrong}");
        let number = serde_json::from_str::<KeyId>("7").unwrap_err().to_string();
        assert!(number.contains("expected an identifier (key_…)"), "{number}");
        let webhook = WebhookId::new();
        assert_eq!(
            serde_json::to_value(webhook).unwrap(),
            serde_json::json!(webhook.to_string())
        );
    }

    #[test]
    fn wrong_prefix_or_alphabet_is_refused() {
        let key = KeyId::new().to_string();
        assert!(key.replacen("key_", "org_", 1).parse::<OrgId>().is_ok());
        assert!(key.parse::<OrgId>().is_err());
        assert!("key_8ZZZZZZZZZZZZZZZZZZZZZZZZZ".parse::<KeyId>().is_err());
        assert!("key_0000000000000000000000000U".parse::<KeyId>().is_err());
        assert!("key_short".parse::<KeyId>().is_err());
    }
}
