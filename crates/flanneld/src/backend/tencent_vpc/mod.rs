//! The tencent-vpc backend: pod subnets as routes in the VPC route tables that serve the node
//! subnets (next hop NORMAL_CVM = the node's private IP), so pods talk at native speed with
//! no overlay.
//!
//! - `plan`: the pure planner (desired routes against the tables → actions);
//! - `tables`: which tables to program (pure discovery) and what they hold;
//! - `apply`: the batched, idempotent writes;
//! - `gc`: the guarded garbage collector's bookkeeping (pure);
//! - `split`: with Fallback, which leases hold routes and which go over vxlan (pure);
//! - `reconcile`: one read → plan → apply cycle, shared with the controller;
//! - `pacing`: per-node agents starting together take turns at the cloud API (a queue in the
//!   lease store);
//! - `probe`: the readiness probe's address on `lo` and its targets (one group per VPC
//!   subnet holding nodes);
//! - the node's backend in one of two modes: `agent` (per-node: each agent writes its own
//!   route; the one elected through the lease store also deletes the routes of departed
//!   nodes) or `controlled` (controller mode: no credentials, ready once the controller,
//!   `flanneld --controller`, reports its route in place through [`RouteStatus`]), either
//!   with `fallback` (`"Fallback": "vxlan"`: leases the tables cannot hold over vxlan).

pub mod agent;
pub mod apply;
pub mod cloud;
pub mod controlled;
pub mod fallback;
pub mod gc;
pub mod pacing;
pub mod plan;
pub mod probe;
pub mod reconcile;
pub mod split;
pub mod tables;

pub use agent::Agent;
pub use controlled::Controlled;

use super::{base_attrs, Backend, BackendContext, BackendError};
use crate::iface::ExternalInterface;
use crate::metrics::{ApiCallLabels, VpcMetrics};
use crate::subnet::election::LeaderSeat;
use flannel_core::admission::PeerView;
use flannel_core::backend_config::{
    cluster_name_for, BackendKind, TencentVpcConfig, TencentVpcMode, DEFAULT_RESYNC_SECS,
};
use flannel_core::lease::{Lease, LeaseAttrs};
use ipnet::Ipv4Net;
use plan::{Ownership, Wanted};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tencent_cloud::{CallObserver, MetadataClient};
use tracing::{info, warn};

/// What goes wrong in the tencent-vpc backend, the controller and flannelctl's routes.
#[derive(Debug, thiserror::Error)]
pub enum TencentVpcError {
    /// A cloud API call failed (after the client's own retries).
    #[error("{op}")]
    Cloud {
        op: String,
        #[source]
        source: Box<tencent_cloud::Error>,
    },
    /// The route tables to program could not be determined (never a silent fallback).
    #[error(transparent)]
    Discovery(tables::DiscoveryError),
    /// The cloud client could not be set up (credentials, region, endpoint, metadata).
    #[error("tencent-vpc")]
    CloudSetup(#[source] crate::cloud::CloudSetupError),
    /// The lease store could not be read for the route status.
    #[error("reading the route status in the lease store")]
    RouteStatus(#[source] crate::subnet::SubnetError),
    /// The controller's route status record is not what a controller writes.
    #[error("the route status record {record} is corrupt")]
    CorruptRouteStatus {
        record: String,
        #[source]
        source: serde_json::Error,
    },
}

impl TencentVpcError {
    /// A failed API call, named by what it was for.
    pub fn cloud(op: impl Into<String>, e: tencent_cloud::Error) -> TencentVpcError {
        TencentVpcError::Cloud {
            op: op.into(),
            source: Box::new(e),
        }
    }
}

/// Why a tencent-vpc config with IPv6 is refused.
pub const IPV6_UNSUPPORTED: &str = "tencent-vpc routes IPv4 pod subnets only: IPv6 networks are not supported yet (set EnableIPv6 to false)";

/// The lease's BackendType.
pub const BACKEND_TYPE: &str = "tencent-vpc";

/// What identifies this node in the VPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The next hop of this node's route: its VPC private IP (never an EIP).
    pub private_ip: Ipv4Addr,
    /// The VPC subnet of the node, whose route table needs every pod route.
    pub subnet_id: String,
}

/// Resolved options of one backend instance.
#[derive(Debug, Clone)]
pub struct Settings {
    pub vpc_id: String,
    pub owner: Ownership,
    pub adopt_untagged: bool,
    pub route_table_ids: Vec<String>,
    pub resync: Duration,
    /// `"Fallback": "vxlan"`: leases the tables cannot hold are reached over vxlan.
    pub fallback: bool,
    /// `ReservedRoutes`: entries per table kept free for the user's routes (with Fallback).
    pub reserved: usize,
    /// How long after its first sighting an orphaned route may be collected at the earliest
    /// ([`gc::MIN_ORPHAN_AGE`]; tests that drive looks back to back use zero).
    pub orphan_min_age: Duration,
}

impl Settings {
    /// The options of `cfg` for `network`, with defaults (ClusterName from the Network,
    /// ResyncInterval 60 s).
    pub fn from_config(cfg: &TencentVpcConfig, network: Ipv4Net, vpc_id: String) -> Settings {
        Settings {
            vpc_id,
            owner: Ownership {
                cluster: cluster_of(cfg, network),
                network,
            },
            adopt_untagged: cfg.adopt_untagged_routes,
            route_table_ids: cfg.route_table_ids.clone(),
            resync: resync_of(cfg),
            fallback: cfg.fallback_vxlan,
            reserved: cfg.reserved_routes,
            orphan_min_age: gc::MIN_ORPHAN_AGE,
        }
    }
}

#[cfg(test)]
impl Settings {
    /// What the unit tests of the agent and the controller run with: VPC `vpc-1`, cluster
    /// `c1`, Network 10.244.0.0/16, every table, 60 s resync, nothing reserved.
    pub(crate) fn for_tests(fallback: bool) -> Settings {
        Settings {
            vpc_id: "vpc-1".into(),
            owner: Ownership {
                cluster: "c1".into(),
                network: "10.244.0.0/16".parse().unwrap(),
            },
            adopt_untagged: false,
            route_table_ids: vec![],
            resync: Duration::from_secs(60),
            fallback,
            reserved: 0,
            orphan_min_age: Duration::ZERO,
        }
    }
}

/// The cluster name that tags our routes: Backend.ClusterName, else derived from the Network.
pub fn cluster_of(cfg: &TencentVpcConfig, network: Ipv4Net) -> String {
    cfg.cluster_name
        .clone()
        .unwrap_or_else(|| cluster_name_for(&network))
}

/// Backend.ResyncInterval, 60 s by default.
pub fn resync_of(cfg: &TencentVpcConfig) -> Duration {
    Duration::from_secs(cfg.resync_interval_secs.unwrap_or(DEFAULT_RESYNC_SECS))
}

/// The VPC: Backend.VpcId, else what the metadata service says of this instance's NIC.
pub async fn resolve_vpc(cfg: &TencentVpcConfig, md: &MetadataClient) -> Option<String> {
    if let Some(v) = &cfg.vpc_id {
        return Some(v.clone());
    }
    let mac = md.mac().await.ok()?;
    Some(md.vpc_id(mac.trim()).await.ok()?.trim().to_string())
}

/// This node's route from a lease's BackendData, if the lease is ours to route: BackendType
/// tencent-vpc with a PrivateIP. Upstream's tencent-vpc leases carry no data and are not.
pub fn route_of(lease: &Lease) -> Option<Wanted> {
    if lease.attrs.backend_type != BACKEND_TYPE {
        return None;
    }
    let ip = lease
        .attrs
        .backend_data
        .as_ref()?
        .get("PrivateIP")?
        .as_str()?
        .parse()
        .ok()?;
    Some(Wanted {
        dest: lease.subnet()?.trunc(),
        next_hop: ip,
    })
}

/// The subnets of `leases` (never stale: a route to one of them is not garbage).
pub fn leased_subnets<'a>(leases: impl IntoIterator<Item = &'a Lease>) -> BTreeSet<Ipv4Net> {
    leases
        .into_iter()
        .filter_map(Lease::subnet)
        .map(|s| s.trunc())
        .collect()
}

/// The VPC's primary and secondary CIDRs (one DescribeVpcs); empty when the call fails (admission then checks PrivateIPs without them).
pub async fn vpc_cidrs(client: &tencent_cloud::Client, vpc_id: &str) -> Vec<Ipv4Net> {
    let filter = tencent_cloud::vpc::Filter::new("vpc-id", &[vpc_id]);
    match client.describe_vpcs(&[filter]).await {
        Ok(vpcs) => vpcs
            .iter()
            .flat_map(|v| {
                v.cidr_block.iter().chain(
                    v.assistant_cidr_set
                        .iter()
                        .flatten()
                        .filter_map(|a| a.cidr_block.as_ref()),
                )
            })
            .filter_map(|c| c.parse().ok())
            .collect(),
        Err(e) => {
            warn!(vpc = vpc_id, error = %crate::Report(&e), "the VPC's CIDRs could not be read: PrivateIPs are checked without them");
            Vec::new()
        }
    }
}

/// The addresses of the nodes holding `leases` (their routes' next hops), and `own`.
pub fn lease_holders(peers: &PeerView<'_>, own: Option<Ipv4Addr>) -> BTreeSet<Ipv4Addr> {
    peers
        .iter()
        .filter_map(route_of)
        .map(|w| w.next_hop)
        .chain(own)
        .collect()
}

/// The VPC subnet named in a lease's BackendData.
pub fn subnet_of(lease: &Lease) -> Option<String> {
    let s = lease
        .attrs
        .backend_data
        .as_ref()?
        .get("SubnetId")?
        .as_str()?;
    (!s.is_empty()).then(|| s.to_string())
}

/// The controller's published view: each routed lease subnet and its next hop, in place in
/// every table, and (with Fallback) the leases the agents reach over vxlan. Stored as the
/// lease-store record [`RouteStatus::record_name`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RouteStatus {
    pub routes: BTreeMap<Ipv4Net, Ipv4Addr>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub fallback: BTreeSet<Ipv4Net>,
    /// Why a lease is not routed (a full table, a conflict, a route the API refused), so
    /// its node can say so in its NetworkUnavailable condition.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unrouted: BTreeMap<Ipv4Net, String>,
}

impl RouteStatus {
    pub fn record_name(cluster: &str) -> String {
        format!("tencent-vpc-routes-{cluster}")
    }
}

/// Build the node's backend from net-conf.json and the metadata service (what flanneld
/// does): an [`Agent`] in per-node mode, a [`Controlled`] agent in controller mode.
pub async fn build(
    ctx: &BackendContext<'_>,
    cfg: &TencentVpcConfig,
) -> Result<Box<dyn Backend>, BackendError> {
    let network = match (ctx.network.ipv4, ctx.network.ipv6) {
        (_, Some(_)) => return Err(BackendError::Unsupported(IPV6_UNSUPPORTED.into())),
        (Some(p), None) => p.network,
        (None, None) => unreachable!("a validated config has an address family"),
    };
    let env = |k: &str| std::env::var(k).ok();
    let fallback = fallback::Fallback::build(ctx, cfg).await?;
    if cfg.mode == TencentVpcMode::Controller {
        // No credentials on the node: only the metadata service, for its own facts.
        let md = MetadataClient::new(&crate::cloud::metadata_url(
            cfg.metadata_url.as_deref(),
            &env,
        ))
        .map_err(|e| TencentVpcError::CloudSetup(crate::cloud::CloudSetupError::Metadata(e)))?;
        let node = node_facts(&md, ctx.ext).await;
        let cluster = cluster_of(cfg, network);
        info!(cluster = %cluster, private_ip = %node.private_ip, subnet = %node.subnet_id, "tencent-vpc backend in controller mode: routes are written by flanneld --controller");
        let mut backend = Controlled::new(
            ctx.ext.clone(),
            node,
            &cluster,
            resync_of(cfg),
            Arc::clone(&ctx.store),
        );
        backend = match fallback {
            Some(f) => backend.with_fallback(f),
            None => backend.with_probe(probe::DataPathProbe {
                enabled: !cfg.no_readiness_probe,
            }),
        };
        return Ok(Box::new(backend));
    }
    let metrics = ctx.metrics.vpc.clone();
    let cloud = crate::cloud::connect(cloud_setup(cfg, &metrics), &env)
        .await
        .map_err(TencentVpcError::CloudSetup)?;
    let node = node_facts(&cloud.metadata, ctx.ext).await;
    let vpc_id = resolve_vpc(cfg, &cloud.metadata).await.ok_or_else(|| {
        BackendError::Unsupported(
            "no VPC: set Backend.VpcId (the metadata service did not say)".into(),
        )
    })?;
    let settings = Settings::from_config(cfg, network, vpc_id);
    let cluster = settings.owner.cluster.clone();
    info!(vpc = %settings.vpc_id, cluster = %cluster, private_ip = %node.private_ip, subnet = %node.subnet_id, region = %cloud.region, credentials = ?cloud.client, "tencent-vpc backend");
    pacing::wait_for_turn(ctx.store.as_ref(), &cluster).await;
    let seat = LeaderSeat::stand(ctx.store.leader_election(
        &format!("tencent-vpc-gc-{cluster}"),
        &node.private_ip.to_string(),
    ));
    let mut backend = Agent::new(
        ctx.ext.clone(),
        node,
        settings,
        Arc::new(cloud.client),
        metrics,
        Some(seat),
    );
    match backend.preflight().await {
        // Configured wrong (no such VPC or table, credentials refused): fatal before the
        // lease. Unreachable or throttled: the first reconcile retries.
        Err(e @ TencentVpcError::Discovery(_)) => return Err(e.into()),
        Err(TencentVpcError::Cloud { op, source })
            if source.class() == tencent_cloud::ErrorClass::Fatal =>
        {
            return Err(TencentVpcError::Cloud { op, source }.into())
        }
        Err(e) => {
            warn!(error = %crate::report(&e), "reading the route tables failed; the first reconcile tries again")
        }
        Ok(()) => {}
    }
    backend = match fallback {
        Some(f) => backend.with_fallback(f),
        None => backend.with_probe(probe::DataPathProbe {
            enabled: !cfg.no_readiness_probe,
        }),
    };
    Ok(Box::new(backend))
}

/// This node's lease attributes: its private IP and subnet (and, with Fallback, its VTEP).
fn lease_attrs(
    ext: &ExternalInterface,
    node: &NodeFacts,
    fallback: Option<&fallback::Fallback>,
) -> Result<LeaseAttrs, BackendError> {
    let mut attrs = base_attrs(BackendKind::TencentVpc, ext)?;
    let mut data = json!({
        "PrivateIP": node.private_ip.to_string(),
        "SubnetId": node.subnet_id,
    });
    if let Some(f) = fallback {
        let (vni, mac) = f.vtep();
        data["VNI"] = vni.into();
        data["VtepMAC"] = mac.to_string().into();
    }
    attrs.backend_data = Some(data);
    Ok(attrs)
}

/// This node's route.
fn own_route(own: &Lease, node: &NodeFacts) -> Option<Wanted> {
    Some(Wanted {
        dest: own.subnet()?.trunc(),
        next_hop: node.private_ip,
    })
}

/// Whether this node's route is in place, logged when it changes.
#[derive(Debug, Default)]
struct Readiness(AtomicBool);

impl Readiness {
    fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Ready: this node's route is in every table, or (Fallback) it is on the vxlan side.
    fn set(&self, ready: bool, over_vxlan: bool, dest: Ipv4Net, tables: &[String]) {
        if ready != self.0.swap(ready, Ordering::SeqCst) {
            match (ready, over_vxlan) {
                (true, true) => {
                    info!(dest = %dest, "this node is reached over vxlan (Fallback); its device is up")
                }
                (true, false) => {
                    info!(dest = %dest, tables = ?tables, "this node's route is in every route table")
                }
                (false, _) => {
                    warn!(dest = %dest, tables = ?tables, "this node's route is not in every route table yet")
                }
            }
        }
    }
}

/// The cloud setup of a writer (an agent in per-node mode, or the controller), with every
/// API call counted in `metrics`.
pub fn cloud_setup(cfg: &TencentVpcConfig, metrics: &VpcMetrics) -> crate::cloud::CloudSetup {
    let observed = metrics.clone();
    crate::cloud::CloudSetup {
        region: cfg.region.clone(),
        endpoint: cfg.endpoint.clone(),
        metadata_url: cfg.metadata_url.clone(),
        access_key_id: cfg.access_key_id.clone(),
        access_key_secret: cfg.access_key_secret.clone(),
        observer: Some(CallObserver(Arc::new(move |action, result| {
            observed
                .api_calls
                .get_or_create(&ApiCallLabels {
                    action: action.to_string(),
                    result: result.to_string(),
                })
                .inc();
        }))),
    }
}

/// The node's private IP and subnet from the metadata service, falling back to the
/// interface address for the IP.
pub async fn node_facts(md: &MetadataClient, ext: &ExternalInterface) -> NodeFacts {
    let from_metadata = md
        .local_ipv4()
        .await
        .ok()
        .and_then(|s| s.trim().parse::<Ipv4Addr>().ok());
    let private_ip = from_metadata
        .or(ext.iface_addr)
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    if Some(private_ip) != ext.iface_addr {
        warn!(metadata = %private_ip, iface = ?ext.iface_addr, "the metadata service's private IP is not the interface's; routing via the metadata's");
    }
    let subnet_id = match md.mac().await {
        Ok(mac) => md.subnet_id(mac.trim()).await.ok(),
        Err(e) => {
            warn!(error = %crate::Report(&e), "the metadata service did not give this node's MAC: its subnet is unknown");
            None
        }
    };
    NodeFacts {
        private_ip,
        subnet_id: subnet_id.map(|s| s.trim().to_string()).unwrap_or_default(),
    }
}
