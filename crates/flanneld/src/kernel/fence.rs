//! The write side's last line: whatever a caller passes, a route is added or replaced only
//! to a destination inside (or equal to) its family's pod Network, and a neighbour entry only
//! for an address inside it. Admission refuses leases that would need anything else; this
//! keeps a bug in a planner from ever routing the node's default, loopback or a user's
//! network. Deletions follow ownership (our protocol), not the fence, so strays an earlier
//! version left outside the Network can still be collected.

use super::{
    family_of, within, Family, FdbEntry, KernelError, Link, Links, ListedRoute, Neighbour,
    Neighbours, Route, Routes, VxlanSpec,
};
use async_trait::async_trait;
use ipnet::IpNet;
use std::net::IpAddr;

/// A kernel whose route and neighbour writes are fenced to the pod networks.
pub struct Fenced<K> {
    inner: K,
    networks: Vec<IpNet>,
}

impl<K> Fenced<K> {
    pub fn new(inner: K, networks: Vec<IpNet>) -> Fenced<K> {
        Fenced { inner, networks }
    }

    fn check(&self, op: &str, what: IpNet) -> Result<(), KernelError> {
        if self.networks.iter().any(|n| within(n, &what)) {
            return Ok(());
        }
        let allowed: Vec<String> = self
            .networks
            .iter()
            .filter(|n| family_of(n) == family_of(&what))
            .map(ToString::to_string)
            .collect();
        let reason = match allowed.as_slice() {
            [] => format!("no {} Network is configured", family_of(&what)),
            nets => format!("outside the Network {}", nets.join(", ")),
        };
        Err(KernelError::new(
            format!("{op}: refused, {reason}"),
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "outside the pod network",
            ),
        ))
    }
}

#[async_trait]
impl<K: Routes> Routes for Fenced<K> {
    async fn routes(&self, family: Family) -> Result<Vec<ListedRoute>, KernelError> {
        self.inner.routes(family).await
    }
    async fn replace_route(&self, route: &Route) -> Result<(), KernelError> {
        self.check(&format!("replace route {route}"), route.dst)?;
        self.inner.replace_route(route).await
    }
    async fn delete_route(&self, route: &Route) -> Result<(), KernelError> {
        self.inner.delete_route(route).await
    }
    async fn is_on_link(&self, ip: IpAddr) -> Result<bool, KernelError> {
        self.inner.is_on_link(ip).await
    }
}

#[async_trait]
impl<K: Links> Links for Fenced<K> {
    async fn link_by_name(&self, name: &str) -> Result<Option<Link>, KernelError> {
        self.inner.link_by_name(name).await
    }
    async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<Link, KernelError> {
        self.inner.create_vxlan(spec).await
    }
    async fn create_wireguard(&self, name: &str, mtu: u32) -> Result<Link, KernelError> {
        self.inner.create_wireguard(name, mtu).await
    }
    async fn delete_link(&self, link: &Link) -> Result<(), KernelError> {
        self.inner.delete_link(link).await
    }
    async fn set_up(&self, link: &Link, mtu: u32) -> Result<(), KernelError> {
        self.inner.set_up(link, mtu).await
    }
    async fn addresses(&self, link: &Link) -> Result<Vec<IpNet>, KernelError> {
        self.inner.addresses(link).await
    }
    async fn add_address(&self, link: &Link, addr: IpNet) -> Result<(), KernelError> {
        self.check(&format!("add address {addr} to {}", link.name), addr)?;
        self.inner.add_address(link, addr).await
    }
    async fn delete_address(&self, link: &Link, addr: IpNet) -> Result<(), KernelError> {
        self.inner.delete_address(link, addr).await
    }
}

#[async_trait]
impl<K: Neighbours> Neighbours for Fenced<K> {
    async fn neighbours(&self, dev: u32) -> Result<Vec<Neighbour>, KernelError> {
        self.inner.neighbours(dev).await
    }
    async fn replace_neighbour(&self, dev: u32, n: &Neighbour) -> Result<(), KernelError> {
        let host = IpNet::from(n.ip);
        self.check(
            &format!("neighbour {} lladdr {} dev #{dev}", n.ip, n.mac),
            host,
        )?;
        if !n.mac.is_unicast() {
            return Err(KernelError::new(
                format!(
                    "neighbour {} lladdr {} dev #{dev}: refused, not a unicast MAC",
                    n.ip, n.mac
                ),
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a unicast MAC"),
            ));
        }
        self.inner.replace_neighbour(dev, n).await
    }
    async fn delete_neighbour(&self, dev: u32, n: &Neighbour) -> Result<(), KernelError> {
        self.inner.delete_neighbour(dev, n).await
    }
    async fn fdb(&self, dev: u32) -> Result<Vec<FdbEntry>, KernelError> {
        self.inner.fdb(dev).await
    }
    async fn replace_fdb(&self, dev: u32, e: &FdbEntry) -> Result<(), KernelError> {
        if !e.mac.is_unicast() {
            return Err(KernelError::new(
                format!(
                    "fdb {} dst {} dev #{dev}: refused, not a unicast MAC",
                    e.mac, e.dst
                ),
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a unicast MAC"),
            ));
        }
        self.inner.replace_fdb(dev, e).await
    }
    async fn delete_fdb(&self, dev: u32, e: &FdbEntry) -> Result<(), KernelError> {
        self.inner.delete_fdb(dev, e).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::FakeKernel;
    use crate::kernel::Mac;

    fn fenced() -> Fenced<FakeKernel> {
        Fenced::new(
            FakeKernel::with_link("eth0", 2, 1500),
            vec!["10.244.0.0/16".parse().unwrap()],
        )
    }

    fn via(dst: &str) -> Route {
        Route::via(dst.parse().unwrap(), "172.16.0.2".parse().unwrap(), 2)
    }

    #[tokio::test]
    async fn routes_outside_the_network_are_refused_whatever_the_caller_passes() {
        let k = fenced();
        for dst in [
            "0.0.0.0/1",
            "128.0.0.0/1",
            "127.0.0.0/8",
            "192.168.5.0/24",
            "10.0.0.0/8",
            "0.0.0.0/0",
            "fd00::/64",
        ] {
            let e = k.replace_route(&via(dst)).await.unwrap_err();
            assert!(e.op.contains("refused"), "{dst}: {}", e.op);
        }
        assert_eq!(
            k.replace_route(&via("192.168.5.0/24")).await.unwrap_err().op,
            "replace route 192.168.5.0/24 via 172.16.0.2 dev #2: refused, outside the Network 10.244.0.0/16"
        );
        assert!(k.inner.routes().is_empty(), "nothing reached the kernel");
        // Inside, or the Network itself: written.
        k.replace_route(&via("10.244.3.0/24")).await.unwrap();
        k.replace_route(&Route::blackhole("10.244.0.0/16".parse().unwrap()))
            .await
            .unwrap();
        assert_eq!(k.inner.routes().len(), 2);
    }

    #[tokio::test]
    async fn neighbours_and_fdb_entries_need_a_pod_address_and_a_unicast_mac() {
        let k = fenced();
        let mac: Mac = "02:42:0a:f4:03:00".parse().unwrap();
        let n = |ip: &str, mac| Neighbour {
            ip: ip.parse().unwrap(),
            mac,
        };
        assert!(k.replace_neighbour(9, &n("172.16.0.1", mac)).await.is_err());
        assert!(k
            .replace_neighbour(9, &n("10.244.3.0", "ff:ff:ff:ff:ff:ff".parse().unwrap()))
            .await
            .is_err());
        k.replace_neighbour(9, &n("10.244.3.0", mac)).await.unwrap();
        let bad = FdbEntry {
            mac: "00:00:00:00:00:00".parse().unwrap(),
            dst: "172.16.0.3".parse().unwrap(),
        };
        assert!(k.replace_fdb(9, &bad).await.is_err());
        assert_eq!(k.inner.s().mutations, 1);
    }

    #[tokio::test]
    async fn deletions_follow_ownership_not_the_fence() {
        let k = fenced();
        let stray = via("0.0.0.0/1");
        k.inner.s().routes.insert(
            stray.dst,
            ListedRoute {
                route: stray.clone(),
                ours: true,
            },
        );
        k.delete_route(&stray).await.unwrap();
        assert!(k.inner.routes().is_empty());
    }
}
