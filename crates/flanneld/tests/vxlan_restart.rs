//! A vxlan node restarted with its device gone (a reboot, a container restarted with a new
//! view of the host): it comes back with the VtepMAC of its lease, so its peers' FDB and
//! neighbour entries never change and pod traffic resumes by itself (root; CI runs as root).

#[path = "common/cluster.rs"]
mod cluster;

use cluster::Cluster;
use flanneld_testing::netns::wait_for;
use std::time::{Duration, Instant};

#[test]
#[ignore = "needs root (network namespaces) and etcd: run with --include-ignored"]
fn a_restart_without_the_device_keeps_the_vtep_mac() {
    let mut c = Cluster::start(
        "vxr",
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
        2,
        &[],
    );
    let pods = vec![c.add_pod(1, 1, "0.3.1"), c.add_pod(2, 1, "0.3.1")];
    c.all_pods_reach_each_other(&pods);
    let mac = |node: &cluster::Node| node.ns.ok(&["cat", "/sys/class/net/flannel.1/address"]);
    let before = mac(c.node(1));
    let peer_view = |c: &Cluster| {
        let n2 = c.node(2);
        (
            n2.ns.ok(&["bridge", "fdb", "show", "dev", "flannel.1"]),
            n2.ns.ok(&["ip", "neigh", "show", "dev", "flannel.1"]),
        )
    };
    let peer_before = peer_view(&c);
    assert!(peer_before.0.contains(before.trim()), "{peer_before:?}");

    c.nodes[0].stop();
    c.node(1).ns.ok(&["ip", "link", "del", "flannel.1"]);
    let restarted = Instant::now();
    c.start_flanneld(1, &[]);
    let target = pods[0].ip.clone();
    wait_for(
        "pod 2 to reach pod 1 again",
        Duration::from_secs(20),
        || {
            let out = pods[1].ns.run(&["ping", "-c1", "-W1", &target], None);
            out.status
                .success()
                .then_some(())
                .ok_or_else(|| c.node(1).log())
        },
    );
    eprintln!(
        "pod traffic back {:.2} s after flanneld restarted without its device",
        restarted.elapsed().as_secs_f64()
    );
    assert_eq!(mac(c.node(1)), before, "the VtepMAC of the lease");
    assert_eq!(
        peer_view(&c),
        peer_before,
        "the peer's FDB and neighbour entries unchanged"
    );
    assert!(c
        .node(1)
        .log()
        .contains("VtepMAC of this node's previous lease"));
}
