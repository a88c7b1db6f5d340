//! Leases an attacker or a bug wrote into the lab's etcd, and a route quota below what the
//! cluster needs (root; CI runs as root). Every lab has its own prefix and is removed on drop.

mod common;

use common::{calls, full, metric, metrics, routes, up, up_until};
use flannel_lab::lab::{Lab, Reach};
use flannel_lab::netns::{wait_until, Netns};
use flannel_lab::topology::{Backend, LabSpec, Mode, NodeSpec, POD_NETWORK};
use serde_json::json;
use std::time::{Duration, Instant};

/// What a hostile lease's value says, for leases of `backend` (so that, were it admitted,
/// the backend would program it). Its PublicIP is an address in subnet-a no node has.
fn value(backend: Backend, vtep: &str, private_ip: &str) -> String {
    let mut v =
        json!({"PublicIP": "172.16.1.99", "PublicIPv6": null, "BackendType": backend.name()});
    match backend {
        Backend::Vxlan => v["BackendData"] = json!({"VNI": 1, "VtepMAC": vtep}),
        Backend::TencentVpc => {
            v["BackendData"] = json!({"PrivateIP": private_ip, "SubnetId": "subnet-a"})
        }
        _ => {}
    }
    v.to_string()
}

fn key(subnet: &str) -> String {
    format!("/coreos.com/network/subnets/{}", subnet.replace('/', "-"))
}

/// Our kernel routes (protocol 87) outside the pod network on a node.
fn strays_on(n: &NodeSpec) -> Vec<String> {
    let text = Netns::named(&n.ns)
        .ok(&["ip", "route", "show", "table", "main", "proto", "87"])
        .unwrap_or_default();
    let network: ipnet::Ipv4Net = POD_NETWORK.parse().unwrap();
    text.lines()
        .filter(|l| {
            let dst = l.split_whitespace().next().unwrap_or_default();
            let dst = if dst == "default" { "0.0.0.0/0" } else { dst };
            !dst.parse::<ipnet::Ipv4Net>().is_ok_and(|d| {
                network.contains(&d.network()) && d.prefix_len() >= network.prefix_len()
            })
        })
        .map(str::to_string)
        .collect()
}

/// Routes with our cluster's tag outside the pod network, in any table.
fn vpc_strays(lab: &Lab) -> Vec<String> {
    let network: ipnet::Ipv4Net = POD_NETWORK.parse().unwrap();
    lab.cloud()
        .unwrap()
        .route_tables
        .iter()
        .flat_map(|t| {
            t.routes
                .iter()
                .filter(|r| r.route_description.starts_with("flannel:"))
                .filter(|r| {
                    let d = r.destination_cidr_block;
                    !(network.contains(&d.network()) && d.prefix_len() >= network.prefix_len())
                })
                .map(move |r| format!("{}: {}", t.route_table_id, r.destination_cidr_block))
        })
        .collect()
}

/// Where the feed's refusals are counted: every node, and the controller in the router.
fn gates(lab: &Lab) -> Vec<String> {
    let mut ns: Vec<String> = lab.nodes().iter().map(|n| n.ns.clone()).collect();
    if lab.spec().mode == Mode::Controller && lab.spec().backend == Backend::TencentVpc {
        ns.push(lab.spec().router());
    }
    ns
}

fn refused(ns: &str, reason: &str) -> f64 {
    metric(
        &metrics(ns),
        &format!("flannel_leases_refused{{reason=\"{reason}\"}}"),
    )
}

fn hostile_leases_never_become_routes(prefix: &str, backend: Backend, mode: Mode) {
    let mut t = up(prefix, backend, mode, 3);
    let lab = &mut t.lab;
    let nodes = lab.nodes();
    let kernel = matches!(backend, Backend::HostGw | Backend::Vxlan);
    let own1: ipnet::Ipv4Net = lab.lease_of(&nodes[0]).unwrap().parse().unwrap();
    // What an earlier version left: our routes outside the network on node-1 (one with no
    // gateway, as `via 0.0.0.0` installed it), and a route with our tag outside the network
    // via a lease holder (node-2) in the VPC.
    if kernel {
        let ns1 = Netns::named(&nodes[0].ns);
        ns1.ok(&[
            "ip",
            "route",
            "add",
            "192.168.77.0/24",
            "via",
            "172.16.1.1",
            "proto",
            "87",
        ])
        .unwrap();
        ns1.ok(&[
            "ip",
            "route",
            "add",
            "10.99.0.0/24",
            "dev",
            "eth0",
            "proto",
            "87",
        ])
        .unwrap();
    } else {
        let body = json!({"DestinationCidrBlock": "172.31.9.0/24", "GatewayType": "NORMAL_CVM",
            "GatewayId": nodes[1].ip.to_string(),
            "RouteDescription": format!("flannel:10-244-0-0-16:{}", nodes[1].ip)});
        lab.admin(
            "POST",
            "/route-tables/rtb-b/routes",
            Some(&body.to_string()),
        )
        .unwrap();
    }
    // Every class of bad lease.
    let inside_own = format!(
        "{}/25",
        std::net::Ipv4Addr::from(u32::from(own1.network()) + 128)
    );
    let mut hostile: Vec<(String, String)> = [
        "0.0.0.0/1",
        "128.0.0.0/1",
        "127.0.0.0/8",
        "192.168.100.0/24",
        POD_NETWORK,
    ]
    .iter()
    .map(|s| {
        (
            s.to_string(),
            value(backend, "0e:00:00:00:00:99", "172.16.1.99"),
        )
    })
    .collect();
    hostile.push((
        inside_own.clone(),
        value(backend, "0e:00:00:00:00:98", "172.16.1.98"),
    ));
    let mut no_address = value(backend, "0e:00:00:00:00:97", "172.16.1.97");
    no_address = no_address.replace("172.16.1.99", "0.0.0.0");
    hostile.push(("10.244.250.0/24".into(), no_address));
    if backend == Backend::Vxlan {
        hostile.push((
            "10.244.251.0/24".into(),
            value(backend, "ff:ff:ff:ff:ff:ff", ""),
        ));
    }
    if backend == Backend::TencentVpc {
        hostile.push(("10.244.252.0/24".into(), value(backend, "", "8.8.8.8")));
    }
    for (subnet, v) in &hostile {
        lab.etcdctl(&["put", &key(subnet), v]).unwrap();
    }

    // Every gate has seen and refused them (the five shapes outside the network at least).
    wait_until(Duration::from_secs(30), || {
        let behind: Vec<String> = gates(lab)
            .into_iter()
            .filter(|ns| refused(ns, "outside_network") < 5.0)
            .collect();
        behind
            .is_empty()
            .then_some(())
            .ok_or_else(|| format!("not yet: {behind:?}"))
    })
    .unwrap();
    assert!(refused(&nodes[0].ns, "overlaps_own") >= 1.0);
    assert!(refused(&nodes[1].ns, "public_ip") >= 1.0);
    // No route outside the network on any node (the old strays gone within a resync), the
    // node's own subnet still on cni0, no such route in any table.
    wait_until(Duration::from_secs(30), || {
        let bad: Vec<String> = nodes.iter().flat_map(strays_on).collect();
        let vpc = vpc_strays(lab);
        (bad.is_empty() && vpc.is_empty())
            .then_some(())
            .ok_or_else(|| format!("kernel: {bad:?}; VPC: {vpc:?}"))
    })
    .unwrap();
    let ns1 = Netns::named(&nodes[0].ns);
    if kernel {
        let own_route = ns1.ok(&["ip", "route", "show", &own1.to_string()]).unwrap();
        assert!(own_route.contains("cni0"), "{own_route}");
    }
    if backend == Backend::Vxlan {
        let neigh = ns1
            .ok(&["ip", "neigh", "show", "dev", "flannel.1"])
            .unwrap();
        assert!(
            !neigh.contains(&own1.network().to_string()),
            "a neighbour for our own VTEP address: {neigh}"
        );
        assert!(!neigh.contains("ff:ff:ff:ff:ff:ff"), "{neigh}");
    }
    for table in routes(lab).values() {
        for (dest, _) in &hostile {
            if *dest != "192.168.100.0/24" {
                assert!(!table.contains_key(dest), "{dest} routed: {table:?}");
            }
        }
    }
    let m = lab.ping_matrix();
    assert!(full(&m), "pods keep reaching each other: {m:?}");

    // The leases go: nothing of them remains, and nothing is counted as refused.
    for (subnet, _) in &hostile {
        lab.etcdctl(&["del", &key(subnet)]).unwrap();
    }
    wait_until(Duration::from_secs(30), || {
        let left: Vec<String> = gates(lab)
            .into_iter()
            .filter(|ns| {
                metrics(ns)
                    .lines()
                    .any(|l| l.starts_with("flannel_leases_refused") && !l.ends_with(" 0"))
            })
            .collect();
        left.is_empty()
            .then_some(())
            .ok_or_else(|| format!("still refusing: {left:?}"))
    })
    .unwrap();
    for n in &nodes {
        let r = Netns::named(&n.ns).ok(&["ip", "route"]).unwrap();
        for gone in ["10.244.250.0", "10.244.251.0", "10.244.252.0", &inside_own] {
            assert!(!r.contains(gone), "{} still routes {gone}: {r}", n.name);
        }
    }
    assert!(full(&lab.ping_matrix()));
}

#[test]
#[ignore = "needs root (network namespaces) and etcd: run with --include-ignored"]
fn hostile_leases_with_host_gw() {
    hostile_leases_never_become_routes("lh1", Backend::HostGw, Mode::PerNode);
}

#[test]
#[ignore = "needs root (network namespaces) and etcd: run with --include-ignored"]
fn hostile_leases_with_vxlan() {
    hostile_leases_never_become_routes("lh2", Backend::Vxlan, Mode::PerNode);
}

#[test]
#[ignore = "needs root (network namespaces) and etcd: run with --include-ignored"]
fn hostile_leases_with_tencent_vpc_per_node() {
    hostile_leases_never_become_routes("lh3", Backend::TencentVpc, Mode::PerNode);
}

#[test]
#[ignore = "needs root (network namespaces) and etcd: run with --include-ignored"]
fn hostile_leases_with_tencent_vpc_controller() {
    hostile_leases_never_become_routes("lh4", Backend::TencentVpc, Mode::Controller);
}

/// Quota 3 with the user's VPN route in rtb-a: room for 2 of our 3 routes there.
fn below_the_quota(prefix: &str, mode: Mode) {
    let t = up_until(
        LabSpec {
            prefix: prefix.into(),
            backend: Backend::TencentVpc,
            mode,
            route_quota: 3,
            fallback: false,
            kube: false,
        },
        3,
        Reach::Nothing,
    );
    let lab = &t.lab;
    let ours = |lab: &Lab, table: &str| {
        routes(lab)[table]
            .keys()
            .filter(|d| d.starts_with("10.244."))
            .count()
    };
    wait_until(Duration::from_secs(60), || {
        let (a, b) = (ours(lab, "rtb-a"), ours(lab, "rtb-b"));
        (a == 2 && b == 3)
            .then_some(())
            .ok_or_else(|| format!("rtb-a {a}, rtb-b {b}"))
    })
    .unwrap();
    // Settled below the quota: a minute costs at most one DescribeVpcLimits and one
    // DescribeRouteTables per writer per ResyncInterval (10 s; +1 for a resync at the edge).
    let writers = if mode == Mode::Controller { 1 } else { 3 };
    let (limits, reads) = (
        calls(lab, "DescribeVpcLimits"),
        calls(lab, "DescribeRouteTables"),
    );
    std::thread::sleep(Duration::from_secs(60));
    let limits = calls(lab, "DescribeVpcLimits") - limits;
    let reads = calls(lab, "DescribeRouteTables") - reads;
    println!("{mode:?} below the quota for 60 s: {limits} DescribeVpcLimits, {reads} DescribeRouteTables");
    assert!(
        limits <= 7,
        "{limits} DescribeVpcLimits in 60 s (only the blocked writer reads it)"
    );
    assert!(
        reads <= 7 * writers,
        "{reads} DescribeRouteTables in 60 s by {writers} writers"
    );
    // The quota is raised: the blocked route is in place within two resyncs.
    let raised = Instant::now();
    let mut lab2 = Lab::load(prefix).unwrap();
    lab2.set_quota(50).unwrap();
    wait_until(Duration::from_secs(25), || {
        let a = ours(&lab2, "rtb-a");
        (a == 3)
            .then_some(())
            .ok_or_else(|| format!("rtb-a holds {a} of ours"))
    })
    .unwrap();
    println!(
        "{mode:?}: routed {:.1} s after the raise",
        raised.elapsed().as_secs_f64()
    );
    let m = lab2.ping_matrix();
    assert!(full(&m), "{m:?}");
}

#[test]
#[ignore = "needs root (network namespaces) and etcd: run with --include-ignored"]
fn below_the_quota_the_controller_reads_once_per_resync_and_routes_after_a_raise() {
    below_the_quota("lq1", Mode::Controller);
}

#[test]
#[ignore = "needs root (network namespaces) and etcd: run with --include-ignored"]
fn below_the_quota_agents_read_once_per_resync_and_route_after_a_raise() {
    below_the_quota("lq2", Mode::PerNode);
}
