//! A cluster in network namespaces for the data-plane tests: etcd on the switch of a shared
//! underlay, one flanneld per node namespace (the real binary, run with `ip netns exec`),
//! and pods created through our `flannel` CNI plugin delegating to Debian's real `bridge`
//! and `host-local` plugins. Everything is torn down on drop. Shared by the data-plane tests
//! and the iperf3 bench, which each use part of it.
#![allow(dead_code)]

use flanneld_testing::netns::{wait_for, Netns, Underlay, SWITCH_IP};
use flanneld_testing::EtcdServer;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

/// Where Debian's containernetworking-plugins live.
pub const CNI_PLUGINS: &str = "/usr/lib/cni";

pub struct Node {
    pub i: u8,
    pub ns: Netns,
    pub dir: PathBuf,
    pub flanneld: Option<Child>,
}

impl Node {
    pub fn subnet_env(&self) -> PathBuf {
        self.dir.join("subnet.env")
    }

    /// This node's pod subnet, from its subnet.env (`10.244.3.1/24` → `10.244.3.0/24`).
    pub fn subnet(&self) -> String {
        let text = std::fs::read_to_string(self.subnet_env()).expect("subnet.env");
        let cidr: ipnet::IpNet =
            flannel_core::subnet_env::read_cidr(&text, "FLANNEL_SUBNET").expect("FLANNEL_SUBNET");
        cidr.to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("flanneld.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.flanneld.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct Pod {
    pub ns: Netns,
    pub ip: String,
    pub id: String,
    pub node: u8,
}

/// Another build of the daemon for every cluster of this process (a bench sets it from
/// `FLANNELD`, e.g. the shipped target/shipped/flanneld); unset, the package's own binary.
pub static DAEMON: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

pub struct Cluster {
    // Drop order: pods, nodes (their daemons), etcd, then the underlay.
    pub nodes: Vec<Node>,
    pub etcd: EtcdServer,
    pub underlay: Underlay,
    pub tag: String,
    pub dir: tempfile::TempDir,
}

/// The CNI config kube-flannel.yml ships (the flannel entry of its `cbr0` conflist), pointed
/// at this node's files: subnet.env, the saved delegate configs, host-local's store.
pub fn cni_config(node: &Node, version: &str) -> String {
    format!(
        r#"{{"cniVersion":"{version}","name":"cbr0","type":"flannel","delegate":{{"hairpinMode":true,"isDefaultGateway":true}},"subnetFile":"{}","dataDir":"{}","ipam":{{"dataDir":"{}"}}}}"#,
        node.subnet_env().display(),
        node.dir.join("cni").display(),
        node.dir.join("ipam").display()
    )
}

impl Cluster {
    /// `n` nodes running flanneld with `args` against `net_config`, each up (subnet.env
    /// written) before this returns.
    pub fn start(tag: &str, net_config: &str, n: u8, args: &[&str]) -> Cluster {
        Self::start_with(tag, net_config, n, args, |_, _| {})
    }

    /// `start`, with `prepare` run on each node's namespace before its flanneld starts.
    pub fn start_with(
        tag: &str,
        net_config: &str,
        n: u8,
        args: &[&str],
        prepare: impl Fn(&Netns, u8),
    ) -> Cluster {
        let underlay = Underlay::new(tag);
        let etcd = EtcdServer::start_in(&underlay.switch.name, SWITCH_IP);
        etcd.etcdctl(&["put", "/coreos.com/network/config", net_config]);
        let dir = tempfile::tempdir().expect("temp dir");
        let mut c = Cluster {
            nodes: Vec::new(),
            etcd,
            underlay,
            tag: tag.into(),
            dir,
        };
        for i in 1..=n {
            let ns = c.underlay.node(i);
            prepare(&ns, i);
            let node_dir = c.dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            c.nodes.push(Node {
                i,
                ns,
                dir: node_dir,
                flanneld: None,
            });
            c.start_flanneld(i, args);
        }
        for node in &c.nodes {
            wait_for(
                &format!("node {} to write subnet.env", node.i),
                Duration::from_secs(30),
                || {
                    node.subnet_env()
                        .exists()
                        .then_some(())
                        .ok_or_else(|| node.log())
                },
            );
        }
        c
    }

    pub fn node(&self, i: u8) -> &Node {
        &self.nodes[usize::from(i - 1)]
    }

    pub fn start_flanneld(&mut self, i: u8, args: &[&str]) {
        let node = &mut self.nodes[usize::from(i - 1)];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("flanneld.log"))
            .unwrap();
        let endpoints = format!("--etcd-endpoints=http://{SWITCH_IP}:2379");
        let subnet_file = format!("--subnet-file={}", node.subnet_env().display());
        // Each node its own WireGuard key (upstream's default file is one per machine).
        let key_file = format!("WIREGUARD_KEY_FILE={}", node.dir.join("wgkey").display());
        let daemon = DAEMON.get().map_or(env!("CARGO_BIN_EXE_flanneld"), |p| {
            p.to_str().expect("FLANNELD is UTF-8")
        });
        let mut all = vec![
            "/usr/bin/env",
            &key_file,
            daemon,
            &endpoints,
            "--iface=eth0",
            &subnet_file,
        ];
        all.extend_from_slice(args);
        node.flanneld = Some(node.ns.spawn(&all, log));
    }

    /// Run our CNI plugin for `command` in node `i` for container `id` with netns `pod_ns`.
    pub fn cni(
        &self,
        i: u8,
        command: &str,
        id: &str,
        pod_ns: &str,
        config: &str,
    ) -> (bool, String) {
        let node = self.node(i);
        let mut cmd = node.ns.command(env!("CARGO_BIN_EXE_flannel"));
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", format!("/run/netns/{pod_ns}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PLUGINS)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("running the flannel CNI plugin");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(config.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.success(),
            if out.status.success() {
                text
            } else {
                format!("{text} / stderr: {}", String::from_utf8_lossy(&out.stderr))
            },
        )
    }

    /// A pod on node `i` (its own namespace), added through the CNI plugin.
    pub fn add_pod(&self, i: u8, j: u8, version: &str) -> Pod {
        let ns = Netns::new(&format!("{}-n{i}p{j}", self.tag));
        let id = format!("ctr-{i}-{j}");
        let (ok, out) = self.cni(i, "ADD", &id, &ns.name, &cni_config(self.node(i), version));
        assert!(ok, "CNI ADD on node {i}: {out}");
        let result: serde_json::Value = serde_json::from_str(&out).expect("CNI result JSON");
        let ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("no address in {out}"))
            .to_string();
        Pod {
            ns,
            ip,
            id,
            node: i,
        }
    }

    /// Every pod reaches every other pod (ICMP), waiting for routes to settle.
    pub fn all_pods_reach_each_other(&self, pods: &[Pod]) {
        for a in pods {
            for b in pods.iter().filter(|b| b.ip != a.ip) {
                wait_for(
                    &format!(
                        "pod {} (node {}) to reach {} (node {})",
                        a.ip, a.node, b.ip, b.node
                    ),
                    Duration::from_secs(30),
                    || {
                        let out = a.ns.run(&["ping", "-c1", "-W1", &b.ip], None);
                        out.status.success().then_some(()).ok_or_else(|| {
                            format!(
                                "{}; routes on node {}:\n{}",
                                String::from_utf8_lossy(&out.stdout),
                                a.node,
                                self.node(a.node).ns.ok(&["ip", "route"])
                            )
                        })
                    },
                );
            }
        }
    }
}

/// Upstream flanneld's nat rules for network N and pod subnet P (e2e/rules.go's form, as
/// `iptables -S` / `ip6tables -S` print them; `multicast` is 224.0.0.0/4 or ff00::/8).
pub fn upstream_nat_rules(n: &str, p: &str, multicast: &str) -> Vec<String> {
    [
        r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#.to_string(),
        r#"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN"#.to_string(),
        format!(r#"-A FLANNEL-POSTRTG -s {p} -d {n} -m comment --comment "flanneld masq" -j RETURN"#),
        format!(r#"-A FLANNEL-POSTRTG -s {n} -d {p} -m comment --comment "flanneld masq" -j RETURN"#),
        format!(r#"-A FLANNEL-POSTRTG ! -s {n} -d {p} -m comment --comment "flanneld masq" -j RETURN"#),
        format!(r#"-A FLANNEL-POSTRTG -s {n} ! -d {multicast} -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#),
        format!(r#"-A FLANNEL-POSTRTG ! -s {n} -d {n} -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#),
    ]
    .into()
}

/// Packets counted by the rules a test inserted into `chain` (comment `flannel-rs-test`)
/// whose line also holds `also` ("" for all of them).
pub fn test_rule_packets(node: &Node, chain: &str, also: &str) -> u64 {
    let out = node.ns.ok(&["iptables", "-w", "-nvxL", chain]);
    out.lines()
        .filter(|l| l.contains("flannel-rs-test") && l.contains(also))
        .map(|l| l.split_whitespace().next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// A pod's global IPv6 address.
pub fn ipv6_of(pod: &Pod) -> String {
    let out = pod.ns.ok(&[
        "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global",
    ]);
    out.split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no IPv6 address: {out}"))
        .to_string()
}

pub fn ping6_all(pods: &[Pod]) {
    for a in pods {
        for b in pods.iter().filter(|b| b.id != a.id) {
            let to = ipv6_of(b);
            wait_for(
                &format!("{} to reach {to}", a.id),
                Duration::from_secs(30),
                || {
                    let out = a.ns.run(&["ping", "-6", "-c1", "-W1", &to], None);
                    out.status
                        .success()
                        .then_some(())
                        .ok_or_else(|| String::from_utf8_lossy(&out.stdout).into_owned())
                },
            );
        }
    }
}
