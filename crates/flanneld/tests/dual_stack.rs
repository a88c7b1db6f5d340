//! Dual-stack and IPv6-only for real (root; CI runs as root): vxlan with `flannel.1` and
//! `flannel-v6.1`, host-gw over both families, pods through our CNI plugin with an address of
//! each family reaching each other over both, upstream's IPv6 masquerade rules, and a
//! dual-stack lease written the way upstream flanneld writes it (through etcdctl).

#[path = "common/cluster.rs"]
mod cluster;

use cluster::{ping6_all, Cluster};
use flanneld_testing::netns::{wait_for, Underlay};
use std::time::Duration;

const REPAIR: Duration = Duration::from_secs(30);

fn subnet6(node: &cluster::Node) -> String {
    let text = std::fs::read_to_string(node.subnet_env()).unwrap();
    let cidr: ipnet::IpNet = flannel_core::subnet_env::read_cidr(&text, "FLANNEL_IPV6_SUBNET")
        .expect("FLANNEL_IPV6_SUBNET");
    cidr.trunc().to_string()
}

#[test]
#[ignore = "needs root (network namespaces) and etcd: run with --include-ignored"]
fn vxlan_dual_stack_pods_reach_each_other_over_both_families() {
    let config = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#;
    let c = Cluster::start_with("vx6", config, 2, &["--ip-masq"], |ns, i| {
        Underlay::add_ipv6(ns, i)
    });
    let n1 = c.node(1);
    let dev6 = n1.ns.ok(&["ip", "-d", "link", "show", "flannel-v6.1"]);
    assert!(
        dev6.contains("vxlan id 1") && dev6.contains("local fd10::1"),
        "{dev6}"
    );
    assert!(dev6.contains("mtu 1430"), "{dev6}");
    let env = std::fs::read_to_string(n1.subnet_env()).unwrap();
    assert!(env.contains("FLANNEL_MTU=1430\n"), "{env}");
    let p6 = subnet6(n1);
    let addrs = n1
        .ns
        .ok(&["ip", "-6", "addr", "show", "dev", "flannel-v6.1"]);
    assert!(
        addrs.contains(&format!("{}/128", p6.trim_end_matches("/64"))),
        "{addrs}"
    );

    // Our lease as upstream writes a dual-stack vxlan lease.
    let key = format!(
        "/coreos.com/network/subnets/{}&{}",
        n1.subnet().replace('/', "-"),
        p6.replace('/', "-")
    );
    let value = c.etcd.etcdctl(&["get", "--print-value-only", &key]);
    let lease: serde_json::Value =
        serde_json::from_str(value.trim()).unwrap_or_else(|e| panic!("{key}: {value:?}: {e}"));
    assert_eq!(lease["PublicIPv6"], "fd10::1");
    assert_eq!(lease["BackendV6Data"]["VNI"], 1);
    let mac6 = n1.ns.ok(&["cat", "/sys/class/net/flannel-v6.1/address"]);
    assert_eq!(lease["BackendV6Data"]["VtepMAC"], mac6.trim());

    let pods = vec![c.add_pod(1, 1, "0.3.1"), c.add_pod(2, 1, "1.0.0")];
    c.all_pods_reach_each_other(&pods);
    ping6_all(&pods);

    // Upstream's IPv6 masquerade rules, ip6tables' own text.
    let nat6: Vec<String> = n1
        .ns
        .ok(&["ip6tables", "-t", "nat", "-S"])
        .lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_string)
        .collect();
    assert_eq!(
        nat6,
        cluster::upstream_nat_rules("fd00:10:244::/56", &p6, "ff00::/8")
    );

    // A dual-stack lease as upstream flanneld writes it is programmed over both families.
    let upstream = r#"{"PublicIP":"172.16.0.9","PublicIPv6":"fd10::9","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:2a:9c:11:22:33"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:2a:9c:11:22:66"}}"#;
    let key = "/coreos.com/network/subnets/10.244.200.0-24&fd00:10:244:c8::-64";
    c.etcd.etcdctl(&["put", key, upstream]);
    wait_for("IPv6 entries for the upstream lease", REPAIR, || {
        let routes = n1.ns.ok(&["ip", "-6", "route"]);
        let neigh = n1
            .ns
            .ok(&["ip", "-6", "neigh", "show", "dev", "flannel-v6.1"]);
        let fdb = n1.ns.ok(&["bridge", "fdb", "show", "dev", "flannel-v6.1"]);
        (routes.contains("fd00:10:244:c8::/64 via fd00:10:244:c8:: dev flannel-v6.1")
            && neigh.contains("fd00:10:244:c8:: lladdr 0e:2a:9c:11:22:66 PERMANENT")
            && fdb.contains("0e:2a:9c:11:22:66 dst fd10::9"))
        .then_some(())
        .ok_or(format!("{routes}\n{neigh}\n{fdb}"))
    });
    c.etcd.etcdctl(&["del", key]);
    wait_for("the upstream lease's IPv6 entries to go", REPAIR, || {
        let routes = n1.ns.ok(&["ip", "-6", "route"]);
        (!routes.contains("fd00:10:244:c8::/64"))
            .then_some(())
            .ok_or(routes)
    });

    // flannel-v6.1 deleted behind our back comes back with the same MAC.
    n1.ns.ok(&["ip", "link", "del", "flannel-v6.1"]);
    ping6_all(&pods);
    let again = n1.ns.ok(&["cat", "/sys/class/net/flannel-v6.1/address"]);
    assert_eq!(again.trim(), mac6.trim());
}

#[test]
#[ignore = "needs root (network namespaces) and etcd: run with --include-ignored"]
fn ipv6_only_vxlan_and_dual_stack_host_gw() {
    let v6only = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:20:244::/56","Backend":{"Type":"vxlan"}}"#;
    let c = Cluster::start_with("v6o", v6only, 2, &["--ip-masq"], |ns, i| {
        Underlay::add_ipv6(ns, i)
    });
    let n1 = c.node(1);
    assert!(!n1
        .ns
        .run(&["ip", "link", "show", "flannel.1"], None)
        .status
        .success());
    let pods = vec![c.add_pod(1, 1, "1.0.0"), c.add_pod(2, 1, "1.0.0")];
    ping6_all(&pods);
    drop(pods);
    drop(c);

    let hostgw = r#"{"Network":"10.245.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:30:244::/56","Backend":{"Type":"host-gw"}}"#;
    let c = Cluster::start_with("hg6", hostgw, 2, &["--ip-masq"], |ns, i| {
        Underlay::add_ipv6(ns, i)
    });
    let pods = vec![c.add_pod(1, 1, "0.3.1"), c.add_pod(2, 1, "1.0.0")];
    c.all_pods_reach_each_other(&pods);
    ping6_all(&pods);
    let routes = c.node(1).ns.ok(&["ip", "-6", "route"]);
    assert!(
        routes.contains(&format!(
            "{} via fd10::2 dev eth0 proto 87",
            subnet6(c.node(2))
        )),
        "{routes}"
    );
}
