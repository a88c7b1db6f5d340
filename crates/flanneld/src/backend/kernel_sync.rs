//! What host-gw and vxlan share: the kernel state they want for the peers as a value, and one
//! reconcile that lists what the kernel has, diffs, and applies the difference. Every event batch and every resync runs
//! the same reconcile, so a route deleted behind our back, or left by a lease that went away
//! while we were down, is repaired the same way. Failures are collected and the rest applied.

use crate::kernel::{
    family_of, within, Family, FdbEntry, Kernel, KernelError, Link, ListedRoute, Neighbour, Route,
};
use flannel_core::lease::Lease;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::{BTreeMap, BTreeSet};
use tracing::{info, warn};

/// The kernel state a route backend wants, as a value.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Desired {
    pub routes: Vec<Route>,
    /// Per device index: permanent neighbour entries and FDB entries (vxlan).
    pub neighbours: BTreeMap<u32, Vec<Neighbour>>,
    pub fdb: BTreeMap<u32, Vec<FdbEntry>>,
}

/// The route changes that bring `actual` to `desired`: a desired route not present exactly
/// is replaced (the kernel replaces by destination); a route of ours (our protocol) to a
/// destination nobody wants is deleted, unless it is `protected` (this node's own subnet).
/// Routes we did not make are never deleted.
pub fn plan_routes(
    desired: &[Route],
    actual: &[ListedRoute],
    protected: &[IpNet],
) -> (Vec<Route>, Vec<Route>) {
    let present: BTreeSet<&Route> = actual.iter().map(|r| &r.route).collect();
    let wanted: BTreeSet<IpNet> = desired.iter().map(|r| r.dst).collect();
    let replace = desired
        .iter()
        .filter(|r| !present.contains(r))
        .cloned()
        .collect();
    let delete = actual
        .iter()
        .filter(|r| r.ours && !wanted.contains(&r.route.dst) && !protected.contains(&r.route.dst))
        .map(|r| r.route.clone())
        .collect();
    (replace, delete)
}

/// Our routes outside the pod networks: an earlier version's, for leases it should have
/// refused. Ours (our protocol) and never wanted now, so they go.
pub fn plan_strays(outside: &[ListedRoute], protected: &[IpNet]) -> Vec<Route> {
    outside
        .iter()
        .filter(|r| r.ours && !protected.contains(&r.route.dst))
        .map(|r| r.route.clone())
        .collect()
}

/// Set changes keyed by `key`: add what differs, delete what nobody wants.
fn plan_set<T: Ord + Clone, K: Ord>(
    want: &[T],
    have: &[T],
    key: impl Fn(&T) -> K,
) -> (Vec<T>, Vec<T>) {
    let have_set: BTreeSet<&T> = have.iter().collect();
    let want_keys: BTreeSet<K> = want.iter().map(&key).collect();
    let add = want
        .iter()
        .filter(|t| !have_set.contains(t))
        .cloned()
        .collect();
    let delete = have
        .iter()
        .filter(|t| !want_keys.contains(&key(t)))
        .cloned()
        .collect();
    (add, delete)
}

/// How many changes a reconcile made.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    pub added: usize,
    pub deleted: usize,
}

/// The failures of one reconcile: the first is returned, the rest are logged.
fn first_error(mut errors: Vec<KernelError>) -> Result<(), KernelError> {
    if errors.is_empty() {
        return Ok(());
    }
    let first = errors.remove(0);
    for e in &errors {
        warn!(error = %crate::report(e), "kernel change failed");
    }
    Err(first)
}

/// Bring the kernel in line with `desired`, within `networks` (routes; our routes outside
/// them are strays and go) and on the devices named in `desired` (neighbours and FDB). Additions come before deletions, so a changed
/// entry is never missing in between, and in the order a packet uses them: FDB entries, then
/// neighbours, then routes; deletions in the reverse order. A route through a vxlan device is
/// thus never without its neighbour and FDB entry (a packet routed then would wait for an
/// ARP reply that never comes, and be lost).
pub async fn reconcile(
    kernel: &dyn Kernel,
    networks: &[IpNet],
    protected: &[IpNet],
    desired: &Desired,
) -> Result<Changes, KernelError> {
    let mut fdb = Vec::new();
    for (dev, want) in &desired.fdb {
        let have = kernel.fdb(*dev).await?;
        let (add, delete) = plan_set(want, &have, |e| (e.mac, e.dst));
        fdb.push((*dev, add, delete));
    }
    let mut neighbours = Vec::new();
    for (dev, want) in &desired.neighbours {
        let have = kernel.neighbours(*dev).await?;
        let (add, delete) = plan_set(want, &have, |n| n.ip);
        neighbours.push((*dev, add, delete));
    }
    let mut routes = Vec::new();
    for family in [Family::V4, Family::V6] {
        let inside: Vec<IpNet> = networks
            .iter()
            .filter(|n| family_of(n) == family)
            .copied()
            .collect();
        let want: Vec<Route> = desired
            .routes
            .iter()
            .filter(|r| family_of(&r.dst) == family)
            .cloned()
            .collect();
        let all = kernel.routes(family).await?;
        let (have, outside): (Vec<ListedRoute>, Vec<ListedRoute>) = all
            .into_iter()
            .partition(|r| inside.iter().any(|n| within(n, &r.route.dst)));
        let (replace, mut delete) = plan_routes(&want, &have, protected);
        delete.extend(plan_strays(&outside, protected));
        routes.push((replace, delete));
    }
    let mut changes = Changes::default();
    let mut errors = Vec::new();
    let mut tally = |r: Result<(), KernelError>, added: bool| match r {
        Ok(()) if added => changes.added += 1,
        Ok(()) => changes.deleted += 1,
        Err(e) => errors.push(e),
    };
    for (dev, add, _) in &fdb {
        for e in add {
            tally(kernel.replace_fdb(*dev, e).await, true);
        }
    }
    for (dev, add, _) in &neighbours {
        for n in add {
            tally(kernel.replace_neighbour(*dev, n).await, true);
        }
    }
    for (replace, _) in &routes {
        for r in replace {
            let done = kernel.replace_route(r).await;
            if done.is_ok() {
                info!(route = %r, "route added");
            }
            tally(done, true);
        }
    }
    for (_, delete) in &routes {
        for r in delete {
            let done = kernel.delete_route(r).await;
            if done.is_ok() {
                info!(route = %r, "stale route deleted");
            }
            tally(done, false);
        }
    }
    for (dev, _, delete) in &neighbours {
        for n in delete {
            tally(kernel.delete_neighbour(*dev, n).await, false);
        }
    }
    for (dev, _, delete) in &fdb {
        for e in delete {
            tally(kernel.delete_fdb(*dev, e).await, false);
        }
    }
    first_error(errors).map(|()| changes)
}

/// [`reconcile`] for a node holding `own`: its own subnets are never deleted.
pub async fn reconcile_for(
    kernel: &dyn Kernel,
    networks: &[IpNet],
    own: &Lease,
    desired: &Desired,
) -> Result<Changes, KernelError> {
    reconcile(kernel, networks, &own_subnets(own), desired).await
}

/// The address a device of ours holds for `family`: this node's subnet's network address
/// as a /32 (/128), as upstream gives flannel.1, flannel0 and flannel-wg.
pub fn device_address(own: &Lease, family: Family) -> Option<IpNet> {
    match family {
        Family::V4 => own
            .subnet()
            .map(|s| IpNet::V4(Ipv4Net::new(s.network(), 32).expect("a /32"))),
        Family::V6 => own
            .ipv6_subnet()
            .map(|s| IpNet::V6(Ipv6Net::new(s.network(), 128).expect("a /128"))),
    }
}

/// Make `link`'s addresses exactly `want`, leaving alone those `keep` says are not ours to
/// manage.
pub async fn set_addresses(
    kernel: &dyn Kernel,
    link: &Link,
    want: &[IpNet],
    keep: impl Fn(&IpNet) -> bool,
) -> Result<(), KernelError> {
    let have = kernel.addresses(link).await?;
    for stale in have.iter().filter(|a| !want.contains(a) && !keep(a)) {
        kernel.delete_address(link, *stale).await?;
    }
    for a in want.iter().filter(|a| !have.contains(a)) {
        kernel.add_address(link, *a).await?;
    }
    Ok(())
}

/// This node's own subnets: never deleted by a reconcile (cni0 routes them).
pub fn own_subnets(own: &Lease) -> Vec<IpNet> {
    own.subnet()
        .map(|s| IpNet::V4(s.trunc()))
        .into_iter()
        .chain(own.ipv6_subnet().map(|s| IpNet::V6(s.trunc())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn via(dst: &str, gw: &str) -> Route {
        Route::via(net(dst), gw.parse().unwrap(), 2)
    }

    fn listed(r: Route, ours: bool) -> ListedRoute {
        ListedRoute { route: r, ours }
    }

    #[test]
    fn plan_replaces_what_differs_and_deletes_only_our_unwanted_routes() {
        let desired = [
            via("10.5.1.0/24", "172.16.0.1"),
            via("10.5.2.0/24", "172.16.0.2"),
        ];
        let actual = [
            // present exactly: untouched
            listed(via("10.5.1.0/24", "172.16.0.1"), false),
            // wrong gateway: replaced
            listed(via("10.5.2.0/24", "172.16.0.9"), true),
            // ours, nobody wants it: deleted
            listed(via("10.5.3.0/24", "172.16.0.3"), true),
            // not ours (an operator's): kept
            listed(via("10.5.4.0/24", "172.16.0.4"), false),
            // our own subnet: protected
            listed(Route::blackhole(net("10.5.7.0/24")), true),
        ];
        let (replace, delete) = plan_routes(&desired, &actual, &[net("10.5.7.0/24")]);
        assert_eq!(replace, vec![via("10.5.2.0/24", "172.16.0.2")]);
        assert_eq!(delete, vec![via("10.5.3.0/24", "172.16.0.3")]);
        let in_sync: Vec<ListedRoute> = desired.iter().map(|r| listed(r.clone(), true)).collect();
        assert_eq!(plan_routes(&desired, &in_sync, &[]), (vec![], vec![]));
    }

    #[tokio::test]
    async fn our_strays_outside_the_networks_go_and_nothing_else_does() {
        let k = crate::kernel::fake::FakeKernel::with_link("eth0", 2, 1500);
        let put = |r: Route, ours: bool| {
            k.s().routes.insert(r.dst, ListedRoute { route: r, ours });
        };
        // What an earlier version installed for hostile leases, and a user's routes.
        put(via("0.0.0.0/1", "172.16.0.9"), true);
        put(via("192.168.5.0/24", "172.16.0.9"), true);
        put(via("fd00:99::/64", "fd00::9"), true);
        put(via("0.0.0.0/0", "172.16.0.254"), false);
        put(via("192.168.100.0/24", "172.16.0.5"), false);
        put(via("10.5.2.0/24", "172.16.0.2"), true);
        let changes = reconcile(
            &k,
            &[net("10.5.0.0/16")],
            &[],
            &Desired {
                routes: vec![via("10.5.2.0/24", "172.16.0.2")],
                ..Desired::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            changes,
            Changes {
                added: 0,
                deleted: 3
            }
        );
        let left: Vec<String> = k.routes().iter().map(|r| r.dst.to_string()).collect();
        assert_eq!(left, ["0.0.0.0/0", "10.5.2.0/24", "192.168.100.0/24"]);
    }

    #[test]
    fn set_plan_keys_entries() {
        let a = |ip: &str, m: u8| Neighbour {
            ip: ip.parse().unwrap(),
            mac: crate::kernel::Mac([2, 0, 0, 0, 0, m]),
        };
        let (add, delete) = plan_set(
            &[a("10.5.1.0", 1), a("10.5.2.0", 2)],
            &[a("10.5.1.0", 1), a("10.5.2.0", 9), a("10.5.3.0", 3)],
            |n| n.ip,
        );
        assert_eq!(add, vec![a("10.5.2.0", 2)]);
        assert_eq!(
            delete,
            vec![a("10.5.3.0", 3)],
            "a changed MAC is replaced, not deleted"
        );
    }
}
