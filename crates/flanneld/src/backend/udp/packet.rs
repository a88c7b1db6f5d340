//! The udp backend's packet work as values (pure): which peer a packet goes to (the longest
//! matching lease subnet), the TTL a forwarder takes off, the ICMP "net unreachable" sent back
//! for a destination no lease holds (as upstream's proxy), and what a received datagram may
//! carry (an IPv4 packet for this node's subnet, from a peer's address).

use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

/// Peers' subnets and their public addresses, longest prefix first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PeerTable(Vec<(Ipv4Net, Ipv4Addr)>);

impl PeerTable {
    pub fn new(mut peers: Vec<(Ipv4Net, Ipv4Addr)>) -> PeerTable {
        peers.sort_by(|a, b| b.0.prefix_len().cmp(&a.0.prefix_len()).then(a.cmp(b)));
        peers.dedup();
        PeerTable(peers)
    }

    /// The public address of the peer whose subnet holds `dst`.
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        self.0
            .iter()
            .find(|(n, _)| n.contains(&dst))
            .map(|(_, ip)| *ip)
    }

    /// Whether `ip` is a peer's public address (where datagrams may come from).
    pub fn is_peer(&self, ip: Ipv4Addr) -> bool {
        self.0.iter().any(|(_, p)| *p == ip)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An IPv4 packet's header length, if `packet` is one (version 4, a sane header).
fn header_len(packet: &[u8]) -> Option<usize> {
    let first = *packet.first()?;
    let len = usize::from(first & 0x0f) * 4;
    (first >> 4 == 4 && len >= 20 && packet.len() >= len).then_some(len)
}

pub fn source(packet: &[u8]) -> Option<Ipv4Addr> {
    header_len(packet)?;
    Some(Ipv4Addr::new(
        packet[12], packet[13], packet[14], packet[15],
    ))
}

pub fn destination(packet: &[u8]) -> Option<Ipv4Addr> {
    header_len(packet)?;
    Some(Ipv4Addr::new(
        packet[16], packet[17], packet[18], packet[19],
    ))
}

/// The Internet checksum of `data` (RFC 1071; also the readiness probe's ICMP).
pub(crate) fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Take one off the TTL and fix the header checksum; false when the packet must be dropped
/// (not IPv4, or its TTL would reach 0).
pub fn decrement_ttl(packet: &mut [u8]) -> bool {
    let Some(len) = header_len(packet) else {
        return false;
    };
    if packet[8] <= 1 {
        return false;
    }
    packet[8] -= 1;
    packet[10] = 0;
    packet[11] = 0;
    let sum = checksum(&packet[..len]);
    packet[10..12].copy_from_slice(&sum.to_be_bytes());
    true
}

/// ICMP destination unreachable (net unreachable) from `from` about `packet`: its header and
/// first 8 bytes of payload. None for ICMP packets (no ICMP about ICMP, RFC 792) and for any
/// fragment but the first.
pub fn net_unreachable(packet: &[u8], from: Ipv4Addr) -> Option<Vec<u8>> {
    let len = header_len(packet)?;
    let fragment_offset = u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff;
    if packet[9] == 1 || fragment_offset != 0 {
        return None;
    }
    let quoted = &packet[..packet.len().min(len + 8)];
    let total = 20 + 8 + quoted.len();
    let mut out = vec![0u8; total];
    out[0] = 0x45;
    out[2..4].copy_from_slice(&u16::try_from(total).ok()?.to_be_bytes());
    out[8] = 8; // TTL, as upstream's proxy
    out[9] = 1; // ICMP
    out[12..16].copy_from_slice(&from.octets());
    out[16..20].copy_from_slice(&packet[12..16]);
    let sum = checksum(&out[..20]);
    out[10..12].copy_from_slice(&sum.to_be_bytes());
    out[20] = 3; // destination unreachable
    out[21] = 0; // net unreachable
    out[28..].copy_from_slice(quoted);
    let sum = checksum(&out[20..]);
    out[22..24].copy_from_slice(&sum.to_be_bytes());
    Some(out)
}

/// Whether a datagram from `sender` carrying `packet` may be written to the TUN device: an
/// IPv4 packet for this node's subnet, from a peer's public address.
pub fn accept(packet: &[u8], sender: Ipv4Addr, own: &Ipv4Net, peers: &PeerTable) -> bool {
    peers.is_peer(sender) && destination(packet).is_some_and(|d| own.contains(&d))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ICMP echo request from `src` to `dst` with TTL `ttl` (checksums valid).
    fn ping(src: [u8; 4], dst: [u8; 4], ttl: u8) -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 28, 0x12, 0x34, 0x40, 0, ttl, 1, 0, 0, src[0], src[1], src[2], src[3],
            dst[0], dst[1], dst[2], dst[3], 8, 0, 0, 0, 0, 1, 0, 1,
        ];
        let sum = checksum(&p[..20]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        let sum = checksum(&p[20..]);
        p[22..24].copy_from_slice(&sum.to_be_bytes());
        p
    }

    fn udp_packet(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut p = ping(src, dst, 64);
        p[9] = 17;
        p
    }

    #[test]
    fn the_longest_matching_lease_wins() {
        let t = PeerTable::new(vec![
            (
                "10.5.0.0/16".parse().unwrap(),
                "172.16.0.9".parse().unwrap(),
            ),
            (
                "10.5.2.0/24".parse().unwrap(),
                "172.16.0.2".parse().unwrap(),
            ),
        ]);
        assert_eq!(
            t.lookup("10.5.2.7".parse().unwrap()),
            Some("172.16.0.2".parse().unwrap())
        );
        assert_eq!(
            t.lookup("10.5.3.7".parse().unwrap()),
            Some("172.16.0.9".parse().unwrap())
        );
        assert_eq!(t.lookup("10.6.0.1".parse().unwrap()), None);
        assert!(t.is_peer("172.16.0.9".parse().unwrap()));
        assert!(!t.is_peer("172.16.0.3".parse().unwrap()));
    }

    #[test]
    fn ttl_and_checksum() {
        let mut p = ping([10, 5, 1, 2], [10, 5, 2, 2], 64);
        assert!(decrement_ttl(&mut p));
        assert_eq!(p[8], 63);
        assert_eq!(checksum(&p[..20]), 0, "a valid header sums to 0");
        let mut last = ping([10, 5, 1, 2], [10, 5, 2, 2], 1);
        assert!(!decrement_ttl(&mut last));
        assert!(!decrement_ttl(&mut [0x60, 0, 0, 0]), "not IPv4");
        assert!(!decrement_ttl(&mut [0x45, 0, 0]), "short");
    }

    #[test]
    fn net_unreachable_quotes_the_header_and_8_bytes() {
        let p = udp_packet([10, 5, 1, 2], [10, 9, 0, 1]);
        let icmp = net_unreachable(&p, Ipv4Addr::new(10, 5, 1, 0)).unwrap();
        assert_eq!(icmp.len(), 20 + 8 + 28);
        assert_eq!(source(&icmp), Some(Ipv4Addr::new(10, 5, 1, 0)));
        assert_eq!(destination(&icmp), Some(Ipv4Addr::new(10, 5, 1, 2)));
        assert_eq!((icmp[9], icmp[20], icmp[21]), (1, 3, 0));
        assert_eq!(checksum(&icmp[..20]), 0);
        assert_eq!(checksum(&icmp[20..]), 0);
        assert_eq!(&icmp[28..], &p[..28]);
        // No ICMP about ICMP, nor about later fragments.
        assert_eq!(
            net_unreachable(&ping([10, 5, 1, 2], [10, 9, 0, 1], 64), Ipv4Addr::LOCALHOST),
            None
        );
        let mut frag = p.clone();
        frag[7] = 1;
        assert_eq!(net_unreachable(&frag, Ipv4Addr::LOCALHOST), None);
    }

    #[test]
    fn only_packets_for_us_from_peers_are_accepted() {
        let own: Ipv4Net = "10.5.1.0/24".parse().unwrap();
        let peers = PeerTable::new(vec![(
            "10.5.2.0/24".parse().unwrap(),
            "172.16.0.2".parse().unwrap(),
        )]);
        let p = ping([10, 5, 2, 2], [10, 5, 1, 2], 64);
        assert!(accept(&p, "172.16.0.2".parse().unwrap(), &own, &peers));
        assert!(
            !accept(&p, "172.16.0.66".parse().unwrap(), &own, &peers),
            "not a peer"
        );
        let elsewhere = ping([10, 5, 2, 2], [8, 8, 8, 8], 64);
        assert!(
            !accept(&elsewhere, "172.16.0.2".parse().unwrap(), &own, &peers),
            "not for us: no relay"
        );
        assert!(!accept(
            b"garbage",
            "172.16.0.2".parse().unwrap(),
            &own,
            &peers
        ));
    }
}
