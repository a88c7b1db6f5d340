//! With `"Fallback": "vxlan"`: which leases hold VPC routes and which are reached over vxlan
//! (pure). Every node computes it alike from the same table reading and lease set:
//! - the capacity is the smallest room of the tables serving node subnets: its limit, minus
//!   the entries kept free (`ReservedRoutes`), minus the routes that are not ours;
//! - leases that already hold a route of ours keep their place (a new lease never evicts an
//!   old one), in subnet order; the rest of the capacity goes to the others in subnet order;
//! - only when the capacity falls below the holders (a lowered limit) do the highest
//!   subnets among them move to vxlan.

use super::plan::{Ownership, TableState, Wanted};
use ipnet::Ipv4Net;
use std::collections::BTreeSet;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Split {
    pub routed: BTreeSet<Ipv4Net>,
    pub fallback: BTreeSet<Ipv4Net>,
    /// Routes of ours the tables can hold.
    pub capacity: usize,
}

/// Whether `w` has a route of ours (its subnet via its node) in `t`.
pub fn holds(t: &TableState, owner: &Ownership, w: &Wanted) -> bool {
    t.routes
        .iter()
        .any(|r| owner.owns(r) && r.dest == Some(w.dest) && r.gateway_id == w.next_hop.to_string())
}

pub fn split(
    leases: &[Wanted],
    tables: &[TableState],
    owner: &Ownership,
    reserved: usize,
) -> Split {
    let capacity = tables
        .iter()
        .map(|t| {
            let foreign = t.routes.iter().filter(|r| !owner.owns(r)).count();
            t.limit.saturating_sub(reserved).saturating_sub(foreign)
        })
        .min()
        .unwrap_or(0);
    let mut order: Vec<(bool, Ipv4Net)> = leases
        .iter()
        .map(|w| (!tables.iter().any(|t| holds(t, owner, w)), w.dest))
        .collect();
    order.sort();
    order.dedup_by_key(|(_, d)| *d);
    let mut s = Split {
        capacity,
        ..Split::default()
    };
    for (i, (_, dest)) in order.into_iter().enumerate() {
        if i < capacity {
            s.routed.insert(dest);
        } else {
            s.fallback.insert(dest);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tencent_vpc::plan::tests::owner;
    use crate::backend::tencent_vpc::plan::ActualRoute;

    fn w(i: u8) -> Wanted {
        Wanted {
            dest: format!("10.244.{i}.0/24").parse().unwrap(),
            next_hop: format!("172.16.1.{i}").parse().unwrap(),
        }
    }

    /// A table holding routes of ours for `ours` and `foreign` user routes.
    fn table(ours: &[u8], foreign: usize, limit: usize) -> TableState {
        let mut routes: Vec<ActualRoute> = ours
            .iter()
            .map(|i| ActualRoute {
                route_id: u64::from(*i),
                dest: Some(w(*i).dest),
                gateway_type: "NORMAL_CVM".into(),
                gateway_id: w(*i).next_hop.to_string(),
                description: owner().description(w(*i).next_hop),
                enabled: true,
            })
            .collect();
        for k in 0..foreign {
            routes.push(ActualRoute {
                route_id: 1000 + k as u64,
                dest: Some(format!("192.168.{k}.0/24").parse().unwrap()),
                gateway_type: "VPN".into(),
                gateway_id: "vpngw-1".into(),
                description: "office".into(),
                enabled: true,
            });
        }
        TableState {
            id: "rtb-a".into(),
            routes,
            limit,
        }
    }

    fn dests(ids: &[u8]) -> BTreeSet<Ipv4Net> {
        ids.iter().map(|i| w(*i).dest).collect()
    }

    #[test]
    fn capacity_is_the_tightest_table_minus_foreign_and_reserved_routes() {
        let leases: Vec<Wanted> = (1..=8).map(w).collect();
        let tables = [table(&[], 1, 6), table(&[], 0, 6)];
        let s = split(&leases, &tables, &owner(), 0);
        assert_eq!(s.capacity, 5);
        assert_eq!(s.routed, dests(&[1, 2, 3, 4, 5]));
        assert_eq!(s.fallback, dests(&[6, 7, 8]));
        assert_eq!(split(&leases, &tables, &owner(), 2).capacity, 3, "reserved");
    }

    #[test]
    fn holders_keep_their_place_and_newcomers_never_evict() {
        // 7 and 8 hold routes (joined when there was room); 1 and 2 are new.
        let tables = [table(&[7, 8], 0, 3)];
        let leases: Vec<Wanted> = [1, 2, 7, 8].into_iter().map(w).collect();
        let s = split(&leases, &tables, &owner(), 0);
        assert_eq!(s.routed, dests(&[1, 7, 8]));
        assert_eq!(s.fallback, dests(&[2]));
        // A holder leaves: the lowest waiting lease takes the freed place.
        let tables = [table(&[1, 7], 0, 3)];
        let leases: Vec<Wanted> = [1, 2, 7].into_iter().map(w).collect();
        assert_eq!(
            split(&leases, &tables, &owner(), 0).routed,
            dests(&[1, 2, 7])
        );
    }

    #[test]
    fn a_lowered_limit_moves_the_highest_holders_to_vxlan() {
        let tables = [table(&[1, 2, 3, 4], 0, 2)];
        let leases: Vec<Wanted> = (1..=4).map(w).collect();
        let s = split(&leases, &tables, &owner(), 0);
        assert_eq!((s.routed, s.fallback), (dests(&[1, 2]), dests(&[3, 4])));
    }

    #[test]
    fn the_split_does_not_depend_on_lease_order() {
        let tables = [table(&[5], 1, 4)];
        let a: Vec<Wanted> = [9, 5, 3, 1].into_iter().map(w).collect();
        let b: Vec<Wanted> = [1, 3, 5, 9].into_iter().map(w).collect();
        assert_eq!(
            split(&a, &tables, &owner(), 0),
            split(&b, &tables, &owner(), 0)
        );
    }
}
