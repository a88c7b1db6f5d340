//! The admitted peers as backends read them: borrowed from the gate, which holds the one copy
//! of each lease.

use super::gate::{Entry, LeaseGate};
use crate::lease::{Lease, SubnetKey};

/// The admitted peers as a backend reads them: borrowed from the gate, which holds the one
/// copy of each lease.
#[derive(Debug, Clone, Copy)]
pub struct PeerView<'a>(Source<'a>);

#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    Gate(&'a LeaseGate),
    Unchecked(&'a [Lease]),
}

impl<'a> PeerView<'a> {
    pub(crate) fn of(gate: &'a LeaseGate) -> PeerView<'a> {
        PeerView(Source::Gate(gate))
    }

    /// Leases taken as they are, without admission: for tests and benchmarks that drive a
    /// backend directly. The daemon's view always comes from its gate.
    pub fn unchecked(peers: &'a [Lease]) -> PeerView<'a> {
        PeerView(Source::Unchecked(peers))
    }

    /// The peers, only their admitted parts.
    pub fn iter(&self) -> PeerIter<'a> {
        match self.0 {
            Source::Gate(g) => PeerIter::Gate(g.peers()),
            Source::Unchecked(ls) => PeerIter::Unchecked(ls.iter()),
        }
    }

    pub fn len(&self) -> usize {
        match self.0 {
            Source::Gate(g) => g.peer_count(),
            Source::Unchecked(ls) => ls.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A peer by its store key.
    pub fn get(&self, key: &SubnetKey) -> Option<&'a Lease> {
        match self.0 {
            Source::Gate(g) => g.peer(key),
            Source::Unchecked(ls) => ls.iter().find(|l| l.key == *key),
        }
    }
}

/// The admitted peers of a gate.
#[derive(Debug, Clone)]
pub struct GatePeers<'a> {
    entries: std::collections::btree_map::Values<'a, SubnetKey, Box<Entry>>,
    own: Option<SubnetKey>,
}

impl<'a> GatePeers<'a> {
    pub(crate) fn new(
        entries: std::collections::btree_map::Values<'a, SubnetKey, Box<Entry>>,
        own: Option<SubnetKey>,
    ) -> GatePeers<'a> {
        GatePeers { entries, own }
    }
}

impl<'a> Iterator for GatePeers<'a> {
    type Item = &'a Lease;

    fn next(&mut self) -> Option<&'a Lease> {
        let own = self.own;
        self.entries
            .by_ref()
            .filter(|e| Some(e.lease.key) != own)
            .find_map(|e| e.view())
    }
}

/// The peers of a [`PeerView`].
#[derive(Debug, Clone)]
pub enum PeerIter<'a> {
    Gate(GatePeers<'a>),
    Unchecked(std::slice::Iter<'a, Lease>),
}

impl<'a> Iterator for PeerIter<'a> {
    type Item = &'a Lease;

    fn next(&mut self) -> Option<&'a Lease> {
        match self {
            PeerIter::Gate(g) => g.next(),
            PeerIter::Unchecked(i) => i.next(),
        }
    }
}
