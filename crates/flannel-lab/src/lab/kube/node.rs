//! A `--kube` lab node: containerd and a kubelet in the node's network namespace and a mount
//! namespace of its own (real-node.md's recipe), the lab's images imported, and the one rule
//! kube-proxy would add for the `kubernetes` Service; and taking all of it down again.

use super::files::{
    containerd_config, kubelet_args, node_script, APISERVER_PORT, KUBELET_SYSCTLS,
    KUBERNETES_SERVICE_IP, NODE_PRIVATE_DIRS,
};
use crate::lab::{alive, io, kill, wait, Lab, LabError, CNI_PLUGINS};
use crate::netns::{self, Netns};
use crate::topology::{NodeSpec, ROUTER_A};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The CNI plugins a node has before flannel's init container adds ours
/// (containernetworking-plugins).
const NODE_CNI_PLUGINS: [&str; 4] = ["bridge", "host-local", "portmap", "loopback"];

/// The lab's chain in each node's nat table (the node's namespace is the lab's own).
const SERVICE_CHAIN: &str = "LAB-KUBERNETES-SERVICE";

impl Lab {
    pub(crate) fn containerd_socket(&self, n: &NodeSpec) -> PathBuf {
        self.node_dir(n).join("containerd.sock")
    }

    /// `ctr` against node `n`'s containerd, in the CRI's namespace.
    pub(crate) fn ctr(&self, n: &NodeSpec, args: &[&str]) -> Result<String, LabError> {
        let sock = self.containerd_socket(n).display().to_string();
        let mut all = vec!["ctr", "--address", &sock, "--namespace", "k8s.io"];
        all.extend_from_slice(args);
        Ok(netns::host(&all)?)
    }

    /// The node's directories, containerd config, kubeconfig and script; then containerd and
    /// the kubelet, the images imported, the `kubernetes` Service rule.
    pub(crate) fn start_kube_node(&mut self, n: &NodeSpec) -> Result<(), LabError> {
        let dir = self.node_dir(n);
        let mkdir = |p: &Path| std::fs::create_dir_all(p).map_err(io(p));
        for path in NODE_PRIVATE_DIRS {
            mkdir(&dir.join(format!("host{path}")))?;
        }
        for d in ["sysctl", "manifests", "containerd/root", "containerd/opt"] {
            mkdir(&dir.join(d))?;
        }
        for plugin in NODE_CNI_PLUGINS {
            let link = dir.join("host/opt/cni/bin").join(plugin);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(Path::new(CNI_PLUGINS).join(plugin), &link)
                .map_err(io(&link))?;
        }
        for (key, value) in KUBELET_SYSCTLS {
            let path = dir.join("sysctl").join(key.replace('/', "."));
            std::fs::write(&path, format!("{value}\n")).map_err(io(&path))?;
        }
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(io(&path))
        };
        write("containerd.toml", &containerd_config(&dir))?;
        let kubeconfig = self.kube_dir().join(format!("{}.kubeconfig", n.name));
        std::fs::copy(&kubeconfig, dir.join("kubelet.kubeconfig")).map_err(io(&kubeconfig))?;
        let kubelet = self.state.bins.kube_bin_dir.join("kubelet");
        write(
            "node.sh",
            &node_script(
                &dir,
                "containerd",
                &kubelet.display().to_string(),
                &kubelet_args(n, &dir),
            ),
        )?;
        let script = dir.join("node.sh").display().to_string();
        let netns_path = format!("--net=/run/netns/{}", n.ns);
        // nsenter --net, not `ip netns exec`: that remounts /sys without the cgroup mounts
        // runc needs (real-node.md, FIX 1).
        let pid = netns::spawn_detached_host(
            &[
                "unshare",
                "-m",
                "--propagation",
                "unchanged",
                "nsenter",
                &netns_path,
                "sh",
                &script,
            ],
            &[],
            &dir.join("node.log"),
        )?;
        if let Some(s) = self.state.nodes.iter_mut().find(|s| s.index == n.index) {
            s.kubelet_pid = Some(pid);
        }
        self.save()?;
        let sock = self.containerd_socket(n);
        wait(
            &format!("{}'s containerd", n.name),
            Duration::from_secs(30),
            || {
                if !alive(pid) {
                    return Err(crate::lab::tail(&dir.join("node.log")));
                }
                sock.exists()
                    .then_some(())
                    .ok_or_else(|| crate::lab::tail(&dir.join("containerd.log")))
            },
        )?;
        for archive in self.state.bins.image_archives() {
            let file = archive.display().to_string();
            self.ctr(n, &["images", "import", &file])?;
        }
        let ns = Netns::named(&n.ns);
        let to = format!("{ROUTER_A}:{APISERVER_PORT}");
        for rule in [
            vec!["-t", "nat", "-N", SERVICE_CHAIN],
            vec!["-t", "nat", "-A", "OUTPUT", "-j", SERVICE_CHAIN],
            vec!["-t", "nat", "-A", "PREROUTING", "-j", SERVICE_CHAIN],
            vec![
                "-t",
                "nat",
                "-A",
                SERVICE_CHAIN,
                "-d",
                KUBERNETES_SERVICE_IP,
                "-p",
                "tcp",
                "--dport",
                "443",
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ],
        ] {
            let mut args = vec!["iptables", "-w"];
            args.extend(rule);
            ns.ok(&args)?;
        }
        Ok(())
    }

    /// Stop a node's kubelet (SIGTERM), as a drained node's operator would; containerd and
    /// the pods stay.
    pub fn stop_kubelet(&mut self, n: &NodeSpec) -> Result<(), LabError> {
        let pid = self
            .state
            .nodes
            .iter_mut()
            .find(|s| s.index == n.index)
            .and_then(|s| s.kubelet_pid.take());
        self.save()?;
        if let Some(pid) = pid {
            kill(pid, nix::sys::signal::Signal::SIGTERM);
            wait(
                &format!("{}'s kubelet to exit", n.name),
                Duration::from_secs(15),
                || {
                    (!alive(pid))
                        .then_some(())
                        .ok_or_else(|| format!("pid {pid} alive"))
                },
            )?;
        }
        Ok(())
    }
}

/// Take node `n`'s runtime down: the kubelet, every container (killed and deleted through
/// its containerd, so runc removes the cgroups), then whatever is left of the containers'
/// cgroups (a containerd that died first). containerd itself, the shims and host-network
/// containers go with the node's namespace afterwards.
pub(crate) fn teardown_node(lab: &Lab, n: &NodeSpec) {
    let dir = lab.node_dir(n);
    let kubelet = lab
        .state
        .nodes
        .iter()
        .find(|s| s.index == n.index)
        .and_then(|s| s.kubelet_pid);
    if let Some(pid) = kubelet.filter(|p| alive(*p)) {
        kill(pid, nix::sys::signal::Signal::SIGTERM);
        if netns::wait_until(Duration::from_secs(10), || {
            (!alive(pid)).then_some(()).ok_or_else(String::new)
        })
        .is_err()
        {
            kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    let ids = container_ids(&dir);
    if lab.containerd_socket(n).exists() && !ids.is_empty() {
        for id in &ids {
            let _ = lab.ctr(n, &["tasks", "kill", "--all", "--signal", "SIGKILL", id]);
        }
        let _ = netns::wait_until(Duration::from_secs(10), || {
            let running = lab
                .ctr(n, &["tasks", "ls"])
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("RUNNING"))
                .count();
            (running == 0).then_some(()).ok_or_else(String::new)
        });
        for id in &ids {
            let _ = lab.ctr(n, &["tasks", "delete", "--force", id]);
        }
    }
    for id in &ids {
        remove_container_cgroups(id);
    }
}

/// The containers node `n`'s containerd runs or ran, from its state directory (readable
/// when containerd is gone).
fn container_ids(node_dir: &Path) -> Vec<String> {
    let tasks = node_dir.join("host/run/containerd/io.containerd.runtime.v2.task/k8s.io");
    std::fs::read_dir(tasks)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect()
}

/// Kill what is left in a container's cgroups (`/sys/fs/cgroup/<controller>/k8s.io/<id>`:
/// containerd's place for pods of a kubelet with `--cgroups-per-qos=false`) and remove them.
fn remove_container_cgroups(id: &str) {
    let dirs: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|c| c.path().join("k8s.io").join(id))
        .filter(|d| d.is_dir())
        .collect();
    for d in &dirs {
        for pid in std::fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    for d in &dirs {
        let _ = netns::wait_until(Duration::from_secs(5), || {
            std::fs::remove_dir(d)
                .or_else(|e| if d.exists() { Err(e) } else { Ok(()) })
                .map_err(|e| e.to_string())
        });
    }
}
