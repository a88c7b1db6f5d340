//! The Kubernetes subnet manager's formats (pure): upstream's annotation names and prefix
//! rules, the annotations a node publishes, a node's lease from its podCIDRs, a peer from
//! another node's annotations, when a node update is a lease change, and the
//! NetworkUnavailable condition. The pure half of `--kube-subnet-mgr`; the client is
//! flanneld's `subnet::kube`.

use crate::lease::{Expiry, Lease, LeaseAttrs, SubnetKey};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Upstream's default `--kube-annotation-prefix`.
pub const DEFAULT_PREFIX: &str = "flannel.alpha.coreos.com";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeError {
    #[error("subnet/kube: prefix can contain at most single slash")]
    PrefixSlashes,
    #[error(
        "subnet/kube: prefix must be a DNS-style domain, optionally followed by /name-: {0:?}"
    )]
    PrefixInvalid(String),
    #[error("node {0:?} pod cidr not assigned")]
    NoPodCidr(String),
    #[error("node {0:?} pod cidrs should be IPv4/IPv6 only or dualstack")]
    PodCidrs(String),
    #[error("subnet {network:?} specified in the flannel net config doesn't contain {pod_cidr:?} PodCIDR of the {node:?} node")]
    OutsideNetwork {
        network: String,
        pod_cidr: String,
        node: String,
    },
    #[error("node {node:?}: podCIDR {value:?} is not a CIDR")]
    BadPodCidr { node: String, value: String },
}

/// A validated annotation prefix: names are `<prefix><name>`, the prefix ending in `/` or
/// `-` as upstream normalises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationPrefix(String);

fn domain_ok(d: &str) -> bool {
    let labels: Vec<&str> = d.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        })
}

impl AnnotationPrefix {
    /// Upstream's rules: no `/` → append `/`; a `/` not followed by a name ending in `-` →
    /// append `-`; at most one `/`; `domain/` or `domain/name-` with lower-case labels.
    pub fn parse(prefix: &str) -> Result<AnnotationPrefix, KubeError> {
        let mut p = prefix.to_string();
        match p.matches('/').count() {
            0 => p.push('/'),
            1 if !(p.ends_with('/') || p.ends_with('-')) => p.push('-'),
            1 => {}
            _ => return Err(KubeError::PrefixSlashes),
        }
        let (domain, name) = p.split_once('/').expect("one slash");
        let name_ok = name.is_empty()
            || (name.ends_with('-')
                && name[..name.len() - 1].bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                })
                && name.len() > 1);
        if !domain_ok(domain) || !name_ok {
            return Err(KubeError::PrefixInvalid(prefix.to_string()));
        }
        Ok(AnnotationPrefix(p))
    }

    pub fn name(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.0)
    }
}

/// What a node publishes: `kube-subnet-manager`, `backend-type`, `backend-data` (JSON, or
/// `null`), `public-ip`, and for IPv6 `backend-v6-data`, `public-ipv6`. vxlan with no IPv4
/// data (IPv6 only) leaves `backend-data` and `public-ip` out, as upstream.
pub fn node_annotations(prefix: &AnnotationPrefix, attrs: &LeaseAttrs) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert(prefix.name("kube-subnet-manager"), "true".into());
    a.insert(prefix.name("backend-type"), attrs.backend_type.clone());
    let skip_v4 = attrs.backend_type == "vxlan" && attrs.backend_data.is_none();
    if !skip_v4 {
        let data = attrs
            .backend_data
            .as_ref()
            .map_or_else(|| "null".to_string(), Value::to_string);
        a.insert(prefix.name("backend-data"), data);
        a.insert(prefix.name("public-ip"), attrs.public_ip.to_string());
    }
    if let Some(v6) = attrs.public_ipv6 {
        let data = attrs
            .backend_v6_data
            .as_ref()
            .map_or_else(|| "null".to_string(), Value::to_string);
        a.insert(prefix.name("backend-v6-data"), data);
        a.insert(prefix.name("public-ipv6"), v6.to_string());
    }
    a
}

/// The parts of a Node the manager reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    /// `spec.podCIDRs` (or `spec.podCIDR` when the list is empty).
    pub pod_cidrs: Vec<String>,
    pub annotations: BTreeMap<String, String>,
}

/// This node's lease: its podCIDRs, checked against the network(s).
pub fn own_subnets(
    node: &NodeView,
    network: Option<Ipv4Net>,
    ipv6_network: Option<Ipv6Net>,
) -> Result<(Option<Ipv4Net>, Option<Ipv6Net>), KubeError> {
    if node.pod_cidrs.is_empty() {
        return Err(KubeError::NoPodCidr(node.name.clone()));
    }
    if node.pod_cidrs.len() > 2 {
        return Err(KubeError::PodCidrs(node.name.clone()));
    }
    let (mut v4, mut v6) = (None, None);
    for c in &node.pod_cidrs {
        match c.parse::<IpNet>() {
            Ok(IpNet::V4(n)) if v4.is_none() => v4 = Some(n.trunc()),
            Ok(IpNet::V6(n)) if v6.is_none() => v6 = Some(n.trunc()),
            Ok(_) => return Err(KubeError::PodCidrs(node.name.clone())),
            Err(_) => {
                return Err(KubeError::BadPodCidr {
                    node: node.name.clone(),
                    value: c.clone(),
                })
            }
        }
    }
    let outside = |network: String, pod_cidr: String| KubeError::OutsideNetwork {
        network,
        pod_cidr,
        node: node.name.clone(),
    };
    if let (Some(net), Some(s)) = (network, v4) {
        if !net.contains(&s) {
            return Err(outside(net.to_string(), s.to_string()));
        }
    }
    if let (Some(net), Some(s)) = (ipv6_network, v6) {
        if !net.contains(&s) {
            return Err(outside(net.to_string(), s.to_string()));
        }
    }
    Ok((v4, v6))
}

/// A peer's lease from its node, if it runs a kube subnet manager: `public-ip[v6]-overwrite`
/// wins over `public-ip[v6]`.
pub fn peer_lease(prefix: &AnnotationPrefix, node: &NodeView) -> Option<Lease> {
    let a = &node.annotations;
    if a.get(&prefix.name("kube-subnet-manager"))
        .map(String::as_str)
        != Some("true")
    {
        return None;
    }
    let get = |k: &str| a.get(&prefix.name(k)).map(String::as_str);
    let (v4, v6) = own_subnets(node, None, None).ok()?;
    let public_ip: Ipv4Addr = get("public-ip-overwrite")
        .or(get("public-ip"))
        .and_then(|s| s.parse().ok())
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    let public_ipv6: Option<Ipv6Addr> = get("public-ipv6-overwrite")
        .or(get("public-ipv6"))
        .and_then(|s| s.parse().ok());
    let json_of = |k: &str| {
        get(k)
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
            .filter(|v| !v.is_null())
    };
    let mut attrs = LeaseAttrs::new(public_ip);
    attrs.public_ipv6 = public_ipv6;
    attrs.backend_type = get("backend-type").unwrap_or_default().to_string();
    attrs.backend_data = json_of("backend-data");
    attrs.backend_v6_data = json_of("backend-v6-data");
    Some(Lease {
        // An IPv6-only lease has the unspecified IPv4 key, as the etcd codec writes it.
        key: SubnetKey {
            ipv4: v4.unwrap_or_default(),
            ipv6: v6,
        },
        attrs,
        expiry: Expiry::Node,
    })
}

/// Whether a node update changes its peer lease: backend type, data or public address, in
/// either family (upstream drops a dual-stack update unless both families changed).
pub fn lease_changed(prefix: &AnnotationPrefix, old: &NodeView, new: &NodeView) -> bool {
    [
        "kube-subnet-manager",
        "backend-type",
        "backend-data",
        "public-ip",
        "public-ip-overwrite",
        "backend-v6-data",
        "public-ipv6",
        "public-ipv6-overwrite",
    ]
    .iter()
    .any(|k| old.annotations.get(&prefix.name(k)) != new.annotations.get(&prefix.name(k)))
}

/// The status condition a node gets once its network is (`up`) or is not in place.
/// The node's NetworkUnavailable condition (False once the network is `up`), stamped `now`
/// (RFC 3339) as its last heartbeat and transition, as upstream sets both.
pub fn network_unavailable(up: bool, reason: &str, message: &str, now: &str) -> Value {
    json!({
        "type": "NetworkUnavailable",
        "status": if up { "False" } else { "True" },
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
        "lastHeartbeatTime": now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> AnnotationPrefix {
        AnnotationPrefix::parse(s).unwrap()
    }

    #[test]
    fn prefix_rules_are_upstreams() {
        assert_eq!(
            p(DEFAULT_PREFIX).name("backend-type"),
            "flannel.alpha.coreos.com/backend-type"
        );
        assert_eq!(
            p("org.com/9").name("backend-type"),
            "org.com/9-backend-type"
        );
        assert_eq!(
            p("org.com/flannel-").name("public-ip"),
            "org.com/flannel-public-ip"
        );
        assert_eq!(p("org.com/").name("public-ip"), "org.com/public-ip");
        assert_eq!(
            AnnotationPrefix::parse("a.b/c/d").unwrap_err().to_string(),
            "subnet/kube: prefix can contain at most single slash"
        );
        assert!(AnnotationPrefix::parse("Bad.Domain").is_err());
        assert!(AnnotationPrefix::parse("nodomain").is_err());
    }

    fn attrs() -> LeaseAttrs {
        let mut a = LeaseAttrs::new("172.16.1.7".parse().unwrap());
        a.backend_type = "vxlan".into();
        a.backend_data = Some(json!({"VNI": 1, "VtepMAC": "02:42:0a:f4:01:00"}));
        a
    }

    #[test]
    fn node_annotations_golden() {
        let a = node_annotations(&p(DEFAULT_PREFIX), &attrs());
        let text: Vec<String> = a.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            text,
            [
                r#"flannel.alpha.coreos.com/backend-data={"VNI":1,"VtepMAC":"02:42:0a:f4:01:00"}"#,
                "flannel.alpha.coreos.com/backend-type=vxlan",
                "flannel.alpha.coreos.com/kube-subnet-manager=true",
                "flannel.alpha.coreos.com/public-ip=172.16.1.7",
            ]
        );
        let mut hg = attrs();
        hg.backend_type = "host-gw".into();
        hg.backend_data = None;
        assert_eq!(
            node_annotations(&p(DEFAULT_PREFIX), &hg)["flannel.alpha.coreos.com/backend-data"],
            "null"
        );
    }

    fn node(cidrs: &[&str]) -> NodeView {
        NodeView {
            name: "n1".into(),
            pod_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn own_lease_from_pod_cidrs_with_upstreams_errors() {
        let net = Some("10.244.0.0/16".parse().unwrap());
        assert_eq!(
            own_subnets(&node(&["10.244.3.0/24"]), net, None).unwrap().0,
            Some("10.244.3.0/24".parse().unwrap())
        );
        assert_eq!(
            own_subnets(&node(&[]), net, None).unwrap_err().to_string(),
            r#"node "n1" pod cidr not assigned"#
        );
        assert_eq!(
            own_subnets(&node(&["10.9.3.0/24"]), net, None)
                .unwrap_err()
                .to_string(),
            r#"subnet "10.244.0.0/16" specified in the flannel net config doesn't contain "10.9.3.0/24" PodCIDR of the "n1" node"#
        );
        assert_eq!(
            own_subnets(&node(&["10.244.3.0/24", "10.244.4.0/24"]), net, None)
                .unwrap_err()
                .to_string(),
            r#"node "n1" pod cidrs should be IPv4/IPv6 only or dualstack"#
        );
        let (v4, v6) =
            own_subnets(&node(&["10.244.3.0/24", "fd00:0:0:3::/64"]), net, None).unwrap();
        assert!(v4.is_some() && v6.is_some(), "dual stack");
    }

    #[test]
    fn peers_from_annotations_and_changes_in_either_family() {
        let prefix = p(DEFAULT_PREFIX);
        let mut n = node(&["10.244.3.0/24", "fd00:0:0:3::/64"]);
        assert!(
            peer_lease(&prefix, &n).is_none(),
            "no kube-subnet-manager annotation"
        );
        n.annotations = node_annotations(&prefix, &attrs());
        n.annotations
            .insert(prefix.name("public-ip-overwrite"), "1.2.3.4".into());
        let l = peer_lease(&prefix, &n).unwrap();
        assert_eq!(l.attrs.public_ip.to_string(), "1.2.3.4");
        assert_eq!(l.attrs.backend_type, "vxlan");
        assert_eq!(l.subnet(), Some("10.244.3.0/24".parse().unwrap()));
        let mut changed = n.clone();
        changed
            .annotations
            .insert(prefix.name("public-ipv6"), "fd00::9".into());
        assert!(
            lease_changed(&prefix, &n, &changed),
            "a v6-only change counts"
        );
        let mut cidr_only = n.clone();
        cidr_only.pod_cidrs = vec!["10.244.9.0/24".into()];
        assert!(
            !lease_changed(&prefix, &n, &cidr_only),
            "podCIDR changes are ignored"
        );
    }

    #[test]
    fn network_unavailable_condition() {
        assert_eq!(
            network_unavailable(
                true,
                "FlannelIsUp",
                "Flannel is running on this node",
                "2026-12-03T16:00:00Z"
            )
            .to_string(),
            r#"{"type":"NetworkUnavailable","status":"False","reason":"FlannelIsUp","message":"Flannel is running on this node","lastTransitionTime":"2026-12-03T16:00:00Z","lastHeartbeatTime":"2026-12-03T16:00:00Z"}"#
        );
    }
}
