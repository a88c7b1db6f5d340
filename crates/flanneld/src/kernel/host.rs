//! The host's network state as the interface selector needs it, read from the kernel.

use crate::iface::{HostNetwork, IfaceError, Interface};
use std::net::IpAddr;

/// The host's real network state: addresses from getifaddrs(3), default routes from
/// /proc/net, and the kernel's own source-address choice via a connected UDP socket.
pub struct SystemNetwork;

impl HostNetwork for SystemNetwork {
    fn interfaces(&self) -> Result<Vec<Interface>, IfaceError> {
        let addrs =
            nix::ifaddrs::getifaddrs().map_err(|e| IfaceError::host("getifaddrs", e.into()))?;
        let mut out: Vec<Interface> = Vec::new();
        for a in addrs {
            let pos = match out.iter().position(|i| i.name == a.interface_name) {
                Some(p) => p,
                None => {
                    let index =
                        nix::net::if_::if_nametoindex(a.interface_name.as_str()).unwrap_or(0);
                    let mtu =
                        std::fs::read_to_string(format!("/sys/class/net/{}/mtu", a.interface_name))
                            .ok()
                            .and_then(|s| s.trim().parse().ok())
                            .unwrap_or(1500);
                    out.push(Interface {
                        name: a.interface_name.clone(),
                        index,
                        mtu,
                        ipv4: vec![],
                        ipv6: vec![],
                    });
                    out.len() - 1
                }
            };
            if let Some(addr) = a.address {
                if let Some(v4) = addr.as_sockaddr_in() {
                    out[pos].ipv4.push(v4.ip());
                } else if let Some(v6) = addr.as_sockaddr_in6() {
                    out[pos].ipv6.push(v6.ip());
                }
            }
        }
        Ok(out)
    }

    fn default_route_interface(&self, ipv6: bool) -> Result<Option<String>, IfaceError> {
        let (path, parse): (&str, fn(&str) -> Option<String>) = if ipv6 {
            ("/proc/net/ipv6_route", default_from_ipv6_route_line)
        } else {
            ("/proc/net/route", default_from_route_line)
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(IfaceError::host(path, e)),
        };
        Ok(text.lines().find_map(parse))
    }

    fn source_address_for(&self, dst: IpAddr) -> Result<IpAddr, IfaceError> {
        let bind: std::net::SocketAddr = if dst.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let sock =
            std::net::UdpSocket::bind(bind).map_err(|e| IfaceError::host("a UDP socket", e))?;
        // connect() on UDP sends nothing; it only asks the kernel for a route and source.
        sock.connect((dst, 9))
            .map_err(|e| IfaceError::host(format!("the route to {dst}"), e))?;
        Ok(sock
            .local_addr()
            .map_err(|e| IfaceError::host(format!("the source address toward {dst}"), e))?
            .ip())
    }
}

/// `/proc/net/route`: `Iface Destination Gateway Flags RefCnt Use Metric Mask ...`, hex.
fn default_from_route_line(line: &str) -> Option<String> {
    let f: Vec<&str> = line.split_whitespace().collect();
    (f.len() >= 8 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_string())
}

/// `/proc/net/ipv6_route`: dest, dest prefix, src, src prefix, next hop, metric, refcnt,
/// use, flags, device. Skip the loopback reject route.
fn default_from_ipv6_route_line(line: &str) -> Option<String> {
    let f: Vec<&str> = line.split_whitespace().collect();
    (f.len() >= 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" && f[9] != "lo")
        .then(|| f[9].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_route_parsing() {
        assert_eq!(
            default_from_route_line("eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0"),
            Some("eth0".into())
        );
        assert_eq!(
            default_from_route_line("eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0"),
            None
        );
        assert_eq!(
            default_from_ipv6_route_line("00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0"),
            Some("eth0".into())
        );
    }

    #[test]
    fn system_network_reads_loopback() {
        let ifs = SystemNetwork.interfaces().unwrap();
        let lo = ifs
            .iter()
            .find(|i| i.name == "lo")
            .expect("every Linux host has lo");
        assert!(lo.ipv4.contains(&std::net::Ipv4Addr::LOCALHOST));
        assert!(lo.index > 0);
        assert_eq!(
            SystemNetwork
                .source_address_for("127.0.0.1".parse().unwrap())
                .unwrap(),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
