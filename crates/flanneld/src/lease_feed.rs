//! The lease feed: the one way leases enter the daemon and the controller. It watches the
//! store (reopening a failed or ended watch with backoff, reset only once a reopened watch
//! delivers), passes every update through the lease gate (`flannel_core::admission`: nothing
//! refused reaches a backend), notices this node's own lease being revoked or taken, logs
//! each refused lease once per value, and keeps the peer and refusal gauges.
//!
//! [`LeaseFeed::next`] is cancel-safe (every await happens before any state changes), so the
//! daemon's loop can select on it beside its timers.

use crate::metrics::{Metrics, ReasonLabels};
use crate::subnet::{LeaseStream, SubnetError, SubnetManager};
use backoff::{Backoff, Delays};
use flannel_core::admission::{GateChanges, LeaseGate, PeerView, Rules};
use flannel_core::lease::{Lease, LeaseEvent};
use flannel_core::watch::WatchUpdate;
use futures::StreamExt;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rand::rngs::StdRng;
use std::sync::Arc;
use tokio::time::Instant;
use tracing::{debug, warn};

/// Pauses between watch opens: 100 ms doubling to 5 s, jittered.
pub const WATCH_RETRY: Backoff = Backoff::new(
    std::time::Duration::from_millis(100),
    std::time::Duration::from_secs(5),
);

/// What the feed has to say.
#[derive(Debug)]
pub enum FeedEvent {
    /// The admitted peers changed: added (new or changed) and removed (their last admitted
    /// form).
    Peers {
        added: Vec<Lease>,
        removed: Vec<Lease>,
    },
    /// A complete snapshot arrived after the watch was (re)opened and changed nothing: the
    /// view is fresh again.
    Fresh,
    /// This node's lease disappeared from the store, or another node wrote its key.
    OwnLost(OwnLoss),
    /// The store failed in a way a reopen does not mend (it went backwards, or refuses to be
    /// watched). The daemon stops; the controller starts over with [`LeaseFeed::restart`].
    Failed(SubnetError),
}

#[derive(Debug)]
pub enum OwnLoss {
    Revoked,
    Taken(SubnetError),
}

pub struct LeaseFeed {
    sm: Arc<dyn SubnetManager>,
    gate: LeaseGate,
    own: Option<Lease>,
    stream: Option<LeaseStream>,
    pauses: Delays<StdRng>,
    open_at: Instant,
    /// A complete snapshot arrived since the watch was last (re)opened.
    fresh: bool,
    /// The watch delivered since it was last opened (the backoff resets then).
    delivered: bool,
    peers_gauge: Gauge,
    refused_gauge: Family<ReasonLabels, Gauge>,
}

impl LeaseFeed {
    /// A feed of `sm`'s leases for the holder of `own` (None: the controller).
    pub fn new(
        sm: Arc<dyn SubnetManager>,
        rules: Rules,
        own: Option<Lease>,
        metrics: &Metrics,
    ) -> LeaseFeed {
        LeaseFeed {
            sm,
            gate: LeaseGate::new(rules, own.as_ref()),
            own,
            stream: None,
            pauses: WATCH_RETRY.delays(),
            open_at: Instant::now(),
            fresh: false,
            delivered: false,
            peers_gauge: metrics.peers.clone(),
            refused_gauge: metrics.leases_refused.clone(),
        }
    }

    /// The admitted peers.
    pub fn peers(&self) -> PeerView<'_> {
        self.gate.view()
    }

    pub fn gate(&self) -> &LeaseGate {
        &self.gate
    }

    /// The watch is up and the view is a complete, current snapshot (garbage collection
    /// acts on nothing less).
    pub fn is_fresh(&self) -> bool {
        self.stream.is_some() && self.fresh
    }

    /// This node's lease was renewed (or replaced): the gate decides again if it changed.
    pub fn set_own(&mut self, own: &Lease) -> Option<FeedEvent> {
        self.own = Some(own.clone());
        let changes = self.gate.set_own(Some(own));
        self.report(changes)
    }

    /// Forget everything and watch from a fresh snapshot (after the store went backwards).
    pub fn restart(&mut self) {
        self.gate = LeaseGate::new(self.gate.rules().clone(), self.own.as_ref());
        self.close();
        self.record_gauges();
    }

    fn close(&mut self) {
        self.stream = None;
        self.fresh = false;
        self.open_at = crate::after(self.pauses.next_delay());
    }

    /// The next change. Cancel-safe.
    pub async fn next(&mut self) -> FeedEvent {
        loop {
            if self.stream.is_none() {
                tokio::time::sleep_until(self.open_at).await;
                match self.sm.watch_leases().await {
                    Ok(s) => {
                        self.stream = Some(s);
                        self.delivered = false;
                    }
                    Err(e) if !e.is_retryable() => {
                        self.open_at = crate::after(self.pauses.next_delay());
                        return FeedEvent::Failed(e);
                    }
                    Err(e) => {
                        let wait = self.pauses.next_delay();
                        warn!(error = %crate::report(&e), retry_in = ?wait, "watching leases failed");
                        self.open_at = crate::after(wait);
                        continue;
                    }
                }
            }
            let item = match self.stream.as_mut() {
                Some(s) => s.next().await,
                None => continue,
            };
            match item {
                None => {
                    warn!("lease watch ended; reopening");
                    self.close();
                }
                Some(Err(e)) if e.is_retryable() => {
                    warn!(error = %crate::report(&e), "lease watch error; reopening");
                    self.close();
                }
                Some(Err(e)) => {
                    self.close();
                    return FeedEvent::Failed(e);
                }
                Some(Ok(update)) => {
                    if !self.delivered {
                        self.delivered = true;
                        self.pauses.reset();
                    }
                    if let Some(loss) = self.own_loss(&update) {
                        return FeedEvent::OwnLost(loss);
                    }
                    let was_fresh = self.fresh;
                    if matches!(update, WatchUpdate::Snapshot(_)) {
                        self.fresh = true;
                    }
                    let changes = self.gate.apply(update);
                    match self.report(changes) {
                        Some(ev) => return ev,
                        None if self.fresh && !was_fresh => return FeedEvent::Fresh,
                        None => {}
                    }
                }
            }
        }
    }

    /// Log new refusals, update the gauges, and say what changed (None: nothing did).
    fn report(&mut self, changes: GateChanges) -> Option<FeedEvent> {
        for (lease, refusal) in &changes.refused {
            warn!(
                subnet = %lease.key,
                public_ip = %lease.attrs.public_ip,
                backend = %lease.attrs.backend_type,
                reason = refusal.reason.label(),
                "lease refused, not installed: {refusal}"
            );
        }
        self.record_gauges();
        if changes.events.is_empty() {
            return None;
        }
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        for e in changes.events {
            match e {
                LeaseEvent::Added(l) => {
                    debug!(event = "added", subnet = %l.key, public_ip = %l.attrs.public_ip, "peer lease");
                    added.push(l);
                }
                LeaseEvent::Removed(l) => {
                    debug!(event = "removed", subnet = %l.key, public_ip = %l.attrs.public_ip, "peer lease");
                    removed.push(l);
                }
            }
        }
        Some(FeedEvent::Peers { added, removed })
    }

    fn record_gauges(&self) {
        self.peers_gauge.set(self.gate.peer_count() as i64);
        for (reason, n) in self.gate.refused_counts() {
            self.refused_gauge
                .get_or_create(&ReasonLabels {
                    reason: reason.label(),
                })
                .set(n as i64);
        }
    }

    /// Our own lease disappeared from the store (revoked), or another node wrote our key.
    fn own_loss(&self, update: &WatchUpdate) -> Option<OwnLoss> {
        let own = self.own.as_ref()?;
        let taken = |l: &Lease| {
            (l.attrs.public_ip != own.attrs.public_ip).then(|| {
                OwnLoss::Taken(SubnetError::LeaseTaken {
                    subnet: own.key.ipv4,
                    holder: l.attrs.public_ip,
                })
            })
        };
        match update {
            WatchUpdate::Events(events) => events.iter().find_map(|e| match e {
                LeaseEvent::Removed(l) if l.key == own.key => Some(OwnLoss::Revoked),
                LeaseEvent::Added(l) if l.key == own.key => taken(l),
                _ => None,
            }),
            WatchUpdate::Snapshot(leases) => match leases.iter().find(|l| l.key == own.key) {
                None => Some(OwnLoss::Revoked),
                Some(l) => taken(l),
            },
        }
    }
}

#[cfg(test)]
mod tests;
