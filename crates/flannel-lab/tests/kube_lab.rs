//! flannel as users run it (`flannel-lab up --kube`): the image and deploy/ on real kubelets
//! with containerd, a control plane built from Debian's Kubernetes source, and the emulator's
//! VPC. One `--kube` lab at a time (they share the host's mount points): the tests take a
//! lock.

mod common;

use flannel_lab::lab::{self, kube, Lab};
use flannel_lab::topology::{Backend, Mode, ROUTER_A};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ONE_KUBE_LAB: Mutex<()> = Mutex::new(());

/// Every table's routes to `cidr`.
fn routes_to(lab: &Lab, cidr: &str) -> usize {
    let cloud = lab.cloud().unwrap();
    cloud
        .route_tables
        .iter()
        .map(|t| {
            t.routes
                .iter()
                .filter(|r| r.destination_cidr_block.to_string() == cidr)
                .count()
        })
        .sum()
}

fn pod_cidr(lab: &Lab, node: &str) -> String {
    lab.kube_nodes()
        .unwrap()
        .into_iter()
        .find(|n| n.name == node)
        .and_then(|n| n.pod_cidr)
        .unwrap_or_else(|| panic!("{node} has no podCIDR"))
}

/// What `down` must leave: no namespace, state, mount point or cgroup of the lab.
fn assert_gone(prefix: &str) {
    assert!(!lab::state_dir(prefix).exists());
    let namespaces = flannel_lab::netns::list();
    assert!(
        !namespaces
            .iter()
            .any(|n| flannel_lab::topology::is_lab_namespace(prefix, n)),
        "{namespaces:?}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!("/run/flannel-lab/{prefix}/")),
        "{mounts}"
    );
    for controller in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let dir = controller.path().join("k8s.io");
        let children = std::fs::read_dir(&dir)
            .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
            .unwrap_or(0);
        assert_eq!(
            children,
            0,
            "{} still has containers' cgroups",
            dir.display()
        );
    }
}

/// A busybox ping from `from`'s test pod to `ip` every 50 ms, in the background.
fn start_pings(lab: &Lab, from: &str, ip: &str) {
    lab.exec(
        "default",
        from,
        &[
            "sh",
            "-c",
            &format!("ping -i 0.05 -w 900 {ip} > /tmp/ping 2>&1 & echo $! > /tmp/ping.pid"),
        ],
    )
    .unwrap();
}

/// Stop the pings; (transmitted, received).
fn stop_pings(lab: &Lab, from: &str) -> (u64, u64) {
    lab.exec(
        "default",
        from,
        &["sh", "-c", "kill -INT $(cat /tmp/ping.pid)"],
    )
    .unwrap();
    let mut stats = String::new();
    lab.wait_for("ping's statistics", Duration::from_secs(10), || {
        stats = lab
            .exec("default", from, &["cat", "/tmp/ping"])
            .map_err(|e| e.to_string())?;
        stats
            .contains("packets received")
            .then_some(())
            .ok_or_else(|| stats.clone())
    })
    .unwrap();
    let line = stats
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap();
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

/// A TCP line server in the router namespace (outside the pod network: the pod reaches it
/// through masquerade): counts connections, echoes every line back, and writes
/// `connections lines peer` to `status` after each line.
fn start_tcp_server(lab: &Lab, port: u16, status: &Path) -> u32 {
    let script = format!(
        r#"
import socket, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("{ROUTER_A}", {port})); srv.listen(8)
state = {{"connections": 0, "lines": 0, "peer": ""}}
def serve(c, peer):
    f = c.makefile("rwb")
    for line in f:
        state["lines"] += 1
        f.write(line); f.flush()
        open("{status}", "w").write(f"{{state['connections']}} {{state['lines']}} {{peer}}\n")
while True:
    c, (peer, _) = srv.accept()
    state["connections"] += 1
    threading.Thread(target=serve, args=(c, peer), daemon=True).start()
"#,
        status = status.display()
    );
    let file = status.with_extension("py");
    std::fs::write(&file, script).unwrap();
    lab.router()
        .spawn_detached(
            &["/usr/bin/python3", &file.display().to_string()],
            &[],
            &status.with_extension("log"),
        )
        .unwrap()
}

fn tcp_status(status: &Path) -> (u64, u64, String) {
    let text = std::fs::read_to_string(status).unwrap_or_default();
    let w: Vec<&str> = text.split_whitespace().collect();
    if w.len() < 3 {
        return (0, 0, String::new());
    }
    (w[0].parse().unwrap(), w[1].parse().unwrap(), w[2].into())
}

/// A rolling update of the DaemonSet while node-1's pod pings node-2's every 50 ms and keeps
/// a TCP connection to the router through masquerade: no ping lost, the connection carries
/// on, the subnets unchanged.
fn rollout_loses_nothing(lab: &Lab, tag: &str) -> f64 {
    let before: Vec<_> = lab.kube_nodes().unwrap();
    let n2_ip = lab.state.nodes[1].pod_ip.clone().unwrap();
    let status = lab.dir.join(format!("tcp-{tag}.status"));
    let server = start_tcp_server(lab, 7000, &status);
    lab.exec(
        "default",
        "test-node-1",
        &[
            "sh",
            "-c",
            &format!(
                "(while true; do echo tick; sleep 0.1; done | nc {ROUTER_A} 7000 > /tmp/echo 2>&1) > /dev/null 2>&1 &"
            ),
        ],
    )
    .unwrap();
    lab.wait_for("the pod's TCP connection", Duration::from_secs(20), || {
        let (c, lines, _) = tcp_status(&status);
        (c == 1 && lines > 0)
            .then_some(())
            .ok_or_else(|| format!("{c} {lines}"))
    })
    .unwrap();
    start_pings(lab, "test-node-1", &n2_ip);
    let secs = lab.rollout(tag).unwrap();
    for p in lab
        .flannel_pods()
        .unwrap()
        .iter()
        .filter(|p| p.name.starts_with(kube::DAEMONSET))
    {
        assert!(p.image.ends_with(&format!(":{tag}")), "{p:?}");
    }
    // The pings go on a little after the last pod is ready.
    let (_, lines_at_end, _) = tcp_status(&status);
    lab.wait_for(
        "more pings and lines after the rollout",
        Duration::from_secs(10),
        || {
            let (_, lines, _) = tcp_status(&status);
            (lines >= lines_at_end + 10)
                .then_some(())
                .ok_or_else(|| format!("{lines}"))
        },
    )
    .unwrap();
    let (sent, received) = stop_pings(lab, "test-node-1");
    assert!(
        sent as f64 >= secs * 10.0,
        "{sent} pings in a {secs:.1} s rollout"
    );
    assert_eq!(sent, received, "pings lost during the rollout");
    let (connections, lines, peer) = tcp_status(&status);
    assert_eq!(connections, 1, "the TCP connection was re-opened");
    assert_eq!(
        peer,
        lab.nodes()[0].ip.to_string(),
        "masqueraded to node-1's address"
    );
    let echoed = lab
        .exec("default", "test-node-1", &["cat", "/tmp/echo"])
        .unwrap();
    assert!(
        echoed.lines().count() as u64 + 20 >= lines,
        "{} echoed of {lines}",
        echoed.lines().count()
    );
    let after = lab.kube_nodes().unwrap();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b.pod_cidr, a.pod_cidr);
    }
    for n in lab.nodes() {
        assert_eq!(
            lab.lease_of(&n).as_deref(),
            Some(pod_cidr(lab, &n.name).as_str())
        );
    }
    let _ = server; // dies with the router namespace
    eprintln!("rollout to {tag}: {secs:.1} s, {sent} pings, 0 lost, {lines} lines over one TCP connection");
    secs
}

#[test]
#[ignore = "needs root, containerd, the kube binaries (scripts/build-kube.sh) and the images (scripts/build-image.sh, scripts/build-lab-images.sh)"]
fn tencent_vpc_per_node_on_kubelets_installs_routes_rolls_and_collects() {
    let _one = ONE_KUBE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let t = common::up_kube("kvpc", Backend::TencentVpc, Mode::PerNode, 3);
    let lab = &t.lab;
    eprintln!(
        "cluster up and every pod reachable in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // A second --kube lab is refused before it makes anything.
    let second = Lab::up(
        flannel_lab::topology::LabSpec {
            prefix: "kvpc2".into(),
            ..lab.spec().clone()
        },
        1,
        common::bins(),
        &mut |_| {},
    );
    let message = second.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains(r#"a --kube lab ("kvpc") is up already"#),
        "{message}"
    );
    assert!(!lab::state_dir("kvpc2").exists());
    let k = lab.state.kube.clone().unwrap();
    assert!(
        k.available_before_routed.is_empty(),
        "{:?}",
        k.available_before_routed
    );
    // The init containers installed the plugin and the conflist from the image and the
    // ConfigMap into each node's own directories.
    for n in lab.nodes() {
        let host = lab.dir.join(&n.name).join("host");
        let plugin = host.join("opt/cni/bin/flannel");
        let meta = std::fs::symlink_metadata(&plugin).unwrap();
        assert!(
            meta.is_file() && meta.len() > 100_000,
            "{}",
            plugin.display()
        );
        let conflist =
            std::fs::read_to_string(host.join("etc/cni/net.d/10-flannel.conflist")).unwrap();
        assert!(conflist.contains(r#""type": "flannel""#), "{conflist}");
        let cidr = pod_cidr(lab, &n.name);
        assert_eq!(
            lab.lease_of(&n),
            Some(cidr.clone()),
            "subnet.env holds the podCIDR"
        );
        assert_eq!(routes_to(lab, &cidr), 2, "{cidr} in both tables");
    }
    for n in lab.kube_nodes().unwrap() {
        assert_eq!(n.network_unavailable.as_deref(), Some("False"), "{n:?}");
        assert_eq!(n.network_reason.as_deref(), Some("FlannelIsUp"));
    }
    // kubectl logs: the structured startup lines; kubectl exec: flannelctl with the pod's
    // credentials (the VPC from the metadata service).
    let pods = lab.flannel_pods().unwrap();
    let pod = &pods.iter().find(|p| p.node == "node-1").unwrap().name;
    let logs = lab
        .kubectl(&["-n", kube::NAMESPACE, "logs", pod, "-c", "kube-flannel"])
        .unwrap();
    assert!(logs.contains("starting flanneld"), "{logs}");
    assert!(
        logs.contains("lease acquired subnet=") && logs.contains(r#"source="kube""#),
        "{logs}"
    );
    assert!(
        !logs.contains("reservation=true"),
        "a podCIDR is not a reservation: {logs}"
    );
    assert!(
        !logs.contains(flannel_lab::topology::SECRET_KEY),
        "the secret key in the log"
    );
    let routes = lab
        .exec(
            kube::NAMESPACE,
            pod,
            &[
                "flannelctl",
                "routes",
                "list",
                "--endpoint",
                "http://172.16.1.1:9000",
            ],
        )
        .unwrap();
    assert!(
        routes.contains("rtb-a") && routes.contains("rtb-b"),
        "{routes}"
    );
    assert!(routes.contains(&pod_cidr(lab, "node-2")), "{routes}");

    rollout_loses_nothing(lab, "0.1.0-rollout");

    // node-3 leaves: its kubelet stopped, the Node deleted; the elected node collects its
    // routes from both tables.
    let gone = pod_cidr(lab, "node-3");
    let mut t = t;
    t.lab.remove_kube_node("node-3").unwrap();
    let lab = &t.lab;
    let removed = Instant::now();
    lab.wait_for(
        "node-3's routes collected",
        Duration::from_secs(120),
        || {
            let left = routes_to(lab, &gone);
            (left == 0)
                .then_some(())
                .ok_or_else(|| format!("{left} routes to {gone}"))
        },
    )
    .unwrap();
    eprintln!(
        "node-3's routes collected {:.1} s after its Node was deleted",
        removed.elapsed().as_secs_f64()
    );
    let prefix = lab.spec().prefix.clone();
    drop(t);
    assert_gone(&prefix);
}

#[test]
#[ignore = "needs root, containerd, the kube binaries (scripts/build-kube.sh) and the images (scripts/build-image.sh, scripts/build-lab-images.sh)"]
fn vxlan_on_kubelets_rolls_without_losing_a_ping() {
    let _one = ONE_KUBE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let t = common::up_kube("kvx", Backend::Vxlan, Mode::PerNode, 2);
    rollout_loses_nothing(&t.lab, "0.1.0-vxlan");
    let prefix = t.lab.spec().prefix.clone();
    drop(t);
    assert_gone(&prefix);
}

#[test]
#[ignore = "needs root, containerd, the kube binaries (scripts/build-kube.sh) and the images (scripts/build-image.sh, scripts/build-lab-images.sh)"]
fn controller_mode_on_kubelets_keeps_credentials_off_the_nodes_and_hands_over() {
    let _one = ONE_KUBE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let t = common::up_kube("kctl", Backend::TencentVpc, Mode::Controller, 2);
    let lab = &t.lab;
    let pods = lab.flannel_pods().unwrap();
    for p in &pods {
        let env = lab.exec(kube::NAMESPACE, &p.name, &["env"]).unwrap();
        let has_key = env.contains("TENCENTCLOUD_SECRET_KEY=");
        assert_eq!(
            has_key,
            p.name.starts_with(kube::CONTROLLER),
            "{}: credentials {has_key}",
            p.name
        );
    }
    // The leader's pod killed: the other replica leads within the lease time (15 s) and
    // repairs a route deleted in the console.
    let (_, leader) = lab.lease_holder().unwrap().expect("a controller leads");
    let leader_pod = pods
        .iter()
        .find(|p| p.name.starts_with(kube::CONTROLLER) && leader.contains(&p.name))
        .unwrap_or_else(|| panic!("holder {leader} is no controller pod: {pods:?}"))
        .name
        .clone();
    lab.kill_flannel_pod(&leader_pod).unwrap();
    let killed = Instant::now();
    lab.wait_for(
        "a new controller leader",
        Duration::from_secs(30),
        || match lab.lease_holder().map_err(|e| e.to_string())? {
            Some((_, h)) if !h.contains(&leader_pod) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .unwrap();
    let handover = killed.elapsed().as_secs_f64();
    assert!(handover < 15.0 + 5.0, "hand-over took {handover:.1} s");
    let cidr = pod_cidr(lab, "node-2");
    lab.console(flannel_lab::lab::ConsoleAction::DeleteRoute, &cidr, None)
        .unwrap();
    lab.wait_for(
        "the new leader to repair the route",
        Duration::from_secs(60),
        || {
            let n = routes_to(lab, &cidr);
            (n == 2).then_some(()).ok_or_else(|| format!("{n} routes"))
        },
    )
    .unwrap();
    eprintln!("controller hand-over {handover:.1} s after the leader's pod was killed");
    let prefix = lab.spec().prefix.clone();
    drop(t);
    assert_gone(&prefix);
}
