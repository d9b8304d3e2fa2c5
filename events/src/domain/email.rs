//! Email addresses alerts may be sent to: a bare addr-spec (RFC 5321/5322)
//! and nothing else. An address ends up in an SMTP envelope and a `To`
//! header, so anything a mail system could read as more than one plain
//! mailbox is refused: display names, quotes, angle brackets, commas,
//! comments, whitespace and line breaks, IP literals, non-ASCII text.
//!
//! Read back from the log, an address goes through `parse` again (and so
//! gets its canonical spelling, domain in lower case). Versions before
//! strict addresses stored some that `parse` now refuses (`"Evil"<x@y.z>`,
//! `a,c@d.com`); an organization's list keeps such an address as a
//! [`ListedAddress::Unusable`]: shown as it was typed, never confirmed,
//! never mailed, until an admin saves a list without it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest address SMTP carries (RFC 5321: a 256-octet path, less `<>`).
pub const MAX_ADDRESS_LEN: usize = 254;
const MAX_LOCAL_LEN: usize = 64;
const MAX_DOMAIN_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// `local@domain`: the local part a dot-atom (RFC 5322 `atext` words joined
/// by single dots), the domain two or more DNS labels (letters, digits,
/// inner hyphens), stored in lower case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct EmailAddress(String);

/// RFC 5322 `atext`: what a dot-atom's words are made of.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
}

impl EmailAddress {
    /// The address, or what is wrong with it in words a user can act on.
    pub fn parse(text: &str) -> Result<EmailAddress, String> {
        let refuse = |why: &str| {
            Err(format!(
                "'{}' is not a plain email address (name@example.com): {why}",
                text.escape_debug()
            ))
        };
        if text.is_empty() {
            return refuse("it is empty");
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return refuse("spaces and line breaks are not allowed");
        }
        if text.chars().any(|c| "<>\"(),;:[]\\".contains(c)) {
            return refuse("give the bare address only: no name, quotes, angle brackets, commas or comments");
        }
        if !text.is_ascii() {
            return refuse("only ASCII is allowed (write an international domain in its xn-- form)");
        }
        if text.len() > MAX_ADDRESS_LEN {
            return refuse(&format!("at most {MAX_ADDRESS_LEN} characters"));
        }
        let Some((local, domain)) = text.split_once('@').filter(|(_, d)| !d.contains('@')) else {
            return refuse("it needs exactly one @");
        };
        if local.is_empty() || local.len() > MAX_LOCAL_LEN {
            return refuse(&format!(
                "the part before the @ must have 1 to {MAX_LOCAL_LEN} characters"
            ));
        }
        if local
            .split('.')
            .any(|word| word.is_empty() || !word.chars().all(is_atext))
        {
            return refuse("the part before the @ must be words joined by single dots");
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 || domain.len() > MAX_DOMAIN_LEN {
            return refuse("the domain must have a dot (example.com) and at most 253 characters");
        }
        let label_ok = |label: &&str| {
            (1..=MAX_LABEL_LEN).contains(&label.len())
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if !labels.iter().all(label_ok) {
            return refuse("the domain must be names of letters, digits and inner hyphens, separated by single dots");
        }
        if labels.last().is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit())) {
            return refuse("the domain must be a name, not an IP address");
        }
        Ok(EmailAddress(format!("{local}@{}", domain.to_ascii_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Validated like [`EmailAddress::parse`], and in its canonical spelling.
impl<'de> Deserialize<'de> for EmailAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        EmailAddress::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// An address in an organization's list of alert addresses, as the log
/// recorded it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ListedAddress {
    Valid(EmailAddress),
    /// Stored by a version before strict addresses and refused by
    /// [`EmailAddress::parse`] today, kept as it was typed: it can never be
    /// confirmed or mailed.
    Unusable(String),
}

impl ListedAddress {
    /// The address as listed: the canonical spelling, or the text as typed.
    pub fn as_str(&self) -> &str {
        match self {
            ListedAddress::Valid(address) => address.as_str(),
            ListedAddress::Unusable(text) => text,
        }
    }

    /// The address, if it is one alerts may go to.
    pub fn valid(&self) -> Option<&EmailAddress> {
        match self {
            ListedAddress::Valid(address) => Some(address),
            ListedAddress::Unusable(_) => None,
        }
    }

    /// `text` as read back from the log.
    pub fn read(text: &str) -> ListedAddress {
        EmailAddress::parse(text).map_or_else(|_| ListedAddress::Unusable(text.to_owned()), ListedAddress::Valid)
    }

    /// `raw` as read back from the log, in order, each address once (two
    /// spellings an older version kept apart may now be the same address).
    pub fn read_list(raw: &[String]) -> Vec<ListedAddress> {
        let mut list: Vec<ListedAddress> = Vec::with_capacity(raw.len());
        for address in raw.iter().map(|text| ListedAddress::read(text)) {
            if !list.contains(&address) {
                list.push(address);
            }
        }
        list
    }
}

impl From<EmailAddress> for ListedAddress {
    fn from(address: EmailAddress) -> Self {
        ListedAddress::Valid(address)
    }
}

impl PartialEq<EmailAddress> for ListedAddress {
    fn eq(&self, other: &EmailAddress) -> bool {
        self.valid() == Some(other)
    }
}

impl fmt::Display for ListedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ListedAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ListedAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(ListedAddress::read(&String::deserialize(deserializer)?))
    }
}

/// `#[serde(deserialize_with)]` for a list of alert addresses in an event:
/// [`ListedAddress::read_list`].
pub fn deserialize_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<ListedAddress>, D::Error> {
    Ok(ListedAddress::read_list(&Vec::<String>::deserialize(deserializer)?))
}

/// [`deserialize_list`] for an optional list.
pub fn deserialize_optional_list<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<ListedAddress>>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(deserializer)?.map(|raw| ListedAddress::read_list(&raw)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_addresses_are_accepted_and_their_domain_lowered() {
        for good in [
            "ops@acme.example",
            "first.last+tag@mail.example.com",
            "o'brien@example.ie",
            "x_y-z@a-b.example",
            "{weird}|~!#$%&*/=?^`@x.io",
            "a@b.co",
            "xn--caf-dma@xn--bcher-kva.example",
        ] {
            assert_eq!(EmailAddress::parse(good).unwrap().as_str(), good.to_string());
        }
        assert_eq!(
            EmailAddress::parse("Ops@Acme.Example").unwrap().as_str(),
            "Ops@acme.example"
        );
        let longest = format!(
            "{}@{}.{}.{}.{}",
            "l".repeat(64),
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(40),
            "com"
        );
        assert!(longest.len() <= MAX_ADDRESS_LEN);
        assert!(EmailAddress::parse(&longest).is_ok());
    }

    #[test]
    fn anything_but_one_bare_mailbox_is_refused() {
        for bad in [
            "",
            "\"Evil\"<x@y.z>",
            "Evil <x@y.z>",
            "<x@y.z>",
            "x@y.z>",
            "a,c@d.com",
            "x@y.z\r\nBcc: a@b.c",
            "x@y.z\n",
            " x@y.z",
            "x\t@y.z",
            "\"quoted\"@y.z",
            "x(comment)@z.com",
            "x@z.com;y@z.com",
            "x:y@z.com",
            "x\\y@z.com",
            "x@[127.0.0.1]",
            "x@127.0.0.1",
            "x@localhost",
            "x@z.com.",
            "x@.z.com",
            "x@z..com",
            "x@-z.com",
            "x@z-.com",
            "x@z_z.com",
            "x..y@z.com",
            ".x@z.com",
            "x.@z.com",
            "@z.com",
            "x@",
            "x",
            "x@y@z.com",
            "caf\u{e9}@z.com",
            "x@z.c\u{f6}m",
            "x\u{200b}@z.com",
            "x\u{0}@z.com",
        ] {
            let problem = EmailAddress::parse(bad).expect_err(bad);
            assert!(problem.contains("is not a plain email address"), "{problem}");
            assert!(!problem.contains('\n') && !problem.contains('\r'), "{problem}");
        }
        assert!(EmailAddress::parse(&format!("{}@z.com", "a".repeat(65))).is_err());
        assert!(EmailAddress::parse(&format!("x@{}.com", "a".repeat(64))).is_err());
        let too_long = format!("x@{}.com", vec!["a".repeat(60); 5].join("."));
        assert!(too_long.len() > 254);
        assert!(EmailAddress::parse(&too_long).is_err());
    }

    #[test]
    fn an_address_read_back_is_parsed_again() {
        let read: EmailAddress = serde_json::from_str("\"Ops@Acme.Example\"").unwrap();
        assert_eq!(read.as_str(), "Ops@acme.example");
        for bad in ["\"\\\"Evil\\\"<x@y.z>\"", "\"a,c@d.com\"", "\"\"", "42"] {
            assert!(serde_json::from_str::<EmailAddress>(bad).is_err(), "{bad}");
        }
        assert_eq!(serde_json::to_string(&read).unwrap(), "\"Ops@acme.example\"");
    }

    #[test]
    fn a_list_from_an_older_version_keeps_what_no_longer_parses_as_unusable() {
        let old = r#"["Ops@Acme.Example", "\"Evil\"<x@y.z>", "ops@acme.example", "Ops@acme.example", "a,c@d.com"]"#;
        #[derive(serde::Deserialize)]
        struct Event {
            #[serde(deserialize_with = "deserialize_list")]
            list: Vec<ListedAddress>,
        }
        let event: Event = serde_json::from_str(&format!("{{\"list\": {old}}}")).unwrap();
        let ops = EmailAddress::parse("Ops@acme.example").unwrap();
        assert_eq!(
            event.list,
            [
                ListedAddress::Valid(ops.clone()),
                ListedAddress::Unusable("\"Evil\"<x@y.z>".into()),
                ListedAddress::Valid(EmailAddress::parse("ops@acme.example").unwrap()),
                ListedAddress::Unusable("a,c@d.com".into()),
            ]
        );
        assert!(event.list[0] == ops && event.list[1].valid().is_none());
        assert_eq!(
            serde_json::to_value(&event.list).unwrap(),
            serde_json::json!(["Ops@acme.example", "\"Evil\"<x@y.z>", "ops@acme.example", "a,c@d.com"])
        );
    }
}
