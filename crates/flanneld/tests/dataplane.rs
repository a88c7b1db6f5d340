//! The data plane for real (root; CI runs as root): clusters of network namespaces on one
//! underlay, flanneld per node with etcd, pods created through our CNI plugin and the real
//! bridge/host-local plugins. host-gw with three nodes, vxlan with two plus a lease written
//! by upstream flanneld (through etcdctl).

#[path = "common/cluster.rs"]
mod cluster;

use cluster::{cni_config, Cluster};
use flanneld_testing::netns::wait_for;
use std::time::Duration;

const REPAIR: Duration = Duration::from_secs(30);

fn upstream_nat_rules(n: &str, p: &str) -> Vec<String> {
    cluster::upstream_nat_rules(n, p, "224.0.0.0/4")
}

fn appended(node: &cluster::Node, table: &str) -> Vec<String> {
    node.ns
        .ok(&["iptables", "-t", table, "-S"])
        .lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_string)
        .collect()
}

/// The output of a listing that may fail while a device is missing ("" then).
fn listing(node: &cluster::Node, args: &[&str]) -> String {
    String::from_utf8_lossy(&node.ns.run(args, None).stdout).into_owned()
}

fn routes(node: &cluster::Node) -> String {
    node.ns.ok(&["ip", "route", "show", "table", "main"])
}

/// The lease key of a subnet (`10.244.3.0/24` → `.../10.244.3.0-24`).
fn lease_key(subnet: &str) -> String {
    format!("/coreos.com/network/subnets/{}", subnet.replace('/', "-"))
}

#[test]
#[ignore = "needs root (network namespaces) and etcd: run with --include-ignored"]
fn host_gw_three_nodes_pods_rules_repair_and_lease_removal() {
    let mut c = Cluster::start(
        "hgw",
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#,
        3,
        &["--ip-masq", "--ip-blackhole-route"],
    );
    // kube-flannel.yml's config speaks CNI 0.3.1; a 1.0.0 runtime works as well.
    let pods = vec![
        c.add_pod(1, 1, "0.3.1"),
        c.add_pod(2, 1, "1.0.0"),
        c.add_pod(3, 1, "0.3.1"),
        c.add_pod(1, 2, "1.0.0"),
    ];
    c.all_pods_reach_each_other(&pods);

    // The rules are upstream's text; the forward rules too; the blackhole is in place.
    let n1 = c.node(1);
    let p1 = n1.subnet();
    assert_eq!(
        appended(n1, "nat"),
        upstream_nat_rules("10.244.0.0/16", &p1)
    );
    assert_eq!(
        appended(n1, "filter"),
        [
            r#"-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#,
            r#"-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
            r#"-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
        ]
    );
    assert!(
        routes(n1).contains(&format!("blackhole {p1} proto 87 metric 4294967295")),
        "{}",
        routes(n1)
    );
    let subnet_env = std::fs::read_to_string(n1.subnet_env()).unwrap();
    assert!(
        subnet_env.ends_with("FLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n"),
        "{subnet_env}"
    );

    // The masquerade chain flushed behind our back comes back at the next check.
    n1.ns
        .ok(&["iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG"]);
    wait_for("the masquerade rules to be restored", REPAIR, || {
        let have = appended(n1, "nat");
        (have == upstream_nat_rules("10.244.0.0/16", &p1))
            .then_some(())
            .ok_or_else(|| format!("{have:?}"))
    });

    // A route deleted behind our back comes back.
    let p2 = c.node(2).subnet();
    let want = format!("{p2} via 172.16.0.2 dev eth0 proto 87");
    assert!(routes(n1).contains(&want), "{}", routes(n1));
    n1.ns.ok(&["ip", "route", "del", &p2]);
    wait_for("the deleted route to come back", REPAIR, || {
        let r = routes(n1);
        r.contains(&want).then_some(()).ok_or(r)
    });

    // A removed lease removes its routes everywhere.
    let p3 = c.node(3).subnet();
    c.nodes[2].stop();
    c.etcd.etcdctl(&["del", &lease_key(&p3)]);
    for i in [1, 2] {
        let node = c.node(i);
        wait_for(
            &format!("node {i} to drop the route to {p3}"),
            REPAIR,
            || {
                let r = routes(node);
                (!r.contains(&format!("{p3} via"))).then_some(()).ok_or(r)
            },
        );
    }

    // CNI DEL frees the address (host-local's reservation) and the saved delegate config.
    let pod = &pods[3];
    let reservation = c.node(1).dir.join("ipam/cbr0").join(&pod.ip);
    assert!(reservation.exists(), "{}", reservation.display());
    let cfg = cni_config(c.node(1), "1.0.0");
    let (ok, out) = c.cni(1, "CHECK", &pod.id, &pod.ns.name, &cfg);
    assert!(
        !ok,
        "CHECK without prevResult is the delegate's error: {out}"
    );
    let (ok, out) = c.cni(1, "DEL", &pod.id, &pod.ns.name, &cfg);
    assert!(ok, "{out}");
    assert!(!reservation.exists(), "address still reserved after DEL");
    assert!(!c.node(1).dir.join("cni").join(&pod.id).exists());
    let (ok, out) = c.cni(1, "DEL", &pod.id, &pod.ns.name, &cfg);
    assert!(ok, "a second DEL succeeds: {out}");
}

#[test]
#[ignore = "needs root (network namespaces) and etcd: run with --include-ignored"]
fn vxlan_two_nodes_and_an_upstream_lease() {
    let mut c = Cluster::start(
        "vxl",
        r#"{"Network":"10.245.0.0/16","Backend":{"Type":"vxlan"}}"#,
        2,
        &["--ip-masq"],
    );
    let pods = vec![c.add_pod(1, 1, "0.3.1"), c.add_pod(2, 1, "1.0.0")];
    c.all_pods_reach_each_other(&pods);
    let n1 = c.node(1);
    let subnet_env = std::fs::read_to_string(n1.subnet_env()).unwrap();
    assert!(subnet_env.contains("FLANNEL_MTU=1450\n"), "{subnet_env}");
    let link = n1.ns.ok(&["ip", "-d", "link", "show", "flannel.1"]);
    assert!(
        link.contains("mtu 1450")
            && link.contains("vxlan id 1 local 172.16.0.1 dev eth0")
            && link.contains("dstport 8472 nolearning"),
        "{link}"
    );

    // Node 2's lease as published, and the entries node 1 made for it.
    let p2 = c.node(2).subnet();
    let lease = c
        .etcd
        .etcdctl(&["get", "--print-value-only", &lease_key(&p2)]);
    let value: serde_json::Value = serde_json::from_str(lease.trim()).unwrap();
    assert_eq!(value["BackendType"], "vxlan");
    assert_eq!(value["BackendData"]["VNI"], 1);
    let mac2 = value["BackendData"]["VtepMAC"]
        .as_str()
        .unwrap()
        .to_string();
    let gw2 = p2.split('/').next().unwrap().to_string();
    let entries = |gw: &str, mac: &str, public: &str, subnet: &str| {
        let neigh = listing(n1, &["ip", "neigh", "show", "dev", "flannel.1"]);
        let fdb = listing(n1, &["bridge", "fdb", "show", "dev", "flannel.1"]);
        let r = routes(n1);
        let ok = neigh.contains(&format!("{gw} lladdr {mac} PERMANENT"))
            && fdb.contains(&format!("{mac} dst {public} self permanent"))
            && r.contains(&format!("{subnet} via {gw} dev flannel.1 proto 87 onlink"));
        (ok, format!("neigh:\n{neigh}fdb:\n{fdb}routes:\n{r}"))
    };
    let (ok, state) = entries(&gw2, &mac2, "172.16.0.2", &p2);
    assert!(ok, "{state}");

    // A lease as upstream flanneld writes it gets the same entries; deleting it removes them.
    // Its subnet is one neither node holds (their subnets are picked at random).
    let held = [c.node(1).subnet(), p2.clone()];
    let third = (1..=255)
        .map(|i| format!("10.245.{i}.0/24"))
        .find(|s| !held.contains(s))
        .unwrap();
    let third_gw = third.trim_end_matches("/24").to_string();
    let upstream = r#"{"PublicIP":"172.16.0.9","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:2a:9c:11:22:33"}}"#;
    c.etcd.etcdctl(&["put", &lease_key(&third), upstream]);
    wait_for("entries for the upstream lease", REPAIR, || {
        let (ok, state) = entries(&third_gw, "0e:2a:9c:11:22:33", "172.16.0.9", &third);
        ok.then_some(()).ok_or(state)
    });
    c.etcd.etcdctl(&["del", &lease_key(&third)]);
    wait_for("the upstream lease's entries to go", REPAIR, || {
        let (gone_state, state) = {
            let neigh = listing(n1, &["ip", "neigh", "show", "dev", "flannel.1"]);
            let fdb = listing(n1, &["bridge", "fdb", "show", "dev", "flannel.1"]);
            let r = routes(n1);
            (
                !neigh.contains(&format!("{third_gw} "))
                    && !fdb.contains("0e:2a:9c:11:22:33")
                    && !r.contains(&third),
                format!("{neigh}{fdb}{r}"),
            )
        };
        gone_state.then_some(()).ok_or(state)
    });

    // The device deleted behind our back comes back, same MAC, and pods talk again.
    let mac1 = n1.ns.ok(&["cat", "/sys/class/net/flannel.1/address"]);
    n1.ns.ok(&["ip", "link", "del", "flannel.1"]);
    wait_for("flannel.1 to be recreated with its entries", REPAIR, || {
        let (ok, state) = entries(&gw2, &mac2, "172.16.0.2", &p2);
        ok.then_some(()).ok_or(state)
    });
    assert_eq!(n1.ns.ok(&["cat", "/sys/class/net/flannel.1/address"]), mac1);
    c.all_pods_reach_each_other(&pods);

    // A restarted daemon keeps the VtepMAC (peers' FDB entries stay right).
    c.nodes[0].stop();
    c.start_flanneld(1, &["--ip-masq"]);
    let n1 = c.node(1);
    wait_for("node 1 to republish its lease", REPAIR, || {
        let v = c
            .etcd
            .etcdctl(&["get", "--print-value-only", &lease_key(&n1.subnet())]);
        v.contains(mac1.trim()).then_some(()).ok_or(v)
    });
    c.all_pods_reach_each_other(&pods);
}

#[test]
#[ignore = "needs root (network namespaces) and etcd: run with --include-ignored"]
fn nftables_mode_installs_its_own_table_and_restores_it() {
    let c = Cluster::start(
        "nft",
        r#"{"Network":"10.246.0.0/16","EnableNFTables":true,"Backend":{"Type":"host-gw"}}"#,
        1,
        &["--ip-masq", "--iptables-resync=1"],
    );
    let n1 = c.node(1);
    let p1 = n1.subnet();
    let table = || listing(n1, &["nft", "list", "table", "ip", "flannel-ipv4"]);
    let listed = table();
    for rule in [
        format!("ip saddr {p1} ip daddr 10.246.0.0/16 return"),
        format!("ip saddr != {p1} ip daddr 10.246.0.0/16 return"),
        "ip saddr 10.246.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random".to_string(),
        "ip saddr 10.246.0.0/16 accept".to_string(),
    ] {
        assert!(listed.contains(&rule), "missing {rule:?} in:\n{listed}");
    }
    assert!(
        !appended(n1, "nat").iter().any(|l| l.contains("FLANNEL")),
        "no iptables rules in nftables mode"
    );
    n1.ns.ok(&["nft", "delete", "table", "ip", "flannel-ipv4"]);
    wait_for("the nftables table to be restored", REPAIR, || {
        let t = table();
        t.contains("masquerade fully-random").then_some(()).ok_or(t)
    });
}

/// What someone else removes is back within this, with the resync 300 s away: the kernel's
/// notifications bring the repair (the target is 1 s; the bench reports the figure).
const AT_ONCE: Duration = Duration::from_secs(5);

fn wait_back(
    what: &str,
    node: &cluster::Node,
    present: impl Fn(&cluster::Node) -> Result<(), String>,
) {
    let start = std::time::Instant::now();
    wait_for(what, AT_ONCE, || present(node));
    eprintln!("{what}: back after {:?}", start.elapsed());
}

#[test]
#[ignore = "needs root (network namespaces) and etcd: run with --include-ignored"]
fn kernel_changes_are_repaired_at_once_not_at_the_resync() {
    // host-gw: a deleted route, and an interface flap (taking eth0 down flushes the routes
    // through it without a notification per route).
    let c = Cluster::start(
        "krh",
        r#"{"Network":"10.246.0.0/16","Backend":{"Type":"host-gw"}}"#,
        2,
        &["--resync-period=300"],
    );
    let n1 = c.node(1);
    let want = format!("{} via 172.16.0.2 dev eth0 proto 87", c.node(2).subnet());
    let route_in_place = |n: &cluster::Node| {
        let r = routes(n);
        r.contains(&want).then_some(()).ok_or(r)
    };
    wait_for("the peer route", REPAIR, || route_in_place(n1));
    n1.ns
        .ok(&["ip", "route", "del", want.split(' ').next().unwrap()]);
    wait_back("host-gw: a deleted route", n1, route_in_place);
    n1.ns.ok(&["ip", "link", "set", "eth0", "down"]);
    assert!(route_in_place(n1).is_err(), "a link down flushes the route");
    n1.ns.ok(&["ip", "link", "set", "eth0", "up"]);
    wait_back("host-gw: eth0 down and up", n1, route_in_place);
    drop(c);

    // vxlan: the neighbour entry, the FDB entry, the route, the device.
    let c = Cluster::start(
        "krv",
        r#"{"Network":"10.247.0.0/16","Backend":{"Type":"vxlan"}}"#,
        2,
        &["--resync-period=300"],
    );
    let n1 = c.node(1);
    let p2 = c.node(2).subnet();
    let gw2 = p2.split('/').next().unwrap().to_string();
    let entries_in_place = |n: &cluster::Node| {
        let neigh = listing(n, &["ip", "neigh", "show", "dev", "flannel.1"]);
        let fdb = listing(n, &["bridge", "fdb", "show", "dev", "flannel.1"]);
        let r = routes(n);
        let ok = neigh.contains(&format!("{gw2} lladdr"))
            && fdb.contains("dst 172.16.0.2 self permanent")
            && r.contains(&format!("{p2} via {gw2} dev flannel.1 proto 87 onlink"));
        ok.then_some(())
            .ok_or(format!("neigh:\n{neigh}fdb:\n{fdb}routes:\n{r}"))
    };
    wait_for("the peer's entries", REPAIR, || entries_in_place(n1));
    n1.ns.ok(&["ip", "neigh", "del", &gw2, "dev", "flannel.1"]);
    wait_back("vxlan: a deleted neighbour entry", n1, entries_in_place);
    let fdb = listing(n1, &["bridge", "fdb", "show", "dev", "flannel.1"]);
    let mac = fdb
        .lines()
        .find(|l| l.contains("dst 172.16.0.2"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    n1.ns.ok(&[
        "bridge",
        "fdb",
        "del",
        &mac,
        "dev",
        "flannel.1",
        "dst",
        "172.16.0.2",
    ]);
    wait_back("vxlan: a deleted FDB entry", n1, entries_in_place);
    n1.ns.ok(&["ip", "route", "del", &p2]);
    wait_back("vxlan: a deleted route", n1, entries_in_place);
    n1.ns.ok(&["ip", "link", "del", "flannel.1"]);
    wait_back("vxlan: the deleted device", n1, entries_in_place);
}
