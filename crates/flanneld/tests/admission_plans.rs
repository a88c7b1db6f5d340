//! Lease admission end to end, over random lease sets (any prefix, any address, overlaps):
//! neither the kernel plan (host-gw, vxlan) nor the VPC plan ever holds a destination outside
//! the Network or one covering this node's own lease, and once the bad leases are gone every
//! plan reaches "nothing to do" within the garbage collector's bound (⌈n/20⌉ + 2 resyncs for
//! n routes to collect).

use flannel_core::admission::{Allocation, LeaseGate, Rules};
use flannel_core::lease::{Expiry, Lease, LeaseAttrs, SubnetKey};
use flanneld::backend::tencent_vpc::gc::{LeaseView, OrphanTracker, MIN_DELETES_PER_CYCLE};
use flanneld::backend::tencent_vpc::plan::{
    plan, ActualRoute, Ownership, PlanInput, Scope, TableState, Wanted, NORMAL_CVM,
};
use flanneld::backend::tencent_vpc::{lease_holders, leased_subnets, route_of};
use flanneld::backend::{host_gw, vxlan};
use flanneld::iface::ExternalInterface;
use flanneld::kernel::Mac;
use ipnet::{IpNet, Ipv4Net};
use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

const NETWORK: &str = "10.244.0.0/16";

fn network() -> Ipv4Net {
    NETWORK.parse().unwrap()
}

fn inside(d: &IpNet) -> bool {
    let n = IpNet::V4(network());
    d.prefix_len() >= n.prefix_len() && n.contains(&d.network())
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn config(backend: &str) -> flannel_core::ValidatedNetConfig {
    flannel_core::config::parse_and_check(
        &json!({"Network": NETWORK, "Backend": {"Type": backend}}).to_string(),
    )
    .unwrap()
}

/// A subnet: mostly the pool's /24s, some other shapes nearby, some anywhere.
fn subnet() -> impl Strategy<Value = Ipv4Net> {
    prop_oneof![
        4 => (0u8..12).prop_map(|i| Ipv4Net::new(Ipv4Addr::new(10, 244, i, 0), 24).unwrap()),
        2 => (0u32..3072, 12u8..=31).prop_map(|(off, len)| {
            Ipv4Net::new(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + off * 4), len).unwrap()
        }),
        1 => (any::<u32>(), 0u8..=32).prop_map(|(a, len)| Ipv4Net::new(Ipv4Addr::from(a), len).unwrap()),
    ]
}

fn address() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        6 => (2u8..30).prop_map(|i| Ipv4Addr::new(172, 16, 1, i)),
        1 => Just(Ipv4Addr::UNSPECIFIED),
        1 => Just(Ipv4Addr::new(127, 0, 0, 1)),
        1 => Just(Ipv4Addr::new(10, 244, 3, 7)),
        1 => Just(Ipv4Addr::new(8, 8, 8, 8)),
    ]
}

fn mac() -> impl Strategy<Value = String> {
    prop_oneof![
        5 => (1u8..250).prop_map(|i| format!("0e:00:00:00:00:{i:02x}")),
        1 => Just("ff:ff:ff:ff:ff:ff".to_string()),
        1 => Just("00:00:00:00:00:00".to_string()),
        1 => Just("01:00:5e:00:00:01".to_string()),
        1 => Just("nonsense".to_string()),
    ]
}

/// A lease of `kind` (host-gw, vxlan or tencent-vpc), well formed or not.
fn lease(kind: &'static str) -> impl Strategy<Value = Lease> {
    (subnet(), address(), address(), mac()).prop_map(move |(s, public, private, mac)| {
        let mut attrs = LeaseAttrs::new(public);
        attrs.backend_type = kind.into();
        attrs.backend_data = match kind {
            "vxlan" => Some(json!({"VNI": 1, "VtepMAC": mac})),
            "tencent-vpc" => {
                Some(json!({"PrivateIP": private.to_string(), "SubnetId": "subnet-a"}))
            }
            _ => None,
        };
        Lease {
            key: SubnetKey::v4(s),
            attrs,
            expiry: Expiry::Never,
        }
    })
}

fn leases(kind: &'static str) -> impl Strategy<Value = Vec<Lease>> {
    prop::collection::vec(lease(kind), 0..30)
}

/// This node: a well-formed pool lease (the allocator's) at 172.16.1.1.
fn own(kind: &str, i: u8) -> Lease {
    let mut attrs = LeaseAttrs::new(Ipv4Addr::new(172, 16, 1, 1));
    attrs.backend_type = kind.into();
    Lease {
        key: SubnetKey::v4(Ipv4Net::new(Ipv4Addr::new(10, 244, i, 0), 24).unwrap()),
        attrs,
        expiry: Expiry::Never,
    }
}

fn gate(kind: &str, own: &Lease, leases: &[Lease]) -> LeaseGate {
    let mut all = leases.to_vec();
    all.retain(|l| l.key != own.key);
    all.push(own.clone());
    let mut g = LeaseGate::new(Rules::new(&config(kind), Allocation::Pool), Some(own));
    g.reset(all);
    g
}

fn ext() -> ExternalInterface {
    ExternalInterface::ipv4("eth0", 2, 1500, Ipv4Addr::new(172, 16, 1, 1))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn kernel_plans_stay_inside_the_network_and_off_our_own_lease(
        hg in leases("host-gw"),
        vx in leases("vxlan"),
        own_i in 0u8..12,
    ) {
        let networks = [IpNet::V4(network())];
        let own_hg = own("host-gw", own_i);
        let g = gate("host-gw", &own_hg, &hg);
        let want = host_gw::desired(&ext(), &networks, g.view().iter());
        for r in &want.routes {
            prop_assert!(inside(&r.dst), "host-gw route {}", r);
            if let IpNet::V4(d) = r.dst {
                prop_assert!(!overlaps(d, own_hg.key.ipv4), "host-gw route {} over our lease", r);
            }
            let gw = r.via.unwrap();
            prop_assert!(!gw.is_unspecified() && !gw.is_loopback(), "host-gw gateway {}", gw);
        }
        let own_vx = own("vxlan", own_i);
        let g = gate("vxlan", &own_vx, &vx);
        let want = vxlan::desired(&ext(), 9, g.view().iter(), false, &BTreeSet::new(), flannel_core::backend_config::BackendKind::Vxlan);
        for r in &want.routes {
            prop_assert!(inside(&r.dst), "vxlan route {}", r);
            if let IpNet::V4(d) = r.dst {
                prop_assert!(!overlaps(d, own_vx.key.ipv4), "vxlan route {} over our lease", r);
            }
        }
        let own_net = IpNet::V4(own_vx.key.ipv4);
        for n in want.neighbours.values().flatten() {
            prop_assert!(inside(&IpNet::from(n.ip)), "neighbour {}", n.ip);
            prop_assert!(!own_net.contains(&n.ip), "a neighbour for our own address {}", n.ip);
            prop_assert!(n.mac.is_unicast());
        }
        for e in want.fdb.values().flatten() {
            prop_assert!(e.mac.is_unicast());
            prop_assert!(matches!(e.dst, IpAddr::V4(a) if !a.is_unspecified() && !a.is_loopback()));
        }
        let _ = Mac::local_unicast([0; 6]);
    }

    #[test]
    fn vpc_plans_stay_inside_the_network_and_converge_once_bad_leases_go(
        tv in leases("tencent-vpc"),
        strays in prop::collection::vec((subnet(), 2u8..30), 0..30),
        quota in 30usize..80,
    ) {
        let owner = Ownership { cluster: "c1".into(), network: network() };
        // The VPC's CIDR is known (the controller reads it): PrivateIPs outside are refused.
        let rules = Rules::new(&config("tencent-vpc"), Allocation::Pool)
            .with_vpc_cidrs(vec!["172.16.0.0/16".parse().unwrap()]);
        let mut g = LeaseGate::new(rules, None);
        g.reset(tv.clone());
        // The tables: routes of ours an earlier version wrote for anything (strays outside
        // the Network, orphans inside), and a user's route.
        let mut id = 0u64;
        let mut routes: Vec<ActualRoute> = strays
            .iter()
            .map(|(d, node)| {
                id += 1;
                let nh = Ipv4Addr::new(172, 16, 1, *node);
                ActualRoute { route_id: id, dest: Some(*d), gateway_type: NORMAL_CVM.into(),
                    gateway_id: nh.to_string(), description: owner.description(nh), enabled: true }
            })
            .collect();
        routes.dedup_by_key(|r| r.dest);
        routes.push(ActualRoute { route_id: 999, dest: Some("192.168.100.0/24".parse().unwrap()),
            gateway_type: "VPN".into(), gateway_id: "vpngw-1".into(), description: String::new(), enabled: true });
        let mut tables = vec![TableState { id: "rtb-a".into(), routes, limit: quota }];
        let mut tracker = OrphanTracker::with_min_age(std::time::Duration::ZERO);
        let mut next_id = 1000u64;
        let resync = |g: &LeaseGate, tables: &mut Vec<TableState>, tracker: &mut OrphanTracker, next_id: &mut u64| {
            let view = g.view();
            let wanted: Vec<Wanted> = view.iter().filter_map(route_of).collect();
            let leased = leased_subnets(view.iter());
            let holders = lease_holders(&view, None);
            let verdict = tracker.observe(LeaseView { leased: &leased, holders: &holders, fresh: true }, tables, &owner);
            let p = plan(&PlanInput { tables, wanted: &wanted, leased: &leased, owner: &owner,
                adopt_untagged: false, scope: Scope::Cluster, collect: &verdict.collect });
            // Never a write outside the Network.
            for tp in &p.tables {
                for w in tp.create.iter().chain(tp.replace.iter().map(|(_, w)| w)) {
                    assert!(owner.covers(w.dest), "a write to {}", w.dest);
                }
                for id in &tp.delete {
                    let r = tables[0].routes.iter().find(|r| r.route_id == *id).unwrap();
                    assert!(owner.owns(r) || owner.stray(r).is_some(), "deleted a route not ours: {r:?}");
                }
            }
            // Apply as the API would.
            for tp in &p.tables {
                let t = &mut tables[0];
                t.routes.retain(|r| !tp.delete.contains(&r.route_id));
                for (rid, w) in &tp.replace {
                    if let Some(r) = t.routes.iter_mut().find(|r| r.route_id == *rid) {
                        r.gateway_id = w.next_hop.to_string();
                        r.description = w.description.clone();
                    }
                }
                for w in &tp.create {
                    *next_id += 1;
                    t.routes.push(ActualRoute { route_id: *next_id, dest: Some(w.dest),
                        gateway_type: NORMAL_CVM.into(), gateway_id: w.next_hop.to_string(),
                        description: w.description.clone(), enabled: true });
                }
            }
            (p.writes(), verdict.waiting)
        };
        for _ in 0..3 {
            resync(&g, &mut tables, &mut tracker, &mut next_id);
        }
        // The bad leases go: only good ones stay (a store needs some lease for the GC to act).
        let good: Vec<Lease> = g.view().iter().cloned().collect();
        let keep = if good.is_empty() {
            let mut l = own("tencent-vpc", 200);
            l.attrs.backend_data = Some(json!({"PrivateIP": "172.16.1.2", "SubnetId": "subnet-a"}));
            vec![l]
        } else {
            good
        };
        g.reset(keep);
        let n = tables[0].routes.iter().filter(|r| owner.owns(r) || owner.stray(r).is_some()).count();
        let bound = n.div_ceil(MIN_DELETES_PER_CYCLE) + 2;
        let mut rounds = 0;
        loop {
            let (writes, waiting) = resync(&g, &mut tables, &mut tracker, &mut next_id);
            if writes == 0 && waiting == 0 {
                break;
            }
            rounds += 1;
            prop_assert!(rounds <= bound, "still writing after {} resyncs (bound {})", rounds, bound);
        }
        // What is left outside the Network is no lease holder's: an operator's call.
        let holders = lease_holders(&g.view(), None);
        for r in &tables[0].routes {
            if owner.stray(r).is_some() {
                let nh: Ipv4Addr = r.gateway_id.parse().unwrap();
                prop_assert!(!holders.contains(&nh), "a stray via holder {} left", nh);
            }
        }
    }
}
