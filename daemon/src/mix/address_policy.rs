//! Which addresses kiroku may fetch layout images from (docs/security.md,
//! "Outbound fetches"). An API caller names the image URLs, so without a
//! policy it could make the box fetch its own loopback services, the cloud
//! metadata endpoint (169.254.169.254) or any internal host, and read the
//! answer back as a watermark. Refused by default: loopback, unspecified,
//! link-local, multicast, broadcast, private (RFC 1918, unique-local),
//! shared (CGNAT) and documentation ranges, and the box's own listener
//! addresses; an operator allows what their image servers need with
//! `[fetch] allow`. Sans-IO: addresses in, a verdict out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allow: Vec<IpNet>,
    own: Vec<IpAddr>,
}

impl AddressPolicy {
    /// `allow`: networks allowed although refused by kind; `own`: the
    /// box's own listener addresses (refused unless allowed).
    pub fn new(allow: Vec<IpNet>, own: Vec<IpAddr>) -> Self {
        Self {
            allow,
            own: own.into_iter().map(canonical).collect(),
        }
    }

    /// `Err(why)` when `ip` may not be fetched from.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        let ip = canonical(ip);
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        let kind = if self.own.contains(&ip) {
            Some("an address this box listens on")
        } else {
            refused_kind(ip)
        };
        match kind {
            Some(kind) => Err(format!(
                "{ip} is {kind}: image servers there must be allowed in fetch.allow"
            )),
            None => Ok(()),
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) are judged as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn refused_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified (\"this network\")")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata services live there)")
    } else if ip.is_private() {
        Some("private (RFC 1918)")
    } else if o[0] == 100 && (64..128).contains(&o[1]) {
        Some("shared address space (CGNAT, RFC 6598)")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else if ip.is_documentation() || (o[0] == 198 && (o[1] == 18 || o[1] == 19)) {
        Some("a documentation or benchmarking address")
    } else if o[0] >= 240 {
        Some("reserved")
    } else {
        None
    }
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if s[0] & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if s[0] & 0xfe00 == 0xfc00 {
        Some("unique-local (private)")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        Some("a documentation address")
    } else if s[0] == 0x64 && s[1] == 0xff9b {
        // NAT64 reaches IPv4 space, private ranges included.
        Some("NAT64 (RFC 6052)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn internal_addresses_are_refused_by_kind() {
        let p = AddressPolicy::default();
        for (addr, kind) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("169.254.169.254", "link-local"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "CGNAT"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("192.0.2.7", "documentation"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("fd00::1", "unique-local"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("64:ff9b::a00:1", "NAT64"),
        ] {
            let why = p.check(ip(addr)).expect_err(addr);
            assert!(why.contains(kind), "{addr}: {why}");
            assert!(why.contains("fetch.allow"), "{why}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        let p = AddressPolicy::default();
        for addr in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "1.1.1.1",
        ] {
            assert_eq!(p.check(ip(addr)), Ok(()), "{addr}");
        }
    }

    #[test]
    fn the_operator_allows_networks_and_the_box_refuses_its_own_addresses() {
        let p = AddressPolicy::new(
            vec![
                "10.0.0.0/8".parse().expect("net"),
                "127.0.0.1/32".parse().expect("net"),
            ],
            vec![ip("203.0.113.9"), ip("8.8.4.4")],
        );
        assert_eq!(p.check(ip("10.200.0.1")), Ok(()));
        assert_eq!(p.check(ip("127.0.0.1")), Ok(()));
        assert!(p.check(ip("127.0.0.2")).is_err());
        assert!(p.check(ip("192.168.0.1")).is_err());
        let why = p.check(ip("8.8.4.4")).expect_err("own address");
        assert!(why.contains("listens on"), "{why}");
    }
}
