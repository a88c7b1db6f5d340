//! What the daemon records about itself: the reconcile span, lease and sync metrics.

use crate::backend::{Backend, Trigger};
use crate::health::Health;
use crate::metrics::{LeaseLabels, ResultLabels};
use flannel_core::lease::{Expiry, Lease};
use std::time::SystemTime;

/// One reconcile's span: every line it logs names the backend and why it ran.
pub(super) fn reconcile_span(backend: &dyn Backend, trigger: Trigger<'_>) -> tracing::Span {
    tracing::info_span!(
        "reconcile",
        backend = backend.kind().name(),
        trigger = trigger.name()
    )
}

pub(super) fn record_lease(health: &Health, own: &Lease, backend: &str) {
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
        Expiry::Never | Expiry::Node | Expiry::Unknown => 0.0,
        Expiry::At(t) => t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    };
    health.metrics.lease_expiry.set(expiry);
}

pub(super) fn record_sync<T, E>(health: &Health, r: &Result<T, E>) {
    let result = if r.is_ok() { "ok" } else { "error" };
    health
        .metrics
        .backend_syncs
        .get_or_create(&ResultLabels { result })
        .inc();
}
