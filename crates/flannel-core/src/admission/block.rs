//! CIDR blocks of either family over 128 bits, and the prefix index that finds every block
//! overlapping one: the ones containing it by masking, the ones inside it by a range query.

use super::rules::FamilyRules;
use crate::lease::SubnetKey;
use ipnet::{Ipv4Net, Ipv6Net};
use std::collections::BTreeMap;

/// A CIDR block of either family as a start address and a prefix length over 128 bits
/// (IPv4 addresses as their 32-bit value), so one index serves both families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Block {
    pub(crate) start: u128,
    pub(crate) len: u8,
}

impl Block {
    pub(crate) fn v4(n: Ipv4Net) -> Block {
        Block {
            start: u128::from(u32::from(n.network())),
            len: n.prefix_len(),
        }
    }

    pub(crate) fn v6(n: Ipv6Net) -> Block {
        Block {
            start: u128::from(n.network()),
            len: n.prefix_len(),
        }
    }

    /// The last address of the block in a family of `bits` bits.
    pub(crate) fn end(&self, bits: u8) -> u128 {
        let host = u32::from(bits - self.len);
        match host {
            128 => u128::MAX,
            h => self.start | ((1u128 << h) - 1),
        }
    }

    /// The block of length `len` containing this one's start.
    pub(crate) fn ancestor(&self, len: u8, bits: u8) -> Block {
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
pub(crate) fn nested(a: Block, b: Block, bits: u8) -> bool {
    let len = a.len.min(b.len);
    a.ancestor(len, bits) == b.ancestor(len, bits)
}

/// The index of shape-valid blocks of one family: block → the leases holding exactly it
/// (almost always one: a Vec, not a set, whose first node would hold 11).
#[derive(Debug, Clone, Default)]
pub(crate) struct BlockIndex(BTreeMap<Block, Vec<SubnetKey>>);

impl BlockIndex {
    pub(crate) fn insert(&mut self, b: Block, k: SubnetKey) {
        let keys = self.0.entry(b).or_default();
        if let Err(at) = keys.binary_search(&k) {
            keys.insert(at, k);
        }
    }

    pub(crate) fn remove(&mut self, b: Block, k: &SubnetKey) {
        if let Some(keys) = self.0.get_mut(&b) {
            keys.retain(|x| x != k);
            if keys.is_empty() {
                self.0.remove(&b);
            }
        }
    }

    /// Every (block, lease) overlapping `b` (itself included), within the family's Network.
    pub(crate) fn overlapping(&self, b: Block, fr: &FamilyRules) -> Vec<(Block, SubnetKey)> {
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
