//! The data plane over rtnetlink, in the network namespace the process runs in. Tested for
//! real in network namespaces (tests/dataplane.rs); the backends are tested against the fake.

use super::{
    Family, FdbEntry, KernelError, Link, Links, ListedRoute, Mac, Neighbour, Neighbours, Route,
    Routes, VxlanAttrs, VxlanSpec, RTPROT_FLANNEL,
};
use async_trait::async_trait;
use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::AddressFamily;
use nix::errno::Errno;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, LinkWireguard, RouteMessageBuilder};
use std::io;
use std::net::IpAddr;

/// The kernel's vxlan port when none is given (Linux's historical default, which upstream
/// flannel relies on).
pub const VXLAN_DEFAULT_PORT: u16 = 8472;

/// An rtnetlink connection (its socket is bound to the namespace current at `connect`).
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Open the netlink socket; the connection runs on the current tokio runtime.
    pub fn connect() -> Result<Netlink, KernelError> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| KernelError::new("opening a netlink socket", e))?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }
}

fn io_error(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

fn errno(e: &rtnetlink::Error) -> Option<Errno> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| Errno::from_raw(-c.get())),
        _ => None,
    }
}

fn fail(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> KernelError {
    let op = op.into();
    move |e| KernelError::new(op, io_error(e))
}

/// Absent objects are fine when deleting.
fn absent_ok(r: Result<(), rtnetlink::Error>, op: String) -> Result<(), KernelError> {
    match r {
        Err(e)
            if matches!(
                errno(&e),
                Some(Errno::ENOENT | Errno::ESRCH | Errno::ENODEV | Errno::EADDRNOTAVAIL)
            ) =>
        {
            Ok(())
        }
        other => other.map_err(fail(op)),
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The builder's own error type is not exported; any Display will do.
fn invalid<E: std::fmt::Display>(what: String) -> impl FnOnce(E) -> KernelError {
    move |e| {
        KernelError::new(
            what,
            io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
        )
    }
}

/// The message for `route`; the protocol is always ours (a delete matches on it, so it can
/// only ever remove a route we made).
fn route_message(route: &Route) -> Result<RouteMessage, KernelError> {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(route.dst.network(), route.dst.prefix_len())
        .map_err(invalid(format!("route {route}")))?
        .table_id(RouteHeader::RT_TABLE_MAIN.into())
        .protocol(RouteProtocol::from(RTPROT_FLANNEL));
    if route.metric != 0 {
        b = b.priority(route.metric);
    }
    if route.blackhole {
        b = b.kind(RouteType::BlackHole);
    } else {
        b = b.kind(RouteType::Unicast);
        if let Some(gw) = route.via {
            b = b.gateway(gw).map_err(invalid(format!("route {route}")))?;
        } else {
            b = b.scope(RouteScope::Link);
        }
        if route.dev != 0 {
            b = b.output_interface(route.dev);
        }
        if route.onlink {
            b = b.onlink();
        }
    }
    Ok(b.build())
}

/// The message that deletes our route to `route.dst`: destination, metric, our protocol and
/// the main table; any scope, type and next hop (the kernel matches only what is given), so a
/// route listed with no gateway (`via 0.0.0.0` as written) is found too.
fn delete_message(route: &Route) -> Result<RouteMessage, KernelError> {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(route.dst.network(), route.dst.prefix_len())
        .map_err(invalid(format!("route {route}")))?
        .table_id(RouteHeader::RT_TABLE_MAIN.into())
        .protocol(RouteProtocol::from(RTPROT_FLANNEL))
        .scope(RouteScope::NoWhere)
        .kind(RouteType::Unspec);
    if route.metric != 0 {
        b = b.priority(route.metric);
    }
    Ok(b.build())
}

pub(super) fn listed(msg: &RouteMessage) -> Option<ListedRoute> {
    let h = &msg.header;
    let table = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(h.table.into());
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let blackhole = match h.kind {
        RouteType::Unicast => false,
        RouteType::BlackHole => true,
        _ => return None,
    };
    let mut dst = None;
    let mut via = None;
    let mut dev = 0;
    let mut metric = 0;
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = ip_of(d),
            RouteAttribute::Gateway(g) => via = ip_of(g),
            RouteAttribute::Oif(i) => dev = *i,
            RouteAttribute::Priority(p) => metric = *p,
            _ => {}
        }
    }
    let dst = match dst {
        Some(ip) => IpNet::new(ip, h.destination_prefix_length).ok()?,
        // The default route carries no destination attribute.
        None if h.address_family == AddressFamily::Inet => {
            IpNet::new(IpAddr::from([0u8; 4]), 0).ok()?
        }
        None => IpNet::new(IpAddr::from([0u16; 8]), 0).ok()?,
    };
    Some(ListedRoute {
        route: Route {
            dst,
            via,
            dev,
            onlink: h.flags.contains(RouteFlags::Onlink),
            blackhole,
            metric,
        },
        ours: u8::from(h.protocol) == RTPROT_FLANNEL,
    })
}

fn link_of(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mtu: 0,
        mac: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        vxlan: None,
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Address(b) => link.mac = Mac::from_slice(b),
            LinkAttribute::LinkInfo(infos) => {
                let is_vxlan = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)));
                let data = infos.iter().find_map(|i| match i {
                    LinkInfo::Data(InfoData::Vxlan(d)) => Some(d),
                    _ => None,
                });
                if let (true, Some(data)) = (is_vxlan, data) {
                    let mut v = VxlanAttrs {
                        vni: 0,
                        port: VXLAN_DEFAULT_PORT,
                        local: None,
                        underlay: None,
                        learning: false,
                        gbp: false,
                    };
                    for d in data {
                        match d {
                            InfoVxlan::Id(id) => v.vni = *id,
                            InfoVxlan::Port(p) => v.port = *p,
                            InfoVxlan::Local(a) => v.local = Some(IpAddr::V4(*a)),
                            InfoVxlan::Local6(a) => v.local = Some(IpAddr::V6(*a)),
                            InfoVxlan::Link(i) => v.underlay = Some(*i),
                            InfoVxlan::Learning(l) => v.learning = *l,
                            InfoVxlan::Gbp => v.gbp = true,
                            _ => {}
                        }
                    }
                    link.vxlan = Some(v);
                }
            }
            _ => {}
        }
    }
    link
}

fn neighbour_parts(msg: &NeighbourMessage) -> (Option<IpAddr>, Option<Mac>) {
    let mut ip = None;
    let mut mac = None;
    for a in &msg.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                ip = Some(IpAddr::V4(*v4))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                ip = Some(IpAddr::V6(*v6))
            }
            // FDB entries (family AF_BRIDGE) carry their remote address as raw bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                ip = match b.len() {
                    4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                    _ => None,
                }
            }
            NeighbourAttribute::LinkLayerAddress(b) => mac = Mac::from_slice(b),
            _ => {}
        }
    }
    (ip, mac)
}

impl Netlink {
    async fn dump_neighbours(
        &self,
        dev: u32,
        family: AddressFamily,
    ) -> Result<Vec<NeighbourMessage>, KernelError> {
        let mut req = self.handle.neighbours().get();
        req = req.set_address_family(family);
        req.message_mut().header.ifindex = dev;
        let msgs: Vec<NeighbourMessage> = req
            .execute()
            .try_collect()
            .await
            .map_err(fail(format!("list neighbours of link #{dev}")))?;
        // Older kernels ignore the ifindex filter.
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.ifindex == dev)
            .collect())
    }

    /// A message naming the entry of `dst` on `dev` (what a delete matches on).
    fn neighbour_message(dev: u32, family: AddressFamily, dst: IpAddr) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = family;
        m.header.ifindex = dev;
        m.attributes
            .push(NeighbourAttribute::Destination(match dst {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }));
        m
    }
}

#[async_trait]
impl Routes for Netlink {
    async fn routes(&self, family: Family) -> Result<Vec<ListedRoute>, KernelError> {
        let query = match family {
            Family::V4 => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            Family::V6 => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        };
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(fail(format!("list {family} routes")))?;
        Ok(msgs.iter().filter_map(listed).collect())
    }

    async fn replace_route(&self, route: &Route) -> Result<(), KernelError> {
        let msg = route_message(route)?;
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(fail(format!("replace route {route}")))
    }

    async fn delete_route(&self, route: &Route) -> Result<(), KernelError> {
        let msg = delete_message(route)?;
        absent_ok(
            self.handle.route().del(msg).execute().await,
            format!("delete route {route}"),
        )
    }

    async fn is_on_link(&self, ip: IpAddr) -> Result<bool, KernelError> {
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        let query = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(ip, bits)
            .map_err(invalid(format!("route to {ip}")))?
            .build();
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(fail(format!("look up the route to {ip}")))?;
        Ok(msgs.first().is_some_and(|m| {
            !m.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Gateway(_)))
        }))
    }
}

#[async_trait]
impl Links for Netlink {
    async fn link_by_name(&self, name: &str) -> Result<Option<Link>, KernelError> {
        let mut stream = self.handle.link().get().match_name(name).execute();
        match stream.try_next().await {
            Ok(m) => Ok(m.as_ref().map(link_of)),
            Err(e) if errno(&e) == Some(Errno::ENODEV) => Ok(None),
            Err(e) => Err(fail(format!("look up link {name}"))(e)),
        }
    }

    async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<Link, KernelError> {
        let mut b = LinkVxlan::new(&spec.name, spec.vni)
            .dev(spec.underlay)
            .port(spec.port)
            .learning(spec.learning)
            .mtu(spec.mtu)
            .address(spec.mac.0.to_vec())
            .up();
        b = match spec.local {
            IpAddr::V4(a) => b.local(a),
            IpAddr::V6(a) => b.local6(a),
        };
        if spec.gbp {
            b = b.gbp();
        }
        let op = format!(
            "create vxlan device {} (VNI {}, port {}, local {})",
            spec.name, spec.vni, spec.port, spec.local
        );
        self.handle
            .link()
            .add(b.build())
            .execute()
            .await
            .map_err(fail(op.clone()))?;
        self.link_by_name(&spec.name).await?.ok_or_else(|| {
            KernelError::new(op, io::Error::other("the device vanished after creation"))
        })
    }

    async fn create_wireguard(&self, name: &str, mtu: u32) -> Result<Link, KernelError> {
        let op = format!("create wireguard device {name}");
        self.handle
            .link()
            .add(LinkWireguard::new(name).mtu(mtu).build())
            .execute()
            .await
            .map_err(fail(op.clone()))?;
        self.link_by_name(name).await?.ok_or_else(|| {
            KernelError::new(op, io::Error::other("the device vanished after creation"))
        })
    }

    async fn delete_link(&self, link: &Link) -> Result<(), KernelError> {
        absent_ok(
            self.handle.link().del(link.index).execute().await,
            format!("delete link {}", link.name),
        )
    }

    async fn set_up(&self, link: &Link, mtu: u32) -> Result<(), KernelError> {
        let msg = LinkUnspec::new_with_index(link.index).mtu(mtu).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(fail(format!("set link {} up with MTU {mtu}", link.name)))
    }

    async fn addresses(&self, link: &Link) -> Result<Vec<IpNet>, KernelError> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute()
            .try_collect()
            .await
            .map_err(fail(format!("list addresses of {}", link.name)))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == link.index)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => {
                        IpNet::new(*ip, m.header.prefix_len).ok()
                    }
                    _ => None,
                })
            })
            .collect())
    }

    async fn add_address(&self, link: &Link, addr: IpNet) -> Result<(), KernelError> {
        self.handle
            .address()
            .add(link.index, addr.addr(), addr.prefix_len())
            .replace()
            .execute()
            .await
            .map_err(fail(format!("add address {addr} to {}", link.name)))
    }

    async fn delete_address(&self, link: &Link, addr: IpNet) -> Result<(), KernelError> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .set_address_filter(addr.addr())
            .set_prefix_length_filter(addr.prefix_len())
            .execute()
            .try_collect()
            .await
            .map_err(fail(format!("look up address {addr} on {}", link.name)))?;
        for m in msgs {
            absent_ok(
                self.handle.address().del(m).execute().await,
                format!("delete address {addr} from {}", link.name),
            )?;
        }
        Ok(())
    }
}

#[async_trait]
impl Neighbours for Netlink {
    async fn neighbours(&self, dev: u32) -> Result<Vec<Neighbour>, KernelError> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            for m in self.dump_neighbours(dev, family).await? {
                if m.header.state != NeighbourState::Permanent {
                    continue;
                }
                if let (Some(ip), Some(mac)) = neighbour_parts(&m) {
                    out.push(Neighbour { ip, mac });
                }
            }
        }
        Ok(out)
    }

    async fn replace_neighbour(&self, dev: u32, n: &Neighbour) -> Result<(), KernelError> {
        self.handle
            .neighbours()
            .add(dev, n.ip)
            .link_layer_address(&n.mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(fail(format!(
                "set neighbour {} lladdr {} on link #{dev}",
                n.ip, n.mac
            )))
    }

    async fn delete_neighbour(&self, dev: u32, n: &Neighbour) -> Result<(), KernelError> {
        let family = if n.ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let m = Self::neighbour_message(dev, family, n.ip);
        absent_ok(
            self.handle.neighbours().del(m).execute().await,
            format!("delete neighbour {} on link #{dev}", n.ip),
        )
    }

    async fn fdb(&self, dev: u32) -> Result<Vec<FdbEntry>, KernelError> {
        Ok(self
            .dump_neighbours(dev, AddressFamily::Bridge)
            .await?
            .iter()
            // Learned entries age out on their own; only configured ones are ours.
            .filter(|m| m.header.state == NeighbourState::Permanent)
            .filter_map(|m| match neighbour_parts(m) {
                (Some(dst), Some(mac)) => Some(FdbEntry { mac, dst }),
                _ => None,
            })
            .collect())
    }

    async fn replace_fdb(&self, dev: u32, e: &FdbEntry) -> Result<(), KernelError> {
        self.handle
            .neighbours()
            .add_bridge(dev, &e.mac.0)
            .destination(e.dst)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(fail(format!(
                "set fdb {} dst {} on link #{dev}",
                e.mac, e.dst
            )))
    }

    async fn delete_fdb(&self, dev: u32, e: &FdbEntry) -> Result<(), KernelError> {
        let mut m = Self::neighbour_message(dev, AddressFamily::Bridge, e.dst);
        m.header.flags = NeighbourFlags::Own;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(e.mac.0.to_vec()));
        absent_ok(
            self.handle.neighbours().del(m).execute().await,
            format!("delete fdb {} dst {} on link #{dev}", e.mac, e.dst),
        )
    }
}
