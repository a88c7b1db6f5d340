//! The daemon loop against the in-memory store and a fake host: no root needed.

mod common;

use common::{daemon_config, wait_until_async, FakeHost};
use flannel_core::lease::{Expiry, Lease, LeaseAttrs, SubnetKey};
use flannel_core::ValidatedNetConfig;
use flanneld::daemon::{self, DaemonError, Exit};
use flanneld::health::Health;
use flanneld::subnet::memory::MemoryManager;
use flanneld::subnet::{AcquireRequest, LeaseStream, SubnetError, SubnetManager};
use std::sync::Arc;
use std::time::Duration;

fn manager(config: &str) -> Arc<MemoryManager> {
    Arc::new(MemoryManager::new(
        flannel_core::config::parse_and_check(config).unwrap(),
    ))
}

fn peer(subnet: &str, ip: &str) -> Lease {
    Lease {
        key: SubnetKey::v4(subnet.parse().unwrap()),
        attrs: LeaseAttrs::new(ip.parse().unwrap()),
        expiry: Expiry::Never,
    }
}

#[tokio::test]
async fn writes_subnet_env_becomes_ready_follows_peers_and_stops_when_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let sm = manager(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}"#);
    let health = Arc::new(Health::default());
    let cfg = daemon_config(dir.path());
    let run = tokio::spawn(daemon::run(
        cfg.clone(),
        sm.clone(),
        &flanneld::backend::Builtin,
        &FakeHost("172.16.0.7"),
        health.clone(),
        std::future::pending(),
    ));

    wait_until_async("ready", Duration::from_secs(10), || health.is_ready()).await;
    let own = sm
        .leases()
        .into_iter()
        .next()
        .expect("the daemon acquired a lease");
    assert_eq!(
        own.attrs.to_json(),
        r#"{"PublicIP":"172.16.0.7","PublicIPv6":null,"BackendType":"alloc"}"#
    );
    let env = std::fs::read_to_string(&cfg.subnet_file).unwrap();
    let sn = own.subnet().unwrap();
    assert_eq!(
        env,
        format!(
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET={}/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
            flannel_core::ip::first_host_v4(sn).0
        )
    );

    // A peer joins, then leaves: both events reach the backend loop.
    let p = peer(
        if sn.to_string() == "10.5.9.0/24" {
            "10.5.8.0/24"
        } else {
            "10.5.9.0/24"
        },
        "172.16.0.8",
    );
    sm.put_lease(p.clone());
    let m = health.clone();
    wait_until_async("peer added", Duration::from_secs(10), || {
        m.metrics
            .encode()
            .contains("flannel_lease_events_total{event=\"added\"} 1")
    })
    .await;
    assert!(health.metrics.encode().contains("flannel_peers 1"));
    sm.delete_lease(&p.key);
    wait_until_async("peer removed", Duration::from_secs(10), || {
        m.metrics
            .encode()
            .contains("flannel_lease_events_total{event=\"removed\"} 1")
    })
    .await;

    // Our own lease deleted behind our back: clean shutdown with upstream's message.
    sm.delete_lease(&own.key);
    let result = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap();
    let err = result.unwrap_err();
    assert!(matches!(err, DaemonError::LeaseRevoked));
    assert_eq!(
        err.to_string(),
        "Lease has been revoked. Shutting down daemon."
    );
    assert!(!health.is_ready());
}

#[tokio::test]
async fn restart_keeps_the_subnet_via_subnet_env() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path());
    let config = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}"#;
    let mut subnets = Vec::new();
    for _ in 0..2 {
        // A fresh store each time: only subnet.env carries the subnet across the restart.
        let sm = manager(config);
        let health = Arc::new(Health::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(daemon::run(
            cfg.clone(),
            sm.clone(),
            &flanneld::backend::Builtin,
            &FakeHost("172.16.0.7"),
            health.clone(),
            async {
                let _ = rx.await;
            },
        ));
        wait_until_async("ready", Duration::from_secs(10), || health.is_ready()).await;
        subnets.push(sm.leases()[0].key);
        tx.send(()).unwrap();
        assert_eq!(run.await.unwrap().unwrap(), Exit::Shutdown);
    }
    assert_eq!(subnets[0], subnets[1]);
}

#[tokio::test]
async fn unknown_backend_fails_before_any_lease_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let sm = manager(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"ipip"}}"#);
    let cfg = daemon_config(dir.path());
    let err = daemon::run(
        cfg.clone(),
        sm.clone(),
        &flanneld::backend::Builtin,
        &FakeHost("172.16.0.7"),
        Arc::new(Health::default()),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert_eq!(flanneld::report(&err), "backend type ipip: an upstream flannel backend that flannel-rs does not support; supported: tencent-vpc (alias tx-vpc), host-gw, vxlan, wireguard, udp, extension, alloc");
    assert!(sm.leases().is_empty());
    assert!(!cfg.subnet_file.exists());
}

#[tokio::test]
async fn readyz_503_then_200_acceptance_17() {
    let health = Arc::new(Health::default());
    let (addr, serve) = flanneld::health::bind("127.0.0.1:0".parse().unwrap(), health.clone())
        .await
        .unwrap();
    tokio::spawn(serve);
    let get = |path: &'static str| {
        tokio::task::spawn_blocking(move || common::http_get(addr, path).unwrap())
    };
    assert_eq!(
        get("/healthz").await.unwrap(),
        (200, "flanneld is running".into())
    );
    assert_eq!(
        get("/readyz").await.unwrap(),
        (503, "flanneld is not ready yet".into())
    );
    health.set_ready(true);
    assert_eq!(
        get("/readyz").await.unwrap(),
        (200, "flanneld is ready".into())
    );
    let (status, body) = get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("flannel_ready 1"), "{body}");
}

#[tokio::test]
async fn lease_is_renewed_at_expiry_minus_margin() {
    let dir = tempfile::tempdir().unwrap();
    let sm = manager(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}"#);
    let health = Arc::new(Health::default());
    let mut cfg = daemon_config(dir.path());
    // A 24 h lease with a margin of 24 h minus 1 s: due for renewal one second after acquiring.
    cfg.renew_margin = Duration::from_secs(24 * 3600 - 1);
    let run = tokio::spawn(daemon::run(
        cfg,
        sm.clone(),
        &flanneld::backend::Builtin,
        &FakeHost("172.16.0.7"),
        health.clone(),
        std::future::pending(),
    ));
    wait_until_async("ready", Duration::from_secs(10), || health.is_ready()).await;
    let first = sm.leases()[0].expiry;
    let m = sm.clone();
    wait_until_async("a renewal", Duration::from_secs(10), || {
        m.leases()[0].expiry != first
    })
    .await;
    let (Expiry::At(a), Expiry::At(b)) = (first, sm.leases()[0].expiry) else {
        panic!("leases expire")
    };
    assert!(b > a, "renewal pushed the expiry forward");
    assert_eq!(sm.leases().len(), 1, "renewal kept the same lease");
    run.abort();
}

/// A store that is unreachable for its first `failures` acquisitions.
struct Flaky {
    inner: Arc<MemoryManager>,
    failures: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl SubnetManager for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }
    async fn network_config(&self) -> Result<ValidatedNetConfig, SubnetError> {
        self.inner.network_config().await
    }
    async fn acquire_lease(&self, req: &AcquireRequest) -> Result<Lease, SubnetError> {
        if self.failures.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            self.failures
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            return Err(SubnetError::store(
                "flaky",
                "acquiring",
                "connection refused",
            ));
        }
        self.inner.acquire_lease(req).await
    }
    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, SubnetError> {
        self.inner.renew_lease(lease).await
    }
    fn leader_election(
        &self,
        name: &str,
        identity: &str,
    ) -> Box<dyn flanneld::subnet::election::LeaderElection> {
        self.inner.leader_election(name, identity)
    }
    async fn watch_leases(&self) -> Result<LeaseStream, SubnetError> {
        self.inner.watch_leases().await
    }
    async fn put_record(&self, name: &str, value: &str) -> Result<(), SubnetError> {
        self.inner.put_record(name, value).await
    }
    async fn get_record(&self, name: &str) -> Result<Option<String>, SubnetError> {
        self.inner.get_record(name).await
    }
}

#[tokio::test(start_paused = true)]
async fn acquisition_is_retried_while_the_store_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let inner = manager(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}"#);
    let flaky = Arc::new(Flaky {
        inner: inner.clone(),
        failures: std::sync::atomic::AtomicU32::new(2),
    });
    let health = Arc::new(Health::default());
    let run = tokio::spawn(daemon::run(
        daemon_config(dir.path()),
        flaky.clone(),
        &flanneld::backend::Builtin,
        &FakeHost("172.16.0.7"),
        health.clone(),
        std::future::pending(),
    ));
    wait_until_async("ready after two failures", Duration::from_secs(60), || {
        health.is_ready()
    })
    .await;
    assert_eq!(flaky.failures.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(inner.leases().len(), 1);
    run.abort();
}

/// A backend that records what the daemon asks of it.
#[derive(Default)]
struct Recorder {
    calls: std::sync::Mutex<Vec<String>>,
    /// When each resync ran.
    resyncs: std::sync::Mutex<Vec<tokio::time::Instant>>,
    /// Whether the backend asks for kernel-change repairs.
    repairs: bool,
}

impl Recorder {
    /// Whether a reconcile call the backend saw matches `f`.
    fn saw(&self, f: impl Fn(&str) -> bool) -> bool {
        self.calls.lock().unwrap().iter().any(|c| f(c))
    }
}

struct FakeBackend(Arc<Recorder>);

#[async_trait::async_trait]
impl flanneld::backend::Backend for FakeBackend {
    fn kind(&self) -> flannel_core::backend_config::BackendKind {
        flannel_core::backend_config::BackendKind::Vxlan
    }
    async fn lease_attrs(&self) -> Result<LeaseAttrs, flanneld::backend::BackendError> {
        let mut a = LeaseAttrs::new("172.16.0.7".parse().unwrap());
        a.backend_type = "vxlan".into();
        a.backend_data = Some(serde_json::json!({"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:ff"}));
        Ok(a)
    }
    async fn reconcile(
        &self,
        own: &Lease,
        peers: &flannel_core::admission::PeerView<'_>,
        trigger: flanneld::backend::Trigger<'_>,
    ) -> Result<flanneld::backend::Status, flanneld::backend::BackendError> {
        let mut calls = self.0.calls.lock().unwrap();
        match trigger {
            flanneld::backend::Trigger::Start => {
                calls.push(format!("start {} with {} peers", own.key, peers.len()))
            }
            flanneld::backend::Trigger::Leases { added, removed } => {
                for l in added {
                    calls.push(format!("added {}", l.key));
                }
                for l in removed {
                    calls.push(format!("removed {}", l.key));
                }
            }
            flanneld::backend::Trigger::Resync { fresh } => {
                self.0
                    .resyncs
                    .lock()
                    .unwrap()
                    .push(tokio::time::Instant::now());
                calls.push(format!("resync fresh={fresh} peers={}", peers.len()))
            }
        }
        Ok(flanneld::backend::Status::done())
    }
    fn mtu(&self) -> u32 {
        1400
    }
    fn repairs_on_kernel_changes(&self) -> bool {
        self.0.repairs
    }
}

struct FakeFactory(Arc<Recorder>);

#[async_trait::async_trait]
impl flanneld::backend::BackendFactory for FakeFactory {
    async fn build(
        &self,
        ctx: &flanneld::backend::BackendContext<'_>,
    ) -> Result<Box<dyn flanneld::backend::Backend>, flanneld::backend::BackendError> {
        assert_eq!(ctx.network.network().unwrap().to_string(), "10.5.0.0/16");
        Ok(Box::new(FakeBackend(self.0.clone())))
    }
}

#[tokio::test]
async fn an_injected_backend_gets_its_lease_attrs_published_and_peer_events() {
    let dir = tempfile::tempdir().unwrap();
    let sm = manager(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#);
    let health = Arc::new(Health::default());
    let cfg = daemon_config(dir.path());
    let rec = Arc::new(Recorder::default());
    let factory: &'static FakeFactory = Box::leak(Box::new(FakeFactory(rec.clone())));
    let run = tokio::spawn(daemon::run(
        cfg.clone(),
        sm.clone(),
        factory,
        &FakeHost("172.16.0.7"),
        health.clone(),
        std::future::pending(),
    ));
    wait_until_async("ready", Duration::from_secs(10), || health.is_ready()).await;
    let own = sm.leases().into_iter().next().unwrap();
    assert_eq!(
        own.attrs.to_json(),
        r#"{"PublicIP":"172.16.0.7","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}"#
    );
    let env = std::fs::read_to_string(&cfg.subnet_file).unwrap();
    assert!(env.contains("FLANNEL_MTU=1400\n"), "{env}");

    sm.put_lease(peer("10.5.9.0/24", "172.16.0.9"));
    wait_until_async("peer event", Duration::from_secs(10), || {
        rec.saw(|c| c == "added 10.5.9.0-24")
    })
    .await;
    sm.delete_lease(&SubnetKey::v4("10.5.9.0/24".parse().unwrap()));
    wait_until_async("removal", Duration::from_secs(10), || {
        rec.saw(|c| c == "removed 10.5.9.0-24")
    })
    .await;
    assert_eq!(
        rec.calls.lock().unwrap()[0],
        format!("start {} with 0 peers", own.key),
        "the first reconcile comes before any peer event"
    );
    run.abort();
}

#[tokio::test(start_paused = true)]
async fn each_event_kind_reaches_its_handler_and_a_taken_lease_ends_the_daemon() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let sm = manager(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#);
    let health = Arc::new(Health::default());
    let mut cfg = daemon_config(dir.path());
    cfg.traffic.masquerade = true;
    cfg.traffic_resync = Duration::from_secs(2);
    let rec = Arc::new(Recorder::default());
    let factory: &'static FakeFactory = Box::leak(Box::new(FakeFactory(rec.clone())));
    let run = tokio::spawn(daemon::run(
        cfg,
        sm.clone(),
        factory,
        &FakeHost("172.16.0.7"),
        health.clone(),
        std::future::pending(),
    ));
    wait_until_async("ready", Duration::from_secs(10), || health.is_ready()).await;
    // Start: the rules applied before subnet.env.
    let applies = common::FILTER.applies.load(Ordering::SeqCst);
    assert!(applies >= 1);
    // Resync: the period (30 s here) passes.
    wait_until_async("a resync", Duration::from_secs(60), || {
        rec.saw(|c| c.starts_with("resync fresh=true"))
    })
    .await;
    // TrafficCheck: an operator flushes the chains; the check puts them back.
    common::FILTER.in_place.store(false, Ordering::SeqCst);
    wait_until_async("the rules re-applied", Duration::from_secs(10), || {
        common::FILTER.applies.load(Ordering::SeqCst) > applies
    })
    .await;
    // Feed: a refused lease never reaches the backend; an admitted one does.
    sm.put_lease(peer("0.0.0.0/1", "172.16.0.9"));
    sm.put_lease(peer("10.5.77.0/24", "172.16.0.8"));
    wait_until_async("the admitted peer", Duration::from_secs(10), || {
        rec.saw(|c| c == "added 10.5.77.0-24")
    })
    .await;
    assert!(!rec.saw(|c| c.contains("0.0.0.0")));
    assert!(health
        .metrics
        .encode()
        .contains("flannel_leases_refused{reason=\"outside_network\"} 1"));
    // Feed: another node writes our key: the lease is lost, the daemon stops not ready.
    let own = sm
        .leases()
        .into_iter()
        .find(|l| l.attrs.public_ip.to_string() == "172.16.0.7")
        .unwrap();
    let mut thief = own.clone();
    thief.attrs = LeaseAttrs::new("172.16.0.66".parse().unwrap());
    sm.put_lease(thief);
    let err = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(
        flanneld::report(&err),
        format!("lease {} is now held by 172.16.0.66", own.key.ipv4)
    );
    assert!(!health.is_ready());
}

#[tokio::test(start_paused = true)]
async fn kernel_changes_bring_one_debounced_resync_and_never_two_within_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let sm = manager(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#);
    let health = Arc::new(Health::default());
    let rec = Arc::new(Recorder {
        repairs: true,
        ..Default::default()
    });
    let (tell, changes) = futures::channel::mpsc::unbounded::<()>();
    *common::KERNEL_CHANGES.lock().unwrap() = Some(Box::pin(changes));
    let factory: &'static FakeFactory = Box::leak(Box::new(FakeFactory(rec.clone())));
    let run = tokio::spawn(daemon::run(
        daemon_config(dir.path()),
        sm.clone(),
        factory,
        &FakeHost("172.16.0.7"),
        health.clone(),
        std::future::pending(),
    ));
    wait_until_async("ready", Duration::from_secs(10), || health.is_ready()).await;
    let resyncs = || rec.resyncs.lock().unwrap().clone();
    assert!(resyncs().is_empty(), "the period is 30 s");

    // A burst (a link flap notifies several times), well after the first reconcile (which
    // counts as the last repair): one resync, within the debounce.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let burst = tokio::time::Instant::now();
    for _ in 0..5 {
        tell.unbounded_send(()).unwrap();
    }
    wait_until_async("the repair", Duration::from_secs(5), || {
        resyncs().len() == 1
    })
    .await;
    assert!(
        resyncs()[0] - burst < Duration::from_millis(100),
        "{:?}",
        resyncs()[0] - burst
    );
    // Virtual time: nothing more comes of that burst.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(resyncs().len(), 1);

    // Our own repair notifies too: a change right after a resync waits out the 250 ms gap.
    tell.unbounded_send(()).unwrap();
    wait_until_async("the second repair", Duration::from_secs(5), || {
        resyncs().len() == 2
    })
    .await;
    tell.unbounded_send(()).unwrap();
    wait_until_async("the third repair", Duration::from_secs(5), || {
        resyncs().len() == 3
    })
    .await;
    let r = resyncs();
    assert!(
        r[2] - r[1] >= Duration::from_millis(250),
        "{:?}",
        r[2] - r[1]
    );

    // The notifications end: the daemon carries on, repairing at the period.
    drop(tell);
    wait_until_async("the periodic resync", Duration::from_secs(60), || {
        resyncs().len() == 4
    })
    .await;
    assert!(health.is_ready());
    run.abort();
}
