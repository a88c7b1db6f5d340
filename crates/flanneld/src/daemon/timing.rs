//! The daemon's clocks: the jittered resync, lease renewal, and when a kernel change brings
//! the repair.

use crate::kernel::monitor::KernelChanges;
use flannel_core::lease::{Expiry, Lease};
use std::time::{Duration, SystemTime};

/// The resync period, spread ±10 % so nodes do not tick together.
pub(super) fn jittered(period: Duration) -> Duration {
    backoff::spread(period, 0.1)
}

/// How long kernel notifications are gathered before the repair runs.
pub(super) const KERNEL_REPAIR_DEBOUNCE: Duration = Duration::from_millis(50);
/// The least time between two resyncs brought forward by kernel notifications (our own
/// writes notify too: a repair must not feed itself).
pub(super) const KERNEL_REPAIR_GAP: Duration = Duration::from_millis(250);

/// The next kernel change, or None when the notifications ended.
pub(super) async fn next_change(changes: &mut Option<KernelChanges>) -> Option<()> {
    use futures::StreamExt;
    match changes {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// The pause after a failed lease renewal (upstream's), for a lease with a long margin.
pub(super) const RENEW_RETRY: Duration = Duration::from_secs(60);

/// Time until the lease should be renewed (expiry minus margin); a reservation never is.
pub(super) fn renew_delay(own: &Lease, margin: Duration) -> Duration {
    match own.expiry {
        Expiry::Never | Expiry::Node => Duration::from_secs(365 * 24 * 3600),
        // Renewing tells us the real expiry.
        Expiry::Unknown => Duration::from_secs(60),
        Expiry::At(t) => t
            .checked_sub(margin)
            .and_then(|due| due.duration_since(SystemTime::now()).ok())
            .unwrap_or(Duration::ZERO),
    }
}
