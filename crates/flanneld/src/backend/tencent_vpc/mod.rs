//! The tencent-vpc backend: pod subnets as routes in the VPC route tables that serve the node
//! subnets (next hop NORMAL_CVM = the node's private IP), so pods talk at native speed with
//! no overlay.
//!
//! - `plan`: the pure planner (desired routes against the tables → actions);
//! - `tables`: which tables to program (pure discovery) and what they hold;
//! - `apply`: the batched, idempotent writes;
//! - `gc`: the guarded garbage collector's bookkeeping (pure);
//! - `reconcile`: one read → plan → apply cycle, shared with the controller.
//!
//! In per-node mode each agent keeps its own route present and enabled in every table (zero
//! write calls when all is right); the agent elected through the lease store also deletes
//! the routes of departed nodes. In controller mode the agent needs no credentials: it
//! publishes its lease and is ready once the controller (`flanneld --controller`) reports
//! its route in place, through a record in the lease store ([`RouteStatus`]).

pub mod apply;
pub mod gc;
pub mod plan;
pub mod reconcile;
pub mod split;
pub mod tables;

use super::{base_attrs, Backend, BackendContext, BackendError};
use crate::iface::ExternalInterface;
use crate::metrics::{ApiCallLabels, VpcMetrics};
use crate::subnet::election::LeaderSeat;
use async_trait::async_trait;
use flannel_core::backend_config::{
    cluster_name_for, BackendKind, TencentVpcConfig, TencentVpcMode, DEFAULT_RESYNC_SECS,
};
use flannel_core::lease::{Lease, LeaseAttrs, LeaseEvent, SubnetKey};
use gc::LeaseView;
use ipnet::Ipv4Net;
use plan::{Ownership, Scope, Wanted};
use reconcile::{Reconciler, SplitRequest, Target};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tencent_cloud::{CallObserver, Client, MetadataClient};
use tokio::sync::Mutex;
use tracing::{info, warn};

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
}

impl Settings {
    /// The options of `cfg` for `network`, with defaults (ClusterName from the Network,
    /// ResyncInterval 60 s).
    pub fn from_config(cfg: &TencentVpcConfig, network: Ipv4Net, vpc_id: String) -> Settings {
        Settings {
            vpc_id,
            owner: Ownership {
                cluster: cfg
                    .cluster_name
                    .clone()
                    .unwrap_or_else(|| cluster_name_for(&network)),
                network,
            },
            adopt_untagged: cfg.adopt_untagged_routes,
            route_table_ids: cfg.route_table_ids.clone(),
            resync: Duration::from_secs(cfg.resync_interval_secs.unwrap_or(DEFAULT_RESYNC_SECS)),
            fallback: cfg.fallback_vxlan,
            reserved: cfg.reserved_routes,
        }
    }
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
}

impl RouteStatus {
    pub fn record_name(cluster: &str) -> String {
        format!("tencent-vpc-routes-{cluster}")
    }
}

/// Who writes this node's route.
enum Writer {
    /// This agent (per-node mode), electing a garbage collector among the agents.
    Agent {
        reconciler: Box<Reconciler>,
        gc_seat: Option<LeaderSeat>,
    },
    /// The controller; this agent reads the route status from the lease store.
    Controller {
        store: Arc<dyn crate::subnet::SubnetManager>,
        record: String,
    },
}

pub struct TencentVpcBackend {
    metrics: Option<VpcMetrics>,
    ext: ExternalInterface,
    node: NodeFacts,
    settings: Settings,
    writer: Writer,
    peers: Mutex<BTreeMap<SubnetKey, Lease>>,
    ready: AtomicBool,
    fallback: Option<Fallback>,
}

/// `"Fallback": "vxlan"`: the vxlan data plane for the leases the route tables cannot hold.
struct Fallback {
    vxlan: crate::backend::vxlan::VxlanBackend,
    /// The last split, and the leases whose route is in every programmed table.
    view: std::sync::Mutex<FallbackView>,
}

#[derive(Default)]
struct FallbackView {
    split: split::Split,
    /// Leases whose route was in every table at the last two readings (at the first
    /// reading: at that one). A lease leaves vxlan only then, never in the moment its route
    /// appears: the path through the VPC has had a resync to settle.
    routed_everywhere: BTreeSet<Ipv4Net>,
    /// The last reading's leases with a route in every table (None before the first).
    last_seen: Option<BTreeSet<Ipv4Net>>,
    /// This node's own lease was on the vxlan side at the last reconcile.
    own_fallback: bool,
}

impl FallbackView {
    /// Take a new split and reading; say so when this node's own side changed.
    fn update(&mut self, split: split::Split, seen_everywhere: BTreeSet<Ipv4Net>, own: Ipv4Net) {
        let own_fallback = split.fallback.contains(&own);
        if own_fallback != self.own_fallback {
            info!(dest = %own, routed = split.routed.len(), fallback = split.fallback.len(), "this node's subnet is reached over {}", if own_fallback { "vxlan (the route tables are full)" } else { "VPC routes" });
        }
        self.split = split;
        self.routed_everywhere = match &self.last_seen {
            Some(last) => last.intersection(&seen_everywhere).copied().collect(),
            None => seen_everywhere.clone(),
        };
        self.last_seen = Some(seen_everywhere);
        self.own_fallback = own_fallback;
    }

    /// Whether every peer with a route is on one side: routed everywhere or on the vxlan
    /// side.
    fn places(&self, peers: &[Lease]) -> bool {
        peers.iter().filter_map(route_of).all(|w| {
            self.routed_everywhere.contains(&w.dest) || self.split.fallback.contains(&w.dest)
        })
    }

    /// Peers reached over vxlan: the split's fallback side, and any lease whose VPC route is
    /// not in every table yet (a newcomer, or one moving to routes: its vxlan entries go only
    /// once the route is there).
    fn over_vxlan(&self, peers: &[Lease]) -> Vec<Lease> {
        peers
            .iter()
            .filter(|p| {
                p.subnet().is_some_and(|s| {
                    let s = s.trunc();
                    self.split.fallback.contains(&s) || !self.routed_everywhere.contains(&s)
                })
            })
            .cloned()
            .collect()
    }
}

impl TencentVpcBackend {
    /// A backend for an already connected client (tests build several in one process).
    pub fn new(
        ext: ExternalInterface,
        node: NodeFacts,
        settings: Settings,
        client: Arc<Client>,
        metrics: VpcMetrics,
        gc_seat: Option<LeaderSeat>,
    ) -> TencentVpcBackend {
        let reconciler = Reconciler::new(client, settings.clone(), metrics.clone());
        TencentVpcBackend {
            metrics: Some(metrics),
            ext,
            node,
            settings,
            writer: Writer::Agent {
                reconciler: Box::new(reconciler),
                gc_seat,
            },
            peers: Mutex::new(BTreeMap::new()),
            ready: AtomicBool::new(false),
            fallback: None,
        }
    }

    /// Reach the leases the route tables cannot hold through `vxlan` (`"Fallback": "vxlan"`).
    pub fn with_fallback(mut self, vxlan: crate::backend::vxlan::VxlanBackend) -> Self {
        self.fallback = Some(Fallback {
            vxlan,
            view: std::sync::Mutex::new(FallbackView::default()),
        });
        self
    }

    /// A controller-mode agent: no cloud client, the route status read from `store`.
    pub fn new_controlled(
        ext: ExternalInterface,
        node: NodeFacts,
        settings: Settings,
        store: Arc<dyn crate::subnet::SubnetManager>,
    ) -> TencentVpcBackend {
        let record = RouteStatus::record_name(&settings.owner.cluster);
        TencentVpcBackend {
            metrics: None,
            ext,
            node,
            settings,
            writer: Writer::Controller { store, record },
            peers: Mutex::new(BTreeMap::new()),
            ready: AtomicBool::new(false),
            fallback: None,
        }
    }

    /// Build from net-conf.json and the metadata service (what flanneld does).
    pub async fn build(
        ctx: &BackendContext<'_>,
        cfg: &TencentVpcConfig,
    ) -> Result<TencentVpcBackend, BackendError> {
        let network = match (ctx.network.ipv4, ctx.network.ipv6) {
            (_, Some(_)) => {
                return Err(BackendError::Unsupported(
                    "tencent-vpc routes IPv4 pod subnets only: IPv6 networks are not supported yet (set EnableIPv6 to false)".into(),
                ))
            }
            (Some(p), None) => p.network,
            (None, None) => unreachable!("a validated config has an address family"),
        };
        let env = |k: &str| std::env::var(k).ok();
        if cfg.mode == TencentVpcMode::Controller {
            // No credentials on the node: only the metadata service, for its own facts.
            let md = MetadataClient::new(&crate::cloud::metadata_url(
                cfg.metadata_url.as_deref(),
                &env,
            ))
            .map_err(|e| BackendError::CloudSetup(crate::cloud::CloudSetupError::Metadata(e)))?;
            let node = node_facts(&md, ctx.ext).await;
            let vpc = resolve_vpc(cfg, &md).await.unwrap_or_default();
            let settings = Settings::from_config(cfg, network, vpc);
            info!(cluster = %settings.owner.cluster, private_ip = %node.private_ip, subnet = %node.subnet_id, "tencent-vpc backend in controller mode: routes are written by flanneld --controller");
            let backend = TencentVpcBackend::new_controlled(
                ctx.ext.clone(),
                node,
                settings,
                Arc::clone(&ctx.store),
            );
            return Self::maybe_with_fallback(backend, ctx, cfg).await;
        }
        let metrics = ctx.metrics.vpc.clone();
        let cloud = crate::cloud::connect(cloud_setup(cfg, &metrics), &env)
            .await
            .map_err(BackendError::CloudSetup)?;
        let node = node_facts(&cloud.metadata, ctx.ext).await;
        let vpc_id = resolve_vpc(cfg, &cloud.metadata).await.ok_or_else(|| {
            BackendError::Unsupported(
                "no VPC: set Backend.VpcId (the metadata service did not say)".into(),
            )
        })?;
        let settings = Settings::from_config(cfg, network, vpc_id);
        let cluster = settings.owner.cluster.clone();
        info!(vpc = %settings.vpc_id, cluster = %cluster, private_ip = %node.private_ip, subnet = %node.subnet_id, region = %cloud.region, credentials = ?cloud.client, "tencent-vpc backend");
        let seat = LeaderSeat::stand(ctx.store.leader_election(
            &format!("tencent-vpc-gc-{cluster}"),
            &node.private_ip.to_string(),
        ));
        let backend = TencentVpcBackend::new(
            ctx.ext.clone(),
            node,
            settings,
            Arc::new(cloud.client),
            metrics,
            Some(seat),
        );
        Self::maybe_with_fallback(backend, ctx, cfg).await
    }

    /// With `"Fallback": "vxlan"`, the vxlan device for the leases the tables cannot hold.
    async fn maybe_with_fallback(
        backend: TencentVpcBackend,
        ctx: &BackendContext<'_>,
        cfg: &TencentVpcConfig,
    ) -> Result<TencentVpcBackend, BackendError> {
        if !cfg.fallback_vxlan {
            return Ok(backend);
        }
        let vxlan = crate::backend::vxlan::VxlanBackend::reaching(
            ctx.ext.clone(),
            ctx.network,
            &flannel_core::backend_config::VxlanConfig::default(),
            Arc::new(crate::kernel::Netlink::connect()?),
            BackendKind::TencentVpc,
        )
        .await?;
        info!(
            reserved_routes = cfg.reserved_routes,
            "Fallback vxlan: leases the route tables cannot hold are reached over flannel.1"
        );
        Ok(backend.with_fallback(vxlan))
    }

    /// This node's route.
    fn own_route(&self, own: &Lease) -> Option<Wanted> {
        Some(Wanted {
            dest: own.subnet()?.trunc(),
            next_hop: self.node.private_ip,
        })
    }

    /// Ready: this node's route is in every table, or (Fallback) it is on the vxlan side.
    fn set_ready(&self, ready: bool, over_vxlan: bool, dest: Ipv4Net, tables: &[String]) {
        if ready != self.ready.swap(ready, Ordering::SeqCst) {
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

    /// Make this node's route present everywhere (or, in controller mode, see whether the
    /// controller has); collect garbage when elected and `fresh`.
    async fn reconcile(&self, own: &Lease, fresh: Option<bool>) -> Result<(), BackendError> {
        let Some(mine) = self.own_route(own) else {
            return Ok(());
        };
        let (reconciler, gc_seat) = match &self.writer {
            Writer::Agent {
                reconciler,
                gc_seat,
            } => (reconciler, gc_seat),
            Writer::Controller { store, record } => {
                let status: RouteStatus = store
                    .get_record(record)
                    .await
                    .map_err(BackendError::RouteStatus)?
                    .and_then(|v| serde_json::from_str(&v).ok())
                    .unwrap_or_default();
                let routed = status.routes.get(&mine.dest) == Some(&mine.next_hop);
                let own_fallback = status.fallback.contains(&mine.dest);
                if let Some(f) = &self.fallback {
                    let split = split::Split {
                        routed: status.routes.keys().copied().collect(),
                        fallback: status.fallback,
                        capacity: 0,
                    };
                    let everywhere = status.routes.into_keys().collect();
                    f.view
                        .lock()
                        .expect("fallback view")
                        .update(split, everywhere, mine.dest);
                    self.sync_fallback(own).await?;
                }
                let ready = routed || (self.fallback.is_some() && own_fallback);
                self.set_ready(ready, !routed && own_fallback, mine.dest, &[]);
                return if ready {
                    Ok(())
                } else {
                    Err(BackendError::NotRouted(format!(
                        "waiting for the tencent-vpc controller to route {} via {}",
                        mine.dest, mine.next_hop
                    )))
                };
            }
        };
        let (leased, node_subnets) = {
            let peers = self.peers.lock().await;
            let mut leased = leased_subnets(peers.values());
            leased.insert(mine.dest);
            let mut subnets: BTreeSet<String> = peers.values().filter_map(subnet_of).collect();
            if !self.node.subnet_id.is_empty() {
                subnets.insert(self.node.subnet_id.clone());
            }
            (leased, subnets)
        };
        let lease_routes: Vec<Wanted> = match &self.fallback {
            Some(_) => {
                let peers = self.peers.lock().await;
                peers.values().filter_map(route_of).chain([mine]).collect()
            }
            None => Vec::new(),
        };
        // Our own route goes one round after the split moved us to vxlan (peers first add
        // their vxlan entries for us).
        let evict: BTreeSet<Ipv4Net> = self
            .fallback
            .as_ref()
            .filter(|f| f.view.lock().expect("fallback view").own_fallback)
            .map(|_| mine.dest)
            .into_iter()
            .collect();
        let leader = gc_seat.as_ref().is_some_and(LeaderSeat::is_leader);
        let gc = match fresh {
            Some(fresh) if leader => Some(LeaseView {
                leased: &leased,
                fresh,
            }),
            _ => None,
        };
        let outcome = reconciler
            .reconcile(&Target {
                wanted: &[mine],
                leased: &leased,
                node_subnets: &node_subnets,
                scope: Scope::Node(self.node.private_ip),
                gc,
                split: self.fallback.as_ref().map(|_| SplitRequest {
                    leases: &lease_routes,
                    reserved: self.settings.reserved,
                    evict: &evict,
                }),
            })
            .await?;
        let routed = outcome.routed(mine.dest) && !outcome.refresh;
        if let (Some(f), Some(s)) = (&self.fallback, &outcome.split) {
            // Fallback: this node is ready with its route everywhere or, on the vxlan side,
            // with its vxlan device up (its VtepMAC is in its lease).
            let own_fallback = s.fallback.contains(&mine.dest);
            let routed_everywhere: BTreeSet<Ipv4Net> = lease_routes
                .iter()
                .filter(|w| {
                    !outcome.observed.is_empty()
                        && outcome
                            .observed
                            .iter()
                            .all(|t| split::holds(t, &self.settings.owner, w))
                })
                .map(|w| w.dest)
                .chain(routed.then_some(mine.dest))
                .collect();
            if let Some(m) = &self.metrics {
                m.record_split(s);
            }
            f.view
                .lock()
                .expect("fallback view")
                .update(s.clone(), routed_everywhere, mine.dest);
            self.sync_fallback(own).await?;
            self.set_ready(
                routed || own_fallback,
                !routed && own_fallback,
                mine.dest,
                &outcome.tables,
            );
            return match outcome.errors.into_iter().next() {
                Some(e) => Err(e),
                None => Ok(()),
            };
        }
        self.set_ready(routed, false, mine.dest, &outcome.tables);
        match (
            outcome.errors.into_iter().next(),
            outcome.problems.into_iter().next(),
        ) {
            (Some(e), _) => Err(e),
            (None, Some(p)) if !routed => Err(BackendError::NotRouted(p)),
            _ => Ok(()),
        }
    }
}

impl TencentVpcBackend {
    /// Program vxlan entries for exactly the peers reached over vxlan now.
    async fn sync_fallback(&self, own: &Lease) -> Result<(), BackendError> {
        let Some(f) = &self.fallback else {
            return Ok(());
        };
        let peers: Vec<Lease> = self.peers.lock().await.values().cloned().collect();
        let over = f.view.lock().expect("fallback view").over_vxlan(&peers);
        f.vxlan.sync(own, &over).await
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

#[async_trait]
impl Backend for TencentVpcBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::TencentVpc
    }

    async fn lease_attrs(&self) -> Result<LeaseAttrs, BackendError> {
        let mut attrs = base_attrs(BackendKind::TencentVpc, &self.ext)?;
        let mut data = json!({
            "PrivateIP": self.node.private_ip.to_string(),
            "SubnetId": self.node.subnet_id,
        });
        if let Some(f) = &self.fallback {
            let (vni, mac) = f.vxlan.vtep();
            data["VNI"] = vni.into();
            data["VtepMAC"] = mac.to_string().into();
        }
        attrs.backend_data = Some(data);
        Ok(attrs)
    }

    /// The first reconcile. A cloud failure here is not fatal (the node stays not ready and
    /// the daemon retries with backoff); a table that cannot be determined is.
    async fn activate(&self, own: &Lease, peers: &[Lease]) -> Result<(), BackendError> {
        *self.peers.lock().await = peers.iter().map(|l| (l.key, l.clone())).collect();
        match self.reconcile(own, None).await {
            Err(e @ BackendError::Discovery(_)) => Err(e),
            Err(e) => {
                warn!(error = %crate::report(&e), "route not in place yet; retrying");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// Peer events cost no API call unless a node appeared in a subnet not seen before
    /// (its route table may need this node's route).
    async fn handle(&self, own: &Lease, events: &[LeaseEvent]) -> Result<(), BackendError> {
        let new_subnet = {
            let mut peers = self.peers.lock().await;
            let known: BTreeSet<String> = peers.values().filter_map(subnet_of).collect();
            let mut new_subnet = false;
            for e in events {
                match e {
                    LeaseEvent::Added(l) => {
                        if let Some(s) = subnet_of(l) {
                            new_subnet |= s != self.node.subnet_id && !known.contains(&s);
                        }
                        if l.attrs.backend_type != BACKEND_TYPE || route_of(l).is_none() {
                            warn!(subnet = %l.key, backend = %l.attrs.backend_type, "peer lease carries no tencent-vpc PrivateIP: not routed by flannel-rs");
                        }
                        peers.insert(l.key, l.clone());
                    }
                    LeaseEvent::Removed(l) => {
                        peers.remove(&l.key);
                    }
                }
            }
            new_subnet
        };
        if new_subnet && matches!(self.writer, Writer::Agent { .. }) {
            self.reconcile(own, None).await?;
        } else {
            // A newcomer is reached over vxlan at once, until its route is everywhere.
            self.sync_fallback(own).await?;
        }
        Ok(())
    }

    async fn resync(&self, own: &Lease, peers: &[Lease], fresh: bool) -> Result<(), BackendError> {
        *self.peers.lock().await = peers.iter().map(|l| (l.key, l.clone())).collect();
        self.reconcile(own, Some(fresh)).await
    }

    fn mtu(&self) -> u32 {
        // With Fallback any peer may be reached over vxlan.
        match &self.fallback {
            Some(f) => f.vxlan.mtu(),
            None => self.ext.mtu,
        }
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// A controller-mode agent with Fallback is settled once the controller's status places
    /// every peer on one side (reading it again costs no cloud call). In per-node mode a
    /// peer whose route is not seen yet stays on vxlan until the resync's table read.
    async fn settled(&self) -> bool {
        let (Some(f), Writer::Controller { .. }) = (&self.fallback, &self.writer) else {
            return true;
        };
        let peers: Vec<Lease> = self.peers.lock().await.values().cloned().collect();
        f.view.lock().expect("fallback view").places(&peers)
    }

    fn resync_period(&self) -> Option<Duration> {
        Some(self.settings.resync)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::host_gw::tests::lease;

    fn peer(i: u8) -> Lease {
        let mut l = lease(
            &format!("10.244.{i}.0/24"),
            &format!("172.16.0.{i}"),
            BACKEND_TYPE,
        );
        l.attrs.backend_data =
            Some(json!({"PrivateIP": format!("172.16.0.{i}"), "SubnetId": "subnet-a"}));
        l
    }

    fn nets(is: &[u8]) -> BTreeSet<Ipv4Net> {
        is.iter()
            .map(|i| format!("10.244.{i}.0/24").parse().unwrap())
            .collect()
    }

    #[test]
    fn fallback_view_places_peers_and_keeps_vxlan_until_the_route_is_everywhere() {
        let peers = [peer(1), peer(2), peer(3), peer(4)];
        let mut upstream = lease("10.244.9.0/24", "172.16.0.9", "vxlan");
        upstream.attrs.backend_data = Some(json!({"VNI": 1, "VtepMAC": "0e:00:00:00:00:09"}));
        let mut view = FallbackView::default();
        // As the controller published it: 1 and 2 routed, 3 on the vxlan side, 4 not placed.
        view.update(
            split::Split {
                routed: nets(&[1, 2]),
                fallback: nets(&[3]),
                capacity: 0,
            },
            nets(&[1, 2]),
            "10.244.1.0/24".parse().unwrap(),
        );
        let over = |v: &FallbackView, ps: &[Lease]| -> Vec<String> {
            v.over_vxlan(ps).iter().map(|l| l.key.to_string()).collect()
        };
        assert_eq!(over(&view, &peers), ["10.244.3.0-24", "10.244.4.0-24"]);
        assert!(!view.places(&peers), "10.244.4.0/24 is on neither side");
        // A lease with no tencent-vpc route is not the controller's to place.
        assert!(view.places(&[peer(1), peer(3), upstream]));
        // 4's route appears: it stays on vxlan until a second reading shows it too; 3 moving
        // to routes keeps vxlan until its route is everywhere.
        let all_routed = split::Split {
            routed: nets(&[1, 2, 3, 4]),
            fallback: BTreeSet::new(),
            capacity: 0,
        };
        let own = "10.244.1.0/24".parse().unwrap();
        view.update(all_routed.clone(), nets(&[1, 2, 4]), own);
        assert_eq!(over(&view, &peers), ["10.244.3.0-24", "10.244.4.0-24"]);
        view.update(all_routed.clone(), nets(&[1, 2, 4]), own);
        assert_eq!(over(&view, &peers), ["10.244.3.0-24"]);
        assert!(!view.places(&peers));
        assert!(!view.own_fallback);
        // A route gone from one reading is back on vxlan at once.
        view.update(all_routed, nets(&[1, 4]), own);
        assert_eq!(over(&view, &peers), ["10.244.2.0-24", "10.244.3.0-24"]);
    }
}
