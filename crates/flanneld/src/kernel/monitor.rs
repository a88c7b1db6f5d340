//! Kernel change notifications, so that a route, neighbour or FDB entry, address or device of
//! ours that someone else removes (`ip route del`, an interface flap: taking a link down
//! flushes the routes through it without a notification per route) is put back within a
//! second instead of at the next resync. Which notifications count is a pure function
//! ([`touches_ours`]); the daemon debounces them and keeps the periodic resync as the net.

use super::{netlink::listed, within, KernelError};
use futures::{Stream, StreamExt};
use ipnet::IpNet;
use netlink_packet_route::link::LinkFlags;
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::net::IpAddr;
use std::pin::Pin;

/// Wakes once per notification that may concern our data plane; ends if the socket does.
pub type KernelChanges = Pin<Box<dyn Stream<Item = ()> + Send>>;

/// Whether a notification may mean part of our data plane is gone: a route inside the pod
/// networks deleted, a neighbour entry for an address inside them or a permanent FDB entry
/// deleted (the kernel's own expiring entries elsewhere do not count), an address or a link
/// deleted, or a link (back) up (its routes were flushed when it went down).
pub fn touches_ours(msg: &RouteNetlinkMessage, networks: &[IpNet]) -> bool {
    match msg {
        RouteNetlinkMessage::DelRoute(r) => {
            listed(r).is_some_and(|l| l.ours || networks.iter().any(|n| within(n, &l.route.dst)))
        }
        RouteNetlinkMessage::DelNeighbour(n) => {
            // An FDB entry is reported as it was (permanent); a neighbour entry as FAILED, so
            // it is matched by its address (ours are peers' gateways, inside the networks).
            (n.header.family == AddressFamily::Bridge
                && n.header.state == NeighbourState::Permanent)
                || n.attributes.iter().any(|a| match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                        inside(networks, IpAddr::V4(*ip))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                        inside(networks, IpAddr::V6(*ip))
                    }
                    _ => false,
                })
        }
        RouteNetlinkMessage::DelAddress(_) | RouteNetlinkMessage::DelLink(_) => true,
        RouteNetlinkMessage::NewLink(l) => {
            l.header.flags.contains(LinkFlags::Up | LinkFlags::LowerUp)
        }
        _ => false,
    }
}

fn inside(networks: &[IpNet], ip: IpAddr) -> bool {
    networks.iter().any(|n| n.contains(&ip))
}

/// Subscribe to the kernel's link, address, route and neighbour notifications (this network
/// namespace) and yield those [`touches_ours`] keeps.
pub fn watch(networks: Vec<IpNet>) -> Result<KernelChanges, KernelError> {
    use rtnetlink::MulticastGroup as G;
    let (conn, _handle, messages) = rtnetlink::new_multicast_connection(&[
        G::Link,
        G::Ipv4Ifaddr,
        G::Ipv6Ifaddr,
        G::Ipv4Route,
        G::Ipv6Route,
        G::Neigh,
    ])
    .map_err(|e| KernelError::new("subscribing to kernel notifications", e))?;
    tokio::spawn(conn);
    Ok(Box::pin(messages.filter_map(move |(m, _)| {
        let keep = match &m.payload {
            rtnetlink::packet_core::NetlinkPayload::InnerMessage(msg) => {
                touches_ours(msg, &networks)
            }
            _ => false,
        };
        std::future::ready(keep.then_some(()))
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::LinkMessage;
    use netlink_packet_route::neighbour::NeighbourMessage;
    use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
    use std::net::Ipv4Addr;

    fn route(dst: [u8; 4], len: u8, protocol: u8) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = len;
        m.header.table = 254;
        m.header.protocol = RouteProtocol::from(protocol);
        m.header.kind = netlink_packet_route::route::RouteType::Unicast;
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(
                Ipv4Addr::from(dst),
            )));
        m
    }

    #[test]
    fn only_removals_of_what_could_be_ours_count() {
        let nets = ["10.244.0.0/16".parse().unwrap()];
        let del = |r| RouteNetlinkMessage::DelRoute(r);
        assert!(touches_ours(&del(route([10, 244, 3, 0], 24, 4)), &nets));
        assert!(
            touches_ours(&del(route([192, 168, 9, 0], 24, 87)), &nets),
            "a stray of ours"
        );
        assert!(!touches_ours(&del(route([192, 168, 9, 0], 24, 4)), &nets));
        assert!(!touches_ours(
            &RouteNetlinkMessage::NewRoute(route([10, 244, 3, 0], 24, 87)),
            &nets
        ));

        let neigh = |family, state, ip: Option<[u8; 4]>| {
            let mut n = NeighbourMessage::default();
            n.header.family = family;
            n.header.state = state;
            if let Some(ip) = ip {
                n.attributes
                    .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                        Ipv4Addr::from(ip),
                    )));
            }
            RouteNetlinkMessage::DelNeighbour(n)
        };
        let (inet, bridge) = (AddressFamily::Inet, AddressFamily::Bridge);
        let failed = NeighbourState::Failed;
        assert!(touches_ours(
            &neigh(inet, failed, Some([10, 244, 3, 0])),
            &nets
        ));
        assert!(!touches_ours(
            &neigh(inet, NeighbourState::Stale, Some([172, 16, 0, 9])),
            &nets
        ));
        assert!(touches_ours(
            &neigh(bridge, NeighbourState::Permanent, None),
            &nets
        ));
        assert!(!touches_ours(
            &neigh(bridge, NeighbourState::Reachable, None),
            &nets
        ));

        let mut l = LinkMessage::default();
        assert!(touches_ours(
            &RouteNetlinkMessage::DelLink(l.clone()),
            &nets
        ));
        l.header.flags = LinkFlags::Up;
        assert!(
            !touches_ours(&RouteNetlinkMessage::NewLink(l.clone()), &nets),
            "not carrier yet"
        );
        l.header.flags = LinkFlags::Up | LinkFlags::LowerUp | LinkFlags::Running;
        assert!(touches_ours(&RouteNetlinkMessage::NewLink(l), &nets));
    }
}
