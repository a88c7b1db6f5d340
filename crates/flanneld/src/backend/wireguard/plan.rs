//! Pure: which peers each WireGuard device should have, from the admitted leases and the
//! Mode, as upstream's `wireguard_network.go` decides it (PublicKey and Port from the
//! family's BackendData, a missing Port meaning our own, Auto's choice of underlay).

use super::keys::Key;
use flannel_core::backend_config::WireguardMode;
use flannel_core::lease::Lease;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The IPv4 device (and, outside Separate mode, the only one).
pub const DEVICE: &str = "flannel-wg";
/// The IPv6 device in Separate mode.
pub const DEVICE_V6: &str = "flannel-wg-v6";

/// One peer of a device, as the device is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub key: Key,
    pub endpoint: SocketAddr,
    /// The peer's subnet(s): what it may send from and what is sent to it.
    pub allowed_ips: Vec<IpNet>,
}

/// Which devices exist and what they listen on.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub mode: WireguardMode,
    /// `flannel-wg`'s port, when it exists.
    pub v4_port: Option<u16>,
    /// `flannel-wg-v6`'s port, when it exists (Separate mode with IPv6).
    pub v6_port: Option<u16>,
    /// Our own public addresses (Auto mode compares them).
    pub ext_v4: Option<Ipv4Addr>,
    pub ext_v6: Option<Ipv6Addr>,
}

/// The peers of `flannel-wg` and of `flannel-wg-v6`, sorted by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub v4: Vec<PeerConfig>,
    pub v6: Vec<PeerConfig>,
}

/// `PublicKey` and `Port` of one family's BackendData.
fn data_of(data: Option<&serde_json::Value>) -> (Option<Key>, u16) {
    let key = data
        .and_then(|d| d.get("PublicKey"))
        .and_then(serde_json::Value::as_str)
        .and_then(Key::parse);
    let port = data
        .and_then(|d| d.get("Port"))
        .and_then(serde_json::Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(0);
    (key, port)
}

/// Go's `IP.IsPrivate`: RFC 1918 and RFC 4193.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_private(),
        IpAddr::V6(a) => (a.segments()[0] & 0xfe00) == 0xfc00,
    }
}

impl Layout {
    /// Auto mode's underlay for a peer (upstream `selectMode`): IPv4 unless the peer has
    /// an IPv6 address, its IPv4 one is private (or we have none), and both IPv6 ends are
    /// public.
    fn auto_family(&self, peer_v4: Ipv4Addr, peer_v6: Option<Ipv6Addr>) -> WireguardMode {
        let Some(v6) = peer_v6 else {
            return WireguardMode::Ipv4;
        };
        if !is_private(IpAddr::V4(peer_v4)) && self.ext_v4.is_some() {
            return WireguardMode::Ipv4;
        }
        match self.ext_v6 {
            Some(ours) if !is_private(IpAddr::V6(v6)) && !is_private(IpAddr::V6(ours)) => {
                WireguardMode::Ipv6
            }
            _ => WireguardMode::Ipv4,
        }
    }

    /// The peers of each device for these admitted peer leases. Leases of other backends
    /// are not peers (upstream ignores them too).
    pub fn plan<'a>(&self, peers: impl IntoIterator<Item = &'a Lease>) -> Plan {
        let mut plan = Plan::default();
        for lease in peers {
            if lease.attrs.backend_type != "wireguard" {
                continue;
            }
            let (key4, port4) = data_of(lease.attrs.backend_data.as_ref());
            let (key6, port6) = data_of(lease.attrs.backend_v6_data.as_ref());
            let v4 = lease.subnet().map(IpNet::V4);
            let v6 = lease.ipv6_subnet().map(IpNet::V6);
            let endpoint4 = |own: Option<u16>| {
                let port = if port4 == 0 { own? } else { port4 };
                Some(SocketAddr::new(IpAddr::V4(lease.attrs.public_ip), port))
            };
            let endpoint6 = |own: Option<u16>| {
                let port = if port6 == 0 { own? } else { port6 };
                Some(SocketAddr::new(IpAddr::V6(lease.attrs.public_ipv6?), port))
            };
            if self.mode == WireguardMode::Separate {
                // A peer on each device whose family the lease has (and the device exists).
                let one = |subnet: Option<IpNet>, key: Option<Key>, endpoint, port: Option<u16>| {
                    port?;
                    Some(PeerConfig {
                        key: key?,
                        endpoint: endpoint?,
                        allowed_ips: vec![subnet?],
                    })
                };
                plan.v4
                    .extend(one(v4, key4, endpoint4(self.v4_port), self.v4_port));
                plan.v6
                    .extend(one(v6, key6, endpoint6(self.v6_port), self.v6_port));
                continue;
            }
            // One device for both families: the key of the last family the lease has (as
            // upstream), the endpoint by Mode, both subnets allowed.
            let key = if v6.is_some() { key6 } else { key4 };
            let mode = match self.mode {
                WireguardMode::Auto => {
                    self.auto_family(lease.attrs.public_ip, lease.attrs.public_ipv6)
                }
                m => m,
            };
            let endpoint = match mode {
                WireguardMode::Ipv6 => endpoint6(self.v4_port),
                _ => endpoint4(self.v4_port),
            };
            let allowed_ips: Vec<IpNet> = v4.into_iter().chain(v6).collect();
            if let (Some(key), Some(endpoint), false) = (key, endpoint, allowed_ips.is_empty()) {
                plan.v4.push(PeerConfig {
                    key,
                    endpoint,
                    allowed_ips,
                });
            }
        }
        // Two leases naming one key would be one peer: the kernel keeps one; so do we (the
        // first by subnet), so what is applied is what is planned.
        for list in [&mut plan.v4, &mut plan.v6] {
            list.sort_by(|a, b| a.key.cmp(&b.key).then(a.allowed_ips.cmp(&b.allowed_ips)));
            list.dedup_by(|b, a| a.key == b.key);
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_core::lease::{Expiry, LeaseAttrs, SubnetKey};
    use serde_json::json;

    fn key(n: u8) -> Key {
        Key([n; 32])
    }

    fn lease(
        subnet: &str,
        v6: Option<&str>,
        ip: &str,
        ip6: Option<&str>,
        data: serde_json::Value,
        data6: Option<serde_json::Value>,
    ) -> Lease {
        let mut attrs = LeaseAttrs::new(ip.parse().unwrap());
        attrs.backend_type = "wireguard".into();
        attrs.backend_data = Some(data);
        attrs.public_ipv6 = ip6.map(|a| a.parse().unwrap());
        attrs.backend_v6_data = data6;
        Lease {
            key: SubnetKey {
                ipv4: subnet.parse().unwrap(),
                ipv6: v6.map(|s| s.parse().unwrap()),
            },
            attrs,
            expiry: Expiry::Unknown,
        }
    }

    /// An IPv4-only wireguard lease.
    fn v4_lease(subnet: &str, ip: &str, data: serde_json::Value) -> Lease {
        lease(subnet, None, ip, None, data, None)
    }

    fn layout(mode: WireguardMode, v6: bool) -> Layout {
        Layout {
            mode,
            v4_port: Some(51820),
            v6_port: (v6 && mode == WireguardMode::Separate).then_some(51821),
            ext_v4: Some("192.168.0.1".parse().unwrap()),
            ext_v6: v6.then(|| "2001:db8::1".parse().unwrap()),
        }
    }

    #[test]
    fn separate_mode_one_peer_per_family_with_its_port() {
        let l = lease(
            "10.244.1.0/24",
            Some("fd00:1::/64"),
            "192.168.0.2",
            Some("2001:db8::2"),
            json!({"PublicKey": key(1).to_string(), "Port": 5000}),
            Some(json!({"PublicKey": key(1).to_string(), "Port": 5001})),
        );
        let plan = layout(WireguardMode::Separate, true).plan([&l]);
        assert_eq!(
            plan.v4,
            vec![PeerConfig {
                key: key(1),
                endpoint: "192.168.0.2:5000".parse().unwrap(),
                allowed_ips: vec!["10.244.1.0/24".parse().unwrap()],
            }]
        );
        assert_eq!(
            plan.v6,
            vec![PeerConfig {
                key: key(1),
                endpoint: "[2001:db8::2]:5001".parse().unwrap(),
                allowed_ips: vec!["fd00:1::/64".parse().unwrap()],
            }]
        );
    }

    #[test]
    fn a_lease_without_port_means_our_port_and_other_backends_are_not_peers() {
        let old = v4_lease(
            "10.244.1.0/24",
            "192.168.0.2",
            json!({"PublicKey": key(1).to_string()}),
        );
        let mut vx = v4_lease(
            "10.244.2.0/24",
            "192.168.0.3",
            json!({"VtepMAC": "02:00:00:00:00:01"}),
        );
        vx.attrs.backend_type = "vxlan".into();
        let no_key = v4_lease("10.244.3.0/24", "192.168.0.4", json!({"Port": 51820}));
        let plan = layout(WireguardMode::Separate, false).plan([&old, &vx, &no_key]);
        assert_eq!(plan.v4.len(), 1);
        assert_eq!(plan.v4[0].endpoint, "192.168.0.2:51820".parse().unwrap());
        assert!(plan.v6.is_empty());
    }

    #[test]
    fn one_device_modes_allow_both_subnets_and_pick_the_underlay() {
        let l = |ip: &str, ip6: &str| {
            lease(
                "10.244.1.0/24",
                Some("fd00:1::/64"),
                ip,
                Some(ip6),
                json!({"PublicKey": key(4).to_string(), "Port": 51820}),
                Some(json!({"PublicKey": key(6).to_string(), "Port": 51821})),
            )
        };
        let private_v4 = l("192.168.0.2", "2001:db8::2");
        let public_v4 = l("203.0.113.2", "2001:db8::2");
        let ula_v6 = l("192.168.0.2", "fd12::2");

        let p = layout(WireguardMode::Ipv4, true).plan([&private_v4]);
        assert_eq!(p.v4[0].endpoint, "192.168.0.2:51820".parse().unwrap());
        assert_eq!(p.v4[0].key, key(6), "the IPv6 data's key, as upstream");
        assert_eq!(p.v4[0].allowed_ips.len(), 2);
        assert!(p.v6.is_empty());

        let p = layout(WireguardMode::Ipv6, true).plan([&private_v4]);
        assert_eq!(p.v4[0].endpoint, "[2001:db8::2]:51821".parse().unwrap());

        let auto = layout(WireguardMode::Auto, true);
        assert_eq!(
            auto.plan([&private_v4]).v4[0].endpoint,
            "[2001:db8::2]:51821".parse().unwrap()
        );
        assert_eq!(
            auto.plan([&public_v4]).v4[0].endpoint,
            "203.0.113.2:51820".parse().unwrap()
        );
        assert_eq!(
            auto.plan([&ula_v6]).v4[0].endpoint,
            "192.168.0.2:51820".parse().unwrap()
        );
    }

    #[test]
    fn two_leases_with_one_key_are_one_peer() {
        let a = v4_lease(
            "10.244.1.0/24",
            "192.168.0.2",
            json!({"PublicKey": key(1).to_string()}),
        );
        let b = v4_lease(
            "10.244.2.0/24",
            "192.168.0.3",
            json!({"PublicKey": key(1).to_string()}),
        );
        let plan = layout(WireguardMode::Separate, false).plan([&b, &a]);
        assert_eq!(plan.v4.len(), 1);
        assert_eq!(
            plan.v4[0].allowed_ips,
            vec!["10.244.1.0/24".parse::<IpNet>().unwrap()]
        );
    }
}
