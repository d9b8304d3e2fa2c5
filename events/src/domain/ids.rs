//! Identifiers of keys (`key_…`), organizations (`org_…`), webhook
//! endpoints (`wh_…`) and their deliveries (`whd_…`): a UUIDv7 written
//! in Crockford base32 (the ULID alphabet), so ids sort by creation time as
//! plain strings and read like those of other API products.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

fn encode(id: Uuid) -> String {
    let value = id.as_u128();
    (0..26)
        .map(|i| CROCKFORD[((value >> (125 - 5 * i)) & 31) as usize] as char)
        .collect()
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

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, encode(self.0))
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
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
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
    fn wrong_prefix_or_alphabet_is_refused() {
        let key = KeyId::new().to_string();
        assert!(key.replacen("key_", "org_", 1).parse::<OrgId>().is_ok());
        assert!(key.parse::<OrgId>().is_err());
        assert!("key_8ZZZZZZZZZZZZZZZZZZZZZZZZZ".parse::<KeyId>().is_err());
        assert!("key_0000000000000000000000000U".parse::<KeyId>().is_err());
        assert!("key_short".parse::<KeyId>().is_err());
    }
}
