//! Subnet allocation as a pure function: given the checked config, every lease in the
//! store, this node's public address and the subnet it had before (from subnet.env), decide
//! what the store must do. The order is upstream's `tryAcquireLease`: reuse the lease of the
//! same public IP, else the previous subnet if it is free and compatible, else a uniformly
//! random pick among the first (at most) 100 free subnets.

use crate::config::{Ipv4Pool, Ipv6Pool, ValidatedNetConfig};
use crate::ip;
use crate::lease::{Lease, SubnetKey};
use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{Ipv4Addr, Ipv6Addr};

/// How many free subnets upstream collects before picking one at random.
pub const CANDIDATES: usize = 100;

/// What a node asks for.
#[derive(Debug, Clone, Copy)]
pub struct AcquireRequest<'a> {
    pub config: &'a ValidatedNetConfig,
    pub leases: &'a [Lease],
    pub public_ip: Ipv4Addr,
    pub public_ipv6: Option<Ipv6Addr>,
    /// The subnet(s) this node had, read back from subnet.env.
    pub previous: Option<Ipv4Net>,
    pub previous_ipv6: Option<Ipv6Net>,
    /// How many free subnets to pick from at random: [`CANDIDATES`] (upstream) on the first
    /// try; a store widens it after a lost race (see [`candidates_for_attempt`]).
    pub candidates: usize,
}

/// The random-pick window for the `attempt`-th try (0-based): upstream's 100 at first,
/// doubling after each lost race, so many nodes starting at once stop colliding on the same
/// few subnets instead of exhausting their retries.
pub fn candidates_for_attempt(attempt: u32) -> usize {
    CANDIDATES.saturating_mul(1usize << attempt.min(16))
}

/// Why a new subnet was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Previous,
    Random,
}

/// What the subnet manager must do.
#[derive(Debug, Clone, PartialEq)]
pub enum AcquirePlan {
    /// This node already holds a compatible lease: rewrite its attributes (and TTL, unless it
    /// is a reservation).
    Renew(Lease),
    /// Create a lease for `key` (only if the key does not exist yet). `stale` is this node's
    /// old lease that no longer fits the config and must be deleted first.
    Create {
        key: SubnetKey,
        origin: Origin,
        stale: Option<Lease>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("out of subnets")]
    OutOfSubnets,
}

/// A subnet `(network, prefix)` fits a pool `(min, max, prefix)` of one address family: same
/// length, network within min..=max. A family that is off (no pool) fits only no subnet.
fn fits<A: PartialOrd>(pool: Option<(A, A, u8)>, sn: Option<(A, u8)>) -> bool {
    match (pool, sn) {
        (None, sn) => sn.is_none(),
        (Some((min, max, len)), Some((net, prefix))) => prefix == len && net >= min && net <= max,
        (Some(_), None) => false,
    }
}

/// The lease fits the current config (range and length, both families).
pub fn is_compatible(c: &ValidatedNetConfig, key: &SubnetKey) -> bool {
    fits(
        c.ipv4.map(|p| (p.subnet_min, p.subnet_max, p.subnet_len)),
        key.ipv4_subnet().map(|s| (s.network(), s.prefix_len())),
    ) && fits(
        c.ipv6.map(|p| (p.subnet_min, p.subnet_max, p.subnet_len)),
        key.ipv6.map(|s| (s.network(), s.prefix_len())),
    )
}

/// Decide how to acquire a lease. `pick(n)` returns an index in `0..n` (random in
/// production, fixed in tests).
pub fn plan_acquire(
    req: &AcquireRequest<'_>,
    pick: &mut dyn FnMut(usize) -> usize,
) -> Result<AcquirePlan, AllocError> {
    let c = req.config;
    let mine = req.leases.iter().find(|l| {
        if c.enable_ipv4() {
            l.attrs.public_ip == req.public_ip
        } else {
            req.public_ipv6.is_some() && l.attrs.public_ipv6 == req.public_ipv6
        }
    });
    let mut stale = None;
    if let Some(l) = mine {
        if is_compatible(c, &l.key) {
            return Ok(AcquirePlan::Renew(l.clone()));
        }
        stale = Some(l.clone());
    }

    let taken = |key: &SubnetKey| {
        req.leases.iter().any(|l| {
            stale.as_ref().is_none_or(|s| s.key != l.key)
                && (key
                    .ipv4_subnet()
                    .zip(l.subnet())
                    .is_some_and(|(a, b)| ip::overlaps_v4(a, b))
                    || key
                        .ipv6
                        .zip(l.ipv6_subnet())
                        .is_some_and(|(a, b)| ip::overlaps_v6(a, b)))
        })
    };

    if req.previous.is_some() || req.previous_ipv6.is_some() {
        let key = SubnetKey {
            ipv4: req
                .previous
                .unwrap_or_else(|| Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).unwrap()),
            ipv6: req.previous_ipv6,
        };
        if is_compatible(c, &key) && !taken(&key) {
            return Ok(AcquirePlan::Create {
                key,
                origin: Origin::Previous,
                stale,
            });
        }
    }

    let v4 = if let Some(pool) = &c.ipv4 {
        let cand = free_v4(pool, req.leases, req.candidates);
        if cand.is_empty() {
            return Err(AllocError::OutOfSubnets);
        }
        cand[pick(cand.len()).min(cand.len() - 1)]
    } else {
        Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).unwrap()
    };
    let v6 = if let Some(pool) = &c.ipv6 {
        let cand = free_v6(pool, req.leases, req.candidates);
        if cand.is_empty() {
            return Err(AllocError::OutOfSubnets);
        }
        Some(cand[pick(cand.len()).min(cand.len() - 1)])
    } else {
        None
    };
    Ok(AcquirePlan::Create {
        key: SubnetKey { ipv4: v4, ipv6: v6 },
        origin: Origin::Random,
        stale,
    })
}

/// Walk SubnetMin..=SubnetMax and collect up to `limit` subnets that overlap no lease.
pub fn free_v4(pool: &Ipv4Pool, leases: &[Lease], limit: usize) -> Vec<Ipv4Net> {
    let block = |n: Ipv4Net| {
        (
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        )
    };
    let taken = leases.iter().filter_map(Lease::subnet).map(block).collect();
    free_in(
        u128::from(u32::from(pool.subnet_min)),
        u128::from(u32::from(pool.subnet_max)),
        u128::from(ip::v4_size(pool.subnet_len)),
        taken,
        limit,
    )
    .into_iter()
    .map(|a| Ipv4Net::new(Ipv4Addr::from(a as u32), pool.subnet_len).expect("a valid length"))
    .collect()
}

pub fn free_v6(pool: &Ipv6Pool, leases: &[Lease], limit: usize) -> Vec<Ipv6Net> {
    let block = |n: Ipv6Net| (u128::from(n.network()), u128::from(n.broadcast()));
    let taken = leases
        .iter()
        .filter_map(Lease::ipv6_subnet)
        .map(block)
        .collect();
    free_in(
        u128::from(pool.subnet_min),
        u128::from(pool.subnet_max),
        ip::v6_size(pool.subnet_len),
        taken,
        limit,
    )
    .into_iter()
    .map(|a| Ipv6Net::new(Ipv6Addr::from(a), pool.subnet_len).expect("a valid length"))
    .collect()
}

/// The starts of the first `limit` blocks of `size` from `min` to `max` that overlap none of
/// `taken` (first, last address), in one walk over both (taken sorted by start): linear in
/// candidates plus leases, never their product, in either family.
fn free_in(
    min: u128,
    max: u128,
    size: u128,
    mut taken: Vec<(u128, u128)>,
    limit: usize,
) -> Vec<u128> {
    taken.sort_unstable();
    let mut out = Vec::new();
    let mut cur = min;
    let mut next = 0;
    while cur <= max && out.len() < limit {
        let last = cur.saturating_add(size - 1);
        // Skip the taken blocks that end before this one starts.
        while next < taken.len() && taken[next].1 < cur {
            next += 1;
        }
        let overlaps = taken[next..]
            .iter()
            .take_while(|(start, _)| *start <= last)
            .any(|(_, end)| *end >= cur);
        if !overlaps {
            out.push(cur);
        }
        match cur.checked_add(size) {
            Some(n) => cur = n,
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{Expiry, LeaseAttrs};
    use std::time::{Duration, UNIX_EPOCH};

    fn cfg(text: &str) -> ValidatedNetConfig {
        crate::config::parse_and_check(text).unwrap()
    }

    fn lease(sn: &str, ip: &str) -> Lease {
        Lease {
            key: SubnetKey::v4(sn.parse().unwrap()),
            attrs: LeaseAttrs::new(ip.parse().unwrap()),
            expiry: Expiry::At(UNIX_EPOCH + Duration::from_secs(1_000_000)),
        }
    }

    fn req<'a>(c: &'a ValidatedNetConfig, leases: &'a [Lease], ip: &str) -> AcquireRequest<'a> {
        AcquireRequest {
            config: c,
            leases,
            public_ip: ip.parse().unwrap(),
            public_ipv6: None,
            previous: None,
            previous_ipv6: None,
            candidates: CANDIDATES,
        }
    }

    #[test]
    fn acceptance_10_same_public_ip_reuses_lease() {
        let c = cfg(r#"{"Network":"10.3.0.0/16"}"#);
        let leases = vec![
            lease("10.3.9.0/24", "1.2.3.4"),
            lease("10.3.7.0/24", "1.2.3.5"),
        ];
        let plan = plan_acquire(&req(&c, &leases, "1.2.3.4"), &mut |_| 0).unwrap();
        assert_eq!(plan, AcquirePlan::Renew(leases[0].clone()));
    }

    #[test]
    fn acceptance_10_previous_subnet_reused_when_free_and_in_range() {
        let c = cfg(r#"{"Network":"10.3.0.0/16"}"#);
        let mut r = req(&c, &[], "1.2.3.4");
        r.previous = Some("10.3.6.0/24".parse().unwrap());
        let plan = plan_acquire(&r, &mut |_| 0).unwrap();
        assert_eq!(
            plan,
            AcquirePlan::Create {
                key: SubnetKey::v4("10.3.6.0/24".parse().unwrap()),
                origin: Origin::Previous,
                stale: None
            }
        );
        // Out of the network: not reused.
        r.previous = Some("10.4.1.0/24".parse().unwrap());
        let AcquirePlan::Create { origin, key, .. } = plan_acquire(&r, &mut |_| 0).unwrap() else {
            panic!("expected a create")
        };
        assert_eq!(origin, Origin::Random);
        assert_eq!(key.ipv4, "10.3.1.0/24".parse::<Ipv4Net>().unwrap());
    }

    #[test]
    fn previous_subnet_taken_by_someone_else_is_not_reused() {
        let c = cfg(r#"{"Network":"10.3.0.0/16"}"#);
        let leases = vec![lease("10.3.6.0/24", "9.9.9.9")];
        let mut r = req(&c, &leases, "1.2.3.4");
        r.previous = Some("10.3.6.0/24".parse().unwrap());
        let AcquirePlan::Create { origin, key, .. } = plan_acquire(&r, &mut |_| 5).unwrap() else {
            panic!("expected a create")
        };
        assert_eq!(origin, Origin::Random);
        assert_ne!(key.ipv4, "10.3.6.0/24".parse::<Ipv4Net>().unwrap());
    }

    #[test]
    fn acceptance_11_random_pick_stays_in_range_and_free() {
        let c = cfg(r#"{"Network":"10.3.0.0/16","SubnetMin":"10.3.1.0","SubnetMax":"10.3.25.0"}"#);
        let leases: Vec<Lease> = ["10.3.1.0/24", "10.3.2.0/24", "10.3.4.0/24", "10.3.5.0/24"]
            .iter()
            .enumerate()
            .map(|(i, s)| lease(s, &format!("9.9.9.{i}")))
            .collect();
        let free = free_v4(c.ipv4.as_ref().unwrap(), &leases, CANDIDATES);
        assert_eq!(free.len(), 21);
        for i in 0..free.len() {
            let AcquirePlan::Create { key, .. } =
                plan_acquire(&req(&c, &leases, "1.2.3.4"), &mut |_| i).unwrap()
            else {
                panic!("expected a create")
            };
            let sn = key.ipv4;
            assert!(sn.network() >= "10.3.1.0".parse::<Ipv4Addr>().unwrap());
            assert!(sn.network() <= "10.3.25.0".parse::<Ipv4Addr>().unwrap());
            assert!(leases.iter().all(|l| l.key.ipv4 != sn), "{sn} is taken");
        }
    }

    #[test]
    fn incompatible_own_lease_is_replaced() {
        let c = cfg(r#"{"Network":"10.3.0.0/16"}"#);
        let leases = vec![lease("10.9.0.0/24", "1.2.3.4")];
        let AcquirePlan::Create { stale, .. } =
            plan_acquire(&req(&c, &leases, "1.2.3.4"), &mut |_| 0).unwrap()
        else {
            panic!("expected a create")
        };
        assert_eq!(stale, Some(leases[0].clone()));
    }

    #[test]
    fn full_network_is_out_of_subnets() {
        let c = cfg(r#"{"Network":"10.0.0.0/28"}"#);
        // /28 → SubnetLen 30, Min .4, Max .12: three subnets.
        let leases = vec![
            lease("10.0.0.4/30", "1.1.1.1"),
            lease("10.0.0.8/30", "1.1.1.2"),
            lease("10.0.0.12/30", "1.1.1.3"),
        ];
        assert_eq!(
            plan_acquire(&req(&c, &leases, "1.2.3.4"), &mut |_| 0),
            Err(AllocError::OutOfSubnets)
        );
        assert_eq!(AllocError::OutOfSubnets.to_string(), "out of subnets");
    }

    #[test]
    fn at_most_100_candidates() {
        let c = cfg(r#"{"Network":"10.0.0.0/8"}"#);
        assert_eq!(
            free_v4(c.ipv4.as_ref().unwrap(), &[], CANDIDATES).len(),
            CANDIDATES
        );
        assert_eq!(candidates_for_attempt(0), 100);
        assert_eq!(candidates_for_attempt(3), 800);
    }

    #[test]
    fn free_walk_skips_big_and_unsorted_leases() {
        let c = cfg(r#"{"Network":"10.0.0.0/16"}"#);
        // A /22 lease covers 10.0.4.0-10.0.7.255; a /24 lease listed first sits after it.
        let leases = vec![
            lease("10.0.9.0/24", "1.1.1.9"),
            lease("10.0.4.0/22", "1.1.1.4"),
            lease("10.0.1.0/24", "1.1.1.1"),
        ];
        let free: Vec<String> = free_v4(c.ipv4.as_ref().unwrap(), &leases, 8)
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            free,
            [
                "10.0.2.0/24",
                "10.0.3.0/24",
                "10.0.8.0/24",
                "10.0.10.0/24",
                "10.0.11.0/24",
                "10.0.12.0/24",
                "10.0.13.0/24",
                "10.0.14.0/24"
            ]
        );
    }

    #[test]
    fn dual_stack_picks_both() {
        let c = cfg(r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56"}"#);
        let AcquirePlan::Create { key, .. } =
            plan_acquire(&req(&c, &[], "1.2.3.4"), &mut |_| 0).unwrap()
        else {
            panic!("expected a create")
        };
        assert_eq!(key.to_string(), "10.0.1.0-24&fd00:0:0:1::-64");
    }
}
