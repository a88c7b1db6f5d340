//! The `--kube` lab's files as values (pure): kubeconfigs, the token file, each node's
//! containerd config and the script that starts containerd and the kubelet in the node's own
//! mount namespace, and the edits a user makes to deploy/'s files.

use crate::topology::{LabSpec, NodeSpec, ROUTER_A};
use serde_json::json;
use std::path::Path;

/// The API server's port on the router (subnet-a's gateway).
pub const APISERVER_PORT: u16 = 6443;
/// The `kubernetes` Service's ClusterIP (the first of the service range); the lab does what
/// kube-proxy would: one DNAT rule per node to the API server.
pub const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";
pub const SERVICE_RANGE: &str = "10.96.0.0/12";
/// The images `scripts/build-lab-images.sh` makes (imported into every node's containerd).
pub const PAUSE_IMAGE: &str = "docker.io/library/flannel-lab-pause:lab";
pub const BUSYBOX_IMAGE: &str = "docker.io/library/flannel-lab-busybox:lab";

/// The host paths deploy/'s DaemonSet and the kubelet use that every node needs its own copy
/// of (the lab's nodes share one filesystem): bind-mounted from the node's directory in the
/// node's private mount namespace. `/run/containerd` too: the shims' sockets, runc's state
/// and the pods' network namespaces live there.
pub const NODE_PRIVATE_DIRS: [&str; 7] = [
    "/run/containerd",
    "/run/flannel",
    "/opt/cni/bin",
    "/etc/cni/net.d",
    "/var/lib/cni",
    "/var/lib/kubelet",
    "/var/log",
];

/// The sysctls the kubelet sets at start, with the values it wants: files holding them are
/// bind-mounted over /proc/sys/… in the node's mount namespace, so it never changes the
/// machine's (real-node.md, FIX 3).
pub const KUBELET_SYSCTLS: [(&str, &str); 3] = [
    ("vm/overcommit_memory", "1"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
];

pub fn apiserver_url() -> String {
    format!("https://{ROUTER_A}:{APISERVER_PORT}")
}

/// A kubeconfig for `user` with a bearer token, trusting the lab's CA.
pub fn kubeconfig(user: &str, token: &str, ca: &Path) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: {user}\ncurrent-context: lab\n",
        apiserver_url(),
        ca.display()
    )
}

/// One line of kube-apiserver's `--token-auth-file`: token, user, uid, groups.
pub fn token_line(token: &str, user: &str, groups: &str) -> String {
    format!("{token},{user},{user},\"{groups}\"\n")
}

/// A node's containerd: its own root, socket and opt dir; its state in `/run/containerd`
/// (the node's own, bind-mounted) with the pods' network namespaces under it; the local pause
/// image; the CNI dirs the DaemonSet's init containers fill; `restrict_oom_score_adj` since
/// root here cannot lower scores (real-node.md, FIX 2).
pub fn containerd_config(node_dir: &Path) -> String {
    let d = |p: &str| node_dir.join(p).display().to_string();
    format!(
        r#"version = 2
root = "{root}"
state = "/run/containerd"

[grpc]
  address = "{sock}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
"#,
        root = d("containerd/root"),
        sock = d("containerd.sock"),
        opt = d("containerd/opt"),
    )
}

/// The node's kubelet flags (real-node.md's, plus image GC and eviction off: the lab's images
/// are imported, never pulled, and must stay).
pub fn kubelet_args(n: &NodeSpec, node_dir: &Path) -> Vec<String> {
    let d = |p: &str| node_dir.join(p).display().to_string();
    vec![
        "--container-runtime=remote".into(),
        format!(
            "--container-runtime-endpoint=unix://{}",
            d("containerd.sock")
        ),
        "--cgroup-driver=cgroupfs".into(),
        "--cgroups-per-qos=false".into(),
        "--enforce-node-allocatable=".into(),
        "--fail-swap-on=false".into(),
        "--root-dir=/var/lib/kubelet".into(),
        "--cert-dir=/var/lib/kubelet/pki".into(),
        format!("--hostname-override={}", n.name),
        format!("--node-ip={}", n.ip),
        format!("--address={}", n.ip),
        "--read-only-port=0".into(),
        format!("--pod-manifest-path={}", d("manifests")),
        format!("--pod-infra-container-image={PAUSE_IMAGE}"),
        format!("--kubeconfig={}", d("kubelet.kubeconfig")),
        "--image-gc-high-threshold=100".into(),
        "--image-gc-low-threshold=99".into(),
        "--eviction-hard=memory.available<1Mi,nodefs.available<1%,imagefs.available<1%".into(),
        "--node-status-update-frequency=2s".into(),
    ]
}

/// The node's script, run as `unshare -m --propagation unchanged nsenter --net=NODE-NETNS sh
/// SCRIPT`: the per-node directories and sysctl files bound over the shared paths, then
/// containerd (in the background) and the kubelet (this process, so its pid is the script's).
pub fn node_script(
    node_dir: &Path,
    containerd: &str,
    kubelet: &str,
    kubelet_args: &[String],
) -> String {
    let d = |p: &str| node_dir.join(p).display().to_string();
    let mut s = String::from("#!/bin/sh\n# flannel-lab: containerd and the kubelet of one node, in its own mount namespace.\nset -eu\n");
    for path in NODE_PRIVATE_DIRS {
        s.push_str(&format!(
            "mount --bind {} {path}\n",
            d(&format!("host{path}"))
        ));
    }
    for (key, _) in KUBELET_SYSCTLS {
        s.push_str(&format!(
            "mount --bind {} /proc/sys/{key}\n",
            d(&format!("sysctl/{}", key.replace('/', ".")))
        ));
    }
    s.push_str(&format!(
        "{containerd} --config {} >>{} 2>&1 &\n",
        d("containerd.toml"),
        d("containerd.log")
    ));
    // containerd's socket before the kubelet (which otherwise retries with backoff): a
    // condition with a deadline (30 s).
    s.push_str(&format!(
        "i=0\nwhile [ ! -S {sock} ]; do i=$((i+1)); [ $i -le 300 ] || {{ echo 'containerd did not start' >&2; exit 1; }}; sleep 0.1; done\n",
        sock = d("containerd.sock")
    ));
    let quoted: Vec<String> = kubelet_args.iter().map(|a| format!("'{a}'")).collect();
    s.push_str(&format!(
        "exec {kubelet} {} >>{} 2>&1\n",
        quoted.join(" "),
        d("kubelet.log")
    ));
    s
}

/// The lab's net-conf.json for the ConfigMap (the same as the etcd labs write).
pub fn net_conf_patch(spec: &LabSpec) -> String {
    let net_conf = spec.net_config();
    let pretty: serde_json::Value = serde_json::from_str(&net_conf).expect("net config is JSON");
    json!({"data": {"net-conf.json": serde_json::to_string_pretty(&pretty).expect("JSON") + "\n"}})
        .to_string()
}

/// The Secret's credentials, as a user sets them (`kubectl patch secret … --type merge`).
pub fn credentials_patch(secret_id: &str, secret_key: &str) -> String {
    json!({"stringData": {"TENCENTCLOUD_SECRET_ID": secret_id, "TENCENTCLOUD_SECRET_KEY": secret_key}})
        .to_string()
}

/// A busybox pod pinned to `node` that sleeps (and dies at once when deleted).
pub fn test_pod(name: &str, node: &str) -> String {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "flannel-lab-test"}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "busybox",
                "image": BUSYBOX_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/bin/sleep", "1000000"],
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}]
        }
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{Backend, Mode};

    fn spec(backend: Backend, mode: Mode) -> LabSpec {
        LabSpec {
            prefix: "k".into(),
            backend,
            mode,
            route_quota: 50,
            fallback: false,
            kube: true,
        }
    }

    #[test]
    fn the_node_script_binds_every_private_dir_and_sysctl_before_starting_anything() {
        let spec = spec(Backend::Vxlan, Mode::PerNode);
        let n = spec.node(2);
        let dir = Path::new("/run/flannel-lab/k/node-2");
        let script = node_script(dir, "containerd", "kubelet", &kubelet_args(&n, dir));
        let first_start = script.find("containerd --config").unwrap();
        for path in NODE_PRIVATE_DIRS {
            let bind = format!("mount --bind /run/flannel-lab/k/node-2/host{path} {path}\n");
            let at = script
                .find(&bind)
                .unwrap_or_else(|| panic!("{bind} missing"));
            assert!(at < first_start);
        }
        assert!(script.contains(
            "mount --bind /run/flannel-lab/k/node-2/sysctl/vm.overcommit_memory /proc/sys/vm/overcommit_memory\n"
        ));
        assert!(script.contains("'--hostname-override=node-2' '--node-ip=172.16.2.12'"));
        assert!(script.contains("'--eviction-hard=memory.available<1Mi,"));
        assert!(script.ends_with(">>/run/flannel-lab/k/node-2/kubelet.log 2>&1\n"));
        assert!(script.contains("exec kubelet '--container-runtime=remote'"));
    }

    #[test]
    fn containerd_keeps_its_state_in_the_nodes_own_paths() {
        let text = containerd_config(Path::new("/n"));
        assert!(text.contains("root = \"/n/containerd/root\""));
        assert!(text.contains("address = \"/n/containerd.sock\""));
        assert!(text.contains("restrict_oom_score_adj = true"));
        assert!(text.contains(&format!("sandbox_image = \"{PAUSE_IMAGE}\"")));
        assert!(text.contains("netns_mounts_under_state_dir = true"));
    }

    #[test]
    fn the_configmap_edit_is_the_labs_net_conf() {
        let patch: serde_json::Value = serde_json::from_str(&net_conf_patch(&spec(
            Backend::TencentVpc,
            Mode::Controller,
        )))
        .unwrap();
        let conf: serde_json::Value =
            serde_json::from_str(patch["data"]["net-conf.json"].as_str().unwrap()).unwrap();
        assert_eq!(conf["Network"], "10.244.0.0/16");
        assert_eq!(conf["Backend"]["Type"], "tencent-vpc");
        assert_eq!(conf["Backend"]["Mode"], "controller");
        assert_eq!(conf["Backend"]["Endpoint"], "http://172.16.1.1:9000");
    }

    #[test]
    fn kubeconfigs_and_tokens() {
        let k = kubeconfig("system:node:node-1", "t0k", Path::new("/l/ca.pem"));
        assert!(k.contains("server: https://172.16.1.1:6443\n"));
        assert!(k.contains("certificate-authority: /l/ca.pem\n"));
        assert!(k.contains("token: t0k\n"));
        assert_eq!(
            token_line("t0k", "system:node:node-1", "system:nodes"),
            "t0k,system:node:node-1,system:node:node-1,\"system:nodes\"\n"
        );
        let pod: serde_json::Value = serde_json::from_str(&test_pod("p1", "node-1")).unwrap();
        assert_eq!(pod["spec"]["nodeName"], "node-1");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Never");
    }
}
