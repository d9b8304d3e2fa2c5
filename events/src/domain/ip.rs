//! IP addresses and CIDR ranges as operators and tenants write them
//! (`203.0.113.7`, `10.0.0.0/8`, `2001:db8::/32`), and a key's allowlist of
//! them ([`AllowedIps`]). Addresses are compared in canonical form: an
//! IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a dual-stack socket
//! reports) is the IPv4 address it maps, and a mapped range
//! (`::ffff:10.0.0.0/104`) the IPv4 range it maps.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address range: a network address and a prefix length. A single
/// address is a range of one (`/32`, `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// The range of `prefix` leading bits around `address` (host bits are
    /// cleared); `None` when the prefix is longer than the address.
    pub fn new(address: IpAddr, prefix: u8) -> Option<IpRange> {
        let address = address.to_canonical();
        Some(IpRange {
            network: mask(address, prefix)?,
            prefix,
        })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        mask(address.to_canonical(), self.prefix) == Some(self.network)
    }
}

fn mask(address: IpAddr, prefix: u8) -> Option<IpAddr> {
    match address {
        IpAddr::V4(v4) if prefix <= 32 => {
            let bits = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            Some(Ipv4Addr::from(u32::from(v4) & bits).into())
        }
        IpAddr::V6(v6) if prefix <= 128 => {
            let bits = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            Some(Ipv6Addr::from(u128::from(v6) & bits).into())
        }
        _ => None,
    }
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(text: &str) -> Result<IpRange, String> {
        let text = text.trim();
        let problem =
            || format!("'{text}' is not an IP address or CIDR range (e.g. 203.0.113.7, 10.0.0.0/8, 2001:db8::/32)");
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let written: IpAddr = address.parse().map_err(|_| problem())?;
        let full = if written.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => full,
            Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                digits.parse::<u8>().map_err(|_| problem())?
            }
            Some(_) => return Err(problem()),
        };
        let address = written.to_canonical();
        // An IPv4-mapped range: its last 32 bits are the IPv4 range.
        let prefix = match (written, address) {
            (IpAddr::V6(_), IpAddr::V4(_)) if prefix >= 96 => prefix - 96,
            (IpAddr::V6(_), IpAddr::V4(_)) => return Err(problem()),
            _ => prefix,
        };
        IpRange::new(address, prefix).ok_or_else(problem)
    }
}

impl IpRange {
    /// Whether `text` names its range exactly: no host bits set below the
    /// prefix (`203.0.113.7/24` does not: it means `203.0.113.0/24`, which
    /// is probably not what its writer thought).
    pub fn is_exactly(&self, text: &str) -> bool {
        let address = text.trim().split('/').next().unwrap_or_default();
        address.parse::<IpAddr>().map(|a| a.to_canonical()) == Ok(self.network)
    }

    /// The number of leading bits that name the range.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

/// A single address prints without its prefix (`203.0.113.7`); a range as
/// `network/prefix` (`203.0.113.0/24`, `2001:db8::/32`).
impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = if self.network.is_ipv4() { 32 } else { 128 };
        if self.prefix == full {
            write!(f, "{}", self.network)
        } else {
            write!(f, "{}/{}", self.network, self.prefix)
        }
    }
}

impl serde::Serialize for IpRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for IpRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The most entries a key's allowlist may have (docs/api.md, "IP allowlists").
pub const MAX_ALLOWED_IPS: usize = 100;

/// A key's IP allowlist: the addresses and ranges its requests may come
/// from. Empty: no allowlist, any address. Every entry names its range
/// exactly (no host bits set) and appears once, so the list reads back as
/// it was meant.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct AllowedIps(Vec<IpRange>);

impl AllowedIps {
    /// The list `raw` as a user typed it (at most [`MAX_ALLOWED_IPS`]
    /// addresses or CIDR ranges), or every problem with it, in words a user
    /// can act on. An empty list is no allowlist.
    pub fn parse(raw: &[String]) -> Result<AllowedIps, Vec<String>> {
        let mut problems = Vec::new();
        if raw.len() > MAX_ALLOWED_IPS {
            problems.push(format!(
                "at most {MAX_ALLOWED_IPS} addresses or ranges; this list has {} (use wider CIDR ranges)",
                raw.len()
            ));
            return Err(problems);
        }
        let mut ranges: Vec<IpRange> = Vec::with_capacity(raw.len());
        for text in raw {
            let shown = shorten(text.trim());
            match text.parse::<IpRange>() {
                Err(_) => problems.push(format!(
                    "'{shown}' is not an IP address or CIDR range (e.g. 203.0.113.7, 203.0.113.0/24, 2001:db8::/32)"
                )),
                Ok(range) if !range.is_exactly(text) => problems.push(format!(
                    "'{shown}' has host bits set below its /{}: write the range as {range}, or the single address \
                     without a prefix",
                    text.trim().rsplit('/').next().unwrap_or_default()
                )),
                Ok(range) if ranges.contains(&range) => {
                    problems.push(format!("'{shown}' is listed twice (as {range})"))
                }
                Ok(range) => ranges.push(range),
            }
        }
        if problems.is_empty() {
            Ok(AllowedIps(ranges))
        } else {
            Err(problems)
        }
    }

    /// No allowlist: every address may use the key.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a request from `client` may use the key. With an allowlist,
    /// an unknown client address (`None`) may not.
    pub fn allows(&self, client: Option<IpAddr>) -> bool {
        self.0.is_empty() || client.is_some_and(|ip| self.0.iter().any(|range| range.contains(ip)))
    }

    pub fn ranges(&self) -> &[IpRange] {
        &self.0
    }

    /// Each entry as the key object shows it (`203.0.113.0/24`, `198.51.100.7`).
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

/// Stored entries (the read model's `text[]`), written by [`AllowedIps`]
/// itself: read back without the writer's rules.
impl TryFrom<Vec<String>> for AllowedIps {
    type Error = String;

    fn try_from(stored: Vec<String>) -> Result<AllowedIps, String> {
        stored
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()
            .map(AllowedIps)
    }
}

/// `text` cut to a length fit for an error message.
fn shorten(text: &str) -> String {
    const MAX: usize = 60;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ranges_contain_their_addresses() {
        let one: IpRange = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")));
        assert!(one.contains(ip("::ffff:127.0.0.1")), "IPv4-mapped is the same address");
        assert!(!one.contains(ip("127.0.0.2")));
        assert_eq!(
            one.to_string(),
            "127.0.0.1",
            "a single address prints without its prefix"
        );
        let eight: IpRange = "10.1.2.3/8".parse().unwrap();
        assert_eq!(eight.to_string(), "10.0.0.0/8");
        assert!(eight.contains(ip("10.255.0.1")) && !eight.contains(ip("11.0.0.1")));
        let everything: IpRange = "0.0.0.0/0".parse().unwrap();
        assert!(everything.contains(ip("203.0.113.7")) && !everything.contains(ip("::1")));
        let v6: IpRange = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!("::1".parse::<IpRange>().unwrap().contains(ip("::1")));
        assert!("::/0".parse::<IpRange>().unwrap().contains(ip("2001:db8::1")));
    }

    #[test]
    fn malformed_ranges_are_refused() {
        for text in [
            "",
            "localhost",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0/8",
            "1.2.3.4/8/8",
            "::ffff:10.0.0.0/95",
            "fe80::1%eth0",
        ] {
            assert!(text.parse::<IpRange>().is_err(), "{text}");
        }
    }

    #[test]
    fn mapped_ranges_are_their_ipv4_ranges() {
        let mapped: IpRange = "::ffff:203.0.113.0/120".parse().unwrap();
        assert_eq!(mapped, "203.0.113.0/24".parse().unwrap());
        assert!(mapped.contains(ip("203.0.113.200")) && mapped.contains(ip("::ffff:203.0.113.9")));
    }

    fn list(entries: &[&str]) -> Result<AllowedIps, Vec<String>> {
        AllowedIps::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn an_allowlist_admits_its_addresses_and_ranges_only() {
        let allowed = list(&["203.0.113.0/24", "2001:db8:1::/48", "198.51.100.7"]).unwrap();
        for admitted in [
            "203.0.113.7",
            "::ffff:203.0.113.7",
            "2001:db8:1:ffff::1",
            "198.51.100.7",
        ] {
            assert!(allowed.allows(Some(ip(admitted))), "{admitted}");
        }
        for refused in ["198.51.100.9", "203.0.114.1", "2001:db8:2::1", "::ffff:198.51.100.8"] {
            assert!(!allowed.allows(Some(ip(refused))), "{refused}");
        }
        assert!(!allowed.allows(None), "an unknown address is not on any list");
        assert_eq!(
            allowed.to_strings(),
            ["203.0.113.0/24", "2001:db8:1::/48", "198.51.100.7"]
        );
        let none = list(&[]).unwrap();
        assert!(none.is_empty() && none.allows(None) && none.allows(Some(ip("198.51.100.9"))));
    }

    #[test]
    fn an_allowlist_names_every_problem() {
        let problems = list(&[
            "10.0.0.0/33",
            "203.0.113.7/24",
            "198.51.100.7",
            "::ffff:198.51.100.7",
            "x",
        ])
        .unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("'10.0.0.0/33' is not an IP address or CIDR range"));
        assert!(
            problems[1].contains("write the range as 203.0.113.0/24, or the single address without a prefix"),
            "{}",
            problems[1]
        );
        assert!(problems[2].contains("listed twice"));
        assert!(problems[3].contains("'x'"));
        let many: Vec<String> = (0..=MAX_ALLOWED_IPS).map(|n| format!("10.0.{n}.0/24")).collect();
        assert!(AllowedIps::parse(&many).unwrap_err()[0].contains("at most 100"));
        assert!(AllowedIps::parse(&many[..MAX_ALLOWED_IPS]).is_ok());
        let long = "9".repeat(500);
        assert!(
            list(&[&long]).unwrap_err()[0].chars().count() < 200,
            "a long entry is not echoed whole"
        );
    }

    #[test]
    fn an_allowlist_reads_back_what_it_stored() {
        let allowed = list(&["203.0.113.0/24", "::1"]).unwrap();
        let json = serde_json::to_value(&allowed).unwrap();
        assert_eq!(json, serde_json::json!(["203.0.113.0/24", "::1"]));
        assert_eq!(serde_json::from_value::<AllowedIps>(json).unwrap(), allowed);
        assert_eq!(AllowedIps::try_from(allowed.to_strings()).unwrap(), allowed);
    }
}
