//! host-gw: a route per peer lease, `subnet via PublicIP dev <external interface>`, for
//! nodes on one L2 segment. Leases of other backend types are skipped, as upstream does.

use super::kernel_sync::{self, Desired};
use super::{base_attrs, Backend, BackendError, Status, Trigger};
use crate::iface::ExternalInterface;
use crate::kernel::{Kernel, Route};
use async_trait::async_trait;
use flannel_core::admission::PeerView;
use flannel_core::backend_config::BackendKind;
use flannel_core::lease::{Lease, LeaseAttrs};
use flannel_core::ValidatedNetConfig;
use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// How often the routes are checked (upstream's routeCheck period).
pub const ROUTE_CHECK: Duration = Duration::from_secs(10);

pub struct HostGwBackend {
    ext: ExternalInterface,
    networks: Vec<IpNet>,
    kernel: Arc<dyn Kernel>,
}

/// The routes host-gw wants for `peers`.
pub fn desired<'a>(
    ext: &ExternalInterface,
    networks: &[IpNet],
    peers: impl IntoIterator<Item = &'a Lease>,
) -> Desired {
    let v4 = networks.iter().any(|n| n.addr().is_ipv4());
    let v6 = networks.iter().any(|n| n.addr().is_ipv6());
    let mut routes = Vec::new();
    for p in peers
        .into_iter()
        .filter(|p| p.attrs.backend_type == BackendKind::HostGw.name())
    {
        if let (true, Some(s)) = (v4, p.subnet()) {
            routes.push(Route::via(
                IpNet::V4(s),
                IpAddr::V4(p.attrs.public_ip),
                ext.index,
            ));
        }
        if let (true, Some(s), Some(gw)) = (v6, p.ipv6_subnet(), p.attrs.public_ipv6) {
            routes.push(Route::via(IpNet::V6(s), IpAddr::V6(gw), ext.index));
        }
    }
    Desired {
        routes,
        ..Desired::default()
    }
}

/// The pool networks a route backend works within.
pub fn networks(config: &ValidatedNetConfig) -> Vec<IpNet> {
    config
        .network()
        .map(IpNet::V4)
        .into_iter()
        .chain(config.ipv6_network().map(IpNet::V6))
        .collect()
}

impl HostGwBackend {
    pub fn new(
        ext: ExternalInterface,
        config: &ValidatedNetConfig,
        kernel: Arc<dyn Kernel>,
    ) -> Result<HostGwBackend, BackendError> {
        if ext.ext_addr.is_some() && ext.ext_addr != ext.iface_addr {
            return Err(BackendError::Unsupported(
                "your PublicIP differs from interface IP, meaning that probably you're on a NAT, which is not supported by host-gw backend".into(),
            ));
        }
        Ok(HostGwBackend {
            networks: networks(config),
            ext,
            kernel,
        })
    }
}

#[async_trait]
impl Backend for HostGwBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::HostGw
    }
    async fn lease_attrs(&self) -> Result<LeaseAttrs, BackendError> {
        base_attrs(BackendKind::HostGw, &self.ext)
    }
    async fn reconcile(
        &self,
        own: &Lease,
        peers: &PeerView<'_>,
        _trigger: Trigger<'_>,
    ) -> Result<Status, BackendError> {
        let want = desired(&self.ext, &self.networks, peers.iter());
        kernel_sync::reconcile_for(self.kernel.as_ref(), &self.networks, own, &want).await?;
        Ok(Status::done())
    }
    fn repairs_on_kernel_changes(&self) -> bool {
        true
    }
    fn mtu(&self) -> u32 {
        self.ext.mtu
    }
    fn resync_period(&self) -> Option<Duration> {
        Some(ROUTE_CHECK)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::backend::testing::Peers;
    use crate::kernel::fake::FakeKernel;
    use crate::kernel::ListedRoute;
    use flannel_core::lease::{Expiry, SubnetKey};
    use std::net::Ipv4Addr;

    pub(crate) fn lease(subnet: &str, ip: &str, kind: &str) -> Lease {
        let mut attrs = LeaseAttrs::new(ip.parse().unwrap());
        attrs.backend_type = kind.into();
        Lease {
            key: SubnetKey::v4(subnet.parse().unwrap()),
            attrs,
            expiry: Expiry::Never,
        }
    }

    fn config() -> ValidatedNetConfig {
        flannel_core::config::parse_and_check(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}"#,
        )
        .unwrap()
    }

    fn backend(kernel: &Arc<FakeKernel>) -> HostGwBackend {
        let ext = ExternalInterface::ipv4("eth0", 2, 1500, Ipv4Addr::new(172, 16, 0, 1));
        HostGwBackend::new(ext, &config(), kernel.clone()).unwrap()
    }

    fn r(dst: &str, gw: &str) -> Route {
        Route::via(dst.parse().unwrap(), gw.parse().unwrap(), 2)
    }

    #[tokio::test]
    async fn routes_follow_leases_and_are_repaired() {
        let kernel = Arc::new(FakeKernel::with_link("eth0", 2, 1500));
        let b = backend(&kernel);
        let own = lease("10.5.1.0/24", "172.16.0.1", "host-gw");
        let p2 = lease("10.5.2.0/24", "172.16.0.2", "host-gw");
        let p3 = lease("10.5.3.0/24", "172.16.0.3", "host-gw");
        let other = lease("10.5.4.0/24", "172.16.0.4", "vxlan");
        let mut peers = Peers::new(&config(), &own);
        peers.set(&[own.clone(), p2.clone(), other.clone()]);
        peers.reconcile(&b, &own, Trigger::Start).await;
        assert_eq!(kernel.routes(), vec![r("10.5.2.0/24", "172.16.0.2")]);

        peers.add(&p3);
        peers.remove(&p2);
        peers
            .reconcile(&b, &own, Trigger::Resync { fresh: true })
            .await;
        assert_eq!(kernel.routes(), vec![r("10.5.3.0/24", "172.16.0.3")]);

        // Deleted behind our back: the resync puts it back; in sync, nothing changes.
        kernel.s().routes.clear();
        peers
            .reconcile(&b, &own, Trigger::Resync { fresh: true })
            .await;
        assert_eq!(kernel.routes(), vec![r("10.5.3.0/24", "172.16.0.3")]);
        let before = kernel.s().mutations;
        peers
            .reconcile(&b, &own, Trigger::Resync { fresh: true })
            .await;
        assert_eq!(
            kernel.s().mutations,
            before,
            "a steady state changes nothing"
        );

        // A route an operator added is left alone; a stale one of ours goes.
        let foreign = r("10.5.9.0/24", "172.16.0.9");
        kernel.s().routes.insert(
            foreign.dst,
            ListedRoute {
                route: foreign.clone(),
                ours: false,
            },
        );
        kernel.s().routes.insert(
            "10.5.8.0/24".parse().unwrap(),
            ListedRoute {
                route: r("10.5.8.0/24", "172.16.0.8"),
                ours: true,
            },
        );
        peers
            .reconcile(&b, &own, Trigger::Resync { fresh: true })
            .await;
        assert_eq!(
            kernel.routes(),
            vec![r("10.5.3.0/24", "172.16.0.3"), foreign]
        );
    }

    #[test]
    fn nat_is_upstreams_error() {
        let mut ext = ExternalInterface::ipv4("eth0", 2, 1500, Ipv4Addr::new(172, 16, 0, 1));
        ext.ext_addr = Some(Ipv4Addr::new(1, 2, 3, 4));
        let kernel = Arc::new(FakeKernel::default());
        let err = HostGwBackend::new(ext, &config(), kernel).err().unwrap();
        assert_eq!(
            err.to_string(),
            "your PublicIP differs from interface IP, meaning that probably you're on a NAT, which is not supported by host-gw backend"
        );
    }
}
