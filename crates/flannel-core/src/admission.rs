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

use crate::config::{Ipv4Pool, Ipv6Pool, ValidatedNetConfig};
use crate::lease::{Lease, LeaseEvent, SubnetKey};
use crate::mac::Mac;
use crate::watch::WatchUpdate;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::HostBits,
        Reason::OutsideNetwork,
        Reason::TooSmall,
        Reason::Overlap,
        Reason::OverlapsOwn,
        Reason::PublicIp,
        Reason::VtepMac,
        Reason::PrivateIp,
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

/// A CIDR block of either family as a start address and a prefix length over 128 bits
/// (IPv4 addresses as their 32-bit value), so one index serves both families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Block {
    start: u128,
    len: u8,
}

impl Block {
    fn v4(n: Ipv4Net) -> Block {
        Block {
            start: u128::from(u32::from(n.network())),
            len: n.prefix_len(),
        }
    }

    fn v6(n: Ipv6Net) -> Block {
        Block {
            start: u128::from(n.network()),
            len: n.prefix_len(),
        }
    }

    /// The last address of the block in a family of `bits` bits.
    fn end(&self, bits: u8) -> u128 {
        let host = u32::from(bits - self.len);
        match host {
            128 => u128::MAX,
            h => self.start | ((1u128 << h) - 1),
        }
    }

    /// The block of length `len` containing this one's start.
    fn ancestor(&self, len: u8, bits: u8) -> Block {
        let host = u32::from(bits - len);
        let mask = match host {
            128 => 0,
            h => !((1u128 << h) - 1),
        };
        Block {
            start: self.start & mask,
            len,
        }
    }
}

/// Whether two blocks overlap (one holds the other: CIDR blocks never partly overlap).
fn nested(a: Block, b: Block, bits: u8) -> bool {
    let len = a.len.min(b.len);
    a.ancestor(len, bits) == b.ancestor(len, bits)
}

/// One family's rules.
#[derive(Debug, Clone, Copy)]
struct FamilyRules {
    bits: u8,
    network: Block,
    /// The Network as configured (for messages).
    net: IpNet,
    /// The longest prefix a lease may have (/30, /126).
    max_len: u8,
    /// The shape flannel's allocator hands out: (SubnetLen, SubnetMin, SubnetMax).
    canonical: Option<(u8, u128, u128)>,
}

impl FamilyRules {
    fn v4(p: &Ipv4Pool, allocation: Allocation) -> FamilyRules {
        FamilyRules {
            bits: 32,
            network: Block::v4(p.network),
            net: IpNet::V4(p.network),
            max_len: 30,
            canonical: (allocation == Allocation::Pool).then(|| {
                (
                    p.subnet_len,
                    u128::from(u32::from(p.subnet_min)),
                    u128::from(u32::from(p.subnet_max)),
                )
            }),
        }
    }

    fn v6(p: &Ipv6Pool, allocation: Allocation) -> FamilyRules {
        FamilyRules {
            bits: 128,
            network: Block::v6(p.network),
            net: IpNet::V6(p.network),
            max_len: 126,
            canonical: (allocation == Allocation::Pool).then(|| {
                (
                    p.subnet_len,
                    u128::from(p.subnet_min),
                    u128::from(p.subnet_max),
                )
            }),
        }
    }

    fn contains(&self, b: Block) -> bool {
        b.len > self.network.len && b.ancestor(self.network.len, self.bits) == self.network
    }

    fn show(&self, b: Block) -> String {
        match self.net {
            IpNet::V4(_) => {
                let a = Ipv4Addr::from(u32::try_from(b.start).unwrap_or(0));
                format!("{a}/{}", b.len)
            }
            IpNet::V6(_) => format!("{}/{}", Ipv6Addr::from(b.start), b.len),
        }
    }

    fn is_canonical(&self, b: Block) -> bool {
        self.canonical
            .is_some_and(|(len, min, max)| b.len == len && (min..=max).contains(&b.start))
    }
}

/// What admission is decided by: the network config, how the store allocates, and (when
/// known) the VPC's CIDRs.
#[derive(Debug, Clone)]
pub struct Rules {
    v4: Option<FamilyRules>,
    v6: Option<FamilyRules>,
    networks: Vec<IpNet>,
    vpc_cidrs: Vec<Ipv4Net>,
}

impl Rules {
    pub fn new(config: &ValidatedNetConfig, allocation: Allocation) -> Rules {
        Rules {
            v4: config.ipv4.as_ref().map(|p| FamilyRules::v4(p, allocation)),
            v6: config.ipv6.as_ref().map(|p| FamilyRules::v6(p, allocation)),
            networks: config
                .network()
                .map(IpNet::V4)
                .into_iter()
                .chain(config.ipv6_network().map(IpNet::V6))
                .collect(),
            vpc_cidrs: Vec::new(),
        }
    }

    /// The VPC's CIDRs (primary and secondary): a tencent-vpc PrivateIP must be inside one.
    pub fn with_vpc_cidrs(mut self, cidrs: Vec<Ipv4Net>) -> Rules {
        self.vpc_cidrs = cidrs;
        self
    }

    fn family(&self, f: Family) -> Option<&FamilyRules> {
        match f {
            Family::V4 => self.v4.as_ref(),
            Family::V6 => self.v6.as_ref(),
        }
    }

    /// Why `ip` cannot be a node's address, if it cannot.
    fn unusable(&self, ip: IpAddr) -> Option<&'static str> {
        let why = match ip {
            IpAddr::V4(a) => unusable_v4(a),
            IpAddr::V6(a) => unusable_v6(a),
        };
        why.or_else(|| {
            self.networks
                .iter()
                .any(|n| n.contains(&ip))
                .then_some("inside a pod Network")
        })
    }

    /// The checks of one lease part that depend on nothing but the lease: its shape, then
    /// its addresses. Ok(Some(block)) for a part that may be admitted (overlaps aside).
    fn check_part(&self, f: Family, lease: &Lease) -> Result<Option<Block>, Refusal> {
        let Some(fr) = self.family(f) else {
            return Ok(None);
        };
        let (block, text, host_bits) = match f {
            Family::V4 => match lease.key.ipv4_subnet() {
                None => return Ok(None),
                Some(n) => (Block::v4(n), n.to_string(), n.addr() != n.network()),
            },
            Family::V6 => match lease.key.ipv6 {
                None => return Ok(None),
                Some(n) => (Block::v6(n), n.to_string(), n.addr() != n.network()),
            },
        };
        let refuse = |reason, detail: String| Refusal {
            family: f,
            reason,
            detail,
        };
        let network = fr.net;
        if host_bits {
            return Err(refuse(
                Reason::HostBits,
                format!("{f} subnet {text} has host bits set"),
            ));
        }
        if !fr.contains(block) {
            let detail = if block.len <= fr.network.len
                && fr.network.ancestor(block.len, fr.bits) == block
            {
                format!("{f} subnet {text} covers the Network {network}: a lease must be a subnet inside it")
            } else {
                format!("{f} subnet {text} is not inside the Network {network}")
            };
            return Err(refuse(Reason::OutsideNetwork, detail));
        }
        if block.len > fr.max_len {
            return Err(refuse(
                Reason::TooSmall,
                format!("{f} subnet {text} is smaller than /{}", fr.max_len),
            ));
        }
        let attrs = &lease.attrs;
        let (field, address) = match f {
            Family::V4 => ("PublicIP", Some(IpAddr::V4(attrs.public_ip))),
            Family::V6 => ("PublicIPv6", attrs.public_ipv6.map(IpAddr::V6)),
        };
        match address {
            None => {
                return Err(refuse(
                    Reason::PublicIp,
                    format!("{f} subnet {text} has no {field}"),
                ))
            }
            Some(ip) => {
                if let Some(why) = self.unusable(ip) {
                    return Err(refuse(Reason::PublicIp, format!("{field} {ip} is {why}")));
                }
            }
        }
        let data = match f {
            Family::V4 => attrs.backend_data.as_ref(),
            Family::V6 => attrs.backend_v6_data.as_ref(),
        };
        let vtep = data.and_then(|d| d.get("VtepMAC"));
        let needs_vtep = attrs.backend_type == "vxlan";
        match (vtep, needs_vtep) {
            (None, false) => {}
            (None, true) => {
                return Err(refuse(
                    Reason::VtepMac,
                    format!("vxlan lease has no VtepMAC for its {f} subnet"),
                ))
            }
            (Some(v), _) => {
                let mac = v.as_str().and_then(|s| s.parse::<Mac>().ok());
                match mac {
                    Some(m) if m.is_unicast() => {}
                    Some(m) => {
                        return Err(refuse(
                            Reason::VtepMac,
                            format!("VtepMAC {m} is not a unicast address"),
                        ))
                    }
                    None => {
                        return Err(refuse(
                            Reason::VtepMac,
                            format!("VtepMAC {v} is not a MAC address"),
                        ))
                    }
                }
            }
        }
        if f == Family::V4 && attrs.backend_type == "tencent-vpc" {
            if let Some(v) = data.and_then(|d| d.get("PrivateIP")) {
                let Some(ip) = v.as_str().and_then(|s| s.parse::<Ipv4Addr>().ok()) else {
                    return Err(refuse(
                        Reason::PrivateIp,
                        format!("PrivateIP {v} is not an IPv4 address"),
                    ));
                };
                if let Some(why) = self.unusable(IpAddr::V4(ip)) {
                    return Err(refuse(
                        Reason::PrivateIp,
                        format!("PrivateIP {ip} is {why}"),
                    ));
                }
                if !self.vpc_cidrs.is_empty() && !self.vpc_cidrs.iter().any(|c| c.contains(&ip)) {
                    let cidrs: Vec<String> =
                        self.vpc_cidrs.iter().map(ToString::to_string).collect();
                    return Err(refuse(
                        Reason::PrivateIp,
                        format!(
                            "PrivateIP {ip} is not inside the VPC ({})",
                            cidrs.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(Some(block))
    }
}

fn unusable_v4(a: Ipv4Addr) -> Option<&'static str> {
    let o = a.octets();
    if a.is_unspecified() {
        Some("unspecified")
    } else if o[0] == 0 {
        Some("in 0.0.0.0/8")
    } else if a.is_loopback() {
        Some("loopback")
    } else if a.is_multicast() {
        Some("multicast")
    } else if a.is_broadcast() {
        Some("the broadcast address")
    } else if o[0] >= 240 {
        Some("reserved (240.0.0.0/4)")
    } else {
        None
    }
}

fn unusable_v6(a: Ipv6Addr) -> Option<&'static str> {
    if a.is_unspecified() {
        Some("unspecified")
    } else if a.is_loopback() {
        Some("loopback")
    } else if a.is_multicast() {
        Some("multicast")
    } else {
        None
    }
}

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

/// A lease as the gate holds it: the one copy of it in the daemon.
#[derive(Debug, Clone)]
struct Entry {
    lease: Lease,
    blocks: Blocks,
    verdict: Verdict,
    /// The lease without its refused parts, when some part is refused and another admitted.
    partial: Option<Lease>,
}

impl Entry {
    /// The lease as backends see it: only admitted parts; None when nothing is admitted.
    fn view(&self) -> Option<&Lease> {
        self.verdict
            .used()
            .then(|| self.partial.as_ref().unwrap_or(&self.lease))
    }
}

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

fn slot(f: Family) -> usize {
    match f {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

/// The index of shape-valid blocks of one family: block → the leases holding exactly it.
#[derive(Debug, Clone, Default)]
struct BlockIndex(BTreeMap<Block, BTreeSet<SubnetKey>>);

impl BlockIndex {
    fn insert(&mut self, b: Block, k: SubnetKey) {
        self.0.entry(b).or_default().insert(k);
    }

    fn remove(&mut self, b: Block, k: &SubnetKey) {
        if let Some(set) = self.0.get_mut(&b) {
            set.remove(k);
            if set.is_empty() {
                self.0.remove(&b);
            }
        }
    }

    /// Every (block, lease) overlapping `b` (itself included), within the family's Network.
    fn overlapping(&self, b: Block, fr: &FamilyRules) -> Vec<(Block, SubnetKey)> {
        let mut out = Vec::new();
        for len in (fr.network.len + 1)..=b.len {
            let a = b.ancestor(len, fr.bits);
            if let Some(keys) = self.0.get(&a) {
                out.extend(keys.iter().map(|k| (a, *k)));
            }
        }
        if b.len < u8::MAX {
            let lo = Block {
                start: b.start,
                len: b.len + 1,
            };
            let hi = Block {
                start: b.end(fr.bits),
                len: u8::MAX,
            };
            for (d, keys) in self.0.range(lo..=hi) {
                out.extend(keys.iter().map(|k| (*d, *k)));
            }
        }
        out
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
    entries: BTreeMap<SubnetKey, Entry>,
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
        GatePeers {
            entries: self.entries.values(),
            own: self.own_key(),
        }
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
        self.entries.get(key).and_then(Entry::view)
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
                self.entries.insert(k, entry);
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
                l
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
            let new_view = now.and_then(Entry::view).filter(|_| Some(*k) != own);
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
    entries: std::collections::btree_map::Values<'a, SubnetKey, Entry>,
    own: Option<SubnetKey>,
}

impl<'a> Iterator for GatePeers<'a> {
    type Item = &'a Lease;

    fn next(&mut self) -> Option<&'a Lease> {
        let own = self.own;
        self.entries
            .by_ref()
            .filter(|e| Some(e.lease.key) != own)
            .find_map(Entry::view)
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

impl LeaseGate {
    pub fn view(&self) -> PeerView<'_> {
        PeerView(Source::Gate(self))
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
    gate.entries
        .into_iter()
        .map(|(k, e)| (k, e.verdict))
        .collect()
}

#[cfg(test)]
mod tests;
