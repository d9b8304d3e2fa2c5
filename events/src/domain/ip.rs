//! IP addresses and CIDR ranges as operators and tenants write them
//! (`203.0.113.7`, `10.0.0.0/8`, `2001:db8::/32`). Addresses are compared in
//! canonical form: an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a
//! dual-stack socket reports) is the IPv4 address it maps.

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
        let address: IpAddr = address.parse().map_err(|_| problem())?;
        let address = address.to_canonical();
        let full = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => full,
            Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                digits.parse::<u8>().map_err(|_| problem())?
            }
            Some(_) => return Err(problem()),
        };
        IpRange::new(address, prefix).ok_or_else(problem)
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
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
        ] {
            assert!(text.parse::<IpRange>().is_err(), "{text}");
        }
    }
}
