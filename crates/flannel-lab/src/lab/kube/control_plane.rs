//! The `--kube` lab's control plane in the router namespace, beside etcd (it keeps its
//! objects there, under `/registry`): kube-apiserver (token authentication, the Node
//! authorizer and RBAC, a certificate for its address and the `kubernetes` Service),
//! kube-controller-manager (podCIDRs from `--cluster-cidr`, ServiceAccount tokens, the
//! DaemonSet and Deployment controllers) and kube-scheduler.

use super::files::{kubeconfig, token_line, APISERVER_PORT, KUBERNETES_SERVICE_IP, SERVICE_RANGE};
use crate::lab::{io, wait, Lab, LabError};
use crate::topology::{POD_NETWORK, ROUTER_A};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A random bearer token (32 hex digits).
pub(crate) fn token() -> Result<String, LabError> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let path = std::path::Path::new("/dev/urandom");
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io(path))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Lab {
    pub(crate) fn kube_dir(&self) -> PathBuf {
        self.dir.join("kube")
    }

    fn write(&self, name: &str, text: &str) -> Result<PathBuf, LabError> {
        let path = self.kube_dir().join(name);
        std::fs::write(&path, text).map_err(io(&path))?;
        Ok(path)
    }

    /// The CA, the API server's certificate, the ServiceAccount key, the tokens (admin,
    /// controller manager, scheduler, one per possible node) and their kubeconfigs.
    fn make_kube_credentials(&self) -> Result<(), LabError> {
        let dir = self.kube_dir();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let pki =
            |e: rcgen::Error| LabError::Invalid(format!("making the lab's kube certificates: {e}"));
        let ca = crate::pki::Authority::new("flannel-lab kubernetes CA").map_err(pki)?;
        let ips: Vec<IpAddr> = vec![
            IpAddr::V4(ROUTER_A),
            KUBERNETES_SERVICE_IP.parse().expect("an address"),
        ];
        let (cert, key) = ca
            .leaf_for(
                "kube-apiserver",
                &ips,
                &[
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                ],
                true,
                false,
            )
            .map_err(pki)?;
        let ca_path = self.write("ca.pem", &ca.ca_pem)?;
        self.write("apiserver.pem", &cert)?;
        self.write("apiserver.key", &key)?;
        let (private, public) = crate::pki::key_pair().map_err(pki)?;
        self.write("sa.key", &private)?;
        self.write("sa.pub", &public)?;
        let mut tokens = String::new();
        let users = [
            ("admin", "admin", "system:masters"),
            (
                "controller-manager",
                "system:kube-controller-manager",
                "system:masters",
            ),
            ("scheduler", "system:kube-scheduler", "system:masters"),
        ];
        for (file, user, groups) in users {
            let t = token()?;
            tokens.push_str(&token_line(&t, user, groups));
            self.write(
                &format!("{file}.kubeconfig"),
                &kubeconfig(user, &t, &ca_path),
            )?;
        }
        // The Node authorizer knows a kubelet by its user `system:node:<name>` in
        // `system:nodes`: a token per node the lab can ever have.
        for i in 1..=crate::topology::MAX_NODES {
            let n = self.spec().node(i);
            let t = token()?;
            let user = format!("system:node:{}", n.name);
            tokens.push_str(&token_line(&t, &user, "system:nodes"));
            self.write(
                &format!("{}.kubeconfig", n.name),
                &kubeconfig(&user, &t, &ca_path),
            )?;
        }
        self.write("tokens.csv", &tokens)?;
        Ok(())
    }

    /// kubectl as the lab's admin, inside the router namespace (the API server's address is
    /// a lab address, reachable only there); stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, LabError> {
        self.kubectl_with(args, None)
    }

    pub fn kubectl_with(&self, args: &[&str], stdin: Option<&str>) -> Result<String, LabError> {
        let config = self
            .kube_dir()
            .join("admin.kubeconfig")
            .display()
            .to_string();
        let mut all = vec!["kubectl", "--kubeconfig", &config];
        all.extend_from_slice(args);
        Ok(self.router().ok_with(&all, stdin.map(str::as_bytes))?)
    }

    /// The API server, then the controller manager and the scheduler; waits until the API
    /// server is ready.
    pub(crate) fn start_control_plane(&mut self) -> Result<(), LabError> {
        self.make_kube_credentials()?;
        let bin_dir = self.state.bins.kube_bin_dir.clone();
        let bin = |name: &str| bin_dir.join(name).display().to_string();
        let kube_dir = self.kube_dir();
        let k = |name: &str| kube_dir.join(name).display().to_string();
        let router = self.router();
        let apiserver = router.spawn_detached(
            &[
                &bin("kube-apiserver"),
                &format!("--etcd-servers={}", self.spec().etcd_endpoint()),
                &format!("--bind-address={ROUTER_A}"),
                &format!("--advertise-address={ROUTER_A}"),
                &format!("--secure-port={APISERVER_PORT}"),
                "--insecure-port=0",
                &format!("--tls-cert-file={}", k("apiserver.pem")),
                &format!("--tls-private-key-file={}", k("apiserver.key")),
                &format!("--token-auth-file={}", k("tokens.csv")),
                "--authorization-mode=Node,RBAC",
                &format!("--service-account-key-file={}", k("sa.pub")),
                &format!("--service-account-signing-key-file={}", k("sa.key")),
                "--service-account-issuer=https://kubernetes.default.svc",
                &format!("--service-cluster-ip-range={SERVICE_RANGE}"),
                "--kubelet-preferred-address-types=InternalIP",
                "--allow-privileged=true",
            ],
            &[],
            &kube_dir.join("kube-apiserver.log"),
        )?;
        self.kube_state_mut().apiserver_pid = Some(apiserver);
        self.save()?;
        wait("kube-apiserver", Duration::from_secs(60), || {
            self.kubectl(&["get", "--raw", "/readyz"])
                .map(drop)
                .map_err(|e| e.to_string())
        })?;
        let kcm = router.spawn_detached(
            &[
                &bin("kube-controller-manager"),
                &format!("--kubeconfig={}", k("controller-manager.kubeconfig")),
                "--allocate-node-cidrs=true",
                &format!("--cluster-cidr={POD_NETWORK}"),
                "--node-cidr-mask-size=24",
                &format!("--service-cluster-ip-range={SERVICE_RANGE}"),
                &format!("--service-account-private-key-file={}", k("sa.key")),
                &format!("--root-ca-file={}", k("ca.pem")),
                "--leader-elect=false",
                "--port=0",
                "--bind-address=127.0.0.1",
                // Nodes are checked every 2 s and a gone kubelet counts after 20 s.
                "--node-monitor-period=2s",
                "--node-monitor-grace-period=20s",
            ],
            &[],
            &kube_dir.join("kube-controller-manager.log"),
        )?;
        let scheduler = router.spawn_detached(
            &[
                &bin("kube-scheduler"),
                &format!("--kubeconfig={}", k("scheduler.kubeconfig")),
                "--leader-elect=false",
                "--port=0",
                "--bind-address=127.0.0.1",
            ],
            &[],
            &kube_dir.join("kube-scheduler.log"),
        )?;
        let state = self.kube_state_mut();
        state.controller_manager_pid = Some(kcm);
        state.scheduler_pid = Some(scheduler);
        self.save()?;
        // The ServiceAccount controller makes `default` in every namespace; pods wait for it.
        wait(
            "the controller manager (the default ServiceAccount)",
            Duration::from_secs(60),
            || {
                self.kubectl(&["get", "serviceaccount", "default", "-o", "name"])
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        )?;
        Ok(())
    }
}
