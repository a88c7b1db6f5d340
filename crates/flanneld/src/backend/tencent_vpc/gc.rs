//! Garbage collection of our routes whose lease is gone, pure. Run by exactly one elected
//! instance; a route is deleted only when every guard agrees:
//! - the lease view is a fresh, complete snapshot (the watch is up, nothing missed);
//! - the snapshot is not empty, and did not lose more than half of the leases since the
//!   previous look (a wiped or restored store looks exactly like that);
//! - the route was orphaned at two consecutive looks at least [`MIN_ORPHAN_AGE`] apart (a
//!   look is every reconcile that passes a lease view: the controller's every batch, an
//!   elected agent's resyncs);
//! - at most half of our routes seen in the tables (never fewer than
//!   [`MIN_DELETES_PER_CYCLE`]) deleted per cycle: a view wrong in a way the other guards
//!   miss takes at least two cycles to do its damage, while a cluster shrinking or churning
//!   (a controller with thousands of nodes) is followed within a few resyncs.
//!
//! Besides our routes to subnets nobody leases, the collector takes strays: routes with our
//! cluster's tag outside the Network (an earlier version wrote them for leases it should
//! have refused), when their next hop is a current lease holder's address, so they were
//! ours beyond doubt. Other strays are left to an operator (`flannelctl routes gc
//! --all-ours --outside-network`).

use super::plan::{Ownership, TableState};
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Consecutive looks a route must be orphaned before it is deleted.
pub const SIGHTINGS: u32 = 2;
/// How long after its first sighting an orphan may go at the earliest.
pub const MIN_ORPHAN_AGE: Duration = Duration::from_secs(5);
/// Deletions approved per cycle when that is more than half of our routes.
pub const MIN_DELETES_PER_CYCLE: usize = 20;

/// The cycle's cap: half of our routes seen, at least [`MIN_DELETES_PER_CYCLE`].
pub fn deletes_allowed(ours: usize) -> usize {
    (ours / 2).max(MIN_DELETES_PER_CYCLE)
}

/// What the collector sees of the leases at one resync.
#[derive(Debug, Clone, Copy)]
pub struct LeaseView<'a> {
    pub leased: &'a BTreeSet<Ipv4Net>,
    /// The addresses (tencent-vpc PrivateIP) of the nodes holding a lease.
    pub holders: &'a BTreeSet<Ipv4Addr>,
    /// The watch is established and its snapshot complete.
    pub fresh: bool,
}

/// Why nothing was collected this cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    NotFresh,
    NoLeases,
    LeasesDropped { before: usize, now: usize },
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hold::NotFresh => f.write_str("the lease view is not a fresh snapshot"),
            Hold::NoLeases => f.write_str("no leases at all (a wiped store?)"),
            Hold::LeasesDropped { before, now } => write!(
                f,
                "leases dropped from {before} to {now} at once (a wiped or restored store?)"
            ),
        }
    }
}

#[derive(Debug)]
pub struct OrphanTracker {
    /// (table, RouteId) → (consecutive looks seen orphaned, first seen).
    sightings: BTreeMap<(String, u64), (u32, Instant)>,
    /// Leases at the last look that passed the guards.
    last_count: Option<usize>,
    min_age: Duration,
}

impl Default for OrphanTracker {
    fn default() -> Self {
        OrphanTracker::with_min_age(MIN_ORPHAN_AGE)
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Approved for deletion this cycle.
    pub collect: BTreeSet<(String, u64)>,
    /// Orphans still waiting (seen fewer than [`SIGHTINGS`] times, or over the cap).
    pub waiting: usize,
    pub hold: Option<Hold>,
}

impl OrphanTracker {
    /// A tracker whose orphans may go `min_age` after their first sighting (tests: zero).
    pub fn with_min_age(min_age: Duration) -> OrphanTracker {
        OrphanTracker {
            sightings: BTreeMap::new(),
            last_count: None,
            min_age,
        }
    }

    /// One look at the tables.
    pub fn observe(
        &mut self,
        view: LeaseView<'_>,
        tables: &[TableState],
        owner: &Ownership,
    ) -> Verdict {
        let hold = if !view.fresh {
            Some(Hold::NotFresh)
        } else if view.leased.is_empty() {
            Some(Hold::NoLeases)
        } else {
            match self.last_count {
                Some(before) if view.leased.len() * 2 < before => Some(Hold::LeasesDropped {
                    before,
                    now: view.leased.len(),
                }),
                _ => None,
            }
        };
        if let Some(h) = hold {
            // Start counting again from a trustworthy view; a drop is remembered as the new
            // baseline only once it has been seen (so it holds exactly one cycle, plus the
            // two sightings every orphan needs anyway).
            self.sightings.clear();
            if matches!(h, Hold::LeasesDropped { .. }) {
                self.last_count = Some(view.leased.len());
            }
            return Verdict {
                hold: Some(h),
                ..Verdict::default()
            };
        }
        self.last_count = Some(view.leased.len());
        let mut now = BTreeMap::new();
        let mut ours = 0;
        for t in tables {
            for r in &t.routes {
                ours += usize::from(owner.owns(r));
                let orphan = (owner.owns(r) && r.dest.is_some_and(|d| !view.leased.contains(&d)))
                    || (owner.stray(r).is_some()
                        && r.gateway_id
                            .parse()
                            .is_ok_and(|ip| view.holders.contains(&ip)));
                if orphan {
                    let key = (t.id.clone(), r.route_id);
                    let (n, first) = self
                        .sightings
                        .get(&key)
                        .copied()
                        .unwrap_or((0, Instant::now()));
                    now.insert(key, (n + 1, first));
                }
            }
        }
        self.sightings = now;
        let ripe: Vec<&(String, u64)> = self
            .sightings
            .iter()
            .filter(|(_, (n, first))| *n >= SIGHTINGS && first.elapsed() >= self.min_age)
            .map(|(k, _)| k)
            .collect();
        let collect: BTreeSet<(String, u64)> = ripe
            .iter()
            .take(deletes_allowed(ours))
            .map(|k| (*k).clone())
            .collect();
        Verdict {
            waiting: self.sightings.len() - collect.len(),
            collect,
            hold: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tencent_vpc::plan::tests::owner;
    use crate::backend::tencent_vpc::plan::{ActualRoute, NORMAL_CVM};

    fn tables(dests: &[(&str, &str)]) -> Vec<TableState> {
        vec![TableState {
            id: "rtb-1".into(),
            limit: 50,
            routes: dests
                .iter()
                .enumerate()
                .map(|(i, (d, desc))| ActualRoute {
                    route_id: i as u64 + 1,
                    dest: Some(d.parse().unwrap()),
                    gateway_type: NORMAL_CVM.into(),
                    gateway_id: "172.16.1.7".into(),
                    description: desc.to_string(),
                    enabled: true,
                })
                .collect(),
        }]
    }

    static NO_HOLDERS: BTreeSet<Ipv4Addr> = BTreeSet::new();

    fn view(leased: &BTreeSet<Ipv4Net>, fresh: bool) -> LeaseView<'_> {
        LeaseView {
            leased,
            holders: &NO_HOLDERS,
            fresh,
        }
    }

    fn leased(n: u8) -> BTreeSet<Ipv4Net> {
        (0..n)
            .map(|i| format!("10.244.{i}.0/24").parse().unwrap())
            .collect()
    }

    #[test]
    fn an_orphan_goes_at_the_second_consecutive_sighting_and_only_if_ours() {
        let t = tables(&[
            ("10.244.50.0/24", "flannel:c1:172.16.1.7"),
            ("10.244.51.0/24", ""),
            ("10.244.1.0/24", "flannel:c1:172.16.1.8"),
        ]);
        let l = leased(4);
        let view = view(&l, true);
        let mut g = OrphanTracker::with_min_age(Duration::ZERO);
        let v = g.observe(view, &t, &owner());
        assert!(v.collect.is_empty() && v.waiting == 1 && v.hold.is_none());
        let v = g.observe(view, &t, &owner());
        assert_eq!(v.collect, [("rtb-1".to_string(), 1)].into());
    }

    #[test]
    fn a_stray_of_ours_goes_when_its_next_hop_holds_a_lease() {
        let t = tables(&[
            ("0.0.0.0/1", "flannel:c1:172.16.1.7"),
            ("192.168.100.0/24", "flannel:c1:172.16.1.7"),
            ("10.9.0.0/24", "flannel:c2:172.16.1.7"),
            ("10.8.0.0/24", ""),
        ]);
        let l = leased(4);
        let holders: BTreeSet<Ipv4Addr> = ["172.16.1.7".parse().unwrap()].into();
        let v = LeaseView {
            leased: &l,
            holders: &holders,
            fresh: true,
        };
        let mut g = OrphanTracker::with_min_age(Duration::ZERO);
        g.observe(v, &t, &owner());
        let verdict = g.observe(v, &t, &owner());
        assert_eq!(
            verdict.collect,
            [("rtb-1".to_string(), 1), ("rtb-1".to_string(), 2)].into(),
            "another cluster's tag and untagged routes are never strays"
        );
        // Via no lease holder: left to an operator.
        let mut g = OrphanTracker::with_min_age(Duration::ZERO);
        g.observe(view(&l, true), &t, &owner());
        assert!(g.observe(view(&l, true), &t, &owner()).collect.is_empty());
    }

    #[test]
    fn a_route_leased_again_in_between_starts_over() {
        let t = tables(&[("10.244.50.0/24", "flannel:c1:172.16.1.7")]);
        let mut g = OrphanTracker::with_min_age(Duration::ZERO);
        let without = leased(4);
        let mut with = leased(4);
        with.insert("10.244.50.0/24".parse().unwrap());
        g.observe(view(&without, true), &t, &owner());
        g.observe(view(&with, true), &t, &owner());
        let v = g.observe(view(&without, true), &t, &owner());
        assert!(v.collect.is_empty(), "consecutive sightings only");
    }

    #[test]
    fn guards_hold_on_stale_empty_or_halved_views() {
        let t = tables(&[("10.244.50.0/24", "flannel:c1:172.16.1.7")]);
        let mut g = OrphanTracker::with_min_age(Duration::ZERO);
        let ten = leased(10);
        let four = leased(4);
        let none = BTreeSet::new();
        g.observe(view(&ten, true), &t, &owner());
        let v = g.observe(view(&ten, false), &t, &owner());
        assert_eq!(v.hold, Some(Hold::NotFresh));
        let v = g.observe(view(&none, true), &t, &owner());
        assert_eq!(
            v.hold.unwrap().to_string(),
            "no leases at all (a wiped store?)"
        );
        g.observe(view(&ten, true), &t, &owner());
        let v = g.observe(view(&four, true), &t, &owner());
        assert_eq!(
            v.hold.unwrap().to_string(),
            "leases dropped from 10 to 4 at once (a wiped or restored store?)"
        );
        // The smaller set is the baseline from now on, and sightings start over.
        assert!(g
            .observe(view(&four, true), &t, &owner())
            .collect
            .is_empty());
        assert_eq!(g.observe(view(&four, true), &t, &owner()).collect.len(), 1);
    }

    #[test]
    fn deletions_per_cycle_are_capped() {
        let dests: Vec<(String, &str)> = (100..150)
            .map(|i| (format!("10.244.{i}.0/24"), "flannel:c1:172.16.1.7"))
            .collect();
        let refs: Vec<(&str, &str)> = dests.iter().map(|(d, s)| (d.as_str(), *s)).collect();
        let t = tables(&refs);
        let l = leased(3);
        let mut g = OrphanTracker::with_min_age(Duration::ZERO);
        g.observe(view(&l, true), &t, &owner());
        // 50 of ours, all orphaned: half of them this cycle.
        let v = g.observe(view(&l, true), &t, &owner());
        assert_eq!(v.collect.len(), 25);
        assert_eq!(v.waiting, 25);
    }

    #[test]
    fn two_quick_looks_do_not_make_an_orphan_ripe() {
        let t = tables(&[("10.244.50.0/24", "flannel:c1:172.16.1.7")]);
        let l = leased(4);
        let mut g = OrphanTracker::default();
        for _ in 0..5 {
            let v = g.observe(view(&l, true), &t, &owner());
            assert!(v.collect.is_empty() && v.waiting == 1);
        }
    }

    #[test]
    fn the_cap_is_half_of_ours_but_never_below_the_floor() {
        assert_eq!(deletes_allowed(0), MIN_DELETES_PER_CYCLE);
        assert_eq!(deletes_allowed(30), MIN_DELETES_PER_CYCLE);
        assert_eq!(deletes_allowed(11_000), 5_500);
    }
}
