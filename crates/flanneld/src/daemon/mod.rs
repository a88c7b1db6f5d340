//! The node agent. Start-up in upstream's order (`main.go`): network config (retried while
//! the store is unreachable), interface, backend, lease, the first reconcile, traffic rules,
//! subnet.env (then ready once the backend's data plane is in place); one difference: the
//! lease feed's first snapshot comes before the first reconcile, so the backend starts
//! knowing its peers. Then an event loop: each [`Event`] (lease changes from the feed, the
//! jittered resync tick, kernel changes that may have removed part of a kernel data plane,
//! the traffic rules check, lease renewal, shutdown) goes to one
//! handler that says [`Control::Continue`] or [`Control::Exit`]; [`run`] is the one place
//! the daemon stops and turns not ready.

use crate::backend::{Backend, BackendContext, BackendError, BackendFactory, Status, Trigger};
use crate::health::Health;
use crate::iface::{self, ExternalInterface, IfaceError, Selection};
use crate::kernel::monitor::KernelChanges;
use crate::kernel::Platform;
use crate::lease_feed::{FeedEvent, LeaseFeed, OwnLoss};
use crate::metrics::EventLabels;
use crate::subnet::{AcquireRequest, SubnetError, SubnetManager};
use crate::subnet_file;
use crate::traffic::{Traffic, TrafficError, TrafficOptions};
use backoff::Backoff;
use flannel_core::admission::Rules;
use flannel_core::lease::{Expiry, Lease};
use flannel_core::subnet_env::{self, SubnetEnv};
use flannel_core::ValidatedNetConfig;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tracing::{debug, error, info, warn, Instrument};

mod data_path;
mod readiness;
mod telemetry;
mod timing;

use data_path::DataPath;

use telemetry::{reconcile_span, record_lease, record_sync};
use timing::{
    jittered, next_change, renew_delay, KERNEL_REPAIR_DEBOUNCE, KERNEL_REPAIR_GAP, RENEW_RETRY,
};

/// What the daemon needs from the command line.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub subnet_file: PathBuf,
    pub ifaces: Vec<String>,
    pub iface_regexes: Vec<String>,
    pub iface_can_reach: Option<IpAddr>,
    pub public_ip: Option<std::net::Ipv4Addr>,
    pub public_ipv6: Option<std::net::Ipv6Addr>,
    pub renew_margin: Duration,
    pub resync_period: Duration,
    /// Masquerade, forward rules and the blackhole route (none by default).
    pub traffic: TrafficOptions,
    /// `--iptables-resync`: how often they are checked.
    pub traffic_resync: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Subnet(#[from] SubnetError),
    #[error(transparent)]
    Iface(#[from] IfaceError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Traffic(#[from] TrafficError),
    #[error("Lease has been revoked. Shutting down daemon.")]
    LeaseRevoked,
}

/// How the daemon ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A shutdown was requested (signal).
    Shutdown,
}

/// Wait for `f` unless `shutdown` completes first.
async fn or_shutdown<T>(
    f: impl Future<Output = T>,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Option<T> {
    tokio::select! {
        v = f => Some(v),
        _ = shutdown => None,
    }
}

/// Sleep for `d`; false when `shutdown` completed first.
async fn pause(d: Duration, shutdown: &mut (impl Future<Output = ()> + Unpin)) -> bool {
    or_shutdown(tokio::time::sleep(d), shutdown).await.is_some()
}

/// Retry pacing of the daemon's loops (see the `backoff` crate: capped doubling, jittered).
const CONFIG_RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
const ACQUIRE_RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
/// How long activation waits for the lease watch's first snapshot.
const FIRST_SNAPSHOT_WAIT: Duration = Duration::from_secs(10);

fn subnet_env(config: &ValidatedNetConfig, lease: &Lease, mtu: u32, ip_masq: bool) -> SubnetEnv {
    SubnetEnv {
        ipv4: config.network().zip(lease.subnet()),
        ipv6: config.ipv6_network().zip(lease.ipv6_subnet()),
        mtu,
        ip_masq,
    }
}

/// The network config, retried with backoff while the store is unreachable (a bad config is
/// an error); None when `shutdown` completed first. The daemon and the controller start so.
pub(crate) async fn network_config(
    sm: &dyn SubnetManager,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Option<ValidatedNetConfig>, SubnetError> {
    let mut pauses = CONFIG_RETRY.delays();
    loop {
        match or_shutdown(sm.network_config(), shutdown).await {
            None => return Ok(None),
            Some(Ok(c)) => return Ok(Some(c)),
            Some(Err(e)) if e.is_retryable() => {
                let wait = pauses.next_delay();
                warn!(error = %crate::report(&e), retry_in = ?wait, "failed to retrieve network config");
                if !pause(wait, shutdown).await {
                    return Ok(None);
                }
            }
            Some(Err(e)) => return Err(e),
        }
    }
}

/// Run until `shutdown` completes or a fatal error happens.
pub async fn run(
    cfg: DaemonConfig,
    sm: Arc<dyn SubnetManager>,
    backends: &dyn BackendFactory,
    platform: &dyn Platform,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> Result<Exit, DaemonError> {
    let mut shutdown = Box::pin(shutdown);
    let mut node = match Node::start(cfg, sm, backends, platform, health, &mut shutdown).await? {
        Some(node) => node,
        None => return Ok(Exit::Shutdown),
    };
    loop {
        let event = node.next_event(&mut shutdown).await;
        if let Control::Exit(result) = node.handle(event).await {
            // The one place the daemon stops: not ready from here on.
            node.health.set_ready(false);
            node.backend.stop().await;
            match &result {
                Ok(Exit::Shutdown) => info!("shutting down"),
                Err(DaemonError::LeaseRevoked) => {
                    error!(subnet = %node.own.key, "Lease has been revoked. Shutting down daemon.")
                }
                Err(e) => {
                    error!(subnet = %node.own.key, error = %crate::report(e), "lease lost. Shutting down daemon.")
                }
            }
            return result;
        }
    }
}

/// What wakes the daemon.
#[derive(Debug)]
enum Event {
    Shutdown,
    Feed(FeedEvent),
    Resync,
    /// The kernel said part of the data plane may be gone.
    KernelChanged,
    /// The kernel's notifications ended (the periodic resync still repairs).
    KernelWatchEnded,
    TrafficCheck,
    Renew,
    /// The readiness probe's state changed (None: it ended without a verdict).
    Probe(Option<crate::probe::ProbeState>),
}

/// What the daemon does after an event.
#[derive(Debug)]
enum Control {
    Continue,
    Exit(Result<Exit, DaemonError>),
}

/// A node with its lease: everything the loop works on.
struct Node {
    cfg: DaemonConfig,
    sm: Arc<dyn SubnetManager>,
    health: Arc<Health>,
    backend: Box<dyn Backend>,
    own: Lease,
    feed: LeaseFeed,
    traffic: Option<Traffic>,
    env: SubnetEnv,
    /// The backend's data plane is in place (as of its last status).
    backend_ready: bool,
    /// Why not, in the backend's words.
    problem: Option<String>,
    /// The backend has something pending (or failed): reconcile again soon.
    last_pending: bool,
    resync_period: Duration,
    resync_pauses: backoff::Delays<rand::rngs::StdRng>,
    resync_at: Instant,
    /// When the last resync started (kernel changes bring the next one no closer than
    /// [`KERNEL_REPAIR_GAP`] after it).
    last_resync: Instant,
    /// Kernel change notifications, for backends whose data plane is the kernel's.
    kernel_changes: Option<KernelChanges>,
    traffic_at: Instant,
    /// What the subnet manager was last told about readiness.
    reported: Option<(bool, Option<String>)>,
    /// The closed-loop readiness probe (the node is ready only once it is answered).
    data_path: DataPath,
    prober: Arc<dyn crate::probe::Prober>,
    /// The probe's source address (the lease's; None when the backend has no probe), held
    /// on `lo` at start and every resync.
    probe_source: Option<std::net::Ipv4Addr>,
}

impl Node {
    /// Config, interface, backend, lease, the first snapshot of the peers, the first
    /// reconcile, the traffic rules, subnet.env. None when `shutdown` came first.
    async fn start(
        cfg: DaemonConfig,
        sm: Arc<dyn SubnetManager>,
        backends: &dyn BackendFactory,
        platform: &dyn Platform,
        health: Arc<Health>,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<Option<Node>, DaemonError> {
        // 1. Network config, retried while the store is unreachable; a bad config is fatal.
        let Some(config) = network_config(sm.as_ref(), shutdown).await? else {
            return Ok(None);
        };
        info!(backend = %config.backend_type, network = ?config.network().map(|n| n.to_string()), ipv6_network = ?config.ipv6_network().map(|n| n.to_string()), "network config");

        // 2. Interface.
        let ext: ExternalInterface = iface::select(
            &Selection {
                ifaces: cfg.ifaces.clone(),
                regexes: cfg.iface_regexes.clone(),
                can_reach: cfg.iface_can_reach,
                public_ip: cfg.public_ip,
                public_ipv6: cfg.public_ipv6,
                ipv4: config.enable_ipv4(),
                ipv6: config.enable_ipv6(),
            },
            platform,
        )?;
        info!(iface = %ext.name, iface_addr = ?ext.iface_addr, ext_addr = ?ext.ext_addr, mtu = ext.mtu, "using interface");

        // 3. Backend (before the lease, so a bad or unsupported backend leaves no lease behind).
        let backend_config = crate::backend::Builtin::check(&config)?;
        // (tencent-vpc may wait here for its turn at the cloud API: a signal ends the wait.)
        let ctx = BackendContext {
            config: &backend_config,
            network: &config,
            ext: &ext,
            metrics: &health.metrics,
            store: Arc::clone(&sm),
        };
        let build = backends.build(&ctx);
        let Some(backend) = or_shutdown(build, shutdown).await else {
            return Ok(None);
        };
        let backend: Box<dyn Backend> = backend?;
        let resync_period = backend.resync_period().unwrap_or(cfg.resync_period);

        // 4. Lease.
        let previous = subnet_file::read_previous(&cfg.subnet_file);
        let req = AcquireRequest {
            attrs: backend.lease_attrs().await?,
            previous: subnet_env::previous_subnet(&previous),
            previous_ipv6: subnet_env::previous_ipv6_subnet(&previous),
        };
        let mut pauses = ACQUIRE_RETRY.delays();
        let own = loop {
            match or_shutdown(sm.acquire_lease(&req), shutdown).await {
                None => return Ok(None),
                Some(Ok(l)) => break l,
                // The store is unreachable or busy: wait and try again (a restart would not help).
                Some(Err(e)) if e.is_retryable() => {
                    let wait = pauses.next_delay();
                    warn!(error = %crate::report(&e), retry_in = ?wait, "failed to acquire a lease");
                    if !pause(wait, shutdown).await {
                        return Ok(None);
                    }
                }
                Some(Err(e)) => return Err(e.into()),
            }
        };
        info!(subnet = %own.key, reservation = own.is_reservation(), source = sm.name(), "lease acquired");
        record_lease(&health, &own, backend.kind().name());

        // 5. The watch's first snapshot, so the first reconcile knows the peers (one
        // reconcile instead of two); after a while without one, start without peers.
        let rules = Rules::new(&config, sm.allocation());
        let mut feed = LeaseFeed::new(Arc::clone(&sm), rules, Some(own.clone()), &health.metrics);
        match or_shutdown(
            tokio::time::timeout(FIRST_SNAPSHOT_WAIT, feed.next()),
            shutdown,
        )
        .await
        {
            None => return Ok(None),
            Some(Err(_)) => debug!("no lease snapshot yet; starting without peers"),
            Some(Ok(FeedEvent::OwnLost(OwnLoss::Revoked))) => {
                return Err(DaemonError::LeaseRevoked)
            }
            Some(Ok(FeedEvent::OwnLost(OwnLoss::Taken(e)) | FeedEvent::Failed(e))) => {
                return Err(e.into())
            }
            Some(Ok(FeedEvent::Peers { .. } | FeedEvent::Fresh)) => {}
        }

        // 6. The first reconcile (its error is fatal), the traffic rules (before subnet.env,
        // as upstream: a failure is fatal), subnet.env, ready.
        let status = backend
            .reconcile(&own, &feed.peers(), Trigger::Start)
            .await?;
        let traffic = match cfg.traffic.any() {
            true => {
                let t = traffic_for(&cfg.traffic, &config, &own, platform).await?;
                t.ensure().await?;
                Some(t)
            }
            false => None,
        };
        let env = subnet_env(&config, &own, backend.mtu(), cfg.traffic.masquerade);
        // The own lease (and so the probe's source) stays the same for the whole run.
        let probe_source = backend.probe_plan(&own, &feed.peers()).map(|p| p.source);
        let kernel_changes = match backend.repairs_on_kernel_changes() {
            true => platform
                .kernel_changes(crate::backend::host_gw::networks(&config))
                .unwrap_or_else(|e| {
                    warn!(error = %crate::report(&e), "no kernel notifications; repairs wait for the resync");
                    None
                }),
            false => None,
        };
        let now = Instant::now();
        let mut node = Node {
            last_resync: now,
            kernel_changes,
            traffic_at: crate::after(cfg.traffic_resync),
            resync_at: now,
            resync_pauses: Backoff::new(Duration::from_secs(1), resync_period).delays(),
            resync_period,
            cfg,
            sm,
            health,
            backend,
            own,
            feed,
            traffic,
            env,
            backend_ready: false,
            problem: None,
            last_pending: false,
            reported: None,
            data_path: DataPath::NotStarted,
            prober: platform.prober(crate::backend::host_gw::networks(&config)),
            probe_source,
        };
        node.hold_probe_source().await;
        node.take_status(Trigger::Start, Ok(status));
        node.resync_at = match node.pending() {
            false => crate::after(jittered(resync_period)),
            true => crate::after(node.resync_pauses.next_delay()),
        };
        node.report_ready().await;
        Ok(Some(node))
    }

    async fn next_event(&mut self, shutdown: &mut (impl Future<Output = ()> + Unpin)) -> Event {
        let renew_in = renew_delay(&self.own, self.cfg.renew_margin);
        tokio::select! {
            _ = shutdown => Event::Shutdown,
            e = self.feed.next() => Event::Feed(e),
            _ = tokio::time::sleep_until(self.resync_at) => Event::Resync,
            change = next_change(&mut self.kernel_changes), if self.kernel_changes.is_some() => match change {
                Some(()) => Event::KernelChanged,
                None => Event::KernelWatchEnded,
            },
            _ = tokio::time::sleep_until(self.traffic_at), if self.traffic.is_some() => Event::TrafficCheck,
            _ = tokio::time::sleep(renew_in) => Event::Renew,
            state = self.data_path.next(), if self.data_path.probing() => Event::Probe(state),
        }
    }

    async fn handle(&mut self, event: Event) -> Control {
        match event {
            Event::Shutdown => Control::Exit(Ok(Exit::Shutdown)),
            Event::Feed(FeedEvent::Peers { added, removed }) => {
                self.peers_changed(&added, &removed).await;
                Control::Continue
            }
            Event::Feed(FeedEvent::Fresh) => Control::Continue,
            Event::Feed(FeedEvent::OwnLost(OwnLoss::Revoked)) => {
                Control::Exit(Err(DaemonError::LeaseRevoked))
            }
            // The store went backwards, or another node wrote our key: our lease may already
            // be another node's.
            Event::Feed(FeedEvent::OwnLost(OwnLoss::Taken(e)) | FeedEvent::Failed(e)) => {
                Control::Exit(Err(e.into()))
            }
            Event::Resync => {
                self.resync().await;
                Control::Continue
            }
            Event::KernelChanged => {
                // Debounced: a burst of notifications (a link flap) brings one resync, and
                // never sooner than KERNEL_REPAIR_GAP after the last one.
                let at = (Instant::now() + KERNEL_REPAIR_DEBOUNCE)
                    .max(self.last_resync + KERNEL_REPAIR_GAP);
                self.resync_at = self.resync_at.min(at);
                Control::Continue
            }
            Event::KernelWatchEnded => {
                warn!("kernel notifications ended; repairs wait for the resync");
                self.kernel_changes = None;
                Control::Continue
            }
            Event::TrafficCheck => {
                if let Some(t) = &self.traffic {
                    if let Err(e) = t.ensure().await {
                        warn!(error = %crate::report(&e), "traffic rules check failed; retrying at the next check");
                    }
                }
                self.traffic_at = crate::after(self.cfg.traffic_resync);
                Control::Continue
            }
            Event::Renew => self.renew().await,
            Event::Probe(state) => {
                self.data_path.take(state);
                self.start_probe();
                self.ensure_subnet_env();
                self.report_ready().await;
                Control::Continue
            }
        }
    }

    /// Lease changes: the backend reconciles for them; anything pending brings the resync
    /// forward.
    async fn peers_changed(&mut self, added: &[Lease], removed: &[Lease]) {
        for (event, n) in [("added", added.len()), ("removed", removed.len())] {
            self.health
                .metrics
                .lease_events
                .get_or_create(&EventLabels { event })
                .inc_by(n as u64);
        }
        let trigger = Trigger::Leases { added, removed };
        let r = self
            .backend
            .reconcile(&self.own, &self.feed.peers(), trigger)
            .instrument(reconcile_span(self.backend.as_ref(), trigger))
            .await;
        self.take_status(trigger, r);
        if self.pending() {
            let soon = crate::after(self.resync_pauses.next_delay());
            self.resync_at = self.resync_at.min(soon);
        }
    }

    async fn resync(&mut self) {
        self.last_resync = Instant::now();
        let trigger = Trigger::Resync {
            fresh: self.feed.is_fresh(),
        };
        let r = self
            .backend
            .reconcile(&self.own, &self.feed.peers(), trigger)
            .instrument(reconcile_span(self.backend.as_ref(), trigger))
            .await;
        let failed = r.is_err();
        self.hold_probe_source().await;
        self.take_status(trigger, r);
        self.report_ready().await;
        let wait = if !failed && !self.pending() {
            self.resync_pauses.reset();
            jittered(self.resync_period)
        } else {
            self.resync_pauses.next_delay()
        };
        self.resync_at = crate::after(wait);
    }

    fn pending(&self) -> bool {
        self.last_pending
    }

    /// Take what a reconcile said: an error leaves readiness as it was. Then subnet.env and
    /// readiness.
    fn take_status(&mut self, trigger: Trigger<'_>, r: Result<Status, BackendError>) {
        record_sync(&self.health, &r);
        match r {
            Ok(s) => {
                if let Some(p) = &s.problem {
                    warn!(trigger = trigger.name(), problem = %p, "backend: not everything is in place");
                }
                self.backend_ready = s.ready;
                self.last_pending = s.pending;
                self.problem = s.problem;
                self.start_probe();
            }
            Err(e) => {
                warn!(trigger = trigger.name(), error = %crate::report(&e), "backend reconcile failed; retrying");
                self.last_pending = true;
                self.problem = Some(crate::report(&e));
            }
        }
        self.ensure_subnet_env();
    }

    /// Renew the lease at its expiry minus the margin.
    async fn renew(&mut self) -> Control {
        match self.sm.renew_lease(&self.own).await {
            Ok(l) => {
                info!(subnet = %l.key, "lease renewed");
                record_lease(&self.health, &l, self.backend.kind().name());
                self.own = l;
                if let Some(FeedEvent::Peers { added, removed }) = self.feed.set_own(&self.own) {
                    self.peers_changed(&added, &removed).await;
                }
                Control::Continue
            }
            Err(SubnetError::LeaseNotFound(_)) => Control::Exit(Err(DaemonError::LeaseRevoked)),
            Err(e) if !e.is_retryable() => Control::Exit(Err(e.into())),
            Err(e) => {
                // Upstream waits 1 minute; a short-lived lease (--subnet-lease-ttl) retries
                // several times within its margin.
                let retry = RENEW_RETRY.min(self.cfg.renew_margin / 3);
                warn!(error = %crate::report(&e), retry_in = ?retry, "lease renewal failed, retrying");
                // Push the lease's own deadline forward locally so the retry waits.
                self.own.expiry = Expiry::At(
                    SystemTime::now()
                        .checked_add(self.cfg.renew_margin + retry)
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                );
                Control::Continue
            }
        }
    }
}
/// The rules and blackhole route for this lease, applied with iptables or (EnableNFTables)
/// nftables, `--random-fully` only where the filter has it.
async fn traffic_for(
    options: &TrafficOptions,
    config: &ValidatedNetConfig,
    own: &Lease,
    platform: &dyn Platform,
) -> Result<Traffic, DaemonError> {
    let mut options = options.clone();
    let (filter, random_fully) = platform.packet_filter(config.enable_nftables).await;
    options.random_fully &= random_fully;
    let routes = platform
        .routes(crate::backend::host_gw::networks(config))
        .map_err(TrafficError::from)?;
    Ok(Traffic::new(&options, config, own, filter, routes))
}
