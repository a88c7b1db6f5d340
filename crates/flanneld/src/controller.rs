//! `flanneld --controller` (a flannel-rs addition): the one elected writer of tencent-vpc
//! routes in controller mode. It holds no lease and programs no kernel state; it stands for
//! election in the lease store, and while it leads it routes every lease in batches (events
//! are gathered for [`BATCH_WINDOW`] so a thousand joins cost a handful of calls), repairs
//! drift at each resync, collects garbage with the guards of `gc`, and publishes which
//! leases are routed for the credential-less agents ([`RouteStatus`]).

use crate::backend::tencent_vpc::gc::LeaseView;
use crate::backend::tencent_vpc::plan::{Scope, Wanted};
use crate::backend::tencent_vpc::reconcile::{Reconciler, SplitRequest, Target};
use crate::backend::tencent_vpc::TencentVpcError;
use crate::backend::tencent_vpc::{self as tvpc, RouteStatus};
use crate::backend::BackendError;
use crate::health::Health;
use crate::lease_feed::{FeedEvent, LeaseFeed};
use crate::subnet::election::LeaderSeat;
use crate::subnet::{SubnetError, SubnetManager};
use backoff::Backoff;
use flannel_core::admission::{PeerView, Rules};
use flannel_core::backend_config::{BackendConfig, TencentVpcConfig};
use flannel_core::lease::SubnetKey;
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

/// Lease events gathered into one reconcile.
pub const BATCH_WINDOW: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Subnet(#[from] SubnetError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    TencentVpc(#[from] TencentVpcError),
    #[error("--controller routes tencent-vpc leases, but Backend.Type is {0}")]
    NotTencentVpc(String),
    #[error("--controller: tencent-vpc routes IPv4 pod subnets only (set EnableIPv6 to false)")]
    Ipv6,
    #[error("--controller: no VPC: set Backend.VpcId (the metadata service did not say)")]
    NoVpc,
}

/// The controller's name in the leader election: the pod's name in Kubernetes (unique; on
/// the host network HOSTNAME is the node's, the same for replicas sharing a node's name
/// space), else HOSTNAME, else one made of the process id.
pub fn identity(env: &dyn Fn(&str) -> Option<String>) -> String {
    ["POD_NAME", "HOSTNAME"]
        .into_iter()
        .find_map(|k| env(k).filter(|v| !v.is_empty()))
        .unwrap_or_else(|| format!("controller-{}", std::process::id()))
}

/// What the controller needs besides the store.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// This candidate's name in the election (host name, pod name).
    pub identity: String,
}

/// Run until `shutdown` completes or a fatal error happens.
pub async fn run(
    opts: ControllerOptions,
    sm: Arc<dyn SubnetManager>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ControllerError> {
    let mut shutdown = Box::pin(shutdown);
    let Some(config) = crate::daemon::network_config(sm.as_ref(), &mut shutdown).await? else {
        return Ok(());
    };
    let backend = BackendConfig::parse(&config.backend_type, config.backend.as_ref())
        .map_err(BackendError::from)?;
    let BackendConfig::TencentVpc(cfg) = backend else {
        return Err(ControllerError::NotTencentVpc(config.backend_type.clone()));
    };
    let network = match (config.ipv4, config.ipv6) {
        (Some(p), None) => p.network,
        _ => return Err(ControllerError::Ipv6),
    };
    let controller = Controller::connect(&cfg, network, &health).await?;
    let seat = LeaderSeat::stand(sm.leader_election(
        &format!(
            "tencent-vpc-controller-{}",
            controller.reconciler.owner().cluster
        ),
        &opts.identity,
    ));
    // Leases enter through the gate as on a node: a refused lease never becomes a route.
    let rules = Rules::new(&config, sm.allocation()).with_vpc_cidrs(controller.vpc_cidrs.clone());
    let feed = LeaseFeed::new(Arc::clone(&sm), rules, None, &health.metrics);
    health.set_ready(true);
    controller.run(sm, feed, &seat, &mut shutdown).await
}

/// What the controller last published, and since when each lease is on the vxlan side.
#[derive(Debug, Default)]
struct Published {
    status: Option<RouteStatus>,
    fallback_since: BTreeMap<Ipv4Net, Instant>,
}

impl Published {
    fn record(&mut self, status: RouteStatus, now: Instant) {
        self.fallback_since
            .retain(|dest, _| status.fallback.contains(dest));
        for dest in &status.fallback {
            self.fallback_since.entry(*dest).or_insert(now);
        }
        self.status = Some(status);
    }

    /// The leases published on the vxlan side at least `grace` before `now`: their routes
    /// may go.
    fn evictable(&self, now: Instant, grace: Duration) -> BTreeSet<Ipv4Net> {
        self.fallback_since
            .iter()
            .filter(|(_, since)| **since + grace <= now)
            .map(|(dest, _)| *dest)
            .collect()
    }
}

struct Controller {
    reconciler: Reconciler,
    resync: Duration,
    metrics: crate::metrics::VpcMetrics,
    /// With Fallback: the entries per table kept free (`ReservedRoutes`).
    fallback_reserved: Option<usize>,
    /// The VPC's CIDRs: a lease's PrivateIP must lie inside one (empty: not known).
    vpc_cidrs: Vec<Ipv4Net>,
}

/// With Fallback, how long a lease the split moved to vxlan keeps its VPC routes after it
/// was first published on the vxlan side: two resyncs, so that every agent (which reads the
/// status at its own resync) has its vxlan entries before the route goes.
fn eviction_grace(resync: Duration) -> Duration {
    resync * 2
}

/// After a reconcile: whether a sooner one can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Everything wanted is in place, or what is missing waits for something a retry does
    /// not change (a full table, a conflict, a route the API refused): next at the resync,
    /// or at a lease change.
    Resync,
    /// The tables changed behind our back, or a lease is placed nowhere yet: again soon,
    /// with backoff.
    Retry,
}

/// How long to wait for leadership to be certain again when it is held but its deadline
/// passed (a late renewal).
const LEADERSHIP_RECHECK: Duration = Duration::from_secs(1);

/// Far enough to mean "not until something else happens".
const FAR: Duration = Duration::from_secs(365 * 24 * 3600);

impl Controller {
    async fn connect(
        cfg: &TencentVpcConfig,
        network: Ipv4Net,
        health: &Health,
    ) -> Result<Controller, ControllerError> {
        let env = |k: &str| std::env::var(k).ok();
        let cloud = crate::cloud::connect(tvpc::cloud_setup(cfg, &health.metrics.vpc), &env)
            .await
            .map_err(TencentVpcError::CloudSetup)?;
        let vpc_id = tvpc::resolve_vpc(cfg, &cloud.metadata)
            .await
            .ok_or(ControllerError::NoVpc)?;
        let vpc_cidrs = tvpc::vpc_cidrs(&cloud.client, &vpc_id).await;
        let settings = tvpc::Settings::from_config(cfg, network, vpc_id);
        info!(vpc = %settings.vpc_id, vpc_cidrs = ?vpc_cidrs, cluster = %settings.owner.cluster, region = %cloud.region, credentials = ?cloud.client, "tencent-vpc controller");
        Ok(Controller::with(
            Arc::new(cloud.client),
            settings,
            health.metrics.vpc.clone(),
            vpc_cidrs,
        ))
    }

    /// A controller writing through `cloud`.
    fn with(
        cloud: Arc<dyn tvpc::cloud::VpcRoutes>,
        settings: tvpc::Settings,
        metrics: crate::metrics::VpcMetrics,
        vpc_cidrs: Vec<Ipv4Net>,
    ) -> Controller {
        Controller {
            resync: settings.resync,
            metrics: metrics.clone(),
            fallback_reserved: settings.fallback.then_some(settings.reserved),
            vpc_cidrs: vpc_cidrs.iter().map(|c| c.trunc()).collect(),
            reconciler: Reconciler::new(cloud, settings, metrics),
        }
    }

    async fn run(
        &self,
        sm: Arc<dyn SubnetManager>,
        mut feed: LeaseFeed,
        seat: &LeaderSeat,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<(), ControllerError> {
        let record = RouteStatus::record_name(&self.reconciler.owner().cluster);
        let mut leading = seat.watch();
        let mut published = Published::default();
        let mut unroutable: BTreeSet<SubnetKey> = BTreeSet::new();
        // A reconcile is due at `due` (None: nothing pending until the resync).
        let mut due: Option<Instant> = None;
        let mut resync_at = Instant::now();
        let mut retry = Backoff::new(Duration::from_secs(1), self.resync).delays();
        loop {
            let leader = *leading.borrow();
            let wake = match (leader, due) {
                (true, Some(d)) => d.min(resync_at),
                (true, None) => resync_at,
                (false, _) => crate::after(FAR),
            };
            tokio::select! {
                _ = &mut *shutdown => {
                    info!("shutting down");
                    return Ok(());
                }
                changed = leading.changed() => {
                    if changed.is_err() {
                        // The seat's task is gone (never while the seat lives).
                        return Ok(());
                    }
                    if *leading.borrow_and_update() {
                        info!("leading: routing every lease");
                        due = Some(Instant::now());
                        published = Published::default();
                    } else {
                        info!("no longer leading");
                    }
                }
                event = feed.next() => match event {
                    FeedEvent::Peers { .. } => {
                        if due.is_none() {
                            due = Some(crate::after(BATCH_WINDOW));
                        }
                    }
                    FeedEvent::Fresh | FeedEvent::OwnLost(_) => {}
                    FeedEvent::Failed(e) => {
                        warn!(error = %crate::report(&e), "lease store failed; watching again from a fresh snapshot");
                        feed.restart();
                    }
                },
                _ = tokio::time::sleep_until(wake) => {
                    if !seat.is_leader() {
                        // Held but not certain (a late renewal): look again shortly.
                        due = Some(crate::after(LEADERSHIP_RECHECK));
                        continue;
                    }
                    let full = Instant::now() >= resync_at;
                    // Every reconcile reads the tables: the collector looks each time (its
                    // guards count looks and the time between them, not resyncs).
                    let fresh = Some(feed.is_fresh());
                    let span = tracing::info_span!("reconcile", backend = "tencent-vpc", trigger = if full { "resync" } else { "leases" }, leases = feed.peers().len());
                    let r = self
                        .reconcile_all(&feed.peers(), fresh, &mut unroutable, sm.as_ref(), &record, &mut published)
                        .instrument(span)
                        .await;
                    due = match r {
                        Ok(Next::Resync) => {
                            retry.reset();
                            None
                        }
                        Ok(Next::Retry) => Some(crate::after(retry.next_delay())),
                        Err(e) => {
                            let wait = retry.next_delay();
                            warn!(error = %crate::report(&e), retry_in = ?wait, "reconcile failed");
                            Some(crate::after(wait))
                        }
                    };
                    if full {
                        // Forward whatever the outcome: a failed resync is retried through
                        // `due`, with backoff, never in a loop.
                        resync_at = crate::after(backoff::spread(self.resync, 0.1));
                    }
                }
            }
        }
    }

    /// Route every lease; publish what is routed.
    async fn reconcile_all(
        &self,
        leases: &PeerView<'_>,
        fresh: Option<bool>,
        unroutable: &mut BTreeSet<SubnetKey>,
        sm: &dyn SubnetManager,
        record: &str,
        published: &mut Published,
    ) -> Result<Next, ControllerError> {
        let mut wanted = Vec::new();
        for l in leases.iter() {
            match tvpc::route_of(l) {
                Some(w) => wanted.push(w),
                None => {
                    if unroutable.insert(l.key) {
                        warn!(subnet = %l.key, backend = %l.attrs.backend_type, "lease carries no tencent-vpc PrivateIP: not routed");
                    }
                }
            }
        }
        let leased = tvpc::leased_subnets(leases.iter());
        let holders = tvpc::lease_holders(leases, None);
        let node_subnets: BTreeSet<String> = leases.iter().filter_map(tvpc::subnet_of).collect();
        let evict = published.evictable(Instant::now(), eviction_grace(self.resync));
        let outcome = self
            .reconciler
            .reconcile(&Target {
                wanted: &wanted,
                leased: &leased,
                node_subnets: &node_subnets,
                scope: Scope::Cluster,
                gc: fresh.map(|fresh| LeaseView {
                    leased: &leased,
                    holders: &holders,
                    fresh,
                }),
                split: self.fallback_reserved.map(|reserved| SplitRequest {
                    leases: &wanted,
                    reserved,
                    evict: &evict,
                }),
            })
            .await?;
        if let Some(s) = &outcome.split {
            self.metrics.record_split(s);
        }
        let status = RouteStatus {
            routes: wanted
                .iter()
                .filter(|w| outcome.routed(w.dest))
                .map(|w: &Wanted| (w.dest, w.next_hop))
                .collect::<BTreeMap<_, _>>(),
            fallback: outcome
                .split
                .as_ref()
                .map(|s| s.fallback.clone())
                .unwrap_or_default(),
            unrouted: outcome.unrouted.clone(),
        };
        // A lease neither routed, nor on the vxlan side, nor explained waits for something
        // a sooner read may show; explained ones wait for the resync.
        let waiting = wanted.iter().any(|w| {
            !status.routes.contains_key(&w.dest)
                && !status.fallback.contains(&w.dest)
                && !status.unrouted.contains_key(&w.dest)
        });
        if published.status.as_ref() != Some(&status) {
            let value = serde_json::to_string(&status).expect("a status serialises");
            sm.put_record(record, &value).await?;
            debug!(
                routed = status.routes.len(),
                fallback = status.fallback.len(),
                unrouted = status.unrouted.len(),
                wanted = wanted.len(),
                "published the route status"
            );
            published.record(status, Instant::now());
        }
        if let Some(e) = outcome.errors.into_iter().next() {
            return Err(e.into());
        }
        Ok(if outcome.refresh || waiting {
            Next::Retry
        } else {
            Next::Resync
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_election_identity_is_the_pods_name_before_the_host_name() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        // Two replicas on the host network share HOSTNAME; their pod names differ.
        assert_eq!(
            identity(&env(&[("POD_NAME", "ctl-abc"), ("HOSTNAME", "vm")])),
            "ctl-abc"
        );
        assert_eq!(
            identity(&env(&[("POD_NAME", ""), ("HOSTNAME", "vm")])),
            "vm"
        );
        assert!(identity(&env(&[])).starts_with("controller-"));
    }

    fn status(routes: &[u8], fallback: &[u8]) -> RouteStatus {
        let net = |i: &u8| format!("10.244.{i}.0/24").parse::<Ipv4Net>().unwrap();
        RouteStatus {
            routes: routes
                .iter()
                .map(|i| (net(i), format!("172.16.0.{i}").parse().unwrap()))
                .collect(),
            fallback: fallback.iter().map(net).collect(),
            unrouted: BTreeMap::new(),
        }
    }

    #[test]
    fn a_demoted_route_goes_only_after_the_agents_had_two_resyncs_to_add_vxlan_entries() {
        let resync = Duration::from_secs(10);
        let grace = eviction_grace(resync);
        let t0 = Instant::now();
        let mut p = Published::default();
        p.record(status(&[1, 2, 3], &[]), t0);
        assert!(p.evictable(t0 + grace * 10, grace).is_empty());
        // A lowered limit moves 10.244.3.0/24 to vxlan while its route is still there.
        p.record(status(&[1, 2, 3], &[3]), t0 + resync);
        let three: BTreeSet<Ipv4Net> = ["10.244.3.0/24".parse().unwrap()].into();
        assert!(p
            .evictable(t0 + resync + grace - Duration::from_millis(1), grace)
            .is_empty());
        assert_eq!(p.evictable(t0 + resync + grace, grace), three);
        // Republishing does not restart its clock; a newcomer on the vxlan side starts its own.
        p.record(status(&[1, 2], &[3, 4]), t0 + resync * 2);
        assert_eq!(p.evictable(t0 + resync + grace, grace), three);
        // Back on the routed side: forgotten.
        p.record(status(&[1, 2, 3], &[4]), t0 + resync * 3);
        assert!(p
            .fallback_since
            .keys()
            .all(|d| d.to_string() == "10.244.4.0/24"));
    }

    #[tokio::test]
    async fn every_admitted_lease_is_routed_a_refused_one_isolated_and_its_reason_published() {
        use crate::backend::tencent_vpc::cloud::fake::FakeVpc;
        use crate::subnet::memory::MemoryManager;
        use flannel_core::lease::{Expiry, Lease, LeaseAttrs, SubnetKey};

        let vpc = Arc::new(FakeVpc::new(50));
        vpc.s().refused_next_hops.insert("172.16.1.99".into());
        let settings = tvpc::Settings::for_tests(false);
        let c = Controller::with(
            vpc.clone(),
            settings,
            crate::metrics::Metrics::default().vpc,
            vec![],
        );
        let lease = |i: u8, ip: &str| {
            let mut attrs = LeaseAttrs::new(ip.parse().unwrap());
            attrs.backend_type = "tencent-vpc".into();
            let subnet = if i.is_multiple_of(2) {
                "subnet-a"
            } else {
                "subnet-b"
            };
            attrs.backend_data = Some(serde_json::json!({"PrivateIP": ip, "SubnetId": subnet}));
            Lease {
                key: SubnetKey::v4(format!("10.244.{i}.0/24").parse().unwrap()),
                attrs,
                expiry: Expiry::Never,
            }
        };
        let mut leases: Vec<Lease> = (1..=7)
            .map(|i| lease(i, &format!("172.16.1.{i}")))
            .collect();
        leases.push(lease(8, "172.16.1.99"));
        let sm = MemoryManager::new(
            flannel_core::config::parse_and_check(
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"tencent-vpc"}}"#,
            )
            .unwrap(),
        );
        let mut published = Published::default();
        let next = c
            .reconcile_all(
                &PeerView::unchecked(&leases),
                Some(true),
                &mut BTreeSet::new(),
                &sm,
                "status",
                &mut published,
            )
            .await
            .unwrap();
        assert_eq!(next, Next::Resync, "nothing a sooner retry changes");
        let status: RouteStatus =
            serde_json::from_str(&sm.get_record("status").await.unwrap().unwrap()).unwrap();
        assert_eq!(status.routes.len(), 7);
        let why = &status.unrouted[&"10.244.8.0/24".parse::<Ipv4Net>().unwrap()];
        assert!(
            why.contains("InvalidParameterValue.RouteNextHopInvalid"),
            "{why}"
        );
        for t in ["rtb-a", "rtb-b"] {
            assert_eq!(vpc.routes(t).len(), 7, "{t}");
        }
        // Halving 8 routes down to the refused one: 1 + 2 + 2 + 2 calls per table at most.
        assert!(
            vpc.calls("CreateRoutes") <= 14,
            "{}",
            vpc.calls("CreateRoutes")
        );
        // At the next resync only the refused route is tried again: one call per table.
        let before = vpc.calls("CreateRoutes");
        c.reconcile_all(
            &PeerView::unchecked(&leases),
            Some(true),
            &mut BTreeSet::new(),
            &sm,
            "status",
            &mut published,
        )
        .await
        .unwrap();
        assert_eq!(vpc.calls("CreateRoutes") - before, 2);
    }

    #[test]
    fn route_status_record_golden() {
        // Without Fallback the record is what earlier versions wrote (and read).
        assert_eq!(
            serde_json::to_string(&status(&[1], &[])).unwrap(),
            r#"{"Routes":{"10.244.1.0/24":"172.16.0.1"}}"#
        );
        let both = status(&[1], &[2]);
        let text = serde_json::to_string(&both).unwrap();
        assert_eq!(
            text,
            r#"{"Routes":{"10.244.1.0/24":"172.16.0.1"},"Fallback":["10.244.2.0/24"]}"#
        );
        assert_eq!(serde_json::from_str::<RouteStatus>(&text).unwrap(), both);
        let old: RouteStatus =
            serde_json::from_str(r#"{"Routes":{"10.244.1.0/24":"172.16.0.1"}}"#).unwrap();
        assert!(old.fallback.is_empty());
    }
}
