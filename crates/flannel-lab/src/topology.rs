//! The lab's shape as values (pure): names, addresses, the emulator scenario and the network
//! config for a backend and mode. A VPC `vpc-lab` (172.16.0.0/16) with two subnets, each with
//! its own route table (`subnet-a` → `rtb-a`, the main table; `subnet-b` → `rtb-b`); the router
//! namespace holds both subnets' gateways, etcd, the emulator's API (plain HTTP) and its
//! metadata service at the real address; nodes alternate between the subnets (host-gw: all in
//! subnet-a, since its next hop must be on-link).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::Ipv4Addr;

pub const VPC_ID: &str = "vpc-lab";
pub const REGION: &str = "ap-guangzhou";
pub const POD_NETWORK: &str = "10.244.0.0/16";
/// Gateway of subnet-a; etcd and the cloud API listen here.
pub const ROUTER_A: Ipv4Addr = Ipv4Addr::new(172, 16, 1, 1);
pub const ROUTER_B: Ipv4Addr = Ipv4Addr::new(172, 16, 2, 1);
/// The CVM metadata service's real address (flanneld's default).
pub const METADATA_IP: &str = "169.254.0.23";
pub const API_PORT: u16 = 9000;
pub const ETCD_PORT: u16 = 2379;
/// The emulator's admin API, on the router's loopback.
pub const ADMIN: &str = "127.0.0.1:9100";
/// Instances the emulator knows from the start: nodes can be added up to this many.
pub const MAX_NODES: u8 = 200;
/// The lab account (an emulator credential, handed to agents through the environment).
pub const SECRET_ID: &str = "AKIDlab0000000000000000000000000000";
pub const SECRET_KEY: &str = "lab-secret-key-0000000000000000";
/// A route of the user's own, to another gateway: flannel must never touch it.
pub const USER_ROUTE: &str = "192.168.100.0/24";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    TencentVpc,
    HostGw,
    Vxlan,
    /// Upstream's udp (TUN + UDP 8285; upstream: for debugging).
    Udp,
    /// Upstream's wireguard (here: the userspace data path; no kernel module).
    Wireguard,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::TencentVpc => "tencent-vpc",
            Backend::HostGw => "host-gw",
            Backend::Vxlan => "vxlan",
            Backend::Udp => "udp",
            Backend::Wireguard => "wireguard",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    PerNode,
    Controller,
}

/// One of the VPC's two subnets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Subnet {
    A,
    B,
}

impl Subnet {
    pub fn id(self) -> &'static str {
        match self {
            Subnet::A => "subnet-a",
            Subnet::B => "subnet-b",
        }
    }
    pub fn table(self) -> &'static str {
        match self {
            Subnet::A => "rtb-a",
            Subnet::B => "rtb-b",
        }
    }
    pub fn gateway(self) -> Ipv4Addr {
        match self {
            Subnet::A => ROUTER_A,
            Subnet::B => ROUTER_B,
        }
    }
    /// The router's bridge for this subnet.
    pub fn bridge(self) -> &'static str {
        match self {
            Subnet::A => "br-a",
            Subnet::B => "br-b",
        }
    }
    fn third_octet(self) -> u8 {
        match self {
            Subnet::A => 1,
            Subnet::B => 2,
        }
    }
}

/// A lab's prefix: 1 to 8 of `a-z` and `0-9`. No `-`, `/` or `.`: the prefix names the lab's
/// namespaces (`<prefix>-vpc`, `<prefix>-node-N`) and its state directory, and `down` must
/// never match another lab's names or leave its own directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--prefix {0:?}: a lab prefix is 1 to 8 of a-z and 0-9")]
pub struct PrefixError(pub String);

pub fn check_prefix(prefix: &str) -> Result<(), PrefixError> {
    let ok = (1..=8).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    ok.then_some(()).ok_or_else(|| PrefixError(prefix.into()))
}

/// Whether namespace `name` is one of lab `prefix`'s: its router `<prefix>-vpc`, a node
/// `<prefix>-node-N` or a pod `<prefix>-node-N-pod`, matched whole.
pub fn is_lab_namespace(prefix: &str, name: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    if rest == "vpc" {
        return true;
    }
    let Some(node) = rest.strip_prefix("node-") else {
        return false;
    };
    let digits = node.strip_suffix("-pod").unwrap_or(node);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// What `up` was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSpec {
    /// Prefix of every namespace name (several labs can coexist, tests use their own).
    pub prefix: String,
    pub backend: Backend,
    pub mode: Mode,
    /// Routes per route table (the account quota; Tencent's default is 50).
    #[serde(default = "default_quota")]
    pub route_quota: usize,
    /// tencent-vpc with `"Fallback": "vxlan"`.
    #[serde(default)]
    pub fallback: bool,
    /// Kubernetes: a control plane, kubelets, and flannel from deploy/ (`up --kube`).
    #[serde(default)]
    pub kube: bool,
}

fn default_quota() -> usize {
    DEFAULT_QUOTA
}

/// Tencent's default routes per route table.
pub const DEFAULT_QUOTA: usize = 50;

/// One node (a CVM): its namespace, address and instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub index: u8,
    pub name: String,
    pub ns: String,
    pub pod_ns: String,
    pub subnet: Subnet,
    pub ip: Ipv4Addr,
    pub instance_id: String,
    /// The node's cable on the router's side.
    pub router_port: String,
}

impl NodeSpec {
    /// "node-1: 172.16.1.11 in subnet-a (ins-node-1)", for progress lines.
    pub fn summary(&self) -> String {
        format!(
            "{}: {} in {} ({})",
            self.name,
            self.ip,
            self.subnet.id(),
            self.instance_id
        )
    }
}

impl LabSpec {
    pub fn router(&self) -> String {
        format!("{}-vpc", self.prefix)
    }

    pub fn subnet_of(&self, index: u8) -> Subnet {
        match (self.backend, index % 2) {
            (Backend::HostGw, _) | (_, 1) => Subnet::A,
            _ => Subnet::B,
        }
    }

    pub fn node(&self, index: u8) -> NodeSpec {
        let subnet = self.subnet_of(index);
        let name = format!("node-{index}");
        NodeSpec {
            index,
            ns: format!("{}-{name}", self.prefix),
            pod_ns: format!("{}-{name}-pod", self.prefix),
            ip: Ipv4Addr::new(172, 16, subnet.third_octet(), 10 + index),
            instance_id: format!("ins-{name}"),
            router_port: format!("v{index}"),
            subnet,
            name,
        }
    }

    /// The emulator's scenario: the VPC, both tables (the user's VPN route in the main one),
    /// both subnets, an instance for every possible node, the real quota.
    pub fn scenario(&self) -> String {
        let instances: Vec<Value> = (1..=MAX_NODES)
            .map(|i| {
                let n = self.node(i);
                json!({
                    "instance_id": n.instance_id,
                    "private_ip": n.ip.to_string(),
                    "subnet_id": n.subnet.id(),
                    "mac": format!("52:54:00:00:{:02x}:{:02x}", n.subnet.third_octet(), i),
                    "name": n.name,
                })
            })
            .collect();
        json!({
            "region": REGION,
            "credentials": [{"secret_id": SECRET_ID, "secret_key": SECRET_KEY}],
            "vpcs": [{"vpc_id": VPC_ID, "cidr_block": "172.16.0.0/16"}],
            "route_tables": [
                {"route_table_id": "rtb-a", "vpc_id": VPC_ID, "name": "default", "main": true,
                 "routes": [{"destination_cidr_block": USER_ROUTE, "gateway_type": "VPN",
                             "gateway_id": "vpngw-lab", "route_description": "office VPN (not ours)"}]},
                {"route_table_id": "rtb-b", "vpc_id": VPC_ID, "name": "zone-b"}
            ],
            "subnets": [
                {"subnet_id": "subnet-a", "vpc_id": VPC_ID, "cidr_block": "172.16.1.0/24",
                 "zone": "ap-guangzhou-3", "name": "nodes-a"},
                {"subnet_id": "subnet-b", "vpc_id": VPC_ID, "cidr_block": "172.16.2.0/24",
                 "zone": "ap-guangzhou-4", "name": "nodes-b", "route_table_id": "rtb-b"}
            ],
            "instances": instances,
            "route_quota": self.route_quota,
            "rate_limit_per_second": 100
        })
        .to_string()
    }

    /// The network config written to etcd.
    pub fn net_config(&self) -> String {
        let backend = match (self.backend, self.mode) {
            (Backend::TencentVpc, Mode::PerNode) => json!({
                "Type": "tencent-vpc",
                "Endpoint": format!("http://{ROUTER_A}:{API_PORT}"),
                "ResyncInterval": 10
            }),
            (Backend::TencentVpc, Mode::Controller) => json!({
                "Type": "tencent-vpc",
                "Endpoint": format!("http://{ROUTER_A}:{API_PORT}"),
                "ResyncInterval": 10,
                "Mode": "controller",
                "VpcId": VPC_ID,
                "Region": REGION
            }),
            (other, _) => json!({ "Type": other.name() }),
        };
        let mut backend = backend;
        if self.fallback && self.backend == Backend::TencentVpc {
            backend["Fallback"] = "vxlan".into();
        }
        json!({ "Network": POD_NETWORK, "Backend": backend }).to_string()
    }

    pub fn etcd_endpoint(&self) -> String {
        format!("http://{ROUTER_A}:{ETCD_PORT}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(backend: Backend, mode: Mode) -> LabSpec {
        LabSpec {
            prefix: "fl".into(),
            backend,
            mode,
            route_quota: DEFAULT_QUOTA,
            fallback: false,
            kube: false,
        }
    }

    #[test]
    fn prefixes_are_short_plain_words_and_names_match_whole() {
        for ok in ["fl", "lt1", "fp", "abcdefgh"] {
            assert!(check_prefix(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "fp-node-1",
            "x/../fp1",
            "..",
            "fp bad",
            "ABC",
            "abcdefghi",
        ] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            check_prefix("fp bad").unwrap_err().to_string(),
            r#"--prefix "fp bad": a lab prefix is 1 to 8 of a-z and 0-9"#
        );
        for mine in ["fp-vpc", "fp-node-1", "fp-node-12-pod"] {
            assert!(is_lab_namespace("fp", mine), "{mine}");
        }
        for theirs in [
            "fp2-vpc",
            "fp-node-1-x",
            "fp-node-",
            "fp-nodes-1",
            "fpx-node-1",
            "fp-vpc2",
            "fl-node-1",
        ] {
            assert!(!is_lab_namespace("fp", theirs), "{theirs}");
        }
    }

    #[test]
    fn nodes_alternate_subnets_except_with_host_gw() {
        let s = spec(Backend::TencentVpc, Mode::PerNode);
        let n1 = s.node(1);
        let n2 = s.node(2);
        assert_eq!(
            (n1.subnet, n1.ip.to_string()),
            (Subnet::A, "172.16.1.11".into())
        );
        assert_eq!(
            (n2.subnet, n2.ip.to_string()),
            (Subnet::B, "172.16.2.12".into())
        );
        assert_eq!(n2.ns, "fl-node-2");
        assert_eq!(n2.pod_ns, "fl-node-2-pod");
        let h = spec(Backend::HostGw, Mode::PerNode);
        assert!((1..=MAX_NODES).all(|i| h.node(i).subnet == Subnet::A));
    }

    #[test]
    fn scenario_is_valid_for_the_emulator() {
        for b in [
            Backend::TencentVpc,
            Backend::HostGw,
            Backend::Vxlan,
            Backend::Udp,
            Backend::Wireguard,
        ] {
            let text = spec(b, Mode::PerNode).scenario();
            let s = tencent_vpc_emulator::scenario::Scenario::from_json(&text)
                .unwrap_or_else(|e| panic!("{b:?}: {e}"));
            assert_eq!(s.instances.len(), usize::from(MAX_NODES));
            assert_eq!(s.route_tables.len(), 2);
        }
    }

    #[test]
    fn network_configs() {
        assert_eq!(
            spec(Backend::TencentVpc, Mode::PerNode).net_config(),
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"tencent-vpc","Endpoint":"http://172.16.1.1:9000","ResyncInterval":10}}"#
        );
        assert!(spec(Backend::TencentVpc, Mode::Controller)
            .net_config()
            .contains(r#""Mode":"controller","VpcId":"vpc-lab""#));
        assert_eq!(
            spec(Backend::Vxlan, Mode::PerNode).net_config(),
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#
        );
    }
}
