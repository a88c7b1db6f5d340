//! The `udp` backend for real (root; CI runs as root): two flanneld nodes with a config that
//! names no Backend (upstream's default is udp), pods through our CNI plugin reaching each
//! other over `flannel0`, only UDP to port 8285 on the underlay; and a third node that is an
//! independent reference peer written for this test from the wire format alone (a TUN device
//! and a UDP socket in Python: one IP packet per datagram), announced by a lease written the
//! way upstream flanneld writes a udp lease (through etcdctl, no BackendType).

#[path = "common/cluster.rs"]
mod cluster;

use cluster::{test_rule_packets, Cluster};
use flanneld_testing::netns::wait_for;
use std::time::Duration;

/// The reference peer: TUN `reftun` (no packet info), UDP on ADDR:8285; a packet read from
/// the device goes to the peer whose subnet holds its destination; a datagram is written to
/// the device as it is.
const REFERENCE_PEER: &str = r#"
import fcntl, os, select, socket, struct, sys, ipaddress
TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454ca, 0x0001, 0x1000
tun = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", b"reftun", IFF_TUN | IFF_NO_PI))
addr = sys.argv[1]
peers = [(ipaddress.ip_network(s), ip) for s, ip in (p.split("=") for p in sys.argv[2:])]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((addr, 8285))
open("/tmp/flannel-rs-reftun.ready", "w").close()
while True:
    ready, _, _ = select.select([tun, sock], [], [])
    if tun in ready:
        packet = os.read(tun, 65535)
        if len(packet) >= 20 and packet[0] >> 4 == 4:
            dst = ipaddress.ip_address(packet[16:20])
            for net, ip in peers:
                if dst in net:
                    sock.sendto(packet, (ip, 8285))
                    break
    if sock in ready:
        data, _ = sock.recvfrom(65535)
        os.write(tun, data)
"#;

#[test]
#[ignore = "needs root (network namespaces, /dev/net/tun) and etcd: run with --include-ignored"]
fn udp_by_default_pods_reach_each_other_and_a_reference_peer() {
    // No Backend: udp, as upstream.
    let c = Cluster::start("udp", r#"{"Network":"10.244.0.0/16"}"#, 2, &["--ip-masq"]);
    let n1 = c.node(1);
    let env = std::fs::read_to_string(n1.subnet_env()).unwrap();
    assert!(env.contains("FLANNEL_MTU=1472\n"), "{env}");
    let link = n1.ns.ok(&["ip", "-d", "link", "show", "flannel0"]);
    assert!(link.contains("mtu 1472") && link.contains("tun"), "{link}");
    let routes = n1.ns.ok(&["ip", "route"]);
    assert!(
        routes.contains("10.244.0.0/16 dev flannel0 proto 87"),
        "{routes}"
    );
    // A udp lease carries no BackendType, as upstream's.
    let key = format!(
        "/coreos.com/network/subnets/{}",
        n1.subnet().replace('/', "-")
    );
    let lease = c.etcd.etcdctl(&["get", "--print-value-only", &key]);
    assert_eq!(
        lease.trim(),
        r#"{"PublicIP":"172.16.0.1","PublicIPv6":null}"#
    );

    // The underlay carries UDP to 8285 and never a pod address.
    for (chain, rule) in [
        ("FORWARD", vec!["-o", "eth0", "-d", "10.244.0.0/16"]),
        ("OUTPUT", vec!["-o", "eth0", "-p", "udp", "--dport", "8285"]),
    ] {
        let mut args = vec!["iptables", "-w", "-I", chain];
        args.extend(rule);
        args.extend(["-m", "comment", "--comment", "flannel-rs-test"]);
        n1.ns.ok(&args);
    }
    let pods = vec![c.add_pod(1, 1, "0.3.1"), c.add_pod(2, 1, "1.0.0")];
    c.all_pods_reach_each_other(&pods);
    assert_eq!(
        test_rule_packets(n1, "FORWARD", ""),
        0,
        "a pod packet left unencapsulated"
    );
    assert!(
        test_rule_packets(n1, "OUTPUT", "") > 0,
        "no datagram to 8285"
    );

    // The reference peer on a third namespace of the underlay, announced as upstream does.
    let reference = c.underlay.node(3);
    let script = c.dir.path().join("reference_peer.py");
    std::fs::write(&script, REFERENCE_PEER).unwrap();
    let _ = std::fs::remove_file("/tmp/flannel-rs-reftun.ready");
    let peer_arg = format!("{}=172.16.0.1", n1.subnet());
    let log = std::fs::File::create(c.dir.path().join("reference.log")).unwrap();
    let mut peer = reference.spawn(
        &[
            "/usr/bin/python3",
            &script.display().to_string(),
            "172.16.0.3",
            &peer_arg,
        ],
        log,
    );
    wait_for(
        "the reference peer's device",
        Duration::from_secs(10),
        || {
            std::path::Path::new("/tmp/flannel-rs-reftun.ready")
                .exists()
                .then_some(())
                .ok_or_else(|| {
                    std::fs::read_to_string(c.dir.path().join("reference.log")).unwrap_or_default()
                })
        },
    );
    reference.ok(&["ip", "addr", "add", "10.244.200.1/32", "dev", "reftun"]);
    reference.ok(&["ip", "link", "set", "reftun", "up"]);
    reference.ok(&["ip", "route", "add", "10.244.0.0/16", "dev", "reftun"]);
    c.etcd.etcdctl(&[
        "put",
        "/coreos.com/network/subnets/10.244.200.0-24",
        r#"{"PublicIP":"172.16.0.3"}"#,
    ]);
    wait_for(
        "pod 1 to reach the reference peer",
        Duration::from_secs(30),
        || {
            let out = pods[0]
                .ns
                .run(&["ping", "-c1", "-W1", "10.244.200.1"], None);
            out.status
                .success()
                .then_some(())
                .ok_or_else(|| String::from_utf8_lossy(&out.stdout).into_owned())
        },
    );
    let _ = peer.kill();
    let _ = peer.wait();
    let _ = std::fs::remove_file("/tmp/flannel-rs-reftun.ready");

    // flannel0 deleted behind our back: the next reconcile makes a new one.
    n1.ns.ok(&["ip", "link", "del", "flannel0"]);
    c.all_pods_reach_each_other(&pods);
}
