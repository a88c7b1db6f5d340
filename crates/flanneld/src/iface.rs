//! Choosing the interface flannel uses for inter-host traffic (upstream `pkg/ipmatch`).
//!
//! Order: each `--iface` (an IP selects the interface that owns it, anything else is a name),
//! then each `--iface-regex` (matched against addresses first, then names), then
//! `--iface-can-reach` (the interface and source address the kernel would use). With none of
//! these, the interface that owns `--public-ip`, else the default-route interface.
//!
//! Pure: the host is read through the [`HostNetwork`] trait, whose real implementation lives
//! in the kernel layer (`crate::kernel::SystemNetwork`).
//!
//! One deliberate fix: upstream refuses a `--public-ip` that is not a local address (issue
//! 1397). Behind NAT that is exactly the case, so we fall back to the default-route interface
//! and still publish the given public IP.

use regex::Regex;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One network interface as the selector sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
}

/// The chosen interface and the addresses flannel publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalInterface {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    /// The interface's address used for tunnels and routes.
    pub iface_addr: Option<Ipv4Addr>,
    pub iface_v6_addr: Option<Ipv6Addr>,
    /// The address peers reach this node at (`--public-ip`, else `iface_addr`).
    pub ext_addr: Option<Ipv4Addr>,
    pub ext_v6_addr: Option<Ipv6Addr>,
}

impl ExternalInterface {
    /// An interface with one IPv4 address, published as is (no `--public-ip`).
    pub fn ipv4(name: &str, index: u32, mtu: u32, addr: Ipv4Addr) -> ExternalInterface {
        ExternalInterface {
            name: name.to_string(),
            index,
            mtu,
            iface_addr: Some(addr),
            iface_v6_addr: None,
            ext_addr: Some(addr),
            ext_v6_addr: None,
        }
    }
}

/// What the selector needs from the host. The real implementation reads the kernel; tests
/// use a table.
pub trait HostNetwork: Send + Sync {
    fn interfaces(&self) -> Result<Vec<Interface>, IfaceError>;
    /// The interface name of the IPv4 (or IPv6) default route.
    fn default_route_interface(&self, ipv6: bool) -> Result<Option<String>, IfaceError>;
    /// The source address the kernel would use to reach `dst`.
    fn source_address_for(&self, dst: IpAddr) -> Result<IpAddr, IfaceError>;
}

impl IfaceError {
    pub fn host(what: impl Into<String>, source: std::io::Error) -> IfaceError {
        IfaceError::Host {
            what: what.into(),
            source,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub ifaces: Vec<String>,
    pub regexes: Vec<String>,
    pub can_reach: Option<IpAddr>,
    pub public_ip: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
    pub ipv4: bool,
    pub ipv6: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    /// Reading the host's interfaces or routes failed: what was read, and why.
    #[error("reading the host's network: {what}")]
    Host {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no interface matches --iface {0:?}")]
    NoMatch(String),
    #[error("no interface matches any of --iface {ifaces:?} / --iface-regex {regexes:?}")]
    NoneMatched {
        ifaces: Vec<String>,
        regexes: Vec<String>,
    },
    #[error("invalid --iface-regex {0:?}: {1}")]
    Regex(String, regex::Error),
    #[error("--iface-can-reach {0}: no local interface owns source address {1}")]
    CanReach(IpAddr, IpAddr),
    #[error("no default route found; pass --iface to choose the interface")]
    NoDefaultRoute,
    #[error("IPv4 and IPv6 default routes use different interfaces ({v4} and {v6}); pass --iface")]
    DefaultRouteMismatch { v4: String, v6: String },
    #[error("interface {0} not found")]
    Missing(String),
    #[error("interface {0} has no IPv4 address")]
    NoIpv4(String),
    #[error("interface {0} has no IPv6 address")]
    NoIpv6(String),
}

fn by_ip(ifs: &[Interface], ip: IpAddr) -> Option<&Interface> {
    ifs.iter().find(|i| match ip {
        IpAddr::V4(a) => i.ipv4.contains(&a),
        IpAddr::V6(a) => i.ipv6.contains(&a),
    })
}

/// Run the selection against `host`.
pub fn select(sel: &Selection, host: &dyn HostNetwork) -> Result<ExternalInterface, IfaceError> {
    let ifs = host.interfaces()?;
    // (interface, preferred address if the match was by address)
    let (i, matched): (&Interface, Option<IpAddr>) = 'search: {
        for spec in &sel.ifaces {
            if let Ok(ip) = spec.parse::<IpAddr>() {
                if let Some(i) = by_ip(&ifs, ip) {
                    break 'search (i, Some(ip));
                }
            } else if let Some(i) = ifs.iter().find(|i| &i.name == spec) {
                break 'search (i, None);
            }
        }
        for pattern in &sel.regexes {
            let re = Regex::new(pattern).map_err(|e| IfaceError::Regex(pattern.clone(), e))?;
            for i in &ifs {
                let addrs = i
                    .ipv4
                    .iter()
                    .map(|a| IpAddr::V4(*a))
                    .chain(i.ipv6.iter().map(|a| IpAddr::V6(*a)));
                for a in addrs {
                    if re.is_match(&a.to_string()) {
                        break 'search (i, Some(a));
                    }
                }
            }
            if let Some(i) = ifs.iter().find(|i| re.is_match(&i.name)) {
                break 'search (i, None);
            }
        }
        if let Some(dst) = sel.can_reach {
            let src = host.source_address_for(dst)?;
            let i = by_ip(&ifs, src).ok_or(IfaceError::CanReach(dst, src))?;
            break 'search (i, Some(src));
        }
        if !sel.ifaces.is_empty() || !sel.regexes.is_empty() {
            return Err(if sel.regexes.is_empty() && sel.ifaces.len() == 1 {
                IfaceError::NoMatch(sel.ifaces[0].clone())
            } else {
                IfaceError::NoneMatched {
                    ifaces: sel.ifaces.clone(),
                    regexes: sel.regexes.clone(),
                }
            });
        }
        let public = sel
            .public_ip
            .map(IpAddr::V4)
            .or(sel.public_ipv6.map(IpAddr::V6));
        if let Some(i) = public.and_then(|p| by_ip(&ifs, p)) {
            break 'search (i, public);
        }
        let name = default_interface(sel, host)?;
        let i = ifs
            .iter()
            .find(|i| i.name == name)
            .ok_or(IfaceError::Missing(name))?;
        (i, None)
    };
    let iface_addr = match matched {
        Some(IpAddr::V4(a)) => Some(a),
        _ => i.ipv4.first().copied(),
    };
    let iface_v6_addr = match matched {
        Some(IpAddr::V6(a)) => Some(a),
        _ => i
            .ipv6
            .iter()
            .find(|a| !is_link_local(a))
            .or(i.ipv6.first())
            .copied(),
    };
    if sel.ipv4 && iface_addr.is_none() {
        return Err(IfaceError::NoIpv4(i.name.clone()));
    }
    if sel.ipv6 && iface_v6_addr.is_none() {
        return Err(IfaceError::NoIpv6(i.name.clone()));
    }
    Ok(ExternalInterface {
        name: i.name.clone(),
        index: i.index,
        mtu: i.mtu,
        iface_addr,
        iface_v6_addr,
        ext_addr: sel.public_ip.or(iface_addr),
        // Upstream publishes PublicIPv6 only when IPv6 is enabled: an IPv4-only lease must be
        // byte-identical to upstream's (no `"PublicIPv6":"::1"` from a node using `lo`).
        ext_v6_addr: sel
            .ipv6
            .then(|| sel.public_ipv6.or(iface_v6_addr))
            .flatten(),
    })
}

fn is_link_local(a: &Ipv6Addr) -> bool {
    (a.segments()[0] & 0xffc0) == 0xfe80
}

fn default_interface(sel: &Selection, host: &dyn HostNetwork) -> Result<String, IfaceError> {
    let v4 = if sel.ipv4 || !sel.ipv6 {
        host.default_route_interface(false)?
    } else {
        None
    };
    let v6 = if sel.ipv6 {
        host.default_route_interface(true)?
    } else {
        None
    };
    match (v4, v6) {
        (Some(a), Some(b)) if a != b => Err(IfaceError::DefaultRouteMismatch { v4: a, v6: b }),
        (Some(a), _) => Ok(a),
        (None, Some(b)) if !sel.ipv4 => Ok(b),
        _ => Err(IfaceError::NoDefaultRoute),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Table {
        ifs: Vec<Interface>,
        default4: Option<&'static str>,
        default6: Option<&'static str>,
        source: Option<IpAddr>,
    }

    impl HostNetwork for Table {
        fn interfaces(&self) -> Result<Vec<Interface>, IfaceError> {
            Ok(self.ifs.clone())
        }
        fn default_route_interface(&self, ipv6: bool) -> Result<Option<String>, IfaceError> {
            Ok(if ipv6 { self.default6 } else { self.default4 }.map(String::from))
        }
        fn source_address_for(&self, _dst: IpAddr) -> Result<IpAddr, IfaceError> {
            self.source.ok_or_else(|| {
                IfaceError::host(
                    "the route to the address",
                    std::io::Error::from(std::io::ErrorKind::NetworkUnreachable),
                )
            })
        }
    }

    fn host() -> Table {
        Table {
            ifs: vec![
                Interface {
                    name: "lo".into(),
                    index: 1,
                    mtu: 65536,
                    ipv4: vec!["127.0.0.1".parse().unwrap()],
                    ipv6: vec![],
                },
                Interface {
                    name: "eth0".into(),
                    index: 2,
                    mtu: 1500,
                    ipv4: vec!["172.16.0.7".parse().unwrap(), "172.16.0.8".parse().unwrap()],
                    ipv6: vec!["fe80::1".parse().unwrap(), "fd00::7".parse().unwrap()],
                },
                Interface {
                    name: "ens5".into(),
                    index: 3,
                    mtu: 9000,
                    ipv4: vec!["10.1.0.4".parse().unwrap()],
                    ipv6: vec![],
                },
            ],
            default4: Some("eth0"),
            default6: Some("eth0"),
            source: Some("10.1.0.4".parse().unwrap()),
        }
    }

    fn v4() -> Selection {
        Selection {
            ipv4: true,
            ..Default::default()
        }
    }

    #[test]
    fn default_route_interface_and_first_address() {
        let e = select(&v4(), &host()).unwrap();
        assert_eq!((e.name.as_str(), e.mtu), ("eth0", 1500));
        assert_eq!(e.iface_addr, Some("172.16.0.7".parse().unwrap()));
        assert_eq!(e.ext_addr, e.iface_addr);
    }

    #[test]
    fn iface_by_ip_then_name_first_match_wins() {
        let s = Selection {
            ifaces: vec!["nope".into(), "172.16.0.8".into(), "ens5".into()],
            ..v4()
        };
        let e = select(&s, &host()).unwrap();
        assert_eq!(e.name, "eth0");
        assert_eq!(e.iface_addr, Some("172.16.0.8".parse().unwrap()));
        let s = Selection {
            ifaces: vec!["ens5".into()],
            ..v4()
        };
        assert_eq!(select(&s, &host()).unwrap().mtu, 9000);
        let s = Selection {
            ifaces: vec!["wlan0".into()],
            ..v4()
        };
        assert_eq!(
            select(&s, &host()).unwrap_err().to_string(),
            "no interface matches --iface \"wlan0\""
        );
    }

    #[test]
    fn regex_matches_addresses_before_names() {
        let s = Selection {
            regexes: vec!["^10\\.1\\.".into()],
            ..v4()
        };
        assert_eq!(select(&s, &host()).unwrap().name, "ens5");
        let s = Selection {
            regexes: vec!["^en".into()],
            ..v4()
        };
        assert_eq!(select(&s, &host()).unwrap().name, "ens5");
    }

    #[test]
    fn can_reach_uses_the_kernel_source() {
        let s = Selection {
            can_reach: Some("10.1.0.1".parse().unwrap()),
            ..v4()
        };
        let e = select(&s, &host()).unwrap();
        assert_eq!(
            (e.name.as_str(), e.iface_addr),
            ("ens5", Some("10.1.0.4".parse().unwrap()))
        );
    }

    #[test]
    fn public_ip_local_and_behind_nat() {
        let s = Selection {
            public_ip: Some("10.1.0.4".parse().unwrap()),
            ..v4()
        };
        assert_eq!(select(&s, &host()).unwrap().name, "ens5");
        // Not local (NAT / EIP): default-route interface, public IP still published.
        let s = Selection {
            public_ip: Some("203.0.113.9".parse().unwrap()),
            ..v4()
        };
        let e = select(&s, &host()).unwrap();
        assert_eq!(e.name, "eth0");
        assert_eq!(e.iface_addr, Some("172.16.0.7".parse().unwrap()));
        assert_eq!(e.ext_addr, Some("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn ipv4_only_publishes_no_ipv6_address() {
        let e = select(&v4(), &host()).unwrap();
        assert!(e.iface_v6_addr.is_some(), "the interface has one");
        assert_eq!(
            e.ext_v6_addr, None,
            "but an IPv4-only lease does not carry it"
        );
        let attrs =
            crate::backend::base_attrs(flannel_core::backend_config::BackendKind::Alloc, &e)
                .unwrap();
        assert_eq!(
            attrs.to_json(),
            r#"{"PublicIP":"172.16.0.7","PublicIPv6":null,"BackendType":"alloc"}"#
        );
    }

    #[test]
    fn dual_stack_prefers_global_v6_and_checks_default_routes() {
        let s = Selection {
            ipv4: true,
            ipv6: true,
            ..Default::default()
        };
        let e = select(&s, &host()).unwrap();
        assert_eq!(e.iface_v6_addr, Some("fd00::7".parse().unwrap()));
        let mut h = host();
        h.default6 = Some("ens5");
        assert!(matches!(
            select(&s, &h),
            Err(IfaceError::DefaultRouteMismatch { .. })
        ));
        let s = Selection {
            ipv6: true,
            ifaces: vec!["ens5".into()],
            ..Default::default()
        };
        assert_eq!(
            select(&s, &host()).unwrap_err().to_string(),
            "interface ens5 has no IPv6 address"
        );
    }

    #[test]
    fn no_default_route() {
        let mut h = host();
        h.default4 = None;
        assert!(matches!(select(&v4(), &h), Err(IfaceError::NoDefaultRoute)));
    }
}
