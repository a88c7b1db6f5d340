//! An in-memory kernel for the backends' unit tests: routes keyed by destination (as the
//! kernel's replace is), links, addresses, neighbours and FDB entries, with a count of
//! mutations so tests can assert that a steady state changes nothing.

use super::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

#[derive(Default)]
pub struct State {
    pub routes: BTreeMap<IpNet, ListedRoute>,
    pub links: BTreeMap<String, Link>,
    pub addrs: BTreeMap<u32, BTreeSet<IpNet>>,
    pub neigh: BTreeMap<u32, BTreeSet<Neighbour>>,
    pub fdb: BTreeMap<u32, BTreeSet<FdbEntry>>,
    pub on_link: BTreeSet<IpAddr>,
    pub mutations: usize,
    /// Moments when a route through a vxlan device had no neighbour entry for its gateway
    /// or no FDB entry for that MAC: a packet routed then is lost (checked after every
    /// mutation).
    pub path_gaps: Vec<String>,
    next_index: u32,
}

impl State {
    fn check_paths(&mut self, after: &str) {
        let vxlan: BTreeSet<u32> = self
            .links
            .values()
            .filter(|l| l.vxlan.is_some())
            .map(|l| l.index)
            .collect();
        let gaps: Vec<String> = self
            .routes
            .values()
            .map(|r| &r.route)
            .filter(|r| vxlan.contains(&r.dev))
            .filter_map(|r| {
                let gw = r.via?;
                let neigh = self
                    .neigh
                    .get(&r.dev)
                    .and_then(|n| n.iter().find(|n| n.ip == gw));
                let fdb = neigh.is_some_and(|n| {
                    self.fdb
                        .get(&r.dev)
                        .is_some_and(|f| f.iter().any(|e| e.mac == n.mac))
                });
                (!fdb).then(|| format!("{} without its L2 entries after {after}", r.dst))
            })
            .collect();
        self.path_gaps.extend(gaps);
    }
}

#[derive(Default)]
pub struct FakeKernel {
    pub state: Mutex<State>,
}

impl FakeKernel {
    pub fn with_link(name: &str, index: u32, mtu: u32) -> FakeKernel {
        let k = FakeKernel::default();
        {
            let mut s = k.state.lock().unwrap();
            s.next_index = index + 1;
            s.links.insert(
                name.into(),
                Link {
                    index,
                    name: name.into(),
                    mtu,
                    mac: None,
                    up: true,
                    vxlan: None,
                },
            );
        }
        k
    }

    pub fn s(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn routes(&self) -> Vec<Route> {
        self.s().routes.values().map(|r| r.route.clone()).collect()
    }
}

#[async_trait]
impl Routes for FakeKernel {
    async fn routes(&self, family: Family) -> Result<Vec<ListedRoute>, KernelError> {
        Ok(self
            .s()
            .routes
            .values()
            .filter(|r| family_of(&r.route.dst) == family)
            .cloned()
            .collect())
    }
    async fn replace_route(&self, route: &Route) -> Result<(), KernelError> {
        let mut s = self.s();
        s.mutations += 1;
        s.routes.insert(
            route.dst,
            ListedRoute {
                route: route.clone(),
                ours: true,
            },
        );
        s.check_paths("route replace");
        Ok(())
    }
    async fn delete_route(&self, route: &Route) -> Result<(), KernelError> {
        let mut s = self.s();
        s.mutations += 1;
        // As the kernel: only a route of ours goes.
        if s.routes.get(&route.dst).is_some_and(|r| r.ours) {
            s.routes.remove(&route.dst);
        }
        s.check_paths("route delete");
        Ok(())
    }
    async fn is_on_link(&self, ip: IpAddr) -> Result<bool, KernelError> {
        Ok(self.s().on_link.contains(&ip))
    }
}

#[async_trait]
impl Links for FakeKernel {
    async fn link_by_name(&self, name: &str) -> Result<Option<Link>, KernelError> {
        Ok(self.s().links.get(name).cloned())
    }
    async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<Link, KernelError> {
        let mut s = self.s();
        s.mutations += 1;
        s.next_index += 1;
        let link = Link {
            index: s.next_index,
            name: spec.name.clone(),
            mtu: spec.mtu,
            mac: Some(spec.mac),
            up: true,
            vxlan: Some(VxlanAttrs {
                vni: spec.vni,
                port: spec.port,
                local: Some(spec.local),
                underlay: Some(spec.underlay),
                learning: spec.learning,
                gbp: spec.gbp,
            }),
        };
        s.links.insert(spec.name.clone(), link.clone());
        Ok(link)
    }
    /// As this machine kind's kernel: no WireGuard link type.
    async fn create_wireguard(&self, name: &str, _mtu: u32) -> Result<Link, KernelError> {
        Err(KernelError::new(
            format!("create wireguard device {name}"),
            std::io::Error::from_raw_os_error(95),
        ))
    }
    async fn delete_link(&self, link: &Link) -> Result<(), KernelError> {
        let mut s = self.s();
        s.mutations += 1;
        s.links.remove(&link.name);
        // As the kernel does: a device takes its routes, neighbours and FDB with it.
        s.routes.retain(|_, r| r.route.dev != link.index);
        s.neigh.remove(&link.index);
        s.fdb.remove(&link.index);
        s.addrs.remove(&link.index);
        Ok(())
    }
    async fn set_up(&self, link: &Link, mtu: u32) -> Result<(), KernelError> {
        let mut s = self.s();
        s.mutations += 1;
        if let Some(l) = s.links.get_mut(&link.name) {
            l.up = true;
            l.mtu = mtu;
        }
        Ok(())
    }
    async fn addresses(&self, link: &Link) -> Result<Vec<IpNet>, KernelError> {
        Ok(self
            .s()
            .addrs
            .get(&link.index)
            .map(|a| a.iter().copied().collect())
            .unwrap_or_default())
    }
    async fn add_address(&self, link: &Link, addr: IpNet) -> Result<(), KernelError> {
        let mut s = self.s();
        s.mutations += 1;
        s.addrs.entry(link.index).or_default().insert(addr);
        Ok(())
    }
    async fn delete_address(&self, link: &Link, addr: IpNet) -> Result<(), KernelError> {
        let mut s = self.s();
        s.mutations += 1;
        s.addrs.entry(link.index).or_default().remove(&addr);
        Ok(())
    }
}

#[async_trait]
impl Neighbours for FakeKernel {
    async fn neighbours(&self, dev: u32) -> Result<Vec<Neighbour>, KernelError> {
        Ok(self
            .s()
            .neigh
            .get(&dev)
            .map(|a| a.iter().copied().collect())
            .unwrap_or_default())
    }
    async fn replace_neighbour(&self, dev: u32, n: &Neighbour) -> Result<(), KernelError> {
        let mut s = self.s();
        s.mutations += 1;
        let set = s.neigh.entry(dev).or_default();
        set.retain(|x| x.ip != n.ip);
        set.insert(*n);
        s.check_paths("neighbour replace");
        Ok(())
    }
    async fn delete_neighbour(&self, dev: u32, n: &Neighbour) -> Result<(), KernelError> {
        let mut s = self.s();
        s.mutations += 1;
        s.neigh.entry(dev).or_default().retain(|x| x.ip != n.ip);
        s.check_paths("neighbour delete");
        Ok(())
    }
    async fn fdb(&self, dev: u32) -> Result<Vec<FdbEntry>, KernelError> {
        Ok(self
            .s()
            .fdb
            .get(&dev)
            .map(|a| a.iter().copied().collect())
            .unwrap_or_default())
    }
    async fn replace_fdb(&self, dev: u32, e: &FdbEntry) -> Result<(), KernelError> {
        let mut s = self.s();
        s.mutations += 1;
        let set = s.fdb.entry(dev).or_default();
        set.retain(|x| x.mac != e.mac);
        set.insert(*e);
        s.check_paths("fdb replace");
        Ok(())
    }
    async fn delete_fdb(&self, dev: u32, e: &FdbEntry) -> Result<(), KernelError> {
        let mut s = self.s();
        s.mutations += 1;
        s.fdb.entry(dev).or_default().retain(|x| x != e);
        s.check_paths("fdb delete");
        Ok(())
    }
}
