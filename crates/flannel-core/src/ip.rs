//! IP arithmetic that flannel needs on top of `ipnet`: parsing a CIDR that must be
//! canonical, stepping to the next subnet, and the "first usable address" of a subnet.

use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Why a string is not an acceptable CIDR for a given field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not a CIDR (expected a.b.c.d/n)")]
    NotCidr(String),
    #[error("{0:?} is not an IPv4 network")]
    NotIpv4(String),
    #[error("{0:?} is not an IPv6 network")]
    NotIpv6(String),
    #[error("{given:?} has host bits set (did you mean {canonical}?)")]
    HostBits { given: String, canonical: String },
}

/// Parse an IPv4 CIDR that must have no host bits set.
pub fn parse_ipv4_net(s: &str) -> Result<Ipv4Net, CidrError> {
    let net: ipnet::IpNet = s.parse().map_err(|_| CidrError::NotCidr(s.to_string()))?;
    let ipnet::IpNet::V4(net) = net else {
        return Err(CidrError::NotIpv4(s.to_string()));
    };
    if net.trunc() != net {
        return Err(CidrError::HostBits {
            given: s.to_string(),
            canonical: net.trunc().to_string(),
        });
    }
    Ok(net)
}

/// Parse an IPv6 CIDR that must have no host bits set.
pub fn parse_ipv6_net(s: &str) -> Result<Ipv6Net, CidrError> {
    let net: ipnet::IpNet = s.parse().map_err(|_| CidrError::NotCidr(s.to_string()))?;
    let ipnet::IpNet::V6(net) = net else {
        return Err(CidrError::NotIpv6(s.to_string()));
    };
    if net.trunc() != net {
        return Err(CidrError::HostBits {
            given: s.to_string(),
            canonical: net.trunc().to_string(),
        });
    }
    Ok(net)
}

/// Number of addresses in an IPv4 subnet of `prefix` length (as u64: a /0 has 2^32).
pub fn v4_size(prefix: u8) -> u64 {
    1u64 << (32 - u32::from(prefix))
}

/// Number of addresses in an IPv6 subnet of `prefix` length, modulo 2^128: a /0 is 0,
/// which is exactly what stepping past it with wrapping arithmetic needs (a pool's subnets
/// are /2 or longer, so a subnet's size is never 0).
pub fn v6_size(prefix: u8) -> u128 {
    1u128.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// The address `n` after `ip`, wrapping like Go's uint32 arithmetic.
pub fn v4_add(ip: Ipv4Addr, n: u64) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(ip).wrapping_add(n as u32))
}

/// The address `n` before `ip`, wrapping like Go's uint32 arithmetic.
pub fn v4_sub(ip: Ipv4Addr, n: u64) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(ip).wrapping_sub(n as u32))
}

pub fn v6_add(ip: Ipv6Addr, n: u128) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(ip).wrapping_add(n))
}

pub fn v6_sub(ip: Ipv6Addr, n: u128) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(ip).wrapping_sub(n))
}

/// The first address of the network that follows `net` (upstream `IP4Net.Next().IP`).
pub fn v4_next_network(net: Ipv4Net) -> Ipv4Addr {
    v4_add(net.network(), v4_size(net.prefix_len()))
}

pub fn v6_next_network(net: Ipv6Net) -> Ipv6Addr {
    v6_add(net.network(), v6_size(net.prefix_len()))
}

/// `outer` contains all of `inner` (upstream `ContainsCIDR`).
pub fn contains_v4(outer: Ipv4Net, inner: Ipv4Net) -> bool {
    outer.prefix_len() <= inner.prefix_len() && outer.contains(&inner.network())
}

pub fn contains_v6(outer: Ipv6Net, inner: Ipv6Net) -> bool {
    outer.prefix_len() <= inner.prefix_len() && outer.contains(&inner.network())
}

/// Two subnets share at least one address.
pub fn overlaps_v4(a: Ipv4Net, b: Ipv4Net) -> bool {
    contains_v4(a, b) || contains_v4(b, a)
}

pub fn overlaps_v6(a: Ipv6Net, b: Ipv6Net) -> bool {
    contains_v6(a, b) || contains_v6(b, a)
}

/// The subnet with its address incremented by one and the same prefix
/// (upstream `IncrementIP`): `10.5.52.0/24` → `10.5.52.1/24`, used for FLANNEL_SUBNET.
pub fn first_host_v4(net: Ipv4Net) -> (Ipv4Addr, u8) {
    (v4_add(net.network(), 1), net.prefix_len())
}

pub fn first_host_v6(net: Ipv6Net) -> (Ipv6Addr, u8) {
    (v6_add(net.network(), 1), net.prefix_len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n4(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn contains_cidr_acceptance_13() {
        assert!(contains_v4(n4("10.244.0.0/16"), n4("10.244.255.0/24")));
        assert!(!contains_v4(n4("10.244.0.0/16"), n4("10.244.0.0/15")));
    }

    #[test]
    fn increment_acceptance_19() {
        assert_eq!(
            first_host_v4(n4("1.2.3.0/24")),
            ("1.2.3.1".parse().unwrap(), 24)
        );
    }

    #[test]
    fn ipv6_cidr_is_not_an_ipv4_network_acceptance_19() {
        assert_eq!(
            parse_ipv4_net("2001:db8::/64"),
            Err(CidrError::NotIpv4("2001:db8::/64".into()))
        );
        assert_eq!(parse_ipv4_net("1.2.3.0/24"), Ok(n4("1.2.3.0/24")));
    }

    #[test]
    fn host_bits_are_refused_with_the_fix() {
        let e = parse_ipv4_net("10.3.0.5/16").unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"10.3.0.5/16\" has host bits set (did you mean 10.3.0.0/16?)"
        );
        assert!(matches!(
            parse_ipv6_net("fc00::1/48"),
            Err(CidrError::HostBits { .. })
        ));
    }

    #[test]
    fn next_network_wraps_like_go() {
        assert_eq!(
            v4_next_network(n4("10.3.0.0/16")),
            "10.4.0.0".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            v4_next_network(n4("255.0.0.0/8")),
            Ipv4Addr::new(0, 0, 0, 0)
        );
    }

    #[test]
    fn overlap() {
        assert!(overlaps_v4(n4("10.0.0.0/8"), n4("10.1.0.0/16")));
        assert!(!overlaps_v4(n4("10.0.0.0/24"), n4("10.0.1.0/24")));
    }
}
