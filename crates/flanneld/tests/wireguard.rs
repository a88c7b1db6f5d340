//! The `wireguard` backend for real (root; CI runs as root). This machine kind's kernel has
//! no `wireguard` link type, so flanneld runs its userspace WireGuard (boringtun over a TUN
//! device): three nodes whose pods reach each other with only WireGuard's UDP on the
//! underlay, the key file, a peer's key change picked up, the device gone when flanneld
//! stops; dual-stack in Separate mode; and a peer run by Debian's `wireguard-go` configured
//! with `wg` (wireguard-tools) — a WireGuard we did not write — announced by a lease written
//! the way upstream flanneld writes one, with a preshared key on both sides.

#[path = "common/cluster.rs"]
mod cluster;

use cluster::{ping6_all, test_rule_packets, Cluster};
use flanneld_testing::netns::{wait_for, Underlay};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

const REPAIR: Duration = Duration::from_secs(30);

fn lease_of(c: &Cluster, node: &cluster::Node) -> serde_json::Value {
    let key = format!(
        "/coreos.com/network/subnets/{}",
        node.subnet().replace('/', "-")
    );
    let value = c.etcd.etcdctl(&["get", "--print-value-only", &key]);
    serde_json::from_str(value.trim()).unwrap_or_else(|e| panic!("{key}: {value:?}: {e}"))
}

/// SIGTERM, and wait for the process to end.
fn terminate(child: &mut std::process::Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    wait_for("the process to exit", REPAIR, || {
        child
            .try_wait()
            .unwrap()
            .map(|_| ())
            .ok_or_else(|| "still running".to_string())
    });
}

/// wireguard-go, stopped (so it removes its control socket) however the test ends.
struct WireguardGo(std::process::Child);

impl Drop for WireguardGo {
    fn drop(&mut self) {
        terminate(&mut self.0);
        let _ = std::fs::remove_file("/var/run/wireguard/wgref.sock");
    }
}

#[test]
#[ignore = "needs root (network namespaces, /dev/net/tun) and etcd: run with --include-ignored"]
fn wireguard_userspace_three_nodes_only_udp_on_the_underlay_and_key_changes() {
    let config = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","PersistentKeepaliveInterval":25}}"#;
    let mut c = Cluster::start("wg", config, 3, &["--ip-masq"]);
    let n1 = c.node(1);
    assert!(
        n1.log().contains("userspace (boringtun over TUN)"),
        "{}",
        n1.log()
    );
    let env = std::fs::read_to_string(n1.subnet_env()).unwrap();
    assert!(env.contains("FLANNEL_MTU=1420\n"), "{env}");
    let link = n1.ns.ok(&["ip", "-d", "link", "show", "flannel-wg"]);
    assert!(link.contains("mtu 1420") && link.contains("tun"), "{link}");
    let routes = n1.ns.ok(&["ip", "route"]);
    assert!(
        routes.contains("10.244.0.0/16 dev flannel-wg proto 87"),
        "{routes}"
    );
    let addr = n1.ns.ok(&["ip", "-4", "addr", "show", "dev", "flannel-wg"]);
    let own = n1.subnet();
    assert!(
        addr.contains(&format!("{}/32", own.trim_end_matches("/24"))),
        "{addr}"
    );
    // The key file: root only, and the key the lease carries.
    let key_file = n1.dir.join("wgkey");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o400);
    let private = std::fs::read_to_string(&key_file).unwrap();
    let public = n1
        .ns
        .ok(&["sh", "-c", &format!("wg pubkey < {}", key_file.display())]);
    let lease = lease_of(&c, n1);
    assert_eq!(lease["BackendType"], "wireguard");
    assert_eq!(lease["BackendData"]["PublicKey"], public.trim());
    assert_eq!(lease["BackendData"]["Port"], 51820);
    assert!(
        !n1.log().contains(private.trim()),
        "the private key reached the log"
    );

    // The underlay carries UDP to 51820 and never a pod address.
    for (chain, rule) in [
        ("FORWARD", vec!["-o", "eth0", "-d", "10.244.0.0/16"]),
        ("OUTPUT", vec!["-o", "eth0", "-d", "10.244.0.0/16"]),
        (
            "OUTPUT",
            vec!["-o", "eth0", "-p", "udp", "--dport", "51820"],
        ),
    ] {
        let mut args = vec!["iptables", "-w", "-I", chain];
        args.extend(rule);
        args.extend(["-m", "comment", "--comment", "flannel-rs-test"]);
        n1.ns.ok(&args);
    }
    let pods = vec![
        c.add_pod(1, 1, "0.3.1"),
        c.add_pod(2, 1, "1.0.0"),
        c.add_pod(3, 1, "1.0.0"),
    ];
    c.all_pods_reach_each_other(&pods);
    assert_eq!(
        test_rule_packets(n1, "FORWARD", ""),
        0,
        "a pod packet left in the clear"
    );
    let out = n1.ns.ok(&["iptables", "-w", "-nvxL", "OUTPUT"]);
    let clear: u64 = out
        .lines()
        .filter(|l| l.contains("flannel-rs-test") && l.contains("10.244.0.0/16"))
        .map(|l| l.split_whitespace().next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(
        clear, 0,
        "a packet to a pod address left the node in the clear"
    );
    assert!(
        test_rule_packets(n1, "OUTPUT", "") > 0,
        "no datagram to 51820"
    );

    // Node 3 stops: its device goes with it. It comes back with a new key (its key file
    // deleted): the peers pick the new key up from its lease.
    let old_key = lease_of(&c, c.node(3))["BackendData"]["PublicKey"].clone();
    terminate(c.nodes[2].flanneld.as_mut().expect("running"));
    c.nodes[2].flanneld = None;
    let n3 = c.node(3);
    assert!(
        !n3.ns
            .run(&["ip", "link", "show", "flannel-wg"], None)
            .status
            .success(),
        "flannel-wg outlived flanneld"
    );
    assert!(
        n3.log().contains("wireguard device removed"),
        "{}",
        n3.log()
    );
    std::fs::remove_file(n3.dir.join("wgkey")).unwrap();
    c.start_flanneld(3, &["--ip-masq"]);
    let n3 = c.node(3);
    wait_for("node 3's lease to carry a new key", REPAIR, || {
        let key = lease_of(&c, n3)["BackendData"]["PublicKey"].clone();
        (key != old_key).then_some(()).ok_or(format!("{key}"))
    });
    c.all_pods_reach_each_other(&pods);

    // flannel-wg deleted behind flanneld's back is made again.
    c.node(1).ns.ok(&["ip", "link", "del", "flannel-wg"]);
    c.all_pods_reach_each_other(&pods);
}

#[test]
#[ignore = "needs root (network namespaces, /dev/net/tun) and etcd: run with --include-ignored"]
fn wireguard_dual_stack_separate_devices() {
    let config = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:30:244::/56","Backend":{"Type":"wireguard"}}"#;
    let c = Cluster::start_with("wg6", config, 2, &["--ip-masq"], |ns, i| {
        Underlay::add_ipv6(ns, i)
    });
    let n1 = c.node(1);
    let routes6 = n1.ns.ok(&["ip", "-6", "route"]);
    assert!(
        routes6.contains("fd00:30:244::/56 dev flannel-wg-v6 proto 87"),
        "{routes6}"
    );
    let text = std::fs::read_to_string(n1.subnet_env()).unwrap();
    let p6: ipnet::IpNet =
        flannel_core::subnet_env::read_cidr(&text, "FLANNEL_IPV6_SUBNET").unwrap();
    let key = format!(
        "/coreos.com/network/subnets/{}&{}",
        n1.subnet().replace('/', "-"),
        p6.trunc().to_string().replace('/', "-")
    );
    let value = c.etcd.etcdctl(&["get", "--print-value-only", &key]);
    let lease: serde_json::Value = serde_json::from_str(value.trim()).unwrap();
    assert_eq!(lease["BackendV6Data"]["Port"], 51821);
    assert_eq!(
        lease["BackendV6Data"]["PublicKey"],
        lease["BackendData"]["PublicKey"]
    );
    let pods = vec![c.add_pod(1, 1, "1.0.0"), c.add_pod(2, 1, "1.0.0")];
    c.all_pods_reach_each_other(&pods);
    ping6_all(&pods);
}

#[test]
#[ignore = "needs root (network namespaces, /dev/net/tun), etcd, wireguard-go and wg: run with --include-ignored"]
fn wireguard_go_peer_configured_with_wg_interoperates() {
    let psk = "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE=";
    let config =
        format!(r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"wireguard","PSK":"{psk}"}}}}"#);
    let c = Cluster::start("wgo", &config, 1, &["--ip-masq"]);
    let n1 = c.node(1);
    let ours = lease_of(&c, n1)["BackendData"]["PublicKey"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!n1.log().contains(psk), "the PSK reached the log");

    // The reference peer: wireguard-go's device, configured by wg.
    let peer = c.underlay.node(3);
    let dir = c.dir.path();
    let log = std::fs::File::create(dir.join("wireguard-go.log")).unwrap();
    let _wg_go = WireguardGo(peer.spawn(
        &[
            "/usr/bin/env",
            "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1",
            "wireguard-go",
            "-f",
            "wgref",
        ],
        log,
    ));
    wait_for("wireguard-go's device", REPAIR, || {
        peer.run(&["ip", "link", "show", "wgref"], None)
            .status
            .success()
            .then_some(())
            .ok_or_else(|| {
                std::fs::read_to_string(dir.join("wireguard-go.log")).unwrap_or_default()
            })
    });
    let private = peer.ok(&["wg", "genkey"]);
    let private_file = dir.join("ref.key");
    let psk_file = dir.join("ref.psk");
    std::fs::write(&private_file, private.trim()).unwrap();
    std::fs::write(&psk_file, psk).unwrap();
    let public = peer.ok(&[
        "sh",
        "-c",
        &format!("wg pubkey < {}", private_file.display()),
    ]);
    let own = n1.subnet();
    peer.ok(&[
        "wg",
        "set",
        "wgref",
        "private-key",
        &private_file.display().to_string(),
        "listen-port",
        "51820",
        "peer",
        &ours,
        "preshared-key",
        &psk_file.display().to_string(),
        "endpoint",
        "172.16.0.1:51820",
        "allowed-ips",
        &own,
    ]);
    peer.ok(&["ip", "addr", "add", "10.244.200.1/32", "dev", "wgref"]);
    peer.ok(&["ip", "link", "set", "wgref", "up"]);
    peer.ok(&["ip", "route", "add", "10.244.0.0/16", "dev", "wgref"]);
    // Its lease, as upstream flanneld writes a wireguard lease.
    let lease = format!(
        r#"{{"PublicIP":"172.16.0.3","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{}","Port":51820}}}}"#,
        public.trim()
    );
    c.etcd
        .etcdctl(&["put", "/coreos.com/network/subnets/10.244.200.0-24", &lease]);

    let pod = c.add_pod(1, 1, "1.0.0");
    wait_for("the pod to reach the wireguard-go peer", REPAIR, || {
        let out = pod.ns.run(&["ping", "-c1", "-W1", "10.244.200.1"], None);
        out.status
            .success()
            .then_some(())
            .ok_or_else(|| format!("{}\n{}", String::from_utf8_lossy(&out.stdout), n1.log()))
    });
    // And the other way: the peer reaches the pod, and wg saw a handshake with us.
    peer.ok(&["ping", "-c1", "-W2", &pod.ip]);
    let shown = peer.ok(&["wg", "show", "wgref", "latest-handshakes"]);
    let stamp: u64 = shown
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(shown.contains(&ours) && stamp > 0, "{shown}");

    // The lease goes: so does the peer (the pod can no longer reach it).
    c.etcd
        .etcdctl(&["del", "/coreos.com/network/subnets/10.244.200.0-24"]);
    wait_for("the peer to be removed", REPAIR, || {
        let out = pod.ns.run(&["ping", "-c1", "-W1", "10.244.200.1"], None);
        (!out.status.success())
            .then_some(())
            .ok_or("still reachable".to_string())
    });
}
