use super::*;
use crate::config::parse_and_check;
use crate::lease::LeaseEvent;
use crate::lease::{Expiry, LeaseAttrs};
use crate::watch::WatchUpdate;
use serde_json::json;

fn rules(allocation: Allocation) -> Rules {
    let c = parse_and_check(
        r#"{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMin":"10.244.1.0","SubnetMax":"10.244.200.0","Backend":{"Type":"host-gw"}}"#,
    )
    .unwrap();
    Rules::new(&c, allocation)
}

fn dual_rules() -> Rules {
    let c = parse_and_check(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/48","IPv6SubnetLen":64,"Backend":{"Type":"host-gw"}}"#,
    )
    .unwrap();
    Rules::new(&c, Allocation::Pool)
}

fn key(s: &str) -> SubnetKey {
    s.parse().unwrap()
}

fn lease(k: &str, ip: &str) -> Lease {
    let mut attrs = LeaseAttrs::new(ip.parse().unwrap());
    attrs.backend_type = "host-gw".into();
    Lease {
        key: key(k),
        attrs,
        expiry: Expiry::Never,
    }
}

fn reason_of(gate: &LeaseGate, k: &str) -> Option<Reason> {
    gate.verdict(&key(k))
        .and_then(|v| v.refusal())
        .map(|r| r.reason)
}

fn peer_keys(gate: &LeaseGate) -> Vec<String> {
    gate.peers().map(|l| l.key.to_string()).collect()
}

#[test]
fn shapes_outside_the_network_or_too_small_are_refused_with_the_rule_named() {
    let own = lease("10.244.1.0-24", "172.16.0.1");
    let mut g = LeaseGate::new(rules(Allocation::Pool), Some(&own));
    let changes = g.reset(vec![
        own.clone(),
        lease("0.0.0.0-1", "172.16.0.2"),
        lease("128.0.0.0-1", "172.16.0.3"),
        lease("127.0.0.0-8", "172.16.0.4"),
        lease("192.168.5.0-24", "172.16.0.5"),
        lease("10.244.0.0-16", "172.16.0.6"),
        lease("10.244.7.4-31", "172.16.0.7"),
        lease("10.244.8.7-24", "172.16.0.8"),
        lease("10.244.9.0-24", "172.16.0.9"),
    ]);
    assert_eq!(peer_keys(&g), ["10.244.9.0-24"]);
    for (k, r) in [
        ("0.0.0.0-1", Reason::OutsideNetwork),
        ("128.0.0.0-1", Reason::OutsideNetwork),
        ("127.0.0.0-8", Reason::OutsideNetwork),
        ("192.168.5.0-24", Reason::OutsideNetwork),
        ("10.244.0.0-16", Reason::OutsideNetwork),
        ("10.244.7.4-31", Reason::TooSmall),
        ("10.244.8.7-24", Reason::HostBits),
    ] {
        assert_eq!(reason_of(&g, k), Some(r), "{k}");
    }
    let text: Vec<String> = changes.refused.iter().map(|(_, r)| r.to_string()).collect();
    assert!(text.contains(&"IPv4 subnet 0.0.0.0/1 covers the Network 10.244.0.0/16: a lease must be a subnet inside it".to_string()), "{text:?}");
    assert!(text.contains(
        &"IPv4 subnet 192.168.5.0/24 is not inside the Network 10.244.0.0/16".to_string()
    ));
    assert!(text.contains(&"IPv4 subnet 10.244.7.4/31 is smaller than /30".to_string()));
    assert!(text.contains(&"IPv4 subnet 10.244.8.7/24 has host bits set".to_string()));
    assert_eq!(changes.refused.len(), 7);
    assert_eq!(
        changes.events,
        vec![LeaseEvent::Added(lease("10.244.9.0-24", "172.16.0.9"))]
    );
    let counts = g.refused_counts();
    assert_eq!(counts[&Reason::OutsideNetwork], 5);
    assert_eq!(counts[&Reason::TooSmall], 1);
    assert_eq!(counts[&Reason::HostBits], 1);
    assert_eq!(counts[&Reason::Overlap], 0);
}

#[test]
fn a_peer_inside_or_around_our_own_lease_is_refused_and_ours_is_always_used() {
    let own = lease("10.244.1.0-24", "172.16.0.1");
    let mut g = LeaseGate::new(rules(Allocation::External), Some(&own));
    g.reset(vec![
        own.clone(),
        lease("10.244.1.128-25", "172.16.0.2"),
        lease("10.244.0.0-23", "172.16.0.3"),
    ]);
    assert!(peer_keys(&g).is_empty());
    assert_eq!(reason_of(&g, "10.244.1.128-25"), Some(Reason::OverlapsOwn));
    assert_eq!(reason_of(&g, "10.244.0.0-23"), Some(Reason::OverlapsOwn));
    assert_eq!(g.verdict(&own.key).unwrap().v4, Part::Admitted);
    assert!(g.peer(&own.key).is_none(), "our own lease is not a peer");
    assert_eq!(
        g.refused().next().unwrap().1.to_string(),
        "IPv4 subnet 10.244.0.0/23 overlaps this node's lease 10.244.1.0-24"
    );
}

#[test]
fn where_leases_overlap_the_allocators_shape_wins_else_all_are_refused() {
    let leases = vec![
        lease("10.244.5.0-24", "172.16.0.5"),
        lease("10.244.5.128-25", "172.16.0.6"),
        lease("10.244.4.0-22", "172.16.0.7"),
        lease("10.244.20.0-25", "172.16.0.8"),
        lease("10.244.20.0-26", "172.16.0.9"),
    ];
    let mut g = LeaseGate::new(rules(Allocation::Pool), None);
    g.reset(leases.clone());
    assert_eq!(peer_keys(&g), ["10.244.5.0-24"]);
    assert_eq!(reason_of(&g, "10.244.5.128-25"), Some(Reason::Overlap));
    assert_eq!(reason_of(&g, "10.244.4.0-22"), Some(Reason::Overlap));
    assert_eq!(reason_of(&g, "10.244.20.0-25"), Some(Reason::Overlap));
    assert_eq!(reason_of(&g, "10.244.20.0-26"), Some(Reason::Overlap));
    assert_eq!(
        g.refused().next().unwrap().1.to_string(),
        "IPv4 subnet 10.244.4.0/22 overlaps lease 10.244.5.0-24"
    );
    // Kubernetes podCIDRs may be any size: nobody wins.
    let mut k = LeaseGate::new(rules(Allocation::External), None);
    k.reset(leases);
    assert!(peer_keys(&k).is_empty());
    // A SubnetLen block outside [SubnetMin, SubnetMax] does not win either.
    let mut g = LeaseGate::new(rules(Allocation::Pool), None);
    g.reset(vec![
        lease("10.244.250.0-24", "172.16.0.5"),
        lease("10.244.250.0-25", "172.16.0.6"),
    ]);
    assert!(peer_keys(&g).is_empty());
}

#[test]
fn removing_the_lease_in_the_way_admits_the_other_and_says_so() {
    let mut g = LeaseGate::new(rules(Allocation::External), None);
    g.reset(vec![
        lease("10.244.5.0-24", "172.16.0.5"),
        lease("10.244.5.128-25", "172.16.0.6"),
    ]);
    assert!(peer_keys(&g).is_empty());
    let c = g.update(vec![LeaseEvent::Removed(lease("10.244.5.0-24", "0.0.0.0"))]);
    assert_eq!(
        c.events,
        vec![LeaseEvent::Added(lease("10.244.5.128-25", "172.16.0.6"))]
    );
    assert!(c.refused.is_empty());
    assert_eq!(g.refused_counts()[&Reason::Overlap], 0);
    // And an overlapping newcomer takes an admitted peer out again: Removed with its data.
    let c = g.update(vec![LeaseEvent::Added(lease(
        "10.244.5.128-26",
        "172.16.0.7",
    ))]);
    assert_eq!(
        c.events,
        vec![LeaseEvent::Removed(lease("10.244.5.128-25", "172.16.0.6"))]
    );
    assert_eq!(c.refused.len(), 2, "both overlapping leases are refused");
}

#[test]
fn unusable_public_addresses_are_refused() {
    let own = lease("10.244.1.0-24", "172.16.0.1");
    let mut g = LeaseGate::new(rules(Allocation::Pool), Some(&own));
    let cases = [
        (
            "10.244.2.0-24",
            "0.0.0.0",
            "PublicIP 0.0.0.0 is unspecified",
        ),
        (
            "10.244.3.0-24",
            "127.0.0.1",
            "PublicIP 127.0.0.1 is loopback",
        ),
        (
            "10.244.4.0-24",
            "224.0.0.1",
            "PublicIP 224.0.0.1 is multicast",
        ),
        (
            "10.244.5.0-24",
            "255.255.255.255",
            "PublicIP 255.255.255.255 is the broadcast address",
        ),
        (
            "10.244.6.0-24",
            "0.1.2.3",
            "PublicIP 0.1.2.3 is in 0.0.0.0/8",
        ),
        (
            "10.244.7.0-24",
            "240.0.0.1",
            "PublicIP 240.0.0.1 is reserved (240.0.0.0/4)",
        ),
        (
            "10.244.8.0-24",
            "10.244.3.4",
            "PublicIP 10.244.3.4 is inside a pod Network",
        ),
        (
            "10.244.9.0-24",
            "172.16.0.1",
            "PublicIP 172.16.0.1 is this node's own address",
        ),
    ];
    let mut leases: Vec<Lease> = cases.iter().map(|(k, ip, _)| lease(k, ip)).collect();
    leases.push(own.clone());
    let c = g.reset(leases);
    assert!(peer_keys(&g).is_empty());
    let mut text: Vec<String> = c.refused.iter().map(|(_, r)| r.to_string()).collect();
    text.sort();
    let mut want: Vec<String> = cases.iter().map(|(_, _, t)| t.to_string()).collect();
    want.sort();
    assert_eq!(text, want);
    assert_eq!(g.refused_counts()[&Reason::PublicIp], 8);
}

#[test]
fn vtep_macs_must_be_unicast_and_vxlan_leases_must_carry_one() {
    let mut g = LeaseGate::new(rules(Allocation::Pool), None);
    let vx = |k: &str, data: serde_json::Value| {
        let mut l = lease(k, "172.16.0.9");
        l.attrs.backend_type = "vxlan".into();
        l.attrs.backend_data = Some(data);
        l
    };
    g.reset(vec![
        vx(
            "10.244.2.0-24",
            json!({"VNI": 1, "VtepMAC": "ff:ff:ff:ff:ff:ff"}),
        ),
        vx(
            "10.244.3.0-24",
            json!({"VNI": 1, "VtepMAC": "01:00:5e:00:00:01"}),
        ),
        vx(
            "10.244.4.0-24",
            json!({"VNI": 1, "VtepMAC": "00:00:00:00:00:00"}),
        ),
        vx("10.244.5.0-24", json!({"VNI": 1})),
        vx("10.244.6.0-24", json!({"VNI": 1, "VtepMAC": "nope"})),
        vx(
            "10.244.7.0-24",
            json!({"VNI": 1, "VtepMAC": "0e:00:00:00:00:07"}),
        ),
    ]);
    assert_eq!(peer_keys(&g), ["10.244.7.0-24"]);
    assert_eq!(g.refused_counts()[&Reason::VtepMac], 5);
    let text: Vec<String> = g.refused().map(|(_, r)| r.to_string()).collect();
    assert_eq!(
        text,
        [
            "VtepMAC ff:ff:ff:ff:ff:ff is not a unicast address",
            "VtepMAC 01:00:5e:00:00:01 is not a unicast address",
            "VtepMAC 00:00:00:00:00:00 is not a unicast address",
            "vxlan lease has no VtepMAC for its IPv4 subnet",
            "VtepMAC \"nope\" is not a MAC address",
        ]
    );
}

#[test]
fn a_private_ip_outside_the_vpc_is_refused_when_the_vpc_is_known() {
    let tvpc = |k: &str, private: serde_json::Value| {
        let mut l = lease(k, "172.16.1.9");
        l.attrs.backend_type = "tencent-vpc".into();
        l.attrs.backend_data = Some(json!({"PrivateIP": private, "SubnetId": "subnet-a"}));
        l
    };
    let leases = vec![
        tvpc("10.244.2.0-24", json!("8.8.8.8")),
        tvpc("10.244.3.0-24", json!("172.16.1.3")),
        tvpc("10.244.4.0-24", json!("not an ip")),
        tvpc("10.244.5.0-24", json!("127.0.0.1")),
    ];
    let vpc = vec!["172.16.0.0/16".parse().unwrap()];
    let mut g = LeaseGate::new(rules(Allocation::Pool).with_vpc_cidrs(vpc), None);
    g.reset(leases.clone());
    assert_eq!(peer_keys(&g), ["10.244.3.0-24"]);
    let text: Vec<String> = g.refused().map(|(_, r)| r.to_string()).collect();
    assert_eq!(
        text,
        [
            "PrivateIP 8.8.8.8 is not inside the VPC (172.16.0.0/16)",
            "PrivateIP \"not an ip\" is not an IPv4 address",
            "PrivateIP 127.0.0.1 is loopback",
        ]
    );
    // Without the VPC's CIDRs only the address itself is checked.
    let mut g = LeaseGate::new(rules(Allocation::Pool), None);
    g.reset(leases);
    assert_eq!(peer_keys(&g), ["10.244.2.0-24", "10.244.3.0-24"]);
}

#[test]
fn an_absent_part_is_ignored_and_a_refused_part_is_stripped() {
    // IPv6-only leases in an IPv4 network: not used, not refused (as upstream).
    let mut g = LeaseGate::new(rules(Allocation::Pool), None);
    let c = g.reset(vec![lease("0.0.0.0-0&fd00:10:0:5::-64", "0.0.0.0")]);
    assert!(c.events.is_empty() && c.refused.is_empty());
    assert!(g.refused_counts().values().all(|n| *n == 0));
    // Dual stack: a v6 part outside IPv6Network is refused; the v4 part is still routed.
    let mut g = LeaseGate::new(dual_rules(), None);
    let mut l = lease("10.244.5.0-24&fd99::-64", "172.16.0.5");
    l.attrs.public_ipv6 = Some("fd00:1::5".parse().unwrap());
    let c = g.reset(vec![l.clone()]);
    let admitted = g.peers().next().unwrap();
    assert_eq!(admitted.key.to_string(), "10.244.5.0-24");
    assert_eq!(admitted.attrs, l.attrs);
    assert_eq!(c.events, vec![LeaseEvent::Added(admitted.clone())]);
    assert_eq!(
        c.refused[0].1.to_string(),
        "IPv6 subnet fd99::/64 is not inside the Network fd00:10::/48"
    );
    // A v6 part without PublicIPv6 cannot be routed.
    let mut g = LeaseGate::new(dual_rules(), None);
    g.reset(vec![lease("10.244.6.0-24&fd00:10:0:6::-64", "172.16.0.6")]);
    assert_eq!(
        g.refused().next().unwrap().1.to_string(),
        "IPv6 subnet fd00:10:0:6::/64 has no PublicIPv6"
    );
    assert_eq!(peer_keys(&g), ["10.244.6.0-24"]);
}

#[test]
fn a_refusal_is_reported_once_per_value() {
    let mut g = LeaseGate::new(rules(Allocation::Pool), None);
    let bad = lease("192.168.5.0-24", "172.16.0.5");
    assert_eq!(g.reset(vec![bad.clone()]).refused.len(), 1);
    assert!(g.reset(vec![bad.clone()]).refused.is_empty(), "same value");
    assert!(g
        .update(vec![LeaseEvent::Added(bad.clone())])
        .refused
        .is_empty());
    let moved = lease("192.168.5.0-24", "172.16.0.6");
    assert_eq!(
        g.update(vec![LeaseEvent::Added(moved)]).refused.len(),
        1,
        "a new value"
    );
    assert_eq!(g.refused_counts()[&Reason::OutsideNetwork], 1);
    g.update(vec![LeaseEvent::Removed(bad)]);
    assert_eq!(g.refused_counts()[&Reason::OutsideNetwork], 0);
    assert_eq!(g.lease_count(), 0);
}

#[test]
fn a_new_own_lease_is_decided_again() {
    let old = lease("10.244.1.0-24", "172.16.0.1");
    let mut g = LeaseGate::new(rules(Allocation::External), Some(&old));
    let peer = lease("10.244.2.0-25", "172.16.0.2");
    g.reset(vec![old.clone(), peer.clone()]);
    assert_eq!(peer_keys(&g), ["10.244.2.0-25"]);
    // This node's new lease arrives through the watch before the node knows it is its own:
    // as any lease, it takes the peer it overlaps out.
    let new = lease("10.244.2.0-24", "172.16.0.1");
    let c = g.update(vec![LeaseEvent::Added(new.clone())]);
    assert_eq!(c.events, vec![LeaseEvent::Removed(peer)]);
    // Then it is ours; the old one, still in the store, claims this node's address: no peer.
    let c = g.set_own(Some(&new));
    assert!(c.events.is_empty(), "{:?}", c.events);
    assert_eq!(reason_of(&g, "10.244.1.0-24"), Some(Reason::PublicIp));
    assert_eq!(reason_of(&g, "10.244.2.0-25"), Some(Reason::OverlapsOwn));
    assert_eq!(g.peer_count(), 0);
}

#[test]
fn snapshots_and_deltas_drive_the_view_and_an_empty_batch_removes_nobody() {
    // What the lease watcher did (upstream bug: an empty delta batch read as "nobody left").
    let own = lease("10.244.1.0-24", "172.16.0.1");
    let a = lease("10.244.2.0-24", "172.16.0.2");
    let b = lease("10.244.3.0-24", "172.16.0.3");
    let mut g = LeaseGate::new(rules(Allocation::Pool), Some(&own));
    let c = g.apply(WatchUpdate::Snapshot(vec![
        own.clone(),
        a.clone(),
        b.clone(),
    ]));
    assert_eq!(
        c.events,
        vec![LeaseEvent::Added(a.clone()), LeaseEvent::Added(b.clone())]
    );
    let same = g.apply(WatchUpdate::Snapshot(vec![
        own.clone(),
        a.clone(),
        b.clone(),
    ]));
    assert!(same.events.is_empty());
    assert!(g.apply(WatchUpdate::Events(vec![])).events.is_empty());
    assert_eq!(g.view().len(), 2);
    // b vanished from a snapshot, c appeared; a changed its address.
    let c3 = lease("10.244.4.0-24", "172.16.0.4");
    let moved = lease("10.244.2.0-24", "172.16.0.9");
    let ev = g.apply(WatchUpdate::Snapshot(vec![
        own.clone(),
        moved.clone(),
        c3.clone(),
    ]));
    assert_eq!(ev.events.len(), 3);
    assert!(ev.events.contains(&LeaseEvent::Removed(b.clone())));
    assert!(ev.events.contains(&LeaseEvent::Added(moved.clone())));
    assert!(ev.events.contains(&LeaseEvent::Added(c3.clone())));
    // A store's delete carries only a key: the Removed event carries the known data.
    let key_only = lease("10.244.4.0-24", "0.0.0.0");
    let ev = g.apply(WatchUpdate::Events(vec![LeaseEvent::Removed(key_only)]));
    assert_eq!(ev.events, vec![LeaseEvent::Removed(c3)]);
    // Our own lease is never a peer.
    let ev = g.apply(WatchUpdate::Events(vec![LeaseEvent::Added(own.clone())]));
    assert!(ev.events.is_empty());
    assert_eq!(g.view().iter().cloned().collect::<Vec<_>>(), vec![moved]);
}
