//! The tencent-vpc readiness probe ([`crate::probe`]): every node holds its pod subnet's
//! network address as a /32 on `lo` (a device that exists before any pod; the daemon installs
//! it), which is both the source of its own probes and what peers probe. A probe from `10.244.1.0` to a peer's
//! `10.244.2.0` goes out through this node's route table and comes back through the peer's,
//! so one answer per VPC subnet holding nodes checks this node's route in every table that
//! serves nodes, as forwarded and not only as listed. Both ends lie in the Network, so
//! upstream's masquerade rules leave the probe alone.
//!
//! With `"Fallback": "vxlan"` there is no probe (flannel.1 holds the address; the vxlan side
//! is verified by its device being up).

use super::{route_of, subnet_of};
use crate::probe::{ProbeGroup, ProbePlan};
use flannel_core::admission::PeerView;
use flannel_core::lease::Lease;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Peers probed per VPC subnet: one answer is enough; a few cover a peer that is down.
pub const TARGETS_PER_SUBNET: usize = 3;

/// The backend's side of the probe.
#[derive(Debug, Clone, Copy)]
pub struct DataPathProbe {
    /// `ReadinessProbe`: off, the node neither probes nor holds the probe address (turn it
    /// off on every node alike).
    pub enabled: bool,
}

impl DataPathProbe {
    pub fn plan(&self, own: &Lease, peers: &PeerView<'_>) -> Option<ProbePlan> {
        self.enabled.then(|| plan(own, peers))?
    }
}

/// From this lease's address, up to [`TARGETS_PER_SUBNET`] routed peers per VPC subnet (pure).
/// Each node picks its own peers (an order mixed with its own subnet), so a thousand joins
/// do not all probe the same few nodes.
pub fn plan(own: &Lease, peers: &PeerView<'_>) -> Option<ProbePlan> {
    let source = own.subnet()?.network();
    let mix = |peer: Ipv4Addr| (u32::from(peer) ^ u32::from(source)).wrapping_mul(0x9e37_79b1);
    let mut by_subnet: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
    for peer in peers.iter() {
        let (Some(route), Some(subnet)) = (route_of(peer), subnet_of(peer)) else {
            continue;
        };
        by_subnet
            .entry(subnet)
            .or_default()
            .push(route.dest.network());
    }
    let groups = by_subnet
        .into_iter()
        .map(|(name, mut targets)| {
            targets.sort_by_key(|t| (mix(*t), *t));
            targets.truncate(TARGETS_PER_SUBNET);
            ProbeGroup { name, targets }
        })
        .collect();
    Some(ProbePlan { source, groups })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_core::lease::{Expiry, LeaseAttrs, SubnetKey};
    use serde_json::json;

    fn lease(i: u8, subnet: Option<&str>) -> Lease {
        let ip = format!("172.16.1.{i}");
        let mut attrs = LeaseAttrs::new(ip.parse().unwrap());
        attrs.backend_type = "tencent-vpc".into();
        let mut data = json!({"PrivateIP": ip});
        if let Some(s) = subnet {
            data["SubnetId"] = s.into();
        }
        attrs.backend_data = Some(data);
        Lease {
            key: SubnetKey::v4(format!("10.244.{i}.0/24").parse().unwrap()),
            attrs,
            expiry: Expiry::Never,
        }
    }

    #[test]
    fn a_few_routed_peers_per_vpc_subnet_from_the_subnet_address() {
        let own = lease(1, Some("subnet-a"));
        let mut peers: Vec<Lease> = (2..=9).map(|i| lease(i, Some("subnet-b"))).collect();
        peers.push(lease(10, Some("subnet-a")));
        peers.push(lease(11, None)); // no SubnetId: not grouped
        let mut upstream = lease(12, Some("subnet-c"));
        upstream.attrs.backend_data = None; // an upstream lease: not routed by us
        peers.push(upstream);
        let mine = plan_of(&own, &peers);
        assert_eq!(mine.source, "10.244.1.0".parse::<Ipv4Addr>().unwrap());
        let names: Vec<&str> = mine.groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["subnet-a", "subnet-b"]);
        assert_eq!(
            mine.groups[0].targets,
            ["10.244.10.0".parse::<Ipv4Addr>().unwrap()]
        );
        let b = &mine.groups[1].targets;
        assert_eq!(b.len(), TARGETS_PER_SUBNET);
        assert!(b
            .iter()
            .all(|t| t.octets()[3] == 0 && (2..=9).contains(&t.octets()[2])));
        // Another node picks its own peers of subnet-b.
        let other = plan_of(&lease(13, Some("subnet-a")), &peers);
        assert_ne!(&other.groups[1].targets, b, "the same three for everyone");
        // The first node has nobody to ask.
        assert!(plan(&own, &PeerView::unchecked(&[]))
            .unwrap()
            .groups
            .is_empty());
    }

    fn plan_of(own: &Lease, peers: &[Lease]) -> ProbePlan {
        plan(own, &PeerView::unchecked(peers)).unwrap()
    }

    #[test]
    fn with_the_probe_off_there_is_no_plan() {
        let own = lease(1, Some("subnet-a"));
        let off = DataPathProbe { enabled: false };
        assert!(off.plan(&own, &PeerView::unchecked(&[])).is_none());
        let on = DataPathProbe { enabled: true };
        assert!(on.plan(&own, &PeerView::unchecked(&[])).is_some());
    }
}
