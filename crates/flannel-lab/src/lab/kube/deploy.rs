//! deploy/ applied as a user applies it: the same files (compiled in from the repository),
//! then only what a user edits, with kubectl: the ConfigMap's net-conf.json and the Secret's
//! credentials; the image is the one the manifests name (`flannel-rs:<version>`, imported into
//! every node). Then the waits and reads a user does: the flannel pods, the Nodes'
//! NetworkUnavailable, test pods and their pings.

use super::files::{credentials_patch, net_conf_patch, test_pod};
use crate::lab::{wait, Lab, LabError};
use crate::topology::{Backend, Mode, NodeSpec, SECRET_ID, SECRET_KEY};
use serde_json::Value;
use std::time::Duration;

pub const NAMESPACE: &str = "kube-flannel";
pub const DAEMONSET: &str = "kube-flannel-ds";
pub const CONTROLLER: &str = "flanneld-controller";

const DEPLOY_NAMESPACE: &str = include_str!("../../../../../deploy/namespace.yaml");
const DEPLOY_RBAC: &str = include_str!("../../../../../deploy/rbac.yaml");
const DEPLOY_CONFIGMAP: &str = include_str!("../../../../../deploy/configmap.yaml");
const DEPLOY_SECRET: &str = include_str!("../../../../../deploy/secret.yaml");
const DEPLOY_CONTROLLER_SECRET: &str = include_str!("../../../../../deploy/controller-secret.yaml");
const DEPLOY_CONTROLLER: &str = include_str!("../../../../../deploy/controller.yaml");
const DEPLOY_DAEMONSET: &str = include_str!("../../../../../deploy/daemonset.yaml");

/// A flannel pod as `kubectl get pods` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlannelPod {
    pub name: String,
    pub node: String,
    pub phase: String,
    pub ready: bool,
    pub image: String,
    pub restarts: u64,
}

/// A Node as `kubectl get nodes` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeNode {
    pub name: String,
    pub ready: bool,
    /// NetworkUnavailable's status ("False" once flannel routed it), absent until set.
    pub network_unavailable: Option<String>,
    pub network_reason: Option<String>,
    pub pod_cidr: Option<String>,
}

fn condition<'a>(node: &'a Value, kind: &str) -> Option<&'a Value> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

impl Lab {
    fn apply(&self, what: &str, text: &str) -> Result<(), LabError> {
        self.kubectl_with(&["apply", "-f", "-"], Some(text))
            .map(drop)
            .map_err(|e| LabError::Invalid(format!("kubectl apply deploy/{what}: {e}")))
    }

    /// A merge patch from a file (root-only), so a credential in it never shows in a
    /// command line or in the error that quotes one.
    fn patch(&self, kind: &str, name: &str, patch: &str) -> Result<(), LabError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.kube_dir().join(format!("patch-{kind}-{name}.json"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(crate::lab::io(&path))?;
        std::io::Write::write_all(&mut file, patch.as_bytes()).map_err(crate::lab::io(&path))?;
        let file = path.display().to_string();
        self.kubectl(&[
            "-n",
            NAMESPACE,
            "patch",
            kind,
            name,
            "--type",
            "merge",
            "--patch-file",
            &file,
        ])
        .map(drop)
    }

    /// deploy/ for the lab's backend and mode, as a user applies it.
    pub(crate) fn apply_deploy(&self) -> Result<(), LabError> {
        let spec = self.spec().clone();
        self.apply("namespace.yaml", DEPLOY_NAMESPACE)?;
        self.apply("rbac.yaml", DEPLOY_RBAC)?;
        self.apply("configmap.yaml", DEPLOY_CONFIGMAP)?;
        self.patch("configmap", "kube-flannel-cfg", &net_conf_patch(&spec))?;
        let credentials = credentials_patch(SECRET_ID, SECRET_KEY);
        match (spec.backend, spec.mode) {
            (Backend::TencentVpc, Mode::PerNode) => {
                self.apply("secret.yaml", DEPLOY_SECRET)?;
                self.patch("secret", "tencent-cloud-credentials", &credentials)?;
            }
            (Backend::TencentVpc, Mode::Controller) => {
                self.apply("controller-secret.yaml", DEPLOY_CONTROLLER_SECRET)?;
                self.patch(
                    "secret",
                    "tencent-cloud-controller-credentials",
                    &credentials,
                )?;
                self.apply("controller.yaml", DEPLOY_CONTROLLER)?;
            }
            _ => {}
        }
        self.apply("daemonset.yaml", DEPLOY_DAEMONSET)
    }

    fn get_json(&self, args: &[&str]) -> Result<Value, LabError> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let text = self.kubectl(&all)?;
        serde_json::from_str(&text).map_err(|e| LabError::Invalid(format!("kubectl get: {e}")))
    }

    pub fn kube_nodes(&self) -> Result<Vec<KubeNode>, LabError> {
        let list = self.get_json(&["nodes"])?;
        Ok(list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| KubeNode {
                name: n["metadata"]["name"].as_str().unwrap_or_default().into(),
                ready: condition(n, "Ready").is_some_and(|c| c["status"] == "True"),
                network_unavailable: condition(n, "NetworkUnavailable")
                    .and_then(|c| c["status"].as_str())
                    .map(str::to_string),
                network_reason: condition(n, "NetworkUnavailable")
                    .and_then(|c| c["reason"].as_str())
                    .map(str::to_string),
                pod_cidr: n["spec"]["podCIDR"].as_str().map(str::to_string),
            })
            .collect())
    }

    /// The pods of the flannel DaemonSet (and the controller Deployment).
    pub fn flannel_pods(&self) -> Result<Vec<FlannelPod>, LabError> {
        let list = self.get_json(&["-n", NAMESPACE, "pods"])?;
        Ok(list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let statuses = p["status"]["containerStatuses"].as_array();
                FlannelPod {
                    name: p["metadata"]["name"].as_str().unwrap_or_default().into(),
                    node: p["spec"]["nodeName"].as_str().unwrap_or_default().into(),
                    phase: p["status"]["phase"].as_str().unwrap_or_default().into(),
                    ready: statuses
                        .is_some_and(|s| !s.is_empty() && s.iter().all(|c| c["ready"] == true)),
                    image: p["spec"]["containers"][0]["image"]
                        .as_str()
                        .unwrap_or_default()
                        .into(),
                    restarts: statuses
                        .into_iter()
                        .flatten()
                        .filter_map(|c| c["restartCount"].as_u64())
                        .sum(),
                }
            })
            .collect())
    }

    /// Wait until every node's flannel pod (and in controller mode a controller) is ready.
    pub(crate) fn wait_flannel_pods(&self, timeout: Duration) -> Result<(), LabError> {
        let nodes: Vec<String> = self.nodes().iter().map(|n| n.name.clone()).collect();
        let controller =
            self.spec().mode == Mode::Controller && self.spec().backend == Backend::TencentVpc;
        wait("every node's flannel pod to be ready", timeout, || {
            let pods = self.flannel_pods().map_err(|e| e.to_string())?;
            let missing: Vec<&String> = nodes
                .iter()
                .filter(|n| {
                    !pods
                        .iter()
                        .any(|p| &p.node == *n && p.name.starts_with(DAEMONSET) && p.ready)
                })
                .collect();
            let controller_ok = !controller
                || pods
                    .iter()
                    .any(|p| p.name.starts_with(CONTROLLER) && p.ready);
            (missing.is_empty() && controller_ok)
                .then_some(())
                .ok_or_else(|| format!("not ready on {missing:?}; controller ready: {controller_ok}; pods: {pods:?}"))
        })
    }

    /// Wait until every node's NetworkUnavailable is False. With tencent-vpc, also check
    /// at every look that a node showing False has its route in every table (read after the
    /// condition, so a route seen missing was missing when the condition was False): the
    /// nodes seen False before routed.
    pub(crate) fn wait_network_available(
        &self,
        timeout: Duration,
    ) -> Result<Vec<String>, LabError> {
        let mut early = Vec::new();
        let vpc = self.spec().backend == Backend::TencentVpc;
        wait("NetworkUnavailable False on every node", timeout, || {
            let nodes = self.kube_nodes().map_err(|e| e.to_string())?;
            if vpc {
                let cloud = self.cloud().map_err(|e| e.to_string())?;
                for n in nodes
                    .iter()
                    .filter(|n| n.network_unavailable.as_deref() == Some("False"))
                {
                    let routed = n.pod_cidr.as_ref().is_some_and(|cidr| {
                        cloud.route_tables.iter().all(|t| {
                            t.routes
                                .iter()
                                .any(|r| r.destination_cidr_block.to_string() == *cidr)
                        })
                    });
                    if !routed && !early.contains(&n.name) {
                        early.push(n.name.clone());
                    }
                }
            }
            let bad: Vec<_> = nodes
                .iter()
                .filter(|n| n.network_unavailable.as_deref() != Some("False"))
                .map(|n| (n.name.clone(), n.network_unavailable.clone()))
                .collect();
            (bad.is_empty() && nodes.len() == self.state.nodes.len())
                .then_some(())
                .ok_or_else(|| format!("{bad:?}"))
        })?;
        Ok(early)
    }

    /// The test pod of node `n`.
    pub fn test_pod_name(n: &NodeSpec) -> String {
        format!("test-{}", n.name)
    }

    /// A busybox pod on every node; waits until each runs and records its address.
    pub(crate) fn add_test_pods(&mut self) -> Result<(), LabError> {
        for n in self.nodes() {
            self.kubectl_with(
                &["apply", "-f", "-"],
                Some(&test_pod(&Self::test_pod_name(&n), &n.name)),
            )?;
        }
        for n in self.nodes() {
            let name = Self::test_pod_name(&n);
            let ip = crate::netns::wait_until(Duration::from_secs(120), || {
                let pod = self.get_json(&["pod", &name]).map_err(|e| e.to_string())?;
                match (
                    pod["status"]["phase"].as_str(),
                    pod["status"]["podIP"].as_str(),
                ) {
                    (Some("Running"), Some(ip)) => Ok(ip.to_string()),
                    _ => Err(format!("{name}: {}", pod["status"])),
                }
            })
            .map_err(|last| LabError::Timeout {
                what: format!("pod {name} to run"),
                secs: 120,
                last,
            })?;
            if let Some(s) = self.state.nodes.iter_mut().find(|s| s.index == n.index) {
                s.pod_ip = Some(ip);
            }
        }
        self.save()
    }

    /// Whether node `from`'s test pod reaches `ip` (kubectl exec … ping).
    pub fn kube_pod_pings(&self, from: &NodeSpec, ip: &str) -> bool {
        self.kubectl(&[
            "exec",
            &Self::test_pod_name(from),
            "--",
            "ping",
            "-c1",
            "-W1",
            ip,
        ])
        .is_ok()
    }
}
