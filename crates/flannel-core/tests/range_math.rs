//! Pool range arithmetic at every prefix length of both families, including the extremes
//! (`0.0.0.0/0`, `::/0`, the longest subnets): as upstream, the default SubnetMin is the
//! second subnet of the network (the first is left out) and the default SubnetMax its last, so
//! a pool holds 2^(len-prefix) - 1 subnets, all inside the network and aligned.

use flannel_core::alloc::{free_v4, free_v6};
use flannel_core::config::parse_and_check;
use proptest::prelude::*;
use std::net::{Ipv4Addr, Ipv6Addr};

fn v4_pool(network: Ipv4Addr, prefix: u8, len: u8) -> flannel_core::config::Ipv4Pool {
    let text = format!(r#"{{"Network":"{network}/{prefix}","SubnetLen":{len}}}"#);
    parse_and_check(&text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .ipv4
        .unwrap()
}

fn v6_pool(network: Ipv6Addr, prefix: u8, len: u8) -> flannel_core::config::Ipv6Pool {
    let text = format!(
        r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"{network}/{prefix}","IPv6SubnetLen":{len}}}"#
    );
    parse_and_check(&text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .ipv6
        .unwrap()
}

/// Check one IPv4 pool against the arithmetic done in u128 (no wrapping possible).
fn check_v4(network: u32, prefix: u8, len: u8) {
    let pool = v4_pool(Ipv4Addr::from(network), prefix, len);
    let size = 1u128 << (32 - len);
    let start = u128::from(network);
    let end = start + (1u128 << (32 - prefix)); // one past the network
    assert_eq!(
        u128::from(u32::from(pool.subnet_min)),
        start + size,
        "{pool:?}"
    );
    assert_eq!(
        u128::from(u32::from(pool.subnet_max)),
        end - size,
        "{pool:?}"
    );
    let count = (1u128 << (len - prefix)) - 1;
    let want = count.min(3) as usize;
    assert_eq!(free_v4(&pool, &[], 3).len(), want, "{pool:?}");
}

fn check_v6(network: u128, prefix: u8, len: u8) {
    let pool = v6_pool(Ipv6Addr::from(network), prefix, len);
    // Work in "subnet units" so that even ::/0 fits: the network spans 2^(len-prefix) units.
    let unit = |a: Ipv6Addr| (u128::from(a) - network) >> (128 - len);
    let units = 1u128 << (len - prefix);
    assert_eq!(unit(pool.subnet_min), 1, "{pool:?}");
    assert_eq!(unit(pool.subnet_max), units - 1, "{pool:?}");
    assert_eq!(
        u128::from(pool.subnet_min) & ((1u128 << (128 - len)) - 1),
        0
    );
    let want = (units - 1).min(3) as usize;
    assert_eq!(free_v6(&pool, &[], 3).len(), want, "{pool:?}");
}

#[test]
fn every_ipv4_prefix_and_subnet_length() {
    for prefix in 0..=28u8 {
        for len in prefix + 2..=30 {
            check_v4(0, prefix, len);
            // The network at the top of the address space.
            let top = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            check_v4(top, prefix, len);
        }
    }
}

#[test]
fn every_ipv6_prefix_and_subnet_length() {
    for prefix in 0..=124u8 {
        for len in prefix + 2..=126 {
            check_v6(0, prefix, len);
            let top = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            check_v6(top, prefix, len);
        }
    }
}

#[test]
fn the_whole_ipv6_space() {
    let pool = v6_pool(Ipv6Addr::UNSPECIFIED, 0, 64);
    assert_eq!(pool.subnet_min, "0:0:0:1::".parse::<Ipv6Addr>().unwrap());
    assert_eq!(
        pool.subnet_max,
        "ffff:ffff:ffff:ffff::".parse::<Ipv6Addr>().unwrap(),
        "the last /64, as upstream"
    );
    // Default IPv6SubnetLen for ::/0 is 64 too.
    let text = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"::/0"}"#;
    assert_eq!(parse_and_check(text).unwrap().ipv6.unwrap(), pool);
    let quarters = v6_pool(Ipv6Addr::UNSPECIFIED, 0, 2);
    assert_eq!(
        free_v6(&quarters, &[], 10),
        vec![
            "4000::/2".parse().unwrap(),
            "8000::/2".parse().unwrap(),
            "c000::/2".parse().unwrap()
        ],
        "a /0 cut in quarters leaves all but the first"
    );
}

#[test]
fn the_whole_ipv4_space() {
    let pool = v4_pool(Ipv4Addr::UNSPECIFIED, 0, 24);
    assert_eq!(pool.subnet_min, Ipv4Addr::new(0, 0, 1, 0));
    assert_eq!(pool.subnet_max, Ipv4Addr::new(255, 255, 255, 0));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_ipv4_network(addr: u32, prefix in 0u8..=28, extra in 2u8..=30) {
        let len = (prefix + extra).clamp(prefix + 2, 30);
        let network = addr & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        check_v4(network, prefix, len);
    }

    #[test]
    fn any_ipv6_network(addr: u128, prefix in 0u8..=124, extra in 2u8..=126) {
        let len = (prefix + extra).clamp(prefix + 2, 126);
        let network = addr & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
        check_v6(network, prefix, len);
    }
}
