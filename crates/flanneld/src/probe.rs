//! Closed-loop readiness: a node whose routes are listed is ready only once a probe from its
//! pod subnet is answered across the data plane. A cloud can accept a route and not forward
//! it yet; "listed" is what the API says, "answered" is what the packets say.
//!
//! The backend names the probe ([`ProbePlan`]): a source address of the node's pod subnet
//! and groups of targets (tencent-vpc: for every VPC subnet holding nodes, a few peers'
//! pod-subnet addresses); the node is verified when every group has answered at least once.
//! The daemon keeps the source address on `lo` through the platform's [`Prober`] whenever
//! the backend has a plan (peers probe it too), so backends, and the tests that run them
//! outside a namespace, never touch the host's devices.
//! Both ends are pod-subnet addresses so that neither node's masquerade rules rewrite the
//! probe (upstream's rules leave Network-to-Network traffic alone), and the answer has to
//! come back over the peer's route table: one exchange checks the path both ways.
//!
//! - [`Progress`] is pure: which groups answered, the verdict and its explanation;
//! - [`Prober`] is the narrow I/O seam, [`SystemProber`] the real one (the address on `lo`
//!   through the fenced kernel; ICMP echo over a raw socket bound to it), [`AssumeAnswered`]
//!   for platforms that cannot probe;
//! - [`spawn`] runs the bounded loop and reports [`ProbeState`] changes to the daemon.

use crate::backend::udp::packet::checksum;
use crate::kernel::{Fenced, Kernel, KernelError, Netlink};
use async_trait::async_trait;
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{debug, warn};

/// The reason a node whose path never answered stays not ready (the NetworkUnavailable
/// condition's reason in Kubernetes).
pub const UNVERIFIED_REASON: &str = "DataPathUnverified";
/// How long a node probes before it says [`UNVERIFIED_REASON`] (it keeps probing after).
pub const UNVERIFIED_AFTER: Duration = Duration::from_secs(30);
/// How long one round waits for answers.
const ROUND_WAIT: Duration = Duration::from_millis(300);
/// The pause between rounds: from 100 ms, doubling to 1 s (a round is a few packets).
const ROUND_PAUSE: backoff::Backoff =
    backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(1));

/// Targets of which one answer is enough (tencent-vpc: peers in one VPC subnet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeGroup {
    /// What the group stands for, for the explanation ("subnet-b").
    pub name: String,
    pub targets: Vec<Ipv4Addr>,
}

/// What to probe from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePlan {
    pub source: Ipv4Addr,
    pub groups: Vec<ProbeGroup>,
}

/// Which groups have answered (pure).
#[derive(Debug, Clone)]
pub struct Progress {
    plan: ProbePlan,
    answered: BTreeSet<Ipv4Addr>,
}

impl Progress {
    pub fn new(plan: ProbePlan) -> Progress {
        Progress {
            plan,
            answered: BTreeSet::new(),
        }
    }

    fn group_answered(&self, g: &ProbeGroup) -> bool {
        g.targets.iter().any(|t| self.answered.contains(t))
    }

    /// The targets of the groups that have not answered yet (what the next round sends to).
    pub fn outstanding(&self) -> Vec<Ipv4Addr> {
        let mut out: Vec<Ipv4Addr> = self
            .plan
            .groups
            .iter()
            .filter(|g| !self.group_answered(g))
            .flat_map(|g| g.targets.iter().copied())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    pub fn record(&mut self, answered: impl IntoIterator<Item = Ipv4Addr>) {
        self.answered.extend(answered);
    }

    /// Every group has answered (a plan without groups has nothing to verify).
    pub fn verified(&self) -> bool {
        self.plan.groups.iter().all(|g| self.group_answered(g))
    }

    /// Why the node is not ready after `waited`: the groups that never answered.
    pub fn explain(&self, waited: Duration) -> String {
        let silent: Vec<String> = self
            .plan
            .groups
            .iter()
            .filter(|g| !self.group_answered(g))
            .map(|g| {
                let targets: Vec<String> = g.targets.iter().map(Ipv4Addr::to_string).collect();
                format!("{} ({})", g.name, targets.join(", "))
            })
            .collect();
        format!(
            "{UNVERIFIED_REASON}: the routes are listed but no probe from {} was answered within {} s by a node of {}: the VPC does not forward this node's pod traffic yet",
            self.plan.source,
            waited.as_secs(),
            silent.join(", ")
        )
    }
}

/// Where a probe stands, as the daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeState {
    Probing,
    /// Nothing answered for [`UNVERIFIED_AFTER`]: the explanation ([`Progress::explain`]).
    Unverified(String),
    /// Every group answered, this long after the probe started.
    Verified(Duration),
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("ICMP socket for probes from {source_addr}")]
    Socket {
        source_addr: Ipv4Addr,
        #[source]
        source: std::io::Error,
    },
    #[error("probe address {address} on lo")]
    Address {
        address: Ipv4Addr,
        #[source]
        source: KernelError,
    },
}

/// The platform side of the probe.
#[async_trait]
pub trait Prober: Send + Sync {
    /// Make `lo` hold `source` (a /32) and no other probe address of ours.
    async fn ensure_source(&self, source: Ipv4Addr) -> Result<(), ProbeError>;
    /// Send one echo request to each target from `source`; which answered within `wait`.
    async fn echo(
        &self,
        source: Ipv4Addr,
        targets: &[Ipv4Addr],
        wait: Duration,
    ) -> Result<BTreeSet<Ipv4Addr>, ProbeError>;
}

/// For platforms that cannot probe (tests outside a namespace): no address is installed and
/// every target counts as answered.
pub struct AssumeAnswered;

#[async_trait]
impl Prober for AssumeAnswered {
    async fn ensure_source(&self, _source: Ipv4Addr) -> Result<(), ProbeError> {
        Ok(())
    }
    async fn echo(
        &self,
        _source: Ipv4Addr,
        targets: &[Ipv4Addr],
        _wait: Duration,
    ) -> Result<BTreeSet<Ipv4Addr>, ProbeError> {
        Ok(targets.iter().copied().collect())
    }
}

/// Probe until verified (or until the receiver is dropped), reporting each change of state.
/// Every round is paced by a bounded backoff; after [`UNVERIFIED_AFTER`] the node is said to
/// be unverified and the rounds go on at the longest pause.
pub fn spawn(plan: ProbePlan, echo: Arc<dyn Prober>) -> watch::Receiver<ProbeState> {
    let (tx, rx) = watch::channel(ProbeState::Probing);
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut progress = Progress::new(plan);
        let mut pauses = ROUND_PAUSE.delays();
        let mut said_unverified = false;
        let mut logged_error = false;
        loop {
            let targets = progress.outstanding();
            match echo.echo(progress.plan.source, &targets, ROUND_WAIT).await {
                Ok(answered) => {
                    debug!(
                        sent = targets.len(),
                        answered = answered.len(),
                        "data path probe round"
                    );
                    progress.record(answered);
                }
                Err(e) if !logged_error => {
                    warn!(error = %crate::report(&e), "data path probe failed; retrying");
                    logged_error = true;
                }
                Err(_) => {}
            }
            if progress.verified() {
                let _ = tx.send(ProbeState::Verified(started.elapsed()));
                return;
            }
            if !said_unverified && started.elapsed() >= UNVERIFIED_AFTER {
                said_unverified = true;
                let why = progress.explain(UNVERIFIED_AFTER);
                warn!(reason = UNVERIFIED_REASON, "{why}");
                if tx.send(ProbeState::Unverified(why)).is_err() {
                    return;
                }
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(pauses.next_delay()) => {}
            }
        }
    });
    rx
}

/// The echo request with `ident` and `seq` (ICMP type 8, an 8-byte payload), checksummed.
pub fn echo_request(ident: u16, seq: u16) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = 8;
    p[4..6].copy_from_slice(&ident.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(b"flannel!");
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The sender of an echo reply carrying `ident`, from a packet as a raw socket reads it
/// (IPv4 header first); None for anything else.
pub fn echo_reply_from(packet: &[u8], ident: u16) -> Option<Ipv4Addr> {
    let ihl = usize::from(*packet.first()? & 0x0f) * 4;
    if packet.first()? >> 4 != 4 || ihl < 20 || *packet.get(9)? != 1 {
        return None;
    }
    let icmp = packet.get(ihl..ihl + 8)?;
    if icmp[0] != 0 || icmp[1] != 0 || icmp[4..6] != ident.to_be_bytes() {
        return None;
    }
    let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
    Some(Ipv4Addr::from(src))
}

/// The real prober: the source as a /32 on `lo` through the kernel (fenced to the pod
/// Networks), and ICMP echo over a raw socket bound to it (flanneld has CAP_NET_RAW, as
/// upstream's DaemonSet grants; the socket only receives packets for the source address).
pub struct SystemProber {
    /// Connected on first use (a platform that never probes never opens it).
    kernel: tokio::sync::OnceCell<Arc<dyn Kernel>>,
    networks: Vec<IpNet>,
}

impl SystemProber {
    pub fn new(networks: Vec<IpNet>) -> SystemProber {
        SystemProber {
            kernel: tokio::sync::OnceCell::new(),
            networks,
        }
    }

    async fn kernel(&self) -> Result<&Arc<dyn Kernel>, KernelError> {
        self.kernel
            .get_or_try_init(|| async {
                let netlink = Netlink::connect()?;
                Ok(Arc::new(Fenced::new(netlink, self.networks.clone())) as Arc<dyn Kernel>)
            })
            .await
    }
}

/// Make `lo` of `kernel` hold `source` as a /32 and no other /32 inside `networks` (one a
/// previous lease left).
pub async fn ensure_source_on_lo(
    kernel: &dyn Kernel,
    networks: &[IpNet],
    source: Ipv4Addr,
) -> Result<(), KernelError> {
    let Some(lo) = kernel.link_by_name("lo").await? else {
        return Ok(());
    };
    let want = IpNet::V4(ipnet::Ipv4Net::new(source, 32).expect("a /32"));
    let ours = |a: &IpNet| a.prefix_len() == 32 && networks.iter().any(|n| n.contains(&a.addr()));
    crate::backend::kernel_sync::set_addresses(kernel, &lo, &[want], |a| !ours(a)).await
}

#[async_trait]
impl Prober for SystemProber {
    async fn ensure_source(&self, source: Ipv4Addr) -> Result<(), ProbeError> {
        async {
            let kernel = self.kernel().await?;
            ensure_source_on_lo(kernel.as_ref(), &self.networks, source).await
        }
        .await
        .map_err(|e| ProbeError::Address {
            address: source,
            source: e,
        })
    }

    async fn echo(
        &self,
        source: Ipv4Addr,
        targets: &[Ipv4Addr],
        wait: Duration,
    ) -> Result<BTreeSet<Ipv4Addr>, ProbeError> {
        let targets = targets.to_vec();
        tokio::task::spawn_blocking(move || echo_round(source, &targets, wait))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|e| ProbeError::Socket {
                source_addr: source,
                source: e,
            })
    }
}

/// One round of ICMP echo from `source` (blocking).
fn echo_round(
    source: Ipv4Addr,
    targets: &[Ipv4Addr],
    wait: Duration,
) -> std::io::Result<BTreeSet<Ipv4Addr>> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::io::Read;
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
    socket.bind(&SocketAddrV4::new(source, 0).into())?;
    let ident = (std::process::id() as u16) ^ rand::random::<u16>();
    for (seq, t) in targets.iter().enumerate() {
        let request = echo_request(ident, seq as u16);
        // A target the kernel cannot route to right now just does not answer.
        if let Err(e) = socket.send_to(&request, &SocketAddrV4::new(*t, 0).into()) {
            debug!(target = %t, error = %e, "probe not sent");
        }
    }
    let deadline = Instant::now() + wait;
    let mut answered = BTreeSet::new();
    let mut buf = [0u8; 1500];
    while answered.len() < targets.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        socket.set_read_timeout(Some(left))?;
        match (&socket).read(&mut buf) {
            Ok(n) => {
                if let Some(from) = echo_reply_from(&buf[..n], ident) {
                    if targets.contains(&from) {
                        answered.insert(from);
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(answered)
}

#[cfg(test)]
mod tests;
