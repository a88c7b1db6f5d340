//! Backends turn leases into a data plane. The daemon owns the loop and calls a backend with
//! batches of peer events and periodic full resyncs, so a backend is tested by feeding it
//! events against fakes, without root.

pub mod alloc;
pub mod host_gw;
pub mod kernel_sync;
pub mod tencent_vpc;
pub mod vxlan;

use crate::iface::ExternalInterface;
use crate::kernel::Netlink;
use crate::metrics::Metrics;
use crate::subnet::{SubnetError, SubnetManager};
use async_trait::async_trait;
use flannel_core::backend_config::{BackendConfig, BackendConfigError, BackendKind};
use flannel_core::lease::{Lease, LeaseAttrs, LeaseEvent};
use flannel_core::ValidatedNetConfig;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Config(#[from] BackendConfigError),
    /// A cloud API call failed (after the client's own retries).
    #[error("{op}")]
    Cloud {
        op: String,
        #[source]
        source: Box<tencent_cloud::Error>,
    },
    /// A kernel operation (netlink) failed; the error names the object.
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
    /// The route tables to program could not be determined (never a silent fallback).
    #[error(transparent)]
    Discovery(tencent_vpc::tables::DiscoveryError),
    /// The cloud client could not be set up (credentials, region, endpoint, metadata).
    #[error("tencent-vpc")]
    CloudSetup(#[source] crate::cloud::CloudSetupError),
    /// The lease store could not be read for the route status.
    #[error("reading the route status in the lease store")]
    RouteStatus(#[source] SubnetError),
    /// This node's route could not be put in place (a full table, a route in the way).
    #[error("{0}")]
    NotRouted(String),
    /// The network config asks for something this backend cannot do.
    #[error("{0}")]
    Unsupported(String),
    #[error("interface {0} has no IPv4 address to publish")]
    NoPublicIp(String),
}

#[async_trait]
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;
    /// The attributes this node publishes in its lease (BackendType, BackendData).
    async fn lease_attrs(&self) -> Result<LeaseAttrs, BackendError>;
    /// Set up what depends on the node's own lease (device address, own cloud route).
    /// `peers` are the other leases as the watch's first snapshot showed them (empty when
    /// the store could not be watched yet); changes after it arrive through `handle`.
    async fn activate(&self, own: &Lease, peers: &[Lease]) -> Result<(), BackendError>;
    /// Apply one batch of peer events. Must be idempotent.
    async fn handle(&self, own: &Lease, events: &[LeaseEvent]) -> Result<(), BackendError>;
    /// Bring the data plane in line with the full set of peers (repair drift). `fresh` says
    /// the peers are a complete, current snapshot (the lease watch is up); cluster-wide
    /// deletions (garbage collection) must not act on anything less.
    async fn resync(&self, own: &Lease, peers: &[Lease], fresh: bool) -> Result<(), BackendError>;
    /// The MTU pods should use (FLANNEL_MTU).
    fn mtu(&self) -> u32;
    /// Whether this node's data plane is in place (its own routes present). The daemon is
    /// ready only when subnet.env is written and this holds; until then it resyncs sooner.
    fn ready(&self) -> bool {
        true
    }
    /// Whether nothing is pending that a sooner resync would pick up. While it does not
    /// hold, the daemon resyncs within seconds (with backoff) instead of at the period: for
    /// backends whose resync costs no cloud call.
    async fn settled(&self) -> bool {
        true
    }
    /// This backend's own resync period, overriding `--resync-period`.
    fn resync_period(&self) -> Option<std::time::Duration> {
        None
    }
}

/// The common part of every lease: public addresses of the external interface.
pub fn base_attrs(kind: BackendKind, ext: &ExternalInterface) -> Result<LeaseAttrs, BackendError> {
    let public_ip = match (ext.ext_addr, ext.ext_v6_addr) {
        (Some(a), _) => a,
        (None, Some(_)) => std::net::Ipv4Addr::UNSPECIFIED,
        (None, None) => return Err(BackendError::NoPublicIp(ext.name.clone())),
    };
    let mut attrs = LeaseAttrs::new(public_ip);
    attrs.public_ipv6 = ext.ext_v6_addr;
    attrs.backend_type = kind.name().to_string();
    Ok(attrs)
}

/// What a backend is built from.
pub struct BackendContext<'a> {
    pub config: &'a BackendConfig,
    pub network: &'a ValidatedNetConfig,
    pub ext: &'a ExternalInterface,
    pub metrics: &'a Metrics,
    /// The lease store: its elections (cluster-wide jobs) and records.
    pub store: Arc<dyn SubnetManager>,
}

/// Makes the backend the network config names. The daemon is given one, so tests can inject
/// a fake backend the same way they inject a fake subnet manager.
#[async_trait]
pub trait BackendFactory: Send + Sync {
    async fn build(&self, ctx: &BackendContext<'_>) -> Result<Box<dyn Backend>, BackendError>;
}

/// The backends built into flanneld.
pub struct Builtin;

impl Builtin {
    /// Type the Backend section and check this build supports it: what flanneld does before
    /// taking a lease (the daemon types it, `build` refuses what is unsupported), and what
    /// `flannelctl config check` does, so they validate alike.
    pub fn check(network: &ValidatedNetConfig) -> Result<BackendConfig, BackendError> {
        Ok(BackendConfig::parse(
            &network.backend_type,
            network.backend.as_ref(),
        )?)
    }
}

#[async_trait]
impl BackendFactory for Builtin {
    async fn build(&self, ctx: &BackendContext<'_>) -> Result<Box<dyn Backend>, BackendError> {
        match ctx.config {
            BackendConfig::Alloc => Ok(Box::new(alloc::AllocBackend::new(ctx.ext.clone()))),
            BackendConfig::TencentVpc(c) => Ok(Box::new(
                tencent_vpc::TencentVpcBackend::build(ctx, c).await?,
            )),
            BackendConfig::HostGw => Ok(Box::new(host_gw::HostGwBackend::new(
                ctx.ext.clone(),
                ctx.network,
                Arc::new(Netlink::connect()?),
            )?)),
            BackendConfig::Vxlan(c) => Ok(Box::new(
                vxlan::VxlanBackend::new(
                    ctx.ext.clone(),
                    ctx.network,
                    c,
                    Arc::new(Netlink::connect()?),
                )
                .await?,
            )),
        }
    }
}
