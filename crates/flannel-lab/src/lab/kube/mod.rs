//! `flannel-lab up --kube`: the same VPC, router, etcd and emulator, but flannel as users run
//! it: a Kubernetes control plane in the router namespace, containerd and a kubelet on every
//! node, and deploy/ applied with kubectl, so each node's flanneld runs from the image in the
//! DaemonSet's pod, its init containers install the CNI plugin and conflist, and test pods get
//! their addresses from our plugin through containerd. `files` holds the pure parts,
//! `control_plane`, `node` and `deploy` the running ones.

mod control_plane;
mod deploy;
pub mod files;
mod node;
mod ops;

pub use deploy::{FlannelPod, KubeNode, CONTROLLER, DAEMONSET, NAMESPACE};

use super::{io, Lab, LabError};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, Instant};

/// What a `--kube` lab keeps besides the etcd lab's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KubeState {
    pub apiserver_pid: Option<u32>,
    pub controller_manager_pid: Option<u32>,
    pub scheduler_pid: Option<u32>,
    /// Host directories `up` created as mount points for the nodes' private copies (absent
    /// before): `down` removes them.
    pub made_dirs: Vec<String>,
    /// Seconds: the API server ready, every node's flannel pod ready, every pod reaching
    /// every other.
    pub control_plane_secs: Option<f64>,
    pub flannel_ready_secs: Option<f64>,
    /// Nodes seen with NetworkUnavailable False while their route was missing from a table
    /// (tencent-vpc; must stay empty).
    #[serde(default)]
    pub available_before_routed: Vec<String>,
}

/// Names of the other `--kube` labs that are up (only one at a time: they would share the
/// host's mount point directories, which `down` removes).
fn other_kube_labs(prefix: &str) -> Vec<String> {
    std::fs::read_dir(super::STATE_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != prefix)
        .filter(|name| Lab::load(name).is_ok_and(|lab| lab.spec().kube))
        .collect()
}

/// Refuse a `--kube` lab while another is up.
pub(crate) fn refuse_second(prefix: &str) -> Result<(), LabError> {
    match other_kube_labs(prefix).first() {
        Some(other) => Err(LabError::Invalid(format!(
            "a --kube lab ({other:?}) is up already: two would share this machine's mount points ({}); `flannel-lab --prefix {other} down` first",
            files::NODE_PRIVATE_DIRS.join(", ")
        ))),
        None => Ok(()),
    }
}

impl Lab {
    pub(crate) fn kube_state_mut(&mut self) -> &mut KubeState {
        self.state.kube.get_or_insert_with(KubeState::default)
    }

    /// Create the mount points the nodes need (recorded); `up` has refused a second
    /// `--kube` lab before anything was made.
    pub(crate) fn prepare_kube_host(&mut self) -> Result<(), LabError> {
        let mut made = Vec::new();
        for dir in files::NODE_PRIVATE_DIRS {
            // Record every ancestor made too (/opt/cni and /opt/cni/bin), outermost first.
            let mut missing = Vec::new();
            let mut p = Path::new(dir);
            while !p.exists() {
                missing.push(p.display().to_string());
                match p.parent() {
                    Some(parent) => p = parent,
                    None => break,
                }
            }
            std::fs::create_dir_all(dir).map_err(io(Path::new(dir)))?;
            made.extend(missing.into_iter().rev());
        }
        // containerd makes `k8s.io` under every cgroup controller for the pods: ours to
        // remove when it was not there before.
        for controller in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let dir = controller.path().join("k8s.io");
            if controller.path().is_dir() && !dir.exists() {
                made.push(dir.display().to_string());
            }
        }
        self.kube_state_mut().made_dirs = made;
        self.save()
    }

    /// The `--kube` part of `up` after the router, etcd and the emulator: the control plane,
    /// every node's runtime, deploy/, then waits until every node's flannel pod is ready,
    /// NetworkUnavailable is False everywhere, and every test pod reaches every other.
    pub(crate) fn up_kube(
        &mut self,
        nodes: u8,
        progress: &mut dyn FnMut(&str),
        started: Instant,
    ) -> Result<(), LabError> {
        self.prepare_kube_host()?;
        progress("Kubernetes control plane: kube-apiserver https://172.16.1.1:6443, kube-controller-manager (podCIDRs from 10.244.0.0/16), kube-scheduler");
        self.start_control_plane()?;
        self.kube_state_mut().control_plane_secs = Some(started.elapsed().as_secs_f64());
        for i in 1..=nodes {
            let n = self.spec().node(i);
            progress(&format!(
                "{}, containerd + kubelet, images imported",
                n.summary()
            ));
            self.create_node_namespace(&n)?;
            self.start_kube_node(&n)?;
        }
        super::wait("every node to register", Duration::from_secs(90), || {
            let seen = self.kube_nodes().map_err(|e| e.to_string())?.len();
            (seen == usize::from(nodes))
                .then_some(())
                .ok_or_else(|| format!("{seen} of {nodes} registered"))
        })?;
        progress(&format!(
            "deploy/ applied with kubectl (backend {}): namespace, rbac, configmap (net-conf.json edited){}, daemonset",
            self.spec().backend.name(),
            match (self.spec().backend, self.spec().mode) {
                (crate::topology::Backend::TencentVpc, crate::topology::Mode::PerNode) =>
                    ", secret (credentials edited)",
                (crate::topology::Backend::TencentVpc, crate::topology::Mode::Controller) =>
                    ", controller-secret (credentials edited), controller",
                _ => "",
            }
        ));
        self.apply_deploy()?;
        progress("waiting for every node's flannel pod and NetworkUnavailable False");
        self.wait_flannel_pods(Duration::from_secs(180))?;
        let early = self.wait_network_available(Duration::from_secs(120))?;
        self.kube_state_mut().available_before_routed = early;
        self.kube_state_mut().flannel_ready_secs = Some(started.elapsed().as_secs_f64());
        progress("a busybox pod on every node (CNI: our plugin through containerd)");
        self.add_test_pods()?;
        Ok(())
    }
}

/// `down`'s part for a `--kube` lab, before its namespaces go: every node's kubelet and
/// containers, then the control plane (its processes die with the router namespace).
pub(crate) fn teardown(lab: &Lab) {
    std::thread::scope(|scope| {
        for n in lab.nodes() {
            scope.spawn(move || node::teardown_node(lab, &n));
        }
    });
}

/// After the namespaces and state are gone: the host directories `up` made.
pub(crate) fn remove_made_dirs(made: &[String]) {
    for dir in made.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
}
