use super::*;
use crate::subnet::memory::MemoryManager;
use crate::subnet::{AcquireRequest, LeaseStream};
use async_trait::async_trait;
use flannel_core::admission::Allocation;
use flannel_core::lease::{Expiry, LeaseAttrs, SubnetKey};
use flannel_core::ValidatedNetConfig;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

fn config() -> ValidatedNetConfig {
    flannel_core::config::parse_and_check(
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}"#,
    )
    .unwrap()
}

fn lease(subnet: &str, ip: &str) -> Lease {
    let mut attrs = LeaseAttrs::new(ip.parse().unwrap());
    attrs.backend_type = "host-gw".into();
    Lease {
        key: SubnetKey::v4(subnet.parse().unwrap()),
        attrs,
        expiry: Expiry::Never,
    }
}

/// What one `watch_leases` call gives.
enum Open {
    Fail(SubnetError),
    /// A stream of these items, then (if `end`) its end, else it stays open.
    Items(Vec<Result<WatchUpdate, SubnetError>>, bool),
}

/// A store whose watch opens as scripted; once the script runs out, every open fails
/// (retryably).
struct Scripted {
    inner: MemoryManager,
    script: Mutex<VecDeque<Open>>,
    opens: AtomicUsize,
}

impl Scripted {
    fn new(script: Vec<Open>) -> Arc<Scripted> {
        Arc::new(Scripted {
            inner: MemoryManager::new(config()),
            script: Mutex::new(script.into()),
            opens: AtomicUsize::new(0),
        })
    }
}

fn unreachable() -> SubnetError {
    SubnetError::store("scripted", "watch", "connection refused")
}

#[async_trait]
impl SubnetManager for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }
    async fn network_config(&self) -> Result<ValidatedNetConfig, SubnetError> {
        Ok(config())
    }
    async fn acquire_lease(&self, req: &AcquireRequest) -> Result<Lease, SubnetError> {
        self.inner.acquire_lease(req).await
    }
    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, SubnetError> {
        self.inner.renew_lease(lease).await
    }
    async fn watch_leases(&self) -> Result<LeaseStream, SubnetError> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        match self.script.lock().unwrap().pop_front() {
            None => Err(unreachable()),
            Some(Open::Fail(e)) => Err(e),
            Some(Open::Items(items, end)) => {
                let s = futures::stream::iter(items);
                Ok(if end {
                    s.boxed()
                } else {
                    s.chain(futures::stream::pending()).boxed()
                })
            }
        }
    }
    fn leader_election(
        &self,
        name: &str,
        identity: &str,
    ) -> Box<dyn crate::subnet::election::LeaderElection> {
        self.inner.leader_election(name, identity)
    }
    async fn put_record(&self, name: &str, value: &str) -> Result<(), SubnetError> {
        self.inner.put_record(name, value).await
    }
    async fn get_record(&self, name: &str) -> Result<Option<String>, SubnetError> {
        self.inner.get_record(name).await
    }
}

fn feed(sm: &Arc<Scripted>, own: Option<Lease>, metrics: &Metrics) -> LeaseFeed {
    let rules = Rules::new(&config(), Allocation::Pool);
    LeaseFeed::new(sm.clone(), rules, own, metrics)
}

#[tokio::test(start_paused = true)]
async fn a_watch_that_always_fails_is_reopened_no_faster_than_the_backoff() {
    let sm = Scripted::new(vec![]);
    let metrics = Metrics::default();
    let mut f = feed(&sm, None, &metrics);
    let window = Duration::from_secs(60);
    assert!(
        tokio::time::timeout(window, f.next()).await.is_err(),
        "no event"
    );
    let opens = sm.opens.load(Ordering::SeqCst);
    // 100 ms doubling to 5 s, each pause in the upper half of its ceiling: at most
    // 7 opens in the first 3.2 s, then one per 2.5 s at the most.
    assert!((10..=31).contains(&opens), "{opens} opens in {window:?}");
}

#[tokio::test(start_paused = true)]
async fn a_watch_that_opens_then_fails_at_once_backs_off_too_and_resets_after_delivering() {
    // Every open succeeds but the stream errors at once: without the backoff this is a
    // tight loop of LISTs (a lasting 403 or 5xx in the Kubernetes manager).
    let mut script: Vec<Open> = (0..1000)
        .map(|_| Open::Items(vec![Err(unreachable())], false))
        .collect();
    script.insert(
        5,
        Open::Items(
            vec![Ok(WatchUpdate::Snapshot(vec![lease(
                "10.5.2.0/24",
                "172.16.0.2",
            )]))],
            true,
        ),
    );
    let sm = Scripted::new(script);
    let metrics = Metrics::default();
    let mut f = feed(&sm, None, &metrics);
    let started = Instant::now();
    match f.next().await {
        FeedEvent::Peers { added, removed } => {
            assert_eq!(added.len(), 1);
            assert!(removed.is_empty());
        }
        other => panic!("{other:?}"),
    }
    // Five failed opens before it: 50+100+200+400+800 ms at the least.
    assert!(
        started.elapsed() >= Duration::from_millis(1550),
        "{:?}",
        started.elapsed()
    );
    assert!(f.is_fresh());
    // The snapshot's stream then ends: the next reopen waits only the first pause again.
    let before = sm.opens.load(Ordering::SeqCst);
    let _ = tokio::time::timeout(Duration::from_millis(101), f.next()).await;
    assert_eq!(
        sm.opens.load(Ordering::SeqCst),
        before + 1,
        "reset after delivering"
    );
    assert!(!f.is_fresh());
}

#[tokio::test(start_paused = true)]
async fn refused_leases_never_reach_the_view_and_are_counted() {
    let own = lease("10.5.1.0/24", "172.16.0.1");
    let snapshot = vec![
        own.clone(),
        lease("10.5.2.0/24", "172.16.0.2"),
        lease("0.0.0.0/1", "172.16.0.3"),
        lease("10.5.1.128/25", "172.16.0.4"),
        lease("10.5.3.0/24", "127.0.0.1"),
    ];
    let sm = Scripted::new(vec![Open::Items(
        vec![Ok(WatchUpdate::Snapshot(snapshot))],
        false,
    )]);
    let metrics = Metrics::default();
    let mut f = feed(&sm, Some(own), &metrics);
    let FeedEvent::Peers { added, .. } = f.next().await else {
        panic!("peers")
    };
    assert_eq!(added, vec![lease("10.5.2.0/24", "172.16.0.2")]);
    assert_eq!(f.peers().len(), 1);
    let text = metrics.encode();
    for line in [
        "flannel_peers 1",
        "flannel_leases_refused{reason=\"outside_network\"} 1",
        "flannel_leases_refused{reason=\"overlaps_own\"} 1",
        "flannel_leases_refused{reason=\"public_ip\"} 1",
        "flannel_leases_refused{reason=\"overlap\"} 0",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}

#[tokio::test(start_paused = true)]
async fn our_lease_gone_or_taken_and_a_store_gone_backwards_are_said() {
    let own = lease("10.5.1.0/24", "172.16.0.1");
    let thief = lease("10.5.1.0/24", "172.16.0.9");
    let metrics = Metrics::default();
    let sm = Scripted::new(vec![Open::Items(
        vec![Ok(WatchUpdate::Snapshot(vec![lease(
            "10.5.2.0/24",
            "172.16.0.2",
        )]))],
        false,
    )]);
    let mut f = feed(&sm, Some(own.clone()), &metrics);
    assert!(matches!(
        f.next().await,
        FeedEvent::OwnLost(OwnLoss::Revoked)
    ));
    let sm = Scripted::new(vec![Open::Items(
        vec![Ok(WatchUpdate::Events(vec![LeaseEvent::Added(thief)]))],
        false,
    )]);
    let mut f = feed(&sm, Some(own), &metrics);
    match f.next().await {
        FeedEvent::OwnLost(OwnLoss::Taken(e)) => {
            assert_eq!(e.to_string(), "lease 10.5.1.0/24 is now held by 172.16.0.9")
        }
        other => panic!("{other:?}"),
    }
    let rewound = SubnetError::StoreRewound {
        manager: "scripted",
        source: "revision 3 below 9".into(),
    };
    let sm = Scripted::new(vec![Open::Items(vec![Err(rewound)], false)]);
    let mut f = feed(&sm, None, &metrics);
    assert!(matches!(
        f.next().await,
        FeedEvent::Failed(SubnetError::StoreRewound { .. })
    ));
    // Refused at the open, not retryable: said too (the daemon stops, the controller
    // restarts the feed, which opens again only after a pause).
    let forbidden = SubnetError::NodeUnknown("nodes is forbidden".into());
    let sm = Scripted::new(vec![Open::Fail(forbidden)]);
    let mut f = feed(&sm, None, &metrics);
    assert!(matches!(
        f.next().await,
        FeedEvent::Failed(SubnetError::NodeUnknown(_))
    ));
    f.restart();
    let before = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(1), f.next()).await;
    assert!(sm.opens.load(Ordering::SeqCst) >= 2);
    assert!(before.elapsed() >= Duration::from_millis(50));
}

#[tokio::test(start_paused = true)]
async fn an_unchanged_snapshot_after_a_reopen_says_the_view_is_fresh_again() {
    let a = lease("10.5.2.0/24", "172.16.0.2");
    let snap = || Ok(WatchUpdate::Snapshot(vec![a.clone()]));
    let sm = Scripted::new(vec![
        Open::Items(vec![snap()], true),
        Open::Items(vec![snap()], false),
    ]);
    let metrics = Metrics::default();
    let mut f = feed(&sm, None, &metrics);
    assert!(matches!(f.next().await, FeedEvent::Peers { .. }));
    assert!(matches!(f.next().await, FeedEvent::Fresh));
    assert!(f.is_fresh());
}
