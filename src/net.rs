//! Addresses and CIDRs as every part of the gateway reads and writes them:
//! an address or a CIDR from a config file, the one canonical form that
//! makes `::ffff:a.b.c.d` the IPv4 address it is, and an address as text
//! for the access log and X-Forwarded-For. A leaf: uses nothing of the crate.
//!
//! [`IpText`] is a fast path beside `Display`: an IPv4 address is written
//! with itoa into a buffer on the stack. `Ipv4Addr`'s `Display` goes through
//! the formatting machinery once per octet, about 950 instructions an
//! address (callgrind), which every request paid twice (its access line and
//! its X-Forwarded-For); this takes about 100. IPv6 addresses, rare here,
//! still use `Display`. A proptest pins it to `Display`.

use std::io::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

/// An address or a CIDR; a bare address is a single host.
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        return Some(n);
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

/// Maps `::ffff:a.b.c.d/n` (n >= 96) to `a.b.c.d/(n-96)`, and truncates the
/// host bits, so that a CIDR contains exactly the canonical addresses
/// (`IpAddr::to_canonical`) its written form means.
pub fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if let Some(v4) = v6.addr().to_ipv4_mapped() {
            if v6.prefix_len() >= 96 {
                if let Ok(n) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96) {
                    return IpNet::V4(n.trunc());
                }
            }
        }
    }
    net.trunc()
}

/// An address written as `Display` writes it, without allocating.
#[derive(Clone, Copy)]
pub struct IpText {
    buf: [u8; 45],
    len: u8,
}

impl IpText {
    /// The text of `ip`.
    pub fn new(ip: IpAddr) -> Self {
        let mut t = Self { buf: [0; 45], len: 0 };
        match ip {
            IpAddr::V4(v4) => {
                let mut at = 0;
                for (i, o) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.buf[at] = b'.';
                        at += 1;
                    }
                    let mut digits = itoa::Buffer::new();
                    let digits = digits.format(o).as_bytes();
                    t.buf[at..at + digits.len()].copy_from_slice(digits);
                    at += digits.len();
                }
                t.len = at as u8;
            }
            IpAddr::V6(v6) => {
                let mut w = &mut t.buf[..];
                // The longest IPv6 text is 45 bytes: it fits.
                let _ = write!(w, "{v6}");
                let left = w.len();
                t.len = (45 - left) as u8;
            }
        }
        t
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits, dots, colons and hex letters were written.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("?")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn addresses_are_single_hosts_and_mapped_nets_are_ipv4() {
        assert_eq!(parse_cidr(" 10.0.0.1 "), Some("10.0.0.1/32".parse().unwrap()));
        assert_eq!(parse_cidr("2001:db8::/48"), Some("2001:db8::/48".parse().unwrap()));
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
        assert_eq!(canonical_net("::ffff:192.0.2.0/120".parse().unwrap()), "192.0.2.0/24".parse().unwrap());
        assert_eq!(canonical_net("10.1.2.3/8".parse().unwrap()), "10.0.0.0/8".parse().unwrap());
    }

    proptest! {
        #[test]
        fn ip_text_is_what_display_writes(a in any::<u32>(), b in any::<u128>()) {
            for ip in [IpAddr::V4(a.into()), IpAddr::V6(b.into()), IpAddr::V6(std::net::Ipv4Addr::from(a).to_ipv6_mapped())] {
                let text = IpText::new(ip);
                prop_assert_eq!(text.as_str(), ip.to_string());
            }
        }

        #[test]
        fn canonical_net_contains_what_the_mapped_net_contains(a in any::<u32>(), len in 96u8..=128, probe in any::<u32>()) {
            let v4 = std::net::Ipv4Addr::from(a);
            let mapped = IpNet::new(IpAddr::V6(v4.to_ipv6_mapped()), len).unwrap().trunc();
            let canon = canonical_net(mapped);
            let p4 = std::net::Ipv4Addr::from(probe);
            prop_assert_eq!(mapped.contains(&IpAddr::V6(p4.to_ipv6_mapped())), canon.contains(&IpAddr::V4(p4)));
        }
    }
}
