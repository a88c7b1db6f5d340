//! Lease admission over random lease sets (any prefix, any address, overlaps, dual stack):
//! the incremental gate agrees with a from-scratch evaluation whatever order the leases came
//! in, two nodes admit the same peers, and nothing admitted lies outside the Network, covers
//! this node's lease, or overlaps another admitted lease.

use flannel_core::admission::{evaluate, Allocation, LeaseGate, Rules};
use flannel_core::config::parse_and_check;
use flannel_core::lease::{Expiry, Lease, LeaseAttrs, LeaseEvent, SubnetKey};
use ipnet::{Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

fn rules(allocation: Allocation) -> Rules {
    let c = parse_and_check(
        r#"{"Network":"10.244.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:10::/48","IPv6SubnetLen":64,"Backend":{"Type":"host-gw"}}"#,
    )
    .unwrap();
    Rules::new(&c, allocation)
}

/// A v4 part: mostly near the Network, some anywhere, any prefix length.
fn v4_part() -> impl Strategy<Value = Ipv4Net> {
    prop_oneof![
        // A /24 of the pool (SubnetLen shape), the common case.
        (0u32..16).prop_map(|i| Ipv4Net::new(Ipv4Addr::new(10, 244, i as u8, 0), 24).unwrap()),
        // Any shape around the first /20 of the Network.
        (0u32..4096, 14u8..=32).prop_map(|(off, len)| {
            let a = u32::from(Ipv4Addr::new(10, 244, 0, 0)) + off * 16;
            Ipv4Net::new(Ipv4Addr::from(a), len).unwrap()
        }),
        // Anywhere at all.
        (any::<u32>(), 0u8..=32).prop_map(|(a, len)| Ipv4Net::new(Ipv4Addr::from(a), len).unwrap()),
    ]
}

fn v6_part() -> impl Strategy<Value = Option<Ipv6Net>> {
    prop_oneof![
        Just(None),
        (0u16..8, 60u8..=66).prop_map(|(i, len)| {
            Some(Ipv6Net::new(Ipv6Addr::new(0xfd00, 0x10, 0, i, 0, 0, 0, 0), len).unwrap())
        }),
        (any::<u128>(), 0u8..=128)
            .prop_map(|(a, len)| Some(Ipv6Net::new(Ipv6Addr::from(a), len).unwrap())),
    ]
}

fn public_ip() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        (1u8..40).prop_map(|i| Ipv4Addr::new(172, 16, 0, i)),
        Just(Ipv4Addr::UNSPECIFIED),
        Just(Ipv4Addr::new(127, 0, 0, 1)),
        Just(Ipv4Addr::new(10, 244, 3, 3)),
        Just(Ipv4Addr::new(224, 0, 0, 5)),
    ]
}

fn lease() -> impl Strategy<Value = Lease> {
    (v4_part(), v6_part(), public_ip(), any::<bool>()).prop_map(|(v4, v6, ip, has_v6)| {
        let mut attrs = LeaseAttrs::new(ip);
        attrs.backend_type = "host-gw".into();
        if has_v6 {
            attrs.public_ipv6 = Some(Ipv6Addr::new(
                0xfd00,
                1,
                0,
                0,
                0,
                0,
                0,
                u16::from(ip.octets()[3]),
            ));
        }
        Lease {
            key: SubnetKey { ipv4: v4, ipv6: v6 },
            attrs,
            expiry: Expiry::Never,
        }
    })
}

/// Distinct keys (a store holds one value per key).
fn lease_set() -> impl Strategy<Value = Vec<Lease>> {
    prop::collection::vec(lease(), 0..40).prop_map(|ls| {
        let m: BTreeMap<SubnetKey, Lease> = ls.into_iter().map(|l| (l.key, l)).collect();
        m.into_values().collect()
    })
}

fn overlaps4(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn overlaps6(a: Ipv6Net, b: Ipv6Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The admitted peers by admitted key (a stripped part changes the key).
fn admitted(gate: &LeaseGate) -> Vec<Lease> {
    let mut v: Vec<Lease> = gate.peers().cloned().collect();
    v.sort_by_key(|l| l.key);
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn order_never_matters_and_nothing_admitted_is_unsafe(
        leases in lease_set(),
        own_pick in any::<prop::sample::Index>(),
        order in any::<prop::sample::Index>(),
        chunk in 1usize..6,
        pool in any::<bool>(),
    ) {
        let allocation = if pool { Allocation::Pool } else { Allocation::External };
        let rules = rules(allocation);
        // This node's own lease: one of the set (if any), as the daemon has it.
        let own = (!leases.is_empty()).then(|| leases[own_pick.index(leases.len())].clone());
        let own_ref = own.as_ref();

        // Node A: the whole set at once.
        let mut a = LeaseGate::new(rules.clone(), own_ref);
        a.reset(leases.clone());

        // Node B: the same leases in another order, in small event batches, with a
        // detour (a lease added, then removed again).
        let mut shuffled = leases.clone();
        if !shuffled.is_empty() {
            let r = order.index(shuffled.len());
            shuffled.rotate_left(r);
            shuffled.reverse();
        }
        let mut b = LeaseGate::new(rules.clone(), own_ref);
        // A consumer replaying B's events, keyed by admitted key.
        let mut replay: BTreeMap<SubnetKey, Lease> = BTreeMap::new();
        let mut apply = |b: &mut LeaseGate, events: Vec<LeaseEvent>| {
            for e in b.update(events).events {
                match e {
                    LeaseEvent::Added(l) => { replay.insert(l.key, l); }
                    LeaseEvent::Removed(l) => { replay.remove(&l.key); }
                }
            }
        };
        if let Some(first) = shuffled.first() {
            let mut intruder = first.clone();
            intruder.key.ipv4 = Ipv4Net::new(intruder.key.ipv4.network(), intruder.key.ipv4.prefix_len().saturating_sub(1)).unwrap().trunc();
            if !leases.iter().any(|l| l.key == intruder.key) {
                apply(&mut b, vec![LeaseEvent::Added(intruder.clone())]);
                for c in shuffled.chunks(chunk) {
                    apply(&mut b, c.iter().cloned().map(LeaseEvent::Added).collect());
                }
                apply(&mut b, vec![LeaseEvent::Removed(intruder)]);
            } else {
                for c in shuffled.chunks(chunk) {
                    apply(&mut b, c.iter().cloned().map(LeaseEvent::Added).collect());
                }
            }
        }

        // Same verdicts as from scratch, on both nodes; the replayed events give the view.
        let scratch = evaluate(&rules, own_ref, &leases);
        for l in &leases {
            prop_assert_eq!(a.verdict(&l.key), scratch.get(&l.key));
            prop_assert_eq!(b.verdict(&l.key), scratch.get(&l.key));
        }
        prop_assert_eq!(admitted(&a), admitted(&b));
        prop_assert_eq!(replay.into_values().collect::<Vec<_>>(), admitted(&b));
        prop_assert_eq!(a.refused_counts(), b.refused_counts());
        prop_assert_eq!(a.peer_count(), admitted(&a).len());

        // Nothing admitted is unsafe.
        let net4: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let net6: Ipv6Net = "fd00:10::/48".parse().unwrap();
        let peers = admitted(&a);
        for p in &peers {
            if let Some(s) = p.key.ipv4_subnet() {
                prop_assert!(net4.contains(&s) && s.prefix_len() > 16 && s.prefix_len() <= 30, "{}", s);
                prop_assert!(s.addr() == s.network());
                if let Some(o) = own.as_ref().and_then(|o| o.key.ipv4_subnet()) {
                    prop_assert!(!overlaps4(s, o), "{} overlaps own {}", s, o);
                }
                prop_assert!(!p.attrs.public_ip.is_unspecified() && !p.attrs.public_ip.is_loopback());
            }
            if let Some(s) = p.key.ipv6 {
                prop_assert!(net6.contains(&s) && s.prefix_len() > 48 && s.prefix_len() <= 126, "{}", s);
                if let Some(o) = own.as_ref().and_then(|o| o.key.ipv6) {
                    prop_assert!(!overlaps6(s, o));
                }
            }
        }
        for (i, p) in peers.iter().enumerate() {
            for q in &peers[i + 1..] {
                if let (Some(x), Some(y)) = (p.key.ipv4_subnet(), q.key.ipv4_subnet()) {
                    prop_assert!(!overlaps4(x, y), "{} and {} both admitted", x, y);
                }
                if let (Some(x), Some(y)) = (p.key.ipv6, q.key.ipv6) {
                    prop_assert!(!overlaps6(x, y), "{} and {} both admitted", x, y);
                }
            }
        }

        // Once every lease is gone, nothing is admitted or counted.
        let removed: Vec<LeaseEvent> = leases.iter().cloned().map(LeaseEvent::Removed).collect();
        b.update(removed);
        prop_assert_eq!(b.peer_count(), 0);
        prop_assert!(b.refused_counts().values().all(|n| *n == 0));
    }
}
