//! Taking turns at the cloud API when many nodes start at once (a cluster restart, a zone
//! coming back). Per-node mode's first cloud calls (DescribeRouteTables, DescribeVpcLimits,
//! one CreateRoutes per table) count against account-wide per-action limits (100/s); a
//! thousand agents calling in the same second would get most calls throttled and retry into
//! each other. Before its first call, an agent joins a queue in the lease store
//! ([`SubnetManager::join_queue`]): the entries ahead of it, in the store's order, say when
//! its turn is — each entry no sooner than its own time and [`JOIN_SPACING`] after the one
//! before. An agent alone (or joining at a pace within the budget) waits for nothing; a
//! herd is spread at 40 joins a second, every agent computing the same schedule without
//! talking to the others.

use crate::subnet::SubnetManager;
use std::time::{Duration, SystemTime};
use tracing::{debug, info, warn};

/// One join's turn: 40 a second keeps 2 tables' CreateRoutes (80/s) and the reads within
/// the API's 100 requests/s per action.
pub const JOIN_SPACING: Duration = Duration::from_millis(25);
/// How long an entry stays in the queue (a herd of up to 4,800 nodes is spread).
pub const QUEUE_TTL: Duration = Duration::from_secs(120);
/// The longest an agent waits for its turn, whatever the queue says (store input).
pub const MAX_WAIT: Duration = QUEUE_TTL;

/// When the last entry of `times` (the store's order) takes its turn (pure).
pub fn turn(times: &[SystemTime], spacing: Duration) -> Option<SystemTime> {
    let mut at: Option<SystemTime> = None;
    for t in times {
        at = Some(match at {
            None => *t,
            Some(prev) => (prev + spacing).max(*t),
        });
    }
    at
}

/// The queue of a cluster's agents.
pub fn queue_name(cluster: &str) -> String {
    format!("tencent-vpc-joins-{cluster}")
}

/// Wait for this agent's turn (at once when the store keeps no queues or fails: pacing is
/// an economy, never a reason not to start).
pub async fn wait_for_turn(store: &dyn SubnetManager, cluster: &str) {
    let times = match store.join_queue(&queue_name(cluster), QUEUE_TTL).await {
        Ok(Some(times)) => times,
        Ok(None) => return,
        Err(e) => {
            warn!(error = %crate::report(&e), "the join queue could not be read; calling the cloud API at once");
            return;
        }
    };
    let Some(at) = turn(&times, JOIN_SPACING) else {
        return;
    };
    let wait = at
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .min(MAX_WAIT);
    if wait < JOIN_SPACING {
        debug!(position = times.len(), "join queue: our turn at once");
        return;
    }
    info!(
        position = times.len(),
        wait_ms = wait.as_millis() as u64,
        "many nodes are joining at once: waiting for this node's turn at the cloud API"
    );
    tokio::time::sleep(wait).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_000 + ms)
    }

    #[test]
    fn a_herd_is_spread_and_a_paced_join_waits_for_nothing() {
        let spacing = JOIN_SPACING;
        // Five nodes in the same millisecond: 25 ms apart.
        let herd: Vec<SystemTime> = (0..5).map(|_| at(0)).collect();
        assert_eq!(turn(&herd, spacing), Some(at(100)));
        // Joins 30 ms apart are already within the budget: each at its own time.
        let paced: Vec<SystemTime> = (0..5).map(|i| at(30 * i)).collect();
        assert_eq!(turn(&paced, spacing), Some(at(120)));
        // A herd behind us does not matter, one ahead does, and a gap lets the queue drain.
        let mixed = [at(0), at(0), at(0), at(1000)];
        assert_eq!(turn(&mixed, spacing), Some(at(1000)));
        let tail = [at(0), at(0), at(0), at(10)];
        assert_eq!(turn(&tail, spacing), Some(at(75)));
        assert_eq!(turn(&[], spacing), None);
    }

    #[tokio::test]
    async fn agents_of_a_memory_store_take_turns() {
        let config = flannel_core::config::parse_and_check(
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"tencent-vpc"}}"#,
        )
        .unwrap();
        let store = crate::subnet::memory::MemoryManager::new(config);
        let name = queue_name("c1");
        let mut positions = Vec::new();
        for _ in 0..3 {
            let times = store.join_queue(&name, QUEUE_TTL).await.unwrap().unwrap();
            positions.push(times.len());
        }
        assert_eq!(positions, [1, 2, 3], "each sees those ahead and itself");
        let gone = store
            .join_queue("other", Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(gone.len(), 1);
        let after = store.join_queue("other", QUEUE_TTL).await.unwrap().unwrap();
        assert_eq!(after.len(), 1, "an expired entry is gone");
    }
}
