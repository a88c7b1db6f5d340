use super::*;

/// The cluster `c1` on 10.244.0.0/16, as the tencent-vpc unit tests own routes.
pub(crate) fn owner() -> Ownership {
    Ownership {
        cluster: "c1".into(),
        network: "10.244.0.0/16".parse().unwrap(),
    }
}

fn route(id: u64, dest: &str, gw: &str, desc: &str) -> ActualRoute {
    ActualRoute {
        route_id: id,
        dest: Some(dest.parse().unwrap()),
        gateway_type: NORMAL_CVM.into(),
        gateway_id: gw.into(),
        description: desc.into(),
        enabled: true,
    }
}

fn table(id: &str, routes: Vec<ActualRoute>) -> TableState {
    TableState {
        id: id.into(),
        routes,
        limit: 50,
    }
}

fn want(dest: &str, nh: &str) -> Wanted {
    Wanted {
        dest: dest.parse().unwrap(),
        next_hop: nh.parse().unwrap(),
    }
}

fn write(dest: &str, nh: &str) -> RouteWrite {
    RouteWrite {
        dest: dest.parse().unwrap(),
        next_hop: nh.parse().unwrap(),
        description: format!("flannel:c1:{nh}"),
    }
}

struct Case {
    tables: Vec<TableState>,
    wanted: Vec<Wanted>,
    leased: BTreeSet<Ipv4Net>,
    adopt: bool,
    scope: Scope,
    collect: BTreeSet<(String, u64)>,
}

impl Case {
    fn new(tables: Vec<TableState>, wanted: Vec<Wanted>) -> Case {
        let leased = wanted.iter().map(|w| w.dest).collect();
        Case {
            tables,
            wanted,
            leased,
            adopt: false,
            scope: Scope::Node("172.16.1.7".parse().unwrap()),
            collect: BTreeSet::new(),
        }
    }
    fn run(&self) -> Plan {
        plan(&PlanInput {
            tables: &self.tables,
            wanted: &self.wanted,
            leased: &self.leased,
            owner: &owner(),
            adopt_untagged: self.adopt,
            scope: self.scope,
            collect: &self.collect,
        })
    }
}

#[test]
fn a_fresh_table_gets_one_create_and_a_correct_one_nothing() {
    let c = Case::new(
        vec![table("rtb-1", vec![]), table("rtb-2", vec![])],
        vec![want("10.244.1.0/24", "172.16.1.7")],
    );
    let p = c.run();
    assert_eq!(p.tables.len(), 2);
    assert_eq!(
        p.tables[0].create,
        vec![write("10.244.1.0/24", "172.16.1.7")]
    );
    assert_eq!(p.writes(), 2);
    let c = Case::new(
        vec![table(
            "rtb-1",
            vec![route(
                5,
                "10.244.1.0/24",
                "172.16.1.7",
                "flannel:c1:172.16.1.7",
            )],
        )],
        vec![want("10.244.1.0/24", "172.16.1.7")],
    );
    let p = c.run();
    assert_eq!(p.writes(), 0);
    assert!(p
        .satisfied
        .contains(&("rtb-1".into(), "10.244.1.0/24".parse().unwrap())));
}

#[test]
fn a_wrong_next_hop_is_replaced_in_place_and_a_disabled_route_enabled() {
    let mut disabled = route(6, "10.244.2.0/24", "172.16.1.8", "flannel:c1:172.16.1.8");
    disabled.enabled = false;
    let mut c = Case::new(
        vec![table(
            "rtb-1",
            vec![
                route(5, "10.244.1.0/24", "172.16.9.9", "flannel:c1:172.16.9.9"),
                disabled,
            ],
        )],
        vec![
            want("10.244.1.0/24", "172.16.1.7"),
            want("10.244.2.0/24", "172.16.1.8"),
        ],
    );
    c.scope = Scope::Cluster;
    let p = c.run();
    assert_eq!(
        p.tables,
        vec![TablePlan {
            table: "rtb-1".into(),
            replace: vec![(5, write("10.244.1.0/24", "172.16.1.7"))],
            enable: vec![6],
            ..Default::default()
        }]
    );
    assert!(p.conflicts.is_empty() && p.blocked.is_empty());
}

#[test]
fn a_foreign_route_to_the_destination_is_a_conflict_never_a_second_route() {
    let nat = ActualRoute {
        gateway_type: "NAT".into(),
        ..route(9, "10.244.1.0/24", "nat-1", "")
    };
    let c = Case::new(
        vec![table("rtb-1", vec![nat])],
        vec![want("10.244.1.0/24", "172.16.1.7")],
    );
    let p = c.run();
    assert_eq!(p.writes(), 0, "no ECMP partner for someone else's route");
    assert_eq!(p.conflicts.len(), 1);
    assert_eq!(
        p.conflicts[0].to_string(),
        "route 10.244.1.0/24 via 172.16.1.7 in rtb-1: route 9 (NAT nat-1) already goes there and is not ours; not creating a second one (it would split traffic as ECMP)"
    );
    assert!(p.satisfied.is_empty());
    // Another cluster's tag is foreign too.
    let other = route(3, "10.244.1.0/24", "172.16.1.7", "flannel:c2:172.16.1.7");
    let c = Case::new(
        vec![table("rtb-1", vec![other])],
        vec![want("10.244.1.0/24", "172.16.1.7")],
    );
    assert_eq!(c.run().conflicts.len(), 1);
}

#[test]
fn untagged_upstream_routes_are_adopted_only_when_allowed_and_only_via_the_right_node() {
    let upstream = route(4, "10.244.1.0/24", "172.16.1.7", "");
    let mut c = Case::new(
        vec![table("rtb-1", vec![upstream.clone()])],
        vec![want("10.244.1.0/24", "172.16.1.7")],
    );
    let p = c.run();
    assert_eq!(
        (p.writes(), p.conflicts.len()),
        (0, 1),
        "left alone by default"
    );
    c.adopt = true;
    let p = c.run();
    assert_eq!(
        p.tables[0].replace,
        vec![(4, write("10.244.1.0/24", "172.16.1.7"))]
    );
    assert!(p.conflicts.is_empty());
    // Via another node: not adoptable, a conflict.
    let wrong = route(4, "10.244.1.0/24", "172.16.1.99", "");
    c.tables = vec![table("rtb-1", vec![wrong])];
    let p = c.run();
    assert_eq!((p.writes(), p.conflicts.len()), (0, 1));
}

#[test]
fn duplicates_of_ours_are_deleted_keeping_the_right_one() {
    let c = Case::new(
        vec![table(
            "rtb-1",
            vec![
                route(1, "10.244.1.0/24", "172.16.9.9", "flannel:c1:172.16.9.9"),
                route(2, "10.244.1.0/24", "172.16.1.7", "flannel:c1:172.16.1.7"),
            ],
        )],
        vec![want("10.244.1.0/24", "172.16.1.7")],
    );
    let p = c.run();
    assert_eq!(p.tables[0].delete, vec![1]);
    assert!(p.tables[0].replace.is_empty() && p.tables[0].create.is_empty());
}

#[test]
fn stale_routes_go_only_when_ours_unleased_or_collected() {
    let routes = vec![
        // This node's old subnet, leased by nobody now: removed by this node.
        route(1, "10.244.7.0/24", "172.16.1.7", "flannel:c1:172.16.1.7"),
        // This node's old subnet, now another node's lease: that node replaces it.
        route(2, "10.244.8.0/24", "172.16.1.7", "flannel:c1:172.16.1.7"),
        // Another node's orphan: only the garbage collector may delete it.
        route(3, "10.244.9.0/24", "172.16.1.9", "flannel:c1:172.16.1.9"),
        // Outside the Network, or untagged: never ours.
        route(4, "10.9.0.0/24", "172.16.1.7", "flannel:c1:172.16.1.7"),
        route(5, "10.244.10.0/24", "172.16.1.7", ""),
    ];
    let mut c = Case::new(vec![table("rtb-1", routes)], vec![]);
    c.leased = ["10.244.8.0/24".parse().unwrap()].into();
    assert_eq!(c.run().tables[0].delete, vec![1]);
    c.collect = [
        ("rtb-1".to_string(), 3),
        ("rtb-1".to_string(), 4),
        ("rtb-1".to_string(), 5),
    ]
    .into();
    assert_eq!(
        c.run().tables[0].delete,
        vec![1, 3, 4],
        "collect reaches our tag outside the Network (a stray), never an untagged route"
    );
    c.scope = Scope::Cluster;
    assert_eq!(
        c.run().tables[0].delete,
        vec![3, 4],
        "the controller deletes only what the GC approved"
    );
}

#[test]
fn a_full_table_blocks_creates_and_deletes_make_room_first() {
    let mut t = table(
        "rtb-1",
        vec![
            route(1, "192.168.0.0/24", "172.16.1.50", ""),
            route(2, "10.244.7.0/24", "172.16.1.7", "flannel:c1:172.16.1.7"),
        ],
    );
    t.limit = 2;
    let mut c = Case::new(
        vec![t],
        vec![
            want("10.244.1.0/24", "172.16.1.7"),
            want("10.244.2.0/24", "172.16.1.8"),
        ],
    );
    c.scope = Scope::Cluster;
    let p = c.run();
    // Nothing frees room (the stale route is not collected): both blocked.
    assert_eq!(p.blocked.len(), 2);
    assert_eq!(
        p.blocked[0].to_string(),
        "create route 10.244.1.0/24 via 172.16.1.7 in rtb-1: route table full (2/2 routes)"
    );
    c.collect = [("rtb-1".to_string(), 2)].into();
    let p = c.run();
    assert_eq!(p.tables[0].delete, vec![2]);
    assert_eq!(p.tables[0].create.len(), 1, "one slot freed");
    assert_eq!(p.blocked.len(), 1);
}

#[test]
fn a_destination_outside_the_network_is_never_written_whatever_the_caller_passes() {
    let mut c = Case::new(
        vec![table(
            "rtb-1",
            vec![route(
                7,
                "192.168.100.0/24",
                "172.16.1.7",
                "flannel:c1:172.16.1.7",
            )],
        )],
        vec![
            want("0.0.0.0/1", "172.16.1.7"),
            want("192.168.100.0/24", "172.16.1.7"),
            want("10.244.0.0/16", "172.16.1.8"),
            want("10.0.0.0/8", "172.16.1.9"),
            want("10.244.1.0/24", "172.16.1.7"),
        ],
    );
    c.scope = Scope::Cluster;
    let p = c.run();
    let written: Vec<Ipv4Net> = p.tables[0]
        .create
        .iter()
        .map(|w| w.dest)
        .chain(p.tables[0].replace.iter().map(|(_, w)| w.dest))
        .collect();
    assert_eq!(
        written,
        vec![
            "10.244.0.0/16".parse::<Ipv4Net>().unwrap(),
            "10.244.1.0/24".parse().unwrap()
        ],
        "the Network itself is covered; nothing outside it"
    );
    assert_eq!(p.outside.len(), 3);
    assert!(
        p.tables[0].delete.is_empty(),
        "a stray goes only when collected"
    );
    assert!(
        p.conflicts.is_empty(),
        "a stray in the way is no conflict: it is not written"
    );
}

#[test]
fn ownership_needs_tag_cluster_and_network() {
    let o = owner();
    assert_eq!(
        o.description("172.16.1.7".parse().unwrap()),
        "flannel:c1:172.16.1.7"
    );
    assert!(o.owns(&route(1, "10.244.1.0/24", "x", "flannel:c1:172.16.1.7")));
    assert!(!o.owns(&route(1, "10.244.1.0/24", "x", "flannel:c1:not-an-ip")));
    assert!(!o.owns(&route(1, "10.244.1.0/24", "x", "flannel:c10:172.16.1.7")));
    assert!(!o.owns(&route(1, "10.0.0.0/8", "x", "flannel:c1:172.16.1.7")));
    assert!(!o.owns(&route(1, "10.244.1.0/24", "x", "flannel-rs")));
}
#[test]
fn the_split_keeps_the_routed_side_and_holders_until_their_eviction_is_due() {
    use crate::backend::tencent_vpc::split::Split;
    let wanted = vec![
        want("10.244.1.0/24", "172.16.1.1"),
        want("10.244.2.0/24", "172.16.1.2"),
        want("10.244.3.0/24", "172.16.1.3"),
    ];
    // 2 still holds its route in the table; 3 has none.
    let t = table(
        "rtb-1",
        vec![route(
            7,
            "10.244.2.0/24",
            "172.16.1.2",
            "flannel:c1:172.16.1.2",
        )],
    );
    let split = Split {
        routed: ["10.244.1.0/24".parse().unwrap()].into(),
        fallback: [
            "10.244.2.0/24".parse().unwrap(),
            "10.244.3.0/24".parse().unwrap(),
        ]
        .into(),
        capacity: 1,
    };
    let (kept, dropped) = after_split(
        &wanted,
        &split,
        &BTreeSet::new(),
        std::slice::from_ref(&t),
        &owner(),
    );
    assert_eq!(
        kept,
        wanted[..2].to_vec(),
        "a holder keeps its route until it may go"
    );
    assert_eq!(dropped, ["10.244.3.0/24".parse().unwrap()].into());
    let due: BTreeSet<Ipv4Net> = ["10.244.2.0/24".parse().unwrap()].into();
    let (kept, dropped) = after_split(&wanted, &split, &due, &[t], &owner());
    assert_eq!(kept, wanted[..1].to_vec());
    assert_eq!(dropped.len(), 2);
}

#[test]
fn collection_in_tables_nobody_uses_takes_only_approved_routes_of_ours() {
    let all = vec![
        table(
            "rtb-used",
            vec![route(
                1,
                "10.244.1.0/24",
                "172.16.1.1",
                "flannel:c1:172.16.1.1",
            )],
        ),
        table(
            "rtb-old",
            vec![
                route(2, "10.244.2.0/24", "172.16.1.2", "flannel:c1:172.16.1.2"),
                route(3, "172.31.0.0/24", "172.16.1.2", "flannel:c1:172.16.1.2"),
                route(4, "10.244.4.0/24", "172.16.1.4", ""),
                route(5, "10.244.5.0/24", "172.16.1.5", "flannel:c1:172.16.1.5"),
            ],
        ),
    ];
    let collect: BTreeSet<(String, u64)> = [
        ("rtb-used".to_string(), 1),
        ("rtb-old".to_string(), 2),
        ("rtb-old".to_string(), 3),
        ("rtb-old".to_string(), 4),
    ]
    .into();
    let plans = collect_elsewhere(&all, &["rtb-used".to_string()], &collect, &owner());
    assert_eq!(
        plans,
        vec![TablePlan {
            table: "rtb-old".into(),
            delete: vec![2, 3],
            ..TablePlan::default()
        }],
        "the programmed table is the planner's; an untagged or unapproved route stays"
    );
}

#[test]
fn what_is_in_place_after_apply_is_what_a_successful_table_plan_wrote() {
    let wanted = vec![
        want("10.244.1.0/24", "172.16.1.7"),
        want("10.244.2.0/24", "172.16.1.8"),
        want("10.244.3.0/24", "172.16.1.9"),
    ];
    let nat = ActualRoute {
        gateway_type: "NAT".into(),
        ..route(9, "10.244.3.0/24", "nat-1", "")
    };
    let c = Case::new(
        vec![table("rtb-1", vec![nat]), table("rtb-2", vec![])],
        wanted.clone(),
    );
    let p = c.run();
    let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
    let all_done = vec!["rtb-1".to_string(), "rtb-2".to_string()];
    let present = present_after(&p, &wanted, &all_done, &[], false);
    assert!(present.contains(&("rtb-1".into(), net("10.244.1.0/24"))));
    assert!(
        !present.contains(&("rtb-1".into(), net("10.244.3.0/24"))),
        "in conflict"
    );
    assert!(present.contains(&("rtb-2".into(), net("10.244.3.0/24"))));
    // rtb-2's writes failed; the API refused 10.244.2.0/24 in rtb-1.
    let rejected = vec![("rtb-1".to_string(), net("10.244.2.0/24"))];
    let present = present_after(&p, &wanted, &all_done[..1], &rejected, false);
    assert!(!present.iter().any(|(t, _)| t == "rtb-2"));
    assert!(!present.contains(&("rtb-1".into(), net("10.244.2.0/24"))));
    // After a refresh nothing changed proves anything until read again.
    assert!(present_after(&p, &wanted, &all_done, &[], true).is_empty());
}
