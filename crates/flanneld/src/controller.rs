//! `flanneld --controller` (a flannel-rs addition): the one elected writer of tencent-vpc
//! routes in controller mode. It holds no lease and programs no kernel state; it stands for
//! election in the lease store, and while it leads it routes every lease in batches (events
//! are gathered for [`BATCH_WINDOW`] so a thousand joins cost a handful of calls), repairs
//! drift at each resync, collects garbage with the guards of `gc`, and publishes which
//! leases are routed for the credential-less agents ([`RouteStatus`]).

use crate::backend::tencent_vpc::gc::LeaseView;
use crate::backend::tencent_vpc::plan::{Scope, Wanted};
use crate::backend::tencent_vpc::reconcile::{Reconciler, Target};
use crate::backend::tencent_vpc::{self as tvpc, RouteStatus};
use crate::backend::BackendError;
use crate::health::Health;
use crate::subnet::election::LeaderSeat;
use crate::subnet::{SubnetError, SubnetManager};
use backoff::Backoff;
use flannel_core::backend_config::{BackendConfig, TencentVpcConfig};
use flannel_core::lease::{Lease, SubnetKey};
use flannel_core::watch::LeaseWatcher;
use futures::StreamExt;
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Lease events gathered into one reconcile.
pub const BATCH_WINDOW: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Subnet(#[from] SubnetError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("--controller routes tencent-vpc leases, but Backend.Type is {0}")]
    NotTencentVpc(String),
    #[error("--controller: tencent-vpc routes IPv4 pod subnets only (set EnableIPv6 to false)")]
    Ipv6,
    #[error("--controller: no VPC: set Backend.VpcId (the metadata service did not say)")]
    NoVpc,
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
    health.set_ready(true);
    controller.run(sm, &seat, &mut shutdown).await
}

struct Controller {
    reconciler: Reconciler,
    resync: Duration,
}

impl Controller {
    async fn connect(
        cfg: &TencentVpcConfig,
        network: Ipv4Net,
        health: &Health,
    ) -> Result<Controller, ControllerError> {
        let env = |k: &str| std::env::var(k).ok();
        let cloud = crate::cloud::connect(tvpc::cloud_setup(cfg, &health.metrics.vpc), &env)
            .await
            .map_err(BackendError::CloudSetup)?;
        let vpc_id = tvpc::resolve_vpc(cfg, &cloud.metadata)
            .await
            .ok_or(ControllerError::NoVpc)?;
        let settings = tvpc::Settings::from_config(cfg, network, vpc_id);
        info!(vpc = %settings.vpc_id, cluster = %settings.owner.cluster, region = %cloud.region, credentials = ?cloud.client, "tencent-vpc controller");
        Ok(Controller {
            resync: settings.resync,
            reconciler: Reconciler::new(
                Arc::new(cloud.client),
                settings,
                health.metrics.vpc.clone(),
            ),
        })
    }

    async fn run(
        &self,
        sm: Arc<dyn SubnetManager>,
        seat: &LeaderSeat,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<(), ControllerError> {
        let record = RouteStatus::record_name(&self.reconciler.owner().cluster);
        let mut watcher = LeaseWatcher::new(None);
        let mut stream = None;
        let mut watch_pauses = crate::daemon::WATCH_RETRY.delays();
        let mut published: Option<RouteStatus> = None;
        let mut unroutable: BTreeSet<SubnetKey> = BTreeSet::new();
        // A reconcile is due at `due` (None: nothing pending until the resync).
        let mut due: Option<Instant> = Some(Instant::now());
        let mut resync_at = Instant::now() + backoff::spread(self.resync, 0.1);
        let mut retry = Backoff::new(Duration::from_secs(1), self.resync).delays();
        let mut was_leader = false;
        loop {
            if stream.is_none() {
                match sm.watch_leases().await {
                    Ok(s) => {
                        stream = Some(s);
                        watch_pauses.reset();
                    }
                    Err(e) => {
                        let wait = watch_pauses.next_delay();
                        warn!(error = %crate::report(&e), retry_in = ?wait, "watching leases failed");
                        tokio::select! {
                            _ = &mut *shutdown => return Ok(()),
                            _ = tokio::time::sleep(wait) => continue,
                        }
                    }
                }
            }
            let leader = seat.is_leader();
            if leader && !was_leader {
                info!("leading: routing every lease");
                due = Some(Instant::now());
                published = None;
            }
            was_leader = leader;
            // Standing by, look again soon (leadership may arrive at any moment).
            let next_look = Instant::now() + Duration::from_millis(200);
            let wake = match (leader, due) {
                (true, Some(d)) => d.min(resync_at),
                (true, None) => resync_at,
                (false, _) => next_look,
            };
            let s = stream.as_mut().expect("opened above");
            tokio::select! {
                _ = &mut *shutdown => {
                    info!("shutting down");
                    return Ok(());
                }
                update = s.next() => match update {
                    None => stream = None,
                    Some(Err(e)) => {
                        warn!(error = %crate::report(&e), "lease watch error; reopening");
                        if !e.is_retryable() {
                            // The store went backwards: start from a fresh snapshot.
                            watcher = LeaseWatcher::new(None);
                        }
                        stream = None;
                    }
                    Some(Ok(update)) => {
                        if !watcher.apply(update).is_empty() && due.is_none() {
                            due = Some(Instant::now() + BATCH_WINDOW);
                        }
                    }
                },
                _ = tokio::time::sleep_until(wake) => {
                    if !leader {
                        continue;
                    }
                    let full = Instant::now() >= resync_at;
                    let leases: Vec<Lease> = watcher.peers().cloned().collect();
                    let fresh = full.then_some(stream.is_some());
                    let r = self
                        .reconcile_all(&leases, fresh, &mut unroutable, sm.as_ref(), &record, &mut published)
                        .await;
                    due = None;
                    match r {
                        Ok(true) => {
                            retry.reset();
                            if full {
                                resync_at = Instant::now() + backoff::spread(self.resync, 0.1);
                            }
                        }
                        Ok(false) | Err(_) => {
                            if let Err(e) = &r {
                                warn!(error = %crate::report(e), "reconcile failed");
                            }
                            due = Some(Instant::now() + retry.next_delay());
                        }
                    }
                }
            }
        }
    }

    /// Route every lease; publish what is routed. Ok(true) when everything is in place.
    async fn reconcile_all(
        &self,
        leases: &[Lease],
        fresh: Option<bool>,
        unroutable: &mut BTreeSet<SubnetKey>,
        sm: &dyn SubnetManager,
        record: &str,
        published: &mut Option<RouteStatus>,
    ) -> Result<bool, ControllerError> {
        let mut wanted = Vec::new();
        for l in leases {
            match tvpc::route_of(l) {
                Some(w) => wanted.push(w),
                None => {
                    if unroutable.insert(l.key) {
                        warn!(subnet = %l.key, backend = %l.attrs.backend_type, "lease carries no tencent-vpc PrivateIP: not routed");
                    }
                }
            }
        }
        let leased = tvpc::leased_subnets(leases);
        let node_subnets: BTreeSet<String> = leases.iter().filter_map(tvpc::subnet_of).collect();
        let outcome = self
            .reconciler
            .reconcile(&Target {
                wanted: &wanted,
                leased: &leased,
                node_subnets: &node_subnets,
                scope: Scope::Cluster,
                gc: fresh.map(|fresh| LeaseView {
                    leased: &leased,
                    fresh,
                }),
                split: None,
            })
            .await?;
        let status = RouteStatus {
            routes: wanted
                .iter()
                .filter(|w| outcome.routed(w.dest))
                .map(|w: &Wanted| (w.dest, w.next_hop))
                .collect::<BTreeMap<_, _>>(),
        };
        let complete = status.routes.len() == wanted.len() && !outcome.refresh;
        if published.as_ref() != Some(&status) {
            let value = serde_json::to_string(&status).expect("a status serialises");
            sm.put_record(record, &value).await?;
            debug!(
                routed = status.routes.len(),
                wanted = wanted.len(),
                "published the route status"
            );
            *published = Some(status);
        }
        if let Some(e) = outcome.errors.into_iter().next() {
            return Err(e.into());
        }
        Ok(complete)
    }
}
