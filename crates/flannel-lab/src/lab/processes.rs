//! The lab's processes: etcd, the Tencent VPC emulator (with its certificate), the route
//! controller and each node's flanneld, all detached inside the lab's namespaces.

use super::{alive, io, kill, wait, Lab, LabError, HEALTH_PORT, LEASE_TTL_SECS};
use crate::netns::Netns;
use crate::topology::{
    Backend, Mode, NodeSpec, ADMIN, API_PORT, METADATA_IP, ROUTER_A, SECRET_ID, SECRET_KEY,
};
use std::time::Duration;

impl Lab {
    pub(crate) fn start_etcd(&mut self) -> Result<(), LabError> {
        self.spawn_etcd()?;
        self.etcdctl(&[
            "put",
            "/coreos.com/network/config",
            &self.spec().net_config(),
        ])?;
        Ok(())
    }

    /// Kill etcd (SIGKILL) and start it again on the same data, waiting until it serves.
    pub fn restart_etcd(&mut self) -> Result<(), LabError> {
        if let Some(pid) = self.state.etcd_pid.take() {
            kill(pid, nix::sys::signal::Signal::SIGKILL);
            wait("etcd to exit", Duration::from_secs(10), || {
                (!alive(pid))
                    .then_some(())
                    .ok_or_else(|| format!("pid {pid} alive"))
            })?;
        }
        self.spawn_etcd()
    }

    pub(crate) fn spawn_etcd(&mut self) -> Result<(), LabError> {
        let router = self.router();
        let client = format!("http://{ROUTER_A}:2379");
        let data = self.dir.join("etcd");
        let pid = router.spawn_detached(
            &[
                "etcd",
                "--name",
                "lab",
                "--data-dir",
                &data.display().to_string(),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "lab=http://127.0.0.1:2380",
            ],
            &[],
            &self.dir.join("etcd.log"),
        )?;
        self.state.etcd_pid = Some(pid);
        self.save()?;
        wait("etcd", Duration::from_secs(30), || {
            self.etcdctl(&["endpoint", "health"])
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }

    /// A CA and the API's certificate for 172.16.1.1 (made here, trusted by nobody until the
    /// user adds `ca.pem`).
    fn make_certificate(&self) -> Result<(), LabError> {
        let pki = crate::pki::server_for_ip("flannel-lab CA", std::net::IpAddr::V4(ROUTER_A))
            .map_err(|e| LabError::Invalid(format!("making the lab's certificate: {e}")))?;
        for (file, text) in [
            ("ca.pem", &pki.ca_pem),
            ("tls.pem", &pki.cert_pem),
            ("tls.key", &pki.key_pem),
        ] {
            let path = self.dir.join(file);
            std::fs::write(&path, text).map_err(io(&path))?;
        }
        Ok(())
    }

    pub(crate) fn start_emulator(&self) -> Result<(), LabError> {
        self.make_certificate()?;
        let scenario = self.dir.join("scenario.json");
        std::fs::write(&scenario, self.spec().scenario()).map_err(io(&scenario))?;
        let emulator = self.state.bins.emulator.display().to_string();
        self.router().spawn_detached(
            &[
                &emulator,
                "--scenario",
                &scenario.display().to_string(),
                "--listen",
                &format!("{ROUTER_A}:{API_PORT}"),
                "--metadata-listen",
                &format!("{METADATA_IP}:80"),
                "--admin-listen",
                ADMIN,
                "--dataplane-netns",
                &self.spec().router(),
                "--tls-listen",
                &format!("{ROUTER_A}:443"),
                "--tls-cert",
                &self.dir.join("tls.pem").display().to_string(),
                "--tls-key",
                &self.dir.join("tls.key").display().to_string(),
            ],
            &[],
            &self.dir.join("emulator.log"),
        )?;
        wait("the emulator", Duration::from_secs(30), || {
            self.admin("GET", "/state", None)
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }

    pub(crate) fn cloud_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TENCENTCLOUD_SECRET_ID", SECRET_ID.into()),
            ("TENCENTCLOUD_SECRET_KEY", SECRET_KEY.into()),
        ]
    }

    pub(crate) fn start_controller(&self) -> Result<(), LabError> {
        let mut env = self.cloud_env();
        env.push(("HOSTNAME", "lab-controller".into()));
        let flanneld = self.state.bins.flanneld.display().to_string();
        let endpoints = format!("--etcd-endpoints={}", self.spec().etcd_endpoint());
        let healthz = format!("--healthz-port={HEALTH_PORT}");
        self.router().spawn_detached(
            &[
                &flanneld,
                "--controller",
                &endpoints,
                "--healthz-ip=127.0.0.1",
                &healthz,
            ],
            &env,
            &self.dir.join("controller.log"),
        )?;
        Ok(())
    }

    pub(crate) fn start_flanneld(&mut self, n: &NodeSpec) -> Result<(), LabError> {
        let mut env = vec![("HOSTNAME", n.name.clone())];
        if (self.spec().backend, self.spec().mode) == (Backend::TencentVpc, Mode::PerNode) {
            env.extend(self.cloud_env());
        }
        let dir = self.node_dir(n);
        // Each node its own WireGuard key (upstream's default file is one per machine).
        env.push((
            "WIREGUARD_KEY_FILE",
            dir.join("wgkey").display().to_string(),
        ));
        let flanneld = self.state.bins.flanneld.display().to_string();
        let args = [
            flanneld,
            format!("--etcd-endpoints={}", self.spec().etcd_endpoint()),
            "--iface=eth0".into(),
            "--ip-masq".into(),
            format!("--subnet-lease-ttl={LEASE_TTL_SECS}"),
            format!("--subnet-file={}", dir.join("subnet.env").display()),
            "--healthz-ip=127.0.0.1".into(),
            format!("--healthz-port={HEALTH_PORT}"),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let pid = Netns::named(&n.ns).spawn_detached(&args, &env, &dir.join("flanneld.log"))?;
        if let Some(s) = self.state.nodes.iter_mut().find(|s| s.index == n.index) {
            s.flanneld_pid = Some(pid);
        }
        self.save()
    }
}
