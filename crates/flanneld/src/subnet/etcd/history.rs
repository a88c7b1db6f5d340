//! What this manager has seen of the store's identity and history, to notice a store that
//! went backwards: wiped and restarted empty, or restored from an older backup. Its
//! revision then falls below one already seen (or its cluster ID changes), and every lease
//! this node holds or has watched may now be free for another node to take.

use std::sync::Mutex;

/// The store went backwards.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rewind {
    #[error("the etcd cluster ID changed from {was:x} to {now:x}")]
    ClusterChanged { was: u64, now: u64 },
    #[error("the etcd revision went back from {was} to {now}")]
    RevisionBackwards { was: i64, now: i64 },
}

#[derive(Debug, Default)]
pub(super) struct StoreHistory {
    seen: Mutex<Option<(u64, i64)>>,
}

impl StoreHistory {
    /// Record a linearizable read's header. A rewind is reported once: the new store
    /// becomes the baseline, so a consumer that starts over (re-lists) is not refused again.
    pub(super) fn observe(&self, cluster_id: u64, revision: i64) -> Result<(), Rewind> {
        let mut seen = self.seen.lock().unwrap();
        let verdict = match *seen {
            Some((was, _)) if was != cluster_id => Err(Rewind::ClusterChanged {
                was,
                now: cluster_id,
            }),
            Some((_, was)) if revision < was => {
                Err(Rewind::RevisionBackwards { was, now: revision })
            }
            Some((_, was)) => {
                *seen = Some((cluster_id, was.max(revision)));
                return Ok(());
            }
            None => Ok(()),
        };
        *seen = Some((cluster_id, revision));
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_and_equal_revisions_pass_and_raise_the_high_water() {
        let h = StoreHistory::default();
        assert_eq!(h.observe(7, 10), Ok(()));
        assert_eq!(h.observe(7, 10), Ok(()));
        assert_eq!(h.observe(7, 25), Ok(()));
        assert_eq!(
            h.observe(7, 24),
            Err(Rewind::RevisionBackwards { was: 25, now: 24 }),
            "the high water is the highest revision seen"
        );
    }

    #[test]
    fn a_lower_revision_is_a_rewind_reported_once() {
        let h = StoreHistory::default();
        h.observe(7, 40).unwrap();
        assert_eq!(
            h.observe(7, 3),
            Err(Rewind::RevisionBackwards { was: 40, now: 3 })
        );
        assert_eq!(h.observe(7, 4), Ok(()), "the new store is the baseline");
    }

    #[test]
    fn another_cluster_is_a_rewind_whatever_its_revision() {
        let h = StoreHistory::default();
        h.observe(0xaa, 5).unwrap();
        let e = h.observe(0xbb, 900).unwrap_err();
        assert_eq!(e.to_string(), "the etcd cluster ID changed from aa to bb");
        assert_eq!(h.observe(0xbb, 901), Ok(()));
    }
}
