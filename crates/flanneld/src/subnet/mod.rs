//! Subnet managers: where leases live. The daemon, the controller and flannelctl talk to one
//! through [`SubnetManager`]: `etcd` (the default, as upstream), `kube` (`--kube-subnet-mgr`:
//! podCIDRs and node annotations) and `memory` (in-process: tests and `--local-subnet-mgr`).

pub mod election;
pub mod etcd;
pub mod kube;
pub mod memory;

use async_trait::async_trait;
use flannel_core::admission::Allocation;
use flannel_core::alloc::AllocError;
use flannel_core::config::ConfigError;
use flannel_core::lease::{Lease, LeaseAttrs};
use flannel_core::watch::WatchUpdate;
use flannel_core::ValidatedNetConfig;
use futures::stream::BoxStream;
use ipnet::{Ipv4Net, Ipv6Net};
use std::time::{Duration, SystemTime};

/// Upstream's lease TTL.
pub const LEASE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// What a node asks for when it acquires a lease.
#[derive(Debug, Clone)]
pub struct AcquireRequest {
    pub attrs: LeaseAttrs,
    /// This node's subnets from the previous run (subnet.env), reused when still free.
    pub previous: Option<Ipv4Net>,
    pub previous_ipv6: Option<Ipv6Net>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubnetError {
    #[error(transparent)]
    Config(ConfigError),
    #[error(
        "flannel config not found in etcd store. Did you create your config using etcdv3 API?"
    )]
    ConfigMissing,
    #[error("{key}")]
    RemoteConfig {
        key: String,
        #[source]
        source: ConfigError,
    },
    #[error("reading network config {path}")]
    ConfigFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Alloc(AllocError),
    #[error("max retries reached trying to acquire a subnet")]
    RaceRetriesExhausted,
    #[error("lease {0} not found")]
    LeaseNotFound(String),
    /// Another node wrote our subnet key: the subnet is no longer ours.
    #[error("lease {subnet} is now held by {holder}")]
    LeaseTaken {
        subnet: Ipv4Net,
        holder: std::net::Ipv4Addr,
    },
    /// The store went backwards (wiped, or restored from a backup): a lease held or watched
    /// before may now be free for another node, so nothing seen before can be trusted.
    #[error("the {manager} store went backwards (wiped or restored from a backup?)")]
    StoreRewound {
        manager: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store could not be reached or answered with an error.
    /// This node's Kubernetes object cannot give a lease (no podCIDR, outside the network),
    /// or the annotation prefix is invalid.
    #[error(transparent)]
    Kube(flannel_core::kube::KubeError),
    /// The Kubernetes node this flanneld runs for cannot be determined.
    #[error("{0}")]
    NodeUnknown(String),
    #[error("{manager} store: {op}")]
    Store {
        manager: &'static str,
        op: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl SubnetError {
    /// Worth trying again later (the store is unreachable or busy; a restart would not help).
    /// Every retry loop over a subnet manager asks this, and only this.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SubnetError::Store { .. } | SubnetError::RaceRetriesExhausted
        )
    }

    pub fn store(
        manager: &'static str,
        op: impl std::fmt::Display,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> SubnetError {
        SubnetError::Store {
            manager,
            op: op.to_string(),
            source: source.into(),
        }
    }
}

/// A stream of watch updates: a snapshot first, then deltas (or fresh snapshots after a
/// re-list). It ends only when the manager shuts down.
pub type LeaseStream = BoxStream<'static, Result<WatchUpdate, SubnetError>>;

#[async_trait]
pub trait SubnetManager: Send + Sync {
    fn name(&self) -> &'static str;
    /// How this store hands out subnets (lease admission lets flannel's own SubnetLen
    /// blocks win an overlap; Kubernetes podCIDRs may be any size).
    fn allocation(&self) -> Allocation {
        Allocation::Pool
    }
    /// The network config, checked.
    async fn network_config(&self) -> Result<ValidatedNetConfig, SubnetError>;
    async fn acquire_lease(&self, req: &AcquireRequest) -> Result<Lease, SubnetError>;
    /// Extend the lease's TTL (a reservation stays a reservation).
    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, SubnetError>;
    async fn watch_leases(&self) -> Result<LeaseStream, SubnetError>;
    /// Every lease, once (for an operator: `flannelctl`): the watch's first snapshot unless
    /// the store has a cheaper or richer way (etcd's lists the time each lease has left).
    async fn list_leases(&self) -> Result<Vec<Lease>, SubnetError> {
        use futures::StreamExt;
        let mut stream = self.watch_leases().await?;
        match stream.next().await {
            Some(Ok(WatchUpdate::Snapshot(leases))) => Ok(leases),
            Some(Ok(WatchUpdate::Events(_))) | None => Err(SubnetError::store(
                self.name(),
                "listing leases",
                "the watch did not begin with a snapshot",
            )),
            Some(Err(e)) => Err(e),
        }
    }
    /// An election among the holders of this store (for cluster-wide jobs such as route
    /// garbage collection). `identity` names this candidate.
    fn leader_election(&self, name: &str, identity: &str) -> Box<dyn election::LeaderElection>;
    /// A small cluster-wide record beside the leases (flannel-rs's own: upstream never reads
    /// it), e.g. the tencent-vpc controller's view of which leases are routed.
    async fn put_record(&self, name: &str, value: &str) -> Result<(), SubnetError>;
    async fn get_record(&self, name: &str) -> Result<Option<String>, SubnetError>;
    /// Join the queue `name`: record the time now as an entry that lives `ttl`, and return the
    /// times of the live entries in the store's order up to ours (ours last), so that nodes
    /// starting together can take turns at a shared budget (the cloud API's) without talking
    /// to each other. None: this store keeps no queues (no pacing).
    async fn join_queue(
        &self,
        _name: &str,
        _ttl: Duration,
    ) -> Result<Option<Vec<SystemTime>>, SubnetError> {
        Ok(None)
    }
    /// The node's readiness changed, or why it is not ready (Kubernetes: its
    /// NetworkUnavailable condition, and an Event naming the problem), with the condition's
    /// reason when the daemon has one (None: `FlannelNotReady`).
    async fn report_ready(
        &self,
        _ready: bool,
        _reason: Option<&str>,
        _problem: Option<&str>,
    ) -> Result<(), SubnetError> {
        Ok(())
    }
}
