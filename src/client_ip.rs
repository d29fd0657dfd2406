//! Which client a request is attributed to, for per-client shares: the TCP peer, or, when the
//! peer is one of the configured trusted proxies (`OAUTH_RELAY_TRUSTED_PROXIES`), the address
//! that proxy forwarded in the configured header (`X-Forwarded-For`, or RFC 7239 `Forwarded`),
//! walked from the right past further trusted proxies, as nginx's `real_ip` module does with
//! `real_ip_recursive on`. Nobody else's forwarding header is believed: a client that is not a
//! trusted proxy is its own address, whatever it writes.

use std::net::{IpAddr, Ipv6Addr};

/// One trusted network: an address and how many of its leading bits must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `fd00::/8`, or a single address (`192.0.2.7`, `::1`).
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.split_once('/') {
            None => (text, None),
            Some((addr, bits)) => (addr, Some(bits)),
        };
        let addr = addr.parse::<IpAddr>().ok()?.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            // Digits only: `u8::from_str` would take `+8`.
            Some(bits) if !bits.is_empty() && bits.bytes().all(|b| b.is_ascii_digit()) => {
                bits.parse::<u8>().ok().filter(|b| *b <= max)?
            }
            Some(_) => return None,
        };
        Some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The header a trusted proxy tells the client's address in. It must be one the proxy writes
/// itself (appending its peer), never one it passes through from clients untouched: a header
/// only the client wrote names whatever the client likes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, most ingress controllers, cloud load
    /// balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client;proto=https, for="[2001:db8::1]:4711"`.
    Forwarded,
}

impl ForwardedHeader {
    pub fn parse(text: &str) -> Option<ForwardedHeader> {
        match text.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Some(ForwardedHeader::XForwardedFor),
            "forwarded" => Some(ForwardedHeader::Forwarded),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        }
    }
}

/// The proxies whose forwarding header is believed, and which header that is. Empty (the
/// default): nobody's; every request is its peer's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<Cidr>,
    header: ForwardedHeader,
}

impl TrustedProxies {
    /// A comma-separated list of addresses and CIDRs (blank: none). The error names the entry.
    pub fn parse(list: &str, header: ForwardedHeader) -> Result<TrustedProxies, String> {
        let nets = list
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| Cidr::parse(entry).ok_or_else(|| entry.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedProxies { nets, header })
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(ip))
    }

    /// The client of a request that came from `peer` with these headers (names lower-cased):
    /// from the right of the forwarded addresses, the first that is not a trusted proxy. Every
    /// address to its right was written by a proxy we trust, so it is what that proxy saw.
    /// When every address is a trusted proxy, the leftmost; when one cannot be read, the last
    /// trusted hop before it (what it says further left is not vouched for).
    pub fn client(&self, peer: IpAddr, headers: &[(String, String)]) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let name = self.header.name();
        let values = headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str());
        // Several fields of one header are one list, in order (RFC 9110, 5.3).
        let hops: Vec<Option<IpAddr>> = match self.header {
            ForwardedHeader::XForwardedFor => values
                .flat_map(|v| v.split(','))
                .map(|hop| parse_node(hop.trim()))
                .collect(),
            ForwardedHeader::Forwarded => values.flat_map(forwarded_for).collect(),
        };
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop {
                Some(ip) => {
                    client = ip.to_canonical();
                    if !self.trusts(client) {
                        break;
                    }
                }
                None => break,
            }
        }
        client
    }
}

/// The `for=` node of each element of a `Forwarded` value; `None` for one without a readable
/// address (`unknown`, an obfuscated `_name`, garbage).
fn forwarded_for(value: &str) -> Vec<Option<IpAddr>> {
    split_outside_quotes(value, ',')
        .into_iter()
        .map(|element| {
            split_outside_quotes(element, ';')
                .into_iter()
                .find_map(|pair| {
                    let (name, value) = pair.split_once('=')?;
                    name.trim().eq_ignore_ascii_case("for").then(|| {
                        let value = value.trim();
                        let value = value
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .unwrap_or(value);
                        parse_node(value)
                    })
                })
                .flatten()
        })
        .collect()
}

/// Splits on `sep` where it is not inside a quoted string.
fn split_outside_quotes(text: &str, sep: char) -> Vec<&str> {
    let (mut parts, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// An address as proxies write it: `192.0.2.7`, `192.0.2.7:4711`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:4711`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        let (v6, port) = rest.split_once(']')?;
        return (port.is_empty() || is_port(port.strip_prefix(':')?))
            .then(|| v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6))
            .flatten();
    }
    let (v4, port) = node.split_once(':')?;
    is_port(port)
        .then(|| v4.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4))
        .flatten()
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

/// The key a client's shares are counted under: its IPv4 address, or its IPv6 address's /64
/// (what one subscriber is usually given, so one cannot take a fresh share per address of its
/// prefix). An IPv4-mapped IPv6 address counts as its IPv4 address.
pub fn share_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn xff(list: &str) -> TrustedProxies {
        TrustedProxies::parse(list, ForwardedHeader::XForwardedFor).unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")), "IPv4-mapped");
        assert!(!net.contains(ip("2001:db8::1")));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains(ip("203.0.113.9")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(Cidr::parse("::1").unwrap().contains(ip("::1")));
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0/8",
            "host",
            "",
        ] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
        assert_eq!(
            TrustedProxies::parse("10.0.0.0/8, nonsense", ForwardedHeader::XForwardedFor),
            Err("nonsense".into())
        );
        assert!(xff(" , ").is_empty());
    }

    #[test]
    fn a_header_from_an_untrusted_peer_is_ignored() {
        let proxies = xff("10.0.0.0/8");
        let h = headers(&[("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(proxies.client(ip("203.0.113.5"), &h), ip("203.0.113.5"));
        assert_eq!(
            TrustedProxies::default().client(ip("10.0.0.1"), &h),
            ip("10.0.0.1"),
            "nobody is trusted by default"
        );
    }

    #[test]
    fn x_forwarded_for_is_walked_from_the_right_past_trusted_proxies() {
        let proxies = xff("10.0.0.0/8, 192.0.2.1");
        // The client's own claim (left) is not what the trusted proxy saw (right).
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.7, 10.0.0.3")]);
        assert_eq!(proxies.client(ip("10.0.0.2"), &h), ip("198.51.100.7"));
        // Several fields are one list.
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "198.51.100.8:4711, 192.0.2.1"),
        ]);
        assert_eq!(proxies.client(ip("10.0.0.2"), &h), ip("198.51.100.8"));
        // Every hop trusted: the leftmost.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.3")]);
        assert_eq!(proxies.client(ip("10.0.0.2"), &h), ip("10.9.9.9"));
        // An unreadable hop: the last trusted one before it.
        let h = headers(&[("x-forwarded-for", "198.51.100.7, garbage, 10.0.0.3")]);
        assert_eq!(proxies.client(ip("10.0.0.2"), &h), ip("10.0.0.3"));
        // No header: the proxy itself.
        assert_eq!(proxies.client(ip("10.0.0.2"), &[]), ip("10.0.0.2"));
        // IPv6, bracketed with a port.
        let h = headers(&[("x-forwarded-for", "[2001:db8::7]:443")]);
        assert_eq!(proxies.client(ip("10.0.0.2"), &h), ip("2001:db8::7"));
        // The other header is not read.
        let h = headers(&[("forwarded", "for=198.51.100.7")]);
        assert_eq!(proxies.client(ip("10.0.0.2"), &h), ip("10.0.0.2"));
    }

    #[test]
    fn forwarded_is_read_as_rfc_7239_says() {
        let proxies = TrustedProxies::parse("10.0.0.0/8", ForwardedHeader::Forwarded).unwrap();
        let h = headers(&[(
            "forwarded",
            "for=1.1.1.1, for=\"[2001:db8:cafe::17]:4711\";proto=https;by=10.0.0.1, For=10.0.0.4",
        )]);
        assert_eq!(proxies.client(ip("10.0.0.2"), &h), ip("2001:db8:cafe::17"));
        let h = headers(&[("forwarded", "proto=https;for=\"198.51.100.9:80\"")]);
        assert_eq!(proxies.client(ip("10.0.0.2"), &h), ip("198.51.100.9"));
        // A quoted comma does not split elements.
        let h = headers(&[("forwarded", "for=198.51.100.9;x=\"a,b\"")]);
        assert_eq!(proxies.client(ip("10.0.0.2"), &h), ip("198.51.100.9"));
        // `unknown` and obfuscated names are not addresses.
        let h = headers(&[("forwarded", "for=198.51.100.9, for=unknown")]);
        assert_eq!(proxies.client(ip("10.0.0.2"), &h), ip("10.0.0.2"));
        let h = headers(&[("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(proxies.client(ip("10.0.0.2"), &h), ip("10.0.0.2"));
    }

    #[test]
    fn shares_are_per_ipv4_address_and_per_ipv6_64() {
        assert_eq!(share_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(share_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(share_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(
            share_key(ip("2001:db8:1:2::ffff")),
            share_key(ip("2001:db8:1:2:aaaa::1"))
        );
        assert_ne!(
            share_key(ip("2001:db8:1:2::1")),
            share_key(ip("2001:db8:1:3::1"))
        );
    }
}
