//! An in-process subnet manager: the same allocation rules as etcd, no persistence beyond
//! subnet.env (which gives a restarted node its previous subnet back). Used by
//! `--local-subnet-mgr` and as the fake store in daemon and backend tests; tests can add and
//! remove peer leases to drive the watch.

use super::election::{InProcessElections, LeaderElection};
use super::{AcquireRequest, LeaseStream, SubnetError, SubnetManager, LEASE_TTL};
use async_trait::async_trait;
use flannel_core::alloc::{self, AcquirePlan};
use flannel_core::lease::{Expiry, Lease, LeaseEvent, SubnetKey};
use flannel_core::watch::WatchUpdate;
use flannel_core::ValidatedNetConfig;
use futures::StreamExt;
use rand::Rng;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::broadcast;

pub struct MemoryManager {
    config: ValidatedNetConfig,
    leases: Arc<Mutex<BTreeMap<SubnetKey, Lease>>>,
    changes: broadcast::Sender<LeaseEvent>,
    elections: Arc<InProcessElections>,
    records: Mutex<BTreeMap<String, String>>,
    /// Queues: each entry's time and when it goes.
    queues: Mutex<BTreeMap<String, Vec<(SystemTime, SystemTime)>>>,
}

impl MemoryManager {
    pub fn new(config: ValidatedNetConfig) -> Self {
        Self::with_event_capacity(config, 1024)
    }

    /// `capacity` events may queue per watcher before it lags (and gets a fresh snapshot).
    pub fn with_event_capacity(config: ValidatedNetConfig, capacity: usize) -> Self {
        MemoryManager {
            config,
            leases: Arc::new(Mutex::new(BTreeMap::new())),
            changes: broadcast::channel(capacity.max(1)).0,
            elections: Arc::default(),
            records: Mutex::default(),
            queues: Mutex::default(),
        }
    }

    /// Insert or replace a lease (a peer joining, in tests).
    pub fn put_lease(&self, lease: Lease) {
        self.leases.lock().unwrap().insert(lease.key, lease.clone());
        let _ = self.changes.send(LeaseEvent::Added(lease));
    }

    /// Delete a lease (a peer leaving or expiring).
    pub fn delete_lease(&self, key: &SubnetKey) -> Option<Lease> {
        let old = self.leases.lock().unwrap().remove(key);
        if let Some(l) = &old {
            let _ = self.changes.send(LeaseEvent::Removed(l.clone()));
        }
        old
    }

    pub fn leases(&self) -> Vec<Lease> {
        self.leases.lock().unwrap().values().cloned().collect()
    }
}

#[async_trait]
impl SubnetManager for MemoryManager {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn network_config(&self) -> Result<ValidatedNetConfig, SubnetError> {
        Ok(self.config.clone())
    }

    async fn acquire_lease(&self, req: &AcquireRequest) -> Result<Lease, SubnetError> {
        let existing = self.leases();
        let plan = alloc::plan_acquire(
            &alloc::AcquireRequest {
                config: &self.config,
                leases: &existing,
                public_ip: req.attrs.public_ip,
                public_ipv6: req.attrs.public_ipv6,
                previous: req.previous,
                previous_ipv6: req.previous_ipv6,
                candidates: alloc::CANDIDATES,
            },
            &mut |n| rand::rng().random_range(0..n),
        )
        .map_err(SubnetError::Alloc)?;
        let expiry = Expiry::At(SystemTime::now() + LEASE_TTL);
        let lease = match plan {
            AcquirePlan::Renew(old) => {
                let expiry = if old.is_reservation() {
                    Expiry::Never
                } else {
                    expiry
                };
                Lease {
                    key: old.key,
                    attrs: req.attrs.clone(),
                    expiry,
                }
            }
            AcquirePlan::Create { key, stale, .. } => {
                if let Some(s) = stale {
                    self.delete_lease(&s.key);
                }
                Lease {
                    key,
                    attrs: req.attrs.clone(),
                    expiry,
                }
            }
        };
        self.put_lease(lease.clone());
        Ok(lease)
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, SubnetError> {
        let mut l = self
            .leases
            .lock()
            .unwrap()
            .get(&lease.key)
            .cloned()
            .ok_or_else(|| SubnetError::LeaseNotFound(lease.key.to_string()))?;
        if l.attrs.public_ip != lease.attrs.public_ip {
            return Err(SubnetError::LeaseTaken {
                subnet: lease.key.ipv4,
                holder: l.attrs.public_ip,
            });
        }
        if !l.is_reservation() {
            l.expiry = Expiry::At(SystemTime::now() + LEASE_TTL);
        }
        self.put_lease(l.clone());
        Ok(l)
    }

    fn leader_election(&self, name: &str, identity: &str) -> Box<dyn LeaderElection> {
        Box::new(self.elections.election(name, identity))
    }

    async fn put_record(&self, name: &str, value: &str) -> Result<(), SubnetError> {
        self.records
            .lock()
            .unwrap()
            .insert(name.to_string(), value.to_string());
        Ok(())
    }

    async fn get_record(&self, name: &str) -> Result<Option<String>, SubnetError> {
        Ok(self.records.lock().unwrap().get(name).cloned())
    }

    async fn join_queue(
        &self,
        name: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<Vec<SystemTime>>, SubnetError> {
        let now = SystemTime::now();
        let mut queues = self.queues.lock().unwrap();
        let q = queues.entry(name.to_string()).or_default();
        q.retain(|(_, gone)| *gone > now);
        q.push((now, now + ttl));
        Ok(Some(q.iter().map(|(t, _)| *t).collect()))
    }

    async fn watch_leases(&self) -> Result<LeaseStream, SubnetError> {
        // Subscribe before taking the snapshot so no change falls between the two.
        let rx = self.changes.subscribe();
        let snapshot = self.leases();
        let store = Arc::clone(&self.leases);
        let deltas = futures::stream::unfold((rx, store), |(mut rx, store)| async move {
            let update = match rx.recv().await {
                Ok(e) => WatchUpdate::Events(vec![e]),
                // A slow consumer missed events: hand it the whole current state instead, so
                // nothing it missed stays missed. Re-subscribe before reading the state (as
                // `watch_leases` does) so no change falls between the two; one that lands in
                // both re-applies harmlessly.
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "lease watcher lagged; sending a fresh snapshot");
                    rx = rx.resubscribe();
                    let leases = store.lock().unwrap().values().cloned().collect();
                    WatchUpdate::Snapshot(leases)
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((Ok(update), (rx, store)))
        });
        Ok(
            futures::stream::once(async move { Ok(WatchUpdate::Snapshot(snapshot)) })
                .chain(deltas)
                .boxed(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lagging_watcher_gets_a_fresh_snapshot_instead_of_losing_events() {
        let m = MemoryManager::with_event_capacity(
            flannel_core::config::parse_and_check(r#"{"Network":"10.5.0.0/16"}"#).unwrap(),
            2,
        );
        let mut w = m.watch_leases().await.unwrap();
        assert!(matches!(w.next().await, Some(Ok(WatchUpdate::Snapshot(s))) if s.is_empty()));
        for i in 1..=10u8 {
            m.put_lease(Lease {
                key: SubnetKey::v4(format!("10.5.{i}.0/24").parse().unwrap()),
                attrs: LeaseAttrs::new(std::net::Ipv4Addr::new(172, 16, 0, i)),
                expiry: Expiry::Never,
            });
        }
        match w.next().await {
            Some(Ok(WatchUpdate::Snapshot(s))) => assert_eq!(s.len(), 10, "every lease, none lost"),
            other => panic!("expected a fresh snapshot after lagging, got {other:?}"),
        }
    }
    use flannel_core::lease::LeaseAttrs;

    fn mgr() -> MemoryManager {
        MemoryManager::new(
            flannel_core::config::parse_and_check(r#"{"Network":"10.5.0.0/16"}"#).unwrap(),
        )
    }

    fn req(ip: &str) -> AcquireRequest {
        AcquireRequest {
            attrs: LeaseAttrs::new(ip.parse().unwrap()),
            previous: None,
            previous_ipv6: None,
        }
    }

    #[tokio::test]
    async fn same_ip_gets_same_subnet_and_distinct_ips_distinct_subnets() {
        let m = mgr();
        let a = m.acquire_lease(&req("1.1.1.1")).await.unwrap();
        let again = m.acquire_lease(&req("1.1.1.1")).await.unwrap();
        assert_eq!(a.key, again.key);
        let b = m.acquire_lease(&req("1.1.1.2")).await.unwrap();
        assert_ne!(a.key, b.key);
        assert_eq!(m.leases().len(), 2);
    }

    #[tokio::test]
    async fn watch_gives_snapshot_then_deltas() {
        let m = mgr();
        let a = m.acquire_lease(&req("1.1.1.1")).await.unwrap();
        let mut w = m.watch_leases().await.unwrap();
        assert_eq!(
            w.next().await.unwrap().unwrap(),
            WatchUpdate::Snapshot(vec![a.clone()])
        );
        m.delete_lease(&a.key);
        assert_eq!(
            w.next().await.unwrap().unwrap(),
            WatchUpdate::Events(vec![LeaseEvent::Removed(a)])
        );
    }

    #[tokio::test]
    async fn reservation_is_renewed_without_ttl() {
        let m = mgr();
        let key = SubnetKey::v4("10.5.77.0/24".parse().unwrap());
        m.put_lease(Lease {
            key,
            attrs: LeaseAttrs::new("1.1.1.1".parse().unwrap()),
            expiry: Expiry::Never,
        });
        let l = m.acquire_lease(&req("1.1.1.1")).await.unwrap();
        assert_eq!((l.key, l.expiry), (key, Expiry::Never));
        assert_eq!(m.renew_lease(&l).await.unwrap().expiry, Expiry::Never);
    }
}
