//! What a cluster operator does to a `--kube` lab: roll the DaemonSet to a new image tag,
//! remove a node, look up or kill the route controller's leader.

use super::deploy::{DAEMONSET, NAMESPACE};
use crate::lab::{Lab, LabError};
use std::time::Duration;

impl Lab {
    /// Roll the flannel DaemonSet to image tag `tag` (the same image, tagged `flannel-rs:TAG`
    /// on every node as a registry would serve it) and wait for the rollout; seconds taken.
    pub fn rollout(&self, tag: &str) -> Result<f64, LabError> {
        let current = format!("docker.io/library/flannel-rs:{}", env!("CARGO_PKG_VERSION"));
        let next = format!("flannel-rs:{tag}");
        for n in self.nodes() {
            self.ctr(
                &n,
                &[
                    "images",
                    "tag",
                    "--force",
                    &current,
                    &format!("docker.io/library/{next}"),
                ],
            )?;
        }
        let started = std::time::Instant::now();
        let ds = format!("daemonset/{DAEMONSET}");
        self.kubectl(&[
            "-n",
            NAMESPACE,
            "set",
            "image",
            &ds,
            &format!("kube-flannel={next}"),
            &format!("install-cni-plugin={next}"),
            &format!("install-cni={next}"),
        ])?;
        self.kubectl(&["-n", NAMESPACE, "rollout", "status", &ds, "--timeout=300s"])?;
        Ok(started.elapsed().as_secs_f64())
    }

    /// Remove node `name` as an operator does: stop its kubelet (a running one registers the
    /// Node again), then delete the Node.
    pub fn remove_kube_node(&mut self, name: &str) -> Result<(), LabError> {
        let n = self.find(name)?;
        self.stop_kubelet(&n)?;
        self.kubectl(&["delete", "node", &n.name, "--wait=true"])?;
        Ok(())
    }

    /// The holder of a Lease in the flannel namespace (the route controller's or the
    /// per-node GC's election).
    pub fn lease_holder(&self) -> Result<Option<(String, String)>, LabError> {
        let text = self.kubectl(&[
            "-n",
            NAMESPACE,
            "get",
            "leases",
            // Not the join queue's entries (no holder, but a label to be sure).
            "-l",
            "!flannel-rs.io/queue",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.holderIdentity}{\"\\n\"}{end}",
        ])?;
        Ok(text.lines().find_map(|l| {
            let (lease, holder) = l.split_once(' ')?;
            (!holder.is_empty()).then(|| (lease.to_string(), holder.to_string()))
        }))
    }

    /// Delete pod `name` in the flannel namespace at once (no grace: as a crash would).
    pub fn kill_flannel_pod(&self, name: &str) -> Result<(), LabError> {
        self.kubectl(&[
            "-n",
            NAMESPACE,
            "delete",
            "pod",
            name,
            "--grace-period=0",
            "--force",
        ])
        .map(drop)
    }

    /// `kubectl exec` in a pod (default namespace unless `namespace`); stdout.
    pub fn exec(&self, namespace: &str, pod: &str, command: &[&str]) -> Result<String, LabError> {
        let mut args = vec!["-n", namespace, "exec", pod, "--"];
        args.extend_from_slice(command);
        self.kubectl(&args)
    }

    /// Wait up to `timeout` for `f`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        f: impl FnMut() -> Result<(), String>,
    ) -> Result<(), LabError> {
        crate::lab::wait(what, timeout, f)
    }
}
