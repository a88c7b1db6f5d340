//! The lease watcher: turns what a subnet manager's watch delivers (a full snapshot, or a
//! batch of deltas) into Added/Removed events about *peers*, with this node's own lease
//! dropped.
//!
//! Upstream represents "snapshot" and "deltas" as one struct and treats an empty delta batch
//! as an empty snapshot, so a single unparseable key made every peer look removed. Here the
//! two are different variants, and an empty batch changes nothing.

use crate::lease::{Lease, LeaseEvent, SubnetKey};
use std::collections::BTreeMap;

/// What a subnet manager's watch yields.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchUpdate {
    /// The complete set of leases (first list, or a re-list after compaction).
    Snapshot(Vec<Lease>),
    /// Changes since the previous update.
    Events(Vec<LeaseEvent>),
}

/// Tracks the peer leases this node knows about.
#[derive(Debug, Clone, Default)]
pub struct LeaseWatcher {
    own: Option<SubnetKey>,
    peers: BTreeMap<SubnetKey, Lease>,
}

impl LeaseWatcher {
    pub fn new(own: Option<SubnetKey>) -> Self {
        LeaseWatcher {
            own,
            peers: BTreeMap::new(),
        }
    }

    /// The peers currently known, ordered by subnet.
    pub fn peers(&self) -> impl Iterator<Item = &Lease> {
        self.peers.values()
    }

    fn is_own(&self, l: &Lease) -> bool {
        self.own.is_some_and(|own| own == l.key)
    }

    /// Apply one update and return the peer events it implies.
    pub fn apply(&mut self, update: WatchUpdate) -> Vec<LeaseEvent> {
        match update {
            WatchUpdate::Snapshot(leases) => self.reset(leases),
            WatchUpdate::Events(events) => self.update(events),
        }
    }

    /// Replace the known set: Added for new or changed peers, Removed for vanished ones.
    /// (Upstream reports only new subnets; a peer whose attributes changed while the watch
    /// was down would keep stale routes.)
    pub fn reset(&mut self, leases: Vec<Lease>) -> Vec<LeaseEvent> {
        let mut next = BTreeMap::new();
        let mut events = Vec::new();
        for l in leases {
            if self.is_own(&l) {
                continue;
            }
            match self.peers.get(&l.key) {
                Some(old) if old.attrs == l.attrs => {}
                _ => events.push(LeaseEvent::Added(l.clone())),
            }
            next.insert(l.key, l);
        }
        for (k, old) in std::mem::take(&mut self.peers) {
            if !next.contains_key(&k) {
                events.push(LeaseEvent::Removed(old));
            }
        }
        self.peers = next;
        events
    }

    /// Apply deltas. Added upserts, Removed deletes; both pass through (a Removed for an
    /// unknown peer still passes, so a backend can clean up after a restart). A Removed
    /// carries the last known attributes of the peer: a store's delete event has only a key.
    pub fn update(&mut self, events: Vec<LeaseEvent>) -> Vec<LeaseEvent> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            if self.is_own(e.lease()) {
                continue;
            }
            match &e {
                LeaseEvent::Added(l) => {
                    self.peers.insert(l.key, l.clone());
                }
                LeaseEvent::Removed(l) => {
                    if let Some(known) = self.peers.remove(&l.key) {
                        out.push(LeaseEvent::Removed(known));
                        continue;
                    }
                }
            }
            out.push(e);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{Expiry, LeaseAttrs};

    fn lease(sn: &str, ip: &str) -> Lease {
        Lease {
            key: SubnetKey::v4(sn.parse().unwrap()),
            attrs: LeaseAttrs::new(ip.parse().unwrap()),
            expiry: Expiry::Never,
        }
    }

    #[test]
    fn snapshot_then_deltas_drop_own_lease() {
        let own = lease("10.0.1.0/24", "1.1.1.1");
        let mut w = LeaseWatcher::new(Some(own.key));
        let a = lease("10.0.2.0/24", "1.1.1.2");
        let b = lease("10.0.3.0/24", "1.1.1.3");
        let ev = w.apply(WatchUpdate::Snapshot(vec![
            own.clone(),
            a.clone(),
            b.clone(),
        ]));
        assert_eq!(
            ev,
            vec![LeaseEvent::Added(a.clone()), LeaseEvent::Added(b.clone())]
        );
        // Same snapshot again: nothing changes.
        assert!(w
            .apply(WatchUpdate::Snapshot(vec![
                own.clone(),
                a.clone(),
                b.clone()
            ]))
            .is_empty());
        // b vanished, c appeared.
        let c = lease("10.0.4.0/24", "1.1.1.4");
        let ev = w.apply(WatchUpdate::Snapshot(vec![a.clone(), c.clone()]));
        assert_eq!(
            ev,
            vec![LeaseEvent::Added(c.clone()), LeaseEvent::Removed(b.clone())]
        );
        let ev = w.apply(WatchUpdate::Events(vec![
            LeaseEvent::Removed(a.clone()),
            LeaseEvent::Added(own.clone()),
        ]));
        assert_eq!(ev, vec![LeaseEvent::Removed(a)]);
        assert_eq!(w.peers().cloned().collect::<Vec<_>>(), vec![c]);
    }

    #[test]
    fn removed_carries_the_known_attributes() {
        let mut w = LeaseWatcher::new(None);
        let full = lease("10.0.2.0/24", "1.1.1.2");
        w.apply(WatchUpdate::Snapshot(vec![full.clone()]));
        let key_only = lease("10.0.2.0/24", "0.0.0.0");
        assert_eq!(
            w.apply(WatchUpdate::Events(vec![LeaseEvent::Removed(key_only)])),
            vec![LeaseEvent::Removed(full)]
        );
    }

    #[test]
    fn empty_event_batch_removes_nobody_upstream_bug() {
        let mut w = LeaseWatcher::new(None);
        w.apply(WatchUpdate::Snapshot(vec![lease("10.0.2.0/24", "1.1.1.2")]));
        assert!(w.apply(WatchUpdate::Events(vec![])).is_empty());
        assert_eq!(w.peers().count(), 1);
    }

    #[test]
    fn changed_attributes_in_snapshot_are_reported() {
        let mut w = LeaseWatcher::new(None);
        w.apply(WatchUpdate::Snapshot(vec![lease("10.0.2.0/24", "1.1.1.2")]));
        let moved = lease("10.0.2.0/24", "1.1.1.9");
        assert_eq!(
            w.apply(WatchUpdate::Snapshot(vec![moved.clone()])),
            vec![LeaseEvent::Added(moved)]
        );
    }
}
