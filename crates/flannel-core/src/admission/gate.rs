//! The lease gate: the lease set as a node sees it, each lease held once with its verdict,
//! re-decided incrementally (a change touches only the leases it overlaps).

use super::block::{nested, Block, BlockIndex};
use super::rules::Rules;
use super::view::{GatePeers, PeerView};
use super::{Family, Part, Reason, Refusal, Verdict};
use crate::lease::{Lease, LeaseEvent, SubnetKey};
use crate::watch::WatchUpdate;
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// This node's facts for the two checks that are its own.
#[derive(Debug, Clone, PartialEq)]
struct Own {
    key: SubnetKey,
    addresses: Vec<IpAddr>,
}

impl Own {
    fn of(lease: &Lease) -> Own {
        let mut addresses = Vec::new();
        if !lease.attrs.public_ip.is_unspecified() {
            addresses.push(IpAddr::V4(lease.attrs.public_ip));
        }
        addresses.extend(lease.attrs.public_ipv6.map(IpAddr::V6));
        Own {
            key: lease.key,
            addresses,
        }
    }
}

/// Per family: the shape-valid block (what takes part in overlap decisions), nothing (an
/// absent part), or the refusal of a check that looks at the lease alone.
type Blocks = [Result<Option<Block>, Refusal>; 2];

/// A lease as the gate holds it: the one copy of it in the daemon. Boxed in the map (and its
/// rare partial copy boxed too): a B-tree node holds 11 values inline, so unboxed entries
/// cost a mostly empty node's worth of bytes per lease (measured: ~1 KB a lease at 5,000).
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) lease: Lease,
    blocks: Blocks,
    verdict: Verdict,
    /// The lease without its refused parts, when some part is refused and another admitted.
    partial: Option<Box<Lease>>,
}

impl Entry {
    /// The lease as backends see it: only admitted parts; None when nothing is admitted.
    pub(crate) fn view(&self) -> Option<&Lease> {
        self.verdict
            .used()
            .then(|| self.partial.as_deref().unwrap_or(&self.lease))
    }
}

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

fn slot(f: Family) -> usize {
    match f {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

/// What a batch changed in the admitted view.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GateChanges {
    /// Added or changed peers (as admitted), and removed ones (their last admitted form).
    pub events: Vec<LeaseEvent>,
    /// Leases refused now that were not before, or not for this value or reason.
    pub refused: Vec<(Lease, Refusal)>,
}

/// A lease's state before a batch, to tell what the batch changed.
struct Before {
    view: Option<Lease>,
    lease: Lease,
    refusal: Option<Refusal>,
}

/// The lease set as this node sees it, and what of it is admitted. Holds each lease once;
/// backends read the admitted peers through [`LeaseGate::peers`].
#[derive(Debug, Clone)]
pub struct LeaseGate {
    rules: Rules,
    own: Option<Own>,
    entries: BTreeMap<SubnetKey, Box<Entry>>,
    index: [BlockIndex; 2],
    refused_by: BTreeMap<Reason, usize>,
    peers: usize,
}

impl LeaseGate {
    /// A gate for a node holding `own` (None: the controller, which holds no lease).
    pub fn new(rules: Rules, own: Option<&Lease>) -> LeaseGate {
        LeaseGate {
            rules,
            own: own.map(Own::of),
            entries: BTreeMap::new(),
            index: Default::default(),
            refused_by: BTreeMap::new(),
            peers: 0,
        }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    fn own_key(&self) -> Option<SubnetKey> {
        self.own.as_ref().map(|o| o.key)
    }

    /// The admitted peers (this node's own lease excluded), only their admitted parts, in
    /// key order.
    pub fn peers(&self) -> GatePeers<'_> {
        GatePeers::new(self.entries.values(), self.own_key())
    }

    /// How many peers are admitted.
    pub fn peer_count(&self) -> usize {
        self.peers
    }

    /// A peer as admitted, by key.
    pub fn peer(&self, key: &SubnetKey) -> Option<&Lease> {
        if self.own_key() == Some(*key) {
            return None;
        }
        self.entries.get(key).and_then(|e| e.view())
    }

    /// Every lease in the store (own included) as received.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> + '_ {
        self.entries.values().map(|e| &e.lease)
    }

    /// How many leases the store holds (own included).
    pub fn lease_count(&self) -> usize {
        self.entries.len()
    }

    /// The refused leases (a part of them) with the first rule each broke.
    pub fn refused(&self) -> impl Iterator<Item = (&Lease, &Refusal)> + '_ {
        let own = self.own_key();
        self.entries
            .values()
            .filter(move |e| Some(e.lease.key) != own)
            .filter_map(|e| e.verdict.refusal().map(|r| (&e.lease, r)))
    }

    /// Refused leases per reason (every reason present, zeros included).
    pub fn refused_counts(&self) -> BTreeMap<Reason, usize> {
        Reason::ALL
            .iter()
            .map(|r| (*r, self.refused_by.get(r).copied().unwrap_or(0)))
            .collect()
    }

    /// The verdict on a lease in the set.
    pub fn verdict(&self, key: &SubnetKey) -> Option<&Verdict> {
        self.entries.get(key).map(|e| &e.verdict)
    }

    /// Apply a watch update.
    pub fn apply(&mut self, update: WatchUpdate) -> GateChanges {
        match update {
            WatchUpdate::Snapshot(leases) => self.reset(leases),
            WatchUpdate::Events(events) => self.update(events),
        }
    }

    /// Replace the whole set.
    pub fn reset(&mut self, leases: Vec<Lease>) -> GateChanges {
        let next: BTreeMap<SubnetKey, Lease> = leases.into_iter().map(|l| (l.key, l)).collect();
        let mut batch: Vec<(SubnetKey, Option<Lease>)> = self
            .entries
            .keys()
            .filter(|k| !next.contains_key(k))
            .map(|k| (*k, None))
            .collect();
        for (k, l) in next {
            let same = self
                .entries
                .get(&k)
                .is_some_and(|e| e.lease.attrs == l.attrs);
            if !same {
                batch.push((k, Some(l)));
            }
        }
        self.change(batch)
    }

    /// Apply deltas: Added upserts, Removed deletes (the key is what counts).
    pub fn update(&mut self, events: Vec<LeaseEvent>) -> GateChanges {
        let batch = events
            .into_iter()
            .map(|e| match e {
                LeaseEvent::Added(l) => (l.key, Some(l)),
                LeaseEvent::Removed(l) => (l.key, None),
            })
            .collect();
        self.change(batch)
    }

    /// This node's lease is now `own` (a new lease, or other attributes): decide again.
    pub fn set_own(&mut self, own: Option<&Lease>) -> GateChanges {
        let next = own.map(Own::of);
        if next == self.own {
            return GateChanges::default();
        }
        let all: BTreeSet<SubnetKey> = self.entries.keys().copied().collect();
        let before = self.before(&all);
        for k in &all {
            self.count(k, -1);
        }
        self.own = next;
        self.redecide(&all);
        for k in &all {
            self.count(k, 1);
        }
        self.diff(&all, before)
    }

    /// The state of `keys` as peers (this node's own lease is none).
    fn before(&self, keys: &BTreeSet<SubnetKey>) -> BTreeMap<SubnetKey, Before> {
        let own = self.own_key();
        keys.iter()
            .filter_map(|k| {
                self.entries.get(k).map(|e| {
                    let b = Before {
                        view: e.view().filter(|_| Some(*k) != own).cloned(),
                        lease: e.lease.clone(),
                        refusal: e.verdict.refusal().cloned(),
                    };
                    (*k, b)
                })
            })
            .collect()
    }

    /// Add (`sign` 1) or take away (-1) what the lease under `k` counts for.
    fn count(&mut self, k: &SubnetKey, sign: i8) {
        let Some(e) = self.entries.get(k) else { return };
        if self.own_key() == Some(*k) {
            return;
        }
        let peer = usize::from(e.verdict.used());
        let reason = e.verdict.refusal().map(|r| r.reason);
        if sign > 0 {
            self.peers += peer;
            if let Some(r) = reason {
                *self.refused_by.entry(r).or_default() += 1;
            }
        } else {
            self.peers -= peer;
            if let Some(n) = reason.and_then(|r| self.refused_by.get_mut(&r)) {
                *n -= 1;
            }
        }
    }

    fn change(&mut self, batch: Vec<(SubnetKey, Option<Lease>)>) -> GateChanges {
        // Check the new leases first, then gather every lease whose verdict may change: the
        // changed ones, and those overlapping an old or a new block of a changed lease.
        let batch: Vec<(SubnetKey, Option<(Lease, Blocks)>)> = batch
            .into_iter()
            .map(|(k, l)| {
                let checked = l.map(|l| {
                    let blocks = FAMILIES.map(|f| self.rules.check_part(f, &l));
                    (l, blocks)
                });
                (k, checked)
            })
            .collect();
        let mut affected = BTreeSet::new();
        for (k, new) in &batch {
            affected.insert(*k);
            if let Some(e) = self.entries.get(k) {
                self.collect_overlapping(&e.blocks, &mut affected);
            }
            if let Some((_, blocks)) = new {
                self.collect_overlapping(blocks, &mut affected);
            }
        }
        let before = self.before(&affected);
        for k in &affected {
            self.count(k, -1);
        }
        for (k, new) in batch {
            if let Some(old) = self.entries.remove(&k) {
                self.unindex(&old);
            }
            if let Some((lease, blocks)) = new {
                for f in FAMILIES {
                    if let Ok(Some(b)) = &blocks[slot(f)] {
                        self.index[slot(f)].insert(*b, k);
                    }
                }
                let entry = Entry {
                    lease,
                    blocks,
                    verdict: Verdict {
                        v4: Part::Absent,
                        v6: Part::Absent,
                    },
                    partial: None,
                };
                self.entries.insert(k, Box::new(entry));
            }
        }
        self.redecide(&affected);
        for k in &affected {
            self.count(k, 1);
        }
        self.diff(&affected, before)
    }

    fn collect_overlapping(&self, blocks: &Blocks, into: &mut BTreeSet<SubnetKey>) {
        for f in FAMILIES {
            if let (Ok(Some(b)), Some(fr)) = (&blocks[slot(f)], self.rules.family(f)) {
                into.extend(
                    self.index[slot(f)]
                        .overlapping(*b, fr)
                        .into_iter()
                        .map(|(_, k)| k),
                );
            }
        }
    }

    fn unindex(&mut self, e: &Entry) {
        for f in FAMILIES {
            if let Ok(Some(b)) = &e.blocks[slot(f)] {
                self.index[slot(f)].remove(*b, &e.lease.key);
            }
        }
    }

    /// Decide the verdicts of `keys` again from the index.
    fn redecide(&mut self, keys: &BTreeSet<SubnetKey>) {
        for k in keys {
            let Some(e) = self.entries.get(k) else {
                continue;
            };
            let is_own = self.own_key() == Some(*k);
            let mut parts = [Part::Absent, Part::Absent];
            for f in FAMILIES {
                parts[slot(f)] = match &e.blocks[slot(f)] {
                    Ok(None) => Part::Absent,
                    Err(r) => Part::Refused(r.clone()),
                    Ok(Some(b)) if is_own => {
                        let _ = b;
                        Part::Admitted
                    }
                    Ok(Some(b)) => self.overlap_verdict(f, *b, k),
                };
                if !is_own && parts[slot(f)] == Part::Admitted {
                    if let Some(r) = self.claims_own_address(f, &e.lease) {
                        parts[slot(f)] = Part::Refused(r);
                    }
                }
            }
            let [v4, v6] = parts;
            let verdict = Verdict { v4, v6 };
            let partial = (verdict.used() && verdict.refusal().is_some()).then(|| {
                let mut l = e.lease.clone();
                if verdict.v4.refusal().is_some() {
                    l.key.ipv4 = Ipv4Net::default();
                }
                if verdict.v6.refusal().is_some() {
                    l.key.ipv6 = None;
                }
                Box::new(l)
            });
            let e = self.entries.get_mut(k).expect("looked up above");
            e.verdict = verdict;
            e.partial = partial;
        }
    }

    /// A peer whose address in family `f` is this node's own.
    fn claims_own_address(&self, f: Family, lease: &Lease) -> Option<Refusal> {
        let own = self.own.as_ref()?;
        let (field, address) = match f {
            Family::V4 => ("PublicIP", Some(IpAddr::V4(lease.attrs.public_ip))),
            Family::V6 => ("PublicIPv6", lease.attrs.public_ipv6.map(IpAddr::V6)),
        };
        let a = address.filter(|a| own.addresses.contains(a))?;
        Some(Refusal {
            family: f,
            reason: Reason::PublicIp,
            detail: format!("{field} {a} is this node's own address"),
        })
    }

    /// The overlap rule for the shape-valid block `b` of the peer `k`.
    fn overlap_verdict(&self, f: Family, b: Block, k: &SubnetKey) -> Part {
        let fr = self
            .rules
            .family(f)
            .expect("a block exists only for an enabled family");
        let others: Vec<(Block, SubnetKey)> = self.index[slot(f)]
            .overlapping(b, fr)
            .into_iter()
            .filter(|(_, o)| o != k)
            .collect();
        let refuse = |reason, other: &SubnetKey| {
            let whose = if reason == Reason::OverlapsOwn {
                "this node's lease"
            } else {
                "lease"
            };
            Part::Refused(Refusal {
                family: f,
                reason,
                detail: format!("{f} subnet {} overlaps {whose} {other}", fr.show(b)),
            })
        };
        // This node's lease, whatever its shape (it is used locally in any case).
        if let Some(own) = self.own_key() {
            let own_block = match f {
                Family::V4 => own.ipv4_subnet().map(|n| Block::v4(n.trunc())),
                Family::V6 => own.ipv6.map(|n| Block::v6(n.trunc())),
            };
            if own_block.is_some_and(|o| nested(o, b, fr.bits)) {
                return refuse(Reason::OverlapsOwn, &own);
            }
        }
        let Some((_, first)) = others.first() else {
            return Part::Admitted;
        };
        if fr.is_canonical(b) && !others.iter().any(|(ob, _)| fr.is_canonical(*ob)) {
            return Part::Admitted;
        }
        // Name the winner if there is one, else the first lease in the way.
        let winner = others
            .iter()
            .find(|(ob, _)| fr.is_canonical(*ob))
            .map_or(first, |(_, o)| o);
        refuse(Reason::Overlap, winner)
    }

    /// The events and new refusals between `before` and now. A peer whose admitted key
    /// changed (a part admitted or refused) is removed under its old key and added under the
    /// new one, so a consumer keyed by subnet never holds both.
    fn diff(
        &self,
        keys: &BTreeSet<SubnetKey>,
        mut before: BTreeMap<SubnetKey, Before>,
    ) -> GateChanges {
        let own = self.own_key();
        let mut out = GateChanges::default();
        for k in keys {
            let was = before.remove(k);
            let now = self.entries.get(k);
            let old_view = was.as_ref().and_then(|b| b.view.as_ref());
            let new_view = now.and_then(|e| e.view()).filter(|_| Some(*k) != own);
            match (old_view, new_view) {
                (Some(o), Some(n)) if o == n => {}
                (Some(o), Some(n)) if o.key != n.key => {
                    out.events.push(LeaseEvent::Removed(o.clone()));
                    out.events.push(LeaseEvent::Added(n.clone()));
                }
                (_, Some(n)) => out.events.push(LeaseEvent::Added(n.clone())),
                (Some(o), None) => out.events.push(LeaseEvent::Removed(o.clone())),
                (None, None) => {}
            }
            if Some(*k) == own {
                continue;
            }
            if let Some((e, r)) = now.and_then(|e| e.verdict.refusal().map(|r| (e, r))) {
                let known = was.as_ref().is_some_and(|b| {
                    b.refusal.as_ref() == Some(r) && b.lease.attrs == e.lease.attrs
                });
                if !known {
                    out.refused.push((e.lease.clone(), r.clone()));
                }
            }
        }
        out
    }
}

impl LeaseGate {
    pub fn view(&self) -> PeerView<'_> {
        PeerView::of(self)
    }
}

impl LeaseGate {
    /// The verdicts, the gate consumed.
    pub(crate) fn into_verdicts(self) -> BTreeMap<SubnetKey, Verdict> {
        self.entries
            .into_iter()
            .map(|(k, e)| (k, e.verdict))
            .collect()
    }
}
