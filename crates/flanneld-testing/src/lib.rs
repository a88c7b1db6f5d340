//! Test support for flannel-rs (a dev-dependency only; never in a release binary): a real etcd server (Debian's `etcd-server`) on free loopback ports with a
//! temporary data directory, stopped on drop. Used by the integration tests and benches.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod netns;

pub struct EtcdServer {
    child: Option<Child>,
    pub client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    tls: Option<TlsFiles>,
    /// Where it listens: loopback on the host, or an address inside a network namespace.
    host: String,
    netns: Option<String>,
}

/// Certificates for a TLS etcd: a CA, the server's pair and a client pair.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// A throw-away CA and two leaf certificates for 127.0.0.1.
    pub fn generate(dir: &std::path::Path) -> TlsFiles {
        let ca = flannel_lab::pki::Authority::new("flannel-test-ca").expect("a CA");
        std::fs::write(dir.join("ca.crt"), &ca.ca_pem).expect("writing ca.crt");
        let lo = std::net::IpAddr::from([127, 0, 0, 1]);
        for (name, server) in [("server", true), ("client", false)] {
            let (cert, key) = ca.leaf(name, lo, server, true).expect("a leaf certificate");
            std::fs::write(dir.join(format!("{name}.crt")), cert).expect("writing a certificate");
            std::fs::write(dir.join(format!("{name}.key")), key).expect("writing a key");
        }
        TlsFiles {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl EtcdServer {
    /// Start etcd and wait until it answers (panics after 20 s: a test cannot go on).
    pub fn start() -> EtcdServer {
        Self::start_inner(false)
    }

    /// Start etcd serving TLS with client-certificate authentication.
    pub fn start_tls() -> EtcdServer {
        Self::start_inner(true)
    }

    fn start_inner(tls: bool) -> EtcdServer {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let tls = tls.then(|| TlsFiles::generate(dir.path()));
        let mut s = EtcdServer {
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            dir,
            tls,
            host: "127.0.0.1".into(),
            netns: None,
        };
        s.spawn();
        s
    }

    /// Start etcd inside network namespace `netns`, listening on `ip` there (for daemons
    /// running in namespaces of the same underlay; etcdctl runs inside it too).
    pub fn start_in(netns: &str, ip: &str) -> EtcdServer {
        let mut s = EtcdServer {
            child: None,
            client_port: 2379,
            peer_port: 2380,
            dir: tempfile::tempdir().expect("a temporary directory"),
            tls: None,
            host: ip.into(),
            netns: Some(netns.into()),
        };
        s.spawn();
        s
    }

    /// A command for `program`, run inside the namespace when etcd lives in one.
    fn command(&self, program: &str) -> Command {
        match &self.netns {
            None => Command::new(program),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
        }
    }

    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.client_port)
    }

    fn tls_args(&self, server: bool) -> Vec<String> {
        let Some(t) = &self.tls else {
            return Vec::new();
        };
        let p = |p: &PathBuf| p.display().to_string();
        if server {
            vec![
                "--cert-file".into(),
                p(&t.server_cert),
                "--key-file".into(),
                p(&t.server_key),
                "--trusted-ca-file".into(),
                p(&t.ca),
                "--client-cert-auth".into(),
            ]
        } else {
            vec![
                "--cacert".into(),
                p(&t.ca),
                "--cert".into(),
                p(&t.client_cert),
                "--key".into(),
                p(&t.client_key),
            ]
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) {
        let client = self.endpoint();
        let peer = format!("http://{}:{}", self.host, self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).expect("etcd log file");
        let child = self
            .command("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(self.data_dir())
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(self.tls_args(true))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting etcd (install Debian's etcd-server: scripts/setup.sh)");
        self.child = Some(child);
        self.wait_healthy();
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self
                .command("etcdctl")
                .env("ETCDCTL_API", "3")
                .args([
                    "--endpoints",
                    &self.endpoint(),
                    "--dial-timeout=1s",
                    "--command-timeout=2s",
                ])
                .args(self.tls_args(false))
                .args(["endpoint", "health"])
                .output();
            let last = match out {
                Ok(o) if o.status.success() => return,
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy: etcdctl: {last}\netcd log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Kill etcd (SIGKILL, no graceful shutdown) and start it again on the same data and ports.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Kill etcd, delete its data and start an empty store on the same ports: what a lost
    /// disk or a careless re-provisioning does to a cluster.
    pub fn wipe_and_restart(&mut self) {
        self.stop();
        std::fs::remove_dir_all(self.data_dir()).expect("deleting etcd's data directory");
        self.spawn();
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Run etcdctl (API v3) against this server; returns stdout, panics on failure.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let out = self
            .command("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint()])
            .args(self.tls_args(false))
            .args(args)
            .output()
            .expect("running etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP proxy on a free loopback port in front of `target` that a test can cut, to partition
/// one client (say, a leader) from a server while others still reach it directly.
pub struct TcpProxy {
    pub addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: std::net::SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut cut_rx = cut_rx.clone();
                if *cut_rx.borrow() {
                    continue; // partitioned: drop new connections at once
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        TcpProxy { addr, cut, task }
    }

    /// Drop every connection through the proxy and refuse new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A real kube-apiserver (built from Debian's kubernetes source by `scripts/setup.sh` into
/// `/opt/flannel-rs/bin`, or `KUBE_APISERVER`) on a free loopback port over a real etcd, with a
/// static admin token; stopped on drop.
pub struct KubeApiServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    _etcd: EtcdServer,
}

/// The static token of the test API server's admin.
pub const KUBE_TOKEN: &str = "flannel-rs-test-token";

impl KubeApiServer {
    pub fn binary() -> PathBuf {
        std::env::var_os("KUBE_APISERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/opt/flannel-rs/bin/kube-apiserver"))
    }

    pub fn start() -> KubeApiServer {
        let etcd = EtcdServer::start();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let d = |f: &str| dir.path().join(f).display().to_string();
        std::fs::write(
            dir.path().join("tokens.csv"),
            format!("{KUBE_TOKEN},admin,admin-uid,system:masters\n"),
        )
        .expect("token file");
        let (private, public) = flannel_lab::pki::key_pair().expect("a key pair");
        std::fs::write(dir.path().join("sa.key"), private).expect("writing sa.key");
        std::fs::write(dir.path().join("sa.pub"), public).expect("writing sa.pub");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("apiserver.log")).expect("log");
        let child = Command::new(Self::binary())
            .args([
                &format!("--etcd-servers={}", etcd.endpoint()),
                "--bind-address=127.0.0.1",
                &format!("--secure-port={port}"),
                &format!("--cert-dir={}", d("certs")),
                &format!("--token-auth-file={}", d("tokens.csv")),
                "--authorization-mode=RBAC",
                &format!("--service-account-key-file={}", d("sa.pub")),
                &format!("--service-account-signing-key-file={}", d("sa.key")),
                "--service-account-issuer=https://kubernetes.default.svc",
                "--service-cluster-ip-range=10.96.0.0/12",
                "--insecure-port=0",
                "--advertise-address=127.0.0.1",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting {} ({e}); scripts/setup.sh builds it",
                    Self::binary().display()
                )
            });
        let s = KubeApiServer {
            child,
            port,
            dir,
            _etcd: etcd,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new("curl")
                .args([
                    "-fsSk",
                    "-H",
                    &format!("Authorization: Bearer {KUBE_TOKEN}"),
                ])
                .arg(format!("https://127.0.0.1:{port}/readyz"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|st| st.success());
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready: {}",
                std::fs::read_to_string(s.dir.path().join("apiserver.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    /// A kubeconfig for the admin (token, server certificate not verified: it is made up
    /// at start).
    pub fn kubeconfig(&self) -> PathBuf {
        let path = self.dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: https://127.0.0.1:{}\n    insecure-skip-tls-verify: true\nusers:\n- name: admin\n  user:\n    token: {KUBE_TOKEN}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: admin\ncurrent-context: t\n",
                self.port
            ),
        )
        .expect("kubeconfig");
        path
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
