//! `/run/flannel/subnet.env`: the file the CNI plugin and users read. Rendering is pure and
//! byte-exact with upstream's `WriteSubnetFile`; reading follows `ReadCIDR[s]FromSubnetFile`
//! (dotenv syntax, comma-separated values, host bits masked, bad parts skipped).

use crate::ip;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::BTreeMap;

/// What subnet.env says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK` and `FLANNEL_SUBNET` (IPv4 enabled).
    pub ipv4: Option<(Ipv4Net, Ipv4Net)>,
    /// `FLANNEL_IPV6_NETWORK` and `FLANNEL_IPV6_SUBNET` (IPv6 enabled).
    pub ipv6: Option<(Ipv6Net, Ipv6Net)>,
    pub mtu: u32,
    pub ip_masq: bool,
}

impl SubnetEnv {
    /// The file's exact content. FLANNEL_SUBNET is the lease address plus one, with the
    /// lease's prefix (`10.5.52.0/24` → `10.5.52.1/24`).
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some((network, subnet)) = self.ipv4 {
            let (first, len) = ip::first_host_v4(subnet);
            s.push_str(&format!(
                "FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={first}/{len}\n"
            ));
        }
        if let Some((network, subnet)) = self.ipv6 {
            let (first, len) = ip::first_host_v6(subnet);
            s.push_str(&format!(
                "FLANNEL_IPV6_NETWORK={network}\nFLANNEL_IPV6_SUBNET={first}/{len}\n"
            ));
        }
        s.push_str(&format!(
            "FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.mtu, self.ip_masq
        ));
        s
    }
}

/// Parse dotenv text into key/value pairs: `KEY=VALUE` lines, `#` comments, an optional
/// `export ` prefix, and single or double quotes around the value.
pub fn parse_dotenv(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let mut v = v.trim();
        if v.len() >= 2
            && ((v.starts_with('"') && v.ends_with('"'))
                || (v.starts_with('\'') && v.ends_with('\'')))
        {
            v = &v[1..v.len() - 1];
        } else if let Some(i) = v.find(" #") {
            v = v[..i].trim_end();
        }
        out.insert(k.trim().to_string(), v.to_string());
    }
    out
}

/// Every CIDR listed under `key` (comma-separated), host bits masked, bad parts skipped.
pub fn read_cidrs(text: &str, key: &str) -> Vec<IpNet> {
    parse_dotenv(text)
        .get(key)
        .map(|v| {
            v.split(',')
                .filter_map(|p| p.trim().parse::<IpNet>().ok())
                .map(|n| n.trunc())
                .collect()
        })
        .unwrap_or_default()
}

/// The single CIDR under `key`: none when absent, unparseable or listed more than once.
pub fn read_cidr(text: &str, key: &str) -> Option<IpNet> {
    match read_cidrs(text, key).as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// The previous IPv4 subnet (`FLANNEL_SUBNET`), as the etcd manager uses it.
pub fn previous_subnet(text: &str) -> Option<Ipv4Net> {
    match read_cidr(text, "FLANNEL_SUBNET")? {
        IpNet::V4(n) => Some(n),
        IpNet::V6(_) => None,
    }
}

/// The previous IPv6 subnet (`FLANNEL_IPV6_SUBNET`).
pub fn previous_ipv6_subnet(text: &str) -> Option<Ipv6Net> {
    match read_cidr(text, "FLANNEL_IPV6_SUBNET")? {
        IpNet::V6(n) => Some(n),
        IpNet::V4(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_acceptance_14() {
        let env = SubnetEnv {
            ipv4: Some((
                "10.5.0.0/16".parse().unwrap(),
                "10.5.52.0/24".parse().unwrap(),
            )),
            ipv6: None,
            mtu: 1450,
            ip_masq: false,
        };
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
    }

    #[test]
    fn golden_dual_stack() {
        let env = SubnetEnv {
            ipv4: Some((
                "10.244.0.0/16".parse().unwrap(),
                "10.244.1.0/24".parse().unwrap(),
            )),
            ipv6: Some((
                "2001:cafe:42::/56".parse().unwrap(),
                "2001:cafe:42::/64".parse().unwrap(),
            )),
            mtu: 1500,
            ip_masq: true,
        };
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn ipv6_only_has_no_ipv4_lines() {
        let env = SubnetEnv {
            ipv4: None,
            ipv6: Some((
                "fc00::/48".parse().unwrap(),
                "fc00:0:0:5::/64".parse().unwrap(),
            )),
            mtu: 1500,
            ip_masq: false,
        };
        assert!(!env.render().contains("FLANNEL_NETWORK="));
    }

    #[test]
    fn read_back_acceptance_15() {
        let text = "FLANNEL_SUBNET=10.244.1.0/24,not-a-cidr,10.244.2.0/24\n";
        assert_eq!(read_cidrs(text, "FLANNEL_SUBNET").len(), 2);
        assert_eq!(read_cidr(text, "FLANNEL_SUBNET"), None);
        assert_eq!(
            read_cidr("FLANNEL_SUBNET=not-a-cidr\n", "FLANNEL_SUBNET"),
            None
        );
        assert_eq!(read_cidr("", "FLANNEL_SUBNET"), None);
    }

    #[test]
    fn read_back_masks_host_bits() {
        let text = "# comment\nexport FLANNEL_SUBNET=\"10.5.52.1/24\"\n";
        assert_eq!(previous_subnet(text), Some("10.5.52.0/24".parse().unwrap()));
        let rendered = SubnetEnv {
            ipv4: Some((
                "10.5.0.0/16".parse().unwrap(),
                "10.5.52.0/24".parse().unwrap(),
            )),
            ipv6: Some((
                "fd00::/56".parse().unwrap(),
                "fd00:0:0:7::/64".parse().unwrap(),
            )),
            mtu: 1450,
            ip_masq: true,
        }
        .render();
        assert_eq!(
            previous_subnet(&rendered),
            Some("10.5.52.0/24".parse().unwrap())
        );
        assert_eq!(
            previous_ipv6_subnet(&rendered),
            Some("fd00:0:0:7::/64".parse().unwrap())
        );
    }
}
