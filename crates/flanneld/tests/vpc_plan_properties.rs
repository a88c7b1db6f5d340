//! Properties of the tencent-vpc planner over random tables: it never touches what is not
//! ours, never puts a second route on a taken destination, respects the quota, and one
//! application of its plan converges (planning again finds nothing to do).

use flanneld::backend::tencent_vpc::plan::{
    plan, ActualRoute, Ownership, PlanInput, Scope, TableState, Wanted, NORMAL_CVM,
};
use ipnet::Ipv4Net;
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

fn owner() -> Ownership {
    Ownership {
        cluster: "c1".into(),
        network: "10.244.0.0/16".parse().unwrap(),
    }
}

fn dest(i: u8) -> Ipv4Net {
    format!("10.244.{i}.0/24").parse().unwrap()
}

fn node(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(172, 16, 1, i)
}

/// A route among a few destinations and next hops: ours, another cluster's, untagged, or
/// not NORMAL_CVM at all.
fn route() -> impl Strategy<Value = (u8, u8, u8, bool, bool)> {
    (0u8..6, 0u8..4, 0u8..4, any::<bool>(), any::<bool>())
}

fn to_route(id: u64, (d, nh, kind, enabled, cvm): (u8, u8, u8, bool, bool)) -> ActualRoute {
    let description = match kind {
        0 | 1 => format!("flannel:c1:{}", node(nh)),
        2 => format!("flannel:c2:{}", node(nh)),
        _ => String::new(),
    };
    ActualRoute {
        route_id: id,
        dest: Some(dest(d)),
        gateway_type: if cvm { NORMAL_CVM.into() } else { "NAT".into() },
        gateway_id: node(nh).to_string(),
        description,
        enabled,
    }
}

/// Apply a plan to the tables as the API would.
fn apply(
    tables: &mut [TableState],
    p: &flanneld::backend::tencent_vpc::plan::Plan,
    next_id: &mut u64,
) {
    for tp in &p.tables {
        let t = tables.iter_mut().find(|t| t.id == tp.table).unwrap();
        for (id, w) in &tp.replace {
            let r = t.routes.iter_mut().find(|r| r.route_id == *id).unwrap();
            r.gateway_type = NORMAL_CVM.into();
            r.gateway_id = w.next_hop.to_string();
            r.description = w.description.clone();
        }
        for id in &tp.enable {
            t.routes
                .iter_mut()
                .find(|r| r.route_id == *id)
                .unwrap()
                .enabled = true;
        }
        t.routes.retain(|r| !tp.delete.contains(&r.route_id));
        for w in &tp.create {
            *next_id += 1;
            t.routes.push(ActualRoute {
                route_id: *next_id,
                dest: Some(w.dest),
                gateway_type: NORMAL_CVM.into(),
                gateway_id: w.next_hop.to_string(),
                description: w.description.clone(),
                enabled: true,
            });
        }
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 3000,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(
                "tests/proptest-regressions/vpc_plan_properties.txt",
            ),
        )),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn plans_are_safe_and_converge(
        tables in prop::collection::vec((prop::collection::vec(route(), 0..8), 1usize..10), 1..3),
        wanted in prop::collection::btree_map(0u8..6, 0u8..4, 0..5),
        adopt in any::<bool>(),
        collect_ids in prop::collection::btree_set(1u64..30, 0..4),
    ) {
        let mut next_id = 0;
        let mut tables: Vec<TableState> = tables
            .into_iter()
            .enumerate()
            .map(|(i, (routes, limit))| TableState {
                id: format!("rtb-{i}"),
                // As the API guarantees: no two routes with one destination and next hop.
                routes: {
                    let mut seen = BTreeSet::new();
                    routes
                        .into_iter()
                        .filter(|(d, nh, _, _, cvm)| seen.insert((*d, *nh, *cvm)))
                        .map(|r| { next_id += 1; to_route(next_id, r) })
                        .collect()
                },
                limit,
            })
            .collect();
        let wanted: Vec<Wanted> = wanted.into_iter().map(|(d, n)| Wanted { dest: dest(d), next_hop: node(n) }).collect();
        let leased: BTreeSet<Ipv4Net> = wanted.iter().map(|w| w.dest).collect();
        let collect: BTreeSet<(String, u64)> = tables
            .iter()
            .flat_map(|t| t.routes.iter().map(move |r| (t.id.clone(), r.route_id)))
            .filter(|(_, id)| collect_ids.contains(id))
            .collect();
        let o = owner();
        let input = |tables: &[TableState]| -> flanneld::backend::tencent_vpc::plan::Plan {
            plan(&PlanInput {
                tables,
                wanted: &wanted,
                leased: &leased,
                owner: &o,
                adopt_untagged: adopt,
                scope: Scope::Cluster,
                collect: &collect,
            })
        };
        let p = input(&tables);
        for tp in &p.tables {
            let t = tables.iter().find(|t| t.id == tp.table).unwrap();
            let by_id = |id: &u64| t.routes.iter().find(|r| r.route_id == *id).unwrap();
            for id in &tp.delete {
                prop_assert!(o.owns(by_id(id)), "deleted a route not ours: {:?}", by_id(id));
            }
            for id in &tp.enable {
                let adopted = tp.replace.iter().any(|(r, _)| r == id);
                prop_assert!(o.owns(by_id(id)) || adopted, "enabled a route not ours: {:?}", by_id(id));
            }
            for (id, w) in &tp.replace {
                let r = by_id(id);
                let adoptable = adopt && r.description.is_empty() && r.gateway_type == NORMAL_CVM
                    && r.gateway_id == w.next_hop.to_string();
                prop_assert!(o.owns(r) || adoptable, "replaced a route not ours: {r:?}");
            }
            for w in &tp.create {
                prop_assert!(
                    !t.routes.iter().any(|r| r.dest == Some(w.dest)),
                    "a second route to {} in {}", w.dest, t.id
                );
            }
            let after = t.routes.len() + tp.create.len() - tp.delete.len();
            prop_assert!(tp.create.is_empty() || after <= t.limit, "over quota in {}", t.id);
        }
        apply(&mut tables, &p, &mut next_id);
        let again = input(&tables);
        prop_assert_eq!(again.writes(), 0, "not converged: {:?}", again.tables);
        // Whatever is neither conflicting nor blocked is in place: one route, ours, right.
        for t in &tables {
            for w in &wanted {
                let stuck = p.conflicts.iter().any(|c| c.table == t.id && c.wanted.dest == w.dest)
                    || p.blocked.iter().any(|b| b.table == t.id && b.wanted.dest == w.dest);
                if stuck {
                    continue;
                }
                let here: Vec<&ActualRoute> = t.routes.iter().filter(|r| r.dest == Some(w.dest)).collect();
                prop_assert_eq!(here.len(), 1, "{} in {}: {:?}", w.dest, t.id, here);
                prop_assert!(o.owns(here[0]) && here[0].enabled && here[0].gateway_id == w.next_hop.to_string());
            }
        }
    }
}
