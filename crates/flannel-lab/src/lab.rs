//! The running lab: building it (`up`), reading it back (`status`, the ping matrix), faults
//! (kill/restart a node, console edits, throttling), growing it (`add-node`) and removing
//! every trace of it (`down`). State lives in `/run/flannel-lab/<prefix>/` (tmpfs: gone at
//! reboot, removed by `down`); the processes run detached inside the lab's namespaces.

use crate::netns::{self, CmdError, Netns};
use crate::topology::{
    Backend, LabSpec, Mode, NodeSpec, ADMIN, API_PORT, METADATA_IP, ROUTER_A, ROUTER_B, SECRET_ID,
    SECRET_KEY,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tencent_vpc_emulator::scenario::Scenario;

/// Where Debian's containernetworking-plugins live.
pub const CNI_PLUGINS: &str = "/usr/lib/cni";
const STATE_ROOT: &str = "/run/flannel-lab";
const HEALTH_PORT: &str = "8081";
/// The lab's subnet leases live 30 s (a production lease 24 h): a killed node's lease expires
/// and the elected agent collects its routes within a minute, while you watch.
pub const LEASE_TTL_SECS: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("missing prerequisites:\n{}", .0.iter().map(|m| format!("  - {m}")).collect::<Vec<_>>().join("\n"))]
    Missing(Vec<String>),
    #[error("a lab named {0:?} is already up (run `flannel-lab down` first)")]
    AlreadyUp(String),
    #[error("no lab named {0:?} is up (run `flannel-lab up`)")]
    NotUp(String),
    #[error("no node named {0:?} in the lab")]
    UnknownNode(String),
    #[error("the lab has {0} nodes already (at most {max})", max = crate::topology::MAX_NODES)]
    Full(u8),
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {secs} s waiting for {what}; last: {last}")]
    Timeout {
        what: String,
        secs: u64,
        last: String,
    },
    #[error("the emulator's admin API answered {0}")]
    Admin(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LabError + '_ {
    move |source| LabError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn wait(
    what: &str,
    timeout: Duration,
    f: impl FnMut() -> Result<(), String>,
) -> Result<(), LabError> {
    netns::wait_until(timeout, f).map_err(|last| LabError::Timeout {
        what: what.into(),
        secs: timeout.as_secs(),
        last,
    })
}

/// The programs the lab runs: ours (beside flannel-lab) and the system's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bins {
    pub flanneld: PathBuf,
    pub flannel: PathBuf,
    pub emulator: PathBuf,
}

impl Bins {
    /// Our binaries from `dir` (default: beside this executable).
    pub fn from_dir(dir: Option<PathBuf>) -> Bins {
        let dir = dir
            .or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|e| e.parent().map(Path::to_path_buf))
            })
            .unwrap_or_default();
        Bins {
            flanneld: dir.join("flanneld"),
            flannel: dir.join("flannel"),
            emulator: dir.join("tencent-vpc-emulator"),
        }
    }
}

/// Everything `up` needs that is not there, each with how to get it.
pub fn missing_prerequisites(bins: &Bins) -> Vec<String> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (network namespaces): run as root".into());
    }
    let on_path = |p: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(p).is_file()))
    };
    for (program, package) in [
        ("ip", "iproute2"),
        ("etcd", "etcd-server"),
        ("etcdctl", "etcd-client"),
        ("iptables", "iptables"),
        ("curl", "curl"),
        ("openssl", "openssl"),
        ("ping", "iputils-ping"),
        ("bridge", "iproute2"),
    ] {
        if !on_path(program) {
            missing.push(format!("{program}: apt-get install {package}"));
        }
    }
    for plugin in ["bridge", "host-local"] {
        if !Path::new(CNI_PLUGINS).join(plugin).is_file() {
            missing.push(format!(
                "{CNI_PLUGINS}/{plugin}: apt-get install containernetworking-plugins"
            ));
        }
    }
    for bin in [&bins.flanneld, &bins.flannel, &bins.emulator] {
        if !bin.is_file() {
            missing.push(format!(
                "{}: cargo build --release -p flanneld -p tencent-vpc-emulator -p flannel-lab",
                bin.display()
            ));
        }
    }
    missing
}

/// What is kept between invocations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub spec: LabSpec,
    pub bins: Bins,
    pub nodes: Vec<NodeState>,
    /// Seconds from the last `up`/`add-node` start to a full reachability matrix.
    pub converged_secs: Option<f64>,
    pub etcd_pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub index: u8,
    pub flanneld_pid: Option<u32>,
    pub pod_ip: Option<String>,
}

pub fn state_dir(prefix: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(prefix)
}

pub struct Lab {
    pub state: State,
    pub dir: PathBuf,
}

impl Lab {
    pub fn spec(&self) -> &LabSpec {
        &self.state.spec
    }

    pub fn router(&self) -> Netns {
        Netns::named(&self.spec().router())
    }

    pub fn nodes(&self) -> Vec<NodeSpec> {
        self.state
            .nodes
            .iter()
            .map(|n| self.spec().node(n.index))
            .collect()
    }

    fn node_dir(&self, n: &NodeSpec) -> PathBuf {
        self.dir.join(&n.name)
    }

    fn save(&self) -> Result<(), LabError> {
        let path = self.dir.join("state.json");
        let text = serde_json::to_string_pretty(&self.state).expect("state serialises");
        std::fs::write(&path, text).map_err(io(&path))
    }

    /// The lab named `prefix`, as `up` left it.
    pub fn load(prefix: &str) -> Result<Lab, LabError> {
        let dir = state_dir(prefix);
        let path = dir.join("state.json");
        let text = std::fs::read_to_string(&path).map_err(|_| LabError::NotUp(prefix.into()))?;
        let state = serde_json::from_str(&text).map_err(|e| LabError::Io {
            path: path.display().to_string(),
            source: std::io::Error::other(e),
        })?;
        Ok(Lab { state, dir })
    }

    /// Build the lab with `nodes` nodes, reporting progress, and wait for the full
    /// reachability matrix; on failure everything made so far stays for `down` to remove (and
    /// for its logs to be read).
    pub fn up(
        spec: LabSpec,
        nodes: u8,
        bins: Bins,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Lab, LabError> {
        Self::up_until(spec, nodes, bins, progress, Reach::Full)
    }

    /// `up`, waiting for `reach` (a big lab checks node-1 against every other node only: the
    /// full matrix grows with the square of the nodes).
    pub fn up_until(
        spec: LabSpec,
        nodes: u8,
        bins: Bins,
        progress: &mut dyn FnMut(&str),
        reach: Reach,
    ) -> Result<Lab, LabError> {
        let missing = missing_prerequisites(&bins);
        if !missing.is_empty() {
            return Err(LabError::Missing(missing));
        }
        if nodes == 0 || nodes > crate::topology::MAX_NODES {
            return Err(LabError::Full(nodes));
        }
        let dir = state_dir(&spec.prefix);
        if dir.exists() || Netns::named(&spec.router()).exists() {
            return Err(LabError::AlreadyUp(spec.prefix.clone()));
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut lab = Lab {
            state: State {
                spec,
                bins,
                nodes: Vec::new(),
                converged_secs: None,
                etcd_pid: None,
            },
            dir,
        };
        lab.save()?;

        progress("VPC router: subnet-a 172.16.1.0/24 (rtb-a), subnet-b 172.16.2.0/24 (rtb-b)");
        let router = Netns::create(&lab.spec().router())?;
        // A fixed MAC: a bridge without one takes its lowest port MAC, so a node joining
        // would change the gateway's MAC under every other node's ARP entry.
        for (bridge, gw, mac) in [
            ("br-a", ROUTER_A, "02:00:ac:10:01:01"),
            ("br-b", ROUTER_B, "02:00:ac:10:02:01"),
        ] {
            router.ok(&[
                "ip", "link", "add", bridge, "address", mac, "type", "bridge",
            ])?;
            router.ok(&["ip", "addr", "add", &format!("{gw}/24"), "dev", bridge])?;
            router.ok(&["ip", "link", "set", bridge, "up"])?;
        }
        router.ok(&[
            "ip",
            "addr",
            "add",
            &format!("{METADATA_IP}/32"),
            "dev",
            "lo",
        ])?;
        router.sysctl("net.ipv4.ip_forward", "1")?;

        progress("etcd on 172.16.1.1:2379");
        lab.start_etcd()?;
        progress("Tencent VPC emulator: API http://172.16.1.1:9000, metadata http://169.254.0.23");
        lab.start_emulator()?;
        if (lab.spec().backend, lab.spec().mode) == (Backend::TencentVpc, Mode::Controller) {
            progress("route controller (flanneld --controller)");
            lab.start_controller()?;
        }
        let mut first_start = None;
        for i in 1..=nodes {
            let n = lab.spec().node(i);
            progress(&format!(
                "{}: {} in {} ({}), flanneld {}",
                n.name,
                n.ip,
                n.subnet.id(),
                n.instance_id,
                lab.spec().backend.name()
            ));
            let started = lab.create_node(&n)?;
            first_start.get_or_insert(started);
        }
        for n in lab.nodes() {
            lab.add_pod(&n)?;
        }
        lab.save()?;
        let started = first_start.unwrap_or_else(Instant::now);
        match reach {
            Reach::Full => {
                progress("waiting for every pod to reach every other pod");
                lab.converge(started)?;
            }
            Reach::FromFirst => {
                progress("waiting for node-1's pod and every other pod to reach each other");
                lab.converge_node(1, started)?;
            }
        }
        Ok(lab)
    }

    fn start_etcd(&mut self) -> Result<(), LabError> {
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

    fn spawn_etcd(&mut self) -> Result<(), LabError> {
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

    /// The emulator's API call counts: action → result → calls.
    pub fn calls(
        &self,
    ) -> Result<std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>, LabError>
    {
        let text = self.admin("GET", "/calls", None)?;
        serde_json::from_str(&text).map_err(|e| LabError::Admin(format!("unreadable calls: {e}")))
    }

    /// etcdctl against the lab's etcd (from inside the router namespace).
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, LabError> {
        let endpoints = self.spec().etcd_endpoint();
        let mut all = vec!["env", "ETCDCTL_API=3", "etcdctl", "--endpoints", &endpoints];
        all.extend_from_slice(args);
        Ok(self.router().ok(&all)?)
    }

    /// A CA and the API's certificate for 172.16.1.1 (made here, trusted by nobody until the
    /// user adds `ca.pem`).
    fn make_certificate(&self) -> Result<(), LabError> {
        let d = |f: &str| self.dir.join(f).display().to_string();
        let ext = self.dir.join("san.ext");
        std::fs::write(&ext, format!("subjectAltName=IP:{ROUTER_A}\n")).map_err(io(&ext))?;
        for args in [
            vec![
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &d("ca.key"),
                "-out",
                &d("ca.pem"),
                "-days",
                "30",
                "-subj",
                "/CN=flannel-lab CA",
            ],
            vec![
                "openssl",
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &d("tls.key"),
                "-out",
                &d("tls.csr"),
                "-subj",
                "/CN=172.16.1.1",
            ],
            vec![
                "openssl",
                "x509",
                "-req",
                "-in",
                &d("tls.csr"),
                "-CA",
                &d("ca.pem"),
                "-CAkey",
                &d("ca.key"),
                "-CAcreateserial",
                "-out",
                &d("tls.pem"),
                "-days",
                "30",
                "-extfile",
                &d("san.ext"),
            ],
        ] {
            netns::host(&args)?;
        }
        Ok(())
    }

    fn start_emulator(&self) -> Result<(), LabError> {
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

    fn cloud_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TENCENTCLOUD_SECRET_ID", SECRET_ID.into()),
            ("TENCENTCLOUD_SECRET_KEY", SECRET_KEY.into()),
        ]
    }

    fn start_controller(&self) -> Result<(), LabError> {
        let mut env = self.cloud_env();
        env.push(("HOSTNAME", "lab-controller".into()));
        let flanneld = self.state.bins.flanneld.display().to_string();
        let endpoints = format!("--etcd-endpoints={}", self.spec().etcd_endpoint());
        self.router().spawn_detached(
            &[&flanneld, "--controller", &endpoints],
            &env,
            &self.dir.join("controller.log"),
        )?;
        Ok(())
    }

    /// The node's namespace, its cable to the router, and its flanneld; when flanneld started.
    fn create_node(&mut self, n: &NodeSpec) -> Result<Instant, LabError> {
        let router = self.router();
        let ns = Netns::create(&n.ns)?;
        router.ok(&[
            "ip",
            "link",
            "add",
            &n.router_port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &n.ns,
        ])?;
        router.ok(&[
            "ip",
            "link",
            "set",
            &n.router_port,
            "master",
            n.subnet.bridge(),
            "up",
        ])?;
        ns.ok(&["ip", "addr", "add", &format!("{}/24", n.ip), "dev", "eth0"])?;
        ns.ok(&["ip", "link", "set", "eth0", "up"])?;
        ns.ok(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &n.subnet.gateway().to_string(),
        ])?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        let dir = self.node_dir(n);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        self.state.nodes.push(NodeState {
            index: n.index,
            flanneld_pid: None,
            pod_ip: None,
        });
        let started = Instant::now();
        self.start_flanneld(n)?;
        Ok(started)
    }

    fn start_flanneld(&mut self, n: &NodeSpec) -> Result<(), LabError> {
        let mut env = vec![("HOSTNAME", n.name.clone())];
        if (self.spec().backend, self.spec().mode) == (Backend::TencentVpc, Mode::PerNode) {
            env.extend(self.cloud_env());
        }
        let dir = self.node_dir(n);
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

    /// The kube-flannel.yml CNI config for node `n`'s files.
    fn cni_config(&self, n: &NodeSpec) -> String {
        let dir = self.node_dir(n);
        format!(
            r#"{{"cniVersion":"0.3.1","name":"cbr0","type":"flannel","delegate":{{"hairpinMode":true,"isDefaultGateway":true}},"subnetFile":"{}","dataDir":"{}","ipam":{{"dataDir":"{}"}}}}"#,
            dir.join("subnet.env").display(),
            dir.join("cni").display(),
            dir.join("ipam").display()
        )
    }

    /// A pod on `n` through our CNI plugin, once flanneld wrote subnet.env.
    fn add_pod(&mut self, n: &NodeSpec) -> Result<(), LabError> {
        let env_file = self.node_dir(n).join("subnet.env");
        wait(
            &format!("{}'s flanneld to write subnet.env", n.name),
            Duration::from_secs(60),
            || {
                env_file
                    .exists()
                    .then_some(())
                    .ok_or_else(|| tail(&self.node_dir(n).join("flanneld.log")))
            },
        )?;
        Netns::create(&n.pod_ns)?;
        let mut cmd = Netns::named(&n.ns).command(&self.state.bins.flannel.display().to_string());
        cmd.env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", format!("pod-{}", n.name))
            .env("CNI_NETNS", format!("/run/netns/{}", n.pod_ns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PLUGINS)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let spawn = |source| CmdError::Spawn {
            cmd: format!("CNI ADD on {}", n.name),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn)?;
        if let Some(mut pipe) = child.stdin.take() {
            use std::io::Write;
            pipe.write_all(self.cni_config(n).as_bytes())
                .map_err(spawn)?;
        }
        let out = child.wait_with_output().map_err(spawn)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(CmdError::Failed {
                cmd: format!("CNI ADD on {}", n.name),
                stderr: text,
            }
            .into());
        }
        let result: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .map(str::to_string);
        if let Some(s) = self.state.nodes.iter_mut().find(|s| s.index == n.index) {
            s.pod_ip = ip;
        }
        self.save()
    }

    /// The pods' reachability: `matrix[i][j]` = pod of node i reaches pod of node j.
    pub fn ping_matrix(&self) -> Vec<Vec<bool>> {
        let nodes = self.nodes();
        let ips: Vec<Option<String>> = self.state.nodes.iter().map(|n| n.pod_ip.clone()).collect();
        std::thread::scope(|scope| {
            let rows: Vec<_> = nodes
                .iter()
                .map(|from| {
                    let ips = &ips;
                    scope.spawn(move || {
                        ips.iter()
                            .map(|to| match to {
                                Some(ip) => {
                                    Netns::named(&from.pod_ns).succeeds(&["ping", "-c1", "-W1", ip])
                                }
                                None => false,
                            })
                            .collect::<Vec<bool>>()
                    })
                })
                .collect();
            rows.into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        })
    }

    /// Wait for a full matrix; record the time since `started` (a lost ping costs 0.2 s, so
    /// that is the resolution).
    pub fn converge(&mut self, started: Instant) -> Result<(), LabError> {
        wait(
            "every pod to reach every other pod",
            Duration::from_secs(120),
            || {
                let m = self.ping_matrix();
                let bad = m
                    .iter()
                    .enumerate()
                    .flat_map(|(i, r)| r.iter().enumerate().filter(move |(j, ok)| *j != i && !**ok))
                    .count();
                (bad == 0)
                    .then_some(())
                    .ok_or_else(|| format!("{bad} pod pairs cannot talk yet"))
            },
        )?;
        self.state.converged_secs = Some(started.elapsed().as_secs_f64());
        self.save()
    }

    /// Wait until node `index`'s pod and every other pod reach each other (all pings in
    /// parallel); record the time since `started`.
    fn converge_node(&mut self, index: u8, started: Instant) -> Result<(), LabError> {
        let me = self.spec().node(index);
        let my_ip = self.pod_ip(index);
        let others: Vec<(NodeSpec, Option<String>)> = self
            .state
            .nodes
            .iter()
            .filter(|n| n.index != index)
            .map(|n| (self.spec().node(n.index), n.pod_ip.clone()))
            .collect();
        wait(
            &format!("{}'s pod and every other pod to reach each other", me.name),
            Duration::from_secs(120),
            || {
                let failed = std::thread::scope(|scope| {
                    let checks: Vec<_> = others
                        .iter()
                        .flat_map(|(other, ip)| {
                            [
                                (me.pod_ns.clone(), ip.clone()),
                                (other.pod_ns.clone(), my_ip.clone()),
                            ]
                        })
                        .map(|(from, to)| {
                            scope.spawn(move || match to {
                                Some(ip) => {
                                    Netns::named(&from).succeeds(&["ping", "-c1", "-W0.2", &ip])
                                }
                                None => false,
                            })
                        })
                        .collect();
                    checks
                        .into_iter()
                        .map(|h| h.join().unwrap_or(false))
                        .filter(|ok| !ok)
                        .count()
                });
                (failed == 0)
                    .then_some(())
                    .ok_or_else(|| format!("{failed} pings failed"))
            },
        )?;
        self.state.converged_secs = Some(started.elapsed().as_secs_f64());
        self.save()
    }

    fn pod_ip(&self, index: u8) -> Option<String> {
        self.state
            .nodes
            .iter()
            .find(|n| n.index == index)
            .and_then(|n| n.pod_ip.clone())
    }

    /// One more node (and its pod), the lab waiting until it is reachable.
    pub fn add_node(&mut self) -> Result<NodeSpec, LabError> {
        let next = self.state.nodes.iter().map(|n| n.index).max().unwrap_or(0) + 1;
        if next > crate::topology::MAX_NODES {
            return Err(LabError::Full(next - 1));
        }
        let n = self.spec().node(next);
        let started = self.create_node(&n)?;
        self.add_pod(&n)?;
        self.converge_node(n.index, started)?;
        Ok(n)
    }

    pub fn find(&self, name: &str) -> Result<NodeSpec, LabError> {
        self.nodes()
            .into_iter()
            .find(|n| n.name == name || n.ns == name)
            .ok_or_else(|| LabError::UnknownNode(name.into()))
    }

    /// Kill a node's flanneld (SIGKILL: no cleanup, its lease and routes stay behind).
    pub fn kill_node(&mut self, name: &str) -> Result<(), LabError> {
        let n = self.find(name)?;
        if let Some(s) = self.state.nodes.iter_mut().find(|s| s.index == n.index) {
            if let Some(pid) = s.flanneld_pid.take() {
                kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        self.save()
    }

    /// Start a node's flanneld again (killing a running one first).
    pub fn restart_node(&mut self, name: &str) -> Result<(), LabError> {
        let n = self.find(name)?;
        self.kill_node(name)?;
        self.start_flanneld(&n)
    }

    /// Whether a node's flanneld is running.
    pub fn agent_running(&self, index: u8) -> bool {
        self.state
            .nodes
            .iter()
            .find(|s| s.index == index)
            .and_then(|s| s.flanneld_pid)
            .is_some_and(alive)
    }

    /// Whether a node's flanneld answers /readyz with 200.
    pub fn agent_ready(&self, n: &NodeSpec) -> bool {
        Netns::named(&n.ns).succeeds(&[
            "curl",
            "-fsS",
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{HEALTH_PORT}/readyz"),
        ])
    }

    /// The node's lease subnet, from its subnet.env.
    pub fn lease_of(&self, n: &NodeSpec) -> Option<String> {
        let text = std::fs::read_to_string(self.node_dir(n).join("subnet.env")).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
            .and_then(|s| s.parse::<ipnet::Ipv4Net>().ok())
            .map(|n| n.trunc().to_string())
    }

    /// The emulator's admin API (from inside the router).
    pub fn admin(&self, method: &str, path: &str, body: Option<&str>) -> Result<String, LabError> {
        let url = format!("http://{ADMIN}{path}");
        let mut args = vec!["curl", "-sS", "-X", method, "-w", "\n%{http_code}", &url];
        if let Some(b) = body {
            args.extend(["-H", "content-type: application/json", "--data-binary", b]);
        }
        let out = self.router().ok(&args)?;
        let (text, code) = out.rsplit_once('\n').unwrap_or((&out, ""));
        if code.starts_with('2') {
            Ok(text.to_string())
        } else {
            Err(LabError::Admin(format!(
                "{code} to {method} {path}: {text}"
            )))
        }
    }

    /// The VPC as the emulator holds it.
    pub fn cloud(&self) -> Result<Scenario, LabError> {
        let text = self.admin("GET", "/state", None)?;
        Scenario::from_json(&text).map_err(|e| LabError::Admin(format!("unreadable state: {e}")))
    }

    /// A console edit: delete or disable the routes to `destination` (in `table`, or every
    /// table); the route IDs touched.
    pub fn console(
        &self,
        action: ConsoleAction,
        destination: &str,
        table: Option<&str>,
    ) -> Result<Vec<String>, LabError> {
        let cloud = self.cloud()?;
        let mut touched = Vec::new();
        for t in cloud
            .route_tables
            .iter()
            .filter(|t| table.is_none_or(|want| t.route_table_id == want))
        {
            for r in t
                .routes
                .iter()
                .filter(|r| r.destination_cidr_block.to_string() == destination)
            {
                let path = format!("/route-tables/{}/routes/{}", t.route_table_id, r.route_id);
                match action {
                    ConsoleAction::DeleteRoute => self.admin("DELETE", &path, None)?,
                    ConsoleAction::DisableRoute => {
                        self.admin("POST", &format!("{path}/disable"), None)?
                    }
                };
                touched.push(format!("{}/{}", t.route_table_id, r.route_id));
            }
        }
        Ok(touched)
    }

    /// Change the routes-per-table quota, as a raise by support would.
    pub fn set_quota(&mut self, quota: usize) -> Result<(), LabError> {
        self.admin(
            "POST",
            "/quota",
            Some(&format!(r#"{{"route_quota":{quota}}}"#)),
        )?;
        self.state.spec.route_quota = quota;
        self.save()
    }

    /// Answer `percent` % of all API calls with RequestLimitExceeded (0 clears).
    pub fn throttle(&self, percent: u8) -> Result<(), LabError> {
        self.admin("DELETE", "/faults", None)?;
        if percent > 0 {
            let body = format!(
                r#"{{"action":"*","error_rate":{},"error_code":"RequestLimitExceeded"}}"#,
                f64::from(percent.min(100)) / 100.0
            );
            self.admin("POST", "/faults", Some(&body))?;
        }
        Ok(())
    }

    /// Which subnets a route table serves.
    pub fn table_subnets(cloud: &Scenario, table: &str) -> Vec<String> {
        let main = cloud
            .route_tables
            .iter()
            .find(|t| t.main)
            .map(|t| t.route_table_id.clone());
        cloud
            .subnets
            .iter()
            .filter(|s| {
                s.route_table_id
                    .as_ref()
                    .or(main.as_ref())
                    .map(String::as_str)
                    == Some(table)
            })
            .map(|s| s.subnet_id.clone())
            .collect()
    }
}

/// What `up` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Every pod reaches every other pod.
    Full,
    /// node-1's pod and every other pod reach each other.
    FromFirst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleAction {
    DeleteRoute,
    DisableRoute,
}

/// Running, not a zombie (a process the caller spawned and never reaped is one).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // `pid (comm) S ...`: the state follows the last ')'.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn kill(pid: u32, signal: nix::sys::signal::Signal) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), signal);
    }
}

/// The last lines of a log, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// What `down` removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub namespaces: Vec<String>,
    pub processes: usize,
}

/// Remove the lab named `prefix`, whatever state it is in (a failed `up` included): every
/// process in its namespaces, the namespaces (and with them their veths, bridges, routes and
/// iptables rules), and its state directory.
pub fn down(prefix: &str) -> Result<Removed, LabError> {
    let mine: Vec<Netns> = netns::list()
        .into_iter()
        .filter(|n| n == &format!("{prefix}-vpc") || n.starts_with(&format!("{prefix}-node-")))
        .map(|n| Netns::named(&n))
        .collect();
    let mut removed = Removed::default();
    let pids: Vec<i32> = mine.iter().flat_map(Netns::pids).collect();
    for &p in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let gone = netns::wait_until(Duration::from_secs(5), || {
        let left = pids.iter().filter(|p| alive(**p as u32)).count();
        (left == 0).then_some(()).ok_or_else(|| left.to_string())
    });
    if gone.is_err() {
        for &p in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    removed.processes = pids.len();
    for ns in &mine {
        ns.delete();
        removed.namespaces.push(ns.name.clone());
    }
    let dir = state_dir(prefix);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    Ok(removed)
}
