//! deploy/ as a user applies it: every manifest accepted by a real kube-apiserver (a
//! server-side dry run), only kinds both Kubernetes 1.20 and current releases serve, and the
//! CAM policy limited to the VPC route actions the backend calls.

use flanneld_testing::KubeApiServer;

/// Every manifest in deploy/, sorted.
fn manifests(deploy: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(deploy)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The (apiVersion, kind) pairs served both by Kubernetes 1.20 (what the tests run) and by
/// current releases: deploy/ uses nothing else, so it applies on either.
const SERVED_BY_1_20_AND_CURRENT: [(&str, &str); 10] = [
    ("v1", "Namespace"),
    ("v1", "ServiceAccount"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("apps/v1", "DaemonSet"),
    ("apps/v1", "Deployment"),
];

#[test]
fn deploy_uses_only_kinds_served_by_1_20_and_current_releases() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let mut seen = 0;
    for path in manifests(&deploy) {
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in text.split("\n---") {
            let top = |key: &str| {
                doc.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(|v| v.trim().trim_matches('"').to_string())
            };
            let (Some(api), Some(kind)) = (top("apiVersion:"), top("kind:")) else {
                continue;
            };
            assert!(
                SERVED_BY_1_20_AND_CURRENT.contains(&(api.as_str(), kind.as_str())),
                "{}: {api} {kind} is not served by both Kubernetes 1.20 and current releases",
                path.display()
            );
            seen += 1;
        }
    }
    assert!(seen >= 8, "{seen} objects in deploy/");
}

#[test]
#[ignore = "needs kube-apiserver (scripts/build-kube.sh) and etcd: run with --include-ignored"]
fn deploy_manifests_pass_a_server_side_dry_run() {
    let server = KubeApiServer::start();
    let kubeconfig = server.kubeconfig();
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let kubectl = |args: &[&str]| {
        let out = std::process::Command::new("kubectl")
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(args)
            .output()
            .expect("kubectl (scripts/setup.sh installs kubernetes-client when missing)");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let ns = deploy.join("namespace.yaml");
    let (ok, out) = kubectl(&["apply", "-f", ns.to_str().unwrap()]);
    assert!(ok, "{out}");
    for path in manifests(&deploy) {
        let f = path.file_name().unwrap().to_string_lossy().into_owned();
        if f == "namespace.yaml" {
            continue;
        }
        let (ok, out) = kubectl(&["apply", "--dry-run=server", "-f", path.to_str().unwrap()]);
        assert!(ok, "{f}: {out}");
        assert!(out.contains("(server dry run)"), "{f}: {out}");
    }
    // The CAM policy is JSON with only the VPC route actions the backend calls.
    let policy: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy.join("cam-policy.json")).unwrap())
            .unwrap();
    let actions = policy["statement"][0]["action"].as_array().unwrap();
    assert!(actions
        .iter()
        .all(|a| a.as_str().unwrap().starts_with("vpc:")));
    assert_eq!(actions.len(), 7);
}
