//! flanneld's coordination.k8s.io/v1 Leases: the leader elections of `--kube-subnet-mgr`
//! and the entries of its join queues.

use super::store;
use crate::subnet::election::{LeaderElection, Leadership};
use crate::subnet::SubnetError;
use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::Lease as KubeLease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use std::time::{Duration, SystemTime};
use tracing::warn;

/// A coordination.k8s.io/v1 Lease as a leader election: acquire when free or expired, renew
/// at a third of the duration, optimistic concurrency through resourceVersion.
pub(super) struct LeaseElection {
    api: Api<KubeLease>,
    name: String,
    identity: String,
}

pub(super) const LEASE_SECS: i32 = 15;
/// The label of join-queue entries (its value: the queue's name).
pub const QUEUE_LABEL: &str = "flannel-rs.io/queue";
/// The annotation naming the node of a join-queue entry.
pub const QUEUE_NODE_ANNOTATION: &str = "flannel-rs.io/node";
/// Expired entries a joiner deletes at most.
const QUEUE_SWEEP: usize = 20;
/// How often a holder renews, and how often a candidate looks again.
const RENEW_EVERY: Duration = Duration::from_secs(5);

impl LeaseElection {
    pub(super) fn new(api: Api<KubeLease>, name: &str, identity: &str) -> LeaseElection {
        LeaseElection {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
        }
    }

    fn record(&self, mut lease: KubeLease, holder: &str, acquired: bool) -> KubeLease {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let spec = lease.spec.get_or_insert_with(Default::default);
        spec.holder_identity = Some(holder.to_string());
        spec.lease_duration_seconds = Some(LEASE_SECS);
        spec.renew_time = Some(now.clone());
        if acquired {
            spec.acquire_time = Some(now);
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        lease.metadata.name = Some(self.name.clone());
        lease
    }

    /// Try once to take or keep the Lease; true when this identity holds it now.
    pub(super) async fn try_hold(&self) -> Result<bool, SubnetError> {
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| store(format!("get lease {}", self.name), e))?;
        let result = match current {
            None => {
                let lease = self.record(KubeLease::default(), &self.identity, true);
                self.api
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(drop)
            }
            Some(lease) => {
                let spec = lease.spec.clone().unwrap_or_default();
                let holder = spec.holder_identity.clone().unwrap_or_default();
                let expired = spec.renew_time.as_ref().is_none_or(|t| {
                    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECS));
                    t.0.as_second() + secs < k8s_openapi::jiff::Timestamp::now().as_second()
                });
                if holder != self.identity && !holder.is_empty() && !expired {
                    return Ok(false);
                }
                let taking = holder != self.identity;
                // The resourceVersion read above makes this a compare-and-swap.
                let lease = self.record(lease, &self.identity, taking);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                    .map(drop)
            }
        };
        match result {
            Ok(()) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(store(format!("write lease {}", self.name), e)),
        }
    }
}

#[async_trait]
impl LeaderElection for LeaseElection {
    async fn campaign(&self) -> Result<Box<dyn Leadership>, SubnetError> {
        loop {
            let sent = tokio::time::Instant::now();
            if self.try_hold().await? {
                let margin = Duration::from_millis(1500);
                let ttl = Duration::from_secs(LEASE_SECS as u64);
                let deadline = crate::subnet::election::Deadline::new(sent + ttl - margin);
                let renewer = LeaseElection {
                    api: self.api.clone(),
                    name: self.name.clone(),
                    identity: self.identity.clone(),
                };
                let d = deadline.clone();
                let task = tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(RENEW_EVERY).await;
                        let sent = tokio::time::Instant::now();
                        match renewer.try_hold().await {
                            Ok(true) => d.extend(sent + ttl - margin),
                            Ok(false) => {
                                warn!(lease = %renewer.name, "another holder took the lease");
                                d.lose();
                                return;
                            }
                            Err(e) => warn!(error = %crate::report(&e), "lease renewal failed"),
                        }
                        if !d.holds() {
                            return;
                        }
                    }
                });
                return Ok(Box::new(LeaseHeld {
                    deadline,
                    task,
                    api: self.api.clone(),
                    name: self.name.clone(),
                    identity: self.identity.clone(),
                }));
            }
            tokio::time::sleep(RENEW_EVERY / 2).await;
        }
    }

    async fn leader(&self) -> Result<Option<String>, SubnetError> {
        let lease = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| store(format!("get lease {}", self.name), e))?;
        Ok(lease
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty()))
    }
}

struct LeaseHeld {
    deadline: crate::subnet::election::Deadline,
    task: tokio::task::JoinHandle<()>,
    api: Api<KubeLease>,
    name: String,
    identity: String,
}

#[async_trait]
impl Leadership for LeaseHeld {
    fn is_leader(&self) -> bool {
        self.deadline.holds()
    }

    async fn lost(&self) {
        self.deadline.expired().await;
    }

    async fn resign(self: Box<Self>) {
        self.task.abort();
        self.deadline.lose();
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await {
            if lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(&self.identity)
            {
                if let Some(spec) = lease.spec.as_mut() {
                    spec.holder_identity = Some(String::new());
                }
                let _ = self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await;
            }
        }
    }
}

impl Drop for LeaseHeld {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An entry is a coordination.k8s.io Lease in flanneld's namespace, labelled
/// [`QUEUE_LABEL`]` = name`, its time the acquireTime and its TTL the
/// leaseDurationSeconds; the store's order is (acquireTime, object name). Each agent
/// deletes its own entry after the TTL, and a joiner deletes the expired entries it sees
/// (an agent that died), a few at a time.
pub(super) async fn join_queue(
    api: Api<KubeLease>,
    node: &str,
    name: &str,
    ttl: Duration,
) -> Result<Vec<SystemTime>, SubnetError> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    // Microseconds: what the API server keeps of a MicroTime.
    let now = Timestamp::from_microsecond(Timestamp::now().as_microsecond())
        .map_err(|e| store("queue entry time", e))?;
    let entry = format!("flannel-rs-queue-{:016x}", rand::random::<u64>());
    let secs = i32::try_from(ttl.as_secs().max(1)).unwrap_or(i32::MAX);
    let lease: KubeLease = serde_json::from_value(serde_json::json!({
        // No holderIdentity: an entry is held by nobody (tools listing election holders
        // skip it); the node is named in an annotation for whoever looks.
        "metadata": {"name": entry, "labels": {QUEUE_LABEL: name}, "annotations": {QUEUE_NODE_ANNOTATION: node}},
        "spec": {"acquireTime": MicroTime(now), "leaseDurationSeconds": secs},
    }))
    .map_err(|e| store(format!("queue entry {entry}"), e))?;
    api.create(&PostParams::default(), &lease)
        .await
        .map_err(|e| store(format!("create queue entry {entry}"), e))?;
    let own = (api.clone(), entry.clone());
    tokio::spawn(async move {
        tokio::time::sleep(ttl).await;
        let _ = own.0.delete(&own.1, &Default::default()).await;
    });
    let listed = api
        .list(&kube::api::ListParams::default().labels(&format!("{QUEUE_LABEL}={name}")))
        .await
        .map_err(|e| store(format!("list queue {name}"), e))?;
    let mut live = Vec::new();
    let mut expired = Vec::new();
    for l in listed.items {
        let (Some(n), Some(spec)) = (l.metadata.name, l.spec) else {
            continue;
        };
        let (Some(at), Some(d)) = (spec.acquire_time, spec.lease_duration_seconds) else {
            continue;
        };
        if at.0 + SignedDuration::from_secs(i64::from(d)) < now {
            expired.push(n);
        } else {
            live.push((at.0, n));
        }
    }
    for n in expired.iter().take(QUEUE_SWEEP) {
        let _ = api.delete(n, &Default::default()).await;
    }
    live.sort();
    let mine = (now, entry);
    Ok(live
        .into_iter()
        .filter(|e| *e <= mine)
        .map(|(t, _)| SystemTime::from(t))
        .collect())
}
