//! Leader election on the same etcd: an etcd lease plus a create-if-absent transaction on
//! `<prefix>/leader/<name>` (outside `subnets/`, so upstream nodes never see it).
//!
//! Leadership is held only until a local deadline: the send time of the last keep-alive that
//! etcd confirmed, plus the TTL it granted, minus a margin. etcd cannot expire the key before
//! that instant, so a leader cut off from etcd stops claiming leadership before any other
//! candidate can win, and there is never a moment with two leaders.

use super::EtcdManager;
use crate::subnet::election::{Deadline, LeaderElection, Leadership};
use crate::subnet::SubnetError;
use async_trait::async_trait;
use backoff::Backoff;
use etcd_client::{Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

/// The default TTL of a leadership (seconds).
pub const DEFAULT_TTL_SECS: i64 = 15;

/// Pauses between keep-alive attempts after a failure (bounded by the deadline anyway).
const RENEW_RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));

pub struct Election {
    mgr: EtcdManager,
    key: String,
    identity: String,
    ttl_secs: i64,
}

/// Held while this process is the leader. Dropping it stops the keep-alives: leadership passes
/// on when the etcd lease expires (a crash looks the same).
pub struct EtcdLeadership {
    mgr: EtcdManager,
    lease_id: i64,
    deadline: Deadline,
    keepalive: tokio::task::JoinHandle<()>,
}

/// How much of a granted TTL is not relied upon (clock-rate drift, request latency).
fn margin(ttl: Duration) -> Duration {
    (ttl / 10).max(Duration::from_millis(200))
}

impl Election {
    pub fn new(mgr: &EtcdManager, name: &str, identity: &str, ttl_secs: i64) -> Election {
        Election {
            mgr: mgr.clone(),
            key: format!("{}/leader/{name}", mgr.prefix),
            identity: identity.to_string(),
            ttl_secs: ttl_secs.max(2),
        }
    }

    /// Block until the leader key is deleted (or the watch breaks, then re-check).
    async fn wait_for_vacancy(&self, from_rev: i64) {
        self.mgr.requests.fetch_add(1, Ordering::Relaxed);
        let opened = self
            .mgr
            .client
            .clone()
            .watch(
                self.key.clone(),
                Some(WatchOptions::new().with_start_revision(from_rev)),
            )
            .await;
        let Ok(mut stream) = opened else {
            tokio::time::sleep(RENEW_RETRY.delays().next_delay()).await;
            return;
        };
        while let Ok(Some(resp)) = stream.message().await {
            if resp.compact_revision() > 0 || resp.canceled() {
                return;
            }
            if resp
                .events()
                .iter()
                .any(|e| e.event_type() == EventType::Delete)
            {
                return;
            }
        }
    }

    fn hold(&self, lease_id: i64, deadline: Deadline) -> EtcdLeadership {
        let mgr = self.mgr.clone();
        let period = Duration::from_secs(self.ttl_secs as u64) / 3;
        let d = deadline.clone();
        let keepalive = tokio::spawn(async move {
            let mut pause = period;
            let mut failures = RENEW_RETRY.delays();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = d.expired() => break,
                }
                let sent = Instant::now();
                match mgr.keep_alive_once(lease_id).await {
                    Ok(ttl) if ttl > 0 => {
                        let ttl = Duration::from_secs(ttl as u64);
                        d.extend(sent + ttl - margin(ttl));
                        failures.reset();
                        pause = period;
                    }
                    Ok(_) => {
                        warn!("election lease expired: leadership lost");
                        break;
                    }
                    Err(e) => {
                        pause = failures.next_delay();
                        warn!(error = %crate::report(&e), retry_in = ?pause, "election keep-alive failed");
                    }
                }
            }
            d.lose();
            // Best effort: if etcd is reachable again, free the key for the next leader now.
            mgr.revoke(lease_id).await;
        });
        EtcdLeadership {
            mgr: self.mgr.clone(),
            lease_id,
            deadline,
            keepalive,
        }
    }
}

#[async_trait]
impl LeaderElection for Election {
    async fn campaign(&self) -> Result<Box<dyn Leadership>, SubnetError> {
        loop {
            let sent = Instant::now();
            let (lease_id, ttl) = self.mgr.grant(self.ttl_secs).await?;
            let txn = Txn::new()
                .when([Compare::create_revision(
                    self.key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::put(
                    self.key.clone(),
                    self.identity.clone(),
                    Some(PutOptions::new().with_lease(lease_id)),
                )])
                .or_else([TxnOp::get(self.key.clone(), None)]);
            let resp = self
                .mgr
                .rpc("campaigning", |mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .await?;
            if resp.succeeded() {
                info!(key = %self.key, identity = %self.identity, "became leader");
                let ttl = Duration::from_secs(ttl.max(1) as u64);
                let deadline = Deadline::new(sent + ttl - margin(ttl));
                return Ok(Box::new(self.hold(lease_id, deadline)));
            }
            self.mgr.revoke(lease_id).await;
            let rev = resp.header().map_or(0, |h| h.revision());
            self.wait_for_vacancy(rev + 1).await;
        }
    }

    async fn leader(&self) -> Result<Option<String>, SubnetError> {
        let kv = self.mgr.get_one(&self.key).await?;
        Ok(kv.map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }
}

#[async_trait]
impl Leadership for EtcdLeadership {
    fn is_leader(&self) -> bool {
        self.deadline.holds()
    }

    async fn lost(&self) {
        self.deadline.expired().await;
    }

    /// Step down now: revoking the lease deletes the leader key at once.
    async fn resign(self: Box<Self>) {
        self.deadline.lose();
        self.keepalive.abort();
        self.mgr.revoke(self.lease_id).await;
    }
}

impl Drop for EtcdLeadership {
    fn drop(&mut self) {
        self.deadline.lose();
        self.keepalive.abort();
    }
}
