//! What a subnet manager's watch yields: a full snapshot, or a batch of deltas. The lease
//! gate (`admission`) turns them into the admitted peer view.
//!
//! Upstream represents "snapshot" and "deltas" as one struct and treats an empty delta batch
//! as an empty snapshot, so a single unparseable key made every peer look removed. Here the
//! two are different variants, and an empty batch changes nothing.

use crate::lease::{Lease, LeaseEvent};

/// What a subnet manager's watch yields.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchUpdate {
    /// The complete set of leases (first list, or a re-list after compaction).
    Snapshot(Vec<Lease>),
    /// Changes since the previous update.
    Events(Vec<LeaseEvent>),
}
