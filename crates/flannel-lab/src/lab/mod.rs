//! The running lab: building it (`up`) and removing every trace of it (`down`), with the
//! parts in their own modules: `processes` (etcd, the emulator, flanneld, the controller),
//! `nodes` (node namespaces, pods through the CNI plugin, the ping matrix, `add-node`),
//! `faults` (kill/restart, quota, throttling) and `console` (the emulator's admin API: the
//! route tables as the user's console shows and edits them). State lives in
//! `/run/flannel-lab/<prefix>/` (tmpfs: gone at reboot, removed by `down`); the processes run
//! detached inside the lab's namespaces.

mod console;
mod faults;
pub mod kube;
mod nodes;
mod processes;

use crate::netns::{self, CmdError, Netns};
use crate::topology::{Backend, LabSpec, Mode, NodeSpec, METADATA_IP, ROUTER_A, ROUTER_B};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where Debian's containernetworking-plugins live.
pub const CNI_PLUGINS: &str = "/usr/lib/cni";
pub(crate) const STATE_ROOT: &str = "/run/flannel-lab";
pub(crate) const HEALTH_PORT: u16 = 8081;
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
    #[error("--nodes {0}: a lab has 1 to {max} nodes", max = crate::topology::MAX_NODES)]
    NodeCount(u8),
    #[error(transparent)]
    Prefix(#[from] crate::topology::PrefixError),
    #[error("{0}")]
    Invalid(String),
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

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LabError + '_ {
    move |source| LabError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub(crate) fn wait(
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
    /// `--kube`: kube-apiserver, kube-controller-manager, kube-scheduler and kubelet
    /// (scripts/build-kube.sh).
    #[serde(default = "default_kube_bin_dir")]
    pub kube_bin_dir: PathBuf,
    /// `--kube`: the image archives (scripts/build-image.sh, scripts/build-lab-images.sh).
    #[serde(default)]
    pub image_dir: PathBuf,
}

fn default_kube_bin_dir() -> PathBuf {
    PathBuf::from("/opt/flannel-rs/bin")
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
        // target/<profile>/ -> target/image/
        let image_dir = dir
            .parent()
            .map(|target| target.join("image"))
            .unwrap_or_else(|| dir.join("image"));
        Bins {
            flanneld: dir.join("flanneld"),
            flannel: dir.join("flannel"),
            emulator: dir.join("tencent-vpc-emulator"),
            kube_bin_dir: default_kube_bin_dir(),
            image_dir,
        }
    }

    /// The images every `--kube` node imports: flannel-rs (the version deploy/ names), the
    /// pause image and busybox.
    pub fn image_archives(&self) -> [PathBuf; 3] {
        [
            self.image_dir
                .join(format!("flannel-rs-{}.oci.tar", env!("CARGO_PKG_VERSION"))),
            self.image_dir.join("pause.oci.tar"),
            self.image_dir.join("busybox.oci.tar"),
        ]
    }
}

/// Everything `up --kube` needs besides what `up` does.
pub fn missing_kube_prerequisites(bins: &Bins) -> Vec<String> {
    let mut missing = Vec::new();
    for (program, package) in [
        ("kubectl", "kubernetes-client"),
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("runc", "runc"),
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
    ] {
        if !on_path(program) {
            missing.push(format!("{program}: apt-get install {package}"));
        }
    }
    for bin in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
    ] {
        let path = bins.kube_bin_dir.join(bin);
        if !path.is_file() {
            missing.push(format!(
                "{}: scripts/build-kube.sh kube-apiserver kube-controller-manager kube-scheduler kubelet pause",
                path.display()
            ));
        }
    }
    let [flannel, pause, busybox] = bins.image_archives();
    if !flannel.is_file() {
        missing.push(format!("{}: scripts/build-image.sh", flannel.display()));
    }
    for image in [pause, busybox] {
        if !image.is_file() {
            missing.push(format!("{}: scripts/build-lab-images.sh", image.display()));
        }
    }
    missing
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
}

/// Everything `up` needs that is not there, each with how to get it.
pub fn missing_prerequisites(bins: &Bins) -> Vec<String> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (network namespaces): run as root".into());
    }
    for (program, package) in [
        ("ip", "iproute2"),
        ("etcd", "etcd-server"),
        ("etcdctl", "etcd-client"),
        ("iptables", "iptables"),
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
    /// `--kube` labs: the control plane and what `down` must undo on the host.
    #[serde(default)]
    pub kube: Option<kube::KubeState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub index: u8,
    pub flanneld_pid: Option<u32>,
    pub pod_ip: Option<String>,
    /// `--kube`: the node script's pid, the kubelet's once it started.
    #[serde(default)]
    pub kubelet_pid: Option<u32>,
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

    pub(crate) fn node_dir(&self, n: &NodeSpec) -> PathBuf {
        self.dir.join(&n.name)
    }

    pub(crate) fn save(&self) -> Result<(), LabError> {
        let path = self.dir.join("state.json");
        let text = serde_json::to_string_pretty(&self.state).expect("state serialises");
        std::fs::write(&path, text).map_err(io(&path))
    }

    /// The lab named `prefix`, as `up` left it.
    pub fn load(prefix: &str) -> Result<Lab, LabError> {
        crate::topology::check_prefix(prefix)?;
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
        crate::topology::check_prefix(&spec.prefix)?;
        if nodes == 0 || nodes > crate::topology::MAX_NODES {
            return Err(LabError::NodeCount(nodes));
        }
        let mut missing = missing_prerequisites(&bins);
        if spec.kube {
            missing.extend(missing_kube_prerequisites(&bins));
        }
        if !missing.is_empty() {
            return Err(LabError::Missing(missing));
        }
        let dir = state_dir(&spec.prefix);
        if dir.exists() || Netns::named(&spec.router()).exists() {
            return Err(LabError::AlreadyUp(spec.prefix.clone()));
        }
        if spec.kube {
            kube::refuse_second(&spec.prefix)?;
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut lab = Lab {
            state: State {
                spec,
                bins,
                nodes: Vec::new(),
                converged_secs: None,
                etcd_pid: None,
                kube: None,
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
        if lab.spec().kube {
            let started = Instant::now();
            lab.up_kube(nodes, progress, started)?;
            progress("waiting for every pod to reach every other pod");
            lab.converge(started)?;
            return Ok(lab);
        }
        if (lab.spec().backend, lab.spec().mode) == (Backend::TencentVpc, Mode::Controller) {
            progress("route controller (flanneld --controller)");
            lab.start_controller()?;
        }
        let mut first_start = None;
        for i in 1..=nodes {
            let n = lab.spec().node(i);
            progress(&format!(
                "{}, flanneld {}",
                n.summary(),
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
            Reach::Nothing => {}
        }
        Ok(lab)
    }
}

/// What `up` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Every pod reaches every other pod.
    Full,
    /// node-1's pod and every other pod reach each other.
    FromFirst,
    /// Nothing: every node has its pod (a lab whose network cannot work yet, e.g. below
    /// its route quota).
    Nothing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleAction {
    DeleteRoute,
    DisableRoute,
}

/// Running, not a zombie (a process the caller spawned and never reaped is one).
pub(crate) fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // `pid (comm) S ...`: the state follows the last ')'.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

pub(crate) fn kill(pid: u32, signal: nix::sys::signal::Signal) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), signal);
    }
}

/// The last lines of a log, for error messages.
pub(crate) fn tail(path: &Path) -> String {
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
/// process in its namespaces (and the ones it recorded), the namespaces (and with them their
/// veths, bridges, routes and iptables rules), and its state directory. Only this lab's own
/// names are touched: `fl` never matches another lab's `fl2-…` or `fl-node-1-…` (prefixes
/// are `[a-z0-9]{1,8}` and names are matched whole).
pub fn down(prefix: &str) -> Result<Removed, LabError> {
    crate::topology::check_prefix(prefix)?;
    let mine: Vec<Netns> = netns::list()
        .into_iter()
        .filter(|n| crate::topology::is_lab_namespace(prefix, n))
        .map(|n| Netns::named(&n))
        .collect();
    let mut removed = Removed::default();
    let loaded = Lab::load(prefix).ok();
    let made_dirs = match loaded.as_ref() {
        Some(lab) if lab.spec().kube => {
            kube::teardown(lab);
            lab.state
                .kube
                .as_ref()
                .map(|k| k.made_dirs.clone())
                .unwrap_or_default()
        }
        _ => Vec::new(),
    };
    let mut pids: Vec<i32> = mine.iter().flat_map(Netns::pids).collect();
    // The processes the lab started, should one have left its namespace's view.
    if let Some(lab) = &loaded {
        let kube = lab.state.kube.clone().unwrap_or_default();
        let recorded = lab
            .state
            .etcd_pid
            .into_iter()
            .chain(lab.state.nodes.iter().filter_map(|n| n.flanneld_pid))
            .chain(lab.state.nodes.iter().filter_map(|n| n.kubelet_pid))
            .chain(kube.apiserver_pid)
            .chain(kube.controller_manager_pid)
            .chain(kube.scheduler_pid);
        for p in recorded
            .filter(|p| alive(*p))
            .filter_map(|p| i32::try_from(p).ok())
        {
            if !pids.contains(&p) && crate::netns::in_any(&p, &mine) {
                pids.push(p);
            }
        }
    }
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
    kube::remove_made_dirs(&made_dirs);
    Ok(removed)
}
