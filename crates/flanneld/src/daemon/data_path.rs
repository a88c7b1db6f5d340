//! The closed-loop readiness probe as the daemon holds it: started once the backend says its
//! data plane is in place, and the node ready only when the probe is answered
//! ([`crate::probe`]).

use crate::backend::Backend;
use crate::probe::{self, ProbeState, Prober};
use flannel_core::admission::PeerView;
use flannel_core::lease::Lease;
use std::sync::Arc;
use tokio::sync::watch;
use tracing::info;

pub(super) enum DataPath {
    NotStarted,
    Probing {
        updates: watch::Receiver<ProbeState>,
        /// Set once the probe has gone unanswered for [`probe::UNVERIFIED_AFTER`].
        unverified: Option<String>,
    },
    Verified,
}

impl DataPath {
    pub(super) fn verified(&self) -> bool {
        matches!(self, DataPath::Verified)
    }

    pub(super) fn probing(&self) -> bool {
        matches!(self, DataPath::Probing { .. })
    }

    /// Why the node is not ready, when the probe is the reason.
    pub(super) fn problem(&self) -> Option<&str> {
        match self {
            DataPath::Probing {
                unverified: Some(why),
                ..
            } => Some(why),
            _ => None,
        }
    }

    /// Start probing if it has not started: the backend's plan, or verified at once when it
    /// has none (or nothing to probe yet: the first node has no peer to answer).
    pub(super) fn start(
        &mut self,
        backend: &dyn Backend,
        own: &Lease,
        peers: &PeerView<'_>,
        prober: &Arc<dyn Prober>,
    ) {
        if !matches!(self, DataPath::NotStarted) {
            return;
        }
        *self = match backend.probe_plan(own, peers) {
            None => DataPath::Verified,
            Some(plan) if plan.groups.is_empty() => {
                info!(source = %plan.source, "no peer to probe the data path with: ready on the listed routes");
                DataPath::Verified
            }
            Some(plan) => {
                let groups: Vec<&str> = plan.groups.iter().map(|g| g.name.as_str()).collect();
                info!(source = %plan.source, groups = ?groups, "routes in place; probing the data path before ready");
                DataPath::Probing {
                    updates: probe::spawn(plan, Arc::clone(prober)),
                    unverified: None,
                }
            }
        };
    }

    /// The probe's next change of state (pending while not probing); None if it ended
    /// without a verdict.
    pub(super) async fn next(&mut self) -> Option<ProbeState> {
        match self {
            DataPath::Probing { updates, .. } => {
                updates.changed().await.ok()?;
                let state = updates.borrow_and_update().clone();
                Some(state)
            }
            _ => std::future::pending().await,
        }
    }

    /// Take a change of the probe's state.
    pub(super) fn take(&mut self, state: Option<ProbeState>) {
        match state {
            Some(ProbeState::Verified(after)) => {
                info!(
                    after_ms = after.as_millis() as u64,
                    "data path verified: a probe from the pod subnet was answered"
                );
                *self = DataPath::Verified;
            }
            Some(ProbeState::Unverified(why)) => {
                if let DataPath::Probing { unverified, .. } = self {
                    *unverified = Some(why);
                }
            }
            Some(ProbeState::Probing) => {}
            // The probe ended without a verdict: start again at the next status.
            None => *self = DataPath::NotStarted,
        }
    }
}
