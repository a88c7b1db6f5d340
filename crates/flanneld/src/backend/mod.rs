//! Backends turn leases into a data plane. The daemon owns the loop and the admitted peer
//! view, and calls a backend's one `reconcile` for the first reconcile, each batch of lease
//! changes and each resync, so a backend is tested by driving it against fakes, without root.

pub mod alloc;
pub mod extension;
pub mod host_gw;
pub mod kernel_sync;
pub mod tencent_vpc;
pub mod tun;
pub mod udp;
pub mod vxlan;
pub mod wireguard;

use crate::iface::ExternalInterface;
use crate::kernel::{Fenced, Kernel, Netlink};
use crate::metrics::Metrics;
use crate::subnet::SubnetManager;
use async_trait::async_trait;
use flannel_core::admission::PeerView;
use flannel_core::backend_config::{BackendConfig, BackendConfigError, BackendKind};
use flannel_core::lease::{Lease, LeaseAttrs};
use flannel_core::ValidatedNetConfig;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Config(#[from] BackendConfigError),
    /// A kernel operation (netlink) failed; the error names the object.
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
    #[error(transparent)]
    TencentVpc(#[from] tencent_vpc::TencentVpcError),
    /// The network config asks for something this backend cannot do.
    #[error("{0}")]
    Unsupported(String),
    #[error("interface {0} has no IPv4 address to publish")]
    NoPublicIp(String),
}

/// Why a backend is asked to reconcile.
#[derive(Debug, Clone, Copy)]
pub enum Trigger<'a> {
    /// The first reconcile, with the peers the watch's first snapshot showed (none when the
    /// store could not be watched yet). An error here is fatal.
    Start,
    /// The admitted peers changed: `added` as they are now (new, or changed), `removed` with
    /// their last admitted attributes (some backends need them to undo a peer).
    Leases {
        added: &'a [Lease],
        removed: &'a [Lease],
    },
    /// The periodic resync, or a retry: repair drift. `fresh` says the view is a complete,
    /// current snapshot (the lease watch is up); cluster-wide deletions (garbage
    /// collection) must not act on anything less.
    Resync { fresh: bool },
}

impl Trigger<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Leases { .. } => "leases",
            Trigger::Resync { .. } => "resync",
        }
    }
}

/// What a reconcile left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This node's data plane is in place (tencent-vpc: its route in every table). The daemon
    /// is ready only when subnet.env is written and this holds.
    pub ready: bool,
    /// Something is pending that a sooner reconcile picks up (not in place yet, a write that
    /// failed, a peer not placed yet): the daemon reconciles again within seconds, with
    /// backoff, instead of at the period.
    pub pending: bool,
    /// What is wrong, in the backend's words (logged; while not ready, the node's
    /// NetworkUnavailable message).
    pub problem: Option<String>,
}

impl Status {
    /// In place, nothing pending.
    pub fn done() -> Status {
        Status {
            ready: true,
            pending: false,
            problem: None,
        }
    }
}

/// A data plane for the leases: the daemon owns the peer view and the loop, and asks the
/// backend to bring its data plane in line with them (one entry point for the first
/// reconcile, lease changes and resyncs), so a backend is a function from (own lease, peers,
/// config) to desired state plus the apply step, tested against fakes without root.
#[async_trait]
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;
    /// The attributes this node publishes in its lease (BackendType, BackendData).
    async fn lease_attrs(&self) -> Result<LeaseAttrs, BackendError>;
    /// Bring the data plane in line with `own` and `peers`. Idempotent. An error says
    /// nothing about readiness (the last status stands) and is retried with backoff.
    async fn reconcile(
        &self,
        own: &Lease,
        peers: &PeerView<'_>,
        trigger: Trigger<'_>,
    ) -> Result<Status, BackendError>;
    /// The MTU pods should use (FLANNEL_MTU).
    fn mtu(&self) -> u32;
    /// This backend's own resync period, overriding `--resync-period`.
    fn resync_period(&self) -> Option<std::time::Duration> {
        None
    }
    /// Whether its data plane is the kernel's alone, so a kernel change that may have
    /// removed part of it is worth a reconcile at once (it costs no cloud call).
    fn repairs_on_kernel_changes(&self) -> bool {
        false
    }
    /// flanneld is stopping: undo what must not outlive it (a device the kernel would keep).
    async fn stop(&self) {}
    /// What must answer a probe from this node's pod subnet before the node is ready, asked
    /// once `reconcile` says the data plane is in place (None: its status alone decides).
    fn probe_plan(&self, _own: &Lease, _peers: &PeerView<'_>) -> Option<crate::probe::ProbePlan> {
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

/// The kernel as the backends write it: netlink, fenced to the pod networks.
pub fn fenced_kernel(network: &ValidatedNetConfig) -> Result<Arc<dyn Kernel>, BackendError> {
    Ok(Arc::new(Fenced::new(
        Netlink::connect()?,
        host_gw::networks(network),
    )))
}

/// The backends built into flanneld.
pub struct Builtin;

impl Builtin {
    /// Type the Backend section and check everything about it that needs no network I/O:
    /// what flanneld does before taking a lease (the daemon calls this, `build` then only
    /// meets the world), and what `flannelctl config check` does, so they validate alike.
    pub fn check(network: &ValidatedNetConfig) -> Result<BackendConfig, BackendError> {
        let config = BackendConfig::parse(&network.backend_type, network.backend.as_ref())?;
        match &config {
            BackendConfig::TencentVpc(c) => {
                if network.enable_ipv6() {
                    return Err(BackendError::Unsupported(
                        tencent_vpc::IPV6_UNSUPPORTED.into(),
                    ));
                }
                if let Some(e) = &c.endpoint {
                    e.parse::<tencent_cloud::Endpoint>().map_err(|e| {
                        BackendError::Config(
                            flannel_core::backend_config::BackendConfigError::Invalid {
                                field: "Endpoint",
                                problem: e,
                            },
                        )
                    })?;
                }
                if let Some(u) = &c.metadata_url {
                    crate::cloud::check_metadata_url(u).map_err(|problem| {
                        BackendError::Config(
                            flannel_core::backend_config::BackendConfigError::Invalid {
                                field: "MetadataURL",
                                problem,
                            },
                        )
                    })?;
                }
            }
            BackendConfig::Wireguard(c)
                if c.mode == flannel_core::backend_config::WireguardMode::Ipv6
                    && !network.enable_ipv6() =>
            {
                return Err(BackendError::Unsupported(
                    "wireguard Mode ipv6 needs EnableIPv6 (an IPv6 underlay address)".into(),
                ));
            }
            BackendConfig::Udp(_) if network.enable_ipv6() || network.network().is_none() => {
                return Err(BackendError::Unsupported(
                    "udp carries IPv4 only, as upstream's (set EnableIPv6 to false)".into(),
                ));
            }
            _ => {}
        }
        Ok(config)
    }
}

#[async_trait]
impl BackendFactory for Builtin {
    async fn build(&self, ctx: &BackendContext<'_>) -> Result<Box<dyn Backend>, BackendError> {
        match ctx.config {
            BackendConfig::Alloc => Ok(Box::new(alloc::AllocBackend::new(ctx.ext.clone()))),
            BackendConfig::Udp(c) => {
                let network = ctx
                    .network
                    .network()
                    .ok_or_else(|| BackendError::Unsupported("udp carries IPv4 only".into()))?;
                Ok(Box::new(
                    udp::UdpBackend::new(ctx.ext.clone(), c, network, fenced_kernel(ctx.network)?)
                        .await?,
                ))
            }
            BackendConfig::Extension(c) => Ok(Box::new(extension::ExtensionBackend::new(
                ctx.ext.clone(),
                c.clone(),
                ctx.network
                    .ipv4
                    .as_ref()
                    .map(|p| p.network.to_string())
                    .unwrap_or_default(),
            ))),
            BackendConfig::Wireguard(c) => Ok(Box::new(
                wireguard::WireguardBackend::new(
                    ctx.ext.clone(),
                    ctx.network,
                    c,
                    fenced_kernel(ctx.network)?,
                    &wireguard::keys::key_file(),
                )
                .await?,
            )),
            BackendConfig::TencentVpc(c) => tencent_vpc::build(ctx, c).await,
            BackendConfig::HostGw => Ok(Box::new(host_gw::HostGwBackend::new(
                ctx.ext.clone(),
                ctx.network,
                fenced_kernel(ctx.network)?,
            )?)),
            BackendConfig::Vxlan(c) => Ok(Box::new(
                vxlan::VxlanBackend::reaching(
                    ctx.ext.clone(),
                    ctx.network,
                    c,
                    fenced_kernel(ctx.network)?,
                    BackendKind::Vxlan,
                    vxlan::PreviousVteps::from_store(ctx.store.as_ref(), ctx.ext).await,
                )
                .await?,
            )),
        }
    }
}

/// Driving a backend in unit tests as the daemon does: a lease gate over the test's leases.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Backend, Status, Trigger};
    use flannel_core::admission::{Allocation, LeaseGate, Rules};
    use flannel_core::lease::{Lease, LeaseEvent};
    use flannel_core::ValidatedNetConfig;

    pub(crate) struct Peers(pub LeaseGate);

    impl Peers {
        pub(crate) fn new(config: &ValidatedNetConfig, own: &Lease) -> Peers {
            Peers(LeaseGate::new(
                Rules::new(config, Allocation::Pool),
                Some(own),
            ))
        }

        /// The store holds exactly `leases` now.
        pub(crate) fn set(&mut self, leases: &[Lease]) {
            self.0.reset(leases.to_vec());
        }

        pub(crate) fn add(&mut self, l: &Lease) {
            self.0.update(vec![LeaseEvent::Added(l.clone())]);
        }

        pub(crate) fn remove(&mut self, l: &Lease) {
            self.0.update(vec![LeaseEvent::Removed(l.clone())]);
        }

        pub(crate) async fn reconcile(
            &self,
            b: &dyn Backend,
            own: &Lease,
            trigger: Trigger<'_>,
        ) -> Status {
            b.reconcile(own, &self.0.view(), trigger).await.unwrap()
        }
    }
}
