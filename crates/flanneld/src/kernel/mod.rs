//! The kernel layer: everything that reads or changes the host's network state, behind the
//! narrow traits the backends' pure planners are applied through. `SystemNetwork` answers
//! interface selection; `Netlink` is the data plane (routes, links, addresses, neighbours,
//! FDB entries, over rtnetlink); `packet_filter` applies the masquerade and forward rules.
//!
//! Every mutation is idempotent: adding what is there, or deleting what is not, succeeds.

pub mod fence;
mod host;
pub mod monitor;
mod netlink;
pub mod packet_filter;

#[cfg(test)]
pub(crate) mod fake;

pub use fence::Fenced;
pub use flannel_core::admission::Family;
pub use host::SystemNetwork;
pub use netlink::{Netlink, VXLAN_DEFAULT_PORT};

use async_trait::async_trait;
use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;

/// The route protocol number our routes carry (`ip route` shows `proto 87`), so that
/// garbage collection deletes only routes flanneld made. Upstream marks nothing; a route it
/// left behind is replaced (same destination) and never deleted by us.
pub const RTPROT_FLANNEL: u8 = 87;
/// The blackhole route's metric (the lowest priority a route can have).
pub const BLACKHOLE_METRIC: u32 = u32::MAX;

/// A route in the main table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    pub dst: IpNet,
    pub via: Option<IpAddr>,
    /// The output interface index (0 for a blackhole route).
    pub dev: u32,
    pub onlink: bool,
    pub blackhole: bool,
    /// The route's priority (0 unless a fallback, like the blackhole route).
    pub metric: u32,
}

/// The address family of a network.
pub fn family_of(n: &IpNet) -> Family {
    match n {
        IpNet::V4(_) => Family::V4,
        IpNet::V6(_) => Family::V6,
    }
}

/// Whether `dst` is `network` or inside it.
pub fn within(network: &IpNet, dst: &IpNet) -> bool {
    family_of(network) == family_of(dst)
        && dst.prefix_len() >= network.prefix_len()
        && network.contains(&dst.network())
}

impl Route {
    pub fn via(dst: IpNet, gw: IpAddr, dev: u32) -> Route {
        Route {
            dst: dst.trunc(),
            via: Some(gw),
            dev,
            onlink: false,
            blackhole: false,
            metric: 0,
        }
    }

    /// A route through a device with no gateway (scope link), e.g. the Network into a tunnel.
    pub fn through(dst: IpNet, dev: u32) -> Route {
        Route {
            dst: dst.trunc(),
            via: None,
            dev,
            onlink: false,
            blackhole: false,
            metric: 0,
        }
    }

    /// The `--ip-blackhole-route` route: at the highest metric, so it only catches what no
    /// other route to the subnet (cni0's) takes.
    pub fn blackhole(dst: IpNet) -> Route {
        Route {
            dst: dst.trunc(),
            via: None,
            dev: 0,
            onlink: false,
            blackhole: true,
            metric: BLACKHOLE_METRIC,
        }
    }

    pub fn onlink(mut self) -> Route {
        self.onlink = true;
        self
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.blackhole {
            return write!(f, "blackhole {}", self.dst);
        }
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.via {
            write!(f, " via {gw}")?;
        }
        write!(f, " dev #{}", self.dev)?;
        if self.onlink {
            f.write_str(" onlink")?;
        }
        if self.metric != 0 {
            write!(f, " metric {}", self.metric)?;
        }
        Ok(())
    }
}

/// A route as listed: whether we made it (our protocol number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedRoute {
    pub route: Route,
    pub ours: bool,
}

pub use flannel_core::mac::Mac;

/// A random locally administered unicast address (what upstream gives a new VTEP).
pub fn random_mac() -> Mac {
    Mac::local_unicast(rand::random())
}

/// A permanent neighbour (ARP/NDP) entry: `ip neigh add <ip> lladdr <mac> nud permanent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Neighbour {
    pub ip: IpAddr,
    pub mac: Mac,
}

/// A vxlan forwarding entry: `bridge fdb append <mac> dev flannel.1 dst <ip>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbEntry {
    pub mac: Mac,
    pub dst: IpAddr,
}

/// A vxlan device as flanneld wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    /// The UDP port (the kernel's default, 8472, when the config says 0).
    pub port: u16,
    pub learning: bool,
    pub gbp: bool,
    /// The underlay: source address and device.
    pub local: IpAddr,
    pub underlay: u32,
    pub mtu: u32,
    pub mac: Mac,
}

/// A link as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: Option<Mac>,
    pub up: bool,
    /// Set when the link is a vxlan device.
    pub vxlan: Option<VxlanAttrs>,
}

/// The vxlan attributes that decide whether an existing device can be kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanAttrs {
    pub vni: u32,
    pub port: u16,
    pub local: Option<IpAddr>,
    pub underlay: Option<u32>,
    pub learning: bool,
    pub gbp: bool,
}

impl VxlanSpec {
    /// Whether a device with `have` can serve as this one (else it is recreated, as upstream).
    pub fn matches(&self, have: &VxlanAttrs) -> bool {
        have.vni == self.vni
            && have.port == self.port
            && have.local == Some(self.local)
            && have.underlay.is_none_or(|u| u == self.underlay)
            && have.learning == self.learning
            && have.gbp == self.gbp
    }
}

/// A kernel operation that failed, naming its object.
#[derive(Debug, thiserror::Error)]
#[error("{op}")]
pub struct KernelError {
    pub op: String,
    #[source]
    pub source: std::io::Error,
}

impl KernelError {
    pub fn new(op: impl Into<String>, source: std::io::Error) -> KernelError {
        KernelError {
            op: op.into(),
            source,
        }
    }
}

/// Routes of the main table.
#[async_trait]
pub trait Routes: Send + Sync {
    /// Every route of the main table in `family` (one dump).
    async fn routes(&self, family: Family) -> Result<Vec<ListedRoute>, KernelError>;
    /// Add `route`, or replace the route to the same destination.
    async fn replace_route(&self, route: &Route) -> Result<(), KernelError>;
    /// Delete our route to `route.dst` (at its metric); absent is fine. Only the destination,
    /// the metric and our protocol are matched, so it goes whatever its next hop reads as,
    /// and a route we did not make never does.
    async fn delete_route(&self, route: &Route) -> Result<(), KernelError>;
    /// Whether `ip` is reachable without a gateway (on a connected subnet).
    async fn is_on_link(&self, ip: IpAddr) -> Result<bool, KernelError>;
}

/// Links and their addresses.
#[async_trait]
pub trait Links: Send + Sync {
    async fn link_by_name(&self, name: &str) -> Result<Option<Link>, KernelError>;
    /// Create the vxlan device (up, with its MTU and MAC) and return it.
    async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<Link, KernelError>;
    /// A kernel WireGuard device; fails with EOPNOTSUPP where the kernel has none.
    async fn create_wireguard(&self, name: &str, mtu: u32) -> Result<Link, KernelError>;
    async fn delete_link(&self, link: &Link) -> Result<(), KernelError>;
    /// Bring the link up with this MTU.
    async fn set_up(&self, link: &Link, mtu: u32) -> Result<(), KernelError>;
    async fn addresses(&self, link: &Link) -> Result<Vec<IpNet>, KernelError>;
    async fn add_address(&self, link: &Link, addr: IpNet) -> Result<(), KernelError>;
    async fn delete_address(&self, link: &Link, addr: IpNet) -> Result<(), KernelError>;
}

/// Neighbour and FDB entries of one device.
#[async_trait]
pub trait Neighbours: Send + Sync {
    /// The permanent neighbour entries on `dev`.
    async fn neighbours(&self, dev: u32) -> Result<Vec<Neighbour>, KernelError>;
    async fn replace_neighbour(&self, dev: u32, n: &Neighbour) -> Result<(), KernelError>;
    async fn delete_neighbour(&self, dev: u32, n: &Neighbour) -> Result<(), KernelError>;
    /// The FDB entries on `dev` that have a remote destination.
    async fn fdb(&self, dev: u32) -> Result<Vec<FdbEntry>, KernelError>;
    async fn replace_fdb(&self, dev: u32, e: &FdbEntry) -> Result<(), KernelError>;
    async fn delete_fdb(&self, dev: u32, e: &FdbEntry) -> Result<(), KernelError>;
}

/// Everything the route-based backends use.
pub trait Kernel: Routes + Links + Neighbours {}
impl<T: Routes + Links + Neighbours> Kernel for T {}

/// The machine the daemon runs on: its interfaces, and what the traffic rules are applied
/// through. [`SystemNetwork`] is the real one; tests bring fakes.
#[async_trait]
pub trait Platform: crate::iface::HostNetwork {
    /// The packet filter for the rules (nftables with `EnableNFTables`, else iptables) and
    /// whether it can do `--random-fully`.
    async fn packet_filter(
        &self,
        nftables: bool,
    ) -> (std::sync::Arc<dyn packet_filter::PacketFilter>, bool);
    /// The kernel's routes (for the blackhole route), fenced to `networks`.
    fn routes(&self, networks: Vec<IpNet>) -> Result<std::sync::Arc<dyn Routes>, KernelError>;
    /// Notifications of kernel changes that may have removed part of the data plane (none on
    /// platforms without them: the periodic resync repairs alone).
    fn kernel_changes(
        &self,
        _networks: Vec<IpNet>,
    ) -> Result<Option<monitor::KernelChanges>, KernelError> {
        Ok(None)
    }
    /// The readiness probe's address and echo, for the pod `networks`.
    fn prober(&self, networks: Vec<IpNet>) -> std::sync::Arc<dyn crate::probe::Prober>;
}

#[async_trait]
impl Platform for SystemNetwork {
    fn prober(&self, networks: Vec<IpNet>) -> std::sync::Arc<dyn crate::probe::Prober> {
        std::sync::Arc::new(crate::probe::SystemProber::new(networks))
    }

    async fn packet_filter(
        &self,
        nftables: bool,
    ) -> (std::sync::Arc<dyn packet_filter::PacketFilter>, bool) {
        use packet_filter::{Iptables, Nftables};
        if nftables {
            (std::sync::Arc::new(Nftables), true)
        } else {
            (
                std::sync::Arc::new(Iptables),
                Iptables::supports_random_fully().await,
            )
        }
    }

    fn routes(&self, networks: Vec<IpNet>) -> Result<std::sync::Arc<dyn Routes>, KernelError> {
        Ok(std::sync::Arc::new(Fenced::new(
            Netlink::connect()?,
            networks,
        )))
    }

    fn kernel_changes(
        &self,
        networks: Vec<IpNet>,
    ) -> Result<Option<monitor::KernelChanges>, KernelError> {
        monitor::watch(networks).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_mac_is_local_unicast() {
        for _ in 0..100 {
            let r = random_mac();
            assert_eq!(r.0[0] & 0x03, 0x02, "{r}");
        }
    }

    #[test]
    fn route_text_names_the_route() {
        let r = Route::via(
            "10.244.3.7/24".parse().unwrap(),
            "172.16.0.7".parse().unwrap(),
            2,
        );
        assert_eq!(r.to_string(), "10.244.3.0/24 via 172.16.0.7 dev #2");
        assert_eq!(
            Route::blackhole("10.244.3.0/24".parse().unwrap()).to_string(),
            "blackhole 10.244.3.0/24"
        );
    }
}
