//! The rules a lease is checked against: the pools of the network config, how the store
//! allocates, and (when known) the VPC's CIDRs; the checks that look at one lease alone.

use super::block::Block;
use super::{Allocation, Family, Reason, Refusal};
use crate::config::{Ipv4Pool, Ipv6Pool, ValidatedNetConfig};
use crate::lease::Lease;
use crate::mac::Mac;
use ipnet::{IpNet, Ipv4Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One family's rules.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FamilyRules {
    pub(crate) bits: u8,
    pub(crate) network: Block,
    /// The Network as configured (for messages).
    net: IpNet,
    /// The longest prefix a lease may have (/30, /126).
    max_len: u8,
    /// The shape flannel's allocator hands out: (SubnetLen, SubnetMin, SubnetMax).
    canonical: Option<(u8, u128, u128)>,
}

impl FamilyRules {
    fn v4(p: &Ipv4Pool, allocation: Allocation) -> FamilyRules {
        FamilyRules {
            bits: 32,
            network: Block::v4(p.network),
            net: IpNet::V4(p.network),
            max_len: 30,
            canonical: (allocation == Allocation::Pool).then(|| {
                (
                    p.subnet_len,
                    u128::from(u32::from(p.subnet_min)),
                    u128::from(u32::from(p.subnet_max)),
                )
            }),
        }
    }

    fn v6(p: &Ipv6Pool, allocation: Allocation) -> FamilyRules {
        FamilyRules {
            bits: 128,
            network: Block::v6(p.network),
            net: IpNet::V6(p.network),
            max_len: 126,
            canonical: (allocation == Allocation::Pool).then(|| {
                (
                    p.subnet_len,
                    u128::from(p.subnet_min),
                    u128::from(p.subnet_max),
                )
            }),
        }
    }

    pub(crate) fn contains(&self, b: Block) -> bool {
        b.len > self.network.len && b.ancestor(self.network.len, self.bits) == self.network
    }

    pub(crate) fn show(&self, b: Block) -> String {
        match self.net {
            IpNet::V4(_) => {
                let a = Ipv4Addr::from(u32::try_from(b.start).unwrap_or(0));
                format!("{a}/{}", b.len)
            }
            IpNet::V6(_) => format!("{}/{}", Ipv6Addr::from(b.start), b.len),
        }
    }

    pub(crate) fn is_canonical(&self, b: Block) -> bool {
        self.canonical
            .is_some_and(|(len, min, max)| b.len == len && (min..=max).contains(&b.start))
    }
}

/// What admission is decided by: the network config, how the store allocates, and (when
/// known) the VPC's CIDRs.
#[derive(Debug, Clone)]
pub struct Rules {
    v4: Option<FamilyRules>,
    v6: Option<FamilyRules>,
    networks: Vec<IpNet>,
    vpc_cidrs: Vec<Ipv4Net>,
}

impl Rules {
    pub fn new(config: &ValidatedNetConfig, allocation: Allocation) -> Rules {
        Rules {
            v4: config.ipv4.as_ref().map(|p| FamilyRules::v4(p, allocation)),
            v6: config.ipv6.as_ref().map(|p| FamilyRules::v6(p, allocation)),
            networks: config
                .network()
                .map(IpNet::V4)
                .into_iter()
                .chain(config.ipv6_network().map(IpNet::V6))
                .collect(),
            vpc_cidrs: Vec::new(),
        }
    }

    /// The VPC's CIDRs (primary and secondary): a tencent-vpc PrivateIP must be inside one.
    pub fn with_vpc_cidrs(mut self, cidrs: Vec<Ipv4Net>) -> Rules {
        self.vpc_cidrs = cidrs;
        self
    }

    pub(crate) fn family(&self, f: Family) -> Option<&FamilyRules> {
        match f {
            Family::V4 => self.v4.as_ref(),
            Family::V6 => self.v6.as_ref(),
        }
    }

    /// Why `ip` cannot be a node's address, if it cannot.
    fn unusable(&self, ip: IpAddr) -> Option<&'static str> {
        let why = match ip {
            IpAddr::V4(a) => unusable_v4(a),
            IpAddr::V6(a) => unusable_v6(a),
        };
        why.or_else(|| {
            self.networks
                .iter()
                .any(|n| n.contains(&ip))
                .then_some("inside a pod Network")
        })
    }

    /// The checks of one lease part that depend on nothing but the lease: its shape, then
    /// its addresses. Ok(Some(block)) for a part that may be admitted (overlaps aside).
    pub(crate) fn check_part(&self, f: Family, lease: &Lease) -> Result<Option<Block>, Refusal> {
        let Some(fr) = self.family(f) else {
            return Ok(None);
        };
        let (block, text, host_bits) = match f {
            Family::V4 => match lease.key.ipv4_subnet() {
                None => return Ok(None),
                Some(n) => (Block::v4(n), n.to_string(), n.addr() != n.network()),
            },
            Family::V6 => match lease.key.ipv6 {
                None => return Ok(None),
                Some(n) => (Block::v6(n), n.to_string(), n.addr() != n.network()),
            },
        };
        let refuse = |reason, detail: String| Refusal {
            family: f,
            reason,
            detail,
        };
        let network = fr.net;
        if host_bits {
            return Err(refuse(
                Reason::HostBits,
                format!("{f} subnet {text} has host bits set"),
            ));
        }
        if !fr.contains(block) {
            let detail = if block.len <= fr.network.len
                && fr.network.ancestor(block.len, fr.bits) == block
            {
                format!("{f} subnet {text} covers the Network {network}: a lease must be a subnet inside it")
            } else {
                format!("{f} subnet {text} is not inside the Network {network}")
            };
            return Err(refuse(Reason::OutsideNetwork, detail));
        }
        if block.len > fr.max_len {
            return Err(refuse(
                Reason::TooSmall,
                format!("{f} subnet {text} is smaller than /{}", fr.max_len),
            ));
        }
        let attrs = &lease.attrs;
        let (field, address) = match f {
            Family::V4 => ("PublicIP", Some(IpAddr::V4(attrs.public_ip))),
            Family::V6 => ("PublicIPv6", attrs.public_ipv6.map(IpAddr::V6)),
        };
        match address {
            None => {
                return Err(refuse(
                    Reason::PublicIp,
                    format!("{f} subnet {text} has no {field}"),
                ))
            }
            Some(ip) => {
                if let Some(why) = self.unusable(ip) {
                    return Err(refuse(Reason::PublicIp, format!("{field} {ip} is {why}")));
                }
            }
        }
        let data = match f {
            Family::V4 => attrs.backend_data.as_ref(),
            Family::V6 => attrs.backend_v6_data.as_ref(),
        };
        let vtep = data.and_then(|d| d.get("VtepMAC"));
        let needs_vtep = attrs.backend_type == "vxlan";
        match (vtep, needs_vtep) {
            (None, false) => {}
            (None, true) => {
                return Err(refuse(
                    Reason::VtepMac,
                    format!("vxlan lease has no VtepMAC for its {f} subnet"),
                ))
            }
            (Some(v), _) => {
                let mac = v.as_str().and_then(|s| s.parse::<Mac>().ok());
                match mac {
                    Some(m) if m.is_unicast() => {}
                    Some(m) => {
                        return Err(refuse(
                            Reason::VtepMac,
                            format!("VtepMAC {m} is not a unicast address"),
                        ))
                    }
                    None => {
                        return Err(refuse(
                            Reason::VtepMac,
                            format!("VtepMAC {v} is not a MAC address"),
                        ))
                    }
                }
            }
        }
        if attrs.backend_type == "wireguard" {
            // Upstream's peers read PublicKey and Port from the family's data; a lease
            // without data there has nothing a tunnel can be made to.
            let key = data.and_then(|d| d.get("PublicKey"));
            match key.and_then(serde_json::Value::as_str) {
                Some(k) if crate::backend_config::decode_wireguard_key(k).is_some() => {}
                _ => {
                    return Err(refuse(
                        Reason::WireguardKey,
                        format!(
                            "wireguard lease has no usable PublicKey for its {f} subnet (found {})",
                            key.map_or_else(|| "none".to_string(), ToString::to_string)
                        ),
                    ))
                }
            }
            if let Some(p) = data.and_then(|d| d.get("Port")) {
                if p.as_u64().is_none_or(|p| p > u64::from(u16::MAX)) {
                    return Err(refuse(
                        Reason::WireguardKey,
                        format!("wireguard Port {p} is not a UDP port"),
                    ));
                }
            }
        }
        if f == Family::V4 && attrs.backend_type == "tencent-vpc" {
            if let Some(v) = data.and_then(|d| d.get("PrivateIP")) {
                let Some(ip) = v.as_str().and_then(|s| s.parse::<Ipv4Addr>().ok()) else {
                    return Err(refuse(
                        Reason::PrivateIp,
                        format!("PrivateIP {v} is not an IPv4 address"),
                    ));
                };
                if let Some(why) = self.unusable(IpAddr::V4(ip)) {
                    return Err(refuse(
                        Reason::PrivateIp,
                        format!("PrivateIP {ip} is {why}"),
                    ));
                }
                if !self.vpc_cidrs.is_empty() && !self.vpc_cidrs.iter().any(|c| c.contains(&ip)) {
                    let cidrs: Vec<String> =
                        self.vpc_cidrs.iter().map(ToString::to_string).collect();
                    return Err(refuse(
                        Reason::PrivateIp,
                        format!(
                            "PrivateIP {ip} is not inside the VPC ({})",
                            cidrs.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(Some(block))
    }
}

fn unusable_v4(a: Ipv4Addr) -> Option<&'static str> {
    let o = a.octets();
    if a.is_unspecified() {
        Some("unspecified")
    } else if o[0] == 0 {
        Some("in 0.0.0.0/8")
    } else if a.is_loopback() {
        Some("loopback")
    } else if a.is_multicast() {
        Some("multicast")
    } else if a.is_broadcast() {
        Some("the broadcast address")
    } else if o[0] >= 240 {
        Some("reserved (240.0.0.0/4)")
    } else {
        None
    }
}

fn unusable_v6(a: Ipv6Addr) -> Option<&'static str> {
    if a.is_unspecified() {
        Some("unspecified")
    } else if a.is_loopback() {
        Some("loopback")
    } else if a.is_multicast() {
        Some("multicast")
    } else {
        None
    }
}
