//! `"Fallback": "vxlan"`: the vxlan data plane for the leases the route tables cannot hold.
//! Every node runs `flannel.1` and publishes its VTEP beside its PrivateIP; a peer is reached
//! over vxlan while it is on the split's vxlan side, or while its VPC route is not yet in
//! every table (a newcomer, or one moving to routes: its vxlan entries go only once the route
//! has been seen everywhere at two readings).

use super::route_of;
use super::split::Split;
use crate::backend::vxlan::VxlanBackend;
use crate::backend::{BackendContext, BackendError};
use flannel_core::admission::PeerView;
use flannel_core::backend_config::{BackendKind, TencentVpcConfig, VxlanConfig};
use flannel_core::lease::Lease;
use ipnet::Ipv4Net;
use std::collections::BTreeSet;
use std::sync::Mutex;
use tracing::info;

pub struct Fallback {
    vxlan: VxlanBackend,
    /// The last split, and the leases whose route is in every programmed table.
    view: Mutex<FallbackView>,
}

impl Fallback {
    /// With `"Fallback": "vxlan"`, the vxlan device (before the lease: its MAC goes in it).
    pub async fn build(
        ctx: &BackendContext<'_>,
        cfg: &TencentVpcConfig,
    ) -> Result<Option<Fallback>, BackendError> {
        if !cfg.fallback_vxlan {
            return Ok(None);
        }
        let vxlan = VxlanBackend::reaching(
            ctx.ext.clone(),
            ctx.network,
            &VxlanConfig::default(),
            crate::backend::fenced_kernel(ctx.network)?,
            BackendKind::TencentVpc,
            crate::backend::vxlan::PreviousVteps::from_store(ctx.store.as_ref(), ctx.ext).await,
        )
        .await?;
        info!(
            reserved_routes = cfg.reserved_routes,
            "Fallback vxlan: leases the route tables cannot hold are reached over flannel.1"
        );
        Ok(Some(Fallback::new(vxlan)))
    }

    pub fn new(vxlan: VxlanBackend) -> Fallback {
        Fallback {
            vxlan,
            view: Mutex::new(FallbackView::default()),
        }
    }

    pub fn vtep(&self) -> (u32, crate::kernel::Mac) {
        self.vxlan.vtep()
    }

    pub fn mtu(&self) -> u32 {
        use crate::backend::Backend;
        self.vxlan.mtu()
    }

    /// Take a new split and reading (see [`FallbackView::update`]).
    pub fn update(&self, split: Split, seen_everywhere: BTreeSet<Ipv4Net>, own: Ipv4Net) {
        self.lock().update(split, seen_everywhere, own);
    }

    /// This node's own lease was on the vxlan side at the last reconcile.
    pub fn own_fallback(&self) -> bool {
        self.lock().own_fallback
    }

    /// Whether every peer with a route is placed on one side.
    pub fn places(&self, peers: &PeerView<'_>) -> bool {
        self.lock().places(peers.iter())
    }

    /// Program vxlan entries for exactly the peers reached over vxlan now.
    pub async fn sync(&self, own: &Lease, peers: &PeerView<'_>) -> Result<(), BackendError> {
        let over: Vec<&Lease> = {
            let view = self.lock();
            peers.iter().filter(|p| view.over_vxlan(p)).collect()
        };
        self.vxlan.sync(own, &over).await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FallbackView> {
        self.view.lock().expect("fallback view")
    }
}

#[derive(Debug, Default)]
pub struct FallbackView {
    split: Split,
    /// Leases whose route was in every table at the last two readings (at the first
    /// reading: at that one). A lease leaves vxlan only then, never in the moment its route
    /// appears: the path through the VPC has had a resync to settle.
    routed_everywhere: BTreeSet<Ipv4Net>,
    /// The last reading's leases with a route in every table (None before the first).
    last_seen: Option<BTreeSet<Ipv4Net>>,
    /// This node's own lease was on the vxlan side at the last reconcile.
    own_fallback: bool,
}

impl FallbackView {
    /// Take a new split and reading; say so when this node's own side changed.
    pub fn update(&mut self, split: Split, seen_everywhere: BTreeSet<Ipv4Net>, own: Ipv4Net) {
        let own_fallback = split.fallback.contains(&own);
        if own_fallback != self.own_fallback {
            info!(dest = %own, routed = split.routed.len(), fallback = split.fallback.len(), "this node's subnet is reached over {}", if own_fallback { "vxlan (the route tables are full)" } else { "VPC routes" });
        }
        self.split = split;
        self.routed_everywhere = match &self.last_seen {
            Some(last) => last.intersection(&seen_everywhere).copied().collect(),
            None => seen_everywhere.clone(),
        };
        self.last_seen = Some(seen_everywhere);
        self.own_fallback = own_fallback;
    }

    /// Whether every peer with a route is on one side: routed everywhere or on the vxlan
    /// side.
    pub fn places<'a>(&self, peers: impl IntoIterator<Item = &'a Lease>) -> bool {
        peers.into_iter().filter_map(route_of).all(|w| {
            self.routed_everywhere.contains(&w.dest) || self.split.fallback.contains(&w.dest)
        })
    }

    /// Whether `p` is reached over vxlan: on the split's fallback side, or its VPC route not in
    /// every table yet.
    pub fn over_vxlan(&self, p: &Lease) -> bool {
        p.subnet().is_some_and(|s| {
            let s = s.trunc();
            self.split.fallback.contains(&s) || !self.routed_everywhere.contains(&s)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::host_gw::tests::lease;
    use crate::backend::tencent_vpc::BACKEND_TYPE;
    use serde_json::json;

    fn peer(i: u8) -> Lease {
        let mut l = lease(
            &format!("10.244.{i}.0/24"),
            &format!("172.16.0.{i}"),
            BACKEND_TYPE,
        );
        l.attrs.backend_data =
            Some(json!({"PrivateIP": format!("172.16.0.{i}"), "SubnetId": "subnet-a"}));
        l
    }

    fn nets(is: &[u8]) -> BTreeSet<Ipv4Net> {
        is.iter()
            .map(|i| format!("10.244.{i}.0/24").parse().unwrap())
            .collect()
    }

    #[test]
    fn the_view_places_peers_and_keeps_vxlan_until_the_route_is_everywhere() {
        let peers = [peer(1), peer(2), peer(3), peer(4)];
        let mut upstream = lease("10.244.9.0/24", "172.16.0.9", "vxlan");
        upstream.attrs.backend_data = Some(json!({"VNI": 1, "VtepMAC": "0e:00:00:00:00:09"}));
        let mut view = FallbackView::default();
        // As the controller published it: 1 and 2 routed, 3 on the vxlan side, 4 not placed.
        view.update(
            Split {
                routed: nets(&[1, 2]),
                fallback: nets(&[3]),
                capacity: 0,
            },
            nets(&[1, 2]),
            "10.244.1.0/24".parse().unwrap(),
        );
        let over = |v: &FallbackView, ps: &[Lease]| -> Vec<String> {
            ps.iter()
                .filter(|p| v.over_vxlan(p))
                .map(|l| l.key.to_string())
                .collect()
        };
        assert_eq!(over(&view, &peers), ["10.244.3.0-24", "10.244.4.0-24"]);
        assert!(!view.places(&peers), "10.244.4.0/24 is on neither side");
        // A lease with no tencent-vpc route is not the controller's to place.
        assert!(view.places(&[peer(1), peer(3), upstream]));
        // 4's route appears: it stays on vxlan until a second reading shows it too; 3 moving
        // to routes keeps vxlan until its route is everywhere.
        let all_routed = Split {
            routed: nets(&[1, 2, 3, 4]),
            fallback: BTreeSet::new(),
            capacity: 0,
        };
        let own = "10.244.1.0/24".parse().unwrap();
        view.update(all_routed.clone(), nets(&[1, 2, 4]), own);
        assert_eq!(over(&view, &peers), ["10.244.3.0-24", "10.244.4.0-24"]);
        view.update(all_routed.clone(), nets(&[1, 2, 4]), own);
        assert_eq!(over(&view, &peers), ["10.244.3.0-24"]);
        assert!(!view.places(&peers));
        assert!(!view.own_fallback);
        // A route gone from one reading is back on vxlan at once.
        view.update(all_routed, nets(&[1, 4]), own);
        assert_eq!(over(&view, &peers), ["10.244.2.0-24", "10.244.3.0-24"]);
    }
}
