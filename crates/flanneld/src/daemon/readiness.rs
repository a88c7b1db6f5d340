//! Readiness, as the loop decides it: subnet.env in place, the backend's data plane in place,
//! the readiness probe answered ([`super::data_path`]), and what the subnet manager is told.

use super::Node;
use crate::subnet_file;
use std::sync::Arc;
use tracing::{error, info, warn};

impl Node {
    /// Keep the probe's source address on `lo` (at start and every resync: put back when
    /// removed), whenever the backend has a probe.
    pub(super) async fn hold_probe_source(&mut self) {
        let Some(source) = self.probe_source else {
            return;
        };
        let prober = Arc::clone(&self.prober);
        if let Err(e) = prober.ensure_source(source).await {
            warn!(error = %crate::report(&e), "the readiness probe's address is not in place");
        }
    }

    /// Once the backend's data plane is in place, probe it (once per run).
    pub(super) fn start_probe(&mut self) {
        if self.backend_ready {
            self.data_path.start(
                self.backend.as_ref(),
                &self.own,
                &self.feed.peers(),
                &self.prober,
            );
        }
    }

    /// Tell the subnet manager when readiness, or the reason the node is not ready, changed
    /// (Kubernetes: the NetworkUnavailable condition and an Event); a failure is logged and
    /// retried at the next resync.
    pub(super) async fn report_ready(&mut self) {
        let ready = self.health.is_ready();
        let probe_problem = self.data_path.problem().filter(|_| self.backend_ready);
        let reason = probe_problem.map(|_| crate::probe::UNVERIFIED_REASON);
        let problem = probe_problem.map(str::to_string).or(self.problem.clone());
        let now = (ready, if ready { None } else { problem });
        if self.reported.as_ref() == Some(&now) {
            return;
        }
        match self
            .sm
            .report_ready(now.0, reason.filter(|_| !ready), now.1.as_deref())
            .await
        {
            Ok(()) => self.reported = Some(now),
            Err(e) => {
                warn!(error = %crate::report(&e), "reporting readiness to the subnet manager failed")
            }
        }
    }

    /// Write subnet.env if it is missing or differs, and mark ready once it is in place and
    /// the backend's data plane is. A failed write is logged and retried at the next resync;
    /// the node stays not ready.
    pub(super) fn ensure_subnet_env(&self) {
        let path = &self.cfg.subnet_file;
        let want = self.env.render();
        let written = std::fs::read_to_string(path).is_ok_and(|have| have == want)
            || match subnet_file::write_atomic(path, &want) {
                Ok(()) => {
                    info!(path = %path.display(), "wrote subnet file");
                    true
                }
                Err(e) => {
                    error!(error = %crate::Report(&e), "subnet file not written; not ready");
                    false
                }
            };
        let ready = written && self.backend_ready && self.data_path.verified();
        if ready != self.health.is_ready() {
            if ready {
                info!("ready");
            } else if written && !self.backend_ready {
                warn!("not ready: the backend's data plane is not in place yet");
            }
            self.health.set_ready(ready);
        }
    }
}
