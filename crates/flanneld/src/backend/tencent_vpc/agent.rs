//! Per-node mode: each agent keeps its own route present and enabled in every table (zero
//! write calls when all is right); the agent elected through the lease store also deletes
//! the routes of departed nodes.

use super::cloud::VpcRoutes;
use super::fallback::Fallback;
use super::gc::LeaseView;
use super::plan::{Scope, Wanted};
use super::probe::DataPathProbe;
use super::reconcile::{Reconciler, SplitRequest, Target};
use super::TencentVpcError;
use super::{
    lease_holders, leased_subnets, own_route, route_of, split, subnet_of, NodeFacts, Readiness,
    Settings,
};
use crate::backend::{Backend, BackendError, Status, Trigger};
use crate::iface::ExternalInterface;
use crate::metrics::VpcMetrics;
use crate::subnet::election::LeaderSeat;
use async_trait::async_trait;
use flannel_core::admission::PeerView;
use flannel_core::backend_config::BackendKind;
use flannel_core::lease::{Lease, LeaseAttrs};
use ipnet::Ipv4Net;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::warn;

pub struct Agent {
    metrics: VpcMetrics,
    ext: ExternalInterface,
    node: NodeFacts,
    settings: Settings,
    reconciler: Reconciler,
    gc_seat: Option<LeaderSeat>,
    ready: Readiness,
    /// The last reconcile wants a sooner one.
    pending: std::sync::atomic::AtomicBool,
    /// The VPC subnets of the nodes seen at the last full reconcile and since: a lease in a
    /// subnet not among them may need this node's route in another table.
    known_subnets: Mutex<BTreeSet<String>>,
    fallback: Option<Fallback>,
    probe: Option<DataPathProbe>,
}

impl Agent {
    /// An agent for an already connected client (tests build several in one process).
    pub fn new(
        ext: ExternalInterface,
        node: NodeFacts,
        settings: Settings,
        client: Arc<dyn VpcRoutes>,
        metrics: VpcMetrics,
        gc_seat: Option<LeaderSeat>,
    ) -> Agent {
        Agent {
            reconciler: Reconciler::new(client, settings.clone(), metrics.clone()),
            metrics,
            ext,
            node,
            settings,
            gc_seat,
            ready: Readiness::default(),
            pending: std::sync::atomic::AtomicBool::new(true),
            known_subnets: Mutex::new(BTreeSet::new()),
            fallback: None,
            probe: None,
        }
    }

    /// Hold the probe address and, unless `ReadinessProbe` is off, be ready only once a
    /// probe from it is answered (without Fallback).
    pub fn with_probe(mut self, probe: DataPathProbe) -> Agent {
        self.probe = Some(probe);
        self
    }

    /// Reach the leases the route tables cannot hold through vxlan (`"Fallback": "vxlan"`).
    pub fn with_fallback(mut self, fallback: Fallback) -> Agent {
        self.fallback = Some(fallback);
        self
    }

    /// Before the lease: read the tables once. A VPC or configured route table that does not
    /// exist is an error now (no lease is left behind); the reading serves the first
    /// reconcile.
    pub async fn preflight(&self) -> Result<(), TencentVpcError> {
        let subnets: BTreeSet<String> = Some(self.node.subnet_id.clone())
            .filter(|s| !s.is_empty())
            .into_iter()
            .collect();
        self.reconciler.prime(&subnets).await
    }

    /// Whether this node's route is in place (as of the last reconcile).
    pub fn ready(&self) -> bool {
        self.ready.get()
    }

    fn known_subnets(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.known_subnets.lock().expect("known subnets")
    }

    /// Make this node's route present everywhere; collect garbage when elected and `fresh`
    /// (None: no garbage collection).
    async fn route(
        &self,
        own: &Lease,
        peers: &PeerView<'_>,
        fresh: Option<bool>,
    ) -> Result<Status, BackendError> {
        let Some(mine) = own_route(own, &self.node) else {
            return Ok(Status::done());
        };
        let mut leased = leased_subnets(peers.iter());
        leased.insert(mine.dest);
        let mut node_subnets: BTreeSet<String> = peers.iter().filter_map(subnet_of).collect();
        if !self.node.subnet_id.is_empty() {
            node_subnets.insert(self.node.subnet_id.clone());
        }
        *self.known_subnets() = node_subnets.clone();
        let lease_routes: Vec<Wanted> = match &self.fallback {
            Some(_) => peers.iter().filter_map(route_of).chain([mine]).collect(),
            None => Vec::new(),
        };
        // Our own route goes one round after the split moved us to vxlan (peers first add
        // their vxlan entries for us).
        let evict: BTreeSet<Ipv4Net> = self
            .fallback
            .as_ref()
            .filter(|f| f.own_fallback())
            .map(|_| mine.dest)
            .into_iter()
            .collect();
        let leader = self.gc_seat.as_ref().is_some_and(LeaderSeat::is_leader);
        let holders = lease_holders(peers, Some(self.node.private_ip));
        let gc = match fresh {
            Some(fresh) if leader => Some(LeaseView {
                leased: &leased,
                holders: &holders,
                fresh,
            }),
            _ => None,
        };
        let outcome = self
            .reconciler
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
        let mut problem = outcome.errors.first().map(|e| crate::report(e));
        let (ready, over_vxlan) = match (&self.fallback, &outcome.split) {
            (Some(f), Some(s)) => {
                // This node is ready with its route everywhere or, on the vxlan side, with its
                // vxlan device up (its VtepMAC is in its lease).
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
                self.metrics.record_split(s);
                f.update(s.clone(), routed_everywhere, mine.dest);
                f.sync(own, peers).await?;
                (routed || own_fallback, !routed && own_fallback)
            }
            _ => {
                if problem.is_none() && !routed {
                    problem = outcome.unrouted.get(&mine.dest).cloned();
                }
                (routed, false)
            }
        };
        self.ready
            .set(ready, over_vxlan, mine.dest, &outcome.tables);
        // A write that failed or a table that changed under us is worth a sooner look; a
        // full table, a conflict or a refused route waits for the resync (re-reading sooner
        // changes nothing and costs calls against the account's budget).
        let transient = !outcome.errors.is_empty() || outcome.refresh;
        let explained = outcome.unrouted.contains_key(&mine.dest);
        let pending = transient || (!ready && !explained);
        self.pending
            .store(pending, std::sync::atomic::Ordering::SeqCst);
        Ok(Status {
            ready,
            pending,
            problem,
        })
    }

    /// The status without a cloud call: as last seen.
    fn last_status(&self) -> Status {
        Status {
            ready: self.ready.get(),
            pending: self.pending.load(std::sync::atomic::Ordering::SeqCst),
            problem: None,
        }
    }
}

#[async_trait]
impl Backend for Agent {
    fn kind(&self) -> BackendKind {
        BackendKind::TencentVpc
    }

    async fn lease_attrs(&self) -> Result<LeaseAttrs, BackendError> {
        super::lease_attrs(&self.ext, &self.node, self.fallback.as_ref())
    }

    /// At start a cloud failure is not fatal (the node stays not ready and the daemon retries
    /// with backoff); a table that cannot be determined is. Peer changes cost no API call
    /// unless a node appeared in a subnet not seen before (its route table may need this
    /// node's route).
    async fn reconcile(
        &self,
        own: &Lease,
        peers: &PeerView<'_>,
        trigger: Trigger<'_>,
    ) -> Result<Status, BackendError> {
        match trigger {
            Trigger::Start => match self.route(own, peers, None).await {
                Err(e @ BackendError::TencentVpc(TencentVpcError::Discovery(_))) => Err(e),
                Err(e) => {
                    warn!(error = %crate::report(&e), "route not in place yet; retrying");
                    Ok(Status {
                        ready: false,
                        pending: true,
                        problem: Some(crate::report(&e)),
                    })
                }
                ok => ok,
            },
            Trigger::Leases { added, .. } => {
                let new_subnet = {
                    let mut known = self.known_subnets();
                    let mut new_subnet = false;
                    for s in added.iter().filter_map(subnet_of) {
                        new_subnet |= s != self.node.subnet_id && known.insert(s);
                    }
                    new_subnet
                };
                if new_subnet {
                    return self.route(own, peers, None).await;
                }
                // A newcomer is reached over vxlan at once, until its route is everywhere.
                if let Some(f) = &self.fallback {
                    f.sync(own, peers).await?;
                }
                Ok(self.last_status())
            }
            Trigger::Resync { fresh } => self.route(own, peers, Some(fresh)).await,
        }
    }

    fn mtu(&self) -> u32 {
        // With Fallback any peer may be reached over vxlan.
        match &self.fallback {
            Some(f) => f.mtu(),
            None => self.ext.mtu,
        }
    }

    fn resync_period(&self) -> Option<Duration> {
        Some(self.settings.resync)
    }

    fn probe_plan(&self, own: &Lease, peers: &PeerView<'_>) -> Option<crate::probe::ProbePlan> {
        self.probe.as_ref()?.plan(own, peers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tencent_vpc::cloud::fake::FakeVpc;
    use crate::backend::tencent_vpc::fallback::Fallback;
    use crate::backend::vxlan::VxlanBackend;
    use crate::kernel::fake::FakeKernel;
    use flannel_core::backend_config::VxlanConfig;
    use flannel_core::lease::{Expiry, SubnetKey};
    use serde_json::json;

    fn agent(
        ext: ExternalInterface,
        facts: NodeFacts,
        fallback: bool,
        vpc: &Arc<FakeVpc>,
    ) -> Agent {
        Agent::new(
            ext,
            facts,
            Settings::for_tests(fallback),
            vpc.clone(),
            crate::metrics::Metrics::default().vpc,
            None,
        )
    }

    fn node(i: u8, subnet: &str) -> (ExternalInterface, NodeFacts) {
        let ip = Ipv4Addr::new(172, 16, 1, i);
        (
            ExternalInterface::ipv4("eth0", 2, 1500, ip),
            NodeFacts {
                private_ip: ip,
                subnet_id: subnet.into(),
            },
        )
    }

    fn lease(i: u8, subnet: &str, vtep: bool) -> Lease {
        let ip = format!("172.16.1.{i}");
        let mut attrs = LeaseAttrs::new(ip.parse().unwrap());
        attrs.backend_type = "tencent-vpc".into();
        let mut data = json!({"PrivateIP": ip, "SubnetId": subnet});
        if vtep {
            data["VNI"] = 1.into();
            data["VtepMAC"] = format!("0e:00:00:00:00:{i:02x}").into();
        }
        attrs.backend_data = Some(data);
        Lease {
            key: SubnetKey::v4(format!("10.244.{i}.0/24").parse().unwrap()),
            attrs,
            expiry: Expiry::Never,
        }
    }

    use std::net::Ipv4Addr;

    #[tokio::test]
    async fn a_node_routes_itself_in_every_table_once_and_a_restart_writes_nothing() {
        let vpc = Arc::new(FakeVpc::new(50));
        let (ext, facts) = node(7, "subnet-a");
        let own = lease(7, "subnet-a", false);
        let peers = [lease(8, "subnet-b", false)];
        let view = PeerView::unchecked(&peers);
        let a = agent(ext.clone(), facts.clone(), false, &vpc);
        a.preflight().await.unwrap();
        let s = a.reconcile(&own, &view, Trigger::Start).await.unwrap();
        assert!(s.ready && !s.pending, "{s:?}");
        assert_eq!(
            (
                vpc.calls("DescribeRouteTables"),
                vpc.calls("DescribeVpcLimits"),
                vpc.calls("CreateRoutes")
            ),
            (1, 1, 2),
            "the primed reading serves the first reconcile: 2 + tables calls"
        );
        for t in ["rtb-a", "rtb-b"] {
            assert_eq!(
                vpc.routes(t),
                [("10.244.7.0/24".to_string(), "172.16.1.7".to_string())]
            );
        }
        let again = agent(ext, facts, false, &vpc);
        let s = again.reconcile(&own, &view, Trigger::Start).await.unwrap();
        assert!(s.ready);
        assert_eq!(vpc.calls("CreateRoutes"), 2, "a restart writes nothing");
    }

    #[tokio::test]
    async fn a_full_table_waits_for_the_resync_and_a_raise_routes_it() {
        let vpc = Arc::new(FakeVpc::new(0));
        let (ext, facts) = node(7, "subnet-a");
        let own = lease(7, "subnet-a", false);
        let a = agent(ext, facts, false, &vpc);
        let none = PeerView::unchecked(&[]);
        let s = a.reconcile(&own, &none, Trigger::Start).await.unwrap();
        assert!(!s.ready);
        assert!(!s.pending, "a full table changes at a resync, not sooner");
        assert_eq!(
            s.problem.as_deref(),
            Some(
                "create route 10.244.7.0/24 via 172.16.1.7 in rtb-a: route table full (0/0 routes)"
            )
        );
        assert_eq!(vpc.calls("CreateRoutes"), 0, "nothing sent that must fail");
        vpc.s().limit = 50;
        let s = a
            .reconcile(&own, &none, Trigger::Resync { fresh: true })
            .await
            .unwrap();
        assert!(s.ready, "the blocked create re-read the limit: {s:?}");
        assert_eq!(vpc.calls("DescribeVpcLimits"), 2);
    }

    #[tokio::test]
    async fn with_fallback_a_node_beyond_the_quota_is_reached_over_vxlan() {
        // Room for 2 routes of ours per table; 3 leases: the highest subnet goes to vxlan.
        let vpc = Arc::new(FakeVpc::new(2));
        let kernel = Arc::new(FakeKernel::with_link("eth0", 2, 1500));
        let (ext, facts) = node(9, "subnet-a");
        let network = flannel_core::config::parse_and_check(
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"tencent-vpc","Fallback":"vxlan"}}"#,
        )
        .unwrap();
        let vxlan = VxlanBackend::reaching(
            ext.clone(),
            &network,
            &VxlanConfig::default(),
            kernel.clone(),
            BackendKind::TencentVpc,
            Default::default(),
        )
        .await
        .unwrap();
        let a = agent(ext, facts, true, &vpc).with_fallback(Fallback::new(vxlan));
        let own = lease(9, "subnet-a", true);
        let peers = [lease(1, "subnet-a", true), lease(2, "subnet-a", true)];
        let s = a
            .reconcile(&own, &PeerView::unchecked(&peers), Trigger::Start)
            .await
            .unwrap();
        assert!(
            s.ready,
            "on the vxlan side, ready with its device up: {s:?}"
        );
        assert_eq!(a.mtu(), 1450);
        assert_eq!(
            vpc.calls("CreateRoutes"),
            0,
            "its own route does not fit: not sent"
        );
        // The peers' routes are not in the tables yet (their agents write them): they are
        // reached over vxlan until they are.
        let routes: Vec<String> = kernel.routes().iter().map(|r| r.dst.to_string()).collect();
        assert_eq!(routes, ["10.244.1.0/24", "10.244.2.0/24"]);
        assert!(kernel.s().path_gaps.is_empty());
    }
}
