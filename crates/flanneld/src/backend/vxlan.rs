//! vxlan, as upstream: device `flannel.<VNI>` on the external interface, its MAC published
//! as `{"VNI":1,"VtepMAC":"..."}`, and per peer a permanent neighbour entry (the peer's
//! subnet address → its VtepMAC), an FDB entry (VtepMAC → its PublicIP) and the route
//! `subnet via subnet-address dev flannel.<VNI> onlink`. With DirectRouting a peer on the
//! same L2 segment gets a plain `subnet via PublicIP` route instead. The device is
//! recreated, with the same MAC, if it disappears or no longer matches the config.

use super::kernel_sync::{self, Desired};
use super::{base_attrs, host_gw, Backend, BackendError, Status, Trigger};
use crate::iface::ExternalInterface;
use crate::kernel::{FdbEntry, Kernel, Link, Mac, Neighbour, Route, VxlanSpec};
use async_trait::async_trait;
use flannel_core::admission::PeerView;
use flannel_core::backend_config::{BackendKind, VxlanConfig};
use flannel_core::lease::{Lease, LeaseAttrs};
use flannel_core::ValidatedNetConfig;
use ipnet::{IpNet, Ipv4Net};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

/// Why a vxlan config with IPv6 is refused.
pub const IPV6_UNSUPPORTED: &str =
    "vxlan with EnableIPv6 is not supported yet by flannel-rs (use host-gw, or IPv4 only)";

/// The vxlan header overhead upstream subtracts from the interface MTU (IPv4).
pub const VXLAN_OVERHEAD: u32 = 50;

pub struct VxlanBackend {
    /// The BackendType of the leases it reaches (tencent-vpc's for its Fallback).
    peer_kind: BackendKind,
    ext: ExternalInterface,
    networks: Vec<IpNet>,
    direct_routing: bool,
    kernel: Arc<dyn Kernel>,
    spec: VxlanSpec,
    device: Mutex<Option<Link>>,
}

/// A peer's VtepMAC from its BackendData (`{"VNI":1,"VtepMAC":"..."}`), as upstream writes it.
pub fn vtep_mac(lease: &Lease) -> Option<Mac> {
    lease
        .attrs
        .backend_data
        .as_ref()?
        .get("VtepMAC")?
        .as_str()?
        .parse()
        .ok()
}

/// What vxlan wants in the kernel for `peers` (device index `dev`; `on_link` are the peers'
/// public addresses reachable without a gateway, used only with DirectRouting).
pub fn desired<'a>(
    ext: &ExternalInterface,
    dev: u32,
    peers: impl IntoIterator<Item = &'a Lease>,
    direct_routing: bool,
    on_link: &BTreeSet<Ipv4Addr>,
    peer_kind: BackendKind,
) -> Desired {
    let mut d = Desired::default();
    let neighbours = d.neighbours.entry(dev).or_default();
    let mut fdb = Vec::new();
    for p in peers
        .into_iter()
        .filter(|p| p.attrs.backend_type == peer_kind.name())
    {
        let Some(subnet) = p.subnet() else { continue };
        let public = p.attrs.public_ip;
        if direct_routing && on_link.contains(&public) {
            d.routes
                .push(Route::via(IpNet::V4(subnet), IpAddr::V4(public), ext.index));
            continue;
        }
        let Some(mac) = vtep_mac(p) else {
            warn!(subnet = %subnet, public_ip = %public, "peer lease has no valid VtepMAC; skipped");
            continue;
        };
        let gw = IpAddr::V4(subnet.network());
        neighbours.push(Neighbour { ip: gw, mac });
        fdb.push(FdbEntry {
            mac,
            dst: IpAddr::V4(public),
        });
        d.routes
            .push(Route::via(IpNet::V4(subnet), gw, dev).onlink());
    }
    d.fdb.insert(dev, fdb);
    d
}

impl VxlanBackend {
    /// Set up the device (reusing an existing device's MAC, so the VtepMAC survives
    /// restarts), before the lease is taken: its MAC goes into the lease.
    pub async fn new(
        ext: ExternalInterface,
        network: &ValidatedNetConfig,
        config: &VxlanConfig,
        kernel: Arc<dyn Kernel>,
    ) -> Result<VxlanBackend, BackendError> {
        Self::reaching(ext, network, config, kernel, BackendKind::Vxlan).await
    }

    /// A vxlan data plane for the peers of another backend type (tencent-vpc's Fallback).
    pub async fn reaching(
        ext: ExternalInterface,
        network: &ValidatedNetConfig,
        config: &VxlanConfig,
        kernel: Arc<dyn Kernel>,
        peer_kind: BackendKind,
    ) -> Result<VxlanBackend, BackendError> {
        if network.enable_ipv6() {
            return Err(BackendError::Unsupported(IPV6_UNSUPPORTED.into()));
        }
        let local = ext
            .iface_addr
            .ok_or_else(|| BackendError::NoPublicIp(ext.name.clone()))?;
        let name = format!("flannel.{}", config.vni);
        let mac = match kernel.link_by_name(&name).await? {
            Some(Link { mac: Some(m), .. }) => m,
            _ => crate::kernel::random_mac(),
        };
        let mtu = if config.mtu != 0 {
            config.mtu
        } else {
            ext.mtu.saturating_sub(VXLAN_OVERHEAD)
        };
        let spec = VxlanSpec {
            name,
            vni: config.vni,
            port: if config.port == 0 {
                crate::kernel::VXLAN_DEFAULT_PORT
            } else {
                config.port
            },
            learning: config.learning,
            gbp: config.gbp,
            local: IpAddr::V4(local),
            underlay: ext.index,
            mtu,
            mac,
        };
        let b = VxlanBackend {
            peer_kind,
            networks: host_gw::networks(network),
            direct_routing: config.direct_routing,
            ext,
            kernel,
            spec,
            device: Mutex::new(None),
        };
        b.ensure_device(None).await?;
        Ok(b)
    }

    /// The device as the spec says (created or recreated when missing or different), up,
    /// with the MTU, and with the own subnet's first address as its only address.
    async fn ensure_device(&self, own: Option<&Lease>) -> Result<Link, BackendError> {
        let k = self.kernel.as_ref();
        let link = match k.link_by_name(&self.spec.name).await? {
            Some(l)
                if l.vxlan.as_ref().is_some_and(|v| self.spec.matches(v))
                    && l.mac == Some(self.spec.mac) =>
            {
                if !l.up || l.mtu != self.spec.mtu {
                    k.set_up(&l, self.spec.mtu).await?;
                }
                l
            }
            Some(l) => {
                warn!(device = %l.name, "existing device does not match the vxlan config; recreating it");
                k.delete_link(&l).await?;
                k.create_vxlan(&self.spec).await?
            }
            None => {
                let l = k.create_vxlan(&self.spec).await?;
                if self.device.lock().expect("device lock").is_some() {
                    warn!(device = %l.name, "vxlan device was deleted; recreated it");
                } else {
                    info!(device = %l.name, mac = %self.spec.mac, "created vxlan device");
                }
                l
            }
        };
        if let Some(subnet) = own.and_then(Lease::subnet) {
            let want = IpNet::V4(Ipv4Net::new(subnet.network(), 32).expect("/32"));
            let have = k.addresses(&link).await?;
            for a in have.iter().filter(|a| **a != want) {
                k.delete_address(&link, *a).await?;
            }
            if !have.contains(&want) {
                k.add_address(&link, want).await?;
            }
        }
        *self.device.lock().expect("device lock") = Some(link.clone());
        Ok(link)
    }

    /// The VNI and VtepMAC peers need, as upstream publishes them in BackendData.
    pub fn vtep(&self) -> (u32, Mac) {
        (self.spec.vni, self.spec.mac)
    }

    /// Bring the device and the entries for exactly `peers` in line.
    pub async fn sync(&self, own: &Lease, peers: &[&Lease]) -> Result<(), BackendError> {
        let dev = self.ensure_device(Some(own)).await?;
        let mut on_link = BTreeSet::new();
        if self.direct_routing {
            for p in peers {
                if self
                    .kernel
                    .is_on_link(IpAddr::V4(p.attrs.public_ip))
                    .await?
                {
                    on_link.insert(p.attrs.public_ip);
                }
            }
        }
        let want = desired(
            &self.ext,
            dev.index,
            peers.iter().copied(),
            self.direct_routing,
            &on_link,
            self.peer_kind,
        );
        kernel_sync::reconcile(
            self.kernel.as_ref(),
            &self.networks,
            &kernel_sync::own_subnets(own),
            &want,
        )
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Backend for VxlanBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Vxlan
    }
    async fn lease_attrs(&self) -> Result<LeaseAttrs, BackendError> {
        let mut attrs = base_attrs(BackendKind::Vxlan, &self.ext)?;
        attrs.backend_data = Some(serde_json::json!({
            "VNI": self.spec.vni,
            "VtepMAC": self.spec.mac.to_string(),
        }));
        Ok(attrs)
    }
    async fn reconcile(
        &self,
        own: &Lease,
        peers: &PeerView<'_>,
        _trigger: Trigger<'_>,
    ) -> Result<Status, BackendError> {
        let peers: Vec<&Lease> = peers.iter().collect();
        self.sync(own, &peers).await?;
        Ok(Status::done())
    }
    fn repairs_on_kernel_changes(&self) -> bool {
        true
    }
    fn mtu(&self) -> u32 {
        self.spec.mtu
    }
    fn resync_period(&self) -> Option<Duration> {
        Some(host_gw::ROUTE_CHECK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::testing::Peers;
    use crate::kernel::fake::FakeKernel;
    use crate::kernel::Links;
    use flannel_core::lease::{Expiry, SubnetKey};

    fn vx_lease(subnet: &str, ip: &str, mac: &str) -> Lease {
        let mut attrs = LeaseAttrs::new(ip.parse().unwrap());
        attrs.backend_type = "vxlan".into();
        // Upstream's BackendData, as upstream flanneld writes it.
        attrs.backend_data =
            Some(serde_json::from_str(&format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#)).unwrap());
        Lease {
            key: SubnetKey::v4(subnet.parse().unwrap()),
            attrs,
            expiry: Expiry::Never,
        }
    }

    fn config(json: &str) -> (ValidatedNetConfig, VxlanConfig) {
        let net = flannel_core::config::parse_and_check(json).unwrap();
        let c = match flannel_core::backend_config::BackendConfig::parse(
            &net.backend_type,
            net.backend.as_ref(),
        )
        .unwrap()
        {
            flannel_core::backend_config::BackendConfig::Vxlan(c) => c,
            other => panic!("{other:?}"),
        };
        (net, c)
    }

    async fn backend(kernel: &Arc<FakeKernel>, json: &str) -> VxlanBackend {
        let ext = ExternalInterface::ipv4("eth0", 2, 1500, Ipv4Addr::new(172, 16, 0, 1));
        let (net, c) = config(json);
        VxlanBackend::new(ext, &net, &c, kernel.clone())
            .await
            .unwrap()
    }

    const NET: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;

    #[tokio::test]
    async fn device_lease_data_and_peer_entries() {
        let kernel = Arc::new(FakeKernel::with_link("eth0", 2, 1500));
        let b = backend(&kernel, NET).await;
        let dev = kernel.s().links["flannel.1"].clone();
        assert_eq!(dev.mtu, 1450);
        assert_eq!(b.mtu(), 1450);
        let attrs = b.lease_attrs().await.unwrap();
        assert_eq!(
            serde_json::to_string(attrs.backend_data.as_ref().unwrap()).unwrap(),
            format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, dev.mac.unwrap())
        );

        let own = vx_lease("10.5.1.0/24", "172.16.0.1", "02:00:00:00:00:01");
        let peer = vx_lease("10.5.2.0/24", "172.16.0.2", "02:42:0a:05:02:00");
        let mut peers = Peers::new(&config(NET).0, &own);
        peers.set(&[own.clone(), peer.clone()]);
        peers.reconcile(&b, &own, Trigger::Start).await;
        let idx = dev.index;
        {
            let s = kernel.s();
            assert_eq!(
                s.addrs[&idx]
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
                ["10.5.1.0/32"]
            );
            let mac: Mac = "02:42:0a:05:02:00".parse().unwrap();
            assert_eq!(
                s.neigh[&idx].iter().copied().collect::<Vec<_>>(),
                [Neighbour {
                    ip: "10.5.2.0".parse().unwrap(),
                    mac
                }]
            );
            assert_eq!(
                s.fdb[&idx].iter().copied().collect::<Vec<_>>(),
                [FdbEntry {
                    mac,
                    dst: "172.16.0.2".parse().unwrap()
                }]
            );
            let routes: Vec<String> = s.routes.values().map(|r| r.route.to_string()).collect();
            assert_eq!(
                routes,
                [format!("10.5.2.0/24 via 10.5.2.0 dev #{idx} onlink")]
            );
        }

        // The peer's VTEP changes (a restarted upstream node), then the lease goes: its
        // neighbour, FDB entry and route go. At no point is a route left without its L2
        // entries (a packet routed then would wait for an ARP that never resolves).
        let moved = vx_lease("10.5.2.0/24", "172.16.0.2", "02:42:0a:05:02:99");
        peers.add(&moved);
        let added = [moved.clone()];
        let trigger = Trigger::Leases {
            added: &added,
            removed: &[],
        };
        peers.reconcile(&b, &own, trigger).await;
        peers.remove(&moved);
        let trigger = Trigger::Leases {
            added: &[],
            removed: &added,
        };
        peers.reconcile(&b, &own, trigger).await;
        let s = kernel.s();
        assert!(s.neigh[&idx].is_empty() && s.fdb[&idx].is_empty() && s.routes.is_empty());
        assert_eq!(s.path_gaps, Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_deleted_device_comes_back_with_the_same_mac_and_entries() {
        let kernel = Arc::new(FakeKernel::with_link("eth0", 2, 1500));
        let b = backend(&kernel, NET).await;
        let own = vx_lease("10.5.1.0/24", "172.16.0.1", "02:00:00:00:00:01");
        let peer = vx_lease("10.5.2.0/24", "172.16.0.2", "02:42:0a:05:02:00");
        let mut peers = Peers::new(&config(NET).0, &own);
        peers.set(&[own.clone(), peer]);
        peers.reconcile(&b, &own, Trigger::Start).await;
        let old = kernel.s().links["flannel.1"].clone();
        kernel.delete_link(&old).await.unwrap();
        peers
            .reconcile(&b, &own, Trigger::Resync { fresh: true })
            .await;
        let new = kernel.s().links["flannel.1"].clone();
        assert_eq!(new.mac, old.mac);
        assert_ne!(new.index, old.index);
        assert_eq!(kernel.routes().len(), 1);
        assert_eq!(kernel.routes()[0].dev, new.index);
        // A restarted daemon keeps the device's MAC (the VtepMAC in peers' FDBs).
        let again = backend(&kernel, NET).await;
        assert_eq!(again.spec.mac, old.mac.unwrap());
    }

    #[tokio::test]
    async fn direct_routing_uses_the_public_ip_for_peers_on_link() {
        let kernel = Arc::new(FakeKernel::with_link("eth0", 2, 1500));
        kernel.s().on_link.insert("172.16.0.2".parse().unwrap());
        let json = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
        let b = backend(&kernel, json).await;
        let own = vx_lease("10.5.1.0/24", "172.16.0.1", "02:00:00:00:00:01");
        let near = vx_lease("10.5.2.0/24", "172.16.0.2", "02:42:0a:05:02:00");
        let far = vx_lease("10.5.3.0/24", "192.168.9.3", "02:42:0a:05:03:00");
        let mut peers = Peers::new(&config(json).0, &own);
        peers.set(&[near, far]);
        peers.reconcile(&b, &own, Trigger::Start).await;
        let routes: Vec<String> = kernel.routes().iter().map(ToString::to_string).collect();
        let idx = kernel.s().links["flannel.1"].index;
        assert_eq!(
            routes,
            [
                "10.5.2.0/24 via 172.16.0.2 dev #2".to_string(),
                format!("10.5.3.0/24 via 10.5.3.0 dev #{idx} onlink")
            ]
        );
    }

    #[tokio::test]
    async fn ipv6_is_refused_naming_the_option() {
        let kernel = Arc::new(FakeKernel::with_link("eth0", 2, 1500));
        let ext = ExternalInterface::ipv4("eth0", 2, 1500, Ipv4Addr::new(172, 16, 0, 1));
        let (net, c) = config(
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","Backend":{"Type":"vxlan"}}"#,
        );
        let err = VxlanBackend::new(ext, &net, &c, kernel)
            .await
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "vxlan with EnableIPv6 is not supported yet by flannel-rs (use host-gw, or IPv4 only)"
        );
    }
}
