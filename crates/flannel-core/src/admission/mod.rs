//! Lease admission: which parts of which leases a node may turn into kernel routes,
//! neighbour and FDB entries or VPC routes. Everything that enters from the lease store is
//! untrusted until it passes here; a refused part is never installed.
//!
//! The verdict on a lease is a function of the rules (the network config) and the whole lease
//! set, never of the order leases arrived in, so every node admits the same leases (the
//! tencent-vpc Fallback split depends on that). Only two checks are this node's own, applied on
//! top: a peer overlapping this node's lease, and a peer claiming this node's address, are
//! refused here (the node's own lease is always used locally).
//!
//! Per enabled address family, a lease's part is
//! - **absent** (`0.0.0.0/0` in an IPv6-only lease, no IPv6 subnet, or a disabled family):
//!   ignored, as upstream does;
//! - **refused** when its subnet has host bits, is not inside the family's Network with a
//!   longer prefix, is smaller than /30 (/126), its address is unusable (unspecified,
//!   loopback, multicast, broadcast, 0/8, 240/4, inside a pod Network), a VtepMAC it carries
//!   is not unicast, a tencent-vpc PrivateIP is not an address inside the VPC (when the VPC's
//!   CIDRs are known), or it overlaps another lease and is not the one that wins: where
//!   subnets overlap, one of SubnetLen size within [SubnetMin, SubnetMax] wins over the
//!   others (flannel's own allocator hands out exactly those), otherwise every overlapping
//!   part is refused;
//! - **admitted** otherwise.
//!
//! Overlaps are found through a prefix index (CIDR blocks either nest or are disjoint: the
//! blocks containing one are found by masking, the ones inside it by a range query), and a
//! change re-decides only the leases it overlaps, so a batch costs O(changes · (log n + 32)).

mod block;
mod gate;
mod rules;
mod view;

pub use gate::{GateChanges, LeaseGate};
pub use rules::Rules;
pub use view::{GatePeers, PeerIter, PeerView};

use crate::lease::{Lease, SubnetKey};
use std::collections::BTreeMap;
use std::fmt;

/// How the lease store hands out subnets, which decides who wins an overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// flannel's allocator (etcd, local): leases are SubnetLen blocks in [SubnetMin,
    /// SubnetMax], and such a block wins over leases of other shapes overlapping it.
    Pool,
    /// Kubernetes podCIDRs, of any size: overlapping leases are all refused.
    External,
}

/// One address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Why a lease part is refused; the label of the `flannel_leases_refused` gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    HostBits,
    OutsideNetwork,
    TooSmall,
    Overlap,
    OverlapsOwn,
    PublicIp,
    VtepMac,
    PrivateIp,
    /// A wireguard lease without a usable PublicKey or Port.
    WireguardKey,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::HostBits,
        Reason::OutsideNetwork,
        Reason::TooSmall,
        Reason::Overlap,
        Reason::OverlapsOwn,
        Reason::PublicIp,
        Reason::VtepMac,
        Reason::PrivateIp,
        Reason::WireguardKey,
    ];

    pub fn label(&self) -> &'static str {
        match self {
            Reason::HostBits => "host_bits",
            Reason::OutsideNetwork => "outside_network",
            Reason::TooSmall => "too_small",
            Reason::Overlap => "overlap",
            Reason::OverlapsOwn => "overlaps_own",
            Reason::PublicIp => "public_ip",
            Reason::VtepMac => "vtep_mac",
            Reason::PrivateIp => "private_ip",
            Reason::WireguardKey => "wireguard_key",
        }
    }
}

/// A refused part: the rule it broke, in words that name the values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub family: Family,
    pub reason: Reason,
    pub detail: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

/// The verdict on one family's part of a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Absent,
    Admitted,
    Refused(Refusal),
}

impl Part {
    fn refusal(&self) -> Option<&Refusal> {
        match self {
            Part::Refused(r) => Some(r),
            _ => None,
        }
    }
}

/// The verdict on a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub v4: Part,
    pub v6: Part,
}

impl Verdict {
    /// Some part is admitted: the lease is used (for those parts).
    pub fn used(&self) -> bool {
        self.v4 == Part::Admitted || self.v6 == Part::Admitted
    }

    /// The refusals, IPv4's first.
    pub fn refusals(&self) -> impl Iterator<Item = &Refusal> {
        self.v4.refusal().into_iter().chain(self.v6.refusal())
    }

    /// The first refusal: what the lease is counted under.
    pub fn refusal(&self) -> Option<&Refusal> {
        self.refusals().next()
    }
}

/// The verdict on every lease of `leases` for a node holding `own` (None: no lease), from
/// scratch: what [`LeaseGate`] arrives at whatever order the leases came in.
pub fn evaluate(
    rules: &Rules,
    own: Option<&Lease>,
    leases: &[Lease],
) -> BTreeMap<SubnetKey, Verdict> {
    let mut gate = LeaseGate::new(rules.clone(), own);
    gate.reset(leases.to_vec());
    gate.into_verdicts()
}

#[cfg(test)]
mod tests;
