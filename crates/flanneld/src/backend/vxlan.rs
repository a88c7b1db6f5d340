//! vxlan, as upstream: device `flannel.<VNI>` on the external interface, its MAC published
//! as `{"VNI":1,"VtepMAC":"..."}`, and per peer a permanent neighbour entry (the peer's
//! subnet address → its VtepMAC), an FDB entry (VtepMAC → its PublicIP) and the route
//! `subnet via subnet-address dev flannel.<VNI> onlink`. With DirectRouting a peer on the
//! same L2 segment gets a plain `subnet via PublicIP` route instead. The device is
//! recreated, with the same MAC, if it disappears or no longer matches the config. With
//! EnableIPv6 the same again over IPv6: device `flannel-v6.<VNI>` (local: the interface's
//! IPv6 address), its MAC in BackendV6Data, entries for the peers' IPv6 subnets via their
//! PublicIPv6; IPv6-only (`EnableIPv4: false`) has only that device.

use super::kernel_sync::{self, Desired};
use super::{base_attrs, host_gw, Backend, BackendError, Status, Trigger};
use crate::iface::ExternalInterface;
use crate::kernel::{Family, FdbEntry, Kernel, Link, Mac, Neighbour, Route, VxlanSpec};
use async_trait::async_trait;
use flannel_core::admission::PeerView;
use flannel_core::backend_config::{BackendKind, VxlanConfig};
use flannel_core::lease::{Lease, LeaseAttrs};
use flannel_core::ValidatedNetConfig;
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

/// The vxlan header overhead upstream subtracts from the interface MTU.
pub const VXLAN_OVERHEAD: u32 = 50;
/// Over IPv6 the outer header is 20 bytes longer: the kernel refuses a `flannel-v6` MTU above
/// the interface's − 70.
pub const VXLAN6_OVERHEAD: u32 = 70;

/// One family's VXLAN tunnel endpoint: `flannel.<VNI>` (IPv4) or `flannel-v6.<VNI>` (IPv6).
struct Vtep {
    family: Family,
    spec: VxlanSpec,
    device: Mutex<Option<Link>>,
}

pub struct VxlanBackend {
    /// The BackendType of the leases it reaches (tencent-vpc's for its Fallback).
    peer_kind: BackendKind,
    ext: ExternalInterface,
    networks: Vec<IpNet>,
    direct_routing: bool,
    kernel: Arc<dyn Kernel>,
    v4: Option<Vtep>,
    v6: Option<Vtep>,
}

/// A peer's VtepMAC for `family` from its BackendData (`{"VNI":1,"VtepMAC":"..."}`) or
/// BackendV6Data, as upstream writes them.
pub fn vtep_mac_of(lease: &Lease, family: Family) -> Option<Mac> {
    let data = match family {
        Family::V4 => lease.attrs.backend_data.as_ref(),
        Family::V6 => lease.attrs.backend_v6_data.as_ref(),
    };
    data?.get("VtepMAC")?.as_str()?.parse().ok()
}

/// A peer's IPv4 VtepMAC.
pub fn vtep_mac(lease: &Lease) -> Option<Mac> {
    vtep_mac_of(lease, Family::V4)
}

/// A peer's subnet, public address and VtepMAC in `family`, if it has that family.
fn peer_in(p: &Lease, family: Family) -> Option<(IpNet, IpAddr, Option<Mac>)> {
    match family {
        Family::V4 => Some((
            IpNet::V4(p.subnet()?),
            IpAddr::V4(p.attrs.public_ip),
            vtep_mac_of(p, family),
        )),
        Family::V6 => Some((
            IpNet::V6(p.ipv6_subnet()?),
            IpAddr::V6(p.attrs.public_ipv6?),
            vtep_mac_of(p, family),
        )),
    }
}

/// What vxlan wants in the kernel for `peers` over IPv4 (device index `dev`; `on_link` are
/// the peers' public addresses reachable without a gateway, used only with DirectRouting).
pub fn desired<'a>(
    ext: &ExternalInterface,
    dev: u32,
    peers: impl IntoIterator<Item = &'a Lease>,
    direct_routing: bool,
    on_link: &BTreeSet<Ipv4Addr>,
    peer_kind: BackendKind,
) -> Desired {
    let on_link: BTreeSet<IpAddr> = on_link.iter().map(|a| IpAddr::V4(*a)).collect();
    desired_in(
        Family::V4,
        ext,
        dev,
        peers,
        direct_routing,
        &on_link,
        peer_kind,
    )
}

/// The same for one family: per peer of `peer_kind` with that family a neighbour entry
/// (its subnet address → its VtepMAC), an FDB entry (VtepMAC → public address) and
/// `subnet via subnet-address dev <dev> onlink`; with DirectRouting, a peer on the same
/// segment gets `subnet via public-address` on the external interface instead.
pub fn desired_in<'a>(
    family: Family,
    ext: &ExternalInterface,
    dev: u32,
    peers: impl IntoIterator<Item = &'a Lease>,
    direct_routing: bool,
    on_link: &BTreeSet<IpAddr>,
    peer_kind: BackendKind,
) -> Desired {
    let mut d = Desired::default();
    let neighbours = d.neighbours.entry(dev).or_default();
    let mut fdb = Vec::new();
    for p in peers
        .into_iter()
        .filter(|p| p.attrs.backend_type == peer_kind.name())
    {
        let Some((subnet, public, mac)) = peer_in(p, family) else {
            continue;
        };
        if direct_routing && on_link.contains(&public) {
            d.routes.push(Route::via(subnet, public, ext.index));
            continue;
        }
        let Some(mac) = mac else {
            warn!(subnet = %subnet, public_ip = %public, "peer lease has no valid VtepMAC; skipped");
            continue;
        };
        let gw = subnet.network();
        neighbours.push(Neighbour { ip: gw, mac });
        fdb.push(FdbEntry { mac, dst: public });
        d.routes.push(Route::via(subnet, gw, dev).onlink());
    }
    d.fdb.insert(dev, fdb);
    d
}

/// Both families' wants in one.
fn merge(mut a: Desired, b: Desired) -> Desired {
    a.routes.extend(b.routes);
    a.neighbours.extend(b.neighbours);
    a.fdb.extend(b.fdb);
    a
}

/// The VtepMACs this node published before (its lease still in the store: a restart, a
/// reboot, a new container whose device is gone), so a new device takes the same MAC and
/// peers' FDB and neighbour entries stay right (flannel-io/flannel#1036, #533).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PreviousVteps {
    pub v4: Option<Mac>,
    pub v6: Option<Mac>,
}

impl PreviousVteps {
    /// From the lease in `leases` that is this node's: the one published from our public
    /// address (either family).
    pub fn from_leases(leases: &[Lease], ext: &ExternalInterface) -> PreviousVteps {
        let mine = leases.iter().find(|l| {
            ext.ext_addr.is_some_and(|a| a == l.attrs.public_ip)
                || (ext.ext_v6_addr.is_some() && l.attrs.public_ipv6 == ext.ext_v6_addr)
        });
        PreviousVteps {
            v4: mine.and_then(|l| vtep_mac_of(l, Family::V4)),
            v6: mine.and_then(|l| vtep_mac_of(l, Family::V6)),
        }
    }

    /// From the store (nothing when it cannot say: a new MAC then, as before).
    pub async fn from_store(
        store: &dyn crate::subnet::SubnetManager,
        ext: &ExternalInterface,
    ) -> PreviousVteps {
        match store.list_leases().await {
            Ok(leases) => Self::from_leases(&leases, ext),
            Err(e) => {
                warn!(error = %crate::report(&e), "could not read this node's previous lease: a new device gets a new VtepMAC");
                PreviousVteps::default()
            }
        }
    }
}

impl VxlanBackend {
    /// Set up the devices (reusing an existing device's MAC, so the VtepMAC survives
    /// restarts), before the lease is taken: their MACs go into the lease.
    pub async fn new(
        ext: ExternalInterface,
        network: &ValidatedNetConfig,
        config: &VxlanConfig,
        kernel: Arc<dyn Kernel>,
    ) -> Result<VxlanBackend, BackendError> {
        Self::reaching(
            ext,
            network,
            config,
            kernel,
            BackendKind::Vxlan,
            PreviousVteps::default(),
        )
        .await
    }

    /// A vxlan data plane for the peers of `peer_kind` (vxlan, or tencent-vpc's Fallback); a
    /// device that must be made takes its MAC from `previous` when it has one.
    pub async fn reaching(
        ext: ExternalInterface,
        network: &ValidatedNetConfig,
        config: &VxlanConfig,
        kernel: Arc<dyn Kernel>,
        peer_kind: BackendKind,
        previous: PreviousVteps,
    ) -> Result<VxlanBackend, BackendError> {
        let mtu_for = |overhead: u32| {
            if config.mtu != 0 {
                config.mtu
            } else {
                ext.mtu.saturating_sub(overhead)
            }
        };
        let port = if config.port == 0 {
            crate::kernel::VXLAN_DEFAULT_PORT
        } else {
            config.port
        };
        let mut vteps = [None, None];
        for (slot, family) in vteps.iter_mut().zip([Family::V4, Family::V6]) {
            let (wanted, local, name, mtu) = match family {
                Family::V4 => (
                    network.network().is_some(),
                    ext.iface_addr.map(IpAddr::V4),
                    format!("flannel.{}", config.vni),
                    mtu_for(VXLAN_OVERHEAD),
                ),
                Family::V6 => (
                    network.enable_ipv6(),
                    ext.iface_v6_addr.map(IpAddr::V6),
                    format!("flannel-v6.{}", config.vni),
                    mtu_for(VXLAN6_OVERHEAD),
                ),
            };
            if !wanted {
                continue;
            }
            let local = local.ok_or_else(|| match family {
                Family::V4 => BackendError::NoPublicIp(ext.name.clone()),
                Family::V6 => BackendError::Unsupported(format!(
                    "EnableIPv6: interface {} has no IPv6 address for flannel-v6.{}",
                    ext.name, config.vni
                )),
            })?;
            let earlier = match family {
                Family::V4 => previous.v4,
                Family::V6 => previous.v6,
            };
            let mac = match (kernel.link_by_name(&name).await?, earlier) {
                (Some(Link { mac: Some(m), .. }), _) => m,
                (_, Some(m)) if m.is_unicast() => {
                    info!(device = %name, mac = %m, "device gone: recreating it with the VtepMAC of this node's previous lease");
                    m
                }
                _ => crate::kernel::random_mac(),
            };
            *slot = Some(Vtep {
                family,
                spec: VxlanSpec {
                    name,
                    vni: config.vni,
                    port,
                    learning: config.learning,
                    gbp: config.gbp,
                    local,
                    underlay: ext.index,
                    mtu,
                    mac,
                },
                device: Mutex::new(None),
            });
        }
        let [v4, v6] = vteps;
        let b = VxlanBackend {
            peer_kind,
            networks: host_gw::networks(network),
            direct_routing: config.direct_routing,
            ext,
            kernel,
            v4,
            v6,
        };
        for vtep in b.vteps() {
            b.ensure_device(vtep, None).await?;
        }
        Ok(b)
    }

    fn vteps(&self) -> impl Iterator<Item = &Vtep> {
        self.v4.iter().chain(self.v6.iter())
    }

    /// A device as its spec says (created or recreated when missing or different), up, with
    /// the MTU, and with the own subnet's first address (/32 or /128) as its only address.
    async fn ensure_device(&self, vtep: &Vtep, own: Option<&Lease>) -> Result<Link, BackendError> {
        let k = self.kernel.as_ref();
        let spec = &vtep.spec;
        let link = match k.link_by_name(&spec.name).await? {
            Some(l)
                if l.vxlan.as_ref().is_some_and(|v| spec.matches(v)) && l.mac == Some(spec.mac) =>
            {
                if !l.up || l.mtu != spec.mtu {
                    k.set_up(&l, spec.mtu).await?;
                }
                l
            }
            Some(l) => {
                warn!(device = %l.name, "existing device does not match the vxlan config; recreating it");
                k.delete_link(&l).await?;
                k.create_vxlan(spec).await?
            }
            None => {
                let l = k.create_vxlan(spec).await?;
                if vtep.device.lock().expect("device lock").is_some() {
                    warn!(device = %l.name, "vxlan device was deleted; recreated it");
                } else {
                    info!(device = %l.name, mac = %spec.mac, "created vxlan device");
                }
                l
            }
        };
        if let Some(want) = own.and_then(|own| kernel_sync::device_address(own, vtep.family)) {
            kernel_sync::set_addresses(k, &link, &[want], |_| false).await?;
        }
        *vtep.device.lock().expect("device lock") = Some(link.clone());
        Ok(link)
    }

    /// The IPv4 VNI and VtepMAC peers need, as upstream publishes them in BackendData.
    pub fn vtep(&self) -> (u32, Mac) {
        let spec = &self
            .v4
            .as_ref()
            .or(self.v6.as_ref())
            .expect("a vxlan backend has a device")
            .spec;
        (spec.vni, spec.mac)
    }

    /// Bring the devices and the entries for exactly `peers` in line.
    pub async fn sync(&self, own: &Lease, peers: &[&Lease]) -> Result<(), BackendError> {
        let mut want = Desired::default();
        for vtep in self.vteps() {
            let dev = self.ensure_device(vtep, Some(own)).await?;
            let mut on_link = BTreeSet::new();
            if self.direct_routing {
                for p in peers {
                    if let Some((_, public, _)) = peer_in(p, vtep.family) {
                        if self.kernel.is_on_link(public).await? {
                            on_link.insert(public);
                        }
                    }
                }
            }
            want = merge(
                want,
                desired_in(
                    vtep.family,
                    &self.ext,
                    dev.index,
                    peers.iter().copied(),
                    self.direct_routing,
                    &on_link,
                    self.peer_kind,
                ),
            );
        }
        kernel_sync::reconcile_for(self.kernel.as_ref(), &self.networks, own, &want).await?;
        Ok(())
    }
}

/// `{"VNI":…,"VtepMAC":"…"}`, upstream's BackendData (and BackendV6Data).
fn vtep_data(spec: &VxlanSpec) -> serde_json::Value {
    serde_json::json!({"VNI": spec.vni, "VtepMAC": spec.mac.to_string()})
}

#[async_trait]
impl Backend for VxlanBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Vxlan
    }
    async fn lease_attrs(&self) -> Result<LeaseAttrs, BackendError> {
        let mut attrs = base_attrs(BackendKind::Vxlan, &self.ext)?;
        attrs.backend_data = self.v4.as_ref().map(|v| vtep_data(&v.spec));
        attrs.backend_v6_data = self.v6.as_ref().map(|v| vtep_data(&v.spec));
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
    /// The pods' MTU: the smallest device's, so a pod packet fits either family's tunnel.
    fn mtu(&self) -> u32 {
        self.vteps()
            .map(|v| v.spec.mtu)
            .min()
            .unwrap_or(self.ext.mtu)
    }
    fn resync_period(&self) -> Option<Duration> {
        Some(host_gw::ROUTE_CHECK)
    }
}

#[cfg(test)]
mod tests;
