//! The confirmation links of alert recipients. A link's token names the
//! organization, the address and when the confirmation was requested, and
//! carries a MAC of them keyed with a key derived from the hash key: the API
//! checks a token without storing it anywhere, and nobody can make one for
//! an address they choose. Whether a genuine token still works (the address
//! is still listed and unconfirmed, this is its newest request, 7 days have
//! not passed) is the `Org` aggregate's decision, so a link works once.
//!
//! Token: `<org id>.<requested at, µs since 1970>.<address in hex>.<MAC in hex>`.
//! Hex keeps it free of `_`, so no token can look like an API key.
//!
//! Nothing stores a token or a link: the mailer builds the link from the
//! outbox row (organization, address, time of the request) when it sends
//! the email, and the API checks the token it is handed.

use chrono::{DateTime, Utc};

use super::{EmailAddress, HashKey, OrgId};

/// Domain separation of the MAC key (blake3 `derive_key` context).
const CONTEXT: &str = "keyledger 2026-11-28 alert recipient confirmation link v1";

/// The path of confirmation links (docs/api.md); the token is its one query
/// parameter, `token`.
pub const CONFIRM_PATH: &str = "/v1/alert-recipients/confirm";

/// What a confirmation link asks: "confirm `email` for `org_id`, as
/// requested at `requested_at`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    pub org_id: OrgId,
    pub email: EmailAddress,
    pub requested_at: DateTime<Utc>,
}

impl Confirmation {
    fn signed_part(&self) -> String {
        format!(
            "{}.{}.{}",
            self.org_id,
            self.requested_at.timestamp_micros(),
            hex::encode(self.email.as_str())
        )
    }

    fn mac(key: &HashKey, signed_part: &str) -> blake3::Hash {
        blake3::keyed_hash(&key.derive(CONTEXT), signed_part.as_bytes())
    }

    /// The token of this confirmation's link.
    pub fn token(&self, key: &HashKey) -> String {
        let signed = self.signed_part();
        let mac = Self::mac(key, &signed);
        format!("{signed}.{}", mac.to_hex())
    }

    /// The link of this confirmation on the deployment reached at
    /// `public_url` (no trailing slash).
    pub fn link(&self, key: &HashKey, public_url: &str) -> String {
        format!("{public_url}{CONFIRM_PATH}?token={}", self.token(key))
    }

    /// The confirmation a token asks for, if this deployment made it.
    pub fn verify(token: &str, key: &HashKey) -> Option<Confirmation> {
        let (signed, mac) = token.rsplit_once('.')?;
        // `Hash` compares in constant time.
        if blake3::Hash::from_hex(mac).ok()? != Self::mac(key, signed) {
            return None;
        }
        let mut parts = signed.split('.');
        let (org, micros, email) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let email = String::from_utf8(hex::decode(email).ok()?).ok()?;
        let confirmation = Confirmation {
            org_id: org.parse().ok()?,
            email: EmailAddress::parse(&email).ok()?,
            requested_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        };
        // Only the canonical spelling of a confirmation passes.
        (confirmation.signed_part() == signed).then_some(confirmation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn confirmation() -> Confirmation {
        Confirmation {
            org_id: OrgId::from_uuid(uuid::Uuid::from_u128(0x0193_5a1c_0000_7000_8000_0000_0000_0001)),
            email: EmailAddress::parse("ops@acme.example").unwrap(),
            requested_at: Utc.with_ymd_and_hms(2026, 11, 28, 9, 0, 0).unwrap() + chrono::Duration::microseconds(7),
        }
    }

    #[test]
    fn a_token_verifies_with_the_key_that_made_it_and_no_other() {
        let key = HashKey::from_bytes([7; 32]);
        let token = confirmation().token(&key);
        assert_eq!(Confirmation::verify(&token, &key), Some(confirmation()));
        assert_eq!(Confirmation::verify(&token, &HashKey::from_bytes([8; 32])), None);
        // Only the org id's own `org_` has an underscore: never a key prefix.
        let rest = token.strip_prefix("org_").unwrap();
        assert!(rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'), "{token}");
        assert_eq!(
            confirmation().link(&key, "https://keys.example.com"),
            format!("https://keys.example.com/v1/alert-recipients/confirm?token={token}")
        );
    }

    #[test]
    fn a_changed_token_does_not_verify() {
        let key = HashKey::from_bytes([7; 32]);
        let token = confirmation().token(&key);
        let parts: Vec<&str> = token.split('.').collect();
        let other_email = hex::encode("attacker@evil.example");
        let later = (confirmation().requested_at.timestamp_micros() + 1).to_string();
        for bad in [
            [parts[0], parts[1], &other_email, parts[3]].join("."),
            [parts[0], &later, parts[2], parts[3]].join("."),
            [parts[0], parts[1], parts[2], &parts[3][..63]].join("."),
            format!("{token}0"),
            format!("x{token}"),
            String::new(),
            "...".into(),
        ] {
            assert_eq!(Confirmation::verify(&bad, &key), None, "{bad}");
        }
    }
}
