//! The node agent's main loop. Order as upstream's `main.go`: network config (retried each
//! second while the store is unreachable), interface, backend, lease, backend activation,
//! subnet.env (then ready once the backend's data plane is in place), then the watch loop;
//! one difference: the watch opens before activation, so the backend starts knowing its
//! peers. The daemon, not the backend, owns the loop: lease events, a jittered resync tick
//! and lease renewal all end up as calls on the backend.

use crate::backend::{Backend, BackendContext, BackendError, BackendFactory};
use crate::health::Health;
use crate::iface::{self, ExternalInterface, HostNetwork, IfaceError, Selection};
use crate::metrics::{EventLabels, LeaseLabels, ResultLabels};
use crate::subnet::{AcquireRequest, SubnetError, SubnetManager};
use crate::subnet_file;
use crate::traffic::{Traffic, TrafficError, TrafficOptions};
use backoff::Backoff;
use flannel_core::backend_config::BackendConfig;
use flannel_core::lease::{Expiry, Lease, LeaseEvent};
use flannel_core::subnet_env::{self, SubnetEnv};
use flannel_core::watch::{LeaseWatcher, WatchUpdate};
use flannel_core::ValidatedNetConfig;
use futures::StreamExt;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::{debug, error, info, warn};

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
pub(crate) const WATCH_RETRY: Backoff =
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
/// How long activation waits for the lease watch's first snapshot.
const FIRST_SNAPSHOT_WAIT: Duration = Duration::from_secs(10);

fn jittered(period: Duration) -> Duration {
    backoff::spread(period, 0.1)
}

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
    host: &dyn HostNetwork,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> Result<Exit, DaemonError> {
    let mut shutdown = Box::pin(shutdown);

    // 1. Network config, retried while the store is unreachable; a bad config is fatal.
    let Some(config) = network_config(sm.as_ref(), &mut shutdown).await? else {
        return Ok(Exit::Shutdown);
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
        host,
    )?;
    info!(iface = %ext.name, iface_addr = ?ext.iface_addr, ext_addr = ?ext.ext_addr, mtu = ext.mtu, "using interface");

    // 3. Backend (before the lease, so a bad or unsupported backend leaves no lease behind).
    let backend_config = BackendConfig::parse(&config.backend_type, config.backend.as_ref())
        .map_err(BackendError::from)?;
    let backend: Box<dyn Backend> = backends
        .build(&BackendContext {
            config: &backend_config,
            network: &config,
            ext: &ext,
            metrics: &health.metrics,
            store: Arc::clone(&sm),
        })
        .await?;
    let resync_period = backend.resync_period().unwrap_or(cfg.resync_period);

    // 4. Lease.
    let previous = subnet_file::read_previous(&cfg.subnet_file);
    let req = AcquireRequest {
        attrs: backend.lease_attrs().await?,
        previous: subnet_env::previous_subnet(&previous),
        previous_ipv6: subnet_env::previous_ipv6_subnet(&previous),
    };
    let mut pauses = ACQUIRE_RETRY.delays();
    let mut own = loop {
        match or_shutdown(sm.acquire_lease(&req), &mut shutdown).await {
            None => return Ok(Exit::Shutdown),
            Some(Ok(l)) => break l,
            // The store is unreachable or busy: wait and try again (a restart would not help).
            Some(Err(e)) if e.is_retryable() => {
                let wait = pauses.next_delay();
                warn!(error = %crate::report(&e), retry_in = ?wait, "failed to acquire a lease");
                if !pause(wait, &mut shutdown).await {
                    return Ok(Exit::Shutdown);
                }
            }
            Some(Err(e)) => return Err(e.into()),
        }
    };
    info!(subnet = %own.key, reservation = own.is_reservation(), "lease acquired");
    record_lease(&health, &own, backend.kind().name());

    // 5. The watch's first snapshot, so the backend is activated knowing its peers (one
    // reconcile instead of two), then backend activation, subnet.env, ready.
    let mut watcher = LeaseWatcher::new(Some(own.key));
    let mut stream = None;
    if let Some(Ok(mut s)) = or_shutdown(sm.watch_leases(), &mut shutdown).await {
        match tokio::time::timeout(FIRST_SNAPSHOT_WAIT, s.next()).await {
            Ok(Some(Ok(update))) => {
                if let Some(lost) = loses(&update, &own) {
                    health.set_ready(false);
                    return Err(lost);
                }
                watcher.apply(update);
                stream = Some(s);
            }
            _ => debug!("no lease snapshot yet; activating without peers"),
        }
    }
    let peers: Vec<Lease> = watcher.peers().cloned().collect();
    backend.activate(&own, &peers).await?;
    // Traffic rules before subnet.env, as upstream: a failure here is fatal.
    let traffic = match cfg.traffic.any() {
        true => {
            let t = traffic_for(&cfg.traffic, &config, &own).await?;
            t.ensure().await?;
            Some(t)
        }
        false => None,
    };
    let env = subnet_env(&config, &own, backend.mtu(), cfg.traffic.masquerade);
    ensure_subnet_env(&cfg, &env, &health, backend.as_ref());

    // 6. The loop. A failed resync, or a backend not in place yet, is retried sooner than
    // the period, with backoff.
    let mut watch_pauses = WATCH_RETRY.delays();
    let mut resync_pauses = Backoff::new(Duration::from_secs(1), resync_period).delays();
    let first = if backend.ready() {
        jittered(resync_period)
    } else {
        resync_pauses.next_delay()
    };
    let mut resync_at = tokio::time::Instant::now() + first;
    let mut traffic_at = tokio::time::Instant::now() + cfg.traffic_resync;
    let mut reported: Option<(bool, Option<String>)> = None;
    report_ready(sm.as_ref(), &health, None, &mut reported).await;
    loop {
        if stream.is_none() {
            match or_shutdown(sm.watch_leases(), &mut shutdown).await {
                None => return Ok(Exit::Shutdown),
                Some(Ok(s)) => {
                    stream = Some(s);
                    watch_pauses.reset();
                }
                Some(Err(e)) if !e.is_retryable() => {
                    error!(subnet = %own.key, error = %crate::report(&e), "lease lost. Shutting down daemon.");
                    health.set_ready(false);
                    return Err(e.into());
                }
                Some(Err(e)) => {
                    let wait = watch_pauses.next_delay();
                    warn!(error = %crate::report(&e), retry_in = ?wait, "watching leases failed");
                    if !pause(wait, &mut shutdown).await {
                        return Ok(Exit::Shutdown);
                    }
                    continue;
                }
            }
        }
        let renew_in = renew_delay(&own, cfg.renew_margin);
        let s = stream.as_mut().expect("opened above");
        tokio::select! {
            _ = &mut shutdown => {
                info!("shutting down");
                health.set_ready(false);
                return Ok(Exit::Shutdown);
            }
            update = s.next() => match update {
                None => {
                    warn!("lease watch ended; reopening");
                    stream = None;
                }
                Some(Err(e)) if e.is_retryable() => {
                    warn!(error = %crate::report(&e), "lease watch error; reopening");
                    stream = None;
                }
                // The store went backwards: our lease may already be another node's.
                Some(Err(e)) => {
                    error!(subnet = %own.key, error = %crate::report(&e), "lease lost. Shutting down daemon.");
                    health.set_ready(false);
                    return Err(e.into());
                }
                Some(Ok(update)) => {
                    if let Some(lost) = loses(&update, &own) {
                        match &lost {
                            DaemonError::LeaseRevoked => error!(subnet = %own.key, "Lease has been revoked. Shutting down daemon."),
                            other => error!(subnet = %own.key, error = %crate::report(other), "lease lost. Shutting down daemon."),
                        }
                        health.set_ready(false);
                        return Err(lost);
                    }
                    let events = watcher.apply(update);
                    health.metrics.peers.set(watcher.peers().count() as i64);
                    if !events.is_empty() {
                        for e in &events {
                            let event = if matches!(e, LeaseEvent::Added(_)) { "added" } else { "removed" };
                            health.metrics.lease_events.get_or_create(&EventLabels { event }).inc();
                            debug!(event, subnet = %e.lease().key, public_ip = %e.lease().attrs.public_ip, "peer lease");
                        }
                        let r = backend.handle(&own, &events).await;
                        record_sync(&health, &r);
                        if let Err(e) = r {
                            warn!(error = %crate::report(&e), "backend failed to apply lease events; the next resync retries");
                        }
                        if !backend.settled().await {
                            resync_at = resync_at.min(tokio::time::Instant::now() + resync_pauses.next_delay());
                        }
                        ensure_subnet_env(&cfg, &env, &health, backend.as_ref());
                    }
                }
            },
            _ = tokio::time::sleep_until(resync_at) => {
                let peers: Vec<Lease> = watcher.peers().cloned().collect();
                let r = backend.resync(&own, &peers, stream.is_some()).await;
                record_sync(&health, &r);
                if let Err(e) = &r {
                    warn!(error = %crate::report(e), "backend resync failed");
                }
                ensure_subnet_env(&cfg, &env, &health, backend.as_ref());
                let problem = r.as_ref().err().map(|e| crate::report(e));
                report_ready(sm.as_ref(), &health, problem, &mut reported).await;
                let wait = if r.is_ok() && backend.ready() && backend.settled().await {
                    resync_pauses.reset();
                    jittered(resync_period)
                } else {
                    resync_pauses.next_delay()
                };
                resync_at = tokio::time::Instant::now() + wait;
            }
            _ = tokio::time::sleep_until(traffic_at), if traffic.is_some() => {
                if let Some(t) = &traffic {
                    if let Err(e) = t.ensure().await {
                        warn!(error = %crate::report(&e), "traffic rules check failed; retrying at the next check");
                    }
                }
                traffic_at = tokio::time::Instant::now() + cfg.traffic_resync;
            }
            _ = tokio::time::sleep(renew_in) => {
                match sm.renew_lease(&own).await {
                    Ok(l) => {
                        info!(subnet = %l.key, "lease renewed");
                        own = l;
                        record_lease(&health, &own, backend.kind().name());
                    }
                    Err(SubnetError::LeaseNotFound(_)) => {
                        error!(subnet = %own.key, "Lease has been revoked. Shutting down daemon.");
                        health.set_ready(false);
                        return Err(DaemonError::LeaseRevoked);
                    }
                    Err(e) if !e.is_retryable() => {
                        error!(subnet = %own.key, error = %crate::report(&e), "lease lost. Shutting down daemon.");
                        health.set_ready(false);
                        return Err(e.into());
                    }
                    Err(e) => {
                        // Upstream waits 1 minute; a short-lived lease (--subnet-lease-ttl)
                        // retries several times within its margin.
                        let retry = RENEW_RETRY.min(cfg.renew_margin / 3);
                        warn!(error = %crate::report(&e), retry_in = ?retry, "lease renewal failed, retrying");
                        // Push the lease's own deadline forward locally so the retry waits.
                        own.expiry = Expiry::At(SystemTime::now() + cfg.renew_margin + retry);
                    }
                }
            }
        }
    }
}

/// The rules and blackhole route for this lease, applied with iptables or (EnableNFTables)
/// nftables, `--random-fully` only where the iptables has it.
async fn traffic_for(
    options: &TrafficOptions,
    config: &ValidatedNetConfig,
    own: &Lease,
) -> Result<Traffic, DaemonError> {
    use crate::kernel::packet_filter::{Iptables, Nftables, PacketFilter};
    let mut options = options.clone();
    let filter: Arc<dyn PacketFilter> = if config.enable_nftables {
        Arc::new(Nftables)
    } else {
        options.random_fully &= Iptables::supports_random_fully().await;
        Arc::new(Iptables)
    };
    let routes = Arc::new(crate::kernel::Netlink::connect().map_err(TrafficError::from)?);
    Ok(Traffic::new(&options, config, own, filter, routes))
}

/// Tell the subnet manager when readiness, or the reason the node is not ready, changed
/// (Kubernetes: the NetworkUnavailable condition and an Event); a failure is logged and
/// retried at the next resync.
async fn report_ready(
    sm: &dyn SubnetManager,
    health: &Health,
    problem: Option<String>,
    reported: &mut Option<(bool, Option<String>)>,
) {
    let ready = health.is_ready();
    let now = (ready, if ready { None } else { problem });
    if reported.as_ref() == Some(&now) {
        return;
    }
    match sm.report_ready(now.0, now.1.as_deref()).await {
        Ok(()) => *reported = Some(now),
        Err(e) => {
            warn!(error = %crate::report(&e), "reporting readiness to the subnet manager failed")
        }
    }
}

/// The pause after a failed lease renewal (upstream's), for a lease with a long margin.
const RENEW_RETRY: Duration = Duration::from_secs(60);

/// Time until the lease should be renewed (expiry minus margin); a reservation never is.
fn renew_delay(own: &Lease, margin: Duration) -> Duration {
    match own.expiry {
        Expiry::Never => Duration::from_secs(365 * 24 * 3600),
        // Renewing tells us the real expiry.
        Expiry::Unknown => Duration::from_secs(60),
        Expiry::At(t) => t
            .checked_sub(margin)
            .and_then(|due| due.duration_since(SystemTime::now()).ok())
            .unwrap_or(Duration::ZERO),
    }
}

/// Our own lease disappeared from the store (revoked), or another node wrote our key.
fn loses(update: &WatchUpdate, own: &Lease) -> Option<DaemonError> {
    let taken = |l: &Lease| {
        (l.attrs.public_ip != own.attrs.public_ip).then(|| {
            DaemonError::Subnet(SubnetError::LeaseTaken {
                subnet: own.key.ipv4,
                holder: l.attrs.public_ip,
            })
        })
    };
    match update {
        WatchUpdate::Events(events) => events.iter().find_map(|e| match e {
            LeaseEvent::Removed(l) if l.key == own.key => Some(DaemonError::LeaseRevoked),
            LeaseEvent::Added(l) if l.key == own.key => taken(l),
            _ => None,
        }),
        WatchUpdate::Snapshot(leases) => match leases.iter().find(|l| l.key == own.key) {
            None => Some(DaemonError::LeaseRevoked),
            Some(l) => taken(l),
        },
    }
}

fn record_lease(health: &Health, own: &Lease, backend: &str) {
    health.metrics.lease.clear();
    health
        .metrics
        .lease
        .get_or_create(&LeaseLabels {
            subnet: own.key.to_string(),
            backend: backend.to_string(),
        })
        .set(1);
    let expiry = match own.expiry {
        Expiry::Never | Expiry::Unknown => 0.0,
        Expiry::At(t) => t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    };
    health.metrics.lease_expiry.set(expiry);
}

fn record_sync<T, E>(health: &Health, r: &Result<T, E>) {
    let result = if r.is_ok() { "ok" } else { "error" };
    health
        .metrics
        .backend_syncs
        .get_or_create(&ResultLabels { result })
        .inc();
}

/// Write subnet.env if it is missing or differs, and mark ready once it is in place and the
/// backend's data plane is. A failed write is logged and retried at the next resync; the
/// node stays not ready.
fn ensure_subnet_env(cfg: &DaemonConfig, env: &SubnetEnv, health: &Health, backend: &dyn Backend) {
    let want = env.render();
    let written = std::fs::read_to_string(&cfg.subnet_file).is_ok_and(|have| have == want)
        || match subnet_file::write_atomic(&cfg.subnet_file, &want) {
            Ok(()) => {
                info!(path = %cfg.subnet_file.display(), "wrote subnet file");
                true
            }
            Err(e) => {
                error!(error = %crate::Report(&e), "subnet file not written; not ready");
                false
            }
        };
    let ready = written && backend.ready();
    if ready != health.is_ready() {
        if ready {
            info!("ready");
        } else if written {
            warn!("not ready: the backend's data plane is not in place yet");
        }
        health.set_ready(ready);
    }
}
